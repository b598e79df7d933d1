//! `cargo xtask`: talkgate's developer tasks.
//!
//! - `cargo xtask test`: the one gate (format, layering, clippy, tests, docs), `test.rs`.
//! - `cargo xtask demo`: fake D-ID + the service, walking a real request flow.
//! - `cargo xtask harness`: multi-process fault-injection run that checks the invariants.
//! - `cargo xtask bench`: macro benchmarks over real sockets, baselines in the same run; the
//!   report in `target/bench-report/`, `index.html` the page to read.
//! - `cargo xtask bench-report`: opens that `index.html` in headless Chromium, checks that it
//!   rendered, saves `screenshot.png`.
//!
//! xtask depends on `anyhow` and the tiny `task-cli` alone, so the gate's first step (`cargo
//! fmt --check`) runs after seconds of compiling. `demo`, `harness`, `bench` and `bench-report`
//! need the adapters (or the bench's report writer); they live in
//! `crates/devtools`, which xtask runs with `cargo run -p devtools -- <task> <args>`.
//!
//! The dispatch, usage, exit codes and error printing are `task-cli`'s, shared with
//! `devtools` (that crate's docs say why it is a crate of its own).
//!
//! Run `cargo xtask` without arguments for the list.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks to its user

mod test;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use task_cli::{Cli, Task, cargo};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  test    the gate: fmt --check, layering check, clippy -D warnings, all tests, docs
  demo    fake D-ID + the service on free loopback ports, walking a real request flow
          (in-memory limiter; the Redis limiter when REDIS_URL is set)
  harness redis-server + did-fake with faults + N http-api processes, a seeded mixed
          workload, invariants checked [--quick] [--seed N]
  bench   macro benchmarks against did-fake over real sockets (before/after, budget
          utilisation, priority, crash recovery, Redis outage with 4 replicas, gateway
          overhead, reclaim under periodic kills, durable jobs, operated for days, D-ID
          webhooks), every
          target a ratio to a baseline of the same run or a bound from the configuration,
          report in target/bench-report/ (index.html: the page to read)
          [--quick] [--debug] [--only 1,2,..]
  bench-report
          opens target/bench-report/index.html in headless Chromium, checks every table,
          plot and target rendered, saves screenshot.png [--dir PATH] [--sample]

`cargo xtask <task> --help` prints a task's options.
";

/// `cargo xtask test --help`.
const TEST_USAGE: &str = "\
usage: cargo xtask test

The one gate, fast checks first: cargo fmt --check, the layering check (inner crates stay free
of I/O), cargo clippy --workspace --all-targets -D warnings, cargo test --workspace (Redis and
end-to-end tests included; they start their own servers), the bench report's render check on
a sample report (bench-report --sample, headless Chromium), harness --quick, and cargo doc
with broken intra-doc links denied. Takes no options; needs redis-server, chromium and
promtool on PATH (apt-get install -y redis-server redis-tools redis-sentinel chromium
prometheus).
";

/// `cargo xtask bench --help`.
const BENCH_USAGE: &str = "\
usage: cargo xtask bench [--quick] [--debug] [--only N[,N..]]

Macro benchmarks over real loopback sockets: did-fake, http-api and redis-server run as
separate processes on free ports. Every target is a ratio to a baseline measured in the same
run or a bound that follows from the configuration; absolute figures are reported as
information. Scenarios: 1 before/after, 2 budget utilisation, 3 priority under contention,
4 crash recovery, 5 Redis outage (4 replicas, share against full), 6 gateway overhead (and
polls per synchronous video), 7 reclaim under periodic kills, 8 durable jobs (submit latency
on the SQLite and the Redis store, the budget kept busy by a backlog of jobs), 9 operated for
days (the SQLite WAL and file over 100 000 jobs and their purge; idle CPU and store calls of
the memory, SQLite and Redis stores side by side), 10 D-ID webhooks (status polls per
completed job with webhooks off, on, and on with 30 % lost).
  --quick      CI size: every scenario and target, shorter runs (about 4 minutes)
  --debug      run everything as debug builds (default: did-fake, http-api and the load
               generator, i.e. the bench itself, run as release builds)
  --only N,..  run only these scenarios, e.g. --only 2,6
The report goes to target/bench-report/: index.html (the page to read: every section, table,
target and plot in one self-contained file, nothing fetched), report.md, report.json, SVG
plots, and docs-section.md (the same report shaped to paste into docs/BENCHMARKS.md). Exit
code 1 if a target fails. `cargo xtask bench-report` then checks index.html renders.
";

/// `cargo xtask bench-report --help`.
const BENCH_REPORT_USAGE: &str = "\
usage: cargo xtask bench-report [--dir PATH] [--sample]

