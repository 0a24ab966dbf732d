//! Blocking queries on tokio's paused clock: an index of 0 or a stale one answers at once, the
//! current one waits for a change (and only a change to that service) or for `wait`, and the index
//! never goes backwards nor is 0.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use super::{TestRegistry, TestResult};

/// Lets spawned requests run up to their wait, without moving the paused clock.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_or_stale_index_answers_at_once() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry.register(&json!({"ID": "a1", "Name": "a"})).await?;
    let current = registry.get("/v1/health/service/a").await?.index()?;
    for index in [0, 1, current - 1, current + 1] {
        let started = Instant::now();
        let reply = registry
            .get(&format!("/v1/health/service/a?index={index}&wait=5m"))
            .await?;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.index()?, current, "index={index}");
        assert_eq!(started.elapsed(), Duration::ZERO, "index={index} waited");
    }
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_current_index_waits_and_wakes_on_a_change() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry.register(&json!({"ID": "a1", "Name": "a"})).await?;
    let current = registry.get("/v1/health/service/a").await?.index()?;
    let started = Instant::now();
    let request = {
        let app = registry.app.clone();
        let path = format!("/v1/health/service/a?index={current}&wait=5m");
        tokio::spawn(async move {
            super::call(app, "GET", &path, axum::body::Body::empty())
                .await
                .map_err(|error| error.to_string())
        })
    };
    settle().await;
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert!(!request.is_finished(), "answered without a change");

    registry.register(&json!({"ID": "a2", "Name": "a"})).await?;
    let reply = request.await??;
    assert!(reply.index()? > current);
    assert_eq!(reply.json()?.as_array().map(Vec::len), Some(2));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(300),
        "{waited:?}"
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn without_a_change_it_answers_after_wait_with_the_same_index() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry.register(&json!({"ID": "a1", "Name": "a"})).await?;
    let current = registry.get("/v1/health/service/a").await?.index()?;
    let started = Instant::now();
    let reply = registry
        .get(&format!("/v1/health/service/a?index={current}&wait=2s"))
        .await?;
    let waited = started.elapsed();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.index()?, current);
    // Consul's jitter adds up to wait/16.
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_millis(2125),
        "{waited:?}"
    );
    assert_eq!(reply.json()?.as_array().map(Vec::len), Some(1));
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_change_to_another_service_does_not_wake_the_query() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry.register(&json!({"ID": "a1", "Name": "a"})).await?;
    let current = registry.get("/v1/health/service/a").await?.index()?;
    let started = Instant::now();
    let path = format!("/v1/health/service/a?index={current}&wait=10s");
    let (reply, ()) = tokio::join!(registry.get(&path), async {
        settle().await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let other = registry.register(&json!({"ID": "b1", "Name": "b"})).await;
        assert!(other.is_ok());
    });
    let reply = reply?;
    assert_eq!(reply.index()?, current);
    assert!(started.elapsed() >= Duration::from_secs(10));
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_catalog_blocks_on_its_own_index() -> TestResult {
    let registry = TestRegistry::open().await?;
    let first = registry.get("/v1/catalog/services").await?;
    let index = first.index()?;
    assert!(index > 0);
    assert_eq!(
        first
            .headers
            .get("x-consul-knownleader")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let path = format!("/v1/catalog/services?index={index}&wait=1m");
    let (reply, ()) = tokio::join!(registry.get(&path), async {
        settle().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let added = registry
            .register(&json!({"Name": "web", "Tags": ["x"]}))
            .await;
        assert!(added.is_ok());
    });
    let reply = reply?;
    assert!(reply.index()? > index);
    assert_eq!(reply.json()?, json!({"web": ["x"]}));
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_query_for_a_service_that_does_not_exist_yet_wakes_when_it_is_registered() -> TestResult {
    let registry = TestRegistry::open().await?;
    let empty = registry.get("/v1/health/service/late").await?;
    assert_eq!(empty.json()?, json!([]));
    let index = empty.index()?;
    let path = format!("/v1/health/service/late?index={index}&wait=5m");
    let (reply, ()) = tokio::join!(registry.get(&path), async {
        settle().await;
        let added = registry.register(&json!({"Name": "late"})).await;
        assert!(added.is_ok());
    });
    let reply = reply?;
    assert!(reply.index()? > index);
    assert_eq!(reply.json()?.as_array().map(Vec::len), Some(1));
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn draining_answers_waiting_queries_at_once() -> TestResult {
    let registry = TestRegistry::open().await?;
    let index = registry.get("/v1/health/service/a").await?.index()?;
    let path = format!("/v1/health/service/a?index={index}&wait=10m");
    let (reply, ()) = tokio::join!(registry.get(&path), async {
        settle().await;
        registry.registry.start_draining();
    });
    assert_eq!(reply?.index()?, index);
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn malformed_wait_and_index_are_consuls_400s() -> TestResult {
    let registry = TestRegistry::open().await?;
    for (query, message) in [
        ("wait=10", "Invalid wait time"),
        ("wait=later", "Invalid wait time"),
        ("index=-3", "Invalid index"),
        ("index=abc", "Invalid index"),
        ("passing=maybe", "Invalid value for ?passing"),
    ] {
        let reply = registry
            .get(&format!("/v1/health/service/a?{query}"))
            .await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(reply.text(), message, "{query}");
        assert!(reply.index()? > 0, "errors carry X-Consul-Index too");
    }
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn every_answer_carries_an_index_that_never_goes_backwards() -> TestResult {
    let registry = TestRegistry::open().await?;
    let mut last = 0;
    let steps: [(&str, &str, String); 7] = [
        ("GET", "/v1/status/leader", String::new()),
        (
            "PUT",
            "/v1/agent/service/register",
            json!({"ID": "a1", "Name": "a", "Check": {"CheckID": "t", "TTL": "1m"}}).to_string(),
        ),
        ("PUT", "/v1/agent/check/pass/t", String::new()),
        ("GET", "/v1/agent/services", String::new()),
        ("PUT", "/v1/agent/check/fail/t?note=down", String::new()),
        ("PUT", "/v1/agent/service/deregister/a1", String::new()),
        ("PUT", "/v1/agent/service/deregister/a1", String::new()),
    ];
    for (method, path, body) in steps {
        let reply = registry.call(method, path, body).await?;
        let index = reply.index()?;
        assert!(
            index > 0 && index >= last,
            "{method} {path}: {index} after {last}"
        );
        last = index;
    }
    registry.registry.shutdown().await;
    Ok(())
}
