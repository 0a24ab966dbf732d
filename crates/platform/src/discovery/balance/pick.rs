//! Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing",
//! 2001): draw two endpoints at random and send the call to the cheaper one. Comparing two random
//! endpoints instead of scanning for the cheapest keeps a herd of clients with the same stale view
//! from all piling onto the one endpoint that looked best.
//!
//! Two additions:
//! - ejected endpoints are left out of the draw while any other endpoint is available;
//! - go-zero's `forcePick`: when the costlier of the two has not been picked for `force_pick_after`
//!   (or never), it is picked anyway. A peak-EWMA estimate only moves when calls complete, so
//!   without this an endpoint that once looked slow, or a new one, could wait a long time for the
//!   call that would show it is fast now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// What the picker knows about one endpoint at the moment of a pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Candidate {
    /// [`super::ewma::cost`] of one more call.
    pub(super) cost: f64,
    /// Whether the endpoint is ejected.
    pub(super) ejected: bool,
    /// When it was last picked; `None` for never.
    pub(super) last_picked: Option<Instant>,
}

/// The index of the endpoint to call, or `None` when every candidate is ejected (or there are
/// none). `random` supplies the two draws.
pub(super) fn choose(
    candidates: &[Candidate],
    random: [u64; 2],
    now: Instant,
    force_pick_after: Duration,
) -> Option<usize> {
    let available = || {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, candidate)| !candidate.ejected)
            .map(|(index, _)| index)
    };
    let count = available().count();
    if count < 2 {
        return available().next();
    }
    let count = count as u64;
    // Two distinct positions among the available ones: the second skips over the first.
    let first = random[0] % count;
    let mut second = random[1] % (count - 1);
    if second >= first {
        second += 1;
    }
    let first = available().nth(usize::try_from(first).ok()?)?;
    let second = available().nth(usize::try_from(second).ok()?)?;

    let (cheaper, costlier) = if candidates[second].cost < candidates[first].cost {
        (second, first)
    } else {
        (first, second)
    };
    let neglected = candidates[costlier]
        .last_picked
        .is_none_or(|picked| now.saturating_duration_since(picked) > force_pick_after);
    Some(if neglected { costlier } else { cheaper })
}

/// A small, lock-free source of random numbers for the draws and for jitter (SplitMix64, Steele
/// et al., "Fast splittable pseudorandom number generators", 2014). Load balancing needs spread,
/// not secrecy; the seed comes from the operating system so clients do not draw in step.
#[derive(Debug)]
pub(super) struct Random(AtomicU64);

impl Random {
    /// A generator seeded from the operating system (or the clock, should that fail).
    pub(super) fn from_entropy() -> Self {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64)
        });
        Self::seeded(seed)
    }

    /// A generator with a fixed seed.
    pub(super) fn seeded(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// The next 64 random bits.
    pub(super) fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform fraction in `[0, 1)`.
    pub(super) fn fraction(&self) -> f64 {
        // The top 53 bits fill an f64's mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORCE: Duration = Duration::from_secs(1);

    fn candidate(cost: f64, ejected: bool, last_picked: Option<Instant>) -> Candidate {
        Candidate {
            cost,
            ejected,
            last_picked,
        }
    }

    #[test]
    fn nothing_to_pick_without_an_available_endpoint() {
        let now = Instant::now();
        assert_eq!(choose(&[], [1, 2], now, FORCE), None);
        let all_ejected = [
            candidate(1.0, true, Some(now)),
            candidate(1.0, true, Some(now)),
        ];
        assert_eq!(choose(&all_ejected, [1, 2], now, FORCE), None);
    }

    #[test]
    fn an_ejected_endpoint_is_never_picked_while_another_is_available() {
        let now = Instant::now();
        let random = Random::seeded(7);
        // The ejected one is far cheaper and long neglected: it still loses.
        let candidates = [
            candidate(0.001, true, None),
            candidate(9.0, false, Some(now)),
            candidate(0.002, true, None),
        ];
        for _ in 0..1000 {
            let draws = [random.next_u64(), random.next_u64()];
            assert_eq!(choose(&candidates, draws, now, FORCE), Some(1));
        }
    }

    #[test]
    fn the_cheaper_of_the_two_wins() {
        let now = Instant::now();
        let candidates = [
            candidate(0.050, false, Some(now)),
            candidate(0.010, false, Some(now)),
        ];
        assert_eq!(choose(&candidates, [0, 0], now, FORCE), Some(1));
        assert_eq!(choose(&candidates, [1, 0], now, FORCE), Some(1));
    }

    #[test]
    fn a_neglected_costlier_endpoint_is_picked_anyway() {
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(2);
        let recently = now - Duration::from_millis(500);
        let neglected = [
            candidate(0.050, false, Some(long_ago)),
            candidate(0.010, false, Some(now)),
        ];
        assert_eq!(choose(&neglected, [0, 0], now, FORCE), Some(0));
        let never_picked = [
            candidate(0.050, false, None),
            candidate(0.010, false, Some(now)),
        ];
        assert_eq!(choose(&never_picked, [0, 0], now, FORCE), Some(0));
        let picked_recently = [
            candidate(0.050, false, Some(recently)),
            candidate(0.010, false, Some(now)),
        ];
        assert_eq!(choose(&picked_recently, [0, 0], now, FORCE), Some(1));
    }

    #[test]
    fn equal_endpoints_share_the_calls() {
        let now = Instant::now();
        let random = Random::seeded(42);
        let candidates = [candidate(0.01, false, Some(now)); 4];
        let mut counts = [0_u32; 4];
        for _ in 0..4000 {
            let draws = [random.next_u64(), random.next_u64()];
            if let Some(index) = choose(&candidates, draws, now, FORCE) {
                counts[index] += 1;
            }
        }
        assert_eq!(counts.iter().sum::<u32>(), 4000);
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn the_two_draws_are_distinct_endpoints() {
        let now = Instant::now();
        // Only one endpoint is cheap; if both draws could land on the same expensive one, it
        // would sometimes win. With two distinct draws out of two, the cheap one always wins.
        let candidates = [
            candidate(0.01, false, Some(now)),
            candidate(0.05, false, Some(now)),
        ];
        for first in 0..4 {
            for second in 0..4 {
                assert_eq!(choose(&candidates, [first, second], now, FORCE), Some(0));
            }
        }
    }

    #[test]
    fn fractions_stay_in_the_unit_interval() {
        let random = Random::seeded(1);
        for _ in 0..10_000 {
            let fraction = random.fraction();
            assert!((0.0..1.0).contains(&fraction), "{fraction}");
        }
    }
}
