//! The breaker's state machines, driven by explicit instants: no test sleeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use super::*;
use crate::config::{ConfigError, Settings};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SERVICE: &str = "flotilla.product.v1.ProductService";
const METHOD: &str = "GetProduct";

fn consecutive(threshold: u32, cool_down_secs: u64, trials: u32) -> Breaker {
    Breaker::new(
        SERVICE,
        METHOD,
        &BreakerPolicy::ConsecutiveFailures {
            threshold,
            cool_down: Duration::from_secs(cool_down_secs),
            half_open_trials: trials,
        },
    )
}

fn secs(start: Instant, secs: f64) -> Instant {
    start + Duration::from_secs_f64(secs)
}

/// Makes `count` calls at `now` that all end with `outcome`.
fn calls(breaker: &Breaker, count: u32, outcome: Outcome, now: Instant) -> TestResult {
    for _ in 0..count {
        let permit = breaker.try_acquire(now)?;
        breaker.record(permit, outcome, now);
    }
    Ok(())
}

/// Trips a default-threshold (5) breaker at `now`.
fn trip(breaker: &Breaker, now: Instant) -> TestResult {
    calls(breaker, 6, Outcome::Failure, now)?;
    if breaker.try_acquire(now).is_ok() {
        return Err("the breaker should be open".into());
    }
    Ok(())
}

#[test]
fn trips_after_more_than_threshold_consecutive_failures() -> TestResult {
    let breaker = consecutive(5, 60, 1);
    let start = Instant::now();
    calls(&breaker, 5, Outcome::Failure, start)?;
    assert_eq!(breaker.snapshot(start).state, BreakerState::Closed);
    assert_eq!(breaker.snapshot(start).consecutive_failures, 5);
    calls(&breaker, 1, Outcome::Failure, start)?;
    assert_eq!(breaker.snapshot(start).state, BreakerState::Open);
    assert!(breaker.try_acquire(start).is_err());
    Ok(())
}

#[test]
fn a_success_resets_the_count_and_an_ignored_outcome_does_not() -> TestResult {
    let breaker = consecutive(5, 60, 1);
    let now = Instant::now();
    calls(&breaker, 5, Outcome::Failure, now)?;
    calls(&breaker, 1, Outcome::Success, now)?;
    calls(&breaker, 5, Outcome::Failure, now)?;
    assert_eq!(breaker.snapshot(now).state, BreakerState::Closed);

    // Neither an ignored outcome nor a dropped permit breaks the run of failures.
    calls(&breaker, 1, Outcome::Ignored, now)?;
    drop(breaker.try_acquire(now)?);
    assert_eq!(breaker.snapshot(now).consecutive_failures, 5);
    calls(&breaker, 1, Outcome::Failure, now)?;
    assert_eq!(breaker.snapshot(now).state, BreakerState::Open);
    Ok(())
}

#[test]
fn open_rejects_until_the_cool_down_ends() -> TestResult {
    let breaker = consecutive(5, 60, 1);
    let start = Instant::now();
    trip(&breaker, start)?;

    let Err(rejected) = breaker.try_acquire(secs(start, 59.5)) else {
        return Err("rejected before the cool-down ends".into());
    };
    assert_eq!(rejected.retry_after(), Duration::from_millis(500));
    assert_eq!(rejected.retry_after_secs(), 1);
    assert_eq!(
        rejected.to_string(),
        format!("circuit breaker for {SERVICE}/{METHOD} is open; retry in 1s")
    );
    let Err(rejected) = breaker.try_acquire(secs(start, 10.0)) else {
        return Err("rejected before the cool-down ends".into());
    };
    assert_eq!(rejected.retry_after_secs(), 50);

    let trial = breaker.try_acquire(secs(start, 60.0))?;
    assert_eq!(breaker.snapshot(start).state, BreakerState::HalfOpen);
    breaker.record(trial, Outcome::Success, secs(start, 60.0));
    Ok(())
}

