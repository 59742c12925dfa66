//! Judging what the server holds: the leak verdicts, and whether a snapshot grew.
//!
//! Pure functions of snapshots and a [`LeakPolicy`]: no I/O, no configuration beyond the
//! policy, so each rule is tested on hand-made snapshots ([`crate::settle`] does the
//! waiting).
//!
//! Task groups, operation kinds, file descriptors (by kind) and threads are judged alike,
//! as *measures*: one leaks when its settled value at the end of the run exceeds the
//! baseline (taken once the server is up) by more than `allow-growth`. The tests that
//! leaked tasks or operations are read off the survivors' birth epochs (epoch `n` is the
//! `n`-th test); fds and threads carry no birth epoch, so their leaks are attributed to
//! the tests after which the settled value rose.

use std::collections::BTreeMap;

use hangcheck_runtime::protocol::{EpochCount, GroupKind, Snapshot};
use serde::{Deserialize, Serialize};

use crate::measures::{self, ProcessKind};

/// What counts as a leak: the `[leaks]` table of the configuration.
#[derive(Debug, Clone, Default)]
pub struct LeakPolicy {
    /// Growth a measure may have over the run before it is a leak.
    pub allow_growth: u64,
    /// Group names, measure keys or location prefixes never judged.
    pub ignore: Vec<String>,
}

impl LeakPolicy {
    /// Whether a measure is on the ignore list (by key or location prefix).
    pub fn ignores(&self, key: &str, location: Option<&str>) -> bool {
        self.ignore.iter().any(|p| key.starts_with(p.as_str()) || location.is_some_and(|l| l.starts_with(p.as_str())))
    }
}

/// A measure that rose between the server's readiness and the baseline: resources of
/// its start-up (a metrics listener, an admin console starting a moment later), never a
/// test's doing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartupGrowth {
    /// The group's name or location, `op:<kind>`, `fd:<kind>` or `threads`.
    pub measure: String,
    /// Its value when the server became ready.
    pub at_ready: u64,
    /// Its value in the baseline.
    pub at_baseline: u64,
}

/// What rose between `ready` and `baseline`.
pub fn startup_growth(ready: &Snapshot, baseline: &Snapshot) -> Vec<StartupGrowth> {
    let before = values(ready);
    values(baseline)
        .into_iter()
        .filter_map(|((_, key), value)| {
            let at_ready = before.iter().find(|((_, k), _)| *k == key).map_or(0, |(_, v)| *v);
            (value > at_ready).then_some(StartupGrowth { measure: key, at_ready, at_baseline: value })
        })
        .collect()
}

/// What a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeasureKind {
    /// Tasks spawned with `hangcheck_runtime::spawn(name, ...)`.
    Named,
    /// Tasks grouped by spawn location (tokio_unstable task hooks).
    Location,
    /// In-flight operations of one kind (`hangcheck_runtime::op`).
    Operation,
    /// Open file descriptors of one kind (`fd:socket`, `fd:file`, `fd:pipe`, `fd:other`).
    Fd,
    /// Threads of the process.
    Threads,
}

/// One thing that can leak, read off a snapshot.
struct Measure<'s> {
    key: String,
    kind: MeasureKind,
    location: Option<&'s str>,
    value: u64,
    oldest_age_ms: Option<u64>,
    /// Live things by birth epoch, where the runtime knows them.
    by_epoch: Option<&'s [EpochCount]>,
}

/// Every measure of a snapshot: task groups, operation kinds, fds by kind, threads.
fn measures(s: &Snapshot) -> Vec<Measure<'_>> {
    let mut out: Vec<Measure<'_>> = s
        .groups
        .iter()
        .map(|g| Measure {
            key: g.key.clone(),
            kind: match g.kind {
                GroupKind::Named => MeasureKind::Named,
                GroupKind::Location => MeasureKind::Location,
            },
            location: g.location.as_deref(),
            value: g.live,
            oldest_age_ms: g.oldest_age_ms,
            by_epoch: Some(&g.live_by_epoch),
        })
        .collect();
    out.extend(s.ops.iter().map(|o| Measure {
        key: measures::op_key(&o.kind),
        kind: MeasureKind::Operation,
        location: None,
        value: o.in_flight,
        oldest_age_ms: o.oldest_age_ms,
        by_epoch: Some(&o.live_by_epoch),
    }));
    out.extend(measures::PROCESS.iter().map(|m| Measure {
        key: m.key.into(),
        kind: match m.kind {
            ProcessKind::Fd => MeasureKind::Fd,
            ProcessKind::Threads => MeasureKind::Threads,
        },
        location: None,
        value: (m.read)(s),
        oldest_age_ms: None,
        by_epoch: None,
    }));
    out
}

