//! The tokio runtimes built through hangcheck, and the ones it only heard of.
//!
//! An all-clear is only worth something if hangcheck really watched the server, so what
//! the agent reports about its reach is a fact, not a claim: every runtime built through
//! `#[hangcheck_runtime::main]` or `instrument` is recorded here with the hooks installed
//! on its builder and, for each, whether tokio has called it yet (a hook set by the server
//! after `instrument` replaces ours, and then never fires). A runtime the server spawns
//! or announces from that was not built through hangcheck is counted apart, so the runner
//! can say that part of the server is unwatched.
//!
//! The hooks mark "fired" with a load and, once, a store of a flag that is read-mostly
//! afterwards, so the hot path stays free of shared writes.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tokio::runtime::{Handle, Id};

use crate::protocol::{RuntimeInfo, RuntimeStats};

/// A hook hangcheck installs on a builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    /// `on_task_spawn` / `on_task_terminate` (tokio_unstable): every task counted.
    TaskSpawn,
    /// `on_before_task_poll` / `on_after_task_poll` (tokio_unstable): stalls, by task.
    TaskPoll,
    /// `on_thread_park` / `on_thread_unpark`: stalls on stable tokio.
    ThreadPark,
    /// `on_thread_start` / `on_thread_stop`: the runtime's own threads.
    ThreadStart,
}

impl Hook {
    const ALL: [Hook; 4] = [Hook::TaskSpawn, Hook::TaskPoll, Hook::ThreadPark, Hook::ThreadStart];

    fn name(self) -> &'static str {
        match self {
            Hook::TaskSpawn => "task-spawn",
            Hook::TaskPoll => "task-poll",
            Hook::ThreadPark => "thread-park",
            Hook::ThreadStart => "thread-start",
        }
    }
}

/// One runtime built through hangcheck.
pub(crate) struct Runtime {
    name: String,
    installed: Vec<Hook>,
    fired: [AtomicBool; 4],
    handle: OnceLock<Handle>,
    /// The thread that built it: the one that usually goes on to `block_on` it.
    builder_thread: std::thread::ThreadId,
    /// Threads started and stopped by it (workers and blocking pool).
    started: AtomicU64,
    stopped: AtomicU64,
}

static RUNTIMES: Mutex<Vec<&'static Runtime>> = Mutex::new(Vec::new());

/// Ids of runtimes seen from `spawn`/`announce` that are not ours.
static FOREIGN: Mutex<Option<HashSet<Id>>> = Mutex::new(None);

thread_local! {
    /// Whether this thread's runtime is known to be ours (set on its threads by the
    /// thread-start hook and on the thread that built it).
    static OURS: Cell<bool> = const { Cell::new(false) };
}

impl Runtime {
    /// Records a runtime about to be built with `installed` hooks. `label` names it;
    /// without one, the building thread's name does.
    pub(crate) fn register(label: Option<&str>, installed: Vec<Hook>) -> &'static Runtime {
        let mut all = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner);
        let name = label.map(str::to_owned).unwrap_or_else(|| {
            let thread = std::thread::current();
            let base = thread.name().unwrap_or("unnamed thread").to_owned();
            let same = all.iter().filter(|r| r.name == base || r.name.starts_with(&format!("{base}#"))).count();
            if same == 0 {
                base
            } else {
                format!("{base}#{}", same + 1)
            }
        });
        // Leaked like the watchdog's worker slots: a runtime's hooks hold it for as long
        // as the runtime lives, and a server builds a handful.
        let runtime: &'static Runtime = Box::leak(Box::new(Runtime {
            name,
            installed,
            fired: [const { AtomicBool::new(false) }; 4],
            handle: OnceLock::new(),
            builder_thread: std::thread::current().id(),
            started: AtomicU64::new(0),
            stopped: AtomicU64::new(0),
        }));
        all.push(runtime);
        runtime
    }

    /// Marks `hook` as having fired.
    #[inline]
    pub(crate) fn fired(&self, hook: Hook) {
        let flag = &self.fired[hook as usize];
        if !flag.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Learns the runtime's handle from inside it (a hook runs in its context).
    #[inline]
    pub(crate) fn learn_handle(&self) {
        if self.handle.get().is_none() {
            if let Ok(handle) = Handle::try_current() {
                let _ = self.handle.set(handle);
            }
        }
    }

    /// Its handle is known (the thread that built it says so).
    pub(crate) fn built(&self, handle: &Handle) {
        let _ = self.handle.set(handle.clone());
        OURS.with(|o| o.set(true));
    }

    /// A thread of this runtime started.
    pub(crate) fn thread_started(&self) {
        self.fired(Hook::ThreadStart);
        self.started.fetch_add(1, Ordering::Relaxed);
        OURS.with(|o| o.set(true));
        self.learn_handle();
    }

    /// A thread of this runtime stopped.
    pub(crate) fn thread_stopped(&self) {
        self.stopped.fetch_add(1, Ordering::Relaxed);
    }

    fn info(&self) -> RuntimeInfo {
        let live = self.started.load(Ordering::Relaxed).saturating_sub(self.stopped.load(Ordering::Relaxed));
        let metrics = self.handle.get().map(Handle::metrics);
        let workers = match (&metrics, self.handle.get().map(Handle::runtime_flavor)) {
            (Some(m), Some(tokio::runtime::RuntimeFlavor::MultiThread)) => m.num_workers() as u64,
            _ => 0,
        };
        #[cfg(tokio_unstable)]
        let idle = metrics.as_ref().map(|m| m.num_idle_blocking_threads() as u64);
        #[cfg(not(tokio_unstable))]
        let idle = None;
        RuntimeInfo {
            name: self.name.clone(),
            hooks: self.installed.iter().map(|h| h.name().to_owned()).collect(),
            fired: Hook::ALL
                .iter()
                .filter(|h| self.installed.contains(h) && self.fired[**h as usize].load(Ordering::Relaxed))
                .map(|h| h.name().to_owned())
                .collect(),
            stats: metrics.as_ref().map(|m| RuntimeStats {
                workers: m.num_workers() as u64,
                alive_tasks: m.num_alive_tasks() as u64,
                global_queue_depth: m.global_queue_depth() as u64,
            }),
            threads: live,
            blocking_threads: live.saturating_sub(workers),
            idle_blocking_threads: idle,
        }
    }
}

