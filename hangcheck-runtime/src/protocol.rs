//! The wire protocol between the runner (`cargo hangcheck`) and the agent inside the
//! server (this crate). Defined once, here, and used by both sides: the runner depends
//! on this crate with default features off, which leaves only this module.
//!
//! # Transport
//!
//! The runner creates a private directory (mode 0700), listens on a unix stream socket
//! inside it and hands the path to the server in [`SOCKET_ENV`]. The agent thread in the
//! server connects out and sends [`AgentMessage::Hello`]; hello is the readiness signal.
//!
//! Every message is one line of JSON (newline-delimited), an object with `"v"` (the
//! protocol version, [`VERSION`]) and `"type"`. A message over the size limit of its
//! direction ([`MAX_AGENT_MESSAGE`], [`MAX_RUNNER_MESSAGE`]), malformed JSON, an unknown
//! type or another version is a typed [`ProtocolError`], never a panic.
//!
//! # Messages, runner to agent ([`RunnerMessage`])
//!
//! | `type`     | fields          | answer                                   |
//! |------------|-----------------|------------------------------------------|
//! | `snapshot` | `id`            | [`AgentMessage::Snapshot`] with that `id` |
//! | `epoch`    | `id`, `epoch`   | [`AgentMessage::Ack`]: tasks born from now on belong to `epoch` |
//! | `stacks`   | `id`            | [`AgentMessage::Stacks`]: every thread's stack |
//! | `recorded` | `id`            | [`AgentMessage::Recorded`]: the flight recorder's events |
//!
//! # Messages, agent to runner ([`AgentMessage`])
//!
//! | `type`     | when                                                          |
//! |------------|---------------------------------------------------------------|
//! | `hello`    | first, once: pid, versions, capabilities, addresses so far     |
//! | `announce` | whenever the server calls `announce(name, addr)` after hello   |
//! | `snapshot` | the answer to a `snapshot` request                             |
//! | `stacks`   | the answer to a `stacks` request                               |
//! | `recorded` | the answer to a `recorded` request                            |
//! | `stall`    | at once, when a worker is stuck in one poll past the threshold |
//! | `stall_end`| when a reported stall's poll ends: its total length            |
//! | `ack`      | the answer to a request that returns nothing                   |
//! | `error`    | a request the agent could not parse or answer; `id` if known   |
//!
//! # Trials: a hangcheck harness and the runner
//!
//! A test target built on `hangcheck_runtime::harness` runs all its trials in one
//! process. So that every verdict is still per trial, the harness tells the runner where
//! each trial starts and ends, on a second socket of its own: the runner listens in a
//! private directory, as for the agent, and hands the path to the harness process in
//! [`HARNESS_SOCKET_ENV`]. Same framing, limits and version as above.
//!
//! The runner finds out that a target is a hangcheck harness while listing it: it runs
//! `--list --format terse` with [`HARNESS_PROBE_ENV`] set, and a harness answers with the
//! line [`HARNESS_MARKER`] before its trials, listed as libtest lists tests: all of them,
//! or with `--ignored` only the ignored ones, the marker line then ending in
//! [`HARNESS_IGNORED_LISTING`]. A harness of an older runtime lists only the trials it
//! would run, whatever the flag, and its marker line does not end so: the runner then
//! takes no trial for ignored. A libtest binary ignores the variable, so its listing has
//! no such line.
//!
//! | direction        | `type`  | fields            | meaning                                   |
//! |------------------|---------|-------------------|-------------------------------------------|
//! | harness → runner | `hello` | `pid`             | first, once ([`TrialMessage::Hello`])     |
//! | runner → harness | `plan`  | `trials`          | the trials to run, in order ([`TrialReply::Plan`]) |
//! | harness → runner | `start` | `name`            | about to run a trial; waits for `go`      |
//! | runner → harness | `go`    | `name`            | the new epoch is set: run it              |
//! | harness → runner | `end`   | `name`, `outcome` | the trial is over                         |
//!
//! The harness waits for `go` before each trial, so the runner settles and snapshots
//! after one trial, and starts the next epoch, while the harness is idle: the same steps
//! as between two test processes. A trial past its timeout is a hang: the runner takes
//! the server's evidence, stops the harness process, and starts it again with a plan of
//! the trials not yet run.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// The protocol version carried by every message. A peer that sees another version
/// answers with [`ProtocolError::Version`] and stops talking.
pub const VERSION: u32 = 1;

/// The environment variable that carries the socket path from the runner to the server.
/// Without it the runtime stays inert.
pub const SOCKET_ENV: &str = "HANGCHECK_SOCKET";

/// The prefix of the environment variables that carry announced addresses to each test:
/// `announce("http", addr)` reaches the tests as `HANGCHECK_ADDR_HTTP`.
pub const ADDR_ENV_PREFIX: &str = "HANGCHECK_ADDR_";

/// The largest message the agent may send (a snapshot of many groups, or stacks).
pub const MAX_AGENT_MESSAGE: usize = 16 * 1024 * 1024;

/// The largest message the runner may send; its requests are small.
pub const MAX_RUNNER_MESSAGE: usize = 64 * 1024;

