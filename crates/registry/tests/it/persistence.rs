//! The data directory: a restart keeps the registered instances (their checks critical until they
//! run again), the node's ID, and an index that only grows; a corrupt file stops the start.

use serde_json::json;

use super::{HealthServer, TestRegistry, TestResult};

#[tokio::test]
async fn a_restart_keeps_live_instances_and_starts_their_checks_critical() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = HealthServer::start().await?;
    let first = TestRegistry::open_in(Some(dir.path())).await?;
    first
        .register(&json!({
            "ID": "p1",
            "Name": "product",
            "Tags": ["grpc"],
            "Port": server.addr.port(),
            "Meta": {"version": "1"},
            "Check": {"GRPC": server.addr.to_string(), "Interval": "200ms", "DeregisterCriticalServiceAfter": "1m"}
        }))
        .await?;
    first
        .register(&json!({"ID": "w1", "Name": "worker", "Check": {"CheckID": "w1-ttl", "TTL": "1h", "Status": "passing"}}))
        .await?;
    first.register(&json!({"ID": "old", "Name": "old"})).await?;
    first.put("/v1/agent/service/deregister/old", "").await?;
    first.wait_for_status("product", &["passing"]).await?;
    let before = first.get("/v1/health/service/worker").await?;
    let node_id = before.json()?[0]["Node"]["ID"].clone();
    let last_index = first.registry.index();
    first.registry.shutdown().await;
    assert!(dir.path().join(registry::store::FILE_NAME).exists());
    assert!(!dir.path().join("registry.json.tmp").exists());

    let second = TestRegistry::open_in(Some(dir.path())).await?;
    let services = second.get("/v1/agent/services").await?.json()?;
    let ids: Vec<&String> = services
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(ids, ["p1", "w1"], "the deregistered one stays gone");
    assert_eq!(services["p1"]["Tags"], json!(["grpc"]));
    assert_eq!(services["p1"]["Meta"], json!({"version": "1"}));

    let worker = second.get("/v1/health/service/worker").await?;
    assert!(
        worker.index()? > last_index,
        "the index never goes backwards"
    );
    let body = worker.json()?;
    assert_eq!(body[0]["Node"]["ID"], node_id, "the node keeps its ID");
    assert_eq!(
        body[0]["Checks"][1]["Status"], "critical",
        "restored checks start critical"
    );
    assert_eq!(body[0]["Checks"][1]["CheckID"], "w1-ttl");

    // The restored gRPC check runs again and passes.
    second.wait_for_status("product", &["passing"]).await?;
    second.registry.shutdown().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_corrupt_data_file_stops_the_start_with_its_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(registry::store::FILE_NAME), "{\"version\":")?;
    let error = TestRegistry::open_in(Some(dir.path()))
        .await
        .err()
        .ok_or("a corrupt file was accepted")?;
    assert!(
        error.to_string().contains(registry::store::FILE_NAME),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn every_change_is_on_disk_when_the_api_answers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let registry = TestRegistry::open_in(Some(dir.path())).await?;
    registry.register(&json!({"ID": "a1", "Name": "a"})).await?;
    let stored = registry::store::load(dir.path())?.ok_or("no file")?;
    assert_eq!(stored.services.len(), 1);
    assert_eq!(stored.services[0].id, "a1");
    registry.put("/v1/agent/service/deregister/a1", "").await?;
    let stored = registry::store::load(dir.path())?.ok_or("no file")?;
    assert!(stored.services.is_empty());
    registry.registry.shutdown().await;
    Ok(())
}
