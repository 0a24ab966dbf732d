//! Taking an endpoint out of the picker after it failed, and when to try it again.
//!
//! The record is the one Envoy's outlier detection keeps per host (consecutive failures, how many
//! times in a row the host has been ejected, until when), with gRPC's connection back-off
//! ("gRPC Connection Backoff Protocol", `doc/connection-backoff.md`) deciding when to reconnect:
//! the first reconnection goes out at once, and only failed ones back off, doubling from the base
//! to the maximum. A connection reset by a restart or a proxy is over as soon as a new connection
//! opens; waiting a full back-off first would leave a service with one address dark for it.
//!
//! One addition: an endpoint ejected again before any call succeeded on the connection its probe
//! opened (it accepts connections, but calls on them fail) starts where the last ejection's
//! back-off stood, so such a host gets one failed call per back-off rather than one per probe.
//! Only a success on a connection opened after the last ejection clears that memory.
//!
//! Failed *answers* eject too, after linkerd2-proxy's failure accrual: an endpoint whose calls
//! were answered with a server-side failure ([`crate::resilience::breaker::counts_as_failure`])
//! so many times in a row leaves the picker for a back-off of its own (1 s, doubling with each
//! ejection in a row, to 60 s), even while the service as a whole looks fine. Its connection
//! works, so nothing is probed: when the back-off ends it returns on probation, its failures
//! remembered, and its next failure ejects it again for twice as long, while one success wipes
//! the slate.

use std::time::Duration;

use tokio::time::Instant;

/// How long the back-off after a failure lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BackoffPolicy {
    /// The first back-off's length, and the shortest time between two probes that calls
    /// waiting for an endpoint may bring forward.
    pub(super) base: Duration,
    /// The longest back-off.
    pub(super) max: Duration,
    /// The fraction, in `[0, 1]`, by which a back-off may randomly be shortened.
    pub(super) jitter: f64,
}

impl BackoffPolicy {
    /// The length of the `step`-th back-off in a row (1 for the first): `base · 2^(step-1)`,
    /// capped at `max`, shortened by up to `jitter` of itself according to `fraction` in `[0, 1)`.
    /// Shortening (rather than lengthening) keeps `max` a true bound; randomising at all keeps
    /// many clients that saw the same failure from retrying in step.
    pub(super) fn backoff(&self, step: u32, fraction: f64) -> Duration {
        let doublings = step.saturating_sub(1).min(31);
        let nominal = self.base.saturating_mul(1_u32 << doublings).min(self.max);
        let factor = 1.0 - self.jitter * fraction;
        if (0.0..=1.0).contains(&factor) {
            nominal.mul_f64(factor)
        } else {
            nominal
        }
    }
}

/// The failure record of one endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Ejection {
    /// Failed calls and probes since the last success.
    consecutive_failures: u32,
    /// Ejections since a call last succeeded on a connection opened after the previous one.
    ejections: u32,
    /// Probes that failed during the current ejection.
    failed_probes: u32,
    /// While ejected: when the next probe may start (in the past while one is connecting).
    next_probe: Option<Instant>,
    /// When the last probe failed: calls waiting for an endpoint may bring the next probe
    /// forward, but not closer than the base back-off to this one.
    last_probe: Option<Instant>,
    /// The last failure and when it happened.
    last_error: Option<(Instant, String)>,
    /// Whether the current ejection is for failed answers rather than a failed connection: it
    /// ends by readmission, not by a new connection.
    for_answers: bool,
    /// Answers in a row with a server-side failure, on the current connection. Kept apart from
    /// `consecutive_failures`: calls that die with a crashed instance, and failed probes, say
    /// nothing about how the instance answers once it is back.
    failed_answers: u32,
    /// Ejections for failed answers since the last good answer: the back-off's step.
    answer_ejections: u32,
}

