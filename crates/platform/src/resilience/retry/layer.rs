//! The retry layer: buffers a unary call's request, sends it, and sends it again when
//! [`classify`] says the outcome may be retried and the back-off, the deadline and the budget
//! allow.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use prost::bytes::Bytes;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Service, ServiceExt};

use super::idempotency::{IdempotentMethods, MethodKind};
use super::marker::{PREVIOUS_ATTEMPTS, serving_a_retry};
use super::policy::{Pushback, RetryConfig, Retryable, classify};
use crate::resilience::attempt::{AttemptError, AvoidInstances};
use crate::resilience::deadline;

/// Uniform draws in `[0, 1)` for the back-off's jitter; tests inject a fixed value.
pub type JitterSource = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The future of a call through [`Retry`].
pub type RetryFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

/// What a retry layer has done since it was made, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Calls of known unary methods (each one a deposit in the budget), retried or not.
    pub calls: u64,
    /// Retries sent.
    pub retries: u64,
    /// Retries not sent because the budget was spent.
    pub refused_by_budget: u64,
    /// Retries not sent because what was left of the call's deadline could not hold another try.
    pub skipped_for_deadline: u64,
}

/// Retries the calls to one upstream service. One per upstream service per process: every
/// service it makes, and every clone, shares its budget and counters.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("service", &self.shared.service)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// A layer retrying calls to `service` (named in logs) as `config` says, knowing methods from
    /// `methods`, with jitter from the operating system's randomness.
    pub fn new(service: &str, config: &RetryConfig, methods: Arc<IdempotentMethods>) -> Self {
        Self::with_jitter(service, config, methods, default_jitter())
    }

    /// The same, with the back-off's jitter drawn from `jitter`.
    pub fn with_jitter(
        service: &str,
        config: &RetryConfig,
        methods: Arc<IdempotentMethods>,
        jitter: JitterSource,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                service: service.into(),
                config: config.clone(),
                methods,
                budget: config.budget(),
                jitter,
                stats: Counters::default(),
            }),
        }
    }

    /// What the layer has done so far.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.snapshot()
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`RetryLayer`] makes.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("service", &self.shared.service)
            .finish_non_exhaustive()
    }
}

impl<S> Retry<S> {
    /// What its layer has done so far (shared with every service of the same layer).
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.snapshot()
    }
}

impl<S> Service<http::Request<Body>> for Retry<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = RetryFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Streaming and unknown methods are not touched: their bodies must not be buffered.
        let Some(kind) = self
            .shared
            .methods
            .get(request.uri().path())
            .filter(MethodKind::unary)
        else {
            return Box::pin(self.inner.call(request));
        };
        self.shared.budget.deposit();
        self.shared.stats.calls.fetch_add(1, Ordering::Relaxed);
        if self.shared.config.max_retries == 0 || serving_a_retry() {
            return Box::pin(self.inner.call(request));
        }
        // The service that was polled ready takes the first attempt; the clone left in its place
        // is made ready again by the next caller.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(attempts(Arc::clone(&self.shared), inner, request, kind))
    }
}

/// The layer's state, shared by every clone.
struct Shared {
    service: Arc<str>,
    config: RetryConfig,
    methods: Arc<IdempotentMethods>,
    budget: TpsBudget,
    jitter: JitterSource,
    stats: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    retries: AtomicU64,
    refused_by_budget: AtomicU64,
    skipped_for_deadline: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RetryStats {
        RetryStats {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            refused_by_budget: self.refused_by_budget.load(Ordering::Relaxed),
            skipped_for_deadline: self.skipped_for_deadline.load(Ordering::Relaxed),
        }
    }
}

