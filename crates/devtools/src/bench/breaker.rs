//! Scenario 13, the breaker under a 5xx burst: did-fake answers every status read 500 for
//! 10 s in the middle of a run of 64 closed-loop readers (a quarter each `low`, `normal`,
//! `high`, `critical`) through http-api (8 slots, the D-ID client's default retries), with the
//! breaker on (memory, and three instances on one Redis) and off (the baseline). did-fake
//! counts the status reads it got during the outage; the readers' answers give the
//! throughput before and after it, and which requests the breaker refused. Targets (issue 27):
//! calls to D-ID during the outage ≤ 10 % of the baseline's; full throughput back ≤ 5 s after
//! the fault ends; no `critical` request refused by the breaker once its probe succeeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::Ctx;
use super::report::{Section, Table, f1, f2};
use super::rig::{self, Rig, STATUS_ROUTE};

const STATUS_MS: u64 = 20;
const WORKERS: usize = 64;
const LIMIT: u32 = 8;
/// A reader's pause after an answer that is not a success (a client's small back-off).
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(20);
const OUTAGE: Duration = Duration::from_secs(10);

/// One request as its reader saw it (seconds since the run's start).
#[derive(Debug, Clone)]
struct Answer {
    start: f64,
    end: f64,
    critical: bool,
    status: u16,
    code: String,
}

struct Run {
    label: &'static str,
    breaker: bool,
    calls_during: u64,
    before_ok_per_s: f64,
    recovery_s: Option<f64>,
    closed_at_s: Option<f64>,
    critical_shed_after_close: usize,
    critical_shed_total: usize,
    shed_total: usize,
    trips: u64,
}

