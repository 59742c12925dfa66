//! The run on a clock: a reporter that stamps each event with the moment the run emitted
//! it, and keeps what a picture of the run needs: each test's span, the settled snapshot
//! after it, stalls on their worker, hangs and evidence as moments, the shutdown.
//! `trace.json` ([`super::trace`]) and `report.html` ([`super::html`]) are both drawn
//! from it, so they show the same run.
//!
//! [`super::Reporters`] hands each event over synchronously with the moment the run
//! emitted it. A stall is reported at the next test boundary, so it carries the moment
//! the agent's message arrived instead (the agent pushes a stall as it catches it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::Snapshot;

use super::{ShutdownOutcome, TestOutcome};
use crate::event::Event;

/// What the run looked like over time; every time is since the run started (after the
/// build).
#[derive(Default)]
pub struct Timeline {
    origin: Option<Instant>,
    /// The test running now and when it started.
    running: Option<(String, Duration)>,
    /// When the server was asked to stop (after the verdicts).
    stopping: Option<Duration>,
    /// Each test, in run order.
    pub tests: Vec<TestSpan>,
    /// Each settled snapshot (baseline, after each test, final) and when it came in.
    pub samples: Vec<Sample>,
    /// Workers caught stuck in one poll.
    pub stalls: Vec<StallSpan>,
    /// Moments: hangs, evidence, processes left behind.
    pub marks: Vec<Mark>,
    /// How the server stopped, once it did.
    pub shutdown: Option<ShutdownSpan>,
    /// The server's pid.
    pub server_pid: Option<u32>,
    /// The last moment anything happened.
    pub end: Duration,
}

/// One test.
#[derive(Debug, Clone)]
pub struct TestSpan {
    /// `target::name`.
    pub id: String,
    /// Its epoch.
    pub epoch: u64,
    /// When it started.
    pub start: Duration,
    /// How long it ran.
    pub duration: Duration,
    /// When the server had settled after it (its snapshot is from then).
    pub settled: Duration,
    /// How it ended.
    pub outcome: TestOutcome,
    /// The settled snapshot after it, if the server could answer.
    pub snapshot: Option<Snapshot>,
}

/// A settled snapshot.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it came in.
    pub at: Duration,
    /// What the server held.
    pub snapshot: Snapshot,
}

/// A worker stuck in one poll.
#[derive(Debug, Clone)]
pub struct StallSpan {
    /// The worker's thread id.
    pub tid: u32,
    /// Its name.
    pub thread: String,
    /// When it got stuck (its stack was taken `duration` later).
    pub start: Duration,
    /// How long it had been stuck when caught.
    pub duration: Duration,
    /// The test it happened in.
    pub test: Option<String>,
    /// The task it was polling: `group at location`.
    pub task: Option<String>,
    /// Where in the server's own code it was.
    pub blocked_in: Option<String>,
    /// Its stall file.
    pub file: Option<PathBuf>,
}

/// What a moment on the timeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// A test ran past its timeout.
    Hang,
    /// Evidence was written before a signal.
    Evidence,
    /// A process outlived its test or the server.
    Leftover,
}

/// A moment.
#[derive(Debug, Clone)]
pub struct Mark {
    /// When.
    pub at: Duration,
    /// What.
    pub kind: MarkKind,
    /// One line: the test, or what it is about.
    pub name: String,
    /// Files written, for evidence.
    pub files: Vec<PathBuf>,
}

/// The server's shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownSpan {
    /// When it was asked to stop.
    pub start: Duration,
    /// When it had stopped (or was killed).
    pub end: Duration,
    /// How it went.
    pub outcome: ShutdownOutcome,
}

/// Operations of one kind begun in one test and still in flight at a settled snapshot:
/// what the snapshots can say about operations (each carries counts by epoch, not each
/// operation).
#[derive(Debug, Clone, PartialEq)]
pub struct OpSpan {
    /// The kind.
    pub kind: String,
    /// The epoch they began in.
    pub epoch: u64,
    /// The test of that epoch, if any.
    pub test: Option<String>,
    /// The most in flight at once at a snapshot.
    pub count: u64,
    /// When their test started (they began during it).
    pub start: Duration,
    /// The first snapshot without them, or the run's end.
    pub end: Duration,
    /// Still in flight at the last snapshot.
    pub open: bool,
}

