//! Fetching the server's stacks: from the agent thread inside it when it answers, from
//! outside with gdb when it does not (the server is SIGSTOPped, the agent is stuck, the
//! process is wedged in the allocator). The runner is the server's parent, so ptrace is
//! allowed even under Yama's default `ptrace_scope = 1`.
//!
//! Whichever source answered is written at the top of the stack file; when none did, the
//! file says why. Every source is bounded in time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::{Recorded, Snapshot, StackSource, Stacks};

use crate::link::AgentLink;
use crate::process::{GroupChild, Wait};
use crate::rundir::{Evidence, RunDir};
use crate::settle::SNAPSHOT_TIMEOUT;
use crate::signal::Signals;

/// How long gdb gets to attach and print every thread's backtrace.
const GDB_TIMEOUT: Duration = Duration::from_secs(30);

/// Stacks of a process, rendered for a stack file.
pub struct Fetched {
    /// Who took them.
    pub source: StackSource,
    /// The file's head (whose stacks, from where), and gdb's text when gdb took them.
    pub text: String,
    /// The agent's answer, when it answered: threads and async tasks, to read culprits off.
    pub stacks: Option<Stacks>,
}

impl Fetched {
    /// The stack file's body, `summary` lines first when the agent answered.
    pub fn render(&self, summary: &[String]) -> String {
        match &self.stacks {
            Some(stacks) => format!("{}{}", self.text, crate::stackfile::render(stacks, summary)),
            None => self.text.clone(),
        }
    }
}

/// Fetches the stacks of the server `pid`, agent first, then gdb.
pub fn fetch(link: &mut AgentLink, pid: u32, run_dir: &RunDir) -> Fetched {
    if process_state(pid) == "T" {
        // A stopped process cannot run its agent; do not wait for it.
        return outside(pid, "the server is stopped (SIGSTOP); its agent thread cannot run", run_dir);
    }
    let why = match link.stacks() {
        Ok(stacks) => {
            let text = format!("hangcheck: stacks of pid {pid}\nsource: agent\n\n");
            return Fetched { source: StackSource::Agent, text, stacks: Some(stacks) };
        }
        Err(e) => e.to_string(),
    };
    outside(pid, &why, run_dir)
}

/// Stacks taken from outside the process with gdb.
pub fn outside(pid: u32, why_not_agent: &str, run_dir: &RunDir) -> Fetched {
    let state = process_state(pid);
    let header =
        format!("hangcheck: stacks of pid {pid} (process state {state})\nthe agent did not answer: {why_not_agent}\n");
    match gdb(pid, run_dir) {
        Ok(text) => Fetched { source: StackSource::Gdb, text: format!("{header}source: gdb\n\n{text}"), stacks: None },
        Err(e) => Fetched {
            source: StackSource::Unavailable,
            text: format!("{header}source: none\ngdb could not take them either: {e}\n"),
            stacks: None,
        },
    }
}

fn gdb(pid: u32, run_dir: &RunDir) -> Result<String, String> {
    let (out, path) = run_dir.log_file(format!(".gdb-{pid}.out")).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("gdb");
    cmd.args(["--batch", "--nx", "-p", &pid.to_string(), "-ex", "set pagination off", "-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut child = GroupChild::spawn(&mut cmd).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "gdb is not installed (apt-get install gdb)".to_owned(),
        _ => format!("cannot run gdb: {e}"),
    })?;
    // A Ctrl-C from now on cuts gdb short (one before it started does not: this is the
    // evidence of a run that is being torn down).
    let outcome = child.wait_until(Instant::now() + GDB_TIMEOUT, &Signals::installed().since_now());
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    match outcome {
        Wait::Exited(_) if text.contains("Thread ") || text.contains("#0 ") => Ok(text),
        Wait::Exited(status) => Err(format!("gdb exited with {}: {}", crate::process::describe(status), text.trim())),
        Wait::TimedOut => Err(format!("gdb did not finish within {GDB_TIMEOUT:?}")),
        Wait::Interrupted => {
            child.terminate(Evidence::none("gdb itself holds no evidence"), Duration::ZERO);
            Err("interrupted (Ctrl-C) while gdb was attaching".to_owned())
        }
    }
}

/// What [`evidence`] wrote and found.
pub struct Taken {
    /// The files, durably written.
    pub evidence: Evidence,
    /// Who took the stacks.
    pub source: StackSource,
    /// The snapshot, if the agent answered.
    pub snapshot: Option<Snapshot>,
    /// The flight recorder's events, if the agent answered and records.
    pub recorded: Option<Recorded>,
}

/// What the runner writes about a hung server before anything is signalled: its stacks
/// (agent, or gdb from outside), a snapshot (which groups are alive, and how old) and the
/// flight recorder's events (what happened before), as `<prefix>.stacks.txt` (a summary
/// first: the lines `summarize` reads off the agent's stacks and the snapshot),
/// `<prefix>.stacks.json` (every frame), `<prefix>.snapshot.json` and
/// `<prefix>.events.jsonl`, each fsynced. An agent that does not answer leaves the JSON
/// stacks out; one that does not record (turned off, or older) the events.
pub fn evidence(
    link: &mut AgentLink,
    pid: u32,
    run_dir: &RunDir,
    prefix: &str,
    summarize: impl FnOnce(&Stacks, Option<&Snapshot>) -> Vec<String>,
) -> Taken {
    let fetched = fetch(link, pid, run_dir);
    let agent = fetched.source == StackSource::Agent;
    let snapshot = if agent { link.snapshot(SNAPSHOT_TIMEOUT).ok() } else { None };
    let recorded = if agent { link.recorded(SNAPSHOT_TIMEOUT).ok().filter(|r| r.capacity > 0) } else { None };
    let summary = fetched.stacks.as_ref().map(|s| summarize(s, snapshot.as_ref())).unwrap_or_default();
    let snapshot_body = match &snapshot {
        Some(s) => serde_json::to_vec_pretty(s).unwrap_or_default(),
        None => br#"{"error": "no snapshot: the agent did not answer"}"#.to_vec(),
    };
    let mut files = vec![(format!("{prefix}.stacks.txt"), fetched.render(&summary).into_bytes())];
    if let Some(stacks) = &fetched.stacks {
        files.push((format!("{prefix}.stacks.json"), serde_json::to_vec(stacks).unwrap_or_default()));
    }
    files.push((format!("{prefix}.snapshot.json"), snapshot_body));
    if let Some(r) = &recorded {
        files.push((format!("{prefix}.events.jsonl"), crate::recorded::jsonl(r)));
    }
    let evidence = run_dir.write_all_evidence(&files);
    Taken { evidence, source: fetched.source, snapshot, recorded }
}

/// The summary of a server that hangs as a whole (its shutdown): where every async task
/// waits, and the threads blocked in its own code.
pub fn summarize_all(stacks: &Stacks, root: &str) -> Vec<String> {
    let mut lines: Vec<String> =
        crate::culprit::waiting_in(stacks, |_| true, root).iter().map(crate::culprit::Waiting::describe).collect();
    lines.extend(crate::culprit::blocked_threads(stacks, root).into_iter().map(|t| format!("thread {t}")));
    lines
}

/// The kernel's state letter for a process (`T` when stopped), `?` if it is gone.
pub fn process_state(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned)))
        .unwrap_or_else(|| "?".to_owned())
}
