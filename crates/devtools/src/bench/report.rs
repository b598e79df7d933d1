//! The benchmark report: percentiles from sorted samples, one [`Section`] per scenario
//! (tables with their baseline column, targets with their reasoning, raw JSON, latency
//! plots), written as `report.json`, `report.md`, `docs-section.md` (the same Markdown shaped
//! to paste into `docs/BENCHMARKS.md`), hand-drawn SVG bar charts and `index.html` (one
//! self-contained page with everything, SVGs inlined; written by `html`) under
//! `target/bench-report/`.
//!
//! The file stays whole although it is long: one `Report` value feeds every output, and the
//! Markdown, JSON and SVG writers change together whenever a section or a field does.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use serde_json::{Value, json};

use super::html::escape;

/// Latency (or wait) figures of one set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Summary {
    /// Summarises `samples` (milliseconds); sorts them in place.
    pub(crate) fn of(samples: &mut [f64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        Summary {
            n,
            mean: samples.iter().sum::<f64>() / n as f64,
            p50: percentile(samples, 50.0),
            p95: percentile(samples, 95.0),
            p99: percentile(samples, 99.0),
            max: samples[n - 1],
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "n": self.n, "mean_ms": round3(self.mean), "p50_ms": round3(self.p50),
            "p95_ms": round3(self.p95), "p99_ms": round3(self.p99), "max_ms": round3(self.max),
        })
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at least `p` % of
/// the samples at or below it.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `x` with one decimal (for tables).
pub(crate) fn f1(x: f64) -> String {
    format!("{x:.1}")
}

/// `x` with two decimals (for tables).
pub(crate) fn f2(x: f64) -> String {
    format!("{x:.2}")
}

/// A Markdown table.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) caption: String,
    pub(crate) headers: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(caption: &str, headers: &[&str]) -> Table {
        Table {
            caption: caption.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn markdown(&self, out: &mut String) {
        if !self.caption.is_empty() {
            let _ = writeln!(out, "{}\n", self.caption);
        }
        let _ = writeln!(out, "| {} |", self.headers.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            self.headers.iter().map(|_| "---|").collect::<String>()
        );
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
    }

    /// Prints the table to the terminal, columns padded.
    pub(crate) fn print(&self) {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                std::iter::once(&self.headers[i])
                    .chain(self.rows.iter().filter_map(|r| r.get(i)))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut s = String::from("   ");
            for (i, c) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                let _ = write!(s, " {c:<w$} ");
            }
            println!("{}", s.trim_end());
        };
        if !self.caption.is_empty() {
            println!("  {}", self.caption);
        }
        line(&self.headers);
        for row in &self.rows {
            line(row);
        }
    }
}

/// What a target's threshold is made of. No target compares with an absolute time on its
/// own: the machine is shared and its speed is not a property of talkgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A ratio to a baseline measured in the same run, under the same load.
    Ratio,
    /// A bound that follows from the configuration (limits, timeouts, intervals), plus a
    /// stated slack where something is observed by polling.
    Bound,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Ratio => "ratio",
            Kind::Bound => "bound",
        }
    }
}

/// One target: a named threshold, what was measured, whether it holds, and why the
/// threshold is what it is.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) measured: String,
    pub(crate) pass: bool,
    pub(crate) why: String,
}

/// A grouped bar chart: for each group (e.g. `p50`), one bar per series (e.g. naive, pooled);
/// or, when `lines` is not empty, a line chart of one polyline per series over time.
#[derive(Debug, Clone)]
pub(crate) struct Plot {
    pub(crate) file: String,
    pub(crate) title: String,
    pub(crate) series: Vec<String>,
    /// (group label, one value per series).
    pub(crate) groups: Vec<(String, Vec<f64>)>,
    /// A line chart: one series' points each, `(seconds, value)`, drawn as steps (the value
    /// holds until the next point). Its series names are `series`.
    pub(crate) lines: Vec<Vec<(f64, f64)>>,
}

/// The result of one scenario.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub(crate) number: usize,
    pub(crate) title: String,
    /// What is measured and how, as Markdown prose (definitions included).
    pub(crate) method: String,
    pub(crate) tables: Vec<Table>,
    pub(crate) targets: Vec<Target>,
    pub(crate) plots: Vec<Plot>,
    pub(crate) notes: Vec<String>,
    pub(crate) data: Value,
    pub(crate) seconds: f64,
}

