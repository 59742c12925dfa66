//! The flake table of a repeated run (`--repeat`, `--for`, `--until-fail`): for each
//! test, the rounds it passed, failed, hung and stalled in, the first round that went
//! wrong and, for a hang, where it waited then.

use serde::{Deserialize, Serialize};

use super::{StallEntry, TestEntry, TestOutcome};

/// One test over the rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flake {
    /// `target::name`.
    pub id: String,
    /// Rounds it ran in.
    pub rounds: u32,
    pub passed: u32,
    /// Failed (or could not start).
    pub failed: u32,
    pub hung: u32,
    /// Rounds in which a worker stalled while it ran.
    pub stalled: u32,
    /// The first round it failed, hung or stalled in.
    pub first_failure: Option<u32>,
    /// For the first hang: where its tasks waited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<crate::culprit::Waiting>,
    /// For the first hang: its evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<std::path::PathBuf>,
}

/// The table, in the order the tests first ran; empty for a run without rounds.
pub fn table(tests: &[TestEntry], stalls: &[StallEntry], repeating: bool) -> Vec<Flake> {
    if !repeating {
        return Vec::new();
    }
    let mut flakes: Vec<Flake> = Vec::new();
    for t in tests {
        let at = match flakes.iter().position(|f| f.id == t.id) {
            Some(i) => i,
            None => {
                flakes.push(Flake {
                    id: t.id.clone(),
                    rounds: 0,
                    passed: 0,
                    failed: 0,
                    hung: 0,
                    stalled: 0,
                    first_failure: None,
                    waiting: Vec::new(),
                    evidence: Vec::new(),
                });
                flakes.len() - 1
            }
        };
        let f = &mut flakes[at];
        f.rounds += 1;
        let stalled = stalls.iter().any(|s| s.epoch == t.epoch);
        match t.outcome {
            TestOutcome::Passed => f.passed += 1,
            TestOutcome::Hung => f.hung += 1,
            TestOutcome::Interrupted | TestOutcome::Ignored => {}
            TestOutcome::Failed | TestOutcome::SpawnFailed => f.failed += 1,
        }
        f.stalled += u32::from(stalled);
        let wrong =
            stalled || !matches!(t.outcome, TestOutcome::Passed | TestOutcome::Interrupted | TestOutcome::Ignored);
        if wrong && f.first_failure.is_none() {
            f.first_failure = Some(t.round);
        }
        if t.outcome == TestOutcome::Hung && f.evidence.is_empty() {
            f.waiting = t.waiting.clone();
            f.evidence = t.evidence.clone();
        }
    }
    flakes
}
