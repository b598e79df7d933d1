//! What goes on the wire: one auth header for every call, real upload content types, the
//! create token in `user_data`, paths and query strings.

use base64::Engine as _;
use domain::{AssetId, Priority, Script, TalkId, TalkRequest};
use ports::VideoApi;
use serde_json::{Value, json};

use wiremock::{Request, ResponseTemplate};

use crate::support::{
    KEY, Scripted, Sent, client, config, hello, limiter, png_upload, reply, talk_json, wav_upload,
};

fn upstream() -> impl Fn(&Request, usize) -> ResponseTemplate + Send + Sync + 'static {
    |seen, _| match (seen.method.as_str(), seen.path()) {
        ("POST", "/images") => reply::json(
            201,
            json!({"id": "img_abc", "url": "s3://d-id-images-prod/u/img_abc/face.png"}),
        ),
        ("POST", "/audios") => reply::json(
            201,
            json!({"id": "aud123", "url": "s3://d-id-audios-prod/u/aud123/voice.wav", "duration": 1.5}),
        ),
        ("DELETE", _)
            if seen.path().starts_with("/images/") || seen.path().starts_with("/audios/") =>
        {
            reply::empty(204)
        }
        ("POST", "/talks") => reply::json(
            201,
            json!({"id": "tlk_new", "object": "talk", "status": "created", "created_at": "2024-01-01T00:00:00.000Z"}),
        ),
        ("GET", "/talks/tlk_new") => {
            // Echo the user_data that was sent, as D-ID does.
            let mut t = talk_json("tlk_new", "done");
            t["user_data"] = "job-7|tg:AbCdEfGhIjKlMnOp".into();
            reply::json(200, t)
        }
        ("GET", "/talks") => reply::json(200, json!({"talks": []})),
        ("GET", "/credits") => reply::json(200, json!({"remaining": 1, "total": 2})),
        _ => reply::empty(404),
    }
}

#[tokio::test]
async fn every_call_sends_the_same_basic_base64_authorization() {
    let server = Scripted::start(upstream()).await;
    let did = client(config(&server.base_url), limiter(2));
    let p = Priority::Normal;
    let png = png_upload(Some("face.png"));
    let wav = wav_upload(Some("voice.wav"));
    let image = did.upload_image(png, &p.into()).await.unwrap();
    assert_eq!(image.url, "s3://d-id-images-prod/u/img_abc/face.png");
    assert_eq!(image.id, Some(AssetId::parse("img_abc").unwrap()));
    did.upload_audio(wav, &p.into()).await.unwrap();
    did.delete_image(&AssetId::parse("img_abc").unwrap(), &p.into())
        .await
        .unwrap();
    did.delete_audio(&AssetId::parse("aud123").unwrap(), &p.into())
        .await
        .unwrap();
    did.credits(&p.into()).await.unwrap();
    did.list_talks(None, None, &p.into()).await.unwrap();

    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    );
    let seen = server.seen().await;
    assert_eq!(seen.len(), 6);
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(expected.as_str()),
            "{} {}",
            request.method,
            request.target()
        );
        assert_eq!(request.header("accept"), Some("application/json"));
    }
    let paths: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.target()))
        .collect();
    assert_eq!(
        paths,
        [
            "POST /images",
            "POST /audios",
            "DELETE /images/img_abc",
            "DELETE /audios/aud123",
            "GET /credits",
            "GET /talks"
        ]
    );
}

