//! Service discovery: services register themselves with health checks and find each other by name,
//! never by a configured address.
//!
//! [`Registry`] is the contract every backend fulfils: register an instance, deregister it, and
//! watch a service name as a stream of its healthy instances. Backends:
//!
//! - [`consul`]: Consul's documented HTTP API (`/v1/agent/service/register`, blocking queries on
//!   `/v1/health/service/{name}?passing`), which Flotilla's embedded registry also speaks, so one
//!   machine needs nothing installed and many machines use a real Consul cluster unchanged;
//! - [`fixed`]: a fixed list of instances, for tests and simple setups.
//!
//! Why a hand-written Consul client: the Rust crates found are on hyper 0.14 or only do catalog
//! registration; the few calls Flotilla needs are small, and their JSON is pinned by contract tests
//! against Consul's documented payloads (in the registry crate).

pub mod consul;
pub mod fixed;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

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
