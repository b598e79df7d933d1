//! Scenario 5, Redis outage: steady load through two http-api processes on the Redis
//! limiter, then redis-server is SIGKILLed (connection refused from then on), left down for a
//! while, and restarted on the same port. Measured from the load's own samples and from
//! `/health`, `/stats` and did-fake's counters: failover time, latency while degraded against
//! the steady phase, over-admission (did-fake's peak in-flight against C), time to fail back,
//! and permits left over at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::Ctx;
use super::load::{self, Sample, Stop};
use super::report::{Plot, Section, Summary, Table, f1, f2};
use super::rig::{self, ApiOptions, PREFIX, STATUS_ROUTE};
use crate::procs;

const PROCESSES: usize = 2;

struct Params {
    limit: u32,
    latency_ms: u64,
    callers: usize,
    steady: f64,
    outage: f64,
    after: f64,
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let p = if ctx.quick {
        Params {
            limit: 4,
            latency_ms: 50,
            callers: 16,
            steady: 3.0,
            outage: 4.0,
            after: 3.0,
        }
    } else {
        Params {
            limit: 4,
            latency_ms: 50,
            callers: 16,
            steady: 6.0,
            outage: 8.0,
            after: 6.0,
        }
    };
    let client = &ctx.client;
    let redis = procs::spawn_redis("bench5-redis").await?;
    let redis_url = redis.base_url.clone();
    let redis_port = rig::redis_port(&redis_url)?;
    let fake = rig::spawn_fake(ctx, "bench5-did-fake").await?;
    let base = fake.base_url.clone();
    let talk = rig::create_talk(client, &base).await?;
    rig::set_faults(
        client,
        &base,
        json!({"latency": {"routes": {STATUS_ROUTE: p.latency_ms}}}),
    )
    .await?;
    let mut apis = Vec::new();
    for i in 0..PROCESSES {
        apis.push(
            rig::spawn_api(
                ctx,
                &format!("bench5-http-api-{i}"),
                &ApiOptions {
                    fake: &base,
                    redis: Some(&redis_url),
                    limit: p.limit,
                    lease_ttl_secs: Some(5.0),
                },
            )
            .await?,
        );
    }
    let bases: Vec<String> = apis.iter().map(|a| a.base_url.clone()).collect();
    println!(
        "  C = {}, L = {} ms, {} callers over {PROCESSES} processes; {:.0} s steady, Redis down \
         {:.0} s, {:.0} s after the restart",
        p.limit, p.latency_ms, p.callers, p.steady, p.outage, p.after
    );

