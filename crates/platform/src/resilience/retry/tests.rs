//! The retry layer around a scripted upstream, on a paused clock, and its settings and method
//! table.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt as _;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use prost::bytes::Bytes;
use prost_types::method_options::IdempotencyLevel;
use prost_types::{
    FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, MethodOptions,
    ServiceDescriptorProto,
};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{BoxError, Layer, Service, ServiceExt};

use super::*;
use crate::config::{ConfigError, Settings};
use crate::resilience::attempt::{AttemptError, Attempted, AvoidInstances, Reach};
use crate::resilience::deadline;

type TestResult = Result<(), BoxError>;
type Outcome = Result<http::Response<Body>, BoxError>;

const GET: &str = "/flotilla.product.v1.ProductService/GetProduct";
const CREATE: &str = "/flotilla.product.v1.ProductService/CreateProduct";
const UNKNOWN: &str = "/grpc.health.v1.Health/Check";
const UPLOAD: &str = "/test.v1.Files/Upload";
const WATCH: &str = "/test.v1.Files/Watch";
const BODY: &[u8] = b"\0\0\0\0\x04spam";

/// How the scripted upstream answers one attempt.
#[derive(Debug, Clone)]
enum Answer {
    /// A trailers-only answer with this code, from this instance.
    Status(Code, &'static str),
    /// `RESOURCE_EXHAUSTED` from this instance with this `grpc-retry-pushback-ms`.
    Shed(&'static str, &'static str),
    /// An answer whose status would come in the trailers.
    NoStatus(&'static str),
    /// The balancer's failure.
    Failed(Code, Option<&'static str>, Reach),
    /// A failure that is not the balancer's.
    Other(Code),
}

impl Answer {
    fn outcome(&self) -> Outcome {
        let (mut response, instance) = match *self {
            Answer::Status(code, instance) => (Status::new(code, "scripted").into_http(), instance),
            Answer::Shed(instance, pushback) => {
                let mut status = Status::resource_exhausted("shedding");
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", pushback.parse()?);
                (status.into_http(), instance)
            }
            Answer::NoStatus(instance) => (http::Response::new(Body::empty()), instance),
            Answer::Failed(code, instance, reach) => {
                return Err(Box::new(AttemptError::new(
                    Status::new(code, "scripted"),
                    instance.map(Arc::from),
                    reach,
                )));
            }
            Answer::Other(code) => return Err(Box::new(Status::new(code, "not the balancer's"))),
        };
        response.extensions_mut().insert(Attempted {
            instance: Arc::from(instance),
        });
        Ok(response)
    }
}

/// What the upstream saw of one attempt.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    previous_attempts: Option<String>,
    timeout: Option<Duration>,
    avoid: Option<AvoidInstances>,
    body: Bytes,
}

/// An upstream answering from a script (then `fallback` for ever), after `latency`, recording
/// every attempt.
#[derive(Clone)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Answer>>>,
    fallback: Answer,
    latency: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn new(script: impl IntoIterator<Item = Answer>, fallback: Answer) -> Self {
        Self {
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            fallback,
            latency: Duration::ZERO,
            seen: Arc::default(),
        }
    }

    fn failing() -> Self {
        Self::new([], Answer::Status(Code::Unavailable, "a"))
    }

    fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    fn seen(&self) -> Vec<Seen> {
        match self.seen.lock() {
            Ok(seen) => seen.clone(),
            Err(_) => panic!("the upstream's record is poisoned"),
        }
    }
}

impl Service<http::Request<Body>> for Upstream {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = RetryFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let at = Instant::now();
        let answer = match self.script.lock() {
            Ok(mut script) => script.pop_front().unwrap_or_else(|| self.fallback.clone()),
            Err(_) => panic!("the script is poisoned"),
        };
        let seen = Arc::clone(&self.seen);
        let latency = self.latency;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let attempt = Seen {
                at,
                previous_attempts: parts
                    .headers
                    .get(PREVIOUS_ATTEMPTS)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned),
                timeout: deadline::timeout(&parts.headers),
                avoid: parts.extensions.get::<AvoidInstances>().cloned(),
                body,
            };
            if let Ok(mut seen) = seen.lock() {
                seen.push(attempt);
            }
            tokio::time::sleep(latency).await;
            answer.outcome()
        })
    }
}

