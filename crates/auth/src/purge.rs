//! The background purge of expired rows: every [`PURGE_INTERVAL`](crate::grpc::PURGE_INTERVAL)
//! (and once at start), [`AuthApi::purge_expired`] removes what can no longer matter. It runs on
//! its own task, so no login or refresh waits for it under its deadline, and a failed purge is
//! logged and tried again at the next tick.
//!
//! How it stops: the task ends by itself when the service's database is closed, which is what the
//! binary does at shutdown after the gRPC server has stopped (`Database::close`, through sqlx's
//! pool close event); a purge in progress is dropped then, so closing does not wait for it.
//! [`Purger::stop`] ends it sooner. Dropping the [`Purger`] handle does **not** stop the task, so a
//! caller that keeps only the service and the database out of [`BuiltAuth`](crate::BuiltAuth) still
//! gets its purges.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::grpc::AuthApi;

/// The handle of a running purge task.
#[derive(Debug)]
pub struct Purger {
    task: JoinHandle<()>,
}

impl Purger {
    /// Starts purging `api`'s store every `every` (the first purge runs at once), until its
    /// database is closed or the task is stopped. Needs a Tokio runtime.
    pub fn spawn(api: AuthApi, every: Duration) -> Self {
        Self {
            task: tokio::spawn(run(api, every)),
        }
    }

    /// Whether the task has ended (its database was closed, or it was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the task without waiting for it; a purge in progress is dropped.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Stops the task and waits until it has ended.
    pub async fn stop(self) {
        self.task.abort();
        // A cancelled task's `JoinError` is the expected outcome, and the task cannot panic.
        let _ = self.task.await;
    }
}

async fn run(api: AuthApi, every: Duration) {
    let pool = api.store().database().pool().clone();
    let mut closed = std::pin::pin!(pool.close_event());
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = &mut closed => break,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            biased;
            () = &mut closed => break,
            result = api.purge_expired() => match result {
                Ok(purged) => tracing::debug!(?purged, "purged expired tokens"),
                Err(error) => tracing::warn!(%error, "purging expired tokens failed"),
            },
        }
    }
    tracing::debug!("the database is closed; the purge task ends");
}
