//! The auth service: signs in people by asking the user service to check their password, and issues
//! short-lived JWT access tokens with opaque, rotating refresh tokens, over
//! `flotilla.auth.v1.AuthService`.
//!
//! [`build`] turns an [`AuthServiceConfig`] into the tonic service and its database, so the binary
//! serves it through `platform::serve` and tests can drive it without a socket ([`build_api`] gives
//! the implementation itself, on a clock the test controls).
//!
//! - Access tokens are signed with Ed25519 keys read from files ([`keys`]; [`ensure_key_file`] and
//!   [`rotate_key_files`] make and rotate them), or HS256 with `JWT_SECRET`. Their public keys are
//!   published by `GetJwks`, which the other components' `platform::auth::Verifier` fetches.
//! - Refresh tokens are stored only as SHA-256 hashes, in families that end as a whole on logout
//!   or when a used token comes back ([`grpc`] describes the flows).
//! - Failed logins are limited per account and per client address ([`limiter`]); the client
//!   address comes from `x-forwarded-for` only behind a trusted proxy
//!   (`FLOTILLA_AUTH_TRUSTED_PROXIES`, loopback by default).
//! - Expired rows are purged by a background task that [`build`] starts ([`purge`]).
//!
//! Every method is public at the transport ([`policy`]): each carries its own credential (a
//! password, a refresh token, the access token to check), and `GetJwks` publishes public keys.

#![warn(missing_docs, unreachable_pub)]

pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod limiter;
pub mod purge;
pub mod store;
pub mod tokens;
pub mod users;

use std::sync::Arc;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{AuthServiceConfig, SigningConfig};
pub use grpc::AuthApi;
pub use keys::{KeyFileError, KeyRing, Rotation, ensure_key_file, rotate_key_files};
use platform::auth::{Access, Policy};
use platform::database::{Database, DatabaseError};
use platform::discovery::Discovery;
use platform::proto::auth::v1::auth_service_server::AuthServiceServer;
pub use purge::Purger;
pub use store::AuthStore;

/// The auth service, ready to serve.
#[derive(Debug)]
pub struct BuiltAuth {
    /// The tonic service.
    pub service: AuthServiceServer<AuthApi>,
    /// Its database, for readiness checks and closing at shutdown.
    pub database: Database,
    /// The task that purges expired rows every [`grpc::PURGE_INTERVAL`]. It ends when
    /// [`BuiltAuth::database`] is closed, which is how the binary stops it at shutdown (after the
    /// server, before exiting); [`Purger::stop`] ends it sooner. Dropping this handle leaves the
    /// task running.
    pub purger: Purger,
}

/// Why the auth service could not start. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// A signing key file could not be read or holds no usable key.
    #[error(transparent)]
    Key(#[from] KeyFileError),
}

/// Loads the signing keys, opens the store (migrating it) and builds the service, with a
/// load-balanced channel to the user service found through `discovery` (connecting lazily, so the
/// auth service can start before it), and starts
/// the background purge of expired rows (see [`BuiltAuth::purger`]). Call it inside a Tokio
/// runtime.
///
/// # Errors
/// [`BuildError`] naming the key file that cannot be used, or when the database cannot be reached
/// or migrated.
pub async fn build(
    config: &AuthServiceConfig,
    discovery: &Discovery,
) -> Result<BuiltAuth, BuildError> {
    let api = build_api(config, Arc::new(SystemClock), discovery).await?;
    let database = api.store().database().clone();
    let purger = Purger::spawn(api.clone(), grpc::PURGE_INTERVAL);
    Ok(BuiltAuth {
        service: AuthServiceServer::new(api),
        database,
        purger,
    })
}

/// What [`build`] builds, before it is wrapped in the tonic server, on `clock`: what tests drive.
/// No purge task is started; run [`AuthApi::purge_expired`] or [`Purger::spawn`] as needed.
///
/// # Errors
/// As [`build`].
pub async fn build_api(
    config: &AuthServiceConfig,
    clock: Arc<dyn Clock>,
    discovery: &Discovery,
) -> Result<AuthApi, BuildError> {
    let rules = config.token_rules();
    let ring = match &config.signing {
        SigningConfig::SharedSecret(secret) => KeyRing::shared_secret(secret.clone()),
        SigningConfig::Ed25519 {
            key_file,
            previous_key_file,
        } => KeyRing::load(
            key_file,
            previous_key_file.as_deref(),
            rules.access_lifetime.saturating_add(rules.leeway),
        )?,
    };
    let store = AuthStore::open(&config.database).await?;
    if let Some(kid) = ring.current().kid() {
        tracing::info!(kid, "signing access tokens with Ed25519");
    } else {
        tracing::info!("signing access tokens with the shared secret (HS256)");
    }
    Ok(AuthApi::new(
        store,
        tokens::Tokens::new(rules, ring),
        limiter::LoginLimiter::new(config.login_limits, clock.clone()),
        users::Users::new(discovery.channel("user")),
        clock,
        config.trusted_proxies.clone(),
    ))
}

/// Who may call each method: everyone, because each method carries its own credential (Login a
/// password, Refresh and Revoke a refresh token, ValidateToken the token it checks) and GetJwks
/// publishes only public keys. Listed one by one so that a new method stays closed until someone
/// decides.
pub fn policy() -> Policy {
    Policy::new()
        .method("Login", Access::Public)
        .method("Refresh", Access::Public)
        .method("ValidateToken", Access::Public)
        .method("Revoke", Access::Public)
        .method("GetJwks", Access::Public)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of `AuthService` has a rule, every rule a method, and every rule is public.
    #[test]
    fn the_policy_covers_every_method() {
        let policy = policy();
        let mismatches = policy.mismatches("flotilla.auth.v1.AuthService");
        assert!(mismatches.is_empty(), "{mismatches:?}");
        assert_eq!(policy.methods().count(), 5);
        for method in policy.methods() {
            assert_eq!(policy.access(method), Some(Access::Public), "{method}");
        }
    }
}
