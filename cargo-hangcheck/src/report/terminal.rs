//! What a person sees: status lines as the run goes, a line per test as it finishes, then
//! the accumulation table, the verdicts and a summary.
//!
//! [`Displayer`] is the run's terminal [`Reporter`]; the free functions serve the other
//! commands (`run`, `stacks`, `snapshot`) too. Output goes through `anstream`, which drops
//! the colour when the stream is not a terminal, when `NO_COLOR` is set, or with
//! `--color never`, so CI logs stay plain. Results go to stdout and status to stderr,
//! unless stdout carries `--message-format json`, when everything here goes to stderr.

use std::io::Write;
use std::time::Duration;

use anstream::eprintln;
use anstyle::{AnsiColor, Style};
use hangcheck_runtime::protocol::{Announcement, Snapshot};

use super::accumulation;
use super::{
    CounterEntry, Report, Reporter, ShutdownEntry, ShutdownOutcome, SlowOps, StallEntry, TestEntry, TestOutcome,
    TestRecord,
};
use crate::analysis::{ConcurrentOps, Handovers, Leak, MeasureKind, StartupGrowth};
use crate::errors::SetupError;
use crate::event::Event;

/// Writes a line to a result stream; a closed stream must not stop the run.
macro_rules! say {
    ($out:expr) => {{ let _ = writeln!($out); }};
    ($out:expr, $($arg:tt)*) => {{ let _ = writeln!($out, $($arg)*); }};
}

/// One row of the accumulation table, as the displayer folds it.
struct Row {
    id: String,
    /// `None` for the baseline of a round's fresh server (`--fresh-server`).
    outcome: Option<TestOutcome>,
    snapshot: Option<Snapshot>,
}

/// The run's terminal output.
#[derive(Default)]
pub struct Displayer {
    /// Results go to stderr (stdout carries JSON lines).
    to_stderr: bool,
    /// The run got as far as a run directory (so there is a report to point to).
    started: bool,
    tokio_unstable: bool,
    test_count: usize,
    /// `--stress N`: copies of each test at once.
    stress: u32,
    baseline: Option<Snapshot>,
    rows: Vec<Row>,
    /// The latest settled snapshot, to show what each test added.
    last: Option<Snapshot>,
}

impl Displayer {
    /// A displayer writing results to stdout, or to stderr when `to_stderr`.
    pub fn new(to_stderr: bool) -> Displayer {
        Displayer { to_stderr, ..Displayer::default() }
    }

    fn out(&self) -> Box<dyn Write> {
        if self.to_stderr {
            Box::new(anstream::stderr())
        } else {
            Box::new(anstream::stdout())
        }
    }
}

