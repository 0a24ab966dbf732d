//! What the registry holds and the rules a registration must follow, in plain Rust (no HTTP, no
//! I/O).
//!
//! [`ServiceRegistration`] is a decoded `PUT /v1/agent/service/register` body before validation;
//! [`ServiceRegistration::validate`] applies Consul's rules in Consul's order and with Consul's
//! messages (`agent/agent_endpoint.go` `AgentRegisterService`, `agent/structs/check_type.go`
//! `CheckType.Validate`, `agent/structs/structs.go` `validateMetadata` and `ValidateWeights`), then
//! this registry's own limits, and yields a [`ServiceDefinition`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// Most key/value pairs a service's `Meta` may hold (Consul's `metaMaxKeyPairs`).
pub const META_MAX_PAIRS: usize = 64;
/// Longest `Meta` key (Consul's `metaKeyMaxLength`).
pub const META_KEY_MAX_LENGTH: usize = 128;
/// Longest `Meta` value (Consul's `metaValueMaxLength`).
pub const META_VALUE_MAX_LENGTH: usize = 512;
/// The `Meta` key prefix Consul keeps for itself.
pub const META_RESERVED_PREFIX: &str = "consul-";
/// How long a check may run when its `Timeout` is unset (Consul's default).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How much output a check keeps when `OutputMaxSize` is unset (Consul's default, 4 KiB).
pub const DEFAULT_OUTPUT_MAX_SIZE: usize = 4096;
/// The shortest interval a check runs at; shorter ones are raised to it. Consul's floor is 1 s;
/// this registry allows faster checks so that tests and local runs react quickly.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The health of a check, or of a service instance (its worst check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Passing,
    /// Degraded: an HTTP check answered 429, or a TTL check was set to warn.
    Warning,
    /// Unhealthy, or not checked yet.
    Critical,
}

impl Status {
    /// Consul's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// Parses Consul's word.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// DNS weights of an instance by health (Consul's `Weights`, default `{1, 1}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight while passing.
    pub passing: i64,
    /// Weight while warning.
    pub warning: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// What a check probes and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum CheckKind {
    /// `grpc.health.v1.Health/Check` against `host:port`, or `host:port/service` for one service.
    Grpc {
        /// The target as registered.
        target: String,
        /// Connect with TLS (verified against the system's roots).
        use_tls: bool,
        /// With TLS, accept any certificate.
        tls_skip_verify: bool,
    },
    /// An HTTP request: 2xx is passing, 429 warning, anything else critical.
    Http {
        /// The URL.
        url: String,
        /// The method (`GET` when unset).
        method: String,
        /// Extra request headers.
        header: BTreeMap<String, Vec<String>>,
        /// The request body.
        body: String,
        /// Accept any TLS certificate.
        tls_skip_verify: bool,
        /// Do not follow redirects.
        disable_redirects: bool,
    },
    /// A TCP connection to `host:port`.
    Tcp {
        /// The address.
        address: String,
    },
    /// The service reports its own health through `/v1/agent/check/{pass,warn,fail}` at least
    /// once per TTL.
    Ttl {
        /// How long a report stays valid.
        #[serde(with = "duration::serde_go")]
        ttl: Duration,
    },
}

impl CheckKind {
    /// Consul's `Type` for it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Grpc { .. } => "grpc",
            Self::Http { .. } => "http",
            Self::Tcp { .. } => "tcp",
            Self::Ttl { .. } => "ttl",
        }
    }
}

/// A validated health check of one service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDefinition {
    /// Unique on this node: `CheckID`, or `service:<id>` (`service:<id>:<n>` among several).
    pub id: String,
    /// `Name`, or `Service '<name>' check`.
    pub name: String,
    /// Free text for people.
    pub notes: String,
    /// What it probes.
    pub kind: CheckKind,
    /// How often it runs (zero for TTL checks).
    #[serde(with = "duration::serde_go")]
    pub interval: Duration,
    /// `Timeout` as registered; `None` means [`DEFAULT_CHECK_TIMEOUT`].
    #[serde(with = "duration::serde_go::option")]
    pub timeout: Option<Duration>,
    /// Remove the instance once this check has been critical this long.
    #[serde(with = "duration::serde_go::option")]
    pub deregister_critical_after: Option<Duration>,
    /// The status it starts with (critical when unset).
    pub initial_status: Option<Status>,
    /// How many bytes of output it keeps.
    pub output_max_size: usize,
}

