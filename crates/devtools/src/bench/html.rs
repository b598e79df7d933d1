//! The bench report as one HTML page, `index.html`: the run's metadata, the targets table,
//! then every section with its method, tables (baseline columns shaded), plots (the SVG
//! markup inlined) and targets with their reasoning.
//!
//! The page is one self-contained file: a small embedded stylesheet, the SVGs inline, and a
//! Content-Security-Policy that forbids fetching anything. A tiny inline script counts the
//! tables, plots, sections and targets that rendered with a size and writes the counts into
//! the `data-rendered` attribute of `<body>`; `cargo xtask bench-report` reads it back from
//! headless Chromium (see `render`).

use std::fmt::Write as _;

use super::report::{Report, Section, Table, Target, svg};

/// `s` escaped for HTML text and for attribute values in double or single quotes.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The report's inline Markdown as HTML: `code` and **bold**, everything else escaped.
/// An unmatched backtick or `**` stays as it is.
fn inline(md: &str) -> String {
    let mut out = String::new();
    let parts: Vec<&str> = md.split('`').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if i % 2 == 1 && !last {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            if i % 2 == 1 {
                out.push('`');
            }
            out.push_str(&bold(part));
        }
    }
    out
}

/// [`inline`]'s **bold** for text outside code spans.
fn bold(md: &str) -> String {
    let parts: Vec<&str> = md.split("**").collect();
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if i % 2 == 1 && !last {
            let _ = write!(out, "<strong>{}</strong>", escape(part));
        } else {
            if i % 2 == 1 {
                out.push_str("**");
            }
            out.push_str(&escape(part));
        }
    }
    out
}

/// Markdown prose (paragraphs split by blank lines) as `<p>` elements.
fn paragraphs(md: &str, out: &mut String) {
    for p in md.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "<p>{}</p>", inline(p));
    }
}

fn result_badge(pass: bool) -> &'static str {
    if pass {
        r#"<span class="badge pass">PASS</span>"#
    } else {
        r#"<span class="badge fail">FAIL</span>"#
    }
}

