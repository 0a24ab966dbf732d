//! The product service's integration tests: the store and the gRPC service against real SQLite and
//! PostgreSQL databases, with the same cases for both.

mod service;
mod store;

use product::ProductStore;
use test_support::postgres::TestDatabase;

/// What keeps a test's database alive: dropped after the case, which removes it.
#[allow(dead_code)] // held only for its Drop
pub enum Fixture {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

/// A store on a fresh SQLite file.
pub async fn sqlite_store() -> (ProductStore, Fixture) {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
    let url = platform::database::sqlite_url(&dir.path().join("product.db"));
    let store = ProductStore::open(&url, 4)
        .await
        .unwrap_or_else(|error| panic!("open {url}: {error}"));
    (store, Fixture::Sqlite(dir))
}

/// A store on a fresh PostgreSQL database, or `None` when PostgreSQL is missing (see test-support).
pub async fn postgres_store() -> Option<(ProductStore, Fixture)> {
    let database = TestDatabase::create().await?;
    let store = ProductStore::open(database.url(), 4)
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", database.url()));
    Some((store, Fixture::Postgres(database)))
}

/// The URL a store was opened with (test URLs carry no password, so the shown URL is the real one).
pub fn url_of(store: &ProductStore) -> String {
    store.database().shown_url().to_owned()
}

/// Runs an async case `fn(ProductStore) -> Result<..>` once on SQLite and once on PostgreSQL.
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
