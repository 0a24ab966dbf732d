//! The `flotilla.user.v1.UserService` implementation: proto in, domain calls, proto out; plus the
//! service's access [`policy`].
//!
//! Who may call what is decided once, by `platform::auth::AuthLayer` enforcing [`policy`] before a
//! request reaches a handler (the binary serves the service only through
//! `GrpcServer::add_authorized_service`); the layer puts the verified [`Claims`] in the request
//! extensions. Only GetUser's rule depends on the data ("your own account, or any for an
//! administrator"), so only it is checked here.

use platform::auth::{Access, AuthError, Claims, Policy, ROLE_SERVICE};
use platform::pagination::{self, PageError};
use platform::proto::user::v1 as pb;
use platform::proto::user::v1::health_check_response::Status as Health;
use platform::time::{now_micros, timestamp_from_micros};
use tonic::{Request, Response, Status};

use crate::domain::{
    Account, Cursor, Email, Password, PasswordHash, RawNewUser, Roles, User, UserId,
};
use crate::error::UserError;
use crate::password::Hasher;
use crate::store::UserStore;

/// The filters that page tokens are bound to: listing has none.
const LIST_FILTERS: &str = "users:all";

/// Who may call each method of `UserService`, enforced once by `platform::auth::AuthLayer`
/// (`GrpcServer::add_authorized_service`); a method missing from it is refused.
///
/// - signing up is open to anyone, and so is the health check (probes call it without a token);
/// - only Flotilla's auth service, with its service token, may check passwords: a password oracle
///   open to all would bypass the auth service's login limits;
/// - any signed-in caller may ask for an account; the handler then allows their own, or any for an
///   administrator (a rule on the data, which the layer cannot know);
/// - listing accounts is for administrators.
pub fn policy() -> Policy {
    Policy::new()
        .method("CreateUser", Access::Public)
        .method("AuthenticateUser", Access::Role(ROLE_SERVICE))
        .method("GetUser", Access::Authenticated)
        .method("ListUsers", Access::ADMIN)
        .method("HealthCheck", Access::Public)
}

/// The user service, over its store and password hasher.
#[derive(Debug, Clone)]
pub struct UserApi {
    store: UserStore,
    hasher: Hasher,
}

impl UserApi {
    /// The service over `store`, hashing with `hasher`.
    pub fn new(store: UserStore, hasher: Hasher) -> Self {
        Self { store, hasher }
    }

    async fn create(&self, request: pb::CreateUserRequest) -> Result<pb::User, UserError> {
        let new_user = RawNewUser {
            email: request.email,
            password: request.password,
            name: request.name,
        }
        .validate()?;
        // A taken email is refused before the costly hash, so it cannot be used to ask for
        // argon2 work. The answer is the one the insert would give; the UNIQUE constraint still
        // decides a race between this look and the insert.
        if self.store.email_taken(&new_user.email).await? {
            return Err(UserError::EmailTaken);
        }
        let password_hash = self.hasher.hash(new_user.password).await?;
        let account = Account::new(
            new_user.email,
            new_user.name,
            Roles::new_account(),
            password_hash,
            now_micros(),
        );
        self.store.insert(&account).await?;
        tracing::info!(user_id = %account.user.id, "account created");
        Ok(to_proto(&account.user))
    }

    /// Every failure is [`UserError::InvalidCredentials`], and an unknown email costs a password
    /// check like a known one (see `password.rs`). A malformed email is simply an unknown one.
    /// A matching password whose hash was made with other argon2 parameters is rehashed at the
    /// current ones and stored, best effort (see [`UserApi::store_upgraded_hash`]).
    async fn authenticate(
        &self,
        request: pb::AuthenticateUserRequest,
    ) -> Result<pb::User, UserError> {
        // Longer than any account's password: refused before any work, which tells nothing about
        // accounts (the bound is public in the contract).
        let Some(password) = Password::candidate(request.password) else {
            return Err(UserError::InvalidCredentials);
        };
        let account = match Email::parse("email", &request.email) {
            Ok(email) => self.store.find_by_email(&email).await?,
            Err(_) => None,
        };
        let (user, stored_hash) = match account {
            Some(account) => (Some(account.user), Some(account.password_hash)),
            None => (None, None),
        };
        let checked = self
            .hasher
            .verify_and_upgrade(password, stored_hash.clone())
            .await?;
        match (user, stored_hash) {
            (Some(user), Some(stored_hash)) if checked.matched => {
                tracing::info!(user_id = %user.id, "password checked");
                if let Some(fresh) = checked.upgraded {
                    self.store_upgraded_hash(&user.id, &stored_hash, &fresh)
                        .await;
                }
                Ok(to_proto(&user))
            }
            _ => {
                // Neither the email nor the password is logged: people type one into the other.
                tracing::info!("sign-in refused: invalid credentials");
                Err(UserError::InvalidCredentials)
            }
        }
    }

    /// Stores `fresh` in place of `stored`, the hash a sign-in just matched: best effort, so a
    /// failure is logged and the sign-in goes on (the next one tries again). Conditional on the
    /// stored hash being unchanged, so a concurrent change is never overwritten.
    async fn store_upgraded_hash(&self, id: &UserId, stored: &PasswordHash, fresh: &PasswordHash) {
        match self.store.replace_password_hash(id, stored, fresh).await {
            Ok(true) => {
                tracing::info!(user_id = %id, "password rehashed at the current argon2 parameters");
            }
            Ok(false) => {
                tracing::info!(
                    user_id = %id,
                    "password not rehashed: the account changed since it was read"
                );
            }
            Err(error) => {
                tracing::warn!(
                    user_id = %id,
                    %error,
                    "could not store the password rehashed at the current argon2 parameters; \
                     the sign-in goes on with the old hash, and the next one tries again"
                );
            }
        }
    }

