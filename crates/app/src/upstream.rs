//! The gate in front of D-ID: the adaptive limit and the circuit breaker, shared by a fleet.
//!
//! [`Upstream`] wraps the service's limiter (it is itself a [`ConcurrencyLimiter`], so the
//! D-ID client takes its slots through it) and is told of every exchange's outcome
//! ([`Upstream::observe`], fed by the client's exchange observer):
//! - **Adaptive limit** (`LIMIT_MODE=adaptive`): the outcomes since the last report are folded
//!   into the learned limit ([`domain::LimitState`]) and the limiter's limit follows it.
//! - **Breaker**: the same outcomes move the breaker ([`domain::BreakerState`]); while it is
//!   open an acquire below `critical` fails at once with
//!   [`LimiterError::UpstreamUnavailable`] (its `retry_after` is the rest of the cooldown), a
//!   `critical` one waits for the breaker to close or for its turn to probe.
//!
//! **One state for the fleet.** Both states live in [`SharedRecords`] (Redis when the limiter
//! is on Redis, in memory otherwise): a report reads the record, folds this instance's window
//! into it and stores it by compare-and-swap, folding again on a conflict. A drop (a 429 or a
//! timeout of a request sent under the current limit), the first failure of a window (so an
//! instance learns at its first failure that another one opened the breaker), every failure
//! while the fleet has a run of failures going, a burst of failures, and any outcome while the
//! breaker is not closed are reported at once; anything else at most every
//! [`UpstreamSettings::report_every`]. An instance that only sheds (it sends nothing) reloads
//! the breaker at that pace while requests keep coming, to see another's probe close it.
//! While failures come in a row anywhere in the fleet, an acquire reads the breaker before it
//! lets a request through (one read per request, only then), and one that queued in the limiter
//! is asked again once it has its slot, so nothing goes out after the breaker opened elsewhere.
//! With nothing sent and nobody asking, nothing is reported: idle means idle.
//!
//! **A broken store is reported, not fatal.** When the records cannot be read or stored, this
//! instance folds its windows into its own copy (logged once, shown in [`UpstreamStats`]),
//! and goes back to the shared record when the store answers again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use domain::{
    Admission, Admit, BreakerChange, BreakerMode, BreakerPolicy, BreakerState, LimitChange,
    LimitPolicy, LimitReason, LimitState, Outcomes, Priority,
};
use ports::{
    Acquire, ConcurrencyLimiter, LimiterError, LimiterStats, RecordsError, SharedRecords, Swap,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::now_ms;
use domain::adaptive::Window;

/// The record the learned limit lives in.
pub const LIMIT_RECORD: &str = "adaptive-limit";
/// The record the breaker lives in.
pub const BREAKER_RECORD: &str = "breaker";
/// How often a compare-and-swap is tried again after a conflict before the window waits
/// for the next report.
const MAX_SWAPS: usize = 8;
/// Limit changes remembered for `/stats`.
const HISTORY: usize = 32;

/// What the gate does (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamSettings {
    /// The adaptive limit's policy; `None` for a fixed limit.
    pub adaptive: Option<LimitPolicy>,
    /// The breaker's policy; `None` for no breaker.
    pub breaker: Option<BreakerPolicy>,
    /// The longest a window waits before it is reported (default 250 ms).
    pub report_every: Duration,
    /// Whether a 429 storm opens the breaker under a fixed limit (default `true`). The
    /// service turns it off while did-client paces its calls: the pacer answers D-ID's 429s
    /// then, and a breaker opening on them too would stop what the pacer slows.
    pub storms_open: bool,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            adaptive: None,
            breaker: Some(BreakerPolicy::default()),
            report_every: Duration::from_millis(250),
            storms_open: true,
        }
    }
}

/// How one exchange with D-ID ended, as the gate counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// D-ID answered (2xx, or a 4xx other than 429).
    Answered,
    /// D-ID answered 429.
    Throttled,
    /// No answer in time.
    TimedOut,
    /// A 5xx, or a cut or refused connection.
    Failed,
}

impl Outcome {
    /// The outcome of an answer with `status`.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            429 => Outcome::Throttled,
            500..=599 => Outcome::Failed,
            _ => Outcome::Answered,
        }
    }
}

/// One finished exchange, for [`Upstream::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How it ended.
    pub outcome: Outcome,
    /// From sending to the last byte of the answer.
    pub took: Duration,
    /// How long it waited for its slot.
    pub waited: Duration,
    /// The answer's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

