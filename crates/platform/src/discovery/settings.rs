//! Which registry a component uses, and how its instances register: read from settings, the same
//! for every component.

use std::net::IpAddr;
use std::time::Duration;

use super::consul::ConsulConfig;
use super::etcd::EtcdConfig;
use super::fixed::{FLOTILLA_SERVICES, StaticConfig};
use crate::config::{ConfigError, Settings};
use crate::resilience::client::CallPolicies;

/// The backend's variable: `consul` (default), `etcd` or `static`.
pub const BACKEND_VAR: &str = "FLOTILLA_DISCOVERY";

/// Where instances register and are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Consul's HTTP API: a Consul agent, or Flotilla's embedded registry.
    Consul(ConsulConfig),
    /// etcd's v3 API: instances as keys under leases.
    Etcd(EtcdConfig),
    /// A fixed list of instances per service; registering tells nobody.
    Static(StaticConfig),
}

/// How a service's instance describes itself to the registry and leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// How often the registry checks the instance (`FLOTILLA_CHECK_INTERVAL`, 10 s as in Consul's
    /// examples).
    pub check_interval: Duration,
    /// How long one check may take (`FLOTILLA_CHECK_TIMEOUT`, 5 s).
    pub check_timeout: Duration,
    /// How long the instance may stay critical before the registry drops it
    /// (`FLOTILLA_DEREGISTER_CRITICAL_AFTER`, 1 min, Consul's own minimum).
    pub deregister_critical_after: Duration,
    /// How long the instance keeps serving after deregistering, so every caller's watch has seen it
    /// leave before it stops accepting calls (`FLOTILLA_DEREGISTER_DELAY`, 2 s).
    pub deregister_delay: Duration,
    /// The address other services should call (`FLOTILLA_ADVERTISE_ADDR`); by default the listen
    /// address, or this host's outbound address when listening on all interfaces.
    pub advertise_ip: Option<IpAddr>,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(5),
            deregister_critical_after: Duration::from_secs(60),
            deregister_delay: Duration::from_secs(2),
            advertise_ip: None,
        }
    }
}

impl RegistrationConfig {
    /// Reads the check, deregistration and advertise settings.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable, including a check timeout that is not shorter
    /// than its interval.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let config = Self {
            check_interval: settings
                .duration("FLOTILLA_CHECK_INTERVAL", defaults.check_interval)?,
            check_timeout: settings.duration("FLOTILLA_CHECK_TIMEOUT", defaults.check_timeout)?,
            deregister_critical_after: settings.duration(
                "FLOTILLA_DEREGISTER_CRITICAL_AFTER",
                defaults.deregister_critical_after,
            )?,
            deregister_delay: settings
                .duration("FLOTILLA_DEREGISTER_DELAY", defaults.deregister_delay)?,
            advertise_ip: settings.optional_ip("FLOTILLA_ADVERTISE_ADDR")?,
        };
        if config.check_interval.is_zero() {
            return Err(invalid(
                settings,
                "FLOTILLA_CHECK_INTERVAL",
                &config.check_interval,
                "a positive duration",
            ));
        }
        if config.check_timeout.is_zero() || config.check_timeout > config.check_interval {
            return Err(invalid(
                settings,
                "FLOTILLA_CHECK_TIMEOUT",
                &config.check_timeout,
                "a positive duration no longer than FLOTILLA_CHECK_INTERVAL",
            ));
        }
        Ok(config)
    }
}

fn invalid(settings: &Settings, name: &str, value: &Duration, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value: humantime::format_duration(*value).to_string(),
        origin: settings.origin(name),
        expected: expected.to_owned(),
    }
}

/// Everything a component needs to find others and be found.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    /// The registry.
    pub backend: Backend,
    /// How this component's instances register.
    pub registration: RegistrationConfig,
    /// How calls to each upstream service are guarded (breakers, retries).
    pub calls: CallPolicies,
}

