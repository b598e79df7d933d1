//! The `JobStore` contract: the behaviour every job-store adapter must show, written once and
//! run against each adapter (memory, SQLite, Redis).
//!
//! Use it from an adapter's integration tests with a factory that returns a fresh, empty,
//! independent store on every call:
//!
//! ```text
//! async fn new_store() -> std::sync::Arc<dyn ports::JobStore> {
//!     std::sync::Arc::new(jobstore_memory::MemoryJobStore::new())
//! }
//! ports::job_store_contract_tests!(new_store);
//! ```
//!
//! The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency.
//! A store whose directory or server must live as long as it does is wrapped in
//! [`Guarded`].
//! Time is passed to the store as numbers, so lease expiry is tested without sleeping.

use crate::jobs::{LeaseTerms, ListQuery};
use std::any::Any;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use domain::{Priority, Script, TalkId, TalkRequest, Tenant};

use async_trait::async_trait;

use crate::callbacks::{Callback, CallbackAttempt, CallbackEvent, CallbackStatus};
use crate::jobs::{
    Attempt, CreateSent, FailureCode, Job, JobCounts, JobFailure, JobId, JobPage, JobStatus,
    JobStore, JobStoreError, Lease, NewJob, QueueLimits, ScopedKey, Submitted,
};

/// A store that keeps something alive for as long as it lives: the temporary directory of
/// its file, the test server it talks to. What a factory returns when the store's
/// resources must go when the test drops the store. Every method is the inner store's.
pub struct Guarded<S> {
    pub(crate) store: S,
    _guard: Box<dyn Any + Send + Sync>,
}

impl<S: JobStore> Guarded<S> {
    /// `store`, keeping `guard` alive until it is dropped.
    pub fn new(store: S, guard: impl Any + Send + Sync) -> Self {
        Guarded {
            store,
            _guard: Box::new(guard),
        }
    }
}

#[async_trait]
impl<S: JobStore> JobStore for Guarded<S> {
    async fn submit(&self, job: NewJob, limits: QueueLimits) -> Result<Submitted, JobStoreError> {
        self.store.submit(job, limits).await
    }
    async fn get(&self, id: &JobId) -> Result<Option<Job>, JobStoreError> {
        self.store.get(id).await
    }
    async fn get_by_key(&self, key: &ScopedKey) -> Result<Option<Job>, JobStoreError> {
        self.store.get_by_key(key).await
    }
    async fn claim(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        self.store.claim(terms).await
    }
    async fn renew(&self, id: &JobId, terms: LeaseTerms<'_>) -> Result<bool, JobStoreError> {
        self.store.renew(id, terms).await
    }
    async fn update(&self, job: Job) -> Result<Job, JobStoreError> {
        self.store.update(job).await
    }
    async fn list(&self, query: ListQuery<'_>) -> Result<JobPage, JobStoreError> {
        self.store.list(query).await
    }
    async fn next_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.store.next_due(now_ms).await
    }
    async fn claim_callback(&self, terms: LeaseTerms<'_>) -> Result<Option<Job>, JobStoreError> {
        self.store.claim_callback(terms).await
    }
    async fn next_callback_due(&self, now_ms: u64) -> Result<Option<u64>, JobStoreError> {
        self.store.next_callback_due(now_ms).await
    }

    async fn check(&self) -> Result<(), JobStoreError> {
        self.store.check().await
    }

    async fn woken(&self) {
        self.store.woken().await;
    }

    fn lost_data_at(&self) -> Option<u64> {
        self.store.lost_data_at()
    }

    async fn purge(&self, finished_before_ms: u64) -> Result<u64, JobStoreError> {
        self.store.purge(finished_before_ms).await
    }
    async fn counts(&self) -> Result<JobCounts, JobStoreError> {
        self.store.counts().await
    }
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
}

/// A start time far from zero, so that `now - x` never underflows in the tests.
const T0: u64 = 1_800_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const ROOMY: QueueLimits = QueueLimits { max_queued: 10_000 };

/// A fresh job id (distinct per `n`).
pub fn job_id(n: u64) -> JobId {
    let text = format!("{n:0>22}");
    JobId::parse(&format!("job_{text}")).expect("valid id")
}

/// A valid talk request.
pub fn request(n: u64) -> TalkRequest {
    TalkRequest::new(
        Some(format!("https://example.com/face-{n}.png")),
        Script::Audio {
            audio_url: format!("https://example.com/voice-{n}.mp3"),
        },
    )
    .expect("valid request")
}

