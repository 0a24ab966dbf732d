//! Token families, refresh-token hashes and access-token ids in SQL: one implementation for SQLite
//! and PostgreSQL alike, over sqlx's Any driver with `$n` placeholders. As in the product service,
//! there is no persistence trait; the integration tests run every case against both databases.
//!
//! Rotation hinges on two conditional updates in one transaction ([`AuthStore::rotate`]):
//!
//! 1. `UPDATE token_families SET revoked_at_us = revoked_at_us WHERE id = $1 AND revoked_at_us IS
//!    NULL` changes nothing but takes the family row's write lock, and finds no row once the family
//!    is revoked (or purged). Revocation updates that same row, so a rotation and a revocation of
//!    one family are serialised: in PostgreSQL (READ COMMITTED) whichever comes second waits for
//!    the first to commit, and a rotation that waited re-checks `revoked_at_us` on the row the
//!    revocation wrote. A subquery over `token_families` would not do: it reads a snapshot and
//!    locks nothing, so a Refresh could succeed just after its family was revoked. SQLite has one
//!    writer at a time, so there the order is simply that of the transactions.
//! 2. `UPDATE refresh_tokens SET used_at_us = … WHERE hash = $1 AND used_at_us IS NULL …` marks
//!    the token used. One statement is atomic in both databases, so of two concurrent exchanges of
//!    the same token exactly one changes a row; the loser sees zero rows and treats the token as
//!    reused.
//!
//! An update is the first statement of the transaction, so SQLite takes its write lock at once
//! rather than upgrading a read lock (which risks a busy error).
//!
//! Rows are purged once they can no longer matter ([`AuthStore::purge_expired`]): access-token ids
//! once the token has expired beyond the leeway, refresh tokens once expired (used ones are kept
//! until then, because presenting one is how a stolen copy is detected), families once empty.

use platform::database::{Database, DatabaseConfig, DatabaseError};
use platform::sqlx::{self, Row};
use tracing::Instrument;

use crate::domain::{AccessTokenStatus, StoredRefresh, TokenHash};
use crate::error::AuthServiceError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A family to start at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFamily {
    /// Its id.
    pub id: String,
    /// The user.
    pub subject: String,
    /// The roles every token of the family carries.
    pub roles: Vec<String>,
    /// When it starts, in microseconds.
    pub created_at_us: i64,
}

/// A refresh token to store (by hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefresh {
    /// The token's hash.
    pub hash: TokenHash,
    /// When it was issued, in microseconds.
    pub issued_at_us: i64,
    /// When it expires, in microseconds.
    pub expires_at_us: i64,
}

