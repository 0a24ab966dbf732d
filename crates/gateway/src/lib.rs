//! The HTTP/JSON API gateway: validates requests and calls the services over gRPC, mapping their
//! answers to JSON and their status codes to HTTP statuses in one place ([`error`]).
//!
//! [`router`] builds the axum app from its state, so tests drive it without a socket; [`spawn`]
//! binds the public and admin listeners and runs it with a graceful drain.

pub mod config;
pub mod error;
pub mod extract;
pub mod json;
pub mod routes;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
pub use config::GatewayConfig;
use platform::admin::{self, Readiness};
use platform::proto::product::v1::product_service_client::ProductServiceClient;
use platform::shutdown::{
    self, BoundAddrs, CancellationToken, ComponentError, Running, Supervisor,
};
use tonic::transport::{Channel, Endpoint};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// How long the gateway waits for a TCP connection to a service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler shares: clients of the services and the per-request deadline.
#[derive(Debug, Clone)]
pub struct AppState {
    products: ProductServiceClient<Channel>,
    deadline: Duration,
    readiness: Readiness,
}

impl AppState {
    /// State with a product service client on `product_channel`.
    pub fn new(product_channel: Channel, deadline: Duration) -> Self {
        Self {
            products: ProductServiceClient::new(product_channel),
            deadline,
            readiness: Readiness::new(),
        }
    }

    /// A client of the product service.
    pub fn products(&self) -> ProductServiceClient<Channel> {
        self.products.clone()
    }

    /// Wraps a message in a request carrying the route's deadline as `grpc-timeout`, so the service
    /// stops working on it when the gateway has stopped waiting.
    pub fn with_deadline<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline);
        request
    }
}

/// The gateway's routes and layers, over `state`.
pub fn router(state: AppState, body_limit: usize) -> Router {
    let readiness = state.readiness.clone();
    Router::new()
        .route("/v1/products", get(routes::products::list))
        .route("/v1/products/{id}", get(routes::products::get))
        .with_state(state)
        .route("/healthz", get(admin::health))
        .route("/readyz", get(admin::ready).with_state(readiness))
        .fallback(not_found)
        // Layers added later wrap the earlier ones: the body limit runs closest to the handlers,
        // its 413 (and axum's 405) are turned into JSON errors, and the trace layer outermost sees
        // every request and its final status.
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(axum::middleware::map_response(error::json_errors))
        // Failures are logged once, where they are understood (ApiError), not again as bare 5xx.
        .layer(TraceLayer::new_for_http().on_failure(()))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        tonic::Code::NotFound,
        format!("no route for {}", uri.path()),
    )
}

/// A lazily connecting channel to `endpoint`: the gateway starts even while a service is still
/// starting, and reconnects by itself.
///
/// # Errors
/// [`ComponentError::Serve`] when the endpoint is not a valid URI.
pub fn channel(endpoint: &str) -> Result<Channel, ComponentError> {
    let endpoint =
        Endpoint::from_shared(endpoint.to_owned()).map_err(|error| ComponentError::Serve {
            component: "gateway".into(),
            reason: format!("bad service endpoint {endpoint}: {error}"),
        })?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Binds the public and admin listeners and serves until stopped, then drains.
///
/// # Errors
/// [`ComponentError`] when a listener cannot be bound or an endpoint is invalid.
pub async fn spawn(config: GatewayConfig) -> Result<Running, ComponentError> {
    let state = AppState::new(channel(&config.product_endpoint)?, config.request_timeout);
    let readiness = state.readiness.clone();
    let app = router(state, config.body_limit);

    let http_listener = shutdown::bind("gateway HTTP", config.http_addr).await?;
    let admin_listener = shutdown::bind("gateway admin", config.admin_addr).await?;
    let addrs = BoundAddrs {
        main: shutdown::local_addr(&http_listener, config.http_addr),
        admin: shutdown::local_addr(&admin_listener, config.admin_addr),
    };

    let stop = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let http = axum::serve(http_listener, app)
        .with_graceful_shutdown(http_stop.clone().cancelled_owned())
        .into_future();
    let admin = axum::serve(admin_listener, admin::router(readiness.clone()))
        .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
        .into_future();
    let supervisor = Supervisor {
        name: "gateway",
        stop: stop.clone(),
        drain_timeout: config.drain_timeout,
        main: tokio::spawn(http),
        main_stop: http_stop,
        admin: tokio::spawn(admin),
        admin_stop,
    };
    tracing::info!(component = "gateway", http = %addrs.main, admin = %addrs.admin, "serving");
    let lifecycle = supervisor.run(async move { readiness.start_draining() });
    Ok(Running::spawn("gateway", addrs, stop, lifecycle))
}