/// A queued job `n` of `priority`, without a key.
pub fn new_job(n: u64, priority: Priority, now_ms: u64) -> NewJob {
    NewJob {
        id: job_id(n),
        priority,
        tenant: Tenant::public(),
        share: domain::Share::default(),
        request: request(n),
        callback_url: None,
        idempotency: None,
        fingerprint: format!("fp-{n}"),
        webhook_token: None,
        now_ms,
        lease: None,
        status: JobStatus::Queued,
        trace: None,
    }
}

fn key(tenant: &str, key: &str) -> ScopedKey {
    ScopedKey {
        tenant: Tenant::parse(tenant).expect("a valid tenant"),
        key: key.to_owned(),
    }
}

async fn created(store: &dyn JobStore, job: NewJob) -> Job {
    match store.submit(job, ROOMY).await.expect("submit") {
        Submitted::Created(job) => job,
        Submitted::Existing(job) => panic!("expected a new job, got existing {}", job.id),
    }
}

/// What was submitted comes back whole, from `get` and from `get_by_key`.
pub async fn submit_then_get_round_trips<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    let mut job = new_job(1, Priority::High, T0);
    job.callback_url = Some(domain::CallbackUrl::parse("https://example.com/hook").unwrap());
    job.idempotency = Some(key("caller-a", "order-42"));
    job.tenant = Tenant::parse("caller-a").unwrap();
    job.webhook_token = Some("wh-secret-1".to_owned());
    let stored = created(&*store, job).await;
    assert_eq!(stored.status, JobStatus::Queued);
    assert_eq!(stored.tenant.as_str(), "caller-a");
    assert_eq!(stored.webhook_token.as_deref(), Some("wh-secret-1"));
    assert_eq!(stored.admission().tenant.as_str(), "caller-a");
    assert_eq!(stored.version, 1);
    assert_eq!(stored.created_ms, T0);
    assert_eq!(stored.next_run_ms, T0);
    assert_eq!(stored.request, request(1));
    let got = store.get(&job_id(1)).await.unwrap().expect("stored");
    assert_eq!(got, stored);
    let by_key = store
        .get_by_key(&key("caller-a", "order-42"))
        .await
        .unwrap()
        .expect("found by key");
    assert_eq!(by_key, stored);
    assert_eq!(store.get(&job_id(2)).await.unwrap(), None);
    assert_eq!(
        store
            .get_by_key(&key("caller-b", "order-42"))
            .await
            .unwrap(),
        None,
        "keys are scoped per caller"
    );
}

/// Of many concurrent submits with one key, exactly one creates the job.
pub async fn one_key_is_one_job_under_concurrent_submits<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    let mut handles = Vec::new();
    for n in 0..16u64 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut job = new_job(100 + n, Priority::Normal, T0 + n);
            job.idempotency = Some(key("s", "same"));
            store.submit(job, ROOMY).await.expect("submit")
        }));
    }
    let mut created_ids = Vec::new();
    let mut existing_ids = HashSet::new();
    for h in handles {
        match h.await.unwrap() {
            Submitted::Created(job) => created_ids.push(job.id),
            Submitted::Existing(job) => {
                existing_ids.insert(job.id);
            }
        }
    }
    assert_eq!(created_ids.len(), 1, "exactly one submit creates the job");
    assert!(
        existing_ids.iter().all(|id| *id == created_ids[0]),
        "every other submit sees that job: {existing_ids:?} vs {created_ids:?}"
    );
    let page = store.list(ListQuery::new(None, 100, None)).await.unwrap();
    assert_eq!(page.jobs.len(), 1, "no second job was stored");
    // The same key in another scope is another job.
    let mut other = new_job(200, Priority::Normal, T0);
    other.idempotency = Some(key("t", "same"));
    created(&*store, other).await;
}

/// A full queue refuses a new job and stores nothing; a replay of a stored key still works.
pub async fn a_full_queue_refuses_new_jobs_and_stores_nothing<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    let limits = QueueLimits { max_queued: 2 };
    for n in 1..=2 {
        let mut job = new_job(n, Priority::Normal, T0);
        job.idempotency = Some(key("s", &format!("k{n}")));
        assert!(matches!(
            store.submit(job, limits).await.unwrap(),
            Submitted::Created(_)
        ));
    }
    let mut third = new_job(3, Priority::Critical, T0);
    third.idempotency = Some(key("s", "k3"));
    let err = store.submit(third, limits).await.unwrap_err();
    assert_eq!(
        err,
        JobStoreError::QueueFull {
            queued: 2,
            limit: 2
        }
    );
    assert_eq!(store.get(&job_id(3)).await.unwrap(), None);
    assert_eq!(store.get_by_key(&key("s", "k3")).await.unwrap(), None);
    // A replay is not a new job: it is answered although the queue is full.
    let mut replay = new_job(4, Priority::Normal, T0);
    replay.idempotency = Some(key("s", "k1"));
    match store.submit(replay, limits).await.unwrap() {
        Submitted::Existing(job) => assert_eq!(job.id, job_id(1)),
        other => panic!("expected the existing job, got {other:?}"),
    }
    // A job claimed at once (a synchronous route) counts as running, not queued.
    let mut running = new_job(5, Priority::Normal, T0);
    running.status = JobStatus::Creating;
    running.lease = Some(Lease {
        owner: "w".into(),
        until_ms: T0 + 1000,
    });
    let err = store.submit(running, limits).await.unwrap_err();
    assert!(
        matches!(err, JobStoreError::QueueFull { .. }),
        "the bound applies to every new job: {err:?}"
    );
}

