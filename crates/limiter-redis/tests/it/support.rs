//! Test support: a real `redis-server` on a free loopback port, killed on drop, and helpers
//! to build limiters against it; for TLS, a server with a TLS port too and [`TestPki`], a CA
//! and certificates generated for the test.
//!
//! The server runs with `--save "" --appendonly no`, so a restart starts empty, exactly like
//! a Redis that lost its data. A missing binary fails the test with the install command.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::{ConcurrencyLimiter, LimiterStats};

const MISSING: &str = "redis-server not found: install it with `apt-get install -y redis-server`";

/// A `redis-server` child process on `127.0.0.1:<port>`, with a TLS port too when started by
/// [`RedisServer::start_tls`].
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls: Option<TlsListener>,
}

/// The TLS port of a server and the arguments that configure it (kept for a restart).
#[derive(Clone)]
struct TlsListener {
    port: u16,
    args: Vec<String>,
}

/// Whether a TLS server asks its clients for a certificate (`--tls-auth-clients`).
#[derive(Debug, Clone, Copy)]
pub enum ClientCerts {
    /// A client may present a certificate (it is verified if it does).
    Optional,
    /// A client without a certificate from the CA is refused (mutual TLS).
    Required,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::try_start_on(port, None) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts a server on `port` (which must be free), or panics.
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port, None)
            .unwrap_or_else(|| panic!("redis-server did not start on {port}"))
    }

    /// Starts a server with a TLS port (certificate and CA from `pki`) besides its plain port.
    /// The plain port is only the harness's: `PING` on it tells that the server is up (Redis
    /// opens all its listeners before it answers, and exits if one fails), and
    /// [`require_password`](Self::require_password) uses it. Limiters use
    /// [`tls_url`](Self::tls_url).
    pub fn start_tls(pki: &TestPki, clients: ClientCerts) -> Self {
        let path = |p: PathBuf| p.display().to_string();
        let auth = match clients {
            ClientCerts::Optional => "optional",
            ClientCerts::Required => "yes",
        };
        let args = vec![
            "--tls-cert-file".to_owned(),
            path(pki.server_cert()),
            "--tls-key-file".to_owned(),
            path(pki.server_key()),
            "--tls-ca-cert-file".to_owned(),
            path(pki.ca_file()),
            "--tls-auth-clients".to_owned(),
            auth.to_owned(),
        ];
        for _ in 0..5 {
            let (port, tls_port) = (free_port(), free_port());
            if port == tls_port {
                continue;
            }
            let tls = TlsListener {
                port: tls_port,
                args: args.clone(),
            };
            if let Some(server) = Self::try_start_on(port, Some(tls)) {
                return server;
            }
        }
        panic!("redis-server with TLS did not start on any of 5 pairs of free ports");
    }

    fn try_start_on(port: u16, tls: Option<TlsListener>) -> Option<Self> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(tls) = &tls {
            command
                .args(["--tls-port", &tls.port.to_string()])
                .args(&tls.args);
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{MISSING}"),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        let mut server = RedisServer {
            child: Some(child),
            port,
            tls,
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

    /// The `rediss://` URL of this server's TLS port (started by [`start_tls`](Self::start_tls)).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port())
    }

    /// The TLS port (started by [`start_tls`](Self::start_tls)).
    pub fn tls_port(&self) -> u16 {
        self.tls.as_ref().expect("a server started with TLS").port
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
            if let Some(server) = Self::try_start_on(self.port, self.tls.clone()) {
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

/// A CA and certificates made for one test with `rcgen`, as PEM files in a temporary
/// directory that is removed on drop: the CA, a server certificate for `localhost` and
/// `127.0.0.1` and a client certificate, both signed by it, and an unrelated CA with a client
/// certificate of its own (a key that belongs to another certificate).
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Generates every certificate and key (ECDSA P-256: milliseconds).
    pub fn generate() -> Self {
        use rcgen::{CertifiedIssuer, ExtendedKeyUsagePurpose, KeyPair};
        let dir = std::env::temp_dir().join(unique_name("talkgate-tls"));
        std::fs::create_dir_all(&dir).expect("temporary directory for the test certificates");
        let pki = TestPki { dir };
        let ca = |name: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |names: &[&str], usage, issuer: &CertifiedIssuer<'_, KeyPair>, file: &str| {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, file);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            pki.write(&format!("{file}.pem"), &cert.pem());
            pki.write(&format!("{file}-key.pem"), &key.serialize_pem());
        };
        let ca_cert = ca("talkgate test CA");
        pki.write("ca.pem", &ca_cert.pem());
        let other_ca = ca("an unrelated CA");
        pki.write("other-ca.pem", &other_ca.pem());
        leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca_cert,
            "server",
        );
        leaf(&[], ExtendedKeyUsagePurpose::ClientAuth, &ca_cert, "client");
        leaf(
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_ca,
            "other-client",
        );
        pki
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.dir.join(name), pem).expect("test certificate written");
    }

    /// A file in the certificates' directory (which need not exist).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA that signed the server and client certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed neither.
    pub fn other_ca_file(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The server certificate (for `localhost` and `127.0.0.1`).
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    /// The server certificate's key.
    pub fn server_key(&self) -> PathBuf {
        self.path("server-key.pem")
    }

    /// The client certificate, signed by [`ca_file`](Self::ca_file).
    pub fn client_cert(&self) -> PathBuf {
        self.path("client.pem")
    }

    /// The client certificate's key.
    pub fn client_key(&self) -> PathBuf {
        self.path("client-key.pem")
    }

    /// The key of a client certificate from the other CA: not the key of
    /// [`client_cert`](Self::client_cert).
    pub fn other_client_key(&self) -> PathBuf {
        self.path("other-client-key.pem")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A config for `server`'s TLS port that trusts the test CA, with a unique name and `limit`.
pub fn tls_config(server: &RedisServer, pki: &TestPki, limit: u32) -> RedisLimiterConfig {
    let mut config = RedisLimiterConfig::new(server.tls_url(), unique_name("tls"));
    config.max_concurrent = limit;
    config.tls.ca_file = Some(pki.ca_file());
    config
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

/// A limiter that owns its server (and the server's certificates, if any), so the server
/// lives exactly as long as the limiter.
pub struct OwnedServerLimiter {
    limiter: RedisLimiter,
    _server: RedisServer,
    _pki: Option<TestPki>,
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
        _pki: None,
    })
}

/// The contract suite's factory over TLS: a fresh TLS server, certificates and limiter.
pub async fn tls_contract_limiter(limit: u32) -> Arc<dyn ConcurrencyLimiter> {
    let pki = TestPki::generate();
    let server = RedisServer::start_tls(&pki, ClientCerts::Optional);
    let mut config = tls_config(&server, &pki, limit);
    // As in `contract_limiter`: behaviour, not failover.
    config.op_timeout = Duration::from_secs(3);
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .expect("limiter builds");
    let stats = limiter.stats().await;
    assert!(
        !stats.degraded,
        "redis is up over TLS, the limiter must use it: {stats:?}"
    );
    Arc::new(OwnedServerLimiter {
        limiter,
        _server: server,
        _pki: Some(pki),
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
