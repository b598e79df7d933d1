//! Secrets never leave in a response, even when the upstream echoes them back (issue 9,
//! item 6): an upstream that puts our `Authorization` header into its error description, a
//! talk's `result_url` or its `error`, and a client that puts the bearer token into a path.
//!
//! The upstream here is a real HTTP server on loopback that echoes what it was sent; it
//! stands for a misbehaving D-ID (or a proxy in front of it), which did-fake does not imitate.

use std::convert::Infallible;
use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::support::{self, Server};
use test_support::http::client;

const KEY: &str = "echo-user:Ech0SecretPart-9981";
const TOKEN: &str = "Scrub-Bearer-Token-2718";

/// Answers D-ID's routes with the request's `Authorization` header echoed into every
/// free-text field it has.
async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let credentials = auth.split_once(' ').map_or(auth.as_str(), |(_, c)| c);
    let (status, body) = match req.uri().path() {
        "/talks/tlk_echoerr" => (
            StatusCode::BAD_REQUEST,
            json!({
                "kind": "ValidationError",
                "description": format!("bad credentials {auth} / {credentials}"),
                "details": {"auth": auth},
            }),
        ),
        "/talks/tlk_echoraw" => (
            StatusCode::FORBIDDEN,
            json!({"kind": "PermissionError", "description": format!("key {KEY} refused")}),
        ),
        _ => (
            StatusCode::OK,
            json!({
                "id": "tlk_echook",
                "status": "error",
                "created_at": "2026-01-01T00:00:00.000Z",
                "result_url": format!("https://r.test/v.mp4?sig={credentials}"),
                "error": {"kind": "FaceError", "description": format!("as {auth}")},
            }),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn echoing_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(echo)),
            );
        }
    });
    addr
}

/// Every form in which a secret could appear in a body.
fn forms() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
    let secret = KEY.split_once(':').unwrap().1.to_owned();
    vec![KEY.to_owned(), b64, secret, TOKEN.to_owned()]
}

fn assert_clean(what: &str, body: &str) {
    for form in forms() {
        assert!(!body.contains(&form), "{what} leaks {form:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_echoed_by_the_upstream_or_sent_by_a_client_never_reach_a_response() {
    let upstream = echoing_upstream().await;
    let base = format!("http://{upstream}");
    let config = support::config(&[
        ("D_ID_BASE_URL", base.as_str()),
        ("D_ID_API_KEY", KEY),
        ("HTTP_API_TOKEN", TOKEN),
    ]);
    let srv = Server::start(http_api::wiring::build(&config).await.unwrap()).await;
    let http = client();
    let get = |path: String| {
        let req = http.get(srv.api(&path)).bearer_auth(TOKEN);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };

    // An upstream error whose description carries the header (base64 of the key).
    let (status, body) = get("/talk-status/tlk_echoerr".into()).await;
    assert_eq!(status, 400, "{body}");
    assert_clean("an echoed error description", &body);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_validation_error", "{v}");
    // The description is kept, only the secret is replaced.
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("bad credentials"), "{message}");
    assert!(message.contains(http_api::telemetry::REDACTED), "{message}");

    // The raw key inside a description.
    let (status, body) = get("/talk-status/tlk_echoraw".into()).await;
    assert_eq!(status, 403, "{body}");
    assert_clean("an echoed raw key", &body);

    // A successful answer whose fields carry the header.
    let (status, body) = get("/talk-status/tlk_echook".into()).await;
    assert_eq!(status, 200, "{body}");
    assert_clean("a talk's result_url and error", &body);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "error", "{v}");
    assert!(
        v["result_url"]
            .as_str()
            .unwrap()
            .starts_with("https://r.test/v.mp4?sig="),
        "{v}"
    );

    // A client that puts the bearer token (or the key) into a path gets its error without it.
    for path in [
        format!("/talk-status/{TOKEN}"),
        format!("/no-such-route/{TOKEN}"),
        format!("/talk-status/x{}", forms()[1]),
    ] {
        let (status, body) = get(path.clone()).await;
        assert_clean(&format!("{path} ({status})"), &body);
    }

    srv.stop().await;
}

/// The binary as an operator runs it (its real log writer, `RUST_LOG=debug`): what the
/// echoing upstream sent back is logged with the request id, without the secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_echoed_by_the_upstream_never_reach_the_binary_s_log() {
    let upstream = echoing_upstream().await;
    let base = format!("http://{upstream}");
    let binary = support::Binary::start(&[
        ("D_ID_BASE_URL", base.as_str()),
        ("D_ID_API_KEY", KEY),
        ("HTTP_API_TOKEN", TOKEN),
        ("RUST_LOG", "debug"),
    ])
    .await;
    let addr = binary.addr.clone();
    let resp = client()
        .get(format!(
            "http://{addr}/api/d_id_optimized/talk-status/tlk_echoerr"
        ))
        .bearer_auth(TOKEN)
        .header("x-request-id", "scrub-log-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let log = binary.kill().await;
    assert_clean("the log", &log);
    let failed = log
        .lines()
        .find(|l| l.contains("scrub-log-1") && l.contains("request"))
        .unwrap_or_else(|| panic!("no line for the request:\n{log}"));
    assert!(
        log.lines()
            .any(|l| l.contains("scrub-log-1") && l.contains(http_api::telemetry::REDACTED)),
        "the echoed text is logged, redacted ({failed}):\n{log}"
    );
}
