//! `create_talk_and_wait` and `wait_for_talk` end in the done talk or a typed error carrying
//! the talk id.

use std::time::Duration;

use did_client::DidClient;
use domain::{Priority, Talk, TalkStatus};
use ports::{VideoApi, VideoApiError, WaitOptions};
use serde_json::json;

use crate::support::{Scripted, Sent, client, config, fast_wait, hello, limiter, reply, talk_json};

/// An upstream whose talk answers `statuses` to successive polls (the last one repeats).
async fn upstream(statuses: Vec<serde_json::Value>) -> Scripted {
    Scripted::start(move |seen, i| match seen.method.as_str() {
        "POST" => reply::json(201, json!({"id": "tlk_w", "status": "created"})),
        _ => reply::json(200, statuses[(i - 1).min(statuses.len() - 1)].clone()),
    })
    .await
}

/// `create_talk_and_wait` of a "job-w" talk against `server`; the client is returned for its
/// stats.
async fn wait_on(server: &Scripted, wait: WaitOptions) -> (Result<Talk, VideoApiError>, DidClient) {
    let did = client(config(&server.base_url), limiter(1));
    let result = did
        .create_talk_and_wait(&hello(Some("job-w")), &Priority::Normal.into(), wait)
        .await;
    (result, did)
}

#[tokio::test]
async fn polls_until_done() {
    let statuses = vec![
        talk_json("tlk_w", "created"),
        talk_json("tlk_w", "started"),
        {
            let mut t = talk_json("tlk_w", "done");
            t["user_data"] = "job-w|tg:AbCdEfGhIjKlMnOp".into();
            t
        },
    ];
    let (result, did) = wait_on(&upstream(statuses).await, fast_wait()).await;
    let talk = result.unwrap();
    assert_eq!(talk.status, TalkStatus::Done);
    assert_eq!(
        talk.result_url.as_deref(),
        Some("https://fake.test/result.mp4")
    );
    assert_eq!(talk.user_data.as_deref(), Some("job-w"));
    assert_eq!(did.stats().polls, 3);
}

#[tokio::test]
async fn an_error_talk_is_talk_failed_with_kind_and_description() {
    let statuses = vec![json!({
        "id": "tlk_w", "status": "error",
        "error": {"kind": "FaceError", "description": "No valid face detected", "details": "x"}
    })];
    let (result, _) = wait_on(&upstream(statuses).await, fast_wait()).await;
    let err = result.unwrap_err();
    assert_eq!(
        err,
        VideoApiError::TalkFailed {
            talk_id: domain::TalkId::parse("tlk_w").unwrap(),
            kind: "FaceError".into(),
            description: "No valid face detected".into(),
        }
    );
}

#[tokio::test]
async fn a_rejected_talk_is_talk_rejected() {
    let statuses = vec![json!({"id": "tlk_w", "status": "rejected"})];
    let (result, _) = wait_on(&upstream(statuses).await, fast_wait()).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, VideoApiError::TalkRejected { ref talk_id, .. } if talk_id.as_str() == "tlk_w"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stuck_talk_times_out_with_its_id() {
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(20),
        max_wait: Duration::from_millis(300),
    };
    let started = std::time::Instant::now();
    let (result, did) = wait_on(&upstream(vec![talk_json("tlk_w", "started")]).await, wait).await;
    let err = result.unwrap_err();
    let VideoApiError::TalkTimedOut { talk_id, waited } = err else {
        panic!("expected TalkTimedOut, got {err:?}");
    };
    assert_eq!(talk_id.as_str(), "tlk_w");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(did.stats().polls >= 5);
}

#[tokio::test]
async fn transient_poll_failures_do_not_end_the_wait() {
    let server = Scripted::start(|seen, i| match (seen.method.as_str(), i) {
        ("POST", _) => reply::json(201, json!({"id": "tlk_w", "status": "created"})),
        // Three 502s in a row exhaust one poll's retries; polling goes on regardless.
        (_, 1..=3) => reply::raw(502, "text/html", "<html></html>"),
        _ => reply::json(200, talk_json("tlk_w", "done")),
    })
    .await;
    let (result, did) = wait_on(&server, fast_wait()).await;
    let talk = result.unwrap();
    assert_eq!(talk.status, TalkStatus::Done);
    assert_eq!(did.stats().polls, 2);
}

#[tokio::test]
async fn a_vanished_talk_ends_the_wait_with_not_found() {
    let server = Scripted::start(|seen, _| match seen.method.as_str() {
        "POST" => reply::json(201, json!({"id": "tlk_w", "status": "created"})),
        _ => reply::error(404, "NotFoundError", "not found"),
    })
    .await;
    let (result, _) = wait_on(&server, fast_wait()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, VideoApiError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn waiting_for_a_created_talk_polls_that_talk_and_creates_nothing() {
    let statuses = vec![talk_json("tlk_w", "started"), {
        let mut t = talk_json("tlk_w", "done");
        t["user_data"] = "job-w|tg:AbCdEfGhIjKlMnOp".into();
        t
    }];
    let server = upstream(statuses).await;
    let did = client(config(&server.base_url), limiter(1));
    let created = did
        .create_talk(&hello(Some("job-w")), &Priority::Normal.into())
        .await
        .unwrap();
    let talk = did
        .wait_for_talk(&created.id, &Priority::Normal.into(), fast_wait())
        .await
        .unwrap();
    assert_eq!(talk.id, created.id);
    assert_eq!(talk.status, TalkStatus::Done);
    assert_eq!(
        talk.user_data.as_deref(),
        Some("job-w"),
        "the tag is stripped"
    );
    let seen = server.seen().await;
    let methods: Vec<(&str, &str)> = seen.iter().map(|s| (s.method.as_str(), s.path())).collect();
    assert_eq!(
        methods,
        [
            ("POST", "/talks"),
            ("GET", "/talks/tlk_w"),
            ("GET", "/talks/tlk_w")
        ]
    );
    assert_eq!(did.stats().polls, 2);
}

#[tokio::test]
async fn waiting_for_a_talk_times_out_with_its_id() {
    let server = Scripted::start(|_, _| reply::json(200, talk_json("tlk_w", "started"))).await;
    let did = client(config(&server.base_url), limiter(1));
    let id = domain::TalkId::parse("tlk_w").unwrap();
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(20),
        max_wait: Duration::from_millis(200),
    };
    let err = did
        .wait_for_talk(&id, &Priority::Normal.into(), wait)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VideoApiError::TalkTimedOut { ref talk_id, .. } if *talk_id == id),
        "{err:?}"
    );
    assert!(
        server.seen().await.iter().all(|s| s.method == "GET"),
        "no create"
    );
}
