//! Every fault and load knob, set through the builder, `set_faults` or `POST /_fake/faults`.

use std::time::{Duration, Instant};

use did_fake::{CreateThenFail, Delay, Faults, Latency};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Api, SHORT, fast, faults, spawn, talk_body};
use test_support::eventually;

#[tokio::test]
async fn p_500_answers_unknown_error() {
    let (fake, api) = spawn(fast().faults(faults(|f| f.p_500 = 1.0))).await;
    let r = api.get("/credits").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r.json(),
        json!({"kind": "UnknownError", "description": "Internal Server Error"})
    );
    // A fault before the handler has no side effect.
    let r = api.post_json("/talks", &talk_body()).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(fake.stats().talks_created, 0);
}

#[tokio::test]
async fn p_502_html_answers_a_gateway_page() {
    let (_fake, api) = spawn(fast().faults(faults(|f| f.p_502_html = 1.0))).await;
    let r = api.get("/talks").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.content_type, "text/html");
    assert!(r.text.contains("<h1>502 Bad Gateway</h1>"), "{}", r.text);
}

#[tokio::test]
async fn p_504_answers_after_the_delay() {
    let f = faults(|f| {
        f.p_504 = 1.0;
        f.delay_504_ms = Some(60);
    });
    let (_fake, api) = spawn(fast().faults(f)).await;
    let start = Instant::now();
    let r = api.get("/credits").await;
    assert!(start.elapsed() >= Duration::from_millis(60));
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json(), json!({"message": "Endpoint request timed out"}));
}

#[tokio::test]
async fn p_reset_closes_the_connection_without_a_response() {
    let (fake, api) = spawn(fast().faults(faults(|f| f.p_reset = 1.0))).await;
    let err = api
        .req(reqwest::Method::GET, "/credits")
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    let stats = fake.stats();
    assert_eq!(stats.count("GET /credits", 0), 1);
    assert_eq!(stats.connections_reset, 1);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn p_gateway_deny_answers_the_capitalised_message() {
    let (_fake, api) = spawn(fast().faults(faults(|f| f.p_gateway_deny = 1.0))).await;
    let r = api.get("/credits").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.json(),
        json!({"Message": "User is not authorized to access this resource with an explicit deny"})
    );
}

#[tokio::test]
async fn response_faults_can_be_limited_to_routes() {
    let f = faults(|f| {
        f.p_500 = 1.0;
        f.routes = vec!["GET /credits".into()];
    });
    let (_fake, api) = spawn(fast().faults(f)).await;
    assert_eq!(
        api.get("/credits").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(api.get("/talks").await.status, StatusCode::OK);
}

/// Creates with create-then-fail forced to `mode`; returns what the client saw.
async fn create_then_fail(mode: CreateThenFail) -> (Option<StatusCode>, did_fake::FakeStats, Api) {
    let f = faults(|f| {
        f.p_create_then_fail = 1.0;
        f.create_then_fail = mode;
        f.delay_504_ms = Some(5);
    });
    let (fake, api) = spawn(fast().faults(f)).await;
    let mut body = talk_body();
    body["user_data"] = json!("once");
    let sent = api
        .req(reqwest::Method::POST, "/talks")
        .json(&body)
        .send()
        .await;
    let status = sent.ok().map(|r| r.status());
    let stats = fake.stats();
    // The talk exists and runs on despite the failed answer.
    let listed = api.get("/talks").await.json();
    assert_eq!(listed["talks"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["talks"][0]["user_data"], "once");
    let id = listed["talks"][0]["id"].as_str().unwrap().to_owned();
    api.wait_status(&id, &["done"], SHORT).await;
    (status, stats, api)
}

#[tokio::test]
async fn create_then_fail_creates_exactly_one_talk_then_fails() {
    for (mode, want) in [
        (
            CreateThenFail::Status500,
            Some(StatusCode::INTERNAL_SERVER_ERROR),
        ),
        (CreateThenFail::Status504, Some(StatusCode::GATEWAY_TIMEOUT)),
        (CreateThenFail::Reset, None),
    ] {
        let (status, stats, _api) = create_then_fail(mode).await;
        assert_eq!(status, want, "{mode:?}");
        assert_eq!(stats.talks_created, 1, "{mode:?}");
        assert_eq!(stats.talks_by_user_data.get("once"), Some(&1), "{mode:?}");
    }
}

#[tokio::test]
async fn mixed_create_then_fail_draws_every_mode() {
    let f = faults(|f| {
        f.p_create_then_fail = 1.0;
        f.delay_504_ms = Some(1);
    });
    let (fake, api) = spawn(fast().faults(f)).await;
    for _ in 0..20 {
        let _ = api
            .req(reqwest::Method::POST, "/talks")
            .json(&talk_body())
            .send()
            .await;
    }
    let stats = fake.stats();
    assert_eq!(stats.talks_created, 20);
    for status in [0, 500, 504] {
        assert!(
            stats.count("POST /talks", status) > 0,
            "{status}: {:?}",
            stats.requests
        );
    }
}

#[tokio::test]
async fn latency_applies_per_route_fixed_or_uniform() {
    let mut latency = Latency::default();
    latency
        .routes
        .insert("GET /credits".into(), Delay::Fixed(80));
    latency.all = Some(Delay::Uniform {
        min_ms: 20,
        max_ms: 30,
    });
    let (_fake, api) = spawn(fast().faults(Faults {
        latency,
        ..Faults::default()
    }))
    .await;
    let start = Instant::now();
    assert_eq!(api.get("/credits").await.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(80));
    let start = Instant::now();
    assert_eq!(api.get("/talks").await.status, StatusCode::OK);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(20), "{took:?}");
}

#[tokio::test]
async fn in_flight_cap_per_key_answers_429() {
    let f = faults(|f| {
        f.max_in_flight_per_key = Some(2);
        f.latency.all = Some(Delay::Fixed(1000));
    });
    let (fake, api) = spawn(fast().faults(f).api_key("other:key")).await;
    // Two slow requests hold the key's two slots...
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.get("/credits").await })
        })
        .collect();
    eventually(SHORT, "two requests in flight", || async {
        fake.stats().in_flight == 2
    })
    .await;
    // ...so a third, fourth and fifth are refused at once,
    for _ in 0..3 {
        let r = api.get("/credits").await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.json(), json!({"message": "Too Many Requests"}));
    }
    // while another key is not affected.
    let other = api.with_auth("Basic other:key");
    let other_call = tokio::spawn(async move { other.get("/credits").await });
    eventually(SHORT, "the other key's request in flight", || async {
        fake.stats().in_flight == 3
    })
    .await;
    for h in holders {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(other_call.await.unwrap().status, StatusCode::OK);

    let stats = fake.stats();
    assert_eq!(stats.rate_limited, 3);
    assert_eq!(stats.count("GET /credits", 429), 3);
    assert_eq!(stats.count("GET /credits", 200), 3);
    assert_eq!(stats.peak_in_flight, 3);
    // Slots were released: the key is served again.
    fake.set_faults(faults(|f| f.max_in_flight_per_key = Some(2)));
    assert_eq!(api.get("/credits").await.status, StatusCode::OK);
}

