//! Resilience end to end, every component its own `flotilla serve` process, faults injected with
//! `FLOTILLA_FAULTS` into real product instances:
//!
//! - one of two instances failing every call costs no request (retries go to the other instance,
//!   the balancer ejects the failing one), and the retries stay within the budget;
//! - a product service failing every call opens the gateway's breaker, which then answers 503
//!   with `Retry-After` without calling the service, and closes once the service recovers;
//! - a slow service meets its route's deadline (`FLOTILLA_GATEWAY_ROUTE_TIMEOUTS`): 504 well
//!   before the service would answer, and the service sees the call cancelled;
//! - a rolling restart of both instances, one at a time, under steady load fails no request.

use std::time::{Duration, Instant};

use platform::discovery::Registry;
use platform::discovery::consul::{ConsulConfig, ConsulRegistry};
use test_support::postgres::TestDatabase;
use test_support::process::Flotilla;

use crate::fleet::{
    Load, failures, first_product_id, gateway, handled_calls, has, product, registry, until,
};
use crate::{TestResult, http_client, sample, scrape};

const FAIL_GET_PRODUCT: &str =
    "flotilla.product.v1.ProductService/GetProduct=abort:unavailable:100%";

/// The registry's client, watching the product service.
fn watch_products(registry: &Flotilla) -> Result<platform::discovery::InstanceStream, TestError> {
    let consul = ConsulRegistry::new(ConsulConfig {
        address: format!("http://{}", registry.addr("registry", "http")),
        token: None,
    })?;
    Ok(consul.watch("product"))
}

type TestError = Box<dyn std::error::Error + Send + Sync>;

