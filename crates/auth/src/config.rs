//! The auth service's settings: its database, its signing keys, token lifetimes, the failed-login
//! limits, which proxies may name the client, and where the user service listens. Issuer, audience, leeway and `JWT_SECRET` are read
//! through `platform::auth::AuthConfig`, so the service that signs tokens and every component that
//! verifies them read those settings the same way.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use platform::auth::{AuthConfig, KeySource};
use platform::config::{ConfigError, Origin, Secret, Settings};
use platform::database::DatabaseConfig;

use crate::domain::TokenRules;
use crate::limiter::LoginLimits;

/// The setting that lists the proxies whose `x-forwarded-for` is believed.
pub const TRUSTED_PROXIES_SETTING: &str = "FLOTILLA_AUTH_TRUSTED_PROXIES";

/// How the service signs tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningConfig {
    /// Ed25519 keys from files (the default).
    Ed25519 {
        /// The current private key, PKCS#8 PEM (`FLOTILLA_JWT_KEY_FILE`).
        key_file: PathBuf,
        /// The key before the last rotation, kept for its grace period
        /// (`FLOTILLA_JWT_PREVIOUS_KEY_FILE`, optional; a missing file means none).
        previous_key_file: Option<PathBuf>,
    },
    /// HS256 with the shared secret in `JWT_SECRET` (at least 32 bytes).
    SharedSecret(Secret),
}

/// Everything the auth service needs to start. `Debug` shows the database URL with its password
/// redacted, and the shared secret (if any) as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthServiceConfig {
    /// Where refresh tokens and token ids live (`sqlite://PATH` or `postgres://…`) and the pool
    /// size (`FLOTILLA_AUTH_DB_MAX_CONNECTIONS`, default 10).
    pub database: DatabaseConfig,
    /// The signing keys.
    pub signing: SigningConfig,
    /// `iss` of issued tokens (`FLOTILLA_JWT_ISSUER`, default `flotilla-auth`).
    pub issuer: String,
    /// `aud` of issued tokens (`FLOTILLA_JWT_AUDIENCE`, default `flotilla`).
    pub audience: String,
    /// Clock skew tolerated on expiry (`FLOTILLA_JWT_LEEWAY`, default 30s).
    pub leeway: Duration,
    /// Access-token lifetime (`JWT_ACCESS_EXPIRY`, default 15m).
    pub access_expiry: Duration,
    /// Refresh-token lifetime (`FLOTILLA_REFRESH_EXPIRY`, default 7 days).
    pub refresh_expiry: Duration,
    /// The absolute lifetime of a refresh-token family, counted from its login
    /// (`FLOTILLA_REFRESH_MAX_LIFETIME`, default 30 days, at least `refresh_expiry`): no rotation
    /// reaches past it, so a session that keeps refreshing still ends.
    pub refresh_max_lifetime: Duration,
    /// The failed-login limits (`FLOTILLA_LOGIN_MAX_FAILURES`,
    /// `FLOTILLA_LOGIN_MAX_FAILURES_PER_ADDRESS`, `FLOTILLA_LOGIN_WINDOW`).
    pub login_limits: LoginLimits,
    /// The peers whose `x-forwarded-for` names the client for the per-address login limit
    /// (`FLOTILLA_AUTH_TRUSTED_PROXIES`, comma-separated IP addresses, default `127.0.0.1,::1`; an
    /// empty value trusts none). A login from any other peer is counted under the peer's own
    /// address, whatever header it sends.
    pub trusted_proxies: Vec<IpAddr>,
}