/// Every runtime built through hangcheck, as the snapshot reports them.
pub(crate) fn infos() -> Vec<RuntimeInfo> {
    let all: Vec<&'static Runtime> = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner).clone();
    all.iter().map(|r| r.info()).collect()
}

/// Every runtime whose handle is known, with its name, in the order they were built:
/// each one's tasks go into the task dump.
pub(crate) fn handles() -> Vec<(String, Handle)> {
    let all: Vec<&'static Runtime> = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut handles: Vec<(String, Handle)> = Vec::with_capacity(all.len());
    for r in all {
        let Some(handle) = r.handle.get() else { continue };
        if !handles.iter().any(|(_, h)| h.id() == handle.id()) {
            handles.push((r.name.clone(), handle.clone()));
        }
    }
    handles
}

/// Called from `spawn` and `announce`: notes the calling thread's runtime when it is not
/// one of ours. Cheap after the first call on a thread of ours.
pub(crate) fn note_current() {
    if OURS.with(Cell::get) {
        return;
    }
    let Ok(handle) = Handle::try_current() else { return };
    let id = handle.id();
    let all: Vec<&'static Runtime> = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if all.iter().any(|r| r.handle.get().is_some_and(|h| h.id() == id)) {
        OURS.with(|o| o.set(true));
        return;
    }
    // A runtime built on this thread whose worker threads have not started yet: this
    // thread is running it (`block_on` right after `build`).
    let me = std::thread::current().id();
    if let Some(runtime) = all.iter().rev().find(|r| r.builder_thread == me && r.handle.get().is_none()) {
        runtime.built(&handle);
        return;
    }
    FOREIGN.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(HashSet::new).insert(id);
}

/// Runtimes seen from `spawn`/`announce` that were not built through hangcheck. A runtime
/// seen before its handle was known is taken back once it is.
pub(crate) fn foreign_count() -> u64 {
    let ours: Vec<Id> = {
        let all = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter().filter_map(|r| r.handle.get().map(Handle::id)).collect()
    };
    let foreign = FOREIGN.lock().unwrap_or_else(PoisonError::into_inner);
    foreign.as_ref().map_or(0, |set| set.iter().filter(|id| !ours.contains(id)).count() as u64)
}

/// The thread that built a runtime hands over its handle (`#[hangcheck_runtime::main]`):
/// the latest runtime registered without a known handle is that one.
pub(crate) fn built(handle: &Handle) {
    let all: Vec<&'static Runtime> = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let id = handle.id();
    let runtime = all
        .iter()
        .rev()
        .find(|r| r.handle.get().is_some_and(|h| h.id() == id))
        .or_else(|| all.iter().rev().find(|r| r.handle.get().is_none()));
    if let Some(runtime) = runtime {
        runtime.built(handle);
    }
}
