use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tower::{Layer, Service, ServiceExt};

use super::*;

fn config() -> AuthConfig {
    AuthConfig {
        keys: KeySource::Jwks,
        issuer: "flotilla-auth".into(),
        audience: "flotilla".into(),
        leeway: Duration::from_secs(30),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn claims(roles: &[&str]) -> Claims {
    Claims {
        sub: "user-1".into(),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
        iat: now(),
        exp: now() + 900,
        jti: "token-1".into(),
        iss: "flotilla-auth".into(),
        aud: "flotilla".into(),
    }
}

fn ed25519() -> Result<(SigningKey, Verifier), KeyError> {
    let key = SigningKey::generate_ed25519()?;
    let mut keys = HashMap::new();
    if let (Some(kid), Some(decoding)) = (key.kid(), key.decoding_key()) {
        keys.insert(kid.to_owned(), decoding);
    }
    let verifier = Verifier::with_public_keys(&config(), keys);
    Ok((key, verifier))
}

fn reason(result: Result<Claims, AuthError>) -> String {
    result
        .err()
        .map(|error| error.to_string())
        .unwrap_or_else(|| "accepted".into())
}

#[tokio::test]
async fn an_ed25519_token_round_trips() -> Result<(), Box<dyn std::error::Error>> {
    let (key, verifier) = ed25519()?;
    let token = key.sign(&claims(&["user"]))?;
    assert_eq!(verifier.verify(&token).await?, claims(&["user"]));
    Ok(())
}

#[tokio::test]
async fn expiry_allows_the_leeway_and_no_more() -> Result<(), Box<dyn std::error::Error>> {
    let (key, verifier) = ed25519()?;
    let within = Claims {
        exp: now() - 10,
        ..claims(&[])
    };
    assert!(
        verifier.verify(&key.sign(&within)?).await.is_ok(),
        "10 s late is inside 30 s of leeway"
    );
    let beyond = Claims {
        exp: now() - 120,
        ..claims(&[])
    };
    assert_eq!(
        reason(verifier.verify(&key.sign(&beyond)?).await),
        "invalid access token: token expired"
    );
    Ok(())
}

#[tokio::test]
async fn issuer_audience_and_signature_are_checked() -> Result<(), Box<dyn std::error::Error>> {
    let (key, verifier) = ed25519()?;
    let wrong_aud = Claims {
        aud: "someone-else".into(),
        ..claims(&[])
    };
    assert!(reason(verifier.verify(&key.sign(&wrong_aud)?).await).contains("wrong audience"));
    let wrong_iss = Claims {
        iss: "evil".into(),
        ..claims(&[])
    };
    assert!(reason(verifier.verify(&key.sign(&wrong_iss)?).await).contains("wrong issuer"));

    // Same kid, other key: a forged signature.
    let token = key.sign(&claims(&["admin"]))?;
    let other = SigningKey::generate_ed25519()?;
    let forged_body = other.sign(&claims(&["admin"]))?;
    let header = token.split('.').next().unwrap_or_default();
    let rest: Vec<&str> = forged_body.split('.').skip(1).collect();
    let forged = format!("{header}.{}", rest.join("."));
    assert!(reason(verifier.verify(&forged).await).contains("bad signature"));

    let (_, stranger) = ed25519()?;
    assert!(reason(stranger.verify(&token).await).contains("unknown signing key"));
    Ok(())
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_are_refused() -> Result<(), Box<dyn std::error::Error>> {
    let (key, verifier) = ed25519()?;
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&["admin"]))?);
    let kid = key.kid().unwrap_or_default();
    let none_header =
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#));
    assert!(
        verifier
            .verify(&format!("{none_header}.{body}."))
            .await
            .is_err()
    );

    // HS256 "signed" with the public key, which anyone can read from the JWKS.
    let public = key
        .public_jwk()
        .map(|jwk| jwk.x.clone())
        .unwrap_or_default();
    let mut confused = SigningKey::shared_secret(public.as_bytes()).sign(&claims(&["admin"]))?;
    assert!(reason(verifier.verify(&confused).await).contains("algorithm not accepted"));
    let raw_public = URL_SAFE_NO_PAD.decode(&public)?;
    confused = SigningKey::shared_secret(&raw_public).sign(&claims(&["admin"]))?;
    assert!(reason(verifier.verify(&confused).await).contains("algorithm not accepted"));
    Ok(())
}

#[tokio::test]
async fn the_shared_secret_mode_accepts_only_hs256_with_its_secret()
-> Result<(), Box<dyn std::error::Error>> {
    let secret = b"0123456789abcdef0123456789abcdef";
    let verifier = Verifier::with_secret(&config(), secret);
    let token = SigningKey::shared_secret(secret).sign(&claims(&["user"]))?;
    assert_eq!(verifier.verify(&token).await?, claims(&["user"]));
    let other =
        SigningKey::shared_secret(b"another-secret-another-secret-xx").sign(&claims(&[]))?;
    assert!(reason(verifier.verify(&other).await).contains("bad signature"));
    let ed = SigningKey::generate_ed25519()?.sign(&claims(&[]))?;
    assert!(reason(verifier.verify(&ed).await).contains("algorithm not accepted"));
    Ok(())
}