Opens the last bench report's index.html in headless Chromium (new empty profile, no network,
each run killed after 60 s) and checks that it rendered: the page's own script counts the
sections, tables, plots and targets drawn with a non-zero size, and each count must equal what
report.json lists. Then saves a screenshot of the whole page beside it, screenshot.png (1280
pixels wide, as tall as the page up to 16000), and checks it is a PNG of that size. Needs
chromium (apt-get install -y chromium).
  --dir PATH   the report directory [default: target/bench-report]
  --sample     first write a report built in code (every kind of element, real SVG plots)
               with the bench's report writer, into a new temporary directory (or --dir),
               removed after a pass; what `cargo xtask test` runs, no bench run needed
";

/// `cargo xtask demo --help`.
const DEMO_USAGE: &str = "\
usage: cargo xtask demo

Builds did-fake and http-api, starts both on free loopback ports (one limiter slot, so the
priority queue is visible) and walks a real request flow: uploads, a priority backlog served
critical first, a synchronous and an asynchronous generate, a durable job with an
Idempotency-Key (its replay, a reused key refused, followed to its video), a typed error,
health, stats and metrics. Takes no options. Environment:
  REDIS_URL   use the Redis limiter at this URL instead of the in-memory one
Server logs are written to target/xtask-logs/.
";

/// `cargo xtask harness --help`.
const HARNESS_USAGE: &str = "\
usage: cargo xtask harness [--quick] [--seed N] [--only mixed|jobs] [--jobs-faults JSON]
                           [--jobs-env NAME=VALUE]...

Two runs, each checking its invariants:
- mixed: redis-server, did-fake with faults injected and several http-api processes sharing
  one Redis limiter, a seeded mixed workload (every request answered or typed error, no
  duplicate talks, global in-flight <= limit, no permit left);
- jobs: durable jobs under chaos: 200 jobs over 3 instances on Redis and 100 on one SQLite
  instance, did-fake creating-then-failing 30 % of creates, instances SIGKILLed and
  restarted, callers retrying the same Idempotency-Key on another instance (0 lost, 0 stuck,
  exactly 1 talk per done job, did-fake peak in-flight <= limit).
  --quick             smaller runs (what `cargo xtask test` runs)
  --seed N            the workloads' seed [default: 42]
  --only mixed|jobs   one of the two runs
  --jobs-faults JSON  more did-fake faults for the jobs run (experiments)
  --jobs-env N=V      a variable for the jobs run's instances, e.g. PACING=off (repeatable)
";

/// The tasks; `demo`, `harness`, `bench` and `bench-report` run in `devtools`.
const CLI: Cli = Cli {
    name: "xtask",
    usage: USAGE,
    tasks: &[
        Task {
            name: "test",
            run: test::run,
            help: Some(TEST_USAGE),
        },
        Task {
            name: "demo",
            run: |args| devtools("demo", args),
            help: Some(DEMO_USAGE),
        },
        Task {
            name: "harness",
            run: |args| devtools("harness", args),
            help: Some(HARNESS_USAGE),
        },
        Task {
            name: "bench",
            run: |args| devtools("bench", args),
            help: Some(BENCH_USAGE),
        },
        Task {
            name: "bench-report",
            run: |args| devtools("bench-report", args),
            help: Some(BENCH_REPORT_USAGE),
        },
    ],
};

/// The usage text to print when `args` (without the program name) ask for a task's help.
#[cfg(test)]
fn task_help(args: &[String]) -> Option<&'static str> {
    CLI.task_help(args)
}

fn main() -> ExitCode {
    CLI.main()
}

/// `cargo run -p devtools -- <task> <args>`: the tasks that need the adapters.
pub(crate) fn devtools_command(task: &str, args: &[String]) -> Command {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "devtools", "--", task])
        .args(args);
    cmd
}

/// Runs a devtools task; its failure message is its own, so only the exit status is added.
fn devtools(task: &str, args: &[String]) -> Result<()> {
    let status = devtools_command(task, args)
        .status()
        .context("could not start `cargo run -p devtools`")?;
    if !status.success() {
        bail!("{task} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_task_prints_its_options_for_help() {
        let check = |task: &str, options: &[&str]| {
            for flag in ["--help", "-h"] {
                let help = task_help(&args(&[task, flag]))
                    .unwrap_or_else(|| panic!("`cargo xtask {task} {flag}` prints no usage"));
                assert!(
                    help.starts_with(&format!("usage: cargo xtask {task}")),
                    "{task}: {help}"
                );
                for option in options {
                    assert!(help.contains(option), "{task} --help misses {option}");
                }
            }
        };
        check("test", &[]);
        check("demo", &["REDIS_URL"]);
        check("harness", &["--quick", "--seed"]);
        check(
            "bench",
            &["--quick", "--debug", "--only", "index.html", "bench-report"],
        );
        check(
            "bench-report",
            &["--dir", "--sample", "apt-get install -y chromium"],
        );
        // Help after other options counts too; a task without --help runs.
        assert!(task_help(&args(&["bench", "--quick", "--help"])).is_some());
        assert_eq!(task_help(&args(&["bench", "--quick"])), None);
        assert_eq!(task_help(&args(&["nonsense", "--help"])), None);
    }
}
