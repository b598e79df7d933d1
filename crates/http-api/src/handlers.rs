//! The D-ID routes: generate a video, upload an image or audio file, read a talk's status.
//!
//! Each handler validates everything it can before a paid upstream call (priority, URLs,
//! config, file type), then calls [`ports::VideoApi`] once (uploads, status), or for a
//! generate the application layer's [`Jobs::generate`](app::Jobs::generate), which records
//! the job and talk ids in the request's [`TalkSlot`](app::TalkSlot) as soon as they exist,
//! so that a cut-off at shutdown can still name them. The limiter slot
//! is taken inside the adapter, per HTTP exchange, so no handler holds a slot while it waits.

use app::{GenerateInput, Generated, Replay};
use bytes::Bytes;
use domain::{CreatedTalk, Priority, Talk, TalkId, UploadKind};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use ports::JobId;
use serde_json::json;

use crate::body::{self, BoxError};
use crate::cutoff::slot_of;
use crate::error::{ApiError, Body, json_response};
use crate::job_routes::{self, TalkBody, require_upstream};
use crate::state::AppState;
use crate::tenants::TenantPolicy;
use crate::upload_cache::Lookup;
use crate::uri::{query_param, status_url};

/// Parses an optional priority (see [`job_routes::priority`]).
fn priority(given: Option<&str>) -> Result<Priority, ApiError> {
    job_routes::priority(given)
}

/// Whether the caller asked for the asynchronous form: `"wait": false` in the body, or
/// `Prefer: respond-async` (RFC 7240). An explicit `"wait"` wins over the header.
fn wants_async(wait: Option<bool>, headers: &HeaderMap) -> (bool, bool) {
    let prefer = headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|p| {
                p.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case("respond-async")
            })
        })
    });
    match wait {
        Some(w) => (!w, false),
        None => (prefer, prefer),
    }
}

/// `POST /generate-video`: runs as a job that this request works on itself
/// ([`Jobs::generate`](app::Jobs::generate)), so the answer and its JSON are as before (plus
/// `job_id`), while a caller that is cut off can re-attach with its `Idempotency-Key` (or
/// follow the job).
pub async fn generate_video<B>(
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
    let headers = req.headers().clone();
    let slot = slot_of(&req);
    let key = job_routes::idempotency_key(&headers, caller)?;
    // Taken before the body is read: a replay that arrives meanwhile is told to wait.
    let accepting = key.as_ref().map(|k| jobs.begin_accepting(k)).transpose()?;
    let body: TalkBody = body::read_json(req, state.settings().json_body_limit).await?;
    let (request, priority) = body.request()?;
    let admission = caller.admission(priority)?;
    if body.has_callback_url() {
        // Silently dropping it would promise a call that never comes.
        return Err(ApiError::InvalidBody(
            "callback_url is taken by POST /jobs only (generate-video answers the outcome itself, or its job at status_url)".to_owned(),
        ));
    }
    let (asynchronous, by_header) = wants_async(body.wait, &headers);
    let input = GenerateInput {
        request,
        admission,
        key,
        asynchronous,
        wait: state.settings().wait,
    };
    Ok(match jobs.generate(input, accepting, &slot).await? {
        Generated::Started { talk, job_id } => accepted(&talk, &job_id, by_header, false),
        Generated::Done { talk, job_id } => {
            let mut body = talk_json(&talk);
            body["message"] = json!("Video generated successfully");
            body["job_id"] = json!(job_id);
            json_response(StatusCode::OK, &body)
        }
        Generated::Replayed(replay) => replayed(replay, by_header),
    })
}

/// A talk's fields in an answer: `id`, `status`, `result_url`, `created_at`.
fn talk_json(talk: &Talk) -> serde_json::Value {
    json!({
        "id": talk.id,
        "status": talk.status,
        "result_url": talk.result_url,
        "created_at": talk.created_at,
    })
}

