//! `cargo xtask bench-report [--dir PATH] [--sample]`: checks that the bench report's
//! `index.html` renders, in headless Chromium, and saves `screenshot.png` beside it.
//!
//! Two Chromium runs, each with a new empty profile and bounded in time:
//!
//! 1. `--dump-dom` after the page's own script has counted the tables, plots, sections and
//!    targets that rendered with a size (`<body data-rendered>`, written by `html`); every
//!    count must equal what `report.json` of the same run lists;
//! 2. `--screenshot` at 1280 pixels wide and the page's height: the PNG must exist, carry the
//!    PNG signature and the size asked for.
//!
//! `--sample` writes a report built in code (every kind of element, two real plots) with the
//! real writer into a new temporary directory first: the gate runs it, since a bench run
//! takes minutes.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
#[cfg(test)]
use serde_json::json;

use super::report::{Plot, Report, Section, Table};
use crate::procs;

/// The longest one Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// How long Chromium's virtual clock may run before it dumps the DOM (the page loads nothing,
/// so this is only an upper bound on its own work).
const VIRTUAL_TIME_BUDGET_MS: u32 = 5_000;

/// The screenshot's width; its height is the page's, within these bounds.
const SHOT_WIDTH: u32 = 1280;
const SHOT_MIN_HEIGHT: u32 = 600;
const SHOT_MAX_HEIGHT: u32 = 16_000;

/// What a rendered page shows, or what its report says it must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) sections: usize,
    /// The targets table and every section's tables.
    pub(crate) tables: usize,
    pub(crate) plots: usize,
    pub(crate) targets: usize,
}

impl Counts {
    /// What the page of `report.json`'s run must show.
    pub(crate) fn from_json(report: &Value) -> Result<Counts> {
        let scenarios = report["scenarios"]
            .as_array()
            .context("report.json has no scenarios list")?;
        let len = |s: &Value, key: &str| {
            s[key].as_array().map(Vec::len).with_context(|| {
                format!(
                    "scenario {} in report.json has no {key} list (a report from before \
                     index.html? run `cargo xtask bench` again)",
                    s["scenario"]
                )
            })
        };
        let mut counts = Counts {
            sections: scenarios.len(),
            tables: 1,
            plots: 0,
            targets: 0,
        };
        for s in scenarios {
            counts.tables += len(s, "tables")?;
            counts.plots += len(s, "plots")?;
            counts.targets += len(s, "targets")?;
        }
        Ok(counts)
    }
}

/// The page's own count of what rendered: visible (with a size) and present, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rendered {
    visible: Counts,
    present: Counts,
    height: u32,
}

/// Reads `data-rendered="tables=5/5 plots=2/2 sections=3/3 targets=4/4 height=3000"` out of
/// the DOM Chromium dumped.
fn parse_rendered(dom: &str) -> Result<Rendered> {
    let key = "data-rendered=\"";
    let start = dom.find(key).context(
        "the page's script left no data-rendered attribute on <body> (did the script run?)",
    )? + key.len();
    let value = &dom[start..start + dom[start..].find('"').context("unterminated attribute")?];
    let mut visible = Counts {
        sections: 0,
        tables: 0,
        plots: 0,
        targets: 0,
    };
    let mut present = visible;
    let mut height = None;
    for field in value.split_whitespace() {
        let (name, n) = field
            .split_once('=')
            .with_context(|| format!("bad field {field:?} in data-rendered={value:?}"))?;
        if name == "height" {
            height = Some(n.parse().with_context(|| format!("bad height {n:?}"))?);
            continue;
        }
        let (v, p) = n
            .split_once('/')
            .and_then(|(v, p)| Some((v.parse().ok()?, p.parse().ok()?)))
            .with_context(|| format!("bad count {field:?} in data-rendered={value:?}"))?;
        let (vis, pre) = match name {
            "tables" => (&mut visible.tables, &mut present.tables),
            "plots" => (&mut visible.plots, &mut present.plots),
            "sections" => (&mut visible.sections, &mut present.sections),
            "targets" => (&mut visible.targets, &mut present.targets),
            other => bail!("unknown count {other:?} in data-rendered={value:?}"),
        };
        (*vis, *pre) = (v, p);
    }
    Ok(Rendered {
        visible,
        present,
        height: height.with_context(|| format!("no height in data-rendered={value:?}"))?,
    })
}

