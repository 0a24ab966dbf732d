//! Load shedding: an adaptive limit on the calls a server works on at once. A call over the limit
//! is answered `RESOURCE_EXHAUSTED` at once, without reaching the handler, instead of waiting in a
//! queue: a queue only turns overload into latency for every caller, while a fast refusal lets the
//! client's balancer and retries try another instance (and its breaker count the refusal).
//!
//! The limit is not a fixed number somebody has to guess: it follows the additive-increase /
//! multiplicative-decrease rule of TCP congestion control, as Netflix's concurrency-limits library
//! implements it in `AIMDLimit` ([`AimdLimit`] here):
//!
//! - a call that was too slow multiplies the limit by [`LimitConfig::backoff_ratio`] (0.9), never
//!   below [`LimitConfig::min`]: it answered `DEADLINE_EXCEEDED`, took longer than
//!   [`LimitConfig::timeout`], or was still unanswered when its own deadline (`grpc-timeout`)
//!   passed (tonic then drops it, so no answer would ever show it). A handler's
//!   `RESOURCE_EXHAUSTED` (a quota) or `UNAVAILABLE` (something it calls is down) is not this
//!   server's overload, and this layer never samples its own refusals;
//! - any other finished call adds one, never above [`LimitConfig::max`], but only when the limit was
//!   being used (at least half of it in flight when the call started): an idle server has learned
//!   nothing about how much it can take, and its limit must not drift up to the ceiling.
//!
//! Why AIMD and not the gradient limits (`Gradient2Limit`, Vegas): those compare each call's latency
//! with a learned "no-load" latency, which assumes that calls cost about the same. Flotilla serves
//! calls of very different costs on one server (a `GetProduct` point read next to a `ListProducts`
//! page or a watch stream), so a latency change says more about the mix than about queueing, and a
//! gradient limit would swing with it. AIMD reacts only to explicit overload signals and a generous
//! timeout, is a few lines that can be tested exactly, and the hard ceiling from settings bounds the
//! worst case. A gradient limit could later implement the same `on_sample` interface.
//!
//! What counts as a sample in the layer ([`ConcurrencyLimitLayer`]):
//!
//! - the latency is the time until the handler's response headers: for a unary call, the whole
//!   handler; for a stream, its start (a watch that stays open for minutes is not slow);
//! - the outcome is the `grpc-status` of the response headers (a trailers-only answer, which is
//!   how tonic reports a handler's error) or of the trailers when the body ends; a body dropped
//!   before any status was seen (the client went away) or an error from the inner service is no
//!   sample at all, as concurrency-limits' `onIgnore`, unless the call's deadline had passed by
//!   then: a cancellation says nothing about the server, a missed deadline does;
//! - a refused call carries `grpc-retry-pushback-ms: 100` (gRPC's server pushback), so callers
//!   tell overload from a quota: the gateway answers 503, and retries go to another instance;
//! - the call is in flight from acceptance until its response body ends or is dropped, so a stream
//!   holds its place for as long as it runs.
//!
//! The health and reflection services are never limited, nor counted: a health check must answer
//! while the server is shedding, or the orchestrator would restart an instance that is merely busy.
//!
//! Written from Netflix's concurrency-limits documentation and the AIMD rule; no code was copied.

mod service;
#[cfg(test)]
mod tests;

pub use service::{ConcurrencyLimit, ConcurrencyLimitLayer};

use std::time::Duration;

use crate::config::{ConfigError, Settings};

/// The hard ceiling's variable.
const MAX_VAR: &str = "FLOTILLA_CONCURRENCY_LIMIT_MAX";
/// The starting limit's variable.
const INITIAL_VAR: &str = "FLOTILLA_CONCURRENCY_LIMIT_INITIAL";
/// The floor's variable.
const MIN_VAR: &str = "FLOTILLA_CONCURRENCY_LIMIT_MIN";
/// The latency threshold's variable.
const TIMEOUT_VAR: &str = "FLOTILLA_CONCURRENCY_LIMIT_TIMEOUT";

