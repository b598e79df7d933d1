//! The limiter's queue state behind its mutex: one FIFO queue per tenant and priority, the
//! weighted-fair order between tenants, their caps, the counters, and the decision of who
//! gets a freed slot. The slot count itself is the lock-free [`Slots`] word.
//!
//! # The fair order
//! A waiter's *finish* is `max(V, its tenant's last finish at that priority) + cost`, where
//! `cost` is [`domain::Share::cost`] (inverse to the tenant's weight) and `V` is the finish of the
//! last waiter granted at that priority (start-time fair queueing on finish tags). Within a
//! priority the eligible waiter with the smallest finish goes first, ties by arrival; within
//! a tenant that is arrival order, and with one tenant it is plain FIFO. Each priority keeps
//! a `ready` index of the head waiter of every tenant that waits there and is below its cap,
//! so a grant is a `BTreeMap` pop, whatever waits behind a capped tenant.

use std::collections::{BTreeMap, HashMap, VecDeque};

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use domain::{Admission, Priority, Tenant};
use std::sync::Arc;

use ports::{
    BackendStats, LimiterCounters, LimiterStats, PermitHandle, QueuedByPriority, TenantSlots,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Set in the [`Slots`] word while someone is queued: every acquire and release then takes
/// the mutex, so a freed slot is handed to the head waiter and never taken by a late arrival.
pub(crate) const QUEUED: u64 = 1 << 32;
/// The slot count's bits in the word.
const ACTIVE: u64 = QUEUED - 1;
/// The lowest bit of the word's grant counter (the bits above [`QUEUED`]).
const GRANT: u64 = QUEUED << 1;
/// The most grants the word counts before the lock-free path stops and a locked call moves
/// them into the state's counters.
const MAX_GRANTS: u64 = (u64::MAX >> 33) - 1;

/// The slots in use, the "someone is queued" bit, the grants made without the lock, and the
/// limit: what the uncontended path reads and changes with one compare-and-swap each way,
/// without the mutex.
#[derive(Debug)]
pub(crate) struct Slots {
    /// `grants · GRANT | QUEUED | active`.
    word: AtomicU64,
    limit: AtomicU32,
}

impl Slots {
    pub(crate) fn new(limit: u32) -> Slots {
        Slots {
            word: AtomicU64::new(0),
            limit: AtomicU32::new(limit),
        }
    }

    /// Takes a slot if one is free and nobody is queued, without the lock (and counts the
    /// grant in the word).
    #[inline]
    pub(crate) fn try_take(&self) -> bool {
        let limit = u64::from(self.limit.load(Ordering::Relaxed));
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & QUEUED != 0 || word & ACTIVE >= limit || word >> 33 >= MAX_GRANTS {
                return false;
            }
            match self.word.compare_exchange_weak(
                word,
                word + GRANT + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// Gives a slot back without the lock if nobody is queued; false if someone is (the
    /// caller then releases under the lock, which hands the slot on).
    #[inline]
    pub(crate) fn try_give_back(&self) -> bool {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & QUEUED != 0 || word & ACTIVE == 0 {
                return false;
            }
            match self.word.compare_exchange_weak(
                word,
                word - 1,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// Takes the grants counted in the word out of it (under the lock).
    fn take_grants(&self) -> u64 {
        let before = self.word.fetch_and(GRANT - 1, Ordering::AcqRel);
        before >> 33
    }

    fn active(&self) -> u32 {
        u32::try_from(self.word.load(Ordering::Acquire) & ACTIVE).unwrap_or(u32::MAX)
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }
}

/// The idle tenants kept before [`State::forget_idle`] sweeps them.
const KEEP_IDLE: usize = 1024;

/// One queued `acquire`.
#[derive(Debug)]
struct Waiter {
    id: u64,
    finish: u64,
    enqueued: Instant,
    grant: oneshot::Sender<()>,
}

/// A capped tenant's slots held, shared with its permits' handle: a permit given back while
/// nobody waits lowers it without the lock (see `MemoryLimiter`'s release).
#[derive(Debug, Default)]
pub(crate) struct TenantCount(AtomicU32);

impl TenantCount {
    fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// One slot fewer. Every slot counted here is given back exactly once (`Permit`), so
    /// the count never goes below zero.
    pub(crate) fn sub(&self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a capped tenant's count went below zero");
    }
}

/// A tenant that waits, or holds slots under a cap.
#[derive(Debug, Default)]
struct TenantQueue {
    cap: Option<u32>,
    /// Slots held (counted for capped tenants only: nobody else needs the count).
    active: Arc<TenantCount>,
    /// By `Priority::index()`, in arrival order.
    queues: [VecDeque<Waiter>; 4],
    /// The finish of its last waiter queued at each priority.
    last_finish: [u64; 4],
    /// Its permits' handle, made once (a capped tenant's permit must name its tenant).
    handle: CachedHandle,
}

/// A tenant's cached permit handle (its `Debug` says only whether there is one).
#[derive(Default)]
struct CachedHandle(Option<Arc<dyn PermitHandle>>);

impl std::fmt::Debug for CachedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "cached" } else { "none" })
    }
}

impl TenantQueue {
    /// Its permits' handle, made by `make` from its count the first time.
    fn handle_or(
        &mut self,
        make: impl FnOnce(Arc<TenantCount>) -> Arc<dyn PermitHandle>,
    ) -> Arc<dyn PermitHandle> {
        let count = &self.active;
        Arc::clone(self.handle.0.get_or_insert_with(|| make(Arc::clone(count))))
    }

    fn below_cap(&self) -> bool {
        self.cap.is_none_or(|cap| self.active.get() < cap)
    }

    fn is_idle(&self) -> bool {
        self.active.get() == 0 && self.queues.iter().all(VecDeque::is_empty)
    }
}

/// One priority's fair order.
#[derive(Debug, Default)]
struct Class {
    /// The finish of the last waiter granted here.
    vtime: u64,
    /// `(finish, id)` of the head waiter of every tenant waiting here below its cap.
    ready: BTreeMap<(u64, u64), Tenant>,
    /// Waiters queued here (eligible or not).
    len: u32,
}

/// Where a queued waiter is, to take it out again.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub(crate) tenant: Tenant,
    pub(crate) priority: Priority,
    pub(crate) id: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    classes: [Class; 4],
    /// Hashed with foldhash: a tenant name is short, and SipHash's cost showed on the capped
    /// path (three lookups per acquire and release).
    tenants: HashMap<Tenant, TenantQueue, RandomState>,
    queued: u32,
    /// Some tenant may have become idle (nothing queued, no capped slot) since the last sweep.
    idle_left: bool,
    next_id: u64,
    ageing: Option<Duration>,
    pub(crate) counters: LimiterCounters,
    /// Every slot granted so far (at once or from the queue) that the word no longer counts;
    /// `released` is derived from it: each grant is released exactly once.
    granted: u64,
    max_wait: Duration,
}

