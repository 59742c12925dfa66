//! `cargo hangcheck test`: the steps of DESIGN.md in order.
//!
//! build → list tests → start the server → baseline → for each test: new epoch, run,
//! settle, snapshot (appended durably to `snapshots.jsonl`) → final settled snapshot →
//! leak verdicts → stop the server → report.
//!
//! Whenever something hangs (a test past its timeout, the server past its shutdown
//! grace), the server's stacks and a snapshot are fetched from the live process and
//! written durably before anything is signalled. Whatever happens after the run directory
//! exists, a `report.json` is written, and every process the run started is gone before
//! it returns.

use std::path::PathBuf;
use std::time::Duration;

use hangcheck_runtime::protocol::{Snapshot, Stall};

use crate::analysis::{self, Epochs, StartupGrowth};
use crate::build::{self, Built};
use crate::cli::{MessageFormat, NoTests, TestArgs};
use crate::config::Config;
use crate::errors::SetupError;
use crate::event::Event;
use crate::harness::{self, Harnesses};
use crate::leftovers;
use crate::ondemand;
use crate::report::{json::JsonLines, terminal::Displayer, Reporter, Reporters};
use crate::report::{ShutdownEntry, ShutdownOutcome, StallEntry, Survivor, TestRecord};
use crate::rundir::{Evidence, RunDir};
use crate::server::{Server, Stop};
use crate::settle::{self, SNAPSHOT_TIMEOUT};
use crate::signal::Signals;
use crate::stacks;
use crate::suite::{self, Outcome, Probe, TestCase};
use crate::watched;

/// Runs `cargo hangcheck test` and returns the exit code.
pub fn test(args: &TestArgs) -> i32 {
    let json = args.message_format == MessageFormat::Json;
    let mut outputs: Vec<Box<dyn Reporter>> = vec![Box::new(Displayer::new(json))];
    if json {
        outputs.push(Box::new(JsonLines));
    }
    if let Some(github) = crate::report::github::GithubActions::from_env(json) {
        outputs.push(Box::new(github));
    }
    let mut reporters = Reporters::new(outputs);
    let started = std::time::Instant::now();
    let (result, run_dir) = prepare_and_run(args, &mut reporters);
    if let Err(e) = &result {
        reporters.emit(Event::SetupError { error: e });
    }
    let report = reporters.finish(started.elapsed(), run_dir.as_ref());
    report.exit_code
}

/// Everything up to the end of the run; the run directory, once it exists, comes back
/// even when the run fails, so the report is written into it.
fn prepare_and_run(args: &TestArgs, reporters: &mut Reporters) -> (Result<(), SetupError>, Option<RunDir>) {
    let signals = Signals::install();
    leftovers::become_subreaper();
    let config = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => return (Err(e), None),
    };
    reporters.emit(Event::Building {
        package: &config.package,
        server_bin: &config.server_bin,
        test_targets: &config.test_targets,
    });
    let built = match build::build(&config, &signals) {
        Ok(b) => b,
        Err(e) => return (Err(e), None),
    };
    let run_dir = match RunDir::create(&config.hangcheck_dir.join("runs")) {
        Ok(d) => d,
        Err(e) => return (Err(SetupError::io("cannot create the run directory")(e)), None),
    };
    let marker = ondemand::announce_runner(&run_dir, &config.package);
    let root = build::workspace_root(&config.manifest_path).to_string_lossy().into_owned();
    let mut run = Run {
        config,
        built,
        run_dir,
        signals,
        reporters,
        server: None,
        baseline: None,
        last: None,
        tests: Vec::new(),
        harnesses: Harnesses::default(),
        warmup: Vec::new(),
        root,
        stall_count: 0,
        evidence_left: u32::MAX,
        judged: Judged::default(),
        since: 0,
    };
    if run.config.rounds.repeating() {
        run.evidence_left = EVIDENCE_ROUNDS;
    }
    let mut result = run.execute();
    run.stop_server("shutdown");
    let found = leftovers::find(&[], |_| true);
    run.end_leftovers(found, "the end of the run", "end");
    run.take_events(None);
    if result.is_ok() && run.signals.interrupted() {
        result = Err(SetupError::Interrupted);
    }
    drop(marker);
    (result, Some(run.run_dir))
}

