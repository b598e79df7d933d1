//! The credit-ledger port: tenants' credit budgets, reserved before a talk is created and
//! settled when it ends, shared by every process that shares the job store's backend.
//!
//! One [`Reservation`] per job, keyed by its [`JobId`]: a job reserves its estimated credits
//! ([`domain::budget::estimate`]) before anything is sent to D-ID, and ends in exactly one of
//! [`CreditLedger::settle`] (the talk was paid: its real cost is spent) or
//! [`CreditLedger::release`] (nothing was paid, or D-ID refunded it).
//!
//! # Contract
//! Times are passed in by the caller, ms since the epoch, as in the job store.
//!
//! Every adapter guarantees, and the contract suite (`ports::credit_contract`) checks:
//! - [`CreditLedger::reserve`] is atomic across processes: it takes the credits only if the
//!   tenant's `spent + reserved + credits` stays within the budget, so any number of
//!   concurrent reserves from any processes never go over it together; a second reserve for
//!   the same job takes nothing ([`Reserved::Exists`]);
//! - [`CreditLedger::settle`] and [`CreditLedger::release`] end a reservation once: the
//!   first call moves its credits (to `spent`, or back), later ones find nothing (`false`);
//!   settled credits may exceed the estimate (a talk longer than estimated is paid anyway);
//! - usage is kept per tenant and period key ([`domain::PeriodWindow::key`]): a new period
//!   starts from nothing; [`CreditLedger::purge_usage`] forgets periods not written since a time,
//!   so the ledger holds a bounded number of rows;
//! - [`CreditLedger::stale`] lists reservations older than a time, oldest first, so that
//!   one left behind (a process died between its reserve and the job's end) can be settled
//!   from the job's state.

use async_trait::async_trait;
use domain::Tenant;
use serde::{Deserialize, Serialize};

use crate::jobs::JobId;

/// A job's hold on its tenant's budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The job it is for (one reservation per job).
    pub job: JobId,
    /// Whose budget.
    pub tenant: Tenant,
    /// The period it counts in ([`domain::PeriodWindow::key`]).
    pub period: String,
    /// Credits held.
    pub credits: u64,
    /// When it was taken, ms since the epoch.
    pub at_ms: u64,
}

/// A tenant's use of one period's budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Credits of talks that ended paid.
    pub spent: u64,
    /// Credits held by talks not ended yet.
    pub reserved: u64,
}

impl Usage {
    /// What is left of `budget`.
    pub fn remaining(&self, budget: u64) -> u64 {
        budget.saturating_sub(self.spent.saturating_add(self.reserved))
    }
}

/// What [`CreditLedger::reserve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// Taken; the usage after it.
    Taken(Usage),
    /// The job holds a reservation already; nothing was taken.
    Exists(Usage),
    /// It does not fit; nothing was taken. The usage now.
    Exhausted(Usage),
}

/// What a ledger can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// The backend could not be reached or failed; nothing is known to have been written.
    #[error("credit ledger unavailable: {0}")]
    Unavailable(String),
    /// The backend holds data this version cannot read.
    #[error("credit ledger data is corrupt: {0}")]
    Corrupt(String),
}

/// A ledger kept in a job store's backend fails as the store does: corrupt data stays
/// corrupt, anything else is the backend unavailable.
impl From<crate::jobs::JobStoreError> for CreditError {
    fn from(e: crate::jobs::JobStoreError) -> Self {
        match e {
            crate::jobs::JobStoreError::Corrupt(m) => Self::Corrupt(m),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// The tenants' credit budgets. Object-safe; inject it as `Arc<dyn CreditLedger>`.
#[async_trait]
pub trait CreditLedger: Send + Sync {
    /// Takes `reservation.credits` of `reservation.tenant`'s `budget` in its period if they
    /// fit (see the module's contract).
    async fn reserve(
        &self,
        reservation: &Reservation,
        budget: u64,
    ) -> Result<Reserved, CreditError>;
    /// Ends `job`'s reservation as paid: `credits` move to spent (its reserved credits are
    /// given back to the budget first). `false` when it holds none (any more).
    async fn settle(&self, job: &JobId, credits: u64, now_ms: u64) -> Result<bool, CreditError>;
    /// Ends `job`'s reservation unpaid: its credits go back to the budget. `false` when it
    /// holds none (any more).
    async fn release(&self, job: &JobId, now_ms: u64) -> Result<bool, CreditError>;
    /// `tenant`'s usage of period `period`.
    async fn usage(&self, tenant: &Tenant, period: &str) -> Result<Usage, CreditError>;
    /// Up to `limit` reservations taken before `before_ms`, oldest first.
    async fn stale(&self, before_ms: u64, limit: usize) -> Result<Vec<Reservation>, CreditError>;
    /// Forgets the usage of periods that were last written before `before_ms` and hold no
    /// reservation; returns how many (tenant, period) entries went.
    async fn purge_usage(&self, before_ms: u64) -> Result<u64, CreditError>;
}
