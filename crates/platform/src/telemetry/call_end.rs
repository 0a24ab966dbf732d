//! How a gRPC call ended, once, whichever way it ends: the one state machine the metrics and span
//! layers share.
//!
//! A call ends with an error (its code), with trailers-only headers (the status is in them), with
//! trailers at the end of its body, with a body that ends bare or breaks off (UNKNOWN: an answer
//! must carry a status), or not at all: its future or its body is dropped first. That last case is
//! common, not exotic: tonic's own `grpc-timeout` wrapper sits outside every layer and drops the
//! call's future when the deadline passes, and a caller that resets its stream drops the body. A
//! dropped call counts as DEADLINE_EXCEEDED once its `grpc-timeout` has elapsed, CANCELLED before.

use std::future::Future;

use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;

use super::grpc_metrics::ErrorCode;
use crate::resilience::watched::{Ending, OnEnd, Watched, grpc_status};

/// Calls `finish` with the code a call ended with, exactly once.
pub(crate) struct CallEnd<F: FnOnce(Code)> {
    finish: Option<F>,
    started: Instant,
    /// The request's `grpc-timeout`, read only if the call is abandoned: most calls end on
    /// their own, and parsing it on every call would be work done for nothing.
    timeout: Option<http::HeaderValue>,
}

impl<F: FnOnce(Code)> CallEnd<F> {
    /// For a call whose request carries `headers` (its `grpc-timeout`, if any, is the deadline a
    /// dropped call is judged by).
    pub(crate) fn new(headers: &http::HeaderMap, finish: F) -> Self {
        Self {
            finish: Some(finish),
            started: Instant::now(),
            timeout: crate::resilience::deadline::timeout_value(headers),
        }
    }

    fn end(&mut self, code: Code) {
        if let Some(finish) = self.finish.take() {
            finish(code);
        }
    }
}

impl<F: FnOnce(Code)> OnEnd for CallEnd<F> {
    fn ended(mut self, ending: Ending<'_>) {
        let code = match ending {
            Ending::Trailers(trailers) => grpc_status(trailers),
            Ending::Bare | Ending::Broken => None,
        };
        self.end(code.unwrap_or(Code::Unknown));
    }
}

impl<F: FnOnce(Code)> Drop for CallEnd<F> {
    fn drop(&mut self) {
        let late = self
            .timeout
            .as_ref()
            .and_then(crate::resilience::deadline::parse_timeout)
            .is_some_and(|timeout| self.started.elapsed() >= timeout);
        self.end(if late {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        });
    }
}

/// Awaits a call's `response` and settles `end` with how it ended: at once for an error or a
/// trailers-only answer, at the end of the body otherwise, and on drop if the call is abandoned
/// on the way.
pub(crate) async fn watch<R, E, F>(
    response: impl Future<Output = Result<http::Response<R>, E>>,
    mut end: CallEnd<F>,
) -> Result<http::Response<Body>, E>
where
    R: http_body::Body<Data = prost::bytes::Bytes> + Send + 'static,
    R::Error: Into<tower::BoxError>,
    E: ErrorCode,
    F: FnOnce(Code) + Send + Unpin + 'static,
{
    match response.await {
        Err(error) => {
            end.end(error.grpc_code());
            Err(error)
        }
        Ok(response) => match grpc_status(response.headers()) {
            Some(code) => {
                end.end(code);
                Ok(response.map(Body::new))
            }
            None => Ok(response.map(|body| Body::new(Watched::new(Body::new(body), end)))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<Code>>>, impl FnOnce(Code) + Send + 'static) {
        let codes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&codes);
        (codes, move |code| {
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(code)
        })
    }

    fn recorded(codes: &Arc<Mutex<Vec<Code>>>) -> Vec<Code> {
        codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    type Never = std::future::Pending<Result<http::Response<Body>, tower::BoxError>>;

    #[tokio::test(start_paused = true)]
    async fn a_call_dropped_past_its_grpc_timeout_is_deadline_exceeded_once() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_static("100m"));
        let (codes, finish) = recorder();
        let call = watch(
            std::future::pending() as Never,
            CallEnd::new(&headers, finish),
        );
        // What tonic's timeout wrapper does when the deadline passes.
        let outcome = tokio::time::timeout(Duration::from_millis(150), call).await;
        assert!(outcome.is_err());
        assert_eq!(recorded(&codes), vec![Code::DeadlineExceeded]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_dropped_before_its_deadline_is_cancelled() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_static("1S"));
        let (codes, finish) = recorder();
        let call = watch(
            std::future::pending() as Never,
            CallEnd::new(&headers, finish),
        );
        let outcome = tokio::time::timeout(Duration::from_millis(10), call).await;
        assert!(outcome.is_err());
        assert_eq!(recorded(&codes), vec![Code::Cancelled]);
    }

    #[tokio::test]
    async fn an_error_is_its_code_and_a_trailers_only_answer_its_status() {
        let (codes, finish) = recorder();
        let failed = async {
            Err::<http::Response<Body>, tower::BoxError>(Box::new(tonic::Status::unavailable(
                "down",
            )))
        };
        assert!(
            watch(failed, CallEnd::new(&http::HeaderMap::new(), finish))
                .await
                .is_err()
        );
        let (more, finish) = recorder();
        let answered = async {
            Ok::<_, tower::BoxError>(tonic::Status::not_found("no such thing").into_http::<Body>())
        };
        let response = watch(answered, CallEnd::new(&http::HeaderMap::new(), finish)).await;
        assert!(response.is_ok());
        assert_eq!(recorded(&codes), vec![Code::Unavailable]);
        assert_eq!(
            recorded(&more),
            vec![Code::NotFound],
            "once, not again when dropped"
        );
    }
}
