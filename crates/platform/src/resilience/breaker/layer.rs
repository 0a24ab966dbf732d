//! The breakers as a client-side tower layer: every call asks its method's breaker first, and its
//! gRPC status is recorded when it is known.
//!
//! Where the status is: in the response headers for a trailers-only answer (how a tonic server
//! sends a handler's error, and how Flotilla's shedding and fault layers answer), otherwise in the
//! trailers at the end of the body, which is where the permit travels to; and in the error for a
//! call that got no answer (the balancer's `AttemptError`, tonic's own errors). A body dropped
//! before its end, like a call dropped before its answer, drops its permit, which counts as
//! nothing (the caller gave up).
//!
//! A rejected call fails at once with `UNAVAILABLE` naming the service, the method and the wait
//! ([`Rejected::to_status`]); it never reaches the layers below, so retries never multiply it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::BoxError;

use super::{BreakerRegistry, Outcome, PUSHBACK, Permit, classify, classify_headers};
use crate::resilience::attempt::{AttemptError, Reach};
use crate::resilience::watched::{Ending, OnEnd, Watched};

/// Puts the breakers of `registry` in front of a client's channel.
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    registry: Arc<BreakerRegistry>,
}

impl BreakerLayer {
    /// A layer asking the breakers of `registry` (one per service and method, shared by every
    /// channel of the process that uses this registry).
    pub fn new(registry: Arc<BreakerRegistry>) -> Self {
        Self { registry }
    }
}

impl<S> tower::Layer<S> for BreakerLayer {
    type Service = Breakers<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breakers {
            inner,
            registry: Arc::clone(&self.registry),
        }
    }
}

/// The service [`BreakerLayer`] makes.
#[derive(Debug, Clone)]
pub struct Breakers<S> {
    inner: S,
    registry: Arc<BreakerRegistry>,
}

impl<S> Breakers<S> {
    /// The service the breakers guard.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// The future of a call through [`Breakers`].
pub type BreakersFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

impl<S> tower::Service<http::Request<Body>> for Breakers<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BreakersFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Not a gRPC path: nothing to key a breaker on.
        let Some(breaker) = self.registry.for_path(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let permit = match breaker.try_acquire(Instant::now()) {
            Ok(permit) => permit,
            Err(rejected) => {
                tracing::debug!(%rejected, "call refused by its circuit breaker");
                let status: BoxError = Box::new(rejected.to_status());
                return Box::pin(std::future::ready(Err(status)));
            }
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            match call.await {
                Ok(response) => {
                    if let Some(outcome) = classify_headers(response.headers()) {
                        permit.record(outcome, Instant::now());
                        return Ok(response);
                    }
                    Ok(response.map(|body| Body::new(Watched::new(body, permit))))
                }
                Err(error) => {
                    permit.record(outcome_of_error(&*error), Instant::now());
                    Err(error)
                }
            }
        })
    }
}

/// How a call that got no answer counts. A call that never went to any instance (none listed,
/// all ejected, or its deadline spent before it could start) says nothing about the upstream:
/// counting it would open the breaker on a two-second restart of a one-instance service, or on
/// the caller's own slowness. Otherwise the code a caller will see counts, as tonic's client finds
/// it in the error; a deadline tonic enforced itself is the upstream being too slow.
fn outcome_of_error(error: &(dyn std::error::Error + 'static)) -> Outcome {
    if let Some(attempt) = error.downcast_ref::<AttemptError>()
        && attempt.reach() == Reach::NotSent
        && attempt.instance().is_none()
    {
        return Outcome::Ignored;
    }
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(status) = error.downcast_ref::<Status>() {
            return classify(status.code(), status.metadata().contains_key(PUSHBACK));
        }
        if error.is::<tonic::TimeoutExpired>() {
            return classify(Code::DeadlineExceeded, false);
        }
        current = error.source();
    }
    classify(Code::Unknown, false)
}

/// A response body carries its call's permit until the status arrives in the trailers.
impl OnEnd for Permit {
    fn ended(self, ending: Ending<'_>) {
        let outcome = match ending {
            Ending::Trailers(trailers) => classify_headers(trailers).unwrap_or(Outcome::Failure),
            // An answer must end with a status: without one, or broken off, it failed.
            Ending::Bare | Ending::Broken => Outcome::Failure,
        };
        self.record(outcome, Instant::now());
    }
}

#[cfg(test)]
mod tests;
