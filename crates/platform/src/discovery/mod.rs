//! Service discovery: services register themselves with health checks and find each other by name,
//! never by a configured address.
//!
//! [`Registry`] is the contract every backend fulfils: register an instance, deregister it, and
//! watch a service name as a stream of its healthy instances. Backends:
//!
//! - [`consul`]: Consul's documented HTTP API (`/v1/agent/service/register`, blocking queries on
//!   `/v1/health/service/{name}?passing`), which Flotilla's embedded registry also speaks, so one
//!   machine needs nothing installed and many machines use a real Consul cluster unchanged;
//! - [`etcd`]: etcd's v3 gRPC API, one leased key per instance under its service's prefix, kept
//!   alive by the instance and watched by callers (the layout go-zero and Kratos use);
//! - [`fixed`]: a fixed list of instances, for tests and simple setups.
//!
//! Why a hand-written Consul client: the Rust crates found are on hyper 0.14 or only do catalog
//! registration; the few calls Flotilla needs are small, and their JSON is pinned by contract tests
//! against Consul's documented payloads (in the registry crate).

pub mod announce;
mod backoff;
pub mod balance;
pub mod consul;
pub mod etcd;
pub mod fixed;
mod metrics;
pub mod settings;
pub mod upstream;

pub use announce::{Announcement, Announcer};
pub use settings::{Backend, DiscoveryConfig, RegistrationConfig};
pub use upstream::Upstream;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::resilience::client::CallPolicies;
use crate::telemetry::metrics::Metrics;
use metrics::UpstreamMetrics;

/// One running instance of a service, as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance {
    /// Unique id, `name-<uuid>` for Flotilla's own services.
    pub id: String,
    /// Where its gRPC listener is.
    pub addr: SocketAddr,
    /// Tags it registered with.
    pub tags: Vec<String>,
    /// Metadata it registered with.
    pub meta: BTreeMap<String, String>,
}

/// How the registry checks that an instance is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The instance's `grpc.health.v1` endpoint, `host:port` (or `host:port/service`).
    pub grpc: String,
    /// How often the check runs (Consul practice: 10 s).
    pub interval: Duration,
    /// How long one check may take (5 s).
    pub timeout: Duration,
    /// How long an instance may stay critical before the registry removes it (1 min, Consul's own
    /// minimum).
    pub deregister_critical_after: Duration,
}

/// What an instance tells the registry about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Unique id (`name-<uuid>`).
    pub id: String,
    /// The service's name ("product").
    pub name: String,
    /// The address other services should call.
    pub addr: SocketAddr,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata (version, zone…).
    pub meta: BTreeMap<String, String>,
    /// The health check the registry runs.
    pub check: HealthCheck,
}

/// Why a registry call failed. Never includes the ACL token.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The registry could not be reached or did not answer in time.
    #[error("registry at {endpoint} unreachable: {reason}")]
    Unreachable {
        /// The registry's address.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The registry refused the call.
    #[error("registry refused {what}: HTTP {status}: {message}")]
    Refused {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The registry's reason.
        message: String,
    },
    /// The registry's answer could not be understood.
    #[error("registry answered {what} with something unexpected: {reason}")]
    Malformed {
        /// What was asked.
        what: String,
        /// What was wrong.
        reason: String,
    },
}

/// A boxed future, so [`Registry`] can be used as a trait object (the backend is chosen by
/// settings at run time).
pub type RegistryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, DiscoveryError>> + Send + 'a>>;

/// A stream of the healthy instances of one service: each item is the whole current set.
pub type InstanceStream = Pin<Box<dyn Stream<Item = Vec<Instance>> + Send>>;

/// The contract every discovery backend fulfils.
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Registers (or re-registers) an instance with its health check.
    fn register<'a>(&'a self, registration: &'a Registration) -> RegistryFuture<'a, ()>;

    /// Removes an instance; removing one that is not registered is not an error.
    fn deregister<'a>(&'a self, id: &'a str) -> RegistryFuture<'a, ()>;

    /// Watches a service: the stream yields the healthy instances whenever they change (and once at
    /// the start). It never ends while the registry lives; errors are retried with back-off inside.
    fn watch(&self, service: &str) -> InstanceStream;
}

/// A component's link to discovery: the registry its settings name, shared by the channels it
/// opens to other services and by the announcement of its own instances.
#[derive(Debug, Clone)]
pub struct Discovery {
    registry: Arc<dyn Registry>,
    registration: RegistrationConfig,
    /// Whether registering tells anyone (not with the `static` backend).
    announces: bool,
    /// How calls to each upstream are guarded.
    calls: CallPolicies,
    /// One channel per service for the whole component: one watch, one set of connections, one
    /// set of breakers and one retry budget, however many clients (the gateway's handlers, the
    /// token verifier) call the service.
    channels: Arc<std::sync::Mutex<BTreeMap<String, Upstream>>>,
    /// What the channels record: client calls, breakers, retries, instances.
    metrics: UpstreamMetrics,
}

