//! The etcd backend, on etcd's v3 gRPC API (`KV`, `Lease` and `Watch`, compiled in `flotilla-proto`
//! from a trimmed copy of etcd's protos; the `etcd-client` crate would need `protoc`).
//!
//! # Layout
//!
//! As go-zero and Kratos keep services in etcd: one key per instance under its service's prefix,
//! attached to a lease of its own, whose value is a JSON document (see [`InstanceValue`]):
//!
//! ```text
//! /flotilla/services/<name>/<id>
//!   {"id":"product-1","name":"product","address":"10.0.0.7","port":50053,
//!    "tags":["grpc"],"meta":{"version":"0.1.0"}}
//! ```
//!
//! # Health is liveness
//!
//! etcd runs no checks: an instance is listed while its process keeps its lease alive. The lease's
//! time-to-live is the check's interval plus its timeout, so a crashed instance leaves in the same
//! time as with Consul's gRPC check (etcd counts whole seconds, raises a TTL below its minimum —
//! 2 s with its default timing — and sweeps expired leases every 500 ms). An instance that hangs
//! while its runtime still renews the lease stays listed; callers' own failure handling covers it.
//!
//! # What each call does
//!
//! - **register** grants the lease, hands it to a keeper task, then puts the key. The keeper
//!   (`etcd/keeper.rs`) renews the lease every third of its TTL against its deadline: a member that
//!   does not answer a renewal within a sixth of the TTL is left for the next at once, so one
//!   silent member cannot let the leases run out. When the lease is lost anyway (etcd answers a TTL
//!   of 0), the keeper grants a new one and puts the key again.
//! - **re-registering** an id stops its keeper and revokes its lease (deleting the old key, under
//!   whichever service) *before* putting the new key: a put of the old keeper still on its way then
//!   fails, where it would otherwise bind the key to a lease nobody renews, and the instance would
//!   vanish a TTL later. Watchers may see the instance leave and come back within milliseconds.
//! - **deregister** stops the keeper and revokes the lease it held last — recorded from the grant
//!   on, before the put — which deletes the key and fails any put of it still on its way; the key is
//!   deleted directly only when revoking fails. An id this registry did not register is looked up
//!   under every service and its key deleted, as Consul removes an instance whoever registered it.
//! - **watch** (`etcd/watch.rs`) lists the prefix (`Range`, which also gives the revision) and
//!   watches it from the next revision, applying each event to the set and yielding the set when it
//!   changed. A compacted revision lists again at once; a broken stream moves to the next member;
//!   other failures back off (up to [`WATCH_MAX_BACKOFF`]) while the last set is kept. Values that
//!   do not parse are skipped with a warning.
//!
//! Failed calls are retried with exponential back-off and full jitter (the `backoff` module).
//!
//! # Endpoints
//!
//! Each endpoint gets one lazy channel (`etcd/client.rs`). A call that finds its endpoint
//! unreachable tries the next, and the one that answered is tried first from then on; a member
//! that fails a stream loses that preference at once. Streams ask for a leader (`hasleader`, as
//! etcd's `clientv3.WithRequireLeader` does), so a member cut off from its cluster's leader ends
//! them with an error instead of keeping them open and silent. tonic's `balance_channel` is not
//! used because it keeps picking endpoints that went away (tonic issues #643, #2182).
//!
//! # Ownership
//!
//! The keepers belong to the [`EtcdRegistry`]: when its last clone is dropped they stop, and etcd
//! lets the leases run out, as it would after a crash. TLS and etcd's user authentication are not
//! supported yet.

mod client;
mod keeper;
mod watch;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::etcd::etcdserverpb::RangeRequest;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use self::client::Client;
use self::keeper::{Keeper, Keepers, Registered};
use self::watch::WatchState;
use super::{
    DiscoveryError, HealthCheck, Instance, InstanceStream, Registration, Registry, RegistryFuture,
};
use crate::config::{ConfigError, Settings};

/// The variable naming etcd's client endpoints.
pub const ENDPOINTS_VAR: &str = "FLOTILLA_ETCD_ENDPOINTS";
/// The endpoint used when [`ENDPOINTS_VAR`] is not set (etcd's own default).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
/// Where instances are kept: `<KEY_PREFIX><name>/<id>`.
pub const KEY_PREFIX: &str = "/flotilla/services/";
/// The longest wait between a watch's attempts while etcd cannot be reached: lower than the
/// other backends' minute, since a watch that follows etcd again late keeps callers on a stale
/// set, and an etcd client's list and watch are cheap for etcd.
pub const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where etcd is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of etcd members, `http://host:port`, tried in order
    /// (`FLOTILLA_ETCD_ENDPOINTS`, comma-separated; default `http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
}

