//! talkgate → caller: a job's outcome delivered to its `callback_url`, at least once.
//!
//! # Durable from the first moment
//! The write that ends a job (`done`, `failed`, `cancelled`) also arms its [`Callback`]
//! ([`Jobs::write`]): one store write, so no crash can fall between the job ending and its
//! callback being owed. The event is `talk.done`, `talk.failed`, `talk.rejected` (D-ID's
//! `rejected`) or `job.cancelled`; its `webhook-id` is fixed then (`msg_` and the job id's
//! characters), the same on every attempt.
//!
//! # Delivery
//! [`CallbackSettings::workers`] callback workers per instance claim due callbacks from the
//! store ([`ports::JobStore::claim_callback`], earliest due first, under the job's lease),
//! send one attempt through the [`CallbackSender`] and write the outcome back:
//! - a 2xx: `delivered`;
//! - a permanent refusal (a destination the policy refuses, a 4xx other than 408/409/429):
//!   `failed` at once;
//! - anything else: the next attempt after an exponential back-off — `first_retry` (5 s),
//!   doubling, at most [`MAX_RETRY_PAUSE`], ±10 % — until the horizon (24 h after the job
//!   ended) passes; then `failed`;
//! - an endpoint with all its slots busy: tried again after [`BUSY_RETRY`], not counted as an
//!   attempt (one slow receiver holds at most its per-endpoint slots, never every worker).
//!
//! A worker that dies mid-attempt (SIGKILL) leaves its lease behind; once it runs out any
//! instance's workers claim the callback again, so a callback whose answer was lost is sent
//! again under the same `webhook-id` (receivers dedupe on it). One look per instance asks the
//! store when the next callback is due ([`ports::JobStore::next_callback_due`]) and wakes a
//! worker then, at least every [`CALLBACK_IDLE_LOOK`]: retries and callbacks orphaned by
//! another instance are found on time, and an idle instance asks once per look.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ports::{
    Callback, CallbackAttempt, CallbackDelivery, CallbackError, CallbackEvent, CallbackSender,
    CallbackStatus, FailureCode, Job, JobId, JobStatus, JobStoreError, LeaseTerms,
};
use rand::Rng;
use tracing::Instrument as _;

use crate::engine::Jobs;
use crate::now_ms;

/// The longest pause between two attempts.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2 * 3600);
/// An attempt that found its endpoint's slots all busy is tried again after this long.
pub const BUSY_RETRY: Duration = Duration::from_secs(2);
/// The callback look's longest sleep: how late a callback orphaned by a dead instance (its
/// lease run out) or scheduled by another instance is found, at most.
pub const CALLBACK_IDLE_LOOK: Duration = Duration::from_secs(10);
/// A store that failed is asked again after this long.
const FAILED_LOOK: Duration = Duration::from_secs(1);
/// How often a delivery's write-back is tried when the job moved in between.
const WRITE_TRIES: usize = 4;

/// Renders the body of a callback: the JSON the receiver gets, the same bytes on every
/// attempt of one callback (the HTTP service renders the job as `GET /jobs/{id}` shows it).
pub type RenderCallback = Arc<dyn Fn(&Job, &Callback) -> Vec<u8> + Send + Sync>;

/// How the engine delivers callbacks.
#[derive(Clone)]
pub struct CallbackSettings {
    /// Sends one attempt.
    pub sender: Arc<dyn CallbackSender>,
    /// The body of a callback.
    pub render: RenderCallback,
    /// Callback workers per instance.
    pub workers: usize,
    /// The pause after the first failed attempt (doubling after each).
    pub first_retry: Duration,
    /// How long after the job ended attempts go on.
    pub horizon: Duration,
    /// A claim's lease: longer than one attempt can take (the sender's timeout), so that a
    /// live worker never loses its claim mid-attempt.
    pub lease: Duration,
}

impl fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackSettings")
            .field("workers", &self.workers)
            .field("first_retry", &self.first_retry)
            .field("horizon", &self.horizon)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl CallbackSettings {
    /// Settings with the defaults: 8 workers, 5 s first retry, 24 h horizon, 60 s lease.
    pub fn new(sender: Arc<dyn CallbackSender>, render: RenderCallback) -> CallbackSettings {
        CallbackSettings {
            sender,
            render,
            workers: 8,
            first_retry: Duration::from_secs(5),
            horizon: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
        }
    }

    /// The pause before the attempt after `failed` failed ones (≥ 1): `first_retry ×
    /// 2^(failed-1)`, at most [`MAX_RETRY_PAUSE`], before jitter.
    pub fn pause_after(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(30);
        self.first_retry
            .saturating_mul(1u32 << doublings)
            .min(MAX_RETRY_PAUSE)
    }
}

