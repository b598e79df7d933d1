//! Scenario 4, crash recovery: two http-api processes share one Redis limiter with a short
//! lease. Process A takes every permit (C status calls against a did-fake route that answers
//! only after minutes), then A is SIGKILLed. We poll process B's `/stats` until it shows all
//! C slots free again, and compare that time with the documented bound: the lease TTL plus one
//! renew period (TTL / 3), plus the observer's slack.

use std::time::{Duration, Instant};
use test_support::redis::RedisServer;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::report::{Section, Table, f1};
use super::rig::{self, ApiOptions, PREFIX, STATUS_ROUTE};
use super::{Ctx, OBSERVER_SLACK};

/// How long the upstream takes to answer the held calls (they never finish in the run).
const HOLD_MS: u64 = 300_000;

struct Trial {
    ttl: f64,
    recovery: Option<Duration>,
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let limit: u32 = 4;
    let plan: &[(f64, usize)] = if ctx.quick {
        &[(1.0, 1)]
    } else {
        &[(2.0, 3), (5.0, 2)]
    };
    let client = &ctx.client;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let fake = rig::spawn_fake(ctx, "bench4-did-fake").await?;
    let base = fake.base_url.clone();
    let talk = rig::create_talk(client, &base).await?;
    rig::set_faults(
        client,
        &base,
        json!({"latency": {"routes": {STATUS_ROUTE: HOLD_MS}}}),
    )
    .await?;

    let mut trials = Vec::new();
    for &(ttl, reps) in plan {
        let opts = ApiOptions {
            fake: &base,
            redis: Some(&redis_url),
            limit,
            lease_ttl_secs: Some(ttl),
            poll_interval_secs: None,
        };
        let observer = rig::spawn_api(ctx, &format!("bench4-http-api-b-ttl{ttl}"), &opts).await?;
        for rep in 0..reps {
            let holder =
                rig::spawn_api(ctx, &format!("bench4-http-api-a-ttl{ttl}-{rep}"), &opts).await?;
            // A's calls: each holds a permit until the upstream answers (it will not).
            let slow = reqwest::Client::builder()
                .timeout(Duration::from_millis(HOLD_MS))
                .build()?;
            let url = format!("{}{PREFIX}/talk-status/{talk}", holder.base_url);
            let calls: Vec<_> = (0..limit)
                .map(|_| {
                    let (slow, url) = (slow.clone(), url.clone());
                    tokio::spawn(async move { slow.get(url).send().await.map(|r| r.status()) })
                })
                .collect();
            let full = rig::time_until(Duration::from_secs(15), Duration::from_millis(20), || {
                let observer = observer.base_url.clone();
                async move {
                    rig::api_stats(client, &observer)
                        .await
                        .is_ok_and(|s| rig::limiter_of(&s)["available_slots"].as_u64() == Some(0))
                }
            })
            .await;
            if full.is_none() {
                bail!(
                    "process A never held all {limit} permits (as seen by B); see {}",
                    holder.log.display()
                );
            }
            // Let A renew at least once, so the kill lands mid-lease.
            tokio::time::sleep(Duration::from_secs_f64(ttl / 2.0)).await;
            holder.signal("KILL").context("SIGKILL process A")?;
            let killed = Instant::now();
            let within = Duration::from_secs_f64(ttl * 3.0 + 5.0);
            let recovered = rig::time_until(within, Duration::from_millis(10), || {
                let observer = observer.base_url.clone();
                async move {
                    rig::api_stats(client, &observer).await.is_ok_and(|s| {
                        rig::limiter_of(&s)["available_slots"].as_u64() == Some(u64::from(limit))
                    })
                }
            })
            .await
            .map(|_| killed.elapsed());
            println!(
                "    TTL {ttl} s, trial {}: capacity back after {}",
                rep + 1,
                recovered.map_or("never (timed out)".to_owned(), |d| format!(
                    "{:.0} ms",
                    d.as_secs_f64() * 1000.0
                ))
            );
            drop(holder);
            for c in calls {
                c.abort();
            }
            trials.push(Trial {
                ttl,
                recovery: recovered,
            });
        }
        drop(observer);
    }
    drop(fake);
    drop(redis);

    let mut section = Section::new(
        4,
        "Crash recovery",
        &format!(
            "Redis backend, limit C = {limit}, two http-api processes A and B with \
             `LEASE_TTL_SECS` = TTL. A takes all C permits with C `GET {PREFIX}/talk-status/{{id}}` \
             calls whose upstream (`{STATUS_ROUTE}` on did-fake) answers only after {} s; once \
             B's `/stats` shows `available_slots == 0`, we wait TTL/2 (A renews its leases) and \
             SIGKILL A. Recovery time: from the kill until B's `/stats` (polled every 10 ms) \
             shows `available_slots == C`. Bound: TTL + one renew period (TTL / 3), the \
             limiter's documented worst case, + {} ms for observing it.",
            HOLD_MS / 1000,
            OBSERVER_SLACK.as_millis()
        ),
    );
    let mut table = Table::new(
        "",
        &[
            "lease TTL (s)",
            "trial",
            "recovery (ms)",
            "bound TTL + TTL/3 + slack (ms)",
            "within bound",
        ],
    );
    let mut data = Vec::new();
    let mut all_ok = true;
    let mut worst: Vec<(f64, f64)> = Vec::new();
    let slack_ms = OBSERVER_SLACK.as_secs_f64() * 1000.0;
    let bound_ms = |ttl: f64| ttl * 4.0 / 3.0 * 1000.0 + slack_ms;
    for (i, t) in trials.iter().enumerate() {
        let bound = bound_ms(t.ttl);
        let ms = t.recovery.map(|d| d.as_secs_f64() * 1000.0);
        let ok = ms.is_some_and(|m| m <= bound);
        all_ok &= ok;
        match worst.iter_mut().find(|(ttl, _)| *ttl == t.ttl) {
            Some((_, w)) => *w = w.max(ms.unwrap_or(f64::INFINITY)),
            None => worst.push((t.ttl, ms.unwrap_or(f64::INFINITY))),
        }
        table.row(vec![
            f1(t.ttl),
            (i + 1).to_string(),
            ms.map_or("timed out".to_owned(), f1),
            f1(bound),
            if ok { "yes" } else { "no" }.to_owned(),
        ]);
        data.push(json!({"lease_ttl_s": t.ttl, "recovery_ms": ms, "bound_ms": bound}));
    }
    section.table(table);
    section.data = json!({"limit": limit, "trials": data});
    section.bound(
        "capacity back within TTL + renew period (+ slack) after SIGKILL",
        all_ok && !trials.is_empty(),
        &worst
            .iter()
            .map(|(ttl, w)| {
                format!(
                    "TTL {ttl} s: worst {w:.0} ms (bound {:.0} ms)",
                    bound_ms(*ttl)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        &format!(
            "The limiter's documented worst case (`RedisLimiterConfig::lease_ttl`): a holder \
             renews its lease every TTL / 3 (or sooner), so the lease of a holder whose \
             process died, and with it the slot, is gone within TTL + TTL / 3 of the kill. \
             The {} ms slack covers B's 10 ms `/stats` polling and its round trip.",
            OBSERVER_SLACK.as_millis()
        ),
    );
    Ok(section)
}
