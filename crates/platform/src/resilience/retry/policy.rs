//! When a failed attempt may be sent again, and how long to wait first: the settings, the
//! classification of outcomes and the back-off, apart from the layer that acts on them.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tower::BoxError;
use tower::retry::budget::TpsBudget;

use super::idempotency::MethodKind;
use crate::config::{ConfigError, Settings};
use crate::resilience::attempt::{AttemptError, Attempted, Reach};

/// The retries-per-call variable.
const MAX_VAR: &str = "FLOTILLA_RETRY_MAX";
/// The budget's percentage variable.
const PERCENT_VAR: &str = "FLOTILLA_RETRY_BUDGET_PERCENT";
/// The budget's reserve variable.
const MIN_PER_SEC_VAR: &str = "FLOTILLA_RETRY_BUDGET_MIN_PER_SEC";
/// The first back-off's variable.
const BACKOFF_VAR: &str = "FLOTILLA_RETRY_BACKOFF";
/// The longest back-off's variable.
const BACKOFF_MAX_VAR: &str = "FLOTILLA_RETRY_BACKOFF_MAX";

/// Every setting [`RetryConfig::from_settings`] reads, for the CLI's list of all settings.
pub const RETRY_SETTINGS: &[&str] = &[
    MAX_VAR,
    PERCENT_VAR,
    MIN_PER_SEC_VAR,
    BACKOFF_VAR,
    BACKOFF_MAX_VAR,
];

/// The server-pushback metadata of the gRPC retry design (A6): how many milliseconds the server
/// asks the client to wait before it tries again.
pub(super) const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// How a client retries the calls to one upstream service.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries per call after the first attempt; 0 turns retrying off.
    pub max_retries: u32,
    /// Retries allowed, as a percentage of the calls made over the last
    /// [`RetryConfig::BUDGET_WINDOW`], on top of the reserve.
    ///
    /// tower's budget counts in whole tokens (a retry costs `⌊100 / percent⌋` deposits), so a
    /// percentage that does not divide 100 is rounded up to one that does (30 acts as 33⅓).
    pub budget_percent: f32,
    /// Retries per second allowed whatever the traffic, so a client that makes few calls can
    /// still retry (the reserve, counted over the same window).
    pub budget_min_per_sec: u32,
    /// The first back-off's ceiling; each retry doubles it.
    pub backoff: Duration,
    /// The longest back-off, and the longest server pushback honoured.
    pub backoff_max: Duration,
}

impl RetryConfig {
    /// Default retries per call: 2, three attempts in all (the "at most 2 retries").
    pub const DEFAULT_MAX_RETRIES: u32 = 2;
    /// The most retries per call a setting may ask for: the gRPC retry design caps a call at five
    /// attempts.
    pub const MAX_MAX_RETRIES: u32 = 4;
    /// Default budget: retries up to 20 % of the calls, as tower's and linkerd's defaults.
    pub const DEFAULT_BUDGET_PERCENT: f32 = 20.0;
    /// Default reserve: 10 retries a second, as tower's and linkerd's defaults.
    pub const DEFAULT_BUDGET_MIN_PER_SEC: u32 = 10;
    /// Default first back-off ceiling: 25 ms, a few round trips inside one network; the next try
    /// goes to another instance anyway.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
    /// Default longest back-off: 250 ms, well inside the gateway's 3 s deadline.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
    /// The window the budget counts calls and retries over: 10 s, as tower's and linkerd's.
    pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

    /// The largest percentage tower's budget accepts (`retry_percent` ≤ 1000, a ratio).
    const MAX_BUDGET_PERCENT: f32 = 100_000.0;
    /// The largest reserve a setting may ask for; far beyond any real need, and well inside what
    /// tower's budget accepts (below `i32::MAX`).
    const MAX_MIN_PER_SEC: u32 = 1_000_000;

