//! The flight recorder: the last few thousand things the server did, kept in a
//! fixed-size ring so that a hang's evidence says how the server got where its stacks
//! show it.
//!
//! Metadata only: task spawned and ended (group, task id, epoch), operation started and
//! ended (kind, hashed key, the task that ran it), a stall caught, a counter or gauge
//! changed. Each is five words in a slot of a ring allocated once, when the agent starts
//! ([`RECORDER_EVENTS_ENV`] slots; `0` turns it off): recording one takes an atomic
//! increment, a coarse clock read and five relaxed stores, never a lock or an allocation.
//! Names (groups, operation kinds, counters) are interned once, when the group or kind is
//! made, and stored as a number.
//!
//! Each slot is a seqlock: the writer marks it odd while it writes and even (with the
//! event's sequence number) after, so the agent thread, reading the ring while workers
//! write it, keeps only slots that were whole and of the lap it expects. An event
//! overwritten while being read is dropped, never torn.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::clock;
use crate::protocol::{Recorded, RecordedEvent, RecordedKind};

use crate::protocol::{RECORDER_DEFAULT_EVENTS, RECORDER_EVENTS_ENV};

/// What a name stands for, so the reader knows which field it fills.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum NameKind {
    /// A task group: key and location.
    Group,
    /// An operation kind.
    Op,
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
}

struct Name {
    kind: NameKind,
    key: String,
    location: Option<String>,
}

/// Names by number, interned when a group, kind, counter or gauge is made (never on the
/// hot path).
static NAMES: Mutex<Vec<Name>> = Mutex::new(Vec::new());

/// A name's number, for [`record`].
pub(crate) fn intern(kind: NameKind, key: &str, location: Option<&str>) -> u32 {
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    names.push(Name { kind, key: key.to_owned(), location: location.map(str::to_owned) });
    (names.len() - 1) as u32
}

/// One slot: the sequence word and the event's four.
#[derive(Default)]
struct Slot {
    seq: AtomicU64,
    at_ns: AtomicU64,
    /// Kind in the top byte, name number in the low 32 bits.
    head: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

struct Ring {
    slots: Box<[Slot]>,
    next: AtomicU64,
    started_ns: u64,
}

static RING: OnceLock<Ring> = OnceLock::new();

/// Starts the recorder with `capacity` slots; `0` leaves it off. Called once, by the
/// agent as it starts; a second call changes nothing.
pub(crate) fn start(capacity: usize) {
    if capacity == 0 {
        return;
    }
    let _ = RING.get_or_init(|| Ring::new(capacity));
}

/// Slots in the ring; 0 when the recorder is off.
pub(crate) fn capacity() -> usize {
    RING.get().map_or(0, |r| r.slots.len())
}

/// The capacity asked of the runner, or the default.
pub(crate) fn capacity_from_env() -> usize {
    std::env::var(RECORDER_EVENTS_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(RECORDER_DEFAULT_EVENTS)
}

fn code(kind: RecordedKind) -> u64 {
    match kind {
        RecordedKind::TaskSpawn => 1,
        RecordedKind::TaskEnd => 2,
        RecordedKind::OpStart => 3,
        RecordedKind::OpEnd => 4,
        RecordedKind::Stall => 5,
        RecordedKind::Counter => 6,
        RecordedKind::Gauge => 7,
    }
}

fn kind_of(code: u64) -> Option<RecordedKind> {
    Some(match code {
        1 => RecordedKind::TaskSpawn,
        2 => RecordedKind::TaskEnd,
        3 => RecordedKind::OpStart,
        4 => RecordedKind::OpEnd,
        5 => RecordedKind::Stall,
        6 => RecordedKind::Counter,
        7 => RecordedKind::Gauge,
        _ => return None,
    })
}

/// Records one event: `name` from [`intern`]; `a` the task id; `b` the epoch (a spawn),
/// the key's hash (an operation), the value (a counter or gauge, as its bits) or the
/// thread id (a stall). Does nothing when the recorder is off.
#[inline]
pub(crate) fn record(kind: RecordedKind, name: u32, a: u64, b: u64) {
    if let Some(ring) = RING.get() {
        ring.record(kind, name, a, b, clock::now_ns());
    }
}

/// [`record`] at `at_ns`, a [`clock::now_ns`] reading the caller has just taken (a spawn
/// reads the clock for the task's birth; one reading serves both).
#[cfg_attr(not(tokio_unstable), allow(dead_code))]
#[inline]
pub(crate) fn record_at(kind: RecordedKind, name: u32, a: u64, b: u64, at_ns: u64) {
    if let Some(ring) = RING.get() {
        ring.record(kind, name, a, b, at_ns);
    }
}

/// Everything in the ring now, oldest first, with the names filled in.
pub(crate) fn read() -> Recorded {
    RING.get().map(Ring::read).unwrap_or_default()
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            next: AtomicU64::new(0),
            started_ns: clock::now_ns(),
        }
    }

