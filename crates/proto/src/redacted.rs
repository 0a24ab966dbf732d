//! `Debug` for the messages that carry a password or a token (build.rs skips the derived one):
//! every other field is shown, the secret prints `***`.

use std::fmt;

use crate::auth::v1 as auth;
use crate::user::v1 as user;

const HIDDEN: &str = "***";

impl fmt::Debug for user::CreateUserRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("email", &self.email)
            .field("password", &HIDDEN)
            .field("name", &self.name)
            .finish()
    }
}

impl fmt::Debug for user::AuthenticateUserRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticateUserRequest")
            .field("email", &self.email)
            .field("password", &HIDDEN)
            .finish()
    }
}

impl fmt::Debug for auth::LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &HIDDEN)
            .finish()
    }
}

impl fmt::Debug for auth::TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &HIDDEN)
            .field("refresh_token", &HIDDEN)
            .field("token_type", &self.token_type)
            .field("access_expires_in", &self.access_expires_in)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .finish()
    }
}

impl fmt::Debug for auth::RefreshRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshRequest")
            .field("refresh_token", &HIDDEN)
            .finish()
    }
}

impl fmt::Debug for auth::RevokeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeRequest")
            .field("refresh_token", &HIDDEN)
            .finish()
    }
}

impl fmt::Debug for auth::ValidateTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateTokenRequest")
            .field("access_token", &HIDDEN)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_as_stars() {
        let login = auth::LoginRequest {
            email: "a@b.c".into(),
            password: "hunter2".into(),
        };
        let pair = auth::TokenPair {
            access_token: "eyJ.secret".into(),
            refresh_token: "opaque".into(),
            ..Default::default()
        };
        let shown = format!("{login:?} {pair:?}");
        assert!(shown.contains("a@b.c") && shown.contains("***"), "{shown}");
        assert!(
            !shown.contains("hunter2")
                && !shown.contains("eyJ.secret")
                && !shown.contains("opaque"),
            "{shown}"
        );
    }
}
