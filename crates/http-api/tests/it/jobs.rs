//! The jobs API and `Idempotency-Key`, end to end over did-fake: submit, follow, replay,
//! misuse (422, 409), cancel, list, backpressure, and re-attaching after a cut-off on a
//! restarted instance over the same durable store.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use domain::Priority;
use serde_json::{Value, json};

use crate::support;
use test_support::http::{client, get_json, json as read_json, send};

fn talk_body(n: u32) -> Value {
    json!({
        "audio_url": format!("https://example.test/voice-{n}.wav"),
        "source_url": format!("https://example.test/face-{n}.jpg"),
    })
}

async fn post_keyed(
    http: &reqwest::Client,
    url: String,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http.post(url).json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req.send().await.expect("request reaches the server");
    let headers = resp.headers().clone();
    let (status, v) = read_json(resp).await;
    (status, v, headers)
}

/// A did-fake whose talks render for about a second (a request can be cut off meanwhile).
async fn rendering_fake() -> did_fake::RunningFake {
    did_fake::FakeDid::builder()
        .time_scale(0.1)
        .spawn()
        .await
        .unwrap()
}

/// Polls `GET /jobs/{id}` until its status is one of `want`.
async fn until_status(srv: &support::Server, id: &str, want: &[&str]) -> Value {
    let http = client();
    let start = Instant::now();
    loop {
        let (status, job) = get_json(&http, srv.api(&format!("/jobs/{id}")), None).await;
        assert_eq!(status, 200, "{job}");
        if want.contains(&job["status"].as_str().unwrap_or_default()) {
            return job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "job {id} never reached {want:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_accepted_at_once_and_followed_to_its_video() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("CALLBACK_SECRET", support::CALLBACK_SECRET)]).await;
    let http = client();
    let mut body = talk_body(1);
    body["priority"] = json!("high");
    body["callback_url"] = json!("https://hooks.example.test/done");
    let (status, job, headers) = post_keyed(&http, srv.api("/jobs"), None, &body).await;
    assert_eq!(status, 202, "{job}");
    let id = job["job_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("job_"), "{job}");
    assert_eq!(job["status_url"], format!("/api/d_id_optimized/jobs/{id}"));
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("/api/d_id_optimized/jobs/{id}")
    );
    assert_eq!(job["priority"], "high");
    assert_eq!(job["callback_url"], "https://hooks.example.test/done");

    let done = until_status(&srv, &id, &["done", "failed"]).await;
    assert_eq!(done["status"], "done", "{done}");
    assert!(
        done["result_url"].as_str().unwrap().starts_with("http"),
        "{done}"
    );
    assert!(
        done["talk_id"].as_str().unwrap().starts_with("tlk_"),
        "{done}"
    );
    assert!(done["result_expires_at"].is_string(), "{done}");
    assert!(done["finished_at"].is_string(), "{done}");
    assert_eq!(done["error"], Value::Null);
    let actions: Vec<&str> = done["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.first(), Some(&"create"), "{done}");
    assert_eq!(fake.stats().talks_created, 1);

    // Visible in /stats and /metrics.
    let (_, stats) = get_json(&http, srv.api("/stats"), None).await;
    assert_eq!(stats["jobs"]["store"], "memory");
    assert_eq!(stats["jobs"]["done_jobs"], 1, "{stats}");
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains("talkgate_jobs{status=\"done\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("talkgate_job_queue_age_seconds{priority=\"high\"}"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_is_the_same_job_and_a_different_body_is_refused() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[]).await;
    let http = client();
    let (s1, first, h1) = post_keyed(&http, srv.api("/jobs"), Some("order-7"), &talk_body(1)).await;
    assert_eq!(s1, 202, "{first}");
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, again, h2) =
        post_keyed(&http, srv.api("/jobs"), Some("\"order-7\""), &talk_body(1)).await;
    assert_eq!(s2, 202, "{again}");
    assert_eq!(
        again["job_id"], first["job_id"],
        "a quoted key is the same key"
    );
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(again["idempotency_key"], "order-7");

    let (s3, misuse, _) = post_keyed(&http, srv.api("/jobs"), Some("order-7"), &talk_body(2)).await;
    assert_eq!(s3, 422, "{misuse}");
    assert_eq!(misuse["error"]["code"], "idempotency_key_reused");
    assert_eq!(misuse["error"]["job_id"], first["job_id"]);

    for bad in ["", "a b", "a\"b", &"k".repeat(256)] {
        let (s, v, _) = post_keyed(&http, srv.api("/jobs"), Some(bad), &talk_body(3)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_idempotency_key")),
            "{bad:?}: {v}"
        );
    }

    let id = first["job_id"].as_str().unwrap();
    until_status(&srv, id, &["done"]).await;
    // A replay after the end answers with the finished job; still one talk.
    let (_, late, _) = post_keyed(&http, srv.api("/jobs"), Some("order-7"), &talk_body(1)).await;
    assert_eq!(late["status"], "done");
    assert_eq!(fake.stats().talks_created, 1);

    // generate-video: a replay of a finished synchronous generate is its answer again.
    let (g1, gen1, _) = post_keyed(
        &http,
        srv.api("/generate-video"),
        Some("gen-1"),
        &talk_body(5),
    )
    .await;
    assert_eq!(g1, 200, "{gen1}");
    let (g2, gen2, h) = post_keyed(
        &http,
        srv.api("/generate-video"),
        Some("gen-1"),
        &talk_body(5),
    )
    .await;
    assert_eq!(g2, 200, "{gen2}");
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(gen2["id"], gen1["id"]);
    assert_eq!(gen2["job_id"], gen1["job_id"]);
    assert_eq!(gen2["result_url"], gen1["result_url"]);
    // The asynchronous form replays the same talk too.
    let mut asynchronous = talk_body(6);
    asynchronous["wait"] = json!(false);
    let (a1, async1, _) = post_keyed(
        &http,
        srv.api("/generate-video"),
        Some("gen-2"),
        &asynchronous,
    )
    .await;
    let (a2, async2, _) = post_keyed(
        &http,
        srv.api("/generate-video"),
        Some("gen-2"),
        &asynchronous,
    )
    .await;
    assert_eq!((a1, a2), (202, 202), "{async1} {async2}");
    assert_eq!(async1["id"], async2["id"]);
    assert_eq!(fake.stats().talks_created, 3);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_request_is_still_arriving_is_answered_409() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[]).await;
    let body = serde_json::to_vec(&talk_body(1)).unwrap();
    // The first request sends its head and half its body, then stalls.
    let mut slow = std::net::TcpStream::connect(srv.addr).unwrap();
    let head = format!(
        "POST /api/d_id_optimized/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Idempotency-Key: same\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(&body[..body.len() / 2]).unwrap();
    let http = client();
    // The server reads the stalled head on its own connection task; give it that moment (a
    // head on loopback is read in microseconds, so this only matters on a starved machine).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, v, headers) =
        post_keyed(&http, srv.api("/jobs"), Some("same"), &talk_body(1)).await;
    assert_eq!(
        status, 409,
        "the second request must wait for the first: {v}"
    );
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(v["error"]["code"], "idempotency_key_in_use", "{v}");
    // The first one completes and is accepted.
    slow.write_all(&body[body.len() / 2..]).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = slow.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_cancel_created_ones_do_not_and_a_full_queue_says_when_to_retry() {
    let fake = support::fake().await;
    let srv = support::service(
        &fake,
        &[
            ("MAX_CONCURRENT_REQUESTS", "1"),
            ("JOB_WORKERS", "1"),
            ("JOB_QUEUE_MAX", "1"),
            ("LIMITER_WAIT_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let http = client();
    // Hold the only slot: the worker claims the first job and waits for the slot.
    let permit = srv
        .state
        .limiter()
        .acquire(&Priority::Critical.into(), Duration::from_secs(1))
        .await
        .unwrap();
    let (_, first, _) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(1)).await;
    let first_id = first["job_id"].as_str().unwrap().to_owned();
    until_status(&srv, &first_id, &["creating"]).await;
    let (_, second, _) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(2)).await;
    let second_id = second["job_id"].as_str().unwrap().to_owned();
    assert_eq!(second["status"], "queued");

    // The queue holds one job: the next is refused, with a Retry-After, and nothing stored.
    let (status, full, headers) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(3)).await;
    assert_eq!(status, 429, "{full}");
    assert_eq!(full["error"]["code"], "job_queue_full");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // Cancel the queued one (twice: the second answers the same).
    for _ in 0..2 {
        let (status, v) = send(http.delete(srv.api(&format!("/jobs/{second_id}"))), None).await;
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("cancelled")),
            "{v}"
        );
    }
    // The one being created cannot be: its talk may be paid already.
    let (status, v) = send(http.delete(srv.api(&format!("/jobs/{first_id}"))), None).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "job_not_cancellable");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("paid"),
        "{v}"
    );

    drop(permit);
    until_status(&srv, &first_id, &["done"]).await;
    let cancelled = until_status(&srv, &second_id, &["cancelled"]).await;
    assert_eq!(cancelled["talk_id"], Value::Null);
    assert_eq!(
        fake.stats().talks_created,
        1,
        "the cancelled job made no talk"
    );
    let (status, v) = send(http.delete(srv.api(&format!("/jobs/{first_id}"))), None).await;
    assert_eq!(
        (status, v["error"]["status"].as_str()),
        (409, Some("done")),
        "{v}"
    );

    // Unknown and malformed ids.
    let (status, v) = get_json(&http, srv.api("/jobs/job_0000000000000000000000"), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("job_not_found"))
    );
    let (status, v) = get_json(&http, srv.api("/jobs/..%2Fx"), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_job_id"))
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_listed_newest_first_with_a_cursor_and_a_status_filter() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[]).await;
    let http = client();
    let mut ids = Vec::new();
    for n in 0..5 {
        let (_, job, _) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(n)).await;
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        until_status(&srv, id, &["done"]).await;
    }
    let mut seen = Vec::new();
    let mut url = srv.api("/jobs?limit=2&status=done");
    let mut handed_out = None;
    loop {
        let (status, page) = get_json(&http, &url, None).await;
        assert_eq!(status, 200, "{page}");
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        seen.extend(
            jobs.iter()
                .map(|j| j["job_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => {
                handed_out = Some(c.to_owned());
                url = srv.api(&format!("/jobs?limit=2&status=done&cursor={c}"));
            }
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    // A cursor belongs to its filter.
    let cursor = handed_out.expect("five jobs in pages of two");
    for other in ["", "&status=queued"] {
        let (status, v) = get_json(
            &http,
            srv.api(&format!("/jobs?limit=2{other}&cursor={cursor}")),
            None,
        )
        .await;
        assert_eq!(status, 400, "{other}: {v}");
    }
    let (_, none) = get_json(&http, srv.api("/jobs?status=queued"), None).await;
    assert_eq!(none["jobs"], json!([]));
    for (query, param) in [
        ("status=nope", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=zzz", "cursor"),
        // The store's own form, never handed out.
        ("cursor=s3", "cursor"),
    ] {
        let (status, v) = get_json(&http, srv.api(&format!("/jobs?{query}")), None).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["error"]["code"], "invalid_parameter");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(param),
            "{v}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generate_cut_off_at_shutdown_is_finished_by_the_next_instance_and_re_attached() {
    // Talks render for about a second, so the shutdown cuts the wait off. The lease is long
    // (120 s): the replay finishing within 30 s shows that the cut-off request gave its
    // processing job's claim back instead of leaving it to run out.
    let fake = rendering_fake().await;
    let dir = support::TempDir::new("reattach");
    let path = dir.file("jobs.sqlite3");
    let durable = [
        ("JOB_STORE", "sqlite"),
        ("JOB_STORE_PATH", path.as_str()),
        ("JOB_LEASE_SECS", "120"),
        ("SHUTDOWN_GRACE_SECS", "0.2"),
    ];
    let mut first = support::service(&fake, &durable).await;
    let http = client();
    let url = first.api("/generate-video");
    let caller = tokio::spawn({
        let http = http.clone();
        async move { post_keyed(&http, url, Some("cut-1"), &talk_body(1)).await }
    });
    let start = Instant::now();
    // Cut off while the job is `processing` (its talk exists, the request waits for it).
    loop {
        let (_, page) = get_json(&http, first.api("/jobs?status=processing"), None).await;
        if page["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no job processing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.trigger_shutdown();
    let (status, cut, headers) = caller.await.unwrap();
    assert_eq!(status, 503, "{cut}");
    assert_eq!(cut["error"]["code"], "shutting_down");
    let job_id = cut["error"]["job_id"]
        .as_str()
        .expect("the job is named")
        .to_owned();
    let talk_id = cut["error"]["talk_id"]
        .as_str()
        .expect("the talk is named")
        .to_owned();
    assert!(headers.contains_key("retry-after"));
    first.take_task().await.unwrap().unwrap();
    drop(first);

    // A new instance over the same file: the replay waits for the same job, which the new
    // instance's workers take over at once.
    let second = support::service(&fake, &durable).await;
    let (status, done, headers) = tokio::time::timeout(
        Duration::from_secs(30),
        post_keyed(
            &http,
            second.api("/generate-video"),
            Some("cut-1"),
            &talk_body(1),
        ),
    )
    .await
    .expect("the replay waited for the cut-off request's lease to run out");
    assert_eq!(status, 200, "{done}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(done["job_id"], job_id.as_str());
    assert_eq!(done["id"], talk_id.as_str());
    assert!(done["result_url"].is_string(), "{done}");
    let (_, job) = get_json(&http, second.api(&format!("/jobs/{job_id}")), None).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(
        fake.stats().talks_created,
        1,
        "one talk for the key, whatever died"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_hanging_up_on_a_generate_leaves_a_job_that_goes_on_at_once() {
    // Talks render for about a second; the lease is 120 s, so the job reaching `done`
    // within `until_status`'s 20 s shows the dropped request gave its claim back.
    let fake = rendering_fake().await;
    let srv = support::service(&fake, &[("JOB_LEASE_SECS", "120")]).await;
    let http = client();
    let url = srv.api("/generate-video");
    let caller = tokio::spawn({
        let http = http.clone();
        async move { post_keyed(&http, url, Some("hang-up-1"), &talk_body(7)).await }
    });
    let start = Instant::now();
    let job_id = loop {
        let (_, page) = get_json(&http, srv.api("/jobs?status=processing"), None).await;
        if let Some(id) = page["jobs"][0]["job_id"].as_str() {
            break id.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no job processing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The caller hangs up: its connection closes and the server drops the request.
    caller.abort();
    let _ = caller.await;
    let job = until_status(&srv, &job_id, &["done"]).await;
    assert!(job["result_url"].is_string(), "{job}");
    assert_eq!(
        fake.stats().talks_created,
        1,
        "the job went on, nothing paid twice"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_left_creating_by_a_dead_worker_adopts_its_talk_instead_of_paying_twice() {
    use ports::{JobStatus, JobStore, Lease, NewJob, VideoApi};
    let fake = support::fake().await;
    let dir = support::TempDir::new("adopt");
    let path = dir.file("jobs.sqlite3");
    let request = domain::TalkRequest::new(
        Some("https://example.test/face.jpg".to_owned()),
        domain::Script::Audio {
            audio_url: "https://example.test/voice.wav".to_owned(),
        },
    )
    .unwrap();
    // What a worker that died right after its POST /talks leaves behind: the job written
    // `creating` with an expired lease, and the talk at D-ID carrying the job's token.
    let id = ports::JobId::parse("job_deadworker000000000000").unwrap();
    {
        let store = jobstore_sqlite::SqliteJobStore::open(&path).unwrap();
        let past = app::now_ms() - 60_000;
        store
            .submit(
                NewJob {
                    id: id.clone(),
                    priority: Priority::Normal,
                    tenant: domain::Tenant::public(),
                    share: domain::Share::default(),
                    request: request.clone(),
                    callback_url: None,
                    idempotency: None,
                    fingerprint: "x".into(),
                    webhook_token: None,
                    now_ms: past,
                    lease: Some(Lease {
                        owner: "dead/0".into(),
                        until_ms: past + 1_000,
                    }),
                    status: JobStatus::Creating,
                    trace: None,
                },
                ports::QueueLimits { max_queued: 10 },
            )
            .await
            .unwrap();
        let base = fake.base_url();
        let config = support::config(&[
            ("D_ID_BASE_URL", base.as_str()),
            ("D_ID_API_KEY", did_fake::DEFAULT_API_KEY),
        ]);
        let limiter = std::sync::Arc::new(limiter_memory::MemoryLimiter::new(2));
        let client =
            did_client::DidClient::new(http_api::wiring::did_client_config(&config), limiter)
                .unwrap();
        client
            .create_talk_keyed(&request, &Priority::Normal.into(), id.as_str(), false)
            .await
            .unwrap();
    }
    assert_eq!(fake.stats().talks_created, 1);
    let srv = support::service(
        &fake,
        &[("JOB_STORE", "sqlite"), ("JOB_STORE_PATH", path.as_str())],
    )
    .await;
    let done = until_status(&srv, id.as_str(), &["done", "failed"]).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        fake.stats().talks_created,
        1,
        "the talk was adopted, not created again: {done}"
    );
    let adopted = done["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "create (looked up first)");
    assert!(adopted, "{done}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_key_is_one_job_on_every_instance_and_a_dead_instances_generate_is_finished_by_another()
 {
    let redis = test_support::redis::RedisServer::start();
    let url = redis.url();
    let fake = rendering_fake().await;
    let name = format!("jobs-it-{}", rand::random::<u32>());
    let shared = [
        ("REDIS_URL", url.as_str()),
        ("LIMITER_NAME", name.as_str()),
        ("JOB_STORE", "auto"),
        ("JOB_LEASE_SECS", "1"),
        ("SHUTDOWN_GRACE_SECS", "0.2"),
    ];
    let mut a = support::service(&fake, &shared).await;
    let b = support::service(&fake, &shared).await;
    let http = client();

    let (s1, on_a, _) = post_keyed(&http, a.api("/jobs"), Some("k-1"), &talk_body(1)).await;
    assert_eq!(s1, 202, "{on_a}");
    let (s2, on_b, h) = post_keyed(&http, b.api("/jobs"), Some("k-1"), &talk_body(1)).await;
    assert_eq!(s2, 202, "{on_b}");
    assert_eq!(on_b["job_id"], on_a["job_id"]);
    assert_eq!(h["idempotent-replayed"], "true");
    let (_, stats) = get_json(&http, b.api("/stats"), None).await;
    assert_eq!(stats["jobs"]["store"], "redis");

    // A synchronous generate on A, cut off by A's shutdown once its talk exists.
    let url_a = a.api("/generate-video");
    let caller = tokio::spawn({
        let http = http.clone();
        async move { post_keyed(&http, url_a, Some("k-2"), &talk_body(2)).await }
    });
    let start = Instant::now();
    while fake.stats().talks_created < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "no talk created");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.trigger_shutdown();
    let (status, cut, _) = caller.await.unwrap();
    assert_eq!(status, 503, "{cut}");
    let talk_id = cut["error"]["talk_id"].as_str().unwrap().to_owned();
    a.take_task().await.unwrap().unwrap();
    // B takes it over after the lease and the caller re-attaches there.
    let (status, done, _) =
        post_keyed(&http, b.api("/generate-video"), Some("k-2"), &talk_body(2)).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["id"], talk_id.as_str());
    let first = on_a["job_id"].as_str().unwrap();
    let (_, job) = get_json(&http, b.api(&format!("/jobs/{first}")), None).await;
    assert!(
        ["processing", "done", "creating"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
    until_status(&b, first, &["done"]).await;
    assert_eq!(fake.stats().talks_created, 2, "one talk per key");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_file_belongs_to_one_instance_and_losing_it_makes_the_instance_unready() {
    let fake = support::fake().await;
    let dir = support::TempDir::new("lost-file");
    let path = dir.file("jobs.sqlite3");
    let durable = [("JOB_STORE", "sqlite"), ("JOB_STORE_PATH", path.as_str())];
    let srv = support::service(&fake, &durable).await;
    let http = client();

    // A second instance in the same place refuses to start, naming the file and the holder.
    let base = fake.base_url();
    let second = support::config(&[
        ("D_ID_BASE_URL", base.as_str()),
        ("D_ID_API_KEY", did_fake::DEFAULT_API_KEY),
        ("JOB_STORE", "sqlite"),
        ("JOB_STORE_PATH", path.as_str()),
    ]);
    let did = http_api::wiring::did_client_config(&second);
    let err = match http_api::wiring::build_with(&second, did).await {
        Ok(_) => panic!("a second instance on the same job file started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(path.as_str()), "{err}");
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");

    let (status, ready) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["job_store"]["writable"], true, "{ready}");
    let (status, _, _) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(1)).await;
    assert_eq!(status, 202);

    // The file removed under the running service: nothing more is acknowledged.
    std::fs::remove_file(&path).unwrap();
    let (status, body, headers) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(2)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "job_store_unavailable", "{body}");
    assert!(headers.contains_key("retry-after"));
    let (status, ready) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["job_store"]["writable"], false, "{ready}");
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains("removed"), "{ready}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_jobs_key_is_freed_soon_after_its_retention() {
    // Retention 1 s: the purge runs every second (a tenth of it, at least 1 s), so the key
    // is free again within about 2 s of the job's end (it was up to 61 s).
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("JOB_RETENTION_SECS", "1")]).await;
    let http = client();
    let (status, first, _) =
        post_keyed(&http, srv.api("/jobs"), Some("short-lived"), &talk_body(1)).await;
    assert_eq!(status, 202, "{first}");
    let id = first["job_id"].as_str().unwrap().to_owned();
    until_status(&srv, &id, &["done"]).await;
    let start = Instant::now();
    loop {
        let (status, _) = get_json(&http, srv.api(&format!("/jobs/{id}")), None).await;
        if status == 404 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the job outlived its retention by far"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, again, _) =
        post_keyed(&http, srv.api("/jobs"), Some("short-lived"), &talk_body(2)).await;
    assert_eq!(status, 202, "the key is free again: {again}");
    assert_ne!(again["job_id"], id.as_str());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_asks_its_store_once_per_look_whatever_its_workers() {
    // 32 workers used to ask every 200 ms each: 160 calls a second with nothing to do.
    let fake = support::fake().await;
    let dir = support::TempDir::new("idle");
    let path = dir.file("jobs.sqlite3");
    let srv = support::service(
        &fake,
        &[
            ("JOB_STORE", "sqlite"),
            ("JOB_STORE_PATH", path.as_str()),
            ("JOB_WORKERS", "32"),
        ],
    )
    .await;
    let http = client();
    // One job through, so the workers have run and gone back to sleep.
    let (_, job, _) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(1)).await;
    until_status(&srv, job["job_id"].as_str().unwrap(), &["done"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = |stats: &Value| stats["jobs"]["store_calls"].as_u64().unwrap();
    let (_, before) = get_json(&http, srv.api("/stats"), None).await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = get_json(&http, srv.api("/stats"), None).await;
    let secs = start.elapsed().as_secs_f64();
    // The first /stats read its counts after the figure: one call of its own.
    let made = calls(&after) - calls(&before) - 1;
    assert!(
        made as f64 <= 2.0 * secs,
        "{made} store calls in {secs:.1} s of idleness"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_the_jobs_does_not_make_a_replayed_key_pay_twice() {
    // Redis without persistence, restarted empty while the talks render: every job is gone,
    // so each replay of a key makes a new job. Its create token comes from the key and the
    // store says it lost its data, so the new job looks first and adopts the talk.
    let mut redis = test_support::redis::RedisServer::start();
    let url = redis.url();
    let fake = rendering_fake().await;
    let name = format!("jobs-lost-{}", rand::random::<u32>());
    let srv = support::service(
        &fake,
        &[
            ("REDIS_URL", url.as_str()),
            ("LIMITER_NAME", name.as_str()),
            ("JOB_STORE", "auto"),
        ],
    )
    .await;
    let http = client();
    let keys = ["lost-1", "lost-2", "lost-3"];
    let mut first = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let (status, job, _) =
            post_keyed(&http, srv.api("/jobs"), Some(key), &talk_body(n as u32)).await;
        assert_eq!(status, 202, "{job}");
        first.push(job["job_id"].as_str().unwrap().to_owned());
    }
    let start = Instant::now();
    while fake.stats().talks_created < keys.len() as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "talks not created"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.restart();
    for (n, key) in keys.iter().enumerate() {
        let (status, job, _) = loop {
            let answer = post_keyed(&http, srv.api("/jobs"), Some(key), &talk_body(n as u32)).await;
            // While the service reconnects the store may answer 503 for a moment.
            if answer.0 != 503 || start.elapsed() > Duration::from_secs(30) {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status, 202, "{job}");
        assert_ne!(job["job_id"], first[n].as_str(), "the first job was lost");
        let done = until_status(&srv, job["job_id"].as_str().unwrap(), &["done", "failed"]).await;
        assert_eq!(done["status"], "done", "{done}");
        let adopted = done["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "create (looked up first)");
        assert!(adopted, "the replay looked its talk up: {done}");
    }
    assert_eq!(
        fake.stats().talks_created,
        keys.len() as u64,
        "one talk per key, although the store lost every job"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_key_who_hang_up_before_their_create_cost_nothing() {
    // One slot, and D-ID takes 1.5 s to answer a create: the first generate holds the slot,
    // three more wait for it, and their callers hang up while they wait. Without a key
    // nobody can ever ask for those jobs: they are cancelled, and no talk is made for them
    // (before, each was taken over once its lease ran out and created: a paid talk nobody
    // fetches).
    let fake = support::fake_with(did_fake::Faults {
        latency: did_fake::Latency {
            all: None,
            routes: std::collections::BTreeMap::from([(
                "POST /talks".to_owned(),
                did_fake::Delay::Fixed(1500),
            )]),
        },
        ..did_fake::Faults::default()
    })
    .await;
    let srv = support::service(
        &fake,
        &[("MAX_CONCURRENT_REQUESTS", "1"), ("JOB_LEASE_SECS", "1")],
    )
    .await;
    let http = client();
    let url = srv.api("/generate-video");
    let first = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { post_keyed(&http, url, None, &talk_body(0)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut leaving = Vec::new();
    for n in 1..=3 {
        let (http, url) = (http.clone(), url.clone());
        leaving.push(tokio::spawn(async move {
            post_keyed(&http, url, None, &talk_body(n)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for caller in &leaving {
        caller.abort();
    }
    let hung_up = Instant::now();
    // Their jobs are cancelled at once.
    loop {
        let (_, page) = get_json(&http, srv.api("/jobs?status=cancelled"), None).await;
        if page["jobs"].as_array().is_some_and(|j| j.len() == 3) {
            let abandoned = page["jobs"][0]["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["action"] == "abandon");
            assert!(abandoned, "{page}");
            break;
        }
        assert!(
            hung_up.elapsed() < Duration::from_secs(1),
            "the departed callers' jobs are still there: {page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, done, _) = first.await.unwrap();
    assert_eq!(status, 200, "{done}");
    // Longer than the lease: nobody takes the cancelled jobs over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        fake.stats().talks_created,
        1,
        "no talk for a caller who left"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_generate_answers_what_the_first_request_got() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[]).await;
    let http = client();
    let url = srv.api("/generate-video");

    // Synchronous: the same status and body, `created_at` included (it was the job's own
    // time, 1-10 ms off the talk's).
    let (status, first, _) =
        post_keyed(&http, url.clone(), Some("replay-sync"), &talk_body(1)).await;
    assert_eq!(status, 200, "{first}");
    let (status, again, headers) =
        post_keyed(&http, url.clone(), Some("replay-sync"), &talk_body(1)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again, first, "a replay is the first answer");

    // Not waiting: the first 202 again, also once the job is done (it said `done` with
    // `created_at: null`).
    let mut body = talk_body(2);
    body["wait"] = json!(false);
    let (status, first, _) = post_keyed(&http, url.clone(), Some("replay-async"), &body).await;
    assert_eq!(status, 202, "{first}");
    until_status(&srv, first["job_id"].as_str().unwrap(), &["done"]).await;
    let (status, again, _) = post_keyed(&http, url, Some("replay-async"), &body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again, first, "a replay is the first answer");
    assert!(first["created_at"].is_string(), "{first}");
    srv.stop().await;
}

/// A `callback_url` into talkgate's own network is refused when the job is submitted, in
/// every spelling (nothing is stored, nothing reaches D-ID); an operator's allowance opens
/// exactly the networks it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_callback_urls_are_refused_at_submit_unless_allowed() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("CALLBACK_SECRET", support::CALLBACK_SECRET)]).await;
    let http = client();
    for url in [
        "http://127.0.0.1/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://localhost/hook",
        "https://0.0.0.0/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://2130706433/hook",
        "https://0x7f000001/hook",
        "https://example.com/\u{202E}gpj.exe",
        "http://hooks.example.test/done",
    ] {
        let mut body = talk_body(1);
        body["callback_url"] = json!(url);
        let (status, err, _) = post_keyed(&http, srv.api("/jobs"), None, &body).await;
        assert_eq!(status, 422, "{url}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request", "{url}: {err}");
    }
    let (_, page) = get_json(&http, srv.api("/jobs"), None).await;
    assert_eq!(page["jobs"], json!([]), "a refused job was stored: {page}");
    assert_eq!(fake.stats().talks_created, 0);

    let open = support::service(
        &fake,
        &[
            ("CALLBACK_SECRET", support::CALLBACK_SECRET),
            ("CALLBACK_ALLOW_HTTP", "true"),
            ("CALLBACK_ALLOWED_NETS", "127.0.0.0/8"),
        ],
    )
    .await;
    let mut body = talk_body(2);
    body["callback_url"] = json!("http://127.0.0.1:9/hook");
    let (status, job, _) = post_keyed(&http, open.api("/jobs"), None, &body).await;
    assert_eq!(status, 202, "{job}");
    body["callback_url"] = json!("http://10.0.0.1/hook");
    let (status, err, _) = post_keyed(&http, open.api("/jobs"), None, &body).await;
    assert_eq!(status, 422, "only the allowed network is open: {err}");
}

/// Reads the job until it has at least one attempt (its first create call ended).
async fn until_attempted(srv: &support::Server, id: &str) -> Value {
    let http = client();
    let start = Instant::now();
    loop {
        let (_, job) = get_json(&http, srv.api(&format!("/jobs/{id}")), None).await;
        if job["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            return job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "job {id} never tried: {job}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn actions(job: &Value) -> Vec<String> {
    job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}: {}",
                a["action"].as_str().unwrap(),
                a["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

/// A create D-ID throttled made nothing: the job's next create is sent without a
/// `GET /talks` look-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_create_is_sent_again_without_a_look_up() {
    let fake = support::fake_with(did_fake::Faults {
        rate_limit_rps: Some(0.01),
        rate_limit_burst: Some(1.0),
        ..did_fake::Faults::default()
    })
    .await;
    let srv = support::service(&fake, &[("CREDITS_CHECK_SECS", "0")]).await;
    // The bucket's one token goes to another caller of the key: the job's create is throttled.
    let other = did_client::DidClient::new(
        did_client::DidClientConfig::new(
            fake.base_url(),
            Some(did_fake::DEFAULT_API_KEY.to_owned().into()),
        ),
        std::sync::Arc::new(limiter_memory::MemoryLimiter::new(1)),
    )
    .unwrap();
    ports::VideoApi::credits(&other, &Priority::Normal.into())
        .await
        .unwrap();
    let http = client();
    let (status, job, _) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(71)).await;
    assert_eq!(status, 202, "{job}");
    let id = job["job_id"].as_str().unwrap().to_owned();
    let tried = until_attempted(&srv, &id).await;
    assert_eq!(
        actions(&tried),
        ["wait: not sent: upstream_rate_limited"],
        "{tried}"
    );
    fake.set_faults(did_fake::Faults::default());
    let done = until_status(&srv, &id, &["done", "failed"]).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        actions(&done)[1],
        format!("create: ok: {}", done["talk_id"].as_str().unwrap())
    );
    let stats = fake.stats();
    assert_eq!(stats.count("POST /talks", 429), 1, "{stats:?}");
    assert_eq!(stats.total("GET /talks"), 0, "no look-up: {stats:?}");
    assert_eq!(stats.talks_created, 1);
    // The 429 taught the pacer: /stats and /metrics show the rate it paces at.
    let (_, service) = get_json(&http, srv.api("/stats"), None).await;
    let pacing = &service["client"]["upstream"]["pacing"];
    assert_eq!(pacing["paced"], true, "{pacing}");
    assert_eq!(
        (pacing["throttled"].as_u64(), pacing["decreases"].as_u64()),
        (Some(1), Some(1)),
        "{pacing}"
    );
    let rate = pacing["rate_rps"].as_f64().unwrap();
    assert!((1.0..=1000.0).contains(&rate), "{pacing}");
    let metrics = srv.metrics().await;
    for line in [
        "talkgate_did_pacing_paced 1",
        "talkgate_did_pacing_decreases_total 1",
        "talkgate_did_lookup_pages_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("talkgate_did_pacing_requests_per_second {rate}")),
        "{metrics}"
    );
    srv.stop().await;
}

/// A create that may have reached D-ID (every attempt answered 500) is looked up first when
/// the job tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_may_have_been_sent_is_looked_up_first_when_tried_again() {
    let fake = support::fake_with(did_fake::Faults {
        p_500: 1.0,
        routes: vec!["POST /talks".into()],
        ..did_fake::Faults::default()
    })
    .await;
    let srv = support::service(&fake, &[("CREDITS_CHECK_SECS", "0")]).await;
    let http = client();
    let (status, job, _) = post_keyed(&http, srv.api("/jobs"), None, &talk_body(72)).await;
    assert_eq!(status, 202, "{job}");
    let id = job["job_id"].as_str().unwrap().to_owned();
    let tried = until_attempted(&srv, &id).await;
    assert_eq!(
        actions(&tried),
        ["create: retry: upstream_error"],
        "{tried}"
    );
    // did-client looked after each of its 3 attempts; the job's next try looks again.
    let looked = fake.stats().total("GET /talks");
    assert_eq!(looked, 3);
    fake.set_faults(did_fake::Faults::default());
    let done = until_status(&srv, &id, &["done", "failed"]).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        actions(&done)[1],
        format!(
            "create (looked up first): ok: {}",
            done["talk_id"].as_str().unwrap()
        )
    );
    let stats = fake.stats();
    assert_eq!(stats.total("GET /talks"), looked + 1, "{stats:?}");
    assert_eq!(stats.talks_created, 1);
    let metrics = srv.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("talkgate_did_lookup_pages_total {}", looked + 1)),
        "{metrics}"
    );
    srv.stop().await;
}
