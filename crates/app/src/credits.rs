//! Credit budgets: a job of a tenant with a budget reserves its talk's estimated credits
//! ([`domain::budget::estimate`]) before it is stored, so before anything is sent to D-ID; a
//! job that does not fit is refused ([`AppError::BudgetExhausted`]) and nothing is stored.
//! The write that ends the job settles the reservation:
//!
//! | the job ended | the ledger |
//! |---|---|
//! | `done` | settles the real cost: D-ID's `duration` in 15-second units (the estimate if D-ID gave none) |
//! | `failed` with a talk that did not end in `error` or `rejected` (a poll that timed out, D-ID unreachable after the create) | settles the estimate: the talk may have been paid |
//! | `failed` otherwise (nothing created, or D-ID refunded the talk's `error`), `cancelled` | releases it |
//!
//! A replay of an idempotency key reserves nothing (its job holds its reservation already).
//! A reservation left behind — a process that died between a job's end and its settlement,
//! or between the reserve and the submit — is found by the sweep ([`Credits::sweep`], every
//! purge period) once it is older than [`STALE_AFTER`], and settled from its job's state (or
//! released when there is no such job).
//!
//! A ledger that cannot be reached refuses the job ([`AppError::CreditsUnavailable`]): a
//! budget that cannot be checked is not spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use domain::budget::{Estimate, credits_for_seconds, estimate};
use domain::{Budget, Tenant};
use ports::{
    CreditError, CreditLedger, FailureCode, Job, JobStatus, JobStore, NewJob, Reservation,
    Reserved, Usage,
};

use crate::error::AppError;

/// A reservation older than this is looked at by the sweep.
pub const STALE_AFTER: Duration = Duration::from_secs(600);
/// Reservations the sweep looks at per round.
pub const SWEEP_BATCH: usize = 100;
/// The usage of a period not written for this long is forgotten (two months: a monthly
/// budget's previous period stays readable through the next one).
pub const USAGE_KEPT: Duration = Duration::from_secs(62 * 24 * 3600);

/// Where the engine finds a tenant's budget (the service's tenants file).
pub trait TenantBudgets: Send + Sync {
    /// `tenant`'s budget now; `None` when it has none.
    fn budget_of(&self, tenant: &Tenant) -> Option<Budget>;
}

/// What is known of an audio URL's length (the upload cache: uploads made through the
/// service). `None` when unknown.
#[async_trait]
pub trait AudioLengths: Send + Sync {
    /// Seconds of the audio at `url`, uploaded by `tenant`.
    async fn seconds(&self, tenant: &Tenant, url: &str) -> Option<f64>;
}

/// Counters of the budgets' decisions since start.
#[derive(Debug, Default)]
pub struct CreditCounters {
    /// Reservations taken.
    pub reserved: AtomicU64,
    /// Jobs refused as over budget.
    pub refused: AtomicU64,
    /// Reservations settled as paid.
    pub settled: AtomicU64,
    /// Reservations released.
    pub released: AtomicU64,
    /// Ledger calls that failed.
    pub errors: AtomicU64,
    /// Stale reservations the sweep ended.
    pub swept: AtomicU64,
}

/// A snapshot of [`CreditCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditCounts {
    /// Reservations taken.
    pub reserved: u64,
    /// Jobs refused as over budget.
    pub refused: u64,
    /// Reservations settled as paid.
    pub settled: u64,
    /// Reservations released.
    pub released: u64,
    /// Ledger calls that failed.
    pub errors: u64,
    /// Stale reservations the sweep ended.
    pub swept: u64,
}

/// The budgets of one service: the ledger, the tenants' budgets, what audio lengths are
/// known, and what an unknown one is taken to be.
pub struct Credits {
    ledger: Arc<dyn CreditLedger>,
    budgets: Arc<dyn TenantBudgets>,
    audio: Option<Arc<dyn AudioLengths>>,
    assumed_audio_seconds: f64,
    counters: CreditCounters,
}

