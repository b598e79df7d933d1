//! Credit budgets in the engine: a job reserves its estimate before it is stored (a job that
//! does not fit is refused and nothing is stored), a replay reserves nothing, and the write
//! that ends a job settles it — D-ID's real duration for a done talk, nothing for a refunded
//! `error` or a cancel — with a sweep for what a dead process left behind.

mod common;

use std::sync::Arc;
use std::time::Duration;

use app::credits::{Credits, TenantBudgets};
use app::{Admitted, AppError, Jobs, JobsConfig};
use common::request;
use domain::{
    Admission, Budget, BudgetPeriod, CreatedTalk, Priority, Talk, TalkId, TalkStatus, Tenant,
};
use jobstore_memory::MemoryJobStore;
use ports::{CreditLedger, JobStatus, JobStore, MockVideoApi, Usage};

struct Fixed(u64);

impl TenantBudgets for Fixed {
    fn budget_of(&self, tenant: &Tenant) -> Option<Budget> {
        (tenant.as_str() == "web").then_some(Budget {
            credits: self.0,
            period: BudgetPeriod::Month,
        })
    }
}

fn web() -> Tenant {
    Tenant::parse("web").unwrap()
}

/// An engine over one memory store (jobs and ledger) whose tenant `web` has `budget` credits
/// a month; an audio URL of unknown length is taken to last 40 s (3 credits).
fn engine(video: MockVideoApi, budget: u64) -> (Arc<Jobs>, Arc<MemoryJobStore>) {
    let store = Arc::new(MemoryJobStore::new());
    let config = JobsConfig {
        workers: 1,
        poll_max: Duration::from_millis(50),
        ..JobsConfig::default()
    };
    let jobs = Jobs::new(store.clone(), Arc::new(video), config);
    jobs.set_credits(Arc::new(Credits::new(
        store.clone(),
        Arc::new(Fixed(budget)),
        None,
        40.0,
    )));
    (jobs, store)
}

fn web_request(key: Option<&str>) -> app::admission::JobRequest {
    let mut r = request();
    r.admission = Admission::new(web(), Priority::Normal);
    r.key = key.map(|k| ports::ScopedKey {
        tenant: web(),
        key: k.into(),
    });
    r
}

async fn usage(store: &MemoryJobStore) -> Usage {
    let period = BudgetPeriod::Month.window(app::now_ms()).key;
    store.usage(&web(), &period).await.unwrap()
}

#[tokio::test]
async fn a_job_that_does_not_fit_is_refused_and_a_replay_still_answers() {
    let (jobs, store) = engine(MockVideoApi::new(), 7);
    let Admitted::New(first) = jobs.enqueue(web_request(Some("k1")), None).await.unwrap() else {
        panic!("a new job");
    };
    jobs.enqueue(web_request(None), None).await.unwrap();
    assert_eq!(
        usage(&store).await,
        Usage {
            spent: 0,
            reserved: 6
        }
    );
    let err = jobs.enqueue(web_request(None), None).await.unwrap_err();
    let AppError::BudgetExhausted(app::credits::Exhausted {
        needed,
        budget,
        reserved,
        period,
        resets_at_ms,
        ..
    }) = err
    else {
        panic!("402, not {err:?}");
    };
    assert_eq!(
        (needed, budget, reserved, period),
        (3, 7, 6, BudgetPeriod::Month)
    );
    assert!(resets_at_ms > app::now_ms());
    assert_eq!(
        store.counts().await.unwrap().by_status[&JobStatus::Queued],
        2,
        "nothing stored"
    );
    // The replay of the first job's key answers with its job, reserving nothing.
    let replay = jobs.enqueue(web_request(Some("k1")), None).await.unwrap();
    assert!(matches!(replay, Admitted::Replay(ref j) if j.id == first.id));
    assert_eq!(
        usage(&store).await,
        Usage {
            spent: 0,
            reserved: 6
        }
    );
    // Another tenant has no budget.
    jobs.enqueue(request(), None).await.unwrap();
    // A cancel gives the credits back.
    jobs.cancel_job(&first.id, &web()).await.unwrap();
    assert_eq!(
        usage(&store).await,
        Usage {
            spent: 0,
            reserved: 3
        }
    );
    assert_eq!(jobs.credits().unwrap().counts().refused, 1);
}

