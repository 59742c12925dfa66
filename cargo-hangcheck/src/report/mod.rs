//! Reporting a run: every output is a [`Reporter`] that folds the run's
//! [events](crate::event::Event).
//!
//! [`aggregate`] folds them into [`Report`], written as `report.json` (versioned;
//! docs/report-format.md) and JUnit XML ([`junit`]); [`timeline`] folds them on a clock,
//! drawn as `trace.json` ([`trace`]) and, with the report, `report.html` ([`html`]); [`terminal`] shows them to a person as they happen;
//! [`json`] prints them one per line for tools (`--message-format json`); [`github`]
//! annotates them for GitHub Actions.
//! [`Reporters`] hands each event to all of them. The serialized form only grows
//! compatibly within a `format_version`.
//! `report.json` is also read back (`merge`, `--baseline`, `diff`): a field skipped
//! when empty needs `#[serde(default)]` too (the round-trip test in [`aggregate`] says so).

pub mod accumulation;
pub mod aggregate;
pub mod delta;
pub mod flakes;
pub mod github;
pub mod html;
pub mod json;
pub mod junit;
pub mod terminal;
pub mod timeline;
pub mod trace;

use std::collections::BTreeMap;
use std::path::PathBuf;

use hangcheck_runtime::protocol::{Frame, RuntimeInfo, Snapshot, StackSource, StalledTask};
use serde::{Deserialize, Serialize};

use crate::analysis::{ConcurrentOps, Handovers, Leak, Lingering, StartupGrowth};
use crate::event::Event;
use crate::exit;
use crate::rundir::RunDir;
use crate::suite::{Outcome, TestCase, TestRun};

/// An output of the run: takes each event as it happens, then the folded report once the
/// run is over.
pub trait Reporter {
    /// One event, in the order the run emits them.
    fn event(&mut self, event: &Event<'_>);
    /// The run is over; `report` is what its events folded into.
    fn finished(&mut self, report: &Report);
}

/// Every reporter of a run, fed the same events: the aggregate that becomes
/// `report.json` and `junit.xml`, the timeline that becomes `trace.json`, and the outputs
/// chosen on the command line.
pub struct Reporters {
    aggregate: aggregate::Aggregator,
    timeline: timeline::Timeline,
    outputs: Vec<Box<dyn Reporter>>,
}

impl Reporters {
    /// The aggregate and the timeline, plus `outputs`.
    pub fn new(outputs: Vec<Box<dyn Reporter>>) -> Reporters {
        Reporters { aggregate: aggregate::Aggregator::default(), timeline: timeline::Timeline::default(), outputs }
    }

    /// Hands `event` to every reporter; the timeline gets the moment it was emitted.
    pub fn emit(&mut self, event: Event<'_>) {
        self.timeline.event_at(std::time::Instant::now(), &event);
        self.aggregate.event(&event);
        for output in &mut self.outputs {
            output.event(&event);
        }
    }