/// An issued access token's id to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccess {
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`, in microseconds.
    pub expires_at_us: i64,
}

/// How many rows a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Access-token ids.
    pub access_tokens: u64,
    /// Refresh tokens.
    pub refresh_tokens: u64,
    /// Families.
    pub families: u64,
}

/// The auth service's tables in one database.
#[derive(Debug, Clone)]
pub struct AuthStore {
    database: Database,
}

impl AuthStore {
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

    /// Starts a family with its first refresh token and access token, all or nothing.
    ///
    /// # Errors
    /// Database failures; nothing is written then.
    pub async fn start_family(
        &self,
        family: &NewFamily,
        refresh: &NewRefresh,
        access: &NewAccess,
    ) -> Result<(), AuthServiceError> {
        let roles = serde_json::to_string(&family.roles)
            .map_err(|error| AuthServiceError::Storage(sqlx::Error::Encode(error.into())))?;
        let mut transaction = self.begin().await?;
        sqlx::query(
            "INSERT INTO token_families (id, subject, roles, created_at_us, revoked_at_us) \
             VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(family.id.as_str())
        .bind(family.subject.as_str())
        .bind(roles)
        .bind(family.created_at_us)
        .execute(&mut *transaction)
        .instrument(self.database.span("INSERT token_families"))
        .await
        .map_err(AuthServiceError::from_database)?;
        insert_tokens(
            &self.database,
            &mut transaction,
            &family.id,
            refresh,
            access,
        )
        .await?;
        transaction
            .commit()
            .await
            .map_err(AuthServiceError::from_database)
    }

    /// The refresh token with this hash and its family, if it is stored.
    ///
    /// # Errors
    /// Database failures, or a stored row that no longer decodes.
    pub async fn find_refresh(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<StoredRefresh>, AuthServiceError> {
        let row = sqlx::query(
            "SELECT t.family_id, t.expires_at_us, t.used_at_us, f.subject, f.roles, \
             f.created_at_us, f.revoked_at_us FROM refresh_tokens t JOIN token_families f ON f.id = t.family_id \
             WHERE t.hash = $1",
        )
        .bind(hash.as_str())
        .fetch_optional(self.database.pool())
        .instrument(self.database.span("SELECT refresh_tokens"))
        .await
        .map_err(AuthServiceError::from_database)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let roles: String = row
            .try_get("roles")
            .map_err(AuthServiceError::from_database)?;
        let roles = serde_json::from_str(&roles)
            .map_err(|error| AuthServiceError::Storage(sqlx::Error::Decode(error.into())))?;
        Ok(Some(StoredRefresh {
            family_id: row
                .try_get("family_id")
                .map_err(AuthServiceError::from_database)?,
            subject: row
                .try_get("subject")
                .map_err(AuthServiceError::from_database)?,
            roles,
            expires_at_us: row
                .try_get("expires_at_us")
                .map_err(AuthServiceError::from_database)?,
            family_created_at_us: row
                .try_get("created_at_us")
                .map_err(AuthServiceError::from_database)?,
            used: row
                .try_get::<Option<i64>, _>("used_at_us")
                .map_err(AuthServiceError::from_database)?
                .is_some(),
            family_revoked: row
                .try_get::<Option<i64>, _>("revoked_at_us")
                .map_err(AuthServiceError::from_database)?
                .is_some(),
        }))
    }

    /// Exchanges the refresh token `used`: marks it used at `now_us` if it is still unused,
    /// unexpired and its family alive, and stores its successors in the same family, all or
    /// nothing. The family row is locked first (see the module notes), so a revocation cannot slip
    /// in between the check and the exchange. Returns `false` when the family is revoked or gone,
    /// or the token was used or expired meanwhile, and then writes nothing.
    ///
    /// # Errors
    /// Database failures.
    pub async fn rotate(
        &self,
        used: &TokenHash,
        now_us: i64,
        family_id: &str,
        next: &NewRefresh,
        access: &NewAccess,
    ) -> Result<bool, AuthServiceError> {
        let mut transaction = self.begin().await?;
        // Locks the family row, or finds it revoked: held until commit, and what a concurrent
        // revocation must wait for (or what waits for it).
        let alive = sqlx::query(
            "UPDATE token_families SET revoked_at_us = revoked_at_us \
             WHERE id = $1 AND revoked_at_us IS NULL",
        )
        .bind(family_id)
        .execute(&mut *transaction)
        .instrument(self.database.span("UPDATE token_families"))
        .await
        .map_err(AuthServiceError::from_database)?;
        if alive.rows_affected() == 0 {
            transaction
                .rollback()
                .await
                .map_err(AuthServiceError::from_database)?;
            return Ok(false);
        }
        let marked = sqlx::query(
            "UPDATE refresh_tokens SET used_at_us = $2 \
             WHERE hash = $1 AND used_at_us IS NULL AND expires_at_us > $2 AND family_id = $3",
        )
        .bind(used.as_str())
        .bind(now_us)
        .bind(family_id)
        .execute(&mut *transaction)
        .instrument(self.database.span("UPDATE refresh_tokens"))
        .await
        .map_err(AuthServiceError::from_database)?;
        if marked.rows_affected() == 0 {
            transaction
                .rollback()
                .await
                .map_err(AuthServiceError::from_database)?;
            return Ok(false);
        }
        insert_tokens(&self.database, &mut transaction, family_id, next, access).await?;
        transaction
            .commit()
            .await
            .map_err(AuthServiceError::from_database)?;
        Ok(true)
    }

    /// Ends a family at `now_us`; returns whether it was alive until now. It updates the family's
    /// row, so it waits for (or is waited for by) a rotation in the same family ([`Self::rotate`]).
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_family(
        &self,
        family_id: &str,
        now_us: i64,
    ) -> Result<bool, AuthServiceError> {
        let result = sqlx::query(
            "UPDATE token_families SET revoked_at_us = $2 WHERE id = $1 AND revoked_at_us IS NULL",
        )
        .bind(family_id)
        .bind(now_us)
        .execute(self.database.pool())
        .instrument(self.database.span("UPDATE token_families"))
        .await
        .map_err(AuthServiceError::from_database)?;
        Ok(result.rows_affected() > 0)
    }

    /// Ends the family of the refresh token with this hash, if there is one and it is alive;
    /// returns whether a family was ended. Like [`Self::revoke_family`], it updates the family's
    /// row, so it is serialised with rotations of that family.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_by_refresh(
        &self,
        hash: &TokenHash,
        now_us: i64,
    ) -> Result<bool, AuthServiceError> {
        let result = sqlx::query(
            "UPDATE token_families SET revoked_at_us = $2 WHERE revoked_at_us IS NULL \
             AND id IN (SELECT family_id FROM refresh_tokens WHERE hash = $1)",
        )
        .bind(hash.as_str())
        .bind(now_us)
        .execute(self.database.pool())
        .instrument(self.database.span("UPDATE token_families"))
        .await
        .map_err(AuthServiceError::from_database)?;
        Ok(result.rows_affected() > 0)
    }

    /// Whether the access token with this `jti` was issued here and its family is alive.
    ///
    /// # Errors
    /// Database failures.
    pub async fn access_token_status(
        &self,
        jti: &str,
    ) -> Result<AccessTokenStatus, AuthServiceError> {
        let row = sqlx::query(
            "SELECT f.revoked_at_us FROM access_tokens a \
             JOIN token_families f ON f.id = a.family_id WHERE a.jti = $1",
        )
        .bind(jti)
        .fetch_optional(self.database.pool())
        .instrument(self.database.span("SELECT access_tokens"))
        .await
        .map_err(AuthServiceError::from_database)?;
        let Some(row) = row else {
            return Ok(AccessTokenStatus::Unknown);
        };
        let revoked: Option<i64> = row
            .try_get("revoked_at_us")
            .map_err(AuthServiceError::from_database)?;
        Ok(match revoked {
            Some(_) => AccessTokenStatus::Revoked,
            None => AccessTokenStatus::Active,
        })
    }

    /// Removes what can no longer matter at `now_us`: access-token ids whose token expired more
    /// than `leeway_us` ago (no verifier accepts them any more), expired refresh tokens, and
    /// families with no token left.
    ///
    /// # Errors
    /// Database failures; what was removed before stays removed.
    pub async fn purge_expired(
        &self,
        now_us: i64,
        leeway_us: i64,
    ) -> Result<Purged, AuthServiceError> {
        let pool = self.database.pool();
        let access_tokens = sqlx::query("DELETE FROM access_tokens WHERE expires_at_us < $1")
            .bind(now_us.saturating_sub(leeway_us))
            .execute(pool)
            .instrument(self.database.span("DELETE access_tokens"))
            .await
            .map_err(AuthServiceError::from_database)?
            .rows_affected();
        let refresh_tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at_us < $1")
            .bind(now_us)
            .execute(pool)
            .instrument(self.database.span("DELETE refresh_tokens"))
            .await
            .map_err(AuthServiceError::from_database)?
            .rows_affected();
        let families = sqlx::query(
            "DELETE FROM token_families WHERE \
             NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.family_id = token_families.id) \
             AND NOT EXISTS (SELECT 1 FROM access_tokens a WHERE a.family_id = token_families.id)",
        )
        .execute(pool)
        .instrument(self.database.span("DELETE token_families"))
        .await
        .map_err(AuthServiceError::from_database)?
        .rows_affected();
        Ok(Purged {
            access_tokens,
            refresh_tokens,
            families,
        })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, AuthServiceError> {
        self.database
            .pool()
            .begin()
            .await
            .map_err(AuthServiceError::from_database)
    }
}

/// Stores a family's next refresh token and the id of the access token issued with it.
async fn insert_tokens(
    database: &Database,
    transaction: &mut sqlx::Transaction<'static, sqlx::Any>,
    family_id: &str,
    refresh: &NewRefresh,
    access: &NewAccess,
) -> Result<(), AuthServiceError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, family_id, issued_at_us, expires_at_us, used_at_us) \
         VALUES ($1, $2, $3, $4, NULL)",
    )
    .bind(refresh.hash.as_str())
    .bind(family_id)
    .bind(refresh.issued_at_us)
    .bind(refresh.expires_at_us)
    .execute(&mut **transaction)
    .instrument(database.span("INSERT refresh_tokens"))
    .await
    .map_err(AuthServiceError::from_database)?;
    sqlx::query("INSERT INTO access_tokens (jti, family_id, expires_at_us) VALUES ($1, $2, $3)")
        .bind(access.jti.as_str())
        .bind(family_id)
        .bind(access.expires_at_us)
        .execute(&mut **transaction)
        .instrument(database.span("INSERT access_tokens"))
        .await
        .map_err(AuthServiceError::from_database)?;
    Ok(())
}
