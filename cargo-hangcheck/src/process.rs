//! Child processes in their own process groups, bounded waits, and the one termination
//! path.
//!
//! Every child (the server, each test) starts as the leader of a new process group, so
//! a signal reaches it and everything it spawned, and a Ctrl-C at the terminal reaches
//! only the runner. [`GroupChild::terminate`] is the only place that sends SIGTERM or
//! SIGKILL on a normal path, and it takes [`Evidence`]: whatever was to be known about
//! the process is on disk before it is signalled. Dropping a `GroupChild` that is still
//! running kills its group, so no error path can leave an orphan.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::rundir::Evidence;
use crate::signal::Signals;

/// How often bounded waits look at the child.
const POLL: Duration = Duration::from_millis(5);

/// The longest wait for a SIGKILLed process to be reaped.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// The grace period left to a child after Ctrl-C: short, so that the run ends within
/// about a second, yet enough for a well-behaved process to exit on SIGTERM.
pub const INTERRUPTED_GRACE: Duration = Duration::from_millis(500);

/// A child process that leads its own process group.
pub struct GroupChild {
    child: Child,
    pgid: Pid,
    status: Option<ExitStatus>,
}

/// How a bounded wait ended.
#[derive(Debug)]
pub enum Wait {
    /// The child exited.
    Exited(ExitStatus),
    /// The deadline passed; the child is still running.
    TimedOut,
    /// The runner was interrupted; the child is still running.
    Interrupted,
}

/// How a termination ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It had exited before any signal was needed.
    AlreadyExited(ExitStatus),
    /// It exited within the grace period after SIGTERM.
    Terminated(ExitStatus),
    /// It ignored SIGTERM for the whole grace period and was SIGKILLed.
    Killed,
}

