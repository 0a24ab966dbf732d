//! Flotilla's embedded service registry: one node that speaks the subset of Consul's HTTP API that
//! Flotilla uses, so `platform::discovery::consul` works unchanged on one machine with nothing
//! installed, and against a real Consul cluster on many.
//!
//! - [`spawn`] binds the API and admin listeners and runs the registry until stopped, with the
//!   lifecycle every component shares (`platform::shutdown::Supervisor`): blocking queries answer
//!   at once when the drain starts, then in-flight requests finish, then the checks stop and the
//!   last change is written.
//! - [`router`] is the API over a [`Registry`], without a socket (tests drive it with `oneshot`).
//! - [`Registry::open`] reads the data directory and starts the checks, the reaper and the writer.
//!
//! Code map: [`api`] (routes, blocking queries, headers), [`decode`] (request bodies as Consul
//! decodes them), [`domain`] (definitions and Consul's validation rules), `catalog` (the state
//! and its indexes), `registry` (the shared handle and its tasks), `checks` (gRPC, HTTP, TCP,
//! TTL), [`store`] (the data file), [`json`] (answers in Consul's shapes), [`duration`] (Go
//! durations), [`error`] (errors as Consul's plain-text answers).
//!
//! # Where this registry differs from Consul, and why
//!
//! - **One node, no cluster**: no Raft, ACLs, namespaces, service mesh (`Kind`, `Proxy`,
//!   `Connect`), prepared queries, KV or DNS. `Kind` other than the typical one, and `filter`
//!   expressions, are refused (400) rather than ignored; `TaggedAddresses` are not kept. There is
//!   no `consul` service in the catalog. `GET /v1/status/leader` answers the registry's own HTTP
//!   address (Consul's is the leader's RPC address, port 8300).
//! - **Checks**: gRPC, HTTP, TCP and TTL run; script, Docker, UDP, H2PING, alias and OS-service
//!   checks are refused at registration (400 `Invalid check: …`) because a check that never runs
//!   would keep an instance critical for no visible reason. `SuccessBeforePassing` and
//!   `FailuresBefore*` are validated but every result counts at once. Intervals under 100 ms are
//!   raised to 100 ms (Consul's floor is 1 s) and a probe runs at once on registration (Consul
//!   staggers the first run). Checks connect directly, ignoring `HTTP_PROXY`.
//! - **`DeregisterCriticalServiceAfter`**: any positive value is honoured, and the instance is
//!   removed when it is due (Consul's documented minimum is 1 minute and its reaper runs every 30
//!   seconds), so tests and short-lived setups can use seconds. After a restart the time counts
//!   from the restart, as restored checks start critical then.
//! - **Re-registration** replaces the instance and all its checks (Consul's
//!   `replace-existing-checks`); a check whose ID and definition are unchanged keeps its status, so
//!   a service that re-registers does not flap (Consul keeps the status of any check whose ID is
//!   unchanged, even if what it probes changed; here a changed check starts again). A check ID
//!   already used by another instance is refused (400) instead of being taken over.
//! - **Persistence** keeps definitions, the node ID and the index in one JSON file, not check
//!   statuses: restored checks start critical until they run (Consul also keeps TTL statuses).
//! - **Indexes** are derived from the clock (`max(index + 1, Unix milliseconds)`), so they never go
//!   backwards, not even after a crash that lost the last write. A health query's index is that of
//!   its service name; Consul's raft indexes are smaller numbers with the same meaning to clients.
//!   A blocking query answers at once whenever its `index` differs from the current one (Consul
//!   blocks while the requested index is higher), and every answer carries `X-Consul-Index`.
//!   Output-only changes of a probe check do not move the index (a Consul agent defers them too).
//! - **Decoding** follows Go's case-insensitive field names and the snake_case spellings, but
//!   refuses durations that are neither strings nor numbers, and ports outside 0–65535.
//! - **Quoting**: IDs in messages (`Unknown service ID "x". …`) are quoted with Rust's `{:?}`,
//!   which matches Go's `%q` except for some non-ASCII characters.

#![warn(missing_docs, unreachable_pub)]

pub mod api;
mod catalog;
mod checks;
pub mod config;
pub mod decode;
pub mod domain;
pub mod duration;
pub mod error;
pub mod json;
mod registry;
pub mod store;

pub use api::router;
pub use catalog::{CheckIdTaken, TtlError, UnknownService};
pub use config::RegistryConfig;
use platform::admin::Readiness;
use platform::shutdown::{ComponentError, Listeners, Running, Supervisor};
use platform::telemetry::metrics::Metrics;
pub use registry::{ChangeError, Registry, RegistryError, RegistryOptions};

/// Binds the API and admin listeners, opens the registry in the configured data directory, and
/// serves until stopped; then drains and stops every check. Its admin listener serves `metrics`.
///
/// # Errors
/// [`ComponentError::Bind`] when a listener cannot be bound, [`ComponentError::Serve`] when the
/// data directory cannot be read.
pub async fn spawn(config: RegistryConfig, metrics: Metrics) -> Result<Running, ComponentError> {
    let listeners = Listeners::bind("registry", config.addr, config.admin_addr).await?;
    let addrs = listeners.addrs();
    let registry = Registry::open(RegistryOptions::new(addrs.main, config.data_dir.clone()))
        .await
        .map_err(|error| ComponentError::Serve {
            component: "registry".into(),
            reason: error.to_string(),
        })?;
    let readiness = Readiness::new();

    let app = router(registry.clone());
    let supervisor = Supervisor::start(
        "registry",
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
    tracing::info!(
        component = "registry",
        http = %addrs.main,
        admin = %addrs.admin,
        data_dir = ?config.data_dir,
        "serving"
    );
    let draining = registry.clone();
    let before_close = async move {
        readiness.start_draining();
        draining.start_draining();
    };
    let stop = supervisor.stop.clone();
    let lifecycle = async move {
        let outcome = supervisor.run(before_close).await;
        registry.shutdown().await;
        outcome
    };
    Ok(Running::spawn("registry", addrs, stop, lifecycle))
}
