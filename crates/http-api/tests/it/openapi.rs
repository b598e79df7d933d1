//! `docs/openapi.yaml` is checked against real responses: every documented operation is
//! called, and each answer's status must be documented and its body must match the schema.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use did_fake::Faults;
use serde_json::{Value, json};

use crate::support::{self, PNG, Server, client, file_form, wav};

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("docs/openapi.yaml exists");
        serde_norway::from_str(&text).expect("docs/openapi.yaml is valid YAML")
    })
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(
            spec()
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling {r}")),
        ),
        None => v,
    }
}

/// The checker: records which operations were exercised.
struct Checker {
    seen: BTreeSet<(String, String)>,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            seen: BTreeSet::new(),
        }
    }

    /// Sends `req`, and checks status and body against the operation `method path`.
    async fn check(
        &mut self,
        method: &str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let op = &spec()["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        let documented = resolve(&op["responses"][status.to_string()]);
        assert!(
            documented.is_object(),
            "{method} {path}: status {status} is not documented ({text})"
        );
        self.seen.insert((method.to_owned(), path.to_owned()));
        if let Some(schema) = documented.pointer("/content/application~1json/schema") {
            assert!(
                ct.starts_with("application/json"),
                "{method} {path} {status}: content type {ct}"
            );
            let body: Value = serde_json::from_str(&text).unwrap();
            let root = json!({ "allOf": [schema], "components": spec()["components"] });
            let validator = jsonschema::validator_for(&root).expect("schema compiles");
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{method} {path} {status}: {errors:?}\n{body}"
            );
            (status, body)
        } else {
            assert!(
                documented.pointer("/content/text~1plain").is_some(),
                "{method} {path} {status}: no content documented"
            );
            assert!(
                ct.starts_with("text/plain"),
                "{method} {path} {status}: {ct}"
            );
            (status, Value::String(text))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[]).await;
    let http = client();
    let mut c = Checker::new();
    const GEN: &str = "/api/d_id_optimized/generate-video";
    const IMG: &str = "/api/d_id_optimized/upload-source-image";
    const AUD: &str = "/api/d_id_optimized/upload-audio";
    const STATUS: &str = "/api/d_id_optimized/talk-status/{talk_id}";

    let (s, img) = c
        .check(
            "POST",
            IMG,
            http.post(srv.api("/upload-source-image"))
                .multipart(file_form("a.png", PNG.to_vec(), "image/png")),
        )
        .await;
    assert_eq!(s, 200);
    let (s, aud) = c
        .check(
            "POST",
            AUD,
            http.post(srv.api("/upload-audio?priority=low"))
                .multipart(file_form("a.wav", wav(), "audio/wav")),
        )
        .await;
    assert_eq!(s, 200);
    let body = json!({"audio_url": aud["url"], "source_url": img["url"]});
    let (s, done) = c
        .check(
            "POST",
            GEN,
            http.post(srv.api("/generate-video")).json(&body),
        )
        .await;
    assert_eq!(s, 200);
    let mut async_body = body.clone();
    async_body["wait"] = json!(false);
    assert_eq!(
        c.check(
            "POST",
            GEN,
            http.post(srv.api("/generate-video")).json(&async_body)
        )
        .await
        .0,
        202
    );
    let id = done["id"].as_str().unwrap();
    assert_eq!(
        c.check(
            "GET",
            STATUS,
            http.get(srv.api(&format!("/talk-status/{id}")))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        c.check("GET", STATUS, http.get(srv.api("/talk-status/a.b")))
            .await
            .0,
        400
    );
    assert_eq!(
        c.check(
            "GET",
            STATUS,
            http.get(srv.api("/talk-status/tlk_nope000000"))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        c.check(
            "GET",
            "/api/d_id_optimized/stats",
            http.get(srv.api("/stats"))
        )
        .await
        .0,
        200
    );
    for p in ["/health", "/api/d_id_optimized/health"] {
        assert_eq!(c.check("GET", p, http.get(srv.url(p))).await.0, 200);
    }
    for p in ["/ready", "/api/d_id_optimized/ready"] {
        assert_eq!(c.check("GET", p, http.get(srv.url(p))).await.0, 200);
    }
    for p in ["/metrics", "/api/d_id_optimized/metrics"] {
        assert_eq!(c.check("GET", p, http.get(srv.url(p))).await.0, 200);
    }
    assert_eq!(
        c.check(
            "POST",
            "/api/d_id_optimized/cleanup-expired",
            http.post(srv.api("/cleanup-expired"))
        )
        .await
        .0,
        403
    );

    // Error shapes.
    assert_eq!(
        c.check(
            "POST",
            GEN,
            http.post(srv.api("/generate-video"))
                .header("content-type", "application/json")
                .body("{")
        )
        .await
        .0,
        400
    );
    assert_eq!(
        c.check(
            "POST",
            GEN,
            http.post(srv.api("/generate-video")).body("{}")
        )
        .await
        .0,
        415
    );
    assert_eq!(
        c.check(
            "POST",
            GEN,
            http.post(srv.api("/generate-video"))
                .json(&json!({"audio_url": 1}))
        )
        .await
        .0,
        422
    );
    let big = json!({"audio_url": "x".repeat(100_000)});
    assert_eq!(
        c.check(
            "POST",
            GEN,
            http.post(srv.api("/generate-video")).json(&big)
        )
        .await
        .0,
        413
    );
    assert_eq!(
        c.check(
            "POST",
            IMG,
            http.post(srv.api("/upload-source-image"))
                .multipart(file_form("a.wav", wav(), "audio/wav"))
        )
        .await
        .0,
        415
    );
    assert_eq!(
        c.check(
            "POST",
            AUD,
            http.post(srv.api("/upload-audio"))
                .multipart(reqwest::multipart::Form::new().text("priority", "low"))
        )
        .await
        .0,
        400
    );
    fake.set_faults(Faults {
        p_async_error: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        c.check(
            "POST",
            GEN,
            http.post(srv.api("/generate-video")).json(&body)
        )
        .await
        .0,
        502
    );
    srv.stop().await;

    // A service with a token: 401 and the admin call's 200.
    fake.set_faults(Faults::default());
    let srv = support::service(&fake, &[("HTTP_API_TOKEN", "t0k")]).await;
    assert_eq!(
        c.check(
            "GET",
            "/api/d_id_optimized/stats",
            http.get(srv.api("/stats"))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        c.check(
            "POST",
            "/api/d_id_optimized/cleanup-expired",
            http.post(srv.api("/cleanup-expired")).bearer_auth("t0k")
        )
        .await
        .0,
        200
    );
    srv.stop().await;
    fake.shutdown().await;

    // A service without a key: 503s.
    let srv = Server::start(
        http_api::wiring::build(&support::config(&[]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        c.check("GET", "/ready", http.get(srv.url("/ready")))
            .await
            .0,
        503
    );
    assert_eq!(
        c.check(
            "POST",
            GEN,
            http.post(srv.api("/generate-video")).json(&body)
        )
        .await
        .0,
        503
    );
    srv.stop().await;

    // Every documented operation was exercised.
    let mut documented = BTreeSet::new();
    for (path, item) in spec()["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let missing: Vec<_> = documented.difference(&c.seen).collect();
    assert!(
        missing.is_empty(),
        "documented but never exercised: {missing:?}"
    );
}
