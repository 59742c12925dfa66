//! Operations: in-flight units of work with a kind and a key (a stream per session, a
//! request per user), each held by a guard.
//!
//! Two questions matter and counts alone cannot answer them: is an operation still in
//! flight after the test that began it ended, and were two in flight for the same key at
//! once (a new stream started before the old one was cancelled)? The second is often
//! brief, gone by the time anyone looks, so it is watched when it happens: starting an
//! operation next to one in flight with the same key opens an overlap, and the overlap is
//! judged by how long it lasts and how it ends. A correct handover — the new stream
//! starts, tells the old one to stop, and the old one ends a few milliseconds later —
//! closes within the grace (`HANGCHECK_OVERLAP_GRACE_MS`, 100 ms by default) with the old
//! one ending, and is only counted. One that lasts longer, or that ends with the *new*
//! one finishing while the old one runs on, is recorded with its length and the epoch it
//! began in; one still open past the grace is reported open.
//!
//! Keys are hashed before they are stored (a stable 64-bit SipHash, shown as `#` and 16
//! hex digits), so snapshots carry no user data; [`op_plain`](crate::op_plain) opts out.
//!
//! Starting an operation takes no global lock and allocates nothing: each thread
//! remembers the kinds it started lately (as spawns remember their groups), a hashed key
//! is stored as its 64-bit hash, and only the kind's own lock is taken.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::protocol::{EpochCount, OpStats, Overlap, RecordedKind};
use crate::recorder::{self, NameKind};

/// How many distinct overlapping keys a kind remembers.
const MAX_OVERLAPS: usize = 64;

/// An overlap shorter than this is a handover, not a finding (the runner passes its
/// `overlap-grace`).
const DEFAULT_GRACE: Duration = Duration::from_millis(100);

fn grace_from_env() -> Duration {
    std::env::var(crate::protocol::OVERLAP_GRACE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_GRACE, Duration::from_millis)
}

thread_local! {
    /// The kinds this thread started operations of lately, with their registry's number.
    static LAST_KINDS: RefCell<Vec<(u64, &'static OpKind)>> = const { RefCell::new(Vec::new()) };
}

/// Numbers registries of kinds, so that a thread's remembered kinds are never another's.
static REGISTRIES: AtomicU64 = AtomicU64::new(0);

/// An operation's key as stored: its hash, or (for `op_plain`) the key itself. Hashes
/// order as their shown forms do (fixed-width hexadecimal).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Key {
    Hashed(u64),
    Plain(String),
}

impl Key {
    /// The stored form of `key`: hashed unless `plain`.
    pub(crate) fn new(key: &str, plain: bool) -> Key {
        if plain {
            Key::Plain(key.to_owned())
        } else {
            Key::Hashed(key_hash(key))
        }
    }

    /// Its hash, for the flight recorder.
    fn hash64(&self) -> u64 {
        match self {
            Key::Hashed(h) => *h,
            Key::Plain(key) => key_hash(key),
        }
    }

    /// As snapshots show it: `#` and 16 hex digits, or the plain key.
    fn shown(&self) -> String {
        match self {
            Key::Hashed(h) => format!("#{h:016x}"),
            Key::Plain(key) => key.clone(),
        }
    }
}

/// One in-flight operation.
struct Record {
    key: Key,
    born: Instant,
    epoch: u64,
    budget: Option<Duration>,
}

/// The operations of one kind.
pub(crate) struct OpKind {
    name: String,
    /// The kind's name's number in the flight recorder.
    recorder_name: u32,
    grace: Duration,
    started: AtomicU64,
    finished: AtomicU64,
    slow_finished: AtomicU64,
    state: Mutex<KindState>,
}

#[derive(Default)]
struct KindState {
    live: Slab<Record>,
    /// In-flight operations per key.
    per_key: HashMap<Key, KeyState>,
    /// Overlaps that lasted longer than the grace, by key.
    overlaps: BTreeMap<Key, Recorded>,
    overlap_events: u64,
    handovers: u64,
    longest_handover: Duration,
}

