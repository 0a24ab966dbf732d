//! The HTTP client OTLP/HTTP exports go through: the process's reqwest (rustls with ring, no second
//! TLS stack), each request run on the tokio runtime the exporter was built in.
//!
//! Why not opentelemetry-otlp's own clients: the SDK's batch processor exports from a thread of its
//! own with no tokio context, where its async reqwest and hyper clients panic ("no reactor
//! running"), and its blocking client would build a second connection pool with its own TLS setup.

use std::fmt;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use tokio::runtime::Handle;

/// Runs OTLP/HTTP requests with reqwest on a tokio runtime.
#[derive(Clone)]
pub(crate) struct ReqwestOnTokio {
    client: reqwest::Client,
    runtime: Handle,
}

impl fmt::Debug for ReqwestOnTokio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestOnTokio").finish_non_exhaustive()
    }
}

impl ReqwestOnTokio {
    /// A client on the current runtime whose requests give up after `timeout` (the exporter
    /// relies on its client for `OTEL_EXPORTER_OTLP_TIMEOUT`).
    ///
    /// # Errors
    /// Why not, when called outside a tokio runtime or when reqwest cannot build its client.
    pub(crate) fn new(timeout: std::time::Duration) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = Handle::try_current().map_err(|_| {
            "the OTLP/HTTP exporter must be built inside a tokio runtime".to_owned()
        })?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Self { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for ReqwestOnTokio {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        let answer = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut answer = Response::new(response.bytes().await?);
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok::<_, reqwest::Error>(answer)
        });
        Ok(answer.await??)
    }
}
