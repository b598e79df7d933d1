//! Webhook delivery (the spec's §10.5) and its knobs, against a receiver the test starts on
//! loopback: a terminal talk with a `webhook` is POSTed as its `GET /talks/{id}` JSON; drop,
//! duplicate, delay, reorder and retries do what they say and are counted in the stats.

use std::time::Duration;

use did_fake::{FakeBuilder, WebhookFaults};
use serde_json::Value;
use test_support::eventually;
use test_support::receiver::Receiver;

use crate::support::{Api, SHORT, fast, faults, spawn, talk_body};

/// A talk with `webhook` set to `url`; its id.
async fn talk_with_webhook(api: &Api, url: &str, user_data: &str) -> String {
    let mut body = talk_body();
    body["webhook"] = Value::from(url);
    body["user_data"] = Value::from(user_data);
    api.create_talk_from(&body).await
}

/// Where the receivers take webhooks.
const HOOK: &str = "/hooks/d-id";

fn with_webhooks(set: impl FnOnce(&mut WebhookFaults)) -> FakeBuilder {
    fast()
        .allow_http_webhooks(true)
        .faults(faults(|f| set(&mut f.webhooks)))
}

#[tokio::test]
async fn a_finished_talk_is_posted_to_its_webhook_as_its_get_json() {
    let receiver = Receiver::start(200).await;
    let (fake, api) = spawn(with_webhooks(|_| {})).await;
    let id = talk_with_webhook(&api, &receiver.url(HOOK), "job-1").await;
    let got = receiver.wait_for(1, SHORT).await;
    let got = &got[0];
    assert_eq!(got.header("content-type"), Some("application/json"));
    let talk = api.get(&format!("/talks/{id}")).await.json();
    // The body is the talk as GET shows it (its result_url is signed afresh on each GET).
    for field in [
        "id",
        "status",
        "user_data",
        "webhook",
        "created_at",
        "metadata",
    ] {
        assert_eq!(got.json()[field], talk[field], "{field}: {}", got.json());
    }
    assert_eq!(got.json()["status"], "done");
    assert!(got.json()["result_url"].as_str().unwrap().contains(&id));
    let stats = eventually(SHORT, "the delivery counted", || async {
        let s = fake.stats().webhooks;
        if s.delivered == 1 && s.pending == 0 {
            Ok(s)
        } else {
            Err(s)
        }
    })
    .await;
    assert_eq!((stats.due, stats.attempts, stats.failed), (1, 1, 0));
    // The stats route says the same.
    let served = api.get("/_fake/stats").await.json();
    assert_eq!(served["webhooks"]["delivered"], 1, "{served}");
    // A talk without a webhook sends nothing.
    let plain = api.create_talk(None).await;
    api.wait_status(&plain, &["done"], SHORT).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(fake.stats().webhooks.due, 1);
}

#[tokio::test]
async fn failed_and_rejected_talks_are_posted_too() {
    let receiver = Receiver::start(204).await;
    let (fake, api) = spawn(
        fast()
            .allow_http_webhooks(true)
            .faults(faults(|f| f.p_async_error = 1.0)),
    )
    .await;
    talk_with_webhook(&api, &receiver.url(HOOK), "err").await;
    let got = receiver.wait_for(1, SHORT).await;
    assert_eq!(got[0].json()["status"], "error");
    assert!(
        got[0].json()["error"]["kind"].is_string(),
        "{}",
        got[0].json()
    );
    fake.set_faults(faults(|f| f.p_rejected = 1.0));
    talk_with_webhook(&api, &receiver.url(HOOK), "rej").await;
    let got = receiver.wait_for(2, SHORT).await;
    assert_eq!(got[1].json()["status"], "rejected");
    assert_eq!(got[1].json()["user_data"], "rej");
}

#[tokio::test]
async fn dropped_webhooks_are_never_sent_and_duplicates_arrive_twice() {
    let receiver = Receiver::start(200).await;
    let (fake, api) = spawn(with_webhooks(|w| w.p_drop = 1.0)).await;
    let id = talk_with_webhook(&api, &receiver.url(HOOK), "dropped").await;
    api.wait_status(&id, &["done"], SHORT).await;
    eventually(SHORT, "the drop counted", || async {
        let s = fake.stats().webhooks;
        if s.dropped == 1 { Ok(()) } else { Err(s) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(receiver.received().is_empty(), "a dropped webhook was sent");

    fake.set_faults(faults(|f| f.webhooks.p_duplicate = 1.0));
    let id = talk_with_webhook(&api, &receiver.url(HOOK), "twice").await;
    let got = receiver.wait_for(2, SHORT).await;
    assert!(got.iter().all(|r| r.json()["id"] == id.as_str()), "{got:?}");
    let s = fake.stats().webhooks;
    assert_eq!((s.due, s.dropped, s.duplicated), (2, 1, 1), "{s:?}");
}

#[tokio::test]
async fn a_refusing_receiver_gets_every_attempt_then_the_sending_fails() {
    let receiver = Receiver::start(500).await;
    let (fake, api) = spawn(with_webhooks(|w| {
        w.attempts = 3;
        w.retry_backoff_ms = 10;
    }))
    .await;
    talk_with_webhook(&api, &receiver.url(HOOK), "retried").await;
    receiver.wait_for(3, SHORT).await;
    let s = eventually(SHORT, "the failure counted", || async {
        let s = fake.stats().webhooks;
        if s.failed == 1 { Ok(s) } else { Err(s) }
    })
    .await;
    assert_eq!((s.attempts, s.delivered, s.pending), (3, 0, 0), "{s:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.received().len(), 3, "no attempt beyond the third");
}

#[tokio::test]
async fn a_held_back_webhook_is_overtaken_by_a_later_one() {
    let receiver = Receiver::start(200).await;
    let (fake, api) = spawn(with_webhooks(|w| {
        w.p_reorder = 1.0;
        w.reorder_ms = 400;
    }))
    .await;
    let first = talk_with_webhook(&api, &receiver.url(HOOK), "first").await;
    api.wait_status(&first, &["done"], SHORT).await;
    // The second talk's webhook is not held back: it arrives before the first one's.
    fake.set_faults(faults(|_| {}));
    let second = talk_with_webhook(&api, &receiver.url(HOOK), "second").await;
    let got = receiver.wait_for(2, SHORT).await;
    assert_eq!(got[0].json()["id"], second.as_str(), "{got:?}");
    assert_eq!(got[1].json()["id"], first.as_str());
    assert_eq!(fake.stats().webhooks.reordered, 1);
}

#[tokio::test]
async fn bad_webhook_knobs_are_refused() {
    let (_fake, api) = spawn(fast()).await;
    let r = api
        .post_json(
            "/_fake/faults",
            &serde_json::json!({"webhooks": {"p_drop": 1.5}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("webhooks.p_drop"), "{}", r.text);
}
