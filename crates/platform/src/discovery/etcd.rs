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
//! - **register** grants the lease, puts the key, and keeps the lease alive from a background task
//!   (a `LeaseKeepAlive` stream, one renewal every third of the TTL). When the lease is lost (etcd
//!   answers a TTL of 0: it expired during a gap longer than the TTL, or etcd lost its data) the
//!   task grants a new one and puts the key again. Re-registering an id replaces the key, then
//!   revokes the old lease.
//! - **deregister** stops the task, deletes the key and revokes the lease. An id this registry did
//!   not register is looked up under every service and its key deleted, as Consul removes an
//!   instance whoever registered it.
//! - **watch** lists the prefix (`Range`, which also gives the revision) and watches it from the next
//!   revision, applying each event to the set and yielding the set when it changed. A compacted
//!   revision, a cancelled watch or a broken stream starts over with a new list. Values that do not
//!   parse are skipped with a warning.
//!
//! Failed calls are retried with exponential back-off and full jitter (the `backoff` module); a
//! watch keeps its last set while etcd cannot be reached, and lease renewals retry at least every
//! third of the TTL so a lease that survived an etcd restart is renewed before it runs out.
//!
//! # Endpoints and ownership
//!
//! Each endpoint gets one lazy channel (HTTP/2 pings every 10 s find dead connections under a
//! watch). A call that finds its endpoint unreachable tries the next, and the one that answered is
//! tried first from then on; tonic's `balance_channel` is not used because it keeps picking
//! endpoints that went away (tonic issues #643, #2182).
//!
//! The keep-alive tasks belong to the [`EtcdRegistry`]: when its last clone is dropped they stop, and
//! etcd lets the leases run out, as it would after a crash. TLS and etcd's user authentication are
//! not supported yet.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flotilla_proto::etcd::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    lease_client::LeaseClient, watch_client::WatchClient, watch_request::RequestUnion,
};
use flotilla_proto::etcd::mvccpb::{self, event::EventType};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use super::backoff::{MAX_BACKOFF, MIN_BACKOFF, backoff, backoff_up_to};
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

/// How long one unary call (or opening a stream) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings while a stream is open, so a watch on a silently dead connection ends. etcd refuses
/// pings more often than every 5 s (`--grpc-keepalive-min-time`).
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A watch stream that lived this long was healthy: its end starts the back-off afresh.
const HEALTHY_STREAM: Duration = Duration::from_secs(60);

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
    let seconds = (check.interval + check.timeout).as_secs_f64().ceil();
    // A float in [1, i64::MAX] converts exactly enough; `as` saturates beyond.
    seconds.max(1.0) as i64
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    id: i64,
    /// The time-to-live etcd chose, in seconds.
    ttl: i64,
}

impl Lease {
    fn time_to_live(self) -> Duration {
        Duration::from_secs(u64::try_from(self.ttl).unwrap_or(1).max(1))
    }

    /// How often a renewal is sent: three chances before the lease runs out.
    fn renew_every(self) -> Duration {
        self.time_to_live() / 3
    }

    /// The longest wait between retries: renewals must land within the TTL.
    fn retry_ceiling(self) -> Duration {
        self.renew_every().clamp(MIN_BACKOFF, MAX_BACKOFF)
    }
}

