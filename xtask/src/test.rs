//! `cargo xtask test`: the gate. Fast checks first, so a formatting slip fails in seconds.
//!
//! 1. `cargo fmt --check`
//! 2. the layering check (architecture invariant: `domain` and `ports` stay free of I/O)
//! 3. `cargo clippy --workspace --all-targets -- -D warnings`
//! 4. `cargo test --workspace` (Redis and end-to-end tests included; they start their own
//!    servers)
//! 5. `cargo xtask bench-report --sample` (`cargo run -p devtools -- bench-report --sample`):
//!    a report built in code, written by the bench's report writer, rendered in headless
//!    Chromium and checked (tables, plots, targets drawn; a screenshot); seconds, no bench run
//! 6. `cargo xtask harness --quick` (`cargo run -p devtools -- harness --quick`): redis-server +
//!    did-fake with faults + 2 http-api processes
//! 7. `cargo doc --workspace --no-deps` with broken intra-doc links denied

use anyhow::{Result, bail};

use task_cli::{cargo, run_step};

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
    "redis-connect",
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

/// Inner layers and what they may not reach, beyond [`IO_CRATES`] for the innermost three
/// (`app` may reach the runtime).
const LAYERS: &[(&str, &[&[&str]])] = &[
    ("domain", &[&["ports"]]),
    ("ports", &[]),
    // The use cases run on tokio, but reach no transport, server, store client or adapter
    // (the I/O crates but the runtime's, see `forbidden_edges`).
    ("app", &[]),
    ("limiter-memory", &[&["limiter-redis", "did-client"], OUTER]),
    ("limiter-redis", &[&["did-client"], OUTER]),
    ("did-client", &[&["limiter-redis"], OUTER]),
    // Callbacks to callers: reqwest, no store, no D-ID client, no limiter.
    (
        "callback-sender",
        &[
            &[
                "fred",
                "rusqlite",
                "limiter-memory",
                "limiter-redis",
                "did-client",
            ],
            OUTER,
        ],
    ),
    // The job stores: each on its own storage, none on another store or on the service.
    (
        "jobstore-memory",
        &[
            &["tokio", "fred", "rusqlite", "limiter-redis", "did-client"],
            &["jobstore-sqlite", "jobstore-redis"],
            OUTER,
        ],
    ),
    (
        "jobstore-sqlite",
        &[
            &["fred", "limiter-redis", "did-client"],
            &["jobstore-memory", "jobstore-redis"],
            OUTER,
        ],
    ),
    // It connects through `redis-connect` (as the limiter does), not through the limiter.
    (
        "jobstore-redis",
        &[
            &["limiter-redis", "rusqlite", "did-client"],
            &["jobstore-memory", "jobstore-sqlite"],
            OUTER,
        ],
    ),
];

/// The outer crates no adapter may reach: the fake, the service and the tools.
const OUTER: &[&str] = &["did-fake", "http-api", "devtools"];

/// The floors below the adapters: the domain, its ports and the use cases over them.
const CORE: &[&str] = &["app", "domain", "ports"];

/// The adapters, which only a composition root (the service, the tools) may put together.
const ADAPTERS: &[&str] = &[
    "limiter-memory",
    "limiter-redis",
    "did-client",
    "callback-sender",
    "jobstore-memory",
    "jobstore-sqlite",
    "jobstore-redis",
];

/// The allow-list: every workspace crate, and the workspace crates it may depend on directly
/// (normal edges), as groups. A crate that is not listed fails the check, so a new crate
/// states its place before it lands; an edge that is not listed fails it too.
const ALLOWED: &[(&str, &[&[&str]])] = &[
    ("domain", &[]),
    ("ports", &[&["domain"]]),
    // The use cases: over the ports only, never an adapter.
    ("app", &[&["domain", "ports"]]),
    ("limiter-memory", &[&["domain", "ports"]]),
    // The Redis connection code both Redis adapters use (URLs, TLS, clients, connect).
    ("redis-connect", &[&["ports"]]),
    (
        "limiter-redis",
        &[&["domain", "ports", "limiter-memory", "redis-connect"]],
    ),
    ("did-client", &[&["domain", "ports"]]),
    ("callback-sender", &[&["domain", "ports"]]),
    ("jobstore-memory", &[&["domain", "ports"]]),
    ("jobstore-sqlite", &[&["domain", "ports"]]),
    ("jobstore-redis", &[&["domain", "ports", "redis-connect"]]),
    ("did-fake", &[&["workspace-hack"]]),
    ("http-api", &[CORE, ADAPTERS, &["workspace-hack"]]),
    (
        "devtools",
        &[
            CORE,
            ADAPTERS,
            &["http-api", "test-support", "workspace-hack", "task-cli"],
        ],
    ),
    ("test-support", &[]),
    ("task-cli", &[]),
    ("workspace-hack", &[]),
    ("integration-tests", &[]),
    ("xtask", &[&["task-cli"]]),
];

