//! What happens in a run, as typed events: the one seam between running and reporting.
//!
//! The run ([`crate::run`]) only says what happened; reporters ([`crate::report`]) decide
//! what to make of it. The terminal, `report.json`, JUnit XML and `--message-format json`
//! all fold the same sequence of events, so they cannot disagree, and a new output is a
//! new reporter rather than a change to the run. cargo-nextest's `TestEvent` → displayer
//! and aggregator is the model.
//!
//! Events borrow from the run; a reporter that needs something later copies it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hangcheck_runtime::protocol::{RuntimeInfo, Snapshot, StackSource};

use crate::analysis::{ConcurrentOps, Leak, StartupGrowth};
use crate::cli::StallVerdict;
use crate::errors::SetupError;
use crate::leftovers::Leftover;
use crate::report::{ShutdownEntry, StallEntry, TestRecord};
use crate::suite::TestCase;

/// One thing that happened in a run, in the order it happened.
#[derive(Debug)]
pub enum Event<'a> {
    /// cargo is about to build the server and the tests.
    Building {
        /// The package under test.
        package: &'a str,
        /// Its server bin target.
        server_bin: &'a str,
        /// The test targets.
        test_targets: &'a [String],
    },
    /// The build is done, the run directory exists and the tests are listed; the server
    /// is about to start.
    RunStarted {
        /// The package under test.
        package: &'a str,
        /// The server bin target.
        server_bin: &'a str,
        /// Built with `--cfg tokio_unstable` (every task counted by spawn location).
        tokio_unstable: bool,
        /// The run directory.
        run_dir: &'a Path,
        /// The tests that will run, in order.
        tests: &'a [TestCase],
        /// Whether the stall watchdog is on (`stall-threshold` above zero).
        watchdog: bool,
        /// Whether stalls fail the run.
        stall_verdict: StallVerdict,
        /// `--stress N`: copies of each test at once (1: one at a time).
        stress: u32,
    },
    /// The server said hello and announced its addresses.
    ServerReady {
        /// Its pid.
        pid: u32,
        /// What its agent says it can do.
        capabilities: &'a [String],
        /// Its announced addresses, by name.
        addresses: &'a BTreeMap<String, String>,
        /// Its log file.
        log: &'a Path,
        /// The runtimes built through hangcheck, as the baseline shows them.
        runtimes: &'a [RuntimeInfo],
    },
    /// The snapshot once the server was up and quiet, before the first test.
    Baseline {
        /// The snapshot.
        snapshot: &'a Snapshot,
    },
    /// What rose between the server's readiness and the quiet baseline: start-up.
    Startup {
        /// The measures that rose.
        growth: &'a [StartupGrowth],
    },
    /// A test is about to run in its own epoch.
    TestStarted {
        /// Which test.
        case: &'a TestCase,
        /// Its epoch: what the server starts during it is its doing.
        epoch: u64,
    },
    /// A test ran past its timeout; the server's stacks are being taken before it is
    /// stopped.
    TestHung {
        /// Which test.
        case: &'a TestCase,
    },
    /// Evidence about the server was written and fsynced, before anything was signalled.
    EvidenceWritten {
        /// The test it is about, or `None` for the server's shutdown.
        test: Option<&'a str>,
        /// The files.
        files: &'a [PathBuf],
        /// Who took the stacks in them.
        source: StackSource,
    },
    /// A test ended and the server settled after it.
    TestFinished {
        /// The test, its outcome, and its settled snapshot.
        record: &'a TestRecord,
    },
    /// A process of the run (started by a test or the server) was still alive after its
    /// test, or after the server; it was written down, then ended.
    Leftover {
        /// The process, who started it, and how it was ended.
        leftover: &'a Leftover,
        /// What it outlived: a test's id, or "the end of the run".
        after: &'a str,
        /// The file it was written to.
        file: &'a Path,
    },
    /// A worker was caught stuck inside one poll.
    Stall {
        /// The stall.
        stall: &'a StallEntry,
    },
    /// A stall reported before is over: the poll ended.
    StallEnded {
        /// The stall's number (`StallEntry::seq`).
        seq: u64,
        /// How long the worker was stuck in that poll in all, in milliseconds.
        total_ms: u64,
    },
    /// The agent sent something malformed.
    ProtocolError {
        /// What was wrong.
        message: &'a str,
    },
    /// The settled snapshot after the last test.
    FinalSnapshot {
        /// The snapshot.
        snapshot: &'a Snapshot,
    },
    /// The run's leak verdicts, once the final snapshot is in.
    Verdicts {
        /// What grew beyond the policy.
        leaks: &'a [Leak],
        /// Operations of one key in flight together.
        concurrent: &'a [ConcurrentOps],
    },
    /// The server was stopped.
    Shutdown {
        /// How it went.
        shutdown: &'a ShutdownEntry,
        /// The grace it had between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// A round of `--repeat`, `--for` or `--until-fail` begins.
    Round {
        /// 1-based.
        round: u32,
        /// `--shuffle`'s seed, when the order is shuffled.
        seed: Option<u64>,
        /// `--chaos`'s seed, when the server's scheduling is perturbed.
        chaos: Option<u64>,
        /// `--fresh-server`: the round has a server of its own.
        fresh_server: bool,
    },
    /// A warmup test (`warmup = [...]`) ran, before the baseline: what it left is
    /// start-up, and it is not among the judged tests.
    Warmup {
        /// The test.
        case: &'a TestCase,
        /// How it went.
        run: &'a crate::suite::TestRun,
    },
    /// Something the user should know that does not stop the run.
    Warning {
        /// One line.
        message: &'a str,
    },
    /// The run could not start or could not go on.
    SetupError {
        /// Why.
        error: &'a SetupError,
    },
}