/// One key's operations in flight.
#[derive(Default)]
struct KeyState {
    in_flight: u64,
    /// When the newest of them started.
    newest: Option<Instant>,
    /// While two or more are in flight: since when, in which epoch, and the most at once.
    open: Option<(Instant, u64, u64)>,
    /// During the open overlap, the newest operation ended while an older one ran on:
    /// the older one was never stopped, so this is no handover.
    newest_ended_first: bool,
}

/// A key's overlaps past the grace.
#[derive(Default)]
struct Recorded {
    max_in_flight: u64,
    epochs: Vec<u64>,
    longest: Duration,
}

/// The registry of operation kinds.
pub(crate) struct Ops {
    /// Its number (see [`LAST_KINDS`]).
    id: u64,
    /// Kinds by name; leaked, as they live as long as the process.
    kinds: RwLock<BTreeMap<String, &'static OpKind>>,
    grace: Duration,
}

impl Default for Ops {
    fn default() -> Ops {
        Ops::with_grace(grace_from_env())
    }
}

/// The guard of an in-flight operation; see [`crate::op`].
pub(crate) struct OpGuard {
    kind: &'static OpKind,
    slot: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stable hash of a key: `DefaultHasher::new()` is SipHash with fixed keys, so the
/// same key hashes the same in every run and can be followed across runs unshown.
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// A key as snapshots show it: hashed unless `plain`.
#[cfg(test)]
pub(crate) fn key_of(key: &str, plain: bool) -> String {
    Key::new(key, plain).shown()
}

impl Ops {
    fn with_grace(grace: Duration) -> Ops {
        Ops { id: REGISTRIES.fetch_add(1, Ordering::Relaxed), kinds: RwLock::default(), grace }
    }

    /// The kind `name`: from this thread's recent kinds (a pointer and a short string
    /// comparison), else from the registry, created on first use.
    fn kind(&self, name: &str) -> &'static OpKind {
        let cached = LAST_KINDS
            .with(|last| last.borrow().iter().find(|(id, k)| *id == self.id && k.name == name).map(|&(_, k)| k));
        if let Some(kind) = cached {
            return kind;
        }
        let known = self.kinds.read().unwrap_or_else(PoisonError::into_inner).get(name).copied();
        let kind = known.unwrap_or_else(|| {
            let mut kinds = self.kinds.write().unwrap_or_else(PoisonError::into_inner);
            kinds.entry(name.to_owned()).or_insert_with(|| {
                Box::leak(Box::new(OpKind {
                    name: name.to_owned(),
                    recorder_name: recorder::intern(NameKind::Op, name, None),
                    grace: self.grace,
                    started: AtomicU64::new(0),
                    finished: AtomicU64::new(0),
                    slow_finished: AtomicU64::new(0),
                    state: Mutex::default(),
                }))
            })
        });
        LAST_KINDS.with(|last| {
            let mut last = last.borrow_mut();
            if last.len() >= 8 {
                last.remove(0);
            }
            last.push((self.id, kind));
        });
        kind
    }

    /// Starts an operation; opens an overlap if one with the same key is in flight.
    pub(crate) fn start(&self, kind: &str, key: Key, epoch: u64) -> OpGuard {
        let kind = self.kind(kind);
        kind.started.fetch_add(1, Ordering::Relaxed);
        recorder::record(RecordedKind::OpStart, kind.recorder_name, recorder::current_task(), key.hash64());
        let mut state = lock(&kind.state);
        let now = Instant::now();
        let entry = state.per_key.entry(key.clone()).or_default();
        entry.in_flight += 1;
        entry.newest = Some(now);
        let in_flight = entry.in_flight;
        if in_flight >= 2 {
            let open = entry.open.get_or_insert((now, epoch, 0));
            open.2 = open.2.max(in_flight);
            state.overlap_events += 1;
        }
        let slot = state.live.insert(Record { key, born: now, epoch, budget: None });
        drop(state);
        OpGuard { kind, slot }
    }

    /// Statistics of every kind, by name.
    pub(crate) fn stats(&self) -> Vec<OpStats> {
        let kinds: Vec<&'static OpKind> =
            self.kinds.read().unwrap_or_else(PoisonError::into_inner).values().copied().collect();
        let now = Instant::now();
        kinds.iter().map(|k| k.stats(now)).collect()
    }
}