impl Timeline {
    fn since(&self, at: Instant) -> Duration {
        self.origin.map_or(Duration::ZERO, |o| at.saturating_duration_since(o))
    }

    /// Folds `event`, which the run emitted at `at`.
    pub fn event_at(&mut self, at: Instant, event: &Event<'_>) {
        if let Event::RunStarted { .. } = event {
            self.origin.get_or_insert(at);
        }
        if self.origin.is_none() {
            return;
        }
        let now = self.since(at);
        self.end = self.end.max(now);
        match *event {
            Event::ServerReady { pid, .. } => self.server_pid = Some(pid),
            Event::Baseline { snapshot } => self.sample(now, snapshot),
            Event::TestStarted { case, .. } => self.running = Some((case.id(), now)),
            Event::TestHung { case } => {
                self.marks.push(Mark { at: now, kind: MarkKind::Hang, name: case.id(), files: Vec::new() })
            }
            Event::EvidenceWritten { test, files, .. } => self.marks.push(Mark {
                at: now,
                kind: MarkKind::Evidence,
                name: test.unwrap_or("shutdown").to_owned(),
                files: files.to_vec(),
            }),
            Event::TestFinished { record } => {
                let id = record.case.id();
                let start = match self.running.take() {
                    Some((running, start)) if running == id => start,
                    _ => now.saturating_sub(record.run.duration + record.settle),
                };
                self.tests.push(TestSpan {
                    id,
                    epoch: record.epoch,
                    start,
                    duration: record.run.duration,
                    settled: now,
                    outcome: TestOutcome::of(&record.run.outcome).0,
                    snapshot: record.snapshot.clone(),
                });
                if let Some(s) = &record.snapshot {
                    self.sample(now, s);
                }
            }
            Event::Leftover { leftover, after, .. } => self.marks.push(Mark {
                at: now,
                kind: MarkKind::Leftover,
                name: format!("process {} `{}` left after {after}", leftover.pid, leftover.command),
                files: Vec::new(),
            }),
            Event::Stall { stall } => {
                let caught = stall.caught_at.map_or(now, |c| self.since(c));
                let duration = Duration::from_millis(stall.stuck_ms);
                self.stalls.push(StallSpan {
                    tid: stall.tid,
                    thread: stall.thread.clone(),
                    start: caught.saturating_sub(duration),
                    duration,
                    test: stall.test.clone(),
                    task: stall.task.as_ref().map(|t| {
                        let group = t.group.as_deref().unwrap_or("task");
                        match &t.location {
                            Some(l) => format!("{group} {} at {l}", t.id),
                            None => format!("{group} {}", t.id),
                        }
                    }),
                    blocked_in: stall.blocked_in.clone(),
                    file: stall.file.clone(),
                });
            }
            Event::FinalSnapshot { snapshot } => self.sample(now, snapshot),
            Event::Verdicts { .. } => self.stopping = Some(now),
            Event::Shutdown { shutdown, .. } => {
                let start = self.stopping.or_else(|| self.tests.last().map(|t| t.settled)).unwrap_or(now);
                self.shutdown = Some(ShutdownSpan { start, end: now, outcome: shutdown.outcome });
            }
            Event::Building { .. }
            | Event::RunStarted { .. }
            | Event::Startup { .. }
            | Event::StallEnded { .. }
            | Event::ProtocolError { .. }
            | Event::Warning { .. }
            | Event::Warmup { .. }
            | Event::Round { .. }
            | Event::SetupError { .. } => {}
        }
    }

    fn sample(&mut self, at: Duration, snapshot: &Snapshot) {
        self.samples.push(Sample { at, snapshot: snapshot.clone() });
    }

