//! [`RedisPermit`]: one granted Redis slot, its lease renewal, and its release.
//!
//! A permit starts a renewal task that extends the lease every `lease_ttl / 3` (jittered to
//! 80–100 %), so a live holder keeps its slot however long it works, and a holder whose
//! process died loses it at most `lease_ttl` after its last renewal. When a renewal finds the
//! lease gone (the process stalled longer than the lease, or Redis lost its data), the permit
//! is *lost*: it is logged, counted in `leases_lost`, and [`PermitHandle::is_lost`] says so;
//! the caller's work is then no longer protected by the limit.
//!
//! Release is explicit and idempotent: `release().await` runs the release script once per
//! handle, however many clones share it. A handle dropped without it schedules the release
//! from `Drop` (`Inner::spawn_cleanup`, retried until the lease would have expired anyway).
//! A renewal or release that cannot reach Redis switches the limiter to its fallback
//! (`Inner::fail_over`); both methods come from `failover`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use domain::Priority;
use ports::{LimiterError, Permit, PermitHandle};
use tokio::task::JoinHandle;

use crate::inner::{Cleanup, Inner, bump};
use crate::reply::{GivenBack, Renew};
use crate::util::{jittered, lock};

/// The permit for a `token` Redis granted (and this process confirmed), renewing its lease
/// from now on.
pub(crate) fn granted(
    inner: &Arc<Inner>,
    token: String,
    priority: Priority,
    waited: Duration,
) -> Permit {
    Permit::new(Arc::new(RedisPermit::start(inner, token)), priority, waited)
}

/// The Redis side of a [`ports::Permit`].
struct RedisPermit {
    inner: Arc<Inner>,
    token: String,
    lost: Arc<AtomicBool>,
    /// Set by the first release, so a handle shared by clones frees its slot once.
    released: AtomicBool,
    renewer: JoinHandle<()>,
}

impl RedisPermit {
    /// Wraps a granted `token` and starts renewing its lease.
    fn start(inner: &Arc<Inner>, token: String) -> Self {
        lock(&inner.held).insert(token.clone());
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            Arc::downgrade(inner),
            token.clone(),
            Arc::clone(&lost),
        ));
        RedisPermit {
            inner: Arc::clone(inner),
            token,
            lost,
            released: AtomicBool::new(false),
            renewer,
        }
    }
}

/// Renews the lease of `token` until the permit stops the task or the lease is lost.
async fn renew(inner: Weak<Inner>, token: String, lost: Arc<AtomicBool>) {
    loop {
        let period = match inner.upgrade() {
            Some(i) => jittered(i.config.renew_period(), 0.8),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        match inner.renew_lease(&token).await {
            Ok(Renew::Extended) => {}
            Ok(Renew::Reestablished) => {
                // Redis lost the lease (a restart, or it declared this instance dead during
                // a stall) and holds it again now; the slot may have been granted twice
                // meanwhile.
                if !lost.swap(true, Ordering::SeqCst) {
                    bump(&inner.counters.leases_lost);
                }
                tracing::warn!(
                    limiter = %inner.config.name,
                    token = %token,
                    "lease re-established: redis had lost it while it was still held"
                );
            }
            Ok(Renew::Lost) => {
                lost.store(true, Ordering::SeqCst);
                bump(&inner.counters.leases_lost);
                tracing::warn!(
                    limiter = %inner.config.name,
                    token = %token,
                    "lease lost: the slot was reclaimed while still held"
                );
                return;
            }
            // Redis is unreachable; the lease may still be valid, so keep trying.
            Err(e) => inner.fail_over(&e),
        }
    }
}

impl PermitHandle for RedisPermit {
    fn release_on_drop(self: Arc<Self>) {
        if self.released.swap(true, Ordering::SeqCst) {
            return;
        }
        self.renewer.abort();
        lock(&self.inner.held).remove(&self.token);
        bump(&self.inner.counters.released);
        self.inner
            .spawn_cleanup(Cleanup::Release, self.token.clone());
    }

    fn release(
        self: Arc<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LimiterError>> + Send + 'static>> {
        Box::pin(async move {
            if self.released.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            self.renewer.abort();
            lock(&self.inner.held).remove(&self.token);
            bump(&self.inner.counters.released);
            match self.inner.run_cleanup(Cleanup::Release, &self.token).await {
                // Nothing given back means the lease had already been reclaimed: nothing left
                // to free.
                Ok(GivenBack::Slot | GivenBack::Nothing | GivenBack::Ticket) => Ok(()),
                Err(e) => {
                    self.inner.fail_over(&e);
                    // Keep trying in the background; the lease is the last safety net.
                    self.inner
                        .spawn_cleanup(Cleanup::Release, self.token.clone());
                    Err(LimiterError::Unavailable {
                        message: e.to_string(),
                    })
                }
            }
        })
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

/// Wraps a permit the fallback granted while degraded, so that the switch back can register
/// it in Redis (see `failover`): tracked by a token of this instance until it ends.
pub(crate) fn fallback(inner: &Arc<Inner>, permit: Permit) -> Permit {
    let (priority, waited) = (permit.priority(), permit.waited());
    let token = inner.new_token();
    lock(&inner.fallback_held).insert(token.clone(), false);
    let handle = Arc::new(FallbackPermit {
        inner: Arc::clone(inner),
        token,
        memory: std::sync::Mutex::new(Some(permit)),
    });
    // Granted by the fallback just as the probe switched back: adopt it now.
    inner.adopt_stragglers();
    Permit::new(handle, priority, waited)
}

/// A fallback permit with the token Redis knows it by once adopted.
struct FallbackPermit {
    inner: Arc<Inner>,
    token: String,
    /// The fallback's own permit, taken by the first release.
    memory: std::sync::Mutex<Option<Permit>>,
}

impl FallbackPermit {
    /// Stops tracking the token; gives the Redis slot back if Redis adopted it. Returns the
    /// fallback's permit, or `None` if an earlier release took it.
    fn finish(&self) -> Option<Permit> {
        let memory = lock(&self.memory).take()?;
        // (The fallback counts the release itself.)
        let adopted = lock(&self.inner.fallback_held).remove(&self.token);
        // Adopted, or possibly being adopted right now (back on Redis): give the slot back.
        // A release of a token Redis never held only leaves its tombstone, which also stops
        // an adoption still on its way.
        if adopted == Some(true) || !self.inner.is_degraded() {
            self.inner
                .spawn_cleanup(Cleanup::Release, self.token.clone());
        }
        Some(memory)
    }
}

impl PermitHandle for FallbackPermit {
    fn release_on_drop(self: Arc<Self>) {
        drop(self.finish());
    }

    fn release(
        self: Arc<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LimiterError>> + Send + 'static>> {
        Box::pin(async move {
            match self.finish() {
                Some(memory) => memory.release().await,
                None => Ok(()),
            }
        })
    }
}