impl OpKind {
    fn stats(&self, now: Instant) -> OpStats {
        let state = lock(&self.state);
        let mut overlaps: Vec<Overlap> = state
            .overlaps
            .iter()
            .map(|(key, r)| Overlap {
                key: key.shown(),
                max_in_flight: r.max_in_flight,
                epochs: r.epochs.clone(),
                longest_ms: r.longest.as_millis() as u64,
                open_ms: None,
            })
            .collect();
        // Overlaps still open past the grace are findings already; younger ones may yet
        // turn out to be handovers.
        for (key, k) in &state.per_key {
            let Some((since, epoch, max)) = k.open else { continue };
            let age = now.saturating_duration_since(since);
            if age <= self.grace {
                continue;
            }
            let full = overlaps.len() >= MAX_OVERLAPS;
            let key = key.shown();
            match overlaps.iter_mut().find(|o| o.key == key) {
                Some(o) => {
                    o.max_in_flight = o.max_in_flight.max(max);
                    if !o.epochs.contains(&epoch) {
                        o.epochs.push(epoch);
                    }
                    o.open_ms = Some(age.as_millis() as u64);
                }
                None if !full => overlaps.push(Overlap {
                    key,
                    max_in_flight: max,
                    epochs: vec![epoch],
                    longest_ms: 0,
                    open_ms: Some(age.as_millis() as u64),
                }),
                None => {}
            }
        }
        let mut by_epoch: BTreeMap<u64, u64> = BTreeMap::new();
        let mut oldest: Option<Instant> = None;
        let mut slow = 0;
        for (_, r) in state.live.iter() {
            *by_epoch.entry(r.epoch).or_default() += 1;
            oldest = Some(oldest.map_or(r.born, |o| o.min(r.born)));
            if r.budget.is_some_and(|b| now.saturating_duration_since(r.born) > b) {
                slow += 1;
            }
        }
        OpStats {
            kind: self.name.clone(),
            in_flight: state.live.len() as u64,
            started: self.started.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
            oldest_age_ms: oldest.map(|o| now.saturating_duration_since(o).as_millis() as u64),
            live_by_epoch: by_epoch.into_iter().map(|(epoch, count)| EpochCount { epoch, count }).collect(),
            slow_in_flight: slow,
            slow_finished: self.slow_finished.load(Ordering::Relaxed),
            overlap_events: state.overlap_events,
            overlaps,
            handovers: state.handovers,
            longest_handover_ms: state.longest_handover.as_millis() as u64,
            overlap_grace_ms: self.grace.as_millis() as u64,
        }
    }
}

