//! [`AppError`]: everything a use case of this crate can fail with, one closed enum. The HTTP
//! service maps it in its one place (`http-api`'s `error.rs`); nothing here knows a status
//! code.

use std::time::Duration;

use domain::TalkId;
use ports::{JobId, VideoApiError};

/// Why a use case failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    /// A D-ID call (or its limiter slot) failed.
    #[error(transparent)]
    Upstream(#[from] VideoApiError),
    /// The job queue holds its limit already.
    #[error("the job queue is full ({queued} of {limit} queued)")]
    QueueFull {
        /// Jobs queued now.
        queued: u64,
        /// The limit.
        limit: u64,
        /// When the queue will likely have room (from the recent drain rate).
        retry_after: Duration,
    },
    /// No such job.
    #[error("no job {0}")]
    JobNotFound(JobId),
    /// A list cursor that this service did not hand out (for this filter).
    #[error("invalid cursor")]
    InvalidCursor,
    /// The job store failed or could not be reached.
    #[error("{0}")]
    JobStore(String),
    /// The job vanished from the store while the request ran (the store lost its data).
    #[error(
        "the job store lost job {0} while this request ran (its data was lost); a talk may \
         have been created already: replay with the same Idempotency-Key, which finds that \
         talk instead of paying for another"
    )]
    LostJob(JobId),
    /// The key's first request is still being accepted on this instance.
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    IdempotencyKeyInUse,
    /// The key was used before for a different request.
    #[error("this Idempotency-Key was used for a different request (job {job_id}); use a new key")]
    IdempotencyKeyReused {
        /// The job the key belongs to.
        job_id: JobId,
    },
    /// The tenant's budget for the period cannot take the talk's estimated credits; nothing
    /// was stored or sent.
    #[error(transparent)]
    BudgetExhausted(crate::credits::Exhausted),
    /// The credit ledger could not be reached, so a budget could not be checked.
    #[error("the credit ledger is unavailable: {0}")]
    CreditsUnavailable(String),
    /// The job is past the point where cancelling could help.
    #[error("job {job_id} is {status} and cannot be cancelled")]
    JobNotCancellable {
        /// The job.
        job_id: JobId,
        /// Its state.
        status: &'static str,
        /// Its talk, if created (it is paid).
        talk_id: Option<TalkId>,
    },
}