/// Claims go highest priority first, then oldest, one job per claim.
pub async fn claims_follow_priority_then_arrival<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    let order = [
        (1, Priority::Low),
        (2, Priority::Normal),
        (3, Priority::Critical),
        (4, Priority::Normal),
        (5, Priority::High),
        (6, Priority::Critical),
    ];
    for (n, p) in order {
        created(&*store, new_job(n, p, T0 + n)).await;
    }
    let mut claimed = Vec::new();
    while let Some(job) = store
        .claim(LeaseTerms::new("w1", LEASE, T0 + 100))
        .await
        .unwrap()
    {
        assert_eq!(
            job.lease,
            Some(Lease {
                owner: "w1".into(),
                until_ms: T0 + 100 + 30_000
            })
        );
        assert_eq!(job.version, 2, "a claim is a write");
        claimed.push(job.id);
        assert!(claimed.len() <= 6, "a claimed job was handed out again");
    }
    let expected: Vec<JobId> = [3, 6, 5, 2, 4, 1].into_iter().map(job_id).collect();
    assert_eq!(claimed, expected);
}

/// Within a priority, claims follow the tenants' weights (the fair order of the module docs
/// of `ports::jobs`): a backlog submitted first does not hold back a tenant that comes later,
/// each tenant's jobs keep their order, two backlogged tenants of weights 3 and 1 are claimed
/// 3 to 1, and priority still comes before any weight.
pub async fn claims_share_a_priority_by_weight<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    let tenant = |name: &str, weight: u32| {
        (
            Tenant::parse(name).expect("a valid tenant"),
            domain::Share::new(weight, None),
        )
    };
    let (batch, web, other) = (tenant("batch", 1), tenant("web", 3), tenant("other", 1));
    let submit = |n: u64, who: &(Tenant, domain::Share), p: Priority| {
        let mut job = new_job(n, p, T0 + n);
        job.tenant = who.0.clone();
        job.share = who.1;
        job
    };
    // batch queues 12 jobs first; web (weight 3) 12 after; then one high job of other's.
    for n in 1..=12 {
        created(&*store, submit(n, &batch, Priority::Normal)).await;
    }
    for n in 13..=24 {
        created(&*store, submit(n, &web, Priority::Normal)).await;
    }
    created(&*store, submit(25, &other, Priority::High)).await;
    let mut claimed = Vec::new();
    while let Some(job) = store
        .claim(LeaseTerms::new("w1", LEASE, T0 + 100))
        .await
        .unwrap()
    {
        claimed.push(job);
        assert!(claimed.len() <= 25, "a claimed job was handed out again");
    }
    assert_eq!(claimed.len(), 25);
    assert_eq!(claimed[0].id, job_id(25), "priority before any weight");
    let names: String = claimed[1..]
        .iter()
        .map(|j| if j.tenant == batch.0 { 'b' } else { 'w' })
        .collect();
    let first8 = &names[..8];
    assert_eq!(
        first8.matches('w').count(),
        6,
        "3:1 from the start, although batch's 12 came first: {names}"
    );
    assert!(
        names[..3].contains('b'),
        "web's backlog does not hold back batch's first job either: {names}"
    );
    for who in [&batch.0, &web.0] {
        let seqs: Vec<u64> = claimed
            .iter()
            .filter(|j| &j.tenant == who)
            .map(|j| j.seq)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "FIFO within {who}: {seqs:?}"
        );
    }
    // A tenant coming back after the others were served starts from where the claims are,
    // not from its old rank: it is not owed a burst, nor held back.
    created(&*store, submit(26, &web, Priority::Normal)).await;
    created(&*store, submit(27, &batch, Priority::Normal)).await;
    created(&*store, submit(28, &web, Priority::Normal)).await;
    let mut after = Vec::new();
    while let Some(job) = store
        .claim(LeaseTerms::new("w1", LEASE, T0 + 200))
        .await
        .unwrap()
    {
        after.push(job.id);
    }
    assert_eq!(
        after,
        vec![job_id(26), job_id(28), job_id(27)],
        "web's two cost one of batch's"
    );
}