#[test]
fn rejection_maps_to_unavailable_with_pushback() -> TestResult {
    let breaker = consecutive(5, 60, 1);
    let start = Instant::now();
    trip(&breaker, start)?;
    let Err(rejected) = breaker.try_acquire(secs(start, 30.0)) else {
        return Err("should be open".into());
    };
    assert_eq!(rejected.service(), SERVICE);
    assert_eq!(rejected.method(), METHOD);
    let status = tonic::Status::from(rejected);
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(SERVICE) && status.message().contains(METHOD));
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|value| value.to_str().ok()),
        Some("30000")
    );
    Ok(())
}

#[test]
fn half_open_allows_only_the_bounded_trials_and_a_success_closes() -> TestResult {
    for trials in [1, 3] {
        let breaker = consecutive(5, 60, trials);
        let start = Instant::now();
        trip(&breaker, start)?;
        let after = secs(start, 61.0);
        let permits = (0..trials)
            .map(|_| breaker.try_acquire(after))
            .collect::<Result<Vec<_>, _>>()?;
        let Err(busy) = breaker.try_acquire(after) else {
            return Err(format!("more than {trials} trials let through").into());
        };
        assert_eq!(busy.retry_after(), Duration::from_secs(1));

        let mut permits = permits.into_iter();
        if let Some(first) = permits.next() {
            breaker.record(first, Outcome::Success, after);
        }
        assert_eq!(breaker.snapshot(after).state, BreakerState::Closed);
        calls(&breaker, 10, Outcome::Success, after)?;
        // The other trials started in the half-open state; their answers no longer count.
        for permit in permits {
            breaker.record(permit, Outcome::Failure, after);
        }
        assert_eq!(breaker.snapshot(after).consecutive_failures, 0);
    }
    Ok(())
}

#[test]
fn a_failed_trial_reopens_with_a_fresh_cool_down() -> TestResult {
    let breaker = consecutive(5, 60, 1);
    let start = Instant::now();
    trip(&breaker, start)?;
    let trial = breaker.try_acquire(secs(start, 75.0))?;
    breaker.record(trial, Outcome::Failure, secs(start, 80.0));
    assert_eq!(breaker.snapshot(start).state, BreakerState::Open);

    let Err(rejected) = breaker.try_acquire(secs(start, 139.0)) else {
        return Err("the cool-down should start again at the failed trial".into());
    };
    assert_eq!(rejected.retry_after(), Duration::from_secs(1));
    let trial = breaker.try_acquire(secs(start, 140.0))?;
    breaker.record(trial, Outcome::Success, secs(start, 140.0));
    assert_eq!(breaker.snapshot(start).state, BreakerState::Closed);
    Ok(())
}

#[test]
fn a_dropped_or_ignored_trial_frees_its_slot() -> TestResult {
    let breaker = consecutive(5, 60, 1);
    let start = Instant::now();
    trip(&breaker, start)?;
    let after = secs(start, 60.0);

    let trial = breaker.try_acquire(after)?;
    assert!(breaker.try_acquire(after).is_err());
    drop(trial);
    let trial = breaker.try_acquire(after)?;
    breaker.record(trial, Outcome::Ignored, after);
    let trial = breaker.try_acquire(after)?;
    assert_eq!(breaker.snapshot(after).state, BreakerState::HalfOpen);
    breaker.record(trial, Outcome::Success, after);
    assert_eq!(breaker.snapshot(after).state, BreakerState::Closed);
    Ok(())
}

#[test]
fn rejections_and_stale_answers_never_count() -> TestResult {
    let breaker = consecutive(5, 60, 1);
    let start = Instant::now();
    // A slow call that began while closed and succeeds after the breaker tripped.
    let slow = breaker.try_acquire(start)?;
    trip(&breaker, start)?;
    breaker.record(slow, Outcome::Success, secs(start, 1.0));
    assert_eq!(breaker.snapshot(start).state, BreakerState::Open);

    for second in 0..60 {
        assert!(breaker.try_acquire(secs(start, f64::from(second))).is_err());
    }
    let trial = breaker.try_acquire(secs(start, 60.0))?;
    breaker.record(trial, Outcome::Success, secs(start, 60.0));
    // Sixty rejections later, the count starts from zero: five failures are still tolerated.
    assert_eq!(breaker.snapshot(start).consecutive_failures, 0);
    calls(&breaker, 5, Outcome::Failure, secs(start, 61.0))?;
    assert_eq!(breaker.snapshot(start).state, BreakerState::Closed);
    Ok(())
}

