//! What the SQLite store keeps across a close, a reopen and a SIGKILL in the middle of writes.

mod common;

use ports::{LeaseTerms, ListQuery};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use jobstore_sqlite::{SCHEMA_VERSION, SqliteJobStore};
use ports::job_contract::new_job;
use ports::{
    Job, JobId, JobStatus, JobStore, JobStoreError, NewJob, QueueLimits, ScopedKey, Submitted,
};

const T0: u64 = 1_800_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const ROOMY: QueueLimits = QueueLimits {
    max_queued: 1_000_000,
};
/// Set in the child process: the database file it writes to.
const CHILD_DB: &str = "JOBSTORE_SQLITE_TEST_CHILD_DB";

fn key(n: u64) -> ScopedKey {
    ScopedKey {
        tenant: domain::Tenant::parse("caller").unwrap(),
        key: format!("k{n}"),
    }
}

fn keyed_job(n: u64, now_ms: u64) -> NewJob {
    let priority = domain::Priority::ALL[(n % 4) as usize];
    let mut job = new_job(n, priority, now_ms);
    job.idempotency = Some(key(n));
    job
}

async fn create(store: &dyn JobStore, job: NewJob) -> Job {
    match store.submit(job, ROOMY).await.expect("submit") {
        Submitted::Created(job) => job,
        Submitted::Existing(job) => panic!("expected a new job, got existing {}", job.id),
    }
}

/// Every job, newest first, paging with a small page size.
async fn list_all(store: &dyn JobStore) -> Vec<Job> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list(ListQuery::new(None, 7, cursor.as_deref()))
            .await
            .expect("list");
        all.extend(page.jobs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_keys_and_versions_survive_a_reopen() {
    let dir = TempDir::new();
    // The parent directories are created.
    let path = dir.path().join("nested/deeper/jobs.db");
    let before: Vec<Job> = {
        let store = SqliteJobStore::open(&path).expect("open");
        assert_eq!(store.path(), path);
        assert_eq!(store.kind(), "sqlite");
        for n in 1..=10 {
            create(&store, keyed_job(n, T0 + n)).await;
        }
        // A claim and an update move versions; a terminal job gets a finish time.
        let mut claimed = store
            .claim(LeaseTerms::new("w1", LEASE, T0 + 100))
            .await
            .unwrap()
            .unwrap();
        claimed.status = JobStatus::Processing;
        claimed.polls = 3;
        claimed.next_run_ms = T0 + 5_000;
        let processing = store.update(claimed).await.unwrap();
        assert_eq!(processing.version, 3);
        let mut done = store
            .claim(LeaseTerms::new("w1", LEASE, T0 + 100))
            .await
            .unwrap()
            .unwrap();
        done.status = JobStatus::Done;
        done.lease = None;
        done.finished_ms = Some(T0 + 200);
        done.result_url = Some("https://example.com/v.mp4".into());
        store.update(done).await.unwrap();
        list_all(&store).await
    };
    assert_eq!(before.len(), 10);

    let store = SqliteJobStore::open(&path).expect("reopen");
    let after = list_all(&store).await;
    assert_eq!(after, before, "every job comes back whole");
    for job in &before {
        assert_eq!(store.get(&job.id).await.unwrap().as_ref(), Some(job));
        let by_key = store.get_by_key(job.idempotency.as_ref().unwrap()).await;
        assert_eq!(by_key.unwrap().as_ref(), Some(job), "the key survives");
    }
    // A replay of a stored key is still the existing job.
    match store.submit(keyed_job(1, T0 + 999), ROOMY).await.unwrap() {
        Submitted::Existing(job) => assert_eq!(job.id, new_job(1, Default::default(), 0).id),
        other => panic!("expected the existing job, got {other:?}"),
    }
    // The lease held across the reopen: the processing job is deferred, the others queued.
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.by_status[&JobStatus::Queued], 8);
    assert_eq!(counts.by_status[&JobStatus::Processing], 1);
    assert_eq!(counts.by_status[&JobStatus::Done], 1);
    // A stale version still conflicts after the reopen.
    let mut stale = after
        .iter()
        .find(|j| j.status == JobStatus::Processing)
        .unwrap()
        .clone();
    stale.version -= 1;
    assert!(matches!(
        store.update(stale).await.unwrap_err(),
        JobStoreError::Conflict { .. }
    ));
    // Seqs go on increasing and are never reused, not even after a purge of the newest.
    let max_seq = before.iter().map(|j| j.seq).max().unwrap();
    assert_eq!(store.purge(u64::MAX).await.unwrap(), 1);
    let next = create(&store, keyed_job(11, T0 + 1_000)).await;
    assert!(next.seq > max_seq, "{} after {max_seq}", next.seq);
    drop(store);
    let store = SqliteJobStore::open(&path).expect("reopen again");
    let last = create(&store, keyed_job(12, T0 + 1_001)).await;
    assert!(last.seq > next.seq);
}

