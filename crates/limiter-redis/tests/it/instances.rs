//! The instance registry and what it buys: peers counted in Redis, a fallback share derived
//! from them, the `closed` and `full` policies, permits registered again at the switch back
//! (fallback permits adopted, lost leases re-established) so that an empty restart admits
//! no more than the limit, and a Redis stall that declares no live instance dead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use domain::Priority;
use limiter_redis::{FailoverPolicy, RedisLimiter, RedisLimiterConfig};
use ports::{ConcurrencyLimiter, LimiterError};

use crate::support::{RedisServer, config, fast_failover, report, unique_name, wait_until};

/// `n` limiters on `server` sharing one name and `limit`, each with its config changed by
/// `change`.
async fn fleet(
    server: &RedisServer,
    n: usize,
    limit: u32,
    change: impl Fn(&mut RedisLimiterConfig),
) -> Vec<RedisLimiter> {
    let name = unique_name("fleet");
    let mut out = Vec::new();
    for _ in 0..n {
        let mut cfg = fast_failover(config(server, limit));
        cfg.name = name.clone();
        change(&mut cfg);
        out.push(
            RedisLimiter::connect_with_memory_fallback(cfg)
                .await
                .unwrap(),
        );
    }
    out
}

/// Waits until every limiter of `fleet` has seen `n` live instances.
async fn wait_for_peers(fleet: &[RedisLimiter], n: u32) {
    for limiter in fleet {
        wait_until(limiter, Duration::from_secs(5), "peers counted", |s| {
            s.backend.failover.as_ref().and_then(|f| f.instances) == Some(n)
        })
        .await;
    }
}

async fn wait_degraded(limiter: &RedisLimiter, want: bool) {
    test_support::eventually(Duration::from_secs(10), "degraded state", || async {
        let _ = limiter.stats().await;
        limiter.is_degraded() == want
    })
    .await;
}

