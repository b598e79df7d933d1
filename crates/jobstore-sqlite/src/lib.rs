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
//! - **The claim order is an index.** "Highest priority, then oldest, among the runnable jobs"
//!   is one `SELECT … ORDER BY prio DESC, seq ASC LIMIT 1` over a partial index of the
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
//!   for a claim, a renewal or an update, 8 pages for a submit. A job makes 10–15 such
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
//!   body TEXT NOT NULL                     -- the whole Job as JSON
//! ) STRICT;
//! ```
//!
//! The `body` is the job as read back; the other columns copy the fields the queries filter
//! and sort on, and every write rewrites them together with the body. `seq` and `version` are
//! authoritative in their columns. Times are milliseconds since the epoch as SQLite integers
//! (signed 64-bit); a time beyond `i64::MAX` (about 292 million years) is stored as `i64::MAX`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ports::jobs::{duration_ms, is_runnable};
use ports::{
    Job, JobCounts, JobId, JobPage, JobStatus, JobStore, JobStoreError, Lease, NewJob, QueueLimits,
    ScopedKey, Submitted,
};
use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};

/// The schema version this build writes and reads (`PRAGMA user_version`). A file with a
/// newer version is refused with [`JobStoreError::Corrupt`].
pub const SCHEMA_VERSION: i64 = 1;

/// The most jobs one purge transaction deletes (a purge repeats until done).
pub const PURGE_BATCH: usize = 1000;

/// How long a write waits for another connection's lock on the file before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The terminal states, as SQL (must match [`JobStatus::is_terminal`]).
const TERMINAL: &str = "('done','failed','cancelled')";

/// The first runnable job at `?1` in claim order, walking the partial index `jobs_claim`
/// (already in claim order, so nothing is sorted; without `INDEXED BY` the planner may pick
/// `jobs_by_status` and sort). Its state list is the index's verbatim, as SQLite needs to use it.
const CLAIM_FROM: &str = "jobs INDEXED BY jobs_claim
 WHERE status IN ('queued','creating','processing') AND next_run_ms <= ?1
   AND (lease_until_ms IS NULL OR lease_until_ms <= ?1)
 ORDER BY prio DESC, seq ASC LIMIT 1";
/// The oldest queued job per priority, from the partial index `jobs_queued_age` (in
/// `(prio, created_ms)` order, so nothing is sorted).
const QUEUED_AGE: &str = "SELECT prio, MIN(created_ms) FROM jobs INDEXED BY jobs_queued_age
 WHERE status = 'queued' GROUP BY prio";
/// When the next active job becomes claimable, from the expression index `jobs_due` (its
/// first entry: nothing is scanned).
const NEXT_DUE: &str =
    "SELECT MAX(next_run_ms, IFNULL(lease_until_ms, 0)) FROM jobs INDEXED BY jobs_due
 WHERE status IN ('queued','creating','processing')
 ORDER BY MAX(next_run_ms, IFNULL(lease_until_ms, 0)) LIMIT 1";
/// A page of all jobs before seq `?1`, newest first (`?2` rows).
const LIST_ALL_FROM: &str = "jobs WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2";
/// A page of the jobs of status `?1` before seq `?2`, newest first (`?3` rows).
const LIST_STATUS_FROM: &str = "jobs WHERE status = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";

const SCHEMA: &str = "
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
  body TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_key ON jobs (key_scope, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (prio DESC, seq)
  WHERE status IN ('queued','creating','processing');
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_ms) WHERE finished_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queued_age ON jobs (prio, created_ms) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (MAX(next_run_ms, IFNULL(lease_until_ms, 0)))
  WHERE status IN ('queued','creating','processing');
";

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

/// The checkpoint modes the store uses.
#[derive(Debug, Clone, Copy)]
enum Checkpoint {
    /// Copies what no reader still needs; never waits for, or blocks, a writer.
    Passive,
    /// Copies everything, then empties the WAL file (waits for readers and writers).
    Truncate,
}

/// What a checkpoint reported: whether it was blocked, frames in the WAL, frames copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CheckpointReport {
    busy: bool,
    log: i64,
    copied: i64,
}

