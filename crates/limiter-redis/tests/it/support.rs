//! Test support: a real `redis-server` on a free loopback port, killed on drop, and helpers
//! to build limiters against it.
//!
//! The server runs with `--save "" --appendonly no`, so a restart starts empty, exactly like
//! a Redis that lost its data. A missing binary fails the test with the install command.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::{ConcurrencyLimiter, LimiterStats};

const MISSING: &str = "redis-server not found: install it with `apt-get install -y redis-server`";

/// A `redis-server` child process on `127.0.0.1:<port>`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::try_start_on(port) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts a server on `port` (which must be free), or panics.
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|| panic!("redis-server did not start on {port}"))
    }

    fn try_start_on(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{MISSING}"),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        let mut server = RedisServer {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if server.pings() {
                return Some(server);
            }
            if let Some(child) = server.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    // Lost the port race; the caller tries another one.
                    server.child = None;
                    return None;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server answers `PING` now.
    pub fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// Makes the server require `password` (`CONFIG SET requirepass`); `pings` fails from
    /// now on, as it sends no password.
    pub fn require_password(&self, password: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis connects");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let command = format!(
            "*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nrequirepass\r\n${}\r\n{password}\r\n",
            password.len()
        );
        stream
            .write_all(command.as_bytes())
            .expect("CONFIG SET sent");
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).expect("CONFIG SET answered");
        assert_eq!(&reply, b"+OK\r\n", "CONFIG SET requirepass refused");
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILLs the server (connections are refused from now on).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts an empty server on the same port again.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(server) = Self::try_start_on(self.port) {
                *self = server;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Sends a signal (`STOP`, `CONT`) to the server with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A stopped server would ignore nothing, but be sure it is not left stopped.
            let _ = Command::new("kill")
                .args(["-CONT".to_owned(), child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A loopback port nothing listens on (at the moment of the call).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A unique limiter name, so tests sharing a server never share a limiter.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A config for `server` with a unique name, `limit`, and the default timings.
pub fn config(server: &RedisServer, limit: u32) -> RedisLimiterConfig {
    let mut config = RedisLimiterConfig::new(server.url(), unique_name("t"));
    config.max_concurrent = limit;
    config
}

/// Short leases and tickets, for crash and fault tests.
pub fn short_ttls(mut config: RedisLimiterConfig) -> RedisLimiterConfig {
    config.lease_ttl = Duration::from_secs(1);
    config.waiter_ttl = Duration::from_secs(1);
    config.connect_timeout = Duration::from_millis(300);
    config.probe_interval = Duration::from_millis(100);
    config.safety_poll = Duration::from_millis(200);
    config
}

/// [`short_ttls`] plus a 200 ms op timeout, for the failover tests that measure it.
pub fn fast_failover(config: RedisLimiterConfig) -> RedisLimiterConfig {
    let mut config = short_ttls(config);
    config.op_timeout = Duration::from_millis(200);
    config
}

/// A limiter that owns its server, so the server lives exactly as long as the limiter.
pub struct OwnedServerLimiter {
    limiter: RedisLimiter,
    _server: RedisServer,
}

#[async_trait::async_trait]
impl ConcurrencyLimiter for OwnedServerLimiter {
    async fn acquire(
        &self,
        priority: domain::Priority,
        wait_timeout: Duration,
    ) -> Result<ports::Permit, ports::LimiterError> {
        self.limiter.acquire(priority, wait_timeout).await
    }

    async fn stats(&self) -> LimiterStats {
        self.limiter.stats().await
    }

    async fn set_limit(&self, max_concurrent: u32) -> Result<(), ports::LimiterError> {
        self.limiter.set_limit(max_concurrent).await
    }
}

/// The contract suite's factory: a fresh server and a fresh limiter with default timings.
pub async fn contract_limiter(limit: u32) -> Arc<dyn ConcurrencyLimiter> {
    let server = RedisServer::start();
    let mut config = config(&server, limit);
    // The contract is about behaviour, not failover: on a loaded 2-core CI box a 500 ms
    // hiccup must not switch the limiter to its fallback mid-test.
    config.op_timeout = Duration::from_secs(3);
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .expect("limiter builds");
    assert!(
        !limiter.is_degraded(),
        "redis is up, the limiter must use it"
    );
    Arc::new(OwnedServerLimiter {
        limiter,
        _server: server,
    })
}

/// Polls `limiter.stats()` until `pred` holds, failing after `within`.
pub async fn wait_until(
    limiter: &dyn ConcurrencyLimiter,
    within: Duration,
    what: &str,
    pred: impl Fn(&LimiterStats) -> bool,
) -> LimiterStats {
    let start = Instant::now();
    loop {
        let stats = limiter.stats().await;
        if pred(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}; last stats: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Prints a measured figure to the test output (`--nocapture` shows it), for the benchmark
/// notes; the assertions next to each call are what the test checks.
#[allow(clippy::print_stderr)]
pub fn report(what: &str, took: Duration) {
    eprintln!("MEASURED {what}: {} ms", took.as_millis());
}

/// A plain fred client on `server`, for poking at the limiter's keys.
pub async fn raw_client(server: &RedisServer) -> fred::prelude::Client {
    use fred::prelude::{Builder, ClientLike, Config};
    let client = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.expect("raw redis client connects");
    client
}