impl CheckDefinition {
    /// How long one run may take.
    pub fn effective_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT)
    }

    /// How often it runs, raised to [`MIN_CHECK_INTERVAL`].
    pub fn effective_interval(&self) -> Duration {
        self.interval.max(MIN_CHECK_INTERVAL)
    }
}

/// A validated service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDefinition {
    /// Unique on this node (defaults to the name).
    pub id: String,
    /// The logical service name many instances share.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Its address; empty means the node's.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// DNS weights.
    pub weights: Weights,
    /// Consul's anti-entropy switch, kept and shown as registered.
    pub enable_tag_override: bool,
    /// Its checks.
    pub checks: Vec<CheckDefinition>,
}

/// A registration as decoded from JSON, before Consul's rules are applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceRegistration {
    /// `ID`.
    pub id: String,
    /// `Name`.
    pub name: String,
    /// `Tags`.
    pub tags: Vec<String>,
    /// `Address`.
    pub address: String,
    /// `Port`, as sent (range checked in validation).
    pub port: i64,
    /// `Meta`.
    pub meta: BTreeMap<String, String>,
    /// `Weights`, when sent.
    pub weights: Option<Weights>,
    /// `EnableTagOverride`.
    pub enable_tag_override: bool,
    /// `Kind` (only the typical kind, `""`, is served).
    pub kind: String,
    /// `Check`, then `Checks`, in order; empty check objects are already dropped (as Consul does).
    pub checks: Vec<CheckRegistration>,
}

/// One decoded check object (`Check` or an element of `Checks`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckRegistration {
    /// `CheckID`.
    pub check_id: String,
    /// `Name`.
    pub name: String,
    /// `Status`.
    pub status: String,
    /// `Notes`.
    pub notes: String,
    /// `GRPC`.
    pub grpc: String,
    /// `GRPCUseTLS`.
    pub grpc_use_tls: bool,
    /// `HTTP`.
    pub http: String,
    /// `Method`.
    pub method: String,
    /// `Header`.
    pub header: BTreeMap<String, Vec<String>>,
    /// `Body`.
    pub body: String,
    /// `TLSSkipVerify`.
    pub tls_skip_verify: bool,
    /// `DisableRedirects`.
    pub disable_redirects: bool,
    /// `TCP`.
    pub tcp: String,
    /// `Interval`, in signed nanoseconds.
    pub interval: i64,
    /// `Timeout`, in signed nanoseconds.
    pub timeout: i64,
    /// `TTL`, in signed nanoseconds.
    pub ttl: i64,
    /// `DeregisterCriticalServiceAfter`, in signed nanoseconds.
    pub deregister_critical_service_after: i64,
    /// `OutputMaxSize`.
    pub output_max_size: i64,
    /// `SuccessBeforePassing`, `FailuresBeforeWarning`, `FailuresBeforeCritical` (validated as
    /// Consul does, then not applied: every result counts at once).
    pub failures_before_warning: i64,
    /// See [`CheckRegistration::failures_before_warning`].
    pub failures_before_critical: i64,
    /// Check types Consul knows but this registry does not run (`Args`, `DockerContainerID`, `UDP`,
    /// `H2PING`, `AliasService`, `OSService`…), by their field name.
    pub unsupported: Vec<&'static str>,
}

/// A registration Consul would refuse (HTTP 400), with Consul's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRegistration(pub String);