impl Section {
    pub(crate) fn new(number: usize, title: &str, method: &str) -> Section {
        Section {
            number,
            title: title.to_owned(),
            method: method.to_owned(),
            tables: Vec::new(),
            targets: Vec::new(),
            plots: Vec::new(),
            notes: Vec::new(),
            data: json!({}),
            seconds: 0.0,
        }
    }

    /// A scenario that could not run: one failed target carrying the error.
    pub(crate) fn failed(number: usize, title: &str, error: &str) -> Section {
        let mut s = Section::new(number, title, "The scenario did not complete.");
        s.bound(
            "scenario ran to completion",
            false,
            error,
            "A scenario that cannot run measures nothing; its error is the finding.",
        );
        s
    }

    /// A target that is a ratio to a baseline of the same run; `why` says why the threshold.
    pub(crate) fn ratio(&mut self, name: &str, pass: bool, measured: &str, why: &str) {
        self.push(name, Kind::Ratio, pass, measured, why);
    }

    /// A target that is a bound from the configuration; `why` derives it.
    pub(crate) fn bound(&mut self, name: &str, pass: bool, measured: &str, why: &str) {
        self.push(name, Kind::Bound, pass, measured, why);
    }

    fn push(&mut self, name: &str, kind: Kind, pass: bool, measured: &str, why: &str) {
        self.targets.push(Target {
            name: name.to_owned(),
            kind,
            measured: measured.to_owned(),
            pass,
            why: why.to_owned(),
        });
    }

    pub(crate) fn table(&mut self, table: Table) {
        table.print();
        self.tables.push(table);
    }

    pub(crate) fn print_targets(&self) {
        for t in &self.targets {
            println!(
                "  {}  ({}) {}: {}",
                if t.pass { "PASS" } else { "FAIL" },
                t.kind.as_str(),
                t.name,
                t.measured
            );
        }
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.number,
            "title": self.title,
            "seconds": round3(self.seconds),
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name, "kind": t.kind.as_str(), "measured": t.measured,
                "pass": t.pass, "why": t.why,
            })).collect::<Vec<_>>(),
            "tables": self.tables.iter().map(|t| json!({
                "caption": t.caption, "headers": t.headers, "rows": t.rows,
            })).collect::<Vec<_>>(),
            "plots": self.plots.iter().map(|p| json!({
                "file": p.file, "title": p.title,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "data": self.data,
        })
    }
}

/// The whole run.
pub(crate) struct Report {
    pub(crate) quick: bool,
    /// did-fake and http-api ran their release builds (else their debug builds).
    pub(crate) release: bool,
    /// The profile this process (the load generator) was built in.
    pub(crate) generator: &'static str,
    pub(crate) date: String,
    pub(crate) nproc: String,
    pub(crate) memory: String,
    pub(crate) commit: String,
    pub(crate) redis: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages when the run started and ended.
    pub(crate) load_start: String,
    pub(crate) load_end: String,
    pub(crate) sections: Vec<Section>,
    pub(crate) total_seconds: f64,
}