/// A claimed job is nobody else's until its lease runs out; then another worker takes it over.
pub async fn a_lease_is_exclusive_until_it_expires<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    created(&*store, new_job(1, Priority::Normal, T0)).await;
    let first = store
        .claim(LeaseTerms::new("w1", LEASE, T0))
        .await
        .unwrap()
        .expect("claim");
    assert_eq!(
        store
            .claim(LeaseTerms::new("w2", LEASE, T0 + 29_999))
            .await
            .unwrap(),
        None
    );
    // Only the holder renews.
    assert!(
        !store
            .renew(&first.id, LeaseTerms::new("w2", LEASE, T0 + 10_000))
            .await
            .unwrap()
    );
    assert!(
        store
            .renew(&first.id, LeaseTerms::new("w1", LEASE, T0 + 10_000))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .claim(LeaseTerms::new("w2", LEASE, T0 + 39_999))
            .await
            .unwrap(),
        None,
        "the renewed lease holds until T0 + 40 s"
    );
    let version = store.get(&first.id).await.unwrap().unwrap().version;
    assert_eq!(version, first.version, "renew does not move the version");
    let taken = store
        .claim(LeaseTerms::new("w2", LEASE, T0 + 40_000))
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_eq!(taken.id, first.id);
    assert_eq!(taken.lease.as_ref().unwrap().owner, "w2");
    // The old holder can no longer renew, nor write with its stale version.
    assert!(
        !store
            .renew(&first.id, LeaseTerms::new("w1", LEASE, T0 + 40_001))
            .await
            .unwrap()
    );
    let err = store.update(first.clone()).await.unwrap_err();
    assert!(matches!(err, JobStoreError::Conflict { .. }), "{err:?}");
    // A job submitted already claimed is not claimable until its lease expires.
    let mut own = new_job(2, Priority::Critical, T0);
    own.status = JobStatus::Creating;
    own.lease = Some(Lease {
        owner: "sync".into(),
        until_ms: T0 + 50_000,
    });
    created(&*store, own).await;
    assert_eq!(
        store
            .claim(LeaseTerms::new("w3", LEASE, T0 + 49_999))
            .await
            .unwrap(),
        None
    );
    let late = store
        .claim(LeaseTerms::new("w3", LEASE, T0 + 50_000))
        .await
        .unwrap();
    assert_eq!(late.map(|j| j.id), Some(job_id(2)));
}

/// Concurrent claimers never get the same job.
pub async fn concurrent_claims_hand_out_each_job_once<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    for n in 0..40 {
        created(&*store, new_job(n, Priority::ALL[(n % 4) as usize], T0)).await;
    }
    let mut handles = Vec::new();
    for w in 0..8 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = store
                .claim(LeaseTerms::new(&format!("w{w}"), LEASE, T0 + 1))
                .await
                .unwrap()
            {
                mine.push(job.id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 40, "every job claimed exactly once: {all:?}");
    assert_eq!(distinct.len(), 40);
}

/// `update` is a compare-and-set: of two writers of one version, one wins.
pub async fn update_is_compare_and_set<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    created(&*store, new_job(1, Priority::Normal, T0)).await;
    let claimed = store
        .claim(LeaseTerms::new("w1", LEASE, T0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.create_sent, CreateSent::Nothing, "never sent");
    let mut a = claimed.clone();
    a.status = JobStatus::Processing;
    a.create_sent = CreateSent::Maybe;
    a.talk_id = Some(TalkId::parse("tlk_abc").unwrap());
    a.updated_ms = T0 + 5;
    a.next_run_ms = T0 + 2_000;
    a.record_attempt(Attempt {
        worker: "w1".into(),
        action: "create".into(),
        at_ms: T0,
        outcome: "ok".into(),
    });
    let mut b = claimed.clone();
    b.status = JobStatus::Cancelled;
    let written = store.update(a.clone()).await.expect("first writer wins");
    assert_eq!(written.version, claimed.version + 1);
    assert_eq!(written.talk_id, a.talk_id);
    assert_eq!(written.attempts, a.attempts);
    assert_eq!(written.create_sent, CreateSent::Maybe, "kept with the job");
    let err = store.update(b).await.unwrap_err();
    assert_eq!(
        err,
        JobStoreError::Conflict {
            id: claimed.id.clone(),
            expected: claimed.version
        }
    );
    let stored = store.get(&claimed.id).await.unwrap().unwrap();
    assert_eq!(stored, written, "the loser changed nothing");
    // Racing writers: exactly one of many wins.
    let mut handles = Vec::new();
    for n in 0..8u64 {
        let store = Arc::clone(&store);
        let mut job = stored.clone();
        job.polls = u32::try_from(n).unwrap() + 1;
        handles.push(tokio::spawn(async move { store.update(job).await.is_ok() }));
    }
    let mut wins = 0;
    for h in handles {
        wins += usize::from(h.await.unwrap());
    }
    assert_eq!(wins, 1);
    // An unknown job is an error, not an insert.
    let mut ghost = stored.clone();
    ghost.id = job_id(99);
    assert_eq!(
        store.update(ghost).await.unwrap_err(),
        JobStoreError::NotFound(job_id(99))
    );
}