impl State {
    pub(crate) fn new(ageing: Option<Duration>) -> Self {
        State {
            classes: Default::default(),
            tenants: HashMap::default(),
            queued: 0,
            idle_left: false,
            next_id: 0,
            ageing,
            counters: LimiterCounters::default(),
            granted: 0,
            max_wait: Duration::ZERO,
        }
    }

    /// Takes a slot at once for uncapped `admission` if one is free and nobody is queued
    /// (queued waiters go first). Called under the lock.
    pub(crate) fn try_acquire_now(&mut self, slots: &Slots) -> bool {
        self.take(slots)
    }

    /// Takes a slot at once for capped `admission` (cap `cap`) if one is free, nobody is
    /// queued and its tenant is below its cap; returns its permits' handle (made by `make`
    /// from the tenant's count the first time). One lookup; the entry is made only when the
    /// slot is taken. Called under the lock.
    pub(crate) fn try_acquire_capped(
        &mut self,
        slots: &Slots,
        admission: &Admission,
        cap: u32,
        make: impl FnOnce(Arc<TenantCount>) -> Arc<dyn PermitHandle>,
    ) -> Option<Arc<dyn PermitHandle>> {
        match self.tenants.get_mut(&admission.tenant) {
            Some(t) if t.active.get() >= cap => None,
            Some(t) => {
                if !Self::take_counted(slots, &mut self.counters, &mut self.granted) {
                    return None;
                }
                t.cap = Some(cap);
                t.active.add();
                Some(t.handle_or(make))
            }
            None => {
                if !self.take(slots) {
                    return None;
                }
                let mut t = TenantQueue {
                    cap: Some(cap),
                    ..TenantQueue::default()
                };
                t.active.add();
                let handle = t.handle_or(make);
                self.tenants.insert(admission.tenant.clone(), t);
                Some(handle)
            }
        }
    }

