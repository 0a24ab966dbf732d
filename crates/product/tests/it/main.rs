//! The product service's integration tests: the store and the gRPC service against real SQLite and
//! PostgreSQL databases, with the same cases for both.

mod service;
mod store;

use platform::database::DatabaseConfig;
use product::ProductStore;
use test_support::databases::TestDb;

/// The subject of every case: a store on the case's fresh database (see `test_support::both!`).
pub async fn open(db: &TestDb) -> ProductStore {
    ProductStore::open(&DatabaseConfig::new(db.url(), 4))
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", db.url()))
}

/// Closes a case's store once the case is done, before its database is removed.
pub async fn close(store: &ProductStore) {
    store.database().close().await;
}

/// The URL a store was opened with (test URLs carry no password, so the shown URL is the real one).
pub fn url_of(store: &ProductStore) -> String {
    store.database().shown_url().to_owned()
}
