//! The store's operations on its one connection: the lock (the checkpointer goes first when
//! it asks), one transaction per operation, and the SQL of submit, claim, renew, update, list,
//! purge and counts. Each runs on a blocking thread (see `SqliteJobStore::blocking`).

use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use domain::Tenant;
use ports::jobs::{duration_ms, is_runnable};
use ports::{
    Job, JobCounts, JobId, JobStatus, JobStoreError, Lease, NewJob, QueueLimits, ScopedKey,
    Submitted,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::checkpoint::{Checkpoint, checkpoint};
use crate::codec::{JOB_COLUMNS, Row, db_error, priority_index, to_sql};
use crate::schema::{
    CALLBACK_FROM, CALLBACKS_PENDING, CLAIM_FROM, LIST_ALL_FROM, LIST_STATUS_FROM, QUEUED_AGE,
    TERMINAL,
};
use crate::{Inner, PURGE_BATCH, WAL_HARD_LIMIT, WAL_TRUNCATE_AT, file_len};

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // The checkpointer goes first when it asks (see `Inner::exclusive`): a mutex alone
        // would let a steady stream of writers starve it.
        if self.checkpoint_wanted.load(Ordering::SeqCst) {
            let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
            while self.checkpoint_wanted.load(Ordering::SeqCst) {
                gate = self
                    .gate_open
                    .wait(gate)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        // A panic while holding the lock drops its transaction, which rolls back; the
        // connection is then as good as before, so the poison is ignored.
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if !conn.is_autocommit() {
            // Not reached in practice (see above); a leftover transaction is abandoned.
            let _ = conn.execute_batch("ROLLBACK");
        }
        conn
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> JobStoreError {
        db_error(&self.path, e)
    }

    /// Runs `f` in one transaction and commits it, if the path still names the file the
    /// store opened (see [`Inner::lost`]).
    pub(crate) fn transaction<T>(
        &self,
        behavior: TransactionBehavior,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, JobStoreError>,
    ) -> Result<T, JobStoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(behavior)
            .map_err(|e| self.err(e))?;
        let out = f(&tx)?;
        // Checked inside the transaction: a write that would land in a file nobody will
        // open again is rolled back and refused, never acknowledged.
        self.lost()?;
        tx.commit().map_err(|e| self.err(e))?;
        if matches!(behavior, TransactionBehavior::Immediate) {
            self.writes.fetch_add(1, Ordering::Relaxed);
            if file_len(&self.wal_path) > WAL_HARD_LIMIT {
                // Committed already: a failed checkpoint is the next round's to retry.
                if let Err(e) = checkpoint(&conn, Checkpoint::Truncate) {
                    tracing::warn!(path = %self.path.display(), error = %e, "job store checkpoint failed");
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, JobStoreError>,
    ) -> Result<T, JobStoreError> {
        self.transaction(TransactionBehavior::Immediate, f)
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, JobStoreError>,
    ) -> Result<T, JobStoreError> {
        self.transaction(TransactionBehavior::Deferred, f)
    }

    pub(crate) fn submit(
        &self,
        new: NewJob,
        limits: QueueLimits,
    ) -> Result<Submitted, JobStoreError> {
        self.write(|tx| {
            if let Some(key) = &new.idempotency
                && let Some(job) = self.by_key(tx, key)?
            {
                return Ok(Submitted::Existing(job));
            }
            let taken: Option<i64> = tx
                .prepare_cached("SELECT seq FROM jobs WHERE id = ?1")
                .and_then(|mut s| s.query_row([new.id.as_str()], |r| r.get(0)).optional())
                .map_err(|e| self.err(e))?;
            if taken.is_some() {
                return Err(JobStoreError::Corrupt(format!(
                    "{}: job id {} exists",
                    self.path.display(),
                    new.id
                )));
            }
            let queued: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(|e| self.err(e))?;
            let queued = u64::try_from(queued).unwrap_or(0);
            if queued >= limits.max_queued {
                return Err(JobStoreError::QueueFull {
                    queued,
                    limit: limits.max_queued,
                });
            }
            // The row first, for its seq; then the job, which carries the seq, is written in.
            tx.prepare_cached(
                "INSERT INTO jobs (id, version, status, prio, next_run_ms, created_ms,
                   key_scope, key, body)
                 VALUES (?1, 0, 'queued', 0, 0, 0, ?2, ?3, '')",
            )
            .and_then(|mut s| {
                s.execute(params![
                    new.id.as_str(),
                    new.idempotency.as_ref().map(|k| k.tenant.as_str()),
                    new.idempotency.as_ref().map(|k| k.key.as_str()),
                ])
            })
            .map_err(|e| self.err(e))?;
            let seq = u64::try_from(tx.last_insert_rowid()).map_err(|_| {
                JobStoreError::Corrupt(format!("{}: negative seq", self.path.display()))
            })?;
            let rank = self.rank(tx, &new)?;
            let job = new.into_job(seq, rank);
            self.write_row(tx, &job, 0)?;
            Ok(Submitted::Created(job))
        })
    }

    pub(crate) fn claim(
        &self,
        owner: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<Option<Job>, JobStoreError> {
        // The columns said runnable; the body must say so too.
        self.claim_first(CLAIM_FROM, owner, lease, now_ms, true, |job| {
            is_runnable(job, now_ms)
        })
    }

    /// The rank of `new` in its priority's fair order (`ports::jobs::next_rank`), recorded as
    /// its tenant's last, inside the submit's transaction.
    fn rank(&self, tx: &Transaction<'_>, new: &NewJob) -> Result<u64, JobStoreError> {
        let prio = i64::try_from(new.priority.index()).unwrap_or(0);
        let err = |e| self.err(e);
        let v: Option<i64> = tx
            .prepare_cached("SELECT v FROM fair_clock WHERE prio = ?1")
            .and_then(|mut s| s.query_row([prio], |r| r.get(0)).optional())
            .map_err(err)?;
        let last: Option<i64> = tx
            .prepare_cached("SELECT last FROM fair_last WHERE prio = ?1 AND tenant = ?2")
            .and_then(|mut s| {
                s.query_row(params![prio, new.tenant.as_str()], |r| r.get(0))
                    .optional()
            })
            .map_err(err)?;
        let read = |n: Option<i64>| n.map(|n| u64::try_from(n).unwrap_or(0));
        let rank = ports::jobs::next_rank(
            read(v).unwrap_or(0),
            read(last),
            ports::jobs::rank_cost(new.share),
        );
        tx.prepare_cached(
            "INSERT INTO fair_last (prio, tenant, last) VALUES (?1, ?2, ?3)
             ON CONFLICT (prio, tenant) DO UPDATE SET last = excluded.last",
        )
        .and_then(|mut s| s.execute(params![prio, new.tenant.as_str(), to_sql(rank)]))
        .map_err(err)?;
        Ok(rank)
    }

    /// Claims the first due pending callback (see `JobStore::claim_callback`).
    pub(crate) fn claim_callback(
        &self,
        owner: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<Option<Job>, JobStoreError> {
        self.claim_first(CALLBACK_FROM, owner, lease, now_ms, false, |job| {
            ports::jobs::callback_due_at(job).is_some_and(|due| due <= now_ms)
        })
    }

    /// Leases the first job of `SELECT … FROM {from}` (with `now_ms` as `?1`) to `owner`, in
    /// one transaction; a row whose body says it is not `claimable` is corrupt (its columns
    /// and its body disagree). With `fair`, the priority's `V` moves up to the job's rank.
    fn claim_first(
        &self,
        from: &str,
        owner: &str,
        lease: Duration,
        now_ms: u64,
        fair: bool,
        claimable: impl Fn(&Job) -> bool,
    ) -> Result<Option<Job>, JobStoreError> {
        self.write(|tx| {
            let Some(mut job) = self.select_one(tx, from, params![to_sql(now_ms)])? else {
                return Ok(None);
            };
            if !claimable(&job) {
                return Err(JobStoreError::Corrupt(format!(
                    "{}: job {}'s columns disagree with its body",
                    self.path.display(),
                    job.id
                )));
            }
            let read = job.version;
            job.lease = Some(Lease {
                owner: owner.to_owned(),
                until_ms: now_ms.saturating_add(duration_ms(lease)),
            });
            job.version += 1;
            if fair {
                tx.prepare_cached(
                    "INSERT INTO fair_clock (prio, v) VALUES (?1, ?2)
                     ON CONFLICT (prio) DO UPDATE SET v = excluded.v WHERE excluded.v > v",
                )
                .and_then(|mut s| s.execute(params![priority_index(&job), to_sql(job.rank)]))
                .map_err(|e| self.err(e))?;
            }
            if !self.write_row(tx, &job, read)? {
                return Err(JobStoreError::Unavailable(format!(
                    "{}: job {} changed inside its transaction",
                    self.path.display(),
                    job.id
                )));
            }
            Ok(Some(job))
        })
    }

    /// The time the one-row query `sql` answers (`NEXT_DUE`, `NEXT_CALLBACK_DUE`), if any.
    pub(crate) fn first_time(&self, sql: &str) -> Result<Option<u64>, JobStoreError> {
        self.read(|tx| {
            let due: Option<i64> = tx
                .prepare_cached(sql)
                .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
                .map_err(|e| self.err(e))?;
            Ok(due.map(|t| u64::try_from(t).unwrap_or(0)))
        })
    }

    pub(crate) fn renew(
        &self,
        id: &JobId,
        owner: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<bool, JobStoreError> {
        self.write(|tx| {
            let Some(mut job) = self.by_id(tx, id)? else {
                return Ok(false);
            };
            match &mut job.lease {
                Some(l) if l.owner == owner && l.until_ms > now_ms => {
                    l.until_ms = now_ms.saturating_add(duration_ms(lease));
                }
                _ => return Ok(false),
            }
            self.write_row(tx, &job, job.version)
        })
    }

    pub(crate) fn update(&self, mut job: Job) -> Result<Job, JobStoreError> {
        self.write(|tx| {
            let stored: Option<(i64, i64, Option<String>, Option<String>)> = tx
                .prepare_cached("SELECT seq, version, key_scope, key FROM jobs WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([job.id.as_str()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()
                })
                .map_err(|e| self.err(e))?;
            let Some((seq, version, scope, key)) = stored else {
                return Err(JobStoreError::NotFound(job.id));
            };
            let conflict = |job: Job| JobStoreError::Conflict {
                expected: job.version,
                id: job.id,
            };
            if version != to_sql(job.version) {
                return Err(conflict(job));
            }
            // What identifies the job never changes.
            job.seq = u64::try_from(seq).map_err(|_| {
                JobStoreError::Corrupt(format!("{}: negative seq", self.path.display()))
            })?;
            job.idempotency = match (scope, key) {
                (Some(scope), Some(key)) => Some(ScopedKey {
                    tenant: Tenant::parse(&scope).map_err(|e| {
                        JobStoreError::Corrupt(format!(
                            "{}: job {}'s key scope {scope:?}: {e}",
                            self.path.display(),
                            job.id
                        ))
                    })?,
                    key,
                }),
                _ => None,
            };
            let read = job.version;
            job.version += 1;
            if self.write_row(tx, &job, read)? {
                Ok(job)
            } else {
                job.version = read;
                Err(conflict(job))
            }
        })
    }

    /// Up to `fetch` jobs, newest first, of `status` if given, with a `seq` below `before`.
    pub(crate) fn list(
        &self,
        status: Option<JobStatus>,
        before: u64,
        fetch: usize,
    ) -> Result<Vec<Job>, JobStoreError> {
        let fetch = i64::try_from(fetch).unwrap_or(i64::MAX);
        self.read(|tx| {
            let rows: Vec<Row> = match status {
                None => tx
                    .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM {LIST_ALL_FROM}"))
                    .and_then(|mut s| {
                        s.query_map(params![to_sql(before), fetch], Row::read)?
                            .collect()
                    }),
                Some(status) => tx
                    .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM {LIST_STATUS_FROM}"))
                    .and_then(|mut s| {
                        s.query_map(params![status.as_str(), to_sql(before), fetch], Row::read)?
                            .collect()
                    }),
            }
            .map_err(|e| self.err(e))?;
            rows.into_iter()
                .map(|r| self.decode(r))
                .collect::<Result<Vec<Job>, _>>()
        })
    }

    /// Deletes in batches of [`PURGE_BATCH`] jobs, one transaction each (other calls run
    /// between them), gives the freed pages back to the file system after each, and keeps
    /// the WAL short meanwhile: a purge of a week of jobs is never one huge transaction.
    pub(crate) fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        let mut total = 0;
        loop {
            let deleted = self.write(|tx| {
                let deleted = tx
                    .prepare_cached(&format!(
                        "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_finished
                           WHERE finished_ms < ?1 AND status IN {TERMINAL}
                             AND callback_due_ms IS NULL LIMIT ?2)"
                    ))
                    .and_then(|mut s| s.execute(params![to_sql(finished_before_ms), PURGE_BATCH as i64]))
                    .map_err(|e| self.err(e))?;
                // Tenants whose last rank is behind V are as good as absent.
                tx.prepare_cached(
                    "DELETE FROM fair_last WHERE last <= (SELECT v FROM fair_clock
                       WHERE fair_clock.prio = fair_last.prio)",
                )
                .and_then(|mut s| s.execute([]))
                .map_err(|e| self.err(e))?;
                if deleted > 0 {
                    // Frees at most the pages this batch emptied, and more from earlier ones.
                    // Stepped to its end: each step frees one page.
                    tx.prepare_cached("PRAGMA incremental_vacuum")
                        .and_then(|mut st| {
                            let mut rows = st.query([])?;
                            while rows.next()?.is_some() {}
                            Ok(())
                        })
                        .map_err(|e| self.err(e))?;
                }
                Ok(deleted as u64)
            })?;
            total += deleted;
            if deleted < PURGE_BATCH as u64 {
                return Ok(total);
            }
            if file_len(&self.wal_path) >= WAL_TRUNCATE_AT {
                let conn = self.lock();
                checkpoint(&conn, Checkpoint::Truncate).map_err(|e| self.err(e))?;
            }
        }
    }

    pub(crate) fn counts(&self) -> Result<JobCounts, JobStoreError> {
        self.read(|tx| {
            let mut counts = JobCounts {
                by_status: JobStatus::ALL.into_iter().map(|s| (s, 0)).collect(),
                oldest_queued_ms: [None; 4],
                callbacks_pending: 0,
            };
            let pending: i64 = tx
                .prepare_cached(CALLBACKS_PENDING)
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(|e| self.err(e))?;
            counts.callbacks_pending = u64::try_from(pending).unwrap_or(0);
            let by_status: Vec<(String, i64)> = tx
                .prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|e| self.err(e))?;
            for (status, n) in by_status {
                let status = JobStatus::parse(&status).ok_or_else(|| {
                    JobStoreError::Corrupt(format!(
                        "{}: unknown job status {status:?}",
                        self.path.display()
                    ))
                })?;
                counts
                    .by_status
                    .insert(status, u64::try_from(n).unwrap_or(0));
            }
            let oldest: Vec<(i64, i64)> = tx
                .prepare_cached(QUEUED_AGE)
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|e| self.err(e))?;
            for (prio, created) in oldest {
                let slot = usize::try_from(prio)
                    .ok()
                    .and_then(|i| counts.oldest_queued_ms.get_mut(i))
                    .ok_or_else(|| {
                        JobStoreError::Corrupt(format!(
                            "{}: unknown priority index {prio}",
                            self.path.display()
                        ))
                    })?;
                *slot = Some(u64::try_from(created).unwrap_or(0));
            }
            Ok(counts)
        })
    }
}
