//! The settings of a whole run: which components, where they listen, where their data lives.
//!
//! `up` and `serve` read the same variables; `up` only changes the defaults (loopback addresses,
//! one SQLite file per service under the data directory, the demo catalogue) and reads each
//! service's database from `FLOTILLA_<SERVICE>_DATABASE_URL`, since `DATABASE_URL` can name only
//! one database and every service owns its own.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use auth::AuthServiceConfig;
use gateway::GatewayConfig;
use platform::auth::AuthConfig;
use platform::config::{ConfigError, Settings};
use platform::discovery::DiscoveryConfig;
use platform::discovery::settings::upstream_names;
use platform::resilience::client::CallPolicies;
use platform::serve::ServeConfig;
use platform::telemetry::traces::{TRACE_SETTINGS, TraceConfig};
use platform::telemetry::{LogConfig, LogFormat};
use product::ProductConfig;
use registry::RegistryConfig;
use user::UserConfig;

/// The components that can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    /// The user service (gRPC).
    User,
    /// The auth service (gRPC).
    Auth,
    /// The product service (gRPC).
    Product,
    /// The HTTP/JSON gateway.
    Gateway,
    /// The embedded service registry (Consul's HTTP API subset).
    Registry,
}

/// How the binary runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything in one process.
    Up {
        /// Every listener on 127.0.0.1 port 0.
        listen_ephemeral: bool,
    },
    /// One component.
    Serve(Component),
}

/// Ports shared by both modes; `up` binds them on loopback, `serve` on every interface.
const USER_PORTS: (u16, u16) = (50051, 9081);
const AUTH_PORTS: (u16, u16) = (50052, 9082);
const PRODUCT_PORTS: (u16, u16) = (50053, 9083);
const GATEWAY_PORTS: (u16, u16) = (8080, 9080);
/// Consul's agent port, so the Consul client's default finds the embedded registry.
const REGISTRY_PORTS: (u16, u16) = (8500, 9085);

/// The name of the signing key file `up` keeps in its data directory.
pub const UP_KEY_FILE: &str = "jwt-ed25519.pem";
/// Where `up` keeps the key before the last rotation (`flotilla rotate-keys`).
pub const UP_PREVIOUS_KEY_FILE: &str = "jwt-ed25519.previous.pem";

/// Every setting any component reads, so a settings file shared by several components is accepted
/// by each (a test keeps this list, with OpenTelemetry's `TRACE_SETTINGS`, equal to what the
/// components really read).
const ALL_SETTINGS: &[&str] = &[
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "DATABASE_URL",
    "FLOTILLA_ADMIN_EMAIL",
    "FLOTILLA_ADMIN_PASSWORD",
    "FLOTILLA_ADVERTISE_ADDR",
    "FLOTILLA_ARGON2_ITERATIONS",
    "FLOTILLA_ARGON2_MEMORY_KIB",
    "FLOTILLA_ARGON2_PARALLELISM",
    "FLOTILLA_AUTH_ADMIN_ADDR",
    "FLOTILLA_AUTH_DATABASE_URL",
    "FLOTILLA_AUTH_DB_MAX_CONNECTIONS",
    "FLOTILLA_AUTH_ENDPOINT",
    "FLOTILLA_AUTH_GRPC_ADDR",
    "FLOTILLA_AUTH_TRUSTED_PROXIES",
    "FLOTILLA_BREAKER",
    "FLOTILLA_BREAKER_COOL_DOWN",
    "FLOTILLA_BREAKER_FAILURES",
    "FLOTILLA_BREAKER_K",
    "FLOTILLA_CHECK_INTERVAL",
    "FLOTILLA_CHECK_TIMEOUT",
    "FLOTILLA_CONCURRENCY_LIMIT_INITIAL",
    "FLOTILLA_CONCURRENCY_LIMIT_MAX",
    "FLOTILLA_CONCURRENCY_LIMIT_MIN",
    "FLOTILLA_CONCURRENCY_LIMIT_TIMEOUT",
    "FLOTILLA_DEREGISTER_CRITICAL_AFTER",
    "FLOTILLA_DEREGISTER_DELAY",
    "FLOTILLA_DISCOVERY",
    "FLOTILLA_DRAIN_TIMEOUT",
    "FLOTILLA_ETCD_ENDPOINTS",
    "FLOTILLA_FAULTS",
    "FLOTILLA_GATEWAY_ADMIN_ADDR",
    "FLOTILLA_GATEWAY_HTTP_ADDR",
    "FLOTILLA_GATEWAY_ROUTE_TIMEOUTS",
    "FLOTILLA_GATEWAY_TIMEOUT",
    "FLOTILLA_GATEWAY_TRUSTED_PROXIES",
    "FLOTILLA_JWT_AUDIENCE",
    "FLOTILLA_JWT_ISSUER",
    "FLOTILLA_JWT_KEY_FILE",
    "FLOTILLA_JWT_LEEWAY",
    "FLOTILLA_JWT_PREVIOUS_KEY_FILE",
    "FLOTILLA_LOGIN_MAX_FAILURES",
    "FLOTILLA_LOGIN_MAX_FAILURES_PER_ADDRESS",
    "FLOTILLA_LOGIN_WINDOW",
    "FLOTILLA_LOG_FORMAT",
    "FLOTILLA_PRODUCT_ADMIN_ADDR",
    "FLOTILLA_PRODUCT_DATABASE_URL",
    "FLOTILLA_PRODUCT_DB_MAX_CONNECTIONS",
    "FLOTILLA_PRODUCT_ENDPOINT",
    "FLOTILLA_PRODUCT_GRPC_ADDR",
    "FLOTILLA_PRODUCT_SEED_DEMO",
    "FLOTILLA_REFRESH_EXPIRY",
    "FLOTILLA_REFRESH_MAX_LIFETIME",
    "FLOTILLA_REGISTRY_ADDR",
    "FLOTILLA_REGISTRY_ADMIN_ADDR",
    "FLOTILLA_RETRY_BACKOFF",
    "FLOTILLA_RETRY_BACKOFF_MAX",
    "FLOTILLA_RETRY_BUDGET_MIN_PER_SEC",
    "FLOTILLA_RETRY_BUDGET_PERCENT",
    "FLOTILLA_RETRY_MAX",
    "FLOTILLA_USER_ADMIN_ADDR",
    "FLOTILLA_USER_DATABASE_URL",
    "FLOTILLA_USER_DB_MAX_CONNECTIONS",
    "FLOTILLA_USER_ENDPOINT",
    "FLOTILLA_USER_GRPC_ADDR",
    "JWT_ACCESS_EXPIRY",
    "JWT_SECRET",
    "RUST_LOG",
];

