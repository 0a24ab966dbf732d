//! Trace context across hops and inside a process:
//!
//! - W3C trace context (`traceparent`, `tracestate`) read from incoming HTTP headers and gRPC
//!   metadata (both are HTTP/2 headers) and written into outgoing ones, with OpenTelemetry's
//!   `TraceContextPropagator`;
//! - the ids of the current trace, for log lines and exemplars;
//! - the component a call is being handled by, a task-local the server layers set, so that spans
//!   made by shared parts (the clients of discovery, the database) name the component they worked
//!   for when several run in one process.

use std::future::Future;
use std::sync::LazyLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

tokio::task_local! {
    static COMPONENT: &'static str;
}

/// Makes `span` the child of the trace context in `headers`, if they carry one. Call it before the
/// span is first entered: OpenTelemetry cannot re-parent a span that has started.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = PROPAGATOR.extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer (tracing off), where there is nothing to join.
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s trace context into `headers` (`traceparent`, `tracestate`), so the next hop's
/// spans join its trace. Without an OpenTelemetry layer there is no context and nothing is written.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        PROPAGATOR.inject_context(&context, &mut HeaderInjector(headers));
    }
}

/// The trace context of the current span, or of its nearest ancestor OpenTelemetry records (a
/// debug span, tower-http's say, is not traced, but the work in it belongs to the request around
/// it): tracing-opentelemetry makes an entered span's context OpenTelemetry's current one. Invalid
/// outside any traced span. Reads a thread-local: no lock, no subscriber.
pub fn current_span_context() -> SpanContext {
    opentelemetry::Context::map_current(|context| context.span().span_context().clone())
}

/// Runs `future` as work of `component` ("product").
pub async fn in_component<F: Future>(component: &'static str, future: F) -> F::Output {
    COMPONENT.scope(component, future).await
}

/// The component the current task works for, if a server layer said so.
pub fn component() -> Option<&'static str> {
    COMPONENT.try_with(|component| *component).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_component_is_known_inside_its_scope_only() {
        assert_eq!(component(), None);
        let inside = in_component("product", async { component() }).await;
        assert_eq!(inside, Some("product"));
    }

    #[test]
    fn without_opentelemetry_there_is_nothing_to_read_or_write() {
        let span = tracing::info_span!("no layer");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        continue_trace(&span, &headers);
        let mut outgoing = http::HeaderMap::new();
        inject(&span, &mut outgoing);
        assert!(outgoing.is_empty());
        let _entered = span.enter();
        assert!(!current_span_context().is_valid());
    }
}
