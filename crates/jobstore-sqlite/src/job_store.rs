//! [`JobStore`] for [`SqliteJobStore`]: each method moves its arguments onto a blocking
//! thread and runs the operation of the same name (`ops`) there.

use ports::{LeaseTerms, ListQuery};

use async_trait::async_trait;
use ports::{
    Job, JobCounts, JobId, JobPage, JobStore, JobStoreError, NewJob, QueueLimits, ScopedKey,
    Submitted,
};

use crate::SqliteJobStore;
use crate::schema::{NEXT_CALLBACK_DUE, NEXT_DUE};

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn submit(&self, job: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError> {
        self.blocking(move |s| s.submit(job, limits)).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, JobStoreError> {
        let id = id.clone();
        self.blocking(move |s| s.read(|tx| s.by_id(tx, &id))).await
    }

    async fn get_by_key(&self, key: &ScopedKey) -> Result<Option<Job>, JobStoreError> {
        let key = key.clone();
        self.blocking(move |s| s.read(|tx| s.by_key(tx, &key)))
            .await
    }

    async fn claim(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        let (owner, lease, now_ms) = (terms.owner, terms.lease, terms.now_ms);
        let owner = owner.to_owned();
        self.blocking(move |s| s.claim(&owner, lease, now_ms)).await
    }

    async fn renew(&self, id: &JobId, terms: LeaseTerms<'_>) -> Result<bool, JobStoreError> {
        let (owner, lease, now_ms) = (terms.owner, terms.lease, terms.now_ms);
        let (id, owner) = (id.clone(), owner.to_owned());
        self.blocking(move |s| s.renew(&id, &owner, lease, now_ms))
            .await
    }

    async fn update(&self, job: Job) -> Result<Job, JobStoreError> {
        self.blocking(move |s| s.update(job)).await
    }

    async fn list(&self, query: ListQuery<'_>) -> Result<JobPage, JobStoreError> {
        let (status, before, fetch) = (query.status, query.before_seq()?, query.fetch());
        let fetched = self
            .blocking(move |s| s.list(status, before, fetch))
            .await?;
        Ok(query.page(fetched))
    }

    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        self.blocking(move |s| s.purge(finished_before_ms)).await
    }

    async fn counts(&self) -> Result<JobCounts, JobStoreError> {
        self.blocking(|s| s.counts()).await
    }

    async fn next_due(&self, _now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.blocking(|s| s.first_time(NEXT_DUE)).await
    }

    async fn claim_callback(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        let (owner, lease, now_ms) = (terms.owner.to_owned(), terms.lease, terms.now_ms);
        self.blocking(move |s| s.claim_callback(&owner, lease, now_ms))
            .await
    }

    async fn next_callback_due(&self, _now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.blocking(|s| s.first_time(NEXT_CALLBACK_DUE)).await
    }

    async fn check(&self) -> Result<(), JobStoreError> {
        self.blocking(|s| s.check()).await
    }

    /// Its data goes only with the process (or the file, which makes it unavailable).
    fn lost_data_at(&self) -> Option<u64> {
        None
    }

    /// One process per store: its own submits wake its workers.
    async fn woken(&self) {
        std::future::pending::<()>().await;
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}
