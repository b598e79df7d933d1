//! did-client's overhead and the pool's worth, measured against `did-fake` on loopback with
//! zero injected latency, baselines from the same run.
//!
//! - `per_request/raw_reqwest` vs `per_request/did_client`: one `GET /credits` through a bare
//!   pooled `reqwest::Client` versus through `DidClient` (limiter permit, retry loop, error
//!   mapping, stats, JSON parsing). The difference is the client's own cost per call.
//! - `before_after/new_client_per_request` vs `before_after/pooled_did_client`: 32 requests,
//!   8 in flight, with a fresh `reqwest::Client` per request (the original `DIdClient`) versus
//!   the one pooled client. Throughput is in requests.
//! - TCP connections opened per 100 requests by each (the fake's `connections_accepted`),
//!   written to `target/tmp/did-client-connections.json` and printed.
//!
//! Run: `cargo bench -p did-client` (about two minutes).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use did_client::{DidClient, DidClientConfig};
use did_fake::{FakeDid, RunningFake};
use domain::Priority;
use limiter_memory::MemoryLimiter;
use ports::{ConcurrencyLimiter, VideoApi};
use secrecy::SecretString;

const IN_FLIGHT: usize = 8;
const BATCH: usize = 32;
const CONNECTION_SAMPLE: usize = 100;

fn did_client(fake: &RunningFake) -> Arc<DidClient> {
    let limiter: Arc<dyn ConcurrencyLimiter> = Arc::new(MemoryLimiter::new(IN_FLIGHT as u32));
    let config = DidClientConfig {
        pool_max_idle_per_host: IN_FLIGHT,
        ..DidClientConfig::new(
            fake.base_url(),
            Some(SecretString::from(did_fake::DEFAULT_API_KEY)),
        )
    };
    Arc::new(DidClient::new(config, limiter).expect("client builds"))
}

fn auth() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(did_fake::DEFAULT_API_KEY)
    )
}

/// One `GET /credits` with a bare client, checked like a careful caller would.
async fn raw_credits(http: &reqwest::Client, url: &str, auth: &str) {
    let response = http
        .get(url)
        .header(reqwest::header::AUTHORIZATION, auth)
        .send()
        .await
        .expect("fake answers");
    assert!(response.status().is_success());
    black_box(response.bytes().await.expect("body"));
}

/// The original client's way: a new `reqwest::Client` (and so a new connection) per request.
async fn naive_credits(url: &str, auth: &str) {
    let http = reqwest::Client::new();
    raw_credits(&http, url, auth).await;
}

/// `n` requests, `IN_FLIGHT` at a time, each made by `one`.
async fn batch<F, Fut>(n: usize, one: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let per_task = n / IN_FLIGHT;
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    one().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fake = rt
        .block_on(FakeDid::builder().credits(i64::MAX / 2).spawn())
        .expect("fake starts");
    let url = format!("{}/credits", fake.base_url());
    let auth = auth();
    let did = did_client(&fake);
    let raw = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("reqwest builds");

    let mut group = c.benchmark_group("per_request");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("raw_reqwest", |b| {
        b.to_async(&rt).iter(|| raw_credits(&raw, &url, &auth));
    });
    group.bench_function("did_client", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                did.credits(&Priority::Normal.into())
                    .await
                    .expect("credits"),
            );
        });
    });
    group.finish();

    let mut group = c.benchmark_group("before_after");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("new_client_per_request", |b| {
        b.to_async(&rt).iter(|| {
            let (url, auth) = (url.clone(), auth.clone());
            batch(BATCH, move || {
                let (url, auth) = (url.clone(), auth.clone());
                async move { naive_credits(&url, &auth).await }
            })
        });
    });
    group.bench_function("pooled_did_client", |b| {
        b.to_async(&rt).iter(|| {
            let did = did.clone();
            batch(BATCH, move || {
                let did = did.clone();
                async move {
                    black_box(
                        did.credits(&Priority::Normal.into())
                            .await
                            .expect("credits"),
                    );
                }
            })
        });
    });
    group.finish();

    // Connections opened per CONNECTION_SAMPLE requests, each from a cold start.
    let naive = rt.block_on(async {
        let before = fake.stats().connections_accepted;
        let (url, auth) = (url.clone(), auth.clone());
        batch(
            CONNECTION_SAMPLE - CONNECTION_SAMPLE % IN_FLIGHT,
            move || {
                let (url, auth) = (url.clone(), auth.clone());
                async move { naive_credits(&url, &auth).await }
            },
        )
        .await;
        fake.stats().connections_accepted - before
    });
    let pooled = rt.block_on(async {
        let fresh = did_client(&fake);
        let before = fake.stats().connections_accepted;
        batch(
            CONNECTION_SAMPLE - CONNECTION_SAMPLE % IN_FLIGHT,
            move || {
                let fresh = fresh.clone();
                async move {
                    black_box(
                        fresh
                            .credits(&Priority::Normal.into())
                            .await
                            .expect("credits"),
                    );
                }
            },
        )
        .await;
        fake.stats().connections_accepted - before
    });
    report_connections(naive, pooled);
    rt.block_on(fake.shutdown());
}

#[allow(clippy::print_stdout)] // The bench's own user-facing output, next to criterion's.
fn report_connections(naive: u64, pooled: u64) {
    let requests = CONNECTION_SAMPLE - CONNECTION_SAMPLE % IN_FLIGHT;
    let json = serde_json::json!({
        "requests": requests,
        "in_flight": IN_FLIGHT,
        "connections_opened": {"new_client_per_request": naive, "pooled_did_client": pooled},
    });
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("did-client-connections.json");
    let written = std::fs::write(&path, format!("{json:#}\n")).is_ok();
    println!(
        "connections opened per {requests} requests ({IN_FLIGHT} in flight): new client per request = {naive}, pooled did-client = {pooled}{}",
        if written {
            format!(" (written to {})", path.display())
        } else {
            String::new()
        }
    );
}

criterion_group!(client, benches);
criterion_main!(client);
