//! Callbacks in the engine, with a scripted sender: the write that ends a job arms its
//! callback, workers retry it with back-off under one `webhook-id` and the same body until a
//! 2xx, give up at once on a permanent refusal and after the horizon otherwise, and every
//! attempt shows on the job.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::{Admitted, CallbackSettings, Jobs, JobsConfig};
use async_trait::async_trait;
use common::request;
use jobstore_memory::MemoryJobStore;
use ports::{
    CallbackDelivery, CallbackError, CallbackEvent, CallbackReceipt, CallbackSender,
    CallbackStatus, Job, JobId, JobStore, MockVideoApi,
};

/// Answers with the scripted outcomes in turn (the last one repeats) and records what it
/// was asked to send.
struct Scripted {
    outcomes: Mutex<VecDeque<Result<u16, CallbackError>>>,
    sent: Mutex<Vec<CallbackDelivery>>,
}

impl Scripted {
    fn new(outcomes: Vec<Result<u16, CallbackError>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            outcomes: Mutex::new(outcomes.into()),
            sent: Mutex::new(Vec::new()),
        })
    }

    fn sent(&self) -> Vec<CallbackDelivery> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl CallbackSender for Scripted {
    async fn send(&self, delivery: &CallbackDelivery) -> Result<CallbackReceipt, CallbackError> {
        self.sent.lock().unwrap().push(delivery.clone());
        let mut outcomes = self.outcomes.lock().unwrap();
        let outcome = if outcomes.len() > 1 {
            outcomes.pop_front().unwrap()
        } else {
            outcomes.front().cloned().unwrap()
        };
        outcome.map(|status| CallbackReceipt {
            status,
            took: Duration::from_millis(1),
        })
    }
}

fn engine(sender: Arc<Scripted>, horizon: Duration) -> (Arc<Jobs>, Arc<dyn JobStore>) {
    let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
    let render: app::RenderCallback = Arc::new(|job: &Job, cb: &ports::Callback| {
        serde_json::to_vec(&serde_json::json!({
            "type": cb.event.as_str(),
            "data": {"job_id": job.id, "status": job.status},
        }))
        .unwrap()
    });
    let callbacks = CallbackSettings {
        first_retry: Duration::from_millis(50),
        horizon,
        ..CallbackSettings::new(sender, render)
    };
    let config = JobsConfig {
        // No job workers: the jobs stay queued until cancelled, and no D-ID call is made.
        workers: 0,
        callbacks: Some(callbacks),
        ..JobsConfig::default()
    };
    let jobs = Jobs::new(store.clone(), Arc::new(MockVideoApi::new()), config);
    jobs.start();
    (jobs, store)
}

async fn submit(jobs: &Jobs, callback: Option<&str>) -> JobId {
    let mut req = request();
    req.callback_url = callback.map(|u| domain::CallbackUrl::parse(u).unwrap());
    match jobs.enqueue(req, None).await.unwrap() {
        Admitted::New(job) => job.id,
        other => panic!("a new job: {other:?}"),
    }
}

