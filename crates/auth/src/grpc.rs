//! The `flotilla.auth.v1.AuthService` implementation: proto in, the login, rotation, revocation
//! and validation flows over the domain, the store, the keys and the user service, proto out.
//!
//! The flows, in the order their checks run:
//!
//! - **Login**: shape of the request → failed-login limits (before any work, so a blocked client
//!   costs no password hash) → `AuthenticateUser` with a service token → a new family with its
//!   first refresh token and the access token's id, in one transaction.
//! - **Refresh**: shape of the token → lookup by hash → judged ([`RefreshVerdict`]; every token of
//!   a family past its absolute end, `FLOTILLA_REFRESH_MAX_LIFETIME` after its login, is expired)
//!   → the conditional update that marks it used and stores its successors, whose expiry never
//!   passes the family's end. A token presented twice, or an exchange that loses the race for the
//!   update, ends the whole family (RFC 6819, section 5.2.2.3; OAuth 2.0 Security BCP, section
//!   4.14.2), since it means two parties hold the token.
//! - **Revoke**: ends the token's family, and answers the same whether or not there was one.
//! - **ValidateToken**: the shared verifier's checks, then the family of the token's id.
//! - **GetJwks**: the public keys in use.
//!
//! The client address that the per-address login limit counts is the connection's peer, or the
//! first `x-forwarded-for` entry when the peer is one of the configured trusted proxies
//! ([`client_key`]).
//!
//! Expired rows are not purged by these flows, which run under the caller's deadline: a background
//! task does it ([`crate::purge`], started by [`crate::build`]) through [`AuthApi::purge_expired`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use platform::auth::{Claims, PublicJwk};
use platform::proto::auth::v1 as pb;
use tonic::{Request, Response, Status};

use crate::clock::{Clock, micros};
use crate::domain::{
    AccessTokenStatus, Credentials, RefreshToken, RefreshVerdict, StoredRefresh, TOKEN_TYPE,
    TokenHash, TokenRules, client_key, new_id,
};
use crate::error::AuthServiceError;
use crate::limiter::LoginLimiter;
use crate::store::{AuthStore, NewAccess, NewFamily, NewRefresh, Purged};
use crate::tokens::{IssuedAccess, Tokens};
use crate::users::Users;

/// Longest access token `ValidateToken` looks at; real ones are well under 1 KiB.
pub const MAX_ACCESS_TOKEN_BYTES: usize = 8 * 1024;
/// How often the background task ([`crate::purge`]) purges expired rows.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The auth service over its store, keys, limits and the user service.
#[derive(Debug, Clone)]
pub struct AuthApi {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: AuthStore,
    tokens: Tokens,
    limiter: LoginLimiter,
    users: Users,
    clock: Arc<dyn Clock>,
    trusted_proxies: Vec<IpAddr>,
}

