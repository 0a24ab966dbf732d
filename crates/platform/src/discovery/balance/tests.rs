//! The balancer against real tonic servers on 127.0.0.1, each on its own tokio runtime so that
//! "killing" one closes every socket it had, as a crashed process would.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How long a test waits for an effect that should follow promptly.
const PATIENCE: Duration = Duration::from_secs(5);

/// A health server that counts the calls it receives and answers each after `delay`.
struct TestServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    async fn start(delay: Duration) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_at(([127, 0, 0, 1], 0).into(), delay).await
    }

    async fn start_at(
        addr: SocketAddr,
        delay: Duration,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let (bound, bound_addr) = oneshot::channel();
        runtime.spawn(async move {
            let listener = match listen(addr) {
                Ok(listener) => listener,
                Err(error) => {
                    let _ = bound.send(Err(error));
                    return;
                }
            };
            let _ = bound.send(listener.local_addr());
            let (reporter, health) = tonic_health::server::health_reporter();
            let counting = tower::layer::layer_fn(move |inner| Counted {
                inner,
                calls: Arc::clone(&counter),
                delay,
            });
            let _ = tonic::transport::Server::builder()
                .layer(counting)
                .add_service(health)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            drop(reporter);
        });
        let addr = bound_addr.await??;
        Ok(Self {
            addr,
            calls,
            runtime: Some(runtime),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Stops the server's runtime, as a crash would: its listener and every connection close.
    /// Returns once connecting is refused.
    async fn kill(&mut self) -> TestResult {
        self.stop();
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            if Instant::now() > deadline {
                return Err(format!("{} still accepts connections", self.addr).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_ejected(balanced: &Balanced, id: &str) -> bool {
    balanced
        .snapshot()
        .iter()
        .any(|endpoint| endpoint.id == id && endpoint.ejected_until.is_some())
}

/// A listener that may take over the port of one just closed (its connections in TIME_WAIT).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
    delay: Duration,
}

impl<S, R> tower::Service<R> for Counted<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay;
        let answer = self.inner.call(request);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer.await
        })
    }
}

/// A discovery stream the test drives by hand.
fn feed() -> (mpsc::UnboundedSender<Vec<Instance>>, InstanceStream) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (sender, Box::pin(UnboundedReceiverStream::new(receiver)))
}

fn instance(id: &str, addr: SocketAddr) -> Instance {
    Instance {
        id: id.to_owned(),
        addr,
        tags: Vec::new(),
        meta: BTreeMap::new(),
    }
}

/// Short back-offs so ejection and recovery happen within a test's patience.
fn quick() -> BalanceOptions {
    BalanceOptions {
        connect_timeout: Duration::from_millis(500),
        ejection_base: Duration::from_millis(100),
        ejection_max: Duration::from_millis(400),
        ejection_jitter: 0.0,
        ..BalanceOptions::default()
    }
}

fn request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

async fn check(client: &mut HealthClient<Balanced>) -> Result<(), tonic::Status> {
    client.check(request()).await.map(|_| ())
}

