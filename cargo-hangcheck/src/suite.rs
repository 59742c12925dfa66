//! Listing and running the E2E tests, one at a time, each in its own process group and
//! under the per-test timeout.
//!
//! Tests are libtest binaries: `--list --format terse` lists them, `--exact NAME
//! --nocapture` runs one. Their output goes straight to a log file in the run directory
//! (no pipe, so a chatty test can never block on a full pipe).
//!
//! A target built on `hangcheck_runtime::harness` says so when listed (see
//! [`hangcheck_runtime::protocol::HARNESS_MARKER`]); its tests run in one process instead,
//! through [`crate::harness`]. One package may mix both kinds of target.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::{HARNESS_IGNORED_LISTING, HARNESS_MARKER, HARNESS_PROBE_ENV};

use crate::build::Built;
use crate::cli::RunIgnored;
use crate::config::Config;
use crate::errors::SetupError;
use crate::process::{describe, GroupChild, Wait};
use crate::rundir::{file_name, Evidence, RunDir};
use crate::signal::Signals;

/// How long listing one test binary may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// One test of a test binary.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// The test target (`e2e` for `tests/e2e.rs`).
    pub target: String,
    /// The test's name inside the binary.
    pub name: String,
    /// The test binary.
    pub exe: PathBuf,
    /// Whether the binary is a hangcheck harness, whose tests run in one process.
    pub in_process: bool,
    /// With rounds (`--repeat` …), the round it runs in, 1-based; 0 without.
    pub round: u32,
    /// Marked `#[ignore]`: reported as ignored unless `--run-ignored` runs it.
    pub ignored: bool,
}

impl TestCase {
    /// `target::name`, the name used in reports.
    pub fn id(&self) -> String {
        format!("{}::{}", self.target, self.name)
    }
}

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Passed,
    /// Any other exit; the status in words.
    Failed(String),
    /// Still running at the timeout; it was terminated after the evidence was written.
    TimedOut,
    /// The test process could not be started.
    SpawnFailed(String),
    /// The runner was interrupted while the test ran.
    Interrupted,
    /// `#[ignore]`d and not run (`--run-ignored` runs it).
    Ignored,
}

impl Outcome {
    /// How a test process that exited on its own ended.
    pub fn of_exit(status: std::process::ExitStatus) -> Outcome {
        if status.success() {
            Outcome::Passed
        } else {
            Outcome::Failed(describe(status))
        }
    }

    /// How bad it is, to take the worst of several copies of a test (`--stress`): an
    /// interrupted run, then a hang, then a test that could not start or failed.
    pub fn severity(&self) -> u8 {
        match self {
            Outcome::Passed | Outcome::Ignored => 0,
            Outcome::Failed(_) => 1,
            Outcome::SpawnFailed(_) => 2,
            Outcome::TimedOut => 3,
            Outcome::Interrupted => 4,
        }
    }
}

/// A finished test.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// How it ended.
    pub outcome: Outcome,
    /// How long it ran.
    pub duration: Duration,
    /// Its output.
    pub log: PathBuf,
    /// Files written about the server when the test hung.
    pub evidence: Vec<PathBuf>,
    /// The panic that failed it, read off the end of its log.
    pub panic: Option<crate::libtest::Panic>,
}

/// The tests of a run: the warmup tests (`warmup = [...]`, in the order named, whatever
/// the filters and the shard, since every run needs its baseline taken the same way), and
/// the tests of every built test target that match a filter, each marked ignored or not
/// (libtest's `--list --ignored` names the ignored ones). With [`RunIgnored::Only`] the
/// tests that are not ignored are left out, as nextest does.
pub struct Selection {
    /// Run once before the baseline; not among `tests`.
    pub warmup: Vec<TestCase>,
    /// The tests judged.
    pub tests: Vec<TestCase>,
}

