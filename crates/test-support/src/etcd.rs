//! A real etcd for one test: the `etcd` binary (Debian's `etcd-server`, as `.ci/run` installs it)
//! with a data directory of its own, on free `127.0.0.1` ports, killed when dropped. Tests never use
//! etcd's well-known port 2379, where something else may listen.
//!
//! It can be killed and started again on the same ports, with its data (an etcd restart) or without
//! (an etcd that lost everything), which is what the etcd backend's recovery tests need.
//!
//! The ports are found by binding port 0 and letting go, so another process may take one before
//! etcd binds it: a start that fails with "address already in use" is tried again on new ports.
//!
//! A [`Relay`] in front of it plays a member that hangs: the connection stays open and nothing
//! answers, while clients that connect to etcd directly are served as usual.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use platform::proto::etcd::etcdserverpb::RangeRequest;
use platform::proto::etcd::etcdserverpb::kv_client::KvClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long etcd may take to answer after it was started: a single member elects itself in about
/// a second, more on a loaded CI machine.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// How many pairs of free ports a start tries before it gives up.
const START_ATTEMPTS: u32 = 4;

/// A running etcd member (a cluster of one).
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_url: String,
    peer_url: String,
}

/// Why etcd did not come up.
enum StartFailure {
    /// Another process took one of its ports between the probe and etcd's bind.
    PortTaken(String),
    /// Anything else, with etcd's log.
    Other(String),
}

