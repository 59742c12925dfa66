//! `cargo hangcheck test`: the steps of DESIGN.md in order.
//!
//! build → list tests → start the server → baseline → for each test: new epoch, run,
//! settle, snapshot (appended durably to `snapshots.jsonl`) → final settled snapshot →
//! leak verdicts → stop the server → report.
//!
//! Whatever happens after the run directory exists, a `report.json` is written, and every
//! process the run started is gone before it returns.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::Snapshot;

use crate::analysis::{self, Epochs, Leak, SNAPSHOT_TIMEOUT};
use crate::build::{self, Built};
use crate::cli::TestArgs;
use crate::config::Config;
use crate::errors::SetupError;
use crate::exit;
use crate::link::AgentLink;
use crate::report::{self, terminal, Report, ServerEntry, ShutdownEntry, TestEntry, TestRecord, Verdict};
use crate::rundir::{Evidence, RunDir};
use crate::server::{Server, Stop};
use crate::signal::Interrupt;
use crate::suite::{self, Outcome};

/// Runs `cargo hangcheck test` and returns the exit code.
pub fn test(args: &TestArgs) -> i32 {
    let interrupt = Interrupt::install();
    let config = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => return setup_failed(&e),
    };
    terminal::status(
        "Building",
        format!("{} (server `{}`, tests {})", config.package, config.server_bin, config.test_targets.join(", ")),
    );
    let built = match build::build(&config) {
        Ok(b) => b,
        Err(e) => return setup_failed(&e),
    };
    let run_dir = match RunDir::create(&config.hangcheck_dir.join("runs")) {
        Ok(d) => d,
        Err(e) => return setup_failed(&SetupError::io("cannot create the run directory")(e)),
    };
    let mut run = Run::new(config, built, run_dir, interrupt);
    let result = run.execute();
    run.finish(result)
}

fn setup_failed(e: &SetupError) -> i32 {
    let detail = match e {
        SetupError::Server { log: Some(log), .. } => log_tail(log),
        _ => Vec::new(),
    };
    terminal::error(e, &detail);
    if matches!(e, SetupError::Interrupted) {
        exit::INTERRUPTED
    } else {
        exit::SETUP
    }
}

fn log_tail(log: &std::path::Path) -> Vec<String> {
    let mut lines = vec![format!("last lines of {}:", log.display())];
    let tail = crate::rundir::tail(log, 15);
    if tail.is_empty() {
        lines.push("(empty)".to_owned());
    }
    lines.extend(tail);
    lines
}

/// The state of one run.
struct Run {
    config: Config,
    built: Built,
    run_dir: RunDir,
    interrupt: Interrupt,
    started: Instant,
    server: Option<Server>,
    baseline: Option<Snapshot>,
    last: Option<Snapshot>,
    tests: Vec<TestRecord>,
    leaks: Vec<Leak>,
    shutdown: ShutdownEntry,
    protocol_errors: Vec<String>,
}

impl Run {
    fn new(config: Config, built: Built, run_dir: RunDir, interrupt: Interrupt) -> Run {
        Run {
            config,
            built,
            run_dir,
            interrupt,
            started: Instant::now(),
            server: None,
            baseline: None,
            last: None,
            tests: Vec::new(),
            leaks: Vec::new(),
            shutdown: ShutdownEntry { outcome: "not-reached", evidence: Vec::new() },
            protocol_errors: Vec::new(),
        }
    }

    fn execute(&mut self) -> Result<(), SetupError> {
        let cases = suite::list(&self.config, &self.built, &self.run_dir, &self.interrupt)?;
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
        let server = self.server.insert(Server::start(&self.config, &self.built, &self.run_dir, &self.interrupt)?);
        let addrs: Vec<String> = server.addrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        terminal::status("Ready", format!("pid {}, announced {}", server.child.pid(), addrs.join(" ")));
        let baseline = self.snapshot("baseline", 0)?;
        self.record_snapshot("baseline", None, &baseline)?;
        self.baseline = Some(baseline.clone());
        self.last = Some(baseline);
        terminal::status("Running", format!("{} tests, one at a time", cases.len()));

        for (i, case) in cases.iter().enumerate() {
            if self.interrupt.is_set() {
                break;
            }
            let epoch = i as u64 + 1;
            let server = self.server.as_mut().expect("the server is started before any test");
            server.link.set_epoch(epoch, SNAPSHOT_TIMEOUT).map_err(|e| SetupError::Server {
                cause: format!("the agent stopped answering before {}: {e}", case.id()),
                log: Some(server.log.clone()),
            })?;
            let env = server.test_env();
            let id = case.id();
            let run_dir = &self.run_dir;
            let link = &mut server.link;
            let run = suite::run(case, &self.config, &env, run_dir, &self.interrupt, || {
                hang_evidence(link, run_dir, &format!("hangs/{id}.snapshot.json"))
            });
            let interrupted = run.outcome == Outcome::Interrupted;
            let errors = self.server_mut().take_announcements();
            self.protocol_errors.extend(errors);
            self.check_server_alive(&id)?;
            let previous = self.last.clone().unwrap_or_default();
            let snapshot = if interrupted { None } else { Some(self.settle(&previous, &id)?) };
            if let Some(s) = &snapshot {
                self.record_snapshot(&id, Some(epoch), s)?;
            }
            let record = TestRecord { case: case.clone(), epoch, run, snapshot };
            terminal::test_line(&record, self.last.as_ref());
            if let Some(s) = &record.snapshot {
                self.last = Some(s.clone());
            }
            self.tests.push(record);
        }

        if self.interrupt.is_set() {
            return Ok(());
        }
        let after = cases.len() as u64 + 1;
        let server = self.server_mut();
        let _ = server.link.set_epoch(after, SNAPSHOT_TIMEOUT);
        let baseline = self.baseline.clone().unwrap_or_default();
        let last = self.settle(&baseline, "the final snapshot")?;
        self.record_snapshot("final", Some(after), &last)?;
        let names: Vec<String> = self.tests.iter().map(|t| t.case.id()).collect();
        self.leaks = analysis::leaks(&baseline, &last, &Epochs { names: &names }, &self.config);
        self.last = Some(last);
        Ok(())
    }

