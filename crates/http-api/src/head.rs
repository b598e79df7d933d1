//! The service's own limits on a request head, checked before routing and auth.
//!
//! A request whose target is longer than [`MAX_URI_BYTES`] answers 414 `uri_too_long`; one
//! with more than [`MAX_HEADERS`] header fields, or more than [`MAX_HEADER_BYTES`] of them,
//! answers 431 `request_header_fields_too_large` — the service's JSON error with
//! `x-request-id` and `Connection: close`, counted in the metrics under the route's template.
//! The router calls [`check_head`] first; the server sets hyper's own limits above these (and
//! lists what hyper refuses before this code runs).

use http::Request;

use crate::error::ApiError;

/// The longest request target (path and query) the service accepts, in bytes; longer is
/// 414 `uri_too_long`. Far above any real route (a talk id is at most 64 characters).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The most header fields a request may have; more is 431 `request_header_fields_too_large`.
/// hyper's own default limit, so nothing that used to pass is refused now.
pub const MAX_HEADERS: usize = 100;

/// The most bytes of header fields a request may have in all (names, values and 4 bytes of
/// `: ` and CRLF per field); more is 431 `request_header_fields_too_large`. Node's default.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Checks the request head against [`MAX_URI_BYTES`], [`MAX_HEADERS`] and
/// [`MAX_HEADER_BYTES`] (the `server` module's docs list what hyper refuses before this).
pub fn check_head<B>(req: &Request<B>) -> Result<(), ApiError> {
    // The target as sent: origin form is the path and query; absolute form adds the
    // scheme and authority (the separators are not counted).
    let uri = req.uri();
    let uri_len = uri.scheme_str().map_or(0, str::len)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong {
            len: uri_len,
            limit: MAX_URI_BYTES,
        });
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::TooManyHeaders {
            count: headers.len(),
            limit: MAX_HEADERS,
        });
    }
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge {
            size,
            limit: MAX_HEADER_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_checked_at_their_limits() {
        let check = |target: &str, headers: &[(String, String)], expected: Option<&str>| {
            let mut req = Request::get(target);
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let req = req.body(()).unwrap();
            let code = check_head(&req).err().map(|e| e.code());
            assert_eq!(
                code,
                expected,
                "{} bytes of target, {} headers",
                target.len(),
                headers.len()
            );
        };
        let target = |n: usize| format!("/{}", "a".repeat(n - 1));
        let fields = |n: usize, value_len: usize| -> Vec<(String, String)> {
            (0..n)
                .map(|i| (format!("x-{i:03}"), "v".repeat(value_len)))
                .collect()
        };
        check(&target(MAX_URI_BYTES), &[], None);
        check(&target(MAX_URI_BYTES + 1), &[], Some("uri_too_long"));
        // An absolute-form target counts its scheme and authority too (`http`, `host`).
        let absolute = |path_len| format!("http://host{}", target(path_len));
        check(&absolute(MAX_URI_BYTES - 8), &[], None);
        check(&absolute(MAX_URI_BYTES - 7), &[], Some("uri_too_long"));
        check("/", &fields(MAX_HEADERS, 1), None);
        let too_many = Some("request_header_fields_too_large");
        check("/", &fields(MAX_HEADERS + 1, 1), too_many);
        // One field of `x-000` (5), `: ` and CRLF (4) and a value filling the rest.
        let exact = vec![("x-000".to_owned(), "v".repeat(MAX_HEADER_BYTES - 9))];
        check("/", &exact, None);
        let over = vec![("x-000".to_owned(), "v".repeat(MAX_HEADER_BYTES - 8))];
        check("/", &over, too_many);
    }
}
