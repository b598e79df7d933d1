//! The server's transport edges, seen by raw TCP clients: request bodies that never arrive,
//! and connections whose body nobody reads.

use std::net::SocketAddr;
use std::time::Duration;

use ports::MockVideoApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Server};

/// A service whose bodies must arrive within `total` seconds, with pauses of at most `gap`.
async fn timed_service(total: f64, gap: f64) -> Server {
    let settings = http_api::Settings {
        body_read_timeout: Duration::from_secs_f64(total),
        body_idle_timeout: Duration::from_secs_f64(gap),
        ..support::keyed_settings()
    };
    // No expectation: a request whose body is cut must never reach D-ID.
    support::mock_service(MockVideoApi::new(), settings, 2).await
}

/// An answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Header lines, lowercase names.
    headers: Vec<(String, String)>,
    body: String,
    /// Whether the server closed the connection after the answer.
    closed: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

/// Reads one answer from `s`, then waits up to `close_within` for the server to close.
async fn read_answer(s: &mut TcpStream, within: Duration, close_within: Duration) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = tokio::time::timeout(within, async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return i + 4;
            }
            let n = s.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before an answer: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {within:?}"));
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout(within, s.read(&mut chunk))
            .await
            .expect("body in time")
            .expect("read");
        assert!(n > 0, "closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    let closed = matches!(
        tokio::time::timeout(close_within, s.read(&mut chunk)).await,
        Ok(Ok(0) | Err(_))
    );
    Raw {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        closed,
    }
}

const GENERATE: &str = "/api/d_id_optimized/generate-video";

