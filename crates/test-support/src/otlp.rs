//! An OTLP trace receiver: OpenTelemetry's own collector service (`opentelemetry-proto`'s
//! `TraceService`) served by tonic on a port-0 listener, or OTLP/HTTP's `POST /v1/traces` with a
//! protobuf body served by axum, keeping every span it is sent, so a test can point a component's
//! `OTEL_EXPORTER_OTLP_ENDPOINT` at it and read what was exported.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_stream::wrappers::TcpListenerStream;

/// One span as received, with the `service.name` of the resource it came under.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// OTLP's span kind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    /// Lower-case hex, 32 digits.
    pub trace_id: String,
    /// Lower-case hex, 16 digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Every attribute, its value as text.
    pub attributes: Vec<(String, String)>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// Its events (log lines inside the span): name and attributes.
    pub events: Vec<(String, Vec<(String, String)>)>,
}

impl ReceivedSpan {
    /// The value of attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// A running receiver; it stops with the test's runtime.
#[derive(Debug, Clone)]
pub struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1, port 0.
    pub async fn start() -> Self {
        let (listener, receiver) = Self::bind().await;
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        receiver
    }

    /// Starts a receiver of OTLP over HTTP with protobuf bodies on 127.0.0.1, port 0.
    pub async fn start_http() -> Self {
        let (listener, receiver) = Self::bind().await;
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export_http))
            .with_state(receiver.clone());
        tokio::spawn(axum::serve(listener, app).into_future());
        receiver
    }

    async fn bind() -> (tokio::net::TcpListener, Self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let receiver = Self {
            addr,
            spans: Arc::default(),
        };
        (listener, receiver)
    }

    /// The URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP over gRPC, or over HTTP for a
    /// receiver from [`Receiver::start_http`] (the exporter adds `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("the spans' lock").clone()
    }

    /// Waits, polling for at most `patience`, until `condition` holds over the spans received;
    /// returns them either way.
    pub async fn wait_for(
        &self,
        patience: Duration,
        condition: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let spans = || std::future::ready(self.spans());
        crate::poll_until(patience, Duration::from_millis(50), spans, |spans| {
            condition(spans)
        })
        .await
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// `POST /v1/traces`: an `ExportTraceServiceRequest` in protobuf, answered with an empty
/// `ExportTraceServiceResponse`.
async fn export_http(
    axum::extract::State(receiver): axum::extract::State<Receiver>,
    body: axum::body::Bytes,
) -> Result<([(axum::http::HeaderName, &'static str); 1], Vec<u8>), axum::http::StatusCode> {
    let request = <ExportTraceServiceRequest as prost::Message>::decode(body)
        .map_err(|_| axum::http::StatusCode::BAD_REQUEST)?;
    receiver.keep(request);
    let answer = prost::Message::encode_to_vec(&ExportTraceServiceResponse {
        partial_success: None,
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
        answer,
    ))
}

impl Receiver {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref())
                .map(|value| text(value.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: pairs(span.attributes),
                        status: span.status.map_or(0, |status| status.code),
                        events: span
                            .events
                            .into_iter()
                            .map(|event| (event.name, pairs(event.attributes)))
                            .collect(),
                    });
                }
            }
        }
        self.spans.lock().expect("the spans' lock").extend(received);
    }
}

fn pairs(attributes: Vec<KeyValue>) -> Vec<(String, String)> {
    attributes
        .into_iter()
        .map(|attribute| {
            let value = attribute
                .value
                .map(|value| text(value.value.as_ref()))
                .unwrap_or_default();
            (attribute.key, value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
