//! The [`CreditLedger`] of the in-memory store: usage and reservations in one mutex-guarded
//! map each, as volatile as the jobs beside them.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use domain::Tenant;
use ports::{CreditError, CreditLedger, JobId, Reservation, Reserved, Usage};

use crate::MemoryJobStore;

/// Usage per (tenant, period), with when it was last written; reservations by job.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    usage: HashMap<(Tenant, String), (Usage, u64)>,
    holds: HashMap<JobId, Reservation>,
    /// `(at_ms, job)` of every reservation, for `stale`.
    by_age: BTreeMap<(u64, JobId), ()>,
}

impl Ledger {
    fn end(&mut self, job: &JobId, spent: Option<u64>, now_ms: u64) -> bool {
        let Some(hold) = self.holds.remove(job) else {
            return false;
        };
        self.by_age.remove(&(hold.at_ms, hold.job.clone()));
        let (usage, written) = self.usage.entry((hold.tenant, hold.period)).or_default();
        usage.reserved = usage.reserved.saturating_sub(hold.credits);
        usage.spent = usage.spent.saturating_add(spent.unwrap_or(0));
        *written = now_ms;
        true
    }
}

#[async_trait]
impl CreditLedger for MemoryJobStore {
    async fn reserve(
        &self,
        reservation: &Reservation,
        budget: u64,
    ) -> Result<Reserved, CreditError> {
        let mut ledger = self.ledger();
        let ledger = &mut *ledger;
        let key = (reservation.tenant.clone(), reservation.period.clone());
        let (usage, written) = ledger.usage.entry(key).or_default();
        if ledger.holds.contains_key(&reservation.job) {
            return Ok(Reserved::Exists(*usage));
        }
        if usage
            .spent
            .saturating_add(usage.reserved)
            .saturating_add(reservation.credits)
            > budget
        {
            return Ok(Reserved::Exhausted(*usage));
        }
        usage.reserved += reservation.credits;
        *written = (*written).max(reservation.at_ms);
        ledger
            .holds
            .insert(reservation.job.clone(), reservation.clone());
        ledger
            .by_age
            .insert((reservation.at_ms, reservation.job.clone()), ());
        Ok(Reserved::Taken(*usage))
    }

    async fn settle(&self, job: &JobId, credits: u64, now_ms: u64) -> Result<bool, CreditError> {
        Ok(self.ledger().end(job, Some(credits), now_ms))
    }

    async fn release(&self, job: &JobId, now_ms: u64) -> Result<bool, CreditError> {
        Ok(self.ledger().end(job, None, now_ms))
    }

    async fn usage(&self, tenant: &Tenant, period: &str) -> Result<Usage, CreditError> {
        Ok(self
            .ledger()
            .usage
            .get(&(tenant.clone(), period.to_owned()))
            .map(|(u, _)| *u)
            .unwrap_or_default())
    }

    async fn stale(&self, before_ms: u64, limit: usize) -> Result<Vec<Reservation>, CreditError> {
        let ledger = self.ledger();
        Ok(ledger
            .by_age
            .keys()
            .take_while(|(at, _)| *at < before_ms)
            .take(limit)
            .filter_map(|(_, job)| ledger.holds.get(job).cloned())
            .collect())
    }

    async fn purge_usage(&self, before_ms: u64) -> Result<u64, CreditError> {
        let mut ledger = self.ledger();
        let before = ledger.usage.len();
        ledger
            .usage
            .retain(|_, (usage, written)| usage.reserved > 0 || *written >= before_ms);
        Ok((before - ledger.usage.len()) as u64)
    }
}
