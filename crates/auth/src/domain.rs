//! Tokens and logins in plain Rust: what a login request may hold, which claims an access token
//! carries, what a refresh token is and how it is stored, how a presented refresh token is judged,
//! and whose failed logins count together. No tonic, no SQL, no I/O; callers pass in the time
//! (`now_us`). The one outside input is randomness ([`RefreshToken::generate`], uuid v4 ids).
//!
//! Refresh tokens are 32 random bytes (256 bits), so a plain SHA-256 is enough to store them: a
//! salt or a slow hash protects guessable secrets such as passwords, and nobody can guess 2^256
//! inputs. Only the hash is stored, so a copy of the database holds no usable token.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::auth::{Claims, ROLE_SERVICE};
use platform::config::Secret;
use sha2::{Digest, Sha256};

/// Longest email accepted at login, in characters (RFC 5321 allows 254; this leaves room for what
/// people type around it). Longer ones are refused before any work, which also bounds the keys of
/// the failed-login table.
pub const MAX_EMAIL_CHARS: usize = 320;
/// Longest password accepted at login, in bytes. The user service accepts at most 128 characters,
/// so nothing longer can be right; refusing early spares the user service a password hash.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The `token_type` of every token pair.
pub const TOKEN_TYPE: &str = "Bearer";
/// The subject of the tokens the auth service signs for itself when it calls the user service.
pub const SERVICE_SUBJECT: &str = "service:auth";
/// How long such a service token lives: one call's worth, plus clock skew.
pub const SERVICE_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Random bytes in a refresh token.
pub const REFRESH_TOKEN_BYTES: usize = 32;

pub use platform::validation::ValidationError;

/// The system's random source failed; no token can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random source failed")]
pub struct RandomError;

/// An email and password as a person typed them. The password is never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The email as typed (the user service normalises it its own way).
    pub email: String,
    /// The password.
    pub password: Secret,
}

impl Credentials {
    /// Checks the shape of a login request, before anything is counted or called.
    ///
    /// # Errors
    /// A [`ValidationError`] for an empty or overlong email or password.
    pub fn parse(email: String, password: String) -> Result<Self, ValidationError> {
        if email.trim().is_empty() {
            return Err(ValidationError::new("email", "must not be empty"));
        }
        if email.chars().count() > MAX_EMAIL_CHARS {
            return Err(ValidationError::new(
                "email",
                "must be at most 320 characters",
            ));
        }
        if password.is_empty() {
            return Err(ValidationError::new("password", "must not be empty"));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(ValidationError::new(
                "password",
                "must be at most 1024 bytes",
            ));
        }
        Ok(Self {
            email,
            password: Secret::new(password),
        })
    }

    /// The account these credentials name, for counting failed logins.
    pub fn account_key(&self) -> String {
        normalise_email(&self.email)
    }
}

/// The form of an email under which failed logins are counted: trimmed and lower-cased. This can
/// merge two addresses whose local parts differ only in case, which only makes the limit stricter.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Whose failed logins count together as one client. When the connection's `peer` is one of
/// `trusted_proxies` (the gateway, which sets `x-forwarded-for`), that is the first
/// `x-forwarded-for` entry if it is an IP address; otherwise it is the peer address itself, since
/// any direct caller can send the header and would otherwise pick a fresh key per guess. An empty
/// `trusted_proxies` trusts no header. IPv4-mapped IPv6 addresses count as their IPv4 address (also
/// when matching a proxy), and IPv6 addresses by their /64 prefix, which is what one subscriber
/// usually holds: counting single IPv6 addresses would let one client rotate through 2^64 of them.
pub fn client_key(
    forwarded_for: Option<&str>,
    peer: Option<IpAddr>,
    trusted_proxies: &[IpAddr],
) -> String {
    let behind_trusted_proxy = peer.is_some_and(|peer| {
        let peer = peer.to_canonical();
        trusted_proxies
            .iter()
            .any(|proxy| proxy.to_canonical() == peer)
    });
    let forwarded = forwarded_for
        .filter(|_| behind_trusted_proxy)
        .and_then(|value| value.split(',').next())
        .and_then(|first| first.trim().parse::<IpAddr>().ok());
    match forwarded.or(peer) {
        Some(address) => match address.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let segments = v6.segments();
                format!(
                    "{:x}:{:x}:{:x}:{:x}::/64",
                    segments[0], segments[1], segments[2], segments[3]
                )
            }
        },
        None => "unknown".to_owned(),
    }
}

/// The rules every issued token follows: who issues it, for whom, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// `iss` of every token.
    pub issuer: String,
    /// `aud` of every token.
    pub audience: String,
    /// How long an access token lives.
    pub access_lifetime: Duration,
    /// How long a refresh token lives, counted from when it is issued.
    pub refresh_lifetime: Duration,
    /// How long a refresh-token family lives in all, counted from its login: no token of the
    /// family outlives it, however often the family rotates.
    pub refresh_max_lifetime: Duration,
    /// Clock skew tolerated when checking expiry.
    pub leeway: Duration,
}

