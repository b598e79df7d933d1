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
//! [--instance-ttl-ms 2000] [--label x]` (`--help` lists them with their defaults). It writes `ready` to stdout once connected, `held` after each grant,
//! and exits 0 when every task is done.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
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

const USAGE: &str = "\
limiter-holder: holds permits of a shared Redis limiter (a test tool for multi-process runs)

Usage: limiter-holder --url <redis://host:port> --name <limiter> [options]

Options:
  --url <URL>          Redis URL (required)
  --name <NAME>        limiter name, shared by the processes under test (required)
  --limit <N>          global limit stored when Redis holds none [default: 1]
  --priority <P>       low, normal, high or critical [default: normal]
  --count <N>          tasks, each acquiring one permit [default: 1]
  --hold-ms <MS>       how long each permit is held [default: 100]
  --wait-ms <MS>       how long an acquire may wait [default: 30000]
  --lease-ms <MS>      lease of a slot [default: 15000]
  --waiter-ms <MS>     lifetime of a queued ticket [default: 6000]
  --instance-ttl-ms <MS>  lifetime of the instance record [default: 2000]
  --label <TEXT>       what is recorded in the grant order [default: the priority]
  -h, --help           print this help
  -V, --version        print the version";

/// The parsed command line.
struct Args {
    url: String,
    name: String,
    limit: u32,
    priority: Priority,
    count: usize,
    hold: Duration,
    wait: Duration,
    lease: Duration,
    waiter: Duration,
    instance_ttl: Duration,
    label: String,
}

/// Parses `--key value` pairs; every problem is collected, so one run names them all.
fn parse_args(args: &[String]) -> Result<Args, Vec<String>> {
    const KNOWN: &[&str] = &[
        "url",
        "name",
        "limit",
        "priority",
        "count",
        "hold-ms",
        "wait-ms",
        "lease-ms",
        "waiter-ms",
        "instance-ttl-ms",
        "label",
    ];
    let mut map: HashMap<&str, &str> = HashMap::new();
    let mut problems = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.strip_prefix("--").filter(|k| KNOWN.contains(k)) {
            Some(key) => match it.next() {
                Some(value) => {
                    map.insert(key, value);
                }
                None => problems.push(format!("--{key} needs a value")),
            },
            None => problems.push(format!("unknown argument {flag:?}")),
        }
    }
    let mut required = |key: &str| match map.get(key) {
        Some(v) => (*v).to_owned(),
        None => {
            problems.push(format!("--{key} is required"));
            String::new()
        }
    };
    let url = required("url");
    let name = required("name");
    fn number<T: std::str::FromStr + Copy>(
        map: &HashMap<&str, &str>,
        problems: &mut Vec<String>,
        key: &str,
        default: T,
    ) -> T {
        match map.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                problems.push(format!("--{key} {v:?} is not a whole number"));
                default
            }),
        }
    }
    let mut ms =
        |key: &str, default: u64| Duration::from_millis(number(&map, &mut problems, key, default));
    let (hold, wait, lease, waiter, instance_ttl) = (
        ms("hold-ms", 100),
        ms("wait-ms", 30_000),
        ms("lease-ms", 15_000),
        ms("waiter-ms", 6_000),
        ms("instance-ttl-ms", 2_000),
    );
    let limit = number(&map, &mut problems, "limit", 1u32);
    let count = number(&map, &mut problems, "count", 1usize);
    let priority = match map
        .get("priority")
        .map_or("normal", |s| s)
        .parse::<Priority>()
    {
        Ok(p) => p,
        Err(e) => {
            problems.push(format!("--priority: {e}"));
            Priority::Normal
        }
    };
    let label = map
        .get("label")
        .map_or_else(|| priority.to_string(), |s| (*s).to_owned());
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Args {
        url,
        name,
        limit,
        priority,
        count,
        hold,
        wait,
        lease,
        waiter,
        instance_ttl,
        label,
    })
}

#[allow(clippy::print_stderr)] // the binary's user-facing output
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        say(USAGE);
        return ExitCode::SUCCESS;
    }
    if argv.iter().any(|a| a == "--version" || a == "-V") {
        say(concat!("limiter-holder ", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(&argv) {
        Ok(args) => args,
        Err(problems) => {
            for p in problems {
                eprintln!("limiter-holder: {p}");
            }
            eprintln!("run `limiter-holder --help` for the usage");
            return ExitCode::from(2);
        }
    };
    let Args {
        url,
        name,
        priority,
        count,
        hold,
        wait,
        label,
        ..
    } = args;

    let mut config = RedisLimiterConfig::new(url.clone(), name.clone());
    config.max_concurrent = args.limit;
    config.lease_ttl = args.lease;
    config.waiter_ttl = args.waiter;
    config.instance_ttl = args.instance_ttl;
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
            match limiter.acquire(&priority.into(), wait).await {
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
    ExitCode::SUCCESS
}
