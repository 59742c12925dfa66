//! `report.html`: the run as one page to open from a CI artifact: the verdicts with where
//! the tasks wait, a timeline, the accumulation table with a sparkline per column, and
//! links to the evidence files.
//!
//! One self-contained file: inline CSS and SVG, no script, no font, nothing fetched (its
//! Content-Security-Policy forbids any load), so it opens the same from a laptop, an
//! artifact store or a mail attachment. Links to the evidence are relative to the run
//! directory, where the page lives, so they survive the directory being copied whole.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::accumulation;
use super::timeline::{MarkKind, Timeline};
use super::{Report, ShutdownOutcome, TestOutcome, Verdict};
use crate::analysis::{Leak, MeasureKind};

/// Text made safe for HTML content and attribute values.
fn esc(s: &str) -> String {
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

/// A link to `file`, relative to the run directory when it lies inside it.
fn link(run_dir: &Path, file: &Path) -> String {
    let shown = file.strip_prefix(run_dir).unwrap_or(file);
    let mut href = String::new();
    if shown.is_absolute() {
        href.push_str("file://");
    }
    for b in shown.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' | b'~' | b':' => href.push(b as char),
            b => {
                let _ = write!(href, "%{b:02X}");
            }
        }
    }
    format!("<a href=\"{}\">{}</a>", esc(&href), esc(&shown.to_string_lossy()))
}

fn seconds(ms: u64) -> String {
    format!("{:.3} s", ms as f64 / 1000.0)
}

