//! The registry: what the server holds, kept cheap to update from any worker and read by
//! the agent thread when the runner asks.
//!
//! Task groups keep a record per live task (its birth instant and epoch), so that a
//! snapshot can tell the age of the oldest survivor and which epoch (test) each was born
//! in — the counts alone cannot make a leak self-evident, the ages do. The records are
//! [`Births`], which answer a snapshot without visiting each task. A task spawned through
//! `hangcheck_runtime::spawn` is recorded in its named group, behind the group's lock, by
//! a guard in the task; a task seen only by tokio's hooks is recorded in the hooks' table
//! of live tasks ([`tasks`]), under the one lock its spawn takes anyway. Groups live as
//! long as the process, so the hot paths hold plain references to them. Counters and
//! gauges are plain atomics behind a handle, so updating one takes no lock.

mod births;
#[cfg(tokio_unstable)]
mod tasks;

use std::collections::{BTreeMap, HashMap};
use std::panic::Location;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use births::{Births, Summary};

use crate::clock;
use crate::protocol::{Announcement, GroupKind, GroupStats};
use crate::recorder::{self, NameKind};

thread_local! {
    /// The groups this thread spawned into lately, by call site (see `named_group`).
    static LAST_NAMED: std::cell::RefCell<Vec<(usize, &'static Group)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The one registry of the process.
pub(crate) struct Registry {
    started: Instant,
    epoch: AtomicU64,
    /// Named groups, looked up by a borrowed name (no allocation per spawn).
    named: RwLock<HashMap<String, &'static Group>>,
    /// Location groups by key (`file:line`).
    located: RwLock<HashMap<String, &'static Group>>,
    /// Location groups by the address of tokio's `&'static Location`: one map lookup per
    /// spawn, and the key is formatted once per call site, not once per spawn.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    by_site: RwLock<HashMap<usize, &'static Group, IntHash>>,
    /// Live tasks by id, as tokio's task hooks see them.
    #[cfg(tokio_unstable)]
    tasks: tasks::Tasks,
    counters: RwLock<BTreeMap<String, Arc<Metric<AtomicU64>>>>,
    gauges: RwLock<BTreeMap<String, Arc<Metric<AtomicI64>>>>,
    announced: Mutex<Vec<Announcement>>,
    pub(crate) ops: crate::ops::Ops,
}

/// A counter's or gauge's value and its name's number in the flight recorder.
#[derive(Debug)]
pub(crate) struct Metric<A> {
    pub(crate) value: A,
    pub(crate) name: u32,
}

/// The tasks of one name or one spawn location.
pub(crate) struct Group {
    key: String,
    kind: GroupKind,
    location: Option<String>,
    /// Its number, for the hooks' table of live tasks.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    index: u32,
    polls: AtomicU64,
    busy_ns: AtomicU64,
    /// The births of its tasks spawned by name (see [`TaskGuard`]).
    births: Mutex<Births>,
    /// Its name's number in the flight recorder.
    recorder_name: u32,
}

/// Numbers groups, for the hooks' table of live tasks.
static GROUPS: AtomicU32 = AtomicU32::new(0);

/// Held by a live task; dropping it (completion, cancellation, panic) ends the task's
/// record.
pub(crate) struct TaskGuard {
    group: &'static Group,
    birth: u32,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        lock(&self.group.births).remove(self.birth);
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (counts
/// and instants) is still meaningful, and a diagnostics library must not add panics.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            started: Instant::now(),
            epoch: AtomicU64::new(0),
            named: RwLock::default(),
            located: RwLock::default(),
            by_site: RwLock::new(HashMap::with_hasher(IntHash)),
            #[cfg(tokio_unstable)]
            tasks: tasks::Tasks::default(),
            counters: RwLock::default(),
            gauges: RwLock::default(),
            announced: Mutex::default(),
            ops: crate::ops::Ops::default(),
        }
    }

    pub(crate) fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// The group `key` of one map, created on first use; `location` is only computed then.
    fn group(
        map: &RwLock<HashMap<String, &'static Group>>,
        kind: GroupKind,
        key: &str,
        location: impl FnOnce() -> Option<String>,
    ) -> &'static Group {
        if let Some(g) = map.read().unwrap_or_else(PoisonError::into_inner).get(key) {
            return g;
        }
        let mut groups = map.write().unwrap_or_else(PoisonError::into_inner);
        // Leaked: a group lives as long as the process (its counts are its history), and
        // a plain reference keeps reference counting off every spawn.
        groups.entry(key.to_owned()).or_insert_with(|| Box::leak(Box::new(Group::new(key, kind, location()))))
    }

    /// Records the birth of a task in a group and returns the guard that records its end.
    #[cfg(test)]
    pub(crate) fn task_born(&self, kind: GroupKind, key: &str, location: Option<&Location<'_>>) -> TaskGuard {
        let map = if kind == GroupKind::Named { &self.named } else { &self.located };
        self.born_into(Registry::group(map, kind, key, || location.map(location_string)))
    }

    /// The location group of a spawn site (tokio's task hooks).
    #[cfg(tokio_unstable)]
    fn site_group(&self, site: &'static Location<'static>) -> &'static Group {
        let address = site as *const Location<'static> as usize;
        if let Some(g) = self.by_site.read().unwrap_or_else(PoisonError::into_inner).get(&address) {
            return g;
        }
        // Two sites can share a file and line (monomorphised copies); they share a group.
        let key = location_key(site);
        let group = Registry::group(&self.located, GroupKind::Location, &key, || Some(key.clone()));
        self.by_site.write().unwrap_or_else(PoisonError::into_inner).insert(address, group);
        group
    }

    /// A task spawned (tokio's spawn hook): counted in the location group of `site`,
    /// unless it is spawned into the `named` group, whose guard counts it. Its group, and
    /// its birth's [`clock::now_ns`] reading if it was counted here.
    #[cfg(tokio_unstable)]
    #[inline]
    pub(crate) fn task_spawned(
        &self,
        id: u64,
        named: Option<&'static Group>,
        site: &'static Location<'static>,
    ) -> (&'static Group, Option<u64>) {
        self.tasks.spawned(id, named, site, || self.epoch(), |site| self.site_group(site))
    }

    /// A task ended (tokio's terminate hook); its group, if it was seen spawned.
    #[cfg(tokio_unstable)]
    #[inline]
    pub(crate) fn task_ended(&self, id: u64) -> Option<&'static Group> {
        self.tasks.ended(id)
    }

    /// The group of a live task seen by the hooks.
    #[cfg(tokio_unstable)]
    pub(crate) fn task_group(&self, id: u64) -> Option<&'static Group> {
        self.tasks.group_of(id)
    }

    /// The named group `key`, created at `location` if it is new.
    ///
    /// A call site nearly always spawns into the same group, so each thread remembers the
    /// last group it spawned into from each site; a hit costs a pointer and a short string
    /// comparison instead of a lock and a hash.
    pub(crate) fn named_group(&self, key: &str, location: &'static Location<'static>) -> &'static Group {
        let site = location as *const Location<'static> as usize;
        let cached = LAST_NAMED.with(|last| {
            let last = last.borrow();
            last.iter().find(|(s, g)| *s == site && g.key == key).map(|&(_, g)| g)
        });
        if let Some(group) = cached {
            return group;
        }
        let group = Registry::group(&self.named, GroupKind::Named, key, || Some(location_string(location)));
        LAST_NAMED.with(|last| {
            let mut last = last.borrow_mut();
            if last.len() >= 8 {
                last.remove(0);
            }
            last.push((site, group));
        });
        group
    }

    /// Records the birth of a task in `group`.
    pub(crate) fn born_into(&self, group: &'static Group) -> TaskGuard {
        let mut births = lock(&group.births);
        // Read under the lock: births are linked in the order of their instants.
        let birth = births.add(clock::now_ns(), self.epoch());
        drop(births);
        TaskGuard { group, birth }
    }

    pub(crate) fn counter(&self, name: &str) -> Arc<Metric<AtomicU64>> {
        get_or_insert(&self.counters, name, NameKind::Counter)
    }

    pub(crate) fn gauge(&self, name: &str) -> Arc<Metric<AtomicI64>> {
        get_or_insert(&self.gauges, name, NameKind::Gauge)
    }

    /// Stores an announcement, replacing an earlier one of the same name.
    pub(crate) fn announce(&self, announcement: Announcement) {
        let mut announced = lock(&self.announced);
        announced.retain(|a| a.name != announcement.name);
        announced.push(announcement);
    }

    pub(crate) fn announced(&self) -> Vec<Announcement> {
        lock(&self.announced).clone()
    }

    /// Every group's statistics, sorted by key, in time proportional to the groups (and
    /// the epochs their survivors span), not to the tasks. A group's lock is held while
    /// its own summary is read, each shard of the hooks' table while its summaries are.
    pub(crate) fn group_stats(&self) -> Vec<GroupStats> {
        let mut groups: Vec<&'static Group> =
            self.named.read().unwrap_or_else(PoisonError::into_inner).values().copied().collect();
        groups.extend(self.located.read().unwrap_or_else(PoisonError::into_inner).values().copied());
        #[cfg_attr(not(tokio_unstable), allow(unused_mut))]
        let mut summaries: Vec<Summary> = groups
            .iter()
            .map(|g| {
                let mut summary = Summary::default();
                lock(&g.births).add_to(&mut summary);
                summary
            })
            .collect();
        #[cfg(tokio_unstable)]
        self.tasks.add_to(&groups, &mut summaries);
        let now = clock::now_ns();
        let mut stats: Vec<GroupStats> = groups.iter().zip(summaries).map(|(g, s)| g.stats(s, now)).collect();
        stats.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        stats
    }

    pub(crate) fn counter_values(&self) -> BTreeMap<String, u64> {
        read_all(&self.counters)
    }

    pub(crate) fn gauge_values(&self) -> BTreeMap<String, i64> {
        read_all(&self.gauges)
    }
}

