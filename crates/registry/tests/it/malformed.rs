//! Malformed registrations answer 400 with Consul's plain-text reason, never a panic, and change
//! nothing.

use axum::http::StatusCode;
use serde_json::json;

use super::{TestRegistry, TestResult};

const INTERVAL_MESSAGE: &str =
    "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks";

#[tokio::test]
async fn malformed_registrations_get_consuls_400s() -> TestResult {
    let registry = TestRegistry::open().await?;
    let long_value = format!(
        "Invalid Service Meta: Couldn't load metadata pair ('k', '{}'): Value is too long (limit: 512 characters)",
        "x".repeat(513)
    );
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "Request decode failed: EOF"),
        ("[1]".into(), "Request decode failed: json: cannot unmarshal array into Go value of type structs.ServiceDefinition"),
        (json!({}).to_string(), "Missing service name"),
        (json!({"Name": ""}).to_string(), "Missing service name"),
        (json!({"Name": "web", "Address": "0.0.0.0"}).to_string(), "Invalid service address"),
        (json!({"Name": "web", "Address": "::"}).to_string(), "Invalid service address"),
        (
            json!({"Name": "web", "Meta": {"bad key": "v"}}).to_string(),
            "Invalid Service Meta: Couldn't load metadata pair ('bad key', 'v'): Key contains invalid characters",
        ),
        (
            json!({"Name": "web", "Meta": {"k": "x".repeat(513)}}).to_string(),
            &long_value,
        ),
        (
            json!({"Name": "web", "Weights": {"Passing": 0, "Warning": 1}}).to_string(),
            "Invalid Weights: Passing must be greater than 0",
        ),
        (
            json!({"Name": "web", "Check": {"Interval": "10s"}}).to_string(),
            "Invalid check: TTL must be > 0 for TTL checks",
        ),
        (
            json!({"Name": "web", "Check": {"Name": "nothing to run"}}).to_string(),
            "Invalid check: TTL must be > 0 for TTL checks",
        ),
        (
            json!({"Name": "web", "Check": {"HTTP": "http://127.0.0.1:9/"}}).to_string(),
            INTERVAL_MESSAGE,
        ),
        (
            json!({"Name": "web", "Checks": [{"TTL": "5s"}, {"GRPC": "127.0.0.1:9"}]}).to_string(),
            INTERVAL_MESSAGE,
        ),
        (
            json!({"Name": "web", "Check": {"GRPC": "127.0.0.1:9", "Interval": "1s", "TTL": "1s"}}).to_string(),
            "Invalid check: Interval and TTL cannot both be specified",
        ),
        (
            json!({"Name": "web", "Check": {"GRPC": "127.0.0.1:9", "Interval": "10"}}).to_string(),
            "Request decode failed: time: missing unit in duration \"10\"",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "10x"}}).to_string(),
            "Request decode failed: time: unknown unit \"x\" in duration \"10x\"",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "soon"}}).to_string(),
            "Request decode failed: time: invalid duration \"soon\"",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "5s", "DeregisterCriticalServiceAfter": "1 minute"}}).to_string(),
            "Request decode failed: time: unknown unit \" minute\" in duration \"1 minute\"",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "5s", "Status": "healthy"}}).to_string(),
            "Status for checks must 'passing', 'warning', 'critical'",
        ),
        (
            json!({"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}).to_string(),
            "Invalid check: the embedded registry does not run Args checks (only GRPC, HTTP, TCP and TTL)",
        ),
        (
            json!({"Name": "web", "Port": "80"}).to_string(),
            "Request decode failed: json: cannot unmarshal string into Go struct field ServiceDefinition.Port of type int",
        ),
        (
            json!({"Name": "web", "Tags": "one"}).to_string(),
            "Request decode failed: json: cannot unmarshal string into Go struct field ServiceDefinition.Tags of type []string",
        ),
        (
            json!({"Name": "web", "Checks": [{"CheckID": "c", "TTL": "5s"}, {"CheckID": "c", "TTL": "5s"}]}).to_string(),
            "Invalid check: CheckID \"c\" is used twice in one registration",
        ),
    ];
    for (body, message) in cases {
        let reply = registry
            .put("/v1/agent/service/register", body.clone())
            .await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.text(), message, "{body}");
        assert_eq!(
            reply.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/plain; charset=utf-8"[..])
        );
    }
    let starts_with = [
        ("{\"Name\":", "Request decode failed: "),
        ("not json", "Request decode failed: "),
    ];
    for (body, prefix) in starts_with {
        let reply = registry.put("/v1/agent/service/register", body).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(reply.text().starts_with(prefix), "{body}: {}", reply.text());
    }
    assert_eq!(registry.get("/v1/agent/services").await?.json()?, json!({}));
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_check_id_of_another_instance_is_refused() -> TestResult {
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({"ID": "a", "Name": "web", "Check": {"CheckID": "shared", "TTL": "5s"}}))
        .await?;
    let reply = registry
        .put(
            "/v1/agent/service/register",
            json!({"ID": "b", "Name": "web", "Check": {"CheckID": "shared", "TTL": "5s"}})
                .to_string(),
        )
        .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.text(),
        "Invalid check: CheckID \"shared\" already belongs to service \"a\""
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() -> TestResult {
    let registry = TestRegistry::open().await?;
    let huge = format!(
        "{{\"Name\":\"web\",\"Notes\":\"{}\"}}",
        "x".repeat(registry::api::BODY_LIMIT)
    );
    let reply = registry.put("/v1/agent/service/register", huge).await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn garbage_never_panics() -> TestResult {
    let registry = TestRegistry::open().await?;
    let bodies: [&[u8]; 8] = [
        b"\xff\xfe",
        b"null",
        b"{\"Name\":\"w\",\"Check\":[]}",
        b"{\"Name\":\"w\",\"Checks\":{}}",
        b"{\"Name\":\"w\",\"Check\":{\"TTL\":true}}",
        b"{\"Name\":\"w\",\"Check\":{\"TTL\":-5}}",
        b"{\"Name\":\"w\",\"Port\":-1}",
        b"{\"Name\":\"w\",\"Weights\":[]}",
    ];
    for body in bodies {
        let reply = registry
            .put("/v1/agent/service/register", body.to_vec())
            .await?;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{}: {}",
            String::from_utf8_lossy(body),
            reply.text()
        );
    }
    registry.registry.shutdown().await;
    Ok(())
}
