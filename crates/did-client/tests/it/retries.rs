//! Which failures are retried, how often and how long: timeouts, cut connections and 5xx
//! up to 3 attempts with growing waits; 4xx never; 429 only when asked; the caller always
//! gets the typed error; a total deadline bounds the call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::Priority;
use ports::{VideoApi, VideoApiError};
use serde_json::json;

use wiremock::ResponseTemplate;

use crate::support::{Scripted, Sent, client, config, hello, limiter, reply};

fn credits() -> ResponseTemplate {
    reply::json(200, json!({"remaining": 1, "total": 1}))
}

/// The error of a 429 that asked to wait `after`.
fn rate_limited(after: Duration) -> VideoApiError {
    VideoApiError::RateLimited {
        retry_after: Some(after),
    }
}

#[tokio::test]
async fn server_errors_are_tried_three_times_then_returned_typed() {
    let server =
        Scripted::start(|_, _| reply::raw(502, "text/html", "<html>bad gateway</html>")).await;
    let did = client(config(&server.base_url), limiter(1));
    let started = Instant::now();
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
    let elapsed = started.elapsed();
    // The typed error itself, not a "retry error" wrapper.
    assert_eq!(err, VideoApiError::Server { status: 502 });
    assert_eq!(server.count().await, 3);
    let stats = did.stats();
    assert_eq!((stats.requests, stats.retries), (3, 2));
    assert_eq!(stats.responses.get(&502), Some(&3));
    // Waits of 20 ms then 40 ms, each shortened by at most 25 % jitter.
    assert!(elapsed >= Duration::from_millis(45), "{elapsed:?}");
}

#[tokio::test]
async fn a_transient_failure_then_success_succeeds() {
    let server = Scripted::start(|_, i| if i < 2 { reply::empty(503) } else { credits() }).await;
    let did = client(config(&server.base_url), limiter(1));
    let credits = did.credits(&Priority::Normal.into()).await.unwrap();
    assert_eq!(credits.remaining, 1);
    assert_eq!(did.stats().retries, 2);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    for status in [400, 401, 402, 403, 404, 409, 413, 415, 422, 451] {
        let server = Scripted::start(move |_, _| reply::empty(status)).await;
        let did = client(config(&server.base_url), limiter(1));
        let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
        assert!(!err.is_retryable(), "{status}: {err:?}");
        assert_eq!(server.count().await, 1, "{status} was retried");
        assert_eq!(did.stats().retries, 0);
    }
}

#[tokio::test]
async fn rate_limits_are_not_retried_by_default() {
    let server =
        Scripted::start(|_, _| reply::empty(429).insert_header("retry-after-ms", "10")).await;
    let did = client(config(&server.base_url), limiter(1));
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
    assert_eq!(err, rate_limited(Duration::from_millis(10)));
    assert_eq!(server.count().await, 1);
}

#[tokio::test]
async fn opted_in_rate_limit_retries_wait_what_the_server_asks() {
    let server = Scripted::start(|_, i| {
        if i == 0 {
            reply::empty(429).insert_header("retry-after-ms", "150")
        } else {
            credits()
        }
    })
    .await;
    let mut cfg = config(&server.base_url);
    cfg.retry.retry_rate_limited = true;
    let did = client(cfg, limiter(1));
    let started = Instant::now();
    did.credits(&Priority::Normal.into()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.count().await, 2);

    // A server asking for more than the cap is not waited for.
    let slow = Scripted::start(|_, _| reply::empty(429).insert_header("retry-after", "3600")).await;
    let mut cfg = config(&slow.base_url);
    cfg.retry.retry_rate_limited = true;
    let did = client(cfg, limiter(1));
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
    assert_eq!(err, rate_limited(Duration::from_secs(3600)));
    assert_eq!(slow.count().await, 1);
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let server = Scripted::start(|_, _| credits().set_delay(Duration::from_millis(400))).await;
    let mut cfg = config(&server.base_url);
    cfg.request_timeout = Duration::from_millis(100);
    let did = client(cfg, limiter(1));
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
    assert_eq!(err, VideoApiError::Timeout);
    assert_eq!(server.count().await, 3);
    assert_eq!(did.stats().transport_errors, 3);
}

#[tokio::test]
async fn the_total_deadline_bounds_the_whole_call() {
    let server = Scripted::start(|_, _| credits().set_delay(Duration::from_secs(30))).await;
    let mut cfg = config(&server.base_url);
    cfg.call_deadline = Duration::from_millis(300);
    let did = client(cfg, limiter(1));
    let started = Instant::now();
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
    assert_eq!(err, VideoApiError::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn refused_connections_are_retried_and_reported_as_connect() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let did = client(config(&format!("http://127.0.0.1:{port}")), limiter(1));
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
    let VideoApiError::Connect { message } = &err else {
        panic!("{err:?}")
    };
    // The internal address stays out of the message (the service logs it).
    assert!(!message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains(&port.to_string()), "{message}");
    let stats = did.stats();
    assert_eq!(
        (stats.requests, stats.retries, stats.transport_errors),
        (3, 2, 3)
    );
}

#[tokio::test]
async fn an_ambiguous_create_is_looked_up_before_it_is_sent_again() {
    // The create makes the talk, then answers 504; the listing shows the talk.
    let made: Arc<Mutex<Option<String>>> = Arc::default();
    let server = Scripted::start({
        let made = made.clone();
        move |seen, _| match (seen.method.as_str(), seen.path()) {
            ("POST", "/talks") => {
                let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
                *made.lock().unwrap() = body["user_data"].as_str().map(str::to_owned);
                reply::json(504, json!({"message": "Endpoint request timed out"}))
            }
            ("GET", "/talks") => reply::json(
                200,
                json!({"talks": [
                    {"id": "tlk_other", "status": "done", "user_data": "job-9"},
                    {"id": "tlk_made", "status": "created", "user_data": *made.lock().unwrap()},
                ]}),
            ),
            _ => reply::empty(404),
        }
    })
    .await;
    let did = client(config(&server.base_url), limiter(1));
    let request = hello(Some("job-9"));
    let created = did
        .create_talk(&request, &Priority::Normal.into())
        .await
        .unwrap();
    assert_eq!(
        created.id.as_str(),
        "tlk_made",
        "found by token, not by the caller's user_data"
    );
    let posts = server
        .seen()
        .await
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 1, "the talk was not created a second time");
    assert_eq!(did.stats().create_recoveries, 1);
}

