//! Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing",
//! 2001): draw two endpoints at random and send the call to the cheaper one. Comparing two random
//! endpoints instead of scanning for the cheapest keeps a herd of clients with the same stale view
//! from all piling onto the one endpoint that looked best.
//!
//! Two additions:
//! - ejected endpoints are left out of the draw while any other endpoint is available: a pair with
//!   an ejected endpoint in it is drawn again (a pair of two available endpoints drawn by
//!   rejection is as uniform as one drawn among the available ones), and after a few such pairs
//!   the picker scans for the available ones, which only happens when many are ejected;
//! - go-zero's `forcePick`: when the costlier of the two has not been picked for `force_pick_after`
//!   (or never), it is picked anyway. A peak-EWMA estimate only moves when calls complete, so
//!   without this an endpoint that once looked slow, or a new one, could wait a long time for the
//!   call that would show it is fast now.
//!
//! The picker reads endpoints through a closure, so a pick looks at two of them (one lock each)
//! however many there are, and the arithmetic is tested with plain values.

use std::time::Duration;

use tokio::time::Instant;

/// How many pairs are drawn before the picker, having met an ejected endpoint in each, scans.
const DRAWS: usize = 3;

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

/// The index, below `len`, of the endpoint to call, or `None` when every endpoint looked at was
/// ejected (or there are none). `random` supplies the draws and `candidate` reads one endpoint;
/// it may be called more than once for the same index.
pub(super) fn choose(
    len: usize,
    mut random: impl FnMut() -> u64,
    mut candidate: impl FnMut(usize) -> Candidate,
    now: Instant,
    force_pick_after: Duration,
) -> Option<usize> {
    match len {
        0 => return None,
        1 => return (!candidate(0).ejected).then_some(0),
        _ => {}
    }
    for _ in 0..DRAWS {
        let (first, second) = two_distinct(len, [random(), random()]);
        let (first_candidate, second_candidate) = (candidate(first), candidate(second));
        if !first_candidate.ejected && !second_candidate.ejected {
            return Some(better(
                (first, first_candidate),
                (second, second_candidate),
                now,
                force_pick_after,
            ));
        }
    }
    // Many endpoints are ejected: pick among the available ones.
    let available: Vec<(usize, Candidate)> = (0..len)
        .map(|index| (index, candidate(index)))
        .filter(|(_, candidate)| !candidate.ejected)
        .collect();
    match available.as_slice() {
        [] => None,
        [(only, _)] => Some(*only),
        _ => {
            let (first, second) = two_distinct(available.len(), [random(), random()]);
            Some(better(
                available[first],
                available[second],
                now,
                force_pick_after,
            ))
        }
    }
}

/// Two distinct indices below `len` (at least 2) from two random draws: the second skips over
/// the first.
fn two_distinct(len: usize, random: [u64; 2]) -> (usize, usize) {
    let count = len as u64;
    let first = random[0] % count;
    let mut second = random[1] % (count - 1);
    if second >= first {
        second += 1;
    }
    // Both are below `len`, which is a usize.
    (first as usize, second as usize)
}

/// Of two available endpoints, the cheaper, unless the costlier has been neglected.
fn better(
    first: (usize, Candidate),
    second: (usize, Candidate),
    now: Instant,
    force_pick_after: Duration,
) -> usize {
    let (cheaper, costlier) = if second.1.cost < first.1.cost {
        (second, first)
    } else {
        (first, second)
    };
    let neglected = costlier
        .1
        .last_picked
        .is_none_or(|picked| now.saturating_duration_since(picked) > force_pick_after);
    if neglected { costlier.0 } else { cheaper.0 }
}

/// Random numbers for the draws and for jitter: `fastrand`'s thread-local generator (seeded from
/// the operating system, so clients do not draw in step; load balancing needs spread, not
/// secrecy), or a seeded one for tests that need the same draws every run.
#[derive(Debug)]
pub(super) enum Random {
    /// The thread's own generator: no lock, no shared state.
    Thread,
    /// A generator of its own, from a fixed seed.
    #[cfg(test)]
    Seeded(std::sync::Mutex<fastrand::Rng>),
}

impl Random {
    /// Draws from the thread's generator.
    pub(super) fn from_entropy() -> Self {
        Self::Thread
    }

    /// A generator with a fixed seed.
    #[cfg(test)]
    pub(super) fn seeded(seed: u64) -> Self {
        Self::Seeded(std::sync::Mutex::new(fastrand::Rng::with_seed(seed)))
    }

    /// The next 64 random bits.
    pub(super) fn next_u64(&self) -> u64 {
        match self {
            Self::Thread => fastrand::u64(..),
            #[cfg(test)]
            Self::Seeded(rng) => rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .u64(..),
        }
    }