    /// Ends the run: folds the report, writes `report.json`, `junit.xml`, `trace.json` and
    /// `report.html` durably into the run directory (when there is one), and shows the report to every
    /// output.
    pub fn finish(mut self, duration: std::time::Duration, run_dir: Option<&RunDir>) -> Report {
        let report = self.aggregate.finish(duration);
        if let Some(dir) = run_dir {
            let files: [(&str, &dyn Fn() -> Vec<u8>); 4] = [
                ("report.json", &|| serde_json::to_vec_pretty(&report).unwrap_or_default()),
                ("junit.xml", &|| junit::render(&report).into_bytes()),
                ("trace.json", &|| trace::render(&self.timeline, &report).to_string().into_bytes()),
                ("report.html", &|| html::render(&self.timeline, &report).into_bytes()),
            ];
            let written = files.iter().try_for_each(|(name, render)| {
                dir.write_durable(name, &render()).map(drop).map_err(|e| format!("cannot write {name}: {e}"))
            });
            if let Err(message) = written {
                for output in &mut self.outputs {
                    output.event(&Event::Warning { message: &message });
                }
            }
        }
        for output in &mut self.outputs {
            output.finished(&report);
        }
        report
    }
}

/// The version of `report.json`'s layout.
pub const FORMAT_VERSION: u32 = 1;

/// One test of the run, as the run records it.
#[derive(Debug, Clone)]
pub struct TestRecord {
    /// Which test.
    pub case: TestCase,
    /// The epoch it ran in.
    pub epoch: u64,
    /// How it went.
    pub run: TestRun,
    /// The settled snapshot after it, if the server could still answer.
    pub snapshot: Option<Snapshot>,
    /// Where the stacks in its evidence came from, when it hung.
    pub stacks_source: Option<StackSource>,
    /// Operations it began that were still in flight after it ended and settled.
    pub lingering: Vec<Lingering>,
    /// How long settling took after it.
    pub settle: std::time::Duration,
    /// When it hung: where the tasks it started wait.
    pub waiting: Vec<crate::culprit::Waiting>,
    /// When it hung: threads blocked in the server's own code.
    pub blocked_threads: Vec<String>,
    /// When it hung: what its live tasks did last, from the flight recorder.
    pub last_events: Vec<String>,
    /// Whether the server did anything during it (`watched::reached`); `None` when it
    /// did not run or no settled snapshot was taken after it.
    pub reached: Option<bool>,
}

/// How the run ended overall; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Everything passed, nothing leaked or hung.
    Ok,
    /// A test failed.
    TestsFailed,
    /// Something leaked (tasks, operations, fds, threads), or operations of one key
    /// overlapped.
    Leaks,
    /// A test or the shutdown hung.
    Hang,
    /// A worker was stuck in one poll past the stall threshold (and stalls fail the run).
    Stalls,
    /// The run could not start or go on.
    SetupError,
    /// Ctrl-C.
    Interrupted,
}

impl Verdict {
    /// The documented exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Ok => exit::OK,
            Verdict::TestsFailed => exit::TESTS_FAILED,
            Verdict::Leaks => exit::LEAKS,
            Verdict::Hang => exit::HANG,
            Verdict::Stalls => exit::STALLS,
            Verdict::SetupError => exit::SETUP,
            Verdict::Interrupted => exit::INTERRUPTED,
        }
    }
}

/// `report.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The runner's version.
    pub hangcheck_version: std::borrow::Cow<'static, str>,
    /// The package under test.
    pub package: String,
    /// The overall verdict.
    pub verdict: Verdict,
    /// The process exit code that goes with it.
    pub exit_code: i32,
    /// Why the run could not start or go on, for `setup-error`.
    pub error: Option<String>,
    /// The server.
    pub server: ServerEntry,
    /// The run directory.
    pub run_dir: PathBuf,
    /// Wall time of the run (build excluded), in milliseconds.
    pub duration_ms: u64,
    /// Tests in run order.
    pub tests: Vec<TestEntry>,
    /// The snapshot once the server was up, before the first test.
    pub baseline: Option<Snapshot>,
    /// The settled snapshot after the last test.
    #[serde(rename = "final")]
    pub final_snapshot: Option<Snapshot>,
    /// Task groups, operations, fds or threads that grew beyond the policy.
    pub leaks: Vec<Leak>,
    /// What rose between the server's readiness and the quiet baseline: its start-up,
    /// not any test's doing.
    #[serde(default)]
    pub startup: Vec<StartupGrowth>,
    /// The warmup tests (`warmup = [...]`), run before the baseline and not judged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warmup: Vec<WarmupEntry>,
    /// Operations of one key in flight at the same time for longer than the grace (or
    /// the new one ending while the old one ran on).
    pub concurrent_ops: Vec<ConcurrentOps>,
    /// Overlaps that closed within the grace (a new operation took over), as data.
    #[serde(default)]
    pub handovers: Vec<Handovers>,
    /// Operations that outlived their `warn_after` budget, by kind.
    pub slow_ops: Vec<SlowOps>,
    /// Every counter's total and per-test deltas, as data.
    pub counters: Vec<CounterEntry>,
    /// Workers caught stuck inside one poll.
    pub stalls: Vec<StallEntry>,
    /// Whether stalls fail the run (`fail`) or are only reported (`warn`).
    #[serde(default)]
    pub stall_verdict: crate::cli::StallVerdict,
    /// How the server's shutdown went.
    pub shutdown: ShutdownEntry,
    /// Malformed messages from the agent, if any.
    pub protocol_errors: Vec<String>,
    /// Processes of the run still alive after their test or after the server, each
    /// reported and then ended.
    pub leftover_processes: Vec<crate::leftovers::Leftover>,
    /// For a report written by `cargo hangcheck merge`: the shards' reports it joins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<PathBuf>,
    /// With `--repeat`, `--for` or `--until-fail`: how many rounds ran, and the shuffle seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<RoundsEntry>,
    /// With rounds: each test's outcomes over them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flakes: Vec<flakes::Flake>,
    /// With `--stress N`: the copies of each test run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stress: Option<u32>,
}