impl Group {
    fn new(key: &str, kind: GroupKind, location: Option<String>) -> Group {
        let recorder_name = recorder::intern(NameKind::Group, key, location.as_deref());
        Group {
            key: key.to_owned(),
            kind,
            location,
            index: GROUPS.fetch_add(1, Ordering::Relaxed),
            polls: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            births: Mutex::default(),
            recorder_name,
        }
    }

    /// A group no snapshot lists, for hangcheck's own tasks (the task dump it spawns onto a
    /// current-thread runtime): the hooks know them by it, and no count includes them.
    pub(crate) fn unlisted(key: &str) -> &'static Group {
        Box::leak(Box::new(Group::new(key, GroupKind::Named, None)))
    }

    /// Its name's number in the flight recorder.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    pub(crate) fn recorder_name(&self) -> u32 {
        self.recorder_name
    }

    /// Counts one poll of one of the group's tasks that ran for `busy_ns`.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    pub(crate) fn record_poll(&self, busy_ns: u64) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.busy_ns.fetch_add(busy_ns, Ordering::Relaxed);
    }

    /// The group's key.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Where its tasks are spawned, when known.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    pub(crate) fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    fn stats(&self, births: Summary, now: u64) -> GroupStats {
        GroupStats {
            key: self.key.clone(),
            kind: self.kind,
            location: self.location.clone(),
            live: births.live,
            spawned: births.added,
            finished: births.removed,
            polls: self.polls.load(Ordering::Relaxed),
            busy_ms: self.busy_ns.load(Ordering::Relaxed) / 1_000_000,
            oldest_age_ms: births.oldest_at.map(|o| clock::ms_since(o, now)),
            live_by_epoch: births.by_epoch,
        }
    }
}

