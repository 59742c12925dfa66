//! The single-process path: a test target built on `hangcheck_runtime::harness` runs all
//! its trials in one process, one at a time, and tells the runner where each starts and
//! ends ([protocol](hangcheck_runtime::protocol#trials-a-hangcheck-harness-and-the-runner)).
//!
//! To the rest of the run a trial is a test like any other: [`Harnesses::run`] runs one
//! and returns its [`TestRun`], after the run has set its epoch and before it settles and
//! snapshots, exactly as between test processes. The harness waits for `go` before each
//! trial, so those steps happen while it is idle.
//!
//! The harness process is started at a target's first trial with a plan of the target's
//! trials from there on, and ends after its last. A trial past the per-test timeout is a
//! hang: the server's evidence is written first, then the harness process group is
//! stopped, and the next trial starts a new harness process with a plan of the trials not
//! yet run, so no result is lost. A harness that dies inside a trial fails that trial the
//! same way. All output of one harness process goes to `tests/<target>/harness-N.log`.

use std::collections::BTreeMap;
use std::io::{BufReader, ErrorKind};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::{
    self, ProtocolError, TrialMessage, TrialOutcome, TrialReply, HARNESS_SOCKET_ENV, MAX_TRIAL_MESSAGE,
};

use crate::config::Config;
use crate::link::Listener;
use crate::process::{describe, GroupChild};
use crate::rundir::{Evidence, RunDir};
use crate::signal::Signals;
use crate::suite::{spawn_failed, Outcome, Probe, TestCase, TestRun, TEST_GRACE, TICK};

/// How long a harness may take to exit after its last trial.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The harness processes of a run: at most one at a time.
#[derive(Default)]
pub struct Harnesses {
    /// Each in-process target's trials, in run order.
    plans: BTreeMap<String, Vec<String>>,
    running: Option<Running>,
    /// Harness processes started so far, to name their logs.
    started: u64,
}

/// A harness process and its connection.
struct Running {
    target: String,
    /// Marks the harness and everything it starts, for [`crate::leftovers`].
    started_by: String,
    child: GroupChild,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    buf: Vec<u8>,
    log: PathBuf,
    _listener: Listener,
}

/// What waiting on the harness brought.
enum Heard {
    Message(TrialMessage),
    Exited(ExitStatus),
    TimedOut,
    Interrupted,
    Broken(String),
}

/// What a run passes down to run one trial.
pub struct Context<'a> {
    /// The run's configuration (timeouts, the package directory).
    pub config: &'a Config,
    /// The environment of every test (announced addresses, the server's pid).
    pub env: &'a [(String, String)],
    /// Where logs go.
    pub run_dir: &'a RunDir,
    /// Ctrl-C.
    pub signals: &'a Signals,
}

