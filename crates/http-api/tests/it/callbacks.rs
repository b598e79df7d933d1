//! talkgate → caller callbacks, end to end: a job's outcome reaches a receiver the test
//! starts, signed per Standard Webhooks (checked by the `standardwebhooks` crate's verifier,
//! with either secret of a rotation), retried under one `webhook-id` until a 2xx — also
//! across a restart of the service on the same SQLite file — and every attempt shows on
//! `GET /jobs/{id}`, in `/stats` and in `/metrics`.

use std::time::Duration;

use did_fake::Faults;
use serde_json::{Value, json};
use standardwebhooks::Webhook;
use test_support::eventually;
use test_support::http::{client, get_json, post_json};
use test_support::receiver::{Received, Receiver};

use crate::support;

const SECRET: &str = support::CALLBACK_SECRET;
const PREVIOUS: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// What a service delivering callbacks to a loopback receiver needs, fast retries.
fn callback_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CALLBACK_SECRET", SECRET),
        ("CALLBACK_SECRET_PREVIOUS", PREVIOUS),
        // The receiver is on loopback, over http: both allowed explicitly.
        ("CALLBACK_ALLOW_HTTP", "true"),
        ("CALLBACK_ALLOWED_NETS", "127.0.0.0/8"),
        ("CALLBACK_FIRST_RETRY_SECS", "0.05"),
    ]
}

fn job_body(n: u32, callback_url: &str) -> Value {
    json!({
        "audio_url": format!("https://example.test/voice-{n}.wav"),
        "source_url": format!("https://example.test/face-{n}.jpg"),
        "callback_url": callback_url,
    })
}

/// Whether the crate's verifier with `secret` accepts what the receiver got.
fn verifies(secret: &str, got: &Received) -> bool {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let Some(value) = got.header(name) else {
            return false;
        };
        headers.insert(name, value.parse().unwrap());
    }
    Webhook::new(secret)
        .unwrap()
        .verify(&got.body, &headers)
        .is_ok()
}

async fn job(srv: &support::Server, id: &str) -> Value {
    get_json(&client(), srv.api(&format!("/jobs/{id}")), None)
        .await
        .1
}