impl EtcdConfig {
    /// Reads `FLOTILLA_ETCD_ENDPOINTS`: comma-separated `http://host:port` URLs or bare `host:port`
    /// (which means `http://`), as etcdctl's `--endpoints` takes them.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an empty value or entry, a scheme other than `http`, a missing
    /// port, or a path, query or user name in a URL.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let raw = settings.string(ENDPOINTS_VAR, DEFAULT_ENDPOINT)?;
        let endpoints = raw
            .split(',')
            .map(|entry| endpoint_url(entry.trim()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ConfigError::Invalid {
                name: ENDPOINTS_VAR.to_owned(),
                value: raw.clone(),
                origin: settings.origin(ENDPOINTS_VAR),
                expected:
                    "comma-separated etcd client URLs http://host:port or host:port, such as \
                           http://10.0.0.5:2379,10.0.0.6:2379 (TLS is not supported yet)"
                        .to_owned(),
            })?;
        Ok(Self { endpoints })
    }
}

/// `http://host:port` for one entry, or `None` when it is not one.
fn endpoint_url(entry: &str) -> Option<String> {
    let url = if entry.contains("://") {
        entry.to_owned()
    } else {
        format!("http://{entry}")
    };
    let uri: http::Uri = url.parse().ok()?;
    let authority = uri.authority()?;
    let plain = uri.scheme_str() == Some("http")
        && !authority.host().is_empty()
        && authority.port_u16().is_some()
        && !authority.as_str().contains('@')
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    plain.then(|| format!("http://{authority}"))
}

/// The JSON document stored as an instance's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceValue {
    /// The instance's id, also the last segment of its key.
    pub id: String,
    /// The service's name, also the segment before it.
    pub name: String,
    /// The IP address to call.
    pub address: String,
    /// The port to call.
    pub port: u16,
    /// Tags (absent means none).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata (absent means none).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

impl From<&Registration> for InstanceValue {
    fn from(registration: &Registration) -> Self {
        Self {
            id: registration.id.clone(),
            name: registration.name.clone(),
            address: registration.addr.ip().to_string(),
            port: registration.addr.port(),
            tags: registration.tags.clone(),
            meta: registration.meta.clone(),
        }
    }
}

impl InstanceValue {
    /// The instance this value describes; `None` when the address is not an IP address.
    pub fn into_instance(self) -> Option<Instance> {
        let ip: IpAddr = self.address.parse().ok()?;
        Some(Instance {
            id: self.id,
            addr: SocketAddr::new(ip, self.port),
            tags: self.tags,
            meta: self.meta,
        })
    }
}

/// The key of instance `id` of service `name`.
pub fn instance_key(name: &str, id: &str) -> String {
    format!("{KEY_PREFIX}{name}/{id}")
}

/// The prefix under which `service`'s instances are kept (with its trailing `/`, so `product` does
/// not also match `product-admin`).
fn service_prefix(service: &str) -> Vec<u8> {
    format!("{KEY_PREFIX}{service}/").into_bytes()
}

/// The end of the range of keys starting with `prefix`, as etcd expects it: the prefix with its last
/// byte below 0xff increased (etcd's `clientv3.GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: "all keys from the prefix on".
    vec![0]
}

/// The lease's time-to-live in whole seconds: the check's interval plus its timeout, rounded up.
fn lease_ttl(check: &HealthCheck) -> i64 {
    let seconds = check
        .interval
        .saturating_add(check.timeout)
        .as_secs_f64()
        .ceil();
    // A float in [1, i64::MAX] converts exactly enough; `as` saturates beyond.
    seconds.max(1.0) as i64
}

/// etcd's v3 API as a [`Registry`]. Clones share the channels and the registrations' keepers,
/// which stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    client: Client,
    keepers: Arc<Keepers>,
}

impl EtcdRegistry {
    /// A client of the etcd members `config` names. Nothing is contacted until the first call.
    ///
    /// # Errors
    /// [`DiscoveryError::Unreachable`] when `config` names no endpoint or an endpoint is not a URL.
    pub fn new(config: EtcdConfig) -> Result<Self, DiscoveryError> {
        Ok(Self {
            client: Client::new(&config.endpoints)?,
            keepers: Arc::new(Keepers::new()),
        })
    }

