//! `devtools`: talkgate's developer tool, one module per task, run through `cargo xtask`.
//!
//! - `devtools demo`: fake D-ID + the service, walking a real request flow.
//! - `devtools harness`: multi-process fault-injection run that checks the invariants.
//! - `devtools bench`: macro benchmarks over real sockets, baselines in the same run; the
//!   report under `target/bench-report/`, `index.html` the page to read.
//! - `devtools bench-report`: opens that `index.html` in headless Chromium, checks it
//!   rendered, saves `screenshot.png` (`--sample`: on a report built in code, for the gate).
//!
//! It lives apart from `xtask` so that `cargo xtask test` starts with `cargo fmt --check`
//! without first compiling what these tasks need (reqwest, fred, the adapters). The usage
//! texts and `--help` are `xtask`'s (`cargo xtask <task> --help`); the dispatch, exit codes
//! and error printing are `task-cli`'s, shared with `xtask`.
//!
//! Layout: `procs` (spawning the servers, did-fake's control calls), `demo`, `harness` (the
//! mixed run) and `harness_jobs` (the jobs chaos run), `bench` (one module per scenario).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks to its user

mod bench;
mod demo;
mod harness;
mod harness_jobs;
mod procs;

use std::process::ExitCode;

use task_cli::{Cli, Task};

const USAGE: &str = "usage: devtools <demo|harness|bench|bench-report> [options]  (run it as `cargo xtask <task>`; \
`cargo xtask <task> --help` lists a task's options)\n";

/// The tasks; each parses its own options.
const CLI: Cli = Cli {
    name: "devtools",
    usage: USAGE,
    tasks: &[
        Task {
            name: "demo",
            run: demo::run,
            help: None,
        },
        Task {
            name: "harness",
            run: harness::run,
            help: None,
        },
        Task {
            name: "bench",
            run: bench::run,
            help: None,
        },
        Task {
            name: "bench-report",
            run: bench::run_report,
            help: None,
        },
    ],
};

fn main() -> ExitCode {
    CLI.main()
}
