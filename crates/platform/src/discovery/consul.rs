//! The Consul backend, on Consul's documented HTTP API:
//!
//! - `PUT /v1/agent/service/register` with a gRPC health check against the instance's
//!   `grpc.health.v1` and `DeregisterCriticalServiceAfter`;
//! - `PUT /v1/agent/service/deregister/{id}`;
//! - `GET /v1/health/service/{name}?passing` as a blocking query (`index`, `wait`, answered with
//!   `X-Consul-Index`) to watch a service.
//!
//! The watch loop follows Consul's documented rules for blocking queries: an index that goes
//! backwards resets to 0, an index must be above 0 (1 is used instead), errors back off
//! exponentially with jitter from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], and the last known instances are
//! kept (never replaced by an empty set) while the registry cannot be reached. `CONSUL_HTTP_TOKEN` is
//! sent as `X-Consul-Token` when set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backoff::backoff;
use super::{DiscoveryError, Instance, InstanceStream, Registration, Registry, RegistryFuture};
use crate::config::{ConfigError, Secret, Settings};

pub use super::backoff::{MAX_BACKOFF, MIN_BACKOFF};
/// How long one blocking query waits for a change (the registry adds up to 1/16 of jitter).
pub const BLOCKING_WAIT: Duration = Duration::from_secs(300);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Consul is, and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// The agent's HTTP address (`CONSUL_HTTP_ADDR`, `127.0.0.1:8500` or a URL).
    pub address: String,
    /// The ACL token (`CONSUL_HTTP_TOKEN`), sent as `X-Consul-Token`.
    pub token: Option<Secret>,
}

impl ConsulConfig {
    /// Reads `CONSUL_HTTP_ADDR` (default `127.0.0.1:8500`, Consul's own default; a bare
    /// `host:port` means `http://`) and `CONSUL_HTTP_TOKEN`.
    ///
    /// # Errors
    /// A [`ConfigError`] for an address with a scheme other than http or https.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let raw = settings.string("CONSUL_HTTP_ADDR", "127.0.0.1:8500")?;
        let address = if raw.contains("://") {
            settings.url(
                "CONSUL_HTTP_ADDR",
                "http://127.0.0.1:8500",
                &["http", "https"],
            )?
        } else {
            format!("http://{raw}")
        };
        Ok(Self {
            address: address.trim_end_matches('/').to_owned(),
            token: settings.optional_secret("CONSUL_HTTP_TOKEN")?,
        })
    }
}

/// Consul's HTTP API as a [`Registry`].
#[derive(Debug, Clone)]
pub struct ConsulRegistry {
    http: reqwest::Client,
    config: ConsulConfig,
}

impl ConsulRegistry {
    /// A client of the agent `config` names.
    ///
    /// # Errors
    /// [`DiscoveryError::Unreachable`] when the HTTP client cannot be built.
    pub fn new(config: ConsulConfig) -> Result<Self, DiscoveryError> {
        // reqwest is built without a default TLS provider (no aws-lc): install ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CALL_TIMEOUT)
            .build()
            .map_err(|error| DiscoveryError::Unreachable {
                endpoint: config.address.clone(),
                reason: error.to_string(),
            })?;
        Ok(Self { http, config })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.config.address));
        match &self.config.token {
            Some(token) => builder.header("X-Consul-Token", token.expose()),
            None => builder,
        }
    }

    async fn send(
        &self,
        what: &str,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DiscoveryError> {
        let response = builder
            .send()
            .await
            .map_err(|error| DiscoveryError::Unreachable {
                endpoint: self.config.address.clone(),
                reason: error.without_url().to_string(),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = response.text().await.unwrap_or_default();
        Err(DiscoveryError::Refused {
            what: what.to_owned(),
            status: status.as_u16(),
            message: message.trim().to_owned(),
        })
    }

    /// One (blocking) health query: the passing instances and the index to wait on next.
    async fn health(
        &self,
        service: &str,
        index: u64,
    ) -> Result<(Vec<Instance>, u64), DiscoveryError> {
        let what = format!("the health of {service}");
        let mut builder = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/health/service/{service}"),
            )
            .query(&[("passing", "true")]);
        if index > 0 {
            builder = builder
                .query(&[
                    ("index", index.to_string()),
                    ("wait", format!("{}s", BLOCKING_WAIT.as_secs())),
                ])
                .timeout(BLOCKING_WAIT + BLOCKING_WAIT / 16 + CALL_TIMEOUT);
        } else {
            builder = builder.timeout(CALL_TIMEOUT);
        }
        let response = self.send(&what, builder).await?;
        let next_index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| DiscoveryError::Malformed {
                what: what.clone(),
                reason: "no X-Consul-Index header".into(),
            })?;
        let entries: Vec<HealthEntry> =
            response
                .json()
                .await
                .map_err(|error| DiscoveryError::Malformed {
                    what: what.clone(),
                    reason: error.to_string(),
                })?;
        let mut instances: Vec<Instance> = entries
            .into_iter()
            .filter_map(HealthEntry::into_instance)
            .collect();
        instances.sort();
        Ok((instances, next_index))
    }
}