fn temp_dirs(count: usize) -> Result<Vec<tempfile::TempDir>, std::io::Error> {
    (0..count).map(|_| tempfile::tempdir()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_costs_no_request_and_retries_stay_within_the_budget() -> TestResult {
    let Some(database) = TestDatabase::create().await else {
        return Ok(());
    };
    let dirs = temp_dirs(4)?;
    let registry = registry(dirs[0].path()).await;
    let registry_addr = registry.addr("registry", "http");
    let mut watch = watch_products(&registry)?;
    let failing = product(
        dirs[1].path(),
        database.url(),
        registry_addr,
        true,
        &[("FLOTILLA_FAULTS", FAIL_GET_PRODUCT)],
    )
    .await;
    let healthy = product(dirs[2].path(), database.url(), registry_addr, false, &[]).await;
    let (failing_addr, healthy_addr) = (
        failing.addr("product", "grpc"),
        healthy.addr("product", "grpc"),
    );
    until(&mut watch, |set| {
        has(set, failing_addr) && has(set, healthy_addr)
    })
    .await?;
    let gateway = gateway(dirs[3].path(), registry_addr, &[]).await;
    let gateway_addr = gateway.addr("gateway", "http");
    let id = first_product_id(gateway_addr).await?;

    let load = Load::start(gateway_addr, &id);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.finish().await?;

    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let requests = outcomes.len();
    let (on_failing, on_healthy) = (handled_calls(&failing).len(), handled_calls(&healthy).len());
    // Every request was answered once by the healthy instance; every call the failing one got
    // was an attempt that had to be retried.
    assert_eq!(on_healthy, requests, "one good answer per request");
    let retries = on_failing;
    assert!(
        retries >= 7,
        "the failing instance was tried until ejected: {retries} calls"
    );
    // The budget: 20 % of the requests plus 10 a second, over a 10 s window (tower's TpsBudget
    // holds a reserve of 10 × 10 s for a client that has just started).
    let budget = requests / 5 + 100;
    assert!(
        retries <= budget,
        "{retries} retries for {requests} requests: over the budget of {budget}"
    );

    // The same figures, as the gateway and the failing instance report them to Prometheus.
    let gateway_metrics = scrape(gateway.addr("gateway", "admin")).await?;
    let retried = sample(
        &gateway_metrics,
        r#"flotilla_retries_total{upstream="product"}"#,
    );
    assert_eq!(retried, Some(retries as f64), "{gateway_metrics}");
    let calls = sample(
        &gateway_metrics,
        r#"flotilla_retry_calls_total{upstream="product"}"#,
    )
    .ok_or("no retry calls")?;
    assert!(
        calls >= requests as f64,
        "{calls} calls for {requests} requests"
    );
    let answered = sample(
        &gateway_metrics,
        r#"grpc_client_handled_total{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary",grpc_code="OK"}"#,
    );
    assert_eq!(
        answered,
        Some(requests as f64),
        "one good answer per request"
    );
    let failing_metrics = scrape(failing.addr("product", "admin")).await?;
    let aborted = sample(
        &failing_metrics,
        r#"grpc_requests_total{service="product",method="GetProduct",code="UNAVAILABLE"}"#,
    );
    assert_eq!(aborted, Some(retries as f64), "{failing_metrics}");
    gateway.stop().await;
    failing.stop().await;
    healthy.stop().await;
    registry.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_breaker_opens_fails_fast_and_closes_after_recovery() -> TestResult {
    let Some(database) = TestDatabase::create().await else {
        return Ok(());
    };
    let dirs = temp_dirs(4)?;
    let registry = registry(dirs[0].path()).await;
    let registry_addr = registry.addr("registry", "http");
    let mut watch = watch_products(&registry)?;
    let broken = product(
        dirs[1].path(),
        database.url(),
        registry_addr,
        true,
        &[("FLOTILLA_FAULTS", FAIL_GET_PRODUCT)],
    )
    .await;
    let broken_addr = broken.addr("product", "grpc");
    until(&mut watch, |set| has(set, broken_addr)).await?;
    let gateway = gateway(
        dirs[2].path(),
        registry_addr,
        &[("FLOTILLA_BREAKER_COOL_DOWN", "2s")],
    )
    .await;
    let gateway_addr = gateway.addr("gateway", "http");
    let id = first_product_id(gateway_addr).await?;
    let http = http_client();
    let url = format!("http://{gateway_addr}/v1/products/{id}");

    // More than 5 failed requests in a row trip the breaker of product's GetProduct.
    const TRIPPING: usize = 6;
    const WHILE_OPEN: usize = 20;
    for request in 1..=TRIPPING {
        let response = http.get(&url).send().await?;
        assert_eq!(response.status(), 503, "request {request}");
    }
    let calls_when_open = handled_calls(&broken).len();
    for _ in 0..WHILE_OPEN {
        let response = http.get(&url).send().await?;
        assert_eq!(response.status(), 503);
        let retry_after: u64 = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .ok_or("no Retry-After")?;
        assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
        let body: serde_json::Value = response.json().await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("product"), "{body}");
    }
    assert_eq!(
        handled_calls(&broken).len(),
        calls_when_open,
        "an open breaker sends nothing to the service"
    );
    let gateway_admin = gateway.addr("gateway", "admin");
    let scraped = scrape(gateway_admin).await?;
    let breaker = r#"grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct""#;
    let state = |scraped: &str, state: &str| {
        sample(
            scraped,
            &format!(r#"flotilla_breaker_state{{{breaker},state="{state}"}}"#),
        )
    };
    let transitions = |scraped: &str, from: &str, to: &str| {
        sample(
            scraped,
            &format!(r#"flotilla_breaker_transitions_total{{{breaker},from="{from}",to="{to}"}}"#),
        )
    };
    assert_eq!(state(&scraped, "open"), Some(1.0), "{scraped}");
    assert_eq!(state(&scraped, "closed"), Some(0.0), "{scraped}");
    assert_eq!(
        transitions(&scraped, "closed", "open"),
        Some(1.0),
        "{scraped}"
    );
    let refused = sample(
        &scraped,
        r#"http_requests_total{method="GET",route="/v1/products/{id}",status="503"}"#,
    );
    assert_eq!(refused, Some((TRIPPING + WHILE_OPEN) as f64), "{scraped}");
    // Other methods have breakers of their own: listing still reaches the service.
    let listed = http
        .get(format!("http://{gateway_addr}/v1/products?page_size=1"))
        .send()
        .await?;
    assert_eq!(listed.status(), 200);

    // The service recovers: a healthy instance replaces the broken one.
    let healthy = product(dirs[3].path(), database.url(), registry_addr, false, &[]).await;
    let healthy_addr = healthy.addr("product", "grpc");
    until(&mut watch, |set| has(set, healthy_addr)).await?;
    broken.terminate();
    until(&mut watch, |set| !has(set, broken_addr)).await?;
    let _ = broken.wait(Duration::from_secs(20)).await;

    // After the cool-down, the trial call succeeds and the breaker closes.
    let recovered_by = Instant::now() + Duration::from_secs(20);
    loop {
        let response = http.get(&url).send().await?;
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < recovered_by, "the breaker never closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..20 {
        let response = http.get(&url).send().await?;
        assert_eq!(response.status(), 200);
    }
    let scraped = scrape(gateway_admin).await?;
    assert_eq!(state(&scraped, "closed"), Some(1.0), "{scraped}");
    assert_eq!(
        transitions(&scraped, "half-open", "closed"),
        Some(1.0),
        "{scraped}"
    );
    gateway.stop().await;
    healthy.stop().await;
    registry.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_meets_the_route_deadline_and_sees_the_cancellation() -> TestResult {
    let Some(database) = TestDatabase::create().await else {
        return Ok(());
    };
    let dirs = temp_dirs(3)?;
    let registry = registry(dirs[0].path()).await;
    let registry_addr = registry.addr("registry", "http");
    let mut watch = watch_products(&registry)?;
    let slow = product(
        dirs[1].path(),
        database.url(),
        registry_addr,
        true,
        &[
            (
                "FLOTILLA_FAULTS",
                "flotilla.product.v1.ProductService/GetProduct=delay:3s:100%",
            ),
            (
                "RUST_LOG",
                "info,tower_http=debug,platform::resilience::deadline=debug",
            ),
        ],
    )
    .await;
    let slow_addr = slow.addr("product", "grpc");
    until(&mut watch, |set| has(set, slow_addr)).await?;
    let gateway = gateway(
        dirs[2].path(),
        registry_addr,
        // The route's own deadline; the others keep the default 3 s.
        &[(
            "FLOTILLA_GATEWAY_ROUTE_TIMEOUTS",
            "GET /v1/products/{id}=200ms",
        )],
    )
    .await;
    let gateway_addr = gateway.addr("gateway", "http");
    let id = first_product_id(gateway_addr).await?;

    let started = Instant::now();
    let response = http_client()
        .get(format!("http://{gateway_addr}/v1/products/{id}"))
        .send()
        .await?;
    let took = started.elapsed();
    assert_eq!(response.status(), 504);
    // Cut at the deadline, not when the service would have answered (3 s).
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["status"], "DEADLINE_EXCEEDED", "{body}");

    // The service saw the call end when the deadline passed, not after its 3 s.
    let cancelled_by = Instant::now() + Duration::from_secs(5);
    while !cancellation_logged(&slow) {
        assert!(
            Instant::now() < cancelled_by,
            "no cancelled GetProduct in the service's log:\n{}",
            slow.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its metrics count the abandoned call as ended, not as still running, and
    // the gateway's client side as the caller saw it.
    let scraped = scrape(slow.addr("product", "admin")).await?;
    let get = r#"grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary""#;
    assert_eq!(
        sample(&scraped, &format!("grpc_server_started_total{{{get}}}")),
        Some(1.0),
        "{scraped}"
    );
    // Cut by the service's own deadline, or by the gateway's reset arriving at the same moment.
    let ended = ["DeadlineExceeded", "Canceled"]
        .iter()
        .filter_map(|code| {
            sample(
                &scraped,
                &format!(r#"grpc_server_handled_total{{{get},grpc_code="{code}"}}"#),
            )
        })
        .sum::<f64>();
    assert_eq!(ended, 1.0, "{scraped}");
    let scraped = scrape(gateway.addr("gateway", "admin")).await?;
    assert_eq!(
        sample(
            &scraped,
            &format!(r#"grpc_client_handled_total{{{get},grpc_code="Canceled"}}"#)
        ),
        Some(1.0),
        "tonic reports its own timeout as CANCELLED: {scraped}"
    );
    gateway.stop().await;
    slow.stop().await;
    registry.stop().await;
    Ok(())
}

/// Whether the service logged that a `GetProduct` call ended unanswered: at its deadline, or when
/// the gateway reset it at the gateway's (a transit earlier, by the service's clock).
fn cancellation_logged(instance: &Flotilla) -> bool {
    instance.log().lines().any(|line| {
        line.contains("ProductService/GetProduct") && line.contains("\"message\":\"call cancelled")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() -> TestResult {
    let Some(database) = TestDatabase::create().await else {
        return Ok(());
    };
    let dirs = temp_dirs(6)?;
    let registry = registry(dirs[0].path()).await;
    let registry_addr = registry.addr("registry", "http");
    let mut watch = watch_products(&registry)?;
    let mut running = vec![
        product(dirs[1].path(), database.url(), registry_addr, true, &[]).await,
        product(dirs[2].path(), database.url(), registry_addr, false, &[]).await,
    ];
    let addrs: Vec<_> = running
        .iter()
        .map(|instance| instance.addr("product", "grpc"))
        .collect();
    until(&mut watch, |set| addrs.iter().all(|addr| has(set, *addr))).await?;
    let gateway = gateway(dirs[3].path(), registry_addr, &[]).await;
    let gateway_addr = gateway.addr("gateway", "http");
    let id = first_product_id(gateway_addr).await?;

    let load = Load::start(gateway_addr, &id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (step, dir) in dirs[4..].iter().enumerate() {
        // Start the replacement, wait until it passes, then stop the old instance.
        let replacement = product(dir.path(), database.url(), registry_addr, false, &[]).await;
        let new_addr = replacement.addr("product", "grpc");
        until(&mut watch, |set| has(set, new_addr)).await?;
        let old = running.remove(0);
        let old_addr = old.addr("product", "grpc");
        old.terminate();
        until(&mut watch, |set| !has(set, old_addr)).await?;
        let status = old.wait(Duration::from_secs(20)).await;
        assert!(status.success(), "step {step}: {status}");
        running.push(replacement);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let outcomes = load.finish().await?;
    let failed = failures(&outcomes);
    println!(
        "rolling restart: {} requests, {} failed",
        outcomes.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(!outcomes.is_empty());
    gateway.stop().await;
    for instance in running {
        instance.stop().await;
    }
    registry.stop().await;
    Ok(())
}
