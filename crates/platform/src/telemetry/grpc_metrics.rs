//! gRPC metrics per service and method, on both sides of a call, in the names existing Grafana
//! dashboards read (go-grpc-prometheus):
//!
//! - `grpc_server_started_total{grpc_service, grpc_method, grpc_type}`,
//!   `grpc_server_handled_total{…, grpc_code}` (Go's code names: `OK`, `NotFound`) and
//!   `grpc_server_handling_seconds{…}`, a histogram from the request to the end of the answer;
//! - the same three as `grpc_client_…` for the calls a component makes, where `grpc_service`
//!   names the service called;
//! - on servers, Flotilla's own `grpc_requests_total{service, method, code}`, `service` the
//!   component ("product") and `code` the canonical name (`NOT_FOUND`).
//!
//! Labels are bounded: a method outside Flotilla's protos, health and reflection (any path a
//! client can make up) is counted as `unknown`, never by its path. A call is handled when it ends
//! ([`super::call_end`]): with an error (its code), trailers-only headers or trailers (their
//! status), or abandoned on the way (`DeadlineExceeded` past its `grpc-timeout`, `Canceled`
//! before).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;

use super::call_end::{CallEnd, watch};
use super::metrics::{LatencyHistogram, Metrics, TraceExemplar, latency_histogram};
use crate::resilience::retry::IdempotentMethods;

/// The methods a Flotilla component can serve or call: its own protos, health and reflection.
static KNOWN: LazyLock<IdempotentMethods> = LazyLock::new(|| {
    let mut known = IdempotentMethods::default();
    for set in [
        flotilla_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        match prost::Message::decode(set) {
            Ok(decoded) => known.add(&decoded),
            Err(error) => tracing::error!(%error, "a descriptor set does not decode"),
        }
    }
    known
});

/// The metric labels of every method in [`KNOWN`], by path, and `unknown` last: resolving a path
/// once to an index lets a call find its metrics without hashing labels.
struct MethodTable {
    by_path: HashMap<&'static str, usize>,
    labels: Vec<MethodLabels>,
}

static METHODS: LazyLock<MethodTable> = LazyLock::new(|| {
    let mut table = MethodTable {
        by_path: HashMap::new(),
        labels: Vec::new(),
    };
    for (path, kind) in KNOWN.iter() {
        if let Some((grpc_service, grpc_method)) =
            path.strip_prefix('/').and_then(|rest| rest.split_once('/'))
        {
            table.by_path.insert(path, table.labels.len());
            table.labels.push(MethodLabels {
                grpc_service,
                grpc_method,
                grpc_type: kind.grpc_type,
            });
        }
    }
    table.labels.push(MethodLabels {
        grpc_service: "unknown",
        grpc_method: "unknown",
        grpc_type: "unknown",
    });
    table
});

/// The index in [`METHODS`] of the method at `path`; the last one (`unknown`) for a path outside
/// the known protos.
fn method_index(path: &str) -> usize {
    METHODS
        .by_path
        .get(path)
        .copied()
        .unwrap_or(METHODS.labels.len() - 1)
}

/// `grpc_service`, `grpc_method` and `grpc_type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_type: &'static str,
}

/// The method's labels and `grpc_code`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandledLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_type: &'static str,
    grpc_code: &'static str,
}

/// The labels of `grpc_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

type LatencyFamily = Family<MethodLabels, LatencyHistogram, fn() -> LatencyHistogram>;

/// The metrics of one side (server or client) of a component's gRPC calls, registered once.
/// Clones share the counts.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
struct Families {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: LatencyFamily,
    /// `grpc_requests_total` and the component it is labelled with; servers only.
    requests: Option<(&'static str, Family<RequestLabels, Counter>)>,
    /// Each method's series out of the families above, taken on its first call ([`method_index`]
    /// order). A series handle shares its value with the family, which still encodes it.
    methods: Box<[OnceLock<MethodMetrics>]>,
}

/// The number of gRPC status codes (`OK` is 0, `UNAUTHENTICATED` 16).
const CODES: usize = 17;

/// One method's series.
#[derive(Debug)]
struct MethodMetrics {
    labels: MethodLabels,
    started: Counter,
    handling: LatencyHistogram,
    /// `grpc_*_handled_total` by code (`code as usize`, every code below [`CODES`]), each taken
    /// when first needed.
    handled: [OnceLock<Counter>; CODES],
    /// `grpc_requests_total` by code (servers only).
    requests: [OnceLock<Counter>; CODES],
}

impl Families {
    /// The series of the method at `index`, which [`method_index`] gave: always in range.
    fn method(&self, index: usize) -> &MethodMetrics {
        self.methods[index].get_or_init(|| {
            let labels = METHODS.labels[index].clone();
            MethodMetrics {
                started: self.started.get_or_create(&labels).clone(),
                handling: self.handling.get_or_create(&labels).clone(),
                labels,
                handled: std::array::from_fn(|_| OnceLock::new()),
                requests: std::array::from_fn(|_| OnceLock::new()),
            }
        })
    }
}

impl GrpcMetrics {
    /// Registers the server-side metrics of `component` ("product") in `metrics`.
    pub fn server(component: &'static str, metrics: &Metrics) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        metrics.register(
            "grpc_requests",
            "gRPC calls handled, by component, method and canonical status code",
            requests.clone(),
        );
        Self::register(metrics, "server", "handled", Some((component, requests)))
    }

