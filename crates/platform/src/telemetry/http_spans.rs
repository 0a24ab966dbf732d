//! A server span for every HTTP request, after OpenTelemetry's HTTP conventions: named
//! `{method} {route}`, with `http.request.method`, `http.route` (the template axum matched, never
//! the raw path), `http.response.status_code` and `url.scheme`; a 5xx marks it failed. It continues
//! the trace of an incoming `traceparent` and runs the request as work of its component, so the
//! gRPC calls a handler makes are its children and say which component made them.
//!
//! Put it on a `Router` with `Router::layer`, where the route is matched. No header, query or body
//! is recorded, so no token reaches a span. Probes (`/healthz`, `/readyz`) and `/openapi.json` are
//! not traced.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use tracing::Instrument;
use tracing::field::Empty;

use super::context;

/// Traces every request through it as work of one component.
#[derive(Debug, Clone, Copy)]
pub struct HttpSpanLayer {
    component: &'static str,
}

impl HttpSpanLayer {
    /// Spans of `component` ("gateway").
    pub fn new(component: &'static str) -> Self {
        Self { component }
    }
}

impl<S> tower::Layer<S> for HttpSpanLayer {
    type Service = HttpSpans<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpSpans {
            inner,
            component: self.component,
        }
    }
}

/// The service [`HttpSpanLayer`] makes.
#[derive(Debug, Clone)]
pub struct HttpSpans<S> {
    inner: S,
    component: &'static str,
}

impl<S, B, R> tower::Service<http::Request<B>> for HttpSpans<S>
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
        let component = self.component;
        if is_probe(request.uri().path()) {
            // Probes (a load balancer's or Kubernetes' every few seconds) and the API document are
            // not traced: they would bury the traces of real requests.
            let response = self.inner.call(request);
            return Box::pin(context::in_component(component, response));
        }
        let method = super::http_metrics::method_label(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|matched| matched.as_str().to_owned());
        let span = tracing::info_span!(
            target: crate::telemetry::TRACE_TARGET,
            "http",
            otel.name = match &route {
                Some(route) => format!("{method} {route}"),
                None => method.to_owned(),
            },
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = route,
            http.response.status_code = Empty,
            url.scheme = "http",
            flotilla.component = self.component,
        );
        context::continue_trace(&span, request.headers());
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(context::in_component(component, async move {
            let response = response.instrument(span.clone()).await?;
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "error");
            }
            Ok(response)
        }))
    }
}

/// Whether `path` is a health or readiness probe, or the API document.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json")
}