impl AuthApi {
    /// The service over its parts; `clock` is what every time-dependent rule reads, and
    /// `trusted_proxies` the peers whose `x-forwarded-for` names the client at login (see
    /// [`client_key`]; empty trusts none).
    pub fn new(
        store: AuthStore,
        tokens: Tokens,
        limiter: LoginLimiter,
        users: Users,
        clock: Arc<dyn Clock>,
        trusted_proxies: Vec<IpAddr>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                tokens,
                limiter,
                users,
                clock,
                trusted_proxies,
            }),
        }
    }

    /// The service's store.
    pub fn store(&self) -> &AuthStore {
        &self.inner.store
    }

    fn now(&self) -> i64 {
        self.inner.clock.now_micros()
    }

    async fn sign_in(
        &self,
        client: String,
        request: pb::LoginRequest,
    ) -> Result<pb::TokenPair, AuthServiceError> {
        let inner = &self.inner;
        let credentials = Credentials::parse(request.email, request.password)?;
        let attempt = inner
            .limiter
            .begin(&credentials.account_key(), &client)
            .map_err(|blocked| {
                tracing::warn!(%client, "login refused: too many failed logins");
                AuthServiceError::TooManyFailures {
                    retry_after: blocked.retry_after,
                }
            })?;
        let service_token = match inner.tokens.sign_service(self.now()) {
            Ok(token) => token,
            Err(error) => {
                inner.limiter.abandoned(attempt);
                return Err(error.into());
            }
        };
        match inner.users.authenticate(&credentials, &service_token).await {
            Ok(account) => {
                inner.limiter.succeeded(attempt);
                let pair = self.start_family(&account.id, &account.roles).await?;
                tracing::info!(user_id = %account.id, "signed in");
                Ok(pair)
            }
            Err(AuthServiceError::InvalidCredentials) => {
                // The only outcome that records a failure. Any other way out of this function,
                // including the future being dropped mid-call (a cancelled or timed-out request),
                // gives the attempt's slots back.
                inner.limiter.failed(attempt);
                tracing::info!(%client, "login failed: invalid credentials");
                Err(AuthServiceError::InvalidCredentials)
            }
            Err(error) => {
                inner.limiter.abandoned(attempt);
                Err(error)
            }
        }
    }

    /// Issues the first pair of a new family.
    async fn start_family(
        &self,
        subject: &str,
        roles: &[String],
    ) -> Result<pb::TokenPair, AuthServiceError> {
        let now = self.now();
        let family = NewFamily {
            id: new_id(),
            subject: subject.to_owned(),
            roles: roles.to_vec(),
            created_at_us: now,
        };
        let next = self.next_pair(subject, roles, now, family.created_at_us)?;
        self.inner
            .store
            .start_family(&family, &next.refresh_row, &next.access_row)
            .await?;
        Ok(self.pair(next))
    }

    async fn exchange(&self, presented: &str) -> Result<pb::TokenPair, AuthServiceError> {
        let hash =
            TokenHash::of_presented(presented).ok_or(AuthServiceError::InvalidRefreshToken)?;
        let now = self.now();
        let store = &self.inner.store;
        let stored = store
            .find_refresh(&hash)
            .await?
            .ok_or(AuthServiceError::InvalidRefreshToken)?;
        // Past the family's absolute end, every token of it is expired, whatever its own expiry
        // says (one issued under a longer `FLOTILLA_REFRESH_MAX_LIFETIME`, say).
        let family_ended = now
            >= self
                .inner
                .tokens
                .rules()
                .family_ends_at(stored.family_created_at_us);
        let verdict = if family_ended {
            RefreshVerdict::Reject
        } else {
            stored.verdict(now)
        };
        match verdict {
            RefreshVerdict::Reject => Err(AuthServiceError::InvalidRefreshToken),
            RefreshVerdict::Reuse => {
                self.end_reused_family(&stored, now).await?;
                Err(AuthServiceError::InvalidRefreshToken)
            }
            RefreshVerdict::Rotate => {
                let next = self.next_pair(
                    &stored.subject,
                    &stored.roles,
                    now,
                    stored.family_created_at_us,
                )?;
                if store
                    .rotate(
                        &hash,
                        now,
                        &stored.family_id,
                        &next.refresh_row,
                        &next.access_row,
                    )
                    .await?
                {
                    return Ok(self.pair(next));
                }
                // The update changed nothing: the token was exchanged, or its family ended, or it
                // expired since we read it. Only the first is a reuse.
                if let Some(now_stored) = store.find_refresh(&hash).await?
                    && now_stored.verdict(now) == RefreshVerdict::Reuse
                {
                    self.end_reused_family(&now_stored, now).await?;
                }
                Err(AuthServiceError::InvalidRefreshToken)
            }
        }
    }

    async fn end_reused_family(
        &self,
        stored: &StoredRefresh,
        now: i64,
    ) -> Result<(), AuthServiceError> {
        if self
            .inner
            .store
            .revoke_family(&stored.family_id, now)
            .await?
        {
            tracing::warn!(
                family_id = %stored.family_id,
                user_id = %stored.subject,
                "a used refresh token was presented again; its family is revoked"
            );
        }
        Ok(())
    }

    async fn sign_out(&self, presented: &str) -> Result<(), AuthServiceError> {
        // Not one of ours: there is nothing to end, and the answer must not say so.
        let Some(hash) = TokenHash::of_presented(presented) else {
            return Ok(());
        };
        if self
            .inner
            .store
            .revoke_by_refresh(&hash, self.now())
            .await?
        {
            tracing::info!("signed out: refresh-token family revoked");
        }
        Ok(())
    }

    async fn validate(&self, token: &str) -> Result<Claims, AuthServiceError> {
        if token.len() > MAX_ACCESS_TOKEN_BYTES {
            return Err(AuthServiceError::InvalidAccessToken("malformed token"));
        }
        let claims = self.inner.tokens.verify(token, self.now()).await?;
        match self.inner.store.access_token_status(&claims.jti).await? {
            AccessTokenStatus::Active => Ok(claims),
            AccessTokenStatus::Revoked => {
                Err(AuthServiceError::InvalidAccessToken("token revoked"))
            }
            AccessTokenStatus::Unknown => {
                // It verifies with our key but we never issued it: a leaked key or secret.
                tracing::warn!(
                    user_id = %claims.sub,
                    "a correctly signed access token was not issued by this service"
                );
                Err(AuthServiceError::InvalidAccessToken("token revoked"))
            }
        }
    }

    /// Signs the next access token and makes the next refresh token for `subject`, with the rows
    /// the store keeps for them. The refresh token expires no later than the end of the family
    /// started at `family_created_at_us`.
    fn next_pair(
        &self,
        subject: &str,
        roles: &[String],
        now: i64,
        family_created_at_us: i64,
    ) -> Result<NextPair, AuthServiceError> {
        let access = self.inner.tokens.sign_access(subject, roles, now)?;
        let refresh = RefreshToken::generate()?;
        let refresh_row = NewRefresh {
            hash: refresh.hash(),
            issued_at_us: now,
            expires_at_us: self
                .inner
                .tokens
                .rules()
                .refresh_expires_at(now, family_created_at_us),
        };
        let access_row = NewAccess {
            jti: access.claims.jti.clone(),
            expires_at_us: i64::try_from(access.claims.exp)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000),
        };
        Ok(NextPair {
            access,
            refresh,
            refresh_row,
            access_row,
        })
    }

    fn pair(&self, next: NextPair) -> pb::TokenPair {
        let rules = self.inner.tokens.rules();
        pb::TokenPair {
            access_token: next.access.token,
            refresh_token: next.refresh.expose().to_owned(),
            token_type: TOKEN_TYPE.to_owned(),
            access_expires_in: rules.access_expires_in(),
            refresh_expires_in: TokenRules::refresh_expires_in(
                next.refresh_row.expires_at_us,
                next.refresh_row.issued_at_us,
            ),
        }
    }

    /// Purges what can no longer matter at the clock's now ([`AuthStore::purge_expired`], with
    /// the tokens' leeway). The background task calls this every [`PURGE_INTERVAL`]; no request
    /// does, so a slow purge never eats into a caller's deadline.
    ///
    /// # Errors
    /// Database failures; what was removed before stays removed.
    pub async fn purge_expired(&self) -> Result<Purged, AuthServiceError> {
        let leeway = micros(self.inner.tokens.rules().leeway);
        self.inner.store.purge_expired(self.now(), leeway).await
    }
}

