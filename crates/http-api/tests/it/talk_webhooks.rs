//! D-ID → talkgate webhooks, end to end over did-fake (which delivers them as D-ID does):
//! with `PUBLIC_BASE_URL` set, jobs finish on the webhook's nudge with one status poll each;
//! a wrong token, an unknown job or a forged body changes nothing; a duplicate is told so;
//! lost webhooks are covered by the fallback polls.

use std::time::{Duration, Instant};

use did_fake::{FakeDid, Faults, RunningFake, WebhookFaults};
use serde_json::{Value, json};

use crate::support;
use test_support::eventually;
use test_support::http::{client, get_json, post_json};

const POLL_ROUTE: &str = "GET /talks/{id}";

async fn fake(time_scale: f64, webhooks: WebhookFaults, stuck: bool) -> RunningFake {
    FakeDid::builder()
        .time_scale(time_scale)
        .allow_http_webhooks(true)
        .faults(Faults {
            webhooks,
            p_stuck: if stuck { 1.0 } else { 0.0 },
            ..Faults::default()
        })
        .spawn()
        .await
        .unwrap()
}

fn talk_body(n: u32) -> Value {
    json!({
        "audio_url": format!("https://example.test/voice-{n}.wav"),
        "source_url": format!("https://example.test/face-{n}.jpg"),
    })
}

/// Submits `n` jobs; their ids.
async fn submit(srv: &support::Server, n: u32) -> Vec<String> {
    let http = client();
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, job) = post_json(&http, srv.api("/jobs"), None, &talk_body(i)).await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn wait_status(srv: &support::Server, id: &str, want: &str) -> Value {
    let http = client();
    eventually(
        Duration::from_secs(15),
        &format!("job {id} {want}"),
        || async {
            let (_, job) = get_json(&http, srv.api(&format!("/jobs/{id}")), None).await;
            if job["status"] == want {
                Ok(job)
            } else {
                Err(job)
            }
        },
    )
    .await
}

async fn token_of(srv: &support::Server, id: &str) -> String {
    let id = ports::JobId::parse(id).unwrap();
    let job = srv.state.jobs().store().get(&id).await.unwrap().unwrap();
    job.webhook_token
        .expect("a job of a service with PUBLIC_BASE_URL has a token")
}

