//! Config → fred clients: the one place that turns a [`RedisConnectionConfig`] into fred's
//! `Config`, `ConnectionConfig` and reconnect policy (URL forms, TLS, timeouts, command
//! attempts), so a new way to connect (TLS, Cluster, Sentinel) changes this file and the
//! config, not the stores.

use fred::clients::{Client, SubscriberClient};
use fred::prelude::{Builder, Config, ReconnectPolicy, ServerConfig, TcpConfig};
use fred::types::config::TlsConfig;

use crate::config::{RECONNECT_MAX, RedisConnectionConfig, redact_url};
use crate::error::ConfigError;
use crate::tls;

/// The two connections of one store on Redis, with the same settings. Neither is connected
/// yet: the caller subscribes to their event streams first, then calls `connect()`.
pub struct Clients {
    /// Runs the scripts.
    pub client: Client,
    /// Listens on the wake-up channel (a subscribed RESP2 connection can run no other
    /// command, so it is a connection of its own).
    pub subscriber: SubscriberClient,
}

/// Builds the fred clients for `config` (after checking it, see
/// [`RedisConnectionConfig::validate`]); the TLS files are read here.
pub fn clients(config: &RedisConnectionConfig) -> Result<Clients, ConfigError> {
    config.validate()?;
    let invalid_url = |source| ConfigError::InvalidUrl {
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
    // Keep retrying the first connection too, so a store built during an outage recovers
    // by itself.
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
            // harmless to the limiter because every script of it is idempotent per token (a
            // second acquire of a held token confirms it, release and cancel tombstone it,
            // renew extends it); the job store says what a replay of each of its scripts
            // does. fred's default of three would only add more late copies of a command:
            // the call is bounded by `op_timeout` anyway, and a copy that runs after its
            // caller gave up is exactly the stale command the limiter's tombstones and probe
            // must clean up after.
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
            u32::try_from(RECONNECT_MAX.as_millis()).unwrap_or(u32::MAX),
            2,
        ));
    Ok(Clients {
        client: builder.build().map_err(invalid_url)?,
        subscriber: builder.build_subscriber_client().map_err(invalid_url)?,
    })
}

/// A fred client (not connected yet) with exactly the connection settings of [`clients`]:
/// URL forms (Cluster, Sentinel), TLS, timeouts, reconnect policy. For a store that connects
/// its subscriber later (the Redis job store).
pub fn client(config: &RedisConnectionConfig) -> Result<Client, ConfigError> {
    Ok(clients(config)?.client)
}

/// A fred subscriber client (not connected yet) with the same settings as [`client`] (the
/// Redis job store's wake-ups).
pub fn subscriber_client(config: &RedisConnectionConfig) -> Result<SubscriberClient, ConfigError> {
    Ok(clients(config)?.subscriber)
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

#[cfg(test)]
mod tests {
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
}
