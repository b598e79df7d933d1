//! The job-store contract suite against the SQLite store, each test on a fresh file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::TempDir;
use jobstore_sqlite::SqliteJobStore;
use ports::{
    Job, JobCounts, JobId, JobPage, JobStatus, JobStore, JobStoreError, NewJob, QueueLimits,
    ScopedKey, Submitted,
};

/// A store and the directory of its file, removed when the store is dropped.
struct TempStore {
    store: SqliteJobStore,
    _dir: TempDir,
}

#[async_trait]
impl JobStore for TempStore {
    async fn submit(&self, job: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError> {
        self.store.submit(job, limits).await
    }
    async fn get(&self, id: &JobId) -> Result<Option<Job>, JobStoreError> {
        self.store.get(id).await
    }
    async fn get_by_key(&self, key: &ScopedKey) -> Result<Option<Job>, JobStoreError> {
        self.store.get_by_key(key).await
    }
    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<Option<Job>, JobStoreError> {
        self.store.claim(owner, lease, now_ms).await
    }
    async fn renew(
        &self,
        id: &JobId,
        owner: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<bool, JobStoreError> {
        self.store.renew(id, owner, lease, now_ms).await
    }
    async fn update(&self, job: Job) -> Result<Job, JobStoreError> {
        self.store.update(job).await
    }
    async fn list(
        &self,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, JobStoreError> {
        self.store.list(status, limit, cursor).await
    }
    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        self.store.purge(finished_before_ms).await
    }
    async fn counts(&self) -> Result<JobCounts, JobStoreError> {
        self.store.counts().await
    }
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
}

async fn new_store() -> Arc<dyn JobStore> {
    let dir = TempDir::new();
    let store = SqliteJobStore::open(dir.path().join("jobs.db")).expect("open a fresh store");
    Arc::new(TempStore { store, _dir: dir })
}

ports::job_store_contract_tests!(new_store);
