//! Typed settings from environment variables and an optional TOML file.
//!
//! Every setting is named by its environment variable, in the file too (a flat table such as
//! `DATABASE_URL = "postgres://…"`), so one name is all a person has to know; the environment wins over
//! the file. Components parse their own documented config structs from a [`Settings`], and tests hand
//! a [`Settings::from_pairs`] map instead of touching the process environment.
//!
//! Why not figment or config-rs: their errors name a nested key, while an operator needs the
//! variable, the value they gave and the form that was expected (`FLOTILLA_DRAIN_TIMEOUT="10" is not a
//! duration: expected a number with a unit, such as 30s or 15m`). The parsing here is small; the
//! duration grammar itself comes from `humantime`.
//!
//! Every lookup is recorded with its effective value and origin, which is what `flotilla config`
//! prints (secrets redacted) and how unknown keys in a settings file are caught.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

/// Where a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The process environment (or the map a test handed in).
    Environment,
    /// A key in the settings file at this path.
    File(PathBuf),
    /// Nothing was set; the documented default applies.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Environment => f.write_str("environment"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A bad setting: names the variable, the value given (redacted for secrets), and the expected form.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value was given but does not parse.
    #[error("{name}={value:?} (from {origin}) is not valid: expected {expected}")]
    Invalid {
        /// The variable's name.
        name: String,
        /// The value as given, or `***` for a secret.
        value: String,
        /// Where the value came from.
        origin: Origin,
        /// The expected form, for a person to act on.
        expected: String,
    },
    /// The settings file could not be read or parsed.
    #[error("settings file {path}: {reason}")]
    File {
        /// The file's path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The settings file names settings that no component reads (most likely a typo).
    #[error("settings file {path} has unknown settings: {names}")]
    UnknownInFile {
        /// The file's path.
        path: PathBuf,
        /// The unknown names, comma-separated.
        names: String,
    },
}

/// One recorded lookup: what `flotilla config` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSetting {
    /// The variable's name.
    pub name: String,
    /// The effective value, already redacted when the setting is a secret.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// The raw settings of one run: environment over file, plus a record of every lookup.
#[derive(Debug)]
pub struct Settings {
    environment: BTreeMap<String, String>,
    file: BTreeMap<String, String>,
    file_path: Option<PathBuf>,
    defaults: BTreeMap<String, String>,
    lookups: Mutex<BTreeMap<String, EffectiveSetting>>,
}

impl Settings {
    /// Reads the process environment and, when given, a TOML settings file.
    ///
    /// # Errors
    /// [`ConfigError::File`] when the file cannot be read, is not TOML, or holds a nested table or
    /// an array (settings are flat `NAME = value` pairs).
    pub fn from_environment(file: Option<&Path>) -> Result<Self, ConfigError> {
        // `vars()` would panic on a variable that is not Unicode, even one nothing here reads; such a
        // variable is skipped, and a setting that needs it reads as unset.
        let environment = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        let mut settings = Self::from_pairs(environment);
        if let Some(path) = file {
            settings.file = read_settings_file(path)?;
            settings.file_path = Some(path.to_path_buf());
        }
        Ok(settings)
    }

