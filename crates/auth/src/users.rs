//! The user service as the login flow sees it: one call, `AuthenticateUser`, made with a
//! short-lived service token that the auth service signs for itself, and its answers sorted into
//! what a login needs to know: the account, wrong credentials, or "try again later".
//!
//! The user service checks every call's token like any other service (zero trust between hops),
//! so the auth service presents `sub: service:auth, roles: [service]`, valid for a minute.
//! An UNAUTHENTICATED answer normally means the email or password is wrong, but the same code
//! comes back when the user service refuses the *service token* (platform's `AuthLayer` answers
//! "missing credentials…", "malformed authorization…" or "invalid access token: …"). Those are told
//! apart by message and reported as a failure of the service, not of the person: counting them as
//! failed logins would lock every account when the keys are misconfigured.

use std::time::Duration;

use platform::auth::AuthError;
use platform::discovery::Upstream;
use platform::proto::user::v1 as user_pb;
use platform::proto::user::v1::user_service_client::UserServiceClient;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::domain::Credentials;
use crate::error::AuthServiceError;

/// How long one `AuthenticateUser` call may take (a password hash plus a database read).
pub const AUTHENTICATE_TIMEOUT: Duration = Duration::from_secs(5);

/// An account the user service vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user's id: the subject of their tokens.
    pub id: String,
    /// The roles they hold.
    pub roles: Vec<String>,
}

/// A client of the user service.
#[derive(Debug, Clone)]
pub struct Users {
    client: UserServiceClient<Upstream>,
}

impl Users {
    /// Calls the user service over `channel`.
    pub fn new(channel: Upstream) -> Self {
        Self {
            client: UserServiceClient::new(channel),
        }
    }

    /// Checks `credentials`, presenting `service_token`.
    ///
    /// # Errors
    /// [`AuthServiceError::InvalidCredentials`] for a wrong email or password;
    /// [`AuthServiceError::UserServiceUnavailable`] when the user service cannot answer in time;
    /// [`AuthServiceError::UserService`] for any other answer (including a refused service token).
    pub async fn authenticate(
        &self,
        credentials: &Credentials,
        service_token: &str,
    ) -> Result<Account, AuthServiceError> {
        let mut request = tonic::Request::new(user_pb::AuthenticateUserRequest {
            email: credentials.email.clone(),
            password: credentials.password.expose().to_owned(),
        });
        request.set_timeout(AUTHENTICATE_TIMEOUT);
        let bearer = MetadataValue::try_from(format!("Bearer {service_token}")).map_err(|_| {
            AuthServiceError::Token("the service token is not a valid header value".into())
        })?;
        request.metadata_mut().insert("authorization", bearer);
        let user = self
            .client
            .clone()
            .authenticate_user(request)
            .await
            .map_err(|status| sort(&status))?
            .into_inner();
        if user.id.is_empty() {
            return Err(AuthServiceError::UserService(
                Code::Internal,
                "the user service returned an account without an id".into(),
            ));
        }
        Ok(Account {
            id: user.id,
            roles: user.roles,
        })
    }
}

/// Sorts a failed call by what the login flow does next.
fn sort(status: &tonic::Status) -> AuthServiceError {
    let message = status.message().to_owned();
    match status.code() {
        Code::Unauthenticated if refuses_the_service_token(&message) => {
            AuthServiceError::UserService(
                Code::Unauthenticated,
                format!("the user service refused the auth service's token: {message}"),
            )
        }
        // The contract says UNAUTHENTICATED; an email the user service cannot even parse is a
        // wrong credential too, and must look the same.
        Code::Unauthenticated | Code::InvalidArgument | Code::NotFound => {
            AuthServiceError::InvalidCredentials
        }
        // Cancelled is how tonic reports the expiry of our own timeout ("Timeout expired").
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::Aborted => AuthServiceError::UserServiceUnavailable(status.code(), message),
        code => AuthServiceError::UserService(code, message),
    }
}

/// Whether an UNAUTHENTICATED message is platform's `AuthLayer` refusing the token.
fn refuses_the_service_token(message: &str) -> bool {
    let missing = AuthError::Missing.to_string();
    let malformed = AuthError::MalformedHeader.to_string();
    message == missing || message == malformed || message.starts_with("invalid access token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sorted_by_what_the_login_does_next() {
        let sorted = |code, message: &str| sort(&tonic::Status::new(code, message));
        assert!(matches!(
            sorted(Code::Unauthenticated, "invalid credentials"),
            AuthServiceError::InvalidCredentials
        ));
        assert!(matches!(
            sorted(Code::InvalidArgument, "email: must contain @"),
            AuthServiceError::InvalidCredentials
        ));
        assert!(matches!(
            sorted(Code::Unavailable, "connection refused"),
            AuthServiceError::UserServiceUnavailable(..)
        ));
        assert!(matches!(
            sorted(Code::Cancelled, "Timeout expired"),
            AuthServiceError::UserServiceUnavailable(..)
        ));
        assert!(matches!(
            sorted(Code::DeadlineExceeded, ""),
            AuthServiceError::UserServiceUnavailable(..)
        ));
        assert!(matches!(
            sorted(Code::PermissionDenied, "permission denied"),
            AuthServiceError::UserService(..)
        ));
        for refusal in [
            AuthError::Missing.to_string(),
            AuthError::MalformedHeader.to_string(),
            AuthError::Invalid("bad signature").to_string(),
        ] {
            assert!(
                matches!(
                    sorted(Code::Unauthenticated, &refusal),
                    AuthServiceError::UserService(..)
                ),
                "{refusal}"
            );
        }
    }
}
