//! The jobs chaos run of `cargo xtask harness`, after the mixed workload: durable jobs
//! (`POST /jobs` with an `Idempotency-Key`) submitted while http-api processes are SIGKILLed
//! and restarted on the same port, did-fake failing 30 % of the creates *after* making the
//! talk (`p_create_then_fail`) and capping the account at C requests in flight.
//!
//! Two scenarios, each with a fresh did-fake:
//! 1. **redis**: N jobs over 3 instances sharing one redis-server (jobs and limiter); a random
//!    instance is killed and restarted every 1.5–3 s.
//! 2. **sqlite**: N jobs on one instance with `JOB_STORE=sqlite` in a fresh temp dir; the
//!    instance is killed and restarted during the run.
//!
//! A caller per job sends its body with a unique key to a random live instance and, when the
//! connection fails or a 5xx / 409 / 429 comes back, sends the *same* key and body again to
//! another one (bounded, with backoff), until one answers 202. Then every accepted job is
//! read (through any live instance) until it is terminal or the deadline passes. Checks:
//! every key accepted, one job id per key, no job lost or stuck, did-fake made exactly one
//! talk for every done job and at most one for every other (the talk's `user_data` is
//! `tg:<CreateToken::derive(app::keyed_create_key(key, fingerprint))>`), no talk that belongs to no accepted job, and
//! did-fake's peak in-flight <= C. Every job has a `callback_url` at a receiver this run
//! starts, which answers 503 until the kills are over (so callbacks are pending and being
//! retried while instances die) and 200 after: every ended job must be called back, each
//! under one `webhook-id` across retries and kills, every attempt signed (checked by the
//! `standardwebhooks` verifier). A figures table shows both scenarios side by side, with
//! what the run cost at did-fake's API (calls answered and 429s, creates, polls, look-up
//! pages) and, when did-fake has a token bucket (`--jobs-faults '{"rate_limit_rps": R}'`),
//! the rate-bound time (`(answered - burst) / R`: no client can be done sooner with those
//! calls) against the time from the first submission to the last job's `finished_at`.
//!
//! Layout: this file holds the scenarios and runs one (`scenario`); `fleet` the instances,
//! `callers` the submitting and reading callers, `figures` what is measured and checked.

mod callers;
mod figures;
mod fleet;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use test_support::redis::RedisServer;

use crate::procs::{self, FAKE_KEY, Server, fake_stats};
use callers::{Final, Submission, settle, submit, user_data_of};
use figures::{Figures, figures, print_figures};
use fleet::{Fleet, TempDir, pick_live};

