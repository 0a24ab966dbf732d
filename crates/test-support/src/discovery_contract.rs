//! The contract every discovery backend fulfils (`platform::discovery::Registry`), as cases run
//! against a real registry with real `grpc.health.v1` servers as the instances, and
//! [`discovery_contract!`](macro@crate::discovery_contract) to run every case as a test.
//!
//! A backend is handed over as a [`Backend`]: a way to open a client of the registry, as one process
//! holds it, and the parts that must keep running meanwhile (an etcd, an embedded registry). Each
//! case uses service names of its own, so cases may share a registry.
//!
//! A crash is what a process's death does to both: its registry client is dropped (etcd's
//! keep-alives stop, so its lease runs out) and its gRPC server stops (Consul's gRPC check fails).
//! Each backend notices through its own mechanism; the contract is that the instance leaves within
//! the check's interval plus its timeout, plus [`CRASH_SLACK`].

use std::any::Any;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use platform::discovery::{HealthCheck, Instance, InstanceStream, Registration, Registry};
use tokio_util::sync::CancellationToken;

/// What a case returns.
pub type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long a case waits for a change that needs no check to fail: generous for a loaded CI
/// machine; a healthy run takes milliseconds (etcd) or one check interval (Consul).
pub const PATIENCE: Duration = Duration::from_secs(20);
/// The check interval every case registers with.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// The check timeout every case registers with.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// What a crashed instance may take beyond interval plus timeout to leave: etcd counts lease TTLs
/// in whole seconds with a 2 s minimum and sweeps expired leases every 500 ms; a Consul check runs
/// on its interval; then the watch must report it.
pub const CRASH_SLACK: Duration = Duration::from_secs(3);

/// A registry under contract.
pub struct Backend {
    registry: Arc<dyn Registry>,
    connect: Box<dyn Fn() -> Fallible<Arc<dyn Registry>> + Send + Sync>,
    _parts: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// A backend whose clients `connect` opens, each as a separate process would hold one (for
    /// etcd: its own keep-alive tasks); `parts` is kept alive as long as the backend.
    pub fn new(
        connect: impl Fn() -> Fallible<Arc<dyn Registry>> + Send + Sync + 'static,
        parts: impl Any + Send + Sync,
    ) -> Fallible<Self> {
        Ok(Self {
            registry: connect()?,
            connect: Box::new(connect),
            _parts: Box::new(parts),
        })
    }

    /// The client the cases watch through, and register through unless they crash an instance.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Another client, as another process would hold.
    pub fn connect(&self) -> Fallible<Arc<dyn Registry>> {
        (self.connect)()
    }
}

/// Runs every case of the contract as a test, `<module>::discovery_contract::<case>`:
/// `discovery_contract!(open)`, where `open` is a path (resolving from a child module, such as
/// `crate::etcd::open`) to `async fn open() -> Option<Backend>`, which returns `None` to skip after
/// a loud message (see [`missing_part`](crate::missing_part)). Tests run on a multi-threaded tokio
/// runtime, so the calling crate needs tokio's `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! discovery_contract {
    (@case $open:path, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(backend) = $open().await else {
                return;
            };
            if let Err(error) = $crate::discovery_contract::$case(&backend).await {
                panic!("{error}");
            }
        }
    };
    ($open:path) => {
        mod discovery_contract {
            $crate::discovery_contract!(@case $open, registered_instance_is_watched);
            $crate::discovery_contract!(@case $open, both_instances_are_watched);
            $crate::discovery_contract!(@case $open, deregistered_instance_leaves);
            $crate::discovery_contract!(@case $open, reregistering_replaces_the_instance);
            $crate::discovery_contract!(@case $open, crashed_instance_leaves);
            $crate::discovery_contract!(@case $open, unknown_service_is_empty);
        }
    };
}

/// A registered instance is watched with its id, address, tags and metadata.
pub async fn registered_instance_is_watched(backend: &Backend) -> Fallible<()> {
    let service = unique("watched");
    let server = HealthServer::start().await?;
    let registration = registration(&service, "watched-1", &server, "1.2.3");
    backend.registry().register(&registration).await?;
    let mut watch = backend.registry().watch(&service);
    let seen = next_matching(&mut watch, PATIENCE, |set| !set.is_empty()).await?;
    assert_eq!(seen, [instance_of(&registration)]);
    backend.registry().deregister(&registration.id).await?;
    server.stop().await;
    Ok(())
}

/// Two instances of a service are both watched.
pub async fn both_instances_are_watched(backend: &Backend) -> Fallible<()> {
    let service = unique("both");
    let first_server = HealthServer::start().await?;
    let second_server = HealthServer::start().await?;
    let first = registration(&service, "both-1", &first_server, "1");
    let second = registration(&service, "both-2", &second_server, "2");
    backend.registry().register(&first).await?;
    backend.registry().register(&second).await?;
    let mut watch = backend.registry().watch(&service);
    let seen = next_matching(&mut watch, PATIENCE, |set| set.len() == 2).await?;
    let mut expected = vec![instance_of(&first), instance_of(&second)];
    expected.sort();
    assert_eq!(seen, expected);
    for registration in [&first, &second] {
        backend.registry().deregister(&registration.id).await?;
    }
    first_server.stop().await;
    second_server.stop().await;
    Ok(())
}

