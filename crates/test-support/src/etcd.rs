//! A real etcd for one test: the `etcd` binary (Debian's `etcd-server`, as `.ci/run` installs it)
//! with a data directory of its own, on free `127.0.0.1` ports, killed when dropped. Tests never use
//! etcd's well-known port 2379, where something else may listen.
//!
//! It can be killed and started again on the same ports, with its data (an etcd restart) or without
//! (an etcd that lost everything), which is what the etcd backend's recovery tests need.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use platform::proto::etcd::etcdserverpb::RangeRequest;
use platform::proto::etcd::etcdserverpb::kv_client::KvClient;

/// How long etcd may take to answer after it was started: a single member elects itself in about
/// a second, more on a loaded CI machine.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A running etcd member (a cluster of one).
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_url: String,
    peer_url: String,
}

impl Etcd {
    /// Starts `etcd` on two free ports and waits until it answers a read; `None` (after a loud
    /// message) when the binary is missing and external parts are not required.
    pub async fn start() -> Option<Self> {
        if let Err(error) = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            crate::missing_part(
                "etcd",
                &format!("cannot run `etcd` ({error}); install Debian's etcd-server"),
            );
            return None;
        }
        // Both listeners are held at once so the two ports differ; etcd binds them right after.
        let client = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("find a free port");
        let peer = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("find a free port");
        let client_url = format!("http://{}", client.local_addr().expect("a bound address"));
        let peer_url = format!("http://{}", peer.local_addr().expect("a bound address"));
        drop((client, peer));

        let mut etcd = Self {
            child: None,
            dir: tempfile::tempdir().expect("create a temporary directory"),
            client_url,
            peer_url,
        };
        etcd.run().await;
        Some(etcd)
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
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }

    /// Kills etcd if it runs, then starts it again on the same ports with no data: every key and
    /// lease is gone, and revisions start again from 1.
    pub async fn restart_empty(&mut self) {
        self.kill();
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("remove etcd's data directory");
        }
        self.run().await;
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

    /// Spawns etcd and waits until it answers a (linearizable) read, which needs a leader.
    async fn run(&mut self) {
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
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "etcd exited with {status} before it answered; log:\n{}",
                    self.log()
                );
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "etcd did not answer within {START_PATIENCE:?}; log:\n{}",
                    self.log()
                );
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
