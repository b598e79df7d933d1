//! The steps of a claimed job: create its talk (or adopt the one an earlier attempt made),
//! poll it, schedule the next poll, and record how an inline job's wait ended.

use std::time::Duration;

use domain::{CreatedTalk, TalkStatus};
use ports::{
    Attempt, FailureCode, Job, JobFailure, JobId, JobStatus, JobStoreError, LimiterError,
    PollSchedule, VideoApiError,
};

use crate::admission::create_key;
use crate::engine::Jobs;
use crate::failure::failure_of;
use crate::now_ms;

/// Creates that may have reached D-ID (timeout, 5xx, cut connection) before a job fails.
pub const MAX_CREATE_ATTEMPTS: usize = 5;
/// How long D-ID keeps a result URL working (its documentation: about 24 hours).
pub const RESULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Who runs a create, which decides what its failure and its lease become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// A worker: a failure that may pass is retried later; the lease is let go after.
    Worker,
    /// A synchronous generate: a failure is the caller's answer (the job fails); the lease is
    /// kept, the request waits for the talk itself.
    InlineWait,
    /// An asynchronous generate: as `InlineWait`, but the lease is let go after the create
    /// (the workers follow the talk).
    InlineAsync,
}

/// Why a create failed, as the engine treats it.
enum CreateOutcome {
    /// The call ended waiting for a slot or throttled: tried again soon, not counted as an
    /// attempt (an earlier attempt of the same call may still have reached D-ID, so the job
    /// stays `creating` and the next try looks first).
    NotSent(Duration),
    /// It may have reached D-ID: retry with the look-up.
    Ambiguous,
    /// D-ID said no (or it can never work): the job fails.
    Final,
}

fn classify_create(error: &VideoApiError) -> CreateOutcome {
    match error {
        VideoApiError::Limiter(LimiterError::Timeout { .. }) => {
            CreateOutcome::NotSent(Duration::ZERO)
        }
        VideoApiError::Limiter(LimiterError::Unavailable { .. }) => {
            CreateOutcome::NotSent(Duration::from_secs(1))
        }
        // The breaker held it back: nothing was sent; come back when it may let it through.
        VideoApiError::Limiter(LimiterError::UpstreamUnavailable { retry_after }) => {
            CreateOutcome::NotSent(
                (*retry_after).clamp(Duration::from_millis(100), Duration::from_secs(60)),
            )
        }
        VideoApiError::RateLimited { retry_after } => CreateOutcome::NotSent(
            retry_after
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(60)),
        ),
        e if e.is_retryable() => CreateOutcome::Ambiguous,
        _ => CreateOutcome::Final,
    }
}

impl Jobs {
    /// The polls of a processing job: [`PollSchedule`] up to `poll_max`.
    fn poll_schedule(&self) -> PollSchedule {
        PollSchedule::new(self.config.poll_max, PollSchedule::JITTER)
    }

