//! The JSON forms of the API: proto field names in snake_case, timestamps as RFC 3339 strings,
//! absent optional fields left out. Each type is also an OpenAPI schema.
//!
//! Request bodies refuse unknown fields, so a misspelt field is a 400 instead of being ignored.
//! Types that carry a password or a token do not derive `Debug`, so they cannot reach a log line.

use platform::proto::auth::v1 as auth_pb;
use platform::proto::product::v1 as product_pb;
use platform::proto::user::v1 as user_pb;
use platform::time::rfc3339;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A product.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductJson {
    /// Id: 1-64 characters of `[a-z0-9-]`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Price in the currency's minor units (cents).
    pub price_cents: i64,
    /// ISO 4217 code, such as `EUR`.
    pub currency: String,
    /// Units available.
    pub stock: i64,
    /// Creation instant, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Last change, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Opaque revision tag; also the `ETag` header. Send it as `If-Match` to update safely.
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
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPageJson {
    /// The products on this page, oldest first.
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

/// A new product (administrators only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProductJson {
    /// Optional id of your choosing (1-64 characters of `[a-z0-9-]`); assigned when absent.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9-]{1,64}$")]
    pub id: Option<String>,
    /// Display name: 1-200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Free text, at most 5000 characters.
    #[serde(default)]
    #[schema(max_length = 5000)]
    pub description: String,
    /// Price in minor units, at least 0.
    #[schema(minimum = 0)]
    pub price_cents: i64,
    /// ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// Units available, at least 0.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub stock: i64,
}

/// The fields of a product to change; fields left out stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductChangesJson {
    /// New display name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// New description.
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    /// New price in minor units.
    #[schema(minimum = 0)]
    pub price_cents: Option<i64>,
    /// New ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// New stock level.
    #[schema(minimum = 0)]
    pub stock: Option<i64>,
}

/// An account. There is no password field, hashed or not.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserJson {
    /// Id.
    pub id: String,
    /// Normalised email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Roles, such as `user` and `admin`.
    pub roles: Vec<String>,
    /// Creation instant, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Last change, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl From<user_pb::User> for UserJson {
    fn from(user: user_pb::User) -> Self {
        Self {
            id: user.id,
            email: user.email,
            name: user.name,
            roles: user.roles,
            created_at: user.created_at.as_ref().and_then(rfc3339),
            updated_at: user.updated_at.as_ref().and_then(rfc3339),
        }
    }
}

/// One page of accounts.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPageJson {
    /// The accounts on this page.
    pub users: Vec<UserJson>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
}

impl From<user_pb::ListUsersResponse> for UserPageJson {
    fn from(page: user_pb::ListUsersResponse) -> Self {
        Self {
            users: page.users.into_iter().map(UserJson::from).collect(),
            next_page_token: page.next_page_token,
        }
    }
}

/// A sign-up.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUpJson {
    /// Email address.
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    /// Password: 8-128 characters, no composition rules.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// Display name: 1-100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// Credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginJson {
    /// Email address.
    #[schema(format = "email", max_length = 320)]
    pub email: String,
    /// Password.
    #[schema(min_length = 1, max_length = 1024)]
    pub password: String,
}

/// A refresh token, to renew a token pair or to log out.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenJson {
    /// The refresh token of the latest token pair.
    pub refresh_token: String,
}

/// An access token and the refresh token that renews it.
#[derive(Serialize, ToSchema)]
pub struct TokenPairJson {
    /// JWT to send as `Authorization: Bearer <token>`.
    pub access_token: String,
    /// Opaque token for `/v1/auth/refresh` and `/v1/auth/logout`.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub access_expires_in: i64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: i64,
}

impl From<auth_pb::TokenPair> for TokenPairJson {
    fn from(pair: auth_pb::TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: pair.token_type,
            access_expires_in: pair.access_expires_in,
            refresh_expires_in: pair.refresh_expires_in,
        }
    }
}

/// A JSON Web Key Set (RFC 7517) with the keys that verify access tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct JwksJson {
    /// The keys.
    pub keys: Vec<JwkJson>,
}

/// One Ed25519 public key (RFC 8037).
#[derive(Debug, Serialize, ToSchema)]
pub struct JwkJson {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// Key id, matched against a JWT's `kid`.
    pub kid: String,
    /// `EdDSA`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

impl From<auth_pb::Jwks> for JwksJson {
    fn from(jwks: auth_pb::Jwks) -> Self {
        Self {
            keys: jwks
                .keys
                .into_iter()
                .map(|key| JwkJson {
                    kty: key.kty,
                    crv: key.crv,
                    x: key.x,
                    kid: key.kid,
                    alg: key.alg,
                    use_: key.r#use,
                })
                .collect(),
        }
    }
}

/// Every error's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorJson {
    /// The error.
    pub error: ErrorDetailJson,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetailJson {
    /// The HTTP status code.
    pub code: u16,
    /// The gRPC status name, such as `NOT_FOUND`.
    pub status: String,
    /// What to do about it.
    pub message: String,
}
