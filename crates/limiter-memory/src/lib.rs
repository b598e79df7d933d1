//! An in-process, strict-priority concurrency limiter: the memory adapter of
//! [`ports::ConcurrencyLimiter`].
//!
//! - **Strict priority; weighted fair share between tenants within a class.** A freed slot
//!   goes to the highest priority that has an eligible waiter; within it, to the waiter with
//!   the smallest virtual finish (each tenant's waiters in arrival order, tenants by their
//!   [`domain::Share`] weights; with one tenant, plain FIFO). A tenant holding its cap is
//!   passed over, and others are served, until it frees a slot.
//! - **Lock-free when uncontended.** A free slot with nobody queued is taken and given back
//!   with one compare-and-swap on an atomic word (slots in use, and a bit set while anyone
//!   is queued); the mutex is only taken to queue, to hand a slot to a waiter, or for a
//!   capped tenant's acquire (its count is checked against its cap there: one lookup). A
//!   capped tenant's release lowers its count, an atomic shared with its permits' handle, and
//!   gives the slot back without the lock while nobody waits.
//! - **Direct hand-off.** Releasing a permit while someone waits does not put the slot back
//!   in a pool: it is assigned to the head waiter under the same lock, so a caller that
//!   arrives later can never take it first ("barging").
//! - **Cancel-safe.** Dropping a pending [`acquire`](ports::ConcurrencyLimiter::acquire)
//!   removes its queue entry; if the grant raced with the drop, the granted slot is released
//!   again. Nothing stays behind.
//! - **Optional ageing.** With [`MemoryLimiterBuilder::ageing`], a waiter queued for longer
//!   than the bound competes one class higher, which bounds how long `Low` can starve under a
//!   steady stream of `Normal` work. Off by default.
//!
//! # Layout
//! - [`MemoryLimiter`], [`MemoryLimiterBuilder`]: the limiter.
//! - [`MemoryRecords`] (`records`): the in-process [`ports::SharedRecords`], where one
//!   instance keeps its adaptive limit and breaker.
//! - `state`: the slot word, and the queues, tenants and counters behind one mutex, and the
//!   grant decision.
//!
//! The critical sections are short and never await, so a `std::sync::Mutex` is the right lock;
//! a poisoned lock is recovered because no section leaves the state half-updated. While the
//! "queued" bit is set every acquire and release takes the lock, so a freed slot is handed to
//! the head waiter under it and no late arrival can take it first.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use domain::Priority;
//! use limiter_memory::MemoryLimiter;
//! use ports::ConcurrencyLimiter;
//!
//! let limiter = MemoryLimiter::new(2);
//! let permit = limiter.acquire(&Priority::High.into(), Duration::from_secs(1)).await.unwrap();
//! assert_eq!(limiter.stats().await.active, 1);
//! drop(permit); // frees the slot
//! assert_eq!(limiter.stats().await.active, 0);
//! # }
//! ```

mod records;
mod state;

pub use records::MemoryRecords;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use domain::{Admission, Tenant};
use ports::{Acquire, ConcurrencyLimiter, LimiterError, LimiterStats, Permit, PermitHandle};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::state::{Slots, State, TenantCount, Ticket};

/// The backend name reported in [`LimiterStats::backend`] ([`ports::BackendStats::kind`]).
pub const BACKEND: &str = "memory";

/// An in-process priority limiter. Cheap to clone; clones share the same slots.
#[derive(Clone, Debug)]
pub struct MemoryLimiter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Shared with capped tenants' permit handles, whose lock-free release needs only it.
    slots: Arc<Slots>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent before it can panic (it cannot
        // panic at all in practice), so a poisoned lock still guards valid data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives one uncapped slot back and hands free slots to waiters.
    fn release_slot(&self) {
        if self.slots.try_give_back() {
            return;
        }
        self.lock().release_one(&self.slots, None, false);
    }
}

/// The handle of a capped tenant's permits (one per tenant, kept in its entry): releasing
/// one also lowers the tenant's count. It holds the limiter weakly, since the limiter's state
/// holds it: a permit that outlives its limiter has nothing left to give back to.
struct CappedSlot {
    /// The limiter's slot word (held strongly: it holds nothing back).
    slots: Arc<Slots>,
    shared: Weak<Shared>,
    tenant: Tenant,
    /// The tenant's slots held (the same count its entry in the state has).
    count: Arc<TenantCount>,
}

