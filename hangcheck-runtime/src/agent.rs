//! The agent: an OS thread inside the server that talks to the runner.
//!
//! It is a plain thread, never a tokio task, so that it still answers when every worker
//! of the runtime it reports on is blocked. It owns the socket: all reads and writes
//! happen here, and other threads hand it events through a channel, so no worker ever
//! waits on the socket.
//!
//! The agent exists only when [`SOCKET_ENV`] is set; otherwise [`get`] returns `None`
//! and every public function of the crate falls through to plain tokio.

use std::io::{BufReader, ErrorKind};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;

use crate::protocol::{
    self, AgentMessage, Hello, ProtocolError, RunnerMessage, Snapshot, Stacks, StacksBudget, Stall, StallEnd,
    MAX_AGENT_MESSAGE, MAX_RUNNER_MESSAGE, SOCKET_ENV, VERSION,
};
use crate::registry::{Group, Registry};
use crate::watchdog::Watchdog;
use crate::{process_facts, stacks, taskdump};

/// How often the agent thread looks for events to forward and stalls to report while no
/// request arrives; stall detection latency is the threshold plus at most this.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The name of the agent thread, as it shows in `/proc/<pid>/task/*/comm` and in stacks.
pub(crate) const THREAD_NAME: &str = "hangcheck-agent";

pub(crate) struct Agent {
    pub(crate) registry: Registry,
    watchdog: Watchdog,
    events: Mutex<Sender<AgentMessage>>,
    /// The unlisted group of hangcheck's own tasks (see [`Agent::spawn_own`]).
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    own: &'static Group,
}

static AGENT: OnceLock<Option<&'static Agent>> = OnceLock::new();

/// The agent, started on first use when the runner is there; `None` (and nothing
/// started) when it is not.
pub(crate) fn get() -> Option<&'static Agent> {
    *AGENT.get_or_init(start)
}

fn start() -> Option<&'static Agent> {
    let path = std::env::var_os(SOCKET_ENV)?;
    crate::recorder::start(crate::recorder::capacity_from_env());
    let (tx, rx) = mpsc::channel();
    // Leaked on purpose: the agent lives as long as the process, and a 'static reference
    // keeps every hot-path access free of reference counting.
    let agent: &'static Agent = Box::leak(Box::new(Agent {
        registry: Registry::new(),
        watchdog: Watchdog::from_env(),
        events: Mutex::new(tx),
        own: Group::unlisted("hangcheck"),
    }));
    let spawned = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
        if let Err(e) = serve(agent, &path, rx) {
            eprintln!("hangcheck: agent stopped: {e}");
        }
    });
    if let Err(e) = spawned {
        eprintln!("hangcheck: cannot start the agent thread ({e}); diagnostics are off");
        return None;
    }
    Some(agent)
}

impl Agent {
    /// Hands a message to the agent thread to send.
    pub(crate) fn send_event(&self, msg: AgentMessage) {
        // The receiver is gone only when the connection is over; nothing to tell then.
        let _ = self.events.lock().unwrap_or_else(PoisonError::into_inner).send(msg);
    }

    fn snapshot(&self) -> Snapshot {
        let registry = &self.registry;
        let runtimes = crate::runtimes::infos();
        let mut snapshot = Snapshot {
            epoch: registry.epoch(),
            uptime_ms: registry.uptime_ms(),
            groups: registry.group_stats(),
            counters: registry.counter_values(),
            gauges: registry.gauge_values(),
            runtime: runtimes.iter().find_map(|r| r.stats.clone()),
            process: process_facts::read(),
            stalls: self.watchdog.count(),
            ops: registry.ops.stats(),
            notes: Vec::new(),
            runtimes,
            uninstrumented_runtimes: crate::runtimes::foreign_count(),
            worker_activity: crate::watchdog::activity(),
        };
        snapshot.fold();
        snapshot
    }

    /// Stalls seen since the last look, each with its stack taken now.
    fn stalls(&self) -> Vec<Stall> {
        let mut stalls = self.watchdog.check(self.registry.epoch(), describe_task);
        // Each stall goes into the recorder, and the recorder's events up to it go with it.
        for stall in &mut stalls {
            let task = stall.task.as_ref().map_or(0, |t| t.id);
            crate::recorder::record(crate::protocol::RecordedKind::Stall, 0, task, u64::from(stall.tid));
            stall.recorded = Some(crate::recorder::read()).filter(|r| r.capacity > 0);
        }
        stalls
    }

    /// Spawns one of hangcheck's own tasks onto a runtime, out of the server's task
    /// counts: the spawn hook files it under the unlisted group, as a task counted by a
    /// named group, and it holds no count of that group. A dump task a blocked runtime
    /// never runs is no leak of the server's.
    fn spawn_own(&self, handle: &Handle, task: taskdump::OwnTask) {
        #[cfg(tokio_unstable)]
        let _own = crate::hooks::NamedSpawn::enter(self.own);
        drop(handle.spawn(task));
    }

