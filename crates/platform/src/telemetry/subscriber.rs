//! The `tracing` subscriber: the log layer alone, or the log layer and the OpenTelemetry layer each
//! with a filter of its own.
//!
//! Two layers with their own filters are where tracing-subscriber has a known flaw
//! (tokio-rs/tracing#2519): per-layer filters pass their verdicts to the layers through a
//! thread-local that only the next span or event clears. A question that every filter answers
//! "no" to and that no span or event follows (the `log` bridge asks one for every
//! `log_enabled!`, and sqlx asks after every query) leaves those "no"s behind, and the next
//! span or event whose callsite is cached as always enabled is then silently dropped. The
//! products' logs lost the "finished processing request" line after each PostgreSQL query that
//! way, and traces would lose spans. So:
//! - with logs only, the filter is global and no per-layer filter exists;
//! - with traces too, a global filter in front refuses whatever neither layer wants, which clears
//!   that state before any per-layer filter writes to it.
//!
//! A global filter that is a union of two [`Filter`]s is not in tracing-subscriber (its combinators
//! are per-layer only), hence [`Global`].

use opentelemetry_sdk::trace::SdkTracer;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber, span};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use super::{LogConfig, LogFormat, TRACE_TARGET, log_ids};

/// Spans are traced at info whatever RUST_LOG says of log lines: quieting the logs must not cut
/// the traces.
const TRACE_LEVEL: LevelFilter = LevelFilter::INFO;

/// The subscriber `config` describes, writing log lines to `writer` and, with `tracer`, recording
/// spans for OpenTelemetry.
pub(super) fn dispatch<W>(config: &LogConfig, writer: W, tracer: Option<SdkTracer>) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match tracer {
        // Static interests only: a callsite the filter turns off is never asked about again,
        // which is what makes a disabled `debug!` free.
        None => Dispatch::new(
            tracing_subscriber::registry()
                .with(log_filter(config))
                .with(log_layer(config.format, writer)),
        ),
        Some(tracer) => Dispatch::new(
            tracing_subscriber::registry()
                .with(trace_layer(tracer).with_filter(TRACE_LEVEL))
                .with(log_layer(config.format, writer).with_filter(log_filter(config)))
                .with(Global(log_filter(config).or(TRACE_LEVEL))),
        ),
    }
}

/// RUST_LOG, except the request spans, which are for traces: log lines carry their ids instead,
/// and formatting every span's fields cost a quarter of a GetProduct call.
fn log_filter(config: &LogConfig) -> EnvFilter {
    EnvFilter::try_new(format!("{},{TRACE_TARGET}=off", config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

fn log_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(writer)
            .map_event_format(log_ids::WithTraceIds::json)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .map_event_format(log_ids::WithTraceIds::text)
            .boxed(),
    }
}

fn trace_layer<S>(tracer: SdkTracer) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
}

/// A [`Filter`] used as a global filter: what it refuses, no layer sees.
struct Global<F>(F);

impl<S, F> Layer<S> for Global<F>
where
    S: Subscriber,
    F: Filter<S> + 'static,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.0.callsite_enabled(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, cx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, &cx)
    }

    fn event_enabled(&self, event: &Event<'_>, cx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, &cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    // An EnvFilter with span directives ("[request]=debug") tracks the spans it is in.
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        self.0.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx);
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx);
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Level;
    use tracing::callsite::Callsite;
    use tracing::field::{FieldSet, Value};
    use tracing::metadata::Kind;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;

    /// Log lines written, shared with the test.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Lines {
        fn text(&self) -> String {
            let bytes = self.0.lock().map(|bytes| bytes.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Self;

        fn make_writer(&'w self) -> Self {
            self.clone()
        }
    }

    /// Hand-made callsites, so that the test decides when `enabled` is asked: the macros' own
    /// callsites cache an interest shared by every dispatcher alive in the test process.
    struct Site(&'static Metadata<'static>);

    impl Callsite for Site {
        fn set_interest(&self, _: Interest) {}

        fn metadata(&self) -> &Metadata<'_> {
            self.0
        }
    }

    macro_rules! site {
        ($site:ident, $meta:ident, $name:literal, $target:literal, $level:expr, $kind:expr) => {
            static $site: Site = Site(&$meta);
            static $meta: Metadata<'static> = Metadata::new(
                $name,
                $target,
                $level,
                None,
                None,
                None,
                FieldSet::new(&["message"], tracing_core::identify_callsite!(&$site)),
                $kind,
            );
        };
    }

    // What `log::log_enabled!(target: "sqlx::query", Debug)` asks through the log bridge.
    site!(
        QUERY_SITE,
        QUERY,
        "log query",
        "sqlx::query",
        Level::DEBUG,
        Kind::EVENT
    );
    site!(
        LINE_SITE,
        LINE,
        "line",
        "flotilla",
        Level::INFO,
        Kind::EVENT
    );
    site!(
        SPAN_SITE,
        SPAN,
        "request",
        "flotilla",
        Level::INFO,
        Kind::SPAN
    );

    /// Asks `dispatch` about a debug line nobody wants, as the log bridge does, then emits an
    /// info line and starts an info span the way a callsite cached as "always" does: without
    /// asking first.
    fn refused_question_then_line_and_span(dispatch: &Dispatch) -> tracing::Span {
        tracing::dispatcher::with_default(dispatch, || {
            assert!(!dispatch.enabled(&QUERY));
            let field = LINE.fields().iter().next();
            let message = format_args!("the line after the question");
            if let Some(field) = field {
                Event::dispatch(
                    &LINE,
                    &LINE
                        .fields()
                        .value_set(&[(&field, Some(&message as &dyn Value))]),
                );
            }
            assert!(!dispatch.enabled(&QUERY));
            tracing::Span::new(&SPAN, &SPAN.fields().value_set(&[]))
        })
    }

    #[test]
    fn a_question_every_filter_refuses_drops_no_following_line_or_span() {
        let config = LogConfig {
            format: LogFormat::Json,
            filter: "info,tower_http=debug".into(),
        };

        let lines = Lines::default();
        let logs_only = dispatch(&config, lines.clone(), None);
        drop(refused_question_then_line_and_span(&logs_only));
        assert!(
            lines.text().contains("the line after the question"),
            "logs only: {}",
            lines.text()
        );

        let lines = Lines::default();
        let provider = SdkTracerProvider::builder().build();
        let traced = dispatch(&config, lines.clone(), Some(provider.tracer("test")));
        let span = refused_question_then_line_and_span(&traced);
        assert!(
            lines.text().contains("the line after the question"),
            "with traces: {}",
            lines.text()
        );
        let recorded = tracing::dispatcher::with_default(&traced, || {
            span.context().span().span_context().is_valid()
        });
        assert!(recorded, "the OpenTelemetry layer never saw the span");
    }

    #[test]
    fn what_either_layer_wants_passes_the_global_filter() {
        let config = LogConfig {
            format: LogFormat::Json,
            filter: "warn".into(),
        };
        let provider = SdkTracerProvider::builder().build();
        let traced = dispatch(&config, Lines::default(), Some(provider.tracer("test")));
        // Info spans are traced though the logs want warnings only; debug lines reach nobody.
        assert!(traced.enabled(&SPAN));
        assert!(!traced.enabled(&QUERY));
    }
}
