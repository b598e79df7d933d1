//! The credit-ledger contract suite: the behaviour every [`CreditLedger`] adapter must show,
//! run against each with [`credit_ledger_contract_tests!`](crate::credit_ledger_contract_tests).

use std::future::Future;
use std::sync::Arc;

use domain::Tenant;

use async_trait::async_trait;

use crate::credits::{CreditError, CreditLedger, Reservation, Reserved, Usage};
use crate::job_contract::{Guarded, job_id};
use crate::jobs::JobId;

const T0: u64 = 1_800_000_000_000;

/// A guarded store's ledger is the store's (see [`Guarded`]).
#[async_trait]
impl<S: CreditLedger> CreditLedger for Guarded<S> {
    async fn reserve(&self, r: &Reservation, budget: u64) -> Result<Reserved, CreditError> {
        self.store.reserve(r, budget).await
    }
    async fn settle(&self, job: &JobId, credits: u64, now_ms: u64) -> Result<bool, CreditError> {
        self.store.settle(job, credits, now_ms).await
    }
    async fn release(&self, job: &JobId, now_ms: u64) -> Result<bool, CreditError> {
        self.store.release(job, now_ms).await
    }
    async fn usage(&self, tenant: &Tenant, period: &str) -> Result<Usage, CreditError> {
        self.store.usage(tenant, period).await
    }
    async fn stale(&self, before_ms: u64, limit: usize) -> Result<Vec<Reservation>, CreditError> {
        self.store.stale(before_ms, limit).await
    }
    async fn purge_usage(&self, before_ms: u64) -> Result<u64, CreditError> {
        self.store.purge_usage(before_ms).await
    }
}

fn hold(n: u64, tenant: &str, period: &str, credits: u64) -> Reservation {
    Reservation {
        job: job_id(n),
        tenant: Tenant::parse(tenant).expect("a valid tenant"),
        period: period.to_owned(),
        credits,
        at_ms: T0 + n,
    }
}

fn usage(spent: u64, reserved: u64) -> Usage {
    Usage { spent, reserved }
}

/// Reserves take what fits and nothing more; a job reserves once.
pub async fn reserves_take_what_fits_and_a_job_reserves_once<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn CreditLedger>>,
{
    let ledger = factory().await;
    let r = |n, credits| hold(n, "web", "2026-12", credits);
    assert_eq!(
        ledger.reserve(&r(1, 3), 5).await.unwrap(),
        Reserved::Taken(usage(0, 3))
    );
    assert_eq!(
        ledger.reserve(&r(2, 2), 5).await.unwrap(),
        Reserved::Taken(usage(0, 5))
    );
    assert_eq!(
        ledger.reserve(&r(3, 1), 5).await.unwrap(),
        Reserved::Exhausted(usage(0, 5)),
        "the budget is full"
    );
    assert_eq!(
        ledger.reserve(&r(1, 3), 5).await.unwrap(),
        Reserved::Exists(usage(0, 5)),
        "job 1 holds its reservation already"
    );
    let web = Tenant::parse("web").unwrap();
    assert_eq!(ledger.usage(&web, "2026-12").await.unwrap(), usage(0, 5));
    assert_eq!(
        ledger.usage(&web, "2027-01").await.unwrap(),
        Usage::default(),
        "a new period starts from nothing"
    );
    assert_eq!(
        ledger
            .reserve(&hold(4, "web", "2027-01", 5), 5)
            .await
            .unwrap(),
        Reserved::Taken(usage(0, 5))
    );
    assert_eq!(
        ledger
            .reserve(&hold(5, "batch", "2026-12", 1), 1)
            .await
            .unwrap(),
        Reserved::Taken(usage(0, 1)),
        "tenants are apart"
    );
    assert_eq!(
        ledger
            .reserve(&hold(6, "batch", "2026-12", 2), 1)
            .await
            .unwrap(),
        Reserved::Exhausted(usage(0, 1)),
        "a talk larger than what is left does not fit"
    );
}

