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
//!   Until the first answer, calls wait for it, all until one deadline,
//!   [`BalanceOptions::first_answer_timeout`] after the channel was made (a dead registry costs
//!   each call at most what is left of it, not a full wait each); a stream that ends before
//!   answering fails calls at once.
//! - **Connections.** One tonic `Channel` (one HTTP/2 connection) per instance, built with
//!   `connect_lazy` so nothing blocks, and connected at once in the background when the instance
//!   appears so its first call does not pay the handshake. Timeouts and keep-alive are in
//!   [`BalanceOptions`].
//! - **Load** (`balance/ewma.rs`). Latency is measured to the response headers (the channel's
//!   future resolving); a call counts as in flight until its response body ends or is dropped,
//!   so a server stream keeps its instance busy. Cost = `latency × (in_flight + 1)`.
//! - **Picking** (`balance/pick.rs`). Two random non-ejected endpoints, the cheaper wins; one not
//!   picked for a second is picked anyway (go-zero's `forcePick`), and a new endpoint starts at
//!   the mean estimate of the others, so a new instance gets calls at once. A pick reads the
//!   endpoint list through a read lock (only discovery's updates write it, and they build new
//!   endpoints before taking it) and locks the two endpoints drawn, not every one.
//! - **Ejection and probes** (`balance/ejection.rs`). A call that fails at the transport level
//!   (refused, reset, connect timeout, HTTP/2 or keep-alive failure: the channel's future returned
//!   an error) ejects its instance at once, before discovery notices, and a probe opens a new
//!   connection in the background at once: a connection reset by a restart or a proxy is usually
//!   over by then, and the instance returns to the picker on the new connection. Only failed
//!   probes back off (1 s, doubling to 60 s, with jitter), as gRPC's connection back-off does.
//!   Calls are never the probe (as in gRPC, whose pickers only use connected subchannels), so
//!   once an instance is ejected no further call fails on it. Only a successful call on the
//!   probe's connection clears the record; an instance that accepts connections but keeps failing
//!   calls is first probed one step further along the back-off each time. One probe task per
//!   instance at a time; a pick that meets an ejected instance whose probe died or is long
//!   overdue starts a new one. gRPC errors that arrive as a response (`grpc-status` in the
//!   trailers) are the server's answer, not a transport failure.
//! - **Failed answers** (`balance/verdict.rs`, linkerd2-proxy's failure accrual). An instance that
//!   answers [`BalanceOptions::eject_after_failures`] calls in a row (7) with a server-side
//!   failure code (`UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DEADLINE_EXCEEDED`,
//!   `RESOURCE_EXHAUSTED`: the circuit breakers' classification) leaves the picker for a back-off
//!   (1 s doubling to 60 s with jitter, per ejection in a row), even while the service's breaker
//!   stays closed. Its connection works, so it is not probed: it returns when the back-off ends,
//!   on probation (the next failure ejects it again for twice as long; one good answer wipes the
//!   slate). When nothing else is left to pick, such an instance is picked anyway: its answer,
//!   even a failure, beats a call failing here.
//! - **Attempts** (`resilience::attempt`). Every answer carries an `Attempted` extension naming
//!   the instance, and every failure is an `AttemptError` saying which instance it was and
//!   whether the request can have reached it, for the retry layer above; a request with an
//!   `AvoidInstances` extension goes elsewhere while another instance can take it.
//! - **Every instance ejected.** A call then waits for a probe to succeed, up to
//!   [`BalanceOptions::connect_timeout`] and never past its own deadline, and fails `UNAVAILABLE`
//!   if none does (at once when no probe can end in time). While calls wait, an instance's next
//!   probe is brought forward to one base back-off after its last, so an instance that was out
//!   for minutes is found within a second of its return rather than at the end of a 60 s
//!   back-off, and a waiting client probes at most once per base back-off. Envoy's alternative,
//!   panic routing (send to all hosts when too many are ejected), suits hosts ejected by health
//!   statistics that may still answer; ours are ejected because their connection failed, so a
//!   call sent there would only be a probe that fails in the caller's face.
//! - **Our own failures** are a `tonic::Status` inside the `AttemptError` in the `BoxError`,
//!   which tonic's client recovers with `Status::from_error`: `UNAVAILABLE` with the service's name when discovery lists no
//!   instance, when it has not answered in time or stopped before answering, when every instance
//!   stays ejected, and when the instance a call went to failed at the transport level (the
//!   instance's address and the cause in the message; tonic alone would say `Unknown` or
//!   `Cancelled` for a connection lost mid-call); `DEADLINE_EXCEEDED` when the call's own
//!   deadline (its `grpc-timeout`, from `Request::set_timeout`) passes while it waits here, as
//!   gRPC reports a call whose deadline passes while it waits for a connection. A call that
//!   waited here reaches its channel with what is left of its deadline; one past its deadline
//!   there keeps tonic's code.
//!
//! TLS is not configured here: Flotilla's services speak plain HTTP/2 inside the deployment.

