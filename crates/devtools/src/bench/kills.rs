//! Scenario 7, reclaim under periodic kills: four http-api replicas on one Redis limiter
//! (C = 6, did-fake capping the account at C in flight), saturated by 48 closed-loop callers;
//! every 10 s one replica (in turn) is SIGKILLed and restarted on the same port (its callers fail over
//! to the next replica while it is down). An observer samples did-fake's `in_flight` and the
//! limiter's holders in Redis (`ZRANGE {talkgate:d-id}:holders`) every ~20 ms. Per kill:
//! how long until capacity is fully back (C in flight at did-fake and no holder of the dead
//! instance left in Redis), and how many slots Redis granted to the dead instance's waiters
//! after its death (tokens `<dead instance id>-<n>` that first appear after the kill). Over
//! the run: lost slot-seconds, ∫(C − in_flight) dt / (C × duration). The baseline, measured
//! in the same run with fresh processes, is the same saturated load without kills: its lost
//! slot-seconds are the floor that request gaps cost.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use limiter_redis::RedisLimiterConfig;

use super::load::{self, Stop};
use super::redis_probe::{self, RedisProbe};
use super::report::{Section, Table, f1};
use super::rig::{self, ApiOptions, PREFIX, Rig, STATUS_ROUTE};
use super::{Ctx, OBSERVER_SLACK};
use crate::procs::Server;

const REPLICAS: usize = 4;
/// http-api's default `LIMITER_NAME`.
const LIMITER: &str = "d-id";
/// The targets.
const CAPACITY_BACK: Duration = Duration::from_secs(3);
const MAX_DEAD_GRANTS: usize = 1;
const MAX_LOST_EXCESS: f64 = 0.05;
/// The observer's period.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

struct Params {
    limit: u32,
    latency_ms: u64,
    callers: usize,
    /// Load before the measured window starts.
    warm: f64,
    period: f64,
    kills: usize,
    /// The baseline's measured window.
    baseline: f64,
}

/// One observation: did-fake's in-flight count and the holders in Redis.
struct Obs {
    t: f64,
    in_flight: u64,
    holders: Vec<String>,
}

/// One replica: its fixed port and the instance id of the process running on it now.
struct Replica {
    server: Server,
    port: u16,
    id: String,
}

struct Kill {
    t: f64,
    replica: usize,
    id: String,
    /// The holders in Redis just before the SIGKILL.
    before: HashSet<String>,
    restarted_after: Option<f64>,
}

/// What one kill measured.
struct KillResult {
    t: f64,
    replica: usize,
    held_at_kill: usize,
    dead_grants: usize,
    /// Until no holder of the dead instance is left in Redis for good (`None`: it held
    /// nothing after the kill).
    reclaimed: Option<f64>,
    /// Until did-fake sees C in flight once the dead instance holds nothing for good.
    capacity_back: Option<f64>,
    restarted_after: Option<f64>,
}

/// What one run (with or without kills) measured.
struct Run {
    window: (f64, f64),
    lost: f64,
    samples: usize,
    requests: usize,
    failed: usize,
    throughput: f64,
    kills: Vec<KillResult>,
    rate_limited: u64,
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let p = if ctx.quick {
        Params {
            limit: 6,
            latency_ms: 50,
            callers: 48,
            warm: 4.0,
            period: 10.0,
            kills: 2,
            baseline: 8.0,
        }
    } else {
        Params {
            limit: 6,
            latency_ms: 50,
            callers: 48,
            warm: 5.0,
            period: 10.0,
            // What a kill costs depends on the slots its replica happens to hold (0 to
            // C); eight kills average over that.
            kills: 8,
            baseline: 20.0,
        }
    };
    println!(
        "  C = {}, L = {} ms, {} callers over {REPLICAS} replicas, did-fake capped at C; \
         baseline {:.0} s without kills, then {} kill(s), one every {:.0} s",
        p.limit, p.latency_ms, p.callers, p.baseline, p.kills, p.period
    );
    println!("  run: baseline, no kills");
    let baseline = one_run(ctx, &p, false).await?;
    println!("  run: one kill every {:.0} s", p.period);
    let kills = one_run(ctx, &p, true).await?;
    report(&p, &baseline, &kills)
}

/// The instance ids in Redis now.
async fn instance_ids(probe: &mut RedisProbe) -> Result<Vec<String>> {
    probe.zrange(&redis_probe::key(LIMITER, "instances")).await
}

