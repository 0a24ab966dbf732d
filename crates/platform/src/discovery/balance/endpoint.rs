//! One instance as the balancer holds it: its tonic `Channel` (one HTTP/2 connection), its load
//! estimate, its in-flight count and its failure record.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::ejection::{BackoffPolicy, Ejection};
use super::ewma::{PeakEwma, cost};
use super::pick::Candidate;
use super::{BalanceOptions, EndpointSnapshot};
use crate::discovery::Instance;

/// One instance of the service.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// The instance's id in discovery (shared with the
    /// [`crate::resilience::attempt::Attempted`] of every answer).
    pub(super) id: Arc<str>,
    /// Where it listens.
    pub(super) addr: SocketAddr,
    /// How to open a connection to it (timeouts and keep-alive included).
    config: tonic::transport::Endpoint,
    /// Cancelled when discovery no longer lists the instance, or the balancer is dropped: ends
    /// its warm-up and probes.
    pub(super) removed: CancellationToken,
    /// Wakes the probe when waiting calls brought its next attempt forward.
    hurried: Notify,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    channel: Channel,
    /// Bumped whenever `channel` is replaced, so the failure of a call sent on a connection that
    /// is already gone does not eject the fresh one.
    generation: u64,
    latency: PeakEwma,
    in_flight: usize,
    last_picked: Option<Instant>,
    calls_started: u64,
    calls_succeeded: u64,
    ejection: Ejection,
    /// The ticket of the probe task in charge while ejected, if one is.
    probe: Option<u64>,
    /// Tickets handed out so far.
    probe_tickets: u64,
}

