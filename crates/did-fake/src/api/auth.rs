//! `Authorization` parsing: D-ID accepts `Basic user:pass` as given (the documented form) and
//! `Basic base64(user:pass)` (RFC 7617, what D-ID's agents SDK sends).

use std::collections::HashMap;

use base64::Engine;
use http::HeaderMap;

/// The D-ID user id of the request's credentials, or `None` (then the answer is 401).
pub(crate) fn authenticate<'k>(
    headers: &HeaderMap,
    keys: &'k HashMap<String, String>,
) -> Option<&'k str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let credential = credential(value)?;
    keys.get(&credential).map(String::as_str)
}

/// The `user:pass` a `Basic` header carries, in either form.
fn credential(header: &str) -> Option<String> {
    let (scheme, token) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    // D-ID's agents SDK appends `~<connection id>`, which the authorizer strips.
    let token = strip_suffix(token.trim());
    if token.is_empty() {
        return None;
    }
    if token.contains(':') {
        return Some(token.to_owned());
    }
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let decoded = engines.iter().find_map(|e| e.decode(token).ok())?;
    let decoded = String::from_utf8(decoded).ok()?;
    let decoded = strip_suffix(&decoded);
    decoded.contains(':').then(|| decoded.to_owned())
}

fn strip_suffix(s: &str) -> &str {
    s.split_once('~').map_or(s, |(head, _)| head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_basic_forms_yield_the_credential() {
        let check = |header: &str, want: Option<&str>| {
            assert_eq!(credential(header).as_deref(), want, "{header}");
        };
        check("Basic dXNlcjpwYXNz", Some("user:pass")); // base64("user:pass")
        check("Basic user:pass", Some("user:pass"));
        check("basic  user:pass ", Some("user:pass"));
        check("Basic user:pass~conn-1", Some("user:pass"));
        check("Basic dXNlcjpwYXNzfmNvbm4", Some("user:pass")); // base64("user:pass~conn")
        check("Bearer user:pass", None);
        check("Basic ", None);
        check("Basic bm9jb2xvbg==", None); // base64("nocolon")
        check("Basic !!!", None);
    }
}
