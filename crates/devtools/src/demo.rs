//! `cargo xtask demo`: the main job, end to end. Starts did-fake (time scale chosen so a video
//! takes a few seconds) and http-api on free loopback ports — in-memory limiter, or Redis when
//! `REDIS_URL` is set — then walks the real flow with an HTTP client and prints each step:
//! upload an image and an audio file, build a real backlog on the service's one limiter slot
//! (did-fake answers each create slowly; three `low` requests arrive first, then `normal`,
//! `high` and `critical`) and print the order they were served in, generate a video
//! synchronously, start one asynchronously and poll its status, show a typed error, stats and
//! health.
//! Everything is shut down at the end, on failure, and on Ctrl-C. Exit code non-zero if any
//! step fails.
//!
//! The file stays whole although it is long: it is one narrated walk whose steps build on each
//! other's results (asset URLs, talk ids), read top to bottom.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::procs::{self, FAKE_KEY, PREFIX};

pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("`cargo xtask demo` takes no arguments (got {extra:?})");
    }
    procs::build(&["did-fake", "http-api"])?;
    let rt = procs::runtime()?;
    // With `REDIS_URL` the demo is a guest on that Redis: its own limiter name and job-store
    // namespace, removed at the end (also after a failure or Ctrl-C), never the production
    // defaults a fleet may be using (a demo with 1 slot would set that fleet's limit to 1).
    let guest = Guest::of(std::env::var("REDIS_URL").ok());
    rt.block_on(async {
        let result = procs::interruptible(demo(guest.as_ref())).await;
        if let Some(guest) = &guest {
            guest.leave().await;
        }
        result
    })
}

/// The demo's own names on a Redis it shares (see `run`).
struct Guest {
    url: String,
    /// `LIMITER_NAME`: the limiter's keys are `{talkgate:<name>}…`, the job store's
    /// `{talkgate-jobs:<name>}…`.
    name: String,
}

impl Guest {
    /// The demo's guest names on `redis_url`, if one is set: a `LIMITER_NAME` of its own
    /// (`talkgate-demo-<pid>`), never the default `d-id` a fleet may be using.
    fn of(redis_url: Option<String>) -> Option<Guest> {
        let url = redis_url.filter(|url| !url.is_empty())?;
        Some(Guest {
            url,
            name: format!("talkgate-demo-{}", std::process::id()),
        })
    }

    /// Removes every key of the demo's limiter and job store, and says how many.
    async fn leave(&self) {
        match self.remove_keys().await {
            Ok(n) => println!(
                "    removed the demo's {n} Redis keys (LIMITER_NAME {})",
                self.name
            ),
            Err(e) => println!(
                "    could not remove the demo's Redis keys (LIMITER_NAME {}): {e:#}",
                self.name
            ),
        }
    }

