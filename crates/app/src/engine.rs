//! The job engine: durable talk jobs over a [`JobStore`], worked on by every instance.
//!
//! # Who owns a job when
//! - a submit (`POST /jobs`) stores a `queued` job and answers at once. Workers (`JOB_WORKERS` per
//!   instance) claim runnable jobs from the store in the limiter's order (priority, then
//!   arrival), each with a lease of `JOB_LEASE_SECS` that a background task renews every third
//!   of it while the worker is busy. A worker holds a limiter slot only per HTTP exchange with
//!   D-ID (the D-ID client takes it), never while it waits.
//! - `generate-video` runs its own job *inline*: the job is stored already claimed
//!   (`creating`, leased to the request) and the request does the work itself, so its
//!   answer and JSON stay as before. If the request is dropped (the caller hangs up, the
//!   shutdown cuts it off) after its talk was created, it gives its claim back ([`Hold`]) and
//!   a worker polls the job on at once; dropped mid-create, or killed with its process,
//!   nobody renews the lease and once it expires a worker takes the job over (looking the
//!   talk up first). Either way the caller re-attaches with its `Idempotency-Key` or the job
//!   id.
//!
//! # One step per claim
//! - `queued` / `creating`: `POST /talks` with a token derived from the job id. The job is
//!   written `creating` *before* the create is sent; a worker that claims a job that is
//!   `creating` already (its worker died mid-create), or that has an earlier create attempt,
//!   first looks the talk up by that token (did-client: the newest `recovery_pages` pages of
//!   `GET /talks`) and adopts it instead of creating a second one. Then `processing`.
//! - `processing`: one status poll; `done` / `failed`, or the next poll on the growing
//!   [`ports::PollSchedule`] that a waiting request uses too (0.5 s, 1 s, 2 s … up to
//!   `POLL_INTERVAL_SECS`, ±10 %), written as `next_run_ms` so that any instance may make
//!   it, also after a restart.
//!
//! A create that no slot was free for (the limiter's wait timed out) or that D-ID throttled
//! is tried again without counting as an attempt: a burst larger than the account's capacity
//! waits instead of failing. It stays `creating` (an earlier attempt inside the same client
//! call may have reached D-ID), so the next try looks the talk up first. A create that may have reached D-ID (timeout, 5xx) is
//! retried with the look-up, at most [`MAX_CREATE_ATTEMPTS`](crate::MAX_CREATE_ATTEMPTS) times.

use ports::LeaseTerms;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ports::{
    Attempt, Job, JobEvent, JobEvents, JobId, JobStatus, JobStore, JobStoreError, Lease,
    NoJobEvents, QueueLimits, ScopedKey, VideoApi,
};
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;

use crate::talk_webhooks::{Counters, TalkWebhooks};
use tokio::task::JoinHandle;

use crate::counted::CountedStore;
use crate::cutoff::TalkSlot;
use crate::error::AppError;
use crate::now_ms;
use crate::steps::CreateMode;

/// A sync route that re-attaches reads the store at least this often.
const REATTACH_POLL: Duration = Duration::from_millis(200);
/// The instance's one periodic look at the store when it knows of nothing due sooner: the
/// safety net for a wake-up lost on the way (a Redis pub/sub message sent while the
/// subscriber reconnected). Due polls and expired leases are looked for when they are due.
pub const IDLE_LOOK: Duration = Duration::from_secs(2);
/// While jobs are due and every worker is busy, the look comes this often (the workers
/// claim on by themselves between steps; the look only wakes one that sleeps).
const BUSY_LOOK: Duration = Duration::from_millis(250);
/// Looks woken by the store (submits on other instances) come at most this often.
const COALESCE_LOOKS: Duration = Duration::from_millis(20);
/// A store that failed is looked at again after this long.
const FAILED_LOOK: Duration = Duration::from_secs(1);

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Workers per instance.
    pub workers: usize,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// How many jobs may wait.
    pub queue: QueueLimits,
    /// How long finished jobs (and their keys) are kept.
    pub retention: Duration,
    /// The longest pause between two polls of a processing job.
    pub poll_max: Duration,
    /// A processing job whose talk has not ended this long after the job was submitted fails
    /// with `talk_timeout` (the talk may still finish at D-ID).
    pub max_processing: Duration,
    /// Take D-ID's webhooks instead of polling (see [`crate::talk_webhooks`]); `None`: poll.
    pub talk_webhooks: Option<TalkWebhooks>,
    /// Deliver callbacks to jobs' `callback_url` (see [`crate::callbacks`]); `None`: no
    /// callback is armed.
    pub callbacks: Option<crate::callbacks::CallbackSettings>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            workers: 8,
            lease: Duration::from_secs(30),
            queue: QueueLimits { max_queued: 10_000 },
            retention: Duration::from_secs(7 * 24 * 3600),
            poll_max: Duration::from_secs(5),
            max_processing: Duration::from_secs(3600),
            talk_webhooks: None,
            callbacks: None,
        }
    }
}

