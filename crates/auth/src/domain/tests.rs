//! The rules of `domain`: login input, account and client keys, claims, refresh tokens and their
//! verdicts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::*;

fn rules() -> TokenRules {
    TokenRules {
        issuer: "flotilla-auth".into(),
        audience: "flotilla".into(),
        access_lifetime: Duration::from_secs(900),
        refresh_lifetime: Duration::from_secs(7 * 24 * 3600),
        refresh_max_lifetime: Duration::from_secs(30 * 24 * 3600),
        leeway: Duration::from_secs(30),
    }
}

#[test]
fn credentials_are_checked_for_shape_only() {
    assert!(Credentials::parse("ada@example.com".into(), "pw".into()).is_ok());
    let field = |email: &str, password: &str| {
        Credentials::parse(email.into(), password.into())
            .err()
            .map(|error| error.field)
    };
    assert_eq!(field("  ", "pw"), Some("email"));
    assert_eq!(field(&"a".repeat(321), "pw"), Some("email"));
    assert_eq!(field("ada@example.com", ""), Some("password"));
    assert_eq!(
        field("ada@example.com", &"p".repeat(1025)),
        Some("password")
    );
}

#[test]
fn passwords_never_print() -> Result<(), ValidationError> {
    let credentials = Credentials::parse("ada@example.com".into(), "hunter2".into())?;
    assert!(!format!("{credentials:?}").contains("hunter2"));
    Ok(())
}

#[test]
fn accounts_are_counted_by_normalised_email() -> Result<(), ValidationError> {
    let credentials = Credentials::parse("  Ada@Example.COM ".into(), "pw".into())?;
    assert_eq!(credentials.account_key(), "ada@example.com");
    assert_eq!(normalise_email("ÄDA@example.com"), "äda@example.com");
    Ok(())
}

#[test]
fn the_client_is_the_first_forwarded_address_or_the_peer() {
    let proxy = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let trusted = [proxy];
    let peer = Some(proxy);
    assert_eq!(
        client_key(Some("203.0.113.9, 10.0.0.2"), peer, &trusted),
        "203.0.113.9"
    );
    assert_eq!(client_key(None, peer, &trusted), "10.0.0.1");
    assert_eq!(
        client_key(Some("not an address"), peer, &trusted),
        "10.0.0.1",
        "garbage falls back to the peer, and never becomes a key of its own"
    );
    assert_eq!(
        client_key(Some("::ffff:192.0.2.7"), peer, &trusted),
        "192.0.2.7"
    );
    assert_eq!(
        client_key(Some("2001:db8:1:2:3:4:5:6"), peer, &trusted),
        client_key(Some("2001:db8:1:2:ffff::1"), peer, &trusted),
        "one IPv6 /64 is one client"
    );
    assert_eq!(client_key(None, None, &trusted), "unknown");
}

#[test]
fn only_a_trusted_proxy_names_the_client() {
    let trusted = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let direct = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4)));
    assert_eq!(
        client_key(Some("203.0.113.9"), direct, &trusted),
        "198.51.100.4",
        "a direct caller cannot pick its own key"
    );
    assert_eq!(
        client_key(Some("203.0.113.9"), None, &trusted),
        "unknown",
        "no peer, no proxy to trust"
    );
    let loopback = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(
        client_key(Some("203.0.113.9"), loopback, &[]),
        "127.0.0.1",
        "an empty list trusts no proxy"
    );
    assert_eq!(
        client_key(Some("203.0.113.9"), loopback, &trusted),
        "203.0.113.9"
    );
    let mapped = Some(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()));
    assert_eq!(
        client_key(Some("203.0.113.9"), mapped, &trusted),
        "203.0.113.9",
        "a dual-stack socket's ::ffff:127.0.0.1 is 127.0.0.1"
    );
    let v6_loopback = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(
        client_key(Some("203.0.113.9"), v6_loopback, &trusted),
        "203.0.113.9"
    );
}

#[test]
fn access_claims_say_who_what_and_until_when() {
    let roles = vec!["user".to_owned()];
    let claims = rules().access_claims("user-1", &roles, 1_700_000_000_654_321, "jti-1");
    assert_eq!(claims.sub, "user-1");
    assert_eq!(claims.roles, roles);
    assert_eq!(claims.iat, 1_700_000_000);
    assert_eq!(claims.exp, 1_700_000_900);
    assert_eq!(claims.jti, "jti-1");
    assert_eq!(claims.iss, "flotilla-auth");
    assert_eq!(claims.aud, "flotilla");
}

#[test]
fn service_claims_name_the_auth_service() {
    let claims = rules().service_claims(1_700_000_000_000_000, "jti-2");
    assert_eq!(claims.sub, "service:auth");
    assert_eq!(claims.roles, vec!["service".to_owned()]);
    assert_eq!(claims.exp - claims.iat, 60);
    assert_eq!(
        (claims.iss.as_str(), claims.aud.as_str()),
        ("flotilla-auth", "flotilla")
    );
}

