//! A real Prometheus for one test: Debian's `prometheus` binary (as `.ci/run` installs it) with a
//! scrape configuration of the test's targets, a data directory of its own, and a free
//! `127.0.0.1` port for its HTTP API; killed when dropped. It scrapes every second, so a test sees
//! its series within a few seconds.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long Prometheus may take to answer `/-/ready` after it was started.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// How many free ports a start tries before it gives up (another process may take the port
/// between the probe and Prometheus' bind).
const START_ATTEMPTS: u32 = 4;
/// How often a test's question is asked again while it waits for an answer.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A running Prometheus server.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    /// Its configuration, data and log; removed when dropped.
    dir: tempfile::TempDir,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of every target each second under the job `job`,
    /// with the alerting and recording rules in `rule_files` evaluated every second, and waits
    /// until it is ready; `None` (after a loud message) when the binary is missing and external
    /// parts are not required.
    ///
    /// # Panics
    /// When Prometheus does not come up within its patience, or refuses a rule file.
    pub async fn start(job: &str, targets: &[SocketAddr], rule_files: &[&Path]) -> Option<Self> {
        if !crate::binary_available("prometheus", "apt-get install prometheus") {
            return None;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .build()
            .expect("an HTTP client for Prometheus' API");
        let dir = tempfile::tempdir().expect("a directory for Prometheus");
        let targets: Vec<String> = targets.iter().map(|addr| format!("'{addr}'")).collect();
        let rule_files: Vec<String> = rule_files
            .iter()
            .map(|file| format!("'{}'", file.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: '{job}'\n    static_configs:\n      - targets: [{}]\n",
            rule_files.join(", "),
            targets.join(", ")
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let log_file = dir.path().join("prometheus.log");
        for _ in 0..START_ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = std::fs::File::create(&log_file).expect("a log file");
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            if ready(&http, addr, &mut child).await {
                return Some(Self {
                    child,
                    dir,
                    addr,
                    http,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            if !log.contains("address already in use") {
                panic!("prometheus did not become ready within {START_PATIENCE:?}:\n{log}");
            }
        }
        panic!("prometheus found its port taken {START_ATTEMPTS} times");
    }

    /// What Prometheus logged so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The `data.result` of an instant query through the HTTP API (`/api/v1/query`): one entry
    /// per series, each with its `metric` labels and its `value` as `[time, "number"]`.
    ///
    /// # Panics
    /// When Prometheus does not answer or refuses the query.
    pub async fn query(&self, expression: &str) -> Vec<serde_json::Value> {
        self.api("query", &[("query", expression)]).await["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every loaded rule, as `/api/v1/rules` describes it: its `name`, `query`, `health` (`ok`
    /// once evaluated without error) and `lastError`.
    ///
    /// # Panics
    /// When Prometheus does not answer.
    pub async fn rules(&self) -> Vec<serde_json::Value> {
        self.api("rules", &[]).await["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|group| group["rules"].as_array())
            .flatten()
            .cloned()
            .collect()
    }

    /// The `data` of Prometheus' answer to `GET /api/v1/{endpoint}` with `parameters`.
    ///
    /// # Panics
    /// When Prometheus does not answer, or answers with an error.
    async fn api(&self, endpoint: &str, parameters: &[(&str, &str)]) -> serde_json::Value {
        let answer: serde_json::Value = self
            .http
            .get(format!("http://{}/api/v1/{endpoint}", self.addr))
            .query(parameters)
            .send()
            .await
            .expect("Prometheus answers")
            .json()
            .await
            .expect("Prometheus answers JSON");
        assert_eq!(
            answer["status"], "success",
            "{endpoint} {parameters:?}: {answer}"
        );
        answer["data"].clone()
    }

    /// Waits, for at most `patience`, until the first series `expression` answers reads
    /// `expected`.
    ///
    /// # Panics
    /// When it does not, with the last answer and Prometheus' log.
    pub async fn expect_value(&self, expression: &str, expected: f64, patience: Duration) {
        let result = self
            .query_until(expression, patience, |result| {
                result.first().and_then(value_of) == Some(expected)
            })
            .await;
        assert_eq!(
            result.first().and_then(value_of),
            Some(expected),
            "{expression}: {result:?}; prometheus log:\n{}",
            self.log()
        );
    }

    /// Polls [`Prometheus::rules`] every half second until `accept` holds, for at most `patience`;
    /// returns the last answer either way.
    pub async fn rules_until(
        &self,
        patience: Duration,
        accept: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        crate::poll_until(
            patience,
            POLL_INTERVAL,
            || self.rules(),
            |rules| accept(rules),
        )
        .await
    }

    /// Polls `expression` every half second until `accept` holds for its result, for at most
    /// `patience`; returns the last result either way.
    pub async fn query_until(
        &self,
        expression: &str,
        patience: Duration,
        accept: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        crate::poll_until(
            patience,
            POLL_INTERVAL,
            || self.query(expression),
            |result| accept(result),
        )
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until Prometheus at `addr` answers `/-/ready`; `false` if it exits or takes too long.
async fn ready(http: &reqwest::Client, addr: SocketAddr, child: &mut Child) -> bool {
    let deadline = Instant::now() + START_PATIENCE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = http
            .get(format!("http://{addr}/-/ready"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The number in a series' `value` (`[time, "number"]`).
pub fn value_of(series: &serde_json::Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}