impl Reporter for Displayer {
    fn event(&mut self, event: &Event<'_>) {
        let mut out = self.out();
        match *event {
            Event::Building { package, server_bin, test_targets } => {
                status("Building", format!("{package} (server `{server_bin}`, tests {})", test_targets.join(", ")))
            }
            Event::RunStarted { server_bin, tokio_unstable, run_dir, tests, stress, .. } => {
                self.started = true;
                self.tokio_unstable = tokio_unstable;
                self.test_count = tests.iter().filter(|t| !t.ignored).count();
                self.stress = stress;
                status(
                    "Starting",
                    format!(
                        "{server_bin} ({}), run directory {}",
                        if tokio_unstable { "tokio_unstable" } else { "stable" },
                        run_dir.display()
                    ),
                );
            }
            Event::ServerReady { pid, addresses, runtimes, .. } => {
                // The variables the tests read, not only the names the server announced.
                let addrs: Vec<String> = addresses
                    .iter()
                    .map(|(name, addr)| {
                        let var = Announcement { name: name.clone(), addr: addr.clone() }.env_var();
                        format!("{var}={addr}")
                    })
                    .collect();
                let announced = if addrs.is_empty() { "nothing".to_owned() } else { addrs.join(" ") };
                let names: Vec<&str> = runtimes.iter().map(|r| r.name.as_str()).collect();
                let watched = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
                status("Ready", format!("pid {pid}, announced {announced}; runtimes watched: {watched}"));
            }
            Event::Startup { growth } => startup(growth),
            Event::StallEnded { .. } => {}
            Event::Baseline { snapshot } if self.baseline.is_some() => {
                // A round's fresh server: its tests' rows count from its own baseline.
                self.last = Some(snapshot.clone());
                let id = "(baseline of a fresh server)".to_owned();
                self.rows.push(Row { id, outcome: None, snapshot: Some(snapshot.clone()) });
            }
            Event::Baseline { snapshot } => {
                self.baseline = Some(snapshot.clone());
                self.last = Some(snapshot.clone());
                match self.stress {
                    0 | 1 if self.test_count == 1 => status("Running", "1 test"),
                    0 | 1 => status("Running", format!("{} tests, one at a time", self.test_count)),
                    n => status(
                        "Running",
                        format!("{} tests, one at a time, {n} copies of each at once", self.test_count),
                    ),
                }
            }
            Event::TestStarted { .. } => {}
            Event::TestHung { case } => {
                status("Hung", format!("{}: taking the server's stacks before stopping the test", case.id()))
            }
            Event::EvidenceWritten { .. } => {}
            Event::TestFinished { record } => {
                test_line(&mut out, record, self.last.as_ref());
                let (outcome, _) = TestOutcome::of(&record.run.outcome);
                self.rows.push(Row { id: record.case.id(), outcome: Some(outcome), snapshot: record.snapshot.clone() });
                if let Some(s) = &record.snapshot {
                    self.last = Some(s.clone());
                }
            }
            Event::Stall { stall: s } => stall(&mut out, s),
            Event::Leftover { leftover: l, after, file } => warn(format!(
                "LEFTOVER process {} `{}` started by {} was still running after {after}; {} ({})",
                l.pid,
                l.command,
                l.started_by,
                l.ended,
                file.display()
            )),
            Event::ProtocolError { message } => warn(format!("malformed message from the agent: {message}")),
            Event::FinalSnapshot { .. } | Event::Verdicts { .. } => {}
            Event::Shutdown { shutdown, grace } => {
                if shutdown.outcome == ShutdownOutcome::Hung {
                    shutdown_hang(&mut out, shutdown, grace);
                }
            }
            Event::Warning { message } => warn(message),
            Event::Warmup { case, run } => {
                let (outcome, _) = TestOutcome::of(&run.outcome);
                status(
                    "Warmup",
                    format!(
                        "{} {} in {:.3}s, before the baseline",
                        case.id(),
                        outcome.name(),
                        run.duration.as_secs_f64()
                    ),
                )
            }
            Event::Round { round, seed, chaos, .. } => {
                let seeds: Vec<String> =
                    [seed.map(|s| format!("--shuffle={s}")), chaos.map(|s| format!("--chaos={s}"))]
                        .into_iter()
                        .flatten()
                        .collect();
                match seeds.is_empty() {
                    true => status("Round", round),
                    false => status("Round", format!("{round} ({})", seeds.join(", "))),
                }
            }
            Event::SetupError { error } => setup_error(error),
        }
    }

    fn finished(&mut self, report: &Report) {
        if !self.started {
            // The error line said it all: nothing ran, and no report was written.
            return;
        }
        let mut out = self.out();
        if let (Some(baseline), None) = (&self.baseline, &report.error) {
            table(&mut out, baseline, &self.rows);
            if let Some(last) = &report.final_snapshot {
                watched(&mut out, baseline, last, &report.tests);
            }
            leaks(&mut out, &report.leaks, self.tokio_unstable);
            operations(&mut out, &report.concurrent_ops, &report.handovers, &report.tests, &report.slow_ops);
            counters(&mut out, &report.counters);
        }
        stall_summary(&mut out, &report.stalls);
        flakes(&mut out, report);
        summary(&mut out, report);
    }
}

