//! `devtools`: talkgate's developer tool, one module per task, run through `cargo xtask`.
//!
//! - `devtools demo`: fake D-ID + the service, walking a real request flow.
//! - `devtools harness`: multi-process fault-injection run that checks the invariants.
//! - `devtools bench`: macro benchmarks over real sockets, baselines in the same run.
//!
//! It lives apart from `xtask` so that `cargo xtask test` starts with `cargo fmt --check`
//! without first compiling what these tasks need (reqwest, fred, the adapters). The usage
//! texts and `--help` are `xtask`'s (`cargo xtask <task> --help`).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks to its user

mod bench;
mod demo;
mod harness;
mod harness_jobs;
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: devtools <demo|harness|bench> [options]  (run it as `cargo xtask <task>`; \
`cargo xtask <task> --help` lists a task's options)\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("harness") => harness::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprint!("unknown task {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devtools: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (devtools lives two levels below it, in `crates/devtools`).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("devtools is inside the workspace")
        .to_path_buf()
}

/// `cargo` as invoked by the user (respects `CARGO`), run in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(root());
    cmd
}

/// Runs `cmd`, echoing it first, and fails if it fails.
pub(crate) fn run_step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\n==> {name}: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}