async fn settled(srv: &support::Server, id: &str) -> Value {
    eventually(
        Duration::from_secs(20),
        &format!("job {id}'s callback settles"),
        || async {
            let job = job(srv, id).await;
            match job["callback"]["status"].as_str() {
                Some("delivered" | "failed") => Ok(job),
                _ => Err(job),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_job_is_called_back_signed_and_retried_under_one_webhook_id() {
    let fake = support::fake().await;
    let receiver = Receiver::start(503).await;
    let srv = support::service(&fake, &callback_env()).await;
    let hook = receiver.url("/hooks/talkgate?tenant=a");
    let (status, submitted) =
        post_json(&client(), srv.api("/jobs"), None, &job_body(1, &hook)).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        submitted["callback"],
        Value::Null,
        "nothing is owed before the job ends"
    );

    // The first attempt is answered 503; the next one 200.
    let first = receiver.wait_for(1, Duration::from_secs(20)).await;
    receiver.set_status(200);
    let job = settled(&srv, &id).await;
    let got = receiver.received();
    assert_eq!(got.len(), 2, "one failed attempt, one delivery: {got:?}");
    assert_eq!(first[0].path, "/hooks/talkgate?tenant=a");
    let webhook_id = got[0].header("webhook-id").unwrap();
    assert!(webhook_id.starts_with("msg_"), "{webhook_id}");
    assert_eq!(
        got[1].header("webhook-id"),
        Some(webhook_id),
        "one id across retries"
    );
    assert_eq!(got[0].body, got[1].body, "the same body on every attempt");
    for attempt in &got {
        assert_eq!(attempt.method, "POST");
        assert_eq!(attempt.header("content-type"), Some("application/json"));
        assert!(verifies(SECRET, attempt), "the current secret verifies");
        assert!(
            verifies(PREVIOUS, attempt),
            "the previous one too, during the rotation"
        );
        assert!(
            !verifies("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", attempt),
            "another secret does not"
        );
    }
    let event = got[1].json();
    assert_eq!(event["type"], "talk.done", "{event}");
    assert!(
        event["timestamp"].as_str().unwrap().ends_with('Z'),
        "{event}"
    );
    assert_eq!(event["data"]["job_id"], id.as_str());
    assert_eq!(event["data"]["status"], "done");
    assert!(event["data"]["result_url"].is_string(), "{event}");
    assert!(event["data"].get("callback").is_none(), "{event}");

    let cb = &job["callback"];
    assert_eq!(cb["event"], "talk.done", "{job}");
    assert_eq!(cb["webhook_id"], webhook_id);
    assert_eq!(cb["status"], "delivered");
    assert_eq!(cb["attempts"], 2);
    assert_eq!(cb["history"][0]["outcome"], "status");
    assert_eq!(cb["history"][0]["status"], 503);
    assert_eq!(cb["history"][1]["outcome"], "ok");
    assert_eq!(cb["history"][1]["status"], 200);
    assert!(cb["ended_at"].is_string(), "{job}");
    assert_eq!(cb["next_attempt_at"], Value::Null);

    let (_, stats) = get_json(&client(), srv.api("/stats"), None).await;
    let s = &stats["jobs"]["callbacks"];
    assert_eq!(s["configured"], true, "{s}");
    assert_eq!(
        (
            s["attempted"].as_u64(),
            s["succeeded"].as_u64(),
            s["failed"].as_u64(),
            s["pending"].as_u64()
        ),
        (Some(2), Some(1), Some(0), Some(0)),
        "{s}"
    );
    let metrics = srv.metrics().await;
    for line in [
        "callback_attempts_total{outcome=\"status\"} 1",
        "callback_attempts_total{outcome=\"ok\"} 1",
        "callback_deliveries_total{result=\"delivered\"} 1",
        "callback_deliveries_pending 0",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_talk_is_told_as_talk_rejected_and_a_410_gives_up_at_once() {
    let fake = support::fake_with(Faults {
        p_rejected: 1.0,
        ..Faults::default()
    })
    .await;
    let receiver = Receiver::start(410).await;
    let srv = support::service(&fake, &callback_env()).await;
    let (status, submitted) = post_json(
        &client(),
        srv.api("/jobs"),
        None,
        &job_body(2, &receiver.url("/gone")),
    )
    .await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["job_id"].as_str().unwrap();
    let job = settled(&srv, id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["callback"]["event"], "talk.rejected", "{job}");
    assert_eq!(job["callback"]["status"], "failed", "a 410 is final: {job}");
    assert_eq!(job["callback"]["attempts"], 1);
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["type"], "talk.rejected");
    assert_eq!(got[0].json()["data"]["error"]["code"], "talk_rejected");
    let (_, stats) = get_json(&client(), srv.api("/stats"), None).await;
    assert_eq!(stats["jobs"]["callbacks"]["failed"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_url_is_refused_without_a_secret_and_taken_with_one() {
    let fake = support::fake().await;
    let off = support::service(&fake, &[]).await;
    let (status, body) = post_json(
        &client(),
        off.api("/jobs"),
        None,
        &job_body(3, "https://hooks.example.com/talkgate"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "callbacks_not_configured", "{body}");
    let (_, stats) = get_json(&client(), off.api("/stats"), None).await;
    assert_eq!(stats["jobs"]["callbacks"]["configured"], false, "{stats}");

    // With a secret, a public https URL is taken (the SSRF table, every address form, is
    // `jobs::internal_callback_urls_are_refused_at_submit_unless_allowed`).
    let on = support::service(&fake, &[("CALLBACK_SECRET", SECRET)]).await;
    let (status, body) = post_json(
        &client(),
        on.api("/jobs"),
        None,
        &job_body(5, "https://hooks.example.com/talkgate"),
    )
    .await;
    assert_eq!(status, 202, "a public https URL is taken: {body}");
    // generate-video does not take one: refused, not silently dropped.
    let mut generate = job_body(6, "https://hooks.example.com/talkgate");
    generate["wait"] = json!(false);
    let (status, body) = post_json(&client(), on.api("/generate-video"), None, &generate).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST /jobs"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_callback_survives_a_restart_and_keeps_its_webhook_id() {
    let dir = support::TempDir::new("callbacks");
    let db = dir.file("jobs.sqlite3");
    let fake = support::fake().await;
    let receiver = Receiver::start(500).await;
    let mut env = callback_env();
    env.push(("JOB_STORE", "sqlite"));
    env.push(("JOB_STORE_PATH", &db));
    // Slow retries: the second attempt belongs to the next process.
    env.push(("CALLBACK_FIRST_RETRY_SECS", "1"));
    let srv = support::service(&fake, &env).await;
    let (status, submitted) = post_json(
        &client(),
        srv.api("/jobs"),
        None,
        &job_body(6, &receiver.url("/hook")),
    )
    .await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["job_id"].as_str().unwrap().to_owned();
    let first = receiver.wait_for(1, Duration::from_secs(20)).await;
    let webhook_id = first[0].header("webhook-id").unwrap().to_owned();
    srv.stop().await;

    // An instance without the secret delivers nothing, keeps the job and says so at start.
    support::init_logs();
    let keep: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .filter(|(k, _)| !k.starts_with("CALLBACK_"))
        .collect();
    let off = support::service(&fake, &keep).await;
    eventually(Duration::from_secs(10), "the start-up warning", || async {
        let logs = support::logs();
        if logs.contains("callbacks are pending in the job store but this instance delivers none")
            && logs.contains("\"pending\":1")
        {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    let (_, stats) = get_json(&client(), off.api("/stats"), None).await;
    assert_eq!(stats["jobs"]["callbacks"]["pending"], 1, "{stats}");
    off.stop().await;

    receiver.set_status(204);
    let srv = support::service(&fake, &env).await;
    let job = settled(&srv, &id).await;
    assert_eq!(job["callback"]["status"], "delivered", "{job}");
    let got = receiver.received();
    assert!(got.len() >= 2, "{got:?}");
    assert!(
        got.iter()
            .all(|g| g.header("webhook-id") == Some(webhook_id.as_str())),
        "one webhook-id across the restart"
    );
    assert_eq!(job["callback"]["history"][0]["status"], 500, "{job}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_holds_back_no_other() {
    let fake = support::fake().await;
    // Answers only after 3 s, within the 5 s timeout: each attempt holds its slot that long.
    let slow = Receiver::start(200).await;
    slow.set_delay(Duration::from_secs(3));
    let fast = Receiver::start(200).await;
    let mut env = callback_env();
    env.extend([
        ("CALLBACK_TIMEOUT_SECS", "5"),
        ("CALLBACK_WORKERS", "4"),
        ("CALLBACK_PER_ENDPOINT", "2"),
    ]);
    let srv = support::service(&fake, &env).await;
    let submit = |n: u32, url: String| {
        let srv = &srv;
        async move {
            let (status, job) =
                post_json(&client(), srv.api("/jobs"), None, &job_body(n, &url)).await;
            assert_eq!(status, 202, "{job}");
            job["job_id"].as_str().unwrap().to_owned()
        }
    };
    let mut slow_ids = Vec::new();
    for n in 0..8 {
        slow_ids.push(submit(10 + n, slow.url(&format!("/slow/{n}"))).await);
    }
    // The slow receiver's callbacks are under way (two at a time) before the fast ones exist.
    slow.wait_for(1, Duration::from_secs(20)).await;
    let started = std::time::Instant::now();
    let mut fast_ids = Vec::new();
    for n in 0..4 {
        fast_ids.push(submit(30 + n, fast.url(&format!("/fast/{n}"))).await);
    }
    fast.wait_for(4, Duration::from_secs(20)).await;
    let waited = started.elapsed();
    let slow_got = slow.received().len();
    assert!(
        slow_got < 8,
        "the slow receiver still has callbacks to get ({slow_got} of 8), yet the fast one got all 4 after {waited:?}"
    );
    // And the slow ones all arrive in the end, none given up.
    for id in &slow_ids {
        let job = settled(&srv, id).await;
        assert_eq!(job["callback"]["status"], "delivered", "{job}");
    }
    for id in &fast_ids {
        assert_eq!(job(&srv, id).await["callback"]["status"], "delivered");
    }
}
