//! One trace across every hop: `flotilla up` exporting over OTLP to a real receiver (OpenTelemetry's
//! collector service, in this test), a login through the gateway, and the spans of the gateway,
//! the auth service and the user service in one trace, each parented by the hop before, with the
//! conventions' attributes, no secret anywhere, the trace id on the log lines, and the trace as an
//! exemplar of the latency histograms.

use std::time::Duration;

use test_support::otlp::{ReceivedSpan, Receiver};

use test_support::process::Flotilla;

use crate::{
    ADMIN_EMAIL, ADMIN_PASSWORD, TestResult, binary, grpc_channel, http_client, login, scrape_as,
    up_with,
};

const PATIENCE: Duration = Duration::from_secs(20);

const LOGIN: &str = "flotilla.auth.v1.AuthService/Login";
const AUTHENTICATE: &str = "flotilla.user.v1.UserService/AuthenticateUser";

/// OTLP's span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn find<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
    kind: i32,
) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|span| span.service == service && span.name == name && span.kind == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_one_trace_from_the_gateway_through_auth_to_user() -> TestResult {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir()?;
    let endpoint = receiver.endpoint();
    let flotilla = up_with(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("RUST_LOG", "info,tower_http=debug"),
        ],
    )
    .await;
    let gateway = flotilla.addr("gateway", "http");
    let http = http_client();
    let response = login(&http, gateway, ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    assert_eq!(response.status(), 200);
    let pair: serde_json::Value = response.json().await?;
    let access = pair["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_owned();
    let refresh = pair["refresh_token"]
        .as_str()
        .ok_or("no refresh token")?
        .to_owned();

    let spans = receiver
        .wait_for(PATIENCE, |spans| {
            find(spans, "user", AUTHENTICATE, SERVER).is_some()
                && find(spans, "gateway", "POST /v1/auth/login", SERVER).is_some()
        })
        .await;
    let request = find(&spans, "gateway", "POST /v1/auth/login", SERVER)
        .ok_or_else(|| format!("no gateway span in {spans:#?}"))?;
    let trace: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|span| span.trace_id == request.trace_id)
        .cloned()
        .collect();
    let hop = |service: &str, name: &str, kind: i32| {
        find(&trace, service, name, kind)
            .cloned()
            .ok_or_else(|| format!("no {service} span {name} (kind {kind}) in {trace:#?}"))
    };
    let gateway_calls = hop("gateway", LOGIN, CLIENT)?;
    let auth_serves = hop("auth", LOGIN, SERVER)?;
    let auth_calls = hop("auth", AUTHENTICATE, CLIENT)?;
    let user_serves = hop("user", AUTHENTICATE, SERVER)?;
    assert_eq!(request.parent_span_id, "", "the request starts the trace");
    for (child, parent) in [
        (&gateway_calls, request),
        (&auth_serves, &gateway_calls),
        (&auth_calls, &auth_serves),
        (&user_serves, &auth_calls),
    ] {
        assert_eq!(
            child.parent_span_id, parent.span_id,
            "{} ({}) is a child of {} ({})",
            child.name, child.service, parent.name, parent.service
        );
    }
    // The user service's query is in the trace too, under its call, with no bound value.
    let query = trace
        .iter()
        .find(|span| span.service == "user" && span.name == "SELECT users")
        .ok_or_else(|| format!("no query span in {trace:#?}"))?;
    assert_eq!(query.parent_span_id, user_serves.span_id);
    assert_eq!(query.kind, CLIENT);
    assert_eq!(query.attribute("db.system"), Some("sqlite"));
    assert_eq!(query.attribute("db.operation.name"), Some("SELECT"));
    assert_eq!(query.attribute("db.collection.name"), Some("users"));

    for (key, value) in [
        ("http.request.method", "POST"),
        ("http.route", "/v1/auth/login"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(request.attribute(key), Some(value), "{key} in {request:#?}");
    }
    for span in [&gateway_calls, &auth_serves, &auth_calls, &user_serves] {
        let (service, method) = span.name.split_once('/').ok_or("a span name")?;
        for (key, value) in [
            ("rpc.system", "grpc"),
            ("rpc.service", service),
            ("rpc.method", method),
            ("rpc.grpc.status_code", "0"),
        ] {
            assert_eq!(span.attribute(key), Some(value), "{key} in {span:#?}");
        }
        assert!(span.attribute("server.address").is_some(), "{span:#?}");
    }

    // No secret in any span, in its attributes or its events (the log lines inside it): not the
    // password, not a token, not a bearer header.
    for span in &spans {
        let mut texts: Vec<(&str, &str)> = span
            .attributes
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        for (name, attributes) in &span.events {
            texts.push(("event", name.as_str()));
            texts.extend(
                attributes
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            );
        }
        for (key, value) in texts {
            for secret in [ADMIN_PASSWORD, access.as_str(), refresh.as_str(), "Bearer"] {
                assert!(
                    !value.contains(secret),
                    "{key} of {} ({}) holds a secret",
                    span.name,
                    span.service
                );
            }
        }
    }

    // The latency histograms lead to the trace: OpenMetrics exemplars carry its id.
    let scraped = scrape_as(
        flotilla.addr("auth", "admin"),
        Some("application/openmetrics-text; version=1.0.0"),
        "application/openmetrics-text",
    )
    .await?;
    let exemplar = format!(r#"# {{trace_id="{}"}}"#, request.trace_id);
    assert!(
        scraped.lines().any(|line| {
            line.starts_with("grpc_server_handling_seconds_bucket")
                && line.contains(r#"grpc_method="Login""#)
                && line.contains(&exemplar)
        }),
        "no exemplar {exemplar} in\n{scraped}"
    );

    // Log lines emitted while handling the request carry the same trace id.
    let log = flotilla.log();
    flotilla.stop().await;
    let with_trace: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(&format!(r#""trace_id":"{}""#, request.trace_id)))
        .collect();
    assert!(
        with_trace
            .iter()
            .any(|line| line.contains("finished processing request") && line.contains("span_id")),
        "no log line with trace id {} in\n{log}",
        request.trace_id,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_travel_over_otlp_http_too_and_are_flushed_at_shutdown() -> TestResult {
    let receiver = Receiver::start_http().await;
    let dir = tempfile::tempdir()?;
    let endpoint = receiver.endpoint();
    let flotilla = up_with(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    )
    .await;
    let gateway = flotilla.addr("gateway", "http");
    http_client()
        .get(format!("http://{gateway}/v1/products?page_size=1"))
        .send()
        .await?
        .error_for_status()?;
    // Stopped at once: the batch (sent every 5 s) goes out because shutdown flushes it.
    flotilla.stop().await;
    let spans = receiver.spans();
    let list = "flotilla.product.v1.ProductService/ListProducts";
    let served = find(&spans, "product", list, SERVER)
        .ok_or_else(|| format!("no product span in {spans:#?}"))?;
    let request = find(&spans, "gateway", "GET /v1/products", SERVER)
        .ok_or_else(|| format!("no gateway span in {spans:#?}"))?;
    assert_eq!(served.trace_id, request.trace_id);
    assert!(
        !spans
            .iter()
            .any(|span| span.name.starts_with("grpc.health")),
        "health checks are not traced"
    );
    Ok(())
}

/// Under `serve` the process is one component: its spans, the database's included, go out under
/// its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_component_exports_under_its_own_name() -> TestResult {
    use platform::proto::product::v1 as pb;
    use platform::proto::product::v1::product_service_client::ProductServiceClient;

    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir()?;
    let endpoint = receiver.endpoint();
    let database = format!("sqlite://{}/product.db", dir.path().display());
    let product = Flotilla::serve(
        binary(),
        "product",
        dir.path(),
        &[
            ("DATABASE_URL", database.as_str()),
            ("FLOTILLA_PRODUCT_SEED_DEMO", "true"),
            ("FLOTILLA_DISCOVERY", "static"),
            ("FLOTILLA_PRODUCT_GRPC_ADDR", "127.0.0.1:0"),
            ("FLOTILLA_PRODUCT_ADMIN_ADDR", "127.0.0.1:0"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ],
    )
    .await;
    let mut client =
        ProductServiceClient::new(grpc_channel(product.addr("product", "grpc")).await?);
    client
        .list_products(pb::ListProductsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?;
    product.stop().await;

    let spans = receiver.spans();
    let list = "flotilla.product.v1.ProductService/ListProducts";
    let served = find(&spans, "product", list, SERVER)
        .ok_or_else(|| format!("no product {list} span in {spans:#?}"))?;
    assert!(
        spans.iter().any(
            |span| span.trace_id == served.trace_id && span.name.starts_with("SELECT products")
        ),
        "the query is in the call's trace: {spans:#?}"
    );
    assert!(
        spans.iter().all(|span| span.service == "product"),
        "{spans:#?}"
    );
    Ok(())
}
