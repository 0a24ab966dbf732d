//! The load estimate the picker compares: a peak-EWMA of response latency, multiplied by the calls
//! in flight (Finagle's `PeakEwma`, as in linkerd2-proxy and go-zero's p2c picker).
//!
//! "Peak" means the estimate is pessimistic: a sample above it replaces it at once, so one slow
//! answer moves traffic away immediately; a sample below it only blends in with weight
//! `1 - exp(-elapsed / τ)`, where `elapsed` is the time since the previous update. Weighting by
//! elapsed time rather than by sample count makes the estimate forget at the same speed whatever
//! the call rate: after `τ` of steady samples, about 63 % of the old value is gone.
//!
//! Everything takes the current instant as an argument, so the arithmetic is tested without a
//! clock.

use std::time::Duration;

use tokio::time::Instant;

/// A peak-EWMA latency estimate, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PeakEwma {
    estimate: f64,
    updated_at: Instant,
}

impl PeakEwma {
    /// An estimate that starts at `initial`.
    pub(super) fn new(initial: Duration, now: Instant) -> Self {
        Self {
            estimate: initial.as_secs_f64(),
            updated_at: now,
        }
    }

    /// The current estimate.
    pub(super) fn estimate(&self) -> Duration {
        Duration::try_from_secs_f64(self.estimate).unwrap_or(Duration::MAX)
    }

    /// Folds in one latency sample taken at `now`, with decay time `decay` (τ).
    pub(super) fn observe(&mut self, sample: Duration, now: Instant, decay: Duration) {
        let sample = sample.as_secs_f64();
        if sample > self.estimate {
            self.estimate = sample;
        } else {
            let weight = decay_weight(now.saturating_duration_since(self.updated_at), decay);
            self.estimate = self.estimate * weight + sample * (1.0 - weight);
        }
        self.updated_at = now;
    }

    /// Folds in a lower bound: a call given up on (cancelled, or past its deadline) after
    /// `waited` took at least that long. It can only raise the estimate, never lower it, which
    /// keeps an instance that swallows calls from looking fast because its calls never finish.
    pub(super) fn observe_at_least(&mut self, waited: Duration, now: Instant) {
        let waited = waited.as_secs_f64();
        if waited > self.estimate {
            self.estimate = waited;
            self.updated_at = now;
        }
    }
}

/// How much of the old estimate survives `elapsed`: `exp(-elapsed / τ)`; nothing when τ is zero.
pub(super) fn decay_weight(elapsed: Duration, decay: Duration) -> f64 {
    let tau = decay.as_secs_f64();
    if tau > 0.0 {
        (-elapsed.as_secs_f64() / tau).exp()
    } else {
        0.0
    }
}

/// What sending one more call to an endpoint is expected to cost: `latency × (in_flight + 1)`.
///
/// The `+ 1` counts the call being placed, so an idle endpoint still compares by latency; the
/// latency has a floor of 1 ns so a (theoretical) zero estimate does not make every load equal.
pub(super) fn cost(latency: Duration, in_flight: usize) -> f64 {
    let latency = latency.as_secs_f64().max(1e-9);
    let load = (in_flight as f64) + 1.0;
    latency * load
}

/// Where a new endpoint's estimate starts: the mean of the estimates already known, so it competes
/// at once as an average peer (a large default would starve it, a small one would flood it), or
/// `default` when there is nothing to compare with.
pub(super) fn initial_estimate(known: &[Duration], default: Duration) -> Duration {
    if known.is_empty() {
        return default;
    }
    let total: f64 = known.iter().map(Duration::as_secs_f64).sum();
    let mean = total / known.len() as f64;
    Duration::try_from_secs_f64(mean).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn close(left: Duration, right: Duration) -> bool {
        left.abs_diff(right) < Duration::from_micros(1)
    }

    #[test]
    fn a_sample_above_the_estimate_replaces_it_at_once() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(ms(10), start);
        // Even with no time elapsed (a zero weight for the new sample in a plain EWMA).
        ewma.observe(ms(250), start, TAU);
        assert_eq!(ewma.estimate(), ms(250));
    }

    #[test]
    fn a_sample_below_decays_in_with_the_elapsed_time() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(ms(100), start);

        // One τ later, exp(-1) of the old value is left: 100·e⁻¹ + 10·(1 − e⁻¹).
        ewma.observe(ms(10), start + TAU, TAU);
        let weight = (-1.0_f64).exp();
        let expected = Duration::from_secs_f64(0.100 * weight + 0.010 * (1.0 - weight));
        assert!(close(ewma.estimate(), expected), "{:?}", ewma.estimate());

        // A sample at the same instant as the last update changes nothing.
        let before = ewma.estimate();
        ewma.observe(ms(1), start + TAU, TAU);
        assert_eq!(ewma.estimate(), before);
    }

    #[test]
    fn forgetting_depends_on_time_not_on_the_number_of_samples() {
        let start = Instant::now();
        let mut one_sample = PeakEwma::new(ms(100), start);
        one_sample.observe(ms(10), start + TAU, TAU);

        let mut many_samples = PeakEwma::new(ms(100), start);
        for step in 1..=1000 {
            many_samples.observe(ms(10), start + TAU * step / 1000, TAU);
        }
        assert!(
            one_sample.estimate().abs_diff(many_samples.estimate()) < Duration::from_micros(10),
            "{:?} vs {:?}",
            one_sample.estimate(),
            many_samples.estimate()
        );
    }

    #[test]
    fn a_long_quiet_spell_lets_the_next_sample_take_over() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(ms(500), start);
        ewma.observe(ms(2), start + TAU * 100, TAU);
        assert!(close(ewma.estimate(), ms(2)), "{:?}", ewma.estimate());
    }

    #[test]
    fn a_zero_decay_takes_every_sample_as_it_is() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(ms(500), start);
        ewma.observe(ms(2), start, Duration::ZERO);
        assert_eq!(ewma.estimate(), ms(2));
    }

    #[test]
    fn a_lower_bound_only_raises_the_estimate() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(ms(20), start);
        ewma.observe_at_least(ms(5), start + ms(1));
        assert_eq!(ewma.estimate(), ms(20));
        ewma.observe_at_least(ms(900), start + ms(2));
        assert_eq!(ewma.estimate(), ms(900));
    }

    #[test]
    fn cost_is_latency_times_in_flight_plus_one() {
        assert!((cost(ms(10), 0) - 0.010).abs() < 1e-12);
        assert!((cost(ms(10), 3) - 0.040).abs() < 1e-12);
        // A fast but busy endpoint costs more than a slower idle one…
        assert!(cost(ms(1), 9) > cost(ms(5), 0));
        // …and a slow one stays worse than a fast one with a few calls queued.
        assert!(cost(ms(30), 0) > cost(ms(1), 20));
        // A zero estimate still ranks by load.
        assert!(cost(Duration::ZERO, 2) > cost(Duration::ZERO, 1));
    }

    #[test]
    fn a_new_endpoint_starts_at_the_mean_of_the_others() {
        assert_eq!(initial_estimate(&[], ms(7)), ms(7));
        let mean = initial_estimate(&[ms(10), ms(30)], ms(7));
        assert!(close(mean, ms(20)), "{mean:?}");
    }
}