/// Every way `got` differs from `want`, as sentences; empty when the page rendered.
fn mismatches(want: Counts, got: &Rendered) -> Vec<String> {
    let rows = [
        (
            "sections",
            want.sections,
            got.present.sections,
            got.visible.sections,
        ),
        (
            "tables",
            want.tables,
            got.present.tables,
            got.visible.tables,
        ),
        ("plots", want.plots, got.present.plots, got.visible.plots),
        (
            "targets",
            want.targets,
            got.present.targets,
            got.visible.targets,
        ),
    ];
    let mut out = Vec::new();
    for (name, want, present, visible) in rows {
        if present != want {
            out.push(format!("{name}: the report has {want}, the page {present}"));
        } else if visible != want {
            out.push(format!(
                "{name}: {} of {want} rendered without a size",
                want - visible
            ));
        }
    }
    out
}

/// The width and height in a PNG's header, or why `bytes` are not a PNG.
fn png_size(bytes: &[u8]) -> Result<(u32, u32)> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    if bytes.len() < 24 || bytes[..8] != SIGNATURE {
        bail!("not a PNG (no PNG signature)");
    }
    if &bytes[12..16] != b"IHDR" {
        bail!("a PNG without an IHDR chunk first");
    }
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Ok((be(16), be(20)))
}

/// The `chromium` on PATH (Debian's package puts it in `/usr/bin`).
fn chromium() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .context(
            "chromium not found (the bench report's render check opens the page in headless \
             Chromium): install it with `apt-get install -y chromium`",
        )
}

/// A new directory of its own under the system's temporary directory, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "talkgate-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // `create_dir`, not `create_dir_all`: the directory must be new (and so empty).
        std::fs::create_dir(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Keeps the directory (for a look after a failure).
    fn keep(self) -> PathBuf {
        let dir = self.0.clone();
        std::mem::forget(self);
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `file://` URL of an absolute path, percent-encoding all but unreserved characters and `/`.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                url.push(char::from(*b));
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url
}

/// Runs headless Chromium on `url` with `extra` flags, a new empty profile in `work`, its
/// standard output to `stdout`; kills it (its whole process group) after [`CHROMIUM_TIMEOUT`].
fn run_chromium(
    exe: &Path,
    work: &TempDir,
    extra: &[String],
    url: &str,
    stdout: &Path,
) -> Result<()> {
    let profile = TempDir::new("chromium-profile")?;
    let stderr_path = work.path().join("chromium-stderr.log");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--mute-audio",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(File::create(stdout)?)
    .stderr(File::create(&stderr_path)?)
    // Its own process group, so a timeout kills the renderer and helper processes too.
    .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", exe.display()))?;
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // The leader is still alive, so its process group id is still ours.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "chromium did not finish within {} s and was killed{}",
                CHROMIUM_TIMEOUT.as_secs(),
                stderr_tail(&stderr_path)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        bail!("chromium failed ({status}){}", stderr_tail(&stderr_path));
    }
    Ok(())
}

/// The last lines of Chromium's standard error, to go with an error.
fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n  {tail}")
    }
}

/// What [`check`] saw.
#[derive(Debug)]
struct Checked {
    counts: Counts,
    screenshot: PathBuf,
    png: (u32, u32),
    png_bytes: u64,
}

