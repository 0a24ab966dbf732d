//! The JSON the registry answers with, field for field as Consul's documented payloads name them
//! (PascalCase, `ID`, `CheckID`, `ServiceID`…). The contract tests compare these shapes with the
//! sample responses of Consul's API documentation, kept in `tests/it/fixtures/`.
//!
//! Left out on purpose: Enterprise fields (`Namespace`, `Partition`), service mesh fields (`Kind`,
//! `Proxy`, `Connect`) and `TaggedAddresses` on services, which this registry does not keep.

use std::collections::BTreeMap;

use serde::Serialize;

/// The node this registry is: one agent that is also the only server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// A UUID made once and kept in the data directory.
    pub id: String,
    /// The node's name.
    pub name: String,
    /// The node's address: services registered without an `Address` are reached here.
    pub address: String,
    /// The datacenter's name.
    pub datacenter: String,
}

/// An entry of `GET /v1/health/service/{name}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    /// The node the instance runs on.
    pub node: NodeJson,
    /// The instance.
    pub service: ServiceJson,
    /// The node's checks, then the instance's.
    pub checks: Vec<CheckJson>,
}

/// A node as the health and catalog endpoints show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson {
    /// Node ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// `lan` and `wan` addresses (both the node's address here).
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata (none).
    pub meta: BTreeMap<String, String>,
    /// Index at which the node was created.
    pub create_index: u64,
    /// Index at which the node last changed.
    pub modify_index: u64,
}

/// A service instance as the health endpoint shows it (Consul's `NodeService`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceJson {
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags (never null).
    pub tags: Vec<String>,
    /// Address; empty means the node's.
    pub address: String,
    /// Metadata (never null).
    pub meta: BTreeMap<String, String>,
    /// Port.
    pub port: u16,
    /// DNS weights.
    pub weights: WeightsJson,
    /// As registered.
    pub enable_tag_override: bool,
    /// Index at which it was registered.
    pub create_index: u64,
    /// Index at which it, or one of its checks, last changed.
    pub modify_index: u64,
}

/// A service instance as `GET /v1/agent/services` shows it (Consul's `api.AgentService`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceJson {
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags (never null).
    pub tags: Vec<String>,
    /// Metadata (never null).
    pub meta: BTreeMap<String, String>,
    /// Port.
    pub port: u16,
    /// Address; empty means the node's.
    pub address: String,
    /// DNS weights.
    pub weights: WeightsJson,
    /// As registered.
    pub enable_tag_override: bool,
    /// Datacenter.
    pub datacenter: String,
}

/// DNS weights.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsJson {
    /// While passing.
    pub passing: i64,
    /// While warning.
    pub warning: i64,
}

/// A health check (Consul's `HealthCheck`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckJson {
    /// Node name.
    pub node: String,
    /// Check ID.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Check name.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: &'static str,
    /// Notes as registered.
    pub notes: String,
    /// The last run's output.
    pub output: String,
    /// The instance it checks (empty for a node check).
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// The instance's service name.
    pub service_name: String,
    /// The instance's tags (never null).
    pub service_tags: Vec<String>,
    /// `grpc`, `http`, `tcp`, `ttl` (empty for the node check).
    #[serde(rename = "Type")]
    pub check_type: &'static str,
    /// Interval as Go prints it; empty when unset (TTL checks).
    pub interval: String,
    /// Timeout as registered, as Go prints it; empty when unset.
    pub timeout: String,
    /// Always 0 (no service mesh).
    pub exposed_port: u16,
    /// The definition it runs.
    pub definition: DefinitionJson,
    /// Index at which it was registered.
    pub create_index: u64,
    /// Index at which its status last changed.
    pub modify_index: u64,
}

/// What a check runs (Consul's `HealthCheckDefinition`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DefinitionJson {
    /// HTTP URL.
    #[serde(rename = "HTTP")]
    pub http: String,
    /// HTTP headers.
    pub header: Option<BTreeMap<String, Vec<String>>>,
    /// HTTP method.
    pub method: String,
    /// HTTP body.
    pub body: String,
    /// Accept any certificate.
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: bool,
    /// TCP address.
    #[serde(rename = "TCP")]
    pub tcp: String,
    /// gRPC target.
    #[serde(rename = "GRPC")]
    pub grpc: String,
    /// gRPC over TLS.
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: bool,
    /// Interval.
    pub interval: String,
    /// Timeout.
    pub timeout: String,
    /// TTL.
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// Deregister after this long critical.
    pub deregister_critical_service_after: String,
}
