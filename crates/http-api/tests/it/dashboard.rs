//! The Grafana dashboard (`deploy/grafana/talkgate.json`) and the Prometheus alert rules
//! (`deploy/prometheus/talkgate-alerts.yml`) select only metrics the service exposes.
//!
//! The binary runs as an operator runs it (Redis limiter, tenants file with a budget, traces
//! exported to an in-process OTLP receiver, over did-fake), takes an upload, a generate and a
//! queued job so that every family has been written, and its `/metrics` is scraped. Every
//! PromQL expression of the dashboard's panels and template variables and of the rules is
//! parsed with a real PromQL parser (template variables substituted first), and each metric
//! name it selects must be in that exposition, as Prometheus stores it: a counter `x` as
//! `x_total`, a histogram `x` as `x_bucket`, `x_sum` and `x_count`. Prometheus's own `up` is
//! the one name allowed from outside. `promtool` checks the rules and runs their unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use promql_parser::label::{METRIC_NAME, MatchOp};
use promql_parser::parser::{self, Expr, VectorSelector};
use serde_json::{Value, json};
use test_support::http::{client, file_form, get_json, json as read_json};
use test_support::media;
use test_support::otlp::OtlpReceiver;
use test_support::redis::RedisServer;

use crate::support;
use crate::tenants::tenant;

/// Names a query may select that the service does not expose: series Prometheus writes.
const FROM_PROMETHEUS: &[&str] = &["up"];

/// Variables Grafana defines itself, with a value that parses where they are used (ranges).
const GRAFANA_RANGES: &[&str] = &["__rate_interval", "__interval", "__range"];

/// A file under the workspace's `deploy/`.
fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

/// One PromQL expression and where it was found (a panel, a variable, an alert).
#[derive(Debug)]
struct Query {
    place: String,
    expr: String,
}

