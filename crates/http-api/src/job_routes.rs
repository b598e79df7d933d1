//! The jobs routes, the `Idempotency-Key` rules, and how a job is shown.
//!
//! # Idempotency-Key
//! `POST /jobs` and `POST /generate-video` take an optional `Idempotency-Key` header (the
//! IETF httpapi draft "The Idempotency-Key HTTP Header Field"; Stripe's convention): 1 to 255
//! visible ASCII characters, bare or as a quoted string (`"…"`).
//! - the same key with the same request (talk request, priority, callback URL) is the same
//!   job, from any instance and across restarts: a replay answers with that job (header
//!   `Idempotent-Replayed: true`) and never creates a second talk;
//! - the same key with a different request: 422 `idempotency_key_reused`;
//! - a key whose first request is still being accepted on this instance (its body is still
//!   arriving, or it is being stored): 409 `idempotency_key_in_use`, `Retry-After: 1`;
//! - keys are scoped per tenant (the caller's, [`crate::tenants`]): two tenants may use the
//!   same key for two jobs, and neither sees the other's;
//! - a key lives as long as its job: until the job's retention (`JOB_RETENTION_SECS` after
//!   it finished) has passed.
//!
//! A job that failed *before anything reached D-ID* (`queue_timeout`, `limiter_unavailable`,
//! `upstream_rate_limited`) is tried again by a replay of its key on `generate-video`; every
//! other outcome is replayed as it was.

use app::Admitted;
use app::admission::JobRequest;
use bytes::Bytes;
use domain::{CallbackUrl, DestinationPolicy, Priority, Script, TalkConfig, TalkRequest};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use ports::{Callback, FailureCode, Job, JobFailure, JobId, JobStatus, ScopedKey};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::body::{self, BoxError};
use crate::error::{
    ApiError, Body, QUEUE_RETRY_AFTER, failure_status, json_response, retry_after_value,
};
use crate::state::AppState;
use crate::tenants::TenantPolicy;
use crate::uri::{job_url, query_param, status_url};

/// The header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer that replays an earlier request's job.
pub const REPLAYED: &str = "idempotent-replayed";
/// The longest page of `GET /jobs`.
pub const MAX_PAGE: usize = 100;

/// D-ID routes answer 503 at once without a key, before reading (and buffering) a body.
pub(crate) fn require_upstream(state: &AppState) -> Result<(), ApiError> {
    if state.settings().api_key_configured {
        Ok(())
    } else {
        Err(ports::VideoApiError::NotConfigured.into())
    }
}

/// The caller's idempotency key, scoped, if it sent one.
pub fn idempotency_key(
    headers: &HeaderMap,
    caller: &TenantPolicy,
) -> Result<Option<ScopedKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey(
            "send the header once".to_owned(),
        ));
    }
    let raw = value
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey("not visible ASCII".to_owned()))?
        .trim();
    let key = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner,
        None => raw,
    };
    if key.is_empty() || key.len() > ports::jobs::MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::InvalidIdempotencyKey(format!(
            "1 to {} characters",
            ports::jobs::MAX_IDEMPOTENCY_KEY_LEN
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return Err(ApiError::InvalidIdempotencyKey(
            "visible ASCII characters only, no quotes inside".to_owned(),
        ));
    }
    Ok(Some(ScopedKey {
        tenant: caller.tenant.clone(),
        key: key.to_owned(),
    }))
}

/// The talk part of a generate or job body. Unknown fields are ignored, as pydantic did.
#[derive(Debug, Deserialize)]
pub struct TalkBody {
    audio_url: String,
    source_url: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    config: Option<Value>,
    /// `generate-video` only: `false` answers 202 at once.
    #[serde(default)]
    pub wait: Option<bool>,
    /// `jobs` only: where the outcome will be reported.
    #[serde(default)]
    callback_url: Option<String>,
}

/// Parses an optional priority; absent means `normal`, anything unknown is an error.
pub fn priority(given: Option<&str>) -> Result<Priority, ApiError> {
    match given {
        None => Ok(Priority::Normal),
        Some(s) => Ok(s.parse::<Priority>()?),
    }
}

/// The original service's default config, used when the caller sends none: stitch the face
/// back into the image, no padding. A caller's `config` replaces it as a whole.
fn default_config() -> TalkConfig {
    TalkConfig {
        stitch: Some(true),
        pad_audio: Some(0.0),
        ..TalkConfig::default()
    }
}

impl TalkBody {
    /// The checked talk request and priority (everything D-ID would refuse is refused here).
    pub fn request(&self) -> Result<(TalkRequest, Priority), ApiError> {
        let priority = priority(self.priority.as_deref())?;
        let config = match &self.config {
            None | Some(Value::Null) => default_config(),
            Some(v) => serde_json::from_value::<TalkConfig>(v.clone())
                .map_err(|e| ApiError::InvalidConfig(e.to_string()))?,
        };
        let request = TalkRequest::new(
            Some(self.source_url.clone()),
            Script::Audio {
                audio_url: self.audio_url.clone(),
            },
        )?
        .with_config(config)?;
        Ok((request, priority))
    }

