//! Counters of what the client did, and the serializable snapshot [`DidClientStats`].
//!
//! Every duration in the snapshot is whole milliseconds under a name ending in `_ms`
//! (never serde's default `{"secs", "nanos"}` for a `Duration`), so `/stats` has one unit.
//!
//! Counters are relaxed atomics: they are monotonic tallies read for dashboards, nothing is
//! decided from them. Responses per status sit behind a mutex held only to bump one entry.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};

use crate::config::{AuthScheme, DidClientConfig};
use crate::retry::RetryPolicy;

/// How the connection pool and timeouts are set up (from [`DidClientConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolStats {
    /// Idle connections kept per host.
    pub max_idle_per_host: usize,
    /// Idle connection lifetime, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Per-exchange timeout of JSON calls, in milliseconds.
    pub request_timeout_ms: u64,
    /// Per-exchange timeout of uploads, in milliseconds.
    pub upload_timeout_ms: u64,
}

/// A snapshot of a [`DidClient`](crate::DidClient)'s configuration and counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DidClientStats {
    /// Where requests go.
    pub base_url: String,
    /// Whether an API key is set (the key itself is never reported).
    pub api_key_configured: bool,
    /// How the key is sent.
    pub auth_scheme: AuthScheme,
    /// Pool and timeouts.
    pub pool: PoolStats,
    /// The retry policy.
    pub retry_policy: RetryPolicy,
    /// HTTP exchanges started (each attempt counts once).
    pub requests: u64,
    /// Attempts that were repeated after a failure.
    pub retries: u64,
    /// Exchanges that got no HTTP answer (timeout, connection refused or cut).
    pub transport_errors: u64,
    /// Answers received, per HTTP status.
    pub responses: BTreeMap<u16, u64>,
    /// Creates started.
    pub creates: u64,
    /// Talks found by their create token after an ambiguous create failure, instead of being
    /// created a second time.
    pub create_recoveries: u64,
    /// Creates sent without a token because the caller's `user_data` left no room; these
    /// are never repeated after an ambiguous failure.
    pub creates_untagged: u64,
    /// Status polls made by `wait_for_talk` and `create_talk_and_wait`.
    pub polls: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub transport_errors: AtomicU64,
    pub creates: AtomicU64,
    pub create_recoveries: AtomicU64,
    pub creates_untagged: AtomicU64,
    pub polls: AtomicU64,
    responses: Mutex<BTreeMap<u16, u64>>,
}

/// A duration as whole milliseconds (saturating at `u64::MAX`).
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serializes a `Duration` as whole milliseconds, for fields named `*_ms`.
pub(crate) fn serialize_ms<S: Serializer>(
    d: &std::time::Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(millis(*d))
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// Counts one answer with `status`.
    pub fn response(&self, status: u16) {
        // A poisoned lock only means another thread panicked mid-increment; the map is fine.
        let mut map = self
            .responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(status).or_default() += 1;
    }

    /// The snapshot.
    pub fn snapshot(&self, config: &DidClientConfig, api_key_configured: bool) -> DidClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DidClientStats {
            base_url: config.base_url.clone(),
            api_key_configured,
            auth_scheme: config.auth_scheme,
            pool: PoolStats {
                max_idle_per_host: config.pool_max_idle_per_host,
                idle_timeout_ms: millis(config.pool_idle_timeout),
                connect_timeout_ms: millis(config.connect_timeout),
                request_timeout_ms: millis(config.request_timeout),
                upload_timeout_ms: millis(config.upload_timeout),
            },
            retry_policy: config.retry,
            requests: get(&self.requests),
            retries: get(&self.retries),
            transport_errors: get(&self.transport_errors),
            responses: self
                .responses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            creates: get(&self.creates),
            create_recoveries: get(&self.create_recoveries),
            creates_untagged: get(&self.creates_untagged),
            polls: get(&self.polls),
        }
    }
}
