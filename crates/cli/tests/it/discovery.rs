//! Discovery end to end, every component its own `flotilla serve` process: a registry, two product
//! instances on one PostgreSQL database, and a gateway that finds them through the registry.
//!
//! Under steady load through the gateway: requests spread over both instances; SIGTERM of one
//! fails no request (it deregisters, serves on for its delay, then drains); a new instance gets
//! traffic within a second of passing its check; SIGKILL of one stops costing requests within its
//! check interval plus timeout (the balancer ejects it at its first failed connection; the registry
//! drops it when its check fails).
//!
//! Which instance served a request is read from each instance's debug log of handled calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use platform::discovery::consul::{ConsulConfig, ConsulRegistry};
use platform::discovery::{Instance, InstanceStream, Registry};
use test_support::postgres::TestDatabase;
use test_support::process::Flotilla;

use crate::{TestResult, binary, http_client};

const ANY_PORT: &str = "127.0.0.1:0";
const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// Patience for a change to show in the registry.
const PATIENCE: Duration = Duration::from_secs(20);
/// Concurrent clients of the steady load.
const CLIENTS: usize = 4;

/// One request of the load: when it ended and whether it succeeded.
#[derive(Debug, Clone)]
struct Outcome {
    at: SystemTime,
    status: Result<u16, String>,
}

/// A steady load of `GET /v1/products/{id}` until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(gateway: SocketAddr, id: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|_| {
                let (stop, url) = (
                    Arc::clone(&stop),
                    format!("http://{gateway}/v1/products/{id}"),
                );
                tokio::spawn(async move {
                    let http = http_client();
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let status = match http.get(&url).send().await {
                            Ok(response) => Ok(response.status().as_u16()),
                            Err(error) => Err(error.to_string()),
                        };
                        outcomes.push(Outcome {
                            at: SystemTime::now(),
                            status,
                        });
                    }
                    outcomes
                })
            })
            .collect();
        Self { stop, clients }
    }

    async fn finish(self) -> Result<Vec<Outcome>, tokio::task::JoinError> {
        self.stop.store(true, Ordering::SeqCst);
        let mut outcomes = Vec::new();
        for client in self.clients {
            outcomes.extend(client.await?);
        }
        Ok(outcomes)
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|outcome| outcome.status != Ok(200))
        .collect()
}

/// When an instance handled `GetProduct` calls, from its debug log.
fn handled_calls(instance: &Flotilla) -> Vec<SystemTime> {
    instance
        .log()
        .lines()
        .filter(|line| {
            line.contains("finished processing request")
                && line.contains("ProductService/GetProduct")
        })
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|line| humantime::parse_rfc3339(line["timestamp"].as_str()?).ok())
        .collect()
}

/// Waits until the watched set satisfies `wanted`; returns it and when it was seen.
async fn until(
    watch: &mut InstanceStream,
    wanted: impl Fn(&[Instance]) -> bool,
) -> Result<(Vec<Instance>, SystemTime), Box<dyn std::error::Error + Send + Sync>> {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(instances) = watch.next().await {
            if wanted(&instances) {
                return Some((instances, SystemTime::now()));
            }
        }
        None
    })
    .await?;
    Ok(found.ok_or("the watch ended")?)
}

fn has(instances: &[Instance], addr: SocketAddr) -> bool {
    instances.iter().any(|instance| instance.addr == addr)
}