/// The gate's state and counts, for `/stats`, `/health` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamStats {
    /// `"adaptive"` or `"fixed"`.
    pub limit_mode: &'static str,
    /// The learned limit (adaptive mode).
    pub adaptive: Option<AdaptiveStats>,
    /// The breaker (`None` when it is off).
    pub breaker: Option<BreakerStats>,
    /// Whether the shared records answered the last call (`false`: this instance runs on its
    /// own copy of the states).
    pub shared: bool,
    /// Calls to the shared records that failed.
    pub records_errors: u64,
}

/// The learned limit, in `/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptiveStats {
    /// The limit now.
    pub limit: u32,
    /// The floor.
    pub floor: u32,
    /// The ceiling.
    pub ceiling: u32,
    /// The level found too high and until when (ms since the epoch) it is not tried.
    pub held_level: Option<u32>,
    /// Until when `held_level` is held (ms since the epoch).
    pub held_until_ms: Option<u64>,
    /// Changes by the fleet so far (as stored).
    pub changes: u64,
    /// Changes this instance made, by reason.
    pub changes_here: Vec<(LimitReason, u64)>,
    /// The last changes this instance made or saw, newest last (at most 32).
    pub recent: Vec<LimitChange>,
}

/// The breaker, in `/stats` and `/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerStats {
    /// `closed`, `open` or `half_open`.
    pub state: BreakerMode,
    /// Until when it stays open (ms since the epoch), while open.
    pub open_until_ms: Option<u64>,
    /// Why it last opened.
    pub reason: Option<domain::TripReason>,
    /// How often it opened (the fleet, as stored).
    pub trips: u64,
    /// Requests this instance shed, by priority (`low`, `normal`, `high`, `critical`).
    pub shed: [u64; 4],
    /// Probes this instance sent.
    pub probes: u64,
    /// The last change of state.
    pub last_change: Option<BreakerChange>,
}

/// A state as last read or stored, with its record version (`None`: never stored, or kept
/// locally while the store was down).
#[derive(Debug, Clone)]
struct Known<T> {
    state: T,
    version: Option<u64>,
}

/// What the acquire path reads without a lock: the breaker as last known.
#[derive(Debug, Clone)]
struct View {
    breaker: Option<BreakerState>,
}

/// What this instance saw since its last report.
#[derive(Debug, Default)]
struct Pending {
    window: Window,
    outcomes: Outcomes,
    /// Requests were shed or waited for the breaker since the last report.
    demand: bool,
}

/// The gate (see the module docs).
pub struct Upstream {
    inner: Arc<dyn ConcurrencyLimiter>,
    records: Arc<dyn SharedRecords>,
    settings: UpstreamSettings,
    pending: Mutex<Pending>,
    limit: Mutex<Option<Known<LimitState>>>,
    breaker: Mutex<Option<Known<BreakerState>>>,
    /// The limit last given to the inner limiter.
    applied: Mutex<Option<u32>>,
    view: watch::Sender<View>,
    wake: Arc<Notify>,
    urgent: AtomicBool,
    shared: AtomicBool,
    records_errors: AtomicU64,
    shed: [AtomicU64; 4],
    probes: AtomicU64,
    changes_here: [AtomicU64; 5],
    recent: Mutex<std::collections::VecDeque<LimitChange>>,
    reporter: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.reporter).take() {
            task.abort();
        }
    }
}