/// Waits until the picker's view satisfies `condition`.
async fn until_snapshot(
    balanced: &Balanced,
    what: &str,
    condition: impl Fn(&[EndpointSnapshot]) -> bool,
) -> TestResult {
    let deadline = Instant::now() + PATIENCE;
    while !condition(&balanced.snapshot()) {
        if Instant::now() > deadline {
            return Err(
                format!("{what}: not within {PATIENCE:?}: {:?}", balanced.snapshot()).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Calls until `condition` holds, failing on the first error or after `PATIENCE`; returns how
/// many calls it took.
async fn call_until(
    client: &mut HealthClient<Balanced>,
    what: &str,
    condition: impl Fn() -> bool,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let deadline = Instant::now() + PATIENCE;
    let mut calls = 0;
    while !condition() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {PATIENCE:?} ({calls} calls)").into());
        }
        check(client).await?;
        calls += 1;
    }
    Ok(calls)
}

/// `workers` concurrent callers making `calls_each` calls each; returns the failures.
async fn concurrent_load(
    balanced: &Balanced,
    workers: usize,
    calls_each: usize,
) -> Result<usize, tokio::task::JoinError> {
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let mut client = HealthClient::new(balanced.clone());
        tasks.spawn(async move {
            let mut failures = 0;
            for _ in 0..calls_each {
                if check(&mut client).await.is_err() {
                    failures += 1;
                }
            }
            failures
        });
    }
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        failures += joined?;
    }
    Ok(failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_two_equal_instances() -> TestResult {
    // A delay well above this machine's scheduling noise, so "equal" stays true under load.
    let first = TestServer::start(Duration::from_millis(10)).await?;
    let second = TestServer::start(Duration::from_millis(10)).await?;
    let (discovery, instances) = feed();
    // A short decay, so a scheduling hiccup on this shared machine is forgotten within the test.
    let options = BalanceOptions {
        decay: Duration::from_millis(100),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options);
    discovery.send(vec![
        instance("product-1", first.addr),
        instance("product-2", second.addr),
    ])?;

    let failures = concurrent_load(&balanced, 8, 25).await?;

    assert_eq!(failures, 0);
    let (first, second) = (first.calls(), second.calls());
    assert_eq!(first + second, 200);
    assert!(
        first >= 40 && second >= 40,
        "each should get a fair share: {first} and {second}"
    );
    assert!(
        balanced
            .snapshot()
            .iter()
            .all(|endpoint| endpoint.in_flight == 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_gets_less_traffic_under_load() -> TestResult {
    // Slower than any scheduling stall this shared machine is likely to add to the fast one.
    let slow = TestServer::start(Duration::from_millis(50)).await?;
    let fast = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        decay: Duration::from_millis(200),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options);
    discovery.send(vec![
        instance("product-slow", slow.addr),
        instance("product-fast", fast.addr),
    ])?;

    let failures = concurrent_load(&balanced, 8, 30).await?;

    assert_eq!(failures, 0);
    let (slow_calls, fast_calls) = (slow.calls(), fast.calls());
    assert_eq!(slow_calls + fast_calls, 240);
    assert!(
        fast_calls > 2 * slow_calls,
        "the fast instance should get most calls: fast {fast_calls}, slow {slow_calls}"
    );
    let snapshot = balanced.snapshot();
    let latency = |id: &str| {
        snapshot
            .iter()
            .find(|endpoint| endpoint.id == id)
            .map(|endpoint| endpoint.latency)
    };
    // Every answer of the slow one took 50 ms or more, and so does any blend of them. (The fast
    // one's estimate is not compared: one scheduling stall on a busy machine is a peak too.)
    assert!(latency("product-slow") >= Some(Duration::from_millis(50)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_instance_gets_no_further_calls() -> TestResult {
    let leaving = TestServer::start(Duration::ZERO).await?;
    let staying = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![
        instance("product-1", leaving.addr),
        instance("product-2", staying.addr),
    ])?;
    call_until(&mut client, "both instances called", || {
        leaving.calls() > 0 && staying.calls() > 0
    })
    .await?;

    discovery.send(vec![instance("product-2", staying.addr)])?;
    until_snapshot(&balanced, "product-1 removed", |endpoints| {
        endpoints.len() == 1 && endpoints[0].id == "product-2"
    })
    .await?;
    let (leaving_before, staying_before) = (leaving.calls(), staying.calls());
    for _ in 0..50 {
        check(&mut client).await?;
    }

    assert_eq!(leaving.calls(), leaving_before);
    assert_eq!(staying.calls(), staying_before + 50);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_on_a_removed_instance_finishes_normally() -> TestResult {
    let leaving = TestServer::start(Duration::from_millis(300)).await?;
    let staying = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    discovery.send(vec![instance("product-1", leaving.addr)])?;
    let mut client = HealthClient::new(balanced.clone());
    let call = tokio::spawn(async move { check(&mut client).await });
    let deadline = Instant::now() + PATIENCE;
    while leaving.calls() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    discovery.send(vec![instance("product-2", staying.addr)])?;
    until_snapshot(&balanced, "product-1 replaced", |endpoints| {
        endpoints.len() == 1 && endpoints[0].id == "product-2"
    })
    .await?;

    call.await??;
    assert_eq!(leaving.calls(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_instance_gets_calls_at_once() -> TestResult {
    let first = TestServer::start(Duration::ZERO).await?;
    let added = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", first.addr)])?;
    for _ in 0..20 {
        check(&mut client).await?;
    }

    discovery.send(vec![
        instance("product-1", first.addr),
        instance("product-2", added.addr),
    ])?;
    until_snapshot(&balanced, "product-2 added", |endpoints| {
        endpoints.len() == 2
    })
    .await?;
    let started = Instant::now();
    let calls = call_until(&mut client, "product-2 called", || added.calls() > 0).await?;

    // Never picked, it is forced in the first time it is drawn: with two instances, at once.
    assert_eq!(calls, 1, "calls before the new instance got one");
    assert!(started.elapsed() < Duration::from_secs(1));
    Ok(())
}

#[tokio::test]
async fn an_empty_set_fails_at_once_with_unavailable() -> TestResult {
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        first_answer_timeout: Duration::from_secs(60),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced);
    discovery.send(Vec::new())?;

    let answer = tokio::time::timeout(PATIENCE, check(&mut client)).await?;

    let status = answer.err().ok_or("a call with no instance succeeded")?;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "no healthy instance of product");
    Ok(())
}

#[tokio::test]
async fn without_an_answer_from_discovery_a_call_waits_then_fails() -> TestResult {
    let (_discovery, instances) = feed();
    let options = BalanceOptions {
        first_answer_timeout: Duration::from_millis(200),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced);

    let status = check(&mut client)
        .await
        .err()
        .ok_or("a call before discovery answered succeeded")?;

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "discovery has not answered for product yet (waited 200ms)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_discovery_goes_out_when_it_answers() -> TestResult {
    let server = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        first_answer_timeout: Duration::from_secs(60),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced);
    let call = tokio::spawn(async move { check(&mut client).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!call.is_finished(), "the call must wait for discovery");

    discovery.send(vec![instance("product-1", server.addr)])?;

    tokio::time::timeout(PATIENCE, call).await???;
    assert_eq!(server.calls(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_ejected_then_restored_when_it_returns() -> TestResult {
    let mut doomed = TestServer::start(Duration::ZERO).await?;
    let survivor = TestServer::start(Duration::ZERO).await?;
    let doomed_addr = doomed.addr;
    let (discovery, instances) = feed();
    let balanced = Balanced::with_options("product", instances, quick());
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![
        instance("product-1", doomed_addr),
        instance("product-2", survivor.addr),
    ])?;
    call_until(&mut client, "both instances called", || {
        doomed.calls() > 0 && survivor.calls() > 0
    })
    .await?;

    // Discovery keeps listing it: only the balancer can tell.
    doomed.kill().await?;
    let mut failures = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !is_ejected(&balanced, "product-1") {
        if Instant::now() > deadline {
            return Err(format!("product-1 not ejected: {:?}", balanced.snapshot()).into());
        }
        if let Err(status) = check(&mut client).await {
            failures.push(status);
        }
    }

    // The call that found it dead failed, with the instance named; no other.
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].code(), Code::Unavailable, "{failures:?}");
    assert!(
        failures[0].message().contains(&doomed_addr.to_string()),
        "{failures:?}"
    );
    // Several failed probes later, still not a single failed call, and every call on the
    // survivor.
    let survivor_before = survivor.calls();
    let mut calls = 0;
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet_until {
        check(&mut client).await?;
        calls += 1;
    }
    assert_eq!(survivor.calls() - survivor_before, calls);
    let doomed_view = balanced
        .snapshot()
        .into_iter()
        .find(|endpoint| endpoint.id == "product-1")
        .ok_or("product-1 still listed")?;
    assert!(doomed_view.ejected_until.is_some(), "{doomed_view:?}");
    assert!(
        doomed_view.consecutive_failures > 1,
        "probes failed: {doomed_view:?}"
    );
    assert_eq!(doomed_view.in_flight, 0);

    // Back at the same address: traffic returns after the back-off.
    let revived = TestServer::start_at(doomed_addr, Duration::ZERO).await?;
    call_until(&mut client, "the revived instance called", || {
        revived.calls() > 0
    })
    .await?;
    until_snapshot(&balanced, "product-1 restored", |endpoints| {
        endpoints
            .iter()
            .all(|endpoint| endpoint.ejected_until.is_none() && endpoint.consecutive_failures == 0)
    })
    .await?;
    Ok(())
}

/// An address where nothing listens.
fn closed_port() -> Result<SocketAddr, std::io::Error> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

#[tokio::test]
async fn when_every_instance_is_ejected_calls_fail_fast_naming_the_last_error() -> TestResult {
    let dead = closed_port()?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        connect_eagerly: false,
        ejection_base: Duration::from_secs(60),
        ..quick()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", dead)])?;

    let first = check(&mut client).await.err().ok_or("a call to nothing")?;
    let second = check(&mut client).await.err().ok_or("a call to nothing")?;

    assert_eq!(first.code(), Code::Unavailable);
    assert!(
        first.message().starts_with(&format!(
            "calling product instance product-1 at {dead} failed: "
        )),
        "{first:?}"
    );
    assert_eq!(second.code(), Code::Unavailable);
    assert!(
        second.message().starts_with(&format!(
            "every known instance of product is ejected after failing (1 known); \
             last error (from {dead}): "
        )),
        "{second:?}"
    );
    assert_eq!(balanced.snapshot()[0].in_flight, 0);
    assert_eq!(balanced.snapshot()[0].consecutive_failures, 1);
    Ok(())
}

#[tokio::test]
async fn an_instance_refusing_its_warm_up_is_ejected_before_any_call() -> TestResult {
    let dead = closed_port()?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        ejection_base: Duration::from_secs(60),
        ..quick()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", dead)])?;
    until_snapshot(&balanced, "product-1 ejected", |endpoints| {
        endpoints.len() == 1 && endpoints[0].ejected_until.is_some()
    })
    .await?;

    let status = check(&mut client).await.err().ok_or("a call to nothing")?;

    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with("every known instance of product is ejected"),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_does_not_eject_but_counts_as_slow() -> TestResult {
    let server = TestServer::start(Duration::from_millis(500)).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", server.addr)])?;
    let mut hurried = tonic::Request::new(request());
    hurried.set_timeout(Duration::from_millis(50));

    let status = client.check(hurried).await.err().ok_or("beat the delay")?;

    assert_eq!(
        status.code(),
        Code::Cancelled,
        "tonic's code for a deadline: {status:?}"
    );
    let view = &balanced.snapshot()[0];
    assert_eq!(view.ejected_until, None);
    assert_eq!(view.consecutive_failures, 0);
    assert_eq!(view.in_flight, 0);
    assert!(view.latency >= Duration::from_millis(50), "{view:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_lasts_until_the_response_body_ends_or_is_dropped() -> TestResult {
    let server = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", server.addr)])?;
    let in_flight = || balanced.snapshot()[0].in_flight;

    for _ in 0..10 {
        check(&mut client).await?;
    }
    assert_eq!(in_flight(), 0);

    // A server stream stays in flight after its headers and first message…
    let mut watch = client.watch(request()).await?.into_inner();
    assert!(watch.message().await?.is_some());
    assert_eq!(in_flight(), 1);
    // …until its body is dropped unfinished.
    drop(watch);
    assert_eq!(in_flight(), 0);
    Ok(())
}

#[tokio::test]
async fn the_discovery_task_ends_with_the_last_clone() -> TestResult {
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    assert_eq!(balanced.service(), "product");
    let clone = balanced.clone();
    drop(balanced);
    tokio::task::yield_now().await;
    assert!(!discovery.is_closed(), "a clone still holds the channel");

    drop(clone);

    tokio::time::timeout(PATIENCE, discovery.closed()).await?;
    Ok(())
}
