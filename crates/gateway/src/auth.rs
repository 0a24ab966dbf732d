//! Who is calling, checked at the gateway: handlers that need a user take [`Bearer`], handlers for
//! administrators take [`Admin`], so a signature shows what a route needs. The token is verified
//! here (no call to the auth service per request) and forwarded to the services, which check it
//! again.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use platform::auth::{Access, AuthError, Claims, bearer_token};

use crate::error::ApiError;
use crate::state::AppState;

/// A caller with a verified access token. `Debug` shows the claims, never the token.
#[derive(Clone)]
pub struct Bearer {
    claims: Claims,
    token: String,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer")
            .field("claims", &self.claims)
            .field("token", &"***")
            .finish()
    }
}

impl Bearer {
    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The token, to forward to a service; never log it.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?.ok_or(AuthError::Missing)?;
        let claims = state.verifier.verify(token).await?;
        Ok(Self {
            claims,
            token: token.to_owned(),
        })
    }
}

/// A caller with a verified access token and the admin role.
#[derive(Debug, Clone)]
pub struct Admin(pub Bearer);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let bearer = Bearer::from_request_parts(parts, state).await?;
        Access::ADMIN.check(Some(&bearer.claims))?;
        Ok(Self(bearer))
    }
}