impl CappedSlot {
    /// Lowers the tenant's count, then gives the slot back without the lock if nobody
    /// waits; else under the lock, which also makes the tenant's waiters eligible again.
    /// (In that order: a waiter that queues in between either saw the tenant below its cap,
    /// or made the word say so, sending this release down the locked path.)
    fn release(&self) {
        self.count.sub();
        if self.slots.try_give_back() {
            return;
        }
        // A limiter that is gone has nobody left to hand the slot to.
        if let Some(shared) = self.shared.upgrade() {
            shared
                .lock()
                .release_one(&shared.slots, Some(&self.tenant), true);
        }
    }
}

/// Builds a [`MemoryLimiter`].
#[derive(Debug, Clone)]
pub struct MemoryLimiterBuilder {
    max_concurrent: u32,
    ageing: Option<Duration>,
}

impl MemoryLimiterBuilder {
    /// The number of slots (default 10; values below 1 are raised to 1).
    pub fn max_concurrent(mut self, max_concurrent: u32) -> Self {
        self.max_concurrent = max_concurrent.max(1);
        self
    }

    /// Treat a waiter queued for longer than `bound` as one class higher (off by default).
    pub fn ageing(mut self, bound: Duration) -> Self {
        self.ageing = Some(bound);
        self
    }

    /// Builds the limiter.
    pub fn build(self) -> MemoryLimiter {
        MemoryLimiter {
            shared: Arc::new(Shared {
                slots: Arc::new(Slots::new(self.max_concurrent)),
                state: Mutex::new(State::new(self.ageing)),
            }),
        }
    }
}

impl MemoryLimiter {
    /// A limiter with `max_concurrent` slots (at least 1) and no ageing.
    pub fn new(max_concurrent: u32) -> Self {
        Self::builder().max_concurrent(max_concurrent).build()
    }

    /// A builder with the defaults (10 slots, no ageing).
    pub fn builder() -> MemoryLimiterBuilder {
        MemoryLimiterBuilder {
            max_concurrent: 10,
            ageing: None,
        }
    }

    /// The handle of `tenant`'s permits, over its count.
    fn capped_slot(&self, tenant: &Tenant, count: Arc<TenantCount>) -> Arc<dyn PermitHandle> {
        Arc::new(CappedSlot {
            slots: Arc::clone(&self.shared.slots),
            shared: Arc::downgrade(&self.shared),
            tenant: tenant.clone(),
            count,
        })
    }

    /// The permit of a slot granted to `admission` (under the lock, which `state` is).
    fn permit(&self, state: &mut State, admission: &Admission, waited: Duration) -> Permit {
        let handle: Arc<dyn PermitHandle> = if admission.share.cap().is_some() {
            state.capped_handle(&admission.tenant, |count| {
                self.capped_slot(&admission.tenant, count)
            })
        } else {
            // The shared state itself is the handle: granting an uncapped permit clones an
            // `Arc` and allocates nothing.
            Arc::clone(&self.shared) as Arc<dyn PermitHandle>
        };
        Permit::new(handle, admission.priority, waited)
    }

    /// An uncapped permit, without the lock.
    fn uncapped_permit(&self, admission: &Admission) -> Permit {
        Permit::new(
            Arc::clone(&self.shared) as Arc<dyn PermitHandle>,
            admission.priority,
            Duration::ZERO,
        )
    }
}

/// Removes a queued waiter if its `acquire` future is dropped before it resolves.
struct QueuedGuard<'a> {
    shared: &'a Shared,
    ticket: Ticket,
    capped: bool,
    rx: oneshot::Receiver<()>,
    resolved: bool,
}

impl QueuedGuard<'_> {
    /// Takes the waiter out of the queue. Returns true if it was still queued; false if it
    /// had already been granted a slot (which the caller then owns).
    fn withdraw(&mut self, state: &mut State) -> bool {
        // Not queued any more means the grant was sent (under this same lock): the slot is ours.
        state.remove_waiter(&self.shared.slots, &self.ticket)
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        let mut state = self.shared.lock();
        state.counters.cancelled += 1;
        if !self.withdraw(&mut state) {
            // Granted just before the cancellation: give the slot straight back.
            let tenant = self.capped.then_some(&self.ticket.tenant);
            state.release_one(&self.shared.slots, tenant, false);
        }
    }
}

