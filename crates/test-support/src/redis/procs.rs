//! What the Cluster and Sentinel harnesses share: `redis-server` / `redis-cli` processes, a
//! command sent with `redis-cli`, a unique temporary directory, and polling until a node says
//! what the test waits for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::unique_name;

/// The install command a missing binary's panic names (all three come from these packages).
pub(crate) const INSTALL: &str = "apt-get install -y redis-server redis-sentinel redis-tools";

/// A `redis-server` child (a cluster node, a primary, a replica or a sentinel), SIGKILLed on
/// drop.
pub(crate) struct Proc {
    child: Option<Child>,
    pub(crate) port: u16,
}

impl Proc {
    /// Spawns `redis-server` with `args`; a missing binary panics with the install command.
    pub(crate) fn spawn(port: u16, args: &[String]) -> Proc {
        let child = Command::new("redis-server")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: install it with `{INSTALL}`")
            }
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        Proc {
            child: Some(child),
            port,
        }
    }

    /// Whether the process has exited (e.g. it lost the race for its port).
    pub(crate) fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// Whether it is running (not killed by the test).
    pub(crate) fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, like a crash: no shutdown, no goodbye to the cluster or the sentinels.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its output (errors are printed to stdout by
/// redis-cli, so they are in the text too), or `None` when redis-cli could not connect.
pub(crate) fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-cli not found: install it with `{INSTALL}`")
        }
        Err(e) => panic!("could not run redis-cli: {e}"),
    };
    let text = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failed = !output.status.success() && stderr.contains("Could not connect");
    (!failed && !text.starts_with("Could not connect")).then_some(text)
}

/// Polls `check` every 50 ms until it returns `Some`, panicking with `what` and the last
/// state after `within`.
pub(crate) fn poll<T>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what} did not happen within {within:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A temporary directory for node or sentinel files, unique to this run, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("temporary directory for redis files");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
