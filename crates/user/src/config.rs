//! The user service's settings: where accounts live, what a password hash costs, and the optional
//! first administrator. Everything is checked here, at start, so a bad value stops the program
//! with a message naming the variable before anything is opened (an administrator password that
//! breaks the policy included; its value is shown as `***`). Argon2 parameters below OWASP's
//! minimum are accepted, with a warning logged at start ([`UserConfig::weak_hashing_warning`]).

use std::fmt;

use platform::config::{ConfigError, Origin, Settings};
use platform::database::DatabaseConfig;

use crate::domain::{Email, Password};
use crate::password::{DEFAULT_ITERATIONS, DEFAULT_MEMORY_KIB, DEFAULT_PARALLELISM, HashParams};

/// The variable naming the first administrator's email.
pub const ADMIN_EMAIL: &str = "FLOTILLA_ADMIN_EMAIL";
/// The variable holding the first administrator's password.
pub const ADMIN_PASSWORD: &str = "FLOTILLA_ADMIN_PASSWORD";
/// The variable holding argon2's memory cost, in KiB.
pub const ARGON2_MEMORY_KIB: &str = "FLOTILLA_ARGON2_MEMORY_KIB";
/// The variable holding argon2's iteration count.
pub const ARGON2_ITERATIONS: &str = "FLOTILLA_ARGON2_ITERATIONS";
/// The variable holding argon2's lane count.
pub const ARGON2_PARALLELISM: &str = "FLOTILLA_ARGON2_PARALLELISM";
/// The variable holding the most database connections.
pub const DB_MAX_CONNECTIONS: &str = "FLOTILLA_USER_DB_MAX_CONNECTIONS";

/// How the user service stores accounts and checks passwords. Its `Debug` hides the password in
/// the database URL and the administrator's password.
#[derive(Clone)]
pub struct UserConfig {
    /// Where accounts live (`sqlite://PATH` or `postgres://…`) and the pool size
    /// (`FLOTILLA_USER_DB_MAX_CONNECTIONS`, default 10).
    pub database: DatabaseConfig,
    /// The cost of a password hash (`FLOTILLA_ARGON2_MEMORY_KIB`, `FLOTILLA_ARGON2_ITERATIONS`,
    /// `FLOTILLA_ARGON2_PARALLELISM`; OWASP's 19456 KiB, 2, 1 by default).
    pub hash_params: HashParams,
    /// The administrator to make sure of at start (`FLOTILLA_ADMIN_EMAIL` with
    /// `FLOTILLA_ADMIN_PASSWORD`), if both are set.
    pub admin: Option<AdminBootstrap>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("database", &self.database)
            .field("hash_params", &self.hash_params)
            .field("admin", &self.admin)
            .finish()
    }
}

/// The first administrator, from the settings. Its `Debug` shows the password as `***`.
#[derive(Debug, Clone)]
pub struct AdminBootstrap {
    /// The normalised email.
    pub email: Email,
    /// The password, already checked against the policy.
    pub password: Password,
}

impl UserConfig {
    /// Reads the database URL from `database_variable` (`DATABASE_URL` when the service runs
    /// alone; `FLOTILLA_USER_DATABASE_URL` under `flotilla up`, where each service has its own),
    /// defaulting to `default_database_url`, then the pool size, the argon2 parameters and the
    /// administrator bootstrap.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable: a malformed value, argon2 parameters it refuses,
    /// only one of `FLOTILLA_ADMIN_EMAIL` and `FLOTILLA_ADMIN_PASSWORD` set (naming the missing
    /// one), a malformed administrator email, or an administrator password outside the policy.
    pub fn from_settings(
        settings: &Settings,
        database_variable: &str,
        default_database_url: &str,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_settings(
                settings,
                "user",
                database_variable,
                default_database_url,
            )?,
            hash_params: hash_params(settings)?,
            admin: admin_bootstrap(settings)?,
        })
    }
}

impl UserConfig {
    /// The warning to log at start when the argon2 parameters are below OWASP's minimum
    /// ([`HashParams::meets_owasp_minimum`]), naming the settings, their values and the minimum;
    /// `None` when they meet it. Weak parameters are still accepted: tests and local runs use
    /// them to stay fast.
    pub fn weak_hashing_warning(&self) -> Option<String> {
        let params = self.hash_params;
        (!params.meets_owasp_minimum()).then(|| {
            format!(
                "argon2id parameters below OWASP's minimum: {ARGON2_MEMORY_KIB}={}, \
                 {ARGON2_ITERATIONS}={}, {ARGON2_PARALLELISM}={}; the minimum is \
                 {DEFAULT_MEMORY_KIB} KiB, {DEFAULT_ITERATIONS} iterations, \
                 {DEFAULT_PARALLELISM} lane (or an OWASP equivalent such as 47104 KiB with 1 \
                 iteration). Stolen password hashes are cheaper to crack: fine for tests, not for \
                 real accounts",
                params.memory_kib, params.iterations, params.parallelism
            )
        })
    }
}

