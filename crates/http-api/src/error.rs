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
//! A failed D-ID call's code and words come from the application layer
//! ([`app::failure::describe`], [`FailureCode::of`]), so that a job that failed with it
//! stores the same; its status comes from one table here ([`failure_status`]), also for a
//! job's stored failure. The tests that pin every row are in `error/tests.rs`.

use std::time::Duration;

use app::AppError;
use app::failure::describe;
use bytes::Bytes;
use domain::{InvalidTalkId, ParsePriorityError, TalkId, TalkRequestError, UploadError};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use ports::{FailureCode, LimiterError, VideoApiError};
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

pub use app::failure::MAX_DESCRIPTION_CHARS;

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
    /// A `callback_url` was sent to a service that delivers no callbacks (no
    /// `CALLBACK_SECRET`): accepting it would promise a call that never comes.
    #[error(
        "this service delivers no callbacks (CALLBACK_SECRET is not set); submit without callback_url, or poll the job"
    )]
    CallbacksNotConfigured,
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
    /// The caller's tenant may not ask for this priority (its `max_priority` is lower).
    #[error("this tenant may ask for priorities up to {highest}, not {given}")]
    PriorityNotAllowed {
        /// The priority asked for.
        given: domain::Priority,
        /// The tenant's highest.
        highest: domain::Priority,
    },
    /// An admin route was called by a tenant that is not an admin.
    #[error(
        "admin routes are for admin tenants (HTTP_API_TOKEN, or admin = true in the tenants file)"
    )]
    AdminOnly,
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
    /// The tenant's credit budget cannot take the talk's estimate; nothing was stored or sent.
    #[error(transparent)]
    BudgetExhausted(app::credits::Exhausted),
    /// The credit ledger failed, so a budget could not be checked; nothing was stored.
    #[error("the credit ledger is unavailable: {0}")]
    CreditsUnavailable(String),
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
        use StatusCode as S;
        use TalkRequestError as T;
        use VideoApiError as V;
        match self {
            ApiError::Upstream(e) => {
                let row = failure_row(FailureCode::of(e), upstream_status(e));
                match e {
                    V::RateLimited { retry_after } => {
                        row.retry_after(retry_after.unwrap_or(QUEUE_RETRY_AFTER))
                    }
                    V::Limiter(LimiterError::UpstreamUnavailable { retry_after }) => {
                        row.retry_after(*retry_after)
                    }
                    _ => row,
                }
            }
            ApiError::MalformedJson(_) => row(S::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidBody(_) => row(S::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::CallbacksNotConfigured => {
                row(S::UNPROCESSABLE_ENTITY, "callbacks_not_configured")
            }
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
            // The rest of the body is left unread (as for a timed-out body below), so the
            // connection cannot carry another request: a client that reused it would send
            // into a connection the server is closing.
            ApiError::FileTooLarge { .. } => row(S::PAYLOAD_TOO_LARGE, "file_too_large").close(),
            ApiError::MissingFile => row(S::BAD_REQUEST, "missing_file"),
            ApiError::MalformedMultipart(_) => row(S::BAD_REQUEST, "malformed_multipart"),
            ApiError::PayloadTooLarge { .. } => {
                row(S::PAYLOAD_TOO_LARGE, "payload_too_large").close()
            }
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
            ApiError::PriorityNotAllowed { .. } => row(S::FORBIDDEN, "priority_not_allowed"),
            ApiError::AdminOnly => row(S::FORBIDDEN, "admin_only"),
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
            ApiError::BudgetExhausted(_) => row(S::PAYMENT_REQUIRED, "budget_exhausted"),
            ApiError::CreditsUnavailable(_) => {
                row(S::SERVICE_UNAVAILABLE, "credits_unavailable").retry_after(QUEUE_RETRY_AFTER)
            }
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

    /// What the answer says: the message shown to the caller, and the extra fields next to
    /// `code` and `message` (D-ID's error kind, its capped description, the talk id).
    /// Internal details stay in the log (the server logs the error's `Display` once, with the
    /// request id). D-ID's `details` object is never passed on: it is free form, and an
    /// upstream (or a proxy in front of it) may echo request headers into it.
    fn text(&self) -> (String, Vec<(&'static str, Value)>) {
        let said = |message: String| (message, Vec::new());
        match self {
            ApiError::Upstream(e) => {
                let d = describe(e);
                let mut extra = Vec::new();
                if let Some(t) = d.talk_id {
                    extra.push(("talk_id", json!(t)));
                }
                if let Some(k) = d.upstream_kind {
                    extra.push(("upstream_kind", json!(k)));
                }
                if let Some(t) = d.description {
                    extra.push(("description", json!(t)));
                }
                (d.message, extra)
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
            ApiError::CreditsUnavailable(_) => said(
                "the credit ledger is unavailable, so the budget cannot be checked; retry after \
                 the Retry-After delay"
                    .to_owned(),
            ),
            ApiError::BudgetExhausted(e) => (
                self.to_string(),
                vec![(
                    "budget",
                    json!({
                        "credits": e.budget,
                        "period": e.period.as_str(),
                        "period_key": e.period_key,
                        "spent": e.spent,
                        "reserved": e.reserved,
                        "remaining": e.remaining(),
                        "needed": e.needed,
                        "resets_at": crate::time_text::timestamp(e.resets_at_ms),
                    }),
                )],
            ),
            ApiError::Internal(_) => {
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
        // A missing key is a known, already-warned-about state, not a failure per request;
        // so is an open breaker (logged when it opens, each shed request counted in
        // `talkgate_breaker_shed_total`): an outage must not write a line per refusal.
        self.status().is_server_error()
            && !matches!(
                self,
                ApiError::Upstream(
                    VideoApiError::NotConfigured
                        | VideoApiError::Limiter(LimiterError::UpstreamUnavailable { .. })
                ) | ApiError::ShuttingDown { .. }
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

/// The row of a failure code: the status (and `Retry-After`) a failed D-ID call, or a job
/// that failed with it, answers with. `upstream_status` is D-ID's own status, which tells
/// its 400 and 422 validation errors apart. No arm is a wildcard.
fn failure_row(code: FailureCode, upstream_status: Option<u16>) -> Row {
    use FailureCode as F;
    use StatusCode as S;
    let status = match code {
        // No `Retry-After`: only a restart with a key helps.
        F::UpstreamNotConfigured => S::SERVICE_UNAVAILABLE,
        F::UpstreamAuthFailed => S::BAD_GATEWAY,
        F::UpstreamPermissionDenied => S::FORBIDDEN,
        F::InsufficientCredits => S::PAYMENT_REQUIRED,
        F::NotFound => S::NOT_FOUND,
        F::NotReady => S::CONFLICT,
        F::UpstreamValidationError if upstream_status == Some(400) => S::BAD_REQUEST,
        F::UpstreamValidationError => S::UNPROCESSABLE_ENTITY,
        F::UpstreamRateLimited => S::TOO_MANY_REQUESTS,
        F::UpstreamError | F::UpstreamUnreachable | F::UpstreamProtocolError => S::BAD_GATEWAY,
        F::UpstreamTimeout | F::TalkTimeout => S::GATEWAY_TIMEOUT,
        F::TalkFailed => S::BAD_GATEWAY,
        F::TalkRejected => S::UNPROCESSABLE_ENTITY,
        F::QueueTimeout => {
            return row(S::TOO_MANY_REQUESTS, code.as_str()).retry_after(QUEUE_RETRY_AFTER);
        }
        F::LimiterUnavailable => {
            return row(S::SERVICE_UNAVAILABLE, code.as_str()).retry_after(QUEUE_RETRY_AFTER);
        }
        // The breaker's own cooldown replaces this one where the error has it.
        F::UpstreamUnavailable => {
            return row(S::SERVICE_UNAVAILABLE, code.as_str()).retry_after(Duration::from_secs(1));
        }
        F::InternalError => S::INTERNAL_SERVER_ERROR,
        // A job stored by a newer build, with a code this one does not know.
        F::Unknown => S::BAD_GATEWAY,
    };
    row(status, code.as_str())
}

/// D-ID's own status in an error, where it decides the answer (see [`failure_row`]).
fn upstream_status(e: &VideoApiError) -> Option<u16> {
    match e {
        VideoApiError::Validation { status, .. } => Some(*status),
        _ => None,
    }
}

/// The HTTP status a job that failed with `code` answers with (and shows as `http_status`).
pub fn failure_status(code: FailureCode, upstream_status: Option<u16>) -> StatusCode {
    failure_row(code, upstream_status).status
}

/// The use cases' errors, as the service answers them.
impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        match e {
            AppError::Upstream(e) => ApiError::Upstream(e),
            AppError::QueueFull {
                queued,
                limit,
                retry_after,
            } => ApiError::QueueFull {
                queued,
                limit,
                retry_after,
            },
            AppError::JobNotFound(id) => ApiError::JobNotFound(id.to_string()),
            AppError::InvalidCursor => ApiError::InvalidParameter {
                name: "cursor",
                message: "not a cursor this service handed out for this status filter".to_owned(),
            },
            AppError::JobStore(message) => ApiError::JobStore(message),
            AppError::BudgetExhausted(e) => ApiError::BudgetExhausted(e),
            AppError::CreditsUnavailable(m) => ApiError::CreditsUnavailable(m),
            lost @ AppError::LostJob(_) => ApiError::JobStore(lost.to_string()),
            AppError::IdempotencyKeyInUse => ApiError::IdempotencyKeyInUse,
            AppError::IdempotencyKeyReused { job_id } => ApiError::IdempotencyKeyReused {
                job_id: job_id.to_string(),
            },
            AppError::JobNotCancellable {
                job_id,
                status,
                talk_id,
            } => ApiError::JobNotCancellable {
                job_id: job_id.to_string(),
                status,
                talk_id,
            },
        }
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1 and at most
/// [`MAX_RETRY_AFTER`]. Every `Retry-After` the service sends goes through here.
pub fn retry_after_value(d: Duration) -> HeaderValue {
    let d = d.min(MAX_RETRY_AFTER);
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(s.max(1))
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
mod tests;