    /// Every task group seen in any sample, in first-seen order, with its location.
    pub fn groups(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        for g in self.samples.iter().flat_map(|s| s.snapshot.groups.iter()) {
            if !out.iter().any(|(k, _)| *k == g.key) {
                out.push((g.key.clone(), g.location.clone()));
            }
        }
        out
    }

    /// Operations still in flight at a settled snapshot, one span per kind and epoch: from
    /// the start of the test they began in to the first snapshot without them.
    pub fn op_spans(&self) -> Vec<OpSpan> {
        let mut spans: Vec<OpSpan> = Vec::new();
        for sample in &self.samples {
            let mut seen: Vec<usize> = Vec::new();
            for op in &sample.snapshot.ops {
                for by in op.live_by_epoch.iter().filter(|e| e.count > 0) {
                    let open = spans.iter().position(|s| s.open && s.kind == op.kind && s.epoch == by.epoch);
                    let i = match open {
                        Some(i) => i,
                        None => {
                            let test = self.tests.iter().find(|t| t.epoch == by.epoch);
                            spans.push(OpSpan {
                                kind: op.kind.clone(),
                                epoch: by.epoch,
                                test: test.map(|t| t.id.clone()),
                                count: 0,
                                start: test.map_or(sample.at, |t| t.start),
                                end: sample.at,
                                open: true,
                            });
                            spans.len() - 1
                        }
                    };
                    spans[i].count = spans[i].count.max(by.count);
                    spans[i].end = sample.at;
                    seen.push(i);
                }
            }
            for (i, span) in spans.iter_mut().enumerate() {
                if span.open && !seen.contains(&i) {
                    span.open = false;
                    span.end = sample.at;
                }
            }
        }
        for span in spans.iter_mut().filter(|s| s.open) {
            span.end = self.end.max(span.end);
        }
        spans
    }
}

impl super::Reporter for Timeline {
    fn event(&mut self, event: &Event<'_>) {
        self.event_at(Instant::now(), event);
    }

    fn finished(&mut self, _report: &super::Report) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use hangcheck_runtime::protocol::{EpochCount, GroupKind, GroupStats, OpStats};

    use super::*;
    use crate::report::{ShutdownEntry, TestRecord};
    use crate::suite::{Outcome, TestCase, TestRun};

    pub fn case(name: &str) -> TestCase {
        TestCase {
            target: "e2e".into(),
            name: name.into(),
            exe: "t".into(),
            in_process: false,
            ignored: false,
            round: 0,
        }
    }

    pub fn record(name: &str, epoch: u64, outcome: Outcome, waiters: u64, ops: &[(u64, u64)]) -> TestRecord {
        let snapshot = Snapshot {
            groups: vec![GroupStats {
                key: "waiter".into(),
                kind: GroupKind::Named,
                location: Some("src/main.rs:112".into()),
                live: waiters,
                spawned: waiters,
                finished: 0,
                polls: 0,
                busy_ms: 0,
                oldest_age_ms: None,
                live_by_epoch: vec![],
            }],
            ops: vec![OpStats {
                kind: "stream".into(),
                in_flight: ops.iter().map(|o| o.1).sum(),
                started: 0,
                finished: 0,
                oldest_age_ms: None,
                live_by_epoch: ops.iter().map(|&(epoch, count)| EpochCount { epoch, count }).collect(),
                slow_in_flight: 0,
                slow_finished: 0,
                overlap_events: 0,
                overlaps: vec![],
                handovers: 0,
                longest_handover_ms: 0,
                overlap_grace_ms: 100,
            }],
            ..Snapshot::default()
        };
        TestRecord {
            case: case(name),
            epoch,
            run: TestRun {
                outcome,
                duration: Duration::from_millis(100),
                log: "log".into(),
                evidence: vec![],
                panic: None,
            },
            snapshot: Some(snapshot),
            stacks_source: None,
            lingering: vec![],
            settle: Duration::from_millis(10),
            waiting: vec![],
            blocked_threads: vec![],
            last_events: vec![],
            reached: Some(true),
        }
    }

