//! Against `did-fake`: every operation end to end, exactly-once create under the fake's
//! create-then-fail knob, polling to each end state, faults seen as typed errors, one pool.

use std::sync::Arc;
use std::time::Duration;

use did_client::{CreateToken, DidClient, DidClientConfig, RetryPolicy};
use did_fake::{CreateThenFail, FakeDid, Faults, RunningFake};
use domain::{Priority, Script, Talk, TalkRequest, TalkStatus};
use ports::{Sent, VideoApi, VideoApiError, WaitOptions};
use secrecy::SecretString;

use crate::support::{fast_retry, fast_wait, hello, limiter, png_upload, wav_upload};

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

    let image = png_upload(Some("face.png"));
    let image = did.upload_image(image, &p.into()).await.unwrap();
    assert!(
        image.url.starts_with("s3://d-id-images-prod/"),
        "{}",
        image.url
    );
    let audio = wav_upload(Some("voice.wav"));
    let audio = did.upload_audio(audio, &p.into()).await.unwrap();
    assert!(
        audio.url.starts_with("s3://d-id-audios-prod/"),
        "{}",
        audio.url
    );

    let before = did.credits(&p.into()).await.unwrap();
    let request = TalkRequest::new(
        Some(image.url.clone()),
        Script::Audio {
            audio_url: audio.url.clone(),
        },
    )
    .unwrap()
    .with_user_data("e2e".into())
    .unwrap();
    let created = did.create_talk(&request, &p.into()).await.unwrap();
    let fetched = did.get_talk(&created.id, &p.into()).await.unwrap();
    assert_eq!(fetched.id, created.id);
    assert_eq!(
        fetched.user_data.as_deref(),
        Some("e2e"),
        "the tag is stripped"
    );

    let page = did.list_talks(Some(10), None, &p.into()).await.unwrap();
    assert!(page.talks.iter().any(|t| t.id == created.id));

    let done = did
        .create_talk_and_wait(&hello(Some("e2e-wait")), &p.into(), fast_wait())
        .await
        .unwrap();
    assert_eq!(done.status, TalkStatus::Done);
    assert!(
        done.result_url
            .as_deref()
            .is_some_and(|u| u.starts_with("http"))
    );
    assert_eq!(done.user_data.as_deref(), Some("e2e-wait"));

    let after = did.credits(&p.into()).await.unwrap();
    assert!(
        after.remaining < before.remaining,
        "{before:?} -> {after:?}"
    );

    let deleted = did.delete_talk(&done.id, &p.into()).await.unwrap();
    assert_eq!(deleted.id, done.id);
    let gone = did.get_talk(&done.id, &p.into()).await.unwrap_err();
    assert!(matches!(gone, VideoApiError::NotFound { .. }), "{gone:?}");
    did.delete_image(image.id.as_ref().unwrap(), &p.into())
        .await
        .unwrap();
    did.delete_audio(audio.id.as_ref().unwrap(), &p.into())
        .await
        .unwrap();
    let again = did
        .delete_image(image.id.as_ref().unwrap(), &p.into())
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
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
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
            .create_talk(&hello(Some(&caller)), &Priority::High.into())
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let stats = fake.stats();
        assert_eq!(created_for(&stats, &caller), [1], "{mode:?}: {stats:?}");
        assert_eq!(stats.talks_created, 1, "{mode:?}");
        assert_eq!(did.stats().create_recoveries, 1, "{mode:?}");
        // The talk found is the one made, and it renders to the end.
        let talk = did
            .get_talk(&created.id, &Priority::High.into())
            .await
            .unwrap();
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
                did.create_talk(
                    &hello(Some(&format!("burst-{i}"))),
                    &Priority::Normal.into(),
                )
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
    let (fake_done, _, result) = wait_under(Faults::default(), "w-done", fast_wait()).await;
    assert_eq!(result.unwrap().status, TalkStatus::Done);
    fake_done.shutdown().await;

    let faults = Faults {
        p_async_error: 1.0,
        ..Faults::default()
    };
    let (fake_error, _, result) = wait_under(faults, "w-error", fast_wait()).await;
    let err = result.unwrap_err();
    let VideoApiError::TalkFailed { kind, .. } = &err else {
        panic!("expected TalkFailed, got {err:?}")
    };
    assert!(
        ["FaceError", "SourceError", "UnknownError"].contains(&kind.as_str()),
        "{err:?}"
    );
    fake_error.shutdown().await;

    let faults = Faults {
        p_rejected: 1.0,
        ..Faults::default()
    };
    let (fake_rejected, _, result) = wait_under(faults, "w-rejected", fast_wait()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, VideoApiError::TalkRejected { .. }), "{err:?}");
    fake_rejected.shutdown().await;

    let faults = Faults {
        p_stuck: 1.0,
        ..Faults::default()
    };
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(20),
        max_wait: Duration::from_millis(400),
    };
    let (fake_stuck, did_stuck, result) = wait_under(faults, "w-stuck", wait).await;
    let err = result.unwrap_err();
    let VideoApiError::TalkTimedOut { talk_id, .. } = &err else {
        panic!("expected TalkTimedOut, got {err:?}")
    };
    // The id lets the caller resume: the talk is still there, still started.
    let talk = did_stuck
        .get_talk(talk_id, &Priority::Normal.into())
        .await
        .unwrap();
    assert_eq!(talk.status, TalkStatus::Started);
    fake_stuck.shutdown().await;
}

