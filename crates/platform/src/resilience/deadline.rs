//! Deadlines that travel: a call's deadline is read from its `grpc-timeout` header, inherited by
//! every call the server makes while serving it, and sent on as the time that is left.
//!
//! tonic's client sets the header from `Request::set_timeout`, and `Endpoint::timeout` does not send
//! it at all; the channel enforces it counted from when the call reaches the channel. So:
//!
//! - on the server, [`InheritDeadlineLayer`] reads the incoming header and runs the handler inside a
//!   task-local scope holding the absolute deadline ([`inherited`]);
//! - on the client, the balancer ([`crate::discovery::balance`]) calls [`outgoing`] for every call:
//!   the earlier of the call's own timeout and the inherited deadline is written back as the call's
//!   `grpc-timeout`, and a call whose deadline has already passed is not started
//!   (`DEADLINE_EXCEEDED`). The balancer also hands the channel what is left after it waited.
//!
//! Header format: the gRPC over HTTP/2 specification (`PROTOCOL-HTTP2.md`), at most eight digits
//! and a unit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderMap;
use tokio::time::Instant;
use tonic::Status;

/// The header's name.
// A parsed name: looking a header up by `&str` parses the name on every call.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The largest value the header may carry in one unit.
const MAX_VALUE: u128 = 99_999_999;

tokio::task_local! {
    static INHERITED: Instant;
}

/// The deadline of the call being served, when its caller sent one and this runs inside its
/// handler.
pub fn inherited() -> Option<Instant> {
    INHERITED.try_with(|deadline| *deadline).ok()
}

/// Runs `future` with `deadline` as the inherited deadline (none: runs it as it is).
pub async fn scope<F: Future>(deadline: Option<Instant>, future: F) -> F::Output {
    match deadline {
        Some(deadline) => INHERITED.scope(deadline, future).await,
        None => future.await,
    }
}

/// Prepares an outgoing call's headers: its deadline is the earlier of its own `grpc-timeout` and
/// the inherited one, written back as its `grpc-timeout`; `None` when it has neither.
///
/// # Errors
/// `DEADLINE_EXCEEDED` when that deadline has already passed: the call is not worth starting.
pub fn outgoing(headers: &mut HeaderMap, now: Instant) -> Result<Option<Instant>, Status> {
    let own = timeout(headers).map(|timeout| later(now, timeout));
    let deadline = match (own, inherited()) {
        (Some(own), Some(inherited)) => Some(own.min(inherited)),
        (own, inherited) => own.or(inherited),
    };
    if let Some(deadline) = deadline {
        if deadline <= now {
            return Err(Status::deadline_exceeded(
                "the deadline passed before this call could start",
            ));
        }
        set_timeout(headers, deadline.saturating_duration_since(now));
    }
    Ok(deadline)
}

/// `now + timeout`, or far in the future when that overflows.
fn later(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The call's timeout, if its header carries a valid one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    headers.get(GRPC_TIMEOUT).and_then(parse_timeout)
}

/// The raw `grpc-timeout` of a call, to be parsed later with [`parse_timeout`] if at all (a
/// clone of the value is a reference count).
pub(crate) fn timeout_value(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(GRPC_TIMEOUT).cloned()
}

/// A `grpc-timeout` value as a duration, if it is a valid one.
pub(crate) fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let digits = text.get(..text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    match text.get(digits.len()..)? {
        "H" => Some(Duration::from_secs(value * 3600)),
        "M" => Some(Duration::from_secs(value * 60)),
        "S" => Some(Duration::from_secs(value)),
        "m" => Some(Duration::from_millis(value)),
        "u" => Some(Duration::from_micros(value)),
        "n" => Some(Duration::from_nanos(value)),
        _ => None,
    }
}

/// Replaces the call's timeout with `remaining`, in the finest unit that fits (rounding down:
/// the call must not outlive its deadline).
pub fn set_timeout(headers: &mut HeaderMap, remaining: Duration) {
    let candidates = [
        (remaining.as_nanos(), 'n'),
        (remaining.as_micros(), 'u'),
        (remaining.as_millis(), 'm'),
        (u128::from(remaining.as_secs()), 'S'),
        (u128::from(remaining.as_secs() / 60), 'M'),
    ];
    let (value, unit) = candidates
        .into_iter()
        .find(|(value, _)| *value <= MAX_VALUE)
        .unwrap_or(((u128::from(remaining.as_secs()) / 3600).min(MAX_VALUE), 'H'));
    if let Ok(header) = HeaderValue::from_str(&format!("{value}{unit}")) {
        headers.insert(GRPC_TIMEOUT, header);
    }
}

/// Server side: serves each call inside the scope of the deadline its `grpc-timeout` names, so the
/// calls its handler makes inherit it.
#[derive(Debug, Clone, Copy, Default)]
pub struct InheritDeadlineLayer;

impl<S> tower::Layer<S> for InheritDeadlineLayer {
    type Service = InheritDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InheritDeadline { inner }
    }
}

