//! A closed-loop load driver: `workers` tasks each issue one request after the other until a
//! request count or a deadline is reached, recording start, end and outcome of every request
//! against a shared clock, and printing progress once a second.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Mutex;

/// One request: times in seconds since the run's `t0`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) start: f64,
    pub(crate) end: f64,
    pub(crate) ok: bool,
}

impl Sample {
    pub(crate) fn latency_ms(&self) -> f64 {
        (self.end - self.start) * 1000.0
    }
}

/// When the workers stop.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// After this many requests in total.
    Requests(usize),
    /// At this offset from `t0` (requests started before it are finished).
    At(Duration),
}

/// Runs the load and returns every request's sample. `f(worker, request_no)` performs one
/// request and says whether it succeeded.
pub(crate) async fn closed_loop<F, Fut>(
    label: &str,
    t0: Instant,
    workers: usize,
    stop: Stop,
    f: F,
) -> Result<Vec<Sample>>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let f = Arc::new(f);
    let samples = Arc::new(Mutex::new(Vec::new()));
    let issued = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let progress = {
        let (ok, failed, done) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&done));
        let label = label.to_owned();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let now_ok = ok.load(Ordering::Relaxed);
                let rate = now_ok - last;
                last = now_ok;
                let bound = match stop {
                    Stop::At(d) => {
                        format!("/{:.0} s", d.saturating_sub(started - t0).as_secs_f64())
                    }
                    Stop::Requests(n) => format!(", {now_ok}/{n} requests"),
                };
                println!(
                    "    [{label}] {:.0} s{bound}: {now_ok} ok, {} failed, {rate} req/s",
                    started.elapsed().as_secs_f64(),
                    failed.load(Ordering::Relaxed),
                );
            }
        })
    };

    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let (f, samples, issued) = (Arc::clone(&f), Arc::clone(&samples), Arc::clone(&issued));
        let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                let go = match stop {
                    Stop::Requests(total) => n < total,
                    Stop::At(d) => t0.elapsed() < d,
                };
                if !go {
                    break;
                }
                let start = t0.elapsed().as_secs_f64();
                let success = f(w, n).await;
                let end = t0.elapsed().as_secs_f64();
                if success {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                mine.push(Sample {
                    start,
                    end,
                    ok: success,
                });
            }
            samples.lock().await.extend(mine);
        }));
    }
    for h in handles {
        h.await.context("a load worker panicked")?;
    }
    done.store(true, Ordering::Relaxed);
    progress.abort();
    let mut all = std::mem::take(&mut *samples.lock().await);
    all.sort_by(|a, b| a.start.total_cmp(&b.start));
    Ok(all)
}

/// Successful requests that ended inside `[from, to)` per second.
pub(crate) fn throughput(samples: &[Sample], from: f64, to: f64) -> f64 {
    let n = samples
        .iter()
        .filter(|s| s.ok && s.end >= from && s.end < to)
        .count();
    n as f64 / (to - from).max(1e-9)
}

/// Latencies (ms) of successful requests that started inside `[from, to)`.
pub(crate) fn latencies(samples: &[Sample], from: f64, to: f64) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.ok && s.start >= from && s.start < to)
        .map(Sample::latency_ms)
        .collect()
}
