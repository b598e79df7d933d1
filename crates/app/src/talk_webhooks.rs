//! D-ID → talkgate: the webhook D-ID calls when a talk ends, instead of polling it.
//!
//! With [`TalkWebhooks`] configured (the service's `PUBLIC_BASE_URL`), every job gets an
//! unguessable token at submit ([`Job::webhook_token`]) and its create asks D-ID to call
//! `<receiver>/<job id>?token=<token>` when the talk ends. D-ID does not sign webhooks, so
//! a receipt proves nothing by itself:
//! - the token is compared through digests (a timing difference says nothing about it), and
//!   a wrong token or an unknown job is [`TalkWebhookReceipt::Rejected`], the same answer
//!   for both;
//! - a job that has ended already is a [`TalkWebhookReceipt::Duplicate`] (a repeated or
//!   late delivery changes nothing);
//! - otherwise the receipt only makes the job due now: the worker that claims it polls
//!   `GET /talks/{id}`, and that answer — never the webhook's body — finishes the job. A
//!   forged or stale body cannot finish a job; a true one saves the polls in between.
//!
//! Polling stays as the fallback for a lost webhook: a job whose webhook is expected is
//! polled every [`TalkWebhooks::fallback_poll`] instead of on the short schedule (a request
//! that waits for its own talk polls as before; the webhook only nudges its job).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ports::{Job, JobId, JobStatus, JobStoreError};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

use crate::engine::{Jobs, lock};
use crate::error::AppError;
use crate::now_ms;

/// Jobs nudged by a receipt and not yet seen ending, remembered at most (for `confirmed`).
const MAX_NUDGED: usize = 10_000;
/// How long a nudged job is remembered for `confirmed`.
const NUDGED_TTL: Duration = Duration::from_secs(600);
/// How long a receipt waits for its job to be free to nudge: its create written (did-client
/// may take up to its 120 s call deadline, retries and look-up included) or the claim of a
/// poll or a waiting request let go.
const NUDGE_WAIT: Duration = Duration::from_secs(150);
/// Receipts waiting to nudge their job at once, at most (beyond: the fallback poll covers).
pub const MAX_NUDGES: usize = 1_024;

/// Where D-ID's webhooks reach this service, and the fallback polling while one is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TalkWebhooks {
    /// The receiver's URL without the job id (e.g.
    /// `https://gw.example.com/api/d_id_optimized/talk-webhooks`).
    pub receiver: String,
    /// Between two polls of a job whose webhook is expected.
    pub fallback_poll: Duration,
}

/// What a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TalkWebhookReceipt {
    /// The job will be polled at once.
    Accepted,
    /// The job has ended already: nothing to do.
    Duplicate,
    /// No such job, or not its token.
    Rejected,
}

/// The receipts so far (this instance).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TalkWebhookCounts {
    /// Receipts that made a job due.
    pub accepted: u64,
    /// Receipts for jobs that had ended.
    pub duplicate: u64,
    /// Receipts with an unknown job or a wrong token.
    pub rejected: u64,
    /// Nudged jobs whose poll then found the talk ended (the webhook was right).
    pub confirmed: u64,
}

/// The receipt counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    confirmed: AtomicU64,
}

/// A fresh webhook token: 32 alphanumeric characters (about 190 bits).
pub fn new_webhook_token() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Whether `given` is `expected`, compared through their digests.
fn same_token(expected: &str, given: &str) -> bool {
    Sha256::digest(expected.as_bytes()) == Sha256::digest(given.as_bytes())
}

impl Jobs {
    /// A token for a new job, when D-ID's webhooks are taken.
    pub(crate) fn webhook_token_for_new_job(&self) -> Option<String> {
        self.config
            .talk_webhooks
            .as_ref()
            .map(|_| new_webhook_token())
    }

    /// The webhook URL of `job`'s create, if D-ID should call one: webhooks are configured,
    /// the job has a token, and the caller did not ask for a webhook of its own (a talk has
    /// one; the caller's wins, and the job is polled as before).
    pub(crate) fn talk_webhook_url(&self, job: &Job) -> Option<String> {
        let hooks = self.config.talk_webhooks.as_ref()?;
        let token = job.webhook_token.as_ref()?;
        if job.request.webhook().is_some() {
            return None;
        }
        Some(format!("{}/{}?token={token}", hooks.receiver, job.id))
    }

    /// The fallback poll interval of `job`, if its webhook is expected: its create asked
    /// for one (whatever this instance's configuration says now).
    pub(crate) fn fallback_poll(&self, job: &Job) -> Option<Duration> {
        if !job.webhook_sent {
            return None;
        }
        self.config.talk_webhooks.as_ref().map(|h| h.fallback_poll)
    }

