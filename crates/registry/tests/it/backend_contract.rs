//! The discovery contract every backend passes (`test_support::discovery_contract`), run for the
//! Consul backend (`platform::discovery::consul`) against the embedded registry, spawned on real
//! sockets. Here the registry's own gRPC checks notice a crashed instance: its health server stops.

use std::sync::Arc;

use platform::discovery::Registry;
use platform::discovery::consul::{ConsulConfig, ConsulRegistry};
use platform::telemetry::metrics::Metrics;
use registry::RegistryConfig;
use test_support::discovery_contract::Backend;

/// A fresh embedded registry (nothing kept on disk), and Consul clients of it.
async fn open() -> Option<Backend> {
    let running = match registry::spawn(
        RegistryConfig::new(([127, 0, 0, 1], 0).into(), None),
        Metrics::new(),
    )
    .await
    {
        Ok(running) => running,
        Err(error) => panic!("spawn the embedded registry: {error}"),
    };
    let config = ConsulConfig {
        address: format!("http://{}", running.addrs().main),
        token: None,
    };
    let backend = Backend::new(
        move || Ok(Arc::new(ConsulRegistry::new(config.clone())?) as Arc<dyn Registry>),
        running,
    );
    match backend {
        Ok(backend) => Some(backend),
        Err(error) => panic!("a Consul client of the embedded registry: {error}"),
    }
}

test_support::discovery_contract!(crate::backend_contract::open);
