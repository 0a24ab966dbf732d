//! HTTP checks, as Consul's `agent/checks/check.go` (`CheckHTTP`) runs them: `Method` (GET by
//! default) to the URL with `Header` and `Body`; any 2xx is passing, 429 Too Many Requests is
//! warning, anything else (or no answer) critical. The output is `HTTP <method> <url>: <status>
//! Output: <body>`, the body cut to `OutputMaxSize`. Consul's request headers are sent unless the
//! check sets its own: `User-Agent: Consul Health Check`, `Accept: text/plain, text/*, */*`.
//! Redirects are followed (at most 10) unless `DisableRedirects`.
//!
//! Unlike Consul, which honours `HTTP_PROXY` for checks, the registry always connects directly: a
//! health check is about the instance, not the path through a proxy.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue, USER_AGENT};

use super::Verdict;
use crate::domain::Status;

pub(super) struct HttpProbe {
    client: reqwest::Client,
    url: String,
    method: reqwest::Method,
    headers: HeaderMap,
    body: String,
}

impl HttpProbe {
    pub(super) fn new(
        url: &str,
        method: &str,
        header: &BTreeMap<String, Vec<String>>,
        body: &str,
        tls_skip_verify: bool,
        disable_redirects: bool,
        timeout: Duration,
    ) -> Result<Self, String> {
        let failed = |reason: String| format!("HTTP {method} {url}: {reason}");
        let method_parsed = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| failed(format!("invalid method {method:?}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("Consul Health Check"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/plain, text/*, */*"));
        for (name, values) in header {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| failed(format!("invalid header name {name:?}")))?;
            headers.remove(&name);
            for value in values {
                let value = HeaderValue::from_str(value)
                    .map_err(|_| failed(format!("invalid value for header {name}")))?;
                headers.append(name.clone(), value);
            }
        }
        // reqwest is built without a default TLS provider: install ring once (idempotent).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redirects = if disable_redirects {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::limited(10)
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirects)
            .no_proxy()
            .tls_danger_accept_invalid_certs(tls_skip_verify)
            .build()
            .map_err(|error| failed(error.to_string()))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            method: method_parsed,
            headers,
            body: body.to_owned(),
        })
    }

    fn describe(&self) -> String {
        format!("HTTP {} {}", self.method, self.url)
    }

    /// The output when a run takes longer than `timeout`.
    pub(super) fn timed_out(&self, timeout: std::time::Duration) -> String {
        format!(
            "{}: timed out after {}",
            self.describe(),
            crate::duration::format(timeout)
        )
    }

    pub(super) async fn probe(&self, output_max_size: usize) -> Verdict {
        let mut request = self
            .client
            .request(self.method.clone(), &self.url)
            .headers(self.headers.clone());
        if !self.body.is_empty() {
            request = request.body(self.body.clone());
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return (
                    Status::Critical,
                    format!("{}: {}", self.describe(), error_chain(&error)),
                );
            }
        };
        let status = response.status();
        let mut body = Vec::new();
        while body.len() < output_max_size {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(output_max_size);
        let verdict = if status.is_success() {
            Status::Passing
        } else if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Status::Warning
        } else {
            Status::Critical
        };
        (
            verdict,
            format!(
                "{}: {status} Output: {}",
                self.describe(),
                String::from_utf8_lossy(&body)
            ),
        )
    }
}

/// An error with its causes, as `connection refused` is only in the innermost one.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
