//! The spawned component on real sockets, driven by Flotilla's own Consul client
//! (`platform::discovery::consul`) exactly as services will use it, and its shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use platform::discovery::consul::{ConsulConfig, ConsulRegistry};
use platform::discovery::{HealthCheck, Instance, Registration, Registry as _};
use platform::telemetry::metrics::Metrics;
use registry::RegistryConfig;
use tonic_health::ServingStatus;

use super::{Fallible, HealthServer, PATIENCE, TestResult};

/// The next set of instances the watch yields that satisfies `wanted`, within `PATIENCE`.
async fn next_matching(
    watch: &mut platform::discovery::InstanceStream,
    wanted: impl Fn(&[Instance]) -> bool,
) -> Fallible<Vec<Instance>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let next = tokio::time::timeout_at(deadline, watch.next())
            .await
            .map_err(|_| format!("no matching instances within {PATIENCE:?}"))?
            .ok_or("the watch ended")?;
        if wanted(&next) {
            return Ok(next);
        }
    }
}

#[tokio::test]
async fn flotillas_consul_client_works_against_the_embedded_registry() -> TestResult {
    let dir = tempfile::tempdir()?;
    let running = registry::spawn(
        RegistryConfig::new(([127, 0, 0, 1], 0).into(), Some(dir.path().to_owned())),
        Metrics::new(),
    )
    .await?;
    let address = running.addrs().main;
    let server = HealthServer::start().await?;
    let client = ConsulRegistry::new(ConsulConfig {
        address: format!("http://{address}"),
        token: None,
    })?;
    let registration = Registration {
        id: "product-1".into(),
        name: "product".into(),
        addr: server.addr,
        tags: vec!["grpc".into()],
        meta: BTreeMap::from([("version".to_owned(), "0.1.0".to_owned())]),
        check: HealthCheck {
            grpc: server.addr.to_string(),
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            deregister_critical_after: Duration::from_secs(60),
        },
    };
    client.register(&registration).await?;

    let mut watch = client.watch("product");
    let healthy = next_matching(&mut watch, |instances| !instances.is_empty()).await?;
    assert_eq!(healthy.len(), 1);
    assert_eq!(healthy[0].id, "product-1");
    assert_eq!(healthy[0].addr, server.addr);
    assert_eq!(healthy[0].tags, ["grpc"]);
    assert_eq!(
        healthy[0].meta.get("version").map(String::as_str),
        Some("0.1.0")
    );

    server.set("", ServingStatus::NotServing).await;
    next_matching(&mut watch, <[Instance]>::is_empty).await?;
    server.set("", ServingStatus::Serving).await;
    next_matching(&mut watch, |instances| instances.len() == 1).await?;

    client.deregister("product-1").await?;
    next_matching(&mut watch, <[Instance]>::is_empty).await?;
    // Deregistering what is gone is not an error for the client (the registry answers 404).
    client.deregister("product-1").await?;

    // A watch still waiting in a blocking query does not hold the shutdown: it answers at once.
    let waiting = tokio::spawn(async move { watch.next().await });
    tokio::time::timeout(PATIENCE, running.shutdown())
        .await
        .map_err(|_| "the registry did not stop")??;
    waiting.abort();
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_component_serves_admin_endpoints_and_stops_cleanly() -> TestResult {
    let running = registry::spawn(
        RegistryConfig::new(([127, 0, 0, 1], 0).into(), None),
        Metrics::new(),
    )
    .await?;
    let addrs = running.addrs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("http://{}/ready", addrs.admin))
        .send()
        .await?;
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let leader = http
        .get(format!("http://{}/v1/status/leader", addrs.main))
        .send()
        .await?;
    assert_eq!(
        leader.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert_eq!(leader.json::<String>().await?, addrs.main.to_string());

    tokio::time::timeout(PATIENCE, running.shutdown())
        .await
        .map_err(|_| "the registry did not stop")??;
    Ok(())
}
