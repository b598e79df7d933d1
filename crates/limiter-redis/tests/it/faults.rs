//! Redis faults under load: killed (refused), restarted empty, and hung (SIGSTOP). The
//! limiter keeps serving from its in-memory fallback, says so, switches back, and leaks no
//! permit on either side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domain::Priority;
use limiter_memory::MemoryLimiter;
use limiter_redis::RedisLimiter;
use ports::ConcurrencyLimiter;

use crate::support::{RedisServer, config, fast_failover, report, wait_until};

/// Tasks that acquire, hold briefly and release until stopped, counting grants and the
/// highest number of permits this process held at once.
struct Load {
    stop: Arc<AtomicBool>,
    granted: Arc<AtomicU64>,
    peak: Arc<AtomicU32>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(limiter: &Arc<RedisLimiter>, tasks: usize) -> Load {
        Self::start_with(
            limiter,
            tasks,
            Duration::from_secs(2),
            Duration::from_millis(10),
        )
    }

    /// [`start`](Self::start) with a given wait timeout per acquire and hold time per permit.
    fn start_with(
        limiter: &Arc<RedisLimiter>,
        tasks: usize,
        wait: Duration,
        hold: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let granted = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let holding = Arc::new(AtomicU32::new(0));
        let tasks = (0..tasks)
            .map(|i| {
                let (limiter, stop, granted, peak, holding) = (
                    Arc::clone(limiter),
                    Arc::clone(&stop),
                    Arc::clone(&granted),
                    Arc::clone(&peak),
                    Arc::clone(&holding),
                );
                tokio::spawn(async move {
                    let priority = Priority::ALL[i % 4];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(permit) = limiter.acquire(&priority.into(), wait).await else {
                            continue;
                        };
                        granted.fetch_add(1, Ordering::SeqCst);
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(hold).await;
                        holding.fetch_sub(1, Ordering::SeqCst);
                        // During an outage the Redis release fails and is retried in the
                        // background; the error is expected here.
                        let _ = permit.release().await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            granted,
            peak,
            tasks,
        }
    }

    fn granted(&self) -> u64 {
        self.granted.load(Ordering::SeqCst)
    }

    async fn grants_continue(&self, what: &str) {
        let before = self.granted();
        let what = format!("grants while {what}");
        test_support::eventually(Duration::from_secs(5), &what, || async {
            self.granted() >= before + 20
        })
        .await;
    }

    async fn stop(self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

async fn wait_degraded(limiter: &RedisLimiter, want: bool, within: Duration) -> Duration {
    let start = Instant::now();
    while limiter.is_degraded() != want {
        assert!(
            start.elapsed() < within,
            "degraded did not become {want} in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_over_to_memory_and_back() {
    let mut server = RedisServer::start();
    let cfg = fast_failover(config(&server, 3));
    let op_timeout = cfg.connection.op_timeout;
    let fallback = Arc::new(MemoryLimiter::new(3));
    let limiter = Arc::new(RedisLimiter::connect(cfg, fallback.clone()).await.unwrap());
    let load = Load::start(&limiter, 8);
    load.grants_continue("on redis").await;

    server.kill();
    let failover = wait_degraded(&limiter, true, Duration::from_secs(5)).await;
    report(
        "failover after redis was killed (refused), op timeout 200 ms",
        failover,
    );
    assert!(
        failover <= op_timeout + Duration::from_millis(300),
        "{failover:?}"
    );
    let stats = limiter.stats().await;
    assert_eq!(
        (stats.backend.kind.as_str(), stats.degraded),
        ("memory", true)
    );
    load.grants_continue("degraded").await;

    server.restart();
    let restarted = Instant::now();
    wait_degraded(&limiter, false, Duration::from_secs(10)).await;
    report("switch back after redis restarted", restarted.elapsed());
    load.grants_continue("back on redis").await;
    let peak = load.stop().await;
    // Redis permits (≤ 3) and memory permits (≤ local share 3) may overlap around a switch.
    assert!(peak <= 6, "this process held {peak} permits at once");

    let stats = wait_until(&*limiter, Duration::from_secs(5), "nothing held", |s| {
        !s.degraded && s.active == 0 && s.queued.total() == 0
    })
    .await;
    assert_eq!(stats.backend.kind, "redis");
    assert_eq!(fallback.stats().await.active, 0, "a memory permit leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_fails_over_within_the_op_timeout_and_leaks_nothing() {
    let server = RedisServer::start();
    let cfg = fast_failover(config(&server, 2));
    let op_timeout = cfg.connection.op_timeout;
    let fallback = Arc::new(MemoryLimiter::new(2));
    let limiter = Arc::new(RedisLimiter::connect(cfg, fallback.clone()).await.unwrap());
    let held = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();

    server.signal("STOP");
    let started = Instant::now();
    let local = limiter
        .acquire(&Priority::High.into(), Duration::from_secs(5))
        .await
        .expect("served by the fallback while redis hangs");
    let failover = started.elapsed();
    report(
        "failover while redis hangs (SIGSTOP), op timeout 200 ms",
        failover,
    );
    assert!(
        failover <= op_timeout + Duration::from_millis(300),
        "{failover:?}"
    );
    assert!(limiter.is_degraded());
    let stats = limiter.stats().await;
    assert_eq!((stats.backend.kind.as_str(), stats.active), ("memory", 1));
    // Released while Redis hangs: retried in the background.
    drop(held);
    let load = Load::start(&limiter, 4);
    load.grants_continue("redis hangs").await;

    server.signal("CONT");
    let resumed = Instant::now();
    wait_degraded(&limiter, false, Duration::from_secs(10)).await;
    report("switch back after SIGCONT", resumed.elapsed());
    load.grants_continue("back on redis").await;
    load.stop().await;
    drop(local);
    let stats = wait_until(
        &*limiter,
        Duration::from_secs(5),
        "nothing held after the hang",
        |s| !s.degraded && s.active == 0 && s.queued.total() == 0,
    )
    .await;
    assert_eq!(stats.backend.kind, "redis");
    assert_eq!(fallback.stats().await.active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_queued_in_redis_moves_to_memory_when_redis_hangs() {
    let server = RedisServer::start();
    let cfg = fast_failover(config(&server, 1));
    let fallback = Arc::new(MemoryLimiter::new(1));
    let limiter = Arc::new(RedisLimiter::connect(cfg, fallback.clone()).await.unwrap());
    let held = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();
    let l = Arc::clone(&limiter);
    let waiter = tokio::spawn(async move {
        l.acquire(&Priority::High.into(), Duration::from_secs(10))
            .await
    });
    wait_until(
        &*limiter,
        Duration::from_secs(5),
        "the waiter queued in redis",
        |s| s.queued.high == 1,
    )
    .await;

    server.signal("STOP");
    let stopped = Instant::now();
    let permit = waiter.await.unwrap().expect("served by the fallback");
    // Its next check (≤ one safety poll) times out after op_timeout, then memory serves it.
    let moved = stopped.elapsed();
    report("queued waiter moved to memory after SIGSTOP", moved);
    assert!(moved <= Duration::from_millis(200 + 200 + 300), "{moved:?}");
    assert_eq!(fallback.stats().await.active, 1);

    server.signal("CONT");
    drop(permit);
    drop(held);
    wait_degraded(&limiter, false, Duration::from_secs(10)).await;
    let stats = wait_until(
        &*limiter,
        Duration::from_secs(5),
        "no ticket or slot left",
        |s| !s.degraded && s.active == 0 && s.queued.total() == 0,
    )
    .await;
    assert_eq!(stats.backend.kind, "redis");
    assert_eq!(fallback.stats().await.active, 0);
}

/// Regression (bench 5, "redis outage", SIGSTOP): acquires and cancels that timed out while
/// Redis hung are still in the socket and run when it resumes. Acquires whose cancel never
/// arrives (the background retry gave up during the outage) or arrives first used to leave
/// tickets nobody owns; `promote()` turned them into grants that held every slot for the
/// ticket's deadline (`waiter_ttl`, 6 s here), so every caller stalled that long after
/// SIGCONT. Now Redis must be usable again well within `waiter_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_commands_run_after_a_hang_do_not_hold_slots() {
    let server = RedisServer::start();
    let mut cfg = config(&server, 2);
    cfg.connection.op_timeout = Duration::from_millis(200);
    cfg.connection.connect_timeout = Duration::from_millis(300);
    cfg.probe_interval = Duration::from_millis(100);
    // Background cleanups retry for max(lease_ttl, waiter_ttl) = 6 s, less than the hang.
    cfg.lease_ttl = Duration::from_secs(3);
    cfg.waiter_ttl = Duration::from_secs(6);
    let waiter_ttl = cfg.waiter_ttl;
    let fallback = Arc::new(MemoryLimiter::new(2));
    let limiter = Arc::new(RedisLimiter::connect(cfg, fallback.clone()).await.unwrap());
    // Many more callers than slots, with short waits: at any moment most of them have a
    // ticket or an acquire in flight, so the hang catches several of them mid-call.
    let load = Load::start_with(
        &limiter,
        8,
        Duration::from_millis(300),
        Duration::from_millis(20),
    );
    load.grants_continue("on redis").await;

    server.signal("STOP");
    wait_degraded(&limiter, true, Duration::from_secs(2)).await;
    load.grants_continue("redis hangs").await;
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    server.signal("CONT");
    let resumed = Instant::now();
    wait_degraded(&limiter, false, Duration::from_secs(2)).await;
    report("switch back after a 7 s SIGSTOP", resumed.elapsed());

    // Callers are served by Redis again, well within the waiter TTL.
    let bound = Duration::from_secs(2);
    let before = load.granted();
    while load.granted() < before + 20 {
        assert!(
            resumed.elapsed() < bound,
            "only {} grants within {bound:?} of SIGCONT (waiter ttl {waiter_ttl:?}); stats: {:?}",
            load.granted() - before,
            limiter.stats().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!limiter.is_degraded());
    report("20 grants on redis after SIGCONT", resumed.elapsed());

    // Once the callers stop, Redis shows nothing held or queued: no grant without an owner.
    load.stop().await;
    let stats = wait_until(
        &*limiter,
        bound.saturating_sub(resumed.elapsed()) + Duration::from_millis(500),
        "no slot or ticket without an owner after the hang",
        |s| !s.degraded && s.active == 0 && s.queued.total() == 0,
    )
    .await;
    report(
        "redis free of stale grants after SIGCONT",
        resumed.elapsed(),
    );
    assert_eq!(stats.backend.kind, "redis");
    let mut permits = Vec::new();
    for _ in 0..2 {
        let permit = limiter
            .acquire(&Priority::Normal.into(), Duration::ZERO)
            .await;
        permits.push(permit.expect("both slots free on redis"));
    }
    for permit in permits {
        permit.release().await.unwrap();
    }
    assert_eq!(fallback.stats().await.active, 0);
}