/// Hashes integers that are not attacker-chosen (tokio's sequential task ids, addresses
/// of statics) with a multiplicative (Fibonacci) hash, a fraction of SipHash's cost, which
/// still spreads sequential values across the table.
#[derive(Default, Clone, Copy)]
pub(crate) struct IntHash;

impl std::hash::BuildHasher for IntHash {
    type Hasher = IntHasher;
    fn build_hasher(&self) -> IntHasher {
        IntHasher(0)
    }
}

pub(crate) struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = n as u64;
    }
}

fn location_string(location: &Location<'_>) -> String {
    format!("{}:{}", location.file(), location.line())
}

/// The key of a location group: `file:line`, with a dependency's path shortened to start
/// at its crate directory (`hyper-1.4.1/src/...`), which names the crate and version.
#[cfg_attr(not(tokio_unstable), allow(dead_code))]
pub(crate) fn location_key(location: &Location<'_>) -> String {
    format!("{}:{}", short_path(location.file()), location.line())
}

fn short_path(file: &str) -> &str {
    const REGISTRY: &str = "/registry/src/";
    file.find(REGISTRY).and_then(|i| file[i + REGISTRY.len()..].split_once('/').map(|(_, rest)| rest)).unwrap_or(file)
}

fn get_or_insert<A: Default>(
    map: &RwLock<BTreeMap<String, Arc<Metric<A>>>>,
    name: &str,
    kind: NameKind,
) -> Arc<Metric<A>> {
    if let Some(a) = map.read().unwrap_or_else(PoisonError::into_inner).get(name) {
        return Arc::clone(a);
    }
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(
        map.entry(name.to_owned())
            .or_insert_with(|| Arc::new(Metric { value: A::default(), name: recorder::intern(kind, name, None) })),
    )
}

