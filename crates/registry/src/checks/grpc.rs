//! gRPC checks: `grpc.health.v1.Health/Check` (the [gRPC health checking protocol]) through
//! tonic-health's client, as Consul's `agent/checks/grpc.go` runs them.
//!
//! The target is `host:port`, or `host:port/service` to ask about one service instead of the whole
//! server (Consul's format). SERVING is passing; any other answer or any error is critical.
//! Plaintext unless `GRPCUseTLS`; with TLS the certificate is verified against the system's roots,
//! unless `TLSSkipVerify`. The channel connects lazily and reconnects by itself, so a restarted
//! instance is seen at its next run.
//!
//! [gRPC health checking protocol]: https://github.com/grpc/grpc/blob/master/doc/health-checking.md

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Verdict;
use crate::domain::Status;

pub(super) struct GrpcProbe {
    /// The target as registered, for outputs.
    target: String,
    /// The service asked about (`""`: the whole server).
    service: String,
    /// Connected afresh for every run and closed after it, as Consul's agent does: a connection
    /// kept per check would hold a socket and its HTTP/2 state (60-90 KiB) for every registered
    /// instance between runs.
    endpoint: Box<Endpoint>,
}

impl GrpcProbe {
    pub(super) fn new(
        target: &str,
        use_tls: bool,
        tls_skip_verify: bool,
        timeout: Duration,
    ) -> Result<Self, String> {
        let (server, service) = target.split_once('/').unwrap_or((target, ""));
        let scheme = if use_tls { "https" } else { "http" };
        let invalid =
            |error: tonic::transport::Error| format!("invalid gRPC target {target:?}: {error}");
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{server}"))
            .map_err(invalid)?
            .connect_timeout(timeout)
            .timeout(timeout);
        if use_tls {
            endpoint = if tls_skip_verify {
                endpoint
                    .tls_config_with_verifier(
                        ClientTlsConfig::new(),
                        Arc::new(AnyCertificate::new()),
                    )
                    .map_err(invalid)?
            } else {
                endpoint
                    .tls_config(ClientTlsConfig::new().with_native_roots())
                    .map_err(invalid)?
            };
        }
        Ok(Self {
            target: target.to_owned(),
            service: service.to_owned(),
            endpoint: Box::new(endpoint),
        })
    }

    /// Consul's output when a run takes longer than its timeout (Go gRPC's deadline error).
    pub(super) fn timed_out(&self) -> String {
        "rpc error: code = DeadlineExceeded desc = context deadline exceeded".to_owned()
    }

    /// One run. Outputs are Consul's: `gRPC check <target>: success`, `gRPC <target> serving
    /// status: NOT_SERVING`, or the call's error as Go's gRPC prints it.
    pub(super) async fn probe(&self) -> Verdict {
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        let channel: Channel = match self.endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                return (
                    Status::Critical,
                    format!(
                        "rpc error: code = Unavailable desc = connection error: {}",
                        source_chain(&error)
                    ),
                );
            }
        };
        match HealthClient::new(channel).check(request).await {
            Ok(response) => {
                let status = ServingStatus::try_from(response.into_inner().status)
                    .unwrap_or(ServingStatus::Unknown);
                if status == ServingStatus::Serving {
                    (
                        Status::Passing,
                        format!("gRPC check {}: success", self.target),
                    )
                } else {
                    (
                        Status::Critical,
                        format!(
                            "gRPC {} serving status: {}",
                            self.target,
                            status.as_str_name()
                        ),
                    )
                }
            }
            Err(status) => (
                Status::Critical,
                format!(
                    "rpc error: code = {:?} desc = {}",
                    status.code(),
                    status.message()
                ),
            ),
        }
    }
}

/// An error with its causes, `outer: inner: innermost`, as Go prints wrapped errors.
fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `TLSSkipVerify` for gRPC: accepts any server certificate (Go's `InsecureSkipVerify`), while
/// still checking that the handshake is signed by the key in the certificate presented.
#[derive(Debug)]
struct AnyCertificate {
    provider: rustls::crypto::CryptoProvider,
}

impl AnyCertificate {
    fn new() -> Self {
        Self {
            provider: rustls::crypto::ring::default_provider(),
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