/// Opens `dir/index.html` in headless Chromium (`exe`), checks it rendered everything `dir/report.json`
/// lists, and saves `dir/screenshot.png`.
fn check(exe: &Path, dir: &Path) -> Result<Checked> {
    let page = dir.join("index.html");
    let page = page.canonicalize().with_context(|| {
        format!(
            "no {}: run `cargo xtask bench` first (or `cargo xtask bench-report --sample`)",
            page.display()
        )
    })?;
    let json_path = dir.join("report.json");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path)
            .with_context(|| format!("could not read {}", json_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", json_path.display()))?;
    let want = Counts::from_json(&report)?;
    let url = file_url(&page);
    let work = TempDir::new("bench-report-check")?;

    let dom_path = work.path().join("dom.html");
    run_chromium(
        exe,
        &work,
        &[
            format!("--window-size={SHOT_WIDTH},800"),
            format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
            "--dump-dom".to_owned(),
        ],
        &url,
        &dom_path,
    )?;
    let dom = std::fs::read_to_string(&dom_path)?;
    let rendered = parse_rendered(&dom)?;
    let wrong = mismatches(want, &rendered);
    if !wrong.is_empty() {
        bail!(
            "{} did not render as its report says:\n  {}",
            page.display(),
            wrong.join("\n  ")
        );
    }

    let shot = dir.join("screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let height = rendered.height.clamp(SHOT_MIN_HEIGHT, SHOT_MAX_HEIGHT);
    run_chromium(
        exe,
        &work,
        &[
            format!("--window-size={SHOT_WIDTH},{height}"),
            format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
            "--run-all-compositor-stages-before-draw".to_owned(),
            format!("--screenshot={}", shot.display()),
        ],
        &url,
        &work.path().join("screenshot-stdout.log"),
    )?;
    let bytes = std::fs::read(&shot)
        .with_context(|| format!("chromium wrote no screenshot at {}", shot.display()))?;
    let png = png_size(&bytes).with_context(|| format!("{}", shot.display()))?;
    if png != (SHOT_WIDTH, height) {
        bail!(
            "{} is {}×{} pixels, asked for {SHOT_WIDTH}×{height}",
            shot.display(),
            png.0,
            png.1
        );
    }
    // A page of text, tables and coloured bars; a blank or failed page compresses to less.
    let min_bytes = 20_000;
    if bytes.len() < min_bytes {
        bail!(
            "{} has only {} bytes for {SHOT_WIDTH}×{height} pixels (less than {min_bytes}: blank?)",
            shot.display(),
            bytes.len()
        );
    }
    Ok(Checked {
        counts: want,
        screenshot: shot,
        png,
        png_bytes: bytes.len() as u64,
    })
}

/// A report built in code with every kind of element the bench writes: several sections,
/// tables with a baseline column, a passing and a failing target, a failed scenario, plots,
/// notes, and text that must stay text once escaped.
pub(crate) fn sample() -> Report {
    let mut a = Section::new(
        6,
        "gateway overhead (sample)",
        "Added latency: `GET /v1/talk-status/{id}` through http-api versus **straight** to \
         did-fake, one request at a time.\n\nA second paragraph with text that must stay \
         text: <script>alert(1)</script> & \"quotes\" 'too' </table>.",
    );
    let mut t = Table::new(
        "Latency (ms), `n` = 2000 each:",
        &["path", "p50", "p99", "baseline (direct), same run: p50"],
    );
    t.rows.push(vec![
        "through http-api".into(),
        "0.42".into(),
        "1.10".into(),
        "0.21".into(),
    ]);
    t.rows.push(vec![
        "<b>not bold</b>".into(),
        "0.21".into(),
        "0.80".into(),
        "—".into(),
    ]);
    a.tables.push(t);
    let mut t = Table::new("", &["run", "polls per video", "most the schedule needs"]);
    t.rows
        .push(vec!["sync generate".into(), "6.0".into(), "9".into()]);
    a.tables.push(t);
    a.plots.push(Plot {
        lines: Vec::new(),
        file: "6-sample-latency.svg".into(),
        title: "Sample: talk-status latency (ms), direct vs through http-api".into(),
        series: vec!["did-fake directly".into(), "through http-api".into()],
        groups: vec![
            ("p50".into(), vec![0.21, 0.42]),
            ("p95".into(), vec![0.5, 0.9]),
            ("p99".into(), vec![0.8, 1.1]),
        ],
    });
    a.plots.push(Plot {
        lines: Vec::new(),
        file: "6-sample-stats.svg".into(),
        title: "Sample: /stats against /health under a saturated limiter".into(),
        series: vec!["/health".into(), "/stats".into(), "/stats idle".into()],
        groups: vec![
            ("p50".into(), vec![0.3, 0.35, 0.2]),
            ("p99".into(), vec![2.0, 2.4, 1.0]),
        ],
    });
    a.ratio(
        "p50 through http-api ≤ 2× + 0.5 ms of direct",
        true,
        "0.42 ms vs 0.21 ms",
        "The gateway adds one loopback hop and a limiter grant; a `<2×` ratio keeps it honest.",
    );
    a.bound(
        "polls per video ≤ the schedule's most",
        false,
        "6.0 > 5",
        "The poll schedule bounds the polls: first after 0.5 s, doubling up to 5 s.",
    );
    a.notes
        .push("Absolute figures are information, not targets.".into());
    a.seconds = 12.0;

    let mut b = Section::new(2, "Budget utilisation (sample)", "Limit C = 4, L = 50 ms.");
    let mut t = Table::new(
        "",
        &[
            "backend",
            "req/s",
            "utilisation",
            "baseline: C workers direct, same run",
        ],
    );
    t.rows.push(vec![
        "memory".into(),
        "78.1".into(),
        "97.6 %".into(),
        "79.5 req/s".into(),
    ]);
    t.rows.push(vec![
        "redis ×4".into(),
        "76.0".into(),
        "95.0 %".into(),
        "79.5 req/s".into(),
    ]);
    b.tables.push(t);
    b.plots.push(Plot {
        lines: Vec::new(),
        file: "2-sample-budget.svg".into(),
        title: "Sample: caller latency, C = 4, L = 50 ms".into(),
        series: vec!["direct".into(), "memory".into(), "redis ×4".into()],
        groups: vec![
            ("p50".into(), vec![50.2, 51.0, 52.3]),
            ("p99".into(), vec![55.0, 140.0, 160.0]),
        ],
    });
    b.ratio(
        "memory utilisation ≥ 90 % of the direct baseline",
        true,
        "97.6 %",
        "The limiter should cost little of the budget it guards.",
    );
    b.seconds = 20.0;

    let c = Section::failed(
        4,
        "Crash recovery (sample)",
        "redis-server did not start: <exit 1>",
    );

    Report {
        quick: true,
        release: false,
        generator: "debug",
        date: "sample report, not a bench run".into(),
        nproc: "2".into(),
        memory: "—".into(),
        commit: "sample & <no commit>".into(),
        redis: "redis-server (sample)".into(),
        load_start: "0.00 0.00 0.00".into(),
        load_end: "0.00 0.00 0.00".into(),
        sections: vec![b, c, a],
        total_seconds: 32.0,
    }
}

/// The command line of `cargo xtask bench-report`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    dir: Option<PathBuf>,
    sample: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut opts = Options {
            dir: None,
            sample: false,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--dir" => {
                    opts.dir = Some(it.next().context("--dir needs a directory")?.into());
                }
                "--sample" => opts.sample = true,
                other => bail!(
                    "unknown bench-report option {other:?} (expected --dir PATH, --sample; see \
                     `cargo xtask bench-report --help`)"
                ),
            }
        }
        Ok(opts)
    }
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    let started = Instant::now();
    let exe = chromium()?;
    // The sample goes to a new temporary directory unless --dir names one.
    let temp = match (&opts.dir, opts.sample) {
        (None, true) => Some(TempDir::new("bench-report-sample")?),
        _ => None,
    };
    let dir = match (&opts.dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_owned(),
        (None, None) => procs::target_dir().join("bench-report"),
    };
    if opts.sample {
        sample().write(&dir)?;
        println!("bench-report: sample report written to {}", dir.display());
    }
    let checked = match check(&exe, &dir) {
        Ok(checked) => checked,
        Err(e) => {
            if let Some(temp) = temp {
                let kept = temp.keep();
                return Err(e.context(format!("the sample report is kept in {}", kept.display())));
            }
            return Err(e);
        }
    };
    let c = checked.counts;
    println!(
        "bench-report: {} rendered in headless Chromium: {} section(s), {} table(s), {} \
         plot(s), {} target(s), each with a size; screenshot {} ({}×{}, {} KiB); {:.1} s",
        dir.join("index.html").display(),
        c.sections,
        c.tables,
        c.plots,
        c.targets,
        checked.screenshot.display(),
        checked.png.0,
        checked.png.1,
        checked.png_bytes / 1024,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(sections: usize, tables: usize, plots: usize, targets: usize) -> Counts {
        Counts {
            sections,
            tables,
            plots,
            targets,
        }
    }

    #[test]
    fn the_rendered_counts_are_read_from_the_dumped_dom() {
        let dom = "<html><head></head><body data-rendered=\"tables=5/6 plots=3/3 sections=3/3 \
                   targets=4/4 height=3120\"><p>x</p></body></html>";
        let r = parse_rendered(dom).expect("parses");
        assert_eq!(r.visible, counts(3, 5, 3, 4));
        assert_eq!(r.present, counts(3, 6, 3, 4));
        assert_eq!(r.height, 3120);
        assert_eq!(
            mismatches(counts(3, 6, 3, 4), &r),
            ["tables: 1 of 6 rendered without a size"]
        );
        assert_eq!(
            mismatches(counts(3, 6, 4, 4), &r)[1],
            "plots: the report has 4, the page 3"
        );
        assert!(
            mismatches(
                counts(3, 5, 3, 4),
                &Rendered {
                    present: r.visible,
                    ..r
                }
            )
            .is_empty()
        );
        let err = parse_rendered("<html><body></body></html>").expect_err("no attribute");
        assert!(format!("{err:#}").contains("did the script run"), "{err:#}");
    }

    #[test]
    fn the_json_report_says_what_the_page_must_show() {
        let r = sample();
        let dir = TempDir::new("render-test").expect("temp dir");
        r.write(dir.path()).expect("writes");
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("report.json")).expect("report.json"),
        )
        .expect("JSON");
        let want = Counts::from_json(&json).expect("counts");
        assert_eq!(want, counts(3, 1 + 3, 3, 4));
        assert!(dir.path().join("index.html").is_file());
        assert!(dir.path().join("6-sample-latency.svg").is_file());
        let old = json!({ "scenarios": [{ "scenario": 1, "tables": [], "targets": [] }] });
        assert!(format!("{:#}", Counts::from_json(&old).expect_err("no plots")).contains("plots"));
    }

    #[test]
    fn png_headers_are_checked() {
        let mut png = vec![
            0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13,
        ];
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&1280u32.to_be_bytes());
        png.extend_from_slice(&900u32.to_be_bytes());
        assert_eq!(png_size(&png).expect("a PNG"), (1280, 900));
        assert!(png_size(b"GIF89a and more bytes than twenty-four").is_err());
        assert!(png_size(&png[..20]).is_err());
    }

    #[test]
    fn file_urls_are_percent_encoded() {
        assert_eq!(
            file_url(Path::new("/tmp/a b/ü#1/index.html")),
            "file:///tmp/a%20b/%C3%BC%231/index.html"
        );
    }

    #[test]
    fn options_parse_and_bad_ones_point_at_help() {
        let parse = |list: &[&str]| {
            Options::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(
            parse(&[]).expect("none"),
            Options {
                dir: None,
                sample: false
            }
        );
        assert_eq!(
            parse(&["--sample", "--dir", "x"]).expect("both"),
            Options {
                dir: Some("x".into()),
                sample: true
            }
        );
        assert!(parse(&["--dir"]).is_err());
        let e = parse(&["--open"]).expect_err("unknown option");
        assert!(
            format!("{e:#}").contains("cargo xtask bench-report --help"),
            "{e:#}"
        );
    }
}
