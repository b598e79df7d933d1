//! The instances of a jobs scenario: fixed ports, the process on each (started, SIGKILLed
//! and restarted), which are up (what the callers pick from), their logs, and the temp dir of
//! the SQLite store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::Rng;
use rand::rngs::StdRng;

use crate::procs::{self, Server};

/// A temp dir removed when dropped (the SQLite job store of scenario 2).
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "talkgate-harness-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The instances of a scenario: fixed ports, the running process of each (killed when
/// dropped), and which are up now (what the callers pick from).
pub(super) struct Fleet {
    pub(super) tag: String,
    /// The instances' variables; a later one of a name wins.
    pub(super) envs: Vec<(String, String)>,
    pub(super) ports: Vec<u16>,
    pub(super) servers: Vec<Option<Server>>,
    pub(super) alive: Arc<Vec<AtomicBool>>,
    pub(super) restarts: Vec<usize>,
    /// Every process's log, and whether it was SIGKILLed.
    pub(super) logs: Vec<(PathBuf, bool)>,
}

impl Fleet {
    pub(super) async fn start(
        client: &reqwest::Client,
        tag: String,
        envs: Vec<(String, String)>,
        n: usize,
    ) -> Result<Fleet> {
        let mut fleet = Fleet {
            tag,
            envs,
            ports: Vec::new(),
            servers: Vec::new(),
            alive: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            restarts: vec![0; n],
            logs: Vec::new(),
        };
        for i in 0..n {
            let port = procs::free_port()?;
            fleet.ports.push(port);
            fleet.servers.push(None);
            fleet.spawn(client, i).await?;
        }
        Ok(fleet)
    }

    pub(super) fn bases(&self) -> Arc<Vec<String>> {
        Arc::new(
            self.ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
        )
    }

    /// Starts instance `i` on its port (retried: a killed process's socket may linger).
    pub(super) async fn spawn(&mut self, client: &reqwest::Client, i: usize) -> Result<()> {
        let port = self.ports[i];
        let name = match self.restarts[i] {
            0 => format!("{}-http-api-{i}", self.tag),
            r => format!("{}-http-api-{i}-r{r}", self.tag),
        };
        let envs: Vec<(&str, String)> = self
            .envs
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        let mut tries = 0;
        let server = loop {
            match procs::spawn_api(client, &name, procs::bin("http-api"), &envs, port).await {
                Ok(server) => break server,
                Err(e) if tries < 20 => {
                    tries += 1;
                    println!("    (start of {name} retried: {e:#})");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.logs.push((server.log.clone(), false));
        self.servers[i] = Some(server);
        self.alive[i].store(true, Ordering::SeqCst);
        Ok(())
    }

    /// SIGKILLs instance `i` and waits until the process is gone.
    pub(super) async fn kill(&mut self, i: usize) -> Result<()> {
        self.alive[i].store(false, Ordering::SeqCst);
        if let Some(server) = self.servers[i].take() {
            server.signal("KILL").context("SIGKILL an instance")?;
            if let Some(entry) = self.logs.iter_mut().find(|(p, _)| *p == server.log) {
                entry.1 = true;
            }
            // Reaps it (the process is dead already; stop only waits for it).
            server.stop(Duration::from_secs(5)).await?;
        }
        self.restarts[i] += 1;
        Ok(())
    }

    /// From the processes' `job state changed` log lines: how many jobs had their state
    /// changed by more than one process, and how many a SIGKILLed process last moved to
    /// `creating` (killed mid-create, or between two create attempts).
    pub(super) fn job_log_figures(&self) -> (usize, usize) {
        let mut writers: HashMap<String, HashSet<usize>> = HashMap::new();
        let mut left_creating = HashSet::new();
        for (n, (path, killed)) in self.logs.iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let mut last: HashMap<&str, &str> = HashMap::new();
            for line in text.lines().filter(|l| l.contains("job state changed")) {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .map(|v| v.trim_matches('"'))
                };
                if let (Some(id), Some(to)) = (field("job_id="), field("to=")) {
                    writers.entry(id.to_owned()).or_default().insert(n);
                    last.insert(id, to);
                }
            }
            if *killed {
                left_creating.extend(
                    last.into_iter()
                        .filter(|(_, to)| *to == "creating")
                        .map(|(id, _)| id.to_owned()),
                );
            }
        }
        let multi = writers.values().filter(|w| w.len() > 1).count();
        (multi, left_creating.len())
    }

    pub(super) async fn stop(self) -> Result<()> {
        for server in self.servers.into_iter().flatten() {
            server.stop(Duration::from_secs(10)).await?;
        }
        Ok(())
    }
}

/// A random live instance (any instance if none is up), preferring another than `avoid`.
pub(super) fn pick_live(rng: &mut StdRng, alive: &[AtomicBool], avoid: Option<usize>) -> usize {
    let up: Vec<usize> = (0..alive.len())
        .filter(|&i| alive[i].load(Ordering::SeqCst))
        .collect();
    let others: Vec<usize> = up.iter().copied().filter(|&i| Some(i) != avoid).collect();
    if !others.is_empty() {
        others[rng.random_range(0..others.len())]
    } else if !up.is_empty() {
        up[0]
    } else {
        rng.random_range(0..alive.len())
    }
}