/// With `--fresh-server`, the verdicts of the rounds whose servers are gone.
#[derive(Default)]
struct Judged {
    leaks: Vec<analysis::Leak>,
    concurrent: Vec<analysis::ConcurrentOps>,
}

/// The state of one run.
struct Run<'r> {
    config: Config,
    built: Built,
    run_dir: RunDir,
    signals: Signals,
    reporters: &'r mut Reporters,
    server: Option<Server>,
    baseline: Option<Snapshot>,
    last: Option<Snapshot>,
    tests: Vec<TestRecord>,
    /// The single-process path's harness processes.
    harnesses: Harnesses,
    /// Tests run before each baseline (`warmup = [...]`).
    warmup: Vec<TestCase>,
    /// The workspace root, cut from the front of file names in culprits.
    root: String,
    /// Stalls reported so far (`--until-fail` stops at a round that stalled).
    stall_count: usize,
    /// How many more hung tests get evidence: all without rounds, [`EVIDENCE_ROUNDS`] with.
    evidence_left: u32,
    /// With `--fresh-server`, the leaks of the rounds whose servers are judged and gone.
    judged: Judged,
    /// Where the running server's tests begin in `tests`.
    since: usize,
}

/// The run's steps, for the order [`crate::rounds::run`] takes them in.
impl crate::rounds::Steps for Run<'_> {
    fn emit(&mut self, event: Event<'_>) {
        self.reporters.emit(event);
    }

    fn interrupted(&self) -> bool {
        self.signals.interrupted()
    }

    fn tests_so_far(&self) -> usize {
        self.tests.len()
    }

    fn stalls_so_far(&self) -> usize {
        self.stall_count
    }

    fn plan(&mut self, order: &[TestCase], run_ignored: crate::cli::RunIgnored) {
        // Only what runs: a skipped trial in a plan would be started out of turn.
        self.harnesses.plan(order.iter().filter(|c| suite::runs(c, run_ignored)), &self.signals);
    }

    fn run_one(&mut self, case: &TestCase, epoch: u64) -> Result<bool, SetupError> {
        Run::run_one(self, case, epoch)
    }

    fn skip(&mut self, case: &TestCase, epoch: u64) {
        Run::skip(self, case, epoch)
    }

    fn end_round_server(&mut self, round: u32) -> Result<bool, SetupError> {
        Run::end_round_server(self, round)
    }

    fn start_round_server(&mut self, round: u32) -> Result<(), SetupError> {
        self.start_server(&format!("rounds/{round}/server.log"))?;
        self.since = self.tests.len();
        Ok(())
    }
}

/// With rounds, the hangs whose evidence is written: the first few tell where it waits,
/// and a run of thousands of rounds must not fill the disk.
const EVIDENCE_ROUNDS: u32 = 5;

