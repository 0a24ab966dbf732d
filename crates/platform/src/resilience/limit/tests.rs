//! The AIMD rule exactly, the settings, and the layer driven call by call.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::config::Settings;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn aimd(initial: u32, min: u32, max: u32) -> AimdLimit {
    AimdLimit::new(&LimitConfig {
        max,
        initial,
        min,
        ..LimitConfig::default()
    })
}

fn sample(in_flight: u32, outcome: Outcome, latency_ms: u64) -> Sample {
    Sample {
        latency: Duration::from_millis(latency_ms),
        in_flight,
        outcome,
    }
}

#[test]
fn a_used_limit_grows_by_one_up_to_the_ceiling() {
    let mut limit = aimd(10, 1, 12);
    assert_eq!(limit.on_sample(sample(5, Outcome::Success, 10)), 11);
    assert_eq!(limit.on_sample(sample(11, Outcome::Success, 10)), 12);
    assert_eq!(limit.on_sample(sample(12, Outcome::Success, 10)), 12);
}

#[test]
fn an_idle_limit_does_not_grow() {
    let mut limit = aimd(10, 1, 100);
    assert_eq!(limit.on_sample(sample(4, Outcome::Success, 10)), 10);
    assert_eq!(limit.on_sample(sample(1, Outcome::Success, 10)), 10);
}

#[test]
fn a_drop_or_a_slow_call_multiplies_by_the_ratio_down_to_the_floor() {
    let mut limit = aimd(100, 80, 1000);
    assert_eq!(limit.on_sample(sample(1, Outcome::Dropped, 10)), 90);
    // Over the 5 s timeout counts as a drop; exactly at it does not.
    assert_eq!(limit.on_sample(sample(90, Outcome::Success, 5001)), 81);
    assert_eq!(limit.on_sample(sample(90, Outcome::Success, 5000)), 82);
    assert_eq!(limit.on_sample(sample(1, Outcome::Dropped, 10)), 80);
    assert_eq!(limit.on_sample(sample(1, Outcome::Dropped, 10)), 80);
    // floor(9 × 0.9) = 8, not 9: a small limit still shrinks.
    let mut small = aimd(9, 1, 10);
    assert_eq!(small.on_sample(sample(1, Outcome::Dropped, 10)), 8);
}

#[test]
fn only_a_passed_deadline_is_a_drop_among_answers() {
    assert_eq!(Outcome::of(tonic::Code::DeadlineExceeded), Outcome::Dropped);
    // A quota (RESOURCE_EXHAUSTED) and a downstream outage (UNAVAILABLE) are not this server's
    // overload.
    for code in [
        tonic::Code::Ok,
        tonic::Code::NotFound,
        tonic::Code::Internal,
        tonic::Code::PermissionDenied,
        tonic::Code::ResourceExhausted,
        tonic::Code::Unavailable,
    ] {
        assert_eq!(Outcome::of(code), Outcome::Success, "{code:?}");
    }
}

#[test]
fn settings_default_follow_an_explicit_ceiling_and_refuse_contradictions() -> TestResult {
    let none: [(&str, &str); 0] = [];
    assert_eq!(
        LimitConfig::from_settings(&Settings::from_pairs(none))?,
        LimitConfig::default()
    );
    let low = LimitConfig::from_settings(&Settings::from_pairs([(MAX_VAR, "50")]))?;
    assert_eq!((low.min, low.initial, low.max), (10, 50, 50));
    let tiny = LimitConfig::from_settings(&Settings::from_pairs([(MAX_VAR, "4")]))?;
    assert_eq!((tiny.min, tiny.initial, tiny.max), (4, 4, 4));

    for (pairs, named) in [
        (vec![(MAX_VAR, "50"), (INITIAL_VAR, "60")], INITIAL_VAR),
        (vec![(INITIAL_VAR, "20"), (MIN_VAR, "30")], MIN_VAR),
        (vec![(MAX_VAR, "0")], MAX_VAR),
        (vec![(TIMEOUT_VAR, "5")], TIMEOUT_VAR),
    ] {
        let error = LimitConfig::from_settings(&Settings::from_pairs(pairs.clone()))
            .err()
            .ok_or(format!("{pairs:?} accepted"))?;
        assert!(
            matches!(&error, ConfigError::Invalid { name, .. } if name == named),
            "{pairs:?}: {error}"
        );
    }
    Ok(())
}

