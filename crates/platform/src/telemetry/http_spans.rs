//! A server span for every HTTP request, after OpenTelemetry's HTTP conventions: named
//! `{method} {route}`, with `http.request.method`, `http.route` (the template axum matched, never
//! the raw path), `http.response.status_code` and `url.scheme`; a 5xx marks it failed. It continues
//! the trace of an incoming `traceparent` and runs the request as work of its component, so the
//! gRPC calls a handler makes are its children and say which component made them.
//!
//! Put it on a `Router` with `Router::layer`, where the route is matched. No header, query or body
//! is recorded, so no token reaches a span. Paths given to [`HttpSpanLayer::untraced`] (probes)
//! are not traced.

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
    untraced: &'static [&'static str],
}

impl HttpSpanLayer {
    /// Spans of `component` ("gateway").
    pub fn new(component: &'static str) -> Self {
        Self {
            component,
            untraced: &[],
        }
    }

    /// The same, leaving requests to these paths untraced (probes a load balancer sends every
    /// few seconds would bury the traces of real requests).
    #[must_use]
    pub fn untraced(mut self, paths: &'static [&'static str]) -> Self {
        self.untraced = paths;
        self
    }
}

impl<S> tower::Layer<S> for HttpSpanLayer {
    type Service = HttpSpans<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpSpans {
            inner,
            layer: *self,
        }
    }
}

/// The service [`HttpSpanLayer`] makes.
#[derive(Debug, Clone)]
pub struct HttpSpans<S> {
    inner: S,
    layer: HttpSpanLayer,
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
        let component = self.layer.component;
        if !crate::telemetry::request_spans_on()
            || self.layer.untraced.contains(&request.uri().path())
        {
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
            flotilla.component = component,
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
