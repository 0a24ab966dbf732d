//! Every component of `flotilla up` serves Prometheus metrics on its admin listener: its own
//! (gRPC per method, HTTP per route, its concurrency limit, its database pool), and, on the gateway's only, those of
//! the process (CPU and memory, the calls it makes, breakers, retries, instances), so a Prometheus
//! scraping every listener counts nothing twice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use test_support::prometheus::{Prometheus, value_of};

use crate::{
    ADMIN_EMAIL, ADMIN_PASSWORD, TestResult, assert_samples, http_client, login, sample, scrape,
    scrape_as, up,
};

/// How long Prometheus may take to scrape what a test expects (it scrapes every second).
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_serves_its_own_metrics_and_the_process_counts_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let flotilla = up(dir.path()).await;
    let gateway = flotilla.addr("gateway", "http");
    let http = http_client();
    for _ in 0..3 {
        http.get(format!("http://{gateway}/v1/products?page_size=2"))
            .send()
            .await?
            .error_for_status()?;
    }
    let missing = http
        .get(format!("http://{gateway}/v1/products/no-such-product"))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);

    let product = scrape(flotilla.addr("product", "admin")).await?;
    assert_samples(
        &product,
        &[
            (
                r#"grpc_requests_total{service="product",method="ListProducts",code="OK"}"#,
                3.0,
            ),
            (
                r#"grpc_requests_total{service="product",method="GetProduct",code="NOT_FOUND"}"#,
                1.0,
            ),
            (
                r#"grpc_server_handled_total{grpc_service="flotilla.product.v1.ProductService",grpc_method="ListProducts",grpc_type="unary",grpc_code="OK"}"#,
                3.0,
            ),
            (
                r#"grpc_server_handling_seconds_count{grpc_service="flotilla.product.v1.ProductService",grpc_method="ListProducts",grpc_type="unary"}"#,
                3.0,
            ),
            (r#"flotilla_concurrency_in_flight{service="product"}"#, 0.0),
            (
                r#"flotilla_db_pool_max_connections{service="product"}"#,
                10.0,
            ),
            (
                r#"flotilla_db_pool_connections{service="product",state="in_use"}"#,
                0.0,
            ),
        ],
    );
    assert!(
        sample(
            &product,
            r#"flotilla_db_pool_connections{service="product",state="idle"}"#
        )
        .is_some_and(|idle| idle >= 1.0),
        "the pool keeps the connections the requests used: {product}"
    );
    assert!(
        sample(&product, r#"flotilla_concurrency_limit{service="product"}"#)
            .is_some_and(|limit| limit >= 10.0),
        "{product}"
    );
    assert!(
        !product.contains("process_resident_memory_bytes") && !product.contains("grpc_client_"),
        "the process's metrics appear on the gateway's listener only:\n{product}"
    );

    let gateway_metrics = scrape(flotilla.addr("gateway", "admin")).await?;
    assert_samples(
        &gateway_metrics,
        &[
            (
                r#"http_requests_total{method="GET",route="/v1/products",status="200"}"#,
                3.0,
            ),
            (
                r#"http_requests_total{method="GET",route="/v1/products/{id}",status="404"}"#,
                1.0,
            ),
            (
                r#"grpc_client_handled_total{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary",grpc_code="NotFound"}"#,
                1.0,
            ),
            (r#"flotilla_discovery_instances{upstream="product"}"#, 1.0),
            (
                r#"flotilla_balancer_ejected_instances{upstream="product"}"#,
                0.0,
            ),
            (r#"flotilla_retries_total{upstream="product"}"#, 0.0),
            (
                r#"flotilla_breaker_state{grpc_service="flotilla.product.v1.ProductService",grpc_method="ListProducts",state="closed"}"#,
                1.0,
            ),
        ],
    );
    let rss = sample(&gateway_metrics, "process_resident_memory_bytes").ok_or("no RSS")?;
    assert!(rss > 1_000_000.0, "{rss}");
    assert!(
        !gateway_metrics.contains("no-such-product"),
        "raw paths never become labels"
    );

    // Prometheus asks for OpenMetrics first, and gets it.
    let body = scrape_as(
        flotilla.addr("product", "admin"),
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
        "application/openmetrics-text",
    )
    .await?;
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE grpc_requests counter"), "{body}");

    flotilla.stop().await;
    Ok(())
}

/// Prometheus itself, scraping every admin listener of a running `flotilla up`: the series are
/// there by service, each request counted once, and the latency histogram answers a quantile. With
/// deploy/alerts.yml loaded, every alert evaluates, and every query of the Grafana dashboard parses
/// and shows data; both name only metrics Flotilla serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_listener_and_counts_each_request_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let flotilla = up(dir.path()).await;
    let targets: Vec<_> = ["registry", "user", "auth", "product", "gateway"]
        .into_iter()
        .map(|component| flotilla.addr(component, "admin"))
        .collect();
    let alerts = deploy_file("alerts.yml");
    let Some(prometheus) = Prometheus::start("flotilla", &targets, &[&alerts]).await else {
        return Ok(());
    };
    let gateway = flotilla.addr("gateway", "http");
    let http = http_client();
    const LISTS: usize = 40;
    for _ in 0..LISTS {
        http.get(format!("http://{gateway}/v1/products?page_size=2"))
            .send()
            .await?
            .error_for_status()?;
    }
    login(&http, gateway, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await?
        .error_for_status()?;

    let by_service = "sum by (service) (grpc_requests_total{method!=\"Check\"})";
    let result = prometheus
        .query_until(by_service, PATIENCE, |result| {
            ["product", "auth", "user"].iter().all(|service| {
                result
                    .iter()
                    .any(|series| series["metric"]["service"] == *service)
            })
        })
        .await;
    for service in ["product", "auth", "user"] {
        assert!(
            result
                .iter()
                .any(|series| series["metric"]["service"] == service),
            "no {service} in {result:?}; prometheus log:\n{}",
            prometheus.log()
        );
    }
    // Each request is counted once, though every listener is scraped.
    let lists = "sum(grpc_requests_total{service=\"product\",method=\"ListProducts\"})";
    prometheus.expect_value(lists, LISTS as f64, PATIENCE).await;
    // Each target is scraped on its own schedule: wait for the gateway's too.
    let gets = "sum(http_requests_total{route=\"/v1/products\",status=\"200\"})";
    prometheus.expect_value(gets, LISTS as f64, PATIENCE).await;

    // A rate needs traffic between two scrapes: keep some going while Prometheus is asked.
    let load = {
        let http = http.clone();
        tokio::spawn(async move {
            let deadline = std::time::Instant::now() + PATIENCE;
            while std::time::Instant::now() < deadline {
                let _ = http
                    .get(format!("http://{gateway}/v1/products?page_size=1"))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let p99 = "histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{grpc_service=\"flotilla.product.v1.ProductService\"}[1m])))";
    let quantile = prometheus
        .query_until(p99, PATIENCE, |result| {
            result
                .first()
                .and_then(value_of)
                .is_some_and(|seconds| seconds.is_finite() && seconds > 0.0)
        })
        .await;
    let seconds = quantile.first().and_then(value_of).ok_or("no quantile")?;
    assert!(
        seconds.is_finite() && seconds > 0.0 && seconds <= 10.0,
        "p99 {seconds}"
    );

    // deploy/: what the dashboard and the alerts ask for, Flotilla serves.
    let mut served = BTreeSet::from(["up".to_owned()]);
    for target in &targets {
        served.extend(metric_families(&scrape(*target).await?));
    }
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        deploy_file("grafana/dashboards/flotilla.json"),
    )?)?;
    let panels = dashboard_queries(&dashboard);
    assert!(panels.len() >= 10, "{panels:?}");
    for (title, query) in &panels {
        let unknown: Vec<_> = metric_names(query).difference(&served).cloned().collect();
        assert!(
            unknown.is_empty(),
            "panel {title:?} reads {unknown:?}, which Flotilla does not serve"
        );
        // Under load, every panel has something to show (gauges at 0 included).
        let result = prometheus
            .query_until(query, PATIENCE, |result| !result.is_empty())
            .await;
        assert!(!result.is_empty(), "panel {title:?} shows nothing: {query}");
    }
    load.abort();
    let rules = prometheus
        .rules_until(PATIENCE, |rules| {
            rules.iter().all(|rule| rule["health"] == "ok")
        })
        .await;
    assert!(rules.len() >= 5, "{rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        let query = rule["query"].as_str().unwrap_or_default();
        let unknown: Vec<_> = metric_names(query).difference(&served).cloned().collect();
        assert!(
            unknown.is_empty(),
            "alert {} reads {unknown:?}, which Flotilla does not serve",
            rule["name"]
        );
    }

    drop(prometheus);
    flotilla.stop().await;
    Ok(())
}

/// A file of the repository's `deploy/` directory.
fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name)
}

/// Every PromQL query of a Grafana dashboard, with the panel's title, its variables given values
/// (`$service` all, `$__rate_interval` a minute); the query of a `label_values(metric, label)`
/// variable becomes `metric`.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(query) = target["expr"].as_str() {
                let query = query
                    .replace("$__rate_interval", "1m")
                    .replace("$service", ".*");
                queries.push((
                    panel["title"].as_str().unwrap_or_default().to_owned(),
                    query,
                ));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(metric) = variable["definition"]
            .as_str()
            .and_then(|definition| definition.strip_prefix("label_values("))
            .and_then(|rest| rest.split(',').next())
        {
            let title = format!("variable {}", variable["name"]);
            queries.push((title, metric.trim().to_owned()));
        }
    }
    queries
}

/// The metric names a scrape declares, with the series names Prometheus makes of them (`_total`
/// of a counter; `_bucket`, `_sum` and `_count` of a histogram), and those of its samples: a family
/// with no series yet is declared all the same.
fn metric_families(scraped: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scraped.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let mut words = declaration.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" if !name.ends_with("_total") => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        } else if !line.starts_with('#')
            && let Some(name) = line
                .split(['{', ' '])
                .next()
                .filter(|name| !name.is_empty())
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// PromQL's aggregation operators and keywords: identifiers that are not metric names even when
/// no parenthesis follows them.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// The keywords a list of label names follows (`by (le)`, `on (instance)`).
const GROUPINGS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers
/// (`{…}`), ranges (`[…]`) and grouping lists (`by (…)`), that are neither a function (followed
/// by a parenthesis) nor one of [`PROMQL_WORDS`] or [`GROUPINGS`].
fn metric_names(query: &str) -> BTreeSet<String> {
    let chars: Vec<char> = query.chars().collect();
    let mut names = BTreeSet::new();
    let mut index = 0;
    let skip_to = |from: usize, close: char| {
        let mut at = from;
        let mut quote = None;
        while at < chars.len() {
            match (quote, chars[at]) {
                (Some(_), '\\') => at += 1,
                (Some(open), c) if c == open => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(chars[at]),
                (None, c) if c == close => return at + 1,
                _ => {}
            }
            at += 1;
        }
        at
    };
    while index < chars.len() {
        let c = chars[index];
        if c == '{' {
            index = skip_to(index + 1, '}');
        } else if c == '[' {
            index = skip_to(index + 1, ']');
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = index;
            while index < chars.len()
                && (chars[index].is_ascii_alphanumeric()
                    || chars[index] == '_'
                    || chars[index] == ':')
            {
                index += 1;
            }
            let word: String = chars[start..index].iter().collect();
            let mut next = index;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let followed_by_list = chars.get(next) == Some(&'(');
            if GROUPINGS.contains(&word.as_str()) {
                if followed_by_list {
                    index = skip_to(next + 1, ')');
                }
            } else if !followed_by_list && !PROMQL_WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (`0.99`, `1e3`, `5m`): its letters are not a name.
            while index < chars.len()
                && (chars[index].is_ascii_alphanumeric() || chars[index] == '.')
            {
                index += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            index += 1;
            while index < chars.len() && chars[index] != c {
                index += if chars[index] == '\\' { 2 } else { 1 };
            }
            index += 1;
        } else {
            index += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_the_selectors_only() {
    let query = r#"histogram_quantile(0.99, sum by (grpc_service, le) (rate(a_bucket{x=~"b{c}"}[1m])))
        / on (le) group_left (z) max without (q) (b_total offset 5m) > bool 0.5 and up"#;
    let expected: BTreeSet<String> = ["a_bucket", "b_total", "up"].map(String::from).into();
    assert_eq!(metric_names(query), expected);
    let families =
        metric_families("# TYPE grpc_requests counter\n# TYPE h histogram\ng{a=\"b\"} 1\n");
    for name in ["grpc_requests_total", "h_bucket", "h_count", "g"] {
        assert!(families.contains(name), "{name} in {families:?}");
    }
}
