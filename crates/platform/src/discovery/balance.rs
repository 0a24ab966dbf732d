//! A load-aware gRPC channel to every healthy instance of one service, fed by discovery.
//!
//! [`Balanced`] turns an [`InstanceStream`] into a `tower::Service` that tonic's generated clients
//! accept (`ProductServiceClient::new(balanced)`). Per call it picks one instance by the power of
//! two choices over peak-EWMA latency weighted by in-flight calls — the picker of Finagle
//! (`PeakEwma`), linkerd2-proxy and go-zero's `p2c` — and sends the call on that instance's own
//! tonic `Channel`.
//!
//! # Why not a crate
//!
//! - tonic's `Channel::balance_channel` reports a load of 0 for every connection, so its p2c picks
//!   at random, and it keeps picking endpoints that went away (tonic issues #643 and #2182).
//! - tower's `p2c::Balance` with `PeakEwma` has the right picker but the wrong failure handling
//!   for gRPC: it evicts an endpoint for good when the endpoint's `poll_ready` fails, and never
//!   reacts to failed calls. A lazily connecting tonic `Channel` is always ready and reports a
//!   refused or broken connection as the error of the *call*, so `Balance` would keep sending
//!   calls to a dead instance until discovery noticed (Consul: a check interval and more).
//! - No crate found does peak-EWMA p2c with ejection on transport failure for tonic 0.14.
//!
//! # How it works
//!
//! - **Discovery.** A task follows the stream (each item is the whole healthy set) and adds and
//!   removes endpoints live; a removed one is never picked again, while calls already on it finish
//!   on their own clone of its channel. The task ends when the last clone of [`Balanced`] drops.
//! - **Connections.** One tonic `Channel` (one HTTP/2 connection) per instance, built with
//!   `connect_lazy` so nothing blocks, and connected at once in the background when the instance
//!   appears so its first call does not pay the handshake. Timeouts and keep-alive are in
//!   [`BalanceOptions`].
//! - **Load** (`balance/ewma.rs`). Latency is measured to the response headers (the channel's
//!   future resolving); a call counts as in flight until its response body ends or is dropped,
//!   so a server stream keeps its instance busy. Cost = `latency × (in_flight + 1)`.
//! - **Picking** (`balance/pick.rs`). Two random non-ejected endpoints, the cheaper wins; one not
//!   picked for a second is picked anyway (go-zero's `forcePick`), and a new endpoint starts at
//!   the mean estimate of the others, so a new instance gets calls at once.
//! - **Ejection** (`balance/ejection.rs`). A call that fails at the transport level (refused,
//!   reset, connect timeout, HTTP/2 or keep-alive failure: the channel's future returned an
//!   error) ejects its instance at once, before discovery notices. At the end of the back-off
//!   (1 s, doubling to 60 s, with jitter) a probe opens a new connection in the background: if it
//!   connects, the instance returns to the picker on that connection; if not, it stays out for
//!   the next back-off. Calls are never the probe (as in gRPC, whose pickers only use connected
//!   subchannels and reconnect with back-off), so once an instance is ejected no further call
//!   fails on it. A successful call resets the back-off; an instance that accepts connections
//!   but keeps failing calls is ejected for longer each time. gRPC errors that arrive as a
//!   response (`grpc-status` in the trailers) are the server's answer, not an ejection.
//! - **Our own failures** are a `tonic::Status` in the `BoxError`, which tonic's client recovers
//!   with `Status::from_error`: `UNAVAILABLE` with the service's name when discovery lists no
//!   instance, when it has not answered yet, when every instance is ejected, and when the
//!   instance a call went to failed at the transport level (the instance's address and the cause
//!   in the message; tonic alone would say `Unknown` or `Cancelled` for a connection lost
//!   mid-call). A call past its own deadline keeps tonic's code.
//!
//! TLS is not configured here: Flotilla's services speak plain HTTP/2 inside the deployment.

