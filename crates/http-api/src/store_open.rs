//! A job store that could not be opened at start, opened again in the background.
//!
//! A Redis job store behind a wrong password, a wrong CA, a plaintext port behind
//! `rediss://` or a Redis that is down must not stop the service: the limiter serves from
//! its fallback meanwhile and the routes that need no job store keep working. So the wiring
//! wraps such a store in an [`OpeningStore`]: until an attempt succeeds every call fails
//! with [`JobStoreError::Unavailable`] (a submit is `503 job_store_unavailable` with
//! `Retry-After`), [`OpeningStore::failure`] says why (`auth`, `tls`, `refused`, `timeout`,
//! `cluster`, … with the address, never the password) for `/health`, `/ready` and `/stats`,
//! and a task tries again with a backoff ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]). Once
//! open, the store is served as it is and [`JobStore::woken`] resolves, so the engine looks
//! for due jobs at once.

use ports::{LeaseTerms, ListQuery};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use domain::Tenant;
use ports::{CachedUpload, UploadCache, UploadCacheError, UploadKey};
use ports::{
    CreditError, CreditLedger, DegradedReason, Job, JobCounts, JobId, JobPage, JobStore,
    JobStoreError, NewJob, QueueLimits, Reservation, Reserved, ScopedKey, Submitted, Usage,
};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The first pause before opening again.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Why the store is not open (yet); safe to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenFailure {
    /// What kind of failure the last attempt was.
    pub reason: DegradedReason,
    /// The server the store tried (`host:port`), never the password.
    pub address: String,
    /// What went wrong, safe to show.
    pub error: String,
    /// Attempts so far.
    pub attempts: u64,
}

/// What the job store's backend holds: the jobs and, beside them, the tenants' credit
/// ledger and the upload cache (every job-store adapter is all three).
pub trait Backend: JobStore + CreditLedger + UploadCache {}

impl<T: JobStore + CreditLedger + UploadCache> Backend for T {}

/// One attempt at opening the store.
pub type OpenFuture =
    Pin<Box<dyn Future<Output = Result<Arc<dyn Backend>, OpenFailure>> + Send + 'static>>;

/// Makes an attempt.
pub type Open = Box<dyn Fn() -> OpenFuture + Send + Sync>;