fn capture(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(task_cli::root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The 1, 5 and 15 minute load averages, e.g. `0.31 0.52 0.60`.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Report {
    pub(crate) fn new(quick: bool, release: bool) -> Report {
        let free = capture("free", &["-h"]);
        let memory = free
            .lines()
            .find(|l| l.starts_with("Mem:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("unknown")
            .to_owned();
        let mut commit = capture("git", &["rev-parse", "--short", "HEAD"]);
        if !capture("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            commit.push_str(" + uncommitted changes");
        }
        let redis = capture("redis-server", &["--version"])
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .map_or_else(|| "unknown".to_owned(), |v| format!("redis-server {v}"));
        Report {
            quick,
            release,
            generator: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            date: capture("date", &["-u"]),
            nproc: capture("nproc", &[]),
            memory,
            commit,
            redis,
            load_start: load_average(),
            load_end: String::new(),
            sections: Vec::new(),
            total_seconds: 0.0,
        }
    }

    pub(crate) fn machine_line(&self) -> String {
        format!(
            "{} cores (nproc), {} RAM (free -h), load average {} (1/5/15 min), commit {}, {}",
            self.nproc, self.memory, self.load_start, self.commit, self.date
        )
    }

    /// Which build every process ran, in one sentence.
    pub(crate) fn binaries(&self) -> String {
        let services = if self.release { "release" } else { "debug" };
        format!(
            "http-api and did-fake: {services} profile (`target/{services}/`); the load \
             generator, the `/stats`/`/health` probes and scenario 3's in-process limiters \
             (this devtools process): {} profile; {}: the system binary",
            self.generator, self.redis
        )
    }

    pub(crate) fn command(&self) -> String {
        format!(
            "cargo xtask bench{}{}",
            if self.quick { " --quick" } else { "" },
            if self.release { "" } else { " --debug" }
        )
    }

    pub(crate) fn tally(&self) -> (usize, usize) {
        let all = self.sections.iter().flat_map(|s| &s.targets);
        let passed = all.clone().filter(|t| t.pass).count();
        (passed, all.count() - passed)
    }

    /// The report as Markdown. `for_docs` shapes it for `docs/BENCHMARKS.md`: headings one
    /// level deeper (the docs put the run under a `##` heading), a first line saying which run
    /// the figures are from, and plots named rather than embedded (they stay in `target/`).
    pub(crate) fn markdown(&self, for_docs: bool) -> String {
        let h = if for_docs { "###" } else { "##" };
        let mut md = String::new();
        if for_docs {
            let _ = writeln!(
                md,
                "Figures below: run of {}, commit {}, `{}` (pasted from \
                 `target/bench-report/docs-section.md`).\n",
                self.date,
                self.commit,
                self.command()
            );
        } else {
            let _ = writeln!(md, "# talkgate macro benchmarks\n");
        }
        let _ = writeln!(
            md,
            "- command: `{}`\n- date: {}\n- machine: {} cores (`nproc`), {} RAM (`free -h`), \
             load average {} at the start and {} at the end (1/5/15 min, `/proc/loadavg`)\n\
             - commit: {}\n- binaries: {}\n- total time: {:.0} s\n",
            self.command(),
            self.date,
            self.nproc,
            self.memory,
            self.load_start,
            self.load_end,
            self.commit,
            self.binaries(),
            self.total_seconds
        );
        let _ = writeln!(md, "{h} Targets\n");
        let _ = writeln!(
            md,
            "Each target is a ratio to a baseline measured in the same run or a bound that \
             follows from the configuration; each scenario below says why its thresholds are \
             what they are. Absolute figures are information.\n"
        );
        let _ = writeln!(
            md,
            "| scenario | target | kind | measured | result |\n|---|---|---|---|---|"
        );
        for s in &self.sections {
            for t in &s.targets {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    s.number,
                    t.name,
                    t.kind.as_str(),
                    t.measured,
                    if t.pass { "PASS" } else { "FAIL" }
                );
            }
        }
        md.push('\n');
        for s in &self.sections {
            let _ = writeln!(md, "{h} {}. {} ({:.0} s)\n", s.number, s.title, s.seconds);
            let _ = writeln!(md, "{}\n", s.method);
            for t in &s.tables {
                t.markdown(&mut md);
            }
            for p in &s.plots {
                if for_docs {
                    let _ = writeln!(
                        md,
                        "(Plot: `target/bench-report/{}`, written by the run.)\n",
                        p.file
                    );
                } else {
                    let _ = writeln!(md, "![{}]({})\n", p.title, p.file);
                }
            }
            for n in &s.notes {
                let _ = writeln!(md, "- {n}");
            }
            if !s.notes.is_empty() {
                md.push('\n');
            }
            if !s.targets.is_empty() {
                let _ = writeln!(md, "Why these targets:\n");
                for t in &s.targets {
                    let _ = writeln!(md, "- **{}** ({}): {}", t.name, t.kind.as_str(), t.why);
                }
                md.push('\n');
            }
        }
        md
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        // Plots and a screenshot of an earlier run must not pass for this run's.
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "svg")
                || path.file_name().is_some_and(|n| n == "screenshot.png")
            {
                std::fs::remove_file(path)?;
            }
        }
        let json = json!({
            "command": self.command(),
            "date": self.date,
            "machine": {
                "nproc": self.nproc, "memory": self.memory,
                "load_average_start": self.load_start, "load_average_end": self.load_end,
            },
            "commit": self.commit,
            "binaries": self.binaries(),
            "profiles": {
                "http-api": if self.release { "release" } else { "debug" },
                "did-fake": if self.release { "release" } else { "debug" },
                "load generator (devtools)": self.generator,
                "redis-server": self.redis,
            },
            "total_seconds": round3(self.total_seconds),
            "scenarios": self.sections.iter().map(Section::json).collect::<Vec<_>>(),
        });
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        for s in &self.sections {
            for p in &s.plots {
                std::fs::write(dir.join(&p.file), svg(p))?;
            }
        }
        std::fs::write(dir.join("report.md"), self.markdown(false))?;
        std::fs::write(dir.join("docs-section.md"), self.markdown(true))?;
        std::fs::write(dir.join("index.html"), super::html::page(self))?;
        Ok(())
    }
}

const COLOURS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// The start of a plot's SVG: the canvas, the title, and one legend line per series (so long
/// names never run off the canvas) from `left`.
fn head(plot: &Plot, width: f64, height: f64, left: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&plot.title)
    );
    for (i, name) in plot.series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let y = 32.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{y}" width="12" height="12" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            left + 16.0,
            y + 11.0,
            escape(name)
        );
    }
    s
}