impl Registry for ConsulRegistry {
    fn register<'a>(&'a self, registration: &'a Registration) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            let body = ServiceDefinition::from(registration);
            let builder = self
                .request(reqwest::Method::PUT, "/v1/agent/service/register")
                .json(&body)
                .timeout(CALL_TIMEOUT);
            self.send(&format!("registering {}", registration.id), builder)
                .await
                .map(|_| ())
        })
    }

    fn deregister<'a>(&'a self, id: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            let builder = self
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/agent/service/deregister/{id}"),
                )
                .timeout(CALL_TIMEOUT);
            match self.send(&format!("deregistering {id}"), builder).await {
                Ok(_) => Ok(()),
                // Already gone (reaped, or never registered): what deregistering wants.
                Err(DiscoveryError::Refused { status: 404, .. }) => Ok(()),
                Err(error) => Err(error),
            }
        })
    }

    fn watch(&self, service: &str) -> InstanceStream {
        let state = WatchState {
            registry: self.clone(),
            service: service.to_owned(),
            index: 0,
            last: None,
            failures: 0,
        };
        Box::pin(futures::stream::unfold(state, |mut state| async move {
            let instances = state.next_change().await;
            Some((instances, state))
        }))
    }
}

struct WatchState {
    registry: ConsulRegistry,
    service: String,
    index: u64,
    last: Option<Vec<Instance>>,
    failures: u32,
}

