//! A durable [`JobStore`] in one SQLite file: the service's default job store.
//!
//! # Why SQLite
//! - **No system library.** `rusqlite` is built with its `bundled` feature: SQLite's C source
//!   is compiled into the binary, so neither the build nor the host needs a `libsqlite3`.
//! - **Crash safety.** The database runs in WAL mode: a commit is appended to the write-ahead
//!   log before it returns, and a torn write at the end of the log is discarded on the next
//!   open, so a process killed with SIGKILL never loses an acknowledged write and never leaves
//!   a half-written job. How far that goes is [`Synchronous`]: `Normal` (the default) leaves
//!   the log's fsync to the checkpoints, so a crash of the *machine* (power cut, kernel panic)
//!   may lose the last commits; `Full` fsyncs every commit, so not even that loses one, at
//!   the price of one fsync per write (on the 2-core test VM: p50 0.66 ms, p99 6.1 ms per
//!   commit with `Full`, 0.016 / 0.078 ms with `Normal`).
//! - **One file**, copied, backed up and inspected with the `sqlite3` shell.
//! - **The claim order is an index.** "Highest priority, then the tenants' fair rank, then
//!   oldest, among the runnable jobs" is one `SELECT … ORDER BY prio DESC, rank, seq LIMIT 1`
//!   over a partial index of the
//!   non-terminal jobs; the idempotency key is a `UNIQUE` index. A pure key-value store such as
//!   redb would do as well for durability, but every index (by key, by status, claim order,
//!   finish time) would be hand-rolled and kept in sync by this crate.
//!
//! # Durability
//! A [`JobStore::submit`] (or any other write) that returned `Ok` is committed: it survives
//! the process in any case, and the machine too with [`Synchronous::Full`] (its WAL fsynced). One that returned an error, or whose process died before
//! it returned, wrote either everything or nothing.
//!
//! # Concurrency
//! A store holds **one connection** behind a [`std::sync::Mutex`]; every trait method runs its
//! SQL in one transaction (`BEGIN IMMEDIATE` for writes, a deferred read transaction for
//! reads) on a blocking thread (`tokio::task::spawn_blocking`), so the operations of one
//! store are serialized and never block the async runtime's workers. Each is a handful of
//! indexed statements, so one connection carries thousands of operations per second; the
//! cost of a write is dominated by its fsync.
//!
//! **One process per file.** `open` takes an exclusive OS lock (`flock`) on `path.lock`,
//! which holds the owner's process id; a second process (a second instance started in the
//! same working directory) is refused with one error naming the file and that process. The
//! lock goes with the store (or the process, however it dies). A local disk only: never a
//! network file system, whose locks neither SQLite nor `flock` can trust. A service with
//! several replicas uses the Redis job store.
//!
//! # Operated for days
//! - **The WAL stays small.** A background thread checkpoints every [`CHECKPOINT_EVERY`]
//!   with `PASSIVE` (copies without blocking anyone) and, once nothing was written since its
//!   last round, `TRUNCATE` while it holds the store's connection (so no transaction is open
//!   and the checkpoint reaches the end of the log): an idle store has no WAL. Past
//!   [`WAL_TRUNCATE_AT`] it does the same at once, ahead of the waiting writers (they wait for
//!   the tail written during its passive pass and the fsyncs); a commit that finds the WAL
//!   past [`WAL_HARD_LIMIT`] truncates it itself. A
//!   passive checkpoint alone never catches up with a steady stream of writes, so SQLite never
//!   restarts the log and it grows without end: 1.8 GB after 20 000 jobs through the store
//!   (4 writers, the `operations` test's churn) before this; at most 64 MiB (twice the hard
//!   limit, the test's bound) after, the exclusive phase taking about 11 ms there with 15 MB
//!   of WAL to finish.
//! - **What a write costs.** SQLite logs whole 4 KiB pages: a transaction that changes a job
//!   writes its table page and a page of each index whose columns it sets (`jobs_claim`,
//!   `jobs_by_status`, `jobs_finished`, `jobs_queued_age`, `jobs_due`): about 5 pages, 20 KiB,
//!   for a renewal or an update, 6 for a first claim (the fair order's `V` moves; a job's
//!   later claims leave it), 9 for a submit (its tenant's last rank). A job makes 10–15 such
//!   writes (submit, claims, `creating`, `processing`, each poll, renewals, the end), which
//!   is the ~290 KB of WAL per job seen in the service; checkpoints copy it back, so it is
//!   write traffic, not space.
//! - **The file shrinks with its jobs.** The file runs with `auto_vacuum = INCREMENTAL`
//!   (a file made before is rebuilt once by `VACUUM` when opened); a purge deletes in
//!   batches of [`PURGE_BATCH`] and hands the freed pages back after each.
//! - **A lost file is noticed.** Every transaction checks that the path still names the file
//!   the store opened (device and inode); once it does not (removed, replaced) every call fails
//!   with [`JobStoreError::Unavailable`], logged once at error level, so nothing is
//!   acknowledged that lands in an unlinked file. [`JobStore::check`] adds an open for writing
//!   of the file and its WAL (an immutable or read-only file still takes WAL commits, but no
//!   checkpoint) and a one-page write, which fails on a read-only file system or a full disk.
//!   A file this process cannot write is refused at open.
//!
//! # File layout
//! `open(path)` creates the parent directories, the database file `path` and the lock file
//! `path.lock`; in WAL mode SQLite keeps two companions beside it while it is open,
//! `path-wal` (the log of recent commits) and `path-shm` (its shared-memory index). Back up or move the three together, or
//! only `path` after a clean close. The schema (version [`SCHEMA_VERSION`], kept in
//! `PRAGMA user_version`):
//!
//! ```sql
//! CREATE TABLE jobs (
//!   seq INTEGER PRIMARY KEY AUTOINCREMENT, -- arrival order, never reused
//!   id TEXT NOT NULL UNIQUE,
//!   version INTEGER NOT NULL,              -- compare-and-set of update
//!   status TEXT NOT NULL,                  -- JobStatus::as_str
//!   prio INTEGER NOT NULL,                 -- Priority::index, 3 = critical
//!   next_run_ms INTEGER NOT NULL,
//!   lease_until_ms INTEGER,                -- NULL without a lease
//!   finished_ms INTEGER,
//!   created_ms INTEGER NOT NULL,
//!   key_scope TEXT,                        -- the idempotency key, if any
//!   key TEXT,
//!   body TEXT NOT NULL,                    -- the whole Job as JSON
//!   callback_due_ms INTEGER,               -- ports::jobs::callback_due_at; NULL unless pending
//!   rank INTEGER NOT NULL DEFAULT 0        -- Job::rank, the tenants' fair order
//! ) STRICT;
//! -- The fair order's state (ports::jobs, "The fair order of claims"): V per priority, and
//! -- each tenant's last rank per priority (rows behind V are dropped by the purge).
//! CREATE TABLE fair_clock (prio INTEGER PRIMARY KEY, v INTEGER NOT NULL) STRICT;
//! CREATE TABLE fair_last (prio INTEGER NOT NULL, tenant TEXT NOT NULL, last INTEGER NOT NULL,
//!   PRIMARY KEY (prio, tenant)) STRICT, WITHOUT ROWID;
//! -- The tenants' credit budgets (ports::CreditLedger): usage per tenant and period, and one
//! -- hold per job in progress.
//! CREATE TABLE credit_usage (tenant, period, spent, reserved, written_ms,
//!   PRIMARY KEY (tenant, period)) STRICT, WITHOUT ROWID;
//! CREATE TABLE credit_holds (job PRIMARY KEY, tenant, period, credits, at_ms) STRICT;
//! -- Uploads by content (ports::UploadCache): UploadKey::field → the entry as JSON.
//! CREATE TABLE upload_cache (field PRIMARY KEY, tenant, url, body, expires_ms)
//!   STRICT, WITHOUT ROWID;
//! -- Its number of rows, kept by triggers on upload_cache (recounted at open).
//! CREATE TABLE upload_cache_size (id PRIMARY KEY CHECK (id = 0), n) STRICT;
//! ```
//!
//! The `body` is the job as read back; the other columns copy the fields the queries filter
//! and sort on, and every write rewrites them together with the body. `seq` and `version` are
//! authoritative in their columns. Times are milliseconds since the epoch as SQLite integers
//! (signed 64-bit); a time beyond `i64::MAX` (about 292 million years) is stored as `i64::MAX`.

