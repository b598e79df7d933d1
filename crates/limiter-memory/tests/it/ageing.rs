//! Ageing: a waiter older than the bound competes one class higher. Runs on paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::Priority;
use limiter_memory::MemoryLimiter;
use ports::ConcurrencyLimiter;

/// Lets spawned tasks run until `n` waiters are queued.
async fn queued(limiter: &MemoryLimiter, n: usize) {
    for _ in 0..10_000 {
        if limiter.stats().await.queued.total() as usize == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{n} waiters never queued: {:?}", limiter.stats().await);
}

/// Queues `Low` first, then after `gap` a waiter of `second`, and returns the service order.
async fn first_served_against(
    limiter: MemoryLimiter,
    gap: Duration,
    second: (Priority, &'static str),
) -> Vec<&'static str> {
    let limiter = Arc::new(limiter);
    let holder = limiter
        .acquire(&Priority::Normal.into(), Duration::ZERO)
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (priority, label) in [(Priority::Low, "low"), second] {
        let l = Arc::clone(&limiter);
        let o = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let p = l
                .acquire(&priority.into(), Duration::from_secs(3600))
                .await
                .unwrap();
            o.lock().unwrap().push(label);
            drop(p);
        }));
        queued(&limiter, tasks.len()).await;
        if tasks.len() == 1 {
            tokio::time::advance(gap).await;
        }
    }
    assert_eq!(limiter.stats().await.queued.total(), 2);
    drop(holder);
    for t in tasks {
        t.await.unwrap();
    }
    order.lock().unwrap().clone()
}

/// Queues `Low` first, then after `gap` a `Normal`, and returns the service order.
async fn first_served(limiter: MemoryLimiter, gap: Duration) -> Vec<&'static str> {
    first_served_against(limiter, gap, (Priority::Normal, "normal")).await
}

#[tokio::test(start_paused = true)]
async fn without_ageing_low_waits_while_normal_is_queued() {
    let served = first_served(MemoryLimiter::new(1), Duration::from_secs(60)).await;
    assert_eq!(served, ["normal", "low"]);
}

#[tokio::test(start_paused = true)]
async fn an_aged_low_waiter_goes_before_a_younger_normal_one() {
    let limiter = MemoryLimiter::builder()
        .max_concurrent(1)
        .ageing(Duration::from_secs(30))
        .build();
    let served = first_served(limiter, Duration::from_secs(60)).await;
    assert_eq!(served, ["low", "normal"]);
}

#[tokio::test(start_paused = true)]
async fn a_low_waiter_younger_than_the_bound_is_not_raised() {
    let limiter = MemoryLimiter::builder()
        .max_concurrent(1)
        .ageing(Duration::from_secs(30))
        .build();
    let served = first_served(limiter, Duration::from_secs(5)).await;
    assert_eq!(served, ["normal", "low"]);
}

#[tokio::test(start_paused = true)]
async fn ageing_raises_by_one_class_only() {
    // An aged Low competes as Normal, so a fresh High still goes first.
    let limiter = MemoryLimiter::builder()
        .max_concurrent(1)
        .ageing(Duration::from_secs(30))
        .build();
    let served =
        first_served_against(limiter, Duration::from_secs(60), (Priority::High, "high")).await;
    assert_eq!(served, ["high", "low"]);
}
