//! How a component calls the services it depends on: the breaker and retry settings of each
//! upstream, read once at start so a bad value stops the component with a clear message.
//!
//! Every setting may be given for one upstream alone, `FLOTILLA_<UPSTREAM>_<SETTING>`
//! (`FLOTILLA_PRODUCT_BREAKER_FAILURES`), over the general one (`FLOTILLA_BREAKER_FAILURES`):
//! callers of a slow reporting service need a longer cool-down than callers of a quick one.

use std::collections::BTreeMap;

use crate::config::{ConfigError, Settings};
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::retry::RetryConfig;

/// How calls to one upstream service are guarded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallPolicy {
    /// Its breakers (one per method).
    pub breaker: BreakerConfig,
    /// Its retries and their budget.
    pub retry: RetryConfig,
}

impl CallPolicy {
    /// The general settings (`FLOTILLA_BREAKER…`, `FLOTILLA_RETRY…`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            breaker: BreakerConfig::from_settings(settings)?,
            retry: RetryConfig::from_settings(settings)?,
        })
    }

    /// The settings for calls to `upstream`: `FLOTILLA_<UPSTREAM>_…` where set, the general
    /// ones elsewhere.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable.
    pub fn for_upstream(settings: &Settings, upstream: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            breaker: BreakerConfig::for_upstream(settings, upstream)?,
            retry: RetryConfig::for_upstream(settings, upstream)?,
        })
    }
}

/// The call policies of a component: one per known upstream, the general one for the rest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallPolicies {
    general: CallPolicy,
    by_upstream: BTreeMap<String, CallPolicy>,
}

impl CallPolicies {
    /// Reads the general policy and one for each of `upstreams`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable.
    pub fn from_settings(settings: &Settings, upstreams: &[&str]) -> Result<Self, ConfigError> {
        let general = CallPolicy::from_settings(settings)?;
        let by_upstream = upstreams
            .iter()
            .map(|upstream| {
                CallPolicy::for_upstream(settings, upstream)
                    .map(|policy| ((*upstream).to_owned(), policy))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            general,
            by_upstream,
        })
    }

    /// The same policy for every upstream.
    pub fn uniform(policy: CallPolicy) -> Self {
        Self {
            general: policy,
            by_upstream: BTreeMap::new(),
        }
    }

    /// The policy for calls to `upstream`.
    pub fn get(&self, upstream: &str) -> &CallPolicy {
        self.by_upstream.get(upstream).unwrap_or(&self.general)
    }

    /// Every variable these policies may read for `upstreams`, general and per upstream: for
    /// the list of known settings.
    pub fn setting_names(upstreams: &[&str]) -> Vec<String> {
        let general: Vec<&str> = BreakerConfig::SETTINGS
            .iter()
            .chain(crate::resilience::retry::RETRY_SETTINGS)
            .copied()
            .collect();
        let mut names: Vec<String> = general.iter().map(|name| (*name).to_owned()).collect();
        for upstream in upstreams {
            for name in &general {
                let rest = name.strip_prefix("FLOTILLA_").unwrap_or(name);
                names.push(format!("FLOTILLA_{}_{rest}", upstream.to_ascii_uppercase()));
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::breaker::BreakerPolicy;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn each_upstream_reads_its_own_settings_over_the_general_ones() -> TestResult {
        let settings = Settings::from_pairs([
            ("FLOTILLA_RETRY_MAX", "1"),
            ("FLOTILLA_PRODUCT_RETRY_MAX", "0"),
            ("FLOTILLA_AUTH_BREAKER", "adaptive"),
        ]);
        let policies = CallPolicies::from_settings(&settings, &["user", "auth", "product"])?;
        assert_eq!(policies.get("product").retry.max_retries, 0);
        assert_eq!(policies.get("user").retry.max_retries, 1);
        assert_eq!(policies.get("elsewhere").retry.max_retries, 1);
        assert!(matches!(
            policies.get("auth").breaker.policy,
            BreakerPolicy::Adaptive { .. }
        ));
        assert!(matches!(
            policies.get("user").breaker.policy,
            BreakerPolicy::ConsecutiveFailures { .. }
        ));
        Ok(())
    }

    #[test]
    fn a_bad_value_for_one_upstream_names_its_variable() {
        let settings = Settings::from_pairs([("FLOTILLA_USER_RETRY_MAX", "many")]);
        match CallPolicies::from_settings(&settings, &["user"]) {
            Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, "FLOTILLA_USER_RETRY_MAX"),
            other => panic!("expected an error naming FLOTILLA_USER_RETRY_MAX, got {other:?}"),
        }
    }

    #[test]
    fn every_setting_is_listed_for_every_upstream() {
        let names = CallPolicies::setting_names(&["product"]);
        for name in [
            "FLOTILLA_BREAKER",
            "FLOTILLA_BREAKER_COOL_DOWN",
            "FLOTILLA_RETRY_MAX",
            "FLOTILLA_PRODUCT_BREAKER_K",
            "FLOTILLA_PRODUCT_RETRY_BUDGET_PERCENT",
        ] {
            assert!(names.iter().any(|listed| listed == name), "{name}");
        }
    }
}
