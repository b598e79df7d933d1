//! Spawning talkgate's servers for the demo, the harness and the benchmarks: free loopback
//! ports, logs to files under `target/xtask-logs/`, readiness checks, and shutdown that also
//! happens when the task fails (children are killed when their handle is dropped). Redis is
//! started with `test_support::redis`, the one redis-server harness of the tree. Also the
//! calls that steer did-fake (`/_fake/faults`, `/_fake/reset`, `/_fake/stats`), which all
//! three tasks make.

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

use task_cli::{cargo, root, run_step};

/// Builds the given binaries (debug profile) so that spawning them is instant.
pub(crate) fn build(packages: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("build").arg("--quiet");
    for p in packages {
        cmd.args(["-p", p]);
    }
    run_step("build", &mut cmd)
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Where a debug binary of this workspace lands.
pub(crate) fn bin(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

/// Where a release binary of this workspace lands.
pub(crate) fn release_bin(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

/// Where the children's output goes.
pub(crate) fn log_dir() -> PathBuf {
    target_dir().join("xtask-logs")
}

/// A free TCP port on 127.0.0.1 (bound and released; the window for a race is tiny).
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The runtime the tasks run on: two workers (the machine they were tuned on has two cores).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// `task`, or an error when Ctrl-C comes first: the task is dropped then, and with it the
/// handles of the servers it started, which stops them.
pub(crate) async fn interruptible<T>(task: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        result = task => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; servers stopped"),
    }
}

/// `GET url`, its body as JSON (whatever the status code).
pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value> {
    Ok(client.get(url).send().await?.json().await?)
}

/// The service's route prefix.
pub(crate) const PREFIX: &str = "/api/d_id_optimized";
/// did-fake's default API key (`did_fake::DEFAULT_API_KEY`).
pub(crate) const FAKE_KEY: &str = "talkgate:fake-key";

/// Starts did-fake (`program`) on a free port with D-ID's durations multiplied by
/// `time_scale` (and the given `--seed`) and waits until it answers.
pub(crate) async fn spawn_fake(
    client: &reqwest::Client,
    name: &str,
    program: PathBuf,
    time_scale: f64,
    seed: Option<u64>,
) -> Result<Server> {
    spawn_fake_with(client, name, program, time_scale, seed, &[]).await
}

/// As [`spawn_fake`], with more command-line flags (e.g. `--allow-http-webhooks`).
pub(crate) async fn spawn_fake_with(
    client: &reqwest::Client,
    name: &str,
    program: PathBuf,
    time_scale: f64,
    seed: Option<u64>,
    flags: &[&str],
) -> Result<Server> {
    let port = free_port()?;
    let mut args: Vec<String> = vec![
        "--port".into(),
        port.to_string(),
        "--time-scale".into(),
        time_scale.to_string(),
    ];
    if let Some(seed) = seed {
        args.extend(["--seed".into(), seed.to_string()]);
    }
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    let mut fake = Server::spawn(name, program, &args, &[], port)?;
    fake.wait_ready(client, "/_fake/stats", Duration::from_secs(30))
        .await?;
    Ok(fake)
}

/// Starts http-api (`program`) bound to `127.0.0.1:port` with `envs` and waits until its
/// `/health` answers.
pub(crate) async fn spawn_api(
    client: &reqwest::Client,
    name: &str,
    program: PathBuf,
    envs: &[(&str, String)],
    port: u16,
) -> Result<Server> {
    let mut envs = envs.to_vec();
    envs.push(("BIND_ADDR", format!("127.0.0.1:{port}")));
    let mut api = Server::spawn(name, program, &[], &envs, port)?;
    api.wait_ready(client, &format!("{PREFIX}/health"), Duration::from_secs(30))
        .await?;
    Ok(api)
}

/// Replaces did-fake's faults with `faults` (the JSON form of `did_fake::Faults`).
pub(crate) async fn set_faults(client: &reqwest::Client, fake: &str, faults: Value) -> Result<()> {
    let resp = client
        .post(format!("{fake}/_fake/faults"))
        .json(&faults)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "did-fake refused the faults {faults}: {}",
            resp.text().await?
        );
    }
    Ok(())
}

/// Zeroes did-fake's counters (the peak in-flight restarts from the current in-flight).
pub(crate) async fn reset_fake(client: &reqwest::Client, fake: &str) -> Result<()> {
    let resp = client.post(format!("{fake}/_fake/reset")).send().await?;
    if !resp.status().is_success() {
        bail!("did-fake reset failed: {}", resp.status());
    }
    Ok(())
}

/// did-fake's `FakeStats` as JSON.
pub(crate) async fn fake_stats(client: &reqwest::Client, fake: &str) -> Result<Value> {
    Ok(client
        .get(format!("{fake}/_fake/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// A running child server. Dropping it kills the process.
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) base_url: String,
    pub(crate) log: PathBuf,
    child: Child,
}

impl Server {
    /// Starts `program` with `args` and `envs`, output to `<log_dir>/<name>.log`.
    pub(crate) fn spawn(
        name: &str,
        program: PathBuf,
        args: &[String],
        envs: &[(&str, String)],
        port: u16,
    ) -> Result<Server> {
        std::fs::create_dir_all(log_dir())?;
        let log = log_dir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", program.display()))?;
        Ok(Server {
            name: name.to_owned(),
            base_url: format!("http://127.0.0.1:{port}"),
            log,
            child,
        })
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until `GET <base_url><path>` answers (any status), or fails after `within`.
    pub(crate) async fn wait_ready(
        &mut self,
        client: &reqwest::Client,
        path: &str,
        within: Duration,
    ) -> Result<()> {
        let started = Instant::now();
        let url = format!("{}{path}", self.base_url);
        loop {
            if client.get(&url).send().await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited early ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            if started.elapsed() > within {
                bail!(
                    "{} not ready after {within:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (e.g. "TERM", "KILL", "STOP", "CONT") to the child.
    pub(crate) fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("process already reaped")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// Asks the child to stop (SIGTERM), waits up to `grace`, then kills it.
    pub(crate) async fn stop(mut self, grace: Duration) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            let _ = self.signal("TERM");
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}