/// A gRPC service's listeners and its own settings.
#[derive(Debug, Clone)]
pub struct ServiceParts<C> {
    /// Where it listens.
    pub serve: ServeConfig,
    /// The service's settings.
    pub config: C,
}

/// Everything one run needs, parsed and checked before anything starts.
#[derive(Debug)]
pub struct SystemConfig {
    /// How the binary runs.
    pub mode: Mode,
    /// Where SQLite files, the signing key of `up` and endpoints.json live.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Trace export (OpenTelemetry's variables).
    pub traces: TraceConfig,
    /// How the gRPC services verify the tokens they are sent.
    pub verification: AuthConfig,
    /// Where services register and find each other (`up` replaces the backend with its embedded
    /// registry once that listens).
    pub discovery: DiscoveryConfig,
    /// The user service, when this run has it.
    pub user: Option<ServiceParts<UserConfig>>,
    /// The auth service, when this run has it.
    pub auth: Option<ServiceParts<AuthServiceConfig>>,
    /// The product service, when this run has it.
    pub product: Option<ServiceParts<ProductConfig>>,
    /// The gateway, when this run has it.
    pub gateway: Option<GatewayConfig>,
    /// The embedded registry, when this run has it.
    pub registry: Option<RegistryConfig>,
    settings: Settings,
}

impl SystemConfig {
    /// Parses every setting the run uses, and refuses unknown names in the settings file.
    ///
    /// # Errors
    /// The first bad setting.
    pub fn parse(settings: Settings, data_dir: &Path, mode: Mode) -> Result<Self, ConfigError> {
        let (host, ephemeral): ([u8; 4], bool) = match mode {
            Mode::Up { listen_ephemeral } => ([127, 0, 0, 1], listen_ephemeral),
            Mode::Serve(_) => ([0, 0, 0, 0], false),
        };
        let at = |port: u16| -> SocketAddr {
            if ephemeral {
                ([127, 0, 0, 1], 0).into()
            } else {
                (host, port).into()
            }
        };
        let up = matches!(mode, Mode::Up { .. });
        let settings = if up {
            // One process, stopped front to back: every caller of a service has stopped before the
            // service deregisters, so nobody needs time to notice it leaving.
            settings
                .with_default("FLOTILLA_DEREGISTER_DELAY", "0s")
                .with_default(
                    "FLOTILLA_JWT_PREVIOUS_KEY_FILE",
                    data_dir.join(UP_PREVIOUS_KEY_FILE).display().to_string(),
                )
        } else {
            settings
        };
        let default_log = match mode {
            Mode::Up { .. } if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
                LogFormat::Text
            }
            _ => LogFormat::Json,
        };
        let log = LogConfig::from_settings(&settings, default_log)?;
        let traces = TraceConfig::from_settings(&settings)?;
        let runs = |component: Component| match mode {
            Mode::Up { .. } => true,
            Mode::Serve(only) => only == component,
        };
        // `up` gives each service its own SQLite file; `serve` reads the one DATABASE_URL.
        let database = |service: &str| -> (String, String) {
            let variable = if up {
                format!("FLOTILLA_{}_DATABASE_URL", service.to_ascii_uppercase())
            } else {
                "DATABASE_URL".to_owned()
            };
            (
                variable,
                platform::database::sqlite_url(&data_dir.join(format!("{service}.db"))),
            )
        };
        let serve = |service: &str,
                     (grpc, admin): (u16, u16)|
         -> Result<ServeConfig, ConfigError> {
            let mut serve = ServeConfig::from_settings(&settings, service, at(grpc), at(admin))?;
            if ephemeral {
                serve.grpc_addr = at(0);
                serve.admin_addr = at(0);
            }
            Ok(serve)
        };

