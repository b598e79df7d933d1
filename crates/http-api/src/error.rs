//! The service's one error type and the one place where errors become HTTP responses.
//!
//! Every handler returns `Result<_, ApiError>`; [`ApiError::into_response`] decides status,
//! stable snake_case `code`, message and headers. Status, code and headers come from one
//! table with a row per variant (`ApiError::row`), the words from one more match
//! (`ApiError::text`). Nothing else in the crate picks an error status. Messages are written for the API's caller: D-ID's own descriptions are passed on
//! (they explain what to fix), internals are not. No variant carries a credential; text from
//! outside that might (an upstream echo) is scrubbed from every body by `server::handle`.
//! The full cause is logged once, by the request span in `server`, at the level
//! [`ApiError::log_level_is_error`] asks for.
//!
//! The file stays whole although it is long: the variants, their table and their words are
//! one contract that is read and changed together, and more than half of it is the tests
//! that pin every row.

use std::time::Duration;

use bytes::Bytes;
use domain::{InvalidTalkId, ParsePriorityError, TalkId, TalkRequestError, UploadError};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use ports::{LimiterError, VideoApiError};
use serde_json::{Value, json};

/// The response body type of the whole service.
pub type Body = Full<Bytes>;

/// `Retry-After` sent with a limiter-queue timeout: long enough for a slot to turn over,
/// short enough that an interactive client is not told to go away for a minute.
pub const QUEUE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// `Retry-After` sent with `shutting_down`: another replica, or this one restarted, can
/// take the request within seconds.
pub const SHUTDOWN_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The longest `Retry-After` ever sent to a client: an upstream that asks for days is
/// passed on as this (a client told to wait longer would rather see an error it can act on).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The longest upstream `description` passed on to a client, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 300;