/// A line chart, drawn by hand: x in seconds from 0 to the last point, y from 0 to the
/// largest value (whole-number ticks), one step line per series in its colour.
fn line_svg(plot: &Plot) -> String {
    let (width, height) = (760.0_f64, 300.0 + 16.0 * plot.series.len() as f64);
    let (left, right, top) = (50.0, 20.0, 40.0 + 16.0 * plot.series.len() as f64);
    let bottom = height - 30.0;
    let x_max = plot
        .lines
        .iter()
        .flat_map(|l| l.iter().map(|(x, _)| *x))
        .fold(1e-9_f64, f64::max);
    let y_max = plot
        .lines
        .iter()
        .flat_map(|l| l.iter().map(|(_, y)| *y))
        .fold(1.0_f64, f64::max)
        .ceil();
    let px = |x: f64| left + x / x_max * (width - left - right);
    let py = |y: f64| bottom - y / y_max * (bottom - top);
    let mut s = head(plot, width, height, left);
    // Axes, with a tick per whole value (at most 10) and per 10 % of the time.
    let step = (y_max / 10.0).ceil().max(1.0);
    let mut tick = 0.0;
    while tick <= y_max {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"##,
            width - right,
            left - 6.0,
            py(tick) + 4.0,
            y = py(tick),
        );
        tick += step;
    }
    for i in 0..=10 {
        let x = x_max * f64::from(i) / 10.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x:.0} s</text>"#,
            px(x),
            bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="black"/>"#,
        width - right
    );
    for (i, line) in plot.lines.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        // Steps: a corner where the value changes, and the last point; nothing between.
        let mut points = String::new();
        let mut last: Option<f64> = None;
        for (i, (x, y)) in line.iter().enumerate() {
            match last {
                Some(prev) if prev == *y && i + 1 < line.len() => continue,
                // The end of a flat run: one point.
                Some(prev) if prev == *y => {}
                Some(prev) => {
                    let _ = write!(points, "{:.1},{:.1} ", px(*x), py(prev));
                }
                None => {}
            }
            let _ = write!(points, "{:.1},{:.1} ", px(*x), py(*y));
            last = Some(*y);
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A plot as SVG: [`line_svg`] when it has lines, else a horizontal grouped bar chart, drawn by
/// hand: one row of bars per group, one colour per series, the value written at the end of
/// each bar; linear scale from 0 to the largest value.
pub(crate) fn svg(plot: &Plot) -> String {
    if !plot.lines.is_empty() {
        return line_svg(plot);
    }
    let bar_h = 16.0;
    let gap = 10.0;
    let left = 120.0;
    let width = 760.0;
    let plot_w = width - left - 110.0;
    let legend_h = 16.0 * plot.series.len() as f64 + 8.0;
    let group_h = bar_h * plot.series.len() as f64 + gap;
    let height = 32.0 + legend_h + group_h * plot.groups.len() as f64 + 20.0;
    let max = plot
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let mut s = head(plot, width, height, left);
    let mut y = 32.0 + legend_h;
    for (label, values) in &plot.groups {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + group_h / 2.0,
            escape(label)
        );
        for (i, v) in values.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            let w = (v / max * plot_w).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="{c}"/><text x="{:.1}" y="{}">{}</text>"#,
                bar_h - 2.0,
                left + w + 4.0,
                y + bar_h - 4.0,
                fmt_value(*v)
            );
            y += bar_h;
        }
        y += gap;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{left}" y2="{}" stroke="black"/></svg>"#,
        32.0 + legend_h - 4.0,
        y - gap + 4.0
    );
    s
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.3} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(s.mean, 50.5);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(Summary::of(&mut []).n, 0);
    }

    fn report_with(targets: &[(Kind, bool)]) -> Report {
        let mut r = Report::new(true, true);
        let mut s = Section::new(6, "gateway overhead", "How it is measured.");
        for (i, (kind, pass)) in targets.iter().enumerate() {
            s.push(
                &format!("target {i}"),
                *kind,
                *pass,
                "1 vs 2",
                &format!("reason {i}"),
            );
        }
        s.plots.push(Plot {
            lines: Vec::new(),
            file: "6-x.svg".into(),
            title: "x".into(),
            series: vec!["a".into()],
            groups: vec![("p50".into(), vec![1.0])],
        });
        r.sections.push(s);
        r
    }

    #[test]
    fn the_report_gives_every_target_its_kind_and_reason() {
        let r = report_with(&[(Kind::Ratio, true), (Kind::Bound, false)]);
        assert_eq!(r.tally(), (1, 1));
        let md = r.markdown(false);
        assert!(
            md.contains("| 6 | target 0 | ratio | 1 vs 2 | PASS |"),
            "{md}"
        );
        assert!(
            md.contains("| 6 | target 1 | bound | 1 vs 2 | FAIL |"),
            "{md}"
        );
        assert!(md.contains("- **target 0** (ratio): reason 0"), "{md}");
        assert!(md.contains("- **target 1** (bound): reason 1"), "{md}");
        assert!(md.contains("![x](6-x.svg)"));
        assert!(
            md.contains("load generator"),
            "the binaries line names every process"
        );
    }

    #[test]
    fn the_docs_section_is_shaped_for_benchmarks_md() {
        let r = report_with(&[(Kind::Ratio, true)]);
        let md = r.markdown(true);
        let first = md.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!(
                "Figures below: run of {}, commit {}",
                r.date, r.commit
            )),
            "{first}"
        );
        // One level below the docs' `## Macro benchmarks`, and no `#`/`##` heading at all.
        assert!(md.contains("\n### Targets\n") && md.contains("\n### 6. gateway overhead"));
        assert!(
            !md.lines()
                .any(|l| l.starts_with("# ") || l.starts_with("## ")),
            "{md}"
        );
        assert!(md.contains("(Plot: `target/bench-report/6-x.svg`, written by the run.)"));
        assert!(!md.contains("![x]"));
    }

    #[test]
    fn a_line_plot_draws_steps_with_a_corner_per_change() {
        let p = Plot {
            lines: vec![vec![
                (0.0, 20.0),
                (1.0, 20.0),
                (2.0, 7.0),
                (3.0, 7.0),
                (4.0, 7.0),
            ]],
            file: "l.svg".into(),
            title: "limit".into(),
            series: vec!["adaptive".into()],
            groups: Vec::new(),
        };
        let out = svg(&p);
        assert_eq!(out.matches("<polyline").count(), 1);
        let points = out
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        // The start, the corner at 2 s (from 20 to 7), and the end: four points.
        assert_eq!(points.split_whitespace().count(), 4, "{points}");
        assert!(out.contains(">adaptive</text>"));
    }

    #[test]
    fn svg_has_one_bar_per_value() {
        let p = Plot {
            lines: Vec::new(),
            file: "x.svg".into(),
            title: "t <1>".into(),
            series: vec!["a".into(), "b".into()],
            groups: vec![
                ("p50".into(), vec![1.0, 2.0]),
                ("p99".into(), vec![3.0, 4.0]),
            ],
        };
        let s = svg(&p);
        assert_eq!(s.matches("<rect").count(), 1 + 2 + 4);
        assert!(s.contains("t &lt;1&gt;"));
    }
}
