//! How the limiter talks to Redis: [`RedisLimiterConfig`] → fred clients, and what a failed
//! Redis call was ([`BackendError`], classified as a [`DegradedReason`]).
//!
//! This is the one module that turns the config into fred's `Config`, `ConnectionConfig`
//! and reconnect policy, so a new way to connect (TLS, Cluster, Sentinel) changes this file
//! and the config, not the limiter.

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy, ServerConfig, TcpConfig};
use fred::types::config::TlsConfig;
use ports::DegradedReason;

use crate::config::{self, RedisLimiterConfig, redact_url};
use crate::diagnose;
use crate::error::RedisLimiterError;
use crate::tls;

/// The two connections of one limiter. Neither is connected yet: the caller subscribes to
/// their event streams first, then calls `connect()`.
pub(crate) struct Clients {
    /// Runs the scripts.
    pub(crate) client: Client,
    /// Listens on the wake-up channel (a subscribed RESP2 connection can run no other
    /// command, so it is a connection of its own).
    pub(crate) subscriber: SubscriberClient,
}

/// Builds the fred clients for `config` (which was validated already).
pub(crate) fn clients(config: &RedisLimiterConfig) -> Result<Clients, RedisLimiterError> {
    let invalid_url = |source| RedisLimiterError::InvalidUrl {
        url: redact_url(&config.url),
        source,
    };
    let mut fred_config = Config::from_url(&without_tls(&config.url)).map_err(invalid_url)?;
    if config.uses_tls() {
        fred_config.tls = Some(TlsConfig::from(tls::client_config(&config.tls)?));
        if let Some(name) = &config.tls.server_name {
            for server in seed_servers(&mut fred_config.server) {
                server.tls_server_name = Some(name.as_str().into());
            }
        }
    }
    // Keep retrying the first connection too, so a limiter built during an outage
    // recovers by itself.
    fred_config.fail_fast = false;
    let mut builder = Builder::from_config(fred_config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = config.connect_timeout;
            c.internal_command_timeout = config.connect_timeout;
            // fred counts every write of a command and retries the commands that were in
            // flight when a connection closed, after reconnecting. Two writes ride over one
            // dropped connection (a Redis restart, an idle connection cut by a proxy) without
            // failing the call and sending the whole process to its fallback. A replay is
            // harmless because every script is idempotent per token (a second acquire of a
            // held token confirms it, release and cancel tombstone it, renew extends it).
            // fred's default of three would only add more late copies of a command: the
            // call is bounded by `op_timeout` anyway, and a copy that runs after its caller
            // gave up is exactly the stale command the tombstones and the probe must clean
            // up after.
            c.max_command_attempts = 2;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
        })
        .with_performance_config(|p| {
            // fred applies no timeout unless told; every call is bounded by op_timeout.
            p.default_command_timeout = config.op_timeout;
        })
        // Reconnect forever, 50 ms doubling to RECONNECT_MAX (fred adds jitter).
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            50,
            u32::try_from(crate::config::RECONNECT_MAX.as_millis()).unwrap_or(u32::MAX),
            2,
        ));
    Ok(Clients {
        client: builder.build().map_err(invalid_url)?,
        subscriber: builder.build_subscriber_client().map_err(invalid_url)?,
    })
}

/// A fred client (not connected yet) with exactly the connection settings a limiter of
/// `config` uses: URL forms (Cluster, Sentinel), TLS, timeouts, reconnect policy. For other
/// stores that share the limiter's Redis (the Redis job store).
pub fn client(config: &RedisLimiterConfig) -> Result<Client, RedisLimiterError> {
    config.validate()?;
    Ok(clients(config)?.client)
}

/// A fred subscriber client (not connected yet) with the same settings as [`client`], for
/// other stores that listen on the limiter's Redis (the Redis job store's wake-ups).
pub fn subscriber_client(
    config: &RedisLimiterConfig,
) -> Result<SubscriberClient, RedisLimiterError> {
    config.validate()?;
    Ok(clients(config)?.subscriber)
}

