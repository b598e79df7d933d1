//! Against `did-fake`: every operation end to end, exactly-once create under the fake's
//! create-then-fail knob, polling to each end state, faults seen as typed errors, one pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use did_client::{DidClient, DidClientConfig};
use did_fake::{CreateThenFail, FakeDid, Faults, RunningFake};
use domain::{Priority, Script, TalkRequest, TalkStatus, Upload, UploadKind};
use ports::{VideoApi, VideoApiError, WaitOptions};
use secrecy::SecretString;

use test_support::media::{png, wav};

use crate::support::{fast_retry, limiter};

async fn fake(faults: Faults) -> RunningFake {
    FakeDid::builder()
        .time_scale(0.001)
        .seed(7)
        .faults(faults)
        .spawn()
        .await
        .unwrap()
}

fn did_config(fake: &RunningFake) -> DidClientConfig {
    DidClientConfig {
        retry: fast_retry(),
        request_timeout: Duration::from_secs(5),
        call_deadline: Duration::from_secs(20),
        limiter_wait_timeout: Duration::from_secs(5),
        ..DidClientConfig::new(
            fake.base_url(),
            Some(SecretString::from(did_fake::DEFAULT_API_KEY)),
        )
    }
}

fn did(fake: &RunningFake) -> DidClient {
    crate::support::client(did_config(fake), limiter(4))
}

fn text_request(user_data: &str) -> TalkRequest {
    TalkRequest::new(
        None,
        Script::Text {
            input: "Hello from the tests.".into(),
        },
    )
    .unwrap()
    .with_user_data(user_data.into())
    .unwrap()
}

fn fast_wait() -> WaitOptions {
    WaitOptions {
        poll_interval: Duration::from_millis(10),
        max_wait: Duration::from_secs(10),
    }
}

/// The fake's talk counts for every `user_data` the client derived from `caller`.
fn created_for(fake_stats: &did_fake::FakeStats, caller: &str) -> Vec<u64> {
    let prefix = format!("{caller}|tg:");
    fake_stats
        .talks_by_user_data
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, n)| *n)
        .collect()
}