/// One unary call: the first attempt on `inner` (already ready), then the retries the policy
/// allows.
async fn attempts<S>(
    shared: Arc<Shared>,
    mut inner: S,
    request: http::Request<Body>,
    kind: MethodKind,
) -> Result<http::Response<Body>, BoxError>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
{
    let (mut parts, body) = request.into_parts();
    // One deadline for all attempts, fixed before the first.
    let deadline = match deadline::outgoing(&mut parts.headers, Instant::now()) {
        Ok(deadline) => deadline,
        Err(status) => return Err(Box::new(AttemptError::unsent(status))),
    };
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(status) => {
            return Err(Box::new(Status::new(
                status.code(),
                format!(
                    "the request could not be read to send: {}",
                    status.message()
                ),
            )));
        }
    };
    let mut avoid = parts
        .extensions
        .get::<AvoidInstances>()
        .cloned()
        .unwrap_or_default();
    let mut attempt: u32 = 0;
    loop {
        let started = Instant::now();
        let mut request = rebuild(&parts, &bytes);
        if let Some(deadline) = deadline {
            // Each attempt gets what is left, not the whole call's timeout again.
            deadline::set_timeout(
                request.headers_mut(),
                deadline.saturating_duration_since(started),
            );
        }
        let outcome = if attempt == 0 {
            inner.call(request).await
        } else {
            request
                .headers_mut()
                .insert(PREVIOUS_ATTEMPTS, HeaderValue::from(attempt));
            request.extensions_mut().insert(avoid.clone());
            match inner.ready().await {
                Ok(ready) => ready.call(request).await,
                Err(error) => Err(error),
            }
        };
        if attempt >= shared.config.max_retries {
            return outcome;
        }
        let Some(retryable) = classify(&outcome, kind) else {
            return outcome;
        };
        let retry = attempt + 1;
        let Some(wait) = wait_before(&shared, &retryable, retry) else {
            return outcome;
        };
        let now = Instant::now();
        if let Some(deadline) = deadline {
            // The next try needs the wait and about as long as this one took.
            let needed =
                wait.saturating_add(now.saturating_duration_since(started).max(MIN_ATTEMPT));
            if deadline.saturating_duration_since(now) < needed {
                shared
                    .stats
                    .skipped_for_deadline
                    .fetch_add(1, Ordering::Relaxed);
                return outcome;
            }
        }
        if !shared.budget.withdraw() {
            shared
                .stats
                .refused_by_budget
                .fetch_add(1, Ordering::Relaxed);
            return outcome;
        }
        tracing::debug!(
            service = &*shared.service,
            method = parts.uri.path(),
            attempt = retry,
            reason = retryable.reason.as_str(),
            instance = retryable.instance.as_deref(),
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "retrying a call"
        );
        // The failed answer is given up: its body (empty, for a status-only answer) is dropped.
        drop(outcome);
        if let Some(instance) = retryable.instance {
            avoid.add(instance);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        shared.stats.retries.fetch_add(1, Ordering::Relaxed);
        attempt = retry;
    }
}

/// The least time an attempt is assumed to need, however fast the failed one was.
const MIN_ATTEMPT: Duration = Duration::from_millis(1);

/// How long to wait before retry number `retry`: the server's pushback when it sent one (A6),
/// otherwise a full-jitter draw under the back-off ceiling; `None` when the server asked for no
/// retry, or for a longer wait than this layer's longest back-off.
fn wait_before(shared: &Shared, retryable: &Retryable, retry: u32) -> Option<Duration> {
    match retryable.pushback {
        Pushback::None => {
            let fraction = (shared.jitter)();
            let fraction = if fraction.is_finite() {
                fraction.clamp(0.0, 1.0)
            } else {
                0.0
            };
            Some(shared.config.backoff_ceiling(retry).mul_f64(fraction))
        }
        Pushback::Wait(wait) if wait <= shared.config.backoff_max => Some(wait),
        Pushback::Wait(_) | Pushback::DoNotRetry => None,
    }
}

/// One attempt's request: the call's head (headers, extensions and all) and its buffered body.
fn rebuild(parts: &http::request::Parts, bytes: &Bytes) -> http::Request<Body> {
    http::Request::from_parts(parts.clone(), Body::new(Full::new(bytes.clone())))
}

/// Jitter from `fastrand`'s thread-local generator (seeded from the operating system): jitter
/// needs spread, not secrecy.
fn default_jitter() -> JitterSource {
    Arc::new(fastrand::f64)
}
