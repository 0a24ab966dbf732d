//! The gateway's one error type and the one table from gRPC status codes to HTTP statuses.
//!
//! Every error answers `{"error": {"code": <http status>, "status": "<GRPC_CODE>", "message": "…"}}`,
//! the shape of Google's JSON APIs. Internal failures are logged here once and reach the client as a
//! bare "internal error": no stack trace, no SQL, no upstream address.
//!
//! Two refusals say when to come back, and the gateway passes that on as `Retry-After`: a quota
//! (the auth service's login limit: RESOURCE_EXHAUSTED with `retry-after` in seconds) stays 429,
//! the caller's own doing; overload (a server shedding load, or the gateway's circuit breaker for
//! that service being open: `grpc-retry-pushback-ms`, the server pushback of gRPC's retry design
//! A6) is 503, the system's doing, whatever the gRPC code.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use platform::telemetry::grpc_metrics::canonical_name;
use serde_json::json;
use tonic::Code;

/// The message of tonic's `TimeoutExpired`, which it turns into a CANCELLED status.
const TIMEOUT_EXPIRED: &str = "Timeout expired";

/// gRPC's server pushback (retry design A6): milliseconds to wait before trying again. Sent with
/// RESOURCE_EXHAUSTED by a server shedding load, and with UNAVAILABLE by an open circuit breaker.
const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// A quota's wait in whole seconds, as the auth service's login limit sends it.
const RETRY_AFTER: &str = "retry-after";

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
        let pushback = pushback_secs(status.metadata());
        if code == Code::ResourceExhausted
            && let Some(retry_after) = pushback
        {
            // Overload, not a quota: the client did nothing wrong and may come back soon. Told as
            // 503/UNAVAILABLE, the pair HTTP clients already retry, rather than a 503 labelled
            // with the quota code. Debug only: the shedding server warns itself, rate-limited,
            // and one line per shed request here would flood the log just when it matters.
            tracing::debug!(
                service,
                upstream_message = status.message(),
                "upstream overloaded"
            );
            return Self {
                retry_after: Some(retry_after),
                ..Self::new(
                    Code::Unavailable,
                    format!("the {service} service is overloaded; retry later"),
                )
            };
        }
        let message = match code {
            Code::Unknown | Code::Internal | Code::DataLoss => {
                tracing::error!(service, code = ?code, upstream_message = status.message(), "upstream failed");
                "internal error".to_owned()
            }
            Code::Unavailable => {
                if pushback.is_some() {
                    // An open breaker: it logged its opening once; a line per refused request
                    // would flood the log for the whole cool-down.
                    tracing::debug!(
                        service,
                        upstream_message = status.message(),
                        "upstream fenced off"
                    );
                } else {
                    tracing::warn!(
                        service,
                        upstream_message = status.message(),
                        "upstream unavailable"
                    );
                }
                format!("the {service} service is unavailable; retry later")
            }
            Code::DeadlineExceeded => format!("the {service} service did not answer in time"),
            _ => status.message().to_owned(),
        };
        // A service that says when to come back (the auth service's login limit, an open
        // breaker) is passed on; the pushback is the more precise of the two.
        let retry_after = pushback.or_else(|| {
            status
                .metadata()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse().ok())
        });
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

/// `grpc-retry-pushback-ms` as `Retry-After` seconds: rounded up, so nobody comes back early, and
/// at least 1, since `Retry-After: 0` invites an immediate retry. `None` when absent or not a
/// whole number of milliseconds (A6 reads a negative or malformed value as "do not retry"; the
/// gateway then falls back to its usual answer for the code).
fn pushback_secs(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    let millis: u64 = metadata.get(PUSHBACK)?.to_str().ok()?.trim().parse().ok()?;
    Some(millis.div_ceil(1000).max(1))
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
                // The canonical name, as in Google's JSON error bodies.
                "status": canonical_name(self.code),
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

    fn with_metadata(mut status: tonic::Status, pairs: &[(&'static str, &str)]) -> tonic::Status {
        for (name, value) in pairs {
            match value.parse() {
                Ok(value) => {
                    status.metadata_mut().insert(*name, value);
                }
                Err(error) => panic!("test metadata {name}={value}: {error}"),
            }
        }
        status
    }

    fn retry_after_header(error: ApiError) -> Option<String> {
        error
            .into_response()
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }

    #[test]
    fn pushback_becomes_whole_seconds_rounded_up_and_at_least_one() {
        for (millis, seconds) in [
            ("0", Some(1)),
            ("100", Some(1)),
            ("1000", Some(1)),
            ("1001", Some(2)),
            ("2500", Some(3)),
            ("-1", None),
            ("soon", None),
        ] {
            let metadata = with_metadata(tonic::Status::unavailable("x"), &[(PUSHBACK, millis)])
                .metadata()
                .clone();
            assert_eq!(pushback_secs(&metadata), seconds, "{millis} ms");
        }
        assert_eq!(pushback_secs(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn shedding_is_503_with_the_pushback_as_retry_after() {
        let shed = with_metadata(
            tonic::Status::resource_exhausted(
                "server overloaded: 100 calls in flight (limit 100); retry later",
            ),
            &[(PUSHBACK, "1500")],
        );
        let error = ApiError::from_status("product", &shed);
        assert_eq!(error.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code, Code::Unavailable);
        assert_eq!(
            error.message,
            "the product service is overloaded; retry later"
        );
        assert_eq!(retry_after_header(error).as_deref(), Some("2"));

        let short = with_metadata(
            tonic::Status::resource_exhausted("server overloaded"),
            &[(PUSHBACK, "100")],
        );
        let error = ApiError::from_status("product", &short);
        assert_eq!(error.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after_header(error).as_deref(), Some("1"));
    }

    #[test]
    fn a_quota_stays_429_with_its_own_retry_after() {
        let blocked = with_metadata(
            tonic::Status::resource_exhausted("too many failed logins; retry in 30s"),
            &[(RETRY_AFTER, "30")],
        );
        let error = ApiError::from_status("auth", &blocked);
        assert_eq!(error.http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.code, Code::ResourceExhausted);
        assert_eq!(error.message, "too many failed logins; retry in 30s");
        assert_eq!(retry_after_header(error).as_deref(), Some("30"));

        let bare = ApiError::from_status("auth", &tonic::Status::resource_exhausted("quota"));
        assert_eq!(bare.http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after_header(bare).as_deref(), Some("1"));
    }

    #[test]
    fn an_open_breaker_is_503_naming_only_the_service_with_the_pushback() {
        let open = with_metadata(
            tonic::Status::unavailable(
                "circuit breaker for product/GetProduct is open; retry in 5s",
            ),
            &[(PUSHBACK, "4200")],
        );
        let error = ApiError::from_status("product", &open);
        assert_eq!(error.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            error.message,
            "the product service is unavailable; retry later"
        );
        assert_eq!(retry_after_header(error).as_deref(), Some("5"));

        let plain = ApiError::from_status("product", &tonic::Status::unavailable("refused"));
        assert_eq!(retry_after_header(plain).as_deref(), Some("1"));
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