/// `create_talk_and_wait` of `caller`'s talk against a fake with `faults`; the fake and the
/// client are returned for what a test checks after.
async fn wait_under(
    faults: Faults,
    caller: &str,
    wait: WaitOptions,
) -> (RunningFake, DidClient, Result<Talk, VideoApiError>) {
    let fake = fake(faults).await;
    let did = did(&fake);
    let result = did
        .create_talk_and_wait(&hello(Some(caller)), &Priority::Normal.into(), wait)
        .await;
    (fake, did, result)
}

#[tokio::test]
async fn the_fakes_faults_arrive_as_typed_errors_after_the_right_attempts() {
    let fake = fake(Faults {
        p_500: 1.0,
        ..Faults::default()
    })
    .await;
    let did = did(&fake);
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
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
            did.credits(&Priority::Normal.into()).await.unwrap();
        }
        let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
        assert_eq!(err, expected, "{faults:?}");
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn sequential_calls_reuse_one_pooled_connection() {
    let fake = fake(Faults::default()).await;
    let did = did(&fake);
    for _ in 0..20 {
        did.credits(&Priority::Low.into()).await.unwrap();
    }
    assert_eq!(fake.stats().connections_accepted, 1);
    let stats = did.stats();
    assert_eq!(stats.requests, 20);
    assert_eq!(stats.responses.get(&200), Some(&20));
    fake.shutdown().await;
}

