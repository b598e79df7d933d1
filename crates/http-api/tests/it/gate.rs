//! The gate in front of D-ID, end to end against did-fake: the adaptive limit finds a hidden
//! concurrency cap (`max_in_flight_per_key`) from above and below, and the breaker opens on a
//! burst of 500s, sheds `low` at once with 503 `upstream_unavailable`, lets a `critical`
//! request probe, and closes when the probe is answered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use did_fake::{Delay, Faults, Latency, RunningFake};
use serde_json::Value;

use crate::support::{self, Server};
use test_support::http::{client, json};

const STATUS: &str = "GET /talks/{id}";

/// A status read takes `ms` at did-fake; at most `cap` requests in flight, the rest 429.
fn capped(cap: u32, ms: u64) -> Faults {
    Faults {
        max_in_flight_per_key: Some(cap),
        latency: Latency {
            all: None,
            routes: BTreeMap::from([(STATUS.to_owned(), Delay::Fixed(ms))]),
        },
        ..Faults::default()
    }
}

async fn gate_stats(srv: &Server) -> Value {
    let (status, body) = json(client().get(srv.api("/stats")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    body["upstream_gate"].clone()
}

/// `n` closed-loop readers of a talk's status at `priority` until `stop`; counts answers.
fn readers(srv: &Server, n: usize, priority: &str, stop: &Arc<AtomicBool>) -> Arc<AtomicU64> {
    let done = Arc::new(AtomicU64::new(0));
    for _ in 0..n {
        let url = srv.api(&format!("/talk-status/tlk_gate?priority={priority}"));
        let stop = stop.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                if http.get(&url).send().await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    done
}

fn rate_limited(fake: &RunningFake) -> u64 {
    fake.stats().rate_limited
}

fn status_requests(fake: &RunningFake) -> u64 {
    fake.stats()
        .requests
        .get(STATUS)
        .map_or(0, |by| by.values().sum())
}

/// The learned limit, sampled every 100 ms for `secs`.
async fn limits_over(srv: &Server, secs: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        seen.push(gate_stats(srv).await["adaptive"]["limit"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_comes_down_to_a_hidden_cap_and_stays() {
    let fake = support::fake_with(capped(7, 20)).await;
    let srv = support::service(
        &fake,
        &[
            ("LIMIT_MODE", "adaptive"),
            ("MAX_CONCURRENT_REQUESTS", "20"),
            ("LIMIT_MAX", "32"),
            ("BREAKER", "off"),
        ],
    )
    .await;
    let gate = gate_stats(&srv).await;
    assert_eq!(gate["limit_mode"], "adaptive");
    assert_eq!(gate["adaptive"]["limit"], 20);
    let stop = Arc::new(AtomicBool::new(false));
    readers(&srv, 24, "normal", &stop);
    let seen = limits_over(&srv, 4).await;
    let settled = seen.iter().position(|l| (6..=7).contains(l));
    assert!(settled.is_some(), "never within [6, 7]: {seen:?}");
    // Steady state: the limit stays at or below the cap, and D-ID throttles (almost) nothing.
    let (throttled, sent) = (rate_limited(&fake), status_requests(&fake));
    let steady = limits_over(&srv, 3).await;
    let throttled = rate_limited(&fake) - throttled;
    let sent = status_requests(&fake) - sent;
    stop.store(true, Ordering::Relaxed);
    // A probe of 8 lasts until its first 429 (a millisecond or so here), then 8 is held.
    assert!(steady.iter().all(|l| (6..=8).contains(l)), "{steady:?}");
    assert!(
        steady.iter().filter(|l| **l == 8).count() <= 1,
        "{steady:?}"
    );
    assert!(sent > 200, "the readers kept D-ID busy: {sent}");
    assert!(
        throttled * 100 < sent,
        "steady-state 429s {throttled} of {sent} requests"
    );
    let gate = gate_stats(&srv).await;
    let recent = gate["adaptive"]["recent"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|c| c["why"] == "throttled" && c["from_limit"] == 20),
        "{gate}"
    );
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains("talkgate_adaptive_limit_changes_total{reason=\"throttled\"}"),
        "{metrics}"
    );
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_grows_from_one_while_it_binds() {
    let fake = support::fake_with(capped(7, 20)).await;
    let srv = support::service(
        &fake,
        &[
            ("LIMIT_MODE", "adaptive"),
            ("MAX_CONCURRENT_REQUESTS", "1"),
            ("BREAKER", "off"),
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    readers(&srv, 16, "normal", &stop);
    // One a second while requests wait: 1 → 6 in about five seconds.
    let seen = limits_over(&srv, 9).await;
    stop.store(true, Ordering::Relaxed);
    assert!(
        seen.iter().any(|l| *l >= 6),
        "{seen:?} {}",
        gate_stats(&srv).await
    );
    assert!(
        seen.iter().all(|l| *l <= 8),
        "never far above the cap: {seen:?}"
    );
    let grew = seen.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(grew >= 5, "{seen:?}");
    // Idle: nothing waits, so it does not grow further.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let idle = gate_stats(&srv).await["adaptive"]["limit"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        gate_stats(&srv).await["adaptive"]["limit"]
            .as_u64()
            .unwrap(),
        idle
    );
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_limit_is_the_learned_one_in_adaptive_mode() {
    let fake = support::fake().await;
    let srv = support::service(
        &fake,
        &[
            ("LIMIT_MODE", "adaptive"),
            ("MAX_CONCURRENT_REQUESTS", "5"),
            ("LIMIT_MIN", "2"),
            ("LIMIT_MAX", "9"),
            ("HTTP_API_TOKEN", "t0ken-for-the-limit"),
        ],
    )
    .await;
    let put = |n: u32| {
        client()
            .put(srv.api("/limit"))
            .bearer_auth("t0ken-for-the-limit")
            .json(&serde_json::json!({ "max_concurrent": n }))
            .send()
    };
    assert_eq!(put(8).await.unwrap().status(), 200);
    let authed = |path: &str| {
        client()
            .get(srv.api(path))
            .bearer_auth("t0ken-for-the-limit")
            .send()
    };
    let (_, stats) = json(authed("/stats").await.unwrap()).await;
    assert_eq!(stats["upstream_gate"]["adaptive"]["limit"], 8, "{stats}");
    assert_eq!(stats["rate_limiter"]["max_concurrent"], 8);
    // Outside the bounds: the bound.
    assert_eq!(put(50).await.unwrap().status(), 200);
    let (_, stats) = json(authed("/stats").await.unwrap()).await;
    assert_eq!(stats["upstream_gate"]["adaptive"]["limit"], 9, "{stats}");
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_sheds_low_during_an_outage_and_a_critical_probe_closes_it() {
    let fake = support::fake().await;
    let srv = support::service(
        &fake,
        &[
            ("BREAKER_MIN_FAILURES", "5"),
            ("BREAKER_COOLDOWN_SECS", "0.5"),
            ("BREAKER_MAX_COOLDOWN_SECS", "1"),
        ],
    )
    .await;
    fake.set_faults(Faults {
        p_500: 1.0,
        routes: vec![STATUS.to_owned()],
        ..Faults::default()
    });
    let low = srv.api("/talk-status/tlk_gate?priority=low");
    // Failing reads (each retried by the client) until the breaker opens.
    let started = Instant::now();
    let shed = loop {
        let resp = client().get(&low).send().await.unwrap();
        if resp.status() == 503 {
            break resp;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never opened");
    };
    let retry_after: u64 = shed.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let (_, err) = json(shed).await;
    assert_eq!(err["error"]["code"], "upstream_unavailable", "{err}");
    let (_, health) = json(client().get(srv.url("/health")).send().await.unwrap()).await;
    assert_eq!(health["status"], "degraded");
    assert!(
        matches!(
            health["breaker"]["state"].as_str(),
            Some("open" | "half_open")
        ),
        "{health}"
    );
    // While open, low requests are shed at once and reach nothing.
    let before = status_requests(&fake);
    let t = Instant::now();
    for _ in 0..20 {
        let resp = client().get(&low).send().await.unwrap();
        if t.elapsed() < Duration::from_millis(400) {
            assert_eq!(resp.status(), 503);
        }
    }
    let during = status_requests(&fake) - before;
    assert!(during <= 3, "{during} requests reached D-ID while open");
    // D-ID recovers; a critical request waits for the half-open and is the probe.
    fake.set_faults(Faults::default());
    let critical = client()
        .get(srv.api("/talk-status/tlk_gate?priority=critical"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        critical.status(),
        404,
        "the probe reached D-ID and got its answer"
    );
    // Closed: low goes through again.
    let resp = client().get(&low).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let gate = gate_stats(&srv).await;
    assert_eq!(gate["breaker"]["state"], "closed", "{gate}");
    assert!(gate["breaker"]["trips"].as_u64().unwrap() >= 1);
    assert!(gate["breaker"]["shed_low"].as_u64().unwrap() >= 20);
    assert_eq!(gate["breaker"]["shed_critical"], 0);
    assert!(gate["breaker"]["probes"].as_u64().unwrap() >= 1);
    let metrics = srv.metrics().await;
    for needle in [
        "talkgate_breaker_state{state=\"closed\"} 1",
        "talkgate_breaker_shed_total{priority=\"low\"}",
        "talkgate_breaker_trips_total",
        "talkgate_limiter_demand_slots",
    ] {
        assert!(metrics.contains(needle), "{needle}: {metrics}");
    }
    srv.stop().await;
    fake.shutdown().await;
}

/// Three instances on one Redis learn one limit: each reports the same value, the Redis
/// limiter serves it, and together they stay at D-ID's hidden cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_redis_share_one_learned_limit_and_one_breaker() {
    let redis = test_support::redis::RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let name = test_support::unique_name("http-api-it-gate");
    let fake = support::fake_with(capped(7, 20)).await;
    let env = [
        ("REDIS_URL", url.as_str()),
        ("LIMITER_NAME", name.as_str()),
        ("LIMIT_MODE", "adaptive"),
        ("MAX_CONCURRENT_REQUESTS", "20"),
        ("BREAKER_MIN_FAILURES", "5"),
        ("BREAKER_COOLDOWN_SECS", "0.5"),
        ("BREAKER_MAX_COOLDOWN_SECS", "1"),
    ];
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(support::service(&fake, &env).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for srv in &fleet {
        readers(srv, 8, "normal", &stop);
    }
    let started = Instant::now();
    let limits = loop {
        let mut limits = Vec::new();
        for srv in &fleet {
            limits.push(gate_stats(srv).await["adaptive"]["limit"].as_u64().unwrap());
        }
        if limits.iter().all(|l| (6..=7).contains(l)) && limits.windows(2).all(|w| w[0] == w[1]) {
            break limits;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not one limit in [6, 7]: {limits:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let served = fleet[0].limiter_stats().await.max_concurrent;
    assert_eq!(
        u64::from(served),
        limits[0],
        "the Redis limiter serves the learned limit"
    );
    let (throttled, sent) = (rate_limited(&fake), status_requests(&fake));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let throttled = rate_limited(&fake) - throttled;
    let sent = status_requests(&fake) - sent;
    assert!(
        throttled * 100 < sent.max(1),
        "steady-state 429s {throttled} of {sent} requests over three instances"
    );
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // One breaker: failures seen by one instance open it for all.
    fake.set_faults(Faults {
        p_500: 1.0,
        routes: vec![STATUS.to_owned()],
        ..Faults::default()
    });
    let low = fleet[0].api("/talk-status/tlk_gate?priority=low");
    let started = Instant::now();
    while client().get(&low).send().await.unwrap().status() != 503 {
        assert!(started.elapsed() < Duration::from_secs(10), "never opened");
    }
    // Another instance learns it from the shared record at its first failure, or sooner.
    let other_url = fleet[2].api("/talk-status/tlk_gate?priority=low");
    let _first = client().get(&other_url).send().await.unwrap();
    let other = client().get(&other_url).send().await.unwrap();
    assert_eq!(other.status(), 503, "another instance sheds too");
    let (_, err) = json(other).await;
    assert_eq!(err["error"]["code"], "upstream_unavailable");
    fake.set_faults(capped(7, 20));
    let critical = client()
        .get(fleet[1].api("/talk-status/tlk_gate?priority=critical"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        critical.status(),
        404,
        "a critical request probed and got D-ID's answer"
    );
    // The probe closed it for the fleet: the others see it at their next report.
    let started = Instant::now();
    while client().get(&low).send().await.unwrap().status() == 503 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not closed for the others"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for srv in fleet {
        srv.stop().await;
    }
    fake.shutdown().await;
}
