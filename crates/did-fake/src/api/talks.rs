//! `POST /talks`, `GET /talks`, `GET /talks/{id}`, `DELETE /talks/{id}`: creation (with
//! validation, credits and the create-then-fail fault), D-ID's talk JSON per state, paging.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::uploads::{self, Kind, Lookup};
use super::{CutConnection, Outcome, Resp, errors};
use crate::faults::CreateThenFail;
use crate::lifecycle::{self, Ending, Plan};
use crate::state::{Shared, Status, TalkRecord, lock};
use crate::util::{encode_segment, iso_naive, iso_z, now_ms, s3_signature};
use crate::validate::{self, Options, Script};

/// API Gateway's payload limit.
const MAX_BODY: usize = 10 * 1024 * 1024;

/// `POST /talks`.
pub(crate) async fn create(
    shared: &Arc<Shared>,
    user: &str,
    req: http::Request<Incoming>,
) -> Outcome {
    let is_json = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|ct| ct == "application/json" || ct.ends_with("+json"));
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(errors::gateway(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request Too Long",
            ));
        }
        Err(_) => return Err(CutConnection),
    };
    // Without a JSON content type D-ID's body parser leaves the body empty, hence "script is
    // required" for a body that looks fine (the real-world symptom of the spec's §6.2).
    let Some(body) = is_json
        .then(|| serde_json::from_slice::<Value>(&bytes).ok())
        .flatten()
    else {
        return Ok(validate::script_required());
    };
    let opts = Options {
        allow_http_webhooks: shared.config.allow_http_webhooks,
        strict_fields: shared.config.strict_fields,
    };
    let valid = match validate::create_talk(&body, opts) {
        Ok(v) => v,
        Err(resp) => return Ok(resp),
    };

    // Uploads that are gone are only noticed when the talk runs, as on D-ID.
    let timing = &shared.config.timing;
    let mut forced = match uploads::lookup(shared, Kind::Image, &valid.source_url) {
        Lookup::Missing => Some(("SourceError", "Failed to load the source image")),
        _ => None,
    };
    let (audio_url, speech_seconds) = match &valid.script {
        Script::Audio { audio_url } => {
            let seconds = match uploads::lookup(shared, Kind::Audio, audio_url) {
                Lookup::Found(record) => record.duration,
                Lookup::Missing => {
                    forced.get_or_insert(("UnknownError", "Failed to load the audio"));
                    timing.default_audio_seconds
                }
                Lookup::NotAnUpload => timing.default_audio_seconds,
            };
            (Some(audio_url.clone()), seconds)
        }
        Script::Text { input } => {
            let chars = u32::try_from(input.chars().count()).unwrap_or(u32::MAX);
            (
                None,
                f64::from(chars) / timing.text_chars_per_second.max(0.001),
            )
        }
    };
    let duration = speech_seconds + valid.pad_audio;
    let cost = timing.cost(duration);
    let faults = shared.faults();
    let ending = match forced {
        Some((kind, description)) => Ending::Error(kind.to_owned(), description.to_owned()),
        None => draw_ending(shared, &faults),
    };
    let render_seconds = shared.uniform(timing.fixed_overhead_s.0, timing.fixed_overhead_s.1)
        + duration * timing.render_factor;
    let plan = Plan {
        queue: shared
            .config
            .scaled(shared.uniform(timing.queue_delay_s.0, timing.queue_delay_s.1)),
        render: shared.config.scaled(render_seconds),
        ending,
    };
    let id = format!("tlk_{}", shared.nanoid());
    let now = now_ms();
    let record = TalkRecord {
        id: id.clone(),
        user_id: user.to_owned(),
        status: Status::Created,
        created_ms: now,
        started_ms: None,
        modified_ms: now,
        source_url: valid.source_url,
        audio_url,
        config: valid.config,
        subtitles: valid.subtitles,
        duration,
        user_data: valid.user_data,
        name: valid.name,
        webhook: valid.webhook,
        cost,
        render_seconds,
        error: None,
    };
    let user_data = record.user_data.clone();
    {
        let mut store = lock(&shared.store);
        let account = store.account(user, shared.config.credits);
        if account.remaining < cost {
            return Ok(errors::not_enough_credits());
        }
        account.remaining -= cost;
        store.talks.insert(id.clone(), record);
        store.order.push(id.clone());
    }
    {
        let mut stats = lock(&shared.stats);
        stats.talks_created += 1;
        if let Some(u) = user_data {
            *stats.talks_by_user_data.entry(u).or_default() += 1;
        }
    }
    lifecycle::spawn(Arc::clone(shared), id.clone(), user.to_owned(), plan);

    if faults.p_create_then_fail > 0.0 && shared.roll() < faults.p_create_then_fail {
        let mode = match faults.create_then_fail {
            CreateThenFail::Mixed => match (shared.roll() * 3.0) as u8 {
                0 => CreateThenFail::Status500,
                1 => CreateThenFail::Status504,
                _ => CreateThenFail::Reset,
            },
            mode => mode,
        };
        tracing::debug!(talk = %id, ?mode, "create-then-fail");
        return match mode {
            CreateThenFail::Status504 => {
                tokio::time::sleep(delay_504(shared, &faults)).await;
                Ok(errors::gateway_timeout())
            }
            CreateThenFail::Reset => Err(CutConnection),
            _ => Ok(errors::internal()),
        };
    }
    Ok(errors::json(
        StatusCode::CREATED,
        &json!({
            "id": id,
            "object": "talk",
            "created_by": user,
            "created_at": iso_z(now),
            "status": "created",
        }),
    ))
}