/// Starts a replica on `port` (a free one if `None`) and learns its instance id: the record
/// that appears in Redis and was not known before.
async fn start_replica(
    ctx: &Ctx,
    opts: &ApiOptions<'_>,
    name: &str,
    port: Option<u16>,
    known: &mut HashSet<String>,
    probe: &mut RedisProbe,
) -> Result<Replica> {
    let port = match port {
        Some(p) => p,
        None => crate::procs::free_port()?,
    };
    let opts = opts.port(port);
    // The killed process's listening socket may take a moment to go away.
    let mut tries = 0;
    let server = loop {
        match opts.spawn(ctx, name).await {
            Ok(s) => break s,
            Err(e) if tries < 20 => {
                tries += 1;
                println!("    (restart retried: {e:#})");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let started = Instant::now();
    loop {
        let fresh: Vec<String> = instance_ids(probe)
            .await?
            .into_iter()
            .filter(|id| !known.contains(id))
            .collect();
        match fresh.as_slice() {
            [id] => {
                known.insert(id.clone());
                return Ok(Replica {
                    server,
                    port,
                    id: id.clone(),
                });
            }
            [] if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => bail!("expected one new instance record for {name}, found {other:?}"),
        }
    }
}

async fn one_run(ctx: &Ctx, p: &Params, with_kills: bool) -> Result<Run> {
    let client = &ctx.client;
    let tag = if with_kills { "kills" } else { "baseline" };
    let rig = Rig::build(ctx, &format!("bench7-{tag}-did-fake"))
        .redis()
        .status_load(p.latency_ms)
        .cap(p.limit)
        .start()
        .await?;
    let (base, talk) = (rig.base.clone(), rig.talk().to_owned());
    let redis_url = rig.redis_url().to_owned();
    let opts = rig.api(p.limit);
    let mut probe = RedisProbe::connect(&redis_url).await?;
    let mut known = HashSet::new();
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        let name = format!("bench7-{tag}-http-api-{i}");
        replicas.push(start_replica(ctx, &opts, &name, None, &mut known, &mut probe).await?);
    }
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();

    let t0 = Instant::now();
    let end = if with_kills {
        p.warm + p.period * p.kills as f64
    } else {
        p.warm + p.baseline
    };

    // The observer.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, base, url) = (Arc::clone(&stop), base.clone(), redis_url.clone());
        let client = client.clone();
        tokio::spawn(async move {
            let mut probe = RedisProbe::connect(&url).await?;
            let holders_key = redis_probe::key(LIMITER, "holders");
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let stats = rig::fake_stats(&client, &base).await?;
                let holders = probe
                    .zrange_with_scores(&holders_key)
                    .await?
                    .into_iter()
                    .map(|(token, _)| token)
                    .collect();
                out.push(Obs {
                    t: t0.elapsed().as_secs_f64(),
                    in_flight: rig::count(&stats, "in_flight"),
                    holders,
                });
            }
            anyhow::Ok(out)
        })
    };

    // The load: each caller prefers its own replica and moves on to the next one when a
    // connection is refused (its replica is down).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let urls = rig::status_urls(
        ports.iter().map(|port| format!("http://127.0.0.1:{port}")),
        &talk,
    );
    let label = format!("kills, {tag}");
    let callers = p.callers;
    let load = tokio::spawn(async move {
        load::closed_loop(
            &label,
            t0,
            callers,
            Stop::At(Duration::from_secs_f64(end)),
            move |w, _| {
                let (http, urls) = (http.clone(), Arc::clone(&urls));
                async move {
                    for attempt in 0..urls.len() {
                        match http.get(&urls[(w + attempt) % urls.len()]).send().await {
                            Ok(r) => return r.status().is_success(),
                            Err(e) if e.is_connect() => continue,
                            Err(_) => return false,
                        }
                    }
                    false
                }
            },
        )
        .await
    });

    let holders_key = redis_probe::key(LIMITER, "holders");
    let mut kills = Vec::new();
    if with_kills {
        for k in 0..p.kills {
            let at = p.warm + p.period * k as f64;
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
            let before: HashSet<String> = probe.zrange(&holders_key).await?.into_iter().collect();
            // In turn, whatever each holds: how many slots a replica holds at an instant
            // varies from 0 to C (closed-loop callers queue in blocks per replica), and
            // the per-kill table shows it.
            let i = k % REPLICAS;
            replicas[i]
                .server
                .signal("KILL")
                .context("SIGKILL a replica")?;
            let t = t0.elapsed().as_secs_f64();
            let id = replicas[i].id.clone();
            println!(
                "    SIGKILL replica {i} (instance {id}, {} of its tokens held)",
                before
                    .iter()
                    .filter(|tok| redis_probe::owner(tok) == id)
                    .count()
            );
            let name = format!("bench7-{tag}-http-api-{i}-r{k}");
            let port = replicas[i].port;
            let fresh =
                start_replica(ctx, &opts, &name, Some(port), &mut known, &mut probe).await?;
            let restarted_after = Some(t0.elapsed().as_secs_f64() - t);
            // Dropping the old handle reaps the killed process.
            drop(std::mem::replace(&mut replicas[i], fresh));
            kills.push(Kill {
                t,
                replica: i,
                id,
                before,
                restarted_after,
            });
        }
    }
    let samples = load.await.context("the load task panicked")??;
    stop.store(true, Ordering::Relaxed);
    let obs = sampler.await.context("the observer panicked")??;
    let rate_limited = rig::count(&rig::fake_stats(client, &base).await?, "rate_limited");
    drop(replicas);
    drop(rig);
    if obs.len() < 10 {
        bail!("the observer took only {} samples", obs.len());
    }

    let window = (p.warm, end);
    let c = u64::from(p.limit);
    // ∫(C − in_flight) dt, each sample held until the next one.
    let mut missing = 0.0;
    for pair in obs.windows(2) {
        let (from, to) = (pair[0].t.max(window.0), pair[1].t.min(window.1));
        if to > from {
            missing += (c - pair[0].in_flight.min(c)) as f64 * (to - from);
        }
    }
    let lost = missing / (c as f64 * (window.1 - window.0));
    // Mean slots held per instance over the window's samples (how evenly the replicas share).
    let mut held: std::collections::BTreeMap<String, usize> = Default::default();
    let in_obs: Vec<&Obs> = obs
        .iter()
        .filter(|o| o.t >= window.0 && o.t < window.1)
        .collect();
    for o in &in_obs {
        for tok in &o.holders {
            *held.entry(redis_probe::owner(tok).to_string()).or_default() += 1;
        }
    }
    let shares: Vec<String> = held
        .iter()
        .map(|(id, n)| format!("{id}: {:.2}", *n as f64 / in_obs.len().max(1) as f64))
        .collect();
    println!(
        "    mean slots held per instance ({tag}): {}",
        shares.join(", ")
    );
    let kills = kills
        .iter()
        .enumerate()
        .map(|(k, kill)| {
            let until = kills_end(p, k, end);
            let after: Vec<&Obs> = obs
                .iter()
                .filter(|o| o.t >= kill.t && o.t < until)
                .collect();
            let dead_held = |o: &Obs| {
                o.holders
                    .iter()
                    .any(|tok| redis_probe::owner(tok) == kill.id)
            };
            // The dead instance holds nothing from the sample after the last one in which
            // it held a slot (a grant to one of its waiters after the kill counts too).
            let last_dead = after.iter().rposition(|o| dead_held(o));
            let granted: HashSet<&String> = after
                .iter()
                .flat_map(|o| o.holders.iter())
                .filter(|tok| redis_probe::owner(tok) == kill.id && !kill.before.contains(*tok))
                .collect();
            KillResult {
                t: kill.t,
                replica: kill.replica,
                held_at_kill: kill
                    .before
                    .iter()
                    .filter(|tok| redis_probe::owner(tok) == kill.id)
                    .count(),
                dead_grants: granted.len(),
                reclaimed: last_dead.map(|i| after.get(i + 1).map_or(until, |o| o.t) - kill.t),
                capacity_back: after[last_dead.map_or(0, |i| i + 1)..]
                    .iter()
                    .find(|o| o.in_flight >= c)
                    .map(|o| o.t - kill.t),
                restarted_after: kill.restarted_after,
            }
        })
        .collect();
    let in_window: Vec<_> = samples
        .iter()
        .filter(|s| s.start >= window.0 && s.start < window.1)
        .collect();
    Ok(Run {
        window,
        lost,
        samples: obs.len(),
        requests: in_window.len(),
        failed: in_window.iter().filter(|s| !s.ok).count(),
        throughput: load::throughput(&samples, window.0, window.1),
        kills,
        rate_limited,
    })
}