impl Etcd {
    /// Starts `etcd` on two free ports and waits until it answers a read; `None` (after a loud
    /// message) when the binary is missing and external parts are not required.
    ///
    /// # Panics
    /// When etcd does not come up within its patience, or its ports were taken on every attempt.
    pub async fn start() -> Option<Self> {
        if !crate::binary_available("etcd", "install Debian's etcd-server") {
            return None;
        }
        let (client_url, peer_url) = free_urls();
        let mut etcd = Self {
            child: None,
            dir: tempfile::tempdir().expect("create a temporary directory"),
            client_url,
            peer_url,
        };
        let mut attempt = 1;
        loop {
            match etcd.run().await {
                Ok(()) => return Some(etcd),
                Err(StartFailure::PortTaken(log)) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "etcd's port on {} or {} was taken (attempt {attempt}); trying new ports:\n{log}",
                        etcd.client_url, etcd.peer_url
                    );
                    etcd.kill();
                    etcd.remove_data();
                    (etcd.client_url, etcd.peer_url) = free_urls();
                    attempt += 1;
                }
                Err(StartFailure::PortTaken(log) | StartFailure::Other(log)) => panic!("{log}"),
            }
        }
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Kills etcd at once (SIGKILL), as a crash would; its data stays for [`Etcd::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd if it runs, then starts it again on the same ports with the same data.
    ///
    /// # Panics
    /// When etcd does not come up (its ports are kept, so clients find it again).
    pub async fn restart(&mut self) {
        self.kill();
        self.run_on_the_same_ports().await;
    }

    /// Kills etcd if it runs, then starts it again on the same ports with no data: every key and
    /// lease is gone, and revisions start again from 1.
    ///
    /// # Panics
    /// When etcd does not come up.
    pub async fn restart_empty(&mut self) {
        self.kill();
        self.remove_data();
        self.run_on_the_same_ports().await;
    }

    /// What etcd has logged so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn remove_data(&self) {
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("remove etcd's data directory");
        }
    }

    async fn run_on_the_same_ports(&mut self) {
        if let Err(StartFailure::PortTaken(log) | StartFailure::Other(log)) = self.run().await {
            panic!("{log}");
        }
    }

    /// Spawns etcd and waits until it answers a (linearizable) read, which needs a leader.
    async fn run(&mut self) -> Result<(), StartFailure> {
        let log_start = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd's log file");
        let child = Command::new("etcd")
            .args(self.arguments(&self.data_dir()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone the log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start etcd");
        self.child = Some(child);

        let deadline = tokio::time::Instant::now() + START_PATIENCE;
        loop {
            if self.answers().await {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = self.log();
                let this_run = log.get(log_start..).unwrap_or(&log);
                let message = format!("etcd exited with {status} before it answered; log:\n{log}");
                return Err(if this_run.contains("address already in use") {
                    StartFailure::PortTaken(message)
                } else {
                    StartFailure::Other(message)
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StartFailure::Other(format!(
                    "etcd did not answer within {START_PATIENCE:?}; log:\n{}",
                    self.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn arguments(&self, data_dir: &Path) -> Vec<String> {
        let name = "flotilla-test";
        [
            ("--name", name.to_owned()),
            ("--data-dir", data_dir.display().to_string()),
            ("--listen-client-urls", self.client_url.clone()),
            ("--advertise-client-urls", self.client_url.clone()),
            ("--listen-peer-urls", self.peer_url.clone()),
            ("--initial-advertise-peer-urls", self.peer_url.clone()),
            ("--initial-cluster", format!("{name}={}", self.peer_url)),
            ("--initial-cluster-state", "new".to_owned()),
            ("--logger", "zap".to_owned()),
            ("--log-outputs", "stderr".to_owned()),
        ]
        .into_iter()
        .map(|(flag, value)| format!("{flag}={value}"))
        .collect()
    }

    async fn answers(&self) -> bool {
        let attempt = async {
            let mut kv = KvClient::connect(self.client_url.clone()).await.ok()?;
            kv.range(RangeRequest {
                key: b"flotilla-test-ready".to_vec(),
                ..RangeRequest::default()
            })
            .await
            .ok()
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
            .is_some()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two free ports as etcd's client and peer URLs. Both listeners are held at once so the ports
/// differ; etcd binds them right after, and a start that loses the race is tried again.
fn free_urls() -> (String, String) {
    let client = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("find a free port");
    let peer = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("find a free port");
    (
        format!("http://{}", client.local_addr().expect("a bound address")),
        format!("http://{}", peer.local_addr().expect("a bound address")),
    )
}

/// A TCP relay on `127.0.0.1:0` to an etcd client URL, which can stop passing bytes while keeping
/// every connection open: the member a client sees through it hangs, as one does when its process
/// is stopped or a partition drops its packets, and no error reaches the client. Clients that
/// connect to etcd directly are served as usual, so one etcd plays a cluster with a silent member.
///
/// While silent it goes on reading and holds what it read (what came from clients is also kept
/// for [`Relay::held_until`]), to deliver it when it passes again. Dropping the relay closes its
/// connections.
#[derive(Debug)]
pub struct Relay {
    url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    mode: watch::Sender<Mode>,
    /// What the client sent since the relay stopped passing.
    held: watch::Sender<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Passing,
    Silent,
    /// Passing until the client sends these bytes, then silent.
    SilentFrom(Arc<[u8]>),
}

impl Relay {
    /// Starts relaying to `target`, an `http://host:port` URL such as [`Etcd::client_url`].
    ///
    /// # Errors
    /// When the listener cannot be bound or `target` has no `host:port`.
    pub async fn start(target: &str) -> std::io::Result<Self> {
        let target = target
            .strip_prefix("http://")
            .unwrap_or(target)
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            mode: watch::Sender::new(Mode::Passing),
            held: watch::Sender::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(stop.clone().run_until_cancelled_owned(accept(
            listener,
            target,
            Arc::clone(&shared),
            stop.clone(),
        )));
        Ok(Self { url, shared, stop })
    }

    /// The URL to give clients, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops passing bytes in either direction; new connections are accepted and never answered.
    pub fn silence(&self) {
        self.shared.mode.send_replace(Mode::Silent);
    }

    /// Passes bytes until the client sends `marker` (such as a value it puts), then stops as
    /// [`Relay::silence`] does, holding the bytes that carried it.
    pub fn silence_from(&self, marker: &[u8]) {
        self.shared
            .mode
            .send_replace(Mode::SilentFrom(Arc::from(marker)));
    }

    /// Passes bytes again, delivering what was held.
    pub fn resume(&self) {
        self.shared.held.send_replace(Vec::new());
        self.shared.mode.send_replace(Mode::Passing);
    }

    /// Waits until what the relay holds from clients satisfies `wanted`, and returns it: what it
    /// read from clients since it stopped passing (after [`Relay::silence_from`], from the start
    /// of the marker, even if part of it was passed already).
    pub async fn held_until(&self, mut wanted: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
        let mut held = self.shared.held.subscribe();
        match held.wait_for(|bytes| wanted(bytes)).await {
            Ok(bytes) => bytes.clone(),
            // The sender lives in `self`.
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    target: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(&target).await else {
            // Dropping the client's socket refuses it as a dead member would.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        for (from, to, from_client) in [
            (client_read, server_write, true),
            (server_read, client_write, false),
        ] {
            let shared = Arc::clone(&shared);
            tokio::spawn(stop.clone().run_until_cancelled_owned(pump(
                from,
                to,
                from_client,
                shared,
            )));
        }
    }
}

/// Copies one direction of a connection. While the relay is silent it keeps reading (as the
/// kernel of a stopped process would keep accepting bytes) and writes nothing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    from_client: bool,
    shared: Arc<Shared>,
) {
    let mut mode = shared.mode.subscribe();
    let mut buffer = vec![0_u8; 16 * 1024];
    // Read and not written yet.
    let mut pending: Vec<u8> = Vec::new();
    // The end of what was read before, so a marker split across two reads is still seen.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let silent = *mode.borrow_and_update() == Mode::Silent;
        if !silent && !pending.is_empty() {
            if to.write_all(&pending).await.is_err() {
                return;
            }
            pending.clear();
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let chunk = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(read) => &buffer[..read],
        };
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(chunk);
        let current = mode.borrow().clone();
        let held_from = match current {
            Mode::Passing => None,
            Mode::Silent => Some(window.len() - chunk.len()),
            Mode::SilentFrom(marker) if from_client => {
                // A match must end in the new chunk: what the look-behind alone holds was read
                // before (perhaps before the marker was set).
                let before = window.len() - chunk.len();
                let found = window
                    .windows(marker.len())
                    .enumerate()
                    .find(|(start, part)| start + marker.len() > before && **part == *marker)
                    .map(|(start, _)| start);
                if found.is_some() {
                    shared.mode.send_replace(Mode::Silent);
                }
                found
            }
            Mode::SilentFrom(_) => None,
        };
        pending.extend_from_slice(chunk);
        match held_from {
            Some(from) if from_client => {
                shared
                    .held
                    .send_modify(|held| held.extend_from_slice(&window[from..]));
            }
            Some(_) => {}
            None => {
                if to.write_all(&pending).await.is_err() {
                    return;
                }
                pending.clear();
            }
        }
        tail = window[window.len().saturating_sub(4096)..].to_vec();
    }
}