mod body;
mod ejection;
mod endpoint;
mod ewma;
mod pick;
mod verdict;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{BoxError, Service, ServiceExt};

use self::body::InFlight;
use self::ejection::BackoffPolicy;
use self::endpoint::{CallGuard, Endpoint, ProbeTicket, describe};
use self::verdict::Verdict;
use super::{Instance, InstanceStream};
use crate::resilience::attempt::{AttemptError, Attempted, AvoidInstances, Reach};
use crate::resilience::deadline;
use crate::resilience::watched::Watched;

/// How [`Balanced`] connects, estimates and ejects. Every field has a default chosen for
/// Flotilla's deployments (instances in one network, calls of milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceOptions {
    /// How long opening a TCP connection may take (default 1 s). A handshake inside one network
    /// takes well under a millisecond; waiting longer only delays the failure while other
    /// instances could serve, and a failed connect ejects the instance. linkerd2-proxy's default.
    /// Also how long a call waits for a probe when every instance is ejected.
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
    /// The back-off after an ejected instance's first failed probe (default 1 s), doubling with
    /// each further one; also the shortest time between two probes of one instance when calls
    /// waiting for it bring a probe forward.
    pub ejection_base: Duration,
    /// The longest back-off between two probes (default 60 s).
    pub ejection_max: Duration,
    /// By how much, as a fraction in `[0, 1]`, a back-off is randomly shortened (default 0.2),
    /// so clients that saw the same failure do not all probe at once.
    pub ejection_jitter: f64,
    /// How long after the channel is made calls wait for discovery's first answer before failing
    /// (default 5 s; one deadline for all calls, each also bounded by its own): long enough for a
    /// registry to answer at start-up, short enough that a wrong registry address shows up as an
    /// error rather than a hang.
    pub first_answer_timeout: Duration,
    /// Whether a new instance is connected to at once, in the background (default true), so its
    /// first call does not pay the handshake and a refusing instance is ejected before any call.
    pub connect_eagerly: bool,
    /// How many answers in a row with a server-side failure code (`UNAVAILABLE`, `INTERNAL`…)
    /// eject an instance for a back-off (default 7, linkerd2-proxy's failure accrual; 0 turns it
    /// off). Lower, and a short burst of errors on a healthy instance takes it out; much higher,
    /// and a broken instance keeps its share of calls for long.
    pub eject_after_failures: u32,
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
            eject_after_failures: 7,
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

    /// How long past its due time a probe attempt may be without a sign of life before another
    /// probe replaces it: an attempt takes at most twice the connect timeout.
    fn stale_probe_after(&self) -> Duration {
        self.connect_timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(1))
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
    /// While the instance is ejected: when its next probe is due (past while one is connecting),
    /// or when it is readmitted if it sits out for failed answers; `None` while it is in the
    /// picker.
    pub ejected_until: Option<Instant>,
    /// Whether it sits out for failed answers (rather than a failed connection).
    pub ejected_for_failed_answers: bool,
    /// Failed calls, failed answers and failed probes since its last good answer.
    pub consecutive_failures: u32,
}