/// The next pair of a family, and what the store keeps of it.
struct NextPair {
    access: IssuedAccess,
    refresh: RefreshToken,
    refresh_row: NewRefresh,
    access_row: NewAccess,
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let forwarded_for = request
            .metadata()
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok());
        let client = client_key(
            forwarded_for,
            request.remote_addr().map(|addr| addr.ip()),
            &self.inner.trusted_proxies,
        );
        Ok(Response::new(
            self.sign_in(client, request.into_inner()).await?,
        ))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        Ok(Response::new(
            self.exchange(&request.into_inner().refresh_token).await?,
        ))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::Claims>, Status> {
        let claims = self.validate(&request.into_inner().access_token).await?;
        Ok(Response::new(claims_to_proto(&claims)))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        self.sign_out(&request.into_inner().refresh_token).await?;
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::Jwks>, Status> {
        let keys = self.inner.tokens.published(self.now());
        Ok(Response::new(pb::Jwks {
            keys: keys.iter().map(jwk_to_proto).collect(),
        }))
    }
}

/// The wire form of verified claims.
pub fn claims_to_proto(claims: &Claims) -> pb::Claims {
    let timestamp = |seconds: u64| platform::prost_types::Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    };
    pb::Claims {
        subject: claims.sub.clone(),
        roles: claims.roles.clone(),
        issued_at: Some(timestamp(claims.iat)),
        expires_at: Some(timestamp(claims.exp)),
        token_id: claims.jti.clone(),
        issuer: claims.iss.clone(),
        audience: claims.aud.clone(),
    }
}

/// The wire form of a published Ed25519 key (RFC 8037).
pub fn jwk_to_proto(jwk: &PublicJwk) -> pb::Jwk {
    pb::Jwk {
        kty: "OKP".to_owned(),
        crv: "Ed25519".to_owned(),
        x: jwk.x.clone(),
        kid: jwk.kid.clone(),
        alg: "EdDSA".to_owned(),
        r#use: "sig".to_owned(),
    }
}
