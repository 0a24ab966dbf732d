//! The JSON forms of the services' messages: proto field names in snake_case, timestamps as
//! RFC 3339 strings, absent optional fields left out.

use platform::proto::product::v1 as product_pb;
use platform::time::rfc3339;
use serde::Serialize;

/// A product as the HTTP API shows it.
#[derive(Debug, Serialize)]
pub struct ProductJson {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Price in minor units.
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Units available.
    pub stock: i64,
    /// Creation instant, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Last change, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Opaque revision tag; also sent as the `ETag` header.
    pub etag: String,
}

impl From<product_pb::Product> for ProductJson {
    fn from(product: product_pb::Product) -> Self {
        Self {
            id: product.id,
            name: product.name,
            description: product.description,
            price_cents: product.price_cents,
            currency: product.currency,
            stock: product.stock,
            created_at: product.created_at.as_ref().and_then(rfc3339),
            updated_at: product.updated_at.as_ref().and_then(rfc3339),
            etag: product.etag,
        }
    }
}

/// One page of products.
#[derive(Debug, Serialize)]
pub struct ProductPageJson {
    /// The products on this page.
    pub products: Vec<ProductJson>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
}

impl From<product_pb::ListProductsResponse> for ProductPageJson {
    fn from(page: product_pb::ListProductsResponse) -> Self {
        Self {
            products: page.products.into_iter().map(ProductJson::from).collect(),
            next_page_token: page.next_page_token,
        }
    }
}