fn config() -> RetryConfig {
    RetryConfig::default()
}

/// A layer for the product service knowing Flotilla's methods, whose every jitter draw is
/// `jitter`.
fn layer(config: RetryConfig, jitter: f64) -> Result<RetryLayer, BoxError> {
    Ok(RetryLayer::with_jitter(
        "product",
        &config,
        Arc::new(IdempotentMethods::flotilla()?),
        Arc::new(move || jitter),
    ))
}

fn request(path: &str, timeout: Option<&str>) -> Result<http::Request<Body>, BoxError> {
    request_with_body(
        path,
        timeout,
        Body::new(Full::new(Bytes::from_static(BODY))),
    )
}

fn request_with_body(
    path: &str,
    timeout: Option<&str>,
    body: Body,
) -> Result<http::Request<Body>, BoxError> {
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://product{path}"))
        .header("content-type", "application/grpc");
    if let Some(timeout) = timeout {
        builder = builder.header("grpc-timeout", timeout);
    }
    Ok(builder.body(body)?)
}

async fn call<S>(service: &mut S, request: http::Request<Body>) -> Outcome
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
{
    service.ready().await?.call(request).await
}

/// The gRPC code the caller sees.
fn code_of(outcome: &Outcome) -> Option<Code> {
    match outcome {
        Ok(response) => response
            .headers()
            .get("grpc-status")
            .map(|value| Code::from_bytes(value.as_bytes())),
        Err(error) => error
            .downcast_ref::<AttemptError>()
            .map(|error| error.status().code())
            .or_else(|| error.downcast_ref::<Status>().map(Status::code)),
    }
}

fn instance_of(outcome: &Outcome) -> Option<String> {
    let response = outcome.as_ref().ok()?;
    let attempted = response.extensions().get::<Attempted>()?;
    Some(attempted.instance.to_string())
}

fn avoids(seen: &Seen, instance: &str) -> bool {
    seen.avoid
        .as_ref()
        .is_some_and(|avoid| avoid.contains(instance))
}

// --- which outcomes are retried

