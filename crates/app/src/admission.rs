//! Admission: a request becomes a job. The request's fingerprint, its create key, the keys
//! being accepted on this instance, the submit, and the drain rate behind a full queue's
//! `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{Admission, Priority};
use ports::{Job, JobEvent, JobId, JobStoreError, NewJob, ScopedKey, Submitted};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

use crate::engine::{Jobs, lock};
use crate::error::AppError;

/// The most idempotency keys being accepted at once on one instance.
const MAX_ACCEPTING: usize = 65_536;
/// Departures from the queue remembered for the drain rate.
const DRAIN_WINDOW: Duration = Duration::from_secs(60);
const MAX_DRAIN_SAMPLES: usize = 100_000;

/// A fresh random job id.
pub fn new_job_id() -> JobId {
    let mut rng = rand::rng();
    loop {
        let chars = (&mut rng).sample_iter(Alphanumeric).map(char::from);
        if let Ok(id) = JobId::from_chars(chars) {
            return id;
        }
    }
}

/// The digest of what a request asks for, to tell a replay from a different request under
/// the same key: the talk request, the priority and the callback URL.
pub fn fingerprint(
    request: &domain::TalkRequest,
    priority: Priority,
    callback_url: Option<&domain::CallbackUrl>,
) -> String {
    let canonical = serde_json::json!({
        "request": request,
        "priority": priority.as_str(),
        "callback_url": callback_url.map(domain::CallbackUrl::as_str),
    });
    let digest = Sha256::digest(serde_json::to_vec(&canonical).unwrap_or_default());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// What a job's create token is derived from: its scoped idempotency key and request
/// fingerprint when it has a key (so a replay that finds no job, because the store lost it,
/// makes the same token and finds the talk the first job created), else its id (also for a keyed job an earlier
/// build stored: its talk carries the id's token).
pub fn create_key(job: &Job) -> String {
    match &job.idempotency {
        Some(k) if job.token_from_key => keyed_create_key(k, &job.fingerprint),
        _ => job.id.to_string(),
    }
}

/// The create key of a job submitted with the idempotency key `key` for a request of
/// [`fingerprint`] `fingerprint` (see [`create_key`]). The fingerprint is part of it: a key
/// reused for another request after its retention must never find the talk its first request
/// made. Public so that a checker outside (the fault harness) can tell which talk is whose.
pub fn keyed_create_key(key: &ScopedKey, fingerprint: &str) -> String {
    format!("key\n{}\n{}\n{fingerprint}", key.tenant, key.key)
}

/// Holds an idempotency key as "being accepted" on this instance until dropped.
pub struct Accepting {
    jobs: Arc<Jobs>,
    key: ScopedKey,
}

impl Drop for Accepting {
    fn drop(&mut self) {
        lock(&self.jobs.accepting).remove(&self.key);
    }
}

impl Jobs {
    /// Marks `key` as being accepted here; `None` if it already is (the caller answers 409).
    pub fn begin_accepting(self: &Arc<Self>, key: &ScopedKey) -> Result<Accepting, AppError> {
        let mut accepting = lock(&self.accepting);
        if accepting.len() >= MAX_ACCEPTING {
            return Err(AppError::JobStore(
                "too many requests with idempotency keys are being accepted".to_owned(),
            ));
        }
        if !accepting.insert(key.clone()) {
            return Err(AppError::IdempotencyKeyInUse);
        }
        Ok(Accepting {
            jobs: Arc::clone(self),
            key: key.clone(),
        })
    }

    /// Stores a queued job (or finds the job of its key) and wakes a worker.
    pub async fn submit(&self, job: NewJob) -> Result<Submitted, AppError> {
        // A budget is reserved before the job is stored, so before anything is sent.
        let credits = self.credits();
        let replay = match (&credits, &job.idempotency) {
            // A replay reserves nothing, so an exhausted budget still answers it.
            (Some(c), Some(key)) if c.budget_of(&job.tenant).is_some() => self
                .store
                .get_by_key(key)
                .await
                .map_err(|e| self.store_error(e))?
                .is_some(),
            _ => false,
        };
        let reserved = match &credits {
            Some(c) if !replay => c.reserve(&job, crate::now_ms()).await?,
            _ => false,
        };
        let id = job.id.clone();
        let submitted = self.store.submit(job, self.config.queue).await;
        if reserved
            && let Some(c) = &credits
            && !matches!(&submitted, Ok(Submitted::Created(_)))
        {
            // Not stored, or a replay whose job holds its own reservation.
            c.release(&id, crate::now_ms()).await;
        }
        let submitted = submitted.map_err(|e| self.store_error(e))?;
        if let Submitted::Created(job) = &submitted {
            tracing::info!(job_id = %job.id, priority = %job.priority, status = %job.status, "job submitted");
            self.wake.notify_one();
            self.bump();
            self.events
                .job_changed(&JobEvent {
                    job: job.clone(),
                    from: None,
                })
                .await;
        }
        Ok(submitted)
    }

    pub(crate) fn store_error(&self, e: JobStoreError) -> AppError {
        match e {
            JobStoreError::QueueFull { queued, limit } => AppError::QueueFull {
                queued,
                limit,
                retry_after: self.retry_after(),
            },
            JobStoreError::NotFound(id) => AppError::JobNotFound(id),
            JobStoreError::InvalidCursor => AppError::InvalidCursor,
            other => {
                tracing::error!(error = %other, "job store failed");
                AppError::JobStore(other.to_string())
            }
        }
    }

    /// When a full queue will likely have room: one job's share of the recent drain rate.
    fn retry_after(&self) -> Duration {
        let mut drained = lock(&self.drained);
        let now = Instant::now();
        while drained
            .front()
            .is_some_and(|t| now.duration_since(*t) > DRAIN_WINDOW)
        {
            drained.pop_front();
        }
        match drained.len() {
            0 => Duration::from_secs(30),
            n => {
                let per_job = DRAIN_WINDOW.as_secs_f64() / n as f64;
                Duration::from_secs_f64(per_job.clamp(1.0, 60.0))
            }
        }
    }

    pub(crate) fn note_drained(&self) {
        let mut drained = lock(&self.drained);
        if drained.len() >= MAX_DRAIN_SAMPLES {
            drained.pop_front();
        }
        drained.push_back(Instant::now());
    }
}

/// What admitting a request found.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// A new job.
    New(Job),
    /// The job of the request's `Idempotency-Key`, for the same request: a replay.
    Replay(Job),
}

