//! `cargo hangcheck merge REPORT...`: the reports of the shards of one suite
//! (`--partition`), put back together as one `report.json` and one `junit.xml`, with the
//! exit code one run of the whole suite would have had.
//!
//! Each shard ran its own server, so what is per server stays per shard: the tests, leaks,
//! stalls, overlaps and leftovers are listed one after the other (a leak names the tests
//! of its shard that grew it), a shutdown hang in any shard is the merged shutdown's
//! outcome, and the baseline and final snapshots and the counters, which only mean
//! something for one server, are left out. Shards run with rounds join their flake
//! tables, and `rounds` holds the most rounds any shard ran. The verdict is the most severe of the shards'
//! (the README's order of exit codes), and `merged_from` lists the reports it came from.

use std::path::{Path, PathBuf};

use crate::cli::MergeArgs;
use crate::exit;
use crate::report::{self, Report, RoundsEntry, ShutdownOutcome, Verdict};
use crate::rundir::RunDir;

/// Runs `cargo hangcheck merge` and returns the exit code.
pub fn command(args: &MergeArgs) -> i32 {
    match merge_files(&args.reports, &args.out) {
        Ok(report) => {
            report::terminal::show_merged(&report);
            report.exit_code
        }
        Err(message) => {
            report::terminal::error(message, &[]);
            exit::SETUP
        }
    }
}

/// Reads every report, merges them, and writes the result into `out`.
fn merge_files(paths: &[PathBuf], out: &Path) -> Result<Report, String> {
    let reports = paths.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
    let mut merged = merge(reports, out.to_owned());
    merged.merged_from = paths.to_vec();
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let dir = RunDir::at(out);
    let json = serde_json::to_vec_pretty(&merged).map_err(|e| format!("cannot render the report: {e}"))?;
    for (name, bytes) in [("report.json", json), ("junit.xml", report::junit::render(&merged).into_bytes())] {
        dir.write_durable(name, &bytes).map_err(|e| format!("cannot write {}: {e}", out.join(name).display()))?;
    }
    Ok(merged)
}

/// One shard's report.
pub fn read(path: &Path) -> Result<Report, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let report: Report =
        serde_json::from_slice(&text).map_err(|e| format!("{} is not a hangcheck report.json: {e}", path.display()))?;
    if report.format_version != report::FORMAT_VERSION {
        return Err(format!(
            "{} has report format {}; this hangcheck reads format {}",
            path.display(),
            report.format_version,
            report::FORMAT_VERSION
        ));
    }
    Ok(report)
}

/// How much a verdict outweighs others when shards disagree, as within one run (README,
/// "Exit codes"): a hang, then a run that could not judge, then failed tests, then leaks.
fn weight(v: Verdict) -> u8 {
    match v {
        Verdict::Ok => 0,
        Verdict::Leaks => 1,
        Verdict::Stalls => 2,
        Verdict::TestsFailed => 3,
        Verdict::SetupError => 4,
        Verdict::Hang => 5,
        Verdict::Interrupted => 6,
    }
}