impl TokenRules {
    /// The claims of a user's access token issued at `now_us`.
    pub fn access_claims(&self, subject: &str, roles: &[String], now_us: i64, jti: &str) -> Claims {
        let iat = seconds(now_us);
        Claims {
            sub: subject.to_owned(),
            roles: roles.to_vec(),
            iat,
            exp: iat.saturating_add(self.access_lifetime.as_secs()),
            jti: jti.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        }
    }

    /// The claims of the short-lived token the auth service presents to the user service.
    pub fn service_claims(&self, now_us: i64, jti: &str) -> Claims {
        let iat = seconds(now_us);
        Claims {
            sub: SERVICE_SUBJECT.to_owned(),
            roles: vec![ROLE_SERVICE.to_owned()],
            iat,
            exp: iat.saturating_add(SERVICE_TOKEN_LIFETIME.as_secs()),
            jti: jti.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        }
    }

    /// When a family started at `family_created_at_us` ends for good, in microseconds.
    pub fn family_ends_at(&self, family_created_at_us: i64) -> i64 {
        family_created_at_us.saturating_add(crate::clock::micros(self.refresh_max_lifetime))
    }

    /// When a refresh token issued at `now_us` in a family started at `family_created_at_us`
    /// expires, in microseconds: its own lifetime later, but never after the family's end.
    pub fn refresh_expires_at(&self, now_us: i64, family_created_at_us: i64) -> i64 {
        now_us
            .saturating_add(crate::clock::micros(self.refresh_lifetime))
            .min(self.family_ends_at(family_created_at_us))
    }

    /// Access-token lifetime in whole seconds, as `access_expires_in` says it.
    pub fn access_expires_in(&self) -> i64 {
        i64::try_from(self.access_lifetime.as_secs()).unwrap_or(i64::MAX)
    }

    /// What `refresh_expires_in` says of a refresh token issued at `now_us` that expires at
    /// `expires_at_us`: the whole seconds left, rounded down so that a client never presents it
    /// late, and never negative.
    pub fn refresh_expires_in(expires_at_us: i64, now_us: i64) -> i64 {
        expires_at_us.saturating_sub(now_us).max(0) / 1_000_000
    }
}

/// Seconds since the epoch for JWT claims; an instant before 1970 reads as the epoch.
fn seconds(micros: i64) -> u64 {
    u64::try_from(micros.div_euclid(1_000_000)).unwrap_or(0)
}

/// A new random id for a token (`jti`) or a refresh-token family.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An opaque refresh token as handed to the client: 32 random bytes, base64url without padding.
/// It prints as `***`; only [`RefreshToken::expose`] reads it, to put it in the response.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    /// A new token from the system's random source.
    ///
    /// # Errors
    /// [`RandomError`] when the random source fails.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0_u8; REFRESH_TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|_| RandomError)?;
        Ok(Self::from_bytes(bytes))
    }

    /// The token made of `bytes`.
    pub fn from_bytes(bytes: [u8; REFRESH_TOKEN_BYTES]) -> Self {
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The token itself, for the response; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database stores in its place.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(***)")
    }
}

/// The SHA-256 of a refresh token, lower-case hex: the only form a refresh token is stored in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    /// The hash of a token a client presented, or `None` when it cannot be one of ours (not
    /// base64url of exactly 32 bytes), which spares the database a lookup.
    pub fn of_presented(token: &str) -> Option<Self> {
        // 32 bytes are 43 characters; anything else is not ours.
        if token.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        (bytes.len() == REFRESH_TOKEN_BYTES).then(|| Self::of(token))
    }

    fn of(token: &str) -> Self {
        let digest = Sha256::digest(token.as_bytes());
        Self(digest.iter().map(|byte| format!("{byte:02x}")).collect())
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored refresh token and its family, as the store reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRefresh {
    /// The family (one login's chain of rotations).
    pub family_id: String,
    /// The user the family belongs to.
    pub subject: String,
    /// The roles the user held at login, which every token of the family carries.
    pub roles: Vec<String>,
    /// When this token expires, in microseconds.
    pub expires_at_us: i64,
    /// When the family started (its login), in microseconds: what its absolute end counts from.
    pub family_created_at_us: i64,
    /// Whether this token was already exchanged.
    pub used: bool,
    /// Whether the family was ended (logout or reuse).
    pub family_revoked: bool,
}

/// What to do with a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshVerdict {
    /// Valid: mark it used and issue the next pair of its family.
    Rotate,
    /// Already used: someone holds a copy (RFC 6819, section 5.2.2.3), so end the whole family.
    Reuse,
    /// Expired or its family ended: refuse, nothing else to do.
    Reject,
}

impl StoredRefresh {
    /// Judges this token at `now_us`.
    pub fn verdict(&self, now_us: i64) -> RefreshVerdict {
        if self.family_revoked {
            RefreshVerdict::Reject
        } else if self.used {
            RefreshVerdict::Reuse
        } else if now_us >= self.expires_at_us {
            RefreshVerdict::Reject
        } else {
            RefreshVerdict::Rotate
        }
    }
}

/// What the store knows about an access token's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTokenStatus {
    /// Issued by this service and its family is alive.
    Active,
    /// Its family was ended.
    Revoked,
    /// Never issued here (or purged after it expired): refused, since a token that verifies but
    /// was not issued here was signed by someone else holding the key.
    Unknown,
}

/// Whole seconds a client should wait, rounded up and at least 1, as `retry-after` says it.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests;
