//! Credit budgets as the service shows them: each budgeted tenant's use of its current
//! period (`/stats`, `/metrics`), and the D-ID account's own balance, read with
//! `GET /credits` every `CREDITS_CHECK_SECS` beside the budgets.
//!
//! The budgets are kept by the job store's backend (`ports::CreditLedger`, see
//! [`app::credits`]); the account check is what they are reconciled against: the balance
//! D-ID reports, and whether the budgets left promise more credits than the account holds
//! (`overcommitted`). A failed check is logged and counted, never fatal.

use std::time::Duration;

use domain::{Admission, Budget, PeriodWindow, Priority};
use ports::Usage;
use serde_json::{Value, json};

use crate::state::AppState;
use crate::tenants::public_name;

/// A budgeted tenant's current period.
#[derive(Debug, Clone)]
pub struct BudgetRow {
    /// The tenant's name as shown.
    pub tenant: String,
    /// Its budget.
    pub budget: Budget,
    /// The current period.
    pub window: PeriodWindow,
    /// Its use of it, or why the ledger could not tell.
    pub usage: Result<Usage, String>,
}

impl BudgetRow {
    /// The `/stats` form.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "credits": self.budget.credits,
            "period": self.budget.period.as_str(),
            "period_key": self.window.key,
            "resets_at": crate::time_text::timestamp(self.window.ends_ms),
        });
        match &self.usage {
            Ok(u) => {
                v["spent"] = json!(u.spent);
                v["reserved"] = json!(u.reserved);
                v["remaining"] = json!(u.remaining(self.budget.credits));
            }
            Err(e) => v["error"] = json!(e),
        }
        v
    }
}

/// The budgeted tenants' current periods (of the tenants `filter` keeps), by name.
pub async fn rows(state: &AppState, filter: impl Fn(&str) -> bool) -> Vec<BudgetRow> {
    let Some(credits) = state.jobs().credits() else {
        return Vec::new();
    };
    let now = app::now_ms();
    let view = state.tenants().view();
    let mut rows = Vec::new();
    for (name, policy) in &view.tenants {
        if policy.budget.is_none() || !filter(name) {
            continue;
        }
        if let Some((budget, window, usage)) = credits.usage_now(&policy.tenant, now).await {
            rows.push(BudgetRow {
                tenant: public_name(name).to_owned(),
                budget,
                window,
                usage: usage.map_err(|e| e.to_string()),
            });
        }
    }
    rows
}

/// Reads the account's credits once, at `low` priority, and only when a limiter slot is
/// free: the check never waits behind talks (a busy round is skipped).
pub async fn check_once(state: &AppState) {
    if state.limiter().stats().await.available == 0 {
        tracing::debug!("D-ID account check skipped: no free limiter slot");
        return;
    }
    let admission = Admission::from(Priority::Low);
    match state.inner.video.credits(&admission).await {
        Ok(c) => state.account().record(c.remaining, c.total, app::now_ms()),
        Err(e) => {
            // Once per streak of failures; the rest at debug.
            if state.account().record_failure(e.to_string()) {
                tracing::warn!(error = %e, "D-ID account credits could not be read");
            } else {
                tracing::debug!(error = %e, "D-ID account credits still unreadable");
            }
        }
    }
}

/// Checks the account every `every` until the engine stops (nothing when `every` is zero
/// or no D-ID key is configured).
pub async fn check_account(state: AppState, every: Duration) {
    if every.is_zero() || !state.settings().api_key_configured {
        return;
    }
    loop {
        check_once(&state).await;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = state.jobs().stopped() => return,
        }
    }
}

/// The `credits` part of `/stats`: the budgets' decisions on this instance, and the
/// account's balance as last read, with whether the budgets left promise more than it holds.
pub fn stats_json(state: &AppState, rows: &[BudgetRow]) -> Value {
    let counts = state
        .jobs()
        .credits()
        .map(|c| c.counts())
        .unwrap_or_default();
    let account = state.account().snapshot();
    let promised: u64 = rows
        .iter()
        .filter_map(|r| r.usage.as_ref().ok().map(|u| u.remaining(r.budget.credits)))
        .sum();
    let mut acc = json!({
        "checks_ok": account.ok,
        "checks_failed": account.failed,
        "check_error": account.error,
    });
    if let Some(b) = account.last {
        acc["account_remaining"] = json!(b.remaining);
        acc["account_total"] = json!(b.total);
        acc["checked_at"] = json!(crate::time_text::timestamp(b.checked_ms));
        acc["budgets_remaining"] = json!(promised);
        acc["overcommitted"] = json!(i64::try_from(promised).unwrap_or(i64::MAX) > b.remaining);
    }
    json!({
        "reservations": {
            "reservations_taken": counts.reserved,
            "reservations_refused": counts.refused,
            "reservations_settled": counts.settled,
            "reservations_released": counts.released,
            "reservations_swept": counts.swept,
            "ledger_errors": counts.errors,
        },
        "account": acc,
    })
}
