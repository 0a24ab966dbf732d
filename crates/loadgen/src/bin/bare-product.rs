//! `bare-product ADDR DATABASE_URL`: the product service's own tonic service (the same handler and
//! store `flotilla serve product` runs, the demo catalogue seeded) behind a bare
//! `tonic::transport::Server`: no auth, metrics, traces, logs, deadlines, limits or health. The
//! baseline of `bench/compare.sh`. Prints the bound address, then serves until SIGTERM or SIGINT.

use anyhow::Context as _;
use platform::database::DatabaseConfig;
use product::config::ProductConfig;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::TcpListenerStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logging that costs nothing: with no subscriber ever set, every tracing callsite in h2, hyper
    // and tonic would take tracing's `log` fallback on each hit, a cost no real server pays, and
    // the baseline would be slower than the bare server it stands for.
    tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default())
        .context("installing the no-op subscriber")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, database_url] = args.as_slice() else {
        anyhow::bail!("usage: bare-product ADDR DATABASE_URL");
    };
    let config = ProductConfig {
        database: DatabaseConfig::new(database_url.clone(), 10),
        seed_demo: true,
    };
    let built = product::build(&config)
        .await
        .context("building the product service")?;
    let listener = tokio::net::TcpListener::bind(addr.as_str())
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("{}", listener.local_addr()?);
    let mut terminate = signal(SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(built.service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    built.database.close().await;
    Ok(())
}
