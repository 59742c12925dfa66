//! tokio's hooks, installed by `instrument` when the runner is there.
//!
//! With `--cfg tokio_unstable` (the runner's default build):
//! - task spawn/terminate hooks count **every** task, whoever spawned it (user code,
//!   hyper, a client library), in a group keyed by its spawn location, so leaks in tasks
//!   nobody named are found too; tasks spawned through `hangcheck_runtime::spawn` stay in
//!   their named group and are not counted twice;
//! - before/after-poll hooks feed the stall watchdog and name the task being polled.
//!
//! On stable tokio only the thread park/unpark hooks exist; they feed the watchdog.
//!
//! tokio's builder has one slot per hook and no getter, so a hook set on the builder
//! before `instrument` is replaced; set your own hooks after calling it, and hangcheck's
//! are replaced instead (the README says so).

use tokio::runtime::Builder;

use crate::registry::Registry;
use crate::runtimes::{Hook, Runtime};

#[cfg(tokio_unstable)]
pub(crate) use unstable::{describe_task, NamedSpawn};

/// Installs the hooks this build of tokio offers and records the runtime about to be
/// built, named `label` (else after the building thread).
pub(crate) fn install(builder: &mut Builder, registry: &'static Registry, label: Option<&str>) {
    #[cfg(tokio_unstable)]
    let hooks = vec![Hook::TaskSpawn, Hook::TaskPoll, Hook::ThreadStart];
    #[cfg(not(tokio_unstable))]
    let hooks = vec![Hook::ThreadPark, Hook::ThreadStart];
    let runtime = Runtime::register(label, hooks);
    builder.on_thread_start(move || runtime.thread_started()).on_thread_stop(move || runtime.thread_stopped());
    #[cfg(tokio_unstable)]
    unstable::install(builder, registry, runtime);
    #[cfg(not(tokio_unstable))]
    {
        let _ = registry;
        builder
            .on_thread_unpark(move || {
                runtime.fired(Hook::ThreadPark);
                runtime.learn_handle();
                crate::watchdog::busy(0)
            })
            .on_thread_park(|| {
                crate::watchdog::idle();
            });
    }
}

#[cfg(tokio_unstable)]
mod unstable {
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, PoisonError};

    use tokio::runtime::{Builder, TaskMeta};

    use crate::protocol::RecordedKind;
    use crate::recorder;
    use crate::registry::{Group, IntHash, Registry, TaskGuard};
    use crate::runtimes::{Hook, Runtime};
    use crate::watchdog;

    /// What the hooks know about a live task.
    enum Tracked {
        /// Counted here, in a location group; dropping the guard ends its record.
        Location(TaskGuard),
        /// Counted by its named group (the guard lives in the task); kept only to name
        /// the task in stall reports.
        Named(Arc<Group>),
    }

    impl Tracked {
        fn group(&self) -> &Group {
            match self {
                Tracked::Location(guard) => guard.group(),
                Tracked::Named(group) => group,
            }
        }
    }

    /// Live tasks by id, sharded so that spawns on different workers rarely meet.
    const SHARDS: usize = 16;
    static LIVE: [Mutex<Option<HashMap<u64, Tracked, IntHash>>>; SHARDS] = [const { Mutex::new(None) }; SHARDS];

    thread_local! {
        /// The group a `hangcheck_runtime::spawn` on this thread is spawning into; the
        /// spawn hook runs synchronously inside `tokio::spawn`, on the same thread.
        static NAMED: Cell<Option<Arc<Group>>> = const { Cell::new(None) };
    }

    /// Marks the `tokio::spawn` calls made while it lives as spawns into a named group.
    pub(crate) struct NamedSpawn;

    impl NamedSpawn {
        pub(crate) fn enter(group: &Arc<Group>) -> NamedSpawn {
            NAMED.with(|n| n.set(Some(Arc::clone(group))));
            NamedSpawn
        }
    }

    impl Drop for NamedSpawn {
        fn drop(&mut self) {
            NAMED.with(|n| n.set(None));
        }
    }

    use crate::recorder::task_id;

    fn id_of(meta: &TaskMeta<'_>) -> u64 {
        task_id(&meta.id())
    }

    fn shard(id: u64) -> std::sync::MutexGuard<'static, Option<HashMap<u64, Tracked, IntHash>>> {
        LIVE[(id as usize) % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn install(builder: &mut Builder, registry: &'static Registry, runtime: &'static Runtime) {
        builder
            .on_task_spawn(move |meta| {
                runtime.fired(Hook::TaskSpawn);
                // A current-thread runtime has no threads of its own to learn it from.
                runtime.learn_handle();
                let id = id_of(meta);
                let named = NAMED.with(|n| {
                    let group = n.take();
                    n.set(group.clone());
                    group
                });
                let tracked = match named {
                    Some(group) => Tracked::Named(group),
                    None => Tracked::Location(registry.born_into(registry.site_group(meta.spawned_at()))),
                };
                let name = tracked.group().recorder_name();
                recorder::record(RecordedKind::TaskSpawn, name, id, registry.epoch());
                shard(id).get_or_insert_with(|| HashMap::with_hasher(IntHash)).insert(id, tracked);
            })
            .on_task_terminate(|meta| {
                let id = id_of(meta);
                // Blocking tasks end here without a spawn hook; they are simply absent.
                // The record is dropped outside the shard's lock.
                let removed = shard(id).as_mut().and_then(|m| m.remove(&id));
                if let Some(tracked) = &removed {
                    recorder::record(RecordedKind::TaskEnd, tracked.group().recorder_name(), id, 0);
                }
                drop(removed);
            })
            .on_before_task_poll(move |meta| {
                runtime.fired(Hook::TaskPoll);
                watchdog::busy(id_of(meta))
            });
        if let Some(seed) = crate::chaos::seed() {
            // Said in the server's log, so that a reader of it knows its timing was perturbed.
            eprintln!("hangcheck: --chaos={seed}: delays and yields before polls, tokio's RNG seeded");
            builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes())).on_before_task_poll(
                move |meta| {
                    // The delay comes before the poll begins: the watchdog does not see it
                    // as the task's.
                    crate::chaos::perturb(seed);
                    runtime.fired(Hook::TaskPoll);
                    watchdog::busy(id_of(meta));
                },
            );
        }
        if poll_stats() {
            builder.on_after_task_poll(|meta| {
                let busy_ns = watchdog::idle();
                let id = id_of(meta);
                if let Some(tracked) = shard(id).as_ref().and_then(|m| m.get(&id)) {
                    tracked.group().record_poll(busy_ns);
                }
            });
        } else {
            builder.on_after_task_poll(|_| {
                watchdog::idle();
            });
        }
    }

    /// Per-group poll counts and busy time cost a lookup per poll, so they are on only
    /// when the runner asks (`poll-stats = true`, `HANGCHECK_POLL_STATS=1`).
    fn poll_stats() -> bool {
        std::env::var(crate::protocol::POLL_STATS_ENV).is_ok_and(|v| v == "1")
    }

    /// The group key and location of a live task, for stall reports.
    pub(crate) fn describe_task(id: u64) -> Option<(String, Option<String>)> {
        shard(id).as_ref()?.get(&id).map(|t| (t.group().key().to_owned(), t.group().location().map(str::to_owned)))
    }
}
