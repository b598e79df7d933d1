//! [`RedisLimiterConfig`]: everything a [`RedisLimiter`](crate::RedisLimiter) needs to know,
//! as one plain struct with documented defaults, and its validation. How it reaches Redis is
//! its [`connection`](RedisLimiterConfig::connection), a [`RedisConnectionConfig`] of the
//! `redis-connect` crate (re-exported here with its TLS options and URL redaction, for the
//! callers that name them through this crate).

use std::time::Duration;

use redis_connect::RECONNECT_JITTER;
pub use redis_connect::{
    RECONNECT_MAX, RedisConnectionConfig, RedisTlsConfig, address_of, redact_url, uses_tls,
};

use crate::error::RedisLimiterError;

/// How a [`RedisLimiter`](crate::RedisLimiter) connects and how long its leases live.
///
/// Build it with [`RedisLimiterConfig::new`] and change fields as needed; every field has a
/// default suited to a D-ID gateway (slots held for seconds to minutes). `Debug` hides the
/// password in the connection's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLimiterConfig {
    /// How to reach Redis: the URL (`redis://`, `rediss://` over TLS, `redis-cluster://`,
    /// `redis-sentinel://`), its TLS options, and the timeouts: `op_timeout` bounds every
    /// call (one that takes longer switches the limiter to its in-memory fallback; default
    /// 500 ms), `connect_timeout` a new connection (default 1 s).
    pub connection: RedisConnectionConfig,
    /// The limiter's name. Every process that uses the same name on the same Redis shares one
    /// limit and one queue. All keys live under the hash tag `{talkgate:<name>}`.
    pub name: String,
    /// The global limit used when Redis holds none yet (the first process to run a script
    /// stores it; [`set_limit`](ports::ConcurrencyLimiter::set_limit) changes it for all).
    /// Default 10.
    pub max_concurrent: u32,
    /// How long a holder's lease lives without renewal. Permits renew it every
    /// `lease_ttl / 3`, so a holder whose process died frees its slot within
    /// `lease_ttl + lease_ttl / 3`. Default 15 s.
    pub lease_ttl: Duration,
    /// How long a queued ticket lives without refresh. Waiters refresh theirs at least every
    /// `waiter_ttl / 3`, so a dead process's waiter blocks the queue head for at most this
    /// long. Default 6 s.
    pub waiter_ttl: Duration,
    /// How long a grant lives until its owner confirms it. Redis grants a slot to the queue
    /// head the moment one frees; the waiting process is woken at once and confirms it with
    /// one round trip (which turns it into a full lease). A grant nobody confirms (the
    /// waiter's process died, or the ticket was re-created by a stale command after its
    /// owner gave up) frees the slot after this long. Waiters re-check at least every
    /// `grant_ttl / 2`, so a lost wake-up message never costs a live waiter its grant.
    /// Default 1 s.
    pub grant_ttl: Duration,
    /// What this process does while Redis is unreachable: grant a share of the limit
    /// ([`FailoverPolicy::Share`], the default), refuse ([`FailoverPolicy::Closed`]) or grant
    /// the whole limit ([`FailoverPolicy::Full`], for a single instance).
    pub failover_policy: FailoverPolicy,
    /// Under [`FailoverPolicy::Share`], the share this process may grant on its own while
    /// Redis is unreachable. `None` (the default) derives it from the live instances last
    /// seen in Redis: `max(1, floor(limit / instances))`, so N degraded instances together
    /// grant at most `max(limit, N)`; an instance that never reached Redis assumes the
    /// smallest share, 1. Ignored by the other policies.
    pub local_share: Option<u32>,
    /// How long this instance's record in Redis lives without a heartbeat (sent every
    /// `instance_ttl / 4`). An instance whose record expired is dead: its holders are
    /// reclaimed at once and its waiters are never granted a slot. Also the share's peer
    /// count comes from these records. Default 2 s.
    pub instance_ttl: Duration,
    /// The longest a waiter sleeps between two checks when no wake-up message arrives (a
    /// lost pub/sub message costs at most this, jittered to 50–100 %). It is also capped at
    /// `waiter_ttl / 3`. Default 1 s.
    pub safety_poll: Duration,
    /// How often a degraded limiter probes Redis to switch back (jittered). Default 500 ms.
    pub probe_interval: Duration,
}

/// What the limiter grants while Redis is unreachable (the port's [`FailoverPolicy`],
/// re-exported here where its users have always found it).
pub use ports::FailoverPolicy;

