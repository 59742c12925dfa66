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

use crate::analysis::{self, ConcurrentOps, Epochs, Leak, SNAPSHOT_TIMEOUT};
use crate::build::{self, Built};
use crate::cli::TestArgs;
use crate::config::Config;
use crate::errors::SetupError;
use crate::leftovers::{self, Leftover};
use crate::ondemand;
use crate::report::{self, terminal, Report, ShutdownEntry, StallEntry, Survivor, TestRecord, Verdict};
use crate::rundir::{Evidence, RunDir};
use crate::server::{Server, Stop};
use crate::signal::Signals;
use crate::stacks;
use crate::suite::{self, Outcome, Probe, TestCase};

/// Runs `cargo hangcheck test` and returns the exit code.
pub fn test(args: &TestArgs) -> i32 {
    let signals = Signals::install();
    leftovers::become_subreaper();
    let config = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => return e.report(),
    };
    terminal::status(
        "Building",
        format!("{} (server `{}`, tests {})", config.package, config.server_bin, config.test_targets.join(", ")),
    );
    let built = match build::build(&config, &signals) {
        Ok(b) => b,
        Err(e) => return e.report(),
    };
    let run_dir = match RunDir::create(&config.hangcheck_dir.join("runs")) {
        Ok(d) => d,
        Err(e) => return SetupError::io("cannot create the run directory")(e).report(),
    };
    let marker = ondemand::announce_runner(&run_dir, &config.package);
    let mut run = Run::new(config, built, run_dir, signals);
    let result = run.execute();
    let code = run.finish(result);
    drop(marker);
    code
}

/// The state of one run.
struct Run {
    config: Config,
    built: Built,
    run_dir: RunDir,
    signals: Signals,
    started: std::time::Instant,
    server: Option<Server>,
    baseline: Option<Snapshot>,
    last: Option<Snapshot>,
    tests: Vec<TestRecord>,
    stalls: Vec<StallEntry>,
    leaks: Vec<Leak>,
    concurrent: Vec<ConcurrentOps>,
    shutdown: ShutdownEntry,
    protocol_errors: Vec<String>,
    leftovers: Vec<Leftover>,
}

impl Run {
    fn new(config: Config, built: Built, run_dir: RunDir, signals: Signals) -> Run {
        Run {
            config,
            built,
            run_dir,
            signals,
            started: std::time::Instant::now(),
            server: None,
            baseline: None,
            last: None,
            tests: Vec::new(),
            stalls: Vec::new(),
            leaks: Vec::new(),
            concurrent: Vec::new(),
            shutdown: ShutdownEntry::not_reached(),
            protocol_errors: Vec::new(),
            leftovers: Vec::new(),
        }
    }

    fn execute(&mut self) -> Result<(), SetupError> {
        let cases = suite::list(&self.config, &self.built, &self.run_dir, &self.signals)?;
        if cases.is_empty() {
            terminal::warn("no test matches the filters; the server is still started, judged and stopped");
        }
        terminal::status(
            "Starting",
            format!(
                "{} ({}), run directory {}",
                self.config.server_bin,
                if self.built.tokio_unstable { "tokio_unstable" } else { "stable" },
                self.run_dir.path().display()
            ),
        );
        let server = self.server.insert(Server::start(&self.config, &self.built, &self.run_dir, &self.signals)?);
        let addrs: Vec<String> = server.addrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        terminal::status("Ready", format!("pid {}, announced {}", server.child.pid(), addrs.join(" ")));
        let baseline = self.snapshot("the baseline")?;
        self.record_snapshot("baseline", None, &baseline)?;
        self.baseline = Some(baseline.clone());
        self.last = Some(baseline);
        terminal::status("Running", format!("{} tests, one at a time", cases.len()));

        for (i, case) in cases.iter().enumerate() {
            if self.signals.interrupted() {
                break;
            }
            let record = self.run_one(case, i as u64 + 1)?;
            let stop = self.config.fail_fast && record.run.outcome != Outcome::Passed;
            self.tests.push(record);
            if stop {
                terminal::warn("stopping at the first failure (--fail-fast)");
                break;
            }
        }
        if self.signals.interrupted() {
            return Ok(());
        }
        let after = self.tests.len() as u64 + 1;
        let _ = self.server_mut().link.set_epoch(after, SNAPSHOT_TIMEOUT);
        let baseline = self.baseline.clone().unwrap_or_default();
        let last = self.settle(&baseline, "the last test")?;
        self.take_events(None);
        self.record_snapshot("final", Some(after), &last)?;
        let names: Vec<String> = self.tests.iter().map(|t| t.case.id()).collect();
        let history: Vec<Option<&Snapshot>> = self.tests.iter().map(|t| t.snapshot.as_ref()).collect();
        let epochs = Epochs { names: &names };
        self.leaks = analysis::leaks(&baseline, &last, &history, &epochs, &self.config);
        self.concurrent = analysis::concurrent_ops(&last, &epochs);
        self.last = Some(last);
        Ok(())
    }

