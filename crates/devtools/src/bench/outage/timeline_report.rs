//! One timeline's part of scenario 5's section: its latency per phase, its events, its plot
//! and JSON, and its targets (failover, degraded latency, did-fake's peak and 429s, fail-back,
//! throughput back, leaks; the `full` baseline only checks that it is what it stands for).

use std::time::Duration;

use serde_json::{Value, json};

use limiter_redis::FailoverPolicy;

use super::report::{Bounds, leak_target};
use super::timeline::show_ms;
use super::*;
use crate::bench::OBSERVER_SLACK;
use crate::bench::report::{Plot, Section, Table, f1, f2};

/// The tables, notes and plot of timeline `t`; its JSON for the section's data.
pub(super) fn tables(section: &mut Section, p: &Params, b: &Bounds, t: &Timeline) -> Value {
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
        lines: Vec::new(),
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
    json!({
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
    })
}

/// The targets of timeline `t`.
pub(super) fn targets(
    section: &mut Section,
    p: &Params,
    lim: &Limits,
    b: &Bounds,
    full_bound: u64,
    t: &Timeline,
) {
    let name = t.name();
    let s = |i: usize| t.phases[i].summary;
    let (steady, degraded) = (s(0), s(3));
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
        leak_target(section, t);
        return;
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
    leak_target(section, t);
}