//!
//! # Layout
//! - this file: the public surface ([`SqliteJobStore`], [`Synchronous`], the constants) and
//!   `open`, which puts the pieces together;
//! - `schema`: the table, its indexes, the queries that walk them, connection settings and
//!   the migration;
//! - `ops`: the transactions and the SQL of every operation;
//! - `job_store`: the [`JobStore`] impl, each method on a blocking thread;
//! - `codec`: a job as a row and back, errors (list cursors are `ports::ListQuery`'s);
//! - `checkpoint`: the WAL's background checkpointer;
//! - `file`: the one-process lock and the lost-file check.

mod checkpoint;
mod codec;
mod credits;
mod file;
mod job_store;
mod ops;
mod schema;
mod upload_cache;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(doc)]
use ports::JobStore;
use ports::JobStoreError;
use rusqlite::Connection;

use checkpoint::{Checkpoint, checkpoint, spawn_checkpointer};
use codec::db_error;
use file::{FileIdentity, OwnerLock};
use schema::{migrate, setup, vacuum_mode};

/// The schema version this build writes and reads (`PRAGMA user_version`). A file with a
/// newer version is refused with [`JobStoreError::Corrupt`].
pub const SCHEMA_VERSION: i64 = 3;

/// The most jobs one purge transaction deletes (a purge repeats until done).
pub const PURGE_BATCH: usize = 1000;