impl WatchState {
    /// Blocks until the set of passing instances differs from the last one yielded.
    async fn next_change(&mut self) -> Vec<Instance> {
        loop {
            match self.registry.health(&self.service, self.index).await {
                Ok((instances, index)) => {
                    self.failures = 0;
                    // Consul's rules: reset when the index goes backwards; never wait on 0.
                    self.index = if index < self.index { 0 } else { index.max(1) };
                    if self.last.as_ref() != Some(&instances) {
                        self.last = Some(instances.clone());
                        return instances;
                    }
                }
                Err(error) => {
                    self.failures = self.failures.saturating_add(1);
                    let wait = backoff(self.failures);
                    tracing::warn!(service = %self.service, %error, retry_in_ms = wait.as_millis() as u64, "watching the registry failed; keeping the last known instances");
                    self.index = 0;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// A Go-style duration, as Consul parses them ("10s", "500ms").
fn go_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// The body of `PUT /v1/agent/service/register`, in Consul's field names.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceDefinition<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    tags: &'a [String],
    address: String,
    port: u16,
    meta: &'a BTreeMap<String, String>,
    check: CheckDefinition,
}

#[derive(Debug, Serialize)]
struct CheckDefinition {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "GRPC")]
    grpc: String,
    #[serde(rename = "GRPCUseTLS")]
    grpc_use_tls: bool,
    #[serde(rename = "Interval")]
    interval: String,
    #[serde(rename = "Timeout")]
    timeout: String,
    #[serde(rename = "DeregisterCriticalServiceAfter")]
    deregister_critical_service_after: String,
}

impl<'a> From<&'a Registration> for ServiceDefinition<'a> {
    fn from(registration: &'a Registration) -> Self {
        let check = &registration.check;
        Self {
            id: &registration.id,
            name: &registration.name,
            tags: &registration.tags,
            address: registration.addr.ip().to_string(),
            port: registration.addr.port(),
            meta: &registration.meta,
            check: CheckDefinition {
                name: format!("{} gRPC health", registration.name),
                grpc: check.grpc.clone(),
                grpc_use_tls: false,
                interval: go_duration(check.interval),
                timeout: go_duration(check.timeout),
                deregister_critical_service_after: go_duration(check.deregister_critical_after),
            },
        }
    }
}

/// One entry of `GET /v1/health/service/{name}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: Option<HealthNode>,
    service: HealthService,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

impl HealthEntry {
    /// The instance, at the service's address or else its node's (Consul's rule); `None` when
    /// neither is an IP address.
    fn into_instance(self) -> Option<Instance> {
        let host = if self.service.address.is_empty() {
            self.node.map(|node| node.address).unwrap_or_default()
        } else {
            self.service.address
        };
        let addr: SocketAddr = format!("{host}:{}", self.service.port)
            .parse()
            .or_else(|_| format!("[{host}]:{}", self.service.port).parse())
            .ok()?;
        Some(Instance {
            id: self.service.id,
            addr,
            tags: self.service.tags.unwrap_or_default(),
            meta: self.service.meta.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_use_consuls_field_names_and_go_durations() -> Result<(), serde_json::Error> {
        let registration = Registration {
            id: "product-1".into(),
            name: "product".into(),
            addr: ([10, 0, 0, 7], 50053).into(),
            tags: vec!["grpc".into()],
            meta: BTreeMap::from([("version".to_owned(), "0.1.0".to_owned())]),
            check: super::super::HealthCheck {
                grpc: "10.0.0.7:50053".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_millis(500),
                deregister_critical_after: Duration::from_secs(60),
            },
        };
        let json = serde_json::to_value(ServiceDefinition::from(&registration))?;
        assert_eq!(json["ID"], "product-1");
        assert_eq!(json["Name"], "product");
        assert_eq!(json["Address"], "10.0.0.7");
        assert_eq!(json["Port"], 50053);
        assert_eq!(json["Meta"]["version"], "0.1.0");
        assert_eq!(json["Check"]["GRPC"], "10.0.0.7:50053");
        assert_eq!(json["Check"]["GRPCUseTLS"], false);
        assert_eq!(json["Check"]["Interval"], "10s");
        assert_eq!(json["Check"]["Timeout"], "500ms");
        assert_eq!(json["Check"]["DeregisterCriticalServiceAfter"], "60s");
        Ok(())
    }

    #[test]
    fn health_entries_fall_back_to_the_node_address() -> Result<(), serde_json::Error> {
        let entries: Vec<HealthEntry> = serde_json::from_str(
            r#"[{"Node":{"Node":"n1","Address":"10.0.0.9"},"Service":{"ID":"p-1","Service":"product","Tags":null,"Address":"","Port":50053,"Meta":null},"Checks":[]},
                {"Node":{"Address":"10.0.0.9"},"Service":{"ID":"p-2","Service":"product","Tags":["a"],"Address":"10.0.0.8","Port":50054,"Meta":{"k":"v"}},"Checks":[]}]"#,
        )?;
        let instances: Vec<Instance> = entries
            .into_iter()
            .filter_map(HealthEntry::into_instance)
            .collect();
        assert_eq!(instances[0].addr, SocketAddr::from(([10, 0, 0, 9], 50053)));
        assert_eq!(instances[1].addr, SocketAddr::from(([10, 0, 0, 8], 50054)));
        assert_eq!(instances[1].tags, vec!["a".to_owned()]);
        Ok(())
    }

    #[test]
    fn consul_addresses_accept_consuls_forms() -> Result<(), ConfigError> {
        let bare = ConsulConfig::from_settings(&Settings::from_pairs([(
            "CONSUL_HTTP_ADDR",
            "consul:8500",
        )]))?;
        assert_eq!(bare.address, "http://consul:8500");
        let url = ConsulConfig::from_settings(&Settings::from_pairs([(
            "CONSUL_HTTP_ADDR",
            "https://consul.example:8501/",
        )]))?;
        assert_eq!(url.address, "https://consul.example:8501");
        let default = ConsulConfig::from_settings(&Settings::from_pairs::<_, &str, &str>([]))?;
        assert_eq!(default.address, "http://127.0.0.1:8500");
        assert!(default.token.is_none());
        Ok(())
    }
}