/// A load-balanced channel to every healthy instance of one service, fed by discovery.
///
/// Clone-able; all clones share one set of endpoints and one discovery task.
///
/// # Errors
/// A call fails with a `tonic::Status` of code `UNAVAILABLE` whose message names the service
/// when discovery lists no instance, when discovery has not answered within
/// [`BalanceOptions::first_answer_timeout`] of the channel's creation or stopped before
/// answering, when every known instance is ejected and no probe brings one back within
/// [`BalanceOptions::connect_timeout`] (with their number and the last error), and when the
/// chosen instance failed at the transport level (with its id, address and the cause). A call
/// whose own deadline passes while it waits for discovery or a probe fails `DEADLINE_EXCEEDED`;
/// one past its deadline on the instance fails as tonic reports it.
#[derive(Debug, Clone)]
pub struct Balanced {
    shared: Arc<Shared>,
    /// Stops the discovery task, warm-ups and probes when the last clone goes.
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
        let created_at = Instant::now();
        let shared = Arc::new(Shared {
            service: service.to_owned(),
            first_answer_by: later(created_at, options.first_answer_timeout),
            options,
            endpoints: RwLock::new(Arc::from(Vec::new())),
            discovery: watch::Sender::new(Discovery::Waiting),
            changes: watch::Sender::new(0),
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

/// Where discovery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discovery {
    /// No answer yet.
    Waiting,
    /// At least one answer.
    Answered,
    /// The stream ended before its first answer.
    Stopped,
}

/// Why no endpoint was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoPick {
    /// Discovery lists none.
    Empty,
    /// Every one listed is ejected.
    AllEjected,
}

/// The endpoint a call goes to, the channel it goes on, and its in-flight count.
type Picked = (Arc<Endpoint>, Channel, CallGuard);

/// What every clone of a [`Balanced`], its discovery task and its probes share.
#[derive(Debug)]
struct Shared {
    service: String,
    options: BalanceOptions,
    /// When calls stop waiting for discovery's first answer.
    first_answer_by: Instant,
    /// Sorted by id, so snapshots and logs list instances in a stable order. Replaced whole by
    /// each update (only the discovery task writes it); a pick clones the `Arc` and lets go.
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    discovery: watch::Sender<Discovery>,
    /// Bumped when a probe ends an attempt or discovery changes the set: calls waiting with
    /// every instance ejected look again.
    changes: watch::Sender<u64>,
    random: pick::Random,
    /// Cancelled when the last [`Balanced`] goes: ends the discovery task, warm-ups and probes.
    stop: CancellationToken,
}

impl Shared {
    fn endpoints(&self) -> Arc<[Arc<Endpoint>]> {
        // Every update replaces the list whole; a panic elsewhere cannot leave it half-made.
        let endpoints = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&endpoints)
    }

    fn changed(&self) {
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    async fn dispatch(
        self: Arc<Self>,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        // The call's own timeout, or what is left of the deadline of the call being served.
        let deadline = deadline::outgoing(request.headers_mut(), Instant::now())
            .map_err(AttemptError::unsent)?;
        let mut waited = false;
        if *self.discovery.borrow() != Discovery::Answered {
            self.first_answer(deadline)
                .await
                .map_err(AttemptError::unsent)?;
            waited = true;
        }
        let avoid = request.extensions_mut().remove::<AvoidInstances>();
        let (endpoint, mut channel, mut guard) = match self.pick(Instant::now(), avoid.as_ref()) {
            Ok(picked) => picked,
            Err(NoPick::Empty) => return Err(AttemptError::unsent(self.no_instance()).into()),
            Err(NoPick::AllEjected) => {
                waited = true;
                self.wait_for_a_probe(deadline)
                    .await
                    .map_err(AttemptError::unsent)?
            }
        };
        if waited && let Some(deadline) = deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            deadline::set_timeout(request.headers_mut(), remaining);
        }
        let (outcome, handed_over) = match channel.ready().await {
            Ok(ready) => (ready.call(request).await, true),
            Err(error) => (Err(error), false),
        };
        let now = Instant::now();
        match outcome {
            Ok(mut response) => {
                endpoint.answered(&mut guard, now, self.options.decay);
                response.extensions_mut().insert(Attempted {
                    instance: Arc::clone(&endpoint.id),
                });
                // A trailers-only answer (how tonic servers send errors) carries its status in
                // the headers; any other carries it in the trailers, read as the body ends.
                let report = match verdict::verdict(response.headers()) {
                    Some(found) => {
                        if let Some(found) = found {
                            self.conclude(&endpoint, &guard, found);
                        }
                        None
                    }
                    None => Some((Arc::clone(&self), Arc::clone(&endpoint))),
                };
                Ok(
                    response
                        .map(|body| Body::new(Watched::new(body, InFlight::new(guard, report)))),
                )
            }
            // The caller's own deadline (tonic's `grpc-timeout` enforcement inside the channel):
            // not the instance's failure. Dropping the guard records the wait as a lower bound.
            Err(error) if is_deadline(&error) => Err(error.into()),
            Err(error) => {
                let description = describe(&error);
                self.transport_failure(&endpoint, guard.generation(), now, description.clone());
                guard.settle();
                let reach = if !handed_over || never_sent(&error) {
                    Reach::NotSent
                } else {
                    Reach::MaybeSent
                };
                let mut status = Status::unavailable(format!(
                    "calling {} instance {} at {} failed: {description}",
                    self.service, endpoint.id, endpoint.addr
                ));
                status.set_source(Arc::new(error));
                Err(Box::new(AttemptError::new(
                    status,
                    Some(Arc::clone(&endpoint.id)),
                    reach,
                )))
            }
        }
    }