    /// The permit handle of capped `tenant`, which was just granted a slot from the queue
    /// (its entry exists), made by `make` the first time.
    pub(crate) fn capped_handle(
        &mut self,
        tenant: &Tenant,
        make: impl FnOnce(Arc<TenantCount>) -> Arc<dyn PermitHandle>,
    ) -> Arc<dyn PermitHandle> {
        let t = self.tenants.entry(tenant.clone()).or_default();
        t.handle_or(make)
    }

    /// Takes a free slot if nobody is queued (see [`Slots::try_take`]).
    fn take(&mut self, slots: &Slots) -> bool {
        Self::take_counted(slots, &mut self.counters, &mut self.granted)
    }

    fn take_counted(slots: &Slots, counters: &mut LimiterCounters, granted: &mut u64) -> bool {
        if slots.try_take() {
            return true;
        }
        // The word's grant count may be full: move it here and try again.
        let grants = slots.take_grants();
        counters.acquired_immediately += grants;
        *granted += grants;
        grants > 0 && slots.try_take()
    }

    /// Queues a waiter; the receiver resolves when it is granted a slot (possibly at once, if
    /// a slot is free for it: the caller awaits it either way).
    pub(crate) fn enqueue(
        &mut self,
        slots: &Slots,
        admission: &Admission,
        now: Instant,
    ) -> (Ticket, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        let c = admission.priority.index();
        let class = &mut self.classes[c];
        let tenant = self.tenants.entry(admission.tenant.clone()).or_default();
        tenant.cap = admission.share.cap();
        let finish = class.vtime.max(tenant.last_finish[c]) + admission.share.cost();
        tenant.last_finish[c] = finish;
        let was_empty = tenant.queues[c].is_empty();
        tenant.queues[c].push_back(Waiter {
            id,
            finish,
            enqueued: now,
            grant: tx,
        });
        if was_empty && tenant.below_cap() {
            class.ready.insert((finish, id), admission.tenant.clone());
        }
        class.len += 1;
        if self.queued == 0 {
            slots.word.fetch_or(QUEUED, Ordering::AcqRel);
        }
        self.queued += 1;
        self.forget_idle();
        // A slot freed before the bit was set, or one a capped tenant cannot take, is
        // handed out now.
        self.grant_waiters(slots);
        (
            Ticket {
                tenant: admission.tenant.clone(),
                priority: admission.priority,
                id,
            },
            rx,
        )
    }

    /// Removes a queued waiter; false if it is not queued (it was granted).
    pub(crate) fn remove_waiter(&mut self, slots: &Slots, ticket: &Ticket) -> bool {
        let c = ticket.priority.index();
        let Some(tenant) = self.tenants.get_mut(&ticket.tenant) else {
            return false;
        };
        let queue = &mut tenant.queues[c];
        let Some(pos) = queue.iter().position(|w| w.id == ticket.id) else {
            return false;
        };
        let removed = queue.remove(pos);
        let class = &mut self.classes[c];
        if pos == 0
            && let Some(w) = removed
            && class.ready.remove(&(w.finish, w.id)).is_some()
            && let Some(next) = queue.front()
        {
            class
                .ready
                .insert((next.finish, next.id), ticket.tenant.clone());
        }
        class.len -= 1;
        self.idle_left = true;
        self.queued -= 1;
        if self.queued == 0 {
            slots.word.fetch_and(!QUEUED, Ordering::AcqRel);
        }
        self.forget_idle();
        true
    }

    /// Forgets idle tenants once more than [`KEEP_IDLE`] are known: an idle tenant's entry
    /// is kept until then, so a capped tenant that takes and frees slots in turn does not
    /// make and drop its entry every time; the map stays bounded.
    fn forget_idle(&mut self) {
        if self.idle_left && self.tenants.len() > KEEP_IDLE {
            self.tenants.retain(|_, t| !t.is_idle());
            self.idle_left = false;
        }
    }

