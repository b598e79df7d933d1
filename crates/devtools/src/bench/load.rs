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

/// The throughput of `callers` closed-loop callers without think time, by Little's law:
/// `callers / mean latency` of the successful requests that started inside `[from, to)`.
/// Unlike a count of answers in a window it uses every request's full latency, so it does
/// not depend on where the window's edges cut the callers' cycles (with C slots each
/// completing one request per L, a count can be off by up to C answers per edge).
pub(crate) fn closed_loop_throughput(
    samples: &[Sample],
    callers: usize,
    from: f64,
    to: f64,
) -> f64 {
    let lat = latencies(samples, from, to);
    if lat.is_empty() {
        return 0.0;
    }
    let mean_s = lat.iter().sum::<f64>() / lat.len() as f64 / 1000.0;
    callers as f64 / mean_s.max(1e-9)
}

/// Latencies (ms) of successful requests that started inside `[from, to)`.
pub(crate) fn latencies(samples: &[Sample], from: f64, to: f64) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.ok && s.start >= from && s.start < to)
        .map(Sample::latency_ms)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: f64, end: f64) -> Sample {
        Sample {
            start,
            end,
            ok: true,
        }
    }

    #[test]
    fn closed_loop_throughput_follows_littles_law_where_a_window_count_is_off() {
        // 4 callers in lockstep, 0.25 s per request: 16 req/s whatever the window.
        let samples: Vec<Sample> = (0..40)
            .flat_map(|i| {
                let start = f64::from(i) * 0.25;
                std::iter::repeat_n(sample(start, start + 0.25), 4)
            })
            .collect();
        let rate = closed_loop_throughput(&samples, 4, 1.0, 8.9);
        assert!((rate - 16.0).abs() < 1e-9, "{rate}");
        // Counting answers in [1.0, 8.9) finds 32 rounds of 4 in 7.9 s: 16.2 req/s.
        let counted = throughput(&samples, 1.0, 8.9);
        assert!((counted - 16.2).abs() < 0.01, "{counted}");
        // Failed requests do not count, and no request at all is 0.
        let failed = [Sample {
            start: 1.0,
            end: 1.001,
            ok: false,
        }];
        assert_eq!(closed_loop_throughput(&failed, 4, 0.0, 2.0), 0.0);
    }
}