impl Upstream {
    /// The gate over `inner`, its states in `records`. In adaptive mode the learned limit is
    /// read from the records (another instance, or an earlier run, learned it) or starts at
    /// the limiter's own limit (the stored one, on Redis), and the limiter is set to it.
    /// Spawns the reporter, which ends when the gate is dropped.
    pub async fn start(
        inner: Arc<dyn ConcurrencyLimiter>,
        records: Arc<dyn SharedRecords>,
        settings: UpstreamSettings,
    ) -> Arc<Upstream> {
        let (view, _) = watch::channel(View { breaker: None });
        let gate = Arc::new(Upstream {
            inner,
            records,
            settings,
            pending: Mutex::new(Pending::default()),
            limit: Mutex::new(None),
            breaker: Mutex::new(None),
            applied: Mutex::new(None),
            view,
            wake: Arc::new(Notify::new()),
            urgent: AtomicBool::new(false),
            shared: AtomicBool::new(true),
            records_errors: AtomicU64::new(0),
            shed: Default::default(),
            probes: AtomicU64::new(0),
            changes_here: Default::default(),
            recent: Mutex::new(std::collections::VecDeque::new()),
            reporter: Mutex::new(None),
        });
        let now = now_ms();
        if let Some(policy) = &gate.settings.adaptive {
            let stats = gate.inner.stats().await;
            let start = stats
                .backend
                .failover
                .as_ref()
                .map(|f| f.fleet_limit)
                .filter(|l| *l > 0)
                .unwrap_or(stats.max_concurrent);
            let known = match gate.load::<LimitState>(LIMIT_RECORD).await {
                Ok(Some(known)) => known,
                Ok(None) | Err(_) => Known {
                    state: LimitState::new(start, policy, now),
                    version: None,
                },
            };
            tracing::info!(
                limit = known.state.limit,
                floor = policy.floor,
                ceiling = policy.ceiling,
                learned = known.version.is_some(),
                "adaptive limit on"
            );
            gate.apply_limit(known.state.limit).await;
            *lock(&gate.limit) = Some(known);
        }
        if gate.settings.breaker.is_some() {
            let known = match gate.load::<BreakerState>(BREAKER_RECORD).await {
                Ok(Some(known)) => known,
                Ok(None) | Err(_) => Known {
                    state: BreakerState::new(now),
                    version: None,
                },
            };
            gate.publish(Some(known.state.clone()));
            *lock(&gate.breaker) = Some(known);
        }
        if gate.settings.adaptive.is_some() || gate.settings.breaker.is_some() {
            let task = tokio::spawn(report(Arc::downgrade(&gate), Arc::clone(&gate.wake)));
            *lock(&gate.reporter) = Some(task);
        }
        gate
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Counts one finished exchange; a drop, a burst of failures or anything while the
    /// breaker is not closed is reported at once.
    pub fn observe(&self, sample: &Sample) {
        if self.settings.adaptive.is_none() && self.settings.breaker.is_none() {
            return;
        }
        let now = now_ms();
        let took_ms = u64::try_from(sample.took.as_millis()).unwrap_or(u64::MAX);
        let sent_ms = now.saturating_sub(took_ms);
        let urgent;
        let first;
        {
            let mut p = lock(&self.pending);
            first = p.window.is_empty() && p.outcomes.is_empty();
            let w = &mut p.window;
            w.saturated |= !sample.waited.is_zero();
            match sample.outcome {
                Outcome::Answered => {
                    w.answered = w.answered.saturating_add(1);
                    w.latency_sum_us = w
                        .latency_sum_us
                        .saturating_add(u64::try_from(sample.took.as_micros()).unwrap_or(u64::MAX));
                }
                Outcome::Throttled => {
                    w.throttled = w.throttled.saturating_add(1);
                    w.last_drop_sent_ms = w.last_drop_sent_ms.max(sent_ms);
                }
                Outcome::TimedOut => {
                    w.timed_out = w.timed_out.saturating_add(1);
                    w.last_drop_sent_ms = w.last_drop_sent_ms.max(sent_ms);
                }
                Outcome::Failed => {}
            }
            let o = &mut p.outcomes;
            match sample.outcome {
                Outcome::Answered => {
                    o.answered = o.answered.saturating_add(1);
                    o.trailing_failed = 0;
                    o.last_answered_sent_ms = o.last_answered_sent_ms.max(sent_ms);
                }
                Outcome::Throttled => {
                    o.throttled = o.throttled.saturating_add(1);
                    if let Some(ra) = sample.retry_after {
                        o.retry_after_ms = o
                            .retry_after_ms
                            .max(u64::try_from(ra.as_millis()).unwrap_or(u64::MAX));
                    }
                }
                Outcome::TimedOut | Outcome::Failed => {
                    o.failed = o.failed.saturating_add(1);
                    o.trailing_failed = o.trailing_failed.saturating_add(1);
                    o.last_failed_sent_ms = o.last_failed_sent_ms.max(sent_ms);
                }
            }
            let lowered = lock(&self.limit).as_ref().map_or(0, |k| k.state.lowered_ms);
            let breaker_busy = !matches!(self.breaker_mode(now), None | Some(BreakerMode::Closed));
            let failures_due = self
                .settings
                .breaker
                .is_some_and(|b| p.outcomes.failed >= b.min_failures);
            // The first failure of a window is reported at once too: the report reads the
            // fleet's breaker, which another instance may have opened already. So is every
            // failure while the fleet's last known state has a run of failures going: the
            // breaker then opens at the run's tenth failure wherever it happens, and every
            // instance hears of it at its next failure (one report per failure, only while
            // failures come in a row).
            let failure = matches!(sample.outcome, Outcome::Failed | Outcome::TimedOut);
            let in_a_run = self
                .view
                .borrow()
                .breaker
                .as_ref()
                .is_some_and(|b| b.consecutive > 0);
            let first_failure =
                self.settings.breaker.is_some() && failure && (p.outcomes.failed == 1 || in_a_run);
            urgent = self.settings.adaptive.is_some()
                && p.window.drops() > 0
                && p.window.last_drop_sent_ms >= lowered
                || p.outcomes.retry_after_ms > 0
                || failures_due
                || first_failure
                || breaker_busy;
        }
        if urgent {
            self.urgent.store(true, Ordering::Release);
            self.wake.notify_one();
        } else if first {
            self.wake.notify_one();
        }
    }

    /// The gate's state and counts.
    pub fn stats(&self) -> UpstreamStats {
        let now = now_ms();
        let adaptive = self.settings.adaptive.map(|policy| {
            let limit = lock(&self.limit);
            let state = limit.as_ref().map(|k| &k.state);
            let held = state.and_then(|s| s.held).filter(|h| h.until_ms > now);
            AdaptiveStats {
                limit: state.map_or(policy.floor, |s| s.limit),
                floor: policy.floor,
                ceiling: policy.ceiling,
                held_level: held.map(|h| h.level),
                held_until_ms: held.map(|h| h.until_ms),
                changes: state.map_or(0, |s| s.changes),
                changes_here: LimitReason::ALL
                    .iter()
                    .zip(&self.changes_here)
                    .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
                    .collect(),
                recent: lock(&self.recent).iter().copied().collect(),
            }
        });
        let breaker = self.settings.breaker.map(|_| {
            let known = lock(&self.breaker);
            let state = known.as_ref().map(|k| &k.state);
            let mode = state.map_or(BreakerMode::Closed, |s| s.mode(now));
            BreakerStats {
                state: mode,
                open_until_ms: state
                    .filter(|_| mode == BreakerMode::Open)
                    .map(|s| s.open_until_ms),
                reason: state.and_then(|s| s.reason),
                trips: state.map_or(0, |s| s.trips),
                shed: std::array::from_fn(|i| self.shed[i].load(Ordering::Relaxed)),
                probes: self.probes.load(Ordering::Relaxed),
                last_change: state.and_then(|s| s.last_change),
            }
        });
        UpstreamStats {
            limit_mode: if self.settings.adaptive.is_some() {
                "adaptive"
            } else {
                "fixed"
            },
            adaptive,
            breaker,
            shared: self.shared.load(Ordering::Relaxed),
            records_errors: self.records_errors.load(Ordering::Relaxed),
        }
    }

    /// The breaker's mode now, `None` without a breaker.
    pub fn breaker_mode(&self, now_ms: u64) -> Option<BreakerMode> {
        self.view.borrow().breaker.as_ref().map(|b| b.mode(now_ms))
    }

    /// Whether the breaker lets `priority` send now (shedding counts it).
    fn admit_now(&self, priority: Priority) -> Admit {
        let (Some(policy), Some(state)) = (&self.settings.breaker, &self.view.borrow().breaker)
        else {
            return Admit::Send;
        };
        state.admit(priority, policy, now_ms())
    }

    fn note_shed(&self, priority: Priority) {
        self.shed[priority.index()].fetch_add(1, Ordering::Relaxed);
        self.note_demand();
    }

    /// Requests are being held back: keep the breaker fresh (see the module docs).
    fn note_demand(&self) {
        let first = {
            let mut p = lock(&self.pending);
            let first = !p.demand;
            p.demand = true;
            first
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// Waits until the breaker lets `admission` send (a probe claimed, or closed), or fails
    /// with `UpstreamUnavailable` when it sheds it or `deadline` passes.
    async fn gate(&self, priority: Priority, deadline: Instant) -> Result<(), LimiterError> {
        let mut changes = self.view.subscribe();
        loop {
            let now = now_ms();
            match self.admit_now(priority) {
                Admit::Send => return Ok(()),
                Admit::Shed { retry_after_ms } => return Err(self.shed(priority, retry_after_ms)),
                Admit::Probe => {
                    if self.claim_probe().await {
                        self.probes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(priority = %priority, "breaker half-open: sending a probe");
                        return Ok(());
                    }
                }
                Admit::Wait { until_ms } => {
                    self.note_demand();
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(self.shed(priority, until_ms.saturating_sub(now)));
                    }
                    let nap = Duration::from_millis(until_ms.saturating_sub(now))
                        .min(self.settings.report_every)
                        .min(left)
                        .max(Duration::from_millis(1));
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep(nap) => {}
                    }
                }
            }
        }
    }

    /// Whether the fleet's breaker, as last known here, is closed with a run of failures
    /// going (it may open at any moment).
    fn in_a_run(&self) -> bool {
        self.view
            .borrow()
            .breaker
            .as_ref()
            .is_some_and(|b| b.consecutive > 0 && b.mode(now_ms()) == BreakerMode::Closed)
    }

    /// Reads the fleet's breaker now.
    async fn refresh(&self) {
        if let Ok(Some(known)) = self.load::<BreakerState>(BREAKER_RECORD).await {
            self.adopt_breaker(Some(known));
        }
    }

    /// The end of an acquire that queued in the inner limiter: the breaker is asked again
    /// (read afresh while failures come in a row), since it may have opened meanwhile.
    async fn after_queue(
        &self,
        admission: &Admission,
        wait: Duration,
        started: Instant,
        acquire: Acquire<'_>,
    ) -> Result<ports::Permit, LimiterError> {
        let permit = acquire.await?;
        if self.in_a_run() {
            self.refresh().await;
        }
        match self.admit_now(admission.priority) {
            Admit::Send => Ok(permit),
            held => {
                drop(permit);
                self.held_back(admission, wait, started, held).await
            }
        }
    }

    /// A request the breaker does not let through now (`decision` is not `Send`): shed at
    /// once, or wait for the probe or the close (`gate`) and take its slot then.
    async fn held_back(
        &self,
        admission: &Admission,
        wait: Duration,
        started: Instant,
        decision: Admit,
    ) -> Result<ports::Permit, LimiterError> {
        if let Admit::Shed { retry_after_ms } = decision {
            return Err(self.shed(admission.priority, retry_after_ms));
        }
        self.gate(admission.priority, started + wait).await?;
        let left = wait.saturating_sub(started.elapsed());
        self.inner.acquire(admission, left).await
    }

    /// Counts a shed request and makes its error.
    fn shed(&self, priority: Priority, retry_after_ms: u64) -> LimiterError {
        self.note_shed(priority);
        LimiterError::UpstreamUnavailable {
            retry_after: Duration::from_millis(retry_after_ms.max(1)),
        }
    }

    /// Claims the half-open breaker's probe for this request: `true` if it has the way.
    async fn claim_probe(&self) -> bool {
        let Some(policy) = self.settings.breaker else {
            return true;
        };
        for _ in 0..MAX_SWAPS {
            let Some(known) = lock(&self.breaker).clone() else {
                return true;
            };
            let Some(next) = known.state.claim_probe(&policy, now_ms()) else {
                return false;
            };
            match self.store(BREAKER_RECORD, &known, &next).await {
                Stored::Yes(version) | Stored::Local(version) => {
                    self.set_breaker(next, version);
                    return true;
                }
                Stored::Conflict(current) => self.adopt_breaker(current),
            }
        }
        false
    }

    /// Reports what is pending: folds it into the shared states.
    async fn flush(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if let Some(policy) = self.settings.adaptive
            && !pending.window.is_empty()
        {
            self.fold_limit(&policy, &pending.window).await;
        }
        if let Some(policy) = self.settings.breaker {
            let closed = self.breaker_mode(now_ms()) == Some(BreakerMode::Closed);
            if !pending.outcomes.is_empty() {
                self.fold_breaker(&policy, &pending.outcomes).await;
            } else if pending.demand && !closed {
                // Nothing sent here: see whether another instance's probe closed it.
                if let Ok(Some(known)) = self.load::<BreakerState>(BREAKER_RECORD).await {
                    self.adopt_breaker(Some(known));
                }
            }
        }
    }

    async fn fold_limit(&self, policy: &LimitPolicy, window: &Window) {
        for _ in 0..MAX_SWAPS {
            let Some(known) = lock(&self.limit).clone() else {
                return;
            };
            let now = now_ms();
            let (next, change) = known.state.apply(window, policy, now);
            if change.is_none() && next == known.state {
                return;
            }
            match self.store(LIMIT_RECORD, &known, &next).await {
                Stored::Yes(version) | Stored::Local(version) => {
                    self.took_limit(next, version, change).await;
                    return;
                }
                Stored::Conflict(current) => {
                    if let Some(current) = current {
                        self.adopt_limit(current).await;
                    }
                }
            }
        }
    }

    async fn fold_breaker(&self, policy: &BreakerPolicy, outcomes: &Outcomes) {
        let throttle_counts = match (&self.settings.adaptive, &*lock(&self.limit)) {
            (Some(p), Some(known)) => known.state.limit <= p.floor,
            _ => self.settings.storms_open,
        };
        for _ in 0..MAX_SWAPS {
            let Some(known) = lock(&self.breaker).clone() else {
                return;
            };
            let (next, change) = known
                .state
                .record(outcomes, throttle_counts, policy, now_ms());
            if next == known.state {
                return;
            }
            match self.store(BREAKER_RECORD, &known, &next).await {
                Stored::Yes(version) | Stored::Local(version) => {
                    if let Some(change) = change {
                        log_breaker(&change, &next);
                    }
                    self.set_breaker(next, version);
                    return;
                }
                Stored::Conflict(current) => self.adopt_breaker(current),
            }
        }
    }

    /// Takes the stored breaker state (another instance changed it).
    fn adopt_breaker(&self, current: Option<Known<BreakerState>>) {
        if let Some(current) = current {
            let mine = lock(&self.breaker).as_ref().map(|k| k.state.clone());
            if let (Some(mine), Some(change)) = (&mine, current.state.last_change)
                && mine.last_change != Some(change)
            {
                log_breaker(&change, &current.state);
            }
            self.set_breaker(current.state, current.version);
        }
    }

    fn set_breaker(&self, state: BreakerState, version: Option<u64>) {
        self.publish(Some(state.clone()));
        *lock(&self.breaker) = Some(Known { state, version });
    }

    fn publish(&self, breaker: Option<BreakerState>) {
        self.view.send_replace(View { breaker });
    }

    /// Keeps `next`, stored with `version` by this instance (logging `change`), and gives its
    /// limit to the limiter.
    async fn took_limit(
        &self,
        next: LimitState,
        version: Option<u64>,
        change: Option<LimitChange>,
    ) {
        if let Some(change) = change {
            self.changed_limit(change, true);
        }
        let limit = next.limit;
        *lock(&self.limit) = Some(Known {
            state: next,
            version,
        });
        self.apply_limit(limit).await;
    }

    /// Takes the stored limit state (another instance changed it), and applies its limit.
    async fn adopt_limit(&self, current: Known<LimitState>) {
        let before = lock(&self.limit).as_ref().map(|k| k.state.limit);
        if let Some(change) = current.state.last_change
            && before != Some(current.state.limit)
        {
            self.changed_limit(change, false);
        }
        let limit = current.state.limit;
        *lock(&self.limit) = Some(current);
        self.apply_limit(limit).await;
    }

    fn changed_limit(&self, change: LimitChange, here: bool) {
        if here {
            if let Some(i) = LimitReason::ALL.iter().position(|r| *r == change.reason) {
                self.changes_here[i].fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                from = change.from,
                to = change.to,
                reason = %change.reason,
                "adaptive limit changed"
            );
        }
        let mut recent = lock(&self.recent);
        if recent.back() != Some(&change) {
            if recent.len() >= HISTORY {
                recent.pop_front();
            }
            recent.push_back(change);
        }
    }

    /// Gives `limit` to the inner limiter, once per change.
    async fn apply_limit(&self, limit: u32) {
        {
            let mut applied = lock(&self.applied);
            if *applied == Some(limit) {
                return;
            }
            *applied = Some(limit);
        }
        if let Err(e) = self.inner.set_limit(limit).await {
            tracing::warn!(limit, error = %e, "the limiter did not take the adaptive limit");
            *lock(&self.applied) = None;
        }
    }

    /// Reads a record; a store error is counted and logged (once per outage).
    async fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<Known<T>>, ()> {
        match self.records.load(name).await {
            Ok(None) => {
                self.store_answered();
                Ok(None)
            }
            Ok(Some(v)) => {
                self.store_answered();
                match serde_json::from_str(&v.value) {
                    Ok(state) => Ok(Some(Known {
                        state,
                        version: Some(v.version),
                    })),
                    Err(e) => {
                        // Written by another build, or damaged: start over from it.
                        tracing::warn!(record = name, error = %e, "a shared record did not parse; starting it over");
                        Ok(None)
                    }
                }
            }
            Err(e) => {
                self.store_failed(name, &e);
                Err(())
            }
        }
    }

    /// Stores `next` over `known` by compare-and-swap.
    async fn store<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        known: &Known<T>,
        next: &T,
    ) -> Stored<T> {
        let value = match serde_json::to_string(next) {
            Ok(v) => v,
            Err(_) => return Stored::Local(known.version),
        };
        match self.records.swap(name, known.version, &value).await {
            Ok(Swap::Stored(version)) => {
                self.store_answered();
                Stored::Yes(Some(version))
            }
            Ok(Swap::Conflict(current)) => {
                self.store_answered();
                let current = current.and_then(|v| {
                    serde_json::from_str(&v.value).ok().map(|state| Known {
                        state,
                        version: Some(v.version),
                    })
                });
                match current {
                    Some(current) => Stored::Conflict(Some(current)),
                    // Gone (Redis lost its data) or unreadable: create it anew.
                    None => match self.records.swap(name, None, &value).await {
                        Ok(Swap::Stored(version)) => Stored::Yes(Some(version)),
                        _ => Stored::Conflict(None),
                    },
                }
            }
            Err(e) => {
                self.store_failed(name, &e);
                // Keep the old version: once the store answers, the swap conflicts and the
                // stored state wins, with this instance's next window folded into it.
                Stored::Local(known.version)
            }
        }
    }

