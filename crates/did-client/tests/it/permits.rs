//! A permit is held only while bytes are in flight: not while backing off, not between
//! status polls, and never after the caller gave up on the call.

use std::sync::Arc;
use std::time::Duration;

use domain::{Priority, TalkId};
use ports::{ConcurrencyLimiter, VideoApi, WaitOptions};
use serde_json::json;

use test_support::eventually;

use crate::support::{SETTLE, Scripted, client, config, hello, limiter, reply, talk_json};

#[tokio::test]
async fn no_permit_is_held_while_backing_off() {
    let server = Scripted::start(|_, _| reply::empty(503)).await;
    let mut cfg = config(&server.base_url);
    cfg.retry.base_delay = Duration::from_millis(600);
    cfg.retry.max_delay = Duration::from_millis(600);
    let slots = limiter(1);
    let did = Arc::new(client(cfg, slots.clone()));
    let call = tokio::spawn({
        let did = did.clone();
        async move { did.credits(&Priority::Normal.into()).await }
    });
    // `retries` is counted just before the client starts sleeping.
    eventually(SETTLE, "the first backoff", || async {
        did.stats().retries >= 1
    })
    .await;
    assert_eq!(
        slots.stats().await.active,
        0,
        "the slot is free during the backoff"
    );
    // And usable by someone else: a zero-wait acquire only succeeds on a free slot.
    let other = slots
        .acquire(&Priority::Low.into(), Duration::ZERO)
        .await
        .expect("slot free during backoff");
    drop(other);
    call.abort();
}

#[tokio::test]
async fn no_permit_is_held_between_polls() {
    let server = Scripted::start(|seen, i| match seen.method.as_str() {
        "POST" => reply::json(201, json!({"id": "tlk_p", "status": "created"})),
        _ if i < 4 => reply::json(200, talk_json("tlk_p", "started")),
        _ => reply::json(200, talk_json("tlk_p", "done")),
    })
    .await;
    let slots = limiter(1);
    let did = Arc::new(client(config(&server.base_url), slots.clone()));
    let wait = WaitOptions {
        poll_interval: Duration::from_millis(300),
        max_wait: Duration::from_secs(20),
    };
    let call = tokio::spawn({
        let did = did.clone();
        async move {
            let request = hello(None);
            did.create_talk_and_wait(&request, &Priority::High.into(), wait)
                .await
        }
    });
    eventually(SETTLE, "the first poll", || async {
        did.stats().polls >= 1 && server.count().await >= 2
    })
    .await;
    // Between polls (≥ 270 ms apart with jitter) the slot is free.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(slots.stats().await.active, 0);
    let other = slots
        .acquire(&Priority::Low.into(), Duration::ZERO)
        .await
        .expect("slot free between polls");
    drop(other);
    let talk = call.await.unwrap().unwrap();
    assert_eq!(talk.id.as_str(), "tlk_p");
    assert_eq!(slots.stats().await.active, 0);
    // One permit per exchange: 1 create + 4 polls, plus the test's own.
    assert_eq!(slots.stats().await.counters.released, 1 + 4 + 1);
}

#[tokio::test]
async fn a_cancelled_call_keeps_its_slot_until_the_exchange_ends_then_frees_it() {
    let server = Scripted::start(|_, _| reply::empty(200).set_delay(Duration::from_secs(60))).await;
    let slots = limiter(2);
    let mut cfg = config(&server.base_url);
    // The exchange a cancelled call leaves behind ends at this timeout.
    cfg.request_timeout = Duration::from_millis(300);
    let did = Arc::new(client(cfg, slots.clone()));
    let call = tokio::spawn({
        let did = did.clone();
        async move {
            did.get_talk(
                &TalkId::parse("tlk_slow").unwrap(),
                &Priority::Normal.into(),
            )
            .await
        }
    });
    eventually(SETTLE, "the request in flight", || async {
        server.count().await == 1
    })
    .await;
    assert_eq!(
        slots.stats().await.active,
        1,
        "the permit is held during the exchange"
    );
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    // The request is still at the upstream: the slot stays taken until the exchange ends.
    assert_eq!(slots.stats().await.active, 1, "freed while still in flight");
    all_slots_free(&slots, "the abandoned exchange to time out").await;

    // Dropping a future directly (no task) does the same.
    let low = Priority::Low.into();
    let fut = did.credits(&low);
    let timed_out = tokio::time::timeout(Duration::from_millis(100), fut).await;
    assert!(timed_out.is_err());
    all_slots_free(&slots, "the dropped exchange to time out").await;
    assert_eq!(
        server.count().await,
        2,
        "nothing was retried behind the caller's back"
    );
}

/// Waits (bounded) until no slot of `slots` is active; a timeout shows the active count.
async fn all_slots_free(slots: &limiter_memory::MemoryLimiter, what: &str) {
    eventually(SETTLE, what, || async {
        match slots.stats().await.active {
            0 => Ok(()),
            active => Err(format!("{active} active")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_full_limiter_is_a_typed_error_after_the_wait_timeout() {
    let server = Scripted::start(|_, _| reply::empty(204)).await;
    let mut cfg = config(&server.base_url);
    cfg.limiter_wait_timeout = Duration::from_millis(50);
    let slots = limiter(1);
    let did = client(cfg, slots.clone());
    let held = slots
        .acquire(&Priority::Critical.into(), Duration::ZERO)
        .await
        .unwrap();
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
    assert!(matches!(err, ports::VideoApiError::Limiter(_)), "{err:?}");
    assert_eq!(server.count().await, 0, "nothing is sent without a permit");
    drop(held);
}
