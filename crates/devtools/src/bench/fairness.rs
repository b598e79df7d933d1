//! Scenario 11, fair share between tenants: closed-loop tenants saturating one priority
//! against limiter objects (memory, and three Redis limiter instances sharing one
//! redis-server), with their weights and beside the same load without weights (the
//! baseline: every tenant the default share, which is arrival order). A second run mixes a
//! capped tenant and a `high` stream into the saturated `normal` load: its holders are counted
//! by the callers, and priority inversions are counted from every acquire's start and grant.
//! A third part is the job stores' claim order: a heavy tenant's backlog queued first, a
//! light one's after, and the share of the first claims each gets (memory, SQLite, and three
//! Redis store clients claiming in turn), with weights and without.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use domain::{Admission, Priority, Share, Tenant};
use limiter_memory::MemoryLimiter;
use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::ConcurrencyLimiter;
use rand::Rng;
use serde_json::json;
use test_support::redis::RedisServer;
use tokio::sync::Mutex;

use super::Ctx;
use super::report::{Section, Table, f1};

/// The slots.
const LIMIT: u32 = 6;
/// Each permit is held U(0.5, 1.5) × this.
const HOLD_MS: f64 = 20.0;
/// Callers per saturating tenant (each tenant alone could fill every slot twice over).
const CALLERS: usize = 12;
/// The heavy tenant's weight (the light one has 1): its share should be w / (w + 1).
const WEIGHT: u32 = 3;
/// How far the measured share may be from w / (w + 1).
const TOLERANCE: f64 = 0.05;

/// One acquire as its caller saw it (seconds since the run's start).
#[derive(Debug, Clone)]
struct Record {
    tenant: &'static str,
    priority: Priority,
    start: f64,
    grant: f64,
}

/// One closed-loop caller: its tenant, priority, share and pause between acquires.
#[derive(Debug, Clone, Copy)]
struct Caller {
    tenant: &'static str,
    priority: Priority,
    share: Share,
    think: Duration,
}

struct Run {
    name: String,
    records: Vec<Record>,
    /// The most slots the capped tenant held at once, as its callers counted.
    capped_max: u32,
    degraded: bool,
}

impl Run {
    /// Grants to `tenant` at `priority` made after the warm-up.
    fn grants(&self, tenant: &str, priority: Priority, from: f64) -> usize {
        self.records
            .iter()
            .filter(|r| r.tenant == tenant && r.priority == priority && r.grant >= from)
            .count()
    }

    /// The heavy tenant's share of the two saturating tenants' grants after the warm-up.
    fn heavy_share(&self, from: f64) -> f64 {
        let heavy = self.grants("heavy", Priority::Normal, from) as f64;
        let light = self.grants("light", Priority::Normal, from) as f64;
        heavy / (heavy + light).max(1.0)
    }
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let secs = if ctx.quick { 1.5 } else { 4.0 };
    let warmup = 0.3;
    let weighted = |w: u32| Share::new(w, None);
    let two = |heavy: Share, light: Share| {
        let mut callers = Vec::new();
        for _ in 0..CALLERS {
            callers.push(Caller {
                tenant: "heavy",
                priority: Priority::Normal,
                share: heavy,
                think: Duration::ZERO,
            });
            callers.push(Caller {
                tenant: "light",
                priority: Priority::Normal,
                share: light,
                think: Duration::ZERO,
            });
        }
        callers
    };
    let fair = two(weighted(WEIGHT), weighted(1));
    let unweighted = two(Share::default(), Share::default());
    // The mixed run: heavy (weight 3) saturating `normal`, a tenant capped at 2 saturating
    // it too, and a light tenant's `high` stream with pauses.
    let mut mixed = Vec::new();
    for _ in 0..CALLERS {
        mixed.push(Caller {
            tenant: "heavy",
            priority: Priority::Normal,
            share: weighted(WEIGHT),
            think: Duration::ZERO,
        });
    }
    for _ in 0..6 {
        mixed.push(Caller {
            tenant: "capped",
            priority: Priority::Normal,
            share: Share::new(1, Some(2)),
            think: Duration::ZERO,
        });
    }
    for _ in 0..3 {
        mixed.push(Caller {
            tenant: "light",
            priority: Priority::High,
            share: weighted(1),
            think: Duration::from_millis(15),
        });
    }
    println!(
        "  limit {LIMIT}, hold U(0.5, 1.5) × {HOLD_MS} ms, {CALLERS} closed-loop callers per \
         saturating tenant, {secs} s per run ({warmup} s warm-up not counted)"
    );

