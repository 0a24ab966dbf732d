//! Checks access tokens: signature, expiry with leeway, issuer, audience, and the algorithm the
//! key source allows (EdDSA with published keys, HS256 with a shared secret), which rules out
//! `alg: none` and algorithm confusion (an HS256 token "signed" with a public key).
//!
//! Published keys are fetched from the auth service's `GetJwks` on first use, again when a token
//! names an unknown `kid` (a key rotation), and again once the cached set is older than
//! [`KEYS_TTL`], so a key the auth service stopped publishing (retired, or rotated out after a leak)
//! stops being trusted within that time. Fetches are attempted at most once per
//! [`MIN_REFRESH_INTERVAL`], whether they succeed or not, so a flood of forged `kid`s, or an
//! unreachable auth service, cannot turn into a flood of calls; at most [`MAX_KEYS`] keys are kept.
//! While the auth service cannot be reached, the last fetched keys keep working: an outage of the
//! auth service must not stop every other service.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use super::claims::Claims;
use super::config::{AuthConfig, KeySource};
use crate::discovery::Discovery;
use crate::discovery::Upstream;
use crate::proto::auth::v1 as auth_pb;
use crate::proto::auth::v1::auth_service_client::AuthServiceClient;

/// Shortest time between two JWKS fetches.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Age after which the cached key set is fetched again before use.
pub const KEYS_TTL: Duration = Duration::from_secs(300);
/// Most keys kept from a JWKS.
pub const MAX_KEYS: usize = 16;
const JWKS_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request is not let through. Messages say what is wrong, never what the token was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header or metadata.
    #[error("missing credentials: send `authorization: Bearer <access token>`")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed authorization: expected `Bearer <access token>`")]
    MalformedHeader,
    /// The token does not verify.
    #[error("invalid access token: {0}")]
    Invalid(&'static str),
    /// The token is valid but lacks the role the method needs.
    #[error("permission denied: this needs the {0} role")]
    Forbidden(&'static str),
    /// The auth service's keys could not be fetched.
    #[error("cannot verify tokens right now: the auth service's keys are unavailable")]
    KeysUnavailable,
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::Forbidden(_) => tonic::Status::permission_denied(message),
            AuthError::KeysUnavailable => tonic::Status::unavailable(message),
            AuthError::Missing | AuthError::MalformedHeader | AuthError::Invalid(_) => {
                tonic::Status::unauthenticated(message)
            }
        }
    }
}

/// Verifies access tokens for one component. Clones share everything: every call a service
/// serves holds one, so a clone must not copy the validation rules (three sets of strings).
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Keys {
    Secret(Arc<DecodingKey>),
    Fixed(Arc<HashMap<String, DecodingKey>>),
    Published(Arc<PublishedKeys>),
}

struct PublishedKeys {
    client: AuthServiceClient<Upstream>,
    cache: RwLock<KeyCache>,
    last_attempt: Mutex<Option<Instant>>,
    timing: FetchTiming,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

impl KeyCache {
    fn is_fresh(&self, ttl: Duration) -> bool {
        self.fetched_at.is_some_and(|at| at.elapsed() < ttl)
    }
}

/// How often published keys are fetched; tests shorten both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchTiming {
    pub(crate) keys_ttl: Duration,
    pub(crate) min_refresh_interval: Duration,
}

impl Default for FetchTiming {
    fn default() -> Self {
        Self {
            keys_ttl: KEYS_TTL,
            min_refresh_interval: MIN_REFRESH_INTERVAL,
        }
    }
}

impl Verifier {
    /// A verifier as `config` says. With published keys, the auth service is found through
    /// `discovery` and reached lazily, on the first token.
    pub fn new(config: &AuthConfig, discovery: &Discovery) -> Self {
        Self::with_timing(config, discovery, FetchTiming::default())
    }

    pub(crate) fn with_timing(
        config: &AuthConfig,
        discovery: &Discovery,
        timing: FetchTiming,
    ) -> Self {
        let keys = match &config.keys {
            KeySource::SharedSecret(secret) => {
                return Self::with_secret(config, secret.expose().as_bytes());
            }
            KeySource::Jwks => Keys::Published(Arc::new(PublishedKeys {
                client: AuthServiceClient::new(discovery.channel("auth")),
                cache: RwLock::new(KeyCache::default()),
                last_attempt: Mutex::new(None),
                timing,
            })),
        };
        Self {
            keys,
            validation: Arc::new(validation(config, Algorithm::EdDSA)),
        }
    }

    /// A verifier of HS256 tokens signed with `secret`.
    pub fn with_secret(config: &AuthConfig, secret: &[u8]) -> Self {
        Self {
            keys: Keys::Secret(Arc::new(DecodingKey::from_secret(secret))),
            validation: Arc::new(validation(config, Algorithm::HS256)),
        }
    }