impl Endpoint {
    /// An endpoint for `instance` whose connection is opened by the first call (or by a warm-up).
    ///
    /// # Errors
    /// When the address does not make a URI (it always does for a socket address).
    pub(super) fn new(
        instance: &Instance,
        options: &BalanceOptions,
        initial_latency: Duration,
        now: Instant,
        removed: CancellationToken,
    ) -> Result<Self, tonic::transport::Error> {
        let config = tonic::transport::Endpoint::from_shared(format!("http://{}", instance.addr))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(options.keep_alive_interval)
            .keep_alive_timeout(options.keep_alive_timeout)
            .keep_alive_while_idle(true);
        let channel = config.connect_lazy();
        Ok(Self {
            id: Arc::from(instance.id.as_str()),
            addr: instance.addr,
            config,
            removed,
            hurried: Notify::new(),
            state: Mutex::new(State {
                channel,
                generation: 0,
                latency: PeakEwma::new(initial_latency, now),
                in_flight: 0,
                last_picked: None,
                calls_started: 0,
                calls_succeeded: 0,
                ejection: Ejection::default(),
                probe: None,
                probe_tickets: 0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step; a panic elsewhere cannot leave it half-made.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a connection now, bounded by twice the connect timeout (TCP, then the HTTP/2
    /// preface).
    pub(super) async fn connect(&self, connect_timeout: Duration) -> Result<Channel, String> {
        let patience = connect_timeout.saturating_mul(2);
        match tokio::time::timeout(patience, self.config.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(error)) => Err(describe(&error)),
            Err(_) => Err(format!(
                "no connection within {}",
                humantime::format_duration(patience)
            )),
        }
    }

    /// What the picker compares. With `admit_failing`, an endpoint sitting out for failed answers
    /// counts as available (when nothing else is, a call may as well try it: its connection works).
    pub(super) fn candidate(&self, admit_failing: bool) -> Candidate {
        let state = self.state();
        let ejected =
            state.ejection.is_ejected() && !(admit_failing && state.ejection.is_for_answers());
        Candidate {
            cost: cost(state.latency.estimate(), state.in_flight),
            ejected,
            last_picked: state.last_picked,
        }
    }

    /// Whether the endpoint sits out for failed answers (not for a failed connection).
    pub(super) fn sits_out_for_answers(&self) -> bool {
        self.state().ejection.is_for_answers()
    }

    /// The latency estimate, or `None` while ejected (a broken endpoint's estimate says nothing
    /// about what a new one should start at).
    pub(super) fn healthy_estimate(&self) -> Option<Duration> {
        let state = self.state();
        (!state.ejection.is_ejected()).then(|| state.latency.estimate())
    }

    /// Counts a call as started on this endpoint and hands out the channel to send it on.
    pub(super) fn start_call(self: &Arc<Self>, now: Instant) -> (Channel, CallGuard) {
        let mut state = self.state();
        state.in_flight += 1;
        state.calls_started += 1;
        state.last_picked = Some(now);
        let guard = CallGuard {
            endpoint: Arc::clone(self),
            sent_at: now,
            generation: state.generation,
            settled: false,
        };
        (state.channel.clone(), guard)
    }

    /// The call's response headers arrived at `now`: the latency sample ends. Whether the answer
    /// is a success is known from its gRPC status ([`Endpoint::concluded`]).
    pub(super) fn answered(&self, guard: &mut CallGuard, now: Instant, decay: Duration) {
        guard.settled = true;
        let mut state = self.state();
        let sample = now.saturating_duration_since(guard.sent_at);
        state.latency.observe(sample, now, decay);
        state.calls_succeeded += 1;
    }

    /// The answer's gRPC status is known: `Ok` for a good answer (client errors included), the
    /// failure's description for a server-side failure. Only an answer on the current connection
    /// counts: one that was in flight on a connection already replaced says nothing about the
    /// new one. A good answer clears the failure record; `eject_after` failed ones in a row (0:
    /// never) eject the endpoint for a back-off, returned when it starts now.
    pub(super) fn concluded(
        &self,
        guard: &CallGuard,
        verdict: Result<(), String>,
        eject_after: u32,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Option<Duration> {
        let mut state = self.state();
        if guard.generation != state.generation {
            return None;
        }
        match verdict {
            Ok(()) => {
                state.ejection.record_success();
                None
            }
            Err(error) => {
                let now = Instant::now();
                let failures = state.ejection.record_failed_answer(now, error);
                if eject_after == 0 || failures < eject_after {
                    return None;
                }
                state.ejection.eject_for_answers(now, policy, fraction)
            }
        }
    }

    /// A call on connection `generation` failed at the transport level at `now`. Returns how long
    /// until the first probe when the endpoint is ejected by it, or `None` when it is ejected
    /// already or the failure belongs to a connection that has been replaced since.
    pub(super) fn failed(
        &self,
        generation: u64,
        now: Instant,
        error: String,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Option<Duration> {
        let mut state = self.state();
        state.ejection.record_failure(now, error);
        if generation != state.generation {
            return None;
        }
        let ejected = state.ejection.eject(now, policy, fraction);
        drop(state);
        if ejected.is_some() {
            // A probe task waiting out an ejection for failed answers must now reconnect, at
            // once, not at the end of that back-off.
            self.hurried.notify_one();
        }
        ejected
    }

    /// The warm-up's connection failed at `now`. Ejects the endpoint, the warm-up counting as its
    /// first failed probe, unless the failure is stale: a call succeeded since on the lazily
    /// connected channel, or a probe's connection replaced it. Returns how long until the next
    /// probe when ejected.
    pub(super) fn warm_up_failed(
        &self,
        now: Instant,
        error: String,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Option<Duration> {
        let mut state = self.state();
        if state.calls_succeeded > 0 || state.generation != 0 {
            return None;
        }
        state.ejection.record_failure(now, error);
        state.ejection.eject(now, policy, fraction)?;
        Some(state.ejection.probe_failed(now, policy, fraction))
    }

    /// A ticket to probe this ejected endpoint, unless a probe is in charge already. A probe
    /// whose attempt was due more than `stale_after` ago has died or hangs: it is replaced, and
    /// its task gives up at its next step.
    pub(super) fn claim_probe(
        self: &Arc<Self>,
        now: Instant,
        stale_after: Duration,
    ) -> Option<ProbeTicket> {
        let mut state = self.state();
        let due = state.ejection.next_probe()?;
        if state.probe.is_some() && now.saturating_duration_since(due) <= stale_after {
            return None;
        }
        state.probe_tickets += 1;
        let id = state.probe_tickets;
        state.probe = Some(id);
        Some(ProbeTicket {
            endpoint: Arc::clone(self),
            id,
        })
    }

    /// Calls are waiting and no endpoint is available: bring the next probe forward (as far as
    /// the policy allows) and wake the probe. Returns when the next probe is due, `None` when the
    /// endpoint is not ejected.
    pub(super) fn hurry(&self, now: Instant, policy: &BackoffPolicy) -> Option<Instant> {
        let mut state = self.state();
        let before = state.ejection.next_probe()?;
        let due = state.ejection.hurry(now, policy)?;
        drop(state);
        if due < before {
            self.hurried.notify_one();
        }
        Some(due)
    }

    /// The warm-up connected: use its connection unless calls already went out on the lazy
    /// channel (which then has a connection of its own).
    pub(super) fn adopt_if_unused(&self, channel: Channel) {
        let mut state = self.state();
        if state.calls_started == 0 {
            state.channel = channel;
            state.generation += 1;
        }
    }

    /// The last failure and when it happened.
    pub(super) fn last_error(&self) -> Option<(Instant, String)> {
        self.state().ejection.last_error().cloned()
    }

    /// Calls in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    /// Whether a probe task is in charge of the endpoint.
    #[cfg(test)]
    pub(super) fn probing(&self) -> bool {
        self.state().probe.is_some()
    }

    /// What the picker sees now.
    pub(super) fn snapshot(&self) -> EndpointSnapshot {
        let state = self.state();
        EndpointSnapshot {
            id: self.id.to_string(),
            addr: self.addr,
            in_flight: state.in_flight,
            latency: state.latency.estimate(),
            ejected_until: state.ejection.next_probe(),
            ejected_for_failed_answers: state.ejection.is_for_answers(),
            consecutive_failures: state.ejection.consecutive_failures(),
        }
    }
}

/// The right to probe an ejected endpoint, held by the one probe task in charge of it. Dropping
/// it, as a task that ends, is cancelled or panics does, frees the endpoint for a new probe.
#[derive(Debug)]
pub(super) struct ProbeTicket {
    endpoint: Arc<Endpoint>,
    id: u64,
}

impl ProbeTicket {
    /// The endpoint to probe.
    pub(super) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// When the next attempt is due, or `None` when the probe is over: the endpoint is back in
    /// the picker, or another probe took charge.
    pub(super) fn due(&self) -> Option<Instant> {
        let state = self.endpoint.state();
        if state.probe != Some(self.id) {
            return None;
        }
        state.ejection.next_probe()
    }

    /// Whether the ejection is for failed answers: it ends by readmission when due, on the
    /// connection the endpoint has.
    pub(super) fn for_answers(&self) -> bool {
        self.endpoint.state().ejection.is_for_answers()
    }

    /// The back-off of an ejection for failed answers is over: the endpoint returns to the picker
    /// on probation. Returns `false` when this probe is no longer in charge.
    pub(super) fn readmit(&self) -> bool {
        let mut state = self.endpoint.state();
        if state.probe != Some(self.id) || !state.ejection.is_for_answers() {
            return false;
        }
        state.ejection.readmit();
        state.probe = None;
        true
    }

    /// Resolves when waiting calls bring the next attempt forward (or spuriously).
    pub(super) async fn hurried(&self) {
        self.endpoint.hurried.notified().await;
    }

    /// The attempt failed at `now`: the next waits longer. Returns how long, or `None` when this
    /// probe is no longer in charge.
    pub(super) fn failed(
        &self,
        now: Instant,
        error: String,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Option<Duration> {
        let mut state = self.endpoint.state();
        if state.probe != Some(self.id) {
            return None;
        }
        state.ejection.record_failure(now, error);
        Some(state.ejection.probe_failed(now, policy, fraction))
    }

    /// The attempt connected: calls go out on its connection from now on. Returns `false` (and
    /// drops the connection) when this probe is no longer in charge.
    pub(super) fn restore(&self, channel: Channel) -> bool {
        let mut state = self.endpoint.state();
        if state.probe != Some(self.id) || !state.ejection.is_ejected() {
            return false;
        }
        state.channel = channel;
        state.generation += 1;
        state.ejection.restore();
        // The probe is over: a failure right after must be able to start the next one.
        state.probe = None;
        true
    }
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        let mut state = self.endpoint.state();
        if state.probe == Some(self.id) {
            state.probe = None;
        }
    }
}

/// One call counted in flight on an endpoint, from the pick until its response body ends; it
/// travels from the call's future into the response body.
#[derive(Debug)]
pub(super) struct CallGuard {
    endpoint: Arc<Endpoint>,
    sent_at: Instant,
    generation: u64,
    /// Whether the call's outcome (an answer, or a transport failure) has been recorded.
    settled: bool,
}

impl CallGuard {
    /// The connection generation the call went out on.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The outcome has been recorded elsewhere (a transport failure): dropping only releases the
    /// in-flight count.
    pub(super) fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut state = self.endpoint.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if !self.settled {
            // Given up on before it answered (cancelled, or past its deadline): it took at least
            // this long.
            let waited = now.saturating_duration_since(self.sent_at);
            state.latency.observe_at_least(waited, now);
        }
    }
}

/// An error and its sources, `outer: inner: innermost` (tonic's transport errors say only
/// "transport error" at the top).
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
