//! Prometheus metrics: each component's registry, rendered at `/metrics` on its admin listener.
//!
//! Metrics are registered when the component is built (STYLE: vector's `internal_events`,
//! linkerd's `HttpMetrics::register`), with bounded label sets; what is only known at scrape time
//! (breaker states, instance counts, pool usage, the process's CPU and memory) comes from
//! collectors that read the live state when Prometheus asks.
//!
//! One registry serves two formats, chosen by the scraper's `Accept` header: the Prometheus text
//! format (0.0.4, what `curl` gets) and OpenMetrics 1.0 text, which Prometheus asks for first and
//! which carries exemplars. `prometheus-client`, the Prometheus project's own Rust client, encodes
//! both; `metrics-exporter-prometheus` has no exemplars, which the latency histograms need.
//!
//! A [`Metrics`] is a list of registries: its own, plus any it [includes](Metrics::include). A
//! process running several components (`flotilla up`) gives each its own registry and includes
//! the process-wide one (the clients, discovery and process metrics) in exactly one of them, so
//! that a Prometheus scraping every listener counts nothing twice.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::registry::{Metric, Registry};

/// Bucket bounds, in seconds, of every latency histogram: from 100 µs, where a healthy call
/// through Flotilla sits, to 10 s, past the gateway's default deadline.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The exemplar a latency observation carries in OpenMetrics: the trace it was part of, so a slow
/// bucket leads to a trace in Jaeger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct TraceExemplar {
    /// 32 lower-case hex digits.
    pub trace_id: String,
}

impl TraceExemplar {
    /// The exemplar of the current span's trace, when it is sampled.
    pub fn current() -> Option<Self> {
        let context = super::context::current_span_context();
        (context.is_valid() && context.is_sampled()).then(|| Self {
            trace_id: context.trace_id().to_string(),
        })
    }
}

/// A latency histogram with [`LATENCY_BUCKETS`], each bucket keeping the trace of its latest
/// observation.
pub type LatencyHistogram =
    prometheus_client::metrics::exemplar::HistogramWithExemplars<TraceExemplar>;

/// A new [`LatencyHistogram`].
pub fn latency_histogram() -> LatencyHistogram {
    LatencyHistogram::new(LATENCY_BUCKETS.into_iter())
}

/// Encodes one gauge family read at scrape time: `name` with a sample per label set, for the
/// collectors that report figures other parts keep (a pool's size, a limit, instance counts).
///
/// # Errors
/// A formatting error from the encoder.
pub(crate) fn encode_gauges<L, V>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result<(), fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    prometheus_client::metrics::gauge::ConstGauge<V>: prometheus_client::encoding::EncodeMetric,
{
    use prometheus_client::metrics::gauge::ConstGauge;
    let samples = samples.into_iter();
    encode_family(
        encoder,
        name,
        help,
        samples.map(|(labels, value)| (labels, ConstGauge::new(value))),
    )
}

/// Encodes one family of samples read at scrape time, of the metrics' own type: gauges through
/// [`encode_gauges`], counts another part keeps as `ConstCounter`s.
///
/// # Errors
/// A formatting error from the encoder.
pub(crate) fn encode_family<L, M>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: prometheus_client::encoding::EncodeMetric + prometheus_client::metrics::TypedMetric,
{
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text, with exemplars.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality above 0, the Prometheus text format
    /// otherwise (no header, `*/*`, `text/plain`).
    pub fn negotiate(accept: Option<&HeaderValue>) -> Self {
        let Some(accept) = accept.and_then(|value| value.to_str().ok()) else {
            return Self::Prometheus;
        };
        let wants_openmetrics = accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|parameter| {
                parameter
                    .strip_prefix("q=")
                    .and_then(|quality| quality.parse::<f64>().ok())
                    .is_some_and(|quality| quality <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// A component's metrics: where it registers them and what its `/metrics` renders. Clones share
/// the registries.
#[derive(Clone, Default)]
pub struct Metrics {
    own: Arc<RwLock<Registry>>,
    included: Vec<Arc<RwLock<Registry>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("included", &self.included.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `metric` as `name` (counters without their `_total`, which the encoders add).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.own
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// Registers a collector, asked for its metrics at every scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.own
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(Box::new(collector));
    }

    /// Renders `other`'s metrics after this one's own: the registries `other` holds now (a
    /// snapshot; what `other` includes later is not seen here). Including the same registry twice,
    /// or this one itself, changes nothing. The registries must not share metric names.
    pub fn include(&mut self, other: &Metrics) {
        for registry in std::iter::once(&other.own).chain(&other.included) {
            let known = std::iter::once(&self.own)
                .chain(&self.included)
                .any(|mine| Arc::ptr_eq(mine, registry));
            if !known {
                self.included.push(Arc::clone(registry));
            }
        }
    }

    /// Everything registered, in `format`.
    ///
    /// # Errors
    /// A formatting error from a collector or an encoder.
    pub fn render(&self, format: Format) -> Result<String, fmt::Error> {
        use prometheus_client::encoding::{prometheus_text, text};
        let mut rendered = String::new();
        for registry in std::iter::once(&self.own).chain(&self.included) {
            let registry = registry.read().unwrap_or_else(PoisonError::into_inner);
            match format {
                Format::Prometheus => prometheus_text::encode(&mut rendered, &registry)?,
                Format::OpenMetrics => text::encode_registry(&mut rendered, &registry)?,
            }
        }
        if format == Format::OpenMetrics {
            text::encode_eof(&mut rendered)?;
        }
        Ok(rendered)
    }
}

/// `GET /metrics`: the component's metrics in the format the `Accept` header asks for.
pub async fn endpoint(State(metrics): State<Metrics>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT));
    match metrics.render(format) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering the metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the metrics failed\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn accept_chooses_openmetrics_only_when_asked_for() {
        let negotiate =
            |accept: &'static str| Format::negotiate(Some(&HeaderValue::from_static(accept)));
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(negotiate("*/*"), Format::Prometheus);
        assert_eq!(negotiate("text/plain"), Format::Prometheus);
        // What Prometheus 2.x and 3.x send.
        assert_eq!(
            negotiate(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate("Application/OpenMetrics-Text"),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate("application/openmetrics-text;q=0, text/plain"),
            Format::Prometheus
        );
    }

    #[test]
    fn both_formats_render_own_and_included_registries_once() -> TestResult {
        let mut component = Metrics::new();
        let process = Metrics::new();
        let calls = Counter::<u64>::default();
        let restarts = Counter::<u64>::default();
        component.register("calls", "Calls handled", calls.clone());
        process.register("restarts", "Restarts seen", restarts.clone());
        component.include(&process);
        component.include(&process);
        component.include(&component.clone());
        calls.inc_by(3);
        restarts.inc();

        let text = component.render(Format::Prometheus)?;
        assert!(
            text.contains("# TYPE calls_total counter\ncalls_total 3\n"),
            "{text}"
        );
        assert_eq!(text.matches("restarts_total 1\n").count(), 1, "{text}");
        assert!(!text.contains("# EOF"), "{text}");

        let open = component.render(Format::OpenMetrics)?;
        assert!(
            open.contains("# TYPE calls counter\ncalls_total 3\n"),
            "{open}"
        );
        assert_eq!(open.matches("restarts_total 1\n").count(), 1, "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
        // The process registry alone knows nothing of the component's.
        assert!(!process.render(Format::Prometheus)?.contains("calls"));
        Ok(())
    }
}
