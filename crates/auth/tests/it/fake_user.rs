//! A fake user service on a real socket: `AuthenticateUser` accepts one email and password, and
//! only with a valid service token (verified as the real user service would, with
//! `platform::auth::Verifier`, and holding the `service` role). Everything else is unimplemented.
//! It can be made slow ([`FakeUserService::set_delay`]), to drive logins past a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::auth::{AuthError, Claims, ROLE_SERVICE, Verifier, bearer_token};
use platform::proto::user::v1 as pb;
use platform::proto::user::v1::user_service_server::{UserService, UserServiceServer};
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The one account the fake knows.
pub const EMAIL: &str = "ada@example.com";
/// Its password.
pub const PASSWORD: &str = "correct horse battery staple";
/// Its id.
pub const USER_ID: &str = "0192f1c4-ada0-7000-8000-000000000001";

/// Its roles.
pub fn roles() -> Vec<String> {
    vec!["user".to_owned(), "admin".to_owned()]
}

/// What the fake saw, for assertions.
#[derive(Debug, Default)]
pub struct Seen {
    /// Calls of `AuthenticateUser` that reached the fake.
    pub calls: AtomicUsize,
    /// The claims of every service token it accepted.
    pub service_claims: Mutex<Vec<Claims>>,
}

impl Seen {
    /// How many `AuthenticateUser` calls arrived.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The last accepted service token's claims.
    pub fn last_service_claims(&self) -> Option<Claims> {
        self.service_claims
            .lock()
            .ok()
            .and_then(|claims| claims.last().cloned())
    }
}

struct FakeUsers {
    verifier: Verifier,
    seen: Arc<Seen>,
    delay: Arc<Mutex<Duration>>,
}

/// The fake, listening on 127.0.0.1; stopped when dropped.
pub struct FakeUserService {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Seen>,
    delay: Arc<Mutex<Duration>>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeUserService {
    /// Starts the fake, checking service tokens with `verifier`.
    pub async fn start(verifier: Verifier) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let service = UserServiceServer::new(FakeUsers {
            verifier,
            seen: seen.clone(),
            delay: delay.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            addr,
            seen,
            delay,
            stop: Some(stop),
        })
    }

    /// Makes every later `AuthenticateUser` wait `delay` before it answers.
    pub fn set_delay(&self, delay: Duration) {
        if let Ok(mut current) = self.delay.lock() {
            *current = delay;
        }
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeUserService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tonic::async_trait]
impl UserService for FakeUsers {
    async fn authenticate_user(
        &self,
        request: Request<pb::AuthenticateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay.lock().map(|delay| *delay).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // As platform's AuthLayer would: the bearer token must verify and hold the service role.
        let headers = request.metadata().clone().into_headers();
        let token = bearer_token(&headers)
            .map_err(Status::from)?
            .ok_or_else(|| Status::from(AuthError::Missing))?;
        let claims = self.verifier.verify(token).await.map_err(Status::from)?;
        if !claims.has_role(ROLE_SERVICE) {
            return Err(Status::from(AuthError::Forbidden(ROLE_SERVICE)));
        }
        if let Ok(mut seen) = self.seen.service_claims.lock() {
            seen.push(claims);
        }
        let request = request.into_inner();
        if request.email.trim().eq_ignore_ascii_case(EMAIL) && request.password == PASSWORD {
            Ok(Response::new(pb::User {
                id: USER_ID.to_owned(),
                email: EMAIL.to_owned(),
                name: "Ada".to_owned(),
                roles: roles(),
                created_at: None,
                updated_at: None,
            }))
        } else {
            Err(Status::unauthenticated("invalid credentials"))
        }
    }

    async fn create_user(
        &self,
        _request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn get_user(
        &self,
        _request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_users(
        &self,
        _request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn health_check(
        &self,
        _request: Request<()>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}
