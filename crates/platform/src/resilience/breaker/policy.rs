//! The two breaker policies and the settings that choose between them.

use std::time::Duration;

use crate::config::{ConfigError, Settings};

/// Which policy drives a breaker, with its tuning.
#[derive(Debug, Clone, PartialEq)]
pub enum BreakerPolicy {
    /// Trip after more than `threshold` consecutive failures, stay open for `cool_down`, then let
    /// `half_open_trials` trial calls decide: a success closes, a failure opens again.
    ConsecutiveFailures {
        /// Consecutive failures tolerated; one more trips the breaker.
        threshold: u32,
        /// How long the breaker stays open before trial calls are let through.
        cool_down: Duration,
        /// How many trial calls may be in flight while half-open (at least 1).
        half_open_trials: u32,
    },
    /// Google SRE client-side adaptive throttling: reject with probability
    /// `max(0, (requests − k·accepts) / (requests + 1))` over a rolling window.
    Adaptive {
        /// How many requests per accepted one are tolerated before throttling starts; lower is
        /// more aggressive.
        k: f64,
        /// The rolling window the counts cover.
        window: Duration,
        /// How many buckets the window is cut into; older buckets roll off one at a time.
        buckets: u32,
        /// No request is rejected while the window holds fewer requests than this.
        min_requests: u32,
    },
}

impl BreakerPolicy {
    /// Default consecutive failures tolerated: the "more than 5".
    pub const DEFAULT_THRESHOLD: u32 = 5;
    /// Default cool-down: 60 s, as gobreaker's default `Timeout`.
    pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(60);
    /// Default trial calls while half-open: one, as linkerd's single probe and gobreaker's default
    /// `MaxRequests`; while an upstream is still broken only one caller pays for finding out, and
    /// the first success closes the breaker anyway, so more slots would only add risk.
    pub const DEFAULT_HALF_OPEN_TRIALS: u32 = 1;
    /// Default `K`: 1.5, as go-zero and Kratos (the SRE book suggests 2, and 1.1 as aggressive).
    pub const DEFAULT_K: f64 = 1.5;
    /// Default window: 10 s, as go-zero (the SRE book uses two minutes for its bigger fleets).
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
    /// Default bucket count: ten one-second buckets.
    pub const DEFAULT_BUCKETS: u32 = 10;
    /// Default minimum requests: 20 in the window. go-zero protects only the first 5 (two
    /// failures out of five would already throttle a quiet method), Kratos waits for 100 (which
    /// a method called a few times a second never reaches in 10 s); 20 is two requests a second.
    pub const DEFAULT_MIN_REQUESTS: u32 = 20;

    /// The consecutive-failures policy with its defaults.
    pub fn consecutive_failures() -> Self {
        Self::ConsecutiveFailures {
            threshold: Self::DEFAULT_THRESHOLD,
            cool_down: Self::DEFAULT_COOL_DOWN,
            half_open_trials: Self::DEFAULT_HALF_OPEN_TRIALS,
        }
    }

    /// The adaptive policy with its defaults.
    pub fn adaptive() -> Self {
        Self::Adaptive {
            k: Self::DEFAULT_K,
            window: Self::DEFAULT_WINDOW,
            buckets: Self::DEFAULT_BUCKETS,
            min_requests: Self::DEFAULT_MIN_REQUESTS,
        }
    }
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self::consecutive_failures()
    }
}

/// Breaker settings shared by every breaker of a process (one breaker per upstream service and
/// method, see [`super::BreakerRegistry`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BreakerConfig {
    /// The policy every breaker follows.
    pub policy: BreakerPolicy,
}

impl BreakerConfig {
    /// Every variable [`BreakerConfig::from_settings`] reads, for the list of known settings.
    pub const SETTINGS: &[&str] = &[
        "FLOTILLA_BREAKER",
        "FLOTILLA_BREAKER_FAILURES",
        "FLOTILLA_BREAKER_COOL_DOWN",
        "FLOTILLA_BREAKER_K",
    ];

    /// Reads:
    ///
    /// - `FLOTILLA_BREAKER`: `consecutive` (default) or `adaptive`;
    /// - `FLOTILLA_BREAKER_FAILURES`: consecutive failures tolerated before tripping (default 5);
    /// - `FLOTILLA_BREAKER_COOL_DOWN`: how long a tripped breaker stays open (default `60s`);
    /// - `FLOTILLA_BREAKER_K`: the adaptive policy's `K`, a decimal of at least 1 (default 1.5).
    ///
    /// All are read whichever policy is chosen, so a mistake in one is caught before it matters.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable whose value does not parse.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Self::read(settings, |name| name.to_owned())
    }

    /// The same for calls to the service `upstream`: each variable may be set for it alone as
    /// `FLOTILLA_<UPSTREAM>_BREAKER…` ([`Settings::per_upstream`]), over the general one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable whose value does not parse.
    pub fn for_upstream(settings: &Settings, upstream: &str) -> Result<Self, ConfigError> {
        Self::read(settings, |name| settings.per_upstream(upstream, name))
    }

    fn read(settings: &Settings, var: impl Fn(&str) -> String) -> Result<Self, ConfigError> {
        let kind = settings.choice(
            &var("FLOTILLA_BREAKER"),
            "consecutive",
            &["consecutive", "adaptive"],
        )?;
        let threshold = settings.count(
            &var("FLOTILLA_BREAKER_FAILURES"),
            BreakerPolicy::DEFAULT_THRESHOLD,
        )?;
        let cool_down_var = var("FLOTILLA_BREAKER_COOL_DOWN");
        let cool_down = settings.duration(&cool_down_var, BreakerPolicy::DEFAULT_COOL_DOWN)?;
        if cool_down.is_zero() || cool_down > MAX_COOL_DOWN {
            return Err(ConfigError::Invalid {
                value: humantime::format_duration(cool_down).to_string(),
                origin: settings.origin(&cool_down_var),
                name: cool_down_var,
                expected: "a duration above zero and at most 24h".to_owned(),
            });
        }
        let k = read_k(settings, &var("FLOTILLA_BREAKER_K"))?;
        let policy = if kind == "adaptive" {
            BreakerPolicy::Adaptive {
                k,
                window: BreakerPolicy::DEFAULT_WINDOW,
                buckets: BreakerPolicy::DEFAULT_BUCKETS,
                min_requests: BreakerPolicy::DEFAULT_MIN_REQUESTS,
            }
        } else {
            BreakerPolicy::ConsecutiveFailures {
                threshold,
                cool_down,
                half_open_trials: BreakerPolicy::DEFAULT_HALF_OPEN_TRIALS,
            }
        };
        Ok(Self { policy })
    }
}

/// The longest cool-down a setting may ask for: a breaker open for longer is a switch, not a
/// breaker.
const MAX_COOL_DOWN: Duration = Duration::from_secs(24 * 3600);

/// `K` as a decimal: [`Settings`] has no parser for decimals, so the string is parsed here. Below 1
/// the formula rejects traffic that never fails, so that is refused.
fn read_k(settings: &Settings, name: &str) -> Result<f64, ConfigError> {
    let raw = settings.string(name, &BreakerPolicy::DEFAULT_K.to_string())?;
    match raw.trim().parse::<f64>() {
        Ok(k) if k.is_finite() && k >= 1.0 => Ok(k),
        _ => Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: raw,
            origin: settings.origin(name),
            expected: "a decimal number of at least 1, such as 1.5 or 2".to_owned(),
        }),
    }
}
