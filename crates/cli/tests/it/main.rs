//! The cross-service suite: the real `flotilla` binary (cargo builds it for this test binary and
//! gives its path as `CARGO_BIN_EXE_flotilla`), started as a user starts it, on port 0 listeners in
//! a temporary data directory, and driven over HTTP and gRPC.

mod cli;
mod lifecycle;
mod serve;
mod up;

use std::net::SocketAddr;
use std::path::Path;

use test_support::process::Flotilla;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

async fn up(data_dir: &Path) -> Flotilla {
    Flotilla::up(binary(), data_dir, &[("FLOTILLA_DRAIN_TIMEOUT", "10s")]).await
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