impl Harnesses {
    /// Plans the in-process targets among `cases`, in the order they will run: once per
    /// round, since `--shuffle` gives each round an order of its own and a harness runs
    /// its trials in the order of its plan. A harness still running from the previous
    /// round is let go first.
    pub fn plan<'c>(&mut self, cases: impl IntoIterator<Item = &'c TestCase>, signals: &Signals) {
        self.finish(signals);
        self.plans.clear();
        for case in cases.into_iter().filter(|c| c.in_process) {
            self.plans.entry(case.target.clone()).or_default().push(case.name.clone());
        }
    }

    /// Runs one trial of an in-process target, starting its harness if none is running.
    pub fn run(&mut self, case: &TestCase, cx: &Context, probe: &mut dyn Probe) -> TestRun {
        if self.running.as_ref().is_some_and(|r| r.target != case.target) {
            // A shuffled round moved on to another target before this harness's last
            // trial: it waits for a `go` that will not come, so there is no exit to await.
            // Its remaining trials get a harness of their own when their turn comes.
            if let Some(mut running) = self.running.take() {
                running.child.terminate(Evidence::none("another target's trial comes first"), Duration::ZERO);
            }
        }
        let mut running = match self.running.take() {
            Some(r) => r,
            None => match self.start(case, cx) {
                Ok(r) => r,
                Err(run) => return *run,
            },
        };
        let log = running.log.clone();
        // A trial's duration counts from `since`: its `go` once given, its wait for the
        // harness's `start` until then.
        let ended = |since: Instant, outcome, evidence| TestRun {
            outcome,
            duration: since.elapsed(),
            log: log.clone(),
            evidence,
            panic: None,
        };
        let waiting = Instant::now();
        let done = |outcome, evidence| ended(waiting, outcome, evidence);

        // The harness announces the trial and waits; the epoch is already set.
        match running.hear(waiting + cx.config.test_timeout, cx.signals, probe) {
            Heard::Message(TrialMessage::Start { name }) if name == case.name => {}
            Heard::Interrupted => return done(Outcome::Interrupted, Vec::new()),
            other => {
                return done(Outcome::Failed(format!("the harness did not start the trial: {}", other.why())), vec![])
            }
        }
        // Where this trial's output will begin in the log its harness's trials share.
        let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
        if let Err(e) = protocol::write_message(&mut running.writer, &TrialReply::Go { name: case.name.clone() }) {
            return done(Outcome::Failed(format!("the harness went away before the trial: {e}")), Vec::new());
        }
        let started = Instant::now();
        let done = |outcome, evidence| ended(started, outcome, evidence);
        let run = match running.hear(started + cx.config.test_timeout, cx.signals, probe) {
            Heard::Message(TrialMessage::End { name, outcome: TrialOutcome::Failed }) if name == case.name => {
                self.running = Some(running);
                let (panic, message) = crate::libtest::trial_failure(&log, offset, &case.name);
                let why = message.unwrap_or_else(|| format!("the trial failed; see {}", log.display()));
                TestRun { panic, ..done(Outcome::Failed(why), Vec::new()) }
            }
            // Ignored trials the run skips are left out of the plan; one that ignores
            // itself at run time has nothing to report.
            Heard::Message(TrialMessage::End { name, .. }) if name == case.name => {
                self.running = Some(running);
                done(Outcome::Passed, Vec::new())
            }
            Heard::TimedOut => {
                // Evidence first, then the signal: `terminate` takes the proof.
                let evidence = probe.hung(case);
                let files = evidence.files.clone();
                running.child.terminate(evidence, TEST_GRACE);
                done(Outcome::TimedOut, files)
            }
            Heard::Interrupted => {
                running.child.terminate(Evidence::none("the run was interrupted"), Duration::ZERO);
                done(Outcome::Interrupted, Vec::new())
            }
            other => done(Outcome::Failed(format!("during the trial: {}", other.why())), Vec::new()),
        };
        let last = self.plans.get(&case.target).and_then(|p| p.last()) == Some(&case.name);
        if last {
            self.finish(cx.signals);
        }
        run
    }

    /// The running harness process, if any: its pid and the `started_by` of what it
    /// starts (see [`crate::leftovers`]).
    pub fn running(&self) -> Option<(u32, &str)> {
        self.running.as_ref().map(|r| (r.child.pid(), r.started_by.as_str()))
    }

    /// Lets the running harness exit after its last trial (bounded), then removes what
    /// is left of its process group.
    pub fn finish(&mut self, signals: &Signals) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.wait_until(Instant::now() + EXIT_TIMEOUT, signals);
            running.child.terminate(Evidence::none("the harness is past its last trial"), Duration::ZERO);
        }
    }

    /// Starts the harness of `case`'s target with a plan of the trials from `case` on.
    fn start(&mut self, case: &TestCase, cx: &Context) -> Result<Running, Box<TestRun>> {
        let plan: Vec<String> = self
            .plans
            .get(&case.target)
            .map(|p| p.iter().skip_while(|name| **name != case.name).cloned().collect())
            .unwrap_or_default();
        self.started += 1;
        let log_name = format!("tests/{}/harness-{}.log", case.target, self.started);
        let started_by = format!("{} (harness {})", case.target, self.started);
        launch(case, cx, plan, &log_name, started_by)
    }
}