/// The value of every measure of a snapshot, by kind and key.
fn values(s: &Snapshot) -> BTreeMap<(MeasureKind, String), u64> {
    measures(s).into_iter().map(|m| ((m.kind, m.key), m.value)).collect()
}

/// Whether every measure (task groups, operations, fds, threads) has the same value in
/// both snapshots: the server is quiet between them.
pub fn same_measures(a: &Snapshot, b: &Snapshot) -> bool {
    values(a) == values(b)
}

/// Whether any judged measure is higher in `now` than in `before`.
pub fn grew(before: &Snapshot, now: &Snapshot, policy: &LeakPolicy) -> bool {
    let old = values(before);
    measures(now)
        .iter()
        .filter(|m| !policy.ignores(&m.key, m.location))
        .any(|m| m.value > old.get(&(m.kind, m.key.clone())).copied().unwrap_or(0))
}

/// The tests of a run by epoch: epoch `n` belongs to `names[n - 1]`.
pub struct Epochs<'a> {
    /// Test ids in run order.
    pub names: &'a [String],
}

impl Epochs<'_> {
    /// Who an epoch belongs to: a test, start-up (0), or after the suite.
    pub fn owner(&self, epoch: u64) -> String {
        match epoch {
            0 => "(start-up)".to_owned(),
            n => self.names.get(n as usize - 1).cloned().unwrap_or_else(|| "(after the suite)".to_owned()),
        }
    }
}

/// Something that grew over the run beyond what the policy allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leak {
    /// The group's name or location, `op:<kind>`, `fd:<kind>` or `threads`.
    pub group: String,
    /// What it is.
    pub kind: MeasureKind,
    /// Where its tasks are spawned, when known.
    pub location: Option<String>,
    /// The value in the baseline.
    pub baseline: u64,
    /// The value at the end, settled.
    #[serde(rename = "final")]
    pub final_live: u64,
    /// `final - baseline`.
    pub growth: u64,
    /// The growth allowed by the policy.
    pub allowed: u64,
    /// Age of the oldest survivor at the end, in milliseconds, where known.
    pub oldest_age_ms: Option<u64>,
    /// Which tests grew it, in run order: for tasks and operations, the survivors born
    /// in each test; for fds and threads, each test's rise in the settled value.
    pub leaked_by: Vec<LeakedBy>,
    /// For a task group, where its survivors wait (from their async stacks), most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<crate::culprit::Waiting>,
    /// With `--baseline`: new, grown or known against the baseline report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standing: Option<crate::standing::Standing>,
    /// With `--baseline`: the growth of the same group in the baseline report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_growth: Option<u64>,
    /// Whether it fails the run; only `--fail-on` with a baseline lets a leak through.
    #[serde(default = "yes")]
    pub fails: bool,
    /// With `--fresh-server`: the round whose server it leaked in (judged against that
    /// round's baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
}

fn yes() -> bool {
    true
}

/// How much one test contributed to a leak.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeakedBy {
    /// The test id, or `(start-up)` / `(after the suite)`.
    pub test: String,
    /// The epoch.
    pub epoch: u64,
    /// Survivors born in it, or the rise it caused.
    pub count: u64,
}

/// The leak verdicts of a run. `history` holds each test's settled snapshot in run order
/// (`None` where the server could not answer).
pub fn leaks(
    baseline: &Snapshot,
    last: &Snapshot,
    history: &[Option<&Snapshot>],
    epochs: &Epochs<'_>,
    policy: &LeakPolicy,
) -> Vec<Leak> {
    let base_measures = measures(baseline);
    let base: BTreeMap<(MeasureKind, &str), &Measure<'_>> =
        base_measures.iter().map(|m| ((m.kind, m.key.as_str()), m)).collect();
    let mut leaks = Vec::new();
    for m in measures(last) {
        if policy.ignores(&m.key, m.location) {
            continue;
        }
        let held = base.get(&(m.kind, m.key.as_str()));
        let before = held.map_or(0, |h| h.value);
        let growth = m.value.saturating_sub(before);
        if growth <= policy.allow_growth {
            continue;
        }
        let leaked_by = match m.by_epoch {
            Some(by_epoch) => by_epoch
                .iter()
                .filter_map(|e| {
                    // Survivors the baseline already held are not this run's doing.
                    let already = held
                        .and_then(|h| h.by_epoch)
                        .and_then(|b| b.iter().find(|b| b.epoch == e.epoch))
                        .map_or(0, |b| b.count);
                    let count = e.count.saturating_sub(already);
                    (count > 0).then(|| LeakedBy { test: epochs.owner(e.epoch), epoch: e.epoch, count })
                })
                .collect(),
            None => rises(&m, before, history, epochs),
        };
        leaks.push(Leak {
            group: m.key.clone(),
            kind: m.kind,
            location: m.location.map(str::to_owned),
            baseline: before,
            final_live: m.value,
            growth,
            allowed: policy.allow_growth,
            oldest_age_ms: m.oldest_age_ms,
            leaked_by,
            waiting: Vec::new(),
            standing: None,
            baseline_growth: None,
            round: None,
            fails: true,
        });
    }
    leaks
}

