//! Async task stacks, from tokio's task dump: where every task is parked in its `.await`s.
//!
//! Available when the server is built with `--cfg tokio_unstable` and this crate's
//! `taskdump` feature on Linux (the runner does both). Every runtime built through
//! hangcheck is dumped, side by side, under the one deadline the runner gives.
//!
//! A multi-thread runtime is dumped from outside: the dump makes every worker pause and
//! re-poll each task in tracing mode, so it cannot finish while a worker is stuck; it is
//! skipped with the reason when the watchdog sees a stuck worker. A dump, once started,
//! is never abandoned: tokio sets a trace request that the workers honour until the dump
//! future completes, so dropping it half-way would leave every later poll perturbed. It
//! is driven to completion on a helper thread, with a plain thread waker (never a tokio
//! timer, which a frozen runtime would never fire); the agent waits for it only up to the
//! runner's budget, and a dump still running then finishes in the background, and no
//! second one of that runtime starts meanwhile.
//!
//! tokio dumps a current-thread runtime only from inside itself, so the agent spawns a
//! task onto it that takes the dump when the runtime polls it and sends it back. A
//! runtime whose thread is blocked (or no longer drives it) never polls that task: the
//! deadline passes and the answer says so. The task stays queued until the runtime runs
//! it, and no second one is spawned meanwhile. It is hangcheck's own, so it is spawned
//! out of the server's task counts (see `SpawnOwn`).
//!
//! A big server has many tasks parked at the same `.await`: traces are grouped by
//! identical (group, spawn location, trace) with a count, and the distinct traces kept
//! are capped in bytes and in time by the [`StacksBudget`] the runner sends.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::protocol::{StacksBudget, TaskDump};

/// Names a live task by id: its group key and spawn location (the hooks' live-task table).
pub(crate) type Describe = fn(u64) -> Option<(String, Option<String>)>;

/// One of hangcheck's own tasks, to run on a server's runtime.
pub(crate) type OwnTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns one of hangcheck's own tasks onto a runtime, out of the server's task counts
/// (it is no task of the server's, and one a blocked runtime never runs would look leaked).
pub(crate) type SpawnOwn<'a> = &'a dyn Fn(&Handle, OwnTask);

/// Why a runtime looks frozen, if it does (the watchdog's stuck workers of that runtime).
pub(crate) type Stuck<'a> = &'a dyn Fn(&Handle) -> Option<String>;

/// Dumps the tasks of every runtime in `runtimes` (name, handle) within `budget`, or says
/// why not. `stuck` gives the watchdog's reason to skip a multi-thread runtime; `describe`
/// names each task dumped; `spawn` puts the dump task onto a current-thread runtime.
pub(crate) fn dump(
    runtimes: &[(String, Handle)],
    stuck: Stuck<'_>,
    budget: StacksBudget,
    describe: Describe,
    spawn: SpawnOwn<'_>,
) -> TaskDump {
    if runtimes.is_empty() {
        return skipped("the agent has not seen the runtime yet".into());
    }
    let limits = Limits { deadline: Duration::from_millis(budget.deadline_ms), max_bytes: budget.max_bytes as usize };
    imp::dump(runtimes, stuck, limits, describe, spawn).unwrap_or_else(skipped)
}

/// A dump that was not taken, and why.
fn skipped(reason: String) -> TaskDump {
    TaskDump {
        tasks: Vec::new(),
        groups: Vec::new(),
        omitted: 0,
        note: None,
        skipped: Some(reason),
        took_ms: 0,
        runtimes_skipped: Vec::new(),
    }
}

/// The runner's budget for one dump.
#[cfg_attr(not(all(tokio_unstable, feature = "taskdump", target_os = "linux")), allow(dead_code))]
struct Limits {
    deadline: Duration,
    max_bytes: usize,
}

