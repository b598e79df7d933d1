//! Bearer-token authentication of the API routes.
//!
//! When `HTTP_API_TOKEN` is set, every route except the probes (`/health`, `/ready`) and
//! `/metrics` needs `Authorization: Bearer <token>`. The comparison takes the same time
//! whatever prefix of the token a caller guessed, so the token cannot be found byte by byte
//! by timing. The token is never logged: only "missing" / "mismatch" is.

use http::{HeaderMap, header};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;

/// Whether `a == b`, in time that depends only on their lengths (and not on where they
/// differ), by `subtle`'s constant-time comparison. A length difference is itself not
/// secret: tokens have a fixed, public format.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Why a request was not authorised (for the log, never the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not the configured one.
    Mismatch,
}

/// The token of the request's `Authorization: Bearer` header, if it has a non-empty one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
}

/// Checks the request's bearer token against `expected`. `None` means auth is off. (The
/// service checks tokens through [`crate::tenants::Tenants`], which compares digests.)
pub fn check(headers: &HeaderMap, expected: Option<&SecretString>) -> Result<(), AuthFailure> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = bearer(headers).ok_or(AuthFailure::Missing)?;
    if constant_time_eq(given.as_bytes(), expected.expose_secret().as_bytes()) {
        Ok(())
    } else {
        Err(AuthFailure::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check_with(header: Option<&str>, expected: Option<&str>) -> Result<(), AuthFailure> {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(h).unwrap());
        }
        let expected = expected.map(|s| SecretString::from(s.to_owned()));
        check(&headers, expected.as_ref())
    }

    #[test]
    fn no_configured_token_lets_everything_through() {
        assert_eq!(check_with(None, None), Ok(()));
        assert_eq!(check_with(Some("Bearer x"), None), Ok(()));
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        assert_eq!(check_with(Some("Bearer tok"), Some("tok")), Ok(()));
        assert_eq!(check_with(Some("bearer  tok "), Some("tok")), Ok(()));
        assert_eq!(check_with(None, Some("tok")), Err(AuthFailure::Missing));
        assert_eq!(
            check_with(Some("Basic tok"), Some("tok")),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            check_with(Some("Bearer"), Some("tok")),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            check_with(Some("Bearer to"), Some("tok")),
            Err(AuthFailure::Mismatch)
        );
        assert_eq!(
            check_with(Some("Bearer tok2"), Some("tok")),
            Err(AuthFailure::Mismatch)
        );
        assert_eq!(
            check_with(Some("Bearer TOK"), Some("tok")),
            Err(AuthFailure::Mismatch)
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
