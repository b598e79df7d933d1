//! Scenario 5's section: the description with the configured bounds, the side-by-side
//! tables of share (measured) against full (baseline), the uncapped runs, and the data; each
//! timeline's own tables and targets are `timeline_report`'s.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use limiter_redis::FailoverPolicy;

use super::timeline_report;
use super::*;
use crate::bench::OBSERVER_SLACK;
use crate::bench::report::{Section, Table};
use crate::bench::rig::{PREFIX, STATUS_ROUTE};

/// The configured bounds of the scenario's targets.
pub(super) struct Bounds {
    pub(super) first_ok: Duration,
    pub(super) degraded: Duration,
    pub(super) fail_back: Duration,
}

pub(super) fn report(p: &Params, timelines: &[Timeline]) -> Result<Section> {
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
        data.push(timeline_report::tables(&mut section, p, &b, t));
        timeline_report::targets(&mut section, p, &lim, &b, full_bound, t);
    }
    section.data = json!({
        "limit": p.limit, "latency_ms": p.latency_ms, "callers": p.callers,
        "replicas": REPLICAS, "steady_s": p.steady, "outage_s": p.outage, "after_s": p.after,
        "fail_back_grace_s": FAIL_BACK_GRACE.as_secs_f64(), "timelines": data,
    });
    Ok(section)
}

pub(super) fn leak_target(section: &mut Section, t: &Timeline) {
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