impl RedisLimiterConfig {
    /// A config for `url` and `name` with every other field at its default.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        RedisLimiterConfig {
            connection: RedisConnectionConfig::new(url),
            name: name.into(),
            max_concurrent: 10,
            lease_ttl: Duration::from_secs(15),
            waiter_ttl: Duration::from_secs(6),
            grant_ttl: Duration::from_secs(1),
            failover_policy: FailoverPolicy::Share,
            local_share: None,
            instance_ttl: Duration::from_secs(2),
            safety_poll: Duration::from_secs(1),
            probe_interval: Duration::from_millis(500),
        }
    }

    /// How often a permit renews its lease.
    pub fn renew_period(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// How long Redis remembers a cancelled or released token, refusing stale acquires for
    /// it: `max(lease_ttl, waiter_ttl)`.
    pub fn tombstone_ttl(&self) -> Duration {
        self.lease_ttl.max(self.waiter_ttl)
    }

    /// The limit the in-memory fallback enforces for a global limit `global`, with `peers`
    /// live instances last seen in Redis (this one included; `None` if never seen), under
    /// the configured policy. `Closed` grants nothing, so its fallback limit is moot (1).
    pub fn fallback_limit(&self, global: u32, peers: Option<u32>) -> u32 {
        let global = global.max(1);
        match self.failover_policy {
            FailoverPolicy::Full => global,
            FailoverPolicy::Closed => 1,
            FailoverPolicy::Share => match (self.local_share, peers) {
                (Some(share), _) => share.clamp(1, global),
                (None, Some(n)) => (global / n.max(1)).max(1),
                (None, None) => 1,
            },
        }
    }

    /// How often this instance renews its record in Redis: `instance_ttl / 4`.
    pub fn heartbeat_period(&self) -> Duration {
        self.instance_ttl / 4
    }

    /// How long Redis grants nothing new after it lost its data or was unreachable for
    /// everyone (a restart, a stall): long enough for every live instance to reconnect and
    /// register the permits it still holds (its heartbeat, or the probe of a degraded
    /// instance) before new ones are granted, so the switch back never admits more than the
    /// limit. `max(probe_interval, heartbeat) + reconnect pause + op_timeout`: 1.6 s by
    /// default. Instances sharing a limiter should share these timings (the instance that
    /// runs the first script after the outage sets the warm-up).
    pub fn warmup(&self) -> Duration {
        self.probe_interval.max(self.heartbeat_period())
            + RECONNECT_MAX
            + RECONNECT_JITTER
            + self.connection.op_timeout
    }

    /// Checks every field (the connection's first) and reports all problems at once.
    pub(crate) fn validate(&self) -> Result<(), RedisLimiterError> {
        let mut problems = self.connection.problems();
        if self.name.is_empty() || self.name.contains(['{', '}']) {
            problems.push(format!(
                "name {:?} must be non-empty and contain no braces",
                self.name
            ));
        }
        if self.max_concurrent == 0 {
            problems.push("max_concurrent must be at least 1".to_owned());
        }
        for (field, value, min) in [
            ("lease_ttl", self.lease_ttl, Duration::from_millis(30)),
            ("waiter_ttl", self.waiter_ttl, Duration::from_millis(30)),
            ("grant_ttl", self.grant_ttl, Duration::from_millis(30)),
            ("safety_poll", self.safety_poll, Duration::from_millis(1)),
            (
                "instance_ttl",
                self.instance_ttl,
                Duration::from_millis(100),
            ),
            (
                "probe_interval",
                self.probe_interval,
                Duration::from_millis(1),
            ),
        ] {
            if value < min {
                problems.push(format!("{field} must be at least {min:?}, got {value:?}"));
            }
        }
        if self.local_share == Some(0) {
            problems.push("local_share must be at least 1 when set".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RedisLimiterError::InvalidConfig {
                problems: problems.join("; "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_never_shows_a_password() {
        let config = RedisLimiterConfig::new("redis://u:hunter2@h:1", "n");
        assert!(!format!("{config:?}").contains("hunter2"));
        let config = RedisLimiterConfig::new(
            "redis-sentinel://s1?sentinelServiceName=m&sentinelPassword=hunter2",
            "n",
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!address_of(&config.connection.url).contains("hunter2"));
    }

    #[test]
    fn defaults_are_valid_and_bad_fields_are_all_reported() {
        assert!(
            RedisLimiterConfig::new("redis://h", "d-id")
                .validate()
                .is_ok()
        );
        let mut config = RedisLimiterConfig::new("", "{x}");
        config.max_concurrent = 0;
        config.lease_ttl = Duration::ZERO;
        let err = config.validate().unwrap_err().to_string();
        for needle in ["url", "name", "max_concurrent", "lease_ttl"] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    #[test]
    fn the_fallback_share_follows_the_policy_and_the_live_instances() {
        let mut config = RedisLimiterConfig::new("redis://h", "n");
        // Share, derived: floor(C / N), at least 1; never seen Redis: 1.
        assert_eq!(config.fallback_limit(6, Some(4)), 1);
        assert_eq!(config.fallback_limit(6, Some(2)), 3);
        assert_eq!(config.fallback_limit(6, Some(1)), 6);
        assert_eq!(config.fallback_limit(6, Some(9)), 1);
        assert_eq!(config.fallback_limit(6, None), 1);
        config.local_share = Some(3);
        assert_eq!(config.fallback_limit(8, Some(4)), 3);
        assert_eq!(config.fallback_limit(2, None), 2);
        config.failover_policy = FailoverPolicy::Full;
        assert_eq!(config.fallback_limit(8, Some(4)), 8);
        for (name, policy) in [
            ("share", FailoverPolicy::Share),
            ("CLOSED", FailoverPolicy::Closed),
            (" full", FailoverPolicy::Full),
        ] {
            assert_eq!(name.parse::<FailoverPolicy>(), Ok(policy));
        }
        assert!(
            "open"
                .parse::<FailoverPolicy>()
                .unwrap_err()
                .contains("share, closed or full")
        );
    }
}
