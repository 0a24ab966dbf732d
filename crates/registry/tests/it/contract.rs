//! Contract tests: the JSON of each answer has every field of Consul's documented sample payload,
//! with the same name and the same JSON type (`tests/it/fixtures/`, each naming its doc page). The
//! registry may add fields; it may not miss or rename one, except those listed with their reason.

use serde_json::{Value, json};

use super::{Fallible, TestRegistry, TestResult};

/// A fixture's documented example.
fn example(name: &str) -> Fallible<Value> {
    let path = format!("{}/tests/it/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert!(fixture["source"].as_str().is_some_and(|source| {
        source.starts_with("https://developer.hashicorp.com/consul/api-docs/")
    }));
    Ok(fixture["example"].clone())
}

/// Where a documented field may be absent, and why.
struct Rules<'a> {
    /// Paths not compared (`*` is any map key, `[]` any element).
    skip: &'a [&'a str],
    /// Paths whose keys are data (IDs, names, metadata keys): values are compared, keys are not.
    maps: &'a [&'a str],
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `path.key`, or `key` at the root.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Every way `ours` departs from the shape of `documented`. Paths read `[].Service.Meta`,
/// `[].Checks[].Namespace`, `*.Meta` (`[]`: any element, `*`: any map key).
fn differences(documented: &Value, ours: &Value, path: &str, rules: &Rules<'_>) -> Vec<String> {
    if rules.skip.contains(&path) || documented.is_null() {
        return Vec::new();
    }
    if kind(documented) != kind(ours) {
        return vec![format!(
            "{path}: documented {} but answered {} ({ours})",
            kind(documented),
            kind(ours)
        )];
    }
    match (documented, ours) {
        (Value::Object(documented), Value::Object(ours)) if rules.maps.contains(&path) => {
            let Some(sample) = documented.values().next() else {
                return Vec::new();
            };
            let child = join(path, "*");
            ours.values()
                .flat_map(|value| differences(sample, value, &child, rules))
                .collect()
        }
        (Value::Object(documented), Value::Object(ours)) => documented
            .iter()
            .flat_map(|(key, value)| {
                let child = join(path, key);
                if rules.skip.contains(&child.as_str()) {
                    return Vec::new();
                }
                match ours.get(key) {
                    Some(answered) => differences(value, answered, &child, rules),
                    None => vec![format!("{child}: documented but missing")],
                }
            })
            .collect(),
        (Value::Array(documented), Value::Array(ours)) => match documented.first() {
            Some(sample) => {
                let child = format!("{path}[]");
                ours.iter()
                    .flat_map(|value| differences(sample, value, &child, rules))
                    .collect()
            }
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn assert_shape(fixture: &str, documented: &Value, ours: &Value, rules: &Rules<'_>) {
    let found = differences(documented, ours, "", rules);
    assert!(
        found.is_empty(),
        "{fixture}: {found:#?}\nanswered: {ours:#}"
    );
}

/// A registry holding the documented `redis` instance (its script check replaced by a TTL check).
async fn with_redis() -> Fallible<TestRegistry> {
    let registry = TestRegistry::open().await?;
    registry
        .register(&json!({
            "ID": "redis",
            "Name": "redis",
            "Tags": ["primary"],
            "Address": "10.1.10.12",
            "Port": 8000,
            "Meta": {"redis_version": "4.0"},
            "Weights": {"Passing": 10, "Warning": 1},
            "Check": {"TTL": "1m", "Status": "passing"}
        }))
        .await?;
    Ok(registry)
}

#[tokio::test]
async fn health_service_answers_in_consuls_documented_shape() -> TestResult {
    let registry = with_redis().await?;
    let ours = registry.get("/v1/health/service/redis").await?.json()?;
    assert_eq!(ours.as_array().map(Vec::len), Some(1));
    let rules = Rules {
        skip: &[
            // Consul Enterprise only.
            "[].Service.Namespace",
            "[].Checks[].Namespace",
            // Not kept by the embedded registry.
            "[].Service.TaggedAddresses",
        ],
        maps: &["[].Node.TaggedAddresses", "[].Node.Meta", "[].Service.Meta"],
    };
    assert_shape(
        "health_service.json",
        &example("health_service.json")?,
        &ours,
        &rules,
    );
    // The documented values that are the instance's own come back as registered.
    let documented = example("health_service.json")?;
    for field in [
        "ID", "Service", "Tags", "Address", "Meta", "Port", "Weights",
    ] {
        assert_eq!(
            ours[0]["Service"][field], documented[0]["Service"][field],
            "{field}"
        );
    }
    let serf = &ours[0]["Checks"][0];
    assert_eq!(serf["CheckID"], "serfHealth");
    assert_eq!(serf["Name"], "Serf Health Status");
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn agent_services_answers_in_consuls_documented_shape() -> TestResult {
    let registry = with_redis().await?;
    let ours = registry.get("/v1/agent/services").await?.json()?;
    let rules = Rules {
        skip: &["*.Namespace", "*.TaggedAddresses"],
        maps: &["", "*.Meta"],
    };
    assert_shape(
        "agent_services.json",
        &example("agent_services.json")?,
        &ours,
        &rules,
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn agent_checks_answers_in_consuls_documented_shape() -> TestResult {
    let registry = with_redis().await?;
    let ours = registry.get("/v1/agent/checks").await?.json()?;
    assert_eq!(ours["service:redis"]["Name"], "Service 'redis' check");
    let rules = Rules {
        skip: &[],
        maps: &[""],
    };
    assert_shape(
        "agent_checks.json",
        &example("agent_checks.json")?,
        &ours,
        &rules,
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn catalog_services_and_the_leader_answer_in_consuls_documented_shape() -> TestResult {
    let registry = with_redis().await?;
    registry
        .register(&json!({"ID": "pg1", "Name": "postgresql", "Tags": ["secondary"]}))
        .await?;
    registry
        .register(&json!({"ID": "pg2", "Name": "postgresql", "Tags": ["primary"]}))
        .await?;
    let ours = registry.get("/v1/catalog/services").await?.json()?;
    let rules = Rules {
        skip: &[],
        maps: &[""],
    };
    assert_shape(
        "catalog_services.json",
        &example("catalog_services.json")?,
        &ours,
        &rules,
    );
    assert_eq!(
        ours["postgresql"],
        example("catalog_services.json")?["postgresql"]
    );

    let leader = registry.get("/v1/status/leader").await?.json()?;
    assert_shape(
        "status_leader.json",
        &example("status_leader.json")?,
        &leader,
        &rules,
    );
    registry.registry.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_documented_registration_payload_is_understood() -> TestResult {
    let registry = TestRegistry::open().await?;
    let mut payload = example("register_service.json")?;

    // As documented, its check runs a script, which this registry refuses rather than ignores.
    let refused = registry
        .put("/v1/agent/service/register", payload.to_string())
        .await?;
    assert_eq!(refused.status, axum::http::StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.text(),
        "Invalid check: the embedded registry does not run Args checks (only GRPC, HTTP, TCP and TTL)"
    );

    // The same payload with an HTTP check instead: every documented field lands where Consul
    // shows it.
    let check = payload["Check"].as_object_mut().ok_or("no Check")?;
    check.remove("Args");
    check.insert("HTTP".into(), json!("http://127.0.0.1:9/health"));
    registry.register(&payload).await?;
    let services = registry.get("/v1/agent/services").await?.json()?;
    let redis = &services["redis1"];
    assert_eq!(redis["Service"], "redis");
    assert_eq!(redis["Tags"], json!(["primary", "v1"]));
    assert_eq!(redis["Address"], "127.0.0.1");
    assert_eq!(redis["Port"], 8000);
    assert_eq!(redis["Meta"], json!({"redis_version": "4.0"}));
    assert_eq!(redis["EnableTagOverride"], false);
    assert_eq!(redis["Weights"], json!({"Passing": 10, "Warning": 1}));
    let checks = registry.get("/v1/agent/checks").await?.json()?;
    let check = &checks["service:redis1"];
    assert_eq!(check["Interval"], "10s");
    assert_eq!(check["Timeout"], "5s");
    assert_eq!(
        check["Definition"]["DeregisterCriticalServiceAfter"],
        "1h30m0s"
    );
    assert_eq!(check["Definition"]["HTTP"], "http://127.0.0.1:9/health");
    registry.registry.shutdown().await;
    Ok(())
}