/// etcd's v3 API as a [`Registry`]. Clones share the channels and the registrations' keep-alive
/// tasks, which stop when the last clone is dropped.
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
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|error| DiscoveryError::Unreachable {
                        endpoint: url.clone(),
                        reason: error.to_string(),
                    })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(PING_INTERVAL)
                    .keep_alive_timeout(PING_TIMEOUT)
                    // etcd closes connections that ping without an open stream.
                    .keep_alive_while_idle(false)
                    .tcp_nodelay(true);
                Ok(Member {
                    url: url.clone(),
                    endpoint,
                    channel: OnceLock::new(),
                })
            })
            .collect::<Result<Vec<_>, DiscoveryError>>()?;
        if endpoints.is_empty() {
            return Err(DiscoveryError::Unreachable {
                endpoint: "(none)".into(),
                reason: "no etcd endpoint is configured".into(),
            });
        }
        Ok(Self {
            client: Client {
                members: endpoints.into(),
                preferred: Arc::new(AtomicUsize::new(0)),
            },
            keepers: Arc::new(Keepers {
                root: CancellationToken::new(),
                running: tokio::sync::Mutex::new(HashMap::new()),
            }),
        })
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
            let lease = self.client.grant_and_put(&what, &key, &value, ttl).await?;
            let stop = self.keepers.root.child_token();
            let task = tokio::spawn(keep(
                self.client.clone(),
                Registered {
                    what,
                    key: key.clone(),
                    value,
                    ttl,
                },
                lease,
                stop.clone(),
            ));
            let previous = running.insert(
                registration.id.clone(),
                Keeper {
                    key: key.clone(),
                    stop,
                    task,
                },
            );
            if let Some(previous) = previous {
                // The new key is in place. What is left of the old registration holds no key of
                // this instance any more (or, if it moved to another service, is no longer renewed)
                // and runs out within its TTL, so a failure to clean it up is only worth a warning.
                let previous_key = previous.key.clone();
                let previous_lease = previous.stop().await;
                if previous_key != key
                    && let Err(error) = self
                        .client
                        .delete(
                            &format!("moving {} to another service", registration.id),
                            previous_key.into_bytes(),
                        )
                        .await
                {
                    tracing::warn!(id = %registration.id, %error, "could not delete the instance's key under its former service");
                }
                if let Some(old) = previous_lease
                    && let Err(error) = self.client.revoke(old).await
                {
                    tracing::warn!(id = %registration.id, %error, "could not revoke the replaced registration's lease");
                }
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
            let key = keeper.key.clone();
            let lease = keeper.stop().await;
            self.client
                .delete(&format!("deregistering {id}"), key.into_bytes())
                .await?;
            if let Some(lease) = lease {
                self.client.revoke(lease).await?;
            }
            Ok(())
        })
    }

    fn watch(&self, service: &str) -> InstanceStream {
        let state = WatchState {
            client: self.client.clone(),
            service: service.to_owned(),
            prefix: service_prefix(service),
            instances: BTreeMap::new(),
            last: None,
            stream: None,
            failures: 0,
        };
        Box::pin(futures::stream::unfold(state, |mut state| async move {
            let instances = state.next_change().await;
            Some((instances, state))
        }))
    }
}

/// The keep-alive tasks of one registry (and its clones); dropping it stops them all.
#[derive(Debug)]
struct Keepers {
    root: CancellationToken,
    running: tokio::sync::Mutex<HashMap<String, Keeper>>,
}