    /// Creates the job's talk (or adopts the one an earlier attempt made); the job as
    /// written, and the error the create failed with, if it did.
    pub async fn create(
        &self,
        mut job: Job,
        owner: &str,
        mode: CreateMode,
    ) -> Result<(Job, Result<CreatedTalk, VideoApiError>), JobStoreError> {
        let inline = mode != CreateMode::Worker;
        // Look first when a create may have been sent before: the job was left `creating`
        // (by a worker or a request that died), or any earlier attempt exists (even one that
        // ended without a slot: an attempt inside the same client call may have reached D-ID).
        let look_first = job.status == JobStatus::Creating && !inline
            || !job.attempts.is_empty()
            || job.idempotency.is_some() && self.store_lost_data_recently();
        let from = job.status;
        if job.status == JobStatus::Queued {
            job.status = JobStatus::Creating;
            job.updated_ms = now_ms();
            job = self.write(job, from).await?;
            self.note_drained();
        }
        let at = now_ms();
        // With D-ID's webhooks taken, the create asks for the job's receiver.
        let with_webhook = self.talk_webhook_url(&job).and_then(|url| {
            job.request
                .clone()
                .with_service_webhook(url)
                .map_err(|e| tracing::warn!(job_id = %job.id, error = %e, "the webhook URL is not usable: polling"))
                .ok()
        });
        let result = self
            .video
            .create_talk_keyed(
                with_webhook.as_ref().unwrap_or(&job.request),
                &self.admission_of(&job),
                &create_key(&job),
                look_first,
            )
            .await;
        let now = now_ms();
        job.updated_ms = now;
        match result {
            Ok(created) => {
                job.record_attempt(Attempt {
                    worker: owner.to_owned(),
                    action: if look_first {
                        "create (looked up first)"
                    } else {
                        "create"
                    }
                    .to_owned(),
                    at_ms: at,
                    outcome: format!("ok: {}", created.id),
                });
                job.status = JobStatus::Processing;
                job.talk_id = Some(created.id.clone());
                job.talk_created_status = Some(created.status.as_str().to_owned());
                job.talk_created_at = created.created_at.clone();
                job.webhook_sent = with_webhook.is_some();
                // A talk adopted by the look-up may have ended before its webhook could reach
                // a job that existed: poll it on the short schedule.
                let first = match self.fallback_poll(&job) {
                    Some(fallback) if !look_first && !created.status.is_terminal() => fallback,
                    _ => self.poll_schedule().delay(0, rand::random()),
                };
                job.next_run_ms = now + ports::jobs::duration_ms(first);
                if mode != CreateMode::InlineWait {
                    job.lease = None;
                }
                return Ok((self.write(job, JobStatus::Creating).await?, Ok(created)));
            }
            Err(error) => {
                let outcome = classify_create(&error);
                let sent_before = job
                    .attempts
                    .iter()
                    .filter(|a| a.action.starts_with("create"))
                    .count();
                match outcome {
                    CreateOutcome::NotSent(delay) => {
                        job.record_attempt(Attempt {
                            worker: owner.to_owned(),
                            action: "wait".to_owned(),
                            at_ms: at,
                            outcome: format!("not sent: {}", failure_of(&error).code),
                        });
                        if inline {
                            job.status = JobStatus::Failed;
                            job.error = Some(failure_of(&error));
                            job.finished_ms = Some(now);
                        } else {
                            // The error is the call's last: an earlier attempt inside it
                            // (did-client retries) may have reached D-ID before this one
                            // found no slot or was throttled. So the job stays `creating`
                            // and the next try looks the talk up first.
                            job.status = JobStatus::Creating;
                            job.next_run_ms = now + ports::jobs::duration_ms(delay);
                        }
                        job.lease = None;
                    }
                    CreateOutcome::Ambiguous
                        if sent_before + 1 < MAX_CREATE_ATTEMPTS && !inline =>
                    {
                        job.record_attempt(Attempt {
                            worker: owner.to_owned(),
                            action: "create".to_owned(),
                            at_ms: at,
                            outcome: format!("retry: {}", failure_of(&error).code),
                        });
                        job.status = JobStatus::Creating;
                        let backoff = 1u64 << sent_before.min(5);
                        job.next_run_ms = now + backoff * 1000;
                        job.lease = None;
                    }
                    CreateOutcome::Ambiguous | CreateOutcome::Final => {
                        job.record_attempt(Attempt {
                            worker: owner.to_owned(),
                            action: "create".to_owned(),
                            at_ms: at,
                            outcome: failure_of(&error).code.to_string(),
                        });
                        job.status = JobStatus::Failed;
                        job.error = Some(failure_of(&error));
                        job.finished_ms = Some(now);
                        job.lease = None;
                    }
                }
                Ok((self.write(job, JobStatus::Creating).await?, Err(error)))
            }
        }
    }

    /// One status poll of a processing job.
    pub(crate) async fn poll(&self, mut job: Job, owner: &str) -> Result<Job, JobStoreError> {
        let Some(talk_id) = job.talk_id.clone() else {
            // Cannot happen (processing always has a talk); fail loudly rather than loop.
            job.status = JobStatus::Failed;
            job.error = Some(JobFailure {
                code: FailureCode::InternalError,
                message: "a processing job without a talk id".into(),
                upstream_status: None,
            });
            job.finished_ms = Some(now_ms());
            job.lease = None;
            return self.write(job, JobStatus::Processing).await;
        };
        let at = now_ms();
        let admission = self.admission_of(&job);
        let result = self.video.get_talk(&talk_id, &admission).await;
        let now = now_ms();
        job.updated_ms = now;
        job.polls = job.polls.saturating_add(1);
        let ended = |job: &mut Job, error: Option<VideoApiError>| {
            self.note_ended(&job.id);
            job.finished_ms = Some(now);
            job.lease = None;
            match error {
                None => job.status = JobStatus::Done,
                Some(e) => {
                    job.status = JobStatus::Failed;
                    job.error = Some(failure_of(&e));
                }
            }
        };
        match result {
            Ok(talk) => match &talk.status {
                TalkStatus::Done => {
                    job.result_url = talk.result_url.clone();
                    job.video_seconds = talk.duration;
                    job.result_expires_ms = Some(now + ports::jobs::duration_ms(RESULT_TTL));
                    ended(&mut job, None);
                }
                TalkStatus::Error => {
                    let (kind, description) = talk
                        .error
                        .as_ref()
                        .map(|e| (e.kind.clone(), e.description.clone()))
                        .unwrap_or_default();
                    ended(
                        &mut job,
                        Some(VideoApiError::TalkFailed {
                            talk_id: talk_id.clone(),
                            kind,
                            description,
                        }),
                    );
                }
                TalkStatus::Rejected => {
                    let description = talk
                        .error
                        .as_ref()
                        .map(|e| e.description.clone())
                        .unwrap_or_default();
                    ended(
                        &mut job,
                        Some(VideoApiError::TalkRejected {
                            talk_id: talk_id.clone(),
                            description,
                        }),
                    );
                }
                _ => self.schedule_poll(&mut job, &talk_id, now),
            },
            Err(VideoApiError::NotFound { description }) => {
                ended(&mut job, Some(VideoApiError::NotFound { description }));
            }
            Err(e) => {
                job.record_attempt(Attempt {
                    worker: owner.to_owned(),
                    action: "poll".to_owned(),
                    at_ms: at,
                    outcome: format!("retry: {}", failure_of(&e).code),
                });
                self.schedule_poll(&mut job, &talk_id, now);
            }
        }
        self.write(job, JobStatus::Processing).await
    }