/// C: `MAX_CONCURRENT_REQUESTS` of every instance and did-fake's in-flight cap.
const LIMIT: u32 = 4;
/// `JOB_LEASE_SECS`: a killed worker's job is taken over this long after its last renewal.
const LEASE_SECS: u64 = 2;
/// did-fake's `--time-scale`: a talk renders in about 0.15–0.3 s, a 504 takes 0.29 s.
const TIME_SCALE: f64 = 0.01;
/// One HTTP exchange with an instance (a killed one fails at once; a hung one is a failure).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A caller gives up on a key after this long without a 202.
const SUBMIT_GIVE_UP: Duration = Duration::from_secs(30);
/// Pause between two kills, uniform in this range (seconds).
const KILL_EVERY: (f64, f64) = (1.5, 3.0);
/// The instances' `CALLBACK_SECRET`, and what the harness verifies with.
pub(super) const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Where the instances may send callbacks: the harness's receiver on loopback, over http.
pub(super) fn callback_policy() -> domain::DestinationPolicy {
    domain::DestinationPolicy {
        allow_http: true,
        allowed_nets: vec!["127.0.0.0/8".parse().expect("a network")],
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Redis,
    Sqlite,
}

struct Scenario {
    name: &'static str,
    store: Store,
    instances: usize,
    jobs: usize,
    kills: usize,
    /// Submissions start evenly over this long (so kills hit submissions too).
    spread: Duration,
    /// Every accepted job must be terminal this long after the last submission answered.
    settle: Duration,
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    if quick {
        vec![
            Scenario {
                name: "redis",
                store: Store::Redis,
                instances: 3,
                jobs: 40,
                kills: 2,
                spread: Duration::from_secs(5),
                settle: Duration::from_secs(40),
            },
            Scenario {
                name: "sqlite",
                store: Store::Sqlite,
                instances: 1,
                jobs: 20,
                kills: 1,
                spread: Duration::from_secs(3),
                settle: Duration::from_secs(40),
            },
        ]
    } else {
        vec![
            Scenario {
                name: "redis",
                store: Store::Redis,
                instances: 3,
                jobs: 200,
                kills: 4,
                spread: Duration::from_secs(10),
                settle: Duration::from_secs(120),
            },
            Scenario {
                name: "sqlite",
                store: Store::Sqlite,
                instances: 1,
                jobs: 100,
                kills: 2,
                spread: Duration::from_secs(5),
                settle: Duration::from_secs(120),
            },
        ]
    }
}

/// Runs both scenarios, prints the figures and the checks; fails if a check fails.
/// `extra_faults` (`--jobs-faults JSON`) are merged over the run's did-fake faults,
/// `extra_env` (`--jobs-env`) is set for the instances after the run's own variables.
pub(crate) async fn run(
    quick: bool,
    seed: u64,
    extra_faults: Option<&Value>,
    extra_env: &[(String, String)],
) -> Result<()> {
    println!(
        "\n==== jobs chaos run ({}): C = {LIMIT}, JOB_LEASE_SECS = {LEASE_SECS}, did-fake \
         p_create_then_fail 0.3 (mixed), in-flight cap C",
        if quick { "quick" } else { "full" }
    );
    let mut all = Vec::new();
    for (i, sc) in scenarios(quick).iter().enumerate() {
        let figures = scenario(
            sc,
            seed.wrapping_add(1000 * (i as u64 + 1)),
            extra_faults,
            extra_env,
        )
        .await
        .with_context(|| format!("jobs scenario {}", sc.name))?;
        all.push(figures);
    }
    print_figures(&all);
    println!("\njobs invariants:");
    let mut failed = 0;
    for f in &all {
        for (name, ok, detail) in f.checks() {
            if ok {
                println!("    PASS  {}: {name}", f.name);
            } else {
                failed += 1;
                println!("    FAIL  {}: {name}\n        {detail}", f.name);
            }
        }
    }
    if failed > 0 {
        bail!(
            "jobs chaos run: {failed} invariant(s) violated (logs in {})",
            procs::log_dir().display()
        );
    }
    println!("\njobs chaos run: all invariants hold");
    Ok(())
}

/// did-fake for a scenario, and the faults it was given.
async fn spawn_fake(
    client: &reqwest::Client,
    tag: &str,
    seed: u64,
    extra_faults: Option<&Value>,
) -> Result<(Server, Value)> {
    let fake = procs::spawn_fake(
        client,
        &format!("{tag}-did-fake"),
        procs::bin("did-fake"),
        TIME_SCALE,
        Some(seed),
    )
    .await?;
    let mut faults = json!({
        "p_create_then_fail": 0.3,
        "create_then_fail": "mixed",
        "max_in_flight_per_key": LIMIT,
        "latency": {"all": {"min_ms": 2, "max_ms": 20}},
    });
    if let (Some(extra), Some(obj)) = (
        extra_faults.and_then(Value::as_object),
        faults.as_object_mut(),
    ) {
        obj.extend(extra.clone());
        println!("    did-fake faults: {faults}");
    }
    procs::set_faults(client, &fake.base_url, faults.clone()).await?;
    Ok((fake, faults))
}

async fn scenario(
    sc: &Scenario,
    seed: u64,
    extra_faults: Option<&Value>,
    extra_env: &[(String, String)],
) -> Result<Figures> {
    println!(
        "\n-- jobs scenario {}: {} jobs over {} instance(s) ({} store), {} kill(s)",
        sc.name,
        sc.jobs,
        sc.instances,
        match sc.store {
            Store::Redis => "redis",
            Store::Sqlite => "sqlite",
        },
        sc.kills
    );
    let client = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let tag = format!("harness-jobs-{}", sc.name);
    let (fake, faults) = spawn_fake(&client, &tag, seed, extra_faults).await?;
    // 503 until the kills are over: callbacks wait and retry while instances die.
    let receiver = test_support::receiver::Receiver::start(503).await;

    let mut envs: Vec<(&'static str, String)> = vec![
        ("D_ID_API_KEY", FAKE_KEY.to_owned()),
        ("D_ID_BASE_URL", fake.base_url.clone()),
        ("MAX_CONCURRENT_REQUESTS", LIMIT.to_string()),
        ("JOB_LEASE_SECS", LEASE_SECS.to_string()),
        ("POLL_INTERVAL_SECS", "0.1".to_owned()),
        ("MAX_WAIT_SECS", "4".to_owned()),
        ("LIMITER_WAIT_TIMEOUT_SECS", "30".to_owned()),
        ("SHUTDOWN_GRACE_SECS", "1".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        ("CALLBACK_SECRET", CALLBACK_SECRET.to_owned()),
        ("CALLBACK_ALLOW_HTTP", "true".to_owned()),
        ("CALLBACK_ALLOWED_NETS", "127.0.0.0/8".to_owned()),
        ("CALLBACK_FIRST_RETRY_SECS", "0.2".to_owned()),
        ("CALLBACK_TIMEOUT_SECS", "1".to_owned()),
    ];
    // Kept alive to the end of the scenario (dropping them stops Redis / removes the dir).
    let mut redis = None;
    let mut dir = None;
    match sc.store {
        Store::Redis => {
            let server = RedisServer::start();
            envs.push(("REDIS_URL", server.url()));
            envs.push(("JOB_STORE", "redis".to_owned()));
            redis = Some(server);
        }
        Store::Sqlite => {
            let d = TempDir::new(sc.name)?;
            envs.push(("JOB_STORE", "sqlite".to_owned()));
            envs.push((
                "JOB_STORE_PATH",
                d.0.join("jobs.sqlite3").display().to_string(),
            ));
            dir = Some(d);
        }
    }
    let mut envs: Vec<(String, String)> = envs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    if !extra_env.is_empty() {
        println!("    instance variables: {extra_env:?}");
        envs.extend(extra_env.iter().cloned());
    }
    let mut fleet = Fleet::start(&client, tag.clone(), envs, sc.instances).await?;
    let bases = fleet.bases();

    // The callers: one task per job, started evenly over the spread.
    let t0 = Instant::now();
    let t0_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut callers = Vec::new();
    for i in 0..sc.jobs {
        let client = client.clone();
        let bases = Arc::clone(&bases);
        let alive = Arc::clone(&fleet.alive);
        let key = format!("{tag}-{seed}-{i}");
        let priority = ["low", "normal", "high", "critical"][i % 4];
        let body = json!({
            "audio_url": format!("https://example.com/harness/speech-{i}.wav"),
            "source_url": format!("https://example.com/harness/face-{i}.png"),
            "priority": priority,
            "callback_url": receiver.url(&format!("/cb/{i}")),
        });
        let start = t0 + sc.spread.mul_f64(i as f64 / sc.jobs as f64);
        let rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
        callers.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            submit(&client, &bases, &alive, key, body, rng).await
        }));
    }

    // The killer, meanwhile, in this task (it owns the processes).
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut kills = 0;
    for _ in 0..sc.kills {
        let pause = rng.random_range(KILL_EVERY.0..KILL_EVERY.1);
        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
        let i = rng.random_range(0..sc.instances);
        let t = t0.elapsed().as_secs_f64();
        fleet.kill(i).await?;
        kills += 1;
        if sc.store == Store::Sqlite {
            // One instance with an in-memory limiter: the restarted process starts with C
            // free slots while did-fake may still be answering the dead one (a 504 takes
            // 0.29 s). Wait for those to end (bounded) so the cap measures the engine, not
            // the limiter's amnesia across restarts.
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                let stats = fake_stats(&client, &fake.base_url).await?;
                if stats["in_flight"].as_u64() == Some(0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        fleet.spawn(&client, i).await?;
        println!(
            "    SIGKILL instance {i} at {t:.2} s, restarted on the same port after {:.2} s",
            t0.elapsed().as_secs_f64() - t
        );
    }

    receiver.set_status(200);
    let mut subs = Vec::new();
    for c in callers {
        subs.push(c.await.context("a jobs caller panicked")?);
    }
    let submit_secs = t0.elapsed().as_secs_f64();

    // Every accepted job until terminal, or the deadline.
    let ids: Vec<String> = subs
        .iter()
        .filter_map(|s| s.job_ids.first().cloned())
        .collect();
    let settle_started = Instant::now();
    let finals = settle(
        &client,
        &bases,
        &fleet.alive,
        &ids,
        settle_started + sc.settle,
        seed,
    )
    .await;
    let settle_secs = settle_started.elapsed().as_secs_f64();

    // A grace for anything late (a zombie create would show up in the talk counts), then stop
    // the instances and read did-fake's final counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (multi_process, left_creating) = fleet.job_log_figures();
    fleet.stop().await?;
    let stats = fake_stats(&client, &fake.base_url).await?;
    fake.stop(Duration::from_secs(5)).await?;
    drop(redis);
    drop(dir);

    let received = receiver.received();
    let mut f = figures(
        sc,
        &subs,
        &ids,
        &finals,
        &stats,
        kills,
        submit_secs,
        settle_secs,
    );
    f.multi_process = multi_process;
    f.left_creating = left_creating;
    f.rate = figures::rate_figures(&faults, &stats, &finals, t0_ms);
    f.callbacks = figures::callbacks(&finals, &received);
    Ok(f)
}