fn outcome_class(outcome: TestOutcome) -> &'static str {
    match outcome {
        TestOutcome::Passed => "passed",
        TestOutcome::Failed | TestOutcome::SpawnFailed => "failed",
        TestOutcome::Hung => "hung",
        TestOutcome::Interrupted => "interrupted",
        TestOutcome::Ignored => "ignored",
    }
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd}
code,.mono,td{font-family:ui-monospace,monospace;font-size:12.5px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.v-ok{background:#2e7d32}.v-leaks{background:#c77700}.v-hang{background:#8e0000}
.v-tests-failed,.v-setup-error{background:#c62828}.v-interrupted{background:#666}
.finding{border-left:4px solid #999;padding:4px 12px;margin:10px 0;background:#fafafa}
.finding h3{font-size:14px;margin:2px 0}.finding p,.finding ul{margin:2px 0}
.finding.hang,.finding.stall,.finding.shutdown{border-color:#8e0000}.finding.leak{border-color:#c77700}
.finding.failed,.finding.error{border-color:#c62828}.finding.ok{border-color:#2e7d32}
.tag{font-weight:700}.hang .tag,.stall .tag,.shutdown .tag{color:#8e0000}.leak .tag{color:#c77700}
.failed .tag,.error .tag{color:#c62828}.ok .tag{color:#2e7d32}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}
th{font-size:12px;position:sticky;top:0;background:#fff}td.name,th.name{text-align:left}
td.passed{color:#2e7d32}td.failed{color:#c62828}td.hung{color:#8e0000;font-weight:700}
.up{color:#c77700;font-weight:600}nav a{margin-right:12px}.dim{color:#777}
svg text{font:11px system-ui,sans-serif;fill:#333}
";

/// The page of a run.
pub fn render(timeline: &Timeline, report: &Report) -> String {
    let mut h = String::new();
    let verdict = serde_json::to_value(report.verdict).ok().and_then(|v| v.as_str().map(str::to_owned));
    let verdict = verdict.unwrap_or_default();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>hangcheck: {} — {}</title><style>{STYLE}</style></head><body>\n",
        esc(&report.package),
        esc(&verdict)
    );
    header(&mut h, report, &verdict);
    findings(&mut h, report);
    h.push_str("<h2 id=\"timeline\">Timeline</h2>\n");
    svg_timeline(&mut h, timeline, report);
    table(&mut h, timeline, report);
    let _ = write!(
        h,
        "<p class=\"dim\">The same run in Perfetto: open <code>trace.json</code> at ui.perfetto.dev (it reads the \
         file in the browser and uploads nothing) or in chrome://tracing. hangcheck {}.</p>\n</body></html>\n",
        esc(&report.hangcheck_version)
    );
    h
}

fn header(h: &mut String, report: &Report, verdict: &str) {
    let tally = report.tally();
    let _ = write!(
        h,
        "<h1>hangcheck · {}</h1>\n<p><span class=\"verdict v-{verdict}\" id=\"verdict\">{}</span> exit code {} · \
         {} tests: {} passed, {} failed, {} hung · {} leak(s) · {} stall(s) · shutdown {} · {}</p>\n",
        esc(&report.package),
        esc(&verdict.to_uppercase()),
        report.exit_code,
        report.tests.len(),
        tally.passed,
        tally.failed,
        tally.hung,
        report.leaks.len(),
        report.stalls.len(),
        report.shutdown.outcome.name(),
        seconds(report.duration_ms),
    );
    let _ = write!(
        h,
        "<p class=\"dim\">server <code>{}</code>{}, {} build · run directory <code>{}</code></p>\n<nav>",
        esc(&report.server.bin),
        report.server.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        if report.server.tokio_unstable { "tokio_unstable" } else { "--stable" },
        esc(&report.run_dir.to_string_lossy()),
    );
    let dir = &report.run_dir;
    // The run's files that exist (the page is written last, so they are all there).
    let names = ["report.json", "trace.json", "junit.xml", "snapshots.jsonl", "server.log", "leaks.stacks.txt"];
    for name in names.into_iter().filter(|n| dir.join(n).exists()) {
        h.push_str(&link(dir, &dir.join(name)));
    }
    h.push_str("</nav>\n");
}

fn files(h: &mut String, run_dir: &Path, label: &str, files: &[std::path::PathBuf]) {
    if files.is_empty() {
        return;
    }
    let links: Vec<String> = files.iter().map(|f| link(run_dir, f)).collect();
    let _ = write!(h, "<p>{label}: {}</p>", links.join(" · "));
}

fn leak_subject(leak: &Leak) -> String {
    let group = esc(&leak.group);
    match (leak.kind, leak.location.as_deref()) {
        (MeasureKind::Location, _) => format!("tasks spawned at <code>{group}</code>"),
        (MeasureKind::Named, Some(l)) => {
            format!("task group <code>`{group}`</code>, spawned at <code>{}</code>", esc(l))
        }
        (MeasureKind::Named, None) => format!("task group <code>`{group}`</code>"),
        (MeasureKind::Operation, _) => {
            format!("operations <code>`{}`</code> still in flight", esc(leak.group.trim_start_matches("op:")))
        }
        (MeasureKind::Fd, _) => format!("open file descriptors <code>{group}</code>"),
        (MeasureKind::Threads, _) => "threads".to_owned(),
    }
}

fn waiting_list(h: &mut String, waiting: &[crate::culprit::Waiting]) {
    if waiting.is_empty() {
        return;
    }
    h.push_str("<ul class=\"waiting\">");
    for w in waiting {
        let _ = write!(h, "<li class=\"mono\">{}</li>", esc(&w.describe()));
    }
    h.push_str("</ul>");
}

/// Every finding, the most severe first: hangs, stalls, shutdown, failures, leaks.
fn findings(h: &mut String, report: &Report) {
    let dir = &report.run_dir;
    h.push_str("<h2 id=\"verdicts\">Verdicts</h2>\n");
    if let Some(error) = &report.error {
        let _ =
            writeln!(h, "<div class=\"finding error\"><h3><span class=\"tag\">ERROR</span> {}</h3></div>", esc(error));
    }
    for t in report.tests.iter().filter(|t| t.outcome == TestOutcome::Hung) {
        let _ = write!(
            h,
            "<div class=\"finding hang\"><h3><span class=\"tag\">HANG</span> test <code>{}</code></h3>\
             <p>still running after {}; its stacks were taken ({}) and written before it was stopped</p>",
            esc(&t.id),
            seconds(t.duration_ms),
            t.stacks_source.map(|s| format!("{s:?}").to_lowercase()).unwrap_or_else(|| "none".into()),
        );
        waiting_list(h, &t.waiting);
        for thread in &t.blocked_threads {
            let _ = write!(h, "<p class=\"mono\">thread blocked: {}</p>", esc(thread));
        }
        if !t.last_events.is_empty() {
            h.push_str("<p>what its tasks did last (flight recorder):</p><ul class=\"last\">");
            for line in &t.last_events {
                let _ = write!(h, "<li class=\"mono\">{}</li>", esc(line));
            }
            h.push_str("</ul>");
        }
        files(h, dir, "evidence", &t.evidence);
        files(h, dir, "log", std::slice::from_ref(&t.log));
        h.push_str("</div>\n");
    }
    for s in &report.stalls {
        let _ = write!(
            h,
            "<div class=\"finding stall\"><h3><span class=\"tag\">STALL</span> worker {} “{}” stuck in one poll \
             for {} ms (threshold {} ms){}</h3>",
            s.tid,
            esc(&s.thread),
            s.stuck_ms,
            s.threshold_ms,
            s.test.as_deref().map(|t| format!(" during <code>{}</code>", esc(t))).unwrap_or_default(),
        );
        if let Some(task) = &s.task {
            let _ = write!(
                h,
                "<p>task {} of group <code>`{}`</code>{}</p>",
                task.id,
                esc(task.group.as_deref().unwrap_or("?")),
                task.location.as_deref().map(|l| format!(" spawned at <code>{}</code>", esc(l))).unwrap_or_default(),
            );
        }
        if let Some(culprit) = &s.blocked_in {
            let _ = write!(h, "<p class=\"mono\">blocked in {}</p>", esc(culprit));
        }
        files(h, dir, "stack", s.file.as_slice());
        h.push_str("</div>\n");
    }
    if report.shutdown.outcome == ShutdownOutcome::Hung {
        h.push_str(
            "<div class=\"finding shutdown\"><h3><span class=\"tag\">SHUTDOWN HANG</span> the server was still \
             running after the grace period and was killed</h3><ul>",
        );
        for s in &report.shutdown.survivors {
            let _ = write!(
                h,
                "<li><code>{}</code>{}: {} alive{}</li>",
                esc(&s.group),
                s.location.as_deref().map(|l| format!(" at <code>{}</code>", esc(l))).unwrap_or_default(),
                s.live,
                s.oldest_age_ms.map(|a| format!(", oldest {}", seconds(a))).unwrap_or_default(),
            );
        }
        h.push_str("</ul>");
        files(h, dir, "evidence", &report.shutdown.evidence);
        h.push_str("</div>\n");
    }
    for t in report.tests.iter().filter(|t| matches!(t.outcome, TestOutcome::Failed | TestOutcome::SpawnFailed)) {
        let _ = write!(
            h,
            "<div class=\"finding failed\"><h3><span class=\"tag\">FAIL</span> <code>{}</code></h3>",
            esc(&t.id)
        );
        if let Some(detail) = &t.detail {
            let _ = write!(h, "<p>{}</p>", esc(detail));
        }
        if let Some(panic) = &t.panic {
            let _ = write!(
                h,
                "<p>panicked at <code>{}</code></p><pre>{}</pre>",
                esc(panic.location.as_deref().unwrap_or("?")),
                esc(&panic.message)
            );
        }
        files(h, dir, "log", std::slice::from_ref(&t.log));
        h.push_str("</div>\n");
    }
    for leak in &report.leaks {
        let by: Vec<String> =
            leak.leaked_by.iter().map(|b| format!("<code>{}</code> ({})", esc(&b.test), b.count)).collect();
        let _ = write!(
            h,
            "<div class=\"finding leak\"><h3><span class=\"tag\">LEAK</span> {}</h3>\
             <p>live {} → {} (+{}, allowed {}){}</p><p>leaked by: {}</p>",
            leak_subject(leak),
            leak.baseline,
            leak.final_live,
            leak.growth,
            leak.allowed,
            leak.oldest_age_ms.map(|a| format!(", oldest {}", seconds(a))).unwrap_or_default(),
            by.join(", "),
        );
        waiting_list(h, &leak.waiting);
        if !leak.waiting.is_empty() {
            files(h, dir, "stacks", &[dir.join("leaks.stacks.txt")]);
        }
        h.push_str("</div>\n");
    }
    for c in &report.concurrent_ops {
        let _ = writeln!(
            h,
            "<div class=\"finding leak\"><h3><span class=\"tag\">CONCURRENT</span> {} operations <code>`{}`</code> \
             in flight at once for key <code>{}</code></h3><p>started in {}</p></div>",
            c.max_in_flight,
            esc(&c.kind),
            esc(&c.key),
            esc(&c.tests.join(", ")),
        );
    }
    for l in &report.leftover_processes {
        let _ = writeln!(
            h,
            "<div class=\"finding leak\"><h3><span class=\"tag\">LEFTOVER</span> process {} <code>{}</code></h3>\
             <p>started by {}, found after {}, {}</p></div>",
            l.pid,
            esc(&l.command),
            esc(&l.started_by),
            esc(&l.found_after),
            l.ended
        );
    }
    if report.verdict == Verdict::Ok {
        h.push_str(
            "<div class=\"finding ok\"><h3><span class=\"tag\">OK</span> every test passed; nothing leaked or \
             hung</h3></div>\n",
        );
    }
}

/// A line of `values` scaled into `width` × `height`, for a table's sparkline.
fn sparkline(values: &[Option<i128>], width: f64, height: f64) -> String {
    let known: Vec<(usize, i128)> = values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i, v))).collect();
    let (Some(min), Some(max)) = (known.iter().map(|k| k.1).min(), known.iter().map(|k| k.1).max()) else {
        return String::new();
    };
    let span = (max - min).max(1) as f64;
    let step = width / (values.len().max(2) - 1) as f64;
    let points: Vec<String> = known
        .iter()
        .map(|&(i, v)| format!("{:.1},{:.1}", i as f64 * step, height - 1.0 - (v - min) as f64 / span * (height - 2.0)))
        .collect();
    format!(
        "<svg class=\"spark\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">\
         <title>{min} → {max}</title><polyline fill=\"none\" stroke=\"#c77700\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        points.join(" ")
    )
}

/// The accumulation table: the terminal's, with a sparkline under each column.
fn table(h: &mut String, timeline: &Timeline, report: &Report) {
    h.push_str(
        "<h2 id=\"accumulation\">Accumulation</h2>\n<p class=\"dim\">After each test, settled: live tasks per group; \
         op: operations in flight; fd: open descriptors; threads; # counters; ~ gauges.</p>\n",
    );
    let Some(baseline) = report.baseline.as_ref() else {
        h.push_str("<p>no baseline: the server never answered</p>\n");
        return;
    };
    let rows: Vec<Option<&hangcheck_runtime::protocol::Snapshot>> =
        std::iter::once(Some(baseline)).chain(timeline.tests.iter().map(|t| t.snapshot.as_ref())).collect();
    let columns = accumulation::columns(&rows);
    if columns.is_empty() {
        h.push_str("<p>nothing moved: no task group, operation, descriptor, thread, counter or gauge changed</p>\n");
        return;
    }
    h.push_str("<table><thead><tr><th>#</th><th class=\"name\">test</th><th class=\"name\">result</th>");
    for c in &columns {
        let _ = write!(h, "<th>{}</th>", esc(&c.title));
    }
    h.push_str("</tr></thead><tbody>\n");
    let cells: Vec<Vec<String>> = columns.iter().map(|c| accumulation::cells(&c.values)).collect();
    for i in 0..rows.len() {
        let (name, outcome) = match i {
            0 => ("(baseline)".to_owned(), None),
            _ => (timeline.tests[i - 1].id.clone(), Some(timeline.tests[i - 1].outcome)),
        };
        let _ = write!(
            h,
            "<tr><td>{i}</td><td class=\"name\">{}</td><td class=\"name {}\">{}</td>",
            esc(&name),
            outcome.map_or("", outcome_class),
            outcome.map_or("", TestOutcome::name)
        );
        for cs in &cells {
            let up = cs[i].contains("(+");
            let _ = write!(h, "<td{}>{}</td>", if up { " class=\"up\"" } else { "" }, esc(&cs[i]));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("<tr><td></td><td class=\"name dim\">trend</td><td></td>");
    for c in &columns {
        let _ = write!(h, "<td>{}</td>", sparkline(&c.values, 90.0, 20.0));
    }
    h.push_str("</tr></tbody></table>\n");
}

/// The timeline as inline SVG: tests coloured by outcome, settling, stalls per worker,
/// hangs and evidence as marks, the shutdown, and a line per task group that moved.
fn svg_timeline(h: &mut String, timeline: &Timeline, report: &Report) {
    const LEFT: f64 = 150.0;
    const WIDTH: f64 = 1100.0;
    const ROW: f64 = 22.0;
    const CHART: f64 = 44.0;
    let end = timeline.end.max(Duration::from_millis(1)).as_secs_f64();
    let x = |d: Duration| LEFT + d.as_secs_f64() / end * (WIDTH - LEFT - 40.0);
    let w = |from: Duration, to: Duration| (x(to) - x(from)).max(1.5);
    let mut body = String::new();
    let mut y = 20.0;
    let label = |body: &mut String, y: f64, text: &str| {
        let _ = write!(body, "<text x=\"4\" y=\"{:.1}\">{}</text>", y + ROW * 0.65, esc(text));
    };

    label(&mut body, y, "tests");
    for t in &timeline.tests {
        let colour = match t.outcome {
            TestOutcome::Passed => "#43a047",
            TestOutcome::Failed | TestOutcome::SpawnFailed => "#e53935",
            TestOutcome::Hung => "#8e0000",
            TestOutcome::Interrupted | TestOutcome::Ignored => "#9e9e9e",
        };
        let width = w(t.start, t.start + t.duration);
        let _ = write!(
            body,
            "<rect class=\"test {}\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"{colour}\">\
             <title>{} — {} in {:.3} s</title></rect>",
            outcome_class(t.outcome),
            x(t.start),
            ROW - 4.0,
            esc(&t.id),
            t.outcome.name(),
            t.duration.as_secs_f64()
        );
        if width > 8.0 * t.id.chars().count() as f64 * 0.7 {
            let _ = write!(
                body,
                "<text x=\"{:.1}\" y=\"{:.1}\" style=\"fill:#fff\">{}</text>",
                x(t.start) + 3.0,
                y + ROW * 0.6,
                esc(&t.id)
            );
        }
    }
    y += ROW;
    label(&mut body, y, "settling");
    for t in &timeline.tests {
        let ran = t.start + t.duration;
        if t.settled > ran {
            let _ = write!(
                body,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#b0bec5\"><title>settling after \
                 {}: {:.3} s</title></rect>",
                x(ran),
                w(ran, t.settled),
                ROW - 8.0,
                esc(&t.id),
                (t.settled - ran).as_secs_f64()
            );
        }
    }
    let mut workers: Vec<(u32, &str)> = Vec::new();
    for s in &timeline.stalls {
        if !workers.iter().any(|w| w.0 == s.tid) {
            workers.push((s.tid, &s.thread));
        }
    }
    for (tid, thread) in workers {
        y += ROW;
        label(&mut body, y, &format!("{thread} {tid}"));
        for s in timeline.stalls.iter().filter(|s| s.tid == tid) {
            let _ = write!(
                body,
                "<rect class=\"stall\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#6a1b9a\"><title>stall: \
                 stuck {} ms{}{}</title></rect>",
                x(s.start),
                w(s.start, s.start + s.duration),
                ROW - 4.0,
                s.duration.as_millis(),
                s.task.as_deref().map(|t| format!(" in {}", esc(t))).unwrap_or_default(),
                s.blocked_in.as_deref().map(|b| format!(", blocked in {}", esc(b))).unwrap_or_default(),
            );
        }
    }
    if let Some(stop) = &timeline.shutdown {
        y += ROW;
        label(&mut body, y, "shutdown");
        let colour = if stop.outcome == ShutdownOutcome::Hung { "#8e0000" } else { "#90a4ae" };
        let _ = write!(
            body,
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>shutdown: {}</title></rect>",
            x(stop.start),
            w(stop.start, stop.end),
            ROW - 4.0,
            stop.outcome.name()
        );
    }
    let moved: Vec<(String, Option<String>)> = timeline
        .groups()
        .into_iter()
        .filter(|(key, _)| {
            let values: Vec<u64> = timeline
                .samples
                .iter()
                .map(|s| s.snapshot.groups.iter().find(|g| g.key == *key).map_or(0, |g| g.live))
                .collect();
            values.windows(2).any(|w| w[0] != w[1]) || report.leaks.iter().any(|l| l.group == *key)
        })
        .take(8)
        .collect();
    for (key, _) in &moved {
        y += ROW + 4.0;
        let values: Vec<(Duration, u64)> = timeline
            .samples
            .iter()
            .map(|s| (s.at, s.snapshot.groups.iter().find(|g| g.key == *key).map_or(0, |g| g.live)))
            .collect();
        let max = values.iter().map(|v| v.1).max().unwrap_or(0).max(1) as f64;
        let level = |v: u64| y + CHART - 2.0 - v as f64 / max * (CHART - 6.0);
        let mut points = String::new();
        let mut previous: Option<f64> = None;
        for &(at, v) in &values {
            if let Some(p) = previous {
                let _ = write!(points, "{:.1},{p:.1} ", x(at));
            }
            let _ = write!(points, "{:.1},{:.1} ", x(at), level(v));
            previous = Some(level(v));
        }
        if let Some(p) = previous {
            let _ = write!(points, "{:.1},{p:.1}", x(timeline.end));
        }
        let short = key.rsplit('/').next().unwrap_or(key);
        label(&mut body, y, &format!("tasks {short}"));
        let _ = write!(
            body,
            "<text x=\"4\" y=\"{:.1}\" class=\"dim\">max {}</text><polyline class=\"group\" fill=\"none\" \
             stroke=\"#c77700\" stroke-width=\"1.5\" points=\"{points}\"><title>live tasks of {} at each settled \
             snapshot</title></polyline>",
            y + ROW * 0.65 + 14.0,
            max as u64,
            esc(key)
        );
        y += CHART - ROW;
    }
    let bottom = y + ROW + 4.0;
    for m in &timeline.marks {
        let (colour, what) = match m.kind {
            MarkKind::Hang => ("#d50000", "hang"),
            MarkKind::Evidence => ("#1565c0", "evidence written"),
            MarkKind::Leftover => ("#6d4c41", "leftover"),
        };
        let files: Vec<String> = m.files.iter().map(|f| f.to_string_lossy().into_owned()).collect();
        let _ = write!(
            body,
            "<line class=\"mark {what}\" x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"14\" y2=\"{bottom:.1}\" \
             stroke=\"{colour}\" stroke-width=\"1.5\" stroke-dasharray=\"4 2\"><title>{what}: {name} {files}</title>\
             </line><path d=\"M{at:.1},14 l-5,-8 h10 z\" fill=\"{colour}\"><title>{what}: {name}</title></path>",
            at = x(m.at),
            name = esc(&m.name),
            files = esc(&files.join(", ")),
        );
    }
    // Seconds along the bottom.
    let step = [0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]
        .into_iter()
        .find(|s| end / s <= 12.0)
        .unwrap_or(600.0);
    let mut t = 0.0;
    while t <= end {
        let px = x(Duration::from_secs_f64(t));
        let _ = write!(
            body,
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{bottom:.1}\" y2=\"{:.1}\" stroke=\"#999\"/><text x=\"{:.1}\" \
             y=\"{:.1}\">{t:.3}s</text>",
            bottom + 4.0,
            px - 8.0,
            bottom + 16.0
        );
        t += step;
    }
    let height = bottom + 24.0;
    let _ = write!(
        h,
        "<svg id=\"timeline-svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" \
         role=\"img\" aria-label=\"timeline of the run\">{body}</svg>\n<p class=\"dim\">Hover for details. Red marks: \
         hangs; blue: evidence written; orange lines: live tasks per group at each settled snapshot.</p>\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::aggregate::Aggregator;
    use crate::report::timeline::tests::sample_run;

    #[test]
    fn text_is_escaped_and_links_are_relative_to_the_run_directory() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let dir = Path::new("/runs/1");
        assert_eq!(
            link(dir, Path::new("/runs/1/hangs/e2e.a b.stacks.txt")),
            "<a href=\"hangs/e2e.a%20b.stacks.txt\">hangs/e2e.a b.stacks.txt</a>"
        );
        assert_eq!(
            link(dir, Path::new("/elsewhere/x.txt")),
            "<a href=\"file:///elsewhere/x.txt\">/elsewhere/x.txt</a>"
        );
    }

    #[test]
    fn the_page_is_self_contained_and_shows_the_tests_on_its_timeline() {
        let timeline = sample_run();
        let report = Aggregator::default().finish(Duration::from_secs(5));
        let page = render(&timeline, &report);
        // Nothing to fetch: no script, no external reference, a policy that forbids loads.
        assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("@import"), "{page}");
        assert!(!page.contains("http://") && !page.contains("https://"), "{page}");
        assert!(page.contains("default-src 'none'"));
        assert_eq!(page.matches("<rect class=\"test ").count(), 3);
        assert_eq!(page.matches("<rect class=\"test hung\"").count(), 1);
        assert_eq!(page.matches("<line class=\"mark hang\"").count(), 1);
        assert!(page.contains("<polyline class=\"group\""), "a line for the waiter group");
    }

    #[test]
    fn sparklines_span_the_column_from_min_to_max() {
        let line = sparkline(&[Some(0), Some(2), None, Some(4)], 30.0, 20.0);
        assert!(line.contains("points=\"0.0,19.0 10.0,10.0 30.0,1.0\""), "{line}");
        assert_eq!(sparkline(&[None, None], 30.0, 20.0), "");
    }
}
