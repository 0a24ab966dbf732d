//! Log lines that say which trace they belong to: every line emitted inside a traced span gets the
//! span's `trace_id` and `span_id`, the fields log pipelines (Loki, Elasticsearch) link to Jaeger
//! by. The ids are spliced in front of whatever the inner formatter wrote, so the JSON and text
//! formats stay tracing-subscriber's own.

use std::fmt;

use opentelemetry::trace::{SpanId, TraceId};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a log line formatter, adding the current trace and span ids.
#[derive(Debug)]
pub(super) struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<F> WithTraceIds<F> {
    /// Around a JSON formatter: the ids become the object's first two fields.
    pub(super) fn json(inner: F) -> Self {
        Self { inner, json: true }
    }

    /// Around a text formatter: the ids lead the line.
    pub(super) fn text(inner: F) -> Self {
        Self { inner, json: false }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let Some((trace_id, span_id)) = ids(event) else {
            return writer.write_str(&line);
        };
        match line.strip_prefix('{') {
            Some(rest) if self.json => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            _ => write!(writer, "trace_id={trace_id} span_id={span_id} {line}"),
        }
    }
}

/// The ids of the span the event belongs to (its explicit parent, else the current span), or of
/// its nearest traced ancestor.
fn ids(event: &Event<'_>) -> Option<(TraceId, SpanId)> {
    tracing::dispatcher::get_default(|dispatch| {
        let start = event
            .parent()
            .cloned()
            .or_else(|| dispatch.current_span().id().cloned());
        super::context::recorded_ids(dispatch, start)
    })
}