impl Drop for Keepers {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// The task keeping one registration alive.
#[derive(Debug)]
struct Keeper {
    key: String,
    stop: CancellationToken,
    /// Ends with the lease it held when stopped.
    task: JoinHandle<Lease>,
}

impl Keeper {
    /// Stops the task and returns its lease (`None` if the task died, which only a panic does).
    async fn stop(self) -> Option<Lease> {
        self.stop.cancel();
        self.task.await.ok()
    }
}

/// What a keep-alive task puts again when its lease is lost.
#[derive(Debug)]
struct Registered {
    what: String,
    key: String,
    value: Vec<u8>,
    ttl: i64,
}

/// Keeps `lease` alive until `stop`, registering again whenever it is lost; returns the lease held
/// at the end.
async fn keep(
    client: Client,
    registered: Registered,
    lease: Lease,
    stop: CancellationToken,
) -> Lease {
    let mut lease = lease;
    let _: Option<Infallible> = stop
        .run_until_cancelled(keep_forever(&client, &registered, &mut lease))
        .await;
    lease
}

async fn keep_forever(client: &Client, registered: &Registered, lease: &mut Lease) -> Infallible {
    let mut failures = 0_u32;
    loop {
        match client.keep_alive(*lease, &mut failures).await {
            KeepAliveEnd::Lost => {
                tracing::warn!(key = %registered.key, lease = lease.id, "the lease ran out; registering again");
                loop {
                    match client
                        .grant_and_put(
                            &registered.what,
                            &registered.key,
                            &registered.value,
                            registered.ttl,
                        )
                        .await
                    {
                        Ok(granted) => {
                            *lease = granted;
                            failures = 0;
                            break;
                        }
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            let wait = backoff_up_to(failures, lease.retry_ceiling());
                            tracing::warn!(key = %registered.key, %error, retry_in_ms = wait.as_millis() as u64, "registering again failed");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
            KeepAliveEnd::Broken(reason) => {
                failures = failures.saturating_add(1);
                let wait = backoff_up_to(failures, lease.retry_ceiling());
                tracing::warn!(key = %registered.key, lease = lease.id, %reason, retry_in_ms = wait.as_millis() as u64, "keeping the lease alive failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Why a keep-alive stream ended.
#[derive(Debug)]
enum KeepAliveEnd {
    /// etcd no longer knows the lease: its key is gone.
    Lost,
    /// The stream could not be opened or broke; the lease may still be alive.
    Broken(String),
}

/// The channels to etcd's members, and which one answered last.
#[derive(Debug, Clone)]
struct Client {
    members: Arc<[Member]>,
    preferred: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Member {
    url: String,
    endpoint: Endpoint,
    /// Made on first use, inside the runtime (tonic spawns the channel's worker).
    channel: OnceLock<Channel>,
}

impl Member {
    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }
}

impl Client {
    /// Runs `call` on the preferred member, and on the next ones while a member is unreachable.
    async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, DiscoveryError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let count = self.members.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut unreachable = None;
        for offset in 0..count {
            let index = (first + offset) % count;
            let member = &self.members[index];
            let status = match tokio::time::timeout(CALL_TIMEOUT, call(member.channel())).await {
                Ok(Ok(answer)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer within {}s",
                    CALL_TIMEOUT.as_secs()
                )),
            };
            if !is_unreachable(&status) {
                return Err(refused(what, &status));
            }
            if count > 1 {
                tracing::debug!(endpoint = %member.url, %what, error = %status.message(), "etcd member unreachable; trying the next");
            }
            unreachable = Some(DiscoveryError::Unreachable {
                endpoint: member.url.clone(),
                reason: format!("{what}: {}", status.message()),
            });
        }
        Err(unreachable.unwrap_or_else(|| DiscoveryError::Unreachable {
            endpoint: "(none)".into(),
            reason: "no etcd endpoint is configured".into(),
        }))
    }

    async fn range(
        &self,
        what: &str,
        request: RangeRequest,
    ) -> Result<flotilla_proto::etcd::etcdserverpb::RangeResponse, DiscoveryError> {
        self.call(what, |channel| {
            let request = request.clone();
            async move { Ok(KvClient::new(channel).range(request).await?.into_inner()) }
        })
        .await
    }

    async fn delete(&self, what: &str, key: Vec<u8>) -> Result<(), DiscoveryError> {
        self.call(what, |channel| {
            let request = DeleteRangeRequest {
                key: key.clone(),
                ..DeleteRangeRequest::default()
            };
            async move {
                KvClient::new(channel).delete_range(request).await?;
                Ok(())
            }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds and puts `key` with it; revokes the lease if the put fails.
    async fn grant_and_put(
        &self,
        what: &str,
        key: &str,
        value: &[u8],
        ttl: i64,
    ) -> Result<Lease, DiscoveryError> {
        let granted = self
            .call(what, |channel| async move {
                Ok(LeaseClient::new(channel)
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await?
                    .into_inner())
            })
            .await?;
        if !granted.error.is_empty() {
            return Err(DiscoveryError::Refused {
                what: what.to_owned(),
                status: 500,
                message: granted.error,
            });
        }
        let lease = Lease {
            id: granted.id,
            ttl: granted.ttl,
        };
        let put = self
            .call(what, |channel| {
                let request = PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.to_vec(),
                    lease: lease.id,
                    ..PutRequest::default()
                };
                async move {
                    KvClient::new(channel).put(request).await?;
                    Ok(())
                }
            })
            .await;
        if let Err(error) = put {
            // Best effort: an orphaned lease holds no key and runs out by itself.
            let _ = self.revoke(lease).await;
            return Err(error);
        }
        Ok(lease)
    }

    /// Revokes `lease`; one etcd no longer knows is already gone.
    async fn revoke(&self, lease: Lease) -> Result<(), DiscoveryError> {
        let revoked = self
            .call("revoking a lease", |channel| async move {
                LeaseClient::new(channel)
                    .lease_revoke(LeaseRevokeRequest { id: lease.id })
                    .await?;
                Ok(())
            })
            .await;
        match revoked {
            Err(DiscoveryError::Refused { status: 404, .. }) => Ok(()),
            other => other,
        }
    }

    /// Renews `lease` every third of its TTL until etcd says it is gone or the stream breaks.
    /// `failures` is reset by every renewal.
    async fn keep_alive(&self, lease: Lease, failures: &mut u32) -> KeepAliveEnd {
        let request = LeaseKeepAliveRequest { id: lease.id };
        let opened = self
            .call("keeping a lease alive", |channel| async move {
                let (sender, receiver) = mpsc::channel(1);
                // Sent before the call: etcd sends the response headers with its first answer.
                sender
                    .send(request)
                    .await
                    .map_err(|_| Status::internal("the keep-alive queue closed"))?;
                let answers = LeaseClient::new(channel)
                    .lease_keep_alive(ReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                Ok((sender, answers))
            })
            .await;
        let (sender, mut answers) = match opened {
            Ok(opened) => opened,
            Err(error) => return KeepAliveEnd::Broken(error.to_string()),
        };
        let patience = CALL_TIMEOUT.min(lease.time_to_live());
        loop {
            match tokio::time::timeout(patience, answers.message()).await {
                Err(_) => {
                    return KeepAliveEnd::Broken(format!(
                        "no answer to a renewal within {patience:?}"
                    ));
                }
                Ok(Err(status)) => return KeepAliveEnd::Broken(status.to_string()),
                Ok(Ok(None)) => return KeepAliveEnd::Broken("etcd ended the stream".into()),
                Ok(Ok(Some(answer))) if answer.ttl <= 0 => return KeepAliveEnd::Lost,
                Ok(Ok(Some(_))) => *failures = 0,
            }
            tokio::time::sleep(lease.renew_every()).await;
            if sender.send(request).await.is_err() {
                return KeepAliveEnd::Broken("the stream closed".into());
            }
        }
    }

    /// Opens a watch of `prefix` from `revision` and waits for etcd to confirm it.
    async fn open_watch(
        &self,
        service: &str,
        prefix: &[u8],
        revision: i64,
    ) -> Result<WatchStream, DiscoveryError> {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision: revision,
                ..WatchCreateRequest::default()
            })),
        };
        let what = format!("watching {service}");
        let (sender, events, created) = self
            .call(&what, |channel| {
                let create = create.clone();
                async move {
                    let (sender, receiver) = mpsc::channel(1);
                    sender
                        .send(create)
                        .await
                        .map_err(|_| Status::internal("the watch queue closed"))?;
                    let mut events = WatchClient::new(channel)
                        .watch(ReceiverStream::new(receiver))
                        .await?
                        .into_inner();
                    let created = events
                        .message()
                        .await?
                        .ok_or_else(|| Status::unavailable("etcd ended the watch stream"))?;
                    Ok((sender, events, created))
                }
            })
            .await?;
        if !created.created || created.canceled {
            return Err(DiscoveryError::Malformed {
                what,
                reason: format!(
                    "the watch was not created (compacted at {}: {})",
                    created.compact_revision, created.cancel_reason
                ),
            });
        }
        Ok(WatchStream {
            _sender: sender,
            events,
            opened_at: tokio::time::Instant::now(),
        })
    }
}

/// Whether `status` means "this member cannot serve now" (try another, or later) rather than a
/// refusal.
fn is_unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// A refusal, with the HTTP status Google's API design maps the gRPC code to (`google/rpc/code.proto`),
/// since [`DiscoveryError::Refused`] carries an HTTP status.
fn refused(what: &str, status: &Status) -> DiscoveryError {
    let http = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => 500,
    };
    DiscoveryError::Refused {
        what: what.to_owned(),
        status: http,
        message: format!("gRPC {:?}: {}", status.code(), status.message()),
    }
}

/// An open watch stream. The request half is kept open for as long as the watch is read.
struct WatchStream {
    _sender: mpsc::Sender<WatchRequest>,
    events: Streaming<WatchResponse>,
    opened_at: tokio::time::Instant,
}

struct WatchState {
    client: Client,
    service: String,
    prefix: Vec<u8>,
    /// The current instances by key.
    instances: BTreeMap<Vec<u8>, Instance>,
    last: Option<Vec<Instance>>,
    stream: Option<WatchStream>,
    failures: u32,
}

impl WatchState {
    /// Blocks until the set of instances differs from the last one yielded.
    async fn next_change(&mut self) -> Vec<Instance> {
        loop {
            let outcome = match self.stream.as_mut() {
                None => self.resync().await,
                Some(stream) => match stream.events.message().await {
                    Ok(Some(answer)) => self.apply(answer),
                    Ok(None) => Err("etcd ended the watch stream".to_owned()),
                    Err(status) => Err(status.to_string()),
                },
            };
            match outcome {
                Ok(()) => {
                    let current: Vec<Instance> = self.instances.values().cloned().collect();
                    if self.last.as_ref() != Some(&current) {
                        self.last = Some(current.clone());
                        return current;
                    }
                }
                Err(reason) => {
                    let healthy = self
                        .stream
                        .take()
                        .is_some_and(|stream| stream.opened_at.elapsed() >= HEALTHY_STREAM);
                    self.failures = if healthy {
                        1
                    } else {
                        self.failures.saturating_add(1)
                    };
                    let wait = backoff(self.failures);
                    tracing::warn!(service = %self.service, %reason, retry_in_ms = wait.as_millis() as u64, "watching etcd failed; keeping the last known instances");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Lists the prefix and watches it from the next revision.
    async fn resync(&mut self) -> Result<(), String> {
        let listed = self
            .client
            .range(
                &format!("listing {}", self.service),
                RangeRequest {
                    key: self.prefix.clone(),
                    range_end: prefix_end(&self.prefix),
                    ..RangeRequest::default()
                },
            )
            .await
            .map_err(|error| error.to_string())?;
        let revision = listed
            .header
            .map(|header| header.revision)
            .ok_or("etcd's answer to a Range had no header")?;
        let stream = self
            .client
            .open_watch(&self.service, &self.prefix, revision + 1)
            .await
            .map_err(|error| error.to_string())?;
        self.instances = listed
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let instance = decode(&self.service, &kv)?;
                Some((kv.key, instance))
            })
            .collect();
        self.stream = Some(stream);
        Ok(())
    }

    /// Applies one watch answer; an error for a cancelled watch (compaction included).
    fn apply(&mut self, answer: WatchResponse) -> Result<(), String> {
        if answer.canceled || answer.compact_revision != 0 {
            return Err(format!(
                "etcd cancelled the watch (compacted at {}): {}",
                answer.compact_revision, answer.cancel_reason
            ));
        }
        if !answer.events.is_empty() {
            self.failures = 0;
        }
        for event in answer.events {
            let Some(kv) = event.kv else { continue };
            match EventType::try_from(event.r#type) {
                Ok(EventType::Put) => match decode(&self.service, &kv) {
                    Some(instance) => {
                        self.instances.insert(kv.key, instance);
                    }
                    None => {
                        self.instances.remove(&kv.key);
                    }
                },
                Ok(EventType::Delete) => {
                    self.instances.remove(&kv.key);
                }
                Err(_) => {
                    tracing::warn!(service = %self.service, r#type = event.r#type, "unknown etcd event type; ignored");
                }
            }
        }
        Ok(())
    }
}

/// The instance a key-value describes, or `None` (with a warning) when its value does not parse.
fn decode(service: &str, kv: &mvccpb::KeyValue) -> Option<Instance> {
    let parsed = serde_json::from_slice::<InstanceValue>(&kv.value)
        .map_err(|error| error.to_string())
        .and_then(|value| {
            let address = value.address.clone();
            value
                .into_instance()
                .ok_or_else(|| format!("address {address:?} is not an IP address"))
        });
    match parsed {
        Ok(instance) => Some(instance),
        Err(reason) => {
            tracing::warn!(service, key = %String::from_utf8_lossy(&kv.key), %reason, "skipping an instance whose value does not parse");
            None
        }
    }
}

#[cfg(test)]
mod tests {
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
        let lease = Lease { id: 1, ttl: 3 };
        assert_eq!(lease.renew_every(), Duration::from_secs(1));
        assert_eq!(lease.retry_ceiling(), MIN_BACKOFF);
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

    #[test]
    fn grpc_codes_map_to_unreachable_or_refused() {
        assert!(is_unreachable(&Status::unavailable("down")));
        assert!(!is_unreachable(&Status::not_found("lease")));
        assert!(matches!(
            refused("x", &Status::not_found("requested lease not found")),
            DiscoveryError::Refused { status: 404, .. }
        ));
    }
}