    fn answer(&self, request: RunnerMessage) -> AgentMessage {
        match request {
            RunnerMessage::Snapshot { id } => AgentMessage::Snapshot { id, snapshot: self.snapshot() },
            RunnerMessage::Epoch { id, epoch } => {
                self.registry.set_epoch(epoch);
                AgentMessage::Ack { id }
            }
            RunnerMessage::Recorded { id } => AgentMessage::Recorded { id, recorded: crate::recorder::read() },
            RunnerMessage::Stacks { id, budget } => {
                // Thread stacks first: they come back even from a frozen runtime.
                let mut stacks = stacks::all();
                let budget = budget.unwrap_or(StacksBudget::DEFAULT);
                let runtimes = crate::runtimes::handles();
                let spawn = |handle: &Handle, task: taskdump::OwnTask| self.spawn_own(handle, task);
                let stuck = |handle: &Handle| self.watchdog.stuck(handle.id());
                stacks.tasks = Some(taskdump::dump(&runtimes, &stuck, budget, describe_task, &spawn));
                fit(&mut stacks);
                AgentMessage::Stacks { id, stacks }
            }
        }
    }
}

/// A live task's group key and spawn location, from the registry's table of the tasks
/// tokio's hooks saw spawned.
#[cfg(tokio_unstable)]
fn describe_task(id: u64) -> Option<(String, Option<String>)> {
    let group = get()?.registry.task_group(id)?;
    Some((group.key().to_owned(), group.location().map(str::to_owned)))
}

/// Without `tokio_unstable` there are no task hooks, so no table to name tasks from.
#[cfg(not(tokio_unstable))]
fn describe_task(_: u64) -> Option<(String, Option<String>)> {
    None
}

/// Makes a stacks answer fit the message limit whatever the budget said: task groups
/// are dropped (fewest tasks first, and counted), then threads' frames, so that the
/// runner always gets an answer rather than a refused oversized line.
fn fit(stacks: &mut Stacks) {
    let size = |s: &Stacks| protocol::encode(&AgentMessage::Stacks { id: u64::MAX, stacks: s.clone() }).len();
    while size(stacks) > MAX_AGENT_MESSAGE {
        if let Some(dump) = stacks.tasks.as_mut().filter(|d| !d.groups.is_empty()) {
            let keep = dump.groups.len() / 2;
            let dropped: u64 = dump.groups.drain(keep..).map(|g| g.count).sum();
            dump.omitted += dropped;
            dump.note = Some(format!("the answer was over the {MAX_AGENT_MESSAGE}-byte message limit"));
        } else if let Some(t) = stacks.threads.iter_mut().find(|t| t.frames.len() > 16) {
            t.frames.truncate(16);
            t.note = Some("frames past the 16th left out to fit the message limit".into());
        } else {
            let keep = stacks.threads.len() / 2;
            stacks.threads.truncate(keep);
            if keep == 0 {
                return;
            }
        }
    }
}

/// What the agent can do whatever the server does. What depends on the server (hooks
/// on its runtimes, the watchdog) is not claimed here: snapshots report it as facts.
fn capabilities() -> Vec<String> {
    let mut caps = vec!["snapshot".to_owned(), "epoch".to_owned(), "stacks".to_owned()];
    if crate::recorder::capacity() > 0 {
        caps.push("recorder".to_owned());
    }
    if cfg!(tokio_unstable) {
        caps.push("tokio-unstable".to_owned());
    }
    caps
}

/// Connects to the runner's socket, again if a signal interrupts the connect (EINTR).
fn connect(path: &std::ffi::OsStr) -> std::io::Result<UnixStream> {
    loop {
        match UnixStream::connect(path) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Connects to the runner, says hello, then answers requests and forwards events until
/// the runner goes away.
fn serve(agent: &'static Agent, path: &std::ffi::OsStr, events: Receiver<AgentMessage>) -> Result<(), ProtocolError> {
    let stream = connect(path)?;
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let hello = Hello {
        pid: std::process::id(),
        protocol: VERSION,
        runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
        capabilities: capabilities(),
        announced: agent.registry.announced(),
    };
    protocol::write_message(&mut writer, &AgentMessage::Hello(hello))?;
    stacks::warm_up();

    let mut buf = Vec::new();
    loop {
        while let Ok(event) = events.try_recv() {
            protocol::write_message(&mut writer, &event)?;
        }
        for stall in agent.stalls() {
            protocol::write_message(&mut writer, &AgentMessage::Stall(stall))?;
        }
        for ended in agent.watchdog.ended() {
            let end = StallEnd { seq: ended.seq, total_ms: ended.total_ms };
            protocol::write_message(&mut writer, &AgentMessage::StallEnd(end))?;
        }
        match protocol::read_message::<_, RunnerMessage>(&mut reader, &mut buf, MAX_RUNNER_MESSAGE) {
            Ok(request) => protocol::write_message(&mut writer, &agent.answer(request))?,
            Err(ProtocolError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(ProtocolError::Closed) => return Ok(()),
            Err(e @ ProtocolError::Io(_)) => return Err(e),
            Err(e @ ProtocolError::Version { .. }) => {
                // Say why, then stop: a runner of another version cannot be answered.
                let message = e.to_string();
                protocol::write_message(&mut writer, &AgentMessage::Error { id: None, message })?;
                return Err(e);
            }
            Err(e) => {
                let message = e.to_string();
                protocol::write_message(&mut writer, &AgentMessage::Error { id: None, message })?;
            }
        }
    }
}