/// A warmup test in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmupEntry {
    /// `target::name`.
    pub id: String,
    /// How it ended.
    pub outcome: TestOutcome,
    /// How long it ran.
    pub duration_ms: u64,
    /// Its output.
    pub log: PathBuf,
}

impl WarmupEntry {
    /// The entry of a warmup test that ran.
    pub fn of(case: &crate::suite::TestCase, run: &crate::suite::TestRun) -> WarmupEntry {
        WarmupEntry {
            id: case.id(),
            outcome: TestOutcome::of(&run.outcome).0,
            duration_ms: run.duration.as_millis() as u64,
            log: run.log.clone(),
        }
    }
}

/// The rounds of a repeated run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundsEntry {
    /// Rounds begun.
    pub count: u32,
    /// `--shuffle`'s seed: `--shuffle=SEED` replays the same orders.
    pub shuffle_seed: Option<u64>,
    /// `--chaos`'s seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_seed: Option<u64>,
    /// `--fresh-server`: each round had a server of its own, and its leaks are judged
    /// against that round's baseline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh_server: bool,
    /// With `--fresh-server`: each round's server pid, in round order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_pids: Vec<u32>,
    /// `--stress N`: the copies of each test run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stress: Option<u32>,
}

/// How many tests passed, failed (or could not start) and hung.
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub hung: usize,
}

impl Report {
    /// The tests counted by outcome, as every summary shows them.
    pub fn tally(&self) -> Tally {
        let count = |o: TestOutcome| self.tests.iter().filter(|t| t.outcome == o).count();
        Tally {
            passed: count(TestOutcome::Passed),
            failed: count(TestOutcome::Failed) + count(TestOutcome::SpawnFailed),
            hung: count(TestOutcome::Hung),
        }
    }
}

/// The server's part of the report.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct ServerEntry {
    /// The bin target.
    pub bin: String,
    /// The process id, once started.
    pub pid: Option<u32>,
    /// Built with `--cfg tokio_unstable` (task hooks) or not.
    pub tokio_unstable: bool,
    /// What the agent could do in this run: static ones, and each kind of hook only
    /// once it was installed on a runtime and had fired.
    pub capabilities: Vec<String>,
    /// Every runtime built through hangcheck, by name, with its hooks and threads.
    #[serde(default)]
    pub runtimes: Vec<RuntimeInfo>,
    /// Announced addresses.
    pub addresses: BTreeMap<String, String>,
    /// The server log.
    pub log: Option<PathBuf>,
}

