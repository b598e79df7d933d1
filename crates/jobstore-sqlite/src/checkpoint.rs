//! WAL upkeep: the background checkpointer, on a connection of its own, that keeps the
//! write-ahead log short (see "Operated for days" in the crate docs), and the store's short
//! exclusive phase it truncates the log in.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use rusqlite::Connection;

use crate::{CHECKPOINT_EVERY, CHECKPOINT_IDLE, Inner, WAL_TRUNCATE_AT, file_len};

/// The checkpoint modes the store uses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Checkpoint {
    /// Copies what no reader still needs; never waits for, or blocks, a writer.
    Passive,
    /// Copies everything, then empties the WAL file (waits for readers and writers).
    Truncate,
}

/// What a checkpoint reported: whether it was blocked, frames in the WAL, frames copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointReport {
    busy: bool,
    log: i64,
    copied: i64,
}

pub(crate) fn checkpoint(
    conn: &Connection,
    mode: Checkpoint,
) -> rusqlite::Result<CheckpointReport> {
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
pub(crate) fn spawn_checkpointer(conn: Connection, store: std::sync::Weak<Inner>) {
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

impl Inner {
    /// Runs `f` with the store's connection held, ahead of the writers waiting for it: they
    /// wait at the gate until `f` is done. For the checkpointer's short exclusive phase.
    pub(crate) fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        self.checkpoint_wanted.store(true, Ordering::SeqCst);
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f();
        drop(conn);
        let _gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        self.checkpoint_wanted.store(false, Ordering::SeqCst);
        self.gate_open.notify_all();
        out
    }

    /// One round of the background checkpointer (see [`spawn_checkpointer`]).
    pub(crate) fn checkpoint_round(&self, conn: &Connection, idle: bool) -> rusqlite::Result<()> {
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
}

#[cfg(test)]
mod wal_cost {
    use std::time::Duration;

    use ports::{JobStatus, QueueLimits, ScopedKey};

    use crate::{SqliteJobStore, file_len};

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
                tenant: domain::Tenant::parse("s").unwrap(),
                key: format!("k{n}"),
            });
            j
        };
        for n in 0..50 {
            inner.submit(keyed(n), limits).unwrap();
        }
        // A background truncation between two readings would spoil one: such a round is
        // skipped. A row that does not fit its leaf page splits it (a few pages more, every
        // few submits), so each step's figure is its median over the clean rounds.
        let mut rounds: Vec<Vec<u64>> = Vec::new();
        for n in 100..109 {
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
            rounds.push(pages);
        }
        assert!(rounds.len() >= 5, "too few clean rounds: {rounds:?}");
        // submit, claim, renew, update, finish
        let most = [9, 6, 5, 5, 5];
        for (i, m) in most.into_iter().enumerate() {
            let mut step: Vec<u64> = rounds.iter().map(|r| r[i]).collect();
            step.sort_unstable();
            let median = step[step.len() / 2];
            assert!(
                median <= m,
                "step {i} wrote {median} pages (at most {m}): {rounds:?}"
            );
        }
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
