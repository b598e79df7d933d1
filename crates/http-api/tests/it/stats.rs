//! The shape of `/stats` as a whole: one unit per kind (durations are `_ms` numbers, never
//! serde's `{"secs", "nanos"}`) and each fact at one place.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support;
use test_support::http::{client, file_form, get_json, post_form};
use test_support::media;

/// Suffixes that name a duration in a unit other than milliseconds.
const OTHER_UNITS: &[&str] = &[
    "_s",
    "_sec",
    "_secs",
    "_seconds",
    "_ns",
    "_nanos",
    "_us",
    "_micros",
    "_millis",
    "_milliseconds",
    "_min",
    "_mins",
    "_minutes",
    "_h",
    "_hours",
];

/// Words that name a duration and so need their unit spelled out (`base_delay_ms`, not
/// `base_delay`). Counters of such events are plural (`timeouts`) and do not end in these.
const DURATION_WORDS: &[&str] = &[
    "delay",
    "timeout",
    "deadline",
    "interval",
    "ttl",
    "retry_after",
    "duration",
    "elapsed",
];

/// Every `(path, key, value)` of the document, objects included.
fn walk<'a>(path: &str, v: &'a Value, out: &mut Vec<(String, &'a str, &'a Value)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{path}/{k}");
                out.push((p.clone(), k.as_str(), child));
                walk(&p, child, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(&format!("{path}/{i}"), child, out);
            }
        }
        _ => {}
    }
}

/// The problems of a `/stats` document, one line each (empty when it is right).
fn problems(stats: &Value) -> Vec<String> {
    let mut all = Vec::new();
    walk("", stats, &mut all);
    let mut found = Vec::new();
    let mut leaves: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (path, key, value) in &all {
        if let Value::Object(map) = value {
            if map.contains_key("secs") || map.contains_key("nanos") {
                found.push(format!("{path} is a serde Duration: {value}"));
            }
        } else if !path.contains("/responses/") {
            // Responses per status are a map keyed by status code, not named facts.
            leaves.entry(key).or_default().push(path.clone());
        }
        if let Some(unit) = OTHER_UNITS.iter().find(|u| key.ends_with(*u)) {
            found.push(format!("{path} is a duration in {unit}, not _ms"));
        }
        if DURATION_WORDS.iter().any(|w| key.ends_with(w)) {
            found.push(format!("{path} names a duration without its unit (_ms)"));
        }
        if key.ends_with("_ms") && !value.as_f64().is_some_and(|n| n >= 0.0) {
            found.push(format!("{path} is not a number of milliseconds: {value}"));
        }
    }
    for (key, paths) in leaves {
        if paths.len() > 1 {
            found.push(format!("{key} appears {} times: {paths:?}", paths.len()));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_has_one_unit_per_kind_and_each_fact_once() {
    let fake = support::fake().await;
    let srv = support::service(&fake, &[]).await;
    let http = client();
    // One upload, so the upstream counters and responses per status are filled in.
    let form = file_form("a.png", media::png(), "image/png");
    let (status, upload) = post_form(&http, srv.api("/upload-source-image"), None, form).await;
    assert_eq!(status, 200, "{upload}");

    let (status, stats) = get_json(&http, srv.api("/stats"), None).await;
    assert_eq!(status, 200, "{stats}");
    let found = problems(&stats);
    assert!(found.is_empty(), "{}\nin {stats:#}", found.join("\n"));

    // The facts the issue named, at the place that owns them now.
    assert_eq!(stats["client"]["api_key_configured"], true);
    assert_eq!(stats["client"]["upstream"]["retries"], 0);
    // The test support sets the retry waits to 5 ms and 20 ms; the rest are the defaults.
    let policy = &stats["client"]["upstream"]["retry_policy"];
    assert_eq!(policy["base_delay_ms"], 5, "{policy}");
    assert_eq!(policy["max_delay_ms"], 20, "{policy}");
    assert_eq!(policy["max_retry_after_ms"], 60_000, "{policy}");
    assert_eq!(
        stats["client"]["upstream"]["pool"]["connect_timeout_ms"],
        10_000
    );
    // Pacing is on and idle: nothing throttled yet, so nothing paced.
    let pacing = &stats["client"]["upstream"]["pacing"];
    assert_eq!(pacing["pacing_enabled"], true, "{pacing}");
    assert_eq!(pacing["paced"], false, "{pacing}");
    assert_eq!(pacing["rate_rps"], Value::Null, "{pacing}");
    assert_eq!(pacing["quiet_ms"], 30_000, "{pacing}");
    assert_eq!(stats["client"]["upstream"]["lookup_pages"], 0);
    srv.stop().await;
    fake.shutdown().await;
}

#[test]
fn the_checker_finds_each_kind_of_problem() {
    let bad = serde_json::json!({
        "client": {
            "api_key_configured": true,
            "retries": 0,
            "upstream": {
                "api_key_configured": true,
                "retries": 0,
                "base_delay": { "secs": 2, "nanos": 0 },
                "wait_secs": 3,
                "age_ms": "soon",
                "responses": { "201": 1 },
            },
        },
        "rate_limiter": { "waits": { "201": 2 } },
    });
    let found = problems(&bad);
    for needle in [
        "/client/upstream/base_delay is a serde Duration",
        "/client/upstream/base_delay names a duration without its unit",
        "/client/upstream/wait_secs is a duration in _secs",
        "/client/upstream/age_ms is not a number of milliseconds",
        "api_key_configured appears 2 times",
        "retries appears 2 times",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(needle)),
            "missing {needle:?} in {found:#?}"
        );
    }
    // Status codes under `responses` are a map, not facts: "201" elsewhere is still counted once.
    assert!(!found.iter().any(|f| f.starts_with("201")), "{found:#?}");
    assert!(problems(&serde_json::json!({"a": {"x_ms": 1}, "b": {"y_ms": 2.5}})).is_empty());
}
