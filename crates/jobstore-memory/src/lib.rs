//! An in-process [`JobStore`]: every job in one mutex-guarded map.
//!
//! Nothing survives the process, so it is for tests and for setups that say so explicitly
//! (`JOB_STORE=memory`); the service's durable default is the SQLite store. It passes the
//! same contract suite (`ports::job_contract`) as the durable adapters, so code tested on it
//! behaves the same on them.
//!
//! It is also a [`ports::CreditLedger`] (the tenants' credit budgets, beside the jobs) and an
//! [`ports::UploadCache`] (uploads by content).
//!
//! Every operation takes the lock once and does no I/O; `claim`, `claim_callback` and
//! `counts` scan all jobs (O(n)), which is fine for the thousands of jobs a test or a small setup holds.

mod credits;
mod upload_cache;

use ports::{LeaseTerms, ListQuery};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use ports::jobs::{FairRanks, callback_due_at, claim_order, due_at, duration_ms, is_runnable};
use ports::{
    Job, JobCounts, JobId, JobPage, JobStatus, JobStore, JobStoreError, Lease, NewJob, QueueLimits,
    ScopedKey, Submitted,
};

/// The in-memory job store. `Default` is [`MemoryJobStore::new`].
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    state: Mutex<State>,
    /// The tenants' credit budgets ([`ports::CreditLedger`], in `credits`).
    ledger: Mutex<credits::Ledger>,
    /// Uploads by content ([`ports::UploadCache`], in `upload_cache`).
    uploads: Mutex<upload_cache::Uploads>,
}

#[derive(Debug, Default)]
struct State {
    /// By `seq`, so iteration is arrival order.
    jobs: BTreeMap<u64, Job>,
    by_id: HashMap<JobId, u64>,
    by_key: HashMap<ScopedKey, u64>,
    next_seq: u64,
    /// The claims' fair order: `V` per priority and the tenants' last ranks.
    fair: FairRanks,
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> MemoryJobStore {
        MemoryJobStore::default()
    }

