//! Test helpers: spawning fakes and a small D-ID client over reqwest (bounded polling is
//! `test_support::eventually`, the fixtures are `test_support::media`).

use std::time::Duration;

use did_fake::{DEFAULT_API_KEY, FakeBuilder, FakeDid, RunningFake};
use reqwest::StatusCode;
use serde_json::Value;

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

    pub fn upload_req(
        &self,
        path: &str,
        field: &str,
        bytes: Vec<u8>,
        file: &str,
        mime: &str,
    ) -> reqwest::RequestBuilder {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(file.to_owned())
            .mime_str(mime)
            .expect("mime");
        let form = reqwest::multipart::Form::new().part(field.to_owned(), part);
        self.req(reqwest::Method::POST, path).multipart(form)
    }

    pub async fn upload(
        &self,
        path: &str,
        field: &str,
        bytes: Vec<u8>,
        file: &str,
        mime: &str,
    ) -> Reply {
        self.send(self.upload_req(path, field, bytes, file, mime))
            .await
    }

    /// Creates an audio talk and returns its id (asserting the 201).
    pub async fn create_talk(&self, user_data: Option<&str>) -> String {
        let mut body = talk_body();
        if let Some(u) = user_data {
            body["user_data"] = Value::from(u);
        }
        let r = self.post_json("/talks", &body).await;
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

/// A valid audio-script `POST /talks` body.
pub fn talk_body() -> Value {
    serde_json::json!({
        "source_url": "https://example.test/face.jpg",
        "script": { "type": "audio", "audio_url": "https://example.test/speech.wav" },
    })
}

pub const SHORT: Duration = Duration::from_secs(5);