mod body;
mod ejection;
mod endpoint;
mod ewma;
mod pick;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Status;
use tonic::body::Body;
use tower::{BoxError, Service, ServiceExt};

use self::body::InFlightBody;
use self::ejection::BackoffPolicy;
use self::endpoint::{CallGuard, Endpoint, describe};
use super::{Instance, InstanceStream};

/// How [`Balanced`] connects, estimates and ejects. Every field has a default chosen for
/// Flotilla's deployments (instances in one network, calls of milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceOptions {
    /// How long opening a TCP connection may take (default 1 s). A handshake inside one network
    /// takes well under a millisecond; waiting longer only delays the failure while other
    /// instances could serve, and a failed connect ejects the instance. linkerd2-proxy's default.
    pub connect_timeout: Duration,
    /// How often an HTTP/2 PING goes out on each connection, even with no call on it (default
    /// 10 s). A peer that stops answering without closing the connection (host down, network
    /// partition, a frozen process) sends no reset; the PING is what notices. tonic's servers do
    /// not police PINGs; a grpc-go server would need `PermitWithoutStream` and a `MinTime` of at
    /// most this.
    pub keep_alive_interval: Duration,
    /// How long a PING's answer may take before the connection is declared dead (default 5 s):
    /// a silent peer is found within 15 s, before a Consul check (10 s interval, then critical)
    /// takes it out, and its in-flight calls then fail and eject it.
    pub keep_alive_timeout: Duration,
    /// τ of the peak-EWMA latency estimate (default 10 s, as in linkerd2-proxy and go-zero):
    /// how fast a latency peak is forgotten once answers are quick again (63 % in τ).
    pub decay: Duration,
    /// The estimate the first instances start from, when there is no other to take the mean of
    /// (default 1 ms). Optimistic on purpose: a slower answer replaces the estimate at once,
    /// while a pessimistic start would take τ to come down.
    pub default_latency: Duration,
    /// An instance not picked for this long is picked the next time it is one of the two drawn,
    /// whatever its cost (default 1 s, go-zero's `forcePick`): new and recovered instances get
    /// calls at once and stale estimates get refreshed.
    pub force_pick_after: Duration,
    /// The first ejection after a transport failure (default 1 s).
    pub ejection_base: Duration,
    /// The longest ejection (default 60 s); each failed probe doubles the back-off up to it.
    pub ejection_max: Duration,
    /// By how much, as a fraction in `[0, 1]`, an ejection is randomly shortened (default 0.2),
    /// so clients that saw the same failure do not all probe at once.
    pub ejection_jitter: f64,
    /// How long a call waits for discovery's first answer before failing (default 5 s): long
    /// enough for a registry to answer at start-up, short enough that a wrong registry address
    /// shows up as an error rather than a hang.
    pub first_answer_timeout: Duration,
    /// Whether a new instance is connected to at once, in the background (default true), so its
    /// first call does not pay the handshake and a refusing instance is ejected before any call.
    pub connect_eagerly: bool,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            decay: Duration::from_secs(10),
            default_latency: Duration::from_millis(1),
            force_pick_after: Duration::from_secs(1),
            ejection_base: Duration::from_secs(1),
            ejection_max: Duration::from_secs(60),
            ejection_jitter: 0.2,
            first_answer_timeout: Duration::from_secs(5),
            connect_eagerly: true,
        }
    }
}

impl BalanceOptions {
    fn backoff(&self) -> BackoffPolicy {
        BackoffPolicy {
            base: self.ejection_base,
            max: self.ejection_max,
            jitter: self.ejection_jitter,
        }
    }
}

/// One instance as the picker sees it at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSnapshot {
    /// The instance's id in discovery.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Calls sent and not finished (response body not ended).
    pub in_flight: usize,
    /// The peak-EWMA latency estimate.
    pub latency: Duration,
    /// Until when the instance is ejected (it is then probed), if it is.
    pub ejected_until: Option<Instant>,
    /// Failed calls (and probes) since its last successful call.
    pub consecutive_failures: u32,
}

