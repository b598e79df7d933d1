//! D-ID's webhooks in the engine, with a scripted video port: the create carries the job's
//! receiver URL, a job expecting a webhook waits for the fallback interval, and a receipt
//! that arrives while a worker's poll is under way (a poll that asked just before the talk
//! ended) is not lost: the job is polled again as soon as the claim is let go.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::{Admitted, Jobs, JobsConfig, TalkWebhookReceipt, TalkWebhooks};
use common::request;
use domain::{CreatedTalk, Talk, TalkId, TalkStatus};
use jobstore_memory::MemoryJobStore;
use ports::{JobStatus, JobStore, MockVideoApi};

fn talk(id: &TalkId, status: &str) -> Talk {
    serde_json::from_value(serde_json::json!({
        "id": id.as_str(),
        "status": status,
        "result_url": "https://example.test/r.mp4",
    }))
    .unwrap()
}

async fn wait_until(jobs: &Jobs, id: &ports::JobId, status: JobStatus, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let job = jobs.job(id).await.unwrap();
        if job.status == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never reached {status}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_during_a_poll_that_just_missed_the_end_is_not_lost() {
    let talk_id = TalkId::parse("tlk_hooked").unwrap();
    let sent_webhook = Arc::new(Mutex::new(None::<String>));
    let polls = Arc::new(AtomicUsize::new(0));
    let mut video = MockVideoApi::new();
    {
        let (talk_id, sent) = (talk_id.clone(), Arc::clone(&sent_webhook));
        video
            .expect_create_talk_keyed()
            .times(1)
            .returning(move |request, _, _, _| {
                *sent.lock().unwrap() = request.webhook().map(str::to_owned);
                Ok(CreatedTalk {
                    id: talk_id.clone(),
                    status: TalkStatus::Created,
                    created_at: None,
                })
            });
    }
    {
        let (talk_id, polls) = (talk_id.clone(), Arc::clone(&polls));
        video.expect_get_talk().returning(move |_, _| {
            // The first poll asks while the talk still renders, and takes a while to answer:
            // the talk ends (and D-ID calls the webhook) meanwhile.
            if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(400));
                Ok(talk(&talk_id, "started"))
            } else {
                Ok(talk(&talk_id, "done"))
            }
        });
    }
    let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
    let config = JobsConfig {
        workers: 1,
        poll_max: Duration::from_millis(100),
        talk_webhooks: Some(TalkWebhooks {
            receiver: "https://gw.example.test/api/d_id_optimized/talk-webhooks".into(),
            // Far beyond the test: only receipts can finish the job in time.
            fallback_poll: Duration::from_secs(600),
        }),
        ..JobsConfig::default()
    };
    let jobs = Jobs::new(store.clone(), Arc::new(video), config);
    jobs.start();
    let Admitted::New(job) = jobs.enqueue(request(), None).await.unwrap() else {
        panic!("a new job");
    };
    wait_until(
        &jobs,
        &job.id,
        JobStatus::Processing,
        Duration::from_secs(5),
    )
    .await;
    let stored = store.get(&job.id).await.unwrap().unwrap();
    let token = stored.webhook_token.clone().expect("a token");
    assert!(stored.webhook_sent, "{stored:?}");
    assert_eq!(
        sent_webhook.lock().unwrap().as_deref(),
        Some(
            format!(
                "https://gw.example.test/api/d_id_optimized/talk-webhooks/{}?token={token}",
                job.id
            )
            .as_str()
        ),
        "the create asks D-ID to call the job's receiver"
    );
    // Expecting a webhook, the job is not polled on the short schedule.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        polls.load(Ordering::SeqCst),
        0,
        "polled although a webhook is expected"
    );

    // A first receipt makes the worker poll; a second one comes while that poll is under way.
    assert_eq!(
        jobs.receive_talk_webhook(job.id.as_str(), &token)
            .await
            .unwrap(),
        TalkWebhookReceipt::Accepted
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while polls.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receipt caused no poll"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        jobs.receive_talk_webhook(job.id.as_str(), &token)
            .await
            .unwrap(),
        TalkWebhookReceipt::Accepted
    );
    // The first poll answers `started` and plans the next one 600 s away; the second receipt
    // brings it forward once the claim is let go.
    wait_until(&jobs, &job.id, JobStatus::Done, Duration::from_secs(10)).await;
    assert_eq!(polls.load(Ordering::SeqCst), 2);
    assert_eq!(
        jobs.receive_talk_webhook(job.id.as_str(), &token)
            .await
            .unwrap(),
        TalkWebhookReceipt::Duplicate
    );
    assert_eq!(
        jobs.receive_talk_webhook(job.id.as_str(), "wrong")
            .await
            .unwrap(),
        TalkWebhookReceipt::Rejected
    );
    let counts = jobs.talk_webhook_counts();
    assert_eq!(
        (counts.accepted, counts.duplicate, counts.rejected),
        (2, 1, 1)
    );
    assert_eq!(counts.confirmed, 1, "{counts:?}");
    jobs.stop();
    jobs.join(Duration::from_secs(1)).await;
}