    /// Reads:
    ///
    /// - `FLOTILLA_RETRY_MAX`: retries per call, 0 (off) to 4 (default 2);
    /// - `FLOTILLA_RETRY_BUDGET_PERCENT`: retries as a percentage of the calls over 10 s, on top of
    ///   the reserve (default 20);
    /// - `FLOTILLA_RETRY_BUDGET_MIN_PER_SEC`: the reserve, retries per second allowed whatever the
    ///   traffic (default 10);
    /// - `FLOTILLA_RETRY_BACKOFF`: the first back-off's ceiling, doubled for each retry (default
    ///   `25ms`);
    /// - `FLOTILLA_RETRY_BACKOFF_MAX`: the longest back-off, and the longest server pushback
    ///   honoured (default `250ms`, or `FLOTILLA_RETRY_BACKOFF` when that is longer).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable whose value does not parse or is out of range,
    /// and `FLOTILLA_RETRY_BACKOFF_MAX` when it is shorter than `FLOTILLA_RETRY_BACKOFF`.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Self::read(settings, |name| name.to_owned())
    }

    /// The same for calls to the service `upstream`: each variable may be set for it alone as
    /// `FLOTILLA_<UPSTREAM>_RETRY…` ([`Settings::per_upstream`]), over the general one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable that was read, as for
    /// [`RetryConfig::from_settings`].
    pub fn for_upstream(settings: &Settings, upstream: &str) -> Result<Self, ConfigError> {
        Self::read(settings, |name| settings.per_upstream(upstream, name))
    }

    /// Reads every setting from the variable `var` names for it.
    fn read(settings: &Settings, var: impl Fn(&str) -> String) -> Result<Self, ConfigError> {
        let max_retries = read_whole(
            settings,
            &var(MAX_VAR),
            Self::DEFAULT_MAX_RETRIES,
            Self::MAX_MAX_RETRIES,
            "a whole number from 0 (no retries) to 4 (gRPC's retry design allows five attempts)",
        )?;
        let budget_percent = read_percent(settings, &var(PERCENT_VAR))?;
        let budget_min_per_sec = read_whole(
            settings,
            &var(MIN_PER_SEC_VAR),
            Self::DEFAULT_BUDGET_MIN_PER_SEC,
            Self::MAX_MIN_PER_SEC,
            "a whole number of retries per second from 0 to 1000000, such as 10",
        )?;
        let backoff_var = var(BACKOFF_VAR);
        let backoff = settings.duration(&backoff_var, Self::DEFAULT_BACKOFF)?;
        let backoff_max_var = var(BACKOFF_MAX_VAR);
        let backoff_max =
            settings.duration(&backoff_max_var, Self::DEFAULT_BACKOFF_MAX.max(backoff))?;
        if backoff_max < backoff {
            return Err(ConfigError::Invalid {
                value: humantime::format_duration(backoff_max).to_string(),
                origin: settings.origin(&backoff_max_var),
                name: backoff_max_var,
                expected: format!(
                    "a duration of at least {backoff_var} ({})",
                    humantime::format_duration(backoff)
                ),
            });
        }
        Ok(Self {
            max_retries,
            budget_percent,
            budget_min_per_sec,
            backoff,
            backoff_max,
        })
    }

    /// A budget as this config describes. Values from [`RetryConfig::from_settings`] are in range;
    /// others (a config built by hand) are brought into the range tower's budget accepts, which
    /// panics outside it.
    pub(super) fn budget(&self) -> TpsBudget {
        let percent = if self.budget_percent.is_nan() {
            0.0
        } else {
            self.budget_percent.clamp(0.0, Self::MAX_BUDGET_PERCENT)
        };
        TpsBudget::new(
            Self::BUDGET_WINDOW,
            self.budget_min_per_sec.min(Self::MAX_MIN_PER_SEC),
            percent / 100.0,
        )
    }

    /// The most the wait before retry number `retry` (1 for the first) may be:
    /// `min(backoff_max, backoff · 2^(retry − 1))`.
    pub(super) fn backoff_ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.backoff
            .saturating_mul(1_u32 << doublings)
            .min(self.backoff_max)
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: Self::DEFAULT_MAX_RETRIES,
            budget_percent: Self::DEFAULT_BUDGET_PERCENT,
            budget_min_per_sec: Self::DEFAULT_BUDGET_MIN_PER_SEC,
            backoff: Self::DEFAULT_BACKOFF,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
        }
    }
}

/// A whole number from 0 to `max`: [`Settings::count`] refuses 0, which means "off" here.
fn read_whole(
    settings: &Settings,
    name: &str,
    default: u32,
    max: u32,
    expected: &str,
) -> Result<u32, ConfigError> {
    let raw = settings.string(name, &default.to_string())?;
    match raw.trim().parse::<u32>() {
        Ok(value) if value <= max => Ok(value),
        _ => Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: raw,
            origin: settings.origin(name),
            expected: expected.to_owned(),
        }),
    }
}