    #[inline]
    fn record(&self, kind: RecordedKind, name: u32, a: u64, b: u64, at_ns: u64) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(n % self.slots.len() as u64) as usize];
        slot.seq.store(2 * n + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        slot.at_ns.store(at_ns, Ordering::Relaxed);
        slot.head.store(code(kind) << 56 | u64::from(name), Ordering::Relaxed);
        slot.a.store(a, Ordering::Relaxed);
        slot.b.store(b, Ordering::Relaxed);
        slot.seq.store(2 * n + 2, Ordering::Release);
    }

    /// Everything in the ring now, oldest first, with the names filled in.
    fn read(&self) -> Recorded {
        let ring = self;
        let capacity = ring.slots.len() as u64;
        let end = ring.next.load(Ordering::Acquire);
        let raw: Vec<(u64, u64, u64, u64)> = (end.saturating_sub(capacity)..end)
            .filter_map(|n| {
                let slot = &ring.slots[(n % capacity) as usize];
                let seq = slot.seq.load(Ordering::Acquire);
                let event = (
                    slot.at_ns.load(Ordering::Relaxed),
                    slot.head.load(Ordering::Relaxed),
                    slot.a.load(Ordering::Relaxed),
                    slot.b.load(Ordering::Relaxed),
                );
                fence(Ordering::Acquire);
                (seq == 2 * n + 2 && slot.seq.load(Ordering::Relaxed) == seq).then_some(event)
            })
            .collect();
        let now_ns = clock::now_ns();
        let names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        let events = raw
            .into_iter()
            .filter_map(|(at_ns, head, a, b)| {
                let kind = kind_of(head >> 56)?;
                let name = names.get((head & u64::from(u32::MAX)) as usize);
                let mut e = RecordedEvent {
                    at_us: at_ns.saturating_sub(ring.started_ns) / 1000,
                    event: kind,
                    task: (a != 0).then_some(a),
                    ..RecordedEvent::default()
                };
                match (kind, name) {
                    (RecordedKind::TaskSpawn | RecordedKind::TaskEnd, Some(n)) if n.kind == NameKind::Group => {
                        e.group = Some(n.key.clone());
                        e.location = n.location.clone();
                        e.epoch = (kind == RecordedKind::TaskSpawn).then_some(b);
                    }
                    (RecordedKind::OpStart | RecordedKind::OpEnd, Some(n)) if n.kind == NameKind::Op => {
                        e.op = Some(n.key.clone());
                        e.key = Some(format!("#{b:016x}"));
                    }
                    (RecordedKind::Counter | RecordedKind::Gauge, Some(n)) => {
                        e.name = Some(n.key.clone());
                        e.value = Some(b as i64);
                    }
                    (RecordedKind::Stall, _) => e.tid = Some(b as u32),
                    _ => {}
                }
                Some(e)
            })
            .collect();
        Recorded { capacity, recorded: end, now_us: now_ns.saturating_sub(ring.started_ns) / 1000, events }
    }
}

/// The id of the task running on this thread, or 0 outside a task.
pub(crate) fn current_task() -> u64 {
    tokio::task::try_id().map_or(0, |id| task_id(&id))
}

/// A tokio task id as the number tokio prints: hashing one writes its u64, and a hasher
/// that keeps what it is given reads it without allocating.
pub(crate) fn task_id(id: &tokio::task::Id) -> u64 {
    use std::hash::{Hash, Hasher};

    #[derive(Default)]
    struct IdReader(u64);

    impl Hasher for IdReader {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }

    let mut reader = IdReader::default();
    id.hash(&mut reader);
    reader.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::key_hash;

    #[test]
    fn the_ring_keeps_the_last_events_whole_and_in_order_with_their_names() {
        // A ring of its own: the process's ring takes what other tests record.
        let ring = Ring::new(8);
        let record = |kind, name, a, b| ring.record(kind, name, a, b, clock::now_ns());
        let group = intern(NameKind::Group, "waiter", Some("src/main.rs:112"));
        let op = intern(NameKind::Op, "stream", None);
        let counter = intern(NameKind::Counter, "disconnects", None);
        for task in 1..=6 {
            record(RecordedKind::TaskSpawn, group, task, 3);
        }
        record(RecordedKind::OpStart, op, 5, key_hash("session-1"));
        record(RecordedKind::Counter, counter, 0, 7);
        record(RecordedKind::TaskEnd, group, 6, 0);
        let recorded = ring.read();
        assert_eq!((recorded.capacity, recorded.recorded), (8, 9));
        // Nine recorded into eight slots: the first spawn is gone.
        let tasks: Vec<Option<u64>> = recorded.events.iter().map(|e| e.task).collect();
        assert_eq!(tasks, vec![Some(2), Some(3), Some(4), Some(5), Some(6), Some(5), None, Some(6)]);
        let spawn = &recorded.events[0];
        assert_eq!(spawn.event, RecordedKind::TaskSpawn);
        assert_eq!(
            (spawn.group.as_deref(), spawn.location.as_deref(), spawn.epoch),
            (Some("waiter"), Some("src/main.rs:112"), Some(3))
        );
        let op = &recorded.events[5];
        assert_eq!((op.event, op.op.as_deref()), (RecordedKind::OpStart, Some("stream")));
        assert_eq!(op.key, Some(crate::ops::key_of("session-1", false)), "the key as snapshots show it");
        assert_eq!((recorded.events[6].name.as_deref(), recorded.events[6].value), (Some("disconnects"), Some(7)));
        assert!(recorded.events.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        assert!(recorded.now_us >= recorded.events[7].at_us);
    }
}