    let mut runs = Vec::new();
    let memory = || vec![Arc::new(MemoryLimiter::new(LIMIT)) as Arc<dyn ConcurrencyLimiter>];
    runs.push(drive("memory, weights 3:1", &memory(), &fair, secs).await?);
    runs.push(drive("memory, baseline: no weights", &memory(), &unweighted, secs).await?);
    runs.push(drive("memory, cap 2 + high stream", &memory(), &mixed, secs).await?);

    let redis = RedisServer::start();
    let url = redis.url();
    for (i, (name, callers)) in [
        ("Redis ×3, weights 3:1", &fair),
        ("Redis ×3, baseline: no weights", &unweighted),
        ("Redis ×3, cap 2 + high stream", &mixed),
    ]
    .into_iter()
    .enumerate()
    {
        let mut shared: Vec<Arc<dyn ConcurrencyLimiter>> = Vec::new();
        for _ in 0..3 {
            let config = RedisLimiterConfig {
                max_concurrent: LIMIT,
                ..RedisLimiterConfig::new(&url, format!("bench11-{i}"))
            };
            let fallback = Arc::new(MemoryLimiter::new(LIMIT));
            shared.push(Arc::new(
                RedisLimiter::connect(config, fallback)
                    .await
                    .context("connecting the Redis limiter")?,
            ));
        }
        runs.push(drive(name, &shared, callers, secs).await?);
    }
    let claim_runs = claim_runs(&redis).await?;
    drop(redis);
    let mut section = report(&runs, secs, warmup)?;
    claims_report(&mut section, &claim_runs);
    Ok(section)
}

/// Jobs each saturating tenant queues in the claims part.
const BACKLOG: u64 = 400;
/// Claims counted (both tenants still have jobs queued throughout).
const CLAIMS: usize = 200;

/// One claims run: the store, whether the tenants had weights, and heavy's claims of the first
/// [`CLAIMS`].
struct ClaimRun {
    name: String,
    weights: bool,
    heavy: usize,
}

fn queued_job(n: u64, tenant: &Tenant, share: Share) -> Result<ports::NewJob> {
    let digits = format!("{n:022}");
    Ok(ports::NewJob {
        id: ports::JobId::from_chars(digits.chars()).context("a job id")?,
        priority: Priority::Normal,
        tenant: tenant.clone(),
        share,
        request: domain::TalkRequest::new(
            Some("https://example.test/face.jpg".into()),
            domain::Script::Audio {
                audio_url: format!("https://example.test/voice-{n}.wav"),
            },
        )?,
        callback_url: None,
        idempotency: None,
        fingerprint: format!("fp-{n}"),
        webhook_token: None,
        now_ms: 1_800_000_000_000 + n,
        lease: None,
        status: ports::JobStatus::Queued,
        trace: None,
    })
}

