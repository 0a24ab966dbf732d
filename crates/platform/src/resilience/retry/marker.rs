//! The server side of "never retry a retry": a call that arrives as a retry (its
//! `grpc-previous-rpc-attempts` header says earlier attempts were made) is served inside a
//! task-local scope, and the retry layer makes no retries for the calls its handler makes.
//!
//! Without it, retries multiply down a chain of services: three attempts at each of three hops
//! are 27 calls to the last service, all at the moment it is least able to take them. The caller
//! one hop up is already retrying; this hop tries once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The header of the gRPC retry design (A6) naming how many attempts of this call came before it;
/// absent (or 0) on a first attempt.
pub const PREVIOUS_ATTEMPTS: http::HeaderName =
    http::HeaderName::from_static("grpc-previous-rpc-attempts");

tokio::task_local! {
    static SERVING_A_RETRY: ();
}

/// Whether this runs inside the handler of a call that is itself a retry (see
/// [`RetryMarkerLayer`]).
pub fn serving_a_retry() -> bool {
    SERVING_A_RETRY.try_with(|()| ()).is_ok()
}

/// Whether `headers` mark a retry: a `grpc-previous-rpc-attempts` of at least 1.
pub fn is_a_retry(headers: &http::HeaderMap) -> bool {
    headers
        .get(PREVIOUS_ATTEMPTS)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u32>().ok())
        .is_some_and(|attempts| attempts > 0)
}

/// Server side: serves a call that arrives as a retry inside the scope where
/// [`serving_a_retry`] is true, so the calls its handler makes are not retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryMarkerLayer;

impl<S> tower::Layer<S> for RetryMarkerLayer {
    type Service = RetryMarker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryMarker { inner }
    }
}

/// The service [`RetryMarkerLayer`] makes.
#[derive(Debug, Clone)]
pub struct RetryMarker<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RetryMarker<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let retry = is_a_retry(request.headers());
        let call = self.inner.call(request);
        if retry {
            Box::pin(SERVING_A_RETRY.scope((), call))
        } else {
            Box::pin(call)
        }
    }
}