/// One test in the report.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestEntry {
    /// `target::name`.
    pub id: String,
    /// The test target.
    pub target: String,
    /// The test name.
    pub name: String,
    /// The epoch it ran in; survivors born in it are its doing.
    pub epoch: u64,
    /// The round it ran in, with `--repeat` (1-based); absent otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    /// How it ended.
    pub outcome: TestOutcome,
    /// The exit status or error, for failures.
    pub detail: Option<String>,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// How long settling took after it, in milliseconds (the runner's own time per test).
    pub settle_ms: u64,
    /// Its output.
    pub log: PathBuf,
    /// For a failed test, the panic that failed it: message and location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<crate::libtest::Panic>,
    /// Files written about the server when it hung.
    pub evidence: Vec<PathBuf>,
    /// Where the stacks in the evidence came from: `agent`, `gdb`, or `none`.
    pub stacks_source: Option<StackSource>,
    /// Live tasks per group after it, settled.
    pub live: BTreeMap<String, u64>,
    /// Operations it began still in flight after it ended and settled.
    pub ops_in_flight_after: Vec<Lingering>,
    /// When it hung: where the tasks it started wait, grouped, most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<crate::culprit::Waiting>,
    /// When it hung: threads blocked in the server's own code (a syscall, a lock).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_threads: Vec<String>,
    /// When it hung: what its live tasks did last, from the flight recorder's events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_events: Vec<String>,
    /// Whether the server did anything while it ran (a task spawned, an operation
    /// started, a counter or gauge moved, a connection to an announced port); `false`:
    /// it did not reach the server; `null`: not run.
    #[serde(default)]
    pub reached_server: Option<bool>,
}

/// Operations of one kind that outlived their budget.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct SlowOps {
    /// The kind.
    pub kind: String,
    /// Still in flight and past their budget at the end.
    pub in_flight: u64,
    /// Finished after their budget had passed.
    pub finished: u64,
    /// The oldest in flight, in milliseconds.
    pub oldest_age_ms: Option<u64>,
}

/// The slow operations of a snapshot.
pub fn slow_ops(last: &Snapshot) -> Vec<SlowOps> {
    last.ops
        .iter()
        .filter(|o| o.slow_in_flight + o.slow_finished > 0)
        .map(|o| SlowOps {
            kind: o.kind.clone(),
            in_flight: o.slow_in_flight,
            finished: o.slow_finished,
            oldest_age_ms: o.oldest_age_ms,
        })
        .collect()
}

/// A counter over the run: the data to compare, e.g. disconnects against deletes.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct CounterEntry {
    /// The counter.
    pub name: String,
    /// Its value at the end of the last test.
    pub total: u64,
    /// Its rise during each test, in run order (null where no snapshot was taken).
    pub per_test: Vec<Option<u64>>,
}

/// Every counter's total and per-test rises; `tests` holds each test's settled snapshot in
/// run order (`None` where the server could not answer).
pub fn counters(baseline: &Snapshot, tests: &[Option<Snapshot>]) -> Vec<CounterEntry> {
    let names: std::collections::BTreeSet<&String> =
        std::iter::once(baseline).chain(tests.iter().flatten()).flat_map(|s| s.counters.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let mut previous = baseline.counters.get(name).copied().unwrap_or(0);
            let per_test = tests
                .iter()
                .map(|t| {
                    t.as_ref().map(|s| {
                        let now = s.counters.get(name).copied().unwrap_or(0);
                        let rise = now.saturating_sub(previous);
                        previous = now;
                        rise
                    })
                })
                .collect();
            CounterEntry { name: name.clone(), total: previous, per_test }
        })
        .collect()
}