/// A request from the runner to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunnerMessage {
    /// Ask for a [`Snapshot`] of everything the server holds now.
    Snapshot {
        /// Echoed in the answer.
        id: u64,
    },
    /// Start a new epoch: tasks and operations born from now on belong to it. The runner
    /// advances the epoch at every test boundary, so epoch `n` is the `n`-th test.
    Epoch {
        /// Echoed in the answer.
        id: u64,
        /// The new epoch; epochs only grow.
        epoch: u64,
    },
    /// Ask for the stack of every thread of the process, and its async task stacks
    /// within `budget`.
    Stacks {
        /// Echoed in the answer.
        id: u64,
        /// What the async task stacks may cost; [`StacksBudget::DEFAULT`] when absent
        /// (a runner of before budgets).
        #[serde(default)]
        budget: Option<StacksBudget>,
    },
    /// Ask for the flight recorder's events. An agent older than this request answers
    /// with [`AgentMessage::Error`].
    Recorded {
        /// Echoed in the answer.
        id: u64,
    },
}

/// A message from the agent to the runner: an answer (carrying the request's `id`) or an
/// event (carrying none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentMessage {
    /// The first message on a connection.
    Hello(Hello),
    /// The server announced an address after hello.
    Announce(Announcement),
    /// The answer to [`RunnerMessage::Snapshot`].
    Snapshot {
        /// The request's id.
        id: u64,
        /// What the server holds.
        snapshot: Snapshot,
    },
    /// The answer to [`RunnerMessage::Stacks`].
    Stacks {
        /// The request's id.
        id: u64,
        /// Every thread's stack.
        stacks: Stacks,
    },
    /// The answer to [`RunnerMessage::Recorded`].
    Recorded {
        /// The request's id.
        id: u64,
        /// The events in the ring, oldest first.
        recorded: Recorded,
    },
    /// A worker has been stuck inside one poll for longer than the stall threshold; sent
    /// the moment it is seen, with the stack taken while it was still stuck.
    Stall(Stall),
    /// A stall reported before is over; its total length.
    StallEnd(StallEnd),
    /// The answer to a request that returns nothing.
    Ack {
        /// The request's id.
        id: u64,
    },
    /// A request the agent could not parse or answer.
    Error {
        /// The request's id, when it could be read.
        id: Option<u64>,
        /// What went wrong, in one line.
        message: String,
    },
}

/// What the agent says first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The server's process id.
    pub pid: u32,
    /// The protocol version the agent speaks (equal to `v`; kept for readers of logs).
    pub protocol: u32,
    /// The version of `hangcheck-runtime` linked into the server.
    pub runtime_version: String,
    /// What this agent can do, e.g. `"task-hooks"` when built with `tokio_unstable`.
    pub capabilities: Vec<String>,
    /// Addresses announced before the connection was up.
    pub announced: Vec<Announcement>,
}

/// An address the server listens on, for the tests to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// A short name such as `"http"`; tests see it as `HANGCHECK_ADDR_HTTP`.
    pub name: String,
    /// The address as the server formatted it, e.g. `127.0.0.1:40123`.
    pub addr: String,
}

impl Announcement {
    /// The environment variable a test reads this address from.
    ///
    /// ```
    /// use hangcheck_runtime::protocol::Announcement;
    /// let a = Announcement { name: "http-admin".into(), addr: "127.0.0.1:1".into() };
    /// assert_eq!(a.env_var(), "HANGCHECK_ADDR_HTTP_ADMIN");
    /// ```
    pub fn env_var(&self) -> String {
        let name: String =
            self.name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        format!("{ADDR_ENV_PREFIX}{name}")
    }

    /// Why this announcement cannot reach a test's environment, if it cannot: an empty
    /// or overlong name or address, or a NUL byte (no environment can hold one).
    ///
    /// ```
    /// use hangcheck_runtime::protocol::Announcement;
    /// assert!(Announcement { name: "http".into(), addr: "127.0.0.1:1".into() }.check().is_ok());
    /// assert!(Announcement { name: "http".into(), addr: "127.0.0.1:1\0".into() }.check().is_err());
    /// ```
    pub fn check(&self) -> Result<(), String> {
        let bad = |what: &str, value: &str, limit: usize| {
            if value.is_empty() {
                Some(format!("the {what} is empty"))
            } else if value.len() > limit {
                Some(format!("the {what} is over {limit} bytes"))
            } else if value.contains('\0') {
                Some(format!("the {what} holds a NUL byte ({value:?})"))
            } else {
                None
            }
        };
        match bad("name", &self.name, 128).or_else(|| bad("address", &self.addr, 1024)) {
            Some(why) => Err(format!("announcement {:?}: {why}", self.name)),
            None => Ok(()),
        }
    }
}

