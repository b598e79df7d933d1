//! The D-ID routes: generate a video, upload an image or audio file, read a talk's status.
//!
//! Each handler validates everything it can before a paid upstream call (priority, URLs,
//! config, file type), then calls [`ports::VideoApi`]: once, or for a synchronous generate
//! `create_talk` then `wait_for_talk`, recording the talk id in the request's
//! [`TalkSlot`] in between so that a cut-off at shutdown can still name it. The limiter slot
//! is taken inside the adapter, per HTTP exchange, so no handler holds a slot while it waits.

use bytes::Bytes;
use domain::{Priority, TalkId, UploadKind};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use ports::{Job, JobId, JobStatus, NewJob, Submitted, VideoApiError, WaitOptions};
use serde_json::json;
use tokio::time::Instant;

use crate::body::{self, BoxError};
use crate::cutoff::TalkSlot;
use crate::error::{ApiError, Body, json_response};
use crate::job_routes::{self, TalkBody, require_upstream};
use crate::jobs::{CreateMode, failure_is_retryable, fingerprint, new_job_id, now_ms};
use crate::state::AppState;
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

/// `POST /generate-video`: runs as a job (see [`crate::jobs`]) that this request works on
/// itself, so the answer and its JSON are as before (plus `job_id`), while a caller that is
/// cut off can re-attach with its `Idempotency-Key` (or follow the job).
pub async fn generate_video<B>(
    state: &AppState,
    req: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require_upstream(state)?;
    let jobs = state.jobs();
    let headers = req.headers().clone();
    let slot = TalkSlot::of(&req);
    let key = job_routes::idempotency_key(&headers, state)?;
    let accepting = key.as_ref().map(|k| jobs.begin_accepting(k)).transpose()?;
    let body: TalkBody = body::read_json(req, state.settings().json_body_limit).await?;
    let (request, priority) = body.request()?;
    let (asynchronous, by_header) = wants_async(body.wait, &headers);
    let started = Instant::now();
    let fp = fingerprint(&request, priority, None);
    let owner = jobs.inline_owner();
    let new = NewJob {
        id: new_job_id(),
        priority,
        request,
        callback_url: None,
        idempotency: key,
        fingerprint: fp.clone(),
        now_ms: now_ms(),
        lease: Some(jobs.lease_for(&owner)),
        status: JobStatus::Creating,
    };
    let submitted = jobs.submit(new).await?;
    drop(accepting);
    let job = match submitted {
        Submitted::Created(job) => job,
        Submitted::Existing(job) if job.fingerprint != fp => {
            return Err(ApiError::IdempotencyKeyReused {
                job_id: job.id.to_string(),
            });
        }
        Submitted::Existing(job) if failure_is_retryable(&job) => {
            tracing::info!(job_id = %job.id, "replayed key of a job that failed before D-ID: trying again");
            jobs.retake(job, &owner)
                .await
                .map_err(|e| jobs.api_error(e))?
        }
        Submitted::Existing(job) => {
            return reattach(state, job, asynchronous, by_header, &slot).await;
        }
    };
    slot.record_job(job.id.as_str());
    let job_id = job.id.clone();
    let hold = jobs.hold_for_caller(&job_id, &owner, job.idempotency.is_some(), &slot);
    let mode = if asynchronous {
        CreateMode::InlineAsync
    } else {
        CreateMode::InlineWait
    };
    let (_, created) = jobs.create(job, &owner, mode).await.map_err(|e| match e {
        ports::JobStoreError::NotFound(id) => crate::jobs::lost_job(&id),
        other => jobs.api_error(other),
    })?;
    let created = match created {
        Ok(created) => created,
        Err(e) => {
            // The create's failure is written (the job failed, its claim let go).
            hold.done();
            return Err(e.into());
        }
    };
    let talk_id = created.id.clone();
    slot.record(&talk_id);

    if asynchronous {
        // The create let go of the claim: the workers poll the talk from here.
        hold.done();
        tracing::info!(%talk_id, %job_id, %priority, "talk created (asynchronous)");
        return Ok(accepted(
            &talk_id,
            &job_id,
            Some(created.status.as_str()),
            created.created_at.clone(),
            by_header,
            false,
        ));
    }

    tracing::info!(%talk_id, %job_id, %priority, "talk created; waiting for it");
    // `MAX_WAIT_SECS` counts from the start of the create, as documented.
    let configured = state.settings().wait;
    let wait = WaitOptions {
        max_wait: configured.max_wait.saturating_sub(started.elapsed()),
        ..configured
    };
    let outcome = state
        .inner
        .video
        .wait_for_talk(&talk_id, priority, wait)
        .await
        .map_err(|e| match e {
            VideoApiError::TalkTimedOut { talk_id, .. } => VideoApiError::TalkTimedOut {
                talk_id,
                waited: started.elapsed(),
            },
            other => other,
        });
    match jobs.finish_inline(&job_id, &outcome).await {
        Ok(_) => hold.done(),
        // The caller still gets its answer; the job is finished by the next owner (the
        // hold gives the claim back if the job is still processing).
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "could not record the end of a generate's job")
        }
    }
    let talk = outcome?;
    tracing::info!(talk_id = %talk.id, %job_id, %priority, "talk done");
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": talk.id,
            "status": talk.status,
            "result_url": talk.result_url,
            "created_at": talk.created_at,
            "message": "Video generated successfully",
            "job_id": job_id,
        }),
    ))
}

