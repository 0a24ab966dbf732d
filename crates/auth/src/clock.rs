//! The auth service's clock, injected so tests control time without sleeping: token issue and
//! expiry, refresh-token lifetimes, the failed-login windows and the previous key's grace period
//! all read the time through a [`Clock`].
//!
//! One thing does not: the expiry check of access tokens inside `platform::auth::Verifier`
//! (jsonwebtoken reads the system clock). Tests that move a [`ManualClock`] therefore start it at
//! the real time and only move it forward, and make expired access tokens by signing them directly.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Where the service reads the current time, in microseconds since the Unix epoch (the unit the
/// database stores; see `platform::time`).
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in microseconds since the Unix epoch.
    fn now_micros(&self) -> i64;
}

/// The system clock: what the service uses outside tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        platform::time::now_micros()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now_us: AtomicI64,
}

impl ManualClock {
    /// A clock standing at `now_us` microseconds since the epoch.
    pub fn at(now_us: i64) -> Self {
        Self {
            now_us: AtomicI64::new(now_us),
        }
    }

    /// A clock standing at the real current time.
    pub fn starting_now() -> Self {
        Self::at(platform::time::now_micros())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now_us.fetch_add(micros(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.now_us.load(Ordering::SeqCst)
    }
}

/// A duration in whole microseconds, saturating (durations come from settings, which cap nothing).
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(1_000);
        assert_eq!(clock.now_micros(), 1_000);
        clock.advance(Duration::from_millis(2));
        assert_eq!(clock.now_micros(), 3_000);
        assert_eq!(micros(Duration::MAX), i64::MAX);
    }
}
