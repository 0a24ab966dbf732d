//! A fresh database for one test case, on SQLite or PostgreSQL, and [`both!`](crate::both) to run
//! the same case once on each.
//!
//! A [`TestDb`] is a database URL and a private directory; whatever backs them (the temporary
//! directory holding the SQLite file, the PostgreSQL database) lives as long as the `TestDb` and is
//! removed when it is dropped.

use std::path::Path;

use crate::postgres::TestDatabase;

/// A fresh database and a private directory for the case's files, both removed when dropped.
#[derive(Debug)]
pub struct TestDb {
    url: String,
    dir: tempfile::TempDir,
    /// Held only for its `Drop`, which drops the database; `None` for SQLite.
    _postgres: Option<TestDatabase>,
}

impl TestDb {
    /// A fresh SQLite file named `file_name` in a new temporary directory (the file itself is
    /// created by whatever opens the URL).
    pub fn sqlite(file_name: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = platform::database::sqlite_url(&dir.path().join(file_name));
        Self {
            url,
            dir,
            _postgres: None,
        }
    }

    /// A fresh PostgreSQL database (and a temporary directory), or `None` when PostgreSQL is
    /// missing and external parts are not required (see [`TestDatabase::create`]).
    pub async fn postgres() -> Option<Self> {
        let database = TestDatabase::create().await?;
        let dir = tempfile::tempdir().expect("create a temporary directory");
        Some(Self {
            url: database.url().to_owned(),
            dir,
            _postgres: Some(database),
        })
    }

    /// The database's URL (test URLs carry no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A private directory for the case's own files (for SQLite, also where the database file is).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs an async case once on a fresh SQLite file and once on a fresh PostgreSQL database, as the
/// tests `<case>::sqlite` and `<case>::postgres` (multi-threaded tokio tests, so the calling crate
/// needs `tokio` with its `macros` and `rt-multi-thread` features).
///
/// `both!(case, open)`, with, in the module of the call:
///
/// - `async fn case(subject: Subject) -> Result<(), E>` where `E: Display`; an `Err` fails the
///   test with its message;
/// - `open`, a path that resolves from a child module (`crate::open`), to
///   `async fn open(db: &TestDb) -> Subject`, which may borrow from `db`.
///
/// The [`TestDb`] outlives the case and is dropped after it, which removes the database. The
/// SQLite file is named after the calling package (`<package>.db`). When PostgreSQL is missing,
/// the `postgres` test skips loudly, or fails under `FLOTILLA_REQUIRE_EXTERNAL=1`.
///
/// `both!(case, open, close)` also runs `async fn close(subject: &Subject)` once the case is
/// done and before the database is removed (to close a pool, say); the case then gets a clone of
/// the subject, so `Subject: Clone`.
#[macro_export]
macro_rules! both {
    // The body of one test: open, run the case, (close,) drop the database, then report.
    (@run $db:ident, $case:ident, $open:path) => {
        let subject = $open(&$db).await;
        let result = super::$case(subject).await;
        drop($db);
        if let Err(error) = result {
            panic!("{error}");
        }
    };
    (@run $db:ident, $case:ident, $open:path, $close:path) => {
        let subject = $open(&$db).await;
        let result = super::$case(::core::clone::Clone::clone(&subject)).await;
        $close(&subject).await;
        drop(subject);
        drop($db);
        if let Err(error) = result {
            panic!("{error}");
        }
    };
    ($case:ident, $open:path $(, $close:path)?) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::databases::TestDb::sqlite(::core::concat!(
                    ::core::env!("CARGO_PKG_NAME"),
                    ".db"
                ));
                $crate::both!(@run db, $case, $open $(, $close)?);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::databases::TestDb::postgres().await else {
                    return;
                };
                $crate::both!(@run db, $case, $open $(, $close)?);
            }
        }
    };
}
