//! Fixtures shared by Flotilla's integration tests: real parts started on port 0 or created fresh
//! per test run, so tests never collide with each other or with what else runs on the machine.
//!
//! - [`postgres`]: a fresh PostgreSQL database per test, dropped afterwards;
//! - [`databases`]: a fresh SQLite file or PostgreSQL database per case, and [`both!`] to run a
//!   case on each;
//! - [`process`]: the real `flotilla` binary started in a temporary data directory;
//! - [`etcd`]: a real etcd on free ports in a temporary data directory, which can be killed and
//!   restarted;
//! - [`discovery_contract`](mod@discovery_contract): the cases every service-discovery backend
//!   must pass, and [`discovery_contract!`] to run them as tests;
//! - [`otlp`]: a real OTLP trace receiver (OpenTelemetry's collector service) on a free port;
//! - [`prometheus`]: a real Prometheus server (Debian's `prometheus`) scraping given targets.
//!
//! A part that is missing (no PostgreSQL listening, no `etcd` or `prometheus` binary) makes the test skip with a
//! loud message, unless `FLOTILLA_REQUIRE_EXTERNAL=1` (set by `.ci/run`), where it is a failure.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixtures: a failed setup should stop the test loudly

pub mod databases;
pub mod discovery_contract;
pub mod etcd;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod prometheus;

/// Whether missing external parts must fail the test instead of skipping it.
pub fn external_parts_required() -> bool {
    std::env::var("FLOTILLA_REQUIRE_EXTERNAL").is_ok_and(|value| value == "1")
}

/// Reports a missing external part: a panic when parts are required, a loud skip message otherwise.
pub fn missing_part(part: &str, reason: &str) {
    let message = format!("{part} is not available ({reason})");
    if external_parts_required() {
        panic!("{message}, and FLOTILLA_REQUIRE_EXTERNAL=1 requires it");
    }
    eprintln!("\n!!! SKIPPED: {message}; set FLOTILLA_REQUIRE_EXTERNAL=1 to make this a failure\n");
}

/// Whether the program `binary` runs (`binary --version`); when it does not, reports it as a
/// [`missing_part`] with `install`, the package that brings it.
pub fn binary_available(binary: &str, install: &str) -> bool {
    match std::process::Command::new(binary)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(error) => {
            missing_part(
                binary,
                &format!("cannot run `{binary}` ({error}); {install}"),
            );
            false
        }
    }
}

/// Asks `ask` every `interval` until `accept` holds for its answer, for at most `patience`;
/// returns the last answer either way.
pub async fn poll_until<T, F>(
    patience: std::time::Duration,
    interval: std::time::Duration,
    mut ask: impl FnMut() -> F,
    accept: impl Fn(&T) -> bool,
) -> T
where
    F: std::future::Future<Output = T>,
{
    let deadline = std::time::Instant::now() + patience;
    loop {
        let answer = ask().await;
        if accept(&answer) || std::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(interval).await;
    }
}
