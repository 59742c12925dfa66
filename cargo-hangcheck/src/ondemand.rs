//! Stacks and snapshots on demand while a run is in progress, without stopping anything.
//!
//! A running `cargo hangcheck test` or `run` writes `runner.json` (its pid) into its run
//! directory and removes it when it ends. `cargo hangcheck stacks` (`snapshot`) finds the
//! run whose runner is alive, sends it SIGUSR1 (SIGUSR2), and waits for the file to
//! appear; the runner, between two looks at what it is waiting for, fetches the server's
//! stacks (agent, or gdb from outside) or a snapshot with the deltas since the previous
//! one, and writes it to `ondemand/stacks-<n>.txt` (`snapshot-<n>.txt`). `kill -USR1
//! <runner pid>` does the same by hand.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::Snapshot;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;

use crate::cli::LocateArgs;
use crate::link::AgentLink;
use crate::report::terminal;
use crate::rundir::RunDir;
use crate::stacks;

/// How long `cargo hangcheck stacks` waits for the runner to write the file.
const WAIT: Duration = Duration::from_secs(60);

/// Holds an exclusive lock on `runner.json` for as long as the run lives (the kernel
/// drops it when the runner dies, however it dies) and removes the file when the run
/// ends. `cargo hangcheck stacks` signals the pid in the file only while the lock is
/// held: a stale file whose pid the kernel has since given to another process must not
/// make that process receive SIGUSR1 (whose default action is to terminate).
pub struct RunnerMarker {
    path: PathBuf,
    _lock: Option<Flock<std::fs::File>>,
}

impl Drop for RunnerMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Tells `cargo hangcheck stacks` where this run is.
pub fn announce_runner(run_dir: &RunDir, package: &str) -> Option<RunnerMarker> {
    let body = serde_json::json!({ "pid": std::process::id(), "package": package }).to_string();
    let path = run_dir.write_durable("runner.json", body.as_bytes()).ok()?;
    let lock = std::fs::File::open(&path).ok().and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).ok());
    if lock.is_none() {
        terminal::warn("cannot lock runner.json; `cargo hangcheck stacks` will not find this run");
    }
    Some(RunnerMarker { path, _lock: lock })
}

/// Whether the runner that wrote `runner.json` still holds its lock, i.e. still runs.
fn runner_holds(marker: &Path) -> bool {
    let Ok(file) = std::fs::File::open(marker) else { return false };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // We got it: nobody holds it, the runner is gone (dropping it unlocks).
        Ok(_) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

static TAKEN: AtomicU64 = AtomicU64::new(0);
static SNAPSHOTS: AtomicU64 = AtomicU64::new(0);

/// What a second terminal can ask a run for.
#[derive(Clone, Copy)]
pub enum Request {
    /// Every thread's stack (SIGUSR1).
    Stacks,
    /// A snapshot with deltas (SIGUSR2).
    Snapshot,
}

impl Request {
    fn signal(self) -> Signal {
        match self {
            Request::Stacks => Signal::SIGUSR1,
            Request::Snapshot => Signal::SIGUSR2,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Request::Stacks => "stacks-",
            Request::Snapshot => "snapshot-",
        }
    }
}

/// Takes a snapshot now, prints what changed since `previous` (which it replaces), and
/// writes the same text to `ondemand/snapshot-<n>.txt`.
pub fn serve_snapshot(link: &mut AgentLink, previous: &mut Snapshot, run_dir: &RunDir) -> Option<PathBuf> {
    let snapshot = match link.snapshot(crate::settle::SNAPSHOT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            terminal::warn(format!("no snapshot: {e}"));
            return None;
        }
    };
    let n = SNAPSHOTS.fetch_add(1, Ordering::Relaxed) + 1;
    let text = crate::report::delta::render(n, previous, &snapshot);
    *previous = snapshot;
    // On disk before on screen: `cargo hangcheck snapshot` takes the first file that was
    // not there when it asked, so a snapshot already shown must already be listed, or a
    // request made right after it would take it for its own answer.
    let written = run_dir.write_durable(format!("ondemand/snapshot-{n}.txt"), text.as_bytes());
    print!("{text}");
    match written {
        Ok(path) => Some(path),
        Err(e) => {
            terminal::warn(format!("cannot write the snapshot: {e}"));
            None
        }
    }
}