    /// A uniform fraction in `[0, 1)`.
    pub(super) fn fraction(&self) -> f64 {
        match self {
            Self::Thread => fastrand::f64(),
            #[cfg(test)]
            Self::Seeded(rng) => rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const FORCE: Duration = Duration::from_secs(1);

    fn candidate(cost: f64, ejected: bool, last_picked: Option<Instant>) -> Candidate {
        Candidate {
            cost,
            ejected,
            last_picked,
        }
    }

    /// `choose` over a slice, with the draws taken in turn from `draws` (0 once they run out).
    fn choose_in(candidates: &[Candidate], draws: &[u64], now: Instant) -> Option<usize> {
        let mut draws = draws.iter().copied();
        choose(
            candidates.len(),
            || draws.next().unwrap_or(0),
            |index| candidates[index],
            now,
            FORCE,
        )
    }

    /// `choose` over a slice with random draws.
    fn choose_randomly(candidates: &[Candidate], random: &Random, now: Instant) -> Option<usize> {
        choose(
            candidates.len(),
            || random.next_u64(),
            |index| candidates[index],
            now,
            FORCE,
        )
    }

    #[test]
    fn nothing_to_pick_without_an_available_endpoint() {
        let now = Instant::now();
        assert_eq!(choose_in(&[], &[1, 2], now), None);
        let ejected = candidate(1.0, true, Some(now));
        assert_eq!(choose_in(&[ejected], &[1, 2], now), None);
        assert_eq!(choose_in(&[ejected; 2], &[1, 2], now), None);
        let random = Random::seeded(3);
        assert_eq!(choose_randomly(&[ejected; 50], &random, now), None);
    }

    #[test]
    fn a_single_available_endpoint_is_picked() {
        let now = Instant::now();
        let alone = candidate(1.0, false, Some(now));
        assert_eq!(choose_in(&[alone], &[], now), Some(0));
    }

    #[test]
    fn an_ejected_endpoint_is_never_picked_while_another_is_available() {
        let now = Instant::now();
        let random = Random::seeded(7);
        // The ejected ones are far cheaper and never picked: they still lose.
        let candidates = [
            candidate(0.001, true, None),
            candidate(9.0, false, Some(now)),
            candidate(0.002, true, None),
        ];
        for _ in 0..1000 {
            assert_eq!(choose_randomly(&candidates, &random, now), Some(1));
        }
    }

    #[test]
    fn with_most_endpoints_ejected_the_available_ones_share_the_calls() {
        let now = Instant::now();
        let random = Random::seeded(11);
        let mut candidates = [candidate(0.01, true, Some(now)); 10];
        candidates[2].ejected = false;
        candidates[7].ejected = false;
        let mut counts = [0_u32; 10];
        for _ in 0..2000 {
            if let Some(index) = choose_randomly(&candidates, &random, now) {
                counts[index] += 1;
            }
        }
        assert_eq!(counts[2] + counts[7], 2000, "{counts:?}");
        assert!((800..1200).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn a_pick_reads_two_endpoints_however_many_there_are() {
        let now = Instant::now();
        let random = Random::seeded(5);
        let candidates = [candidate(0.01, false, Some(now)); 1000];
        for _ in 0..100 {
            let reads = Cell::new(0);
            let picked = choose(
                candidates.len(),
                || random.next_u64(),
                |index| {
                    reads.set(reads.get() + 1);
                    candidates[index]
                },
                now,
                FORCE,
            );
            assert!(picked.is_some());
            assert_eq!(reads.get(), 2);
        }
    }

    #[test]
    fn the_cheaper_of_the_two_wins() {
        let now = Instant::now();
        let candidates = [
            candidate(0.050, false, Some(now)),
            candidate(0.010, false, Some(now)),
        ];
        assert_eq!(choose_in(&candidates, &[0, 0], now), Some(1));
        assert_eq!(choose_in(&candidates, &[1, 0], now), Some(1));
    }

    #[test]
    fn a_slow_endpoint_gets_calls_only_when_forced_or_when_the_fast_one_is_busy() {
        let now = Instant::now();
        let random = Random::seeded(9);
        let fast = Duration::from_millis(1);
        let slow = Duration::from_millis(50);
        let cost = super::super::ewma::cost;
        // Fast with up to 40 calls in flight still beats slow when idle.
        for in_flight in 0..40 {
            let candidates = [
                candidate(cost(slow, 0), false, Some(now)),
                candidate(cost(fast, in_flight), false, Some(now)),
            ];
            assert_eq!(choose_randomly(&candidates, &random, now), Some(1));
        }
        // At 50 it does not.
        let candidates = [
            candidate(cost(slow, 0), false, Some(now)),
            candidate(cost(fast, 50), false, Some(now)),
        ];
        assert_eq!(choose_randomly(&candidates, &random, now), Some(0));
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
        assert_eq!(choose_in(&neglected, &[0, 0], now), Some(0));
        let never_picked = [
            candidate(0.050, false, None),
            candidate(0.010, false, Some(now)),
        ];
        assert_eq!(choose_in(&never_picked, &[0, 0], now), Some(0));
        let picked_recently = [
            candidate(0.050, false, Some(recently)),
            candidate(0.010, false, Some(now)),
        ];
        assert_eq!(choose_in(&picked_recently, &[0, 0], now), Some(1));
    }

    #[test]
    fn equal_endpoints_share_the_calls() {
        let now = Instant::now();
        let random = Random::seeded(42);
        let candidates = [candidate(0.01, false, Some(now)); 4];
        let mut counts = [0_u32; 4];
        for _ in 0..4000 {
            if let Some(index) = choose_randomly(&candidates, &random, now) {
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
                assert_eq!(choose_in(&candidates, &[first, second], now), Some(0));
            }
        }
        for len in 2..40 {
            for first in 0..80 {
                for second in 0..80 {
                    let (one, other) = two_distinct(len, [first, second]);
                    assert!(one < len && other < len && one != other);
                }
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
