//! The `http-api` binary's command line, run as a user runs it: `--help`, `--version`, and
//! how bad flags and bad variables are reported.

use std::process::{Command, Output};

/// Runs the built binary with `args` and `env`, in an environment without talkgate's own
/// variables (so the developer's shell cannot change the outcome).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_http-api"));
    cmd.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    // No job file in the source tree (a test that starts the service would open one).
    cmd.env("JOB_STORE", "memory");
    cmd.envs(env.iter().copied());
    cmd.output().expect("the http-api binary runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn help_shows_every_default_and_the_log_and_secret_variables() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for needle in [
        "[default: 127.0.0.1:55433]",
        "[default: https://api.d-id.com]",
        "[default: 10]",
        "[default: 60]",
        "[default: 15]",
        "[default: 5]",
        "[default: 600]",
        "[default: human]",
        "[default: 30]",
        "[default: 65536]",
        "[default: d-id]",
        "RUST_LOG",
        "D_ID_API_KEY",
        "HTTP_API_TOKEN",
        "REDIS_URL",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = run(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let version = text(&out.stdout);
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {version:?}"
    );
}

#[test]
fn a_bad_flag_is_named_as_the_flag_with_exit_code_2_and_no_backtrace() {
    let out = run(
        &[
            "--max-concurrent-requests",
            "0",
            "--bind-addr",
            "127.0.0.1:0",
        ],
        &[("RUST_BACKTRACE", "1")],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--max-concurrent-requests"), "{err}");
    assert!(!err.contains("MAX_CONCURRENT_REQUESTS"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
    assert!(!err.contains("Stack"), "{err}");
    assert_eq!(err.lines().count(), 1, "one plain line: {err}");
}

#[test]
fn a_bad_variable_is_named_as_the_variable() {
    let out = run(
        &["--bind-addr", "127.0.0.1:0"],
        &[("MAX_CONCURRENT_REQUESTS", "zero"), ("RUST_BACKTRACE", "1")],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("MAX_CONCURRENT_REQUESTS"), "{err}");
    assert!(!err.contains("--max-concurrent-requests"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
}

/// Redis TLS settings reach the limiter: a CA file that cannot be read, TLS settings
/// without a Redis URL or with a plain `redis://` one each stop the start with a line that
/// says what is wrong (issue 12 item 2: "a clear start-up error when TLS is requested but
/// impossible"), instead of a service that runs degraded for ever.
#[test]
fn impossible_redis_tls_settings_stop_the_start_with_a_clear_line() {
    for (env, expected) in [
        (
            &[
                ("REDIS_URL", "rediss://127.0.0.1:1"),
                ("REDIS_TLS_CA_FILE", "/nonexistent/talkgate-ca.pem"),
            ][..],
            "/nonexistent/talkgate-ca.pem: cannot be read",
        ),
        (
            &[("REDIS_TLS_CA_FILE", "/nonexistent/talkgate-ca.pem")][..],
            "REDIS_TLS_* settings are set but REDIS_URL is not",
        ),
        (
            &[
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("REDIS_TLS_INSECURE_SKIP_VERIFY", "true"),
            ][..],
            "use a rediss:// url",
        ),
    ] {
        let mut env = env.to_vec();
        env.push(("BIND_ADDR", "127.0.0.1:0"));
        let out = run(&[], &env);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {err}");
        assert!(err.contains(expected), "{env:?}: {err}");
    }
    let out = run(
        &["--redis-tls-insecure-skip-verify", "maybe"],
        &[("BIND_ADDR", "127.0.0.1:0")],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not true or false"), "{err}");
}

#[test]
fn a_negative_number_as_its_own_argument_is_a_bad_value_reported_with_the_others() {
    for args in [
        &["--lease-ttl-secs", "-1", "--max-concurrent-requests", "0"][..],
        &["--lease-ttl-secs=-1", "--max-concurrent-requests=0"][..],
    ] {
        let out = run(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        for needle in [
            "--lease-ttl-secs: \"-1\"",
            "--max-concurrent-requests: \"0\"",
        ] {
            assert!(
                err.contains(needle),
                "{args:?}: {needle:?} missing from {err}"
            );
        }
    }
}