impl std::fmt::Debug for Credits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credits")
            .field("assumed_audio_seconds", &self.assumed_audio_seconds)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Why a talk does not fit its tenant's budget: the figures a refusal shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the credit budget is exhausted: this talk needs an estimated {needed} credits and \
     {left} of this {period}'s {budget} are left ({spent} spent, {reserved} held by talks in \
     progress)",
    left = budget.saturating_sub(spent.saturating_add(*reserved))
)]
pub struct Exhausted {
    /// The talk's estimated credits.
    pub needed: u64,
    /// The budget per period.
    pub budget: u64,
    /// Spent in this period.
    pub spent: u64,
    /// Held by talks not ended yet.
    pub reserved: u64,
    /// The budget's period.
    pub period: domain::BudgetPeriod,
    /// This period's key (`2026-12`).
    pub period_key: String,
    /// When the next period starts, ms since the epoch.
    pub resets_at_ms: u64,
}

impl Exhausted {
    /// What is left of the budget.
    pub fn remaining(&self) -> u64 {
        self.budget
            .saturating_sub(self.spent.saturating_add(self.reserved))
    }
}

/// How a job's reservation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Paid: this many credits.
    Paid(u64),
    /// Not paid (or refunded).
    Unpaid,
}

impl Credits {
    /// Budgets over `ledger`; an audio of unknown length is taken to last
    /// `assumed_audio_seconds`.
    pub fn new(
        ledger: Arc<dyn CreditLedger>,
        budgets: Arc<dyn TenantBudgets>,
        audio: Option<Arc<dyn AudioLengths>>,
        assumed_audio_seconds: f64,
    ) -> Credits {
        Credits {
            ledger,
            budgets,
            audio,
            assumed_audio_seconds,
            counters: CreditCounters::default(),
        }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn CreditLedger> {
        &self.ledger
    }

    /// `tenant`'s budget now.
    pub fn budget_of(&self, tenant: &Tenant) -> Option<Budget> {
        self.budgets.budget_of(tenant)
    }

    /// The counters so far.
    pub fn counts(&self) -> CreditCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CreditCounts {
            reserved: get(&c.reserved),
            refused: get(&c.refused),
            settled: get(&c.settled),
            released: get(&c.released),
            errors: get(&c.errors),
            swept: get(&c.swept),
        }
    }

    /// `tenant`'s usage of its current period, with its budget; `None` without a budget.
    pub async fn usage_now(
        &self,
        tenant: &Tenant,
        now_ms: u64,
    ) -> Option<(Budget, domain::PeriodWindow, Result<Usage, CreditError>)> {
        let budget = self.budgets.budget_of(tenant)?;
        let window = budget.period.window(now_ms);
        let usage = self.ledger.usage(tenant, &window.key).await;
        Some((budget, window, usage))
    }

    /// The estimated cost of `job`'s talk.
    pub async fn estimate(&self, tenant: &Tenant, request: &domain::TalkRequest) -> Estimate {
        let audio = match (request.script(), &self.audio) {
            (domain::Script::Audio { audio_url }, Some(lengths)) => {
                lengths.seconds(tenant, audio_url).await
            }
            _ => None,
        };
        estimate(request, audio, self.assumed_audio_seconds)
    }

    fn failed(&self, e: &CreditError) -> AppError {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        AppError::CreditsUnavailable(e.to_string())
    }

