//! The `ConcurrencyLimiter` contract: the behaviour every limiter adapter must show, written
//! once and run against each adapter (the same suite proves the memory and the Redis limiter).
//!
//! Use it from an adapter's integration tests with a factory that returns a fresh, independent
//! limiter of the given limit on every call:
//!
//! ```text
//! async fn new_limiter(limit: u32) -> std::sync::Arc<dyn ports::ConcurrencyLimiter> {
//!     std::sync::Arc::new(limiter_memory::MemoryLimiter::new(limit))
//! }
//! ports::limiter_contract_tests!(new_limiter);
//! ```
//!
//! The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency.
//!
//! The tests use real time with short bounds, because a distributed adapter cannot run on
//! tokio's paused clock. They never rely on a sleep being "long enough": to know that a
//! waiter is queued they poll [`ConcurrencyLimiter::stats`] until it says so, with a deadline.
//!
//! Each test names the bug of the original Python limiter it guards against, where there is one:
//! over-admission, priority ignored, over-release, a cancelled waiter blocking its queue.
//!
//! The file stays whole although it is long: it is one suite, and the macro at its end must
//! name every test defined above it, so both are kept in one place.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::{Admission, Priority, Share, Tenant};
use rand::Rng;

use crate::limiter::{ConcurrencyLimiter, LimiterError, LimiterStats, Permit};

/// How long a waiter that is expected to be served may wait: generous, since it is only hit
/// when the limiter is broken.
const SERVED: Duration = Duration::from_secs(10);
/// A wait that is expected to time out.
const SHORT: Duration = Duration::from_millis(150);
/// Upper bound for a condition polled on `stats()`.
const CONDITION_DEADLINE: Duration = Duration::from_secs(10);