/// Starts a harness process of `case`'s target, its output to `log_name`, and sends it
/// `plan` once it said hello.
fn launch(
    case: &TestCase,
    cx: &Context,
    plan: Vec<String>,
    log_name: &str,
    started_by: String,
) -> Result<Running, Box<TestRun>> {
    let failed = |why: String| Box::new(spawn_failed(why, cx.run_dir.join(log_name)));
    let (log_file, log) =
        cx.run_dir.log_file(log_name).map_err(|e| failed(format!("cannot create {log_name}: {e}")))?;
    let err_file = log_file.try_clone().map_err(|e| failed(format!("cannot share {log_name}: {e}")))?;
    let listener = Listener::bind().map_err(|e| failed(format!("cannot create the harness socket: {e}")))?;
    let mut cmd = Command::new(&case.exe);
    cmd.current_dir(&cx.config.package_dir)
        .env("CARGO_MANIFEST_DIR", &cx.config.package_dir)
        .envs(cx.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(HARNESS_SOCKET_ENV, listener.path())
        .env(crate::leftovers::STARTED_BY_ENV, &started_by)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file);
    let mut child = GroupChild::spawn(&mut cmd)
        .map_err(|e| failed(format!("cannot start the harness {}: {e}", case.exe.display())))?;
    let deadline = Instant::now() + cx.config.startup_timeout;
    let stream = loop {
        match listener.try_accept() {
            // Only the harness (or a process it started) may speak for it.
            Ok(Some((stream, peer))) if peer.refusal(child.pid()).is_none() => break stream,
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(e) => return Err(failed(format!("cannot accept the harness's connection: {e}"))),
        }
        if let Some(status) = child.try_wait() {
            return Err(failed(format!("the harness exited with {} before connecting", describe(status))));
        }
        if cx.signals.interrupted() {
            return Err(Box::new(TestRun { outcome: Outcome::Interrupted, ..*failed(String::new()) }));
        }
        if Instant::now() >= deadline {
            return Err(failed(format!("the harness did not connect within {:?}", cx.config.startup_timeout)));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let connect = || -> std::io::Result<(BufReader<UnixStream>, UnixStream)> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(TICK))?;
        Ok((BufReader::new(stream.try_clone()?), stream.try_clone()?))
    };
    let (reader, writer) = connect().map_err(|e| failed(format!("the harness connection: {e}")))?;
    let mut running = Running {
        target: case.target.clone(),
        started_by,
        child,
        reader,
        writer,
        buf: Vec::new(),
        log,
        _listener: listener,
    };
    match running.hear(deadline, cx.signals, &mut NoProbe) {
        Heard::Message(TrialMessage::Hello { .. }) => {}
        other => return Err(failed(format!("the harness did not say hello: {}", other.why()))),
    }
    protocol::write_message(&mut running.writer, &TrialReply::Plan { trials: plan })
        .map_err(|e| failed(format!("cannot send the harness its plan: {e}")))?;
    Ok(running)
}