impl OpGuard {
    /// Gives the operation a time budget; outliving it makes it slow.
    pub(crate) fn set_budget(&self, budget: Duration) {
        if let Some(r) = lock(&self.kind.state).live.get_mut(self.slot) {
            r.budget = Some(budget);
        }
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.kind.state);
        let Some(r) = state.live.try_remove(self.slot) else { return };
        let mut closed = None;
        if let Some(k) = state.per_key.get_mut(&r.key) {
            k.in_flight -= 1;
            if k.open.is_some() && k.newest == Some(r.born) {
                k.newest_ended_first = true;
            }
            if k.in_flight <= 1 {
                closed = k.open.take().map(|open| (open, std::mem::take(&mut k.newest_ended_first)));
            }
            if k.in_flight == 0 {
                state.per_key.remove(&r.key);
            }
        }
        if let Some(((since, epoch, max), newest_ended_first)) = closed {
            let lasted = since.elapsed();
            // A handover ends with the older operations going away and the newest one
            // left running. When the newest ends first, an older one was never stopped.
            if !newest_ended_first && lasted <= self.kind.grace {
                state.handovers += 1;
                state.longest_handover = state.longest_handover.max(lasted);
            } else if state.overlaps.contains_key(&r.key) || state.overlaps.len() < MAX_OVERLAPS {
                let recorded = state.overlaps.entry(r.key.clone()).or_default();
                recorded.max_in_flight = recorded.max_in_flight.max(max);
                recorded.longest = recorded.longest.max(lasted);
                if !recorded.epochs.contains(&epoch) {
                    recorded.epochs.push(epoch);
                }
            }
        }
        drop(state);
        recorder::record(RecordedKind::OpEnd, self.kind.recorder_name, recorder::current_task(), r.key.hash64());
        self.kind.finished.fetch_add(1, Ordering::Relaxed);
        if r.budget.is_some_and(|b| r.born.elapsed() > b) {
            self.kind.slow_finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlap_past_the_grace_is_recorded_even_if_it_is_gone_by_the_snapshot() {
        let ops = Ops::with_grace(Duration::ZERO);
        let first = ops.start("stream", Key::new("session-1", false), 3);
        let second = ops.start("stream", Key::new("session-1", false), 3);
        let _other = ops.start("stream", Key::new("session-2", false), 3);
        std::thread::sleep(Duration::from_millis(2));
        drop(first);
        drop(second);
        let stats = &ops.stats()[0];
        assert_eq!((stats.in_flight, stats.started, stats.finished), (1, 3, 2));
        assert_eq!(stats.overlap_events, 1);
        assert_eq!(stats.overlaps.len(), 1);
        let overlap = &stats.overlaps[0];
        assert_eq!((overlap.max_in_flight, overlap.epochs.clone()), (2, vec![3]));
        assert!(overlap.longest_ms >= 2 && overlap.open_ms.is_none(), "{overlap:?}");
        assert!(overlap.key.starts_with('#') && !overlap.key.contains("session"), "{}", overlap.key);
    }

    #[test]
    fn an_overlap_within_the_grace_is_a_handover_and_an_open_one_past_it_is_reported_open() {
        let ops = Ops::with_grace(Duration::from_secs(3600));
        let old = ops.start("stream", Key::new("s", true), 1);
        std::thread::sleep(Duration::from_millis(1));
        let new = ops.start("stream", Key::new("s", true), 1);
        drop(old);
        let stats = &ops.stats()[0];
        assert!(stats.overlaps.is_empty(), "{stats:?}");
        assert_eq!(stats.handovers, 1);
        drop(new);

        // Chained handovers (three in flight at once, the older two told to stop) are
        // handovers too.
        let a = ops.start("stream", Key::new("u", true), 3);
        std::thread::sleep(Duration::from_millis(1));
        let b = ops.start("stream", Key::new("u", true), 3);
        std::thread::sleep(Duration::from_millis(1));
        let c = ops.start("stream", Key::new("u", true), 3);
        drop(b);
        drop(a);
        assert!(ops.stats()[0].overlaps.is_empty());
        assert_eq!(ops.stats()[0].handovers, 2);
        drop(c);

        // The new one ending first leaves the old one running: never a handover.
        let old = ops.start("stream", Key::new("t", true), 2);
        std::thread::sleep(Duration::from_millis(1));
        drop(ops.start("stream", Key::new("t", true), 2));
        let stats = &ops.stats()[0];
        assert_eq!(stats.overlaps.len(), 1, "{stats:?}");
        assert_eq!(stats.overlaps[0].epochs, vec![2]);
        drop(old);

        let ops = Ops::with_grace(Duration::ZERO);
        let _a = ops.start("stream", Key::new("s", true), 4);
        let _b = ops.start("stream", Key::new("s", true), 4);
        std::thread::sleep(Duration::from_millis(2));
        let stats = &ops.stats()[0];
        assert_eq!(stats.overlaps.len(), 1);
        assert!(stats.overlaps[0].open_ms.is_some_and(|ms| ms >= 2), "{stats:?}");
        assert_eq!(stats.overlaps[0].epochs, vec![4]);
    }

    #[test]
    fn keys_are_hashed_stably_unless_plain() {
        assert_eq!(key_of("alice", false), key_of("alice", false));
        assert_ne!(key_of("alice", false), key_of("bob", false));
        assert_eq!(key_of("alice", true), "alice");
    }

    #[test]
    fn an_operation_past_its_budget_is_slow() {
        let ops = Ops::default();
        let op = ops.start("query", Key::new("k", true), 0);
        op.set_budget(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(ops.stats()[0].slow_in_flight, 1);
        drop(op);
        let stats = &ops.stats()[0];
        assert_eq!((stats.slow_in_flight, stats.slow_finished), (0, 1));
    }
}