impl Run<'_> {
    fn execute(&mut self) -> Result<(), SetupError> {
        let suite::Selection { warmup, tests: cases } =
            suite::list(&self.config, &self.built, &self.run_dir, &self.signals)?;
        self.check_selection(&cases)?;
        self.warmup = warmup;
        self.reporters.emit(Event::RunStarted {
            package: &self.config.package,
            server_bin: &self.config.server_bin,
            tokio_unstable: self.built.tokio_unstable,
            run_dir: self.run_dir.path(),
            tests: &cases,
            watchdog: !self.config.stall_threshold.is_zero(),
            stall_verdict: self.config.stall_verdict,
            stress: self.config.stress,
        });
        self.start_server("server.log")?;

        let plan = self.config.rounds.clone();
        let policy = crate::rounds::Policy { run_ignored: self.config.run_ignored, fail_fast: self.config.fail_fast };
        let round = crate::rounds::run(self, &cases, &plan, policy)?;
        self.harnesses.finish(&self.signals);
        if self.signals.interrupted() {
            return Ok(());
        }
        let ran: Vec<&TestRecord> = self.tests.iter().filter(|t| t.reached.is_some()).collect();
        if !ran.is_empty() && ran.iter().all(|t| t.reached == Some(false)) {
            let env = self.server.as_ref().map(Server::test_env).transpose()?.unwrap_or_default();
            let vars: Vec<String> = env.into_iter().map(|(k, _)| k).collect();
            return Err(SetupError::Unwatched(watched::none_reached(&vars)));
        }
        let Judged { mut leaks, mut concurrent } = std::mem::take(&mut self.judged);
        // Unless the last round's server is already judged and gone (`--until-fail`).
        if self.server.is_some() {
            let (more, also) = self.judge(self.since, plan.fresh_server.then_some(round))?;
            leaks.extend(more);
            concurrent.extend(also);
        }
        if let Some(baseline) = &self.config.baseline {
            baseline.judge(&mut leaks, self.config.fail_on);
        }
        self.reporters.emit(Event::Verdicts { leaks: &leaks, concurrent: &concurrent });
        Ok(())
    }

    /// Starts the server, its output to `log`, and takes its quiet baseline.
    fn start_server(&mut self, log: &str) -> Result<(), SetupError> {
        self.server = Some(Server::start(&self.config, &self.built, &self.run_dir, &self.signals, log)?);
        let (baseline, startup) = self.quiet_baseline()?;
        // Announcements made while the server was settling, before the Ready line.
        self.take_events(None);
        self.record_snapshot("baseline", None, &baseline)?;
        let server = self.server.as_ref().expect("the server is started before the baseline");
        self.reporters.emit(Event::ServerReady {
            pid: server.child.pid(),
            capabilities: &server.hello.capabilities,
            addresses: &server.addrs,
            log: &server.log,
            runtimes: &baseline.runtimes,
        });
        self.reporters.emit(Event::Startup { growth: &startup });
        match watched::check_runtimes(&baseline) {
            Ok(Some(warning)) => self.reporters.emit(Event::Warning { message: &warning }),
            Ok(None) => {}
            Err(e) => return Err(SetupError::Unwatched(e)),
        }
        self.reporters.emit(Event::Baseline { snapshot: &baseline });
        self.baseline = Some(baseline.clone());
        self.last = Some(baseline);
        Ok(())
    }

    /// `--fresh-server` between rounds: judges round `round`'s leaks (its tests are
    /// `self.tests[self.since..]`) against its server's baseline, and stops that server as the
    /// end of a run does (a shutdown hang is a hang, with its evidence). Says whether the
    /// shutdown hung.
    fn end_round_server(&mut self, round: u32) -> Result<bool, SetupError> {
        self.harnesses.finish(&self.signals);
        let (leaks, concurrent) = self.judge(self.since, Some(round))?;
        self.judged.leaks.extend(leaks);
        self.judged.concurrent.extend(concurrent);
        let hung = self.stop_server(&format!("rounds/{round}/shutdown"));
        self.server = None;
        let after = format!("round {round}'s server");
        self.end_leftovers(leftovers::find(&[], |_| true), &after, &format!("round-{round}-end"));
        Ok(hung)
    }

    /// The leak verdicts of the running server: the final settled snapshot against its
    /// baseline, the growth attributed to its tests (`self.tests[since..]`); with
    /// `--fresh-server`, those of round `round`.
    fn judge(
        &mut self,
        since: usize,
        round: Option<u32>,
    ) -> Result<(Vec<analysis::Leak>, Vec<analysis::ConcurrentOps>), SetupError> {
        let after = self.tests.len() as u64 + 1;
        let _ = self.server_mut().link.set_epoch(after, SNAPSHOT_TIMEOUT);
        let baseline = self.baseline.clone().unwrap_or_default();
        let last = self.settle(&baseline, "the last test", settle::Until::Back)?;
        self.take_events(None);
        self.record_snapshot("final", Some(after), &last)?;
        self.reporters.emit(Event::FinalSnapshot { snapshot: &last });
        let names: Vec<String> = self.tests.iter().map(round_id).collect();
        // Only this server's tests: an earlier round's server and its survivors are gone.
        let history: Vec<Option<&Snapshot>> =
            self.tests.iter().enumerate().map(|(i, t)| t.snapshot.as_ref().filter(|_| i >= since)).collect();
        let epochs = Epochs { names: &names };
        let mut leaks = analysis::leaks(&baseline, &last, &history, &epochs, &self.config.leaks);
        let stacks_file = match round {
            Some(r) => format!("rounds/{r}/leaks.stacks.txt"),
            None => "leaks.stacks.txt".to_owned(),
        };
        self.where_survivors_wait(&mut leaks, &stacks_file);
        leaks.iter_mut().for_each(|l| l.round = round);
        let concurrent = analysis::concurrent_ops(&last, &epochs);
        self.last = Some(last);
        Ok((leaks, concurrent))
    }

    /// A selection with no test to run: an error (a typo in a filter must not give a
    /// green CI) unless `no-tests` says otherwise.
    fn check_selection(&mut self, cases: &[TestCase]) -> Result<(), SetupError> {
        if cases.iter().any(|c| suite::runs(c, self.config.run_ignored)) {
            return Ok(());
        }
        let what = if cases.is_empty() {
            "no test matches the filters".to_owned()
        } else {
            format!("every selected test ({}) is #[ignore]d; --run-ignored all runs them", cases.len())
        };
        match self.config.no_tests {
            NoTests::Fail => Err(SetupError::Config(format!(
                "{what}; check the filters and test targets, or pass --no-tests warn (no-tests = \"warn\")"
            ))),
            NoTests::Warn => {
                let message = format!("{what}; the server is still started, judged and stopped");
                self.reporters.emit(Event::Warning { message: &message });
                Ok(())
            }
            NoTests::Pass => Ok(()),
        }
    }

    /// The baseline, once the server is quiet: after `warmup`, its counts unchanged for
    /// `baseline-settle`, both within the start-up timeout. What rose meanwhile is
    /// start-up, listed as such and never blamed on a test.
    fn quiet_baseline(&mut self) -> Result<(Snapshot, Vec<StartupGrowth>), SetupError> {
        let ready = self.snapshot("the ready")?;
        let until = std::time::Instant::now() + self.config.startup_timeout;
        let warmup_end = std::time::Instant::now() + self.config.warmup;
        while std::time::Instant::now() < warmup_end.min(until) && !self.signals.interrupted() {
            std::thread::sleep(Duration::from_millis(20));
        }
        for case in self.warmup.clone() {
            self.run_warmup(&case)?;
        }
        let quiet_for = self.config.baseline_settle;
        let server = self.server.as_mut().expect("the server is started before the baseline");
        let (baseline, quiet) = settle::quiet(&mut server.link, quiet_for, until, &self.signals)
            .map_err(|e| server.failure(format!("the agent did not answer the baseline snapshot: {e}")))?;
        if !quiet {
            let message = format!(
                "the server's counts did not stay still for {quiet_for:?} within the start-up timeout; the baseline is taken anyway"
            );
            self.reporters.emit(Event::Warning { message: &message });
        }
        let startup = analysis::startup_growth(&ready, &baseline);
        Ok((baseline, startup))
    }

    /// Runs a warmup test before the baseline, in the start-up epoch (0), so that what it
    /// leaves (a pool it filled, a file it opened) is start-up and never a verdict. One
    /// that does not pass is a setup error: the baseline would not be what the judged
    /// tests start from. A hung one gets its evidence, as any test does.
    fn run_warmup(&mut self, case: &TestCase) -> Result<(), SetupError> {
        let id = case.id();
        self.take_events(None);
        self.harnesses.plan([case], &self.signals);
        let (run, ..) = self.exercise(case, 0, Snapshot::default(), 1, &format!("after-warmup-{id}"))?;
        self.check_server_alive(&id)?;
        self.take_events(None);
        self.reporters.emit(Event::Warmup { case, run: &run });
        match &run.outcome {
            Outcome::Passed => Ok(()),
            Outcome::Interrupted => Err(SetupError::Interrupted),
            other => {
                let (outcome, detail) = crate::report::TestOutcome::of(other);
                let why = detail.map(|d| format!(" ({d})")).unwrap_or_default();
                Err(SetupError::Config(format!(
                    "the warmup test {id} {}{why}, so no baseline was taken; its log: {}",
                    outcome.name(),
                    run.log.display()
                )))
            }
        }
    }

    /// An ignored test: reported, not run; its epoch stays unused.
    fn skip(&mut self, case: &TestCase, epoch: u64) {
        let log = self.run_dir.join(format!(
            "tests/{}/{}.log",
            crate::rundir::file_name(&case.target),
            crate::rundir::file_name(&case.name)
        ));
        let run = suite::TestRun {
            outcome: Outcome::Ignored,
            duration: Duration::ZERO,
            log,
            evidence: Vec::new(),
            panic: None,
        };
        let record = TestRecord {
            case: case.clone(),
            epoch,
            run,
            snapshot: None,
            stacks_source: None,
            lingering: Vec::new(),
            settle: Duration::ZERO,
            waiting: Vec::new(),
            blocked_threads: Vec::new(),
            last_events: Vec::new(),
            reached: None,
        };
        self.reporters.emit(Event::TestFinished { record: &record });
        self.tests.push(record);
    }

    /// Runs one test in epoch `epoch`, then settles and snapshots; says whether it passed.
    fn run_one(&mut self, case: &TestCase, epoch: u64) -> Result<bool, SetupError> {
        let id = case.id();
        // Announcements (and stalls) since the last test, before its environment is made.
        self.take_events(None);
        let server = self.server.as_mut().expect("the server is started before any test");
        server
            .link
            .set_epoch(epoch, SNAPSHOT_TIMEOUT)
            .map_err(|e| server.failure(format!("the agent stopped answering before {id}: {e}")))?;
        self.reporters.emit(Event::TestStarted { case, epoch });
        let server = self.server.as_ref().expect("the server is started before any test");
        let ports: Vec<u16> =
            server.addrs.values().filter_map(|a| a.parse::<std::net::SocketAddr>().ok()).map(|a| a.port()).collect();
        let connections_before = watched::tcp_connections(&ports);
        let before = self.last.clone().unwrap_or_default();
        let (run, stacks_source, hang_found) =
            self.exercise(case, epoch, before, self.config.stress, &format!("after-{id}"))?;
        self.take_events(Some(&id));
        let mut record = TestRecord {
            case: case.clone(),
            epoch,
            run,
            snapshot: None,
            stacks_source,
            lingering: Vec::new(),
            settle: Duration::ZERO,
            waiting: hang_found.waiting,
            blocked_threads: hang_found.blocked_threads,
            last_events: hang_found.last_events,
            reached: None,
        };
        let outcome = self.after_test(&mut record);
        if record.reached == Some(false) {
            // A server that answers in its accept loop spawns nothing: the kernel saw the
            // connection all the same.
            record.reached = Some(!watched::tcp_connections(&ports).is_subset(&connections_before));
        }
        self.take_events(Some(&id));
        self.reporters.emit(Event::TestFinished { record: &record });
        if let Some(s) = &record.snapshot {
            self.last = Some(s.clone());
        }
        let passed = record.run.outcome == Outcome::Passed;
        self.tests.push(record);
        outcome.map(|()| passed)
    }

    /// Runs `case` (in `copies` at once with `--stress`) against the server in `epoch`,
    /// serving on-demand requests while it runs and writing the server's evidence if it
    /// hangs; then ends the processes it left behind (reported under `leftovers`).
    /// `before` is the settled snapshot the test starts from.
    fn exercise(
        &mut self,
        case: &TestCase,
        epoch: u64,
        before: Snapshot,
        copies: u32,
        leftovers: &str,
    ) -> Result<(suite::TestRun, Option<hangcheck_runtime::protocol::StackSource>, Found), SetupError> {
        let id = case.id();
        let server = self.server.as_mut().expect("the server is started before any test");
        let env = server.env_of_a_test()?;
        let mut probe = ServerProbe {
            server,
            run_dir: &self.run_dir,
            signals: &self.signals,
            reporters: self.reporters,
            stacks_source: None,
            last_asked: before.clone(),
            before,
            root: &self.root,
            epoch,
            found: Found::default(),
            evidence_left: &mut self.evidence_left,
        };
        let cx = harness::Context { config: &self.config, env: &env, run_dir: &self.run_dir, signals: &self.signals };
        let run = if copies > 1 {
            crate::copies::run(case, copies, &cx, &mut probe)
        } else if case.in_process {
            self.harnesses.run(case, &cx, &mut probe)
        } else {
            suite::run(case, &self.config, &env, &self.run_dir, &self.signals, &mut probe)
        };
        let stacks_source = probe.stacks_source;
        let found = std::mem::take(&mut probe.found);
        // A harness process lives on between its trials; what it detached belongs to
        // the trial just run.
        let harness = self.harnesses.running();
        let children: Vec<u32> = std::iter::once(server.child.pid()).chain(harness.map(|(pid, _)| pid)).collect();
        let left = leftovers::find(&children, |who| who == id || harness.is_some_and(|(_, by)| who == by));
        self.end_leftovers(left, &id, leftovers);
        Ok((run, stacks_source, found))
    }

    /// Checks the server after a test and takes its settled snapshot.
    fn after_test(&mut self, record: &mut TestRecord) -> Result<(), SetupError> {
        let id = record.case.id();
        self.check_server_alive(&id)?;
        if record.run.outcome == Outcome::Interrupted {
            return Ok(());
        }
        let previous = self.last.clone().unwrap_or_default();
        let started = std::time::Instant::now();
        let snapshot = self.settle(&previous, &id, settle::Until::BackOrParked)?;
        record.settle = started.elapsed();
        self.record_snapshot(&id, Some(record.epoch), &snapshot)?;
        record.lingering = analysis::lingering(&snapshot, record.epoch);
        record.reached = Some(watched::reached(&previous, &snapshot, self.built.tokio_unstable));
        record.snapshot = Some(snapshot);
        Ok(())
    }

    fn server_mut(&mut self) -> &mut Server {
        self.server.as_mut().expect("the server is started before any test")
    }

    fn snapshot(&mut self, what: &str) -> Result<Snapshot, SetupError> {
        let server = self.server_mut();
        let answer = server.link.snapshot(SNAPSHOT_TIMEOUT);
        answer.map_err(|e| server.failure(format!("the agent did not answer {what} snapshot: {e}")))
    }

    fn settle(&mut self, before: &Snapshot, after: &str, until: settle::Until) -> Result<Snapshot, SetupError> {
        let max = self.config.settle;
        let server = self.server.as_mut().expect("the server is started before any test");
        settle::settle(&mut server.link, before, max, until, &self.config.leaks, &self.signals).map_err(|e| {
            let stopped = stacks::process_state(server.child.pid()) == "T";
            let cause = if stopped {
                format!("the server is stopped (SIGSTOP) and cannot answer after {after}: {e}")
            } else {
                format!("the agent stopped answering after {after}: {e}")
            };
            server.failure(cause)
        })
    }

    /// Collects what the agent pushed on its own: stalls (already on disk, reported now,
    /// attributed to the test whose epoch they came in, `current` being the running one)
    /// and protocol errors.
    fn take_events(&mut self, current: Option<&str>) {
        let Some(server) = self.server.as_mut() else { return };
        let events = server.take_events();
        for message in &events.protocol_errors {
            self.reporters.emit(Event::ProtocolError { message });
        }
        let names: Vec<String> = self.tests.iter().map(|t| t.case.id()).chain(current.map(str::to_owned)).collect();
        self.stall_count += events.stalls.len();
        for (stall, file, at) in events.stalls {
            let entry = stall_entry(&stall, file, at, &names);
            self.reporters.emit(Event::Stall { stall: &entry });
        }
        for end in events.stall_ends {
            self.reporters.emit(Event::StallEnded { seq: end.seq, total_ms: end.total_ms });
        }
    }

    /// Reports and ends processes of the run still alive after `after`.
    fn end_leftovers(&mut self, found: Vec<(u32, String, String)>, after: &str, label: &str) {
        let file = self.run_dir.join(format!("leftovers/{label}.txt"));
        for leftover in leftovers::end(found, after, &self.run_dir, label) {
            self.reporters.emit(Event::Leftover { leftover: &leftover, after, file: &file });
        }
    }

    /// For each leaked task group, where its survivors wait: the async stacks of the live
    /// tasks, asked of the agent once the verdicts are in, and written to
    /// `leaks.stacks.txt`.
    fn where_survivors_wait(&mut self, leaks: &mut [crate::analysis::Leak], file: &str) {
        use crate::analysis::MeasureKind;
        if !leaks.iter().any(|l| matches!(l.kind, MeasureKind::Named | MeasureKind::Location)) {
            return;
        }
        let server = self.server_mut();
        let Ok(stacks) = server.link.stacks() else { return };
        let summary: Vec<String> = leaks
            .iter()
            .filter(|l| matches!(l.kind, MeasureKind::Named | MeasureKind::Location))
            .flat_map(|l| {
                let waiting = crate::culprit::waiting_in(&stacks, |g| g == Some(l.group.as_str()), &self.root);
                std::iter::once(format!("leaked group {}:", l.group))
                    .chain(waiting.iter().map(|w| format!("  {}", w.describe())))
                    .collect::<Vec<_>>()
            })
            .collect();
        let _ = self.run_dir.write_durable(file, crate::stackfile::render(&stacks, &summary).as_bytes());
        for leak in leaks.iter_mut().filter(|l| matches!(l.kind, MeasureKind::Named | MeasureKind::Location)) {
            leak.waiting = crate::culprit::waiting_in(&stacks, |g| g == Some(leak.group.as_str()), &self.root);
        }
    }

    fn check_server_alive(&mut self, test: &str) -> Result<(), SetupError> {
        let server = self.server_mut();
        match server.exit_status() {
            None => Ok(()),
            Some(status) => {
                Err(server
                    .failure(format!("the server exited during {test} with {}", crate::process::describe(status))))
            }
        }
    }

    fn record_snapshot(&self, label: &str, epoch: Option<u64>, s: &Snapshot) -> Result<(), SetupError> {
        let line = serde_json::json!({ "label": label, "test_epoch": epoch, "snapshot": s });
        self.run_dir
            .append_line("snapshots.jsonl", line.to_string().as_bytes())
            .map_err(SetupError::io("cannot append to snapshots.jsonl"))
    }

    /// SIGTERM and the grace period; a server still running after it is a shutdown hang:
    /// its stacks and a snapshot (which groups are still alive, and how old) are written
    /// before it is SIGKILLed.
    /// Its evidence goes to `label` (`shutdown`, or `rounds/N/shutdown` between rounds);
    /// says whether it hung.
    fn stop_server(&mut self, label: &str) -> bool {
        let Some(server) = self.server.as_mut() else { return false };
        let grace =
            if self.signals.interrupted() { crate::process::INTERRUPTED_GRACE } else { self.config.shutdown_grace };
        let run_dir = &self.run_dir;
        let root = self.root.as_str();
        let mut taken = None;
        let stop = server.stop(grace, |link, pid| {
            let t = stacks::evidence(link, pid, run_dir, label, |s, _| stacks::summarize_all(s, root));
            taken = Some((t.evidence.files.clone(), t.source, t.snapshot));
            t.evidence
        });
        let hung = stop == Stop::Hung;
        let (evidence, source, snapshot) = match taken {
            Some((files, source, snapshot)) => (files, Some(source), snapshot),
            None => (Vec::new(), None, None),
        };
        if let (true, Some(source)) = (hung, source) {
            self.reporters.emit(Event::EvidenceWritten { test: None, files: &evidence, source });
        }
        let survivors = snapshot
            .iter()
            .flat_map(|s| s.groups.iter())
            .filter(|g| g.live > 0)
            .map(|g| Survivor {
                group: g.key.clone(),
                location: g.location.clone(),
                live: g.live,
                oldest_age_ms: g.oldest_age_ms,
            })
            .collect();
        let shutdown = ShutdownEntry {
            outcome: if hung { ShutdownOutcome::Hung } else { ShutdownOutcome::Clean },
            evidence,
            stacks_source: if hung { source } else { None },
            survivors,
        };
        self.reporters.emit(Event::Shutdown { shutdown: &shutdown, grace });
        hung
    }
}