/// The 202 of an asynchronous generate.
fn accepted(talk: &CreatedTalk, job_id: &JobId, by_header: bool, replayed: bool) -> Response<Body> {
    let talk_id = &talk.id;
    let status_url = status_url(talk_id);
    let mut resp = json_response(
        StatusCode::ACCEPTED,
        &json!({
            "id": talk_id,
            "status": talk.status.as_str(),
            "created_at": talk.created_at,
            "message": "Video generation started",
            "status_url": status_url,
            "job_id": job_id,
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if by_header {
        resp.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
    }
    if replayed {
        job_routes::mark_replayed(&mut resp);
    }
    resp
}

/// A replayed generate's answer: the job's outcome, marked as a replay.
fn replayed(replay: Replay, by_header: bool) -> Response<Body> {
    let mut resp = match replay {
        Replay::Failed(job) => job_routes::failure_response(&job),
        // The first answer again: the create's status and time, as stored.
        Replay::Started { talk, job } => accepted(&talk, &job.id, by_header, true),
        Replay::Done { talk_id, job } => json_response(
            StatusCode::OK,
            &json!({
                "id": talk_id,
                "status": "done",
                "result_url": job.result_url,
                // Jobs stored before the talk's time was kept fall back to the job's.
                "created_at": job
                    .talk_created_at
                    .clone()
                    .unwrap_or_else(|| job_routes::timestamp(job.created_ms)),
                "message": "Video generated successfully",
                "job_id": job.id,
            }),
        ),
    };
    job_routes::mark_replayed(&mut resp);
    resp
}

/// `POST /upload-source-image` and `POST /upload-audio`.
pub async fn upload<B>(
    state: &AppState,
    caller: &TenantPolicy,
    req: Request<B>,
    kind: UploadKind,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    require_upstream(state)?;
    let query_priority = query_param(req.uri(), "priority");
    let form = body::read_upload(req, kind).await?;
    // A `priority` form field wins over the query parameter, so the query is only checked
    // when it is the one that counts (a bad query beside a good form field is not an error).
    let priority = match form.priority.as_deref() {
        Some(p) => priority(Some(p))?,
        None => priority(query_priority.as_deref())?,
    };
    let admission = caller.admission(priority)?;
    let upload = form.upload;
    tracing::info!(
        %kind,
        media_type = %upload.media_type(),
        bytes = upload.data().len(),
        %priority,
        "uploading"
    );
    // The same bytes by the same tenant within the cache's TTL: the stored URL, no call.
    let cached = match state.uploads() {
        Some(cache) => {
            let key = crate::upload_cache::Uploads::key(&caller.tenant, &upload).await;
            let hit = cache.lookup(&key).await;
            Some((cache, key, hit))
        }
        None => None,
    };
    let (asset, cache_header) = match cached {
        Some((_, _, Lookup::Hit(asset))) => {
            tracing::info!(%kind, "upload answered from the cache");
            (asset, Some("hit"))
        }
        other => {
            let video = &state.inner.video;
            // The bytes stay here for the cache's entry (an audio's length).
            let asset = match kind {
                UploadKind::Image => video.upload_image(upload.clone(), &admission).await?,
                UploadKind::Audio => video.upload_audio(upload.clone(), &admission).await?,
            };
            let header = match other {
                Some((cache, key, Lookup::Miss)) => {
                    cache.store(&key, &upload, &asset).await;
                    Some("miss")
                }
                _ => None,
            };
            (asset, header)
        }
    };
    let mut body = json!({ "url": asset.url, "message": "Upload successful" });
    if let Some(id) = asset.id {
        body["id"] = json!(id);
    }
    let mut resp = json_response(StatusCode::OK, &body);
    if let Some(h) = cache_header {
        resp.headers_mut()
            .insert("x-talkgate-upload-cache", http::HeaderValue::from_static(h));
    }
    Ok(resp)
}

/// `GET /talk-status/{talk_id}`: a failed talk is a normal answer with `status: "error"`.
pub async fn talk_status<B>(
    state: &AppState,
    caller: &TenantPolicy,
    req: &Request<B>,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = TalkId::parse(raw_id)?;
    let priority = priority(query_param(req.uri(), "priority").as_deref())?;
    let admission = caller.admission(priority)?;
    require_upstream(state)?;
    let talk = state.inner.video.get_talk(&id, &admission).await?;
    let mut body = talk_json(&talk);
    body["error"] = json!(talk.error);
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(prefer: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(p) = prefer {
            h.insert("prefer", HeaderValue::from_str(p).unwrap());
        }
        h
    }

    #[test]
    fn async_is_chosen_by_body_or_prefer_header() {
        assert_eq!(wants_async(None, &headers(None)), (false, false));
        assert_eq!(wants_async(Some(false), &headers(None)), (true, false));
        assert_eq!(
            wants_async(None, &headers(Some("respond-async"))),
            (true, true)
        );
        assert_eq!(
            wants_async(
                None,
                &headers(Some("handling=lenient, Respond-Async; wait=10"))
            ),
            (true, true)
        );
        assert_eq!(
            wants_async(Some(true), &headers(Some("respond-async"))),
            (false, false)
        );
        assert_eq!(
            wants_async(None, &headers(Some("return=minimal"))),
            (false, false)
        );
    }

    #[test]
    fn priorities_default_to_normal_and_reject_unknown_names() {
        assert_eq!(priority(None).unwrap(), Priority::Normal);
        assert_eq!(priority(Some("HIGH")).unwrap(), Priority::High);
        let err = priority(Some("urgent")).unwrap_err();
        assert_eq!(err.code(), "invalid_priority");
        assert!(err.to_string().contains("low, normal, high, critical"));
    }
}