fn status_reads(stats: &Value) -> u64 {
    stats["requests"][STATUS_ROUTE]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn faults(outage: bool) -> Value {
    let latency = json!({"routes": {STATUS_ROUTE: STATUS_MS}});
    if outage {
        json!({"p_500": 1.0, "routes": [STATUS_ROUTE], "latency": latency})
    } else {
        json!({"latency": latency})
    }
}

/// One run's setup: its label, instances and whether the breaker is on.
struct Setup {
    label: &'static str,
    instances: usize,
    breaker: bool,
}

async fn one(
    ctx: &Ctx,
    rig: &Rig,
    setup: &Setup,
    (warm, after): (Duration, Duration),
    n: usize,
) -> Result<Run> {
    let (label, instances, breaker) = (setup.label, setup.instances, setup.breaker);
    rig::set_faults(&ctx.client, &rig.base, faults(false)).await?;
    rig::reset_fake(&ctx.client, &rig.base).await?;
    let name = format!("bench-breaker-{n}-{}", std::process::id());
    let mut env: Vec<(&str, &str)> = vec![("LIMITER_NAME", name.as_str())];
    if !breaker {
        env.push(("BREAKER", "off"));
    }
    let opts = rig.api(LIMIT).env(&env);
    let opts = if instances > 1 {
        opts
    } else {
        rig::ApiOptions {
            redis: None,
            ..opts
        }
    };
    let servers = opts
        .spawn_n(ctx, &format!("breaker-{n}"), instances)
        .await?;
    let bases: Vec<String> = servers.iter().map(|s| s.base_url.clone()).collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(WORKERS)
        .timeout(Duration::from_secs(90))
        .build()?;
    let t0 = Instant::now();
    let end = warm + OUTAGE + after;
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let priority = ["low", "normal", "high", "critical"][w % 4];
        let url = format!(
            "{}{}/talk-status/{}?priority={priority}",
            bases[w % bases.len()],
            rig::PREFIX,
            rig.talk()
        );
        let (http, answers) = (http.clone(), answers.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while t0.elapsed() < end {
                let start = t0.elapsed().as_secs_f64();
                let (status, code) = match http.get(&url).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body: Value = resp.json().await.unwrap_or(Value::Null);
                        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
                        (status, code)
                    }
                    Err(_) => (0, "transport".to_owned()),
                };
                mine.push(Answer {
                    start,
                    end: t0.elapsed().as_secs_f64(),
                    critical: priority == "critical",
                    status,
                    code,
                });
                if !(200..300).contains(&status) {
                    tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
                }
            }
            answers.lock().await.extend(mine);
        }));
    }
    // The breaker's state on instance 0, every 100 ms.
    let done = Arc::new(AtomicBool::new(false));
    let states = {
        let (client, base, done) = (ctx.client.clone(), bases[0].clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t = t0.elapsed().as_secs_f64();
                if let Ok(stats) = rig::api_stats(&client, &base).await
                    && let Some(state) = stats["upstream_gate"]["breaker"]["state"].as_str()
                {
                    seen.push((t, state.to_owned()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    tokio::time::sleep_until((t0 + warm).into()).await;
    rig::set_faults(&ctx.client, &rig.base, faults(true)).await?;
    let on = status_reads(&rig::fake_stats(&ctx.client, &rig.base).await?);
    let on_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep_until((t0 + warm + OUTAGE).into()).await;
    rig::set_faults(&ctx.client, &rig.base, faults(false)).await?;
    let off = status_reads(&rig::fake_stats(&ctx.client, &rig.base).await?);
    let off_s = t0.elapsed().as_secs_f64();
    for w in workers {
        w.await?;
    }
    done.store(true, Ordering::Relaxed);
    let states = states.await?;
    let mut trips = 0;
    for s in &servers {
        let stats = rig::api_stats(&ctx.client, &s.base_url).await?;
        trips = trips.max(
            stats["upstream_gate"]["breaker"]["trips"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    drop(servers);
    let answers = std::mem::take(&mut *answers.lock().await);
    let ok_rate = |from: f64, to: f64| {
        answers
            .iter()
            .filter(|a| (200..300).contains(&a.status) && a.end >= from && a.end < to)
            .count() as f64
            / (to - from).max(1e-9)
    };
    let before = ok_rate(1.0, on_s);
    // Back to full: the first 100 ms step after the fault from which one second holds 90 %
    // of the throughput before it.
    let end_s = end.as_secs_f64();
    let recovery_s = (0..)
        .map(|i| off_s + f64::from(i) * 0.1)
        .take_while(|t| t + 1.0 <= end_s)
        .find(|t| ok_rate(*t, t + 1.0) >= 0.9 * before)
        .map(|t| t - off_s);
    let closed_at_s = states
        .iter()
        .find(|(t, s)| *t >= off_s && s == "closed")
        .map(|(t, _)| *t);
    let shed = |a: &&Answer| a.status == 503 && a.code == "upstream_unavailable";
    Ok(Run {
        label,
        breaker,
        calls_during: off.saturating_sub(on),
        before_ok_per_s: before,
        recovery_s,
        closed_at_s: closed_at_s.map(|t| t - off_s),
        critical_shed_after_close: answers
            .iter()
            .filter(shed)
            .filter(|a| a.critical && closed_at_s.is_some_and(|c| a.start >= c))
            .count(),
        critical_shed_total: answers.iter().filter(shed).filter(|a| a.critical).count(),
        shed_total: answers.iter().filter(shed).count(),
        trips,
    })
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let (warm, after) = if ctx.quick {
        (Duration::from_secs(3), Duration::from_secs(7))
    } else {
        (Duration::from_secs(5), Duration::from_secs(10))
    };
    let rig = Rig::build(ctx, "fake-breaker")
        .redis()
        .status_load(STATUS_MS)
        .start()
        .await?;
    let mut runs = Vec::new();
    let setups = [
        Setup {
            label: "breaker on, memory",
            instances: 1,
            breaker: true,
        },
        Setup {
            label: "breaker on, Redis ×3",
            instances: 3,
            breaker: true,
        },
        Setup {
            label: "breaker off (baseline), memory",
            instances: 1,
            breaker: false,
        },
    ];
    for (n, setup) in setups.iter().enumerate() {
        println!("  run: {}", setup.label);
        runs.push(one(ctx, &rig, setup, (warm, after), n).await?);
    }
    let mut section = Section::new(
        13,
        "breaker under a 5xx burst",
        &format!(
            "{WORKERS} closed-loop readers of `GET {}/talk-status/{{id}}` (a quarter each at \
             `low`, `normal`, `high` and `critical`; {} ms pause after an answer that is not \
             a success) through http-api with {LIMIT} slots and the D-ID client's default \
             retries (3 attempts, 2 s and 4 s apart). did-fake answers in {STATUS_MS} ms; from \
             {} s on it answers every status read 500 for {} s. *Calls during the outage*: \
             did-fake's count of status reads between the fault's start and end. *Recovery*: \
             from the fault's end to the first 100 ms step from which one second holds 90 % \
             of the successful reads per second before the fault. *Critical refused after \
             the probe*: `critical` requests answered 503 `upstream_unavailable` that started \
             after instance 0's `/stats` first showed the breaker closed again. Breaker \
             settings are the defaults (10 failures and half of a 10 s window; cooldown 1 s \
             doubling to 4 s). Baseline in the same run: the breaker off.",
            rig::PREFIX,
            PAUSE_AFTER_FAILURE.as_millis(),
            warm.as_secs(),
            OUTAGE.as_secs()
        ),
    );
    let mut table = Table::new(
        "Breaker on vs off, same outage and load",
        &[
            "run",
            "calls to D-ID during the outage",
            "ok reads/s before",
            "recovery after the fault",
            "breaker closed after the fault",
            "503 upstream_unavailable (critical)",
            "critical refused after the probe",
            "trips",
        ],
    );
    let secs = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{} s", f2(t)));
    for r in &runs {
        table.row(vec![
            r.label.to_owned(),
            r.calls_during.to_string(),
            f1(r.before_ok_per_s),
            secs(r.recovery_s),
            if r.breaker {
                secs(r.closed_at_s)
            } else {
                "(off)".to_owned()
            },
            format!("{} ({})", r.shed_total, r.critical_shed_total),
            r.critical_shed_after_close.to_string(),
            r.trips.to_string(),
        ]);
    }
    section.table(table);
    let baseline = runs
        .iter()
        .find(|r| !r.breaker)
        .map_or(1, |r| r.calls_during.max(1));
    for r in runs.iter().filter(|r| r.breaker) {
        let ratio = r.calls_during as f64 / baseline as f64;
        section.ratio(
            &format!(
                "{}: calls to D-ID during the outage ≤ 10 % of the baseline's",
                r.label
            ),
            ratio <= 0.10,
            &format!("{} vs {baseline} (×{})", r.calls_during, f2(ratio)),
            "Issue 27's target: the failures that open it, the probes, and nothing else.",
        );
        section.bound(
            &format!(
                "{}: full throughput back ≤ 5 s after the fault ends",
                r.label
            ),
            r.recovery_s.is_some_and(|t| t <= 5.0),
            &secs(r.recovery_s),
            "Issue 27's target: the longest cooldown (4 s) plus one probe.",
        );
        section.bound(
            &format!(
                "{}: no critical request refused by the breaker after its probe succeeded",
                r.label
            ),
            r.critical_shed_after_close == 0,
            &r.critical_shed_after_close.to_string(),
            "Issue 27's target: critical requests wait for the probe instead of being shed.",
        );
    }
    section.data = json!({
        "runs": runs.iter().map(|r| json!({
            "label": r.label, "breaker": r.breaker, "calls_during": r.calls_during,
            "before_ok_per_s": r.before_ok_per_s, "recovery_s": r.recovery_s,
            "closed_at_s": r.closed_at_s, "critical_shed_after_close": r.critical_shed_after_close,
            "critical_shed_total": r.critical_shed_total, "shed_total": r.shed_total,
            "trips": r.trips,
        })).collect::<Vec<_>>(),
    });
    Ok(section)
}
