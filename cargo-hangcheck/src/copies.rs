//! `--stress N`: N copies of one test at once against the server, to shake out races.
//!
//! To the rest of the run the copies are one test: its epoch is set once before they
//! start, and the run settles and snapshots after the last of them ends, so what they
//! leave behind is the test's (a leak names the test; its count is the sum over the
//! copies). The test's outcome is the worst of its copies' (a hang, then a failure).
//!
//! A test of a libtest target runs as N processes of the test. A trial of a hangcheck
//! harness target runs as N harness processes, each with a plan of that one trial: all
//! are started and held at the trial's `start`, then let go together.
//!
//! A copy still running at the per-test timeout is a hang: the server's evidence is
//! written once, then every copy still running is stopped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::{Context, Solo};
use crate::libtest::Panic;
use crate::process::{GroupChild, Wait};
use crate::rundir::Evidence;
use crate::suite::{self, Outcome, Probe, TestCase, TestRun, TEST_GRACE};

/// How often the copies are looked at while they run.
const LOOK: Duration = Duration::from_millis(5);

/// One copy of the test, running.
enum Copy {
    /// A test process.
    Process(GroupChild),
    /// A harness process running the one trial.
    Trial(Box<Solo>),
}

/// Which copy (1-based) and its log.
type Slot = (u32, PathBuf);

/// A copy's end: which copy, its outcome, the panic behind a failure, and its log.
struct Ended {
    copy: u32,
    outcome: Outcome,
    panic: Option<Panic>,
    log: PathBuf,
}

/// Runs `n` copies of `case` at once, under the per-test timeout; the copies' logs are
/// `<name>.copy-K.log`.
pub fn run(case: &TestCase, n: u32, cx: &Context, probe: &mut dyn Probe) -> TestRun {
    let started = Instant::now();
    let mut running: Vec<(Copy, Slot)> = Vec::new();
    let mut ended: Vec<Ended> = Vec::new();
    for k in 1..=n {
        let log_name = suite::log_name(case, &format!(".copy-{k}"));
        let copy = if case.in_process {
            Solo::start(case, cx, &log_name).map(|solo| {
                let log = solo.log().to_owned();
                (Copy::Trial(Box::new(solo)), (k, log))
            })
        } else {
            suite::spawn(case, cx.config, cx.env, cx.run_dir, &log_name).map(|(c, log)| (Copy::Process(c), (k, log)))
        };
        match copy {
            Ok(copy) => running.push(copy),
            Err(failed) => {
                ended.push(Ended { copy: k, outcome: failed.outcome, panic: None, log: failed.log });
                break;
            }
        }
    }
    if !ended.is_empty() {
        // A copy could not start: the test is not stressed as asked, so none runs.
        stop_all(
            running,
            Evidence::none("a sibling copy could not start; none ran"),
            Duration::ZERO,
            Outcome::Interrupted,
        );
        return worst(ended, n, started, Vec::new());
    }
    // Held harnesses are let go together (test processes are already running).
    let mut gone = Vec::new();
    for (copy, (k, log)) in &mut running {
        if let Copy::Trial(solo) = copy {
            if let Err(why) = solo.go() {
                ended.push(Ended { copy: *k, outcome: Outcome::Failed(why), panic: None, log: log.clone() });
                gone.push(*k);
            }
        }
    }
    let (lost, kept): (Vec<_>, Vec<_>) = running.into_iter().partition(|(_, (k, _))| gone.contains(k));
    stop_all(lost, Evidence::none("its harness went away before the trial"), Duration::ZERO, Outcome::Interrupted);
    running = kept;
    // The timeout counts from the moment the copies are all running.
    let deadline = Instant::now() + cx.config.test_timeout;
    let mut evidence = Vec::new();
    while !running.is_empty() {
        let mut still = Vec::new();
        for (copy, (k, log)) in running {
            match look(copy, cx) {
                Ok(copy) => still.push((copy, (k, log))),
                Err((outcome, panic)) => ended.push(Ended { copy: k, outcome, panic, log }),
            }
        }
        running = still;
        if running.is_empty() {
            break;
        }
        if cx.signals.interrupted() {
            ended.extend(stop_all(
                running,
                Evidence::none("the run was interrupted"),
                Duration::ZERO,
                Outcome::Interrupted,
            ));
            break;
        }
        if Instant::now() >= deadline {
            // Evidence first, once for the group, then every copy still running is
            // stopped: `stop_all` takes the proof.
            let taken = probe.hung(case);
            evidence = taken.files.clone();
            ended.extend(stop_all(running, taken, TEST_GRACE, Outcome::TimedOut));
            break;
        }
        probe.tick();
        std::thread::sleep(LOOK);
    }
    worst(ended, n, started, evidence)
}

/// Looks at one copy without waiting: back if it still runs, or how it ended.
fn look(copy: Copy, cx: &Context) -> Result<Copy, (Outcome, Option<Panic>)> {
    match copy {
        Copy::Process(mut child) => match child.wait_until(Instant::now(), cx.signals) {
            Wait::Exited(status) => {
                child.kill_leftovers();
                Err((Outcome::of_exit(status), None))
            }
            Wait::TimedOut | Wait::Interrupted => Ok(Copy::Process(child)),
        },
        Copy::Trial(mut solo) => match solo.poll(cx.signals) {
            None => Ok(Copy::Trial(solo)),
            Some(end) => {
                solo.finish(cx.signals);
                Err(end)
            }
        },
    }
}

/// Stops every copy still running, once `evidence` is on disk; each ends as `outcome`.
fn stop_all(running: Vec<(Copy, Slot)>, evidence: Evidence, grace: Duration, outcome: Outcome) -> Vec<Ended> {
    running
        .into_iter()
        .map(|(copy, (k, log))| {
            match copy {
                Copy::Process(mut child) => {
                    child.terminate(evidence.clone(), grace);
                }
                Copy::Trial(solo) => solo.terminate(evidence.clone(), grace),
            }
            Ended { copy: k, outcome: outcome.clone(), panic: None, log }
        })
        .collect()
}

/// The test's run: the worst of its copies' outcomes, with that copy's log (and panic);
/// a failure says which copy.
fn worst(ended: Vec<Ended>, n: u32, started: Instant, evidence: Vec<PathBuf>) -> TestRun {
    let worst = ended
        .into_iter()
        .max_by_key(|e| (e.outcome.severity(), std::cmp::Reverse(e.copy)))
        .expect("every copy that started has ended");
    let outcome = match worst.outcome {
        Outcome::Failed(why) => Outcome::Failed(format!("copy {} of {n}: {why}", worst.copy)),
        other => other,
    };
    let panic = match (&outcome, worst.panic) {
        (Outcome::Failed(_), None) => crate::libtest::last_panic(&worst.log),
        (_, panic) => panic,
    };
    TestRun { outcome, duration: started.elapsed(), log: worst.log, evidence, panic }
}
