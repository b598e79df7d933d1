//! `POST /api/d_id_optimized/talk-webhooks/{job_id}?token=…`: where D-ID calls when a job's
//! talk ends (the URL the create sent, when `PUBLIC_BASE_URL` is set).
//!
//! D-ID sends no credentials and signs nothing, so this route needs no bearer token; the
//! per-job token in the URL is its authentication (see `app::talk_webhooks`). The answer is
//! fast and says little: 202 `{"receipt":"accepted"}` (the job is polled at once, and that
//! poll decides), 200 `{"receipt":"duplicate"}` (the job had ended), or 404
//! `job_not_found` for an unknown job or a wrong token alike. The body (D-ID's talk) is
//! read up to 64 KiB and ignored: a forged one cannot change a job.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::json;

use app::TalkWebhookReceipt;

use crate::body::{self, BoxError};
use crate::error::{ApiError, Body, json_response};
use crate::state::AppState;
use crate::uri::query_param;

/// At most this much of a webhook's body is read (D-ID's talk JSON is a few KiB).
const MAX_BODY: usize = 64 * 1024;

/// `POST /talk-webhooks/{job_id}`.
pub async fn receive<B>(
    state: &AppState,
    req: Request<B>,
    raw_id: &str,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let token = query_param(req.uri(), "token").unwrap_or_default();
    body::discard(req, MAX_BODY).await;
    let unknown = || ApiError::JobNotFound(raw_id.chars().take(64).collect());
    let receipt = state.jobs().receive_talk_webhook(raw_id, &token).await?;
    Ok(match receipt {
        TalkWebhookReceipt::Accepted => {
            json_response(StatusCode::ACCEPTED, &json!({ "receipt": "accepted" }))
        }
        TalkWebhookReceipt::Duplicate => {
            json_response(StatusCode::OK, &json!({ "receipt": "duplicate" }))
        }
        TalkWebhookReceipt::Rejected => return Err(unknown()),
    })
}
