//! The service with `REDIS_URL`: the Redis limiter serves, and when Redis goes away the
//! service keeps serving on the fallback while `/health` and `/ready` say so.

use std::time::Duration;

use crate::support;
use test_support::http::{client, file_form, get_json, json};
use test_support::media;
use test_support::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_limiter_serves_and_its_outage_shows_in_health_and_ready() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let fake = support::fake().await;
    let name = format!("http-api-it-{}", std::process::id());
    let srv = support::service(
        &fake,
        &[
            ("REDIS_URL", url.as_str()),
            ("LIMITER_NAME", name.as_str()),
            ("MAX_CONCURRENT_REQUESTS", "2"),
            ("READY_DEGRADED_GRACE_SECS", "0"),
        ],
    )
    .await;
    let http = client();
    let upload = || {
        http.post(srv.api("/upload-source-image"))
            .multipart(file_form("a.png", media::png(), "image/png"))
            .send()
    };

    let (status, _) = json(upload().await.unwrap()).await;
    assert_eq!(status, 200);
    let (_, stats) = get_json(&http, srv.api("/stats"), None).await;
    assert_eq!(stats["rate_limiter"]["backend"], "redis");
    assert_eq!(stats["rate_limiter"]["max_concurrent"], 2);
    assert_eq!(stats["rate_limiter"]["degraded"], false);
    let (status, _) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 200);

    redis.kill();
    // The next limiter call notices and fails over; calls keep being served.
    let (status, _) = json(upload().await.unwrap()).await;
    assert_eq!(status, 200, "served by the fallback while Redis is down");
    test_support::eventually(
        Duration::from_secs(10),
        "health reports degraded",
        || async {
            let (_, h) = get_json(&http, srv.url("/health"), None).await;
            h["status"] == "degraded" && h["rate_limiter"]["degraded"] == true
        },
    )
    .await;
    // Killed: fred's reconnects are refused, and health says so, naming both backends.
    let address = format!("127.0.0.1:{}", redis.port());
    test_support::eventually(
        Duration::from_secs(10),
        "health names the refused redis",
        || async {
            let (_, h) = get_json(&http, srv.url("/health"), None).await;
            let l = &h["rate_limiter"];
            l["configured_backend"] == "redis"
                && l["serving_backend"] == "memory"
                && l["address"] == address.as_str()
                && l["degraded_reason"] == "refused"
        },
    )
    .await;
    let (status, ready) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready["reasons"][0].as_str().unwrap().contains("degraded"));
    let metrics = srv.metrics().await;
    assert!(metrics.contains("talkgate_limiter_degraded 1"), "{metrics}");
    srv.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_is_named_in_health_ready_and_the_log_without_the_password() {
    support::init_logs();
    let redis = RedisServer::start();
    redis.require_password("right-pw");
    let url = format!("redis://:wrong-pw@127.0.0.1:{}", redis.port());
    let address = format!("127.0.0.1:{}", redis.port());
    let fake = support::fake().await;
    let name = format!("http-api-it-auth-{}", std::process::id());
    let srv = support::service(
        &fake,
        &[
            ("REDIS_URL", url.as_str()),
            ("LIMITER_NAME", name.as_str()),
            ("READY_DEGRADED_GRACE_SECS", "0"),
        ],
    )
    .await;
    let http = client();

    let (status, health) = get_json(&http, srv.url("/health"), None).await;
    assert_eq!(status, 200);
    let limiter = &health["rate_limiter"];
    assert_eq!(limiter["degraded"], true, "{health}");
    assert_eq!(
        limiter["backend"], "memory",
        "the old field keeps its meaning"
    );
    assert_eq!(limiter["configured_backend"], "redis", "{health}");
    assert_eq!(limiter["serving_backend"], "memory", "{health}");
    assert_eq!(limiter["address"], address.as_str(), "{health}");
    assert_eq!(limiter["degraded_reason"], "auth", "{health}");

    let (status, ready) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 503, "{ready}");
    let reason = ready["reasons"][0].as_str().unwrap();
    for needle in ["redis", address.as_str(), "auth", "memory"] {
        assert!(
            reason.contains(needle),
            "{needle:?} missing from {reason:?}"
        );
    }
    assert_eq!(ready["rate_limiter"]["degraded_reason"], "auth", "{ready}");

    let logs = support::logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("redis limiter degraded") && l.contains(address.as_str()))
        .unwrap_or_else(|| panic!("no degraded warning naming {address}:\n{logs}"));
    assert!(warning.contains("auth"), "{warning}");
    for text in [health.to_string(), ready.to_string(), logs] {
        assert!(!text.contains("wrong-pw"), "the password leaked: {text}");
    }
    srv.stop().await;
    fake.shutdown().await;
}

