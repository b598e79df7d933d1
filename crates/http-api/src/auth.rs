//! The bearer token of a request, and why one was not accepted.
//!
//! With `HTTP_API_TOKEN` or `TENANTS_FILE` set, every route except the probes, `/metrics`
//! and D-ID's `talk-webhooks` needs `Authorization: Bearer <token>`; [`crate::tenants`]
//! says whose it is (digests compared in constant time). The token is never logged: only
//! "missing" / "mismatch" is.

use http::{HeaderMap, header};

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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn bearer_of(header: Option<&str>) -> Option<String> {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(h).unwrap());
        }
        bearer(&headers).map(str::to_owned)
    }

    #[test]
    fn only_a_bearer_scheme_with_a_token_gives_one() {
        assert_eq!(bearer_of(Some("Bearer tok")).as_deref(), Some("tok"));
        assert_eq!(bearer_of(Some("bearer  tok ")).as_deref(), Some("tok"));
        assert_eq!(bearer_of(Some("Bearer TOK")).as_deref(), Some("TOK"));
        for none in [None, Some("Basic tok"), Some("Bearer"), Some("Bearer   ")] {
            assert_eq!(bearer_of(none), None, "{none:?}");
        }
    }
}
