//! Counters of what the client did, and their snapshot, the port's [`VideoApiStats`] with
//! the [`ClientStats`] section (base URL, auth scheme, pool, retry policy) filled in here.
//!
//! Every duration in the snapshot is whole milliseconds under a name ending in `_ms`
//! (never serde's default `{"secs", "nanos"}` for a `Duration`), so `/stats` has one unit.
//!
//! Counters are relaxed atomics: they are monotonic tallies read for dashboards, nothing is
//! decided from them. Responses per status sit behind a mutex held only to bump one entry.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ports::{ClientStats, PacingStats, PoolStats, RetryStats, VideoApiStats};

use crate::config::DidClientConfig;

/// A snapshot of a [`DidClient`](crate::DidClient)'s configuration and counters: the port's
/// typed [`VideoApiStats`], which is what [`VideoApi::stats`](ports::VideoApi::stats) returns.
pub type DidClientStats = VideoApiStats;

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
    pub lookup_pages: AtomicU64,
    responses: Mutex<BTreeMap<u16, u64>>,
}

/// A duration as whole milliseconds (saturating at `u64::MAX`).
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
            lookup_pages: get(&self.lookup_pages),
            // Filled in by the client, which owns the pacer.
            pacing: PacingStats::default(),
            client: ClientStats {
                base_url: config.base_url.clone(),
                api_key_configured,
                auth_scheme: config.auth_scheme.as_str().to_owned(),
                pool: PoolStats {
                    max_idle_per_host: config.pool_max_idle_per_host,
                    idle_timeout_ms: millis(config.pool_idle_timeout),
                    connect_timeout_ms: millis(config.connect_timeout),
                    request_timeout_ms: millis(config.request_timeout),
                    upload_timeout_ms: millis(config.upload_timeout),
                },
                retry_policy: RetryStats {
                    max_attempts: config.retry.max_attempts,
                    base_delay_ms: millis(config.retry.base_delay),
                    max_delay_ms: millis(config.retry.max_delay),
                    jitter: config.retry.jitter,
                    retry_rate_limited: config.retry.retry_rate_limited,
                    max_retry_after_ms: millis(config.retry.max_retry_after),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::retry::RetryPolicy;

    #[test]
    fn serialized_waits_are_whole_milliseconds_named_ms() {
        let config = DidClientConfig {
            retry: RetryPolicy {
                base_delay: Duration::from_millis(1500),
                ..RetryPolicy::default()
            },
            ..DidClientConfig::new("http://127.0.0.1:1".to_owned(), None)
        };
        let stats = Counters::default().snapshot(&config, false);
        assert_eq!(
            serde_json::to_value(stats.client.retry_policy).unwrap(),
            serde_json::json!({
                "max_attempts": 3,
                "base_delay_ms": 1500,
                "max_delay_ms": 10_000,
                "jitter": 0.25,
                "retry_rate_limited": false,
                "max_retry_after_ms": 60_000,
            })
        );
    }
}