/// A file of schema 1 (before callbacks) opens as schema 2: its jobs read back as they were,
/// and one of them can then carry a pending callback that is claimed and kept from purge.
#[tokio::test]
async fn a_schema_1_file_is_migrated_in_place() {
    let dir = TempDir::new();
    let path = dir.path().join("jobs.db");
    let store = SqliteJobStore::open(&path).expect("create");
    let old = create(&store, keyed_job(1, T0)).await;
    drop(store);
    {
        // What a build before callbacks left: no column, no index, user_version 1.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(TO_SCHEMA_2).unwrap();
        conn.execute_batch(
            "DROP INDEX jobs_callbacks; ALTER TABLE jobs DROP COLUMN callback_due_ms;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = SqliteJobStore::open(&path).expect("a schema 1 file opens");
    let version: i64 = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version, SCHEMA_VERSION);
    let mut job = store.get(&old.id).await.unwrap().expect("kept");
    assert_eq!(job, old);
    job.status = JobStatus::Done;
    job.finished_ms = Some(T0 + 1);
    job.callback = Some(ports::Callback::new(
        ports::CallbackEvent::TalkDone,
        "msg_1".into(),
        T0 + 1,
    ));
    store.update(job).await.unwrap();
    assert_eq!(
        store.purge(u64::MAX).await.unwrap(),
        0,
        "its callback is pending"
    );
    let claimed = store
        .claim_callback(LeaseTerms::new("cb", LEASE, T0 + 2))
        .await
        .unwrap()
        .expect("due");
    assert_eq!(claimed.id, old.id);
}

/// What a build before the fair order left: no `rank`, the claim index on `(prio, seq)`, no
/// fair tables, user_version 2.
const TO_SCHEMA_2: &str = "DROP INDEX jobs_claim; ALTER TABLE jobs DROP COLUMN rank;
  DROP TABLE fair_clock; DROP TABLE fair_last; DROP TABLE credit_usage; DROP TABLE credit_holds; DROP TABLE upload_cache;
  CREATE INDEX jobs_claim ON jobs (prio DESC, seq)
    WHERE status IN ('queued','creating','processing');
  PRAGMA user_version = 2;";

#[tokio::test]
async fn a_schema_2_file_is_migrated_and_its_jobs_are_claimed_first() {
    let dir = TempDir::new();
    let path = dir.path().join("jobs.db");
    let store = SqliteJobStore::open(&path).expect("create");
    let old = create(&store, keyed_job(1, T0)).await;
    drop(store);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(TO_SCHEMA_2).unwrap();
        // The body as such a build wrote it: no rank.
        let body: String = conn
            .query_row("SELECT body FROM jobs", [], |r| r.get(0))
            .unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json.as_object_mut().unwrap().remove("rank");
        conn.execute("UPDATE jobs SET body = ?1", [json.to_string()])
            .unwrap();
    }
    let store = SqliteJobStore::open(&path).expect("a schema 2 file opens");
    let version: i64 = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version, SCHEMA_VERSION);
    let kept = store.get(&old.id).await.unwrap().expect("kept");
    assert_eq!(kept.rank, 0, "ranked before every job submitted since");
    // A job submitted after the upgrade comes after the one from before.
    let mut same_priority = keyed_job(5, T0 + 1);
    same_priority.priority = old.priority;
    create(&store, same_priority).await;
    let lease = |now| LeaseTerms::new("w", LEASE, now);
    let first = store
        .claim(lease(T0 + 2))
        .await
        .unwrap()
        .expect("claimable");
    assert_eq!(first.id, old.id);
    let second = store
        .claim(lease(T0 + 2))
        .await
        .unwrap()
        .expect("claimable");
    assert!(second.rank > 0);
}

