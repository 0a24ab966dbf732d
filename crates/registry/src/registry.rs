//! The running registry: the [`Catalog`] behind one lock, the tasks that change it on their own
//! (check runners, the reaper, the data-file writer) and the wake-ups blocking queries wait on.
//!
//! **Every background task is spawned on one [`TaskTracker`] and stops with one
//! [`CancellationToken`]**: [`Registry::shutdown`] cancels it, waits for them all, and the writer's
//! last act is to write any change not yet on disk. Each check's runner has a child token that is
//! also cancelled when its instance is replaced or removed.
//!
//! **A change wakes exactly what depends on it**: the new index is published on a `watch` channel
//! (blocking queries re-read their view and answer if their index moved), the reaper is nudged
//! (a check may have become critical), and a write of the data file is requested. Changes made
//! through the API answer only once that write has finished.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, CheckIdTaken, Runner, TtlError, UnknownService};
use crate::domain::{ServiceDefinition, Status};
use crate::json::Node;
use crate::store::{self, Persister, StoreError, StoredState};

/// What a registry needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Where the state is kept across restarts; `None` keeps nothing.
    pub data_dir: Option<PathBuf>,
    /// The node's name (Consul uses the host name).
    pub node_name: String,
    /// The node's address, where instances registered without an `Address` are reached.
    pub node_address: String,
    /// The datacenter's name.
    pub datacenter: String,
    /// What `GET /v1/status/leader` answers: the registry's own address.
    pub leader: String,
}