/// How long a write waits for another connection's lock on the file before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite job store. Cheap to share as `Arc<dyn JobStore>`; see the crate docs for its
/// durability and concurrency.
#[derive(Debug)]
pub struct SqliteJobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
    wal_path: PathBuf,
    /// The file opened; a path that names another file (or none) now is a lost store.
    identity: FileIdentity,
    /// Write transactions committed, for the checkpointer's "idle" (nothing since its last
    /// round).
    writes: AtomicU64,
    /// Set once the file was found removed or replaced: every call fails with it from then
    /// on (the data written since is in a file nobody will open again).
    broken: Mutex<Option<String>>,
    /// Set while the checkpointer waits for, or holds, the connection: writers wait at the
    /// gate meanwhile (see `Inner::exclusive`).
    checkpoint_wanted: std::sync::atomic::AtomicBool,
    gate: Mutex<()>,
    gate_open: std::sync::Condvar,
    _lock: OwnerLock,
}

impl SqliteJobStore {
    /// Opens the store in the file `path`, creating the file, its parent directories and the
    /// schema as needed; sets WAL mode, [`Synchronous::Normal`] and a [`BUSY_TIMEOUT`].
    ///
    /// Blocks on file I/O: call it before serving, or inside `spawn_blocking`.
    ///
    /// # Errors
    /// [`JobStoreError::Unavailable`] if the file cannot be created or opened;
    /// [`JobStoreError::Corrupt`] if it is not a SQLite database or its schema is newer than
    /// [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteJobStore, JobStoreError> {
        SqliteJobStore::open_with(path, Synchronous::default())
    }

    /// As [`SqliteJobStore::open`], with the given durability of a commit.
    pub fn open_with(
        path: impl AsRef<Path>,
        synchronous: Synchronous,
    ) -> Result<SqliteJobStore, JobStoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| {
                JobStoreError::Unavailable(format!(
                    "{}: cannot create the directory {}: {e}",
                    path.display(),
                    parent.display()
                ))
            })?;
        }
        // The lock first: a second process must not even open (and recover) the file.
        let lock = OwnerLock::take(&path)?;
        let mut conn = Connection::open(&path).map_err(|e| db_error(&path, e))?;
        if conn.is_readonly("main").unwrap_or(false) {
            return Err(JobStoreError::Unavailable(format!(
                "{}: the file is read-only to this process",
                path.display()
            )));
        }
        // Before anything creates the file's header (WAL mode does): a new file takes it as
        // it is made; `vacuum_mode` rebuilds an older one.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(|e| db_error(&path, e))?;
        setup(&mut conn, &path, synchronous)?;
        vacuum_mode(&mut conn, &path)?;
        migrate(&mut conn, &path)?;
        upload_cache::prepare(&mut conn, &path)?;
        // Checkpoints (copying the WAL into the database file, with its fsync) run on a
        // connection of their own, so no write waits for the bulk of one (`CHECKPOINT_EVERY`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| db_error(&path, e))?;
        let mut checkpointer = Connection::open(&path).map_err(|e| db_error(&path, e))?;
        setup(&mut checkpointer, &path, synchronous)?;
        // A WAL left by an earlier process (killed, or of a build that never truncated it)
        // is copied in and emptied before serving.
        checkpoint(&checkpointer, Checkpoint::Truncate).map_err(|e| db_error(&path, e))?;
        let identity = FileIdentity::of(&path).ok_or_else(|| {
            JobStoreError::Unavailable(format!(
                "{}: the file vanished while opening",
                path.display()
            ))
        })?;
        let inner = Arc::new(Inner {
            conn: Mutex::new(conn),
            wal_path: companion(&path, "-wal"),
            path,
            identity,
            writes: AtomicU64::new(0),
            broken: Mutex::new(None),
            checkpoint_wanted: std::sync::atomic::AtomicBool::new(false),
            gate: Mutex::new(()),
            gate_open: std::sync::Condvar::new(),
            _lock: lock,
        });
        spawn_checkpointer(checkpointer, Arc::downgrade(&inner));
        Ok(SqliteJobStore { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The size of the write-ahead log (`path-wal`) now, in bytes (0 when there is none).
    pub fn wal_bytes(&self) -> u64 {
        file_len(&self.inner.wal_path)
    }

    /// Runs `f` on a blocking thread with the store.
    async fn blocking<T, F>(&self, f: F) -> Result<T, JobStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, JobStoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                JobStoreError::Unavailable(format!(
                    "{}: the store's blocking task failed: {e}",
                    self.inner.path.display()
                ))
            })?
    }
}