    /// Runs one test in epoch `epoch`, then settles and snapshots.
    fn run_one(&mut self, case: &TestCase, epoch: u64) -> Result<TestRecord, SetupError> {
        let id = case.id();
        // Announcements (and stalls) since the last test, before its environment is made.
        self.take_events(None);
        let server = self.server.as_mut().expect("the server is started before any test");
        server
            .link
            .set_epoch(epoch, SNAPSHOT_TIMEOUT)
            .map_err(|e| server.failure(format!("the agent stopped answering before {id}: {e}")))?;
        let mut env = server.test_env()?;
        env.push(("HANGCHECK_SERVER_PID".to_owned(), server.child.pid().to_string()));
        let last_asked = self.last.clone().unwrap_or_default();
        let mut probe =
            ServerProbe { server, run_dir: &self.run_dir, signals: &self.signals, stacks_source: None, last_asked };
        let run = suite::run(case, &self.config, &env, &self.run_dir, &self.signals, &mut probe);
        let stacks_source = probe.stacks_source;
        let found = leftovers::find(&[server.child.pid()], |who| who == id);
        self.end_leftovers(found, &id, &format!("after-{id}"));
        self.take_events(Some(&id));
        let mut record = TestRecord {
            case: case.clone(),
            epoch,
            run,
            snapshot: None,
            stacks_source,
            lingering: Vec::new(),
            settle: Duration::ZERO,
        };
        let outcome = self.after_test(&mut record);
        self.take_events(Some(&id));
        terminal::test_line(&record, self.last.as_ref());
        if let Some(s) = &record.snapshot {
            self.last = Some(s.clone());
        }
        match outcome {
            Ok(()) => Ok(record),
            Err(e) => {
                self.tests.push(record);
                Err(e)
            }
        }
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
        let snapshot = self.settle(&previous, &id)?;
        record.settle = started.elapsed();
        self.record_snapshot(&id, Some(record.epoch), &snapshot)?;
        record.lingering = analysis::lingering(&snapshot, record.epoch);
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

    fn settle(&mut self, before: &Snapshot, after: &str) -> Result<Snapshot, SetupError> {
        let settle = self.config.settle;
        let server = self.server.as_mut().expect("the server is started before any test");
        analysis::settle(&mut server.link, before, settle, &self.config, &self.signals).map_err(|e| {
            let stopped = stacks::process_state(server.child.pid()) == "T";
            let cause = if stopped {
                format!("the server is stopped (SIGSTOP) and cannot answer after {after}: {e}")
            } else {
                format!("the agent stopped answering after {after}: {e}")
            };
            server.failure(cause)
        })
    }

    /// Collects what the agent pushed on its own: stalls (already on disk, printed now,
    /// attributed to the test whose epoch they came in, `current` being the running one)
    /// and protocol errors.
    fn take_events(&mut self, current: Option<&str>) {
        let Some(server) = self.server.as_mut() else { return };
        let events = server.take_events();
        self.protocol_errors.extend(events.protocol_errors);
        let names: Vec<String> = self.tests.iter().map(|t| t.case.id()).chain(current.map(str::to_owned)).collect();
        for (stall, file) in events.stalls {
            let entry = stall_entry(&stall, file, &names);
            terminal::stall(&entry);
            self.stalls.push(entry);
        }
    }

    /// Reports and ends processes of the run still alive after `after`.
    fn end_leftovers(&mut self, found: Vec<(u32, String, String)>, after: &str, label: &str) {
        for l in leftovers::end(found, after, &self.run_dir, label) {
            terminal::warn(format!(
                "LEFTOVER process {} `{}` started by {} was still running after {}; {} ({})",
                l.pid,
                l.command,
                l.started_by,
                after,
                l.ended,
                self.run_dir.join(format!("leftovers/{label}.txt")).display()
            ));
            self.leftovers.push(l);
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

    /// Stops the server, writes the report, prints the end of the run; returns the exit
    /// code.
    fn finish(mut self, result: Result<(), SetupError>) -> i32 {
        let mut error = result.err();
        self.stop_server();
        let found = leftovers::find(&[], |_| true);
        self.end_leftovers(found, "the end of the run", "end");
        self.take_events(None);
        if error.is_none() && self.signals.interrupted() {
            error = Some(SetupError::Interrupted);
        }
        let hang = self.shutdown.outcome == "hung"
            || !self.stalls.is_empty()
            || self.tests.iter().any(|t| t.run.outcome == Outcome::TimedOut);
        let verdict = match &error {
            Some(SetupError::Interrupted) => Verdict::Interrupted,
            // A run that ended because something hung reports the hang.
            Some(_) if hang => Verdict::Hang,
            Some(_) => Verdict::SetupError,
            None => match report::verdict(&self.tests, &self.leaks, &self.concurrent, hang, false) {
                // A process left running is a leak too.
                Verdict::Ok if !self.leftovers.is_empty() => Verdict::Leaks,
                v => v,
            },
        };
        if let Some(e) = &error {
            e.report();
        }
        let report = self.report(verdict, error.as_ref().map(|e| e.to_string()));
        if let (Some(baseline), None) = (&self.baseline, &error) {
            terminal::table(baseline, &self.tests);
            terminal::leaks(&self.leaks, self.built.tokio_unstable);
            terminal::operations(&report.concurrent_ops, &self.tests, &report.slow_ops);
            terminal::counters(&report.counters);
        }
        terminal::stall_summary(&self.stalls);
        let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        if let Err(e) = self.run_dir.write_durable("report.json", &json) {
            terminal::error(format!("cannot write report.json: {e}"), &[]);
        }
        if let Err(e) = self.run_dir.write_durable("junit.xml", report::junit::render(&report).as_bytes()) {
            terminal::error(format!("cannot write junit.xml: {e}"), &[]);
        }
        terminal::summary(&report);
        report.exit_code
    }

    /// SIGTERM and the grace period; a server still running after it is a shutdown hang:
    /// its stacks and a snapshot (which groups are still alive, and how old) are written
    /// before it is SIGKILLed.
    fn stop_server(&mut self) {
        let Some(server) = self.server.as_mut() else { return };
        let grace =
            if self.signals.interrupted() { crate::process::INTERRUPTED_GRACE } else { self.config.shutdown_grace };
        let run_dir = &self.run_dir;
        let mut taken = None;
        let stop = server.stop(grace, |link, pid| {
            let (evidence, source, snapshot) = stacks::evidence(link, pid, run_dir, "shutdown");
            taken = Some((evidence.files.clone(), source, snapshot));
            evidence
        });
        let (evidence, source, snapshot) = taken.unwrap_or_default();
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
        self.shutdown = ShutdownEntry {
            outcome: if stop == Stop::Hung { "hung" } else { "clean" },
            evidence,
            stacks_source: (stop == Stop::Hung).then_some(source),
            survivors,
        };
        if stop == Stop::Hung {
            terminal::shutdown_hang(&self.shutdown, grace);
        }
    }

    fn report(&self, verdict: Verdict, error: Option<String>) -> Report {
        let server = self.server.as_ref();
        Report {
            format_version: report::FORMAT_VERSION,
            hangcheck_version: env!("CARGO_PKG_VERSION"),
            package: self.config.package.clone(),
            verdict,
            exit_code: verdict.exit_code(),
            error,
            server: report::ServerEntry {
                bin: self.config.server_bin.clone(),
                pid: server.map(|s| s.child.pid()),
                tokio_unstable: self.built.tokio_unstable,
                capabilities: server.map(|s| s.hello.capabilities.clone()).unwrap_or_default(),
                addresses: server.map(|s| s.addrs.clone()).unwrap_or_default(),
                log: server.map(|s| s.log.clone()).or_else(|| Some(self.run_dir.join("server.log"))),
            },
            run_dir: self.run_dir.path().to_owned(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            tests: self.tests.iter().map(report::TestEntry::from_record).collect(),
            baseline: self.baseline.clone(),
            final_snapshot: self.last.clone(),
            leaks: self.leaks.clone(),
            concurrent_ops: self.concurrent.clone(),
            slow_ops: self.last.as_ref().map(report::slow_ops).unwrap_or_default(),
            counters: self.baseline.as_ref().map(|b| report::counters(b, &self.tests)).unwrap_or_default(),
            stalls: self.stalls.clone(),
            shutdown: self.shutdown.clone(),
            protocol_errors: self.protocol_errors.clone(),
            leftover_processes: self.leftovers.clone(),
        }
    }
}

/// The run's side of a running test: serves on-demand stacks while it runs, and writes
/// the evidence when it hangs.
struct ServerProbe<'a> {
    server: &'a mut Server,
    run_dir: &'a RunDir,
    signals: &'a Signals,
    stacks_source: Option<&'static str>,
    /// The snapshot an on-demand snapshot's deltas are taken against.
    last_asked: Snapshot,
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
        terminal::status("Hung", format!("{}: taking the server's stacks before stopping the test", case.id()));
        let (evidence, source, _) = stacks::evidence(
            &mut self.server.link,
            self.server.child.pid(),
            self.run_dir,
            &format!("hangs/{}", case.id()),
        );
        self.stacks_source = Some(source);
        evidence
    }
}

fn stall_entry(stall: &Stall, file: Option<PathBuf>, names: &[String]) -> StallEntry {
    let owner = Epochs { names }.owner(stall.epoch);
    StallEntry {
        test: (stall.epoch as usize <= names.len()).then_some(owner),
        epoch: stall.epoch,
        tid: stall.tid,
        thread: stall.thread.clone(),
        stuck_ms: stall.stuck_ms,
        threshold_ms: stall.threshold_ms,
        task: stall.task.clone(),
        blocked_in: report::culprit(&stall.stack.frames),
        note: stall.stack.note.clone(),
        file,
        frames: stall.stack.frames.clone(),
    }
}
