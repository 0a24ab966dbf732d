//! A fleet of `flotilla serve` processes for the multi-process tests: a registry, product
//! instances on one PostgreSQL database, a gateway finding them through the registry, and a
//! steady load through the gateway.
//!
//! Which instance served a request is read from each instance's debug log of handled calls.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use platform::discovery::{Instance, InstanceStream};
use test_support::process::Flotilla;

use crate::{binary, http_client};

const ANY_PORT: &str = "127.0.0.1:0";
const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(500);
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// Patience for a change to show in the registry.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);
/// Concurrent clients of the steady load.
const CLIENTS: usize = 4;

/// One request of the load: when it ended and whether it succeeded.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) at: SystemTime,
    pub(crate) status: Result<u16, String>,
}

/// A steady load of `GET /v1/products/{id}` until stopped.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    pub(crate) fn start(gateway: SocketAddr, id: &str) -> Self {
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

    pub(crate) async fn finish(self) -> Result<Vec<Outcome>, tokio::task::JoinError> {
        self.stop.store(true, Ordering::SeqCst);
        let mut outcomes = Vec::new();
        for client in self.clients {
            outcomes.extend(client.await?);
        }
        Ok(outcomes)
    }
}

pub(crate) fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|outcome| outcome.status != Ok(200))
        .collect()
}

/// When an instance handled `GetProduct` calls (answered or failed), from its debug log.
pub(crate) fn handled_calls(instance: &Flotilla) -> Vec<SystemTime> {
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
pub(crate) async fn until(
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

pub(crate) fn has(instances: &[Instance], addr: SocketAddr) -> bool {
    instances.iter().any(|instance| instance.addr == addr)
}

/// A registry (`flotilla serve registry`) on a port of its own.
pub(crate) async fn registry(dir: &Path) -> Flotilla {
    Flotilla::serve(
        binary(),
        "registry",
        dir,
        &[
            ("FLOTILLA_REGISTRY_ADDR", ANY_PORT),
            ("FLOTILLA_REGISTRY_ADMIN_ADDR", ANY_PORT),
        ],
    )
    .await
}

/// A product instance registering with `registry`, checked every 500 ms, logging every call it
/// handles; `extra` is added to its environment (faults, say).
pub(crate) async fn product(
    dir: &Path,
    database_url: &str,
    registry: SocketAddr,
    seed: bool,
    extra: &[(&str, &str)],
) -> Flotilla {
    let consul = registry.to_string();
    let interval = humantime::format_duration(CHECK_INTERVAL).to_string();
    let timeout = humantime::format_duration(CHECK_TIMEOUT).to_string();
    let mut env = vec![
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
    ];
    env.extend_from_slice(extra);
    Flotilla::serve(binary(), "product", dir, &env).await
}

/// A gateway finding the services through `registry`; `extra` is added to its environment.
pub(crate) async fn gateway(dir: &Path, registry: SocketAddr, extra: &[(&str, &str)]) -> Flotilla {
    let consul = registry.to_string();
    let mut env = vec![
        ("JWT_SECRET", SECRET),
        ("CONSUL_HTTP_ADDR", consul.as_str()),
        ("FLOTILLA_GATEWAY_HTTP_ADDR", ANY_PORT),
        ("FLOTILLA_GATEWAY_ADMIN_ADDR", ANY_PORT),
    ];
    env.extend_from_slice(extra);
    Flotilla::serve(binary(), "gateway", dir, &env).await
}

/// The id of the first product the gateway lists (the demo seed's).
pub(crate) async fn first_product_id(
    gateway: SocketAddr,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let page: serde_json::Value = http_client()
        .get(format!("http://{gateway}/v1/products?page_size=1"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(page["products"][0]["id"]
        .as_str()
        .ok_or("no demo product")?
        .to_owned())
}