/// A load-balanced channel to every healthy instance of one service, fed by discovery.
///
/// Clone-able; all clones share one set of endpoints and one discovery task.
///
/// # Errors
/// A call fails with a `tonic::Status` of code `UNAVAILABLE` whose message names the service
/// when discovery lists no instance, when discovery has not answered within
/// [`BalanceOptions::first_answer_timeout`], when every known instance is ejected (with their
/// number and the last error), and when the chosen instance failed at the transport level (with
/// its id, address and the cause). A call past its own deadline fails as tonic reports it.
#[derive(Debug, Clone)]
pub struct Balanced {
    shared: Arc<Shared>,
    /// Stops the discovery task when the last clone goes.
    _follower: Arc<DropGuard>,
}

/// The future of a call through [`Balanced`].
pub type BalancedFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

impl Balanced {
    /// Follows `instances` for `service` in a task on the current tokio runtime, with the default
    /// [`BalanceOptions`]; the task ends when the last clone is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(service: &str, instances: InstanceStream) -> Self {
        Self::with_options(service, instances, BalanceOptions::default())
    }

    /// Like [`Balanced::new`], with `options`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn with_options(service: &str, instances: InstanceStream, options: BalanceOptions) -> Self {
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            service: service.to_owned(),
            options,
            endpoints: Mutex::new(Vec::new()),
            answered: watch::Sender::new(false),
            random: pick::Random::from_entropy(),
            stop: stop.clone(),
        });
        tokio::spawn(follow(Arc::clone(&shared), instances));
        Self {
            shared,
            _follower: Arc::new(stop.drop_guard()),
        }
    }

    /// The service this channel reaches.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// What the picker sees now, per instance (sorted by id): for tests, logs and metrics.
    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        self.shared
            .endpoints()
            .iter()
            .map(|endpoint| endpoint.snapshot())
            .collect()
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BalancedFuture;

    /// Always ready: the instance is chosen, and its channel driven to ready, inside the call's
    /// future (tonic would report a readiness error as `Unknown`).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.dispatch(request).await })
    }
}

/// What every clone of a [`Balanced`], its discovery task and its probes share.
#[derive(Debug)]
struct Shared {
    service: String,
    options: BalanceOptions,
    /// Sorted by id, so snapshots and logs list instances in a stable order.
    endpoints: Mutex<Vec<Arc<Endpoint>>>,
    /// Whether discovery has answered at least once.
    answered: watch::Sender<bool>,
    random: pick::Random,
    /// Cancelled when the last [`Balanced`] goes: ends the discovery task, warm-ups and probes.
    stop: CancellationToken,
}