/// Where the engine finds a tenant's share of the limiter (the service's tenants file).
pub trait TenantShares: Send + Sync {
    /// The weight and cap of `tenant` now.
    fn share_of(&self, tenant: &domain::Tenant) -> domain::Share;
}

/// How often finished jobs past their retention are purged: a tenth of the retention,
/// between 1 s and 60 s. A job (and its idempotency key) is gone between `retention` and
/// `retention + purge_period(retention)` after it finished: 7 days + at most 60 s by
/// default, 10 s + at most 1 s for a retention of 10 s.
pub fn purge_period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The engine: the store, the D-ID port, the workers' signals.
pub struct Jobs {
    /// Each tenant's share of the limiter, for the engine's own calls (creates and polls).
    pub(crate) shares: std::sync::RwLock<Option<Arc<dyn TenantShares>>>,
    /// The tenants' credit budgets, if any tenant has one (see [`crate::credits`]).
    pub(crate) credits: std::sync::RwLock<Option<Arc<crate::credits::Credits>>>,
    /// Where trace contexts are taken and linked (see [`crate::traces`]).
    pub(crate) traces: std::sync::RwLock<Option<Arc<dyn crate::traces::JobTraces>>>,
    pub(crate) store: Arc<dyn JobStore>,
    /// The same store, for its call count.
    pub(crate) counted: Arc<CountedStore>,
    pub(crate) video: Arc<dyn VideoApi>,
    /// Told of every committed transition.
    pub(crate) events: Arc<dyn JobEvents>,
    pub(crate) config: JobsConfig,
    /// This process, in worker names (`<instance>/<n>`).
    pub(crate) instance: String,
    /// Wakes one idle worker: a job submitted here, a job the look found due, a worker that
    /// claimed one (so a backlog fans out over the workers, one wake-up per claim).
    pub(crate) wake: Notify,
    /// Wakes the look early: a write here made a job due sooner than it planned to look.
    pub(crate) replan: Notify,
    /// When the look plans to look next, ms since the epoch.
    pub(crate) next_look_ms: AtomicU64,
    /// Set at shutdown: idle workers, the look and the purger end.
    pub(crate) stop_signal: watch::Sender<bool>,
    /// Bumped on every write this instance makes, so re-attached callers look again.
    pub(crate) changed: watch::Sender<u64>,
    pub(crate) stopping: AtomicBool,
    pub(crate) started: AtomicBool,
    /// Set while claims fail (logged once per streak).
    pub(crate) claim_failing: AtomicBool,
    pub(crate) next_inline: AtomicU64,
    /// Keys whose first request is still being accepted on this instance.
    pub(crate) accepting: Mutex<HashSet<ScopedKey>>,
    /// When jobs left the queue here (for `Retry-After`).
    pub(crate) drained: Mutex<VecDeque<Instant>>,
    pub(crate) workers: Mutex<Vec<JoinHandle<()>>>,
    /// Claims being given back by dropped requests (see [`Hold`]); awaited at shutdown.
    pub(crate) giving_back: Mutex<Vec<JoinHandle<()>>>,
    /// D-ID webhook receipts.
    pub(crate) talk_webhooks: Counters,
    /// Jobs a receipt made due, and when, until a poll sees them end (bounded).
    pub(crate) nudged: Mutex<HashMap<JobId, Instant>>,
    /// Slots of the receipts waiting to nudge their job.
    pub(crate) nudges: Arc<tokio::sync::Semaphore>,
    /// Callback attempts and outcomes.
    pub(crate) callbacks: crate::callbacks::Counters,
    /// Wakes one idle callback worker: a callback armed here, the callback look found one due.
    pub(crate) callback_wake: Notify,
    /// Wakes the callback look early: a retry here is due sooner than it planned to look.
    pub(crate) callback_replan: Notify,
    /// When the callback look plans to look next, ms since the epoch.
    pub(crate) next_callback_look_ms: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Renews a job's lease in the background until dropped.
pub struct Renewer(JoinHandle<()>);

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An inline job's claim while its request works on it: the lease is renewed in the
/// background. Dropped before [`Hold::done`] (the request was cut off at shutdown, or its
/// caller hung up), it gives the claim of a `processing` job back at once, so a worker (of
/// this instance, another one, or this one after a restart) polls the talk on without
/// waiting `JOB_LEASE_SECS`, and a replay re-attaches to a job that moves. A `creating`
/// job keeps its claim until the lease runs out: a create the request sent may still land
/// at D-ID, and the next owner's look-up must come after it.
pub struct Hold {
    renewer: Renewer,
    give_back: Option<(Arc<Jobs>, JobId, String)>,
    /// Dropped for a caller who left (not cut off), a job without an `Idempotency-Key`
    /// whose talk was not created is cancelled: nobody can ever fetch it.
    abandon: Option<TalkSlot>,
}

impl Hold {
    /// The request finished the job (or let go of its claim itself): nothing to give back.
    pub fn done(mut self) {
        self.give_back = None;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.renewer.0.abort();
        if let Some((jobs, id, owner)) = self.give_back.take() {
            let abandon = self.abandon.as_ref().is_some_and(|slot| !slot.is_cut_off());
            jobs.spawn_give_back(id, owner, abandon);
        }
    }
}

impl Jobs {
    /// An engine over `store`; call [`Jobs::start`] to run its workers.
    pub fn new(
        store: Arc<dyn JobStore>,
        video: Arc<dyn VideoApi>,
        config: JobsConfig,
    ) -> Arc<Jobs> {
        Jobs::with_events(store, video, config, Arc::new(NoJobEvents))
    }

