//! Login: the token pair, wrong credentials, the failed-login limits (and whose `x-forwarded-for`
//! they believe), logins cancelled mid-call, and a user service that is down or refuses the auth
//! service's own token.

use std::time::Duration;

use platform::auth::{ROLE_SERVICE, SigningKey};
use test_support::both;
use tonic::Code;

use crate::fake_user::{self, EMAIL, FakeUserService, PASSWORD, USER_ID};
use crate::{GATEWAY_PEER, Harness, KeyFiles, Mode, TestDb, TestResult, failure, verifier_for};

both!(login_issues_a_pair_whose_access_token_verifies, crate::open);
async fn login_issues_a_pair_whose_access_token_verifies(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    let pair = harness.login(EMAIL, PASSWORD).await?;
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.access_expires_in, 900);
    assert_eq!(pair.refresh_expires_in, 7 * 24 * 3600);
    assert_eq!(pair.refresh_token.len(), 43, "32 bytes in base64url");

    // Any component holding the published key accepts it, with the expected claims.
    let key = harness.key.as_ref().ok_or("Ed25519 mode has a key")?;
    let claims = verifier_for(key).verify(&pair.access_token).await?;
    assert_eq!(claims.sub, USER_ID);
    assert_eq!(claims.roles, fake_user::roles());
    assert_eq!(claims.exp - claims.iat, 900);
    assert_eq!(
        (claims.iss.as_str(), claims.aud.as_str()),
        ("flotilla-auth", "flotilla")
    );
    uuid::Uuid::parse_str(&claims.jti)?;

    // ValidateToken says the same.
    let validated = harness.validate(&pair.access_token).await?;
    assert_eq!(validated.subject, USER_ID);
    assert_eq!(validated.roles, fake_user::roles());
    assert_eq!(validated.token_id, claims.jti);
    assert_eq!(validated.issuer, "flotilla-auth");
    assert_eq!(validated.audience, "flotilla");
    let issued_at = validated.issued_at.ok_or("issued_at")?.seconds;
    let expires_at = validated.expires_at.ok_or("expires_at")?.seconds;
    assert_eq!(expires_at - issued_at, 900);

    // The user service saw a one-minute service token, not the user's.
    let service = harness
        .users
        .seen
        .last_service_claims()
        .ok_or("a service token")?;
    assert_eq!(service.sub, "service:auth");
    assert_eq!(service.roles, vec![ROLE_SERVICE.to_owned()]);
    assert_eq!(service.exp - service.iat, 60);
    assert_eq!(
        (service.iss.as_str(), service.aud.as_str()),
        ("flotilla-auth", "flotilla")
    );

    // Two logins are two sessions with their own tokens.
    let again = harness.login(EMAIL, PASSWORD).await?;
    assert_ne!(again.refresh_token, pair.refresh_token);
    assert_ne!(again.access_token, pair.access_token);
    harness.finish().await;
    Ok(())
}

both!(wrong_credentials_are_refused_alike_and_limited, crate::open);
async fn wrong_credentials_are_refused_alike_and_limited(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    assert_eq!(
        failure(harness.login("nobody@example.com", PASSWORD).await),
        (Code::Unauthenticated, "invalid credentials".into()),
        "an unknown email and a wrong password look the same"
    );
    for _ in 0..5 {
        assert_eq!(
            failure(harness.login(EMAIL, "wrong password").await),
            (Code::Unauthenticated, "invalid credentials".into())
        );
    }
    let calls = harness.users.seen.calls();

    // The sixth attempt is refused before the user service is asked, even with the right
    // password, and from a differently typed email of the same account.
    harness.clock.advance(Duration::from_secs(60));
    let status = harness
        .login(" ADA@example.com", PASSWORD)
        .await
        .err()
        .ok_or("the login should be refused")?;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "too many failed logins; retry later");
    assert_eq!(
        status
            .metadata()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()),
        Some("840"),
        "the rest of the 15-minute window, in seconds"
    );
    assert_eq!(harness.users.seen.calls(), calls);

    // When the window ends, the right password works again and clears the count.
    harness.clock.advance(Duration::from_secs(14 * 60));
    harness.login(EMAIL, PASSWORD).await?;
    for _ in 0..4 {
        let _ = harness.login(EMAIL, "wrong").await;
    }
    harness.login(EMAIL, PASSWORD).await?;
    harness.finish().await;
    Ok(())
}

both!(the_address_limit_follows_the_forwarded_client, crate::open);
async fn the_address_limit_follows_the_forwarded_client(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    for index in 0..20 {
        let email = format!("guess-{index}@example.com");
        assert_eq!(
            failure(
                harness
                    .login_from(Some("203.0.113.5"), &email, "guess")
                    .await
            )
            .0,
            Code::Unauthenticated
        );
    }
    let blocked = harness
        .login_from(Some("203.0.113.5, 10.0.0.1"), EMAIL, PASSWORD)
        .await;
    assert_eq!(failure(blocked).0, Code::ResourceExhausted);
    harness
        .login_from(Some("203.0.113.6"), EMAIL, PASSWORD)
        .await?;
    harness.finish().await;
    Ok(())
}