fn checkpoint(conn: &Connection, mode: Checkpoint) -> rusqlite::Result<CheckpointReport> {
    let sql = match mode {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    conn.query_row(sql, [], |r| {
        Ok(CheckpointReport {
            busy: r.get::<_, i64>(0)? != 0,
            log: r.get(1)?,
            copied: r.get(2)?,
        })
    })
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] on its own connection, until the store
/// is dropped: `PASSIVE` (it never blocks a writer, and copies only what no reader still
/// needs), and, when nothing was written since the last round or the WAL is past
/// [`WAL_TRUNCATE_AT`], `TRUNCATE` while holding the store's connection ahead of the waiting
/// writers, so that no transaction of this process is open and the checkpoint empties the
/// WAL. A commit that finds the WAL past [`WAL_HARD_LIMIT`] truncates it itself.
///
/// Why: under a steady stream of writes a passive checkpoint never catches up with the end
/// of the log (new frames arrive while it copies), so SQLite never restarts the log from its
/// beginning and the file grows without end (the service once reached 1.5 GB of WAL over a
/// 3 MB database). Without any background checkpoint SQLite would checkpoint inside
/// whichever commit crosses 1000 WAL pages, and that commit would wait for the whole copy.
fn spawn_checkpointer(conn: Connection, store: std::sync::Weak<Inner>) {
    let fallback = store.clone();
    let spawned = std::thread::Builder::new()
        .name("jobstore-sqlite-checkpoint".into())
        .spawn(move || {
            let mut seen_writes = u64::MAX;
            let mut pause = CHECKPOINT_EVERY;
            loop {
                std::thread::sleep(pause);
                let Some(inner) = store.upgrade() else { return };
                let writes = inner.writes.load(Ordering::Relaxed);
                let idle = writes == seen_writes;
                seen_writes = writes;
                if let Err(e) = inner.checkpoint_round(&conn, idle) {
                    // The next round tries again; the WAL only grows meanwhile.
                    tracing::warn!(path = %inner.path.display(), error = %e, "job store checkpoint failed");
                }
                // Writes fast enough to fill half the threshold between two rounds: the next
                // round comes sooner, so each exclusive phase has less to copy.
                let wal = file_len(&inner.wal_path);
                pause = if wal >= WAL_TRUNCATE_AT / 2 {
                    CHECKPOINT_EVERY / 5
                } else if wal == 0 && idle {
                    // Nothing to do until something is written: idle means idle.
                    CHECKPOINT_IDLE
                } else {
                    CHECKPOINT_EVERY
                };
            }
        });
    // Without the thread SQLite's own checkpoints are off too: fall back to them.
    if spawned.is_err()
        && let Some(inner) = fallback.upgrade()
    {
        let conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = conn.pragma_update(None, "wal_autocheckpoint", 1000) {
            tracing::warn!(path = %inner.path.display(), error = %e, "job store checkpoints are off");
        }
    }
}

/// The exclusive claim of one process on a job file: an OS lock (`flock`) on `path.lock`,
/// which holds the owner's process id. Released when dropped, or when the process dies.
#[derive(Debug)]
struct OwnerLock {
    _file: fs::File,
}

impl OwnerLock {
    fn take(db: &Path) -> Result<OwnerLock, JobStoreError> {
        use std::io::{Seek, Write};
        let path = companion(db, ".lock");
        let unavailable =
            |what: String| JobStoreError::Unavailable(format!("{}: {what}", db.display()));
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                unavailable(format!("cannot open the lock file {}: {e}", path.display()))
            })?;
        // A store of this same process that is closing (its last tasks finishing) lets go
        // within moments: wait for that, never for another process.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let locked = loop {
            match file.try_lock() {
                Err(fs::TryLockError::WouldBlock)
                    if std::time::Instant::now() < deadline
                        && holder_of(&mut file) == std::process::id().to_string() =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match locked {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = holder_of(&mut file);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("process {holder}")
                };
                return Err(JobStoreError::Unavailable(format!(
                    "{} is in use by {who} (lock file {}): one instance per job file; stop it, \
                     or give this one its own JOB_STORE_PATH",
                    db.display(),
                    path.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(unavailable(format!("cannot lock {}: {e}", path.display())));
            }
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| unavailable(format!("cannot write {}: {e}", path.display())))?;
        Ok(OwnerLock { _file: file })
    }
}

/// What the lock file says: the holder's process id, or nothing.
fn holder_of(file: &mut fs::File) -> String {
    use std::io::{Read, Seek};
    let mut holder = String::new();
    let _ = file
        .rewind()
        .and_then(|()| file.read_to_string(&mut holder));
    holder.trim().to_owned()
}

/// Which file a path names: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    fn of(path: &Path) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).ok().map(|m| FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Elsewhere only the file's existence is checked.
    #[cfg(not(unix))]
    fn of(path: &Path) -> Option<FileIdentity> {
        fs::metadata(path)
            .ok()
            .map(|_| FileIdentity { dev: 0, ino: 0 })
    }
}

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

