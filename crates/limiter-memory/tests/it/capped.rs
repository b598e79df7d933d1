//! A capped tenant's permits are given back without the lock while nobody waits: under
//! threads racing acquires, queueing and releases, its cap still holds, the limit holds, and
//! no waiter is left behind (every acquire is granted well within its wait).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use domain::{Admission, Priority, Share, Tenant};
use limiter_memory::MemoryLimiter;
use ports::ConcurrencyLimiter;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capped_tenant_racing_on_threads_keeps_its_cap_and_loses_no_waiter() {
    let limiter = Arc::new(MemoryLimiter::new(3));
    let held = Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
    let peak = Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
    let tasks: Vec<_> = (0..24u32)
        .map(|n| {
            let (limiter, held, peak) = (limiter.clone(), held.clone(), peak.clone());
            tokio::spawn(async move {
                // Tenants 0 and 1 capped at 2 and 1; tenant 2 uncapped.
                let who = (n % 3) as usize;
                let share = match who {
                    0 => Share::new(1, Some(2)),
                    1 => Share::new(3, Some(1)),
                    _ => Share::new(1, None),
                };
                let admission = Admission::new(
                    Tenant::parse(&format!("t{who}")).unwrap(),
                    Priority::ALL[(n % 4) as usize],
                )
                .with_share(share);
                for i in 0..300u32 {
                    let permit = limiter
                        .acquire(&admission, Duration::from_secs(20))
                        .await
                        .expect("granted well within the wait: no waiter is left behind");
                    let now = held[who].fetch_add(1, Ordering::SeqCst) + 1;
                    peak[who].fetch_max(now, Ordering::SeqCst);
                    if i % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    held[who].fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(peak[0].load(Ordering::SeqCst) <= 2, "cap 2 held");
    assert_eq!(peak[1].load(Ordering::SeqCst), 1, "cap 1 held");
    let stats = limiter.stats().await;
    assert_eq!((stats.active, stats.queued.total()), (0, 0), "{stats:?}");
    assert!(stats.tenants.values().all(|t| t.active == 0), "{stats:?}");
    assert_eq!(stats.counters.released, 24 * 300);
}
