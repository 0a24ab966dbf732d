//! Every component of `flotilla up` serves Prometheus metrics on its admin listener: its own
//! (gRPC per method, HTTP per route, its concurrency limit, its database pool), and, on the gateway's only, those of
//! the process (CPU and memory, the calls it makes, breakers, retries, instances), so a Prometheus
//! scraping every listener counts nothing twice.

use std::time::Duration;

use test_support::prometheus::{Prometheus, value_of};

use crate::{ADMIN_EMAIL, ADMIN_PASSWORD, TestResult, http_client, login, sample, scrape, up};

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
    for (series, value) in [
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
    ] {
        assert_eq!(
            sample(&product, series),
            Some(value),
            "{series} in\n{product}"
        );
    }
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
    for (series, value) in [
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
    ] {
        assert_eq!(
            sample(&gateway_metrics, series),
            Some(value),
            "{series} in\n{gateway_metrics}"
        );
    }
    let rss = sample(&gateway_metrics, "process_resident_memory_bytes").ok_or("no RSS")?;
    assert!(rss > 1_000_000.0, "{rss}");
    assert!(
        !gateway_metrics.contains("no-such-product"),
        "raw paths never become labels"
    );

    // Prometheus asks for OpenMetrics first, and gets it.
    let open = http
        .get(format!(
            "http://{}/metrics",
            flotilla.addr("product", "admin")
        ))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await?;
    let content_type = open
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let body = open.text().await?;
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE grpc_requests counter"), "{body}");

    flotilla.stop().await;
    Ok(())
}

/// Prometheus itself, scraping every admin listener of a running `flotilla up`: the series are
/// there by service, each request counted once, and the latency histogram answers a quantile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_listener_and_counts_each_request_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let flotilla = up(dir.path()).await;
    let targets: Vec<_> = ["registry", "user", "auth", "product", "gateway"]
        .into_iter()
        .map(|component| flotilla.addr(component, "admin"))
        .collect();
    let Some(prometheus) = Prometheus::start("flotilla", &targets).await else {
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
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    let lists = prometheus
        .query_until(
            "sum(grpc_requests_total{service=\"product\",method=\"ListProducts\"})",
            PATIENCE,
            |result| result.first().and_then(value_of) == Some(LISTS as f64),
        )
        .await;
    assert_eq!(
        lists.first().and_then(value_of),
        Some(LISTS as f64),
        "{lists:?}"
    );
    // Each target is scraped on its own schedule: wait for the gateway's too.
    let gets = prometheus
        .query_until(
            "sum(http_requests_total{route=\"/v1/products\",status=\"200\"})",
            PATIENCE,
            |result| result.first().and_then(value_of) == Some(LISTS as f64),
        )
        .await;
    assert_eq!(
        gets.first().and_then(value_of),
        Some(LISTS as f64),
        "{gets:?}"
    );

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
    load.abort();
    let seconds = quantile.first().and_then(value_of).ok_or("no quantile")?;
    assert!(
        seconds.is_finite() && seconds > 0.0 && seconds <= 10.0,
        "p99 {seconds}"
    );

    drop(prometheus);
    flotilla.stop().await;
    Ok(())
}
