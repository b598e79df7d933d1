//! How the SQLite store behaves when operated: a bounded WAL under a steady write load, a
//! file that shrinks back after a purge, one process per file, and a file that went away.

mod common;

use ports::LeaseTerms;
use std::sync::Arc;
use std::time::Duration;

use common::TempDir;
use jobstore_sqlite::SqliteJobStore;
use ports::job_contract::new_job;
use ports::{JobStatus, JobStore, QueueLimits, Submitted};

const T0: u64 = 1_800_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const ROOMY: QueueLimits = QueueLimits {
    max_queued: 1_000_000,
};

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Runs `jobs` jobs through submit → claim → processing → claim → done, on `tasks` tasks
/// writing at once; the largest WAL seen after each job.
async fn churn(store: Arc<SqliteJobStore>, jobs: u64, tasks: u64) -> u64 {
    let wal = {
        let mut p = store.path().as_os_str().to_owned();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = Arc::clone(&store);
        let wal = wal.clone();
        handles.push(tokio::spawn(async move {
            let mut max = 0;
            for n in (t..jobs).step_by(tasks as usize) {
                let now = T0 + n;
                let Submitted::Created(_) = store
                    .submit(new_job(n, domain::Priority::Normal, now), ROOMY)
                    .await
                    .unwrap()
                else {
                    panic!("a new job")
                };
                let owner = format!("w{t}");
                // Two steps per submit: queued → processing → done, whichever job is next.
                for _ in 0..2 {
                    let Some(mut job) = store
                        .claim(LeaseTerms::new(&owner, LEASE, now))
                        .await
                        .unwrap()
                    else {
                        break;
                    };
                    job.status = if job.status == JobStatus::Queued {
                        JobStatus::Processing
                    } else {
                        job.finished_ms = Some(now);
                        JobStatus::Done
                    };
                    job.lease = None;
                    store.update(job).await.unwrap();
                }
                max = max.max(size(&wal));
            }
            max
        }));
    }
    let mut max = 0;
    for h in handles {
        max = max.max(h.await.unwrap());
    }
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_a_steady_write_load() {
    let dir = TempDir::new();
    let store = Arc::new(SqliteJobStore::open(dir.path().join("jobs.db")).unwrap());
    // 6000 jobs: before the fix the WAL grew ~90 KB a job here (1.8 GB after 20 000).
    let max = churn(Arc::clone(&store), 6_000, 4).await;
    // The limit, and what is written while a truncation waits for a background checkpoint
    // in progress; before the fix the same run reached 1.8 GB.
    assert!(
        max <= 2 * jobstore_sqlite::WAL_HARD_LIMIT,
        "the WAL reached {max} bytes"
    );
    // Idle, the WAL is emptied.
    let wal = {
        let mut p = store.path().as_os_str().to_owned();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    let emptied = tokio::time::timeout(Duration::from_secs(10), async {
        while size(&wal) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        emptied.is_ok(),
        "an idle store's WAL is truncated: {} bytes",
        size(&wal)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_shrinks_after_a_purge() {
    let dir = TempDir::new();
    let path = dir.path().join("jobs.db");
    let store = Arc::new(SqliteJobStore::open(&path).unwrap());
    churn(Arc::clone(&store), 3_000, 2).await;
    let full = size(&path);
    let done = store.counts().await.unwrap().by_status[&JobStatus::Done];
    assert!(done > 2_900, "{done} done");
    assert_eq!(store.purge(u64::MAX).await.unwrap(), done);
    // The file shrinks when the freed pages' checkpoint reaches it (the next idle round).
    let shrunk = tokio::time::timeout(Duration::from_secs(10), async {
        while size(&path) * 4 >= full {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        shrunk.is_ok(),
        "the freed pages go back to the file system: {full} bytes before the purge, {} after",
        size(&path)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_file_is_refused_naming_the_holder() {
    let dir = TempDir::new();
    let path = dir.path().join("jobs.db");
    let first = SqliteJobStore::open(&path).unwrap();
    let err = SqliteJobStore::open(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "names the holder: {err}"
    );
    drop(first);
    SqliteJobStore::open(&path).expect("free again once the first is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_or_replaced_file_makes_the_store_unavailable() {
    for replace in [false, true] {
        let dir = TempDir::new();
        let path = dir.path().join("jobs.db");
        let store = SqliteJobStore::open(&path).unwrap();
        store
            .submit(new_job(1, domain::Priority::Normal, T0), ROOMY)
            .await
            .unwrap();
        store.check().await.expect("healthy");
        std::fs::remove_file(&path).unwrap();
        if replace {
            std::fs::write(&path, b"").unwrap();
        }
        let err = store.check().await.unwrap_err().to_string();
        let what = if replace { "replaced" } else { "removed" };
        assert!(err.contains(what), "{err}");
        // Nothing is acknowledged that is not in the file at the path.
        let submit = store
            .submit(new_job(2, domain::Priority::Normal, T0), ROOMY)
            .await;
        assert!(
            matches!(submit, Err(ports::JobStoreError::Unavailable(_))),
            "{submit:?}"
        );
        assert!(store.get(&ports::job_contract::job_id(1)).await.is_err());
    }
}

/// Makes `path` unwritable for this process: immutable (`chattr +i`) where it can (root on a
/// file system with attributes, where a mode would not stop root), else mode 0444. Undone
/// when the guard drops.
fn make_unwritable(path: &std::path::Path) -> impl Drop {
    struct Undo(std::path::PathBuf, bool);
    impl Drop for Undo {
        fn drop(&mut self) {
            if self.1 {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.0)
                    .status();
            } else if let Ok(meta) = std::fs::metadata(&self.0) {
                let mut perms = meta.permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perms.set_readonly(false);
                let _ = std::fs::set_permissions(&self.0, perms);
            }
        }
    }
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        let mut perms = std::fs::metadata(path).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(path, perms).unwrap();
    }
    let undo = Undo(path.to_path_buf(), immutable);
    assert!(
        std::fs::OpenOptions::new().write(true).open(path).is_err(),
        "cannot make {} unwritable here: `chattr +i` failed and mode 0444 does not stop this \
         user (root); run on a file system with attributes (ext4), with e2fsprogs installed \
         (apt-get install -y e2fsprogs)",
        path.display()
    );
    undo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_written_is_refused_at_open() {
    let dir = TempDir::new();
    let path = dir.path().join("jobs.db");
    drop(SqliteJobStore::open(&path).unwrap());
    let _undo = make_unwritable(&path);
    let err = SqliteJobStore::open(&path).unwrap_err();
    assert!(
        matches!(err, ports::JobStoreError::Unavailable(_)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_became_unwritable_fails_the_check() {
    let dir = TempDir::new();
    let path = dir.path().join("jobs.db");
    let store = SqliteJobStore::open(&path).unwrap();
    store.check().await.expect("healthy");
    let undo = make_unwritable(&path);
    let err = store.check().await.unwrap_err().to_string();
    assert!(err.contains("cannot be written"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    drop(undo);
    store.check().await.expect("writable again");
}