    /// Stops `keeper` and removes its key: revoking the lease it held last deletes the key and
    /// fails any put of it still on its way. Only when that fails is the key deleted directly (the
    /// lease then runs out on its own).
    async fn retire(&self, keeper: Keeper, what: &str) -> Result<(), DiscoveryError> {
        let key = keeper.key.clone();
        if let Some(lease) = keeper.stop().await {
            match self.client.revoke(lease).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(%key, lease = lease.id, %error, "could not revoke the lease; deleting the key instead");
                }
            }
        }
        self.client.delete(what, key.into_bytes()).await
    }

    /// Deletes the keys of instance `id` under any service (it was registered by another client).
    async fn delete_foreign(&self, id: &str) -> Result<(), DiscoveryError> {
        let prefix = KEY_PREFIX.as_bytes().to_vec();
        let request = RangeRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            keys_only: true,
            ..RangeRequest::default()
        };
        let listed = self
            .client
            .range(&format!("looking up {id}"), request)
            .await?;
        for kv in listed.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let owned = key
                .strip_prefix(KEY_PREFIX)
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(_, instance)| instance == id);
            if owned {
                self.client
                    .delete(&format!("deregistering {id}"), kv.key)
                    .await?;
            }
        }
        Ok(())
    }
}

impl Registry for EtcdRegistry {
    fn register<'a>(&'a self, registration: &'a Registration) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            let what = format!("registering {}", registration.id);
            for (part, value) in [("name", &registration.name), ("id", &registration.id)] {
                if value.is_empty() || value.contains('/') {
                    return Err(DiscoveryError::Refused {
                        what,
                        status: 400,
                        message: format!(
                            "an instance's {part} must be non-empty and without '/' (it is a key segment): {value:?}"
                        ),
                    });
                }
            }
            let key = instance_key(&registration.name, &registration.id);
            let value =
                serde_json::to_vec(&InstanceValue::from(registration)).map_err(|error| {
                    DiscoveryError::Malformed {
                        what: what.clone(),
                        reason: error.to_string(),
                    }
                })?;
            let ttl = lease_ttl(&registration.check);