impl CheckRegistration {
    /// Consul's `CheckType.Validate`, message for message.
    fn consul_validate(&self) -> Result<(), String> {
        let interval_check = !self.http.is_empty()
            || !self.tcp.is_empty()
            || !self.grpc.is_empty()
            || self
                .unsupported
                .iter()
                .any(|field| matches!(*field, "Args" | "UDP" | "H2PING" | "OSService"));
        let alias = self
            .unsupported
            .iter()
            .any(|field| matches!(*field, "AliasNode" | "AliasService"));
        if self.interval > 0 && self.ttl > 0 {
            return Err("Interval and TTL cannot both be specified".into());
        }
        if interval_check && self.interval <= 0 {
            return Err(
                "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
                    .into(),
            );
        }
        if interval_check && alias {
            return Err("Interval cannot be set for Alias checks".into());
        }
        if alias && self.ttl > 0 {
            return Err("TTL must be not be set for Alias checks".into());
        }
        if !interval_check && !alias && self.ttl <= 0 {
            return Err("TTL must be > 0 for TTL checks".into());
        }
        if self.output_max_size < 0 {
            return Err("MaxOutputMaxSize must be positive".into());
        }
        if self.failures_before_warning > self.failures_before_critical {
            return Err("FailuresBeforeWarning can't be higher than FailuresBeforeCritical".into());
        }
        Ok(())
    }

    /// What this registry runs, once Consul's own rules have passed: the first of GRPC, HTTP, TCP
    /// and TTL that is set (Consul's `CheckType.Type` order).
    fn kind(&self) -> Result<CheckKind, String> {
        if let Some(field) = self.unsupported.first() {
            return Err(format!(
                "the embedded registry does not run {field} checks (only GRPC, HTTP, TCP and TTL)"
            ));
        }
        if !self.grpc.is_empty() {
            return Ok(CheckKind::Grpc {
                target: self.grpc.clone(),
                use_tls: self.grpc_use_tls,
                tls_skip_verify: self.tls_skip_verify,
            });
        }
        if !self.http.is_empty() {
            return Ok(CheckKind::Http {
                url: self.http.clone(),
                method: if self.method.is_empty() {
                    "GET".to_owned()
                } else {
                    self.method.clone()
                },
                header: self.header.clone(),
                body: self.body.clone(),
                tls_skip_verify: self.tls_skip_verify,
                disable_redirects: self.disable_redirects,
            });
        }
        if !self.tcp.is_empty() {
            return Ok(CheckKind::Tcp {
                address: self.tcp.clone(),
            });
        }
        match duration::positive(self.ttl) {
            Some(ttl) => Ok(CheckKind::Ttl { ttl }),
            None => Err("TTL must be > 0 for TTL checks".into()),
        }
    }
}

