//! Scenario 5, Redis outage with 4 replicas: steady load through four http-api processes on
//! one Redis limiter (C = 6, did-fake capping the account at C in flight, as D-ID does), then
//! Redis fails, stays down for a while, and comes back. Two kinds of failure, each its own
//! timeline with fresh processes: redis-server SIGKILLed (connection refused) and restarted
//! empty on the same port; and redis-server SIGSTOPped (a black hole: the TCP connections
//! stay open, nothing answers) and then SIGCONTed with its data intact. Each timeline runs
//! twice: under `FAILOVER_POLICY=share` (the default, what is measured) and under `full`
//! (every degraded replica grants the whole limit: the behaviour before the instance
//! registry, the baseline). Measured from the load's own samples and from `/health`,
//! `/stats` and did-fake's counters (reset at each window's edges): failover time, latency
//! while degraded against the steady phase, did-fake's peak in-flight and its 429s during
//! the outage and at fail-back, time to fail back, and permits left over at the end.
//!
//! The file stays whole although it is long: it is one scenario, its phases (steady, stall,
//! resume, fail-back) share the rig and the samples they are measured from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use limiter_redis::{FailoverPolicy, RedisLimiterConfig};

use super::load::{self, Sample, Stop};
use super::report::{Plot, Section, Summary, Table, f1, f2};
use super::rig::{self, PREFIX, Rig, STATUS_ROUTE};
use super::{Ctx, OBSERVER_SLACK};

/// The replicas sharing the limit.
const REPLICAS: usize = 4;

/// fred's longest pause between two reconnection attempts as limiter-redis configures it
/// ([`limiter_redis::RECONNECT_MAX`]) plus fred's default jitter (`DEFAULT_JITTER_MS`,
/// 100 ms).
const RECONNECT_MAX: Duration =
    limiter_redis::RECONNECT_MAX.saturating_add(Duration::from_millis(100));

/// How long the fail-back window lasts after the last `/health` is back on Redis: longer
/// than the warm-up (1.6 s), so the window holds the first grants after it.
const FAIL_BACK_GRACE: Duration = Duration::from_secs(3);

/// Upstream 429s allowed in a window, as a fraction of its upstream requests.
const MAX_429_SHARE: f64 = 0.01;

/// The limiter settings the bounds follow from: http-api sets only the limit, the lease TTL
/// (`LEASE_TTL_SECS`) and the policy, the rest are limiter-redis's defaults.
struct Limits {
    op_timeout: Duration,
    probe_interval: Duration,
    /// The longest a waiter sleeps without a wake-up (limiter-redis's `poll_period`: the
    /// safety poll, capped at `waiter_ttl / 3` and `grant_ttl / 2`).
    waiter_poll: Duration,
    /// How long Redis grants nothing new after it lost its data or stalled.
    warmup: Duration,
}

impl Limits {
    fn defaults() -> Limits {
        let c = RedisLimiterConfig::new("redis://127.0.0.1:6379", "bench");
        Limits {
            op_timeout: c.op_timeout,
            probe_interval: c.probe_interval,
            waiter_poll: c.safety_poll.min(c.waiter_ttl / 3).min(c.grant_ttl / 2),
            warmup: c.warmup(),
        }
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

struct Params {
    limit: u32,
    latency_ms: u64,
    callers: usize,
    steady: f64,
    outage: f64,
    after: f64,
}

impl Params {
    /// What the replicas together may admit while degraded, and at fail-back, under
    /// `policy`: `max(C, N)` under share (each grants `max(1, floor(C / N))`), `N × C` under
    /// full.
    fn bound(&self, policy: FailoverPolicy) -> u64 {
        let (c, n) = (u64::from(self.limit), REPLICAS as u64);
        match policy {
            FailoverPolicy::Full => n * c,
            _ => c.max(n),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then a new redis-server on the same port (empty: no persistence).
    Kill,
    /// SIGSTOP, then SIGCONT (the same server, data intact).
    Stop,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL + restart",
            Fault::Stop => "SIGSTOP + SIGCONT",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
        }
    }
}

/// The requests of one phase of a timeline.
struct Phase {
    name: String,
    window: Option<(f64, f64)>,
    summary: Summary,
    failed: usize,
    over_1s: usize,
    throughput: Option<f64>,
}

/// did-fake's counters over one window (reset at its start).
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    peak: u64,
    rate_limited: u64,
    requests: u64,
}

impl Window {
    fn of(stats: &Value) -> Window {
        let requests = stats["requests"].as_object().map_or(0, |routes| {
            routes
                .values()
                .filter_map(Value::as_object)
                .flat_map(|by_status| by_status.values())
                .filter_map(Value::as_u64)
                .sum()
        });
        Window {
            peak: rig::count(stats, "peak_in_flight"),
            rate_limited: rig::count(stats, "rate_limited"),
            requests,
        }
    }