/// The flake table of a repeated run: each test over the rounds.
fn flakes(out: &mut dyn Write, report: &Report) {
    let Some(rounds) = &report.rounds else { return };
    let seed = rounds.shuffle_seed.map(|s| format!(", --shuffle={s}")).unwrap_or_default();
    say!(out);
    say!(out, "{BOLD}Flakes{BOLD:#} over {} round{}{seed}", rounds.count, if rounds.count == 1 { "" } else { "s" });
    let width = report.flakes.iter().map(|f| f.id.chars().count()).max().unwrap_or(0).min(60);
    for f in &report.flakes {
        let style = if f.first_failure.is_some() { RED } else { GREEN };
        let first = f.first_failure.map(|r| format!("  first in round {r}{seed}")).unwrap_or_default();
        say!(
            out,
            "  {style}{:<width$}{style:#}  passed {}/{}, failed {}, hung {}, stalled {}{first}",
            truncate(&f.id, width),
            f.passed,
            f.rounds,
            f.failed,
            f.hung,
            f.stalled
        );
        for w in &f.waiting {
            say!(out, "      {}", w.describe());
        }
        if let Some(e) = f.evidence.first() {
            say!(out, "      {DIM}evidence: {}{DIM:#}", e.display());
        }
    }
}

/// What `cargo hangcheck merge` joined: the leaks and stalls of every shard, then the
/// summary of the whole.
pub fn show_merged(report: &Report) {
    let mut out = anstream::stdout();
    for path in &report.merged_from {
        say!(out, "{DIM}Merged {}{DIM:#}", path.display());
    }
    if !report.leaks.is_empty() {
        leaks(&mut out, &report.leaks, report.server.tokio_unstable);
    }
    stall_summary(&mut out, &report.stalls);
    summary(&mut out, report);
}

const GREEN: Style = AnsiColor::Green.on_default().bold();
const RED: Style = AnsiColor::Red.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default().bold();
const MAGENTA: Style = AnsiColor::Magenta.on_default().bold();
const DIM: Style = Style::new().dimmed();
const BOLD: Style = Style::new().bold();

/// A status line of the runner's own, cargo-style: a right-aligned verb.
pub fn status(verb: &str, message: impl std::fmt::Display) {
    eprintln!("{GREEN}{verb:>12}{GREEN:#} {message}");
}

/// A warning line.
pub fn warn(message: impl std::fmt::Display) {
    eprintln!("{YELLOW}warning{YELLOW:#}: {message}");
}

/// A setup error: its cause, and the lines that support it (the tail of the server log).
pub fn setup_error(e: &SetupError) {
    error(e, &e.detail());
}

/// An error line, with supporting lines indented below it.
pub fn error(message: impl std::fmt::Display, detail: &[String]) {
    eprintln!("{RED}error{RED:#}: {message}");
    for line in detail {
        eprintln!("  {DIM}|{DIM:#} {line}");
    }
}

