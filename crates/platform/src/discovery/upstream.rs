//! The channel a Flotilla client calls another service on: its span, its metrics, its breakers,
//! then its retries, then the load balancer, composed once per upstream service per component.
//!
//! Order matters. The span and the metrics are outermost, so they see each call as its caller saw
//! it (a breaker's refusal included, each retry inside the one span, with one `traceparent`). The breaker is next, so it sees one outcome per call (the last attempt's:
//! a call that succeeded on its retry is a success) and its refusals are never retried. Retries
//! sit on the balancer, so each attempt is a new pick that can avoid the instance that just
//! failed. The balancer ejects single instances that fail (a connection, or seven answers in a
//! row) while the service as a whole stays usable; the breaker is for when the whole service is
//! failing.

use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tower::{BoxError, Layer, Service};

use super::balance::Balanced;
use crate::resilience::breaker::{BreakerLayer, BreakerRegistry, Breakers};
use crate::resilience::client::CallPolicy;
use crate::resilience::retry::{IdempotentMethods, Retry, RetryLayer, RetryStats};
use crate::telemetry::grpc_metrics::{GrpcMetricsLayer, GrpcMetricsService};
use crate::telemetry::grpc_spans::{GrpcSpanLayer, GrpcSpans, GrpcSpansFuture};

use super::metrics::UpstreamMetrics;

/// Which Flotilla methods are unary and which are safe to send again, from the protos (decoded
/// once per process).
static FLOTILLA_METHODS: LazyLock<Arc<IdempotentMethods>> = LazyLock::new(|| {
    let methods = IdempotentMethods::flotilla().unwrap_or_else(|error| {
        // The descriptor set is compiled into the binary; should it not decode, calls go out
        // unretried rather than not at all.
        tracing::error!(%error, "the protos' descriptor set does not decode; no call is retried");
        IdempotentMethods::default()
    });
    Arc::new(methods)
});

/// A guarded, load-balanced channel to one upstream service; what tonic's generated clients take
/// (`ProductServiceClient::new(upstream)`). Clones share everything.
#[derive(Debug, Clone)]
pub struct Upstream {
    stack: GrpcSpans<GrpcMetricsService<Breakers<Retry<Balanced>>>>,
    balanced: Balanced,
    breakers: Arc<BreakerRegistry>,
    retries: RetryLayer,
}

impl Upstream {
    /// Puts `policy`'s breakers and retries on `balanced`, recording into `metrics`.
    pub(crate) fn new(balanced: Balanced, policy: &CallPolicy, metrics: &UpstreamMetrics) -> Self {
        let breakers = Arc::new(
            BreakerRegistry::new(policy.breaker.clone()).with_hook(metrics.transition_hook()),
        );
        let retries = RetryLayer::new(
            balanced.service(),
            &policy.retry,
            Arc::clone(&FLOTILLA_METHODS),
        );
        let guarded =
            BreakerLayer::new(Arc::clone(&breakers)).layer(retries.layer(balanced.clone()));
        let stack = GrpcSpanLayer::client(balanced.service())
            .layer(GrpcMetricsLayer::new(metrics.calls.clone()).layer(guarded));
        Self {
            stack,
            balanced,
            breakers,
            retries,
        }
    }

    /// The service this channel reaches.
    pub fn service(&self) -> &str {
        self.balanced.service()
    }

    /// The balancer, for its view of the instances.
    pub fn balancer(&self) -> &Balanced {
        &self.balanced
    }

    /// The breakers of this upstream's methods.
    pub fn breakers(&self) -> &Arc<BreakerRegistry> {
        &self.breakers
    }

    /// What the retry layer has done so far.
    pub fn retry_stats(&self) -> RetryStats {
        self.retries.stats()
    }
}

impl Service<http::Request<Body>> for Upstream {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = GrpcSpansFuture<BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.stack.call(request)
    }
}
