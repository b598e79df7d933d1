//! `cargo xtask bench [--quick] [--debug] [--only 1,2,..]`: macro benchmarks over real
//! sockets. The servers run as release builds unless `--debug` is given.
//!
//! Every scenario drives real HTTP traffic (or, for the priority scenario, real limiter
//! objects, one of them on a real redis-server) and measures its baseline in the same run:
//!
//! 1. `before_after`: a naive client (a new `reqwest::Client` per request) against did-client's
//!    pooled client, same load on did-fake with a fixed latency.
//! 2. `budget`: utilisation of the concurrency budget `C / L` through http-api, memory backend
//!    (1 process) and Redis backend (4 processes, one Redis); baseline: C workers straight at
//!    did-fake without any gateway.
//! 3. `priority`: priority inversions, FIFO violations and waits per priority at 3× capacity,
//!    with limiter objects (memory with and without ageing, Redis shared by independent
//!    instances; baseline: per-process limiters without a shared queue).
//! 4. `crash`: SIGKILL an http-api process holding every permit; time until another process
//!    sees the capacity back, against the lease bound.
//! 5. `outage`: SIGKILL redis-server under load: failover, degraded latency, over-admission,
//!    fail-back after a restart on the same port, leaked permits.
//! 6. `gateway`: http-api's own overhead: `talk-status` through the gateway against the same
//!    read straight at did-fake, `/stats` latency under a saturated limiter, RSS with 1000
//!    queued requests beside the idle RSS.
//!
//! Results go to `target/bench-report/` (`report.json`, `report.md`, one SVG per latency plot),
//! and one PASS/FAIL line per target is printed. The exit code is non-zero if a target fails.
//! Layout: `rig` (servers and HTTP helpers), `load` (closed-loop load driver), `report`
//! (percentiles, report files, SVG), one module per scenario.

mod before_after;
mod budget;
mod crash;
mod gateway;
mod load;
mod outage;
mod priority;
mod report;
mod rig;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::procs;
use report::{Report, Section};

/// What a run looks like: `quick` is for CI (all scenarios under 3 minutes).
pub(crate) struct Ctx {
    pub(crate) quick: bool,
    /// Run the servers' release builds (the default) rather than their debug builds.
    pub(crate) release: bool,
    /// A client for control calls (stats, faults, health); pooled, generous timeout.
    pub(crate) client: reqwest::Client,
}

const SCENARIOS: [&str; 6] = [
    "before/after",
    "budget utilisation",
    "priority under contention",
    "crash recovery",
    "redis outage",
    "gateway overhead",
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut release = true;
    let mut only: Option<Vec<usize>> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--debug" => release = false,
            "--only" => {
                let list = it.next().context("--only needs a list, e.g. 1,3")?;
                let picked = list
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("--only takes scenario numbers 1..=6, e.g. 1,3")?;
                if picked.iter().any(|n| !(1..=SCENARIOS.len()).contains(n)) {
                    bail!("--only takes scenario numbers 1..=6");
                }
                only = Some(picked);
            }
            other => {
                bail!("unknown bench option {other:?} (expected --quick, --debug, --only 1,2,...)")
            }
        }
    }
    // Benchmarks measure the servers as they would be deployed: optimised builds.
    let mut build = crate::cargo();
    build.args(["build", "--quiet", "-p", "did-fake", "-p", "http-api"]);
    if release {
        build.arg("--release");
    }
    crate::run_step("build", &mut build)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            result = bench(quick, release, only) => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; servers stopped"),
        }
    })
}

async fn bench(quick: bool, release: bool, only: Option<Vec<usize>>) -> Result<()> {
    let ctx = Ctx {
        quick,
        release,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
    };
    let mut report = Report::new(quick, release);
    println!(
        "bench: {} run, machine: {}",
        if quick { "quick" } else { "full" },
        report.machine_line()
    );
    let started = Instant::now();
    for (i, name) in SCENARIOS.iter().enumerate() {
        let n = i + 1;
        if only.as_ref().is_some_and(|o| !o.contains(&n)) {
            continue;
        }
        println!("\n=== scenario {n}: {name} ===");
        let t = Instant::now();
        let result = match n {
            1 => before_after::run(&ctx).await,
            2 => budget::run(&ctx).await,
            3 => priority::run(&ctx).await,
            4 => crash::run(&ctx).await,
            5 => outage::run(&ctx).await,
            _ => gateway::run(&ctx).await,
        };
        let mut section = result.unwrap_or_else(|e| {
            println!("scenario {n} failed to run: {e:#}");
            Section::failed(n, name, &format!("{e:#}"))
        });
        section.seconds = t.elapsed().as_secs_f64();
        section.print_targets();
        report.sections.push(section);
    }
    report.total_seconds = started.elapsed().as_secs_f64();
    let dir = procs::log_dir()
        .parent()
        .context("log dir has a parent")?
        .join("bench-report");
    report.write(&dir)?;
    let (passed, failed) = report.tally();
    println!(
        "\nbench: {passed} target(s) passed, {failed} failed, {:.0} s; report in {}",
        report.total_seconds,
        dir.display()
    );
    if failed > 0 {
        bail!("{failed} benchmark target(s) failed");
    }
    Ok(())
}