/// Queues heavy's backlog, then light's, through `stores[0]`, then claims [`CLAIMS`] jobs
/// through the stores in turn; returns how many were heavy's (its jobs are the first
/// [`BACKLOG`] numbers). With `weights` they are two tenants of weights 3 and 1; without, the
/// baseline, both callers are one tenant, as every caller was before tenants (arrival order).
async fn claim_share(stores: &[Arc<dyn ports::JobStore>], weights: bool) -> Result<usize> {
    let (heavy, light, hs, ls) = if weights {
        (
            Tenant::parse("heavy")?,
            Tenant::parse("light")?,
            Share::new(WEIGHT, None),
            Share::new(1, None),
        )
    } else {
        (
            Tenant::public(),
            Tenant::public(),
            Share::default(),
            Share::default(),
        )
    };
    let limits = ports::QueueLimits {
        max_queued: 10 * BACKLOG,
    };
    for n in 0..BACKLOG {
        stores[0].submit(queued_job(n, &heavy, hs)?, limits).await?;
    }
    for n in BACKLOG..2 * BACKLOG {
        stores[0].submit(queued_job(n, &light, ls)?, limits).await?;
    }
    let mut heavy_claims = 0;
    for i in 0..CLAIMS {
        let store = &stores[i % stores.len()];
        let terms = ports::LeaseTerms::new("bench", Duration::from_secs(60), 1_800_000_100_000);
        let job = store.claim(terms).await?.context("a queued job to claim")?;
        if job
            .fingerprint
            .strip_prefix("fp-")
            .and_then(|n| n.parse::<u64>().ok())
            < Some(BACKLOG)
        {
            heavy_claims += 1;
        }
    }
    Ok(heavy_claims)
}

