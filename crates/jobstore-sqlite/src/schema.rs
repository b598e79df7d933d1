//! The schema and its migration: the `jobs` table and its indexes, the queries that must walk
//! those indexes (kept beside them, so a change to one shows in the other), and the settings
//! every connection gets when it opens the file.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::codec::{db_error, to_sql};
use crate::{BUSY_TIMEOUT, JobStoreError, SCHEMA_VERSION, Synchronous, WAL_SIZE_LIMIT};

/// The terminal states, as SQL (must match [`JobStatus::is_terminal`]).
pub(crate) const TERMINAL: &str = "('done','failed','cancelled')";

/// The first runnable job at `?1` in claim order, walking the partial index `jobs_claim`
/// (already in claim order, so nothing is sorted; without `INDEXED BY` the planner may pick
/// `jobs_by_status` and sort). Its state list is the index's verbatim, as SQLite needs to use it.
pub(crate) const CLAIM_FROM: &str = "jobs INDEXED BY jobs_claim
 WHERE status IN ('queued','creating','processing') AND next_run_ms <= ?1
   AND (lease_until_ms IS NULL OR lease_until_ms <= ?1)
 ORDER BY prio DESC, rank ASC, seq ASC LIMIT 1";
/// The oldest queued job per priority, from the partial index `jobs_queued_age` (in
/// `(prio, created_ms)` order, so nothing is sorted).
pub(crate) const QUEUED_AGE: &str =
    "SELECT prio, MIN(created_ms) FROM jobs INDEXED BY jobs_queued_age
 WHERE status = 'queued' GROUP BY prio";
/// When the next active job becomes claimable, from the expression index `jobs_due` (its
/// first entry: nothing is scanned).
pub(crate) const NEXT_DUE: &str =
    "SELECT MAX(next_run_ms, IFNULL(lease_until_ms, 0)) FROM jobs INDEXED BY jobs_due
 WHERE status IN ('queued','creating','processing')
 ORDER BY MAX(next_run_ms, IFNULL(lease_until_ms, 0)) LIMIT 1";
/// The first claimable pending callback at `?1`, earliest due first, from the partial index
/// `jobs_callbacks`.
pub(crate) const CALLBACK_FROM: &str = "jobs INDEXED BY jobs_callbacks
 WHERE callback_due_ms IS NOT NULL AND callback_due_ms <= ?1
 ORDER BY callback_due_ms ASC LIMIT 1";
/// When the next pending callback becomes claimable: the first entry of `jobs_callbacks`.
pub(crate) const NEXT_CALLBACK_DUE: &str =
    "SELECT callback_due_ms FROM jobs INDEXED BY jobs_callbacks
 WHERE callback_due_ms IS NOT NULL ORDER BY callback_due_ms LIMIT 1";
/// Pending callbacks, counted on `jobs_callbacks`.
pub(crate) const CALLBACKS_PENDING: &str =
    "SELECT COUNT(*) FROM jobs INDEXED BY jobs_callbacks WHERE callback_due_ms IS NOT NULL";