impl AuthServiceConfig {
    /// Reads the database URL from `database_variable` (`DATABASE_URL` under `flotilla serve auth`,
    /// `FLOTILLA_AUTH_DATABASE_URL` under `flotilla up`) and every other setting. In the default
    /// Ed25519 mode the key file is `FLOTILLA_JWT_KEY_FILE`, or `default_key_file` when that is
    /// unset (`flotilla up` passes `<data-dir>/jwt-ed25519.pem`); with neither, starting fails.
    /// When `JWT_SECRET` is set the key-file settings are not read.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable: a malformed value, a secret under 32 bytes, a
    /// zero lifetime or window, a refresh-family lifetime shorter than the refresh-token
    /// lifetime, or no key file in Ed25519 mode.
    pub fn from_settings(
        settings: &Settings,
        database_variable: &str,
        default_database_url: &str,
        default_key_file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let database = DatabaseConfig::from_settings(
            settings,
            "auth",
            database_variable,
            default_database_url,
        )?;
        // Only the mode, issuer, audience and leeway are used from this.
        let verification = AuthConfig::from_settings(settings)?;
        let signing = match verification.keys {
            KeySource::SharedSecret(secret) => SigningConfig::SharedSecret(secret),
            KeySource::Jwks => SigningConfig::Ed25519 {
                key_file: required_path(settings, "FLOTILLA_JWT_KEY_FILE", default_key_file)?,
                previous_key_file: optional_path(settings, "FLOTILLA_JWT_PREVIOUS_KEY_FILE")?,
            },
        };
        let refresh_expiry = at_least_a_second(
            settings,
            "FLOTILLA_REFRESH_EXPIRY",
            Duration::from_secs(7 * 24 * 3600),
        )?;
        let refresh_max_lifetime = refresh_max_lifetime(settings, refresh_expiry)?;
        Ok(Self {
            database,
            signing,
            issuer: verification.issuer,
            audience: verification.audience,
            leeway: verification.leeway,
            access_expiry: at_least_a_second(
                settings,
                "JWT_ACCESS_EXPIRY",
                Duration::from_secs(15 * 60),
            )?,
            refresh_expiry,
            refresh_max_lifetime,
            login_limits: LoginLimits {
                max_failures_per_account: settings.count("FLOTILLA_LOGIN_MAX_FAILURES", 5)?,
                max_failures_per_address: settings
                    .count("FLOTILLA_LOGIN_MAX_FAILURES_PER_ADDRESS", 20)?,
                window: at_least_a_second(
                    settings,
                    "FLOTILLA_LOGIN_WINDOW",
                    Duration::from_secs(15 * 60),
                )?,
            },
            trusted_proxies: trusted_proxies(settings)?,
        })
    }

    /// The rules every issued token follows.
    pub fn token_rules(&self) -> TokenRules {
        TokenRules {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            access_lifetime: self.access_expiry,
            refresh_lifetime: self.refresh_expiry,
            refresh_max_lifetime: self.refresh_max_lifetime,
            leeway: self.leeway,
        }
    }
}

impl fmt::Debug for AuthServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthServiceConfig")
            .field("database", &self.database)
            .field("signing", &self.signing)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("access_expiry", &self.access_expiry)
            .field("refresh_expiry", &self.refresh_expiry)
            .field("refresh_max_lifetime", &self.refresh_max_lifetime)
            .field("login_limits", &self.login_limits)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

/// `FLOTILLA_AUTH_TRUSTED_PROXIES`: comma-separated IP addresses; unset means loopback (where the
/// gateway calls from under `flotilla up`), and an empty value means no proxy is trusted.
fn trusted_proxies(settings: &Settings) -> Result<Vec<IpAddr>, ConfigError> {
    let loopback = [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    settings.ip_addresses(TRUSTED_PROXIES_SETTING, &loopback)
}

/// The setting that caps a refresh-token family's whole life.
pub const REFRESH_MAX_LIFETIME_SETTING: &str = "FLOTILLA_REFRESH_MAX_LIFETIME";
/// Its default: 30 days.
pub const DEFAULT_REFRESH_MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// `FLOTILLA_REFRESH_MAX_LIFETIME`: at least `refresh_expiry`, since a shorter cap would make the
/// refresh-token lifetime a lie for every token, the first one included.
fn refresh_max_lifetime(
    settings: &Settings,
    refresh_expiry: Duration,
) -> Result<Duration, ConfigError> {
    let name = REFRESH_MAX_LIFETIME_SETTING;
    let value = settings.duration(name, DEFAULT_REFRESH_MAX_LIFETIME)?;
    if value < refresh_expiry {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: format!("{value:?}"),
            origin: settings.origin(name),
            expected: format!(
                "a duration of at least FLOTILLA_REFRESH_EXPIRY ({refresh_expiry:?}), such as \
                 30days"
            ),
        });
    }
    Ok(value)
}

/// A duration of at least one second (JWT times are whole seconds, and a zero lifetime or window
/// would switch the feature off without saying so).
fn at_least_a_second(
    settings: &Settings,
    name: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = settings.duration(name, default)?;
    if value < Duration::from_secs(1) {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: format!("{value:?}"),
            origin: settings.origin(name),
            expected: "a duration of at least 1s, such as 30s, 15m or 7days".into(),
        });
    }
    Ok(value)
}

/// A path setting that must be given, by the setting or by the caller's default.
fn required_path(
    settings: &Settings,
    name: &str,
    default: Option<&Path>,
) -> Result<PathBuf, ConfigError> {
    let default = default.map(|path| path.display().to_string());
    let value = settings.string(name, default.as_deref().unwrap_or_default())?;
    if value.is_empty() {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: String::new(),
            origin: Origin::Default,
            expected: "the path of the Ed25519 private key in PKCS#8 PEM form (make one with \
                       `openssl genpkey -algorithm ed25519 -out jwt-ed25519.pem`), or set \
                       JWT_SECRET for the shared-secret mode"
                .into(),
        });
    }
    Ok(PathBuf::from(value))
}