/// A JSON POST head to generate-video with `framing` (`Content-Length: …` or chunked).
fn json_head(framing: &str) -> String {
    format!(
        "POST {GENERATE} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    )
}

async fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

fn assert_cut(raw: &Raw, what: &str) {
    assert_eq!(raw.status, 408, "{what}: {raw:?}");
    assert_eq!(raw.json()["error"]["code"], "request_timeout", "{what}");
    assert!(raw.header("x-request-id").is_some(), "{what}: {raw:?}");
    assert_eq!(raw.header("connection"), Some("close"), "{what}: {raw:?}");
    assert!(raw.closed, "{what}: the connection stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_are_answered_408_and_closed() {
    let srv = timed_service(1.0, 0.5).await;
    let shapes: [(&str, Vec<u8>); 3] = [
        (
            "content-length larger than what is sent",
            format!("{}{{", json_head("Content-Length: 1000")).into_bytes(),
        ),
        (
            "chunked without the final chunk",
            format!("{}1\r\n{{\r\n", json_head("Transfer-Encoding: chunked")).into_bytes(),
        ),
        (
            "a chunk larger than what is sent",
            format!("{}3e8\r\n{{", json_head("Transfer-Encoding: chunked")).into_bytes(),
        ),
    ];
    for (what, bytes) in shapes {
        let mut s = send(srv.addr, &bytes).await;
        // Bounded well below the old behaviour (never), above the 1 s deadline.
        let raw = read_answer(&mut s, Duration::from_secs(5), Duration::from_secs(2)).await;
        assert_cut(&raw, what);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_at_the_whole_body_deadline() {
    // The idle gap alone would never fire: a byte arrives every 100 ms.
    let srv = timed_service(0.8, 10.0).await;
    let mut s = send(srv.addr, json_head("Content-Length: 1000").as_bytes()).await;
    let trickle = async {
        for _ in 0..100 {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The trickle ends when the server stops reading (write error) or after 10 s at most.
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let raw = read_answer(&mut s, Duration::from_secs(5), Duration::from_secs(2)).await;
    assert_cut(&raw, "trickled body");
    assert!(
        raw.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive within"),
        "{raw:?}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_bodies_do_not_hold_the_connection() {
    let srv = timed_service(1.0, 0.5).await;
    // 405 (POST on a GET route) and 404 are answered without reading the body.
    for path in ["/health", "/api/d_id_optimized/nope"] {
        let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nx");
        let mut s = send(srv.addr, head.as_bytes()).await;
        let raw = read_answer(&mut s, Duration::from_secs(5), Duration::from_secs(3)).await;
        assert!(matches!(raw.status, 404 | 405), "{raw:?}");
        assert!(raw.closed, "{path}: the connection stays open: {raw:?}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stalled_bodies_do_not_stop_health_and_each_is_cut_and_closed() {
    // The body deadline is long enough that all 200 are held at once while /health is asked.
    let srv = timed_service(3.0, 3.0).await;
    let stalled = json_head("Content-Length: 1000");
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut s = send(srv.addr, stalled.as_bytes()).await;
        s.write_all(b"{").await.unwrap();
        held.push(s);
    }
    let mut s = send(srv.addr, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let raw = read_answer(&mut s, Duration::from_secs(5), Duration::ZERO).await;
    assert_eq!(raw.status, 200, "{raw:?}");
    assert_eq!(raw.json()["status"], "healthy", "{raw:?}");
    // Every held connection is then answered 408 and closed by the server, so none of them
    // keeps its file descriptor (the exhaustion the fix prevents). Generous bounds: this is
    // about "cut at all", the deadline's precision is tested above.
    let answers = futures_util::future::join_all(held.into_iter().map(|mut s| async move {
        read_answer(&mut s, Duration::from_secs(20), Duration::from_secs(5)).await
    }))
    .await;
    for (i, raw) in answers.iter().enumerate() {
        assert_eq!(raw.status, 408, "connection {i}: {raw:?}");
        assert_eq!(raw.json()["error"]["code"], "request_timeout", "{raw:?}");
        assert!(raw.closed, "connection {i} was left open: {raw:?}");
    }
    srv.stop().await;
}

/// Everything the server sends for `request` on a fresh connection, until it closes.
async fn exchange_raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closes after answering")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 9110 §9.3.2: HEAD answers like GET, without a body; `Allow` names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_a_get_route_answers_like_get_without_a_body() {
    let srv = timed_service(5.0, 5.0).await;
    let get = reqwest::get(srv.url("/health")).await.unwrap();
    assert_eq!(get.status(), 200);
    let get_len = get.bytes().await.unwrap().len();
    for path in ["/health", "/api/d_id_optimized/health", "/ready"] {
        let answer = exchange_raw(
            srv.addr,
            &format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a complete head");
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(body.is_empty(), "{path}: HEAD sent a body: {body:?}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("x-request-id:"), "{head}");
        assert!(lower.contains("content-type: application/json"), "{head}");
        if path == "/health" {
            assert!(
                lower.contains(&format!("content-length: {get_len}")),
                "{head} (GET body: {get_len} bytes)"
            );
        }
    }
    let answer = exchange_raw(
        srv.addr,
        "TRACE /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get, head"),
        "{answer}"
    );
    srv.stop().await;
}

/// Asserts `raw` is the service's own JSON error `code` with `status`, a request id, and the
/// connection closed after it.
fn assert_json_error(raw: &Raw, status: u16, code: &str, what: &str) {
    assert_eq!(raw.status, status, "{what}: {raw:?}");
    assert_eq!(raw.json()["error"]["code"], code, "{what}: {raw:?}");
    assert!(
        raw.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {raw:?}"
    );
    assert!(raw.header("x-request-id").is_some(), "{what}: {raw:?}");
    assert_eq!(
        raw.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    assert!(raw.closed, "{what}: the connection stays open: {raw:?}");
}

/// The `talk-status` path with an id of `n` characters.
fn long_path(n: usize) -> String {
    format!("/api/d_id_optimized/talk-status/tlk_{}", "a".repeat(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_the_json_error_shape_with_a_request_id() {
    let srv = timed_service(5.0, 5.0).await;
    let within = Duration::from_secs(5);

    // A 20 KB request target: over the service's 8 KiB, under hyper's fixed 64 KiB.
    let head = format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", long_path(20_000));
    let mut s = send(srv.addr, head.as_bytes()).await;
    let raw = read_answer(&mut s, within, within).await;
    assert_json_error(&raw, 414, "uri_too_long", "20 KB URL");

    // 1000 header fields: over the service's 100, under what hyper is set to parse.
    let many: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let head = format!("GET /health HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    let mut s = send(srv.addr, head.as_bytes()).await;
    let raw = read_answer(&mut s, within, within).await;
    assert_json_error(&raw, 431, "request_header_fields_too_large", "1000 headers");

    // One header of about 20 KB: over the service's 16 KiB of header fields.
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let mut s = send(srv.addr, head.as_bytes()).await;
    let raw = read_answer(&mut s, within, within).await;
    assert_json_error(&raw, 431, "request_header_fields_too_large", "20 KB header");

    // A client's own request id is kept on these answers too.
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: t\r\nX-Request-Id: mine-1\r\n\r\n",
        long_path(9_000)
    );
    let mut s = send(srv.addr, head.as_bytes()).await;
    let raw = read_answer(&mut s, within, within).await;
    assert_json_error(&raw, 414, "uri_too_long", "9 KB URL");
    assert_eq!(raw.header("x-request-id"), Some("mine-1"));

    // They are counted, under route labels from the closed set (never the long path).
    let metrics = reqwest::get(srv.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = crate::labels::series(&metrics);
    let rejected: Vec<_> = series
        .iter()
        .filter(|(_, _, status)| status == "414" || status == "431")
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    for (method, route, _) in rejected {
        assert_eq!(method, "GET");
        assert!(
            ["/health", "/api/d_id_optimized/talk-status/{talk_id}"].contains(&route.as_str()),
            "{route}"
        );
    }
    srv.stop().await;
}

/// What hyper rejects before the service sees a request keeps hyper's own bare answer (as
/// the README's Errors section and `server`'s module docs say), and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_rejects_itself_get_its_bare_answer_and_a_closed_connection() {
    let srv = timed_service(5.0, 5.0).await;
    let within = Duration::from_secs(5);
    let cases = [
        (
            "a bare CR in a header value",
            "GET /health HTTP/1.1\r\nHost: t\r\nX-Bad: a\rb\r\n\r\n".to_owned(),
            400,
        ),
        (
            "a 100 KB URL (over hyper's fixed 65,534 bytes)",
            format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", long_path(100_000)),
            414,
        ),
    ];
    for (what, head, status) in cases {
        let mut s = send(srv.addr, head.as_bytes()).await;
        let raw = read_answer(&mut s, within, within).await;
        assert_eq!(raw.status, status, "{what}: {raw:?}");
        assert!(raw.body.is_empty(), "{what}: {raw:?}");
        assert!(raw.header("x-request-id").is_none(), "{what}: {raw:?}");
        assert!(raw.closed, "{what}: the connection stays open: {raw:?}");
    }
    srv.stop().await;
}

/// A declared `Content-Length` above the route's limit is 413 at once, without waiting for
/// a body that would be thrown away (it was 408 after the idle timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_above_the_limit_is_413_at_once() {
    // Long timeouts: only the declared length can answer within the test's bound.
    let srv = timed_service(60.0, 30.0).await;
    let mut s = send(srv.addr, json_head("Content-Length: 10000000").as_bytes()).await;
    let raw = read_answer(&mut s, Duration::from_secs(5), Duration::from_secs(5)).await;
    assert_eq!(raw.status, 413, "{raw:?}");
    assert_eq!(raw.json()["error"]["code"], "payload_too_large", "{raw:?}");
    // The body was never read: the connection is not offered for another request.
    assert_eq!(raw.header("connection"), Some("close"), "{raw:?}");

    let upload = "POST /api/d_id_optimized/upload-audio HTTP/1.1\r\nHost: t\r\n\
                  Content-Type: multipart/form-data; boundary=x\r\n\
                  Content-Length: 104857600\r\n\r\n";
    let mut s = send(srv.addr, upload.as_bytes()).await;
    let raw = read_answer(&mut s, Duration::from_secs(5), Duration::from_secs(5)).await;
    assert_eq!(raw.status, 413, "{raw:?}");
    assert_eq!(raw.header("connection"), Some("close"), "{raw:?}");
    srv.stop().await;
}
