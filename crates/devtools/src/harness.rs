//! `cargo xtask harness [--quick] [--seed N]`: the integration harness.
//!
//! Starts redis-server, did-fake with faults injected (5xx, 502 HTML, resets, create-then-fail,
//! async errors, rejections, stuck talks, a 429 cap at the limit) and N http-api processes
//! sharing one Redis limiter, then runs a seeded mixed workload against them: uploads,
//! generate-video (sync and async), status polls, at all priorities. It then checks and prints
//! the invariants:
//!
//! 1. every request got a success or a typed error (`{"error": {"code", "message"}}`) — nothing
//!    lost, nothing hung;
//! 2. no duplicate talks: did-fake saw each create tag (`user_data`) at most once;
//! 3. global in-flight ≤ limit: did-fake's peak in-flight, and no 429 from its cap;
//! 4. no permits left: every process reports no active or queued request at the end.
//!
//! Then the jobs chaos run (`harness_jobs`): durable jobs with idempotency keys while
//! instances are SIGKILLed and restarted, on a Redis and on a SQLite job store.
//! `--only mixed` / `--only jobs` runs one of the two; `--jobs-faults JSON` merges more
//! did-fake faults into the jobs run (experiments, e.g. `{"rate_limit_rps": 20}`), and
//! `--jobs-env NAME=VALUE` (repeatable) sets a variable of its http-api instances (e.g.
//! `PACING=off`, to compare).
//!
//! Exit code non-zero on any violation. `cargo xtask test` runs it with `--quick`.
//!
//! The file stays whole although it is long: the workload, the fault schedule and the four
//! invariant checks read the same records and are one run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::redis::RedisServer;

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::procs::{self, FAKE_KEY, PREFIX};

const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];
/// A request without an answer after this long counts as hung.
const HUNG: Duration = Duration::from_secs(60);

struct Plan {
    quick: bool,
    /// Run the mixed workload (`--only mixed` or no `--only`).
    mixed: bool,
    /// Run the jobs chaos run (`--only jobs` or no `--only`).
    jobs: bool,
    /// `--jobs-faults JSON`: merged over the jobs run's did-fake faults (experiments).
    jobs_faults: Option<Value>,
    /// `--jobs-env NAME=VALUE`: set for the jobs run's instances, after the run's own.
    jobs_env: Vec<(String, String)>,
    processes: usize,
    requests: usize,
    workers: usize,
    limit: u32,
    seed: u64,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut plan = Plan {
        quick: false,
        mixed: true,
        jobs: true,
        jobs_faults: None,
        jobs_env: Vec::new(),
        processes: 4,
        requests: 400,
        workers: 24,
        limit: 4,
        seed: 42,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {
                plan.quick = true;
                plan.processes = 2;
                plan.requests = 80;
                plan.workers = 12;
                plan.limit = 3;
            }
            "--seed" => {
                plan.seed = it
                    .next()
                    .context("--seed needs a value")?
                    .parse()
                    .context("--seed must be a number")?;
            }
            "--jobs-faults" => {
                let raw = it.next().context("--jobs-faults needs a JSON object")?;
                let v: Value = serde_json::from_str(raw).context("--jobs-faults: not JSON")?;
                if !v.is_object() {
                    bail!("--jobs-faults takes a JSON object, got {v}");
                }
                plan.jobs_faults = Some(v);
            }
            "--jobs-env" => {
                let raw = it.next().context("--jobs-env needs NAME=VALUE")?;
                let (name, value) = raw.split_once('=').context("--jobs-env takes NAME=VALUE")?;
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                {
                    bail!("--jobs-env: {name:?} is not a variable name (A-Z, 0-9, _)");
                }
                plan.jobs_env.push((name.to_owned(), value.to_owned()));
            }
            "--only" => match it.next().map(String::as_str) {
                Some("mixed") => plan.jobs = false,
                Some("jobs") => plan.mixed = false,
                other => bail!("--only takes mixed or jobs, got {other:?}"),
            },
            other => bail!(
                "unknown harness option {other:?} (expected --quick, --seed N, --only mixed|jobs, --jobs-faults JSON, --jobs-env NAME=VALUE)"
            ),
        }
    }
    procs::build(&["did-fake", "http-api"])?;
    procs::runtime()?.block_on(procs::interruptible(both(&plan)))
}

