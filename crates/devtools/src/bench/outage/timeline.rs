//! One timeline of scenario 5: a fresh rig (redis-server, did-fake, four replicas), the load
//! in the background, the fault and Redis's return at their times, did-fake's counters per
//! window, the leak check, and each request sorted into its phase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use limiter_redis::FailoverPolicy;

use super::*;
use crate::bench::Ctx;
use crate::bench::load::{self, Sample, Stop};
use crate::bench::report::Summary;
use crate::bench::rig::{self, Rig};

pub(super) async fn timeline(
    ctx: &Ctx,
    p: &Params,
    policy: FailoverPolicy,
    fault: Fault,
    capped: bool,
) -> Result<Timeline> {
    let client = &ctx.client;
    let uncapped = if capped { "" } else { "-uncapped" };
    let tag = format!("{policy}-{}{uncapped}", fault.tag());
    let mut built = Rig::build(ctx, &format!("bench5-{tag}-did-fake"))
        .redis()
        .status_load(p.latency_ms);
    if capped {
        built = built.cap(p.limit);
    }
    let mut rig = built.start().await?;
    let redis_port = rig::redis_port(rig.redis_url())?;
    let (base, talk) = (rig.base.clone(), rig.talk().to_owned());
    let env = [("FAILOVER_POLICY", policy.as_str())];
    let apis = rig
        .api(p.limit)
        .lease_ttl_secs(5.0)
        .env(&env)
        .spawn_n(ctx, &format!("bench5-{tag}-http-api"), REPLICAS)
        .await?;
    let redis = rig.redis.as_mut().expect("the rig has a redis-server");
    let bases: Vec<String> = apis.iter().map(|a| a.base_url.clone()).collect();
    // Every replica learns the peer count from its heartbeat (every 0.5 s): wait until each
    // sees all four, so the share is floor(C / N) from the first failure on.
    for b in &bases {
        let seen = rig::time_until(
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async {
                rig::api_stats(client, b).await.is_ok_and(|s| {
                    rig::limiter_of(&s)["failover"]["instances"].as_u64() == Some(REPLICAS as u64)
                })
            },
        )
        .await;
        if seen.is_none() {
            bail!("{b} never saw {REPLICAS} live instances in Redis");
        }
    }
    rig::reset_fake(client, &base).await?;

    // The load runs in the background for the whole timeline.
    let t0 = Instant::now();
    let total = p.steady + p.outage + p.after;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let urls = rig::status_urls(&bases, &talk);
    let callers = p.callers;
    let label = format!("outage, {policy}, {}", fault.name());
    let load = tokio::spawn(async move {
        load::closed_loop(
            &label,
            t0,
            callers,
            Stop::At(Duration::from_secs_f64(total)),
            move |w, _| rig::get_spread(http.clone(), Arc::clone(&urls), w),
        )
        .await
    });
    let at = |secs: f64| tokio::time::sleep_until((t0 + Duration::from_secs_f64(secs)).into());
    // did-fake's counters over the window that ends now; they restart for the next one.
    let window = || async {
        let w = Window::of(&rig::fake_stats(client, &base).await?);
        rig::reset_fake(client, &base).await?;
        anyhow::Ok(w)
    };

    at(p.steady).await;
    let steady = window().await?;
    let t_fault = t0.elapsed().as_secs_f64();
    match fault {
        Fault::Kill => {
            println!("    SIGKILL redis-server");
            redis.kill();
        }
        Fault::Stop => {
            println!("    SIGSTOP redis-server");
            redis.signal("STOP");
        }
    }
    let all_degraded = all_health(client, &bases, Duration::from_secs_f64(p.outage), |h| {
        h["rate_limiter"]["degraded"].as_bool() == Some(true) && h["status"] == "degraded"
    })
    .await;
    println!(
        "    /health degraded on every process after {}",
        show_ms(all_degraded)
    );

    at(p.steady + p.outage).await;
    let outage = window().await?;
    match fault {
        Fault::Kill => {
            println!("    restarting redis-server on port {redis_port}");
            redis.restart();
        }
        Fault::Stop => {
            println!("    SIGCONT redis-server");
            redis.signal("CONT");
        }
    }
    let t_back = t0.elapsed().as_secs_f64();
    let fail_back = all_health(client, &bases, Duration::from_secs_f64(p.after), |h| {
        h["rate_limiter"]["degraded"].as_bool() == Some(false)
            && h["rate_limiter"]["backend"] == "redis"
    })
    .await;
    println!("    back on Redis everywhere after {}", show_ms(fail_back));
    // The fail-back window: from Redis being back until FAIL_BACK_GRACE after the last
    // replica switched (or the end of the run, if one never did).
    let t_window_end = fail_back.map_or(total, |d| {
        (t_back + (d + FAIL_BACK_GRACE).as_secs_f64()).min(total)
    });
    at(t_window_end).await;
    let at_fail_back = window().await?;

    let samples = load.await.context("the load task panicked")??;
    let after = Window::of(&rig::fake_stats(client, &base).await?);

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
    let mut final_health = Vec::new();
    for b in &bases {
        final_health.push(rig::api_health(client, b).await.unwrap_or(Value::Null));
    }
    drop(apis);
    drop(rig);
    if samples.is_empty() {
        bail!("the load produced no samples");
    }

    // The first success of a request that started after the fault.
    let first_ok_after_fault = samples
        .iter()
        .filter(|s| s.ok && s.start >= t_fault)
        .map(|s| s.end)
        .min_by(f64::total_cmp)
        .map(|end| end - t_fault);
    let failover_end = t_fault + first_ok_after_fault.unwrap_or(p.outage);
    let back_end = t_window_end;
    let warm = 1.0_f64.min(p.steady / 2.0);
    // Each request belongs to exactly one phase, by when it started and ended; `window` is
    // the span over which a phase's throughput means something (steady states only).
    type Member = Box<dyn Fn(&Sample) -> bool>;
    type PhaseDef = (&'static str, Member, Option<(f64, f64)>);
    let phases: [PhaseDef; 6] = [
        (
            "steady (Redis)",
            Box::new(move |s| s.start >= warm && s.end < t_fault),
            Some((warm, t_fault)),
        ),
        (
            "caught by the fault (started before, ended after)",
            Box::new(move |s| s.start < t_fault && s.end >= t_fault),
            None,
        ),
        (
            "failing over (started after the fault, before the first success)",
            Box::new(move |s| s.start >= t_fault && s.start < failover_end),
            None,
        ),
        (
            "degraded (memory fallback)",
            Box::new(move |s| s.start >= failover_end && s.end < t_back),
            Some((failover_end, t_back)),
        ),
        (
            "switching back (running while Redis returned, started before the fail-back window ended)",
            Box::new(move |s| s.start >= failover_end && s.end >= t_back && s.start < back_end),
            None,
        ),
        (
            "back on Redis (after the fail-back window)",
            Box::new(move |s| s.start >= back_end),
            Some((back_end, total)),
        ),
    ];
    let phases = phases
        .into_iter()
        .map(|(name, member, window)| {
            let members: Vec<&Sample> = samples.iter().filter(|s| member(s)).collect();
            let failed = members.iter().filter(|s| !s.ok).count();
            let over_1s = members.iter().filter(|s| s.latency_ms() > 1000.0).count();
            let mut lat: Vec<f64> = members
                .iter()
                .filter(|s| s.ok)
                .map(|s| s.latency_ms())
                .collect();
            let throughput = window.map(|(from, to)| {
                members.iter().filter(|s| s.ok).count() as f64 / (to - from).max(1e-3)
            });
            Phase {
                name: name.to_owned(),
                window,
                summary: Summary::of(&mut lat),
                failed,
                over_1s,
                throughput,
            }
        })
        .collect();
    Ok(Timeline {
        policy,
        fault,
        capped,
        samples,
        phases,
        first_ok_after_fault,
        all_degraded,
        fail_back,
        windows: [steady, outage, at_fail_back, after],
        leftovers,
        final_health,
    })
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
    let polls: Vec<_> = bases
        .iter()
        .map(|b| {
            let (client, b) = (client.clone(), b.clone());
            tokio::spawn(async move {
                rig::time_until(within, Duration::from_millis(10), || async {
                    rig::api_health(&client, &b).await.is_ok_and(|h| check(&h))
                })
                .await
                .map(|_| started.elapsed())
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    for p in polls {
        last = last.max(p.await.ok()??);
    }
    Some(last)
}

pub(super) fn show_ms(d: Option<Duration>) -> String {
    d.map_or("not within the window".to_owned(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}
