//! `/v1/auth` and `/.well-known/jwks.json`: logging in and out, renewing tokens, and the public
//! keys that verify access tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use platform::proto::auth::v1 as pb;

use crate::error::ApiError;
use crate::extract::{ApiJson, ClientAddr};
use crate::json::{ErrorJson, JwksJson, LoginJson, RefreshTokenJson, TokenPairJson};
use crate::state::AppState;

const SERVICE: &str = "auth";

fn upstream(status: tonic::Status) -> ApiError {
    ApiError::from_status(SERVICE, &status)
}

/// Exchanges an email and password for a token pair.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginJson,
    responses(
        (status = 200, description = "A token pair", body = TokenPairJson),
        (status = 400, description = "Malformed body", body = ErrorJson),
        (status = 401, description = "Invalid credentials", body = ErrorJson),
        (status = 413, description = "Body too large", body = ErrorJson),
        (status = 415, description = "Body is not JSON", body = ErrorJson),
        (status = 429, description = "Too many failed logins; see Retry-After", body = ErrorJson),
        (status = 503, description = "A service is unavailable", body = ErrorJson),
        (status = 504, description = "A service did not answer in time", body = ErrorJson),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<LoginJson>,
) -> Result<Json<TokenPairJson>, ApiError> {
    let request = state.from_client(
        client,
        pb::LoginRequest {
            email: body.email,
            password: body.password,
        },
    );
    let pair = state
        .auth()
        .login(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(Json(pair.into()))
}

/// Renews a token pair; the presented refresh token stops working. Presenting it again ends the
/// whole session (token theft detection).
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshTokenJson,
    responses(
        (status = 200, description = "A new token pair", body = TokenPairJson),
        (status = 400, description = "Malformed body", body = ErrorJson),
        (status = 401, description = "Invalid, expired, used or revoked refresh token", body = ErrorJson),
        (status = 413, description = "Body too large", body = ErrorJson),
        (status = 415, description = "Body is not JSON", body = ErrorJson),
        (status = 503, description = "The auth service is unavailable", body = ErrorJson),
        (status = 504, description = "The auth service did not answer in time", body = ErrorJson),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshTokenJson>,
) -> Result<Json<TokenPairJson>, ApiError> {
    let request = state.with_deadline(pb::RefreshRequest {
        refresh_token: body.refresh_token,
    });
    let pair = state
        .auth()
        .refresh(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(Json(pair.into()))
}

/// Ends the session of a refresh token (logout). Succeeds for unknown tokens too.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshTokenJson,
    responses(
        (status = 204, description = "Logged out"),
        (status = 400, description = "Malformed body", body = ErrorJson),
        (status = 413, description = "Body too large", body = ErrorJson),
        (status = 415, description = "Body is not JSON", body = ErrorJson),
        (status = 503, description = "The auth service is unavailable", body = ErrorJson),
        (status = 504, description = "The auth service did not answer in time", body = ErrorJson),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshTokenJson>,
) -> Result<StatusCode, ApiError> {
    let request = state.with_deadline(pb::RevokeRequest {
        refresh_token: body.refresh_token,
    });
    state.auth().revoke(request).await.map_err(upstream)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify access tokens (RFC 7517); empty in the shared-secret mode.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses(
        (status = 200, description = "The key set", body = JwksJson),
        (status = 503, description = "The auth service is unavailable", body = ErrorJson),
        (status = 504, description = "The auth service did not answer in time", body = ErrorJson),
    ))]
pub async fn jwks(State(state): State<AppState>) -> Result<Json<JwksJson>, ApiError> {
    let request = state.with_deadline(pb::GetJwksRequest {});
    let jwks = state
        .auth()
        .get_jwks(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(Json(jwks.into()))
}
