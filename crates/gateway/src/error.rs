//! The gateway's one error type and the one table from gRPC status codes to HTTP statuses.
//!
//! Every error answers `{"error": {"code": <http status>, "status": "<GRPC_CODE>", "message": "…"}}`,
//! the shape of Google's JSON APIs. Internal failures are logged here once and reach the client as a
//! bare "internal error": no stack trace, no SQL, no upstream address.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::Code;

/// The message of tonic's `TimeoutExpired`, which it turns into a CANCELLED status.
const TIMEOUT_EXPIRED: &str = "Timeout expired";

/// An error on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    status: StatusCode,
    message: String,
    /// Seconds the client should wait, for 429 and 503 (`Retry-After`).
    retry_after: Option<u64>,
}

impl ApiError {
    /// A client error with a message the client can act on.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            status: http_status(code),
            message: message.into(),
            retry_after: None,
        }
    }

    /// An error whose HTTP status is more precise than the table's for `code` (413, 405).
    pub fn with_status(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 for a request the gateway itself refuses.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// The answer of an upstream service named `service`.
    pub fn from_status(service: &str, status: &tonic::Status) -> Self {
        // tonic reports the expiry of the deadline the gateway set as CANCELLED ("Timeout expired",
        // from its TimeoutExpired error); to the HTTP client it is a gateway timeout.
        let code = match status.code() {
            Code::Cancelled if status.message() == TIMEOUT_EXPIRED => Code::DeadlineExceeded,
            code => code,
        };
        let message = match code {
            Code::Unknown | Code::Internal | Code::DataLoss => {
                tracing::error!(service, code = ?code, message = status.message(), "upstream failed");
                "internal error".to_owned()
            }
            Code::Unavailable => {
                tracing::warn!(service, message = status.message(), "upstream unavailable");
                format!("the {service} service is unavailable; retry later")
            }
            Code::DeadlineExceeded => format!("the {service} service did not answer in time"),
            _ => status.message().to_owned(),
        };
        // A service that says when to come back (the auth service's login limit) is passed on.
        let retry_after = status
            .metadata()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        Self {
            retry_after,
            ..Self::new(code, message)
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        self.status
    }
}

/// The one table from gRPC codes to HTTP statuses (as Google's API gateways map them).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 is nginx's "client closed request", the usual pair of CANCELLED.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical name of a gRPC code, as in Google's JSON error bodies.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<platform::auth::AuthError> for ApiError {
    fn from(error: platform::auth::AuthError) -> Self {
        let status = tonic::Status::from(error);
        Self::new(status.code(), status.message())
    }
}

/// Rewrites the plain-text errors that axum and tower-http produce before a handler runs (405 for a
/// method a route lacks, 413 from the body limit) into the API's JSON error shape.
pub async fn json_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::InvalidArgument,
            "the request body is larger than the gateway accepts (1 MiB)",
        )
        .into_response(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::with_status(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unimplemented,
            "this route does not accept that method",
        )
        .into_response(),
        _ => response,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let body = Json(json!({
            "error": {
                "code": status.as_u16(),
                "status": code_name(self.code),
                "message": self.message,
            }
        }));
        let mut response = (status, body).into_response();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            let seconds = self.retry_after.unwrap_or(1).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: say which scheme to use.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_maps_the_codes_clients_meet() {
        let expected = [
            (Code::NotFound, 404),
            (Code::InvalidArgument, 400),
            (Code::AlreadyExists, 409),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::Unimplemented, 501),
            (Code::Cancelled, 499),
        ];
        for (code, status) in expected {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn internal_messages_are_hidden() {
        let status = tonic::Status::internal("syntax error at or near SELECT");
        let error = ApiError::from_status("product", &status);
        assert_eq!(error.message, "internal error");
        let status = tonic::Status::unavailable("tcp connect error: 10.0.0.7:50053 refused");
        let error = ApiError::from_status("product", &status);
        assert!(!error.message.contains("10.0.0.7"), "{}", error.message);
    }
}