    fn store_answered(&self) {
        if !self.shared.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "shared records answer again: the fleet's limit and breaker are shared again"
            );
        }
    }

    fn store_failed(&self, name: &str, e: &RecordsError) {
        self.records_errors.fetch_add(1, Ordering::Relaxed);
        if self.shared.swap(false, Ordering::Relaxed) {
            tracing::warn!(record = name, error = %e, "shared records unavailable: this instance keeps its own limit and breaker until they answer");
        }
    }
}

/// What a compare-and-swap did.
enum Stored<T> {
    /// Stored, with this version.
    Yes(Option<u64>),
    /// The store failed: kept locally (the old version).
    Local(Option<u64>),
    /// Someone else stored first: this is the record now.
    Conflict(Option<Known<T>>),
}

fn log_breaker(change: &BreakerChange, state: &BreakerState) {
    match change.to {
        BreakerMode::Open => tracing::warn!(
            from = %change.from,
            reason = change.reason.map(|r| r.as_str()),
            cooldown_ms = state.cooldown_ms,
            "breaker open: not sending to D-ID"
        ),
        to => tracing::info!(from = %change.from, to = %to, "breaker state changed"),
    }
}

/// The reporter: waits for something to report, batches for up to `report_every` unless it
/// is urgent, and reports. It holds the gate only while it reports, so dropping the gate
/// ends it.
async fn report(gate: Weak<Upstream>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(g) = gate.upgrade() else { return };
        if !g.urgent.swap(false, Ordering::AcqRel) {
            let every = g.settings.report_every;
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
        g.urgent.store(false, Ordering::Release);
        g.flush().await;
        drop(g);
    }
}