        let verification = AuthConfig::from_settings(&settings)?;
        let discovery = DiscoveryConfig::from_settings(&settings)?;
        let user = if runs(Component::User) {
            let (variable, default_url) = database("user");
            Some(ServiceParts {
                serve: serve("user", USER_PORTS)?,
                config: UserConfig::from_settings(&settings, &variable, &default_url)?,
            })
        } else {
            None
        };
        let auth = if runs(Component::Auth) {
            let (variable, default_url) = database("auth");
            let default_key_file = up.then(|| data_dir.join(UP_KEY_FILE));
            Some(ServiceParts {
                serve: serve("auth", AUTH_PORTS)?,
                config: AuthServiceConfig::from_settings(
                    &settings,
                    &variable,
                    &default_url,
                    default_key_file.as_deref(),
                )?,
            })
        } else {
            None
        };
        let product = if runs(Component::Product) {
            let (variable, default_url) = database("product");
            Some(ServiceParts {
                serve: serve("product", PRODUCT_PORTS)?,
                config: ProductConfig::from_settings(&settings, &variable, &default_url, up)?,
            })
        } else {
            None
        };
        let gateway = if runs(Component::Gateway) {
            let mut gateway =
                GatewayConfig::from_settings(&settings, at(GATEWAY_PORTS.0), at(GATEWAY_PORTS.1))?;
            if ephemeral {
                gateway.http_addr = at(0);
                gateway.admin_addr = at(0);
            }
            Some(gateway)
        } else {
            None
        };
        let registry = if runs(Component::Registry) {
            // Loopback by default, as Consul's agent binds its HTTP API.
            let loopback = |port: u16| -> SocketAddr {
                if ephemeral {
                    ([127, 0, 0, 1], 0).into()
                } else {
                    ([127, 0, 0, 1], port).into()
                }
            };
            let mut registry = RegistryConfig {
                addr: settings.socket_addr("FLOTILLA_REGISTRY_ADDR", loopback(REGISTRY_PORTS.0))?,
                admin_addr: settings
                    .socket_addr("FLOTILLA_REGISTRY_ADMIN_ADDR", loopback(REGISTRY_PORTS.1))?,
                // Under `up` every instance restarts with the registry, under new ids: remembering
                // the last run's would only list dead (or, on fixed ports, duplicate) instances.
                data_dir: (!up).then(|| data_dir.to_path_buf()),
                drain_timeout: platform::serve::drain_timeout(&settings)?,
            };
            if ephemeral {
                registry.addr = loopback(0);
                registry.admin_addr = loopback(0);
            }
            Some(registry)
        } else {
            None
        };
        // Breaker and retry settings may also be set per upstream (`FLOTILLA_PRODUCT_RETRY_MAX`).
        let per_upstream = CallPolicies::setting_names(&upstream_names());
        let known: Vec<&str> = ALL_SETTINGS
            .iter()
            .chain(TRACE_SETTINGS)
            .copied()
            .chain(per_upstream.iter().map(String::as_str))
            .collect();
        settings.reject_unknown_file_keys(&known)?;
        Ok(Self {
            mode,
            data_dir: data_dir.to_path_buf(),
            log,
            traces,
            verification,
            discovery,
            user,
            auth,
            product,
            gateway,
            registry,
            settings,
        })
    }

    /// The components this run starts, by name, in start order.
    pub fn components(&self) -> Vec<&'static str> {
        [
            ("registry", self.registry.is_some()),
            ("user", self.user.is_some()),
            ("auth", self.auth.is_some()),
            ("product", self.product.is_some()),
            ("gateway", self.gateway.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, runs)| runs.then_some(name))
        .collect()
    }

    /// The effective settings, one `NAME=value  # origin` line each, secrets redacted.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "# flotilla settings ({:?}), data directory {}\n",
            self.mode,
            self.data_dir.display()
        );
        for setting in self.settings.effective() {
            let _ = writeln!(
                text,
                "{}={}  # {}",
                setting.name, setting.value, setting.origin
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn no_settings() -> Settings {
        Settings::from_pairs::<_, &str, &str>([])
    }

    #[test]
    fn up_defaults_to_loopback_and_sqlite_under_the_data_dir() -> TestResult {
        let config = SystemConfig::parse(
            no_settings(),
            Path::new("/srv/f"),
            Mode::Up {
                listen_ephemeral: false,
            },
        )?;
        let ServiceParts {
            serve,
            config: product,
        } = config.product.ok_or("up runs the product service")?;
        assert_eq!(serve.grpc_addr, "127.0.0.1:50053".parse::<SocketAddr>()?);
        assert_eq!(product.database.url, "sqlite:///srv/f/product.db");
        assert!(product.seed_demo);
        let registry = config.registry.ok_or("up embeds the registry")?;
        assert_eq!(registry.addr, "127.0.0.1:8500".parse::<SocketAddr>()?);
        assert_eq!(registry.data_dir, None, "nothing kept between runs of up");
        assert_eq!(
            config.discovery.registration.deregister_delay,
            std::time::Duration::ZERO
        );
        Ok(())
    }

    #[test]
    fn serve_reads_database_url_and_binds_every_interface() -> TestResult {
        let settings = Settings::from_pairs([("DATABASE_URL", "postgres://app:pw@db/product")]);
        let config =
            SystemConfig::parse(settings, Path::new("data"), Mode::Serve(Component::Product))?;
        assert!(config.gateway.is_none());
        let ServiceParts {
            serve,
            config: product,
        } = config
            .product
            .ok_or("serve product runs the product service")?;
        assert_eq!(serve.grpc_addr.ip().to_string(), "0.0.0.0");
        assert_eq!(product.database.url, "postgres://app:pw@db/product");
        assert!(!product.seed_demo);
        Ok(())
    }

    #[test]
    fn ephemeral_overrides_every_listener() -> TestResult {
        let settings = Settings::from_pairs([("FLOTILLA_GATEWAY_HTTP_ADDR", "0.0.0.0:80")]);
        let config = SystemConfig::parse(
            settings,
            Path::new("data"),
            Mode::Up {
                listen_ephemeral: true,
            },
        )?;
        let gateway = config.gateway.ok_or("up runs the gateway")?;
        assert_eq!(gateway.http_addr.to_string(), "127.0.0.1:0");
        assert_eq!(gateway.admin_addr.to_string(), "127.0.0.1:0");
        Ok(())
    }

    #[test]
    fn the_list_of_all_settings_is_what_the_components_read() -> TestResult {
        let mut read = std::collections::BTreeSet::new();
        for mode in [
            Mode::Up {
                listen_ephemeral: false,
            },
            Mode::Serve(Component::User),
            Mode::Serve(Component::Product),
            Mode::Serve(Component::Gateway),
            Mode::Serve(Component::Registry),
        ] {
            // Each discovery backend's settings are read only when it is chosen.
            for backend in ["consul", "static", "etcd"] {
                let settings = Settings::from_pairs([("FLOTILLA_DISCOVERY", backend)]);
                let config = SystemConfig::parse(settings, Path::new("data"), mode)?;
                read.extend(
                    config
                        .settings
                        .effective()
                        .into_iter()
                        .map(|setting| setting.name),
                );
            }
        }
        let listed: std::collections::BTreeSet<String> = ALL_SETTINGS
            .iter()
            .chain(platform::telemetry::traces::TRACE_SETTINGS)
            .map(|name| (*name).to_owned())
            .collect();
        assert_eq!(read, listed);
        Ok(())
    }

    #[test]
    fn describe_redacts_database_passwords() -> TestResult {
        let settings =
            Settings::from_pairs([("DATABASE_URL", "postgres://app:hunter2@db/product")]);
        let config =
            SystemConfig::parse(settings, Path::new("data"), Mode::Serve(Component::Product))?;
        let text = config.describe();
        assert!(
            text.contains("DATABASE_URL=postgres://app:***@db/product  # environment"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
        assert!(
            text.contains("FLOTILLA_DRAIN_TIMEOUT=10s  # default"),
            "{text}"
        );
        Ok(())
    }
}