    async fn remove_keys(&self) -> Result<usize> {
        use fred::interfaces::{ClientLike, KeysInterface};
        use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
        // The service's own reading of the environment (the `REDIS_TLS_*` settings), with
        // the guest's URL and name: exactly the Redis settings the demo's service got.
        let mut env: std::collections::HashMap<String, String> = std::env::vars().collect();
        env.insert("REDIS_URL".to_owned(), self.url.clone());
        env.insert("LIMITER_NAME".to_owned(), self.name.clone());
        let service =
            http_api::config::Config::from_source(&env).map_err(|e| anyhow::anyhow!("{e}"))?;
        let config = http_api::wiring::redis_config(&service)?.connection;
        let client = limiter_redis::client(&config)?;
        limiter_redis::connect(&client, &config).await?;
        let mut removed = 0;
        for tag in [
            format!("{{talkgate:{}}}", self.name),
            jobstore_redis::hash_tag(&self.name),
        ] {
            // Every key of one tag lives in one hash slot (one node of a Cluster).
            let scan = CustomCommand::new(
                "SCAN",
                ClusterHash::Custom(fred::util::redis_keyslot(tag.as_bytes())),
                false,
            );
            let mut cursor = "0".to_owned();
            loop {
                let reply: RedisValue = client
                    .custom(
                        scan.clone(),
                        vec![
                            cursor.clone(),
                            "MATCH".into(),
                            format!("{tag}*"),
                            "COUNT".into(),
                            "1000".into(),
                        ],
                    )
                    .await?;
                let (next, keys): (String, Vec<String>) = reply.convert()?;
                if !keys.is_empty() {
                    removed += keys.len();
                    client.del::<i64, _>(keys).await?;
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        let _ = client.quit().await;
        Ok(removed)
    }
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

fn show(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

async fn demo(guest: Option<&Guest>) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;

    step(1, "starting the fake D-ID server and the talkgate service");
    let fake = procs::spawn_fake(&client, "did-fake", procs::bin("did-fake"), 0.15, None).await?;
    println!(
        "    did-fake  {}  (log {})",
        fake.base_url,
        fake.log.display()
    );

    // Where the job of step 6 is called back: a receiver on loopback, allowed explicitly.
    let receiver = test_support::receiver::Receiver::start(200).await;
    let api_port = procs::free_port()?;
    let mut envs = vec![
        ("CALLBACK_SECRET", DEMO_CALLBACK_SECRET.to_owned()),
        ("CALLBACK_ALLOW_HTTP", "true".to_owned()),
        ("CALLBACK_ALLOWED_NETS", "127.0.0.0/8".to_owned()),
        ("D_ID_API_KEY", FAKE_KEY.to_owned()),
        ("D_ID_BASE_URL", fake.base_url.clone()),
        // One slot, so that the priority step below builds a real queue.
        ("MAX_CONCURRENT_REQUESTS", "1".to_owned()),
        ("POLL_INTERVAL_SECS", "0.3".to_owned()),
        // The durable job store (SQLite), in a file of this demo run.
        (
            "JOB_STORE_PATH",
            procs::log_dir()
                .join(format!("demo-{}.jobs.sqlite3", std::process::id()))
                .display()
                .to_string(),
        ),
    ];
    let backend = match guest {
        Some(guest) => {
            envs.push(("REDIS_URL", guest.url.clone()));
            envs.push(("LIMITER_NAME", guest.name.clone()));
            "redis"
        }
        None => "memory",
    };
    let api =
        procs::spawn_api(&client, "http-api", procs::bin("http-api"), &envs, api_port).await?;
    println!(
        "    http-api  {}  (limiter: {backend}, 1 slot; log {})",
        api.base_url,
        api.log.display()
    );
    if let Some(guest) = guest {
        println!(
            "    on REDIS_URL as a guest: LIMITER_NAME {} (its keys are removed at the end)",
            guest.name
        );
    }

    println!(
        "    callbacks to a receiver at {}",
        receiver.url("/demo-hook")
    );
    let result = walk(&client, &api.base_url, &fake.base_url, &receiver).await;
    step(
        11,
        "shutting down (SIGTERM: the service drains in-flight requests)",
    );
    api.stop(Duration::from_secs(15)).await?;
    fake.stop(Duration::from_secs(5)).await?;
    println!("    stopped");
    match &result {
        Ok(()) => println!("\ndemo: every step succeeded"),
        Err(_) => println!(
            "\ndemo: FAILED (server logs are in {})",
            procs::log_dir().display()
        ),
    }
    result
}

/// The demo's `CALLBACK_SECRET` (a throw-away one: make your own, see the README).
const DEMO_CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn walk(
    client: &reqwest::Client,
    base: &str,
    fake_base: &str,
    receiver: &test_support::receiver::Receiver,
) -> Result<()> {
    let url = |path: &str| format!("{base}{PREFIX}{path}");

    step(2, "uploading a generated 64x64 PNG and 2 s of WAV audio");
    let image_url = upload(
        client,
        &url("/upload-source-image?priority=high"),
        "face.png",
        test_support::media::png_of(64, 64, [200, 160, 120]),
    )
    .await?;
    println!("    image  -> {image_url}");
    let audio_url = upload(
        client,
        &url("/upload-audio?priority=high"),
        "speech.wav",
        test_support::media::silent_wav(2.0),
    )
    .await?;
    println!("    audio  -> {audio_url}");

    priority_backlog(client, base, fake_base, &audio_url, &image_url).await?;

    step(
        4,
        "generating a video synchronously (the answer comes when the video is done)",
    );
    let started = Instant::now();
    let resp = client
        .post(url("/generate-video"))
        .json(&json!({"audio_url": audio_url, "source_url": image_url, "priority": "normal"}))
        .send()
        .await?;
    let status = resp.status();
    let value: Value = resp.json().await?;
    ensure!(status.is_success(), "generate: HTTP {status}: {value}");
    println!(
        "    done in {:.1} s  id={}  status={}  result_url={}",
        started.elapsed().as_secs_f64(),
        value["id"].as_str().unwrap_or("?"),
        value["status"].as_str().unwrap_or("?"),
        short(value["result_url"].as_str().unwrap_or("-")),
    );
    ensure!(value["status"] == "done", "not done: {value}");

    step(
        5,
        "starting a video asynchronously (\"wait\": false) and polling its status",
    );
    let resp = client
        .post(url("/generate-video"))
        .json(&json!({"audio_url": audio_url, "source_url": image_url, "priority": "normal", "wait": false}))
        .send()
        .await?;
    let status = resp.status();
    let accepted: Value = resp.json().await?;
    ensure!(
        status.as_u16() == 202,
        "expected 202, got {status}: {accepted}"
    );
    let id = accepted["id"]
        .as_str()
        .context("no id in the 202 answer")?
        .to_owned();
    println!("    202 Accepted  id={id}");
    let value = until_done(
        client,
        &url(&format!("/talk-status/{id}")),
        &format!("talk {id}"),
        (["error", "rejected"], "talk failed"),
        |status, _| println!("    status: {status}"),
    )
    .await?;
    println!(
        "    result_url: {}",
        value["result_url"].as_str().unwrap_or("-")
    );

    step(
        6,
        "a durable job: 202 at once, the same Idempotency-Key is the same job, workers finish it, its callback_url is told",
    );
    let body = json!({
        "audio_url": audio_url,
        "source_url": image_url,
        "priority": "high",
        "callback_url": receiver.url("/demo-hook"),
    });
    let key = format!("demo-{}", std::process::id());
    let submit = |body: &Value| {
        client
            .post(url("/jobs"))
            .header("Idempotency-Key", key.as_str())
            .json(body)
            .send()
    };
    let resp = submit(&body).await?;
    let status = resp.status();
    let job: Value = resp.json().await?;
    ensure!(status.as_u16() == 202, "POST /jobs: HTTP {status}: {job}");
    let job_id = job["job_id"].as_str().context("no job_id")?.to_owned();
    println!(
        "    202 Accepted  job_id={job_id}  status={}",
        job["status"]
    );
    let resp = submit(&body).await?;
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let again: Value = resp.json().await?;
    ensure!(
        again["job_id"] == job_id.as_str() && replayed,
        "a replay must answer the same job: {again}"
    );
    println!("    the same key again -> the same job (Idempotent-Replayed: true)");
    let other = json!({"audio_url": audio_url, "source_url": image_url, "priority": "low"});
    let resp = submit(&other).await?;
    let status = resp.status();
    let refused: Value = resp.json().await?;
    println!(
        "    the same key with another body -> HTTP {status}: {}",
        refused["error"]["code"]
    );
    ensure!(
        status.as_u16() == 422,
        "expected 422, got {status}: {refused}"
    );
    let value = until_done(
        client,
        &url(&format!("/jobs/{job_id}")),
        &format!("job {job_id}"),
        (["failed", "cancelled"], "job ended"),
        |status, value| {
            println!(
                "    job status: {status}{}",
                value["talk_id"]
                    .as_str()
                    .map(|t| format!("  talk_id={t}"))
                    .unwrap_or_default()
            );
        },
    )
    .await?;
    println!(
        "    result_url: {}  (expires {})",
        short(value["result_url"].as_str().unwrap_or("-")),
        value["result_expires_at"].as_str().unwrap_or("?")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        if let Some(got) = receiver.received().into_iter().next() {
            break got;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no callback reached the receiver within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        if let Some(v) = got.header(name).and_then(|v| v.parse().ok()) {
            headers.insert(name, v);
        }
    }
    standardwebhooks::Webhook::new(DEMO_CALLBACK_SECRET)?
        .verify(&got.body, &headers)
        .map_err(|e| anyhow::anyhow!("the callback's signature does not verify: {e}"))?;
    let event = got.json();
    ensure!(
        event["type"] == "talk.done" && event["data"]["job_id"] == job_id.as_str(),
        "unexpected callback: {event}"
    );
    println!(
        "    callback: {} {}  type={}  webhook-id={}  signature verified (standardwebhooks)",
        got.method,
        got.path,
        event["type"],
        got.header("webhook-id").unwrap_or("?")
    );

    step(
        7,
        "bad input gets a clear, typed error (unknown priority, unsafe talk id)",
    );
    let resp = client
        .post(url("/generate-video"))
        .json(&json!({"audio_url": audio_url, "source_url": image_url, "priority": "urgent"}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    println!("    priority \"urgent\" -> HTTP {status}: {body}");
    ensure!(status.is_client_error(), "expected a 4xx, got {status}");
    let resp = client.get(url("/talk-status/..%2Fcredits")).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    println!("    talk id \"../credits\" -> HTTP {status}: {body}");
    ensure!(status.is_client_error(), "expected a 4xx, got {status}");

    step(8, "health");
    let health: Value = client.get(url("/health")).send().await?.json().await?;
    println!("{}", indent(&show(&health)));

    step(9, "stats");
    let stats: Value = client.get(url("/stats")).send().await?.json().await?;
    println!("{}", indent(&show(&stats)));
    let limiter = &stats["rate_limiter"];
    ensure!(
        limiter["active_requests"] == 0,
        "permits still held after all requests finished: {limiter}"
    );

    step(10, "a few Prometheus metrics");
    let metrics = client.get(url("/metrics")).send().await?.text().await?;
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
        .filter(|l| {
            l.starts_with("talkgate_jobs")
                || l.starts_with("talkgate_job_queue")
                || ((l.contains("limiter") || l.contains("upstream")) && !l.contains("route="))
        })
        .take(22)
    {
        println!("    {line}");
    }
    Ok(())
}

async fn upload(
    client: &reqwest::Client,
    endpoint: &str,
    filename: &str,
    data: Vec<u8>,
) -> Result<String> {
    let part = reqwest::multipart::Part::bytes(data).file_name(filename.to_owned());
    let form = reqwest::multipart::Form::new().part("file", part);
    let resp = client.post(endpoint).multipart(form).send().await?;
    let status = resp.status();
    let value: Value = resp.json().await?;
    ensure!(status.is_success(), "upload failed: HTTP {status}: {value}");
    Ok(value["url"]
        .as_str()
        .context("no url in the upload answer")?
        .to_owned())
}

/// How long did-fake takes to answer each `POST /talks` during the priority step: the one
/// slot stays busy that long per request, so later requests queue behind it.
const SLOW_CREATE_MS: u64 = 700;

/// Step 3: a real backlog on the one slot, and the order it is served in.
///
/// did-fake answers every create after [`SLOW_CREATE_MS`]. `low` #1 takes the slot; while it is
/// busy `low` #2, `low` #3, `normal`, `high` and `critical` arrive in that order, each only once
/// `/stats` shows the previous one queued, so the arrival order is certain. Each request is an
/// asynchronous generate (`"wait": false`), whose 202 comes right after its create exchange,
/// so the order of the 202s is the order the slot was granted in.
async fn priority_backlog(
    client: &reqwest::Client,
    base: &str,
    fake_base: &str,
    audio_url: &str,
    image_url: &str,
) -> Result<()> {
    step(
        3,
        &format!(
            "priority: one slot, did-fake answering each create in {:.1} s; three low \
             requests arrive first, then normal, high and critical while the slot is busy",
            SLOW_CREATE_MS as f64 / 1000.0
        ),
    );
    set_fake_latency(client, fake_base, Some(SLOW_CREATE_MS)).await?;
    let result = backlog(client, base, audio_url, image_url).await;
    // Put did-fake back to normal speed even when the step failed.
    set_fake_latency(client, fake_base, None).await?;
    result
}

async fn backlog(
    client: &reqwest::Client,
    base: &str,
    audio_url: &str,
    image_url: &str,
) -> Result<()> {
    let arrivals = [
        ("low #1", "low"),
        ("low #2", "low"),
        ("low #3", "low"),
        ("normal", "normal"),
        ("high", "high"),
        ("critical", "critical"),
    ];
    let started = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(arrivals.len());
    for (i, (label, priority)) in arrivals.into_iter().enumerate() {
        let body = json!({
            "audio_url": audio_url, "source_url": image_url,
            "priority": priority, "wait": false,
        });
        let (client2, tx) = (client.clone(), done_tx.clone());
        let endpoint = format!("{base}{PREFIX}/generate-video");
        tokio::spawn(async move {
            let answer = async {
                let resp = client2.post(endpoint).json(&body).send().await?;
                let status = resp.status();
                let value: Value = resp.json().await?;
                ensure!(status.as_u16() == 202, "{label}: HTTP {status}: {value}");
                Ok(value["id"].as_str().unwrap_or("?").to_owned())
            }
            .await;
            let _ = tx.send((i, label, started.elapsed(), answer)).await;
        });
        // The first takes the slot; each later one must be queued before the next is sent.
        wait_for_stats(client, base, |limiter| {
            let queued = limiter["queue_size"].as_u64().unwrap_or(0);
            limiter["active_requests"] == 1 && queued == i as u64
        })
        .await
        .with_context(|| format!("{label} was not queued as expected"))?;
    }
    drop(done_tx);
    let stats: Value = client
        .get(format!("{base}{PREFIX}/stats"))
        .send()
        .await?
        .json()
        .await?;
    println!(
        "    submitted low #1 (took the slot), then low #2, low #3, normal, high, critical; \
         queued now: {}",
        stats["rate_limiter"]["queue_by_priority"]
    );
    println!("    served in this order:");
    let mut order = Vec::new();
    while let Some((i, label, at, answer)) = done_rx.recv().await {
        let id = answer?;
        order.push(label);
        println!(
            "      {}. {label:<9} answered after {:>3.1} s  (arrived {}{})  id={id}",
            order.len(),
            at.as_secs_f64(),
            i + 1,
            ordinal(i + 1),
        );
    }
    let expected = ["low #1", "critical", "high", "normal", "low #2", "low #3"];
    ensure!(
        order == expected,
        "served in order {order:?}, expected {expected:?}"
    );
    println!("    critical arrived last of the six and overtook both waiting low requests");
    Ok(())
}

fn ordinal(n: usize) -> &'static str {
    match n {
        1 => "st",
        2 => "nd",
        3 => "rd",
        _ => "th",
    }
}

/// Sets (or with `None` clears) did-fake's added latency on `POST /talks`.
async fn set_fake_latency(
    client: &reqwest::Client,
    fake_base: &str,
    ms: Option<u64>,
) -> Result<()> {
    let faults = match ms {
        Some(ms) => json!({"latency": {"routes": {"POST /talks": ms}}}),
        None => json!({}),
    };
    procs::set_faults(client, fake_base, faults).await
}

/// Polls `GET url` every 300 ms until its `status` is `done` and returns that answer;
/// `show` prints each new status. Fails when the status becomes one of `ended.0` (saying
/// `ended.1` and the answer), or after 60 s (naming `what`).
async fn until_done(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    ended: ([&str; 2], &str),
    show: impl Fn(&str, &Value),
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let value = procs::get_json(client, url).await?;
        let status = value["status"].as_str().unwrap_or("?").to_owned();
        if status != last {
            show(&status, &value);
            last = status.clone();
        }
        if status == "done" {
            return Ok(value);
        }
        ensure!(!ended.0.contains(&status.as_str()), "{}: {value}", ended.1);
        ensure!(Instant::now() < deadline, "{what} not done within 60 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Polls `/stats` until `check` accepts its `rate_limiter` part (at most 5 s).
async fn wait_for_stats(
    client: &reqwest::Client,
    base: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = procs::get_json(client, &format!("{base}{PREFIX}/stats")).await?;
        if check(&stats["rate_limiter"]) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the limiter never got there: {}",
            stats["rate_limiter"]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The start of a long URL, enough to recognise it.
fn short(url: &str) -> String {
    match url.char_indices().nth(72) {
        Some((i, _)) => format!("{}…", &url[..i]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::Guest;
    use test_support::redis::RedisServer;

    #[test]
    fn the_demo_is_a_guest_only_with_a_redis_url_and_never_under_the_default_name() {
        assert!(Guest::of(None).is_none());
        assert!(Guest::of(Some(String::new())).is_none());
        let guest = Guest::of(Some("redis://127.0.0.1:6379".into())).unwrap();
        assert!(guest.name.starts_with("talkgate-demo-"), "{}", guest.name);
        assert_ne!(guest.name, "d-id");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guest_removes_its_own_keys_and_nothing_else() {
        let server = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        let guest = Guest {
            url: server.url(),
            name: "talkgate-demo-test".to_owned(),
        };
        let own = [
            "{talkgate:talkgate-demo-test}:limit",
            "{talkgate:talkgate-demo-test}:holders",
            "{talkgate-jobs:talkgate-demo-test}:job",
        ];
        let others = [
            "{talkgate:d-id}:limit",
            "{talkgate-jobs:d-id}:job",
            "{talkgate:talkgate-demo-testing}:limit",
            "unrelated",
        ];
        for key in own.iter().chain(&others) {
            assert_eq!(server.command(None, &["SET", key, "1"]), "+OK");
        }
        assert_eq!(guest.remove_keys().await.unwrap(), own.len());
        for key in own {
            assert_eq!(server.command(None, &["EXISTS", key]), ":0", "{key}");
        }
        for key in others {
            assert_eq!(server.command(None, &["EXISTS", key]), ":1", "{key}");
        }
    }
}
