//! Accounts in SQL: one implementation for SQLite and PostgreSQL alike, over sqlx's Any driver with
//! queries in the SQL both share (`$n` placeholders work in both). As in the product service there
//! is no persistence trait, which would have had this one implementor; tests run the same cases
//! against both databases instead.
//!
//! Email uniqueness is the database's job (`UNIQUE (email)` on the normalised address), not a
//! read-then-write here, so two sign-ups racing for one address cannot both win. Roles live in one
//! comma-separated column ([`Roles::to_column`]); they change only through a conditional update
//! (`… WHERE roles = <what was read>`), so a concurrent change is never overwritten.
//!
//! A sign-up is refused early when [`UserStore::email_taken`] finds the address, so a taken email
//! costs no password hash; the constraint still settles the race between that look and the insert.
//!
//! Only [`UserStore::find_by_email`] reads the password hash, for a sign-in; every other read
//! leaves the column out. [`UserStore::replace_password_hash`] writes it, conditionally, when a
//! sign-in rehashes a password at new argon2 parameters.

use platform::database::{Database, DatabaseConfig, DatabaseError};
use platform::sqlx::any::AnyRow;
use platform::sqlx::{self, Row};
use tracing::Instrument;

use crate::domain::{Account, Cursor, Email, PasswordHash, Roles, User, UserId};
use crate::error::UserError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const SELECT_BY_ID: &str = "SELECT id, email, name, roles, created_at_us, updated_at_us \
     FROM users WHERE id = $1";
const SELECT_BY_EMAIL: &str = "SELECT id, email, name, roles, created_at_us, updated_at_us, \
     password_hash FROM users WHERE email = $1";
const EMAIL_EXISTS: &str = "SELECT id FROM users WHERE email = $1";
const LIST_FIRST: &str = "SELECT id, email, name, roles, created_at_us, updated_at_us \
     FROM users ORDER BY created_at_us, id LIMIT $1";
const LIST_AFTER: &str = "SELECT id, email, name, roles, created_at_us, updated_at_us \
     FROM users WHERE created_at_us > $1 OR (created_at_us = $1 AND id > $2) \
     ORDER BY created_at_us, id LIMIT $3";
const INSERT: &str = "INSERT INTO users (id, email, name, password_hash, roles, created_at_us, \
     updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7)";
const SET_ROLES: &str = "UPDATE users SET roles = $1, updated_at_us = $2 \
     WHERE id = $3 AND roles = $4";
const SET_PASSWORD_HASH: &str = "UPDATE users SET password_hash = $1 \
     WHERE id = $2 AND password_hash = $3";

/// The account table of one database.
#[derive(Debug, Clone)]
pub struct UserStore {
    database: Database,
}