    /// Records the gRPC status of an answer from `endpoint`; ejects it when that makes too many
    /// failed answers in a row.
    fn conclude(self: &Arc<Self>, endpoint: &Arc<Endpoint>, guard: &CallGuard, found: Verdict) {
        let error = found.as_ref().err().cloned();
        let ejected = endpoint.concluded(
            guard,
            found,
            self.options.eject_after_failures,
            &self.options.backoff(),
            self.random.fraction(),
        );
        if let Some(delay) = ejected {
            tracing::warn!(
                service = %self.service,
                instance = %endpoint.id,
                addr = %endpoint.addr,
                failures = self.options.eject_after_failures,
                last = error.as_deref().unwrap_or_default(),
                back_in = %humantime::format_duration(delay),
                "instance ejected from the balancer after failed answers in a row"
            );
            self.ensure_probe(endpoint, Instant::now());
            self.changed();
        }
    }

    /// Waits for discovery's first answer, until `first_answer_by` or the call's `deadline`.
    async fn first_answer(&self, deadline: Option<Instant>) -> Result<(), Status> {
        let (until, by_deadline) = earlier(self.first_answer_by, deadline);
        let mut discovery = self.discovery.subscribe();
        let answer = tokio::time::timeout_at(
            until,
            discovery.wait_for(|state| *state != Discovery::Waiting),
        )
        .await;
        match answer.map(|state| state.map(|state| *state)) {
            Ok(Ok(Discovery::Answered)) => Ok(()),
            // The sender lives in `self`: only `Stopped` gets here.
            Ok(_) => Err(self.discovery_stopped()),
            Err(_) if by_deadline => Err(Status::deadline_exceeded(format!(
                "the call's deadline passed while waiting for discovery's first answer for {}",
                self.service
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "discovery has not answered for {} within {} of the channel's creation",
                self.service,
                humantime::format_duration(self.options.first_answer_timeout)
            ))),
        }
    }

    fn discovery_stopped(&self) -> Status {
        Status::unavailable(format!(
            "discovery for {} stopped before listing any instance",
            self.service
        ))
    }

    fn no_instance(&self) -> Status {
        Status::unavailable(format!("no healthy instance of {}", self.service))
    }

