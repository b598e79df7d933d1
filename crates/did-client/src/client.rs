//! [`DidClient`]: the HTTP exchange, the retry loop, exactly-once create and polling.
//!
//! # Permits
//! Every HTTP exchange (each attempt of each call, each status poll) takes its own permit
//! from the injected limiter at the caller's priority, and gives it back as soon as the answer
//! has been read: parsing, backing off between attempts and waiting between polls all happen
//! without a slot. The original client held one slot for a whole create-and-wait, so ten long
//! renders starved every upload.
//!
//! The permit is released by dropping it, not by `Permit::release().await`: dropping can not
//! be cut short, so no slot is ever left behind (an adapter that needs I/O schedules the
//! release from `Drop`).
//!
//! A caller that hangs up does **not** free the slot of an exchange already under way: once
//! the permit is held, the exchange (send and read the answer) runs in a spawned task that
//! owns the permit, and the call only awaits it. Dropping the call detaches from the task;
//! the task runs to the end of the exchange (bounded by the request or upload timeout) and
//! drops the permit only then, so the limiter never lets more requests be at D-ID than it
//! has slots. Waiting for the permit stays cancellable (nothing is spawned before it is
//! held), so a queued caller that gives up leaves the queue at once. At runtime shutdown the
//! tasks are dropped with the runtime, and their permits with them.
//!
//! # Time
//! Each call has a total deadline ([`DidClientConfig::call_deadline`], uploads
//! [`DidClientConfig::upload_call_deadline`]) covering limiter waits, attempts and backoffs;
//! each exchange also has its own request timeout. Status polls start 0.5 s after the create
//! and double up to the caller's poll interval (`poll_delay`). All clocks are `tokio::time`,
//! so tests can pause them.
//!
//! # Bodies
//! An answer body is read chunk by chunk up to a cap ([`DidClientConfig::max_body_bytes`],
//! [`DidClientConfig::max_error_body_bytes`] for non-2xx); a `Content-Length` past it is
//! refused before reading. A 2xx past the cap is `VideoApiError::Protocol`; an error answer
//! past it keeps its status and loses its words.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use domain::{
    Asset, AssetId, CreatedTalk, Credits, Priority, Talk, TalkId, TalkPage, TalkRequest,
    TalkStatus, Upload, UploadKind,
};
use ports::{ConcurrencyLimiter, VideoApi, VideoApiError, VideoApiStats, WaitOptions};
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::config::{AuthScheme, DidClientConfig};
use crate::errors::{map_status, map_transport, retry_after};
use crate::retry::RetryDecision;
use crate::stats::{Counters, DidClientStats, bump};
use crate::tag;

/// Why a [`DidClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DidClientError {
    /// The base URL is not an `http://` or `https://` URL.
    #[error("invalid D-ID base URL {url:?}: expected an http:// or https:// URL")]
    InvalidBaseUrl {
        /// The rejected URL.
        url: String,
    },
    /// The API key contains characters that cannot go into an HTTP header.
    #[error("the D-ID API key contains characters not allowed in an HTTP header")]
    InvalidApiKey,
    /// reqwest could not build its client (TLS initialisation).
    #[error("could not build the HTTP client")]
    Http(#[source] reqwest::Error),
}

/// The D-ID adapter of [`VideoApi`]: one pooled `reqwest::Client`, a limiter permit per
/// exchange, retries with backoff, exactly-once talk creation. See the crate docs.
pub struct DidClient {
    http: reqwest::Client,
    config: DidClientConfig,
    /// `config.base_url` without a trailing slash.
    base: String,
    /// The prebuilt, sensitive-marked `Authorization` value; `None` when no key is set.
    auth: Option<HeaderValue>,
    limiter: Arc<dyn ConcurrencyLimiter>,
    /// Shared with the exchange tasks, which may outlive the call that started them.
    counters: Arc<Counters>,
}

impl fmt::Debug for DidClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DidClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What is sent in one exchange.
enum Payload {
    Empty,
    Json(Bytes),
    Upload(Upload),
}

/// One upstream operation, replayable for every attempt.
struct Call {
    /// The operation's name in logs.
    op: &'static str,
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    payload: Payload,
}

impl Call {
    fn new(op: &'static str, method: Method, path: String) -> Call {
        Call {
            op,
            method,
            path,
            query: Vec::new(),
            payload: Payload::Empty,
        }
    }

