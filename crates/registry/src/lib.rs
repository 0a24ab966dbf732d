//! The embedded single-node registry that speaks Consul's HTTP API subset. Its implementation
//! arrives with the discovery issue; the crate exists now so the workspace has its final shape.
