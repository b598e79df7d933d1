//! Scenario 2, budget utilisation: with a limit of C slots and an upstream latency of L, the
//! best any gateway can do is C / L requests per second. Many more callers than C hammer
//! http-api's `GET /talk-status/{id}`; the target is the achieved throughput against the
//! baseline, C workers sending the same request straight to did-fake (no gateway) in the same
//! run, which is what this machine makes of C / L. did-fake answers 429 above C in flight
//! (`max_in_flight_per_key = C`) and reports its peak in-flight, so over-admission shows up
//! twice. Runs the memory backend (1 process) and the Redis backend (4 processes, one Redis).

use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::redis::RedisServer;

use anyhow::Result;
use serde_json::{Value, json};

use super::Ctx;
use super::load::{self, Sample, Stop};
use super::report::{Plot, Section, Summary, Table, f1, f2};
use super::rig::{self, FAKE_KEY, PREFIX, Rig, STATUS_ROUTE};
use crate::procs::Server;

struct Params {
    limit: u32,
    latency_ms: u64,
    callers: usize,
    warmup: f64,
    measure: f64,
}

struct Outcome {
    name: String,
    /// Answers that ended inside the window, per second (information).
    throughput: f64,
    /// Callers / mean latency (Little's law): what the targets compare.
    closed_loop: f64,
    latency: Summary,
    errors: usize,
    peak_in_flight: u64,
    upstream_429: u64,
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let p = if ctx.quick {
        Params {
            limit: 4,
            latency_ms: 200,
            callers: 16,
            warmup: 1.0,
            measure: 8.0,
        }
    } else {
        Params {
            limit: 8,
            latency_ms: 200,
            callers: 64,
            warmup: 3.0,
            measure: 40.0,
        }
    };
    let rig = Rig::build(ctx, "bench2-did-fake")
        .status_load(p.latency_ms)
        .cap(p.limit)
        .start()
        .await?;
    let (base, talk) = (rig.base.clone(), rig.talk().to_owned());
    let ideal = f64::from(p.limit) / (p.latency_ms as f64 / 1000.0);
    println!(
        "  C = {}, L = {} ms on {STATUS_ROUTE} → C/L = {ideal:.1} req/s; {} callers; \
         {:.0} s warm-up + {:.0} s measured per run",
        p.limit, p.latency_ms, p.callers, p.warmup, p.measure
    );

