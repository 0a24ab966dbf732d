//! `/v1/products`: the catalogue, read through the product service.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use platform::proto::product::v1 as pb;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::json::{ProductJson, ProductPageJson};

const SERVICE: &str = "product";

/// Query parameters of `GET /v1/products`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size: 0 or absent for the default, at most 500.
    #[serde(default)]
    pub page_size: i32,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    pub page_token: String,
    /// Only this ISO 4217 currency.
    pub currency: Option<String>,
    /// Only prices at least this (minor units).
    pub min_price_cents: Option<i64>,
    /// Only prices at most this (minor units).
    pub max_price_cents: Option<i64>,
    /// Only products in stock.
    #[serde(default)]
    pub in_stock_only: bool,
}

/// `GET /v1/products`: one page of products.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ProductPageJson>, ApiError> {
    let request = state.with_deadline(pb::ListProductsRequest {
        page_size: params.page_size,
        page_token: params.page_token,
        currency: params.currency,
        min_price_cents: params.min_price_cents,
        max_price_cents: params.max_price_cents,
        in_stock_only: params.in_stock_only,
    });
    let page = state
        .products()
        .list_products(request)
        .await
        .map_err(|status| ApiError::from_status(SERVICE, &status))?;
    Ok(Json(page.into_inner().into()))
}

/// `GET /v1/products/{id}`: one product, with its etag also in the `ETag` header.
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let request = state.with_deadline(pb::GetProductRequest { id });
    let product = state
        .products()
        .get_product(request)
        .await
        .map_err(|status| ApiError::from_status(SERVICE, &status))?
        .into_inner();
    let etag = HeaderValue::from_str(&product.etag).ok();
    let mut response = Json(ProductJson::from(product)).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}
