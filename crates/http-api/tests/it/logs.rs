//! Secrets never reach the log, and every request's lines carry its request id.

use base64::Engine;
use serde_json::json;

use crate::support::{self, Server};
use test_support::http::{client, file_form, get_json, json, post_json};
use test_support::media;

const KEY_SECRET: &str = "S3cretKeyPart-771";
const TOKEN: &str = "Bearer-Secret-Token-3141";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_d_id_key_nor_the_token_is_ever_logged() {
    let key = format!("logcheck:{KEY_SECRET}");
    let fake = did_fake::FakeDid::builder()
        .time_scale(0.001)
        .api_key(key.clone())
        .spawn()
        .await
        .unwrap();
    let base = fake.base_url();
    let config = support::config(&[
        ("D_ID_BASE_URL", base.as_str()),
        ("D_ID_API_KEY", key.as_str()),
        ("HTTP_API_TOKEN", TOKEN),
        ("POLL_INTERVAL_SECS", "0.01"),
    ]);
    // What main logs at start-up: one structured record, no secret.
    support::init_logs();
    http_api::wiring::log_start(&config);
    let srv = Server::start(http_api::wiring::build(&config).await.unwrap()).await;
    let http = client();

    // A successful flow, a wrong token, an upstream error and a validation error.
    let r = http
        .post(srv.api("/upload-source-image"))
        .bearer_auth(TOKEN)
        .header("x-request-id", "logcheck-upload-1")
        .multipart(file_form("a.png", media::png(), "image/png"))
        .send()
        .await
        .unwrap();
    let (status, up) = json(r).await;
    assert_eq!(status, 200, "{up}");
    let body = json!({"audio_url": "https://x.test/a.wav", "source_url": up["url"]});
    let (status, _) = post_json(&http, srv.api("/generate-video"), Some(TOKEN), &body).await;
    assert_eq!(status, 200);
    let (status, _) = get_json(&http, srv.api("/stats"), Some(&format!("{TOKEN}x"))).await;
    assert_eq!(status, 401);
    let (status, _) = get_json(&http, srv.api("/talk-status/tlk_missing0000"), Some(TOKEN)).await;
    assert_eq!(status, 404);
    let (status, stats) = get_json(&http, srv.api("/stats"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    srv.stop().await;
    fake.shutdown().await;

    let logs = support::logs();
    let start = logs
        .lines()
        .find(|l| l.contains("starting talkgate"))
        .unwrap_or_else(|| panic!("no start-up record:\n{logs}"));
    // Fields, not a `Debug` dump of the whole config.
    for field in [
        "\"max_concurrent\":10",
        "\"limiter\":\"memory\"",
        "\"http_api_token_set\":true",
        "\"job_store\":\"Memory\"",
    ] {
        assert!(start.contains(field), "{field} missing from {start}");
    }
    assert!(!start.contains("Config {"), "{start}");
    assert!(
        logs.lines()
            .any(|l| l.contains("job store ready") && l.contains("\"at\":\"memory\"")),
        "\"job store ready\" does not say where:\n{logs}"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
    for secret in [KEY_SECRET, TOKEN, b64.as_str()] {
        assert!(!logs.contains(secret), "a secret reached the log");
        assert!(
            !stats.to_string().contains(secret),
            "a secret reached /stats"
        );
    }
    // The capture works, and the request's lines carry its id.
    let upload_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("logcheck-upload-1"))
        .collect();
    assert!(
        upload_lines.iter().any(|l| l.contains("uploading")),
        "no 'uploading' line with the id"
    );
    assert!(upload_lines.iter().any(|l| l.contains("request finished")));
    assert!(
        logs.contains("api_key_configured") || logs.contains("did_api_key"),
        "config was logged"
    );
}
