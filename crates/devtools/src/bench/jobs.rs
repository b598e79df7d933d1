//! Scenario 8, durable jobs: what accepting a job costs, and whether a queue of jobs keeps
//! the budget busy.
//!
//! 1. Submit latency: `POST /jobs` at a fixed rate (open loop: a request every 5 ms, whatever
//!    the answers do) against one http-api process on the SQLite store and one on the Redis
//!    store, beside `GET /health` at the same rate on the same process (the baseline: what
//!    any request costs there). The jobs are worked on meanwhile (workers, creates, polls).
//!    Target (issues 13, 21): p99 below the health p99 + 5 ms on both stores.
//! 2. Budget with a backlog: did-fake answers `POST /talks` after L ms and refuses more than C
//!    in flight; a backlog of jobs is submitted at once and the creates per second at
//!    did-fake are measured while the backlog lasts, against C workers creating talks
//!    straight at did-fake in the same run (the budget scenario's direct baseline, on the
//!    create route). Target: ≥ 98 % of that baseline, with did-fake's peak in-flight ≤ C.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use test_support::redis::RedisServer;
use tokio::task::JoinSet;

use super::Ctx;
use super::load::{self, Stop};
use super::report::{Section, Summary, Table, f1, f2};
use super::rig::{self, ApiOptions, FAKE_KEY, PREFIX, Rig};
use crate::procs::Server;

/// What accepting a job may add to the p99 of any request on the same process (ms).
const SUBMIT_BUDGET_MS: f64 = 5.0;

/// The route did-fake delays in the budget part.
const CREATE_ROUTE: &str = "POST /talks";

/// Every http-api of the scenario: a queue that takes the whole backlog.
const QUEUE_MAX: &[(&str, &str)] = &[("JOB_QUEUE_MAX", "100000")];

struct Params {
    rate: u32,
    submit_secs: f64,
    limit: u32,
    latency_ms: u64,
    backlog: usize,
    warmup: f64,
    measure: f64,
}

/// The body of bench job `n` (the four priorities in turn); scenarios 8 and 9 send it.
pub(super) fn job_body(n: usize) -> Value {
    let priority = ["low", "normal", "high", "critical"][n % 4];
    json!({
        "audio_url": format!("https://example.com/bench-{n}.wav"),
        "source_url": "https://example.com/bench-face.jpg",
        "priority": priority,
    })
}

/// Sends `request(n)` every `1 / rate` s for `secs`, open loop; the latencies (ms) of the
/// answers that were `expect`, and how many were not.
async fn open_loop<F, Fut>(rate: u32, secs: f64, request: F) -> Result<(Vec<f64>, usize)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (f64::from(rate) * secs) as usize;
    let mut tasks = JoinSet::new();
    for n in 0..total {
        tick.tick().await;
        let fut = request(n);
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = fut.await;
            (t.elapsed().as_secs_f64() * 1000.0, ok)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (ms, ok) = joined?;
        if ok {
            latencies.push(ms);
        } else {
            failed += 1;
        }
    }
    Ok((latencies, failed))
}

struct SubmitRun {
    store: &'static str,
    health: Summary,
    submit: Summary,
    failed: usize,
}

