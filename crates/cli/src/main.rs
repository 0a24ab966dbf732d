//! `flotilla`: the whole system in one process (`up`), one component (`serve`), or the effective
//! settings (`config`).
//!
//! The lifecycle is explicit: parse settings (exit 64 on a bad one), build and bind, log the
//! addresses, wait for SIGTERM or SIGINT, then stop components front to back, each draining its
//! in-flight requests within the drain timeout, and exit 0.

mod settings;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use platform::config::Settings;
use platform::telemetry::traces::Traces;
use settings::{Component, Mode};

/// `EX_USAGE` from sysexits.h: a bad setting or argument.
const EXIT_BAD_SETTING: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "gRPC microservices: user, auth and product services behind an HTTP/JSON gateway"
)]
struct Cli {
    /// A TOML file of settings (flat NAME = value pairs, the same names as the environment
    /// variables); the environment wins over it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where SQLite databases and endpoints.json live.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_DATA_DIR",
        default_value = "data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system in one process: every service and the gateway, on loopback, with
    /// SQLite under the data directory and a demo catalogue.
    Up {
        /// Bind every listener to 127.0.0.1 port 0 (the bound addresses go to endpoints.json).
        #[arg(long)]
        listen_ephemeral: bool,
    },
    /// Run one component, as a container or a process of its own would.
    Serve {
        /// Which component.
        component: Component,
    },
    /// Run the embedded service registry alone: the subset of Consul's HTTP API Flotilla uses, with
    /// its state in the data directory (`flotilla serve registry` does the same).
    Registry {
        /// The HTTP API's address (default 127.0.0.1:8500, Consul's; or FLOTILLA_REGISTRY_ADDR).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
    },
    /// Rotate the JWT signing key: the current key becomes the previous one (still published and
    /// accepted until its tokens expire) and a new current key is generated. Restart the auth
    /// service afterwards; the other components fetch the new public key by themselves.
    RotateKeys,
    /// Write a new Ed25519 JWT signing key (PKCS#8 PEM, readable by its owner only) to PATH,
    /// unless a file is there already: the auth service's `FLOTILLA_JWT_KEY_FILE` under `serve`,
    /// made once, for instance by an init container.
    GenerateKey {
        /// Where the key goes.
        path: PathBuf,
    },
    /// Print the effective settings of `up` (or of one component), secrets redacted.
    Config {
        /// Show the settings of this component as `serve` would use them, instead of `up`'s.
        #[arg(long)]
        component: Option<Component>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let raw = match Settings::from_environment(cli.config.as_deref()) {
        Ok(raw) => raw,
        Err(error) => return bad_setting(&error),
    };
    let mode = match &cli.command {
        Command::Up { listen_ephemeral } => Mode::Up {
            listen_ephemeral: *listen_ephemeral,
        },
        Command::Serve { component }
        | Command::Config {
            component: Some(component),
        } => Mode::Serve(*component),
        Command::Registry { .. } => Mode::Serve(Component::Registry),
        Command::Config { component: None } | Command::RotateKeys | Command::GenerateKey { .. } => {
            Mode::Up {
                listen_ephemeral: false,
            }
        }
    };
    let mut config = match settings::SystemConfig::parse(raw, &cli.data_dir, mode) {
        Ok(config) => config,
        Err(error) => return bad_setting(&error),
    };
    if let (Command::Registry { addr: Some(addr) }, Some(registry)) =
        (&cli.command, &mut config.registry)
    {
        registry.addr = *addr;
    }
    match cli.command {
        Command::Config { .. } => {
            print!("{}", config.describe());
            return ExitCode::SUCCESS;
        }
        Command::RotateKeys => return rotate_keys(&config),
        Command::GenerateKey { path } => return generate_key(&path),
        Command::Up { .. } | Command::Serve { .. } | Command::Registry { .. } => {}
    }

    // The runtime comes first: the OTLP exporter's channel runs on it.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flotilla: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let traces = {
        let _inside = runtime.enter();
        match Traces::start(&config.traces, &config.components()) {
            Ok(traces) => traces,
            Err(error) => {
                eprintln!("flotilla: {error}");
                return ExitCode::from(EXIT_BAD_SETTING);
            }
        }
    };
    platform::telemetry::init(&config.log, traces.as_ref());
    let outcome = runtime.block_on(system::run(config));
    // Outside the runtime's workers, which the exporter still needs: the last spans go out.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "flotilla stopped with an error"
            );
            eprintln!("flotilla: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `flotilla generate-key PATH`.
fn generate_key(path: &std::path::Path) -> ExitCode {
    match auth::keys::ensure_key_file(path) {
        Ok(()) => {
            println!("{} holds a JWT signing key", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("flotilla: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `flotilla rotate-keys`: rotates the key files the auth service's settings name.
fn rotate_keys(config: &settings::SystemConfig) -> ExitCode {
    let signing = config.auth.as_ref().map(|auth| &auth.config.signing);
    let Some(auth::SigningConfig::Ed25519 {
        key_file,
        previous_key_file: Some(previous),
    }) = signing
    else {
        eprintln!(
            "flotilla: nothing to rotate: signing uses JWT_SECRET, or FLOTILLA_JWT_PREVIOUS_KEY_FILE is not set"
        );
        return ExitCode::from(EXIT_BAD_SETTING);
    };
    match auth::rotate_key_files(key_file, previous) {
        Ok(rotation) => {
            println!(
                "rotated: the new key {} signs from the next start of the auth service; the previous key {} stays valid until its tokens expire",
                rotation.current_kid, rotation.previous_kid
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("flotilla: {error}");
            ExitCode::FAILURE
        }
    }
}

fn bad_setting(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("flotilla: bad setting: {error}");
    ExitCode::from(EXIT_BAD_SETTING)
}