/// `next_run_ms` defers a claim; terminal jobs are never claimed.
pub async fn deferred_and_terminal_jobs_are_not_claimed<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    created(&*store, new_job(1, Priority::Critical, T0)).await;
    created(&*store, new_job(2, Priority::Low, T0)).await;
    let mut first = store
        .claim(LeaseTerms::new("w", LEASE, T0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, job_id(1));
    first.status = JobStatus::Processing;
    first.lease = None;
    first.next_run_ms = T0 + 5_000;
    store.update(first).await.unwrap();
    let second = store
        .claim(LeaseTerms::new("w", LEASE, T0 + 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.id,
        job_id(2),
        "a deferred job waits, lower ones go on"
    );
    let mut done = second;
    done.status = JobStatus::Done;
    done.lease = None;
    done.finished_ms = Some(T0 + 2);
    done.result_url = Some("https://example.com/v.mp4".into());
    store.update(done).await.unwrap();
    assert_eq!(
        store
            .claim(LeaseTerms::new("w", LEASE, T0 + 4_999))
            .await
            .unwrap(),
        None
    );
    let again = store
        .claim(LeaseTerms::new("w", LEASE, T0 + 5_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, job_id(1));
    assert_eq!(again.status, JobStatus::Processing);
    assert_eq!(
        store
            .claim(LeaseTerms::new("w2", LEASE, T0 + 5_001))
            .await
            .unwrap(),
        None,
        "the processing job is leased again, the done job never runs"
    );
    let late = store
        .claim(LeaseTerms::new("w2", LEASE, T0 + 1_000_000_000))
        .await
        .unwrap()
        .expect("after its lease the processing job is claimable");
    assert_eq!(late.id, job_id(1), "never the done job");
    assert_eq!(
        store
            .claim(LeaseTerms::new("w3", LEASE, T0 + 1_000_000_000))
            .await
            .unwrap(),
        None
    );
}

/// `list` pages newest first, filters by status, and rejects foreign cursors.
pub async fn list_pages_newest_first<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    for n in 1..=7 {
        created(&*store, new_job(n, Priority::Normal, T0 + n)).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list(ListQuery::new(None, 3, cursor.as_deref()))
            .await
            .unwrap();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(seen.len() <= 7, "pages must end");
    }
    let expected: Vec<JobId> = (1..=7).rev().map(job_id).collect();
    assert_eq!(seen, expected);
    // Filter by status.
    let mut c = store
        .claim(LeaseTerms::new("w", LEASE, T0 + 100))
        .await
        .unwrap()
        .unwrap();
    c.status = JobStatus::Cancelled;
    c.lease = None;
    c.finished_ms = Some(T0 + 100);
    store.update(c.clone()).await.unwrap();
    let cancelled = store
        .list(ListQuery::new(Some(JobStatus::Cancelled), 10, None))
        .await
        .unwrap();
    assert_eq!(
        cancelled.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&c.id]
    );
    assert_eq!(cancelled.next_cursor, None);
    let queued = store
        .list(ListQuery::new(Some(JobStatus::Queued), 100, None))
        .await
        .unwrap();
    assert_eq!(queued.jobs.len(), 6);
    assert_eq!(
        store
            .list(ListQuery::new(None, 3, Some("not a cursor")))
            .await
            .unwrap_err(),
        JobStoreError::InvalidCursor
    );
}

