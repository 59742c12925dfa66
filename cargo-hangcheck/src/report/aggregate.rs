//! Folding a run's events into its [`Report`]: what `report.json` and `junit.xml` say.
//!
//! The verdict is decided here, from what the events said, so every output shows the same
//! one: a setup error stops the judging, except that a run that ended because something
//! hung reports the hang.

use std::path::PathBuf;
use std::time::Duration;

use hangcheck_runtime::protocol::Snapshot;

use super::{Report, Reporter, ServerEntry, ShutdownEntry, ShutdownOutcome, StallEntry, TestEntry, Verdict};
use crate::analysis::{ConcurrentOps, Leak, StartupGrowth};
use crate::cli::StallVerdict;
use crate::errors::SetupError;
use crate::event::Event;
use crate::watched;

/// The report as far as the run has got.
#[derive(Default)]
pub struct Aggregator {
    package: String,
    server: ServerEntry,
    run_dir: PathBuf,
    tests: Vec<TestEntry>,
    /// Each test's settled snapshot, in run order, for the counters.
    snapshots: Vec<Option<Snapshot>>,
    baseline: Option<Snapshot>,
    /// With `--fresh-server`: each later server's baseline, and how many tests ran before.
    fresh_baselines: Vec<(usize, Snapshot)>,
    /// The latest settled snapshot: the final one, or the last test's if the run stopped.
    last: Option<Snapshot>,
    leaks: Vec<Leak>,
    concurrent: Vec<ConcurrentOps>,
    stalls: Vec<StallEntry>,
    shutdown: ShutdownEntry,
    protocol_errors: Vec<String>,
    leftovers: Vec<crate::leftovers::Leftover>,
    error: Option<(String, bool)>,
    rounds: Option<super::RoundsEntry>,
    /// `--stress N`, when above 1.
    stress: Option<u32>,
    /// Every server the run started, in order (one per round with `--fresh-server`).
    server_pids: Vec<u32>,
    startup: Vec<StartupGrowth>,
    warmup: Vec<super::WarmupEntry>,
    /// What the agent's hello claimed; the report keeps only what the snapshots prove.
    hello_capabilities: Vec<String>,
    watchdog: bool,
    stall_verdict: StallVerdict,
}

impl Reporter for Aggregator {
    fn event(&mut self, event: &Event<'_>) {
        match *event {
            Event::Building { package, server_bin, .. } => {
                self.package = package.to_owned();
                self.server.bin = server_bin.to_owned();
            }
            Event::RunStarted {
                package, server_bin, tokio_unstable, run_dir, watchdog, stall_verdict, stress, ..
            } => {
                self.stress = (stress > 1).then_some(stress);
                self.watchdog = watchdog;
                self.stall_verdict = stall_verdict;
                self.package = package.to_owned();
                self.server.bin = server_bin.to_owned();
                self.server.tokio_unstable = tokio_unstable;
                self.server.log = Some(run_dir.join("server.log"));
                self.run_dir = run_dir.to_owned();
            }
            Event::ServerReady { pid, capabilities, addresses, log, .. } => {
                self.server.pid = Some(pid);
                self.server_pids.push(pid);
                self.hello_capabilities = capabilities.to_vec();
                self.server.addresses = addresses.clone();
                self.server.log = Some(log.to_owned());
            }
            Event::Baseline { snapshot } if self.baseline.is_some() => {
                // A round's fresh server (`--fresh-server`): the tests from here on count
                // from its baseline; report.json's `baseline` stays the first server's.
                self.fresh_baselines.push((self.snapshots.len(), snapshot.clone()));
                self.last = Some(snapshot.clone());
            }
            Event::Baseline { snapshot } => {
                self.baseline = Some(snapshot.clone());
                self.last = Some(snapshot.clone());
            }
            Event::TestFinished { record } => {
                for stall in self.stalls.iter_mut().filter(|s| s.epoch == record.epoch && s.total_ms.is_none()) {
                    stall.still_stuck_at_test_end = true;
                }
                self.tests.push(TestEntry::from_record(record));
                self.snapshots.push(record.snapshot.clone());
                if let Some(s) = &record.snapshot {
                    self.last = Some(s.clone());
                }
            }
            Event::Stall { stall } => self.stalls.push(stall.clone()),
            Event::StallEnded { seq, total_ms } => {
                if let Some(stall) = self.stalls.iter_mut().find(|s| s.seq == seq && seq != 0) {
                    stall.total_ms = Some(total_ms);
                }
            }
            Event::Startup { growth } => self.startup = growth.to_vec(),
            Event::Warmup { case, run } => self.warmup.push(super::WarmupEntry::of(case, run)),
            Event::Leftover { leftover, .. } => self.leftovers.push(leftover.clone()),
            Event::ProtocolError { message } => self.protocol_errors.push(message.to_owned()),
            Event::FinalSnapshot { snapshot } => self.last = Some(snapshot.clone()),
            Event::Verdicts { leaks, concurrent } => {
                self.leaks = leaks.to_vec();
                self.concurrent = concurrent.to_vec();
            }
            // With a server per round, the worst of their shutdowns is the run's.
            Event::Shutdown { shutdown, .. } if self.shutdown.outcome != ShutdownOutcome::Hung => {
                self.shutdown = shutdown.clone()
            }
            Event::Shutdown { .. } => {}
            Event::SetupError { error } => {
                self.error = Some((error.to_string(), matches!(error, SetupError::Interrupted)));
            }
            Event::TestStarted { .. }
            | Event::TestHung { .. }
            | Event::EvidenceWritten { .. }
            | Event::Warning { .. } => {}
            Event::Round { round, seed, chaos, fresh_server } => {
                self.rounds = Some(super::RoundsEntry {
                    count: round,
                    shuffle_seed: seed,
                    chaos_seed: chaos,
                    fresh_server,
                    server_pids: Vec::new(),
                    stress: None,
                });
            }
        }
    }

