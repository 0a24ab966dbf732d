//! The gateway's integration tests: its router in front of a real product service (SQLite, demo
//! catalogue, behind its access policy) on a port-0 listener, driven without a socket on the HTTP
//! side. Tokens are signed with a key made here, which both the gateway and the service trust.

mod writes;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::deadlines::RouteDeadlines;
use gateway::{AppState, Upstreams, router};
use platform::auth::{AuthConfig, Claims, KeySource, SigningKey, Verifier};
use platform::discovery::Discovery;
use platform::serve::{GrpcServer, ServeConfig};
use platform::shutdown::Running;
use platform::telemetry::http_metrics::HttpMetrics;
use platform::telemetry::metrics::Metrics;
use serde_json::Value;
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const BODY_LIMIT: usize = 1024;

struct Upstream {
    running: Running,
    _dir: tempfile::TempDir,
}

async fn product_service() -> Result<Upstream, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let config = product::ProductConfig {
        database: platform::database::DatabaseConfig::new(
            platform::database::sqlite_url(&dir.path().join("product.db")),
            4,
        ),
        seed_demo: true,
    };
    let built = product::build(&config).await?;
    let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
    let serve = ServeConfig::new(any_port, any_port).with_drain_timeout(Duration::from_secs(5));
    let running = GrpcServer::new("product", serve)
        .add_authorized_service(built.service, &keys().verifier, product::policy())
        .spawn()
        .await?;
    Ok(Upstream { running, _dir: dir })
}

/// The key every test token is signed with, and the verifier that trusts it.
struct Keys {
    signing: SigningKey,
    verifier: Verifier,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let signing = SigningKey::generate_ed25519().unwrap_or_else(|error| panic!("{error}"));
        let mut public = std::collections::HashMap::new();
        if let (Some(kid), Some(key)) = (signing.kid(), signing.decoding_key()) {
            public.insert(kid.to_owned(), key);
        }
        let config = AuthConfig {
            keys: KeySource::Jwks,
            issuer: "flotilla-auth".into(),
            audience: "flotilla".into(),
            leeway: Duration::from_secs(30),
        };
        Keys {
            verifier: Verifier::with_public_keys(&config, public),
            signing,
        }
    })
}

/// An access token for `sub` with `roles`, valid for `lifetime_secs` (negative: expired).
fn token(sub: &str, roles: &[&str], lifetime_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: sub.into(),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
        iat: now,
        exp: now.saturating_add_signed(lifetime_secs),
        jti: format!("jti-{sub}-{lifetime_secs}"),
        iss: "flotilla-auth".into(),
        aud: "flotilla".into(),
    };
    keys()
        .signing
        .sign(&claims)
        .unwrap_or_else(|error| panic!("{error}"))
}

fn app_for(
    product_addr: SocketAddr,
) -> Result<axum::Router, Box<dyn std::error::Error + Send + Sync>> {
    app_with_deadline(product_addr, Duration::from_secs(3))
}

fn app_with_deadline(
    product_addr: SocketAddr,
    deadline: Duration,
) -> Result<axum::Router, Box<dyn std::error::Error + Send + Sync>> {
    // Only the product routes are exercised here; the others point at the same address.
    let upstreams = Upstreams::discover(&Discovery::fixed(&[
        ("product", product_addr),
        ("user", product_addr),
        ("auth", product_addr),
    ]));
    Ok(router(
        AppState::new(
            upstreams,
            keys().verifier.clone(),
            RouteDeadlines::uniform(deadline),
        ),
        BODY_LIMIT,
        &HttpMetrics::register(&Metrics::new()),
    ))
}

async fn call(
    app: &axum::Router,
    request: Request<Body>,
) -> Result<(StatusCode, axum::http::HeaderMap, Value), Box<dyn std::error::Error + Send + Sync>> {
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, headers, json))
}

async fn get(
    app: &axum::Router,
    uri: &str,
) -> Result<(StatusCode, axum::http::HeaderMap, Value), Box<dyn std::error::Error + Send + Sync>> {
    call(app, Request::get(uri).body(Body::empty())?).await
}