/// `purge` deletes old terminal jobs and frees their keys; nothing else.
pub async fn purge_deletes_old_terminal_jobs_and_their_keys<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    for n in 1..=3 {
        let mut job = new_job(n, Priority::Normal, T0);
        job.idempotency = Some(key("s", &format!("k{n}")));
        created(&*store, job).await;
    }
    // 1 finishes early, 2 finishes late, 3 stays queued.
    for (n, at) in [(1u64, T0 + 10), (2, T0 + 1_000)] {
        let mut job = store.get(&job_id(n)).await.unwrap().unwrap();
        job.status = JobStatus::Failed;
        job.error = Some(JobFailure {
            code: FailureCode::TalkFailed,
            message: "no face".into(),
            upstream_status: None,
        });
        job.finished_ms = Some(at);
        store.update(job).await.unwrap();
    }
    assert_eq!(store.purge(T0 + 500).await.unwrap(), 1);
    assert_eq!(store.get(&job_id(1)).await.unwrap(), None);
    assert_eq!(store.get_by_key(&key("s", "k1")).await.unwrap(), None);
    assert!(store.get(&job_id(2)).await.unwrap().is_some());
    assert!(store.get(&job_id(3)).await.unwrap().is_some());
    // The freed key makes a new job.
    let mut again = new_job(4, Priority::Normal, T0 + 600);
    again.idempotency = Some(key("s", "k1"));
    created(&*store, again).await;
    assert_eq!(
        store.purge(u64::MAX).await.unwrap(),
        1,
        "a queued job is never purged"
    );
}

/// `counts` reports every state and the oldest queued job per priority.
pub async fn counts_report_states_and_queue_age<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    let empty = store.counts().await.unwrap();
    assert_eq!(empty.by_status.len(), JobStatus::ALL.len());
    assert!(empty.by_status.values().all(|n| *n == 0));
    assert_eq!(empty.oldest_queued_ms, [None; 4]);
    created(&*store, new_job(1, Priority::High, T0 + 5)).await;
    created(&*store, new_job(2, Priority::High, T0 + 3)).await;
    created(&*store, new_job(3, Priority::Low, T0 + 9)).await;
    let mut c = store
        .claim(LeaseTerms::new("w", LEASE, T0 + 10))
        .await
        .unwrap()
        .unwrap();
    c.status = JobStatus::Creating;
    store.update(c).await.unwrap();
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.by_status[&JobStatus::Queued], 2);
    assert_eq!(counts.by_status[&JobStatus::Creating], 1);
    assert_eq!(counts.by_status[&JobStatus::Done], 0);
    // Job 1 (High, T0+5) was claimed first; job 2 (High, T0+3) is still queued.
    assert_eq!(
        counts.oldest_queued_ms[Priority::High.index()],
        Some(T0 + 3)
    );
    assert_eq!(counts.oldest_queued_ms[Priority::Low.index()], Some(T0 + 9));
    assert_eq!(counts.oldest_queued_ms[Priority::Normal.index()], None);
}

/// `next_due` is the earliest time a non-terminal job becomes claimable (its `next_run_ms`,
/// or its lease's end when later), `None` when no job is left to run; `check` passes on a
/// healthy store.
pub async fn next_due_tells_when_a_job_becomes_claimable<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    store.check().await.expect("a fresh store can take writes");
    assert_eq!(store.next_due(T0).await.unwrap(), None, "an empty store");
    created(&*store, new_job(1, Priority::Normal, T0)).await;
    let due = store.next_due(T0).await.unwrap();
    assert!(
        due.is_some_and(|t| t <= T0),
        "a queued job is due now: {due:?}"
    );
    // Claimed: due when its lease runs out.
    let mut job = store
        .claim(LeaseTerms::new("w", LEASE, T0))
        .await
        .unwrap()
        .unwrap();
    let lease_end = T0 + LEASE.as_millis() as u64;
    assert_eq!(store.next_due(T0 + 1).await.unwrap(), Some(lease_end));
    // Written back with a later poll and no lease: due at that poll.
    job.status = JobStatus::Processing;
    job.lease = None;
    job.next_run_ms = T0 + 7_000;
    let job = store.update(job).await.unwrap();
    assert_eq!(store.next_due(T0 + 2).await.unwrap(), Some(T0 + 7_000));
    // A second job due earlier wins.
    let mut later = new_job(2, Priority::Low, T0 + 3);
    later.status = JobStatus::Queued;
    created(&*store, later).await;
    let due = store.next_due(T0 + 4).await.unwrap();
    assert!(due.is_some_and(|t| t <= T0 + 4), "the queued job: {due:?}");
    let mut second = store
        .claim(LeaseTerms::new("w", LEASE, T0 + 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id, job_id(2));
    second.status = JobStatus::Cancelled;
    second.lease = None;
    second.finished_ms = Some(T0 + 6);
    store.update(second).await.unwrap();
    assert_eq!(store.next_due(T0 + 6).await.unwrap(), Some(T0 + 7_000));
    let mut done = job;
    done.status = JobStatus::Done;
    done.finished_ms = Some(T0 + 8);
    store.update(done).await.unwrap();
    assert_eq!(
        store.next_due(T0 + 9).await.unwrap(),
        None,
        "terminal jobs are never due"
    );
    store.check().await.expect("still healthy");
}