impl DiscoveryConfig {
    /// Reads `FLOTILLA_DISCOVERY` and the chosen backend's settings (`CONSUL_HTTP_ADDR` and
    /// `CONSUL_HTTP_TOKEN`, `FLOTILLA_ETCD_ENDPOINTS`, or `FLOTILLA_<SERVICE>_ENDPOINT` for
    /// `static`), the registration settings, and the breaker and retry settings of calls to
    /// each of Flotilla's services ([`CallPolicies`]).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad variable.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let backend = match settings
            .choice(BACKEND_VAR, "consul", &["consul", "etcd", "static"])?
            .as_str()
        {
            "etcd" => Backend::Etcd(EtcdConfig::from_settings(settings)?),
            "static" => Backend::Static(StaticConfig::from_settings(settings)?),
            _ => Backend::Consul(ConsulConfig::from_settings(settings)?),
        };
        Ok(Self {
            backend,
            registration: RegistrationConfig::from_settings(settings)?,
            calls: CallPolicies::from_settings(settings, &upstream_names())?,
        })
    }

    /// Consul's API at `address` (such as the embedded registry of `flotilla up`), with default
    /// registration settings.
    #[must_use]
    pub fn consul_at(address: std::net::SocketAddr) -> Self {
        Self {
            backend: Backend::Consul(ConsulConfig {
                address: format!("http://{address}"),
                token: None,
            }),
            registration: RegistrationConfig::default(),
            calls: CallPolicies::default(),
        }
    }
}

/// The services Flotilla's components call each other by.
pub fn upstream_names() -> Vec<&'static str> {
    FLOTILLA_SERVICES.iter().map(|(name, _)| *name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_is_the_default_with_consuls_check_practice() -> Result<(), ConfigError> {
        let config = DiscoveryConfig::from_settings(&Settings::from_pairs::<_, &str, &str>([]))?;
        assert!(matches!(config.backend, Backend::Consul(_)));
        assert_eq!(config.registration, RegistrationConfig::default());
        assert_eq!(config.registration.check_interval, Duration::from_secs(10));
        assert_eq!(config.registration.check_timeout, Duration::from_secs(5));
        assert_eq!(
            config.registration.deregister_critical_after,
            Duration::from_secs(60)
        );
        assert_eq!(config.registration.deregister_delay, Duration::from_secs(2));
        Ok(())
    }

    #[test]
    fn static_reads_each_services_endpoints() -> Result<(), ConfigError> {
        let config = DiscoveryConfig::from_settings(&Settings::from_pairs([
            ("FLOTILLA_DISCOVERY", "static"),
            (
                "FLOTILLA_PRODUCT_ENDPOINT",
                "10.0.0.7:50053,http://10.0.0.8:50053",
            ),
        ]))?;
        let Backend::Static(fixed) = config.backend else {
            panic!("FLOTILLA_DISCOVERY=static chose {:?}", config.backend);
        };
        assert_eq!(
            fixed.endpoints("product"),
            ["10.0.0.7:50053", "10.0.0.8:50053"]
        );
        assert_eq!(fixed.endpoints("user"), ["127.0.0.1:50051"]);
        Ok(())
    }

    #[test]
    fn etcd_reads_its_endpoints() -> Result<(), ConfigError> {
        let config = DiscoveryConfig::from_settings(&Settings::from_pairs([
            ("FLOTILLA_DISCOVERY", "etcd"),
            (
                "FLOTILLA_ETCD_ENDPOINTS",
                "http://10.0.0.2:2379,10.0.0.3:2379",
            ),
        ]))?;
        let Backend::Etcd(etcd) = config.backend else {
            panic!("FLOTILLA_DISCOVERY=etcd chose {:?}", config.backend);
        };
        assert_eq!(etcd.endpoints.len(), 2);
        Ok(())
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value, expected) in [
            ("FLOTILLA_DISCOVERY", "zookeeper", "one of consul"),
            ("FLOTILLA_CHECK_TIMEOUT", "20s", "no longer than"),
            ("FLOTILLA_CHECK_INTERVAL", "0s", "positive"),
            ("FLOTILLA_ADVERTISE_ADDR", "my-host", "IP address"),
        ] {
            let error = DiscoveryConfig::from_settings(&Settings::from_pairs([(name, value)]))
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(
                error.contains(name) && error.contains(expected),
                "{name}: {error}"
            );
        }
    }
}