/// A table as the Markdown has it (caption, every column); columns whose header names a
/// baseline, and rows whose first cell does, are shaded.
fn table(t: &Table, out: &mut String) {
    let baseline: Vec<bool> = t
        .headers
        .iter()
        .map(|h| h.to_lowercase().contains("baseline"))
        .collect();
    let class = |i: usize| {
        if baseline.get(i).copied().unwrap_or(false) {
            r#" class="baseline""#
        } else {
            ""
        }
    };
    out.push_str("<div class=\"scroll\"><table>\n");
    if !t.caption.is_empty() {
        let _ = writeln!(out, "<caption>{}</caption>", inline(&t.caption));
    }
    out.push_str("<thead><tr>");
    for (i, h) in t.headers.iter().enumerate() {
        let _ = write!(out, "<th{}>{}</th>", class(i), inline(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        // A baseline can be a row too ("did-fake directly (baseline)").
        let base = row
            .first()
            .is_some_and(|c| c.to_lowercase().contains("baseline"));
        out.push_str(if base {
            "<tr class=\"baseline\">"
        } else {
            "<tr>"
        });
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(out, "<td{}>{}</td>", class(i), inline(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

fn target(t: &Target, out: &mut String) {
    let _ = writeln!(
        out,
        "<li class=\"target {}\">{} <strong>{}</strong> <span class=\"kind\">({})</span>\
         <div class=\"measured\">measured: {}</div><div class=\"why\">{}</div></li>",
        if t.pass { "pass" } else { "fail" },
        result_badge(t.pass),
        inline(&t.name),
        t.kind.as_str(),
        inline(&t.measured),
        inline(&t.why)
    );
}

fn section(s: &Section, out: &mut String) {
    let _ = writeln!(
        out,
        "<section class=\"scenario\" id=\"scenario-{n}\">\n<h2>{n}. {} <span class=\"secs\">({:.0} s)</span></h2>",
        escape(&s.title),
        s.seconds,
        n = s.number
    );
    paragraphs(&s.method, out);
    for t in &s.tables {
        table(t, out);
    }
    for p in &s.plots {
        let _ = writeln!(
            out,
            "<figure class=\"plot\">\n{}<figcaption>{} (also <code>{}</code>)</figcaption>\n</figure>",
            svg(p),
            escape(&p.title),
            escape(&p.file)
        );
    }
    if !s.notes.is_empty() {
        out.push_str("<ul class=\"notes\">\n");
        for n in &s.notes {
            let _ = writeln!(out, "<li>{}</li>", inline(n));
        }
        out.push_str("</ul>\n");
    }
    if !s.targets.is_empty() {
        out.push_str("<h3>Targets and why</h3>\n<ul class=\"targets\">\n");
        for t in &s.targets {
            target(t, out);
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</section>\n");
}

const STYLE: &str = "\
body { font: 15px/1.45 system-ui, sans-serif; color: #1a1a1a; max-width: 1160px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 26px; margin: 8px 0 12px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 2px solid #ddd; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.secs, .kind { color: #666; font-weight: normal; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 16px; }
dl.meta dt { font-weight: 600; color: #444; }
dl.meta dd { margin: 0; }
code { font: 13px ui-monospace, monospace; background: #f2f2f2; padding: 0 3px; border-radius: 3px; }
.scroll { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 14px; }
caption { text-align: left; padding: 4px 0; color: #333; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
tbody tr:nth-child(even) td { background: #fafafa; }
th.baseline { background: #e4ddf0; }
td.baseline, tbody tr:nth-child(even) td.baseline, tr.baseline td, tbody tr.baseline:nth-child(even) td { background: #f3effa; }
.badge { display: inline-block; min-width: 3.2em; text-align: center; font-weight: 700; font-size: 12px; padding: 1px 6px; border-radius: 4px; color: white; }
.badge.pass { background: #2e7d32; }
.badge.fail { background: #c62828; }
.tally.fail { color: #c62828; font-weight: 700; }
ul.targets { list-style: none; padding: 0; }
li.target { margin: 8px 0; padding: 6px 10px; border-left: 4px solid #2e7d32; background: #f6fbf6; }
li.target.fail { border-left-color: #c62828; background: #fdf5f5; }
.measured { margin-top: 2px; }
.why { color: #444; margin-top: 2px; }
figure.plot { margin: 16px 0; }
figure.plot svg { display: block; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; margin-top: 4px; }
nav ol { columns: 2; margin: 4px 0 0; }
";

/// Counts what rendered with a size (visible of all) and leaves it in `<body data-rendered>`.
/// A plot counts when its `<svg>` and at least two of its rectangles (background and a bar)
/// have a size.
const SCRIPT: &str = "\
(function () {
  function sized(el) { var r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; }
  function count(selector, ok) {
    var all = document.querySelectorAll(selector), n = 0;
    for (var i = 0; i < all.length; i++) { if (sized(all[i]) && ok(all[i])) { n++; } }
    return n + '/' + all.length;
  }
  function any() { return true; }
  function drawn(svg) {
    var rects = svg.querySelectorAll('rect'), n = 0;
    for (var i = 0; i < rects.length; i++) { if (sized(rects[i])) { n++; } }
    return n >= 2;
  }
  document.body.dataset.rendered = 'tables=' + count('table', any) +
    ' plots=' + count('figure.plot svg', drawn) +
    ' sections=' + count('section.scenario', any) +
    ' targets=' + count('li.target', any) +
    ' height=' + Math.ceil(document.documentElement.scrollHeight);
})();
";

/// The whole page.
pub(crate) fn page(r: &Report) -> String {
    let (passed, failed) = r.tally();
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // Nothing is fetched: no network, no other file (inline style and script only).
    h.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n",
    );
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        h,
        "<title>talkgate macro benchmarks: {}</title>",
        escape(&r.date)
    );
    let _ = writeln!(h, "<style>\n{STYLE}</style>\n</head>\n<body>");
    h.push_str("<h1>talkgate macro benchmarks</h1>\n<dl class=\"meta\">\n");
    let meta = [
        ("command", format!("<code>{}</code>", escape(&r.command()))),
        (
            "run",
            if r.quick { "quick (CI size)" } else { "full" }.to_owned(),
        ),
        ("date", escape(&r.date)),
        (
            "machine",
            escape(&format!(
                "{} cores (nproc), {} RAM (free -h), load average {} at the start and {} at \
                 the end (1/5/15 min)",
                r.nproc, r.memory, r.load_start, r.load_end
            )),
        ),
        ("commit", escape(&r.commit)),
        ("binaries", inline(&r.binaries())),
        ("total time", format!("{:.0} s", r.total_seconds)),
        (
            "result",
            format!(
                "<span class=\"tally{}\">{passed} target(s) passed, {failed} failed</span>",
                if failed > 0 { " fail" } else { "" }
            ),
        ),
    ];
    for (k, v) in meta {
        let _ = writeln!(h, "<dt>{k}</dt><dd>{v}</dd>");
    }
    h.push_str("</dl>\n");
    if !r.sections.is_empty() {
        h.push_str("<nav><strong>Scenarios</strong><ol>\n");
        for s in &r.sections {
            let _ = writeln!(
                h,
                "<li value=\"{n}\"><a href=\"#scenario-{n}\">{}</a></li>",
                escape(&s.title),
                n = s.number
            );
        }
        h.push_str("</ol></nav>\n");
    }
    h.push_str(
        "<h2>Targets</h2>\n<p>Each target is a ratio to a baseline measured in the same run or \
         a bound that follows from the configuration; each scenario below says why its \
         thresholds are what they are. Absolute figures are information.</p>\n",
    );
    h.push_str(
        "<div class=\"scroll\"><table class=\"summary\">\n<thead><tr><th>scenario</th>\
         <th>target</th><th>kind</th><th>measured</th><th>result</th></tr></thead>\n<tbody>\n",
    );
    for s in &r.sections {
        for t in &s.targets {
            let _ = writeln!(
                h,
                "<tr><td><a href=\"#scenario-{n}\">{n}</a></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                inline(&t.name),
                t.kind.as_str(),
                inline(&t.measured),
                result_badge(t.pass),
                n = s.number
            );
        }
    }
    h.push_str("</tbody></table></div>\n");
    for s in &r.sections {
        section(s, &mut h);
    }
    let _ = writeln!(h, "<script>\n{SCRIPT}</script>\n</body>\n</html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::render::sample;

    #[test]
    fn escape_covers_text_and_attributes() {
        let check = |input: &str, want: &str| assert_eq!(escape(input), want, "{input:?}");
        check("plain × text", "plain × text");
        check("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d");
        check(r#"say "hi" 'there'"#, "say &quot;hi&quot; &#39;there&#39;");
        check("&amp;", "&amp;amp;");
        check(
            "</script><script>x()</script>",
            "&lt;/script&gt;&lt;script&gt;x()&lt;/script&gt;",
        );
    }

    #[test]
    fn inline_markdown_renders_code_and_bold_and_escapes_the_rest() {
        let check = |input: &str, want: &str| assert_eq!(inline(input), want, "{input:?}");
        check(
            "`GET /talks/{id}` <x>",
            "<code>GET /talks/{id}</code> &lt;x&gt;",
        );
        check(
            "**Weights 3:1**: a & b",
            "<strong>Weights 3:1</strong>: a &amp; b",
        );
        check("`a**b**`", "<code>a**b**</code>");
        check("`<b>`", "<code>&lt;b&gt;</code>");
        check("one ` left", "one ` left");
        check("one ** left", "one ** left");
    }

    #[test]
    fn the_page_holds_every_element_of_the_report_and_fetches_nothing() {
        let r = sample();
        let page = page(&r);
        let tables: usize = r.sections.iter().map(|s| s.tables.len()).sum();
        let plots: usize = r.sections.iter().map(|s| s.plots.len()).sum();
        let targets: usize = r.sections.iter().map(|s| s.targets.len()).sum();
        assert_eq!(page.matches("<table").count(), 1 + tables);
        assert_eq!(page.matches("<figure class=\"plot\">\n<svg").count(), plots);
        assert_eq!(
            page.matches("<section class=\"scenario\"").count(),
            r.sections.len()
        );
        assert_eq!(page.matches("<li class=\"target ").count(), targets);
        for s in &r.sections {
            assert!(page.contains(&format!("id=\"scenario-{}\"", s.number)));
            for t in &s.targets {
                assert!(page.contains(&inline(&t.why)), "{}", t.why);
            }
            for t in &s.tables {
                for h in &t.headers {
                    assert!(page.contains(&format!(">{}</th>", inline(h))), "{h}");
                }
            }
        }
        assert!(
            page.contains("<th class=\"baseline\">"),
            "baseline columns are marked"
        );
        assert!(page.contains("badge pass\">PASS") && page.contains("badge fail\">FAIL"));
        assert!(page.contains(&escape(&r.commit)) && page.contains(&escape(&r.date)));
        assert!(page.contains("<dt>run</dt><dd>quick"));
        // The sample's hostile text stays text.
        assert!(
            !page.contains("<script>alert"),
            "unescaped text in the page"
        );
        assert_eq!(page.matches("<script>").count(), 1);
        for fetch in ["src=", "<link", "@import", "url(", "href=\"http"] {
            assert!(
                !page.contains(fetch),
                "the page would fetch something: {fetch}"
            );
        }
    }
}
