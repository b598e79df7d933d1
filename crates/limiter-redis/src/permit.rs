//! [`RedisPermit`]: one granted Redis slot, its lease renewal, and its release.
//!
//! A permit registers its token in `Inner::held`; one task per limiter ([`renew_all`])
//! extends every held lease every `lease_ttl / 3` (jittered to 80–100 %) with one script
//! call, so a live holder keeps its slot however long it works, a permit costs no task of
//! its own, and renewing C permits costs one round trip, not C. When a renewal finds the
//! lease gone (the process stalled longer than the lease, or Redis lost its data), it is
//! re-established (it counts against the limit again) and the permit is *lost*: it is
//! logged, counted in `leases_lost`, and [`PermitHandle::is_lost`] says so; the caller's work
//! was not protected by the limit for a while.
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
}

impl RedisPermit {
    /// Wraps a granted `token`; from now on the limiter's renewal task renews its lease.
    fn start(inner: &Arc<Inner>, token: String) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        lock(&inner.held).insert(token.clone(), Arc::clone(&lost));
        RedisPermit {
            inner: Arc::clone(inner),
            token,
            lost,
            released: AtomicBool::new(false),
        }
    }
}

/// Most tokens renewed by one script call.
const RENEW_BATCH: usize = 500;

/// Renews every lease this process holds, every `lease_ttl / 3` (jittered to 80–100 %), one
/// script call per [`RENEW_BATCH`] tokens, until the limiter is dropped. A permit granted
/// just after a round is renewed by the next, within `lease_ttl / 3` of its grant. While
/// degraded nothing is sent: the switch back re-establishes every lease (see `failover`).
pub(crate) async fn renew_all(weak: Weak<Inner>) {
    loop {
        let period = match weak.upgrade() {
            Some(i) => jittered(i.config.renew_period(), 0.8),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_degraded() {
            continue;
        }
        let tokens: Vec<String> = lock(&inner.held).keys().cloned().collect();
        for batch in tokens.chunks(RENEW_BATCH) {
            match inner.renew_leases(batch).await {
                Ok(answers) => {
                    for (token, answer) in batch.iter().zip(answers) {
                        note_renewal(&inner, token, answer);
                    }
                }
                // Redis is unreachable; the leases may still be valid, and the switch back
                // re-establishes them.
                Err(e) => {
                    inner.fail_over(&e);
                    break;
                }
            }
        }
    }
}

/// Records what a renewal found for `token`.
fn note_renewal(inner: &Inner, token: &str, answer: Renew) {
    let lost = match answer {
        Renew::Extended => return,
        Renew::Reestablished | Renew::Lost => match lock(&inner.held).get(token) {
            Some(lost) => Arc::clone(lost),
            // Released meanwhile.
            None => return,
        },
    };
    if !lost.swap(true, Ordering::SeqCst) {
        bump(&inner.counters.leases_lost);
    }
    match answer {
        // Redis lost the lease (a restart, or it declared this instance dead during a
        // stall) and holds it again now; the slot may have been granted twice meanwhile.
        Renew::Reestablished => tracing::warn!(
            limiter = %inner.config.name,
            token = %token,
            "lease re-established: redis had lost it while it was still held"
        ),
        _ => tracing::warn!(
            limiter = %inner.config.name,
            token = %token,
            "lease lost: the slot was given back while still held"
        ),
    }
}

impl PermitHandle for RedisPermit {
    fn release_on_drop(self: Arc<Self>) {
        if self.released.swap(true, Ordering::SeqCst) {
            return;
        }
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
/// `token` must be in `fallback_held` already (the caller puts it there while it holds the
/// fallback waiters' lock, so a switch back under way sees it).
pub(crate) fn fallback(inner: &Arc<Inner>, permit: Permit, token: String) -> Permit {
    let (priority, waited) = (permit.priority(), permit.waited());
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