async fn product(
    dir: &std::path::Path,
    database_url: &str,
    registry: SocketAddr,
    seed: bool,
) -> Flotilla {
    let consul = registry.to_string();
    let interval = humantime::format_duration(CHECK_INTERVAL).to_string();
    let timeout = humantime::format_duration(CHECK_TIMEOUT).to_string();
    Flotilla::serve(
        binary(),
        "product",
        dir,
        &[
            ("DATABASE_URL", database_url),
            ("JWT_SECRET", SECRET),
            ("FLOTILLA_PRODUCT_GRPC_ADDR", ANY_PORT),
            ("FLOTILLA_PRODUCT_ADMIN_ADDR", ANY_PORT),
            (
                "FLOTILLA_PRODUCT_SEED_DEMO",
                if seed { "true" } else { "false" },
            ),
            ("CONSUL_HTTP_ADDR", consul.as_str()),
            ("FLOTILLA_CHECK_INTERVAL", interval.as_str()),
            ("FLOTILLA_CHECK_TIMEOUT", timeout.as_str()),
            ("FLOTILLA_DEREGISTER_DELAY", "1s"),
            ("RUST_LOG", "info,tower_http=debug"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_join_and_leave_the_gateways_rotation_without_failed_requests() -> TestResult {
    let Some(database) = TestDatabase::create().await else {
        return Ok(());
    };
    let dirs: Vec<tempfile::TempDir> = (0..5)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let registry = Flotilla::serve(
        binary(),
        "registry",
        dirs[0].path(),
        &[
            ("FLOTILLA_REGISTRY_ADDR", ANY_PORT),
            ("FLOTILLA_REGISTRY_ADMIN_ADDR", ANY_PORT),
        ],
    )
    .await;
    let registry_addr = registry.addr("registry", "http");
    let consul = ConsulRegistry::new(ConsulConfig {
        address: format!("http://{registry_addr}"),
        token: None,
    })?;
    let mut watch = consul.watch("product");

    let first = product(dirs[1].path(), database.url(), registry_addr, true).await;
    let second = product(dirs[2].path(), database.url(), registry_addr, false).await;
    let (first_addr, second_addr) = (
        first.addr("product", "grpc"),
        second.addr("product", "grpc"),
    );
    until(&mut watch, |set| {
        has(set, first_addr) && has(set, second_addr)
    })
    .await?;

    let consul_addr = registry_addr.to_string();
    let gateway = Flotilla::serve(
        binary(),
        "gateway",
        dirs[3].path(),
        &[
            ("JWT_SECRET", SECRET),
            ("CONSUL_HTTP_ADDR", consul_addr.as_str()),
            ("FLOTILLA_GATEWAY_HTTP_ADDR", ANY_PORT),
            ("FLOTILLA_GATEWAY_ADMIN_ADDR", ANY_PORT),
        ],
    )
    .await;
    let gateway_addr = gateway.addr("gateway", "http");
    let page: serde_json::Value = http_client()
        .get(format!("http://{gateway_addr}/v1/products?page_size=1"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = page["products"][0]["id"]
        .as_str()
        .ok_or("no demo product")?
        .to_owned();

    // Spread: both instances serve a steady load.
    let load = Load::start(gateway_addr, &id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await?;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let (on_first, on_second) = (handled_calls(&first).len(), handled_calls(&second).len());
    let total = on_first + on_second;
    assert!(
        total >= outcomes.len(),
        "{total} calls for {} requests",
        outcomes.len()
    );
    assert!(
        on_first * 5 >= total && on_second * 5 >= total,
        "each instance serves at least a fifth: {on_first} and {on_second}"
    );

    // SIGTERM under load: deregister, serve on for the delay, drain; no request fails.
    let load = Load::start(gateway_addr, &id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.terminate();
    until(&mut watch, |set| !has(set, first_addr)).await?;
    let first_log_dir = dirs[1].path().to_owned();
    let status = first.wait(PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.finish().await?;
    assert!(status.success(), "{status}");
    assert!(
        failures(&outcomes).is_empty(),
        "SIGTERM cost requests: {:?}\nlog of the stopped instance:\n{}",
        failures(&outcomes),
        std::fs::read_to_string(first_log_dir.join("flotilla.log")).unwrap_or_default()
    );

    // A new instance gets traffic within a second of passing its check.
    let load = Load::start(gateway_addr, &id);
    let third = product(dirs[4].path(), database.url(), registry_addr, false).await;
    let third_addr = third.addr("product", "grpc");
    let (_, passing_seen) = until(&mut watch, |set| has(set, third_addr)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first_call = handled_calls(&third).into_iter().min();
    let joined = first_call
        .and_then(|at| at.duration_since(passing_seen).ok())
        .unwrap_or_default();
    assert!(
        first_call.is_some() && joined < Duration::from_secs(1),
        "first call on the new instance at {first_call:?}, {joined:?} after it was seen passing"
    );

    // SIGKILL under load: no failure later than the check interval plus timeout after the kill.
    let before_kill = handled_calls(&second).len();
    third.kill();
    let killed_at = SystemTime::now();
    until(&mut watch, |set| !has(set, third_addr)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.finish().await?;
    let allowed = killed_at + CHECK_INTERVAL + CHECK_TIMEOUT;
    let late: Vec<_> = failures(&outcomes)
        .into_iter()
        .filter(|outcome| outcome.at > allowed)
        .collect();
    assert!(late.is_empty(), "failures after {allowed:?}: {late:?}");
    assert!(
        handled_calls(&second).len() > before_kill,
        "the remaining instance kept serving"
    );
    gateway.stop().await;
    second.stop().await;
    registry.stop().await;
    Ok(())
}