/// How many permits `limiter` grants now, each asked with a 50 ms wait (kept until the end
/// of the caller's scope).
async fn grab_all(limiter: &RedisLimiter, most: usize) -> Vec<ports::Permit> {
    let mut permits = Vec::new();
    for _ in 0..most {
        match limiter
            .acquire(&Priority::Normal.into(), Duration::from_millis(50))
            .await
        {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    permits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_instances_share_the_limit_by_the_peers_they_last_saw() {
    let mut server = RedisServer::start();
    let fleet = fleet(&server, 4, 6, |_| {}).await;
    wait_for_peers(&fleet, 4).await;
    server.kill();
    let mut held = Vec::new();
    for limiter in &fleet {
        wait_degraded(limiter, true).await;
        let stats = limiter.stats().await;
        let failover = stats.backend.failover.unwrap();
        assert_eq!(
            (failover.policy.as_str(), failover.share, failover.instances),
            ("share", 1, Some(4)),
            "floor(6 / 4) = 1"
        );
        held.extend(grab_all(limiter, 6).await);
    }
    // 4 instances × a share of 1: the account sees at most max(C, N) = 6, here 4.
    assert_eq!(
        held.len(),
        4,
        "each degraded instance grants its share only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_refuses_while_degraded_and_full_grants_the_whole_limit() {
    let mut server = RedisServer::start();
    let closed = fleet(&server, 2, 3, |c| {
        c.failover_policy = FailoverPolicy::Closed
    })
    .await;
    let full = fleet(&server, 1, 3, |c| c.failover_policy = FailoverPolicy::Full).await;
    wait_for_peers(&closed, 2).await;
    server.kill();
    wait_degraded(&closed[0], true).await;
    match closed[0]
        .acquire(&Priority::High.into(), Duration::from_millis(50))
        .await
    {
        Err(LimiterError::Unavailable { message }) => {
            assert!(message.contains("failover policy is closed"), "{message}");
            assert!(
                message.contains("127.0.0.1"),
                "names the address: {message}"
            );
        }
        other => panic!("closed must refuse, got {other:?}"),
    }
    assert_eq!(closed[0].stats().await.backend.failover.unwrap().share, 0);
    wait_degraded(&full[0], true).await;
    assert_eq!(
        grab_all(&full[0], 5).await.len(),
        3,
        "full: the whole limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_empty_restart_every_held_permit_counts_before_new_ones_are_granted() {
    let mut server = RedisServer::start();
    let name = unique_name("restart");
    let limiter = |probe_ms: u64| {
        let mut cfg = fast_failover(config(&server, 3));
        cfg.name = name.clone();
        // Long leases: only the re-registration, not an expiry, can make this pass.
        cfg.lease_ttl = Duration::from_secs(30);
        cfg.local_share = Some(1);
        cfg.probe_interval = Duration::from_millis(probe_ms);
        RedisLimiter::connect_with_memory_fallback(cfg)
    };
    // A is slower to notice that Redis is back than B, which asks for slots all along.
    let a = limiter(300).await.unwrap();
    let b = Arc::new(limiter(20).await.unwrap());
    let redis_permits = grab_all(&a, 2).await;
    assert_eq!(redis_permits.len(), 2);

    server.kill();
    wait_degraded(&a, true).await;
    wait_degraded(&b, true).await;
    let fallback_permit = grab_all(&a, 1).await;
    assert_eq!(fallback_permit.len(), 1, "a share of 1 while degraded");
    // B's own share is busy elsewhere during the outage.
    let b_fallback = grab_all(&b, 1).await;
    assert_eq!(b_fallback.len(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let asking = {
        let (b, stop) = (Arc::clone(&b), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut got = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if !b.is_degraded()
                    && let Ok(p) = b
                        .acquire(&Priority::Critical.into(), Duration::from_millis(20))
                        .await
                {
                    got.push(p);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        })
    };
    server.restart();
    let restarted = Instant::now();
    wait_degraded(&b, false).await;
    wait_degraded(&a, false).await;
    report("both instances back on an empty redis", restarted.elapsed());
    // Redis lost everything; A's two leases and its fallback permit, and B's fallback
    // permit, are registered again before anything new is granted.
    let stats = wait_until(&a, Duration::from_secs(5), "held permits counted", |s| {
        s.active >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let got = asking.await.unwrap();
    assert!(
        got.is_empty(),
        "B was granted {} slot(s) while A and B held 4 > 3: {stats:?}",
        got.len()
    );
    assert_eq!(a.stats().await.active, 4, "2 re-established + 2 adopted");
    drop((fallback_permit, redis_permits, b_fallback));
    let got = test_support::eventually(Duration::from_secs(5), "B gets the slots", || async {
        let permits = grab_all(&b, 3).await;
        if permits.len() == 3 {
            Ok(permits)
        } else {
            Err(permits.len())
        }
    })
    .await;
    drop(got);
    wait_until(&a, Duration::from_secs(5), "nothing leaks", |s| {
        s.active == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_longer_than_the_instance_ttl_declares_no_live_instance_dead() {
    let server = RedisServer::start();
    let fleet = fleet(&server, 2, 4, |c| {
        c.lease_ttl = Duration::from_secs(30);
        c.instance_ttl = Duration::from_millis(600);
    })
    .await;
    wait_for_peers(&fleet, 2).await;
    let held = grab_all(&fleet[0], 2).await;
    assert_eq!(held.len(), 2);
    server.signal("STOP");
    // Five instance TTLs without a heartbeat reaching Redis.
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.signal("CONT");
    for limiter in &fleet {
        wait_degraded(limiter, false).await;
    }
    let stats = wait_until(&fleet[1], Duration::from_secs(5), "peers again", |s| {
        s.backend.failover.as_ref().and_then(|f| f.instances) == Some(2)
    })
    .await;
    assert_eq!(
        stats.active, 2,
        "the live holders keep their slots: {stats:?}"
    );
    assert_eq!(stats.backend.failover.unwrap().instances_reclaimed, 0);
    assert_eq!(fleet[0].stats().await.counters.leases_lost, 0);
    drop(held);
    wait_until(&fleet[1], Duration::from_secs(5), "released", |s| {
        s.active == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_shuts_down_leaves_the_registry_at_once() {
    let server = RedisServer::start();
    let mut fleet = fleet(&server, 3, 6, |c| {
        c.instance_ttl = Duration::from_secs(30);
    })
    .await;
    wait_for_peers(&fleet, 3).await;
    drop(fleet.pop());
    let started = Instant::now();
    wait_until(&fleet[0], Duration::from_secs(5), "two peers left", |s| {
        s.backend.failover.as_ref().and_then(|f| f.instances) == Some(2)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a clean shutdown does not wait for the 30 s record to expire"
    );
    // The share an outage would grant follows: floor(6 / 2) = 3.
    assert_eq!(fleet[0].stats().await.backend.failover.unwrap().share, 3);
}

/// Callers still waiting in the fallback when Redis comes back are moved into the Redis
/// queue at the switch back, keeping priority and arrival order; the fallback grants none of
/// them locally (each such grant was a permit Redis learnt of only afterwards, while it
/// filled the limit itself: 7 in flight at C = 6 in the outside trial).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_waiters_move_into_the_redis_queue_at_the_switch_back_in_their_order() {
    let mut server = RedisServer::start();
    let mut both = fleet(&server, 2, 2, |c| {
        c.lease_ttl = Duration::from_secs(30);
        c.local_share = Some(1);
    })
    .await;
    let b = both.pop().unwrap();
    let a = Arc::new(both.pop().unwrap());
    server.kill();
    wait_degraded(&a, true).await;
    wait_degraded(&b, true).await;
    let held_a = grab_all(&a, 1).await;
    let held_b = grab_all(&b, 1).await;
    assert_eq!((held_a.len(), held_b.len()), (1, 1), "a share of 1 each");

    // Four waiters on A's fallback, in this order.
    let order = [
        ("low", Priority::Low),
        ("normal-1", Priority::Normal),
        ("normal-2", Priority::Normal),
        ("high", Priority::High),
    ];
    let (granted_tx, mut granted) = tokio::sync::mpsc::unbounded_channel();
    for (name, priority) in order {
        let (a, tx) = (Arc::clone(&a), granted_tx.clone());
        tokio::spawn(async move {
            let permit = a.acquire(&priority.into(), Duration::from_secs(60)).await;
            let _ = tx.send((name, permit));
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(a.stats().await.queued.total(), 4, "queued in the fallback");

    server.restart();
    wait_degraded(&a, false).await;
    wait_degraded(&b, false).await;
    // In Redis now: the four waiters queued, the two fallback permits adopted.
    let stats = wait_until(
        &*a,
        Duration::from_secs(5),
        "waiters queued in redis",
        |s| s.backend.kind == "redis" && s.queued.total() == 4 && s.active == 2,
    )
    .await;
    assert_eq!(stats.queued.high, 1, "{stats:?}");
    assert!(
        granted.try_recv().is_err(),
        "nobody granted while the limit is held"
    );

    // Each slot freed goes to the head of the Redis queue: priority, then arrival.
    drop(held_a);
    let mut seen = Vec::new();
    let mut current = None;
    for _ in 0..4 {
        let (name, permit) = tokio::time::timeout(Duration::from_secs(10), granted.recv())
            .await
            .expect("a waiter is granted")
            .unwrap();
        let permit = permit.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let s = a.stats().await;
        assert!(
            s.active <= 2,
            "{} held at C = 2 after granting {name}",
            s.active
        );
        seen.push(name);
        // Let the next one in.
        drop(current.replace(permit));
        drop(current.take());
    }
    assert_eq!(seen, ["high", "normal-1", "normal-2", "low"]);
    drop(held_b);
    wait_until(&*a, Duration::from_secs(5), "nothing leaks", |s| {
        s.active == 0 && s.queued.total() == 0
    })
    .await;
}

/// An idle instance (no caller, nothing but its heartbeat) degrades as soon as its
/// reconnect to a killed Redis is refused, not when its next call would have timed out:
/// here that call is the next heartbeat (2 s away) plus a 5 s op timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_degrades_when_its_reconnect_is_refused_not_at_its_next_call() {
    let mut server = RedisServer::start();
    let mut cfg = config(&server, 2);
    cfg.connection.op_timeout = Duration::from_secs(5);
    cfg.instance_ttl = Duration::from_secs(8);
    let limiter = Arc::new(
        RedisLimiter::connect_with_memory_fallback(cfg)
            .await
            .unwrap(),
    );
    assert!(!limiter.is_degraded());
    let killed = Instant::now();
    server.kill();
    // A stats call sent right after the kill waits on Redis; the switch ends its wait (it
    // would otherwise answer after its own 5 s op timeout, as `/health` did).
    let asked = tokio::spawn({
        let limiter = Arc::clone(&limiter);
        async move { limiter.stats().await }
    });
    // Only the flag is read here: another `stats()` would itself find Redis gone.
    test_support::eventually(
        Duration::from_secs(2),
        "degraded on the refusal",
        || async { limiter.is_degraded() },
    )
    .await;
    report("idle instance degraded after the kill", killed.elapsed());
    let stats = tokio::time::timeout(Duration::from_secs(2), asked)
        .await
        .expect("the waiting stats call answers once degraded")
        .unwrap();
    assert!(stats.degraded, "{stats:?}");
    assert_eq!(
        stats.backend.degraded_reason,
        Some(ports::DegradedReason::Refused),
        "{stats:?}"
    );
}