#[tokio::test]
async fn every_operation_works_end_to_end() {
    let fake = fake(Faults::default()).await;
    let did = did(&fake);
    let p = Priority::Normal;

    let image = Upload::new(
        UploadKind::Image,
        Some("face.png"),
        Bytes::from_static(png()),
    )
    .unwrap();
    let image = did.upload_image(image, p).await.unwrap();
    assert!(
        image.url.starts_with("s3://d-id-images-prod/"),
        "{}",
        image.url
    );
    let audio = Upload::new(
        UploadKind::Audio,
        Some("voice.wav"),
        Bytes::from_static(wav()),
    )
    .unwrap();
    let audio = did.upload_audio(audio, p).await.unwrap();
    assert!(
        audio.url.starts_with("s3://d-id-audios-prod/"),
        "{}",
        audio.url
    );

    let before = did.credits(p).await.unwrap();
    let request = TalkRequest::new(
        Some(image.url.clone()),
        Script::Audio {
            audio_url: audio.url.clone(),
        },
    )
    .unwrap()
    .with_user_data("e2e".into())
    .unwrap();
    let created = did.create_talk(&request, p).await.unwrap();
    let fetched = did.get_talk(&created.id, p).await.unwrap();
    assert_eq!(fetched.id, created.id);
    assert_eq!(
        fetched.user_data.as_deref(),
        Some("e2e"),
        "the tag is stripped"
    );

    let page = did.list_talks(Some(10), None, p).await.unwrap();
    assert!(page.talks.iter().any(|t| t.id == created.id));

    let done = did
        .create_talk_and_wait(&text_request("e2e-wait"), p, fast_wait())
        .await
        .unwrap();
    assert_eq!(done.status, TalkStatus::Done);
    assert!(
        done.result_url
            .as_deref()
            .is_some_and(|u| u.starts_with("http"))
    );
    assert_eq!(done.user_data.as_deref(), Some("e2e-wait"));

    let after = did.credits(p).await.unwrap();
    assert!(
        after.remaining < before.remaining,
        "{before:?} -> {after:?}"
    );

    let deleted = did.delete_talk(&done.id, p).await.unwrap();
    assert_eq!(deleted.id, done.id);
    let gone = did.get_talk(&done.id, p).await.unwrap_err();
    assert!(matches!(gone, VideoApiError::NotFound { .. }), "{gone:?}");
    did.delete_image(image.id.as_ref().unwrap(), p)
        .await
        .unwrap();
    did.delete_audio(audio.id.as_ref().unwrap(), p)
        .await
        .unwrap();
    let again = did
        .delete_image(image.id.as_ref().unwrap(), p)
        .await
        .unwrap_err();
    assert!(matches!(again, VideoApiError::NotFound { .. }), "{again:?}");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized_and_not_retried() {
    let fake = fake(Faults::default()).await;
    let mut cfg = did_config(&fake);
    cfg.api_key = Some(SecretString::from("talkgate:wrong-key"));
    let did = crate::support::client(cfg, limiter(1));
    let err = did.credits(Priority::Normal).await.unwrap_err();
    assert_eq!(err, VideoApiError::Unauthorized { status: 401 });
    assert_eq!(did.stats().requests, 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn create_then_fail_creates_exactly_one_talk_whatever_the_failure() {
    for mode in [
        CreateThenFail::Status500,
        CreateThenFail::Status504,
        CreateThenFail::Reset,
        CreateThenFail::Mixed,
    ] {
        let fake = fake(Faults {
            p_create_then_fail: 1.0,
            create_then_fail: mode,
            delay_504_ms: Some(5),
            ..Faults::default()
        })
        .await;
        let did = did(&fake);
        let caller = format!("once-{mode:?}");
        let created = did
            .create_talk(&text_request(&caller), Priority::High)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let stats = fake.stats();
        assert_eq!(created_for(&stats, &caller), [1], "{mode:?}: {stats:?}");
        assert_eq!(stats.talks_created, 1, "{mode:?}");
        assert_eq!(did.stats().create_recoveries, 1, "{mode:?}");
        // The talk found is the one made, and it renders to the end.
        let talk = did.get_talk(&created.id, Priority::High).await.unwrap();
        assert_eq!(talk.user_data.as_deref(), Some(caller.as_str()));
        fake.shutdown().await;
    }
}

#[tokio::test]
async fn concurrent_creates_under_mixed_faults_never_duplicate() {
    let fake = fake(Faults {
        p_create_then_fail: 0.3,
        p_500: 0.2,
        routes: vec!["POST /talks".into()],
        ..Faults::default()
    })
    .await;
    let did = Arc::new(did(&fake));
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let did = did.clone();
            tokio::spawn(async move {
                did.create_talk(&text_request(&format!("burst-{i}")), Priority::Normal)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.unwrap();
        let counts = created_for(&fake.stats(), &format!("burst-{i}"));
        match result {
            Ok(_) => {
                ok += 1;
                assert_eq!(counts, [1], "burst-{i}");
            }
            // Three plain 500s in a row (p = 0.008) leave no talk at all.
            Err(e) => assert!(counts.is_empty(), "burst-{i}: {e} with {counts:?}"),
        }
    }
    assert!(ok >= 18, "only {ok} of 20 creates succeeded");
    assert!(did.stats().create_recoveries >= 1);
    assert_eq!(fake.stats().talks_created, ok);
    fake.shutdown().await;
}

#[tokio::test]
async fn waiting_ends_in_each_terminal_state() {
    // done
    let fake_done = fake(Faults::default()).await;
    let talk = did(&fake_done)
        .create_talk_and_wait(&text_request("w-done"), Priority::Normal, fast_wait())
        .await
        .unwrap();
    assert_eq!(talk.status, TalkStatus::Done);
    fake_done.shutdown().await;

    // error
    let fake_error = fake(Faults {
        p_async_error: 1.0,
        ..Faults::default()
    })
    .await;
    let err = did(&fake_error)
        .create_talk_and_wait(&text_request("w-error"), Priority::Normal, fast_wait())
        .await
        .unwrap_err();
    let VideoApiError::TalkFailed { kind, .. } = &err else {
        panic!("expected TalkFailed, got {err:?}")
    };
    assert!(
        ["FaceError", "SourceError", "UnknownError"].contains(&kind.as_str()),
        "{err:?}"
    );
    fake_error.shutdown().await;

    // rejected
    let fake_rejected = fake(Faults {
        p_rejected: 1.0,
        ..Faults::default()
    })
    .await;
    let err = did(&fake_rejected)
        .create_talk_and_wait(&text_request("w-rejected"), Priority::Normal, fast_wait())
        .await
        .unwrap_err();
    assert!(matches!(err, VideoApiError::TalkRejected { .. }), "{err:?}");
    fake_rejected.shutdown().await;

    // stuck
    let fake_stuck = fake(Faults {
        p_stuck: 1.0,
        ..Faults::default()
    })
    .await;
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(20),
        max_wait: Duration::from_millis(400),
    };
    let did_stuck = did(&fake_stuck);
    let err = did_stuck
        .create_talk_and_wait(&text_request("w-stuck"), Priority::Normal, wait)
        .await
        .unwrap_err();
    let VideoApiError::TalkTimedOut { talk_id, .. } = &err else {
        panic!("expected TalkTimedOut, got {err:?}")
    };
    // The id lets the caller resume: the talk is still there, still started.
    let talk = did_stuck.get_talk(talk_id, Priority::Normal).await.unwrap();
    assert_eq!(talk.status, TalkStatus::Started);
    fake_stuck.shutdown().await;
}

#[tokio::test]
async fn the_fakes_faults_arrive_as_typed_errors_after_the_right_attempts() {
    let fake = fake(Faults {
        p_500: 1.0,
        ..Faults::default()
    })
    .await;
    let did = did(&fake);
    let err = did.credits(Priority::Normal).await.unwrap_err();
    assert_eq!(err, VideoApiError::Server { status: 500 });
    assert_eq!(fake.stats().count("GET /credits", 500), 3);
    assert_eq!(did.stats().retries, 2);

    let cases = [
        (
            Faults {
                p_502_html: 1.0,
                ..Faults::default()
            },
            VideoApiError::Server { status: 502 },
        ),
        (
            Faults {
                p_gateway_deny: 1.0,
                ..Faults::default()
            },
            VideoApiError::Unauthorized { status: 403 },
        ),
        (
            Faults {
                rate_limit_rps: Some(0.001),
                rate_limit_burst: Some(1.0),
                retry_after_secs: Some(30),
                ..Faults::default()
            },
            VideoApiError::RateLimited {
                retry_after: Some(Duration::from_secs(30)),
            },
        ),
    ];
    for (faults, expected) in cases {
        fake.set_faults(faults.clone());
        // With a burst of 1 the first call passes; the second is the one under test.
        if faults.rate_limit_rps.is_some() {
            did.credits(Priority::Normal).await.unwrap();
        }
        let err = did.credits(Priority::Normal).await.unwrap_err();
        assert_eq!(err, expected, "{faults:?}");
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn sequential_calls_reuse_one_pooled_connection() {
    let fake = fake(Faults::default()).await;
    let did = did(&fake);
    for _ in 0..20 {
        did.credits(Priority::Low).await.unwrap();
    }
    assert_eq!(fake.stats().connections_accepted, 1);
    let stats = did.stats();
    assert_eq!(stats.requests, 20);
    assert_eq!(stats.responses.get(&200), Some(&20));
    fake.shutdown().await;
}
