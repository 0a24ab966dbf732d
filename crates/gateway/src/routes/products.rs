//! `/v1/products`: the catalogue. Reads are public; writes are for administrators and carry the
//! caller's token on to the product service, which checks it again.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use platform::proto::product::v1 as pb;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::json::{ErrorJson, NewProductJson, ProductChangesJson, ProductJson, ProductPageJson};
use crate::state::AppState;

const SERVICE: &str = "product";

/// Query parameters of `GET /v1/products`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size: 0 or absent for the default (50), at most 500.
    #[serde(default)]
    #[param(minimum = 0)]
    pub page_size: i32,
    /// `next_page_token` of the previous page, unchanged.
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

fn upstream(status: tonic::Status) -> ApiError {
    ApiError::from_status(SERVICE, &status)
}

/// A product as JSON with its etag also in the `ETag` header.
fn with_etag(product: pb::Product, status: StatusCode) -> Response {
    let etag = HeaderValue::from_str(&product.etag).ok();
    let mut response = (status, Json(ProductJson::from(product))).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// The `If-Match` header, if any: the etag a write is conditional on.
fn if_match(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(String::new()),
        Some(value) => value
            .to_str()
            .map(str::to_owned)
            .map_err(|_| ApiError::invalid("If-Match must be an etag such as \"3\"")),
    }
}

/// One page of products.
#[utoipa::path(get, path = "/v1/products", tag = "products", params(ListParams),
    responses(
        (status = 200, description = "A page of products", body = ProductPageJson),
        (status = 400, description = "Bad query parameter or page token", body = ErrorJson),
        (status = 503, description = "The product service is unavailable", body = ErrorJson),
        (status = 504, description = "The product service did not answer in time", body = ErrorJson),
    ))]
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
        .map_err(upstream)?;
    Ok(Json(page.into_inner().into()))
}

/// One product, with its etag also in the `ETag` header.
#[utoipa::path(get, path = "/v1/products/{id}", tag = "products",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = ProductJson),
        (status = 400, description = "Malformed id", body = ErrorJson),
        (status = 404, description = "No such product", body = ErrorJson),
        (status = 503, description = "The product service is unavailable", body = ErrorJson),
        (status = 504, description = "The product service did not answer in time", body = ErrorJson),
    ))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let request = state.with_deadline(pb::GetProductRequest { id });
    let product = state
        .products()
        .get_product(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(with_etag(product, StatusCode::OK))
}

/// Creates a product (administrators only).
#[utoipa::path(post, path = "/v1/products", tag = "products", request_body = NewProductJson,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = ProductJson),
        (status = 400, description = "A field breaks a rule", body = ErrorJson),
        (status = 401, description = "Missing or invalid access token", body = ErrorJson),
        (status = 403, description = "Not an administrator", body = ErrorJson),
        (status = 409, description = "The id is taken", body = ErrorJson),
        (status = 413, description = "Body too large", body = ErrorJson),
        (status = 415, description = "Body is not JSON", body = ErrorJson),
        (status = 503, description = "A service is unavailable", body = ErrorJson),
        (status = 504, description = "A service did not answer in time", body = ErrorJson),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiJson(body): ApiJson<NewProductJson>,
) -> Result<Response, ApiError> {
    let request = state.as_caller(
        &caller,
        pb::CreateProductRequest {
            product_id: body.id.unwrap_or_default(),
            product: Some(pb::Product {
                name: body.name,
                description: body.description,
                price_cents: body.price_cents,
                currency: body.currency,
                stock: body.stock,
                ..Default::default()
            }),
        },
    );
    let product = state
        .products()
        .create_product(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(with_etag(product, StatusCode::CREATED))
}

/// Changes the fields present in the body (administrators only); `If-Match` makes it conditional.
#[utoipa::path(patch, path = "/v1/products/{id}", tag = "products", request_body = ProductChangesJson,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Product id"),
           ("If-Match" = Option<String>, Header, description = "Only if the product's etag is this")),
    responses(
        (status = 200, description = "The changed product", body = ProductJson),
        (status = 400, description = "A field breaks a rule, no field given, or a stale If-Match", body = ErrorJson),
        (status = 401, description = "Missing or invalid access token", body = ErrorJson),
        (status = 403, description = "Not an administrator", body = ErrorJson),
        (status = 404, description = "No such product", body = ErrorJson),
        (status = 409, description = "Changed concurrently; retry", body = ErrorJson),
        (status = 413, description = "Body too large", body = ErrorJson),
        (status = 415, description = "Body is not JSON", body = ErrorJson),
        (status = 503, description = "A service is unavailable", body = ErrorJson),
        (status = 504, description = "A service did not answer in time", body = ErrorJson),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(changes): ApiJson<ProductChangesJson>,
) -> Result<Response, ApiError> {
    let etag = if_match(&headers)?;
    let mut paths = Vec::new();
    let mut product = pb::Product {
        id,
        ..Default::default()
    };
    if let Some(name) = changes.name {
        paths.push("name".to_owned());
        product.name = name;
    }
    if let Some(description) = changes.description {
        paths.push("description".to_owned());
        product.description = description;
    }
    if let Some(price_cents) = changes.price_cents {
        paths.push("price_cents".to_owned());
        product.price_cents = price_cents;
    }
    if let Some(currency) = changes.currency {
        paths.push("currency".to_owned());
        product.currency = currency;
    }
    if let Some(stock) = changes.stock {
        paths.push("stock".to_owned());
        product.stock = stock;
    }
    let request = state.as_caller(
        &caller,
        pb::UpdateProductRequest {
            product: Some(product),
            update_mask: Some(platform::prost_types::FieldMask { paths }),
            etag,
        },
    );
    let product = state
        .products()
        .update_product(request)
        .await
        .map_err(upstream)?
        .into_inner();
    Ok(with_etag(product, StatusCode::OK))
}

/// Deletes a product (administrators only); `If-Match` makes it conditional.
#[utoipa::path(delete, path = "/v1/products/{id}", tag = "products",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Product id"),
           ("If-Match" = Option<String>, Header, description = "Only if the product's etag is this")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id or a stale If-Match", body = ErrorJson),
        (status = 401, description = "Missing or invalid access token", body = ErrorJson),
        (status = 403, description = "Not an administrator", body = ErrorJson),
        (status = 404, description = "No such product", body = ErrorJson),
        (status = 503, description = "A service is unavailable", body = ErrorJson),
        (status = 504, description = "A service did not answer in time", body = ErrorJson),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Admin(caller): Admin,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let etag = if_match(&headers)?;
    let request = state.as_caller(&caller, pb::DeleteProductRequest { id, etag });
    state
        .products()
        .delete_product(request)
        .await
        .map_err(upstream)?;
    Ok(StatusCode::NO_CONTENT)
}