/// Lists the built test targets and selects a run's tests (see [`Selection`]).
pub fn list(config: &Config, built: &Built, run_dir: &RunDir, signals: &Signals) -> Result<Selection, SetupError> {
    // Each warmup name's test, once found.
    let mut warmup: Vec<Option<TestCase>> = vec![None; config.warmup_tests.len()];
    let mut tests = Vec::new();
    for (target, exe) in &built.tests {
        let Listing { names: all, in_process, .. } = list_one(config, target, exe, false, run_dir, signals)?;
        let ignored = list_one(config, target, exe, true, run_dir, signals)?;
        // A harness of an older runtime answers `--ignored` with the trials it would run.
        let ignored = match &ignored {
            Listing { in_process: true, ignored_only: false, .. } => Vec::new(),
            _ => ignored.names,
        };
        let cases = all.into_iter().map(|name| TestCase {
            target: target.clone(),
            ignored: ignored.contains(&name),
            name,
            exe: exe.clone(),
            in_process,
            round: 0,
        });
        let mut selected = Vec::new();
        for case in cases {
            if let Some(i) = config.warmup_tests.iter().position(|w| matches(w, &case.target, &case.name, true)) {
                warmup[i].get_or_insert(case);
                continue;
            }
            let wanted = config.filters.is_empty()
                || config.filters.iter().any(|f| matches(f, &case.target, &case.name, config.exact));
            if wanted && (case.ignored || config.run_ignored != RunIgnored::Only) {
                selected.push(case);
            }
        }
        // The shard is dealt per test target, after the filters, as nextest does.
        tests.extend(
            selected
                .into_iter()
                .enumerate()
                .filter(|(i, case)| config.partition.is_none_or(|p| p.takes(*i, &case.id())))
                .map(|(_, c)| c),
        );
    }
    let warmup = config
        .warmup_tests
        .iter()
        .zip(warmup)
        .map(|(name, case)| {
            case.ok_or_else(|| {
                SetupError::Config(format!(
                    "the warmup test `{name}` matches no test (whole names: `target::name` or `name`)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Selection { warmup, tests })
}

/// What one test binary lists.
struct Listing {
    /// Its test names (only the ignored ones when asked with `--ignored`).
    names: Vec<String>,
    /// Whether it is a hangcheck harness (its tests run in one process).
    in_process: bool,
    /// A harness that honours `--ignored` in its listing (see
    /// [`hangcheck_runtime::protocol::HARNESS_IGNORED_LISTING`]).
    ignored_only: bool,
}

impl Listing {
    /// Reads `--list --format terse` output, with a harness's marker line if any.
    fn parse(listing: &str) -> Listing {
        let marker = listing.lines().next().filter(|l| l.split(' ').next() == Some(HARNESS_MARKER));
        Listing {
            names: listing.lines().filter_map(|l| l.strip_suffix(": test")).map(str::to_owned).collect(),
            in_process: marker.is_some(),
            ignored_only: marker.is_some_and(|l| l.split(' ').next_back() == Some(HARNESS_IGNORED_LISTING)),
        }
    }
}

/// Lists one test binary (only its ignored tests with `ignored`).
fn list_one(
    config: &Config,
    target: &str,
    exe: &std::path::Path,
    ignored: bool,
    run_dir: &RunDir,
    signals: &Signals,
) -> Result<Listing, SetupError> {
    let log = format!("tests/{target}{}.list", if ignored { ".ignored" } else { "" });
    let (out, out_path) = run_dir.log_file(&log).map_err(SetupError::io("cannot create a log file"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--list", "--format", "terse"])
        .args(ignored.then_some("--ignored"))
        .env(HARNESS_PROBE_ENV, "1")
        .current_dir(&config.package_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null());
    let mut child = GroupChild::spawn(&mut cmd).map_err(SetupError::io(format!("cannot run {}", exe.display())))?;
    match child.wait_until(Instant::now() + LIST_TIMEOUT, signals) {
        Wait::Exited(status) if status.success() => {}
        Wait::Exited(status) => {
            return Err(SetupError::Config(format!(
                "listing the tests of `{target}` failed ({}); is it a libtest harness?",
                describe(status)
            )))
        }
        Wait::TimedOut => {
            return Err(SetupError::Config(format!("listing the tests of `{target}` took over {LIST_TIMEOUT:?}")))
        }
        Wait::Interrupted => return Err(SetupError::Interrupted),
    }
    let listing = std::fs::read_to_string(&out_path).map_err(SetupError::io("cannot read a test listing"))?;
    Ok(Listing::parse(&listing))
}

/// Whether a case runs: ignored ones only with `--run-ignored only|all`.
pub fn runs(case: &TestCase, run_ignored: RunIgnored) -> bool {
    !case.ignored || run_ignored != RunIgnored::Default
}

/// What running a test asks of the rest of the run.
pub trait Probe {
    /// Called every few milliseconds while a test runs (to serve on-demand requests).
    fn tick(&mut self);
    /// The test outlived its timeout and is still running: write what is known about
    /// the server, durably. Only after this returns is the test signalled.
    fn hung(&mut self, case: &TestCase) -> Evidence;
}

/// How often a running test's wait hands control to [`Probe::tick`].
pub const TICK: Duration = Duration::from_millis(50);

/// Runs one test in its own process group under the per-test timeout.
pub fn run(
    case: &TestCase,
    config: &Config,
    env: &[(String, String)],
    run_dir: &RunDir,
    signals: &Signals,
    probe: &mut dyn Probe,
) -> TestRun {
    let started = Instant::now();
    let (mut child, log) = match spawn(case, config, env, run_dir, &log_name(case, "")) {
        Ok(pair) => pair,
        Err(failed) => return *failed,
    };
    let deadline = started + config.test_timeout;
    let wait = loop {
        match child.wait_until(deadline.min(Instant::now() + TICK), signals) {
            Wait::TimedOut if Instant::now() < deadline => probe.tick(),
            other => break other,
        }
    };
    let (outcome, evidence) = match wait {
        Wait::Exited(status) => {
            child.kill_leftovers();
            (Outcome::of_exit(status), Vec::new())
        }
        Wait::TimedOut => {
            let evidence = probe.hung(case);
            let files = evidence.files.clone();
            child.terminate(evidence, TEST_GRACE);
            (Outcome::TimedOut, files)
        }
        Wait::Interrupted => {
            child.terminate(Evidence::none("the run was interrupted"), Duration::ZERO);
            (Outcome::Interrupted, Vec::new())
        }
    };
    let panic = matches!(outcome, Outcome::Failed(_)).then(|| crate::libtest::last_panic(&log)).flatten();
    TestRun { outcome, duration: started.elapsed(), log, evidence, panic }
}

/// Where a test's output goes: `tests/<target>/<name><suffix>.log`, under `rounds/<N>/`
/// with rounds.
pub fn log_name(case: &TestCase, suffix: &str) -> String {
    let (target, name) = (file_name(&case.target), file_name(&case.name));
    match case.round {
        0 => format!("tests/{target}/{name}{suffix}.log"),
        r => format!("rounds/{r}/tests/{target}/{name}{suffix}.log"),
    }
}

/// Starts one test process in its own process group, its output to `log_name`.
pub fn spawn(
    case: &TestCase,
    config: &Config,
    env: &[(String, String)],
    run_dir: &RunDir,
    log_name: &str,
) -> Result<(GroupChild, PathBuf), Box<TestRun>> {
    let (log_file, log) = match run_dir.log_file(log_name) {
        Ok(pair) => pair,
        Err(e) => return Err(Box::new(spawn_failed(format!("cannot create {log_name}: {e}"), run_dir.join(log_name)))),
    };
    let err_file = match log_file.try_clone() {
        Ok(f) => f,
        Err(e) => return Err(Box::new(spawn_failed(format!("cannot share {log_name}: {e}"), log))),
    };
    let mut cmd = Command::new(&case.exe);
    cmd.args([case.name.as_str(), "--exact", "--nocapture", "--test-threads", "1"])
        .args(case.ignored.then_some("--ignored"))
        .current_dir(&config.package_dir)
        .env("CARGO_MANIFEST_DIR", &config.package_dir)
        .env(crate::leftovers::STARTED_BY_ENV, case.id())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file);
    match GroupChild::spawn(&mut cmd) {
        Ok(child) => Ok((child, log)),
        Err(e) => Err(Box::new(spawn_failed(format!("cannot start {}: {e}", case.exe.display()), log))),
    }
}

/// Time a hung test gets between SIGTERM and SIGKILL.
pub const TEST_GRACE: Duration = Duration::from_secs(1);

pub fn spawn_failed(why: String, log: PathBuf) -> TestRun {
    TestRun { outcome: Outcome::SpawnFailed(why), duration: Duration::ZERO, log, evidence: Vec::new(), panic: None }
}

/// Whether a test-name filter selects test `name` of `target`: a substring of the name,
/// or with `exact` the whole name or `target::name`, as libtest's `--exact`.
fn matches(filter: &str, target: &str, name: &str, exact: bool) -> bool {
    if exact {
        filter == name || filter.strip_prefix(target).and_then(|r| r.strip_prefix("::")) == Some(name)
    } else {
        name.contains(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::{matches, Listing};

    #[test]
    fn listings_tell_libtest_from_harnesses_old_and_new() {
        let libtest = Listing::parse("a: test\nb: test\n");
        assert_eq!((libtest.names.len(), libtest.in_process, libtest.ignored_only), (2, false, false));
        let new = Listing::parse("hangcheck-harness 1 ignored-only\nslow: test\n");
        assert_eq!((new.names, new.in_process, new.ignored_only), (vec!["slow".to_owned()], true, true));
        // A harness of an older runtime ignores `--ignored`: its list is what it runs.
        let old = Listing::parse("hangcheck-harness 1\nfast: test\n");
        assert_eq!((old.in_process, old.ignored_only), (true, false));
    }

    #[test]
    fn filters_match_substrings_or_with_exact_whole_names() {
        assert!(matches("watch", "e2e", "watch_and_leave", false));
        assert!(!matches("watch", "e2e", "watch_and_leave", true));
        assert!(matches("watch_and_leave", "e2e", "watch_and_leave", true));
        assert!(matches("e2e::watch_and_leave", "e2e", "watch_and_leave", true));
        assert!(!matches("smoke::watch_and_leave", "e2e", "watch_and_leave", true));
    }
}
