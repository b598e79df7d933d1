//! Reading, listing and cancelling jobs.

use domain::Tenant;
use ports::ListQuery;
use ports::{Job, JobId, JobPage, JobStatus, JobStoreError};

use crate::engine::Jobs;
use crate::error::AppError;

/// How often a cancel reads and decides again when a claim moved the job in between.
const CANCEL_TRIES: usize = 8;
/// The store page a tenant's listing reads at a time.
const SCAN_PAGE: usize = 100;
/// The most store pages one listing reads before it ends its page early.
pub const MAX_SCAN_PAGES: usize = 20;

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

    /// The job `id` if it is `tenant`'s; another tenant's is [`AppError::JobNotFound`], as
    /// if it did not exist (its existence is not revealed).
    pub async fn job_of(&self, id: &JobId, tenant: &Tenant) -> Result<Job, AppError> {
        let job = self.job(id).await?;
        if &job.tenant == tenant {
            Ok(job)
        } else {
            Err(AppError::JobNotFound(id.clone()))
        }
    }

    /// Up to `limit` of `tenant`'s jobs, newest first, of `status` if given, after the
    /// store cursor `cursor`. The store is read in pages and other tenants' jobs skipped;
    /// after [`MAX_SCAN_PAGES`] store pages the page ends early with a cursor to go on from
    /// (a page may hold fewer than `limit` jobs; only a `None` cursor means the end).
    pub async fn jobs_of(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, AppError> {
        let limit = limit.max(1);
        let mut found = Vec::new();
        let mut cursor = cursor.map(str::to_owned);
        for _ in 0..MAX_SCAN_PAGES {
            let page = self.jobs(status, SCAN_PAGE, cursor.as_deref()).await?;
            for job in page.jobs {
                if &job.tenant != tenant {
                    continue;
                }
                found.push(job);
                if found.len() == limit {
                    // Resume after the last job handed out.
                    let next = found.last().map(|j| format!("s{}", j.seq));
                    return Ok(JobPage {
                        jobs: found,
                        next_cursor: next,
                    });
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => {
                    return Ok(JobPage {
                        jobs: found,
                        next_cursor: None,
                    });
                }
            }
        }
        Ok(JobPage {
            jobs: found,
            next_cursor: cursor,
        })
    }

    /// Cancels `tenant`'s queued job `id`; a cancelled one is returned as it is (cancelling
    /// is idempotent); any other state is [`AppError::JobNotCancellable`], and another
    /// tenant's job [`AppError::JobNotFound`].
    pub async fn cancel_job(&self, id: &JobId, tenant: &Tenant) -> Result<Job, AppError> {
        // A claim between the read and the write moves the version: read again and decide
        // again.
        for _ in 0..CANCEL_TRIES {
            let job = self.job_of(id, tenant).await?;
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