#[test]
fn codes_are_classified_as_documented() {
    for code in [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Internal,
        Code::Unknown,
        Code::ResourceExhausted,
    ] {
        assert_eq!(counts_as_failure(code), Outcome::Failure, "{code:?}");
    }
    for code in [
        Code::Ok,
        Code::NotFound,
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::AlreadyExists,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
    ] {
        assert_eq!(counts_as_failure(code), Outcome::Success, "{code:?}");
    }
    assert_eq!(counts_as_failure(Code::Cancelled), Outcome::Ignored);
}

#[test]
fn the_registry_shares_a_breaker_per_service_and_method_and_reports_transitions() -> TestResult {
    let seen: Arc<Mutex<Vec<(String, BreakerState, BreakerState)>>> = Arc::default();
    let hook_seen = Arc::clone(&seen);
    let registry = BreakerRegistry::new(BreakerConfig::default()).with_hook(Arc::new(
        move |transition: &Transition<'_>| {
            if let Ok(mut seen) = hook_seen.lock() {
                seen.push((transition.method.to_owned(), transition.from, transition.to));
            }
        },
    ));
    let start = Instant::now();
    trip(&registry.get(SERVICE, METHOD), start)?;
    // The same breaker, whichever way it is asked for; another method has its own.
    assert!(registry.get(SERVICE, METHOD).try_acquire(start).is_err());
    let path = format!("/{SERVICE}/{METHOD}");
    let by_path = registry.for_path(&path).ok_or("a gRPC path")?;
    assert!(by_path.try_acquire(start).is_err());
    assert!(registry.for_path("no-slash").is_none());
    assert!(
        registry
            .get(SERVICE, "ListProducts")
            .try_acquire(start)
            .is_ok()
    );

    let trial = by_path.try_acquire(secs(start, 60.0))?;
    by_path.record(trial, Outcome::Success, secs(start, 60.0));

    let snapshot = registry.snapshot(start);
    let names: Vec<_> = snapshot.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(names, ["GetProduct", "ListProducts"]);
    assert!(snapshot.iter().all(|s| s.state == BreakerState::Closed));

    let seen = seen.lock().map_err(|_| "poisoned")?.clone();
    let expected = [
        (BreakerState::Closed, BreakerState::Open),
        (BreakerState::Open, BreakerState::HalfOpen),
        (BreakerState::HalfOpen, BreakerState::Closed),
    ]
    .map(|(from, to)| (METHOD.to_owned(), from, to));
    assert_eq!(seen, expected);
    Ok(())
}

#[test]
fn settings_choose_the_policy() -> TestResult {
    let defaults = BreakerConfig::from_settings(&Settings::from_pairs(Vec::<(&str, &str)>::new()))?;
    assert_eq!(defaults.policy, BreakerPolicy::consecutive_failures());

    let consecutive = BreakerConfig::from_settings(&Settings::from_pairs([
        ("FLOTILLA_BREAKER_FAILURES", "3"),
        ("FLOTILLA_BREAKER_COOL_DOWN", "15s"),
    ]))?;
    assert_eq!(
        consecutive.policy,
        BreakerPolicy::ConsecutiveFailures {
            threshold: 3,
            cool_down: Duration::from_secs(15),
            half_open_trials: 1,
        }
    );

    let adaptive = BreakerConfig::from_settings(&Settings::from_pairs([
        ("FLOTILLA_BREAKER", "Adaptive"),
        ("FLOTILLA_BREAKER_K", "2"),
    ]))?;
    assert_eq!(
        adaptive.policy,
        BreakerPolicy::Adaptive {
            k: 2.0,
            window: Duration::from_secs(10),
            buckets: 10,
            min_requests: 20,
        }
    );

    for (name, value) in [
        ("FLOTILLA_BREAKER", "sometimes"),
        ("FLOTILLA_BREAKER_FAILURES", "0"),
        ("FLOTILLA_BREAKER_COOL_DOWN", "60"),
        ("FLOTILLA_BREAKER_COOL_DOWN", "0s"),
        ("FLOTILLA_BREAKER_COOL_DOWN", "300000000years"),
        ("FLOTILLA_BREAKER_K", "0.5"),
        ("FLOTILLA_BREAKER_K", "fast"),
        ("FLOTILLA_BREAKER_K", "NaN"),
    ] {
        match BreakerConfig::from_settings(&Settings::from_pairs([(name, value)])) {
            Err(ConfigError::Invalid { name: reported, .. }) => assert_eq!(reported, name),
            other => return Err(format!("{name}={value}: {other:?}").into()),
        }
    }
    Ok(())
}