/// `path` with `suffix` appended (`jobs.db` → `jobs.db-wal`).
fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// How often the background connection checkpoints the WAL into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How often it looks while the store is idle and its WAL empty.
pub const CHECKPOINT_IDLE: Duration = Duration::from_secs(2);

/// Past this the background thread finishes a checkpoint and truncates the WAL right after
/// a passive one, holding the store's connection ahead of the waiting writers: they wait
/// for what was written during the passive pass to be copied, and the fsyncs.
pub const WAL_TRUNCATE_AT: u64 = 8 << 20;

/// A commit that leaves the WAL larger than this (the background thread fell behind)
/// truncates it itself before it returns: the WAL never holds much more than this.
pub const WAL_HARD_LIMIT: u64 = 32 << 20;

/// `journal_size_limit`: whenever SQLite restarts the WAL from its start it also cuts the
/// file down to this size.
pub const WAL_SIZE_LIMIT: u64 = 16 << 20;

/// How durable a commit is (SQLite's `synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// A returned write survives the process (SIGKILL, OOM, panic); a crash of the machine may
    /// lose the commits since the last checkpoint. No fsync per write.
    #[default]
    Normal,
    /// A returned write survives a crash of the machine too: every commit is fsynced.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_sets_wal_and_the_chosen_sync() {
        let dir = std::env::temp_dir().join(format!("jobstore-sqlite-unit-{}", std::process::id()));
        {
            let store = SqliteJobStore::open(dir.join("normal.db")).unwrap();
            let conn = store.inner.lock();
            let sync: i64 = conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 1, "NORMAL by default");
        }
        let store = SqliteJobStore::open_with(dir.join("jobs.db"), Synchronous::Full).unwrap();
        {
            let conn = store.inner.lock();
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 2, "FULL");
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
            let vacuum: i64 = conn
                .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
                .unwrap();
            assert_eq!(vacuum, 2, "INCREMENTAL");
        }
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
