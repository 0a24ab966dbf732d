//! What every Flotilla component shares, so a service crate names `platform` and not twenty
//! infrastructure crates.
//!
//! - [`config`]: typed settings from the environment and an optional file, with errors that name
//!   the variable, the value and the expected form;
//! - [`serve`]: runs one gRPC service with health, reflection, an admin listener and a graceful drain;
//! - [`shutdown`]: signals, bound addresses and the handle of a running component;
//! - [`admin`]: `/health` and `/ready`;
//! - [`auth`]: JWT verification, access policies and the layer that enforces them;
//! - [`database`]: a service's own SQLite or PostgreSQL database, migrated at start;
//! - [`discovery`]: registering with, and watching, a service registry (Consul's API, or fixed);
//! - [`pagination`]: AIP-158 page sizes and opaque page tokens;
//! - [`resilience`]: circuit breakers, retries, deadlines, load shedding, fault injection;
//! - [`time`]: instants in the database, on the wire and in JSON;
//! - [`validation`]: the shape of a broken rule in a request;
//! - [`telemetry`]: logging (JSON or text).
//!
//! Nothing service-specific lives here.

#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod database;
pub mod discovery;
pub mod pagination;
pub mod resilience;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod validation;

pub use flotilla_proto as proto;
pub use prost_types;
pub use sqlx;
pub use tonic;
