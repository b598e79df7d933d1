//! [`FakeDid::builder`] configures a fake, [`FakeBuilder::spawn`] binds and starts it, and the
//! returned [`RunningFake`] is the handle: address, stats, faults, reset, shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::DEFAULT_API_KEY;
use crate::faults::Faults;
use crate::state::{Config, Shared, Store, lock};
use crate::stats::FakeStats;
use crate::timing::Timing;
use crate::util::{now_ms, user_id_for_key};

/// Entry point of the fake D-ID server.
#[derive(Debug)]
pub struct FakeDid;

impl FakeDid {
    /// A builder with D-ID's defaults: real-time timing, [`DEFAULT_API_KEY`], 100 000 credits
    /// per user, no faults, bound to `127.0.0.1:0`.
    pub fn builder() -> FakeBuilder {
        FakeBuilder::default()
    }
}

/// Configuration of a fake; every setter is chainable.
#[derive(Clone, Debug)]
pub struct FakeBuilder {
    keys: Vec<String>,
    time_scale: f64,
    credits: i64,
    faults: Faults,
    seed: Option<u64>,
    bind: SocketAddr,
    timing: Timing,
    allow_http_webhooks: bool,
    strict_fields: bool,
    upload_ttl: Duration,
    result_url_ttl: Duration,
    result_size: usize,
}

impl Default for FakeBuilder {
    fn default() -> Self {
        Self {
            keys: vec![DEFAULT_API_KEY.to_owned()],
            time_scale: 1.0,
            credits: 100_000,
            faults: Faults::default(),
            seed: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            timing: Timing::default(),
            allow_http_webhooks: false,
            strict_fields: false,
            upload_ttl: Duration::from_secs(24 * 3600),
            result_url_ttl: Duration::from_secs(86_400),
            result_size: 1024,
        }
    }
}

impl FakeBuilder {
    /// Adds a valid API key, `user:pass` as D-ID Studio shows it. [`DEFAULT_API_KEY`] stays
    /// valid too. Each key is its own D-ID user, with its own talks and credits.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        self
    }

    /// Multiplies every delay of the timing model (queue, render, the default 504 delay):
    /// `1.0` is D-ID's real speed, `0.001` makes a talk finish in milliseconds. Explicit
    /// millisecond latencies in [`Faults`] are not scaled.
    pub fn time_scale(mut self, scale: f64) -> Self {
        self.time_scale = scale;
        self
    }

    /// Initial credits of every user (default 100 000).
    pub fn credits(mut self, credits: i64) -> Self {
        self.credits = credits;
        self
    }

    /// Initial fault configuration.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Seeds the RNG behind ids, timing and fault draws, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Address to bind (default `127.0.0.1:0`, a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Timing model parameters (the defaults follow D-ID's observed times).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Accept `http://` webhooks (D-ID requires `https://`).
    pub fn allow_http_webhooks(mut self, allow: bool) -> Self {
        self.allow_http_webhooks = allow;
        self
    }

    /// Reject unknown top-level `POST /talks` fields with a `ValidationError` instead of
    /// ignoring them (the schema says `additionalProperties: false`; D-ID is lenient).
    pub fn strict_fields(mut self, strict: bool) -> Self {
        self.strict_fields = strict;
        self
    }

    /// How long `/images` and `/audios` uploads stay usable (default 24 h).
    pub fn upload_ttl(mut self, ttl: Duration) -> Self {
        self.upload_ttl = ttl;
        self
    }

    /// Validity of a `result_url` from the moment it is handed out (default 24 h; whole
    /// seconds, so `Duration::ZERO` gives urls that are already expired).
    pub fn result_url_ttl(mut self, ttl: Duration) -> Self {
        self.result_url_ttl = ttl;
        self
    }

    /// Bytes served for a finished video (default 1024; at least the 24-byte MP4 header).
    pub fn result_size(mut self, bytes: usize) -> Self {
        self.result_size = bytes;
        self
    }

    /// Binds the listener and starts serving on the current tokio runtime.
    ///
    /// Fails with `InvalidInput` for a negative or non-finite time scale or invalid faults.
    pub async fn spawn(self) -> std::io::Result<RunningFake> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        if !(self.time_scale.is_finite() && self.time_scale >= 0.0) {
            return Err(invalid(format!(
                "time_scale must be finite and >= 0, got {}",
                self.time_scale
            )));
        }
        self.faults.validate().map_err(invalid)?;

        let listener = TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        let mut rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let s3_secret = rng.random();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let keys: HashMap<String, String> = self
            .keys
            .iter()
            .map(|k| (k.clone(), user_id_for_key(k)))
            .collect();
        let render_slots = self
            .timing
            .max_concurrent_renders
            .map(|n| Arc::new(Semaphore::new(n as usize)));
        let shared = Arc::new(Shared {
            config: Config {
                keys,
                time_scale: self.time_scale,
                credits: self.credits,
                timing: self.timing,
                allow_http_webhooks: self.allow_http_webhooks,
                strict_fields: self.strict_fields,
                upload_ttl: self.upload_ttl,
                result_url_ttl: self.result_url_ttl,
                result_size: self.result_size,
            },
            base_url: format!("http://{addr}"),
            faults: RwLock::new(self.faults),
            rng: Mutex::new(rng),
            stats: Mutex::new(FakeStats::default()),
            store: Mutex::new(Store::default()),
            key_in_flight: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            render_slots,
            user_render_slots: Mutex::new(HashMap::new()),
            s3_secret,
            started_ms: now_ms(),
            deliveries: crate::webhook::Deliveries::new()?,
            shutdown: shutdown_rx.clone(),
        });
        let task = tokio::spawn(crate::server::serve(
            listener,
            Arc::clone(&shared),
            shutdown_rx,
        ));
        tracing::info!(%addr, "fake D-ID listening");
        Ok(RunningFake {
            addr,
            shared,
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }
}

/// A running fake. Dropping it stops the server (without waiting); [`shutdown`](Self::shutdown)
/// stops it and waits for open connections to finish.
#[derive(Debug)]
pub struct RunningFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl RunningFake {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters (the same data as `GET /_fake/stats`).
    pub fn stats(&self) -> FakeStats {
        lock(&self.shared.stats).clone()
    }

    /// The current fault configuration.
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Replaces the fault configuration; takes effect for the next request. Out-of-range
    /// probabilities behave as their nearest bound (use [`Faults::validate`] to check first).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Zeroes the counters (the peak restarts from the current in-flight count); talks,
    /// uploads and credits are kept. Same as `POST /_fake/reset`.
    pub fn reset(&self) {
        lock(&self.shared.stats).reset();
    }

    /// Forgets all talks and uploads and restores every account's initial credits (same as
    /// `POST /_fake/reset?state=clear`, without the counter reset).
    pub fn clear_state(&self) {
        self.shared.clear_state();
    }

    /// The D-ID user id (`auth0|…`) an accepted key maps to, as `created_by` shows it.
    pub fn user_id(&self, key: &str) -> Option<String> {
        self.shared.config.keys.get(key).cloned()
    }

    /// Remaining credits of the user of `key` (`None` for an unknown key).
    pub fn remaining_credits(&self, key: &str) -> Option<i64> {
        let user = self.shared.config.keys.get(key)?;
        Some(
            lock(&self.shared.store)
                .account(user, self.shared.config.credits)
                .remaining,
        )
    }

    /// Stops accepting, lets open connections finish (up to 5 s), stops talk lifecycles.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "fake server task failed");
        }
    }
}

impl Drop for RunningFake {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