impl Discovery {
    /// A client of the registry `config` names. Nothing is contacted yet: watches and
    /// registrations retry until the registry answers.
    ///
    /// # Errors
    /// [`DiscoveryError::Unreachable`] when the backend's client cannot be built.
    pub fn connect(config: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let (registry, announces): (Arc<dyn Registry>, bool) = match &config.backend {
            Backend::Consul(consul) => {
                (Arc::new(consul::ConsulRegistry::new(consul.clone())?), true)
            }
            Backend::Etcd(etcd) => (Arc::new(etcd::EtcdRegistry::new(etcd.clone())?), true),
            Backend::Static(fixed) => (Arc::new(fixed::FixedRegistry::new(fixed.clone())), false),
        };
        Ok(Self::assemble(
            registry,
            config.registration.clone(),
            announces,
            config.calls.clone(),
        ))
    }

    /// Discovery through a registry built elsewhere (tests, or a process sharing one client).
    pub fn with_registry(registry: Arc<dyn Registry>, registration: RegistrationConfig) -> Self {
        Self::assemble(registry, registration, true, CallPolicies::default())
    }

    /// Discovery that finds each named service at one fixed address and registers nowhere: for
    /// tests and single-instance setups.
    pub fn fixed(services: &[(&str, SocketAddr)]) -> Self {
        let config = services
            .iter()
            .fold(fixed::StaticConfig::default(), |config, (service, addr)| {
                config.with_service(service, vec![addr.to_string()])
            });
        Self::assemble(
            Arc::new(fixed::FixedRegistry::new(config)),
            RegistrationConfig::default(),
            false,
            CallPolicies::default(),
        )
    }

    fn assemble(
        registry: Arc<dyn Registry>,
        registration: RegistrationConfig,
        announces: bool,
        calls: CallPolicies,
    ) -> Self {
        let channels = Arc::default();
        let metrics = UpstreamMetrics::register(&channels);
        Self {
            registry,
            registration,
            announces,
            calls,
            channels,
            metrics,
        }
    }

    /// The same, guarding calls as `calls` says instead of with the defaults.
    #[must_use]
    pub fn with_calls(mut self, calls: CallPolicies) -> Self {
        self.calls = calls;
        self
    }

    /// The metrics of this component's calls to other services (client calls, breakers,
    /// retries, instances), in a registry of their own: include it in the `/metrics` of one
    /// component per process.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics.metrics
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// A guarded, load-balanced channel to the healthy instances of `service`, following the
    /// registry, with the breakers and retries its [`CallPolicies`] entry says; the same one (a
    /// clone) for every caller in this component. Needs a tokio runtime (the first call for a
    /// service starts its watch).
    pub fn channel(&self, service: &str) -> Upstream {
        let open = || {
            let balanced = balance::Balanced::new(service, self.registry.watch(service));
            Upstream::new(balanced, self.calls.get(service), &self.metrics)
        };
        match self.channels.lock() {
            Ok(mut channels) => channels
                .entry(service.to_owned())
                .or_insert_with(open)
                .clone(),
            // A panic while opening a channel poisoned the cache: serve unshared channels.
            Err(_) => open(),
        }
    }

    /// What registers this component's servers; `None` when registering would tell nobody (the
    /// `static` backend), so shutdown does not wait for callers to notice a deregistration.
    pub fn announcer(&self) -> Option<Announcer> {
        self.announces
            .then(|| Announcer::new(Arc::clone(&self.registry), self.registration.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the watches it is asked for.
    #[derive(Debug, Default)]
    struct Watches(AtomicUsize);

    impl Registry for Watches {
        fn register<'a>(&'a self, _registration: &'a Registration) -> RegistryFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }

        fn deregister<'a>(&'a self, _id: &'a str) -> RegistryFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }

        fn watch(&self, _service: &str) -> InstanceStream {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(futures::stream::pending())
        }
    }

    #[tokio::test]
    async fn one_channel_and_one_watch_per_service_per_component() {
        let watches = Arc::new(Watches::default());
        let discovery = Discovery::with_registry(watches.clone(), RegistrationConfig::default());
        let _gateway = discovery.channel("auth");
        let _verifier = discovery.clone().channel("auth");
        assert_eq!(watches.0.load(Ordering::SeqCst), 1);
        let _products = discovery.channel("product");
        assert_eq!(watches.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_static_backend_announces_nothing() {
        let fixed = Discovery::fixed(&[("user", ([127, 0, 0, 1], 50051).into())]);
        assert!(fixed.announcer().is_none());
        let consul = Discovery::connect(&DiscoveryConfig::consul_at(([127, 0, 0, 1], 8500).into()));
        assert!(consul.is_ok_and(|discovery| discovery.announcer().is_some()));
    }
}