async fn receipts(srv: &support::Server, token: Option<&str>) -> Value {
    let (_, stats) = get_json(&client(), srv.api("/stats"), token).await;
    stats["jobs"]["talk_webhooks"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_webhooks_each_job_is_polled_once_to_confirm_its_talk() {
    let fake = fake(0.001, WebhookFaults::default(), false).await;
    // Fallback polls far away: every finish here is the webhook's.
    let srv = support::webhook_service(&fake, &[("TALK_WEBHOOK_POLL_SECS", "60")]).await;
    let ids = submit(&srv, 10).await;
    let started = Instant::now();
    for id in &ids {
        let job = wait_status(&srv, id, "done").await;
        assert!(job["result_url"].is_string(), "{job}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the jobs waited for the fallback poll"
    );
    let stats = fake.stats();
    assert_eq!(stats.webhooks.delivered, 10, "{:?}", stats.webhooks);
    assert_eq!(
        stats.total(POLL_ROUTE),
        10,
        "one confirming poll per job: {:?}",
        stats.requests
    );
    let r = receipts(&srv, None).await;
    assert_eq!(r["enabled"], true, "{r}");
    assert_eq!(
        (r["accepted"].as_u64(), r["confirmed"].as_u64()),
        (Some(10), Some(10)),
        "{r}"
    );
    let (_, metrics) = {
        let resp = client().get(srv.url("/metrics")).send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    };
    assert!(
        metrics.contains("talk_webhook_receipts_total{receipt=\"confirmed\"} 10"),
        "{metrics}"
    );

    // D-ID delivers again (late, or twice): nothing changes, the receipt says so.
    let url = srv.api(&format!(
        "/talk-webhooks/{}?token={}",
        ids[0],
        token_of(&srv, &ids[0]).await
    ));
    let (status, body) = post_json(
        &client(),
        url,
        None,
        &json!({"id": "tlk_x", "status": "error"}),
    )
    .await;
    assert_eq!(
        (status, body["receipt"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    assert_eq!(wait_status(&srv, &ids[0], "done").await["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_unknown_jobs_and_forged_bodies_change_nothing() {
    // Talks stay `started`: nothing finishes them but a poll that sees them end.
    let fake = fake(0.001, WebhookFaults::default(), true).await;
    let srv = support::webhook_service(
        &fake,
        &[
            ("TALK_WEBHOOK_POLL_SECS", "60"),
            ("HTTP_API_TOKEN", "caller-secret"),
        ],
    )
    .await;
    let http = client();
    let (status, job) = post_json(
        &http,
        srv.api("/jobs"),
        Some("caller-secret"),
        &talk_body(1),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["job_id"].as_str().unwrap().to_owned();
    let get = |id: String| {
        let http = http.clone();
        let url = srv.api(&format!("/jobs/{id}"));
        async move { get_json(&http, url, Some("caller-secret")).await.1 }
    };
    eventually(Duration::from_secs(10), "the job processing", || async {
        let job = get(id.clone()).await;
        if job["status"] == "processing" {
            Ok(())
        } else {
            Err(job)
        }
    })
    .await;
    let token = token_of(&srv, &id).await;
    let forged =
        json!({"id": "tlk_forged", "status": "done", "result_url": "https://evil.test/v.mp4"});
    for (path, why) in [
        (format!("/talk-webhooks/{id}?token=wrong"), "a wrong token"),
        (format!("/talk-webhooks/{id}"), "no token"),
        (
            format!("/talk-webhooks/job_nosuchjob0000000000000?token={token}"),
            "an unknown job",
        ),
        (
            format!("/talk-webhooks/not-a-job?token={token}"),
            "a malformed id",
        ),
    ] {
        // The route needs no bearer token (D-ID has none), only its own.
        let (status, body) = post_json(&http, srv.api(&path), None, &forged).await;
        assert_eq!(status, 404, "{why}: {body}");
        assert_eq!(body["error"]["code"], "job_not_found", "{why}: {body}");
    }
    // The right token with a forged body: accepted, but only the poll decides, and the talk
    // is still rendering.
    let polls_before = fake.stats().total(POLL_ROUTE);
    let (status, body) = post_json(
        &http,
        srv.api(&format!("/talk-webhooks/{id}?token={token}")),
        None,
        &forged,
    )
    .await;
    assert_eq!(
        (status, body["receipt"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    eventually(Duration::from_secs(10), "the confirming poll", || async {
        let polls = fake.stats().total(POLL_ROUTE);
        if polls > polls_before {
            Ok(())
        } else {
            Err(polls)
        }
    })
    .await;
    let job = get(id.clone()).await;
    assert_eq!(
        job["status"], "processing",
        "a forged body finished the job: {job}"
    );
    assert_eq!(job["result_url"], Value::Null, "{job}");
    let r = receipts(&srv, Some("caller-secret")).await;
    assert_eq!(
        (
            r["rejected"].as_u64(),
            r["accepted"].as_u64(),
            r["confirmed"].as_u64()
        ),
        (Some(4), Some(1), Some(0)),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_webhooks_are_covered_by_the_fallback_polls() {
    let dropped = WebhookFaults {
        p_drop: 1.0,
        ..WebhookFaults::default()
    };
    let fake = fake(0.001, dropped, false).await;
    let srv = support::webhook_service(&fake, &[("TALK_WEBHOOK_POLL_SECS", "0.3")]).await;
    let ids = submit(&srv, 5).await;
    for id in &ids {
        wait_status(&srv, id, "done").await;
    }
    let stats = fake.stats();
    assert_eq!(stats.webhooks.dropped, 5, "{:?}", stats.webhooks);
    assert!(stats.total(POLL_ROUTE) >= 5, "{:?}", stats.requests);
    let r = receipts(&srv, None).await;
    assert_eq!(r["accepted"], 0, "{r}");
}
