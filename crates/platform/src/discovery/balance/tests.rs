//! The balancer against real tonic servers on 127.0.0.1, each on its own tokio runtime so that
//! stopping one closes every socket it had, as a crashed process would.
//!
//! Every server's address is held for the whole test by a socket bound with `SO_REUSEPORT` that
//! never listens: nothing else can take the port, connecting is refused while no server of ours
//! listens there, and a server can come back on it without a bind-then-drop race. The listening
//! socket itself belongs to the test, and each server runtime accepts on a duplicate of it, so a
//! server can also be replaced while its address keeps accepting (connections queue until the new
//! one accepts them).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as _, Frame};
use prost::bytes::Bytes;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How long a test waits for an effect that should follow promptly.
const PATIENCE: Duration = Duration::from_secs(5);

/// How a test server answers.
#[derive(Clone)]
struct Reply {
    /// Added before every answer.
    delay: Duration,
    /// When set, every answer waits until it reads `true`.
    gate: Option<watch::Receiver<bool>>,
    /// While `true`, every call is answered `UNAVAILABLE` (trailers-only, as a tonic handler's
    /// error is) without reaching the service.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

/// A health server that counts the calls it receives and answers each as its [`Reply`] says.
struct TestServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    reply: Reply,
    /// The listening socket, while the address accepts connections.
    listener: Option<std::net::TcpListener>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Holds the address while nothing listens.
    _port: TcpSocket,
}

impl TestServer {
    async fn start(delay: Duration) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with(Reply {
            delay,
            gate: None,
            failing: Arc::default(),
        })
        .await
    }

    /// A server whose answers wait until `gate` reads `true`.
    async fn held(
        gate: watch::Receiver<bool>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with(Reply {
            delay: Duration::ZERO,
            gate: Some(gate),
            failing: Arc::default(),
        })
        .await
    }

    async fn start_with(reply: Reply) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let (port, addr) = hold_port()?;
        let mut server = Self {
            addr,
            calls: Arc::new(AtomicUsize::new(0)),
            reply,
            listener: None,
            runtime: None,
            _port: port,
        };
        server.revive().await?;
        Ok(server)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Makes every answer `UNAVAILABLE` (or good again).
    fn fail(&self, failing: bool) {
        self.reply.failing.store(failing, Ordering::SeqCst);
    }

    /// Stops the server as a crash would: every connection closes, and connecting is refused.
    async fn kill(&mut self) -> TestResult {
        self.stop().await?;
        self.listener = None;
        Ok(())
    }

    /// Starts the server again on its address, after a [`TestServer::kill`].
    async fn revive(&mut self) -> TestResult {
        let listener = listen(self.addr)?;
        self.runtime = Some(serve(&listener, self.reply.clone(), Arc::clone(&self.calls)).await?);
        self.listener = Some(listener);
        Ok(())
    }

    /// Stops the server and starts a new one on the same listening socket: every connection is
    /// reset, while the address never stops accepting (a restart behind a stable address, a
    /// proxy dropping its connections).
    async fn replace(&mut self) -> TestResult {
        self.stop().await?;
        let listener = self.listener.as_ref().ok_or("the server was killed")?;
        self.runtime = Some(serve(listener, self.reply.clone(), Arc::clone(&self.calls)).await?);
        Ok(())
    }

    /// Stops the runtime and returns once its tasks, and so their sockets, are gone.
    async fn stop(&mut self) -> TestResult {
        if let Some(runtime) = self.runtime.take() {
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(PATIENCE)).await?;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A health server accepting on (a duplicate of) `listener`, on a runtime of its own.
async fn serve(
    listener: &std::net::TcpListener,
    reply: Reply,
    calls: Arc<AtomicUsize>,
) -> Result<tokio::runtime::Runtime, Box<dyn std::error::Error + Send + Sync>> {
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (started, started_result) = oneshot::channel();
    runtime.spawn(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        let _ = started.send(Ok(()));
        let (reporter, health) = tonic_health::server::health_reporter();
        let counting = tower::layer::layer_fn(move |inner| Counted {
            inner,
            calls: Arc::clone(&calls),
            reply: reply.clone(),
        });
        let _ = tonic::transport::Server::builder()
            .layer(counting)
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        drop(reporter);
    });
    started_result.await??;
    Ok(runtime)
}

/// A port of 127.0.0.1 for one test, and the socket that holds it without listening.
fn hold_port() -> std::io::Result<(TcpSocket, SocketAddr)> {
    let socket = shared_socket()?;
    socket.bind(([127, 0, 0, 1], 0).into())?;
    let addr = socket.local_addr()?;
    Ok((socket, addr))
}

