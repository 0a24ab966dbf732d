//! The user service: accounts, password checks and roles, over `flotilla.user.v1.UserService`.
//! Passwords go in (hashed with argon2id) and never come out, hashed or not.
//!
//! [`build`] turns a [`UserConfig`] into the tonic service and its database, so the binary serves
//! it through `platform::serve` and tests can drive it without a socket. The binary wraps the
//! service in `platform::auth::AuthLayer` with [`policy`]: signing up and the health check are
//! public, checking a password is for Flotilla's auth service only (a service token), reading an
//! account is for its owner or an administrator, listing accounts is for administrators.
//!
//! Rooms as in every service (`config`, `domain`, `store`, `grpc`, `error`), plus `password`
//! (argon2id off the async runtime; bounded in work and in waiting, with a share kept for
//! sign-ins; equal work for unknown emails; rehashing at new parameters on sign-in) and `bootstrap`
//! (the first administrator from the settings).

pub mod bootstrap;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod password;
pub mod store;

pub use config::UserConfig;
pub use grpc::{UserApi, policy};
pub use password::Hasher;
use platform::database::{Database, DatabaseError};
use platform::proto::user::v1::user_service_server::UserServiceServer;
pub use store::UserStore;

/// The user service, ready to serve.
#[derive(Debug)]
pub struct BuiltUser {
    /// The tonic service; wrap it in `platform::auth::AuthLayer` with [`policy`].
    pub service: UserServiceServer<UserApi>,
    /// Its database, for readiness checks and closing at shutdown.
    pub database: Database,
}

/// Why the user service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The password hasher could not be set up with the configured parameters.
    #[error(transparent)]
    Hashing(#[from] password::HashError),
    /// Making sure of the administrator from `FLOTILLA_ADMIN_EMAIL` failed.
    #[error("making sure of the administrator from FLOTILLA_ADMIN_EMAIL failed: {0}")]
    AdminBootstrap(#[source] error::UserError),
}

/// Warns when the argon2 parameters are below OWASP's minimum, opens the store (migrating it),
/// prepares the password hasher, makes sure of the configured administrator, and builds the
/// service.
///
/// # Errors
/// [`BuildError`] when the database cannot be reached or migrated, argon2 refuses its parameters,
/// or the administrator cannot be read or written.
pub async fn build(config: &UserConfig) -> Result<BuiltUser, BuildError> {
    if let Some(warning) = config.weak_hashing_warning() {
        tracing::warn!("{warning}");
    }
    let store = UserStore::open(&config.database).await?;
    let hasher = Hasher::new(config.hash_params).await?;
    if let Some(admin) = &config.admin {
        bootstrap::ensure_admin(&store, &hasher, admin)
            .await
            .map_err(BuildError::AdminBootstrap)?;
    }
    let database = store.database().clone();
    Ok(BuiltUser {
        service: UserServiceServer::new(UserApi::new(store, hasher)),
        database,
    })
}