/// The line printed as each test finishes: outcome, time, name, and the groups that grew.
fn test_line(out: &mut dyn Write, record: &TestRecord, previous: Option<&Snapshot>) {
    let (outcome, detail) = TestOutcome::of(&record.run.outcome);
    let (word, style) = match outcome {
        TestOutcome::Passed => ("PASS", GREEN),
        TestOutcome::Failed | TestOutcome::SpawnFailed => ("FAIL", RED),
        TestOutcome::Hung => ("HANG", MAGENTA),
        TestOutcome::Interrupted => ("STOP", YELLOW),
        TestOutcome::Ignored => ("SKIP", YELLOW),
    };
    let mut grew = String::new();
    if let (Some(now), Some(before)) = (&record.snapshot, previous) {
        for g in &now.groups {
            let old = accumulation::live(before, &g.key);
            if g.live > old {
                grew.push_str(&format!("  {} +{}", g.key, g.live - old));
            }
        }
    }
    for l in &record.lingering {
        grew.push_str(&format!("  {} op:{} still in flight", l.count, l.kind));
    }
    if record.reached == Some(false) {
        grew.push_str("  (did not reach the server)");
    }
    say!(
        out,
        "{style}{word:>12}{style:#} [{:>8}] {}{YELLOW}{grew}{YELLOW:#}",
        seconds(record.run.duration),
        record.case.id()
    );
    match outcome {
        TestOutcome::Failed | TestOutcome::SpawnFailed | TestOutcome::Hung => {
            if let Some(d) = detail {
                say!(out, "{:>12}   {d}", "");
            }
            if let Some(p) = &record.run.panic {
                let at = p.location.as_deref().map(|l| format!(" at {l}")).unwrap_or_default();
                say!(out, "{:>12}   {BOLD}panicked{at}:{BOLD:#}", "");
                for line in p.message.lines() {
                    say!(out, "{:>12}     {RED}{line}{RED:#}", "");
                }
            }
            for w in &record.waiting {
                say!(out, "{:>12}   {MAGENTA}{}{MAGENTA:#}", "", w.describe());
            }
            if let Some(note) = crate::culprit::lock_note(&record.waiting) {
                say!(out, "{:>12}   {BOLD}{note}{BOLD:#}", "");
            }
            for t in &record.blocked_threads {
                say!(out, "{:>12}   {MAGENTA}thread {t}{MAGENTA:#}", "");
            }
            for line in &record.last_events {
                say!(out, "{:>12}   {line}", "");
            }
            for line in crate::rundir::tail(&record.run.log, 10) {
                say!(out, "{:>12}   {DIM}|{DIM:#} {line}", "");
            }
            say!(out, "{:>12}   log: {}", "", record.run.log.display());
            for e in &record.run.evidence {
                say!(out, "{:>12}   evidence: {}", "", e.display());
            }
        }
        _ => {}
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// The accumulation table: a row per test, a column per task group, counter or gauge that
/// moved during the run, each cell the value and its change since the row above, and a
/// sparkline of each column's course at the bottom.
fn table(out: &mut dyn Write, baseline: &Snapshot, tests: &[Row]) {
    let rows: Vec<Option<&Snapshot>> =
        std::iter::once(Some(baseline)).chain(tests.iter().map(|t| t.snapshot.as_ref())).collect();
    let columns = accumulation::columns(&rows);

    say!(out);
    say!(
        out,
        "{BOLD}Accumulation{BOLD:#} {DIM}(after each test, settled: live tasks per group; op: operations in flight; \
         fd: open descriptors; threads; # counters; ~ gauges){DIM:#}"
    );
    if columns.is_empty() {
        say!(out, "  nothing moved: no task group, operation, descriptor, thread, counter or gauge changed");
        return;
    }
    let names: Vec<String> =
        std::iter::once("(baseline)".to_owned()).chain(tests.iter().map(|t| t.id.clone())).collect();
    let name_width = names.iter().map(|n| n.chars().count()).max().unwrap_or(10).min(48);
    let cells: Vec<Vec<String>> = columns.iter().map(|c| accumulation::cells(&c.values)).collect();
    let widths: Vec<usize> = columns
        .iter()
        .zip(&cells)
        .map(|(c, cs)| cs.iter().map(|s| s.chars().count()).chain([c.title.chars().count()]).max().unwrap_or(1))
        .collect();

    let mut header = format!("  {:>3}  {:<name_width$}  {:<6}", "#", "test", "result");
    for (c, w) in columns.iter().zip(&widths) {
        header.push_str(&format!("  {:>w$}", c.title, w = *w));
    }
    say!(out, "{BOLD}{header}{BOLD:#}");
    for (i, name) in names.iter().enumerate() {
        let result = if i == 0 { "" } else { tests[i - 1].outcome.map_or("", TestOutcome::name) };
        let mut line = format!("  {:>3}  {:<name_width$}  {:<6}", i, truncate(name, name_width), result);
        for (cs, w) in cells.iter().zip(&widths) {
            line.push_str(&format!("  {:>w$}", cs[i], w = *w));
        }
        say!(out, "{line}");
    }
    let mut trend = format!("  {:>3}  {:<name_width$}  {:<6}", "", "trend", "");
    for (c, w) in columns.iter().zip(&widths) {
        trend.push_str(&format!("  {:>w$}", sparkline(&c.values), w = *w));
    }
    say!(out, "{DIM}{trend}{DIM:#}");
}

fn sparkline(values: &[Option<i128>]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let known: Vec<i128> = values.iter().flatten().copied().collect();
    let (Some(min), Some(max)) = (known.iter().min(), known.iter().max()) else { return String::new() };
    let span = (max - min).max(1);
    // At most 16 marks, sampled evenly, so wide suites still fit a column.
    let step = known.len().div_ceil(16).max(1);
    known.iter().step_by(step).map(|v| BARS[(((v - min) * 7) / span) as usize]).collect()
}

/// Cuts `s` to `width` characters in the middle, so both the test target at the front and
/// the end of the test's name stay readable.
fn truncate(s: &str, width: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= width {
        return s.to_owned();
    }
    let keep = width.saturating_sub(1);
    let head = keep / 2;
    let tail = keep - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// A stall, printed as it arrives.
fn stall(out: &mut dyn Write, s: &StallEntry) {
    let during = s.test.as_deref().map(|t| format!(" during {t}")).unwrap_or_default();
    say!(
        out,
        "{MAGENTA}{:>12}{MAGENTA:#} worker {} \"{}\" caught stuck in one poll for {} ms (threshold {} ms){during}",
        "STALL",
        s.tid,
        s.thread,
        s.stuck_ms,
        s.threshold_ms
    );
    if let Some(task) = &s.task {
        let group = task.group.as_deref().unwrap_or("?");
        let location = task.location.as_deref().map(|l| format!(" spawned at {l}")).unwrap_or_default();
        say!(out, "{:>12}   task {} of group `{group}`{location}", "", task.id);
    }
    if let Some(culprit) = &s.blocked_in {
        say!(out, "{:>12}   blocked in {culprit}", "");
    }
    if let Some(note) = &s.note {
        say!(out, "{:>12}   note: {note}", "");
    }
    if let Some(file) = &s.file {
        say!(out, "{:>12}   stack: {}", "", file.display());
    }
}

/// How long a stall lasted, as far as it is known.
fn stall_length(s: &StallEntry) -> String {
    match (s.total_ms, s.still_stuck_at_test_end) {
        (Some(total), _) => {
            format!("stuck {} in all (caught at {} ms)", seconds(Duration::from_millis(total)), s.stuck_ms)
        }
        (None, true) => format!("caught at {} ms, still stuck when its test ended", s.stuck_ms),
        (None, false) => format!("caught at {} ms, still stuck when the run ended", s.stuck_ms),
    }
}

/// What the server's start-up added after it was ready, before the baseline.
fn startup(growth: &[StartupGrowth]) {
    if growth.is_empty() {
        return;
    }
    let items: Vec<String> =
        growth.iter().map(|g| format!("{} {} -> {}", g.measure, g.at_ready, g.at_baseline)).collect();
    status("Start-up", format!("{} (appeared after ready, before the baseline; not judged)", items.join(", ")));
}

/// What was watched, so that a clean run shows it looked: the runtimes, the tasks
/// spawned and finished per group during the tests, the tests that reached the server.
fn watched(out: &mut dyn Write, baseline: &Snapshot, last: &Snapshot, tests: &[TestEntry]) {
    let runtimes: Vec<String> = last
        .runtimes
        .iter()
        .map(|r| {
            let workers = r.stats.as_ref().map_or(0, |s| s.workers);
            let pool = match (r.blocking_threads, r.idle_blocking_threads) {
                (0, _) => String::new(),
                (n, Some(idle)) => format!(", blocking pool {n} ({idle} idle)"),
                (n, None) => format!(", blocking pool {n}"),
            };
            format!("{} ({workers} worker{}{pool})", r.name, if workers == 1 { "" } else { "s" })
        })
        .collect();
    let keys: std::collections::BTreeSet<&str> = last.groups.iter().map(|g| g.key.as_str()).collect();
    let titles = super::accumulation::short_titles(&keys);
    let mut groups: Vec<String> = keys
        .iter()
        .zip(titles)
        .filter_map(|(key, title)| {
            let g = last.groups.iter().find(|g| g.key == *key)?;
            let before = baseline.groups.iter().find(|b| b.key == g.key);
            let spawned = g.spawned - before.map_or(0, |b| b.spawned.min(g.spawned));
            let finished = g.finished - before.map_or(0, |b| b.finished.min(g.finished));
            (spawned > 0).then(|| format!("{title} {spawned} spawned, {finished} finished"))
        })
        .collect();
    if groups.is_empty() {
        groups.push("no task spawned".to_owned());
    }
    let ran = tests.iter().filter(|t| t.reached_server.is_some()).count();
    let reached = tests.iter().filter(|t| t.reached_server == Some(true)).count();
    say!(out);
    say!(out, "{BOLD}Watched{BOLD:#} runtimes: {}", runtimes.join(", "));
    say!(out, "        tasks during the tests: {}", groups.join("; "));
    say!(out, "        {reached} of {ran} tests reached the server");
}

/// The stalls again, after the table, so they are not lost in a long run's output.
fn stall_summary(out: &mut dyn Write, stalls: &[StallEntry]) {
    if stalls.is_empty() {
        return;
    }
    say!(out);
    for s in stalls {
        let during = s.test.as_deref().unwrap_or("?");
        let at = s.blocked_in.as_deref().unwrap_or("(no frame of the server's own code)");
        say!(out, "{MAGENTA}STALL{MAGENTA:#} {} in {at}, during {during}", stall_length(s));
    }
}

/// A shutdown hang: what was still alive, and where the evidence is.
fn shutdown_hang(out: &mut dyn Write, shutdown: &ShutdownEntry, grace: Duration) {
    let evidence: Vec<String> = shutdown.evidence.iter().map(|p| format!("evidence: {}", p.display())).collect();
    error(
        format!("shutdown hang: the server was still running {} after SIGTERM and was killed", seconds(grace)),
        &evidence,
    );
    for s in &shutdown.survivors {
        let age =
            s.oldest_age_ms.map(|ms| format!(", oldest {}", seconds(Duration::from_millis(ms)))).unwrap_or_default();
        let location = s.location.as_deref().map(|l| format!(" spawned at {l}")).unwrap_or_default();
        say!(out, "{MAGENTA}{:>12}{MAGENTA:#} `{}` {} live{age}{location}", "STILL ALIVE", s.group, s.live);
    }
}

/// The leak verdicts.
fn leaks(out: &mut dyn Write, leaks: &[Leak], tokio_unstable: bool) {
    say!(out);
    if leaks.is_empty() && tokio_unstable {
        say!(out, "{GREEN}No leaks{GREEN:#}: every task group is back at its baseline after settling.");
        return;
    }
    if leaks.is_empty() {
        say!(
            out,
            "{GREEN}No leaks{GREEN:#} among named groups. This was a --stable build: tasks spawned without \
             hangcheck_runtime::spawn are not counted; drop --stable to count every task by spawn location."
        );
        return;
    }
    for leak in leaks {
        let what = match (leak.kind, leak.location.as_deref()) {
            (MeasureKind::Location, _) => format!("tasks spawned at {BOLD}{}{BOLD:#}", leak.group),
            (MeasureKind::Named, Some(l)) => format!("task group {BOLD}`{}`{BOLD:#}, spawned at {l}", leak.group),
            (MeasureKind::Named, None) => format!("task group {BOLD}`{}`{BOLD:#}", leak.group),
            (MeasureKind::Operation, _) => {
                format!("operations {BOLD}`{}`{BOLD:#} still in flight", leak.group.trim_start_matches("op:"))
            }
            (MeasureKind::Fd, _) => format!("open file descriptors {BOLD}{}{BOLD:#}", leak.group),
            (MeasureKind::Threads, _) => format!("{BOLD}threads{BOLD:#}"),
        };
        let standing = match (leak.standing, leak.baseline_growth) {
            (Some(s), Some(before)) => format!(" ({}: +{before} in the baseline)", s.name()),
            (Some(s), None) => format!(" ({})", s.name()),
            (None, _) => String::new(),
        };
        let standing = match leak.round {
            Some(r) => format!("{standing} in round {r}'s server"),
            None => standing,
        };
        if leak.fails {
            say!(out, "{RED}LEAK{RED:#} {what}{standing}");
        } else {
            say!(out, "{YELLOW}LEAK{YELLOW:#} {what}{standing}, let through by --fail-on");
        }
        let age =
            leak.oldest_age_ms.map(|ms| format!(", oldest {}", seconds(Duration::from_millis(ms)))).unwrap_or_default();
        say!(
            out,
            "     live {} -> {} (+{}, allowed {}){age}",
            leak.baseline,
            leak.final_live,
            leak.growth,
            leak.allowed
        );
        let by: Vec<String> = leak.leaked_by.iter().map(|b| format!("{} ({})", b.test, b.count)).collect();
        say!(out, "     leaked by: {}", by.join(", "));
        for w in &leak.waiting {
            say!(out, "     {}", w.describe());
        }
    }
}

/// Overlapping operations, slow operations.
fn operations(
    out: &mut dyn Write,
    concurrent: &[ConcurrentOps],
    handovers: &[Handovers],
    tests: &[TestEntry],
    slow: &[SlowOps],
) {
    for c in concurrent {
        let lasted = match c.still_open_ms {
            Some(ms) => format!("still open at the end of the run, after {ms} ms"),
            None => format!("overlapping for {} ms", c.longest_ms),
        };
        say!(
            out,
            "{RED}CONCURRENT{RED:#} {} operations `{}` in flight at once for key {}, started in {}; {lasted}",
            c.max_in_flight,
            c.kind,
            c.key,
            c.tests.join(", ")
        );
    }
    for h in handovers {
        say!(
            out,
            "{DIM}handovers{DIM:#}: `{}` {}, longest {} ms (within the {} ms overlap grace; not findings)",
            h.kind,
            h.count,
            h.longest_ms,
            h.grace_ms
        );
    }
    let lingering: Vec<String> = tests
        .iter()
        .flat_map(|t| t.ops_in_flight_after.iter().map(move |l| format!("{} ({} {})", t.id, l.count, l.kind)))
        .collect();
    if !lingering.is_empty() {
        say!(out, "{YELLOW}In flight after their test ended{YELLOW:#}: {}", lingering.join(", "));
    }
    for o in slow {
        let age =
            o.oldest_age_ms.map(|ms| format!(", oldest {}", seconds(Duration::from_millis(ms)))).unwrap_or_default();
        say!(
            out,
            "{YELLOW}SLOW{YELLOW:#} operations `{}` past their budget: {} in flight, {} finished late{age}",
            o.kind,
            o.in_flight,
            o.finished
        );
    }
}

/// Counters side by side with their per-test rises, as data: no rule is applied, so a
/// reader compares, say, disconnects with deletes.
fn counters(out: &mut dyn Write, entries: &[CounterEntry]) {
    if entries.is_empty() {
        return;
    }
    say!(out);
    say!(out, "{BOLD}Counters{BOLD:#} {DIM}(total, then the rise in each test){DIM:#}");
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    for e in entries {
        let rises: Vec<String> = e.per_test.iter().map(|r| r.map_or("?".to_owned(), |r| format!("+{r}"))).collect();
        say!(out, "  {:<width$}  {:>6}  {DIM}{}{DIM:#}", e.name, e.total, rises.join(" "));
    }
}

/// The closing summary.
fn summary(out: &mut dyn Write, report: &Report) {
    let super::Tally { passed, failed, hung } = report.tally();
    let ignored = match report.tests.iter().filter(|t| t.outcome == TestOutcome::Ignored).count() {
        0 => String::new(),
        n => format!(", {n} ignored"),
    };
    let style = if report.exit_code == 0 { GREEN } else { RED };
    say!(out);
    say!(out,
        "{style}Summary{style:#} {} test{}: {passed} passed, {failed} failed, {hung} hung{ignored}; {} leak{}; {} stall{}; shutdown {}",
        report.tests.len(),
        if report.tests.len() == 1 { "" } else { "s" },
        report.leaks.len(),
        if report.leaks.len() == 1 { "" } else { "s" },
        report.stalls.len(),
        if report.stalls.len() == 1 { "" } else { "s" },
        report.shutdown.outcome.name(),
    );
    say!(out, "{DIM}Report: {}{DIM:#}", report.run_dir.join("report.json").display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_labels_are_cut_in_the_middle() {
        assert_eq!(truncate("e2e::short", 20), "e2e::short");
        let cut = truncate("e2e::a_very_long_test_name_that_goes_on", 20);
        assert_eq!(cut, "e2e::a_ve…at_goes_on");
        assert_eq!(cut.chars().count(), 20);
    }

    #[test]
    fn sparkline_spans_min_to_max() {
        assert_eq!(sparkline(&[Some(0), Some(7), Some(14)]), "▁▄█");
        assert_eq!(sparkline(&[Some(3), Some(3)]), "▁▁");
    }
}
