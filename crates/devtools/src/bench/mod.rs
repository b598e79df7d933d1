//! `cargo xtask bench [--quick] [--debug] [--only 1,2,..]`: macro benchmarks over real
//! sockets. The servers and the load generator run as release builds unless `--debug` is
//! given: `cargo xtask` runs `devtools` as a debug build, so it builds `devtools` in release and lets
//! that process (`target/release/devtools bench`) generate the load and run the scenarios.
//!
//! No target is an absolute time: each is a ratio to a baseline measured in the same run
//! under the same load, or a bound that follows from the configuration (limits, timeouts,
//! intervals, plus [`OBSERVER_SLACK`] where a bound is observed by polling), and each says
//! why in the report. Absolute figures are reported as information.
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
//! 4. `crash`: SIGKILL an http-api process holding every permit at the default 15 s lease;
//!    time until another process sees the capacity back, against the instance TTL; baseline:
//!    the same trial with the registry out of the way (the lease alone).
//! 5. `outage`: 4 replicas, did-fake capping the account at C; SIGSTOP and SIGKILL of
//!    redis-server under load: failover, degraded latency, did-fake's peak in-flight and 429s
//!    during the outage and at fail-back, leaked permits; `FAILOVER_POLICY=share` against the
//!    `full` baseline.
//! 6. `gateway`: http-api's own overhead: `talk-status` through the gateway against the same
//!    read straight at did-fake, polls per synchronous `generate-video`, `/stats` against
//!    `/health` under a saturated limiter, RSS with 1000 queued requests beside the idle RSS.
//! 7. `kills`: 4 saturated replicas, one SIGKILLed and restarted every 10 s: time until the
//!    capacity is back, grants to the dead instance's waiters, lost slot-seconds; baseline:
//!    the same load without kills.
//! 8. `jobs`: `POST /jobs` latency at 200 submits/s on the SQLite and the Redis store beside
//!    `/health` at the same rate; creates per second while a backlog of jobs drains, against
//!    C workers creating straight at did-fake.
//!
//! 9. `operated`: the SQLite store over 100 000 jobs, idle CPU and store calls.
//! 10. `webhooks`: status polls per job with D-ID's webhooks off, on, and on with losses.
//! 11. `fairness`: two saturating tenants with weights 3:1 (memory, and Redis with 3
//!     instances) beside the same load without weights; a capped tenant and a `high` stream
//!     in the mix (most slots held, priority inversions).
//! 12. `adaptive`: `LIMIT_MODE=adaptive` against did-fake's hidden cap of 7, from 20 and from 1,
//!     memory and Redis with 3 instances (the limit over time as an SVG plot), beside fixed
//!     limits of 20 and 4.
//! 13. `breaker`: a 10 s burst of 500s under load with the breaker on (memory, Redis ×3) and
//!     off: calls to D-ID during the outage, recovery, critical requests refused.
//!
//! Results go to `target/bench-report/` (`report.json`, `report.md`, `docs-section.md` to
//! paste into `docs/BENCHMARKS.md`, one SVG per latency plot, and `index.html`: all of it on
//! one self-contained page, the plots inlined), and one PASS/FAIL line per target is printed.
//! The exit code is non-zero if a target fails. `cargo xtask bench-report` (`devtools
//! bench-report`, [`run_report`]) then opens `index.html` in headless Chromium, checks that
//! every table, plot and target rendered, and saves `screenshot.png`; with `--sample` it does
//! so on a report built in code, which is what `cargo xtask test` runs.
//!
//! Layout: `rig` (servers and HTTP helpers), `load` (closed-loop load driver), `report`
//! (percentiles, report files, SVG), `html` (the HTML page), `render` (the Chromium check and
//! the sample report), one module per scenario.

mod adaptive;
mod before_after;
mod breaker;
mod budget;
mod crash;
mod fairness;
mod gateway;
mod html;
mod jobs;
mod kills;
mod load;
mod operated;
mod outage;
mod priority;
mod redis_probe;
mod render;
mod report;
mod rig;
mod webhooks;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::procs;
use report::{Report, Section};

pub(crate) use render::run as run_report;

/// Set in the environment of the release-built bench process that a debug-built `devtools
/// bench` starts, so that it neither builds again nor starts yet another process.
const CHILD_ENV: &str = "TALKGATE_BENCH_CHILD";

/// What observing a configured bound adds to it: the observer's poll period (10 ms), one
/// HTTP round trip to the observed process, and scheduling delays on a loaded 2-core
/// machine. Bounds that are observed by polling state it beside the configured terms.
pub(crate) const OBSERVER_SLACK: Duration = Duration::from_millis(200);

/// What a run looks like: `quick` is for CI (shorter phases, fewer trials).
pub(crate) struct Ctx {
    pub(crate) quick: bool,
    /// Run the servers' release builds (the default) rather than their debug builds.
    pub(crate) release: bool,
    /// A client for control calls (stats, faults, health); pooled, generous timeout.
    pub(crate) client: reqwest::Client,
}

