//! The benchmark rig: did-fake, http-api and redis-server processes on free loopback ports
//! (killed when dropped, see `procs`), and the few HTTP calls the scenarios make to steer and
//! observe them. Every scenario sets up through the same two builders, [`Rig::build`]
//! (did-fake, its faults, a talk, redis-server) and [`ApiOptions`] (one or more http-api
//! processes), and so states only what differs from the defaults.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use test_support::redis::RedisServer;

use super::Ctx;
use crate::procs::{self, Server};
pub(crate) use crate::procs::{FAKE_KEY, PREFIX, fake_stats, reset_fake, set_faults};

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

/// How one http-api process is configured beyond the rig's defaults (`LIMITER_WAIT_TIMEOUT_SECS`
/// 60, `MAX_WAIT_SECS` 10, `SHUTDOWN_GRACE_SECS` 1, `POLL_INTERVAL_SECS` 0.05, `RUST_LOG`
/// warn; without Redis the SQLite job store in a file of this run). Built with
/// [`ApiOptions::new`] (or [`Rig::api`]) and the setters below, so that a scenario states
/// only what differs.
#[derive(Debug, Clone, Copy)]
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

impl<'a> ApiOptions<'a> {
    /// One process against did-fake at `fake` with `limit` slots, the memory limiter, and
    /// the defaults.
    pub(crate) fn new(fake: &'a str, limit: u32) -> ApiOptions<'a> {
        ApiOptions {
            fake,
            redis: None,
            limit,
            lease_ttl_secs: None,
            poll_interval_secs: None,
            env: &[],
            port: None,
        }
    }

    /// On the Redis at `url` (the limiter, and the jobs with `JOB_STORE=auto`).
    pub(crate) fn redis(self, url: &'a str) -> ApiOptions<'a> {
        ApiOptions {
            redis: Some(url),
            ..self
        }
    }

    /// `LEASE_TTL_SECS`.
    pub(crate) fn lease_ttl_secs(self, secs: f64) -> ApiOptions<'a> {
        ApiOptions {
            lease_ttl_secs: Some(secs),
            ..self
        }
    }

    /// `POLL_INTERVAL_SECS`.
    pub(crate) fn poll_interval_secs(self, secs: f64) -> ApiOptions<'a> {
        ApiOptions {
            poll_interval_secs: Some(secs),
            ..self
        }
    }

    /// More environment variables, set last.
    pub(crate) fn env(self, env: &'a [(&'a str, &'a str)]) -> ApiOptions<'a> {
        ApiOptions { env, ..self }
    }

    /// Binds `port` rather than a free one.
    pub(crate) fn port(self, port: u16) -> ApiOptions<'a> {
        ApiOptions {
            port: Some(port),
            ..self
        }
    }

    /// Starts the process as `name` and waits for its `/health`.
    pub(crate) async fn spawn(&self, ctx: &Ctx, name: &str) -> Result<Server> {
        spawn_api(ctx, name, self).await
    }

    /// Starts `n` such processes, `<prefix>-0` to `<prefix>-<n-1>`, one after the other.
    pub(crate) async fn spawn_n(&self, ctx: &Ctx, prefix: &str, n: usize) -> Result<Vec<Server>> {
        let mut apis = Vec::with_capacity(n);
        for i in 0..n {
            apis.push(self.spawn(ctx, &format!("{prefix}-{i}")).await?);
        }
        Ok(apis)
    }
}

/// Starts one http-api process against `opts.fake` (and `opts.redis`, if given) and waits
/// for `/health`.
async fn spawn_api(ctx: &Ctx, name: &str, opts: &ApiOptions<'_>) -> Result<Server> {
    let port = match opts.port {
        Some(port) => port,
        None => procs::free_port()?,
    };
    let mut envs = vec![
        ("D_ID_API_KEY", FAKE_KEY.to_owned()),
        ("D_ID_BASE_URL", opts.fake.to_owned()),
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
    procs::spawn_api(&ctx.client, name, bin(ctx, "http-api"), &envs, port).await
}

/// What a scenario starts before its processes under test: did-fake, a redis-server if it
/// asks for one, and a talk for its status reads. Built with [`Rig::build`]; dropping it
/// stops the servers.
pub(crate) struct Rig {
    /// redis-server ([`RigBuilder::redis`]): the outage scenario stops, kills and restarts it.
    pub(crate) redis: Option<RedisServer>,
    redis_url: Option<String>,
    /// did-fake, stopped with the rig.
    _fake: Server,
    /// did-fake's base URL.
    pub(crate) base: String,
    talk: Option<String>,
}

impl Rig {
    /// A rig whose did-fake runs as `name` (fast talk lifecycle, [`TIME_SCALE`], fixed seed),
    /// nothing else unless the builder asks for it.
    pub(crate) fn build<'c>(ctx: &'c Ctx, name: &str) -> RigBuilder<'c> {
        RigBuilder {
            ctx,
            name: name.to_owned(),
            time_scale: TIME_SCALE,
            redis: false,
            talk: false,
            http_webhooks: false,
            faults: serde_json::Map::new(),
        }
    }

    /// The talk created straight at did-fake ([`RigBuilder::talk`]).
    pub(crate) fn talk(&self) -> &str {
        self.talk
            .as_deref()
            .expect("the rig was built with .talk()")
    }

    /// The redis-server's URL ([`RigBuilder::redis`]).
    pub(crate) fn redis_url(&self) -> &str {
        self.redis_url
            .as_deref()
            .expect("the rig was built with .redis()")
    }

    /// An http-api process against this rig's did-fake with `limit` slots, on its
    /// redis-server if it has one.
    pub(crate) fn api(&self, limit: u32) -> ApiOptions<'_> {
        ApiOptions {
            redis: self.redis_url.as_deref(),
            ..ApiOptions::new(&self.base, limit)
        }
    }
}