/// `REDIS_URL=redis://…` at a Redis Cluster node that does not own the limiter's slot: the
/// node answers `MOVED`, and `/health`, `/ready` and the warning log line name the reason
/// `cluster` and the address, and the log line says to use a `redis-cluster://` URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_redis_url_at_a_cluster_node_is_reported_as_cluster_with_the_fix() {
    use test_support::redis::RedisCluster;
    support::init_logs();
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let name = format!("http-api-it-cluster-{}", std::process::id());
    // A master that owns neither the limiter's slot nor the job store's.
    let owners = [
        cluster.master_of(cluster.keyslot(&format!("{{talkgate:{name}}}"))),
        cluster.master_of(cluster.keyslot(&format!("{{talkgate-jobs:{name}}}"))),
    ];
    let other = cluster
        .ports()
        .into_iter()
        .find(|p| !owners.contains(p))
        .expect("three masters, two slots");
    let url = format!("redis://127.0.0.1:{other}");
    let address = format!("127.0.0.1:{other}");
    let fake = support::fake().await;
    let srv = support::service(
        &fake,
        &[
            ("REDIS_URL", url.as_str()),
            ("LIMITER_NAME", name.as_str()),
            ("READY_DEGRADED_GRACE_SECS", "0"),
            ("JOB_STORE", "auto"),
        ],
    )
    .await;
    let http = client();
    let health = test_support::eventually(
        Duration::from_secs(10),
        "health names the cluster reason",
        || async {
            let (_, h) = get_json(&http, srv.url("/health"), None).await;
            if h["rate_limiter"]["degraded_reason"] == "cluster" {
                Ok(h)
            } else {
                Err(h)
            }
        },
    )
    .await;
    assert_eq!(
        health["rate_limiter"]["address"],
        address.as_str(),
        "{health}"
    );
    // The job store connects, then finds its slot on another node: named at start.
    assert_eq!(health["job_store"]["open"], false, "{health}");
    assert_eq!(health["job_store"]["reason"], "cluster", "{health}");
    assert_eq!(health["job_store"]["address"], address.as_str(), "{health}");
    let (status, ready) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 503, "{ready}");
    let reason = ready["reasons"][0].as_str().unwrap();
    for needle in [address.as_str(), "(cluster)"] {
        assert!(
            reason.contains(needle),
            "{needle:?} missing from {reason:?}"
        );
    }
    let logs = support::logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("redis limiter degraded") && l.contains(address.as_str()))
        .unwrap_or_else(|| panic!("no degraded warning naming {address}:\n{logs}"));
    for needle in ["cluster", "MOVED", "use a redis-cluster:// URL"] {
        assert!(
            warning.contains(needle),
            "{needle:?} missing from {warning}"
        );
    }
    srv.stop().await;
    fake.shutdown().await;
}