    /// Chooses the endpoint for one call and counts the call on it. Makes sure every ejected
    /// endpoint it looks at has a probe.
    ///
    /// Preference, one pass each until one finds an endpoint: available and not in `avoid`;
    /// available; sitting out for failed answers (its connection works; Envoy's "panic routing"
    /// for hosts ejected on statistics). Endpoints whose connection failed are never picked.
    fn pick(
        self: &Arc<Self>,
        now: Instant,
        avoid: Option<&AvoidInstances>,
    ) -> Result<Picked, NoPick> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return Err(NoPick::Empty);
        }
        if let Some(avoid) = avoid.filter(|avoid| !avoid.is_empty())
            && let Some(picked) = self.pick_among(&endpoints, now, Some(avoid), false)
        {
            return Ok(picked);
        }
        if let Some(picked) = self.pick_among(&endpoints, now, None, false) {
            return Ok(picked);
        }
        if endpoints
            .iter()
            .any(|endpoint| endpoint.sits_out_for_answers())
            && let Some(picked) = self.pick_among(&endpoints, now, None, true)
        {
            return Ok(picked);
        }
        Err(NoPick::AllEjected)
    }

    fn pick_among(
        self: &Arc<Self>,
        endpoints: &[Arc<Endpoint>],
        now: Instant,
        avoid: Option<&AvoidInstances>,
        admit_failing: bool,
    ) -> Option<Picked> {
        let chosen = pick::choose(
            endpoints.len(),
            || self.random.next_u64(),
            |index| {
                let endpoint = &endpoints[index];
                let mut candidate = endpoint.candidate(admit_failing);
                if candidate.ejected {
                    self.ensure_probe(endpoint, now);
                } else if avoid.is_some_and(|avoid| avoid.contains(&endpoint.id)) {
                    candidate.ejected = true;
                }
                candidate
            },
            now,
            self.options.force_pick_after,
        )?;
        let endpoint = Arc::clone(&endpoints[chosen]);
        let (channel, guard) = endpoint.start_call(now);
        Some((endpoint, channel, guard))
    }

    /// Every endpoint is ejected: waits for a probe to bring one back, up to the connect timeout
    /// and the call's `deadline`, bringing probes forward meanwhile. Gives up as soon as no probe
    /// is due in time.
    async fn wait_for_a_probe(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> Result<Picked, Status> {
        let policy = self.options.backoff();
        let patience = later(Instant::now(), self.options.connect_timeout);
        let (until, by_deadline) = earlier(patience, deadline);
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            let now = Instant::now();
            match self.pick(now, None) {
                Ok(picked) => return Ok(picked),
                Err(NoPick::Empty) => return Err(self.no_instance()),
                Err(NoPick::AllEjected) => {}
            }
            let endpoints = self.endpoints();
            let soonest = endpoints
                .iter()
                .filter_map(|endpoint| endpoint.hurry(now, &policy))
                .min();
            let due_before = |limit: Instant| soonest.is_some_and(|due| due < limit);
            if now < until && due_before(until) {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return Err(self.all_ejected(&endpoints));
                        }
                    }
                    () = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
            // Out of time, or the next probe comes too late: blame the deadline if, without it,
            // the call would have waited on.
            return Err(if by_deadline && (now >= until || due_before(patience)) {
                Status::deadline_exceeded(format!(
                    "the call's deadline passes before any instance of {} is back from ejection \
                     ({} known)",
                    self.service,
                    endpoints.len()
                ))
            } else {
                self.all_ejected(&endpoints)
            });
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

    /// A call on `endpoint` failed at the transport level: eject it and probe it.
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
        if let Some(delay) = ejected {
            tracing::warn!(
                service = %self.service,
                instance = %endpoint.id,
                addr = %endpoint.addr,
                %error,
                probe_in = %humantime::format_duration(delay),
                "instance ejected from the balancer after a transport failure"
            );
            self.ensure_probe(endpoint, now);
        }
    }

    /// Starts a probe of `endpoint` if it is ejected and no live probe is in charge of it.
    fn ensure_probe(self: &Arc<Self>, endpoint: &Arc<Endpoint>, now: Instant) {
        if let Some(ticket) = endpoint.claim_probe(now, self.options.stale_probe_after()) {
            self.spawn_for(endpoint, probe(Arc::clone(self), ticket));
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
        // Only this task writes the list, so it stays `current` until replaced below; endpoints
        // (and their channels) are built without holding the lock.
        let current = self.endpoints();
        let listed = |endpoint: &Arc<Endpoint>| {
            instances
                .binary_search_by(|instance| instance.id.as_str().cmp(&endpoint.id))
                .is_ok_and(|index| instances[index].addr == endpoint.addr)
        };
        let (kept, removed): (Vec<_>, Vec<_>) = current
            .iter()
            .cloned()
            .partition(|endpoint| listed(endpoint));
        let known: Vec<Duration> = kept
            .iter()
            .filter_map(|endpoint| endpoint.healthy_estimate())
            .collect();
        let initial = ewma::initial_estimate(&known, self.options.default_latency);
        let mut added = Vec::new();
        for instance in &instances {
            // `kept` is sorted by id, as the list it comes from.
            if kept
                .binary_search_by(|endpoint| (*endpoint.id).cmp(instance.id.as_str()))
                .is_ok()
            {
                continue;
            }
            let token = self.stop.child_token();
            match Endpoint::new(instance, &self.options, initial, now, token) {
                Ok(endpoint) => added.push(Arc::new(endpoint)),
                Err(error) => tracing::warn!(
                    service = %self.service,
                    instance = %instance.id,
                    addr = %instance.addr,
                    error = %describe(&error),
                    "instance left out of the balancer: no endpoint for its address"
                ),
            }
        }
        let mut next = kept;
        next.extend(added.iter().cloned());
        next.sort_by(|left, right| left.id.cmp(&right.id));
        *self
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::from(next);

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
        self.discovery.send_if_modified(|state| {
            std::mem::replace(state, Discovery::Answered) != Discovery::Answered
        });
        self.changed();
    }
}