/// A deregistered instance leaves the set, the others stay; deregistering it again, or an id never
/// registered, is not an error.
pub async fn deregistered_instance_leaves(backend: &Backend) -> Fallible<()> {
    let service = unique("leaving");
    let leaving_server = HealthServer::start().await?;
    let staying_server = HealthServer::start().await?;
    let leaving = registration(&service, "leaving-1", &leaving_server, "1");
    let staying = registration(&service, "staying-1", &staying_server, "1");
    backend.registry().register(&leaving).await?;
    backend.registry().register(&staying).await?;
    let mut watch = backend.registry().watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 2).await?;

    backend.registry().deregister(&leaving.id).await?;
    let seen = next_matching(&mut watch, PATIENCE, |set| set.len() < 2).await?;
    assert_eq!(seen, [instance_of(&staying)]);
    backend.registry().deregister(&leaving.id).await?;
    backend
        .registry()
        .deregister(&format!("{service}-never-registered"))
        .await?;

    backend.registry().deregister(&staying.id).await?;
    next_matching(&mut watch, PATIENCE, <[Instance]>::is_empty).await?;
    leaving_server.stop().await;
    staying_server.stop().await;
    Ok(())
}

/// Registering an id again replaces the instance (its new tags and metadata are watched); it is
/// never listed twice.
pub async fn reregistering_replaces_the_instance(backend: &Backend) -> Fallible<()> {
    let service = unique("replaced");
    let server = HealthServer::start().await?;
    let first = registration(&service, "replaced-1", &server, "1");
    backend.registry().register(&first).await?;
    let mut watch = backend.registry().watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    let mut second = registration(&service, "replaced-1", &server, "2");
    second.tags.push("canary".into());
    backend.registry().register(&second).await?;
    let wanted = instance_of(&second);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let set = tokio::time::timeout_at(deadline, watch.next())
            .await
            .map_err(|_| format!("the re-registration was not watched within {PATIENCE:?}"))?
            .ok_or("the watch ended")?;
        if set.len() > 1 {
            return Err(format!("a re-registered instance is listed twice: {set:?}").into());
        }
        if set == [wanted.clone()] {
            break;
        }
    }
    backend.registry().deregister(&second.id).await?;
    server.stop().await;
    Ok(())
}

/// A live instance stays for as long as a crashed one may take to leave; once its process crashed
/// (registry client dropped, gRPC server stopped) it leaves within interval + timeout +
/// [`CRASH_SLACK`].
pub async fn crashed_instance_leaves(backend: &Backend) -> Fallible<()> {
    let service = unique("crashing");
    let process = backend.connect()?;
    let server = HealthServer::start().await?;
    let registration = registration(&service, "crashing-1", &server, "1");
    process.register(&registration).await?;
    let mut watch = backend.registry().watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    let bound = CHECK_INTERVAL + CHECK_TIMEOUT + CRASH_SLACK;
    if let Ok(change) = tokio::time::timeout(bound, watch.next()).await {
        return Err(format!("a live instance's set changed: {change:?}").into());
    }

    let crashed_at = tokio::time::Instant::now();
    drop(process);
    server.stop().await;
    next_matching(&mut watch, bound, <[Instance]>::is_empty)
        .await
        .map_err(|error| format!("a crashed instance did not leave: {error}"))?;
    eprintln!(
        "a crashed instance left the watched set {:?} after the crash (bound {bound:?})",
        crashed_at.elapsed()
    );
    Ok(())
}

/// Watching a service nobody registered yields an empty set at once.
pub async fn unknown_service_is_empty(backend: &Backend) -> Fallible<()> {
    let mut watch = backend.registry().watch(&unique("unknown"));
    let first = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .map_err(|_| format!("no first set within {PATIENCE:?}"))?
        .ok_or("the watch ended")?;
    assert_eq!(first, []);
    Ok(())
}

/// The next set the watch yields that satisfies `wanted`, within `patience`; the error names the
/// last set seen.
pub async fn next_matching(
    watch: &mut InstanceStream,
    patience: Duration,
    wanted: impl Fn(&[Instance]) -> bool,
) -> Fallible<Vec<Instance>> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Err(_) => {
                return Err(
                    format!("no matching set within {patience:?}; last seen: {last:?}").into(),
                );
            }
            Ok(None) => return Err("the watch ended".into()),
            Ok(Some(set)) if wanted(&set) => return Ok(set),
            Ok(Some(set)) => last = Some(set),
        }
    }
}

/// A service name no other case or run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A registration of `id` in `service` at `server`, checked on its health endpoint every
/// [`CHECK_INTERVAL`], with a `version` of `version`.
pub fn registration(service: &str, id: &str, server: &HealthServer, version: &str) -> Registration {
    Registration {
        id: format!("{service}-{id}"),
        name: service.to_owned(),
        addr: server.addr(),
        tags: vec!["grpc".into(), "contract".into()],
        meta: BTreeMap::from([
            ("version".to_owned(), version.to_owned()),
            ("zone".to_owned(), "test-a".to_owned()),
        ]),
        check: HealthCheck {
            grpc: server.addr().to_string(),
            interval: CHECK_INTERVAL,
            timeout: CHECK_TIMEOUT,
            deregister_critical_after: Duration::from_secs(60),
        },
    }
}

/// The instance a watch reports for `registration`.
pub fn instance_of(registration: &Registration) -> Instance {
    Instance {
        id: registration.id.clone(),
        addr: registration.addr,
        tags: registration.tags.clone(),
        meta: registration.meta.clone(),
    }
}

/// A real `grpc.health.v1` server on `127.0.0.1:0` reporting SERVING: the instance a registry
/// checks.
#[derive(Debug)]
pub struct HealthServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    /// Binds and serves.
    pub async fn start() -> Fallible<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let stop = CancellationToken::new();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let _reporter = reporter;
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
        });
        Ok(Self { addr, stop, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: the listener closes and open connections are told to go away (GOAWAY), so a
    /// check that reuses its connection fails too, as it would against a process that died.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}