    /// As [`Jobs::new`], telling `events` of every committed transition (see
    /// [`ports::events`]).
    pub fn with_events(
        store: Arc<dyn JobStore>,
        video: Arc<dyn VideoApi>,
        config: JobsConfig,
        events: Arc<dyn JobEvents>,
    ) -> Arc<Jobs> {
        let instance: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(8)
            .map(char::from)
            .collect();
        let counted = Arc::new(CountedStore::new(store));
        Arc::new(Jobs {
            shares: std::sync::RwLock::new(None),
            credits: std::sync::RwLock::new(None),
            traces: std::sync::RwLock::new(None),
            store: counted.clone(),
            counted,
            video,
            events,
            config,
            instance,
            wake: Notify::new(),
            replan: Notify::new(),
            next_look_ms: AtomicU64::new(0),
            stop_signal: watch::channel(false).0,
            changed: watch::channel(0).0,
            stopping: AtomicBool::new(false),
            started: AtomicBool::new(false),
            claim_failing: AtomicBool::new(false),
            next_inline: AtomicU64::new(0),
            accepting: Mutex::new(HashSet::new()),
            drained: Mutex::new(VecDeque::new()),
            workers: Mutex::new(Vec::new()),
            giving_back: Mutex::new(Vec::new()),
            talk_webhooks: Counters::default(),
            nudged: Mutex::new(HashMap::new()),
            nudges: Arc::new(tokio::sync::Semaphore::new(
                crate::talk_webhooks::MAX_NUDGES,
            )),
            callbacks: crate::callbacks::Counters::default(),
            callback_wake: Notify::new(),
            callback_replan: Notify::new(),
            next_callback_look_ms: AtomicU64::new(0),
        })
    }

