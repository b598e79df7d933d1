//! The row codec: a job as a row (its JSON body and the indexed columns copied from it) and
//! back, integers as SQLite's signed ones, and rusqlite errors as store errors.

use std::path::Path;

use ports::{Job, JobId, JobStoreError, ScopedKey};
use rusqlite::{ErrorCode, OptionalExtension, Transaction, params};

use crate::Inner;

/// A rusqlite error as a store error naming the file.
pub(crate) fn db_error(path: &Path, e: rusqlite::Error) -> JobStoreError {
    let text = format!("{}: {e}", path.display());
    let corrupt = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    ) || matches!(
        e,
        rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    );
    if corrupt {
        JobStoreError::Corrupt(text)
    } else {
        JobStoreError::Unavailable(text)
    }
}

/// Milliseconds (or a version) as a SQLite integer, saturating.
pub(crate) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The columns a job row is read from, in this order.
pub(crate) const JOB_COLUMNS: &str = "seq, version, body";

/// A row as read, before decoding.
pub(crate) struct Row {
    seq: i64,
    version: i64,
    body: String,
}

impl Row {
    pub(crate) fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            seq: row.get(0)?,
            version: row.get(1)?,
            body: row.get(2)?,
        })
    }
}

impl Inner {
    /// Decodes a row's job; `seq` and `version` come from their columns.
    pub(crate) fn decode(&self, row: Row) -> Result<Job, JobStoreError> {
        let corrupt = |what: &str| {
            JobStoreError::Corrupt(format!(
                "{}: job seq {}: {what}",
                self.path.display(),
                row.seq
            ))
        };
        let mut job: Job =
            serde_json::from_str(&row.body).map_err(|e| corrupt(&format!("body: {e}")))?;
        job.seq = u64::try_from(row.seq).map_err(|_| corrupt("negative seq"))?;
        job.version = u64::try_from(row.version).map_err(|_| corrupt("negative version"))?;
        Ok(job)
    }

    /// The first job of `SELECT … FROM {from}` (with `params`), if any.
    pub(crate) fn select_one(
        &self,
        tx: &Transaction<'_>,
        from: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<Job>, JobStoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM {from}");
        let row = tx
            .prepare_cached(&sql)
            .and_then(|mut stmt| stmt.query_row(params, Row::read).optional())
            .map_err(|e| self.err(e))?;
        row.map(|r| self.decode(r)).transpose()
    }

    pub(crate) fn by_id(
        &self,
        tx: &Transaction<'_>,
        id: &JobId,
    ) -> Result<Option<Job>, JobStoreError> {
        self.select_one(tx, "jobs WHERE id = ?1", params![id.as_str()])
    }

    pub(crate) fn by_key(
        &self,
        tx: &Transaction<'_>,
        key: &ScopedKey,
    ) -> Result<Option<Job>, JobStoreError> {
        self.select_one(
            tx,
            "jobs WHERE key_scope = ?1 AND key = ?2",
            params![key.tenant.as_str(), key.key],
        )
    }

    /// Rewrites the row of `job.seq` — body and indexed columns — if its version is still
    /// `expected_version`; `false` if it is not.
    pub(crate) fn write_row(
        &self,
        tx: &Transaction<'_>,
        job: &Job,
        expected_version: u64,
    ) -> Result<bool, JobStoreError> {
        let body = serde_json::to_string(job).map_err(|e| {
            JobStoreError::Unavailable(format!(
                "{}: cannot encode job {}: {e}",
                self.path.display(),
                job.id
            ))
        })?;
        let changed = tx
            .prepare_cached(
                "UPDATE jobs SET version = ?1, status = ?2, prio = ?3, next_run_ms = ?4,
                   lease_until_ms = ?5, finished_ms = ?6, created_ms = ?7, body = ?8,
                   callback_due_ms = ?11, rank = ?12
                 WHERE seq = ?9 AND version = ?10",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    to_sql(job.version),
                    job.status.as_str(),
                    priority_index(job),
                    to_sql(job.next_run_ms),
                    job.lease.as_ref().map(|l| to_sql(l.until_ms)),
                    job.finished_ms.map(to_sql),
                    to_sql(job.created_ms),
                    body,
                    to_sql(job.seq),
                    to_sql(expected_version),
                    ports::jobs::callback_due_at(job).map(to_sql),
                    to_sql(job.rank),
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }
}

pub(crate) fn priority_index(job: &Job) -> i64 {
    // 0..=3, always fits.
    i64::try_from(job.priority.index()).unwrap_or(0)
}
