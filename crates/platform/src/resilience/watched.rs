//! A response body watched for how it ends, so a layer can act once the call is really over.
//!
//! A gRPC call is over when its response body ends, not when its headers arrive: the status comes
//! in the trailers (unless the answer was trailers-only), and a server stream runs for as long as
//! its body. The breaker records the status, the balancer releases the in-flight count and
//! records the verdict, the concurrency limit frees the place and takes its sample: each with an
//! [`OnEnd`] that a [`Watched`] body calls exactly once, at the trailers, at an end without them,
//! or when the body breaks off. Dropped before any of these (the caller gave up), the body drops
//! its `OnEnd` uncalled, which is each layer's cue for "nothing learned".

use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// `grpc-status`, parsed once: looking a header up by `&str` parses the name on every call.
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The `grpc-status` in trailers-only headers or in trailers, if any: how every layer that
/// watches a call learns its outcome.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get(GRPC_STATUS)
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// How a watched body ended.
#[derive(Debug)]
pub(crate) enum Ending<'a> {
    /// With trailers (for gRPC, where the status is).
    Trailers(&'a HeaderMap),
    /// Without trailers: for gRPC, an answer whose status was in its headers, or a broken one.
    Bare,
    /// With an error: the stream broke off.
    Broken,
}

/// What to do once a watched body has ended; called at most once.
pub(crate) trait OnEnd {
    /// The body ended as `ending` says.
    fn ended(self, ending: Ending<'_>);
}

/// A body that calls its [`OnEnd`] when it ends.
#[derive(Debug)]
pub(crate) struct Watched<B, E> {
    inner: B,
    on_end: Option<E>,
}

impl<B, E> Watched<B, E> {
    /// Watches `inner`, calling `on_end` when it ends.
    pub(crate) fn new(inner: B, on_end: E) -> Self {
        Self {
            inner,
            on_end: Some(on_end),
        }
    }
}

impl<B, E> Watched<B, E>
where
    E: OnEnd,
{
    fn end(&mut self, ending: Ending<'_>) {
        if let Some(on_end) = self.on_end.take() {
            on_end.ended(ending);
        }
    }
}

impl<B, E> Body for Watched<B, E>
where
    B: Body + Unpin,
    E: OnEnd + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.end(Ending::Bare),
            Poll::Ready(Some(Err(_))) => this.end(Ending::Broken),
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers are the last frame: the call is over, whether or not the body is
                // polled again; so is a last data frame.
                if let Some(trailers) = frame.trailers_ref() {
                    this.end(Ending::Trailers(trailers));
                } else if this.inner.is_end_stream() {
                    this.end(Ending::Bare);
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use prost::bytes::Bytes;

    use super::*;

    /// Records how the body ended, or "dropped" when it was dropped uncalled.
    struct Record {
        log: Arc<Mutex<Vec<String>>>,
        called: bool,
    }

    impl OnEnd for Record {
        fn ended(mut self, ending: Ending<'_>) {
            let seen = match ending {
                Ending::Trailers(trailers) => format!("trailers {}", trailers.len()),
                Ending::Bare => "bare".to_owned(),
                Ending::Broken => "broken".to_owned(),
            };
            if let Ok(mut log) = self.log.lock() {
                log.push(seen);
            }
            self.called = true;
        }
    }

    impl Drop for Record {
        fn drop(&mut self) {
            if !self.called
                && let Ok(mut log) = self.log.lock()
            {
                log.push("dropped".to_owned());
            }
        }
    }

    type Frames = Vec<Result<Frame<Bytes>, &'static str>>;

    async fn ending_of(body: Frames, read: bool) -> Vec<String> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let record = Record {
            log: Arc::clone(&log),
            called: false,
        };
        let stream = http_body_util::StreamBody::new(futures::stream::iter(body));
        let watched = Watched::new(stream, record);
        if read {
            let _ = watched.collect().await;
        } else {
            drop(watched);
        }
        log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    #[tokio::test]
    async fn the_end_is_reported_once_however_it_comes() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let data = || Ok(Frame::data(Bytes::from_static(b"message")));
        assert_eq!(
            ending_of(vec![data(), Ok(Frame::trailers(trailers))], true).await,
            ["trailers 1"]
        );
        assert_eq!(ending_of(vec![data()], true).await, ["bare"]);
        assert_eq!(
            ending_of(vec![data(), Err("reset")], true).await,
            ["broken"]
        );
        assert_eq!(ending_of(vec![data()], false).await, ["dropped"]);
    }
}
