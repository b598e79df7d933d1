//! A misconfigured or missing Redis does not stop the service: with `REDIS_URL` set and the
//! default `JOB_STORE=auto`, the limiter serves from its fallback, the job store is opened
//! again in the background (submits 503 `job_store_unavailable` with `Retry-After`), and
//! `/health`, `/ready` and `/stats` name the reason for each — `auth`, `tls`, `refused`,
//! `timeout` — with the address and never the password. One table, real servers.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::http::{client, get_json, json as read_json};
use test_support::redis::{ClientCerts, RedisServer, TestPki};

use crate::support;

/// One misconfiguration: the URL (and TLS settings) a service gets, the address it names,
/// and the reason both the limiter and the job store must report.
struct Case {
    what: &'static str,
    url: String,
    env: Vec<(&'static str, String)>,
    address: String,
    reason: &'static str,
    /// A secret that must appear in no answer.
    secret: Option<&'static str>,
}

#[allow(clippy::print_stderr)] // the measured start-up time, shown with --nocapture
async fn service(fake: &did_fake::RunningFake, case: &Case) -> support::Server {
    let name = test_support::unique_name("misconfig");
    let mut pairs: Vec<(&str, &str)> = vec![
        ("REDIS_URL", case.url.as_str()),
        ("LIMITER_NAME", name.as_str()),
        ("JOB_STORE", "auto"),
        ("READY_DEGRADED_GRACE_SECS", "0"),
    ];
    pairs.extend(case.env.iter().map(|(k, v)| (*k, v.as_str())));
    let started = std::time::Instant::now();
    let srv = support::service(fake, &pairs).await;
    // Reported, not asserted (`--nocapture` shows it; docs/BENCHMARKS.md quotes it).
    eprintln!(
        "MEASURED {}: serving after {} ms, reason {}",
        case.what,
        started.elapsed().as_millis(),
        case.reason
    );
    srv
}

/// What each route says about `case`; panics with the whole answer when it is not right.
async fn check(srv: &support::Server, case: &Case) {
    let http = client();
    let what = case.what;
    let (status, health) = get_json(&http, srv.url("/health"), None).await;
    assert_eq!(status, 200, "{what}: {health}");
    assert_eq!(health["status"], "degraded", "{what}: {health}");
    let limiter = &health["rate_limiter"];
    assert_eq!(limiter["degraded_reason"], case.reason, "{what}: {health}");
    assert_eq!(
        limiter["address"],
        case.address.as_str(),
        "{what}: {health}"
    );
    let store = &health["job_store"];
    assert_eq!(store["open"], false, "{what}: {health}");
    assert_eq!(store["reason"], case.reason, "{what}: {health}");
    assert_eq!(store["address"], case.address.as_str(), "{what}: {health}");

    let (status, ready) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 503, "{what}: {ready}");
    let reasons = ready["reasons"].to_string();
    assert!(
        reasons.contains(&format!("({})", case.reason)) && reasons.contains("job store"),
        "{what}: {ready}"
    );
    assert_eq!(ready["job_store"]["reason"], case.reason, "{what}: {ready}");

    let (status, stats) = get_json(&http, srv.api("/stats"), None).await;
    assert_eq!(status, 200, "{what}: {stats}");
    assert_eq!(
        stats["rate_limiter"]["degraded_reason"], case.reason,
        "{what}: {stats}"
    );
    assert_eq!(stats["jobs"]["store_open"], false, "{what}: {stats}");
    assert_eq!(
        stats["jobs"]["store_address"],
        case.address.as_str(),
        "{what}: {stats}"
    );
    assert_eq!(
        stats["jobs"]["store_reason"], case.reason,
        "{what}: {stats}"
    );

    let resp = http
        .post(srv.api("/jobs"))
        .json(&json!({
            "audio_url": "https://example.test/voice.wav",
            "source_url": "https://example.test/face.jpg",
        }))
        .send()
        .await
        .unwrap();
    let retry_after = resp.headers().get("retry-after").cloned();
    let (status, body) = read_json(resp).await;
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(
        body["error"]["code"], "job_store_unavailable",
        "{what}: {body}"
    );
    assert!(retry_after.is_some(), "{what}: no Retry-After");