/// Where the observation of kill `k` ends: the next kill, or the end of the run.
fn kills_end(p: &Params, k: usize, end: f64) -> f64 {
    (p.warm + p.period * (k + 1) as f64).min(end)
}

fn report(p: &Params, baseline: &Run, kills: &Run) -> Result<Section> {
    let defaults = RedisLimiterConfig::new("redis://127.0.0.1:6379", "bench");
    let ttl = defaults.instance_ttl;
    let derived = ttl + defaults.safety_poll + OBSERVER_SLACK;
    let mut section = Section::new(
        7,
        "Reclaim under periodic kills",
        &format!(
            "Redis backend, limit C = {c}, {REPLICAS} http-api replicas on one Redis at the \
             defaults (lease 15 s, instance TTL {ttl} s: heartbeat every {beat} ms, a waiter \
             skipped as soon as its presence subscription is gone or its heartbeat is older than \
             3/8 of the TTL), did-fake \
             latency {l} ms on `{STATUS_ROUTE}` and did-fake capping the account at C in \
             flight, {callers} closed-loop callers on `GET {PREFIX}/talk-status/{{id}}` spread \
             over the replicas (a caller whose replica refuses the connection tries the next \
             one). After {warm:.0} s of load, one replica is SIGKILLed every {period:.0} s \
             ({kills} kills, round robin) and restarted at once on the same port. An observer \
             samples did-fake's `in_flight` and `ZRANGE {{talkgate:{LIMITER}}}:holders` every \
             {every} ms; the killed process's instance id is the record that appeared in \
             `{{talkgate:{LIMITER}}}:instances` when it started. Per kill: *capacity back* is \
             the first sample with C in flight at did-fake after the last sample in which the \
             dead instance held a slot in Redis; *grants to dead waiters* are the dead \
             instance's tokens that first appear in the holders after the kill (the holders \
             are read just before the SIGKILL). Lost slot-seconds: ∫(C − in_flight) dt / (C \
             × duration) over the measured window (from the first kill to {period:.0} s \
             after the last). **Baseline**, same run, fresh processes: the same saturated \
             load for {baseline:.0} s without kills, whose lost slot-seconds are the floor \
             from request gaps (release, grant, confirmation and the next request's trip).",
            c = p.limit,
            ttl = ttl.as_secs_f64(),
            beat = defaults.heartbeat_period().as_millis(),
            l = p.latency_ms,
            callers = p.callers,
            warm = p.warm,
            period = p.period,
            kills = p.kills,
            every = SAMPLE_EVERY.as_millis(),
            baseline = p.baseline,
        ),
    );
    let show = |x: Option<f64>| x.map_or("not before the next kill".to_owned(), |s| f1(s * 1000.0));
    let mut table = Table::new(
        "per kill",
        &[
            "kill",
            "at (s)",
            "replica",
            "slots it held",
            "its holders gone from Redis after (ms)",
            "capacity back after (ms)",
            "grants to its dead waiters",
            "restarted after (ms)",
        ],
    );
    for (k, r) in kills.kills.iter().enumerate() {
        table.row(vec![
            (k + 1).to_string(),
            format!("{:.2}", r.t),
            r.replica.to_string(),
            r.held_at_kill.to_string(),
            r.reclaimed
                .map_or("held nothing".to_owned(), |s| f1(s * 1000.0)),
            show(r.capacity_back),
            r.dead_grants.to_string(),
            show(r.restarted_after),
        ]);
    }
    section.table(table);
    let excess = kills.lost - baseline.lost;
    let mut runs = Table::new(
        "the run with kills against the baseline",
        &[
            "run",
            "window (s)",
            "observer samples",
            "lost slot-seconds",
            "requests (failed)",
            "throughput (req/s)",
            "did-fake 429s",
        ],
    );
    for (name, r) in [
        ("baseline: no kills", baseline),
        ("one kill per 10 s", kills),
    ] {
        runs.row(vec![
            name.to_owned(),
            format!("{:.1}–{:.1}", r.window.0, r.window.1),
            r.samples.to_string(),
            format!("{:.2} %", 100.0 * r.lost),
            format!("{} ({})", r.requests, r.failed),
            f1(r.throughput),
            r.rate_limited.to_string(),
        ]);
    }
    section.table(runs);

    let worst_back = kills
        .kills
        .iter()
        .map(|r| r.capacity_back.unwrap_or(f64::INFINITY))
        .fold(0.0_f64, f64::max);
    let worst_grants = kills.kills.iter().map(|r| r.dead_grants).max().unwrap_or(0);
    section.bound(
        &format!(
            "capacity back <= {} s after each kill",
            CAPACITY_BACK.as_secs()
        ),
        !kills.kills.is_empty() && worst_back <= CAPACITY_BACK.as_secs_f64(),
        &format!(
            "worst {:.0} ms over {} kill(s) (derived bound {} ms)",
            worst_back * 1000.0,
            kills.kills.len(),
            derived.as_millis()
        ),
        &format!(
            "The dead replica's connections close with it, so once its heartbeat is 3/8 of \
             the instance TTL late (at the latest when its record expires, the TTL ({} ms) \
             after its last heartbeat) the next script declares it dead and reclaims its \
             holders — under saturation the live replicas run scripts continuously; grants to its waiters \
             end then too, or after `grant_ttl` ({} ms) if sooner. Derived: TTL + one safety \
             poll ({} ms) + {} ms slack; the issue's target, {} ms, is the pass line. The \
             observer's {} ms period is inside the slack.",
            ttl.as_millis(),
            defaults.grant_ttl.as_millis(),
            defaults.safety_poll.as_millis(),
            OBSERVER_SLACK.as_millis(),
            CAPACITY_BACK.as_millis(),
            SAMPLE_EVERY.as_millis()
        ),
    );
    section.bound(
        &format!("<= {MAX_DEAD_GRANTS} grant to a dead instance's waiters per kill"),
        worst_grants <= MAX_DEAD_GRANTS,
        &format!(
            "worst {worst_grants} per kill ({})",
            kills
                .kills
                .iter()
                .map(|r| r.dead_grants.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &format!(
            "Redis skips a waiter whose instance's presence subscription is gone (its \
             connection closed with the process, so at once) or whose heartbeat is older than \
             3/8 of the instance TTL ({} ms), and drops it once the instance is declared dead; \
             only a slot freed between the death and Redis noticing the closed connection (a \
             grant already on its way) can reach a dead waiter; the issue's target allows one \
             per kill. The baseline without kills has no dead instance, so none.",
            (ttl * 3 / 8).as_millis()
        ),
    );
    section.ratio(
        "lost slot-seconds at one kill per 10 s: excess over the no-kill baseline <= 5 %",
        excess <= MAX_LOST_EXCESS,
        &format!(
            "{:.2} % with kills vs {:.2} % baseline: excess {:.2} points",
            100.0 * kills.lost,
            100.0 * baseline.lost,
            100.0 * excess
        ),
        &format!(
            "Judged on the excess over the baseline measured in the same run under the same \
             load without kills: the baseline's lost share is what request gaps cost whatever \
             the limiter does (a slot is idle between a release at the gateway and the next \
             request reaching did-fake), and the observer's {} ms samples see it too. A \
             killed replica holds about C / {REPLICAS} slots until its record expires (up to \
             the {} ms TTL) and any slot granted to its waiters meanwhile, so one kill per \
             10 s costs about C / {REPLICAS} × TTL / (C × 10 s) ≈ {:.1} % on top.",
            SAMPLE_EVERY.as_millis(),
            ttl.as_millis(),
            100.0 * ttl.as_secs_f64() / (REPLICAS as f64 * p.period)
        ),
    );
    section.data = json!({
        "limit": p.limit, "latency_ms": p.latency_ms, "callers": p.callers,
        "replicas": REPLICAS, "period_s": p.period, "sample_every_ms": SAMPLE_EVERY.as_millis(),
        "baseline": {"window_s": baseline.window, "lost": baseline.lost,
            "requests": baseline.requests, "failed": baseline.failed,
            "throughput_rps": baseline.throughput, "rate_limited": baseline.rate_limited},
        "kills": {"window_s": kills.window, "lost": kills.lost, "requests": kills.requests,
            "failed": kills.failed, "throughput_rps": kills.throughput,
            "rate_limited": kills.rate_limited,
            "per_kill": kills.kills.iter().map(|r| json!({
                "t_s": r.t, "replica": r.replica, "held_at_kill": r.held_at_kill,
                "dead_grants": r.dead_grants, "reclaimed_ms": r.reclaimed.map(|s| s * 1000.0),
                "capacity_back_ms": r.capacity_back.map(|s| s * 1000.0),
                "restarted_after_ms": r.restarted_after.map(|s| s * 1000.0),
            })).collect::<Vec<_>>()},
    });
    Ok(section)
}