/// Connection settings, applied on every open.
fn setup(
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
fn vacuum_mode(conn: &mut Connection, path: &Path) -> Result<(), JobStoreError> {
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

/// Creates the schema in a new file; refuses a newer one.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JobStoreError> {
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

/// A rusqlite error as a store error naming the file.
fn db_error(path: &Path, e: rusqlite::Error) -> JobStoreError {
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
fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn parse_cursor(cursor: Option<&str>) -> Result<Option<u64>, JobStoreError> {
    match cursor {
        None => Ok(None),
        Some(c) => c
            .strip_prefix("s")
            .and_then(|n| n.parse::<u64>().ok())
            .map(Some)
            .ok_or(JobStoreError::InvalidCursor),
    }
}

/// The columns a job row is read from, in this order.
const JOB_COLUMNS: &str = "seq, version, body";

/// A row as read, before decoding.
struct Row {
    seq: i64,
    version: i64,
    body: String,
}

impl Row {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            seq: row.get(0)?,
            version: row.get(1)?,
            body: row.get(2)?,
        })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Connection> {
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

    /// Runs `f` with the store's connection held, ahead of the writers waiting for it: they
    /// wait at the gate until `f` is done. For the checkpointer's short exclusive phase.
    fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        self.checkpoint_wanted.store(true, Ordering::SeqCst);
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f();
        drop(conn);
        let _gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        self.checkpoint_wanted.store(false, Ordering::SeqCst);
        self.gate_open.notify_all();
        out
    }

    fn err(&self, e: rusqlite::Error) -> JobStoreError {
        db_error(&self.path, e)
    }

    /// Runs `f` in one transaction and commits it, if the path still names the file the
    /// store opened (see [`Inner::lost`]).
    fn transaction<T>(
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

    /// Fails once the path no longer names the file this store opened: removed, renamed
    /// away, or replaced by another file. Logged once, at error level; every call fails
    /// from then on (reopening is a restart's job: the process holding the old file must
    /// not write on as if nothing happened).
    fn lost(&self) -> Result<(), JobStoreError> {
        let mut broken = self.broken.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = broken.as_ref() {
            return Err(JobStoreError::Unavailable(reason.clone()));
        }
        let now = FileIdentity::of(&self.path);
        if now == Some(self.identity) {
            return Ok(());
        }
        let reason = format!(
            "{}: the job file was {} while the service ran; nothing more is written (restart \
             to open the file at that path)",
            self.path.display(),
            if now.is_none() {
                "removed"
            } else {
                "replaced by another file"
            }
        );
        tracing::error!(path = %self.path.display(), "{reason}");
        *broken = Some(reason.clone());
        Err(JobStoreError::Unavailable(reason))
    }

    /// Whether the store can take a write now: the path still names its file, the file and
    /// its WAL can be opened for writing, and a write (of the schema version, one page)
    /// commits.
    fn check(&self) -> Result<(), JobStoreError> {
        self.lost()?;
        // The file itself, which the WAL's checkpoints write (an immutable or read-only file
        // takes WAL commits, but no checkpoint: the WAL would grow without end).
        for path in [&self.path, &self.wal_path] {
            if let Err(e) = fs::OpenOptions::new().write(true).open(path)
                && !(path == &self.wal_path && e.kind() == std::io::ErrorKind::NotFound)
            {
                return Err(JobStoreError::Unavailable(format!(
                    "{} cannot be written: {e}",
                    path.display()
                )));
            }
        }
        self.write(|tx| {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| self.err(e))
        })
    }

    /// One round of the background checkpointer (see [`spawn_checkpointer`]).
    fn checkpoint_round(&self, conn: &Connection, idle: bool) -> rusqlite::Result<()> {
        if idle && file_len(&self.wal_path) == 0 {
            return Ok(());
        }
        let passive = checkpoint(conn, Checkpoint::Passive)?;
        if passive.log == 0 || !idle && file_len(&self.wal_path) < WAL_TRUNCATE_AT {
            return Ok(());
        }
        // With the store's connection held no transaction of this process is open, so
        // the checkpoint reaches the end of the log; the passive one just before copied all
        // but what was written meanwhile, so the writers wait only for that and the fsyncs.
        let report = self.exclusive(|| checkpoint(conn, Checkpoint::Truncate))?;
        if report.busy {
            tracing::warn!(
                path = %self.path.display(),
                log_frames = report.log,
                copied_frames = report.copied,
                "job store checkpoint blocked by another connection to the file"
            );
        }
        Ok(())
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, JobStoreError>,
    ) -> Result<T, JobStoreError> {
        self.transaction(TransactionBehavior::Immediate, f)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, JobStoreError>,
    ) -> Result<T, JobStoreError> {
        self.transaction(TransactionBehavior::Deferred, f)
    }

    /// Decodes a row's job; `seq` and `version` come from their columns.
    fn decode(&self, row: Row) -> Result<Job, JobStoreError> {
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
    fn select_one(
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

    fn by_id(&self, tx: &Transaction<'_>, id: &JobId) -> Result<Option<Job>, JobStoreError> {
        self.select_one(tx, "jobs WHERE id = ?1", params![id.as_str()])
    }

    fn by_key(&self, tx: &Transaction<'_>, key: &ScopedKey) -> Result<Option<Job>, JobStoreError> {
        self.select_one(
            tx,
            "jobs WHERE key_scope = ?1 AND key = ?2",
            params![key.scope, key.key],
        )
    }

    /// Rewrites the row of `job.seq` — body and indexed columns — if its version is still
    /// `expected_version`; `false` if it is not.
    fn write_row(
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
                   lease_until_ms = ?5, finished_ms = ?6, created_ms = ?7, body = ?8
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
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    fn submit(&self, new: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError> {
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
                    new.idempotency.as_ref().map(|k| k.scope.as_str()),
                    new.idempotency.as_ref().map(|k| k.key.as_str()),
                ])
            })
            .map_err(|e| self.err(e))?;
            let seq = u64::try_from(tx.last_insert_rowid()).map_err(|_| {
                JobStoreError::Corrupt(format!("{}: negative seq", self.path.display()))
            })?;
            let job = new.into_job(seq);
            self.write_row(tx, &job, 0)?;
            Ok(Submitted::Created(job))
        })
    }

    fn claim(
        &self,
        owner: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<Option<Job>, JobStoreError> {
        self.write(|tx| {
            let Some(mut job) = self.select_one(tx, CLAIM_FROM, params![to_sql(now_ms)])? else {
                return Ok(None);
            };
            if !is_runnable(&job, now_ms) {
                // The columns said runnable, the body does not: they disagree.
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

    fn renew(
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

    fn update(&self, mut job: Job) -> Result<Job, JobStoreError> {
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
                (Some(scope), Some(key)) => Some(ScopedKey { scope, key }),
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

    fn list(
        &self,
        status: Option<JobStatus>,
        limit: usize,
        before: u64,
    ) -> Result<JobPage, JobStoreError> {
        let limit = limit.max(1);
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
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
            let mut jobs = rows
                .into_iter()
                .map(|r| self.decode(r))
                .collect::<Result<Vec<Job>, _>>()?;
            let next_cursor = if jobs.len() > limit {
                jobs.truncate(limit);
                jobs.last().map(|j| format!("s{}", j.seq))
            } else {
                None
            };
            Ok(JobPage { jobs, next_cursor })
        })
    }

    /// Deletes in batches of [`PURGE_BATCH`] jobs, one transaction each (other calls run
    /// between them), gives the freed pages back to the file system after each, and keeps
    /// the WAL short meanwhile: a purge of a week of jobs is never one huge transaction.
    fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        let mut total = 0;
        loop {
            let deleted = self.write(|tx| {
                let deleted = tx
                    .prepare_cached(&format!(
                        "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_finished
                           WHERE finished_ms < ?1 AND status IN {TERMINAL} LIMIT ?2)"
                    ))
                    .and_then(|mut s| s.execute(params![to_sql(finished_before_ms), PURGE_BATCH as i64]))
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

    fn counts(&self) -> Result<JobCounts, JobStoreError> {
        self.read(|tx| {
            let mut counts = JobCounts {
                by_status: JobStatus::ALL.into_iter().map(|s| (s, 0)).collect(),
                oldest_queued_ms: [None; 4],
            };
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

fn priority_index(job: &Job) -> i64 {
    // 0..=3, always fits.
    i64::try_from(job.priority.index()).unwrap_or(0)
}

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

    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<Option<Job>, JobStoreError> {
        let owner = owner.to_owned();
        self.blocking(move |s| s.claim(&owner, lease, now_ms)).await
    }

    async fn renew(
        &self,
        id: &JobId,
        owner: &str,
        lease: Duration,
        now_ms: u64,
    ) -> Result<bool, JobStoreError> {
        let (id, owner) = (id.clone(), owner.to_owned());
        self.blocking(move |s| s.renew(&id, &owner, lease, now_ms))
            .await
    }

    async fn update(&self, job: Job) -> Result<Job, JobStoreError> {
        self.blocking(move |s| s.update(job)).await
    }

    async fn list(
        &self,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, JobStoreError> {
        let before = parse_cursor(cursor)?.unwrap_or(u64::MAX);
        self.blocking(move |s| s.list(status, limit, before)).await
    }

    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        self.blocking(move |s| s.purge(finished_before_ms)).await
    }

    async fn counts(&self) -> Result<JobCounts, JobStoreError> {
        self.blocking(|s| s.counts()).await
    }

    async fn next_due(&self, _now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.blocking(|s| {
            s.read(|tx| {
                let due: Option<i64> = tx
                    .prepare_cached(NEXT_DUE)
                    .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
                    .map_err(|e| s.err(e))?;
                Ok(due.map(|t| u64::try_from(t).unwrap_or(0)))
            })
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn plan(conn: &Connection, sql: &str) -> String {
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
        let age = plan(&conn, QUEUED_AGE);
        assert!(age.contains("jobs_queued_age"), "{age}");
        assert!(!age.contains("TEMP B-TREE"), "{age}");
    }

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

    #[test]
    fn cursors_are_s_and_a_seq() {
        assert_eq!(parse_cursor(None), Ok(None));
        assert_eq!(parse_cursor(Some("s42")), Ok(Some(42)));
        for bad in ["", "s", "42", "sx", "t1", "s-1"] {
            assert_eq!(
                parse_cursor(Some(bad)),
                Err(JobStoreError::InvalidCursor),
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod wal_cost {
    use super::*;

    /// A WAL frame: a page and its 24-byte header.
    const FRAME: u64 = 4096 + 24;

    /// The pages each step of a job writes to the WAL (see "What a write costs" in the crate
    /// docs): a guard against a schema or query change that makes every job cost more.
    #[test]
    fn a_job_step_writes_a_handful_of_pages() {
        let dir =
            std::env::temp_dir().join(format!("jobstore-sqlite-walcost-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteJobStore::open(dir.join("jobs.db")).unwrap();
        let inner = &store.inner;
        let wal = || file_len(&inner.wal_path);
        let limits = QueueLimits {
            max_queued: 1_000_000,
        };
        let keyed = |n: u64| {
            let mut j = ports::job_contract::new_job(n, domain::Priority::Normal, 1_000 + n);
            j.idempotency = Some(ScopedKey {
                scope: "s".into(),
                key: format!("k{n}"),
            });
            j
        };
        for n in 0..50 {
            inner.submit(keyed(n), limits).unwrap();
        }
        // A background truncation between two readings would spoil one: try again then.
        for n in 100..103 {
            let mut pages = Vec::new();
            let mut step = |f: &mut dyn FnMut()| {
                let before = wal();
                f();
                pages.push(wal().checked_sub(before).map(|b| b / FRAME));
            };
            let mut job = None;
            step(&mut || {
                inner.submit(keyed(n), limits).unwrap();
            });
            step(&mut || job = inner.claim("w", Duration::from_secs(30), 900_000).unwrap());
            let mut claimed = job.clone().unwrap();
            step(&mut || {
                inner
                    .renew(&claimed.id, "w", Duration::from_secs(30), 900_001)
                    .unwrap();
            });
            claimed.status = JobStatus::Processing;
            claimed.lease = None;
            claimed.next_run_ms = 4_000;
            let mut processing = None;
            step(&mut || processing = Some(inner.update(claimed.clone()).unwrap()));
            let mut done = processing.unwrap();
            done.status = JobStatus::Done;
            done.finished_ms = Some(5_000);
            step(&mut || {
                inner.update(done.clone()).unwrap();
            });
            let Some(pages) = pages.into_iter().collect::<Option<Vec<u64>>>() else {
                continue;
            };
            if pages.contains(&0) {
                continue;
            }
            // submit, claim, renew, update, finish
            let most = [8, 5, 5, 5, 5];
            for (i, (p, m)) in pages.iter().zip(most).enumerate() {
                assert!(p <= &m, "step {i} wrote {p} pages (at most {m}): {pages:?}");
            }
            drop(store);
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        panic!("no clean reading in three tries");
    }
}