const SCENARIOS: [&str; 13] = [
    "before/after",
    "budget utilisation",
    "priority under contention",
    "crash recovery",
    "redis outage",
    "gateway overhead",
    "reclaim under periodic kills",
    "durable jobs",
    "operated for days",
    "D-ID webhooks",
    "fair share between tenants",
    "adaptive limit against a hidden cap",
    "breaker under a 5xx burst",
];

/// The command line of `cargo xtask bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    quick: bool,
    release: bool,
    only: Option<Vec<usize>>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut opts = Options {
            quick: false,
            release: true,
            only: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => opts.quick = true,
                "--debug" => opts.release = false,
                "--only" => {
                    let list = it.next().context("--only needs a list, e.g. 1,3")?;
                    let picked = list
                        .split(',')
                        .map(|s| s.trim().parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .context("--only takes scenario numbers 1..=13, e.g. 1,3")?;
                    if picked.iter().any(|n| !(1..=SCENARIOS.len()).contains(n)) {
                        bail!("--only takes scenario numbers 1..={}", SCENARIOS.len());
                    }
                    opts.only = Some(picked);
                }
                other => bail!(
                    "unknown bench option {other:?} (expected --quick, --debug, --only 1,2,...; \
                     see `cargo xtask bench --help`)"
                ),
            }
        }
        Ok(opts)
    }
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    let child = std::env::var_os(CHILD_ENV).is_some();
    if !child {
        // Benchmarks measure the servers as they would be deployed: optimised builds, built
        // on their own (`-p devtools` in the same command would unify features into them).
        let mut build = task_cli::cargo();
        build.args(["build", "--quiet", "-p", "did-fake", "-p", "http-api"]);
        if opts.release {
            build.arg("--release");
        }
        task_cli::run_step("build", &mut build)?;
        if opts.release && cfg!(debug_assertions) {
            // `cargo xtask` is a debug build: as the load generator it would measure itself.
            // Build the bench in release and let that process run it.
            task_cli::run_step(
                "build (the load generator)",
                task_cli::cargo().args(["build", "--quiet", "--release", "-p", "devtools"]),
            )?;
            return run_release_child(args);
        }
    }
    procs::runtime()?.block_on(procs::interruptible(bench(opts)))
}

/// Runs `target/release/devtools bench <args>` and exits with its code when it fails (its own
/// output already says what failed). Ctrl-C reaches both processes; this one then waits for
/// the child to stop its servers.
fn run_release_child(args: &[String]) -> Result<()> {
    let exe = procs::release_bin("devtools");
    eprintln!("\n==> bench: {} bench {}", exe.display(), args.join(" "));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(async {
        let mut child = tokio::process::Command::new(&exe)
            .arg("bench")
            .args(args)
            .env(CHILD_ENV, "1")
            .spawn()
            .with_context(|| format!("could not start {}", exe.display()))?;
        loop {
            tokio::select! {
                status = child.wait() => return anyhow::Ok(status?),
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("bench: interrupted; waiting for the bench process to stop its servers");
                }
            }
        }
    })?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

async fn bench(opts: Options) -> Result<()> {
    let ctx = Ctx {
        quick: opts.quick,
        release: opts.release,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
    };
    let mut report = Report::new(opts.quick, opts.release);
    println!(
        "bench: {} run, machine: {}",
        if opts.quick { "quick" } else { "full" },
        report.machine_line()
    );
    println!("bench: binaries: {}", report.binaries());
    let started = Instant::now();
    for (i, name) in SCENARIOS.iter().enumerate() {
        let n = i + 1;
        if opts.only.as_ref().is_some_and(|o| !o.contains(&n)) {
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
            6 => gateway::run(&ctx).await,
            7 => kills::run(&ctx).await,
            8 => jobs::run(&ctx).await,
            9 => operated::run(&ctx).await,
            10 => webhooks::run_scenario(&ctx).await,
            11 => fairness::run(&ctx).await,
            12 => adaptive::run(&ctx).await,
            _ => breaker::run(&ctx).await,
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
    report.load_end = report::load_average();
    let dir = procs::log_dir()
        .parent()
        .context("log dir has a parent")?
        .join("bench-report");
    report.write(&dir)?;
    let (passed, failed) = report.tally();
    println!(
        "\nbench: {passed} target(s) passed, {failed} failed, {:.0} s, load average {} at the \
         end; report in {} (index.html to read it, `cargo xtask bench-report` to check it \
         renders; docs-section.md to paste into docs/BENCHMARKS.md)",
        report.total_seconds,
        report.load_end,
        dir.display()
    );
    if failed > 0 {
        bail!("{failed} benchmark target(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Options> {
        Options::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn options_parse_and_bad_ones_point_at_help() {
        let o = parse(&[]).expect("no options");
        assert_eq!((o.quick, o.release, o.only), (false, true, None));
        let o = parse(&["--quick", "--debug", "--only", "2,6"]).expect("all options");
        assert_eq!(
            (o.quick, o.release, o.only),
            (true, false, Some(vec![2, 6]))
        );
        for bad in [
            &["--only", "14"][..],
            &["--only"],
            &["--only", "x"],
            &["--fast"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let e = parse(&["--fast"]).expect_err("unknown option");
        assert!(
            format!("{e:#}").contains("cargo xtask bench --help"),
            "{e:#}"
        );
    }
}
