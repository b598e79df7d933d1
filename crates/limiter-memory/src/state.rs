//! The limiter's state behind its mutex: slot counts, one FIFO queue per priority, counters,
//! and the decision of who gets a freed slot.

use std::collections::VecDeque;
use std::time::Duration;

use domain::Priority;
use ports::{BackendStats, LimiterCounters, LimiterStats, QueuedByPriority};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// One queued `acquire`.
#[derive(Debug)]
struct Waiter {
    id: u64,
    enqueued: Instant,
    grant: oneshot::Sender<()>,
}

#[derive(Debug)]
pub(crate) struct State {
    limit: u32,
    active: u32,
    /// Indexed by `Priority::index()`; each queue is in arrival order.
    queues: [VecDeque<Waiter>; 4],
    next_id: u64,
    ageing: Option<Duration>,
    pub(crate) counters: LimiterCounters,
    max_wait: Duration,
}

impl State {
    pub(crate) fn new(limit: u32, ageing: Option<Duration>) -> Self {
        State {
            limit,
            active: 0,
            queues: Default::default(),
            next_id: 0,
            ageing,
            counters: LimiterCounters::default(),
            max_wait: Duration::ZERO,
        }
    }

    fn nobody_waiting(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Takes a slot if one is free and nobody is queued (queued waiters go first).
    pub(crate) fn try_acquire_now(&mut self) -> bool {
        if self.active < self.limit && self.nobody_waiting() {
            self.active += 1;
            self.counters.acquired_immediately += 1;
            true
        } else {
            false
        }
    }

    /// Queues a waiter; the receiver resolves when it is granted a slot.
    pub(crate) fn enqueue(
        &mut self,
        priority: Priority,
        now: Instant,
    ) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        self.queues[priority.index()].push_back(Waiter {
            id,
            enqueued: now,
            grant: tx,
        });
        (id, rx)
    }

    /// Removes a queued waiter; false if it is not queued (it was granted).
    pub(crate) fn remove_waiter(&mut self, priority: Priority, id: u64) -> bool {
        let queue = &mut self.queues[priority.index()];
        match queue.iter().position(|w| w.id == id) {
            Some(pos) => {
                queue.remove(pos);
                true
            }
            None => false,
        }
    }

    /// Records the wait of an acquire that was granted after queueing.
    pub(crate) fn record_wait(&mut self, waited: Duration) {
        self.counters.acquired_after_wait += 1;
        self.max_wait = self.max_wait.max(waited);
    }

    /// Frees one slot and hands free slots to waiters.
    pub(crate) fn release_one(&mut self) {
        // `Permit` releases exactly once, so `active` is positive here; saturate anyway so
        // that no sequence of calls can ever create capacity.
        // This runs inside `Drop`, possibly while unwinding, so it reports instead of panicking.
        if self.active == 0 {
            tracing::error!("limiter release without a held slot; ignored");
            return;
        }
        self.active -= 1;
        self.counters.released += 1;
        self.grant_waiters();
    }

    pub(crate) fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
        self.grant_waiters();
    }

    /// While a slot is free, gives it to the best waiter. The slot is counted as taken
    /// before the waiter runs: that is what makes the hand-off immune to barging.
    fn grant_waiters(&mut self) {
        // The clock is only read when someone waits and ageing needs it.
        let mut now = None;
        while self.active < self.limit && !self.nobody_waiting() {
            let now = *now.get_or_insert_with(Instant::now);
            let Some(class) = self.next_class(now) else {
                return;
            };
            let Some(waiter) = self.queues[class].pop_front() else {
                return;
            };
            self.active += 1;
            if waiter.grant.send(()).is_err() {
                // Unreachable while a waiter's receiver outlives its queue entry; if it ever
                // happens, the slot is simply not taken.
                self.active -= 1;
            }
        }
    }

    /// The queue whose head is served next: highest effective class, then earliest arrival.
    /// Only heads compete, because within a queue arrival order is also ageing order.
    fn next_class(&self, now: Instant) -> Option<usize> {
        let mut best: Option<(Priority, Instant, usize)> = None;
        for (class, queue) in self.queues.iter().enumerate().rev() {
            let Some(head) = queue.front() else { continue };
            let base = Priority::from_index(class).unwrap_or_default();
            let effective = match self.ageing {
                Some(bound) if now.duration_since(head.enqueued) >= bound => base.raised(),
                _ => base,
            };
            let better = match best {
                None => true,
                Some((p, t, _)) => effective > p || (effective == p && head.enqueued < t),
            };
            if better {
                best = Some((effective, head.enqueued, class));
            }
        }
        best.map(|(_, _, class)| class)
    }

    pub(crate) fn stats(&self, now: Instant) -> LimiterStats {
        let mut queued = QueuedByPriority::default();
        let mut oldest = Duration::ZERO;
        for priority in Priority::ALL {
            let queue = &self.queues[priority.index()];
            *queued.get_mut(priority) = u32::try_from(queue.len()).unwrap_or(u32::MAX);
            if let Some(head) = queue.front() {
                oldest = oldest.max(now.duration_since(head.enqueued));
            }
        }
        LimiterStats {
            max_concurrent: self.limit,
            active: self.active,
            available: self.limit.saturating_sub(self.active),
            queued,
            counters: self.counters,
            max_wait_ms: u64::try_from(self.max_wait.as_millis()).unwrap_or(u64::MAX),
            oldest_queued_ms: u64::try_from(oldest.as_millis()).unwrap_or(u64::MAX),
            degraded: false,
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