// Used only where task dumps exist (and by the tests).
#[cfg_attr(not(all(tokio_unstable, feature = "taskdump", target_os = "linux")), allow(dead_code))]
/// Groups `(group, location, trace)` triples by identical content, most tasks first,
/// keeping at most `max_bytes` of distinct traces and stopping at `deadline`; what is
/// left out is counted, with the reason.
pub(crate) fn group<I>(tasks: I, total: usize, max_bytes: usize, deadline: std::time::Instant) -> TaskDump
where
    I: IntoIterator<Item = (u64, Option<String>, Option<String>, String)>,
{
    use std::collections::HashMap;
    const IDS_KEPT: usize = 5;
    let mut groups: HashMap<(Option<String>, Option<String>, String), crate::protocol::AsyncTaskGroup> = HashMap::new();
    let (mut bytes, mut omitted, mut note) = (0usize, 0u64, None);
    for (i, (id, group, location, trace)) in tasks.into_iter().enumerate() {
        // The clock is read every 256 tasks: reading it for each would cost more than
        // the grouping.
        if i % 256 == 0 && std::time::Instant::now() >= deadline {
            omitted += (total - i) as u64;
            note = Some("the time budget ran out while grouping traces".to_owned());
            break;
        }
        let key = (group, location, trace);
        if let Some(g) = groups.get_mut(&key) {
            g.count += 1;
            if g.ids.len() < IDS_KEPT {
                g.ids.push(id);
            }
            continue;
        }
        let size = key.2.len() + key.0.as_ref().map_or(0, String::len) + key.1.as_ref().map_or(0, String::len) + 64;
        if bytes + size > max_bytes {
            omitted += 1;
            note.get_or_insert_with(|| format!("their distinct traces are past the size budget of {max_bytes} bytes"));
            continue;
        }
        bytes += size;
        let (group, location, trace) = key.clone();
        groups.insert(key, crate::protocol::AsyncTaskGroup { count: 1, group, location, ids: vec![id], trace });
    }
    let mut groups: Vec<_> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.ids.cmp(&b.ids)));
    TaskDump { tasks: Vec::new(), groups, omitted, note, skipped: None, took_ms: 0, runtimes_skipped: Vec::new() }
}

#[cfg(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "x86", target_arch = "x86_64", target_arch = "s390x")
))]
mod imp {
    use std::collections::HashSet;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Instant;

    use tokio::runtime::{Dump, Handle, Id, RuntimeFlavor};

    use super::{Describe, Limits, SpawnOwn, Stuck};
    use crate::protocol::TaskDump;

    /// Runtimes with a dump under way: a multi-thread dump still finishing in the
    /// background, or a dump task a current-thread runtime has not run yet. A second one
    /// would only queue behind it.
    static UNDER_WAY: Mutex<Option<HashSet<Id>>> = Mutex::new(None);

    /// A runtime's dump under way; dropping it (the dump done, or its task dropped
    /// unpolled when the runtime shuts down) lets the next one start.
    struct UnderWay(Id);

    impl UnderWay {
        fn claim(handle: &Handle) -> Option<UnderWay> {
            let id = handle.id();
            let mut set = UNDER_WAY.lock().unwrap_or_else(PoisonError::into_inner);
            set.get_or_insert_with(HashSet::new).insert(id).then_some(UnderWay(id))
        }
    }

    impl Drop for UnderWay {
        fn drop(&mut self) {
            if let Some(set) = UNDER_WAY.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                set.remove(&self.0);
            }
        }
    }

    struct Unpark(std::thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// Polls `fut` on this thread until it is ready, however long that takes.
    fn block_on<F: Future>(fut: F) -> F::Output {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        loop {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    }

    /// A multi-thread runtime, dumped from a helper thread.
    fn from_outside(handle: &Handle) -> Result<Receiver<Dump>, String> {
        let under_way = UnderWay::claim(handle).ok_or("an earlier task dump is still finishing in the background")?;
        let (tx, rx) = mpsc::sync_channel(1);
        let handle = handle.clone();
        std::thread::Builder::new()
            .name("hangcheck-dump".into())
            .spawn(move || {
                let dump = block_on(handle.dump());
                drop(under_way);
                // The agent may have stopped waiting; the dump has completed either way.
                let _ = tx.send(dump);
            })
            .map_err(|e| format!("cannot start the task dump thread: {e}"))?;
        Ok(rx)
    }

    /// A current-thread runtime, dumped from inside by a task spawned onto it.
    fn from_inside(handle: &Handle, spawn: SpawnOwn<'_>) -> Result<Receiver<Dump>, String> {
        let under_way = UnderWay::claim(handle).ok_or(
            "has not polled the dump task of an earlier request yet: its thread is blocked or not driving \
                    the runtime",
        )?;
        let (tx, rx) = mpsc::sync_channel(1);
        let inside = handle.clone();
        spawn(
            handle,
            Box::pin(async move {
                let _under_way = under_way;
                let dump = inside.dump().await;
                let _ = tx.send(dump);
            }),
        );
        Ok(rx)
    }

    pub(super) fn dump(
        runtimes: &[(String, Handle)],
        stuck: Stuck<'_>,
        limits: Limits,
        describe: Describe,
        spawn: SpawnOwn<'_>,
    ) -> Result<TaskDump, String> {
        let started = Instant::now();
        let deadline = started + limits.deadline;
        let ms = limits.deadline.as_millis();
        // Every runtime's dump starts before any is waited for: they run side by side.
        let pending: Vec<_> = runtimes
            .iter()
            .map(|(name, handle)| {
                let current = handle.runtime_flavor() == RuntimeFlavor::CurrentThread;
                let started = match (current, stuck(handle)) {
                    (true, _) => from_inside(handle, spawn),
                    (false, Some(reason)) => Err(format!("{reason}; a dump needs every worker and would not finish")),
                    (false, None) => from_outside(handle),
                };
                (name.as_str(), current, started)
            })
            .collect();
        let (mut tasks, mut not_dumped) = (Vec::new(), Vec::new());
        for (name, current, started) in pending {
            let waited = started.and_then(|rx| {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).map_err(|e| match e {
                    RecvTimeoutError::Timeout if current => format!(
                        "did not poll the dump task within {ms} ms: its thread is blocked or not driving the runtime"
                    ),
                    RecvTimeoutError::Timeout => format!(
                        "the task dump did not finish within {ms} ms (the runner's budget); it completes in the \
                         background"
                    ),
                    RecvTimeoutError::Disconnected => "shut down before it was dumped".to_owned(),
                })
            });
            match waited {
                Ok(dump) => tasks.extend(dump.tasks().iter().map(|task| {
                    let id = crate::recorder::task_id(&task.id());
                    let (group, location) = describe(id).map_or((None, None), |(g, l)| (Some(g), l));
                    (id, group, location, task.trace().to_string())
                })),
                Err(why) if current => not_dumped.push(format!("the current-thread runtime `{name}` {why}")),
                Err(why) => not_dumped.push(format!("runtime `{name}`: {why}")),
            }
        }
        if not_dumped.len() == runtimes.len() {
            return Err(not_dumped.join("; "));
        }
        let total = tasks.len();
        // Waiting for a blocked runtime spends the whole budget; the others' tasks still
        // get a quarter of it to be grouped (the runner waits the budget and 4 s more).
        let grouping = deadline.max(Instant::now() + limits.deadline / 4);
        let mut grouped = super::group(tasks, total, limits.max_bytes, grouping);
        grouped.took_ms = started.elapsed().as_millis() as u64;
        grouped.runtimes_skipped = not_dumped;
        Ok(grouped)
    }
}

