//! `drill --report FILE`: the drill's results as Markdown (`.md`) or as one
//! self-contained HTML page (`.html`: inline CSS and inline SVG charts of
//! the restore points over time per target and of the restore durations; no
//! script, no external asset). Every string that comes from a target, a
//! manifest or the configuration is escaped (a policy or file named
//! `<script>` is shown as text).

use crate::ops::drill::{DrillResult, TargetDrill};
use crate::ops::verify::CheckStatus;
use chrono::DateTime;
use std::fmt::Write as _;
use std::path::Path;

/// The report format, from the file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Html,
}

impl Format {
    /// `.md`/`.markdown` or `.html`/`.htm`; anything else is None.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" => Some(Format::Markdown),
            "html" | "htm" => Some(Format::Html),
            _ => None,
        }
    }
}

/// What a report covers: the drills, the policies that could not be
/// drilled at all (policy, why), and when.
pub struct Report<'a> {
    pub results: &'a [DrillResult],
    pub failed: &'a [(String, String)],
    pub now: &'a str,
}

/// Render the report.
pub fn render(format: Format, r: &Report<'_>) -> String {
    match format {
        Format::Markdown => markdown(r),
        Format::Html => html(r),
    }
}

/// Write the report to `path` atomically.
pub fn write(path: &Path, r: &Report<'_>) -> crate::error::Result<()> {
    let Some(format) = Format::of(path) else {
        crate::bail!(
            "--report {}: the file name must end in .md or .html",
            path.display()
        );
    };
    crate::metrics::write_atomic(path, render(format, r).as_bytes())
        .map_err(|e| crate::err!("--report {}: {e}", path.display()))
}

/// "3d 4h", "2h 5m", "40s".
pub fn human_age(secs: i64) -> String {
    let neg = secs < 0;
    let s = secs.unsigned_abs();
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    let t = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    };
    if neg {
        format!("-{t}")
    } else {
        t
    }
}

fn seconds(t: &TargetDrill) -> String {
    if t.snapshot.is_some() {
        format!("{:.2}", t.seconds)
    } else {
        "-".into()
    }
}

fn mbps(t: &TargetDrill) -> String {
    if t.result == CheckStatus::Ok {
        format!("{:.1}", t.mb_per_s)
    } else {
        "-".into()
    }
}

fn age(t: &TargetDrill) -> String {
    t.age_seconds.map(human_age).unwrap_or_else(|| "-".into())
}

fn short(t: Option<&str>) -> String {
    t.map(crate::util::short_time).unwrap_or_else(|| "-".into())
}

// ---------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------

/// `s` made printable, HTML's metacharacters as entities, and every other
/// character through `other` (which pushes it, changed or not).
fn escaped(s: &str, other: impl Fn(char, &mut String)) -> String {
    let mut out = String::with_capacity(s.len());
    for c in crate::util::printable(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => other(c, &mut out),
        }
    }
    out
}

/// Text for a Markdown table cell or line: HTML metacharacters as
/// entities, Markdown's own escaped, no line breaks.
pub fn md_escape(s: &str) -> String {
    escaped(s, |c, out| match c {
        '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '!' => {
            out.push('\\');
            out.push(c);
        }
        '\n' | '\r' => out.push(' '),
        c => out.push(c),
    })
}

/// A fenced code block whose fence no line of `body` can close.
fn md_code(body: &str) -> String {
    let mut run = 0;
    let mut longest = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat((longest + 1).max(3));
    let lines: Vec<String> = body.lines().map(crate::util::printable).collect();
    format!("{fence}sh\n{}\n{fence}\n", lines.join("\n"))
}