/// Everything the server holds at one moment: metadata only (names, counts, ages,
/// locations), never payloads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The epoch in force when the snapshot was taken.
    pub epoch: u64,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// Task groups, sorted by key.
    pub groups: Vec<GroupStats>,
    /// Monotonic counters by name.
    pub counters: BTreeMap<String, u64>,
    /// Gauges by name.
    pub gauges: BTreeMap<String, i64>,
    /// tokio's stable runtime metrics, when the agent knows the runtime.
    pub runtime: Option<RuntimeStats>,
    /// What the kernel says about the process.
    pub process: ProcessFacts,
    /// Stalls detected since the server started.
    #[serde(default)]
    pub stalls: u64,
    /// Operations by kind.
    #[serde(default)]
    pub ops: Vec<OpStats>,
    /// Every tokio runtime built through `hangcheck_runtime::main` or `instrument`, in
    /// the order they were built. Empty: nothing of the server is watched.
    #[serde(default)]
    pub runtimes: Vec<RuntimeInfo>,
    /// tokio runtimes the server used (it spawned or announced from inside them) that
    /// were not built through hangcheck: their tasks and stalls are not seen.
    #[serde(default)]
    pub uninstrumented_runtimes: u64,
    /// Polls started by every watched worker since the server started (worker wake-ups
    /// on `--stable`): how the runner tells that a test made the server work.
    #[serde(default)]
    pub worker_activity: u64,
    /// What was folded to keep the snapshot within its caps (see [`Snapshot::fold`]).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The most task groups, counters or gauges a snapshot carries one by one; the rest are
/// folded into one entry named [`OTHER`]. A server with more names than this almost
/// always builds them from data (a name per user or per key), which hangcheck is not for.
pub const SNAPSHOT_CAP: usize = 1000;

/// The name of the entry that holds what a snapshot's caps folded.
pub const OTHER: &str = "(other)";

impl Snapshot {
    /// Keeps at most [`SNAPSHOT_CAP`] task groups (those with the most live tasks),
    /// counters and gauges (those with the largest values); the rest are summed into one
    /// [`OTHER`] entry each, and a note says how many were folded. Bounds the size of
    /// every message, report and table built from a snapshot.
    ///
    /// ```
    /// use hangcheck_runtime::protocol::{Snapshot, SNAPSHOT_CAP, OTHER};
    /// let mut s = Snapshot::default();
    /// s.counters = (0..SNAPSHOT_CAP as u64 + 10).map(|i| (format!("c{i}"), i)).collect();
    /// s.fold();
    /// assert_eq!(s.counters.len(), SNAPSHOT_CAP + 1);
    /// assert_eq!(s.counters[OTHER], (0..10).sum::<u64>()); // the ten smallest
    /// assert_eq!(s.notes.len(), 1);
    /// ```
    pub fn fold(&mut self) {
        if self.groups.len() > SNAPSHOT_CAP {
            let folded = self.groups.len() - SNAPSHOT_CAP;
            self.groups.sort_by(|a, b| b.live.cmp(&a.live).then_with(|| a.key.cmp(&b.key)));
            let rest: Vec<GroupStats> = self.groups.split_off(SNAPSHOT_CAP);
            let mut other = GroupStats {
                key: OTHER.to_owned(),
                kind: GroupKind::Location,
                location: None,
                live: 0,
                spawned: 0,
                finished: 0,
                polls: 0,
                busy_ms: 0,
                oldest_age_ms: None,
                live_by_epoch: Vec::new(),
            };
            let mut by_epoch: BTreeMap<u64, u64> = BTreeMap::new();
            for g in rest {
                other.live += g.live;
                other.spawned += g.spawned;
                other.finished += g.finished;
                other.polls += g.polls;
                other.busy_ms += g.busy_ms;
                other.oldest_age_ms = other.oldest_age_ms.max(g.oldest_age_ms);
                for e in g.live_by_epoch {
                    *by_epoch.entry(e.epoch).or_default() += e.count;
                }
            }
            other.live_by_epoch = by_epoch.into_iter().map(|(epoch, count)| EpochCount { epoch, count }).collect();
            self.groups.push(other);
            self.groups.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
            self.notes.push(format!(
                "{folded} task groups past the cap of {SNAPSHOT_CAP} (those with the fewest live tasks) are folded into {OTHER}"
            ));
        }
        if let Some(n) = fold_map(&mut self.counters, |a, b| a.saturating_add(b)) {
            self.notes.push(format!("{n} counters past the cap of {SNAPSHOT_CAP} are summed into {OTHER}"));
        }
        if let Some(n) = fold_map(&mut self.gauges, |a, b| a.saturating_add(b)) {
            self.notes.push(format!("{n} gauges past the cap of {SNAPSHOT_CAP} are summed into {OTHER}"));
        }
    }
}

/// Keeps the [`SNAPSHOT_CAP`] largest values of `map` and sums the rest into [`OTHER`];
/// returns how many were folded, if any.
fn fold_map<V: Copy + Ord + Default>(map: &mut BTreeMap<String, V>, add: impl Fn(V, V) -> V) -> Option<usize> {
    if map.len() <= SNAPSHOT_CAP {
        return None;
    }
    let mut entries: Vec<(String, V)> = std::mem::take(map).into_iter().collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest = entries.split_off(SNAPSHOT_CAP);
    let folded = rest.len();
    let sum = rest.into_iter().fold(V::default(), |acc, (_, v)| add(acc, v));
    *map = entries.into_iter().collect();
    let other = map.entry(OTHER.to_owned()).or_default();
    *other = add(*other, sum);
    Some(folded)
}