/// What an ended job's callback tells.
pub fn event_of(job: &Job) -> Option<CallbackEvent> {
    match job.status {
        JobStatus::Done => Some(CallbackEvent::TalkDone),
        JobStatus::Failed
            if job
                .error
                .as_ref()
                .is_some_and(|e| e.code == FailureCode::TalkRejected) =>
        {
            Some(CallbackEvent::TalkRejected)
        }
        JobStatus::Failed => Some(CallbackEvent::TalkFailed),
        JobStatus::Cancelled => Some(CallbackEvent::JobCancelled),
        JobStatus::Queued | JobStatus::Creating | JobStatus::Processing => None,
    }
}

/// The `webhook-id` of a job's callback: `msg_` and the job id's characters.
pub fn webhook_id(id: &JobId) -> String {
    let chars = id.as_str().strip_prefix("job_").unwrap_or(id.as_str());
    format!("msg_{chars}")
}

/// The callbacks so far (this instance).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallbackCounts {
    /// Attempts sent, by outcome: answered 2xx.
    pub attempts_ok: u64,
    /// Attempts answered with another status.
    pub attempts_status: u64,
    /// Attempts that timed out.
    pub attempts_timeout: u64,
    /// Attempts without a complete answer (DNS, connect, TLS, reset).
    pub attempts_transport: u64,
    /// Attempts refused before sending (the destination policy).
    pub attempts_refused: u64,
    /// Callbacks delivered.
    pub delivered: u64,
    /// Callbacks given up.
    pub failed: u64,
}

