//! Shutdown signals and the handle of a running component.
//!
//! Each listener (a gRPC service, the gateway) runs as one task tied to a [`CancellationToken`]: no
//! fire-and-forget task outlives its component. The binary decides the order in which components
//! stop (the gateway before the services it calls, so none of its in-flight calls loses its upstream),
//! and each component drains its own in-flight requests within its drain timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::admin::{self, Readiness};
use crate::telemetry::metrics::Metrics;
pub use tokio_util::sync::CancellationToken;

/// The stop signals orchestrators and people send: SIGTERM and SIGINT (Ctrl-C). Install them first
/// thing, before a slow start-up (migrations, seeding), so a signal that arrives early is not met by
/// the default action, which would kill the process without a drain.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// When the handlers cannot be installed (the process could not then be stopped cleanly).
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Completes on the next signal, naming it.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Why a component stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// What the listener is for ("product gRPC").
        what: String,
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("{component} failed while serving: {reason}")]
    Serve {
        /// The component's name.
        component: String,
        /// What failed.
        reason: String,
    },
}

/// The addresses a component actually listens on (port 0 resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BoundAddrs {
    /// The main listener: gRPC for a service, HTTP for the gateway.
    pub main: SocketAddr,
    /// The admin listener: `/health`, `/ready`.
    pub admin: SocketAddr,
}

/// A running component: its bound addresses, and the means to stop it and wait for its drain.
#[derive(Debug)]
pub struct Running {
    name: &'static str,
    addrs: BoundAddrs,
    stop: CancellationToken,
    /// `None` once the task's outcome has been taken by [`Running::stopped`].
    task: Option<JoinHandle<Result<(), ComponentError>>>,
}

impl Running {
    /// Spawns `run`, which must return once `stop` is cancelled and its requests have drained.
    pub fn spawn<F>(name: &'static str, addrs: BoundAddrs, stop: CancellationToken, run: F) -> Self
    where
        F: Future<Output = Result<(), ComponentError>> + Send + 'static,
    {
        Self {
            name,
            addrs,
            stop,
            task: Some(tokio::spawn(run)),
        }
    }

    /// The component's name ("product", "gateway").
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where it listens.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// A token that stops this component when cancelled, for whoever orchestrates shutdown.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Completes when the component stops by itself (it failed), without asking it to stop. Its
    /// outcome is returned here once; a later [`Running::shutdown`] then has nothing to wait for.
    ///
    /// # Errors
    /// The component's failure.
    pub async fn stopped(&mut self) -> Result<(), ComponentError> {
        match &mut self.task {
            Some(task) => {
                let outcome = join(self.name, task).await;
                self.task = None;
                outcome
            }
            None => std::future::pending().await,
        }
    }

    /// Asks the component to stop and waits for it to drain.
    ///
    /// # Errors
    /// The component's failure, if it failed while draining.
    pub async fn shutdown(mut self) -> Result<(), ComponentError> {
        self.stop.cancel();
        match &mut self.task {
            Some(task) => join(self.name, task).await,
            None => Ok(()),
        }
    }
}

async fn join(
    name: &str,
    task: &mut JoinHandle<Result<(), ComponentError>>,
) -> Result<(), ComponentError> {
    match task.await {
        Ok(result) => result,
        Err(error) => Err(ComponentError::Serve {
            component: name.to_owned(),
            reason: format!("task ended abnormally: {error}"),
        }),
    }
}

/// A component's two listeners, bound, with their addresses (port 0 resolved). Binding comes first
/// so a caller learns the addresses before it builds what serves them.
#[derive(Debug)]
pub struct Listeners {
    main: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    addrs: BoundAddrs,
}

impl Listeners {
    /// Binds the main listener of `name` on `main` and its admin listener on `admin`.
    ///
    /// # Errors
    /// [`ComponentError::Bind`] naming the listener and the address.
    pub async fn bind(
        name: &str,
        main: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Self, ComponentError> {
        let main_listener = bind(name, main).await?;
        let admin_listener = bind(&format!("{name} admin"), admin).await?;
        let addrs = BoundAddrs {
            main: local_addr(&main_listener, main),
            admin: local_addr(&admin_listener, admin),
        };
        Ok(Self {
            main: main_listener,
            admin: admin_listener,
            addrs,
        })
    }

    /// Where they listen.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }
}

/// The two listeners of a running component and what it takes to stop them in order: the lifecycle
/// that the gRPC services, the gateway and the registry share.
#[derive(Debug)]
pub struct Supervisor<E> {
    /// The component's name, for logs and errors.
    pub name: &'static str,
    /// Where it listens.
    pub addrs: BoundAddrs,
    /// Cancelled by whoever orchestrates shutdown.
    pub stop: CancellationToken,
    /// How long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// The main listener's task; it returns once `main_stop` is cancelled and its requests drained.
    pub main: JoinHandle<Result<(), E>>,
    /// Stops the main listener accepting and starts its drain.
    pub main_stop: CancellationToken,
    /// The admin listener's task.
    pub admin: JoinHandle<std::io::Result<()>>,
    /// Stops the admin listener.
    pub admin_stop: CancellationToken,
}

impl<E: std::fmt::Display + Send + 'static> Supervisor<E> {
    /// Starts a component on `listeners`: `main` serves the main listener until the signal it is
    /// given (then drains), and the admin listener serves `/health` and `/ready` from `readiness`
    /// and `/metrics` from `metrics`. Call [`Supervisor::run`] (or [`Supervisor::into_running`])
    /// to stop them in order.
    pub fn start<M, F>(
        name: &'static str,
        listeners: Listeners,
        readiness: Readiness,
        metrics: Metrics,
        drain_timeout: Duration,
        main: M,
    ) -> Self
    where
        M: FnOnce(tokio::net::TcpListener, WaitForCancellationFutureOwned) -> F,
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let main_stop = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let admin = axum::serve(listeners.admin, admin::router(readiness, metrics))
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
            .into_future();
        Self {
            name,
            addrs: listeners.addrs,
            stop: CancellationToken::new(),
            drain_timeout,
            main: tokio::spawn(main(listeners.main, main_stop.clone().cancelled_owned())),
            main_stop,
            admin: tokio::spawn(admin),
            admin_stop,
        }
    }