/// Polls `stats()` until `pred` holds, panicking with `what` after [`CONDITION_DEADLINE`].
pub async fn wait_for_stats(
    limiter: &dyn ConcurrencyLimiter,
    what: &str,
    pred: impl Fn(&LimiterStats) -> bool,
) -> LimiterStats {
    let start = Instant::now();
    loop {
        let stats = limiter.stats().await;
        if pred(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < CONDITION_DEADLINE,
            "timed out waiting for {what}; last stats: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn acquire_now(limiter: &dyn ConcurrencyLimiter, priority: Priority) -> Permit {
    limiter
        .acquire(&priority.into(), SERVED)
        .await
        .expect("a free slot must be granted")
}

/// Spawns waiters one after another, each only once the previous one is visibly queued, so
/// their arrival order is known. Each records its label when granted, then releases.
async fn queue_in_order(
    limiter: &Arc<dyn ConcurrencyLimiter>,
    waiters: &[(Priority, &'static str)],
) -> (
    Arc<Mutex<Vec<&'static str>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (i, &(priority, label)) in waiters.iter().enumerate() {
        let l = Arc::clone(limiter);
        let o = Arc::clone(&order);
        handles.push(tokio::spawn(async move {
            let permit = l
                .acquire(&priority.into(), SERVED)
                .await
                .expect("waiter served");
            o.lock().unwrap().push(label);
            permit.release().await.expect("release");
        }));
        let queued = (i + 1) as u32;
        wait_for_stats(&**limiter, &format!("{queued} waiters queued"), |s| {
            s.queued.total() == queued
        })
        .await;
    }
    (order, handles)
}

/// The limit holds: `limit` permits are granted at once, the next one waits and times out,
/// and a freed slot can be taken again. (Original bug: over-admission.)
pub async fn capacity_is_respected(make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>) {
    let limiter = make(3).await;
    let mut permits = Vec::new();
    for _ in 0..3 {
        permits.push(acquire_now(&*limiter, Priority::Normal).await);
    }
    let stats = limiter.stats().await;
    assert_eq!(
        (stats.active, stats.available, stats.max_concurrent),
        (3, 0, 3)
    );
    let err = limiter
        .acquire(&Priority::Critical.into(), SHORT)
        .await
        .expect_err("a fourth permit must not be granted");
    assert!(matches!(err, LimiterError::Timeout { .. }), "{err:?}");
    permits.pop();
    wait_for_stats(&*limiter, "a slot freed", |s| s.active == 2).await;
    permits.push(acquire_now(&*limiter, Priority::Low).await);
    assert_eq!(limiter.stats().await.active, 3);
    drop(permits);
    wait_for_stats(&*limiter, "all slots free", |s| s.active == 0).await;
}

/// Waiters are served strictly by priority, whatever their arrival order.
/// (Original bug: priority ignored — LOW won 21 of 40 races against CRITICAL.)
pub async fn higher_priority_is_served_first(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(1).await;
    let holder = acquire_now(&*limiter, Priority::Low).await;
    let (order, handles) = queue_in_order(
        &limiter,
        &[
            (Priority::Low, "low"),
            (Priority::Normal, "normal"),
            (Priority::High, "high"),
            (Priority::Critical, "critical"),
        ],
    )
    .await;
    holder.release().await.unwrap();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        ["critical", "high", "normal", "low"]
    );
}

/// Within one priority, waiters are served in arrival order, also when other priorities
/// are interleaved.
pub async fn fifo_within_a_priority(make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>) {
    let limiter = make(1).await;
    let holder = acquire_now(&*limiter, Priority::Normal).await;
    let (order, handles) = queue_in_order(
        &limiter,
        &[
            (Priority::Normal, "n1"),
            (Priority::Low, "l1"),
            (Priority::Normal, "n2"),
            (Priority::Normal, "n3"),
            (Priority::Low, "l2"),
            (Priority::Normal, "n4"),
        ],
    )
    .await;
    holder.release().await.unwrap();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["n1", "n2", "n3", "n4", "l1", "l2"]);
}

/// A slot freed while someone waits goes to that waiter: a later caller of the same
/// priority cannot take it first, even one that does not wait at all.
pub async fn released_slot_goes_to_the_waiter_not_a_late_arrival(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(1).await;
    let holder = acquire_now(&*limiter, Priority::Normal).await;
    let l = Arc::clone(&limiter);
    let waiter = tokio::spawn(async move { l.acquire(&Priority::Normal.into(), SERVED).await });
    wait_for_stats(&*limiter, "one waiter queued", |s| s.queued.normal == 1).await;
    holder.release().await.unwrap();
    let barger = limiter
        .acquire(&Priority::Normal.into(), Duration::ZERO)
        .await;
    assert!(
        matches!(barger, Err(LimiterError::Timeout { .. })),
        "a late arrival took the slot that was freed for the waiter: {barger:?}"
    );
    let permit = waiter.await.unwrap().expect("the waiter gets the slot");
    drop(permit);
    wait_for_stats(&*limiter, "all slots free", |s| s.active == 0).await;
}

/// Dropping a queued acquire removes it: nothing stays queued, no slot is taken, and the next
/// waiter of the same priority is not blocked. (Original bug: a cancelled waiter stayed at the
/// head of its queue for ever.)
pub async fn cancelled_acquire_leaves_no_trace(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(1).await;
    let holder = acquire_now(&*limiter, Priority::Normal).await;
    let l = Arc::clone(&limiter);
    let cancelled = tokio::spawn(async move { l.acquire(&Priority::Normal.into(), SERVED).await });
    wait_for_stats(&*limiter, "one waiter queued", |s| s.queued.normal == 1).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    wait_for_stats(&*limiter, "the cancelled waiter gone", |s| {
        s.queued.total() == 0
    })
    .await;

    // The next waiter of the same priority is served as soon as the holder leaves.
    let l = Arc::clone(&limiter);
    let next = tokio::spawn(async move { l.acquire(&Priority::Normal.into(), SERVED).await });
    wait_for_stats(&*limiter, "the next waiter queued", |s| {
        s.queued.normal == 1
    })
    .await;
    holder.release().await.unwrap();
    let permit = next.await.unwrap().expect("next waiter served");
    let stats = limiter.stats().await;
    assert_eq!((stats.active, stats.queued.total()), (1, 0), "{stats:?}");
    drop(permit);
    wait_for_stats(&*limiter, "all slots free", |s| s.active == 0).await;
}

/// A waiter cancelled just as it is being granted does not leak the slot.
pub async fn cancelling_many_waiters_under_release_leaks_nothing(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(2).await;
    for round in 0..20u64 {
        let a = acquire_now(&*limiter, Priority::High).await;
        let b = acquire_now(&*limiter, Priority::High).await;
        let mut waiters = Vec::new();
        for _ in 0..4 {
            let l = Arc::clone(&limiter);
            waiters.push(tokio::spawn(async move {
                l.acquire(&Priority::Normal.into(), SERVED).await
            }));
        }
        wait_for_stats(&*limiter, "four waiters queued", |s| s.queued.normal == 4).await;
        // Release and cancel at the same moment, so cancellations race with grants.
        drop(a);
        if round % 2 == 0 {
            tokio::task::yield_now().await;
        }
        for w in &waiters {
            w.abort();
        }
        drop(b);
        for w in waiters {
            let _ = w.await;
        }
        wait_for_stats(&*limiter, "no slot leaked by a cancelled grant", |s| {
            s.active == 0 && s.queued.total() == 0
        })
        .await;
    }
}

/// A permit dropped by a panicking task frees its slot. (Original: slots leaked on crashes.)
pub async fn dropped_permit_frees_its_slot_even_on_panic(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(1).await;
    let l = Arc::clone(&limiter);
    let task = tokio::spawn(async move {
        let _permit = l.acquire(&Priority::Normal.into(), SERVED).await.unwrap();
        panic!("the holder crashes while holding its permit");
    });
    assert!(task.await.unwrap_err().is_panic());
    wait_for_stats(&*limiter, "the panicked holder's slot freed", |s| {
        s.active == 0
    })
    .await;
    let permit = limiter
        .acquire(&Priority::Normal.into(), SHORT)
        .await
        .expect("slot free again");
    drop(permit);
    wait_for_stats(&*limiter, "all slots free", |s| s.active == 0).await;
}

/// Releasing frees exactly one slot: an explicit release followed by the permit's drop does
/// not free a second one, and capacity never grows past the limit. (Original bug: release
/// of an unknown or already-released id raised capacity to 4 with a limit of 2.)
pub async fn release_is_idempotent_and_never_raises_capacity(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(2).await;
    for _ in 0..3 {
        let a = acquire_now(&*limiter, Priority::Normal).await;
        let b = acquire_now(&*limiter, Priority::Normal).await;
        a.release().await.unwrap();
        b.release().await.unwrap();
    }
    let stats = wait_for_stats(&*limiter, "all slots free", |s| s.active == 0).await;
    assert_eq!(stats.available, 2);
    let mut granted = Vec::new();
    for _ in 0..4 {
        if let Ok(p) = limiter
            .acquire(&Priority::Critical.into(), Duration::ZERO)
            .await
        {
            granted.push(p);
        }
    }
    assert_eq!(granted.len(), 2, "capacity grew past the limit");
    let stats = limiter.stats().await;
    assert_eq!((stats.active, stats.available), (2, 0));
}

/// An acquire gives up at its wait timeout with a typed error and leaves the queue.
pub async fn wait_timeout_expires_with_a_typed_error(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(1).await;
    let _holder = acquire_now(&*limiter, Priority::Normal).await;
    let started = Instant::now();
    let err = limiter
        .acquire(&Priority::High.into(), SHORT)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() >= SHORT,
        "gave up early: {:?}",
        started.elapsed()
    );
    assert_eq!(
        std::mem::discriminant(&err),
        std::mem::discriminant(&LimiterError::Timeout {
            priority: Priority::High,
            waited: SHORT
        })
    );
    if let LimiterError::Timeout { priority, .. } = err {
        assert_eq!(priority, Priority::High);
    }
    let stats = wait_for_stats(&*limiter, "the timed-out waiter gone", |s| {
        s.queued.total() == 0
    })
    .await;
    assert!(stats.counters.timeouts >= 1, "{stats:?}");
    assert_eq!(stats.active, 1);
}

