//! `/v1/users`: sign-up, and reading accounts. The user service decides "self or admin" again with
//! the forwarded token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use platform::proto::user::v1 as pb;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Admin, Bearer};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::json::{ErrorJson, SignUpJson, UserJson, UserPageJson};
use crate::state::AppState;

const SERVICE: &str = "user";

fn upstream(status: tonic::Status) -> ApiError {
    ApiError::from_status(SERVICE, &status)
}

/// Query parameters of `GET /v1/users`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListUsersParams {
    /// Page size: 0 or absent for the default (50), at most 500.
    #[serde(default)]
    #[param(minimum = 0)]
    pub page_size: i32,
    /// `next_page_token` of the previous page, unchanged.
    #[serde(default)]
    pub page_token: String,
}

/// Creates an account with the `user` role.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = SignUpJson,
    responses(
        (status = 201, description = "Created", body = UserJson),
        (status = 400, description = "Email, password or name breaks a rule", body = ErrorJson),
        (status = 409, description = "An account with this email exists", body = ErrorJson),
        (status = 413, description = "Body too large", body = ErrorJson),
        (status = 415, description = "Body is not JSON", body = ErrorJson),
        (status = 503, description = "The user service is unavailable", body = ErrorJson),
        (status = 504, description = "The user service did not answer in time", body = ErrorJson),
    ))]
pub async fn sign_up(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SignUpJson>,
) -> Result<(StatusCode, Json<UserJson>), ApiError> {
    let request = state.with_deadline(pb::CreateUserRequest {
        email: body.email,
        password: body.password,
        name: body.name,
    });
    let user = state
        .users()
        .create_user(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// The caller's own account.
#[utoipa::path(get, path = "/v1/users/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = UserJson),
        (status = 401, description = "Missing or invalid access token", body = ErrorJson),
        (status = 404, description = "The account no longer exists", body = ErrorJson),
        (status = 503, description = "The user service is unavailable", body = ErrorJson),
        (status = 504, description = "The user service did not answer in time", body = ErrorJson),
    ))]
pub async fn me(State(state): State<AppState>, caller: Bearer) -> Result<Json<UserJson>, ApiError> {
    let id = caller.claims().sub.clone();
    let request = state.as_caller(&caller, pb::GetUserRequest { id });
    let user = state
        .users()
        .get_user(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(Json(user.into()))
}

/// One account: the caller's own, or any for an administrator.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account", body = UserJson),
        (status = 400, description = "Malformed id", body = ErrorJson),
        (status = 401, description = "Missing or invalid access token", body = ErrorJson),
        (status = 403, description = "Another user's account", body = ErrorJson),
        (status = 404, description = "No such account", body = ErrorJson),
        (status = 503, description = "The user service is unavailable", body = ErrorJson),
        (status = 504, description = "The user service did not answer in time", body = ErrorJson),
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Bearer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<UserJson>, ApiError> {
    let request = state.as_caller(&caller, pb::GetUserRequest { id });
    let user = state
        .users()
        .get_user(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(Json(user.into()))
}

/// One page of accounts (administrators only).
#[utoipa::path(get, path = "/v1/users", tag = "users", security(("bearer" = [])), params(ListUsersParams),
    responses(
        (status = 200, description = "A page of accounts", body = UserPageJson),
        (status = 400, description = "Bad query parameter or page token", body = ErrorJson),
        (status = 401, description = "Missing or invalid access token", body = ErrorJson),
        (status = 403, description = "Not an administrator", body = ErrorJson),
        (status = 503, description = "The user service is unavailable", body = ErrorJson),
        (status = 504, description = "The user service did not answer in time", body = ErrorJson),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiQuery(params): ApiQuery<ListUsersParams>,
) -> Result<Json<UserPageJson>, ApiError> {
    let request = state.as_caller(
        &caller,
        pb::ListUsersRequest {
            page_size: params.page_size,
            page_token: params.page_token,
        },
    );
    let page = state
        .users()
        .list_users(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(Json(page.into()))
}