#[test]
fn short_secrets_are_refused_at_start() {
    let settings = crate::config::Settings::from_pairs([("JWT_SECRET", "too-short")]);
    let error = AuthConfig::from_settings(&settings)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("JWT_SECRET") && error.contains("32 bytes"),
        "{error}"
    );
    assert!(
        !error.contains("too-short"),
        "the secret is never echoed: {error}"
    );
}

#[test]
fn keys_survive_a_pem_round_trip_with_a_stable_kid() -> Result<(), KeyError> {
    let key = SigningKey::generate_ed25519()?;
    let pem = key.private_pem().unwrap_or_default();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let again = SigningKey::from_ed25519_pem(pem.as_bytes())?;
    assert_eq!(again.kid(), key.kid());
    assert!(
        SigningKey::from_ed25519_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err()
    );
    Ok(())
}

#[test]
fn bearer_tokens_are_parsed_strictly() {
    let headers = |value: &str| {
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = value.parse() {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        headers
    };
    assert_eq!(bearer_token(&headers("Bearer abc")), Ok(Some("abc")));
    assert_eq!(bearer_token(&headers("bearer abc")), Ok(Some("abc")));
    assert_eq!(bearer_token(&http::HeaderMap::new()), Ok(None));
    for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
        assert_eq!(
            bearer_token(&headers(bad)),
            Err(AuthError::MalformedHeader),
            "{bad}"
        );
    }
}

