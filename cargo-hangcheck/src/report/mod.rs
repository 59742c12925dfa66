//! The report of a run: `report.json` (versioned; docs/report-format.md), the terminal
//! table and verdicts ([`terminal`]), and JUnit XML ([`junit`]).
//!
//! The run keeps its own internal records; this module turns them into the serialized
//! form, which only grows compatibly within a `format_version`.

pub mod junit;
pub mod terminal;

use std::collections::BTreeMap;
use std::path::PathBuf;

use hangcheck_runtime::protocol::Snapshot;
use serde::Serialize;

use crate::analysis::Leak;
use crate::exit;
use crate::suite::{Outcome, TestCase, TestRun};

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
}

/// How the run ended overall; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Everything passed, nothing leaked or hung.
    Ok,
    /// A test failed.
    TestsFailed,
    /// A group leaked.
    Leaks,
    /// A test or the shutdown hung.
    Hang,
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
            Verdict::SetupError => exit::SETUP,
            Verdict::Interrupted => exit::INTERRUPTED,
        }
    }
}

/// `report.json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The runner's version.
    pub hangcheck_version: &'static str,
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
    /// Groups that leaked.
    pub leaks: Vec<Leak>,
    /// How the server's shutdown went.
    pub shutdown: ShutdownEntry,
    /// Malformed messages from the agent, if any.
    pub protocol_errors: Vec<String>,
}

/// The server's part of the report.
#[derive(Debug, Serialize, Default)]
pub struct ServerEntry {
    /// The bin target.
    pub bin: String,
    /// The process id, once started.
    pub pid: Option<u32>,
    /// Built with `--cfg tokio_unstable` (task hooks) or not.
    pub tokio_unstable: bool,
    /// What the agent said it can do.
    pub capabilities: Vec<String>,
    /// Announced addresses.
    pub addresses: BTreeMap<String, String>,
    /// The server log.
    pub log: Option<PathBuf>,
}

/// One test in the report.
#[derive(Debug, Serialize)]
pub struct TestEntry {
    /// `target::name`.
    pub id: String,
    /// The test target.
    pub target: String,
    /// The test name.
    pub name: String,
    /// The epoch it ran in; survivors born in it are its doing.
    pub epoch: u64,
    /// `passed`, `failed`, `hung`, `spawn-failed`, `interrupted`.
    pub outcome: &'static str,
    /// The exit status or error, for failures.
    pub detail: Option<String>,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// Its output.
    pub log: PathBuf,
    /// Files written about the server when it hung.
    pub evidence: Vec<PathBuf>,
    /// Live tasks per group after it, settled.
    pub live: BTreeMap<String, u64>,
}

/// How the server stopped.
#[derive(Debug, Serialize, Default)]
pub struct ShutdownEntry {
    /// `clean`, `hung` (SIGKILLed after the grace period), or `not-reached`.
    pub outcome: &'static str,
    /// Files written about the server before it was killed.
    pub evidence: Vec<PathBuf>,
}

/// The outcome's name in the report, and its detail.
pub fn outcome_name(outcome: &Outcome) -> (&'static str, Option<String>) {
    match outcome {
        Outcome::Passed => ("passed", None),
        Outcome::Failed(s) => ("failed", Some(s.clone())),
        Outcome::TimedOut => ("hung", None),
        Outcome::SpawnFailed(s) => ("spawn-failed", Some(s.clone())),
        Outcome::Interrupted => ("interrupted", None),
    }
}

impl TestEntry {
    /// The serialized form of a test record.
    pub fn from_record(r: &TestRecord) -> TestEntry {
        let (outcome, detail) = outcome_name(&r.run.outcome);
        TestEntry {
            id: r.case.id(),
            target: r.case.target.clone(),
            name: r.case.name.clone(),
            epoch: r.epoch,
            outcome,
            detail,
            duration_ms: r.run.duration.as_millis() as u64,
            log: r.run.log.clone(),
            evidence: r.run.evidence.clone(),
            live: r.snapshot.iter().flat_map(|s| s.groups.iter().map(|g| (g.key.clone(), g.live))).collect(),
        }
    }
}

/// The overall verdict: the most severe finding wins.
pub fn verdict(tests: &[TestRecord], leaks: &[Leak], shutdown_hung: bool, interrupted: bool) -> Verdict {
    if interrupted {
        return Verdict::Interrupted;
    }
    if shutdown_hung || tests.iter().any(|t| t.run.outcome == Outcome::TimedOut) {
        return Verdict::Hang;
    }
    if tests.iter().any(|t| !matches!(t.run.outcome, Outcome::Passed)) {
        return Verdict::TestsFailed;
    }
    if !leaks.is_empty() {
        return Verdict::Leaks;
    }
    Verdict::Ok
}
