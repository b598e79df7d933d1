//! Credit budgets end to end: a tenant's talks reserve their estimated credits before
//! anything is sent to D-ID, a talk that does not fit is 402 `budget_exhausted` with no
//! paid call, a finished talk settles D-ID's real duration, and `/stats` and `/metrics` show
//! each budget and the account's balance from `GET /credits`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support;
use crate::tenants::tenant;
use test_support::http::{client, get_json};

/// A talk of an audio the service did not upload (taken to last 10 s here, as the fake
/// also takes it), padded by `pad` seconds of silence.
fn audio_body(n: u32, pad: u32) -> Value {
    json!({
        "audio_url": format!("https://example.test/voice-{n}.wav"),
        "source_url": "https://example.test/face.jpg",
        "config": {"stitch": true, "pad_audio": pad},
    })
}

async fn post_job(srv: &support::Server, token: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .post(srv.api("/jobs"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    test_support::http::json(resp).await
}

async fn until_ended(srv: &support::Server, token: &str, id: &str) -> Value {
    let http = client();
    let start = Instant::now();
    loop {
        let (status, job) = get_json(&http, srv.api(&format!("/jobs/{id}")), Some(token)).await;
        assert_eq!(status, 200, "{job}");
        if matches!(
            job["status"].as_str(),
            Some("done" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_talk_over_budget_is_402_before_any_paid_call_and_done_talks_settle_their_length() {
    support::init_logs();
    let dir = support::TempDir::new("budgets");
    let file = dir.file("tenants.toml");
    std::fs::write(
        &file,
        tenant(
            "web",
            "web-token",
            "budget = { credits = 3, period = \"day\" }",
        ) + &tenant("ops", "ops-token", "admin = true"),
    )
    .unwrap();
    let fake = support::fake().await;
    let srv = support::service(
        &fake,
        &[
            ("TENANTS_FILE", file.as_str()),
            ("CREDITS_CHECK_SECS", "10"),
            ("BUDGET_UNKNOWN_AUDIO_SECS", "10"),
        ],
    )
    .await;
    let http = client();

    // 10 s + 10 s of padding: 2 credits, estimated and paid.
    let (status, job) = post_job(&srv, "web-token", &audio_body(1, 10)).await;
    assert_eq!(status, 202, "{job}");
    let done = until_ended(&srv, "web-token", job["job_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "done", "{done}");

    assert_eq!(done["video_seconds"], json!(20.0), "{done}");
    // 10 s + 40 s: 4 credits, and 1 is left.
    let created = fake.stats().talks_created;
    let audio = audio_body(2, 40);
    let (status, refused) = post_job(&srv, "web-token", &audio).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (402, Some("budget_exhausted")),
        "{refused}"
    );
    let budget = &refused["error"]["budget"];
    assert_eq!(
        (
            &budget["credits"],
            &budget["spent"],
            &budget["remaining"],
            &budget["needed"],
            &budget["period"]
        ),
        (&json!(3), &json!(2), &json!(1), &json!(4), &json!("day")),
        "{refused}"
    );
    assert!(budget["resets_at"].is_string(), "{refused}");
    // The synchronous route is refused the same way, before any call.
    let resp = client()
        .post(srv.api("/generate-video"))
        .bearer_auth("web-token")
        .json(&audio)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    assert_eq!(fake.stats().talks_created, created, "no paid call");

    // A talk of 1 credit still fits; the next does not.
    let (status, fits) = post_job(&srv, "web-token", &audio_body(3, 0)).await;
    assert_eq!(status, 202, "{fits}");
    let (status, _) = post_job(&srv, "web-token", &audio_body(4, 0)).await;
    assert_eq!(status, 402);
    until_ended(&srv, "web-token", fits["job_id"].as_str().unwrap()).await;
    // A tenant without a budget is not held back.
    let (status, _) = post_job(&srv, "ops-token", &audio).await;
    assert_eq!(status, 202);

    // The tenant sees its own budget; an admin every budget and the account.
    let (_, own) = get_json(&http, srv.api("/stats"), Some("web-token")).await;
    let b = &own["tenants"]["by_tenant"]["web"]["budget"];
    assert_eq!(
        (&b["spent"], &b["reserved"], &b["remaining"]),
        (&json!(3), &json!(0), &json!(0)),
        "{own}"
    );
    assert!(
        own.get("credits").is_none(),
        "the account is the admins': {own}"
    );
    let (_, all) = get_json(&http, srv.api("/stats"), Some("ops-token")).await;
    let credits = &all["credits"];
    assert_eq!(credits["reservations"]["reservations_refused"], 3, "{all}");
    assert_eq!(credits["reservations"]["reservations_settled"], 2, "{all}");
    assert!(
        credits["account"]["account_remaining"].is_i64(),
        "GET /credits was read: {all}"
    );
    assert_eq!(credits["account"]["overcommitted"], false, "{all}");
    let metrics = srv.metrics().await;
    for line in [
        "talkgate_tenant_credits_budget{tenant=\"web\"} 3",
        "talkgate_tenant_credits_spent{tenant=\"web\"} 3",
        "talkgate_credit_reservations_total{result=\"refused\"} 3",
        "talkgate_account_credit_checks_total{result=\"ok\"}",
        "talkgate_account_credits_remaining ",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
}

/// Two instances sharing one Redis job store (so one ledger) take 24 talks of one tenant at
/// once, 12 through each, for a budget of 10 credits: 10 are accepted, 14 refused, and D-ID
/// is asked for at most 10 talks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_for_the_last_credits_never_go_over_the_budget() {
    support::init_logs();
    let redis = tokio::task::spawn_blocking(test_support::redis::RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let dir = support::TempDir::new("budgets-two");
    let file = dir.file("tenants.toml");
    std::fs::write(
        &file,
        tenant(
            "web",
            "web-token",
            "budget = { credits = 10, period = \"month\" }",
        ),
    )
    .unwrap();
    let fake = support::fake().await;
    let name = test_support::unique_name("http-api-it-budget");
    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(
            support::service(
                &fake,
                &[
                    ("TENANTS_FILE", file.as_str()),
                    ("REDIS_URL", url.as_str()),
                    ("JOB_STORE", "redis"),
                    ("LIMITER_NAME", name.as_str()),
                    ("BUDGET_UNKNOWN_AUDIO_SECS", "10"),
                    ("CREDITS_CHECK_SECS", "0"),
                ],
            )
            .await,
        );
    }
    let posts: Vec<_> = (0..24u32)
        .map(|n| {
            let url = instances[(n % 2) as usize].api("/jobs");
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .bearer_auth("web-token")
                    .json(&audio_body(100 + n, 0))
                    .send()
                    .await
                    .unwrap();
                resp.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for p in posts {
        statuses.push(p.await.unwrap());
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((accepted, refused), (10, 14), "{statuses:?}");
    let (_, stats) = get_json(&client(), instances[1].api("/stats"), Some("web-token")).await;
    let b = &stats["tenants"]["by_tenant"]["web"]["budget"];
    let held = b["spent"].as_u64().unwrap() + b["reserved"].as_u64().unwrap();
    assert_eq!(held, 10, "{stats}");
    assert!(fake.stats().talks_created <= 10);
}