/// A request for a queued job (`POST /jobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// The talk to create.
    pub request: domain::TalkRequest,
    /// Whose job it is, its limiter class and its place in the claim order.
    pub admission: Admission,
    /// Where to report the outcome.
    pub callback_url: Option<domain::CallbackUrl>,
    /// The caller's idempotency key, in its tenant's scope.
    pub key: Option<ScopedKey>,
}

impl Jobs {
    /// Submits `new` and decides its key: a new job, the key's job for the same request (a
    /// replay), or [`AppError::IdempotencyKeyReused`] for a different one.
    pub async fn admit(&self, new: NewJob) -> Result<Admitted, AppError> {
        let fingerprint = new.fingerprint.clone();
        match self.submit(new).await? {
            Submitted::Created(job) => Ok(Admitted::New(job)),
            Submitted::Existing(job) if job.fingerprint != fingerprint => {
                Err(AppError::IdempotencyKeyReused { job_id: job.id })
            }
            Submitted::Existing(job) => Ok(Admitted::Replay(job)),
        }
    }

    /// Queues a job for the workers. `accepting` (from [`Jobs::begin_accepting`], taken
    /// before the request's body was read) is held until the job is stored.
    pub async fn enqueue(
        &self,
        request: JobRequest,
        accepting: Option<Accepting>,
    ) -> Result<Admitted, AppError> {
        let fingerprint = fingerprint(
            &request.request,
            request.admission.priority,
            request.callback_url.as_ref(),
        );
        let admitted = self
            .admit(NewJob {
                id: new_job_id(),
                priority: request.admission.priority,
                tenant: request.admission.tenant,
                share: request.admission.share,
                request: request.request,
                callback_url: request.callback_url,
                idempotency: request.key,
                fingerprint,
                webhook_token: self.webhook_token_for_new_job(),
                now_ms: crate::now_ms(),
                lease: None,
                status: ports::JobStatus::Queued,
                trace: self.current_trace(),
            })
            .await;
        drop(accepting);
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{Script, TalkRequest};

    fn request() -> TalkRequest {
        TalkRequest::new(
            Some("https://example.test/f.jpg".into()),
            Script::Audio {
                audio_url: "https://example.test/v.wav".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn the_fingerprint_tells_requests_apart_and_is_stable() {
        let a = fingerprint(&request(), Priority::High, None);
        assert_eq!(a, fingerprint(&request(), Priority::High, None));
        assert_eq!(a.len(), 32);
        assert_ne!(a, fingerprint(&request(), Priority::Low, None));
        assert_ne!(
            a,
            fingerprint(
                &request(),
                Priority::High,
                Some(&domain::CallbackUrl::parse("https://h.test/x").unwrap())
            )
        );
    }

    #[test]
    fn job_ids_are_well_formed_and_distinct() {
        let a = new_job_id();
        let b = new_job_id();
        assert_ne!(a, b);
        assert!(JobId::parse(a.as_str()).is_ok());
    }
}
