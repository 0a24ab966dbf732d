//! One breaker per upstream service and method, created on first use.

use std::collections::HashMap;
use std::fmt;
use std::sync::{PoisonError, RwLock};

use tokio::time::Instant;

use super::{Breaker, BreakerConfig, BreakerSnapshot, TransitionHook, default_random};

/// The breakers of one process, by service and then method, so a lookup borrows the two names and
/// allocates nothing; the read lock is all the hot path takes once a breaker exists.
pub struct BreakerRegistry {
    config: BreakerConfig,
    hook: Option<TransitionHook>,
    breakers: RwLock<HashMap<String, HashMap<String, Breaker>>>,
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BreakerRegistry {
    /// An empty registry whose breakers follow `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            hook: None,
            breakers: RwLock::new(HashMap::new()),
        }
    }

    /// The same, calling `hook` on every state change of every breaker (state changes are logged
    /// either way).
    #[must_use]
    pub fn with_hook(mut self, hook: TransitionHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The settings its breakers follow.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The breaker of `service`/`method`, created closed on first use.
    pub fn get(&self, service: &str, method: &str) -> Breaker {
        {
            let breakers = self.breakers.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(breaker) = breakers
                .get(service)
                .and_then(|methods| methods.get(method))
            {
                return breaker.clone();
            }
        }
        let mut breakers = self
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Another caller may have created it between the two locks.
        breakers
            .entry(service.to_owned())
            .or_default()
            .entry(method.to_owned())
            .or_insert_with(|| {
                Breaker::build(
                    service,
                    method,
                    &self.config.policy,
                    default_random(),
                    self.hook.clone(),
                )
            })
            .clone()
    }

    /// The breaker for a gRPC request path, `/package.Service/Method`; `None` for another shape.
    pub fn for_path(&self, path: &str) -> Option<Breaker> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        (!service.is_empty() && !method.is_empty() && !method.contains('/'))
            .then(|| self.get(service, method))
    }

    /// Every breaker's state and counts at `now`, sorted by service and method.
    pub fn snapshot(&self, now: Instant) -> Vec<BreakerSnapshot> {
        let breakers: Vec<Breaker> = {
            let breakers = self.breakers.read().unwrap_or_else(PoisonError::into_inner);
            breakers
                .values()
                .flat_map(|methods| methods.values().cloned())
                .collect()
        };
        let mut snapshots: Vec<BreakerSnapshot> = breakers
            .iter()
            .map(|breaker| breaker.snapshot(now))
            .collect();
        snapshots.sort_by(|a, b| (&a.service, &a.method).cmp(&(&b.service, &b.method)));
        snapshots
    }
}