impl CallbackCounts {
    /// Every attempt, whatever its outcome.
    pub fn attempted(&self) -> u64 {
        self.attempts_ok
            + self.attempts_status
            + self.attempts_timeout
            + self.attempts_transport
            + self.attempts_refused
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    ok: AtomicU64,
    status: AtomicU64,
    timeout: AtomicU64,
    transport: AtomicU64,
    refused: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn attempt(&self, outcome: &Result<u16, CallbackError>) {
        let counter = match outcome {
            Ok(_) => &self.ok,
            Err(CallbackError::Status { .. }) => &self.status,
            Err(CallbackError::Timeout(_)) => &self.timeout,
            Err(CallbackError::Transport(_)) => &self.transport,
            Err(CallbackError::Refused(_)) => &self.refused,
            Err(CallbackError::Busy) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> CallbackCounts {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CallbackCounts {
            attempts_ok: n(&self.ok),
            attempts_status: n(&self.status),
            attempts_timeout: n(&self.timeout),
            attempts_transport: n(&self.transport),
            attempts_refused: n(&self.refused),
            delivered: n(&self.delivered),
            failed: n(&self.failed),
        }
    }
}

/// How one attempt changes the callback.
fn apply(
    settings: &CallbackSettings,
    job: &mut Job,
    at_ms: u64,
    took: Duration,
    outcome: &Result<u16, CallbackError>,
) {
    job.lease = None;
    let Some(cb) = job.callback.as_mut() else {
        return;
    };
    let now = at_ms.saturating_add(ports::jobs::duration_ms(took));
    let attempt = |outcome: &str, status: Option<u16>, error: String| CallbackAttempt {
        at_ms,
        outcome: outcome.to_owned(),
        status,
        error,
        took_ms: ports::jobs::duration_ms(took),
    };
    match outcome {
        Ok(status) => {
            cb.record(attempt("ok", Some(*status), String::new()));
            cb.status = CallbackStatus::Delivered;
            cb.ended_ms = Some(now);
        }
        Err(CallbackError::Busy) => {
            cb.next_attempt_ms = now.saturating_add(ports::jobs::duration_ms(BUSY_RETRY));
        }
        Err(e) => {
            let status = match e {
                CallbackError::Status { status } => Some(*status),
                _ => None,
            };
            cb.record(attempt(e.code(), status, e.to_string()));
            let pause = settings.pause_after(cb.attempts);
            let jitter = rand::rng().random_range(0.9..1.1);
            let next = now.saturating_add(ports::jobs::duration_ms(pause.mul_f64(jitter)));
            let horizon = cb
                .created_ms
                .saturating_add(ports::jobs::duration_ms(settings.horizon));
            if e.is_permanent() || next > horizon {
                cb.status = CallbackStatus::Failed;
                cb.ended_ms = Some(now);
            } else {
                cb.next_attempt_ms = next;
            }
        }
    }
}

impl Jobs {
    /// Arms `job`'s callback if this write ends it: the service delivers callbacks, the job
    /// has a `callback_url`, and no callback was armed before (a job ends once; a job retaken
    /// after a failure keeps the callback of its first end).
    pub(crate) fn arm_callback(&self, job: &mut Job, from: JobStatus) -> bool {
        if self.config.callbacks.is_none()
            || from.is_terminal()
            || job.callback_url.is_none()
            || job.callback.is_some()
        {
            return false;
        }
        let Some(event) = event_of(job) else {
            return false;
        };
        let at = job.finished_ms.unwrap_or_else(now_ms);
        job.callback = Some(Callback::new(event, webhook_id(&job.id), at));
        true
    }

    /// The callbacks so far (this instance).
    pub fn callback_counts(&self) -> CallbackCounts {
        self.callbacks.snapshot()
    }

    /// Starts the callback workers and their look (with [`Jobs::start`]).
    pub(crate) fn start_callbacks(
        self: &Arc<Self>,
        handles: &mut Vec<tokio::task::JoinHandle<()>>,
    ) {
        let Some(settings) = &self.config.callbacks else {
            // Callbacks armed by an instance that delivers them (or by this one, before its
            // secret was removed) wait in the store, and keep their jobs from the purge, until
            // an instance that delivers callbacks sends them: say so once, at start.
            let jobs = Arc::clone(self);
            handles.push(tokio::spawn(async move {
                if let Ok(counts) = jobs.store.counts().await
                    && counts.callbacks_pending > 0
                {
                    tracing::warn!(
                        pending = counts.callbacks_pending,
                        "callbacks are pending in the job store but this instance delivers none (CALLBACK_SECRET is not set): they, and their jobs, are kept until an instance with CALLBACK_SECRET sends them"
                    );
                }
            }));
            return;
        };
        for n in 0..settings.workers.max(1) {
            let jobs = Arc::clone(self);
            let name = format!("{}/cb-{n}", self.instance);
            handles.push(tokio::spawn(
                async move { jobs.callback_worker(name).await },
            ));
        }
        let jobs = Arc::clone(self);
        handles.push(tokio::spawn(async move { jobs.callback_look().await }));
    }

    /// A callback worker: claims and delivers due callbacks while there are any, then sleeps
    /// until woken (a job ended here, the look found one due).
    async fn callback_worker(self: Arc<Self>, name: String) {
        let Some(settings) = self.config.callbacks.clone() else {
            return;
        };
        let mut failing = false;
        while !self.stopping.load(Ordering::SeqCst) {
            let claimed = self
                .store
                .claim_callback(LeaseTerms::new(&name, settings.lease, now_ms()))
                .await;
            match claimed {
                Ok(Some(job)) => {
                    failing = false;
                    // More may be due: one more worker tries.
                    self.callback_wake.notify_one();
                    self.deliver(&settings, job, &name).await;
                    continue;
                }
                Ok(None) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(worker = %name, error = %e, "could not claim a callback; retrying when the look finds one due");
                }
                Err(e) => tracing::debug!(worker = %name, error = %e, "could not claim a callback"),
            }
            tokio::select! {
                () = self.callback_wake.notified() => {}
                () = self.stopped() => {}
            }
        }
    }

    /// The instance's one look for due callbacks (see the module docs).
    async fn callback_look(self: Arc<Self>) {
        let mut failed = 0u64;
        while !self.stopping.load(Ordering::SeqCst) {
            let now = now_ms();
            let pause = match self.store.next_callback_due(now).await {
                Ok(due) => {
                    if failed > 0 {
                        tracing::info!(
                            failed_looks = failed,
                            "callbacks: the job store answers again"
                        );
                        failed = 0;
                    }
                    match due {
                        Some(due) if due <= now => {
                            self.callback_wake.notify_one();
                            CALLBACK_IDLE_LOOK.min(Duration::from_secs(1))
                        }
                        Some(due) => Duration::from_millis(due - now).min(CALLBACK_IDLE_LOOK),
                        None => CALLBACK_IDLE_LOOK,
                    }
                }
                Err(e) => {
                    if failed == 0 {
                        tracing::warn!(error = %e, "could not look for due callbacks; retrying every {FAILED_LOOK:?}");
                    }
                    failed += 1;
                    FAILED_LOOK
                }
            };
            self.next_callback_look_ms.store(
                now.saturating_add(ports::jobs::duration_ms(pause)),
                Ordering::SeqCst,
            );
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.callback_replan.notified() => {}
                () = self.stopped() => {}
            }
        }
    }

    /// One attempt of `job`'s callback, written back.
    async fn deliver(&self, settings: &CallbackSettings, job: Job, owner: &str) {
        let Some(cb) = job.callback.clone() else {
            return;
        };
        let span = tracing::info_span!(
            "callback.deliver",
            otel.kind = "producer",
            job.id = %job.id,
            job.status = %job.status,
            callback.attempt = i64::from(cb.attempts) + 1,
            callback.status_code = tracing::field::Empty,
        );
        self.link_to_submit(&span, &job);
        self.deliver_in(settings, job, cb, owner)
            .instrument(span)
            .await;
    }

    async fn deliver_in(&self, settings: &CallbackSettings, job: Job, cb: Callback, owner: &str) {
        let at_ms = now_ms();
        let started = Instant::now();
        let outcome: Result<u16, CallbackError> = match &job.callback_url {
            Some(url) => settings
                .sender
                .send(&CallbackDelivery {
                    url: url.clone(),
                    webhook_id: cb.webhook_id.clone(),
                    payload: (settings.render)(&job, &cb),
                    trace: self.current_trace(),
                })
                .await
                .map(|r| r.status),
            None => Err(CallbackError::Refused("the job has no callback_url".into())),
        };
        let took = started.elapsed();
        if let Ok(status) = &outcome {
            tracing::Span::current().record("callback.status_code", i64::from(*status));
        }
        self.callbacks.attempt(&outcome);
        let mut current = job;
        for _ in 0..WRITE_TRIES {
            apply(settings, &mut current, at_ms, took, &outcome);
            let id = current.id.clone();
            match self.store.update(current).await {
                Ok(written) => {
                    self.after_delivery(&written, &outcome);
                    return;
                }
                Err(JobStoreError::Conflict { .. }) => {
                    // Written in between (a lease renewal does not move the version, a
                    // claim does): go on only while the claim is still ours.
                    match self.store.get(&id).await {
                        Ok(Some(fresh))
                            if fresh.lease.as_ref().is_some_and(|l| l.owner == owner)
                                && fresh.callback.as_ref().is_some_and(Callback::is_pending) =>
                        {
                            current = fresh;
                        }
                        Ok(_) => {
                            tracing::info!(job_id = %id, "callback: the claim moved on before the outcome was written; the next owner sends it again");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "callback: outcome not written; sent again when the lease runs out");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "callback: outcome not written; sent again when the lease runs out");
                    return;
                }
            }
        }
    }

    fn after_delivery(&self, job: &Job, outcome: &Result<u16, CallbackError>) {
        let Some(cb) = &job.callback else { return };
        match cb.status {
            CallbackStatus::Delivered => {
                self.callbacks.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::info!(job_id = %job.id, webhook_id = %cb.webhook_id, event = %cb.event, attempts = cb.attempts, "callback delivered");
            }
            CallbackStatus::Failed => {
                self.callbacks.failed.fetch_add(1, Ordering::Relaxed);
                let error = outcome
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::warn!(job_id = %job.id, webhook_id = %cb.webhook_id, event = %cb.event, attempts = cb.attempts, %error, "callback given up");
            }
            CallbackStatus::Pending => {
                if let Err(e) = outcome
                    && !matches!(e, CallbackError::Busy)
                {
                    tracing::info!(job_id = %job.id, webhook_id = %cb.webhook_id, attempts = cb.attempts, error = %e, "callback attempt failed; retrying");
                }
                if cb.next_attempt_ms < self.next_callback_look_ms.load(Ordering::SeqCst) {
                    self.callback_replan.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;
    #[async_trait::async_trait]
    impl CallbackSender for Never {
        async fn send(
            &self,
            _delivery: &CallbackDelivery,
        ) -> Result<ports::CallbackReceipt, CallbackError> {
            Err(CallbackError::Busy)
        }
    }

    fn settings() -> CallbackSettings {
        CallbackSettings::new(Arc::new(Never), Arc::new(|_, _| Vec::new()))
    }

    #[test]
    fn the_pause_doubles_from_the_first_retry_up_to_two_hours() {
        let s = settings();
        let secs: Vec<u64> = (1..=13).map(|n| s.pause_after(n).as_secs()).collect();
        assert_eq!(
            secs,
            [
                5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 7200, 7200
            ]
        );
        assert_eq!(s.pause_after(u32::MAX), MAX_RETRY_PAUSE);
    }

    #[test]
    fn a_webhook_id_is_the_job_ids_characters() {
        let id = JobId::parse("job_abcdefghijklmnopqrstuv").unwrap();
        assert_eq!(webhook_id(&id), "msg_abcdefghijklmnopqrstuv");
    }
}