    fn schedule_poll(&self, job: &mut Job, talk_id: &domain::TalkId, now: u64) {
        if now.saturating_sub(job.created_ms) > ports::jobs::duration_ms(self.config.max_processing)
        {
            job.status = JobStatus::Failed;
            job.error = Some(failure_of(&VideoApiError::TalkTimedOut {
                talk_id: talk_id.clone(),
                waited: Duration::from_millis(now.saturating_sub(job.created_ms)),
            }));
            job.finished_ms = Some(now);
        } else {
            // The same schedule as a request that waits: short first, growing to the
            // interval, spread so that many jobs do not poll in step.
            let delay = match self.fallback_poll(job) {
                // A webhook is expected: poll only as the fallback for a lost one.
                Some(fallback) => fallback,
                None => self.poll_schedule().delay(job.polls, rand::random()),
            };
            let delay = ports::jobs::duration_ms(delay).max(1);
            job.next_run_ms = now + delay;
        }
        job.lease = None;
    }

    /// Records the end of an inline job's wait: `done`, or the failure the caller got.
    /// A timed-out wait leaves the job `processing` (the workers follow it on).
    pub async fn finish_inline(
        &self,
        id: &JobId,
        outcome: &Result<domain::Talk, VideoApiError>,
    ) -> Result<Job, JobStoreError> {
        // Re-read: the lease renewals do not move the version, but be safe against a write
        // by another owner (then that owner's write stands).
        let Some(mut job) = self.store.get(id).await? else {
            return Err(JobStoreError::NotFound(id.clone()));
        };
        if job.status.is_terminal() {
            return Ok(job);
        }
        let now = now_ms();
        job.updated_ms = now;
        job.lease = None;
        match outcome {
            Ok(talk) => {
                job.status = JobStatus::Done;
                job.result_url = talk.result_url.clone();
                job.video_seconds = talk.duration;
                job.result_expires_ms = Some(now + ports::jobs::duration_ms(RESULT_TTL));
                job.finished_ms = Some(now);
                // What the caller's answer carries, for a replay to carry it too.
                if talk.created_at.is_some() {
                    job.talk_created_at = talk.created_at.clone();
                }
            }
            Err(VideoApiError::TalkTimedOut { .. }) => {
                job.next_run_ms = now;
            }
            Err(e) => {
                job.status = JobStatus::Failed;
                job.error = Some(failure_of(e));
                job.finished_ms = Some(now);
            }
        }
        let from = JobStatus::Processing;
        self.write(job, from).await
    }

    /// Takes a failed-before-D-ID job of a replayed key back for another inline try.
    pub async fn retake(&self, mut job: Job, owner: &str) -> Result<Job, JobStoreError> {
        let from = job.status;
        job.status = JobStatus::Creating;
        job.error = None;
        job.finished_ms = None;
        job.lease = Some(self.lease_for(owner));
        job.updated_ms = now_ms();
        self.write(job, from).await
    }

    /// Cancels a queued job. Other states are answered by the caller.
    pub async fn cancel(&self, mut job: Job) -> Result<Job, JobStoreError> {
        let from = job.status;
        let now = now_ms();
        job.status = JobStatus::Cancelled;
        job.finished_ms = Some(now);
        job.updated_ms = now;
        job.lease = None;
        self.write(job, from).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::Priority;

    #[test]
    fn creates_that_reached_nothing_are_requeued_and_ambiguous_ones_retried() {
        let timeout = VideoApiError::Limiter(LimiterError::Timeout {
            priority: Priority::Low,
            waited: Duration::from_secs(60),
        });
        assert!(matches!(classify_create(&timeout), CreateOutcome::NotSent(d) if d.is_zero()));
        let throttled = VideoApiError::RateLimited {
            retry_after: Some(Duration::from_secs(500)),
        };
        assert!(
            matches!(classify_create(&throttled), CreateOutcome::NotSent(d) if d == Duration::from_secs(60)),
            "a throttle's wait is capped"
        );
        assert!(matches!(
            classify_create(&VideoApiError::Server { status: 503 }),
            CreateOutcome::Ambiguous
        ));
        assert!(matches!(
            classify_create(&VideoApiError::InsufficientCredits),
            CreateOutcome::Final
        ));
    }
}
