//! Operations: in-flight units of work with a kind and a key (a stream per session, a
//! request per user), each held by a guard.
//!
//! Two questions matter and counts alone cannot answer them: is an operation still in
//! flight after the test that began it ended, and were two in flight for the same key at
//! once (a new stream started before the old one was cancelled)? The second is often
//! brief, gone by the time anyone looks, so it is caught when it happens: starting an
//! operation checks for one already in flight with the same key, and records the overlap
//! with the epoch it happened in.
//!
//! Keys are hashed before they are stored (a stable 64-bit SipHash, shown as `#` and 16
//! hex digits), so snapshots carry no user data; [`op_plain`](crate::op_plain) opts out.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::protocol::{EpochCount, OpStats, Overlap, RecordedKind};
use crate::recorder::{self, NameKind};

/// How many distinct overlapping keys a kind remembers.
const MAX_OVERLAPS: usize = 64;

/// One in-flight operation.
struct Record {
    key: String,
    born: Instant,
    epoch: u64,
    budget: Option<Duration>,
}

/// The operations of one kind.
pub(crate) struct OpKind {
    name: String,
    /// The kind's name's number in the flight recorder.
    recorder_name: u32,
    started: AtomicU64,
    finished: AtomicU64,
    slow_finished: AtomicU64,
    state: Mutex<KindState>,
}

#[derive(Default)]
struct KindState {
    live: Slab<Record>,
    /// In-flight count per key.
    per_key: HashMap<String, u64>,
    /// Overlaps by key: (how many were in flight at worst, the epochs they happened in).
    overlaps: BTreeMap<String, (u64, Vec<u64>)>,
    overlap_events: u64,
}

/// The registry of operation kinds.
#[derive(Default)]
pub(crate) struct Ops {
    kinds: Mutex<BTreeMap<String, Arc<OpKind>>>,
}

/// The guard of an in-flight operation; see [`crate::op`].
pub(crate) struct OpGuard {
    kind: Arc<OpKind>,
    slot: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stored form of a key: hashed unless `plain`.
pub(crate) fn key_of(key: &str, plain: bool) -> String {
    if plain {
        return key.to_owned();
    }
    // DefaultHasher::new() is SipHash with fixed keys: the same key hashes the same in
    // every run, so a key can be followed across runs without being shown.
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    format!("#{:016x}", h.finish())
}

impl Ops {
    fn kind(&self, name: &str) -> Arc<OpKind> {
        let mut kinds = lock(&self.kinds);
        Arc::clone(kinds.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(OpKind {
                name: name.to_owned(),
                recorder_name: recorder::intern(NameKind::Op, name, None),
                started: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                slow_finished: AtomicU64::new(0),
                state: Mutex::default(),
            })
        }))
    }

    /// Starts an operation; records an overlap if one with the same key is in flight.
    pub(crate) fn start(&self, kind: &str, key: String, epoch: u64) -> OpGuard {
        let kind = self.kind(kind);
        kind.started.fetch_add(1, Ordering::Relaxed);
        recorder::record(RecordedKind::OpStart, kind.recorder_name, recorder::current_task(), recorder::key_hash(&key));
        let mut state = lock(&kind.state);
        let in_flight = state.per_key.entry(key.clone()).or_default();
        *in_flight += 1;
        let now_in_flight = *in_flight;
        if now_in_flight >= 2 {
            state.overlap_events += 1;
            let known = state.overlaps.contains_key(&key);
            if known || state.overlaps.len() < MAX_OVERLAPS {
                let entry = state.overlaps.entry(key.clone()).or_insert((0, Vec::new()));
                entry.0 = entry.0.max(now_in_flight);
                if !entry.1.contains(&epoch) {
                    entry.1.push(epoch);
                }
            }
        }
        let slot = state.live.insert(Record { key, born: Instant::now(), epoch, budget: None });
        drop(state);
        OpGuard { kind, slot }
    }

    /// Statistics of every kind, by name.
    pub(crate) fn stats(&self) -> Vec<OpStats> {
        let kinds: Vec<Arc<OpKind>> = lock(&self.kinds).values().cloned().collect();
        let now = Instant::now();
        kinds.iter().map(|k| k.stats(now)).collect()
    }
}

impl OpKind {
    fn stats(&self, now: Instant) -> OpStats {
        let state = lock(&self.state);
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
            overlaps: state
                .overlaps
                .iter()
                .map(|(key, (max, epochs))| Overlap { key: key.clone(), max_in_flight: *max, epochs: epochs.clone() })
                .collect(),
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
        if let Some(n) = state.per_key.get_mut(&r.key) {
            *n -= 1;
            if *n == 0 {
                state.per_key.remove(&r.key);
            }
        }
        drop(state);
        let key = recorder::key_hash(&r.key);
        recorder::record(RecordedKind::OpEnd, self.kind.recorder_name, recorder::current_task(), key);
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
    fn an_overlap_is_recorded_when_it_happens_even_if_it_is_gone_by_the_snapshot() {
        let ops = Ops::default();
        let first = ops.start("stream", key_of("session-1", false), 3);
        let second = ops.start("stream", key_of("session-1", false), 3);
        let _other = ops.start("stream", key_of("session-2", false), 3);
        drop(first);
        drop(second);
        let stats = &ops.stats()[0];
        assert_eq!((stats.in_flight, stats.started, stats.finished), (1, 3, 2));
        assert_eq!(stats.overlap_events, 1);
        assert_eq!(stats.overlaps.len(), 1);
        let overlap = &stats.overlaps[0];
        assert_eq!((overlap.max_in_flight, overlap.epochs.clone()), (2, vec![3]));
        assert!(overlap.key.starts_with('#') && !overlap.key.contains("session"), "{}", overlap.key);
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
        let op = ops.start("query", "k".into(), 0);
        op.set_budget(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(ops.stats()[0].slow_in_flight, 1);
        drop(op);
        let stats = &ops.stats()[0];
        assert_eq!((stats.slow_in_flight, stats.slow_finished), (0, 1));
    }
}
