//! Extractors whose rejections answer in the API's one error shape, so a malformed query string or
//! body is a 400 with a message instead of axum's plain-text default.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

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