    // Baseline: exactly C workers straight at did-fake, one pooled client.
    let direct = reqwest::Client::builder()
        .pool_max_idle_per_host(p.limit as usize)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = Arc::new(format!("{base}/talks/{talk}"));
    let baseline = measure(
        ctx,
        &p,
        &base,
        "direct (C workers, no gateway)",
        p.limit as usize,
        {
            move |_, _| {
                let (direct, url) = (direct.clone(), Arc::clone(&url));
                async move {
                    direct
                        .get(url.as_str())
                        .header("authorization", format!("Basic {FAKE_KEY}"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            }
        },
    )
    .await?;

    // Memory backend: one http-api process.
    let api = rig
        .api(p.limit)
        .spawn(ctx, "bench2-http-api-memory")
        .await?;
    let memory = gateway_run(ctx, &p, &base, "http-api, memory, 1 process", &[api], &talk).await?;

    // Redis backend: four http-api processes sharing one Redis.
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let apis = rig
        .api(p.limit)
        .redis(&redis_url)
        .spawn_n(ctx, "bench2-http-api-redis", 4)
        .await?;
    let redis_run =
        gateway_run(ctx, &p, &base, "http-api, Redis, 4 processes", &apis, &talk).await?;
    drop(apis);
    drop(redis);
    drop(rig);

    let mut section = Section::new(
        2,
        "Budget utilisation",
        &format!(
            "Limit C = {c}, upstream latency L = {l} ms (did-fake latency on `{STATUS_ROUTE}`), \
             so the budget allows C / L = {ideal:.1} req/s. {callers} closed-loop callers send \
             `GET {PREFIX}/talk-status/{{id}}` (one talk created straight at did-fake), spread \
             round-robin over the processes, for a {w:.0} s warm-up and a {m:.0} s window. \
             Throughput is callers / mean latency of the requests started in the window \
             (Little's law for a closed loop without think time: it uses every request and \
             does not depend on where the window cuts a slot's cycle); the count of answers \
             that ended in the window is shown beside it. did-fake answers 429 above C in \
             flight (`max_in_flight_per_key = C`). Baseline: C workers sending `GET \
             /talks/{{id}}` straight to did-fake with a pooled client, no gateway and no \
             limiter, same window: what this machine makes of C / L.",
            c = p.limit,
            l = p.latency_ms,
            callers = p.callers,
            m = p.measure,
            w = p.warmup
        ),
    );
    let mut table = Table::new(
        "",
        &[
            "run",
            "callers / mean latency (req/s)",
            "vs direct baseline",
            "answers in the window (req/s)",
            "utilisation of C/L",
            "errors",
            "p50 (ms)",
            "p99 (ms)",
            "did-fake peak in-flight",
            "upstream 429s",
        ],
    );
    for o in [&baseline, &memory, &redis_run] {
        table.row(vec![
            o.name.clone(),
            f2(o.closed_loop),
            format!(
                "{:.1} %",
                100.0 * o.closed_loop / baseline.closed_loop.max(1e-9)
            ),
            f1(o.throughput),
            format!("{:.1} %", 100.0 * o.throughput / ideal),
            o.errors.to_string(),
            f2(o.latency.p50),
            f2(o.latency.p99),
            o.peak_in_flight.to_string(),
            o.upstream_429.to_string(),
        ]);
    }
    section.table(table);
    section.plots.push(Plot {
        lines: Vec::new(),
        file: "2-budget-latency.svg".into(),
        title: format!(
            "Scenario 2: caller latency, C = {}, L = {} ms, {} callers (direct: C workers)",
            p.limit, p.latency_ms, p.callers
        ),
        series: vec![
            baseline.name.clone(),
            memory.name.clone(),
            redis_run.name.clone(),
        ],
        groups: ["p50", "p95", "p99"]
            .iter()
            .map(|g| {
                let pick = |s: &Summary| match *g {
                    "p50" => s.p50,
                    "p95" => s.p95,
                    _ => s.p99,
                };
                (
                    (*g).to_owned(),
                    vec![
                        pick(&baseline.latency),
                        pick(&memory.latency),
                        pick(&redis_run.latency),
                    ],
                )
            })
            .collect(),
    });
    let vs = |o: &Outcome| o.closed_loop / baseline.closed_loop.max(1e-9);
    let why_ratio = |share: f64, what: &str| {
        format!(
            "With more callers than slots, the limiter keeps C requests at did-fake at every \
             moment unless it loses time between one slot's release and the next grant; each \
             slot then completes one request per L plus did-fake's and the network's own \
             overhead, which is exactly what the direct baseline (C workers straight at \
             did-fake, same run, same machine load) measures. So the ratio is the share of \
             the budget the gateway keeps busy. {:.0} % allows {what} of up to {:.0} % of L \
             ({:.0} ms at L = {} ms) per request.",
            100.0 * share,
            100.0 * (1.0 - share),
            (1.0 - share) * p.latency_ms as f64,
            p.latency_ms
        )
    };
    for (o, share, what) in [
        (&memory, 0.98, "the hand-off and the extra hop"),
        (
            &redis_run,
            0.95,
            "the hand-off (two Redis round trips and a pub/sub wake-up) and the extra hop",
        ),
    ] {
        section.ratio(
            &format!(
                "{}: throughput >= {:.0} % of the direct baseline",
                o.name,
                100.0 * share
            ),
            vs(o) >= share,
            &format!(
                "{:.1} % ({} vs {} req/s, callers / mean latency; answers in the window {} vs \
                 {} req/s; {:.1} % of C/L = {ideal:.1} req/s)",
                100.0 * vs(o),
                f2(o.closed_loop),
                f2(baseline.closed_loop),
                f1(o.throughput),
                f1(baseline.throughput),
                100.0 * o.closed_loop / ideal
            ),
            &why_ratio(share, what),
        );
    }
    for o in [&memory, &redis_run] {
        section.bound(
            &format!("{}: did-fake peak in-flight <= C", o.name),
            o.peak_in_flight <= u64::from(p.limit),
            &format!("peak {} (C = {})", o.peak_in_flight, p.limit),
            "The limit is C (`MAX_CONCURRENT_REQUESTS`), global across the processes on \
             Redis: did-fake, which counts what reaches it, must never see more.",
        );
        section.bound(
            &format!("{}: zero upstream 429s (cap = C)", o.name),
            o.upstream_429 == 0,
            &format!("{} 429s, {} caller errors", o.upstream_429, o.errors),
            "did-fake refuses with 429 what exceeds C in flight for the key, so a 429 is an \
             over-admission seen from the upstream's side.",
        );
    }
    let runs: Vec<Value> = [&baseline, &memory, &redis_run]
        .iter()
        .map(|o| {
            json!({
                "name": o.name, "throughput_rps": o.throughput,
                "closed_loop_rps": o.closed_loop,
                "vs_direct": o.closed_loop / baseline.closed_loop.max(1e-9),
                "utilisation": o.throughput / ideal, "errors": o.errors,
                "latency": o.latency.json(), "peak_in_flight": o.peak_in_flight,
                "upstream_429": o.upstream_429,
            })
        })
        .collect();
    section.data = json!({
        "limit": p.limit, "latency_ms": p.latency_ms, "callers": p.callers,
        "warmup_s": p.warmup, "measure_s": p.measure, "ideal_rps": ideal, "runs": runs,
    });
    Ok(section)
}

/// Runs `callers` closed-loop callers through the given http-api processes.
async fn gateway_run(
    ctx: &Ctx,
    p: &Params,
    fake: &str,
    name: &str,
    apis: &[Server],
    talk: &str,
) -> Result<Outcome> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let urls = rig::status_urls(apis.iter().map(|a| &a.base_url), talk);
    let mut outcome = measure(ctx, p, fake, name, p.callers, move |w, _| {
        rig::get_spread(http.clone(), Arc::clone(&urls), w)
    })
    .await?;
    // Every process should be idle again; a leftover permit would skew the next run.
    for a in apis {
        let stats = rig::api_stats(&ctx.client, &a.base_url).await?;
        let active = rig::limiter_of(&stats)["active_requests"].as_u64();
        if active != Some(0) {
            outcome.name.push_str(" (permits left after the run!)");
        }
    }
    Ok(outcome)
}

/// Resets did-fake's counters, runs the load, and reads throughput and did-fake's view.
async fn measure<F, Fut>(
    ctx: &Ctx,
    p: &Params,
    fake: &str,
    name: &str,
    workers: usize,
    f: F,
) -> Result<Outcome>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    println!("  run: {name}");
    rig::reset_fake(&ctx.client, fake).await?;
    let t0 = Instant::now();
    let end = p.warmup + p.measure;
    let samples =
        load::closed_loop(name, t0, workers, Stop::At(Duration::from_secs_f64(end)), f).await?;
    let stats = rig::fake_stats(&ctx.client, fake).await?;
    let mut lat = load::latencies(&samples, p.warmup, end);
    Ok(Outcome {
        name: name.to_owned(),
        throughput: load::throughput(&samples, p.warmup, end),
        closed_loop: load::closed_loop_throughput(&samples, workers, p.warmup, end),
        latency: Summary::of(&mut lat),
        errors: samples.iter().filter(|s: &&Sample| !s.ok).count(),
        peak_in_flight: rig::count(&stats, "peak_in_flight"),
        upstream_429: rig::count(&stats, "rate_limited"),
    })
}