    fn uploads(&self) -> MutexGuard<'_, upload_cache::Uploads> {
        // Every write is a few map updates that cannot panic halfway.
        self.uploads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ledger(&self) -> MutexGuard<'_, credits::Ledger> {
        // Every write is a few map updates that cannot panic halfway.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written job: every write is
        // one map insert, so the state is consistent and the poison is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn job_mut(&mut self, id: &JobId) -> Option<&mut Job> {
        let seq = *self.by_id.get(id)?;
        self.jobs.get_mut(&seq)
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn submit(&self, job: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError> {
        let mut state = self.lock();
        if let Some(key) = &job.idempotency
            && let Some(seq) = state.by_key.get(key)
        {
            return Ok(Submitted::Existing(state.jobs[seq].clone()));
        }
        if state.by_id.contains_key(&job.id) {
            return Err(JobStoreError::Corrupt(format!("job id {} exists", job.id)));
        }
        let queued = state
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued)
            .count() as u64;
        if queued >= limits.max_queued {
            return Err(JobStoreError::QueueFull {
                queued,
                limit: limits.max_queued,
            });
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        let rank = state.fair.rank(job.priority, &job.tenant, job.share);
        let job = job.into_job(seq, rank);
        state.by_id.insert(job.id.clone(), seq);
        if let Some(key) = &job.idempotency {
            state.by_key.insert(key.clone(), seq);
        }
        state.jobs.insert(seq, job.clone());
        Ok(Submitted::Created(job))
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, JobStoreError> {
        let state = self.lock();
        Ok(state.by_id.get(id).map(|seq| state.jobs[seq].clone()))
    }

    async fn get_by_key(&self, key: &ScopedKey) -> Result<Option<Job>, JobStoreError> {
        let state = self.lock();
        Ok(state.by_key.get(key).map(|seq| state.jobs[seq].clone()))
    }

    async fn claim(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        let (owner, lease, now_ms) = (terms.owner, terms.lease, terms.now_ms);
        let mut state = self.lock();
        let best = state
            .jobs
            .values()
            .filter(|j| is_runnable(j, now_ms))
            .min_by(|a, b| claim_order(a, b))
            .map(|j| j.seq);
        let Some(seq) = best else { return Ok(None) };
        let state = &mut *state;
        let job = state.jobs.get_mut(&seq).expect("present");
        state.fair.claimed(job.priority, job.rank);
        job.lease = Some(Lease {
            owner: owner.to_owned(),
            until_ms: now_ms.saturating_add(duration_ms(lease)),
        });
        job.version += 1;
        Ok(Some(job.clone()))
    }

    async fn renew(&self, id: &JobId, terms: LeaseTerms<'_>) -> Result<bool, JobStoreError> {
        let (owner, lease, now_ms) = (terms.owner, terms.lease, terms.now_ms);
        let mut state = self.lock();
        let Some(job) = state.job_mut(id) else {
            return Ok(false);
        };
        match &mut job.lease {
            Some(l) if l.owner == owner && l.until_ms > now_ms => {
                l.until_ms = now_ms.saturating_add(duration_ms(lease));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn update(&self, mut job: Job) -> Result<Job, JobStoreError> {
        let mut state = self.lock();
        let Some(stored) = state.job_mut(&job.id) else {
            return Err(JobStoreError::NotFound(job.id));
        };
        if stored.version != job.version {
            return Err(JobStoreError::Conflict {
                id: job.id,
                expected: job.version,
            });
        }
        // What identifies the job never changes.
        job.seq = stored.seq;
        job.idempotency = stored.idempotency.clone();
        job.version += 1;
        *stored = job.clone();
        Ok(job)
    }

    async fn list(&self, query: ListQuery<'_>) -> Result<JobPage, JobStoreError> {
        let before = query.before_seq()?;
        let state = self.lock();
        let jobs: Vec<Job> = state
            .jobs
            .range(..before)
            .rev()
            .map(|(_, j)| j)
            .filter(|j| query.status.is_none_or(|s| j.status == s))
            .take(query.fetch())
            .cloned()
            .collect();
        Ok(query.page(jobs))
    }

    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        let mut state = self.lock();
        let old: Vec<u64> = state
            .jobs
            .values()
            .filter(|j| {
                j.status.is_terminal()
                    && j.finished_ms.is_some_and(|f| f < finished_before_ms)
                    && callback_due_at(j).is_none()
            })
            .map(|j| j.seq)
            .collect();
        for seq in &old {
            if let Some(job) = state.jobs.remove(seq) {
                state.by_id.remove(&job.id);
                if let Some(key) = &job.idempotency {
                    state.by_key.remove(key);
                }
            }
        }
        state.fair.sweep();
        Ok(old.len() as u64)
    }

    async fn counts(&self) -> Result<JobCounts, JobStoreError> {
        let state = self.lock();
        let mut counts = JobCounts {
            by_status: JobStatus::ALL.into_iter().map(|s| (s, 0)).collect(),
            oldest_queued_ms: [None; 4],
            callbacks_pending: 0,
        };
        for job in state.jobs.values() {
            *counts.by_status.entry(job.status).or_default() += 1;
            if callback_due_at(job).is_some() {
                counts.callbacks_pending += 1;
            }
            if job.status == JobStatus::Queued {
                let slot = &mut counts.oldest_queued_ms[job.priority.index()];
                *slot = Some(slot.map_or(job.created_ms, |t| t.min(job.created_ms)));
            }
        }
        Ok(counts)
    }

    async fn next_due(&self, _now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        Ok(self.lock().jobs.values().filter_map(due_at).min())
    }

    async fn claim_callback(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        let mut state = self.lock();
        let best = state
            .jobs
            .values()
            .filter_map(|j| Some((callback_due_at(j)?, j.seq)))
            .filter(|(due, _)| *due <= terms.now_ms)
            .min();
        let Some((_, seq)) = best else {
            return Ok(None);
        };
        let job = state.jobs.get_mut(&seq).expect("present");
        job.lease = Some(Lease {
            owner: terms.owner.to_owned(),
            until_ms: terms.until_ms(),
        });
        job.version += 1;
        Ok(Some(job.clone()))
    }

    async fn next_callback_due(&self, _now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        Ok(self.lock().jobs.values().filter_map(callback_due_at).min())
    }

    async fn check(&self) -> Result<(), JobStoreError> {
        Ok(())
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
        "memory"
    }
}
