//! ValidateToken and GetJwks: what is refused, which keys are published, the shared-secret mode, and
//! a key rotation with its grace period.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use platform::auth::{Claims, SigningKey};
use test_support::both;
use tonic::Code;

use crate::fake_user::{EMAIL, PASSWORD, USER_ID};
use crate::{Harness, KeyFiles, Mode, SECRET, TestDb, TestResult, failure, verification};

fn now_seconds() -> u64 {
    u64::try_from(platform::time::now_micros() / 1_000_000).unwrap_or(0)
}

/// Claims like the service's, for tokens the test signs itself.
fn claims(jti: &str) -> Claims {
    Claims {
        sub: USER_ID.into(),
        roles: vec!["user".into()],
        iat: now_seconds(),
        exp: now_seconds() + 900,
        jti: jti.into(),
        iss: "flotilla-auth".into(),
        aud: "flotilla".into(),
    }
}

fn refused(result: Result<platform::proto::auth::v1::Claims, tonic::Status>) -> String {
    let (code, message) = failure(result);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    message
}

both!(
    validate_refuses_expired_foreign_and_forged_tokens,
    crate::open
);
async fn validate_refuses_expired_foreign_and_forged_tokens(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    let pair = harness.login(EMAIL, PASSWORD).await?;
    let issued = harness.validate(&pair.access_token).await?;
    let key = harness.key.clone().ok_or("Ed25519 mode has a key")?;
    let jti = issued.token_id.as_str();

    // Signed with the service's own key and an issued jti, but expired beyond the leeway.
    let expired = Claims {
        iat: now_seconds() - 1200,
        exp: now_seconds() - 120,
        ..claims(jti)
    };
    assert!(refused(harness.validate(&key.sign(&expired)?).await).contains("token expired"));
    // Expired, but within the 30 s leeway: still accepted.
    let late = Claims {
        exp: now_seconds() - 10,
        ..claims(jti)
    };
    harness.validate(&key.sign(&late)?).await?;

    let wrong_audience = Claims {
        aud: "someone-else".into(),
        ..claims(jti)
    };
    assert!(
        refused(harness.validate(&key.sign(&wrong_audience)?).await).contains("wrong audience")
    );
    let wrong_issuer = Claims {
        iss: "evil".into(),
        ..claims(jti)
    };
    assert!(refused(harness.validate(&key.sign(&wrong_issuer)?).await).contains("wrong issuer"));

    // Another key, and the real header on another key's signature.
    let stranger = SigningKey::generate_ed25519()?;
    let foreign = stranger.sign(&claims(jti))?;
    assert!(refused(harness.validate(&foreign).await).contains("unknown signing key"));
    let header = pair.access_token.split('.').next().unwrap_or_default();
    let body_and_signature: Vec<&str> = foreign.split('.').skip(1).collect();
    let forged = format!("{header}.{}", body_and_signature.join("."));
    assert!(refused(harness.validate(&forged).await).contains("bad signature"));

    // A tampered payload (more roles) under the real signature.
    let parts: Vec<&str> = pair.access_token.split('.').collect();
    let admin = Claims {
        roles: vec!["user".into(), "admin".into(), "root".into()],
        ..claims(jti)
    };
    let tampered = format!(
        "{}.{}.{}",
        parts.first().unwrap_or(&""),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin)?),
        parts.get(2).unwrap_or(&"")
    );
    assert!(refused(harness.validate(&tampered).await).contains("bad signature"));

    // HS256 "signed" with the public key, and alg none.
    let public = URL_SAFE_NO_PAD.decode(key.public_jwk().ok_or("public key")?.x.as_bytes())?;
    let confused = SigningKey::shared_secret(&public).sign(&claims(jti))?;
    assert!(refused(harness.validate(&confused).await).contains("algorithm not accepted"));
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(jti))?)
    );
    refused(harness.validate(&none).await);

    // Correctly signed, but never issued: someone else holds the key.
    let unissued = key.sign(&claims("never-issued"))?;
    assert!(refused(harness.validate(&unissued).await).contains("revoked"));

    refused(harness.validate("").await);
    refused(harness.validate("not.a.token").await);
    refused(harness.validate(&"a".repeat(100_000)).await);
    harness.finish().await;
    Ok(())
}