    /// D-ID called the webhook of job `raw_id` (as the URL had it) with `token` (see the
    /// module docs). Returns at once; an accepted receipt makes the job due in the
    /// background (waiting, for a job whose create is still being written, up to 10 s).
    pub async fn receive_talk_webhook(
        self: &Arc<Self>,
        raw_id: &str,
        token: &str,
    ) -> Result<TalkWebhookReceipt, AppError> {
        let job = match JobId::parse(raw_id) {
            Ok(id) => self.store.get(&id).await.map_err(|e| self.store_error(e))?,
            Err(_) => None,
        };
        let span = tracing::info_span!(
            "talk_webhook.receive",
            job.id = tracing::field::Empty,
            job.status = tracing::field::Empty,
            talk_webhook.receipt = tracing::field::Empty,
        );
        if let Some(job) = &job {
            span.record("job.id", tracing::field::display(&job.id));
            span.record("job.status", tracing::field::display(&job.status));
            self.link_to_submit(&span, job);
        }
        let _entered = span.enter();
        let receipt = match job {
            Some(job)
                if job
                    .webhook_token
                    .as_deref()
                    .is_some_and(|expected| same_token(expected, token)) =>
            {
                if job.status.is_terminal() {
                    TalkWebhookReceipt::Duplicate
                } else {
                    match Arc::clone(&self.nudges).try_acquire_owned() {
                        Ok(slot) => {
                            let jobs = Arc::clone(self);
                            tokio::spawn(async move {
                                jobs.nudge(&job.id).await;
                                drop(slot);
                            });
                        }
                        Err(_) => tracing::warn!(
                            job_id = %job.id,
                            "{MAX_NUDGES} webhook receipts are waiting already: the fallback poll follows this job"
                        ),
                    }
                    TalkWebhookReceipt::Accepted
                }
            }
            _ => TalkWebhookReceipt::Rejected,
        };
        let counter = match receipt {
            TalkWebhookReceipt::Accepted => &self.talk_webhooks.accepted,
            TalkWebhookReceipt::Duplicate => &self.talk_webhooks.duplicate,
            TalkWebhookReceipt::Rejected => &self.talk_webhooks.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        span.record("talk_webhook.receipt", tracing::field::debug(&receipt));
        let job_id: String = raw_id.chars().take(64).collect();
        tracing::info!(%job_id, receipt = ?receipt, "D-ID webhook received");
        Ok(receipt)
    }

    /// Makes job `id` due now, once nobody is working on it: its create written (a receipt
    /// can overtake the write of the create that asked for it) and no claim held (a poll
    /// under way may have asked just before the talk ended, and would plan the next one a
    /// fallback interval later). Gives up after [`NUDGE_WAIT`]; the fallback poll remains.
    async fn nudge(&self, id: &JobId) {
        let deadline = tokio::time::Instant::now() + NUDGE_WAIT;
        let mut pause = Duration::from_millis(50);
        loop {
            let job = match self.store.get(id).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "could not read a job a webhook named");
                    return;
                }
            };
            if job.status.is_terminal() {
                return;
            }
            let now = now_ms();
            let claimed = job.lease.as_ref().is_some_and(|l| l.until_ms > now);
            if job.status == JobStatus::Processing && !claimed {
                self.remember_nudged(id);
                if job.next_run_ms <= now {
                    // Due already: a worker claims it next.
                    return;
                }
                let mut due = job;
                due.next_run_ms = now;
                match self.write(due, JobStatus::Processing).await {
                    Ok(_) => return,
                    // Someone wrote it meanwhile (a claim, a poll): read it again.
                    Err(JobStoreError::Conflict { .. }) => {}
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %e, "could not make a job due after its webhook");
                        return;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Remembers that a receipt nudged `id` (bounded: stale entries go first).
    fn remember_nudged(&self, id: &JobId) {
        let mut nudged = lock(&self.nudged);
        if nudged.len() >= MAX_NUDGED {
            nudged.retain(|_, at| at.elapsed() < NUDGED_TTL);
        }
        if nudged.len() < MAX_NUDGED {
            nudged.insert(id.clone(), std::time::Instant::now());
        }
    }

    /// A poll of `id` found its talk ended: a webhook's nudge was right.
    pub(crate) fn note_ended(&self, id: &JobId) {
        if lock(&self.nudged).remove(id).is_some() {
            self.talk_webhooks.confirmed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The receipts so far.
    pub fn talk_webhook_counts(&self) -> TalkWebhookCounts {
        let c = &self.talk_webhooks;
        TalkWebhookCounts {
            accepted: c.accepted.load(Ordering::Relaxed),
            duplicate: c.duplicate.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            confirmed: c.confirmed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_compared_whole() {
        let a = new_webhook_token();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_webhook_token());
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &a[..31]));
        assert!(!same_token(&a, ""));
    }
}