impl RegistryOptions {
    /// Options for a registry serving on `addr`, keeping its state in `data_dir`: node `flotilla`
    /// in datacenter `dc1` (Consul's default datacenter), at `addr`'s IP (loopback when `addr` is
    /// unspecified).
    pub fn new(addr: std::net::SocketAddr, data_dir: Option<PathBuf>) -> Self {
        let ip = if addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        Self {
            data_dir,
            node_name: "flotilla".to_owned(),
            node_address: ip.to_string(),
            datacenter: "dc1".to_owned(),
            leader: std::net::SocketAddr::new(ip, addr.port()).to_string(),
        }
    }
}

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The data directory could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a change through the API was refused or not kept.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A check ID belongs to another instance.
    #[error(transparent)]
    CheckIdTaken(#[from] CheckIdTaken),
    /// No instance has that ID.
    #[error(transparent)]
    UnknownService(#[from] UnknownService),
    /// The TTL report was refused.
    #[error(transparent)]
    Ttl(#[from] TtlError),
    /// The change was made but could not be written to the data directory.
    #[error("the change was made but not saved: {0}")]
    NotSaved(String),
}

/// A handle on the running registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Mutex<Catalog>,
    node: Node,
    leader: String,
    changes: watch::Sender<u64>,
    persister: Persister,
    reaper: Notify,
    tasks: TaskTracker,
    stop: CancellationToken,
    draining: CancellationToken,
}

impl Registry {
    /// Reads the data directory (if any), puts its instances back with their checks critical, and
    /// starts the checks, the reaper and the data-file writer.
    ///
    /// # Errors
    /// [`RegistryError::Store`] when the data file cannot be read or is not a registry's.
    pub async fn open(options: RegistryOptions) -> Result<Self, RegistryError> {
        let stored = match &options.data_dir {
            Some(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || store::load(&dir))
                    .await
                    .map_err(|error| StoreError::Io {
                        path: options.data_dir.clone().unwrap_or_default(),
                        source: std::io::Error::other(error),
                    })??
            }
            None => None,
        };
        let (node_id, stored_index, definitions) = match stored {
            Some(state) => (state.node_id, state.index, state.services),
            None => (uuid::Uuid::new_v4().to_string(), 0, Vec::new()),
        };
        let stop = CancellationToken::new();
        let mut catalog = Catalog::new(stored_index);
        let restored = definitions.len();
        let runners = catalog.restore(definitions, Instant::now(), &stop);
        let index = catalog.index();
        let registry = Self {
            inner: Arc::new(Inner {
                catalog: Mutex::new(catalog),
                node: Node {
                    id: node_id,
                    name: options.node_name,
                    address: options.node_address,
                    datacenter: options.datacenter,
                },
                leader: options.leader,
                changes: watch::Sender::new(index),
                persister: Persister::new(options.data_dir, index.saturating_sub(1)),
                reaper: Notify::new(),
                tasks: TaskTracker::new(),
                stop,
                draining: CancellationToken::new(),
            }),
        };
        if restored > 0 {
            tracing::info!(
                instances = restored,
                "restored instances from the data directory; their checks start critical"
            );
        }
        registry
            .inner
            .tasks
            .spawn(registry.clone().write_data_file());
        registry.inner.tasks.spawn(registry.clone().reap());
        registry.start(runners);
        // Write at once: the node ID is new, or the restored index was raised.
        registry.inner.persister.request(index);
        Ok(registry)
    }

    /// This node.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// What `GET /v1/status/leader` answers.
    pub fn leader(&self) -> &str {
        &self.inner.leader
    }

    /// The global index: the last change anywhere.
    pub fn index(&self) -> u64 {
        self.catalog().index()
    }

    /// Blocking queries answer at once from now on, so an HTTP drain does not wait for them.
    pub fn start_draining(&self) {
        self.inner.draining.cancel();
    }

    /// Stops every check and background task and waits for them; the last change not yet on disk
    /// is written first.
    pub async fn shutdown(&self) {
        self.inner.draining.cancel();
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        // A panic while holding the lock cannot leave the catalog half-changed in a way that
        // matters more than stopping serving would; keep going with what is there.
        self.inner
            .catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn start(&self, runners: Vec<Runner>) {
        for runner in runners {
            self.inner
                .tasks
                .spawn(crate::checks::run(self.clone(), runner));
        }
    }

    /// Publishes a change at `index`: wakes blocking queries and the reaper, asks for a write.
    fn changed(&self, index: u64) {
        self.inner.changes.send_replace(index);
        self.inner.reaper.notify_one();
        self.inner.persister.request(index);
    }

    async fn saved(&self, index: u64) -> Result<(), ChangeError> {
        self.inner
            .persister
            .flushed(index)
            .await
            .map_err(ChangeError::NotSaved)
    }

    /// Registers (or replaces) an instance and starts its checks; answers once it is saved.
    ///
    /// # Errors
    /// [`ChangeError::CheckIdTaken`], or [`ChangeError::NotSaved`] when the write failed.
    pub async fn register(&self, definition: ServiceDefinition) -> Result<(), ChangeError> {
        let id = definition.id.clone();
        let (runners, index) = {
            let mut catalog = self.catalog();
            let runners = catalog.register(definition, Instant::now(), &self.inner.stop)?;
            (runners, catalog.index())
        };
        tracing::info!(service_id = %id, checks = runners.len(), "registered");
        self.start(runners);
        self.changed(index);
        self.saved(index).await
    }

    /// Removes an instance and stops its checks; answers once that is saved.
    ///
    /// # Errors
    /// [`ChangeError::UnknownService`], or [`ChangeError::NotSaved`].
    pub async fn deregister(&self, id: &str) -> Result<(), ChangeError> {
        let index = {
            let mut catalog = self.catalog();
            catalog.deregister(id)?;
            catalog.index()
        };
        tracing::info!(service_id = %id, "deregistered");
        self.changed(index);
        self.saved(index).await
    }

    /// A TTL report: `status` with `note` as its output.
    ///
    /// # Errors
    /// [`ChangeError::Ttl`], or [`ChangeError::NotSaved`].
    pub async fn report_ttl(
        &self,
        check_id: &str,
        status: Status,
        note: &str,
    ) -> Result<(), ChangeError> {
        let changed = {
            let mut catalog = self.catalog();
            catalog
                .report_ttl(check_id, status, note, Instant::now())?
                .then(|| catalog.index())
        };
        match changed {
            Some(index) => {
                self.changed(index);
                self.saved(index).await
            }
            None => Ok(()),
        }
    }

    /// Records one probe's result for `runner`.
    pub(crate) fn record(&self, runner: &Runner, status: Status, output: &str) {
        let changed = {
            let mut catalog = self.catalog();
            catalog
                .record(runner.run_ref(), status, output, Instant::now())
                .then(|| catalog.index())
        };
        if let Some(index) = changed {
            self.changed(index);
        }
    }

    /// When `runner`'s TTL expires next; `None` once it was replaced.
    pub(crate) fn ttl_deadline(&self, runner: &Runner) -> Option<Instant> {
        self.catalog().ttl_deadline(runner.run_ref())
    }

    /// Expires `runner`'s TTL if its deadline passed.
    pub(crate) fn expire_ttl(&self, runner: &Runner) {
        let changed = {
            let mut catalog = self.catalog();
            catalog
                .expire_ttl(runner.run_ref(), Instant::now())
                .then(|| catalog.index())
        };
        if let Some(index) = changed {
            self.changed(index);
        }
    }

    /// Reads a view of the catalog with its index.
    pub(crate) fn view<T>(&self, view: impl FnOnce(&Catalog, &Node) -> T) -> T {
        view(&self.catalog(), &self.inner.node)
    }

    /// A blocking query (Consul's long poll): answers at once when `index` is 0 or differs from
    /// the view's index, else when the view's index moves, when `wait` has passed, or when the
    /// registry starts draining. Returns the view's index and value.
    pub(crate) async fn blocking<T>(
        &self,
        index: u64,
        wait: Duration,
        view: impl Fn(&Catalog, &Node) -> (u64, T),
    ) -> (u64, T) {
        let deadline = Instant::now() + wait;
        let mut changes = self.inner.changes.subscribe();
        loop {
            // Mark what has been seen before reading, so a change after the read wakes us.
            changes.borrow_and_update();
            let (current, value) = self.view(&view);
            if index == 0
                || current != index
                || Instant::now() >= deadline
                || self.inner.draining.is_cancelled()
            {
                return (current, value);
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return (current, value);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {}
                () = self.inner.draining.cancelled() => {}
            }
        }
    }

    /// The data-file writer: writes the newest state whenever asked, and once more at shutdown
    /// if a change is still unwritten.
    async fn write_data_file(self) {
        let Some(dir) = self.inner.persister.dir().map(PathBuf::from) else {
            return;
        };
        let mut requests = self.inner.persister.requests();
        let mut stopping = false;
        loop {
            if self.inner.persister.pending().is_some() {
                let state = {
                    let catalog = self.catalog();
                    StoredState {
                        version: store::FORMAT_VERSION,
                        node_id: self.inner.node.id.clone(),
                        index: catalog.index(),
                        services: catalog.definitions(),
                    }
                };
                let index = state.index;
                let dir = dir.clone();
                let outcome = tokio::task::spawn_blocking(move || store::save(&dir, &state))
                    .await
                    .unwrap_or_else(|error| {
                        Err(StoreError::Io {
                            path: PathBuf::new(),
                            source: std::io::Error::other(error),
                        })
                    });
                self.inner.persister.finished(index, outcome);
            }
            if stopping {
                return;
            }
            // A request made after the check above is still seen: the receiver only marks what
            // `changed` returned.
            stopping = tokio::select! {
                biased;
                () = self.inner.stop.cancelled() => true,
                changed = requests.changed() => changed.is_err(),
            };
        }
    }

    /// Removes instances critical for longer than their `DeregisterCriticalServiceAfter`, at the
    /// moment each becomes due (Consul checks every 30 s with a 1 min floor; this registry acts
    /// on time, whatever the value, so tests and short-lived setups can use seconds).
    async fn reap(self) {
        loop {
            let (removed, next, index) = {
                let mut catalog = self.catalog();
                let (removed, next) = catalog.reap(Instant::now());
                (removed, next, catalog.index())
            };
            if !removed.is_empty() {
                self.changed(index);
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.inner.stop.cancelled() => return,
                () = self.inner.reaper.notified() => {}
                () = sleep => {}
            }
        }
    }
}
