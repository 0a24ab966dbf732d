//! The user service's integration tests: the store, the gRPC service and the administrator
//! bootstrap against real SQLite and PostgreSQL databases, with the same cases for both.
//! Passwords are hashed with tiny argon2 parameters so the cases stay fast; the production
//! parameters are checked in the unit tests.

mod bootstrap;
mod service;
mod store;

use platform::auth::Claims;
use platform::database::DatabaseConfig;
use test_support::databases::TestDb;
use user::password::{HashParams, Hasher};
use user::{UserApi, UserStore};

/// Cheap argon2id: 1 MiB, one pass.
pub const FAST: HashParams = HashParams {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

/// The subject of every case: a store on the case's fresh database (see `test_support::both!`).
pub async fn open(db: &TestDb) -> UserStore {
    UserStore::open(&DatabaseConfig::new(db.url(), 4))
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", db.url()))
}

/// Closes a case's store once the case is done, before its database is removed.
pub async fn close(store: &UserStore) {
    store.database().close().await;
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
