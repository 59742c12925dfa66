//! Nothing of a run outlives it.
//!
//! The runner is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process that a test or
//! the server detaches (`setsid`, a double fork) comes back to the runner as its parent
//! when its own parent exits, instead of going to init where nobody would look. After
//! each test, and at the end of the run, every such process still alive is a
//! *leftover*: it is reported (pid, command, and who started it, from the
//! [`STARTED_BY_ENV`] marker every child of the run inherits), written durably, and then
//! ended the usual way: SIGTERM, a grace period, SIGKILL, reaped.
//!
//! The runner never reaps with `waitpid(-1)`: that would steal the exit status of the
//! server or a test from its own handle. It reaps only the pids it found here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::rundir::{Evidence, RunDir};

/// Set on every child of the run (the server, each test) to who started it: `server`, or
/// the test's id. Descendants inherit it, which is how a leftover is attributed.
pub const STARTED_BY_ENV: &str = "HANGCHECK_STARTED_BY";

/// The `started_by` of the server and of everything it starts.
pub const SERVER: &str = "server";

/// How long leftovers get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(1);

/// A process of the run that was still alive when it should not have been.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leftover {
    /// Its pid.
    pub pid: u32,
    /// Its command line (arguments joined by spaces), or its name.
    pub command: String,
    /// `server`, a test's id, or `unknown` when its environment does not say.
    pub started_by: String,
    /// When it was found: after which test, or `the end of the run`.
    pub found_after: String,
    /// `terminated` (it exited after SIGTERM) or `killed` (SIGKILL).
    pub ended: std::borrow::Cow<'static, str>,
}

/// Makes the runner the reaper of every orphaned descendant. If the kernel refuses, the
/// run goes on, without that.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("warning: cannot become a child subreaper ({e}); processes detached by the server or a test may outlive the run");
    }
}

/// Finds the leftovers whose `started_by` is accepted by `take`: processes that came
/// back to the runner (their parent is the runner, and they are not in `children`, the
/// runner's own live children) and their descendants. Zombies among them are reaped.
pub fn find(children: &[u32], take: impl Fn(&str) -> bool) -> Vec<(u32, String, String)> {
    let me = std::process::id();
    let table = processes();
    let mut found = Vec::new();
    let mut queue: Vec<u32> =
        table.iter().filter(|(pid, p)| p.ppid == me && !children.contains(pid)).map(|(pid, _)| *pid).collect();
    while let Some(pid) = queue.pop() {
        let Some(p) = table.get(&pid) else { continue };
        if p.zombie {
            if p.ppid == me {
                let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
            }
            continue;
        }
        let started_by = started_by(pid).unwrap_or_else(|| "unknown".to_owned());
        if take(&started_by) {
            found.push((pid, command(pid, &p.name), started_by));
            queue.extend(table.iter().filter(|(_, c)| c.ppid == pid).map(|(c, _)| *c));
        }
    }
    found
}

/// Reports and ends `found` (from [`find`]): what is known is written to
/// `leftovers/<label>.txt` durably first, then SIGTERM, [`GRACE`], SIGKILL.
pub fn end(found: Vec<(u32, String, String)>, found_after: &str, run_dir: &RunDir, label: &str) -> Vec<Leftover> {
    if found.is_empty() {
        return Vec::new();
    }
    let mut text = format!(
        "hangcheck: processes still running after {found_after}, ended with SIGTERM, then SIGKILL after {GRACE:?}\n"
    );
    for (pid, command, started_by) in &found {
        text.push_str(&format!("pid {pid} started by {started_by}: {command}\n"));
    }
    let _evidence: Evidence = run_dir.write_all_evidence(&[(format!("leftovers/{label}.txt"), text.into_bytes())]);
    for (pid, ..) in &found {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    let mut ended: BTreeMap<u32, &'static str> = BTreeMap::new();
    loop {
        for (pid, ..) in &found {
            if !ended.contains_key(pid) && gone(*pid) {
                ended.insert(*pid, "terminated");
            }
        }
        if ended.len() == found.len() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (pid, ..) in &found {
        if !ended.contains_key(pid) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            ended.insert(*pid, "killed");
            // Bounded: a SIGKILLed process is gone within moments, unless stuck in the
            // kernel (D state), and then it is listed as killed all the same.
            let deadline = Instant::now() + GRACE;
            while !gone(*pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    found
        .into_iter()
        .map(|(pid, command, started_by)| Leftover {
            pid,
            command,
            started_by,
            found_after: found_after.to_owned(),
            ended: ended.get(&pid).copied().unwrap_or("killed").into(),
        })
        .collect()
}

/// Whether `pid` has exited; reaps it if it is the runner's zombie.
fn gone(pid: u32) -> bool {
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

struct Proc {
    ppid: u32,
    name: String,
    zombie: bool,
}

/// Every process of the machine the runner can see, by pid.
fn processes() -> BTreeMap<u32, Proc> {
    let mut table = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return table };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let (Some(open), Some((head, rest))) = (stat.find('('), stat.rsplit_once(')')) else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("?");
        let Some(ppid) = fields.next().and_then(|p| p.parse().ok()) else { continue };
        let name = head.get(open + 1..).unwrap_or("?").to_owned();
        table.insert(pid, Proc { ppid, name, zombie: state == "Z" || state == "X" });
    }
    table
}

fn started_by(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{STARTED_BY_ENV}=");
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn command(pid: u32, name: &str) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> =
        cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    if args.is_empty() {
        name.to_owned()
    } else {
        args.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_grandchild_comes_back_and_is_found_ended_and_attributed() {
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(dir.path()).unwrap();
        // sh exits at once; its `setsid sleep` child is orphaned and comes back to us.
        let status = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 30 >/dev/null 2>&1 &"])
            .env(STARTED_BY_ENV, "unit::detaches")
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = find(&[], |who| who == "unit::detaches");
            // Until `sh`'s fork has exec'd `setsid sleep`, the orphan still reads as `sh`.
            if found.iter().any(|f| f.1.ends_with("sleep 30")) || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(found.len(), 1, "{found:?}");
        let pid = found[0].0;
        // Caught before or after `setsid` exec'd `sleep`.
        assert!(found[0].1.ends_with("sleep 30"), "{found:?}");
        let ended = end(found, "unit::detaches", &run_dir, "unit");
        assert_eq!(ended[0].ended, "terminated");
        assert!(gone(pid));
        let text = std::fs::read_to_string(run_dir.join("leftovers/unit.txt")).unwrap();
        assert!(text.contains(&format!("pid {pid} started by unit::detaches: ")), "{text}");
    }
}
