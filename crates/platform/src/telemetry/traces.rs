//! OpenTelemetry traces: `tracing` spans exported over OTLP to Jaeger or any collector, configured
//! by OpenTelemetry's own variables:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | the collector's base URL (`http://jaeger:4317`); unset, nothing is exported |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the same for traces alone, used exactly as given |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `…_TRACES_PROTOCOL` | `grpc` (default) or `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT`, `…_TRACES_TIMEOUT` | milliseconds an export may take (10000) |
//! | `OTEL_SERVICE_NAME` | `service.name` (default: the component, `product`) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the sampler (default `parentbased_traceidratio` at 1.0) |
//! | `OTEL_SDK_DISABLED` | `true` turns tracing off |
//!
//! Spans are batched by the SDK's batch processor, on a thread of its own, and flushed at shutdown
//! ([`Traces::shutdown`]). With no endpoint the OpenTelemetry layer is not installed at all, and
//! the request spans are not even made (`telemetry::request_spans_on`). The resource also takes
//! `OTEL_RESOURCE_ATTRIBUTES`, as every SDK does.
//!
//! Several components in one process (`flotilla up`) export under their own `service.name`, so
//! Jaeger shows the gateway, auth, user and product services as they are under `serve`: spans carry
//! `flotilla.component` (from [`super::context::component`]) and [`ByComponent`] sends each
//! component's spans through an exporter whose resource names it. Every component shares
//! `service.namespace` `flotilla`.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};

use crate::config::{ConfigError, Settings};

/// The attribute that names the component a span was made in.
pub const COMPONENT_ATTRIBUTE: &str = "flotilla.component";

/// Every OpenTelemetry variable these settings read.
pub const TRACE_SETTINGS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
];

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// Which spans are recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    /// Every span.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// A share of traces, by trace id.
    TraceIdRatio(f64),
    /// As the caller decided; a trace that starts here is always recorded.
    ParentBasedAlwaysOn,
    /// As the caller decided; a trace that starts here never is.
    ParentBasedAlwaysOff,
    /// As the caller decided; a share of the traces that start here.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

/// Trace export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// Where spans go, the full URL for the protocol (`…/v1/traces` for HTTP); `None`: nowhere.
    pub endpoint: Option<String>,
    /// How.
    pub protocol: OtlpProtocol,
    /// How long one export may take.
    pub timeout: Duration,
    /// `OTEL_SERVICE_NAME`, over the component's own name.
    pub service_name: Option<String>,
    /// Which spans are recorded.
    pub sampler: SamplerChoice,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            timeout: Duration::from_secs(10),
            service_name: None,
            sampler: SamplerChoice::ParentBasedTraceIdRatio(1.0),
        }
    }
}

impl TraceConfig {
    /// Reads OpenTelemetry's variables (the table in the module documentation).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable for an endpoint that is not an `http(s)://` URL, an
    /// unknown protocol or sampler, or a ratio outside 0 to 1.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        // The signal's own variable, where set, over the general one (the OTLP exporter spec).
        let protocols = ["grpc", "http/protobuf"];
        let general = settings.choice("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", &protocols)?;
        let protocol = match settings
            .choice("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", &general, &protocols)?
            .as_str()
        {
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            _ => OtlpProtocol::Grpc,
        };
        let schemes = ["http", "https"];
        let endpoint =
            match settings.optional_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &schemes)? {
                Some(exact) => Some(exact),
                None => settings
                    .optional_url("OTEL_EXPORTER_OTLP_ENDPOINT", &schemes)?
                    .map(|base| match protocol {
                        // The base URL gets the signal's path for HTTP; gRPC names the service itself.
                        OtlpProtocol::HttpProtobuf => {
                            format!("{}/v1/traces", base.trim_end_matches('/'))
                        }
                        OtlpProtocol::Grpc => base,
                    }),
            };
        let general =
            settings.milliseconds("OTEL_EXPORTER_OTLP_TIMEOUT", Duration::from_secs(10))?;
        let timeout = settings.milliseconds("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", general)?;
        let service_name = settings.optional_string("OTEL_SERVICE_NAME")?;
        let ratio = settings.fraction("OTEL_TRACES_SAMPLER_ARG", 1.0)?;
        let sampler = match settings
            .choice(
                "OTEL_TRACES_SAMPLER",
                "parentbased_traceidratio",
                &[
                    "always_on",
                    "always_off",
                    "traceidratio",
                    "parentbased_always_on",
                    "parentbased_always_off",
                    "parentbased_traceidratio",
                ],
            )?
            .as_str()
        {
            "always_on" => SamplerChoice::AlwaysOn,
            "always_off" => SamplerChoice::AlwaysOff,
            "traceidratio" => SamplerChoice::TraceIdRatio(ratio),
            "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
            _ => SamplerChoice::ParentBasedTraceIdRatio(ratio),
        };
        let disabled = settings.bool("OTEL_SDK_DISABLED", false)?;
        Ok(Self {
            endpoint: if disabled { None } else { endpoint },
            protocol,
            timeout,
            service_name,
            sampler,
        })
    }
}

