//! Signing and checking access tokens with the service's own keys: the claims come from
//! [`TokenRules`](crate::domain::TokenRules), the keys from a [`KeyRing`], and the checks (signature,
//! algorithm, expiry with leeway, issuer, audience) from `platform::auth::Verifier`, the same code
//! every other component verifies with, so the auth service cannot accept what they refuse.

use std::collections::HashMap;
use std::fmt;

use jsonwebtoken::DecodingKey;
use platform::auth::{AuthConfig, AuthError, Claims, KeyError, KeySource, PublicJwk, Verifier};

use crate::domain::{TokenRules, new_id};
use crate::keys::KeyRing;

/// A signed access token and what it says. `Debug` prints the token as `***` (it is a bearer
/// credential until it expires) and the claims in full.
#[derive(Clone)]
pub struct IssuedAccess {
    /// The compact JWT.
    pub token: String,
    /// Its claims.
    pub claims: Claims,
}

impl fmt::Debug for IssuedAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedAccess")
            .field("token", &"***")
            .field("claims", &self.claims)
            .finish()
    }
}

/// Signs and verifies tokens with one [`KeyRing`].
#[derive(Debug, Clone)]
pub struct Tokens {
    rules: TokenRules,
    ring: KeyRing,
    /// Verifies with the current key only.
    current: Verifier,
    /// Verifies with the current and the previous key, while the previous one is trusted.
    with_previous: Option<Verifier>,
}

impl Tokens {
    /// Tokens following `rules`, signed with `ring`.
    pub fn new(rules: TokenRules, ring: KeyRing) -> Self {
        // The verifier reads only the issuer, audience and leeway from this; the keys are given.
        let config = AuthConfig {
            keys: KeySource::Jwks,
            issuer: rules.issuer.clone(),
            audience: rules.audience.clone(),
            leeway: rules.leeway,
        };
        let (current, with_previous) = match &ring {
            KeyRing::SharedSecret { secret, .. } => (
                Verifier::with_secret(&config, secret.expose().as_bytes()),
                None,
            ),
            KeyRing::Ed25519 { current, previous } => {
                let current_only = decoding_keys([Some(current)]);
                let with_previous = previous.as_ref().map(|previous| {
                    Verifier::with_public_keys(
                        &config,
                        decoding_keys([Some(current), Some(&previous.key)]),
                    )
                });
                (
                    Verifier::with_public_keys(&config, current_only),
                    with_previous,
                )
            }
        };
        Self {
            rules,
            ring,
            current,
            with_previous,
        }
    }

    /// The rules tokens follow.
    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    /// Signs an access token for `subject` with `roles`, issued at `now_us`, with a fresh `jti`.
    ///
    /// # Errors
    /// [`KeyError::Sign`] when the crypto backend refuses.
    pub fn sign_access(
        &self,
        subject: &str,
        roles: &[String],
        now_us: i64,
    ) -> Result<IssuedAccess, KeyError> {
        let claims = self.rules.access_claims(subject, roles, now_us, &new_id());
        let token = self.ring.current().sign(&claims)?;
        Ok(IssuedAccess { token, claims })
    }

    /// Signs the short-lived token the auth service presents to the user service.
    ///
    /// # Errors
    /// [`KeyError::Sign`] when the crypto backend refuses.
    pub fn sign_service(&self, now_us: i64) -> Result<String, KeyError> {
        self.ring
            .current()
            .sign(&self.rules.service_claims(now_us, &new_id()))
    }

    /// Checks `token`'s signature, algorithm, expiry (with leeway), issuer and audience, with the
    /// keys trusted at `now_us`. Revocation is the caller's next step.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] saying what is wrong.
    pub async fn verify(&self, token: &str, now_us: i64) -> Result<Claims, AuthError> {
        let verifier = match &self.with_previous {
            Some(verifier) if self.ring.previous_at(now_us).is_some() => verifier,
            _ => &self.current,
        };
        verifier.verify(token).await
    }

    /// The public keys to publish at `now_us` (none for a shared secret).
    pub fn published(&self, now_us: i64) -> Vec<PublicJwk> {
        self.ring.published(now_us)
    }
}