/// How long an injected 504 takes.
pub(crate) fn delay_504(shared: &Shared, faults: &crate::Faults) -> Duration {
    faults
        .delay_504_ms
        .map_or_else(|| shared.config.scaled(29.0), Duration::from_millis)
}

fn draw_ending(shared: &Shared, faults: &crate::Faults) -> Ending {
    let u = shared.roll();
    let stuck = faults.p_stuck;
    let error = stuck + faults.p_async_error;
    let rejected = error + faults.p_rejected;
    if u < stuck {
        Ending::Stuck
    } else if u < error {
        let (kind, description) = match (shared.roll() * 3.0) as u8 {
            0 => ("FaceError", "No valid face detected"),
            1 => ("SourceError", "Failed to load the source image"),
            _ => ("UnknownError", "Internal error"),
        };
        Ending::Error(kind.to_owned(), description.to_owned())
    } else if u < rejected {
        Ending::Rejected
    } else {
        Ending::Done
    }
}

/// D-ID's JSON of a talk in its current state (the spec's §10.3 field population).
pub(crate) fn talk_json(shared: &Shared, t: &TalkRecord) -> Value {
    let mut v = json!({
        "id": t.id,
        "user_id": t.user_id,
        "created_by": t.user_id,
        "created_at": iso_z(t.created_ms),
        "modified_at": iso_z(t.modified_ms),
        "status": t.status.as_str(),
        "source_url": t.source_url,
        "driver_url": "bank://lively/",
        "config": t.config,
        "subtitles": t.subtitles,
        "duration": t.duration,
    });
    if let Some(a) = &t.audio_url {
        v["audio_url"] = json!(a);
    }
    for (key, value) in [
        ("user_data", &t.user_data),
        ("name", &t.name),
        ("webhook", &t.webhook),
    ] {
        if let Some(value) = value {
            v[key] = json!(value);
        }
    }
    if let Some(started) = t.started_ms {
        // The real API's `started_at` has no `Z`; clients must cope, so the fake reproduces it.
        v["started_at"] = json!(iso_naive(started));
    }
    match t.status {
        Status::Created | Status::Started => {
            v["pending_url"] = json!(format!(
                "s3://d-id-talks-prod/{}/{}/{}.mp4",
                t.user_id, t.id, t.created_ms
            ));
        }
        Status::Done => {
            v["result_url"] = json!(result_url(shared, t));
            // Truncation is intended: frames are whole.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let frames = (t.duration * 25.0).round().max(1.0) as u64;
            #[allow(clippy::cast_precision_loss)]
            let frames_f = frames as f64;
            v["metadata"] = json!({
                "driver_url": "bank://lively/driver-02/flipped",
                "mouth_open": false,
                "num_faces": 1,
                "num_frames": frames,
                "processing_fps": frames_f / t.render_seconds.max(0.001),
                "resolution": [512, 512],
                "size_kib": frames_f * 8.15,
            });
            v["face"] = json!({
                "mask_confidence": -1,
                "detection": [224, 198, 484, 553],
                "overlap": "no",
                "size": 512,
                "top_left": [98, 119],
                "face_id": 0,
                "detect_confidence": 0.9998300075531006
            });
        }
        Status::Error => {
            if let Some((kind, description)) = &t.error {
                v["error"] = json!({ "kind": kind, "description": description });
            }
        }
        Status::Rejected => {}
    }
    v
}