both!(
    a_forwarded_address_is_believed_only_from_a_trusted_proxy,
    crate::open
);
async fn a_forwarded_address_is_believed_only_from_a_trusted_proxy(db: &TestDb) -> TestResult {
    // Trust one proxy that is not loopback: the default's loopback is now an ordinary caller.
    let harness = Harness::start_with(
        db,
        Mode::Ed25519,
        &[("FLOTILLA_AUTH_TRUSTED_PROXIES", "10.9.8.7")],
    )
    .await?;
    let proxy = "10.9.8.7:45000".parse()?;
    let direct = GATEWAY_PEER.parse()?;
    // A direct caller making up a new x-forwarded-for for every guess: all counted under its own
    // address, so the 21st is refused whatever it claims to be.
    for index in 0..20 {
        let claimed = format!("198.51.100.{index}");
        let email = format!("guess-{index}@example.com");
        let result = harness
            .login_via(Some(direct), Some(&claimed), &email, "guess")
            .await;
        assert_eq!(failure(result).0, Code::Unauthenticated);
    }
    let spoofed = harness
        .login_via(Some(direct), Some("198.51.100.250"), EMAIL, PASSWORD)
        .await;
    assert_eq!(failure(spoofed).0, Code::ResourceExhausted);
    // Through the trusted proxy, the header names the client: another client is not affected...
    harness
        .login_via(Some(proxy), Some("198.51.100.250"), EMAIL, PASSWORD)
        .await?;
    // ...and without the header the proxy is keyed by its own address, also not charged.
    harness
        .login_via(Some(proxy), None, EMAIL, PASSWORD)
        .await?;
    harness.finish().await;
    Ok(())
}

both!(an_empty_proxy_list_believes_no_header, crate::open);
async fn an_empty_proxy_list_believes_no_header(db: &TestDb) -> TestResult {
    let harness =
        Harness::start_with(db, Mode::Ed25519, &[("FLOTILLA_AUTH_TRUSTED_PROXIES", "")]).await?;
    for index in 0..20 {
        let claimed = format!("198.51.100.{index}");
        let email = format!("guess-{index}@example.com");
        let result = harness.login_from(Some(&claimed), &email, "guess").await;
        assert_eq!(failure(result).0, Code::Unauthenticated);
    }
    let blocked = harness
        .login_from(Some("203.0.113.77"), EMAIL, PASSWORD)
        .await;
    assert_eq!(
        failure(blocked).0,
        Code::ResourceExhausted,
        "even loopback's header is ignored: all twenty counted under 127.0.0.1"
    );
    harness.finish().await;
    Ok(())
}

both!(a_login_cancelled_mid_call_is_not_a_failure, crate::open);
async fn a_login_cancelled_mid_call_is_not_a_failure(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    // The user service is slow: every login outlives its caller's deadline (the gateway's is 3 s),
    // and tonic drops the handler with the call in flight.
    harness.users.set_delay(Duration::from_secs(30));
    for attempt in 0..7 {
        let login = harness.login_from(Some("203.0.113.5"), EMAIL, "wrong password");
        let outcome = tokio::time::timeout(Duration::from_millis(300), login).await;
        assert!(
            outcome.is_err(),
            "attempt {attempt} should still be waiting on the user service, not be refused:              {outcome:?}"
        );
    }
    // None of the seven is charged: with the user service answering again, the right password
    // works, and five real failures are still needed to block the account.
    harness.users.set_delay(Duration::ZERO);
    harness.login(EMAIL, PASSWORD).await?;
    for _ in 0..4 {
        let _ = harness.login(EMAIL, "wrong password").await;
    }
    harness
        .login_from(Some("203.0.113.5"), EMAIL, PASSWORD)
        .await?;
    for _ in 0..5 {
        let _ = harness.login(EMAIL, "wrong password").await;
    }
    assert_eq!(
        failure(harness.login(EMAIL, PASSWORD).await).0,
        Code::ResourceExhausted,
        "answered failures still count"
    );
    harness.finish().await;
    Ok(())
}

both!(malformed_logins_are_invalid_arguments, crate::open);
async fn malformed_logins_are_invalid_arguments(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    assert_eq!(
        failure(harness.login("", PASSWORD).await).0,
        Code::InvalidArgument
    );
    assert_eq!(
        failure(harness.login(EMAIL, "").await).0,
        Code::InvalidArgument
    );
    assert_eq!(harness.users.seen.calls(), 0);
    harness.finish().await;
    Ok(())
}

both!(
    a_user_service_outage_is_unavailable_and_locks_nobody_out,
    crate::open
);
async fn a_user_service_outage_is_unavailable_and_locks_nobody_out(db: &TestDb) -> TestResult {
    // A port that was free a moment ago: connections are refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    auth::ensure_key_file(&db.key_file())?;
    let key = SigningKey::from_ed25519_pem(&std::fs::read(db.key_file())?)?;
    let mut users = FakeUserService::start(verifier_for(&key)).await?;
    // Discovery points the auth service there instead of at the running fake.
    users.addr = closed;
    let harness = Harness::start_against(db, Mode::Ed25519, &[], Some(key), users).await?;
    for _ in 0..7 {
        let (code, message) = failure(harness.login(EMAIL, PASSWORD).await);
        assert_eq!(code, Code::Unavailable);
        assert!(!message.contains(&closed.to_string()), "{message}");
    }
    harness.finish().await;
    Ok(())
}

both!(a_refused_service_token_is_not_a_failed_login, crate::open);
async fn a_refused_service_token_is_not_a_failed_login(db: &TestDb) -> TestResult {
    // The user service trusts some other key: every service token is refused.
    let stranger = SigningKey::generate_ed25519()?;
    let users = FakeUserService::start(verifier_for(&stranger)).await?;
    auth::ensure_key_file(&db.key_file())?;
    let harness = Harness::start_against(db, Mode::Ed25519, &[], None, users).await?;
    for _ in 0..7 {
        assert_eq!(
            failure(harness.login(EMAIL, PASSWORD).await),
            (Code::Internal, "internal error".into()),
            "a misconfiguration, not a wrong password, and it must not lock the account"
        );
    }
    harness.finish().await;
    Ok(())
}