/// Settling and releasing end a reservation once; settled credits may exceed the estimate.
pub async fn settle_and_release_end_a_reservation_once<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn CreditLedger>>,
{
    let ledger = factory().await;
    let web = Tenant::parse("web").unwrap();
    let r = |n, credits| hold(n, "web", "2026-12", credits);
    ledger.reserve(&r(1, 2), 10).await.unwrap();
    ledger.reserve(&r(2, 3), 10).await.unwrap();
    assert!(ledger.settle(&job_id(1), 4, T0 + 10).await.unwrap());
    assert_eq!(ledger.usage(&web, "2026-12").await.unwrap(), usage(4, 3));
    assert!(
        !ledger.settle(&job_id(1), 4, T0 + 11).await.unwrap(),
        "once"
    );
    assert!(
        !ledger.release(&job_id(1), T0 + 11).await.unwrap(),
        "settled already"
    );
    assert!(ledger.release(&job_id(2), T0 + 12).await.unwrap());
    assert!(!ledger.release(&job_id(2), T0 + 13).await.unwrap(), "once");
    assert_eq!(ledger.usage(&web, "2026-12").await.unwrap(), usage(4, 0));
    assert!(
        !ledger.settle(&job_id(9), 1, T0).await.unwrap(),
        "no such reservation"
    );
    assert_eq!(
        ledger.reserve(&r(3, 6), 10).await.unwrap(),
        Reserved::Taken(usage(4, 6)),
        "released credits are back"
    );
    assert_eq!(
        ledger.reserve(&r(3, 6), 10).await.unwrap(),
        Reserved::Exists(usage(4, 6))
    );
}

/// Many concurrent reserves for the last credits never go over the budget together.
pub async fn concurrent_reserves_never_go_over_the_budget<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn CreditLedger>>,
{
    let ledger = factory().await;
    let tasks: Vec<_> = (1..=40)
        .map(|n| {
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move { ledger.reserve(&hold(n, "web", "p", 1), 10).await })
        })
        .collect();
    let mut taken = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Reserved::Taken(u) => {
                assert!(u.reserved <= 10, "{u:?}");
                taken += 1;
            }
            Reserved::Exhausted(u) => assert_eq!(u.reserved, 10, "refused only when full"),
            Reserved::Exists(u) => panic!("each job reserves once: {u:?}"),
        }
    }
    assert_eq!(taken, 10);
    let web = Tenant::parse("web").unwrap();
    assert_eq!(ledger.usage(&web, "p").await.unwrap(), usage(0, 10));
}

/// `stale` lists old reservations oldest first; `purge` forgets idle periods only.
pub async fn stale_reservations_are_listed_and_idle_periods_purged<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn CreditLedger>>,
{
    let ledger = factory().await;
    for n in [3, 1, 2] {
        ledger.reserve(&hold(n, "web", "old", 1), 10).await.unwrap();
    }
    ledger.reserve(&hold(4, "web", "new", 1), 10).await.unwrap();
    let stale = ledger.stale(T0 + 3, 10).await.unwrap();
    let ids: Vec<_> = stale.iter().map(|r| r.job.clone()).collect();
    assert_eq!(
        ids,
        vec![job_id(1), job_id(2)],
        "before T0 + 3, oldest first"
    );
    assert_eq!(stale[0], hold(1, "web", "old", 1));
    assert_eq!(
        ledger.stale(T0 + 100, 1).await.unwrap().len(),
        1,
        "at most limit"
    );
    for n in 1..=3 {
        ledger.settle(&job_id(n), 1, T0 + 50).await.unwrap();
    }
    let web = Tenant::parse("web").unwrap();
    assert_eq!(
        ledger.purge_usage(T0 + 50).await.unwrap(),
        0,
        "written at T0 + 50: kept"
    );
    assert_eq!(ledger.usage(&web, "old").await.unwrap(), usage(3, 0));
    assert_eq!(
        ledger.purge_usage(T0 + 1_000).await.unwrap(),
        1,
        "the period holding job 4's reservation stays"
    );
    assert_eq!(ledger.usage(&web, "old").await.unwrap(), Usage::default());
    assert_eq!(ledger.usage(&web, "new").await.unwrap(), usage(0, 1));
}

/// Runs the whole credit-ledger contract suite as `#[tokio::test]`s against `$factory`.
#[macro_export]
macro_rules! credit_ledger_contract_tests {
    ($factory:path) => {
        $crate::credit_ledger_contract_tests!(@tests $factory;
            reserves_take_what_fits_and_a_job_reserves_once,
            settle_and_release_end_a_reservation_once,
            concurrent_reserves_never_go_over_the_budget,
            stale_reservations_are_listed_and_idle_periods_purged
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::credit_contract::$name($factory).await;
            }
        )*
    };
}