/// Why a client could not connect: what kind of failure it was and what went wrong, with
/// the address and never the password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis at {address}: {message}")]
pub struct ConnectError {
    /// What kind of failure it was (`auth`, `tls`, `refused`, `timeout`, `cluster`, `other`).
    pub reason: DegradedReason,
    /// The server (or servers) the URL names, `host:port`.
    pub address: String,
    /// What went wrong, safe to show.
    pub message: String,
}

impl ConnectError {
    /// A failed command of a connected client, classified as the limiter classifies its
    /// own (a cluster redirection also says to use a cluster URL); for stores that check
    /// a connection with a command of their own.
    pub fn from_fred(address: &str, context: &str, e: &fred::error::Error) -> ConnectError {
        let failure = BackendError::fred(context, e);
        ConnectError {
            reason: failure.reason,
            address: address.to_owned(),
            message: failure.message,
        }
    }
}

/// Connects `client` (built by [`client`] for `config`, not connected yet) and waits until
/// it is, at most `connect_timeout`. On failure the client keeps reconnecting in the
/// background (quit it to stop), and the error says why, as precisely as can be told: fred
/// retries a refused connection, a wrong password or a failed handshake internally until
/// the timeout, so the last connection error it reported is the reason, not "timed out";
/// and a timeout or a closed connection is checked for the wrong protocol (a `rediss://` URL
/// at a plaintext port, a `redis://` URL at a TLS port, see `diagnose`).
pub async fn connect(client: &Client, config: &RedisLimiterConfig) -> Result<(), ConnectError> {
    use tokio::sync::broadcast::error::RecvError;
    let mut errors = client.error_rx();
    let _task = client.connect();
    let address = config::address_of(&config.url);
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let connected = client.wait_for_connect();
    tokio::pin!(connected);
    let mut errors_open = true;
    // The newest connection error fred reported while it retried, if any.
    let mut last: Option<BackendError> = None;
    let failure = loop {
        let next_error = async {
            if errors_open {
                errors.recv().await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            outcome = &mut connected => match outcome {
                Ok(()) => return Ok(()),
                Err(e) => break BackendError::fred("connect", &e),
            },
            error = next_error => match error {
                Ok((e, _server)) => {
                    let failure = BackendError::fred("connect", &e);
                    // Retrying cannot fix a refusal, a wrong password or a failed
                    // handshake within the timeout: say so now.
                    if matches!(
                        failure.reason,
                        DegradedReason::Auth | DegradedReason::Tls | DegradedReason::Refused
                    ) {
                        break failure;
                    }
                    last = Some(failure);
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => errors_open = false,
            },
            () = tokio::time::sleep_until(deadline) => {
                break last.take().unwrap_or_else(|| BackendError::new(
                    DegradedReason::Timeout,
                    format!("connect: no connection within {:?}", config.connect_timeout),
                ));
            }
        }
    };
    let failure = diagnosed(failure, &address, config).await;
    Err(ConnectError {
        reason: failure.reason,
        address,
        message: failure.message,
    })
}

/// `failure` named more precisely when it is a timeout or an unexplained error and the
/// server speaks the other protocol than the URL's scheme (see `diagnose`).
pub(crate) async fn diagnosed(
    failure: BackendError,
    address: &str,
    config: &RedisLimiterConfig,
) -> BackendError {
    if !matches!(
        failure.reason,
        DegradedReason::Timeout | DegradedReason::Other
    ) {
        return failure;
    }
    match diagnose::protocol_mismatch(address, config.uses_tls(), config.connect_timeout).await {
        Some(why) => BackendError::new(DegradedReason::Tls, format!("{failure}; {why}")),
        None => failure,
    }
}

/// `url` with a TLS scheme turned into its plain twin (`rediss` → `redis`, `valkeys` →
/// `valkey`, suffixes kept). fred's `from_url` would build a TLS connector of its own for a
/// TLS scheme, loading the system's roots even when a CA file is given and failing the whole
/// URL if any of them is unreadable; ours replaces it anyway ([`tls::client_config`]).
fn without_tls(url: &str) -> String {
    for (tls, plain) in [("rediss", "redis"), ("valkeys", "valkey")] {
        if let (Some(scheme), Some(rest)) = (url.get(..tls.len()), url.get(tls.len()..))
            && scheme.eq_ignore_ascii_case(tls)
        {
            return format!("{plain}{rest}");
        }
    }
    url.to_owned()
}

/// The servers named in the URL (the ones a configured TLS server name applies to).
fn seed_servers(server: &mut ServerConfig) -> Vec<&mut fred::types::config::Server> {
    match server {
        ServerConfig::Centralized { server } => vec![server],
        ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
            hosts.iter_mut().collect()
        }
    }
}

/// A Redis call that failed or timed out; the message is safe to show (no URL, no password).
#[derive(Debug, Clone)]
pub(crate) struct BackendError {
    message: String,
    /// What kind of failure it was, for stats and logs.
    pub(crate) reason: DegradedReason,
}

impl BackendError {
    /// A failure of a known kind.
    pub(crate) fn new(reason: DegradedReason, message: String) -> Self {
        BackendError { message, reason }
    }

    /// A fred error, classified; a cluster redirection also says what to do about it.
    pub(crate) fn fred(context: &str, e: &fred::error::Error) -> Self {
        let reason = classify(e);
        let hint = if reason == DegradedReason::Cluster {
            CLUSTER_HINT
        } else {
            ""
        };
        Self::new(reason, format!("{context}: {e}{hint}"))
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The `rustls::Error` variants a failed handshake shows up as. tokio-rustls hands them to
/// fred inside an `io::Error` of kind `InvalidData`, so fred reports an `IO` error whose
/// details are that error's debug text, e.g. `Custom { kind: InvalidData, error:
/// InvalidCertificate(UnknownIssuer) }` (a server certificate from another CA) or
/// `AlertReceived(CertificateRequired)` (mutual TLS without a client certificate).
const RUSTLS_ERRORS: &[&str] = &[
    "InvalidCertificate",
    "AlertReceived",
    "NoCertificatesPresented",
    "UnsupportedNameType",
    "PeerIncompatible",
    "PeerMisbehaved",
    "InappropriateMessage",
    "InappropriateHandshakeMessage",
    "InvalidMessage",
    "DecryptError",
    "EncryptError",
    "HandshakeNotComplete",
    "InconsistentKeys",
];

/// What the log line adds to a [`DegradedReason::Cluster`] failure: the fix.
const CLUSTER_HINT: &str = "; the server is a Redis Cluster node (it answered with a cluster \
    redirection or CROSSSLOT): a plain redis:// URL reaches only the node it names, so use a \
    redis-cluster:// URL (rediss-cluster:// for TLS), e.g. \
    redis-cluster://host:port?node=host2:port2";

/// The first words of the errors a Redis Cluster node answers a command with when the URL
/// treats it as a single server: `MOVED <slot> <host:port>` and `ASK <slot> <host:port>` (the
/// slot of the keys lives on another node), `CROSSSLOT Keys in request don't hash to the same
/// slot`. fred reports the first two as `ErrorKind::Cluster` and the last as `Unknown`, the
/// server's text as the details. `CLUSTERDOWN` (also `ErrorKind::Cluster`) is not one of them:
/// a cluster client sees it during a failover, and it says nothing about the URL.
const CLUSTER_ANSWERS: &[&str] = &["MOVED", "ASK", "CROSSSLOT"];

/// Which kind of failure a fred error is. fred reports `WRONGPASS`/`NOAUTH` as `Auth`, its
/// own TLS errors (a server name that is no DNS name) as `Tls`, a failed handshake as in
/// [`RUSTLS_ERRORS`], a socket error as `IO` with the `std::io::Error`'s debug text
/// (`kind: ConnectionRefused`), and a cluster node's redirection as in [`CLUSTER_ANSWERS`].
pub(crate) fn classify(e: &fred::error::Error) -> DegradedReason {
    use fred::error::ErrorKind;
    let details = e.details();
    let lower = details.to_ascii_lowercase();
    let rustls_failure = || {
        details.contains("kind: InvalidData") && RUSTLS_ERRORS.iter().any(|v| details.contains(v))
    };
    let first_word = details.split_whitespace().next().unwrap_or("");
    if CLUSTER_ANSWERS.contains(&first_word) {
        DegradedReason::Cluster
    } else if *e.kind() == ErrorKind::Auth
        || details.contains("WRONGPASS")
        || details.contains("NOAUTH")
        || lower.contains("invalid password")
    {
        DegradedReason::Auth
    } else if *e.kind() == ErrorKind::Tls || rustls_failure() {
        DegradedReason::Tls
    } else if *e.kind() == ErrorKind::Timeout || details.contains("TimedOut") {
        DegradedReason::Timeout
    } else if details.contains("ConnectionRefused") || lower.contains("connection refused") {
        DegradedReason::Refused
    } else {
        DegradedReason::Other
    }
}

#[cfg(test)]
mod tests {
    use fred::error::{Error, ErrorKind};

    use super::*;

    #[test]
    fn fred_sees_the_plain_twin_of_a_tls_url() {
        for (url, plain) in [
            ("rediss://:pw@h:6380/0", "redis://:pw@h:6380/0"),
            ("REDISS://h", "redis://h"),
            ("rediss-cluster://h:7000", "redis-cluster://h:7000"),
            ("valkeys://h", "valkey://h"),
            ("redis://h", "redis://h"),
        ] {
            assert_eq!(without_tls(url), plain, "{url}");
        }
    }

    #[test]
    fn failures_are_classified_by_what_went_wrong() {
        #[track_caller]
        fn check(kind: ErrorKind, details: &str, expected: DegradedReason) {
            assert_eq!(
                classify(&Error::new(kind, details.to_owned())),
                expected,
                "{details}"
            );
        }
        // The details as fred reports them (seen against a real redis-server).
        check(
            ErrorKind::IO,
            "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }",
            DegradedReason::Tls,
        );
        check(
            ErrorKind::IO,
            "Custom { kind: InvalidData, error: InvalidCertificate(NotValidForNameContext { \
             expected: DnsName(\"redis.example\"), presented: [] }) }",
            DegradedReason::Tls,
        );
        check(
            ErrorKind::IO,
            "Custom { kind: InvalidData, error: AlertReceived(CertificateRequired) }",
            DegradedReason::Tls,
        );
        check(ErrorKind::Tls, "InvalidDnsNameError", DegradedReason::Tls);
        check(
            ErrorKind::IO,
            "Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }",
            DegradedReason::Refused,
        );
        check(
            ErrorKind::Auth,
            "WRONGPASS invalid username-password pair",
            DegradedReason::Auth,
        );
        check(
            ErrorKind::Timeout,
            "Request timed out.",
            DegradedReason::Timeout,
        );
        check(
            ErrorKind::IO,
            "Os { code: 104, kind: ConnectionReset, message: \"Connection reset by peer\" }",
            DegradedReason::Other,
        );
        // A word in a message is not a handshake failure.
        check(
            ErrorKind::Unknown,
            "ERR certificate store full",
            DegradedReason::Other,
        );
        // A cluster node behind a plain redis:// URL (seen against a real 3-master cluster,
        // see the integration test `cluster::a_plain_url_at_a_node_without_the_slot_...`).
        check(
            ErrorKind::Cluster,
            "MOVED 9206 127.0.0.1:40221",
            DegradedReason::Cluster,
        );
        check(
            ErrorKind::Cluster,
            "ASK 9206 127.0.0.1:40221",
            DegradedReason::Cluster,
        );
        check(
            ErrorKind::Unknown,
            "CROSSSLOT Keys in request don't hash to the same slot",
            DegradedReason::Cluster,
        );
        // A cluster mid-failover is not a wrong URL.
        check(
            ErrorKind::Cluster,
            "CLUSTERDOWN The cluster is down",
            DegradedReason::Other,
        );
        check(
            ErrorKind::Unknown,
            "ERR wrong number of arguments for 'MOVED'",
            DegradedReason::Other,
        );
    }

    #[test]
    fn a_cluster_redirection_says_to_use_a_cluster_url() {
        let moved = Error::new(ErrorKind::Cluster, "MOVED 9206 127.0.0.1:40221");
        let e = BackendError::fred("redis", &moved);
        assert_eq!(e.reason, DegradedReason::Cluster);
        let message = e.to_string();
        for needle in ["MOVED 9206 127.0.0.1:40221", "use a redis-cluster:// URL"] {
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
        let refused = Error::new(ErrorKind::IO, "kind: ConnectionRefused");
        assert!(
            !BackendError::fred("redis", &refused)
                .to_string()
                .contains("cluster")
        );
    }
}