impl Shared {
    fn endpoints(&self) -> MutexGuard<'_, Vec<Arc<Endpoint>>> {
        // Every update replaces the list whole; a panic elsewhere cannot leave it half-made.
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn dispatch(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        self.first_answer().await?;
        let (endpoint, mut channel, mut guard) = self.pick()?;
        let outcome = match channel.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(error) => Err(error),
        };
        let now = Instant::now();
        match outcome {
            Ok(response) => {
                endpoint.succeeded(&mut guard, now, self.options.decay);
                Ok(response.map(|body| Body::new(InFlightBody::new(body, guard))))
            }
            // The caller's own deadline (tonic's `grpc-timeout` enforcement inside the channel):
            // not the instance's failure. Dropping the guard records the wait as a lower bound.
            Err(error) if is_deadline(&error) => Err(error.into()),
            Err(error) => {
                let description = describe(&error);
                self.transport_failure(&endpoint, guard.generation(), now, description.clone());
                guard.settle();
                let mut status = Status::unavailable(format!(
                    "calling {} instance {} at {} failed: {description}",
                    self.service, endpoint.id, endpoint.addr
                ));
                status.set_source(Arc::new(error));
                Err(Box::new(status))
            }
        }
    }

    /// Waits for discovery's first answer, up to `first_answer_timeout`.
    async fn first_answer(&self) -> Result<(), Status> {
        if *self.answered.borrow() {
            return Ok(());
        }
        let mut answered = self.answered.subscribe();
        let patience = self.options.first_answer_timeout;
        let waited = tokio::time::timeout(patience, answered.wait_for(|answered| *answered)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Status::unavailable(format!(
                "discovery has not answered for {} yet (waited {})",
                self.service,
                humantime::format_duration(patience)
            ))),
        }
    }

    /// Chooses the endpoint for one call and counts the call on it.
    fn pick(&self) -> Result<(Arc<Endpoint>, tonic::transport::Channel, CallGuard), Status> {
        let now = Instant::now();
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return Err(Status::unavailable(format!(
                "no healthy instance of {}",
                self.service
            )));
        }
        let candidates: Vec<pick::Candidate> = endpoints
            .iter()
            .map(|endpoint| endpoint.candidate())
            .collect();
        let random = [self.random.next_u64(), self.random.next_u64()];
        match pick::choose(&candidates, random, now, self.options.force_pick_after) {
            Some(index) => {
                let endpoint = Arc::clone(&endpoints[index]);
                drop(endpoints);
                let (channel, guard) = endpoint.start_call(now);
                Ok((endpoint, channel, guard))
            }
            None => Err(self.all_ejected(&endpoints)),
        }
    }

    fn all_ejected(&self, endpoints: &[Arc<Endpoint>]) -> Status {
        let last = endpoints
            .iter()
            .filter_map(|endpoint| {
                endpoint
                    .last_error()
                    .map(|(at, error)| (at, endpoint.addr, error))
            })
            .max_by_key(|(at, _, _)| *at);
        let last = match last {
            Some((_, addr, error)) => format!("last error (from {addr}): {error}"),
            None => "no error recorded".to_owned(),
        };
        Status::unavailable(format!(
            "every known instance of {} is ejected after failing ({} known); {last}",
            self.service,
            endpoints.len()
        ))
    }

    /// A call on (or a warm-up of) `endpoint` failed at the transport level: eject it, and probe
    /// it when the back-off ends.
    fn transport_failure(
        self: &Arc<Self>,
        endpoint: &Arc<Endpoint>,
        generation: u64,
        now: Instant,
        error: String,
    ) {
        let fraction = self.random.fraction();
        let ejected = endpoint.failed(
            generation,
            now,
            error.clone(),
            &self.options.backoff(),
            fraction,
        );
        if let Some(backoff) = ejected {
            tracing::warn!(
                service = %self.service,
                instance = %endpoint.id,
                addr = %endpoint.addr,
                %error,
                backoff = %humantime::format_duration(backoff),
                "instance ejected from the balancer after a transport failure"
            );
            self.spawn_for(endpoint, probe(Arc::clone(self), Arc::clone(endpoint)));
        }
    }

    /// Runs `task` until it ends, `endpoint` is removed, or the balancer is dropped.
    fn spawn_for(&self, endpoint: &Arc<Endpoint>, task: impl Future<Output = ()> + Send + 'static) {
        let removed = endpoint.removed.clone();
        tokio::spawn(async move {
            removed.run_until_cancelled(task).await;
        });
    }

    /// Applies one answer from discovery: the whole healthy set.
    fn update(self: &Arc<Self>, mut instances: Vec<Instance>) {
        instances.sort_by(|left, right| left.id.cmp(&right.id));
        instances.dedup_by(|next, previous| next.id == previous.id);
        let now = Instant::now();
        let mut added = Vec::new();
        let removed = {
            let mut endpoints = self.endpoints();
            let (kept, removed): (Vec<_>, Vec<_>) = endpoints.drain(..).partition(|endpoint| {
                instances
                    .iter()
                    .any(|instance| instance.id == endpoint.id && instance.addr == endpoint.addr)
            });
            let known: Vec<Duration> = kept
                .iter()
                .filter_map(|endpoint| endpoint.healthy_estimate())
                .collect();
            let initial = ewma::initial_estimate(&known, self.options.default_latency);
            let mut next = kept;
            for instance in &instances {
                if next.iter().any(|endpoint| endpoint.id == instance.id) {
                    continue;
                }
                let token = self.stop.child_token();
                match Endpoint::new(instance, &self.options, initial, now, token) {
                    Ok(endpoint) => {
                        let endpoint = Arc::new(endpoint);
                        next.push(Arc::clone(&endpoint));
                        added.push(endpoint);
                    }
                    Err(error) => tracing::warn!(
                        service = %self.service,
                        instance = %instance.id,
                        addr = %instance.addr,
                        error = %describe(&error),
                        "instance left out of the balancer: no endpoint for its address"
                    ),
                }
            }
            next.sort_by(|left, right| left.id.cmp(&right.id));
            *endpoints = next;
            removed
        };
        for endpoint in removed {
            endpoint.removed.cancel();
            tracing::info!(
                service = %self.service,
                instance = %endpoint.id,
                addr = %endpoint.addr,
                in_flight = endpoint.in_flight(),
                "instance removed from the balancer"
            );
        }
        for endpoint in added {
            tracing::info!(
                service = %self.service,
                instance = %endpoint.id,
                addr = %endpoint.addr,
                "instance added to the balancer"
            );
            if self.options.connect_eagerly {
                self.spawn_for(&endpoint, warm_up(Arc::clone(self), Arc::clone(&endpoint)));
            }
        }
        if instances.is_empty() {
            tracing::warn!(service = %self.service, "discovery lists no healthy instance");
        }
        self.answered
            .send_if_modified(|answered| !std::mem::replace(answered, true));
    }
}

