//! Criterion benchmark: one uncontended `acquire` + `release` of the Redis limiter against a
//! local `redis-server`, beside a plain `SET` round trip on the same server in the same run
//! (the baseline; issue 12's target is a cycle ≤ 2.3 × `SET`, the physical floor being two
//! round trips). Two more baselines split the cycle's cost: `noop_bare`, an `EVALSHA` of
//! `return 1` without keys or arguments (the price of a script call), and
//! `noop_script_call`, the same script called with a limiter script's 8 keys and 14
//! arguments (the price of its call shape). Two `noop_script_call`s against the cycle leave
//! the scripts' own work.
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
    // The shape of one limiter script call without its work: the same 8 keys and 14
    // arguments, a body that returns at once. Two of these against the cycle below split
    // its cost into the round trips and call overhead (this) and the scripts' own work.
    let noop = fred::types::scripts::Script::from_lua("return 1");
    let keys: Vec<fred::types::Key> = limiter_redis::scripts::Scripts::new("bench").keys.clone();
    let args: Vec<String> = [
        "64",
        "{talkgate:bench}:wake",
        "1000",
        "1796300000000",
        "2000",
        "1600",
        "0123456789abcdef-1",
        "2",
        "15000",
        "6000",
        "wait",
        "1",
        "",
        "",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    rt.block_on(async {
        let _: i64 = noop
            .evalsha_with_reload(&client, keys.clone(), args.clone())
            .await
            .unwrap();
    });
    group.bench_function("noop_bare", |b| {
        b.to_async(&rt).iter(|| async {
            let _: i64 = noop
                .evalsha_with_reload(
                    &client,
                    Vec::<fred::types::Key>::new(),
                    Vec::<String>::new(),
                )
                .await
                .unwrap();
        });
    });
    group.bench_function("noop_script_call", |b| {
        b.to_async(&rt).iter(|| async {
            let _: i64 = noop
                .evalsha_with_reload(&client, black_box(keys.clone()), black_box(args.clone()))
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