both!(the_jwks_publishes_the_key_that_signs, crate::open);
async fn the_jwks_publishes_the_key_that_signs(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    let pair = harness.login(EMAIL, PASSWORD).await?;
    let jwks = harness.jwks().await?;
    let [jwk] = jwks.keys.as_slice() else {
        return Err(format!("one key expected, got {jwks:?}").into());
    };
    assert_eq!(
        (
            jwk.kty.as_str(),
            jwk.crv.as_str(),
            jwk.alg.as_str(),
            jwk.r#use.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x)?.len(), 32);
    let header = jsonwebtoken::decode_header(&pair.access_token)?;
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(jwk.kid.as_str()));

    // What the JWKS says is enough to verify the token, as every other component does.
    let mut keys = std::collections::HashMap::new();
    keys.insert(jwk.kid.clone(), DecodingKey::from_ed_components(&jwk.x)?);
    let verifier = platform::auth::Verifier::with_public_keys(&verification(), keys);
    assert_eq!(verifier.verify(&pair.access_token).await?.sub, USER_ID);
    harness.finish().await;
    Ok(())
}

both!(
    the_shared_secret_mode_signs_hs256_and_publishes_nothing,
    crate::open
);
async fn the_shared_secret_mode_signs_hs256_and_publishes_nothing(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::SharedSecret).await?;
    let pair = harness.login(EMAIL, PASSWORD).await?;
    let header = jsonwebtoken::decode_header(&pair.access_token)?;
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid, None);
    let verifier = platform::auth::Verifier::with_secret(&verification(), SECRET.as_bytes());
    assert_eq!(verifier.verify(&pair.access_token).await?.sub, USER_ID);
    assert_eq!(harness.validate(&pair.access_token).await?.subject, USER_ID);
    assert!(
        harness.jwks().await?.keys.is_empty(),
        "a secret is never published"
    );

    // Rotation works the same; a token signed with another secret does not verify.
    let next = harness.refresh(&pair.refresh_token).await?;
    harness.validate(&next.access_token).await?;
    let other =
        SigningKey::shared_secret(b"another-secret-of-32-bytes-or-more!!").sign(&claims("x"))?;
    assert!(refused(harness.validate(&other).await).contains("bad signature"));
    harness.finish().await;
    Ok(())
}

both!(a_rotated_key_keeps_verifying_through_its_grace, crate::open);
async fn a_rotated_key_keeps_verifying_through_its_grace(db: &TestDb) -> TestResult {
    let before = Harness::start(db, Mode::Ed25519).await?;
    let old_pair = before.login(EMAIL, PASSWORD).await?;
    let old_kid = before
        .key
        .as_ref()
        .and_then(SigningKey::kid)
        .ok_or("a kid")?
        .to_owned();
    before.finish().await;

    let rotation = auth::rotate_key_files(&db.key_file(), &db.previous_key_file())?;
    assert_eq!(rotation.previous_kid, old_kid);
    let previous = db.previous_key_file().display().to_string();
    let after = Harness::start_with(
        db,
        Mode::Ed25519,
        &[("FLOTILLA_JWT_PREVIOUS_KEY_FILE", &previous)],
    )
    .await?;

    // New tokens use the new key; both keys are published; the old token still validates.
    let new_pair = after.login(EMAIL, PASSWORD).await?;
    let new_kid = jsonwebtoken::decode_header(&new_pair.access_token)?
        .kid
        .ok_or("a kid header")?;
    assert_eq!(new_kid, rotation.current_kid);
    let published: Vec<String> = after
        .jwks()
        .await?
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(
        published,
        vec![rotation.current_kid.clone(), old_kid.clone()]
    );
    after.validate(&old_pair.access_token).await?;
    // The family outlives the key: its refresh token rotates onto the new key.
    let renewed = after.refresh(&old_pair.refresh_token).await?;
    assert_eq!(
        jsonwebtoken::decode_header(&renewed.access_token)?.kid,
        Some(rotation.current_kid.clone())
    );

    // Once the access lifetime and the leeway have passed since the rotation, the old key goes.
    after.clock.advance(Duration::from_secs(15 * 60 + 31));
    let published: Vec<String> = after
        .jwks()
        .await?
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(published, vec![rotation.current_kid.clone()]);
    assert!(refused(after.validate(&old_pair.access_token).await).contains("unknown signing key"));
    after.validate(&renewed.access_token).await?;
    after.finish().await;
    Ok(())
}
