//! Scenario 1, before vs after: the original's comparison, done honestly. The same closed-loop
//! load of `GET /talks/{id}` against did-fake with a fixed latency, once with a naive client
//! (a new `reqwest::Client` per request, as the original built a new `httpx.AsyncClient` per
//! call: no pooling, a new TCP connection every time) and once with did-client (one pooled
//! client, permits from a memory limiter sized to the load). TCP connections are counted by
//! did-fake (`connections_accepted`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use did_client::{DidClient, DidClientConfig};
use domain::{Priority, TalkId};
use limiter_memory::MemoryLimiter;
use ports::VideoApi;
use secrecy::SecretString;
use serde_json::json;

use super::Ctx;
use super::load::{self, Sample, Stop};
use super::report::{Plot, Section, Summary, Table, f1, f2};
use super::rig::{self, FAKE_KEY, Rig, STATUS_ROUTE};

struct Phase {
    name: &'static str,
    samples: Vec<Sample>,
    seconds: f64,
    connections: u64,
}

impl Phase {
    /// The phase that started at `t0` and made `samples`, now that it is over: its
    /// connections are did-fake's count since its reset, less the one this stats call opens
    /// (`control` never pools).
    async fn end(
        name: &'static str,
        t0: Instant,
        samples: Vec<Sample>,
        control: &reqwest::Client,
        fake: &str,
    ) -> Result<Phase> {
        Ok(Phase {
            name,
            seconds: t0.elapsed().as_secs_f64(),
            connections: rig::count(
                &rig::fake_stats(control, fake).await?,
                "connections_accepted",
            )
            .saturating_sub(1),
            samples,
        })
    }
}

