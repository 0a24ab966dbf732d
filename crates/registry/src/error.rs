//! The one mapping from the registry's errors to HTTP answers, as Consul answers: the status code
//! and a plain-text reason (`Missing service name`, `Unknown service ID "x". …`), never JSON.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::catalog::TtlError;
use crate::decode::DecodeError;
use crate::domain::InvalidRegistration;
use crate::registry::ChangeError;

/// An HTTP error answer: a status and Consul's plain-text reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The reason, as the body.
    pub message: String,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.message).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

impl From<DecodeError> for ApiError {
    fn from(error: DecodeError) -> Self {
        Self::bad_request(error.to_string())
    }
}

impl From<InvalidRegistration> for ApiError {
    fn from(error: InvalidRegistration) -> Self {
        Self::bad_request(error.0)
    }
}

impl From<ChangeError> for ApiError {
    fn from(error: ChangeError) -> Self {
        let status = match &error {
            ChangeError::CheckIdTaken(_) => StatusCode::BAD_REQUEST,
            ChangeError::UnknownService(_) | ChangeError::Ttl(TtlError::UnknownCheck(_)) => {
                StatusCode::NOT_FOUND
            }
            // Consul answers a report on a check without a TTL with a plain error: 500.
            ChangeError::Ttl(TtlError::NotTtl(_)) | ChangeError::NotSaved(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self {
            status,
            message: error.to_string(),
        }
    }
}