    /// A run of three tests, the second hung, folded on a clock that starts at `t0`: what
    /// the trace and the page are drawn from.
    pub fn sample_run() -> Timeline {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = Timeline::default();
        let cases = [case("a"), case("b"), case("c")];
        let a = record("a", 1, Outcome::Passed, 1, &[(1, 1)]);
        let b = record("b", 2, Outcome::TimedOut, 2, &[(1, 1), (2, 2)]);
        let c = record("c", 3, Outcome::Passed, 2, &[(2, 1)]);
        let files = [PathBuf::from("hangs/e2e.b.stacks.txt")];
        let clean = ShutdownEntry { outcome: ShutdownOutcome::Hung, ..ShutdownEntry::default() };
        let started = Event::RunStarted {
            package: "p",
            server_bin: "s",
            tokio_unstable: true,
            run_dir: Path::new("/r"),
            tests: &[],
            watchdog: true,
            stall_verdict: crate::cli::StallVerdict::Fail,
            stress: 1,
        };
        t.event_at(at(0), &started);
        t.event_at(at(5), &Event::Baseline { snapshot: &Snapshot::default() });
        t.event_at(at(10), &Event::TestStarted { case: &cases[0], epoch: 1 });
        t.event_at(at(120), &Event::TestFinished { record: &a });
        t.event_at(at(130), &Event::TestStarted { case: &cases[1], epoch: 2 });
        t.event_at(at(3130), &Event::TestHung { case: &cases[1] });
        let source = hangcheck_runtime::protocol::StackSource::Agent;
        t.event_at(at(3150), &Event::EvidenceWritten { test: Some("e2e::b"), files: &files, source });
        t.event_at(at(3300), &Event::TestFinished { record: &b });
        t.event_at(at(3310), &Event::TestStarted { case: &cases[2], epoch: 3 });
        t.event_at(at(3420), &Event::TestFinished { record: &c });
        t.event_at(at(3430), &Event::Verdicts { leaks: &[], concurrent: &[] });
        t.event_at(at(4500), &Event::Shutdown { shutdown: &clean, grace: Duration::from_secs(1) });
        t
    }

    #[test]
    fn tests_are_spans_from_their_start_and_snapshots_are_samples_when_they_came_in() {
        let t = sample_run();
        let spans: Vec<(&str, u128, u128, TestOutcome)> =
            t.tests.iter().map(|s| (s.id.as_str(), s.start.as_millis(), s.settled.as_millis(), s.outcome)).collect();
        assert_eq!(
            spans,
            vec![
                ("e2e::a", 10, 120, TestOutcome::Passed),
                ("e2e::b", 130, 3300, TestOutcome::Hung),
                ("e2e::c", 3310, 3420, TestOutcome::Passed)
            ]
        );
        let samples: Vec<u128> = t.samples.iter().map(|s| s.at.as_millis()).collect();
        assert_eq!(samples, vec![5, 120, 3300, 3420], "the baseline, then after each test");
        let marks: Vec<(MarkKind, u128)> = t.marks.iter().map(|m| (m.kind, m.at.as_millis())).collect();
        assert_eq!(marks, vec![(MarkKind::Hang, 3130), (MarkKind::Evidence, 3150)]);
        let shutdown = t.shutdown.as_ref().unwrap();
        assert_eq!((shutdown.start.as_millis(), shutdown.end.as_millis()), (3430, 4500));
    }

    #[test]
    fn operations_span_from_their_test_to_the_first_snapshot_without_them() {
        let t = sample_run();
        let spans: Vec<(u64, u64, u128, u128, bool)> =
            t.op_spans().iter().map(|s| (s.epoch, s.count, s.start.as_millis(), s.end.as_millis(), s.open)).collect();
        // Epoch 1's began in a (at 10) and were gone by c's snapshot; epoch 2's are still
        // in flight at the end.
        assert_eq!(spans, vec![(1, 1, 10, 3420, false), (2, 2, 130, 4500, true)]);
    }
}
