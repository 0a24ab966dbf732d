//! The breaker layer around a scripted upstream, on a paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body::Frame;
use http_body_util::BodyExt;
use prost::bytes::Bytes;
use tower::{Service, ServiceExt};

use super::*;
use crate::resilience::attempt::{AttemptError, Reach};
use crate::resilience::breaker::{BreakerConfig, BreakerPolicy, BreakerState};

type TestResult = Result<(), BoxError>;

const GET: &str = "/flotilla.product.v1.ProductService/GetProduct";
const LIST: &str = "/flotilla.product.v1.ProductService/ListProducts";

/// How the scripted upstream answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A trailers-only answer with this code.
    Headers(Code),
    /// A message, then this code in the trailers.
    Trailers(Code),
    /// No answer: the balancer's error with this code, after an instance was chosen.
    Error(Code),
    /// No answer, and no instance was ever chosen (none listed, or the deadline already spent).
    Unsent(Code),
    /// A trailers-only `RESOURCE_EXHAUSTED` with a `retry-after`: a quota, not overload.
    Quota,
}

/// An upstream answering as `answer` says, counting the calls that reach it.
#[derive(Clone)]
struct Upstream {
    answer: Arc<Mutex<Answer>>,
    calls: Arc<AtomicUsize>,
}

impl Upstream {
    fn new(answer: Answer) -> Self {
        Self {
            answer: Arc::new(Mutex::new(answer)),
            calls: Arc::default(),
        }
    }

    fn answer(&self, answer: Answer) {
        if let Ok(mut current) = self.answer.lock() {
            *current = answer;
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<http::Request<Body>> for Upstream {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BreakersFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.answer.lock().map_or(Answer::Headers(Code::Ok), |a| *a);
        Box::pin(async move {
            match answer {
                Answer::Headers(code) => Ok(Status::new(code, "scripted").into_http()),
                Answer::Trailers(code) => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", (code as i32).into());
                    let frames = futures::stream::iter([
                        Ok::<_, Status>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                        Ok(Frame::trailers(trailers)),
                    ]);
                    let body = Body::new(http_body_util::StreamBody::new(frames));
                    Ok(http::Response::new(body))
                }
                Answer::Error(code) => {
                    let error = AttemptError::new(
                        Status::new(code, "scripted"),
                        Some(Arc::from("product-1")),
                        Reach::MaybeSent,
                    );
                    Err(Box::new(error) as BoxError)
                }
                Answer::Unsent(code) => {
                    let error = AttemptError::unsent(Status::new(code, "scripted"));
                    Err(Box::new(error) as BoxError)
                }
                Answer::Quota => {
                    let mut status = Status::resource_exhausted("too many failed logins");
                    status
                        .metadata_mut()
                        .insert("retry-after", tonic::metadata::MetadataValue::from(30));
                    Ok(status.into_http())
                }
            }
        })
    }
}

fn breakers(upstream: &Upstream, threshold: u32) -> (Breakers<Upstream>, Arc<BreakerRegistry>) {
    let registry = Arc::new(BreakerRegistry::new(BreakerConfig {
        policy: BreakerPolicy::ConsecutiveFailures {
            threshold,
            cool_down: Duration::from_secs(60),
            half_open_trials: 1,
        },
    }));
    let layer = BreakerLayer::new(Arc::clone(&registry));
    (tower::Layer::layer(&layer, upstream.clone()), registry)
}

fn request(path: &str) -> http::Request<Body> {
    let mut request = http::Request::new(Body::empty());
    *request.uri_mut() = format!("http://product{path}")
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("http://product/"));
    request
}

/// One call to `path`, its body read to the end; the code the caller sees.
async fn call(service: &mut Breakers<Upstream>, path: &str) -> Result<Code, BoxError> {
    match service.ready().await?.call(request(path)).await {
        Ok(response) => {
            if let Some(code) = grpc_status(response.headers()) {
                return Ok(code);
            }
            let collected = response.into_body().collect().await?;
            let trailers = collected.trailers().ok_or("no trailers")?;
            Ok(grpc_status(trailers).ok_or("no status")?)
        }
        Err(error) => Ok(Status::from_error(error).code()),
    }
}

/// The gRPC status in `headers`, if there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

fn state(registry: &BreakerRegistry, method: &str) -> Option<BreakerState> {
    registry
        .snapshot(Instant::now())
        .into_iter()
        .find(|snapshot| snapshot.method == method)
        .map(|snapshot| snapshot.state)
}

