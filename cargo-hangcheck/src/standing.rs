//! A leak's standing against a baseline report (`--baseline PATH`, usually main's
//! report.json): **new** (the baseline has no leak of that group), **grown** (it has one,
//! but some test now leaks more of it than it did there, or the group grew more in all),
//! or **known**. Comparing test by test is what makes a shard's leak comparable with a
//! merged baseline's: each test is in one shard, whatever the split. `--fail-on` says which
//! standings fail the run; the others are still reported, marked as let through.
//!
//! A leak is the same one when its kind and group (a name, a spawn location `file:line:col`,
//! `op:KIND`, `fd:KIND`, `threads`) are the same: tasks spawned at a line that moved count
//! as new, which errs on the side of failing.

use std::path::Path;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::analysis::{Leak, MeasureKind};
use crate::report::Report;

/// Where a leak stands against the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// Not leaking in the baseline.
    New,
    /// Leaking in the baseline, by less.
    Grown,
    /// Leaking in the baseline by as much or more.
    Known,
}

impl Standing {
    /// Its name in the report and on screen.
    pub fn name(self) -> &'static str {
        match self {
            Standing::New => "new",
            Standing::Grown => "grown",
            Standing::Known => "known",
        }
    }
}

/// Which standings fail the run.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailOn {
    /// Only new leaks.
    New,
    /// New leaks and known leaks that grew.
    #[default]
    Grown,
    /// Every leak, as without a baseline.
    Any,
}

impl FailOn {
    fn fails(self, standing: Standing) -> bool {
        match self {
            FailOn::New => standing == Standing::New,
            FailOn::Grown => standing != Standing::Known,
            FailOn::Any => true,
        }
    }
}

/// The leaks of the baseline report.
#[derive(Debug, Clone)]
pub struct Baseline {
    leaks: Vec<Known>,
}

/// One leak of the baseline report.
#[derive(Debug, Clone)]
struct Known {
    kind: MeasureKind,
    group: String,
    growth: u64,
    /// Each test's part of it.
    by: Vec<(String, u64)>,
}

impl Baseline {
    /// Reads the baseline report; an unreadable one stops the run before it builds.
    pub fn load(path: &Path) -> Result<Baseline, String> {
        let report = crate::merge::read(path).map_err(|e| format!("--baseline: {e}"))?;
        Ok(Baseline::of(&report))
    }

    /// The leaks of `report`.
    pub fn of(report: &Report) -> Baseline {
        let known = |l: &Leak| Known {
            kind: l.kind,
            group: l.group.clone(),
            growth: l.growth,
            by: l.leaked_by.iter().map(|b| (b.test.clone(), b.count)).collect(),
        };
        Baseline { leaks: report.leaks.iter().map(known).collect() }
    }

    /// How a leak stands, and the baseline's growth of the same group.
    pub fn standing(&self, leak: &Leak) -> (Standing, Option<u64>) {
        // A merged report can hold a group once per shard: their growths add up.
        let before: Vec<&Known> = self.leaks.iter().filter(|l| l.kind == leak.kind && l.group == leak.group).collect();
        if before.is_empty() {
            return (Standing::New, None);
        }
        let total = before.iter().map(|l| l.growth).sum();
        let by_test = |test: &str| before.iter().flat_map(|l| &l.by).filter(|b| b.0 == test).map(|b| b.1).sum::<u64>();
        let grew = leak.growth > total || leak.leaked_by.iter().any(|b| b.count > by_test(&b.test));
        (if grew { Standing::Grown } else { Standing::Known }, Some(total))
    }

    /// Marks each leak with its standing, and lets through those `fail_on` spares.
    pub fn judge(&self, leaks: &mut [Leak], fail_on: FailOn) {
        for leak in leaks {
            let (standing, growth) = self.standing(leak);
            leak.standing = Some(standing);
            leak.baseline_growth = growth;
            leak.fails = fail_on.fails(standing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(tests: &[(&str, u64)]) -> Vec<crate::analysis::LeakedBy> {
        tests.iter().map(|&(t, n)| crate::analysis::LeakedBy { test: t.into(), epoch: 1, count: n }).collect()
    }

    fn leak(group: &str, growth: u64) -> Leak {
        Leak {
            group: group.into(),
            kind: MeasureKind::Named,
            location: None,
            baseline: 0,
            final_live: growth,
            growth,
            allowed: 0,
            oldest_age_ms: None,
            leaked_by: vec![],
            waiting: vec![],
            standing: None,
            baseline_growth: None,
            round: None,
            fails: true,
        }
    }

    #[test]
    fn new_grown_and_known_and_what_each_fail_on_lets_through() {
        let known = |group: &str| Known { kind: MeasureKind::Named, group: group.into(), growth: 2, by: vec![] };
        let base = Baseline { leaks: vec![known("a"), known("b")] };
        let mut leaks = vec![leak("a", 2), leak("b", 3), leak("c", 1)];
        base.judge(&mut leaks, FailOn::New);
        let got: Vec<_> = leaks.iter().map(|l| (l.standing.unwrap(), l.baseline_growth, l.fails)).collect();
        assert_eq!(
            got,
            [(Standing::Known, Some(2), false), (Standing::Grown, Some(2), false), (Standing::New, None, true)]
        );
        base.judge(&mut leaks, FailOn::Grown);
        assert_eq!(leaks.iter().map(|l| l.fails).collect::<Vec<_>>(), [false, true, true]);
        base.judge(&mut leaks, FailOn::Any);
        assert!(leaks.iter().all(|l| l.fails));
        // The same name as another kind of measure is another leak.
        let mut fd = vec![Leak { kind: MeasureKind::Fd, ..leak("a", 1) }];
        base.judge(&mut fd, FailOn::New);
        assert_eq!(fd[0].standing, Some(Standing::New));
    }

    #[test]
    fn a_shards_leak_is_compared_test_by_test_with_a_merged_baseline() {
        // main, merged: `g` leaked +2 by t1 in shard 1 and +2 by t2 in shard 2.
        let shard = |tests: &[(&str, u64)]| Leak { leaked_by: by(tests), ..leak("g", tests.iter().map(|t| t.1).sum()) };
        let main = Report { leaks: vec![shard(&[("t1", 2)]), shard(&[("t2", 2)])], ..crate::merge::tests::empty() };
        let base = Baseline::of(&main);
        // Shard 1 now: t1 leaks +4, under the merged total of 4 but more than t1 did.
        assert_eq!(base.standing(&shard(&[("t1", 4)])), (Standing::Grown, Some(4)));
        assert_eq!(base.standing(&shard(&[("t1", 2)])), (Standing::Known, Some(4)));
        // A test that did not leak it before now does.
        assert_eq!(base.standing(&shard(&[("t3", 1)])).0, Standing::Grown);
    }
}
