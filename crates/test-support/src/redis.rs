//! A real `redis-server` on a free loopback port, killed on drop, as the redis-rs test suite
//! does it: restart on the same port (empty, like a Redis that lost its data), `SIGSTOP` /
//! `SIGCONT`, a password; and a TLS variant, a server with a TLS port too and [`TestPki`], a
//! CA and certificates generated for the test with rcgen.
//!
//! The server runs with `--save "" --appendonly no`, so a restart starts empty. A missing
//! binary fails the test with the install command (it never turns a test into a no-op).
//!
//! The topologies: [`cluster::RedisCluster`], three masters (with one replica each for a
//! failover) joined by `redis-cli --cluster create`, and [`sentinel::RedisSentinel`], a
//! primary, its replica and two sentinels. They need `redis-cli` too
//! (`apt-get install -y redis-server redis-sentinel redis-tools`).

pub mod cluster;
mod procs;
pub mod sentinel;

pub use cluster::RedisCluster;
pub use sentinel::RedisSentinel;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, unique_name};

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
            if let Some(child) = server.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                // Lost the port race; the caller tries another one.
                server.child = None;
                return None;
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
        assert_eq!(
            self.command(None, &["CONFIG", "SET", "requirepass", password]),
            "+OK",
            "CONFIG SET requirepass refused"
        );
    }

    /// Runs one command on the plain port (as `password`'s default user when given) and
    /// returns the reply's first line, e.g. `+OK`; for set-up such as `ACL SETUSER`.
    pub fn command(&self, password: Option<&str>, args: &[&str]) -> String {
        let encode = |args: &[&str]| {
            let mut out = format!("*{}\r\n", args.len());
            for a in args {
                out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            out
        };
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis connects");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut request = String::new();
        if let Some(pw) = password {
            request.push_str(&encode(&["AUTH", pw]));
        }
        request.push_str(&encode(args));
        stream.write_all(request.as_bytes()).expect("command sent");
        let mut replies = Vec::new();
        let mut buf = [0u8; 512];
        let wanted = if password.is_some() { 2 } else { 1 };
        while replies.iter().filter(|&&b| b == b'\n').count() < wanted {
            let n = stream.read(&mut buf).expect("command answered");
            assert!(n > 0, "redis closed the connection");
            replies.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&replies).into_owned();
        text.lines().nth(wanted - 1).unwrap_or("").to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_answers_stops_on_sigstop_and_restarts_on_its_port() {
        let mut server = RedisServer::start();
        let port = server.port();
        assert!(server.pings());
        server.signal("STOP");
        assert!(!server.pings(), "a stopped server does not answer");
        server.signal("CONT");
        assert!(server.pings());
        server.kill();
        assert!(!server.pings(), "a killed server does not answer");
        server.restart();
        assert_eq!(server.port(), port);
        assert!(server.pings());
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    }

    #[test]
    fn a_tls_server_listens_on_a_second_port_with_the_generated_certificates() {
        let pki = TestPki::generate();
        for file in [pki.ca_file(), pki.server_cert(), pki.client_key()] {
            let pem = std::fs::read_to_string(&file).expect("certificate file written");
            assert!(pem.starts_with("-----BEGIN"), "{}", file.display());
        }
        let server = RedisServer::start_tls(&pki, ClientCerts::Optional);
        assert_ne!(server.tls_port(), server.port());
        assert!(TcpStream::connect(("127.0.0.1", server.tls_port())).is_ok());
        let dir = pki.path("");
        drop(pki);
        assert!(!dir.exists(), "the certificates are removed on drop");
    }
}
