//! Taking an endpoint out of the picker after it failed, and the back-off before it is tried
//! again.
//!
//! The state is the one Envoy's outlier detection keeps per host: consecutive failures, how many
//! times in a row the host has been ejected (so each ejection lasts longer), and until when the
//! current one runs. Today a transport failure ejects at once; an "eject after N consecutive
//! failed calls" rule needs nothing more than [`Ejection::record_failure`]'s count.

use std::time::Duration;

use tokio::time::Instant;

/// How long the back-off after a failure lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BackoffPolicy {
    /// The first ejection's length.
    pub(super) base: Duration,
    /// The longest ejection.
    pub(super) max: Duration,
    /// The fraction, in `[0, 1]`, by which a back-off may randomly be shortened.
    pub(super) jitter: f64,
}

impl BackoffPolicy {
    /// The length of the `ejections`-th ejection in a row (1 for the first): `base · 2^(n-1)`,
    /// capped at `max`, shortened by up to `jitter` of itself according to `fraction` in `[0, 1)`.
    /// Shortening (rather than lengthening) keeps `max` a true bound; randomising at all keeps
    /// many clients that saw the same failure from retrying in step.
    pub(super) fn backoff(&self, ejections: u32, fraction: f64) -> Duration {
        let doublings = ejections.saturating_sub(1).min(31);
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
    /// Failed calls since the last success.
    consecutive_failures: u32,
    /// Ejections since the last success, which set the next back-off.
    ejections: u32,
    /// When the current ejection ends (the endpoint is then probed), if ejected.
    until: Option<Instant>,
    /// The last failure and when it happened.
    last_error: Option<(Instant, String)>,
}

impl Ejection {
    /// A call succeeded: the slate is wiped, and the next ejection starts at the base back-off.
    pub(super) fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.ejections = 0;
    }

    /// A call failed at `now` with `error`; returns the consecutive failures so far.
    pub(super) fn record_failure(&mut self, now: Instant, error: String) -> u32 {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some((now, error));
        self.consecutive_failures
    }

    /// Ejects the endpoint from `now` and returns for how long, or `None` when it already is
    /// ejected: calls that were in flight when it failed fail together, and they must not stretch
    /// one outage into a 60-second ejection.
    pub(super) fn eject(
        &mut self,
        now: Instant,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Option<Duration> {
        if self.until.is_some() {
            return None;
        }
        self.ejections = self.ejections.saturating_add(1);
        let backoff = policy.backoff(self.ejections, fraction);
        self.until = Some(now + backoff);
        Some(backoff)
    }

    /// The probe at the end of an ejection failed: the endpoint stays out for the next, longer,
    /// back-off.
    pub(super) fn extend(
        &mut self,
        now: Instant,
        policy: &BackoffPolicy,
        fraction: f64,
    ) -> Duration {
        self.until = None;
        self.eject(now, policy, fraction).unwrap_or(policy.base)
    }

    /// The probe succeeded: the endpoint is back in the picker. The ejection count stays until a
    /// call succeeds, so a host that accepts connections but fails calls backs off further.
    pub(super) fn restore(&mut self) {
        self.until = None;
    }

    /// Whether the endpoint is out of the picker.
    pub(super) fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// When the current ejection ends.
    pub(super) fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Failed calls since the last success.
    pub(super) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The last failure and when it happened.
    pub(super) fn last_error(&self) -> Option<&(Instant, String)> {
        self.last_error.as_ref()
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

    #[test]
    fn the_backoff_doubles_from_one_second_to_sixty() {
        let without_jitter: Vec<u64> = (1..=9)
            .map(|ejections| POLICY.backoff(ejections, 0.0).as_secs())
            .collect();
        assert_eq!(without_jitter, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(POLICY.backoff(u32::MAX, 0.0), Duration::from_secs(60));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        assert_eq!(POLICY.backoff(1, 0.5), Duration::from_millis(900));
        let shortest = POLICY.backoff(7, 0.999_999);
        assert!(shortest >= Duration::from_secs(48) && shortest <= Duration::from_secs(60));
        let nonsense = BackoffPolicy {
            jitter: f64::NAN,
            ..POLICY
        };
        assert_eq!(nonsense.backoff(1, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn failures_while_ejected_do_not_lengthen_the_ejection() {
        let now = Instant::now();
        let mut ejection = Ejection::default();
        assert_eq!(ejection.record_failure(now, "reset".into()), 1);
        assert_eq!(
            ejection.eject(now, &POLICY, 0.0),
            Some(Duration::from_secs(1))
        );
        // Nine more calls that were in flight fail with it.
        for _ in 0..9 {
            ejection.record_failure(now, "reset".into());
            assert_eq!(ejection.eject(now, &POLICY, 0.0), None);
        }
        assert_eq!(ejection.consecutive_failures(), 10);
        assert_eq!(ejection.until(), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn failed_probes_double_the_backoff_and_a_success_resets_it() {
        let now = Instant::now();
        let mut ejection = Ejection::default();
        ejection.record_failure(now, "refused".into());
        ejection.eject(now, &POLICY, 0.0);
        assert_eq!(ejection.extend(now, &POLICY, 0.0), Duration::from_secs(2));
        assert_eq!(ejection.extend(now, &POLICY, 0.0), Duration::from_secs(4));
        ejection.restore();
        assert!(!ejection.is_ejected());

        // Back in the picker, a failing call ejects for longer still: the host accepts
        // connections but calls on it keep failing.
        ejection.record_failure(now, "reset".into());
        assert_eq!(
            ejection.eject(now, &POLICY, 0.0),
            Some(Duration::from_secs(8))
        );
        ejection.restore();

        ejection.record_success();
        assert_eq!(ejection.consecutive_failures(), 0);
        ejection.record_failure(now, "reset".into());
        assert_eq!(
            ejection.eject(now, &POLICY, 0.0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            ejection.last_error().map(|(_, error)| error.as_str()),
            Some("reset")
        );
    }
}
