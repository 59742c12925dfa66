//! Async task stacks, from tokio's task dump: where every task is parked in its `.await`s.
//!
//! Available when the server is built with `--cfg tokio_unstable` and this crate's
//! `taskdump` feature on Linux (the runner does both). A dump makes every worker pause
//! and re-poll each task in tracing mode, so it cannot finish while a worker is stuck;
//! it is skipped with the reason when the watchdog sees a stuck worker. Current-thread
//! runtimes are skipped: tokio can only dump them from inside (tokio's documented
//! limitation).
//!
//! A dump, once started, is never abandoned: tokio sets a trace request that the workers
//! honour until the dump future completes, so dropping it half-way would leave every
//! later poll perturbed. It is driven to completion on a helper thread, with a plain
//! thread waker (never a tokio timer, which a frozen runtime would never fire); the agent
//! waits for it only up to the runner's budget, and a dump still running then finishes
//! in the background, and no second one starts meanwhile.
//!
//! A big server has many tasks parked at the same `.await`: traces are grouped by
//! identical (group, spawn location, trace) with a count, and the distinct traces kept
//! are capped in bytes and in time by the [`StacksBudget`] the runner sends.

use std::time::Duration;

use tokio::runtime::Handle;

use crate::protocol::{StacksBudget, TaskDump};

/// Names a live task by id: its group key and spawn location (the hooks' live-task table).
pub(crate) type Describe = fn(u64) -> Option<(String, Option<String>)>;

/// Dumps the runtime's tasks within `budget`, or says why not. `stuck` is the watchdog's
/// reason to skip; `describe` names each task dumped.
pub(crate) fn dump(
    runtime: Option<&Handle>,
    stuck: Option<String>,
    budget: StacksBudget,
    describe: Describe,
) -> TaskDump {
    let skipped = |reason: String| TaskDump {
        tasks: Vec::new(),
        groups: Vec::new(),
        omitted: 0,
        note: None,
        skipped: Some(reason),
        took_ms: 0,
    };
    let Some(handle) = runtime else {
        return skipped("the agent has not seen the runtime yet".into());
    };
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return skipped("a current-thread runtime can only be dumped from inside itself (a tokio limitation)".into());
    }
    if let Some(reason) = stuck {
        return skipped(format!("{reason}; a dump needs every worker and would not finish"));
    }
    imp::dump(handle, Duration::from_millis(budget.deadline_ms), budget.max_bytes as usize, describe)
        .unwrap_or_else(skipped)
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
    TaskDump { tasks: Vec::new(), groups, omitted, note, skipped: None, took_ms: 0 }
}

#[cfg(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "x86", target_arch = "x86_64", target_arch = "s390x")
))]
mod imp {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::{Duration, Instant};

    use tokio::runtime::Handle;

    use crate::protocol::TaskDump;

    /// Set while a dump runs, until it completes: a dump still finishing in the
    /// background would only make a second one queue behind it.
    static RUNNING: AtomicBool = AtomicBool::new(false);

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

    pub(super) fn dump(
        handle: &Handle,
        limit: Duration,
        max_bytes: usize,
        describe: super::Describe,
    ) -> Result<TaskDump, String> {
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err("an earlier task dump is still finishing in the background".into());
        }
        let started = Instant::now();
        let deadline = started + limit;
        let (tx, rx) = mpsc::sync_channel(1);
        let handle = handle.clone();
        let spawned = std::thread::Builder::new().name("hangcheck-dump".into()).spawn(move || {
            let dump = block_on(handle.dump());
            RUNNING.store(false, Ordering::Release);
            // The agent may have stopped waiting; the dump has completed either way.
            let _ = tx.send(dump);
        });
        if let Err(e) = spawned {
            RUNNING.store(false, Ordering::Release);
            return Err(format!("cannot start the task dump thread: {e}"));
        }
        let Ok(dump) = rx.recv_timeout(limit) else {
            return Err(format!(
                "the task dump did not finish within {} ms (the runner's budget); it completes in the background",
                limit.as_millis()
            ));
        };
        let tasks: Vec<_> = dump.tasks().iter().collect();
        let described = tasks.iter().map(|task| {
            let id = crate::recorder::task_id(&task.id());
            let (group, location) = describe(id).map_or((None, None), |(g, l)| (Some(g), l));
            (id, group, location, task.trace().to_string())
        });
        let mut grouped = super::group(described, tasks.len(), max_bytes, deadline);
        grouped.took_ms = started.elapsed().as_millis() as u64;
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
    use std::time::Duration;

    use tokio::runtime::Handle;

    use crate::protocol::TaskDump;

    pub(super) fn dump(_: &Handle, _: Duration, _: usize, _: super::Describe) -> Result<TaskDump, String> {
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
