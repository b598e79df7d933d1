//! Test support shared by talkgate's test suites and benchmarks: what used to be written once
//! per crate, now written once.
//!
//! Only ever a dev-dependency (`publish = false`), and it depends on none of talkgate's crates,
//! so every crate can use it without a dependency cycle. It is not one of the inner crates of
//! the layering check: it is test infrastructure, like `did-fake`.
//!
//! # Layout
//! - [`mod@eventually`]: [`eventually()`], the one bounded poll for state that settles
//!   asynchronously (an async condition, a deadline, a description).
//! - [`media`]: small valid media files (PNG, JPEG, WAV, MP3), generated once per process.
//! - `redis` (feature `redis`): a real `redis-server` on a free loopback port, killed on drop:
//!   restart on the same port, `SIGSTOP`/`SIGCONT`, a password, a TLS port with certificates
//!   generated for the test (`TestPki`); a 3-master Cluster (`RedisCluster`, also with a
//!   replica per master) and a primary + replica + sentinels (`RedisSentinel`), with
//!   failovers.
//! - `http` (feature `http`): a reqwest client and helpers for the JSON / bearer-token
//!   request pattern of the service tests (`post_json`, `get_json`, ...).
//! - `receiver` (feature `receiver`): an HTTP/1 server on a free loopback port that takes
//!   webhook and callback POSTs, answers a status (after a delay, with a `Location`) the
//!   test sets, and keeps every request.
//! - `otlp` (feature `otlp`): the receiver as an OTLP/HTTP traces receiver, each export
//!   decoded with the protocol's own types into spans (ids, parents, links, attributes).
//! - [`free_port`], [`unique_name`]: loopback ports and names no other test shares.
//!
//! # Features
//! - `http`: the request helpers (pulls in reqwest and serde_json).
//! - `redis`: the redis-server harness (pulls in rcgen for the TLS certificates).
//! - `receiver`: the receiver (pulls in hyper).
//! - `otlp`: the OTLP receiver (pulls in opentelemetry-proto and prost).

pub mod eventually;
#[cfg(feature = "http")]
pub mod http;
pub mod media;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "receiver")]
pub mod receiver;
#[cfg(feature = "redis")]
pub mod redis;

pub use eventually::{Outcome, eventually};

/// A loopback port nothing listens on (at the moment of the call: a caller that binds it
/// later can lose a race, and should retry with another port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A name unique in this machine's test runs (`{prefix}-{pid}-{n}`), so tests sharing a
/// server or a directory never share a key or a file.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