/// For a measure without birth epochs: the tests after which its settled value rose.
fn rises(m: &Measure<'_>, baseline: u64, history: &[Option<&Snapshot>], epochs: &Epochs<'_>) -> Vec<LeakedBy> {
    let mut previous = baseline;
    let mut out = Vec::new();
    for (i, snapshot) in history.iter().enumerate() {
        let Some(s) = snapshot else { continue };
        let value = values(s).get(&(m.kind, m.key.clone())).copied().unwrap_or(0);
        if value > previous {
            let epoch = i as u64 + 1;
            out.push(LeakedBy { test: epochs.owner(epoch), epoch, count: value - previous });
        }
        previous = value;
    }
    out
}

/// Operations of one key that were in flight together, and the tests that started them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConcurrentOps {
    /// The operation kind.
    pub kind: String,
    /// The key, hashed unless the server opted out.
    pub key: String,
    /// The most in flight at once.
    pub max_in_flight: u64,
    /// The tests in which the overlaps began.
    pub tests: Vec<String>,
    /// How long the longest closed overlap lasted, in milliseconds (0: none closed).
    #[serde(default)]
    pub longest_ms: u64,
    /// For an overlap still open at the end of the run: how long it had lasted.
    #[serde(default)]
    pub still_open_ms: Option<u64>,
}

/// Overlaps of one kind that closed within the grace: a new operation took over and the
/// old one ended. Data, not a finding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Handovers {
    /// The operation kind.
    pub kind: String,
    /// How many.
    pub count: u64,
    /// The longest, in milliseconds.
    pub longest_ms: u64,
    /// The grace they closed within, in milliseconds.
    pub grace_ms: u64,
}

/// The handovers of every kind that had one.
pub fn handovers(last: &Snapshot) -> Vec<Handovers> {
    last.ops
        .iter()
        .filter(|o| o.handovers > 0)
        .map(|o| Handovers {
            kind: o.kind.clone(),
            count: o.handovers,
            longest_ms: o.longest_handover_ms,
            grace_ms: o.overlap_grace_ms,
        })
        .collect()
}

/// Every overlap the runtime recorded by the end of the run: longer than the grace, or
/// still open past it.
pub fn concurrent_ops(last: &Snapshot, epochs: &Epochs<'_>) -> Vec<ConcurrentOps> {
    last.ops
        .iter()
        .flat_map(|o| {
            o.overlaps.iter().map(move |ov| ConcurrentOps {
                kind: o.kind.clone(),
                key: ov.key.clone(),
                max_in_flight: ov.max_in_flight,
                tests: ov.epochs.iter().map(|&e| epochs.owner(e)).collect(),
                longest_ms: ov.longest_ms,
                still_open_ms: ov.open_ms,
            })
        })
        .collect()
}

/// Operations a test began that were still in flight once it had ended and settled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lingering {
    /// The operation kind.
    pub kind: String,
    /// How many.
    pub count: u64,
}