/// Fetches the server's stacks now and writes them to `ondemand/stacks-<n>.txt`.
pub fn serve_stacks(link: &mut AgentLink, pid: u32, run_dir: &RunDir) -> Option<PathBuf> {
    let n = TAKEN.fetch_add(1, Ordering::Relaxed) + 1;
    let fetched = stacks::fetch(link, pid, run_dir);
    match run_dir.write_durable(format!("ondemand/stacks-{n}.txt"), fetched.render(&[]).as_bytes()) {
        Ok(path) => {
            terminal::status("Stacks", format!("of the server ({}) written to {}", fetched.source, path.display()));
            Some(path)
        }
        Err(e) => {
            terminal::warn(format!("cannot write on-demand stacks: {e}"));
            None
        }
    }
}

/// `cargo hangcheck stacks` / `snapshot`: asks the run in progress and prints the answer.
/// Returns the exit code.
pub fn command(args: &LocateArgs, request: Request) -> i32 {
    let runs = match crate::config::hangcheck_dir(args.manifest_path.as_deref(), args.target_dir.as_deref()) {
        Ok(dir) => dir.join("runs"),
        Err(e) => {
            terminal::error(e, &[]);
            return crate::exit::SETUP;
        }
    };
    let mut live = live_runs(&runs);
    live.retain(|r| args.pid.is_none_or(|p| p == r.pid) && args.package.as_ref().is_none_or(|p| *p == r.package));
    let (run_dir, pid) = match live.as_slice() {
        [one] => (one.dir.clone(), one.pid),
        [] => {
            terminal::error(
                format!("no `cargo hangcheck` run is in progress under {} (that matches)", runs.display()),
                &["start one with `cargo hangcheck test` (or `run`), then ask again from another terminal".into()],
            );
            return crate::exit::SETUP;
        }
        several => {
            let list: Vec<String> =
                several.iter().map(|r| format!("pid {} (package {}): {}", r.pid, r.package, r.dir.display())).collect();
            terminal::error(format!("{} runs are in progress; choose one with --pid or -p", several.len()), &list);
            return crate::exit::USAGE;
        }
    };
    let ondemand = run_dir.join("ondemand");
    let before = files(&ondemand, request.prefix());
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), request.signal()) {
        terminal::error(format!("cannot signal the runner (pid {pid}): {e}"), &[]);
        return crate::exit::SETUP;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(new) = files(&ondemand, request.prefix()).into_iter().find(|f| !before.contains(f)) {
            terminal::status("Written", new.display());
            print!("{}", std::fs::read_to_string(&new).unwrap_or_default());
            return crate::exit::OK;
        }
        if Instant::now() >= deadline {
            terminal::error(format!("the runner (pid {pid}) wrote no answer within {WAIT:?}"), &[]);
            return crate::exit::SETUP;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A run whose runner is alive.
struct LiveRun {
    dir: PathBuf,
    pid: u32,
    package: String,
}

/// Every run directory whose runner is alive.
fn live_runs(runs: &Path) -> Vec<LiveRun> {
    let Ok(entries) = std::fs::read_dir(runs) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let marker = e.path().join("runner.json");
            if !runner_holds(&marker) {
                return None;
            }
            let text = std::fs::read_to_string(&marker).ok()?;
            let marker: serde_json::Value = serde_json::from_str(&text).ok()?;
            let pid = marker["pid"].as_u64()? as u32;
            let package = marker["package"].as_str().unwrap_or("?").to_owned();
            Some(LiveRun { dir: e.path(), pid, package })
        })
        .collect()
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
                .collect()
        })
        .unwrap_or_default()
}