/// A presigned-looking url of the result on the fake S3 route, signed afresh on every call
/// (D-ID re-signs on every GET).
fn result_url(shared: &Shared, t: &TalkRecord) -> String {
    let path = format!(
        "/_fake_s3/d-id-talks-prod/{}/{}/{}.mp4",
        encode_segment(&t.user_id),
        t.id,
        t.created_ms
    );
    let expires = now_ms() / 1000 + shared.config.result_url_ttl.as_secs();
    let signature = s3_signature(shared.s3_secret, &path, expires);
    format!(
        "{}{path}?AWSAccessKeyId=AKIAFAKEFAKEFAKEFAKE&Expires={expires}&Signature={signature}",
        shared.base_url
    )
}

fn not_found() -> Resp {
    errors::did(StatusCode::NOT_FOUND, "NotFoundError", "not found")
}

/// `GET /talks/{id}`: the user's own talks only.
pub(crate) fn get(shared: &Shared, user: &str, id: &str) -> Resp {
    let store = lock(&shared.store);
    match store.talks.get(id).filter(|t| t.user_id == user) {
        Some(t) => errors::json(StatusCode::OK, &talk_json(shared, t)),
        None => not_found(),
    }
}

/// `DELETE /talks/{id}`: 200 with the deleted talk, 409 while it is still in process.
pub(crate) fn delete(shared: &Shared, user: &str, id: &str) -> Resp {
    let mut store = lock(&shared.store);
    let Some(t) = store.talks.get(id).filter(|t| t.user_id == user) else {
        return not_found();
    };
    if !t.status.is_terminal() {
        return errors::did(
            StatusCode::CONFLICT,
            "NotReadyError",
            "talk is in process, try again later",
        );
    }
    let body = talk_json(shared, t);
    store.talks.remove(id);
    store.order.retain(|x| x != id);
    errors::json(StatusCode::OK, &body)
}

/// `GET /talks?limit=&token=`: the user's talks, newest first; `token` is an opaque offset.
pub(crate) fn list(shared: &Shared, user: &str, query: Option<&str>) -> Resp {
    let mut limit = 100usize;
    let mut offset = 0usize;
    for (key, value) in query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match key {
            "limit" => match value.parse::<f64>() {
                // Truncation is intended; the limit is clamped to 1..=1000 first.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(n) if n.is_finite() => limit = n.clamp(1.0, 1000.0) as usize,
                _ => {
                    return errors::validation(
                        "limit",
                        "invalid float number",
                        Some(&json!(value)),
                    );
                }
            },
            "token" if !value.is_empty() => match decode_token(value) {
                Some(o) => offset = o,
                None => {
                    return errors::did(
                        StatusCode::BAD_REQUEST,
                        "BadRequestError",
                        "invalid token",
                    );
                }
            },
            _ => {}
        }
    }
    let store = lock(&shared.store);
    let mine: Vec<&TalkRecord> = store
        .order
        .iter()
        .rev()
        .filter_map(|id| store.talks.get(id))
        .filter(|t| t.user_id == user)
        .collect();
    let page: Vec<Value> = mine
        .iter()
        .skip(offset)
        .take(limit)
        .map(|t| talk_json(shared, t))
        .collect();
    let next = offset + page.len();
    let mut body = json!({ "talks": page });
    if next < mine.len() {
        body["token"] = json!(encode_token(next));
    }
    errors::json(StatusCode::OK, &body)
}

fn encode_token(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn decode_token(token: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}