async fn claim_runs(redis: &RedisServer) -> Result<Vec<ClaimRun>> {
    let dir = std::env::temp_dir().join(format!("talkgate-bench11-{}", std::process::id()));
    let mut out = Vec::new();
    for weights in [true, false] {
        let memory: Arc<dyn ports::JobStore> = Arc::new(jobstore_memory::MemoryJobStore::new());
        let path = dir.join(format!("jobs-{weights}.db"));
        let _ = std::fs::remove_file(&path);
        let sqlite: Arc<dyn ports::JobStore> = Arc::new(
            tokio::task::spawn_blocking(move || jobstore_sqlite::SqliteJobStore::open(path))
                .await??,
        );
        let name = format!("bench11-claims-{weights}-{}", std::process::id());
        let mut redis_stores: Vec<Arc<dyn ports::JobStore>> = Vec::new();
        for _ in 0..3 {
            let config = limiter_redis::RedisConnectionConfig::new(redis.url());
            redis_stores.push(Arc::new(
                jobstore_redis::RedisJobStore::connect(config, &name)
                    .await
                    .context("connecting the Redis job store")?,
            ));
        }
        for (store, stores) in [
            ("memory", vec![memory]),
            ("SQLite", vec![sqlite]),
            ("Redis, 3 clients claiming in turn", redis_stores),
        ] {
            out.push(ClaimRun {
                name: store.to_owned(),
                weights,
                heavy: claim_share(&stores, weights).await?,
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn claims_report(section: &mut Section, runs: &[ClaimRun]) {
    let mut table = Table::new(
        &format!(
            "Job claims: heavy (weight {WEIGHT}) queues {BACKLOG} jobs, then light (weight 1) \
             {BACKLOG}, all `normal`; the first {CLAIMS} claims (both still have jobs queued)"
        ),
        &[
            "store",
            "two tenants, weights 3:1: heavy's claims",
            "baseline, one tenant (arrival order): heavy's claims",
        ],
    );
    let expected = f64::from(WEIGHT) / f64::from(WEIGHT + 1);
    for store in ["memory", "SQLite", "Redis, 3 clients claiming in turn"] {
        let find = |w: bool| runs.iter().find(|r| r.name == store && r.weights == w);
        let (Some(fair), Some(base)) = (find(true), find(false)) else {
            continue;
        };
        let pct = |n: usize| 100.0 * n as f64 / CLAIMS as f64;
        table.row(vec![
            store.to_owned(),
            format!("{} ({} %)", fair.heavy, f1(pct(fair.heavy))),
            format!("{} ({} %)", base.heavy, f1(pct(base.heavy))),
        ]);
        section.ratio(
            &format!("{store}: job claims at weights 3:1 give heavy 75 % ± 5 %"),
            (pct(fair.heavy) / 100.0 - expected).abs() <= TOLERANCE,
            &format!(
                "{} % (baseline, both callers one tenant as before tenants, same run: {} %: \
                 heavy's backlog came first)",
                f1(pct(fair.heavy)),
                f1(pct(base.heavy))
            ),
            "Workers claim queued jobs in the same fair order as the limiter grants slots.",
        );
    }
    section.table(table);
}

/// Runs `callers` against `limiters` (caller i on limiter i mod n) for `secs`.
async fn drive(
    name: &str,
    limiters: &[Arc<dyn ConcurrencyLimiter>],
    callers: &[Caller],
    secs: f64,
) -> Result<Run> {
    println!("  run: {name}");
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::new()));
    let capped_now = Arc::new(AtomicU32::new(0));
    let capped_max = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for (i, c) in callers.iter().copied().enumerate() {
        let limiter = Arc::clone(&limiters[i % limiters.len()]);
        let (stop, records) = (Arc::clone(&stop), Arc::clone(&records));
        let (now, max) = (Arc::clone(&capped_now), Arc::clone(&capped_max));
        tasks.push(tokio::spawn(async move {
            let admission = Admission::new(Tenant::parse(c.tenant).expect("a tenant"), c.priority)
                .with_share(c.share);
            while !stop.load(Ordering::SeqCst) {
                let start = t0.elapsed().as_secs_f64();
                let Ok(permit) = limiter.acquire(&admission, Duration::from_secs(30)).await else {
                    continue;
                };
                let grant = t0.elapsed().as_secs_f64();
                let capped = c.share.cap().is_some();
                if capped {
                    let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(held, Ordering::SeqCst);
                }
                records.lock().await.push(Record {
                    tenant: c.tenant,
                    priority: c.priority,
                    start,
                    grant,
                });
                let hold = HOLD_MS * rand::rng().random_range(0.5..1.5);
                tokio::time::sleep(Duration::from_secs_f64(hold / 1000.0)).await;
                if capped {
                    now.fetch_sub(1, Ordering::SeqCst);
                }
                let _ = permit.release().await;
                if !c.think.is_zero() {
                    tokio::time::sleep(c.think).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.context("a caller panicked")?;
    }
    let mut degraded = false;
    for l in limiters {
        degraded |= l.stats().await.degraded;
    }
    let records = std::mem::take(&mut *records.lock().await);
    if records.is_empty() {
        bail!("{name}: no acquire succeeded");
    }
    Ok(Run {
        name: name.to_owned(),
        records,
        capped_max: capped_max.load(Ordering::SeqCst),
        degraded,
    })
}

/// Grants `b` made while an acquire `a` of a higher priority had waited at least `margin`
/// and was granted more than `margin` later (scenario 3's definition).
fn inversions(records: &[Record], margin: f64, from: f64) -> usize {
    let high: Vec<&Record> = records
        .iter()
        .filter(|r| r.priority == Priority::High)
        .collect();
    records
        .iter()
        .filter(|b| b.grant >= from && b.priority < Priority::High)
        .filter(|b| {
            high.iter()
                .any(|a| a.start + margin <= b.grant && a.grant > b.grant + margin)
        })
        .count()
}

fn report(runs: &[Run], secs: f64, warmup: f64) -> Result<Section> {
    let expected = f64::from(WEIGHT) / f64::from(WEIGHT + 1);
    let mut section = Section::new(
        11,
        "Fair share between tenants",
        &format!(
            "In-process, against limiter objects: {LIMIT} slots, each permit held \
             U(0.5, 1.5) × {HOLD_MS} ms, closed-loop callers (acquire, hold, release, again) \
             for {secs} s; grants in the first {warmup} s are not counted. **Weights 3:1**: \
             two tenants, {CALLERS} callers each, all at `normal`, weights {WEIGHT} and 1 — \
             the heavy one should get {WEIGHT}/{} of the grants. **Baseline**: the same load \
             with every tenant at the default share (arrival order, what talkgate did before \
             tenants). **Cap 2 + high stream**: the heavy tenant's {CALLERS} callers and six \
             callers of a tenant capped at 2 saturate `normal` while a light tenant's three \
             `high` callers pause 15 ms between acquires; the capped tenant's holders are \
             counted by its callers (between the grant and the release, so never more than \
             it really holds), and a priority inversion is a `normal` grant made while a \
             `high` acquire had waited ≥ ε and was granted > ε later (ε = 2 ms in memory, \
             5 ms on Redis, as in scenario 3). The Redis runs use three `RedisLimiter` \
             instances on one redis-server, caller i on instance i mod 3, standing for three \
             processes.",
            WEIGHT + 1
        ),
    );
    let mut table = Table::new(
        "",
        &[
            "run",
            "grants counted",
            "heavy : light (normal)",
            "heavy share",
            "capped: most held at once",
            "high grants",
            "priority inversions",
        ],
    );
    let mut data = Vec::new();
    for r in runs {
        let heavy = r.grants("heavy", Priority::Normal, warmup);
        let light = r.grants("light", Priority::Normal, warmup);
        let mixed = r.records.iter().any(|x| x.priority == Priority::High);
        let margin = if r.name.starts_with("Redis") {
            0.005
        } else {
            0.002
        };
        let inv = inversions(&r.records, margin, warmup);
        let counted = r.records.iter().filter(|x| x.grant >= warmup).count();
        table.row(vec![
            r.name.clone() + if r.degraded { " (degraded!)" } else { "" },
            counted.to_string(),
            if mixed {
                "—".to_owned()
            } else {
                format!("{heavy} : {light}")
            },
            if mixed {
                "—".to_owned()
            } else {
                format!("{} %", f1(100.0 * r.heavy_share(warmup)))
            },
            if mixed {
                r.capped_max.to_string()
            } else {
                "—".to_owned()
            },
            if mixed {
                r.grants("light", Priority::High, warmup).to_string()
            } else {
                "—".to_owned()
            },
            if mixed {
                inv.to_string()
            } else {
                "—".to_owned()
            },
        ]);
        data.push(json!({
            "name": r.name, "granted": counted, "heavy": heavy, "light": light,
            "heavy_share": r.heavy_share(warmup), "capped_max": r.capped_max,
            "inversions": inv, "degraded": r.degraded,
        }));
    }
    section.table(table);
    for backend in ["memory", "Redis ×3"] {
        let find = |suffix: &str| {
            runs.iter()
                .find(|r| r.name == format!("{backend}, {suffix}"))
                .context("a run of the scenario")
        };
        let fair = find("weights 3:1")?;
        let base = find("baseline: no weights")?;
        let mixed = find("cap 2 + high stream")?;
        let share = fair.heavy_share(warmup);
        section.ratio(
            &format!("{backend}: weights 3:1 give the heavy tenant 75 % ± 5 % of grants"),
            (share - expected).abs() <= TOLERANCE && !fair.degraded,
            &format!(
                "{} % (baseline without weights, same run: {} %)",
                f1(100.0 * share),
                f1(100.0 * base.heavy_share(warmup))
            ),
            "Two saturating tenants at one priority share the slots by weight; the baseline \
             shows what the same load gets in arrival order.",
        );
        section.bound(
            &format!("{backend}: a tenant capped at 2 never holds 3"),
            mixed.capped_max <= 2 && mixed.capped_max > 0,
            &format!("most held at once: {}", mixed.capped_max),
            "The cap is a bound of the configuration: max_concurrent = 2.",
        );
        let margin = if backend == "memory" { 0.002 } else { 0.005 };
        let inv = inversions(&mixed.records, margin, warmup);
        section.bound(
            &format!("{backend}: 0 priority inversions with tenants and caps"),
            inv == 0 && mixed.grants("light", Priority::High, warmup) > 0,
            &format!(
                "{inv} inversions in {} grants",
                mixed.records.iter().filter(|x| x.grant >= warmup).count()
            ),
            "Strict priority across classes holds whatever the weights and caps.",
        );
    }
    section.data = json!({ "runs": data });
    Ok(section)
}
