//! Criterion benchmark: one uncontended `acquire` + `release` of the Redis limiter against a
//! local `redis-server`, beside a plain `SET` round trip on the same server in the same run
//! (the baseline; the target is a cycle ≤ 3 × `SET`).
//!
//! Run: `cargo bench -p limiter-redis --bench round_trip`. Needs `redis-server` on PATH; the
//! bench starts it on a free loopback port (`--save "" --appendonly no`) and kills it.

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use domain::Priority;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::ConcurrencyLimiter;

/// The server process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Server, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: install it with `apt-get install -y redis-server`");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (server, format!("redis://127.0.0.1:{port}"))
}

fn round_trip(c: &mut Criterion) {
    let (_server, url) = start_redis();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (client, limiter) = rt.block_on(async {
        let client = Builder::from_config(Config::from_url(&url).unwrap())
            .build()
            .unwrap();
        client.init().await.expect("redis up");
        let mut config = RedisLimiterConfig::new(url.clone(), "bench");
        config.max_concurrent = 64;
        let limiter = RedisLimiter::connect_with_memory_fallback(config)
            .await
            .expect("limiter");
        assert!(!limiter.is_degraded());
        (client, limiter)
    });

    let mut group = c.benchmark_group("redis_round_trip");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    group.bench_function("set_baseline", |b| {
        b.to_async(&rt).iter(|| async {
            let _: () = client
                .set("bench:key", black_box("value"), None, None, false)
                .await
                .unwrap();
        });
    });
    group.bench_function("acquire_release", |b| {
        b.to_async(&rt).iter(|| async {
            let permit = limiter
                .acquire(black_box(Priority::Normal), Duration::from_secs(1))
                .await
                .unwrap();
            permit.release().await.unwrap();
        });
    });
    group.finish();
    assert!(
        !limiter.is_degraded(),
        "the bench must measure redis, not the fallback"
    );
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