/// One tokio runtime built through hangcheck: what is installed, what has run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// `instrument_named`'s label, else the name of the thread that built it.
    pub name: String,
    /// The hooks installed on its builder: `task-spawn`, `task-poll`, `thread-park`,
    /// `thread-start`.
    pub hooks: Vec<String>,
    /// The installed hooks tokio has called at least once: a hook that never fired was
    /// replaced (a hook set after `instrument`) or its runtime never ran.
    pub fired: Vec<String>,
    /// Its stable metrics, once the agent knows its handle.
    pub stats: Option<RuntimeStats>,
    /// Threads it started (workers and blocking pool) that are still alive.
    pub threads: u64,
    /// Of those, blocking-pool threads (tokio keeps an idle one for 10 s).
    pub blocking_threads: u64,
    /// Of those, idle ones (known with `tokio_unstable`; `None` otherwise).
    pub idle_blocking_threads: Option<u64>,
}

/// The operations of one kind (`hangcheck_runtime::op(kind, key)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    /// The kind, e.g. `"stream"`.
    pub kind: String,
    /// Operations in flight now.
    pub in_flight: u64,
    /// Operations started since the server started.
    pub started: u64,
    /// Operations finished.
    pub finished: u64,
    /// Age of the oldest in flight, in milliseconds.
    pub oldest_age_ms: Option<u64>,
    /// In-flight operations by the epoch they began in.
    pub live_by_epoch: Vec<EpochCount>,
    /// In flight and past their `warn_after` budget.
    pub slow_in_flight: u64,
    /// Finished after their budget had passed.
    pub slow_finished: u64,
    /// How many times an operation started while another with its key was in flight.
    pub overlap_events: u64,
    /// The keys whose operations overlapped for longer than the grace, or still overlap
    /// past it (at most 64 per kind).
    pub overlaps: Vec<Overlap>,
    /// Overlaps that closed within the grace: a new operation took over from the old.
    #[serde(default)]
    pub handovers: u64,
    /// The longest of those, in milliseconds.
    #[serde(default)]
    pub longest_handover_ms: u64,
    /// The grace the agent judged overlaps by, in milliseconds.
    #[serde(default)]
    pub overlap_grace_ms: u64,
}

/// Operations of one key that were in flight at the same time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlap {
    /// The key, hashed (`#` and 16 hex digits) unless the server opted out.
    pub key: String,
    /// The most in flight at once.
    pub max_in_flight: u64,
    /// The epochs (tests) in which an overlap began.
    pub epochs: Vec<u64>,
    /// The longest closed overlap, in milliseconds (0: none closed yet).
    #[serde(default)]
    pub longest_ms: u64,
    /// How long the overlap still open has lasted so far; `None`: none open.
    #[serde(default)]
    pub open_ms: Option<u64>,
}

/// How a task group got its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// Spawned with `hangcheck_runtime::spawn(name, ...)`: keyed by that name.
    Named,
    /// Seen through tokio's task hooks: keyed by spawn location.
    Location,
}

/// One task group: the tasks spawned under one name or at one location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStats {
    /// The group's key: the name given to `spawn`, or `file:line` of the spawn.
    pub key: String,
    /// How the key was made.
    pub kind: GroupKind,
    /// Where the group's tasks were spawned (`file:line`), when known. For a named group
    /// it is the first call site of `spawn` seen for that name.
    pub location: Option<String>,
    /// Tasks alive now.
    pub live: u64,
    /// Tasks spawned since the server started.
    pub spawned: u64,
    /// Tasks that finished (completed, were cancelled, or panicked).
    pub finished: u64,
    /// Polls of the group's tasks (with tokio's poll hooks; 0 without).
    #[serde(default)]
    pub polls: u64,
    /// Time the group's tasks spent inside polls, in milliseconds (with poll hooks).
    #[serde(default)]
    pub busy_ms: u64,
    /// Age of the oldest live task, in milliseconds.
    pub oldest_age_ms: Option<u64>,
    /// Live tasks by the epoch they were born in, ascending by epoch; epochs with no
    /// survivors are left out.
    pub live_by_epoch: Vec<EpochCount>,
}

/// How many live things were born in one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochCount {
    /// The epoch.
    pub epoch: u64,
    /// How many are alive.
    pub count: u64,
}

/// tokio's stable runtime metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeStats {
    /// Worker threads.
    pub workers: u64,
    /// Tasks alive in the runtime, whoever spawned them.
    pub alive_tasks: u64,
    /// Tasks waiting in the global queue.
    pub global_queue_depth: u64,
}

/// Process facts read from `/proc/self`. Zero where the platform has no `/proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFacts {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Threads of the server (hangcheck's own threads left out).
    pub threads: u64,
    /// User plus system CPU time, in milliseconds.
    pub cpu_ms: u64,
    /// Open file descriptors by kind.
    pub fds: FdCounts,
}