/// Raising the limit admits waiters at once; lowering it lets holders finish and admits
/// nobody until `active` is below the new limit; zero is refused.
pub async fn set_limit_up_and_down(make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>) {
    let limiter = make(1).await;
    let a = acquire_now(&*limiter, Priority::Normal).await;
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let l = Arc::clone(&limiter);
        waiters.push(tokio::spawn(async move {
            l.acquire(&Priority::Normal.into(), SERVED).await
        }));
    }
    wait_for_stats(&*limiter, "two waiters queued", |s| s.queued.normal == 2).await;
    limiter.set_limit(3).await.unwrap();
    let mut held = vec![a];
    for w in waiters {
        held.push(w.await.unwrap().expect("admitted by the raised limit"));
    }
    let stats = limiter.stats().await;
    assert_eq!(
        (stats.max_concurrent, stats.active, stats.available),
        (3, 3, 0)
    );

    limiter.set_limit(1).await.unwrap();
    let stats = limiter.stats().await;
    assert_eq!(
        (stats.max_concurrent, stats.active, stats.available),
        (1, 3, 0)
    );
    held.pop().unwrap().release().await.unwrap();
    held.pop().unwrap().release().await.unwrap();
    assert!(
        limiter
            .acquire(&Priority::Critical.into(), SHORT)
            .await
            .is_err(),
        "admitted while active was at the lowered limit"
    );
    held.pop().unwrap().release().await.unwrap();
    let p = limiter
        .acquire(&Priority::Low.into(), SHORT)
        .await
        .expect("a slot under the lowered limit");
    drop(p);
    assert!(matches!(
        limiter.set_limit(0).await,
        Err(LimiterError::InvalidLimit { given: 0 })
    ));
    wait_for_stats(&*limiter, "all slots free", |s| s.active == 0).await;
}