/// The mixed workload, then the jobs chaos run (`harness_jobs`), each unless `--only` says
/// otherwise; the jobs run also runs when the mixed one failed, and both failures are
/// reported.
async fn both(plan: &Plan) -> Result<()> {
    let mixed = if plan.mixed {
        harness(plan).await
    } else {
        Ok(())
    };
    if let Err(e) = &mixed {
        println!("\nharness: the mixed run failed: {e:#}");
    }
    let jobs = if plan.jobs {
        crate::harness_jobs::run(
            plan.quick,
            plan.seed,
            plan.jobs_faults.as_ref(),
            &plan.jobs_env,
        )
        .await
    } else {
        Ok(())
    };
    match (mixed, jobs) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => bail!("{a:#}; and the jobs run: {b:#}"),
    }
}

/// What one request ended as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Success(u16),
    TypedError(u16, String),
    Violation(String),
}

#[derive(Default)]
struct Record {
    by_op: BTreeMap<(&'static str, String), u64>,
    violations: Vec<String>,
    talk_ids: Vec<String>,
}

async fn harness(plan: &Plan) -> Result<()> {
    println!(
        "harness: seed {}, {} http-api processes, limit {}, {} requests from {} workers",
        plan.seed, plan.processes, plan.limit, plan.requests, plan.workers
    );
    let client = reqwest::Client::builder().timeout(HUNG).build()?;
    let redis = RedisServer::start();

    let fake = procs::spawn_fake(
        &client,
        "harness-did-fake",
        procs::bin("did-fake"),
        0.02,
        Some(plan.seed),
    )
    .await?;
    let faults = json!({
        "p_500": 0.04, "p_502_html": 0.02, "p_reset": 0.03,
        "p_create_then_fail": 0.10, "create_then_fail": "mixed",
        "p_async_error": 0.05, "p_rejected": 0.03, "p_stuck": 0.03,
        "max_in_flight_per_key": plan.limit,
        "latency": {"all": {"min_ms": 2, "max_ms": 20}},
    });
    procs::set_faults(&client, &fake.base_url, faults).await?;

    let mut apis = Vec::new();
    for i in 0..plan.processes {
        let port = procs::free_port()?;
        let envs = [
            ("D_ID_API_KEY", FAKE_KEY.to_owned()),
            ("D_ID_BASE_URL", fake.base_url.clone()),
            ("REDIS_URL", redis.url()),
            ("MAX_CONCURRENT_REQUESTS", plan.limit.to_string()),
            ("POLL_INTERVAL_SECS", "0.05".to_owned()),
            ("MAX_WAIT_SECS", "4".to_owned()),
            ("LIMITER_WAIT_TIMEOUT_SECS", "30".to_owned()),
        ];
        let name = format!("harness-http-api-{i}");
        let api = procs::spawn_api(&client, &name, procs::bin("http-api"), &envs, port).await?;
        apis.push(api);
    }
    let bases: Arc<Vec<String>> = Arc::new(apis.iter().map(|a| a.base_url.clone()).collect());

    // Inputs for talks: uploaded once (retried, since faults apply to uploads too).
    let image_url = upload_with_retry(
        &client,
        &bases[0],
        "/upload-source-image",
        test_support::media::png_of(32, 32, [90, 120, 200]),
        "face.png",
    )
    .await?;
    let audio_url = upload_with_retry(
        &client,
        &bases[0],
        "/upload-audio",
        test_support::media::silent_wav(1.0),
        "speech.wav",
    )
    .await?;

    let started = Instant::now();
    let record = Arc::new(Mutex::new(Record::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..plan.workers {
        let client = client.clone();
        let bases = Arc::clone(&bases);
        let record = Arc::clone(&record);
        let next = Arc::clone(&next);
        let (image_url, audio_url) = (image_url.clone(), audio_url.clone());
        let requests = plan.requests;
        let seed = plan.seed.wrapping_add(w as u64);
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < requests {
                let base = &bases[rng.random_range(0..bases.len())];
                let priority = PRIORITIES[rng.random_range(0..4)];
                let roll = rng.random_range(0..100);
                let known = {
                    let r = record.lock().await;
                    (!r.talk_ids.is_empty())
                        .then(|| r.talk_ids[rng.random_range(0..r.talk_ids.len())].clone())
                };
                let (op, outcome) = match roll {
                    0..=11 => (
                        "upload-image",
                        upload(
                            &client,
                            base,
                            "/upload-source-image",
                            priority,
                            test_support::media::png_of(16, 16, [1, 2, 3]),
                            "i.png",
                        )
                        .await,
                    ),
                    12..=19 => (
                        "upload-audio",
                        upload(
                            &client,
                            base,
                            "/upload-audio",
                            priority,
                            test_support::media::silent_wav(0.5),
                            "a.wav",
                        )
                        .await,
                    ),
                    20..=24 => (
                        "upload-wrong-type",
                        upload(
                            &client,
                            base,
                            "/upload-audio",
                            priority,
                            b"GIF89a not audio".to_vec(),
                            "x.gif",
                        )
                        .await,
                    ),
                    25..=44 => (
                        "generate-sync",
                        generate(
                            &client, base, &image_url, &audio_url, priority, true, &record,
                        )
                        .await,
                    ),
                    45..=69 => (
                        "generate-async",
                        generate(
                            &client, base, &image_url, &audio_url, priority, false, &record,
                        )
                        .await,
                    ),
                    70..=94 => match known {
                        Some(id) => ("talk-status", status(&client, base, &id).await),
                        None => (
                            "talk-status-unknown",
                            status(&client, base, "tlk_doesNotExist0000000").await,
                        ),
                    },
                    _ => (
                        "talk-status-invalid",
                        status(&client, base, "bad%20id").await,
                    ),
                };
                let mut r = record.lock().await;
                let key = match &outcome {
                    Outcome::Success(s) => format!("{s}"),
                    Outcome::TypedError(s, code) => format!("{s} {code}"),
                    Outcome::Violation(v) => {
                        r.violations.push(format!("{op}: {v}"));
                        "VIOLATION".to_owned()
                    }
                };
                *r.by_op.entry((op, key)).or_default() += 1;
            }
        }));
    }
    for w in workers {
        w.await.context("a harness worker panicked")?;
    }
    let elapsed = started.elapsed();