/// Open file descriptors by what they point at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdCounts {
    /// Sockets.
    pub socket: u64,
    /// Regular files and directories.
    pub file: u64,
    /// Pipes.
    pub pipe: u64,
    /// Everything else (eventfd, epoll, timerfd, devices, ...).
    pub other: u64,
}

impl FdCounts {
    /// All open descriptors.
    pub fn total(&self) -> u64 {
        self.socket + self.file + self.pipe + self.other
    }
}

/// The environment variable that turns on per-group poll counts and busy time (`1`).
pub const POLL_STATS_ENV: &str = "HANGCHECK_POLL_STATS";

/// SplitMix64, the generator behind `--shuffle` (runner) and `--chaos` (agent): fixed
/// here, so a seed means the same order and the same draws in every version.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The environment variable that carries `--chaos`'s seed to the agent: delays and
/// yields at poll boundaries, and tokio's RNG seeded from it.
pub const CHAOS_ENV: &str = "HANGCHECK_CHAOS";

/// The environment variable that carries the overlap grace, in milliseconds, from the
/// runner to the agent: operations of one key in flight together for longer are a
/// finding, shorter ones a handover.
pub const OVERLAP_GRACE_ENV: &str = "HANGCHECK_OVERLAP_GRACE_MS";

/// The environment variable that carries the stall threshold, in milliseconds, from the
/// runner to the agent.
pub const STALL_THRESHOLD_ENV: &str = "HANGCHECK_STALL_THRESHOLD_MS";

/// Where a set of stacks came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StackSource {
    /// The agent thread inside the server, by signalling each thread.
    Agent,
    /// A debugger attached from outside (the runner is the server's parent).
    Gdb,
    /// Nobody could take them: the agent did not answer and the debugger failed. Only the
    /// runner says this, in its reports; an agent never sends it.
    #[serde(rename = "none")]
    Unavailable,
}

impl std::fmt::Display for StackSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StackSource::Agent => "agent",
            StackSource::Gdb => "gdb",
            StackSource::Unavailable => "none",
        })
    }
}

/// The stacks of every thread of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stacks {
    /// Who took them.
    pub source: StackSource,
    /// How long taking (and symbolising) them took, in milliseconds.
    pub took_ms: u64,
    /// One entry per thread.
    pub threads: Vec<ThreadStack>,
    /// Async task stacks from tokio's task dump, or why there are none.
    #[serde(default)]
    pub tasks: Option<TaskDump>,
}

/// What a stacks answer may cost, sent by the runner with each request: the one place
/// that sets both the agent's deadline and the runner's wait for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StacksBudget {
    /// How long the task dump and the grouping of its traces may take, in milliseconds.
    pub deadline_ms: u64,
    /// How many bytes of distinct async traces the answer may carry; tasks beyond it are
    /// counted, not shown.
    pub max_bytes: u64,
}

impl StacksBudget {
    /// The budget of every request the runner sends: 2 s and 1 MiB of traces.
    pub const DEFAULT: StacksBudget = StacksBudget { deadline_ms: 2_000, max_bytes: 1024 * 1024 };

    /// How long the runner waits for the answer: the budget, plus the thread stacks
    /// (each thread gets at most 250 ms; symbolising the first time can take seconds),
    /// plus sending it.
    pub fn runner_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.deadline_ms) + std::time::Duration::from_secs(4)
    }
}

/// tokio's task dump: where each task is parked, tasks with identical traces grouped
/// (as Go's goroutine dump does with `debug=1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDump {
    /// One entry per task: what agents of before grouping send; empty from newer ones.
    pub tasks: Vec<AsyncTask>,
    /// Tasks grouped by identical (group, spawn location, trace), most tasks first.
    #[serde(default)]
    pub groups: Vec<AsyncTaskGroup>,
    /// Tasks counted but not shown: past the size or time budget.
    #[serde(default)]
    pub omitted: u64,
    /// Why some tasks were omitted, when some were.
    #[serde(default)]
    pub note: Option<String>,
    /// Why the dump was not taken, when it was not.
    pub skipped: Option<String>,
    /// How long the dump took, in milliseconds.
    pub took_ms: u64,
    /// Runtimes whose tasks are not in the dump, each with why (a blocked current-thread
    /// runtime, a multi-thread one with a stuck worker), when others' are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes_skipped: Vec<String>,
}

/// Tasks with one identical async trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncTaskGroup {
    /// How many tasks have this trace.
    pub count: u64,
    /// Their group key, when known.
    pub group: Option<String>,
    /// Where they were spawned, when known.
    pub location: Option<String>,
    /// The ids of the first few of them.
    pub ids: Vec<u64>,
    /// The await tree, as tokio renders it.
    pub trace: String,
}

/// One task of a task dump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncTask {
    /// tokio's task id.
    pub id: u64,
    /// Its group key, when known.
    pub group: Option<String>,
    /// Where it was spawned, when known.
    pub location: Option<String>,
    /// The await tree, as tokio renders it.
    pub trace: String,
}

