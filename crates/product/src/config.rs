//! The product service's settings.

use platform::config::{ConfigError, Settings};
use platform::database::DatabaseConfig;

/// How the product service stores its catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductConfig {
    /// Where the catalogue lives (`sqlite://PATH` or `postgres://…`) and the pool size
    /// (`FLOTILLA_PRODUCT_DB_MAX_CONNECTIONS`, default 10).
    pub database: DatabaseConfig,
    /// Whether to add the demo catalogue to an empty store once (`FLOTILLA_PRODUCT_SEED_DEMO`).
    pub seed_demo: bool,
}

impl ProductConfig {
    /// Reads the database URL from `database_variable` (`DATABASE_URL` when the service runs alone;
    /// `FLOTILLA_PRODUCT_DATABASE_URL` under `flotilla up`, where each service has its own), with
    /// the given defaults.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable.
    pub fn from_settings(
        settings: &Settings,
        database_variable: &str,
        default_database_url: &str,
        default_seed_demo: bool,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_settings(
                settings,
                "product",
                database_variable,
                default_database_url,
            )?,
            seed_demo: settings.bool("FLOTILLA_PRODUCT_SEED_DEMO", default_seed_demo)?,
        })
    }
}
