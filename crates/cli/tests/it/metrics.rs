//! Every component of `flotilla up` serves Prometheus metrics on its admin listener: its own
//! (gRPC per method, HTTP per route, its concurrency limit), and, on the gateway's only, those of
//! the process (CPU and memory, the calls it makes, breakers, retries, instances), so a Prometheus
//! scraping every listener counts nothing twice.

use crate::{TestResult, http_client, sample, scrape, up};

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
    ] {
        assert_eq!(
            sample(&product, series),
            Some(value),
            "{series} in\n{product}"
        );
    }
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
