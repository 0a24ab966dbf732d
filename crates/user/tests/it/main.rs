//! The user service's integration tests: the store, the gRPC service and the administrator
//! bootstrap against real SQLite and PostgreSQL databases, with the same cases for both.
//! Passwords are hashed with tiny argon2 parameters so the cases stay fast; the production
//! parameters are checked in the unit tests.

mod bootstrap;
mod service;
mod store;

use platform::auth::Claims;
use test_support::postgres::TestDatabase;
use user::password::{HashParams, Hasher};
use user::{UserApi, UserStore};

/// Cheap argon2id: 1 MiB, one pass.
pub const FAST: HashParams = HashParams {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

/// What keeps a test's database alive: dropped after the case, which removes it.
#[allow(dead_code)] // held only for its Drop
pub enum Fixture {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

/// A store on a fresh SQLite file.
pub async fn sqlite_store() -> (UserStore, Fixture) {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
    let url = platform::database::sqlite_url(&dir.path().join("user.db"));
    let store = UserStore::open(&url, 4)
        .await
        .unwrap_or_else(|error| panic!("open {url}: {error}"));
    (store, Fixture::Sqlite(dir))
}

/// A store on a fresh PostgreSQL database, or `None` when PostgreSQL is missing (see test-support).
pub async fn postgres_store() -> Option<(UserStore, Fixture)> {
    let database = TestDatabase::create().await?;
    let store = UserStore::open(database.url(), 4)
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", database.url()));
    Some((store, Fixture::Postgres(database)))
}

/// The URL a store was opened with (test URLs carry no password, so the shown URL is the real one).
pub fn url_of(store: &UserStore) -> String {
    store.database().shown_url().to_owned()
}

/// A password hasher with [`FAST`] parameters.
pub async fn fast_hasher() -> Result<Hasher, user::password::HashError> {
    Hasher::new(FAST).await
}

/// The service over `store`, hashing with [`FAST`] parameters.
pub async fn api(store: UserStore) -> Result<UserApi, user::password::HashError> {
    Ok(UserApi::new(store, fast_hasher().await?))
}

/// Verified claims as `AuthLayer` would put them in a request: subject `sub`, holding `roles`.
pub fn claims(sub: &str, roles: &[&str]) -> Claims {
    Claims {
        sub: sub.to_owned(),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
        iat: 1_700_000_000,
        exp: 1_700_000_900,
        jti: uuid::Uuid::new_v4().to_string(),
        iss: "flotilla-auth".to_owned(),
        aud: "flotilla".to_owned(),
    }
}

/// Runs an async case `fn(UserStore) -> Result<..>` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both {
    ($case:ident) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (store, fixture) = $crate::sqlite_store().await;
                let result = super::$case(store.clone()).await;
                store.database().close().await;
                drop(fixture);
                if let Err(error) = result {
                    panic!("{error}");
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((store, fixture)) = $crate::postgres_store().await else {
                    return;
                };
                let result = super::$case(store.clone()).await;
                store.database().close().await;
                drop(fixture);
                if let Err(error) = result {
                    panic!("{error}");
                }
            }
        }
    };
}
