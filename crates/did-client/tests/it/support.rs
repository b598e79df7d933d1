//! Test support: a scripted upstream on wiremock, client and limiter builders.
//!
//! `did-fake` is the realistic upstream; the scripted one exists for what a fake should not do
//! on purpose: answer exact bodies (HTML, `{"Message"}`, empty) and exact headers
//! (`Retry-After`), and record every request so tests can check what was sent. `eventually` and
//! the media fixtures come from `test-support`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use did_client::{DidClient, DidClientConfig, RetryPolicy};
use domain::{Script, TalkRequest, Upload, UploadKind};
use limiter_memory::MemoryLimiter;
use ports::{ConcurrencyLimiter, WaitOptions};
use secrecy::SecretString;
use test_support::media;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// How long a test waits for state that settles asynchronously (`test_support::eventually`).
pub const SETTLE: Duration = Duration::from_secs(10);

/// The key tests configure.
pub const KEY: &str = "dXNlckBleGFtcGxlLmNvbQ:AbCdEfGhIjKlMnOpQrStU";

/// What a test reads from a request the upstream saw.
pub trait Sent {
    /// Path with query, as sent.
    fn target(&self) -> String;
    /// The path alone.
    fn path(&self) -> &str;
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&str>;
    /// The body as (lossy) UTF-8.
    fn body_text(&self) -> String;
}

impl Sent for Request {
    fn target(&self) -> String {
        match self.url.query() {
            Some(query) => format!("{}?{query}", self.url.path()),
            None => self.url.path().to_owned(),
        }
    }
    fn path(&self) -> &str {
        self.url.path()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The replies tests script: exact status, body and content type. A header is added with
/// `.insert_header(..)`, a delay before answering with `.set_delay(..)`.
pub mod reply {
    use wiremock::ResponseTemplate;

    /// `status` with `body` as `application/json`.
    pub fn json(status: u16, body: serde_json::Value) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_json(body)
    }
    /// `status` with D-ID's error body `{"kind", "description"}`.
    pub fn error(status: u16, kind: &str, description: &str) -> ResponseTemplate {
        json(
            status,
            serde_json::json!({"kind": kind, "description": description}),
        )
    }
    /// `status` with `body` as `content_type`.
    pub fn raw(status: u16, content_type: &str, body: &str) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_raw(body, content_type)
    }
    /// `status` with no body and no content type.
    pub fn empty(status: u16) -> ResponseTemplate {
        ResponseTemplate::new(status)
    }
}

/// A wiremock responder that hands each request and its index (from 0, in arrival order) to
/// the test's script.
struct Responder<F> {
    next: AtomicUsize,
    reply: F,
}

impl<F> Respond for Responder<F>
where
    F: Fn(&Request, usize) -> ResponseTemplate + Send + Sync + 'static,
{
    fn respond(&self, request: &Request) -> ResponseTemplate {
        (self.reply)(request, self.next.fetch_add(1, Ordering::SeqCst))
    }
}

/// A loopback upstream answering each request with `script(request, index)`, recording every
/// request. Its own server (not one of wiremock's pooled ones, which a late request of an
/// earlier test could reach); stops when dropped.
pub struct Scripted {
    pub base_url: String,
    server: MockServer,
}

impl Scripted {
    pub async fn start(
        script: impl Fn(&Request, usize) -> ResponseTemplate + Send + Sync + 'static,
    ) -> Scripted {
        let server = MockServer::builder().start().await;
        Mock::given(any())
            .respond_with(Responder {
                next: AtomicUsize::new(0),
                reply: script,
            })
            .mount(&server)
            .await;
        Scripted {
            base_url: server.uri(),
            server,
        }
    }

    /// Every request so far, in arrival order.
    pub async fn seen(&self) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .expect("request recording is on by default")
    }

    /// Requests so far.
    pub async fn count(&self) -> usize {
        self.seen().await.len()
    }
}

/// A retry policy with the default shape but millisecond waits, so tests stay fast.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        ..RetryPolicy::default()
    }
}

/// A config for `base_url` with [`KEY`], fast retries and short timeouts.
pub fn config(base_url: &str) -> DidClientConfig {
    DidClientConfig {
        retry: fast_retry(),
        request_timeout: Duration::from_secs(5),
        upload_timeout: Duration::from_secs(5),
        call_deadline: Duration::from_secs(20),
        upload_call_deadline: Duration::from_secs(20),
        limiter_wait_timeout: Duration::from_secs(5),
        ..DidClientConfig::new(base_url, Some(SecretString::from(KEY)))
    }
}

/// A memory limiter with `n` slots.
pub fn limiter(n: u32) -> Arc<MemoryLimiter> {
    Arc::new(MemoryLimiter::new(n))
}

/// A client over `config` and `limiter`.
pub fn client(config: DidClientConfig, limiter: Arc<MemoryLimiter>) -> DidClient {
    let limiter: Arc<dyn ConcurrencyLimiter> = limiter;
    DidClient::new(config, limiter).unwrap()
}

/// A talk body in D-ID's shape, with the quirks: unknown fields, `started_at` without `Z`,
/// `result_format` ".mp4".
pub fn talk_json(id: &str, status: &str) -> serde_json::Value {
    let mut talk = serde_json::json!({
        "id": id,
        "object": "talk",
        "status": status,
        "created_at": "2023-04-10T08:09:09.324Z",
        "started_at": "2023-04-10T08:09:10.622",
        "created_by": "google-oauth2|1",
        "driver_url": "bank://lively/",
        "config": {"stitch": false, "result_format": ".mp4", "align_expand_factor": 0.3},
        "face": {"size": 512},
        "pending_url": "s3://d-id-talks-prod/x/tlk/1.mp4",
    });
    if status == "done" {
        talk["result_url"] = "https://fake.test/result.mp4".into();
    }
    talk
}

/// A text talk saying "hello", with the caller's `user_data` when given.
pub fn hello(user_data: Option<&str>) -> TalkRequest {
    let request = TalkRequest::new(
        None,
        Script::Text {
            input: "hello".into(),
        },
    )
    .unwrap();
    match user_data {
        Some(user_data) => request.with_user_data(user_data.into()).unwrap(),
        None => request,
    }
}

/// Polls every 10 ms for up to 10 s: fast, and never the reason a test fails.
pub fn fast_wait() -> WaitOptions {
    WaitOptions {
        poll_interval: Duration::from_millis(10),
        max_wait: Duration::from_secs(10),
    }
}

/// `test_support`'s PNG as an image upload, named `name` when given.
pub fn png_upload(name: Option<&str>) -> Upload {
    Upload::new(UploadKind::Image, name, Bytes::from_static(media::png())).unwrap()
}

/// `test_support`'s WAV as an audio upload, named `name` when given.
pub fn wav_upload(name: Option<&str>) -> Upload {
    Upload::new(UploadKind::Audio, name, Bytes::from_static(media::wav())).unwrap()
}