/// The running trace pipeline; flush it with [`Traces::shutdown`] before the process exits.
#[derive(Debug, Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
    timeout: Duration,
}

/// A trace exporter that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP trace exporter to {endpoint} cannot be built: {reason}")]
pub struct TraceExportError {
    endpoint: String,
    reason: String,
}

impl Traces {
    /// Builds the pipeline `config` describes, for spans of `components` (each exported under its
    /// own `service.name`, or `OTEL_SERVICE_NAME` when set and there is one component); `None`
    /// without an endpoint. Call inside a tokio runtime: the gRPC exporter's channel runs on it.
    ///
    /// # Errors
    /// [`TraceExportError`] when an exporter cannot be built.
    pub fn start(
        config: &TraceConfig,
        components: &[&'static str],
    ) -> Result<Option<Self>, TraceExportError> {
        let Some(endpoint) = &config.endpoint else {
            return Ok(None);
        };
        let name_of = |component: &str| match (&config.service_name, components.len()) {
            (Some(name), 1) => name.clone(),
            _ => component.to_owned(),
        };
        // Spans no component claims (work outside a request) go under the process's one
        // component when there is one, else OTEL_SERVICE_NAME or "flotilla".
        let fallback_name = match (components, &config.service_name) {
            ([only], _) => name_of(only),
            (_, Some(name)) => name.clone(),
            _ => "flotilla".to_owned(),
        };
        let builder = SdkTracerProvider::builder().with_sampler(config.sampler.sampler());
        let provider = if components.len() > 1 {
            let mut by_component = BTreeMap::new();
            for component in components {
                let mut exporter = exporter(config, endpoint)?;
                exporter.set_resource(&resource(&name_of(component)));
                by_component.insert(*component, exporter);
            }
            let mut fallback = exporter(config, endpoint)?;
            fallback.set_resource(&resource(&fallback_name));
            builder.with_batch_exporter(ByComponent {
                by_component,
                fallback,
            })
        } else {
            // One component (`serve`): one exporter, the name on the provider's resource, which
            // the SDK hands to the exporter.
            builder
                .with_resource(resource(&fallback_name))
                .with_batch_exporter(exporter(config, endpoint)?)
        }
        .build();
        Ok(Some(Self {
            provider,
            timeout: config.timeout,
        }))
    }

    /// The provider, for the `tracing` layer.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports what is still batched and stops. Blocks for at most the export timeout and a
    /// second (the components' exports run side by side); call it outside the runtime's worker
    /// threads (after `block_on` has returned) with the runtime still alive.
    pub fn shutdown(&self) {
        let patience = self.timeout + Duration::from_secs(1);
        if let Err(error) = self.provider.shutdown_with_timeout(patience) {
            tracing::warn!(%error, "flushing the last spans failed");
        }
    }
}

fn resource(service_name: &str) -> Resource {
    // builder() reads OTEL_RESOURCE_ATTRIBUTES and adds the SDK's own attributes; the name is ours.
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attributes([
            KeyValue::new("service.namespace", "flotilla"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

fn exporter(
    config: &TraceConfig,
    endpoint: &str,
) -> Result<opentelemetry_otlp::SpanExporter, TraceExportError> {
    let failed = |reason: String| TraceExportError {
        endpoint: crate::config::redact_url_password(endpoint),
        reason,
    };
    let built = match config.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(config.timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(config.timeout)
            .with_http_client(
                super::otlp_http::ReqwestOnTokio::new(config.timeout).map_err(failed)?,
            )
            .build(),
    };
    built.map_err(|error| failed(error.to_string()))
}

/// Sends each component's spans through the exporter whose resource names it. An exporter call is
/// never concurrent with another on the same exporter (the SDK's rule), so each inner exporter is
/// used as the SDK would use it.
#[derive(Debug)]
struct ByComponent {
    by_component: BTreeMap<&'static str, opentelemetry_otlp::SpanExporter>,
    fallback: opentelemetry_otlp::SpanExporter,
}

impl ByComponent {
    fn exporters(&self) -> impl Iterator<Item = &opentelemetry_otlp::SpanExporter> {
        self.by_component
            .values()
            .chain(std::iter::once(&self.fallback))
    }
}

impl SpanExporter for ByComponent {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut groups: BTreeMap<Option<&'static str>, Vec<SpanData>> = BTreeMap::new();
        for span in batch {
            let component = span
                .attributes
                .iter()
                .find(|attribute| attribute.key.as_str() == COMPONENT_ATTRIBUTE)
                .and_then(|attribute| {
                    let name = attribute.value.as_str();
                    let (known, _) = self.by_component.get_key_value(name.as_ref())?;
                    Some(*known)
                });
            groups.entry(component).or_default().push(span);
        }
        // Side by side: each group has an exporter of its own, so the SDK's rule (one export at a
        // time per exporter) holds, and a flush takes one export's time, not one per component.
        let exports = groups.into_iter().map(|(component, spans)| {
            let exporter = component
                .and_then(|component| self.by_component.get(component))
                .unwrap_or(&self.fallback);
            exporter.export(spans)
        });
        let failures: Vec<String> = futures::future::join_all(exports)
            .await
            .into_iter()
            .filter_map(|result| result.err().map(|error| error.to_string()))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(failures.join("; ")))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Every exporter is asked, whichever fails first.
        let results: Vec<OTelSdkResult> = self
            .exporters()
            .map(|exporter| exporter.shutdown_with_timeout(timeout))
            .collect();
        results.into_iter().collect()
    }

    fn force_flush(&self) -> OTelSdkResult {
        let results: Vec<OTelSdkResult> = self.exporters().map(SpanExporter::force_flush).collect();
        results.into_iter().collect()
    }

    fn set_resource(&mut self, _resource: &Resource) {
        // Each inner exporter keeps the resource that names its component.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn without_an_endpoint_nothing_is_exported_and_defaults_follow_the_spec() -> TestResult {
        let config = TraceConfig::from_settings(&Settings::from_pairs::<_, &str, &str>([]))?;
        assert_eq!(config, TraceConfig::default());
        assert_eq!(config.sampler, SamplerChoice::ParentBasedTraceIdRatio(1.0));
        Ok(())
    }

    #[test]
    fn the_base_endpoint_gets_the_signal_path_for_http_only() -> TestResult {
        let grpc = TraceConfig::from_settings(&Settings::from_pairs([(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://jaeger:4317",
        )]))?;
        assert_eq!(grpc.endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(grpc.protocol, OtlpProtocol::Grpc);
        let http = TraceConfig::from_settings(&Settings::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))?;
        assert_eq!(
            http.endpoint.as_deref(),
            Some("http://jaeger:4318/v1/traces")
        );
        let exact = TraceConfig::from_settings(&Settings::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
        ]))?;
        assert_eq!(
            exact.endpoint.as_deref(),
            Some("http://collector:4318/custom")
        );
        assert_eq!(exact.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(exact.timeout, Duration::from_millis(2500));
        Ok(())
    }

    #[test]
    fn samplers_and_the_switch_off() -> TestResult {
        let config = TraceConfig::from_settings(&Settings::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_TRACES_SAMPLER", "TraceIdRatio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "catalogue"),
        ]))?;
        assert_eq!(config.sampler, SamplerChoice::TraceIdRatio(0.25));
        assert_eq!(config.service_name.as_deref(), Some("catalogue"));
        let off = TraceConfig::from_settings(&Settings::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ]))?;
        assert_eq!(off.endpoint, None);
        Ok(())
    }

    #[test]
    fn bad_values_name_the_variable_and_the_form() {
        for (name, value, expected) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4317", "http://"),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "http/json",
                "grpc, http/protobuf",
            ),
            (
                "OTEL_TRACES_SAMPLER",
                "sometimes",
                "parentbased_traceidratio",
            ),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5", "from 0 to 1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "milliseconds"),
        ] {
            let error = TraceConfig::from_settings(&Settings::from_pairs([(name, value)]))
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(
                error.contains(name) && error.contains(value) && error.contains(expected),
                "{name}={value}: {error}"
            );
        }
    }
}