/// A listener on a port held by [`hold_port`].
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = shared_socket()?;
    socket.bind(addr)?;
    socket.listen(128)?.into_std()
}

fn shared_socket() -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    Ok(socket)
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
    reply: Reply,
}

impl<S, R> tower::Service<R> for Counted<S>
where
    S: tower::Service<R, Response = http::Response<Body>>,
    S::Error: Send + 'static,
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
        let Reply {
            delay,
            gate,
            failing,
        } = self.reply.clone();
        if failing.load(Ordering::SeqCst) {
            let answer = Status::unavailable("failing on purpose").into_http();
            return Box::pin(std::future::ready(Ok(answer)));
        }
        let answer = self.inner.call(request);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(mut gate) = gate {
                // A dropped sender opens the gate.
                let _ = gate.wait_for(|open| *open).await;
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

fn is_ejected(balanced: &Balanced, id: &str) -> bool {
    balanced
        .snapshot()
        .iter()
        .any(|endpoint| endpoint.id == id && endpoint.ejected_until.is_some())
}

/// The balancer's endpoint for instance `id`.
fn endpoint(balanced: &Balanced, id: &str) -> Result<Arc<Endpoint>, String> {
    balanced
        .shared
        .endpoints()
        .iter()
        .find(|endpoint| &*endpoint.id == id)
        .cloned()
        .ok_or_else(|| format!("no endpoint {id}"))
}

/// Waits until `condition` holds (an effect in another runtime or task).
async fn eventually(what: &str, condition: impl Fn() -> bool) -> TestResult {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {PATIENCE:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
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
    // An estimate only moves when its instance is picked: one scheduling stall could make an
    // instance look slow for the whole test. Forcing a neglected one in after 20 ms, and a short
    // decay, let a stall be measured away within a few calls.
    let options = BalanceOptions {
        decay: Duration::from_millis(50),
        force_pick_after: Duration::from_millis(20),
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
    // Far slower than any scheduling stall this shared machine is likely to add to the fast one:
    // once it has answered, the slow one costs more than the fast one with 8 calls queued.
    let slow = TestServer::start(Duration::from_millis(200)).await?;
    let fast = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
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
            .find(|endpoint| &*endpoint.id == id)
            .map(|endpoint| endpoint.latency)
    };
    // Every answer of the slow one took 200 ms or more, and so does any blend of them. (The fast
    // one's estimate is not compared: one scheduling stall on a busy machine is a peak too.)
    assert!(latency("product-slow") >= Some(Duration::from_millis(200)));
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
    let (gate, held) = watch::channel(false);
    let leaving = TestServer::held(held).await?;
    let staying = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    discovery.send(vec![instance("product-1", leaving.addr)])?;
    let mut client = HealthClient::new(balanced.clone());
    let call = tokio::spawn(async move { check(&mut client).await });
    eventually("the call reached product-1", || leaving.calls() == 1).await?;

    discovery.send(vec![instance("product-2", staying.addr)])?;
    until_snapshot(&balanced, "product-1 replaced", |endpoints| {
        endpoints.len() == 1 && endpoints[0].id == "product-2"
    })
    .await?;
    assert!(!call.is_finished(), "the server still holds the answer");
    gate.send_replace(true);

    tokio::time::timeout(PATIENCE, call).await???;
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
    let calls = call_until(&mut client, "product-2 called", || added.calls() > 0).await?;

    // Never picked, it is forced in the first time it is drawn: with two instances, at once,
    // whatever the machine's speed.
    assert_eq!(calls, 1, "calls before the new instance got one");
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

#[tokio::test(start_paused = true)]
async fn calls_wait_for_discovery_until_one_deadline_from_the_channels_creation() -> TestResult {
    let (_discovery, instances) = feed();
    let options = BalanceOptions {
        first_answer_timeout: Duration::from_secs(5),
        ..BalanceOptions::default()
    };
    let created = Instant::now();
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced);
    tokio::time::sleep(Duration::from_secs(4)).await;

    let first = check(&mut client).await.err().ok_or("a call succeeded")?;

    // It waited what was left of the 5 s, not 5 s of its own.
    assert_eq!(created.elapsed(), Duration::from_secs(5));
    assert_eq!(first.code(), Code::Unavailable);
    assert_eq!(
        first.message(),
        "discovery has not answered for product within 5s of the channel's creation"
    );
    // Later calls do not wait at all.
    let second = check(&mut client).await.err().ok_or("a call succeeded")?;
    assert_eq!(created.elapsed(), Duration::from_secs(5));
    assert_eq!(second.message(), first.message());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_call_waits_for_discovery_no_longer_than_its_own_deadline() -> TestResult {
    let (_discovery, instances) = feed();
    let options = BalanceOptions {
        first_answer_timeout: Duration::from_secs(60),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced);
    let mut hurried = tonic::Request::new(request());
    hurried.set_timeout(Duration::from_millis(200));
    let started = Instant::now();

    let status = client
        .check(hurried)
        .await
        .err()
        .ok_or("a call succeeded")?;

    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("product"), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_waited_for_discovery_keeps_only_the_rest_of_its_deadline() -> TestResult {
    let server = TestServer::start(Duration::from_millis(300)).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    let mut client = HealthClient::new(balanced.clone());
    let mut hurried = tonic::Request::new(request());
    hurried.set_timeout(Duration::from_millis(400));
    let call = tokio::spawn(async move { client.check(hurried).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;

    discovery.send(vec![instance("product-1", server.addr)])?;

    // 400 ms would outlast the 300 ms answer; the 200 ms or less left of them do not.
    let status = tokio::time::timeout(PATIENCE, call)
        .await??
        .err()
        .ok_or("the call outlived its deadline")?;
    assert_eq!(
        status.code(),
        Code::Cancelled,
        "tonic's code for a deadline: {status:?}"
    );
    assert_eq!(server.calls(), 1);
    Ok(())
}

#[tokio::test]
async fn a_discovery_stream_that_ends_before_answering_fails_calls_at_once() -> TestResult {
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        first_answer_timeout: Duration::from_secs(60),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced);
    drop(discovery);

    let answer = tokio::time::timeout(PATIENCE, check(&mut client)).await?;

    let status = answer.err().ok_or("a call without discovery succeeded")?;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "discovery for product stopped before listing any instance"
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
    let revived_before = doomed.calls();
    doomed.revive().await?;
    call_until(&mut client, "the revived instance called", || {
        doomed.calls() > revived_before
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_instance_whose_connection_resets_is_usable_again_at_once() -> TestResult {
    let (gate, held) = watch::channel(true);
    let mut server = TestServer::held(held).await?;
    let (discovery, instances) = feed();
    // The defaults: a 1 s back-off, which calls used to fail through.
    let options = BalanceOptions::default();
    let balanced = Balanced::with_options("product", instances, options.clone());
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", server.addr)])?;
    check(&mut client).await?;

    // Several rounds: the instance keeps its id, and must not keep a longer back-off either.
    for round in 1..=3 {
        gate.send_replace(false);
        let calls_before = server.calls();
        let mut lost_client = client.clone();
        let lost = tokio::spawn(async move { check(&mut lost_client).await });
        eventually("the call reached the server", || {
            server.calls() > calls_before
        })
        .await?;

        server.replace().await?;
        let lost = tokio::time::timeout(PATIENCE, lost).await??;
        gate.send_replace(true);
        let status = lost.err().ok_or("a call on a reset connection succeeded")?;
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "round {round}: {status:?}"
        );

        let started = Instant::now();
        check(&mut client)
            .await
            .map_err(|status| format!("round {round}: {status:?}"))?;
        assert!(
            started.elapsed() < options.connect_timeout,
            "round {round}: {:?}",
            started.elapsed()
        );
    }
    let view = &balanced.snapshot()[0];
    assert_eq!(view.ejected_until, None, "{view:?}");
    assert_eq!(view.consecutive_failures, 0, "{view:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_connection_resets_is_probed_at_once() -> TestResult {
    let (gate, held) = watch::channel(false);
    let mut server = TestServer::held(held).await?;
    let (discovery, instances) = feed();
    // A back-off far beyond the test's patience: only the immediate probe can bring it back.
    let options = BalanceOptions {
        ejection_base: Duration::from_secs(60),
        ejection_max: Duration::from_secs(60),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", server.addr)])?;
    let lost = tokio::spawn(async move { check(&mut client).await });
    eventually("the call reached the server", || server.calls() == 1).await?;

    server.replace().await?;
    let lost = tokio::time::timeout(PATIENCE, lost).await??;
    gate.send_replace(true);

    assert_eq!(
        lost.err().map(|status| status.code()),
        Some(Code::Unavailable)
    );
    // No call waits for it: the probe went out on its own, and the failure is on record.
    until_snapshot(&balanced, "product-1 restored", |endpoints| {
        endpoints[0].ejected_until.is_none() && endpoints[0].consecutive_failures == 1
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_ejected_a_call_waits_for_a_probe_brought_forward() -> TestResult {
    let mut server = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        connect_timeout: Duration::from_secs(1),
        ejection_base: Duration::from_millis(100),
        ejection_max: Duration::from_secs(60),
        ejection_jitter: 0.0,
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options.clone());
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", server.addr)])?;
    check(&mut client).await?;
    server.kill().await?;
    check(&mut client).await.err().ok_or("a call to nothing")?;
    // Probes fail, 100, 200, 400, 800 ms apart, until the next is further off than a call waits.
    until_snapshot(&balanced, "the next probe far off", |endpoints| {
        endpoints
            .first()
            .and_then(|endpoint| endpoint.ejected_until)
            .is_some_and(|due| due > Instant::now() + options.connect_timeout)
    })
    .await?;

    server.revive().await?;
    let started = Instant::now();
    check(&mut client).await?;

    // The waiting call brought the probe forward to 100 ms after the last.
    assert!(
        started.elapsed() < options.connect_timeout,
        "{:?}",
        started.elapsed()
    );
    let view = &balanced.snapshot()[0];
    assert_eq!(view.ejected_until, None, "{view:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_ejected_a_call_waits_up_to_the_connect_timeout_or_its_deadline()
-> TestResult {
    let (_port, dead) = hold_port()?;
    let (discovery, instances) = feed();
    // Probes every 50 ms, each refused: one is always about to end.
    let options = BalanceOptions {
        connect_timeout: Duration::from_millis(600),
        ejection_base: Duration::from_millis(50),
        ejection_max: Duration::from_millis(50),
        ejection_jitter: 0.0,
        ..BalanceOptions::default()
    };
    let balanced = Balanced::with_options("product", instances, options.clone());
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", dead)])?;
    until_snapshot(&balanced, "product-1 ejected", |endpoints| {
        endpoints
            .first()
            .is_some_and(|endpoint| endpoint.ejected_until.is_some())
    })
    .await?;

    let started = Instant::now();
    let status = check(&mut client).await.err().ok_or("a call to nothing")?;
    let waited = started.elapsed();

    // Until the connect timeout, or until the next probe would come too late: the one due
    // after the last failed probe, a base back-off later.
    let least = options.connect_timeout - options.ejection_base;
    assert!(waited >= least && waited < PATIENCE, "{waited:?}");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with(&format!(
            "every known instance of product is ejected after failing (1 known); \
             last error (from {dead}): "
        )),
        "{status:?}"
    );

    let mut hurried = tonic::Request::new(request());
    hurried.set_timeout(Duration::from_millis(150));
    let started = Instant::now();
    let status = client
        .check(hurried)
        .await
        .err()
        .ok_or("a call to nothing")?;
    let waited = started.elapsed();

    // At the deadline, or as soon as the next probe would come after it.
    let least = Duration::from_millis(150) - options.ejection_base;
    assert!(
        waited >= least && waited < options.connect_timeout,
        "{waited:?}"
    );
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn when_no_probe_can_succeed_in_time_calls_fail_at_once_naming_the_last_error() -> TestResult
{
    let (_port, dead) = hold_port()?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        connect_eagerly: false,
        connect_timeout: Duration::from_secs(2),
        ejection_base: Duration::from_secs(60),
        ejection_max: Duration::from_secs(60),
        ..quick()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", dead)])?;

    let first = check(&mut client).await.err().ok_or("a call to nothing")?;
    let started = Instant::now();
    let second = check(&mut client).await.err().ok_or("a call to nothing")?;
    let waited = started.elapsed();

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
    // The immediate probe was refused; the next is a minute away: no point in waiting 2 s.
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    let view = &balanced.snapshot()[0];
    assert_eq!(view.in_flight, 0);
    assert_eq!(
        view.consecutive_failures, 2,
        "the call and the probe: {view:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_instance_refusing_its_warm_up_is_ejected_before_any_call() -> TestResult {
    let (_port, dead) = hold_port()?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        ejection_base: Duration::from_secs(60),
        ejection_max: Duration::from_secs(60),
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
    assert_eq!(
        balanced.snapshot()[0].consecutive_failures,
        1,
        "the warm-up"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_ends_when_its_instance_is_removed() -> TestResult {
    let (_port, dead) = hold_port()?;
    let other = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        ejection_base: Duration::from_secs(60),
        ejection_max: Duration::from_secs(60),
        ..quick()
    };
    let balanced = Balanced::with_options("product", instances, options);
    discovery.send(vec![
        instance("product-1", dead),
        instance("product-2", other.addr),
    ])?;
    eventually("product-1 probed", || {
        endpoint(&balanced, "product-1").is_ok_and(|endpoint| endpoint.probing())
    })
    .await?;
    let probed = Arc::downgrade(&endpoint(&balanced, "product-1")?);

    discovery.send(vec![instance("product-2", other.addr)])?;

    // The probe task held the endpoint; nothing else does once it is out of the list.
    eventually("the probe ended", || probed.upgrade().is_none()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_end_with_the_last_clone() -> TestResult {
    let (_port, dead) = hold_port()?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        ejection_base: Duration::from_secs(60),
        ejection_max: Duration::from_secs(60),
        ..quick()
    };
    let balanced = Balanced::with_options("product", instances, options);
    discovery.send(vec![instance("product-1", dead)])?;
    eventually("product-1 probed", || {
        endpoint(&balanced, "product-1").is_ok_and(|endpoint| endpoint.probing())
    })
    .await?;
    let probed: Weak<Endpoint> = Arc::downgrade(&endpoint(&balanced, "product-1")?);
    let shared: Weak<Shared> = Arc::downgrade(&balanced.shared);

    drop(balanced);

    // Every task (discovery, warm-ups, probes) holds the shared state.
    eventually("every task ended", || {
        shared.upgrade().is_none() && probed.upgrade().is_none()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_does_not_eject_but_counts_as_slow() -> TestResult {
    let server = TestServer::start(Duration::from_millis(500)).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", server.addr)])?;
    // Otherwise the call may spend part of its 50 ms waiting for discovery, before it is sent.
    until_snapshot(&balanced, "product-1 listed", |endpoints| {
        endpoints.len() == 1
    })
    .await?;
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
async fn a_call_dropped_before_its_answer_is_no_longer_in_flight() -> TestResult {
    let (_gate, held) = watch::channel(false);
    let server = TestServer::held(held).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", server.addr)])?;
    let call = tokio::spawn(async move { check(&mut client).await });
    eventually("the call reached the server", || server.calls() == 1).await?;
    assert_eq!(balanced.snapshot()[0].in_flight, 1);

    call.abort();

    until_snapshot(&balanced, "the call no longer in flight", |endpoints| {
        endpoints[0].in_flight == 0
    })
    .await?;
    let view = &balanced.snapshot()[0];
    assert_eq!(
        view.ejected_until, None,
        "giving up is not a failure: {view:?}"
    );
    assert_eq!(view.consecutive_failures, 0, "{view:?}");
    Ok(())
}

/// A request body of one frame.
struct OneFrame(Option<Bytes>);

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_lasts_until_the_response_body_ends() -> TestResult {
    let server = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::new("product", instances);
    discovery.send(vec![instance("product-1", server.addr)])?;
    let in_flight = || balanced.snapshot()[0].in_flight;
    // A unary Check by hand, so the response body can be read to its end and still be held:
    // one uncompressed gRPC frame of length 0, an empty `HealthCheckRequest`.
    let check = http::Request::builder()
        .method(http::Method::POST)
        .uri("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::new(OneFrame(Some(Bytes::from_static(&[0; 5])))))?;

    let response = balanced.clone().oneshot(check).await?;
    assert_eq!(in_flight(), 1, "headers in, body unread");
    let mut body = response.into_body();
    let mut status = None;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(trailers) = frame?.into_trailers() {
            status = trailers.get("grpc-status").cloned();
        }
    }

    assert_eq!(
        status.as_ref().map(|status| status.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(in_flight(), 0, "the body ended, though still held");
    drop(body);
    assert_eq!(in_flight(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_ends_when_an_unfinished_response_body_is_dropped() -> TestResult {
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

    // A server stream (which never ends here) stays in flight after its headers and first
    // message…
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

/// An endpoint on an address nothing is asked to reach: its channel connects lazily and is
/// never used.
fn bare_endpoint() -> Result<Arc<Endpoint>, tonic::transport::Error> {
    let instance = instance("product-1", ([127, 0, 0, 1], 9).into());
    let options = quick();
    let endpoint = Endpoint::new(
        &instance,
        &options,
        Duration::from_millis(1),
        Instant::now(),
        CancellationToken::new(),
    )?;
    Ok(Arc::new(endpoint))
}

fn unused_channel() -> Channel {
    tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy()
}

#[tokio::test]
async fn a_late_warm_up_failure_does_not_eject_an_endpoint_that_answered() -> TestResult {
    let policy = quick().backoff();
    let endpoint = bare_endpoint()?;
    let now = Instant::now();
    let (_channel, mut guard) = endpoint.start_call(now);
    endpoint.answered(&mut guard, now, Duration::from_secs(10));
    endpoint.concluded(&guard, Ok(()), 7, &policy, 0.0);
    drop(guard);

    let ejected = endpoint.warm_up_failed(now, "refused".into(), &policy, 0.0);

    assert_eq!(ejected, None);
    assert_eq!(endpoint.snapshot().ejected_until, None);
    assert_eq!(endpoint.snapshot().consecutive_failures, 0);

    // Without an answer, a refused warm-up ejects, and counts as the first failed probe.
    let fresh = bare_endpoint()?;
    let ejected = fresh.warm_up_failed(now, "refused".into(), &policy, 0.0);
    assert_eq!(ejected, Some(policy.base));
    Ok(())
}

#[tokio::test]
async fn only_an_answer_on_the_current_connection_clears_the_record() -> TestResult {
    let policy = quick().backoff();
    let endpoint = bare_endpoint()?;
    let now = Instant::now();
    let (_channel, mut old_call) = endpoint.start_call(now);
    let (_channel, failing_call) = endpoint.start_call(now);
    assert_eq!(
        endpoint.failed(failing_call.generation(), now, "reset".into(), &policy, 0.0),
        Some(Duration::ZERO),
        "the first ejection probes at once"
    );
    drop(failing_call);
    let ticket = endpoint
        .claim_probe(now, Duration::from_secs(3))
        .ok_or("no probe claimed")?;
    assert!(ticket.restore(unused_channel()));

    // A call sent on the replaced connection answers late: no proof the new one works.
    endpoint.answered(&mut old_call, now, Duration::from_secs(10));
    endpoint.concluded(&old_call, Ok(()), 7, &policy, 0.0);
    drop(old_call);
    assert_eq!(endpoint.snapshot().consecutive_failures, 1);
    let (_channel, new_call) = endpoint.start_call(now);
    assert_eq!(
        endpoint.failed(new_call.generation(), now, "reset".into(), &policy, 0.0),
        Some(policy.base),
        "ejected again without a success: the first probe waits"
    );
    Ok(())
}

#[tokio::test]
async fn one_probe_at_a_time_and_a_dead_one_is_replaced() -> TestResult {
    let policy = quick().backoff();
    let stale_after = Duration::from_secs(3);
    let endpoint = bare_endpoint()?;
    let now = Instant::now();
    assert!(
        endpoint.claim_probe(now, stale_after).is_none(),
        "not ejected"
    );
    let (_channel, call) = endpoint.start_call(now);
    endpoint.failed(call.generation(), now, "reset".into(), &policy, 0.0);

    let first = endpoint.claim_probe(now, stale_after).ok_or("no probe")?;
    assert!(
        endpoint.claim_probe(now, stale_after).is_none(),
        "one in charge"
    );
    // A task that died dropped its ticket.
    drop(first);
    let second = endpoint.claim_probe(now, stale_after).ok_or("no probe")?;
    // One whose attempt was due long ago and never reported hangs: it is replaced, and its
    // ticket no longer counts.
    let much_later = now + stale_after + Duration::from_secs(1);
    let third = endpoint
        .claim_probe(much_later, stale_after)
        .ok_or("a hung probe was not replaced")?;
    assert_eq!(second.due(), None);
    assert_eq!(second.failed(much_later, "late".into(), &policy, 0.0), None);
    assert!(!second.restore(unused_channel()));
    drop(second);
    assert!(endpoint.probing(), "the dead ticket freed nothing");
    assert_eq!(third.due(), Some(now));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_while_serving_inherits_what_is_left_of_the_served_deadline() -> TestResult {
    use crate::resilience::deadline;
    let server = TestServer::start(Duration::from_millis(300)).await?;
    let (discovery, instances) = feed();
    discovery.send(vec![instance("product-1", server.addr)])?;
    let mut client = HealthClient::new(Balanced::new("product", instances));
    check(&mut client).await?;

    // Serving a call with 100 ms left: the outgoing call, with no timeout of its own, is cut off
    // then, before the server's 300 ms answer.
    let served_until = tokio::time::Instant::now() + Duration::from_millis(100);
    let status = deadline::scope(Some(served_until), client.check(request()))
        .await
        .err()
        .ok_or("the call outlived the deadline it inherited")?;
    assert_eq!(
        status.code(),
        Code::Cancelled,
        "tonic's code for a deadline: {status:?}"
    );

    // A deadline that has passed: the call is not started at all.
    let before = server.calls();
    let status = deadline::scope(Some(tokio::time::Instant::now()), client.check(request()))
        .await
        .err()
        .ok_or("a call past its deadline was made")?;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(server.calls(), before);
    Ok(())
}

#[tokio::test]
async fn failed_answers_in_a_row_eject_an_instance_that_returns_on_probation() -> TestResult {
    let policy = quick().backoff();
    let endpoint = bare_endpoint()?;
    let now = Instant::now();
    let fail = |endpoint: &Arc<Endpoint>| {
        let (_channel, guard) = endpoint.start_call(now);
        endpoint.concluded(&guard, Err("answered UNAVAILABLE".into()), 7, &policy, 0.0)
    };
    for failure in 1..7 {
        assert_eq!(fail(&endpoint), None, "failure {failure} ejects nothing");
    }
    // A good answer in between starts the count over.
    let (_channel, good) = endpoint.start_call(now);
    endpoint.concluded(&good, Ok(()), 7, &policy, 0.0);
    for _ in 1..7 {
        assert_eq!(fail(&endpoint), None);
    }
    assert_eq!(fail(&endpoint), Some(policy.base), "the seventh in a row");
    let view = endpoint.snapshot();
    assert!(
        view.ejected_for_failed_answers && view.ejected_until.is_some(),
        "{view:?}"
    );
    assert!(
        endpoint.candidate(false).ejected && !endpoint.candidate(true).ejected,
        "out of the picker, unless nothing else is left"
    );

    // The back-off over, it returns on its connection, without a new one.
    let ticket = endpoint
        .claim_probe(now, Duration::from_secs(3))
        .ok_or("no readmission claimed")?;
    assert!(ticket.for_answers());
    assert!(ticket.readmit());
    assert_eq!(endpoint.snapshot().ejected_until, None);
    // On probation: the next failure ejects it again, for twice as long.
    assert_eq!(fail(&endpoint), Some(policy.base * 2));
    Ok(())
}

#[tokio::test]
async fn failed_answers_count_only_when_the_option_is_on() -> TestResult {
    let policy = quick().backoff();
    let endpoint = bare_endpoint()?;
    let now = Instant::now();
    for _ in 0..20 {
        let (_channel, guard) = endpoint.start_call(now);
        let ejected = endpoint.concluded(&guard, Err("answered INTERNAL".into()), 0, &policy, 0.0);
        assert_eq!(ejected, None);
    }
    assert_eq!(endpoint.snapshot().ejected_until, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_failures_leaves_rotation_and_returns_after_its_back_off()
-> TestResult {
    let failing = TestServer::start(Duration::ZERO).await?;
    let healthy = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    // A slow first answer can leave the failing instance the costlier of the two for the whole
    // decay time; with the default 1 s force-pick it would then take 7 s to be called 7 times.
    let options = BalanceOptions {
        // Long enough that the 20 calls below finish while it sits out, on a loaded machine too.
        ejection_base: Duration::from_secs(1),
        ejection_max: Duration::from_secs(1),
        force_pick_after: Duration::from_millis(10),
        ..quick()
    };
    let balanced = Balanced::with_options("product", instances, options);
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![
        instance("product-1", failing.addr),
        instance("product-2", healthy.addr),
    ])?;
    call_until(&mut client, "both instances called", || {
        failing.calls() > 0 && healthy.calls() > 0
    })
    .await?;

    failing.fail(true);
    let before = failing.calls();
    let mut failures = 0;
    let deadline = Instant::now() + PATIENCE;
    while !is_ejected(&balanced, "product-1") {
        if Instant::now() > deadline {
            return Err(format!("product-1 not ejected: {:?}", balanced.snapshot()).into());
        }
        if let Err(status) = check(&mut client).await {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            failures += 1;
        }
    }
    assert_eq!(failures, 7, "ejected at the seventh failed answer in a row");
    assert_eq!(failing.calls() - before, 7);
    let view = balanced.snapshot();
    assert!(view[0].ejected_for_failed_answers, "{view:?}");

    // While it sits out, every call goes to the other instance and succeeds.
    let sitting_out = failing.calls();
    for _ in 0..20 {
        check(&mut client).await?;
    }
    assert_eq!(failing.calls(), sitting_out);

    // Recovered, it is called again once its back-off is over.
    failing.fail(false);
    call_until(&mut client, "the recovered instance called again", || {
        failing.calls() > sitting_out
    })
    .await?;
    until_snapshot(&balanced, "the slate wiped by a good answer", |view| {
        view[0].consecutive_failures == 0 && view[0].ejected_until.is_none()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_failing_calls_still_reach_them_and_fail_at_once() -> TestResult {
    let only = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::with_options("product", instances, quick());
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![instance("product-1", only.addr)])?;
    check(&mut client).await?;
    only.fail(true);
    for _ in 0..7 {
        let status = check(&mut client)
            .await
            .err()
            .ok_or("a failing call succeeded")?;
        assert_eq!(status.message(), "failing on purpose");
    }
    assert!(is_ejected(&balanced, "product-1"));
    // Sitting out for its answers, it is still the best there is: the server answers, rather
    // than calls waiting for a probe and failing on their own.
    let status = check(&mut client)
        .await
        .err()
        .ok_or("a failing call succeeded")?;
    assert_eq!(status.message(), "failing on purpose", "{status:?}");
    assert_eq!(only.calls(), 9);
    only.fail(false);
    check(&mut client).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_avoids_the_instances_it_is_told_to_and_says_where_it_went() -> TestResult {
    let first = TestServer::start(Duration::ZERO).await?;
    let second = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let balanced = Balanced::with_options("product", instances, quick());
    let mut client = HealthClient::new(balanced.clone());
    discovery.send(vec![
        instance("product-1", first.addr),
        instance("product-2", second.addr),
    ])?;
    check(&mut client).await?;
    let avoiding = |id: &str| {
        let mut avoid = AvoidInstances::default();
        avoid.add(Arc::from(id));
        let mut request = tonic::Request::new(request());
        request.extensions_mut().insert(avoid);
        request
    };
    let before = first.calls();
    for _ in 0..20 {
        let response = client.check(avoiding("product-1")).await?;
        let attempted = response
            .extensions()
            .get::<Attempted>()
            .ok_or("no Attempted")?;
        assert_eq!(&*attempted.instance, "product-2");
    }
    assert_eq!(first.calls(), before);

    // With nothing else available, the avoided instance is better than no answer.
    discovery.send(vec![instance("product-1", first.addr)])?;
    until_snapshot(&balanced, "one instance left", |view| view.len() == 1).await?;
    let response = client.check(avoiding("product-1")).await?;
    let attempted = response
        .extensions()
        .get::<Attempted>()
        .ok_or("no Attempted")?;
    assert_eq!(&*attempted.instance, "product-1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_says_whether_it_can_have_reached_the_server() -> TestResult {
    let mut server = TestServer::start(Duration::ZERO).await?;
    let (discovery, instances) = feed();
    let options = BalanceOptions {
        connect_eagerly: false,
        ..quick()
    };
    let mut balanced = Balanced::with_options("product", instances, options);

    // No instance at all: nothing was sent.
    discovery.send(Vec::new())?;
    let error = attempt(&mut balanced)
        .await
        .err()
        .ok_or("a call succeeded")?;
    let error = error
        .downcast_ref::<AttemptError>()
        .ok_or("not an AttemptError")?;
    assert_eq!((error.reach(), error.instance()), (Reach::NotSent, None));

    // A refused connection: nothing was sent either, and the instance is named.
    server.kill().await?;
    discovery.send(vec![instance("product-1", server.addr)])?;
    until_snapshot(&balanced, "one instance", |view| view.len() == 1).await?;
    let error = attempt(&mut balanced)
        .await
        .err()
        .ok_or("a call succeeded")?;
    let error = error
        .downcast_ref::<AttemptError>()
        .ok_or("not an AttemptError")?;
    assert_eq!(error.reach(), Reach::NotSent, "{error}");
    assert_eq!(error.instance().map(|id| &**id), Some("product-1"));

    // A connection lost while the call is on the server: it may have been served.
    let (gate, held) = watch::channel(false);
    let mut slow = TestServer::held(held).await?;
    discovery.send(vec![instance("product-2", slow.addr)])?;
    until_snapshot(&balanced, "only the held instance", |view| {
        view.len() == 1 && view[0].id == "product-2"
    })
    .await?;
    let in_flight = tokio::spawn({
        let mut balanced = balanced.clone();
        async move { attempt(&mut balanced).await.err() }
    });
    eventually("the call reached the server", || slow.calls() == 1).await?;
    slow.kill().await?;
    drop(gate);
    let error = in_flight.await?.ok_or("the call succeeded")?;
    let error = error
        .downcast_ref::<AttemptError>()
        .ok_or("not an AttemptError")?;
    assert_eq!(error.reach(), Reach::MaybeSent, "{error}");
    Ok(())
}

/// One health check sent straight through the balancer, so its error is seen before tonic's
/// client turns it into a `Status`.
async fn attempt(balanced: &mut Balanced) -> Result<http::Response<Body>, BoxError> {
    let request = http::Request::builder()
        .method("POST")
        .uri("http://product/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::new(http_body_util::Full::new(Bytes::from_static(
            // An empty HealthCheckRequest: an uncompressed frame of length zero.
            &[0, 0, 0, 0, 0],
        ))))?;
    balanced.ready().await?.call(request).await
}
