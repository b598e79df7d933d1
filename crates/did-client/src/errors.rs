//! Turning what D-ID answers (or fails to answer) into the closed [`VideoApiError`].
//!
//! D-ID's own errors are `{"kind", "description", "details"?}`, but the AWS API Gateway in
//! front of it answers `{"message"}` or `{"Message"}`, a 5xx gateway may send an HTML page,
//! and a 429 may have no body at all. So the status decides the variant, and the body only
//! adds words when it has any: a body that is not JSON never turns into a parse error.
//!
//! Nothing here sees the request, so no message can contain the API key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ports::VideoApiError;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// The longest upstream text copied into an error message.
const MAX_TEXT: usize = 200;

/// What an error body said, whatever its shape.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ErrorBody {
    /// D-ID's `kind`, absent for gateway and non-JSON bodies.
    pub kind: Option<String>,
    /// D-ID's `description`, or the gateway's `message` / `Message`, or short plain text.
    pub description: Option<String>,
    /// D-ID's `details`.
    pub details: Option<Value>,
}

/// Reads an error body of any shape; never fails.
pub(crate) fn parse_error_body(body: &[u8]) -> ErrorBody {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(truncate);
        return ErrorBody {
            kind: text("kind"),
            description: text("description")
                .or_else(|| text("message"))
                .or_else(|| text("Message")),
            details: map.get("details").filter(|d| !d.is_null()).cloned(),
        };
    }
    // Short plain text is worth keeping; HTML pages and binary junk are not.
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let plain = !text.is_empty() && !text.starts_with('<') && !text.contains('\u{FFFD}');
    ErrorBody {
        description: plain.then(|| truncate(text)),
        ..ErrorBody::default()
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_TEXT {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_TEXT).collect();
        t.push('…');
        t
    }
}

/// The reason phrase of `status`, used when the body had no words of its own.
fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map_or_else(|| format!("HTTP {status}"), str::to_owned)
}

/// Maps a non-2xx answer to its error. `retry_after` is what the headers said (see
/// [`retry_after`]).
pub(crate) fn map_status(status: u16, retry_after: Option<Duration>, body: &[u8]) -> VideoApiError {
    let parsed = parse_error_body(body);
    let description = || parsed.description.clone().unwrap_or_else(|| reason(status));
    match status {
        401 => VideoApiError::Unauthorized { status },
        // A 403 with D-ID's PermissionError is a plan restriction; any other 403 (the gateway's
        // `{"Message": "... explicit deny"}`, an unknown route) means the key was refused.
        403 if parsed.kind.as_deref() == Some("PermissionError") => VideoApiError::Forbidden {
            description: description(),
        },
        403 => VideoApiError::Unauthorized { status },
        402 => VideoApiError::InsufficientCredits,
        404 => VideoApiError::NotFound {
            description: description(),
        },
        409 => VideoApiError::NotReady {
            description: description(),
        },
        // 408 is the server saying the request took too long: the same as our own timeout.
        408 => VideoApiError::Timeout,
        429 => VideoApiError::RateLimited { retry_after },
        500..=599 => VideoApiError::Server { status },
        // 400, 413, 415, 422, 451 and every other 4xx: D-ID refused this input, do not repeat it.
        400..=499 => VideoApiError::Validation {
            status,
            kind: parsed.kind.clone().unwrap_or_else(|| reason(status)),
            description: description(),
            details: parsed.details.clone(),
        },
        _ => VideoApiError::Protocol {
            message: format!("unexpected HTTP status {status}"),
        },
    }
}

/// The wait a 429 asked for: `retry-after-ms` (milliseconds, may be fractional), else
/// `Retry-After` as seconds (may be fractional) or as an HTTP date. Negative, unparsable or
/// past values are ignored.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    at.checked_sub(now).map(Duration::from_secs)
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7) to Unix seconds.
/// The obsolete date forms are not accepted; a server sending them gets no `retry_after`.
fn parse_http_date(s: &str) -> Option<u64> {
    let mut parts = s.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), for the proleptic Gregorian calendar.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (h * 3600 + m * 60 + sec) as i64;
    u64::try_from(secs).ok()
}

/// Maps a transport failure (no usable answer) to [`VideoApiError::Timeout`],
/// [`VideoApiError::Connect`] or [`VideoApiError::Protocol`]. The message is the error's
/// cause chain without the URL (reqwest would name D-ID's internal address and port);
/// reqwest never puts headers in it, so the key cannot leak either.
pub(crate) fn map_transport(error: reqwest::Error) -> VideoApiError {
    if error.is_timeout() {
        return VideoApiError::Timeout;
    }
    let error = error.without_url();
    if error.is_decode() || error.is_redirect() || error.is_builder() {
        return VideoApiError::Protocol {
            message: chain(&error),
        };
    }
    VideoApiError::Connect {
        message: chain(&error),
    }
}

