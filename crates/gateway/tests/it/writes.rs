//! Writes and tokens at the gateway: the gateway checks the token itself and the product service
//! checks it again.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

use crate::{TestResult, app_for, assert_error, call, product_service, token};

fn with_token(
    request: axum::http::request::Builder,
    token: Option<&str>,
) -> axum::http::request::Builder {
    match token {
        Some(token) => request.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => request,
    }
}

fn post_json(
    uri: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Request<Body>, axum::http::Error> {
    with_token(Request::post(uri), token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_writes_need_an_admin_token() -> TestResult {
    let upstream = product_service().await?;
    let app = app_for(upstream.running.addrs().main)?;
    let kettle = json!({"id": "kettle", "name": "Kettle", "price_cents": 4900, "currency": "EUR", "stock": 3});

    let (status, headers, json) = call(&app, post_json("/v1/products", None, &kettle)?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&json, 401, "UNAUTHENTICATED");
    assert_eq!(
        headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );

    let user = token("user-1", &["user"], 600);
    let (status, _, json) = call(&app, post_json("/v1/products", Some(&user), &kettle)?).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&json, 403, "PERMISSION_DENIED");

    let expired = token("admin-1", &["user", "admin"], -600);
    let (status, _, json) = call(&app, post_json("/v1/products", Some(&expired), &kettle)?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{json}"
    );

    let admin = token("admin-1", &["user", "admin"], 600);
    let (status, headers, created) =
        call(&app, post_json("/v1/products", Some(&admin), &kettle)?).await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "kettle");
    let etag = headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();

    let patch = |if_match: &str| {
        with_token(Request::patch("/v1/products/kettle"), Some(&admin))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::IF_MATCH, if_match)
            .body(Body::from(json!({"stock": 2}).to_string()))
    };
    let (status, _, changed) = call(&app, patch(&etag)?).await?;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        (changed["stock"].as_i64(), changed["price_cents"].as_i64()),
        (Some(2), Some(4900))
    );
    let (status, _, json) = call(&app, patch(&etag)?).await?;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a stale If-Match is refused: {json}"
    );
    assert_error(&json, 400, "FAILED_PRECONDITION");

    let delete =
        with_token(Request::delete("/v1/products/kettle"), Some(&admin)).body(Body::empty())?;
    let (status, _, _) = call(&app, delete).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    upstream.running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_tokens_that_are_wrong_get_4xx() -> TestResult {
    let upstream = product_service().await?;
    let app = app_for(upstream.running.addrs().main)?;
    let admin = token("admin-1", &["user", "admin"], 600);

    let malformed = with_token(Request::post("/v1/products"), Some(&admin))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\": "))?;
    let (status, _, json) = call(&app, malformed).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&json, 400, "INVALID_ARGUMENT");

    let unknown_field = post_json(
        "/v1/products",
        Some(&admin),
        &json!({"name": "x", "price_cents": 1, "currency": "EUR", "colour": "red"}),
    )?;
    let (status, _, json) = call(&app, unknown_field).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");

    let not_json = with_token(Request::post("/v1/products"), Some(&admin))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("hello"))?;
    let (status, _, json) = call(&app, not_json).await?;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&json, 415, "INVALID_ARGUMENT");

    for bad in ["Basic abc", "Bearer not.a.jwt", "Bearer"] {
        let request = Request::post("/v1/products")
            .header(header::AUTHORIZATION, bad)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))?;
        let (status, _, json) = call(&app, request).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}: {json}");
    }
    upstream.running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() -> TestResult {
    let upstream = product_service().await?;
    let app = app_for(upstream.running.addrs().main)?;
    let (status, _, document) =
        call(&app, Request::get("/openapi.json").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{document}"
    );
    let expected = [
        ("/v1/products", "get"),
        ("/v1/products", "post"),
        ("/v1/products/{id}", "get"),
        ("/v1/products/{id}", "patch"),
        ("/v1/products/{id}", "delete"),
        ("/v1/users", "post"),
        ("/v1/users", "get"),
        ("/v1/users/me", "get"),
        ("/v1/users/{id}", "get"),
        ("/v1/auth/login", "post"),
        ("/v1/auth/refresh", "post"),
        ("/v1/auth/logout", "post"),
        ("/.well-known/jwks.json", "get"),
    ];
    for (path, method) in expected {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(document["paths"]["/v1/products"]["post"]["security"].is_array());
    upstream.running.shutdown().await?;
    Ok(())
}
