//! Test helpers: spawning fakes and a small D-ID client over reqwest (bounded polling is
//! `test_support::eventually`, the fixtures are `test_support::media`).

use std::time::Duration;

use did_fake::{DEFAULT_API_KEY, FakeBuilder, FakeDid, Faults, RunningFake};
use reqwest::StatusCode;
use serde_json::Value;

/// The default faults with `set` applied: `faults(|f| f.p_500 = 1.0)`.
pub fn faults(set: impl FnOnce(&mut Faults)) -> Faults {
    let mut faults = Faults::default();
    set(&mut faults);
    faults
}

/// A fake whose talks finish in milliseconds, with a fixed seed.
pub fn fast() -> FakeBuilder {
    FakeDid::builder().time_scale(0.001).seed(7)
}

pub async fn spawn(builder: FakeBuilder) -> (RunningFake, Api) {
    let fake = builder.spawn().await.expect("fake starts");
    let api = Api::new(&fake.base_url(), &format!("Basic {DEFAULT_API_KEY}"));
    (fake, api)
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// A minimal D-ID client: base url plus an `Authorization` value.
#[derive(Clone, Debug)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub auth: String,
}

impl Api {
    pub fn new(base: &str, auth: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Self {
            http,
            base: base.to_owned(),
            auth: auth.to_owned(),
        }
    }

    pub fn with_auth(&self, auth: &str) -> Self {
        Self {
            auth: auth.to_owned(),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req
            .send()
            .await
            .expect("request succeeds at the HTTP level");
        Self::reply(resp).await
    }

    pub async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await.expect("body");
        Reply {
            status,
            content_type,
            text,
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header(reqwest::header::AUTHORIZATION, &self.auth)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    /// `POST path` with one file, `bytes` named `file` of type `mime`, as form field `field`.
    pub async fn upload(
        &self,
        path: &str,
        field: &str,
        bytes: Vec<u8>,
        file: &str,
        mime: &str,
    ) -> Reply {
        let form = reqwest::multipart::Form::new().part(field.to_owned(), part(bytes, file, mime));
        self.send(self.req(reqwest::Method::POST, path).multipart(form))
            .await
    }

    /// `POST /images` with the file as field `image`, as D-ID wants it.
    pub async fn image(&self, bytes: Vec<u8>, file: &str, mime: &str) -> Reply {
        self.upload("/images", "image", bytes, file, mime).await
    }

    /// `POST /images` of a JPEG `a.jpg` with `detect_faces=true`.
    pub async fn image_detecting_faces(&self, bytes: Vec<u8>) -> Reply {
        let form = reqwest::multipart::Form::new()
            .part("image", part(bytes, "a.jpg", "image/jpeg"))
            .text("detect_faces", "true");
        self.send(self.req(reqwest::Method::POST, "/images").multipart(form))
            .await
    }

    /// `POST /audios` with the file as field `audio`, as D-ID wants it.
    pub async fn audio(&self, bytes: Vec<u8>, file: &str, mime: &str) -> Reply {
        self.upload("/audios", "audio", bytes, file, mime).await
    }

    /// Creates an audio talk and returns its id (asserting the 201).
    pub async fn create_talk(&self, user_data: Option<&str>) -> String {
        let mut body = talk_body();
        if let Some(u) = user_data {
            body["user_data"] = Value::from(u);
        }
        self.create_talk_from(&body).await
    }

    /// `POST /talks` of `body`; returns the new talk's id (asserting the 201).
    pub async fn create_talk_from(&self, body: &Value) -> String {
        let r = self.post_json("/talks", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json()["id"].as_str().expect("id").to_owned()
    }

    /// Polls `GET /talks/{id}` until its status is one of `want`, for at most `within`.
    pub async fn wait_status(&self, id: &str, want: &[&str], within: Duration) -> Value {
        let what = format!("talk {id} to reach one of {want:?}");
        test_support::eventually(within, &what, || async {
            let r = self.get(&format!("/talks/{id}")).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let talk = r.json();
            let status = talk["status"].as_str().unwrap_or_default().to_owned();
            if want.contains(&status.as_str()) {
                Ok(talk)
            } else {
                Err(status)
            }
        })
        .await
    }
}

/// A multipart file part: `bytes` named `file`, declared as `mime`.
fn part(bytes: Vec<u8>, file: &str, mime: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes)
        .file_name(file.to_owned())
        .mime_str(mime)
        .expect("mime")
}

/// A valid audio-script `POST /talks` body.
pub fn talk_body() -> Value {
    serde_json::json!({
        "source_url": "https://example.test/face.jpg",
        "script": { "type": "audio", "audio_url": "https://example.test/speech.wav" },
    })
}

pub const SHORT: Duration = Duration::from_secs(5);