    /// Where the engine's calls for a job find its tenant's share of the limiter (weight
    /// and cap): the service's tenants. Without, every job's calls take the default share.
    pub fn set_shares(&self, shares: Arc<dyn TenantShares>) {
        *self.shares.write().unwrap_or_else(PoisonError::into_inner) = Some(shares);
    }

    /// Where jobs reserve and settle their tenants' credit budgets (see [`crate::credits`]).
    /// Without, no job reserves anything.
    pub fn set_credits(&self, credits: Arc<crate::credits::Credits>) {
        *self.credits.write().unwrap_or_else(PoisonError::into_inner) = Some(credits);
    }

    /// The budgets, if set.
    pub fn credits(&self) -> Option<Arc<crate::credits::Credits>> {
        self.credits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The admission of the engine's calls for `job`: its tenant and priority, with the
    /// tenant's share now.
    pub fn admission_of(&self, job: &ports::Job) -> domain::Admission {
        let admission = job.admission();
        let shares = self.shares.read().unwrap_or_else(PoisonError::into_inner);
        match shares.as_ref() {
            Some(s) => {
                let share = s.share_of(&admission.tenant);
                admission.with_share(share)
            }
            None => admission,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// Calls made to the store so far, by the engine and the routes.
    pub fn store_calls(&self) -> u64 {
        self.counted.calls()
    }

    /// The settings.
    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// Starts the workers and the retention purge (once; later calls do nothing).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut workers = lock(&self.workers);
        for n in 0..self.config.workers {
            let jobs = Arc::clone(self);
            let name = format!("{}/{n}", self.instance);
            workers.push(tokio::spawn(async move { jobs.worker(name).await }));
        }
        let jobs = Arc::clone(self);
        workers.push(tokio::spawn(async move { jobs.purger().await }));
        let jobs = Arc::clone(self);
        workers.push(tokio::spawn(async move { jobs.look().await }));
        self.start_callbacks(&mut workers);
    }

    /// Stops claiming: idle workers exit at once, busy ones after their current step.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_signal.send_replace(true);
    }

    /// Returns once [`Jobs::stop`] was called (at once if it was before).
    pub async fn stopped(&self) {
        let mut rx = self.stop_signal.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Waits up to `grace` for the workers to finish their steps, then aborts the rest (their
    /// jobs stay in the store, leased until the lease runs out, then the next owner's).
    pub async fn join(&self, grace: Duration) {
        let handles: Vec<JoinHandle<()>> = lock(&self.workers).drain(..).collect();
        let deadline = tokio::time::Instant::now() + grace;
        for mut h in handles {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                h.abort();
            }
        }
    }

    /// The name an inline (synchronous-route) owner of a job goes by.
    pub fn inline_owner(&self) -> String {
        let n = self.next_inline.fetch_add(1, Ordering::Relaxed);
        format!("{}/inline-{n}", self.instance)
    }

    /// Whether the store lost its data within the retention (the keys of the jobs it lost
    /// may come back as replays): creates of keyed jobs look their talk up first then.
    pub(crate) fn store_lost_data_recently(&self) -> bool {
        self.store.lost_data_at().is_some_and(|t| {
            now_ms().saturating_sub(t) < ports::jobs::duration_ms(self.config.retention)
        })
    }

    /// A lease for `owner` from now.
    pub fn lease_for(&self, owner: &str) -> Lease {
        Lease {
            owner: owner.to_owned(),
            until_ms: now_ms().saturating_add(ports::jobs::duration_ms(self.config.lease)),
        }
    }

    pub(crate) fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Writes `job` (compare-and-set); a state change is logged and told to the events
    /// port once the store has it. A writer dropped between the commit and that call (a
    /// request cut off) tells nothing: an adapter that must not miss one reconciles from the
    /// store. The write that ends a job arms its callback in the same commit (see
    /// [`crate::callbacks`]), so that one can never be missed.
    pub(crate) async fn write(&self, mut job: Job, from: JobStatus) -> Result<Job, JobStoreError> {
        let armed = self.arm_callback(&mut job, from);
        let span = tracing::info_span!(
            "job.update",
            job.id = %job.id,
            job.status.from = %from,
            job.status.to = %job.status,
            job.version = i64::try_from(job.version).unwrap_or(i64::MAX),
        );
        let written = self.store.update(job).instrument(span).await?;
        if armed {
            self.callback_wake.notify_one();
        }
        if let Some(due) = ports::jobs::due_at(&written)
            && due < self.next_look_ms.load(Ordering::SeqCst)
        {
            self.replan.notify_one();
        }
        if written.status.is_terminal()
            && !from.is_terminal()
            && let Some(credits) = self.credits()
        {
            credits.settle_ended(&written, now_ms()).await;
        }
        if written.status != from {
            tracing::info!(
                job_id = %written.id,
                talk_id = written.talk_id.as_ref().map(|t| t.as_str()).unwrap_or(""),
                from = %from,
                to = %written.status,
                "job state changed"
            );
            self.events
                .job_changed(&JobEvent {
                    job: written.clone(),
                    from: Some(from),
                })
                .await;
        }
        self.bump();
        Ok(written)
    }

    fn renew_in_background(self: &Arc<Self>, id: JobId, owner: String) -> Renewer {
        let jobs = Arc::clone(self);
        Renewer(tokio::spawn(async move {
            let period = jobs.config.lease / 3;
            loop {
                tokio::time::sleep(period).await;
                match jobs
                    .store
                    .renew(&id, LeaseTerms::new(&owner, jobs.config.lease, now_ms()))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job_id = %id, %owner, "lost the job's lease");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %e, "could not renew a job lease")
                    }
                }
            }
        }))
    }

    /// A worker: claims and steps jobs while there are any, then sleeps until woken (a
    /// submit here, the look, another worker's claim). It never asks the store on a timer.
    async fn worker(self: Arc<Self>, name: String) {
        while !self.stopping.load(Ordering::SeqCst) {
            match self
                .store
                .claim(LeaseTerms::new(&name, self.config.lease, now_ms()))
                .await
            {
                Ok(Some(job)) => {
                    if self.claim_failing.swap(false, Ordering::SeqCst) {
                        tracing::info!(worker = %name, "claims succeed again");
                    }
                    // More may be runnable: one more worker tries (it sleeps again if not).
                    self.wake.notify_one();
                    let _renew = self.renew_in_background(job.id.clone(), name.clone());
                    let id = job.id.clone();
                    let span = tracing::info_span!(
                        "job.step",
                        otel.name = %format_args!("job.step {}", job.status),
                        job.id = %job.id,
                        job.status = %job.status,
                        job.priority = %job.priority,
                        job.polls = i64::from(job.polls),
                        worker = %name,
                    );
                    self.link_to_submit(&span, &job);
                    if let Err(e) = self.step(job, &name).instrument(span).await {
                        tracing::warn!(job_id = %id, worker = %name, error = %e, "job step not written");
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = self.stopped() => {}
                    }
                }
                Err(e) => {
                    // The look asks the store again every FAILED_LOOK and wakes a worker
                    // when a job is due: an unreachable store is one question per
                    // FAILED_LOOK, not one per worker. One warning per streak of failed
                    // claims (any worker's), so a claim that keeps failing while the look
                    // works (a script or ACL error) is seen.
                    if !self.claim_failing.swap(true, Ordering::SeqCst) {
                        tracing::warn!(worker = %name, error = %e, "could not claim a job; workers retry when the look finds one due");
                    } else {
                        tracing::debug!(worker = %name, error = %e, "could not claim a job");
                    }
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = self.stopped() => {}
                    }
                }
            }
        }
    }

    /// The instance's one look at the store: asks when the next job becomes claimable
    /// ([`JobStore::next_due`], one indexed read), sleeps until then (at most
    /// [`IDLE_LOOK`]) and wakes one worker when something is due. A write here that makes
    /// a job due sooner (a poll scheduled in 1 s) wakes the look early, and so does the
    /// store when another instance submitted a job ([`JobStore::woken`]: Redis pub/sub). So an idle instance
    /// asks the store once per [`IDLE_LOOK`], whatever `JOB_WORKERS` says; due polls, jobs
    /// of other instances and expired leases are found on time.
    async fn look(self: Arc<Self>) {
        let mut last_look = tokio::time::Instant::now();
        let mut woken_by_store = false;
        // Failed looks in a row: the first is a warning, the rest are debug lines until
        // one succeeds (an unreachable store is one warning, not one a second).
        let mut failed = 0u64;
        while !self.stopping.load(Ordering::SeqCst) {
            if woken_by_store {
                // A burst of submits elsewhere is one look here, not one per submit.
                tokio::time::sleep_until(last_look + COALESCE_LOOKS).await;
            }
            last_look = tokio::time::Instant::now();
            let now = now_ms();
            let answer = self.store.next_due(now).await;
            match &answer {
                Ok(_) if failed > 0 => {
                    tracing::info!(failed_looks = failed, "the job store answers again");
                    failed = 0;
                    // Workers that failed a claim sleep until woken.
                    self.wake.notify_one();
                }
                Ok(_) => {}
                Err(e) if failed == 0 => {
                    failed = 1;
                    tracing::warn!(error = %e, "could not look for due jobs; retrying every {FAILED_LOOK:?}");
                }
                Err(e) => {
                    failed += 1;
                    tracing::debug!(error = %e, "could not look for due jobs");
                }
            }
            let pause = match answer {
                Ok(Some(due)) if due <= now => {
                    self.wake.notify_one();
                    BUSY_LOOK
                }
                Ok(Some(due)) => Duration::from_millis(due - now).min(IDLE_LOOK),
                Ok(None) => IDLE_LOOK,
                Err(_) => FAILED_LOOK,
            };
            self.next_look_ms.store(
                now.saturating_add(ports::jobs::duration_ms(pause)),
                Ordering::SeqCst,
            );
            woken_by_store = false;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.replan.notified() => {}
                () = self.store.woken() => woken_by_store = true,
                () = self.stopped() => {}
            }
        }
    }

    async fn purger(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            let before = now_ms().saturating_sub(ports::jobs::duration_ms(self.config.retention));
            match self.store.purge(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "finished jobs past their retention purged"),
                Err(e) => tracing::warn!(error = %e, "could not purge old jobs"),
            }
            if let Some(credits) = self.credits() {
                let ended = credits.sweep(&*self.store, now_ms()).await;
                if ended > 0 {
                    tracing::info!(ended, "credit sweep: stale reservations settled");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(purge_period(self.config.retention)) => {}
                () = self.stopped() => {}
            }
        }
    }

    /// One step of a claimed job.
    async fn step(&self, job: Job, owner: &str) -> Result<Job, JobStoreError> {
        match job.status {
            JobStatus::Queued | JobStatus::Creating => {
                Ok(self.create(job, owner, CreateMode::Worker).await?.0)
            }
            JobStatus::Processing => self.poll(job, owner).await,
            _ => Ok(job),
        }
    }

    /// Keeps an inline job's lease alive while the request works on it (see [`Hold`]).
    pub fn hold(self: &Arc<Self>, id: &JobId, owner: &str) -> Hold {
        Hold {
            renewer: self.renew_in_background(id.clone(), owner.to_owned()),
            give_back: Some((Arc::clone(self), id.clone(), owner.to_owned())),
            abandon: None,
        }
    }

    /// As [`Jobs::hold`], for a request whose job has no `Idempotency-Key`: if the request
    /// is dropped because its caller left (not cut off at shutdown, see `slot`) before its
    /// talk was created, the job is cancelled, since nobody can ever ask for it: no talk is
    /// created (paid) for a caller who is gone. A keyed job goes on (its caller may replay).
    pub fn hold_for_caller(
        self: &Arc<Self>,
        id: &JobId,
        owner: &str,
        keyed: bool,
        slot: &TalkSlot,
    ) -> Hold {
        let mut hold = self.hold(id, owner);
        if !keyed {
            hold.abandon = Some(slot.clone());
        }
        hold
    }

    /// Gives `owner`'s claim on job `id` back if the job is `processing` (its talk exists,
    /// only polls are left); with `abandon`, cancels it if it is still `creating` without a
    /// talk. `false` if there was nothing to do.
    pub async fn give_back(
        &self,
        id: &JobId,
        owner: &str,
        abandon: bool,
    ) -> Result<bool, JobStoreError> {
        let Some(mut job) = self.store.get(id).await? else {
            return Ok(false);
        };
        let ours = job.lease.as_ref().is_some_and(|l| l.owner == owner);
        if !ours {
            return Ok(false);
        }
        let now = now_ms();
        match job.status {
            JobStatus::Processing => {
                job.lease = None;
                job.updated_ms = now;
                self.write(job, JobStatus::Processing).await?;
                self.wake.notify_one();
                Ok(true)
            }
            JobStatus::Creating if abandon && job.talk_id.is_none() => {
                job.record_attempt(Attempt {
                    worker: owner.to_owned(),
                    action: "abandon".to_owned(),
                    at_ms: now,
                    outcome: "the caller left before its talk was created".to_owned(),
                });
                job.status = JobStatus::Cancelled;
                job.finished_ms = Some(now);
                job.updated_ms = now;
                job.lease = None;
                self.write(job, JobStatus::Creating).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn spawn_give_back(self: &Arc<Self>, id: JobId, owner: String, abandon: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let jobs = Arc::clone(self);
        let task = runtime.spawn(async move {
            match jobs.give_back(&id, &owner, abandon).await {
                Ok(true) if abandon => tracing::info!(
                    job_id = %id,
                    "request ended before its job: the job was given back or, its caller gone \
                     before its talk was created, cancelled"
                ),
                Ok(true) => tracing::info!(
                    job_id = %id,
                    "request ended before its job: claim given back, the job goes on"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    job_id = %id,
                    error = %e,
                    "could not give a dropped request's claim back; it runs out after JOB_LEASE_SECS"
                ),
            }
        });
        let mut tasks = lock(&self.giving_back);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Waits up to `within` for the claims dropped requests are giving back (at shutdown,
    /// after the cut-off).
    pub async fn settle(&self, within: Duration) {
        let tasks: Vec<JoinHandle<()>> = lock(&self.giving_back).drain(..).collect();
        let _ = tokio::time::timeout(within, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
    }

    /// Waits until `done(job)` holds or `deadline` passes; the job as last read.
    pub async fn wait_for(
        &self,
        id: &JobId,
        deadline: tokio::time::Instant,
        done: impl Fn(&Job) -> bool,
    ) -> Result<Job, AppError> {
        let mut changed = self.changed.subscribe();
        loop {
            let job = self
                .store
                .get(id)
                .await
                .map_err(|e| self.store_error(e))?
                // It was there when the wait began: only lost data takes a job away then
                // (a finished one is purged after its retention, long after any wait).
                .ok_or_else(|| AppError::LostJob(id.clone()))?;
            if done(&job) || tokio::time::Instant::now() >= deadline {
                return Ok(job);
            }
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep(REATTACH_POLL) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_runs_a_tenth_of_the_retention_apart_within_1_to_60_s() {
        assert_eq!(
            purge_period(Duration::from_secs(7 * 24 * 3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            purge_period(Duration::from_secs(100)),
            Duration::from_secs(10)
        );
        assert_eq!(
            purge_period(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(purge_period(Duration::ZERO), Duration::from_secs(1));
    }
}
