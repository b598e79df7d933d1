//! Reading, listing and cancelling jobs.

use ports::ListQuery;
use ports::{Job, JobId, JobPage, JobStatus, JobStoreError};

use crate::engine::Jobs;
use crate::error::AppError;

/// How often a cancel reads and decides again when a claim moved the job in between.
const CANCEL_TRIES: usize = 8;

impl Jobs {
    /// The job `id`.
    pub async fn job(&self, id: &JobId) -> Result<Job, AppError> {
        self.store
            .get(id)
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or_else(|| AppError::JobNotFound(id.clone()))
    }

    /// Up to `limit` jobs, newest first, of `status` if given, after the store cursor
    /// `cursor`.
    pub async fn jobs(
        &self,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, AppError> {
        self.store
            .list(ListQuery::new(status, limit, cursor))
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Cancels a queued job; a cancelled one is returned as it is (cancelling is
    /// idempotent); any other state is [`AppError::JobNotCancellable`].
    pub async fn cancel_job(&self, id: &JobId) -> Result<Job, AppError> {
        // A claim between the read and the write moves the version: read again and decide
        // again.
        for _ in 0..CANCEL_TRIES {
            let job = self.job(id).await?;
            match job.status {
                JobStatus::Cancelled => return Ok(job),
                JobStatus::Queued => match self.cancel(job).await {
                    Ok(job) => return Ok(job),
                    Err(JobStoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(self.store_error(e)),
                },
                other => {
                    return Err(AppError::JobNotCancellable {
                        job_id: job.id,
                        status: other.as_str(),
                        talk_id: job.talk_id,
                    });
                }
            }
        }
        Err(AppError::JobStore(
            "the job kept changing while it was being cancelled; retry".to_owned(),
        ))
    }
}