/// Job `n`, submitted at [`T0`] and ended `done` at `at` in the same write that arms its
/// callback, due at `due`.
async fn ended_with_callback(store: &dyn JobStore, n: u64, at: u64, due: u64) -> Job {
    let mut job = created(store, new_job(n, Priority::Normal, T0)).await;
    job.status = JobStatus::Done;
    job.result_url = Some(format!("https://example.com/video-{n}.mp4"));
    job.finished_ms = Some(at);
    job.callback = Some(Callback {
        next_attempt_ms: due,
        ..Callback::new(CallbackEvent::TalkDone, format!("msg_{n}"), at)
    });
    store.update(job).await.expect("update")
}

/// A pending callback is claimed once it is due, by one worker at a time (until its lease
/// runs out), earliest due first; its outcome is written back with `update` and a
/// delivered one is never claimed again. `next_callback_due` follows.
pub async fn callbacks_are_claimed_when_due_one_worker_at_a_time<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    assert_eq!(store.next_callback_due(T0).await.unwrap(), None);
    assert_eq!(
        store
            .claim_callback(LeaseTerms::new("cb", LEASE, T0))
            .await
            .unwrap(),
        None
    );
    // A terminal job without a callback is nobody's to deliver.
    let mut plain = created(&*store, new_job(9, Priority::Normal, T0)).await;
    plain.status = JobStatus::Cancelled;
    plain.finished_ms = Some(T0);
    store.update(plain).await.unwrap();
    ended_with_callback(&*store, 1, T0 + 10, T0 + 500).await;
    ended_with_callback(&*store, 2, T0 + 20, T0 + 100).await;
    assert_eq!(store.next_callback_due(T0).await.unwrap(), Some(T0 + 100));
    assert_eq!(
        store
            .claim_callback(LeaseTerms::new("cb", LEASE, T0 + 99))
            .await
            .unwrap(),
        None,
        "nothing is due before its attempt"
    );
    let claimed = store
        .claim_callback(LeaseTerms::new("cb-a", LEASE, T0 + 600))
        .await
        .unwrap()
        .expect("both are due");
    assert_eq!(claimed.id, job_id(2), "the earliest due first");
    let lease = claimed.lease.clone().expect("the claim's lease");
    assert_eq!(lease.owner, "cb-a");
    assert_eq!(lease.until_ms, T0 + 600 + LEASE.as_millis() as u64);
    assert_eq!(
        claimed.status,
        JobStatus::Done,
        "the job's state is untouched"
    );
    let second = store
        .claim_callback(LeaseTerms::new("cb-b", LEASE, T0 + 600))
        .await
        .unwrap()
        .expect("job 1 is due too");
    assert_eq!(second.id, job_id(1));
    assert_eq!(
        store
            .claim_callback(LeaseTerms::new("cb-c", LEASE, T0 + 601))
            .await
            .unwrap(),
        None,
        "both are leased"
    );
    // cb-b's worker died: its lease runs out and the callback is claimable again.
    let lease_end = T0 + 600 + LEASE.as_millis() as u64;
    assert_eq!(
        store.next_callback_due(T0 + 601).await.unwrap(),
        Some(lease_end)
    );
    // cb-a delivers: written back without the lease.
    let mut done = claimed;
    done.lease = None;
    let cb = done.callback.as_mut().unwrap();
    cb.record(CallbackAttempt {
        at_ms: T0 + 600,
        outcome: "ok".into(),
        status: Some(204),
        error: String::new(),
        took_ms: 3,
    });
    cb.status = CallbackStatus::Delivered;
    cb.ended_ms = Some(T0 + 603);
    let written = store.update(done).await.unwrap();
    assert_eq!(store.get(&job_id(2)).await.unwrap(), Some(written.clone()));
    let again = store
        .claim_callback(LeaseTerms::new("cb-c", LEASE, lease_end))
        .await
        .unwrap()
        .expect("job 1's lease ran out");
    assert_eq!(again.id, job_id(1));
    assert_eq!(again.lease.as_ref().map(|l| l.owner.as_str()), Some("cb-c"));
    assert!(
        again.version > second.version,
        "a claim moves the version, so the dead worker's late write conflicts"
    );
    assert!(matches!(
        store.update(second).await,
        Err(JobStoreError::Conflict { .. })
    ));
    // A failed attempt: the next one later, without the lease.
    let mut retry = again;
    retry.lease = None;
    let cb = retry.callback.as_mut().unwrap();
    cb.next_attempt_ms = lease_end + 5_000;
    cb.record(CallbackAttempt {
        at_ms: lease_end,
        outcome: "status".into(),
        status: Some(503),
        error: "callback answered 503".into(),
        took_ms: 4,
    });
    store.update(retry).await.unwrap();
    assert_eq!(
        store.next_callback_due(lease_end).await.unwrap(),
        Some(lease_end + 5_000)
    );
    assert_eq!(store.counts().await.unwrap().callbacks_pending, 1);
    let last = store
        .claim_callback(LeaseTerms::new("cb-d", LEASE, lease_end + 5_000))
        .await
        .unwrap()
        .expect("due again");
    assert_eq!(last.callback.as_ref().unwrap().attempts, 1);
    let mut given_up = last;
    given_up.lease = None;
    given_up.callback.as_mut().unwrap().status = CallbackStatus::Failed;
    store.update(given_up).await.unwrap();
    assert_eq!(store.next_callback_due(lease_end).await.unwrap(), None);
    assert_eq!(store.counts().await.unwrap().callbacks_pending, 0);
    assert_eq!(
        store
            .claim_callback(LeaseTerms::new("cb", LEASE, u64::MAX / 2))
            .await
            .unwrap(),
        None,
        "settled callbacks are never claimed"
    );
}