    /// Reserves `new`'s estimated credits if its tenant has a budget: `Ok(true)` when a
    /// reservation was taken (to release if the job is not stored), `Ok(false)` without a
    /// budget.
    pub async fn reserve(&self, new: &NewJob, now_ms: u64) -> Result<bool, AppError> {
        let Some(budget) = self.budgets.budget_of(&new.tenant) else {
            return Ok(false);
        };
        let window = budget.period.window(now_ms);
        let estimate = self.estimate(&new.tenant, &new.request).await;
        let reservation = Reservation {
            job: new.id.clone(),
            tenant: new.tenant.clone(),
            period: window.key.clone(),
            credits: estimate.credits,
            at_ms: now_ms,
        };
        match self.ledger.reserve(&reservation, budget.credits).await {
            Ok(Reserved::Taken(_)) => {
                self.counters.reserved.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Ok(Reserved::Exists(_)) => Ok(true),
            Ok(Reserved::Exhausted(usage)) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    tenant = %new.tenant,
                    needed = estimate.credits,
                    budget = budget.credits,
                    spent = usage.spent,
                    reserved = usage.reserved,
                    period = %window.key,
                    "budget exhausted: job refused"
                );
                Err(AppError::BudgetExhausted(Exhausted {
                    needed: estimate.credits,
                    budget: budget.credits,
                    spent: usage.spent,
                    reserved: usage.reserved,
                    period: budget.period,
                    period_key: window.key,
                    resets_at_ms: window.ends_ms,
                }))
            }
            Err(e) => {
                tracing::warn!(error = %e, tenant = %new.tenant, "credit ledger: could not reserve");
                Err(self.failed(&e))
            }
        }
    }

    /// Gives back the reservation of a job that was not stored (or was a replay).
    pub async fn release(&self, job: &ports::JobId, now_ms: u64) {
        match self.ledger.release(job, now_ms).await {
            Ok(true) => {
                self.counters.released.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, job_id = %job, "credit ledger: could not release (the sweep will)");
            }
        }
    }

    /// How the reservation of `job`, which has ended, is settled (see the module docs).
    pub async fn settlement(&self, job: &Job) -> Settlement {
        match job.status {
            JobStatus::Done => Settlement::Paid(match job.video_seconds {
                Some(s) => credits_for_seconds(s),
                None => self.estimate(&job.tenant, &job.request).await.credits,
            }),
            JobStatus::Failed
                if job.talk_id.is_some()
                    && !job.error.as_ref().is_some_and(|e| {
                        matches!(e.code, FailureCode::TalkFailed | FailureCode::TalkRejected)
                    }) =>
            {
                Settlement::Paid(self.estimate(&job.tenant, &job.request).await.credits)
            }
            _ => Settlement::Unpaid,
        }
    }

    /// Settles the reservation of `job`, which has just ended, if its tenant has a budget
    /// (a job of a tenant without one reserved nothing: no ledger call; one whose budget was
    /// removed since its submit is left to the sweep).
    pub async fn settle_ended(&self, job: &Job, now_ms: u64) -> bool {
        if self.budgets.budget_of(&job.tenant).is_none() {
            return false;
        }
        self.settle(job, now_ms).await
    }

    /// Settles the reservation of `job`, which has ended; `true` if one was ended.
    pub async fn settle(&self, job: &Job, now_ms: u64) -> bool {
        let result = match self.settlement(job).await {
            Settlement::Paid(credits) => self
                .ledger
                .settle(&job.id, credits, now_ms)
                .await
                .inspect(|ended| {
                    if *ended {
                        self.counters.settled.fetch_add(1, Ordering::Relaxed);
                    }
                }),
            Settlement::Unpaid => self.ledger.release(&job.id, now_ms).await.inspect(|ended| {
                if *ended {
                    self.counters.released.fetch_add(1, Ordering::Relaxed);
                }
            }),
        };
        match result {
            Ok(ended) => ended,
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, job_id = %job.id, "credit ledger: could not settle (the sweep will)");
                false
            }
        }
    }

    /// One round of the sweep: reservations older than [`STALE_AFTER`] whose job has ended
    /// (or is gone) are settled; usage of idle periods is forgotten. Returns how many
    /// reservations it ended.
    pub async fn sweep(&self, store: &dyn JobStore, now_ms: u64) -> u64 {
        let before = now_ms.saturating_sub(ports::jobs::duration_ms(STALE_AFTER));
        let stale = match self.ledger.stale(before, SWEEP_BATCH).await {
            Ok(stale) => stale,
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "credit ledger: could not list stale reservations");
                return 0;
            }
        };
        let mut ended = 0;
        for hold in stale {
            let done = match store.get(&hold.job).await {
                Ok(Some(job)) if job.status.is_terminal() => self.settle(&job, now_ms).await,
                Ok(Some(_)) => false,
                Ok(None) => self
                    .ledger
                    .release(&hold.job, now_ms)
                    .await
                    .unwrap_or(false),
                Err(e) => {
                    tracing::warn!(error = %e, "credit sweep: the job store failed");
                    break;
                }
            };
            if done {
                ended += 1;
                self.counters.swept.fetch_add(1, Ordering::Relaxed);
            }
        }
        let kept = now_ms.saturating_sub(ports::jobs::duration_ms(USAGE_KEPT));
        if let Err(e) = self.ledger.purge_usage(kept).await {
            tracing::warn!(error = %e, "credit ledger: could not purge old periods");
        }
        ended
    }
}