    /// Whether the body names a `callback_url` (one that is not `null`).
    pub fn has_callback_url(&self) -> bool {
        self.callback_url.is_some()
    }

    /// The checked `callback_url`: a valid URL that `policy` lets callbacks reach (its
    /// scheme, its host name, a literal address; a name's addresses are checked again at
    /// every delivery).
    pub fn callback_url(
        &self,
        policy: &DestinationPolicy,
    ) -> Result<Option<CallbackUrl>, ApiError> {
        let Some(raw) = self.callback_url.as_deref() else {
            return Ok(None);
        };
        let url = CallbackUrl::parse(raw).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
        policy
            .check_url(&url)
            .map_err(|e| ApiError::InvalidBody(format!("callback_url: {e}")))?;
        Ok(Some(url))
    }
}

pub use crate::time_text::timestamp;

/// How a job is shown.
pub fn view(job: &Job) -> Value {
    json!({
        "job_id": job.id,
        "status": job.status,
        "priority": job.priority.as_str(),
        "talk_id": job.talk_id,
        "result_url": job.result_url,
        "result_expires_at": job.result_expires_ms.map(timestamp),
        "video_seconds": job.video_seconds,
        "error": job.error.as_ref().map(|f| json!({
            "code": f.code,
            "message": f.message,
            "http_status": failure_status(f.code, f.upstream_status).as_u16(),
        })),
        "callback_url": job.callback_url,
        "idempotency_key": job.idempotency.as_ref().map(|k| &k.key),
        "created_at": timestamp(job.created_ms),
        "updated_at": timestamp(job.updated_ms),
        "finished_at": job.finished_ms.map(timestamp),
        "next_attempt_at": (!job.status.is_terminal()).then(|| timestamp(job.next_run_ms)),
        "polls": job.polls,
        "attempts": job.attempts.iter().map(|a| json!({
            "worker": a.worker,
            "action": a.action,
            "at": timestamp(a.at_ms),
            "outcome": a.outcome,
        })).collect::<Vec<_>>(),
        "status_url": job_url(job.id.as_str()),
        "talk_status_url": job.talk_id.as_ref().map(status_url),
        "callback": job.callback.as_ref().map(|cb| callback_view(job, cb)),
    })
}

