//! How talkgate connects to Redis, in one place for every store on Redis (the limiter in
//! `limiter-redis`, the job store in `jobstore-redis`): the URL forms, TLS, Cluster and
//! Sentinel, credentials and their redaction, fred clients built with one set of settings,
//! a first connection whose failure says why, and the readers of script replies.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use redis_connect::RedisConnectionConfig;
//!
//! let mut config = RedisConnectionConfig::new("rediss://:password@redis.internal:6380");
//! config.tls.ca_file = Some("/etc/talkgate/redis-ca.pem".into());
//! let client = redis_connect::client(&config)?;
//! // Fails with the reason (`auth`, `tls`, `refused`, `timeout`, …) and the address.
//! redis_connect::connect(&client, &config).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! Listed from the bottom up: each module uses only modules listed above it.
//! - [`error`]: [`ConfigError`], a config that can never work (bad fields, URL, TLS files).
//! - `config`: [`RedisConnectionConfig`] and [`RedisTlsConfig`], their defaults and
//!   validation; [`address_of`] and [`redact_url`], what of a URL is safe to show (never a
//!   password, also not one with an unescaped `/`, `?`, `#` or `@`).
//! - `tls`: [`RedisTlsConfig`] → a rustls client config (roots, client certificate,
//!   skip-verify); reads and checks the TLS files.
//! - `diagnose`: a plaintext `PING` on a fresh socket, which tells a TLS port from a
//!   plaintext one when a connection fails without saying why (the wrong scheme).
//! - `failure`: [`BackendError`], a failed Redis call as a [`ports::DegradedReason`] and a
//!   message safe to show; [`classify`] tells the kind of a fred error.
//! - `client`: config → fred clients ([`clients`], [`client`], [`subscriber_client`]):
//!   timeouts, reconnects, command attempts, TLS. The one place that knows how we connect.
//! - `connect`: [`connect`], a first connection whose failure is a typed [`ConnectError`]
//!   (fred's last connection error, not "timed out"), and [`diagnosed`].
//! - [`reply`]: fred `Value`s of script replies read as numbers, text, arrays and tags;
//!   [`reply::UnexpectedReply`].
//!
//! # URLs and TLS
//! A URL is what fred's `Config::from_url` accepts: `redis://[user:password@]host:port[/db]`,
//! `redis-cluster://host:port?node=host2:port2`, `redis-sentinel://…?sentinelServiceName=…`,
//! `valkey://…`. A `rediss://` (or `valkeys://`, also with `-cluster` or `-sentinel`) URL
//! connects over TLS, with rustls on aws-lc-rs. By default the server's certificate is
//! verified against the system's root certificates and the URL's host name, and no client
//! certificate is sent; [`RedisTlsConfig`] names a private CA, a client certificate and key
//! for mutual TLS (Redis `tls-auth-clients yes`), another name to verify, or, for a
//! throwaway self-signed setup only, `insecure_skip_verify`. TLS options with a plain
//! `redis://` URL are a config error.
//!
//! What can be known before connecting fails the build of a client: a TLS file that cannot
//! be read or holds no PEM item, or a key that does not match its certificate, is a
//! [`ConfigError::TlsFile`] naming the setting and the file; no system root certificate and
//! no `ca_file` is a [`ConfigError::Tls`]. A handshake that fails (a certificate from another
//! CA, for another name, mutual TLS without a certificate) is a connection failure with the
//! reason `tls`.

mod client;
mod config;
mod connect;
mod diagnose;
pub mod error;
mod failure;
pub mod reply;
mod tls;

pub use client::{Clients, client, clients, subscriber_client};
pub use config::{
    RECONNECT_JITTER, RECONNECT_MAX, RedisConnectionConfig, RedisTlsConfig, address_of, redact_url,
    uses_tls,
};
pub use connect::{ConnectError, connect, diagnosed};
pub use error::ConfigError;
pub use failure::{BackendError, classify};
