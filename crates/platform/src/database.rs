//! Opens a service's own database from its `DATABASE_URL`: SQLite (the embedded default, a file in
//! WAL mode so readers never wait for the writer) or PostgreSQL, and applies the service's
//! migrations for that dialect.
//!
//! Services use sqlx's Any driver so one set of queries serves both databases; only migrations are
//! per dialect. The Any driver carries integers, floats, text and blobs, so services store instants
//! as integer microseconds since the Unix epoch (see [`crate::time`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

use crate::admin::ReadinessCheck;
use crate::config::redact_url_password;
use crate::telemetry::metrics::{Metrics, encode_gauges};

/// How long a caller waits for a pooled connection, and how long a readiness ping may take.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A service's database settings: where its database is and how many connections it may hold.
/// `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// Most connections in the pool (`FLOTILLA_<SERVICE>_DB_MAX_CONNECTIONS`, default 10).
    pub max_connections: u32,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url_password(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl DatabaseConfig {
    /// Reads the URL from `url_variable` (`DATABASE_URL` when a service runs alone,
    /// `FLOTILLA_<SERVICE>_DATABASE_URL` under `flotilla up`, where each has its own) with
    /// `default_url`, and `FLOTILLA_<SERVICE>_DB_MAX_CONNECTIONS`.
    ///
    /// # Errors
    /// A [`crate::config::ConfigError`] naming the bad variable.
    pub fn from_settings(
        settings: &crate::config::Settings,
        service: &str,
        url_variable: &str,
        default_url: &str,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            url: settings.url(
                url_variable,
                default_url,
                &["sqlite", "postgres", "postgresql"],
            )?,
            max_connections: settings.count(
                &format!(
                    "FLOTILLA_{}_DB_MAX_CONNECTIONS",
                    service.to_ascii_uppercase()
                ),
                10,
            )?,
        })
    }

    /// Settings for a fresh pool of `max_connections` to `url` (tests and tools).
    pub fn new(url: impl Into<String>, max_connections: u32) -> Self {
        Self {
            url: url.into(),
            max_connections,
        }
    }
}

/// Which SQL dialect a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite, from a `sqlite://` URL.
    Sqlite,
    /// PostgreSQL, from a `postgres://` or `postgresql://` URL.
    Postgres,
}

/// Why a database could not be opened or migrated. Messages never include a password.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL names no supported database.
    #[error(
        "database URL {url} is not supported: expected sqlite://PATH or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
    },
    /// The directory for a SQLite file could not be created.
    #[error("cannot create directory {path} for the SQLite database: {source}")]
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// sqlx's reason.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migrating {url} failed: {source}")]
    Migrate {
        /// The URL, password redacted.
        url: String,
        /// sqlx's reason.
        source: sqlx::migrate::MigrateError,
    },
}

/// A connection pool to one service's database, and its dialect.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    dialect: Dialect,
    shown_url: String,
}

