//! List pagination as Google's API Improvement Proposal 158 describes it: opaque page tokens, a
//! default and a maximum page size, and INVALID_ARGUMENT for a token that is malformed or was issued
//! for other filters.
//!
//! A token is base64url of a small JSON document holding the service's keyset cursor (where the last
//! page ended) and a fingerprint of the request's filters. Keyset cursors, unlike offsets, stay right
//! while rows are inserted or deleted between pages. Tokens are not signed: they grant nothing, since
//! the service applies the caller's filters and permissions on every page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Page size used when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page returned; larger requests are lowered to it (AIP-158 says coerce, not reject).
pub const MAX_PAGE_SIZE: u32 = 500;
const TOKEN_VERSION: u8 = 1;

/// Why a page request is refused; each maps to INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The page size is negative.
    #[error("page_size must not be negative, got {0}")]
    NegativeSize(i32),
    /// The token is not one this service issued.
    #[error("page_token is not valid: pass the next_page_token of a previous response unchanged")]
    MalformedToken,
    /// The token was issued for a request with other filters.
    #[error(
        "page_token was issued for different filters: keep the filters of the first request or start again without a token"
    )]
    FiltersChanged,
}

/// The page size to use for a requested one: 0 means the default, above the maximum means the maximum.
///
/// # Errors
/// [`PageError::NegativeSize`] for a negative size.
pub fn page_size(requested: i32) -> Result<u32, PageError> {
    match u32::try_from(requested) {
        Err(_) => Err(PageError::NegativeSize(requested)),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TokenBody<C> {
    v: u8,
    f: u64,
    c: C,
}

/// Encodes `cursor` for a request whose filters are described by `filters`.
pub fn encode_token<C: Serialize>(cursor: &C, filters: &str) -> String {
    let body = TokenBody {
        v: TOKEN_VERSION,
        f: fingerprint(filters),
        c: cursor,
    };
    // Serialising plain data into a Vec cannot fail; an empty token would only end the listing early.
    let json = serde_json::to_vec(&body).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a page token: `None` for the empty token (the first page).
///
/// # Errors
/// [`PageError::MalformedToken`] for a token this code did not make, [`PageError::FiltersChanged`]
/// when it was made for other filters.
pub fn decode_token<C: DeserializeOwned>(
    token: &str,
    filters: &str,
) -> Result<Option<C>, PageError> {
    if token.is_empty() {
        return Ok(None);
    }
    let json = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageError::MalformedToken)?;
    let body: TokenBody<C> =
        serde_json::from_slice(&json).map_err(|_| PageError::MalformedToken)?;
    if body.v != TOKEN_VERSION {
        return Err(PageError::MalformedToken);
    }
    if body.f != fingerprint(filters) {
        return Err(PageError::FiltersChanged);
    }
    Ok(Some(body.c))
}

/// FNV-1a: a stable 64-bit hash, unlike std's hasher whose output may change between Rust releases
/// (a token must stay valid across a restart or an upgrade of the server).
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Cursor {
        at: i64,
        id: String,
    }

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7), Ok(7));
        assert_eq!(page_size(100_000), Ok(MAX_PAGE_SIZE));
        assert_eq!(page_size(-1), Err(PageError::NegativeSize(-1)));
    }

    #[test]
    fn token_round_trips_and_is_opaque() {
        let cursor = Cursor {
            at: 42,
            id: "p-1".into(),
        };
        let token = encode_token(&cursor, "currency=EUR");
        assert!(!token.contains("p-1"));
        assert_eq!(
            decode_token::<Cursor>(&token, "currency=EUR"),
            Ok(Some(cursor))
        );
        assert_eq!(decode_token::<Cursor>("", "currency=EUR"), Ok(None));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let token = encode_token(
            &Cursor {
                at: 1,
                id: "a".into(),
            },
            "",
        );
        assert_eq!(
            decode_token::<Cursor>(&token, "currency=USD"),
            Err(PageError::FiltersChanged)
        );
        assert_eq!(
            decode_token::<Cursor>("not a token!", ""),
            Err(PageError::MalformedToken)
        );
        let other = URL_SAFE_NO_PAD.encode(br#"{"v":9,"f":0,"c":{"at":1,"id":"a"}}"#);
        assert_eq!(
            decode_token::<Cursor>(&other, ""),
            Err(PageError::MalformedToken)
        );
        let mut flipped = token.into_bytes();
        flipped[3] ^= 0x01;
        let flipped = String::from_utf8(flipped).unwrap_or_default();
        assert!(decode_token::<Cursor>(&flipped, "").is_err());
    }
}
