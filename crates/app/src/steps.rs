//! The steps of a claimed job: create its talk (or adopt the one an earlier attempt made),
//! poll it, schedule the next poll, and record how an inline job's wait ended.

use std::time::Duration;

use domain::{CreatedTalk, TalkStatus};
use ports::{
    Attempt, CreateSent, FailureCode, Job, JobFailure, JobId, JobStatus, JobStoreError,
    LimiterError, PollSchedule, Sent, VideoApiError,
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

/// Why a create failed, as the engine treats it. Whether the next try looks first is not
/// decided here but by what the call may have sent ([`Job::create_sent`]).
enum CreateOutcome {
    /// The call ended waiting for a slot or throttled: tried again soon, not counted as an
    /// attempt; the job stays `creating`.
    Throttled(Duration),
    /// It failed in a way that may pass (a timeout, a 5xx, a cut connection): retried with
    /// a growing back-off, counted.
    Ambiguous,
    /// D-ID said no (or it can never work): the job fails.
    Final,
}

fn classify_create(error: &VideoApiError) -> CreateOutcome {
    match error {
        VideoApiError::Limiter(LimiterError::Timeout { .. }) => {
            CreateOutcome::Throttled(Duration::ZERO)
        }
        VideoApiError::Limiter(LimiterError::Unavailable { .. }) => {
            CreateOutcome::Throttled(Duration::from_secs(1))
        }
        // The breaker held it back: nothing was sent; come back when it may let it through.
        VideoApiError::Limiter(LimiterError::UpstreamUnavailable { retry_after }) => {
            CreateOutcome::Throttled(
                (*retry_after).clamp(Duration::from_millis(100), Duration::from_secs(60)),
            )
        }
        VideoApiError::RateLimited { retry_after } => CreateOutcome::Throttled(
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
        // Look first when a create may have reached D-ID before: one said it may have (a
        // timeout, a 5xx, also one whose last attempt was then throttled), or the job was
        // left in a create call by an owner that died. A create that sent nothing (throttled,
        // no slot) leaves nothing to find: the next one goes straight to `POST /talks`.
        // A request that works on its own job wrote the `InCall` itself.
        let look_first = job.create_may_have_been_sent(inline)
            || job.idempotency.is_some() && self.store_lost_data_recently();
        let from = job.status;
        // Before the call, the job must say that a create is under way, so that if this
        // owner dies mid-call the next one looks first. Only a job that has sent nothing
        // says otherwise and is written for it (a queued one is written `creating` anyway):
        // `InCall` and `Maybe` say it already, and a job stored by an earlier build
        // (`Unknown`) is looked up by the next owner as soon as it is `creating`.
        let intent = job.create_sent == CreateSent::Nothing;
        if job.status == JobStatus::Queued || intent {
            if intent {
                job.create_sent = CreateSent::InCall;
            }
            job.status = JobStatus::Creating;
            job.updated_ms = now_ms();
            job = self.write(job, from).await?;
            if from == JobStatus::Queued {
                self.note_drained();
            }
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
                // The talk exists.
                job.create_sent = CreateSent::Maybe;
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
            Err(failed) => {
                let error = failed.error;
                // Sticky: what an earlier create (or a dead owner's) may have done stays
                // possible. Only a job that had sent nothing and whose call sent nothing
                // again is back to `Nothing`.
                job.create_sent = if look_first || failed.sent == Sent::Maybe {
                    CreateSent::Maybe
                } else {
                    CreateSent::Nothing
                };
                let outcome = classify_create(&error);
                let sent_before = job
                    .attempts
                    .iter()
                    .filter(|a| a.action.starts_with("create"))
                    .count();
                match outcome {
                    CreateOutcome::Throttled(delay) => {
                        job.record_attempt(Attempt {
                            worker: owner.to_owned(),
                            action: "wait".to_owned(),
                            at_ms: at,
                            outcome: match failed.sent {
                                Sent::Nothing => {
                                    format!("not sent: {}", failure_of(&error).code)
                                }
                                Sent::Maybe => {
                                    format!("maybe sent, then {}", failure_of(&error).code)
                                }
                            },
                        });
                        if inline {
                            job.status = JobStatus::Failed;
                            job.error = Some(failure_of(&error));
                            job.finished_ms = Some(now);
                        } else {
                            // The job stays `creating`; its next try looks first if an
                            // attempt of this call (did-client's retries) may have reached
                            // D-ID before the last one was throttled.
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

    /// Takes a failed-before-D-ID job of a replayed key back for another inline try. A job
    /// whose creates sent nothing is marked as in a create call (the caller's own, which it
    /// makes next); one that may have sent keeps saying so, and its create looks first.
    pub async fn retake(&self, mut job: Job, owner: &str) -> Result<Job, JobStoreError> {
        let from = job.status;
        if job.create_sent == CreateSent::Nothing {
            job.create_sent = CreateSent::InCall;
        }
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use domain::TalkId;
    use jobstore_memory::MemoryJobStore;
    use ports::{CreateFailed, JobStore, MockVideoApi, NewJob, QueueLimits};

    use crate::admission::{Admitted, JobRequest};
    use crate::engine::JobsConfig;

    fn talk_request() -> domain::TalkRequest {
        domain::TalkRequest::new(
            Some("https://example.test/f.jpg".into()),
            domain::Script::Audio {
                audio_url: "https://example.test/v.wav".into(),
            },
        )
        .unwrap()
    }

    fn created() -> CreatedTalk {
        CreatedTalk {
            id: TalkId::parse("tlk_paced").unwrap(),
            status: TalkStatus::Created,
            created_at: None,
        }
    }

    /// An engine (no workers running) over a memory store and `video`.
    fn engine(video: MockVideoApi) -> (Arc<Jobs>, Arc<dyn JobStore>) {
        let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
        let jobs = Jobs::new(store.clone(), Arc::new(video), JobsConfig::default());
        (jobs, store)
    }

    async fn queued(jobs: &Jobs) -> Job {
        let request = JobRequest {
            request: talk_request(),
            admission: Priority::Normal.into(),
            callback_url: None,
            key: None,
        };
        match jobs.enqueue(request, None).await.unwrap() {
            Admitted::New(job) => job,
            Admitted::Replay(_) => panic!("a new job"),
        }
    }

    /// The create of a job returns the first of `failures` on the first call, then the
    /// talk; each call must come with the `look_first` the test expects for it.
    fn video(failures: Vec<CreateFailed>, looks: Vec<bool>) -> MockVideoApi {
        let mut video = MockVideoApi::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        video
            .expect_create_talk_keyed()
            .times(looks.len())
            .withf(move |_, _, _, look_first| {
                looks.get(seen.load(Ordering::SeqCst)) == Some(look_first)
            })
            .returning(move |_, _, _, _| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                failures.get(n).cloned().map_or(Ok(created()), Err)
            });
        video
    }

    #[tokio::test]
    async fn a_throttled_create_is_tried_again_without_a_look_up() {
        let throttled = CreateFailed::not_sent(VideoApiError::RateLimited { retry_after: None });
        let (jobs, _) = engine(video(vec![throttled], vec![false, false]));
        let job = queued(&jobs).await;
        let (job, result) = jobs.create(job, "w/0", CreateMode::Worker).await.unwrap();
        assert!(result.is_err());
        assert_eq!(job.status, JobStatus::Creating);
        assert_eq!(job.create_sent, CreateSent::Nothing, "a 429 made nothing");
        assert_eq!(
            job.attempts.last().map(|a| a.outcome.as_str()),
            Some("not sent: upstream_rate_limited")
        );
        let (job, result) = jobs.create(job, "w/1", CreateMode::Worker).await.unwrap();
        assert_eq!(result.unwrap().id, created().id);
        assert_eq!(job.status, JobStatus::Processing);
        assert_eq!(job.attempts.last().unwrap().action, "create");
    }

    #[tokio::test]
    async fn a_create_that_may_have_reached_d_id_is_looked_up_first_ever_after() {
        for failure in [
            // Its first attempt timed out, its retry was throttled: the error is a 429.
            CreateFailed::maybe_sent(VideoApiError::RateLimited { retry_after: None }),
            CreateFailed::maybe_sent(VideoApiError::Server { status: 503 }),
        ] {
            let then_throttled =
                CreateFailed::not_sent(VideoApiError::RateLimited { retry_after: None });
            let (jobs, _) = engine(video(
                vec![failure.clone(), then_throttled],
                vec![false, true, true],
            ));
            let job = queued(&jobs).await;
            let (job, _) = jobs.create(job, "w/0", CreateMode::Worker).await.unwrap();
            assert_eq!(job.create_sent, CreateSent::Maybe, "{failure:?}");
            // A later try that sends nothing does not forget what the first may have done.
            let (job, _) = jobs.create(job, "w/1", CreateMode::Worker).await.unwrap();
            assert_eq!(job.create_sent, CreateSent::Maybe, "{failure:?}");
            let (job, result) = jobs.create(job, "w/2", CreateMode::Worker).await.unwrap();
            assert!(result.is_ok());
            assert_eq!(
                job.attempts.last().unwrap().action,
                "create (looked up first)"
            );
        }
    }

    #[tokio::test]
    async fn a_job_left_in_a_create_call_is_looked_up_first_and_ones_own_is_not() {
        // As a request that submitted its own job (claimed at once) leaves it when it dies
        // mid-create: `creating`, in a call, the lease run out.
        let (jobs, store) = engine(video(vec![], vec![true]));
        let new = NewJob {
            id: crate::admission::new_job_id(),
            priority: Priority::Normal,
            tenant: domain::Tenant::public(),
            share: domain::Share::default(),
            request: talk_request(),
            callback_url: None,
            idempotency: None,
            fingerprint: "fp".into(),
            webhook_token: None,
            now_ms: now_ms(),
            lease: None,
            status: JobStatus::Creating,
            trace: None,
        };
        let ports::Submitted::Created(left) = store
            .submit(new.clone(), QueueLimits { max_queued: 10 })
            .await
            .unwrap()
        else {
            panic!("a new job");
        };
        assert_eq!(left.create_sent, CreateSent::InCall);
        let (job, result) = jobs.create(left, "w/0", CreateMode::Worker).await.unwrap();
        assert!(result.is_ok());
        assert_eq!(job.attempts[0].action, "create (looked up first)");

        // The request that submitted it makes its own call without looking.
        let (jobs, store) = engine(video(vec![], vec![false]));
        let ports::Submitted::Created(own) = store
            .submit(new, QueueLimits { max_queued: 10 })
            .await
            .unwrap()
        else {
            panic!("a new job");
        };
        let (job, _) = jobs
            .create(own, "r/0", CreateMode::InlineWait)
            .await
            .unwrap();
        assert_eq!(job.attempts[0].action, "create");
    }

    /// The job says "in a create call" in the store while the call is under way, so a
    /// worker that dies there leaves a job the next owner looks up first; a throttled
    /// retry is written so before its call too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_call_under_way_is_in_the_store_before_it_is_sent() {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let mut video = MockVideoApi::new();
        video
            .expect_create_talk_keyed()
            .times(2)
            .returning(move |_, _, _, _| {
                entered_tx.send(()).unwrap();
                // Blocks this worker thread until the test has read the store.
                release_rx.recv().unwrap();
                Err(CreateFailed::not_sent(VideoApiError::RateLimited {
                    retry_after: None,
                }))
            });
        let (jobs, store) = engine(video);
        let mut job = queued(&jobs).await;
        let entered = Arc::new(std::sync::Mutex::new(entered_rx));
        for round in 0..2 {
            let jobs_c = jobs.clone();
            let call = tokio::spawn(async move {
                jobs_c.create(job, "w/0", CreateMode::Worker).await.unwrap()
            });
            let entered = entered.clone();
            tokio::task::spawn_blocking(move || entered.lock().unwrap().recv().unwrap())
                .await
                .unwrap();
            let during = store.get(&call_id(&store).await).await.unwrap().unwrap();
            assert_eq!(during.status, JobStatus::Creating, "round {round}");
            assert_eq!(during.create_sent, CreateSent::InCall, "round {round}");
            assert!(during.create_may_have_been_sent(false), "for another owner");
            release_tx.send(()).unwrap();
            let (after, _) = call.await.unwrap();
            assert_eq!(after.create_sent, CreateSent::Nothing, "round {round}");
            job = after;
        }
    }

    /// The one job of the store.
    async fn call_id(store: &Arc<dyn JobStore>) -> JobId {
        let page = store
            .list(ports::ListQuery::new(None, 10, None))
            .await
            .unwrap();
        assert_eq!(page.jobs.len(), 1);
        page.jobs[0].id.clone()
    }

    #[test]
    fn creates_that_reached_nothing_are_requeued_and_ambiguous_ones_retried() {
        let timeout = VideoApiError::Limiter(LimiterError::Timeout {
            priority: Priority::Low,
            waited: Duration::from_secs(60),
        });
        assert!(matches!(classify_create(&timeout), CreateOutcome::Throttled(d) if d.is_zero()));
        let throttled = VideoApiError::RateLimited {
            retry_after: Some(Duration::from_secs(500)),
        };
        assert!(
            matches!(classify_create(&throttled), CreateOutcome::Throttled(d) if d == Duration::from_secs(60)),
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