/// `stats()` reports what is really held and queued.
pub async fn stats_match_reality(make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>) {
    let limiter = make(2).await;
    let stats = limiter.stats().await;
    assert!(!stats.backend.kind.is_empty());
    assert_eq!(
        (stats.active, stats.available, stats.queued.total()),
        (0, 2, 0)
    );
    let a = acquire_now(&*limiter, Priority::Normal).await;
    assert_eq!(limiter.stats().await.active, 1);
    let b = acquire_now(&*limiter, Priority::Normal).await;
    let mut waiters = Vec::new();
    for p in [
        Priority::Low,
        Priority::High,
        Priority::High,
        Priority::Critical,
    ] {
        let l = Arc::clone(&limiter);
        waiters.push(tokio::spawn(async move {
            l.acquire(&p.into(), SERVED).await.unwrap().release().await
        }));
    }
    let stats = wait_for_stats(&*limiter, "four waiters queued", |s| s.queued.total() == 4).await;
    assert_eq!(
        (
            stats.queued.low,
            stats.queued.normal,
            stats.queued.high,
            stats.queued.critical
        ),
        (1, 0, 2, 1)
    );
    assert_eq!((stats.active, stats.available), (2, 0));
    drop(a);
    drop(b);
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    let stats = wait_for_stats(&*limiter, "all done", |s| s.active == 0).await;
    assert_eq!(stats.queued.total(), 0);
    assert!(stats.counters.acquired_immediately >= 2, "{stats:?}");
    assert!(stats.counters.acquired_after_wait >= 4, "{stats:?}");
}

fn tenant_admission(tenant: &str, priority: Priority, share: Share) -> Admission {
    Admission::new(Tenant::parse(tenant).expect("a valid tenant"), priority).with_share(share)
}

