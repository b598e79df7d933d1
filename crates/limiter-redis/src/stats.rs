//! The limiter's [`LimiterStats`]: read from Redis (the stats script's reply, clamped into
//! the port's types) or, while degraded, from the fallback with this process's Redis
//! counters added; either way with the [`BackendStats`] section this adapter fills in.

use std::sync::atomic::Ordering;

use ports::{BackendStats, DegradedReason, FailoverStats, LimiterStats, TenantSlots};
use redis_connect::BackendError;

use crate::config::FailoverPolicy;
use crate::inner::Inner;
use crate::reply;
use crate::util::lock;

impl Inner {
    /// The stats as Redis counts them; also remembers the limit Redis holds, as the default
    /// the next script stores should Redis lose it.
    pub(crate) async fn redis_stats(&self) -> Result<LimiterStats, BackendError> {
        let reply::Stats {
            limit,
            active,
            queued: [low, normal, high, critical],
            reclaimed,
            max_wait_ms: max_wait,
            oldest_ms: oldest,
            tenants,
            ..
        } = self.read_stats().await?;
        let u32_of = |x: i64| u32::try_from(x.max(0)).unwrap_or(u32::MAX);
        let u64_of = |x: i64| u64::try_from(x.max(0)).unwrap_or(0);
        let stored = u32_of(limit).max(1);
        let before = self.limit.swap(stored, Ordering::Relaxed);
        self.tell_limit(before, stored);
        Ok(LimiterStats {
            max_concurrent: u32_of(limit),
            active: u32_of(active),
            available: u32_of(limit - active),
            queued: ports::QueuedByPriority {
                low: u32_of(low),
                normal: u32_of(normal),
                high: u32_of(high),
                critical: u32_of(critical),
            },
            counters: self.counters.snapshot(u64_of(reclaimed)),
            max_wait_ms: u64_of(max_wait),
            oldest_queued_ms: u64_of(oldest),
            degraded: false,
            tenants: tenants
                .into_iter()
                .filter(|&(_, held, queued)| held > 0 || queued > 0)
                .map(|(name, held, queued)| {
                    let slots = TenantSlots {
                        active: u32_of(held),
                        queued: u32_of(queued),
                    };
                    (name, slots)
                })
                .collect(),
            backend: BackendStats {
                kind: "redis".to_owned(),
                configured: "redis".to_owned(),
                serving: "redis".to_owned(),
                address: Some(self.address.clone()),
                degraded_reason: None,
                failover: Some(self.failover_stats()),
            },
        })
    }

    /// The failover policy, the share the fallback grants, and the peers last seen.
    pub(crate) fn failover_stats(&self) -> FailoverStats {
        let policy = self.config.failover_policy;
        FailoverStats {
            policy: policy.as_str().to_owned(),
            share: match policy {
                FailoverPolicy::Closed => 0,
                _ => self.fallback_share(),
            },
            instances: self.known_peers(),
            fallback_active: u32::try_from(lock(&self.fallback_held).len()).unwrap_or(u32::MAX),
            instances_reclaimed: self.instances_reclaimed.load(Ordering::Relaxed),
            fleet_limit: lock(&self.pending_limit).unwrap_or(self.limit.load(Ordering::Relaxed)),
        }
    }

    /// The fallback's stats, marked degraded and with why, plus the events this process
    /// counted while it was on Redis.
    pub(crate) async fn fallback_stats(&self) -> LimiterStats {
        let mut stats = self.fallback.stats().await;
        let local = self.counters.snapshot(0);
        let c = &mut stats.counters;
        c.acquired_immediately += local.acquired_immediately;
        c.acquired_after_wait += local.acquired_after_wait;
        c.timeouts += local.timeouts;
        c.cancelled += local.cancelled;
        c.released += local.released;
        c.leases_lost += local.leases_lost;
        stats.degraded = true;
        stats.backend = BackendStats {
            kind: "memory".to_owned(),
            configured: "redis".to_owned(),
            serving: "memory".to_owned(),
            address: Some(self.address.clone()),
            degraded_reason: Some(lock(&self.degraded_reason).unwrap_or(DegradedReason::Other)),
            failover: Some(self.failover_stats()),
        };
        stats
    }
}
