//! The limiter seen through the service: queue timeouts, clients that go away, and shutdown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use did_fake::{Delay, Faults, Latency};
use domain::Priority;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support;
use test_support::http::{client, json};

/// Faults that delay `GET /talks/{id}` by `ms` milliseconds.
fn slow_status(ms: u64) -> Faults {
    Faults {
        latency: Latency {
            all: None,
            routes: BTreeMap::from([("GET /talks/{id}".to_owned(), Delay::Fixed(ms))]),
        },
        ..Faults::default()
    }
}

/// Sends a raw status request and returns the open connection.
async fn raw_status_request(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/d_id_optimized/talk-status/tlk_abc HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let fake = support::fake().await;
    let srv = support::service(
        &fake,
        &[
            ("MAX_CONCURRENT_REQUESTS", "1"),
            ("LIMITER_WAIT_TIMEOUT_SECS", "0.2"),
        ],
    )
    .await;
    let held = srv
        .state
        .limiter()
        .acquire(&Priority::Critical.into(), Duration::from_secs(1))
        .await
        .unwrap();
    let resp = client()
        .get(srv.api("/talk-status/tlk_abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "5");
    let (status, err) = json(resp).await;
    assert_eq!(
        (status, err["error"]["code"].as_str().unwrap()),
        (429, "queue_timeout"),
        "{err}"
    );
    drop(held);
    let text = srv.state.metrics().encode().unwrap();
    assert!(text.contains("outcome=\"timeout\""), "{text}");
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_queued_leaves_the_queue() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("MAX_CONCURRENT_REQUESTS", "1")]).await;
    let held = srv
        .state
        .limiter()
        .acquire(&Priority::Normal.into(), Duration::from_secs(1))
        .await
        .unwrap();

    let conn = raw_status_request(srv.addr).await;
    test_support::eventually(Duration::from_secs(5), "the request is queued", || async {
        srv.limiter_stats().await.queued.total() == 1
    })
    .await;
    drop(conn);
    test_support::eventually(
        Duration::from_secs(5),
        "the queue is empty again",
        || async {
            let s = srv.limiter_stats().await;
            s.queued.total() == 0 && s.counters.cancelled == 1
        },
    )
    .await;
    drop(held);
    let s = srv.limiter_stats().await;
    assert_eq!((s.active, s.queued.total()), (0, 0), "{s:?}");
    assert_eq!(
        fake.stats().total("GET /talks/{id}"),
        0,
        "the dropped request never reached D-ID"
    );
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_call_keeps_the_slot_until_d_id_is_done() {
    // The choice of issue 9 item 14: an exchange D-ID has started keeps its slot until D-ID
    // is done with it, so a hang-up never lets a second call overlap at the upstream.
    let fake = support::fake_with(slow_status(1_500)).await;
    let srv = support::service(&fake, &[("MAX_CONCURRENT_REQUESTS", "1")]).await;
    let conn = raw_status_request(srv.addr).await;
    test_support::eventually(
        Duration::from_secs(5),
        "the call holds the slot",
        || async { srv.limiter_stats().await.active == 1 },
    )
    .await;
    drop(conn);
    // While D-ID still works on the abandoned exchange, the slot stays taken.
    test_support::eventually(
        Duration::from_secs(5),
        "the upstream exchange has ended",
        || async {
            let active = srv.limiter_stats().await.active;
            let at_upstream = fake.stats().in_flight;
            assert!(
                at_upstream == 0 || active == 1,
                "slot freed while D-ID still serves the exchange"
            );
            at_upstream == 0
        },
    )
    .await;
    test_support::eventually(Duration::from_secs(3), "the slot is free again", || async {
        srv.limiter_stats().await.active == 0
    })
    .await;
    assert_eq!(fake.stats().peak_in_flight, 1);
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let fake = support::fake_with(slow_status(400)).await;
    let mut srv = support::service(&fake, &[]).await;
    let url = srv.api("/talk-status/tlk_abc");
    let in_flight =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    // The status read holds its slot for hundreds of ms at did-fake; a short call of the
    // service's own (the account's credits at start) may hold one for a moment, so the slot
    // must still be held after one.
    test_support::eventually(Duration::from_secs(5), "the call is in flight", || async {
        if srv.limiter_stats().await.active != 1 || fake.stats().in_flight != 1 {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        srv.limiter_stats().await.active == 1
    })
    .await;
    let addr = srv.addr;
    let state = srv.state.clone();
    srv.trigger_shutdown();
    let task = srv.take_task();
    // The in-flight request still gets its (404: the talk does not exist) answer.
    let status = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(status, 404);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    assert_eq!(state.limiter().stats().await.active, 0);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_is_bounded_and_cut_off_requests_answer_503_and_release_their_permits() {
    let fake = support::fake_with(slow_status(2_000)).await;
    let mut srv = support::service(&fake, &[("SHUTDOWN_GRACE_SECS", "0.3")]).await;
    let url = srv.api("/talk-status/tlk_abc");
    let in_flight = tokio::spawn(async move {
        let resp = client()
            .get(url)
            .header("x-request-id", "cutoff-status-1")
            .send()
            .await
            .expect("the cut-off request gets an answer");
        let retry_after = resp.headers().get("retry-after").cloned();
        (retry_after, json(resp).await)
    });
    // The status read holds its slot for hundreds of ms at did-fake; a short call of the
    // service's own (the account's credits at start) may hold one for a moment, so the slot
    // must still be held after one.
    test_support::eventually(Duration::from_secs(5), "the call is in flight", || async {
        if srv.limiter_stats().await.active != 1 || fake.stats().in_flight != 1 {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        srv.limiter_stats().await.active == 1
    })
    .await;
    let state = srv.state.clone();
    let started = Instant::now();
    srv.trigger_shutdown();
    let task = srv.take_task();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The cut-off request is answered, not dropped: 503, retry soon, no talk to follow.
    let (retry_after, (status, v)) = in_flight.await.unwrap();
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "shutting_down", "{v}");
    assert_eq!(v["error"].get("talk_id"), None, "{v}");
    assert_eq!(retry_after.unwrap(), "5");
    assert!(
        support::logs()
            .lines()
            .any(|l| l.contains("cutoff-status-1")
                && l.contains("shutdown grace elapsed; request cut off")),
        "the cut-off is logged with the request id"
    );
    // The exchange D-ID had started runs to its end and only then gives its slot back.
    test_support::eventually(Duration::from_secs(5), "the slot is free again", || async {
        state.limiter().stats().await.active == 0
    })
    .await;
    fake.shutdown().await;
}
