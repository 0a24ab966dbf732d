//! `flotilla serve` runs one component as a container would: the product service on PostgreSQL
//! (`DATABASE_URL`), and the gateway told where it is by the `static` discovery backend
//! (`FLOTILLA_PRODUCT_ENDPOINT`), both in the shared-secret mode (`JWT_SECRET`, HS256), with a token
//! this test signs.

use platform::proto::product::v1 as pb;
use platform::proto::product::v1::product_service_client::ProductServiceClient;
use test_support::postgres::TestDatabase;
use test_support::process::Flotilla;

use crate::{TestResult, binary, grpc_channel, http_client, with_bearer};

const ANY_PORT: &str = "127.0.0.1:0";
const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

/// An HS256 admin token signed with [`SECRET`].
fn admin_token() -> Result<String, platform::auth::KeyError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let claims = platform::auth::Claims {
        sub: "admin-1".into(),
        roles: vec!["user".into(), "admin".into()],
        iat: now,
        exp: now + 600,
        jti: "serve-test".into(),
        iss: "flotilla-auth".into(),
        aud: "flotilla".into(),
    };
    platform::auth::SigningKey::shared_secret(SECRET.as_bytes()).sign(&claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_product_on_postgres_behind_serve_gateway() -> TestResult {
    let Some(database) = TestDatabase::create().await else {
        return Ok(());
    };
    let product_dir = tempfile::tempdir()?;
    let product = Flotilla::serve(
        binary(),
        "product",
        product_dir.path(),
        &[
            ("DATABASE_URL", database.url()),
            ("FLOTILLA_DISCOVERY", "static"),
            ("JWT_SECRET", SECRET),
            ("FLOTILLA_PRODUCT_GRPC_ADDR", ANY_PORT),
            ("FLOTILLA_PRODUCT_ADMIN_ADDR", ANY_PORT),
        ],
    )
    .await;
    let product_addr = product.addr("product", "grpc");
    assert!(
        !product_dir.path().join("product.db").exists(),
        "DATABASE_URL is used, not SQLite"
    );

    let gateway_dir = tempfile::tempdir()?;
    let endpoint = product_addr.to_string();
    let gateway = Flotilla::serve(
        binary(),
        "gateway",
        gateway_dir.path(),
        &[
            ("FLOTILLA_DISCOVERY", "static"),
            ("FLOTILLA_PRODUCT_ENDPOINT", endpoint.as_str()),
            ("JWT_SECRET", SECRET),
            ("FLOTILLA_GATEWAY_HTTP_ADDR", ANY_PORT),
            ("FLOTILLA_GATEWAY_ADMIN_ADDR", ANY_PORT),
        ],
    )
    .await;
    let gateway_addr = gateway.addr("gateway", "http");

    let mut client = ProductServiceClient::new(grpc_channel(product_addr).await?);
    let empty = client
        .list_products(pb::ListProductsRequest::default())
        .await?
        .into_inner();
    assert!(
        empty.products.is_empty(),
        "serve does not seed the demo catalogue"
    );
    let unauthenticated = client
        .create_product(pb::CreateProductRequest::default())
        .await
        .err()
        .map(|status| status.code());
    assert_eq!(
        unauthenticated,
        Some(tonic::Code::Unauthenticated),
        "writes need a token"
    );
    let create = pb::CreateProductRequest {
        product_id: "teapot".into(),
        product: Some(pb::Product {
            name: "Teapot".into(),
            price_cents: 3500,
            currency: "GBP".into(),
            stock: 4,
            ..Default::default()
        }),
    };
    client
        .create_product(with_bearer(create, &admin_token()?))
        .await?;

    let http = http_client();
    let teapot: serde_json::Value = http
        .get(format!("http://{gateway_addr}/v1/products/teapot"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(
        (teapot["name"].as_str(), teapot["price_cents"].as_i64()),
        (Some("Teapot"), Some(3500))
    );

    // Front to back, as an orchestrator should stop them.
    gateway.stop().await;
    product.stop().await;
    Ok(())
}
