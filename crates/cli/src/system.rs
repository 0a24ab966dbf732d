//! Starts the components of a run, writes where they listen, waits for a stop signal, and stops
//! them front to back: the gateway first, so none of its in-flight calls loses the service it is
//! waiting on, then the services (auth before the user service it calls), then their databases.
//! Every gRPC service sits behind its access policy (`platform::auth::AuthLayer`).

use std::path::Path;

use anyhow::Context as _;
use auth::config::SigningConfig;
use futures::future::select_all;
use platform::auth::{KeySource, Verifier};
use platform::database::Database;
use platform::serve::{GrpcServer, ServeConfig};
use platform::shutdown::{Listeners, Running, Signals};
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

/// Starts the services, then the gateway in front of them, in `running` in start order: user,
/// auth (which calls the user service), product, gateway. Every service's listeners are bound
/// first, so services that call each other know where, even on port 0.
async fn start(
    config: &SystemConfig,
    running: &mut Vec<Running>,
    databases: &mut Vec<Database>,
) -> anyhow::Result<()> {
    let up = matches!(config.mode, Mode::Up { .. });
    if let Some(registry_config) = &config.registry {
        running.push(registry::spawn(registry_config.clone()).await?);
    }
    let user_listeners = bind("user", config.user.as_ref().map(|parts| &parts.serve)).await?;
    let auth_listeners = bind("auth", config.auth.as_ref().map(|parts| &parts.serve)).await?;
    let product_listeners =
        bind("product", config.product.as_ref().map(|parts| &parts.serve)).await?;
    let url = |listeners: &Option<Listeners>| {
        listeners
            .as_ref()
            .map(|l| format!("http://{}", l.addrs().main))
    };

    // In one process every service is found where it was actually bound.
    let mut verification = config.verification.clone();
    if let (true, KeySource::Jwks { auth_endpoint }, Some(auth_url)) =
        (up, &mut verification.keys, url(&auth_listeners))
    {
        *auth_endpoint = auth_url;
    }
    let verifier = Verifier::new(&verification)
        .map_err(|error| anyhow::anyhow!("token verification: {error}"))?;

    if let (Some(parts), Some(listeners)) = (&config.user, user_listeners) {
        let built = user::build(&parts.config)
            .await
            .context("starting the user service")?;
        databases.push(built.database.clone());
        running.push(
            GrpcServer::new("user", parts.serve.clone())
                .add_authorized_service(built.service, &verifier, user::policy())
                .readiness_check(built.database.readiness_check())
                .spawn_on(listeners)
                .await?,
        );
    }
    if let (Some(parts), Some(listeners)) = (&config.auth, auth_listeners) {
        let mut auth_config = parts.config.clone();
        if let (true, Some(user_url)) = (
            up,
            running
                .first()
                .map(|user| format!("http://{}", user.addrs().main)),
        ) {
            auth_config.user_endpoint = user_url;
        }
        if up && let SigningConfig::Ed25519 { key_file, .. } = &auth_config.signing {
            auth::keys::ensure_key_file(key_file)
                .with_context(|| format!("creating the signing key {}", key_file.display()))?;
        }
        let built = auth::build(&auth_config)
            .await
            .context("starting the auth service")?;
        databases.push(built.database.clone());
        running.push(
            GrpcServer::new("auth", parts.serve.clone())
                .add_authorized_service(built.service, &verifier, auth::policy())
                .readiness_check(built.database.readiness_check())
                .spawn_on(listeners)
                .await?,
        );
    }
    if let (Some(parts), Some(listeners)) = (&config.product, product_listeners) {
        let built = product::build(&parts.config)
            .await
            .context("starting the product service")?;
        databases.push(built.database.clone());
        running.push(
            GrpcServer::new("product", parts.serve.clone())
                .add_authorized_service(built.service, &verifier, product::policy())
                .readiness_check(built.database.readiness_check())
                .spawn_on(listeners)
                .await?,
        );
    }
    if let Some(gateway_config) = &config.gateway {
        let mut gateway_config = gateway_config.clone();
        if up {
            for component in running.iter() {
                let address = format!("http://{}", component.addrs().main);
                match component.name() {
                    "user" => gateway_config.user_endpoint = address,
                    "auth" => gateway_config.auth_endpoint = address,
                    "product" => gateway_config.product_endpoint = address,
                    _ => {}
                }
            }
            gateway_config.auth = verification.clone();
        }
        running.push(gateway::spawn(gateway_config).await?);
    }
    Ok(())
}

/// Binds a service's listeners, when this run has the service.
async fn bind(name: &str, serve: Option<&ServeConfig>) -> anyhow::Result<Option<Listeners>> {
    match serve {
        Some(serve) => Ok(Some(
            Listeners::bind(name, serve.grpc_addr, serve.admin_addr).await?,
        )),
        None => Ok(None),
    }
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
        let main = if component.name() == "gateway" {
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