            // One registration change at a time, so a re-registration's revoke cannot race another.
            let mut running = self.keepers.running.lock().await;
            if let Some(previous) = running.remove(&registration.id) {
                // Before the new key is put (see the module's documentation).
                if let Err(error) = self.retire(previous, &what).await {
                    tracing::warn!(id = %registration.id, %error, "could not remove the replaced registration; it runs out with its lease");
                }
            }
            let granted_at = Instant::now();
            let lease = self.client.grant(&what, ttl).await?;
            // Listed before the put: if this future is dropped during the put (a caller's
            // timeout), deregistering still finds the lease and revokes it.
            let keeper = Keeper::spawn(
                &self.keepers,
                self.client.clone(),
                Registered {
                    what: what.clone(),
                    key: key.clone(),
                    value: value.clone(),
                    ttl,
                },
                lease,
                granted_at,
            );
            running.insert(registration.id.clone(), keeper);
            if let Err(error) = self.client.put(&what, &key, &value, lease).await {
                if let Some(keeper) = running.remove(&registration.id) {
                    // Best effort: what is left runs out with its lease.
                    let _ = self.retire(keeper, &what).await;
                }
                return Err(error);
            }
            Ok(())
        })
    }

    fn deregister<'a>(&'a self, id: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            let mut running = self.keepers.running.lock().await;
            let Some(keeper) = running.remove(id) else {
                drop(running);
                return self.delete_foreign(id).await;
            };
            self.retire(keeper, &format!("deregistering {id}")).await
        })
    }

    fn watch(&self, service: &str) -> InstanceStream {
        let state = WatchState::new(self.client.clone(), service);
        Box::pin(futures::stream::unfold(state, |mut state| async move {
            let instances = state.next_change().await;
            Some((instances, state))
        }))
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::etcd::mvccpb;

    use super::watch::decode;
    use super::*;

    fn registration() -> Registration {
        Registration {
            id: "product-1".into(),
            name: "product".into(),
            addr: ([10, 0, 0, 7], 50053).into(),
            tags: vec!["grpc".into()],
            meta: BTreeMap::from([("version".to_owned(), "0.1.0".to_owned())]),
            check: HealthCheck {
                grpc: "10.0.0.7:50053".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_millis(500),
                deregister_critical_after: Duration::from_secs(60),
            },
        }
    }

    fn kv(key: &str, value: &[u8]) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..mvccpb::KeyValue::default()
        }
    }

    #[test]
    fn values_are_documented_json_and_decode_back() -> Result<(), serde_json::Error> {
        let registration = registration();
        let json = serde_json::to_value(InstanceValue::from(&registration))?;
        assert_eq!(
            json,
            serde_json::json!({
                "id": "product-1",
                "name": "product",
                "address": "10.0.0.7",
                "port": 50053,
                "tags": ["grpc"],
                "meta": {"version": "0.1.0"},
            })
        );
        let bytes = serde_json::to_vec(&json)?;
        let instance = decode(
            "product",
            &kv("/flotilla/services/product/product-1", &bytes),
        );
        assert_eq!(
            instance,
            Some(Instance {
                id: registration.id,
                addr: registration.addr,
                tags: registration.tags,
                meta: registration.meta,
            })
        );
        Ok(())
    }

    #[test]
    fn values_without_tags_or_meta_and_ipv6_addresses_decode() {
        let instance = decode(
            "product",
            &kv(
                "/flotilla/services/product/p-6",
                br#"{"id":"p-6","name":"product","address":"::1","port":7}"#,
            ),
        );
        assert_eq!(
            instance,
            Some(Instance {
                id: "p-6".into(),
                addr: SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 7)),
                tags: Vec::new(),
                meta: BTreeMap::new(),
            })
        );
    }

    #[test]
    fn values_that_do_not_parse_are_skipped() {
        for value in [
            &b"not json"[..],
            br#"{"id":"p","name":"product","address":"db.internal","port":1}"#,
            br#"{"id":"p","name":"product","address":"10.0.0.1","port":70000}"#,
            br#"{"id":"p","name":"product","port":1}"#,
        ] {
            assert_eq!(
                decode("product", &kv("/flotilla/services/product/p", value)),
                None,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn keys_and_prefixes_follow_the_layout() {
        assert_eq!(
            instance_key("product", "product-1"),
            "/flotilla/services/product/product-1"
        );
        assert_eq!(service_prefix("product"), b"/flotilla/services/product/");
        // '/' + 1 is '0': the range holds product/… and not product-admin/….
        assert_eq!(
            prefix_end(&service_prefix("product")),
            b"/flotilla/services/product0"
        );
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn the_lease_lasts_the_checks_interval_plus_timeout_in_whole_seconds() {
        let mut check = registration().check;
        assert_eq!(lease_ttl(&check), 11);
        check.interval = Duration::from_millis(200);
        check.timeout = Duration::from_millis(100);
        assert_eq!(lease_ttl(&check), 1);
        check.interval = Duration::from_secs(2);
        check.timeout = Duration::from_secs(1);
        assert_eq!(lease_ttl(&check), 3);
        check.interval = Duration::MAX;
        assert_eq!(
            lease_ttl(&check),
            i64::MAX,
            "saturates instead of overflowing"
        );
    }

    fn endpoints(value: &str) -> Result<Vec<String>, ConfigError> {
        EtcdConfig::from_settings(&Settings::from_pairs([(ENDPOINTS_VAR, value)]))
            .map(|config| config.endpoints)
    }

    #[test]
    fn endpoints_accept_urls_and_bare_host_ports() -> Result<(), ConfigError> {
        assert_eq!(
            endpoints("http://10.0.0.5:2379, etcd-2:2379,http://[::1]:2379/")?,
            [
                "http://10.0.0.5:2379",
                "http://etcd-2:2379",
                "http://[::1]:2379"
            ]
        );
        let default = EtcdConfig::from_settings(&Settings::from_pairs::<_, &str, &str>([]))?;
        assert_eq!(default.endpoints, [DEFAULT_ENDPOINT]);
        Ok(())
    }

    #[test]
    fn bad_endpoints_name_the_variable_and_the_expected_form() {
        for bad in [
            "",
            "https://etcd:2379",
            "etcd",
            "http://etcd",
            "http://etcd:2379/v3",
            "http://user@etcd:2379",
            "etcd:2379,",
            "etcd:port",
        ] {
            match endpoints(bad) {
                Err(ConfigError::Invalid { name, expected, .. }) => {
                    assert_eq!(name, ENDPOINTS_VAR, "{bad:?}");
                    assert!(
                        expected.contains("host:port") || expected.contains("non-empty"),
                        "{bad:?}: {expected}"
                    );
                }
                other => panic!("{bad:?} was accepted: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn registrations_whose_name_or_id_would_break_the_layout_are_refused() {
        let registry = EtcdRegistry::new(EtcdConfig {
            endpoints: vec!["http://127.0.0.1:1".into()],
        });
        let Ok(registry) = registry else {
            panic!("a registry of a well-formed endpoint");
        };
        let mut registration = registration();
        registration.id = "a/b".into();
        let refused = registry.register(&registration).await;
        assert!(
            matches!(refused, Err(DiscoveryError::Refused { status: 400, .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn no_endpoint_is_an_error() {
        assert!(EtcdRegistry::new(EtcdConfig { endpoints: vec![] }).is_err());
    }
}