    fn is_upload(&self) -> bool {
        matches!(self.payload, Payload::Upload(_))
    }
}

/// A 2xx or error answer, read to the end.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Bytes,
}

impl Answer {
    /// The answer if it is a success, else its mapped error.
    fn success(self) -> Result<Answer, VideoApiError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(map_status(self.status, self.retry_after, &self.body))
        }
    }

    /// The body as `T`; a body that does not fit is a protocol error.
    fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, VideoApiError> {
        serde_json::from_slice(&self.body).map_err(|e| VideoApiError::Protocol {
            message: format!("invalid {what} body: {e}"),
        })
    }
}

/// `POST /images` / `POST /audios` answer; only `url` is required.
#[derive(Deserialize)]
struct UploadedWire {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// The `Authorization` header for `key`, marked sensitive so no log or `Debug` prints it.
fn auth_header(
    key: &SecretString,
    scheme: AuthScheme,
) -> Result<Option<HeaderValue>, DidClientError> {
    let key = key.expose_secret().trim();
    if key.is_empty() {
        return Ok(None);
    }
    let token = match scheme {
        AuthScheme::Rfc7617 => base64::engine::general_purpose::STANDARD.encode(key),
        AuthScheme::Literal => key.to_owned(),
    };
    let mut value = HeaderValue::from_str(&format!("Basic {token}"))
        .map_err(|_| DidClientError::InvalidApiKey)?;
    value.set_sensitive(true);
    Ok(Some(value))
}

fn talk_path(id: &TalkId) -> String {
    // A TalkId only holds [A-Za-z0-9_-], so it needs no escaping in a path segment.
    format!("/talks/{}", id.as_str())
}

/// The talk with the create tag removed from `user_data`.
fn untagged(mut talk: Talk) -> Talk {
    talk.user_data = tag::strip(talk.user_data.take());
    talk
}

/// The first pause before a status poll: short, because a talk may be done at once.
const FIRST_POLL: Duration = Duration::from_millis(500);

/// The pause before status poll number `poll` (0 for the first): [`FIRST_POLL`] doubling
/// with every poll up to `interval` (never more), then `±jitter` of it from the uniform
/// sample `u` in `[0, 1)`. So a talk that is done at once is seen after ~0.5 s instead of a
/// full interval, and a long render is polled at the interval after a few polls.
fn poll_delay(interval: Duration, poll: u32, jitter: f64, u: f64) -> Duration {
    let nominal = FIRST_POLL
        .saturating_mul(1u32 << poll.min(16))
        .min(interval);
    let jitter = jitter.clamp(0.0, 1.0);
    nominal.mul_f64(1.0 + jitter * (2.0 * u.clamp(0.0, 1.0) - 1.0))
}

/// How much of an answer body is read at most.
#[derive(Clone, Copy)]
struct Caps {
    /// 2xx bodies: past it the answer is a protocol error.
    body: usize,
    /// Error bodies: past it the body is dropped and the status alone decides.
    error_body: usize,
}

/// Sends `request` and reads its answer, at most the cap of its kind; no permit logic here.
async fn send(
    request: reqwest::RequestBuilder,
    counters: &Counters,
    caps: Caps,
) -> Result<Answer, VideoApiError> {
    let transport = |e: reqwest::Error| {
        bump(&counters.transport_errors);
        map_transport(e)
    };
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    counters.response(status);
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let success = (200..300).contains(&status);
    let cap = if success { caps.body } else { caps.error_body };
    let body = match read_capped(&mut response, cap).await.map_err(transport)? {
        Some(body) => body,
        // An error answer is still D-ID's answer: keep the status, drop the words.
        None if !success => Bytes::new(),
        None => {
            return Err(VideoApiError::Protocol {
                message: format!("answer body larger than {cap} bytes"),
            });
        }
    };
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// The body if it is at most `cap` bytes, `None` (without reading further) if it is longer.
/// A `Content-Length` past the cap is refused before a byte of the body is read.
async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    let cap64 = u64::try_from(cap).unwrap_or(u64::MAX);
    if response.content_length().is_some_and(|n| n > cap64) {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

impl DidClient {
    /// Builds the client and its connection pool. Without an API key the client works, but
    /// every call returns [`VideoApiError::NotConfigured`].
    pub fn new(
        config: DidClientConfig,
        limiter: Arc<dyn ConcurrencyLimiter>,
    ) -> Result<DidClient, DidClientError> {
        let base = config.base_url.trim_end_matches('/').to_owned();
        let valid_base = reqwest::Url::parse(&base)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !valid_base {
            return Err(DidClientError::InvalidBaseUrl {
                url: config.base_url.clone(),
            });
        }
        let auth = match &config.api_key {
            Some(key) => auth_header(key, config.auth_scheme)?,
            None => None,
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("talkgate-did-client/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .connect_timeout(config.connect_timeout)
            // D-ID does not redirect; following one could send the key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // Our own policy owns retries; reqwest must not repeat a POST /talks on its own.
            .retry(reqwest::retry::never())
            .build()
            .map_err(DidClientError::Http)?;
        Ok(DidClient {
            http,
            base,
            auth,
            limiter,
            counters: Arc::default(),
            config,
        })
    }

    /// The configuration the client was built with.
    pub fn config(&self) -> &DidClientConfig {
        &self.config
    }

    /// Whether an API key is set (calls are made at all).
    pub fn is_configured(&self) -> bool {
        self.auth.is_some()
    }

    /// Pool configuration and counters since the client was built.
    pub fn stats(&self) -> DidClientStats {
        self.counters.snapshot(&self.config, self.auth.is_some())
    }

    /// One HTTP exchange under one permit.
    ///
    /// The permit is taken here, where waiting for it stays cancellable; from then on the
    /// exchange (send and read the answer) runs in its own task that owns the permit, and
    /// this future only awaits its result. A caller that gives up detaches from the task, but
    /// the request may already be at D-ID, so the slot stays taken until the exchange is
    /// really over (answered, failed, or cut by the request timeout).
    async fn exchange(&self, call: &Call, priority: Priority) -> Result<Answer, VideoApiError> {
        let auth = self.auth.as_ref().ok_or(VideoApiError::NotConfigured)?;
        let (request, timeout) = self.request(call, auth)?;
        let permit = self
            .limiter
            .acquire(priority, self.config.limiter_wait_timeout)
            .await?;
        bump(&self.counters.requests);
        let counters = self.counters.clone();
        let caps = Caps {
            body: self.config.max_body_bytes,
            error_body: self.config.max_error_body_bytes,
        };
        let exchange = tokio::spawn(async move {
            // reqwest's timeout already covers the body; this one also bounds a stalled
            // `chunk()` whatever reqwest does, so the permit can never be held longer.
            let answer = match tokio::time::timeout(timeout, send(request, &counters, caps)).await {
                Ok(answer) => answer,
                Err(_) => {
                    bump(&counters.transport_errors);
                    Err(VideoApiError::Timeout)
                }
            };
            // The slot is given back the moment the bytes are in: parsing, backoff and
            // polling happen without it (see the module docs for why this is a drop).
            drop(permit);
            answer
        });
        match exchange.await {
            Ok(answer) => answer,
            // The task panicked or the runtime is shutting down; either way no answer.
            Err(error) => Err(VideoApiError::Connect {
                message: format!("the exchange task ended without an answer: {error}"),
            }),
        }
    }

    /// Builds the request for `call` and its per-exchange timeout.
    fn request(
        &self,
        call: &Call,
        auth: &HeaderValue,
    ) -> Result<(reqwest::RequestBuilder, Duration), VideoApiError> {
        let timeout = if call.is_upload() {
            self.config.upload_timeout
        } else {
            self.config.request_timeout
        };
        let mut request = self
            .http
            .request(call.method.clone(), format!("{}{}", self.base, call.path))
            .header(AUTHORIZATION, auth.clone())
            .header(ACCEPT, "application/json")
            .timeout(timeout);
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        request = match &call.payload {
            Payload::Empty => request,
            Payload::Json(body) => request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone()),
            Payload::Upload(upload) => {
                // The part carries the sniffed type, not a hard-coded image/jpeg.
                let part = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::from(upload.data().clone()),
                    upload.data().len() as u64,
                )
                .file_name(upload.filename().to_owned())
                .mime_str(upload.media_type().mime())
                .map_err(map_transport)?;
                let form = reqwest::multipart::Form::new().part(upload.kind().field_name(), part);
                request.multipart(form)
            }
        };
        Ok((request, timeout))
    }

    /// One attempt, cut off at `deadline`; a non-2xx answer becomes its error.
    async fn attempt(
        &self,
        call: &Call,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Answer, VideoApiError> {
        match tokio::time::timeout_at(deadline, self.exchange(call, priority)).await {
            Ok(answer) => answer?.success(),
            Err(_) => Err(VideoApiError::Timeout),
        }
    }

    /// The wait before the next attempt, or `None` to give up: the policy's answer, unless
    /// the deadline would pass during the wait.
    fn next_wait(
        &self,
        attempt: u32,
        error: &VideoApiError,
        deadline: Instant,
    ) -> Option<Duration> {
        match self.config.retry.decide(attempt, error, rand::random()) {
            RetryDecision::GiveUp => None,
            RetryDecision::RetryAfter(wait) if Instant::now() + wait < deadline => Some(wait),
            RetryDecision::RetryAfter(wait) => {
                debug!(
                    wait_ms = wait.as_millis() as u64,
                    "no time left before the deadline for another attempt"
                );
                None
            }
        }
    }

    /// Waits `wait` before retry `attempt + 1`, visibly.
    async fn back_off(
        &self,
        op: &'static str,
        attempt: u32,
        wait: Duration,
        error: &VideoApiError,
    ) {
        bump(&self.counters.retries);
        warn!(
            op,
            attempt,
            wait_ms = wait.as_millis() as u64,
            error = %error,
            "D-ID call failed, retrying"
        );
        tokio::time::sleep(wait).await;
    }

    /// `call` with retries, bounded by `deadline`. The caller gets the last typed error.
    async fn execute_until(
        &self,
        call: &Call,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Answer, VideoApiError> {
        let mut attempt = 1;
        loop {
            let error = match self.attempt(call, priority, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let Some(wait) = self.next_wait(attempt, &error, deadline) else {
                return Err(error);
            };
            self.back_off(call.op, attempt, wait, &error).await;
            attempt += 1;
        }
    }

    /// `call` with retries under its configured total deadline.
    async fn execute(&self, call: &Call, priority: Priority) -> Result<Answer, VideoApiError> {
        let budget = if call.is_upload() {
            self.config.upload_call_deadline
        } else {
            self.config.call_deadline
        };
        self.execute_until(call, priority, Instant::now() + budget)
            .await
    }

    async fn upload(
        &self,
        expected: UploadKind,
        upload: Upload,
        priority: Priority,
    ) -> Result<Asset, VideoApiError> {
        if upload.kind() != expected {
            // What D-ID would answer, without paying a round trip for it.
            return Err(VideoApiError::Validation {
                status: 415,
                kind: "UnsupportedMimeTypeError".to_owned(),
                description: format!(
                    "a {} file cannot be uploaded as {expected}",
                    upload.media_type()
                ),
                details: None,
            });
        }
        let (op, path) = match expected {
            UploadKind::Image => ("upload_image", "/images"),
            UploadKind::Audio => ("upload_audio", "/audios"),
        };
        let mut call = Call::new(op, Method::POST, path.to_owned());
        call.payload = Payload::Upload(upload);
        let answer = self.execute(&call, priority).await?;
        let wire: UploadedWire = answer.json("upload")?;
        let url = wire.url.ok_or_else(|| VideoApiError::Protocol {
            message: "upload answer has no url".to_owned(),
        })?;
        Ok(Asset {
            id: wire.id.and_then(|id| AssetId::parse(&id).ok()),
            url,
        })
    }

    async fn delete_asset(
        &self,
        op: &'static str,
        path: String,
        priority: Priority,
    ) -> Result<(), VideoApiError> {
        self.execute(&Call::new(op, Method::DELETE, path), priority)
            .await
            .map(drop)
    }

    /// `GET /talks/{id}` as D-ID sent it (tag still in `user_data`).
    async fn fetch_talk(&self, id: &TalkId, priority: Priority) -> Result<Talk, VideoApiError> {
        let answer = self
            .execute(&Call::new("get_talk", Method::GET, talk_path(id)), priority)
            .await?;
        answer.json("talk")
    }

    /// One page of `GET /talks` as D-ID sent it, bounded by `deadline`.
    async fn fetch_page(
        &self,
        limit: Option<u32>,
        token: Option<String>,
        priority: Priority,
        deadline: Instant,
    ) -> Result<TalkPage, VideoApiError> {
        let mut call = Call::new("list_talks", Method::GET, "/talks".to_owned());
        if let Some(limit) = limit {
            call.query.push(("limit", limit.to_string()));
        }
        if let Some(token) = token {
            call.query.push(("token", token));
        }
        self.execute_until(&call, priority, deadline)
            .await?
            .json("talk list")
    }

    /// Looks for the talk whose raw `user_data` is `tagged` in the newest pages.
    async fn find_created(
        &self,
        tagged: &str,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Option<Talk>, VideoApiError> {
        let mut token = None;
        for _ in 0..self.config.recovery_pages {
            let page = self
                .fetch_page(
                    Some(self.config.recovery_page_size),
                    token,
                    priority,
                    deadline,
                )
                .await?;
            if let Some(talk) = page
                .talks
                .into_iter()
                .find(|t| t.user_data.as_deref() == Some(tagged))
            {
                return Ok(Some(talk));
            }
            match page.token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(None)
    }

    /// `POST /talks`, exactly once: see [`crate::tag`] and the crate docs.
    async fn create(
        &self,
        request: &TalkRequest,
        priority: Priority,
    ) -> Result<CreatedTalk, VideoApiError> {
        bump(&self.counters.creates);
        let deadline = Instant::now() + self.config.call_deadline;
        let token = tag::new_token();
        let tagged = tag::tagged(request.user_data(), &token);
        let body = match &tagged {
            Some(user_data) => request
                .clone()
                .with_user_data(user_data.clone())
                .map_err(|e| VideoApiError::Protocol {
                    message: format!("could not tag the create: {e}"),
                })?,
            None => {
                bump(&self.counters.creates_untagged);
                warn!(
                    "user_data leaves no room for the create token; an ambiguous failure will not be retried"
                );
                request.clone()
            }
        };
        let body = serde_json::to_vec(&body).map_err(|e| VideoApiError::Protocol {
            message: format!("could not encode the talk request: {e}"),
        })?;
        let mut call = Call::new("create_talk", Method::POST, "/talks".to_owned());
        call.payload = Payload::Json(Bytes::from(body));

        let mut attempt = 1;
        loop {
            let error = match self.attempt(&call, priority, deadline).await {
                Ok(answer) => return answer.json("created talk"),
                Err(error) => error,
            };
            // A 4xx (or a 429) is D-ID's answer: nothing was created, the policy decides.
            if !error.is_retryable() {
                let Some(wait) = self.next_wait(attempt, &error, deadline) else {
                    return Err(error);
                };
                self.back_off(call.op, attempt, wait, &error).await;
                attempt += 1;
                continue;
            }
            // Timeout, cut connection or 5xx: the talk may exist. Without a token we cannot
            // tell, and a second talk would be paid twice, so the caller decides.
            let Some(tagged) = tagged.as_deref() else {
                return Err(error);
            };
            let retry = self.next_wait(attempt, &error, deadline);
            // Wait before looking, also after the last attempt: a talk created by a request
            // that timed out may take a moment to show up in the list.
            let wait = retry.unwrap_or_else(|| self.config.retry.backoff(attempt, rand::random()));
            if Instant::now() + wait < deadline {
                if retry.is_some() {
                    self.back_off(call.op, attempt, wait, &error).await;
                } else {
                    tokio::time::sleep(wait).await;
                }
            }
            match self.find_created(tagged, priority, deadline).await {
                Ok(Some(talk)) => {
                    bump(&self.counters.create_recoveries);
                    info!(talk_id = %talk.id, attempt, error = %error, "found the talk an ambiguous create made; not creating again");
                    return Ok(CreatedTalk {
                        id: talk.id,
                        status: talk.status,
                        created_at: talk.created_at,
                    });
                }
                Ok(None) if retry.is_some() => {
                    debug!(attempt, "no talk carries the create token; creating again");
                    attempt += 1;
                }
                Ok(None) => return Err(error),
                Err(lookup) => {
                    // Without the lookup a retry could duplicate: report the create's error.
                    warn!(error = %error, lookup_error = %lookup, "could not check whether the create went through");
                    return Err(error);
                }
            }
        }
    }

    /// Polls `id` until terminal or `deadline`, no permit held between polls.
    async fn wait_for(
        &self,
        id: &TalkId,
        priority: Priority,
        wait: WaitOptions,
        started: Instant,
    ) -> Result<Talk, VideoApiError> {
        let deadline = started + wait.max_wait;
        let jitter = self.config.poll_jitter.clamp(0.0, 1.0);
        let mut polls = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(VideoApiError::TalkTimedOut {
                    talk_id: id.clone(),
                    waited: now - started,
                });
            }
            let pause = poll_delay(wait.poll_interval, polls, jitter, rand::random());
            polls = polls.saturating_add(1);
            tokio::time::sleep_until((now + pause).min(deadline)).await;

            bump(&self.counters.polls);
            match self.fetch_talk(id, priority).await {
                Ok(talk) => match talk.status {
                    TalkStatus::Done => return Ok(untagged(talk)),
                    TalkStatus::Error => {
                        let error = talk.error.unwrap_or_else(|| domain::TalkError {
                            kind: "UnknownError".to_owned(),
                            description: String::new(),
                            details: None,
                        });
                        return Err(VideoApiError::TalkFailed {
                            talk_id: talk.id,
                            kind: error.kind,
                            description: error.description,
                        });
                    }
                    TalkStatus::Rejected => {
                        return Err(VideoApiError::TalkRejected {
                            talk_id: talk.id,
                            description: talk.error.map(|e| e.description).unwrap_or_default(),
                        });
                    }
                    ref status => debug!(%status, "talk not finished yet"),
                },
                // The talk keeps rendering while D-ID (or our own limiter) has a bad moment:
                // keep polling, and if the bound passes the caller still gets the talk id to
                // resume with.
                Err(
                    error @ (VideoApiError::RateLimited { .. }
                    | VideoApiError::Server { .. }
                    | VideoApiError::Timeout
                    | VideoApiError::Connect { .. }
                    | VideoApiError::Limiter(_)),
                ) => {
                    warn!(error = %error, "status poll failed; polling on");
                    if let VideoApiError::RateLimited {
                        retry_after: Some(extra),
                    } = error
                    {
                        tokio::time::sleep_until((Instant::now() + extra).min(deadline)).await;
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[async_trait]
impl VideoApi for DidClient {
    #[tracing::instrument(skip(self, upload), fields(priority = %priority, bytes = upload.data().len(), media_type = %upload.media_type()))]
    async fn upload_image(
        &self,
        upload: Upload,
        priority: Priority,
    ) -> Result<Asset, VideoApiError> {
        self.upload(UploadKind::Image, upload, priority).await
    }

    #[tracing::instrument(skip(self, upload), fields(priority = %priority, bytes = upload.data().len(), media_type = %upload.media_type()))]
    async fn upload_audio(
        &self,
        upload: Upload,
        priority: Priority,
    ) -> Result<Asset, VideoApiError> {
        self.upload(UploadKind::Audio, upload, priority).await
    }

    #[tracing::instrument(skip(self), fields(priority = %priority, asset_id = %id))]
    async fn delete_image(&self, id: &AssetId, priority: Priority) -> Result<(), VideoApiError> {
        self.delete_asset("delete_image", format!("/images/{}", id.as_str()), priority)
            .await
    }

    #[tracing::instrument(skip(self), fields(priority = %priority, asset_id = %id))]
    async fn delete_audio(&self, id: &AssetId, priority: Priority) -> Result<(), VideoApiError> {
        self.delete_asset("delete_audio", format!("/audios/{}", id.as_str()), priority)
            .await
    }

    #[tracing::instrument(skip(self, request), fields(priority = %priority, talk_id = tracing::field::Empty))]
    async fn create_talk(
        &self,
        request: &TalkRequest,
        priority: Priority,
    ) -> Result<CreatedTalk, VideoApiError> {
        let created = self.create(request, priority).await?;
        tracing::Span::current().record("talk_id", tracing::field::display(&created.id));
        Ok(created)
    }

    #[tracing::instrument(skip(self), fields(priority = %priority, talk_id = %id))]
    async fn get_talk(&self, id: &TalkId, priority: Priority) -> Result<Talk, VideoApiError> {
        self.fetch_talk(id, priority).await.map(untagged)
    }

    #[tracing::instrument(skip(self, token), fields(priority = %priority, paged = token.is_some()))]
    async fn list_talks(
        &self,
        limit: Option<u32>,
        token: Option<String>,
        priority: Priority,
    ) -> Result<TalkPage, VideoApiError> {
        let deadline = Instant::now() + self.config.call_deadline;
        let mut page = self.fetch_page(limit, token, priority, deadline).await?;
        page.talks = page.talks.into_iter().map(untagged).collect();
        Ok(page)
    }

    #[tracing::instrument(skip(self), fields(priority = %priority, talk_id = %id))]
    async fn delete_talk(&self, id: &TalkId, priority: Priority) -> Result<Talk, VideoApiError> {
        let answer = self
            .execute(
                &Call::new("delete_talk", Method::DELETE, talk_path(id)),
                priority,
            )
            .await?;
        answer.json::<Talk>("deleted talk").map(untagged)
    }

    #[tracing::instrument(skip(self), fields(priority = %priority))]
    async fn credits(&self, priority: Priority) -> Result<Credits, VideoApiError> {
        let answer = self
            .execute(
                &Call::new("credits", Method::GET, "/credits".to_owned()),
                priority,
            )
            .await?;
        answer.json("credits")
    }

    fn stats(&self) -> VideoApiStats {
        DidClient::stats(self)
    }

    #[tracing::instrument(
        skip(self, wait),
        fields(
            priority = %priority,
            talk_id = %id,
            poll_interval_ms = wait.poll_interval.as_millis() as u64,
            max_wait_ms = wait.max_wait.as_millis() as u64,
        )
    )]
    async fn wait_for_talk(
        &self,
        id: &TalkId,
        priority: Priority,
        wait: WaitOptions,
    ) -> Result<Talk, VideoApiError> {
        // Without a key no poll can succeed: say so now rather than after the first pause.
        if !self.is_configured() {
            return Err(VideoApiError::NotConfigured);
        }
        self.wait_for(id, priority, wait, Instant::now()).await
    }

    #[tracing::instrument(
        skip(self, request, wait),
        fields(
            priority = %priority,
            poll_interval_ms = wait.poll_interval.as_millis() as u64,
            max_wait_ms = wait.max_wait.as_millis() as u64,
            talk_id = tracing::field::Empty,
        )
    )]
    async fn create_talk_and_wait(
        &self,
        request: &TalkRequest,
        priority: Priority,
        wait: WaitOptions,
    ) -> Result<Talk, VideoApiError> {
        let started = Instant::now();
        let created = self.create(request, priority).await?;
        tracing::Span::current().record("talk_id", tracing::field::display(&created.id));
        let span = tracing::debug_span!("poll", talk_id = %created.id);
        self.wait_for(&created.id, priority, wait, started)
            .instrument(span)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use domain::Script;
    use ports::MockConcurrencyLimiter;

    /// A limiter that must never be asked: the assertion is that no call reaches it.
    fn untouchable_limiter() -> Arc<dyn ConcurrencyLimiter> {
        let mut limiter = MockConcurrencyLimiter::new();
        limiter.expect_acquire().never();
        Arc::new(limiter)
    }

    fn request() -> TalkRequest {
        TalkRequest::new(
            None,
            Script::Text {
                input: "hello there".into(),
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn without_a_key_every_call_is_not_configured_and_takes_no_permit() {
        // Port 1 on loopback: if anything were sent, it would fail as Connect, not NotConfigured.
        for key in [
            None,
            Some(SecretString::from("")),
            Some(SecretString::from("  ")),
        ] {
            let config = DidClientConfig::new("http://127.0.0.1:1", key);
            let client = DidClient::new(config, untouchable_limiter()).unwrap();
            assert!(!client.is_configured());
            assert!(!client.stats().api_key_configured);
            let p = Priority::Normal;
            let id = TalkId::parse("tlk_x").unwrap();
            let asset = AssetId::parse("img_x").unwrap();
            let png = Upload::new(
                UploadKind::Image,
                None,
                Bytes::from_static(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0]),
            )
            .unwrap();
            let nc = Err::<(), _>(VideoApiError::NotConfigured);
            assert_eq!(client.upload_image(png, p).await.map(drop), nc);
            assert_eq!(client.delete_image(&asset, p).await, nc);
            assert_eq!(client.delete_audio(&asset, p).await, nc);
            assert_eq!(client.create_talk(&request(), p).await.map(drop), nc);
            assert_eq!(client.get_talk(&id, p).await.map(drop), nc);
            assert_eq!(client.list_talks(None, None, p).await.map(drop), nc);
            assert_eq!(client.delete_talk(&id, p).await.map(drop), nc);
            assert_eq!(client.credits(p).await.map(drop), nc);
            let wait = WaitOptions::default();
            assert_eq!(
                client
                    .create_talk_and_wait(&request(), p, wait)
                    .await
                    .map(drop),
                nc
            );
            assert_eq!(client.wait_for_talk(&id, p, wait).await.map(drop), nc);
            assert_eq!(client.stats().requests, 0);
            assert_eq!(client.stats().retries, 0);
        }
    }

    #[tokio::test]
    async fn an_upload_of_the_wrong_kind_is_refused_locally() {
        let config = DidClientConfig::new("http://127.0.0.1:1", Some("u:p".to_owned().into()));
        let client = DidClient::new(config, untouchable_limiter()).unwrap();
        let wav = Upload::new(
            UploadKind::Audio,
            None,
            Bytes::from_static(b"RIFF\x24\x00\x00\x00WAVEfmt "),
        )
        .unwrap();
        let err = client.upload_image(wav, Priority::Low).await.unwrap_err();
        assert!(
            matches!(err, VideoApiError::Validation { status: 415, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn the_auth_header_is_basic_base64_of_the_key_and_sensitive() {
        let key = SecretString::from("dXNlckBleGFtcGxlLmNvbQ:AbCdEf");
        let value = auth_header(&key, AuthScheme::Rfc7617).unwrap().unwrap();
        assert!(value.is_sensitive());
        assert_eq!(
            value.to_str().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("dXNlckBleGFtcGxlLmNvbQ:AbCdEf")
            )
        );
        assert!(!format!("{value:?}").contains("AbCdEf"));
        let literal = auth_header(&key, AuthScheme::Literal).unwrap().unwrap();
        assert_eq!(
            literal.to_str().unwrap(),
            "Basic dXNlckBleGFtcGxlLmNvbQ:AbCdEf"
        );
        assert!(matches!(
            auth_header(&SecretString::from("bad\nkey"), AuthScheme::Literal),
            Err(DidClientError::InvalidApiKey)
        ));
    }

    #[test]
    fn debug_and_stats_never_show_the_key() {
        let config = DidClientConfig::new(
            "https://api.d-id.com/",
            Some(SecretString::from("someone:s3cr3t-value")),
        );
        let client = DidClient::new(config, untouchable_limiter()).unwrap();
        let debug = format!("{client:?}");
        let stats = serde_json::to_string(&client.stats()).unwrap();
        for text in [&debug, &stats] {
            assert!(!text.contains("s3cr3t"), "{text}");
            let encoded = base64::engine::general_purpose::STANDARD.encode("someone:s3cr3t-value");
            assert!(!text.contains(&encoded), "{text}");
        }
        assert!(client.stats().api_key_configured);
    }

    #[test]
    fn polls_start_short_and_grow_to_the_interval() {
        let ms = Duration::from_millis;
        let check = |interval: Duration, poll: u32, expected: Duration| {
            assert_eq!(
                poll_delay(interval, poll, 0.0, 0.5),
                expected,
                "{interval:?} poll {poll}"
            );
        };
        let five = Duration::from_secs(5);
        check(five, 0, ms(500));
        check(five, 1, ms(1000));
        check(five, 2, ms(2000));
        check(five, 3, ms(4000));
        check(five, 4, five);
        check(five, 40, five);
        // An interval shorter than the first step is used from the start.
        check(ms(100), 0, ms(100));
        check(ms(100), 5, ms(100));
        // Jitter is ±10 % of the step, never more.
        assert_eq!(poll_delay(five, 0, 0.1, 0.0), ms(450));
        assert_eq!(poll_delay(five, 9, 0.1, 1.0), ms(5500));
    }

    #[test]
    fn base_urls_must_be_http_or_https() {
        for bad in ["", "api.d-id.com", "ftp://x", "http://"] {
            let config = DidClientConfig::new(bad, None);
            assert!(
                matches!(
                    DidClient::new(config, untouchable_limiter()),
                    Err(DidClientError::InvalidBaseUrl { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