/// The operations of epoch `epoch` still in flight in its settled snapshot.
pub fn lingering(snapshot: &Snapshot, epoch: u64) -> Vec<Lingering> {
    snapshot
        .ops
        .iter()
        .filter_map(|o| {
            let count = o.live_by_epoch.iter().find(|e| e.epoch == epoch).map_or(0, |e| e.count);
            (count > 0).then(|| Lingering { kind: o.kind.clone(), count })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangcheck_runtime::protocol::EpochCount;

    use hangcheck_runtime::protocol::GroupStats;

    fn group(key: &str, live: u64, by_epoch: &[(u64, u64)]) -> GroupStats {
        GroupStats {
            key: key.into(),
            kind: GroupKind::Named,
            location: Some("src/main.rs:10".into()),
            live,
            spawned: live,
            finished: 0,
            polls: 0,
            busy_ms: 0,
            oldest_age_ms: Some(5),
            live_by_epoch: by_epoch.iter().map(|&(epoch, count)| EpochCount { epoch, count }).collect(),
        }
    }

    fn snap(groups: Vec<GroupStats>) -> Snapshot {
        Snapshot { groups, ..Snapshot::default() }
    }

    fn config(allow: u64, ignore: &[&str]) -> LeakPolicy {
        LeakPolicy { allow_growth: allow, ignore: ignore.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn growth_is_attributed_to_the_tests_whose_epochs_survive() {
        let names = vec!["e2e::a".to_owned(), "e2e::b".to_owned(), "e2e::c".to_owned()];
        let baseline = snap(vec![group("waiter", 1, &[(0, 1)]), group("conn", 0, &[])]);
        let last = snap(vec![group("waiter", 5, &[(0, 1), (1, 1), (3, 3)]), group("conn", 0, &[])]);
        let leaks = leaks(&baseline, &last, &[], &Epochs { names: &names }, &config(0, &[]));
        assert_eq!(leaks.len(), 1);
        let l = &leaks[0];
        assert_eq!((l.group.as_str(), l.baseline, l.final_live, l.growth), ("waiter", 1, 5, 4));
        let by: Vec<(&str, u64)> = l.leaked_by.iter().map(|b| (b.test.as_str(), b.count)).collect();
        assert_eq!(by, vec![("e2e::a", 1), ("e2e::c", 3)]);
    }

    #[test]
    fn allowed_growth_and_ignored_groups_are_not_leaks() {
        let names = vec!["t".to_owned()];
        let baseline = snap(vec![]);
        let last = snap(vec![group("pool", 2, &[(1, 2)]), group("bg", 7, &[(1, 7)])]);
        assert!(leaks(&baseline, &last, &[], &Epochs { names: &names }, &config(2, &["bg"])).is_empty());
        assert_eq!(leaks(&baseline, &last, &[], &Epochs { names: &names }, &config(1, &["bg"])).len(), 1);
        // Location prefixes work too.
        assert!(leaks(&baseline, &last, &[], &Epochs { names: &names }, &config(0, &["src/"])).is_empty());
    }

    #[test]
    fn fd_growth_is_attributed_to_the_tests_after_which_it_rose() {
        let names = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let mut baseline = snap(vec![]);
        baseline.process.fds.file = 2;
        let mut after_a = baseline.clone();
        after_a.process.fds.file = 3;
        let after_b = after_a.clone();
        let mut after_c = after_a.clone();
        after_c.process.fds.file = 5;
        let history = [Some(&after_a), Some(&after_b), Some(&after_c)];
        let leaks = leaks(&baseline, &after_c, &history, &Epochs { names: &names }, &config(0, &[]));
        assert_eq!(leaks.len(), 1, "{leaks:?}");
        assert_eq!((leaks[0].group.as_str(), leaks[0].growth), ("fd:file", 3));
        let by: Vec<(&str, u64)> = leaks[0].leaked_by.iter().map(|b| (b.test.as_str(), b.count)).collect();
        assert_eq!(by, vec![("a", 1), ("c", 2)]);
        // And it can be ignored like any group.
        assert!(leaks_with_ignore(&baseline, &after_c, &history, &names, "fd:").is_empty());
    }

    fn leaks_with_ignore(
        b: &Snapshot,
        l: &Snapshot,
        h: &[Option<&Snapshot>],
        names: &[String],
        ignore: &str,
    ) -> Vec<Leak> {
        leaks(b, l, h, &Epochs { names }, &config(0, &[ignore]))
    }

    #[test]
    fn settling_stops_once_nothing_is_above_the_previous_snapshot() {
        let before = snap(vec![group("conn", 1, &[(0, 1)])]);
        let same = snap(vec![group("conn", 1, &[(0, 1)])]);
        let more = snap(vec![group("conn", 2, &[(0, 1), (1, 1)])]);
        assert!(!grew(&before, &same, &config(0, &[])));
        assert!(grew(&before, &more, &config(0, &[])));
        assert!(!grew(&before, &more, &config(0, &["conn"])));
    }
}
