//! The births of live tasks, kept so that a snapshot reads them in time proportional to
//! the epochs they span, not to the tasks.
//!
//! A snapshot asks three things of a group's live tasks: how many there are, how many
//! were born in each epoch (test), and how old the oldest is. Counting them one by one
//! at each snapshot made a snapshot of 100,000 tasks cost a millisecond; here the answers
//! are kept up to date as tasks come and go:
//! - the records are linked in birth order, so the oldest is the first, and a task that
//!   ends is unlinked from wherever it is, in constant time;
//! - live counts per epoch are a short list sorted by epoch; a birth is nearly always in
//!   the newest epoch (its last entry), so adding and removing stay constant in practice.
//!
//! Birth order is the order of [`Births::add`] calls, which their owner serialises (a
//! lock), and each birth's instant is read inside that lock from the monotonic clock, so
//! the first record is also the oldest.

use slab::Slab;

use crate::protocol::EpochCount;

/// No record: the end of the list.
const NIL: u32 = u32::MAX;

/// One live task's birth, linked to its neighbours in birth order.
struct Record {
    /// [`crate::clock::now_ns`] at the birth.
    at: u64,
    epoch: u64,
    older: u32,
    younger: u32,
}

/// The births of live tasks: O(1) to add and remove, O(epochs) to summarise.
pub(crate) struct Births {
    records: Slab<Record>,
    oldest: u32,
    youngest: u32,
    /// Live counts by epoch, ascending; no zero counts.
    by_epoch: Vec<EpochCount>,
    /// Births and ends so far.
    added: u64,
    removed: u64,
}

impl Default for Births {
    fn default() -> Births {
        Births { records: Slab::new(), oldest: NIL, youngest: NIL, by_epoch: Vec::new(), added: 0, removed: 0 }
    }
}

/// What a snapshot reads of one or more [`Births`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) live: u64,
    pub(crate) added: u64,
    pub(crate) removed: u64,
    /// The oldest live task's birth instant.
    pub(crate) oldest_at: Option<u64>,
    /// Live counts by epoch, ascending.
    pub(crate) by_epoch: Vec<EpochCount>,
}

impl Births {
    /// Records a birth at `at` (not before any earlier one's) in `epoch`; the key ends it.
    #[inline(always)]
    pub(crate) fn add(&mut self, at: u64, epoch: u64) -> u32 {
        let key = self.records.insert(Record { at, epoch, older: self.youngest, younger: NIL }) as u32;
        match self.records.get_mut(self.youngest as usize) {
            Some(youngest) => youngest.younger = key,
            None => self.oldest = key,
        }
        self.youngest = key;
        match self.by_epoch.last_mut() {
            Some(last) if last.epoch == epoch => last.count += 1,
            Some(last) if last.epoch > epoch => match self.by_epoch.binary_search_by_key(&epoch, |e| e.epoch) {
                Ok(i) => self.by_epoch[i].count += 1,
                Err(i) => self.by_epoch.insert(i, EpochCount { epoch, count: 1 }),
            },
            _ => self.by_epoch.push(EpochCount { epoch, count: 1 }),
        }
        self.added += 1;
        key
    }

    /// Ends the record `key` from [`Births::add`]; false if there is none.
    #[inline(always)]
    pub(crate) fn remove(&mut self, key: u32) -> bool {
        let Some(record) = self.records.try_remove(key as usize) else { return false };
        match self.records.get_mut(record.older as usize) {
            Some(older) => older.younger = record.younger,
            None => self.oldest = record.younger,
        }
        match self.records.get_mut(record.younger as usize) {
            Some(younger) => younger.older = record.older,
            None => self.youngest = record.older,
        }
        let i = match self.by_epoch.last() {
            Some(last) if last.epoch == record.epoch => self.by_epoch.len() - 1,
            _ => match self.by_epoch.binary_search_by_key(&record.epoch, |e| e.epoch) {
                Ok(i) => i,
                // Every record is counted in its epoch: unreachable, and harmless.
                Err(_) => return true,
            },
        };
        self.by_epoch[i].count -= 1;
        if self.by_epoch[i].count == 0 {
            self.by_epoch.remove(i);
        }
        self.removed += 1;
        true
    }

