//! Starts the components of a run, writes where they listen, waits for a stop signal, and stops
//! them front to back: the gateway first, so none of its in-flight calls loses the service it is
//! waiting on, then the services (auth before the user service it calls), then their databases.
//! Every gRPC service sits behind its access policy (`platform::auth::AuthLayer`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use auth::config::SigningConfig;
use futures::StreamExt as _;
use futures::future::select_all;
use platform::auth::Verifier;
use platform::database::Database;
use platform::discovery::{Discovery, DiscoveryConfig};
use platform::serve::GrpcServer;
use platform::shutdown::{Running, Signals};
use platform::telemetry::metrics::Metrics;
use platform::telemetry::process::ProcessCollector;
use serde_json::json;

use crate::settings::{Mode, SystemConfig};

/// Runs until SIGTERM or SIGINT (then drains and returns `Ok`), or until a component fails.
///
/// # Errors
/// A component that could not start, or that failed while running.
pub async fn run(config: SystemConfig) -> anyhow::Result<()> {
    let mut signals = Signals::install().context("installing the SIGTERM and SIGINT handlers")?;
    let endpoints_path = config.data_dir.join("endpoints.json");
    if matches!(config.mode, Mode::Up { .. }) {
        // A file left by a run that was killed would point scripts at dead ports.
        let _ = std::fs::remove_file(&endpoints_path);
    }
    let mut running: Vec<Running> = Vec::new();
    let mut databases: Vec<Database> = Vec::new();
    let started = start(&config, &mut running, &mut databases).await;
    if let Err(error) = started {
        stop(running, databases).await;
        return Err(error);
    }
    if matches!(config.mode, Mode::Up { .. }) {
        if let Err(error) = write_endpoints(&endpoints_path, &running) {
            stop(running, databases).await;
            return Err(error);
        }
        print_banner(&running, &endpoints_path);
    }

    let failure = tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "stop requested");
            None
        }
        (result, index, _) = select_all(running.iter_mut().map(|component| Box::pin(component.stopped()))) => {
            Some(result.err().map_or_else(
                || anyhow::anyhow!("component #{index} stopped unexpectedly"),
                anyhow::Error::from,
            ))
        }
    };
    stop(running, databases).await;
    if matches!(config.mode, Mode::Up { .. }) {
        let _ = std::fs::remove_file(&endpoints_path);
    }
    match failure {
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Some(error) => Err(error),
    }
}

/// Starts the registry (when this run has it), the services, then the gateway in front of them,
/// in `running` in start order: registry, user, auth (which calls the user service), product,
/// gateway. Each service registers with discovery once ready; under `up`, start-up ends when every
/// service is passing its check in the embedded registry, so the gateway finds them all at once.
async fn start(
    config: &SystemConfig,
    running: &mut Vec<Running>,
    databases: &mut Vec<Database>,
) -> anyhow::Result<()> {
    let up = matches!(config.mode, Mode::Up { .. });
    let mut process_metrics = Metrics::new();
    process_metrics.register_collector(ProcessCollector);
    let mut discovery_config = config.discovery.clone();
    if let Some(registry_config) = &config.registry {
        let registry = registry::spawn(
            registry_config.clone(),
            component_metrics("registry", up, &process_metrics),
        )
        .await?;
        if up {
            // Every service registers with the embedded registry exactly as with a Consul agent.
            discovery_config.backend = DiscoveryConfig::consul_at(registry.addrs().main).backend;
        }
        running.push(registry);
    }
    if config.user.is_none()
        && config.auth.is_none()
        && config.product.is_none()
        && config.gateway.is_none()
    {
        // The registry alone: nothing to find or verify.
        return Ok(());
    }
    let discovery = Discovery::connect(&discovery_config)
        .map_err(|error| anyhow::anyhow!("service discovery: {error}"))?;
    process_metrics.include(discovery.metrics());
    let verifier = Verifier::new(&config.verification, &discovery);
    let announced = |server: GrpcServer| match discovery.announcer() {
        Some(announcer) => server.announce(announcer),
        None => server,
    };

    if let Some(parts) = &config.user {
        let built = user::build(&parts.config)
            .await
            .context("starting the user service")?;
        databases.push(built.database.clone());
        let metrics = component_metrics("user", up, &process_metrics);
        built.database.register_metrics("user", &metrics);
        let server = GrpcServer::new("user", parts.serve.clone())
            .metrics(metrics)
            .add_authorized_service(built.service, &verifier, user::policy())
            .readiness_check(built.database.readiness_check());
        running.push(announced(server).spawn().await?);
    }
    if let Some(parts) = &config.auth {
        if up && let SigningConfig::Ed25519 { key_file, .. } = &parts.config.signing {
            auth::keys::ensure_key_file(key_file)
                .with_context(|| format!("creating the signing key {}", key_file.display()))?;
        }
        let built = auth::build(&parts.config, &discovery)
            .await
            .context("starting the auth service")?;
        databases.push(built.database.clone());
        let metrics = component_metrics("auth", up, &process_metrics);
        built.database.register_metrics("auth", &metrics);
        let server = GrpcServer::new("auth", parts.serve.clone())
            .metrics(metrics)
            .add_authorized_service(built.service, &verifier, auth::policy())
            .readiness_check(built.database.readiness_check());
        running.push(announced(server).spawn().await?);
    }
    if let Some(parts) = &config.product {
        let built = product::build(&parts.config)
            .await
            .context("starting the product service")?;
        databases.push(built.database.clone());
        let metrics = component_metrics("product", up, &process_metrics);
        built.database.register_metrics("product", &metrics);
        let server = GrpcServer::new("product", parts.serve.clone())
            .metrics(metrics)
            .add_authorized_service(built.service, &verifier, product::policy())
            .readiness_check(built.database.readiness_check());
        running.push(announced(server).spawn().await?);
    }
    if up {
        wait_until_discoverable(&discovery, running).await?;
    }
    if let Some(gateway_config) = &config.gateway {
        let metrics = component_metrics("gateway", up, &process_metrics);
        running.push(gateway::spawn(gateway_config.clone(), &discovery, metrics).await?);
    }
    Ok(())
}

