//! Request helpers for the service tests: a client, and the JSON / bearer-token pattern
//! (send, read the status and the JSON body) written once instead of at every call.
//!
//! Every helper returns `(status, body)`; a body that is not JSON fails the test with the
//! status and the text, since every answer of the service is JSON (errors included) except
//! `/metrics`, which tests read as text.

use std::borrow::Cow;
use std::time::Duration;

use reqwest::{Client, IntoUrl, RequestBuilder, Response};
use serde_json::Value;

/// An HTTP client without proxies (the tests talk to loopback only) and a 30 s timeout, so a
/// hung server fails the test instead of hanging it.
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client builds")
}

/// The status and JSON body of a response.
pub async fn json(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("the response body is read");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, value)
}

/// Sends `req` (with `Authorization: Bearer token` when a token is given) and reads the
/// status and JSON body.
pub async fn send(req: RequestBuilder, token: Option<&str>) -> (u16, Value) {
    let req = match token {
        Some(token) => req.bearer_auth(token),
        None => req,
    };
    json(req.send().await.expect("the request reaches the server")).await
}

/// `GET url`: status and JSON body.
pub async fn get_json(http: &Client, url: impl IntoUrl, token: Option<&str>) -> (u16, Value) {
    send(http.get(url), token).await
}

/// `POST url` with `body` as JSON: status and JSON body.
pub async fn post_json(
    http: &Client,
    url: impl IntoUrl,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    send(http.post(url).json(body), token).await
}

/// `POST url` with a multipart `form`: status and JSON body.
pub async fn post_form(
    http: &Client,
    url: impl IntoUrl,
    token: Option<&str>,
    form: reqwest::multipart::Form,
) -> (u16, Value) {
    send(http.post(url).multipart(form), token).await
}

/// A multipart form with one `file` part named `name`, declared as `content_type` (which
/// the service ignores: the content decides).
pub fn file_form(
    name: &str,
    data: impl Into<Cow<'static, [u8]>>,
    content_type: &str,
) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(data)
        .file_name(name.to_owned())
        .mime_str(content_type)
        .expect("a valid content type");
    reqwest::multipart::Form::new().part("file", part)
}