async fn settled(store: &dyn JobStore, id: &JobId, within: Duration) -> Job {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let job = store.get(id).await.unwrap().unwrap();
        if job.callback.as_ref().is_some_and(|c| !c.is_pending()) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the callback never settled: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_job_is_called_back_until_a_2xx_under_one_webhook_id() {
    let sender = Scripted::new(vec![
        Err(CallbackError::Status { status: 503 }),
        Err(CallbackError::Timeout(Duration::from_secs(15))),
        Ok(204),
    ]);
    let (jobs, store) = engine(Arc::clone(&sender), Duration::from_secs(3600));
    let id = submit(&jobs, Some("https://hooks.example.com/talkgate?k=1")).await;
    let quiet = submit(&jobs, None).await;
    assert!(
        store.get(&id).await.unwrap().unwrap().callback.is_none(),
        "nothing is armed before the job ends"
    );
    jobs.cancel_job(&quiet, &domain::Tenant::public())
        .await
        .unwrap();
    let cancelled = jobs
        .cancel_job(&id, &domain::Tenant::public())
        .await
        .unwrap();
    let armed = cancelled.callback.clone().expect("the cancel armed it");
    assert_eq!(armed.event, CallbackEvent::JobCancelled);
    let job = settled(&*store, &id, Duration::from_secs(10)).await;
    let cb = job.callback.clone().unwrap();
    assert_eq!(cb.status, CallbackStatus::Delivered);
    assert_eq!(cb.webhook_id, armed.webhook_id);
    assert_eq!(cb.attempts, 3);
    let outcomes: Vec<(&str, Option<u16>)> = cb
        .history
        .iter()
        .map(|a| (a.outcome.as_str(), a.status))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("status", Some(503)),
            ("timed_out", None),
            ("ok", Some(204))
        ]
    );
    // The back-off: at least the first retry's 50 ms (−10 %), then twice that.
    let gaps: Vec<u64> = cb
        .history
        .windows(2)
        .map(|w| w[1].at_ms - w[0].at_ms)
        .collect();
    assert!(gaps[0] >= 45 && gaps[1] >= 90, "{gaps:?}");
    assert!(job.lease.is_none(), "the claim is let go: {job:?}");
    let sent = sender.sent();
    assert_eq!(
        sent.len(),
        3,
        "the job without a callback_url sends nothing"
    );
    assert!(sent.iter().all(|d| d.webhook_id == cb.webhook_id));
    assert!(
        sent.iter().all(|d| d.payload == sent[0].payload),
        "the same bytes every time"
    );
    let body: serde_json::Value = serde_json::from_slice(&sent[0].payload).unwrap();
    assert_eq!(body["type"], "job.cancelled");
    assert_eq!(body["data"]["job_id"], id.as_str());
    let counts = jobs.callback_counts();
    assert_eq!(
        (
            counts.attempted(),
            counts.attempts_ok,
            counts.delivered,
            counts.failed
        ),
        (3, 1, 1, 0)
    );
    assert_eq!(store.counts().await.unwrap().callbacks_pending, 0);
    // Cancelling again changes nothing and arms nothing new.
    let again = jobs
        .cancel_job(&id, &domain::Tenant::public())
        .await
        .unwrap();
    assert_eq!(again.callback, job.callback);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_gives_up_at_once_and_the_horizon_ends_retries() {
    let gone = Scripted::new(vec![Err(CallbackError::Status { status: 410 })]);
    let (jobs, store) = engine(Arc::clone(&gone), Duration::from_secs(3600));
    let id = submit(&jobs, Some("https://hooks.example.com/gone")).await;
    jobs.cancel_job(&id, &domain::Tenant::public())
        .await
        .unwrap();
    let job = settled(&*store, &id, Duration::from_secs(10)).await;
    let cb = job.callback.unwrap();
    assert_eq!((cb.status, cb.attempts), (CallbackStatus::Failed, 1));
    assert_eq!(jobs.callback_counts().failed, 1);

    // Always 500, with a horizon of 300 ms: 50 ms, 100 ms, 200 ms pauses… until the next
    // attempt would come after the horizon.
    let failing = Scripted::new(vec![Err(CallbackError::Status { status: 500 })]);
    let (jobs, store) = engine(Arc::clone(&failing), Duration::from_millis(300));
    let id = submit(&jobs, Some("https://hooks.example.com/down")).await;
    jobs.cancel_job(&id, &domain::Tenant::public())
        .await
        .unwrap();
    let job = settled(&*store, &id, Duration::from_secs(10)).await;
    let cb = job.callback.unwrap();
    assert_eq!(cb.status, CallbackStatus::Failed);
    assert!(
        (2..=4).contains(&cb.attempts),
        "a few attempts within 300 ms: {}",
        cb.attempts
    );
    assert_eq!(failing.sent().len() as u32, cb.attempts);
    let ended = cb.ended_ms.unwrap();
    assert!(
        ended - cb.created_ms <= 400,
        "given up around the horizon: {} ms",
        ended - cb.created_ms
    );
}
