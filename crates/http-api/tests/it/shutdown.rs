//! Requests still running when the shutdown grace runs out: each gets a 503 `shutting_down`
//! answer and a log line, and a synchronous generate names the talk it had created.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use did_fake::{Delay, FakeDid, Faults, Latency, RunningFake, Timing};
use serde_json::{Value, json};

use crate::openapi::Checker;
use crate::support::{self, Server};
use test_support::http::client;

const GENERATE: &str = "/api/d_id_optimized/generate-video";

/// A fake whose talks render for about ten minutes, so a synchronous generate keeps waiting.
async fn slow_render_fake(faults: Faults) -> RunningFake {
    FakeDid::builder()
        .time_scale(0.001)
        .timing(Timing {
            queue_delay_s: (0.0, 0.0),
            fixed_overhead_s: (600_000.0, 600_000.0),
            ..Timing::default()
        })
        .faults(faults)
        .spawn()
        .await
        .expect("fake D-ID starts")
}

/// `GET {fake}/talks` with the fake's key: the talks D-ID really has.
async fn talks_at_the_fake(fake: &RunningFake) -> Vec<Value> {
    let auth = base64::engine::general_purpose::STANDARD.encode(did_fake::DEFAULT_API_KEY);
    let resp = client()
        .get(format!("{}/talks", fake.base_url()))
        .header("authorization", format!("Basic {auth}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let page: Value = resp.json().await.unwrap();
    page["talks"].as_array().cloned().unwrap_or_default()
}

/// Sends a synchronous generate with request id `request_id` in its own task.
fn spawn_generate(
    srv: &Server,
    request_id: &'static str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = srv.api("/generate-video");
    tokio::spawn(async move {
        client()
            .post(url)
            .header("x-request-id", request_id)
            .json(&json!({
                "audio_url": "https://x.test/a.wav",
                "source_url": "https://x.test/a.jpg",
            }))
            .send()
            .await
            .expect("the cut-off request gets an answer")
    })
}

/// Shuts `srv` down and waits (bounded) for `run` to return.
async fn shut_down(srv: &mut Server) {
    srv.trigger_shutdown();
    tokio::time::timeout(Duration::from_secs(10), srv.take_task())
        .await
        .expect("shutdown is bounded")
        .unwrap()
        .unwrap();
}

/// The captured JSON log lines of request `request_id`.
fn log_lines_of(request_id: &str) -> Vec<Value> {
    support::logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["span"]["request_id"] == request_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_generate_cut_off_at_shutdown_answers_503_with_its_talk_and_logs_it() {
    let fake = slow_render_fake(Faults::default()).await;
    let mut srv = support::service(&fake, &[("SHUTDOWN_GRACE_SECS", "0.3")]).await;
    let state = srv.state.clone();
    let in_flight = spawn_generate(&srv, "cutoff-generate-1");
    // A status poll has been answered, so the create has come back and the handler is waiting.
    test_support::eventually(
        Duration::from_secs(5),
        "the generate is polling",
        || async { fake.stats().total("GET /talks/{id}") >= 1 },
    )
    .await;

    shut_down(&mut srv).await;
    let resp = in_flight.await.unwrap();
    let headers = resp.headers().clone();
    let (status, v) = Checker::new().check_response("POST", GENERATE, resp).await;

    // The talk D-ID has: one, still rendering, and it is the one the answer names.
    let talks = talks_at_the_fake(&fake).await;
    assert_eq!(talks.len(), 1, "{talks:?}");
    let talk_id = talks[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(talks[0]["status"], "done", "{talks:?}");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "shutting_down", "{v}");
    assert_eq!(v["error"]["talk_id"], talk_id.as_str(), "{v}");
    assert_eq!(
        v["error"]["status_url"],
        format!("/api/d_id_optimized/talk-status/{talk_id}"),
        "{v}"
    );
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(headers["connection"], "close");
    assert_eq!(headers["x-request-id"], "cutoff-generate-1");

    // The log names the request and the talk in one line.
    let lines = log_lines_of("cutoff-generate-1");
    let cut = lines
        .iter()
        .find(|l| l["fields"]["message"] == "shutdown grace elapsed; request cut off")
        .unwrap_or_else(|| panic!("no cut-off line for the request: {lines:?}"));
    assert_eq!(cut["level"], "WARN");
    assert_eq!(cut["fields"]["talk_id"], talk_id.as_str(), "{cut}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "request finished" && l["fields"]["status"] == 503),
        "{lines:?}"
    );

    test_support::eventually(Duration::from_secs(5), "the slot is free again", || async {
        state.limiter().stats().await.active == 0
    })
    .await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generate_cut_off_before_d_id_answered_the_create_names_no_talk() {
    // The create takes longer than the grace: no talk id is known when the grace ends.
    let faults = Faults {
        latency: Latency {
            all: None,
            routes: BTreeMap::from([("POST /talks".to_owned(), Delay::Fixed(2_000))]),
        },
        ..Faults::default()
    };
    let fake = slow_render_fake(faults).await;
    let mut srv = support::service(&fake, &[("SHUTDOWN_GRACE_SECS", "0.3")]).await;
    let state = srv.state.clone();
    let in_flight = spawn_generate(&srv, "cutoff-generate-2");
    // The create is held at did-fake; a short call of the service's own (the account's
    // credits at start) may be in flight for a moment, so the call must still be there after.
    test_support::eventually(Duration::from_secs(5), "the create is at D-ID", || async {
        if fake.stats().in_flight != 1 {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.stats().in_flight == 1
    })
    .await;

    shut_down(&mut srv).await;
    let resp = in_flight.await.unwrap();
    let headers = resp.headers().clone();
    let (status, v) = Checker::new().check_response("POST", GENERATE, resp).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "shutting_down", "{v}");
    assert_eq!(v["error"].get("talk_id"), None, "{v}");
    assert_eq!(v["error"].get("status_url"), None, "{v}");
    assert_eq!(headers["retry-after"], "5");

    let lines = log_lines_of("cutoff-generate-2");
    let cut = lines
        .iter()
        .find(|l| l["fields"]["message"] == "shutdown grace elapsed; request cut off")
        .unwrap_or_else(|| panic!("no cut-off line for the request: {lines:?}"));
    assert_eq!(cut["fields"].get("talk_id"), None, "{cut}");

    // The create D-ID had started runs to its end and only then gives its slot back.
    test_support::eventually(Duration::from_secs(5), "the slot is free again", || async {
        state.limiter().stats().await.active == 0
    })
    .await;
    fake.shutdown().await;
}
