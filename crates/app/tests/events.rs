//! The job-events contract, on the calling side: the engine tells the events port of every
//! committed transition once, in order, after the store has it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::{Admitted, Jobs, JobsConfig};
use async_trait::async_trait;
use common::request;
use domain::{CreatedTalk, Talk, TalkId, TalkStatus};
use jobstore_memory::MemoryJobStore;
use ports::{JobEvent, JobEvents, JobStatus, JobStore, MockVideoApi};

/// One event: the state left, the state entered, the state the store had when told.
type Seen = (Option<JobStatus>, JobStatus, Option<JobStatus>);

/// Records each event with the job's state as the store had it when the event came.
struct Recorder {
    store: Arc<dyn JobStore>,
    seen: Mutex<Vec<Seen>>,
}

#[async_trait]
impl JobEvents for Recorder {
    async fn job_changed(&self, event: &JobEvent) {
        let stored = self
            .store
            .get(&event.job.id)
            .await
            .unwrap()
            .map(|j| j.status);
        self.seen
            .lock()
            .unwrap()
            .push((event.from, event.job.status, stored));
    }
}

fn engine(video: MockVideoApi) -> (Arc<Jobs>, Arc<Recorder>) {
    let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());
    let recorder = Arc::new(Recorder {
        store: store.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let config = JobsConfig {
        workers: 1,
        poll_max: Duration::from_millis(100),
        ..JobsConfig::default()
    };
    let jobs = Jobs::with_events(store, Arc::new(video), config, recorder.clone());
    (jobs, recorder)
}

#[tokio::test]
async fn every_transition_of_a_job_is_told_once_in_order_after_it_is_stored() {
    let talk = TalkId::parse("tlk_events").unwrap();
    let mut video = MockVideoApi::new();
    let created = talk.clone();
    video
        .expect_create_talk_keyed()
        .times(1)
        .returning(move |_, _, _, _| {
            Ok(CreatedTalk {
                id: created.clone(),
                status: TalkStatus::Created,
                created_at: None,
            })
        });
    let done = talk.clone();
    video.expect_get_talk().returning(move |_, _| {
        Ok(serde_json::from_value::<Talk>(serde_json::json!({
            "id": done.as_str(),
            "status": "done",
            "result_url": "https://example.test/r.mp4",
        }))
        .unwrap())
    });
    let (jobs, recorder) = engine(video);
    jobs.start();
    let Admitted::New(job) = jobs.enqueue(request(), None).await.unwrap() else {
        panic!("a new job");
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while jobs.job(&job.id).await.unwrap().status != JobStatus::Done {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    jobs.stop();
    jobs.join(Duration::from_secs(1)).await;
    let seen = recorder.seen.lock().unwrap().clone();
    use JobStatus::*;
    assert_eq!(
        seen,
        [
            (None, Queued, Some(Queued)),
            (Some(Queued), Creating, Some(Creating)),
            (Some(Creating), Processing, Some(Processing)),
            (Some(Processing), Done, Some(Done)),
        ]
    );
}

#[tokio::test]
async fn a_cancel_is_a_transition_and_a_replay_is_none() {
    let (jobs, recorder) = engine(MockVideoApi::new());
    let mut keyed = request();
    keyed.key = Some(ports::ScopedKey {
        tenant: domain::Tenant::public(),
        key: "k1".into(),
    });
    let Admitted::New(job) = jobs.enqueue(keyed.clone(), None).await.unwrap() else {
        panic!("a new job");
    };
    assert!(matches!(
        jobs.enqueue(keyed, None).await.unwrap(),
        Admitted::Replay(_)
    ));
    jobs.cancel_job(&job.id, &job.tenant).await.unwrap();
    // Cancelling a cancelled job changes nothing, and tells nothing.
    jobs.cancel_job(&job.id, &job.tenant).await.unwrap();
    let seen = recorder.seen.lock().unwrap().clone();
    use JobStatus::*;
    assert_eq!(
        seen,
        [
            (None, Queued, Some(Queued)),
            (Some(Queued), Cancelled, Some(Cancelled)),
        ]
    );
}
