//! D-ID's response bodies: `{kind, description, details?}` from the API, `{message}` /
//! `{Message}` / HTML from the API Gateway in front of it, and plain JSON successes.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};

use super::Resp;

const JSON: &str = "application/json; charset=utf-8";

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &Value) -> Resp {
    let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    resp
}

/// A response without a body (`204`).
pub(crate) fn empty(status: StatusCode) -> Resp {
    let mut resp = http::Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// D-ID's error envelope `{"kind","description"}`.
pub(crate) fn did(status: StatusCode, kind: &str, description: &str) -> Resp {
    json(status, &json!({ "kind": kind, "description": description }))
}

/// D-ID's error envelope with `details`.
pub(crate) fn did_details(
    status: StatusCode,
    kind: &str,
    description: &str,
    details: Value,
) -> Resp {
    json(
        status,
        &json!({ "kind": kind, "description": description, "details": details }),
    )
}

/// tsoa-style `400 ValidationError` for one JSON path, e.g. `body.script.type`.
pub(crate) fn validation(path: &str, message: &str, value: Option<&Value>) -> Resp {
    let mut entry = json!({ "message": message });
    if let Some(v) = value {
        entry["value"] = v.clone();
    }
    did_details(
        StatusCode::BAD_REQUEST,
        "ValidationError",
        "validation failed",
        json!({ path: entry }),
    )
}

/// API Gateway's own shape, `{"message": ...}`.
pub(crate) fn gateway(status: StatusCode, message: &str) -> Resp {
    json(status, &json!({ "message": message }))
}

pub(crate) fn unauthenticated() -> Resp {
    did(
        StatusCode::UNAUTHORIZED,
        "AuthorizationError",
        "user unauthenticated",
    )
}

pub(crate) fn missing_token() -> Resp {
    gateway(StatusCode::FORBIDDEN, "Missing Authentication Token")
}

pub(crate) fn explicit_deny() -> Resp {
    json(
        StatusCode::FORBIDDEN,
        &json!({ "Message": "User is not authorized to access this resource with an explicit deny" }),
    )
}

pub(crate) fn internal() -> Resp {
    did(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UnknownError",
        "Internal Server Error",
    )
}

pub(crate) fn gateway_timeout() -> Resp {
    gateway(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out")
}

pub(crate) fn not_enough_credits() -> Resp {
    did(
        StatusCode::PAYMENT_REQUIRED,
        "InsufficientCreditsError",
        "not enough credits",
    )
}

pub(crate) fn too_many_requests(kind_shape: bool, retry_after: Option<u64>) -> Resp {
    let mut resp = if kind_shape {
        did(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "too many requests, try again later",
        )
    } else {
        gateway(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
    };
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A load balancer's 502 page, as clients see it in front of a failed upstream.
pub(crate) fn bad_gateway_html() -> Resp {
    let body = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
                <center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";
    let mut resp = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    resp
}
