//! Signing keys: Ed25519 (the default; its public half is published as a JWK) or a shared HS256
//! secret (the simple mode). The auth service signs with these; tests use them to make tokens.
//!
//! Ed25519 private keys are stored as PKCS#8 PEM (`openssl genpkey -algorithm ed25519` writes the
//! same form). A key's `kid` is its RFC 7638 thumbprint, so the same key always has the same id.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use sha2::{Digest, Sha256};

use super::claims::Claims;

/// The fixed PKCS#8 prefix of an Ed25519 private key (RFC 8410): what precedes the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why a key cannot be used. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM is not an Ed25519 private key.
    #[error(
        "not an Ed25519 private key in PKCS#8 PEM form (make one with `openssl genpkey -algorithm ed25519`)"
    )]
    NotEd25519,
    /// The system's random source failed.
    #[error("cannot generate a key: the system random source failed")]
    Random,
    /// Signing failed.
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// The public half of an Ed25519 key, as a JWKS publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// The public key, base64url without padding.
    pub x: String,
}

/// A key that signs access tokens.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    kid: Option<String>,
    public: Option<PublicJwk>,
    pem: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random Ed25519 key.
    ///
    /// # Errors
    /// [`KeyError::Random`] when the system random source fails.
    pub fn generate_ed25519() -> Result<Self, KeyError> {
        let mut seed = [0_u8; 32];
        getrandom::fill(&mut seed).map_err(|_| KeyError::Random)?;
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let pem = to_pem(&der);
        Self::from_ed25519_pem(pem.as_bytes())
    }

    /// An Ed25519 key from PKCS#8 PEM.
    ///
    /// # Errors
    /// [`KeyError::NotEd25519`] when the PEM holds something else.
    pub fn from_ed25519_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let encoding = EncodingKey::from_ed_pem(pem).map_err(|_| KeyError::NotEd25519)?;
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA)
            .map_err(|_| KeyError::NotEd25519)?;
        let AlgorithmParameters::OctetKeyPair(pair) = jwk.algorithm else {
            return Err(KeyError::NotEd25519);
        };
        let kid = thumbprint(&pair.x);
        Ok(Self {
            algorithm: Algorithm::EdDSA,
            encoding,
            kid: Some(kid.clone()),
            public: Some(PublicJwk { kid, x: pair.x }),
            pem: Some(String::from_utf8_lossy(pem).into_owned()),
        })
    }

    /// An HS256 key from a shared secret.
    pub fn shared_secret(secret: &[u8]) -> Self {
        Self {
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            kid: None,
            public: None,
            pem: None,
        }
    }

    /// The key id, for Ed25519 keys.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The public half to publish, for Ed25519 keys.
    pub fn public_jwk(&self) -> Option<&PublicJwk> {
        self.public.as_ref()
    }

    /// The key that verifies this key's signatures, for Ed25519 keys.
    pub fn decoding_key(&self) -> Option<DecodingKey> {
        let public = self.public.as_ref()?;
        DecodingKey::from_ed_components(&public.x).ok()
    }

    /// The private key as PKCS#8 PEM, for Ed25519 keys; write it only to a file only its owner reads.
    pub fn private_pem(&self) -> Option<&str> {
        self.pem.as_deref()
    }

    /// Signs `claims` into a compact JWT with this key's algorithm and `kid`.
    ///
    /// # Errors
    /// [`KeyError::Sign`] when the crypto backend refuses.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|error| KeyError::Sign(error.to_string()))
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: SHA-256 of the canonical JWK members, base64url.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn to_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}