impl ServiceRegistration {
    /// Applies Consul's rules in Consul's order, then this registry's, and fills Consul's defaults:
    /// the ID from the name, check IDs `service:<id>` (`service:<id>:<n>` among several), check
    /// names `Service '<name>' check`.
    ///
    /// # Errors
    /// [`InvalidRegistration`] with the message Consul answers with.
    pub fn validate(self) -> Result<ServiceDefinition, InvalidRegistration> {
        let invalid = |message: String| Err(InvalidRegistration(message));
        if self.name.is_empty() {
            return invalid("Missing service name".into());
        }
        if is_any_address(&self.address) {
            return invalid("Invalid service address".into());
        }
        if let Some(weights) = &self.weights {
            validate_weights(weights)
                .map_err(|error| InvalidRegistration(format!("Invalid Weights: {error}")))?;
        }
        validate_meta(&self.meta)
            .map_err(|error| InvalidRegistration(format!("Invalid Service Meta: {error}")))?;
        if !self.kind.is_empty() {
            return invalid(format!(
                "Validation failed: service kind \"{}\" is not served by the embedded registry \
                 (only typical services)",
                self.kind
            ));
        }
        for check in &self.checks {
            check
                .consul_validate()
                .map_err(|error| InvalidRegistration(format!("Invalid check: {error}")))?;
        }
        for check in &self.checks {
            if !check.status.is_empty() && Status::parse(&check.status).is_none() {
                return invalid("Status for checks must 'passing', 'warning', 'critical'".into());
            }
        }
        let port = match u16::try_from(self.port) {
            Ok(port) => port,
            Err(_) => {
                return invalid(format!(
                    "Invalid service port {}: must be between 0 and 65535",
                    self.port
                ));
            }
        };
        let id = if self.id.is_empty() {
            self.name.clone()
        } else {
            self.id
        };
        let several = self.checks.len() > 1;
        let mut checks: Vec<CheckDefinition> = Vec::with_capacity(self.checks.len());
        for (position, check) in self.checks.into_iter().enumerate() {
            let kind = check
                .kind()
                .map_err(|error| InvalidRegistration(format!("Invalid check: {error}")))?;
            let check_id = if !check.check_id.is_empty() {
                check.check_id.clone()
            } else if several {
                format!("service:{id}:{}", position + 1)
            } else {
                format!("service:{id}")
            };
            if checks.iter().any(|known| known.id == check_id) {
                return invalid(format!(
                    "Invalid check: CheckID \"{check_id}\" is used twice in one registration"
                ));
            }
            let interval = match kind {
                CheckKind::Ttl { .. } => Duration::ZERO,
                _ => duration::positive(check.interval).unwrap_or_default(),
            };
            checks.push(CheckDefinition {
                id: check_id,
                name: if check.name.is_empty() {
                    format!("Service '{}' check", self.name)
                } else {
                    check.name
                },
                notes: check.notes,
                kind,
                interval,
                timeout: duration::positive(check.timeout),
                deregister_critical_after: duration::positive(
                    check.deregister_critical_service_after,
                ),
                initial_status: Status::parse(&check.status),
                output_max_size: usize::try_from(check.output_max_size)
                    .ok()
                    .filter(|size| *size > 0)
                    .unwrap_or(DEFAULT_OUTPUT_MAX_SIZE),
            });
        }
        Ok(ServiceDefinition {
            id,
            name: self.name,
            tags: self.tags,
            address: self.address,
            port,
            meta: self.meta,
            weights: self.weights.unwrap_or_default(),
            enable_tag_override: self.enable_tag_override,
            checks,
        })
    }
}

/// Consul's `ipaddr.IsAny`: the unspecified IPv4 or IPv6 address, bracketed or not.
fn is_any_address(address: &str) -> bool {
    let bare = address.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// Consul's `ValidateWeights`.
fn validate_weights(weights: &Weights) -> Result<(), &'static str> {
    if weights.passing < 1 {
        return Err("Passing must be greater than 0");
    }
    if weights.warning < 0 {
        return Err("Warning must be greater or equal than 0");
    }
    if weights.passing > 65535 || weights.warning > 65535 {
        return Err("DNS Weight must be between 0 and 65535");
    }
    Ok(())
}

/// Consul's `validateMetadata` for a typical service (no `consul-` keys).
fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > META_MAX_PAIRS {
        return Err(format!(
            "Node metadata cannot contain more than {META_MAX_PAIRS} key/value pairs"
        ));
    }
    for (key, value) in meta {
        let reason = if key.is_empty() {
            Some("Key cannot be blank".to_owned())
        } else if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            Some("Key contains invalid characters".to_owned())
        } else if key.len() > META_KEY_MAX_LENGTH {
            Some(format!(
                "Key is too long (limit: {META_KEY_MAX_LENGTH} characters)"
            ))
        } else if key.starts_with(META_RESERVED_PREFIX) {
            Some(format!(
                "Key prefix '{META_RESERVED_PREFIX}' is reserved for internal use"
            ))
        } else if value.len() > META_VALUE_MAX_LENGTH {
            Some(format!(
                "Value is too long (limit: {META_VALUE_MAX_LENGTH} characters)"
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(format!(
                "Couldn't load metadata pair ('{key}', '{value}'): {reason}"
            ));
        }
    }
    Ok(())
}

