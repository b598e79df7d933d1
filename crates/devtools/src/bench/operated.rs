//! Scenario 9, operated for days: what the durable jobs leave on disk and what an idle
//! instance costs.
//!
//! 1. Disk: one http-api on the SQLite store (defaults but a short `JOB_RETENTION_SECS` and
//!    a queue bound of Q), N jobs submitted by 8 callers as fast as the queue takes them (a
//!    429 `job_queue_full` is retried after 100 ms, so the queue stays at its bound), each
//!    followed to its end by the workers. The WAL and the database file are sampled every
//!    250 ms and the jobs kept every second; after the last job ends, the run waits for the
//!    retention to purge them. Targets: WAL ≤ 64 MiB at every sample (issue 21); after the
//!    purge the WAL ≤ 1 MiB and the file ≤ a quarter of its peak. The file per retained job
//!    is reported.
//! 2. Idle: four http-api processes side by side, nothing submitted, each with the default
//!    4 × C workers: the memory store and the SQLite store on the memory limiter, the memory
//!    store and the Redis store on the Redis limiter (each store beside the memory store with
//!    the same limiter: the baseline). Over the window: CPU seconds of each process
//!    (`/proc/<pid>/stat`, 10 ms ticks), calls each made to its job store (`/stats`
//!    `jobs.store_calls`), and what Redis ran (`INFO commandstats`: scripts called, and all
//!    commands with those run inside scripts, the Redis limiter's heartbeats included).
//!    Targets: each store within 1.5 × its baseline's CPU (plus two ticks of resolution),
//!    ≤ 2 store calls per second.
//! 3. Claim latency: on the idle SQLite instance, 40 jobs one at a time; the time from the
//!    submit's answer until `GET /jobs/{id}` shows it left `queued` (polled every 2 ms),
//!    beside the same on the memory instance.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use test_support::redis::RedisServer;

use super::Ctx;
use super::jobs::job_body;
use super::report::{Section, Summary, Table, f1, f2};
use super::rig::{self, ApiOptions, PREFIX, Rig};
use crate::procs::{self, Server};

const MIB: f64 = 1024.0 * 1024.0;
/// Callers submitting in the disk part, and their pause after a 429 `job_queue_full`: the
/// queue stays at its bound without a storm of refused submits eating the 2 cores.
const CALLERS: usize = 8;
const FULL_BACKOFF: Duration = Duration::from_millis(100);

struct Params {
    jobs: usize,
    queue: u64,
    retention_secs: u64,
    idle_secs: f64,
    claims: usize,
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Jobs in the store, by state, from `/stats`.
fn jobs_of(stats: &Value, states: &[&str]) -> u64 {
    states
        .iter()
        .map(|s| stats["jobs"][format!("{s}_jobs")].as_u64().unwrap_or(0))
        .sum()
}

const ALL: [&str; 6] = [
    "queued",
    "creating",
    "processing",
    "done",
    "failed",
    "cancelled",
];
const ACTIVE: [&str; 3] = ["queued", "creating", "processing"];

struct Disk {
    accepted: usize,
    refused_full: u64,
    errors: u64,
    secs: f64,
    wal_max: u64,
    db_max: u64,
    /// The database file and the jobs it held, at the sample with the most jobs.
    db_at_most_jobs: (u64, u64),
    wal_end: u64,
    db_end: u64,
    kept_end: u64,
    failed_jobs: u64,
}

async fn disk_run(ctx: &Ctx, p: &Params, fake: &str) -> Result<Disk> {
    let client = &ctx.client;
    let db = procs::log_dir().join(format!("bench9-{}.jobs.sqlite3", std::process::id()));
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(companion(&db, suffix));
    }
    let wal = companion(&db, "-wal");
    let retention = p.retention_secs.to_string();
    let queue = p.queue.to_string();
    let db_text = db.display().to_string();
    let env = [
        ("JOB_STORE", "sqlite"),
        ("JOB_STORE_PATH", db_text.as_str()),
        ("JOB_QUEUE_MAX", &queue),
        ("JOB_RETENTION_SECS", &retention),
    ];
    let api = ApiOptions::new(fake, 8)
        .env(&env)
        .spawn(ctx, "bench9-http-api-disk")
        .await?;
    let base = api.base_url.clone();