/// How a [`Rig`] starts; see [`Rig::build`].
pub(crate) struct RigBuilder<'c> {
    ctx: &'c Ctx,
    name: String,
    time_scale: f64,
    redis: bool,
    talk: bool,
    http_webhooks: bool,
    faults: serde_json::Map<String, Value>,
}

impl RigBuilder<'_> {
    /// D-ID's durations multiplied by `time_scale` rather than [`TIME_SCALE`].
    pub(crate) fn time_scale(mut self, time_scale: f64) -> Self {
        self.time_scale = time_scale;
        self
    }

    /// A redis-server too, started before did-fake.
    pub(crate) fn redis(mut self) -> Self {
        self.redis = true;
        self
    }

    /// did-fake delivers webhooks to `http://` (the http-api processes listen on loopback).
    pub(crate) fn http_webhooks(mut self) -> Self {
        self.http_webhooks = true;
        self
    }

    /// One talk created straight at did-fake (the status calls read it).
    pub(crate) fn talk(mut self) -> Self {
        self.talk = true;
        self
    }

    /// The rig of a `talk-status` load: a talk ([`RigBuilder::talk`]) whose status did-fake
    /// answers after `ms` ([`STATUS_ROUTE`]).
    pub(crate) fn status_load(self, ms: u64) -> Self {
        self.talk().latency(STATUS_ROUTE, ms)
    }

    /// did-fake answers `route` after `ms` (set once the talk is made).
    pub(crate) fn latency(mut self, route: &str, ms: u64) -> Self {
        let routes = self
            .faults
            .entry("latency")
            .or_insert_with(|| json!({"routes": {}}));
        routes["routes"][route] = json!(ms);
        self
    }

    /// did-fake refuses with 429 what exceeds `limit` in flight (`max_in_flight_per_key`).
    pub(crate) fn cap(mut self, limit: u32) -> Self {
        self.faults
            .insert("max_in_flight_per_key".into(), json!(limit));
        self
    }

    /// Starts redis-server (if asked), did-fake, creates the talk (if asked) and sets the
    /// faults (if any).
    pub(crate) async fn start(self) -> Result<Rig> {
        let ctx = self.ctx;
        let redis = self.redis.then(RedisServer::start);
        let redis_url = redis.as_ref().map(RedisServer::url);
        let flags: &[&str] = if self.http_webhooks {
            &["--allow-http-webhooks"]
        } else {
            &[]
        };
        let fake = procs::spawn_fake_with(
            &ctx.client,
            &self.name,
            bin(ctx, "did-fake"),
            self.time_scale,
            Some(7),
            flags,
        )
        .await?;
        let base = fake.base_url.clone();
        let talk = match self.talk {
            true => Some(create_talk(&ctx.client, &base).await?),
            false => None,
        };
        if !self.faults.is_empty() {
            set_faults(&ctx.client, &base, Value::Object(self.faults)).await?;
        }
        Ok(Rig {
            redis,
            redis_url,
            _fake: fake,
            base,
            talk,
        })
    }
}

/// http-api's `/stats` as JSON.
pub(crate) async fn api_stats(client: &reqwest::Client, api: &str) -> Result<Value> {
    api_json(client, api, "/stats").await
}

/// http-api's `/health` as JSON (whatever the status code).
pub(crate) async fn api_health(client: &reqwest::Client, api: &str) -> Result<Value> {
    api_json(client, api, "/health").await
}

/// `GET <api><PREFIX><route>` as JSON, whatever the status code, within 5 s.
async fn api_json(client: &reqwest::Client, api: &str, route: &str) -> Result<Value> {
    Ok(client
        .get(format!("{api}{PREFIX}{route}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?)
}

/// `GET <base><PREFIX>/talk-status/<talk>` on each of `bases`: what a status load spreads
/// over.
pub(crate) fn status_urls<I>(bases: I, talk: &str) -> Arc<Vec<String>>
where
    I: IntoIterator,
    I::Item: std::fmt::Display,
{
    Arc::new(
        bases
            .into_iter()
            .map(|b| format!("{b}{PREFIX}/talk-status/{talk}"))
            .collect(),
    )
}

/// One request of a load spread over `urls`: worker `w` sends `GET urls[w % n]`; it
/// succeeded if the answer is a 2xx.
pub(crate) async fn get_spread(http: reqwest::Client, urls: Arc<Vec<String>>, w: usize) -> bool {
    http.get(&urls[w % urls.len()])
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
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
