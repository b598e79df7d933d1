//! The generate use case: a talk created and (unless asked not to) waited for by the
//! request itself, as a job that the request works on inline, so that a caller who is cut
//! off can re-attach with its `Idempotency-Key`; and re-attaching such a replay to the job
//! of its key.

use std::sync::Arc;
use std::time::Duration;

use domain::{Admission, CreatedTalk, Talk, TalkId, TalkRequest};
use ports::WaitOptions;
use ports::{Job, JobId, JobStatus, JobStoreError, LimiterError, NewJob, ScopedKey, VideoApiError};
use tokio::time::Instant;

use crate::admission::{Accepting, Admitted, fingerprint, new_job_id};
use crate::cutoff::TalkSlot;
use crate::engine::Jobs;
use crate::error::AppError;
use crate::failure::failure_is_retryable;
use crate::now_ms;
use crate::steps::CreateMode;

/// A replay that re-attaches waits at most this long for the talk of an asynchronous
/// generate.
const ASYNC_REATTACH_WAIT: Duration = Duration::from_secs(10);

/// What a generate asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateInput {
    /// The talk to create.
    pub request: TalkRequest,
    /// Whose talk it is and the limiter class of its calls.
    pub admission: Admission,
    /// The caller's idempotency key, in its tenant's scope.
    pub key: Option<ScopedKey>,
    /// Answer once the talk is created, without waiting for it to finish.
    pub asynchronous: bool,
    /// How a synchronous generate polls, and how long it waits (counted from the start of
    /// the create).
    pub wait: WaitOptions,
}

/// How a generate ended.
// Made once per request and matched at once: boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Generated {
    /// The talk was created (asynchronous): the workers follow it.
    Started {
        /// D-ID's answer to the create.
        talk: CreatedTalk,
        /// The job.
        job_id: JobId,
    },
    /// The talk is done (synchronous).
    Done {
        /// The finished talk.
        talk: Talk,
        /// The job.
        job_id: JobId,
    },
    /// The key's job existed: its outcome.
    Replayed(Replay),
}

/// A replayed generate's outcome, from its job.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    /// The job failed or was cancelled (its stored failure is the answer).
    Failed(Job),
    /// The talk was created (an asynchronous replay): the first answer again.
    Started {
        /// The talk as the create's answer gave it (its status and time, as stored).
        talk: CreatedTalk,
        /// The job.
        job: Job,
    },
    /// The talk is done.
    Done {
        /// The talk.
        talk_id: TalkId,
        /// The job, with its result.
        job: Job,
    },
}

