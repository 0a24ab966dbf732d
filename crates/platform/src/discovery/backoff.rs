//! How long to wait after failed calls to a registry: exponential back-off with full jitter
//! (Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015), so clients that
//! failed together (a registry restart) do not all come back in the same instant.
//!
//! Shared by every backend's retry loops (Consul's watch, etcd's watch and lease keeper) and by the
//! announcer.

use std::time::Duration;

/// Shortest wait after a failed call.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait after failed calls.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A random wait up to min([`MAX_BACKOFF`], [`MIN_BACKOFF`] · 2^(failures-1)), and never below half of
/// [`MIN_BACKOFF`], so a registry that refuses at once is not hammered.
pub(crate) fn backoff(failures: u32) -> Duration {
    backoff_up_to(failures, MAX_BACKOFF)
}

/// [`backoff`] with a lower ceiling than [`MAX_BACKOFF`]: for retries that must land within a
/// deadline, such as renewing a lease before its time-to-live runs out.
pub(crate) fn backoff_up_to(failures: u32, ceiling: Duration) -> Duration {
    let ceiling = MIN_BACKOFF
        .saturating_mul(1_u32 << failures.saturating_sub(1).min(10))
        .min(MAX_BACKOFF)
        .min(ceiling);
    let mut byte = [0_u8; 2];
    let fraction = match getrandom::fill(&mut byte) {
        Ok(()) => f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX),
        Err(_) => 1.0,
    };
    ceiling
        .mul_f64(fraction)
        .max((MIN_BACKOFF / 2).min(ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_never_below_half_the_floor() {
        for failures in 1..20 {
            let wait = backoff(failures);
            assert!(
                wait >= MIN_BACKOFF / 2 && wait <= MAX_BACKOFF,
                "{failures}: {wait:?}"
            );
        }
    }

    #[test]
    fn a_lower_ceiling_caps_every_wait() {
        let ceiling = Duration::from_millis(300);
        for failures in 1..20 {
            let wait = backoff_up_to(failures, ceiling);
            assert!(wait <= ceiling, "{failures}: {wait:?}");
            assert!(wait >= ceiling.min(MIN_BACKOFF / 2), "{failures}: {wait:?}");
        }
    }
}