/// The durable-job case: process A's create reached D-ID but A never learned the talk's id
/// (its look-up finds nothing and it gives up, as if it had crashed). Process B, a second
/// client with the same caller-supplied token, must find A's talk instead of paying again.
#[tokio::test]
async fn two_clients_with_the_same_token_make_one_talk_under_create_then_fail() {
    let fake = fake(Faults {
        p_create_then_fail: 1.0,
        create_then_fail: CreateThenFail::Status500,
        routes: vec!["POST /talks".into()],
        ..Faults::default()
    })
    .await;
    let request = hello(Some("job-41"));
    let token = CreateToken::derive("job-41");
    let a = crate::support::client(
        DidClientConfig {
            retry: RetryPolicy {
                max_attempts: 1,
                ..fast_retry()
            },
            recovery_pages: 0,
            ..did_config(&fake)
        },
        limiter(4),
    );
    let err = a
        .create_talk_with_token(&request, &Priority::High.into(), &token)
        .await
        .unwrap_err();
    assert_eq!(err.error, VideoApiError::Server { status: 500 });
    assert_eq!(
        err.sent,
        Sent::Maybe,
        "the 500 came after the talk was made"
    );
    let tagged = format!("job-41|tg:{token}");
    assert_eq!(fake.stats().talks_by_user_data.get(&tagged), Some(&1));
    let posts = fake.stats().total("POST /talks");

    // B: another client (another process), D-ID still failing after every create.
    let b = did(&fake);
    let created = b
        .create_talk_with_token(&request, &Priority::High.into(), &token)
        .await
        .expect("B finds A's talk");
    let stats = fake.stats();
    assert_eq!(stats.talks_created, 1, "{stats:?}");
    assert_eq!(stats.total("POST /talks"), posts, "B looked before posting");
    assert_eq!(b.stats().create_recoveries, 1);
    let talk = b
        .get_talk(&created.id, &Priority::High.into())
        .await
        .unwrap();
    assert_eq!(talk.user_data.as_deref(), Some("job-41"));

    // Asking again is idempotent; another key is another talk.
    fake.set_faults(Faults::default());
    let again = b
        .create_talk_with_token(&request, &Priority::High.into(), &token)
        .await
        .unwrap();
    assert_eq!(again.id, created.id);
    let other = b
        .create_talk_with_token(
            &request,
            &Priority::High.into(),
            &CreateToken::derive("job-42"),
        )
        .await
        .unwrap();
    assert_ne!(other.id, created.id);
    assert_eq!(fake.stats().talks_created, 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_token_that_does_not_fit_in_user_data_is_refused_before_any_call() {
    let fake = fake(Faults::default()).await;
    let did = did(&fake);
    let request = hello(Some(&"x".repeat(1000 - did_client::tag::TAG_LEN + 1)));
    let err = did
        .create_talk_with_token(&request, &Priority::Low.into(), &CreateToken::derive("job"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err.error, VideoApiError::Validation { status: 400, description, .. } if description.contains("create token")),
        "{err:?}"
    );
    assert_eq!(err.sent, Sent::Nothing);
    assert_eq!(did.stats().requests, 0);
    assert_eq!(fake.stats().talks_created, 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_throttled_create_says_it_sent_nothing_and_is_not_looked_up() {
    let fake = fake(Faults {
        rate_limit_rps: Some(0.01),
        rate_limit_burst: Some(1.0),
        ..Faults::default()
    })
    .await;
    let did = did(&fake);
    // The bucket's one token.
    did.credits(&Priority::Normal.into()).await.unwrap();
    let err = did
        .create_talk_keyed(
            &hello(Some("job-7")),
            &Priority::Normal.into(),
            "job-7",
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.error, VideoApiError::RateLimited { retry_after: None });
    assert_eq!(err.sent, Sent::Nothing);
    let stats = fake.stats();
    assert_eq!(stats.count("POST /talks", 429), 1);
    assert_eq!(stats.total("GET /talks"), 0, "nothing to look for");
    assert_eq!(stats.talks_created, 0);
    assert_eq!(did.stats().lookup_pages, 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_create_answered_5xx_or_cut_says_it_may_have_sent() {
    for faults in [
        Faults {
            p_500: 1.0,
            ..Faults::default()
        },
        Faults {
            p_reset: 1.0,
            ..Faults::default()
        },
        Faults {
            p_504: 1.0,
            delay_504_ms: Some(5),
            ..Faults::default()
        },
    ] {
        let fake = fake(Faults {
            routes: vec!["POST /talks".into()],
            ..faults.clone()
        })
        .await;
        let did = did(&fake);
        let err = did
            .create_talk_keyed(
                &hello(Some("job-8")),
                &Priority::Normal.into(),
                "job-8",
                false,
            )
            .await
            .unwrap_err();
        assert!(err.error.is_retryable(), "{faults:?}: {err:?}");
        assert_eq!(err.sent, Sent::Maybe, "{faults:?}");
        // Each ambiguous attempt was looked up (nothing was made: one page each).
        let stats = fake.stats();
        assert_eq!(stats.total("POST /talks"), 3, "{faults:?}");
        assert_eq!(stats.total("GET /talks"), 3, "{faults:?}");
        assert_eq!(did.stats().lookup_pages, 3, "{faults:?}");
        fake.shutdown().await;
    }
}