/// The error and its sources, joined with `: `.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn check(status: u16, body: &str, expected: VideoApiError) {
        assert_eq!(
            map_status(status, None, body.as_bytes()),
            expected,
            "{status} {body}"
        );
    }

    fn validation(
        status: u16,
        kind: &str,
        description: &str,
        details: Option<Value>,
    ) -> VideoApiError {
        VideoApiError::Validation {
            status,
            kind: kind.into(),
            description: description.into(),
            details,
        }
    }

    #[test]
    fn d_id_error_kinds_map_to_their_variants() {
        check(
            401,
            r#"{"kind":"AuthorizationError","description":"user unauthenticated"}"#,
            VideoApiError::Unauthorized { status: 401 },
        );
        check(
            402,
            r#"{"kind":"InsufficientCreditsError","description":"not enough credits"}"#,
            VideoApiError::InsufficientCredits,
        );
        check(
            403,
            r#"{"kind":"PermissionError","description":"user has no permission for stitch"}"#,
            VideoApiError::Forbidden {
                description: "user has no permission for stitch".into(),
            },
        );
        check(
            404,
            r#"{"kind":"NotFoundError","description":"not found"}"#,
            VideoApiError::NotFound {
                description: "not found".into(),
            },
        );
        check(
            409,
            r#"{"kind":"NotReadyError","description":"talk is in process, try again later"}"#,
            VideoApiError::NotReady {
                description: "talk is in process, try again later".into(),
            },
        );
        check(
            500,
            r#"{"kind":"UnknownError","description":"Internal Server Error"}"#,
            VideoApiError::Server { status: 500 },
        );
    }

    #[test]
    fn refused_input_keeps_kind_description_and_details() {
        check(
            400,
            r#"{"kind":"ValidationError","description":"validation failed","details":{"body.script":{"message":"'script' is required"}}}"#,
            validation(
                400,
                "ValidationError",
                "validation failed",
                Some(json!({"body.script": {"message": "'script' is required"}})),
            ),
        );
        check(
            415,
            r#"{"kind":"UnsupportedMimeTypeError","description":"The provided mime type is not supported","details":{"received":"image/gif"}}"#,
            validation(
                415,
                "UnsupportedMimeTypeError",
                "The provided mime type is not supported",
                Some(json!({"received": "image/gif"})),
            ),
        );
        check(
            451,
            r#"{"kind":"ImageModerationError","description":"Automatic content moderation"}"#,
            validation(
                451,
                "ImageModerationError",
                "Automatic content moderation",
                None,
            ),
        );
        check(
            413,
            "",
            validation(413, "Payload Too Large", "Payload Too Large", None),
        );
        check(
            422,
            r#"{"kind":"ValidationError","description":"bad","details":null}"#,
            validation(422, "ValidationError", "bad", None),
        );
    }

    #[test]
    fn gateway_bodies_are_understood() {
        check(
            403,
            r#"{"Message":"User is not authorized to access this resource with an explicit deny"}"#,
            VideoApiError::Unauthorized { status: 403 },
        );
        check(
            403,
            r#"{"message":"Missing Authentication Token"}"#,
            VideoApiError::Unauthorized { status: 403 },
        );
        check(
            504,
            r#"{"message":"Endpoint request timed out"}"#,
            VideoApiError::Server { status: 504 },
        );
        check(
            404,
            r#"{"message":"no such route"}"#,
            VideoApiError::NotFound {
                description: "no such route".into(),
            },
        );
        check(
            429,
            r#"{"message":"Too Many Requests"}"#,
            VideoApiError::RateLimited { retry_after: None },
        );
    }

    #[test]
    fn html_empty_and_junk_bodies_fall_back_to_the_status() {
        check(
            502,
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            VideoApiError::Server { status: 502 },
        );
        check(
            404,
            "<html>nope</html>",
            VideoApiError::NotFound {
                description: "Not Found".into(),
            },
        );
        check(400, "", validation(400, "Bad Request", "Bad Request", None));
        check(
            400,
            "plain words",
            validation(400, "Bad Request", "plain words", None),
        );
        check(
            400,
            "[1,2,3]",
            validation(400, "Bad Request", "[1,2,3]", None),
        );
        check(401, "", VideoApiError::Unauthorized { status: 401 });
        check(408, "", VideoApiError::Timeout);
        assert!(matches!(
            map_status(302, None, b""),
            VideoApiError::Protocol { .. }
        ));
        let long = "x".repeat(5000);
        let VideoApiError::NotFound { description } = map_status(404, None, long.as_bytes()) else {
            panic!("not NotFound")
        };
        assert!(description.chars().count() <= MAX_TEXT + 1);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        // 2024-01-01T00:00:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let check = |pairs: &[(&'static str, &str)], expected: Option<Duration>| {
            assert_eq!(retry_after(&headers(pairs), now), expected, "{pairs:?}");
        };
        check(&[], None);
        check(&[("retry-after", "3")], Some(Duration::from_secs(3)));
        check(&[("retry-after", "1.5")], Some(Duration::from_millis(1500)));
        check(
            &[("retry-after-ms", "250")],
            Some(Duration::from_millis(250)),
        );
        check(
            &[("retry-after-ms", "250"), ("retry-after", "9")],
            Some(Duration::from_millis(250)),
        );
        check(
            &[("retry-after-ms", "soon"), ("retry-after", "9")],
            Some(Duration::from_secs(9)),
        );
        check(&[("retry-after", "-1")], None);
        check(&[("retry-after", "later")], None);
        check(
            &[("retry-after", "Mon, 01 Jan 2024 00:00:30 GMT")],
            Some(Duration::from_secs(30)),
        );
        check(&[("retry-after", "Sun, 31 Dec 2023 23:59:00 GMT")], None);
        check(&[("retry-after", "Mon, 01 Jan 2024 00:00:30 UTC")], None);
    }

    #[test]
    fn http_dates_convert_to_unix_seconds() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 12:00:00 GMT"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }
}
