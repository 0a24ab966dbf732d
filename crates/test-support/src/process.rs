//! The real `flotilla` binary, started as a user would start it, on port 0 listeners in a data
//! directory of the test's choosing, found through the `endpoints.json` that `up` writes once ready
//! or the "serving" log line of a single component.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// How long a start may take before the test gives up: a debug build on a busy 2-core machine
/// migrates and seeds SQLite in well under this.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// A running `flotilla up`.
#[derive(Debug)]
pub struct Flotilla {
    child: tokio::process::Child,
    data_dir: PathBuf,
    endpoints: serde_json::Value,
}

impl Flotilla {
    /// Starts `binary up --listen-ephemeral --data-dir data_dir` with `env` added to the environment,
    /// and waits until it has written `endpoints.json`.
    pub async fn up(binary: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let endpoints_path = data_dir.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints_path);
        let mut args = vec!["up".to_owned(), "--listen-ephemeral".to_owned()];
        args.extend(data_dir_args(data_dir));
        Self::start(binary, &args, data_dir, env, move |_log| {
            let text = std::fs::read_to_string(&endpoints_path).ok()?;
            serde_json::from_str(&text).ok()
        })
        .await
    }

    /// Starts `binary serve component` with `env` (which should set its listen addresses, port 0
    /// is fine), and waits for its "serving" log line, which names the bound addresses. The
    /// endpoints document then has the same shape as `up`'s, with this one component.
    pub async fn serve(
        binary: &Path,
        component: &str,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec!["serve".to_owned(), component.to_owned()];
        args.extend(data_dir_args(data_dir));
        let component = component.to_owned();
        Self::start(binary, &args, data_dir, env, move |log| {
            log.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|line| {
                    line["message"] == "serving" && line["component"] == component.as_str()
                })
                .map(|mut line| {
                    if let Some(fields) = line.as_object_mut() {
                        fields.retain(|key, _| matches!(key.as_str(), "grpc" | "http" | "admin"));
                    }
                    serde_json::json!({ component.as_str(): line })
                })
        })
        .await
    }

    /// Spawns the binary with its output in `<data_dir>/flotilla.log` and polls `ready` (given the
    /// log so far) until it yields the endpoints document.
    async fn start(
        binary: &Path,
        args: &[String],
        data_dir: &Path,
        env: &[(&str, &str)],
        ready: impl Fn(&str) -> Option<serde_json::Value>,
    ) -> Self {
        std::fs::create_dir_all(data_dir).expect("create the data directory");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("flotilla.log"))
            .expect("open the log file");
        let mut command = tokio::process::Command::new(binary);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env("FLOTILLA_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone the log handle")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        // The log file is appended across restarts: only what this start writes counts.
        let earlier = read_log(data_dir).len();
        let mut child = command.spawn().expect("start flotilla");

        let deadline = tokio::time::Instant::now() + START_PATIENCE;
        loop {
            let log = read_log(data_dir);
            if let Some(endpoints) = ready(log.get(earlier..).unwrap_or_default()) {
                return Self {
                    child,
                    data_dir: data_dir.to_path_buf(),
                    endpoints,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "flotilla {args:?} exited with {status} before it was ready; log:\n{}",
                    read_log(data_dir)
                );
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "flotilla {args:?} was not ready within {START_PATIENCE:?}; log:\n{}",
                    read_log(data_dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole `endpoints.json` document.
    pub fn endpoints(&self) -> &serde_json::Value {
        &self.endpoints
    }

    /// The address of `component`'s `listener` ("grpc", "http" or "admin").
    pub fn addr(&self, component: &str, listener: &str) -> SocketAddr {
        self.endpoints[component][listener]
            .as_str()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "endpoints.json has no {component}.{listener}: {}",
                    self.endpoints
                )
            })
    }

    /// Sends SIGTERM, as an orchestrator would.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGKILL: a crash, with no chance to deregister or drain.
    pub fn kill(&self) {
        self.signal("KILL");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("flotilla is still running");
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit, at most `patience`.
    pub async fn wait(mut self, patience: Duration) -> ExitStatus {
        match tokio::time::timeout(patience, self.child.wait()).await {
            Ok(status) => status.expect("wait for flotilla"),
            Err(_) => panic!(
                "flotilla did not exit within {patience:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// Stops it with SIGTERM and checks it exits 0.
    pub async fn stop(self) {
        self.terminate();
        let log_dir = self.data_dir.clone();
        let status = self.wait(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "flotilla exited with {status}; log:\n{}",
            read_log(&log_dir)
        );
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.data_dir)
    }
}

fn data_dir_args(data_dir: &Path) -> [String; 2] {
    ["--data-dir".to_owned(), data_dir.display().to_string()]
}

fn read_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("flotilla.log")).unwrap_or_default()
}