/// Follows discovery until the last [`Balanced`] is dropped.
async fn follow(shared: Arc<Shared>, mut instances: InstanceStream) {
    let stop = shared.stop.clone();
    while let Some(Some(answer)) = stop.run_until_cancelled(instances.next()).await {
        shared.update(answer);
    }
    if !stop.is_cancelled() {
        // Backends never end their streams; should one, the last set is the best knowledge left.
        tracing::warn!(
            service = %shared.service,
            "discovery stream ended; keeping the last known instances"
        );
    }
}

/// Connects to a new instance ahead of its first call; a refusal ejects it before any call fails.
async fn warm_up(shared: Arc<Shared>, endpoint: Arc<Endpoint>) {
    match endpoint.connect(shared.options.connect_timeout).await {
        Ok(channel) => endpoint.adopt_if_unused(channel),
        Err(error) => shared.transport_failure(&endpoint, 0, Instant::now(), error),
    }
}

/// Brings an ejected endpoint back: at the end of each back-off, open a new connection; the
/// endpoint returns to the picker on it, or stays out for the next, longer, back-off.
async fn probe(shared: Arc<Shared>, endpoint: Arc<Endpoint>) {
    while let Some(until) = endpoint.ejected_until() {
        tokio::time::sleep_until(until).await;
        match endpoint.connect(shared.options.connect_timeout).await {
            Ok(channel) => {
                endpoint.restore(channel);
                tracing::info!(
                    service = %shared.service,
                    instance = %endpoint.id,
                    addr = %endpoint.addr,
                    "instance restored to the balancer: it accepts connections again"
                );
                return;
            }
            Err(error) => {
                let backoff = endpoint.probe_failed(
                    Instant::now(),
                    error.clone(),
                    &shared.options.backoff(),
                    shared.random.fraction(),
                );
                tracing::debug!(
                    service = %shared.service,
                    instance = %endpoint.id,
                    addr = %endpoint.addr,
                    %error,
                    backoff = %humantime::format_duration(backoff),
                    "ejected instance still unreachable"
                );
            }
        }
    }
}

/// Whether the channel gave up because the call's own deadline passed.
fn is_deadline(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        current = error.source();
    }
    false
}
