//! The admin HTTP listener every component has beside its main one: `/health` (liveness: the
//! process answers) and `/ready` (readiness: dependencies reachable and not draining), the split
//! Kubernetes probes and load balancers expect, and `/metrics` for Prometheus.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;

use crate::telemetry::metrics::Metrics;

/// An asynchronous dependency check, such as "the database answers": `Err` carries a reason a person
/// can act on (never a secret).
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Whether a component should receive traffic: shared by its admin listener and its lifecycle.
#[derive(Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
    checks: Vec<ReadinessCheck>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("draining", &self.is_draining())
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Readiness {
    /// Ready, with no dependency checks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a dependency check that must pass for the component to be ready.
    #[must_use]
    pub fn with_check(mut self, check: ReadinessCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// Marks the component as draining: not ready from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Runs every check; the first failure's reason, or "draining".
    ///
    /// # Errors
    /// The reason the component is not ready.
    pub async fn check(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining for shutdown".to_owned());
        }
        for check in &self.checks {
            check().await?;
        }
        Ok(())
    }
}

/// The admin routes: `/health` and `/ready`, answering JSON, and `/metrics` rendering `metrics`.
/// The gateway mounts the first pair on its public port as `/healthz` and `/readyz`.
pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(readiness)
        .merge(
            Router::new()
                .route("/metrics", get(crate::telemetry::metrics::endpoint))
                .with_state(metrics),
        )
}

/// Liveness: the process is up and its runtime answers.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 when every check passes and the component is not draining, 503 otherwise.
pub async fn ready(State(readiness): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    match readiness.check().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason})),
        ),
    }
}