/// The settings of the adaptive concurrency limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// The hard ceiling: the limit never grows past it (`FLOTILLA_CONCURRENCY_LIMIT_MAX`,
    /// default 1000).
    pub max: u32,
    /// The limit a server starts with (`FLOTILLA_CONCURRENCY_LIMIT_INITIAL`, default 100, or the
    /// ceiling when that is lower).
    pub initial: u32,
    /// The floor: however bad things get, this many calls are still let in
    /// (`FLOTILLA_CONCURRENCY_LIMIT_MIN`, default 10, or the initial limit when that is lower).
    pub min: u32,
    /// A call that took longer than this counts as dropped (`FLOTILLA_CONCURRENCY_LIMIT_TIMEOUT`,
    /// default 5 s, concurrency-limits' default).
    pub timeout: Duration,
    /// What the limit is multiplied by after a drop (0.9, concurrency-limits' default); not a
    /// setting, since nobody tunes it in practice.
    pub backoff_ratio: f64,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            max: 1000,
            initial: 100,
            min: 10,
            timeout: Duration::from_secs(5),
            backoff_ratio: 0.9,
        }
    }
}

impl LimitConfig {
    /// Reads the limit's settings. A default that would contradict an explicit setting follows
    /// it (`FLOTILLA_CONCURRENCY_LIMIT_MAX=50` alone starts at 50); two explicit settings that
    /// contradict each other are an error.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a value that is not a whole number of at least 1 or not a
    /// duration, and naming the offending variable when the minimum exceeds the initial limit or
    /// the initial limit exceeds the maximum.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let max = settings.count(MAX_VAR, defaults.max)?;
        let initial = settings.count(INITIAL_VAR, defaults.initial.min(max))?;
        if initial > max {
            return Err(out_of_order(settings, INITIAL_VAR, initial, MAX_VAR, max));
        }
        let min = settings.count(MIN_VAR, defaults.min.min(initial))?;
        if min > initial {
            return Err(out_of_order(settings, MIN_VAR, min, INITIAL_VAR, initial));
        }
        let timeout = settings.duration(TIMEOUT_VAR, defaults.timeout)?;
        Ok(Self {
            max,
            initial,
            min,
            timeout,
            backoff_ratio: defaults.backoff_ratio,
        })
    }
}

/// `name=value` must be at most `bound_name`'s `bound`.
fn out_of_order(
    settings: &Settings,
    name: &str,
    value: u32,
    bound_name: &str,
    bound: u32,
) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value: value.to_string(),
        origin: settings.origin(name),
        expected: format!("at most {bound_name} ({bound})"),
    }
}

/// How a finished call went, as far as the limit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered (any answer that is not an overload signal, client errors included).
    Success,
    /// The server could not keep up: the call's deadline passed before it answered, or it took
    /// longer than the limit's timeout.
    Dropped,
}

impl Outcome {
    /// The outcome an answered call's gRPC code stands for: only `DEADLINE_EXCEEDED` says this
    /// server was too slow. Not `RESOURCE_EXHAUSTED`: this layer never samples its own shedding,
    /// and a handler's is a quota (the login limit), which a client can run into as often as it
    /// likes; not `UNAVAILABLE`, which a handler answers when something *it* calls is down,
    /// while this server idles. Lowering the limit for either would shed healthy traffic.
    pub fn of(code: tonic::Code) -> Self {
        match code {
            tonic::Code::DeadlineExceeded => Self::Dropped,
            _ => Self::Success,
        }
    }
}

/// One finished call, the input to [`AimdLimit::on_sample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How long the call took.
    pub latency: Duration,
    /// How many calls were in flight when it started, itself included.
    pub in_flight: u32,
    /// How it went.
    pub outcome: Outcome,
}

/// The additive-increase / multiplicative-decrease limit (see the module doc), as plain state:
/// every input is explicit, so it is tested without clocks or load.
#[derive(Debug, Clone, PartialEq)]
pub struct AimdLimit {
    limit: u32,
    min: u32,
    max: u32,
    timeout: Duration,
    backoff_ratio: f64,
}

impl AimdLimit {
    /// A limit starting at `config.initial`, kept within `config.min..=config.max`.
    pub fn new(config: &LimitConfig) -> Self {
        let max = config.max.max(1);
        let min = config.min.clamp(1, max);
        Self {
            limit: config.initial.clamp(min, max),
            min,
            max,
            timeout: config.timeout,
            backoff_ratio: config.backoff_ratio.clamp(0.0, 1.0),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Updates the limit with one finished call and returns the new limit.
    pub fn on_sample(&mut self, sample: Sample) -> u32 {
        if sample.outcome == Outcome::Dropped || sample.latency > self.timeout {
            // The ratio is within 0..=1, so the product fits; the float-to-int cast saturates.
            let reduced = (f64::from(self.limit) * self.backoff_ratio).floor() as u32;
            self.limit = reduced.max(self.min);
        } else if u64::from(sample.in_flight) * 2 >= u64::from(self.limit) {
            self.limit = self.limit.saturating_add(1).min(self.max);
        }
        self.limit
    }
}
