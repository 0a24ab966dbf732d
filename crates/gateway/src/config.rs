//! The gateway's settings.

use std::net::SocketAddr;
use std::time::Duration;

use platform::auth::AuthConfig;
use platform::config::{ConfigError, Settings};

use crate::deadlines::RouteDeadlines;

/// Where the gateway listens and how it treats requests; the services it calls are found through
/// discovery, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Public HTTP listener (`FLOTILLA_GATEWAY_HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// Admin listener with `/health` and `/ready` (`FLOTILLA_GATEWAY_ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// How access tokens are verified (published keys from the auth service, or `JWT_SECRET`).
    pub auth: AuthConfig,
    /// Deadline of each request by route, sent on to the services as `grpc-timeout`
    /// (`FLOTILLA_GATEWAY_TIMEOUT`, default 3 s, and `FLOTILLA_GATEWAY_ROUTE_TIMEOUTS`).
    pub deadlines: RouteDeadlines,
    /// Largest request body accepted, in bytes (1 MiB).
    pub body_limit: usize,
    /// How long in-flight requests may take to finish at shutdown (`FLOTILLA_DRAIN_TIMEOUT`).
    pub drain_timeout: Duration,
    /// Load balancers in front of the gateway whose `X-Forwarded-For` is believed
    /// (`FLOTILLA_GATEWAY_TRUSTED_PROXIES`, none by default: the TCP peer is the client).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Largest request body: the API takes small JSON documents.
pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;

impl GatewayConfig {
    /// Reads the gateway's variables with the given default addresses.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable.
    pub fn from_settings(
        settings: &Settings,
        default_http: SocketAddr,
        default_admin: SocketAddr,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: settings.socket_addr("FLOTILLA_GATEWAY_HTTP_ADDR", default_http)?,
            admin_addr: settings.socket_addr("FLOTILLA_GATEWAY_ADMIN_ADDR", default_admin)?,
            auth: AuthConfig::from_settings(settings)?,
            deadlines: RouteDeadlines::from_settings(settings)?,
            body_limit: BODY_LIMIT_BYTES,
            drain_timeout: platform::serve::drain_timeout(settings)?,
            trusted_proxies: settings.ip_addresses("FLOTILLA_GATEWAY_TRUSTED_PROXIES", &[])?,
        })
    }
}