/// The registry a component's `/metrics` serves: its own, plus the process's (CPU and memory, the
/// calls made through discovery) in exactly one component per process, so that a Prometheus
/// scraping every admin listener counts nothing twice: the gateway's under `up`, the only
/// component's under `serve`.
fn component_metrics(name: &str, up: bool, process: &Metrics) -> Metrics {
    let mut metrics = Metrics::new();
    if !up || name == "gateway" {
        metrics.include(process);
    }
    metrics
}

/// How long `up` waits for its services to pass their first check.
const DISCOVERABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until discovery reports a healthy instance at each running service's address.
async fn wait_until_discoverable(discovery: &Discovery, running: &[Running]) -> anyhow::Result<()> {
    let services = running
        .iter()
        .filter(|component| ["user", "auth", "product"].contains(&component.name()));
    for component in services {
        let (name, addr) = (component.name(), component.addrs().main);
        let mut watch = discovery.registry().watch(name);
        let found = tokio::time::timeout(DISCOVERABLE_TIMEOUT, async {
            while let Some(instances) = watch.next().await {
                if instances
                    .iter()
                    .any(|instance| instance.addr.port() == addr.port())
                {
                    return true;
                }
            }
            false
        })
        .await;
        if found != Ok(true) {
            anyhow::bail!(
                "the {name} service (at {addr}) did not pass its health check in the registry within {}s",
                DISCOVERABLE_TIMEOUT.as_secs()
            );
        }
    }
    Ok(())
}

/// Stops components in reverse start order, then closes the databases.
async fn stop(running: Vec<Running>, databases: Vec<Database>) {
    for component in running.into_iter().rev() {
        let name = component.name();
        if let Err(error) = component.shutdown().await {
            tracing::error!(component = name, %error, "failed while stopping");
        }
    }
    for database in databases {
        database.close().await;
    }
}

/// Writes `endpoints.json` atomically (a rename), so a reader never sees half a file.
fn write_endpoints(path: &Path, running: &[Running]) -> anyhow::Result<()> {
    let mut document = serde_json::Map::new();
    for component in running {
        let addrs = component.addrs();
        let main = if matches!(component.name(), "gateway" | "registry") {
            "http"
        } else {
            "grpc"
        };
        document.insert(
            component.name().to_owned(),
            json!({ main: addrs.main.to_string(), "admin": addrs.admin.to_string() }),
        );
    }
    let text = serde_json::to_string_pretty(&document)?;
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("creating {}", directory.display()))?;
    }
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn print_banner(running: &[Running], endpoints_path: &Path) {
    let mut lines = vec!["Flotilla is up.".to_owned()];
    for component in running {
        let addrs = component.addrs();
        if component.name() == "gateway" {
            lines.push(format!(
                "  gateway  http://{}   try: curl http://{}/v1/products?page_size=3",
                addrs.main, addrs.main
            ));
        } else if component.name() == "registry" {
            lines.push(format!(
                "  registry http://{}   try: curl http://{}/v1/catalog/services",
                addrs.main, addrs.main
            ));
        } else {
            lines.push(format!(
                "  {:<8} grpc {}   (grpcurl -plaintext {} list)",
                component.name(),
                addrs.main,
                addrs.main
            ));
        }
        lines.push(format!("  {:<8} admin http://{}/ready", "", addrs.admin));
    }
    lines.push(format!(
        "  addresses in {}; Ctrl-C stops everything.",
        endpoints_path.display()
    ));
    println!("{}", lines.join("\n"));
}
