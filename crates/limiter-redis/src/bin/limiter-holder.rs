//! `limiter-holder`: one OS process that shares a Redis limiter with others, for the
//! multi-process and crash tests (not a user-facing tool).
//!
//! It starts `--count` tasks; each acquires a permit at `--priority` (waiting up to
//! `--wait-ms`), records itself in Redis, holds the permit for `--hold-ms`, and releases it.
//! Bookkeeping keys, all under `{talkgate-test:<name>}`:
//! - `:cur` / `:peak`: holders alive now across all processes, and the highest value seen
//!   (updated atomically by one script, so `peak` is the real global concurrency);
//! - `:order`: a list of `--label` values in grant order;
//! - `:failed`: a counter of acquires that did not get a permit.
//!
//! Usage: `limiter-holder --url redis://127.0.0.1:6379 --name n --limit 2 --priority high
//! --count 3 --hold-ms 100 [--wait-ms 30000] [--lease-ms 15000] [--waiter-ms 6000]
//! [--label x]`. It writes `ready` to stdout once connected, `held` after each grant,
//! and exits 0 when every task is done.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use domain::Priority;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface, ListInterface, LuaInterface};
use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::ConcurrencyLimiter;

const ENTER: &str = r#"
local c = redis.call('INCR', KEYS[1])
if c > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], c) end
redis.call('RPUSH', KEYS[3], ARGV[1])
return c
"#;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn arg_map() -> HashMap<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.chunks(2)
        .filter_map(|pair| match pair {
            [k, v] => Some((k.trim_start_matches("--").to_owned(), v.clone())),
            _ => None,
        })
        .collect()
}

fn ms(args: &HashMap<String, String>, key: &str, default: u64) -> Duration {
    Duration::from_millis(args.get(key).map_or(default, |v| v.parse().expect(key)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = arg_map();
    let url = args.get("url").expect("--url").clone();
    let name = args.get("name").expect("--name").clone();
    let priority: Priority = args
        .get("priority")
        .map_or("normal", |s| s)
        .parse()
        .expect("priority");
    let count: usize = args.get("count").map_or(1, |v| v.parse().expect("count"));
    let hold = ms(&args, "hold-ms", 100);
    let wait = ms(&args, "wait-ms", 30_000);
    let label = args
        .get("label")
        .cloned()
        .unwrap_or_else(|| priority.to_string());

    let mut config = RedisLimiterConfig::new(url.clone(), name.clone());
    config.max_concurrent = args.get("limit").map_or(1, |v| v.parse().expect("limit"));
    config.lease_ttl = ms(&args, "lease-ms", 15_000);
    config.waiter_ttl = ms(&args, "waiter-ms", 6_000);
    let limiter = Arc::new(
        RedisLimiter::connect_with_memory_fallback(config)
            .await
            .expect("limiter"),
    );
    let redis = Builder::from_config(Config::from_url(&url).expect("url"))
        .build()
        .expect("client");
    redis.init().await.expect("redis for bookkeeping");
    let tag = format!("{{talkgate-test:{name}}}");
    let keys = [
        format!("{tag}:cur"),
        format!("{tag}:peak"),
        format!("{tag}:order"),
    ];
    say("ready");

    let mut tasks = Vec::new();
    for _ in 0..count {
        let (limiter, redis, keys, label) = (
            Arc::clone(&limiter),
            redis.clone(),
            keys.clone(),
            label.clone(),
        );
        let failed = format!("{tag}:failed");
        tasks.push(tokio::spawn(async move {
            match limiter.acquire(priority, wait).await {
                Ok(permit) => {
                    let _: i64 = redis
                        .eval(ENTER, keys.to_vec(), vec![label])
                        .await
                        .expect("enter");
                    say("held");
                    tokio::time::sleep(hold).await;
                    let _: i64 = redis.decr(&keys[0]).await.expect("leave");
                    permit.release().await.expect("release");
                }
                Err(_) => {
                    let _: i64 = redis.incr(failed).await.expect("count failure");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let _: i64 = redis.llen(&keys[2]).await.unwrap_or(0);
    let _ = redis.quit().await;
}
