//! The gateway's routes, one module per upstream service.

pub mod auth;
pub mod products;
pub mod users;
