//! The `static` backend: a fixed list of instances per service, from `FLOTILLA_<SERVICE>_ENDPOINT`.
//! Registering tells nobody. For tests and for setups where addresses are managed elsewhere (a
//! Kubernetes Service name, a compose service): host names are resolved when a watch starts and again
//! every [`RESOLVE_INTERVAL`] (every [`RETRY_INTERVAL`] while nothing resolves), so an instance that
//! comes back under a new address is found; every address a name resolves to is one instance, and the
//! watch yields only when the set changes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Instance, InstanceStream, Registration, Registry, RegistryFuture};
use crate::config::{ConfigError, Settings};

/// How often host names are resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// How soon they are resolved again while none resolves.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The services Flotilla's own components call, with the gRPC port each listens on by default.
pub const FLOTILLA_SERVICES: &[(&str, u16)] =
    &[("user", 50051), ("auth", 50052), ("product", 50053)];

/// Fixed `host:port` endpoints by service name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticConfig {
    services: BTreeMap<String, Vec<String>>,
}

impl StaticConfig {
    /// Reads `FLOTILLA_USER_ENDPOINT`, `FLOTILLA_AUTH_ENDPOINT` and `FLOTILLA_PRODUCT_ENDPOINT`:
    /// comma-separated `host:port` lists, each defaulting to the service's port on 127.0.0.1.
    ///
    /// # Errors
    /// A [`ConfigError`] for an entry that is not `host:port`.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for (service, port) in FLOTILLA_SERVICES {
            let variable = format!("FLOTILLA_{}_ENDPOINT", service.to_ascii_uppercase());
            let default = format!("127.0.0.1:{port}");
            let endpoints = settings.host_ports(&variable, &[default.as_str()])?;
            config = config.with_service(service, endpoints);
        }
        Ok(config)
    }

    /// The same, with `service` at `endpoints` (`host:port` each).
    #[must_use]
    pub fn with_service(mut self, service: &str, endpoints: Vec<String>) -> Self {
        self.services.insert(service.to_owned(), endpoints);
        self
    }

    /// The endpoints of `service`; none for a service it does not know.
    pub fn endpoints(&self, service: &str) -> &[String] {
        self.services.get(service).map_or(&[], Vec::as_slice)
    }
}

/// A registry that always reports the configured endpoints.
#[derive(Debug, Clone, Default)]
pub struct FixedRegistry {
    config: StaticConfig,
}

impl FixedRegistry {
    /// A registry reporting what `config` lists.
    pub fn new(config: StaticConfig) -> Self {
        Self { config }
    }
}

impl Registry for FixedRegistry {
    fn register<'a>(&'a self, _registration: &'a Registration) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn deregister<'a>(&'a self, _id: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn watch(&self, service: &str) -> InstanceStream {
        let service = service.to_owned();
        let endpoints = self.config.endpoints(&service).to_vec();
        let state = (service, endpoints, None::<Vec<Instance>>);
        Box::pin(futures::stream::unfold(
            state,
            |(service, endpoints, last)| async move {
                loop {
                    if let Some(last) = &last {
                        let wait = if last.is_empty() && !endpoints.is_empty() {
                            RETRY_INTERVAL
                        } else {
                            RESOLVE_INTERVAL
                        };
                        tokio::time::sleep(wait).await;
                    }
                    let instances = resolve(&service, &endpoints).await;
                    if last.as_ref() != Some(&instances) {
                        return Some((instances.clone(), (service, endpoints, Some(instances))));
                    }
                }
            },
        ))
    }
}

/// Every address the endpoints resolve to, as instances; an endpoint that does not resolve is
/// left out with a warning (the others still serve).
async fn resolve(service: &str, endpoints: &[String]) -> Vec<Instance> {
    let mut instances = Vec::new();
    for endpoint in endpoints {
        match tokio::net::lookup_host(endpoint.as_str()).await {
            Ok(addrs) => instances.extend(addrs.map(|addr| Instance {
                id: format!("{service}@{addr}"),
                addr,
                tags: Vec::new(),
                meta: BTreeMap::new(),
            })),
            Err(error) => {
                tracing::warn!(%service, %endpoint, %error, "a static endpoint does not resolve");
            }
        }
    }
    instances.sort();
    instances.dedup_by(|a, b| a.addr == b.addr);
    instances
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn watching_yields_the_resolved_list_then_nothing() {
        let config = StaticConfig::default().with_service(
            "product",
            vec![
                "127.0.0.1:50053".into(),
                "localhost:50054".into(),
                "no-such-host.invalid:1".into(),
            ],
        );
        let registry = FixedRegistry::new(config);
        let mut watch = registry.watch("product");
        let instances = watch.next().await.unwrap_or_default();
        let ports: Vec<u16> = instances.iter().map(|i| i.addr.port()).collect();
        assert!(
            ports.contains(&50053) && ports.contains(&50054),
            "{ports:?}"
        );
        assert!(instances.iter().all(|i| i.addr.ip().is_loopback()));
        assert_eq!(instances[0].id, format!("product@{}", instances[0].addr));
        let next = tokio::time::timeout(std::time::Duration::from_millis(20), watch.next()).await;
        assert!(next.is_err(), "no further change");
        assert_eq!(registry.watch("user").next().await, Some(Vec::new()));
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_and_only_changes_are_yielded() {
        let config = StaticConfig::default()
            .with_service("product", vec!["127.0.0.1:50053".into()])
            .with_service("user", vec!["no-such-host.invalid:1".into()]);
        let registry = FixedRegistry::new(config);
        let mut product = registry.watch("product");
        assert_eq!(product.next().await.map(|set| set.len()), Some(1));
        // Resolved again every interval, but the same answer is not yielded again.
        let next = tokio::time::timeout(RESOLVE_INTERVAL * 3, product.next()).await;
        assert!(next.is_err(), "no change, nothing yielded");
        // A name that does not resolve yields an empty set once, then is retried quietly.
        let mut user = registry.watch("user");
        assert_eq!(user.next().await, Some(Vec::new()));
        let next = tokio::time::timeout(RETRY_INTERVAL * 5, user.next()).await;
        assert!(next.is_err(), "still nothing, nothing yielded");
    }
}