#[tokio::test(start_paused = true)]
async fn an_idempotent_call_is_retried_on_another_instance_after_unavailable() -> TestResult {
    let upstream = Upstream::new(
        [
            Answer::Status(Code::Unavailable, "a"),
            Answer::Status(Code::Ok, "b"),
        ],
        Answer::Status(Code::Internal, "z"),
    );
    let retry = layer(config(), 1.0)?;
    let outcome = call(&mut retry.layer(upstream.clone()), request(GET, None)?).await;
    assert_eq!(code_of(&outcome), Some(Code::Ok));
    assert_eq!(instance_of(&outcome).as_deref(), Some("b"));

    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].previous_attempts, None);
    assert_eq!(seen[0].avoid, None, "a first attempt avoids nothing");
    assert_eq!(seen[1].previous_attempts.as_deref(), Some("1"));
    assert!(avoids(&seen[1], "a"));
    assert!(!avoids(&seen[1], "b"));
    assert_eq!(
        retry.stats(),
        RetryStats {
            calls: 1,
            retries: 1,
            refused_by_budget: 0,
            skipped_for_deadline: 0,
        }
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn at_most_two_retries_each_sending_the_same_body_and_the_last_answer_is_returned()
-> TestResult {
    let upstream = Upstream::new(
        [
            Answer::Status(Code::Unavailable, "a"),
            Answer::Failed(Code::Unavailable, Some("b"), Reach::MaybeSent),
            Answer::Status(Code::Unavailable, "c"),
        ],
        Answer::Status(Code::Ok, "d"),
    );
    let retry = layer(config(), 1.0)?;
    // A body in two frames: every attempt gets all of it.
    let frames = futures::stream::iter([
        Ok::<_, Status>(Frame::data(Bytes::from_static(b"part one,"))),
        Ok(Frame::data(Bytes::from_static(b" part two"))),
    ]);
    let body = Body::new(StreamBody::new(frames));
    let outcome = call(
        &mut retry.layer(upstream.clone()),
        request_with_body(GET, None, body)?,
    )
    .await;
    assert_eq!(code_of(&outcome), Some(Code::Unavailable));
    assert_eq!(
        instance_of(&outcome).as_deref(),
        Some("c"),
        "the last answer"
    );

    let seen = upstream.seen();
    assert_eq!(seen.len(), 3, "one call and two retries");
    let previous: Vec<Option<&str>> = seen
        .iter()
        .map(|seen| seen.previous_attempts.as_deref())
        .collect();
    assert_eq!(previous, [None, Some("1"), Some("2")]);
    assert!(avoids(&seen[2], "a") && avoids(&seen[2], "b"));
    for attempt in &seen {
        assert_eq!(&attempt.body[..], b"part one, part two");
    }
    assert_eq!(retry.stats().retries, 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn only_safe_outcomes_are_retried() -> TestResult {
    use Answer::{Failed, NoStatus, Other, Shed, Status as Answered};
    use Reach::{MaybeSent, NotSent};
    let cases = [
        // Never reached a server: any method.
        (GET, Failed(Code::Unavailable, Some("a"), NotSent), 2),
        (CREATE, Failed(Code::Unavailable, Some("a"), NotSent), 2),
        (
            CREATE,
            Failed(Code::ResourceExhausted, Some("a"), NotSent),
            2,
        ),
        // ...but a deadline that passed stays passed, and with no instance to go to the
        // balancer has already waited for one.
        (GET, Failed(Code::DeadlineExceeded, None, NotSent), 1),
        (GET, Failed(Code::Unavailable, None, NotSent), 1),
        (CREATE, Failed(Code::Unavailable, None, NotSent), 1),
        // Maybe reached it: idempotent methods only, and only for UNAVAILABLE.
        (GET, Failed(Code::Unavailable, Some("a"), MaybeSent), 2),
        (CREATE, Failed(Code::Unavailable, Some("a"), MaybeSent), 1),
        (GET, Failed(Code::Unknown, Some("a"), MaybeSent), 1),
        (GET, Failed(Code::Cancelled, Some("a"), MaybeSent), 1),
        // Answers.
        (GET, Answered(Code::Unavailable, "a"), 2),
        (CREATE, Answered(Code::Unavailable, "a"), 1),
        (GET, Answered(Code::NotFound, "a"), 1),
        (GET, Answered(Code::InvalidArgument, "a"), 1),
        (GET, Answered(Code::Internal, "a"), 1),
        (GET, Answered(Code::DeadlineExceeded, "a"), 1),
        (GET, Answered(Code::Ok, "a"), 1),
        (GET, NoStatus("a"), 1),
        // Shedding (with a pushback) is retried; a quota (without one) is not.
        (GET, Shed("a", "0"), 2),
        (CREATE, Shed("a", "0"), 1),
        (GET, Answered(Code::ResourceExhausted, "a"), 1),
        // A pushback that does not parse asks for no retry.
        (GET, Shed("a", "soon"), 1),
        // Not the balancer's error: nothing is known of where it failed.
        (GET, Other(Code::Unavailable), 1),
    ];
    for (path, first, attempts) in cases {
        let upstream = Upstream::new([first.clone()], Answer::Status(Code::Ok, "b"));
        let outcome = call(
            &mut layer(config(), 1.0)?.layer(upstream.clone()),
            request(path, None)?,
        )
        .await;
        let seen = upstream.seen();
        assert_eq!(seen.len(), attempts, "{path} after {first:?}");
        if attempts == 1 {
            assert_eq!(
                code_of(&outcome),
                code_of(&first.outcome()),
                "{path} after {first:?}: the caller gets the answer unchanged"
            );
        } else {
            assert_eq!(code_of(&outcome), Some(Code::Ok), "{path} after {first:?}");
            let failed_on = match &first {
                Failed(_, instance, _) => *instance,
                Answered(_, instance) | Shed(instance, _) => Some(*instance),
                NoStatus(_) | Other(_) => None,
            };
            if let Some(instance) = failed_on {
                assert!(avoids(&seen[1], instance), "{path} after {first:?}");
            }
        }
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_back_off_doubles_up_to_its_ceiling_with_jitter() -> TestResult {
    let config = RetryConfig {
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(30),
        ..RetryConfig::default()
    };
    // Full jitter: half of the ceiling with draws of 0.5.
    for (jitter, gaps) in [(1.0, [20, 30]), (0.5, [10, 15]), (0.0, [0, 0])] {
        let upstream = Upstream::failing();
        call(
            &mut layer(config.clone(), jitter)?.layer(upstream.clone()),
            request(GET, None)?,
        )
        .await
        .ok();
        let seen = upstream.seen();
        let measured: Vec<Duration> = seen
            .windows(2)
            .map(|pair| pair[1].at.duration_since(pair[0].at))
            .collect();
        assert_eq!(
            measured,
            gaps.map(Duration::from_millis),
            "draws of {jitter}"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_shedding_server_s_pushback_is_waited_for_unless_it_is_too_long() -> TestResult {
    let upstream = Upstream::new([Answer::Shed("a", "100")], Answer::Status(Code::Ok, "b"));
    let outcome = call(
        &mut layer(config(), 1.0)?.layer(upstream.clone()),
        request(GET, None)?,
    )
    .await;
    assert_eq!(code_of(&outcome), Some(Code::Ok));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].at.duration_since(seen[0].at),
        Duration::from_millis(100),
        "exactly the pushback, not the jittered back-off"
    );

    // Longer than the longest back-off (250 ms): the caller gets the answer at once.
    let upstream = Upstream::new([Answer::Shed("a", "30000")], Answer::Status(Code::Ok, "b"));
    let started = Instant::now();
    let outcome = call(
        &mut layer(config(), 1.0)?.layer(upstream.clone()),
        request(GET, None)?,
    )
    .await;
    assert_eq!(code_of(&outcome), Some(Code::ResourceExhausted));
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    Ok(())
}

// --- deadline

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_what_is_left_and_a_short_remainder_stops_retries() -> TestResult {
    let config = RetryConfig {
        backoff: Duration::from_millis(10),
        ..RetryConfig::default()
    };
    let upstream = Upstream::failing().with_latency(Duration::from_millis(30));
    let retry = layer(config.clone(), 1.0)?;
    let outcome = call(
        &mut retry.layer(upstream.clone()),
        request(GET, Some("100m"))?,
    )
    .await;
    assert_eq!(code_of(&outcome), Some(Code::Unavailable));
    // 0 ms: 100 ms left. 30 ms: failed; 70 ms left, the next try needs 10 + 30: wait 10 ms.
    // 40 ms: 60 ms left. 70 ms: failed; 30 ms left, the next try needs 20 + 30: none.
    let timeouts: Vec<Option<Duration>> = upstream.seen().iter().map(|seen| seen.timeout).collect();
    assert_eq!(
        timeouts,
        [
            Some(Duration::from_millis(100)),
            Some(Duration::from_millis(60))
        ]
    );
    let stats = retry.stats();
    assert_eq!((stats.retries, stats.skipped_for_deadline), (1, 1));

    // The same with the deadline inherited from the call being served.
    let upstream = Upstream::failing().with_latency(Duration::from_millis(30));
    let retry = layer(config, 1.0)?;
    let mut service = retry.layer(upstream.clone());
    let inherited = Instant::now() + Duration::from_millis(100);
    deadline::scope(Some(inherited), call(&mut service, request(GET, None)?))
        .await
        .ok();
    let timeouts: Vec<Option<Duration>> = upstream.seen().iter().map(|seen| seen.timeout).collect();
    assert_eq!(
        timeouts,
        [
            Some(Duration::from_millis(100)),
            Some(Duration::from_millis(60))
        ]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_deadline_has_passed_is_not_sent() -> TestResult {
    let upstream = Upstream::new([], Answer::Status(Code::Ok, "a"));
    let outcome = call(
        &mut layer(config(), 1.0)?.layer(upstream.clone()),
        request(GET, Some("0m"))?,
    )
    .await;
    let Err(error) = outcome else {
        return Err("a call past its deadline was answered".into());
    };
    let Some(error) = error.downcast_ref::<AttemptError>() else {
        return Err(format!("not an AttemptError: {error}").into());
    };
    assert_eq!(error.status().code(), Code::DeadlineExceeded);
    assert_eq!(error.reach(), Reach::NotSent);
    assert!(upstream.seen().is_empty());
    Ok(())
}

// --- budget

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_retries_to_a_share_of_calls_plus_the_reserve() -> TestResult {
    let config = RetryConfig {
        budget_min_per_sec: 1,
        backoff: Duration::ZERO,
        backoff_max: Duration::ZERO,
        ..RetryConfig::default()
    };
    let upstream = Upstream::failing();
    let retry = layer(config, 1.0)?;
    let service = retry.layer(upstream.clone());
    for _ in 0..100 {
        // Every clone shares the one budget.
        call(&mut service.clone(), request(GET, None)?).await.ok();
    }
    let stats = retry.stats();
    assert_eq!(stats.calls, 100);
    // 20 % of 100 calls, plus a reserve of 1 a second over the 10 s window; without a budget
    // there would be 200.
    assert!(
        (20..=30).contains(&stats.retries),
        "{} retries",
        stats.retries
    );
    assert!(stats.refused_by_budget >= 70, "{stats:?}");
    assert_eq!(upstream.seen().len() as u64, stats.calls + stats.retries);
    Ok(())
}

#[test]
fn a_hand_made_config_out_of_range_does_not_panic() {
    for config in [
        RetryConfig {
            budget_percent: f32::NAN,
            budget_min_per_sec: u32::MAX,
            ..RetryConfig::default()
        },
        RetryConfig {
            budget_percent: -5.0,
            ..RetryConfig::default()
        },
        RetryConfig {
            budget_percent: f32::INFINITY,
            ..RetryConfig::default()
        },
    ] {
        let layer = RetryLayer::new("product", &config, Arc::new(IdempotentMethods::default()));
        assert_eq!(layer.stats(), RetryStats::default());
    }
}

// --- pass-through

#[tokio::test(start_paused = true)]
async fn retries_off_sends_once_but_counts_the_call() -> TestResult {
    let config = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    let upstream = Upstream::failing();
    let retry = layer(config, 1.0)?;
    let outcome = call(&mut retry.layer(upstream.clone()), request(GET, None)?).await;
    assert_eq!(code_of(&outcome), Some(Code::Unavailable));
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(retry.stats().calls, 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn unknown_and_streaming_methods_pass_through_unbuffered() -> TestResult {
    let mut methods = IdempotentMethods::flotilla()?;
    methods.add(&streaming_set());
    let retry =
        RetryLayer::with_jitter("files", &config(), Arc::new(methods), Arc::new(|| 1.0_f64));
    for path in [UNKNOWN, UPLOAD, WATCH] {
        let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let record = Arc::clone(&seen);
        // Reads the first frame of the body, which never ends, and answers UNAVAILABLE.
        let inner = tower::service_fn(move |request: http::Request<Body>| {
            let record = Arc::clone(&record);
            async move {
                let (parts, mut body) = request.into_parts();
                assert!(parts.extensions.get::<AvoidInstances>().is_none());
                if let Ok(mut seen) = record.lock() {
                    seen.push(parts.headers);
                }
                let first = body.frame().await.transpose()?;
                let data = first.and_then(|frame| frame.into_data().ok());
                assert_eq!(data.as_deref(), Some(&b"first"[..]));
                Ok::<_, BoxError>(Status::unavailable("scripted").into_http::<Body>())
            }
        });
        let frames =
            futures::stream::iter([Ok::<_, Status>(Frame::data(Bytes::from_static(b"first")))])
                .chain(futures::stream::pending());
        let request = request_with_body(path, Some("1S"), Body::new(StreamBody::new(frames)))?;
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            call(&mut retry.layer(inner), request),
        )
        .await
        .map_err(|_| format!("{path}: the body was buffered"))?;
        assert_eq!(code_of(&outcome), Some(Code::Unavailable), "{path}");
        let seen = match seen.lock() {
            Ok(seen) => seen.clone(),
            Err(_) => return Err("poisoned".into()),
        };
        assert_eq!(seen.len(), 1, "{path}: not retried");
        let headers = &seen[0];
        assert_eq!(
            headers.get("grpc-timeout").map(|value| value.as_bytes()),
            Some(&b"1S"[..]),
            "{path}: the headers are not touched"
        );
        assert!(headers.get(PREVIOUS_ATTEMPTS).is_none());
    }
    assert_eq!(retry.stats(), RetryStats::default(), "none of them counts");
    Ok(())
}

/// A proto with a client-streaming and a server-streaming method, both marked idempotent.
fn streaming_set() -> FileDescriptorSet {
    let method = |name: &str, client: bool, server: bool| MethodDescriptorProto {
        name: Some(name.to_owned()),
        input_type: Some(".test.v1.Chunk".to_owned()),
        output_type: Some(".test.v1.Chunk".to_owned()),
        options: Some(MethodOptions {
            idempotency_level: Some(IdempotencyLevel::Idempotent as i32),
            ..MethodOptions::default()
        }),
        client_streaming: Some(client),
        server_streaming: Some(server),
    };
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("test/v1/files.proto".to_owned()),
            package: Some("test.v1".to_owned()),
            service: vec![ServiceDescriptorProto {
                name: Some("Files".to_owned()),
                method: vec![
                    method("Upload", true, false),
                    method("Watch", false, true),
                    method("Stat", false, false),
                ],
                options: None,
            }],
            ..FileDescriptorProto::default()
        }],
    }
}

// --- never a retry of a retry

#[tokio::test(start_paused = true)]
async fn calls_made_while_serving_a_retry_are_not_retried() -> TestResult {
    let upstream = Upstream::failing();
    let retry = layer(config(), 1.0)?;
    let client = retry.layer(upstream.clone());
    let handler = tower::service_fn(move |_incoming: http::Request<()>| {
        let mut client = client.clone();
        async move {
            let marked = serving_a_retry();
            let outcome = call(&mut client, request(GET, None)?).await;
            Ok::<_, BoxError>((marked, code_of(&outcome)))
        }
    });
    let server = RetryMarkerLayer.layer(handler);

    let mut incoming = http::Request::new(());
    incoming
        .headers_mut()
        .insert(PREVIOUS_ATTEMPTS, http::HeaderValue::from_static("1"));
    let (marked, code) = server.clone().oneshot(incoming).await?;
    assert!(marked);
    assert_eq!(code, Some(Code::Unavailable));
    assert_eq!(upstream.seen().len(), 1, "serving a retry: one attempt");
    assert_eq!(retry.stats().calls, 1, "still a deposit in the budget");

    for first in [None, Some("0")] {
        let mut incoming = http::Request::new(());
        if let Some(value) = first {
            incoming
                .headers_mut()
                .insert(PREVIOUS_ATTEMPTS, http::HeaderValue::from_static(value));
        }
        let before = upstream.seen().len();
        let (marked, _) = server.clone().oneshot(incoming).await?;
        assert!(!marked);
        assert_eq!(
            upstream.seen().len() - before,
            3,
            "a first attempt: retried"
        );
    }
    assert!(!serving_a_retry(), "the scope ends with the call");
    Ok(())
}

#[test]
fn only_a_positive_count_of_previous_attempts_marks_a_retry() {
    let with = |value: &'static str| {
        let mut headers = http::HeaderMap::new();
        headers.insert(PREVIOUS_ATTEMPTS, http::HeaderValue::from_static(value));
        headers
    };
    assert!(is_a_retry(&with("1")));
    assert!(is_a_retry(&with("4")));
    assert!(!is_a_retry(&with("0")));
    assert!(!is_a_retry(&with("many")));
    assert!(!is_a_retry(&with("-1")));
    assert!(!is_a_retry(&http::HeaderMap::new()));
}

// --- method table

#[test]
fn flotilla_methods_are_known_with_their_idempotency() -> TestResult {
    let methods = IdempotentMethods::flotilla()?;
    let kind = |path: &str| methods.get(path);
    let idempotent = Some(MethodKind {
        idempotent: true,
        grpc_type: "unary",
    });
    let not_idempotent = Some(MethodKind {
        idempotent: false,
        grpc_type: "unary",
    });
    assert_eq!(kind(GET), idempotent);
    assert_eq!(
        kind("/flotilla.product.v1.ProductService/ListProducts"),
        idempotent
    );
    assert_eq!(kind(CREATE), not_idempotent);
    assert_eq!(
        kind("/flotilla.product.v1.ProductService/DeleteProduct"),
        not_idempotent
    );
    assert_eq!(
        kind("/flotilla.auth.v1.AuthService/Refresh"),
        not_idempotent
    );
    assert_eq!(kind("/flotilla.auth.v1.AuthService/Login"), not_idempotent);
    assert_eq!(kind("/flotilla.auth.v1.AuthService/Revoke"), idempotent);
    assert_eq!(kind("/flotilla.user.v1.UserService/GetUser"), idempotent);
    assert_eq!(
        kind("/flotilla.user.v1.UserService/CreateUser"),
        not_idempotent
    );
    assert_eq!(kind(UNKNOWN), None);
    assert_eq!(kind("/flotilla.product.v1.ProductService/Nothing"), None);
    Ok(())
}

#[test]
fn streaming_methods_are_not_unary_and_garbage_is_refused() -> TestResult {
    let mut methods = IdempotentMethods::default();
    assert!(methods.is_empty());
    methods.add(&streaming_set());
    assert_eq!(methods.len(), 3);
    for path in [UPLOAD, WATCH] {
        let kind = methods.get(path).ok_or("not known")?;
        assert!(!kind.unary() && kind.idempotent, "{path}: {kind:?}");
    }
    assert_eq!(
        methods.get(UPLOAD).map(|kind| kind.grpc_type),
        Some("client_stream")
    );
    assert_eq!(
        methods.get(WATCH).map(|kind| kind.grpc_type),
        Some("server_stream")
    );
    assert_eq!(
        methods.get("/test.v1.Files/Stat").map(|kind| kind.unary()),
        Some(true)
    );
    assert!(IdempotentMethods::from_descriptor_set(b"\xff\xff\xff").is_err());
    Ok(())
}

// --- settings

#[test]
fn settings_default_as_documented() -> TestResult {
    let settings = Settings::from_pairs(Vec::<(&str, &str)>::new());
    let config = RetryConfig::from_settings(&settings)?;
    assert_eq!(config, RetryConfig::default());
    assert_eq!(config.max_retries, 2);
    assert_eq!(config.budget_percent, 20.0);
    assert_eq!(config.budget_min_per_sec, 10);
    assert_eq!(config.backoff, Duration::from_millis(25));
    assert_eq!(config.backoff_max, Duration::from_millis(250));
    let mut read: Vec<String> = settings
        .effective()
        .into_iter()
        .map(|setting| setting.name)
        .collect();
    read.sort();
    let mut listed: Vec<&str> = RETRY_SETTINGS.to_vec();
    listed.sort_unstable();
    assert_eq!(read, listed, "RETRY_SETTINGS lists what is read");
    Ok(())
}

#[test]
fn settings_are_read() -> TestResult {
    let config = RetryConfig::from_settings(&Settings::from_pairs([
        ("FLOTILLA_RETRY_MAX", "0"),
        ("FLOTILLA_RETRY_BUDGET_PERCENT", "12.5"),
        ("FLOTILLA_RETRY_BUDGET_MIN_PER_SEC", "0"),
        ("FLOTILLA_RETRY_BACKOFF", "5ms"),
        ("FLOTILLA_RETRY_BACKOFF_MAX", "1s"),
    ]))?;
    assert_eq!(
        config,
        RetryConfig {
            max_retries: 0,
            budget_percent: 12.5,
            budget_min_per_sec: 0,
            backoff: Duration::from_millis(5),
            backoff_max: Duration::from_secs(1),
        }
    );
    // A longer first back-off raises the default ceiling with it.
    let config =
        RetryConfig::from_settings(&Settings::from_pairs([("FLOTILLA_RETRY_BACKOFF", "400ms")]))?;
    assert_eq!(config.backoff_max, Duration::from_millis(400));
    Ok(())
}

#[test]
fn bad_settings_name_their_variable() -> TestResult {
    for (name, value) in [
        ("FLOTILLA_RETRY_MAX", "5"),
        ("FLOTILLA_RETRY_MAX", "-1"),
        ("FLOTILLA_RETRY_MAX", "two"),
        ("FLOTILLA_RETRY_MAX", ""),
        ("FLOTILLA_RETRY_BUDGET_PERCENT", "-5"),
        ("FLOTILLA_RETRY_BUDGET_PERCENT", "NaN"),
        ("FLOTILLA_RETRY_BUDGET_PERCENT", "200000"),
        ("FLOTILLA_RETRY_BUDGET_PERCENT", "a fifth"),
        ("FLOTILLA_RETRY_BUDGET_MIN_PER_SEC", "2000000"),
        ("FLOTILLA_RETRY_BUDGET_MIN_PER_SEC", "1.5"),
        ("FLOTILLA_RETRY_BACKOFF", "25"),
        ("FLOTILLA_RETRY_BACKOFF_MAX", "soon"),
        // Shorter than the first back-off.
        ("FLOTILLA_RETRY_BACKOFF_MAX", "10ms"),
    ] {
        match RetryConfig::from_settings(&Settings::from_pairs([(name, value)])) {
            Err(ConfigError::Invalid { name: reported, .. }) => {
                assert_eq!(reported, name, "{name}={value:?}");
            }
            other => return Err(format!("{name}={value:?}: {other:?}").into()),
        }
    }
    let error = RetryConfig::from_settings(&Settings::from_pairs([(
        "FLOTILLA_RETRY_BACKOFF_MAX",
        "10ms",
    )]))
    .err()
    .map(|error| error.to_string())
    .unwrap_or_default();
    assert!(
        error.contains("at least FLOTILLA_RETRY_BACKOFF (25ms)"),
        "{error}"
    );
    Ok(())
}

#[test]
fn one_upstream_can_be_tuned_apart() -> TestResult {
    let settings = Settings::from_pairs([
        ("FLOTILLA_RETRY_MAX", "1"),
        ("FLOTILLA_AUTH_RETRY_MAX", "0"),
        ("FLOTILLA_USER_RETRY_BUDGET_PERCENT", "oops"),
    ]);
    assert_eq!(RetryConfig::for_upstream(&settings, "auth")?.max_retries, 0);
    assert_eq!(
        RetryConfig::for_upstream(&settings, "product")?.max_retries,
        1
    );
    match RetryConfig::for_upstream(&settings, "user") {
        Err(ConfigError::Invalid { name, .. }) => {
            assert_eq!(name, "FLOTILLA_USER_RETRY_BUDGET_PERCENT");
        }
        other => return Err(format!("{other:?}").into()),
    }
    Ok(())
}
