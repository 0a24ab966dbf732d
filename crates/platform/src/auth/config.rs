//! How a component verifies tokens.

use std::time::Duration;

use crate::config::{ConfigError, Secret, Settings};

/// Shortest shared secret accepted: 32 bytes, the HS256 key size (RFC 7518, section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Where verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The auth service's published Ed25519 keys (`GetJwks` over gRPC), the auth service found
    /// through discovery.
    Jwks,
    /// A shared HS256 secret (`JWT_SECRET`), the simple mode.
    SharedSecret(Secret),
}

/// Token verification settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Where keys come from.
    pub keys: KeySource,
    /// Required `iss` (`FLOTILLA_JWT_ISSUER`, default `flotilla-auth`).
    pub issuer: String,
    /// Required `aud` (`FLOTILLA_JWT_AUDIENCE`, default `flotilla`).
    pub audience: String,
    /// Clock skew tolerated on `exp` (`FLOTILLA_JWT_LEEWAY`, default 30 s).
    pub leeway: Duration,
}

impl AuthConfig {
    /// Reads `JWT_SECRET` (shared-secret mode when set; published keys otherwise), and the issuer,
    /// audience and leeway.
    ///
    /// # Errors
    /// A [`ConfigError`] for a secret shorter than 32 bytes or another bad value.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let keys = match settings.optional_secret("JWT_SECRET")? {
            Some(secret) if secret.expose().len() < MIN_SECRET_BYTES => {
                return Err(ConfigError::Invalid {
                    name: "JWT_SECRET".into(),
                    value: "***".into(),
                    origin: settings.origin("JWT_SECRET"),
                    expected: format!(
                        "a secret of at least {MIN_SECRET_BYTES} bytes (this one has {}); generate one with `openssl rand -base64 48`",
                        secret.expose().len()
                    ),
                });
            }
            Some(secret) => KeySource::SharedSecret(secret),
            None => KeySource::Jwks,
        };
        Ok(Self {
            keys,
            issuer: settings.string("FLOTILLA_JWT_ISSUER", "flotilla-auth")?,
            audience: settings.string("FLOTILLA_JWT_AUDIENCE", "flotilla")?,
            leeway: settings.duration("FLOTILLA_JWT_LEEWAY", Duration::from_secs(30))?,
        })
    }
}