    fn server_mut(&mut self) -> &mut Server {
        self.server.as_mut().expect("the server is started before any test")
    }

    fn snapshot(&mut self, label: &str, _epoch: u64) -> Result<Snapshot, SetupError> {
        let server = self.server_mut();
        server.link.snapshot(SNAPSHOT_TIMEOUT).map_err(|e| SetupError::Server {
            cause: format!("the agent did not answer the {label} snapshot: {e}"),
            log: Some(server.log.clone()),
        })
    }

    fn settle(&mut self, before: &Snapshot, after: &str) -> Result<Snapshot, SetupError> {
        let settle = self.config.settle;
        let server = self.server.as_mut().expect("the server is started before any test");
        analysis::settle(&mut server.link, before, settle, &self.config, &self.interrupt).map_err(|e| {
            SetupError::Server {
                cause: format!("the agent stopped answering after {after}: {e}"),
                log: Some(server.log.clone()),
            }
        })
    }

    fn check_server_alive(&mut self, test: &str) -> Result<(), SetupError> {
        let server = self.server_mut();
        match server.exit_status() {
            None => Ok(()),
            Some(status) => Err(SetupError::Server {
                cause: format!("the server exited during {test} with {}", crate::process::describe(status)),
                log: Some(server.log.clone()),
            }),
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
        if let Some(server) = self.server.as_mut() {
            let grace = if self.interrupt.is_set() { Duration::from_millis(500) } else { self.config.shutdown_grace };
            let run_dir = &self.run_dir;
            let mut evidence = Vec::new();
            let stop = server.stop(grace, |link| {
                let ev = hang_evidence(link, run_dir, "shutdown/snapshot.json");
                evidence = ev.files.clone();
                ev
            });
            self.shutdown = ShutdownEntry { outcome: if stop == Stop::Hung { "hung" } else { "clean" }, evidence };
            if stop == Stop::Hung {
                terminal::error(
                    format!("shutdown hang: the server was still running {:?} after SIGTERM and was killed", grace),
                    &self.shutdown.evidence.iter().map(|p| format!("evidence: {}", p.display())).collect::<Vec<_>>(),
                );
            }
        }
        if error.is_none() && self.interrupt.is_set() {
            error = Some(SetupError::Interrupted);
        }
        let verdict = match &error {
            Some(SetupError::Interrupted) => Verdict::Interrupted,
            Some(_) => Verdict::SetupError,
            None => report::verdict(&self.tests, &self.leaks, self.shutdown.outcome == "hung", false),
        };
        if let Some(e) = &error {
            setup_failed(e);
        }
        let report = self.report(verdict, error.as_ref().map(|e| e.to_string()));
        if let (Some(baseline), None) = (&self.baseline, &error) {
            terminal::table(baseline, &self.tests);
            terminal::leaks(&self.leaks);
        }
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

    fn report(&self, verdict: Verdict, error: Option<String>) -> Report {
        let server = self.server.as_ref();
        Report {
            format_version: report::FORMAT_VERSION,
            hangcheck_version: env!("CARGO_PKG_VERSION"),
            package: self.config.package.clone(),
            verdict,
            exit_code: verdict.exit_code(),
            error,
            server: ServerEntry {
                bin: self.config.server_bin.clone(),
                pid: server.map(|s| s.child.pid()),
                tokio_unstable: self.built.tokio_unstable,
                capabilities: server.map(|s| s.hello.capabilities.clone()).unwrap_or_default(),
                addresses: server.map(|s| s.addrs.clone()).unwrap_or_default(),
                log: server.map(|s| s.log.clone()).or_else(|| Some(self.run_dir.join("server.log"))),
            },
            run_dir: self.run_dir.path().to_owned(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            tests: self.tests.iter().map(TestEntry::from_record).collect(),
            baseline: self.baseline.clone(),
            final_snapshot: self.last.clone(),
            leaks: self.leaks.clone(),
            shutdown: ShutdownEntry { outcome: self.shutdown.outcome, evidence: self.shutdown.evidence.clone() },
            protocol_errors: self.protocol_errors.clone(),
        }
    }
}

/// What the runner writes about a hung server before anything is signalled: a snapshot
/// (which groups are alive, and how old), fetched from the live agent under a timeout.
fn hang_evidence(link: &mut AgentLink, run_dir: &RunDir, name: &str) -> Evidence {
    let body = match link.snapshot(SNAPSHOT_TIMEOUT) {
        Ok(s) => serde_json::to_vec_pretty(&s).unwrap_or_default(),
        Err(e) => format!("{{\"error\": {:?}}}\n", format!("no snapshot: {e}")).into_bytes(),
    };
    match run_dir.write_evidence(PathBuf::from(name), &body) {
        Ok(ev) => ev,
        Err(e) => {
            terminal::warn(format!("cannot write {name}: {e}"));
            Evidence::none("writing the evidence failed")
        }
    }
}