/// The direct workspace dependencies of `krate` that [`ALLOWED`] does not list, from `cargo
/// tree -p krate -e normal --depth 1 --prefix none --format {p}` output (a workspace crate's
/// line carries its path in parentheses). `Err` if `krate` is not listed at all.
fn disallowed_edges(krate: &str, tree: &str) -> Result<Vec<String>, String> {
    let Some((_, allowed)) = ALLOWED.iter().find(|(name, _)| *name == krate) else {
        return Err(format!(
            "{krate} is not in the layering allow-list (xtask/src/test.rs ALLOWED): say which \
             workspace crates it may depend on"
        ));
    };
    Ok(tree
        .lines()
        .skip(1)
        .filter(|line| line.contains("(/"))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != krate && !allowed.iter().any(|group| group.contains(name)))
        .map(|name| format!("{krate} depends on {name}, which the allow-list does not let it"))
        .collect())
}

/// Runs `cargo tree` with `args`; its standard output.
fn tree(args: &[&str]) -> Result<String> {
    let out = cargo().arg("tree").arg("--quiet").args(args).output()?;
    if !out.status.success() {
        bail!(
            "cargo tree {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

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
        "bench report: a sample report rendered in headless Chromium",
        &mut crate::devtools_command("bench-report", &["--sample".to_owned()]),
    )?;
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
    // Which of IO_CRATES `krate` may reach: none for the innermost two, the runtime for the
    // use cases, all of them further out.
    let runtime_only: &[&str] = &["tokio", "mio", "socket2"];
    let io_allowed: Option<&[&str]> = match krate {
        "domain" | "ports" => Some(&[]),
        "app" => Some(runtime_only),
        _ => None,
    };
    let io_forbidden =
        |name: &str| io_allowed.is_some_and(|ok| IO_CRATES.contains(&name) && !ok.contains(&name));
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| extra.contains(name) || io_forbidden(name))
        .map(|name| format!("{krate} depends on {name}"))
        .collect()
}

/// Fails if an inner crate depends (normal edges, default features) on a forbidden crate.
fn layering() -> Result<()> {
    eprintln!("\n==> layering: inner crates must not depend on I/O or outer crates");
    let mut violations = Vec::new();
    for &(krate, groups) in LAYERS {
        let extra: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
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
            &extra,
            &String::from_utf8_lossy(&out.stdout),
        ));
    }
    // The allow-list, over every workspace member.
    let members = tree(&[
        "--workspace",
        "-e",
        "normal",
        "--depth",
        "0",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ])?;
    let mut names: Vec<&str> = members
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    names.sort_unstable();
    names.dedup();
    for krate in names {
        let direct = tree(&[
            "-p", krate, "-e", "normal", "--depth", "1", "--prefix", "none", "--format", "{p}",
        ])?;
        match disallowed_edges(krate, &direct) {
            Ok(edges) => violations.extend(edges),
            Err(unlisted) => violations.push(unlisted),
        }
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
        assert_eq!(
            forbidden_edges("app", &[], tree),
            ["app depends on hyper"],
            "the use cases may run on tokio, never on a transport"
        );
        let tree = "did-client v0.1.0\nhttp-api v0.1.0\n";
        assert_eq!(
            forbidden_edges("did-client", &["http-api"], tree),
            ["did-client depends on http-api"]
        );
    }

    #[test]
    fn the_allow_list_names_every_crate_and_flags_an_edge_it_does_not_list() {
        let tree = "ports v0.1.0 (/w/crates/ports)\ndomain v0.1.0 (/w/crates/domain)\n\
                    serde v1.0.0\nlimiter-redis v0.1.0 (/w/crates/limiter-redis)\n";
        assert_eq!(
            disallowed_edges("ports", tree).unwrap(),
            ["ports depends on limiter-redis, which the allow-list does not let it"]
        );
        let ok = "ports v0.1.0 (/w/crates/ports)\ndomain v0.1.0 (/w/crates/domain)\n";
        assert!(disallowed_edges("ports", ok).unwrap().is_empty());
        let err =
            disallowed_edges("webhooks", "webhooks v0.1.0 (/w/crates/webhooks)\n").unwrap_err();
        assert!(err.contains("not in the layering allow-list"), "{err}");
    }
}
