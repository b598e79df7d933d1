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
//! `tg:<CreateToken::derive(http_api::jobs::keyed_create_key(key, fingerprint))>`), no talk that belongs to no accepted job, and
//! did-fake's peak in-flight <= C. A figures table shows both scenarios side by side.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use did_client::CreateToken;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use test_support::redis::RedisServer;

use crate::procs::{self, FAKE_KEY, PREFIX, Server, fake_stats};

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
/// `extra_faults` (`--jobs-faults JSON`) are merged over the run's did-fake faults.
pub(crate) async fn run(quick: bool, seed: u64, extra_faults: Option<&Value>) -> Result<()> {
    println!(
        "\n==== jobs chaos run ({}): C = {LIMIT}, JOB_LEASE_SECS = {LEASE_SECS}, did-fake \
         p_create_then_fail 0.3 (mixed), in-flight cap C",
        if quick { "quick" } else { "full" }
    );
    let mut all = Vec::new();
    for (i, sc) in scenarios(quick).iter().enumerate() {
        let figures = scenario(sc, seed.wrapping_add(1000 * (i as u64 + 1)), extra_faults)
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

/// What one key's caller saw.
#[derive(Default)]
struct Submission {
    key: String,
    /// The body sent with every try.
    body: Value,
    /// Every job id a 2xx answer named for this key (one, unless idempotency broke).
    job_ids: Vec<String>,
    tries: u32,
    /// Tries sent to another instance than the try before.
    resubmits_other: u32,
    /// 2xx answers marked `Idempotent-Replayed: true`.
    replays: u32,
    /// A 4xx the caller cannot retry (the key is given up).
    rejected: Option<String>,
    /// The failures before the answer (connection errors, 5xx...).
    failures: Vec<String>,
}

/// The final read of one accepted job.
enum Final {
    Found(Value),
    NotFound,
    /// Not terminal at the deadline (the last view), or never read.
    Open(Option<Value>),
}

/// The figures of one scenario.
#[derive(Default)]
struct Figures {
    name: &'static str,
    instances: usize,
    submitted: usize,
    accepted: usize,
    not_accepted: Vec<String>,
    rejected: Vec<String>,
    multi_id_keys: Vec<String>,
    tries: u64,
    resubmits_other: u64,
    keys_retried: usize,
    replays: u64,
    done: usize,
    failed: usize,
    cancelled: usize,
    not_found: Vec<String>,
    stuck: Vec<String>,
    failed_codes: BTreeMap<String, usize>,
    done_one_talk: usize,
    done_bad: Vec<String>,
    other_bad: Vec<String>,
    other_with_talk: usize,
    talks_total: u64,
    talks_attributed: u64,
    unattributed: Vec<String>,
    peak: u64,
    rate_limited: u64,
    kills: usize,
    adopted: usize,
    taken_over: usize,
    multi_process: usize,
    left_creating: usize,
    submit_secs: f64,
    settle_secs: f64,
}

impl Figures {
    fn lost(&self) -> usize {
        self.not_found.len() + self.stuck.len()
    }

    fn checks(&self) -> Vec<(String, bool, String)> {
        let list = |v: &[String]| {
            let mut s = v
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n        ");
            if v.len() > 10 {
                s.push_str(&format!("\n        ... and {} more", v.len() - 10));
            }
            s
        };
        vec![
            (
                "every key accepted (202) within the bounded retries".to_owned(),
                self.not_accepted.is_empty() && self.rejected.is_empty(),
                list(&[self.not_accepted.clone(), self.rejected.clone()].concat()),
            ),
            (
                "one job id per idempotency key, whichever instance answered".to_owned(),
                self.multi_id_keys.is_empty(),
                list(&self.multi_id_keys),
            ),
            (
                "no job lost (every accepted job found and terminal)".to_owned(),
                self.lost() == 0,
                list(&[self.not_found.clone(), self.stuck.clone()].concat()),
            ),
            (
                "no job stuck (non-terminal at the deadline)".to_owned(),
                self.stuck.is_empty(),
                list(&self.stuck),
            ),
            (
                "exactly 1 talk at did-fake for every done job".to_owned(),
                self.done_bad.is_empty(),
                list(&self.done_bad),
            ),
            (
                "at most 1 talk for every other job".to_owned(),
                self.other_bad.is_empty(),
                list(&self.other_bad),
            ),
            (
                "no talk at did-fake outside the accepted jobs".to_owned(),
                self.unattributed.is_empty(),
                list(&self.unattributed),
            ),
            (
                format!("did-fake peak in-flight <= C ({LIMIT})"),
                self.peak <= u64::from(LIMIT),
                format!("peak {} > {LIMIT} ({} 429s)", self.peak, self.rate_limited),
            ),
            (
                "some jobs done (the run did real work)".to_owned(),
                self.done > 0,
                "no job ended done".to_owned(),
            ),
        ]
    }
}

/// A temp dir removed when dropped (the SQLite job store of scenario 2).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "talkgate-harness-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The instances of a scenario: fixed ports, the running process of each (killed when
/// dropped), and which are up now (what the callers pick from).
struct Fleet {
    tag: String,
    envs: Vec<(&'static str, String)>,
    ports: Vec<u16>,
    servers: Vec<Option<Server>>,
    alive: Arc<Vec<AtomicBool>>,
    restarts: Vec<usize>,
    /// Every process's log, and whether it was SIGKILLed.
    logs: Vec<(PathBuf, bool)>,
}

impl Fleet {
    async fn start(
        client: &reqwest::Client,
        tag: String,
        envs: Vec<(&'static str, String)>,
        n: usize,
    ) -> Result<Fleet> {
        let mut fleet = Fleet {
            tag,
            envs,
            ports: Vec::new(),
            servers: Vec::new(),
            alive: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            restarts: vec![0; n],
            logs: Vec::new(),
        };
        for i in 0..n {
            let port = procs::free_port()?;
            fleet.ports.push(port);
            fleet.servers.push(None);
            fleet.spawn(client, i).await?;
        }
        Ok(fleet)
    }

    fn bases(&self) -> Arc<Vec<String>> {
        Arc::new(
            self.ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
        )
    }

    /// Starts instance `i` on its port (retried: a killed process's socket may linger).
    async fn spawn(&mut self, client: &reqwest::Client, i: usize) -> Result<()> {
        let port = self.ports[i];
        let name = match self.restarts[i] {
            0 => format!("{}-http-api-{i}", self.tag),
            r => format!("{}-http-api-{i}-r{r}", self.tag),
        };
        let mut tries = 0;
        let server = loop {
            match procs::spawn_api(client, &name, procs::bin("http-api"), &self.envs, port).await {
                Ok(server) => break server,
                Err(e) if tries < 20 => {
                    tries += 1;
                    println!("    (start of {name} retried: {e:#})");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.logs.push((server.log.clone(), false));
        self.servers[i] = Some(server);
        self.alive[i].store(true, Ordering::SeqCst);
        Ok(())
    }

    /// SIGKILLs instance `i` and waits until the process is gone.
    async fn kill(&mut self, i: usize) -> Result<()> {
        self.alive[i].store(false, Ordering::SeqCst);
        if let Some(server) = self.servers[i].take() {
            server.signal("KILL").context("SIGKILL an instance")?;
            if let Some(entry) = self.logs.iter_mut().find(|(p, _)| *p == server.log) {
                entry.1 = true;
            }
            // Reaps it (the process is dead already; stop only waits for it).
            server.stop(Duration::from_secs(5)).await?;
        }
        self.restarts[i] += 1;
        Ok(())
    }

    /// From the processes' `job state changed` log lines: how many jobs had their state
    /// changed by more than one process, and how many a SIGKILLed process last moved to
    /// `creating` (killed mid-create, or between two create attempts).
    fn job_log_figures(&self) -> (usize, usize) {
        let mut writers: HashMap<String, HashSet<usize>> = HashMap::new();
        let mut left_creating = HashSet::new();
        for (n, (path, killed)) in self.logs.iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let mut last: HashMap<&str, &str> = HashMap::new();
            for line in text.lines().filter(|l| l.contains("job state changed")) {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .map(|v| v.trim_matches('"'))
                };
                if let (Some(id), Some(to)) = (field("job_id="), field("to=")) {
                    writers.entry(id.to_owned()).or_default().insert(n);
                    last.insert(id, to);
                }
            }
            if *killed {
                left_creating.extend(
                    last.into_iter()
                        .filter(|(_, to)| *to == "creating")
                        .map(|(id, _)| id.to_owned()),
                );
            }
        }
        let multi = writers.values().filter(|w| w.len() > 1).count();
        (multi, left_creating.len())
    }

    async fn stop(self) -> Result<()> {
        for server in self.servers.into_iter().flatten() {
            server.stop(Duration::from_secs(10)).await?;
        }
        Ok(())
    }
}

/// A random live instance (any instance if none is up), preferring another than `avoid`.
fn pick_live(rng: &mut StdRng, alive: &[AtomicBool], avoid: Option<usize>) -> usize {
    let up: Vec<usize> = (0..alive.len())
        .filter(|&i| alive[i].load(Ordering::SeqCst))
        .collect();
    let others: Vec<usize> = up.iter().copied().filter(|&i| Some(i) != avoid).collect();
    if !others.is_empty() {
        others[rng.random_range(0..others.len())]
    } else if !up.is_empty() {
        up[0]
    } else {
        rng.random_range(0..alive.len())
    }
}

async fn spawn_fake(
    client: &reqwest::Client,
    tag: &str,
    seed: u64,
    extra_faults: Option<&Value>,
) -> Result<Server> {
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
    procs::set_faults(client, &fake.base_url, faults).await?;
    Ok(fake)
}

async fn scenario(sc: &Scenario, seed: u64, extra_faults: Option<&Value>) -> Result<Figures> {
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
    let fake = spawn_fake(&client, &tag, seed, extra_faults).await?;

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
    let mut fleet = Fleet::start(&client, tag.clone(), envs, sc.instances).await?;
    let bases = fleet.bases();

    // The callers: one task per job, started evenly over the spread.
    let t0 = Instant::now();
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
    Ok(f)
}

/// One caller: the same key and body until a 2xx, moving to another instance after a
/// failure.
async fn submit(
    client: &reqwest::Client,
    bases: &[String],
    alive: &[AtomicBool],
    key: String,
    body: Value,
    mut rng: StdRng,
) -> Submission {
    let started = Instant::now();
    let mut sub = Submission {
        key,
        body: body.clone(),
        ..Submission::default()
    };
    let mut last: Option<usize> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        // The first try goes to any instance: a caller learns that one died from its failed
        // connection (a load balancer's view is as stale). Retries go to another live one.
        let i = match last {
            None => rng.random_range(0..bases.len()),
            Some(_) => pick_live(&mut rng, alive, last),
        };
        if last.is_some_and(|l| l != i) {
            sub.resubmits_other += 1;
        }
        last = Some(i);
        sub.tries += 1;
        let resp = client
            .post(format!("{}{PREFIX}/jobs", bases[i]))
            .header("Idempotency-Key", &sub.key)
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(resp) if resp.status().is_success() => {
                let replayed = resp
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|v| v == "true");
                let status = resp.status();
                match resp.json::<Value>().await {
                    Ok(v) => match v["job_id"].as_str() {
                        Some(id) => {
                            if replayed {
                                sub.replays += 1;
                            }
                            sub.job_ids.push(id.to_owned());
                            return sub;
                        }
                        None => {
                            sub.rejected =
                                Some(format!("{}: {status} without job_id: {v}", sub.key));
                            return sub;
                        }
                    },
                    // The body was cut (the instance died mid-answer): try again.
                    Err(e) => sub
                        .failures
                        .push(format!("instance {i}: {status}, body: {e}")),
                }
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                if status >= 500 || status == 409 || status == 429 {
                    sub.failures.push(format!("instance {i}: {status} {text}"));
                } else {
                    sub.rejected = Some(format!("{} on instance {i}: {status} {text}", sub.key));
                    return sub;
                }
            }
            Err(e) => sub.failures.push(format!("instance {i}: {e}")),
        }
        if started.elapsed() > SUBMIT_GIVE_UP {
            return sub;
        }
        let jitter = rng.random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_millis(800));
    }
}

/// Reads the jobs until each is terminal (or not found), or `deadline` passes.
async fn settle(
    client: &reqwest::Client,
    bases: &[String],
    alive: &[AtomicBool],
    ids: &[String],
    deadline: Instant,
    seed: u64,
) -> HashMap<String, Final> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7365_7474);
    let mut finals: HashMap<String, Final> = ids
        .iter()
        .map(|id| (id.clone(), Final::Open(None)))
        .collect();
    loop {
        let open: Vec<String> = finals
            .iter()
            .filter(|(_, f)| matches!(f, Final::Open(_)))
            .map(|(id, _)| id.clone())
            .collect();
        if open.is_empty() || Instant::now() > deadline {
            return finals;
        }
        for id in open {
            let i = pick_live(&mut rng, alive, None);
            let resp = client
                .get(format!("{}{PREFIX}/jobs/{id}", bases[i]))
                .send()
                .await;
            let Ok(resp) = resp else { continue };
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                finals.insert(id, Final::NotFound);
                continue;
            }
            if !resp.status().is_success() {
                continue;
            }
            let Ok(view) = resp.json::<Value>().await else {
                continue;
            };
            let terminal = matches!(
                view["status"].as_str(),
                Some("done" | "failed" | "cancelled")
            );
            finals.insert(
                id,
                if terminal {
                    Final::Found(view)
                } else {
                    Final::Open(Some(view))
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The user_data did-fake files the talk of the job a key's submit made under: did-client's
/// tag (no caller `user_data`) of the token http-api derives from the key (scope `public`:
/// the harness runs without `HTTP_API_TOKEN`) and the request's fingerprint.
fn user_data_of(sub: &Submission) -> String {
    let fingerprint = serde_json::from_value::<http_api::job_routes::TalkBody>(sub.body.clone())
        .ok()
        .and_then(|talk| {
            let (request, priority) = talk.request().ok()?;
            let callback = talk.callback_url().ok()?;
            Some(http_api::jobs::fingerprint(
                &request,
                priority,
                callback.as_deref(),
            ))
        })
        .unwrap_or_default();
    let key = ports::ScopedKey {
        scope: "public".to_owned(),
        key: sub.key.clone(),
    };
    let token = CreateToken::derive(&http_api::jobs::keyed_create_key(&key, &fingerprint));
    format!("tg:{token}")
}

#[allow(clippy::too_many_arguments)]
fn figures(
    sc: &Scenario,
    subs: &[Submission],
    ids: &[String],
    finals: &HashMap<String, Final>,
    stats: &Value,
    kills: usize,
    submit_secs: f64,
    settle_secs: f64,
) -> Figures {
    let mut f = Figures {
        name: sc.name,
        instances: sc.instances,
        submitted: subs.len(),
        kills,
        submit_secs,
        settle_secs,
        peak: stats["peak_in_flight"].as_u64().unwrap_or(u64::MAX),
        rate_limited: stats["rate_limited"].as_u64().unwrap_or(0),
        talks_total: stats["talks_created"].as_u64().unwrap_or(0),
        ..Figures::default()
    };
    for s in subs {
        f.tries += u64::from(s.tries);
        f.resubmits_other += u64::from(s.resubmits_other);
        f.replays += u64::from(s.replays);
        if s.tries > 1 {
            f.keys_retried += 1;
        }
        if let Some(r) = &s.rejected {
            f.rejected.push(r.clone());
        } else if s.job_ids.is_empty() {
            f.not_accepted.push(format!(
                "{}: no 202 in {} tries; last: {}",
                s.key,
                s.tries,
                s.failures.last().map_or("-", String::as_str)
            ));
        } else {
            f.accepted += 1;
        }
        let distinct: HashSet<&String> = s.job_ids.iter().collect();
        if distinct.len() > 1 {
            f.multi_id_keys
                .push(format!("{}: job ids {:?}", s.key, s.job_ids));
        }
    }
    let talks: BTreeMap<String, u64> = stats["talks_by_user_data"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let key_of: HashMap<&str, &Submission> = subs
        .iter()
        .flat_map(|s| s.job_ids.iter().map(move |id| (id.as_str(), s)))
        .collect();
    let mut ours = HashSet::new();
    for id in ids {
        let ud = key_of
            .get(id.as_str())
            .map_or_else(String::new, |s| user_data_of(s));
        let n = talks.get(&ud).copied().unwrap_or(0);
        f.talks_attributed += n;
        ours.insert(ud);
        match finals.get(id) {
            Some(Final::Found(view)) => {
                let status = view["status"].as_str().unwrap_or("?");
                let attempts = view["attempts"].as_array().cloned().unwrap_or_default();
                if attempts
                    .iter()
                    .any(|a| a["action"] == "create (looked up first)")
                {
                    f.adopted += 1;
                }
                let owners: HashSet<&str> = attempts
                    .iter()
                    .filter_map(|a| a["worker"].as_str())
                    .map(|w| w.split('/').next().unwrap_or(w))
                    .collect();
                if owners.len() > 1 {
                    f.taken_over += 1;
                }
                let summary = || {
                    format!(
                        "{id} ({status}, talk {}, error {}): {n} talk(s) at did-fake; attempts {}",
                        view["talk_id"],
                        view["error"]["code"],
                        Value::Array(attempts.clone())
                    )
                };
                match status {
                    "done" => {
                        f.done += 1;
                        if n == 1 {
                            f.done_one_talk += 1;
                        } else {
                            f.done_bad.push(summary());
                        }
                    }
                    other => {
                        if other == "failed" {
                            f.failed += 1;
                            let code = view["error"]["code"].as_str().unwrap_or("?").to_owned();
                            *f.failed_codes.entry(code).or_default() += 1;
                        } else {
                            f.cancelled += 1;
                        }
                        if n == 1 {
                            f.other_with_talk += 1;
                        }
                        if n > 1 {
                            f.other_bad.push(summary());
                        }
                    }
                }
            }
            Some(Final::NotFound) => f.not_found.push(format!("{id}: not found (404)")),
            Some(Final::Open(view)) => f.stuck.push(match view {
                Some(v) => format!(
                    "{id}: still {} (talk {}, attempts {})",
                    v["status"], v["talk_id"], v["attempts"]
                ),
                None => format!("{id}: never read"),
            }),
            None => f.stuck.push(format!("{id}: never read")),
        }
        if n > 1 && !matches!(finals.get(id), Some(Final::Found(_))) {
            f.other_bad
                .push(format!("{id}: {n} talks at did-fake (job not terminal)"));
        }
    }
    for (ud, n) in &talks {
        if !ours.contains(ud) {
            f.unattributed.push(format!("{ud}: {n} talk(s)"));
        }
    }
    f
}

fn print_figures(all: &[Figures]) {
    let rows: Vec<(&str, Vec<String>)> = vec![
        (
            "instances",
            all.iter().map(|f| f.instances.to_string()).collect(),
        ),
        (
            "kills (SIGKILL + restart)",
            all.iter().map(|f| f.kills.to_string()).collect(),
        ),
        (
            "jobs submitted (keys)",
            all.iter().map(|f| f.submitted.to_string()).collect(),
        ),
        (
            "jobs accepted",
            all.iter().map(|f| f.accepted.to_string()).collect(),
        ),
        (
            "POSTs sent (keys needing > 1)",
            all.iter()
                .map(|f| format!("{} ({})", f.tries, f.keys_retried))
                .collect(),
        ),
        (
            "re-submits to another instance",
            all.iter().map(|f| f.resubmits_other.to_string()).collect(),
        ),
        (
            "accepted as a replay of the key",
            all.iter().map(|f| f.replays.to_string()).collect(),
        ),
        (
            "terminal: done / failed / cancelled",
            all.iter()
                .map(|f| format!("{} / {} / {}", f.done, f.failed, f.cancelled))
                .collect(),
        ),
        (
            "failed by code",
            all.iter()
                .map(|f| {
                    if f.failed_codes.is_empty() {
                        "-".to_owned()
                    } else {
                        f.failed_codes
                            .iter()
                            .map(|(c, n)| format!("{c} {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                })
                .collect(),
        ),
        ("lost", all.iter().map(|f| f.lost().to_string()).collect()),
        (
            "stuck",
            all.iter().map(|f| f.stuck.len().to_string()).collect(),
        ),
        (
            "done jobs with exactly 1 talk",
            all.iter()
                .map(|f| format!("{} of {}", f.done_one_talk, f.done))
                .collect(),
        ),
        (
            "other jobs with > 1 talk (with 1)",
            all.iter()
                .map(|f| format!("{} ({})", f.other_bad.len(), f.other_with_talk))
                .collect(),
        ),
        (
            "talks at did-fake / done jobs",
            all.iter()
                .map(|f| format!("{} / {}", f.talks_total, f.done))
                .collect(),
        ),
        (
            "talks outside accepted jobs",
            all.iter()
                .map(|f| (f.talks_total.saturating_sub(f.talks_attributed)).to_string())
                .collect(),
        ),
        (
            "jobs that adopted a talk by look-up",
            all.iter().map(|f| f.adopted.to_string()).collect(),
        ),
        (
            "jobs with attempts by > 1 process",
            all.iter().map(|f| f.taken_over.to_string()).collect(),
        ),
        (
            "jobs moved by > 1 process (logs)",
            all.iter().map(|f| f.multi_process.to_string()).collect(),
        ),
        (
            "jobs a killed process left creating",
            all.iter().map(|f| f.left_creating.to_string()).collect(),
        ),
        (
            "peak in-flight at did-fake (C)",
            all.iter()
                .map(|f| format!("{} ({LIMIT})", f.peak))
                .collect(),
        ),
        (
            "did-fake 429s",
            all.iter().map(|f| f.rate_limited.to_string()).collect(),
        ),
        (
            "submit phase / settle (s)",
            all.iter()
                .map(|f| format!("{:.1} / {:.1}", f.submit_secs, f.settle_secs))
                .collect(),
        ),
    ];
    println!("\njobs chaos figures:");
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let cols: Vec<usize> = (0..all.len())
        .map(|c| {
            rows.iter()
                .map(|(_, v)| v[c].len())
                .chain([all[c].name.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut head = format!("    {:<width$}", "");
    for (c, f) in all.iter().enumerate() {
        head.push_str(&format!("  {:>w$}", f.name, w = cols[c]));
    }
    println!("{head}");
    for (name, values) in &rows {
        let mut line = format!("    {name:<width$}");
        for (c, v) in values.iter().enumerate() {
            line.push_str(&format!("  {v:>w$}", w = cols[c]));
        }
        println!("{line}");
    }
}