/// `expr` with Grafana's variables replaced: the range variables by `5m`, the dashboard's own
/// (`$name`, `${name}`, `${name:format}`, `[[name]]`) by `.*`, which is what "All" sends. A
/// variable the dashboard does not define is an error.
fn substitute(expr: &str, vars: &BTreeSet<String>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find(['$', '[']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (name, len) = if let Some(inner) = tail.strip_prefix("${") {
            let end = inner.find('}').ok_or("an unclosed ${")?;
            let name = inner[..end].split(':').next().unwrap_or_default();
            (Some(name), end + 3)
        } else if let Some(inner) = tail.strip_prefix("[[") {
            let end = inner.find("]]").ok_or("an unclosed [[")?;
            (Some(&inner[..end]), end + 4)
        } else if let Some(inner) = tail.strip_prefix('$') {
            let end = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            (Some(&inner[..end]), end + 1)
        } else {
            (None, 1)
        };
        match name {
            None => out.push_str(&tail[..len]),
            Some(n) if GRAFANA_RANGES.contains(&n) => out.push_str("5m"),
            Some(n) if vars.contains(n) => out.push_str(".*"),
            Some(n) => return Err(format!("the variable ${n} is not defined")),
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The metric name a selector selects: its name, or an `__name__="…"` matcher.
fn selector_name(vs: &VectorSelector) -> Result<String, String> {
    if let Some(name) = &vs.name {
        return Ok(name.clone());
    }
    vs.matchers
        .matchers
        .iter()
        .find(|m| m.name == METRIC_NAME && matches!(m.op, MatchOp::Equal))
        .map(|m| m.value.clone())
        .ok_or_else(|| format!("the selector {vs} names no single metric"))
}

/// Every metric name `expr` selects.
fn collect(expr: &Expr, names: &mut BTreeSet<String>) -> Result<(), String> {
    match expr {
        Expr::VectorSelector(vs) => {
            names.insert(selector_name(vs)?);
        }
        Expr::MatrixSelector(ms) => {
            names.insert(selector_name(&ms.vs)?);
        }
        Expr::Aggregate(a) => {
            collect(&a.expr, names)?;
            if let Some(p) = &a.param {
                collect(p, names)?;
            }
        }
        Expr::Unary(u) => collect(&u.expr, names)?,
        Expr::Binary(b) => {
            collect(&b.lhs, names)?;
            collect(&b.rhs, names)?;
        }
        Expr::Paren(p) => collect(&p.expr, names)?,
        Expr::Subquery(s) => collect(&s.expr, names)?,
        Expr::Call(c) => {
            for arg in &c.args.args {
                collect(arg, names)?;
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
    Ok(())
}

/// The metric names `query` selects, once its variables are substituted and it parses.
fn selected(query: &Query, vars: &BTreeSet<String>) -> Result<BTreeSet<String>, String> {
    let text = substitute(&query.expr, vars)?;
    let expr = parser::parse(&text).map_err(|e| format!("does not parse ({e}): {text}"))?;
    let mut names = BTreeSet::new();
    collect(&expr, &mut names)?;
    Ok(names)
}

/// The series names an exposition offers, as Prometheus stores them: every sample's name,
/// and for a family without samples the names its `# TYPE` line stands for.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                // A counter's family name may already end in `_total` (the 0.0.4 format).
                if kind == "counter" && name.ends_with("_total") {
                    names.insert(name.to_owned());
                } else {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// What is wrong with `queries` against the exposition `text`: each name it does not offer
/// (with where it is selected) and each query that could not be read, one line each.
fn problems(queries: &[Query], vars: &BTreeSet<String>, text: &str) -> Vec<String> {
    let offered = exposed(text);
    let mut missing: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for q in queries {
        match selected(q, vars) {
            Ok(names) => {
                for name in names {
                    if !offered.contains(&name) && !FROM_PROMETHEUS.contains(&name.as_str()) {
                        missing.entry(name).or_default().push(&q.place);
                    }
                }
            }
            Err(e) => unreadable.push(format!("{}: {e}", q.place)),
        }
    }
    missing
        .into_iter()
        .map(|(name, places)| format!("{name} (selected by {})", places.join("; ")))
        .chain(unreadable)
        .collect()
}

/// The dashboard's template variables (checked: the Prometheus datasource variable,
/// `instance` and `tenant` from `label_values` queries) and every query it holds (panels,
/// rows' panels, query variables).
fn dashboard_queries(dash: &Value) -> (BTreeSet<String>, Vec<Query>) {
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 38),
        "schemaVersion must be 38 or more (Grafana 10/11): {}",
        dash["schemaVersion"]
    );
    let list = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let by_name: BTreeMap<&str, &Value> = list
        .iter()
        .map(|v| (v["name"].as_str().expect("a variable's name"), v))
        .collect();
    let ds = by_name.get("datasource").expect("a `datasource` variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&json!("datasource"), &json!("prometheus")),
        "{ds}"
    );
    let mut queries = Vec::new();
    for name in ["instance", "tenant"] {
        let var = by_name
            .get(name)
            .unwrap_or_else(|| panic!("a `{name}` variable"));
        assert_eq!(var["type"], "query", "{var}");
        assert_eq!(var["datasource"]["uid"], "${datasource}", "{var}");
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap_or_default();
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .filter(|(_, label)| label.trim() == name)
            .unwrap_or_else(|| panic!("`{name}` is label_values(<metric>, {name}): {query:?}"))
            .0;
        queries.push(Query {
            place: format!("variable {name}"),
            expr: selector.to_owned(),
        });
    }
    let mut ids = BTreeSet::new();
    let mut stack: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = stack.pop() {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "panel ids are unique: {title}"
        );
        if panel["type"] == "row" {
            stack.extend(panel["panels"].as_array().into_iter().flatten());
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            queries.push(Query {
                place: format!("panel {title:?} {}", t["refId"].as_str().unwrap_or("?")),
                expr: t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"))
                    .to_owned(),
            });
        }
    }
    let vars = by_name.keys().map(|n| (*n).to_owned()).collect();
    (vars, queries)
}

/// The rules' alert expressions, each alert checked for `for`, a severity, a summary and a
/// description.
fn rule_queries(rules: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("a group's rules") {
            let name = rule["alert"].as_str().expect("alert rules only");
            for field in [
                &rule["for"],
                &rule["labels"]["severity"],
                &rule["annotations"]["summary"],
                &rule["annotations"]["description"],
            ] {
                assert!(
                    field.as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: for, labels.severity, annotations.summary and .description: {rule:?}"
                );
            }
            queries.push(Query {
                place: format!("alert {name}"),
                expr: rule["expr"].as_str().expect("an alert's expr").to_owned(),
            });
        }
    }
    queries
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every query of the dashboard and the rules, with the dashboard's variables.
fn all_queries() -> (BTreeSet<String>, Vec<Query>) {
    let dash: Value = serde_json::from_str(&read(&deploy("grafana/talkgate.json")))
        .expect("the dashboard is JSON");
    let rules: Value = serde_norway::from_str(&read(&deploy("prometheus/talkgate-alerts.yml")))
        .expect("the rules are YAML");
    let (vars, mut queries) = dashboard_queries(&dash);
    let panels = queries.len();
    queries.extend(rule_queries(&rules));
    assert!(
        panels > 20 && queries.len() > panels,
        "{panels} dashboard queries"
    );
    (vars, queries)
}

#[test]
fn a_name_missing_from_the_exposition_is_reported_with_where_it_is_selected() {
    let text = "# HELP talkgate_jobs Jobs.\n# TYPE talkgate_jobs gauge\ntalkgate_jobs{status=\"done\"} 1\n\
                # TYPE talkgate_limiter_wait_seconds histogram\n\
                # TYPE talkgate_upstream_retries counter\ntalkgate_upstream_retries_total 0\n";
    let vars = BTreeSet::from(["instance".to_owned()]);
    let q = |place: &str, expr: &str| Query {
        place: place.to_owned(),
        expr: expr.to_owned(),
    };
    let queries = [
        q(
            "ok",
            "max by (status) (talkgate_jobs{instance=~\"$instance\"})",
        ),
        q(
            "histogram",
            "histogram_quantile(0.9, sum by (le) (rate(talkgate_limiter_wait_seconds_bucket[$__rate_interval])))",
        ),
        q(
            "counter",
            "rate(talkgate_upstream_retries_total[5m]) / rate({__name__=\"talkgate_upstream_retries_total\"}[5m])",
        ),
        q("up", "up{job=\"talkgate\"} == 0"),
        q("typo", "sum(talkgate_jobz{instance=~\"${instance}\"})"),
        q("bare histogram", "talkgate_limiter_wait_seconds"),
        q("bare counter", "rate(talkgate_upstream_retries[5m])"),
        q("undefined", "talkgate_jobs{tenant=~\"$tenant\"}"),
        q("broken", "sum(talkgate_jobs"),
    ];
    let found = problems(&queries, &vars, text);
    let missing: Vec<&str> = found
        .iter()
        .map(|p| p.split(" (").next().unwrap_or_default())
        .collect();
    assert_eq!(
        &missing[..3],
        [
            "talkgate_jobz",
            "talkgate_limiter_wait_seconds",
            "talkgate_upstream_retries"
        ],
        "{found:#?}"
    );
    assert!(found[0].ends_with("(selected by typo)"), "{found:#?}");
    assert!(
        found[3].starts_with("undefined: the variable $tenant"),
        "{found:#?}"
    );
    assert!(found[4].starts_with("broken: does not parse"), "{found:#?}");
    assert_eq!(found.len(), 5, "{found:#?}");
}

/// A talk of an audio the service did not upload.
fn talk(n: u32) -> Value {
    json!({
        "audio_url": format!("https://example.test/voice-{n}.wav"),
        "source_url": "https://example.test/face.jpg",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_select_is_exposed_by_a_live_service() {
    let (vars, queries) = all_queries();
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let otlp = OtlpReceiver::start().await;
    let fake = support::fake().await;
    let dir = support::TempDir::new("dashboard");
    let file = dir.file("tenants.toml");
    std::fs::write(
        &file,
        tenant(
            "web",
            "web-token",
            "budget = { credits = 100, period = \"day\" }\nmax_concurrent = 2",
        ),
    )
    .unwrap();
    let (base, url, endpoint) = (fake.base_url(), redis.url(), otlp.endpoint());
    let name = test_support::unique_name("http-api-it-dashboard");
    let binary = support::Binary::start(&[
        ("D_ID_BASE_URL", base.as_str()),
        ("D_ID_API_KEY", did_fake::DEFAULT_API_KEY),
        ("POLL_INTERVAL_SECS", "0.01"),
        ("TENANTS_FILE", file.as_str()),
        ("CREDITS_CHECK_SECS", "10"),
        ("REDIS_URL", url.as_str()),
        ("LIMITER_NAME", name.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // The adaptive limit's series exist in adaptive mode only.
        ("LIMIT_MODE", "adaptive"),
    ])
    .await;
    let api = |path: &str| format!("http://{}/api/d_id_optimized{path}", binary.addr);
    let http = client();
    let token = Some("web-token");

    let resp = http
        .post(api("/upload-audio"))
        .bearer_auth("web-token")
        .multipart(file_form("voice.wav", media::silent_wav(3.0), "audio/wav"))
        .send()
        .await
        .unwrap();
    let (status, body) = read_json(resp).await;
    assert_eq!(status, 200, "upload: {body}");
    let (status, body) =
        test_support::http::post_json(&http, api("/generate-video"), token, &talk(1)).await;
    assert_eq!(status, 200, "generate: {body}");
    let (status, job) = test_support::http::post_json(&http, api("/jobs"), token, &talk(2)).await;
    assert_eq!(status, 202, "job: {job}");
    let job_url = api(&format!("/jobs/{}", job["job_id"].as_str().unwrap()));
    let start = Instant::now();
    loop {
        let (_, job) = get_json(&http, &job_url, token).await;
        if job["status"] == "done" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "job: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Scraped until every name is there (the account's balance and the exporter's first
    // batch come a moment later), for at most 10 s.
    let metrics = format!("http://{}/metrics", binary.addr);
    let start = Instant::now();
    let (found, text) = loop {
        let text = http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let found = problems(&queries, &vars, &text);
        if found.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break (found, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = binary.kill().await;
    assert!(
        found.is_empty(),
        "{} name(s) the dashboard or the alerts select are not in the live /metrics:\n  {}\n\n\
         /metrics:\n{text}\nlog:\n{log}",
        found.len(),
        found.join("\n  "),
    );
}

/// `promtool` with `args` in `deploy/prometheus/`; fails (never skips) when it is missing.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool could not run ({e}): install it with apt-get install -y prometheus")
        });
    assert!(
        out.status.success(),
        "promtool {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", "talkgate-alerts.yml"]);
    promtool(&["test", "rules", "talkgate-alerts.test.yml"]);
}
