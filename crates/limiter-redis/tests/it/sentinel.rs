//! The limiter behind Redis Sentinel (`test_support::redis::RedisSentinel`: a primary, its
//! replica, two sentinels with `down-after-milliseconds 1000`): through a
//! `redis-sentinel://` URL it serves from the primary, and when the primary is SIGKILLed
//! under load it follows the promoted replica (fred asks the sentinels again when it
//! reconnects), keeps the documented bound meanwhile, and leaks nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::Priority;
use fred::prelude::{Builder, ClientLike, Config, HashesInterface};
use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::ConcurrencyLimiter;
use test_support::redis::RedisSentinel;

use crate::load::{Load, stays_on_redis};
use crate::support::{fast_failover, report, unique_name, wait_until};

async fn start_sentinel() -> RedisSentinel {
    tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .expect("the sentinel setup starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_serves_from_the_primary_the_sentinels_name() {
    let setup = start_sentinel().await;
    let name = unique_name("sentinel");
    let mut config = RedisLimiterConfig::new(setup.url(), name.clone());
    config.max_concurrent = 2;
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .unwrap();
    let permit = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(5))
        .await
        .unwrap();
    let stats = limiter.stats().await;
    assert!(!stats.degraded, "{stats:?}");
    assert_eq!(stats.active, 1);
    // The address is the sentinels', both of them.
    let address = stats.backend.address.unwrap();
    assert_eq!(address.split(',').count(), 2, "{address}");
    // The keys are on the primary.
    let primary = format!("redis://127.0.0.1:{}", setup.primary());
    let client = Builder::from_config(Config::from_url(&primary).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let limit: Option<i64> = client
        .hget(format!("{{talkgate:{name}}}:meta"), "limit")
        .await
        .unwrap();
    assert_eq!(limit, Some(2));
    permit.release().await.unwrap();
}

/// The primary is SIGKILLed under load. While the sentinels fail over, the limiter serves
/// from its fallback (local share 1: at most limit + 1 held); once a sentinel names the
/// promoted replica, fred reconnects to it and the limiter is back on Redis, holds no more
/// than the limit, stays there, and leaks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_the_limit_and_the_limiter_follows_the_new_primary() {
    const LIMIT: u32 = 3;
    const SHARE: u32 = 1;
    let mut setup = start_sentinel().await;
    let old = setup.primary();
    let mut config = fast_failover(RedisLimiterConfig::new(
        setup.url(),
        unique_name("sentinel-failover"),
    ));
    config.max_concurrent = LIMIT;
    config.local_share = Some(SHARE);
    config.lease_ttl = Duration::from_secs(3);
    let limiter = Arc::new(
        RedisLimiter::connect_with_memory_fallback(config)
            .await
            .unwrap(),
    );
    let load = Load::start(&limiter, 6, Duration::from_millis(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!limiter.stats().await.degraded);
    assert!(load.grants() > 0, "the load runs");

    let killed = Instant::now();
    tokio::task::block_in_place(|| setup.kill(old));
    wait_until(
        &*limiter,
        Duration::from_secs(5),
        "the limiter notices the dead primary",
        |s| s.degraded,
    )
    .await;
    let new =
        tokio::task::block_in_place(|| setup.wait_for_new_primary(old, Duration::from_secs(20)));
    let promoted = killed.elapsed();
    assert_ne!(new, old);
    wait_until(
        &*limiter,
        Duration::from_secs(15),
        "the limiter back on redis",
        |s| !s.degraded,
    )
    .await;
    let recovered = killed.elapsed();
    report(
        "sentinel failover: primary SIGKILLed -> replica promoted",
        promoted,
    );
    report(
        "sentinel failover: primary SIGKILLed -> limiter back on redis",
        recovered,
    );
    assert!(
        recovered < Duration::from_secs(10),
        "back on redis {recovered:?} after the kill"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    load.reset_peak();
    let grants = load.grants();
    stays_on_redis(&limiter, Duration::from_millis(1_500)).await;
    assert!(
        load.grants() > grants + 10,
        "the load is served after the failover"
    );
    let counts = load.stop().await;
    crate::load::assert_failover_kept_the_limit(
        "sentinel failover",
        &limiter,
        &counts,
        LIMIT,
        SHARE,
    )
    .await;
    // The keys now live on the promoted replica.
    let client =
        Builder::from_config(Config::from_url(&format!("redis://127.0.0.1:{new}")).unwrap())
            .build()
            .unwrap();
    client.init().await.unwrap();
    let role: Vec<fred::types::Value> = client
        .custom(fred::cmd!("ROLE"), Vec::<String>::new())
        .await
        .unwrap();
    assert_eq!(
        role.first().and_then(|v| v.as_str()).as_deref(),
        Some("master")
    );
}
