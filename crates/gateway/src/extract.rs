//! Extractors whose rejections answer in the API's one error shape, so a malformed query string or
//! body is a 400 with a message instead of axum's plain-text default.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tonic::Code;

use crate::error::ApiError;

/// Query parameters parsed into `T`; a bad one is a 400 naming it.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_error(&rejection)),
        }
    }
}

/// Path parameters parsed into `T`; a bad one (such as invalid percent-encoding) is a 400.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_error(&rejection)),
        }
    }
}

/// A JSON body parsed into `T`; malformed JSON, a wrong field or a missing content type is a 4xx
/// with a message in the API's error shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_error(&rejection)),
        }
    }
}

fn json_error(rejection: &JsonRejection) -> ApiError {
    // axum answers 422 for JSON of the wrong shape; the API answers every bad argument with 400.
    let (status, message) = match rejection.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `content-type: application/json`".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than the gateway accepts (1 MiB)".to_owned(),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {}", rejection.body_text()),
        ),
    };
    ApiError::with_status(status, Code::InvalidArgument, message)
}

/// The address of the client, when the server was started with connection info (not in tests
/// that drive the router directly).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(address)| *address),
        ))
    }
}

fn path_error(rejection: &PathRejection) -> ApiError {
    ApiError::invalid(format!("invalid path: {}", rejection.body_text()))
}

fn query_error(rejection: &QueryRejection) -> ApiError {
    // axum's body text is "Failed to deserialize query string: <serde's reason>"; keep the reason.
    let text = rejection.body_text();
    let reason = text
        .split_once(": ")
        .map(|(_, reason)| reason)
        .unwrap_or(&text);
    ApiError::invalid(format!("invalid query parameters: {reason}"))
}