/// The shards' reports as one.
fn merge(reports: Vec<Report>, out: PathBuf) -> Report {
    let verdict = reports.iter().map(|r| r.verdict).max_by_key(|&v| weight(v)).unwrap_or(Verdict::Ok);
    let mut packages: Vec<String> = reports.iter().map(|r| r.package.clone()).collect();
    packages.dedup();
    let errors: Vec<String> = reports.iter().filter_map(|r| r.error.clone()).collect();
    let shutdown = reports
        .iter()
        .map(|r| r.shutdown.outcome)
        .max_by_key(|o| match o {
            ShutdownOutcome::Clean => 0,
            ShutdownOutcome::NotReached => 1,
            ShutdownOutcome::Hung => 2,
        })
        .unwrap_or_default();
    // A shard that failed on stalls says so in its verdict; the merged report keeps the
    // strictest policy.
    let stall_verdict = if reports.iter().all(|r| r.stall_verdict == crate::cli::StallVerdict::Warn) {
        crate::cli::StallVerdict::Warn
    } else {
        crate::cli::StallVerdict::Fail
    };
    let mut merged = Report {
        format_version: report::FORMAT_VERSION,
        hangcheck_version: env!("CARGO_PKG_VERSION").into(),
        package: packages.join(", "),
        verdict,
        exit_code: verdict.exit_code(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        server: Default::default(),
        run_dir: out,
        duration_ms: reports.iter().map(|r| r.duration_ms).max().unwrap_or(0),
        tests: Vec::new(),
        baseline: None,
        final_snapshot: None,
        leaks: Vec::new(),
        startup: Vec::new(),
        warmup: Vec::new(),
        concurrent_ops: Vec::new(),
        handovers: Vec::new(),
        stall_verdict,
        slow_ops: Vec::new(),
        counters: Vec::new(),
        stalls: Vec::new(),
        shutdown: Default::default(),
        protocol_errors: Vec::new(),
        leftover_processes: Vec::new(),
        merged_from: Vec::new(),
        rounds: None,
        flakes: Vec::new(),
        stress: None,
    };
    merged.shutdown.outcome = shutdown;
    for r in reports {
        merged.server.bin = r.server.bin;
        merged.server.tokio_unstable |= r.server.tokio_unstable;
        merged.tests.extend(r.tests);
        merged.leaks.extend(r.leaks);
        merged.concurrent_ops.extend(r.concurrent_ops);
        merged.handovers.extend(r.handovers);
        merged.startup.extend(r.startup);
        merged.slow_ops.extend(r.slow_ops);
        merged.stalls.extend(r.stalls);
        merged.shutdown.evidence.extend(r.shutdown.evidence);
        merged.shutdown.survivors.extend(r.shutdown.survivors);
        merged.shutdown.stacks_source = merged.shutdown.stacks_source.or(r.shutdown.stacks_source);
        merged.protocol_errors.extend(r.protocol_errors);
        merged.leftover_processes.extend(r.leftover_processes);
        // Shards run with rounds: each test is in one shard, so the flake tables join.
        merged.flakes.extend(r.flakes);
        merged.stress = merged.stress.or(r.stress);
        if let Some(rounds) = r.rounds {
            let most = merged.rounds.as_ref().map_or(0, |m| m.count).max(rounds.count);
            merged.rounds = Some(RoundsEntry { count: most, ..rounds });
        }
    }
    merged
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A report with nothing in it.
    pub fn empty() -> Report {
        report(Verdict::Ok, &[])
    }

    fn report(verdict: Verdict, tests: &[&str]) -> Report {
        let json = serde_json::json!({
            "format_version": 1, "hangcheck_version": "0", "package": "p", "verdict": verdict,
            "exit_code": verdict.exit_code(), "error": null,
            "server": { "bin": "s", "pid": null, "tokio_unstable": true, "capabilities": [], "addresses": {}, "log": null },
            "run_dir": "/r", "duration_ms": 5,
            "tests": tests.iter().map(|t| serde_json::json!({
                "id": t, "target": "e2e", "name": t, "epoch": 1, "outcome": "passed", "detail": null,
                "duration_ms": 1, "settle_ms": 0, "log": "l", "evidence": [], "stacks_source": null,
                "live": {}, "ops_in_flight_after": []
            })).collect::<Vec<_>>(),
            "baseline": null, "final": null, "leaks": [], "concurrent_ops": [], "slow_ops": [], "counters": [],
            "stalls": [], "shutdown": { "outcome": "clean", "evidence": [], "stacks_source": null, "survivors": [] },
            "protocol_errors": [], "leftover_processes": []
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_most_severe_shard_decides_and_every_test_is_kept() {
        let merged =
            merge(vec![report(Verdict::Leaks, &["a"]), report(Verdict::Hang, &["b", "c"])], PathBuf::from("/m"));
        assert_eq!((merged.verdict, merged.exit_code), (Verdict::Hang, exit::HANG));
        assert_eq!(merged.tests.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let merged = merge(vec![report(Verdict::Ok, &["a"]), report(Verdict::Ok, &[])], PathBuf::from("/m"));
        assert_eq!((merged.verdict, merged.package.as_str()), (Verdict::Ok, "p"));
        let merged = merge(vec![report(Verdict::SetupError, &[]), report(Verdict::Hang, &["b"])], PathBuf::from("/m"));
        assert_eq!(merged.exit_code, exit::HANG);
        let merged = merge(vec![report(Verdict::SetupError, &[]), report(Verdict::Ok, &["b"])], PathBuf::from("/m"));
        assert_eq!(merged.exit_code, exit::SETUP);
    }

    #[test]
    fn shards_run_in_rounds_join_their_flake_tables() {
        let shard = |id: &str, rounds: u32| {
            let mut r = report(Verdict::Hang, &[id]);
            let flake = serde_json::json!({ "id": id, "rounds": rounds, "passed": rounds - 1, "failed": 0,
                "hung": 1, "stalled": 0, "first_failure": 2 });
            r.flakes = vec![serde_json::from_value(flake).unwrap()];
            r.rounds = Some(RoundsEntry { count: rounds, shuffle_seed: Some(9), ..RoundsEntry::default() });
            r
        };
        let merged = merge(vec![shard("a", 5), shard("b", 3)], PathBuf::from("/m"));
        assert_eq!(merged.flakes.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let rounds = merged.rounds.unwrap();
        assert_eq!((rounds.count, rounds.shuffle_seed), (5, Some(9)));
    }
}
