//! Live tasks by id, as tokio's task hooks see them (`--cfg tokio_unstable`).
//!
//! Every spawn and every end of a task passes through here, on whichever worker runs it,
//! so each takes exactly one lock: the shard of its id. The shard holds the task's entry
//! (its group, to name it in stall reports and task dumps) and, for a task counted by its
//! spawn location, its birth, in the shard's [`Births`] for that group. A snapshot sums a
//! location group's births over the shards, in time proportional to groups and epochs.
//! Tasks spawned through `hangcheck_runtime::spawn` are counted by their named group's
//! guard, which works on any runtime; here they only have an entry.

use std::collections::HashMap;
use std::panic::Location;
use std::sync::Mutex;

use super::births::{Births, Summary};
use super::{lock, Group, IntHash};
use crate::clock;

/// Shards, so that spawns on different workers rarely meet.
const SHARDS: usize = 16;

/// Entries direct-mapped by id in each shard. tokio numbers tasks in sequence, so the
/// tasks alive at once nearly always fall in distinct slots: a spawn and its end are an
/// index and a comparison. A slot still held by an older task sends the newer one to the
/// shard's map.
const SLOTS: usize = 512;

/// Spawn sites remembered per shard (direct-mapped by address); a miss asks the registry.
const SITES: usize = 32;

/// A live task's entry.
#[derive(Clone, Copy)]
struct Entry {
    group: &'static Group,
    /// Its key in the shard's births of its group; `None` for a task counted by name.
    birth: Option<u32>,
}

#[derive(Default)]
struct Shard {
    /// `SLOTS` slots once the shard is first used.
    slots: Vec<Option<(u64, Entry)>>,
    /// Entries whose slot was taken.
    overflow: HashMap<u64, Entry, IntHash>,
    /// Births of location tasks by [`Group::index`].
    births: Vec<Births>,
    /// Location groups by spawn site, by the address of tokio's `&'static Location`.
    sites: [Option<(usize, &'static Group)>; SITES],
}

pub(crate) struct Tasks {
    shards: [Mutex<Shard>; SHARDS],
}

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks { shards: std::array::from_fn(|_| Mutex::default()) }
    }
}

fn site_slot(address: usize) -> usize {
    // Locations are statics 8 bytes apart at least; a multiplicative hash spreads them.
    (address.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> (usize::BITS - SITES.trailing_zeros())) % SITES
}

impl Shard {
    #[inline]
    fn slot(id: u64) -> usize {
        (id / SHARDS as u64) as usize % SLOTS
    }

    #[inline]
    fn insert(&mut self, id: u64, entry: Entry) {
        if self.slots.is_empty() {
            self.slots.resize(SLOTS, None);
        }
        match &mut self.slots[Shard::slot(id)] {
            free @ None => *free = Some((id, entry)),
            Some(_) => {
                self.overflow.insert(id, entry);
            }
        }
    }

    #[inline]
    fn remove(&mut self, id: u64) -> Option<Entry> {
        if let Some(slot) = self.slots.get_mut(Shard::slot(id)) {
            if matches!(slot, Some((held, _)) if *held == id) {
                return slot.take().map(|(_, entry)| entry);
            }
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow.remove(&id)
    }

    fn get(&self, id: u64) -> Option<Entry> {
        match self.slots.get(Shard::slot(id)) {
            Some(Some((held, entry))) if *held == id => Some(*entry),
            _ => self.overflow.get(&id).copied(),
        }
    }
}

impl Tasks {
    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, Shard> {
        lock(&self.shards[(id as usize) % SHARDS])
    }