/// The run's side of a running test: serves on-demand stacks while it runs, and writes
/// the evidence when it hangs.
struct ServerProbe<'a> {
    server: &'a mut Server,
    run_dir: &'a RunDir,
    signals: &'a Signals,
    reporters: &'a mut Reporters,
    stacks_source: Option<hangcheck_runtime::protocol::StackSource>,
    /// The snapshot an on-demand snapshot's deltas are taken against.
    last_asked: Snapshot,
    /// The settled snapshot before the test: groups that grew since are the test's.
    before: Snapshot,
    /// The workspace root, cut from file names.
    root: &'a str,
    /// The running test's epoch: the tasks born in it are its own.
    epoch: u64,
    /// Where the hung test's tasks wait, read off its evidence.
    found: Found,
    /// How many more hung tests get evidence written.
    evidence_left: &'a mut u32,
}

/// What a hung test's evidence says about where it is stuck.
#[derive(Default)]
struct Found {
    waiting: Vec<crate::culprit::Waiting>,
    blocked_threads: Vec<String>,
    last_events: Vec<String>,
}

impl Probe for ServerProbe<'_> {
    fn tick(&mut self) {
        if self.signals.take_stacks_request() {
            ondemand::serve_stacks(&mut self.server.link, self.server.child.pid(), self.run_dir);
        }
        if self.signals.take_snapshot_request() {
            ondemand::serve_snapshot(&mut self.server.link, &mut self.last_asked, self.run_dir);
        }
    }

    fn hung(&mut self, case: &TestCase) -> Evidence {
        self.reporters.emit(Event::TestHung { case });
        if *self.evidence_left == 0 {
            return Evidence::none("the first hung rounds' evidence is on disk; the rest is capped");
        }
        *self.evidence_left -= 1;
        let id = case.id();
        let label = match case.round {
            0 => format!("hangs/{}", crate::rundir::file_name(&id)),
            r => format!("rounds/{r}/hangs/{}", crate::rundir::file_name(&id)),
        };
        let (before, root) = (&self.before, self.root);
        let mut found = Found::default();
        let taken =
            stacks::evidence(&mut self.server.link, self.server.child.pid(), self.run_dir, &label, |stacks, now| {
                // The test's tasks: those of the groups that grew while it ran.
                let grew: Vec<&str> = now
                    .iter()
                    .flat_map(|now| now.groups.iter())
                    .filter(|g| g.live > before.groups.iter().find(|b| b.key == g.key).map_or(0, |b| b.live))
                    .map(|g| g.key.as_str())
                    .collect();
                found = Found {
                    waiting: crate::culprit::waiting_in(stacks, |group| group.is_some_and(|g| grew.contains(&g)), root),
                    blocked_threads: crate::culprit::blocked_threads(stacks, root),
                    last_events: Vec::new(),
                };
                let mut summary = vec![format!("{id} hung; where its tasks wait:")];
                summary.extend(found.waiting.iter().map(|w| format!("  {}", w.describe())));
                summary.extend(crate::culprit::lock_note(&found.waiting).map(|n| format!("  {n}")));
                summary.extend(found.blocked_threads.iter().map(|t| format!("  thread {t}")));
                summary
            });
        self.found = found;
        self.reporters.emit(Event::EvidenceWritten {
            test: Some(&id),
            files: &taken.evidence.files,
            source: taken.source,
        });
        self.stacks_source = Some(taken.source);
        if let Some(recorded) = &taken.recorded {
            self.found.last_events = crate::recorded::last_words(recorded, self.epoch);
        }
        taken.evidence
    }
}

/// A test's name in leak attributions: with rounds, which round too.
fn round_id(t: &TestRecord) -> String {
    match t.case.round {
        0 => t.case.id(),
        r => format!("{} (round {r})", t.case.id()),
    }
}

fn stall_entry(stall: &Stall, file: Option<PathBuf>, at: std::time::Instant, names: &[String]) -> StallEntry {
    let owner = Epochs { names }.owner(stall.epoch);
    StallEntry {
        test: (stall.epoch as usize <= names.len()).then_some(owner),
        epoch: stall.epoch,
        tid: stall.tid,
        thread: stall.thread.clone(),
        stuck_ms: stall.stuck_ms,
        threshold_ms: stall.threshold_ms,
        task: stall.task.clone(),
        blocked_in: crate::culprit::in_frames(&stall.stack.frames),
        note: stall.stack.note.clone(),
        seq: stall.seq,
        total_ms: None,
        still_stuck_at_test_end: false,
        file,
        frames: stall.stack.frames.clone(),
        caught_at: Some(at),
    }
}
