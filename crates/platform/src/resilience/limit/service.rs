//! The tower layer: admits a call while fewer than the limit are in flight, sheds it otherwise, and
//! feeds every finished call back to the [`AimdLimit`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::time::Instant;
use tonic::Code;

use super::{AimdLimit, LimitConfig, Outcome, Sample};
use crate::resilience::deadline;
use crate::resilience::watched::{Ending, OnEnd, Watched, grpc_status};
use crate::telemetry::metrics::{Metrics, encode_gauges};

/// The wait a shed call's answer asks for, in gRPC's server-pushback metadata
/// ([`PUSHBACK_METADATA`]). Short on purpose: a slot frees as soon as one call in flight finishes,
/// which for Flotilla's calls is tens of milliseconds, and a caller retrying (on another instance,
/// most likely) must still fit in its deadline (the gateway's is 3 s) and under the longest
/// pushback the retry layer honours (`FLOTILLA_RETRY_BACKOFF_MAX`, 250 ms by default). Long enough
/// that a retry does not land on a server that has had no time to drain. The header's presence
/// matters most: it tells overload shedding apart from a quota (the auth service's login limit
/// sends `retry-after` instead), so the gateway answers 503, not 429.
pub(super) const SHED_PUSHBACK: Duration = Duration::from_millis(100);

/// gRPC's server-pushback metadata (the retry design, A6): how many milliseconds the caller should
/// wait before it tries again.
pub(super) const PUSHBACK_METADATA: &str = "grpc-retry-pushback-ms";

/// The least time between two "shedding" warnings: under overload there is one shed call per
/// request, and a warning each would drown the log.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Server side: limits the calls in flight to an adaptive limit, answering `RESOURCE_EXHAUSTED` at
/// once to those over it. Every service made from one layer (tonic makes one per connection)
/// shares its count and its limit.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    shared: Arc<Shared>,
}

impl ConcurrencyLimitLayer {
    /// A layer whose limit starts at `config.initial`.
    pub fn new(config: &LimitConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    in_flight: 0,
                    limit: AimdLimit::new(config),
                    last_warned: None,
                    shed_unreported: 0,
                }),
            }),
        }
    }

    /// The calls in flight and the current limit, for metrics.
    pub fn current(&self) -> (u32, u32) {
        self.shared.current()
    }

    /// Reports the limit and the calls in flight of `component`'s server in `metrics`:
    /// `flotilla_concurrency_limit{service}` and `flotilla_concurrency_in_flight{service}`.
    pub fn register_metrics(&self, component: &'static str, metrics: &Metrics) {
        metrics.register_collector(LimitCollector {
            component,
            layer: self.clone(),
        });
    }
}

/// Reads a limit at scrape time.
#[derive(Debug)]
struct LimitCollector {
    component: &'static str,
    layer: ConcurrencyLimitLayer,
}

impl Collector for LimitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (in_flight, limit) = self.layer.current();
        let labels = [("service", self.component)];
        encode_gauges(
            &mut encoder,
            "flotilla_concurrency_limit",
            "The adaptive concurrency limit of a server: calls over it are shed",
            [(labels, i64::from(limit))],
        )?;
        encode_gauges(
            &mut encoder,
            "flotilla_concurrency_in_flight",
            "Calls a server is handling under its concurrency limit",
            [(labels, i64::from(in_flight))],
        )
    }
}

