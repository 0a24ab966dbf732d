//! A response body that keeps its call counted as in flight until the body is over, and reads the
//! call's gRPC status on the way.
//!
//! The response headers end the latency sample, but not the call: a server stream, or a large
//! unary answer, keeps the endpoint busy until its last frame. The count drops when the trailers
//! (the last frame of a gRPC response) or the end of the body arrive, when the body fails, or when
//! it is dropped unread, whichever comes first. The status in the trailers (or its absence, or a
//! body that breaks off) is what tells a good answer from a failed one, for the endpoint's failure
//! record; a body dropped unread says nothing (the caller gave up).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;

use super::Shared;
use super::endpoint::{CallGuard, Endpoint};
use super::verdict::{Verdict, verdict};

/// A tonic response body with the in-flight count of its call attached.
pub(super) struct InFlightBody {
    inner: Body,
    /// Released when the body ends.
    guard: Option<CallGuard>,
    /// Where to report the call's status; `None` once reported (or when the status came in the
    /// response headers and was reported then).
    report: Option<(Arc<Shared>, Arc<Endpoint>)>,
}

impl std::fmt::Debug for InFlightBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightBody")
            .field("in_flight", &self.guard.is_some())
            .field("status_pending", &self.report.is_some())
            .finish_non_exhaustive()
    }
}

impl InFlightBody {
    /// Wraps `inner`; `guard` is released when the body ends, and the status found at its end is
    /// reported to `report` (pass `None` when it was known from the headers already).
    pub(super) fn new(
        inner: Body,
        guard: CallGuard,
        report: Option<(Arc<Shared>, Arc<Endpoint>)>,
    ) -> Self {
        Self {
            inner,
            guard: Some(guard),
            report,
        }
    }

    fn finish(&mut self, found: Option<Verdict>) {
        if let (Some((shared, endpoint)), Some(guard)) = (self.report.take(), self.guard.as_ref())
            && let Some(found) = found
        {
            shared.conclude(&endpoint, guard, found);
        }
        self.guard = None;
    }
}

impl HttpBody for InFlightBody {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(Some(Err(MISSING_STATUS.to_owned()))),
            Poll::Ready(Some(Err(error))) => {
                this.finish(Some(Err(format!("the answer broke off: {error}"))));
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let found =
                        verdict(trailers).unwrap_or_else(|| Some(Err(MISSING_STATUS.to_owned())));
                    this.finish(found);
                } else if this.inner.is_end_stream() {
                    this.finish(Some(Err(MISSING_STATUS.to_owned())));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A gRPC answer must end with a status; one without is a broken server (gRPC reports it as
/// `INTERNAL` or `UNKNOWN`, both failures).
const MISSING_STATUS: &str = "the answer ended without a gRPC status";