    // The load runs in the background for the whole timeline.
    let t0 = Instant::now();
    let total = p.steady + p.outage + p.after;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let urls: Arc<Vec<String>> = Arc::new(
        bases
            .iter()
            .map(|b| format!("{b}{PREFIX}/talk-status/{talk}"))
            .collect(),
    );
    let callers = p.callers;
    let load = tokio::spawn(async move {
        load::closed_loop(
            "outage",
            t0,
            callers,
            Stop::At(Duration::from_secs_f64(total)),
            move |w, _| {
                let (http, urls) = (http.clone(), Arc::clone(&urls));
                async move {
                    http.get(&urls[w % urls.len()])
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await
    });

    tokio::time::sleep_until((t0 + Duration::from_secs_f64(p.steady)).into()).await;
    let steady_peak = rig::count(&rig::fake_stats(client, &base).await?, "peak_in_flight");
    rig::reset_fake(client, &base).await?;
    println!("    killing redis-server (SIGKILL)");
    redis.signal("KILL").context("SIGKILL redis-server")?;
    let t_kill = t0.elapsed().as_secs_f64();
    drop(redis);
    let degraded_after = all_health(client, &bases, Duration::from_secs_f64(p.outage), |h| {
        h["rate_limiter"]["degraded"].as_bool() == Some(true) && h["status"] == "degraded"
    })
    .await;
    println!(
        "    /health degraded on every process after {}",
        show_ms(degraded_after)
    );

    tokio::time::sleep_until((t0 + Duration::from_secs_f64(p.steady + p.outage)).into()).await;
    let outage_stats = rig::fake_stats(client, &base).await?;
    let outage_peak = rig::count(&outage_stats, "peak_in_flight");
    rig::reset_fake(client, &base).await?;
    println!("    restarting redis-server on port {redis_port}");
    let redis = rig::spawn_redis_on("bench5-redis-restarted", redis_port).await?;
    let t_restart = t0.elapsed().as_secs_f64();
    let back_after = all_health(client, &bases, Duration::from_secs_f64(p.after), |h| {
        h["rate_limiter"]["degraded"].as_bool() == Some(false)
            && h["rate_limiter"]["backend"] == "redis"
    })
    .await;
    println!("    back on Redis everywhere after {}", show_ms(back_after));

    let samples = load.await.context("the load task panicked")??;
    let after_peak = rig::count(&rig::fake_stats(client, &base).await?, "peak_in_flight");

    // Leaks: once the load has stopped, nothing may stay held or queued anywhere.
    let mut leftovers = Vec::new();
    for b in &bases {
        let idle = rig::time_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                rig::api_stats(client, b).await.is_ok_and(|s| {
                    let l = rig::limiter_of(&s);
                    l["active_requests"].as_u64() == Some(0) && l["queue_size"].as_u64() == Some(0)
                })
            },
        )
        .await;
        if idle.is_none() {
            let s = rig::api_stats(client, b).await.unwrap_or(Value::Null);
            leftovers.push(format!("{b}: {}", rig::limiter_of(&s)));
        }
    }
    let final_health: Vec<Value> = {
        let mut v = Vec::new();
        for b in &bases {
            v.push(rig::api_health(client, b).await.unwrap_or(Value::Null));
        }
        v
    };
    drop(apis);
    drop(redis);
    drop(fake);

    // The first success of a request that started after the kill.
    let first_ok_after_kill = samples
        .iter()
        .filter(|s| s.ok && s.start >= t_kill)
        .map(|s| s.end)
        .min_by(f64::total_cmp)
        .map(|end| end - t_kill);
    let failover_end = t_kill + first_ok_after_kill.unwrap_or(p.outage);
    let phases = [
        ("steady (Redis)", 1.0_f64.min(p.steady / 2.0), t_kill),
        ("failing over", t_kill, failover_end),
        ("degraded (memory fallback)", failover_end, t_restart),
        (
            "after restart",
            t_restart + back_after.map_or(p.after, |d| d.as_secs_f64()),
            total,
        ),
    ];
    let mut table = Table::new(
        "",
        &[
            "phase",
            "window (s)",
            "ok",
            "failed",
            "throughput (req/s)",
            "mean (ms)",
            "p50 (ms)",
            "p99 (ms)",
            "max (ms)",
        ],
    );
    let mut summaries = Vec::new();
    let mut phase_json = Vec::new();
    for (name, from, to) in phases {
        let in_phase: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.start >= from && s.start < to)
            .collect();
        let failed = in_phase.iter().filter(|s| !s.ok).count();
        let mut lat = load::latencies(&samples, from, to);
        let s = Summary::of(&mut lat);
        let tp = load::throughput(&samples, from, to.max(from + 1e-3));
        table.row(vec![
            name.to_owned(),
            format!("{from:.2}–{to:.2}"),
            s.n.to_string(),
            failed.to_string(),
            f1(tp),
            f2(s.mean),
            f2(s.p50),
            f2(s.p99),
            f2(s.max),
        ]);
        phase_json.push(json!({
            "phase": name, "from_s": from, "to_s": to, "failed": failed,
            "throughput_rps": tp, "latency": s.json(),
        }));
        summaries.push(s);
    }
    let failed_total = samples.iter().filter(|s| !s.ok).count();