/// [`counters`] over a run whose rounds each had a server of their own (`--fresh-server`):
/// `fresh` holds each later server's baseline with the number of tests run before it. A
/// counter's rises in each test are counted from its own server's baseline, and its total
/// is the sum over the servers.
pub fn counters_over_servers(
    first: &Snapshot,
    fresh: &[(usize, Snapshot)],
    tests: &[Option<Snapshot>],
) -> Vec<CounterEntry> {
    let starts: Vec<(usize, &Snapshot)> =
        std::iter::once((0, first)).chain(fresh.iter().map(|(at, b)| (*at, b))).collect();
    let mut out: Vec<CounterEntry> = Vec::new();
    for (i, (at, baseline)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(tests.len(), |(next, _)| *next).min(tests.len());
        let segment = &tests[(*at).min(end)..end];
        for entry in counters(baseline, segment) {
            let position = out.iter().position(|e| e.name == entry.name);
            let merged = match position {
                Some(p) => &mut out[p],
                None => {
                    out.push(CounterEntry { name: entry.name.clone(), total: 0, per_test: vec![Some(0); *at] });
                    out.last_mut().expect("just pushed")
                }
            };
            merged.total += entry.total.saturating_sub(baseline.counters.get(&entry.name).copied().unwrap_or(0));
            merged.per_test.resize(*at, Some(0));
            merged.per_test.extend(entry.per_test);
        }
    }
    for entry in &mut out {
        entry.per_test.resize(tests.len(), Some(0));
        entry.total += first.counters.get(&entry.name).copied().unwrap_or(0);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// How a test ended, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestOutcome {
    /// Exit code 0.
    Passed,
    /// Any other exit.
    Failed,
    /// Still running at the timeout; stopped after the evidence was written.
    Hung,
    /// The test process could not be started.
    SpawnFailed,
    /// The run was interrupted while it ran.
    Interrupted,
    /// `#[ignore]`d, not run.
    Ignored,
}

impl TestOutcome {
    /// The outcome of a finished test, and its detail (exit status or error).
    pub fn of(outcome: &Outcome) -> (TestOutcome, Option<String>) {
        match outcome {
            Outcome::Passed => (TestOutcome::Passed, None),
            Outcome::Failed(s) => (TestOutcome::Failed, Some(s.clone())),
            Outcome::TimedOut => (TestOutcome::Hung, None),
            Outcome::SpawnFailed(s) => (TestOutcome::SpawnFailed, Some(s.clone())),
            Outcome::Interrupted => (TestOutcome::Interrupted, None),
            Outcome::Ignored => (TestOutcome::Ignored, None),
        }
    }

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            TestOutcome::Passed => "passed",
            TestOutcome::Failed => "failed",
            TestOutcome::Hung => "hung",
            TestOutcome::SpawnFailed => "spawn-failed",
            TestOutcome::Interrupted => "interrupted",
            TestOutcome::Ignored => "ignored",
        }
    }
}

/// How the server's shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownOutcome {
    /// It exited within the grace period after SIGTERM.
    Clean,
    /// It was still running after the grace period and was SIGKILLed.
    Hung,
    /// The run ended before the server was stopped by it.
    #[default]
    NotReached,
}

impl ShutdownOutcome {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownOutcome::Clean => "clean",
            ShutdownOutcome::Hung => "hung",
            ShutdownOutcome::NotReached => "not-reached",
        }
    }
}

/// How the server stopped.
#[derive(Debug, Serialize, Deserialize, Clone, Default)]
pub struct ShutdownEntry {
    /// `clean`, `hung` (SIGKILLed after the grace period), or `not-reached`.
    pub outcome: ShutdownOutcome,
    /// Files written about the server before it was killed.
    pub evidence: Vec<PathBuf>,
    /// Where the stacks in the evidence came from, for a hang.
    pub stacks_source: Option<StackSource>,
    /// Task groups still alive when the shutdown hung, with their ages.
    pub survivors: Vec<Survivor>,
}

/// A task group alive at a shutdown hang.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Survivor {
    /// The group's key.
    pub group: String,
    /// Where its tasks are spawned.
    pub location: Option<String>,
    /// How many are alive.
    pub live: u64,
    /// The oldest one's age, in milliseconds.
    pub oldest_age_ms: Option<u64>,
}

