//! Runs one gRPC service the way every Flotilla service runs: with the standard `grpc.health.v1`
//! service, server reflection (v1 and v1alpha, for grpcurl and Postman), an admin HTTP listener, and
//! a graceful shutdown in a fixed order:
//!
//! 1. the instance deregisters from discovery and keeps serving for the deregistration delay, so
//!    callers' watches drop it while it still answers; then the before-drain hooks run;
//! 2. health flips to NOT_SERVING and `/ready` to 503;
//! 3. the gRPC listener closes and every HTTP/2 connection gets a GOAWAY, so clients stop starting
//!    calls on it while in-flight calls finish;
//! 4. after at most the drain timeout the component stops waiting (calls still running then end
//!    with the process); the admin listener stops last so `/ready` says "draining" for as long as
//!    the drain lasts.
//!
//! Health `Watch` streams receive NOT_SERVING and then end, so a watching load balancer does not
//! hold the drain open.
//!
//! Every server also sheds load with its own adaptive concurrency limit
//! ([`crate::resilience::limit`]), and injects the faults `FLOTILLA_FAULTS` asks for
//! ([`crate::resilience::faults`]): both sit here, in the one server stack, so no component can
//! forget them and a drill reaches every service the same way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::admin::{self, Readiness};
use crate::auth::{AuthLayer, Policy, Verifier};
use crate::config::{ConfigError, Settings};
use crate::discovery::Announcer;
use crate::resilience::faults::{FAULTS_VAR, FaultLayer, FaultRules};
use crate::resilience::limit::{ConcurrencyLimitLayer, LimitConfig};
use crate::shutdown::{ComponentError, Listeners, Running, Supervisor};
use crate::telemetry::grpc_metrics::{GrpcMetrics, GrpcMetricsLayer};
use crate::telemetry::grpc_spans::GrpcSpanLayer;
use crate::telemetry::metrics::Metrics;

/// The drain timeout's variable and default (10 s).
pub const DRAIN_TIMEOUT_VAR: &str = "FLOTILLA_DRAIN_TIMEOUT";
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how one service listens, and how it protects itself.
///
/// Not `Eq`: the limit's back-off ratio and the fault rules' percentages are floats.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// The gRPC listen address (`FLOTILLA_<SERVICE>_GRPC_ADDR`).
    pub grpc_addr: SocketAddr,
    /// The admin HTTP listen address (`FLOTILLA_<SERVICE>_ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// How long in-flight calls may take to finish at shutdown (`FLOTILLA_DRAIN_TIMEOUT`).
    pub drain_timeout: Duration,
    /// The adaptive concurrency limit of this server (`FLOTILLA_CONCURRENCY_LIMIT_*`).
    pub limit: LimitConfig,
    /// The faults to inject (`FLOTILLA_FAULTS`); empty, the default, injects nothing.
    pub faults: FaultRules,
}

impl ServeConfig {
    /// Listeners at `grpc_addr` and `admin_addr`, and every other setting at its default: the
    /// default drain timeout, the default concurrency limit, no faults. What tests and embedders
    /// start from, so a field added later does not break them.
    pub fn new(grpc_addr: SocketAddr, admin_addr: SocketAddr) -> Self {
        Self {
            grpc_addr,
            admin_addr,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            limit: LimitConfig::default(),
            faults: FaultRules::none(),
        }
    }

    /// Reads `FLOTILLA_<SERVICE>_GRPC_ADDR`, `FLOTILLA_<SERVICE>_ADMIN_ADDR`,
    /// `FLOTILLA_DRAIN_TIMEOUT`, the concurrency limit's `FLOTILLA_CONCURRENCY_LIMIT_*` and
    /// `FLOTILLA_FAULTS`, with the given default addresses. The limit and the faults are read for
    /// every service, so one bad rule stops every component at start rather than the first drill.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable.
    pub fn from_settings(
        settings: &Settings,
        service: &str,
        default_grpc: SocketAddr,
        default_admin: SocketAddr,
    ) -> Result<Self, ConfigError> {
        let prefix = format!("FLOTILLA_{}", service.to_ascii_uppercase());
        Ok(Self {
            grpc_addr: settings.socket_addr(&format!("{prefix}_GRPC_ADDR"), default_grpc)?,
            admin_addr: settings.socket_addr(&format!("{prefix}_ADMIN_ADDR"), default_admin)?,
            drain_timeout: drain_timeout(settings)?,
            limit: LimitConfig::from_settings(settings)?,
            faults: FaultRules::from_settings(settings)?,
        })
    }

    /// The same, with `drain_timeout` to finish in-flight calls at shutdown.
    #[must_use]
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// The same, with the concurrency limit `limit`.
    #[must_use]
    pub fn with_limit(mut self, limit: LimitConfig) -> Self {
        self.limit = limit;
        self
    }

