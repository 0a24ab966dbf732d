//! The auth service's integration tests: the service driven through its gRPC trait (no socket in
//! front of it), on a fresh SQLite file and a fresh PostgreSQL database with the same cases, in
//! front of a fake user service on a real socket. Time is a `ManualClock` the tests move.

mod fake_user;
mod login;
mod refresh;
mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use auth::{AuthApi, AuthServiceConfig, ManualClock};
use platform::auth::{AuthConfig, KeySource, SigningKey, Verifier};
use platform::config::Settings;
use platform::discovery::Discovery;
use platform::proto::auth::v1 as pb;
use platform::proto::auth::v1::auth_service_server::AuthService;
pub use test_support::databases::TestDb;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Status};

use crate::fake_user::FakeUserService;

/// What a case returns.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Where the gateway calls from under `flotilla up`: loopback, a trusted proxy by default.
pub const GATEWAY_PEER: &str = "127.0.0.1:41000";

/// The shared secret of the shared-secret cases.
pub const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// The subject of every case: the case's fresh database and its directory for key files, as
/// `test_support::both!` made them.
pub async fn open(db: &TestDb) -> &TestDb {
    db
}

/// Where a case's service keeps its Ed25519 key files: the case's private directory.
pub trait KeyFiles {
    /// The current key file's path.
    fn key_file(&self) -> PathBuf;

    /// The previous key file's path.
    fn previous_key_file(&self) -> PathBuf;
}

impl KeyFiles for TestDb {
    fn key_file(&self) -> PathBuf {
        self.dir().join("jwt-ed25519.pem")
    }

    fn previous_key_file(&self) -> PathBuf {
        self.dir().join("jwt-ed25519.previous.pem")
    }
}

/// How the service under test signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ed25519 keys from files in the case's directory.
    Ed25519,
    /// HS256 with [`SECRET`].
    SharedSecret,
}

/// The service under test, its clock, its keys and the fake user service it calls.
pub struct Harness {
    /// The service.
    pub api: AuthApi,
    /// Its clock, starting at the real time.
    pub clock: Arc<ManualClock>,
    /// The current signing key (Ed25519 mode).
    pub key: Option<SigningKey>,
    /// The fake user service.
    pub users: FakeUserService,
}

/// The verification settings of every token in these tests (the defaults).
pub fn verification() -> AuthConfig {
    AuthConfig {
        keys: KeySource::Jwks,
        issuer: "flotilla-auth".into(),
        audience: "flotilla".into(),
        leeway: std::time::Duration::from_secs(30),
    }
}

/// A verifier trusting exactly `key`, as a component that fetched the JWKS would.
pub fn verifier_for(key: &SigningKey) -> Verifier {
    let mut keys = HashMap::new();
    if let (Some(kid), Some(decoding)) = (key.kid(), key.decoding_key()) {
        keys.insert(kid.to_owned(), decoding);
    }
    Verifier::with_public_keys(&verification(), keys)
}

