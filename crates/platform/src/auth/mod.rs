//! Who is calling: JWT verification and per-method access policies, shared by the gateway and every
//! gRPC service (zero trust between hops: each service checks the token again).
//!
//! - [`Claims`]: what a verified access token says, put in the request extensions;
//! - [`Verifier`]: checks signature, expiry (with leeway), issuer and audience, against the auth
//!   service's published keys (a JWKS fetched over gRPC, cached and refreshed on an unknown `kid`)
//!   or a shared HS256 secret;
//! - [`Policy`] and [`Access`]: which methods are public, for any signed-in user, or for a role;
//! - [`AuthLayer`]: the tower layer that applies both to a tonic service;
//! - [`SigningKey`]: Ed25519 or HS256 keys that sign tokens (the auth service's, and tests').
//!
//! Tokens never appear in logs, errors or span fields: an error says what was wrong with a token,
//! never what it was.

mod claims;
mod config;
mod layer;
mod policy;
mod signing;
mod verifier;

pub use claims::{Claims, ROLE_ADMIN, ROLE_SERVICE, ROLE_USER};
pub use config::{AuthConfig, KeySource, MIN_SECRET_BYTES};
pub use layer::{AuthLayer, Authorized, bearer_token};
pub use policy::{Access, Policy};
pub use signing::{KeyError, PublicJwk, SigningKey};
pub use verifier::{AuthError, KEYS_TTL, MAX_KEYS, MIN_REFRESH_INTERVAL, Verifier};

#[cfg(test)]
mod tests;
