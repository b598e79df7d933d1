//! Several OS processes (`limiter-holder`) sharing one Redis: the global limit, the global
//! priority order, and recovery after a holder or a waiter is SIGKILLed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use domain::Priority;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface, ListInterface};
use limiter_redis::RedisLimiter;
use ports::ConcurrencyLimiter;

use crate::support::{RedisServer, config, report, unique_name, wait_until};

/// One running `limiter-holder` process; killed on drop.
pub(crate) struct Holder {
    child: Child,
    lines: Receiver<String>,
}

impl Holder {
    pub(crate) fn spawn(url: &str, name: &str, args: &[(&str, &str)]) -> Holder {
        let mut command = Command::new(env!("CARGO_BIN_EXE_limiter-holder"));
        command.args(["--url", url, "--name", name]);
        for (k, v) in args {
            command.arg(format!("--{k}")).arg(v);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("limiter-holder starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut holder = Holder { child, lines };
        holder.expect_line("ready", Duration::from_secs(10));
        holder
    }

    fn expect_line(&mut self, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => {}
                Err(e) => panic!("limiter-holder never said {want:?}: {e}"),
            }
        }
    }

    /// Waits for a clean exit.
    pub(crate) fn finish(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "limiter-holder failed: {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "limiter-holder did not finish in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, like a crash or an OOM kill.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn bookkeeping(server: &RedisServer, name: &str) -> (i64, i64, Vec<String>) {
    let redis = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    bookkeeping_on(&redis, name).await
}

/// The holders' `peak`, `failed` and grant `order`, read with `redis` (a connected client of
/// a single server or of a cluster), which is closed afterwards.
pub(crate) async fn bookkeeping_on(
    redis: &fred::prelude::Client,
    name: &str,
) -> (i64, i64, Vec<String>) {
    let tag = format!("{{talkgate-test:{name}}}");
    let peak: Option<i64> = redis.get(format!("{tag}:peak")).await.unwrap();
    let failed: Option<i64> = redis.get(format!("{tag}:failed")).await.unwrap();
    let order: Vec<String> = redis.lrange(format!("{tag}:order"), 0, -1).await.unwrap();
    let _ = redis.quit().await;
    (peak.unwrap_or(0), failed.unwrap_or(0), order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_holds_across_processes() {
    let server = RedisServer::start();
    let name = unique_name("procs");
    let url = server.url();
    let mut holders: Vec<Holder> = ["low", "normal", "high", "critical"]
        .iter()
        .map(|p| {
            Holder::spawn(
                &url,
                &name,
                &[
                    ("limit", "3"),
                    ("priority", p),
                    ("count", "6"),
                    ("hold-ms", "30"),
                ],
            )
        })
        .collect();
    for h in &mut holders {
        h.finish(Duration::from_secs(60));
    }
    let (peak, failed, order) = bookkeeping(&server, &name).await;
    assert_eq!(failed, 0, "every acquire must be served");
    assert_eq!(order.len(), 24);
    assert!(
        (1..=3).contains(&peak),
        "peak {peak} concurrent holders with a limit of 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_order_holds_across_processes() {
    let server = RedisServer::start();
    let mut cfg = config(&server, 1);
    cfg.name = unique_name("order");
    let name = cfg.name.clone();
    let url = server.url();
    let limiter = RedisLimiter::connect_with_memory_fallback(cfg)
        .await
        .unwrap();
    let gate = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(5))
        .await
        .unwrap();

    // Queue low, then normal, then high waiters, each group in its own process, each group
    // visibly queued before the next arrives.
    let mut holders = Vec::new();
    for (priority, count) in [("low", 3u32), ("normal", 2), ("high", 3)] {
        let count_s = count.to_string();
        holders.push(Holder::spawn(
            &url,
            &name,
            &[
                ("limit", "1"),
                ("priority", priority),
                ("count", &count_s),
                ("hold-ms", "10"),
            ],
        ));
        let p: Priority = priority.parse().unwrap();
        wait_until(&limiter, Duration::from_secs(10), "a group queued", |s| {
            s.queued.get(p) == count
        })
        .await;
    }
    gate.release().await.unwrap();
    for h in &mut holders {
        h.finish(Duration::from_secs(30));
    }
    let (peak, failed, order) = bookkeeping(&server, &name).await;
    assert_eq!((peak, failed), (1, 0));
    assert_eq!(
        order,
        [
            "high", "high", "high", "normal", "normal", "low", "low", "low"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_frees_its_slots_within_the_instance_ttl_not_the_lease() {
    let server = RedisServer::start();
    let mut cfg = config(&server, 2);
    cfg.name = unique_name("crash");
    let name = cfg.name.clone();
    let instance_ttl = cfg.instance_ttl;
    let limiter = RedisLimiter::connect_with_memory_fallback(cfg)
        .await
        .unwrap();
    // The default lease (15 s): only the dead instance's record can free the slots sooner.
    let mut holder = Holder::spawn(
        &server.url(),
        &name,
        &[("limit", "2"), ("count", "2"), ("hold-ms", "60000")],
    );
    holder.expect_line("held", Duration::from_secs(10));
    holder.expect_line("held", Duration::from_secs(10));
    // Heartbeats keep the instance alive past its record's TTL while it lives.
    tokio::time::sleep(instance_ttl * 2).await;
    assert_eq!(
        limiter.stats().await.active,
        2,
        "live holders keep their slots"
    );

    holder.kill();
    let killed = Instant::now();
    let a = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(20))
        .await
        .unwrap();
    let b = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(20))
        .await
        .unwrap();
    let recovered = killed.elapsed();
    report(
        "crash recovery (SIGKILLed holder of 2 slots, lease 15 s, instance ttl 2 s)",
        recovered,
    );
    // The record expires at most one instance TTL after the last heartbeat before the
    // death; then the next script reclaims, and the waiter confirms within one safety poll.
    assert!(
        recovered <= instance_ttl + Duration::from_millis(1_000),
        "capacity came back after {recovered:?}"
    );
    let stats = limiter.stats().await;
    assert!(stats.counters.leases_reclaimed >= 2, "{stats:?}");
    assert_eq!(stats.backend.failover.unwrap().instances_reclaimed, 1);
    a.release().await.unwrap();
    b.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_slots_come_back_once_its_heartbeat_is_late_not_when_its_record_expires() {
    // An 8 s instance TTL (heartbeat every 2 s): the record of a dead process expires 6–8 s
    // after its death, but its connections closed with it, so the first script after its
    // heartbeat is 3/8 TTL (3 s) late declares it dead: 1–3 s after the death.
    let server = RedisServer::start();
    let mut cfg = config(&server, 2);
    cfg.name = unique_name("absent");
    cfg.instance_ttl = Duration::from_secs(8);
    let name = cfg.name.clone();
    let limiter = RedisLimiter::connect_with_memory_fallback(cfg)
        .await
        .unwrap();
    let mut holder = Holder::spawn(
        &server.url(),
        &name,
        &[
            ("limit", "2"),
            ("count", "2"),
            ("hold-ms", "60000"),
            ("instance-ttl-ms", "8000"),
        ],
    );
    holder.expect_line("held", Duration::from_secs(10));
    holder.expect_line("held", Duration::from_secs(10));
    holder.kill();
    let killed = Instant::now();
    let a = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(20))
        .await
        .unwrap();
    let b = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(20))
        .await
        .unwrap();
    let recovered = killed.elapsed();
    report(
        "crash recovery (SIGKILLed holder of 2 slots, instance ttl 8 s, presence gone)",
        recovered,
    );
    assert!(
        recovered <= Duration::from_millis(3_000 + 1_500),
        "capacity came back after {recovered:?}, the record's expiry, not the presence check"
    );
    assert_eq!(
        limiter
            .stats()
            .await
            .backend
            .failover
            .unwrap()
            .instances_reclaimed,
        1
    );
    a.release().await.unwrap();
    b.release().await.unwrap();
}

/// A live waiter queued behind the waiter of a process that died: how long after the death
/// it gets a slot freed at `free_after` (0: at once).
async fn served_after_a_dead_head_waiter(free_after: Duration) -> Duration {
    let server = RedisServer::start();
    let mut cfg = config(&server, 1);
    cfg.name = unique_name("deadwaiter");
    let name = cfg.name.clone();
    let limiter = std::sync::Arc::new(
        RedisLimiter::connect_with_memory_fallback(cfg)
            .await
            .unwrap(),
    );
    let gate = limiter
        .acquire(&Priority::Normal.into(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut holder = Holder::spawn(
        &server.url(),
        &name,
        &[
            ("limit", "1"),
            ("priority", "critical"),
            ("hold-ms", "60000"),
        ],
    );
    wait_until(
        &*limiter,
        Duration::from_secs(10),
        "the critical waiter queued",
        |s| s.queued.critical == 1,
    )
    .await;
    let l = std::sync::Arc::clone(&limiter);
    let next = tokio::spawn(async move {
        l.acquire(&Priority::Low.into(), Duration::from_secs(10))
            .await
    });
    wait_until(
        &*limiter,
        Duration::from_secs(10),
        "the low waiter queued",
        |s| s.queued.low == 1,
    )
    .await;

    holder.kill();
    let killed = Instant::now();
    tokio::time::sleep(free_after).await;
    gate.release().await.unwrap();
    let permit = next.await.unwrap().expect("the live waiter is served");
    let unblocked = killed.elapsed();
    permit.release().await.unwrap();
    unblocked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_freed_right_after_a_waiters_death_goes_to_a_live_waiter() {
    // The dead instance's heartbeat is still fresh, but its connection closed with its
    // process, so its presence subscription is gone: the slot freed at once skips its
    // critical waiter and goes to the live one. (Without the presence check it went to
    // the dead waiter, which nobody confirms, and the live one waited a grant TTL, 1 s.)
    let unblocked = served_after_a_dead_head_waiter(Duration::ZERO).await;
    report("dead head-of-queue waiter, slot freed at once", unblocked);
    assert!(
        unblocked <= Duration::from_millis(400),
        "the dead waiter blocked the queue for {unblocked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_of_an_instance_whose_heartbeat_stopped_is_never_granted() {
    // One second after the death the instance's last heartbeat is stale (older than 3/8 of
    // its 2 s TTL): the freed slot skips its waiter and goes straight to the live one.
    let free_after = Duration::from_secs(1);
    let unblocked = served_after_a_dead_head_waiter(free_after).await;
    report("dead head-of-queue waiter, slot freed 1 s later", unblocked);
    assert!(
        unblocked <= free_after + Duration::from_millis(300),
        "the live waiter waited {unblocked:?} for a slot freed after {free_after:?}"
    );
}

#[test]
fn limiter_holder_help_prints_its_usage_and_a_bad_argument_is_a_usage_error() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_limiter-holder"))
        .arg("--help")
        .output()
        .expect("limiter-holder runs");
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert_eq!(
        help.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    for flag in ["--url", "--name", "--priority", "--hold-ms", "--version"] {
        assert!(stdout.contains(flag), "usage lacks {flag}: {stdout}");
    }
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_limiter-holder"))
        .arg("--version")
        .output()
        .expect("limiter-holder runs");
    assert_eq!(version.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&version.stdout);
    assert_eq!(
        printed.trim(),
        concat!("limiter-holder ", env!("CARGO_PKG_VERSION"))
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_limiter-holder"))
        .args(["--name", "n", "--count", "many"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("limiter-holder runs");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--url"), "missing --url is named: {stderr}");
    assert!(stderr.contains("--count"), "bad --count is named: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
