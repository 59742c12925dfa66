//! The server under test: started in its own process group with `HANGCHECK_SOCKET`, its
//! output logged to the run directory, ready once the agent has said hello (and, by
//! default, announced an address), stopped with SIGTERM and a grace period.
//!
//! Every start-up failure (the binary cannot run, it exits, it never says hello, it says
//! something that is not hello) is a [`SetupError::Server`] naming the cause, with the
//! tail of the server log, within the start-up timeout.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hangcheck_runtime::protocol::{
    Announcement, Hello, Stall, StallEnd, OVERLAP_GRACE_ENV, POLL_STATS_ENV, RECORDER_EVENTS_ENV, SOCKET_ENV,
    STALL_THRESHOLD_ENV,
};

use crate::build::Built;
use crate::cli::Ready;
use crate::config::Config;
use crate::errors::SetupError;
use crate::link::{AgentLink, LinkEvent, Listener};
use crate::process::{describe, GroupChild, Termination};
use crate::rundir::{Evidence, RunDir};
use crate::signal::Signals;

/// A started server with a live agent connection.
pub struct Server {
    /// The process.
    pub child: GroupChild,
    /// The agent connection.
    pub link: AgentLink,
    /// What the agent said first.
    pub hello: Hello,
    /// Announced addresses by name.
    pub addrs: BTreeMap<String, String>,
    /// The server log.
    pub log: std::path::PathBuf,
    /// Events that arrived while waiting for readiness.
    early: Events,
    /// The first malformed announcement after start-up: the run cannot go on.
    bad_announcement: Option<String>,
    /// Kept open for the server's lifetime; anyone else who connects is refused.
    listener: Listener,
}

/// What the agent sent on its own between two looks.
#[derive(Default)]
pub struct Events {
    /// Stalls, each with the file it was written to and when it arrived.
    pub stalls: Vec<(Stall, Option<PathBuf>, Instant)>,
    /// Stalls that ended, with their whole length.
    pub stall_ends: Vec<StallEnd>,
    /// Messages that were not valid protocol.
    pub protocol_errors: Vec<String>,
}

/// Writes each stall to `stalls/` durably, on the link's reader thread, the moment it
/// arrives: `stall-N.txt`, and the flight recorder's events before it in
/// `stall-N.events.jsonl`.
fn stall_writer(run_dir: RunDir) -> impl FnMut(&Stall) -> Option<PathBuf> + Send + 'static {
    let n = AtomicU64::new(0);
    move |stall| {
        let n = n.fetch_add(1, Ordering::Relaxed) + 1;
        let mut text = format!(
            "hangcheck: stall {n}: worker {} \"{}\" stuck in one poll for {} ms (threshold {} ms), epoch {}\n",
            stall.tid, stall.thread, stall.stuck_ms, stall.threshold_ms, stall.epoch
        );
        if let Some(task) = &stall.task {
            text.push_str(&format!(
                "task {} of group {} spawned at {}\n",
                task.id,
                task.group.as_deref().unwrap_or("?"),
                task.location.as_deref().unwrap_or("?")
            ));
        }
        text.push_str(&crate::stackfile::thread(&stall.stack));
        if let Some(recorded) = stall.recorded.as_ref().filter(|r| r.capacity > 0) {
            text.push_str(&format!("\nthe flight recorder's events before it: stall-{n}.events.jsonl\n"));
            let _ = run_dir.write_durable(format!("stalls/stall-{n}.events.jsonl"), &crate::recorded::jsonl(recorded));
        }
        run_dir.write_durable(format!("stalls/stall-{n}.txt"), text.as_bytes()).ok()
    }
}

/// How the server's stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It exited within the grace period (or had exited already).
    Clean,
    /// It was still running after the grace period and was killed: a shutdown hang.
    Hung,
}