/// A store that is opened in the background (see the module docs).
pub struct OpeningStore {
    kind: &'static str,
    store: OnceLock<Arc<dyn Backend>>,
    failure: Mutex<Option<OpenFailure>>,
    /// Notified once when the store opens.
    opened: Notify,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OpeningStore {
    /// A store of `kind` whose first attempt failed with `first`; `open` is tried again
    /// in the background until it succeeds. Must be called inside a tokio runtime.
    pub fn retrying(kind: &'static str, first: OpenFailure, open: Open) -> Arc<OpeningStore> {
        let this = Arc::new(OpeningStore {
            kind,
            store: OnceLock::new(),
            failure: Mutex::new(Some(first)),
            opened: Notify::new(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(retry(Arc::downgrade(&this), open));
        *lock(&this.task) = Some(task);
        this
    }

    /// Why the store is not open, or `None` once it is.
    pub fn failure(&self) -> Option<OpenFailure> {
        lock(&self.failure).clone()
    }

    fn open_store(&self) -> Result<&Arc<dyn Backend>, JobStoreError> {
        self.store.get().ok_or_else(|| {
            let shown = match lock(&self.failure).as_ref() {
                Some(f) => format!(
                    "the {} job store at {} is not open ({}): {}; retrying in the background",
                    self.kind, f.address, f.reason, f.error
                ),
                None => format!("the {} job store is not open yet", self.kind),
            };
            JobStoreError::Unavailable(shown)
        })
    }
}

impl Drop for OpeningStore {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// Tries `open` with a doubling pause until it succeeds or the store is dropped.
async fn retry(weak: Weak<OpeningStore>, open: Open) {
    let mut pause = RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        if weak.strong_count() == 0 {
            return;
        }
        let attempt = open().await;
        let Some(this) = weak.upgrade() else { return };
        match attempt {
            Ok(store) => {
                let (attempts, address) = lock(&this.failure)
                    .as_ref()
                    .map_or((1, String::new()), |f| (f.attempts + 1, f.address.clone()));
                // Set once: this task is the only writer.
                let _ = this.store.set(store);
                *lock(&this.failure) = None;
                this.opened.notify_waiters();
                tracing::info!(
                    store = this.kind,
                    at = %address,
                    attempts,
                    "job store ready: opened in the background"
                );
                return;
            }
            Err(mut failure) => {
                let mut current = lock(&this.failure);
                let previous = current.as_ref();
                failure.attempts = previous.map_or(0, |f| f.attempts) + 1;
                if previous.is_none_or(|p| p.reason != failure.reason) {
                    tracing::warn!(
                        store = this.kind,
                        address = %failure.address,
                        reason = %failure.reason,
                        error = %failure.error,
                        "job store still not open: {} at {} unusable ({})",
                        this.kind,
                        failure.address,
                        failure.reason
                    );
                } else {
                    tracing::debug!(store = this.kind, error = %failure.error, "job store still not open");
                }
                *current = Some(failure);
            }
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// The ledger of a store not open yet is unavailable, as its jobs are.
#[async_trait]
impl CreditLedger for OpeningStore {
    async fn reserve(&self, r: &Reservation, budget: u64) -> Result<Reserved, CreditError> {
        self.ledger()?.reserve(r, budget).await
    }
    async fn settle(&self, job: &JobId, credits: u64, now_ms: u64) -> Result<bool, CreditError> {
        self.ledger()?.settle(job, credits, now_ms).await
    }
    async fn release(&self, job: &JobId, now_ms: u64) -> Result<bool, CreditError> {
        self.ledger()?.release(job, now_ms).await
    }
    async fn usage(&self, tenant: &Tenant, period: &str) -> Result<Usage, CreditError> {
        self.ledger()?.usage(tenant, period).await
    }
    async fn stale(&self, before_ms: u64, limit: usize) -> Result<Vec<Reservation>, CreditError> {
        self.ledger()?.stale(before_ms, limit).await
    }
    async fn purge_usage(&self, before_ms: u64) -> Result<u64, CreditError> {
        self.ledger()?.purge_usage(before_ms).await
    }
}

/// The cache of a store not open yet is unavailable (an upload then goes to D-ID).
#[async_trait]
impl UploadCache for OpeningStore {
    async fn cached_upload(
        &self,
        key: &UploadKey,
        now_ms: u64,
    ) -> Result<Option<CachedUpload>, UploadCacheError> {
        self.cache()?.cached_upload(key, now_ms).await
    }
    async fn cache_upload(
        &self,
        key: &UploadKey,
        entry: &CachedUpload,
        now_ms: u64,
        max_entries: usize,
    ) -> Result<(), UploadCacheError> {
        self.cache()?
            .cache_upload(key, entry, now_ms, max_entries)
            .await
    }
    async fn uploaded_audio_seconds(
        &self,
        tenant: &Tenant,
        url: &str,
        now_ms: u64,
    ) -> Result<Option<f64>, UploadCacheError> {
        self.cache()?
            .uploaded_audio_seconds(tenant, url, now_ms)
            .await
    }
}

impl OpeningStore {
    fn cache(&self) -> Result<&Arc<dyn Backend>, UploadCacheError> {
        self.open_store()
            .map_err(|e| UploadCacheError::Unavailable(e.to_string()))
    }

    fn ledger(&self) -> Result<&Arc<dyn Backend>, CreditError> {
        self.open_store()
            .map_err(|e| CreditError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl JobStore for OpeningStore {
    async fn submit(&self, job: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError> {
        self.open_store()?.submit(job, limits).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, JobStoreError> {
        self.open_store()?.get(id).await
    }

    async fn get_by_key(&self, key: &ScopedKey) -> Result<Option<Job>, JobStoreError> {
        self.open_store()?.get_by_key(key).await
    }

    async fn claim(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        self.open_store()?.claim(terms).await
    }

    async fn renew(&self, id: &JobId, terms: LeaseTerms<'_>) -> Result<bool, JobStoreError> {
        self.open_store()?.renew(id, terms).await
    }

    async fn update(&self, job: Job) -> Result<Job, JobStoreError> {
        self.open_store()?.update(job).await
    }

    async fn list(&self, query: ListQuery<'_>) -> Result<JobPage, JobStoreError> {
        self.open_store()?.list(query).await
    }

    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        self.open_store()?.purge(finished_before_ms).await
    }

    async fn counts(&self) -> Result<JobCounts, JobStoreError> {
        self.open_store()?.counts().await
    }

    async fn next_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.open_store()?.next_due(now_ms).await
    }

    async fn claim_callback(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        self.open_store()?.claim_callback(terms).await
    }

    async fn next_callback_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.open_store()?.next_callback_due(now_ms).await
    }

    fn lost_data_at(&self) -> Option<u64> {
        self.store.get().and_then(|s| s.lost_data_at())
    }

    async fn woken(&self) {
        if let Some(store) = self.store.get() {
            return store.woken().await;
        }
        let opened = self.opened.notified();
        // Opened between the look above and the registration: resolve at once.
        if self.store.get().is_some() {
            return;
        }
        opened.await;
    }

    async fn check(&self) -> Result<(), JobStoreError> {
        self.open_store()?.check().await
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn failure(reason: DegradedReason) -> OpenFailure {
        OpenFailure {
            reason,
            address: "127.0.0.1:1".to_owned(),
            error: "no".to_owned(),
            attempts: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_unavailable_until_an_attempt_opens_the_store_then_it_serves() {
        let tries = Arc::new(AtomicU32::new(0));
        let counter = tries.clone();
        let open: Open = Box::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n < 2 {
                    Err(failure(DegradedReason::Auth))
                } else {
                    Ok(Arc::new(jobstore_memory::MemoryJobStore::new()) as Arc<dyn Backend>)
                }
            })
        });
        let store = OpeningStore::retrying("redis", failure(DegradedReason::Refused), open);
        let err = store.counts().await.unwrap_err();
        let JobStoreError::Unavailable(message) = err else {
            panic!("{err:?}")
        };
        assert!(
            message.contains("127.0.0.1:1") && message.contains("refused"),
            "{message}"
        );
        assert!(store.check().await.is_err());

        // The second attempt fails with another reason: it replaces the first.
        tokio::time::sleep(RETRY_FIRST + Duration::from_millis(1)).await;
        let f = store.failure().expect("still not open");
        assert_eq!((f.reason, f.attempts), (DegradedReason::Auth, 2));

        // `woken` resolves when the store opens (the engine looks at once then).
        tokio::time::timeout(Duration::from_secs(5), store.woken())
            .await
            .expect("woken when opened");
        assert_eq!(store.failure(), None);
        assert!(store.counts().await.is_ok());
        assert!(store.check().await.is_ok());
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }
}
