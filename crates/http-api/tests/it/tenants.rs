//! Tenants end to end: a tenants file's callers each see only their own jobs and keys, a
//! priority above a tenant's ceiling is 403, admin routes are for admin tenants, `/stats`
//! and `/metrics` carry the tenant, and the binary reads the file again on `SIGHUP` while
//! requests keep being answered.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support;
use test_support::http::{client, get_json, send};

/// The SHA-256 of `token` in hex, as a tenants file names it.
pub fn sha(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `[[tenants]]` table for `name` with `token` and the extra `lines`.
pub fn tenant(name: &str, token: &str, lines: &str) -> String {
    format!(
        "[[tenants]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\n{lines}\n",
        sha(token)
    )
}

fn talk_body(n: u32, priority: &str) -> Value {
    json!({
        "audio_url": format!("https://example.test/voice-{n}.wav"),
        "source_url": format!("https://example.test/face-{n}.jpg"),
        "priority": priority,
    })
}

async fn post_job(
    srv: &support::Server,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value, bool) {
    let mut req = client()
        .post(srv.api("/jobs"))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req.send().await.unwrap();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let (status, v) = test_support::http::json(resp).await;
    (status, v, replayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_sees_only_its_own_jobs_keys_and_priorities() {
    support::init_logs();
    let dir = support::TempDir::new("tenants");
    let file = dir.file("tenants.toml");
    std::fs::write(
        &file,
        tenant(
            "acme",
            "acme-token",
            "weight = 3\nmax_priority = \"critical\"",
        ) + &tenant("beta", "beta-token", "max_concurrent = 2")
            + &tenant("ops", "ops-token", "admin = true"),
    )
    .unwrap();
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("TENANTS_FILE", file.as_str())]).await;
    let http = client();

    // Without a token, or with one nobody has: 401.
    let (status, v) = get_json(&http, srv.api("/jobs"), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = get_json(&http, srv.api("/jobs"), Some("acme-tokenX")).await;
    assert_eq!(status, 401);
    // The probes stay open.
    let (status, _) = get_json(&http, srv.url("/health"), None).await;
    assert_eq!(status, 200);

    // One key, two tenants: two jobs, neither a replay of the other.
    let body = talk_body(1, "normal");
    let (s1, a, replayed_a) = post_job(&srv, "acme-token", Some("k1"), &body).await;
    let (s2, b, replayed_b) = post_job(&srv, "beta-token", Some("k1"), &body).await;
    assert_eq!(
        (s1, s2, replayed_a, replayed_b),
        (202, 202, false, false),
        "{a} {b}"
    );
    let (a_id, b_id) = (a["job_id"].as_str().unwrap(), b["job_id"].as_str().unwrap());
    assert_ne!(a_id, b_id, "the same key of two tenants is two jobs");
    let (s3, again, replayed) = post_job(&srv, "acme-token", Some("k1"), &body).await;
    assert_eq!(
        (s3, replayed, again["job_id"].as_str()),
        (202, true, Some(a_id))
    );

    // Another tenant's job does not exist for the caller.
    for (token, id) in [("acme-token", b_id), ("beta-token", a_id)] {
        let (status, v) = get_json(&http, srv.api(&format!("/jobs/{id}")), Some(token)).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (404, Some("job_not_found")),
            "{v}"
        );
        let (status, _) = send(http.delete(srv.api(&format!("/jobs/{id}"))), Some(token)).await;
        assert_eq!(status, 404);
    }
    let (status, own) =
        get_json(&http, srv.api(&format!("/jobs/{a_id}")), Some("acme-token")).await;
    assert_eq!((status, own["job_id"].as_str()), (200, Some(a_id)));
    for (token, id) in [("acme-token", a_id), ("beta-token", b_id)] {
        let (status, page) = get_json(&http, srv.api("/jobs"), Some(token)).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<_> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].clone())
            .collect();
        assert_eq!(ids, [json!(id)], "{token} lists only its own job");
    }
    let (_, ops_page) = get_json(&http, srv.api("/jobs"), Some("ops-token")).await;
    assert_eq!(
        ops_page["jobs"],
        json!([]),
        "an admin lists its own jobs too"
    );

    // A priority above the tenant's ceiling: 403 before anything is queued; within it, fine.
    let (status, v, _) = post_job(&srv, "beta-token", None, &talk_body(2, "critical")).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("priority_not_allowed")),
        "{v}"
    );
    let (status, v) = send(
        http.post(srv.api("/generate-video"))
            .json(&talk_body(2, "critical")),
        Some("beta-token"),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("priority_not_allowed"))
    );
    let (status, v, _) = post_job(&srv, "acme-token", None, &talk_body(3, "critical")).await;
    assert_eq!(status, 202, "{v}");
    let (status, v, _) = post_job(&srv, "beta-token", None, &talk_body(4, "high")).await;
    assert_eq!(status, 202, "high is beta's ceiling (the default): {v}");

    // Admin routes are for admin tenants.
    let put = |token: &'static str| {
        send(
            http.put(srv.api("/limit"))
                .json(&json!({"max_concurrent": 7})),
            Some(token),
        )
    };
    let (status, v) = put("beta-token").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("admin_only"))
    );
    let (status, v) = put("ops-token").await;
    assert_eq!(
        (status, v["max_concurrent"].as_u64()),
        (200, Some(7)),
        "{v}"
    );

    // /stats: an admin sees every tenant; another tenant only itself.
    let (_, all) = get_json(&http, srv.api("/stats"), Some("ops-token")).await;
    let by = &all["tenants"]["by_tenant"];
    assert_eq!(by["acme"]["weight"], 3, "{all}");
    assert_eq!(by["beta"]["max_concurrent"], 2);
    assert_eq!(by["beta"]["max_priority"], "high");
    assert_eq!(all["tenants"]["reloads_refused"], 0);
    let (_, mine) = get_json(&http, srv.api("/stats"), Some("beta-token")).await;
    let names: Vec<_> = mine["tenants"]["by_tenant"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, ["beta"], "{mine}");
    assert!(mine["tenants"].get("reload_error").is_none());

    // /metrics: requests and limiter acquires by tenant.
    let metrics = srv.metrics().await;
    for series in [
        r#"talkgate_tenant_requests_total{tenant="acme",class="2xx"}"#,
        r#"talkgate_tenant_requests_total{tenant="beta",class="4xx"}"#,
        r#"talkgate_tenants_reloads_total{result="ok"} 0"#,
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    // Jobs end (the engine's calls take the tenant's share) and acquires count per tenant.
    for id in [a_id, b_id] {
        let token = if id == a_id {
            "acme-token"
        } else {
            "beta-token"
        };
        let start = Instant::now();
        loop {
            let (_, job) = get_json(&http, srv.api(&format!("/jobs/{id}")), Some(token)).await;
            if job["status"] == "done" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let metrics = srv.metrics().await;
    assert!(
        metrics
            .contains(r#"talkgate_tenant_limiter_acquires_total{tenant="acme",outcome="granted"}"#),
        "{metrics}"
    );
    // Every request's log line carries its tenant.
    let logs = support::logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("request finished") && l.contains(r#""tenant":"beta""#)),
        "no request line with tenant beta"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tenants_file_is_a_configuration_error_with_every_problem() {
    let dir = support::TempDir::new("tenants-bad");
    let file = dir.file("tenants.toml");
    std::fs::write(
        &file,
        "[[tenants]]\nname = \"a\"\ntoken_sha256 = \"plain\"\nweight = 500\nbudget = 3\n",
    )
    .unwrap();
    let mut map = std::collections::HashMap::new();
    map.insert("TENANTS_FILE".to_owned(), file.clone());
    let err = http_api::Config::from_source(&map).unwrap_err().to_string();
    for needle in [
        "TENANTS_FILE",
        "3 problems",
        "`weight`",
        "`budget`",
        "64 hex digits",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    assert!(
        !err.contains("plain"),
        "a token pasted in place of its hash is not echoed: {err}"
    );
    // HTTP_API_TOKEN's token inside the file is refused too.
    std::fs::write(&file, tenant("a", "shared", "")).unwrap();
    map.insert("HTTP_API_TOKEN".to_owned(), "shared".to_owned());
    let err = http_api::Config::from_source(&map).unwrap_err().to_string();
    assert!(err.contains("HTTP_API_TOKEN's token"), "{err}");
    // Missing file.
    map.insert("TENANTS_FILE".to_owned(), dir.file("nope.toml"));
    map.remove("HTTP_API_TOKEN");
    let err = http_api::Config::from_source(&map).unwrap_err().to_string();
    assert!(err.contains("cannot read"), "{err}");
}

/// The binary as an operator runs it: `SIGHUP` reads the file again while a caller keeps
/// sending requests (none fails); a bad file is refused, logged and shown, and the tenants
/// before it stay.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_tenants_file_again_without_dropping_requests() {
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    let dir = support::TempDir::new("tenants-hup");
    let file = dir.file("tenants.toml");
    std::fs::write(&file, tenant("one", "tok-1", "admin = true")).unwrap();
    let binary = support::Binary::start(&[("TENANTS_FILE", file.as_str())]).await;
    let addr = binary.addr.clone();
    let url = |path: &str| format!("http://{addr}/api/d_id_optimized{path}");
    let http = client();
    let (status, _) = get_json(&http, url("/jobs"), Some("tok-1")).await;
    assert_eq!(status, 200);
    let (status, _) = get_json(&http, url("/jobs"), Some("tok-2")).await;
    assert_eq!(status, 401, "tok-2 is nobody's yet");

    // A caller that keeps asking while the file is read again.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let load = {
        let (stop, answered, failed, u) =
            (stop.clone(), answered.clone(), failed.clone(), url("/jobs"));
        tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::SeqCst) {
                let (status, _) = get_json(&http, u.clone(), Some("tok-1")).await;
                answered.fetch_add(1, Ordering::SeqCst);
                if status != 200 {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    while answered.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &binary.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "SIGHUP sent");
    };
    std::fs::write(
        &file,
        tenant("one", "tok-1", "admin = true") + &tenant("two", "tok-2", ""),
    )
    .unwrap();
    hup();
    let start = Instant::now();
    loop {
        let (status, _) = get_json(&http, url("/jobs"), Some("tok-2")).await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tok-2 never accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A bad file: refused, the tenants stay, /stats says why.
    std::fs::write(&file, "[[tenants]]\nname = \"three\"\n").unwrap();
    hup();
    let start = Instant::now();
    let stats = loop {
        let (_, stats) = get_json(&http, url("/stats"), Some("tok-1")).await;
        if stats["tenants"]["reloads_refused"] == 1 {
            break stats;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        stats["tenants"]["reload_error"]
            .as_str()
            .unwrap()
            .contains("token_sha256"),
        "{stats}"
    );
    assert_eq!(stats["tenants"]["reloads_ok"], 1);
    let (status, _) = get_json(&http, url("/jobs"), Some("tok-2")).await;
    assert_eq!(status, 200, "the tenants before the bad file stay");
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let log = binary.kill().await;
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "a request failed during a reload"
    );
    assert!(log.contains("tenants file refused"), "{log}");
}

/// The README's tenants file example is a file the service takes, with what it says.
#[test]
fn the_readme_tenants_example_parses_as_documented() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = &readme[readme.find("### Tenants").expect("a Tenants section")..];
    let start = section.find("```toml\n").expect("a toml example") + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let file = http_api::tenants::TenantsFile::parse(std::path::Path::new("README"), text)
        .unwrap_or_else(|p| panic!("the README example is refused: {p:?}"));
    let tenants: Vec<_> = file.policies().collect();
    assert_eq!(tenants.len(), 2);
    assert_eq!(tenants[0].tenant.as_str(), "checkout");
    assert_eq!(
        (tenants[0].share.weight(), tenants[0].share.cap()),
        (3, Some(4))
    );
    assert!(tenants[0].admin);
    assert_eq!(tenants[1].max_priority, domain::Priority::Normal);
    // Its digests are those of the tokens "test" and "test2", as its comment shows how to make.
    assert!(text.contains(&sha("test")) && text.contains(&sha("test2")));
}

/// `HTTP_API_TOKEN`'s tenant is stored as `t:` and a digest of its token (its keys' scope),
/// but shows as `http_api_token` wherever anyone may look: the open `/metrics`, log lines,
/// `/stats`. A digest prefix there would let a scraper test token guesses offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_tenant_never_shows_its_digest() {
    support::init_logs();
    let fake = support::fake().await;
    let srv = support::service(&fake, &[("HTTP_API_TOKEN", "digest-me")]).await;
    let http = client();
    let (status, _) = get_json(&http, srv.api("/jobs"), Some("digest-me")).await;
    assert_eq!(status, 200);
    let (_, stats) = get_json(&http, srv.api("/stats"), Some("digest-me")).await;
    let names: Vec<_> = stats["tenants"]["by_tenant"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, ["http_api_token"], "{stats}");
    let metrics = srv.metrics().await;
    assert!(metrics.contains(r#"tenant="http_api_token""#), "{metrics}");
    let digest = &sha("digest-me")[..16];
    assert!(
        !metrics.contains(digest) && !metrics.contains(r#"tenant="t:"#),
        "{metrics}"
    );
    assert!(
        !support::logs().contains(digest),
        "the digest reached a log line"
    );
    srv.stop().await;
}