    /// The same, injecting the faults `faults`.
    #[must_use]
    pub fn with_faults(mut self, faults: FaultRules) -> Self {
        self.faults = faults;
        self
    }
}

/// Reads `FLOTILLA_DRAIN_TIMEOUT` (default 10 s), shared by every component.
///
/// # Errors
/// A [`ConfigError`] when it is not a duration.
pub fn drain_timeout(settings: &Settings) -> Result<Duration, ConfigError> {
    settings.duration(DRAIN_TIMEOUT_VAR, DEFAULT_DRAIN_TIMEOUT)
}

/// Something to do before draining starts, such as deregistering from discovery.
pub type BeforeDrain = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A gRPC server being assembled: services, readiness checks, shutdown hooks.
pub struct GrpcServer {
    name: &'static str,
    config: ServeConfig,
    routes: Routes,
    service_names: Vec<&'static str>,
    readiness: Readiness,
    before_drain: Vec<BeforeDrain>,
    announcer: Option<Announcer>,
    metrics: Metrics,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("service_names", &self.service_names)
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// A server for the component `name` ("product"), listening as `config` says.
    pub fn new(name: &'static str, config: ServeConfig) -> Self {
        Self {
            name,
            config,
            routes: Routes::default(),
            service_names: Vec::new(),
            readiness: Readiness::new(),
            before_drain: Vec::new(),
            announcer: None,
            metrics: Metrics::new(),
        }
    }

