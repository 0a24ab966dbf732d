//! Logging: `tracing` with JSON lines by default (what log pipelines parse) or human-readable text
//! (`FLOTILLA_LOG_FORMAT=text`), filtered by `RUST_LOG` (default `info`); traces: [`traces`] (the
//! OTLP pipeline), the request spans ([`grpc_spans`], [`http_spans`]) and [`context`] (W3C
//! propagation); and Prometheus metrics: [`metrics`] (the registry and `/metrics`),
//! [`grpc_metrics`] (per gRPC method, both sides of a call), [`http_metrics`] and [`process`]
//! (CPU, memory, file descriptors).

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Settings};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable text for a terminal.
    Text,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `FLOTILLA_LOG_FORMAT`: `json` (default) or `text`.
    pub format: LogFormat,
    /// `RUST_LOG`: the filter directive (default `info`).
    pub filter: String,
}

impl LogConfig {
    /// Reads `FLOTILLA_LOG_FORMAT` and `RUST_LOG`.
    ///
    /// # Errors
    /// A [`ConfigError`] for a format other than `json` or `text`, or a filter that does not parse.
    pub fn from_settings(
        settings: &Settings,
        default_format: LogFormat,
    ) -> Result<Self, ConfigError> {
        let default_name = match default_format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        };
        let format = match settings
            .choice("FLOTILLA_LOG_FORMAT", default_name, &["json", "text"])?
            .as_str()
        {
            "text" => LogFormat::Text,
            _ => LogFormat::Json,
        };
        let filter = settings.string("RUST_LOG", "info")?;
        if let Err(error) = EnvFilter::try_new(&filter) {
            return Err(ConfigError::Invalid {
                name: "RUST_LOG".into(),
                value: filter,
                origin: settings.origin("RUST_LOG"),
                expected: format!("a tracing filter such as info or flotilla=debug,info ({error})"),
            });
        }
        Ok(Self { format, filter })
    }
}

/// Installs the global subscriber: log lines to stderr as `config` says, each one emitted inside a
/// traced request carrying its `trace_id` and `span_id`, and, with `traces`, every span exported
/// through OpenTelemetry. Call once, first thing (inside the runtime, when tracing); a second call
/// is ignored.
pub fn init(config: &LogConfig, traces: Option<&traces::Traces>) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let tracer = traces.map(|traces| traces.provider().tracer("flotilla"));
    let result = subscriber::dispatch(config, std::io::stderr, tracer).try_init();
    // A subscriber already installed (a test harness) is fine.
    drop(result);
}

/// The target of the request spans made for traces (HTTP, gRPC, database): recorded by the
/// OpenTelemetry layer, left out of log lines.
pub const TRACE_TARGET: &str = "flotilla::trace";

/// Whether request spans are recorded at all: false with no exporter, where the log layer turns
/// [`TRACE_TARGET`] off. The span layers ask it first, since naming a span (a route copied, a
/// method looked up, a `traceparent` read) costs even when the span is then disabled.
pub(crate) fn request_spans_on() -> bool {
    tracing::enabled!(target: TRACE_TARGET, tracing::Level::INFO)
}

mod call_end;
pub mod context;
pub mod grpc_metrics;
pub mod grpc_spans;
pub mod http_metrics;
pub mod http_spans;
mod log_ids;
pub mod metrics;
mod otlp_http;
pub mod process;
mod subscriber;
pub mod traces;