    // Invariant 4: no permits left anywhere (bounded wait for in-flight polls to end).
    let mut leftovers = Vec::new();
    for base in bases.iter() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let stats = procs::get_json(&client, &format!("{base}{PREFIX}/stats")).await?;
            let rl = &stats["rate_limiter"];
            let active = rl["active_requests"].as_u64().unwrap_or(u64::MAX);
            let queued = rl["queue_size"].as_u64().unwrap_or(u64::MAX);
            if active == 0 && queued == 0 {
                break;
            }
            if Instant::now() > deadline {
                leftovers.push(format!("{base}: active {active}, queued {queued}: {rl}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let fake_stats = procs::fake_stats(&client, &fake.base_url).await?;

    let record = record.lock().await;
    println!(
        "\nrequests by operation and answer ({:.1} s):",
        elapsed.as_secs_f64()
    );
    for ((op, key), n) in &record.by_op {
        println!("    {op:<22} {key:<40} {n}");
    }
    let peak = fake_stats["peak_in_flight"].as_u64().unwrap_or(u64::MAX);
    let rate_limited = fake_stats["rate_limited"].as_u64().unwrap_or(u64::MAX);
    let duplicates: Vec<String> = fake_stats["talks_by_user_data"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 1)
                .map(|(k, n)| format!("{k}: {n}"))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "\ndid-fake: {} talks created, peak in-flight {peak}, 429s {rate_limited}, resets {}",
        fake_stats["talks_created"], fake_stats["connections_reset"]
    );

    let checks = [
        (
            "every request got a success or a typed error",
            record.violations.is_empty(),
            record.violations.join("\n        "),
        ),
        (
            "no duplicate talks per create",
            duplicates.is_empty(),
            duplicates.join(", "),
        ),
        (
            "global in-flight <= limit",
            peak <= u64::from(plan.limit),
            format!("peak {peak} > limit {}", plan.limit),
        ),
        (
            "no upstream 429 with the cap at the limit",
            rate_limited == 0,
            format!("{rate_limited} 429s"),
        ),
        (
            "no permits left at the end",
            leftovers.is_empty(),
            leftovers.join("; "),
        ),
    ];
    println!("\ninvariants:");
    let mut failed = 0;
    for (name, ok, detail) in &checks {
        if *ok {
            println!("    PASS  {name}");
        } else {
            failed += 1;
            println!("    FAIL  {name}\n        {detail}");
        }
    }
    for api in apis {
        api.stop(Duration::from_secs(10)).await?;
    }
    fake.stop(Duration::from_secs(5)).await?;
    drop(redis);
    if failed > 0 {
        bail!(
            "{failed} invariant(s) violated (logs in {})",
            procs::log_dir().display()
        );
    }
    println!("\nharness: all invariants hold");
    Ok(())
}

/// Classifies an answer: 2xx with a JSON body is a success, any other status with the stable
/// error body is a typed error, anything else is a violation.
async fn classify(resp: Result<reqwest::Response, reqwest::Error>) -> (Outcome, Value) {
    let resp = match resp {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return (
                Outcome::Violation(format!("no answer within {HUNG:?}")),
                Value::Null,
            );
        }
        Err(e) => {
            return (
                Outcome::Violation(format!("transport error: {e}")),
                Value::Null,
            );
        }
    };
    let status = resp.status().as_u16();
    let body: Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => {
            return (
                Outcome::Violation(format!("HTTP {status} without a JSON body: {e}")),
                Value::Null,
            );
        }
    };
    if (200..300).contains(&status) {
        return (Outcome::Success(status), body);
    }
    let code = body["error"]["code"].as_str();
    let message = body["error"]["message"].as_str();
    match (code, message) {
        (Some(code), Some(_)) if status != 500 => {
            (Outcome::TypedError(status, code.to_owned()), body)
        }
        _ => (
            Outcome::Violation(format!("HTTP {status} without a typed error: {body}")),
            body,
        ),
    }
}

