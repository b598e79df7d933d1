//! Issue 9 regressions (body caps are in `bodies`): uploads have a bounded total wait, an
//! abandoned exchange keeps its slot until D-ID is done with it, and polling starts early.

use std::time::Duration;

use did_client::{DidClient, DidClientConfig};
use did_fake::{Delay, FakeDid, Faults, Latency};
use domain::Priority;
use ports::{VideoApi, VideoApiError, WaitOptions};
use secrecy::SecretString;
use serde_json::json;

use crate::support::{
    Scripted, client, config, fast_retry, hello, limiter, png_upload, reply, talk_json,
};

#[test]
fn upload_defaults_fit_the_other_routes_worst_case() {
    let cfg = DidClientConfig::default();
    assert!(cfg.upload_call_deadline <= Duration::from_secs(150));
    assert!(cfg.upload_call_deadline >= cfg.call_deadline);
    // Two full attempts and the first backoff fit in the deadline, so a retry is real.
    assert!(cfg.upload_timeout * 2 + cfg.retry.max_delay < cfg.upload_call_deadline);
}

#[tokio::test]
async fn a_stalled_upload_ends_as_timeout_within_its_deadline() {
    let server = Scripted::start(|_, _| reply::empty(201).set_delay(Duration::from_secs(60))).await;
    let mut cfg = config(&server.base_url);
    cfg.upload_timeout = Duration::from_millis(150);
    cfg.upload_call_deadline = Duration::from_millis(400);
    let did = client(cfg, limiter(1));
    let png = png_upload(None);
    let started = tokio::time::Instant::now();
    let err = did
        .upload_image(png, &Priority::Normal.into())
        .await
        .unwrap_err();
    assert_eq!(err, VideoApiError::Timeout);
    // 150 ms + ≤20 ms + 150 ms + ≤40 ms: the third attempt starts and is cut by the deadline.
    assert_eq!(did.stats().requests, 3);
    // The deadline, not three full timeouts, ended it (bounded by construction; the slack
    // is only for scheduling).
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_abandoned_exchange_keeps_its_slot_until_the_upstream_is_done() {
    let fake = FakeDid::builder()
        .time_scale(0.001)
        .faults(Faults {
            latency: Latency {
                all: Some(Delay::Fixed(400)),
                ..Latency::default()
            },
            ..Faults::default()
        })
        .spawn()
        .await
        .unwrap();
    let cfg = DidClientConfig {
        retry: fast_retry(),
        ..DidClientConfig::new(
            fake.base_url(),
            Some(SecretString::from(did_fake::DEFAULT_API_KEY)),
        )
    };
    let did: DidClient = client(cfg, limiter(1));
    // Caller A hangs up while its request is at D-ID.
    let a = tokio::time::timeout(
        Duration::from_millis(100),
        did.credits(&Priority::Normal.into()),
    )
    .await;
    assert!(a.is_err(), "A was still waiting when it hung up");
    // Caller B comes right after; with one slot it must not overlap A's exchange.
    did.credits(&Priority::Normal.into()).await.unwrap();
    let stats = fake.stats();
    assert_eq!(stats.peak_in_flight, 1, "two exchanges overlapped at D-ID");
    // A's exchange ran to its end (answered, not cut when A hung up) before B's was sent.
    assert_eq!(
        stats.count("GET /credits", 200),
        2,
        "A's exchange was cut or overlapped: {stats:?}"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_talk_that_is_done_at_once_is_returned_after_one_early_poll() {
    let server = Scripted::start(|seen, _| match seen.method.as_str() {
        "POST" => reply::json(201, json!({"id": "tlk_q", "status": "created"})),
        _ => reply::json(200, talk_json("tlk_q", "done")),
    })
    .await;
    let did = client(config(&server.base_url), limiter(1));
    let request = hello(None);
    let wait = WaitOptions {
        poll_interval: Duration::from_secs(60),
        max_wait: Duration::from_secs(120),
    };
    // A bounded wait, not a timing target: the first poll is due after ~0.5 s, not 60 s.
    let talk = tokio::time::timeout(
        Duration::from_secs(20),
        did.create_talk_and_wait(&request, &Priority::Normal.into(), wait),
    )
    .await
    .expect("the first poll came long before the interval")
    .unwrap();
    assert_eq!(talk.id.as_str(), "tlk_q");
    assert_eq!(did.stats().polls, 1);
}
