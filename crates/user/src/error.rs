//! The user service's errors and their one mapping to gRPC status codes. A client sees a message it
//! can act on, except where acting on it would help an attacker: every failed sign-in is the same
//! UNAUTHENTICATED "invalid credentials", and another person's account is PERMISSION_DENIED whether
//! it exists or not. Storage and hashing failures are logged here once and reach the client as a
//! bare "internal error" or "temporarily unavailable", never SQL text, a password or a hash; a
//! request refused because password hashing is at capacity is UNAVAILABLE "the service is busy;
//! retry later".

use platform::auth::AuthError;
use platform::pagination::PageError;
use tonic::{Code, Status};

use crate::domain::{UserId, ValidationError};
use crate::password::HashError;

/// The one message of every failed sign-in: unknown email, wrong password and malformed email
/// alike, so the answer does not tell which accounts exist.
pub const INVALID_CREDENTIALS: &str = "invalid credentials";

/// The message of a request refused because password hashing is at capacity
/// ([`HashError::Busy`]), sent with the code UNAVAILABLE.
///
/// UNAVAILABLE rather than RESOURCE_EXHAUSTED: the whole service is at capacity for a moment, not
/// this caller over a quota of its own, and retrying after a short backoff is the remedy. gRPC's
/// status code guide reserves RESOURCE_EXHAUSTED for "a per-user quota, or perhaps the entire file
/// system is out of space", and describes UNAVAILABLE as "most likely a transient condition, which
/// can be corrected by retrying with a backoff". In Flotilla, RESOURCE_EXHAUSTED already means the
/// caller's own excess (the auth service's per-client sign-in limit, HTTP 429 at the gateway); this
/// is the server's (HTTP 503), and the auth service already treats a user service's UNAVAILABLE as
/// "temporarily unavailable" rather than a failed sign-in.
pub const BUSY: &str = "the service is busy; retry later";

/// Everything that can go wrong in the user service.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A request field breaks a rule.
    #[error("invalid {0}")]
    Invalid(#[from] ValidationError),
    /// A page size or token is not acceptable.
    #[error(transparent)]
    Page(#[from] PageError),
    /// The normalised email already has an account.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// The email and password do not name an account.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The caller has no claims, or lacks the role the method needs.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The caller may not read this account (or learn whether it exists).
    #[error("permission denied: you may read only your own account")]
    NotYours,
    /// No account has the id (told only to administrators).
    #[error("account \"{0}\" not found")]
    NotFound(UserId),
    /// A password could not be hashed or checked.
    #[error(transparent)]
    Hashing(#[from] HashError),
    /// The database could not be reached in time; a retry may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database failed in a way a retry will not fix.
    #[error("database error: {0}")]
    Storage(#[source] sqlx::Error),
}

impl UserError {
    /// Sorts a database error: a busy, restarting or unreachable database is worth a retry
    /// (UNAVAILABLE); the rest are not (INTERNAL).
    pub fn from_database(error: sqlx::Error) -> Self {
        if platform::database::is_transient(&error) {
            Self::Unavailable(error)
        } else {
            Self::Storage(error)
        }
    }
}

impl From<UserError> for Status {
    fn from(error: UserError) -> Self {
        match error {
            UserError::Invalid(_) | UserError::Page(_) => {
                Status::new(Code::InvalidArgument, error.to_string())
            }
            UserError::EmailTaken => Status::new(Code::AlreadyExists, error.to_string()),
            UserError::InvalidCredentials => {
                Status::new(Code::Unauthenticated, INVALID_CREDENTIALS)
            }
            UserError::Auth(auth) => Status::from(auth),
            UserError::NotYours => Status::new(Code::PermissionDenied, error.to_string()),
            UserError::NotFound(_) => Status::new(Code::NotFound, error.to_string()),
            // UNAVAILABLE, not RESOURCE_EXHAUSTED: see [`BUSY`].
            UserError::Hashing(HashError::Busy) => {
                tracing::warn!(%error, "refused a request: password hashing at capacity");
                Status::new(Code::Unavailable, BUSY)
            }
            UserError::Hashing(_) => {
                tracing::error!(%error, "password hashing failed");
                Status::new(Code::Internal, "internal error")
            }
            UserError::Unavailable(_) => {
                tracing::warn!(%error, "user store unavailable");
                Status::new(
                    Code::Unavailable,
                    "user store temporarily unavailable; retry later",
                )
            }
            UserError::Storage(_) => {
                tracing::error!(%error, "user store failed");
                Status::new(Code::Internal, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_grpc_guidance() -> Result<(), ValidationError> {
        let cases = [
            (UserError::EmailTaken, Code::AlreadyExists),
            (UserError::InvalidCredentials, Code::Unauthenticated),
            (UserError::NotYours, Code::PermissionDenied),
            (
                UserError::NotFound(UserId::parse("id", "0190b3c4-7d4e-7a4b-9c3e-0123456789ab")?),
                Code::NotFound,
            ),
            (
                UserError::Page(PageError::MalformedToken),
                Code::InvalidArgument,
            ),
            (UserError::Auth(AuthError::Missing), Code::Unauthenticated),
            (
                UserError::Auth(AuthError::Forbidden(platform::auth::ROLE_ADMIN)),
                Code::PermissionDenied,
            ),
            (
                UserError::from_database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
            (UserError::Hashing(HashError::Task), Code::Internal),
            (UserError::Hashing(HashError::Busy), Code::Unavailable),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
        Ok(())
    }

    #[test]
    fn the_fixed_messages_are_exact() {
        assert_eq!(
            Status::from(UserError::InvalidCredentials).message(),
            "invalid credentials"
        );
        assert_eq!(
            Status::from(UserError::EmailTaken).message(),
            "an account with this email already exists"
        );
        assert_eq!(
            Status::from(UserError::Hashing(HashError::Busy)).message(),
            "the service is busy; retry later"
        );
    }

    #[test]
    fn internal_errors_hide_their_text() {
        let status = Status::from(UserError::from_database(sqlx::Error::Protocol(
            "SELECT password_hash FROM users".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = Status::from(UserError::Hashing(HashError::Argon2(
            "invalid parameters".into(),
        )));
        assert_eq!(status.message(), "internal error");
    }
}