/// The service [`InheritDeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct InheritDeadline<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for InheritDeadline<S>
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
        let started = Instant::now();
        let deadline = timeout(request.headers()).map(|timeout| later(started, timeout));
        let uri = request.uri().clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut unanswered = Unanswered {
                uri,
                started,
                deadline,
                answered: false,
            };
            let result = scope(deadline, call).await;
            unanswered.answered = true;
            result
        })
    }
}

/// Notes a call whose handler was dropped before it answered: its caller reset the stream, or
/// the server gave up at the call's deadline. Nothing else would say so (the handler's future just
/// stops), and it is how a slow service learns its callers stopped waiting.
struct Unanswered {
    uri: http::Uri,
    started: Instant,
    deadline: Option<Instant>,
    answered: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let now = Instant::now();
        let elapsed = humantime::format_duration(now.saturating_duration_since(self.started));
        let path = self.uri.path();
        match self.deadline {
            Some(deadline) if deadline <= now => {
                tracing::debug!(%path, %elapsed, "call cancelled: its deadline passed before it answered");
            }
            // The caller's clock ran ahead of ours (its deadline passed a transit earlier), or
            // it gave up on its own.
            Some(deadline) => {
                let deadline_in =
                    humantime::format_duration(deadline.saturating_duration_since(now));
                tracing::debug!(%path, %elapsed, %deadline_in, "call cancelled by its caller before it answered");
            }
            None => {
                tracing::debug!(%path, %elapsed, "call cancelled by its caller before it answered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(GRPC_TIMEOUT, value);
        }
        headers
    }

    #[test]
    fn every_unit_of_the_specification_is_read() {
        assert_eq!(timeout(&with("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(timeout(&with("3M")), Some(Duration::from_secs(180)));
        assert_eq!(timeout(&with("4S")), Some(Duration::from_secs(4)));
        assert_eq!(timeout(&with("250m")), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout(&with("99999999u")),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout(&with("7n")), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn a_missing_or_malformed_header_is_no_timeout() {
        assert_eq!(timeout(&HeaderMap::new()), None);
        for bad in [
            "",
            "m",
            "5",
            "5s",
            "-5m",
            "+5m",
            "123456789m",
            "5 m",
            "1.5S",
            "5mm",
        ] {
            assert_eq!(timeout(&with(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn what_is_written_reads_back_rounded_down_to_its_unit() {
        for remaining in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(200),
            Duration::from_secs(5),
            Duration::from_secs(40_000),
            Duration::from_secs(7 * 24 * 3600),
            Duration::MAX,
        ] {
            let mut headers = HeaderMap::new();
            set_timeout(&mut headers, remaining);
            let read = timeout(&headers).ok_or(format!("{remaining:?} unreadable"));
            assert!(
                read.as_ref().is_ok_and(|read| *read <= remaining),
                "{remaining:?} read back as {read:?}"
            );
        }
        let mut headers = with("9S");
        set_timeout(&mut headers, Duration::from_millis(1500));
        assert_eq!(timeout(&headers), Some(Duration::from_millis(1500)));
        assert_eq!(headers.get_all(GRPC_TIMEOUT).iter().count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn outgoing_calls_take_the_earlier_of_their_own_and_the_inherited_deadline() {
        let now = Instant::now();
        // Nothing inherited: the call's own timeout stands, and no header stays no header.
        let mut own = with("2S");
        assert_eq!(
            outgoing(&mut own, now).ok(),
            Some(Some(now + Duration::from_secs(2)))
        );
        let mut none = HeaderMap::new();
        assert_eq!(outgoing(&mut none, now).ok(), Some(None));
        assert!(none.get(GRPC_TIMEOUT).is_none());

        let inherited_at = now + Duration::from_millis(300);
        scope(Some(inherited_at), async {
            let mut longer = with("2S");
            assert_eq!(outgoing(&mut longer, now).ok(), Some(Some(inherited_at)));
            assert_eq!(timeout(&longer), Some(Duration::from_millis(300)));
            let mut shorter = with("100m");
            assert_eq!(
                outgoing(&mut shorter, now).ok(),
                Some(Some(now + Duration::from_millis(100)))
            );
            let mut bare = HeaderMap::new();
            outgoing(&mut bare, now).ok();
            assert_eq!(timeout(&bare), Some(Duration::from_millis(300)));
            // Once it has passed, a call is not started.
            let passed = outgoing(&mut HeaderMap::new(), inherited_at);
            assert_eq!(
                passed.err().map(|status| status.code()),
                Some(tonic::Code::DeadlineExceeded)
            );
        })
        .await;
        assert_eq!(inherited(), None, "the scope ends with its future");
    }

    #[tokio::test(start_paused = true)]
    async fn the_server_layer_hands_the_incoming_deadline_to_the_handler() {
        use tower::{Layer, ServiceExt};
        let handler = tower::service_fn(|_request: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(inherited())
        });
        let service = InheritDeadlineLayer.layer(handler);
        let mut request = http::Request::new(());
        request
            .headers_mut()
            .insert(GRPC_TIMEOUT, HeaderValue::from_static("250m"));
        let started = Instant::now();
        let seen = service.clone().oneshot(request).await.ok().flatten();
        assert_eq!(seen, Some(started + Duration::from_millis(250)));
        let seen = service.oneshot(http::Request::new(())).await.ok().flatten();
        assert_eq!(seen, None);
    }
}