impl Jobs {
    /// Generates a talk as a job this request works on itself (see the crate's engine
    /// docs): stores it claimed, creates the talk and, unless asynchronous, waits for it.
    /// A replay of a key answers with (or waits for) the key's job; a key whose job failed
    /// before anything reached D-ID is tried again. `accepting` is held until the job is
    /// stored; `slot` learns the job and the talk as soon as they exist.
    pub async fn generate(
        self: &Arc<Self>,
        input: GenerateInput,
        accepting: Option<Accepting>,
        slot: &TalkSlot,
    ) -> Result<Generated, AppError> {
        let GenerateInput {
            request,
            admission,
            key,
            asynchronous,
            wait: configured,
        } = input;
        let priority = admission.priority;
        let started = Instant::now();
        let fingerprint = fingerprint(&request, priority, None);
        let owner = self.inline_owner();
        let new = NewJob {
            id: new_job_id(),
            priority,
            tenant: admission.tenant.clone(),
            share: admission.share,
            request,
            callback_url: None,
            idempotency: key,
            fingerprint,
            webhook_token: self.webhook_token_for_new_job(),
            now_ms: now_ms(),
            lease: Some(self.lease_for(&owner)),
            status: JobStatus::Creating,
            trace: self.current_trace(),
        };
        let admitted = self.admit(new).await;
        drop(accepting);
        let job = match admitted? {
            Admitted::New(job) => job,
            Admitted::Replay(job) if failure_is_retryable(&job) => {
                tracing::info!(job_id = %job.id, "replayed key of a job that failed before D-ID: trying again");
                self.retake(job, &owner)
                    .await
                    .map_err(|e| self.store_error(e))?
            }
            Admitted::Replay(job) => {
                return self
                    .reattach(job, asynchronous, configured.max_wait, slot)
                    .await
                    .map(Generated::Replayed);
            }
        };
        slot.record_job(job.id.as_str());
        let job_id = job.id.clone();
        let hold = self.hold_for_caller(&job_id, &owner, job.idempotency.is_some(), slot);
        let mode = if asynchronous {
            CreateMode::InlineAsync
        } else {
            CreateMode::InlineWait
        };
        let (_, created) = self.create(job, &owner, mode).await.map_err(|e| match e {
            JobStoreError::NotFound(id) => AppError::LostJob(id),
            other => self.store_error(other),
        })?;
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                // The create's failure is written (the job failed, its claim let go).
                hold.done();
                return Err(e.into());
            }
        };
        let talk_id = created.id.clone();
        slot.record(&talk_id);

        if asynchronous {
            // The create let go of the claim: the workers poll the talk from here.
            hold.done();
            tracing::info!(%talk_id, %job_id, %priority, "talk created (asynchronous)");
            return Ok(Generated::Started {
                talk: created,
                job_id,
            });
        }

        tracing::info!(%talk_id, %job_id, %priority, "talk created; waiting for it");
        // The wait counts from the start of the create, as documented.
        let wait = WaitOptions {
            max_wait: configured.max_wait.saturating_sub(started.elapsed()),
            ..configured
        };
        let outcome = self
            .video
            .wait_for_talk(&talk_id, &admission, wait)
            .await
            .map_err(|e| match e {
                VideoApiError::TalkTimedOut { talk_id, .. } => VideoApiError::TalkTimedOut {
                    talk_id,
                    waited: started.elapsed(),
                },
                other => other,
            });
        match self.finish_inline(&job_id, &outcome).await {
            Ok(_) => hold.done(),
            // The caller still gets its answer; the job is finished by the next owner (the
            // hold gives the claim back if the job is still processing).
            Err(e) => {
                tracing::warn!(%job_id, error = %e, "could not record the end of a generate's job")
            }
        }
        let talk = outcome?;
        tracing::info!(talk_id = %talk.id, %job_id, %priority, "talk done");
        Ok(Generated::Done { talk, job_id })
    }

    /// A replayed generate: the job's outcome, waiting for it (as long as a new generate
    /// would, `max_wait`) if it is still running elsewhere or was left by a dead instance.
    async fn reattach(
        &self,
        job: Job,
        asynchronous: bool,
        max_wait: Duration,
        slot: &TalkSlot,
    ) -> Result<Replay, AppError> {
        slot.record_job(job.id.as_str());
        tracing::info!(job_id = %job.id, status = %job.status, "generate replayed; re-attaching to its job");
        let deadline = Instant::now()
            + if asynchronous {
                max_wait.min(ASYNC_REATTACH_WAIT)
            } else {
                max_wait
            };
        let job = self
            .wait_for(&job.id, deadline, |j| {
                j.status.is_terminal() || (asynchronous && j.talk_id.is_some())
            })
            .await?;
        if let Some(talk) = &job.talk_id {
            slot.record(talk);
        }
        match (job.status, job.talk_id.clone()) {
            (JobStatus::Failed | JobStatus::Cancelled, _) => Ok(Replay::Failed(job)),
            (_, Some(id)) if asynchronous => Ok(Replay::Started {
                talk: CreatedTalk {
                    id,
                    status: job
                        .talk_created_status
                        .as_deref()
                        .unwrap_or("created")
                        .into(),
                    created_at: job.talk_created_at.clone(),
                },
                job,
            }),
            (JobStatus::Done, Some(talk_id)) => Ok(Replay::Done { talk_id, job }),
            (_, Some(talk_id)) => Err(VideoApiError::TalkTimedOut {
                talk_id,
                waited: max_wait,
            }
            .into()),
            (_, None) => Err(VideoApiError::Limiter(LimiterError::Timeout {
                priority: job.priority,
                waited: max_wait,
            })
            .into()),
        }
    }
}
