//! A server's place in the registry: registered once it is ready, withdrawn first at shutdown.
//!
//! The order at shutdown is what keeps callers from losing requests: deregister, then keep serving
//! for the deregistration delay so every caller's watch has dropped the instance, and only then
//! (in [`crate::serve`]) flip health to NOT_SERVING, stop accepting and drain.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::settings::RegistrationConfig;
use super::{HealthCheck, Registration, Registry, backoff};
use crate::admin::Readiness;

/// How often readiness is asked while waiting to register.
const READINESS_POLL: Duration = Duration::from_millis(100);
/// How long a registration call still in flight at shutdown may take to finish before it is
/// abandoned (a deregistration must not overtake it).
const REGISTER_WAIT: Duration = Duration::from_secs(2);
/// How long deregistering may take at shutdown before the drain goes on without it (the
/// registry's own check then notices the instance is gone). Longer than one call to one etcd
/// member, so a dead member does not use it up.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers one instance of a server with a registry.
#[derive(Debug, Clone)]
pub struct Announcer {
    registry: Arc<dyn Registry>,
    config: RegistrationConfig,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
}

impl Announcer {
    /// An announcer to `registry`, registering as `config` says.
    pub fn new(registry: Arc<dyn Registry>, config: RegistrationConfig) -> Self {
        Self {
            registry,
            config,
            tags: vec!["grpc".to_owned(), "flotilla".to_owned()],
            meta: BTreeMap::from([("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        }
    }

    /// Adds a metadata entry to the registration (such as where the admin listener is).
    #[must_use]
    pub fn with_meta(mut self, key: &str, value: impl Into<String>) -> Self {
        self.meta.insert(key.to_owned(), value.into());
        self
    }

    /// What is registered for `service` listening on `bound`: a fresh `service-<uuid>` id, the
    /// advertised address, and a gRPC health check of the whole server.
    pub fn registration(&self, service: &str, bound: SocketAddr) -> Registration {
        let addr = SocketAddr::new(
            advertised_ip(self.config.advertise_ip, bound.ip()),
            bound.port(),
        );
        Registration {
            id: format!("{service}-{}", uuid::Uuid::new_v4()),
            name: service.to_owned(),
            addr,
            tags: self.tags.clone(),
            meta: self.meta.clone(),
            check: HealthCheck {
                grpc: addr.to_string(),
                interval: self.config.check_interval,
                timeout: self.config.check_timeout,
                deregister_critical_after: self.config.deregister_critical_after,
            },
        }
    }

    /// Starts registering `registration` in the background as soon as `readiness` passes,
    /// retrying with back-off while the registry cannot be reached (the server serves meanwhile:
    /// a registry that starts later still learns of it).
    pub fn start(self, registration: Registration, readiness: Readiness) -> Announcement {
        let stop = CancellationToken::new();
        let task = tokio::spawn(register_when_ready(
            Arc::clone(&self.registry),
            registration.clone(),
            readiness,
            stop.clone(),
        ));
        Announcement {
            registry: self.registry,
            id: registration.id,
            name: registration.name,
            delay: self.config.deregister_delay,
            stop: stop.drop_guard(),
            task,
        }
    }
}

/// A registration in progress or done; [`Announcement::withdraw`] ends it. Dropped without a
/// withdrawal (the server failed), it stops retrying; the registry's check then notices.
#[derive(Debug)]
pub struct Announcement {
    registry: Arc<dyn Registry>,
    id: String,
    name: String,
    delay: Duration,
    stop: DropGuard,
    /// Whether a registration call was made (and may have landed).
    task: JoinHandle<bool>,
}

impl Announcement {
    /// The instance's id in the registry.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops registering, deregisters, and waits the deregistration delay so callers' watches
    /// drop this instance while it still serves. Returns at once if it never tried to register.
    pub async fn withdraw(self) {
        let Self {
            registry,
            id,
            name,
            delay,
            stop,
            mut task,
        } = self;
        drop(stop);
        let attempted = match tokio::time::timeout(REGISTER_WAIT, &mut task).await {
            Ok(outcome) => outcome.unwrap_or(true),
            Err(_) => {
                task.abort();
                true
            }
        };
        if !attempted {
            return;
        }
        match tokio::time::timeout(DEREGISTER_TIMEOUT, registry.deregister(&id)).await {
            Ok(Ok(())) => {
                tracing::info!(service = %name, %id, delay_ms = delay.as_millis() as u64, "deregistered; serving on while callers notice");
            }
            Ok(Err(error)) => {
                tracing::warn!(service = %name, %id, %error, "deregistering failed; serving on for the delay while the registry's check notices");
            }
            Err(_) => {
                tracing::warn!(service = %name, %id, timeout_s = DEREGISTER_TIMEOUT.as_secs(), "deregistering timed out; serving on for the delay while the registry's check notices");
            }
        }
        // Even when the registry did not answer, callers may have seen the instance leave (or
        // will, once its check fails after health flips): keep serving while they notice.
        tokio::time::sleep(delay).await;
    }
}

/// Waits for readiness, then registers until it succeeds; returns whether a call was made.
async fn register_when_ready(
    registry: Arc<dyn Registry>,
    registration: Registration,
    readiness: Readiness,
    stop: CancellationToken,
) -> bool {
    loop {
        match readiness.check().await {
            Ok(()) => break,
            Err(reason) => {
                tracing::debug!(service = %registration.name, %reason, "not ready yet; registering later");
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep(READINESS_POLL) => {}
                }
            }
        }
    }
    let mut failures = 0_u32;
    loop {
        // A call already sent is let finish, so a deregistration never overtakes it.
        match registry.register(&registration).await {
            Ok(()) => {
                tracing::info!(service = %registration.name, id = %registration.id, addr = %registration.addr, "registered");
                return true;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = backoff::backoff(failures);
                tracing::warn!(service = %registration.name, %error, retry_in_ms = wait.as_millis() as u64, "registering failed; serving anyway and retrying");
                tokio::select! {
                    () = stop.cancelled() => return true,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The address to advertise: the configured one; else the listen address; else, when listening on
/// every interface, the address this host uses for outbound traffic (no packet is sent: connecting
/// a UDP socket only picks a route); loopback when there is no route at all.
pub fn advertised_ip(configured: Option<IpAddr>, bound: IpAddr) -> IpAddr {
    if let Some(ip) = configured {
        return ip;
    }
    if !bound.is_unspecified() {
        return bound;
    }
    let outbound = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|socket| {
            // TEST-NET-1 (RFC 5737): never routed anywhere real, only used to choose a route.
            socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
            socket.local_addr()
        })
        .map(|addr| addr.ip());
    match outbound {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => {
            tracing::warn!(
                "no outbound route to find this host's address; advertising 127.0.0.1 (set FLOTILLA_ADVERTISE_ADDR)"
            );
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::{InstanceStream, RegistryFuture};
    use super::*;
    use crate::discovery::DiscoveryError;

    /// A registry that records calls, failing the first `failures` registrations.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        failures: Mutex<u32>,
        /// Registrations never answer.
        hang: bool,
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
    }

    impl Registry for Recorder {
        fn register<'a>(&'a self, registration: &'a Registration) -> RegistryFuture<'a, ()> {
            Box::pin(async move {
                if let Ok(mut calls) = self.calls.lock() {
                    calls.push(format!("register {}", registration.id));
                }
                if self.hang {
                    std::future::pending::<()>().await;
                }
                let mut failures = self
                    .failures
                    .lock()
                    .map_err(|_| DiscoveryError::Malformed {
                        what: "test".into(),
                        reason: "poisoned".into(),
                    })?;
                if *failures > 0 {
                    *failures -= 1;
                    return Err(DiscoveryError::Unreachable {
                        endpoint: "test".into(),
                        reason: "refused".into(),
                    });
                }
                Ok(())
            })
        }

        fn deregister<'a>(&'a self, id: &'a str) -> RegistryFuture<'a, ()> {
            Box::pin(async move {
                if let Ok(mut calls) = self.calls.lock() {
                    calls.push(format!("deregister {id}"));
                }
                Ok(())
            })
        }

        fn watch(&self, _service: &str) -> InstanceStream {
            Box::pin(futures::stream::pending())
        }
    }

    fn config() -> RegistrationConfig {
        RegistrationConfig {
            deregister_delay: Duration::from_millis(300),
            ..RegistrationConfig::default()
        }
    }

    #[test]
    fn registrations_carry_a_fresh_id_the_advertised_address_and_the_check() {
        let announcer = Announcer::new(Arc::new(Recorder::default()), config());
        let bound: SocketAddr = ([127, 0, 0, 1], 50053).into();
        let first = announcer.registration("product", bound);
        let second = announcer.registration("product", bound);
        assert!(first.id.starts_with("product-") && first.id.len() == "product-".len() + 36);
        assert_ne!(first.id, second.id);
        assert_eq!(first.addr, bound);
        assert_eq!(first.check.grpc, "127.0.0.1:50053");
        assert_eq!(first.check.interval, Duration::from_secs(10));
        assert_eq!(first.check.timeout, Duration::from_secs(5));
        assert_eq!(
            first.check.deregister_critical_after,
            Duration::from_secs(60)
        );

        let advertised = Announcer::new(
            Arc::new(Recorder::default()),
            RegistrationConfig {
                advertise_ip: Some([10, 0, 0, 7].into()),
                ..config()
            },
        )
        .registration("product", ([0, 0, 0, 0], 50053).into());
        assert_eq!(advertised.addr, SocketAddr::from(([10, 0, 0, 7], 50053)));
        assert_eq!(advertised.check.grpc, "10.0.0.7:50053");
    }

    #[test]
    fn listening_everywhere_advertises_a_concrete_address() {
        let ip = advertised_ip(None, Ipv4Addr::UNSPECIFIED.into());
        assert!(!ip.is_unspecified());
    }

    #[tokio::test(start_paused = true)]
    async fn registers_once_ready_retries_and_deregisters_before_waiting_the_delay() {
        let registry = Arc::new(Recorder {
            failures: Mutex::new(2),
            ..Recorder::default()
        });
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&ready);
        let readiness = Readiness::new().with_check(Arc::new(move || {
            let ready = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if ready {
                    Ok(())
                } else {
                    Err("database".to_owned())
                }
            })
        }));
        let announcer = Announcer::new(registry.clone(), config());
        let registration = announcer.registration("product", ([127, 0, 0, 1], 1).into());
        let id = registration.id.clone();
        let announcement = announcer.start(registration, readiness);

        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(registry.calls().is_empty(), "not ready: nothing registered");
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(
            registry.calls(),
            vec![format!("register {id}"); 3],
            "two failures retried"
        );

        let started = tokio::time::Instant::now();
        announcement.withdraw().await;
        assert_eq!(registry.calls().last(), Some(&format!("deregister {id}")));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "waited the delay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawing_before_ready_neither_deregisters_nor_waits() {
        let registry = Arc::new(Recorder::default());
        let readiness =
            Readiness::new().with_check(Arc::new(|| Box::pin(async { Err("never".to_owned()) })));
        let announcer = Announcer::new(registry.clone(), config());
        let registration = announcer.registration("product", ([127, 0, 0, 1], 1).into());
        let announcement = announcer.start(registration, readiness);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = tokio::time::Instant::now();
        announcement.withdraw().await;
        assert!(registry.calls().is_empty());
        assert!(started.elapsed() < Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_registration_that_never_answers_does_not_hold_the_shutdown() {
        let registry = Arc::new(Recorder {
            hang: true,
            ..Recorder::default()
        });
        let announcer = Announcer::new(registry.clone(), config());
        let registration = announcer.registration("product", ([127, 0, 0, 1], 1).into());
        let id = registration.id.clone();
        let announcement = announcer.start(registration, Readiness::new());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = tokio::time::Instant::now();
        announcement.withdraw().await;
        // Abandoned after REGISTER_WAIT, deregistered anyway (it may have landed), delay waited.
        assert_eq!(
            registry.calls(),
            vec![format!("register {id}"), format!("deregister {id}")]
        );
        let took = started.elapsed();
        assert!(
            took >= REGISTER_WAIT + Duration::from_millis(300),
            "{took:?}"
        );
        assert!(took < REGISTER_WAIT + Duration::from_secs(1), "{took:?}");
    }
}
