//! Judging what the server holds: settling after each test, and the leak verdicts.
//!
//! Settling is goleak's lesson: judge what is left, not what is still finishing. After a
//! test the runner re-snapshots until no task group is above where it stood before the
//! test, or the settle time runs out; a connection task that ends a moment after its
//! client has gone is then not counted.
//!
//! A group leaks when its settled live count at the end of the run exceeds its count in
//! the baseline (taken once the server is up) by more than `allow-growth`. The tests that
//! leaked it are read off the survivors' birth epochs: epoch `n` is the `n`-th test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::{GroupKind, GroupStats, Snapshot};
use serde::Serialize;

use crate::config::Config;
use crate::link::{AgentLink, LinkError};
use crate::signal::Signals;

/// How long a single snapshot request may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Re-snapshots until nothing judged is above `before`, or `max` has passed. Returns the
/// last snapshot.
pub fn settle(
    link: &mut AgentLink,
    before: &Snapshot,
    max: Duration,
    config: &Config,
    signals: &Signals,
) -> Result<Snapshot, LinkError> {
    let deadline = Instant::now() + max;
    let mut pause = Duration::from_millis(5);
    loop {
        let now = link.snapshot(SNAPSHOT_TIMEOUT)?;
        if !grew(before, &now, config) || Instant::now() >= deadline || signals.interrupted() {
            return Ok(now);
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Whether any judged group has more live tasks in `now` than in `before`.
fn grew(before: &Snapshot, now: &Snapshot, config: &Config) -> bool {
    let old = live_by_key(before);
    now.groups
        .iter()
        .filter(|g| !config.ignores(&g.key, g.location.as_deref()))
        .any(|g| g.live > old.get(&(g.kind, g.key.as_str())).copied().unwrap_or(0))
}

fn live_by_key(s: &Snapshot) -> BTreeMap<(GroupKind, &str), u64> {
    s.groups.iter().map(|g| ((g.kind, g.key.as_str()), g.live)).collect()
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

/// A task group that leaked.
#[derive(Debug, Clone, Serialize)]
pub struct Leak {
    /// The group's name or location key.
    pub group: String,
    /// How the group is keyed.
    pub kind: GroupKind,
    /// Where its tasks are spawned, when known.
    pub location: Option<String>,
    /// Live tasks in the baseline.
    pub baseline: u64,
    /// Live tasks at the end, settled.
    #[serde(rename = "final")]
    pub final_live: u64,
    /// `final - baseline`.
    pub growth: u64,
    /// The growth allowed by the policy.
    pub allowed: u64,
    /// Age of the oldest survivor at the end, in milliseconds.
    pub oldest_age_ms: Option<u64>,
    /// Survivors per test that spawned them, in run order; start-up and after-suite
    /// survivors are listed under those names.
    pub leaked_by: Vec<LeakedBy>,
}

/// How many survivors one test left in a group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeakedBy {
    /// The test id, or `(start-up)` / `(after the suite)`.
    pub test: String,
    /// The epoch.
    pub epoch: u64,
    /// Survivors born in it.
    pub count: u64,
}

/// The leak verdicts of a run.
pub fn leaks(baseline: &Snapshot, last: &Snapshot, epochs: &Epochs<'_>, config: &Config) -> Vec<Leak> {
    let base = live_by_key(baseline);
    let base_epochs: BTreeMap<(GroupKind, &str), &GroupStats> =
        baseline.groups.iter().map(|g| ((g.kind, g.key.as_str()), g)).collect();
    let mut leaks = Vec::new();
    for g in &last.groups {
        if config.ignores(&g.key, g.location.as_deref()) {
            continue;
        }
        let before = base.get(&(g.kind, g.key.as_str())).copied().unwrap_or(0);
        let growth = g.live.saturating_sub(before);
        if growth <= config.allow_growth {
            continue;
        }
        // Survivors the baseline already held are not this run's doing.
        let held = base_epochs.get(&(g.kind, g.key.as_str()));
        let leaked_by = g
            .live_by_epoch
            .iter()
            .filter_map(|e| {
                let already =
                    held.and_then(|h| h.live_by_epoch.iter().find(|b| b.epoch == e.epoch)).map_or(0, |b| b.count);
                let count = e.count.saturating_sub(already);
                (count > 0).then(|| LeakedBy { test: epochs.owner(e.epoch), epoch: e.epoch, count })
            })
            .collect();
        leaks.push(Leak {
            group: g.key.clone(),
            kind: g.kind,
            location: g.location.clone(),
            baseline: before,
            final_live: g.live,
            growth,
            allowed: config.allow_growth,
            oldest_age_ms: g.oldest_age_ms,
            leaked_by,
        });
    }
    leaks
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangcheck_runtime::protocol::EpochCount;

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

    fn config(allow: u64, ignore: &[&str]) -> Config {
        Config {
            package: "p".into(),
            manifest_path: "Cargo.toml".into(),
            package_dir: ".".into(),
            hangcheck_dir: "target/hangcheck".into(),
            build: Default::default(),
            runtime_dependency: true,
            server_bin: "s".into(),
            server_args: vec![],
            server_env: vec![],
            ready: crate::cli::Ready::Hello,
            test_targets: vec![],
            filters: vec![],
            test_timeout: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            settle: Duration::from_secs(1),
            stall_threshold: Duration::from_millis(250),
            fail_fast: false,
            allow_growth: allow,
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn growth_is_attributed_to_the_tests_whose_epochs_survive() {
        let names = vec!["e2e::a".to_owned(), "e2e::b".to_owned(), "e2e::c".to_owned()];
        let baseline = snap(vec![group("waiter", 1, &[(0, 1)]), group("conn", 0, &[])]);
        let last = snap(vec![group("waiter", 5, &[(0, 1), (1, 1), (3, 3)]), group("conn", 0, &[])]);
        let leaks = leaks(&baseline, &last, &Epochs { names: &names }, &config(0, &[]));
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
        assert!(leaks(&baseline, &last, &Epochs { names: &names }, &config(2, &["bg"])).is_empty());
        assert_eq!(leaks(&baseline, &last, &Epochs { names: &names }, &config(1, &["bg"])).len(), 1);
        // Location prefixes work too.
        assert!(leaks(&baseline, &last, &Epochs { names: &names }, &config(0, &["src/"])).is_empty());
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
