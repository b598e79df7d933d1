//! The D-ID account's balance as this instance last read it (`GET /credits`, see
//! [`crate::budgets`]), and how its reads went.

use std::sync::{Arc, Mutex, PoisonError};

/// The D-ID account's balance as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountBalance {
    /// Credits left.
    pub remaining: i64,
    /// Credits granted.
    pub total: i64,
    /// When it was read, ms since the epoch.
    pub checked_ms: u64,
}

#[derive(Debug, Default)]
struct CheckState {
    last: Option<AccountBalance>,
    ok: u64,
    failed: u64,
    error: Option<String>,
}

/// The account checks of this instance.
#[derive(Debug, Default)]
pub struct AccountChecks {
    state: Mutex<CheckState>,
}

/// What [`AccountChecks::snapshot`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountSnapshot {
    /// The last balance read.
    pub last: Option<AccountBalance>,
    /// Checks that succeeded.
    pub ok: u64,
    /// Checks that failed.
    pub failed: u64,
    /// Why the last one failed, until one succeeds.
    pub error: Option<String>,
}

impl AccountChecks {
    fn lock(&self) -> std::sync::MutexGuard<'_, CheckState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the checks found so far.
    pub fn snapshot(&self) -> AccountSnapshot {
        let s = self.lock();
        AccountSnapshot {
            last: s.last,
            ok: s.ok,
            failed: s.failed,
            error: s.error.clone(),
        }
    }

    /// Records a balance read at `checked_ms`.
    pub fn record(&self, remaining: i64, total: i64, checked_ms: u64) {
        let mut s = self.lock();
        s.last = Some(AccountBalance {
            remaining,
            total,
            checked_ms,
        });
        s.ok += 1;
        s.error = None;
    }

    /// Records a failed read; `true` if it is the first of a streak (to log once).
    pub fn record_failure(&self, error: String) -> bool {
        let mut s = self.lock();
        s.failed += 1;
        let first = s.error.is_none();
        s.error = Some(error);
        first
    }
}

/// Shared by the account task and the routes.
pub type SharedChecks = Arc<AccountChecks>;
