//! Jobs belong to their tenant: reading, cancelling and listing another tenant's jobs finds
//! nothing, and a tenant's listing pages through the store past others' jobs, bounded.

mod common;

use std::sync::Arc;

use app::queries::MAX_SCAN_PAGES;
use app::{Admitted, AppError, Jobs, JobsConfig};
use common::request;
use domain::{Admission, Priority, Tenant};
use jobstore_memory::MemoryJobStore;
use ports::MockVideoApi;

fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).unwrap()
}

async fn submit(jobs: &Arc<Jobs>, name: &str) -> ports::Job {
    let mut r = request();
    r.admission = Admission::new(tenant(name), Priority::Normal);
    match jobs.enqueue(r, None).await.unwrap() {
        Admitted::New(job) => job,
        Admitted::Replay(_) => panic!("no key, no replay"),
    }
}

fn engine() -> Arc<Jobs> {
    // The workers are never started: every job stays queued.
    Jobs::new(
        Arc::new(MemoryJobStore::new()),
        Arc::new(MockVideoApi::new()),
        JobsConfig::default(),
    )
}

#[tokio::test]
async fn another_tenant_s_job_is_not_found_and_not_cancelled() {
    let jobs = engine();
    let a = submit(&jobs, "a").await;
    assert_eq!(jobs.job_of(&a.id, &tenant("a")).await.unwrap().id, a.id);
    assert!(matches!(
        jobs.job_of(&a.id, &tenant("b")).await,
        Err(AppError::JobNotFound(_))
    ));
    assert!(matches!(
        jobs.cancel_job(&a.id, &tenant("b")).await,
        Err(AppError::JobNotFound(_))
    ));
    assert_eq!(
        jobs.job(&a.id).await.unwrap().status,
        ports::JobStatus::Queued,
        "b's cancel left a's job alone"
    );
    let cancelled = jobs.cancel_job(&a.id, &tenant("a")).await.unwrap();
    assert_eq!(cancelled.status, ports::JobStatus::Cancelled);
}

#[tokio::test]
async fn a_tenant_s_listing_skips_others_and_pages_with_a_cursor() {
    let jobs = engine();
    let mut mine = Vec::new();
    for i in 0..250 {
        let name = if i % 50 == 0 { "a" } else { "b" };
        let job = submit(&jobs, name).await;
        if name == "a" {
            mine.push(job.id);
        }
    }
    mine.reverse(); // newest first
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = jobs
            .jobs_of(&tenant("a"), None, 2, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.jobs.len() <= 2);
        assert!(page.jobs.iter().all(|j| j.tenant.as_str() == "a"));
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, mine, "every one of a's jobs once, newest first");
    // A tenant with nothing: an empty last page.
    let page = jobs.jobs_of(&tenant("c"), None, 20, None).await.unwrap();
    assert!(page.jobs.is_empty() && page.next_cursor.is_none());
}

#[tokio::test]
async fn a_listing_reads_a_bounded_number_of_store_pages() {
    let jobs = engine();
    submit(&jobs, "a").await;
    // More of b's jobs than one listing reads: the page ends early, with a cursor.
    for _ in 0..(MAX_SCAN_PAGES * 100 + 5) {
        submit(&jobs, "b").await;
    }
    let calls = jobs.store_calls();
    let first = jobs.jobs_of(&tenant("a"), None, 20, None).await.unwrap();
    assert_eq!(jobs.store_calls() - calls, MAX_SCAN_PAGES as u64);
    assert!(first.jobs.is_empty());
    let next = first.next_cursor.expect("a cursor to go on from");
    let second = jobs
        .jobs_of(&tenant("a"), None, 20, Some(&next))
        .await
        .unwrap();
    assert_eq!(second.jobs.len(), 1, "a's job is found on the next page");
    assert!(second.next_cursor.is_none());
}