/// A path setting that may be left unset.
fn optional_path(settings: &Settings, name: &str) -> Result<Option<PathBuf>, ConfigError> {
    let value = settings.string(name, "")?;
    Ok((!value.is_empty()).then(|| PathBuf::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn parse(pairs: &[(&str, &str)]) -> Result<AuthServiceConfig, ConfigError> {
        AuthServiceConfig::from_settings(
            &Settings::from_pairs(pairs.iter().copied()),
            "DATABASE_URL",
            "sqlite://data/auth.db",
            Some(Path::new("data/jwt-ed25519.pem")),
        )
    }

    fn message(result: Result<AuthServiceConfig, ConfigError>) -> String {
        result
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_follow_the_documented_values() -> TestResult {
        let config = parse(&[])?;
        assert_eq!(config.database.url, "sqlite://data/auth.db");
        assert_eq!(config.database.max_connections, 10);
        assert_eq!(
            config.signing,
            SigningConfig::Ed25519 {
                key_file: PathBuf::from("data/jwt-ed25519.pem"),
                previous_key_file: None,
            }
        );
        assert_eq!(config.issuer, "flotilla-auth");
        assert_eq!(config.audience, "flotilla");
        assert_eq!(config.leeway, Duration::from_secs(30));
        assert_eq!(config.access_expiry, Duration::from_secs(900));
        assert_eq!(config.refresh_expiry, Duration::from_secs(604_800));
        assert_eq!(config.refresh_max_lifetime, Duration::from_secs(2_592_000));
        assert_eq!(config.login_limits, LoginLimits::default());
        assert_eq!(
            config.trusted_proxies,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            ],
            "loopback: the gateway under `flotilla up`"
        );
        Ok(())
    }

    #[test]
    fn every_setting_is_read() -> TestResult {
        let config = AuthServiceConfig::from_settings(
            &Settings::from_pairs([
                ("FLOTILLA_AUTH_DATABASE_URL", "postgres://auth@db/auth"),
                ("FLOTILLA_AUTH_DB_MAX_CONNECTIONS", "3"),
                ("FLOTILLA_JWT_KEY_FILE", "/keys/current.pem"),
                ("FLOTILLA_JWT_PREVIOUS_KEY_FILE", "/keys/previous.pem"),
                ("FLOTILLA_JWT_ISSUER", "issuer"),
                ("FLOTILLA_JWT_AUDIENCE", "audience"),
                ("FLOTILLA_JWT_LEEWAY", "5s"),
                ("JWT_ACCESS_EXPIRY", "5m"),
                ("FLOTILLA_REFRESH_EXPIRY", "1day"),
                ("FLOTILLA_REFRESH_MAX_LIFETIME", "10days"),
                ("FLOTILLA_LOGIN_MAX_FAILURES", "3"),
                ("FLOTILLA_LOGIN_MAX_FAILURES_PER_ADDRESS", "7"),
                ("FLOTILLA_LOGIN_WINDOW", "1h"),
                ("FLOTILLA_AUTH_TRUSTED_PROXIES", " 10.0.0.5 , fd00::7"),
                ("FLOTILLA_USER_ENDPOINT", "https://user.internal:443"),
            ]),
            "FLOTILLA_AUTH_DATABASE_URL",
            "sqlite://unused.db",
            None,
        )?;
        assert_eq!(config.database.url, "postgres://auth@db/auth");
        assert_eq!(config.database.max_connections, 3);
        assert_eq!(
            config.signing,
            SigningConfig::Ed25519 {
                key_file: PathBuf::from("/keys/current.pem"),
                previous_key_file: Some(PathBuf::from("/keys/previous.pem")),
            }
        );
        let rules = config.token_rules();
        assert_eq!(
            (rules.issuer.as_str(), rules.audience.as_str()),
            ("issuer", "audience")
        );
        assert_eq!(rules.leeway, Duration::from_secs(5));
        assert_eq!(rules.access_lifetime, Duration::from_secs(300));
        assert_eq!(rules.refresh_lifetime, Duration::from_secs(86_400));
        assert_eq!(rules.refresh_max_lifetime, Duration::from_secs(864_000));
        assert_eq!(
            config.login_limits,
            LoginLimits {
                max_failures_per_account: 3,
                max_failures_per_address: 7,
                window: Duration::from_secs(3600),
            }
        );
        assert_eq!(
            config.trusted_proxies,
            vec!["10.0.0.5".parse::<IpAddr>()?, "fd00::7".parse::<IpAddr>()?]
        );
        Ok(())
    }

    #[test]
    fn a_shared_secret_replaces_the_key_files() -> TestResult {
        let config = AuthServiceConfig::from_settings(
            &Settings::from_pairs([("JWT_SECRET", "0123456789abcdef0123456789abcdef")]),
            "DATABASE_URL",
            "sqlite://auth.db",
            None,
        )?;
        assert!(matches!(config.signing, SigningConfig::SharedSecret(_)));
        assert!(
            !format!("{config:?}").contains("0123456789abcdef"),
            "the secret never prints"
        );
        let short = message(parse(&[("JWT_SECRET", "short")]));
        assert!(
            short.contains("JWT_SECRET") && short.contains("32 bytes"),
            "{short}"
        );
        Ok(())
    }

    #[test]
    fn ed25519_mode_needs_a_key_file() {
        let error = message(AuthServiceConfig::from_settings(
            &Settings::from_pairs(Vec::<(String, String)>::new()),
            "DATABASE_URL",
            "sqlite://auth.db",
            None,
        ));
        assert!(
            error.contains("FLOTILLA_JWT_KEY_FILE") && error.contains("JWT_SECRET"),
            "{error}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        for (name, value) in [
            ("JWT_ACCESS_EXPIRY", "0s"),
            ("JWT_ACCESS_EXPIRY", "900"),
            ("FLOTILLA_REFRESH_EXPIRY", "soon"),
            ("FLOTILLA_REFRESH_MAX_LIFETIME", "forever"),
            ("FLOTILLA_LOGIN_WINDOW", "0ms"),
            ("FLOTILLA_LOGIN_MAX_FAILURES", "0"),
            ("FLOTILLA_LOGIN_MAX_FAILURES_PER_ADDRESS", "-1"),
            ("FLOTILLA_AUTH_DB_MAX_CONNECTIONS", "many"),
            ("FLOTILLA_JWT_KEY_FILE", " "),
            ("DATABASE_URL", "mysql://x"),
        ] {
            let error = message(parse(&[(name, value)]));
            assert!(error.contains(name), "{name}={value}: {error}");
        }
    }

    #[test]
    fn the_refresh_family_lifetime_is_at_least_the_refresh_lifetime() -> TestResult {
        let shorter = message(parse(&[
            ("FLOTILLA_REFRESH_EXPIRY", "7days"),
            ("FLOTILLA_REFRESH_MAX_LIFETIME", "6days"),
        ]));
        assert!(
            shorter.contains("FLOTILLA_REFRESH_MAX_LIFETIME")
                && shorter.contains("at least FLOTILLA_REFRESH_EXPIRY"),
            "{shorter}"
        );
        // Below the default refresh lifetime too, when only the cap is set.
        let below_default = message(parse(&[("FLOTILLA_REFRESH_MAX_LIFETIME", "1day")]));
        assert!(
            below_default.contains("FLOTILLA_REFRESH_MAX_LIFETIME"),
            "{below_default}"
        );
        // Equal is allowed: then no rotation ever extends a session.
        let equal = parse(&[
            ("FLOTILLA_REFRESH_EXPIRY", "2days"),
            ("FLOTILLA_REFRESH_MAX_LIFETIME", "2days"),
        ])?;
        assert_eq!(equal.refresh_max_lifetime, equal.refresh_expiry);
        Ok(())
    }

    #[test]
    fn an_empty_proxy_list_trusts_none() -> TestResult {
        for empty in ["", " "] {
            let config = parse(&[("FLOTILLA_AUTH_TRUSTED_PROXIES", empty)])?;
            assert!(config.trusted_proxies.is_empty(), "{empty:?}");
        }
        Ok(())
    }

    #[test]
    fn a_bad_proxy_list_is_named_with_the_expected_form() {
        for value in [
            "gateway.internal",
            "10.0.0.0/8",
            "127.0.0.1,",
            "127.0.0.1;::1",
            "127.0.0.1:50052",
        ] {
            let error = message(parse(&[("FLOTILLA_AUTH_TRUSTED_PROXIES", value)]));
            assert!(
                error.contains("FLOTILLA_AUTH_TRUSTED_PROXIES")
                    && error.contains(value)
                    && error.contains("comma-separated IP addresses"),
                "{value}: {error}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_database_password() -> TestResult {
        let config = parse(&[(
            "DATABASE_URL",
            "postgres://auth:hunter2-s3cret@db.internal:5432/auth?sslmode=require",
        )])?;
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-s3cret"), "{shown}");
        assert!(
            shown.contains("postgres://auth:***@db.internal:5432/auth"),
            "{shown}"
        );
        assert_eq!(
            config.database.url,
            "postgres://auth:hunter2-s3cret@db.internal:5432/auth?sslmode=require",
            "only the printout is redacted"
        );
        Ok(())
    }
}