impl<S> tower::Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`ConcurrencyLimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ConcurrencyLimit<S> {
    /// The calls in flight and the current limit, for metrics.
    pub fn current(&self) -> (u32, u32) {
        self.shared.current()
    }
}

impl<S, B> tower::Service<http::Request<B>> for ConcurrencyLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner service's alone: a full limit sheds calls, it never makes the
        // connection wait.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if crate::serve::is_plumbing(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // Admission happens here, not in the future, so the count is right the moment a call is
        // accepted and two calls cannot both take the last place.
        let Some(mut permit) = Shared::try_acquire(&self.shared) else {
            let (in_flight, limit) = self.shared.current();
            let mut status = tonic::Status::resource_exhausted(format!(
                "server overloaded: {in_flight} calls in flight (limit {limit}); retry later"
            ));
            status.metadata_mut().insert(
                PUSHBACK_METADATA,
                tonic::metadata::MetadataValue::from(shed_pushback_millis()),
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        permit.deadline = deadline::timeout(request.headers())
            .and_then(|timeout| permit.started.checked_add(timeout));
        let call = self.inner.call(request);
        Box::pin(async move {
            // An error, or this future dropped, drops the permit: sampled as a drop when the
            // call's deadline had passed (the server was too slow to answer in time: tonic drops
            // the call then, so no answer ever shows it), else unsampled (the caller gave up).
            let response = call.await?;
            permit.latency = Some(permit.started.elapsed());
            permit.code = grpc_status(response.headers());
            let (parts, body) = response.into_parts();
            let body = tonic::body::Body::new(Watched::new(body, permit));
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// The count and the limit, shared by every service of one layer.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_flight: u32,
    limit: AimdLimit,
    last_warned: Option<Instant>,
    /// Calls shed since the last warning, so the warning can say how many it stands for.
    shed_unreported: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (each update is one assignment), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> (u32, u32) {
        let state = self.lock();
        (state.in_flight, state.limit.limit())
    }

    /// A place for one call, or `None` (and a rate-limited warning) when the limit is reached.
    fn try_acquire(shared: &Arc<Self>) -> Option<Permit> {
        let mut state = shared.lock();
        let limit = state.limit.limit();
        if state.in_flight >= limit {
            state.shed_unreported += 1;
            let now = Instant::now();
            let due = state
                .last_warned
                .is_none_or(|last| now.saturating_duration_since(last) >= WARN_INTERVAL);
            if due {
                tracing::warn!(
                    in_flight = state.in_flight,
                    limit,
                    shed = state.shed_unreported,
                    "concurrency limit reached: shedding calls with RESOURCE_EXHAUSTED"
                );
                state.last_warned = Some(now);
                state.shed_unreported = 0;
            }
            return None;
        }
        state.in_flight += 1;
        Some(Permit {
            shared: Arc::clone(shared),
            in_flight: state.in_flight,
            started: Instant::now(),
            deadline: None,
            latency: None,
            code: None,
        })
    }

    fn release(&self, sample: Option<Sample>) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(sample) = sample {
            let before = state.limit.limit();
            let after = state.limit.on_sample(sample);
            if after != before {
                tracing::debug!(
                    before,
                    after,
                    in_flight = state.in_flight,
                    "concurrency limit changed"
                );
            }
        }
    }
}

/// One admitted call's place; giving it back (dropping it) is what ends the call for the count.
#[derive(Debug)]
struct Permit {
    shared: Arc<Shared>,
    /// Calls in flight when this one was admitted, itself included.
    in_flight: u32,
    started: Instant,
    /// The call's deadline, from its `grpc-timeout`.
    deadline: Option<Instant>,
    /// Time to the response headers; `None` until they came.
    latency: Option<Duration>,
    /// The call's gRPC status once seen (headers or trailers).
    code: Option<Code>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let sample = match (self.latency, self.code) {
            (Some(latency), Some(code)) => Some(Sample {
                latency,
                in_flight: self.in_flight,
                outcome: Outcome::of(code),
            }),
            _ => {
                let now = Instant::now();
                self.deadline
                    .filter(|deadline| *deadline <= now)
                    .map(|_| Sample {
                        latency: now.saturating_duration_since(self.started),
                        in_flight: self.in_flight,
                        outcome: Outcome::Dropped,
                    })
            }
        };
        self.shared.release(sample);
    }
}

/// A response body holds its call's [`Permit`] until it ends or is dropped, reading the status
/// from the trailers on the way.
impl OnEnd for Permit {
    fn ended(mut self, ending: Ending<'_>) {
        match ending {
            Ending::Trailers(trailers) => {
                self.code = grpc_status(trailers).or(self.code).or(Some(Code::Ok));
            }
            // A body that ends without trailers ended well, unless its headers said otherwise.
            Ending::Bare => self.code = self.code.or(Some(Code::Ok)),
            // A broken stream says nothing about load: no sample (unless past its deadline).
            Ending::Broken => self.latency = None,
        }
    }
}

/// [`SHED_PUSHBACK`] in whole milliseconds, as the metadata carries it.
fn shed_pushback_millis() -> u64 {
    u64::try_from(SHED_PUSHBACK.as_millis()).unwrap_or(u64::MAX)
}