/// One limit for the fleet: the first instance on an empty Redis stores its
/// `MAX_CONCURRENT_REQUESTS`; a later one configured otherwise serves the stored limit,
/// warns naming both, and shows both in `/health` and `/stats`. `PUT /limit` (admin) changes
/// it for every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_instance_serves_the_stored_limit_says_so_and_put_limit_changes_it_for_all() {
    use test_support::http::send;
    const TOKEN: &str = "limit-admin-token";
    support::init_logs();
    let mut redis = RedisServer::start();
    let url = redis.url();
    let fake = support::fake().await;
    let name = test_support::unique_name("http-api-it-limit");
    let instance = |limit: &'static str| {
        let (fake, url, name) = (&fake, url.clone(), name.clone());
        async move {
            support::service(
                fake,
                &[
                    ("REDIS_URL", url.as_str()),
                    ("LIMITER_NAME", name.as_str()),
                    ("MAX_CONCURRENT_REQUESTS", limit),
                    ("HTTP_API_TOKEN", TOKEN),
                ],
            )
            .await
        }
    };
    let first = instance("3").await;
    let second = instance("5").await;
    let http = client();

    let (_, health) = get_json(&http, second.url("/health"), None).await;
    assert_eq!(health["rate_limiter"]["max_concurrent"], 3, "{health}");
    assert_eq!(
        health["rate_limiter"]["configured_max_concurrent"], 5,
        "{health}"
    );
    let (_, stats) = get_json(&http, second.api("/stats"), Some(TOKEN)).await;
    assert_eq!(stats["rate_limiter"]["max_concurrent"], 3, "{stats}");
    assert_eq!(
        stats["rate_limiter"]["configured_max_concurrent"], 5,
        "{stats}"
    );
    let logs = support::logs();
    assert!(
        logs.lines().any(|l| l.contains(&name)
            && l.contains("stored in redis is 3")
            && l.contains("configured with 5")),
        "no warning naming both limits:\n{logs}"
    );

    // Without the token, refused; a zero or absurd limit, refused.
    let put = |body: serde_json::Value| http.put(second.api("/limit")).json(&body);
    let (status, _) = send(put(serde_json::json!({"max_concurrent": 4})), None).await;
    assert_eq!(status, 401);
    for bad in [0, 1_000_000] {
        let (status, body) =
            send(put(serde_json::json!({"max_concurrent": bad})), Some(TOKEN)).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (status, body) = send(put(serde_json::json!({"max_concurrent": 4})), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["max_concurrent"], 4, "{body}");
    assert_eq!(body["configured_max_concurrent"], 5, "{body}");
    // The first instance serves it too (at its next script, within a heartbeat).
    test_support::eventually(
        Duration::from_secs(5),
        "the first instance serves 4",
        || async {
            let (_, l) = get_json(&http, first.api("/limit"), Some(TOKEN)).await;
            if l["max_concurrent"] == 4 && l["configured_max_concurrent"] == 3 {
                Ok(l)
            } else {
                Err(l)
            }
        },
    )
    .await;

    // Redis gone: the fleet's limit is still 4 (the instance admits its fallback share), and
    // a PUT now is stored when Redis answers again.
    redis.kill();
    test_support::eventually(Duration::from_secs(10), "degraded", || async {
        let (_, h) = get_json(&http, second.url("/health"), None).await;
        h["rate_limiter"]["degraded"] == true
    })
    .await;
    let (_, l) = get_json(&http, second.api("/limit"), Some(TOKEN)).await;
    assert_eq!(l["max_concurrent"], 4, "{l}");
    assert_eq!(l["degraded"], true, "{l}");
    assert_eq!(
        l["serving_max_concurrent"], 2,
        "floor(4 / 2 instances): {l}"
    );
    let (status, body) = send(put(serde_json::json!({"max_concurrent": 6})), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["max_concurrent"], 6, "pending for Redis: {body}");
    first.stop().await;
    second.stop().await;
    fake.shutdown().await;
}

/// The least-privilege ACL user the README documents (its keys, channels and command
/// categories only) is enough for the limiter and the job store: the service is ready,
/// on Redis, and runs a job to its video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_least_privilege_acl_user_runs_the_limiter_and_the_job_store() {
    let redis = RedisServer::start();
    // As in README, "Redis permissions".
    let acl = [
        "ACL",
        "SETUSER",
        "talkgate",
        "reset",
        "on",
        ">tg-acl-pw",
        "~{talkgate:*",
        "~{talkgate-jobs:*",
        "&{talkgate:*",
        "&{talkgate-jobs:*",
        "+@read",
        "+@write",
        "+@scripting",
        "+@pubsub",
        "+@connection",
        "+@fast",
        "-@dangerous",
    ];
    assert_eq!(redis.command(None, &acl), "+OK");
    let url = format!("redis://talkgate:tg-acl-pw@127.0.0.1:{}", redis.port());
    let fake = support::fake().await;
    let name = test_support::unique_name("http-api-it-acl");
    let srv = support::service(
        &fake,
        &[
            ("REDIS_URL", url.as_str()),
            ("LIMITER_NAME", name.as_str()),
            ("JOB_STORE", "auto"),
        ],
    )
    .await;
    let http = client();
    let (status, ready) = get_json(&http, srv.url("/ready"), None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["rate_limiter"]["serving_backend"], "redis", "{ready}");
    assert_eq!(ready["job_store"]["kind"], "redis", "{ready}");
    let body = serde_json::json!({
        "audio_url": "https://example.test/voice.wav",
        "source_url": "https://example.test/face.jpg",
    });
    let (status, done) =
        test_support::http::post_json(&http, srv.api("/generate-video"), None, &body).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "done", "{done}");
    let (_, health) = get_json(&http, srv.url("/health"), None).await;
    assert_eq!(health["rate_limiter"]["degraded"], false, "{health}");
    assert_eq!(health["job_store"]["open"], true, "{health}");
    srv.stop().await;
    fake.shutdown().await;
}
