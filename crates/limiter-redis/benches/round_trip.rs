//! Criterion benchmark: one uncontended `acquire` + `release` of the Redis limiter against a
//! local `redis-server`, beside a plain `SET` round trip on the same server in the same run
//! (the baseline; issue 12's target is a cycle ≤ 2.3 × `SET`, the physical floor being two
//! round trips). Two more baselines split the cycle's cost: `noop_bare`, an `EVALSHA` of
//! `return 1` without keys or arguments (the price of a script call), and
//! `noop_script_call`, the same script called with the acquire script's 9 keys and 6
//! arguments (the price of its call shape). Two `noop_script_call`s against the cycle leave
//! the scripts' own work. `script_floor` is the cheapest cycle two scripts can make: a bare
//! counting semaphore (`TIME` + `ZADD`; `TIME` + `ZREM` + tombstone `ZADD`) without the queue,
//! reclaim, failover and instance checks the limiter's scripts add.
//!
//! After the criterion group it prints the same comparison *paired*: five rounds of 2000
//! SETs, cycles and floor cycles alternating, each round's medians and ratios, and the
//! median round's ratios (criterion measures each function in its own window of seconds,
//! and on a shared VM the loopback latency drifts between windows by more than the
//! difference being measured).
//!
//! Run: `cargo bench -p limiter-redis --bench round_trip`. Needs `redis-server` on PATH; the
//! bench starts it with the shared harness (`test_support::redis`: a free loopback port,
//! `--save "" --appendonly no`) and kills it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use domain::Priority;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use limiter_redis::scripts::{ScriptSettings, Scripts};
use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::ConcurrencyLimiter;
use test_support::redis::RedisServer;

#[allow(clippy::print_stdout)] // The paired figures: the bench's own output, next to criterion's.
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

    // Two seconds of both kinds of call first, so the first function measured does not
    // also measure the process and the server settling in.
    rt.block_on(async {
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            let _: () = client
                .set("bench:key", "value", None, None, false)
                .await
                .unwrap();
            let permit = limiter
                .acquire(&Priority::Normal.into(), Duration::from_secs(1))
                .await
                .unwrap();
            permit.release().await.unwrap();
        }
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
                .acquire(black_box(&Priority::Normal.into()), Duration::from_secs(1))
                .await
                .unwrap();
            permit.release().await.unwrap();
        });
    });
    // The shape of one acquire call without its work: the same 9 keys and 6 arguments (default
    // limit, epoch, token, priority, mode, first call), a body that returns at once. Two of
    // these against the cycle below split its cost into the round trips and call overhead
    // (this) and the scripts' own work.
    let noop = fred::types::scripts::Script::from_lua("return 1");
    let settings = ScriptSettings::of(limiter.config());
    let keys: Vec<fred::types::Key> = Scripts::new("bench", settings).call_keys.clone();
    let args: Vec<String> = [
        "64",
        "1796300000000",
        "0123456789abcdef-1",
        "2",
        "wait",
        "1",
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
    // The floor of any cycle built from two scripts: a bare counting semaphore (read the
    // time and add the token to `holders`; remove it and tombstone it), with no queue, no
    // reclaim, no failover or instance checks; one key and three arguments per call (the
    // shape of the limiter's release call).
    let floor_acquire = fred::types::scripts::Script::from_lua(
        "local t = redis.call('TIME') \
         redis.call('ZADD', KEYS[1], t[1] * 1000 + 15000, ARGV[3]) return 1",
    );
    let floor_release = fred::types::scripts::Script::from_lua(
        "local t = redis.call('TIME') local n = redis.call('ZREM', KEYS[1], ARGV[3]) \
         redis.call('ZADD', KEYS[1] .. ':c', t[1] * 1000 + 15000, ARGV[3]) return n",
    );
    let floor_keys: Vec<fred::types::Key> = vec!["{talkgate:bench-floor}:holders".into()];
    // One floor cycle with a token never used before (the criterion function and the
    // paired rounds share the counter).
    let floor_token = std::sync::atomic::AtomicU64::new(0);
    let floor_cycle = || {
        let n = floor_token.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (client, keys) = (&client, &floor_keys);
        let (acquire, release) = (&floor_acquire, &floor_release);
        async move {
            let argv = vec![
                "64".to_owned(),
                String::new(),
                format!("0123456789abcdef-{n}"),
            ];
            let _: i64 = acquire
                .evalsha_with_reload(client, keys.clone(), argv.clone())
                .await
                .unwrap();
            let _: i64 = release
                .evalsha_with_reload(client, keys.clone(), argv)
                .await
                .unwrap();
        }
    };
    group.bench_function("script_floor", |b| {
        b.to_async(&rt).iter(floor_cycle);
    });
    group.finish();

    // The same comparison, paired: a SET, a cycle and the floor's cycle alternate, so all
    // three meet the same machine (on a shared VM the loopback latency drifts by tens of
    // percent between the seconds-long windows criterion measures each function in).
    // Five rounds; each prints its medians and ratios, then the median round.
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e6
    };
    // Tenants on (issue 25: within 2.6 × a SET): a named tenant with a weight and a cap, the
    // fullest path (its token names tenant and cap; the grant counts its holders).
    let tenant = domain::Admission::new(domain::Tenant::parse("acme").unwrap(), Priority::Normal)
        .with_share(domain::Share::new(3, Some(4)));
    let mut ratios = Vec::new();
    let mut tenant_ratios = Vec::new();
    for round in 1..=5u64 {
        let pairs = 2_000u64;
        let (mut sets, mut cycles, mut floors) = (Vec::new(), Vec::new(), Vec::new());
        let mut tenant_cycles = Vec::new();
        rt.block_on(async {
            for _ in 0..pairs {
                let t = std::time::Instant::now();
                let _: () = client
                    .set("bench:key", "value", None, None, false)
                    .await
                    .unwrap();
                sets.push(t.elapsed());
                let t = std::time::Instant::now();
                let permit = limiter
                    .acquire(&Priority::Normal.into(), Duration::from_secs(1))
                    .await
                    .unwrap();
                permit.release().await.unwrap();
                cycles.push(t.elapsed());
                let t = std::time::Instant::now();
                floor_cycle().await;
                floors.push(t.elapsed());
                let t = std::time::Instant::now();
                let permit = limiter
                    .acquire(&tenant, Duration::from_secs(1))
                    .await
                    .unwrap();
                permit.release().await.unwrap();
                tenant_cycles.push(t.elapsed());
            }
        });
        let (set, cycle, floor) = (median(&mut sets), median(&mut cycles), median(&mut floors));
        let with_tenant = median(&mut tenant_cycles);
        println!(
            "paired round {round} ({pairs} each, medians): SET {set:.1} µs, acquire+release \
             {cycle:.1} µs ({:.2}x), script floor {floor:.1} µs ({:.2}x), tenant (weight 3, \
             cap 4) {with_tenant:.1} µs ({:.2}x)",
            cycle / set,
            floor / set,
            with_tenant / set,
        );
        ratios.push((cycle / set, floor / set));
        tenant_ratios.push(with_tenant / set);
    }
    tenant_ratios.sort_by(f64::total_cmp);
    ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cycle, floor) = ratios[ratios.len() / 2];
    println!(
        "paired, median round: acquire+release / SET = {cycle:.2}x (target <= 2.3x), \
         script floor / SET = {floor:.2}x; tenant with weight and cap / SET = {:.2}x \
         (median of its rounds; target <= 2.6x)",
        tenant_ratios[tenant_ratios.len() / 2]
    );
    assert!(
        !limiter.is_degraded(),
        "the bench must measure redis, not the fallback"
    );
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