impl Database {
    /// Connects to `url` with at most `max_connections` connections. A SQLite file (and its
    /// directory) is created when missing and switched to WAL mode.
    ///
    /// # Errors
    /// [`DatabaseError`] when the URL is unsupported, the directory cannot be made, or the database
    /// does not answer.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DatabaseError> {
        sqlx::any::install_default_drivers();
        let shown_url = redact_url_password(url);
        let dialect = dialect_of(url).ok_or_else(|| DatabaseError::UnsupportedUrl {
            url: shown_url.clone(),
        })?;
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT);
        let connect_url = match dialect {
            Dialect::Postgres => url.to_owned(),
            Dialect::Sqlite => {
                let (url, in_memory) = prepare_sqlite_url(url)?;
                if in_memory {
                    // Each connection to `:memory:` is its own empty database: keep exactly one,
                    // and never let it close, or the data goes with it.
                    options = options
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None);
                }
                url
            }
        };
        let pool =
            options
                .connect(&connect_url)
                .await
                .map_err(|source| DatabaseError::Connect {
                    url: shown_url.clone(),
                    source,
                })?;
        if dialect == Dialect::Sqlite {
            // WAL is a property of the file, so setting it once here covers every connection.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(|source| DatabaseError::Connect {
                    url: shown_url.clone(),
                    source,
                })?;
        }
        Ok(Self {
            pool,
            dialect,
            shown_url,
        })
    }

    /// Connects as `config` says and applies `migrator`: how every service opens its store.
    ///
    /// # Errors
    /// [`DatabaseError`] when the database cannot be reached or migrated.
    pub async fn open(config: &DatabaseConfig, migrator: &Migrator) -> Result<Self, DatabaseError> {
        let database = Self::connect(&config.url, config.max_connections).await?;
        database.migrate(migrator).await?;
        Ok(database)
    }

    /// Applies a service's migrations. They are written in the SQL that SQLite and PostgreSQL share;
    /// a service that ever needs dialect-specific DDL keeps one migrator per [`Dialect`].
    ///
    /// # Errors
    /// [`DatabaseError::Migrate`] when a migration fails or an applied one was changed.
    pub async fn migrate(&self, migrator: &Migrator) -> Result<(), DatabaseError> {
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| DatabaseError::Migrate {
                url: self.shown_url.clone(),
                source,
            })
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The SQL dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The client span of one statement, after OpenTelemetry's database conventions: named by its
    /// summary (`SELECT users`), with `db.system`, `db.operation.name` and `db.collection.name`
    /// read from the statement (or a summary of it, `DELETE products`). Never the statement's text
    /// or its bound values. Instrument the statement's future with it. Outside a request (no
    /// component at work, [`crate::telemetry::context::component`]) it is a disabled span.
    pub fn span(&self, statement: &str) -> tracing::Span {
        // Statements outside a request (the seed, the bootstrap, the purge) are not traced: each
        // would be a trace of its own, burying the requests'.
        let Some(component) = crate::telemetry::context::component() else {
            return tracing::Span::none();
        };
        let span = tracing::info_span!(
            target: crate::telemetry::TRACE_TARGET,
            "db",
            otel.name = tracing::field::Empty,
            otel.kind = "client",
            db.system = match self.dialect {
                Dialect::Sqlite => "sqlite",
                Dialect::Postgres => "postgresql",
            },
            db.operation.name = tracing::field::Empty,
            db.collection.name = tracing::field::Empty,
            flotilla.component = component,
        );
        // The statement is read only for a span someone records (before it starts, while its
        // name may still change).
        if !span.is_disabled() {
            let (operation, table) = summary(statement);
            span.record("otel.name", format!("{operation} {table}"));
            span.record("db.operation.name", operation);
            span.record("db.collection.name", table);
        }
        span
    }

    /// The URL with its password redacted, for logs.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// A readiness check that passes when the database answers `SELECT 1` in time.
    pub fn readiness_check(&self) -> ReadinessCheck {
        let pool = self.pool.clone();
        Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                let ping = sqlx::query("SELECT 1").execute(&pool);
                match tokio::time::timeout(ACQUIRE_TIMEOUT, ping).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(error)) => Err(format!("database unreachable: {error}")),
                    Err(_) => Err("database did not answer within 5s".to_owned()),
                }
            })
        })
    }

    /// Reports the pool of `service`'s database in `metrics` at every scrape:
    /// `flotilla_db_pool_connections{service, state}` (`idle`, `in_use`) and
    /// `flotilla_db_pool_max_connections{service}`. A pool whose connections are all in use is
    /// where requests queue.
    pub fn register_metrics(&self, service: &'static str, metrics: &Metrics) {
        metrics.register_collector(PoolCollector {
            service,
            pool: self.pool.clone(),
        });
    }

    /// Closes every connection, waiting for checked-out ones to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Reads a pool's figures at scrape time.
#[derive(Debug)]
struct PoolCollector {
    service: &'static str,
    pool: AnyPool,
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        encode_gauges(
            &mut encoder,
            "flotilla_db_pool_connections",
            "Open connections of a service's database pool, idle or in use",
            [("idle", idle), ("in_use", size.saturating_sub(idle))].map(|(state, count)| {
                (
                    [("service", self.service), ("state", state)],
                    i64::from(count),
                )
            }),
        )?;
        encode_gauges(
            &mut encoder,
            "flotilla_db_pool_max_connections",
            "The most connections a service's database pool opens",
            [(
                [("service", self.service)],
                i64::from(self.pool.options().get_max_connections()),
            )],
        )
    }
}

/// The operation and the table of a statement: the first keyword, and the name after `FROM`
/// (`SELECT`, `DELETE`), `INTO` (`INSERT`) or the keyword itself (`UPDATE`), or right after the
/// operation in a summary (`DELETE products`); `unknown` where the statement does not say.
fn summary(statement: &str) -> (&'static str, String) {
    let first = statement.split_whitespace().next().unwrap_or_default();
    let (operation, before_table) = match first.to_ascii_uppercase().as_str() {
        "SELECT" => ("SELECT", "FROM"),
        "INSERT" => ("INSERT", "INTO"),
        "UPDATE" => ("UPDATE", "UPDATE"),
        "DELETE" => ("DELETE", "FROM"),
        _ => return ("unknown", "unknown".to_owned()),
    };
    let table = statement
        .split_whitespace()
        .skip_while(|word| !word.eq_ignore_ascii_case(before_table))
        .nth(1)
        // A summary names the table right after the operation.
        .or_else(|| statement.split_whitespace().nth(1))
        .filter(|table| table.starts_with(|c: char| c.is_ascii_alphabetic() || c == '"'))
        .map(|table| {
            table
                .trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .to_owned()
        })
        .filter(|table| !table.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    (operation, table)
}

/// Whether a database error is worth a retry (the database is busy, restarting or unreachable), as
/// opposed to one that a retry would meet again (a constraint, a bad query). Services answer the
/// first kind with UNAVAILABLE or ABORTED, the second with INTERNAL.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database_error) => {
            let code = database_error.code().unwrap_or_default();
            if database_error
                .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                .is_some()
            {
                is_transient_sqlite_code(&code)
            } else {
                is_transient_sqlstate(&code)
            }
        }
        _ => false,
    }
}