#[tokio::test]
async fn uploads_carry_their_real_content_type_and_field() {
    let server = Scripted::start(upstream()).await;
    let did = client(config(&server.base_url), limiter(1));
    let p = Priority::High;
    // Named .jpg but a PNG: the sniffed type wins (the original sent image/jpeg for all).
    let png = png_upload(Some("photo.jpg"));
    did.upload_image(png, &p.into()).await.unwrap();
    let wav = wav_upload(None);
    did.upload_audio(wav, &p.into()).await.unwrap();
    let seen = server.seen().await;
    let image = seen[0].body_text();
    assert!(
        seen[0]
            .header("content-type")
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );
    assert!(
        image.contains(r#"name="image"; filename="photo.png""#),
        "{image}"
    );
    assert!(image.contains("Content-Type: image/png"), "{image}");
    assert!(!image.contains("image/jpeg"), "{image}");
    let audio = seen[1].body_text();
    assert!(
        audio.contains(r#"name="audio"; filename="audio.wav""#),
        "{audio}"
    );
    assert!(audio.contains("Content-Type: audio/wav"), "{audio}");
}

#[tokio::test]
async fn creates_are_json_tagged_with_a_token_and_callers_see_their_own_user_data() {
    let server = Scripted::start(upstream()).await;
    let did = client(config(&server.base_url), limiter(1));
    let p = Priority::Normal;
    let request = TalkRequest::new(
        Some("https://x.test/alice.jpg".into()),
        Script::Audio {
            audio_url: "s3://d-id-audios-prod/u/aud123/voice.wav".into(),
        },
    )
    .unwrap()
    .with_user_data("job-7".into())
    .unwrap();
    let created = did.create_talk(&request, &p.into()).await.unwrap();
    assert_eq!(created.id, TalkId::parse("tlk_new").unwrap());
    let untagged = hello(None);
    did.create_talk(&untagged, &p.into()).await.unwrap();

    let seen = server.seen().await;
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    let user_data = body["user_data"].as_str().unwrap();
    let token = user_data.strip_prefix("job-7|tg:").expect(user_data);
    assert!(
        token.len() == 16 && token.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{user_data}"
    );
    assert_eq!(body["source_url"], "https://x.test/alice.jpg");
    assert_eq!(body["script"]["type"], "audio");
    let body2: Value = serde_json::from_slice(&seen[1].body).unwrap();
    let user_data2 = body2["user_data"].as_str().unwrap();
    assert!(
        user_data2.starts_with("tg:") && user_data2.len() == 19,
        "{user_data2}"
    );
    assert_ne!(
        &user_data[user_data.len() - 16..],
        &user_data2[3..],
        "a fresh token per create"
    );

    // The tag never reaches the caller.
    let talk = did.get_talk(&created.id, &p.into()).await.unwrap();
    assert_eq!(talk.user_data.as_deref(), Some("job-7"));
    assert_eq!(did.stats().creates, 2);
}

#[tokio::test]
async fn list_talks_passes_limit_and_token() {
    let server = Scripted::start(upstream()).await;
    let did = client(config(&server.base_url), limiter(1));
    did.list_talks(Some(5), Some("abc=".into()), &Priority::Low.into())
        .await
        .unwrap();
    assert_eq!(
        server.seen().await[0].target(),
        "/talks?limit=5&token=abc%3D"
    );
}

/// An observer that adds headers (one of them the client's own) and records each exchange.
#[derive(Default)]
struct Recording(std::sync::Mutex<Vec<did_client::Exchange>>);

impl did_client::ExchangeObserver for Recording {
    fn headers(&self, headers: &mut reqwest::header::HeaderMap) {
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("authorization", "Basic stolen".parse().unwrap());
    }

    fn exchanged(&self, exchange: &did_client::Exchange) {
        self.0.lock().unwrap().push(*exchange);
    }
}

#[tokio::test]
async fn an_observer_adds_headers_but_not_the_clients_own_and_is_told_every_attempt() {
    let server = Scripted::start(|seen: &Request, n: usize| match seen.path() {
        // The first attempt fails (a retried 503), the second answers.
        "/credits" if n == 0 => reply::error(503, "ServiceUnavailable", "busy"),
        "/credits" => reply::json(200, json!({"remaining": 1, "total": 2})),
        _ => reply::empty(404),
    })
    .await;
    let observer = std::sync::Arc::new(Recording::default());
    let mut cfg = config(&server.base_url);
    cfg.retry = crate::support::fast_retry();
    let did = client(cfg, limiter(2)).with_observer(observer.clone());
    did.credits(&Priority::Low.into()).await.unwrap();
    let seen = server.seen().await;
    assert_eq!(seen.len(), 2);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    );
    for request in &seen {
        assert_eq!(
            request.header("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(request.header("authorization"), Some(expected.as_str()));
    }
    let told = observer.0.lock().unwrap().clone();
    let summary: Vec<_> = told
        .iter()
        .map(|e| (e.operation, e.method, e.template, e.attempt, e.outcome))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "credits",
                "GET",
                "/credits",
                1,
                did_client::ExchangeOutcome::Answered(503)
            ),
            (
                "credits",
                "GET",
                "/credits",
                2,
                did_client::ExchangeOutcome::Answered(200)
            ),
        ]
    );
}