async fn upload(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    priority: &str,
    data: Vec<u8>,
    name: &str,
) -> Outcome {
    let part = reqwest::multipart::Part::bytes(data).file_name(name.to_owned());
    let form = reqwest::multipart::Form::new().part("file", part);
    let resp = client
        .post(format!("{base}{PREFIX}{path}?priority={priority}"))
        .multipart(form)
        .send()
        .await;
    let (outcome, body) = classify(resp).await;
    match outcome {
        Outcome::Success(_) if body["url"].as_str().is_none() => {
            Outcome::Violation(format!("upload success without url: {body}"))
        }
        other => other,
    }
}

async fn upload_with_retry(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    data: Vec<u8>,
    name: &str,
) -> Result<String> {
    for _ in 0..10 {
        let part = reqwest::multipart::Part::bytes(data.clone()).file_name(name.to_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        let resp = client
            .post(format!("{base}{PREFIX}{path}?priority=critical"))
            .multipart(form)
            .send()
            .await;
        if let Ok(resp) = resp
            && resp.status().is_success()
        {
            let v: Value = resp.json().await?;
            return v["url"]
                .as_str()
                .map(str::to_owned)
                .context("no url in upload answer");
        }
    }
    bail!("could not upload the harness input to {path} in 10 tries")
}

async fn generate(
    client: &reqwest::Client,
    base: &str,
    image_url: &str,
    audio_url: &str,
    priority: &str,
    wait: bool,
    record: &Mutex<Record>,
) -> Outcome {
    let body = json!({"audio_url": audio_url, "source_url": image_url, "priority": priority, "wait": wait});
    let resp = client
        .post(format!("{base}{PREFIX}/generate-video"))
        .json(&body)
        .send()
        .await;
    let (outcome, body) = classify(resp).await;
    if let Outcome::Success(status) = outcome {
        let Some(id) = body["id"].as_str() else {
            return Outcome::Violation(format!("generate success without id: {body}"));
        };
        let expected = if wait { 200 } else { 202 };
        if status != expected {
            return Outcome::Violation(format!("generate answered {status}, expected {expected}"));
        }
        if wait && body["status"] != "done" {
            return Outcome::Violation(format!("sync generate success but not done: {body}"));
        }
        record.lock().await.talk_ids.push(id.to_owned());
    }
    outcome
}

async fn status(client: &reqwest::Client, base: &str, id: &str) -> Outcome {
    let resp = client
        .get(format!("{base}{PREFIX}/talk-status/{id}"))
        .send()
        .await;
    let (outcome, body) = classify(resp).await;
    match outcome {
        Outcome::Success(_) if body["status"].as_str().is_none() => {
            Outcome::Violation(format!("status success without status: {body}"))
        }
        other => other,
    }
}