    /// Records the wait of an acquire that was granted after queueing.
    pub(crate) fn record_wait(&mut self, waited: Duration) {
        self.counters.acquired_after_wait += 1;
        self.max_wait = self.max_wait.max(waited);
    }

    /// Gives back one slot of `tenant` (capped tenants count their slots) under the lock,
    /// and hands free slots to waiters. `counted_down`: the tenant's count was lowered
    /// already (by the lock-free part of a release).
    pub(crate) fn release_one(
        &mut self,
        slots: &Slots,
        tenant: Option<&Tenant>,
        counted_down: bool,
    ) {
        if let Some(name) = tenant
            && let Some(t) = self.tenants.get_mut(name)
        {
            if !counted_down {
                t.active.sub();
            }
            // Below its cap again (the count may have dropped outside the lock, so whether it
            // was full is not known here): its heads are eligible; inserting a head that is
            // there already changes nothing.
            if t.below_cap() {
                for (c, queue) in t.queues.iter().enumerate() {
                    if let Some(head) = queue.front() {
                        self.classes[c]
                            .ready
                            .insert((head.finish, head.id), name.clone());
                    }
                }
            }
            self.idle_left = true;
        }
        self.forget_idle();
        // `Permit` releases exactly once, so `active` is positive here; saturate anyway so
        // that no sequence of calls can ever create capacity.
        // This runs inside `Drop`, possibly while unwinding, so it reports instead of panicking.
        let word = slots.word.load(Ordering::Acquire);
        if word & ACTIVE == 0 {
            tracing::error!("limiter release without a held slot; ignored");
            return;
        }
        slots.word.fetch_sub(1, Ordering::AcqRel);
        self.grant_waiters(slots);
    }

    pub(crate) fn set_limit(&mut self, slots: &Slots, limit: u32) {
        slots.limit.store(limit, Ordering::Relaxed);
        self.grant_waiters(slots);
    }

    /// While a slot is free, gives it to the best eligible waiter. The slot is counted as
    /// taken before the waiter runs: that is what makes the hand-off immune to barging.
    /// Under the lock with [`QUEUED`] set, nothing else changes the word.
    fn grant_waiters(&mut self, slots: &Slots) {
        // The clock is only read when someone waits and ageing needs it.
        let mut now = None;
        while self.queued > 0 && slots.active() < slots.limit() {
            let Some(c) = self.next_class(&mut now) else {
                return;
            };
            let class = &mut self.classes[c];
            let Some(((_, id), name)) = class.ready.pop_first() else {
                return;
            };
            let Some(tenant) = self.tenants.get_mut(&name) else {
                continue;
            };
            let Some(waiter) = tenant.queues[c].pop_front() else {
                continue;
            };
            debug_assert_eq!(waiter.id, id);
            // V only moves forward (as in limiter-redis): a passed-over capped waiter granted
            // late does not rewind it.
            class.vtime = class.vtime.max(waiter.finish);
            class.len -= 1;
            self.queued -= 1;
            if self.queued == 0 {
                slots.word.fetch_and(!QUEUED, Ordering::AcqRel);
            }
            slots.word.fetch_add(1, Ordering::AcqRel);
            self.granted += 1;
            if tenant.cap.is_some() {
                tenant.active.add();
            }
            if tenant.below_cap() {
                if let Some(next) = tenant.queues[c].front() {
                    class.ready.insert((next.finish, next.id), name.clone());
                }
            } else {
                // At its cap: its other heads wait out of the order until it frees a slot.
                for (other, queue) in tenant.queues.iter().enumerate() {
                    if other != c
                        && let Some(head) = queue.front()
                    {
                        self.classes[other].ready.remove(&(head.finish, head.id));
                    }
                }
            }
            if waiter.grant.send(()).is_err() {
                // Unreachable while a waiter's receiver outlives its queue entry; if it ever
                // happens, the slot is given back.
                tracing::error!("a granted waiter was gone; slot given back");
                let tenant_name = tenant.cap.is_some().then(|| name.clone());
                self.idle_left = true;
                self.release_one(slots, tenant_name.as_ref(), false);
                return;
            }
            self.idle_left = true;
        }
    }