impl MemoryLimiter {
    /// The acquire that takes the lock: an immediate grant for a capped tenant, or a wait
    /// in the queue.
    async fn acquire_locked(
        &self,
        admission: &Admission,
        wait: Duration,
    ) -> Result<Permit, LimiterError> {
        let priority = admission.priority;
        let capped = admission.share.cap().is_some();
        let (started, ticket, rx) = {
            let mut state = self.shared.lock();
            match admission.share.cap() {
                None if state.try_acquire_now(&self.shared.slots) => {
                    return Ok(self.uncapped_permit(admission));
                }
                Some(cap) => {
                    if let Some(handle) =
                        state.try_acquire_capped(&self.shared.slots, admission, cap, |count| {
                            self.capped_slot(&admission.tenant, count)
                        })
                    {
                        return Ok(Permit::new(handle, priority, Duration::ZERO));
                    }
                }
                None => {}
            }
            // Read the clock only on the slow path: it is a measurable share of a fast acquire.
            let started = Instant::now();
            if wait.is_zero() {
                state.counters.timeouts += 1;
                return Err(LimiterError::Timeout {
                    priority,
                    waited: Duration::ZERO,
                });
            }
            let (ticket, rx) = state.enqueue(&self.shared.slots, admission, started);
            (started, ticket, rx)
        };
        let mut guard = QueuedGuard {
            shared: &self.shared,
            ticket,
            capped,
            rx,
            resolved: false,
        };
        let granted = tokio::time::timeout(wait, &mut guard.rx).await;
        let mut state = self.shared.lock();
        guard.resolved = true;
        let waited = started.elapsed();
        match granted {
            Ok(Ok(())) => {}
            // The sender is only dropped after a successful send or with the waiter
            // removed by this guard, so this cannot happen; treat it as a closed limiter.
            Ok(Err(_)) => {
                return Err(LimiterError::Unavailable {
                    message: "waiter dropped without a grant".to_owned(),
                });
            }
            Err(_elapsed) => {
                if guard.withdraw(&mut state) {
                    state.counters.timeouts += 1;
                    tracing::debug!(%priority, ?waited, "limiter wait timed out");
                    return Err(LimiterError::Timeout { priority, waited });
                }
                // Granted at the deadline: keep the slot rather than waste it.
            }
        }
        state.record_wait(waited);
        let permit = self.permit(&mut state, admission, waited);
        drop(state);
        Ok(permit)
    }
}

#[async_trait]
impl ConcurrencyLimiter for MemoryLimiter {
    fn acquire<'a>(&'a self, admission: &'a Admission, wait: Duration) -> Acquire<'a> {
        // The uncontended path: one compare-and-swap, no lock, no allocation, nothing awaited.
        match admission.share.cap() {
            None => {
                if self.shared.slots.try_take() {
                    return Acquire::ready(Ok(self.uncapped_permit(admission)));
                }
            }
            Some(cap) => {
                // A capped tenant below its cap: one short locked section with one lookup, not
                // boxed, and the tenant's handle made once (its release takes no lock while
                // nobody waits).
                let handle = self.shared.lock().try_acquire_capped(
                    &self.shared.slots,
                    admission,
                    cap,
                    |count| self.capped_slot(&admission.tenant, count),
                );
                if let Some(handle) = handle {
                    return Acquire::ready(Ok(Permit::new(
                        handle,
                        admission.priority,
                        Duration::ZERO,
                    )));
                }
            }
        }
        Acquire::pending(self.acquire_locked(admission, wait))
    }

    async fn stats(&self) -> LimiterStats {
        self.shared.lock().stats(&self.shared.slots, Instant::now())
    }

    async fn set_limit(&self, max_concurrent: u32) -> Result<(), LimiterError> {
        if max_concurrent == 0 {
            return Err(LimiterError::InvalidLimit { given: 0 });
        }
        let mut state = self.shared.lock();
        state.set_limit(&self.shared.slots, max_concurrent);
        Ok(())
    }
}

/// An uncapped slot of a [`MemoryLimiter`]; releasing is synchronous and cannot fail.
/// `Permit` calls one of these exactly once per granted slot.
impl PermitHandle for Shared {
    fn release_on_drop(self: Arc<Self>) {
        self.release_slot();
    }

    fn release(
        self: Arc<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LimiterError>> + Send + 'static>> {
        self.release_slot();
        // A zero-sized future: boxing it does not allocate.
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A capped tenant's slot: releasing it also lowers the tenant's count.
impl PermitHandle for CappedSlot {
    fn release_on_drop(self: Arc<Self>) {
        CappedSlot::release(&self);
    }

    fn release(
        self: Arc<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LimiterError>> + Send + 'static>> {
        CappedSlot::release(&self);
        Box::pin(std::future::ready(Ok(())))
    }
}
