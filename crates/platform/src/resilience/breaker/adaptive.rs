//! Google SRE client-side adaptive throttling over a rolling window of buckets.

use std::time::Duration;

use tokio::time::Instant;

use super::consecutive::Change;
use super::{BreakerState, Outcome, RandomSource};

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    accepts: u64,
}

pub(super) struct Adaptive {
    k: f64,
    min_requests: u64,
    bucket_length: Duration,
    buckets: Vec<Bucket>,
    /// The instant bucket 0 starts at: the first instant this breaker saw.
    origin: Option<Instant>,
    /// The absolute number of the newest bucket, counted from `origin`.
    current: u64,
    random: RandomSource,
    throttling: bool,
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("k", &self.k)
            .field("min_requests", &self.min_requests)
            .field("bucket_length", &self.bucket_length)
            .field("buckets", &self.buckets)
            .field("throttling", &self.throttling)
            .finish_non_exhaustive()
    }
}

impl Adaptive {
    pub(super) fn new(
        k: f64,
        window: Duration,
        buckets: u32,
        min_requests: u32,
        random: RandomSource,
    ) -> Self {
        let buckets = buckets.max(1);
        Self {
            k,
            min_requests: u64::from(min_requests),
            bucket_length: (window / buckets).max(Duration::from_nanos(1)),
            buckets: vec![Bucket::default(); buckets as usize],
            origin: None,
            current: 0,
            random,
            throttling: false,
        }
    }

    /// Lets the call through, or rejects it (counting it as a request that was not accepted, which
    /// is what keeps the rejection probability up while the upstream keeps failing).
    pub(super) fn acquire(&mut self, now: Instant) -> (Result<(), Duration>, Option<Change>) {
        let probability = self.probability(now);
        let change = self.note_throttling(probability > 0.0);
        if probability > 0.0 && (self.random)() < probability {
            self.bucket(now).requests += 1;
            return (Err(self.bucket_length), change);
        }
        (Ok(()), change)
    }

    /// Counts a finished call: a request, and an accept when it succeeded. An ignored call is not
    /// counted at all: it says nothing about the upstream.
    pub(super) fn complete(&mut self, outcome: Outcome, now: Instant) {
        let accepted = match outcome {
            Outcome::Success => true,
            Outcome::Failure => false,
            Outcome::Ignored => return,
        };
        let bucket = self.bucket(now);
        bucket.requests += 1;
        if accepted {
            bucket.accepts += 1;
        }
    }

    /// The rejection probability at `now`: zero below the minimum of requests.
    pub(super) fn probability(&mut self, now: Instant) -> f64 {
        let (requests, accepts) = self.totals(now);
        if requests < self.min_requests {
            return 0.0;
        }
        let requests = requests as f64;
        ((requests - self.k * accepts as f64) / (requests + 1.0)).max(0.0)
    }

    /// `(requests, accepts)` over the window ending at `now`.
    pub(super) fn totals(&mut self, now: Instant) -> (u64, u64) {
        self.roll(now);
        self.buckets
            .iter()
            .fold((0, 0), |(requests, accepts), bucket| {
                (requests + bucket.requests, accepts + bucket.accepts)
            })
    }

    pub(super) fn state(&self) -> BreakerState {
        if self.throttling {
            BreakerState::Throttling
        } else {
            BreakerState::Closed
        }
    }

    fn note_throttling(&mut self, throttling: bool) -> Option<Change> {
        if throttling == self.throttling {
            return None;
        }
        let from = self.state();
        self.throttling = throttling;
        Some((from, self.state()))
    }

    /// The bucket `now` falls in. An instant older than the newest bucket (callers read the clock
    /// before taking the lock, so they may arrive slightly out of order) counts in the newest.
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        self.roll(now);
        let length = self.buckets.len() as u64;
        &mut self.buckets[(self.current % length) as usize]
    }

    /// Empties the buckets that fell out of the window since the last call.
    fn roll(&mut self, now: Instant) {
        let origin = *self.origin.get_or_insert(now);
        let number = (now.saturating_duration_since(origin).as_nanos()
            / self.bucket_length.as_nanos()) as u64;
        if number <= self.current {
            return;
        }
        let length = self.buckets.len() as u64;
        let stale = (number - self.current).min(length);
        for step in 1..=stale {
            self.buckets[((self.current + step) % length) as usize] = Bucket::default();
        }
        self.current = number;
    }
}