/// One target's section of the Markdown report: what was restored, how
/// fast, and the commands to do it by hand.
fn md_target(s: &mut String, t: &TargetDrill) {
    let _ = writeln!(s, "### Target {}\n", md_escape(&t.target));
    let _ = writeln!(
        s,
        "- {} target, location {}",
        md_escape(&t.kind),
        md_escape(&t.location)
    );
    let _ = writeln!(
        s,
        "- snapshot {} taken {}: {} restored in {} s",
        md_escape(t.snapshot.as_deref().unwrap_or("-")),
        md_escape(&short(t.snapshot_time.as_deref())),
        crate::util::human_bytes(t.bytes),
        seconds(t)
    );
    let _ = writeln!(
        s,
        "- restore points: {} (oldest {}, newest {})",
        t.restore_points.len(),
        md_escape(&short(t.restore_points.first().map(String::as_str))),
        md_escape(&short(t.restore_points.last().map(String::as_str)))
    );
    for src in &t.sources {
        let _ = writeln!(
            s,
            "- source {} ({}): {}, {} files, {}",
            md_escape(&src.name),
            md_escape(&src.kind),
            crate::util::human_bytes(src.bytes),
            src.files,
            src.result
        );
        for (table, n) in &src.rows {
            let _ = writeln!(s, "  - {}: {n} rows", md_escape(table));
        }
        for p in &src.problems {
            let _ = writeln!(s, "  - problem: {}", md_escape(p));
        }
    }
    s.push('\n');
    if !t.commands.backupctl.is_empty() {
        let _ = writeln!(s, "Restore by hand with backupctl:\n");
        s.push_str(&md_code(&t.commands.backupctl.join("\n")));
        s.push('\n');
        let _ = writeln!(
            s,
            "With stock tools (sh, tail, head, zstd, tar; see RESTORE-README.txt at the \
                 target's root):\n"
        );
        s.push_str(&md_code(&t.commands.stock.join("\n")));
        s.push('\n');
    }
}

fn markdown(rep: &Report<'_>) -> String {
    let (results, now) = (rep.results, rep.now);
    let mut s = String::new();
    let _ = writeln!(s, "# Recovery drill\n");
    let _ = writeln!(
        s,
        "Drill of {}, backupctl {}. RTO: how long the restore from each target took; RPO: \
         how old the restored data was.\n",
        md_escape(&crate::util::short_time(now)),
        env!("CARGO_PKG_VERSION")
    );
    for r in results {
        let _ = writeln!(
            s,
            "## Policy {}: {}\n",
            md_escape(&r.policy),
            r.result.as_str().to_uppercase()
        );
        let _ = writeln!(
            s,
            "| target | snapshot | result | seconds | MB/s | age (RPO) | error |"
        );
        let _ = writeln!(s, "| --- | --- | --- | ---: | ---: | ---: | --- |");
        for t in &r.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                md_escape(&t.target),
                md_escape(t.snapshot.as_deref().unwrap_or("-")),
                t.result,
                seconds(t),
                mbps(t),
                age(t),
                md_escape(t.error.as_deref().unwrap_or(""))
            );
        }
        s.push('\n');
        for t in &r.targets {
            md_target(&mut s, t);
        }
        if !r.problems.is_empty() {
            let _ = writeln!(s, "Problems:\n");
            for p in &r.problems {
                let _ = writeln!(s, "- {}", md_escape(p));
            }
            s.push('\n');
        }
    }
    if !rep.failed.is_empty() {
        let _ = writeln!(s, "## Policies not drilled\n");
        for (p, why) in rep.failed {
            let _ = writeln!(s, "- {}: {}", md_escape(p), md_escape(why));
        }
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------

/// Text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    escaped(s, |c, out| match c {
        '\'' => out.push_str("&#39;"),
        c => out.push(c),
    })
}