/// A page of all jobs before seq `?1`, newest first (`?2` rows).
pub(crate) const LIST_ALL_FROM: &str = "jobs WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2";
/// A page of the jobs of status `?1` before seq `?2`, newest first (`?3` rows).
pub(crate) const LIST_STATUS_FROM: &str =
    "jobs WHERE status = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  version INTEGER NOT NULL,
  status TEXT NOT NULL,
  prio INTEGER NOT NULL,
  next_run_ms INTEGER NOT NULL,
  lease_until_ms INTEGER,
  finished_ms INTEGER,
  created_ms INTEGER NOT NULL,
  key_scope TEXT,
  key TEXT,
  body TEXT NOT NULL,
  callback_due_ms INTEGER,
  rank INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS fair_clock (
  prio INTEGER PRIMARY KEY,
  v INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS fair_last (
  prio INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  last INTEGER NOT NULL,
  PRIMARY KEY (prio, tenant)
) STRICT, WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_key ON jobs (key_scope, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (prio DESC, rank, seq)
  WHERE status IN ('queued','creating','processing');
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_ms) WHERE finished_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queued_age ON jobs (prio, created_ms) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (MAX(next_run_ms, IFNULL(lease_until_ms, 0)))
  WHERE status IN ('queued','creating','processing');
CREATE INDEX IF NOT EXISTS jobs_callbacks ON jobs (callback_due_ms)
  WHERE callback_due_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS credit_usage (
  tenant TEXT NOT NULL,
  period TEXT NOT NULL,
  spent INTEGER NOT NULL,
  reserved INTEGER NOT NULL,
  written_ms INTEGER NOT NULL,
  PRIMARY KEY (tenant, period)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credit_holds (
  job TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  period TEXT NOT NULL,
  credits INTEGER NOT NULL,
  at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS credit_holds_by_age ON credit_holds (at_ms);
CREATE TABLE IF NOT EXISTS upload_cache (
  field TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  url TEXT NOT NULL,
  body TEXT NOT NULL,
  expires_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS upload_cache_expiry ON upload_cache (expires_ms);
CREATE INDEX IF NOT EXISTS upload_cache_url ON upload_cache (tenant, url, expires_ms);
";

/// From schema version 1 (before callbacks) to 2: the column `callback_due_ms`, `NULL` in
/// every row written before (none of them has a callback); its index comes with [`SCHEMA`].
const V1_TO_V2: &str = "ALTER TABLE jobs ADD COLUMN callback_due_ms INTEGER;";

/// From schema version 2 (before the tenants' fair order) to 3: the column `rank`, 0 in every
/// row written before (claimed first among their priority, by `seq`, as they were), and the
/// claim index rebuilt on it; the tables `fair_clock` and `fair_last` come with [`SCHEMA`].
const V2_TO_V3: &str = "ALTER TABLE jobs ADD COLUMN rank INTEGER NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS jobs_claim;";

/// Connection settings, applied on every open.
pub(crate) fn setup(
    conn: &mut Connection,
    path: &Path,
    synchronous: Synchronous,
) -> Result<(), JobStoreError> {
    let err = |e| db_error(path, e);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JobStoreError::Unavailable(format!(
            "{}: journal_mode is {mode}, not wal",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", synchronous.pragma())
        .map_err(err)?;
    conn.pragma_update(None, "journal_size_limit", to_sql(WAL_SIZE_LIMIT))
        .map_err(err)?;
    Ok(())
}

/// Sets `auto_vacuum = INCREMENTAL`, so that the pages a purge frees go back to the file
/// system ([`Inner::purge`] runs `incremental_vacuum`) and the file shrinks with the jobs it
/// keeps. A new file takes the setting before its first table; a file made by an earlier
/// build (no auto-vacuum) is rebuilt once by `VACUUM`.
pub(crate) fn vacuum_mode(conn: &mut Connection, path: &Path) -> Result<(), JobStoreError> {
    let err = |e| db_error(path, e);
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .map_err(err)?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    tracing::info!(path = %path.display(), "job store: rebuilding the file once for incremental vacuum");
    conn.execute_batch("VACUUM").map_err(err)?;
    let mode: i64 = conn
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .map_err(err)?;
    if mode != INCREMENTAL {
        tracing::warn!(path = %path.display(), mode, "job store: incremental vacuum is off; the file keeps the space purged jobs took");
    }
    Ok(())
}

/// Creates the schema in a new file, brings a file of an earlier version up to this one (in
/// one transaction); refuses a newer one.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JobStoreError> {
    let err = |e| db_error(path, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(err)?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA).map_err(err)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
        }
        1 | 2 => {
            if version == 1 {
                tracing::info!(path = %path.display(), "job store: schema 1 → 2 (callbacks)");
                tx.execute_batch(V1_TO_V2).map_err(err)?;
            }
            tracing::info!(path = %path.display(), "job store: schema 2 → 3 (fair order)");
            tx.execute_batch(V2_TO_V3).map_err(err)?;
            tx.execute_batch(SCHEMA).map_err(err)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
        }
        // Indexes added since (`jobs_due`) are created in files made before them.
        SCHEMA_VERSION => tx.execute_batch(SCHEMA).map_err(err)?,
        v => {
            return Err(JobStoreError::Corrupt(format!(
                "{}: schema version {v} is not {SCHEMA_VERSION}, the one this build reads",
                path.display()
            )));
        }
    }
    tx.commit().map_err(err)
}

#[cfg(test)]
pub(crate) mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::codec::JOB_COLUMNS;
    use ports::JobStatus;

    /// The non-terminal states, as SQL, as written in `jobs_claim` and [`CLAIM_FROM`].
    const ACTIVE: &str = "('queued','creating','processing')";

    #[test]
    fn the_sql_state_lists_match_is_terminal() {
        let list = |terminal: bool| {
            let names: Vec<String> = JobStatus::ALL
                .into_iter()
                .filter(|s| s.is_terminal() == terminal)
                .map(|s| format!("'{s}'"))
                .collect();
            format!("({})", names.join(","))
        };
        assert_eq!(ACTIVE, list(false));
        assert_eq!(TERMINAL, list(true));
        assert!(
            SCHEMA.contains(ACTIVE),
            "the claim index covers the active states"
        );
    }

    /// SQLite's query plan of `sql` (its parameters bound to 1, 2, …), the steps joined
    /// with `; ` (also the upload cache's tests).
    pub(crate) fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let args = rusqlite::params_from_iter(1..=stmt.parameter_count() as i64);
        let rows = stmt
            .query_map(args, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        rows.join("; ")
    }

    #[test]
    fn the_queries_walk_their_indexes_without_sorting() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        assert!(CLAIM_FROM.contains(ACTIVE));
        let select = |from: &str| plan(&conn, &format!("SELECT {JOB_COLUMNS} FROM {from}"));
        for (from, index) in [
            (CLAIM_FROM, "jobs_claim"),
            (LIST_ALL_FROM, "INTEGER PRIMARY KEY"),
            (LIST_STATUS_FROM, "jobs_by_status"),
            (CALLBACK_FROM, "jobs_callbacks"),
            ("jobs WHERE id = ?1", "sqlite_autoindex_jobs"),
            ("jobs WHERE key_scope = ?1 AND key = ?2", "jobs_by_key"),
        ] {
            let plan = select(from);
            assert!(plan.contains(index), "{from}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{from}: {plan}");
        }
        let due = plan(&conn, NEXT_DUE);
        assert!(due.contains("jobs_due"), "{due}");
        assert!(
            !due.contains("TEMP B-TREE"),
            "the index's order, no sort: {due}"
        );
        for sql in [NEXT_CALLBACK_DUE, CALLBACKS_PENDING] {
            let p = plan(&conn, sql);
            assert!(p.contains("jobs_callbacks"), "{sql}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
        let age = plan(&conn, QUEUED_AGE);
        assert!(age.contains("jobs_queued_age"), "{age}");
        assert!(!age.contains("TEMP B-TREE"), "{age}");
    }
}
