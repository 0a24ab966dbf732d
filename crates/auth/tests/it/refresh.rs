//! Refresh tokens: rotation, reuse detection, logout, expiry, the race for one token, a revocation
//! racing a rotation, and the purge of what has expired (on demand and in the background).

use std::time::Duration;

use auth::domain::{AccessTokenStatus, RefreshToken, TokenHash};
use auth::store::{NewAccess, NewRefresh};
use platform::sqlx;
use test_support::both;
use tonic::Code;

use crate::fake_user::{self, EMAIL, PASSWORD, USER_ID};
use crate::{Harness, KeyFiles, Mode, TestDb, TestResult, failure};

const INVALID: (Code, &str) = (Code::Unauthenticated, "invalid refresh token");

fn invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> bool {
    let (code, message) = failure(result);
    (code, message.as_str()) == INVALID
}

both!(refresh_rotates_the_pair, crate::open);
async fn refresh_rotates_the_pair(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
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

both!(reusing_a_refresh_token_revokes_its_family, crate::open);
async fn reusing_a_refresh_token_revokes_its_family(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
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

both!(logout_ends_the_family_and_reveals_nothing, crate::open);
async fn logout_ends_the_family_and_reveals_nothing(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
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

both!(
    unknown_and_expired_refresh_tokens_are_refused_alike,
    crate::open
);
async fn unknown_and_expired_refresh_tokens_are_refused_alike(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
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

both!(a_family_ends_at_its_maximum_lifetime, crate::open);
async fn a_family_ends_at_its_maximum_lifetime(db: &TestDb) -> TestResult {
    const DAY: u64 = 24 * 3600;
    // The defaults: refresh tokens live 7 days, a family at most 30 days from its login.
    let harness = Harness::start(db, Mode::Ed25519).await?;
    let mut pair = harness.login(EMAIL, PASSWORD).await?;
    assert_eq!(pair.refresh_expires_in, 604_800);

    // Refreshing keeps the session alive, each time for a full 7 days while the family's end
    // (day 30) is further away than that, and then for what is left until day 30.
    let steps: [(u64, u64, &str); 7] = [
        (6 * DAY, 7 * DAY, "day 6"),
        (6 * DAY, 7 * DAY, "day 12"),
        (6 * DAY, 7 * DAY, "day 18"),
        (5 * DAY, 7 * DAY, "day 23: the cap and the lifetime agree"),
        (DAY, 6 * DAY, "day 24"),
        (5 * DAY, DAY, "day 29"),
        (DAY - 1, 1, "a second before the end"),
    ];
    for (wait, expires_in, when) in steps {
        harness.clock.advance(Duration::from_secs(wait));
        pair = harness.refresh(&pair.refresh_token).await?;
        assert_eq!(
            pair.refresh_expires_in,
            i64::try_from(expires_in)?,
            "{when}"
        );
    }
    // The access token of that last exchange is as good as any.
    harness.validate(&pair.access_token).await?;

    // At the family's end its newest token is refused like any expired one.
    harness.clock.advance(Duration::from_secs(1));
    assert!(invalid(harness.refresh(&pair.refresh_token).await));
    assert!(invalid(harness.refresh(&pair.refresh_token).await));

    // A new login starts a new family with the full lifetime again.
    let fresh = harness.login(EMAIL, PASSWORD).await?;
    assert_eq!(fresh.refresh_expires_in, 604_800);
    harness.refresh(&fresh.refresh_token).await?;
    harness.finish().await;
    Ok(())
}

both!(a_token_past_its_family_end_is_refused, crate::open);
async fn a_token_past_its_family_end_is_refused(db: &TestDb) -> TestResult {
    // A shorter cap than the one a token was issued under still ends the family: restart the
    // service on the same database with a cap of one day, a day and a second after login.
    let before = Harness::start(db, Mode::Ed25519).await?;
    let pair = before.login(EMAIL, PASSWORD).await?;
    before.finish().await;
    let after = Harness::start_with(
        db,
        Mode::Ed25519,
        &[
            ("FLOTILLA_REFRESH_EXPIRY", "1day"),
            ("FLOTILLA_REFRESH_MAX_LIFETIME", "1day"),
        ],
    )
    .await?;
    after.clock.advance(Duration::from_secs(24 * 3600 + 1));
    assert!(invalid(after.refresh(&pair.refresh_token).await));
    after.finish().await;
    Ok(())
}

both!(two_exchanges_of_one_token_cannot_both_win, crate::open);
async fn two_exchanges_of_one_token_cannot_both_win(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
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

both!(a_revoked_family_cannot_rotate, crate::open);
async fn a_revoked_family_cannot_rotate(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    let store = harness.api.store().clone();
    let now = auth::Clock::now_micros(harness.clock.as_ref());
    let successor = |now: i64| -> Result<(NewRefresh, NewAccess), Box<dyn std::error::Error>> {
        Ok((
            NewRefresh {
                hash: RefreshToken::generate()?.hash(),
                issued_at_us: now,
                expires_at_us: now + 3_600_000_000,
            },
            NewAccess {
                jti: uuid::Uuid::new_v4().to_string(),
                expires_at_us: now + 900_000_000,
            },
        ))
    };

    // In sequence: a Refresh that read its token before the revocation, and exchanges it after.
    let pair = harness.login(EMAIL, PASSWORD).await?;
    let hash = TokenHash::of_presented(&pair.refresh_token).ok_or("well-formed")?;
    let stored = store.find_refresh(&hash).await?.ok_or("stored")?;
    assert!(store.revoke_family(&stored.family_id, now).await?);
    let (next, access) = successor(now)?;
    assert!(
        !store
            .rotate(&hash, now, &stored.family_id, &next, &access)
            .await?,
        "a revoked family's token is not exchanged"
    );
    assert!(
        store.find_refresh(&next.hash).await?.is_none(),
        "nothing written"
    );
    assert!(invalid(harness.refresh(&pair.refresh_token).await));

    // Concurrently: the revocation holds its transaction open while the rotation starts. The
    // rotation must wait for it and then see the family revoked (in PostgreSQL a snapshot read of
    // the family would have let it through).
    let pair = harness.login(EMAIL, PASSWORD).await?;
    let hash = TokenHash::of_presented(&pair.refresh_token).ok_or("well-formed")?;
    let stored = store.find_refresh(&hash).await?.ok_or("stored")?;
    let mut revocation = store.database().pool().begin().await?;
    let revoked = sqlx::query(
        "UPDATE token_families SET revoked_at_us = $2 WHERE id = $1 AND revoked_at_us IS NULL",
    )
    .bind(stored.family_id.as_str())
    .bind(now)
    .execute(&mut *revocation)
    .await?;
    assert_eq!(revoked.rows_affected(), 1);
    let (next, access) = successor(now)?;
    let rotation = tokio::spawn({
        let store = store.clone();
        let family_id = stored.family_id.clone();
        let next = next.clone();
        async move { store.rotate(&hash, now, &family_id, &next, &access).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rotation.is_finished(),
        "the rotation waits for the revocation's lock"
    );
    revocation.commit().await?;
    assert!(!rotation.await??, "the rotation sees the family revoked");
    assert!(
        store.find_refresh(&next.hash).await?.is_none(),
        "nothing written"
    );
    assert!(invalid(harness.refresh(&pair.refresh_token).await));
    harness.finish().await;
    Ok(())
}

both!(
    a_rotation_holds_off_a_revocation_until_it_commits,
    crate::open
);
async fn a_rotation_holds_off_a_revocation_until_it_commits(db: &TestDb) -> TestResult {
    // The other order: a revocation that comes while a rotation is in flight ends the family
    // after it, successors included.
    let harness = Harness::start(db, Mode::Ed25519).await?;
    let pair = harness.login(EMAIL, PASSWORD).await?;
    let (left, right) = tokio::join!(
        harness.refresh(&pair.refresh_token),
        harness.revoke(&pair.refresh_token)
    );
    right?;
    if let Ok(successor) = left {
        assert!(invalid(harness.refresh(&successor.refresh_token).await));
        assert!(harness.validate(&successor.access_token).await.is_err());
    }
    assert!(invalid(harness.refresh(&pair.refresh_token).await));
    harness.finish().await;
    Ok(())
}

both!(expired_rows_are_purged, crate::open);
async fn expired_rows_are_purged(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    let old = harness.login(EMAIL, PASSWORD).await?;
    let jti = harness.validate(&old.access_token).await?.token_id;
    let hash = TokenHash::of_presented(&old.refresh_token).ok_or("a well-formed token")?;
    let store = harness.api.store().clone();
    assert!(store.find_refresh(&hash).await?.is_some());

    // Eight days later, a login and a purge (what the background task runs every minute).
    harness.clock.advance(Duration::from_secs(8 * 24 * 3600));
    let fresh = harness.login(EMAIL, PASSWORD).await?;
    assert!(
        store.find_refresh(&hash).await?.is_some(),
        "requests never purge: that is the background task's job"
    );
    let purged = harness.api.purge_expired().await?;
    assert_eq!(
        (purged.access_tokens, purged.refresh_tokens, purged.families),
        (1, 1, 1)
    );
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

both!(the_purge_task_runs_until_the_database_closes, crate::open);
async fn the_purge_task_runs_until_the_database_closes(db: &TestDb) -> TestResult {
    let harness = Harness::start(db, Mode::Ed25519).await?;
    let old = harness.login(EMAIL, PASSWORD).await?;
    let hash = TokenHash::of_presented(&old.refresh_token).ok_or("a well-formed token")?;
    let store = harness.api.store().clone();
    let purger = auth::Purger::spawn(harness.api.clone(), Duration::from_millis(20));

    harness.clock.advance(Duration::from_secs(8 * 24 * 3600));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.find_refresh(&hash).await?.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background purge removed nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!purger.is_finished());

    // Shutdown closes the database; the task ends with it.
    store.database().close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !purger.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purge task outlived its database"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    harness.finish().await;
    Ok(())
}

both!(build_starts_a_purge_task_that_stop_ends, crate::open);
async fn build_starts_a_purge_task_that_stop_ends(db: &TestDb) -> TestResult {
    auth::ensure_key_file(&db.key_file())?;
    let key_file = db.key_file().display().to_string();
    let config = auth::AuthServiceConfig::from_settings(
        &platform::config::Settings::from_pairs([
            ("DATABASE_URL", db.url()),
            ("FLOTILLA_JWT_KEY_FILE", key_file.as_str()),
        ]),
        "DATABASE_URL",
        "sqlite://unused.db",
        None,
    )?;
    let built = auth::build(&config, &platform::discovery::Discovery::fixed(&[])).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!built.purger.is_finished(), "it runs until told otherwise");
    built.purger.stop().await;
    built.database.close().await;
    Ok(())
}
