//! The command-line spine that `cargo xtask` and `devtools` share: a [`Cli`] is a tool's name,
//! its usage text and its [`Task`]s; [`Cli::main`] dispatches the first argument to a task,
//! prints the usage for `help` / `-h` / `--help` or no argument, prints a task's own usage
//! for `<task> --help` when the task has one, exits 2 on an unknown task and 1 with
//! `<tool>: error: <cause chain>` when a task fails. [`root`], [`cargo`] and [`run_step`] are
//! the helpers both tools run cargo steps with.
//!
//! A crate of its own rather than one file `#[path]`-included into both: the file would be
//! compiled twice under two crate roots, with `CARGO_MANIFEST_DIR` (and so [`root`]) meaning
//! something else in each, and neither tool's docs or tests would own it. As a crate it is
//! built once, depends on `anyhow` alone (as xtask does), and adds a fraction of a second to
//! the cold build of `cargo xtask`, which must stay light: it is what runs the gate's first
//! step (`cargo fmt --check`).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks to its user

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

/// One task of a tool.
#[derive(Debug, Clone, Copy)]
pub struct Task {
    /// The first argument that selects it.
    pub name: &'static str,
    /// Runs it with the arguments after its name.
    pub run: fn(&[String]) -> Result<()>,
    /// Printed for `<task> --help` (or `-h` anywhere after the name); `None`: the task gets
    /// those arguments itself.
    pub help: Option<&'static str>,
}

/// A command-line tool: its tasks and how it introduces itself.
#[derive(Debug, Clone, Copy)]
pub struct Cli {
    /// The tool's name, as in `<name>: error: ...`.
    pub name: &'static str,
    /// Printed for `help`, `-h`, `--help` or no argument, and after an unknown task.
    pub usage: &'static str,
    /// The tasks, selected by their name.
    pub tasks: &'static [Task],
}

impl Cli {
    /// The usage text to print when `args` (without the program name) ask for a task's help.
    pub fn task_help(&self, args: &[String]) -> Option<&'static str> {
        let (task, rest) = args.split_first()?;
        if !rest.iter().any(|a| a == "-h" || a == "--help") {
            return None;
        }
        self.tasks.iter().find(|t| t.name == task)?.help
    }

    /// Runs the tool on the process's arguments.
    pub fn main(&self) -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        self.run(&args)
    }

    /// Runs the tool on `args` (without the program name) and says how it exits.
    pub fn run(&self, args: &[String]) -> ExitCode {
        if let Some(help) = self.task_help(args) {
            print!("{help}");
            return ExitCode::SUCCESS;
        }
        let task = match args.first().map(String::as_str) {
            Some("-h" | "--help" | "help") | None => {
                print!("{}", self.usage);
                return ExitCode::SUCCESS;
            }
            Some(name) => self.tasks.iter().find(|t| t.name == name),
        };
        let Some(task) = task else {
            eprint!("unknown task {:?}\n\n{}", args[0], self.usage);
            return ExitCode::from(2);
        };
        match (task.run)(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: error: {e:#}", self.name);
                ExitCode::FAILURE
            }
        }
    }
}

/// The workspace root (this crate lives two levels below it, in `crates/task-cli`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("task-cli is inside the workspace")
        .to_path_buf()
}

/// `cargo` as invoked by the user (respects `CARGO`), run in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(root());
    cmd
}

/// Runs `cmd`, echoing it first, and fails if it fails.
///
/// # Errors
/// If `cmd` cannot be started or exits unsuccessfully.
pub fn run_step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\n==> {name}: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    const TOOL: Cli = Cli {
        name: "tool",
        usage: "usage: tool <ok|fails|bare>\n",
        tasks: &[
            Task {
                name: "ok",
                run: |_| Ok(()),
                help: Some("usage: tool ok\n"),
            },
            Task {
                name: "fails",
                run: |_| bail!("it failed"),
                help: None,
            },
        ],
    };

    #[test]
    fn a_task_runs_and_its_exit_code_says_how_it_went() {
        let code = |list: &[&str]| format!("{:?}", TOOL.run(&args(list)));
        let (ok, failure, unknown) = (
            format!("{:?}", ExitCode::SUCCESS),
            format!("{:?}", ExitCode::FAILURE),
            format!("{:?}", ExitCode::from(2)),
        );
        assert_eq!(code(&["ok"]), ok);
        assert_eq!(code(&[]), ok);
        assert_eq!(code(&["--help"]), ok);
        assert_eq!(code(&["fails"]), failure);
        assert_eq!(
            code(&["fails", "--help"]),
            failure,
            "no help of its own: it runs"
        );
        assert_eq!(code(&["nonsense"]), unknown);
    }

    #[test]
    fn task_help_is_the_tasks_own_text_when_it_has_one() {
        assert_eq!(
            TOOL.task_help(&args(&["ok", "-x", "-h"])),
            Some("usage: tool ok\n")
        );
        assert_eq!(TOOL.task_help(&args(&["ok"])), None);
        assert_eq!(TOOL.task_help(&args(&["fails", "--help"])), None);
        assert_eq!(TOOL.task_help(&args(&["nonsense", "--help"])), None);
    }
}
