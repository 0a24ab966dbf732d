//! What every handler shares: gRPC clients of the services, the token verifier, the per-request
//! deadline, and the readiness flag.

use std::net::IpAddr;

use platform::admin::Readiness;
use platform::auth::Verifier;
use platform::discovery::Discovery;
use platform::discovery::Upstream;
use platform::proto::auth::v1::auth_service_client::AuthServiceClient;
use platform::proto::product::v1::product_service_client::ProductServiceClient;
use platform::proto::user::v1::user_service_client::UserServiceClient;
use tonic::metadata::MetadataValue;

use crate::auth::Bearer;
use crate::deadlines::RouteDeadlines;

/// Load-balanced channels to the services the gateway calls.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// The product service.
    pub product: Upstream,
    /// The user service.
    pub user: Upstream,
    /// The auth service.
    pub auth: Upstream,
}

impl Upstreams {
    /// Channels to every service, following `discovery`.
    pub fn discover(discovery: &Discovery) -> Self {
        Self {
            product: discovery.channel("product"),
            user: discovery.channel("user"),
            auth: discovery.channel("auth"),
        }
    }
}

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    upstreams: Upstreams,
    pub(crate) verifier: Verifier,
    pub(crate) deadlines: RouteDeadlines,
    trusted_proxies: Vec<IpAddr>,
    pub(crate) readiness: Readiness,
}

impl AppState {
    /// State over `upstreams`, checking tokens with `verifier`, giving each request its route's
    /// deadline from `deadlines`.
    pub fn new(upstreams: Upstreams, verifier: Verifier, deadlines: RouteDeadlines) -> Self {
        Self {
            upstreams,
            verifier,
            deadlines,
            trusted_proxies: Vec::new(),
            readiness: Readiness::new(),
        }
    }

    /// Trusts `X-Forwarded-For` from these peers (the load balancers in front of the gateway).
    #[must_use]
    pub fn with_trusted_proxies(mut self, proxies: Vec<IpAddr>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// The peers whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[IpAddr] {
        &self.trusted_proxies
    }

    /// A client of the product service.
    pub fn products(&self) -> ProductServiceClient<Upstream> {
        ProductServiceClient::new(self.upstreams.product.clone())
    }

    /// A client of the user service.
    pub fn users(&self) -> UserServiceClient<Upstream> {
        UserServiceClient::new(self.upstreams.user.clone())
    }

    /// A client of the auth service.
    pub fn auth(&self) -> AuthServiceClient<Upstream> {
        AuthServiceClient::new(self.upstreams.auth.clone())
    }

    /// Wraps a message in a request. It carries what is left of the route's deadline as
    /// `grpc-timeout` (the handler runs inside it, and the client stack sends it on), so the
    /// service stops working on it when the gateway has stopped waiting.
    pub fn with_deadline<T>(&self, message: T) -> tonic::Request<T> {
        tonic::Request::new(message)
    }

    /// As [`AppState::with_deadline`], forwarding the caller's token: the service checks it again.
    pub fn as_caller<T>(&self, bearer: &Bearer, message: T) -> tonic::Request<T> {
        let mut request = self.with_deadline(message);
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {}", bearer.token())) {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// As [`AppState::with_deadline`], telling the service which address the request came from
    /// (the auth service limits failed logins per address).
    pub fn from_client<T>(&self, client: Option<IpAddr>, message: T) -> tonic::Request<T> {
        let mut request = self.with_deadline(message);
        if let Some(address) = client
            && let Ok(value) = MetadataValue::try_from(address.to_string())
        {
            request.metadata_mut().insert("x-forwarded-for", value);
        }
        request
    }
}
