//! TCP checks (Consul's `CheckTCP`): passing when a connection to `host:port` opens within the
//! timeout, critical otherwise. The connection is closed at once.

use super::Verdict;
use crate::domain::Status;

pub(super) struct TcpProbe {
    address: String,
}

impl TcpProbe {
    pub(super) fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
        }
    }

    /// The output when the connection does not open in time (Go's dial timeout).
    pub(super) fn timed_out(&self) -> String {
        format!("dial tcp {}: i/o timeout", self.address)
    }

    pub(super) async fn probe(&self) -> Verdict {
        match tokio::net::TcpStream::connect(&self.address).await {
            Ok(_) => (
                Status::Passing,
                format!("TCP connect {}: Success", self.address),
            ),
            Err(error) => (
                Status::Critical,
                format!("dial tcp {}: {error}", self.address),
            ),
        }
    }
}