#[async_trait]
impl ConcurrencyLimiter for Upstream {
    fn acquire<'a>(&'a self, admission: &'a Admission, wait: Duration) -> Acquire<'a> {
        match self.admit_now(admission.priority) {
            Admit::Send if self.settings.breaker.is_none() => self.inner.acquire(admission, wait),
            Admit::Send if !self.in_a_run() => {
                let acquire = self.inner.acquire(admission, wait);
                if acquire.is_ready() {
                    return acquire;
                }
                // It queued: the breaker may open while it waits, and a request let through
                // before must not be sent after.
                Acquire::pending(self.after_queue(admission, wait, Instant::now(), acquire))
            }
            // Failures are coming in a row somewhere in the fleet: the breaker may have opened
            // on another instance a moment ago. Read it before letting this one through.
            Admit::Send => Acquire::pending(async move {
                let started = Instant::now();
                self.refresh().await;
                match self.admit_now(admission.priority) {
                    Admit::Send => {
                        let acquire = self.inner.acquire(admission, wait);
                        self.after_queue(admission, wait, started, acquire).await
                    }
                    held => self.held_back(admission, wait, started, held).await,
                }
            }),
            Admit::Shed { retry_after_ms } => {
                Acquire::ready(Err(self.shed(admission.priority, retry_after_ms)))
            }
            held => Acquire::pending(self.held_back(admission, wait, Instant::now(), held)),
        }
    }