#[tokio::test(start_paused = true)]
async fn failures_open_the_breaker_and_then_calls_fail_fast_without_reaching_the_upstream()
-> TestResult {
    let upstream = Upstream::new(Answer::Headers(Code::Unavailable));
    let (mut service, registry) = breakers(&upstream, 5);
    for _ in 0..6 {
        assert_eq!(call(&mut service, GET).await?, Code::Unavailable);
    }
    assert_eq!(state(&registry, "GetProduct"), Some(BreakerState::Open));
    assert_eq!(upstream.calls(), 6);

    let error = service
        .ready()
        .await?
        .call(request(GET))
        .await
        .err()
        .ok_or("an open breaker let a call through")?;
    let status = Status::from_error(error);
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "circuit breaker for flotilla.product.v1.ProductService/GetProduct is open; retry in 60s"
    );
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|value| value.to_str().ok()),
        Some("60000")
    );
    assert_eq!(upstream.calls(), 6, "the rejected call never left");

    // Another method of the same service has a breaker of its own.
    upstream.answer(Answer::Headers(Code::Ok));
    assert_eq!(call(&mut service, LIST).await?, Code::Ok);

    // After the cool-down, one trial goes through; its success closes the breaker.
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(call(&mut service, GET).await?, Code::Ok);
    assert_eq!(state(&registry, "GetProduct"), Some(BreakerState::Closed));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn client_errors_never_open_the_breaker() -> TestResult {
    let upstream = Upstream::new(Answer::Headers(Code::NotFound));
    let (mut service, registry) = breakers(&upstream, 2);
    for _ in 0..20 {
        assert_eq!(call(&mut service, GET).await?, Code::NotFound);
    }
    upstream.answer(Answer::Headers(Code::PermissionDenied));
    for _ in 0..20 {
        assert_eq!(call(&mut service, GET).await?, Code::PermissionDenied);
    }
    assert_eq!(state(&registry, "GetProduct"), Some(BreakerState::Closed));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn statuses_in_trailers_and_in_errors_count() -> TestResult {
    let upstream = Upstream::new(Answer::Trailers(Code::Internal));
    let (mut service, registry) = breakers(&upstream, 2);
    for _ in 0..3 {
        assert_eq!(call(&mut service, GET).await?, Code::Internal);
    }
    assert_eq!(state(&registry, "GetProduct"), Some(BreakerState::Open));

    upstream.answer(Answer::Error(Code::Unavailable));
    for _ in 0..3 {
        assert_eq!(call(&mut service, LIST).await?, Code::Unavailable);
    }
    assert_eq!(state(&registry, "ListProducts"), Some(BreakerState::Open));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_quota_is_an_answer_and_shedding_a_failure() -> TestResult {
    let upstream = Upstream::new(Answer::Quota);
    let (mut service, registry) = breakers(&upstream, 2);
    for _ in 0..20 {
        assert_eq!(call(&mut service, GET).await?, Code::ResourceExhausted);
    }
    assert_eq!(state(&registry, "GetProduct"), Some(BreakerState::Closed));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn calls_that_never_went_to_an_instance_say_nothing_about_the_upstream() -> TestResult {
    let upstream = Upstream::new(Answer::Unsent(Code::Unavailable));
    let (mut service, registry) = breakers(&upstream, 2);
    for _ in 0..10 {
        assert_eq!(call(&mut service, GET).await?, Code::Unavailable);
    }
    upstream.answer(Answer::Unsent(Code::DeadlineExceeded));
    for _ in 0..10 {
        assert_eq!(call(&mut service, GET).await?, Code::DeadlineExceeded);
    }
    assert_eq!(state(&registry, "GetProduct"), Some(BreakerState::Closed));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_its_status_counts_for_nothing() -> TestResult {
    let upstream = Upstream::new(Answer::Trailers(Code::Unavailable));
    let (mut service, registry) = breakers(&upstream, 1);
    for _ in 0..10 {
        let response = service.ready().await?.call(request(GET)).await?;
        drop(response);
    }
    assert_eq!(state(&registry, "GetProduct"), Some(BreakerState::Closed));
    assert_eq!(upstream.calls(), 10);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_path_that_is_not_grpc_passes_untouched() -> TestResult {
    let upstream = Upstream::new(Answer::Headers(Code::Unavailable));
    let (mut service, registry) = breakers(&upstream, 1);
    for _ in 0..5 {
        call(&mut service, "/metrics").await?;
    }
    assert_eq!(upstream.calls(), 5);
    assert!(registry.snapshot(Instant::now()).is_empty());
    Ok(())
}