/// The inner service: answers each call once the test adds a permit to `gate` (health calls at
/// once), with the `grpc-status` the request's `x-status` header asks for.
fn held(
    gate: Arc<Semaphore>,
) -> impl Service<
    http::Request<()>,
    Response = http::Response<tonic::body::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |request: http::Request<()>| {
        let gate = Arc::clone(&gate);
        async move {
            if !request.uri().path().starts_with("/grpc.health")
                && let Ok(permit) = gate.acquire().await
            {
                permit.forget();
            }
            let code = request
                .headers()
                .get("x-status")
                .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())
                .unwrap_or(0);
            Ok::<_, Infallible>(tonic::Status::new(code.into(), "answer").into_http())
        }
    })
}

fn call(path: &str) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.uri_mut() = http::Uri::try_from(path).unwrap_or_default();
    request
}

fn failing(path: &str, code: tonic::Code) -> http::Request<()> {
    let mut request = call(path);
    request
        .headers_mut()
        .insert("x-status", http::HeaderValue::from(code as i32));
    request
}

fn status_of(response: &http::Response<tonic::body::Body>) -> Option<&[u8]> {
    response.headers().get("grpc-status").map(|v| v.as_bytes())
}

fn config(initial: u32, min: u32, max: u32) -> LimitConfig {
    LimitConfig {
        max,
        initial,
        min,
        ..LimitConfig::default()
    }
}

const METHOD: &str = "/flotilla.product.v1.ProductService/GetProduct";

