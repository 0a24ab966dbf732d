//! Log lines that say which trace they belong to: every line emitted inside a traced span gets the
//! span's `trace_id` and `span_id`, the fields log pipelines (Loki, Elasticsearch) link to Jaeger
//! by. The ids are spliced in front of whatever the inner formatter wrote, so the JSON and text
//! formats stay tracing-subscriber's own.

use std::fmt;

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
        // The current span's, or its nearest traced ancestor's; sampled or not, so logs of a
        // request that is not exported still share its id with the other hops' logs.
        let context = super::context::current_span_context();
        if !context.is_valid() {
            return self.inner.format_event(ctx, writer, event);
        }
        let (trace_id, span_id) = (context.trace_id(), context.span_id());
        if !self.json {
            write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        // JSON: the ids become the object's first fields, spliced in after its brace.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}
