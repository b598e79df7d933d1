//! Criterion benchmark: one uncontended `acquire` + `release` of the Redis limiter against a
//! local `redis-server`, beside a plain `SET` round trip on the same server in the same run
//! (the baseline; the target is a cycle ≤ 3 × `SET`).
//!
//! Run: `cargo bench -p limiter-redis --bench round_trip`. Needs `redis-server` on PATH; the
//! bench starts it with the shared harness (`test_support::redis`: a free loopback port,
//! `--save "" --appendonly no`) and kills it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use domain::Priority;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::ConcurrencyLimiter;
use test_support::redis::RedisServer;

fn round_trip(c: &mut Criterion) {
    let server = RedisServer::start();
    let url = server.url();
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
