//! [`CreditLedger`] for [`SqliteJobStore`]: the tables `credit_usage` and `credit_holds` in
//! the job file, each operation one transaction on the store's connection (so a reserve's
//! check and write are one step, whoever else writes).

use async_trait::async_trait;
use domain::Tenant;
use ports::{CreditError, CreditLedger, JobId, JobStoreError, Reservation, Reserved, Usage};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::Inner;
use crate::SqliteJobStore;
use crate::codec::to_sql;

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Inner {
    fn usage_of(
        &self,
        tx: &Transaction<'_>,
        tenant: &str,
        period: &str,
    ) -> Result<Usage, JobStoreError> {
        let row: Option<(i64, i64)> = tx
            .prepare_cached(
                "SELECT spent, reserved FROM credit_usage WHERE tenant = ?1 AND period = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![tenant, period], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        Ok(row
            .map(|(spent, reserved)| Usage {
                spent: count(spent),
                reserved: count(reserved),
            })
            .unwrap_or_default())
    }

    fn put_usage(
        &self,
        tx: &Transaction<'_>,
        tenant: &str,
        period: &str,
        usage: Usage,
        now_ms: u64,
    ) -> Result<(), JobStoreError> {
        tx.prepare_cached(
            "INSERT INTO credit_usage (tenant, period, spent, reserved, written_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant, period) DO UPDATE SET spent = excluded.spent,
               reserved = excluded.reserved, written_ms = MAX(written_ms, excluded.written_ms)",
        )
        .and_then(|mut s| {
            s.execute(params![
                tenant,
                period,
                to_sql(usage.spent),
                to_sql(usage.reserved),
                to_sql(now_ms)
            ])
        })
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) fn reserve(&self, r: &Reservation, budget: u64) -> Result<Reserved, JobStoreError> {
        self.write(|tx| {
            let (tenant, period) = (r.tenant.as_str(), r.period.as_str());
            let mut usage = self.usage_of(tx, tenant, period)?;
            let held: Option<i64> = tx
                .prepare_cached("SELECT credits FROM credit_holds WHERE job = ?1")
                .and_then(|mut s| s.query_row([r.job.as_str()], |row| row.get(0)).optional())
                .map_err(|e| self.err(e))?;
            if held.is_some() {
                return Ok(Reserved::Exists(usage));
            }
            if usage
                .spent
                .saturating_add(usage.reserved)
                .saturating_add(r.credits)
                > budget
            {
                return Ok(Reserved::Exhausted(usage));
            }
            usage.reserved += r.credits;
            tx.prepare_cached(
                "INSERT INTO credit_holds (job, tenant, period, credits, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.job.as_str(),
                    tenant,
                    period,
                    to_sql(r.credits),
                    to_sql(r.at_ms)
                ])
            })
            .map_err(|e| self.err(e))?;
            self.put_usage(tx, tenant, period, usage, r.at_ms)?;
            Ok(Reserved::Taken(usage))
        })
    }

    /// Ends `job`'s reservation, spending `spent` credits (none for a release).
    pub(crate) fn end_hold(
        &self,
        job: &JobId,
        spent: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, JobStoreError> {
        self.write(|tx| {
            let hold: Option<(String, String, i64)> = tx
                .prepare_cached(
                    "DELETE FROM credit_holds WHERE job = ?1 RETURNING tenant, period, credits",
                )
                .and_then(|mut s| {
                    s.query_row([job.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(|e| self.err(e))?;
            let Some((tenant, period, credits)) = hold else {
                return Ok(false);
            };
            let mut usage = self.usage_of(tx, &tenant, &period)?;
            usage.reserved = usage.reserved.saturating_sub(count(credits));
            usage.spent = usage.spent.saturating_add(spent.unwrap_or(0));
            self.put_usage(tx, &tenant, &period, usage, now_ms)?;
            Ok(true)
        })
    }

    pub(crate) fn stale_holds(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<Reservation>, JobStoreError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT job, tenant, period, credits, at_ms FROM credit_holds
                     INDEXED BY credit_holds_by_age WHERE at_ms < ?1 ORDER BY at_ms, job LIMIT ?2",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(
                    params![to_sql(before_ms), i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| self.err(e))?;
            let corrupt = |what: &str| {
                JobStoreError::Corrupt(format!("{}: credit hold: {what}", self.path.display()))
            };
            rows.into_iter()
                .map(
                    |(job, tenant, period, credits, at): (String, String, String, i64, i64)| {
                        Ok(Reservation {
                            job: JobId::parse(&job).map_err(|_| corrupt("bad job id"))?,
                            tenant: Tenant::parse(&tenant).map_err(|_| corrupt("bad tenant"))?,
                            period,
                            credits: count(credits),
                            at_ms: count(at),
                        })
                    },
                )
                .collect()
        })
    }

    pub(crate) fn purge_usage_rows(&self, before_ms: u64) -> Result<u64, JobStoreError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM credit_usage WHERE written_ms < ?1 AND reserved = 0")
                .and_then(|mut s| s.execute([to_sql(before_ms)]))
                .map_err(|e| self.err(e))?;
            Ok(n as u64)
        })
    }
}

#[async_trait]
impl CreditLedger for SqliteJobStore {
    async fn reserve(
        &self,
        reservation: &Reservation,
        budget: u64,
    ) -> Result<Reserved, CreditError> {
        let r = reservation.clone();
        self.blocking(move |s| s.reserve(&r, budget))
            .await
            .map_err(CreditError::from)
    }

    async fn settle(&self, job: &JobId, credits: u64, now_ms: u64) -> Result<bool, CreditError> {
        let job = job.clone();
        self.blocking(move |s| s.end_hold(&job, Some(credits), now_ms))
            .await
            .map_err(CreditError::from)
    }

    async fn release(&self, job: &JobId, now_ms: u64) -> Result<bool, CreditError> {
        let job = job.clone();
        self.blocking(move |s| s.end_hold(&job, None, now_ms))
            .await
            .map_err(CreditError::from)
    }

    async fn usage(&self, tenant: &Tenant, period: &str) -> Result<Usage, CreditError> {
        let (tenant, period) = (tenant.clone(), period.to_owned());
        self.blocking(move |s| s.read(|tx| s.usage_of(tx, tenant.as_str(), &period)))
            .await
            .map_err(CreditError::from)
    }

    async fn stale(&self, before_ms: u64, limit: usize) -> Result<Vec<Reservation>, CreditError> {
        self.blocking(move |s| s.stale_holds(before_ms, limit))
            .await
            .map_err(CreditError::from)
    }

    async fn purge_usage(&self, before_ms: u64) -> Result<u64, CreditError> {
        self.blocking(move |s| s.purge_usage_rows(before_ms))
            .await
            .map_err(CreditError::from)
    }
}
