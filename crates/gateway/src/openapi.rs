//! The OpenAPI 3 document of the HTTP API, generated from the handlers' annotations and the JSON
//! types (utoipa), served at `GET /openapi.json`. CI fuzzes the running gateway against it.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::json;
use crate::routes;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla API", description = "Products, accounts and tokens over HTTP/JSON. Errors answer {\"error\": {\"code\", \"status\", \"message\"}}."),
    paths(
        routes::products::list,
        routes::products::get,
        routes::products::create,
        routes::products::update,
        routes::products::delete,
        routes::users::sign_up,
        routes::users::me,
        routes::users::get,
        routes::users::list,
        routes::auth::login,
        routes::auth::refresh,
        routes::auth::logout,
        routes::auth::jwks,
    ),
    components(schemas(
        json::ProductJson, json::ProductPageJson, json::NewProductJson, json::ProductChangesJson,
        json::UserJson, json::UserPageJson, json::SignUpJson, json::LoginJson, json::RefreshTokenJson,
        json::TokenPairJson, json::JwksJson, json::JwkJson, json::ErrorJson, json::ErrorDetailJson,
    )),
    modifiers(&BearerScheme),
    tags(
        (name = "products", description = "The catalogue: reads are public, writes need an admin"),
        (name = "users", description = "Accounts"),
        (name = "auth", description = "Tokens"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the protected routes name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
