//! Scenario 6, gateway overhead (the service's own targets):
//!
//! - `talk-status` through http-api against the same `GET /talks/{id}` sent straight to
//!   did-fake (zero added latency), requests alternating between the two so both see the same
//!   machine load; the gateway's cost is the difference of the medians;
//! - `/stats` latency while 32 callers keep the limiter saturated (4 slots, 20 ms upstream);
//! - resident memory of the http-api process with 1000 requests queued in its limiter, beside
//!   its idle RSS, and the queue draining to zero once those callers hang up.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Ctx;
use super::load::{self, Stop};
use super::report::{Plot, Section, Summary, Table, f1, f2};
use super::rig::{self, ApiOptions, FAKE_KEY, PREFIX, STATUS_ROUTE};

/// Resident set size of a process, in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

async fn timed(req: reqwest::RequestBuilder) -> Result<f64> {
    let t = Instant::now();
    let resp = req.send().await?;
    let status = resp.status();
    resp.bytes().await?;
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let client = &ctx.client;
    let mut section = Section::new(
        6,
        "gateway overhead",
        "Added latency: `GET /api/d_id_optimized/talk-status/{id}` through http-api (memory \
         limiter, 16 slots) versus `GET /talks/{id}` straight to did-fake with no added latency, \
         one request at a time, alternating, over pooled keep-alive connections; the overhead is \
         the difference of the medians. `/stats` latency: sequential calls while 32 closed-loop \
         callers keep a 4-slot limiter saturated (20 ms upstream). Memory: VmRSS of the http-api \
         process idle and with 1000 concurrent `talk-status` calls queued behind 2 slots (upstream \
         answers after 60 s); then the callers hang up and the queue must drain to 0.",
    );
    let fake = rig::spawn_fake(ctx, "bench6-did-fake").await?;
    let base = fake.base_url.clone();
    let talk = rig::create_talk(client, &base).await?;

    // 1. Added latency.
    let api = rig::spawn_api(
        ctx,
        "bench6-http-api",
        &ApiOptions {
            fake: &base,
            redis: None,
            limit: 16,
            lease_ttl_secs: None,
        },
    )
    .await?;
    let pooled = reqwest::Client::builder()
        .pool_max_idle_per_host(2)
        .build()?;
    let direct_url = format!("{base}/talks/{talk}");
    let gateway_url = format!("{}{PREFIX}/talk-status/{talk}", api.base_url);
    let auth = format!("Basic {FAKE_KEY}");
    let n = if ctx.quick { 400 } else { 4000 };
    println!("    {n} requests each, alternating direct / through the gateway");
    for _ in 0..50 {
        timed(pooled.get(&direct_url).header("authorization", &auth)).await?;
        timed(pooled.get(&gateway_url)).await?;
    }
    let (mut direct, mut gateway) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        direct.push(timed(pooled.get(&direct_url).header("authorization", &auth)).await?);
        gateway.push(timed(pooled.get(&gateway_url)).await?);
    }
    let d = Summary::of(&mut direct);
    let g = Summary::of(&mut gateway);
    let added = g.p50 - d.p50;
    let mut table = Table::new(
        "Latency of one status read, ms",
        &["path", "n", "mean", "p50", "p95", "p99"],
    );
    for (name, s) in [
        ("did-fake directly (baseline)", &d),
        ("through http-api", &g),
    ] {
        table.row(vec![
            name.into(),
            s.n.to_string(),
            f2(s.mean),
            f2(s.p50),
            f2(s.p95),
            f2(s.p99),
        ]);
    }
    table.print();
    section.tables.push(table);
    section.plots.push(Plot {
        file: "gateway-latency.svg".into(),
        title: "talk-status latency (ms): direct vs through http-api".into(),
        series: vec!["did-fake directly".into(), "through http-api".into()],
        groups: vec![
            ("p50".into(), vec![d.p50, g.p50]),
            ("p95".into(), vec![d.p95, g.p95]),
            ("p99".into(), vec![d.p99, g.p99]),
        ],
    });
    section.target(
        "gateway adds < 0.5 ms at p50",
        added < 0.5,
        &format!("{} ms ({} vs {})", f2(added), f2(g.p50), f2(d.p50)),
    );
    api.stop(Duration::from_secs(5)).await?;

    // 2. /stats under load.
    rig::set_faults(
        client,
        &base,
        json!({"latency": {"routes": {STATUS_ROUTE: 20}}}),
    )
    .await?;
    let api = rig::spawn_api(
        ctx,
        "bench6-http-api-loaded",
        &ApiOptions {
            fake: &base,
            redis: None,
            limit: 4,
            lease_ttl_secs: None,
        },
    )
    .await?;
    let window = Duration::from_secs(if ctx.quick { 3 } else { 10 });
    let t0 = Instant::now();
    let load_client = reqwest::Client::new();
    let url = format!("{}{PREFIX}/talk-status/{talk}", api.base_url);
    let load = tokio::spawn(load::closed_loop(
        "status load",
        t0,
        32,
        Stop::At(window),
        move |_, _| {
            let (c, u) = (load_client.clone(), url.clone());
            async move { matches!(c.get(&u).send().await, Ok(r) if r.status().is_success()) }
        },
    ));
    // The prober runs on its own thread and runtime, so the 32 load workers of this process
    // do not delay its measurements.
    let stats_url = format!("{}{PREFIX}/stats", api.base_url);
    let until = window.saturating_sub(Duration::from_millis(200));
    let prober = std::thread::spawn(move || -> Result<Vec<f64>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let c = reqwest::Client::new();
            let mut ms = Vec::new();
            while t0.elapsed() < until {
                ms.push(timed(c.get(&stats_url)).await?);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(ms)
        })
    });
    let mut max_queued = 0;
    while t0.elapsed() < until {
        let s = rig::api_stats(client, &api.base_url).await?;
        max_queued = max_queued.max(rig::limiter_of(&s)["queue_size"].as_u64().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut stats_ms = tokio::task::spawn_blocking(move || prober.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the /stats prober panicked"))??;
    let samples = load.await.context("load task")??;
    let s = Summary::of(&mut stats_ms);
    let ok = samples.iter().filter(|x| x.ok).count();
    let mut table = Table::new(
        "`/stats` while the limiter is saturated, ms",
        &[
            "n",
            "mean",
            "p50",
            "p99",
            "max",
            "load requests ok",
            "max queued seen",
        ],
    );
    table.row(vec![
        s.n.to_string(),
        f2(s.mean),
        f2(s.p50),
        f2(s.p99),
        f2(s.max),
        format!("{ok}/{}", samples.len()),
        max_queued.to_string(),
    ]);
    table.print();
    section.tables.push(table);
    section.target(
        "/stats p99 under load < 1 ms",
        s.p99 < 1.0,
        &format!("{} ms", f2(s.p99)),
    );
    api.stop(Duration::from_secs(5)).await?;

    // 3. Memory with 1000 queued requests.
    const QUEUED: usize = 1000;
    rig::set_faults(
        client,
        &base,
        json!({"latency": {"routes": {STATUS_ROUTE: 60_000}}}),
    )
    .await?;
    let api = rig::spawn_api(
        ctx,
        "bench6-http-api-queue",
        &ApiOptions {
            fake: &base,
            redis: None,
            limit: 2,
            lease_ttl_secs: None,
        },
    )
    .await?;
    let pid = api.pid().context("http-api pid")?;
    let idle = rss_kib(pid)?;
    let waiters = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let url = format!("{}{PREFIX}/talk-status/{talk}", api.base_url);
    let calls: Vec<_> = (0..QUEUED)
        .map(|_| {
            let (c, u) = (waiters.clone(), url.clone());
            tokio::spawn(async move { c.get(&u).send().await.map(|r| r.status()) })
        })
        .collect();
    let queued_target = (QUEUED - 2) as u64;
    let took = rig::time_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            rig::api_stats(client, &api.base_url)
                .await
                .map(|s| rig::limiter_of(&s)["queue_size"].as_u64().unwrap_or(0) >= queued_target)
                .unwrap_or(false)
        },
    )
    .await;
    let loaded = rss_kib(pid)?;
    for call in &calls {
        call.abort();
    }
    drop(waiters);
    let drained = rig::time_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            rig::api_stats(client, &api.base_url)
                .await
                .map(|s| {
                    let l = rig::limiter_of(&s);
                    l["queue_size"].as_u64() == Some(0) && l["active_requests"].as_u64() == Some(0)
                })
                .unwrap_or(false)
        },
    )
    .await;
    let per_request = (loaded.saturating_sub(idle)) as f64 / QUEUED as f64;
    let mut table = Table::new(
        "http-api resident memory (VmRSS)",
        &["state", "RSS (MiB)", "per queued request (KiB)"],
    );
    table.row(vec![
        "idle (baseline)".into(),
        f1(idle as f64 / 1024.0),
        "-".into(),
    ]);
    table.row(vec![
        format!("{QUEUED} requests queued"),
        f1(loaded as f64 / 1024.0),
        f1(per_request),
    ]);
    table.print();
    section.tables.push(table);
    section.target(
        "1000 requests queued, then released when their callers hang up",
        took.is_some() && drained.is_some(),
        &format!(
            "queued in {}, drained in {}",
            took.map_or("never".into(), |d| format!("{} s", f1(d.as_secs_f64()))),
            drained.map_or("never".into(), |d| format!("{} s", f1(d.as_secs_f64()))),
        ),
    );
    section.data = json!({
        "direct": d.json(), "gateway": g.json(), "added_p50_ms": added,
        "stats_under_load": s.json(),
        "rss_idle_kib": idle, "rss_queued_kib": loaded, "queued": QUEUED,
    });
    api.stop(Duration::from_secs(5)).await?;
    Ok(section)
}
