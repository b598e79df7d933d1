//! `GET /_fake/stats`, `POST /_fake/reset` and their in-process twins.

use did_fake::{Delay, FakeStats, Faults};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{SHORT, fast, spawn};
use test_support::eventually;

#[tokio::test]
async fn stats_count_requests_connections_talks_and_in_flight() {
    let (fake, api) = spawn(fast()).await;
    api.create_talk(Some("a")).await;
    api.create_talk(Some("a")).await;
    api.create_talk(None).await;
    api.get("/talks/tlk_nope").await;
    api.get("/credits").await;

    let mut over_http: FakeStats = api
        .send(api.http.get(api.url("/_fake/stats")))
        .await
        .json()
        .pipe();
    let mut stats = fake.stats();
    // The talks render in the background meanwhile: that gauge may move between snapshots.
    over_http.renders_in_progress = 0;
    stats.renders_in_progress = 0;
    assert_eq!(over_http, stats, "the endpoint and the snapshot agree");
    assert_eq!(stats.count("POST /talks", 201), 3);
    assert_eq!(stats.count("GET /talks/{id}", 404), 1);
    assert_eq!(stats.total("GET /credits"), 1);
    assert_eq!(stats.talks_created, 3);
    assert_eq!(
        stats.talks_by_user_data,
        [("a".to_owned(), 2)].into_iter().collect()
    );
    assert!(stats.connections_accepted >= 1);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.peak_in_flight, 1, "one request at a time");
    // `/_fake/*` is never counted.
    assert!(
        !stats.requests.keys().any(|k| k.contains("_fake/")),
        "{:?}",
        stats.requests
    );
}

#[tokio::test]
async fn peak_in_flight_sees_concurrent_requests() {
    let latency = did_fake::Latency {
        all: Some(Delay::Fixed(200)),
        ..Default::default()
    };
    let (fake, api) = spawn(fast().faults(Faults {
        latency,
        ..Faults::default()
    }))
    .await;
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.get("/credits").await.status })
        })
        .collect();
    eventually(SHORT, "four requests in flight", || async {
        fake.stats().in_flight == 4
    })
    .await;
    for c in calls {
        assert_eq!(c.await.unwrap(), StatusCode::OK);
    }
    let stats = fake.stats();
    assert_eq!((stats.in_flight, stats.peak_in_flight), (0, 4));
}

#[tokio::test]
async fn reset_zeroes_counters_and_keeps_state_unless_asked_to_clear() {
    let (fake, api) = spawn(fast().credits(10)).await;
    let id = api.create_talk(Some("x")).await;
    api.wait_status(&id, &["done"], SHORT).await;

    fake.reset();
    let stats = fake.stats();
    assert_eq!(stats.talks_created, 0);
    assert_eq!(stats.peak_in_flight, 0);
    assert!(stats.requests.is_empty() && stats.talks_by_user_data.is_empty());
    assert_eq!(stats.connections_accepted, 0);
    // State is kept: the talk and the spent credit are still there.
    assert_eq!(
        api.get(&format!("/talks/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(fake.remaining_credits(did_fake::DEFAULT_API_KEY), Some(9));

    let r = api
        .send(api.http.post(api.url("/_fake/reset?state=clear")))
        .await;
    assert_eq!(r.json(), json!({"reset": true, "state_cleared": true}));
    assert_eq!(
        api.get(&format!("/talks/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.get("/credits").await.json()["remaining"], 10);
    let stats = fake.stats();
    assert_eq!(
        stats.total("GET /talks/{id}"),
        1,
        "counted again from zero after the reset"
    );

    let r = api.send(api.http.post(api.url("/_fake/reset"))).await;
    assert_eq!(r.json()["state_cleared"], false);
    assert_eq!(fake.stats().total("GET /credits"), 0);
}

#[tokio::test]
async fn fake_s3_downloads_are_counted_but_not_in_flight() {
    let (fake, api) = spawn(fast()).await;
    let id = api.create_talk(None).await;
    let t = api.wait_status(&id, &["done"], SHORT).await;
    fake.reset();
    let resp = reqwest::get(t["result_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stats = fake.stats();
    assert_eq!(stats.count("GET /_fake_s3", 200), 1);
    assert_eq!(stats.peak_in_flight, 0);
}

/// Turns a JSON value into a typed value (test-only convenience).
trait Pipe {
    fn pipe<T: serde::de::DeserializeOwned>(self) -> T;
}

impl Pipe for serde_json::Value {
    fn pipe<T: serde::de::DeserializeOwned>(self) -> T {
        serde_json::from_value(self).expect("typed JSON")
    }
}
