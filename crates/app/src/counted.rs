//! [`CountedStore`]: a [`JobStore`] that counts the calls made to it, for `/stats`
//! (`jobs.store_calls`): what an idle instance asks its store is an operator's figure (idle
//! means idle), not a guess.

use ports::{LeaseTerms, ListQuery};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ports::{
    Job, JobCounts, JobId, JobPage, JobStore, JobStoreError, NewJob, QueueLimits, ScopedKey,
    Submitted,
};

/// Every call goes to the inner store, counted first.
pub struct CountedStore {
    inner: Arc<dyn JobStore>,
    calls: AtomicU64,
}

impl CountedStore {
    /// Counts the calls to `inner`.
    pub fn new(inner: Arc<dyn JobStore>) -> CountedStore {
        CountedStore {
            inner,
            calls: AtomicU64::new(0),
        }
    }

    /// Calls made so far (every method but [`JobStore::kind`]).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) -> &dyn JobStore {
        self.calls.fetch_add(1, Ordering::Relaxed);
        &*self.inner
    }
}

#[async_trait]
impl JobStore for CountedStore {
    async fn submit(&self, job: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError> {
        self.count().submit(job, limits).await
    }
    async fn get(&self, id: &JobId) -> Result<Option<Job>, JobStoreError> {
        self.count().get(id).await
    }
    async fn get_by_key(&self, key: &ScopedKey) -> Result<Option<Job>, JobStoreError> {
        self.count().get_by_key(key).await
    }
    async fn claim(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        self.count().claim(terms).await
    }
    async fn renew(&self, id: &JobId, terms: LeaseTerms<'_>) -> Result<bool, JobStoreError> {
        self.count().renew(id, terms).await
    }
    async fn update(&self, job: Job) -> Result<Job, JobStoreError> {
        self.count().update(job).await
    }
    async fn list(&self, query: ListQuery<'_>) -> Result<JobPage, JobStoreError> {
        self.count().list(query).await
    }
    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        self.count().purge(finished_before_ms).await
    }
    async fn counts(&self) -> Result<JobCounts, JobStoreError> {
        self.count().counts().await
    }
    async fn next_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.count().next_due(now_ms).await
    }
    async fn claim_callback(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        self.count().claim_callback(terms).await
    }
    async fn next_callback_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.count().next_callback_due(now_ms).await
    }
    async fn check(&self) -> Result<(), JobStoreError> {
        self.count().check().await
    }
    /// Not a call: what the store learnt from its answers.
    fn lost_data_at(&self) -> Option<u64> {
        self.inner.lost_data_at()
    }
    /// Not a call: a wait for the store's wake-up channel.
    async fn woken(&self) {
        self.inner.woken().await;
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}