/// A worker caught stuck inside one poll.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct StallEntry {
    /// The test running when it was seen (`(start-up)` before the first).
    pub test: Option<String>,
    /// The epoch it was seen in.
    pub epoch: u64,
    /// The worker's thread id.
    pub tid: u32,
    /// The worker's thread name.
    pub thread: String,
    /// How long it had been stuck when it was caught (its stack taken), in milliseconds.
    pub stuck_ms: u64,
    /// How long it was stuck in that poll in all, once the poll ended; `null` while it
    /// had not.
    #[serde(default)]
    pub total_ms: Option<u64>,
    /// The poll had not ended yet when its test ended.
    #[serde(default)]
    pub still_stuck_at_test_end: bool,
    /// The agent's number for it (matches its end).
    #[serde(skip)]
    pub seq: u64,
    /// The threshold.
    pub threshold_ms: u64,
    /// The task it was polling, with tokio's poll hooks.
    pub task: Option<StalledTask>,
    /// The innermost frame in the server's own code: where it blocked.
    pub blocked_in: Option<String>,
    /// Why the stack may be partial, with the reason.
    pub note: Option<String>,
    /// The stall's file (written as it arrived).
    pub file: Option<PathBuf>,
    /// The whole stack, innermost first.
    pub frames: Vec<Frame>,
    /// When the runner received it (the agent pushes a stall as it catches it): where it
    /// goes on the run's timeline.
    #[serde(skip)]
    pub caught_at: Option<std::time::Instant>,
}

impl TestEntry {
    /// The serialized form of a test record.
    pub fn from_record(r: &TestRecord) -> TestEntry {
        let (outcome, detail) = TestOutcome::of(&r.run.outcome);
        TestEntry {
            id: r.case.id(),
            target: r.case.target.clone(),
            name: r.case.name.clone(),
            epoch: r.epoch,
            round: r.case.round,
            outcome,
            detail,
            duration_ms: r.run.duration.as_millis() as u64,
            settle_ms: r.settle.as_millis() as u64,
            log: r.run.log.clone(),
            panic: r.run.panic.clone(),
            evidence: r.run.evidence.clone(),
            stacks_source: r.stacks_source,
            ops_in_flight_after: r.lingering.clone(),
            waiting: r.waiting.clone(),
            blocked_threads: r.blocked_threads.clone(),
            last_events: r.last_events.clone(),
            reached_server: r.reached,
            live: r.snapshot.iter().flat_map(|s| s.groups.iter().map(|g| (g.key.clone(), g.live))).collect(),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The overall verdict of a run that could judge: the most severe finding wins.
/// `hang` is a hang outside the tests' own outcomes (the shutdown); `stalled`: a stall
/// that fails the run (`stall-verdict = "fail"`).
pub fn verdict(
    tests: &[TestEntry],
    leaks: &[Leak],
    concurrent: &[ConcurrentOps],
    hang: bool,
    stalled: bool,
) -> Verdict {
    if hang || tests.iter().any(|t| t.outcome == TestOutcome::Hung) {
        return Verdict::Hang;
    }
    if tests.iter().any(|t| !matches!(t.outcome, TestOutcome::Passed | TestOutcome::Ignored)) {
        return Verdict::TestsFailed;
    }
    if stalled {
        return Verdict::Stalls;
    }
    if leaks.iter().any(|l| l.fails) || !concurrent.is_empty() {
        return Verdict::Leaks;
    }
    Verdict::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(count: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.counters.insert("requests".into(), count);
        s
    }

    #[test]
    fn counters_over_fresh_servers_count_each_from_its_own_baseline() {
        let tests = [Some(with(1)), Some(with(2)), Some(with(1)), None, Some(with(3))];
        let over = counters_over_servers(&with(0), &[(2, with(0))], &tests);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].per_test, vec![Some(1), Some(1), Some(1), None, Some(2)]);
        assert_eq!(over[0].total, 5, "2 on the first server, 3 on the second");
        // Without fresh servers it is `counters`.
        let one = counters_over_servers(&with(1), &[], &tests[..2]);
        let plain = counters(&with(1), &tests[..2]);
        assert_eq!((one[0].total, &one[0].per_test), (plain[0].total, &plain[0].per_test));
        assert_eq!((one[0].total, one[0].per_test.clone()), (2, vec![Some(0), Some(1)]));
    }
}
