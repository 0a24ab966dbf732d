//! A response body that keeps its call counted as in flight until the body is over.
//!
//! The response headers end the latency sample, but not the call: a server stream, or a large
//! unary answer, keeps the endpoint busy until its last frame. The count drops when the trailers
//! (the last frame of a gRPC response) or the end of the body arrive, when the body fails, or when
//! it is dropped unread, whichever comes first.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;

use super::endpoint::CallGuard;

/// A tonic response body with the in-flight count of its call attached.
#[derive(Debug)]
pub(super) struct InFlightBody {
    inner: Body,
    guard: Option<CallGuard>,
}

impl InFlightBody {
    /// Wraps `inner`; `guard` is released when the body ends.
    pub(super) fn new(inner: Body, guard: CallGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
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
        let finished = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if finished {
            this.guard = None;
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