    async fn stats(&self) -> LimiterStats {
        self.inner.stats().await
    }

    /// In adaptive mode an operator's limit is stored as the learned one (the fleet follows
    /// it, and learns on from there); otherwise it goes to the limiter.
    async fn set_limit(&self, max_concurrent: u32) -> Result<(), LimiterError> {
        if max_concurrent == 0 {
            return Err(LimiterError::InvalidLimit { given: 0 });
        }
        let Some(policy) = self.settings.adaptive else {
            return self.inner.set_limit(max_concurrent).await;
        };
        for _ in 0..MAX_SWAPS {
            let Some(known) = lock(&self.limit).clone() else {
                break;
            };
            let (next, change) = known.state.set(max_concurrent, &policy, now_ms());
            match self.store(LIMIT_RECORD, &known, &next).await {
                Stored::Yes(version) | Stored::Local(version) => {
                    // An operator's limit goes to the limiter even if it was applied before.
                    *lock(&self.applied) = None;
                    self.took_limit(next, version, change).await;
                    return Ok(());
                }
                Stored::Conflict(Some(current)) => {
                    *lock(&self.limit) = Some(current);
                }
                Stored::Conflict(None) => {}
            }
        }
        Err(LimiterError::Unavailable {
            message: "the learned limit kept changing; try again".to_owned(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // No section leaves the state half-updated, so a poisoned lock is recovered.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(waited_ms: u64) -> Sample {
        Sample {
            outcome: Outcome::Answered,
            took: Duration::from_millis(20),
            waited: Duration::from_millis(waited_ms),
            retry_after: None,
        }
    }

    #[tokio::test]
    async fn answers_that_waited_raise_the_limit() {
        let limiter: Arc<dyn ConcurrencyLimiter> = Arc::new(limiter_memory::MemoryLimiter::new(1));
        let gate = Upstream::start(
            limiter.clone(),
            Arc::new(limiter_memory::MemoryRecords::new()),
            UpstreamSettings {
                adaptive: Some(LimitPolicy::new(1, 10)),
                breaker: None,
                report_every: Duration::from_millis(50),
                storms_open: true,
            },
        )
        .await;
        let end = Instant::now() + Duration::from_millis(2_300);
        while Instant::now() < end {
            gate.observe(&answered(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(gate.stats().adaptive.unwrap().limit, 3);
        assert_eq!(limiter.stats().await.max_concurrent, 3);
    }

    fn failed() -> Sample {
        Sample {
            outcome: Outcome::Failed,
            took: Duration::from_millis(1),
            waited: Duration::ZERO,
            retry_after: None,
        }
    }

    async fn breaker_gate(limit: u32) -> (Arc<Upstream>, Arc<dyn ConcurrencyLimiter>) {
        let limiter: Arc<dyn ConcurrencyLimiter> =
            Arc::new(limiter_memory::MemoryLimiter::new(limit));
        let gate = Upstream::start(
            limiter.clone(),
            Arc::new(limiter_memory::MemoryRecords::new()),
            UpstreamSettings {
                adaptive: None,
                breaker: Some(BreakerPolicy::default()),
                report_every: Duration::from_millis(20),
                storms_open: true,
            },
        )
        .await;
        (gate, limiter)
    }

    async fn opened(gate: &Upstream) {
        for _ in 0..10 {
            gate.observe(&failed());
        }
        let started = Instant::now();
        while gate.breaker_mode(now_ms()) != Some(BreakerMode::Open) {
            assert!(started.elapsed() < Duration::from_secs(2), "never opened");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_request_queued_before_the_breaker_opened_is_not_sent_after() {
        let (gate, _) = breaker_gate(1).await;
        let low = Admission::from(Priority::Low);
        let held = gate.acquire(&low, Duration::from_secs(1)).await.unwrap();
        let queued = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let low = Admission::from(Priority::Low);
                gate.acquire(&low, Duration::from_secs(5)).await.map(drop)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        opened(&gate).await;
        drop(held);
        let result = queued.await.unwrap();
        assert!(
            matches!(result, Err(LimiterError::UpstreamUnavailable { .. })),
            "{result:?}"
        );
        assert_eq!(gate.stats().breaker.unwrap().shed[Priority::Low.index()], 1);
    }

    #[tokio::test]
    async fn while_open_low_is_refused_at_once_and_critical_waits_for_the_probe() {
        let (gate, inner) = breaker_gate(4).await;
        opened(&gate).await;
        let low = Admission::from(Priority::Low);
        let refused = gate.acquire(&low, Duration::from_secs(5));
        assert!(refused.is_ready(), "a shed is decided at once");
        assert!(matches!(
            refused.await,
            Err(LimiterError::UpstreamUnavailable { retry_after }) if retry_after <= Duration::from_secs(1)
        ));
        // A critical request waits out the cooldown (1 s) and is let through as the probe.
        let critical = Admission::from(Priority::Critical);
        let started = Instant::now();
        let probe = gate
            .acquire(&critical, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(gate.breaker_mode(now_ms()), Some(BreakerMode::HalfOpen));
        assert_eq!(inner.stats().await.active, 1, "the probe holds a real slot");
        // While it is out, another critical waits; its answer closes the breaker for both.
        let second = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let critical = Admission::from(Priority::Critical);
                gate.acquire(&critical, Duration::from_secs(5))
                    .await
                    .map(drop)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        gate.observe(&answered(0));
        drop(probe);
        second.await.unwrap().unwrap();
        assert_eq!(gate.breaker_mode(now_ms()), Some(BreakerMode::Closed));
        assert_eq!(gate.stats().breaker.unwrap().probes, 1);
    }
}