impl Server {
    /// Starts the server and waits until it is ready.
    /// Its output goes to `log_name` in the run directory.
    pub fn start(
        config: &Config,
        built: &Built,
        run_dir: &RunDir,
        signals: &Signals,
        log_name: &str,
    ) -> Result<Server, SetupError> {
        let listener = Listener::bind().map_err(SetupError::io("cannot create the agent socket"))?;
        let (log_file, log) =
            run_dir.log_file(log_name).map_err(SetupError::io(format!("cannot create {log_name}")))?;
        let err_file = log_file.try_clone().map_err(SetupError::io("cannot share server.log"))?;
        let mut cmd = Command::new(&built.server);
        cmd.args(&config.server_args)
            .envs(config.server_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(SOCKET_ENV, listener.path())
            .env(crate::leftovers::STARTED_BY_ENV, crate::leftovers::SERVER)
            .env(STALL_THRESHOLD_ENV, config.stall_threshold.as_millis().to_string())
            .env(OVERLAP_GRACE_ENV, config.overlap_grace.as_millis().to_string())
            .env(POLL_STATS_ENV, if config.poll_stats { "1" } else { "0" })
            .env(RECORDER_EVENTS_ENV, config.recorder_events.to_string())
            .current_dir(&config.package_dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file);
        let mut child = GroupChild::spawn(&mut cmd).map_err(|e| SetupError::Server {
            cause: format!("cannot start the server {}: {e}", built.server.display()),
            log: None,
        })?;

        let deadline = Instant::now() + config.startup_timeout;
        let fail = |cause: String| SetupError::Server { cause, log: Some(log.clone()) };
        let mut early = Events::default();
        let stream = loop {
            match listener.try_accept() {
                Ok(Some((stream, peer))) => match peer.refusal(child.pid()) {
                    None => break stream,
                    // Dropping the stream closes it: the intruder learns nothing, and
                    // the run waits on for the server.
                    Some(why) => early.protocol_errors.push(why),
                },
                Ok(None) => {}
                Err(e) => return Err(fail(format!("cannot accept the agent's connection: {e}"))),
            }
            if let Some(status) = child.try_wait() {
                return Err(fail(format!("the server exited during start-up with {}", describe(status))));
            }
            if signals.interrupted() {
                return Err(SetupError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "the server did not connect to hangcheck within {:?}; does its main use #[hangcheck_runtime::main] or hangcheck_runtime::instrument?",
                    config.startup_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let interrupted = || signals.interrupted();
        let handshake = AgentLink::handshake(stream, deadline, interrupted, stall_writer(run_dir.clone()));
        let (mut link, hello) = match handshake {
            Ok(pair) => pair,
            Err(_) if signals.interrupted() => return Err(SetupError::Interrupted),
            Err(e) => return Err(fail(e)),
        };
        link.set_stacks_budget(config.stacks_budget);
        if let Some(why) = hello.announced.iter().find_map(|a| a.check().err()) {
            return Err(fail(format!("protocol error: the server's hello is malformed: {why}")));
        }
        let mut addrs: BTreeMap<String, String> =
            hello.announced.iter().map(|a| (a.name.clone(), a.addr.clone())).collect();

        if config.ready == Ready::Announce {
            while addrs.is_empty() {
                match link.next_event(Duration::from_millis(10)) {
                    Some(LinkEvent::Announce(a)) => {
                        addrs.insert(a.name, a.addr);
                    }
                    Some(LinkEvent::Stall { stall, file, at }) => early.stalls.push((*stall, file, at)),
                    Some(LinkEvent::StallEnd(end)) => early.stall_ends.push(end),
                    Some(LinkEvent::Closed) => {
                        let why = child
                            .try_wait()
                            .map_or("closed the connection".to_owned(), |s| format!("exited with {}", describe(s)));
                        return Err(fail(format!("the server {why} during start-up, before announcing an address")));
                    }
                    Some(LinkEvent::ProtocolError(e)) => {
                        return Err(fail(format!("the agent sent a bad message: {e}")))
                    }
                    Some(LinkEvent::BadAnnouncement(why)) => {
                        return Err(fail(format!("protocol error: the server announced a malformed address: {why}")))
                    }
                    None => {}
                }
                if let Some(status) = child.try_wait() {
                    return Err(fail(format!("the server exited during start-up with {}", describe(status))));
                }
                if signals.interrupted() {
                    return Err(SetupError::Interrupted);
                }
                if Instant::now() >= deadline {
                    return Err(fail(format!(
                        "the server said hello but announced no address within {:?}; call hangcheck_runtime::announce(\"http\", addr) once it listens, or set server.ready = \"hello\"",
                        config.startup_timeout
                    )));
                }
            }
        }
        Ok(Server { child, link, hello, addrs, log, early, bad_announcement: None, listener })
    }

    /// Takes what the agent sent on its own since the last call: announcements are
    /// applied, stalls and protocol errors returned.
    pub fn take_events(&mut self) -> Events {
        let mut events = std::mem::take(&mut self.early);
        // Connections after the agent's: never the server's agent (it has one), so each
        // is refused, closed and recorded.
        while let Ok(Some((_, peer))) = self.listener.try_accept() {
            let why = peer.refusal(self.child.pid()).unwrap_or_else(|| {
                format!(
                    "refused a second connection to the agent socket from pid {} (the agent is already connected)",
                    peer.pid
                )
            });
            events.protocol_errors.push(why);
        }
        for event in self.link.drain_events() {
            match event {
                LinkEvent::Announce(Announcement { name, addr }) => {
                    self.addrs.insert(name, addr);
                }
                LinkEvent::Stall { stall, file, at } => events.stalls.push((*stall, file, at)),
                LinkEvent::StallEnd(end) => events.stall_ends.push(end),
                LinkEvent::ProtocolError(e) => events.protocol_errors.push(e),
                LinkEvent::BadAnnouncement(why) => {
                    events.protocol_errors.push(why.clone());
                    self.bad_announcement.get_or_insert(why);
                }
                LinkEvent::Closed => {}
            }
        }
        events
    }

    /// The environment every test gets: one `HANGCHECK_ADDR_<NAME>` per announcement; a
    /// protocol error naming the server if it announced an address no test can be given.
    pub fn test_env(&self) -> Result<Vec<(String, String)>, SetupError> {
        if let Some(why) = &self.bad_announcement {
            return Err(self.failure(format!("protocol error: the server announced a malformed address: {why}")));
        }
        Ok(self
            .addrs
            .iter()
            .map(|(name, addr)| (Announcement { name: name.clone(), addr: addr.clone() }.env_var(), addr.clone()))
            .collect())
    }

    /// The environment of a test: the announced addresses and `HANGCHECK_SERVER_PID`.
    pub fn env_of_a_test(&self) -> Result<Vec<(String, String)>, SetupError> {
        let mut env = self.test_env()?;
        env.push(("HANGCHECK_SERVER_PID".to_owned(), self.child.pid().to_string()));
        Ok(env)
    }

    /// A setup error about this server, with its log for the tail.
    pub fn failure(&self, cause: String) -> SetupError {
        SetupError::Server { cause, log: Some(self.log.clone()) }
    }

    /// Whether the server process is still running.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait()
    }

    /// SIGTERM, then up to `grace` for the server to exit. If it is still running after
    /// the grace, `on_hang` writes what is known (while the process is still alive) and
    /// only then is it SIGKILLed.
    pub fn stop(&mut self, grace: Duration, on_hang: impl FnOnce(&mut AgentLink, u32) -> Evidence) -> Stop {
        let link = &mut self.link;
        let pid = self.child.pid();
        match self.child.stop(grace, || on_hang(link, pid)) {
            Termination::Killed => Stop::Hung,
            Termination::AlreadyExited(_) | Termination::Terminated(_) => Stop::Clean,
        }
    }
}