    let mut section = Section::new(
        5,
        "Redis outage",
        &format!(
            "Redis backend, limit C = {c}, {PROCESSES} http-api processes (`LEASE_TTL_SECS` 5, \
             the limiter's default local share = the full limit), did-fake latency {l} ms on \
             `{STATUS_ROUTE}`, {callers} closed-loop callers on `GET {PREFIX}/talk-status/{{id}}`. \
             After {steady:.0} s redis-server is SIGKILLed (connection refused), restarted on \
             the same port {outage:.0} s later, and the load runs {after:.0} s more. Failover: \
             from the kill until the first request *started after the kill* succeeds, and until \
             every process's `/health` says `degraded` (polled every 10 ms). Over-admission: \
             did-fake's peak in-flight while Redis was down, against C and against the \
             documented bound of {PROCESSES} × local share. Fail-back: from the restarted Redis \
             accepting connections until every `/health` reports backend `redis`, not \
             degraded. Leaks: every process's `/stats` once the load has stopped \
             (`active_requests` and `queue_size`, which on Redis are the global counts). The \
             steady phase is the baseline for the latency while degraded.",
            c = p.limit,
            l = p.latency_ms,
            callers = p.callers,
            steady = p.steady,
            outage = p.outage,
            after = p.after
        ),
    );
    section.table(table);
    let mut events = Table::new("", &["event", "measured", "baseline / bound"]);
    events.row(vec![
        "first success of a request started after the kill".into(),
        show_ms(first_ok_after_kill.map(Duration::from_secs_f64)),
        "—".into(),
    ]);
    events.row(vec![
        "every /health says degraded".into(),
        show_ms(degraded_after),
        "—".into(),
    ]);
    events.row(vec![
        "did-fake peak in-flight while Redis was down".into(),
        outage_peak.to_string(),
        format!(
            "steady phase: {steady_peak}; C = {}; bound {PROCESSES} × C = {}",
            p.limit,
            PROCESSES as u32 * p.limit
        ),
    ]);
    events.row(vec![
        "did-fake peak in-flight after the restart".into(),
        after_peak.to_string(),
        format!(
            "C = {}; documented bound while fallback permits drain: C + {PROCESSES} × share = {}",
            p.limit,
            (PROCESSES as u32 + 1) * p.limit
        ),
    ]);
    events.row(vec![
        "fail-back: every /health on Redis again".into(),
        show_ms(back_after),
        "—".into(),
    ]);
    events.row(vec![
        "processes with permits or waiters left at the end".into(),
        leftovers.len().to_string(),
        "0".into(),
    ]);
    events.row(vec![
        "failed requests over the whole run".into(),
        format!("{failed_total} of {}", samples.len()),
        "—".into(),
    ]);
    section.table(events);
    let (steady, degraded) = (summaries[0], summaries[2]);
    section.plots.push(Plot {
        file: "5-outage-latency.svg".into(),
        title: "Scenario 5: caller latency, Redis vs degraded (memory fallback)".into(),
        series: vec![
            "steady (Redis)".into(),
            "degraded".into(),
            "after restart".into(),
        ],
        groups: vec![
            (
                "p50".into(),
                vec![steady.p50, degraded.p50, summaries[3].p50],
            ),
            (
                "p99".into(),
                vec![steady.p99, degraded.p99, summaries[3].p99],
            ),
            (
                "max".into(),
                vec![steady.max, degraded.max, summaries[3].max],
            ),
        ],
    });
    section.notes.push(format!(
        "Latency while degraded vs steady: p50 {:+.2} ms, p99 {:+.2} ms (requests queue for \
         the local limit, so this is mostly queueing, not limiter overhead).",
        degraded.p50 - steady.p50,
        degraded.p99 - steady.p99
    ));
    section.data = json!({
        "limit": p.limit, "latency_ms": p.latency_ms, "callers": p.callers,
        "processes": PROCESSES, "t_kill_s": t_kill, "t_restart_s": t_restart,
        "first_ok_after_kill_ms": first_ok_after_kill.map(|s| s * 1000.0),
        "all_degraded_ms": degraded_after.map(|d| d.as_secs_f64() * 1000.0),
        "fail_back_ms": back_after.map(|d| d.as_secs_f64() * 1000.0),
        "peak_in_flight": {"steady": steady_peak, "outage": outage_peak, "after": after_peak},
        "leftovers": leftovers, "final_health": final_health, "phases": phase_json,
        "failed_requests": failed_total,
    });

    section.target(
        "failover: requests succeed again within 1 s of the kill",
        first_ok_after_kill.is_some_and(|s| s <= 1.0),
        &format!(
            "first success after {}",
            show_ms(first_ok_after_kill.map(Duration::from_secs_f64))
        ),
    );
    section.target(
        "/health reports degraded on every process within op timeout + probe interval (1 s)",
        degraded_after.is_some_and(|d| d <= Duration::from_secs(1)),
        &show_ms(degraded_after),
    );
    section.target(
        "over-admission bounded by processes × local share",
        outage_peak <= PROCESSES as u64 * u64::from(p.limit),
        &format!(
            "peak {outage_peak} in flight while down (C = {}, ×{:.2}; bound {})",
            p.limit,
            outage_peak as f64 / f64::from(p.limit),
            PROCESSES as u32 * p.limit
        ),
    );
    section.target(
        "fail-back to Redis within 3 s of the restart",
        back_after.is_some_and(|d| d <= Duration::from_secs(3)),
        &show_ms(back_after),
    );
    section.target(
        "0 leaked permits at the end",
        leftovers.is_empty(),
        &if leftovers.is_empty() {
            "every process idle (active 0, queued 0)".to_owned()
        } else {
            leftovers.join("; ")
        },
    );
    if samples.is_empty() {
        bail!("the load produced no samples");
    }
    Ok(section)
}

/// Polls `/health` of every process, each on its own every 10 ms, until `check` holds for
/// it; returns when the last process got there (a slow `/health` of one process does not
/// delay the others' polls).
async fn all_health(
    client: &reqwest::Client,
    bases: &[String],
    within: Duration,
    check: fn(&Value) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    let polls = bases.iter().map(|b| {
        let (client, b) = (client.clone(), b.clone());
        tokio::spawn(async move {
            rig::time_until(within, Duration::from_millis(10), || async {
                rig::api_health(&client, &b).await.is_ok_and(|h| check(&h))
            })
            .await
            .map(|_| started.elapsed())
        })
    });
    let mut last = Duration::ZERO;
    for p in polls.collect::<Vec<_>>() {
        last = last.max(p.await.ok()??);
    }
    Some(last)
}

fn show_ms(d: Option<Duration>) -> String {
    d.map_or("not within the window".to_owned(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}