/// Reads every atomic of a name map.
fn read_all<A, V>(map: &RwLock<BTreeMap<String, Arc<Metric<A>>>>) -> BTreeMap<String, V>
where
    A: AtomicRead<V>,
{
    map.read().unwrap_or_else(PoisonError::into_inner).iter().map(|(k, v)| (k.clone(), v.value.read())).collect()
}

trait AtomicRead<V> {
    fn read(&self) -> V;
}

impl AtomicRead<u64> for AtomicU64 {
    fn read(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

impl AtomicRead<i64> for AtomicI64 {
    fn read(&self) -> i64 {
        self.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EpochCount;

    #[test]
    fn group_counts_survivors_by_epoch_and_forgets_finished_tasks() {
        let reg = Registry::new();
        let a = reg.task_born(GroupKind::Named, "waiter", Some(Location::caller()));
        reg.set_epoch(3);
        let b = reg.task_born(GroupKind::Named, "waiter", None);
        let c = reg.task_born(GroupKind::Named, "waiter", None);
        drop(b);
        let stats = reg.group_stats();
        assert_eq!(stats.len(), 1);
        let g = &stats[0];
        assert_eq!((g.live, g.spawned, g.finished), (2, 3, 1));
        assert_eq!(g.live_by_epoch, vec![EpochCount { epoch: 0, count: 1 }, EpochCount { epoch: 3, count: 1 }]);
        assert!(g.location.as_deref().unwrap().contains("registry.rs:"));
        drop((a, c));
        assert_eq!(reg.group_stats()[0].live, 0);
    }

    #[test]
    fn registry_paths_are_shortened_to_the_crate() {
        let long = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/hyper-1.4.1/src/proto/h1/dispatch.rs";
        assert_eq!(short_path(long), "hyper-1.4.1/src/proto/h1/dispatch.rs");
        assert_eq!(short_path("src/main.rs"), "src/main.rs");
    }

    #[test]
    fn epochs_never_go_back() {
        let reg = Registry::new();
        reg.set_epoch(5);
        reg.set_epoch(2);
        assert_eq!(reg.epoch(), 5);
    }

    #[test]
    fn announce_replaces_same_name() {
        let reg = Registry::new();
        reg.announce(Announcement { name: "http".into(), addr: "a".into() });
        reg.announce(Announcement { name: "http".into(), addr: "b".into() });
        assert_eq!(reg.announced(), vec![Announcement { name: "http".into(), addr: "b".into() }]);
    }
}