/// One thread's stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadStack {
    /// The kernel's thread id.
    pub tid: u32,
    /// The thread's name (`/proc/<pid>/task/<tid>/comm`).
    pub name: String,
    /// The kernel's state letter: R running, S sleeping, D uninterruptible, T stopped...
    pub state: String,
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Why the stack is missing or partial, when it is.
    pub note: Option<String>,
}

/// One frame of a stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The function, demangled, when symbols are available.
    pub function: Option<String>,
    /// The source file, when debug info is available.
    pub file: Option<String>,
    /// The source line.
    pub line: Option<u32>,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.function.as_deref().unwrap_or("??"))?;
        if let Some(file) = &self.file {
            write!(f, "\n             at {file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
        }
        Ok(())
    }
}

/// A worker stuck inside one poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    /// The worker thread's id.
    pub tid: u32,
    /// The worker thread's name.
    pub thread: String,
    /// How long it had been stuck when the stack was taken, in milliseconds.
    pub stuck_ms: u64,
    /// The threshold it passed.
    pub threshold_ms: u64,
    /// The epoch (test) in force when it was seen.
    pub epoch: u64,
    /// The task being polled, when tokio's poll hooks are available.
    pub task: Option<StalledTask>,
    /// The worker's stack, taken while it was stuck.
    pub stack: ThreadStack,
    /// The flight recorder's events up to the moment it was caught (absent from an
    /// agent that does not record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Recorded>,
    /// Which stall of the process this is (1, 2, ...); a [`StallEnd`] names it.
    #[serde(default)]
    pub seq: u64,
}

/// A reported stall is over: the poll ended. Sent when the agent sees it end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StallEnd {
    /// The [`Stall::seq`] it ends.
    pub seq: u64,
    /// How long the worker was stuck in that one poll, in all, in milliseconds.
    pub total_ms: u64,
}

/// The task a stalled worker was polling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StalledTask {
    /// tokio's task id.
    pub id: u64,
    /// Its group key (name or location), when known.
    pub group: Option<String>,
    /// Where it was spawned, when known.
    pub location: Option<String>,
}

/// The environment variable that sets the flight recorder's size in events (`0` turns it
/// off); `recorder-events` in the runner's config.
pub const RECORDER_EVENTS_ENV: &str = "HANGCHECK_RECORDER_EVENTS";

/// The flight recorder's size when nobody says: 4096 events of 40 bytes (160 KiB), a few
/// seconds of a busy server's spawns and operations; docs/performance.md measures its
/// cost.
pub const RECORDER_DEFAULT_EVENTS: usize = 4096;

/// The flight recorder's ring, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// Slots in the ring (0: the recorder is off).
    pub capacity: u64,
    /// Events recorded since the server started; those beyond `capacity` were overwritten.
    pub recorded: u64,
    /// The recorder's clock when the ring was read, in microseconds since it started.
    pub now_us: u64,
    /// What is left in the ring, oldest first.
    pub events: Vec<RecordedEvent>,
}

/// What a recorded event is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordedKind {
    /// A task was spawned.
    #[default]
    TaskSpawn,
    /// A task ended (completed, cancelled or panicked).
    TaskEnd,
    /// An operation started (`hangcheck_runtime::op`).
    OpStart,
    /// An operation ended.
    OpEnd,
    /// A worker was caught stuck in one poll.
    Stall,
    /// A counter changed; `value` is its new total.
    Counter,
    /// A gauge changed; `value` is its new value.
    Gauge,
}

/// One event of the flight recorder: metadata only, never a payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// When, in microseconds since the recorder started (a coarse monotonic clock: its
    /// resolution is the kernel tick).
    pub at_us: u64,
    /// What happened.
    pub event: RecordedKind,
    /// The task: spawned or ended, that ran the operation, or that was being polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<u64>,
    /// The task's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where the group's tasks are spawned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The epoch a spawned task was born in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The operation kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The operation's key, hashed (`#` and 16 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The counter or gauge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its value after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// The stalled worker's thread id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
}

/// The environment variable that carries the runner's trial socket to a hangcheck
/// harness; without it the harness runs on its own (plain `cargo test`).
pub const HARNESS_SOCKET_ENV: &str = "HANGCHECK_HARNESS_SOCKET";

/// Set (to `1`) while the runner lists a test target, to find out whether it is a
/// hangcheck harness.
pub const HARNESS_PROBE_ENV: &str = "HANGCHECK_HARNESS_PROBE";

/// The first line of a hangcheck harness's listing under [`HARNESS_PROBE_ENV`]; the
/// number after it is [`VERSION`].
pub const HARNESS_MARKER: &str = "hangcheck-harness";

/// The last word of the [`HARNESS_MARKER`] line of a listing under `--ignored` from a
/// harness that lists only its ignored trials there (see the [module docs](self)).
pub const HARNESS_IGNORED_LISTING: &str = "ignored-only";

/// A message from a hangcheck harness to the runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TrialMessage {
    /// The first message on a connection.
    Hello {
        /// The harness process's id.
        pid: u32,
    },
    /// The harness is about to run this trial and waits for [`TrialReply::Go`].
    Start {
        /// The trial's name, as listed.
        name: String,
    },
    /// The trial is over.
    End {
        /// The trial's name.
        name: String,
        /// How it ended.
        outcome: TrialOutcome,
    },
}

