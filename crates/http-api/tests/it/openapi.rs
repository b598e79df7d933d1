//! `docs/openapi.yaml` is checked against real responses: every documented operation is
//! called, and each answer's status must be documented and its body must match the schema.
//!
//! The file stays whole although it is long: the spec walk and the strictness check share the
//! loaded schema and the server, and each operation's cases sit together.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use did_fake::Faults;
use serde_json::{Value, json};

use crate::support::{self, Server};
use test_support::{
    http::{client, file_form},
    media,
};

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
pub(crate) struct Checker {
    seen: BTreeSet<(String, String)>,
}

impl Checker {
    pub(crate) fn new() -> Checker {
        Checker {
            seen: BTreeSet::new(),
        }
    }

    /// Sends `req`, and checks status and body against the operation `method path`.
    pub(crate) async fn check(
        &mut self,
        method: &str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let resp = req.send().await.unwrap();
        self.check_response(method, path, resp).await
    }

    /// [`Checker::check`], asserting that the answer is `status`; returns the body.
    pub(crate) async fn expect(
        &mut self,
        status: u16,
        method: &str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Value {
        let (got, body) = self.check(method, path, req).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        body
    }

    /// Checks a response already received (when the test needs its headers too).
    pub(crate) async fn check_response(
        &mut self,
        method: &str,
        path: &str,
        resp: reqwest::Response,
    ) -> (u16, Value) {
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
    let srv = support::service(&fake, &[("CALLBACK_SECRET", support::CALLBACK_SECRET)]).await;
    let http = client();
    // The service's API routes, through the one client.
    let post = |path: &str| http.post(srv.api(path));
    let get = |path: &str| http.get(srv.api(path));
    let mut c = Checker::new();
    const GEN: &str = "/api/d_id_optimized/generate-video";
    const IMG: &str = "/api/d_id_optimized/upload-source-image";
    const AUD: &str = "/api/d_id_optimized/upload-audio";
    const STATUS: &str = "/api/d_id_optimized/talk-status/{talk_id}";
    const JOBS: &str = "/api/d_id_optimized/jobs";
    const JOB: &str = "/api/d_id_optimized/jobs/{job_id}";

    let img = c
        .expect(
            200,
            "POST",
            IMG,
            post("/upload-source-image").multipart(file_form("a.png", media::png(), "image/png")),
        )
        .await;
    let aud = c
        .expect(
            200,
            "POST",
            AUD,
            post("/upload-audio?priority=low").multipart(file_form(
                "a.wav",
                media::wav(),
                "audio/wav",
            )),
        )
        .await;
    let body = json!({"audio_url": aud["url"], "source_url": img["url"]});
    let done = c
        .expect(200, "POST", GEN, post("/generate-video").json(&body))
        .await;
    let mut async_body = body.clone();
    async_body["wait"] = json!(false);
    c.expect(202, "POST", GEN, post("/generate-video").json(&async_body))
        .await;
    // A keyed generate and its replay (the same job, `Idempotent-Replayed: true`).
    let keyed = || post("/generate-video").header("Idempotency-Key", "gen-1");
    let first = c.expect(200, "POST", GEN, keyed().json(&body)).await;
    let resp = keyed().json(&body).send().await.unwrap();
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    let (status, again) = c.check_response("POST", GEN, resp).await;
    assert_eq!(
        (status, &again["job_id"]),
        (200, &first["job_id"]),
        "{again}"
    );

    // The jobs routes: a job queued, followed to its end, listed.
    let mut job_body = body.clone();
    job_body["callback_url"] = json!("https://hooks.example.test/done");
    let keyed = || post("/jobs").header("Idempotency-Key", "\"job-1\"");
    let job = c.expect(202, "POST", JOBS, keyed().json(&job_body)).await;
    let resp = keyed().json(&job_body).send().await.unwrap();
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    let (status, again) = c.check_response("POST", JOBS, resp).await;
    assert_eq!((status, &again["job_id"]), (202, &job["job_id"]), "{again}");
    let job_id = job["job_id"].as_str().unwrap();
    let job_path = format!("/jobs/{job_id}");
    let finished = {
        let start = std::time::Instant::now();
        loop {
            let v = c.expect(200, "GET", JOB, get(&job_path)).await;
            if matches!(v["status"].as_str(), Some("done" | "failed")) {
                break v;
            }
            assert!(start.elapsed().as_secs() < 20, "never finished: {v}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    assert_eq!(finished["status"], "done", "{finished}");
    c.expect(400, "GET", JOB, get("/jobs/..%2Fx")).await;
    c.expect(404, "GET", JOB, get("/jobs/job_0000000000000000000000"))
        .await;
    c.expect(
        404,
        "DELETE",
        JOB,
        http.delete(srv.api("/jobs/job_0000000000000000000000")),
    )
    .await;
    c.expect(409, "DELETE", JOB, http.delete(srv.api(&job_path)))
        .await;
    c.expect(200, "GET", JOBS, get("/jobs?limit=2")).await;
    c.expect(200, "GET", JOBS, get("/jobs?status=done")).await;
    c.expect(400, "GET", JOBS, get("/jobs?status=DONE")).await;
    c.expect(400, "GET", JOBS, get("/jobs?cursor=nope")).await;
    c.expect(
        400,
        "POST",
        JOBS,
        post("/jobs").header("Idempotency-Key", "a b").json(&body),
    )
    .await;
    let mut other = job_body.clone();
    other["priority"] = json!("high");
    let reused = c
        .expect(
            422,
            "POST",
            JOBS,
            post("/jobs")
                .header("Idempotency-Key", "job-1")
                .json(&other),
        )
        .await;
    assert_eq!(reused["error"]["job_id"], job["job_id"]);
    let mut bad_callback = body.clone();
    bad_callback["callback_url"] = json!("ftp://x.test/");
    c.expect(422, "POST", JOBS, post("/jobs").json(&bad_callback))
        .await;
    c.expect(415, "POST", JOBS, post("/jobs").body("{}")).await;
    // D-ID's webhook route: without PUBLIC_BASE_URL no job has a token, so every receipt is
    // the 404 of an unknown job (its 202 and 200 are in `talk_webhooks`).
    c.expect(
        404,
        "POST",
        "/api/d_id_optimized/talk-webhooks/{job_id}",
        post(&format!("/talk-webhooks/{job_id}?token=guess")).json(&json!({"status": "done"})),
    )
    .await;
    let id = done["id"].as_str().unwrap();
    c.expect(200, "GET", STATUS, get(&format!("/talk-status/{id}")))
        .await;
    c.expect(400, "GET", STATUS, get("/talk-status/a.b")).await;
    c.expect(404, "GET", STATUS, get("/talk-status/tlk_nope000000"))
        .await;
    c.expect(200, "GET", "/api/d_id_optimized/stats", get("/stats"))
        .await;
    for p in [
        "/health",
        "/api/d_id_optimized/health",
        "/ready",
        "/api/d_id_optimized/ready",
        "/metrics",
        "/api/d_id_optimized/metrics",
    ] {
        c.expect(200, "GET", p, http.get(srv.url(p))).await;
    }
    c.expect(
        403,
        "POST",
        "/api/d_id_optimized/cleanup-expired",
        post("/cleanup-expired"),
    )
    .await;
    c.expect(200, "GET", "/api/d_id_optimized/limit", get("/limit"))
        .await;
    c.expect(
        403,
        "PUT",
        "/api/d_id_optimized/limit",
        http.put(srv.api("/limit"))
            .json(&json!({"max_concurrent": 3})),
    )
    .await;

    // Error shapes.
    c.expect(
        400,
        "POST",
        GEN,
        post("/generate-video")
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    c.expect(415, "POST", GEN, post("/generate-video").body("{}"))
        .await;
    c.expect(
        422,
        "POST",
        GEN,
        post("/generate-video").json(&json!({"audio_url": 1})),
    )
    .await;
    let big = json!({"audio_url": "x".repeat(100_000)});
    c.expect(413, "POST", GEN, post("/generate-video").json(&big))
        .await;
    c.expect(
        415,
        "POST",
        IMG,
        post("/upload-source-image").multipart(file_form("a.wav", media::wav(), "audio/wav")),
    )
    .await;
    c.expect(
        400,
        "POST",
        AUD,
        post("/upload-audio").multipart(reqwest::multipart::Form::new().text("priority", "low")),
    )
    .await;
    fake.set_faults(Faults {
        p_async_error: 1.0,
        ..Faults::default()
    });
    c.expect(502, "POST", GEN, post("/generate-video").json(&body))
        .await;
    let page = c.expect(200, "GET", JOBS, get("/jobs?status=failed")).await;
    assert_eq!(page["jobs"][0]["error"]["code"], "talk_failed", "{page}");
    c.expect(200, "GET", JOBS, get("/jobs")).await;
    srv.stop().await;

    // A queued job is cancelled; a full queue is 429. One worker, one slot, held here.
    fake.set_faults(Faults::default());
    let srv = support::service(
        &fake,
        &[
            ("MAX_CONCURRENT_REQUESTS", "1"),
            ("JOB_WORKERS", "1"),
            ("JOB_QUEUE_MAX", "1"),
            ("LIMITER_WAIT_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let post = |path: &str| http.post(srv.api(path));
    let get = |path: &str| http.get(srv.api(path));
    let permit = srv
        .state
        .limiter()
        .acquire(
            &domain::Priority::Critical.into(),
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap();
    let creating = c.expect(202, "POST", JOBS, post("/jobs").json(&body)).await;
    let creating_path = format!("/jobs/{}", creating["job_id"].as_str().unwrap());
    let start = std::time::Instant::now();
    while c.expect(200, "GET", JOB, get(&creating_path)).await["status"] != "creating" {
        assert!(start.elapsed().as_secs() < 20, "never claimed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let queued = c.expect(202, "POST", JOBS, post("/jobs").json(&body)).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    c.expect(429, "POST", JOBS, post("/jobs").json(&body)).await;
    let queued_path = format!("/jobs/{}", queued["job_id"].as_str().unwrap());
    for _ in 0..2 {
        let v = c
            .expect(200, "DELETE", JOB, http.delete(srv.api(&queued_path)))
            .await;
        assert_eq!(v["status"], "cancelled", "{v}");
    }
    let refused = c
        .expect(409, "DELETE", JOB, http.delete(srv.api(&creating_path)))
        .await;
    assert_eq!(refused["error"]["status"], "creating", "{refused}");
    drop(permit);
    srv.stop().await;

    // A service with a token: 401 and the admin call's 200.
    fake.set_faults(Faults::default());
    let srv = support::service(&fake, &[("HTTP_API_TOKEN", "t0k")]).await;
    let post = |path: &str| http.post(srv.api(path));
    let get = |path: &str| http.get(srv.api(path));
    c.expect(401, "GET", "/api/d_id_optimized/stats", get("/stats"))
        .await;
    c.expect(
        200,
        "POST",
        "/api/d_id_optimized/cleanup-expired",
        post("/cleanup-expired").bearer_auth("t0k"),
    )
    .await;
    let put = |body: Value| http.put(srv.api("/limit")).bearer_auth("t0k").json(&body);
    let set = c
        .expect(
            200,
            "PUT",
            "/api/d_id_optimized/limit",
            put(json!({"max_concurrent": 7})),
        )
        .await;
    assert_eq!(set["max_concurrent"], 7, "{set}");
    c.expect(
        422,
        "PUT",
        "/api/d_id_optimized/limit",
        put(json!({"max_concurrent": 0})),
    )
    .await;
    c.expect(
        422,
        "PUT",
        "/api/d_id_optimized/limit",
        put(json!({"max_concurrent": 7, "extra": 1})),
    )
    .await;
    c.expect(
        401,
        "PUT",
        "/api/d_id_optimized/limit",
        http.put(srv.api("/limit"))
            .json(&json!({"max_concurrent": 7})),
    )
    .await;
    srv.stop().await;
    fake.shutdown().await;

    // A service without a key: 503s.
    let srv = Server::start(
        http_api::wiring::build(&support::config(&[]))
            .await
            .unwrap(),
    )
    .await;
    let post = |path: &str| http.post(srv.api(path));
    c.expect(503, "GET", "/ready", http.get(srv.url("/ready")))
        .await;
    c.expect(503, "POST", GEN, post("/generate-video").json(&body))
        .await;
    c.expect(503, "POST", JOBS, post("/jobs").json(&body)).await;
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

/// Whether `instance` is valid under `schema` (which may `$ref` the spec's components).
fn valid_under(schema: &Value, instance: &Value) -> bool {
    let root = json!({ "allOf": [schema], "components": spec()["components"] });
    jsonschema::validator_for(&root)
        .expect("schema compiles")
        .is_valid(instance)
}

/// A query value as a generated client would send it: a number when it reads as one.
fn query_value(raw: &str) -> Value {
    serde_json::from_str::<serde_json::Number>(raw)
        .map(Value::Number)
        .unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// The spec must be exactly as strict as the server on the inputs it can express: a request
/// the server refuses as invalid (400/422) must be invalid under the documented schema, and
/// one it accepts must be valid. A spec looser than the server (schemathesis: "valid data
/// rejected") or stricter (an accepted request the spec forbids) fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_schemas_are_as_strict_as_the_server() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("HTTP_API_TOKEN", "t0k")]).await;
    let http = client();
    let op = |path: &str| &spec()["paths"][path]["post"];
    let gen_schema = op("/api/d_id_optimized/generate-video")
        .pointer("/requestBody/content/application~1json/schema")
        .unwrap()
        .clone();

    let img = "https://x.test/face.jpg";
    let wav = "https://x.test/a.wav";
    let bodies = [
        json!({"audio_url": wav, "source_url": img}),
        json!({"audio_url": "https://X.test/dir/A.WAV?sig=1#t", "source_url": "s3://d-id-images-prod/auth0|1/img_1/face.PNG"}),
        json!({"audio_url": "HTTPS://x.test/a.wav", "source_url": img}),
        json!({"audio_url": "https://x.test/a.Wav", "source_url": img}),
        json!({"audio_url": "https://x.test/a.wav?x=a|b", "source_url": img}),
        json!({"audio_url": wav, "source_url": img, "priority": "HIGH"}),
        json!({"audio_url": "", "source_url": img}),
        json!({"audio_url": wav, "source_url": ""}),
        json!({"audio_url": "https:///a.wav", "source_url": img}),
        json!({"audio_url": "https://user:pw@x.test/a.wav", "source_url": img}),
        json!({"audio_url": "https://x.test/a.txt?x=.wav", "source_url": img}),
        json!({"audio_url": "https://x.test/a b.wav", "source_url": img}),
        json!({"audio_url": "http://x.test/a.wav", "source_url": img}),
        json!({"audio_url": wav, "source_url": "https://x.test/face.gif"}),
        json!({"audio_url": "https://x.test/.wav", "source_url": img}),
        json!({"audio_url": wav, "source_url": img, "priority": " high "}),
        json!({"audio_url": wav, "source_url": img, "priority": "urgent"}),
        json!({"audio_url": wav, "source_url": img, "config": {"pad_audio": 61}}),
    ];
    for mut body in bodies {
        let valid = valid_under(&gen_schema, &body);
        body["wait"] = json!(false);
        let resp = http
            .post(srv.api("/generate-video"))
            .bearer_auth("t0k")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!(
            matches!(status, 202 | 400 | 422),
            "{body}: unexpected {status} {text}"
        );
        assert_eq!(
            valid,
            status == 202,
            "{body}: the server answered {status} but the spec calls it {} ({text})",
            if valid { "valid" } else { "invalid" }
        );
    }

    let cleanup = op("/api/d_id_optimized/cleanup-expired");
    let max_age = cleanup["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "max_age_seconds")
        .unwrap()["schema"]
        .clone();
    for raw in ["3600", "0", "1.5", "null", "abc", "-1", ""] {
        let valid = raw.is_empty() || valid_under(&max_age, &query_value(raw));
        let url = if raw.is_empty() {
            srv.api("/cleanup-expired")
        } else {
            srv.api(&format!("/cleanup-expired?max_age_seconds={raw}"))
        };
        let status = http
            .post(url)
            .bearer_auth("t0k")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(
            cleanup["responses"][status.to_string()].is_object(),
            "max_age_seconds={raw}: {status} is not documented"
        );
        assert_eq!(valid, status == 200, "max_age_seconds={raw}: {status}");
    }

    let list = &spec()["paths"]["/api/d_id_optimized/jobs"]["get"];
    let param = |name: &str| {
        let p = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        resolve(&p["schema"]).clone()
    };
    for (name, raw) in [
        ("limit", "1"),
        ("limit", "100"),
        ("limit", "20"),
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "-1"),
        ("limit", "abc"),
        ("status", "queued"),
        ("status", "cancelled"),
        ("status", "DONE"),
        ("status", "running"),
    ] {
        let valid = valid_under(&param(name), &query_value(raw));
        let status = http
            .get(srv.api(&format!("/jobs?{name}={raw}")))
            .bearer_auth("t0k")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(
            list["responses"][status.to_string()].is_object(),
            "{name}={raw}: {status} is not documented"
        );
        assert_eq!(valid, status == 200, "{name}={raw}: {status}");
    }

    let key_schema =
        resolve(&spec()["components"]["parameters"]["IdempotencyKey"])["schema"].clone();
    let long = "k".repeat(255);
    let too_long = "k".repeat(256);
    let quoted = format!("\"{}\"", "q".repeat(255));
    for (n, key) in [
        "order-7",
        "\"order-8\"",
        "!#$%&'()*+,-./:;<=>?@[]^_`{|}~",
        long.as_str(),
        quoted.as_str(),
        "",
        "\"\"",
        "a b",
        "a\"b",
        "\"ab",
        too_long.as_str(),
    ]
    .into_iter()
    .enumerate()
    {
        let valid = valid_under(&key_schema, &json!(key));
        let body = json!({
            "audio_url": format!("https://x.test/a-{n}.wav"),
            "source_url": img,
        });
        let status = http
            .post(srv.api("/jobs"))
            .bearer_auth("t0k")
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(
            matches!(status, 202 | 400),
            "Idempotency-Key {key:?}: unexpected {status}"
        );
        assert_eq!(valid, status == 202, "Idempotency-Key {key:?}: {status}");
    }

    let priority = resolve(&spec()["components"]["parameters"]["priority"])["schema"].clone();
    let priority = resolve(&priority).clone();
    for (raw, sent) in [
        ("HIGH", "HIGH"),
        ("low", "low"),
        (" high ", "%20high%20"),
        ("high\u{a0}", "high%C2%A0"),
        ("urgent", "urgent"),
    ] {
        let valid = valid_under(&priority, &json!(raw));
        let resp = http
            .post(srv.api(&format!("/upload-source-image?priority={sent}")))
            .bearer_auth("t0k")
            .multipart(file_form("a.png", media::png(), "image/png"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(valid, status == 200, "priority={raw:?}: {status}");
    }
    srv.stop().await;
    fake.shutdown().await;
}