    /// The priority whose best eligible waiter is served next: the highest effective class,
    /// then the earliest arrival. Only each class's best waiter competes; ageing compares
    /// their arrival times.
    fn next_class(&self, now: &mut Option<Instant>) -> Option<usize> {
        let mut best: Option<(Priority, Instant, usize)> = None;
        for (c, class) in self.classes.iter().enumerate().rev() {
            let Some((_, name)) = class.ready.first_key_value() else {
                continue;
            };
            let Some(head) = self.tenants.get(name).and_then(|t| t.queues[c].front()) else {
                continue;
            };
            let base = Priority::from_index(c).unwrap_or_default();
            let effective = match self.ageing {
                Some(bound)
                    if now
                        .get_or_insert_with(Instant::now)
                        .duration_since(head.enqueued)
                        >= bound =>
                {
                    base.raised()
                }
                _ => base,
            };
            let better = match best {
                None => true,
                Some((p, t, _)) => effective > p || (effective == p && head.enqueued < t),
            };
            if better {
                best = Some((effective, head.enqueued, c));
            }
        }
        best.map(|(_, _, c)| c)
    }

    pub(crate) fn stats(&self, slots: &Slots, now: Instant) -> LimiterStats {
        let mut queued = QueuedByPriority::default();
        let mut oldest = Duration::ZERO;
        let mut tenants = BTreeMap::new();
        for (name, tenant) in &self.tenants {
            let mut waiting = 0u32;
            for queue in &tenant.queues {
                waiting += u32::try_from(queue.len()).unwrap_or(u32::MAX);
                if let Some(head) = queue.front() {
                    oldest = oldest.max(now.duration_since(head.enqueued));
                }
            }
            let active = tenant.active.get();
            if waiting > 0 || active > 0 {
                tenants.insert(
                    name.as_str().to_owned(),
                    TenantSlots {
                        active,
                        queued: waiting,
                    },
                );
            }
        }
        for priority in Priority::ALL {
            *queued.get_mut(priority) = self.classes[priority.index()].len;
        }
        let limit = slots.limit();
        let word = slots.word.load(Ordering::Acquire);
        let active = u32::try_from(word & ACTIVE).unwrap_or(u32::MAX);
        let in_word = word >> 33;
        let mut counters = self.counters;
        counters.acquired_immediately += in_word;
        counters.released = (self.granted + in_word).saturating_sub(u64::from(active));
        LimiterStats {
            max_concurrent: limit,
            active,
            available: limit.saturating_sub(active),
            queued,
            counters,
            max_wait_ms: u64::try_from(self.max_wait.as_millis()).unwrap_or(u64::MAX),
            oldest_queued_ms: u64::try_from(oldest.as_millis()).unwrap_or(u64::MAX),
            degraded: false,
            tenants,
            backend: BackendStats {
                kind: crate::BACKEND.to_owned(),
                configured: crate::BACKEND.to_owned(),
                serving: crate::BACKEND.to_owned(),
                address: None,
                degraded_reason: None,
                failover: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the word's grant count is full, the lock-free path stops and a locked acquire
    /// moves the count into the state's counters: nothing is lost and the count never wraps.
    #[test]
    fn a_full_grant_count_moves_into_the_counters() {
        let slots = Slots::new(4);
        let mut state = State::new(None);
        slots.word.store(MAX_GRANTS << 33, Ordering::SeqCst);
        assert!(!slots.try_take(), "the lock-free path refuses a full count");
        let admission = Admission::from(Priority::Normal);
        let _ = &admission;
        assert!(state.try_acquire_now(&slots));
        let stats = state.stats(&slots, Instant::now());
        assert_eq!(stats.active, 1);
        assert_eq!(stats.counters.acquired_immediately, MAX_GRANTS + 1);
        assert!(slots.try_take(), "and the lock-free path works again");
        assert!(slots.try_give_back() && slots.try_give_back());
        let stats = state.stats(&slots, Instant::now());
        assert_eq!((stats.active, stats.counters.released), (0, MAX_GRANTS + 2));
    }
}
