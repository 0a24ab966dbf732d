//! `DeregisterCriticalServiceAfter`: an instance critical for longer is removed, at the moment it
//! is due (paused clock), and with a real failing probe (real time).

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{PATIENCE, StatusServer, TestRegistry, TestResult};

#[tokio::test(start_paused = true)]
async fn an_instance_critical_for_too_long_is_removed() -> TestResult {
    let registry = TestRegistry::open().await?;
    let registered = Instant::now();
    registry
        .register(&json!({
            "ID": "doomed",
            "Name": "web",
            "Check": {"TTL": "1h", "DeregisterCriticalServiceAfter": "30s"}
        }))
        .await?;
    registry
        .register(&json!({
            "ID": "healthy",
            "Name": "web",
            "Check": {"CheckID": "healthy-ttl", "TTL": "1h", "Status": "passing", "DeregisterCriticalServiceAfter": "1s"}
        }))
        .await?;
    let mut index = registry.get("/v1/health/service/web").await?.index()?;
    loop {
        let reply = registry
            .get(&format!("/v1/health/service/web?index={index}&wait=5m"))
            .await?;
        index = reply.index()?;
        let ids: Vec<String> = reply
            .json()?
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|entry| entry["Service"]["ID"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if ids == ["healthy"] {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(300),
            "not removed: {ids:?}"
        );
    }
    let waited = registered.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
    let services = registry.get("/v1/agent/services").await?.json()?;
    assert!(services.get("doomed").is_none());

    // The passing one stays until it has been critical for its own second.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        registry
            .get("/v1/agent/services")
            .await?
            .json()?
            .get("healthy")
            .is_some()
    );
    registry.put("/v1/agent/check/fail/healthy-ttl", "").await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(registry.get("/v1/agent/services").await?.json()?, json!({}));
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_real_failing_probe_gets_its_instance_removed() -> TestResult {
    // A port that was just free: nothing listens there.
    let server = StatusServer::start(200).await?;
    let closed = server.addr;
    server.stop().await;
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "ID": "gone",
            "Name": "ghost",
            "Check": {
                "HTTP": format!("http://{closed}/health"),
                "Interval": "100ms",
                "Timeout": "500ms",
                "DeregisterCriticalServiceAfter": "300ms"
            }
        }))
        .await?;
    let deadline = Instant::now() + PATIENCE;
    let mut index = 0;
    loop {
        let reply = registry
            .get(&format!("/v1/catalog/services?index={index}&wait=2s"))
            .await?;
        index = reply.index()?;
        if reply.json()? == json!({}) {
            break;
        }
        assert!(Instant::now() < deadline, "not removed within {PATIENCE:?}");
    }
    registry.registry.shutdown().await;
    Ok(())
}