#[test]
fn lifetimes_are_reported_in_seconds() {
    assert_eq!(rules().access_expires_in(), 900);
    assert_eq!(TokenRules::refresh_expires_in(604_800_000_000, 0), 604_800);
    assert_eq!(
        TokenRules::refresh_expires_in(1_000_000 + 1_999_999, 1_000_000),
        1,
        "rounded down"
    );
    assert_eq!(TokenRules::refresh_expires_in(5, 10), 0, "never negative");
    assert_eq!(
        rules().refresh_expires_at(1_000_000, 1_000_000),
        1_000_000 + 604_800_000_000
    );
}

#[test]
fn a_refresh_token_never_outlives_its_family() {
    const DAY_US: i64 = 24 * 3600 * 1_000_000;
    let rules = rules();
    let login = 1_700_000_000_000_000;
    assert_eq!(rules.family_ends_at(login), login + 30 * DAY_US);
    // Early on, the token's own lifetime is the shorter.
    assert_eq!(rules.refresh_expires_at(login, login), login + 7 * DAY_US);
    assert_eq!(
        rules.refresh_expires_at(login + 23 * DAY_US, login),
        login + 30 * DAY_US,
        "exactly at the boundary both agree"
    );
    // Later, the family's end caps it: 29 days in, one day is left.
    let late = login + 29 * DAY_US;
    let capped = rules.refresh_expires_at(late, login);
    assert_eq!(capped, login + 30 * DAY_US);
    assert_eq!(TokenRules::refresh_expires_in(capped, late), 24 * 3600);
    // Issued at or past the end, a token is born expired.
    let after = login + 31 * DAY_US;
    assert_eq!(rules.refresh_expires_at(after, login), login + 30 * DAY_US);
    assert_eq!(
        TokenRules::refresh_expires_in(rules.refresh_expires_at(after, login), after),
        0
    );
    // Huge settings saturate instead of overflowing.
    let endless = TokenRules {
        refresh_lifetime: Duration::MAX,
        refresh_max_lifetime: Duration::MAX,
        ..rules
    };
    assert_eq!(endless.refresh_expires_at(login, login), i64::MAX);
}

#[test]
fn refresh_tokens_are_32_random_bytes_in_base64url() -> Result<(), RandomError> {
    let token = RefreshToken::generate()?;
    assert_eq!(token.expose().len(), 43);
    assert!(
        token
            .expose()
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    );
    assert_ne!(RefreshToken::generate()?, token);
    assert_eq!(format!("{token:?}"), "RefreshToken(***)");
    Ok(())
}

#[test]
fn refresh_tokens_are_stored_as_their_sha256() {
    let token = RefreshToken::from_bytes([0; 32]);
    assert_eq!(
        token.expose(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    );
    // sha256("AAAA…A", 43 characters), from `printf %s … | sha256sum`.
    assert_eq!(
        token.hash().as_str(),
        "0f007385b6f9d4b7eeb2748605afe1a984a0a3bfa3f014d09e2a784ce9e5cd1a"
    );
    assert_eq!(token.hash().as_str().len(), 64);
    assert_eq!(TokenHash::of_presented(token.expose()), Some(token.hash()));
    assert_ne!(RefreshToken::from_bytes([1; 32]).hash(), token.hash());
}

#[test]
fn presented_tokens_that_cannot_be_ours_are_not_looked_up() {
    for garbage in [
        "",
        "garbage",
        &"A".repeat(44),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+",
    ] {
        assert_eq!(TokenHash::of_presented(garbage), None, "{garbage}");
    }
}

#[test]
fn refresh_verdicts() {
    let fresh = StoredRefresh {
        family_id: "f".into(),
        subject: "u".into(),
        roles: vec![],
        expires_at_us: 100,
        family_created_at_us: 0,
        used: false,
        family_revoked: false,
    };
    assert_eq!(fresh.verdict(99), RefreshVerdict::Rotate);
    assert_eq!(fresh.verdict(100), RefreshVerdict::Reject, "expired");
    let used = StoredRefresh {
        used: true,
        ..fresh.clone()
    };
    assert_eq!(used.verdict(0), RefreshVerdict::Reuse);
    assert_eq!(
        used.verdict(1_000),
        RefreshVerdict::Reuse,
        "a used token is a reuse even once expired"
    );
    let revoked = StoredRefresh {
        used: true,
        family_revoked: true,
        ..fresh
    };
    assert_eq!(revoked.verdict(0), RefreshVerdict::Reject);
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
    assert_eq!(retry_after_seconds(Duration::from_secs(60)), 60);
    assert_eq!(retry_after_seconds(Duration::from_millis(60_001)), 61);
}