impl Harness {
    /// The service in `mode` on `db`, with default settings.
    pub async fn start(db: &TestDb, mode: Mode) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with(db, mode, &[]).await
    }

    /// The service in `mode` on `db`, with `extra` settings. In Ed25519 mode the key file is made
    /// when missing; the fake user service trusts the current key (or the secret).
    pub async fn start_with(
        db: &TestDb,
        mode: Mode,
        extra: &[(&str, &str)],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let (key, verifier) = match mode {
            Mode::Ed25519 => {
                auth::ensure_key_file(&db.key_file())?;
                let key = SigningKey::from_ed25519_pem(&std::fs::read(db.key_file())?)?;
                let verifier = verifier_for(&key);
                (Some(key), verifier)
            }
            Mode::SharedSecret => (
                None,
                Verifier::with_secret(&verification(), SECRET.as_bytes()),
            ),
        };
        let users = FakeUserService::start(verifier).await?;
        Self::start_against(db, mode, extra, key, users).await
    }

    /// The service in `mode` on `db`, calling `users`.
    pub async fn start_against(
        db: &TestDb,
        mode: Mode,
        extra: &[(&str, &str)],
        key: Option<SigningKey>,
        users: FakeUserService,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let key_file = db.key_file().display().to_string();
        let mut pairs: Vec<(&str, &str)> = vec![
            ("DATABASE_URL", db.url()),
            ("FLOTILLA_AUTH_DB_MAX_CONNECTIONS", "4"),
        ];
        match mode {
            Mode::Ed25519 => pairs.push(("FLOTILLA_JWT_KEY_FILE", key_file.as_str())),
            Mode::SharedSecret => pairs.push(("JWT_SECRET", SECRET)),
        }
        pairs.extend_from_slice(extra);
        let config = AuthServiceConfig::from_settings(
            &Settings::from_pairs(pairs),
            "DATABASE_URL",
            "sqlite://unused.db",
            None,
        )?;
        let clock = Arc::new(ManualClock::starting_now());
        let discovery = Discovery::fixed(&[("user", users.addr)]);
        let api = auth::build_api(&config, clock.clone(), &discovery).await?;
        Ok(Self {
            api,
            clock,
            key,
            users,
        })
    }

    /// Logs in with the fake's account, from no particular address.
    pub async fn login(&self, email: &str, password: &str) -> Result<pb::TokenPair, Status> {
        self.login_from(None, email, password).await
    }

    /// Logs in as a gateway would on behalf of `client` (`x-forwarded-for`), from
    /// [`GATEWAY_PEER`].
    pub async fn login_from(
        &self,
        client: Option<&str>,
        email: &str,
        password: &str,
    ) -> Result<pb::TokenPair, Status> {
        let peer = GATEWAY_PEER
            .parse()
            .map_err(|_| Status::internal("test: bad peer"))?;
        self.login_via(Some(peer), client, email, password).await
    }

    /// Logs in over a connection from `peer` (`None`: no peer address is known), sending
    /// `forwarded_for` as `x-forwarded-for` when given.
    pub async fn login_via(
        &self,
        peer: Option<SocketAddr>,
        forwarded_for: Option<&str>,
        email: &str,
        password: &str,
    ) -> Result<pb::TokenPair, Status> {
        let mut request = Request::new(pb::LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        });
        if let Some(client) = forwarded_for {
            let value = client
                .parse()
                .map_err(|_| Status::internal("test: bad address"))?;
            request.metadata_mut().insert("x-forwarded-for", value);
        }
        if peer.is_some() {
            // What tonic's server puts in every request it accepts over TCP.
            request.extensions_mut().insert(TcpConnectInfo {
                local_addr: None,
                remote_addr: peer,
            });
        }
        self.api
            .login(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Exchanges a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<pb::TokenPair, Status> {
        self.api
            .refresh(Request::new(pb::RefreshRequest {
                refresh_token: refresh_token.to_owned(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Validates an access token.
    pub async fn validate(&self, access_token: &str) -> Result<pb::Claims, Status> {
        self.api
            .validate_token(Request::new(pb::ValidateTokenRequest {
                access_token: access_token.to_owned(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Ends a refresh token's family.
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), Status> {
        self.api
            .revoke(Request::new(pb::RevokeRequest {
                refresh_token: refresh_token.to_owned(),
            }))
            .await
            .map(drop)
    }

    /// The published keys.
    pub async fn jwks(&self) -> Result<pb::Jwks, Status> {
        self.api
            .get_jwks(Request::new(pb::GetJwksRequest {}))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Closes the database (the fake stops when dropped).
    pub async fn finish(self) {
        self.api.store().database().close().await;
    }
}

/// The code and message of a failed call, for one-line assertions.
pub fn failure<T: std::fmt::Debug>(result: Result<T, Status>) -> (tonic::Code, String) {
    match result {
        Ok(value) => panic!("expected a failure, got {value:?}"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}
