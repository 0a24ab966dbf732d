//! A span for every gRPC call, on both sides, after OpenTelemetry's RPC conventions: named
//! `package.Service/Method`, kind server or client, with `rpc.system` `grpc`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code` (set when the call ends, [`super::call_end`]: an error,
//! trailers-only headers, trailers, or abandoned on the way) and `server.address`/`server.port`.
//!
//! The server span continues the trace of the caller's `traceparent`; the client span writes its
//! own into the outgoing call, so one trace runs gateway → auth → user. Each span carries
//! `flotilla.component`, the component it was made in, and the server layer runs its call as work
//! of that component ([`super::context::in_component`]), so spans made below (client calls,
//! queries) can say it too.
//!
//! Health checks and reflection calls are not traced. The span is created here, with its parent, before anything enters it: tracing-opentelemetry
//! cannot re-parent a span that has started. No request field, header or metadata value is
//! recorded, so no token ever reaches a span.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Code;
use tonic::body::Body;
use tracing::Instrument;
use tracing::field::Empty;

use super::call_end::{CallEnd, watch};
use super::context;
use super::grpc_metrics::{ErrorCode, method_names};
use crate::serve::is_plumbing;

/// Which side of a call a span is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// Traces every gRPC call through it.
#[derive(Debug, Clone)]
pub struct GrpcSpanLayer {
    side: Side,
    component: Option<&'static str>,
    /// The service a client calls, its `server.address` (the instance is picked below, later).
    target: Option<Arc<str>>,
}

impl GrpcSpanLayer {
    /// Server spans for `component` ("product"), continuing each caller's trace.
    pub fn server(component: &'static str) -> Self {
        Self {
            side: Side::Server,
            component: Some(component),
            target: None,
        }
    }

    /// Client spans of calls to the service `target` ("product"), each sending its trace context
    /// on; the component is the one the calling task works for.
    pub fn client(target: &str) -> Self {
        Self {
            side: Side::Client,
            component: None,
            target: Some(Arc::from(target)),
        }
    }
}

impl<S> tower::Layer<S> for GrpcSpanLayer {
    type Service = GrpcSpans<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcSpans {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GrpcSpanLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcSpans<S> {
    inner: S,
    layer: GrpcSpanLayer,
}

/// The future of a call through [`GrpcSpans`].
pub type GrpcSpansFuture<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send + 'static>>;

impl<S, B, R> tower::Service<http::Request<B>> for GrpcSpans<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: ErrorCode + Send + 'static,
    R: http_body::Body<Data = prost::bytes::Bytes> + Send + 'static,
    R::Error: Into<tower::BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = GrpcSpansFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let side = self.layer.side;
        let component = self.layer.component.or_else(context::component);
        // Health checks (a registry asks every few seconds) and reflection are not traced: they
        // would bury the traces of real requests. A span no layer records (no exporter, quiet
        // logs) has nothing to continue, send or settle.
        let traced = !is_plumbing(request.uri().path()) && crate::telemetry::request_spans_on();
        let span = traced
            .then(|| call_span(side, &request, self.layer.target.as_deref()))
            .filter(|span| !span.is_disabled());
        let Some(span) = span else {
            let response = self.inner.call(request);
            return claimed(side, component, async move {
                Ok(response.await?.map(Body::new))
            });
        };
        if let Some(component) = component {
            span.record("flotilla.component", component);
        }
        match side {
            Side::Server => context::continue_trace(&span, request.headers()),
            Side::Client => context::inject(&span, request.headers_mut()),
        }
        let finished = span.clone();
        let end = CallEnd::new(request.headers(), move |code| finish(&finished, side, code));
        // Entered while the inner service builds its future, so layers below see the span as
        // current (the metrics take its trace id for their exemplars).
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        claimed(side, component, watch(response.instrument(span), end))
    }
}

/// A server's call runs as work of its component, so spans made below (client calls, queries)
/// can say which component made them; a client's runs in its caller's.
fn claimed<E>(
    side: Side,
    component: Option<&'static str>,
    call: impl Future<Output = Result<http::Response<Body>, E>> + Send + 'static,
) -> GrpcSpansFuture<E> {
    match (side, component) {
        (Side::Server, Some(component)) => Box::pin(context::in_component(component, call)),
        _ => Box::pin(call),
    }
}

/// The span of one call, before it starts.
fn call_span<B>(side: Side, request: &http::Request<B>, target: Option<&str>) -> tracing::Span {
    let (service, method) = method_names(request.uri().path());
    let kind = match side {
        Side::Server => "server",
        Side::Client => "client",
    };
    let span = tracing::info_span!(
        target: crate::telemetry::TRACE_TARGET,
        "grpc",
        otel.name = format!("{service}/{method}"),
        otel.kind = kind,
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        server.address = Empty,
        server.port = Empty,
        flotilla.component = Empty,
    );
    if let Some(target) = target {
        span.record("server.address", target);
    } else if let Some(authority) = request.uri().authority() {
        span.record("server.address", authority.host());
        if let Some(port) = authority.port_u16() {
            span.record("server.port", port);
        }
    }
    span
}

/// Records how the call ended.
fn finish(span: &tracing::Span, side: Side, code: Code) {
    span.record("rpc.grpc.status_code", code as i32);
    if is_error(side, code) {
        span.record("otel.status_code", "error");
    }
}

/// OpenTelemetry's rule: a client call failed on any code but OK; a server only failed on the
/// codes that mean it broke, not on the caller's mistakes.
fn is_error(side: Side, code: Code) -> bool {
    match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_fails_on_its_own_faults_a_client_on_any_code_but_ok() {
        for code in [
            Code::Internal,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unknown,
        ] {
            assert!(is_error(Side::Server, code), "{code:?}");
            assert!(is_error(Side::Client, code), "{code:?}");
        }
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::PermissionDenied,
        ] {
            assert!(!is_error(Side::Server, code), "{code:?}");
            assert!(is_error(Side::Client, code), "{code:?}");
        }
        assert!(!is_error(Side::Server, Code::Ok) && !is_error(Side::Client, Code::Ok));
    }
}