    /// A task spawned: counted in `named` (whose guard records its birth) or else in the
    /// location group of `site`, found through `site_group` the first time. Its group,
    /// and the instant of its birth if it was recorded here.
    #[inline]
    pub(crate) fn spawned(
        &self,
        id: u64,
        named: Option<&'static Group>,
        site: &'static Location<'static>,
        epoch: impl FnOnce() -> u64,
        site_group: impl FnOnce(&'static Location<'static>) -> &'static Group,
    ) -> (&'static Group, Option<u64>) {
        let mut shard = self.shard(id);
        let shard = &mut *shard;
        let (entry, at) = match named {
            Some(group) => (Entry { group, birth: None }, None),
            None => {
                let address = site as *const Location<'static> as usize;
                let slot = &mut shard.sites[site_slot(address)];
                let group = match *slot {
                    Some((a, group)) if a == address => group,
                    _ => {
                        let group = site_group(site);
                        *slot = Some((address, group));
                        group
                    }
                };
                let index = group.index as usize;
                if shard.births.len() <= index {
                    shard.births.resize_with(index + 1, Births::default);
                }
                // Read under the lock: births are linked in the order of their instants.
                let at = clock::now_ns();
                let birth = shard.births[index].add(at, epoch());
                (Entry { group, birth: Some(birth) }, Some(at))
            }
        };
        shard.insert(id, entry);
        (entry.group, at)
    }

    /// A task ended: its entry goes, and its birth if it was counted here. Its group, if
    /// it was known (blocking tasks end without having been spawned through the hook).
    #[inline]
    pub(crate) fn ended(&self, id: u64) -> Option<&'static Group> {
        let mut shard = self.shard(id);
        let entry = shard.remove(id)?;
        if let Some(birth) = entry.birth {
            shard.births[entry.group.index as usize].remove(birth);
        }
        Some(entry.group)
    }

    /// The group of a live task.
    pub(crate) fn group_of(&self, id: u64) -> Option<&'static Group> {
        self.shard(id).get(id).map(|e| e.group)
    }

    /// Adds each group's births kept here to its summary. Each shard's lock is held while
    /// its summaries are read: constant time per group and epoch, whatever the tasks.
    pub(crate) fn add_to(&self, groups: &[&'static Group], summaries: &mut [Summary]) {
        for shard in &self.shards {
            let shard = lock(shard);
            for (group, summary) in groups.iter().zip(summaries.iter_mut()) {
                if let Some(births) = shard.births.get(group.index as usize) {
                    births.add_to(summary);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EpochCount, GroupKind};

    fn group(key: &str) -> &'static Group {
        Box::leak(Box::new(Group::new(key, GroupKind::Location, None)))
    }

    fn summary(tasks: &Tasks, group: &'static Group) -> Summary {
        let mut summaries = vec![Summary::default()];
        tasks.add_to(&[group], &mut summaries);
        summaries.pop().unwrap()
    }

    #[test]
    fn a_task_whose_slot_is_held_by_an_older_one_is_kept_and_ended_all_the_same() {
        let tasks = Tasks::default();
        let (conn, named) = (group("src/main.rs:1"), group("waiter"));
        let site = Location::caller();
        let same_slot = (SHARDS * SLOTS) as u64;
        let spawn = |id, epoch, named| tasks.spawned(id, named, site, || epoch, |_| conn).0;
        // Task 1 holds its slot; 1 + SHARDS * SLOTS maps to the same slot and shard.
        assert!(std::ptr::eq(spawn(1, 1, None), conn));
        assert!(std::ptr::eq(spawn(1 + same_slot, 2, None), conn));
        assert!(std::ptr::eq(spawn(2, 2, Some(named)), named));
        let s = summary(&tasks, conn);
        assert_eq!((s.live, s.added), (2, 2));
        assert_eq!(s.by_epoch, vec![EpochCount { epoch: 1, count: 1 }, EpochCount { epoch: 2, count: 1 }]);
        assert_eq!(summary(&tasks, named).live, 0, "a named task's birth is its guard's");
        assert!(std::ptr::eq(tasks.group_of(1 + same_slot).unwrap(), conn));
        assert!(std::ptr::eq(tasks.group_of(2).unwrap(), named));

        assert!(std::ptr::eq(tasks.ended(1 + same_slot).unwrap(), conn));
        assert!(tasks.ended(1 + same_slot).is_none(), "an end is seen once");
        assert!(tasks.ended(3).is_none(), "a task never seen spawned (a blocking task)");
        assert!(tasks.ended(2).is_some());
        let s = summary(&tasks, conn);
        assert_eq!((s.live, s.removed, s.by_epoch), (1, 1, vec![EpochCount { epoch: 1, count: 1 }]));
        assert!(tasks.ended(1).is_some());
        assert!(tasks.group_of(1).is_none());
        assert_eq!(summary(&tasks, conn).live, 0);
    }
}