#[tokio::test]
async fn an_ambiguous_create_not_found_is_sent_again_and_a_refused_one_is_not() {
    let server = Scripted::start(|seen, i| match (seen.method.as_str(), seen.path()) {
        // First create: 500 and nothing made. Second: created.
        ("POST", "/talks") if i == 0 => reply::empty(500),
        ("POST", "/talks") => reply::json(201, json!({"id": "tlk_2", "status": "created"})),
        ("GET", "/talks") => reply::json(200, json!({"talks": []})),
        _ => reply::empty(404),
    })
    .await;
    let did = client(config(&server.base_url), limiter(1));
    let request = hello(None);
    let created = did
        .create_talk(&request, &Priority::Normal.into())
        .await
        .unwrap();
    assert_eq!(created.id.as_str(), "tlk_2");
    let calls: Vec<String> = server
        .seen()
        .await
        .iter()
        .map(|s| format!("{} {}", s.method, s.target()))
        .collect();
    assert_eq!(
        calls,
        ["POST /talks", "GET /talks?limit=100", "POST /talks"]
    );
    assert_eq!(did.stats().create_recoveries, 0);

    let refused =
        Scripted::start(|_, _| reply::error(400, "BadRequestError", "invalid actor url")).await;
    let did = client(config(&refused.base_url), limiter(1));
    let err = did
        .create_talk(&request, &Priority::Normal.into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, VideoApiError::Validation { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(
        refused.count().await,
        1,
        "a 400 is neither retried nor looked up"
    );
}

#[tokio::test]
async fn an_untagged_create_is_never_repeated_after_an_ambiguous_failure() {
    let server = Scripted::start(|_, _| reply::empty(500)).await;
    let did = client(config(&server.base_url), limiter(1));
    // 990 characters leave no room for the 20-character tag.
    let request = hello(Some(&"u".repeat(990)));
    let err = did
        .create_talk(&request, &Priority::Normal.into())
        .await
        .unwrap_err();
    assert_eq!(err, VideoApiError::Server { status: 500 });
    assert_eq!(server.count().await, 1);
    let body: serde_json::Value = serde_json::from_slice(&server.seen().await[0].body).unwrap();
    assert_eq!(
        body["user_data"].as_str().map(str::len),
        Some(990),
        "sent as given"
    );
    assert_eq!(did.stats().creates_untagged, 1);
}

#[tokio::test]
async fn a_create_throttled_after_an_ambiguous_attempt_says_it_may_have_been_sent() {
    // The call's error is its last attempt's, a 429; its first attempt got a 500, which may
    // have made the talk.
    let server = Scripted::start(|seen, i| match (seen.method.as_str(), seen.path()) {
        ("POST", "/talks") if i == 0 => reply::empty(500),
        ("POST", "/talks") => reply::empty(429),
        ("GET", "/talks") => reply::json(200, json!({"talks": []})),
        _ => reply::empty(404),
    })
    .await;
    let did = client(config(&server.base_url), limiter(1));
    let err = did
        .create_talk_keyed(&hello(None), &Priority::Normal.into(), "job-1", false)
        .await
        .unwrap_err();
    assert_eq!(err.error, VideoApiError::RateLimited { retry_after: None });
    assert_eq!(err.sent, ports::Sent::Maybe);
    assert_eq!(did.stats().lookup_pages, 1, "looked once, after the 500");
}

#[tokio::test]
async fn a_create_that_never_reached_a_server_sent_nothing_and_looks_for_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let did = client(config(&format!("http://127.0.0.1:{port}")), limiter(1));
    let err = did
        .create_talk_keyed(&hello(None), &Priority::Normal.into(), "job-2", false)
        .await
        .unwrap_err();
    assert!(
        matches!(err.error, VideoApiError::Connect { .. }),
        "{err:?}"
    );
    assert_eq!(err.sent, ports::Sent::Nothing);
    let stats = did.stats();
    assert_eq!(stats.requests, 3, "retried as any transient failure");
    assert_eq!(stats.lookup_pages, 0, "nothing could have been made");
}

#[tokio::test]
async fn a_create_cut_off_by_its_deadline_after_it_was_sent_may_have_been_sent() {
    // D-ID takes longer than the whole call may: the request was out when time ran out.
    let server = Scripted::start(|_, _| {
        reply::json(201, json!({"id": "tlk_late", "status": "created"}))
            .set_delay(Duration::from_secs(5))
    })
    .await;
    let did = client(
        did_client::DidClientConfig {
            call_deadline: Duration::from_millis(300),
            ..config(&server.base_url)
        },
        limiter(1),
    );
    let err = did
        .create_talk_keyed(&hello(None), &Priority::Normal.into(), "job-3", false)
        .await
        .unwrap_err();
    assert_eq!(err.error, VideoApiError::Timeout);
    assert_eq!(err.sent, ports::Sent::Maybe);
}
