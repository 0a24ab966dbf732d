//! Extractors whose rejections answer in the API's one error shape, so a malformed query string or
//! body is a 400 with a message instead of axum's plain-text default.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tonic::Code;

use crate::error::ApiError;
use crate::state::AppState;

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

/// The address of the client: the TCP peer, or, when the peer is one of the trusted proxies
/// (`FLOTILLA_GATEWAY_TRUSTED_PROXIES`, a load balancer in front of the gateway), the right-most
/// address in `X-Forwarded-For` that is not itself a trusted proxy. `None` when the server was
/// started without connection info (tests that drive the router directly).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip());
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        Ok(Self(client_address(
            peer,
            &forwarded,
            state.trusted_proxies(),
        )))
    }
}

/// The client behind a chain of proxies: walks `X-Forwarded-For` from the right (the entry the
/// nearest proxy appended) past trusted proxies, and stops at the first address it cannot vouch
/// for. A client can put anything on the left of the header, so nothing left of that is believed.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded: &[&str],
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = forwarded
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(address) = hop.parse::<IpAddr>() else {
            // A malformed entry ends what can be believed: the last trusted hop is the client.
            break;
        };
        client = address;
        if !trusted.contains(&address) {
            break;
        }
    }
    Some(client)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn only_trusted_proxies_are_looked_through() {
        let balancer = ip("10.0.0.2");
        let trusted = [balancer, ip("10.0.0.3")];
        // No proxy trusted: the peer is the client, whatever the header says.
        assert_eq!(
            client_address(Some(ip("203.0.113.9")), &["1.2.3.4"], &trusted),
            Some(ip("203.0.113.9"))
        );
        // Through the balancer: the address it appended.
        assert_eq!(
            client_address(Some(balancer), &["198.51.100.7"], &trusted),
            Some(ip("198.51.100.7"))
        );
        // A client's forged entries on the left are not believed.
        assert_eq!(
            client_address(Some(balancer), &["6.6.6.6, 198.51.100.7"], &trusted),
            Some(ip("198.51.100.7"))
        );
        // Two trusted hops, across two header lines.
        assert_eq!(
            client_address(
                Some(balancer),
                &["198.51.100.7, 10.0.0.3", "10.0.0.2"],
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_address(Some(balancer), &["not-an-ip"], &trusted),
            Some(balancer)
        );
        assert_eq!(client_address(None, &["198.51.100.7"], &trusted), None);
    }
}
