//! The checks the registry runs: gRPC against a real tonic health server, HTTP and TCP against a
//! real axum server (real time, bounded by `PATIENCE`), and TTL reports and expiry (paused clock).

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic_health::ServingStatus;

use super::{HealthServer, StatusServer, TestRegistry, TestResult};

fn own_check(body: &Value) -> Value {
    body[0]["Checks"][1].clone()
}

#[tokio::test]
async fn a_grpc_check_follows_the_servers_health() -> TestResult {
    let server = HealthServer::start().await?;
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "ID": "g1",
            "Name": "grpcsvc",
            "Address": "127.0.0.1",
            "Port": server.addr.port(),
            "Check": {"GRPC": server.addr.to_string(), "Interval": "200ms", "Timeout": "1s"}
        }))
        .await?;
    let passing = registry.wait_for_status("grpcsvc", &["passing"]).await?;
    let check = own_check(&passing);
    assert_eq!(check["Type"], "grpc");
    assert_eq!(
        check["Output"],
        format!("gRPC check {}: success", server.addr)
    );
    assert_eq!(check["Interval"], "200ms");
    assert_eq!(check["Timeout"], "1s");

    // NOT_SERVING turns it critical within interval + timeout (waited for with PATIENCE).
    server.set("", ServingStatus::NotServing).await;
    let critical = registry.wait_for_status("grpcsvc", &["critical"]).await?;
    assert_eq!(
        own_check(&critical)["Output"],
        format!("gRPC {} serving status: NOT_SERVING", server.addr)
    );
    let passing_only = registry
        .get("/v1/health/service/grpcsvc?passing=true")
        .await?;
    assert_eq!(passing_only.json()?, json!([]));

    server.set("", ServingStatus::Serving).await;
    registry.wait_for_status("grpcsvc", &["passing"]).await?;

    // A server that goes away is critical too.
    server.stop().await;
    let gone = registry.wait_for_status("grpcsvc", &["critical"]).await?;
    assert!(
        own_check(&gone)["Output"]
            .as_str()
            .is_some_and(|output| output.starts_with("rpc error: code = Unavailable")),
        "{gone}"
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_grpc_check_can_ask_about_one_service() -> TestResult {
    let server = HealthServer::start().await?;
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "Name": "named",
            "Check": {"GRPC": format!("{}/flotilla.test", server.addr), "Interval": "200ms"}
        }))
        .await?;
    registry.wait_for_status("named", &["passing"]).await?;
    server.set("", ServingStatus::NotServing).await;
    server.set("flotilla.test", ServingStatus::NotServing).await;
    registry.wait_for_status("named", &["critical"]).await?;
    server.set("flotilla.test", ServingStatus::Serving).await;
    registry
        .wait_for_status("named", &["passing"])
        .await
        .map_err(|error| format!("only flotilla.test counts: {error}"))?;
    registry.registry.shutdown().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_http_check_maps_2xx_429_and_the_rest() -> TestResult {
    let server = StatusServer::start(200).await?;
    let registry = TestRegistry::open().await?;
    let url = format!("http://{}/health", server.addr);
    registry
        .register(&json!({
            "Name": "web",
            "Check": {"HTTP": url, "Interval": "100ms", "Timeout": "2s"}
        }))
        .await?;
    let passing = registry.wait_for_status("web", &["passing"]).await?;
    assert_eq!(
        own_check(&passing)["Output"],
        format!("HTTP GET {url}: 200 OK Output: status 200")
    );
    server.set(429);
    let warning = registry.wait_for_status("web", &["warning"]).await?;
    assert_eq!(
        own_check(&warning)["Output"],
        format!("HTTP GET {url}: 429 Too Many Requests Output: status 429")
    );
    server.set(500);
    registry.wait_for_status("web", &["critical"]).await?;
    server.set(204);
    registry.wait_for_status("web", &["passing"]).await?;
    registry.registry.shutdown().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_tcp_check_passes_while_the_port_accepts() -> TestResult {
    let server = StatusServer::start(200).await?;
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "Name": "tcp",
            "Check": {"TCP": server.addr.to_string(), "Interval": "100ms"}
        }))
        .await?;
    registry.wait_for_status("tcp", &["passing"]).await?;
    server.stop().await;
    registry.wait_for_status("tcp", &["critical"]).await?;
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ttl_reports_set_the_status_and_the_ttl_expires() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "ID": "w1",
            "Name": "worker",
            "Check": {"CheckID": "worker-ttl", "TTL": "10s"}
        }))
        .await?;
    assert_eq!(
        registry.statuses("worker").await?,
        [["critical"]],
        "new checks start critical"
    );
    let checks = registry.get("/v1/agent/checks").await?.json()?;
    assert_eq!(checks["worker-ttl"]["Type"], "ttl");
    assert_eq!(
        checks["worker-ttl"]["Interval"], "",
        "Consul leaves it empty"
    );
    assert_eq!(checks["worker-ttl"]["Timeout"], "");
    assert_eq!(checks["worker-ttl"]["Definition"]["TTL"], "10s");

    for (verb, status, note) in [
        ("pass", "passing", "all%20good"),
        ("warn", "warning", "queue%20long"),
        ("fail", "critical", "broken"),
        ("pass", "passing", "back"),
    ] {
        let reply = registry
            .put(
                &format!("/v1/agent/check/{verb}/worker-ttl?note={note}"),
                "",
            )
            .await?;
        assert_eq!(reply.status, StatusCode::OK, "{verb}");
        let checks = registry.get("/v1/agent/checks").await?.json()?;
        assert_eq!(checks["worker-ttl"]["Status"], status, "{verb}");
        assert_eq!(
            checks["worker-ttl"]["Output"],
            note.replace("%20", " "),
            "{verb}"
        );
    }

    // Nothing reports for the TTL: a blocking query wakes when it expires.
    let reported = Instant::now();
    let index = registry.get("/v1/health/service/worker").await?.index()?;
    let reply = registry
        .get(&format!("/v1/health/service/worker?index={index}&wait=5m"))
        .await?;
    assert!(reply.index()? > index);
    assert!(reported.elapsed() >= Duration::from_secs(10));
    let check = own_check(&reply.json()?);
    assert_eq!(check["Status"], "critical");
    assert_eq!(
        check["Output"],
        "TTL expired (last output before timeout follows): back"
    );

    // A report before the TTL runs out keeps it passing.
    registry.put("/v1/agent/check/pass/worker-ttl", "").await?;
    tokio::time::sleep(Duration::from_secs(9)).await;
    registry.put("/v1/agent/check/pass/worker-ttl", "").await?;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(registry.statuses("worker").await?, [["passing"]]);
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_registered_status_is_the_starting_status() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "Name": "warm",
            "Checks": [
                {"TTL": "1m", "Status": "passing"},
                {"TTL": "1m", "Status": "warning"}
            ]
        }))
        .await?;
    assert_eq!(registry.statuses("warm").await?, [["passing", "warning"]]);
    let checks = registry.get("/v1/agent/checks").await?.json()?;
    assert!(checks.get("service:warm:1").is_some() && checks.get("service:warm:2").is_some());
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_target_that_cannot_be_dialled_keeps_the_check_critical_and_says_why() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "Name": "broken",
            "Check": {"CheckID": "broken-grpc", "GRPC": "not a host:port", "Interval": "1s"}
        }))
        .await?;
    // The output changes without a new index (as with Consul), so poll it, within PATIENCE.
    let deadline = Instant::now() + super::PATIENCE;
    loop {
        let checks = registry.get("/v1/agent/checks").await?.json()?;
        let check = &checks["broken-grpc"];
        assert_eq!(check["Status"], "critical");
        if check["Output"]
            .as_str()
            .is_some_and(|output| output.starts_with("invalid gRPC target \"not a host:port\""))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no output: {check}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry.registry.shutdown().await;
    Ok(())
}
