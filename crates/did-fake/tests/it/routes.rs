//! Every D-ID route, success and error cases, with D-ID's status codes, ids and bodies.
//!
//! The file stays whole although it is long: it is the route-by-route table of D-ID's answers,
//! read side by side with the spec; shared builders are in `support`.

use std::time::Duration;

use did_fake::DEFAULT_API_KEY;
use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::media::silent_wav;

use crate::support::{SHORT, fast, spawn, talk_body};

fn assert_nanoid(s: &str) {
    assert_eq!(s.len(), 21, "{s}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{s}"
    );
}

#[tokio::test]
async fn image_upload_returns_an_img_id_and_an_s3_url() {
    let (fake, api) = spawn(fast()).await;
    let user = fake.user_id(DEFAULT_API_KEY).unwrap();
    let r = api.image(vec![1; 100], "my face.png", "image/png").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body = r.json();
    let id = body["id"].as_str().unwrap();
    assert_nanoid(id.strip_prefix("img_").unwrap());
    assert_eq!(
        body["url"],
        format!("s3://d-id-images-prod/{user}/{id}/myface.png")
    );
    assert!(body.get("faces").is_none());

    let r = api.image(vec![1; 100], "", "image/jpeg").await;
    assert!(
        r.json()["url"].as_str().unwrap().ends_with("/image.jpg"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn image_upload_detect_faces_adds_faces() {
    let (_fake, api) = spawn(fast()).await;
    let r = api.image_detecting_faces(vec![1; 10]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["faces"][0]["size"], 512);
}

#[tokio::test]
async fn image_upload_errors_match_d_id() {
    let (_fake, api) = spawn(fast()).await;
    let r = api
        .upload("/images", "file", vec![1; 10], "a.png", "image/png")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json(),
        json!({"kind": "BadRequestError", "description": "invalid image"})
    );

    let r = api.post_json("/images", &json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["kind"], "BadRequestError");

    let r = api.image(vec![1; 10], "a.gif", "image/gif").await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        r.json(),
        json!({"kind": "UnsupportedMimeTypeError", "description": "The provided mime type is not supported",
               "details": {"received": "image/gif", "supported": ["image/jpeg", "image/png"]}})
    );

    let r = api
        .image(vec![0; 10 * 1024 * 1024 + 1], "big.png", "image/png")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["kind"], "InvalidFileSizeError");
}

#[tokio::test]
async fn image_delete_is_204_then_404() {
    let (_fake, api) = spawn(fast()).await;
    let r = api.image(vec![1; 10], "a.png", "image/png").await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = api.delete(&format!("/images/{id}")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.text.is_empty());
    let r = api.delete(&format!("/images/{id}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.json(),
        json!({"kind": "NotFoundError", "description": "image not found"})
    );
}

#[tokio::test]
async fn audio_upload_reads_the_wav_duration() {
    let (fake, api) = spawn(fast()).await;
    let user = fake.user_id(DEFAULT_API_KEY).unwrap();
    let r = api.audio(silent_wav(2.5), "speech.mp3", "audio/mpeg").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body = r.json();
    let id = body["id"].as_str().unwrap();
    assert_nanoid(id);
    assert_eq!(
        body["url"],
        format!("s3://d-id-audios-prod/{user}/{id}/speech.wav")
    );
    assert_eq!(body["duration"], 2.5);
    assert_eq!(body["moderation_metadata"], json!({}));

    // Not a WAV: estimated at 128 kbit/s.
    let r = api.audio(vec![1; 32_000], "a.mp3", "video/mp4").await;
    assert_eq!(r.json()["duration"], 2.0);
}

#[tokio::test]
async fn audio_upload_errors_and_delete() {
    let (_fake, api) = spawn(fast()).await;
    let r = api.audio(vec![1; 10], "a.png", "image/png").await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        r.json()["details"],
        json!({"received": "image/png", "supported": ["audio/*", "video/*"]})
    );

    let r = api
        .audio(vec![0; 6 * 1024 * 1024 + 1], "a.wav", "audio/wav")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["kind"], "InvalidFileSizeError");

    let r = api
        .upload("/audios", "image", vec![1; 10], "a.wav", "audio/wav")
        .await;
    assert_eq!(
        r.json(),
        json!({"kind": "BadRequestError", "description": "invalid audio"})
    );

    let r = api.audio(silent_wav(1.0), "a.wav", "audio/wav").await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.delete(&format!("/audios/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    let r = api.delete(&format!("/audios/{id}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.json(),
        json!({"kind": "NotFoundError", "description": "audio not found"})
    );
}