/// Queues `waiters` (label, admission) one after another, each once visibly queued; each
/// records its label when granted and keeps its slot until `hold` has passed, then releases.
async fn queue_admissions(
    limiter: &Arc<dyn ConcurrencyLimiter>,
    waiters: Vec<(&'static str, Admission)>,
    hold: Duration,
) -> (
    Arc<Mutex<Vec<&'static str>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    let already = limiter.stats().await.queued.total();
    for (i, (label, admission)) in waiters.into_iter().enumerate() {
        let l = Arc::clone(limiter);
        let o = Arc::clone(&order);
        handles.push(tokio::spawn(async move {
            let permit = l.acquire(&admission, SERVED).await.expect("waiter served");
            o.lock().unwrap().push(label);
            tokio::time::sleep(hold).await;
            permit.release().await.expect("release");
        }));
        let queued = already + (i + 1) as u32;
        wait_for_stats(&**limiter, &format!("{queued} waiters queued"), |s| {
            s.queued.total() == queued
        })
        .await;
    }
    (order, handles)
}

/// Between tenants waiting at one priority, grants follow their weights: with 8 waiters of
/// a tenant of weight 3 and 8 of one of weight 1, queued in that order, the first 8 grants
/// are 6 and 2 (each one's virtual finish is its tenant's previous one plus 1/weight; ties
/// may go either way), and each tenant's own waiters are served in arrival order.
/// (Original gap: one busy caller starved every other caller of its priority.)
pub async fn weighted_fair_share_within_a_priority(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(1).await;
    let holder = acquire_now(&*limiter, Priority::Normal).await;
    let heavy = Share::new(3, None);
    let light = Share::new(1, None);
    const HEAVY: [&str; 8] = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"];
    const LIGHT: [&str; 8] = ["b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"];
    let mut waiters = Vec::new();
    for label in HEAVY {
        waiters.push((label, tenant_admission("heavy", Priority::Normal, heavy)));
    }
    for label in LIGHT {
        waiters.push((label, tenant_admission("light", Priority::Normal, light)));
    }
    let (order, handles) = queue_admissions(&limiter, waiters, Duration::ZERO).await;
    holder.release().await.unwrap();
    for h in handles {
        h.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let first: Vec<_> = order[..8].iter().filter(|l| l.starts_with('a')).collect();
    assert_eq!(first.len(), 6, "3:1 in the first 8 grants: {order:?}");
    let a: Vec<_> = order
        .iter()
        .copied()
        .filter(|l| l.starts_with('a'))
        .collect();
    let b: Vec<_> = order
        .iter()
        .copied()
        .filter(|l| l.starts_with('b'))
        .collect();
    assert_eq!(a, HEAVY, "FIFO within a tenant: {order:?}");
    assert_eq!(b, LIGHT, "FIFO within a tenant: {order:?}");
    assert!(
        order[..4].contains(&"b1"),
        "a tenant that arrives behind a busy one is served within its weight: {order:?}"
    );
}

/// Strict priority holds across tenants: a light tenant's `high` waiter goes before every
/// `normal` waiter of a heavy one, and weights only order waiters of one priority.
pub async fn priority_beats_weight_across_tenants(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(1).await;
    let holder = acquire_now(&*limiter, Priority::Normal).await;
    let heavy = Share::new(50, None);
    let waiters = vec![
        ("n1", tenant_admission("heavy", Priority::Normal, heavy)),
        ("n2", tenant_admission("heavy", Priority::Normal, heavy)),
        (
            "low",
            tenant_admission("light", Priority::Low, Share::default()),
        ),
        (
            "high",
            tenant_admission("light", Priority::High, Share::default()),
        ),
    ];
    let (order, handles) = queue_admissions(&limiter, waiters, Duration::ZERO).await;
    holder.release().await.unwrap();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["high", "n1", "n2", "low"]);
}

/// A tenant with a cap never holds more slots than its cap, and the limiter stays
/// work-conserving: while the capped tenant waits, another tenant takes the free slots; a
/// slot the capped tenant frees goes to its own waiter.
pub async fn a_capped_tenant_never_holds_more_than_its_cap(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    let limiter = make(4).await;
    let capped = tenant_admission("capped", Priority::High, Share::new(1, Some(2)));
    let other = tenant_admission("other", Priority::Low, Share::default());
    let first = limiter.acquire(&capped, SERVED).await.expect("1 of 2");
    let _second = limiter.acquire(&capped, SERVED).await.expect("2 of 2");
    let err = limiter
        .acquire(&capped, SHORT)
        .await
        .expect_err("a third slot for a tenant capped at 2");
    assert!(matches!(err, LimiterError::Timeout { .. }), "{err:?}");
    // A third one waits, at high priority, while a low one of another tenant is served.
    let l = Arc::clone(&limiter);
    let c = capped.clone();
    let third = tokio::spawn(async move { l.acquire(&c, SERVED).await });
    wait_for_stats(&*limiter, "the capped third queued", |s| s.queued.high == 1).await;
    let o1 = limiter
        .acquire(&other, SERVED)
        .await
        .expect("a free slot goes to another tenant while the capped one waits");
    let stats = limiter.stats().await;
    assert_eq!((stats.active, stats.queued.high), (3, 1), "{stats:?}");
    let capped_stats = stats.tenants.get("capped").copied().unwrap_or_default();
    assert_eq!(
        (capped_stats.active, capped_stats.queued),
        (2, 1),
        "{stats:?}"
    );
    drop(first);
    let third = third
        .await
        .unwrap()
        .expect("its own freed slot goes to the capped waiter");
    let stats = wait_for_stats(&*limiter, "the third holds", |s| s.queued.total() == 0).await;
    assert_eq!(
        stats.tenants.get("capped").map(|t| t.active),
        Some(2),
        "{stats:?}"
    );
    drop((third, o1));
    let stats = wait_for_stats(&*limiter, "only one capped slot left", |s| s.active == 1).await;
    assert!(
        stats
            .tenants
            .get("other")
            .is_none_or(|t| t.active == 0 && t.queued == 0),
        "a tenant with nothing held or queued is not listed as busy: {stats:?}"
    );
}

/// Many tasks with random priorities, timeouts and cancellations: the limit holds at every
/// grant, and at the end nothing is held or queued.
pub async fn randomized_stress_keeps_the_invariants(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    const LIMIT: u32 = 4;
    const TASKS: usize = 32;
    const ROUNDS: usize = 12;
    let limiter = make(LIMIT).await;
    let holders = Arc::new(AtomicU32::new(0));
    let violations = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let limiter = Arc::clone(&limiter);
        let holders = Arc::clone(&holders);
        let violations = Arc::clone(&violations);
        let grants = Arc::clone(&grants);
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let (priority, wait, cancel_after, hold_us, explicit) = {
                    let mut rng = rand::rng();
                    (
                        Priority::ALL[rng.random_range(0..4)],
                        Duration::from_millis(rng.random_range(0..60)),
                        rng.random_bool(0.25)
                            .then(|| Duration::from_millis(rng.random_range(0..20))),
                        rng.random_range(0..2000),
                        rng.random_bool(0.5),
                    )
                };
                let admission = priority.into();
                let acquire = limiter.acquire(&admission, wait);
                let result = match cancel_after {
                    // Dropping the pending future is the cancellation under test.
                    Some(after) => match tokio::time::timeout(after, acquire).await {
                        Ok(r) => r,
                        Err(_) => continue,
                    },
                    None => acquire.await,
                };
                let Ok(permit) = result else { continue };
                grants.fetch_add(1, Ordering::SeqCst);
                if holders.fetch_add(1, Ordering::SeqCst) + 1 > LIMIT {
                    violations.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_micros(hold_us)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                if explicit {
                    permit.release().await.unwrap();
                } else {
                    drop(permit);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "more holders than the limit"
    );
    assert!(
        grants.load(Ordering::SeqCst) > 0,
        "nothing was ever granted"
    );
    let stats = wait_for_stats(&*limiter, "nothing held or queued at the end", |s| {
        s.active == 0 && s.queued.total() == 0
    })
    .await;
    assert_eq!(stats.available, LIMIT);
}

/// Many tasks of three tenants (capped at 1, capped at 2, uncapped; weights 1, 2 and 3) with
/// random priorities, timeouts and cancellations: neither the limit nor a cap is ever
/// exceeded, every tenant is served, and at the end nothing is held or queued.
pub async fn randomized_tenants_keep_their_caps(
    make: impl AsyncFn(u32) -> Arc<dyn ConcurrencyLimiter>,
) {
    const LIMIT: u32 = 4;
    const TASKS: usize = 24;
    const ROUNDS: usize = 10;
    const CAPS: [Option<u32>; 3] = [Some(1), Some(2), None];
    let limiter = make(LIMIT).await;
    let holders = Arc::new(AtomicU32::new(0));
    let by_tenant: Arc<[AtomicU32; 3]> = Arc::new(Default::default());
    let granted: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let violations = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let limiter = Arc::clone(&limiter);
        let holders = Arc::clone(&holders);
        let by_tenant = Arc::clone(&by_tenant);
        let granted = Arc::clone(&granted);
        let violations = Arc::clone(&violations);
        tasks.push(tokio::spawn(async move {
            let t = task % 3;
            let share = Share::new(t as u32 + 1, CAPS[t]);
            for _ in 0..ROUNDS {
                let (priority, wait, cancel_after, hold_us) = {
                    let mut rng = rand::rng();
                    (
                        Priority::ALL[rng.random_range(0..4)],
                        Duration::from_millis(rng.random_range(20..200)),
                        rng.random_bool(0.2)
                            .then(|| Duration::from_millis(rng.random_range(0..20))),
                        rng.random_range(0..3000),
                    )
                };
                let admission = tenant_admission(["one", "two", "open"][t], priority, share);
                let acquire = limiter.acquire(&admission, wait);
                let result = match cancel_after {
                    Some(after) => match tokio::time::timeout(after, acquire).await {
                        Ok(r) => r,
                        Err(_) => continue,
                    },
                    None => acquire.await,
                };
                let Ok(permit) = result else { continue };
                granted[t].fetch_add(1, Ordering::SeqCst);
                let all = holders.fetch_add(1, Ordering::SeqCst) + 1;
                let mine = by_tenant[t].fetch_add(1, Ordering::SeqCst) + 1;
                if all > LIMIT || CAPS[t].is_some_and(|cap| mine > cap) {
                    violations.lock().unwrap().push((t, mine, all));
                }
                tokio::time::sleep(Duration::from_micros(hold_us)).await;
                by_tenant[t].fetch_sub(1, Ordering::SeqCst);
                holders.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        *violations.lock().unwrap(),
        [],
        "(tenant, its holders, all holders) over a cap or the limit"
    );
    for (t, n) in granted.iter().enumerate() {
        assert!(n.load(Ordering::SeqCst) > 0, "tenant {t} was never served");
    }
    let stats = wait_for_stats(&*limiter, "nothing held or queued at the end", |s| {
        s.active == 0 && s.queued.total() == 0
    })
    .await;
    assert!(
        stats
            .tenants
            .values()
            .all(|t| t.active == 0 && t.queued == 0),
        "{stats:?}"
    );
}

/// Expands to one `#[tokio::test]` per contract test, each calling `$factory(limit)` for a
/// fresh limiter. `$factory` is a path to `async fn(u32) -> Arc<dyn ConcurrencyLimiter>`.
#[macro_export]
macro_rules! limiter_contract_tests {
    ($factory:path) => {
        $crate::limiter_contract_tests!(@tests $factory;
            capacity_is_respected,
            higher_priority_is_served_first,
            fifo_within_a_priority,
            released_slot_goes_to_the_waiter_not_a_late_arrival,
            cancelled_acquire_leaves_no_trace,
            cancelling_many_waiters_under_release_leaks_nothing,
            dropped_permit_frees_its_slot_even_on_panic,
            release_is_idempotent_and_never_raises_capacity,
            wait_timeout_expires_with_a_typed_error,
            set_limit_up_and_down,
            stats_match_reality,
            randomized_stress_keeps_the_invariants,
            weighted_fair_share_within_a_priority,
            priority_beats_weight_across_tenants,
            a_capped_tenant_never_holds_more_than_its_cap,
            randomized_tenants_keep_their_caps
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::contract::$name($factory).await;
            }
        )*
    };
}