async fn submit_run(ctx: &Ctx, p: &Params, api: &Server, store: &'static str) -> Result<SubmitRun> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = api.base_url.clone();
    let health_url = Arc::new(format!("{base}{PREFIX}/health"));
    let (mut health, health_failed) = open_loop(p.rate, p.submit_secs, |_| {
        let (client, url) = (client.clone(), Arc::clone(&health_url));
        async move {
            client
                .get(url.as_str())
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await?;
    let jobs_url = Arc::new(format!("{base}{PREFIX}/jobs"));
    let (mut submit, failed) = open_loop(p.rate, p.submit_secs, |n| {
        let (client, url) = (client.clone(), Arc::clone(&jobs_url));
        async move {
            client
                .post(url.as_str())
                .header("idempotency-key", format!("bench8-{store}-{n}"))
                .json(&job_body(n))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 202)
        }
    })
    .await?;
    let _ = ctx;
    Ok(SubmitRun {
        store,
        health: Summary::of(&mut health),
        submit: Summary::of(&mut submit),
        failed: failed + health_failed,
    })
}

/// While a backlog drains: creates per second at did-fake, the mean share of the limiter's
/// slots in use, did-fake's peak in-flight, its 429s, and the jobs still queued at the end.
async fn backlog_run(ctx: &Ctx, p: &Params, fake: &str) -> Result<(f64, f64, u64, u64, u64)> {
    let client = &ctx.client;
    rig::reset_fake(client, fake).await?;
    let api = ApiOptions::new(fake, p.limit)
        .env(QUEUE_MAX)
        .spawn(ctx, "bench8-http-api-backlog")
        .await?;
    let url = Arc::new(format!("{}{PREFIX}/jobs", api.base_url));
    // The backlog goes in as fast as the service takes it (32 submits in flight).
    let submitted = load::closed_loop("backlog", Instant::now(), 32, Stop::Requests(p.backlog), {
        let (client, url) = (client.clone(), Arc::clone(&url));
        move |_, n| {
            let (client, url) = (client.clone(), Arc::clone(&url));
            async move {
                client
                    .post(url.as_str())
                    .json(&job_body(n))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 202)
            }
        }
    })
    .await?;
    let refused = submitted.iter().filter(|s| !s.ok).count();
    if refused > 0 {
        bail!("{refused} of {} backlog submits were refused", p.backlog);
    }
    tokio::time::sleep(Duration::from_secs_f64(p.warmup)).await;
    let window = Duration::from_secs_f64(p.measure);
    let counting = tokio::spawn(count_creates(client.clone(), fake.to_owned(), window));
    let t = Instant::now();
    // The limiter's slots in use, sampled every 50 ms over the window.
    let mut occupied = Vec::new();
    while t.elapsed() < window {
        if let Ok(health) = rig::api_health(client, &api.base_url).await {
            occupied.push(
                health["rate_limiter"]["active_requests"]
                    .as_f64()
                    .unwrap_or(0.0),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = rate_between_changes(&counting.await??);
    let after = rig::fake_stats(client, fake).await?;
    let stats = rig::api_stats(client, &api.base_url).await?;
    let queued_left = stats["jobs"]["queued_jobs"].as_u64().unwrap_or(0);
    let occupancy =
        occupied.iter().sum::<f64>() / occupied.len().max(1) as f64 / f64::from(p.limit);
    Ok((
        rate,
        occupancy,
        rig::count(&after, "peak_in_flight"),
        rig::count(&after, "rate_limited"),
        queued_left,
    ))
}

/// Creates did-fake has answered (201), sampled every 10 ms for `window`: (seconds, count).
async fn count_creates(
    client: reqwest::Client,
    fake: String,
    window: Duration,
) -> Result<Vec<(f64, u64)>> {
    let t = Instant::now();
    let mut samples = Vec::new();
    while t.elapsed() < window {
        let stats = rig::fake_stats(&client, &fake).await?;
        let creates = stats["requests"][CREATE_ROUTE]["201"].as_u64().unwrap_or(0);
        samples.push((t.elapsed().as_secs_f64(), creates));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(samples)
}

/// Creates per second between the first and the last sample at which the count moved: whole
/// intervals between completions, so the window's edges (a create half done when it opens
/// or closes) do not count. Counting over the plain window was off by up to one round of
/// C creates: ±5 % in the quick run's 4 s at 20 creates per second, which alone failed the
/// 98 % target once.
fn rate_between_changes(samples: &[(f64, u64)]) -> f64 {
    let changes: Vec<(f64, u64)> = samples
        .windows(2)
        .filter(|w| w[1].1 > w[0].1)
        .map(|w| w[1])
        .collect();
    match (changes.first(), changes.last()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            (last.1 - first.1) as f64 / (last.0 - first.0)
        }
        _ => 0.0,
    }
}

/// C workers creating talks straight at did-fake: creates per second.
async fn direct_creates(p: &Params, fake: &str) -> Result<f64> {
    let direct = reqwest::Client::builder()
        .pool_max_idle_per_host(p.limit as usize)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = Arc::new(format!("{fake}/talks"));
    let t0 = Instant::now();
    let total = p.warmup + p.measure;
    let counting = {
        let (client, fake) = (reqwest::Client::new(), fake.to_owned());
        let (warmup, window) = (
            Duration::from_secs_f64(p.warmup),
            Duration::from_secs_f64(p.measure),
        );
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            count_creates(client, fake, window).await
        })
    };
    load::closed_loop(
        "direct creates",
        t0,
        p.limit as usize,
        Stop::At(Duration::from_secs_f64(total)),
        move |_, n| {
            let (direct, url) = (direct.clone(), Arc::clone(&url));
            async move {
                direct
                    .post(url.as_str())
                    .header("authorization", format!("Basic {FAKE_KEY}"))
                    .json(&json!({
                        "source_url": "https://example.com/bench-face.jpg",
                        "script": {"type": "audio", "audio_url": format!("https://example.com/d-{n}.wav")},
                    }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        },
    )
    .await?;
    Ok(rate_between_changes(&counting.await??))
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let p = if ctx.quick {
        Params {
            rate: 200,
            submit_secs: 3.0,
            limit: 4,
            latency_ms: 200,
            backlog: 300,
            warmup: 1.0,
            measure: 8.0,
        }
    } else {
        Params {
            rate: 200,
            submit_secs: 15.0,
            limit: 8,
            latency_ms: 200,
            backlog: 1000,
            warmup: 2.0,
            measure: 15.0,
        }
    };
    // The account as D-ID runs it: creates take L, at most C in flight. So the workers
    // process at most C / L jobs per second while the submits arrive faster, as in a burst.
    let rig = Rig::build(ctx, "bench8-did-fake")
        .latency(CREATE_ROUTE, p.latency_ms)
        .cap(p.limit)
        .start()
        .await?;
    let base = rig.base.clone();

    // 1. Submit latency on each store.
    let sqlite_api = rig
        .api(p.limit)
        .env(QUEUE_MAX)
        .spawn(ctx, "bench8-http-api-sqlite")
        .await?;
    let sqlite = submit_run(ctx, &p, &sqlite_api, "sqlite").await?;
    drop(sqlite_api);
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let redis_api = rig
        .api(p.limit)
        .redis(&redis_url)
        .env(QUEUE_MAX)
        .spawn(ctx, "bench8-http-api-redis")
        .await?;
    let redis_run = submit_run(ctx, &p, &redis_api, "redis").await?;
    drop(redis_api);
    drop(redis);

    // 2. Budget with a backlog.
    let baseline = direct_creates(&p, &base).await?;
    let (gateway, occupancy, peak, rate_limited, queued_left) = backlog_run(ctx, &p, &base).await?;
    drop(rig);

    let mut section = Section::new(
        8,
        "Durable jobs",
        &format!(
            "Submit latency: `POST {PREFIX}/jobs` (a unique `Idempotency-Key` each) at {rate} \
             per second, open loop, for {s:.0} s against one http-api process per store (SQLite \
             file, WAL, the default JOB_STORE_SYNC=normal; Redis on loopback), while its workers create \
             and follow the jobs at did-fake; baseline: `GET {PREFIX}/health` at the same rate \
             on the same process, just before. did-fake answers `{CREATE_ROUTE}` after \
             L = {l} ms and refuses more than C = {c} in flight throughout, so the workers \
             process C / L jobs per second while the submits arrive faster (a burst). Budget: a backlog of {b} jobs is \
             submitted at once (SQLite store, {w} workers), then the creates per second at \
             did-fake are counted in a {m:.0} s window after a {wu:.0} s warm-up (its counts read \
             every 10 ms; the rate between the first and the last completion seen, so that \
             creates cut by the window's edges do not count); baseline: C workers creating \
             talks straight at did-fake in the same run, counted the same way.",
            rate = p.rate,
            s = p.submit_secs,
            l = p.latency_ms,
            c = p.limit,
            b = p.backlog,
            w = 4 * p.limit,
            m = p.measure,
            wu = p.warmup,
        ),
    );
    let mut table = Table::new(
        "submit latency",
        &[
            "store",
            "submit p50 (ms)",
            "submit p99 (ms)",
            "health p50 (ms)",
            "health p99 (ms)",
            "failed",
        ],
    );
    for r in [&sqlite, &redis_run] {
        table.row(vec![
            r.store.to_owned(),
            f2(r.submit.p50),
            f2(r.submit.p99),
            f2(r.health.p50),
            f2(r.health.p99),
            r.failed.to_string(),
        ]);
    }
    section.table(table);
    let mut budget = Table::new(
        "budget with a backlog",
        &[
            "run",
            "creates/s",
            "vs direct",
            "limiter slots in use (mean of 50 ms samples)",
            "did-fake peak in-flight",
            "upstream 429s",
            "jobs still queued at the end",
        ],
    );
    budget.row(vec![
        "direct (C workers, no gateway)".into(),
        f1(baseline),
        "100 %".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    let share = 100.0 * gateway / baseline.max(1e-9);
    budget.row(vec![
        format!("http-api jobs, backlog {}", p.backlog),
        f1(gateway),
        format!("{share:.1} %"),
        format!("{:.1} %", 100.0 * occupancy),
        peak.to_string(),
        rate_limited.to_string(),
        queued_left.to_string(),
    ]);
    section.table(budget);
    for r in [&sqlite, &redis_run] {
        section.ratio(
            &format!(
                "{} submit p99 < health p99 + {SUBMIT_BUDGET_MS} ms (same process, same rate)",
                r.store
            ),
            r.submit.p99 < r.health.p99 + SUBMIT_BUDGET_MS && r.failed == 0,
            &format!(
                "p99 {} ms (health {} ms), {} failed",
                f2(r.submit.p99),
                f2(r.health.p99),
                r.failed
            ),
            "issues 13 and 21: accepting a job is one store write on top of what any request \
             costs on this machine at this moment (the health baseline, measured just before on \
             the same process); an absolute 5 ms failed on a busy machine whose health p99 was \
             3.7 ms",
        );
    }
    section.ratio(
        "backlog keeps the budget busy (≥ 98 % of direct)",
        share >= 98.0 && queued_left > 0,
        &format!(
            "{share:.1} % ({} vs {} creates/s)",
            f1(gateway),
            f1(baseline)
        ),
        "with a queue of jobs every slot should be in use all the time; the backlog must last \
         the whole window (jobs still queued at its end)",
    );
    section.bound(
        "peak in-flight at did-fake ≤ C",
        peak <= u64::from(p.limit),
        &format!("{peak} (C = {})", p.limit),
        "the limiter holds for the workers as for direct calls",
    );
    Ok(section)
}
