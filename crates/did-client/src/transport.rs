//! One HTTP exchange under one permit: building the request, sending it, reading the answer
//! up to its cap. No retries here (that is `execute`).
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
//! # What was sent
//! Every failed exchange says whether D-ID may have acted on it ([`ports::Sent`]): nothing
//! was sent when it failed before the request left (no key, no turn at the pacer, no limiter
//! slot, the deadline passed while waiting, the connection could not be made) or when D-ID
//! answered with a refusal (a 4xx other than 408, a 429 among them); anything else (a
//! timeout or a cut connection once the request was out, a 5xx, a 2xx whose body could not
//! be read) may have been acted on. The retry loop keeps the furthest any attempt got.
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

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use domain::{Admission, Upload};
use ports::{Sent, VideoApiError};
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::client::DidClient;
use crate::errors::{map_status, map_transport, retry_after};
use crate::observe::{self, Exchange, ExchangeOutcome};
use crate::stats::{Counters, bump};

/// What is sent in one exchange.
pub(crate) enum Payload {
    Empty,
    Json(Bytes),
    Upload(Upload),
}

/// One upstream operation, replayable for every attempt.
pub(crate) struct Call {
    /// The operation's name in logs.
    pub(crate) op: &'static str,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(&'static str, String)>,
    pub(crate) payload: Payload,
}

impl Call {
    pub(crate) fn new(op: &'static str, method: Method, path: String) -> Call {
        Call {
            op,
            method,
            path,
            query: Vec::new(),
            payload: Payload::Empty,
        }
    }

    pub(crate) fn is_upload(&self) -> bool {
        matches!(self.payload, Payload::Upload(_))
    }
}

/// A failed attempt (or call): its error, and whether what it sent may have been acted on.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: VideoApiError,
    pub(crate) sent: Sent,
}

impl Failed {
    /// Failed before anything left, or refused by D-ID.
    pub(crate) fn nothing(error: VideoApiError) -> Failed {
        Failed {
            error,
            sent: Sent::Nothing,
        }
    }

    /// Failed after the request may have been acted on.
    pub(crate) fn maybe(error: VideoApiError) -> Failed {
        Failed {
            error,
            sent: Sent::Maybe,
        }
    }
}

impl From<Failed> for ports::CreateFailed {
    fn from(f: Failed) -> ports::CreateFailed {
        ports::CreateFailed {
            error: f.error,
            sent: f.sent,
        }
    }
}

/// A 2xx or error answer, read to the end.
pub(crate) struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Bytes,
}

impl Answer {
    /// The answer if it is a success, else its mapped error (a refusal sent nothing).
    fn success(self) -> Result<Answer, Failed> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(Failed {
                error: map_status(self.status, self.retry_after, &self.body),
                sent: Sent::by_status(self.status),
            })
        }
    }

    /// The body as `T`; a body that does not fit is a protocol error.
    pub(crate) fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, VideoApiError> {
        serde_json::from_slice(&self.body).map_err(|e| VideoApiError::Protocol {
            message: format!("invalid {what} body: {e}"),
        })
    }
}