    /// A verifier of EdDSA tokens with a fixed set of public keys by `kid`: what the auth service
    /// uses for its own keys, and what tests use.
    pub fn with_public_keys(config: &AuthConfig, keys: HashMap<String, DecodingKey>) -> Self {
        Self {
            keys: Keys::Fixed(Arc::new(keys)),
            validation: Arc::new(validation(config, Algorithm::EdDSA)),
        }
    }

    /// Verifies `token` and returns its claims.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] naming what is wrong; [`AuthError::KeysUnavailable`] when published
    /// keys are needed and cannot be fetched.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let key = match &self.keys {
            Keys::Secret(key) => DecodingKey::clone(key),
            Keys::Fixed(keys) => {
                let kid = ed25519_kid(token)?;
                keys.get(&kid)
                    .cloned()
                    .ok_or(AuthError::Invalid("unknown signing key"))?
            }
            Keys::Published(published) => published.key(&ed25519_kid(token)?).await?,
        };
        jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map(|data| data.claims)
            .map_err(|error| describe(error.kind()))
    }
}

impl PublishedKeys {
    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        {
            let cache = self.cache.read().await;
            if let (Some(key), true) = (cache.keys.get(kid), cache.is_fresh(self.timing.keys_ttl)) {
                return Ok(key.clone());
            }
        }
        let fetched = self.refresh().await;
        let cache = self.cache.read().await;
        match cache.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            // Never fetched, and the fetch failed: the keys are unavailable, not the token bad.
            None if fetched.is_err() && cache.fetched_at.is_none() => {
                Err(AuthError::KeysUnavailable)
            }
            None => Err(AuthError::Invalid("unknown signing key")),
        }
    }

    /// Fetches the JWKS unless an attempt was made less than [`MIN_REFRESH_INTERVAL`] ago. The
    /// attempt is recorded before the call, so concurrent requests and failures share one call; a
    /// failed fetch keeps the keys fetched before.
    async fn refresh(&self) -> Result<(), AuthError> {
        let mut last_attempt = self.last_attempt.lock().await;
        if last_attempt.is_some_and(|at| at.elapsed() < self.timing.min_refresh_interval) {
            return Ok(());
        }
        *last_attempt = Some(Instant::now());
        let mut request = tonic::Request::new(auth_pb::GetJwksRequest {});
        request.set_timeout(JWKS_TIMEOUT);
        // The call's own deadline ends it, so the breaker sees the upstream's slowness; this is
        // only a backstop, a little later, should something below not honour the deadline.
        let backstop = JWKS_TIMEOUT + Duration::from_secs(1);
        let response = tokio::time::timeout(backstop, self.client.clone().get_jwks(request))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("fetching the JWKS timed out")))
            .map_err(|status| {
                tracing::warn!(code = ?status.code(), upstream_message = status.message(), "fetching the JWKS failed; keeping the keys fetched before");
                AuthError::KeysUnavailable
            })?;
        let keys: HashMap<String, DecodingKey> = response
            .into_inner()
            .keys
            .into_iter()
            .filter(|jwk| jwk.kty == "OKP" && jwk.crv == "Ed25519" && !jwk.kid.is_empty())
            .take(MAX_KEYS)
            .filter_map(|jwk| Some((jwk.kid, DecodingKey::from_ed_components(&jwk.x).ok()?)))
            .collect();
        tracing::debug!(keys = keys.len(), "fetched the auth service's signing keys");
        *self.cache.write().await = KeyCache {
            keys,
            fetched_at: Some(Instant::now()),
        };
        Ok(())
    }
}

/// The `kid` of an EdDSA token; any other algorithm is refused before a key is looked up.
fn ed25519_kid(token: &str) -> Result<String, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|error| describe(error.kind()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(AuthError::Invalid("signing algorithm not accepted"));
    }
    header
        .kid
        .ok_or(AuthError::Invalid("token names no signing key (kid)"))
}

/// The checks every token passes: `algorithm` only, expiry with leeway, issuer, audience, and the
/// claims Flotilla's tokens always carry.
fn validation(config: &AuthConfig, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.leeway.as_secs();
    validation.set_issuer(&[config.issuer.as_str()]);
    validation.set_audience(&[config.audience.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud", "jti"]);
    validation
}

/// What went wrong with a token, in words for the caller.
fn describe(kind: &ErrorKind) -> AuthError {
    AuthError::Invalid(match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "signing algorithm not accepted"
        }
        ErrorKind::ImmatureSignature => "token not valid yet",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
        _ => "malformed token",
    })
}