/// Lines for a `<pre>` block, each escaped.
fn html_lines(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| html_escape(l))
        .collect::<Vec<_>>()
        .join("\n")
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:1em 0;max-width:100%}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;overflow-wrap:anywhere}\
td.n{text-align:right}.ok{color:#176f2c;font-weight:bold}.failed{color:#b00020;font-weight:bold}\
.missing,.unreachable,.partial{color:#a65e00;font-weight:bold}\
pre{background:#f4f4f4;padding:8px;overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere}svg{background:#fafafa;border:1px solid #ddd}\
.muted{color:#666}";

fn status_class(s: &str) -> &'static str {
    match s {
        "ok" => "ok",
        "failed" => "failed",
        "missing" => "missing",
        "unreachable" => "unreachable",
        _ => "partial",
    }
}

/// Dots for the restore points of each target, on one time axis.
fn points_svg(r: &DrillResult) -> String {
    let rows: Vec<(&str, Vec<i64>)> = r
        .targets
        .iter()
        .map(|t| {
            (
                t.target.as_str(),
                t.restore_points
                    .iter()
                    .filter_map(|p| DateTime::parse_from_rfc3339(p).ok())
                    .map(|p| p.timestamp())
                    .collect(),
            )
        })
        .collect();
    let all: Vec<i64> = rows.iter().flat_map(|r| r.1.iter().copied()).collect();
    let (w, left, right, row_h, top) = (900.0f64, 160.0f64, 30.0f64, 36.0f64, 20.0f64);
    let h = top + row_h * rows.len().max(1) as f64 + 40.0;
    let mut s = format!(
        "<svg role=\"img\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\"><title>Restore points over time per target</title>"
    );
    let (lo, hi) = match (all.iter().min(), all.iter().max()) {
        (Some(&a), Some(&b)) if b > a => (a, b),
        (Some(&a), _) => (a - 3600, a + 3600),
        _ => (0, 1),
    };
    let x = |t: i64| left + (w - left - right) * (t - lo) as f64 / (hi - lo) as f64;
    let axis_y = top + row_h * rows.len().max(1) as f64;
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#888\"/>",
        w - right
    );
    for (t, anchor) in [(lo, "start"), (hi, "end")] {
        let label = DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"{anchor}\" fill=\"#444\">{}</text>",
            x(t),
            axis_y + 18.0,
            html_escape(&label)
        );
    }
    for (i, (name, pts)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64 + row_h / 2.0;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"end\" fill=\"#222\">{}</text>\
             <line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
            left - 10.0,
            y + 4.0,
            html_escape(name),
            w - right
        );
        for p in pts {
            let label = DateTime::from_timestamp(*p, 0)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default();
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"6\" fill=\"#2b6cb0\"><title>{}</title></circle>",
                x(*p),
                html_escape(&label)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A bar per target: its restore seconds.
fn durations_svg(r: &DrillResult) -> String {
    let (w, left, right, bar_h, gap, top) = (900.0f64, 160.0f64, 90.0f64, 24.0f64, 12.0f64, 10.0);
    let n = r.targets.len().max(1) as f64;
    let h = top + (bar_h + gap) * n + 10.0;
    let max = r
        .targets
        .iter()
        .map(|t| t.seconds)
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let mut s = format!(
        "<svg role=\"img\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\"><title>Restore duration per target (seconds)</title>"
    );
    for (i, t) in r.targets.iter().enumerate() {
        let y = top + (bar_h + gap) * i as f64;
        let bw = ((w - left - right) * t.seconds / max).max(1.0);
        let fill = match t.result {
            CheckStatus::Ok => "#2f855a",
            CheckStatus::Failed => "#c53030",
            _ => "#dd6b20",
        };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"end\" fill=\"#222\">{}</text>\
             <rect x=\"{left}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bar_h}\" fill=\"{fill}\"><title>{}: {:.3} s ({})</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#222\">{:.2} s</text>",
            left - 10.0,
            y + bar_h / 2.0 + 4.0,
            html_escape(&t.target),
            html_escape(&t.target),
            t.seconds,
            t.result,
            left + bw + 6.0,
            y + bar_h / 2.0 + 4.0,
            t.seconds
        );
    }
    s.push_str("</svg>");
    s
}

/// One target's section of the HTML report (every string escaped).
fn html_target(s: &mut String, t: &TargetDrill) {
    let e = html_escape;
    let _ = writeln!(
        s,
        "<h3>Target {}</h3>\n<p>{} target, location {}; snapshot {} taken {}: {} \
             restored in {} s; {} restore points.</p>",
        e(&t.target),
        e(&t.kind),
        e(&t.location),
        e(t.snapshot.as_deref().unwrap_or("-")),
        e(&short(t.snapshot_time.as_deref())),
        e(&crate::util::human_bytes(t.bytes)),
        seconds(t),
        t.restore_points.len()
    );
    if !t.sources.is_empty() {
        s.push_str(
            "<table><thead><tr><th>source</th><th>type</th><th>bytes</th><th>files</th>\
                 <th>result</th><th>rows checked</th><th>problems</th></tr></thead><tbody>\n",
        );
        for src in &t.sources {
            let rows: Vec<String> = src
                .rows
                .iter()
                .map(|(k, n)| format!("{}: {n}", e(k)))
                .collect();
            let probs: Vec<String> = src.problems.iter().map(|p| e(p)).collect();
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                     <td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                e(&src.name),
                e(&src.kind),
                src.bytes,
                src.files,
                status_class(src.result.as_str()),
                src.result,
                rows.join("<br>"),
                probs.join("<br>")
            );
        }
        s.push_str("</tbody></table>\n");
    }
    if !t.commands.backupctl.is_empty() {
        let _ = writeln!(
            s,
            "<p>Restore by hand with backupctl:</p><pre>{}</pre>\n<p>With stock tools \
                 (sh, tail, head, zstd, tar; see RESTORE-README.txt at the target's \
                 root):</p><pre>{}</pre>",
            html_lines(&t.commands.backupctl),
            html_lines(&t.commands.stock)
        );
    }
}

fn html(rep: &Report<'_>) -> String {
    let (results, now) = (rep.results, rep.now);
    let e = html_escape;
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Recovery drill {}</title><style>{CSS}</style></head><body>\n\
         <h1>Recovery drill</h1>\n<p class=\"muted\">Drill of {}, backupctl {}. RTO: how long \
         the restore from each target took; RPO: how old the restored data was.</p>\n",
        e(&crate::util::short_time(now)),
        e(&crate::util::short_time(now)),
        env!("CARGO_PKG_VERSION")
    );
    for r in results {
        let res = r.result.as_str();
        let _ = write!(
            s,
            "<section><h2>Policy {}: <span class=\"{}\">{}</span></h2>\n<table><thead><tr>\
             <th>target</th><th>snapshot</th><th>result</th><th>seconds</th><th>MB/s</th>\
             <th>age (RPO)</th><th>error</th></tr></thead><tbody>\n",
            e(&r.policy),
            status_class(res),
            e(&res.to_uppercase())
        );
        for t in &r.targets {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                e(&t.target),
                e(t.snapshot.as_deref().unwrap_or("-")),
                status_class(t.result.as_str()),
                t.result,
                seconds(t),
                mbps(t),
                e(&age(t)),
                e(t.error.as_deref().unwrap_or(""))
            );
        }
        s.push_str("</tbody></table>\n<h3>Restore points over time</h3>\n");
        s.push_str(&points_svg(r));
        s.push_str("\n<h3>Restore duration per target</h3>\n");
        s.push_str(&durations_svg(r));
        s.push('\n');
        for t in &r.targets {
            html_target(&mut s, t);
        }
        if !r.problems.is_empty() {
            s.push_str("<h3>Problems</h3><ul>\n");
            for p in &r.problems {
                let _ = writeln!(s, "<li>{}</li>", e(p));
            }
            s.push_str("</ul>\n");
        }
        s.push_str("</section>\n");
    }
    if !rep.failed.is_empty() {
        s.push_str("<section><h2 class=\"failed\">Policies not drilled</h2><ul>\n");
        for (p, why) in rep.failed {
            let _ = writeln!(s, "<li>{}: {}</li>", e(p), e(why));
        }
        s.push_str("</ul></section>\n");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            html_escape("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
        assert_eq!(md_escape("a|b<i>"), "a\\|b&lt;i&gt;");
        assert_eq!(md_code("x ``` y").lines().next(), Some("````sh"));
        assert_eq!(human_age(90061), "1d 1h");
        assert_eq!(human_age(3700), "1h 1m");
        assert_eq!(Format::of(Path::new("a.HTML")), Some(Format::Html));
        assert_eq!(Format::of(Path::new("a.txt")), None);
    }
}