#[tokio::test]
async fn create_talk_returns_201_with_the_five_fields() {
    let (fake, api) = spawn(fast()).await;
    let r = api.post_json("/talks", &talk_body()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body = r.json();
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 5, "{body}");
    assert_nanoid(body["id"].as_str().unwrap().strip_prefix("tlk_").unwrap());
    assert_eq!(body["object"], "talk");
    assert_eq!(body["status"], "created");
    assert_eq!(body["created_by"], fake.user_id(DEFAULT_API_KEY).unwrap());
    let created_at = body["created_at"].as_str().unwrap();
    assert_eq!(
        created_at.len(),
        "2023-03-22T16:38:49.723Z".len(),
        "{created_at}"
    );
    assert!(created_at.ends_with('Z'));
}

#[tokio::test]
async fn create_talk_validation_errors_use_d_id_bodies() {
    let (_fake, api) = spawn(fast()).await;
    let script_required = json!({"kind": "ValidationError", "description": "validation failed",
                                 "details": {"body.script": {"message": "'script' is required"}}});
    // A valid body sent without a JSON content type: D-ID's real-world symptom.
    let r = api
        .send(
            api.req(Method::POST, "/talks")
                .body(talk_body().to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json(), script_required);
    let r = api
        .send(
            api.req(Method::POST, "/talks")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(r.json(), script_required);

    let mut body = talk_body();
    body["source_url"] = json!("https://example.test/face.gif");
    let r = api.post_json("/talks", &body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json(),
        json!({"kind": "BadRequestError", "description": "invalid actor url"})
    );

    let mut body = talk_body();
    body["script"]["audio_url"] = json!("https://example.test/speech.ogg");
    body["webhook"] = json!("http://example.test/hook");
    let r = api.post_json("/talks", &body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let err = r.json();
    assert_eq!(err["kind"], "ValidationError");
    assert!(
        err["details"]["body.script.audio_url"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Not match in")
    );
    assert!(err["details"]["body.webhook"].is_object(), "{err}");

    // Strings for booleans and numbers are coerced, as D-ID's "try it" snippets rely on.
    let mut body = talk_body();
    body["config"] = json!({"fluent": "false", "pad_audio": "0.0", "stitch": "true"});
    body["script"]["subtitles"] = json!("false");
    assert_eq!(
        api.post_json("/talks", &body).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn talk_in_created_state_has_pending_url_and_no_started_at() {
    // Real-time scale: the talk queues for at least 0.5 s.
    let (fake, api) = spawn(did_fake::FakeDid::builder().seed(1)).await;
    let mut body = talk_body();
    body["user_data"] = json!("job-1");
    body["name"] = json!("greeting");
    body["webhook"] = json!("https://example.test/hook");
    body["config"] = json!({"result_format": "mp4", "pad_audio": 1});
    let id = api.create_talk_from(&body).await;
    let r = api.get(&format!("/talks/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    let t = r.json();
    let user = fake.user_id(DEFAULT_API_KEY).unwrap();
    assert_eq!(t["status"], "created");
    assert_eq!(t["user_id"], user);
    assert_eq!(t["created_by"], user);
    assert_eq!(t["source_url"], "https://example.test/face.jpg");
    assert_eq!(t["audio_url"], "https://example.test/speech.wav");
    assert_eq!(t["driver_url"], "bank://lively/");
    assert_eq!(t["subtitles"], false);
    assert_eq!(t["user_data"], "job-1");
    assert_eq!(t["name"], "greeting");
    assert_eq!(t["webhook"], "https://example.test/hook");
    assert_eq!(t["config"]["result_format"], ".mp4");
    assert_eq!(t["config"]["pad_audio"], 1.0);
    // 10 s assumed for an https audio url, plus 1 s of padding.
    assert_eq!(t["duration"], 11.0);
    let pending = t["pending_url"].as_str().unwrap();
    assert!(
        pending.starts_with(&format!("s3://d-id-talks-prod/{user}/{id}/")),
        "{pending}"
    );
    assert!(pending.ends_with(".mp4"));
    assert!(t.get("started_at").is_none() && t.get("result_url").is_none());

    // Still in process: cannot be deleted.
    let r = api.delete(&format!("/talks/{id}")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(
        r.json(),
        json!({"kind": "NotReadyError", "description": "talk is in process, try again later"})
    );
}

#[tokio::test]
async fn unknown_talks_and_other_users_talks_are_404() {
    let (_fake, api) = spawn(fast().api_key("other:key")).await;
    let r = api.get("/talks/tlk_doesnotexist").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.json(),
        json!({"kind": "NotFoundError", "description": "not found"})
    );
    assert_eq!(
        api.delete("/talks/tlk_doesnotexist").await.status,
        StatusCode::NOT_FOUND
    );

    let id = api.create_talk(None).await;
    let other = api.with_auth("Basic other:key");
    assert_eq!(
        other.get(&format!("/talks/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(other.get("/talks").await.json()["talks"], json!([]));
}

#[tokio::test]
async fn done_talk_deletes_with_its_body_then_404() {
    let (_fake, api) = spawn(fast()).await;
    let id = api.create_talk(None).await;
    api.wait_status(&id, &["done"], SHORT).await;
    let r = api.delete(&format!("/talks/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["id"], id.as_str());
    assert_eq!(r.json()["status"], "done");
    assert_eq!(
        api.get(&format!("/talks/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn list_talks_pages_newest_first_with_a_token() {
    let (_fake, api) = spawn(fast()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.create_talk(None).await);
    }
    let page = api.get("/talks?limit=2").await.json();
    let got: Vec<&str> = page["talks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let token = page["token"].as_str().unwrap();
    let page = api
        .get(&format!("/talks?limit=2&token={token}"))
        .await
        .json();
    assert_eq!(page["talks"].as_array().unwrap().len(), 1);
    assert_eq!(page["talks"][0]["id"], ids[0].as_str());
    assert!(page.get("token").is_none());

    let all = api.get("/talks").await.json();
    assert_eq!(all["talks"].as_array().unwrap().len(), 3);

    let r = api.get("/talks?limit=abc").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["kind"], "ValidationError");
    let r = api.get("/talks?token=garbage!").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json(),
        json!({"kind": "BadRequestError", "description": "invalid token"})
    );
}

#[tokio::test]
async fn credits_show_the_balance_and_402_when_exhausted() {
    let (fake, api) = spawn(fast().credits(2)).await;
    let c = api.get("/credits").await;
    assert_eq!(c.status, StatusCode::OK);
    let c = c.json();
    assert_eq!(
        (c["remaining"].as_i64(), c["total"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        c["credits"][0]["owner_id"],
        fake.user_id(DEFAULT_API_KEY).unwrap()
    );

    api.create_talk(None).await;
    api.create_talk(None).await;
    let r = api.post_json("/talks", &talk_body()).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        r.json(),
        json!({"kind": "InsufficientCreditsError", "description": "not enough credits"})
    );
    assert_eq!(api.get("/credits").await.json()["remaining"], 0);
    assert_eq!(fake.remaining_credits(DEFAULT_API_KEY), Some(0));
    assert_eq!(fake.stats().talks_created, 2);

    let r = api.image(vec![1; 10], "a.png", "image/png").await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test]
async fn a_talk_costs_one_credit_per_started_fifteen_seconds() {
    let (fake, api) = spawn(fast().credits(10)).await;
    let audio = api
        .audio(silent_wav(20.0), "a.wav", "audio/wav")
        .await
        .json();
    let mut body = talk_body();
    body["script"]["audio_url"] = audio["url"].clone();
    assert_eq!(
        api.post_json("/talks", &body).await.status,
        StatusCode::CREATED
    );
    assert_eq!(fake.remaining_credits(DEFAULT_API_KEY), Some(8));
}

#[tokio::test]
async fn unknown_routes_get_the_gateway_403() {
    let (fake, api) = spawn(fast()).await;
    for (method, path) in [
        (Method::GET, "/clips"),
        (Method::PUT, "/talks"),
        (Method::GET, "/talks/a/b"),
        (Method::POST, "/credits"),
    ] {
        let r = api.send(api.req(method.clone(), path)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(r.json(), json!({"message": "Missing Authentication Token"}));
    }
    assert_eq!(fake.stats().count("unmatched", 403), 4);
}

#[tokio::test]
async fn talks_from_uploads_use_the_audio_length_and_fail_when_uploads_are_gone() {
    let (_fake, api) = spawn(fast()).await;
    let image = api.image(vec![1; 10], "a.png", "image/png").await.json();
    let audio = api
        .audio(silent_wav(3.0), "a.wav", "audio/wav")
        .await
        .json();
    let body =
        json!({"source_url": image["url"], "script": {"type": "audio", "audio_url": audio["url"]}});
    let id = api.create_talk_from(&body).await;
    let done = api.wait_status(&id, &["done", "error"], SHORT).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["duration"], 3.0);
    assert_eq!(done["metadata"]["num_frames"], 75);

    api.delete(&format!("/images/{}", image["id"].as_str().unwrap()))
        .await;
    let id = api.create_talk_from(&body).await;
    let t = api.wait_status(&id, &["done", "error"], SHORT).await;
    assert_eq!(t["error"]["kind"], "SourceError", "{t}");

    let image = api.image(vec![1; 10], "a.png", "image/png").await.json();
    api.delete(&format!("/audios/{}", audio["id"].as_str().unwrap()))
        .await;
    let body =
        json!({"source_url": image["url"], "script": {"type": "audio", "audio_url": audio["url"]}});
    let id = api.create_talk_from(&body).await;
    let t = api.wait_status(&id, &["done", "error"], SHORT).await;
    assert_eq!(t["error"]["kind"], "UnknownError", "{t}");
}

#[tokio::test]
async fn text_scripts_are_accepted_and_timed_by_length() {
    let (_fake, api) = spawn(fast()).await;
    let body = json!({"script": {"type": "text", "input": "Hello there, this is thirty."}});
    let id = api.create_talk_from(&body).await;
    let t = api.wait_status(&id, &["done"], SHORT).await;
    assert!(t.get("audio_url").is_none());
    assert_eq!(
        t["source_url"],
        "https://d-id-public-bucket.s3.us-west-2.amazonaws.com/alice.jpg"
    );
    let d = t["duration"].as_f64().unwrap();
    assert!((d - 28.0 / 15.0).abs() < 1e-9, "{d}");
}

#[tokio::test]
async fn result_url_serves_bytes_and_s3_errors_after_expiry_or_tampering() {
    let (_fake, api) = spawn(fast().result_size(4096)).await;
    let id = api.create_talk(None).await;
    let t = api.wait_status(&id, &["done"], SHORT).await;
    let url = t["result_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/_fake_s3/d-id-talks-prod/auth0%7C", api.base)),
        "{url}"
    );
    assert!(
        url.contains("AWSAccessKeyId=") && url.contains("&Expires=") && url.contains("&Signature=")
    );
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len(), 4096);
    assert_eq!(&bytes[4..8], b"ftyp");

    let tampered = url.replace("&Expires=", "&Expires=1");
    let resp = reqwest::get(tampered).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("<Code>SignatureDoesNotMatch</Code>")
    );

    let (_fake, api) = spawn(fast().result_url_ttl(Duration::ZERO)).await;
    let id = api.create_talk(None).await;
    let t = api.wait_status(&id, &["done"], SHORT).await;
    let resp = reqwest::get(t["result_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.headers()["content-type"], "application/xml");
    let xml = resp.text().await.unwrap();
    assert!(
        xml.contains("<Code>AccessDenied</Code>") && xml.contains("Request has expired"),
        "{xml}"
    );
}