impl Running {
    /// Waits for the harness's next message until `deadline`, handing control to the
    /// probe between looks.
    fn hear(&mut self, deadline: Instant, signals: &Signals, probe: &mut dyn Probe) -> Heard {
        loop {
            match protocol::read_message::<_, TrialMessage>(&mut self.reader, &mut self.buf, MAX_TRIAL_MESSAGE) {
                Ok(msg) => return Heard::Message(msg),
                Err(ProtocolError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(ProtocolError::Closed) => {
                    // The process is exiting; its status says more than the socket.
                    return match self.child.wait_until(Instant::now() + Duration::from_secs(1), signals) {
                        crate::process::Wait::Exited(status) => Heard::Exited(status),
                        _ => Heard::Broken("the harness closed its connection".into()),
                    };
                }
                Err(e) => return Heard::Broken(format!("the harness sent a bad message: {e}")),
            }
            if let Some(status) = self.child.try_wait() {
                return Heard::Exited(status);
            }
            if signals.interrupted() {
                return Heard::Interrupted;
            }
            if Instant::now() >= deadline {
                return Heard::TimedOut;
            }
            probe.tick();
        }
    }
}

impl Heard {
    fn why(&self) -> String {
        match self {
            Heard::Message(m) => format!("it sent {m:?} out of turn"),
            Heard::Exited(status) => format!("the harness process exited with {}", describe(*status)),
            Heard::TimedOut => "no word from the harness within the test timeout".into(),
            Heard::Interrupted => "interrupted".into(),
            Heard::Broken(why) => why.clone(),
        }
    }
}

/// While a harness starts, no test is running yet: nothing to serve, nothing hung.
struct NoProbe;

impl Probe for NoProbe {
    fn tick(&mut self) {}
    fn hung(&mut self, _case: &TestCase) -> Evidence {
        Evidence::none("no trial was running")
    }
}

/// One trial in a harness process of its own, for `--stress`: N of them run the same
/// trial at once, each started with a one-trial plan and held at its `start` until every
/// copy is there, so that they are let go together.
pub struct Solo {
    running: Running,
    name: String,
    /// Where the trial's output begins in the log.
    offset: u64,
}

/// How often a solo copy's connection is looked at while its siblings run.
const SOLO_LOOK: Duration = Duration::from_millis(5);

impl Solo {
    /// Starts copy `copy` of `case`'s trial and waits for its `start`; its output goes to
    /// `log_name`. Everything it starts is marked as the test's, as a test process is.
    pub fn start(case: &TestCase, cx: &Context, log_name: &str) -> Result<Solo, Box<TestRun>> {
        let mut running = launch(case, cx, vec![case.name.clone()], log_name, case.id())?;
        let log = running.log.clone();
        let failed = |why: String| Box::new(spawn_failed(why, log.clone()));
        match running.hear(Instant::now() + cx.config.startup_timeout, cx.signals, &mut NoProbe) {
            Heard::Message(TrialMessage::Start { name }) if name == case.name => {}
            Heard::Interrupted => {
                return Err(Box::new(TestRun { outcome: Outcome::Interrupted, ..*failed(String::new()) }))
            }
            other => return Err(failed(format!("the harness did not start the trial: {}", other.why()))),
        }
        running
            .reader
            .get_ref()
            .set_read_timeout(Some(SOLO_LOOK))
            .map_err(|e| failed(format!("the harness connection: {e}")))?;
        let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
        Ok(Solo { running, name: case.name.clone(), offset })
    }

    /// Lets the trial run.
    pub fn go(&mut self) -> Result<(), String> {
        protocol::write_message(&mut self.running.writer, &TrialReply::Go { name: self.name.clone() })
            .map_err(|e| format!("the harness went away before the trial: {e}"))
    }

    /// The trial's outcome once it has ended (without waiting), and the panic behind a
    /// failure; `None` while it runs.
    pub fn poll(&mut self, signals: &Signals) -> Option<(Outcome, Option<crate::libtest::Panic>)> {
        match self.running.hear(Instant::now(), signals, &mut NoProbe) {
            Heard::TimedOut => None,
            Heard::Interrupted => Some((Outcome::Interrupted, None)),
            Heard::Message(TrialMessage::End { name, outcome: TrialOutcome::Failed }) if name == self.name => {
                let (panic, message) = crate::libtest::trial_failure(&self.running.log, self.offset, &self.name);
                let why = message.unwrap_or_else(|| format!("the trial failed; see {}", self.running.log.display()));
                Some((Outcome::Failed(why), panic))
            }
            Heard::Message(TrialMessage::End { name, .. }) if name == self.name => Some((Outcome::Passed, None)),
            other => Some((Outcome::Failed(format!("during the trial: {}", other.why())), None)),
        }
    }

    /// Its log.
    pub fn log(&self) -> &std::path::Path {
        &self.running.log
    }

    /// After its trial: lets the harness exit (bounded), then removes what is left of
    /// its process group.
    pub fn finish(mut self, signals: &Signals) {
        let _ = self.running.child.wait_until(Instant::now() + EXIT_TIMEOUT, signals);
        self.running.child.terminate(Evidence::none("the harness is past its only trial"), Duration::ZERO);
    }

    /// Stops it mid-trial, once `evidence` (the proof that what was to be saved is on
    /// disk) exists.
    pub fn terminate(mut self, evidence: Evidence, grace: Duration) {
        self.running.child.terminate(evidence, grace);
    }
}