#[tokio::test(start_paused = true)]
async fn the_call_over_the_limit_is_shed_at_once_and_health_never() -> TestResult {
    let layer = ConcurrencyLimitLayer::new(&config(3, 1, 3));
    let gate = Arc::new(Semaphore::new(0));
    let mut service = layer.layer(held(Arc::clone(&gate)));
    let mut holding = Vec::new();
    for _ in 0..3 {
        let future = service.ready().await?.call(call(METHOD));
        holding.push(tokio::spawn(future));
    }
    assert_eq!(layer.current(), (3, 3));

    let shed = service.ready().await?.call(call(METHOD)).await?;
    assert_eq!(status_of(&shed), Some(&b"8"[..]));
    let message = tonic::Status::from_header_map(shed.headers()).map(|s| s.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("3 calls in flight (limit 3)")),
        "{message:?}"
    );
    // The pushback is what tells shedding apart from a quota (which sends `retry-after`).
    assert_eq!(
        shed.headers()
            .get("grpc-retry-pushback-ms")
            .map(|value| value.as_bytes()),
        Some(&b"100"[..])
    );
    assert!(shed.headers().get("retry-after").is_none());
    assert_eq!(layer.current(), (3, 3), "a shed call is not counted");

    let health = service
        .ready()
        .await?
        .call(call("/grpc.health.v1.Health/Check"))
        .await?;
    assert_eq!(status_of(&health), Some(&b"0"[..]));
    assert!(health.headers().get("grpc-retry-pushback-ms").is_none());
    assert_eq!(layer.current(), (3, 3));

    gate.add_permits(3);
    for call in holding {
        assert_eq!(status_of(&call.await??), Some(&b"0"[..]));
    }
    assert_eq!(layer.current().0, 0);
    let admitted = service.ready().await?.call(call(METHOD));
    gate.add_permits(1);
    let admitted = admitted.await?;
    assert_eq!(status_of(&admitted), Some(&b"0"[..]));
    assert!(
        admitted.headers().get("grpc-retry-pushback-ms").is_none(),
        "only a shed call asks the caller to back off"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_gives_its_place_back() -> TestResult {
    let layer = ConcurrencyLimitLayer::new(&config(2, 1, 2));
    let gate = Arc::new(Semaphore::new(0));
    let mut service = layer.layer(held(gate));
    let waiting = tokio::spawn(service.ready().await?.call(call(METHOD)));
    assert_eq!(layer.current(), (1, 2));
    waiting.abort();
    assert!(waiting.await.is_err_and(|error| error.is_cancelled()));
    assert_eq!(layer.current(), (0, 2), "and no sample was taken");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_after_its_deadline_is_a_drop_and_one_dropped_before_is_not() -> TestResult {
    let layer = ConcurrencyLimitLayer::new(&config(10, 1, 10));
    let gate = Arc::new(Semaphore::new(0));
    let mut service = layer.layer(held(gate));
    let with_deadline = || {
        let mut request = call(METHOD);
        request
            .headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("100m"));
        request
    };

    // The caller gives up well before the deadline: not this server's fault.
    let early = tokio::spawn(service.ready().await?.call(with_deadline()));
    tokio::time::advance(Duration::from_millis(50)).await;
    early.abort();
    assert!(early.await.is_err_and(|error| error.is_cancelled()));
    assert_eq!(layer.current(), (0, 10));

    // Still unanswered when its deadline passes (tonic then drops it): the server was too slow.
    let late = tokio::spawn(service.ready().await?.call(with_deadline()));
    tokio::time::advance(Duration::from_millis(150)).await;
    late.abort();
    assert!(late.await.is_err_and(|error| error.is_cancelled()));
    assert_eq!(layer.current(), (0, 9));
    Ok(())
}

/// A response body the test feeds frame by frame.
struct Fed(tokio::sync::mpsc::Receiver<http_body::Frame<tonic::codegen::Bytes>>);

impl http_body::Body for Fed {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

async fn next_frame(
    body: &mut tonic::body::Body,
) -> Option<http_body::Frame<tonic::codegen::Bytes>> {
    std::future::poll_fn(|cx| http_body::Body::poll_frame(std::pin::Pin::new(&mut *body), cx))
        .await
        .and_then(Result::ok)
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_in_flight_until_its_body_ends_or_is_dropped() -> TestResult {
    let layer = ConcurrencyLimitLayer::new(&config(10, 1, 10));
    let (frames, receiver) = tokio::sync::mpsc::channel(4);
    let (_open, second) = tokio::sync::mpsc::channel(4);
    let receivers = Arc::new(std::sync::Mutex::new(vec![second, receiver]));
    let streaming = tower::service_fn(move |_: http::Request<()>| {
        let body = receivers
            .lock()
            .ok()
            .and_then(|mut receivers| receivers.pop())
            .map(|receiver| tonic::body::Body::new(Fed(receiver)))
            .unwrap_or_default();
        std::future::ready(Ok::<_, Infallible>(http::Response::new(body)))
    });
    let mut service = layer.layer(streaming);

    // Ends with trailers: released when they arrive, sampled with their status.
    let mut body = service.ready().await?.call(call(METHOD)).await?.into_body();
    assert_eq!(layer.current(), (1, 10));
    frames
        .send(http_body::Frame::data("message".into()))
        .await?;
    assert!(next_frame(&mut body).await.is_some_and(|f| f.is_data()));
    assert_eq!(layer.current(), (1, 10));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from(4));
    frames.send(http_body::Frame::trailers(trailers)).await?;
    assert!(next_frame(&mut body).await.is_some_and(|f| f.is_trailers()));
    assert_eq!(
        layer.current(),
        (0, 9),
        "DEADLINE_EXCEEDED in the trailers is a drop"
    );

    // Dropped mid-stream (its sender stays open): released, unsampled.
    let body = service.ready().await?.call(call(METHOD)).await?.into_body();
    assert_eq!(layer.current(), (1, 9));
    drop(body);
    assert_eq!(layer.current(), (0, 9));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_limit_grows_under_saturating_success_and_shrinks_after_drops() -> TestResult {
    let layer = ConcurrencyLimitLayer::new(&config(4, 2, 8));
    let gate = Arc::new(Semaphore::new(0));
    let mut service = layer.layer(held(Arc::clone(&gate)));
    let mut previous = layer.current().1;
    while previous < 8 {
        // Fill the limit, then let every call through.
        let mut holding = Vec::new();
        for _ in 0..previous {
            holding.push(tokio::spawn(service.ready().await?.call(call(METHOD))));
        }
        gate.add_permits(previous as usize);
        for call in holding {
            call.await??;
        }
        let (in_flight, limit) = layer.current();
        assert_eq!(in_flight, 0);
        assert!(
            limit > previous,
            "{limit} after a saturated round at {previous}"
        );
        previous = limit;
    }
    assert_eq!(previous, 8, "never past the ceiling");

    gate.add_permits(1);
    let dropped = service
        .ready()
        .await?
        .call(failing(METHOD, tonic::Code::DeadlineExceeded))
        .await?;
    assert_eq!(status_of(&dropped), Some(&b"4"[..]));
    assert_eq!(layer.current(), (0, 7), "floor(8 × 0.9)");

    // A call slower than the timeout counts as a drop, though it succeeded.
    let slow = tokio::spawn(service.ready().await?.call(call(METHOD)));
    tokio::time::advance(Duration::from_secs(6)).await;
    gate.add_permits(1);
    slow.await??;
    assert_eq!(layer.current(), (0, 6), "floor(7 × 0.9)");

    // A client error is an answer: with the limit unused, nothing changes.
    gate.add_permits(1);
    service
        .ready()
        .await?
        .call(failing(METHOD, tonic::Code::NotFound))
        .await?;
    assert_eq!(layer.current(), (0, 6));
    Ok(())
}
