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
//! Layout: this file holds the parameters, the types a timeline's measurements are kept in
//! and the scenario's order of runs; `timeline` runs one timeline (rig, load, fault,
//! recovery, phases); `report` writes the section's description, the side-by-side tables
//! and the data; `timeline_report` one timeline's tables and targets.

mod report;
mod timeline;
mod timeline_report;

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use limiter_redis::{FailoverPolicy, RedisLimiterConfig};

use super::load::Sample;
use super::report::{Section, Summary};
use super::{Ctx, rig};
use report::report;
use timeline::timeline;

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
            op_timeout: c.connection.op_timeout,
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