#[cfg(not(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "x86", target_arch = "x86_64", target_arch = "s390x")
)))]
mod imp {
    use tokio::runtime::Handle;

    use super::{Describe, Limits, SpawnOwn, Stuck};
    use crate::protocol::TaskDump;

    pub(super) fn dump(
        _: &[(String, Handle)],
        _: Stuck<'_>,
        _: Limits,
        _: Describe,
        _: SpawnOwn<'_>,
    ) -> Result<TaskDump, String> {
        Err("the server was built without task dumps (they need --cfg tokio_unstable and hangcheck-runtime's \
             `taskdump` feature on Linux; `cargo hangcheck test` passes both unless --stable)"
            .into())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::group;

    fn task(id: u64, trace: &str) -> (u64, Option<String>, Option<String>, String) {
        (id, Some("conn".into()), Some("src/main.rs:1".into()), trace.to_owned())
    }

    #[test]
    fn identical_traces_are_counted_once_most_tasks_first() {
        let tasks = (0..1000).map(|i| task(i, "idle")).chain([task(1000, "culprit")]);
        let dump = group(tasks, 1001, 1 << 20, Instant::now() + Duration::from_secs(60));
        assert_eq!(dump.groups.len(), 2);
        assert_eq!((dump.groups[0].count, dump.groups[0].trace.as_str()), (1000, "idle"));
        assert_eq!(dump.groups[0].ids, vec![0, 1, 2, 3, 4]);
        assert_eq!((dump.groups[1].count, dump.groups[1].trace.as_str()), (1, "culprit"));
        assert_eq!((dump.omitted, dump.note), (0, None));
    }

    #[test]
    fn distinct_traces_past_the_size_budget_are_counted_not_kept() {
        let tasks = (0..100).map(|i| task(i, &format!("trace {i} {}", "x".repeat(1000))));
        let dump = group(tasks, 100, 10_000, Instant::now() + Duration::from_secs(60));
        assert!(dump.groups.len() < 10, "{}", dump.groups.len());
        assert_eq!(dump.groups.len() as u64 + dump.omitted, 100);
        assert!(dump.note.unwrap().contains("size budget"));
    }

    #[test]
    fn a_spent_time_budget_counts_the_rest() {
        let dump = group((0..10).map(|i| task(i, "t")), 10, 1 << 20, Instant::now());
        assert_eq!((dump.groups.len(), dump.omitted), (0, 10));
        assert!(dump.note.unwrap().contains("time budget"));
    }
}
