//! Paying once for the same bytes: the second upload of the same bytes by the same tenant is
//! answered from the cache with no call to D-ID, another tenant's or other bytes are not, the
//! cache can be turned off, a failing cache never fails an upload, and a budget's estimate
//! uses the cached audio's length.

use serde_json::{Value, json};

use crate::support;
use crate::tenants::tenant;
use test_support::http::{client, file_form, get_json};
use test_support::media;

/// `POST /upload-audio` of `bytes` as `token`: status, body, the cache header.
async fn upload(
    srv: &support::Server,
    token: Option<&str>,
    bytes: Vec<u8>,
) -> (u16, Value, Option<String>) {
    let mut req = client().post(srv.api("/upload-audio")).multipart(file_form(
        "voice.wav",
        bytes,
        "audio/wav",
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let header = resp
        .headers()
        .get("x-talkgate-upload-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = test_support::http::json(resp).await;
    (status, body, header)
}

fn audio_uploads(fake: &did_fake::RunningFake) -> u64 {
    fake.stats()
        .requests
        .get("POST /audios")
        .map_or(0, |by_status| by_status.values().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_of_the_same_tenant_are_uploaded_once() {
    support::init_logs();
    let dir = support::TempDir::new("uploads");
    let file = dir.file("tenants.toml");
    std::fs::write(
        &file,
        tenant("web", "web-token", "budget = { credits = 2 }")
            + &tenant("batch", "batch-token", "admin = true"),
    )
    .unwrap();
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("TENANTS_FILE", file.as_str())]).await;
    let voice = media::silent_wav(31.0);

    let (status, first, header) = upload(&srv, Some("web-token"), voice.clone()).await;
    assert_eq!((status, header.as_deref()), (200, Some("miss")), "{first}");
    let (status, again, header) = upload(&srv, Some("web-token"), voice.clone()).await;
    assert_eq!((status, header.as_deref()), (200, Some("hit")), "{again}");
    assert_eq!(again, first, "the same answer: url, id and message");
    assert_eq!(
        audio_uploads(&fake),
        1,
        "the second upload made no call to D-ID"
    );

    // Other bytes, and the same bytes of another tenant, are uploaded.
    let (_, other, header) = upload(&srv, Some("web-token"), media::silent_wav(5.0)).await;
    assert_eq!(header.as_deref(), Some("miss"), "{other}");
    assert_ne!(other["url"], first["url"]);
    let (_, theirs, header) = upload(&srv, Some("batch-token"), voice).await;
    assert_eq!(header.as_deref(), Some("miss"), "{theirs}");
    assert_eq!(audio_uploads(&fake), 3);

    // The budget's estimate is the uploaded audio's 31 s (3 credits), not the 60 s assumed
    // for an audio of unknown length (4): with 2 credits it does not fit, and says it needs 3.
    let resp = client()
        .post(srv.api("/jobs"))
        .bearer_auth("web-token")
        .json(&json!({"audio_url": first["url"], "source_url": "https://example.test/face.jpg"}))
        .send()
        .await
        .unwrap();
    let (status, refused) = test_support::http::json(resp).await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["error"]["budget"]["needed"], 3, "{refused}");

    let (_, stats) = get_json(&client(), srv.api("/stats"), Some("batch-token")).await;
    let cache = &stats["upload_cache"];
    assert_eq!(
        (
            &cache["cache_enabled"],
            &cache["audio_hits"],
            &cache["audio_misses"],
            &cache["audio_stored"]
        ),
        (&json!(true), &json!(1), &json!(3), &json!(3)),
        "{stats}"
    );
    let metrics = srv.metrics().await;
    for line in [
        "talkgate_upload_cache_lookups_total{kind=\"audio\",result=\"hit\"} 1",
        "talkgate_upload_cache_lookups_total{kind=\"audio\",result=\"miss\"} 3",
        "talkgate_upload_cache_stored_total{kind=\"audio\"} 3",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_every_upload_goes_to_d_id() {
    support::init_logs();
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("UPLOAD_CACHE", "off")]).await;
    for _ in 0..2 {
        let (status, body, header) = upload(&srv, None, media::wav().to_vec()).await;
        assert_eq!((status, header), (200, None), "{body}");
    }
    assert_eq!(audio_uploads(&fake), 2);
    let (_, stats) = get_json(&client(), srv.api("/stats"), None).await;
    assert_eq!(
        stats["upload_cache"],
        json!({"cache_enabled": false}),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_whose_store_is_down_never_fails_an_upload() {
    support::init_logs();
    let fake = support::fake().await;
    // A Redis job store that is not there: the store is opened again in the background.
    let port = test_support::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let srv = support::service(
        &fake,
        &[("REDIS_URL", url.as_str()), ("JOB_STORE", "redis")],
    )
    .await;
    for _ in 0..2 {
        let (status, body, header) = upload(&srv, None, media::wav().to_vec()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header, None, "no cache answered");
    }
    assert_eq!(audio_uploads(&fake), 2);
    let (_, stats) = get_json(&client(), srv.api("/stats"), None).await;
    assert!(
        stats["upload_cache"]["audio_errors"].as_u64().unwrap() >= 2,
        "{stats}"
    );
}

/// `POST /upload-source-image` of `bytes` without a token: status, body, the cache header.
async fn upload_image(srv: &support::Server, bytes: Vec<u8>) -> (u16, Value, Option<String>) {
    let resp = client()
        .post(srv.api("/upload-source-image"))
        .multipart(file_form("face.png", bytes, "image/png"))
        .send()
        .await
        .unwrap();
    let header = resp
        .headers()
        .get("x-talkgate-upload-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = test_support::http::json(resp).await;
    (status, body, header)
}

fn image_uploads(fake: &did_fake::RunningFake) -> u64 {
    fake.stats()
        .requests
        .get("POST /images")
        .map_or(0, |by_status| by_status.values().sum())
}

/// An image is answered from the cache (here the SQLite job store's) until its entry
/// expires, then uploaded again. The TTL is the smallest allowed, 1 s, so the test sleeps
/// past it: the entry's expiry is read from the wall clock, which a paused tokio clock does
/// not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_entry_is_uploaded_again() {
    support::init_logs();
    let dir = support::TempDir::new("uploads-expiry");
    let path = dir.file("jobs.sqlite3");
    let fake = support::fake().await;
    let srv = support::service(
        &fake,
        &[
            ("JOB_STORE", "sqlite"),
            ("JOB_STORE_PATH", path.as_str()),
            ("UPLOAD_CACHE_TTL_SECS", "1"),
        ],
    )
    .await;
    let face = media::png().to_vec();
    let (status, first, header) = upload_image(&srv, face.clone()).await;
    assert_eq!((status, header.as_deref()), (200, Some("miss")), "{first}");
    let (status, again, header) = upload_image(&srv, face.clone()).await;
    assert_eq!((status, header.as_deref()), (200, Some("hit")), "{again}");
    assert_eq!(again, first);
    assert_eq!(image_uploads(&fake), 1, "the hit made no call to D-ID");

    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, later, header) = upload_image(&srv, face).await;
    assert_eq!((status, header.as_deref()), (200, Some("miss")), "{later}");
    assert_ne!(later["url"], first["url"], "uploaded again: a new URL");
    assert_eq!(image_uploads(&fake), 2);
    let (_, stats) = get_json(&client(), srv.api("/stats"), None).await;
    let cache = &stats["upload_cache"];
    assert_eq!(
        (
            &cache["image_hits"],
            &cache["image_misses"],
            &cache["cache_ttl_ms"]
        ),
        (&json!(1), &json!(2), &json!(1000)),
        "{stats}"
    );
}

/// Two instances on one Redis job store share its cache: bytes uploaded through one are
/// answered by the other without a call to D-ID, and the other's tenant isolation holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_redis_store_share_the_cache() {
    support::init_logs();
    let redis = tokio::task::spawn_blocking(test_support::redis::RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let dir = support::TempDir::new("uploads-shared");
    let file = dir.file("tenants.toml");
    std::fs::write(
        &file,
        tenant("web", "web-token", "") + &tenant("batch", "batch-token", ""),
    )
    .unwrap();
    let fake = support::fake().await;
    let name = test_support::unique_name("http-api-it-uploads");
    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(
            support::service(
                &fake,
                &[
                    ("TENANTS_FILE", file.as_str()),
                    ("REDIS_URL", url.as_str()),
                    ("JOB_STORE", "redis"),
                    ("LIMITER_NAME", name.as_str()),
                    ("CREDITS_CHECK_SECS", "0"),
                ],
            )
            .await,
        );
    }
    let voice = media::silent_wav(3.0);
    let (status, first, header) = upload(&instances[0], Some("web-token"), voice.clone()).await;
    assert_eq!((status, header.as_deref()), (200, Some("miss")), "{first}");
    let (status, other, header) = upload(&instances[1], Some("web-token"), voice.clone()).await;
    assert_eq!((status, header.as_deref()), (200, Some("hit")), "{other}");
    assert_eq!(
        other, first,
        "the other instance answers with the same upload"
    );
    let (status, theirs, header) = upload(&instances[1], Some("batch-token"), voice).await;
    assert_eq!((status, header.as_deref()), (200, Some("miss")), "{theirs}");
    assert_ne!(theirs["url"], first["url"]);
    assert_eq!(audio_uploads(&fake), 2);
}

/// A Redis job store that dies after the cache answered: the next upload of the same bytes
/// goes to D-ID and succeeds, counted as a failed lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_whose_redis_dies_still_uploads() {
    support::init_logs();
    let mut redis = tokio::task::spawn_blocking(test_support::redis::RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let fake = support::fake().await;
    let name = test_support::unique_name("http-api-it-uploads-down");
    let srv = support::service(
        &fake,
        &[
            ("REDIS_URL", url.as_str()),
            ("JOB_STORE", "redis"),
            ("LIMITER_NAME", name.as_str()),
        ],
    )
    .await;
    let bytes = media::wav().to_vec();
    let (_, first, header) = upload(&srv, None, bytes.clone()).await;
    assert_eq!(header.as_deref(), Some("miss"), "{first}");
    let (_, _, header) = upload(&srv, None, bytes.clone()).await;
    assert_eq!(header.as_deref(), Some("hit"));
    redis.kill();
    let (status, after, header) = upload(&srv, None, bytes).await;
    assert_eq!((status, header), (200, None), "{after}");
    assert_eq!(audio_uploads(&fake), 2, "uploaded, the cache being down");
    let (_, stats) = get_json(&client(), srv.api("/stats"), None).await;
    assert_eq!(stats["upload_cache"]["audio_errors"], json!(1), "{stats}");
    let metrics = srv.metrics().await;
    let line = "talkgate_upload_cache_lookups_total{kind=\"audio\",result=\"error\"} 1";
    assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
}