/// How a trial ended, as the harness saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TrialOutcome {
    /// It returned `Ok(())`.
    Passed,
    /// It returned an error or panicked; the message is in the harness's output.
    Failed,
    /// It was ignored (`Trial::with_ignored_flag`) or ignored itself at run time.
    Ignored,
}

/// A message from the runner to a hangcheck harness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TrialReply {
    /// The trials to run, in this order; the answer to [`TrialMessage::Hello`].
    Plan {
        /// Trial names, as listed.
        trials: Vec<String>,
    },
    /// Run the trial now; the answer to [`TrialMessage::Start`].
    Go {
        /// The trial's name.
        name: String,
    },
}

/// The largest message either side of the trial socket may send.
pub const MAX_TRIAL_MESSAGE: usize = 1024 * 1024;

/// What can go wrong reading or writing a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// A line longer than the limit; the rest of it was not read.
    #[error("message over the size limit of {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message of another protocol version.
    #[error("protocol version {found} is not supported (this side speaks {VERSION})")]
    Version {
        /// The version the peer sent, 0 when it sent none.
        found: u64,
    },
    /// Reading or writing the socket failed.
    #[error("i/o error on the agent socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a message as one line: `{"v":1,"type":...}\n`.
///
/// ```
/// use hangcheck_runtime::protocol::{decode, encode, RunnerMessage, MAX_RUNNER_MESSAGE};
/// let line = encode(&RunnerMessage::Snapshot { id: 7 });
/// assert!(line.starts_with(b"{\"v\":1,"));
/// let back: RunnerMessage = decode(&line, MAX_RUNNER_MESSAGE).unwrap();
/// assert_eq!(back, RunnerMessage::Snapshot { id: 7 });
/// ```
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Every message is a JSON object with at least `type`; the version is spliced in
    // front so that a log reader sees it first. Serialising our own plain data types
    // cannot fail; should it ever, the peer gets an error message rather than a panic.
    let body = serde_json::to_vec(msg).unwrap_or_else(|e| {
        serde_json::to_vec(&serde_json::json!({"type": "error", "id": null, "message": format!("encode: {e}")}))
            .unwrap_or_default()
    });
    let mut line = format!("{{\"v\":{VERSION}").into_bytes();
    match body.get(1..) {
        Some(b"}") | None => line.push(b'}'),
        Some(rest) => {
            line.push(b',');
            line.extend_from_slice(rest);
        }
    }
    line.push(b'\n');
    line
}

/// Decodes one line (with or without its newline), checking size and version first.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8], limit: usize) -> Result<T, ProtocolError> {
    if line.len() > limit + 1 {
        return Err(ProtocolError::TooLarge { limit });
    }
    // The version first, from a pass that keeps nothing else; then the message itself,
    // straight into its type (never through a `serde_json::Value`, which would hold a
    // second, several times larger, copy of a big message).
    #[derive(Deserialize)]
    struct Versioned {
        v: Option<serde_json::Value>,
    }
    let versioned: Versioned = serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let found = versioned.v.as_ref().and_then(serde_json::Value::as_u64).unwrap_or(0);
    if found != u64::from(VERSION) {
        return Err(ProtocolError::Version { found });
    }
    serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Reads one line of at most `limit` bytes into `buf` (cleared first) without ever
/// buffering more than the limit, so an endless line cannot exhaust memory.
///
/// On a timeout (`WouldBlock` / `TimedOut`) the bytes read so far stay in `buf` and the
/// call can be repeated with the same `buf` to finish the line; `buf` is only cleared
/// once a line has been handed back, by [`read_message`].
pub fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            // A stop and continue (SIGSTOP/SIGCONT, a debugger attaching) or any signal
            // interrupts a socket read that has a timeout, even under SA_RESTART: nothing
            // was lost, so read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if available.is_empty() {
            return Err(ProtocolError::Closed);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > limit + 1 {
            reader.consume(take);
            return Err(ProtocolError::TooLarge { limit });
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(());
        }
    }
}

/// Reads and decodes one message. `buf` carries a partial line across timeouts; it is
/// empty again after a message (or a decoding error) is returned.
pub fn read_message<R: BufRead, T: for<'de> Deserialize<'de>>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<T, ProtocolError> {
    match read_line(reader, buf, limit) {
        Ok(()) => {
            let result = decode(buf, limit);
            buf.clear();
            result
        }
        Err(ProtocolError::TooLarge { limit }) => {
            buf.clear();
            Err(ProtocolError::TooLarge { limit })
        }
        Err(e) => Err(e),
    }
}