fn talk_json(id: &str, status: &str, extra: serde_json::Value) -> Talk {
    let mut v = serde_json::json!({"id": id, "status": status});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

async fn run_to_end(video: MockVideoApi) -> (Usage, JobStatus) {
    let (jobs, store) = engine(video, 100);
    jobs.start();
    let Admitted::New(job) = jobs.enqueue(web_request(None), None).await.unwrap() else {
        panic!("a new job");
    };
    assert_eq!(usage(&store).await.reserved, 3, "the estimate is held");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = jobs.job(&job.id).await.unwrap().status;
        if status.is_terminal() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    jobs.stop();
    jobs.join(Duration::from_secs(1)).await;
    (usage(&store).await, status)
}

fn video_ending(status: &'static str, extra: serde_json::Value) -> MockVideoApi {
    let mut video = MockVideoApi::new();
    video.expect_create_talk_keyed().returning(|_, _, _, _| {
        Ok(CreatedTalk {
            id: TalkId::parse("tlk_credits").unwrap(),
            status: TalkStatus::Created,
            created_at: None,
        })
    });
    video
        .expect_get_talk()
        .returning(move |_, _| Ok(talk_json("tlk_credits", status, extra.clone())));
    video
}

#[tokio::test]
async fn a_done_talk_settles_its_real_duration_and_an_error_is_refunded() {
    // 31 s of video: 3 units of 15 s, what the estimate (40 s) also said; 61 s: 5.
    let (u, status) = run_to_end(video_ending(
        "done",
        serde_json::json!({"result_url": "https://example.test/r.mp4", "duration": 61.0}),
    ))
    .await;
    assert_eq!(status, JobStatus::Done);
    assert_eq!(
        u,
        Usage {
            spent: 5,
            reserved: 0
        },
        "D-ID's duration, not the estimate"
    );
    let (u, status) = run_to_end(video_ending(
        "error",
        serde_json::json!({"error": {"kind": "FaceError", "description": "no face"}}),
    ))
    .await;
    assert_eq!(status, JobStatus::Failed);
    assert_eq!(
        u,
        Usage::default(),
        "D-ID refunds a talk that ends in error"
    );
}

#[tokio::test]
async fn the_sweep_settles_what_a_dead_process_left_behind() {
    let (jobs, store) = engine(MockVideoApi::new(), 100);
    let Admitted::New(job) = jobs.enqueue(web_request(None), None).await.unwrap() else {
        panic!("a new job");
    };
    // The job ends without the engine knowing (another process cancelled it and died).
    let mut ended = job.clone();
    ended.status = JobStatus::Cancelled;
    ended.finished_ms = Some(app::now_ms());
    store.update(ended).await.unwrap();
    let credits = jobs.credits().unwrap();
    assert_eq!(
        credits.sweep(&*store, app::now_ms()).await,
        0,
        "not stale yet"
    );
    let later = app::now_ms() + 11 * 60 * 1000;
    assert_eq!(credits.sweep(&*store, later).await, 1);
    assert_eq!(usage(&store).await, Usage::default());
    // A reservation whose job never got stored is released too.
    let hold = ports::Reservation {
        job: app::new_job_id(),
        tenant: web(),
        period: BudgetPeriod::Month.window(app::now_ms()).key,
        credits: 2,
        at_ms: app::now_ms(),
    };
    store.reserve(&hold, 100).await.unwrap();
    assert_eq!(credits.sweep(&*store, later).await, 1);
    assert_eq!(usage(&store).await, Usage::default());
}
