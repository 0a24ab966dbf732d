//! HTTP server metrics in the names Prometheus' own guidelines and most dashboards use:
//! `http_requests_total{method, route, status}` and `http_request_duration_seconds{method, route}`
//! (request received to response headers sent).
//!
//! `route` is the route template axum matched (`/v1/products/{id}`), never the raw path, so a
//! client cannot grow the label set by inventing paths: a request no route matched counts as
//! `unmatched`, and a method outside HTTP's standard ones as `_OTHER` (OpenTelemetry's rule for
//! `http.request.method`). Put the layer on a `Router` with `Router::layer`, where axum has
//! already matched the route.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use super::metrics::{LatencyHistogram, Metrics, TraceExemplar, latency_histogram};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

/// The HTTP metrics of one server, registered once; clones share the counts.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, LatencyHistogram, fn() -> LatencyHistogram>,
}

impl HttpMetrics {
    /// Registers the metrics in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let http = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        metrics.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            http.requests.clone(),
        );
        metrics.register(
            "http_request_duration_seconds",
            "Time from an HTTP request's arrival to its response headers, by method and route",
            http.duration.clone(),
        );
        http
    }

    /// A layer recording every request into these metrics.
    pub fn layer(&self) -> HttpMetricsLayer {
        HttpMetricsLayer {
            metrics: self.clone(),
        }
    }
}

/// Counts and times every request through it; made by [`HttpMetrics::layer`].
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer {
    metrics: HttpMetrics,
}

impl<S> tower::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`HttpMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct HttpMetricsService<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for HttpMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let route = RouteLabels {
            method: method_label(request.method()),
            route: request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str)
                .to_owned(),
        };
        let metrics = self.metrics.clone();
        let exemplar = TraceExemplar::current();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            metrics.duration.get_or_create(&route).observe(
                started.elapsed().as_secs_f64(),
                exemplar,
                None,
            );
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    method: route.method,
                    route: route.route,
                    status: response.status().as_u16(),
                })
                .inc();
            Ok(response)
        })
    }
}

/// The method's name when it is one of HTTP's standard ones, `_OTHER` otherwise (OpenTelemetry's
/// rule for `http.request.method`, which keeps made-up methods out of label sets).
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::CONNECT => "CONNECT",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::telemetry::metrics::Format;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_never_by_path() -> TestResult {
        let metrics = Metrics::new();
        let http = HttpMetrics::register(&metrics);
        let app = Router::new()
            .route("/v1/products/{id}", get(|| async { "a product" }))
            .layer(http.layer());
        for uri in [
            "/v1/products/a",
            "/v1/products/b",
            "/secret-looking/path-123",
        ] {
            let request = http::Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())?;
            app.clone().oneshot(request).await?;
        }
        let request = http::Request::builder()
            .method("BREW")
            .uri("/v1/products/c")
            .body(axum::body::Body::empty())?;
        app.clone().oneshot(request).await?;

        let text = metrics.render(Format::Prometheus)?;
        for line in [
            r#"http_requests_total{method="GET",route="/v1/products/{id}",status="200"} 2"#,
            r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
            r#"http_requests_total{method="_OTHER",route="/v1/products/{id}",status="405"} 1"#,
            r#"http_request_duration_seconds_count{method="GET",route="/v1/products/{id}"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains("secret-looking") && !text.contains("products/a"),
            "{text}"
        );
        Ok(())
    }
}