/// Concurrent callback claimers never get the same callback.
pub async fn concurrent_callback_claims_hand_out_each_once<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    for n in 0..24 {
        ended_with_callback(&*store, n, T0 + n, T0 + n).await;
    }
    let mut handles = Vec::new();
    for w in 0..6 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = store
                .claim_callback(LeaseTerms::new(&format!("cb{w}"), LEASE, T0 + 100))
                .await
                .unwrap()
            {
                mine.push(job.id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        24,
        "every callback claimed exactly once: {all:?}"
    );
    assert_eq!(distinct.len(), 24);
}

/// A finished job whose callback is pending outlives its retention until the callback is
/// settled; then the purge takes it as any other.
pub async fn purge_keeps_jobs_whose_callback_is_pending<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let store = factory().await;
    let pending = ended_with_callback(&*store, 1, T0 + 10, T0 + 10).await;
    ended_with_callback(&*store, 2, T0 + 10, T0 + 10).await;
    let mut settled = store.get(&job_id(2)).await.unwrap().unwrap();
    settled.callback.as_mut().unwrap().status = CallbackStatus::Delivered;
    store.update(settled).await.unwrap();
    assert_eq!(store.counts().await.unwrap().callbacks_pending, 1);
    assert_eq!(store.purge(T0 + 1_000).await.unwrap(), 1, "only job 2");
    assert!(store.get(&job_id(1)).await.unwrap().is_some());
    assert_eq!(store.get(&job_id(2)).await.unwrap(), None);
    let mut pending = store.get(&pending.id).await.unwrap().unwrap();
    pending.callback.as_mut().unwrap().status = CallbackStatus::Failed;
    store.update(pending).await.unwrap();
    assert_eq!(store.purge(T0 + 1_000).await.unwrap(), 1, "settled now");
    assert_eq!(store.counts().await.unwrap().callbacks_pending, 0);
}

/// Runs the whole job-store contract suite as `#[tokio::test]`s against `$factory`.
#[macro_export]
macro_rules! job_store_contract_tests {
    ($factory:path) => {
        $crate::job_store_contract_tests!(@tests $factory;
            submit_then_get_round_trips,
            one_key_is_one_job_under_concurrent_submits,
            a_full_queue_refuses_new_jobs_and_stores_nothing,
            claims_follow_priority_then_arrival,
            claims_share_a_priority_by_weight,
            a_lease_is_exclusive_until_it_expires,
            concurrent_claims_hand_out_each_job_once,
            update_is_compare_and_set,
            deferred_and_terminal_jobs_are_not_claimed,
            list_pages_newest_first,
            purge_deletes_old_terminal_jobs_and_their_keys,
            counts_report_states_and_queue_age,
            next_due_tells_when_a_job_becomes_claimable,
            callbacks_are_claimed_when_due_one_worker_at_a_time,
            concurrent_callback_claims_hand_out_each_once,
            purge_keeps_jobs_whose_callback_is_pending
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::job_contract::$name($factory).await;
            }
        )*
    };
}
