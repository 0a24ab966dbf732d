//! The checks the registry runs itself, as a Consul agent does (`agent/checks/check.go`).
//!
//! A probe check (gRPC, HTTP, TCP) runs at once when registered, then again `Interval` after each
//! run ends; each run may take `Timeout` (10 s when unset), after which it counts as critical. A TTL
//! check has no probe: it turns critical when no report arrived within its TTL. Every runner is a
//! task on the registry's tracker and ends when its token is cancelled (instance replaced or
//! removed, or shutdown); results of a replaced run are ignored by the catalog.
//!
//! Consul's other check types (script, Docker, UDP, H2PING, alias, OS service) are refused at
//! registration: this registry cannot run them faithfully, and a check that silently never runs
//! would keep an instance critical for no visible reason.

mod grpc;
mod http;
mod tcp;

use std::time::Duration;

use crate::catalog::Runner;
use crate::domain::{CheckKind, Status};
use crate::registry::Registry;

/// One probe's verdict and the output Consul would show.
type Verdict = (Status, String);

/// A ready-to-run probe for one check.
enum Probe {
    Grpc(grpc::GrpcProbe),
    Http(http::HttpProbe),
    Tcp(tcp::TcpProbe),
}

impl Probe {
    /// Builds the probe; the output to show when the check cannot even be set up (a malformed
    /// target), which keeps it critical.
    fn new(kind: &CheckKind, timeout: Duration) -> Result<Self, String> {
        match kind {
            CheckKind::Grpc {
                target,
                use_tls,
                tls_skip_verify,
            } => grpc::GrpcProbe::new(target, *use_tls, *tls_skip_verify, timeout).map(Self::Grpc),
            CheckKind::Http {
                url,
                method,
                header,
                body,
                tls_skip_verify,
                disable_redirects,
            } => http::HttpProbe::new(
                url,
                method,
                header,
                body,
                *tls_skip_verify,
                *disable_redirects,
                timeout,
            )
            .map(Self::Http),
            CheckKind::Tcp { address } => Ok(Self::Tcp(tcp::TcpProbe::new(address))),
            CheckKind::Ttl { .. } => Err("a TTL check has no probe".to_owned()),
        }
    }

    async fn probe(&self, output_max_size: usize) -> Verdict {
        match self {
            Self::Grpc(probe) => probe.probe().await,
            Self::Http(probe) => probe.probe(output_max_size).await,
            Self::Tcp(probe) => probe.probe().await,
        }
    }

    fn timed_out(&self, timeout: Duration) -> String {
        match self {
            Self::Grpc(probe) => probe.timed_out(),
            Self::Http(probe) => probe.timed_out(timeout),
            Self::Tcp(probe) => probe.timed_out(),
        }
    }
}

/// Runs one check until its token is cancelled.
pub(crate) async fn run(registry: Registry, runner: Runner) {
    match runner.check.kind {
        CheckKind::Ttl { .. } => run_ttl(registry, runner).await,
        _ => run_probe(registry, runner).await,
    }
}

async fn run_probe(registry: Registry, runner: Runner) {
    let timeout = runner.check.effective_timeout();
    let interval = runner.check.effective_interval();
    let probe = match Probe::new(&runner.check.kind, timeout) {
        Ok(probe) => probe,
        Err(output) => {
            registry.record(&runner, Status::Critical, &output);
            return;
        }
    };
    loop {
        let verdict = tokio::select! {
            () = runner.stop.cancelled() => return,
            verdict = tokio::time::timeout(timeout, probe.probe(runner.check.output_max_size)) => verdict,
        };
        let (status, output) =
            verdict.unwrap_or_else(|_| (Status::Critical, probe.timed_out(timeout)));
        registry.record(&runner, status, &output);
        tokio::select! {
            () = runner.stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Waits for the TTL to run out, marks the check critical if no report came meanwhile, repeats.
async fn run_ttl(registry: Registry, runner: Runner) {
    loop {
        let Some(deadline) = registry.ttl_deadline(&runner) else {
            return;
        };
        tokio::select! {
            () = runner.stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {}
        }
        registry.expire_ttl(&runner);
    }
}
