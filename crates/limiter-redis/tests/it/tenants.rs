//! Tenants in Redis beyond the shared contract: a cap holds across instances, the fair
//! order's state empties with the queue, and waiters queued by an older version (scored by
//! `seq`) keep their places.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{Admission, Priority, Share, Tenant};
use fred::prelude::{HashesInterface, KeysInterface, SortedSetsInterface};
use limiter_redis::RedisLimiter;
use limiter_redis::scripts::BAND;
use ports::{ConcurrencyLimiter, LimiterError};

use crate::support::{RedisServer, config, raw_client, wait_until};

const SERVED: Duration = Duration::from_secs(10);

fn admission(tenant: &str, priority: Priority, share: Share) -> Admission {
    Admission::new(Tenant::parse(tenant).unwrap(), priority).with_share(share)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_cap_holds_across_instances() {
    let server = RedisServer::start();
    let cfg = config(&server, 4);
    let a = RedisLimiter::connect_with_memory_fallback(cfg.clone())
        .await
        .unwrap();
    let b = RedisLimiter::connect_with_memory_fallback(cfg)
        .await
        .unwrap();
    let acme = admission("acme", Priority::High, Share::new(2, Some(1)));
    let held = a.acquire(&acme, SERVED).await.expect("1 of 1");
    let refused = b.acquire(&acme, Duration::ZERO).await;
    assert!(
        matches!(refused, Err(LimiterError::Timeout { .. })),
        "another instance must see the cap: {refused:?}"
    );
    let other = b
        .acquire(&Priority::Low.into(), Duration::ZERO)
        .await
        .expect("a free slot for another tenant");
    let stats = b.stats().await;
    let acme_slots = stats.tenants.get("acme").copied().unwrap_or_default();
    assert_eq!((acme_slots.active, stats.active), (1, 2), "{stats:?}");
    assert_eq!(
        stats.tenants.get("public").map(|t| t.active),
        Some(1),
        "{stats:?}"
    );
    held.release().await.unwrap();
    let again = b
        .acquire(&acme, Duration::ZERO)
        .await
        .expect("below its cap again once the other instance released");
    drop((again, other));
    wait_until(&b, SERVED, "all free", |s| {
        s.active == 0 && s.tenants.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fair_orders_state_is_gone_once_the_queue_is_empty() {
    let server = RedisServer::start();
    let cfg = config(&server, 1);
    let fair = format!("{{talkgate:{}}}:fair", cfg.name);
    let limiter: Arc<dyn ConcurrencyLimiter> = Arc::new(
        RedisLimiter::connect_with_memory_fallback(cfg)
            .await
            .unwrap(),
    );
    let raw = raw_client(&server).await;
    let holder = limiter
        .acquire(&Priority::Normal.into(), SERVED)
        .await
        .unwrap();
    // Tenant names with the token's separators in them.
    let dotted = admission("a.1.b-2:x", Priority::Normal, Share::new(2, Some(3)));
    let plain = admission("c", Priority::Low, Share::default());
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let waiters = [
        ("d1", &dotted),
        ("c1", &plain),
        ("d2", &dotted),
        ("c2", &plain),
        ("d3", &dotted),
    ];
    for (i, (label, who)) in waiters.into_iter().enumerate() {
        let l = Arc::clone(&limiter);
        let o = Arc::clone(&order);
        let who = who.clone();
        tasks.push(tokio::spawn(async move {
            let permit = l.acquire(&who, SERVED).await.expect("served");
            o.lock().unwrap().push(label);
            permit.release().await.unwrap();
        }));
        let queued = i as u32 + 1;
        wait_until(&*limiter, SERVED, "queued", |s| s.queued.total() == queued).await;
    }
    let stats = limiter.stats().await;
    let dotted_slots = stats.tenants.get("a.1.b-2:x").copied().unwrap_or_default();
    assert_eq!(
        (dotted_slots.active, dotted_slots.queued),
        (0, 3),
        "{stats:?}"
    );
    assert_eq!(
        stats.tenants.get("c").map(|t| t.queued),
        Some(2),
        "{stats:?}"
    );
    let fields: i64 = raw.hlen(&fair).await.unwrap();
    assert!(
        fields > 0,
        "the fair order keeps its virtual time while waiters queue"
    );
    holder.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["d1", "d2", "d3", "c1", "c2"]);
    // The reclaim step runs at most every 20 ms; the stats call after that drops the state.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let stats = limiter.stats().await;
    assert!(stats.tenants.is_empty(), "{stats:?}");
    test_support::eventually(SERVED, "the fair hash gone", || async {
        limiter.stats().await;
        let exists: i64 = raw.exists(&fair).await.unwrap();
        if exists == 0 { Ok(()) } else { Err(exists) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_queued_by_an_older_version_keeps_its_place() {
    let server = RedisServer::start();
    let cfg = config(&server, 1);
    let tag = format!("{{talkgate:{}}}", cfg.name);
    let limiter = RedisLimiter::connect_with_memory_fallback(cfg)
        .await
        .unwrap();
    let raw = raw_client(&server).await;
    let holder = limiter
        .acquire(&Priority::Normal.into(), SERVED)
        .await
        .unwrap();
    // What a version before fair share wrote for a `normal` waiter: `2 · 2^40 + seq`, with
    // a ticket and an enqueue time (its instance has no record, so it counts as alive).
    let old = "00000000000000ff-7";
    let score = (2 * BAND + 5_000_000) as f64;
    let far = 4_102_444_800_000f64; // 2100-01-01, in ms.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let _: i64 = raw
        .zadd(
            format!("{tag}:queue"),
            None,
            None,
            false,
            false,
            (score, old),
        )
        .await
        .unwrap();
    let _: i64 = raw
        .zadd(
            format!("{tag}:waiters"),
            None,
            None,
            false,
            false,
            (far, old),
        )
        .await
        .unwrap();
    let _: i64 = raw
        .zadd(
            format!("{tag}:enqueued"),
            None,
            None,
            false,
            false,
            (now_ms, old),
        )
        .await
        .unwrap();
    let limiter = Arc::new(limiter);
    let l = Arc::clone(&limiter);
    let newer = tokio::spawn(async move { l.acquire(&Priority::Normal.into(), SERVED).await });
    wait_until(&*limiter, SERVED, "both queued", |s| s.queued.normal == 2).await;
    holder.release().await.unwrap();
    let stats = wait_until(&*limiter, SERVED, "one granted", |s| s.queued.normal == 1).await;
    assert_eq!(stats.active, 1, "{stats:?}");
    let granted: Option<f64> = raw.zscore(format!("{tag}:holders"), old).await.unwrap();
    assert!(granted.is_some(), "the older waiter goes first: {stats:?}");
    // Its holder releases (as an older version would), and the newer waiter is served.
    let _: i64 = raw.zrem(format!("{tag}:holders"), old).await.unwrap();
    let permit = newer
        .await
        .unwrap()
        .expect("the newer waiter is served next");
    drop(permit);
}
