//! The D-ID routes: generate a video, upload an image or audio file, read a talk's status.
//!
//! Each handler validates everything it can before a paid upstream call (priority, URLs,
//! config, file type), then calls [`ports::VideoApi`]: once, or for a synchronous generate
//! `create_talk` then `wait_for_talk`, recording the talk id in the request's
//! [`TalkSlot`] in between so that a cut-off at shutdown can still name it. The limiter slot
//! is taken inside the adapter, per HTTP exchange, so no handler holds a slot while it waits.

use bytes::Bytes;
use domain::{Priority, Script, TalkConfig, TalkId, TalkRequest, UploadKind};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use ports::{VideoApiError, WaitOptions};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::body::{self, BoxError};
use crate::cutoff::TalkSlot;
use crate::error::{ApiError, Body, json_response};
use crate::state::AppState;
use crate::uri::{query_param, status_url};

/// D-ID routes answer 503 at once without a key, before reading (and buffering) a body.
fn require_upstream(state: &AppState) -> Result<(), ApiError> {
    if state.settings().api_key_configured {
        Ok(())
    } else {
        Err(VideoApiError::NotConfigured.into())
    }
}

/// Parses an optional priority; absent means `normal`, anything unknown is an error.
fn priority(given: Option<&str>) -> Result<Priority, ApiError> {
    match given {
        None => Ok(Priority::Normal),
        Some(s) => Ok(s.parse::<Priority>()?),
    }
}

/// The body of `POST /generate-video`. Unknown fields are ignored, as pydantic did.
#[derive(Debug, Deserialize)]
struct GenerateVideoBody {
    audio_url: String,
    source_url: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    config: Option<Value>,
    /// `false` answers 202 at once (see [`wants_async`]).
    #[serde(default)]
    wait: Option<bool>,
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

/// The original service's default config, used when the caller sends none: stitch the face
/// back into the image, no padding. A caller's `config` replaces it as a whole.
fn default_config() -> TalkConfig {
    TalkConfig {
        stitch: Some(true),
        pad_audio: Some(0.0),
        ..TalkConfig::default()
    }
}

/// `POST /generate-video`.
pub async fn generate_video<B>(
    state: &AppState,
    req: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require_upstream(state)?;
    let headers = req.headers().clone();
    let slot = TalkSlot::of(&req);
    let body: GenerateVideoBody = body::read_json(req, state.settings().json_body_limit).await?;
    let priority = priority(body.priority.as_deref())?;
    let config = match body.config {
        None | Some(Value::Null) => default_config(),
        Some(v) => serde_json::from_value::<TalkConfig>(v)
            .map_err(|e| ApiError::InvalidConfig(e.to_string()))?,
    };
    let request = TalkRequest::new(
        Some(body.source_url),
        Script::Audio {
            audio_url: body.audio_url,
        },
    )?
    .with_config(config)?;
    let (asynchronous, by_header) = wants_async(body.wait, &headers);
    let video = &state.inner.video;

    if asynchronous {
        let created = video.create_talk(&request, priority).await?;
        slot.record(&created.id);
        tracing::info!(talk_id = %created.id, %priority, "talk created (asynchronous)");
        let status_url = status_url(&created.id);
        let mut resp = json_response(
            StatusCode::ACCEPTED,
            &json!({
                "id": created.id,
                "status": created.status,
                "created_at": created.created_at,
                "message": "Video generation started",
                "status_url": status_url,
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
        return Ok(resp);
    }

    // Create and wait as two calls, so that the talk id is known while waiting: a request
    // cut off at shutdown still names the paid talk (see `cutoff`).
    let started = Instant::now();
    let created = video.create_talk(&request, priority).await?;
    slot.record(&created.id);
    tracing::info!(talk_id = %created.id, %priority, "talk created; waiting for it");
    // `MAX_WAIT_SECS` counts from the start of the create, as documented.
    let configured = state.settings().wait;
    let wait = WaitOptions {
        max_wait: configured.max_wait.saturating_sub(started.elapsed()),
        ..configured
    };
    let talk = video
        .wait_for_talk(&created.id, priority, wait)
        .await
        .map_err(|e| match e {
            VideoApiError::TalkTimedOut { talk_id, .. } => VideoApiError::TalkTimedOut {
                talk_id,
                waited: started.elapsed(),
            },
            other => other,
        })?;
    tracing::info!(talk_id = %talk.id, %priority, "talk done");
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": talk.id,
            "status": talk.status,
            "result_url": talk.result_url,
            "created_at": talk.created_at,
            "message": "Video generated successfully",
        }),
    ))
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
