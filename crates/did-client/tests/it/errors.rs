//! Every error shape D-ID (or its gateway) answers maps to its `VideoApiError`; successful
//! answers parse leniently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use did_client::RetryPolicy;
use domain::{Priority, TalkId, TalkStatus};
use ports::{VideoApi, VideoApiError};
use serde_json::json;

use wiremock::ResponseTemplate;

use crate::support::{Scripted, Sent, client, config, limiter, png_upload, reply, talk_json};

fn validation(
    status: u16,
    kind: &str,
    description: &str,
    details: Option<serde_json::Value>,
) -> VideoApiError {
    VideoApiError::Validation {
        status,
        kind: kind.into(),
        description: description.into(),
        details,
    }
}

#[tokio::test]
async fn every_error_shape_maps_to_its_variant() {
    let html = "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>";
    let cases: Vec<(ResponseTemplate, VideoApiError)> = vec![
        (
            reply::error(401, "AuthorizationError", "user unauthenticated"),
            VideoApiError::Unauthorized { status: 401 },
        ),
        (
            reply::json(
                403,
                json!({"Message": "User is not authorized to access this resource with an explicit deny"}),
            ),
            VideoApiError::Unauthorized { status: 403 },
        ),
        (
            reply::error(403, "PermissionError", "user has no permission for stitch"),
            VideoApiError::Forbidden {
                description: "user has no permission for stitch".into(),
            },
        ),
        (
            reply::error(402, "InsufficientCreditsError", "not enough credits"),
            VideoApiError::InsufficientCredits,
        ),
        (
            reply::error(404, "NotFoundError", "not found"),
            VideoApiError::NotFound {
                description: "not found".into(),
            },
        ),
        (
            reply::error(409, "NotReadyError", "talk is in process, try again later"),
            VideoApiError::NotReady {
                description: "talk is in process, try again later".into(),
            },
        ),
        (
            reply::json(
                400,
                json!({"kind": "ValidationError", "description": "validation failed",
                "details": {"body.script": {"message": "'script' is required"}}}),
            ),
            validation(
                400,
                "ValidationError",
                "validation failed",
                Some(json!({"body.script": {"message": "'script' is required"}})),
            ),
        ),
        (
            reply::error(400, "BadRequestError", "invalid actor url"),
            validation(400, "BadRequestError", "invalid actor url", None),
        ),
        (
            reply::json(
                415,
                json!({"kind": "UnsupportedMimeTypeError", "description": "The provided mime type is not supported",
                "details": {"received": "image/gif", "supported": ["image/jpeg"]}}),
            ),
            validation(
                415,
                "UnsupportedMimeTypeError",
                "The provided mime type is not supported",
                Some(json!({"received": "image/gif", "supported": ["image/jpeg"]})),
            ),
        ),
        (
            reply::error(451, "ImageModerationError", "Automatic content moderation"),
            validation(
                451,
                "ImageModerationError",
                "Automatic content moderation",
                None,
            ),
        ),
        (
            reply::empty(413),
            validation(413, "Payload Too Large", "Payload Too Large", None),
        ),
        (
            reply::empty(422),
            validation(422, "Unprocessable Entity", "Unprocessable Entity", None),
        ),
        (
            reply::json(429, json!({"message": "Too Many Requests"}))
                .insert_header("retry-after", "7"),
            VideoApiError::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            },
        ),
        (
            reply::empty(429),
            VideoApiError::RateLimited { retry_after: None },
        ),
        (
            reply::error(500, "UnknownError", "Internal Server Error"),
            VideoApiError::Server { status: 500 },
        ),
        (
            reply::raw(502, "text/html", html),
            VideoApiError::Server { status: 502 },
        ),
        (
            reply::json(504, json!({"message": "Endpoint request timed out"})),
            VideoApiError::Server { status: 504 },
        ),
        (reply::empty(503), VideoApiError::Server { status: 503 }),
    ];
    let replies: Arc<Vec<ResponseTemplate>> =
        Arc::new(cases.iter().map(|(r, _)| r.clone()).collect());
    let server = Scripted::start({
        let replies = replies.clone();
        move |_, i| replies[i].clone()
    })
    .await;
    let mut cfg = config(&server.base_url);
    cfg.retry = RetryPolicy {
        max_attempts: 1,
        ..cfg.retry
    };
    // The mapping is the point here; the pacer would hold every later case for the 7 s the
    // first 429 asks (`pacing` tests that).
    cfg.pacing = did_client::PacingConfig::off();
    let did = client(cfg, limiter(2));
    for (i, (_, expected)) in cases.iter().enumerate() {
        let got = did.credits(&Priority::Normal.into()).await.unwrap_err();
        assert_eq!(&got, expected, "case {i}");
        // No message may carry the key, whatever the upstream said.
        assert!(!got.to_string().contains(crate::support::KEY));
    }
    assert_eq!(server.count().await, cases.len());
    let stats = did.stats();
    assert_eq!(stats.responses.get(&429), Some(&2));
    assert_eq!(stats.responses.values().sum::<u64>(), cases.len() as u64);
}

