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
