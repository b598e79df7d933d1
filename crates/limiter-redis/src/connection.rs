//! How the limiter talks to Redis: [`RedisLimiterConfig`] → fred clients, and what a failed
//! Redis call was ([`BackendError`], classified as a [`DegradedReason`]).
//!
//! This is the one module that turns the config into fred's `Config`, `ConnectionConfig`
//! and reconnect policy, so a new way to connect (TLS, Cluster, Sentinel) changes this file
//! and the config, not the limiter.

use fred::clients::{Client, SubscriberClient};
use fred::prelude::{Builder, Config, ReconnectPolicy, TcpConfig};
use ports::DegradedReason;

use crate::config::{RedisLimiterConfig, redact_url};
use crate::error::RedisLimiterError;

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
    let mut fred_config = Config::from_url(&config.url).map_err(invalid_url)?;
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
        // Reconnect forever, 50 ms doubling to 1 s (fred adds jitter).
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2));
    Ok(Clients {
        client: builder.build().map_err(invalid_url)?,
        subscriber: builder.build_subscriber_client().map_err(invalid_url)?,
    })
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

    /// A fred error, classified.
    pub(crate) fn fred(context: &str, e: &fred::error::Error) -> Self {
        Self::new(classify(e), format!("{context}: {e}"))
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Which kind of failure a fred error is. fred reports `WRONGPASS`/`NOAUTH` as `Auth`, and a
/// socket error as `IO` with the `std::io::Error`'s debug text (`kind: ConnectionRefused`).
pub(crate) fn classify(e: &fred::error::Error) -> DegradedReason {
    use fred::error::ErrorKind;
    let details = e.details();
    let lower = details.to_ascii_lowercase();
    let kind = format!("{:?}", e.kind());
    if *e.kind() == ErrorKind::Auth
        || details.contains("WRONGPASS")
        || details.contains("NOAUTH")
        || lower.contains("invalid password")
    {
        DegradedReason::Auth
    } else if kind == "Tls" || lower.contains("tls") || lower.contains("certificate") {
        DegradedReason::Tls
    } else if *e.kind() == ErrorKind::Timeout || details.contains("TimedOut") {
        DegradedReason::Timeout
    } else if details.contains("ConnectionRefused") || lower.contains("connection refused") {
        DegradedReason::Refused
    } else {
        DegradedReason::Other
    }
}