/// The method's name for spans and labels (the client sends GET, POST and DELETE only).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// Puts how an exchange ended on its span: the status, or the error type (numbers as `i64`:
/// tracing-opentelemetry writes an unsigned value as text, the conventions want integers); a 5xx or no
/// answer marks the span as an error (a 4xx is D-ID's answer, per the client conventions
/// an error too).
fn record_outcome(span: &tracing::Span, outcome: ExchangeOutcome) {
    match outcome {
        ExchangeOutcome::Answered(status) => {
            span.record("http.response.status_code", i64::from(status));
            if status >= 400 {
                span.record("error.type", status.to_string());
                span.record("otel.status_code", "error");
            }
        }
        ExchangeOutcome::Failed(kind) => {
            span.record("error.type", kind);
            span.record("otel.status_code", "error");
        }
    }
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
///
/// A failure to connect sent nothing; any other failure before the answer (a timeout, a cut
/// connection) may have come after D-ID read the request. Once the status is in, what was
/// sent is what the status says ([`Sent::by_status`]), also if the body then fails.
async fn send(
    request: reqwest::RequestBuilder,
    counters: &Counters,
    caps: Caps,
) -> Result<Answer, Failed> {
    let transport = |e: reqwest::Error, sent: Sent| {
        bump(&counters.transport_errors);
        Failed {
            error: map_transport(e),
            sent,
        }
    };
    let mut response = request.send().await.map_err(|e| {
        let sent = if e.is_connect() {
            Sent::Nothing
        } else {
            Sent::Maybe
        };
        transport(e, sent)
    })?;
    let status = response.status().as_u16();
    counters.response(status);
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let success = (200..300).contains(&status);
    let cap = if success { caps.body } else { caps.error_body };
    let body = match read_capped(&mut response, cap)
        .await
        .map_err(|e| transport(e, Sent::by_status(status)))?
    {
        Some(body) => body,
        // An error answer is still D-ID's answer: keep the status, drop the words.
        None if !success => Bytes::new(),
        None => {
            return Err(Failed::maybe(VideoApiError::Protocol {
                message: format!("answer body larger than {cap} bytes"),
            }));
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
    /// One HTTP exchange under one permit.
    ///
    /// The permit is taken here, where waiting for it stays cancellable; from then on the
    /// exchange (send and read the answer) runs in its own task that owns the permit, and
    /// this future only awaits its result. A caller that gives up detaches from the task, but
    /// the request may already be at D-ID, so the slot stays taken until the exchange is
    /// really over (answered, failed, or cut by the request timeout).
    ///
    /// Before the permit the send waits for its turn at the pacer (see [`crate::pace`]), so
    /// no slot is held while it waits; D-ID's answer teaches the pacer. The whole exchange
    /// is cut off at `deadline`; what was sent by then decides the failure's [`Sent`].
    async fn exchange(
        &self,
        call: &Call,
        admission: &Admission,
        attempt: u32,
        deadline: Instant,
    ) -> Result<Answer, Failed> {
        let auth = self
            .auth
            .as_ref()
            .ok_or(Failed::nothing(VideoApiError::NotConfigured))?;
        let (request, timeout) = self.request(call, auth).map_err(Failed::nothing)?;
        let waited = tokio::time::timeout_at(deadline, async {
            let turn = match &self.pacer {
                Some(pacer) => Some(pacer.turn(admission.priority).await?),
                None => None,
            };
            let permit = self
                .limiter
                .acquire(admission, self.config.limiter_wait_timeout)
                .await?;
            Ok::<_, VideoApiError>((turn, permit))
        })
        .await;
        let (turn, permit) = match waited {
            Ok(Ok(granted)) => granted,
            Ok(Err(error)) => return Err(Failed::nothing(error)),
            // Still waiting for a turn or a slot: nothing left.
            Err(_) => return Err(Failed::nothing(VideoApiError::Timeout)),
        };
        bump(&self.counters.requests);
        let template = observe::template(call.op);
        let method = method_name(&call.method);
        let span = tracing::info_span!(
            "upstream",
            otel.name = %format_args!("{method} {template}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            url.template = template,
            server.address = %self.server.0,
            server.port = i64::from(self.server.1),
            did.operation = call.op,
            talkgate.priority = admission.priority.as_str(),
            talkgate.limiter.waited_ms = i64::try_from(permit.waited().as_millis()).unwrap_or(i64::MAX),
            http.request.resend_count = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if attempt > 1 {
            span.record("http.request.resend_count", i64::from(attempt - 1));
        }
        let request = match &self.observer {
            Some(observer) => {
                let mut extra = HeaderMap::new();
                span.in_scope(|| observer.headers(&mut extra));
                // The client's own headers stay the client's.
                for own in [AUTHORIZATION, ACCEPT, CONTENT_TYPE] {
                    extra.remove(own);
                }
                request.headers(extra)
            }
            None => request,
        };
        let counters = self.counters.clone();
        let observer = self.observer.clone();
        let pacer = self.pacer.clone();
        let caps = Caps {
            body: self.config.max_body_bytes,
            error_body: self.config.max_error_body_bytes,
        };
        let op = call.op;
        let waited = permit.waited();
        let exchange = tokio::spawn(
            async move {
                let started = Instant::now();
                // reqwest's timeout already covers the body; this one also bounds a stalled
                // `chunk()` whatever reqwest does, so the permit can never be held longer.
                let answer =
                    match tokio::time::timeout(timeout, send(request, &counters, caps)).await {
                        Ok(answer) => answer,
                        Err(_) => {
                            bump(&counters.transport_errors);
                            Err(Failed::maybe(VideoApiError::Timeout))
                        }
                    };
                // The slot is given back the moment the bytes are in: parsing, backoff and
                // polling happen without it (see the module docs for why this is a drop).
                drop(permit);
                let took = started.elapsed();
                if let (Some(pacer), Some(turn), Ok(answer)) = (&pacer, turn, &answer) {
                    pacer.answered(turn, answer.status, answer.retry_after);
                }
                let outcome = match &answer {
                    Ok(answer) => ExchangeOutcome::Answered(answer.status),
                    Err(failed) => ExchangeOutcome::Failed(observe::error_type(&failed.error)),
                };
                record_outcome(&tracing::Span::current(), outcome);
                if let Some(observer) = observer {
                    observer.exchanged(&Exchange {
                        operation: op,
                        method,
                        template,
                        attempt,
                        outcome,
                        took,
                        waited,
                        retry_after: answer.as_ref().ok().and_then(|a| a.retry_after),
                    });
                }
                answer
            }
            .instrument(span),
        );
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(answer)) => answer,
            // The task panicked or the runtime is shutting down; either way no answer.
            Ok(Err(error)) => Err(Failed::maybe(VideoApiError::Connect {
                message: format!("the exchange task ended without an answer: {error}"),
            })),
            // The request is out: D-ID may act on it although the call stops waiting.
            Err(_) => Err(Failed::maybe(VideoApiError::Timeout)),
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
    pub(crate) async fn attempt(
        &self,
        call: &Call,
        admission: &Admission,
        deadline: Instant,
        attempt: u32,
    ) -> Result<Answer, Failed> {
        self.exchange(call, admission, attempt, deadline)
            .await?
            .success()
    }
}