    fn finished(&mut self, _report: &Report) {}
}

impl Aggregator {
    /// The report of the run, with its verdict.
    pub fn finish(self, duration: Duration) -> Report {
        // A stall is not a hang: it has its own verdict, below failed tests.
        let hang = self.shutdown.outcome == ShutdownOutcome::Hung;
        let stalled = !self.stalls.is_empty() && self.stall_verdict == StallVerdict::Fail;
        let mut server = self.server;
        server.capabilities = watched::capabilities(&self.hello_capabilities, self.last.as_ref(), self.watchdog);
        server.runtimes = self.last.as_ref().map(|s| s.runtimes.clone()).unwrap_or_default();
        let verdict = match &self.error {
            Some((_, true)) => Verdict::Interrupted,
            // A run that ended because something hung reports the hang.
            Some(_) if hang || self.tests.iter().any(|t| t.outcome == super::TestOutcome::Hung) => Verdict::Hang,
            Some(_) => Verdict::SetupError,
            None => match super::verdict(&self.tests, &self.leaks, &self.concurrent, hang, stalled) {
                // A process left running is a leak too.
                Verdict::Ok if !self.leftovers.is_empty() => Verdict::Leaks,
                v => v,
            },
        };
        let flakes = super::flakes::table(&self.tests, &self.stalls, self.rounds.is_some());
        let rounds = self.rounds.map(|r| super::RoundsEntry {
            server_pids: if r.fresh_server { self.server_pids.clone() } else { Vec::new() },
            stress: self.stress,
            ..r
        });
        Report {
            format_version: super::FORMAT_VERSION,
            hangcheck_version: env!("CARGO_PKG_VERSION").into(),
            package: self.package,
            verdict,
            exit_code: verdict.exit_code(),
            error: self.error.map(|(message, _)| message),
            server,
            run_dir: self.run_dir,
            duration_ms: duration.as_millis() as u64,
            tests: self.tests,
            slow_ops: self.last.as_ref().map(super::slow_ops).unwrap_or_default(),
            handovers: self.last.as_ref().map(crate::analysis::handovers).unwrap_or_default(),
            startup: self.startup,
            warmup: self.warmup,
            stall_verdict: self.stall_verdict,
            counters: self
                .baseline
                .as_ref()
                .map(|b| super::counters_over_servers(b, &self.fresh_baselines, &self.snapshots))
                .unwrap_or_default(),
            baseline: self.baseline,
            final_snapshot: self.last,
            leaks: self.leaks,
            concurrent_ops: self.concurrent,
            stalls: self.stalls,
            shutdown: self.shutdown,
            protocol_errors: self.protocol_errors,
            leftover_processes: self.leftovers,
            merged_from: Vec::new(),
            flakes,
            rounds,
            stress: self.stress,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::report::{Reporter, ShutdownEntry, TestOutcome, TestRecord};
    use crate::suite::{Outcome, TestRun};

    fn record(name: &str, epoch: u64, outcome: Outcome) -> TestRecord {
        TestRecord {
            case: crate::report::timeline::tests::case(name),
            epoch,
            run: TestRun {
                outcome,
                duration: Duration::from_millis(3),
                log: "log".into(),
                evidence: vec![],
                panic: None,
            },
            snapshot: Some(Snapshot::default()),
            stacks_source: None,
            lingering: vec![],
            settle: Duration::ZERO,
            waiting: vec![],
            blocked_threads: vec![],
            last_events: vec![],
            reached: Some(true),
        }
    }

    fn fold(events: &[Event<'_>]) -> Report {
        let mut a = Aggregator::default();
        let started = Event::RunStarted {
            package: "p",
            server_bin: "s",
            tokio_unstable: true,
            run_dir: Path::new("/runs/1"),
            tests: &[],
            watchdog: true,
            stall_verdict: StallVerdict::Fail,
            stress: 1,
        };
        a.event(&started);
        for e in events {
            a.event(e);
        }
        a.finish(Duration::from_millis(10))
    }

    #[test]
    fn the_most_severe_finding_decides_the_verdict() {
        let pass = record("a", 1, Outcome::Passed);
        let fail = record("b", 2, Outcome::Failed("exit status: 101".into()));
        let hung = record("c", 3, Outcome::TimedOut);
        let clean = ShutdownEntry { outcome: ShutdownOutcome::Clean, ..ShutdownEntry::default() };
        let shutdown = Event::Shutdown { shutdown: &clean, grace: Duration::from_secs(1) };

        let ok = fold(&[Event::TestFinished { record: &pass }, shutdown]);
        assert_eq!((ok.verdict, ok.exit_code), (Verdict::Ok, 0));
        assert_eq!(ok.tests[0].outcome, TestOutcome::Passed);
        assert_eq!(ok.server.log.as_deref(), Some(Path::new("/runs/1/server.log")));

        let shutdown = Event::Shutdown { shutdown: &clean, grace: Duration::from_secs(1) };
        let failed = fold(&[Event::TestFinished { record: &pass }, Event::TestFinished { record: &fail }, shutdown]);
        assert_eq!(failed.verdict, Verdict::TestsFailed);
        assert_eq!(failed.tests[1].detail.as_deref(), Some("exit status: 101"));

        let shutdown = Event::Shutdown { shutdown: &clean, grace: Duration::from_secs(1) };
        let hang = fold(&[Event::TestFinished { record: &fail }, Event::TestFinished { record: &hung }, shutdown]);
        assert_eq!((hang.verdict, hang.exit_code), (Verdict::Hang, crate::exit::HANG));
        // `merge` and `--baseline` read report.json back.
        let back: Report = serde_json::from_value(serde_json::to_value(&hang).unwrap()).unwrap();
        assert_eq!((back.verdict, back.tests.len()), (Verdict::Hang, 2));
    }

    #[test]
    fn a_setup_error_wins_unless_something_hung_or_the_run_was_interrupted() {
        let hung = record("c", 1, Outcome::TimedOut);
        let died = SetupError::Server { cause: "the server exited".into(), log: None };
        let error = fold(&[Event::SetupError { error: &died }]);
        assert_eq!((error.verdict, error.error.as_deref()), (Verdict::SetupError, Some("the server exited")));
        assert_eq!(error.shutdown.outcome, ShutdownOutcome::NotReached);

        let after_hang = fold(&[Event::TestFinished { record: &hung }, Event::SetupError { error: &died }]);
        assert_eq!(after_hang.verdict, Verdict::Hang);

        let interrupted =
            fold(&[Event::TestFinished { record: &hung }, Event::SetupError { error: &SetupError::Interrupted }]);
        assert_eq!((interrupted.verdict, interrupted.exit_code), (Verdict::Interrupted, 130));
    }
}