/// Calls `method` on a policy-wrapped echo service that answers with the subject it saw.
async fn call(
    layer: &AuthLayer,
    method: &str,
    token: Option<&str>,
) -> Result<(String, String), Box<dyn std::error::Error>> {
    let inner = tower::service_fn(|request: http::Request<()>| async move {
        let subject = request
            .extensions()
            .get::<Claims>()
            .map(|c| c.sub.clone())
            .unwrap_or_default();
        let mut response = http::Response::new(tonic::body::Body::empty());
        response.headers_mut().insert(
            "x-subject",
            subject
                .parse()
                .unwrap_or(http::HeaderValue::from_static("?")),
        );
        Ok::<_, Infallible>(response)
    });
    let mut service = layer.layer(inner);
    let mut request = http::Request::builder().uri(format!("/flotilla.test.v1.Test/{method}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = service.ready().await?.call(request.body(())?).await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    Ok((header("grpc-status"), header("x-subject")))
}

#[tokio::test]
async fn the_layer_applies_the_policy() -> Result<(), Box<dyn std::error::Error>> {
    let (key, verifier) = ed25519()?;
    let policy = Policy::new()
        .method("Open", Access::Public)
        .method("Mine", Access::Authenticated)
        .method("Manage", Access::ADMIN);
    let layer = AuthLayer::new(verifier, policy);
    let user = key.sign(&claims(&["user"]))?;
    let admin = key.sign(&claims(&["user", "admin"]))?;
    let unauthenticated = (tonic::Code::Unauthenticated as i32).to_string();
    let denied = (tonic::Code::PermissionDenied as i32).to_string();

    assert_eq!(
        call(&layer, "Open", None).await?,
        (String::new(), String::new())
    );
    assert_eq!(call(&layer, "Mine", None).await?.0, unauthenticated);
    assert_eq!(
        call(&layer, "Mine", Some("not.a.token")).await?.0,
        unauthenticated
    );
    assert_eq!(
        call(&layer, "Mine", Some(&user)).await?,
        (String::new(), "user-1".into())
    );
    assert_eq!(call(&layer, "Manage", Some(&user)).await?.0, denied);
    assert_eq!(
        call(&layer, "Manage", Some(&admin)).await?,
        (String::new(), "user-1".into())
    );
    assert_eq!(
        call(&layer, "Unlisted", Some(&admin)).await?.0,
        denied,
        "a method without a rule is closed"
    );
    Ok(())
}

#[test]
fn policies_are_checked_against_the_contracts() {
    let empty = Policy::new().mismatches("flotilla.product.v1.ProductService");
    assert!(
        empty.iter().any(|m| m == "GetProduct has no rule"),
        "{empty:?}"
    );
    let stray = Policy::new()
        .method("Nope", Access::Public)
        .mismatches("flotilla.product.v1.ProductService");
    assert!(
        stray.iter().any(|m| m.starts_with("Nope is not a method")),
        "{stray:?}"
    );
}

/// An auth service that only publishes keys, whichever the test sets, counting the fetches.
#[derive(Clone, Default)]
struct FakeJwks {
    published: std::sync::Arc<std::sync::Mutex<Vec<PublicJwk>>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl crate::proto::auth::v1::auth_service_server::AuthService for FakeJwks {
    async fn login(
        &self,
        _: tonic::Request<crate::proto::auth::v1::LoginRequest>,
    ) -> Result<tonic::Response<crate::proto::auth::v1::TokenPair>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn refresh(
        &self,
        _: tonic::Request<crate::proto::auth::v1::RefreshRequest>,
    ) -> Result<tonic::Response<crate::proto::auth::v1::TokenPair>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn validate_token(
        &self,
        _: tonic::Request<crate::proto::auth::v1::ValidateTokenRequest>,
    ) -> Result<tonic::Response<crate::proto::auth::v1::Claims>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn revoke(
        &self,
        _: tonic::Request<crate::proto::auth::v1::RevokeRequest>,
    ) -> Result<tonic::Response<crate::proto::auth::v1::RevokeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn get_jwks(
        &self,
        _: tonic::Request<crate::proto::auth::v1::GetJwksRequest>,
    ) -> Result<tonic::Response<crate::proto::auth::v1::Jwks>, tonic::Status> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let keys = self
            .published
            .lock()
            .map(|published| {
                published
                    .iter()
                    .map(|jwk| crate::proto::auth::v1::Jwk {
                        kty: "OKP".into(),
                        crv: "Ed25519".into(),
                        x: jwk.x.clone(),
                        kid: jwk.kid.clone(),
                        alg: "EdDSA".into(),
                        r#use: "sig".into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(tonic::Response::new(crate::proto::auth::v1::Jwks { keys }))
    }
}

async fn fake_auth(
    fake: FakeJwks,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .add_service(crate::proto::auth::v1::auth_service_server::AuthServiceServer::new(fake))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    Ok((
        addr,
        tokio::spawn(async move {
            let _ = server.await;
        }),
    ))
}

fn publish(fake: &FakeJwks, keys: &[&SigningKey]) {
    if let Ok(mut published) = fake.published.lock() {
        *published = keys
            .iter()
            .filter_map(|key| key.public_jwk().cloned())
            .collect();
    }
}

fn published_verifier(
    addr: std::net::SocketAddr,
    timing: super::verifier::FetchTiming,
) -> Result<Verifier, AuthError> {
    let config = AuthConfig {
        keys: KeySource::Jwks,
        ..config()
    };
    Ok(Verifier::with_timing(
        &config,
        &crate::discovery::Discovery::fixed(&[("auth", addr)]),
        timing,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn published_keys_are_fetched_retired_and_kept_through_an_outage()
-> Result<(), Box<dyn std::error::Error>> {
    let (old, new) = (
        SigningKey::generate_ed25519()?,
        SigningKey::generate_ed25519()?,
    );
    let fake = FakeJwks::default();
    publish(&fake, &[&old]);
    let (addr, server) = fake_auth(fake.clone()).await?;
    // Always stale and never rate-limited: every verification fetches again.
    let eager = super::verifier::FetchTiming {
        keys_ttl: Duration::ZERO,
        min_refresh_interval: Duration::ZERO,
    };
    let verifier = published_verifier(addr, eager)?;
    assert!(
        verifier
            .verify(&old.sign(&claims(&["user"]))?)
            .await
            .is_ok()
    );

    // The auth service stops publishing the old key (rotated out after a leak): it stops working.
    publish(&fake, &[&new]);
    assert!(
        reason(verifier.verify(&old.sign(&claims(&["admin"]))?).await)
            .contains("unknown signing key")
    );
    assert!(
        verifier
            .verify(&new.sign(&claims(&["user"]))?)
            .await
            .is_ok()
    );

    // The auth service goes away: the keys fetched before keep working.
    server.abort();
    let _ = server.await;
    assert!(
        verifier
            .verify(&new.sign(&claims(&["user"]))?)
            .await
            .is_ok()
    );
    // A verifier that never fetched cannot tell a good token from a bad one: unavailable.
    let cold = published_verifier(addr, eager)?;
    assert_eq!(
        cold.verify(&new.sign(&claims(&["user"]))?).await,
        Err(AuthError::KeysUnavailable)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_kids_cannot_turn_into_a_flood_of_fetches() -> Result<(), Box<dyn std::error::Error>>
{
    let key = SigningKey::generate_ed25519()?;
    let fake = FakeJwks::default();
    publish(&fake, &[&key]);
    let (addr, server) = fake_auth(fake.clone()).await?;
    let verifier = published_verifier(addr, super::verifier::FetchTiming::default())?;
    assert!(
        verifier
            .verify(&key.sign(&claims(&["user"]))?)
            .await
            .is_ok()
    );
    for _ in 0..20 {
        let stranger = SigningKey::generate_ed25519()?;
        assert!(
            verifier
                .verify(&stranger.sign(&claims(&["admin"]))?)
                .await
                .is_err()
        );
    }
    assert_eq!(
        fake.fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one fetch per interval at most"
    );
    server.abort();
    Ok(())
}
