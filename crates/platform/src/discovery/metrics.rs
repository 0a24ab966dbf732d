//! The metrics of a component's upstreams: its gRPC calls (`grpc_client_…`), and what its
//! breakers, retries and balancers did, so an open breaker or a spent retry budget shows on a
//! dashboard before it shows in an incident review.
//!
//! - `flotilla_breaker_state{grpc_service, grpc_method, state}`: 1 for the state each breaker is
//!   in, 0 for the others (the shape of an enum in Prometheus, so `== 1` alerts work);
//! - `flotilla_breaker_transitions_total{grpc_service, grpc_method, from, to}`;
//! - `flotilla_breaker_reject_probability{grpc_service, grpc_method}` (adaptive breakers);
//! - `flotilla_retry_calls_total{upstream}`, `flotilla_retries_total{upstream}` and
//!   `flotilla_retries_skipped_total{upstream, reason}` (`budget` or `deadline`): the retry share
//!   is `retries / calls`, which the budget keeps near 20 %;
//! - `flotilla_discovery_instances{upstream}`: instances discovery lists as healthy and the
//!   balancer holds; `flotilla_balancer_ejected_instances{upstream}`: those sitting out.
//!
//! The counts live in the layers (`BreakerRegistry::snapshot`, `RetryStats`,
//! `Balanced::snapshot`); a collector reads them at scrape time, so the call path pays nothing for
//! the breaker, retry and balancer figures. Only transitions are counted as they happen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use super::upstream::Upstream;
use crate::resilience::breaker::{BreakerState, Transition, TransitionHook};
use crate::resilience::retry::RetryStats;
use crate::telemetry::grpc_metrics::GrpcMetrics;
use crate::telemetry::metrics::{Metrics, encode_family, encode_gauges};

/// `from` and `to` of a breaker transition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransitionLabels {
    grpc_service: String,
    grpc_method: String,
    from: &'static str,
    to: &'static str,
}

/// What a [`super::Discovery`] records about the calls its channels carry.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamMetrics {
    /// The process-wide registry these are in.
    pub(crate) metrics: Metrics,
    /// `grpc_client_…`.
    pub(crate) calls: GrpcMetrics,
    transitions: Family<TransitionLabels, Counter>,
}

impl UpstreamMetrics {
    /// Registers the client-side metrics in a new registry, with a collector reading `channels`.
    pub(crate) fn register(channels: &Arc<Mutex<BTreeMap<String, Upstream>>>) -> Self {
        let metrics = Metrics::new();
        let calls = GrpcMetrics::client(&metrics);
        let transitions = Family::<TransitionLabels, Counter>::default();
        metrics.register(
            "flotilla_breaker_transitions",
            "Circuit breaker state changes, per upstream gRPC method",
            transitions.clone(),
        );
        metrics.register_collector(UpstreamCollector {
            channels: Arc::clone(channels),
        });
        Self {
            metrics,
            calls,
            transitions,
        }
    }

    /// The hook a breaker registry calls on each state change.
    pub(crate) fn transition_hook(&self) -> TransitionHook {
        let transitions = self.transitions.clone();
        Arc::new(move |transition: &Transition<'_>| {
            transitions
                .get_or_create(&TransitionLabels {
                    grpc_service: transition.service.to_owned(),
                    grpc_method: transition.method.to_owned(),
                    from: transition.from.as_str(),
                    to: transition.to.as_str(),
                })
                .inc();
        })
    }
}

/// Reads every channel's breakers, retry counts and balancer at scrape time.
#[derive(Debug)]
struct UpstreamCollector {
    channels: Arc<Mutex<BTreeMap<String, Upstream>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BreakerLabels {
    grpc_service: String,
    grpc_method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    grpc_service: String,
    grpc_method: String,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SkippedLabels {
    upstream: String,
    reason: &'static str,
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let channels: Vec<Upstream> = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        let breakers: Vec<_> = channels
            .iter()
            .flat_map(|upstream| upstream.breakers().snapshot(now))
            .collect();

        encode_gauges(
            &mut encoder,
            "flotilla_breaker_state",
            "Circuit breaker state per upstream gRPC method: 1 for the state it is in",
            breakers.iter().flat_map(|breaker| {
                BreakerState::ALL.map(|state| {
                    let labels = StateLabels {
                        grpc_service: breaker.service.clone(),
                        grpc_method: breaker.method.clone(),
                        state: state.as_str(),
                    };
                    (labels, i64::from(breaker.state == state))
                })
            }),
        )?;

        encode_gauges(
            &mut encoder,
            "flotilla_breaker_reject_probability",
            "The probability an adaptive breaker turns the next call away",
            breakers.iter().map(|breaker| {
                let labels = BreakerLabels {
                    grpc_service: breaker.service.clone(),
                    grpc_method: breaker.method.clone(),
                };
                (labels, breaker.reject_probability)
            }),
        )?;

        let figures: Vec<UpstreamFigures> = channels
            .iter()
            .map(|upstream| {
                let endpoints = upstream.balancer().snapshot();
                UpstreamFigures {
                    upstream: upstream.service().to_owned(),
                    retries: upstream.retry_stats(),
                    instances: endpoints.len(),
                    ejected: endpoints
                        .iter()
                        .filter(|endpoint| endpoint.ejected_until.is_some())
                        .count(),
                }
            })
            .collect();
        encode_family(
            &mut encoder,
            "flotilla_retry_calls",
            "Calls to an upstream that the retry layer saw (each one a deposit in the budget)",
            figures.iter().map(|figures| {
                (
                    upstream_labels(figures),
                    ConstCounter::new(figures.retries.calls),
                )
            }),
        )?;
        encode_family(
            &mut encoder,
            "flotilla_retries",
            "Retries sent to an upstream",
            figures.iter().map(|figures| {
                (
                    upstream_labels(figures),
                    ConstCounter::new(figures.retries.retries),
                )
            }),
        )?;
        encode_family(
            &mut encoder,
            "flotilla_retries_skipped",
            "Retries not sent: the budget was spent, or the deadline left no time for another try",
            figures.iter().flat_map(|figures| {
                [
                    ("budget", figures.retries.refused_by_budget),
                    ("deadline", figures.retries.skipped_for_deadline),
                ]
                .map(|(reason, count)| {
                    let labels = SkippedLabels {
                        upstream: figures.upstream.clone(),
                        reason,
                    };
                    (labels, ConstCounter::new(count))
                })
            }),
        )?;
        encode_gauges(
            &mut encoder,
            "flotilla_discovery_instances",
            "Healthy instances of an upstream that discovery lists and the balancer holds",
            figures.iter().map(|figures| {
                let count = i64::try_from(figures.instances).unwrap_or(i64::MAX);
                (upstream_labels(figures), count)
            }),
        )?;
        encode_gauges(
            &mut encoder,
            "flotilla_balancer_ejected_instances",
            "Instances of an upstream sitting out after failed connections or answers",
            figures.iter().map(|figures| {
                let count = i64::try_from(figures.ejected).unwrap_or(i64::MAX);
                (upstream_labels(figures), count)
            }),
        )?;
        Ok(())
    }
}

/// What one upstream's retry layer and balancer report.
struct UpstreamFigures {
    upstream: String,
    retries: RetryStats,
    instances: usize,
    ejected: usize,
}

fn upstream_labels(figures: &UpstreamFigures) -> UpstreamLabels {
    UpstreamLabels {
        upstream: figures.upstream.clone(),
    }
}
