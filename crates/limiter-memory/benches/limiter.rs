//! limiter-memory beside `tokio::sync::Semaphore`, measured in the same run.
//!
//! - `uncontended`: one acquire + release with free slots (issue 25 target: within 1.3× of
//!   tokio's semaphore), and the same for a tenant with a weight (tenants on: within 2×).
//! - `contended`: 64 tasks, limit 8, each acquiring, yielding once while holding, releasing;
//!   mixed priorities for the limiter (tokio's semaphore has none). One iteration = all 64
//!   tasks done.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use domain::{Admission, Priority, Share, Tenant};
use limiter_memory::MemoryLimiter;
use ports::ConcurrencyLimiter;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(60);

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("uncontended");
    let limiter = MemoryLimiter::new(8);
    group.bench_function("limiter-memory", |b| {
        b.to_async(&rt).iter(|| async {
            let permit = limiter
                .acquire(&Priority::Normal.into(), WAIT)
                .await
                .unwrap();
            black_box(&permit);
            drop(permit);
        });
    });
    // Tenants on: a named tenant with a weight (the lock-free path, as above), and one with
    // a cap (its slots are counted under the lock). The service builds a request's admission
    // once and every exchange borrows it, so it is built outside the loop here.
    let weighted = Admission::new(Tenant::parse("acme").unwrap(), Priority::Normal)
        .with_share(Share::new(3, None));
    group.bench_function("limiter-memory, tenant with weight 3", |b| {
        b.to_async(&rt).iter(|| async {
            let permit = limiter.acquire(&weighted, WAIT).await.unwrap();
            black_box(&permit);
            drop(permit);
        });
    });
    let capped = Admission::new(Tenant::parse("acme").unwrap(), Priority::Normal)
        .with_share(Share::new(3, Some(4)));
    group.bench_function("limiter-memory, tenant with weight 3 and cap 4", |b| {
        b.to_async(&rt).iter(|| async {
            let permit = limiter.acquire(&capped, WAIT).await.unwrap();
            black_box(&permit);
            drop(permit);
        });
    });
    let semaphore = Semaphore::new(8);
    group.bench_function("tokio-semaphore", |b| {
        b.to_async(&rt).iter(|| async {
            let permit = semaphore.acquire().await.unwrap();
            black_box(&permit);
            drop(permit);
        });
    });
    group.finish();
}

fn contended(c: &mut Criterion) {
    const TASKS: usize = 64;
    const LIMIT: u32 = 8;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("contended_64_tasks_limit_8");
    group.measurement_time(Duration::from_secs(5));
    let limiter: Arc<dyn ConcurrencyLimiter> = Arc::new(MemoryLimiter::new(LIMIT));
    group.bench_function("limiter-memory", |b| {
        b.to_async(&rt).iter(|| {
            let limiter = Arc::clone(&limiter);
            async move {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|i| {
                        let limiter = Arc::clone(&limiter);
                        tokio::spawn(async move {
                            let p = limiter
                                .acquire(&(Priority::ALL[i % 4]).into(), WAIT)
                                .await
                                .unwrap();
                            tokio::task::yield_now().await;
                            drop(p);
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        });
    });
    let semaphore = Arc::new(Semaphore::new(LIMIT as usize));
    group.bench_function("tokio-semaphore", |b| {
        b.to_async(&rt).iter(|| {
            let semaphore = Arc::clone(&semaphore);
            async move {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let semaphore = Arc::clone(&semaphore);
                        tokio::spawn(async move {
                            let p = semaphore.acquire().await.unwrap();
                            tokio::task::yield_now().await;
                            drop(p);
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
