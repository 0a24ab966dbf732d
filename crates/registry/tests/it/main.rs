//! The registry's integration tests, one binary: the router driven without a socket over a real
//! [`Registry`], real gRPC and HTTP servers on `127.0.0.1:0` for the checks, and the spawned
//! component driven by Flotilla's own Consul client.
//!
//! Time: tests of blocking queries, TTLs and reaping run on tokio's paused clock, so waiting five
//! minutes costs nothing and nothing depends on the machine's speed. Tests of real probes poll
//! real time, through blocking queries (which return as soon as something changes), with a stated
//! patience ([`PATIENCE`]).

mod backend_contract;
mod blocking;
mod checks;
mod contract;
mod lifecycle;
mod malformed;
mod persistence;
mod reap;
mod register;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use registry::{Registry, RegistryOptions, router};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long a test waits for a real check (gRPC, HTTP) to reach a status: generous, because a
/// loaded CI machine can be slow; a healthy run takes a fraction of a second.
const PATIENCE: Duration = Duration::from_secs(20);

/// A registry and its router, without a socket.
struct TestRegistry {
    registry: Registry,
    app: Router,
}

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Fallible<Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `X-Consul-Index`, which every answer carries.
    fn index(&self) -> Fallible<u64> {
        let value = self
            .headers
            .get("x-consul-index")
            .ok_or("no X-Consul-Index")?
            .to_str()?
            .parse()?;
        Ok(value)
    }
}

impl TestRegistry {
    /// A registry keeping nothing.
    async fn open() -> Fallible<Self> {
        Self::open_in(None).await
    }

    /// A registry keeping its state in `dir`.
    async fn open_in(dir: Option<&Path>) -> Fallible<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], 8500).into();
        let registry = Registry::open(RegistryOptions::new(addr, dir.map(Path::to_owned))).await?;
        Ok(Self {
            app: router(registry.clone()),
            registry,
        })
    }

    async fn call(&self, method: &str, path: &str, body: impl Into<Body>) -> Fallible<Reply> {
        call(self.app.clone(), method, path, body.into()).await
    }

    async fn get(&self, path: &str) -> Fallible<Reply> {
        self.call("GET", path, Body::empty()).await
    }

    async fn put(&self, path: &str, body: impl Into<Body>) -> Fallible<Reply> {
        self.call("PUT", path, body).await
    }

    /// Registers `body`, failing the test unless the registry answers 200.
    async fn register(&self, body: &Value) -> Fallible<Reply> {
        let reply = self
            .put("/v1/agent/service/register", body.to_string())
            .await?;
        if reply.status != StatusCode::OK {
            return Err(format!("register answered {}: {}", reply.status, reply.text()).into());
        }
        Ok(reply)
    }

    /// The statuses of `service`'s instances' own checks (the node's `serfHealth` left out), by
    /// instance.
    async fn statuses(&self, service: &str) -> Fallible<Vec<Vec<String>>> {
        let reply = self.get(&format!("/v1/health/service/{service}")).await?;
        Ok(statuses_of(&reply.json()?))
    }

    /// Waits (real time, through blocking queries) until `service`'s single instance has its
    /// checks in `wanted`; returns the last health body.
    async fn wait_for_status(&self, service: &str, wanted: &[&str]) -> Fallible<Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut index = 0;
        loop {
            let reply = self
                .get(&format!(
                    "/v1/health/service/{service}?index={index}&wait=2s"
                ))
                .await?;
            index = reply.index()?;
            let body = reply.json()?;
            let statuses = statuses_of(&body);
            if statuses.len() == 1 && statuses[0] == wanted {
                return Ok(body);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{service} did not reach {wanted:?} within {PATIENCE:?}; last: {body}"
                )
                .into());
            }
        }
    }
}

/// One request through `app`.
async fn call(app: Router, method: &str, path: &str, body: Body) -> Fallible<Reply> {
    let request = Request::builder().method(method).uri(path).body(body)?;
    let response = app.oneshot(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The instances' own check statuses of a health answer.
fn statuses_of(body: &Value) -> Vec<Vec<String>> {
    body.as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|entry| {
                    entry["Checks"]
                        .as_array()
                        .map(|checks| {
                            checks
                                .iter()
                                .filter(|check| check["CheckID"] != "serfHealth")
                                .map(|check| check["Status"].as_str().unwrap_or("?").to_owned())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A real `grpc.health.v1` server on `127.0.0.1:0`, serving `""` and `flotilla.test`.
struct HealthServer {
    addr: SocketAddr,
    reporter: tonic_health::server::HealthReporter,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    async fn start() -> Fallible<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("flotilla.test", tonic_health::ServingStatus::Serving)
            .await;
        let stop = CancellationToken::new();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
        });
        Ok(Self {
            addr,
            reporter,
            stop,
            task,
        })
    }

    async fn set(&self, service: &str, status: tonic_health::ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A real HTTP server on `127.0.0.1:0` whose `/health` answers the status it is told.
struct StatusServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    async fn start(status: u16) -> Fallible<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(AtomicU16::new(status));
        let answer = shared.clone();
        let app = Router::new().route(
            "/health",
            axum::routing::get(move || {
                let answer = answer.clone();
                async move {
                    let code = StatusCode::from_u16(answer.load(Ordering::SeqCst))
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    (code, format!("status {}", code.as_u16()))
                }
            }),
        );
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(Self {
            addr,
            status: shared,
            stop,
            task,
        })
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
