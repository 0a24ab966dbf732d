//! The auth service's errors and their one mapping to gRPC status codes.
//!
//! Messages are deliberately coarse where detail would help an attacker: a bad email and a bad
//! password are both "invalid credentials"; an unknown, expired, used or revoked refresh token is
//! "invalid refresh token". Storage, signing and upstream failures are logged here, once, and reach
//! the client as "internal error" or "temporarily unavailable", never with SQL text, an address or
//! key material.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::domain::{RandomError, ValidationError, retry_after_seconds};

/// The message of every refused login.
pub const INVALID_CREDENTIALS: &str = "invalid credentials";
/// The message of every refused refresh.
pub const INVALID_REFRESH_TOKEN: &str = "invalid refresh token";
/// The message of a refused login once a limit is reached.
pub const TOO_MANY_FAILURES: &str = "too many failed logins; retry later";
/// The metadata entry that says how many seconds to wait.
pub const RETRY_AFTER: &str = "retry-after";

/// Everything that can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum AuthServiceError {
    /// A request field breaks a rule.
    #[error("invalid {0}")]
    Invalid(#[from] ValidationError),
    /// The email or password is wrong (the user service said so).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Too many failed logins for the account or the client address.
    #[error("too many failed logins; retry in {retry_after:?}")]
    TooManyFailures {
        /// How long until the limit lifts.
        retry_after: Duration,
    },
    /// The refresh token is unknown, expired, already used or of an ended family.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// The access token does not verify or was revoked; the reason names what is wrong, never
    /// the token.
    #[error("invalid access token: {0}")]
    InvalidAccessToken(&'static str),
    /// The access token failed the shared verifier's checks.
    #[error(transparent)]
    Verification(#[from] platform::auth::AuthError),
    /// The user service could not be reached or did not answer in time.
    #[error("user service unavailable: {0:?} {1}")]
    UserServiceUnavailable(Code, String),
    /// The user service answered in a way it should not (refused our service token, or failed).
    #[error("user service failed: {0:?} {1}")]
    UserService(Code, String),
    /// The database could not be reached in time; a retry may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database failed in a way a retry will not fix.
    #[error("database error: {0}")]
    Storage(#[source] sqlx::Error),
    /// A token could not be signed or generated.
    #[error("cannot make a token: {0}")]
    Token(String),
}

impl AuthServiceError {
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

impl From<platform::auth::KeyError> for AuthServiceError {
    fn from(error: platform::auth::KeyError) -> Self {
        Self::Token(error.to_string())
    }
}

impl From<RandomError> for AuthServiceError {
    fn from(error: RandomError) -> Self {
        Self::Token(error.to_string())
    }
}

impl From<AuthServiceError> for Status {
    fn from(error: AuthServiceError) -> Self {
        match &error {
            AuthServiceError::Invalid(_) => Status::invalid_argument(error.to_string()),
            AuthServiceError::InvalidCredentials => Status::unauthenticated(INVALID_CREDENTIALS),
            AuthServiceError::TooManyFailures { retry_after } => {
                let mut status = Status::resource_exhausted(TOO_MANY_FAILURES);
                status.metadata_mut().insert(
                    RETRY_AFTER,
                    MetadataValue::from(retry_after_seconds(*retry_after)),
                );
                status
            }
            AuthServiceError::InvalidRefreshToken => Status::unauthenticated(INVALID_REFRESH_TOKEN),
            AuthServiceError::InvalidAccessToken(_) => Status::unauthenticated(error.to_string()),
            AuthServiceError::Verification(inner) => Status::from(inner.clone()),
            AuthServiceError::UserServiceUnavailable(..) => {
                tracing::warn!(%error, "user service unavailable");
                Status::unavailable("user service temporarily unavailable; retry later")
            }
            AuthServiceError::Unavailable(_) => {
                tracing::warn!(%error, "auth store unavailable");
                Status::unavailable("auth store temporarily unavailable; retry later")
            }
            AuthServiceError::UserService(..)
            | AuthServiceError::Storage(_)
            | AuthServiceError::Token(_) => {
                tracing::error!(%error, "auth service failed");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_grpc_guidance() {
        let cases = [
            (AuthServiceError::InvalidCredentials, Code::Unauthenticated),
            (AuthServiceError::InvalidRefreshToken, Code::Unauthenticated),
            (
                AuthServiceError::InvalidAccessToken("revoked"),
                Code::Unauthenticated,
            ),
            (
                AuthServiceError::Verification(platform::auth::AuthError::Invalid("token expired")),
                Code::Unauthenticated,
            ),
            (
                AuthServiceError::Invalid(ValidationError::new("email", "must not be empty")),
                Code::InvalidArgument,
            ),
            (
                AuthServiceError::TooManyFailures {
                    retry_after: Duration::from_secs(1),
                },
                Code::ResourceExhausted,
            ),
            (
                AuthServiceError::UserServiceUnavailable(Code::Unavailable, "refused".into()),
                Code::Unavailable,
            ),
            (
                AuthServiceError::from_database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
            (
                AuthServiceError::UserService(Code::PermissionDenied, "no".into()),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn too_many_failures_says_when_to_retry_in_whole_seconds() {
        let status = Status::from(AuthServiceError::TooManyFailures {
            retry_after: Duration::from_millis(61_200),
        });
        assert_eq!(status.message(), "too many failed logins; retry later");
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok()),
            Some("62")
        );
    }

    #[test]
    fn five_failures_then_resource_exhausted_with_retry_after() {
        use std::sync::Arc;

        use crate::clock::ManualClock;
        use crate::limiter::{LoginLimiter, LoginLimits};

        let clock = Arc::new(ManualClock::at(1_700_000_000_000_000));
        let limiter = LoginLimiter::new(LoginLimits::default(), clock.clone());
        for _ in 0..5 {
            let attempt = limiter.begin("ada@example.com", "192.0.2.1");
            assert!(attempt.is_ok());
            if let Ok(attempt) = attempt {
                limiter.failed(attempt);
            }
        }
        clock.advance(Duration::from_millis(100_500));
        let status = match limiter.begin("ada@example.com", "192.0.2.1") {
            Ok(_) => Status::ok("let through"),
            Err(blocked) => Status::from(AuthServiceError::TooManyFailures {
                retry_after: blocked.retry_after,
            }),
        };
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok()),
            Some("800"),
            "15 minutes less 100.5 s, rounded up"
        );
    }

    #[test]
    fn internals_never_reach_the_client() {
        let cases = [
            AuthServiceError::from_database(sqlx::Error::Protocol(
                "SELECT hash FROM refresh_tokens".into(),
            )),
            AuthServiceError::UserService(Code::Internal, "10.0.0.7:50051 said no".into()),
            AuthServiceError::Token("crypto backend detail".into()),
        ];
        for error in cases {
            let status = Status::from(error);
            assert_eq!(status.message(), "internal error");
        }
        let status = Status::from(AuthServiceError::UserServiceUnavailable(
            Code::Unavailable,
            "tcp connect error 10.0.0.7:50051".into(),
        ));
        assert!(
            !status.message().contains("10.0.0.7"),
            "{}",
            status.message()
        );
    }
}