#[tokio::test]
async fn success_bodies_that_do_not_fit_are_protocol_errors() {
    let replies = Arc::new(Mutex::new(vec![
        reply::raw(200, "text/html", "<html>maintenance</html>"),
        reply::json(200, json!({"remaining": "lots"})),
        reply::json(200, json!({"id": "../credits", "status": "done"})),
        reply::json(201, json!({"id": "img_1"})),
    ]));
    let server = Scripted::start(move |_, _| replies.lock().unwrap().remove(0)).await;
    let did = client(config(&server.base_url), limiter(1));
    let p = Priority::Normal;
    let protocol = |e: VideoApiError| matches!(e, VideoApiError::Protocol { .. });
    assert!(protocol(did.credits(&p.into()).await.unwrap_err()));
    assert!(protocol(did.credits(&p.into()).await.unwrap_err()));
    let id = TalkId::parse("tlk_1").unwrap();
    assert!(
        protocol(did.get_talk(&id, &p.into()).await.unwrap_err()),
        "a hostile talk id is refused"
    );
    assert!(
        protocol(
            did.upload_image(png_upload(None), &p.into())
                .await
                .unwrap_err()
        ),
        "an upload answer needs a url"
    );
}

#[tokio::test]
async fn answers_parse_leniently() {
    let server = Scripted::start(|seen, _| match (seen.method.as_str(), seen.path()) {
        ("GET", "/talks/tlk_n41-6smhLSOWm9WGTrP6c") => {
            reply::json(200, talk_json("tlk_n41-6smhLSOWm9WGTrP6c", "started"))
        }
        ("GET", "/talks") => reply::json(200, json!({
            "talks": [talk_json("tlk_a", "done"), talk_json("tlk_b", "archived")],
            "token": "next-page"
        })),
        ("DELETE", "/talks/tlk_a") => reply::json(200, talk_json("tlk_a", "done")),
        ("GET", "/credits") => reply::json(200, json!({
            "credits": [{"owner_id": "x", "remaining": 9, "total": 10, "expire_at": "2030-01-01T00:00:00Z"}],
            "remaining": 9, "total": 10, "plan": "trial"
        })),
        _ => reply::empty(404),
    })
    .await;
    let did = client(config(&server.base_url), limiter(1));
    let p = Priority::Low;
    let talk = did
        .get_talk(
            &TalkId::parse("tlk_n41-6smhLSOWm9WGTrP6c").unwrap(),
            &p.into(),
        )
        .await
        .unwrap();
    assert_eq!(talk.status, TalkStatus::Started);
    assert_eq!(talk.started_at.as_deref(), Some("2023-04-10T08:09:10.622"));
    assert!(talk.result_url.is_none(), "pending_url is not a result");
    let page = did.list_talks(Some(2), None, &p.into()).await.unwrap();
    assert_eq!(page.talks.len(), 2);
    assert_eq!(page.talks[1].status, TalkStatus::Unknown("archived".into()));
    assert_eq!(page.token.as_deref(), Some("next-page"));
    let deleted = did
        .delete_talk(&TalkId::parse("tlk_a").unwrap(), &p.into())
        .await
        .unwrap();
    assert_eq!(
        deleted.result_url.as_deref(),
        Some("https://fake.test/result.mp4")
    );
    let credits = did.credits(&p.into()).await.unwrap();
    assert_eq!((credits.remaining, credits.total), (9, 10));
}