fn hash_params(settings: &Settings) -> Result<HashParams, ConfigError> {
    let params = HashParams {
        memory_kib: settings.count(ARGON2_MEMORY_KIB, DEFAULT_MEMORY_KIB)?,
        iterations: settings.count(ARGON2_ITERATIONS, DEFAULT_ITERATIONS)?,
        parallelism: settings.count(ARGON2_PARALLELISM, DEFAULT_PARALLELISM)?,
    };
    match params.to_argon2() {
        Ok(_) => Ok(params),
        Err(argon2::Error::ThreadsTooMany) => Err(invalid(
            settings,
            ARGON2_PARALLELISM,
            params.parallelism.to_string(),
            "at most 16777215 lanes".into(),
        )),
        Err(error) => Err(invalid(
            settings,
            ARGON2_MEMORY_KIB,
            params.memory_kib.to_string(),
            format!(
                "at least 8 KiB per lane, so at least {} with {ARGON2_PARALLELISM}={} \
                 (argon2 says: {error})",
                u64::from(params.parallelism) * 8,
                params.parallelism
            ),
        )),
    }
}

fn admin_bootstrap(settings: &Settings) -> Result<Option<AdminBootstrap>, ConfigError> {
    // An empty default stands for "unset": `string` refuses a value that is set but empty.
    let email = settings.string(ADMIN_EMAIL, "")?;
    let password = settings.optional_secret(ADMIN_PASSWORD)?;
    let password = match (email.is_empty(), password) {
        (true, None) => return Ok(None),
        (false, Some(password)) => password,
        (true, Some(_)) => {
            return Err(missing(ADMIN_EMAIL, ADMIN_PASSWORD));
        }
        (false, None) => {
            return Err(missing(ADMIN_PASSWORD, ADMIN_EMAIL));
        }
    };
    let email = Email::parse("email", &email).map_err(|error| {
        invalid(
            settings,
            ADMIN_EMAIL,
            email.clone(),
            format!(
                "an email address such as admin@example.com ({})",
                error.reason
            ),
        )
    })?;
    let password = Password::new("password", password.expose().to_owned()).map_err(|error| {
        invalid(
            settings,
            ADMIN_PASSWORD,
            "***".into(),
            format!("a password that {}", error.reason),
        )
    })?;
    Ok(Some(AdminBootstrap { email, password }))
}

fn invalid(settings: &Settings, name: &str, value: String, expected: String) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value,
        origin: settings.origin(name),
        expected,
    }
}

