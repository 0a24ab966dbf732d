//! The layer against scripted services, each test with its own registry.

use std::convert::Infallible;

use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::telemetry::metrics::Format;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const GET: &str = "/flotilla.product.v1.ProductService/GetProduct";

/// Answers every call with the code the request's `x-code` header names, trailers-only.
fn scripted() -> impl Service<
    http::Request<()>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Body>, Infallible>> + Send,
> + Clone {
    tower::service_fn(|request: http::Request<()>| {
        let code = request
            .headers()
            .get("x-code")
            .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())
            .unwrap_or(0);
        std::future::ready(Ok(tonic::Status::new(code.into(), "scripted").into_http()))
    })
}

fn request(path: &str, code: Code) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.uri_mut() = http::Uri::try_from(path).unwrap_or_default();
    request
        .headers_mut()
        .insert("x-code", http::HeaderValue::from(code as i32));
    request
}

/// An answer with a body and the status in its trailers, as a handler's success is sent.
fn with_trailers(code: Code) -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from(code as i32));
    let body = http_body_util::Full::new(prost::bytes::Bytes::from_static(b"\0\0\0\0\0"))
        .map_err(|never| match never {})
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    http::Response::new(Body::new(body))
}

#[tokio::test]
async fn server_calls_are_counted_by_method_and_code_and_timed() -> TestResult {
    let metrics = Metrics::new();
    let mut service =
        GrpcMetricsLayer::new(GrpcMetrics::server("product", &metrics)).layer(scripted());
    for code in [Code::Ok, Code::Ok, Code::NotFound] {
        let response = service.ready().await?.call(request(GET, code)).await?;
        drop(response.into_body());
    }
    // A made-up path is counted, but never by its name.
    let response = service
        .ready()
        .await?
        .call(request("/evil.Service/abc123", Code::Unimplemented))
        .await?;
    drop(response);

    let text = metrics.render(Format::Prometheus)?;
    for line in [
        r#"grpc_requests_total{service="product",method="GetProduct",code="OK"} 2"#,
        r#"grpc_requests_total{service="product",method="GetProduct",code="NOT_FOUND"} 1"#,
        r#"grpc_server_started_total{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary"} 3"#,
        r#"grpc_server_handled_total{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary",grpc_code="NotFound"} 1"#,
        r#"grpc_server_handling_seconds_count{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary"} 3"#,
        r#"grpc_server_handling_seconds_bucket{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary",le="0.0001"}"#,
        r#"grpc_requests_total{service="product",method="unknown",code="UNIMPLEMENTED"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(!text.contains("evil") && !text.contains("abc123"), "{text}");
    assert!(
        !text.contains(".."),
        "help texts end with one full stop: {text}"
    );
    Ok(())
}

#[tokio::test]
async fn a_call_is_handled_when_its_body_ends_and_cancelled_when_dropped_first() -> TestResult {
    let metrics = Metrics::new();
    let answers = tower::service_fn(|request: http::Request<()>| {
        let code = if request.headers().contains_key("x-fail") {
            Code::Internal
        } else {
            Code::Ok
        };
        std::future::ready(Ok::<_, Infallible>(with_trailers(code)))
    });
    let mut service =
        GrpcMetricsLayer::new(GrpcMetrics::server("product", &metrics)).layer(answers);
    let handled = |text: &str, code: &str| {
        text.contains(&format!(
            r#"grpc_server_handled_total{{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary",grpc_code="{code}"}} 1"#
        ))
    };

    let response = service.ready().await?.call(request(GET, Code::Ok)).await?;
    // Headers alone are not the end of the call.
    assert!(!handled(&metrics.render(Format::Prometheus)?, "OK"));
    response.into_body().collect().await?;
    assert!(handled(&metrics.render(Format::Prometheus)?, "OK"));

    let mut failing = request(GET, Code::Ok);
    failing
        .headers_mut()
        .insert("x-fail", http::HeaderValue::from_static("1"));
    let response = service.ready().await?.call(failing).await?;
    response.into_body().collect().await?;
    assert!(handled(&metrics.render(Format::Prometheus)?, "Internal"));

    let response = service.ready().await?.call(request(GET, Code::Ok)).await?;
    drop(response);
    assert!(handled(&metrics.render(Format::Prometheus)?, "Canceled"));
    Ok(())
}

#[tokio::test]
async fn a_client_call_that_fails_without_an_answer_counts_its_error_code() -> TestResult {
    let metrics = Metrics::new();
    let refusing = tower::service_fn(|_: http::Request<()>| {
        std::future::ready(Err::<http::Response<Body>, tower::BoxError>(Box::new(
            tonic::Status::unavailable("no healthy instance of product"),
        )))
    });
    let mut service = GrpcMetricsLayer::new(GrpcMetrics::client(&metrics)).layer(refusing);
    let result = service.ready().await?.call(request(GET, Code::Ok)).await;
    assert!(result.is_err());
    let text = metrics.render(Format::Prometheus)?;
    for line in [
        r#"grpc_client_started_total{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary"} 1"#,
        r#"grpc_client_handled_total{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary",grpc_code="Unavailable"} 1"#,
        r#"grpc_client_handling_seconds_count{grpc_service="flotilla.product.v1.ProductService",grpc_method="GetProduct",grpc_type="unary"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(!text.contains("grpc_requests_total"), "{text}");
    Ok(())
}

#[test]
fn an_error_without_a_status_is_unknown() {
    let error: tower::BoxError = "connection reset".into();
    assert_eq!(error.grpc_code(), Code::Unknown);
    let wrapped: tower::BoxError = Box::new(Wrapped(tonic::Status::deadline_exceeded("late")));
    assert_eq!(wrapped.grpc_code(), Code::DeadlineExceeded);
    // As tonic's client reports them: its own timeout, a reset stream, a refused connection.
    let timeout: tower::BoxError = Box::new(tonic::TimeoutExpired(()));
    assert_eq!(timeout.grpc_code(), Code::Cancelled);
    let reset: tower::BoxError = Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM));
    assert_eq!(reset.grpc_code(), Code::Unavailable);
    let refused: tower::BoxError =
        Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(refused.grpc_code(), Code::Unavailable);
}

/// An error whose cause is a status, as a layer's error wrapping an upstream's is.
#[derive(Debug)]
struct Wrapped(tonic::Status);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wrapped")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn health_and_reflection_are_known_methods() {
    assert_eq!(
        KNOWN
            .get("/grpc.health.v1.Health/Watch")
            .map(|kind| kind.grpc_type),
        Some("server_stream")
    );
    assert_eq!(
        KNOWN
            .get("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .map(|kind| kind.grpc_type),
        Some("bidi_stream")
    );
}
