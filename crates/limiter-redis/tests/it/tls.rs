//! `rediss://` against a real `redis-server --tls-port` with certificates made by
//! [`TestPki`]: the contract suite over TLS, mutual TLS, skip-verify, a handshake that fails
//! (reported as `tls`, never as `refused`), and TLS files that stop the start.

use std::time::Duration;

use limiter_redis::{RedisLimiter, RedisLimiterConfig, RedisLimiterError};
use ports::{ConcurrencyLimiter, DegradedReason, LimiterStats};

use crate::support::{ClientCerts, RedisServer, TestPki, short_ttls, tls_config, unique_name};

/// The whole limiter contract, over TLS.
mod contract {
    ports::limiter_contract_tests!(crate::support::tls_contract_limiter);
}

/// Builds a limiter for `config` (which must build) and returns its stats.
async fn stats_of(config: RedisLimiterConfig) -> (RedisLimiter, LimiterStats) {
    let limiter = RedisLimiter::connect_with_memory_fallback(short_ttls(config))
        .await
        .expect("a TLS config whose files are fine builds, whatever the handshake says");
    let stats = limiter.stats().await;
    (limiter, stats)
}

#[track_caller]
fn check_serving_from_redis(stats: &LimiterStats) {
    assert!(!stats.degraded, "{stats:?}");
    assert_eq!(stats.backend.serving, "redis", "{stats:?}");
    assert_eq!(stats.backend.degraded_reason, None, "{stats:?}");
}

#[track_caller]
fn check_degraded_by_tls(stats: &LimiterStats, server: &RedisServer) {
    assert!(stats.degraded, "{stats:?}");
    assert_eq!(stats.backend.serving, "memory", "{stats:?}");
    assert_eq!(
        stats.backend.degraded_reason,
        Some(DegradedReason::Tls),
        "{stats:?}"
    );
    let address = format!("127.0.0.1:{}", server.tls_port());
    assert_eq!(stats.backend.address.as_deref(), Some(address.as_str()));
}