    /// Adds these births to `summary` (several owners can hold a group's births).
    pub(crate) fn add_to(&self, summary: &mut Summary) {
        summary.live += self.records.len() as u64;
        summary.added += self.added;
        summary.removed += self.removed;
        if let Some(oldest) = self.records.get(self.oldest as usize) {
            summary.oldest_at = Some(summary.oldest_at.map_or(oldest.at, |at| at.min(oldest.at)));
        }
        if summary.by_epoch.is_empty() {
            summary.by_epoch.clone_from(&self.by_epoch);
            return;
        }
        for e in &self.by_epoch {
            match summary.by_epoch.binary_search_by_key(&e.epoch, |s| s.epoch) {
                Ok(i) => summary.by_epoch[i].count += e.count,
                Err(i) => summary.by_epoch.insert(i, *e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn summary(births: &Births) -> Summary {
        let mut s = Summary::default();
        births.add_to(&mut s);
        s
    }

    /// What a snapshot said before: every live record counted one by one.
    fn counted(live: &[(u32, u64, u64)]) -> (u64, Option<u64>, Vec<EpochCount>) {
        let mut by_epoch = std::collections::BTreeMap::<u64, u64>::new();
        for &(_, _, epoch) in live {
            *by_epoch.entry(epoch).or_default() += 1;
        }
        (
            live.len() as u64,
            live.iter().map(|&(_, at, _)| at).min(),
            by_epoch.into_iter().map(|(epoch, count)| EpochCount { epoch, count }).collect(),
        )
    }

    #[test]
    fn the_oldest_survivor_and_the_epochs_follow_births_and_ends() {
        let mut b = Births::default();
        let first = b.add(10, 1);
        let second = b.add(20, 1);
        let third = b.add(30, 2);
        assert_eq!(summary(&b).oldest_at, Some(10));
        assert!(b.remove(first));
        assert!(!b.remove(first), "a key ends once");
        let s = summary(&b);
        assert_eq!((s.live, s.added, s.removed, s.oldest_at), (2, 3, 1, Some(20)));
        assert_eq!(s.by_epoch, vec![EpochCount { epoch: 1, count: 1 }, EpochCount { epoch: 2, count: 1 }]);
        assert!(b.remove(third));
        assert!(b.remove(second));
        let s = summary(&b);
        assert_eq!((s.live, s.oldest_at, s.by_epoch), (0, None, vec![]));
        // Emptied, it links up again.
        b.add(40, 5);
        assert_eq!(summary(&b).oldest_at, Some(40));
    }

    #[test]
    fn summaries_of_several_owners_add_up() {
        let (mut a, mut b) = (Births::default(), Births::default());
        a.add(5, 1);
        a.add(6, 3);
        b.add(4, 2);
        b.add(7, 3);
        let mut s = Summary::default();
        a.add_to(&mut s);
        b.add_to(&mut s);
        assert_eq!((s.live, s.oldest_at), (4, Some(4)));
        let counts: Vec<(u64, u64)> = s.by_epoch.iter().map(|e| (e.epoch, e.count)).collect();
        assert_eq!(counts, vec![(1, 1), (2, 1), (3, 2)]);
    }

    proptest! {
        /// Any sequence of births (in any epochs, the epoch mostly rising as the runner
        /// moves on, sometimes read late) and ends reads exactly as counting every live
        /// record one by one did.
        #[test]
        fn reads_as_counting_every_record(ops in proptest::collection::vec((any::<bool>(), 0u64..6, any::<prop::sample::Index>()), 1..300)) {
            let mut births = Births::default();
            let mut live: Vec<(u32, u64, u64)> = Vec::new();
            let mut at = 0;
            for (add, epoch, pick) in ops {
                if add || live.is_empty() {
                    at += 1;
                    live.push((births.add(at, epoch), at, epoch));
                } else {
                    let (key, _, _) = live.remove(pick.index(live.len()));
                    prop_assert!(births.remove(key));
                }
                let s = summary(&births);
                prop_assert_eq!((s.live, s.oldest_at, s.by_epoch), counted(&live));
            }
        }
    }
}
