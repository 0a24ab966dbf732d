//! The gateway's routes, one module per upstream service.

pub mod products;