impl UserStore {
    /// Connects as `config` says and applies the migrations.
    ///
    /// # Errors
    /// A [`DatabaseError`] when the database cannot be reached or migrated.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, DatabaseError> {
        Ok(Self {
            database: Database::open(config, &MIGRATOR).await?,
        })
    }

    /// The underlying database, for readiness checks and shutdown.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Stores a new account.
    ///
    /// # Errors
    /// [`UserError::EmailTaken`] when the normalised email has an account (ids are fresh UUIDv7s,
    /// so the email is the only unique column a new account can collide on); database failures
    /// otherwise.
    pub async fn insert(&self, account: &Account) -> Result<(), UserError> {
        let user = &account.user;
        let result = sqlx::query(INSERT)
            .bind(user.id.as_str())
            .bind(user.email.as_str())
            .bind(user.name.as_str())
            .bind(account.password_hash.as_phc())
            .bind(user.roles.to_column())
            .bind(user.created_at_us)
            .bind(user.updated_at_us)
            .execute(self.database.pool())
            .instrument(self.database.span(INSERT))
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                Err(UserError::EmailTaken)
            }
            Err(error) => Err(UserError::from_database(error)),
        }
    }

    /// Whether the normalised email has an account: lets a sign-up be refused before its
    /// password is hashed. Only a hint, for the cheap answer: [`UserStore::insert`] and the
    /// `UNIQUE (email)` constraint still decide a race between two sign-ups.
    ///
    /// # Errors
    /// [`UserError::Unavailable`] or [`UserError::Storage`] when the database fails.
    pub async fn email_taken(&self, email: &Email) -> Result<bool, UserError> {
        let row = sqlx::query(EMAIL_EXISTS)
            .bind(email.as_str())
            .fetch_optional(self.database.pool())
            .instrument(self.database.span(EMAIL_EXISTS))
            .await
            .map_err(UserError::from_database)?;
        Ok(row.is_some())
    }

    /// One account, if it exists; without its password hash.
    ///
    /// # Errors
    /// [`UserError::Unavailable`] or [`UserError::Storage`] when the database fails.
    pub async fn get(&self, id: &UserId) -> Result<Option<User>, UserError> {
        let row = sqlx::query(SELECT_BY_ID)
            .bind(id.as_str())
            .fetch_optional(self.database.pool())
            .instrument(self.database.span(SELECT_BY_ID))
            .await
            .map_err(UserError::from_database)?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The account with this normalised email and its password hash, to check a password.
    ///
    /// # Errors
    /// [`UserError::Unavailable`] or [`UserError::Storage`] when the database fails.
    pub async fn find_by_email(&self, email: &Email) -> Result<Option<Account>, UserError> {
        let row = sqlx::query(SELECT_BY_EMAIL)
            .bind(email.as_str())
            .fetch_optional(self.database.pool())
            .instrument(self.database.span(SELECT_BY_EMAIL))
            .await
            .map_err(UserError::from_database)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let password_hash = row
            .try_get::<String, _>("password_hash")
            .map_err(UserError::from_database)?;
        Ok(Some(Account {
            user: user_from_row(&row)?,
            password_hash: PasswordHash::from_phc(password_hash),
        }))
    }

    /// Up to `limit` accounts, oldest first (id breaking ties), starting after `after`.
    ///
    /// # Errors
    /// [`UserError::Unavailable`] or [`UserError::Storage`] when the database fails.
    pub async fn list(&self, after: Option<&Cursor>, limit: u32) -> Result<Vec<User>, UserError> {
        let limit = i64::from(limit);
        let query = match after {
            None => sqlx::query(LIST_FIRST).bind(limit),
            Some(cursor) => sqlx::query(LIST_AFTER)
                .bind(cursor.created_at_us)
                .bind(cursor.id.as_str())
                .bind(limit),
        };
        let rows = query
            .fetch_all(self.database.pool())
            .instrument(self.database.span(LIST_AFTER))
            .await
            .map_err(UserError::from_database)?;
        rows.iter().map(user_from_row).collect()
    }

    /// Replaces the roles of `id` with `roles`, only if they are still `expected`. Returns whether
    /// the row was written: `false` when the account is gone or its roles changed meanwhile.
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_roles(
        &self,
        id: &UserId,
        roles: &Roles,
        expected: &Roles,
        now_us: i64,
    ) -> Result<bool, UserError> {
        let result = sqlx::query(SET_ROLES)
            .bind(roles.to_column())
            .bind(now_us)
            .bind(id.as_str())
            .bind(expected.to_column())
            .execute(self.database.pool())
            .instrument(self.database.span(SET_ROLES))
            .await
            .map_err(UserError::from_database)?;
        Ok(result.rows_affected() > 0)
    }

    /// Replaces the password hash of `id` with `fresh`, only if it is still `expected` (the hash
    /// `fresh` was made to replace). Returns whether the row was written: `false` when the account
    /// is gone or its hash changed meanwhile. For rehashing at new parameters, which changes
    /// neither the password nor anything a reader sees, so `updated_at_us` is left alone.
    ///
    /// # Errors
    /// Database failures.
    pub async fn replace_password_hash(
        &self,
        id: &UserId,
        expected: &PasswordHash,
        fresh: &PasswordHash,
    ) -> Result<bool, UserError> {
        let result = sqlx::query(SET_PASSWORD_HASH)
            .bind(fresh.as_phc())
            .bind(id.as_str())
            .bind(expected.as_phc())
            .execute(self.database.pool())
            .instrument(self.database.span(SET_PASSWORD_HASH))
            .await
            .map_err(UserError::from_database)?;
        Ok(result.rows_affected() > 0)
    }
}

/// A row back into an account. Rows were validated on the way in; a row that no longer passes
/// (edited by hand) is reported as a storage error rather than served.
fn user_from_row(row: &AnyRow) -> Result<User, UserError> {
    let text = |column: &str| {
        row.try_get::<String, _>(column)
            .map_err(UserError::from_database)
    };
    let number = |column: &str| {
        row.try_get::<i64, _>(column)
            .map_err(UserError::from_database)
    };
    let corrupt = |reason: String| UserError::Storage(sqlx::Error::Decode(reason.into()));
    Ok(User {
        id: UserId::parse("id", &text("id")?).map_err(|error| corrupt(error.to_string()))?,
        email: Email::parse("email", &text("email")?)
            .map_err(|error| corrupt(error.to_string()))?,
        name: text("name")?,
        roles: Roles::from_column(&text("roles")?).map_err(|error| corrupt(error.to_string()))?,
        created_at_us: number("created_at_us")?,
        updated_at_us: number("updated_at_us")?,
    })
}