/// The budget's percentage, a decimal: [`Settings`] has no parser for decimals.
fn read_percent(settings: &Settings, name: &str) -> Result<f32, ConfigError> {
    let raw = settings.string(name, &RetryConfig::DEFAULT_BUDGET_PERCENT.to_string())?;
    match raw.trim().trim_end_matches('%').trim().parse::<f32>() {
        Ok(percent)
            if percent.is_finite()
                && (0.0..=RetryConfig::MAX_BUDGET_PERCENT).contains(&percent) =>
        {
            Ok(percent)
        }
        _ => Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: raw,
            origin: settings.origin(name),
            expected: "a percentage of calls from 0 to 100000, such as 20 or 12.5".to_owned(),
        }),
    }
}

/// Why an attempt is worth trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// The request never left this process or was refused unread: safe for any method.
    NotSent,
    /// The connection failed after the request went out (idempotent methods only).
    Lost,
    /// The server answered `UNAVAILABLE` (idempotent methods only).
    Unavailable,
    /// The server shed the call, `RESOURCE_EXHAUSTED` with a pushback (idempotent methods only).
    Shed,
}

impl Reason {
    /// For logs.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reason::NotSent => "not sent",
            Reason::Lost => "connection lost after sending",
            Reason::Unavailable => "answered UNAVAILABLE",
            Reason::Shed => "shed by an overloaded server",
        }
    }
}

/// What the server asked about waiting, in `grpc-retry-pushback-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushback {
    /// No pushback: the layer's own back-off applies.
    None,
    /// Wait this long, exactly (A6).
    Wait(Duration),
    /// A malformed or negative value: A6 reads it as "do not retry".
    DoNotRetry,
}

/// A failed attempt worth trying again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Retryable {
    /// Why.
    pub(super) reason: Reason,
    /// The instance it failed on, to avoid next time.
    pub(super) instance: Option<Arc<str>>,
    /// What the server said about waiting.
    pub(super) pushback: Pushback,
}

/// Whether an attempt's outcome may be retried, for a unary method of `kind`; `None` when the
/// outcome is final (see the module documentation for the rules and why).
pub(super) fn classify(
    outcome: &Result<http::Response<tonic::body::Body>, BoxError>,
    kind: MethodKind,
) -> Option<Retryable> {
    match outcome {
        Err(error) => {
            let attempt = error.downcast_ref::<AttemptError>()?;
            let code = attempt.status().code();
            let reason = match attempt.reach() {
                // A deadline the balancer gave up on is not going to come back. Without an
                // instance (none listed, every one ejected, discovery silent) the balancer has
                // already waited for one as long as it sensibly could: another attempt would
                // only wait again and spend the budget.
                Reach::NotSent
                    if code != Code::DeadlineExceeded && attempt.instance().is_some() =>
                {
                    Reason::NotSent
                }
                Reach::MaybeSent if code == Code::Unavailable && kind.idempotent => Reason::Lost,
                Reach::NotSent | Reach::MaybeSent => return None,
            };
            Some(Retryable {
                reason,
                instance: attempt.instance().cloned(),
                pushback: Pushback::None,
            })
        }
        Ok(response) => {
            if !kind.idempotent {
                return None;
            }
            let headers = response.headers();
            let code = crate::resilience::watched::grpc_status(headers)?;
            let pushback = pushback(headers);
            let reason = match (code, pushback) {
                (Code::Unavailable, _) => Reason::Unavailable,
                (Code::ResourceExhausted, Pushback::Wait(_) | Pushback::DoNotRetry) => Reason::Shed,
                _ => return None,
            };
            Some(Retryable {
                reason,
                instance: response
                    .extensions()
                    .get::<Attempted>()
                    .map(|attempted| Arc::clone(&attempted.instance)),
                pushback,
            })
        }
    }
}

/// The pushback in a trailers-only answer's headers.
fn pushback(headers: &http::HeaderMap) -> Pushback {
    let Some(value) = headers.get(PUSHBACK) else {
        return Pushback::None;
    };
    match value.to_str().ok().map(str::trim).map(str::parse::<u64>) {
        Some(Ok(millis)) => Pushback::Wait(Duration::from_millis(millis)),
        _ => Pushback::DoNotRetry,
    }
}
