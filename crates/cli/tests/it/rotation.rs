//! Key rotation without a flag day: after `flotilla rotate-keys` and a restart, tokens signed by the
//! previous key still work until they expire, new tokens carry the new key, and both keys are
//! published.

use std::process::Command;

use serde_json::Value;

use crate::{ADMIN_EMAIL, ADMIN_PASSWORD, TestResult, binary, http_client, login, up};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_the_previous_key_stay_valid_after_a_rotation() -> TestResult {
    let dir = tempfile::tempdir()?;
    let http = http_client();
    let flotilla = up(dir.path()).await;
    let gateway = flotilla.addr("gateway", "http");
    let before: Value = login(&http, gateway, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await?
        .error_for_status()?
        .json()
        .await?;
    let old_token = before["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    flotilla.stop().await;

    let output = Command::new(binary())
        .args(["rotate-keys", "--data-dir"])
        .arg(dir.path())
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("jwt-ed25519.previous.pem").exists());

    let flotilla = up(dir.path()).await;
    let gateway = flotilla.addr("gateway", "http");
    let me = http
        .get(format!("http://{gateway}/v1/users/me"))
        .bearer_auth(&old_token)
        .send()
        .await?;
    assert_eq!(
        me.status(),
        200,
        "a token of the previous key is still accepted"
    );
    let after: Value = login(&http, gateway, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await?
        .error_for_status()?
        .json()
        .await?;
    let kid = |token: &str| -> Option<String> {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next()?)
            .ok()?;
        serde_json::from_slice::<Value>(&header).ok()?["kid"]
            .as_str()
            .map(str::to_owned)
    };
    let (old_kid, new_kid) = (
        kid(&old_token),
        kid(after["access_token"].as_str().unwrap_or_default()),
    );
    assert!(
        old_kid.is_some() && new_kid.is_some() && old_kid != new_kid,
        "{old_kid:?} {new_kid:?}"
    );
    let jwks: Value = http
        .get(format!("http://{gateway}/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    let published: Vec<Option<String>> = jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .map(|key| key["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        published.contains(&old_kid) && published.contains(&new_kid),
        "{jwks}"
    );
    flotilla.stop().await;
    Ok(())
}