    fn share_429(&self) -> f64 {
        self.rate_limited as f64 / (self.requests.max(1)) as f64
    }

    fn show(&self) -> String {
        format!(
            "peak {}, {} × 429 of {} requests ({:.2} %)",
            self.peak,
            self.rate_limited,
            self.requests,
            100.0 * self.share_429()
        )
    }
}

/// What one timeline measured.
struct Timeline {
    policy: FailoverPolicy,
    fault: Fault,
    /// did-fake caps the account at C (429 above); uncapped it admits all, so its peak in
    /// flight is exactly what the replicas admitted.
    capped: bool,
    samples: Vec<Sample>,
    phases: Vec<Phase>,
    first_ok_after_fault: Option<f64>,
    all_degraded: Option<Duration>,
    fail_back: Option<Duration>,
    /// steady, outage, fail-back, after.
    windows: [Window; 4],
    leftovers: Vec<String>,
    final_health: Vec<Value>,
}

impl Timeline {
    fn name(&self) -> String {
        let uncapped = if self.capped {
            ""
        } else {
            ", did-fake uncapped"
        };
        format!("{}, {}{uncapped}", self.policy, self.fault.name())
    }

    fn tag(&self) -> String {
        let uncapped = if self.capped { "" } else { "-uncapped" };
        format!("{}-{}{uncapped}", self.policy, self.fault.tag())
    }
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let p = if ctx.quick {
        Params {
            limit: 6,
            latency_ms: 50,
            callers: 48,
            steady: 2.5,
            outage: 3.0,
            after: 6.0,
        }
    } else {
        Params {
            limit: 6,
            latency_ms: 50,
            callers: 48,
            steady: 6.0,
            outage: 5.0,
            after: 9.0,
        }
    };
    println!(
        "  C = {}, L = {} ms, {} callers over {REPLICAS} replicas, did-fake capped at C in \
         flight; {:.1} s steady, Redis down {:.0} s, {:.0} s after it is back; SIGSTOP, then \
         SIGKILL; FAILOVER_POLICY share, then full (baseline)",
        p.limit, p.latency_ms, p.callers, p.steady, p.outage, p.after
    );
    let mut timelines = Vec::new();
    for policy in [FailoverPolicy::Share, FailoverPolicy::Full] {
        for fault in [Fault::Stop, Fault::Kill] {
            println!("  run: {policy}, {}", fault.name());
            timelines.push(timeline(ctx, &p, policy, fault, true).await?);
        }
    }
    // The same run with did-fake uncapped: its peak in flight is then what the replicas
    // admitted, not what a cap let through.
    for fault in [Fault::Stop, Fault::Kill] {
        println!("  run: share, {}, did-fake uncapped", fault.name());
        timelines.push(timeline(ctx, &p, FailoverPolicy::Share, fault, false).await?);
    }
    report(&p, &timelines)
}

async fn timeline(
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
        .talk()
        .latency(STATUS_ROUTE, p.latency_ms);
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
    let urls: Arc<Vec<String>> = Arc::new(
        bases
            .iter()
            .map(|b| format!("{b}{PREFIX}/talk-status/{talk}"))
            .collect(),
    );
    let callers = p.callers;
    let label = format!("outage, {policy}, {}", fault.name());
    let load = tokio::spawn(async move {
        load::closed_loop(
            &label,
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

/// The configured bounds of the scenario's targets.
struct Bounds {
    first_ok: Duration,
    degraded: Duration,
    fail_back: Duration,
}

fn report(p: &Params, timelines: &[Timeline]) -> Result<Section> {
    let lim = Limits::defaults();
    let l = Duration::from_millis(p.latency_ms);
    let b = Bounds {
        first_ok: lim.op_timeout + 2 * l + OBSERVER_SLACK,
        degraded: lim.op_timeout + lim.probe_interval + OBSERVER_SLACK,
        fail_back: RECONNECT_MAX + lim.op_timeout + lim.probe_interval + OBSERVER_SLACK,
    };
    let share_bound = p.bound(FailoverPolicy::Share);
    let full_bound = p.bound(FailoverPolicy::Full);
    let mut section = Section::new(
        5,
        "Redis outage, 4 replicas",
        &format!(
            "Redis backend, limit C = {c}, {REPLICAS} http-api replicas on one Redis \
             (`LEASE_TTL_SECS` 5; the limiter's defaults: op timeout {op} ms, probe interval \
             {probe} ms, waiter poll {poll} ms, instance TTL 2 s, warm-up {warmup} ms), \
             did-fake latency {l} ms on `{STATUS_ROUTE}` and did-fake capping the account at \
             C = {c} requests in flight (`max_in_flight_per_key`: above it, 429), {callers} \
             closed-loop callers on `GET {PREFIX}/talk-status/{{id}}` spread evenly over the \
             replicas. After {steady:.1} s Redis fails for {outage:.0} s, then the load runs \
             {after:.0} s more. Two faults, fresh processes each: **SIGSTOP** (a black hole: \
             connections open, no answers; SIGCONT afterwards) and **SIGKILL** (connection \
             refused; a new empty redis-server on the same port afterwards). Each fault runs \
             under `FAILOVER_POLICY=share` (the default: each degraded replica grants \
             max(1, floor(C / N)) with N the live instances it last saw, so together at most \
             max(C, N) = {share_bound}) and, as the **baseline** in the same run, under \
             `full` (the behaviour before the instance registry: each grants C, {full_bound} \
             together). did-fake's counters are reset at each window's edge: *outage* from \
             the fault until Redis is back, *fail-back* from then until {grace} s after the \
             last replica's `/health` is back on Redis (longer than the warm-up); a window's \
             upstream requests are the sum of did-fake's `requests` map, 429s its \
             `rate_limited`. Failover: from the fault until the first request *started after \
             it* succeeds, and until every replica's `/health` says `degraded` (each polled \
             every 10 ms). Fail-back time: from Redis being back until every `/health` \
             reports backend `redis`, not degraded. Leaks: every replica's `/stats` once the \
             load has stopped (`active_requests`, `queue_size`). The steady phase is the \
             baseline for latency and throughput.",
            c = p.limit,
            l = p.latency_ms,
            callers = p.callers,
            steady = p.steady,
            outage = p.outage,
            after = p.after,
            grace = FAIL_BACK_GRACE.as_secs(),
            op = ms(lim.op_timeout),
            probe = ms(lim.probe_interval),
            poll = ms(lim.waiter_poll),
            warmup = ms(lim.warmup),
        ),
    );

    // Side by side: share (measured) and full (baseline), per fault and window.
    let find = |policy: FailoverPolicy, fault: Fault| {
        timelines
            .iter()
            .find(|t| t.policy == policy && t.fault == fault && t.capped)
    };
    let mut side = Table::new(
        "did-fake (the account capped at C) per window: `share` against the `full` baseline",
        &[
            "fault",
            "window",
            "share: peak in flight",
            "share: 429s / upstream requests",
            "full (baseline): peak in flight",
            "full (baseline): 429s / upstream requests",
            "bound under share",
        ],
    );
    for fault in [Fault::Stop, Fault::Kill] {
        for (i, window) in ["steady", "outage", "fail-back", "after"]
            .iter()
            .enumerate()
        {
            let cell = |policy| {
                find(policy, fault).map_or(("—".to_owned(), "—".to_owned()), |t| {
                    let w = t.windows[i];
                    (
                        w.peak.to_string(),
                        format!(
                            "{} / {} ({:.2} %)",
                            w.rate_limited,
                            w.requests,
                            100.0 * w.share_429()
                        ),
                    )
                })
            };
            let (sp, s429) = cell(FailoverPolicy::Share);
            let (fp, f429) = cell(FailoverPolicy::Full);
            side.row(vec![
                fault.name().to_owned(),
                (*window).to_owned(),
                sp,
                s429,
                fp,
                f429,
                if (1..=2).contains(&i) {
                    format!("peak ≤ {share_bound}, 429s ≤ 1 %")
                } else {
                    "—".to_owned()
                },
            ]);
        }
    }
    section.table(side);

    for fault in [Fault::Stop, Fault::Kill] {
        let (Some(share), Some(full)) = (
            find(FailoverPolicy::Share, fault),
            find(FailoverPolicy::Full, fault),
        ) else {
            continue;
        };
        let name = fault.name();
        for (i, window) in [(1, "during the outage"), (2, "at fail-back")] {
            let (s, f) = (share.windows[i], full.windows[i]);
            section.bound(
                &format!("{name}: did-fake peak in flight {window} <= max(C, replicas) = {share_bound} (share)"),
                s.peak <= share_bound,
                &format!("share: peak {}; baseline full: peak {}", s.peak, f.peak),
                &if i == 1 {
                    format!(
                        "While Redis is unreachable each of the {REPLICAS} replicas grants \
                         max(1, floor(C / N)) = {} with N = {REPLICAS} live instances it saw in \
                         Redis before the fault, so together they admit at most max(C, N) = \
                         {share_bound}; requests that were admitted on Redis before the fault \
                         finish within one upstream call (L = {} ms) and may overlap the first \
                         fallback grants. The `full` baseline grants C per replica ({full_bound} \
                         together).",
                        (p.limit / REPLICAS as u32).max(1),
                        p.latency_ms
                    )
                } else {
                    format!(
                        "At the switch back every fallback permit still running is registered \
                         in Redis as a holder first (adopted), and Redis grants nothing new \
                         for the warm-up ({} ms) after it lost its data (SIGKILL + empty \
                         restart) or stalled (SIGSTOP), so that every replica registers what it \
                         holds before anyone is admitted: the replicas together never exceed \
                         max(C, N) = {share_bound}. The window runs from Redis being back until \
                         {} s after the last replica switched.",
                        ms(lim.warmup),
                        FAIL_BACK_GRACE.as_secs()
                    )
                },
            );
            section.bound(
                &format!("{name}: upstream 429s {window} <= 1 % of upstream requests (share)"),
                s.share_429() <= MAX_429_SHARE,
                &format!("share: {}; baseline full: {}", s.show(), f.show()),
                "did-fake answers 429 above C requests in flight for the account, as D-ID \
                 does; a gateway that keeps the fleet at or under C causes none. The 1 % \
                 allows for a request of the previous window still in flight at an edge. \
                 The `full` baseline, same run, same load, shows what the old behaviour \
                 costs.",
            );
        }
    }

    // did-fake uncapped: its peak in flight is what the replicas admitted.
    let mut uncapped = Table::new(
        "did-fake uncapped (no 429s: its peak in flight is what the replicas admitted) per \
         window, `share`",
        &[
            "fault",
            "window",
            "peak in flight",
            "upstream requests",
            "bound",
        ],
    );
    for t in timelines.iter().filter(|t| !t.capped) {
        for (i, window) in ["steady", "outage", "fail-back", "after"]
            .iter()
            .enumerate()
        {
            let w = t.windows[i];
            uncapped.row(vec![
                t.fault.name().to_owned(),
                (*window).to_owned(),
                w.peak.to_string(),
                w.requests.to_string(),
                if (1..=2).contains(&i) {
                    format!("peak ≤ {share_bound}")
                } else {
                    format!("peak ≤ {}", p.limit)
                },
            ]);
        }
        for (i, window) in [(1, "during the outage"), (2, "at fail-back")] {
            let w = t.windows[i];
            section.bound(
                &format!(
                    "{}, did-fake uncapped: peak in flight {window} <= max(C, replicas) = \
                     {share_bound} (share)",
                    t.fault.name()
                ),
                w.peak <= share_bound,
                &format!("peak {} of {} upstream requests", w.peak, w.requests),
                "The same timeline with no cap at did-fake: nothing is refused, so the peak \
                 is exactly what the replicas let through together. At the switch back the \
                 callers still waiting in a replica's fallback move into the Redis queue (in \
                 their order) instead of being granted by the fallback after Redis took \
                 over, which admitted one more than C when Redis's warm-up ended.",
            );
        }
    }
    section.table(uncapped);

    section.notes.push(format!(
        "Under `full` did-fake's peak in flight stays near C: it refuses a request above the \
         cap at once, so a refused request is in flight only for the moment it takes to answer \
         429. The replicas' over-admission (up to {full_bound} admitted together) shows as the \
         429 share of the baseline's windows; the callers, whose requests then fail fast, \
         retry at once (closed loop without think time), which is why those windows count \
         tens of thousands of upstream requests."
    ));
    let mut data = Vec::new();
    for t in timelines {
        let name = t.name();
        let mut table = Table::new(
            &format!("**{name}**: latency per phase (each request in exactly one phase)"),
            &[
                "phase",
                "steady window (s)",
                "ok",
                "failed",
                "> 1 s",
                "throughput (req/s)",
                "mean (ms)",
                "p50 (ms)",
                "p99 (ms)",
                "max (ms)",
            ],
        );
        let mut phase_json = Vec::new();
        for ph in &t.phases {
            let s = &ph.summary;
            table.row(vec![
                ph.name.clone(),
                ph.window
                    .map_or("—".to_owned(), |(a, b)| format!("{a:.2}–{b:.2}")),
                s.n.to_string(),
                ph.failed.to_string(),
                ph.over_1s.to_string(),
                ph.throughput.map_or("—".to_owned(), f1),
                f2(s.mean),
                f2(s.p50),
                f2(s.p99),
                f2(s.max),
            ]);
            phase_json.push(json!({
                "phase": ph.name, "window_s": ph.window, "failed": ph.failed,
                "over_1s": ph.over_1s, "throughput_rps": ph.throughput, "latency": s.json(),
            }));
        }
        section.table(table);
        let failed_total = t.samples.iter().filter(|s| !s.ok).count();
        let mut events = Table::new(
            &format!("**{name}**: events"),
            &["event", "measured", "baseline / bound"],
        );
        events.row(vec![
            "first success of a request started after the fault".into(),
            show_ms(t.first_ok_after_fault.map(Duration::from_secs_f64)),
            format!("op timeout + 2 L + slack = {} ms", ms(b.first_ok)),
        ]);
        events.row(vec![
            "every /health says degraded".into(),
            show_ms(t.all_degraded),
            format!(
                "op timeout + probe interval + slack = {} ms",
                ms(b.degraded)
            ),
        ]);
        events.row(vec![
            "fail-back: every /health on Redis again".into(),
            show_ms(t.fail_back),
            format!(
                "reconnect + op timeout + probe interval + slack = {} ms",
                ms(b.fail_back)
            ),
        ]);
        events.row(vec![
            "processes with permits or waiters left at the end".into(),
            t.leftovers.len().to_string(),
            "0".into(),
        ]);
        events.row(vec![
            "failed requests over the whole run".into(),
            format!("{failed_total} of {}", t.samples.len()),
            "—".into(),
        ]);
        section.table(events);

        let s = |i: usize| t.phases[i].summary;
        let (steady, degraded, back) = (s(0), s(3), s(5));
        section.notes.push(format!(
            "{name}: latency while degraded vs steady on Redis: p50 {:+.2} ms, p99 {:+.2} ms \
             (the replicas then admit up to {} together against C = {} on Redis).",
            degraded.p50 - steady.p50,
            degraded.p99 - steady.p99,
            p.bound(t.policy),
            p.limit
        ));
        section.plots.push(Plot {
            file: format!("5-outage-{}-latency.svg", t.tag()),
            title: format!("Scenario 5 ({name}): caller latency per phase"),
            series: vec![
                "steady (Redis)".into(),
                "degraded".into(),
                "back on Redis".into(),
            ],
            groups: vec![
                ("p50".into(), vec![steady.p50, degraded.p50, back.p50]),
                ("p99".into(), vec![steady.p99, degraded.p99, back.p99]),
                ("max".into(), vec![steady.max, degraded.max, back.max]),
            ],
        });
        let windows_json: Vec<Value> = ["steady", "outage", "fail_back", "after"]
            .iter()
            .zip(t.windows)
            .map(|(w, x)| {
                json!({"window": w, "peak_in_flight": x.peak,
                    "rate_limited": x.rate_limited, "requests": x.requests})
            })
            .collect();
        data.push(json!({
            "policy": t.policy.as_str(),
            "did_fake_capped": t.capped,
            "fault": t.fault.name(),
            "first_ok_after_fault_ms": t.first_ok_after_fault.map(|s| s * 1000.0),
            "all_degraded_ms": t.all_degraded.map(|d| d.as_secs_f64() * 1000.0),
            "fail_back_ms": t.fail_back.map(|d| d.as_secs_f64() * 1000.0),
            "windows": windows_json,
            "leftovers": t.leftovers, "final_health": t.final_health, "phases": phase_json,
            "failed_requests": failed_total, "requests": t.samples.len(),
            "slow_requests": t.samples.iter().filter(|s| s.latency_ms() > 1000.0).take(50)
                .map(|s| json!({"start_s": s.start, "latency_ms": s.latency_ms()}))
                .collect::<Vec<_>>(),
        }));

        if t.policy == FailoverPolicy::Full {
            // The baseline: only check that it is the behaviour it stands for, and clean.
            let peak = t.windows[1].peak;
            section.bound(
                &format!("{name}: baseline over-admission bounded by replicas × C"),
                peak <= full_bound,
                &format!("peak {peak} in flight while down (bound {full_bound})"),
                &format!(
                    "Under `full` each of the {REPLICAS} replicas admits up to C = {} on its \
                     own while Redis is down (did-fake's peak counts the requests it then \
                     refuses with 429); more would mean a fallback ignoring its limit.",
                    p.limit
                ),
            );
            leak_target(&mut section, t);
            continue;
        }
        section.bound(
            &format!(
                "{name}: first success after the fault within op timeout + 2 L + slack ({} ms)",
                ms(b.first_ok)
            ),
            t.first_ok_after_fault
                .is_some_and(|s| s <= b.first_ok.as_secs_f64()),
            &format!(
                "first success after {}",
                show_ms(t.first_ok_after_fault.map(Duration::from_secs_f64))
            ),
            &format!(
                "A request that starts after the fault makes at most one Redis call, bounded by \
                 the op timeout ({} ms), before its limiter serves it from the memory fallback; \
                 there it may wait for a fallback slot taken by a request caught by the fault \
                 (one upstream call, L = {} ms) and then makes its own (L). The {} ms slack is \
                 for scheduling on a loaded machine.",
                ms(lim.op_timeout),
                p.latency_ms,
                ms(OBSERVER_SLACK)
            ),
        );
        section.bound(
            &format!(
                "{name}: /health degraded everywhere within op timeout + probe interval + slack \
                 ({} ms)",
                ms(b.degraded)
            ),
            t.all_degraded.is_some_and(|d| d <= b.degraded),
            &show_ms(t.all_degraded),
            &format!(
                "Under load each process has a Redis call in flight or starts one at once; the \
                 first that outlives the op timeout ({} ms) switches the process to its \
                 fallback, which `/health` reports at once. The probe interval ({} ms) is the \
                 limiter's documented allowance for a process that had no call in flight; the \
                 {} ms slack covers the 10 ms `/health` polling and its round trip.",
                ms(lim.op_timeout),
                ms(lim.probe_interval),
                ms(OBSERVER_SLACK)
            ),
        );
        section.bound(
            &format!(
                "{name}: fail-back to Redis within reconnect + op timeout + probe interval + \
                 slack ({} ms)",
                ms(b.fail_back)
            ),
            t.fail_back.is_some_and(|d| d <= b.fail_back),
            &show_ms(t.fail_back),
            &format!(
                "Once Redis answers again, fred's next reconnection attempt comes within its \
                 longest pause ({} ms: 50 ms doubling to `limiter_redis::RECONNECT_MAX` = {} ms, \
                 plus 100 ms jitter; SIGSTOP keeps the connection, so there it is 0); a probe \
                 already waiting on the dead connection gives up within the op timeout ({} ms), \
                 and the next probe comes within the probe interval ({} ms) and switches back; \
                 the {} ms slack covers the 10 ms `/health` polling and its round trip.",
                ms(RECONNECT_MAX),
                ms(limiter_redis::RECONNECT_MAX),
                ms(lim.op_timeout),
                ms(lim.probe_interval),
                ms(OBSERVER_SLACK)
            ),
        );
        // Once Redis is back, nobody should wait much longer than before: a stall beyond
        // the warm-up means slots or the queue head are blocked by stale state.
        let after_back = &t.phases[4..];
        let worst_after = after_back
            .iter()
            .map(|ph| ph.summary.max)
            .fold(0.0_f64, f64::max);
        let failed_after: usize = after_back.iter().map(|ph| ph.failed).sum();
        let before = steady.max.max(degraded.max);
        let stall_bound =
            before + (lim.warmup + lim.waiter_poll + OBSERVER_SLACK).as_secs_f64() * 1000.0;
        section.bound(
            &format!(
                "{name}: no request running when or after Redis returned takes longer than the \
                 worst before it + warm-up + one waiter poll + slack"
            ),
            failed_after == 0 && worst_after <= stall_bound,
            &format!(
                "worst {worst_after:.0} ms, {failed_after} failed, bound {stall_bound:.0} ms \
                 (worst steady/degraded {before:.0} ms + warm-up {} ms + {} ms + {} ms)",
                ms(lim.warmup),
                ms(lim.waiter_poll),
                ms(OBSERVER_SLACK)
            ),
            &format!(
                "A request running across the switch back has waited for a slot as in the \
                 steady phase or the degraded one (the worst request of either, measured in \
                 the same run under the same load, is the baseline). On top of that Redis \
                 grants nothing new for the warm-up ({} ms, `RedisLimiterConfig::warmup()`: \
                 max(probe interval, heartbeat) + reconnect pause + jitter + op timeout) after \
                 it lost its data or stalled, and a waiter whose wake-up message was lost \
                 while the subscriber reconnected re-checks within one waiter poll ({} ms). A \
                 grant or ticket left behind by stale commands would block the queue for up \
                 to the waiter TTL (6 s) instead. {} ms slack for scheduling.",
                ms(lim.warmup),
                ms(lim.waiter_poll),
                ms(OBSERVER_SLACK)
            ),
        );
        let (tp_back, tp_steady) = (
            t.phases[5].throughput.unwrap_or(0.0),
            t.phases[0].throughput.unwrap_or(0.0),
        );
        section.ratio(
            &format!("{name}: throughput back on Redis >= 90 % of the steady phase"),
            tp_back >= 0.9 * tp_steady,
            &format!(
                "{tp_back:.1} vs {tp_steady:.1} req/s ({:.0} %)",
                100.0 * tp_back / tp_steady.max(1e-9)
            ),
            "The steady phase before the fault is the baseline: same processes, same load, \
             same limit. After the fail-back window the same C slots are shared again, so \
             throughput returns to it; the 10 % allow for the count of answers in a short \
             window (up to C answers per window edge).",
        );
        leak_target(&mut section, t);
    }
    section.data = json!({
        "limit": p.limit, "latency_ms": p.latency_ms, "callers": p.callers,
        "replicas": REPLICAS, "steady_s": p.steady, "outage_s": p.outage, "after_s": p.after,
        "fail_back_grace_s": FAIL_BACK_GRACE.as_secs_f64(), "timelines": data,
    });
    Ok(section)
}

fn leak_target(section: &mut Section, t: &Timeline) {
    section.bound(
        &format!("{}: 0 leaked permits at the end", t.name()),
        t.leftovers.is_empty(),
        &if t.leftovers.is_empty() {
            "every process idle (active 0, queued 0)".to_owned()
        } else {
            t.leftovers.join("; ")
        },
        "Once the callers stop, every permit (Redis or fallback) must have been released \
         and every waiter gone: `/stats` shows 0 active and 0 queued on every process \
         (polled for up to 10 s, since leases and tickets outlive a request only by their \
         TTLs when something went wrong).",
    );
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

fn show_ms(d: Option<Duration>) -> String {
    d.map_or("not within the window".to_owned(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}