/// Cuts a check's output to `limit` bytes as Consul does (`"… (captured N of M bytes)"`), on a
/// character boundary.
pub fn truncate_output(output: &str, limit: usize) -> String {
    if output.len() <= limit {
        return output.to_owned();
    }
    let mut cut = limit;
    while !output.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{} ... (captured {cut} of {} bytes)",
        &output[..cut],
        output.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_check() -> CheckRegistration {
        CheckRegistration {
            http: "http://127.0.0.1:1/health".into(),
            interval: 1_000_000_000,
            ..CheckRegistration::default()
        }
    }

    fn service(checks: Vec<CheckRegistration>) -> ServiceRegistration {
        ServiceRegistration {
            name: "web".into(),
            checks,
            ..ServiceRegistration::default()
        }
    }

    #[test]
    fn defaults_follow_consul() -> Result<(), InvalidRegistration> {
        let one = service(vec![http_check()]).validate()?;
        assert_eq!(one.id, "web");
        assert_eq!(one.checks[0].id, "service:web");
        assert_eq!(one.checks[0].name, "Service 'web' check");
        assert_eq!(one.checks[0].effective_timeout(), DEFAULT_CHECK_TIMEOUT);
        assert_eq!(one.weights, Weights::default());
        let two = service(vec![http_check(), http_check()]).validate()?;
        let ids: Vec<&str> = two.checks.iter().map(|check| check.id.as_str()).collect();
        assert_eq!(ids, ["service:web:1", "service:web:2"]);
        Ok(())
    }

    #[test]
    fn consul_messages_in_consul_order() {
        let cases: Vec<(ServiceRegistration, &str)> = vec![
            (ServiceRegistration::default(), "Missing service name"),
            (
                ServiceRegistration {
                    address: "0.0.0.0".into(),
                    ..service(vec![])
                },
                "Invalid service address",
            ),
            (
                ServiceRegistration {
                    address: "[::]".into(),
                    ..service(vec![])
                },
                "Invalid service address",
            ),
            (
                ServiceRegistration {
                    weights: Some(Weights {
                        passing: 0,
                        warning: 1,
                    }),
                    ..service(vec![])
                },
                "Invalid Weights: Passing must be greater than 0",
            ),
            (
                ServiceRegistration {
                    meta: BTreeMap::from([("bad key".to_owned(), "v".to_owned())]),
                    ..service(vec![])
                },
                "Invalid Service Meta: Couldn't load metadata pair ('bad key', 'v'): Key contains invalid characters",
            ),
            (
                ServiceRegistration {
                    meta: BTreeMap::from([("consul-x".to_owned(), "v".to_owned())]),
                    ..service(vec![])
                },
                "Invalid Service Meta: Couldn't load metadata pair ('consul-x', 'v'): Key prefix 'consul-' is reserved for internal use",
            ),
            (
                service(vec![CheckRegistration::default()]),
                "Invalid check: TTL must be > 0 for TTL checks",
            ),
            (
                service(vec![CheckRegistration {
                    interval: 0,
                    ..http_check()
                }]),
                "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
            ),
            (
                service(vec![CheckRegistration {
                    ttl: 1,
                    ..http_check()
                }]),
                "Invalid check: Interval and TTL cannot both be specified",
            ),
            (
                service(vec![CheckRegistration {
                    status: "ok".into(),
                    ..http_check()
                }]),
                "Status for checks must 'passing', 'warning', 'critical'",
            ),
            (
                ServiceRegistration {
                    port: 70_000,
                    ..service(vec![])
                },
                "Invalid service port 70000: must be between 0 and 65535",
            ),
        ];
        for (registration, message) in cases {
            assert_eq!(
                registration.validate().map(|_| ()),
                Err(InvalidRegistration(message.to_owned()))
            );
        }
    }

    #[test]
    fn too_many_meta_pairs_are_refused() {
        let meta = (0..=META_MAX_PAIRS)
            .map(|n| (format!("k{n}"), String::new()))
            .collect();
        let registration = ServiceRegistration {
            meta,
            ..service(vec![])
        };
        assert_eq!(
            registration.validate().map(|_| ()),
            Err(InvalidRegistration(
                "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
                    .into()
            ))
        );
    }

    #[test]
    fn output_is_cut_on_a_character_boundary() {
        assert_eq!(truncate_output("short", 10), "short");
        assert_eq!(truncate_output("ééé", 3), "é ... (captured 2 of 6 bytes)");
    }
}
