//! Registration round trips: register, list (agent, catalog, health), replace, deregister.

use axum::http::StatusCode;
use serde_json::json;

use super::{TestRegistry, TestResult};

#[tokio::test]
async fn a_registered_instance_is_listed_everywhere_and_removed_by_id() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "ID": "product-1",
            "Name": "product",
            "Tags": ["grpc", "v1"],
            "Address": "10.0.0.7",
            "Port": 50053,
            "Meta": {"version": "0.1.0"},
            "Check": {"TTL": "30s", "Status": "passing"}
        }))
        .await?;

    let services = registry.get("/v1/agent/services").await?.json()?;
    let product = &services["product-1"];
    assert_eq!(product["ID"], "product-1");
    assert_eq!(product["Service"], "product");
    assert_eq!(product["Tags"], json!(["grpc", "v1"]));
    assert_eq!(product["Address"], "10.0.0.7");
    assert_eq!(product["Port"], 50053);
    assert_eq!(product["Meta"], json!({"version": "0.1.0"}));
    assert_eq!(product["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(product["Datacenter"], "dc1");

    let catalog = registry.get("/v1/catalog/services").await?.json()?;
    assert_eq!(catalog, json!({"product": ["grpc", "v1"]}));

    let health = registry
        .get("/v1/health/service/product?passing")
        .await?
        .json()?;
    assert_eq!(health[0]["Service"]["ID"], "product-1");
    assert_eq!(health[0]["Node"]["Address"], "127.0.0.1");
    let check = &health[0]["Checks"][1];
    assert_eq!(check["CheckID"], "service:product-1");
    assert_eq!(check["Name"], "Service 'product' check");
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["ServiceID"], "product-1");
    assert_eq!(check["ServiceName"], "product");
    assert_eq!(check["Type"], "ttl");
    assert_eq!(health[0]["Checks"][0]["CheckID"], "serfHealth");

    let checks = registry.get("/v1/agent/checks").await?.json()?;
    assert_eq!(checks["service:product-1"]["Status"], "passing");

    let gone = registry
        .put("/v1/agent/service/deregister/product-1", "")
        .await?;
    assert_eq!(gone.status, StatusCode::OK);
    assert!(gone.body.is_empty());
    assert_eq!(registry.get("/v1/agent/services").await?.json()?, json!({}));
    assert_eq!(
        registry.get("/v1/catalog/services").await?.json()?,
        json!({})
    );
    assert_eq!(
        registry.get("/v1/health/service/product").await?.json()?,
        json!([])
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_id_defaults_to_the_name_and_re_registering_replaces() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({"Name": "web", "Port": 80, "Tags": ["a"]}))
        .await?;
    registry
        .register(&json!({"Name": "web", "Port": 8080, "Tags": ["b"]}))
        .await?;
    let services = registry.get("/v1/agent/services").await?.json()?;
    assert_eq!(services.as_object().map(|o| o.len()), Some(1));
    assert_eq!(services["web"]["Port"], 8080);
    assert_eq!(services["web"]["Tags"], json!(["b"]));
    let health = registry.get("/v1/health/service/web").await?.json()?;
    assert_eq!(health.as_array().map(Vec::len), Some(1));
    assert_eq!(
        health[0]["Checks"].as_array().map(Vec::len),
        Some(1),
        "no checks: only the node's"
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn instances_of_one_service_are_listed_together_and_tags_merge() -> TestResult {
    let registry = TestRegistry::open().await?;
    for (id, tags) in [("u1", json!(["primary"])), ("u2", json!(["secondary"]))] {
        registry
            .register(&json!({"ID": id, "Name": "user", "Tags": tags}))
            .await?;
    }
    registry.register(&json!({"Name": "auth"})).await?;
    let catalog = registry.get("/v1/catalog/services").await?.json()?;
    assert_eq!(
        catalog,
        json!({"auth": [], "user": ["primary", "secondary"]})
    );
    let health = registry
        .get("/v1/health/service/user?tag=secondary")
        .await?
        .json()?;
    assert_eq!(health.as_array().map(Vec::len), Some(1));
    assert_eq!(health[0]["Service"]["ID"], "u2");
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_ids_answer_404_with_consuls_message() -> TestResult {
    let registry = TestRegistry::open().await?;
    let service = registry
        .put("/v1/agent/service/deregister/nobody", "")
        .await?;
    assert_eq!(service.status, StatusCode::NOT_FOUND);
    assert_eq!(
        service.text(),
        "Unknown service ID \"nobody\". Ensure that the service ID is passed, not the service name."
    );
    for verb in ["pass", "warn", "fail"] {
        let check = registry
            .put(&format!("/v1/agent/check/{verb}/nothing"), "")
            .await?;
        assert_eq!(check.status, StatusCode::NOT_FOUND, "{verb}");
        assert_eq!(
            check.text(),
            "Unknown check ID \"nothing\". Ensure that the check ID is passed, not the check name."
        );
    }
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_ttl_report_on_another_kind_of_check_is_consuls_500() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({"Name": "web", "Check": {"CheckID": "web-http", "HTTP": "http://127.0.0.1:9/", "Interval": "1h"}}))
        .await?;
    let reply = registry.put("/v1/agent/check/pass/web-http", "").await?;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.text(),
        "CheckID \"web-http\" does not have associated TTL"
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_leader_is_this_registry_and_paths_and_methods_answer_as_consul() -> TestResult {
    let registry = TestRegistry::open().await?;
    let leader = registry.get("/v1/status/leader").await?;
    assert_eq!(leader.status, StatusCode::OK);
    assert_eq!(leader.json()?, json!("127.0.0.1:8500"));

    let unknown = registry.get("/v1/kv/anything").await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.text(),
        "Invalid URL path: not a recognized HTTP API endpoint\n"
    );
    let wrong_method = registry.get("/v1/agent/service/register").await?;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.text(), "method GET not allowed");
    assert_eq!(
        wrong_method.headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"PUT"[..])
    );
    let nameless = registry.get("/v1/health/service/").await?;
    assert_eq!(nameless.status, StatusCode::BAD_REQUEST);
    assert_eq!(nameless.text(), "Missing service name");
    let other_dc = registry.get("/v1/catalog/services?dc=dc9").await?;
    assert_eq!(other_dc.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(other_dc.text(), "No path to datacenter");
    registry.registry.shutdown().await;
    Ok(())
}