    async fn get(&self, claims: &Claims, request: pb::GetUserRequest) -> Result<User, UserError> {
        let own = UserId::parse("id", &request.id).is_ok_and(|id| id.as_str() == claims.sub);
        if !own && !claims.is_admin() {
            // The same answer whether the account exists or not.
            return Err(UserError::NotYours);
        }
        let id = UserId::parse("id", &request.id)?;
        self.store
            .get(&id)
            .await?
            .ok_or_else(|| UserError::NotFound(id))
    }

    async fn list(
        &self,
        request: pb::ListUsersRequest,
    ) -> Result<pb::ListUsersResponse, UserError> {
        let page_size = pagination::page_size(request.page_size)?;
        let after: Option<Cursor> = pagination::decode_token(&request.page_token, LIST_FILTERS)?;
        // Tokens are not signed: a forged cursor must fail as a bad token, not reach the database.
        if let Some(cursor) = &after {
            UserId::parse("page_token", &cursor.id).map_err(|_| PageError::MalformedToken)?;
        }
        // One extra row tells whether another page exists without a COUNT.
        let mut users = self.store.list(after.as_ref(), page_size + 1).await?;
        let more = users.len() > page_size as usize;
        users.truncate(page_size as usize);
        let next_page_token = match (more, users.last()) {
            (true, Some(last)) => pagination::encode_token(&Cursor::after(last), LIST_FILTERS),
            _ => String::new(),
        };
        Ok(pb::ListUsersResponse {
            users: users.iter().map(to_proto).collect(),
            next_page_token,
        })
    }

    async fn health(&self) -> pb::HealthCheckResponse {
        let check = self.store.database().readiness_check();
        let status = match check().await {
            Ok(()) => Health::Serving,
            Err(reason) => {
                tracing::warn!(%reason, "health check: the user store does not answer");
                Health::NotServing
            }
        };
        pb::HealthCheckResponse {
            status: status.into(),
            timestamp: Some(timestamp_from_micros(now_micros())),
        }
    }
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    async fn authenticate_user(
        &self,
        request: Request<pb::AuthenticateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Ok(Response::new(
            self.authenticate(request.into_inner()).await?,
        ))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        // The layer let only signed-in callers through; which account they may read depends on
        // the claims.
        let claims = request
            .extensions()
            .get::<Claims>()
            .cloned()
            .ok_or(UserError::Auth(AuthError::Missing))?;
        let user = self.get(&claims, request.into_inner()).await?;
        Ok(Response::new(to_proto(&user)))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn health_check(
        &self,
        _request: Request<()>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        Ok(Response::new(self.health().await))
    }
}

/// The wire form of an account: never a password or a hash, which [`User`] does not hold.
pub fn to_proto(user: &User) -> pb::User {
    pb::User {
        id: user.id.as_str().to_owned(),
        email: user.email.as_str().to_owned(),
        name: user.name.clone(),
        roles: user.roles.as_slice().to_vec(),
        created_at: Some(timestamp_from_micros(user.created_at_us)),
        updated_at: Some(timestamp_from_micros(user.updated_at_us)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method that `flotilla.user.v1.UserService` declares in the compiled contract has a
    /// rule, and every rule names one of its methods, so a new RPC cannot slip through unruled.
    #[test]
    fn the_policy_covers_every_method_and_nothing_else() {
        let mismatches = policy().mismatches("flotilla.user.v1.UserService");
        assert!(mismatches.is_empty(), "{mismatches:?}");
        // A wrong service name must not pass vacuously.
        assert!(
            !policy()
                .mismatches("flotilla.user.v1.NoSuchService")
                .is_empty()
        );
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn sign_up(email: &str) -> pb::CreateUserRequest {
        pb::CreateUserRequest {
            email: email.into(),
            password: "a good long password".into(),
            name: "Somebody".into(),
        }
    }

    /// With every sign-up permit held, a sign-up that reached the hash would wait
    /// [`crate::password::PERMIT_WAIT`] and fail as busy: ALREADY_EXISTS shows it never got there.
    #[tokio::test]
    async fn a_taken_email_is_refused_before_any_hashing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let url = platform::database::sqlite_url(&dir.path().join("user.db"));
        let store = UserStore::open(&platform::database::DatabaseConfig::new(url, 2)).await?;
        let hasher = Hasher::new(crate::password::HashParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        })
        .await?;
        let api = UserApi::new(store.clone(), hasher.clone());
        api.create(sign_up("taken@example.com")).await?;

        let _in_flight = hasher.saturate_sign_ups().await?;
        let again = api.create(sign_up("taken@EXAMPLE.com")).await;
        assert!(matches!(again, Err(UserError::EmailTaken)), "{again:?}");
        store.database().close().await;
        Ok(())
    }

    #[test]
    fn the_rules_are_the_intended_ones() {
        let policy = policy();
        assert_eq!(policy.access("CreateUser"), Some(Access::Public));
        assert_eq!(policy.access("HealthCheck"), Some(Access::Public));
        assert_eq!(
            policy.access("AuthenticateUser"),
            Some(Access::Role(platform::auth::ROLE_SERVICE))
        );
        assert_eq!(policy.access("GetUser"), Some(Access::Authenticated));
        assert_eq!(policy.access("ListUsers"), Some(Access::ADMIN));
    }
}
