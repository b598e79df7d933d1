//! Test support: a service on `127.0.0.1:0`, built over did-fake or over mocks, and a
//! captured log. The client, request helpers, fixtures and `eventually` are the shared ones
//! of `test-support`.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use did_fake::{FakeDid, Faults, RunningFake};
use http_api::config::Config;
use http_api::metrics::{MeteredLimiter, Metrics};
use http_api::{AppState, Settings};
use ports::{ConcurrencyLimiter, LimiterStats, MockVideoApi, VideoApiStats};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The captured log of the whole test binary (JSON lines, level `debug`).
pub fn logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once for the whole binary.
pub fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let buf = log_buffer().clone();
        // `debug` everywhere, so the secret check sees what an operator turning logs up sees.
        let filter = tracing_subscriber::EnvFilter::new("debug");
        let _ = http_api::telemetry::init_with(http_api::LogFormat::Json, filter, move || {
            LogWriter(buf.clone())
        });
    });
}

/// A running service.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (the limiter is reachable through it).
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Serves `state` on a free loopback port.
    pub async fn start(state: AppState) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::start_on(listener, state).await
    }

    /// Serves `state` on `listener`.
    pub async fn start_on(listener: tokio::net::TcpListener, state: AppState) -> Server {
        init_logs();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(http_api::run(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        test_support::http::client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// `http://127.0.0.1:PORT/api/d_id_optimized{path}`.
    pub fn api(&self, path: &str) -> String {
        self.url(&format!("/api/d_id_optimized{path}"))
    }

    /// Asks the server to shut down (does not wait).
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits (bounded) for `run` to return.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops in time")
                .expect("server task did not panic")
                .expect("server returned Ok");
        }
    }

    /// The running task, to await its end.
    pub fn take_task(&mut self) -> JoinHandle<std::io::Result<()>> {
        self.task.take().expect("task not taken yet")
    }

    /// The limiter's stats.
    pub async fn limiter_stats(&self) -> LimiterStats {
        self.state.limiter().stats().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// A configuration from pairs (never the process environment).
/// Jobs are kept in memory unless the pairs say otherwise, so no test writes a job file
/// into the source tree (the default `JOB_STORE_PATH` is relative to the working directory).
pub fn config(pairs: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    map.entry("JOB_STORE".to_owned())
        .or_insert_with(|| "memory".to_owned());
    Config::from_source(&map).expect("valid test config")
}

/// A Standard Webhooks secret for services that deliver callbacks.
pub const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A fake D-ID that finishes talks in milliseconds.
pub async fn fake() -> RunningFake {
    fake_with(Faults::default()).await
}

/// A fast fake D-ID with faults.
pub async fn fake_with(faults: Faults) -> RunningFake {
    FakeDid::builder()
        .time_scale(0.001)
        .faults(faults)
        .spawn()
        .await
        .expect("fake D-ID starts")
}

/// The service over `fake`, with the production wiring, fast polling and fast retries.
pub async fn service(fake: &RunningFake, extra: &[(&str, &str)]) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    service_on(listener, fake, extra).await
}

/// The service with `PUBLIC_BASE_URL` at its own address, so that did-fake's webhooks (with
/// `allow_http_webhooks`) reach it.
pub async fn webhook_service(fake: &RunningFake, extra: &[(&str, &str)]) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let mut pairs = vec![("PUBLIC_BASE_URL", public.as_str())];
    pairs.extend_from_slice(extra);
    service_on(listener, fake, &pairs).await
}

async fn service_on(
    listener: tokio::net::TcpListener,
    fake: &RunningFake,
    extra: &[(&str, &str)],
) -> Server {
    let base = fake.base_url();
    let mut pairs = vec![
        ("D_ID_BASE_URL", base.as_str()),
        ("D_ID_API_KEY", did_fake::DEFAULT_API_KEY),
        ("POLL_INTERVAL_SECS", "0.01"),
        ("MAX_WAIT_SECS", "10"),
        ("SHUTDOWN_GRACE_SECS", "5"),
        // Each test its own jobs (a test that needs a durable store says so).
        ("JOB_STORE", "memory"),
    ];
    pairs.extend_from_slice(extra);
    let config = config(&pairs);
    let mut did = http_api::wiring::did_client_config(&config);
    did.retry.base_delay = Duration::from_millis(5);
    did.retry.max_delay = Duration::from_millis(20);
    let state = http_api::wiring::build_with(&config, did)
        .await
        .expect("adapters build");
    Server::start_on(listener, state).await
}

/// The service over a mock video API and an in-memory limiter of `limit` slots. The mock
/// reports empty stats to `/stats` and `/metrics`.
pub async fn mock_service(mut mock: MockVideoApi, settings: Settings, limit: u32) -> Server {
    mock.expect_stats().return_const(VideoApiStats::default());
    let metrics = Arc::new(Metrics::new());
    let limiter: Arc<dyn ConcurrencyLimiter> = Arc::new(MeteredLimiter::new(
        Arc::new(limiter_memory::MemoryLimiter::new(limit)),
        metrics.clone(),
    ));
    Server::start(http_api::wiring::memory_state(
        Arc::new(mock),
        limiter,
        metrics,
        settings,
    ))
    .await
}

/// Settings with a key configured (so D-ID routes reach the mock).
pub fn keyed_settings() -> Settings {
    Settings {
        api_key_configured: true,
        ..Settings::default()
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "talkgate-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `http-api` binary as an operator runs it: a clean environment (`PATH`, and `env`
/// over `BIND_ADDR=127.0.0.1:0`, `LOG_FORMAT=json`, `JOB_STORE=memory`), its stderr log
/// read line by line.
pub struct Binary {
    pub child: std::process::Child,
    /// The address it logged `listening` on.
    pub addr: String,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The log lines read so far.
    log: String,
}

impl Binary {
    /// Starts it and waits (up to 20 s) until it logs `listening`.
    pub async fn start(env: &[(&str, &str)]) -> Binary {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_http-api"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("JOB_STORE", "memory");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the http-api binary runs");
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut log = String::new();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
                .await
                .expect("the binary logs `listening` in time")
                .expect("the binary is running");
            log.push_str(&line);
            log.push('\n');
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "listening" {
                break v["fields"]["addr"].as_str().unwrap().to_owned();
            }
        };
        Binary {
            child,
            addr,
            lines,
            log,
        }
    }

    /// Kills it and returns its whole log.
    pub async fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(5), self.lines.recv()).await
        {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        self.log
    }
}
