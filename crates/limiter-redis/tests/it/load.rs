//! A steady load for the failover tests: a few tasks acquire, hold briefly and release, over
//! and over, counting in one atomic how many permits are held at this moment, so a test can
//! assert the peak itself instead of trusting the limiter's own stats.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use domain::Priority;
use limiter_redis::RedisLimiter;
use ports::ConcurrencyLimiter;
use tokio::task::JoinHandle;

/// What the tasks saw, shared with the test.
#[derive(Default)]
pub struct Counts {
    /// Permits held now.
    pub held: AtomicU32,
    /// The most permits held at once, since the start.
    pub peak: AtomicU32,
    /// The most permits held at once since [`Load::reset_peak`].
    pub peak_since_reset: AtomicU32,
    /// Permits granted.
    pub grants: AtomicU64,
    /// Acquires that gave up at their wait timeout (or failed otherwise).
    pub refused: AtomicU64,
    stop: AtomicBool,
}

/// The running tasks.
pub struct Load {
    /// Shared with the tasks.
    pub counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `tasks` tasks, each holding a permit for `hold` per grant.
    pub fn start(limiter: &Arc<RedisLimiter>, tasks: usize, hold: Duration) -> Load {
        let counts = Arc::new(Counts::default());
        let tasks = (0..tasks)
            .map(|_| {
                let (limiter, counts) = (Arc::clone(limiter), Arc::clone(&counts));
                tokio::spawn(async move {
                    while !counts.stop.load(Ordering::SeqCst) {
                        match limiter
                            .acquire(&Priority::Normal.into(), Duration::from_secs(2))
                            .await
                        {
                            Ok(permit) => {
                                let now = counts.held.fetch_add(1, Ordering::SeqCst) + 1;
                                counts.peak.fetch_max(now, Ordering::SeqCst);
                                counts.peak_since_reset.fetch_max(now, Ordering::SeqCst);
                                counts.grants.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(hold).await;
                                counts.held.fetch_sub(1, Ordering::SeqCst);
                                // A release that cannot reach Redis is retried in the
                                // background; what counts here is that the task let go.
                                let _ = permit.release().await;
                            }
                            Err(_) => {
                                counts.refused.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        Load { counts, tasks }
    }

    /// Starts a new peak from the number held now.
    pub fn reset_peak(&self) {
        let now = self.counts.held.load(Ordering::SeqCst);
        self.counts.peak_since_reset.store(now, Ordering::SeqCst);
    }

    /// Grants so far.
    pub fn grants(&self) -> u64 {
        self.counts.grants.load(Ordering::SeqCst)
    }

    /// Stops the tasks and waits until every one has released its permit.
    pub async fn stop(self) -> Arc<Counts> {
        self.counts.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("a load task panicked");
        }
        assert_eq!(self.counts.held.load(Ordering::SeqCst), 0);
        self.counts
    }
}

/// Polls `stats()` every 20 ms for `window`, failing if the limiter is degraded at any
/// sample: it serves from Redis throughout.
pub async fn stays_on_redis(limiter: &RedisLimiter, window: Duration) {
    let end = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < end {
        let stats = limiter.stats().await;
        assert!(!stats.degraded, "degraded again: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints the peaks of a failover test (`--nocapture` shows them), for the docs' figures.
#[allow(clippy::print_stderr)]
pub fn report_peaks(what: &str, counts: &Counts) {
    eprintln!(
        "MEASURED {what}: peak held {}, after the failover settled {}, grants {}, refused {}",
        counts.peak.load(Ordering::SeqCst),
        counts.peak_since_reset.load(Ordering::SeqCst),
        counts.grants.load(Ordering::SeqCst),
        counts.refused.load(Ordering::SeqCst),
    );
}

/// The checks every failover test makes once its load stopped: at most `limit + share` held
/// during the failover, at most `limit` once it settled, and, after the last release, nothing
/// active or queued and the limiter back on Redis.
pub async fn assert_failover_kept_the_limit(
    what: &str,
    limiter: &RedisLimiter,
    counts: &Counts,
    limit: u32,
    share: u32,
) {
    report_peaks(what, counts);
    let peak = counts.peak.load(Ordering::SeqCst);
    let settled = counts.peak_since_reset.load(Ordering::SeqCst);
    assert!(
        peak <= limit + share,
        "peak {peak} held, bound {}",
        limit + share
    );
    assert!(
        settled <= limit,
        "{settled} held at once after the failover"
    );
    // Every permit was released: nothing stays active (a grant the replica had not yet
    // replicated when its master died expires with its lease).
    let released = std::time::Instant::now();
    let stats = crate::support::wait_until(
        limiter,
        Duration::from_secs(5),
        "no permit left active",
        |s| s.active == 0 && !s.degraded,
    )
    .await;
    crate::support::report(
        &format!("{what}: active 0 after the last release"),
        released.elapsed(),
    );
    assert_eq!(stats.queued.total(), 0, "{stats:?}");
}