    /// Registers the client-side metrics of a component's calls in `metrics`.
    pub fn client(metrics: &Metrics) -> Self {
        Self::register(metrics, "client", "completed", None)
    }

    fn register(
        metrics: &Metrics,
        side: &str,
        verb: &str,
        requests: Option<(&'static str, Family<RequestLabels, Counter>)>,
    ) -> Self {
        let families = Families {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(latency_histogram),
            requests,
            methods: METHODS.labels.iter().map(|_| OnceLock::new()).collect(),
        };
        metrics.register(
            &format!("grpc_{side}_started"),
            &format!("gRPC calls started on the {side} side"),
            families.started.clone(),
        );
        metrics.register(
            &format!("grpc_{side}_handled"),
            &format!("gRPC calls {verb} on the {side} side, by status code"),
            families.handled.clone(),
        );
        metrics.register(
            &format!("grpc_{side}_handling_seconds"),
            &format!("Time from a gRPC call's start to the end of its answer, {side} side"),
            families.handling.clone(),
        );
        Self {
            inner: Arc::new(families),
        }
    }

    fn start(&self, path: &str) -> Call {
        let method = method_index(path);
        self.inner.method(method).started.inc();
        Call {
            metrics: Arc::clone(&self.inner),
            method,
            started: Instant::now(),
            exemplar: TraceExemplar::current(),
        }
    }
}

/// The service and method at `path` (`flotilla.product.v1.ProductService`, `GetProduct`), or
/// `unknown` twice for a path outside the known protos: names a client cannot multiply.
pub(crate) fn method_names(path: &str) -> (&'static str, &'static str) {
    let labels = &METHODS.labels[method_index(path)];
    (labels.grpc_service, labels.grpc_method)
}

/// Counts and times every call through it in a [`GrpcMetrics`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: GrpcMetrics,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: GrpcMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

/// The future of a call through [`GrpcMetricsService`].
pub type GrpcMetricsFuture<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: ErrorCode + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = GrpcMetricsFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.metrics.start(request.uri().path());
        let end = CallEnd::new(request.headers(), move |code| call.handled(code));
        Box::pin(watch(self.inner.call(request), end))
    }
}

/// The gRPC code a call's error stands for, read without consuming the error.
pub trait ErrorCode {
    /// The code tonic's client gives the caller for this error: the first [`tonic::Status`] in
    /// its chain, CANCELLED for a client-side timeout (tonic's "Timeout expired"), the HTTP/2
    /// reset's code for a stream reset, UNAVAILABLE for a failed connection, UNKNOWN otherwise.
    fn grpc_code(&self) -> Code;
}

impl ErrorCode for tower::BoxError {
    fn grpc_code(&self) -> Code {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(self.as_ref());
        while let Some(error) = current {
            if let Some(status) = error.downcast_ref::<tonic::Status>() {
                return status.code();
            }
            if error.is::<tonic::TimeoutExpired>() {
                return Code::Cancelled;
            }
            if let Some(reset) = error.downcast_ref::<h2::Error>() {
                return h2_code(reset);
            }
            if error.is::<std::io::Error>() {
                return Code::Unavailable;
            }
            current = error.source();
        }
        Code::Unknown
    }
}

/// gRPC's mapping of HTTP/2 error codes ("HTTP to gRPC Status Code Mapping", PROTOCOL-HTTP2).
fn h2_code(error: &h2::Error) -> Code {
    match error.reason() {
        Some(h2::Reason::NO_ERROR | h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
        None => Code::Unavailable,
    }
}

impl ErrorCode for std::convert::Infallible {
    fn grpc_code(&self) -> Code {
        match *self {}
    }
}

/// One call being measured.
#[derive(Debug)]
struct Call {
    metrics: Arc<Families>,
    /// Its method's index in [`METHODS`].
    method: usize,
    started: Instant,
    /// Taken at the start, inside the call's span (the answer may end outside it).
    exemplar: Option<TraceExemplar>,
}

impl Call {
    fn handled(self, code: Code) {
        let seconds = self.started.elapsed().as_secs_f64();
        let Self {
            metrics,
            method,
            exemplar,
            ..
        } = self;
        let series = metrics.method(method);
        let labels = &series.labels;
        if let Some((component, requests)) = &metrics.requests {
            series.requests[code as usize]
                .get_or_init(|| {
                    let labels = RequestLabels {
                        service: component,
                        method: labels.grpc_method,
                        code: canonical_name(code),
                    };
                    requests.get_or_create(&labels).clone()
                })
                .inc();
        }
        series.handled[code as usize]
            .get_or_init(|| {
                let labels = HandledLabels {
                    grpc_service: labels.grpc_service,
                    grpc_method: labels.grpc_method,
                    grpc_type: labels.grpc_type,
                    grpc_code: go_name(code),
                };
                metrics.handled.get_or_create(&labels).clone()
            })
            .inc();
        series.handling.observe(seconds, exemplar, None);
    }
}

/// The code's name in gRPC's own documentation (`NOT_FOUND`).
pub fn canonical_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code's name in Go's `codes` package, as go-grpc-prometheus labels it (`NotFound`).
fn go_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests;