/// How a job's callback is shown: its event and `webhook-id`, where its delivery stands
/// (the next attempt: while one is under way, when its claim runs out), and its newest
/// attempts.
fn callback_view(job: &Job, cb: &Callback) -> Value {
    json!({
        "event": cb.event,
        "webhook_id": cb.webhook_id,
        "status": cb.status,
        "attempts": cb.attempts,
        "next_attempt_at": ports::jobs::callback_due_at(job).map(timestamp),
        "ended_at": cb.ended_ms.map(timestamp),
        "history": cb.history.iter().map(|a| json!({
            "at": timestamp(a.at_ms),
            "outcome": a.outcome,
            "status": a.status,
            "error": (!a.error.is_empty()).then_some(&a.error),
            "took_ms": a.took_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The body of a job's callback, the same bytes on every attempt: `{"type": <event>,
/// "timestamp": <when the job ended>, "data": <the job as GET /jobs/{id} shows it, without
/// its callback>}` (the Standard Webhooks payload convention).
pub fn callback_body(job: &Job, cb: &Callback) -> Vec<u8> {
    let mut data = view(job);
    if let Some(fields) = data.as_object_mut() {
        fields.remove("callback");
    }
    let body = json!({
        "type": cb.event,
        "timestamp": timestamp(cb.created_ms),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The answer a job's stored failure is replayed with: its status and code, the job id.
pub fn failure_response(job: &Job) -> Response<Body> {
    let failure = job.error.clone().unwrap_or(JobFailure {
        code: FailureCode::InternalError,
        message: "the job failed without a recorded reason".into(),
        upstream_status: None,
    });
    let status = failure_status(failure.code, failure.upstream_status);
    let mut error = json!({
        "code": failure.code,
        "message": failure.message,
        "job_id": job.id,
    });
    if let Some(talk) = &job.talk_id {
        error["talk_id"] = json!(talk);
    }
    let mut resp = json_response(status, &json!({ "error": error }));
    if matches!(status.as_u16(), 429 | 503) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, retry_after_value(QUEUE_RETRY_AFTER));
    }
    resp
}

/// Marks an answer as a replay.
pub fn mark_replayed(resp: &mut Response<Body>) {
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
}

fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).map_err(|_| ApiError::InvalidJobId)
}

/// `POST /jobs`.
pub async fn submit<B>(
    state: &AppState,
    caller: &TenantPolicy,
    req: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require_upstream(state)?;
    let jobs = state.jobs();
    let key = idempotency_key(req.headers(), caller)?;
    // Taken before the body is read: a replay that arrives meanwhile is told to wait.
    let accepting = key.as_ref().map(|k| jobs.begin_accepting(k)).transpose()?;
    let body: TalkBody = body::read_json(req, state.settings().json_body_limit).await?;
    let (request, priority) = body.request()?;
    let admission = caller.admission(priority)?;
    let callback_url = body.callback_url(&state.settings().callback_policy)?;
    if callback_url.is_some() && !state.settings().callbacks_enabled {
        return Err(ApiError::CallbacksNotConfigured);
    }
    let request = JobRequest {
        request,
        admission,
        callback_url,
        key,
    };
    let (job, replayed) = match jobs.enqueue(request, accepting).await? {
        Admitted::New(job) => (job, false),
        Admitted::Replay(job) => (job, true),
    };
    let mut resp = json_response(StatusCode::ACCEPTED, &view(&job));
    if let Ok(v) = HeaderValue::from_str(&job_url(job.id.as_str())) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if replayed {
        mark_replayed(&mut resp);
    }
    Ok(resp)
}

/// `GET /jobs/{id}`: the caller's own jobs only (another tenant's is 404, as if it did
/// not exist).
pub async fn get(
    state: &AppState,
    caller: &TenantPolicy,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = parse_job_id(raw_id)?;
    let job = state.jobs().job_of(&id, &caller.tenant).await?;
    Ok(json_response(StatusCode::OK, &view(&job)))
}

/// `DELETE /jobs/{id}`: cancels a queued job; a cancelled one answers as it is (idempotent).
pub async fn cancel(
    state: &AppState,
    caller: &TenantPolicy,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = parse_job_id(raw_id)?;
    let job = state.jobs().cancel_job(&id, &caller.tenant).await?;
    Ok(json_response(StatusCode::OK, &view(&job)))
}

/// `GET /jobs?status=&limit=&cursor=`: the caller's jobs, newest first.
pub async fn list<B>(
    state: &AppState,
    caller: &TenantPolicy,
    req: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let status = match query_param(req.uri(), "status") {
        None => None,
        Some(s) => Some(
            JobStatus::parse(&s).ok_or_else(|| ApiError::InvalidParameter {
                name: "status",
                message: "one of queued, creating, processing, done, failed, cancelled".to_owned(),
            })?,
        ),
    };
    let limit = match query_param(req.uri(), "limit") {
        None => 20,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::InvalidParameter {
                    name: "limit",
                    message: format!("a whole number from 1 to {MAX_PAGE}"),
                });
            }
        },
    };
    let cursor = match query_param(req.uri(), "cursor") {
        None => None,
        Some(c) => Some(
            open_cursor(&c, status).ok_or_else(|| ApiError::InvalidParameter {
                name: "cursor",
                message: "not a cursor this service handed out for this status filter".to_owned(),
            })?,
        ),
    };
    let page = state
        .jobs()
        .jobs_of(&caller.tenant, status, limit, cursor.as_deref())
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "jobs": page.jobs.iter().map(view).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor.map(|c| seal_cursor(&c, status)),
        }),
    ))
}

/// The filter a cursor belongs to, in its text.
fn filter_name(status: Option<JobStatus>) -> &'static str {
    status.map_or("all", JobStatus::as_str)
}

/// A checksum of a store cursor and its filter (not a secret: it tells a cursor this
/// service handed out from one typed, cut or carried over to another filter).
fn cursor_check(store_cursor: &str, filter: &str) -> String {
    let digest = Sha256::digest(format!("talkgate-cursor\n{filter}\n{store_cursor}"));
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The cursor handed out: `<filter>.<store cursor>.<check>`.
fn seal_cursor(store_cursor: &str, status: Option<JobStatus>) -> String {
    let filter = filter_name(status);
    format!(
        "{filter}.{store_cursor}.{}",
        cursor_check(store_cursor, filter)
    )
}

/// The store cursor inside `cursor`, if it is one [`seal_cursor`] made for `status`.
fn open_cursor(cursor: &str, status: Option<JobStatus>) -> Option<String> {
    let (filter, rest) = cursor.split_once('.')?;
    let (store_cursor, check) = rest.rsplit_once('.')?;
    (filter == filter_name(status) && check == cursor_check(store_cursor, filter))
        .then(|| store_cursor.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_bound_to_their_filter_and_checked() {
        let done = Some(JobStatus::Done);
        let sealed = seal_cursor("s42", done);
        assert_eq!(open_cursor(&sealed, done).as_deref(), Some("s42"));
        assert_eq!(open_cursor(&sealed, None), None, "another filter");
        assert_eq!(open_cursor(&sealed, Some(JobStatus::Queued)), None);
        let all = seal_cursor("s42", None);
        assert_eq!(open_cursor(&all, None).as_deref(), Some("s42"));
        let forged = sealed.replace("s42", "s43");
        assert_eq!(open_cursor(&forged, done), None, "a changed seq");
        for bad in ["", "s42", "done.s42", "done..", "zzz"] {
            assert_eq!(open_cursor(bad, done), None, "{bad:?}");
        }
    }
}