impl GroupChild {
    /// Spawns `cmd` as the leader of a new process group, to be SIGKILLed by the kernel
    /// if the runner dies (`PR_SET_PDEATHSIG`), even by SIGKILL.
    ///
    /// The kernel sends that signal when the *thread* that forked the child exits, so
    /// children are spawned only from the run's main thread, which lives as long as the
    /// run.
    pub fn spawn(cmd: &mut Command) -> io::Result<GroupChild> {
        use std::os::unix::process::CommandExt;
        let runner = nix::unistd::getpid();
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe calls (prctl, getppid): no allocation, no lock.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                // The runner may have died between fork and prctl: then nobody would
                // send the signal, so do not start at all.
                if nix::unistd::getppid() != runner {
                    return Err(io::Error::from(nix::errno::Errno::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.process_group(0).spawn()?;
        let pgid = Pid::from_raw(child.id() as i32);
        Ok(GroupChild { child, pgid, status: None })
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's standard output, when it was piped (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status, if the child has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits until the child exits, the deadline passes, or the runner is interrupted.
    pub fn wait_until(&mut self, deadline: Instant, signals: &Signals) -> Wait {
        loop {
            if let Some(status) = self.try_wait() {
                return Wait::Exited(status);
            }
            if signals.interrupted() {
                return Wait::Interrupted;
            }
            let now = Instant::now();
            if now >= deadline {
                return Wait::TimedOut;
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    /// Stops the process group after the evidence about it is on disk: SIGTERM, up to
    /// `grace` for the leader to exit, then SIGKILL; the leader is always reaped. A zero
    /// grace sends SIGKILL at once.
    ///
    /// `evidence` is the proof that what was to be saved about the process is on disk;
    /// taking it here keeps the rule in one place.
    pub fn terminate(&mut self, evidence: Evidence, grace: Duration) -> Termination {
        self.stop(grace, move || evidence)
    }

    /// Asks the process group to stop (SIGTERM, a request that loses nothing), waits up
    /// to `grace`, and if the leader is still running calls `before_kill` (which writes
    /// what is known about the still-running process) and only then sends SIGKILL.
    pub fn stop(&mut self, grace: Duration, before_kill: impl FnOnce() -> Evidence) -> Termination {
        if let Some(status) = self.try_wait() {
            // The leader is gone; take down anything it left in its group.
            self.signal_group(Signal::SIGKILL);
            return Termination::AlreadyExited(status);
        }
        if !grace.is_zero() {
            self.signal_group(Signal::SIGTERM);
            let signals = Signals::installed();
            let interrupts = signals.interrupts();
            let mut deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Some(status) = self.try_wait() {
                    self.signal_group(Signal::SIGKILL);
                    return Termination::Terminated(status);
                }
                // Ctrl-C during the grace: the first one shortens it, so that the run
                // ends within about a second; a second one skips what is left of it.
                let now = signals.interrupts();
                if now > interrupts {
                    if now >= 2 {
                        break;
                    }
                    deadline = deadline.min(Instant::now() + INTERRUPTED_GRACE);
                }
                std::thread::sleep(POLL);
            }
        }
        let _evidence: Evidence = before_kill();
        self.kill_and_reap();
        Termination::Killed
    }

    /// After the leader exited on its own: kills what it left behind in its group.
    pub fn kill_leftovers(&mut self) {
        self.signal_group(Signal::SIGKILL);
    }

    fn signal_group(&self, signal: Signal) {
        // ESRCH (the group is empty) is the expected case after an exit.
        let _ = killpg(self.pgid, signal);
    }

    /// SIGKILL to the group, then reaps the leader, waiting at most [`REAP_LIMIT`]: a
    /// process stuck in the kernel (state D, a dead NFS mount) ignores even SIGKILL, and
    /// the run must still end. Such a leader is left to the kernel (and to init).
    fn kill_and_reap(&mut self) {
        self.signal_group(Signal::SIGKILL);
        let deadline = Instant::now() + REAP_LIMIT;
        while self.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if self.status.is_none() {
            eprintln!(
                "warning: pid {} did not exit within {REAP_LIMIT:?} of SIGKILL (stuck in the kernel?)",
                self.pid()
            );
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        // Whatever path got here, leave no process behind. Normal paths have already
        // terminated the child, so this only kills on errors and panics.
        if self.try_wait().is_none() {
            self.kill_and_reap();
        } else {
            self.signal_group(Signal::SIGKILL);
        }
    }
}

/// Describes an exit status in words: "exit code 3" or "signal 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({})", s.as_str()),
            Err(_) => format!("signal {sig}"),
        }
    } else {
        status.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    /// Waits (bounded) until a file exists with content or is a marker.
    fn wait_for_file(path: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(path).is_ok_and(|s| !s.trim().is_empty() || path.ends_with("ready")) {
            assert!(Instant::now() < deadline, "{} never appeared", path.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn terminate_escalates_to_sigkill_when_sigterm_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let script = format!("trap '' TERM; touch {}; while :; do sleep 0.05; done", ready.display());
        let mut child = GroupChild::spawn(&mut sh(&script)).unwrap();
        wait_for_file(&ready);
        let t = child.terminate(Evidence::none("test"), Duration::from_millis(200));
        assert_eq!(t, Termination::Killed);
    }

    #[test]
    fn terminate_takes_down_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let mut child = GroupChild::spawn(&mut sh(&script)).unwrap();
        wait_for_file(&pidfile);
        let grandchild: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let t = child.terminate(Evidence::none("test"), Duration::from_secs(5));
        assert!(matches!(t, Termination::Terminated(_)), "{t:?}");
        // The grandchild was in the group: it got the signal too. It is not our child, so
        // it may linger as a zombie until init reaps it; a zombie has state Z.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).ok();
            let gone =
                state.as_deref().is_none_or(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'));
            if gone {
                break;
            }
            assert!(Instant::now() < deadline, "grandchild {grandchild} still running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn bounded_wait_times_out_and_drop_kills() {
        let mut child = GroupChild::spawn(&mut sh("sleep 30")).unwrap();
        let pid = child.pid();
        let w = child.wait_until(Instant::now() + Duration::from_millis(50), &Signals::default());
        assert!(matches!(w, Wait::TimedOut));
        drop(child);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        assert!(stat.is_err(), "child {pid} survived its GroupChild");
    }

    #[test]
    fn describes_exit_statuses() {
        let mut c = GroupChild::spawn(&mut sh("exit 3")).unwrap();
        let Wait::Exited(s) = c.wait_until(Instant::now() + Duration::from_secs(10), &Signals::default()) else {
            panic!("sh did not exit")
        };
        assert_eq!(describe(s), "exit code 3");
        let mut c = GroupChild::spawn(&mut sh("kill -9 $$")).unwrap();
        let Wait::Exited(s) = c.wait_until(Instant::now() + Duration::from_secs(10), &Signals::default()) else {
            panic!("sh did not exit")
        };
        assert_eq!(describe(s), "signal 9 (SIGKILL)");
    }
}
