//! The `flotilla.product.v1.ProductService` implementation: proto in, domain calls, proto out.

use platform::pagination::{self, PageError};
use platform::proto::product::v1 as pb;
use platform::time::{now_micros, timestamp_from_micros};
use tonic::{Request, Response, Status};

use crate::domain::{Cursor, Product, ProductFilter, ProductId, ProductPatch, RawProductFields};
use crate::error::ProductError;
use crate::store::{ProductStore, WriteOutcome};

/// The product service, over its store.
#[derive(Debug, Clone)]
pub struct ProductApi {
    store: ProductStore,
}

impl ProductApi {
    /// The service over `store`.
    pub fn new(store: ProductStore) -> Self {
        Self { store }
    }

    async fn existing(&self, id: &ProductId) -> Result<Product, ProductError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| ProductError::NotFound(id.clone()))
    }

    async fn list(
        &self,
        request: pb::ListProductsRequest,
    ) -> Result<pb::ListProductsResponse, ProductError> {
        let page_size = pagination::page_size(request.page_size)?;
        let filter = ProductFilter::new(
            request.currency.as_deref(),
            request.min_price_cents,
            request.max_price_cents,
            request.in_stock_only,
        )?;
        let fingerprint = filter.fingerprint();
        let after: Option<Cursor> = pagination::decode_token(&request.page_token, &fingerprint)?;
        // Tokens are not signed: a forged cursor must fail as a bad token, not reach the database.
        if let Some(cursor) = &after {
            ProductId::parse("page_token", &cursor.id).map_err(|_| PageError::MalformedToken)?;
        }
        // One extra row tells whether another page exists without a COUNT.
        let mut products = self
            .store
            .list(&filter, after.as_ref(), page_size + 1)
            .await?;
        let more = products.len() > page_size as usize;
        products.truncate(page_size as usize);
        let next_page_token = match (more, products.last()) {
            (true, Some(last)) => pagination::encode_token(&Cursor::after(last), &fingerprint),
            _ => String::new(),
        };
        Ok(pb::ListProductsResponse {
            products: products.iter().map(to_proto).collect(),
            next_page_token,
        })
    }

    async fn create(&self, request: pb::CreateProductRequest) -> Result<pb::Product, ProductError> {
        let fields = fields_from_proto(request.product.unwrap_or_default()).validate()?;
        let id = if request.product_id.is_empty() {
            ProductId::generate()
        } else {
            ProductId::parse("product_id", &request.product_id)?
        };
        let product = Product::new(id, fields, now_micros());
        self.store.insert(&product).await?;
        tracing::info!(product_id = %product.id, "product created");
        Ok(to_proto(&product))
    }

    async fn update(&self, request: pb::UpdateProductRequest) -> Result<pb::Product, ProductError> {
        let source = request.product.unwrap_or_default();
        let id = ProductId::parse("product.id", &source.id)?;
        let paths = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        let patch = ProductPatch::from_mask(&paths, fields_from_proto(source))?;
        let current = self.existing(&id).await?;
        if !current.etag_matches(&request.etag) {
            return Err(ProductError::EtagMismatch {
                id,
                given: request.etag,
            });
        }
        let updated = current.patched(&patch, now_micros())?;
        match self.store.update(&updated, current.revision).await? {
            WriteOutcome::Written => Ok(to_proto(&updated)),
            WriteOutcome::Missing => Err(ProductError::NotFound(id)),
            // A client that named an etag gets the same answer as for a stale one; a client that
            // did not lost a race it could not see, and may simply retry.
            WriteOutcome::RevisionChanged if !request.etag.is_empty() => {
                Err(ProductError::EtagMismatch {
                    id,
                    given: request.etag,
                })
            }
            WriteOutcome::RevisionChanged => Err(ProductError::Conflict(id)),
        }
    }

    async fn delete(&self, request: pb::DeleteProductRequest) -> Result<(), ProductError> {
        let id = ProductId::parse("id", &request.id)?;
        let expected_revision = if request.etag.is_empty() {
            None
        } else {
            let current = self.existing(&id).await?;
            if !current.etag_matches(&request.etag) {
                return Err(ProductError::EtagMismatch {
                    id,
                    given: request.etag,
                });
            }
            Some(current.revision)
        };
        match self.store.delete(&id, expected_revision).await? {
            WriteOutcome::Written => {
                tracing::info!(product_id = %id, "product deleted");
                Ok(())
            }
            WriteOutcome::Missing => Err(ProductError::NotFound(id)),
            WriteOutcome::RevisionChanged => Err(ProductError::EtagMismatch {
                id,
                given: request.etag,
            }),
        }
    }
}

#[tonic::async_trait]
impl pb::product_service_server::ProductService for ProductApi {
    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let id = ProductId::parse("id", &request.into_inner().id).map_err(ProductError::from)?;
        let product = self.existing(&id).await?;
        Ok(Response::new(to_proto(&product)))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        Ok(Response::new(self.update(request.into_inner()).await?))
    }

    async fn delete_product(
        &self,
        request: Request<pb::DeleteProductRequest>,
    ) -> Result<Response<pb::DeleteProductResponse>, Status> {
        self.delete(request.into_inner()).await?;
        Ok(Response::new(pb::DeleteProductResponse {}))
    }
}

fn fields_from_proto(product: pb::Product) -> RawProductFields {
    RawProductFields {
        name: product.name,
        description: product.description,
        price_cents: product.price_cents,
        currency: product.currency,
        stock: product.stock,
    }
}

/// The wire form of a product.
pub fn to_proto(product: &Product) -> pb::Product {
    pb::Product {
        id: product.id.as_str().to_owned(),
        name: product.fields.name.clone(),
        description: product.fields.description.clone(),
        price_cents: product.fields.price_cents,
        currency: product.fields.currency.as_str().to_owned(),
        stock: product.fields.stock,
        created_at: Some(timestamp_from_micros(product.created_at_us)),
        updated_at: Some(timestamp_from_micros(product.updated_at_us)),
        etag: product.etag(),
    }
}
