//! Refresh tokens: rotation, reuse detection, logout, expiry, the race for one token, and the purge
//! of what has expired.

use std::time::Duration;

use auth::domain::{AccessTokenStatus, TokenHash};
use tonic::Code;

use crate::fake_user::{self, EMAIL, PASSWORD, USER_ID};
use crate::{Harness, Mode, TestDb, TestResult, both, failure};

const INVALID: (Code, &str) = (Code::Unauthenticated, "invalid refresh token");

fn invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> bool {
    let (code, message) = failure(result);
    (code, message.as_str()) == INVALID
}

both!(refresh_rotates_the_pair);
async fn refresh_rotates_the_pair(db: TestDb) -> TestResult {
    let harness = Harness::start(&db, Mode::Ed25519).await?;
    let first = harness.login(EMAIL, PASSWORD).await?;
    harness.clock.advance(Duration::from_secs(60));
    let second = harness.refresh(&first.refresh_token).await?;
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.token_type, "Bearer");
    assert_eq!(second.access_expires_in, 900);

    // The new access token carries the roles stored at login.
    let claims = harness.validate(&second.access_token).await?;
    assert_eq!(claims.subject, USER_ID);
    assert_eq!(claims.roles, fake_user::roles());

    // And the new refresh token rotates in turn, without asking the user service again.
    let calls = harness.users.seen.calls();
    let third = harness.refresh(&second.refresh_token).await?;
    assert_ne!(third.refresh_token, second.refresh_token);
    assert_eq!(harness.users.seen.calls(), calls);
    harness.finish().await;
    Ok(())
}

both!(reusing_a_refresh_token_revokes_its_family);
async fn reusing_a_refresh_token_revokes_its_family(db: TestDb) -> TestResult {
    let harness = Harness::start(&db, Mode::Ed25519).await?;
    let first = harness.login(EMAIL, PASSWORD).await?;
    let other_session = harness.login(EMAIL, PASSWORD).await?;
    let second = harness.refresh(&first.refresh_token).await?;

    // Someone presents the old token again: one of the two holders is not the user.
    assert!(invalid(harness.refresh(&first.refresh_token).await));
    // The whole family ends, including the newest token and its access token.
    assert!(invalid(harness.refresh(&second.refresh_token).await));
    let (code, message) = failure(harness.validate(&second.access_token).await);
    assert_eq!(code, Code::Unauthenticated);
    assert_eq!(message, "invalid access token: token revoked");
    assert_eq!(
        failure(harness.validate(&first.access_token).await).0,
        Code::Unauthenticated
    );

    // Another session of the same user is not affected.
    harness.validate(&other_session.access_token).await?;
    harness.refresh(&other_session.refresh_token).await?;
    harness.finish().await;
    Ok(())
}

both!(logout_ends_the_family_and_reveals_nothing);
async fn logout_ends_the_family_and_reveals_nothing(db: TestDb) -> TestResult {
    let harness = Harness::start(&db, Mode::Ed25519).await?;
    let pair = harness.login(EMAIL, PASSWORD).await?;
    harness.revoke(&pair.refresh_token).await?;
    assert!(invalid(harness.refresh(&pair.refresh_token).await));
    assert_eq!(
        failure(harness.validate(&pair.access_token).await).0,
        Code::Unauthenticated
    );

    // Revoking again, garbage, or a well-formed token that was never issued all succeed.
    harness.revoke(&pair.refresh_token).await?;
    harness.revoke("garbage").await?;
    harness.revoke("").await?;
    harness
        .revoke("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await?;
    harness.finish().await;
    Ok(())
}

both!(unknown_and_expired_refresh_tokens_are_refused_alike);
async fn unknown_and_expired_refresh_tokens_are_refused_alike(db: TestDb) -> TestResult {
    let harness = Harness::start(&db, Mode::Ed25519).await?;
    assert!(invalid(harness.refresh("garbage").await));
    assert!(invalid(
        harness
            .refresh("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
            .await
    ));
    let pair = harness.login(EMAIL, PASSWORD).await?;
    harness
        .clock
        .advance(Duration::from_secs(7 * 24 * 3600 + 1));
    assert!(invalid(harness.refresh(&pair.refresh_token).await));
    harness.finish().await;
    Ok(())
}

both!(two_exchanges_of_one_token_cannot_both_win);
async fn two_exchanges_of_one_token_cannot_both_win(db: TestDb) -> TestResult {
    let harness = Harness::start(&db, Mode::Ed25519).await?;
    for _ in 0..3 {
        let pair = harness.login(EMAIL, PASSWORD).await?;
        let (left, right) = tokio::join!(
            harness.refresh(&pair.refresh_token),
            harness.refresh(&pair.refresh_token)
        );
        let winners: Vec<_> = [left, right].into_iter().filter_map(Result::ok).collect();
        assert!(winners.len() <= 1, "one token, one exchange");
        // Whoever lost saw a reuse, which ends the family: the winner's tokens die with it.
        for winner in winners {
            assert!(invalid(harness.refresh(&winner.refresh_token).await));
            assert!(harness.validate(&winner.access_token).await.is_err());
        }
    }
    harness.finish().await;
    Ok(())
}

both!(expired_rows_are_purged);
async fn expired_rows_are_purged(db: TestDb) -> TestResult {
    let harness = Harness::start(&db, Mode::Ed25519).await?;
    let old = harness.login(EMAIL, PASSWORD).await?;
    let jti = harness.validate(&old.access_token).await?.token_id;
    let hash = TokenHash::of_presented(&old.refresh_token).ok_or("a well-formed token")?;
    let store = harness.api.store().clone();
    assert!(store.find_refresh(&hash).await?.is_some());

    // Eight days later, a login finds the purge due.
    harness.clock.advance(Duration::from_secs(8 * 24 * 3600));
    let fresh = harness.login(EMAIL, PASSWORD).await?;
    assert!(store.find_refresh(&hash).await?.is_none());
    assert_eq!(
        store.access_token_status(&jti).await?,
        AccessTokenStatus::Unknown
    );
    let fresh_hash = TokenHash::of_presented(&fresh.refresh_token).ok_or("well-formed")?;
    assert!(
        store.find_refresh(&fresh_hash).await?.is_some(),
        "live tokens stay"
    );
    harness.finish().await;
    Ok(())
}
