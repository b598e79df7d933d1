//! What a degraded limiter says about itself: the configured and the serving backend, the
//! address it tried (never the password) and why Redis could not be used.

use limiter_redis::{RedisLimiter, RedisLimiterConfig};
use ports::{ConcurrencyLimiter, DegradedReason, LimiterStats};

use crate::support::{RedisServer, config, free_port, short_ttls, unique_name};

async fn stats_for(url: String) -> LimiterStats {
    let config = short_ttls(RedisLimiterConfig::new(url, unique_name("diag")));
    let limiter = RedisLimiter::connect_with_memory_fallback(config)
        .await
        .expect("an unreachable redis is not a build error");
    limiter.stats().await
}

#[track_caller]
fn check_degraded(stats: &LimiterStats, port: u16, reason: DegradedReason, secret: &str) {
    assert!(stats.degraded, "{stats:?}");
    assert_eq!(stats.backend.configured, "redis", "{stats:?}");
    assert_eq!(stats.backend.serving, "memory", "{stats:?}");
    assert_eq!(
        stats.backend.kind, "memory",
        "the old field keeps its meaning"
    );
    assert_eq!(
        stats.backend.address.as_deref(),
        Some(&*format!("127.0.0.1:{port}"))
    );
    assert_eq!(stats.backend.degraded_reason, Some(reason), "{stats:?}");
    let shown = format!("{stats:?} {}", serde_json::to_string(stats).unwrap());
    assert!(!shown.contains(secret), "the password leaked: {shown}");
}

#[tokio::test]
async fn a_wrong_password_is_reported_as_auth_with_the_address_but_not_the_password() {
    let server = RedisServer::start();
    server.require_password("right-pw");
    let port = server.port();
    let stats = stats_for(format!("redis://:wrong-pw@127.0.0.1:{port}")).await;
    check_degraded(&stats, port, DegradedReason::Auth, "wrong-pw");
}

#[tokio::test]
async fn nothing_listening_is_reported_as_refused() {
    let port = free_port();
    let stats = stats_for(format!("redis://user:hunter2@127.0.0.1:{port}")).await;
    check_degraded(&stats, port, DegradedReason::Refused, "hunter2");
}

#[tokio::test]
async fn a_healthy_limiter_names_redis_as_configured_and_serving() {
    let server = RedisServer::start();
    let limiter = RedisLimiter::connect_with_memory_fallback(config(&server, 2))
        .await
        .unwrap();
    let stats = limiter.stats().await;
    assert!(!stats.degraded, "{stats:?}");
    assert_eq!(
        (
            stats.backend.configured.as_str(),
            stats.backend.serving.as_str()
        ),
        ("redis", "redis")
    );
    let want = format!("127.0.0.1:{}", server.port());
    assert_eq!(stats.backend.address.as_deref(), Some(want.as_str()));
    assert_eq!(stats.backend.degraded_reason, None);
}