pub(crate) async fn run(ctx: &Ctx) -> Result<Section> {
    let (workers, requests, latency_ms) = if ctx.quick {
        (4, 300, 20)
    } else {
        (8, 2000, 20)
    };
    let rig = Rig::build(ctx, "bench1-did-fake")
        .status_load(latency_ms)
        .start()
        .await?;
    let (base, talk) = (rig.base.clone(), rig.talk().to_owned());
    println!(
        "  {workers} workers, {requests} requests per client, did-fake latency {latency_ms} ms on {STATUS_ROUTE}"
    );
    // A control client that never pools: each stats call opens exactly one connection, so
    // the count after a phase is the phase's connections plus one.
    let control = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?;

    // Before: a new client (new connection pool, new TCP connection) for every request.
    let url = format!("{base}/talks/{talk}");
    rig::reset_fake(&control, &base).await?;
    let t0 = Instant::now();
    let naive_url = Arc::new(url);
    let samples = load::closed_loop("naive", t0, workers, Stop::Requests(requests), {
        let url = Arc::clone(&naive_url);
        move |_, _| {
            let url = Arc::clone(&url);
            async move {
                let Ok(fresh) = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                else {
                    return false;
                };
                match fresh
                    .get(url.as_str())
                    .header("authorization", format!("Basic {FAKE_KEY}"))
                    .send()
                    .await
                {
                    Ok(resp) if resp.status().is_success() => {
                        resp.json::<serde_json::Value>().await.is_ok()
                    }
                    _ => false,
                }
            }
        }
    })
    .await?;
    let naive = Phase::end("naive (client per request)", t0, samples, &control, &base).await?;

    // After: did-client, one pool sized to the load.
    let limiter = Arc::new(MemoryLimiter::new(workers as u32));
    let config = DidClientConfig {
        pool_max_idle_per_host: workers,
        ..DidClientConfig::new(&base, Some(SecretString::from(FAKE_KEY)))
    };
    let did = Arc::new(DidClient::new(config, limiter).context("building did-client")?);
    let id = TalkId::parse(&talk).context("did-fake returned an invalid talk id")?;
    rig::reset_fake(&control, &base).await?;
    let t0 = Instant::now();
    let samples = load::closed_loop("did-client", t0, workers, Stop::Requests(requests), {
        let did = Arc::clone(&did);
        move |_, _| {
            let (did, id) = (Arc::clone(&did), id.clone());
            async move { did.get_talk(&id, &Priority::Normal.into()).await.is_ok() }
        }
    })
    .await?;
    let pooled = Phase::end("did-client (pooled)", t0, samples, &control, &base).await?;
    drop(rig);

    let mut section = Section::new(
        1,
        "Before vs after: naive client vs did-client",
        &format!(
            "{workers} closed-loop workers each send `GET /talks/{{id}}` to did-fake (fixed \
             {latency_ms} ms latency on that route) until {requests} requests are done, first \
             with a naive client (a new `reqwest::Client` per request, so a new TCP connection \
             per request, as the original built a new `httpx.AsyncClient` per call), then with \
             did-client (one pooled client, `pool_max_idle_per_host = {workers}`, permits from \
             a memory limiter of {workers}). Latency is per request, measured by the caller; \
             TCP connections are did-fake's `connections_accepted` over the phase."
        ),
    );
    let mut table = Table::new(
        "",
        &[
            "client",
            "requests",
            "errors",
            "error rate",
            "throughput (req/s)",
            "mean (ms)",
            "p50 (ms)",
            "p95 (ms)",
            "p99 (ms)",
            "max (ms)",
            "TCP connections",
        ],
    );
    let mut summaries = Vec::new();
    let mut data = Vec::new();
    for p in [&naive, &pooled] {
        let errors = p.samples.iter().filter(|s| !s.ok).count();
        let mut lat: Vec<f64> = p
            .samples
            .iter()
            .filter(|s| s.ok)
            .map(Sample::latency_ms)
            .collect();
        let s = Summary::of(&mut lat);
        let throughput = (p.samples.len() - errors) as f64 / p.seconds;
        table.row(vec![
            p.name.to_owned(),
            p.samples.len().to_string(),
            errors.to_string(),
            format!(
                "{:.2} %",
                100.0 * errors as f64 / p.samples.len().max(1) as f64
            ),
            f1(throughput),
            f2(s.mean),
            f2(s.p50),
            f2(s.p95),
            f2(s.p99),
            f2(s.max),
            p.connections.to_string(),
        ]);
        data.push(json!({
            "client": p.name, "requests": p.samples.len(), "errors": errors,
            "seconds": p.seconds, "throughput_rps": throughput, "latency": s.json(),
            "tcp_connections": p.connections,
        }));
        summaries.push((s, throughput, errors));
    }
    section.table(table);
    section.data = json!({
        "workers": workers, "requests": requests, "latency_ms": latency_ms, "phases": data,
    });
    let (ns, nt, _) = summaries[0];
    let (ps, pt, perr) = summaries[1];
    section.plots.push(Plot {
        lines: Vec::new(),
        file: "1-before-after-latency.svg".into(),
        title: format!("Scenario 1: GET /talks/{{id}} latency, did-fake at {latency_ms} ms"),
        series: vec![naive.name.into(), pooled.name.into()],
        groups: vec![
            ("mean".into(), vec![ns.mean, ps.mean]),
            ("p50".into(), vec![ns.p50, ps.p50]),
            ("p95".into(), vec![ns.p95, ps.p95]),
            ("p99".into(), vec![ns.p99, ps.p99]),
        ],
    });
    section.bound(
        &format!("did-client opens <= pool size ({workers}) TCP connections"),
        pooled.connections <= workers as u64,
        &format!(
            "{} connections for {} requests (pool {workers}); naive: {} connections",
            pooled.connections,
            pooled.samples.len(),
            naive.connections
        ),
        &format!(
            "did-client keeps one pool of `pool_max_idle_per_host = {workers}` connections and \
             never has more than {workers} requests in flight ({workers} workers, limiter of \
             {workers}), so once a connection is open it is reused; a count above the pool \
             size means connections are dropped and opened again. A count, not a time."
        ),
    );
    section.bound(
        "did-client: 0 errors",
        perr == 0,
        &format!("{perr} errors of {}", pooled.samples.len()),
        "did-fake runs without faults in this scenario and every request is well-formed, so \
         every request must succeed.",
    );
    section.notes.push(format!(
        "did-client vs naive (information): throughput {pt:.1} vs {nt:.1} req/s (×{:.2}), p99 \
         {:.2} vs {:.2} ms.",
        pt / nt.max(1e-9),
        ps.p99,
        ns.p99
    ));
    Ok(section)
}