fn assert_error(json: &Value, code: u16, status: &str) {
    assert_eq!(json["error"]["code"], code, "{json}");
    assert_eq!(json["error"]["status"], status, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_gets_products_as_json() -> TestResult {
    let upstream = product_service().await?;
    let app = app_for(upstream.running.addrs().main)?;

    let (status, _, first) = get(&app, "/v1/products?page_size=5").await?;
    assert_eq!(status, StatusCode::OK, "{first}");
    let products = first["products"]
        .as_array()
        .ok_or("products is not an array")?;
    assert_eq!(products.len(), 5);
    let product = &products[0];
    for field in [
        "id",
        "name",
        "description",
        "currency",
        "created_at",
        "updated_at",
        "etag",
    ] {
        assert!(product[field].is_string(), "{field} in {product}");
    }
    assert!(
        product["price_cents"].is_i64() && product["stock"].is_i64(),
        "{product}"
    );
    assert!(
        product["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{product}"
    );

    let token = first["next_page_token"]
        .as_str()
        .ok_or("no next_page_token")?;
    assert!(!token.is_empty());
    let (status, _, second) = get(
        &app,
        &format!("/v1/products?page_size=5&page_token={token}"),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(
        second["products"][0]["id"], product["id"],
        "the second page starts after the first"
    );

    let id = product["id"].as_str().ok_or("no id")?;
    let (status, headers, one) = get(&app, &format!("/v1/products/{id}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&one, product);
    assert_eq!(
        headers.get(header::ETAG).and_then(|v| v.to_str().ok()),
        product["etag"].as_str()
    );

    let (status, _, filtered) = get(&app, "/v1/products?currency=GBP&page_size=100").await?;
    assert_eq!(status, StatusCode::OK);
    let currencies: Vec<&Value> = filtered["products"]
        .as_array()
        .map(|p| p.iter().map(|p| &p["currency"]).collect())
        .unwrap_or_default();
    assert!(
        !currencies.is_empty() && currencies.iter().all(|c| *c == "GBP"),
        "{filtered}"
    );
    assert_eq!(filtered["next_page_token"], "");
    upstream.running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_4xx_with_a_message() -> TestResult {
    let upstream = product_service().await?;
    let app = app_for(upstream.running.addrs().main)?;

    let (status, _, json) = get(&app, "/v1/products/no-such-product").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&json, 404, "NOT_FOUND");

    let (status, _, json) = get(&app, "/v1/products/Not%20An%20Id").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&json, 400, "INVALID_ARGUMENT");

    let (status, _, json) = get(&app, "/v1/products/%FF").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&json, 400, "INVALID_ARGUMENT");

    let (status, _, json) = get(&app, "/v1/products?page_size=lots").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&json, 400, "INVALID_ARGUMENT");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("page_size")),
        "{json}"
    );

    let (status, _, json) = get(&app, "/v1/products?colour=red").await?;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown parameters are refused, not ignored: {json}"
    );

    let (status, _, json) = get(&app, "/v1/products?page_token=forged").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("page_token")),
        "{json}"
    );

    let (status, _, json) =
        get(&app, "/v1/products?min_price_cents=500&max_price_cents=100").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");

    let (status, _, json) = get(&app, "/v1/nothing-here").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&json, 404, "NOT_FOUND");

    let oversized = Request::post("/v1/products")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, BODY_LIMIT + 1)
        .body(Body::from(vec![b'x'; BODY_LIMIT + 1]))?;
    let (status, _, json) = call(&app, oversized).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&json, 413, "INVALID_ARGUMENT");

    let (status, _, json) =
        call(&app, Request::delete("/v1/products").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&json, 405, "UNIMPLEMENTED");
    upstream.running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_is_503_with_retry_after_and_no_address() -> TestResult {
    // A port that was free a moment ago: nothing listens there.
    let vacant = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let app = app_for(vacant)?;
    let (status, headers, json) = get(&app, "/v1/products").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&json, 503, "UNAVAILABLE");
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(
        !json.to_string().contains(&vacant.port().to_string()),
        "{json}"
    );

    let (status, _, _) = get(&app, "/healthz").await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&app, "/readyz").await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_misses_the_deadline_is_504() -> TestResult {
    // Accepts connections and never answers: every call runs into the gateway's deadline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = silent.local_addr()?;
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let app = app_with_deadline(addr, Duration::from_millis(200))?;
    let (status, _, json) = get(&app, "/v1/products").await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{json}");
    assert_error(&json, 504, "DEADLINE_EXCEEDED");
    accepting.abort();
    Ok(())
}
