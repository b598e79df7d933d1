//! Redis-specific behaviour beyond the shared contract: leases, lost leases, script reload,
//! a limit shared by every process, and starting without Redis.

use std::sync::Arc;
use std::time::Duration;

use domain::Priority;
use fred::prelude::{ClientLike, KeysInterface, LuaInterface, SortedSetsInterface};
use limiter_memory::MemoryLimiter;
use limiter_redis::RedisLimiter;
use ports::ConcurrencyLimiter;

use crate::support::{RedisServer, config, free_port, raw_client, short_ttls, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_keeps_its_slot_past_the_lease_by_renewing() {
    let server = RedisServer::start();
    let cfg = short_ttls(config(&server, 1));
    let other_cfg = cfg.clone();
    let limiter = RedisLimiter::connect_with_memory_fallback(cfg)
        .await
        .unwrap();
    let permit = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let other = RedisLimiter::connect_with_memory_fallback(other_cfg)
        .await
        .unwrap();
    assert!(
        other
            .acquire(&Priority::Critical.into(), Duration::from_millis(100))
            .await
            .is_err(),
        "the renewed lease must still hold the only slot"
    );
    assert!(!permit.is_lost());
    let stats = limiter.stats().await;
    assert_eq!(
        (stats.active, stats.counters.leases_reclaimed),
        (1, 0),
        "{stats:?}"
    );
    permit.release().await.unwrap();
    assert_eq!(limiter.stats().await.active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_reported_and_its_late_release_frees_nothing() {
    let server = RedisServer::start();
    let cfg = short_ttls(config(&server, 1));
    let holders_key = format!("{{talkgate:{}}}:holders", cfg.name);
    let limiter = RedisLimiter::connect_with_memory_fallback(cfg)
        .await
        .unwrap();
    let first = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();

    // Someone else reclaimed the lease (as after a stall longer than the lease).
    let raw = raw_client(&server).await;
    let _: i64 = raw.del(&holders_key).await.unwrap();
    let second = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();

    test_support::eventually(
        Duration::from_secs(3),
        "the lost lease to be noticed",
        || async { first.is_lost() },
    )
    .await;
    assert!(!second.is_lost());
    assert_eq!(limiter.stats().await.counters.leases_lost, 1);
    first.release().await.unwrap();
    assert_eq!(
        limiter.stats().await.active,
        1,
        "a stale release freed another holder's slot"
    );
    second.release().await.unwrap();
    let _ = raw.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_reloaded_after_the_script_cache_is_flushed() {
    let server = RedisServer::start();
    let limiter = RedisLimiter::connect_with_memory_fallback(config(&server, 2))
        .await
        .unwrap();
    let a = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();
    let raw = raw_client(&server).await;
    raw.script_flush(false).await.unwrap();
    let b = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!limiter.is_degraded());
    assert_eq!(limiter.stats().await.active, 2);
    a.release().await.unwrap();
    b.release().await.unwrap();
    let _ = raw.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_limit_changes_the_limit_of_every_process() {
    let server = RedisServer::start();
    let cfg = config(&server, 2);
    let a = RedisLimiter::connect_with_memory_fallback(cfg.clone())
        .await
        .unwrap();
    let mut other = cfg;
    // Another process configured with a different default still follows the stored limit.
    other.max_concurrent = 7;
    let b = RedisLimiter::connect_with_memory_fallback(other)
        .await
        .unwrap();
    assert_eq!(b.stats().await.max_concurrent, 2);
    a.set_limit(5).await.unwrap();
    assert_eq!(b.stats().await.max_concurrent, 5);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            b.acquire(&Priority::Low.into(), Duration::from_secs(1))
                .await
                .unwrap(),
        );
    }
    assert!(
        a.acquire(&Priority::Critical.into(), Duration::ZERO)
            .await
            .is_err()
    );
    drop(held);
    wait_until(&a, Duration::from_secs(5), "all released", |s| {
        s.active == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_the_longest_wait_and_the_oldest_waiter() {
    let server = RedisServer::start();
    let limiter = Arc::new(
        RedisLimiter::connect_with_memory_fallback(config(&server, 1))
            .await
            .unwrap(),
    );
    let gate = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();
    let l = Arc::clone(&limiter);
    let waiter = tokio::spawn(async move {
        l.acquire(&Priority::High.into(), Duration::from_secs(5))
            .await
    });
    wait_until(
        &*limiter,
        Duration::from_secs(5),
        "a waiter queued for 150 ms",
        |s| s.queued.high == 1 && s.oldest_queued_ms >= 150,
    )
    .await;
    gate.release().await.unwrap();
    let permit = waiter.await.unwrap().unwrap();
    assert!(permit.waited() >= Duration::from_millis(150));
    let stats = limiter.stats().await;
    assert!(stats.max_wait_ms >= 150, "{stats:?}");
    assert_eq!(stats.oldest_queued_ms, 0);
    assert_eq!(stats.backend.kind, "redis");
    permit.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_degraded_without_redis_and_switches_over_when_it_appears() {
    let port = free_port();
    let mut cfg = short_ttls(limiter_redis::RedisLimiterConfig::new(
        format!("redis://127.0.0.1:{port}"),
        crate::support::unique_name("late"),
    ));
    cfg.max_concurrent = 3;
    cfg.local_share = Some(1);
    let fallback = Arc::new(MemoryLimiter::new(3));
    let limiter = RedisLimiter::connect(cfg, fallback.clone()).await.unwrap();
    assert!(limiter.is_degraded());
    let stats = limiter.stats().await;
    assert_eq!(
        (
            stats.backend.kind.as_str(),
            stats.degraded,
            stats.max_concurrent
        ),
        ("memory", true, 1)
    );
    let local = limiter
        .acquire(&Priority::Normal.into(), Duration::from_millis(50))
        .await
        .unwrap();
    assert!(
        limiter
            .acquire(&Priority::Normal.into(), Duration::from_millis(50))
            .await
            .is_err(),
        "the local share (1) bounds the fallback"
    );

    let _server = RedisServer::start_on(port);
    let stats = wait_until(&limiter, Duration::from_secs(10), "back on redis", |s| {
        !s.degraded
    })
    .await;
    // The fallback permit still alive was adopted at the switch back: it counts against
    // the global limit until it ends.
    assert_eq!(
        (
            stats.backend.kind.as_str(),
            stats.max_concurrent,
            stats.active
        ),
        ("redis", 3, 1)
    );
    assert_eq!(stats.backend.failover.as_ref().unwrap().fallback_active, 1);
    let remote = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(limiter.stats().await.active, 2);
    // The memory permit drains into memory, and gives its adopted slot back in Redis.
    drop(local);
    assert_eq!(fallback.stats().await.active, 0);
    let stats = wait_until(
        &limiter,
        Duration::from_secs(5),
        "adopted slot freed",
        |s| s.active == 1,
    )
    .await;
    assert_eq!(stats.backend.failover.unwrap().fallback_active, 0);
    remote.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_name_is_safe_in_the_script_text_and_processes_with_other_timings_share_the_limit() {
    // The scripts carry the key names and timings in their text: a name with quotes, a Lua
    // long-string closer, a backslash and a newline must still name exactly its own keys.
    let server = RedisServer::start();
    let name = format!("we\"ird ]] \\ '\n{}", rand_suffix());
    let mut cfg = config(&server, 1);
    cfg.name = name.clone();
    let a = RedisLimiter::connect_with_memory_fallback(cfg.clone())
        .await
        .unwrap();
    let mut other = cfg;
    other.lease_ttl = Duration::from_secs(7);
    other.waiter_ttl = Duration::from_secs(4);
    let b = RedisLimiter::connect_with_memory_fallback(other)
        .await
        .unwrap();
    let held = a
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();
    let raw = raw_client(&server).await;
    let holders = format!("{{talkgate:{name}}}:holders");
    let count: i64 = raw.zcard(&holders).await.unwrap();
    assert_eq!(count, 1, "the holder is under the limiter's own key");
    // The other process (other timings, so other script text) sees the same slot taken.
    assert!(
        b.acquire(&Priority::Critical.into(), Duration::ZERO)
            .await
            .is_err()
    );
    let waiting = tokio::spawn(async move {
        b.acquire(&Priority::High.into(), Duration::from_secs(5))
            .await
            .map(|p| (p, b))
    });
    wait_until(&a, Duration::from_secs(5), "the waiter is queued", |s| {
        s.queued.total() == 1
    })
    .await;
    held.release().await.unwrap();
    let (granted, b) = waiting.await.unwrap().expect("granted after the release");
    assert!(!a.is_degraded() && !b.is_degraded());
    let tombstones: i64 = raw
        .zcard(format!("{{talkgate:{name}}}:cancelled"))
        .await
        .unwrap();
    assert_eq!(tombstones, 1, "the release tombstoned its token");
    granted.release().await.unwrap();
    let _ = raw.quit().await;
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
