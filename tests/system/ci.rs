//! CI: a suite split into shards with `--partition`, put back together with `merge`.

use std::collections::BTreeMap;

use crate::util::{assert_no_process_with, hangcheck_test, leaked_by, marker, run_plain, workspace_root};

/// Each test's outcome, by id.
fn outcomes(report: &serde_json::Value) -> BTreeMap<String, String> {
    let tests = report["tests"].as_array().unwrap_or_else(|| panic!("no tests in {report:#}"));
    tests.iter().map(|t| (t["id"].as_str().unwrap().to_owned(), t["outcome"].as_str().unwrap().to_owned())).collect()
}

/// Every (test, count) that grew a leak of `group`, over all its entries, sorted.
fn grown_by(report: &serde_json::Value, group: &str) -> Vec<(String, u64)> {
    let leaks = report["leaks"].as_array().unwrap();
    let mut by: Vec<(String, u64)> = leaks
        .iter()
        .filter(|l| l["group"] == group)
        .flat_map(|l| leaked_by(l).into_iter().map(|(t, n)| (t.to_owned(), n)))
        .collect();
    by.sort();
    by
}

#[test]
fn two_count_shards_merged_give_the_same_tests_and_verdicts_as_one_run() {
    let mark = marker("partition");
    let base = ["-p", "waiter-leak", "--settle", "3s", "--server-env", &mark];
    let whole = hangcheck_test(&base);
    assert_eq!(whole.code, 5, "the leaks exit code\n{whole}");
    let shards: Vec<_> =
        ["count:1/2", "count:2/2"].iter().map(|p| hangcheck_test(&[&base[..], &["--partition", p]].concat())).collect();
    let whole = whole.report();
    let parts: Vec<_> = shards.iter().map(|s| s.report()).collect();
    // Each shard ran some of the tests, and no test ran in both.
    let (one, two) = (outcomes(&parts[0]), outcomes(&parts[1]));
    assert!(!one.is_empty() && !two.is_empty(), "{one:?} {two:?}");
    assert!(one.keys().all(|k| !two.contains_key(k)), "{one:?} {two:?}");
    // count deals each target's tests in turn: 7 tests are 4 and 3.
    assert_eq!((one.len(), two.len()), (4, 3), "{one:?} {two:?}");

    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("merged");
    let paths: Vec<String> = shards.iter().map(|s| s.run_dir().join("report.json").display().to_string()).collect();
    let merge = run_plain(
        &["hangcheck", "merge", "--color", "never", &paths[0], &paths[1], "--out", out_dir.to_str().unwrap()],
        &workspace_root(),
        &[],
    );
    assert_eq!(merge.code, 5, "the merged run leaks, as the whole run did\n{merge}");
    assert!(merge.stdout.contains("LEAK task group `waiter`"), "{merge}");
    let merged: serde_json::Value = serde_json::from_str(&crate::util::read(&out_dir.join("report.json"))).unwrap();
    assert_eq!(outcomes(&merged), outcomes(&whole), "the same tests with the same outcomes");
    assert_eq!((&merged["verdict"], &merged["exit_code"]), (&whole["verdict"], &whole["exit_code"]));
    // The same tests grew the leak, each by as much, though in two servers.
    assert_eq!(grown_by(&merged, "waiter"), grown_by(&whole, "waiter"));
    assert_eq!(merged["merged_from"].as_array().unwrap().len(), 2, "{merged:#}");
    let junit = crate::util::read(&out_dir.join("junit.xml"));
    assert!(junit.contains("leak::waiter") && junit.contains("watch_and_leave"), "{junit}");
    assert_no_process_with(&mark);
}

#[test]
fn merge_of_a_file_that_is_not_a_report_is_a_setup_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("report.json");
    std::fs::write(&bogus, "{\"not\": \"a report\"}").unwrap();
    let run = run_plain(&["hangcheck", "merge", bogus.to_str().unwrap()], dir.path(), &[]);
    assert_eq!(run.code, 3, "{run}");
    assert!(run.error_line().contains("is not a hangcheck report.json"), "{run}");
}