/// The 202 of an asynchronous generate.
fn accepted(
    talk_id: &TalkId,
    job_id: &JobId,
    status: Option<&str>,
    created_at: Option<String>,
    by_header: bool,
    replayed: bool,
) -> Response<Body> {
    let status_url = status_url(talk_id);
    let mut resp = json_response(
        StatusCode::ACCEPTED,
        &json!({
            "id": talk_id,
            "status": status,
            "created_at": created_at,
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

/// A replayed generate: answers with the job's outcome, waiting for it (as long as a new
/// generate would) if it is still running elsewhere or was left by a dead instance.
async fn reattach(
    state: &AppState,
    job: Job,
    asynchronous: bool,
    by_header: bool,
    slot: &TalkSlot,
) -> Result<Response<Body>, ApiError> {
    let jobs = state.jobs();
    slot.record_job(job.id.as_str());
    tracing::info!(job_id = %job.id, status = %job.status, "generate replayed; re-attaching to its job");
    let wait = state.settings().wait.max_wait;
    let deadline = tokio::time::Instant::now()
        + if asynchronous {
            wait.min(std::time::Duration::from_secs(10))
        } else {
            wait
        };
    let job = jobs
        .wait_for(&job.id, deadline, |j| {
            j.status.is_terminal() || (asynchronous && j.talk_id.is_some())
        })
        .await?;
    if let Some(talk) = &job.talk_id {
        slot.record(talk);
    }
    let mut resp = match (&job.status, &job.talk_id) {
        (JobStatus::Failed | JobStatus::Cancelled, _) => job_routes::failure_response(&job),
        // The first answer again: the create's status and time, as stored.
        (_, Some(talk_id)) if asynchronous => accepted(
            talk_id,
            &job.id,
            Some(job.talk_created_status.as_deref().unwrap_or("created")),
            job.talk_created_at.clone(),
            by_header,
            true,
        ),
        (JobStatus::Done, Some(talk_id)) => json_response(
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
        (_, Some(talk_id)) => {
            return Err(VideoApiError::TalkTimedOut {
                talk_id: talk_id.clone(),
                waited: wait,
            }
            .into());
        }
        (_, None) => {
            return Err(VideoApiError::Limiter(ports::LimiterError::Timeout {
                priority: job.priority,
                waited: wait,
            })
            .into());
        }
    };
    job_routes::mark_replayed(&mut resp);
    Ok(resp)
}

/// `POST /upload-source-image` and `POST /upload-audio`.
pub async fn upload<B>(
    state: &AppState,
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
    let upload = form.upload;
    tracing::info!(
        %kind,
        media_type = %upload.media_type(),
        bytes = upload.data().len(),
        %priority,
        "uploading"
    );
    let video = &state.inner.video;
    let asset = match kind {
        UploadKind::Image => video.upload_image(upload, priority).await?,
        UploadKind::Audio => video.upload_audio(upload, priority).await?,
    };
    let mut body = json!({ "url": asset.url, "message": "Upload successful" });
    if let Some(id) = asset.id {
        body["id"] = json!(id);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /talk-status/{talk_id}`: a failed talk is a normal answer with `status: "error"`.
pub async fn talk_status<B>(
    state: &AppState,
    req: &Request<B>,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = TalkId::parse(raw_id)?;
    let priority = priority(query_param(req.uri(), "priority").as_deref())?;
    require_upstream(state)?;
    let talk = state.inner.video.get_talk(&id, priority).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": talk.id,
            "status": talk.status,
            "result_url": talk.result_url,
            "created_at": talk.created_at,
            "error": talk.error,
        }),
    ))
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