/// Follows discovery until the last [`Balanced`] is dropped.
async fn follow(shared: Arc<Shared>, mut instances: InstanceStream) {
    let stop = shared.stop.clone();
    while let Some(Some(answer)) = stop.run_until_cancelled(instances.next()).await {
        shared.update(answer);
    }
    if stop.is_cancelled() {
        return;
    }
    let never_answered = shared.discovery.send_if_modified(|state| {
        let waiting = *state == Discovery::Waiting;
        if waiting {
            *state = Discovery::Stopped;
        }
        waiting
    });
    // Backends never end their streams; should one, the last set is the best knowledge left.
    if never_answered {
        tracing::warn!(
            service = %shared.service,
            "discovery stream ended before its first answer; calls fail"
        );
    } else {
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
        Err(error) => {
            let now = Instant::now();
            let ejected = endpoint.warm_up_failed(
                now,
                error.clone(),
                &shared.options.backoff(),
                shared.random.fraction(),
            );
            if let Some(delay) = ejected {
                tracing::warn!(
                    service = %shared.service,
                    instance = %endpoint.id,
                    addr = %endpoint.addr,
                    %error,
                    probe_in = %humantime::format_duration(delay),
                    "new instance ejected from the balancer: it refuses connections"
                );
                shared.ensure_probe(&endpoint, now);
                shared.changed();
            }
        }
    }
}

/// Brings an ejected endpoint back: whenever an attempt is due (at once after an ejection, then
/// after each back-off, sooner when calls wait), open a new connection; the endpoint returns to
/// the picker on it, or the next attempt waits longer.
async fn probe(shared: Arc<Shared>, ticket: ProbeTicket) {
    let endpoint = Arc::clone(ticket.endpoint());
    let policy = shared.options.backoff();
    while let Some(due) = ticket.due() {
        if Instant::now() < due {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = ticket.hurried() => {}
            }
            continue;
        }
        // Sitting out for failed answers: its connection works, so it returns on probation.
        if ticket.for_answers() {
            if ticket.readmit() {
                tracing::info!(
                    service = %shared.service,
                    instance = %endpoint.id,
                    addr = %endpoint.addr,
                    "instance readmitted to the balancer on probation after failed answers"
                );
                shared.changed();
            }
            return;
        }
        match endpoint.connect(shared.options.connect_timeout).await {
            Ok(channel) => {
                if ticket.restore(channel) {
                    tracing::info!(
                        service = %shared.service,
                        instance = %endpoint.id,
                        addr = %endpoint.addr,
                        "instance restored to the balancer: it accepts connections again"
                    );
                    shared.changed();
                }
                return;
            }
            Err(error) => {
                let now = Instant::now();
                let fraction = shared.random.fraction();
                let Some(delay) = ticket.failed(now, error.clone(), &policy, fraction) else {
                    return;
                };
                tracing::debug!(
                    service = %shared.service,
                    instance = %endpoint.id,
                    addr = %endpoint.addr,
                    %error,
                    next_probe_in = %humantime::format_duration(delay),
                    "ejected instance still unreachable"
                );
                shared.changed();
            }
        }
    }
}

/// `at + by`, or a year after `at` when that overflows (a timeout "forever").
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(at)
}

/// The earlier of `patience` and the call's `deadline`, and whether it is the deadline.
fn earlier(patience: Instant, deadline: Option<Instant>) -> (Instant, bool) {
    match deadline {
        Some(deadline) if deadline < patience => (deadline, true),
        _ => (patience, false),
    }
}

/// Whether a failed call certainly never reached the server: the connection could not be opened,
/// or the server refused the stream unread (HTTP/2 `REFUSED_STREAM`, sent for streams a server
/// going away will not serve).
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<tonic::ConnectError>()
            || error
                .downcast_ref::<h2::Error>()
                .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            return true;
        }
        current = error.source();
    }
    false
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
