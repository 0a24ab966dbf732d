//! The product service: a catalogue of products with prices in minor units, currencies and stock,
//! over `flotilla.product.v1.ProductService`.
//!
//! [`build`] turns a [`ProductConfig`] into the tonic service and its database, so the binary serves
//! it through `platform::serve` and tests can drive it without a socket.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod seed;
pub mod store;

pub use config::ProductConfig;
pub use grpc::ProductApi;
use platform::auth::{Access, Policy};
use platform::database::{Database, DatabaseError};
use platform::proto::product::v1::product_service_server::ProductServiceServer;
pub use store::ProductStore;

/// Who may call what: reads are public, writes are for administrators (PERMISSION_DENIED for
/// anyone else). The binary wraps the service in `platform::auth::AuthLayer` with this policy.
pub fn policy() -> Policy {
    Policy::new()
        .method("GetProduct", Access::Public)
        .method("ListProducts", Access::Public)
        .method("CreateProduct", Access::ADMIN)
        .method("UpdateProduct", Access::ADMIN)
        .method("DeleteProduct", Access::ADMIN)
}

/// The product service, ready to serve.
#[derive(Debug)]
pub struct BuiltProduct {
    /// The tonic service.
    pub service: ProductServiceServer<ProductApi>,
    /// Its database, for readiness checks and closing at shutdown.
    pub database: Database,
}

/// Why the product service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// Seeding the demo catalogue failed.
    #[error("seeding the demo catalogue failed: {0}")]
    Seed(String),
}

/// Opens the store (migrating it), seeds the demo catalogue when asked, and builds the service.
///
/// # Errors
/// [`BuildError`] when the database cannot be reached, migrated or seeded.
pub async fn build(config: &ProductConfig) -> Result<BuiltProduct, BuildError> {
    let store = ProductStore::open(&config.database).await?;
    if config.seed_demo {
        let products = seed::demo_catalogue(platform::time::now_micros())
            .map_err(|error| BuildError::Seed(error.to_string()))?;
        let seeded = store
            .seed_once(seed::DEMO_SEED, &products)
            .await
            .map_err(|error| BuildError::Seed(error.to_string()))?;
        if seeded {
            tracing::info!(products = products.len(), "seeded the demo catalogue");
        }
    }
    let database = store.database().clone();
    Ok(BuiltProduct {
        service: ProductServiceServer::new(ProductApi::new(store)),
        database,
    })
}

#[cfg(test)]
mod tests {
    /// Every method of `ProductService` has a rule, and every rule a method.
    #[test]
    fn the_policy_covers_every_method() {
        let mismatches = super::policy().mismatches("flotilla.product.v1.ProductService");
        assert!(mismatches.is_empty(), "{mismatches:?}");
    }
}