#[test]
fn one_upstream_can_be_tuned_apart_from_the_others() -> TestResult {
    let settings = Settings::from_pairs([
        ("FLOTILLA_BREAKER_FAILURES", "3"),
        ("FLOTILLA_PRODUCT_BREAKER_FAILURES", "10"),
        ("FLOTILLA_PRODUCT_BREAKER_COOL_DOWN", "5s"),
    ]);
    let threshold_and_cool_down = |config: BreakerConfig| match config.policy {
        BreakerPolicy::ConsecutiveFailures {
            threshold,
            cool_down,
            ..
        } => Some((threshold, cool_down.as_secs())),
        BreakerPolicy::Adaptive { .. } => None,
    };
    let product = BreakerConfig::for_upstream(&settings, "product")?;
    assert_eq!(threshold_and_cool_down(product), Some((10, 5)));
    let user = BreakerConfig::for_upstream(&settings, "user")?;
    assert_eq!(threshold_and_cool_down(user), Some((3, 60)));

    let bad = Settings::from_pairs([("FLOTILLA_AUTH_BREAKER_K", "0.2")]);
    match BreakerConfig::for_upstream(&bad, "auth") {
        Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, "FLOTILLA_AUTH_BREAKER_K"),
        other => return Err(format!("{other:?}").into()),
    }
    Ok(())
}

// --- adaptive throttling

/// A random source whose every draw is the value last stored in the returned cell.
fn fixed_draw(value: f64) -> (RandomSource, Arc<AtomicU64>) {
    let cell = Arc::new(AtomicU64::new(value.to_bits()));
    let source = Arc::clone(&cell);
    (
        Box::new(move || f64::from_bits(source.load(Ordering::Relaxed))),
        cell,
    )
}

fn set_draw(cell: &AtomicU64, value: f64) {
    cell.store(value.to_bits(), Ordering::Relaxed);
}

/// The default adaptive policy (K 1.5, 10 s in 10 buckets, at least 20 requests).
fn adaptive(draw: f64) -> (Breaker, Arc<AtomicU64>) {
    let (random, cell) = fixed_draw(draw);
    (
        Breaker::with_random(SERVICE, METHOD, &BreakerPolicy::adaptive(), random),
        cell,
    )
}

fn probability(breaker: &Breaker, now: Instant) -> f64 {
    breaker.snapshot(now).reject_probability
}

fn close_to(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-12
}

#[test]
fn adaptive_never_rejects_below_the_minimum_of_requests() -> TestResult {
    // A draw of 0 rejects whenever the probability is above 0.
    let (breaker, _) = adaptive(0.0);
    let now = Instant::now();
    calls(&breaker, 19, Outcome::Failure, now)?;
    assert_eq!(probability(&breaker, now), 0.0);
    calls(&breaker, 1, Outcome::Failure, now)?;
    assert!(close_to(probability(&breaker, now), 20.0 / 21.0));
    assert!(breaker.try_acquire(now).is_err());
    Ok(())
}

