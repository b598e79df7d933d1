//! `cargo xtask test`: the gate. Fast checks first, so a formatting slip fails in seconds.
//!
//! 1. `cargo fmt --check`
//! 2. the layering check (architecture invariant: `domain` and `ports` stay free of I/O)
//! 3. `cargo clippy --workspace --all-targets -- -D warnings`
//! 4. `cargo test --workspace` (Redis and end-to-end tests included; they start their own
//!    servers)
//! 5. `cargo xtask harness --quick` (`cargo run -p devtools -- harness --quick`): redis-server +
//!    did-fake with faults + 2 http-api processes
//! 6. `cargo doc --workspace --no-deps` with broken intra-doc links denied

use anyhow::{Result, bail};

use crate::{cargo, run_step};

/// Crates that do I/O (or are adapters). `domain` and `ports` must not depend on any of them
/// in a normal build with default features.
const IO_CRATES: &[&str] = &[
    "hyper",
    "hyper-util",
    "h2",
    "reqwest",
    "fred",
    "redis",
    "tokio",
    "mio",
    "multer",
    "socket2",
    "limiter-memory",
    "limiter-redis",
    "did-client",
    "did-fake",
    "http-api",
    "devtools",
    "rusqlite",
    "jobstore-memory",
    "jobstore-sqlite",
    "jobstore-redis",
];

/// Inner layers and what they may not reach, beyond [`IO_CRATES`] for the innermost two.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &["ports"]),
    ("ports", &[]),
    (
        "limiter-memory",
        &[
            "limiter-redis",
            "did-client",
            "did-fake",
            "http-api",
            "devtools",
        ],
    ),
    (
        "limiter-redis",
        &["did-client", "did-fake", "http-api", "devtools"],
    ),
    (
        "did-client",
        &["limiter-redis", "did-fake", "http-api", "devtools"],
    ),
    // The job stores: each on its own storage, none on another store or on the service.
    (
        "jobstore-memory",
        &[
            "tokio",
            "fred",
            "rusqlite",
            "limiter-redis",
            "did-client",
            "http-api",
            "devtools",
            "jobstore-sqlite",
            "jobstore-redis",
        ],
    ),
    (
        "jobstore-sqlite",
        &[
            "fred",
            "limiter-redis",
            "did-client",
            "did-fake",
            "http-api",
            "devtools",
            "jobstore-memory",
            "jobstore-redis",
        ],
    ),
    // `jobstore-redis → limiter-redis` is allowed: it connects with the limiter's settings
    // (`limiter_redis::client`), so both share one URL form, TLS and Cluster code.
    (
        "jobstore-redis",
        &[
            "rusqlite",
            "did-client",
            "did-fake",
            "http-api",
            "devtools",
            "jobstore-memory",
            "jobstore-sqlite",
        ],
    ),
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("`cargo xtask test` takes no arguments (got {extra:?})");
    }
    run_step("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
    layering()?;
    run_step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run_step("tests", cargo().args(["test", "--workspace"]))?;
    run_step(
        "harness (quick): multi-process run with faults, invariants checked",
        &mut crate::devtools_command("harness", &["--quick".to_owned()]),
    )?;
    run_step(
        "docs",
        cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D rustdoc::broken_intra_doc_links"),
    )?;
    eprintln!("\nxtask test: all checks passed");
    Ok(())
}

/// The forbidden dependencies of `krate` in `cargo tree --prefix none --format {p}` output.
fn forbidden_edges(krate: &str, extra: &[&str], tree: &str) -> Vec<String> {
    let innermost = matches!(krate, "domain" | "ports");
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| extra.contains(name) || (innermost && IO_CRATES.contains(name)))
        .map(|name| format!("{krate} depends on {name}"))
        .collect()
}

/// Fails if an inner crate depends (normal edges, default features) on a forbidden crate.
fn layering() -> Result<()> {
    eprintln!("\n==> layering: inner crates must not depend on I/O or outer crates");
    let mut violations = Vec::new();
    for &(krate, extra) in LAYERS {
        let out = cargo()
            .args([
                "tree", "--quiet", "-p", krate, "-e", "normal", "--prefix", "none", "--format",
                "{p}",
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        violations.extend(forbidden_edges(
            krate,
            extra,
            &String::from_utf8_lossy(&out.stdout),
        ));
    }
    if !violations.is_empty() {
        violations.sort();
        violations.dedup();
        bail!(
            "architecture invariant broken (see docs/ARCHITECTURE.md):\n  {}",
            violations.join("\n  ")
        );
    }
    eprintln!("layering: ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layering_flags_io_crates_in_inner_layers_only() {
        let tree = "ports v0.1.0 (/x)\nserde v1.0.0\ntokio v1.0.0\nhyper v1.0.0\n";
        assert_eq!(
            forbidden_edges("ports", &[], tree),
            ["ports depends on tokio", "ports depends on hyper"]
        );
        assert!(forbidden_edges("limiter-memory", &["http-api"], tree).is_empty());
        let tree = "did-client v0.1.0\nhttp-api v0.1.0\n";
        assert_eq!(
            forbidden_edges("did-client", &["http-api"], tree),
            ["did-client depends on http-api"]
        );
    }
}