    if let Some(secret) = case.secret {
        for answer in [&health, &ready, &stats, &body] {
            assert!(
                !answer.to_string().contains(secret),
                "{what}: the secret leaked: {answer}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misconfigured_redis_is_named_by_every_route_and_the_service_starts() {
    let (plain, tls, pki) = tokio::task::spawn_blocking(|| {
        let plain = RedisServer::start();
        assert_eq!(
            plain.command(
                None,
                &[
                    "ACL",
                    "SETUSER",
                    "alice",
                    "on",
                    ">alice-pw",
                    "~*",
                    "&*",
                    "+@all"
                ]
            ),
            "+OK"
        );
        plain.require_password("right-pw");
        let pki = TestPki::generate();
        let tls = RedisServer::start_tls(&pki, ClientCerts::Optional);
        (plain, tls, pki)
    })
    .await
    .unwrap();
    // Accepts connections (the kernel's backlog) and never answers.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap().port();
    let nothing = test_support::free_port();
    let ca = pki.ca_file().display().to_string();
    let at = |port: u16| format!("127.0.0.1:{port}");
    let cases = vec![
        Case {
            what: "a wrong password",
            url: format!("redis://:wrong-pw@127.0.0.1:{}", plain.port()),
            env: vec![],
            address: at(plain.port()),
            reason: "auth",
            secret: Some("wrong-pw"),
        },
        Case {
            what: "no password where one is required",
            url: plain.url(),
            env: vec![],
            address: at(plain.port()),
            reason: "auth",
            secret: Some("right-pw"),
        },
        Case {
            what: "a wrong ACL user password",
            url: format!("redis://alice:not-alice-pw@127.0.0.1:{}", plain.port()),
            env: vec![],
            address: at(plain.port()),
            reason: "auth",
            secret: Some("not-alice-pw"),
        },
        Case {
            what: "a server certificate from another CA",
            url: tls.tls_url(),
            env: vec![(
                "REDIS_TLS_CA_FILE",
                pki.other_ca_file().display().to_string(),
            )],
            address: at(tls.tls_port()),
            reason: "tls",
            secret: None,
        },
        Case {
            what: "a plaintext server behind rediss://",
            url: format!("rediss://:s3cret-tls@127.0.0.1:{}", tls.port()),
            env: vec![("REDIS_TLS_CA_FILE", ca.clone())],
            address: at(tls.port()),
            reason: "tls",
            secret: Some("s3cret-tls"),
        },
        Case {
            what: "redis:// at a TLS port",
            url: format!("redis://:s3cret-plain@127.0.0.1:{}", tls.tls_port()),
            env: vec![],
            address: at(tls.tls_port()),
            reason: "tls",
            secret: Some("s3cret-plain"),
        },
        Case {
            what: "nothing listening",
            url: format!("redis://:down-pw@127.0.0.1:{nothing}"),
            env: vec![],
            address: at(nothing),
            reason: "refused",
            secret: Some("down-pw"),
        },
        Case {
            what: "a server that never answers",
            url: format!("redis://:hole-pw@127.0.0.1:{hole}"),
            env: vec![],
            address: at(hole),
            reason: "timeout",
            secret: Some("hole-pw"),
        },
    ];
    let fake = support::fake().await;
    // All at once: each start waits for its connect timeouts.
    let servers =
        futures_util::future::join_all(cases.iter().map(|case| service(&fake, case))).await;
    for (srv, case) in servers.iter().zip(&cases) {
        check(srv, case).await;
    }
    for srv in servers {
        srv.stop().await;
    }
    drop(black_hole);
    fake.shutdown().await;
}

/// Redis down at start: the service serves on the fallback, and once a Redis listens at the
/// address the job store opens by itself (no restart) and takes jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_down_at_start_is_opened_in_the_background_once_it_listens() {
    let port = test_support::free_port();
    let fake = support::fake().await;
    let case = Case {
        what: "redis down at start",
        url: format!("redis://127.0.0.1:{port}"),
        env: vec![],
        address: format!("127.0.0.1:{port}"),
        reason: "refused",
        secret: None,
    };
    let srv = service(&fake, &case).await;
    check(&srv, &case).await;

    let _redis = tokio::task::spawn_blocking(move || RedisServer::start_on(port))
        .await
        .unwrap();
    let http = client();
    let health: Value = test_support::eventually(
        Duration::from_secs(30),
        "the job store opens and the limiter is back on redis",
        || async {
            let (_, h) = get_json(&http, srv.url("/health"), None).await;
            if h["job_store"]["open"] == true && h["rate_limiter"]["degraded"] == false {
                Ok(h)
            } else {
                Err(h)
            }
        },
    )
    .await;
    assert_eq!(health["status"], "healthy", "{health}");
    let resp = http
        .post(srv.api("/jobs"))
        .json(&json!({
            "audio_url": "https://example.test/voice.wav",
            "source_url": "https://example.test/face.jpg",
        }))
        .send()
        .await
        .unwrap();
    let (status, job) = read_json(resp).await;
    assert_eq!(status, 202, "{job}");
    let (status, ready) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 200, "{ready}");
    srv.stop().await;
    fake.shutdown().await;
}