#[tokio::test]
async fn token_bucket_answers_429_with_optional_retry_after() {
    let f = faults(|f| {
        f.rate_limit_rps = Some(0.5);
        f.rate_limit_burst = Some(2.0);
        f.retry_after_secs = Some(3);
        f.kind_429 = true;
    });
    let (fake, api) = spawn(fast().faults(f)).await;
    assert_eq!(api.get("/credits").await.status, StatusCode::OK);
    assert_eq!(api.get("/talks").await.status, StatusCode::OK);
    let resp = api
        .req(reqwest::Method::GET, "/credits")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "3");
    let r = Api::reply(resp).await;
    assert_eq!(r.json()["kind"], "TooManyRequests");
    assert_eq!(fake.stats().rate_limited, 1);

    // Default shape: API Gateway's, without Retry-After.
    fake.set_faults(faults(|f| {
        f.rate_limit_rps = Some(0.001);
        f.rate_limit_burst = Some(1.0);
    }));
    let resp = api
        .req(reqwest::Method::GET, "/credits")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn faults_are_set_and_read_over_http() {
    let (fake, api) = spawn(fast()).await;
    let url = api.url("/_fake/faults");
    let body =
        json!({"p_500": 1.0, "routes": ["GET /talks"], "latency": {"routes": {"GET /talks": 5}}});
    let r = api.send(api.http.post(&url).json(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let got = api.send(api.http.get(&url)).await.json();
    assert_eq!(got["p_500"], 1.0);
    assert_eq!(got["latency"]["routes"]["GET /talks"], 5);
    assert_eq!(fake.faults().routes, vec!["GET /talks".to_owned()]);
    assert_eq!(
        api.get("/talks").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    for bad in [json!({"p_500": 2.0}), json!({"p_5OO": 1.0}), json!([1])] {
        let r = api.send(api.http.post(&url).json(&bad)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.json()["error"].is_string());
    }
    // A refused update leaves the faults as they were.
    assert_eq!(fake.faults().p_500, 1.0);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_ids_and_draws() {
    let run = || async {
        let f = faults(|f| f.p_500 = 0.5);
        let (fake, api) = spawn(fast().seed(42).faults(f)).await;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let r = api.post_json("/talks", &talk_body()).await;
            seen.push(if r.status == StatusCode::CREATED {
                r.json()["id"].as_str().unwrap().to_owned()
            } else {
                r.status.to_string()
            });
        }
        drop(fake);
        seen
    };
    let first = run().await;
    assert_eq!(first, run().await);
    assert!(
        first.iter().any(|s| s.starts_with("tlk_")) && first.iter().any(|s| s.starts_with("500"))
    );
}

#[tokio::test]
async fn invalid_builder_settings_are_refused() {
    let err = fast().time_scale(-1.0).spawn().await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = fast()
        .faults(faults(|f| f.p_stuck = 1.1))
        .spawn()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn shutdown_stops_the_server_and_drop_does_too() {
    let (fake, api) = spawn(fast()).await;
    assert_eq!(api.get("/credits").await.status, StatusCode::OK);
    let addr = fake.addr();
    fake.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let (fake, _api) = spawn(fast()).await;
    let addr = fake.addr();
    drop(fake);
    eventually(SHORT, "the dropped fake to stop listening", || async move {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
}