#[test]
fn adaptive_probability_follows_the_formula() -> TestResult {
    let (breaker, draw) = adaptive(0.999);
    let now = Instant::now();
    // 20 requests, 10 accepts: (20 − 15) / 21.
    calls(&breaker, 10, Outcome::Success, now)?;
    calls(&breaker, 10, Outcome::Failure, now)?;
    let expected = 5.0 / 21.0;
    assert!(close_to(probability(&breaker, now), expected));
    let snapshot = breaker.snapshot(now);
    assert_eq!((snapshot.requests, snapshot.accepts), (20, 10));

    // A draw just under the probability rejects; one just over lets the call through.
    set_draw(&draw, expected + 1e-9);
    breaker.record(breaker.try_acquire(now)?, Outcome::Ignored, now);
    set_draw(&draw, expected - 1e-9);
    assert!(breaker.try_acquire(now).is_err());
    assert_eq!(breaker.snapshot(now).state, BreakerState::Throttling);

    // 21 requests (one rejected), 10 accepts; then 30 accepts of 41: (41 − 45) / 42 < 0.
    assert!(close_to(probability(&breaker, now), (21.0 - 15.0) / 22.0));
    set_draw(&draw, 0.999);
    calls(&breaker, 20, Outcome::Success, now)?;
    assert_eq!(probability(&breaker, now), 0.0);
    breaker.record(breaker.try_acquire(now)?, Outcome::Success, now);
    assert_eq!(breaker.snapshot(now).state, BreakerState::Closed);
    Ok(())
}

#[test]
fn adaptive_rejections_count_as_requests_but_not_accepts() -> TestResult {
    let (breaker, _) = adaptive(0.0);
    let now = Instant::now();
    calls(&breaker, 20, Outcome::Failure, now)?;
    for _ in 0..10 {
        assert!(breaker.try_acquire(now).is_err());
    }
    let snapshot = breaker.snapshot(now);
    assert_eq!((snapshot.requests, snapshot.accepts), (30, 0));
    assert!(close_to(snapshot.reject_probability, 30.0 / 31.0));
    // Ignored calls and dropped permits are not counted at all.
    let (breaker, _) = adaptive(0.999);
    breaker.record(breaker.try_acquire(now)?, Outcome::Ignored, now);
    drop(breaker.try_acquire(now)?);
    assert_eq!(breaker.snapshot(now).requests, 0);
    Ok(())
}

#[test]
fn adaptive_window_rolls_old_buckets_off() -> TestResult {
    let (breaker, _) = adaptive(0.999);
    let start = Instant::now();
    calls(&breaker, 20, Outcome::Failure, start)?;
    calls(&breaker, 20, Outcome::Success, secs(start, 5.0))?;
    let snapshot = breaker.snapshot(secs(start, 9.9));
    assert_eq!((snapshot.requests, snapshot.accepts), (40, 20));
    // Ten seconds on, the first bucket has rolled off; fifteen on, the second too.
    let snapshot = breaker.snapshot(secs(start, 10.0));
    assert_eq!((snapshot.requests, snapshot.accepts), (20, 20));
    let snapshot = breaker.snapshot(secs(start, 15.0));
    assert_eq!((snapshot.requests, snapshot.accepts), (0, 0));
    // A long silence empties everything, however many windows it spans.
    calls(&breaker, 5, Outcome::Failure, secs(start, 16.0))?;
    assert_eq!(breaker.snapshot(secs(start, 1_000.0)).requests, 0);
    Ok(())
}

#[test]
fn adaptive_never_rejects_traffic_that_succeeds() -> TestResult {
    let (breaker, _) = adaptive(0.0);
    let start = Instant::now();
    for tick in 0..2_000 {
        let now = secs(start, f64::from(tick) * 0.01);
        let permit = breaker
            .try_acquire(now)
            .map_err(|rejected| format!("rejected at tick {tick}: {rejected}"))?;
        breaker.record(permit, Outcome::Success, now);
    }
    assert_eq!(
        breaker.snapshot(secs(start, 20.0)).state,
        BreakerState::Closed
    );
    Ok(())
}

#[test]
fn adaptive_probability_decays_to_zero_once_failures_stop() -> TestResult {
    let (breaker, _) = adaptive(0.999);
    let start = Instant::now();
    calls(&breaker, 30, Outcome::Failure, start)?;
    let mut previous = probability(&breaker, start);
    assert!(close_to(previous, 30.0 / 31.0));
    // The upstream recovers: five successes a second.
    for second in 1..10 {
        let now = secs(start, f64::from(second));
        calls(&breaker, 5, Outcome::Success, now)?;
        let current = probability(&breaker, now);
        assert!(
            current < previous,
            "second {second}: {current} ≥ {previous}"
        );
        previous = current;
    }
    assert!(previous > 0.0);
    assert_eq!(probability(&breaker, secs(start, 10.0)), 0.0);
    Ok(())
}
