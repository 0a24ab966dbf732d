//! The claims of a Flotilla access token (RFC 7519 registered claims plus `roles`).

use serde::{Deserialize, Serialize};

/// The role every account has.
pub const ROLE_USER: &str = "user";
/// The role that may manage products and read every account.
pub const ROLE_ADMIN: &str = "admin";
/// The role of Flotilla's own services when they call each other (the auth service checking a
/// password with the user service).
pub const ROLE_SERVICE: &str = "service";

/// What a verified access token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the user's id (or `service:<name>` for a service).
    pub sub: String,
    /// Roles held when the token was issued.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// The token's unique id.
    pub jti: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
}

impl Claims {
    /// Whether the bearer holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|held| held == role)
    }

    /// Whether the bearer is an administrator.
    pub fn is_admin(&self) -> bool {
        self.has_role(ROLE_ADMIN)
    }
}