    /// Settings from a fixed set of pairs standing for the environment; what tests use.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            environment: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            file: BTreeMap::new(),
            file_path: None,
            defaults: BTreeMap::new(),
            lookups: Mutex::new(BTreeMap::new()),
        }
    }

    /// Returns a copy whose default for `name` is `value`, used when neither the environment nor the
    /// file sets it. `flotilla up` uses this for its one-machine defaults (loopback addresses, SQLite
    /// files under the data directory).
    #[must_use]
    pub fn with_default(mut self, name: &str, value: impl Into<String>) -> Self {
        self.defaults.insert(name.to_owned(), value.into());
        self
    }

    /// The raw value and its origin, environment first.
    fn raw(&self, name: &str) -> Option<(&str, Origin)> {
        if let Some(value) = self.environment.get(name) {
            return Some((value, Origin::Environment));
        }
        if let (Some(value), Some(path)) = (self.file.get(name), &self.file_path) {
            return Some((value, Origin::File(path.clone())));
        }
        self.defaults
            .get(name)
            .map(|value| (value.as_str(), Origin::Default))
    }

    /// Where `name`'s value comes from, for errors found after parsing (such as a filter that the
    /// logging library refuses).
    pub fn origin(&self, name: &str) -> Origin {
        self.raw(name)
            .map(|(_, origin)| origin)
            .unwrap_or(Origin::Default)
    }

    fn record(&self, name: &str, value: &str, origin: Origin) {
        self.lookups_insert(name, &redact(name, value), origin);
    }

    /// Records a lookup with `shown` exactly as it will be printed (already redacted).
    fn lookups_insert(&self, name: &str, shown: &str, origin: Origin) {
        let shown = shown.to_owned();
        if let Ok(mut lookups) = self.lookups.lock() {
            lookups.insert(
                name.to_owned(),
                EffectiveSetting {
                    name: name.to_owned(),
                    value: shown,
                    origin,
                },
            );
        }
    }

    /// Parses `name` with `parse`, or returns `default` when it is unset. An empty value is an error,
    /// not a silent default: someone meant to set it.
    fn parse_or<T, D>(
        &self,
        name: &str,
        default: T,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ConfigError>
    where
        D: fmt::Display,
        T: Shown<D>,
    {
        match self.raw(name) {
            None => {
                let shown = default.shown().to_string();
                if shown.is_empty() {
                    self.lookups_insert(name, "(not set)", Origin::Default);
                } else {
                    self.record(name, &shown, Origin::Default);
                }
                Ok(default)
            }
            Some((value, origin)) => {
                let parsed = if value.trim().is_empty() {
                    None
                } else {
                    parse(value.trim())
                };
                match parsed {
                    Some(parsed) => {
                        self.record(name, value, origin);
                        Ok(parsed)
                    }
                    None => Err(ConfigError::Invalid {
                        name: name.to_owned(),
                        value: redact(name, value),
                        origin,
                        expected: if value.trim().is_empty() {
                            format!("{expected} (it is empty; unset it to use the default)")
                        } else {
                            expected.to_owned()
                        },
                    }),
                }
            }
        }
    }

    /// A duration in human form (`500ms`, `30s`, `15m`, `1h 30m`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a bare number, an unknown unit or an empty value.
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse_or(
            name,
            default,
            "a duration with a unit, such as 500ms, 30s or 15m",
            |value| humantime::parse_duration(value).ok(),
        )
    }

    /// A listen address, `host:port` with a numeric IP (port 0 picks a free port).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when the value is not `IP:PORT`.
    pub fn socket_addr(&self, name: &str, default: SocketAddr) -> Result<SocketAddr, ConfigError> {
        self.parse_or(
            name,
            default,
            "a listen address IP:PORT, such as 0.0.0.0:8080 or 127.0.0.1:0",
            |value| SocketAddr::from_str(value).ok(),
        )
    }

    /// An absolute URL whose scheme is one of `schemes`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when the value has another scheme or no host part.
    pub fn url(&self, name: &str, default: &str, schemes: &[&str]) -> Result<String, ConfigError> {
        let expected = format!("{}, such as {default}", url_form(schemes));
        self.parse_or(name, default.to_owned(), &expected, |value| {
            is_url(value, schemes).then(|| value.to_owned())
        })
    }

    /// An optional absolute URL whose scheme is one of `schemes`: `None` when unset.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when set to another scheme, no host part, or nothing.
    pub fn optional_url(
        &self,
        name: &str,
        schemes: &[&str],
    ) -> Result<Option<String>, ConfigError> {
        self.parse_or(name, None, &url_form(schemes), |value| {
            is_url(value, schemes).then(|| Some(value.to_owned()))
        })
    }

    /// An optional free-form string: `None` when unset.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when set but empty.
    pub fn optional_string(&self, name: &str) -> Result<Option<String>, ConfigError> {
        self.parse_or(name, None, "a non-empty value", |value| {
            Some(Some(value.to_owned()))
        })
    }

    /// A fraction from 0 to 1, such as a sampling ratio (`0.25`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for anything but a number from 0 to 1.
    pub fn fraction(&self, name: &str, default: f64) -> Result<f64, ConfigError> {
        self.parse_or(
            name,
            default,
            "a number from 0 to 1, such as 0.25",
            |value| {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|fraction| (0.0..=1.0).contains(fraction))
            },
        )
    }

    /// A whole number of milliseconds, the form OpenTelemetry's variables use
    /// (`OTEL_EXPORTER_OTLP_TIMEOUT=10000`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for anything but digits.
    pub fn milliseconds(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse_or(
            name,
            default,
            "a whole number of milliseconds, such as 10000",
            |value| value.parse::<u64>().ok().map(Duration::from_millis),
        )
    }

    /// A boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for any other value.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        self.parse_or(name, default, "true or false", |value| {
            match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            }
        })
    }

    /// A comma-separated list of IP addresses, such as trusted proxies. Unlike other settings, an
    /// empty value is meaningful here: no addresses (trust no proxy), whatever the default.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when an entry is not an IP address.
    pub fn ip_addresses(&self, name: &str, default: &[IpAddr]) -> Result<Vec<IpAddr>, ConfigError> {
        if let Some((value, origin)) = self.raw(name)
            && value.trim().is_empty()
        {
            self.lookups_insert(name, "(none)", origin);
            return Ok(Vec::new());
        }
        self.parse_or(
            name,
            IpList(default.to_vec()),
            "comma-separated IP addresses, such as 10.0.0.2,10.0.0.3",
            |value| {
                value
                    .split(',')
                    .map(|entry| entry.trim().parse::<IpAddr>().ok())
                    .collect::<Option<Vec<_>>>()
                    .map(IpList)
            },
        )
        .map(|IpList(addresses)| addresses)
    }

    /// An optional IP address, such as the address a service advertises to discovery: `None` when
    /// unset.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when set to anything but one IP address.
    pub fn optional_ip(&self, name: &str) -> Result<Option<IpAddr>, ConfigError> {
        self.parse_or(
            name,
            None,
            "one IP address, such as 10.0.0.7 or fd00::7",
            |value| value.parse::<IpAddr>().ok().map(Some),
        )
    }

    /// A comma-separated list of `host:port` addresses (an `http://` prefix is accepted and
    /// dropped), such as the fixed instances of a service; host names are kept for the caller to
    /// resolve.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when an entry has no port, a bad port, or another scheme.
    pub fn host_ports(&self, name: &str, default: &[&str]) -> Result<Vec<String>, ConfigError> {
        self.parse_or(
            name,
            HostPorts(default.iter().map(|entry| (*entry).to_owned()).collect()),
            "comma-separated HOST:PORT addresses, such as 10.0.0.7:50053,product-2:50053",
            |value| {
                value
                    .split(',')
                    .map(|entry| host_port(entry.trim()))
                    .collect::<Option<Vec<_>>>()
                    .map(HostPorts)
            },
        )
        .map(|HostPorts(entries)| entries)
    }

    /// A whole number of at least 1, such as a connection count.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for zero, a negative number or anything but digits.
    pub fn count(&self, name: &str, default: u32) -> Result<u32, ConfigError> {
        self.parse_or(name, default, "a whole number of at least 1", |value| {
            value.parse::<u32>().ok().filter(|count| *count > 0)
        })
    }

    /// One of a fixed set of words, compared without regard to case; returned in lower case.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing the accepted words.
    pub fn choice(
        &self,
        name: &str,
        default: &str,
        choices: &[&str],
    ) -> Result<String, ConfigError> {
        let expected = format!("one of {}", choices.join(", "));
        self.parse_or(name, default.to_owned(), &expected, |value| {
            let value = value.to_ascii_lowercase();
            choices.contains(&value.as_str()).then_some(value)
        })
    }

    /// The variable to read for `name` (`FLOTILLA_BREAKER_FAILURES`) as it applies to calls to the
    /// service `upstream` ("product"): `FLOTILLA_PRODUCT_BREAKER_FAILURES` when that is set, so
    /// one upstream can be tuned apart from the others, else `name` itself. Errors then name the
    /// variable that was really read.
    pub fn per_upstream(&self, upstream: &str, name: &str) -> String {
        let rest = name.strip_prefix("FLOTILLA_").unwrap_or(name);
        let specific = format!("FLOTILLA_{}_{rest}", upstream.to_ascii_uppercase());
        if self.raw(&specific).is_some() {
            specific
        } else {
            name.to_owned()
        }
    }

    /// A free-form string.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when set but empty.
    pub fn string(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        self.parse_or(name, default.to_owned(), "a non-empty value", |value| {
            Some(value.to_owned())
        })
    }

    /// An optional secret: `None` when unset. It is never printed, and errors never show it.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when set but empty or only whitespace.
    pub fn optional_secret(&self, name: &str) -> Result<Option<Secret>, ConfigError> {
        match self.raw(name) {
            None => {
                self.lookups_insert(name, "(not set)", Origin::Default);
                Ok(None)
            }
            Some((value, origin)) if value.trim().is_empty() => Err(ConfigError::Invalid {
                name: name.to_owned(),
                value: String::new(),
                origin,
                expected: "a non-empty value (it is empty; unset it if it is not needed)".into(),
            }),
            Some((value, origin)) => {
                self.record(name, "***", origin);
                Ok(Some(Secret::new(value.to_owned())))
            }
        }
    }

    /// Every setting looked up so far with its effective value (secrets redacted), by name.
    pub fn effective(&self) -> Vec<EffectiveSetting> {
        self.lookups
            .lock()
            .map(|lookups| lookups.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Fails when the settings file names a setting that is neither in `known` (every setting of
    /// every component, so one file can serve several components) nor looked up so far, so a typo
    /// in the file is not silently ignored.
    ///
    /// # Errors
    /// [`ConfigError::UnknownInFile`] listing the unknown names.
    pub fn reject_unknown_file_keys(&self, known: &[&str]) -> Result<(), ConfigError> {
        let Some(path) = &self.file_path else {
            return Ok(());
        };
        let lookups = self
            .lookups
            .lock()
            .map(|lookups| lookups.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let unknown: Vec<&str> = self
            .file
            .keys()
            .filter(|key| !lookups.contains(key) && !known.contains(&key.as_str()))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::UnknownInFile {
                path: path.clone(),
                names: unknown.join(", "),
            })
        }
    }
}

/// How a default is shown in the lookup record.
trait Shown<D: fmt::Display> {
    fn shown(&self) -> D;
}

impl Shown<String> for Duration {
    fn shown(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

impl Shown<SocketAddr> for SocketAddr {
    fn shown(&self) -> SocketAddr {
        *self
    }
}

/// A list of addresses, shown comma-separated.
struct IpList(Vec<IpAddr>);

impl Shown<String> for IpList {
    fn shown(&self) -> String {
        self.0
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl<T: fmt::Display> Shown<String> for Option<T> {
    fn shown(&self) -> String {
        self.as_ref().map(T::to_string).unwrap_or_default()
    }
}

struct HostPorts(Vec<String>);

impl Shown<String> for HostPorts {
    fn shown(&self) -> String {
        self.0.join(",")
    }
}

/// `host:port` (or `[v6]:port`, or either after `http://`), with a port from 1 to 65535.
fn host_port(entry: &str) -> Option<String> {
    let entry = entry.strip_prefix("http://").unwrap_or(entry);
    let entry = entry.strip_suffix('/').unwrap_or(entry);
    if entry.contains("://") || entry.contains('/') {
        return None;
    }
    let (host, port) = entry.rsplit_once(':')?;
    let valid_host =
        !host.is_empty() && (host.starts_with('[') && host.ends_with(']') || !host.contains(':'));
    (valid_host && port.parse::<u16>().is_ok_and(|port| port > 0)).then(|| entry.to_owned())
}

/// What [`Settings::url`] takes: "a URL starting with http:// or https://".
fn url_form(schemes: &[&str]) -> String {
    let schemes: Vec<String> = schemes
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect();
    format!("a URL starting with {}", schemes.join(" or "))
}

/// Whether `value` is `scheme://something` with one of `schemes`.
fn is_url(value: &str, schemes: &[&str]) -> bool {
    value
        .split_once("://")
        .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty())
}

impl Shown<f64> for f64 {
    fn shown(&self) -> f64 {
        *self
    }
}

impl Shown<u32> for u32 {
    fn shown(&self) -> u32 {
        *self
    }
}

impl Shown<bool> for bool {
    fn shown(&self) -> bool {
        *self
    }
}

impl Shown<String> for String {
    fn shown(&self) -> String {
        self.clone()
    }
}

fn read_settings_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| file_error(error.message().to_owned()))?;
    table
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Float(number) => number.to_string(),
                toml::Value::Boolean(flag) => flag.to_string(),
                _ => {
                    return Err(file_error(format!(
                        "{name} must be a string, number or boolean (settings are flat NAME = value pairs)"
                    )));
                }
            };
            Ok((name, text))
        })
        .collect()
}

/// Whether a setting's value must never be shown.
fn is_secret_name(name: &str) -> bool {
    ["SECRET", "PASSWORD", "TOKEN", "KEY"]
        .iter()
        .any(|marker| name.contains(marker))
        && !name.ends_with("_FILE")
}

/// The value as it may be shown: `***` for secrets, and the password of a URL replaced by `***`.
fn redact(name: &str, value: &str) -> String {
    if is_secret_name(name) {
        return "***".to_owned();
    }
    redact_url_password(value)
}

/// Hides the secrets a URL can carry: the password in `scheme://user:password@host/…` (found up to
/// the last `@`, since a password may itself hold `/`, `?` or `@`) and the values of query
/// parameters that name a password or key, which libpq-style URLs accept (`?password=…`).
pub fn redact_url_password(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let rest = match rest.rfind('@') {
        Some(at) => {
            let user_info = &rest[..at];
            match user_info.split_once(':') {
                Some((user, _password)) => format!("{user}:***{}", &rest[at..]),
                None => rest.to_owned(),
            }
        }
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_secret_name(&key.to_ascii_uppercase()) => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// A secret string whose `Debug` and `Display` print `***`, so it cannot leak through a log line or
/// an error by accident. Read it with [`Secret::expose`] where it is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests;
