//! The consecutive-failures state machine: closed, open for a cool-down, half-open with a bounded
//! number of trial calls.

use std::time::Duration;

use tokio::time::Instant;

use super::{BreakerState, Outcome};

/// How long a caller turned away while every trial slot is taken should wait: the trial's answer
/// decides, and that is usually quick.
const TRIAL_BUSY_RETRY: Duration = Duration::from_secs(1);

/// What a permit remembers about the state it was granted in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket {
    /// The breaker's generation when granted; every state change starts a new one, so an answer
    /// from an earlier state (a slow call that started before the breaker tripped) is dropped.
    generation: u64,
    /// Whether it holds a half-open trial slot.
    trial: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

#[derive(Debug)]
pub(super) struct Consecutive {
    threshold: u32,
    cool_down: Duration,
    trials: u32,
    state: State,
    generation: u64,
}

/// A state change, `(from, to)`.
pub(super) type Change = (BreakerState, BreakerState);

impl Consecutive {
    pub(super) fn new(threshold: u32, cool_down: Duration, trials: u32) -> Self {
        Self {
            threshold,
            cool_down,
            // Zero trials would leave the breaker half-open forever.
            trials: trials.max(1),
            state: State::Closed { failures: 0 },
            generation: 0,
        }
    }

    /// A permit, or how long to wait; plus the state change this caused (open → half-open).
    pub(super) fn acquire(&mut self, now: Instant) -> (Result<Ticket, Duration>, Option<Change>) {
        let mut change = None;
        if let State::Open { until } = self.state {
            if now < until {
                return (Err(until - now), None);
            }
            change = self.move_to(State::HalfOpen { in_flight: 0 });
        }
        let result = match &mut self.state {
            State::Closed { .. } => Ok(Ticket {
                generation: self.generation,
                trial: false,
            }),
            State::HalfOpen { in_flight } if *in_flight < self.trials => {
                *in_flight += 1;
                Ok(Ticket {
                    generation: self.generation,
                    trial: true,
                })
            }
            State::HalfOpen { .. } => Err(TRIAL_BUSY_RETRY),
            // Left above.
            State::Open { until } => Err(until.saturating_duration_since(now)),
        };
        (result, change)
    }

    /// Records the answer to a permitted call.
    pub(super) fn complete(
        &mut self,
        ticket: Ticket,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Change> {
        if ticket.generation != self.generation {
            return None;
        }
        match (&mut self.state, outcome) {
            (State::Closed { failures }, Outcome::Success) => {
                *failures = 0;
                None
            }
            (State::Closed { failures }, Outcome::Failure) => {
                *failures = failures.saturating_add(1);
                if *failures > self.threshold {
                    self.open(now)
                } else {
                    None
                }
            }
            (State::HalfOpen { .. }, Outcome::Success) if ticket.trial => {
                self.move_to(State::Closed { failures: 0 })
            }
            (State::HalfOpen { .. }, Outcome::Failure) if ticket.trial => self.open(now),
            (State::HalfOpen { in_flight }, Outcome::Ignored) if ticket.trial => {
                // The trial said nothing (cancelled, dropped): free its slot for another.
                *in_flight = in_flight.saturating_sub(1);
                None
            }
            _ => None,
        }
    }

    pub(super) fn state(&self) -> BreakerState {
        public(self.state)
    }

    pub(super) fn failures(&self) -> u32 {
        match self.state {
            State::Closed { failures } => failures,
            State::Open { .. } | State::HalfOpen { .. } => 0,
        }
    }

    /// Opens with a fresh cool-down from `now`.
    fn open(&mut self, now: Instant) -> Option<Change> {
        // A cool-down too long to add (set by hand, not through settings) is "open for good".
        let until = now
            .checked_add(self.cool_down)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        self.move_to(State::Open { until })
    }

    fn move_to(&mut self, state: State) -> Option<Change> {
        let from = public(self.state);
        self.state = state;
        self.generation = self.generation.wrapping_add(1);
        Some((from, public(state)))
    }
}

fn public(state: State) -> BreakerState {
    match state {
        State::Closed { .. } => BreakerState::Closed,
        State::Open { .. } => BreakerState::Open,
        State::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}
