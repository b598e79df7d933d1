//! Routes over a mocked `VideoApi`, where the interaction (which call, which arguments) or an
//! error the fake cannot produce is the point.

use std::time::Duration;

use domain::{Admission, CreatedTalk, Priority, Talk, TalkId, TalkStatus};
use mockall::Sequence;
use mockall::predicate::{eq, function};
use ports::{MockVideoApi, VideoApiError, WaitOptions};
use serde_json::json;

use crate::support;
use test_support::http::{client, get_json, json, post_json};

fn body() -> serde_json::Value {
    json!({"audio_url": "https://x.test/a.wav", "source_url": "https://x.test/a.jpg", "priority": "critical"})
}

/// A talk just created.
fn created(id: &str) -> CreatedTalk {
    CreatedTalk {
        id: TalkId::parse(id).unwrap(),
        status: TalkStatus::Created,
        created_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_generate_creates_then_waits_with_the_configured_polling_and_priority() {
    let mut mock = MockVideoApi::new();
    let mut order = Sequence::new();
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(250),
        max_wait: Duration::from_secs(42),
    };
    mock.expect_create_talk_keyed()
        .withf(move |req, prio, key, look_first| {
            // A generate runs as a job: the create token is derived from the job id, and a
            // fresh job does not look for an earlier talk first.
            key.starts_with("job_")
                && !*look_first
                && prio.priority == Priority::Critical
                && req.source_url() == Some("https://x.test/a.jpg")
                // The original's default config when the caller sends none.
                && req.config().and_then(|c| c.stitch) == Some(true)
        })
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _, _, _| Ok(created("tlk_1")));
    mock.expect_wait_for_talk()
        .withf(move |id, prio, w| {
            // `MAX_WAIT_SECS` counts from the start of the create, so what is left of it is
            // passed on (the create above answered at once: nearly all of it).
            id.as_str() == "tlk_1"
                && prio.priority == Priority::Critical
                && w.poll_interval == wait.poll_interval
                && w.max_wait <= wait.max_wait
                && w.max_wait > wait.max_wait - Duration::from_secs(10)
        })
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _, _| {
            Ok(Talk {
                id: TalkId::parse("tlk_1").unwrap(),
                status: TalkStatus::Done,
                result_url: Some("https://r.test/v.mp4".into()),
                created_at: Some("2026-01-01T00:00:00.000Z".into()),
                started_at: None,
                modified_at: None,
                error: None,
                user_data: None,
                name: None,
                duration: None,
                source_url: None,
                audio_url: None,
            })
        });
    let settings = http_api::Settings {
        wait,
        ..support::keyed_settings()
    };
    let srv = support::mock_service(mock, settings, 2).await;
    let (status, v) = post_json(&client(), srv.api("/generate-video"), None, &body()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result_url"], "https://r.test/v.mp4");
    assert_eq!(v["created_at"], "2026-01-01T00:00:00.000Z");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_the_fake_cannot_produce_are_mapped() {
    let mut mock = MockVideoApi::new();
    let id = TalkId::parse("tlk_slow").unwrap();
    mock.expect_create_talk_keyed()
        .times(1)
        .returning(|_, _, _, _| Ok(created("tlk_slow")));
    // A generate whose wait timed out leaves its job to the workers, which follow the talk.
    let slow = TalkId::parse("tlk_slow").unwrap();
    mock.expect_get_talk()
        .with(
            eq(slow.clone()),
            function(|a: &Admission| a.priority == Priority::Critical),
        )
        .returning(move |_, _| {
            Ok(Talk {
                id: slow.clone(),
                status: TalkStatus::Started,
                result_url: None,
                created_at: None,
                started_at: None,
                modified_at: None,
                error: None,
                user_data: None,
                name: None,
                duration: None,
                source_url: None,
                audio_url: None,
            })
        });
    mock.expect_wait_for_talk()
        .times(1)
        .returning(move |_, _, _| {
            Err(VideoApiError::TalkTimedOut {
                talk_id: id.clone(),
                waited: Duration::from_secs(600),
            })
        });
    mock.expect_get_talk()
        .with(
            eq(TalkId::parse("tlk_v").unwrap()),
            function(|a: &Admission| a.priority == Priority::Low),
        )
        .times(1)
        .returning(|_, _| {
            Err(VideoApiError::Validation {
                status: 400,
                kind: "ValidationError".into(),
                description: "source_url is not a valid image".into(),
                details: Some(json!({"field": "source_url"})),
            })
        });
    mock.expect_get_talk()
        .with(
            eq(TalkId::parse("tlk_rl").unwrap()),
            function(|a: &Admission| a.priority == Priority::Normal),
        )
        .times(1)
        .returning(|_, _| {
            Err(VideoApiError::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            })
        });
    mock.expect_get_talk()
        .with(
            eq(TalkId::parse("tlk_to").unwrap()),
            function(|a: &Admission| a.priority == Priority::Normal),
        )
        .times(1)
        .returning(|_, _| Err(VideoApiError::Timeout));
    mock.expect_get_talk()
        .with(
            eq(TalkId::parse("tlk_panic").unwrap()),
            function(|a: &Admission| a.priority == Priority::Normal),
        )
        .times(1)
        .returning(|_, _| panic!("handler bug"));
    let srv = support::mock_service(mock, support::keyed_settings(), 2).await;
    let http = client();

    let (status, v) = post_json(&http, srv.api("/generate-video"), None, &body()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str().unwrap()),
        (504, "talk_timeout")
    );
    assert_eq!(v["error"]["talk_id"], "tlk_slow");

    let (status, v) = get_json(&http, srv.api("/talk-status/tlk_v?priority=low"), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str().unwrap()),
        (400, "upstream_validation_error")
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("source_url is not a valid image")
    );
    assert_eq!(v["error"]["upstream_kind"], "ValidationError");
    // D-ID's free-form `details` is never passed on (it may echo request headers).
    assert!(v["error"].get("details").is_none(), "{v}");

    let resp = http
        .get(srv.api("/talk-status/tlk_rl"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(json(resp).await.0, 429);

    let (status, _) = get_json(&http, srv.api("/talk-status/tlk_to"), None).await;
    assert_eq!(status, 504);

    // A panic is a 500 JSON answer, and the server keeps serving.
    let (status, v) = get_json(&http, srv.api("/talk-status/tlk_panic"), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str().unwrap()),
        (500, "internal_error")
    );
    assert!(!v.to_string().contains("handler bug"));
    let (status, _) = get_json(&http, srv.url("/health"), None).await;
    assert_eq!(status, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_limiter_is_ready_within_its_grace_and_healthy_says_degraded() {
    use std::sync::Arc;

    use ports::{BackendStats, LimiterStats, MockConcurrencyLimiter};

    let mut limiter = MockConcurrencyLimiter::new();
    limiter.expect_stats().returning(|| LimiterStats {
        backend: BackendStats {
            kind: "redis".into(),
            ..BackendStats::default()
        },
        degraded: true,
        max_concurrent: 4,
        available: 4,
        ..LimiterStats::default()
    });
    let settings = http_api::Settings {
        ready_degraded_grace: Duration::from_secs(3600),
        ..support::keyed_settings()
    };
    let metrics = Arc::new(http_api::metrics::Metrics::new());
    let state = http_api::wiring::memory_state(
        Arc::new(MockVideoApi::new()),
        Arc::new(limiter),
        metrics,
        settings,
    );
    let srv = support::Server::start(state).await;
    let http = client();
    let (status, h) = get_json(&http, srv.url("/health"), None).await;
    assert_eq!((status, h["status"].as_str().unwrap()), (200, "degraded"));
    let (status, r) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 200, "still within the grace: {r}");
    assert_eq!(r["limiter_degraded"], true);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let settings = http_api::Settings {
        header_read_timeout: Duration::from_millis(200),
        ..support::keyed_settings()
    };
    let srv = support::mock_service(MockVideoApi::new(), settings, 1).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (possibly after a 408); reading ends well within 5 s.
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");
    srv.stop().await;
}