    // Sizes every 250 ms, jobs kept every second, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, wal, db, client, base) = (
            Arc::clone(&stop),
            wal.clone(),
            db.clone(),
            client.clone(),
            base.clone(),
        );
        tokio::spawn(async move {
            let (mut wal_max, mut db_max, mut most) = (0u64, 0u64, (0u64, 0u64));
            let mut tick = 0u64;
            while !stop.load(Ordering::Relaxed) {
                wal_max = wal_max.max(file_len(&wal));
                let db_len = file_len(&db);
                db_max = db_max.max(db_len);
                if tick.is_multiple_of(4)
                    && let Ok(stats) = rig::api_stats(&client, &base).await
                {
                    let kept = jobs_of(&stats, &ALL);
                    if kept >= most.1 {
                        most = (file_len(&db), kept);
                    }
                }
                tick += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (wal_max, db_max, most)
        })
    };

    let url = Arc::new(format!("{base}{PREFIX}/jobs"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let full = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let submit = reqwest::Client::builder()
        .pool_max_idle_per_host(CALLERS)
        .timeout(Duration::from_secs(30))
        .build()?;
    let t = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (url, accepted, full, errors, submit) = (
            Arc::clone(&url),
            Arc::clone(&accepted),
            Arc::clone(&full),
            Arc::clone(&errors),
            submit.clone(),
        );
        let target = p.jobs;
        callers.spawn(async move {
            let mut n = 0usize;
            while accepted.load(Ordering::Relaxed) < target {
                n += 1;
                match submit.post(url.as_str()).json(&job_body(n)).send().await {
                    Ok(r) if r.status().as_u16() == 202 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 429 => {
                        full.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(FULL_BACKOFF).await;
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
    }
    let mut last_report = Instant::now();
    while !callers.is_empty() {
        if let Ok(Some(joined)) =
            tokio::time::timeout(Duration::from_secs(1), callers.join_next()).await
        {
            joined?;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  disk: {} of {} jobs accepted after {:.0} s, WAL {:.1} MiB, file {:.1} MiB",
                accepted.load(Ordering::Relaxed),
                p.jobs,
                t.elapsed().as_secs_f64(),
                file_len(&wal) as f64 / MIB,
                file_len(&db) as f64 / MIB
            );
        }
    }
    // Every job to its end.
    let ended = rig::time_until(Duration::from_secs(600), Duration::from_millis(250), || {
        let (client, base) = (client.clone(), base.clone());
        async move {
            rig::api_stats(&client, &base)
                .await
                .is_ok_and(|s| jobs_of(&s, &ACTIVE) == 0)
        }
    })
    .await;
    if ended.is_none() {
        bail!("jobs were still running 600 s after the last submit");
    }
    let secs = t.elapsed().as_secs_f64();
    let stats = rig::api_stats(client, &base).await?;
    let failed_jobs = jobs_of(&stats, &["failed"]);
    // The retention, the purge's period (a tenth of it, at least 1 s) and a checkpoint round.
    let purge_wait = Duration::from_secs(p.retention_secs + p.retention_secs / 10 + 4);
    println!(
        "  disk: all {} jobs ended after {secs:.0} s; waiting {:.0} s for the purge",
        p.jobs,
        purge_wait.as_secs_f64()
    );
    tokio::time::sleep(purge_wait).await;
    let stats = rig::api_stats(client, &base).await?;
    let kept_end = jobs_of(&stats, &ALL);
    stop.store(true, Ordering::Relaxed);
    let (wal_max, db_max, most) = sampler.await?;
    let (wal_end, db_end) = (file_len(&wal), file_len(&db));
    drop(api);
    Ok(Disk {
        accepted: accepted.load(Ordering::Relaxed),
        refused_full: full.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs,
        wal_max,
        db_max,
        db_at_most_jobs: most,
        wal_end,
        db_end,
        kept_end,
        failed_jobs,
    })
}

/// CPU seconds (user + system) of `pid` so far, from `/proc/<pid>/stat` (10 ms ticks).
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .context("utime and stime")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    Ok(ticks / 100.0)
}

/// Scripts Redis has run (`EVALSHA`, `EVAL`) and every command, those inside scripts
/// included, from `INFO commandstats` (the `INFO` calls left out).
fn redis_commands(port: u16) -> Result<(u64, u64)> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .context("redis-cli (apt-get install -y redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let calls =
        |l: &str| -> Option<u64> { l.split("calls=").nth(1)?.split(',').next()?.parse().ok() };
    let (mut scripts, mut all) = (0, 0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
    {
        let n = calls(line).unwrap_or(0);
        all += n;
        if line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:") {
            scripts += n;
        }
    }
    Ok((scripts, all))
}

struct Idle {
    store: &'static str,
    limiter: &'static str,
    cpu: f64,
    calls_per_sec: f64,
}

/// From leaving `queued`-submit's answer to the job no longer `queued`, ms.
async fn claim_latencies(client: &reqwest::Client, base: &str, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let resp = client
            .post(format!("{base}{PREFIX}/jobs"))
            .json(&job_body(i))
            .send()
            .await?;
        let t = Instant::now();
        let job: Value = resp.json().await?;
        let id = job["job_id"].as_str().context("a job id")?.to_owned();
        loop {
            let now = procs::get_json(client, &format!("{base}{PREFIX}/jobs/{id}")).await?;
            if now["status"] != "queued" {
                out.push(t.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("job {id} stayed queued for 10 s on an idle instance");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Let the instance go idle again between two.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(out)
}

/// One http-api of the idle part: C = 8, its default workers.
async fn idle_api(
    ctx: &Ctx,
    fake: &str,
    name: &str,
    redis: Option<&str>,
    env: &[(&str, &str)],
) -> Result<Server> {
    ApiOptions {
        redis,
        ..ApiOptions::new(fake, 8)
    }
    .env(env)
    .spawn(ctx, name)
    .await
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let p = if ctx.quick {
        Params {
            jobs: 4_000,
            queue: 500,
            retention_secs: 10,
            idle_secs: 20.0,
            claims: 20,
        }
    } else {
        Params {
            jobs: 100_000,
            queue: 2_000,
            retention_secs: 60,
            idle_secs: 60.0,
            claims: 40,
        }
    };
    let client = &ctx.client;
    // D-ID's render times at a thousandth (a talk renders in about 15 ms), so that its
    // 8 concurrent renders do not bound the run at 40 jobs per second: the service is what
    // is measured.
    let rig = Rig::build(ctx, "bench9-did-fake")
        .time_scale(0.001)
        .start()
        .await?;
    let base = rig.base.clone();

    let disk = disk_run(ctx, &p, &base).await?;

    // Idle: three instances side by side.
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let db = procs::log_dir().join(format!("bench9-idle-{}.jobs.sqlite3", std::process::id()));
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(companion(&db, suffix));
    }
    let db_text = db.display().to_string();
    let memory = idle_api(
        ctx,
        &base,
        "bench9-idle-memory",
        None,
        &[("JOB_STORE", "memory")],
    )
    .await?;
    let sqlite = idle_api(
        ctx,
        &base,
        "bench9-idle-sqlite",
        None,
        &[("JOB_STORE", "sqlite"), ("JOB_STORE_PATH", &db_text)],
    )
    .await?;
    let memory_on_redis = idle_api(
        ctx,
        &base,
        "bench9-idle-memory-redis-limiter",
        Some(&redis_url),
        &[("JOB_STORE", "memory")],
    )
    .await?;
    let on_redis = idle_api(ctx, &base, "bench9-idle-redis", Some(&redis_url), &[]).await?;
    let apis: [(&'static str, &'static str, &Server); 4] = [
        ("memory", "memory", &memory),
        ("sqlite", "memory", &sqlite),
        ("memory", "redis", &memory_on_redis),
        ("redis", "redis", &on_redis),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = |s: &Value| s["jobs"]["store_calls"].as_u64().unwrap_or(0);
    let mut before = Vec::new();
    for (_, _, api) in apis {
        let pid = api.pid().context("a running http-api")?;
        before.push((
            cpu_secs(pid)?,
            calls(&rig::api_stats(client, &api.base_url).await?),
        ));
    }
    let redis_before = redis_commands(redis.port())?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(p.idle_secs)).await;
    let window = t.elapsed().as_secs_f64();
    let redis_after = redis_commands(redis.port())?;
    let mut idle = Vec::new();
    for ((store, limiter, api), (cpu0, calls0)) in apis.into_iter().zip(before) {
        let pid = api.pid().context("a running http-api")?;
        let cpu = cpu_secs(pid)? - cpu0;
        // Minus the earlier /stats call's own count read (one call).
        let made = calls(&rig::api_stats(client, &api.base_url).await?).saturating_sub(calls0 + 1);
        idle.push(Idle {
            store,
            limiter,
            cpu,
            calls_per_sec: made as f64 / window,
        });
    }
    let scripts_rate = (redis_after.0 - redis_before.0) as f64 / window;
    let redis_rate = (redis_after.1 - redis_before.1) as f64 / window;

    let mut claim_memory = claim_latencies(client, &memory.base_url, p.claims).await?;
    let mut claim_sqlite = claim_latencies(client, &sqlite.base_url, p.claims).await?;
    let (claim_memory, claim_sqlite) = (
        Summary::of(&mut claim_memory),
        Summary::of(&mut claim_sqlite),
    );
    drop((memory, sqlite, memory_on_redis, on_redis, redis, rig));

    let mut section = Section::new(
        9,
        "Operated for days",
        &format!(
            "Disk: one http-api on the SQLite store (JOB_QUEUE_MAX = {q}, JOB_RETENTION_SECS = \
             {r}, otherwise defaults; C = 8), {n} jobs submitted by 8 callers as fast as the \
             queue takes them (a 429 `job_queue_full` is retried after 100 ms, so the queue \
             stays at its bound) and followed to their end by the workers; the WAL and the \
             database file sampled every 250 ms, the jobs kept every second; then the \
             retention's purge is waited for. Idle: four http-api processes side by side with \
             nothing submitted for {w:.0} s, each with the default 4 × C = 32 workers: the \
             memory store (baseline) and the SQLite store on the memory limiter, the memory \
             store (baseline) and the Redis store on the Redis limiter; \
             CPU from `/proc/<pid>/stat` (10 ms ticks), store calls from `/stats` \
             `jobs.store_calls`, Redis commands from `INFO commandstats` (the limiter's \
             heartbeats included). Claim latency: {c} jobs one at a time on the idle memory \
             and SQLite instances, from the submit's answer until `GET /jobs/{{id}}` (polled \
             every 2 ms) shows the job out of `queued`.",
            q = p.queue,
            r = p.retention_secs,
            n = p.jobs,
            w = p.idle_secs,
            c = p.claims,
        ),
    );
    let mut table = Table::new(
        "disk",
        &[
            "jobs accepted",
            "time (s)",
            "jobs/s",
            "429 job_queue_full (retried)",
            "other errors",
            "failed jobs",
            "WAL peak (MiB)",
            "file peak (MiB)",
            "file per retained job (bytes)",
            "after the purge: jobs, WAL, file (MiB)",
        ],
    );
    let per_job = disk.db_at_most_jobs.0 as f64 / disk.db_at_most_jobs.1.max(1) as f64;
    table.row(vec![
        disk.accepted.to_string(),
        f1(disk.secs),
        f1(disk.accepted as f64 / disk.secs),
        disk.refused_full.to_string(),
        disk.errors.to_string(),
        disk.failed_jobs.to_string(),
        f2(disk.wal_max as f64 / MIB),
        f2(disk.db_max as f64 / MIB),
        format!(
            "{per_job:.0} ({:.2} MiB for {} jobs)",
            disk.db_at_most_jobs.0 as f64 / MIB,
            disk.db_at_most_jobs.1
        ),
        format!(
            "{}, {}, {}",
            disk.kept_end,
            f2(disk.wal_end as f64 / MIB),
            f2(disk.db_end as f64 / MIB)
        ),
    ]);
    section.table(table);
    let mut idle_table = Table::new(
        "idle",
        &[
            "job store",
            "limiter",
            "CPU (s)",
            "baseline (memory store, same limiter)",
            "store calls/s",
        ],
    );
    let baseline = |limiter: &str| {
        idle.iter()
            .find(|i| i.store == "memory" && i.limiter == limiter)
            .map_or(0.0, |i| i.cpu)
    };
    for i in &idle {
        idle_table.row(vec![
            i.store.to_owned(),
            i.limiter.to_owned(),
            f2(i.cpu),
            f2(baseline(i.limiter)),
            f2(i.calls_per_sec),
        ]);
    }
    section.table(idle_table);
    let mut redis_table = Table::new(
        "idle Redis (two instances on it: the Redis limiter on both, the Redis job store on one)",
        &[
            "scripts/s (EVALSHA)",
            "commands/s (those inside scripts included)",
        ],
    );
    redis_table.row(vec![f2(scripts_rate), f2(redis_rate)]);
    section.table(redis_table);
    let mut claims = Table::new(
        "claim latency",
        &["store", "p50 (ms)", "p99 (ms)", "max (ms)"],
    );
    for (store, s) in [("memory", &claim_memory), ("sqlite", &claim_sqlite)] {
        claims.row(vec![store.to_owned(), f2(s.p50), f2(s.p99), f2(s.max)]);
    }
    section.table(claims);

    section.bound(
        "WAL ≤ 64 MiB at every sample",
        disk.wal_max <= 64 << 20 && disk.accepted >= p.jobs && disk.errors == 0,
        &format!(
            "peak {} MiB over {} jobs, {} errors",
            f2(disk.wal_max as f64 / MIB),
            disk.accepted,
            disk.errors
        ),
        "issue 21: the WAL grew ~290 KB per job and was never truncated",
    );
    section.bound(
        "after the purge: WAL ≤ 1 MiB, file ≤ 1/4 of its peak, no job kept",
        disk.wal_end <= 1 << 20 && disk.db_end * 4 <= disk.db_max && disk.kept_end == 0,
        &format!(
            "WAL {} MiB, file {} of {} MiB, {} jobs",
            f2(disk.wal_end as f64 / MIB),
            f2(disk.db_end as f64 / MIB),
            f2(disk.db_max as f64 / MIB),
            disk.kept_end
        ),
        "the file is proportional to the jobs kept, and comes back down when the retention \
         purges them (incremental vacuum)",
    );
    for i in idle.iter().filter(|i| i.store != "memory") {
        let base_cpu = baseline(i.limiter);
        section.ratio(
            &format!(
                "idle CPU, {} store ≤ 1.5 × the memory store's (both on the {} limiter)",
                i.store, i.limiter
            ),
            i.cpu <= 1.5 * base_cpu + 0.02,
            &format!("{} s vs {} s over {:.0} s", f2(i.cpu), f2(base_cpu), window),
            "issue 21: idle workers asked the store every 200 ms each (10× the memory store's \
             CPU); 0.02 s is two ticks, the resolution of a difference of /proc readings",
        );
        section.bound(
            &format!("{} store calls ≤ 2 per second idle", i.store),
            i.calls_per_sec <= 2.0,
            &format!("{} per second", f2(i.calls_per_sec)),
            "issue 21: was ≈ 160 per second with 32 workers",
        );
    }
    Ok(section)
}
