//! The registry's settings as the binary hands them over. Reading them from the environment
//! (`flotilla registry`, `flotilla up`) belongs to the binary; this is the typed result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the registry listens and keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The HTTP API (Consul's agent listens on `127.0.0.1:8500`).
    pub addr: SocketAddr,
    /// The admin listener: `/health` and `/ready`, as every Flotilla component has.
    pub admin_addr: SocketAddr,
    /// Where `registry.json` is kept; `None` keeps nothing across restarts.
    pub data_dir: Option<PathBuf>,
    /// How long requests in flight may take to finish at shutdown (blocking queries answer at once
    /// when the drain starts).
    pub drain_timeout: Duration,
}

impl RegistryConfig {
    /// The API on `addr`, the admin listener on a free port of the same IP, state in `data_dir`,
    /// a 10 s drain.
    pub fn new(addr: SocketAddr, data_dir: Option<PathBuf>) -> Self {
        Self {
            addr,
            admin_addr: SocketAddr::new(addr.ip(), 0),
            data_dir,
            drain_timeout: Duration::from_secs(10),
        }
    }
}
