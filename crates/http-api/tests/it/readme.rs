//! The README checked against the code. Its configuration table lists exactly the declared
//! settings (`http_api::config::SETTINGS`) with their defaults. Its curl examples run as
//! written against the service over did-fake: same paths, same JSON. Only the two ports are
//! adapted (the test picks free ones) and the servers are started by the test instead of the
//! "Terminal 1/2" lines. Every `# {...}` line after a command is its expected answer: each
//! key must be present, and each value without a "…" placeholder must be equal.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use http_api::config::SETTINGS;
use serde_json::Value;

use crate::support::service;

const README: &str = include_str!("../../../../README.md");

/// The rows of the README's configuration table: variable → (default cell, meaning cell).
fn configuration_table() -> BTreeMap<String, (String, String)> {
    let section = README
        .split("### Configuration\n")
        .nth(1)
        .and_then(|s| s.split("\n#").next())
        .expect("README has a Configuration section");
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let [variable, default, meaning @ ..] = cells.as_slice() else {
            panic!("a configuration row without a default: {line}");
        };
        let variable = variable.trim_matches('`').to_owned();
        let row = (default.to_string(), meaning.join(" | "));
        assert!(
            rows.insert(variable.clone(), row).is_none(),
            "{variable} is in the table twice"
        );
    }
    rows
}

/// The README's receiver example is the one `callback-sender`'s example compiles and runs.
#[test]
fn the_readme_callback_verification_is_the_compiled_example() {
    let example =
        include_str!("../../../callback-sender/examples/verify_callback.rs").replace("\r\n", "\n");
    let start = example
        .find("/// The event of a callback")
        .expect("the example's doc line");
    let end = start
        + example[start..]
            .find("\n}\n")
            .expect("the end of verify_callback")
        + 2;
    let function = &example[start..end];
    assert!(
        README.contains(function),
        "README.md's Callbacks section must show verify_callback as in \
         crates/callback-sender/examples/verify_callback.rs:\n{function}"
    );
}

#[test]
fn the_readme_configuration_table_lists_every_setting_with_its_default() {
    let table = configuration_table();
    let declared: BTreeMap<String, String> = SETTINGS
        .iter()
        .map(|s| {
            let default = s
                .default
                .map_or_else(|| "unset".to_owned(), |d| format!("`{d}`"));
            (s.env.to_owned(), default)
        })
        .collect();
    let mut problems = Vec::new();
    for (var, default) in &declared {
        match table.get(var) {
            None => problems.push(format!("{var} is declared but not in the README table")),
            Some((shown, _)) if shown != default => problems.push(format!(
                "{var}: the README says the default is {shown}, the declaration {default}"
            )),
            Some((_, meaning)) if meaning.is_empty() => {
                problems.push(format!("{var} has no meaning in the README table"))
            }
            Some(_) => {}
        }
    }
    for var in table.keys().filter(|v| !declared.contains_key(*v)) {
        problems.push(format!("{var} is in the README table but not declared"));
    }
    assert!(
        problems.is_empty(),
        "README.md's configuration table and http_api::config disagree:\n{}",
        problems.join("\n")
    );
}

/// One shell command of the example, with the answer the README shows for it, if any.
struct Step {
    command: String,
    expected: Option<String>,
}

/// The commands after "# Terminal 3" in the "Try it against did-fake" block.
fn steps() -> Vec<Step> {
    let section = README
        .split("### Try it against did-fake")
        .nth(1)
        .expect("README has the curl section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the section has a sh block");
    let mut steps: Vec<Step> = Vec::new();
    let mut pending = String::new();
    let mut started = false;
    for line in block.lines() {
        if line.starts_with("# Terminal 3") {
            started = true;
            continue;
        }
        if !started || line.trim().is_empty() {
            continue;
        }
        if let Some(json) = line.strip_prefix("# {") {
            let step = steps.last_mut().expect("an answer follows a command");
            step.expected = Some(format!("{{{json}"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        pending.push_str(line);
        if pending.ends_with('\\') {
            // A continued line: keep the backslash-newline for bash.
            pending.push('\n');
            continue;
        }
        steps.push(Step {
            command: std::mem::take(&mut pending),
            expected: None,
        });
    }
    steps
}

/// Every key of `expected` is in `actual`; scalar values without "…" are equal.
fn check_json(expected: &Value, actual: &Value, path: &str, problems: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, ev) in e {
                match a.get(key) {
                    None => problems.push(format!("{path}.{key} missing")),
                    Some(av) => check_json(ev, av, &format!("{path}.{key}"), problems),
                }
            }
        }
        (Value::String(e), _) if e.contains('…') => {}
        (e, a) if e != a => problems.push(format!("{path}: expected {e}, got {a}")),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_examples_work_as_documented() {
    let fake = did_fake::FakeDid::builder()
        .time_scale(0.01)
        .spawn()
        .await
        .expect("fake starts");
    let server = service(&fake, &[("HTTP_API_TOKEN", "s3cret")]).await;
    let fake_addr = fake.addr().to_string();
    let api_addr = server.addr.to_string();
    let adapt = |text: &str| {
        text.replace("127.0.0.1:55433", &api_addr)
            .replace("127.0.0.1:8099", &fake_addr)
    };

    let steps = steps();
    assert!(
        steps.len() >= 15,
        "expected the full example, got {} commands",
        steps.len()
    );
    let dir = std::env::temp_dir().join(format!("talkgate-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = String::from("set -euo pipefail\n");
    for (i, step) in steps.iter().enumerate() {
        let command = adapt(&step.command);
        if command.starts_with("curl ") {
            // A trailing comment would swallow the redirection.
            let command = command.split("  #").next().unwrap_or(&command);
            script.push_str(&format!("{command} > out-{i}.txt\n"));
        } else {
            script.push_str(&command);
            script.push('\n');
        }
    }
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || {
                Command::new("bash")
                    .arg("-c")
                    .arg(&script)
                    .current_dir(&dir)
                    .output()
                    .expect("bash runs")
            }
        }),
    )
    .await
    .expect("the README example finishes within 2 minutes")
    .unwrap();
    assert!(
        output.status.success(),
        "the README example failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut problems = Vec::new();
    let mut checked = 0;
    for (i, step) in steps.iter().enumerate() {
        let Some(expected) = &step.expected else {
            continue;
        };
        let expected: Value = serde_json::from_str(&adapt(expected))
            .unwrap_or_else(|e| panic!("README answer is not JSON ({e}): {expected}"));
        let actual_text = std::fs::read_to_string(dir.join(format!("out-{i}.txt"))).unwrap();
        let actual: Value = serde_json::from_str(&actual_text).unwrap_or_else(|e| {
            panic!(
                "answer to `{}` is not JSON ({e}): {actual_text}",
                step.command
            )
        });
        let before = problems.len();
        check_json(&expected, &actual, "", &mut problems);
        if problems.len() > before {
            problems.push(format!(
                "  in the answer to `{}`: {actual_text}",
                step.command
            ));
        }
        checked += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        checked >= 8,
        "only {checked} documented answers were checked"
    );
    assert!(
        problems.is_empty(),
        "README and service disagree:\n{}",
        problems.join("\n")
    );

    // Nothing is left holding a slot after the walk.
    let stats = server.limiter_stats().await;
    assert_eq!((stats.active, stats.queued.total()), (0, 0));
}
