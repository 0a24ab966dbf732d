//! The HTTP/JSON API gateway: validates requests and calls the services over gRPC, mapping their
//! answers to JSON and their status codes to HTTP statuses in one place ([`error`]).
//!
//! [`router`] builds the axum app from its state, so tests drive it without a socket; [`spawn`]
//! binds the public and admin listeners and runs it with a graceful drain.

pub mod auth;
pub mod config;
pub mod deadlines;
pub mod error;
pub mod extract;
pub mod json;
pub mod openapi;
pub mod routes;
pub mod state;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
pub use config::GatewayConfig;
use platform::admin;
use platform::auth::Verifier;
use platform::discovery::Discovery;
use platform::shutdown::{ComponentError, Listeners, Running, Supervisor};
use platform::telemetry::http_metrics::HttpMetrics;
use platform::telemetry::http_spans::HttpSpanLayer;
use platform::telemetry::metrics::Metrics;
pub use state::{AppState, Upstreams};
use tower_http::LatencyUnit;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::error::ApiError;

/// The gateway's routes and layers, over `state`, recording into `metrics`.
pub fn router(state: AppState, body_limit: usize, metrics: &HttpMetrics) -> Router {
    use routes::{auth, products, users};
    let readiness = state.readiness.clone();
    Router::new()
        .route("/v1/products", get(products::list).post(products::create))
        .route(
            "/v1/products/{id}",
            get(products::get)
                .patch(products::update)
                .delete(products::delete),
        )
        .route("/v1/users", get(users::list).post(users::sign_up))
        .route("/v1/users/me", get(users::me))
        .route("/v1/users/{id}", get(users::get))
        .route("/v1/auth/login", axum::routing::post(auth::login))
        .route("/v1/auth/refresh", axum::routing::post(auth::refresh))
        .route("/v1/auth/logout", axum::routing::post(auth::logout))
        .route("/.well-known/jwks.json", get(auth::jwks))
        // Each API request runs inside its route's deadline, which its calls inherit.
        .route_layer(axum::middleware::from_fn_with_state(
            state.deadlines.clone(),
            deadlines::within_route_deadline,
        ))
        .with_state(state)
        .route("/openapi.json", get(openapi::document))
        .route("/healthz", get(admin::health))
        .route("/readyz", get(admin::ready).with_state(readiness))
        .fallback(not_found)
        // Layers added later wrap the earlier ones: the body limit runs closest to the handlers,
        // its 413 (and axum's 405) are turned into JSON errors, and the trace layer outermost sees
        // every request and its final status.
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(axum::middleware::map_response(error::json_errors))
        // Counted with the status the client gets (after the JSON error mapping), by the route
        // template axum matched.
        .layer(metrics.layer())
        // Failures are logged once, where they are understood (ApiError), not again as bare 5xx.
        // Latency in microseconds: a request the gateway answers itself (an open breaker) takes
        // well under a millisecond, which the default unit would log as 0.
        .layer(
            TraceLayer::new_for_http()
                .on_response(DefaultOnResponse::new().latency_unit(LatencyUnit::Micros))
                .on_failure(()),
        )
        // The request's span, continuing the client's trace: outermost, so every line logged
        // for the request carries its trace id and every upstream call is its child. Probes and
        // the API document are not traced.
        .layer(HttpSpanLayer::new("gateway").untraced(&["/healthz", "/readyz", "/openapi.json"]))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        tonic::Code::NotFound,
        format!("no route for {}", uri.path()),
    )
}

/// Binds the public and admin listeners and serves until stopped, then drains. The admin listener
/// serves `metrics`, where the gateway's HTTP metrics are registered.
///
/// # Errors
/// [`ComponentError`] when a listener cannot be bound or an endpoint is invalid.
pub async fn spawn(
    config: GatewayConfig,
    discovery: &Discovery,
    metrics: Metrics,
) -> Result<Running, ComponentError> {
    let upstreams = Upstreams::discover(discovery);
    let verifier = Verifier::new(&config.auth, discovery);
    let state = AppState::new(upstreams, verifier, config.deadlines.clone())
        .with_trusted_proxies(config.trusted_proxies.clone());
    let readiness = state.readiness.clone();
    // Connection info gives handlers the client's address (failed logins are limited per address).
    let http_metrics = HttpMetrics::register(&metrics);
    let app = router(state, config.body_limit, &http_metrics)
        .into_make_service_with_connect_info::<SocketAddr>();

    let listeners = Listeners::bind("gateway", config.http_addr, config.admin_addr).await?;
    let addrs = listeners.addrs();
    let supervisor = Supervisor::start(
        "gateway",
        listeners,
        readiness.clone(),
        metrics,
        config.drain_timeout,
        |listener, closed| {
            axum::serve(listener, app)
                .with_graceful_shutdown(closed)
                .into_future()
        },
    );
    tracing::info!(component = "gateway", http = %addrs.main, admin = %addrs.admin, "serving");
    Ok(supervisor.into_running(async move { readiness.start_draining() }))
}