impl Ejection {
    /// A call succeeded on the endpoint's current connection: the slate is wiped.
    pub(super) fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.ejections = 0;
        self.failed_answers = 0;
        self.answer_ejections = 0;
    }

    /// An answer on the current connection was a server-side failure at `now`; returns the
    /// failed answers in a row so far.
    pub(super) fn record_failed_answer(&mut self, now: Instant, error: String) -> u32 {
        self.record_failure(now, error);
        self.failed_answers = self.failed_answers.saturating_add(1);
        self.failed_answers
    }

    /// A call or probe failed at `now` with `error`; returns the consecutive failures so far.
    pub(super) fn record_failure(&mut self, now: Instant, error: String) -> u32 {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some((now, error));
        self.consecutive_failures
    }

    /// Ejects the endpoint at `now` and returns how long until its first probe (zero unless it
    /// was ejected before without a success since), or `None` when it is ejected already: calls
    /// that were in flight when it failed fail together, and they must not stretch one outage.
    pub(super) fn eject(
        &mut self,
        now: Instant,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Option<Duration> {
        // A connection failing while the endpoint sits out for failed answers turns the ejection
        // into one that ends only with a new connection.
        if self.next_probe.is_some() && !self.for_answers {
            return None;
        }
        self.for_answers = false;
        self.ejections = self.ejections.saturating_add(1);
        self.failed_probes = 0;
        let delay = self.delay(policy, fraction);
        self.next_probe = Some(now + delay);
        Some(delay)
    }

    /// Ejects the endpoint at `now` for failed answers: for one back-off step per ejection since
    /// the last success (1 s, then 2 s… up to the maximum). Returns how long, or `None` when it is
    /// ejected already.
    pub(super) fn eject_for_answers(
        &mut self,
        now: Instant,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Option<Duration> {
        if self.next_probe.is_some() {
            return None;
        }
        self.for_answers = true;
        self.answer_ejections = self.answer_ejections.saturating_add(1);
        self.failed_probes = 0;
        let delay = policy.backoff(self.answer_ejections, fraction);
        self.next_probe = Some(now + delay);
        Some(delay)
    }

    /// Whether the current ejection is for failed answers (it ends by readmission).
    pub(super) fn is_for_answers(&self) -> bool {
        self.next_probe.is_some() && self.for_answers
    }

    /// A probe (or the warm-up, which is one) failed at `now`: the next one waits one step
    /// longer. Returns how long.
    pub(super) fn probe_failed(
        &mut self,
        now: Instant,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Duration {
        self.failed_probes = self.failed_probes.saturating_add(1);
        self.last_probe = Some(now);
        let delay = self.delay(policy, fraction);
        if self.next_probe.is_some() {
            self.next_probe = Some(now + delay);
        }
        delay
    }

    /// Calls are waiting and nothing else can serve them: bring the next probe forward to `now`,
    /// or to one base back-off after the last failed probe if that is later. Returns when the
    /// next probe is due (`None` when not ejected).
    pub(super) fn hurry(&mut self, now: Instant, policy: &BackoffPolicy) -> Option<Instant> {
        let next = self.next_probe?;
        let earliest = self
            .last_probe
            .map_or(now, |last| now.max(last + policy.base));
        let due = next.min(earliest);
        self.next_probe = Some(due);
        Some(due)
    }

    /// The probe connected: the endpoint is back in the picker. The ejection count stays until
    /// a call succeeds on the new connection.
    pub(super) fn restore(&mut self) {
        self.next_probe = None;
        self.failed_probes = 0;
        self.for_answers = false;
        // A new connection, most likely to a new process: its answers start a new count.
        self.failed_answers = 0;
        self.answer_ejections = 0;
    }

    /// The back-off of an ejection for failed answers is over: back in the picker on the same
    /// connection, on probation (the failed answers are remembered, so the next one ejects it
    /// again, one step longer).
    pub(super) fn readmit(&mut self) {
        self.next_probe = None;
        self.for_answers = false;
    }

    /// Whether the endpoint is out of the picker.
    pub(super) fn is_ejected(&self) -> bool {
        self.next_probe.is_some()
    }

    /// While ejected, when the next probe may start.
    pub(super) fn next_probe(&self) -> Option<Instant> {
        self.next_probe
    }

    /// Failed calls and probes since the last success.
    pub(super) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The last failure and when it happened.
    pub(super) fn last_error(&self) -> Option<&(Instant, String)> {
        self.last_error.as_ref()
    }

    /// The wait before the next probe: none for the first probe of a first ejection, then one
    /// doubling step per earlier ejection and per failed probe.
    fn delay(&self, policy: &BackoffPolicy, fraction: f64) -> Duration {
        let step = self
            .ejections
            .saturating_sub(1)
            .saturating_add(self.failed_probes);
        if step == 0 {
            Duration::ZERO
        } else {
            policy.backoff(step, fraction)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        jitter: 0.2,
    };

    fn secs(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    #[test]
    fn the_backoff_doubles_from_one_second_to_sixty() {
        let without_jitter: Vec<u64> = (1..=9)
            .map(|step| POLICY.backoff(step, 0.0).as_secs())
            .collect();
        assert_eq!(without_jitter, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(POLICY.backoff(u32::MAX, 0.0), secs(60));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        assert_eq!(POLICY.backoff(1, 0.5), Duration::from_millis(900));
        let shortest = POLICY.backoff(7, 0.999_999);
        assert!(shortest >= secs(48) && shortest <= secs(60));
        let nonsense = BackoffPolicy {
            jitter: f64::NAN,
            ..POLICY
        };
        assert_eq!(nonsense.backoff(1, 0.5), secs(1));
    }

    #[test]
    fn the_first_probe_goes_out_at_once_and_only_failed_probes_back_off() {
        let now = Instant::now();
        let mut ejection = Ejection::default();
        ejection.record_failure(now, "reset".into());
        assert_eq!(ejection.eject(now, &POLICY, 0.0), Some(Duration::ZERO));
        assert_eq!(ejection.next_probe(), Some(now));

        let delays: Vec<u64> = (0..8)
            .map(|_| ejection.probe_failed(now, &POLICY, 0.0).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(ejection.next_probe(), Some(now + secs(60)));
        assert_eq!(
            ejection.consecutive_failures(),
            1,
            "probes record their own"
        );

        ejection.restore();
        assert!(!ejection.is_ejected());
        ejection.record_success();
        // A later outage starts from scratch: the instance restarted long ago.
        ejection.record_failure(now, "reset".into());
        assert_eq!(ejection.eject(now, &POLICY, 0.0), Some(Duration::ZERO));
    }

    #[test]
    fn failures_while_ejected_do_not_lengthen_the_ejection() {
        let now = Instant::now();
        let mut ejection = Ejection::default();
        assert_eq!(ejection.record_failure(now, "reset".into()), 1);
        ejection.eject(now, &POLICY, 0.0);
        ejection.probe_failed(now, &POLICY, 0.0);
        // Nine more calls that were in flight fail with it.
        for _ in 0..9 {
            ejection.record_failure(now, "reset".into());
            assert_eq!(ejection.eject(now, &POLICY, 0.0), None);
        }
        assert_eq!(ejection.consecutive_failures(), 10);
        assert_eq!(ejection.next_probe(), Some(now + secs(1)));
    }

    #[test]
    fn an_ejection_without_a_success_since_the_last_one_starts_further_along() {
        let now = Instant::now();
        let mut ejection = Ejection::default();
        ejection.eject(now, &POLICY, 0.0);
        ejection.probe_failed(now, &POLICY, 0.0);
        ejection.restore();

        // Back in the picker, a call fails again before any succeeded: the host accepts
        // connections but calls on them fail.
        assert_eq!(ejection.eject(now, &POLICY, 0.0), Some(secs(1)));
        assert_eq!(ejection.probe_failed(now, &POLICY, 0.0), secs(2));
        ejection.restore();
        assert_eq!(ejection.eject(now, &POLICY, 0.0), Some(secs(2)));
        ejection.restore();

        ejection.record_success();
        assert_eq!(ejection.consecutive_failures(), 0);
        ejection.record_failure(now, "reset".into());
        assert_eq!(ejection.eject(now, &POLICY, 0.0), Some(Duration::ZERO));
        assert_eq!(
            ejection.last_error().map(|(_, error)| error.as_str()),
            Some("reset")
        );
    }

    #[test]
    fn failed_answers_eject_for_a_back_off_that_doubles_until_a_success() {
        let now = Instant::now();
        let mut ejection = Ejection::default();
        let delays: Vec<u64> = (0..8)
            .map(|_| {
                let delay = ejection.eject_for_answers(now, &POLICY, 0.0);
                assert!(ejection.is_for_answers());
                assert_eq!(ejection.eject_for_answers(now, &POLICY, 0.0), None);
                ejection.readmit();
                delay.map_or(0, |delay| delay.as_secs())
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert!(!ejection.is_ejected());

        ejection.record_success();
        assert_eq!(
            ejection.eject_for_answers(now, &POLICY, 0.0),
            Some(secs(1)),
            "a success starts the back-off over"
        );
    }

    #[test]
    fn a_connection_failure_takes_over_an_ejection_for_answers() {
        let now = Instant::now();
        let mut ejection = Ejection::default();
        ejection.eject_for_answers(now, &POLICY, 0.0);
        assert_eq!(ejection.next_probe(), Some(now + secs(1)));
        // Its connection is what failed now: it needs a new one, tried at once.
        assert_eq!(ejection.eject(now, &POLICY, 0.0), Some(Duration::ZERO));
        assert!(ejection.is_ejected() && !ejection.is_for_answers());
        assert_eq!(ejection.eject_for_answers(now, &POLICY, 0.0), None);
    }

    #[test]
    fn only_failed_answers_count_towards_an_ejection_for_answers_and_a_reconnect_resets_them() {
        let now = Instant::now();
        let mut ejection = Ejection::default();
        // Ten calls die with a crashing instance; its probes fail twice.
        for _ in 0..10 {
            ejection.record_failure(now, "reset".into());
        }
        ejection.eject(now, &POLICY, 0.0);
        ejection.probe_failed(now, &POLICY, 0.0);
        ejection.probe_failed(now, &POLICY, 0.0);
        ejection.restore();
        // Back on a new connection, its first failed answer is the first of seven.
        assert_eq!(ejection.record_failed_answer(now, "UNAVAILABLE".into()), 1);
        assert_eq!(
            ejection.consecutive_failures(),
            11,
            "the snapshot still sees them all"
        );
        for _ in 2..=7 {
            ejection.record_failed_answer(now, "UNAVAILABLE".into());
        }
        assert_eq!(ejection.eject_for_answers(now, &POLICY, 0.0), Some(secs(1)));
        // Readmitted on probation, it keeps its count; a reconnect would not.
        ejection.readmit();
        assert_eq!(ejection.record_failed_answer(now, "UNAVAILABLE".into()), 8);
    }

    #[test]
    fn waiting_calls_bring_the_next_probe_forward_no_closer_than_the_base() {
        let start = Instant::now();
        let mut ejection = Ejection::default();
        assert_eq!(ejection.hurry(start, &POLICY), None, "not ejected");
        ejection.eject(start, &POLICY, 0.0);
        for _ in 0..7 {
            ejection.probe_failed(start, &POLICY, 0.0);
        }
        assert_eq!(ejection.next_probe(), Some(start + secs(60)));

        // Right after the failed probe: one base later, not at once.
        let mut soon = ejection.clone();
        let right_after = start + Duration::from_millis(300);
        assert_eq!(soon.hurry(right_after, &POLICY), Some(start + secs(1)));
        // Long after it: now.
        let later = start + secs(5);
        assert_eq!(ejection.hurry(later, &POLICY), Some(later));
        // Never later than it already was.
        assert_eq!(ejection.hurry(start + secs(9), &POLICY), Some(later));
        assert_eq!(soon.hurry(later, &POLICY), Some(start + secs(1)));
        assert_eq!(ejection.next_probe(), Some(later));
    }
}
