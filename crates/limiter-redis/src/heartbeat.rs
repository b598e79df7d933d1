//! The instance heartbeat: this process's record in Redis, which tells its peers that it is
//! alive and how many instances share the limit.
//!
//! Every `instance_ttl / 4` (jittered to 80–100 %) the heartbeat script renews the record
//! and the leases of adopted fallback permits. When the record was gone (Redis lost its
//! data, or declared this instance dead during a stall) or the data's epoch changed, a
//! second beat re-establishes every permit this process holds, so Redis counts them again
//! before it grants more. A failed beat switches the limiter to its fallback like any
//! failed call; while degraded the probe (`failover`) does the registering instead. A beat
//! also reports whether Redis sees this instance's presence subscription, and takes it
//! again when it is gone.
//!
//! This module uses `inner`, `failover` (`fail_over`) and `util`.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use crate::inner::Inner;
use crate::util::jittered;

/// Beats until the limiter is dropped (the task is aborted, or `Inner` is gone).
pub(crate) async fn run(weak: Weak<Inner>) {
    loop {
        let period = match weak.upgrade() {
            Some(inner) => jittered(inner.config.heartbeat_period(), 0.8),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_degraded() {
            continue;
        }
        let known_epoch = inner.epoch.load(Ordering::Relaxed);
        let beat = match inner.beat(&inner.adopted_tokens()).await {
            Ok(beat) => beat,
            Err(e) => {
                inner.fail_over(&e);
                continue;
            }
        };
        if beat.listening == 0 && inner.listening.load(Ordering::Relaxed) {
            // The presence subscription is gone while the connection works (a Cluster
            // slot moved, or a reconnect raced): Redis skips this instance's waiters
            // until it is back.
            tracing::debug!(limiter = %inner.config.name, "presence subscription lost; taking it again");
            let _ = inner.listen().await;
        }
        let new_epoch = known_epoch != 0 && beat.epoch != known_epoch;
        if !(beat.was_unknown || new_epoch) {
            continue;
        }
        let tokens = inner.all_tokens();
        match inner.beat(&tokens).await {
            Ok(again) => tracing::warn!(
                limiter = %inner.config.name,
                address = %inner.address,
                held = tokens.len(),
                reestablished = again.reestablished,
                lost_data = new_epoch,
                "redis had no record of this instance: every permit it holds is registered again"
            ),
            Err(e) => inner.fail_over(&e),
        }
    }
}
