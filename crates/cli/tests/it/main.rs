//! The cross-service suite: the real `flotilla` binary (cargo builds it for this test binary and
//! gives its path as `CARGO_BIN_EXE_flotilla`), started as a user starts it, on port 0 listeners in
//! a temporary data directory, and driven over HTTP and gRPC.

mod cli;
mod discovery;
mod fleet;
mod identity;
mod lifecycle;
mod metrics;
mod registry;
mod resilience;
mod rotation;
mod serve;
mod traces;
mod up;

use std::net::SocketAddr;
use std::path::Path;

use test_support::process::Flotilla;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// The administrator every `up` in this suite is started with.
const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "correct horse battery staple";

async fn up(data_dir: &Path) -> Flotilla {
    up_with(data_dir, &[]).await
}

/// As [`up`], with `extra` added to the environment.
async fn up_with(data_dir: &Path, extra: &[(&str, &str)]) -> Flotilla {
    let mut env = vec![
        ("FLOTILLA_DRAIN_TIMEOUT", "10s"),
        ("FLOTILLA_ADMIN_EMAIL", ADMIN_EMAIL),
        ("FLOTILLA_ADMIN_PASSWORD", ADMIN_PASSWORD),
        // Cheap hashing keeps the suite quick; the defaults are OWASP's.
        ("FLOTILLA_ARGON2_MEMORY_KIB", "8192"),
        ("FLOTILLA_ARGON2_ITERATIONS", "1"),
    ];
    env.extend_from_slice(extra);
    Flotilla::up(binary(), data_dir, &env).await
}

/// Logs in through the gateway and returns the token pair as JSON.
async fn login(
    http: &reqwest::Client,
    gateway: SocketAddr,
    email: &str,
    password: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    http.post(format!("http://{gateway}/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
}

/// The administrator's access token.
async fn admin_token(
    http: &reqwest::Client,
    gateway: SocketAddr,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let pair: serde_json::Value = login(http, gateway, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(pair["access_token"]
        .as_str()
        .ok_or("no access_token")?
        .to_owned())
}

/// A gRPC request carrying `token` as `authorization: Bearer`.
fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn grpc_channel(
    addr: SocketAddr,
) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .build()
        .unwrap_or_else(|error| panic!("HTTP client: {error}"))
}

/// reqwest is built without a default TLS provider (no aws-lc); install ring once per process.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The Prometheus text an admin listener serves at `/metrics`.
async fn scrape(admin: SocketAddr) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    scrape_as(admin, None, "text/plain; version=0.0.4").await
}

/// What an admin listener serves at `/metrics` for `accept` (none sent when `None`), checked to be
/// a success of a content type starting with `expected_type`.
async fn scrape_as(
    admin: SocketAddr,
    accept: Option<&str>,
    expected_type: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = http_client().get(format!("http://{admin}/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await?.error_for_status()?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with(expected_type), "{content_type}");
    Ok(response.text().await?)
}

/// The value of the sample `series` (name and labels exactly as rendered) in a scrape, if any.
fn sample(scraped: &str, series: &str) -> Option<f64> {
    scraped
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Asserts each sample of `expected` (series exactly as rendered, and its value) in a scrape.
fn assert_samples(scraped: &str, expected: &[(&str, f64)]) {
    for (series, value) in expected {
        assert_eq!(
            sample(scraped, series),
            Some(*value),
            "{series} in\n{scraped}"
        );
    }
}