    /// Records the server's metrics in `metrics`, which its admin listener serves at `/metrics`
    /// (by default a registry of its own).
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Adds a tonic service; its health status is SERVING while the server runs.
    #[must_use]
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Error = Infallible,
                Response = http::Response<tonic::body::Body>,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Adds a tonic service behind its access `policy`, checking tokens with `verifier`: how every
    /// Flotilla service is served (zero trust between hops).
    #[must_use]
    pub fn add_authorized_service<S>(self, service: S, verifier: &Verifier, policy: Policy) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Error = Infallible,
                Response = http::Response<tonic::body::Body>,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let authorized = tower::Layer::layer(&AuthLayer::new(verifier.clone(), policy), service);
        self.add_service(authorized)
    }

    /// Adds a readiness check (such as "the database answers") to `/ready`.
    #[must_use]
    pub fn readiness_check(mut self, check: admin::ReadinessCheck) -> Self {
        self.readiness = self.readiness.with_check(check);
        self
    }

    /// Adds a hook that runs when shutdown begins, before health flips and before the drain.
    #[must_use]
    pub fn before_drain(mut self, hook: BeforeDrain) -> Self {
        self.before_drain.push(hook);
        self
    }

    /// Registers the server with discovery once it is ready (its readiness checks pass), and
    /// deregisters it first thing at shutdown.
    #[must_use]
    pub fn announce(mut self, announcer: Announcer) -> Self {
        self.announcer = Some(announcer);
        self
    }

    /// Binds both listeners and starts serving; returns once the listeners are bound, so the
    /// addresses (port 0 resolved) are known.
    ///
    /// # Errors
    /// [`ComponentError::Bind`] when a listener cannot be bound; [`ComponentError::Serve`] when the
    /// reflection descriptors cannot be loaded.
    pub async fn spawn(self) -> Result<Running, ComponentError> {
        let listeners =
            Listeners::bind(self.name, self.config.grpc_addr, self.config.admin_addr).await?;
        self.spawn_on(listeners).await
    }

    /// Starts serving on listeners bound earlier: how `flotilla up` learns every service's address
    /// before it builds the services that call each other.
    ///
    /// # Errors
    /// [`ComponentError::Serve`] when the reflection descriptors cannot be loaded.
    pub async fn spawn_on(self, listeners: Listeners) -> Result<Running, ComponentError> {
        let name = self.name;
        let addrs = listeners.addrs();
        // One limit per server, that is per service instance: under `flotilla up` every service
        // sheds its own overload, not its neighbours'.
        let limit = ConcurrencyLimitLayer::new(&self.config.limit);
        limit.register_metrics(name, &self.metrics);
        let faults = FaultLayer::new(self.config.faults.clone());
        let faults = if faults.is_active() {
            // A drill left on by accident looks like an outage: say so loudly, once, at start.
            tracing::warn!(
                component = name,
                rules = %self.config.faults,
                "fault injection is on ({FAULTS_VAR}): matching calls are aborted or delayed on purpose"
            );
            Some(faults)
        } else {
            None
        };

        let grpc_metrics = GrpcMetricsLayer::new(GrpcMetrics::server(name, &self.metrics));
        let call_lines = tracing::enabled!(
            target: "tower_http::trace::on_response",
            tracing::Level::DEBUG
        );
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let serve_error = |reason: String| ComponentError::Serve {
            component: name.to_owned(),
            reason,
        };
        let reflection_v1 = reflection(&self.service_names)
            .build_v1()
            .map_err(|error| serve_error(format!("reflection descriptors: {error}")))?;
        let reflection_v1alpha = reflection(&self.service_names)
            .build_v1alpha()
            .map_err(|error| serve_error(format!("reflection descriptors: {error}")))?;

        let routes = self
            .routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        set_health(
            &health_reporter,
            &self.service_names,
            ServingStatus::Serving,
        )
        .await;

        let supervisor = Supervisor::start(
            name,
            listeners,
            self.readiness.clone(),
            self.metrics.clone(),
            self.config.drain_timeout,
            |listener, closed| {
                tonic::transport::Server::builder()
                    // A span per call, continuing the caller's trace; outermost, so every line
                    // logged below carries its trace id and every layer's work is inside it.
                    .layer(GrpcSpanLayer::server(name))
                    // One debug line per call ("finished processing request", with its latency):
                    // there when someone needs to see where calls go, and not even installed at
                    // the default level, where it would cost every call for lines nobody sees.
                    .layer(tower::util::option_layer(call_lines.then(|| {
                        tower::ServiceBuilder::new()
                            .map_response(|response: http::Response<_>| {
                                response.map(tonic::body::Body::new)
                            })
                            .layer(
                                tower_http::trace::TraceLayer::new_for_grpc().on_failure(
                                    tower_http::trace::DefaultOnFailure::new()
                                        .level(tracing::Level::DEBUG),
                                ),
                            )
                    })))
                    // Every call counted and timed, shed and faulted ones included, from its
                    // request to the end of its answer.
                    .layer(grpc_metrics)
                    // Calls a handler makes inherit the deadline of the call it serves.
                    .layer(crate::resilience::deadline::InheritDeadlineLayer)
                    // A call that is itself a retry makes no retries of its own downstream.
                    .layer(crate::resilience::retry::RetryMarkerLayer)
                    // Load shedding: a call over the limit is refused at once, before any work.
                    // Below tracing, so shed calls still show up; health and reflection exempt.
                    .layer(limit)
                    // Injected faults sit inside the limit, so an injected delay holds a place as
                    // a slow handler would (and injected overload codes shrink the limit as real
                    // ones do). Not installed without rules, so the default path pays one branch.
                    .layer(tower::util::option_layer(faults))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), closed)
            },
        );
        tracing::info!(component = name, grpc = %addrs.main, admin = %addrs.admin, "serving");

        let announcement = self.announcer.map(|announcer| {
            let announcer = announcer.with_meta("admin_port", addrs.admin.port().to_string());
            let registration = announcer.registration(name, addrs.main);
            announcer.start(registration, self.readiness.clone())
        });
        let readiness = self.readiness;
        let service_names = self.service_names;
        let before_drain = self.before_drain;
        Ok(supervisor.into_running(async move {
            if let Some(announcement) = announcement {
                announcement.withdraw().await;
            }
            for hook in before_drain {
                hook().await;
            }
            readiness.start_draining();
            set_health(&health_reporter, &service_names, ServingStatus::NotServing).await;
            end_health_watches(health_reporter, &service_names).await;
        }))
    }
}

/// Server reflection over the services this server really has (the descriptor set holds every
/// Flotilla contract; listing them all would advertise services that are served elsewhere).
fn reflection(service_names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(HEALTH_SERVICE);
    service_names
        .iter()
        .fold(builder, |builder, name| builder.with_service_name(*name))
}

/// The standard health service's name, as clients ask for it.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Whether `path` is a health check or reflection call rather than a service's own. Such calls
/// are never limited (health must answer while the server sheds load, and reflection is an
/// operator's tool for exactly such moments) and never traced (a registry's checks every few
/// seconds would bury the traces of real requests).
pub(crate) fn is_plumbing(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// Ends every health `Watch` stream once it has delivered NOT_SERVING: a watch is a call that never
/// finishes by itself, and left open it would hold the drain until its timeout on every shutdown.
async fn end_health_watches(
    mut reporter: tonic_health::server::HealthReporter,
    service_names: &[&str],
) {
    reporter.clear_service_status("").await;
    for service in service_names {
        reporter.clear_service_status(service).await;
    }
}

async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    service_names: &[&str],
    status: ServingStatus,
) {
    // "" is the whole server, what a client asks when it names no service.
    reporter.set_service_status("", status).await;
    for service in service_names {
        reporter.set_service_status(*service, status).await;
    }
}

#[cfg(test)]
mod tests;