    /// Runs the lifecycle (see [`Supervisor::run`]) as a [`Running`] component.
    pub fn into_running<B>(self, before_close: B) -> Running
    where
        B: Future<Output = ()> + Send + 'static,
    {
        let (name, addrs, stop) = (self.name, self.addrs, self.stop.clone());
        Running::spawn(name, addrs, stop, self.run(before_close))
    }

    /// Waits for `stop`, runs `before_close` (deregistration, readiness and health flips), closes the
    /// main listener and drains it within the timeout, then stops the admin listener last so
    /// `/ready` says "draining" for as long as the drain lasts. Returns early with an error if the
    /// main listener fails on its own.
    ///
    /// # Errors
    /// [`ComponentError::Serve`] when the main listener stopped without being asked.
    pub async fn run<F: Future<Output = ()>>(self, before_close: F) -> Result<(), ComponentError> {
        let Self {
            name,
            addrs: _,
            stop,
            drain_timeout,
            mut main,
            main_stop,
            admin,
            admin_stop,
        } = self;
        tokio::select! {
            () = stop.cancelled() => {}
            result = &mut main => {
                admin_stop.cancel();
                let reason = match result {
                    Ok(Ok(())) => "the listener stopped unexpectedly".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => format!("task ended abnormally: {error}"),
                };
                return Err(ComponentError::Serve { component: name.to_owned(), reason });
            }
        }
        tracing::info!(component = name, "shutting down");
        before_close.await;
        main_stop.cancel();
        drain_within(name, drain_timeout, &mut main).await;
        main.abort();
        admin_stop.cancel();
        if let Ok(Err(error)) = admin.await {
            tracing::warn!(component = name, %error, "admin listener failed");
        }
        Ok(())
    }
}

/// Waits for `drained` at most `timeout`; says how long it took or that it gave up.
pub async fn drain_within<F: Future>(component: &str, timeout: Duration, drained: F) {
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, drained).await {
        Ok(_) => tracing::info!(
            component,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "drained"
        ),
        Err(_) => tracing::warn!(
            component,
            timeout_s = timeout.as_secs_f64(),
            "drain timeout passed with requests still in flight; closing them"
        ),
    }
}

/// Binds a TCP listener, naming what it is for in the error.
///
/// # Errors
/// [`ComponentError::Bind`] when the address is taken or not local.
pub async fn bind(what: &str, addr: SocketAddr) -> Result<tokio::net::TcpListener, ComponentError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ComponentError::Bind {
            what: what.to_owned(),
            addr,
            source,
        })
}

/// The bound address of a listener, falling back to the requested one if the OS cannot say.
pub fn local_addr(listener: &tokio::net::TcpListener, requested: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_component_that_failed_can_still_be_shut_down() {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let addrs = BoundAddrs {
            main: any,
            admin: any,
        };
        let mut running = Running::spawn("failing", addrs, CancellationToken::new(), async {
            Err(ComponentError::Serve {
                component: "failing".into(),
                reason: "boom".into(),
            })
        });
        let failure = running.stopped().await;
        assert!(failure.is_err_and(|error| error.to_string().contains("boom")));
        // Its outcome was taken once; stopping it afterwards neither panics nor reports it twice.
        assert!(running.shutdown().await.is_ok());
    }
}