/// A request body that did not arrive in time (what a `body::TimedBody` fails with;
/// defined here, beside the variant that carries it, so that this module needs
/// nothing from `body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyTimeout {
    /// The whole body took longer than the read deadline.
    #[error("the request body did not arrive within {0:?}")]
    Deadline(Duration),
    /// No byte of the body arrived for the idle gap.
    #[error("the request body stalled: no data for {0:?}")]
    Idle(Duration),
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A D-ID call (or its limiter slot) failed.
    #[error(transparent)]
    Upstream(#[from] VideoApiError),
    /// The body was not valid JSON (syntax).
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    /// The JSON was well formed but did not have the expected shape.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// A query parameter had a value the route cannot use.
    #[error("invalid query parameter {name}: {message}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A priority was none of the four names.
    #[error(transparent)]
    InvalidPriority(#[from] ParsePriorityError),
    /// A talk id in the path was unsafe or malformed.
    #[error(transparent)]
    InvalidTalkId(#[from] InvalidTalkId),
    /// The talk request broke one of D-ID's rules (checked before any paid call).
    #[error(transparent)]
    InvalidTalkRequest(#[from] TalkRequestError),
    /// `config` of a generate request was not a valid talk config.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// An uploaded file was empty, too large or of the wrong type.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// The `file` part was larger than the route accepts (found while streaming it).
    #[error("the {kind} file is larger than the {max} bytes allowed")]
    FileTooLarge {
        /// The upload kind.
        kind: domain::UploadKind,
        /// The limit, in bytes.
        max: usize,
    },
    /// The multipart body had no `file` part.
    #[error("missing multipart field \"file\"")]
    MissingFile,
    /// The multipart body was malformed.
    #[error("malformed multipart body: {0}")]
    MalformedMultipart(String),
    /// The body was larger than the route accepts.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request body did not arrive in time (`BODY_READ_TIMEOUT_SECS`,
    /// `BODY_IDLE_TIMEOUT_SECS`); the connection is closed after the answer.
    #[error(transparent)]
    BodyTimeout(#[from] BodyTimeout),
    /// The request target (path and query) is longer than the service accepts
    /// ([`MAX_URI_BYTES`](crate::head::MAX_URI_BYTES)); the connection is closed after the
    /// answer.
    #[error("the request target is {len} bytes long; at most {limit} are accepted")]
    UriTooLong {
        /// The target's length, in bytes.
        len: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request has more header fields than the service accepts
    /// ([`MAX_HEADERS`](crate::head::MAX_HEADERS)); the connection is closed after the answer.
    #[error("the request has {count} header fields; at most {limit} are accepted")]
    TooManyHeaders {
        /// How many header fields the request has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The request's header fields are larger in all than the service accepts
    /// ([`MAX_HEADER_BYTES`](crate::head::MAX_HEADER_BYTES)); the connection is closed
    /// after the answer.
    #[error("the request's header fields are {size} bytes in all; at most {limit} are accepted")]
    HeadersTooLarge {
        /// Their size: names, values and the 4 bytes of `: ` and CRLF per field.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request's `Content-Type` is not what the route reads.
    #[error("unsupported content type: expected {expected}")]
    UnsupportedMediaType {
        /// What the route reads.
        expected: &'static str,
    },
    /// No route has this path.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed; allowed: {}", .allow.join(", "))]
    MethodNotAllowed {
        /// The allowed methods.
        allow: &'static [&'static str],
    },
    /// The bearer token is missing or wrong.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// An admin route was called while no `HTTP_API_TOKEN` is configured.
    #[error("admin routes are disabled: set HTTP_API_TOKEN to enable them")]
    AdminDisabled,
    /// The shutdown grace elapsed while the request was still running; the connection is
    /// closed after the answer.
    #[error("cut off at shutdown{}", .talk_id.as_ref().map(|id| format!(" while talk {id} was rendering")).unwrap_or_default())]
    ShuttingDown {
        /// The talk the request had created (a generate), which D-ID keeps rendering.
        talk_id: Option<TalkId>,
        /// The job the request ran (a generate): re-attach with it or the same
        /// `Idempotency-Key`.
        job_id: Option<String>,
    },
    /// A bug: a handler panicked or an impossible state was reached.
    #[error("internal error: {0}")]
    Internal(String),
    /// No job has this id (or it was purged after its retention).
    #[error("no job {0}")]
    JobNotFound(String),
    /// A job id in the path was malformed.
    #[error("invalid job id: a job id is job_ followed by 22 characters of [A-Za-z0-9]")]
    InvalidJobId,
    /// The `Idempotency-Key` header was malformed.
    #[error("invalid Idempotency-Key: {0}")]
    InvalidIdempotencyKey(String),
    /// The key was used before with a different request.
    #[error(
        "this Idempotency-Key was used with a different request; use a new key for a new request"
    )]
    IdempotencyKeyReused {
        /// The job the key belongs to.
        job_id: String,
    },
    /// The first request with this key is still being accepted.
    #[error("a request with this Idempotency-Key is still being accepted; retry shortly")]
    IdempotencyKeyInUse,
    /// The job queue is full.
    #[error("the job queue is full ({queued} of {limit} queued)")]
    QueueFull {
        /// Jobs queued now.
        queued: u64,
        /// The limit (`JOB_QUEUE_MAX`).
        limit: u64,
        /// When there will likely be room, from the recent drain rate.
        retry_after: Duration,
    },
    /// The job store failed; nothing is known to have been written.
    #[error("job store unavailable: {0}")]
    JobStore(String),
    /// The job cannot be cancelled in its state.
    #[error("job {job_id} is {status} and cannot be cancelled")]
    JobNotCancellable {
        /// The job.
        job_id: String,
        /// Its state.
        status: &'static str,
        /// Its talk, if one was created (and paid).
        talk_id: Option<TalkId>,
    },
}

/// How one error is answered, apart from its words: the status, the stable code, and the
/// headers the status calls for. [`ApiError::row`] holds one of these per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    status: StatusCode,
    code: &'static str,
    /// `Retry-After`, when waiting is what helps.
    retry_after: Option<Duration>,
    /// `Connection: close`: the connection cannot (or should not) carry another request.
    close: bool,
    /// `Allow`, for a 405.
    allow: Option<&'static [&'static str]>,
    /// `WWW-Authenticate: Bearer realm="talkgate"`, for a 401.
    challenge: bool,
}

/// A row with no extra header.
fn row(status: StatusCode, code: &'static str) -> Row {
    Row {
        status,
        code,
        retry_after: None,
        close: false,
        allow: None,
        challenge: false,
    }
}

impl Row {
    fn retry_after(self, after: Duration) -> Row {
        Row {
            retry_after: Some(after),
            ..self
        }
    }

    fn close(self) -> Row {
        Row {
            close: true,
            ..self
        }
    }

    fn allow(self, allow: &'static [&'static str]) -> Row {
        Row {
            allow: Some(allow),
            ..self
        }
    }

    fn challenge(self) -> Row {
        Row {
            challenge: true,
            ..self
        }
    }
}

impl ApiError {
    /// The table: status, code and headers of every variant. No arm is a wildcard, so a new
    /// variant (here or in a port's error) does not compile until it has its row.
    fn row(&self) -> Row {
        use LimiterError as L;
        use StatusCode as S;
        use TalkRequestError as T;
        use VideoApiError as V;
        match self {
            ApiError::Upstream(e) => match e {
                // No `Retry-After`: only a restart with a key helps.
                V::NotConfigured => row(S::SERVICE_UNAVAILABLE, "upstream_not_configured"),
                V::Unauthorized { .. } => row(S::BAD_GATEWAY, "upstream_auth_failed"),
                V::Forbidden { .. } => row(S::FORBIDDEN, "upstream_permission_denied"),
                V::InsufficientCredits => row(S::PAYMENT_REQUIRED, "insufficient_credits"),
                V::NotFound { .. } => row(S::NOT_FOUND, "not_found"),
                V::NotReady { .. } => row(S::CONFLICT, "not_ready"),
                V::Validation { status: 400, .. } => {
                    row(S::BAD_REQUEST, "upstream_validation_error")
                }
                V::Validation { .. } => row(S::UNPROCESSABLE_ENTITY, "upstream_validation_error"),
                V::RateLimited { retry_after } => {
                    row(S::TOO_MANY_REQUESTS, "upstream_rate_limited")
                        .retry_after(retry_after.unwrap_or(QUEUE_RETRY_AFTER))
                }
                V::Server { .. } => row(S::BAD_GATEWAY, "upstream_error"),
                V::Connect { .. } => row(S::BAD_GATEWAY, "upstream_unreachable"),
                V::Protocol { .. } => row(S::BAD_GATEWAY, "upstream_protocol_error"),
                V::Timeout => row(S::GATEWAY_TIMEOUT, "upstream_timeout"),
                V::TalkTimedOut { .. } => row(S::GATEWAY_TIMEOUT, "talk_timeout"),
                V::TalkFailed { .. } => row(S::BAD_GATEWAY, "talk_failed"),
                V::TalkRejected { .. } => row(S::UNPROCESSABLE_ENTITY, "talk_rejected"),
                V::Limiter(L::Timeout { .. }) => {
                    row(S::TOO_MANY_REQUESTS, "queue_timeout").retry_after(QUEUE_RETRY_AFTER)
                }
                V::Limiter(L::Unavailable { .. }) => {
                    row(S::SERVICE_UNAVAILABLE, "limiter_unavailable")
                        .retry_after(QUEUE_RETRY_AFTER)
                }
                V::Limiter(L::InvalidLimit { .. }) => {
                    row(S::INTERNAL_SERVER_ERROR, "internal_error")
                }
            },
            ApiError::MalformedJson(_) => row(S::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidBody(_) => row(S::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::InvalidParameter { .. } => row(S::BAD_REQUEST, "invalid_parameter"),
            ApiError::InvalidPriority(_) => row(S::BAD_REQUEST, "invalid_priority"),
            ApiError::InvalidTalkId(_) => row(S::BAD_REQUEST, "invalid_talk_id"),
            ApiError::InvalidTalkRequest(e) => match e {
                T::InvalidSourceUrl => row(S::UNPROCESSABLE_ENTITY, "invalid_source_url"),
                T::InvalidAudioUrl => row(S::UNPROCESSABLE_ENTITY, "invalid_audio_url"),
                T::TextLength { .. } | T::PadAudio { .. } | T::UserData | T::Webhook => {
                    row(S::UNPROCESSABLE_ENTITY, "invalid_config")
                }
            },
            ApiError::InvalidConfig(_) => row(S::UNPROCESSABLE_ENTITY, "invalid_config"),
            ApiError::Upload(e) => match e {
                UploadError::Empty { .. } => row(S::BAD_REQUEST, "empty_file"),
                UploadError::TooLarge { .. } => row(S::PAYLOAD_TOO_LARGE, "file_too_large"),
                UploadError::UnsupportedType { .. } => {
                    row(S::UNSUPPORTED_MEDIA_TYPE, "unsupported_file_type")
                }
            },
            ApiError::FileTooLarge { .. } => row(S::PAYLOAD_TOO_LARGE, "file_too_large"),
            ApiError::MissingFile => row(S::BAD_REQUEST, "missing_file"),
            ApiError::MalformedMultipart(_) => row(S::BAD_REQUEST, "malformed_multipart"),
            ApiError::PayloadTooLarge { .. } => row(S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            // The rest of the body was never read, so the connection cannot carry another
            // request (and a client that sent an oversized head gets no second try on it, as
            // with hyper's own 414 and 431); hyper closes it after this answer.
            ApiError::BodyTimeout(_) => row(S::REQUEST_TIMEOUT, "request_timeout").close(),
            ApiError::UriTooLong { .. } => row(S::URI_TOO_LONG, "uri_too_long").close(),
            ApiError::TooManyHeaders { .. } | ApiError::HeadersTooLarge { .. } => row(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_header_fields_too_large",
            )
            .close(),
            ApiError::UnsupportedMediaType { .. } => {
                row(S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::RouteNotFound(_) => row(S::NOT_FOUND, "route_not_found"),
            ApiError::MethodNotAllowed { allow } => {
                row(S::METHOD_NOT_ALLOWED, "method_not_allowed").allow(allow)
            }
            ApiError::Unauthorized => row(S::UNAUTHORIZED, "unauthorized").challenge(),
            ApiError::AdminDisabled => row(S::FORBIDDEN, "admin_disabled"),
            // This process serves nothing more: the next request goes to a new connection
            // (and, behind a balancer, to another replica).
            ApiError::ShuttingDown { .. } => row(S::SERVICE_UNAVAILABLE, "shutting_down")
                .retry_after(SHUTDOWN_RETRY_AFTER)
                .close(),
            ApiError::Internal(_) => row(S::INTERNAL_SERVER_ERROR, "internal_error"),
            ApiError::JobNotFound(_) => row(S::NOT_FOUND, "job_not_found"),
            ApiError::InvalidJobId => row(S::BAD_REQUEST, "invalid_job_id"),
            ApiError::InvalidIdempotencyKey(_) => row(S::BAD_REQUEST, "invalid_idempotency_key"),
            ApiError::IdempotencyKeyReused { .. } => {
                row(S::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::IdempotencyKeyInUse => {
                row(S::CONFLICT, "idempotency_key_in_use").retry_after(Duration::from_secs(1))
            }
            ApiError::QueueFull { retry_after, .. } => {
                row(S::TOO_MANY_REQUESTS, "job_queue_full").retry_after(*retry_after)
            }
            ApiError::JobStore(_) => {
                row(S::SERVICE_UNAVAILABLE, "job_store_unavailable").retry_after(QUEUE_RETRY_AFTER)
            }
            ApiError::JobNotCancellable { .. } => row(S::CONFLICT, "job_not_cancellable"),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.row().status
    }

    /// The stable, documented snake_case code (the contract clients switch on).
    pub fn code(&self) -> &'static str {
        self.row().code
    }

    /// The message shown to the caller (what a failed job stores).
    pub(crate) fn public_message(&self) -> String {
        self.text().0
    }

    /// What the answer says: the message shown to the caller, and the extra fields next to
    /// `code` and `message` (D-ID's error kind, its capped description, the talk id).
    /// Internal details stay in the log (the server logs the error's `Display` once, with the
    /// request id). D-ID's `details` object is never passed on: it is free form, and an
    /// upstream (or a proxy in front of it) may echo request headers into it.
    fn text(&self) -> (String, Vec<(&'static str, Value)>) {
        use VideoApiError as V;
        let said = |message: String| (message, Vec::new());
        match self {
            ApiError::Upstream(V::NotConfigured) => said(
                "D-ID is not configured on this service: set D_ID_API_KEY and restart".to_owned(),
            ),
            ApiError::Upstream(V::Unauthorized { .. }) => said(
                "D-ID rejected this service's credentials; an operator must check D_ID_API_KEY"
                    .to_owned(),
            ),
            ApiError::Upstream(V::Forbidden { description }) => said(format!(
                "D-ID refused permission: {}",
                client_text(description)
            )),
            ApiError::Upstream(V::NotFound { description }) => {
                // D-ID's description is usually "not found" itself: say it once.
                let d = client_text(description);
                said(
                    if d.is_empty() || d.to_ascii_lowercase().contains("not found") {
                        format!("D-ID: {}", if d.is_empty() { "not found" } else { &d })
                    } else {
                        format!("not found at D-ID: {d}")
                    },
                )
            }
            ApiError::Upstream(V::NotReady { description }) => said(format!(
                "D-ID resource not ready: {}",
                client_text(description)
            )),
            ApiError::Upstream(V::Validation {
                kind, description, ..
            }) => (
                format!(
                    "D-ID rejected the request ({}): {}",
                    client_text(kind),
                    client_text(description)
                ),
                vec![("upstream_kind", json!(client_text(kind)))],
            ),
            ApiError::Upstream(V::RateLimited { .. }) => said(
                "D-ID is rate limiting this service; retry after the Retry-After delay".to_owned(),
            ),
            ApiError::Upstream(V::Server { status }) => said(format!(
                "D-ID failed (HTTP {status}) after retries; retry later"
            )),
            ApiError::Upstream(V::Connect { .. }) => {
                said("D-ID could not be reached; retry later".to_owned())
            }
            ApiError::Upstream(V::Protocol { .. }) => {
                said("D-ID sent an answer this service could not read; retry later".to_owned())
            }
            ApiError::Upstream(V::TalkFailed {
                talk_id,
                kind,
                description,
            }) => (
                format!(
                    "talk {talk_id} failed ({}): {}",
                    client_text(kind),
                    client_text(description)
                ),
                vec![
                    ("talk_id", json!(talk_id)),
                    ("upstream_kind", json!(client_text(kind))),
                    ("description", json!(client_text(description))),
                ],
            ),
            ApiError::Upstream(V::TalkRejected {
                talk_id,
                description,
            }) => (
                format!("talk {talk_id} was rejected: {}", client_text(description)),
                vec![
                    ("talk_id", json!(talk_id)),
                    ("description", json!(client_text(description))),
                ],
            ),
            ApiError::Upstream(V::TalkTimedOut { talk_id, waited }) => (
                format!(
                    "talk {talk_id} was not finished after {:.1}s; poll its status to follow it",
                    waited.as_secs_f64()
                ),
                vec![("talk_id", json!(talk_id))],
            ),
            ApiError::Upstream(V::Limiter(LimiterError::Timeout { priority, waited })) => {
                said(format!(
                    "all D-ID slots stayed busy for {:.1}s ({priority} priority); retry later",
                    waited.as_secs_f64()
                ))
            }
            ApiError::Upstream(V::Limiter(LimiterError::Unavailable { .. })) => {
                said("the concurrency limiter is unavailable; retry later".to_owned())
            }
            ApiError::ShuttingDown { talk_id, job_id } => {
                let mut extra = Vec::new();
                let mut message = match talk_id {
                    Some(id) => {
                        extra.push(("talk_id", json!(id)));
                        extra.push(("status_url", json!(crate::uri::status_url(id))));
                        format!(
                            "the service is shutting down; talk {id} was created and keeps \
                             rendering at D-ID: follow it at status_url instead of generating it \
                             again"
                        )
                    }
                    None => {
                        "the service is shutting down; retry after the Retry-After delay".to_owned()
                    }
                };
                if let Some(job) = job_id {
                    extra.push(("job_id", json!(job)));
                    extra.push(("job_url", json!(crate::uri::job_url(job))));
                    // With its talk created the request gave its claim back (`jobs::Hold`);
                    // mid-create it keeps it, as the create may still land at D-ID.
                    let when = if talk_id.is_some() {
                        "as soon as this request has given its claim back (at the latest once \
                         the claim runs out, JOB_LEASE_SECS)"
                    } else {
                        "once its claim runs out (JOB_LEASE_SECS)"
                    };
                    message.push_str(&format!(
                        "; job {job} is finished by another instance, or by this one after a \
                         restart, {when}: re-attach with the same Idempotency-Key or follow \
                         job_url"
                    ));
                }
                (message, extra)
            }
            ApiError::IdempotencyKeyReused { job_id } => {
                (self.to_string(), vec![("job_id", json!(job_id))])
            }
            ApiError::JobNotCancellable {
                job_id,
                status,
                talk_id,
            } => {
                let mut extra = vec![("job_id", json!(job_id)), ("status", json!(status))];
                let message = match talk_id {
                    Some(t) => {
                        extra.push(("talk_id", json!(t)));
                        format!(
                            "job {job_id} is {status}: its talk {t} was created at D-ID and is \
                             paid; it cannot be un-paid by cancelling"
                        )
                    }
                    None if *status == "creating" => format!(
                        "job {job_id} is {status}: its talk may exist at D-ID already (and be \
                         paid), so it cannot be cancelled"
                    ),
                    None => format!("job {job_id} is {status} and cannot be cancelled"),
                };
                (message, extra)
            }
            ApiError::JobStore(_) => {
                said("the job store is unavailable; retry after the Retry-After delay".to_owned())
            }
            ApiError::Internal(_)
            | ApiError::Upstream(V::Limiter(LimiterError::InvalidLimit { .. })) => {
                said("internal error; the request id identifies the log entry".to_owned())
            }
            // The remaining messages are fixed texts without upstream words.
            other => said(other.to_string()),
        }
    }

    /// Whether this is our fault or the upstream's (logged at `error`), rather than the
    /// caller's (logged at `info`). A request cut off at shutdown is neither: the server logs
    /// it at `warn`.
    pub fn log_level_is_error(&self) -> bool {
        // A missing key is a known, already-warned-about state, not a failure per request.
        self.status().is_server_error()
            && !matches!(
                self,
                ApiError::Upstream(VideoApiError::NotConfigured) | ApiError::ShuttingDown { .. }
            )
    }

    /// The response: status, `{"error": {"code", "message", …}}`, and the headers of the
    /// error's row (`Retry-After`, `Allow`, `WWW-Authenticate`, `Connection`).
    pub fn into_response(self) -> Response<Body> {
        let row = self.row();
        let (message, extra) = self.text();
        let mut error = serde_json::Map::new();
        error.insert("code".into(), json!(row.code));
        error.insert("message".into(), json!(message));
        for (k, v) in extra {
            error.insert(k.into(), v);
        }
        let mut resp = json_response(row.status, &json!({ "error": error }));
        let headers = resp.headers_mut();
        if let Some(after) = row.retry_after {
            headers.insert(header::RETRY_AFTER, retry_after_value(after));
        }
        if let Some(v) = row
            .allow
            .and_then(|a| HeaderValue::from_str(&a.join(", ")).ok())
        {
            headers.insert(header::ALLOW, v);
        }
        if row.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"talkgate\""),
            );
        }
        if row.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1 and at most
/// [`MAX_RETRY_AFTER`]. Every `Retry-After` the service sends goes through here.
pub fn retry_after_value(d: Duration) -> HeaderValue {
    let d = d.min(MAX_RETRY_AFTER);
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(s.max(1))
}

/// Upstream text as shown to a client: control characters replaced by spaces, trimmed, and
/// at most [`MAX_DESCRIPTION_CHARS`] characters (with `…` when cut).
fn client_text(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.chars().count() <= MAX_DESCRIPTION_CHARS {
        cleaned.to_owned()
    } else {
        let mut cut: String = cleaned.chars().take(MAX_DESCRIPTION_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{Priority, TalkId, UploadKind};
    use http_body_util::BodyExt;

    fn body(resp: Response<Body>) -> Value {
        let bytes = futures_util::FutureExt::now_or_never(resp.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn check(err: ApiError, status: u16, code: &str) {
        let resp = err.into_response();
        assert_eq!(resp.status().as_u16(), status, "{code}");
        let v = body(resp);
        assert_eq!(v["error"]["code"], code);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    fn talk_id() -> TalkId {
        TalkId::parse("tlk_abc").unwrap()
    }

    #[test]
    fn every_upstream_error_has_its_status_and_code() {
        use VideoApiError as V;
        check(V::NotConfigured.into(), 503, "upstream_not_configured");
        check(
            V::Unauthorized { status: 401 }.into(),
            502,
            "upstream_auth_failed",
        );
        check(
            V::Forbidden {
                description: "no stitch".into(),
            }
            .into(),
            403,
            "upstream_permission_denied",
        );
        check(V::InsufficientCredits.into(), 402, "insufficient_credits");
        check(
            V::NotFound {
                description: "x".into(),
            }
            .into(),
            404,
            "not_found",
        );
        check(
            V::NotReady {
                description: "x".into(),
            }
            .into(),
            409,
            "not_ready",
        );
        let validation = |status| V::Validation {
            status,
            kind: "ValidationError".into(),
            description: "bad source".into(),
            details: None,
        };
        check(validation(400).into(), 400, "upstream_validation_error");
        check(validation(422).into(), 422, "upstream_validation_error");
        check(
            V::RateLimited { retry_after: None }.into(),
            429,
            "upstream_rate_limited",
        );
        check(V::Server { status: 503 }.into(), 502, "upstream_error");
        check(V::Timeout.into(), 504, "upstream_timeout");
        check(
            V::Connect {
                message: "refused".into(),
            }
            .into(),
            502,
            "upstream_unreachable",
        );
        check(
            V::Protocol {
                message: "x".into(),
            }
            .into(),
            502,
            "upstream_protocol_error",
        );
        check(
            V::TalkFailed {
                talk_id: talk_id(),
                kind: "FaceError".into(),
                description: "no face".into(),
            }
            .into(),
            502,
            "talk_failed",
        );
        check(
            V::TalkRejected {
                talk_id: talk_id(),
                description: "moderation".into(),
            }
            .into(),
            422,
            "talk_rejected",
        );
        check(
            V::TalkTimedOut {
                talk_id: talk_id(),
                waited: Duration::from_secs(1),
            }
            .into(),
            504,
            "talk_timeout",
        );
        check(
            V::Limiter(LimiterError::Timeout {
                priority: Priority::Low,
                waited: Duration::from_secs(1),
            })
            .into(),
            429,
            "queue_timeout",
        );
        check(
            V::Limiter(LimiterError::Unavailable {
                message: "down".into(),
            })
            .into(),
            503,
            "limiter_unavailable",
        );
    }

    #[test]
    fn local_errors_have_their_status_and_code() {
        check(ApiError::MalformedJson("eof".into()), 400, "malformed_json");
        check(
            ApiError::InvalidBody("missing".into()),
            422,
            "invalid_request",
        );
        check(
            "urgent".parse::<Priority>().unwrap_err().into(),
            400,
            "invalid_priority",
        );
        check(
            TalkId::parse("../x").unwrap_err().into(),
            400,
            "invalid_talk_id",
        );
        check(
            TalkRequestError::InvalidSourceUrl.into(),
            422,
            "invalid_source_url",
        );
        check(
            TalkRequestError::InvalidAudioUrl.into(),
            422,
            "invalid_audio_url",
        );
        check(
            UploadError::Empty {
                kind: UploadKind::Image,
            }
            .into(),
            400,
            "empty_file",
        );
        check(
            UploadError::TooLarge {
                kind: UploadKind::Audio,
                size: 9,
                max: 1,
            }
            .into(),
            413,
            "file_too_large",
        );
        check(
            UploadError::UnsupportedType {
                kind: UploadKind::Image,
                detected: None,
            }
            .into(),
            415,
            "unsupported_file_type",
        );
        check(ApiError::MissingFile, 400, "missing_file");
        check(
            ApiError::InvalidParameter {
                name: "max_age_seconds",
                message: "\"null\" is not a number".into(),
            },
            400,
            "invalid_parameter",
        );
        check(
            ApiError::PayloadTooLarge { limit: 1 },
            413,
            "payload_too_large",
        );
        check(
            ApiError::UnsupportedMediaType {
                expected: "application/json",
            },
            415,
            "unsupported_media_type",
        );
        check(ApiError::RouteNotFound("/x".into()), 404, "route_not_found");
        check(
            ApiError::MethodNotAllowed { allow: &["GET"] },
            405,
            "method_not_allowed",
        );
        check(ApiError::Unauthorized, 401, "unauthorized");
        check(
            BodyTimeout::Idle(Duration::from_secs(1)).into(),
            408,
            "request_timeout",
        );
        check(ApiError::AdminDisabled, 403, "admin_disabled");
        check(
            ApiError::ShuttingDown {
                talk_id: None,
                job_id: None,
            },
            503,
            "shutting_down",
        );
        check(
            ApiError::UriTooLong {
                len: 9000,
                limit: 8192,
            },
            414,
            "uri_too_long",
        );
        check(
            ApiError::TooManyHeaders {
                count: 101,
                limit: 100,
            },
            431,
            "request_header_fields_too_large",
        );
        check(
            ApiError::HeadersTooLarge {
                size: 20_000,
                limit: 16_384,
            },
            431,
            "request_header_fields_too_large",
        );
        check(
            ApiError::Internal("boom at x.rs:1".into()),
            500,
            "internal_error",
        );
    }

    #[test]
    fn headers_follow_the_status() {
        let r = ApiError::MethodNotAllowed {
            allow: &["GET", "HEAD"],
        }
        .into_response();
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        let r = ApiError::from(VideoApiError::Limiter(LimiterError::Timeout {
            priority: Priority::Normal,
            waited: Duration::from_secs(60),
        }))
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        let r = ApiError::from(VideoApiError::RateLimited {
            retry_after: Some(Duration::from_millis(1500)),
        })
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = ApiError::Unauthorized.into_response();
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        let r = ApiError::TooManyHeaders {
            count: 101,
            limit: 100,
        }
        .into_response();
        assert_eq!(r.headers()[header::CONNECTION], "close");
        let r = ApiError::ShuttingDown {
            talk_id: None,
            job_id: None,
        }
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn the_less_common_rows_keep_their_status_code_and_headers() {
        use VideoApiError as V;
        let close = Some(("connection", "close"));
        let retry = Some(("retry-after", "5"));
        for (err, status, code, header) in [
            (
                ApiError::FileTooLarge {
                    kind: UploadKind::Image,
                    max: 1,
                },
                413,
                "file_too_large",
                None,
            ),
            (
                ApiError::MalformedMultipart("x".into()),
                400,
                "malformed_multipart",
                None,
            ),
            (
                ApiError::InvalidConfig("x".into()),
                422,
                "invalid_config",
                None,
            ),
            (
                TalkRequestError::TextLength { len: 1 }.into(),
                422,
                "invalid_config",
                None,
            ),
            (
                TalkRequestError::PadAudio { value: 99.0 }.into(),
                422,
                "invalid_config",
                None,
            ),
            (
                TalkRequestError::UserData.into(),
                422,
                "invalid_config",
                None,
            ),
            (
                TalkRequestError::Webhook.into(),
                422,
                "invalid_config",
                None,
            ),
            (
                V::Limiter(LimiterError::InvalidLimit { given: 0 }).into(),
                500,
                "internal_error",
                None,
            ),
            (
                V::Limiter(LimiterError::Unavailable {
                    message: "down".into(),
                })
                .into(),
                503,
                "limiter_unavailable",
                retry,
            ),
            (
                BodyTimeout::Deadline(Duration::from_secs(1)).into(),
                408,
                "request_timeout",
                close,
            ),
            (
                ApiError::UriTooLong {
                    len: 9000,
                    limit: 8192,
                },
                414,
                "uri_too_long",
                close,
            ),
            (
                ApiError::HeadersTooLarge {
                    size: 20_000,
                    limit: 16_384,
                },
                431,
                "request_header_fields_too_large",
                close,
            ),
        ] {
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status, "{code}");
            let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
            match header {
                Some((name, value)) => {
                    assert_eq!(names, ["content-type", name], "{code}");
                    assert_eq!(resp.headers()[name], value, "{code}");
                }
                None => assert_eq!(names, ["content-type"], "{code}"),
            }
            assert_eq!(body(resp)["error"]["code"], code);
        }
    }

    #[test]
    fn a_generate_cut_off_at_shutdown_names_its_talk_and_where_to_follow_it() {
        let err = ApiError::ShuttingDown {
            talk_id: Some(talk_id()),
            job_id: None,
        };
        assert!(!err.log_level_is_error(), "logged at warn by the server");
        assert!(err.to_string().contains("tlk_abc"), "{err}");
        let v = body(err.into_response());
        assert_eq!(v["error"]["code"], "shutting_down");
        assert_eq!(v["error"]["talk_id"], "tlk_abc");
        assert_eq!(
            v["error"]["status_url"],
            "/api/d_id_optimized/talk-status/tlk_abc"
        );
        assert!(v["error"]["message"].as_str().unwrap().contains("tlk_abc"));
        let v = body(
            ApiError::ShuttingDown {
                talk_id: None,
                job_id: None,
            }
            .into_response(),
        );
        assert_eq!(v["error"].get("talk_id"), None);
        assert_eq!(v["error"].get("status_url"), None);
    }

    #[test]
    fn internal_details_and_talk_failures_are_reported_as_documented() {
        let v = body(ApiError::Internal("secret path /etc/x".into()).into_response());
        assert!(!v.to_string().contains("/etc/x"));
        let v = body(
            ApiError::from(VideoApiError::TalkFailed {
                talk_id: talk_id(),
                kind: "FaceError".into(),
                description: "no face found".into(),
            })
            .into_response(),
        );
        assert_eq!(v["error"]["talk_id"], "tlk_abc");
        assert_eq!(v["error"]["upstream_kind"], "FaceError");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no face found")
        );
    }
}

#[cfg(test)]
mod client_text_tests {
    use super::*;
    use http_body_util::BodyExt;

    fn message_and_headers(err: ApiError) -> (String, http::HeaderMap) {
        let resp = err.into_response();
        let headers = resp.headers().clone();
        let bytes = futures_util::FutureExt::now_or_never(resp.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        (v["error"]["message"].as_str().unwrap().to_owned(), headers)
    }

    #[test]
    fn transport_failures_do_not_show_the_internal_url_or_the_error_chain() {
        let hostile = "error sending request for url (http://10.0.0.7:8443/talks): \
                       client error (Connect): tcp connect error: Connection refused (os error 111)";
        for err in [
            VideoApiError::Connect {
                message: hostile.into(),
            },
            VideoApiError::Protocol {
                message: hostile.into(),
            },
        ] {
            let (msg, _) = message_and_headers(err.into());
            for leak in ["10.0.0.7", "8443", "http://", "os error", "tcp", "Connect)"] {
                assert!(!msg.contains(leak), "{leak:?} in {msg:?}");
            }
            assert!(msg.contains("D-ID"), "{msg}");
        }
    }

    #[test]
    fn rate_limit_messages_have_no_debug_text_and_retry_after_is_capped() {
        let (msg, headers) = message_and_headers(
            VideoApiError::RateLimited {
                retry_after: Some(Duration::from_secs(99_999_999)),
            }
            .into(),
        );
        assert!(!msg.contains("Some("), "{msg}");
        assert!(!msg.contains("99999999"), "{msg}");
        assert_eq!(headers[header::RETRY_AFTER], "300");
        let (msg, headers) =
            message_and_headers(VideoApiError::RateLimited { retry_after: None }.into());
        assert!(!msg.contains("None"), "{msg}");
        assert_eq!(headers[header::RETRY_AFTER], "5");
    }

    #[test]
    fn a_timed_out_talk_message_has_no_debug_duration() {
        let (msg, _) = message_and_headers(
            VideoApiError::TalkTimedOut {
                talk_id: domain::TalkId::parse("tlk_abc").unwrap(),
                waited: Duration::from_millis(1234),
            }
            .into(),
        );
        assert!(!msg.contains("1.234s"), "{msg}");
        assert!(msg.contains("tlk_abc"), "{msg}");
    }

    #[test]
    fn upstream_not_configured_sends_no_retry_after() {
        let (_, headers) = message_and_headers(VideoApiError::NotConfigured.into());
        assert!(!headers.contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn the_not_found_message_says_not_found_once() {
        for description in ["not found", "Not Found", "talk not found"] {
            let (msg, _) = message_and_headers(
                VideoApiError::NotFound {
                    description: description.into(),
                }
                .into(),
            );
            assert_eq!(
                msg.to_ascii_lowercase().matches("not found").count(),
                1,
                "{msg}"
            );
        }
    }
}