fn decoding_keys<'a>(
    keys: impl IntoIterator<Item = Option<&'a platform::auth::SigningKey>>,
) -> HashMap<String, DecodingKey> {
    keys.into_iter()
        .flatten()
        .filter_map(|key| Some((key.kid()?.to_owned(), key.decoding_key()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use platform::auth::{ROLE_SERVICE, SigningKey};
    use platform::config::Secret;

    use super::*;
    use crate::keys::PreviousKey;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn rules() -> TokenRules {
        TokenRules {
            issuer: "flotilla-auth".into(),
            audience: "flotilla".into(),
            access_lifetime: Duration::from_secs(15 * 60),
            refresh_lifetime: Duration::from_secs(7 * 24 * 3600),
            refresh_max_lifetime: Duration::from_secs(30 * 24 * 3600),
            leeway: Duration::from_secs(30),
        }
    }

    fn ring(current: &SigningKey, previous: Option<(&SigningKey, i64)>) -> KeyRing {
        KeyRing::Ed25519 {
            current: current.clone(),
            previous: previous.map(|(key, retire_at_us)| PreviousKey {
                key: key.clone(),
                retire_at_us,
            }),
        }
    }

    fn reason(result: Result<Claims, AuthError>) -> String {
        result
            .err()
            .map(|error| error.to_string())
            .unwrap_or_else(|| "accepted".into())
    }

    #[tokio::test]
    async fn access_tokens_carry_the_claims_and_the_kid() -> TestResult {
        let key = SigningKey::generate_ed25519()?;
        let tokens = Tokens::new(rules(), ring(&key, None));
        let now = platform::time::now_micros();
        let roles = vec!["user".to_owned(), "admin".to_owned()];
        let issued = tokens.sign_access("user-42", &roles, now)?;

        let header = jsonwebtoken::decode_header(&issued.token)?;
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), key.kid());

        let claims = tokens.verify(&issued.token, now).await?;
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.sub, "user-42");
        assert_eq!(claims.roles, roles);
        assert_eq!(claims.iat, u64::try_from(now / 1_000_000)?);
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(claims.iss, "flotilla-auth");
        assert_eq!(claims.aud, "flotilla");
        assert_eq!(uuid::Uuid::parse_str(&claims.jti)?.get_version_num(), 4);
        let again = tokens.sign_access("user-42", &roles, now)?;
        assert_ne!(again.claims.jti, claims.jti, "every token has its own id");

        let shown = format!("{issued:?}");
        assert!(shown.contains("token: \"***\""), "{shown}");
        assert!(
            shown.contains(&claims.jti),
            "the claims still print: {shown}"
        );
        for part in issued.token.split('.') {
            assert!(
                !shown.contains(part),
                "no part of the token prints: {shown}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn service_tokens_live_a_minute_and_hold_the_service_role() -> TestResult {
        let key = SigningKey::generate_ed25519()?;
        let tokens = Tokens::new(rules(), ring(&key, None));
        let now = platform::time::now_micros();
        let claims = tokens.verify(&tokens.sign_service(now)?, now).await?;
        assert_eq!(claims.sub, "service:auth");
        assert_eq!(claims.roles, vec![ROLE_SERVICE.to_owned()]);
        assert_eq!(claims.exp - claims.iat, 60);
        Ok(())
    }

    #[tokio::test]
    async fn expiry_is_checked_with_the_leeway() -> TestResult {
        let key = SigningKey::generate_ed25519()?;
        let tokens = Tokens::new(rules(), ring(&key, None));
        let now = platform::time::now_micros();
        let minute = 60_000_000;
        // Issued 15m10s ago: expired 10 s ago, inside the 30 s leeway.
        let within = tokens.sign_access("u", &[], now - 15 * minute - 10_000_000)?;
        assert!(tokens.verify(&within.token, now).await.is_ok());
        // Issued 16 minutes ago: expired 60 s ago, beyond the leeway.
        let beyond = tokens.sign_access("u", &[], now - 16 * minute)?;
        assert_eq!(
            reason(tokens.verify(&beyond.token, now).await),
            "invalid access token: token expired"
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_previous_key_verifies_only_within_its_grace() -> TestResult {
        let old = SigningKey::generate_ed25519()?;
        let new = SigningKey::generate_ed25519()?;
        let now = platform::time::now_micros();
        let retire_at = now + 60_000_000;
        let tokens = Tokens::new(rules(), ring(&new, Some((&old, retire_at))));
        let old_token = old.sign(&rules().access_claims("u", &[], now, "jti-1"))?;

        assert!(tokens.verify(&old_token, now).await.is_ok());
        assert_eq!(tokens.published(now).len(), 2);
        assert_eq!(
            reason(tokens.verify(&old_token, retire_at).await),
            "invalid access token: unknown signing key"
        );
        assert_eq!(tokens.published(retire_at).len(), 1);
        // New tokens are signed with the new key.
        let fresh = tokens.sign_access("u", &[], now)?;
        assert_eq!(
            jsonwebtoken::decode_header(&fresh.token)?.kid.as_deref(),
            new.kid()
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_shared_secret_mode_signs_hs256_and_publishes_nothing() -> TestResult {
        let secret = Secret::new("0123456789abcdef0123456789abcdef".into());
        let tokens = Tokens::new(rules(), KeyRing::shared_secret(secret));
        let now = platform::time::now_micros();
        let issued = tokens.sign_access("u", &[], now)?;
        let header = jsonwebtoken::decode_header(&issued.token)?;
        assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
        assert_eq!(header.kid, None);
        assert!(tokens.verify(&issued.token, now).await.is_ok());
        assert!(tokens.published(now).is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn wrong_issuer_audience_and_foreign_keys_are_refused() -> TestResult {
        let key = SigningKey::generate_ed25519()?;
        let tokens = Tokens::new(rules(), ring(&key, None));
        let now = platform::time::now_micros();
        let mut claims = rules().access_claims("u", &[], now, "j");
        claims.aud = "elsewhere".into();
        assert!(reason(tokens.verify(&key.sign(&claims)?, now).await).contains("wrong audience"));
        let mut claims = rules().access_claims("u", &[], now, "j");
        claims.iss = "someone".into();
        assert!(reason(tokens.verify(&key.sign(&claims)?, now).await).contains("wrong issuer"));
        let stranger = SigningKey::generate_ed25519()?;
        let foreign = stranger.sign(&rules().access_claims("u", &[], now, "j"))?;
        assert!(reason(tokens.verify(&foreign, now).await).contains("unknown signing key"));
        Ok(())
    }
}
