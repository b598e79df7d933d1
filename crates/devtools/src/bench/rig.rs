//! The benchmark rig: did-fake, http-api and redis-server processes on free loopback ports
//! (killed when dropped, see `procs`), and the few HTTP calls the scenarios make to steer and
//! observe them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::Ctx;
use crate::procs::{self, Server};

/// The service's route prefix.
pub(crate) const PREFIX: &str = "/api/d_id_optimized";
/// did-fake's default API key (`did_fake::DEFAULT_API_KEY`).
pub(crate) const FAKE_KEY: &str = "talkgate:fake-key";
/// The upstream route the load goes to (its latency is what the scenarios set).
pub(crate) const STATUS_ROUTE: &str = "GET /talks/{id}";
/// did-fake's `--time-scale`: a talk's lifecycle runs at 1/100 of D-ID's speed.
pub(crate) const TIME_SCALE: f64 = 0.01;
/// `POLL_INTERVAL_SECS` of the http-api processes unless a scenario says otherwise.
const POLL_INTERVAL_SECS: f64 = 0.05;

/// A server binary of this workspace in the profile the run uses.
fn bin(ctx: &Ctx, name: &str) -> PathBuf {
    if ctx.release {
        procs::release_bin(name)
    } else {
        procs::bin(name)
    }
}

/// Starts did-fake (fast talk lifecycle, fixed seed) and waits until it answers.
pub(crate) async fn spawn_fake(ctx: &Ctx, name: &str) -> Result<Server> {
    spawn_fake_scaled(ctx, name, TIME_SCALE).await
}

/// As [`spawn_fake`], with D-ID's durations multiplied by `time_scale`.
pub(crate) async fn spawn_fake_scaled(ctx: &Ctx, name: &str, time_scale: f64) -> Result<Server> {
    let client = &ctx.client;
    let port = procs::free_port()?;
    let mut fake = Server::spawn(
        name,
        bin(ctx, "did-fake"),
        &[
            "--port".into(),
            port.to_string(),
            "--time-scale".into(),
            time_scale.to_string(),
            "--seed".into(),
            "7".into(),
        ],
        &[],
        port,
    )?;
    fake.wait_ready(client, "/_fake/stats", Duration::from_secs(30))
        .await?;
    Ok(fake)
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

/// A counter of did-fake's stats (0 when absent).
pub(crate) fn count(stats: &Value, field: &str) -> u64 {
    stats[field].as_u64().unwrap_or(0)
}

/// Creates one talk straight at did-fake and returns its id (the status calls read it).
pub(crate) async fn create_talk(client: &reqwest::Client, fake: &str) -> Result<String> {
    let resp = client
        .post(format!("{fake}/talks"))
        .header("authorization", format!("Basic {FAKE_KEY}"))
        .json(&json!({
            "source_url": "https://example.com/bench-face.jpg",
            "script": {"type": "text", "input": "Benchmarks measure real traffic."},
        }))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("did-fake refused to create a talk: {status} {body}");
    }
    body["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in the create answer {body}"))
}

/// How one http-api process is configured beyond the defaults.
pub(crate) struct ApiOptions<'a> {
    pub(crate) fake: &'a str,
    pub(crate) redis: Option<&'a str>,
    pub(crate) limit: u32,
    pub(crate) lease_ttl_secs: Option<f64>,
    /// `POLL_INTERVAL_SECS`, if not the rig's 0.05 s.
    pub(crate) poll_interval_secs: Option<f64>,
    /// More environment variables (e.g. `FAILOVER_POLICY`, `INSTANCE_TTL_SECS`), set last.
    pub(crate) env: &'a [(&'a str, &'a str)],
    /// The port to bind (a restart on the port of a killed process); `None`: a free one.
    pub(crate) port: Option<u16>,
}

/// Starts one http-api process against `fake` (and `redis`, if given) and waits for `/health`.
pub(crate) async fn spawn_api(ctx: &Ctx, name: &str, opts: &ApiOptions<'_>) -> Result<Server> {
    let client = &ctx.client;
    let port = match opts.port {
        Some(port) => port,
        None => procs::free_port()?,
    };
    let mut envs = vec![
        ("D_ID_API_KEY", FAKE_KEY.to_owned()),
        ("D_ID_BASE_URL", opts.fake.to_owned()),
        ("BIND_ADDR", format!("127.0.0.1:{port}")),
        ("MAX_CONCURRENT_REQUESTS", opts.limit.to_string()),
        ("LIMITER_WAIT_TIMEOUT_SECS", "60".to_owned()),
        (
            "POLL_INTERVAL_SECS",
            opts.poll_interval_secs
                .unwrap_or(POLL_INTERVAL_SECS)
                .to_string(),
        ),
        ("MAX_WAIT_SECS", "10".to_owned()),
        ("SHUTDOWN_GRACE_SECS", "1".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    if let Some(redis) = opts.redis {
        // Jobs then live in the same Redis (JOB_STORE=auto), shared by the instances.
        envs.push(("REDIS_URL", redis.to_owned()));
    } else {
        // The durable default (SQLite), in a file of this run: a restart of `name` in the
        // same run resumes its jobs, a new run never sees an earlier run's.
        let file = procs::log_dir().join(format!("{name}-{}.jobs.sqlite3", std::process::id()));
        envs.push(("JOB_STORE_PATH", file.display().to_string()));
    }
    if let Some(ttl) = opts.lease_ttl_secs {
        envs.push(("LEASE_TTL_SECS", ttl.to_string()));
    }
    envs.extend(opts.env.iter().map(|&(k, v)| (k, v.to_owned())));
    let mut api = Server::spawn(name, bin(ctx, "http-api"), &[], &envs, port)?;
    api.wait_ready(client, &format!("{PREFIX}/health"), Duration::from_secs(30))
        .await?;
    Ok(api)
}

/// http-api's `/stats` as JSON.
pub(crate) async fn api_stats(client: &reqwest::Client, api: &str) -> Result<Value> {
    Ok(client
        .get(format!("{api}{PREFIX}/stats"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?)
}

/// http-api's `/health` as JSON (whatever the status code).
pub(crate) async fn api_health(client: &reqwest::Client, api: &str) -> Result<Value> {
    Ok(client
        .get(format!("{api}{PREFIX}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?)
}

/// The `rate_limiter` object of `/stats`.
pub(crate) fn limiter_of(stats: &Value) -> &Value {
    &stats["rate_limiter"]
}

/// Polls `probe` every `every` until it returns true; the time it took, or `None` after
/// `within`.
pub(crate) async fn time_until<F, Fut>(
    within: Duration,
    every: Duration,
    mut probe: F,
) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if probe().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// The port of a `redis://127.0.0.1:PORT` URL.
pub(crate) fn redis_port(url: &str) -> Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in {url}"))
}