#[test]
fn a_newer_schema_or_a_foreign_file_is_refused_as_corrupt() {
    let dir = TempDir::new();
    let path = dir.path().join("jobs.db");
    drop(SqliteJobStore::open(&path).expect("create"));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = SqliteJobStore::open(&path).unwrap_err();
    assert!(matches!(err, JobStoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("jobs.db"), "names the file: {err}");

    let foreign = dir.path().join("not-a-db");
    std::fs::write(&foreign, vec![b'x'; 8192]).unwrap();
    let err = SqliteJobStore::open(&foreign).unwrap_err();
    assert!(matches!(err, JobStoreError::Corrupt(_)), "{err:?}");
}

#[test]
fn an_unopenable_path_is_unavailable_and_named() {
    let dir = TempDir::new();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    // A directory cannot be created under a file.
    let err = SqliteJobStore::open(file.join("jobs.db")).unwrap_err();
    assert!(matches!(err, JobStoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("a-file"), "{err}");
}

/// The child side of `a_sigkill_mid_write_loses_no_acknowledged_job`: with `CHILD_DB` set,
/// submits (and updates every third) job as fast as it can, reporting each one on stdout
/// after the store returned, until it is killed. Without it, does nothing.
#[tokio::test(flavor = "current_thread")]
async fn child_writer() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let store = SqliteJobStore::open(&path).expect("child: open");
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    // A cap, so that an orphaned child ends on its own.
    for n in 1..=200_000u64 {
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
        let job = create(&store, keyed_job(n, T0 + n)).await;
        writeln!(out, "SUBMITTED {}", job.id).unwrap();
        if n % 3 == 0 {
            let mut job = job;
            job.status = JobStatus::Processing;
            job.polls = 1;
            job.updated_ms = T0 + n + 1;
            let written = store.update(job).await.expect("child: update");
            writeln!(out, "UPDATED {} {}", written.id, written.version).unwrap();
        }
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_write_loses_no_acknowledged_job() {
    let dir = TempDir::new();
    let path = dir.path().join("jobs.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut submitted: Vec<JobId> = Vec::new();
    let mut updated: HashMap<JobId, u64> = HashMap::new();
    // libtest may print `test child_writer ... ` before the child's first line.
    let mut record = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [.., "SUBMITTED", id] => submitted.push(JobId::parse(id).unwrap()),
            [.., "UPDATED", id, v] => {
                updated.insert(JobId::parse(id).unwrap(), v.parse().unwrap());
            }
            _ => {} // libtest's own lines
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    // Kill it once it has written a good number of jobs (it goes on writing meanwhile).
    while seen < 300 && Instant::now() < deadline {
        let Some(line) = lines.next() else { break };
        let line = line.unwrap();
        seen += usize::from(line.contains("SUBMITTED "));
        record(&line);
    }
    child.kill().expect("SIGKILL the child");
    // What it reported before dying is still in the pipe.
    let mut after_kill = 0;
    for line in lines {
        let Ok(line) = line else { break };
        after_kill += 1;
        record(&line);
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child was killed, not finished: {status:?}"
    );
    assert!(
        submitted.len() >= 300,
        "the child wrote {} jobs in 20 s",
        submitted.len()
    );

    let store = SqliteJobStore::open(&path).expect("the file opens after the kill");
    for id in &submitted {
        let job = store
            .get(id)
            .await
            .expect("readable")
            .unwrap_or_else(|| panic!("acknowledged job {id} is lost"));
        if let Some(version) = updated.get(id) {
            assert_eq!(job.version, *version, "{id}'s acknowledged update is kept");
            assert_eq!(job.status, JobStatus::Processing);
        }
        let by_key = store.get_by_key(job.idempotency.as_ref().unwrap()).await;
        assert_eq!(by_key.unwrap().map(|j| j.id), Some(id.clone()));
    }
    let all = list_all(&store).await;
    // At most the one submit in flight at the kill is stored beyond those reported.
    assert!(
        all.len() >= submitted.len() && all.len() <= submitted.len() + 1,
        "{} stored, {} reported; newest stored {:?}, last reported {:?}, after kill {after_kill}",
        all.len(),
        submitted.len(),
        all.iter()
            .take(3)
            .map(|j| (&j.id, j.seq, j.version))
            .collect::<Vec<_>>(),
        submitted.last(),
    );
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.by_status.values().sum::<u64>(), all.len() as u64);
    // The store takes writes again.
    create(&store, keyed_job(1_000_000, T0)).await;
    let integrity: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(store);
    assert!(Path::new(&path).exists());
}