/// SQLite result codes (extended codes keep the primary code in the low byte): BUSY (5) and
/// LOCKED (6).
fn is_transient_sqlite_code(code: &str) -> bool {
    code.parse::<u32>()
        .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

/// PostgreSQL SQLSTATEs: class 08 (connection exception), 40001 (serialization failure), 40P01
/// (deadlock), 53300 (too many connections), 57P01-57P03 (shutting down, cannot connect now).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
        )
}

/// The dialect a URL names, if any.
pub fn dialect_of(url: &str) -> Option<Dialect> {
    let scheme = url.split_once(':')?.0;
    match scheme {
        "sqlite" => Some(Dialect::Sqlite),
        "postgres" | "postgresql" => Some(Dialect::Postgres),
        _ => None,
    }
}

/// The URL of a SQLite file at `path`, created on first use.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Makes sure a SQLite file can be created: its directory exists and the URL asks for
/// read-write-create. Returns the URL to connect with and whether it is in memory.
fn prepare_sqlite_url(url: &str) -> Result<(String, bool), DatabaseError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let in_memory = path == ":memory:" || query.is_some_and(|q| q.contains("mode=memory"));
    if in_memory {
        return Ok((url.to_owned(), true));
    }
    if let Some(directory) = Path::new(path).parent()
        && !directory.as_os_str().is_empty()
    {
        std::fs::create_dir_all(directory).map_err(|source| DatabaseError::CreateDirectory {
            path: directory.to_path_buf(),
            source,
        })?;
    }
    let url = match query {
        Some(query) if query.contains("mode=") => url.to_owned(),
        Some(_) => format!("{url}&mode=rwc"),
        None => format!("{url}?mode=rwc"),
    };
    Ok((url, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_summarised_by_operation_and_table_only() {
        for (statement, expected) in [
            (
                "SELECT id, name FROM products WHERE id = $1",
                ("SELECT", "products"),
            ),
            ("select count(*) from \"users\"", ("SELECT", "users")),
            (
                "INSERT INTO refresh_tokens (id) VALUES ($1)",
                ("INSERT", "refresh_tokens"),
            ),
            (
                "UPDATE users SET roles = $1 WHERE id = $2",
                ("UPDATE", "users"),
            ),
            ("DELETE FROM products WHERE id = $1", ("DELETE", "products")),
            (
                "WITH x AS (SELECT 1) SELECT * FROM x",
                ("unknown", "unknown"),
            ),
            ("SELECT 1", ("SELECT", "unknown")),
            ("DELETE products", ("DELETE", "products")),
        ] {
            let (operation, table) = summary(statement);
            assert_eq!((operation, table.as_str()), expected, "{statement}");
        }
    }

    #[test]
    fn dialects_are_recognised() {
        assert_eq!(dialect_of("sqlite://data/x.db"), Some(Dialect::Sqlite));
        assert_eq!(dialect_of("sqlite::memory:"), Some(Dialect::Sqlite));
        assert_eq!(dialect_of("postgres://a@b/c"), Some(Dialect::Postgres));
        assert_eq!(dialect_of("postgresql://a@b/c"), Some(Dialect::Postgres));
        assert_eq!(dialect_of("mysql://a@b/c"), None);
    }

    #[tokio::test]
    async fn sqlite_file_is_created_in_wal_mode() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/dir/test.db");
        let database = Database::connect(&sqlite_url(&path), 2).await?;
        let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(database.pool())
            .await?;
        assert_eq!(mode.0.to_ascii_lowercase(), "wal");
        assert!(path.exists());
        assert!((database.readiness_check())().await.is_ok());
        database.close().await;
        assert!((database.readiness_check())().await.is_err());
        Ok(())
    }

    #[test]
    fn transient_codes_are_told_from_permanent_ones() {
        for code in ["5", "517", "6", "262"] {
            assert!(is_transient_sqlite_code(code), "{code}");
        }
        for code in ["19", "2067", "1"] {
            assert!(!is_transient_sqlite_code(code), "{code}");
        }
        for code in ["08006", "40001", "40P01", "53300", "57P01"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22021"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }

    #[tokio::test]
    async fn a_busy_sqlite_database_is_transient() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let database = Database::connect(&sqlite_url(&dir.path().join("busy.db")), 2).await?;
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(database.pool())
            .await?;
        let mut holder = database.pool().acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *holder).await?;
        let mut waiter = database.pool().acquire().await?;
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut *waiter)
            .await?;
        let busy = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *waiter)
            .await;
        let error = busy
            .err()
            .ok_or("the write should meet the other writer's lock")?;
        assert!(is_transient(&error), "{error:?}");
        let missing = sqlx::query("SELECT * FROM missing")
            .execute(&mut *waiter)
            .await;
        assert!(!is_transient(&missing.err().ok_or("missing table")?));
        sqlx::query("ROLLBACK").execute(&mut *holder).await?;
        Ok(())
    }

    #[tokio::test]
    async fn unsupported_url_is_a_clear_error() {
        let error = Database::connect("mysql://root:hunter2@localhost/x", 1)
            .await
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("not supported"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