/// Writes one message and flushes it. `write_all` already retries a write interrupted by
/// a signal (EINTR), so a stopped-and-continued peer loses nothing here either.
pub fn write_message<W: Write, T: Serialize>(writer: &mut W, msg: &T) -> Result<(), ProtocolError> {
    writer.write_all(&encode(msg))?;
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn round_trip_every_agent_message() {
        let msgs = vec![
            AgentMessage::Hello(Hello {
                pid: 42,
                protocol: VERSION,
                runtime_version: "0.1.0".into(),
                capabilities: vec!["task-hooks".into()],
                announced: vec![Announcement { name: "http".into(), addr: "127.0.0.1:1".into() }],
            }),
            AgentMessage::Announce(Announcement { name: "x".into(), addr: "y".into() }),
            AgentMessage::Snapshot { id: 3, snapshot: Snapshot::default() },
            AgentMessage::Ack { id: 4 },
            AgentMessage::Error { id: None, message: "no".into() },
        ];
        for msg in msgs {
            let line = encode(&msg);
            assert_eq!(*line.last().unwrap(), b'\n');
            let back: AgentMessage = decode(&line, MAX_AGENT_MESSAGE).unwrap();
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn round_trip_every_trial_message() {
        let msgs = vec![
            TrialMessage::Hello { pid: 7 },
            TrialMessage::Start { name: "ping".into() },
            TrialMessage::End { name: "ping".into(), outcome: TrialOutcome::Failed },
        ];
        for msg in msgs {
            let back: TrialMessage = decode(&encode(&msg), MAX_TRIAL_MESSAGE).unwrap();
            assert_eq!(back, msg);
        }
        for reply in [TrialReply::Plan { trials: vec!["a".into(), "b".into()] }, TrialReply::Go { name: "a".into() }] {
            let back: TrialReply = decode(&encode(&reply), MAX_TRIAL_MESSAGE).unwrap();
            assert_eq!(back, reply);
        }
        let line = encode(&TrialMessage::End { name: "x".into(), outcome: TrialOutcome::Passed });
        assert_eq!(line, b"{\"v\":1,\"type\":\"end\",\"name\":\"x\",\"outcome\":{\"status\":\"passed\"}}\n");
    }

    #[test]
    fn other_version_is_a_typed_error() {
        let err = decode::<RunnerMessage>(br#"{"v":2,"type":"snapshot","id":1}"#, 1024).unwrap_err();
        assert!(matches!(err, ProtocolError::Version { found: 2 }), "{err}");
        let err = decode::<RunnerMessage>(br#"{"type":"snapshot","id":1}"#, 1024).unwrap_err();
        assert!(matches!(err, ProtocolError::Version { found: 0 }), "{err}");
    }

    #[test]
    fn malformed_and_unknown_types_are_errors() {
        for bad in [&b"not json"[..], br#"{"v":1,"type":"launch_missiles","id":1}"#, br#"[1,2]"#] {
            let err = decode::<RunnerMessage>(bad, 1024).unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed(_) | ProtocolError::Version { .. }), "{err}");
        }
    }

    #[test]
    fn oversized_line_is_refused_without_buffering_it_and_the_next_line_still_reads() {
        let mut input = vec![b'x'; 10_000];
        input.push(b'\n');
        input.extend_from_slice(&encode(&RunnerMessage::Snapshot { id: 9 }));
        let mut reader = std::io::BufReader::with_capacity(64, Cursor::new(input));
        let mut buf = Vec::new();
        let err = read_message::<_, RunnerMessage>(&mut reader, &mut buf, 100).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { limit: 100 }));
        assert!(buf.len() <= 101);
        // The rest of the long line is garbage to the reader; it reports it and goes on.
        let mut outcome = read_message::<_, RunnerMessage>(&mut reader, &mut buf, 100);
        while outcome.is_err() {
            outcome = read_message(&mut reader, &mut buf, 100);
        }
        assert_eq!(outcome.unwrap(), RunnerMessage::Snapshot { id: 9 });
    }

    #[test]
    fn closed_connection_is_reported() {
        let mut reader = Cursor::new(Vec::new());
        let err = read_message::<_, RunnerMessage>(&mut reader, &mut Vec::new(), 100).unwrap_err();
        assert!(matches!(err, ProtocolError::Closed));
    }

    /// A reader that is interrupted by a signal before every chunk it hands out.
    struct Interrupting {
        chunks: Vec<&'static [u8]>,
        interrupt_next: bool,
    }

    impl std::io::Read for Interrupting {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.interrupt_next = !self.interrupt_next;
            if self.interrupt_next {
                return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
            }
            let Some(chunk) = self.chunks.first_mut() else { return Ok(0) };
            let n = chunk.len().min(out.len());
            out[..n].copy_from_slice(&chunk[..n]);
            *chunk = &chunk[n..];
            if chunk.is_empty() {
                self.chunks.remove(0);
            }
            Ok(n)
        }
    }

    #[test]
    fn a_read_interrupted_by_a_signal_loses_nothing() {
        let line = encode(&RunnerMessage::Snapshot { id: 3 });
        let line: &'static [u8] = Box::leak(line.into_boxed_slice());
        let (a, b) = line.split_at(5);
        let mut reader = std::io::BufReader::new(Interrupting { chunks: vec![a, b], interrupt_next: false });
        let msg: RunnerMessage = read_message(&mut reader, &mut Vec::new(), MAX_RUNNER_MESSAGE).unwrap();
        assert_eq!(msg, RunnerMessage::Snapshot { id: 3 });
    }
}