#[tokio::test]
async fn a_limiter_over_tls_grants_from_redis() {
    let pki = TestPki::generate();
    let server = RedisServer::start_tls(&pki, ClientCerts::Optional);
    let (limiter, stats) = stats_of(tls_config(&server, &pki, 2)).await;
    check_serving_from_redis(&stats);
    let permit = limiter
        .acquire(&domain::Priority::Normal.into(), Duration::from_secs(5))
        .await
        .expect("a slot over TLS");
    let stats = limiter.stats().await;
    assert_eq!((stats.active, stats.backend.serving.as_str()), (1, "redis"));
    permit.release().await.expect("released in redis");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_reported_as_tls_not_refused() {
    let pki = TestPki::generate();
    let server = RedisServer::start_tls(&pki, ClientCerts::Optional);
    let mut config = tls_config(&server, &pki, 2);
    config.connection.tls.ca_file = Some(pki.other_ca_file());
    let (_limiter, stats) = stats_of(config).await;
    check_degraded_by_tls(&stats, &server);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_reported_as_tls() {
    let pki = TestPki::generate();
    let server = RedisServer::start_tls(&pki, ClientCerts::Optional);
    let mut config = tls_config(&server, &pki, 2);
    // The certificate names `localhost` and `127.0.0.1`, not this.
    config.connection.tls.server_name = Some("redis.elsewhere.example".to_owned());
    let (_limiter, stats) = stats_of(config).await;
    check_degraded_by_tls(&stats, &server);
}

#[tokio::test]
async fn mutual_tls_works_with_the_client_certificate_and_fails_without_it() {
    let pki = TestPki::generate();
    let server = RedisServer::start_tls(&pki, ClientCerts::Required);

    let mut with_cert = tls_config(&server, &pki, 2);
    with_cert.connection.tls.cert_file = Some(pki.client_cert());
    with_cert.connection.tls.key_file = Some(pki.client_key());
    let (_limiter, stats) = stats_of(with_cert).await;
    check_serving_from_redis(&stats);

    let (_limiter, stats) = stats_of(tls_config(&server, &pki, 2)).await;
    check_degraded_by_tls(&stats, &server);
}

#[tokio::test]
async fn insecure_skip_verify_connects_to_a_server_whose_ca_is_unknown() {
    let pki = TestPki::generate();
    let server = RedisServer::start_tls(&pki, ClientCerts::Optional);
    // Trusting another CA, the server's certificate is refused...
    let mut config = tls_config(&server, &pki, 2);
    config.connection.tls.ca_file = Some(pki.other_ca_file());
    let (_limiter, stats) = stats_of(config.clone()).await;
    check_degraded_by_tls(&stats, &server);
    // ...and trusting none while skipping verification, it is accepted. (Not the system's
    // roots: no root is loaded when verification is skipped, so a machine without
    // ca-certificates runs this test too.)
    config.connection.tls.ca_file = None;
    config.connection.tls.insecure_skip_verify = true;
    let (_limiter, stats) = stats_of(config).await;
    check_serving_from_redis(&stats);
}

#[tokio::test]
async fn tls_files_that_cannot_work_fail_the_construction_naming_the_file() {
    let pki = TestPki::generate();
    std::fs::write(pki.path("junk.pem"), "not a certificate\n").unwrap();
    // Nothing listens there: construction must fail before connecting.
    let url = "rediss://127.0.0.1:1";

    async fn check(
        url: &str,
        change: impl FnOnce(&mut RedisLimiterConfig),
        setting: &str,
        file: &std::path::Path,
        problem: &str,
    ) {
        let mut config = RedisLimiterConfig::new(url, unique_name("tls-bad"));
        change(&mut config);
        let err = match RedisLimiter::connect_with_memory_fallback(config).await {
            Ok(_) => panic!("{setting} {} must fail the construction", file.display()),
            Err(e) => e,
        };
        assert!(
            matches!(&err, RedisLimiterError::Connection(redis_connect::ConfigError::TlsFile { setting: s, .. }) if *s == setting),
            "{err:?}"
        );
        let message = err.to_string();
        for needle in [setting, &file.display().to_string(), problem] {
            assert!(
                message.contains(needle),
                "{needle:?} missing from {message:?}"
            );
        }
    }

    let missing = pki.path("missing-ca.pem");
    check(
        url,
        |c| c.connection.tls.ca_file = Some(missing.clone()),
        "ca_file",
        &missing,
        "cannot be read",
    )
    .await;
    let junk = pki.path("junk.pem");
    check(
        url,
        |c| c.connection.tls.ca_file = Some(junk.clone()),
        "ca_file",
        &junk,
        "holds no PEM certificate",
    )
    .await;
    check(
        url,
        |c| {
            c.connection.tls.cert_file = Some(junk.clone());
            c.connection.tls.key_file = Some(pki.client_key());
        },
        "cert_file",
        &junk,
        "holds no PEM certificate",
    )
    .await;
    check(
        url,
        |c| {
            c.connection.tls.cert_file = Some(pki.client_cert());
            c.connection.tls.key_file = Some(junk.clone());
        },
        "key_file",
        &junk,
        "holds no PEM private key",
    )
    .await;
    let other_key = pki.other_client_key();
    check(
        url,
        |c| {
            c.connection.tls.ca_file = Some(pki.ca_file());
            c.connection.tls.cert_file = Some(pki.client_cert());
            c.connection.tls.key_file = Some(other_key.clone());
        },
        "key_file",
        &other_key,
        "does not match the certificate",
    )
    .await;
}

#[tokio::test]
async fn tls_options_with_a_plain_url_are_a_config_error() {
    let pki = TestPki::generate();
    let mut config = RedisLimiterConfig::new("redis://127.0.0.1:1", unique_name("tls-plain"));
    config.connection.tls.ca_file = Some(pki.ca_file());
    let Err(err) = RedisLimiter::connect_with_memory_fallback(config).await else {
        panic!("a CA file with a redis:// url is a config error");
    };
    let message = err.to_string();
    assert!(
        matches!(err, RedisLimiterError::InvalidConfig { .. }),
        "{message}"
    );
    assert!(
        message.contains("ca_file") && message.contains("rediss://"),
        "{message}"
    );
}
