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
pub(crate) use unstable::NamedSpawn;

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

    use tokio::runtime::{Builder, TaskMeta};

    use crate::protocol::RecordedKind;
    use crate::recorder;
    use crate::registry::{Group, Registry};
    use crate::runtimes::{Hook, Runtime};
    use crate::watchdog;

    thread_local! {
        /// The group a `hangcheck_runtime::spawn` on this thread is spawning into; the
        /// spawn hook runs synchronously inside `tokio::spawn`, on the same thread.
        static NAMED: Cell<Option<&'static Group>> = const { Cell::new(None) };
    }

    /// Marks the `tokio::spawn` calls made while it lives as spawns into a named group.
    pub(crate) struct NamedSpawn;

    impl NamedSpawn {
        pub(crate) fn enter(group: &'static Group) -> NamedSpawn {
            NAMED.with(|n| n.set(Some(group)));
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

    pub(super) fn install(builder: &mut Builder, registry: &'static Registry, runtime: &'static Runtime) {
        builder
            .on_task_spawn(move |meta| {
                runtime.fired(Hook::TaskSpawn);
                // A current-thread runtime has no threads of its own to learn it from.
                runtime.learn_handle();
                let id = id_of(meta);
                let named = NAMED.with(Cell::get);
                let (group, at) = registry.task_spawned(id, named, meta.spawned_at());
                let epoch = registry.epoch();
                match at {
                    Some(at) => recorder::record_at(RecordedKind::TaskSpawn, group.recorder_name(), id, epoch, at),
                    None => recorder::record(RecordedKind::TaskSpawn, group.recorder_name(), id, epoch),
                }
            })
            .on_task_terminate(move |meta| {
                let id = id_of(meta);
                // Blocking tasks end here without a spawn hook; they are simply absent.
                if let Some(group) = registry.task_ended(id) {
                    recorder::record(RecordedKind::TaskEnd, group.recorder_name(), id, 0);
                }
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
            builder.on_after_task_poll(move |meta| {
                let busy_ns = watchdog::idle_timed();
                if let Some(group) = registry.task_group(id_of(meta)) {
                    group.record_poll(busy_ns);
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
}