/// One half of the administrator pair without the other: names the missing half.
fn missing(name: &str, given: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value: String::new(),
        origin: Origin::Default,
        expected: format!("a value, because {given} is set: set both or neither"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_URL: &str = "sqlite://data/user.db";

    fn parse(pairs: &[(&str, &str)]) -> Result<UserConfig, ConfigError> {
        UserConfig::from_settings(
            &Settings::from_pairs(pairs.iter().copied()),
            "DATABASE_URL",
            DEFAULT_URL,
        )
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        parse(pairs)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_are_owasp_and_no_admin() -> Result<(), ConfigError> {
        let config = parse(&[])?;
        assert_eq!(config.database.url, DEFAULT_URL);
        assert_eq!(config.database.max_connections, 10);
        assert_eq!(
            config.hash_params,
            HashParams {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 1
            }
        );
        assert!(config.admin.is_none());
        Ok(())
    }

    #[test]
    fn every_setting_is_read() -> Result<(), ConfigError> {
        let config = UserConfig::from_settings(
            &Settings::from_pairs([
                ("FLOTILLA_USER_DATABASE_URL", "postgres://u@db/users"),
                ("FLOTILLA_USER_DB_MAX_CONNECTIONS", "3"),
                ("FLOTILLA_ARGON2_MEMORY_KIB", "65536"),
                ("FLOTILLA_ARGON2_ITERATIONS", "3"),
                ("FLOTILLA_ARGON2_PARALLELISM", "4"),
                ("FLOTILLA_ADMIN_EMAIL", " Root@Example.COM "),
                ("FLOTILLA_ADMIN_PASSWORD", "a long admin password"),
            ]),
            "FLOTILLA_USER_DATABASE_URL",
            DEFAULT_URL,
        )?;
        assert_eq!(config.database.url, "postgres://u@db/users");
        assert_eq!(config.database.max_connections, 3);
        assert_eq!(
            config.hash_params,
            HashParams {
                memory_kib: 65_536,
                iterations: 3,
                parallelism: 4
            }
        );
        let admin = config.admin.ok_or_else(|| ConfigError::File {
            path: "test".into(),
            reason: "no admin".into(),
        })?;
        assert_eq!(admin.email.as_str(), "Root@example.com");
        assert_eq!(admin.password.expose(), b"a long admin password");
        Ok(())
    }

    #[test]
    fn one_half_of_the_admin_pair_names_the_other() {
        let only_email = error_of(&[("FLOTILLA_ADMIN_EMAIL", "root@example.com")]);
        assert!(
            only_email.starts_with("FLOTILLA_ADMIN_PASSWORD="),
            "{only_email}"
        );
        let only_password = error_of(&[("FLOTILLA_ADMIN_PASSWORD", "a long admin password")]);
        assert!(
            only_password.starts_with("FLOTILLA_ADMIN_EMAIL="),
            "{only_password}"
        );
        assert!(!only_password.contains("a long admin password"));
    }

    #[test]
    fn a_bad_admin_is_refused_at_start_without_showing_the_password() {
        let bad_email = error_of(&[
            ("FLOTILLA_ADMIN_EMAIL", "root"),
            ("FLOTILLA_ADMIN_PASSWORD", "a long admin password"),
        ]);
        assert!(
            bad_email.starts_with("FLOTILLA_ADMIN_EMAIL="),
            "{bad_email}"
        );
        let short = error_of(&[
            ("FLOTILLA_ADMIN_EMAIL", "root@example.com"),
            ("FLOTILLA_ADMIN_PASSWORD", "short"),
        ]);
        assert!(
            short.starts_with("FLOTILLA_ADMIN_PASSWORD=\"***\""),
            "{short}"
        );
        assert!(short.contains("at least 8 characters"), "{short}");
        assert!(!short.contains("\"short\""), "{short}");
        let empty = error_of(&[("FLOTILLA_ADMIN_EMAIL", "")]);
        assert!(empty.starts_with("FLOTILLA_ADMIN_EMAIL="), "{empty}");
    }

    #[test]
    fn argon2_parameters_are_checked_at_start() {
        let zero = error_of(&[("FLOTILLA_ARGON2_ITERATIONS", "0")]);
        assert!(zero.starts_with("FLOTILLA_ARGON2_ITERATIONS="), "{zero}");
        let too_little = error_of(&[
            ("FLOTILLA_ARGON2_MEMORY_KIB", "16"),
            ("FLOTILLA_ARGON2_PARALLELISM", "4"),
        ]);
        assert!(
            too_little.starts_with("FLOTILLA_ARGON2_MEMORY_KIB=\"16\""),
            "{too_little}"
        );
        assert!(too_little.contains("at least 32"), "{too_little}");
        let bare = error_of(&[("FLOTILLA_ARGON2_MEMORY_KIB", "19 MiB")]);
        assert!(bare.starts_with("FLOTILLA_ARGON2_MEMORY_KIB="), "{bare}");
    }

    #[test]
    fn weak_argon2_parameters_are_accepted_with_a_warning() -> Result<(), ConfigError> {
        assert_eq!(parse(&[])?.weak_hashing_warning(), None);
        let strong = parse(&[
            ("FLOTILLA_ARGON2_MEMORY_KIB", "47104"),
            ("FLOTILLA_ARGON2_ITERATIONS", "1"),
        ])?;
        assert_eq!(strong.weak_hashing_warning(), None);
        let weak = parse(&[
            ("FLOTILLA_ARGON2_MEMORY_KIB", "1024"),
            ("FLOTILLA_ARGON2_ITERATIONS", "1"),
        ])?;
        let warning = weak.weak_hashing_warning().unwrap_or_default();
        for part in [
            "FLOTILLA_ARGON2_MEMORY_KIB=1024",
            "FLOTILLA_ARGON2_ITERATIONS=1",
            "FLOTILLA_ARGON2_PARALLELISM=1",
            "19456 KiB, 2 iterations, 1 lane",
        ] {
            assert!(warning.contains(part), "{part} missing from {warning}");
        }
        Ok(())
    }

    #[test]
    fn debug_shows_no_password() -> Result<(), ConfigError> {
        let config = parse(&[
            ("DATABASE_URL", "postgres://flotilla:db-secret@db/users"),
            ("FLOTILLA_ADMIN_EMAIL", "root@example.com"),
            ("FLOTILLA_ADMIN_PASSWORD", "admin-secret-password"),
        ])?;
        let shown = format!("{config:?}");
        assert!(!shown.contains("db-secret"), "{shown}");
        assert!(!shown.contains("admin-secret"), "{shown}");
        assert!(shown.contains("root@example.com"), "{shown}");
        Ok(())
    }

    #[test]
    fn the_database_variable_is_the_callers() {
        let wrong = error_of(&[("DATABASE_URL", "mysql://db/users")]);
        assert!(wrong.starts_with("DATABASE_URL="), "{wrong}");
    }
}
