//! Accounts and tokens end to end, through the real binary: sign up, log in, read yourself, renew
//! (the old refresh token stops working, and presenting it again ends the session), log out;
//! expired, forged and under-privileged tokens are refused at the gateway and again at the
//! services; failed logins are limited; and no log line holds a password or a token.

use std::net::SocketAddr;

use platform::auth::{Claims, SigningKey};
use platform::proto::product::v1 as product_pb;
use platform::proto::product::v1::product_service_client::ProductServiceClient;
use platform::proto::user::v1 as user_pb;
use platform::proto::user::v1::user_service_client::UserServiceClient;
use serde_json::{Value, json};
use tonic::Code;

use crate::{ADMIN_PASSWORD, TestResult, grpc_channel, http_client, login, up, with_bearer};

const PASSWORD: &str = "a long enough passphrase";

async fn json_of(response: reqwest::Response) -> Result<(u16, Value), reqwest::Error> {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

async fn refresh(
    http: &reqwest::Client,
    gateway: SocketAddr,
    token: &str,
) -> Result<(u16, Value), reqwest::Error> {
    json_of(
        http.post(format!("http://{gateway}/v1/auth/refresh"))
            .json(&json!({"refresh_token": token}))
            .send()
            .await?,
    )
    .await
}

async fn me(
    http: &reqwest::Client,
    gateway: SocketAddr,
    token: &str,
) -> Result<(u16, Value), reqwest::Error> {
    json_of(
        http.get(format!("http://{gateway}/v1/users/me"))
            .bearer_auth(token)
            .send()
            .await?,
    )
    .await
}

fn text(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_default().to_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_login_refresh_logout_and_tokens_checked_everywhere() -> TestResult {
    let dir = tempfile::tempdir()?;
    let flotilla = up(dir.path()).await;
    let gateway = flotilla.addr("gateway", "http");
    let http = http_client();
    let mut secrets: Vec<String> = vec![PASSWORD.to_owned(), ADMIN_PASSWORD.to_owned()];

    // Sign up, and the same email again.
    let sign_up = json!({"email": "  Ada@Example.COM ", "password": PASSWORD, "name": "Ada"});
    let (status, user) = json_of(
        http.post(format!("http://{gateway}/v1/users"))
            .json(&sign_up)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, 201, "{user}");
    assert_eq!(
        text(&user, "email"),
        "Ada@example.com",
        "trimmed, domain lower-cased"
    );
    assert!(user.get("password").is_none() && !user.to_string().contains(PASSWORD));
    let (status, _) = json_of(
        http.post(format!("http://{gateway}/v1/users"))
            .json(&sign_up)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, 409);

    // Log in; a wrong password and an unknown email look the same.
    let (status, wrong) =
        json_of(login(&http, gateway, "ada@example.com", "not the password").await?).await?;
    assert_eq!(
        (status, wrong["error"]["message"].as_str()),
        (401, Some("invalid credentials"))
    );
    let (status, unknown) =
        json_of(login(&http, gateway, "nobody@example.com", PASSWORD).await?).await?;
    assert_eq!(
        (status, unknown["error"]["message"].as_str()),
        (401, Some("invalid credentials"))
    );
    let (status, pair) = json_of(login(&http, gateway, "Ada@example.com", PASSWORD).await?).await?;
    assert_eq!(status, 200, "{pair}");
    let (access, first_refresh) = (text(&pair, "access_token"), text(&pair, "refresh_token"));
    assert_eq!(text(&pair, "token_type"), "Bearer");
    secrets.extend([access.clone(), first_refresh.clone()]);

    // The token is signed with a published key.
    let jwks: Value = http
        .get(format!("http://{gateway}/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    let header: Value =
        serde_json::from_slice(&base64_url(access.split('.').next().unwrap_or_default())?)?;
    assert!(
        jwks["keys"]
            .as_array()
            .is_some_and(|keys| keys.iter().any(|key| key["kid"] == header["kid"])),
        "{jwks}"
    );
    assert_eq!(header["alg"], "EdDSA");

    let (status, myself) = me(&http, gateway, &access).await?;
    assert_eq!((status, text(&myself, "id")), (200, text(&user, "id")));
    assert_eq!(myself["roles"], json!(["user"]));

    // Refresh rotates; the old refresh token then fails; presenting it again ends the family.
    let (status, renewed) = refresh(&http, gateway, &first_refresh).await?;
    assert_eq!(status, 200, "{renewed}");
    let second_refresh = text(&renewed, "refresh_token");
    secrets.extend([text(&renewed, "access_token"), second_refresh.clone()]);
    assert_ne!(second_refresh, first_refresh);
    let (status, _) = refresh(&http, gateway, &first_refresh).await?;
    assert_eq!(status, 401, "a used refresh token is refused");
    let (status, _) = refresh(&http, gateway, &second_refresh).await?;
    assert_eq!(
        status, 401,
        "reuse of the old token revoked the whole family"
    );

    // Logout ends a fresh session.
    // The domain's case does not matter; the local part's does (RFC 5321), so it is kept as typed.
    let (status, pair) = json_of(login(&http, gateway, "Ada@EXAMPLE.com", PASSWORD).await?).await?;
    assert_eq!(status, 200, "{pair}");
    let session_refresh = text(&pair, "refresh_token");
    secrets.extend([text(&pair, "access_token"), session_refresh.clone()]);
    let logout = http
        .post(format!("http://{gateway}/v1/auth/logout"))
        .json(&json!({"refresh_token": session_refresh}))
        .send()
        .await?;
    assert_eq!(logout.status(), 204);
    let (status, _) = refresh(&http, gateway, &session_refresh).await?;
    assert_eq!(status, 401, "logged out");

    // Roles: a user on an admin route, an admin on it.
    let (status, _) = json_of(
        http.get(format!("http://{gateway}/v1/users"))
            .bearer_auth(&access)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, 403);
    let new_product = json!({"name": "Kettle", "price_cents": 100, "currency": "EUR"});
    let (status, _) = json_of(
        http.post(format!("http://{gateway}/v1/products"))
            .bearer_auth(&access)
            .json(&new_product)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, 403);
    let admin = crate::admin_token(&http, gateway).await?;
    secrets.push(admin.clone());
    let (status, users) = json_of(
        http.get(format!("http://{gateway}/v1/users"))
            .bearer_auth(&admin)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, 200, "{users}");
    let (status, other) = json_of(
        http.get(format!("http://{gateway}/v1/users/{}", text(&user, "id")))
            .bearer_auth(&admin)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        (status, text(&other, "email")),
        (200, "Ada@example.com".to_owned())
    );

    // Expired: signed with the real key (read from the data directory), but past its expiry.
    let key = SigningKey::from_ed25519_pem(&std::fs::read(dir.path().join("jwt-ed25519.pem"))?)?;
    let claims = |exp: u64, roles: &[&str]| Claims {
        sub: text(&user, "id"),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
        iat: exp.saturating_sub(900),
        exp,
        jti: format!("test-{exp}"),
        iss: "flotilla-auth".into(),
        aud: "flotilla".into(),
    };
    let expired = key.sign(&claims(now() - 3600, &["user"]))?;
    let (status, body) = me(&http, gateway, &expired).await?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{body}"
    );

    // Forged: the right shape and a kid the system knows, signed by another key.
    let forger = SigningKey::generate_ed25519()?;
    let genuine_header = key.sign(&claims(now() + 600, &["user", "admin"]))?;
    let forged_parts = forger.sign(&claims(now() + 600, &["user", "admin"]))?;
    let forged = format!(
        "{}.{}",
        genuine_header.split('.').next().unwrap_or_default(),
        forged_parts
            .split('.')
            .skip(1)
            .collect::<Vec<_>>()
            .join(".")
    );
    let (status, _) = me(&http, gateway, &forged).await?;
    assert_eq!(status, 401, "a forged token is refused at the gateway");
    let mut products =
        ProductServiceClient::new(grpc_channel(flotilla.addr("product", "grpc")).await?);
    let direct = products
        .create_product(with_bearer(
            product_pb::CreateProductRequest::default(),
            &forged,
        ))
        .await;
    assert_eq!(
        direct.err().map(|s| s.code()),
        Some(Code::Unauthenticated),
        "and straight at the product service"
    );
    let mut users_client =
        UserServiceClient::new(grpc_channel(flotilla.addr("user", "grpc")).await?);
    let direct = users_client
        .get_user(with_bearer(
            user_pb::GetUserRequest {
                id: text(&user, "id"),
            },
            &forged,
        ))
        .await;
    assert_eq!(
        direct.err().map(|s| s.code()),
        Some(Code::Unauthenticated),
        "and straight at the user service"
    );
    let direct = users_client
        .authenticate_user(user_pb::AuthenticateUserRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        })
        .await;
    assert_eq!(
        direct.err().map(|s| s.code()),
        Some(Code::Unauthenticated),
        "only the auth service may check passwords"
    );

    // Failed logins are limited per account, with a time to come back.
    let mut limited = None;
    for _ in 0..10 {
        let response = login(&http, gateway, "ada@example.com", "guessing").await?;
        if response.status() == 429 {
            limited = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            break;
        }
    }
    assert!(
        limited
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s > 0),
        "{limited:?}"
    );

    flotilla.stop().await;
    // Nothing secret reached the logs.
    let log = std::fs::read_to_string(dir.path().join("flotilla.log"))?;
    assert!(log.lines().count() > 10, "the run logged");
    assert!(
        secrets.iter().all(|secret| secret.len() >= 8),
        "every secret was collected"
    );
    for (index, secret) in secrets.iter().enumerate() {
        let leaking: Vec<String> = log
            .lines()
            .filter(|line| line.contains(secret.as_str()))
            .map(|line| line.replace(secret.as_str(), "<SECRET>"))
            .collect();
        assert!(
            leaking.is_empty(),
            "secret #{index} reached the log: {leaking:?}"
        );
    }
    for part in secrets
        .iter()
        .filter(|s| s.matches('.').count() == 2)
        .flat_map(|token| token.split('.').skip(1))
    {
        assert!(!log.contains(part), "part of a token reached the log");
    }
    Ok(())
}

fn base64_url(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text)
}
