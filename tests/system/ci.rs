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

#[test]
fn a_known_leak_passes_fail_on_new_and_a_new_leak_fails_it() {
    let mark = marker("baseline");
    let base = ["-p", "waiter-leak", "--settle", "3s", "--server-env", &mark];
    let with = |extra: &[&str]| hangcheck_test(&[&base[..], extra].concat());
    // main's report: the whole suite, the waiter group leaking +4.
    let main = with(&[]);
    assert_eq!(main.code, 5, "{main}");
    let main_report = main.run_dir().join("report.json");
    let main_report = main_report.to_str().unwrap();

    // The same leak against it is known, and --fail-on new lets it through.
    let same = with(&["--baseline", main_report, "--fail-on", "new"]);
    assert_eq!(same.code, 0, "a known leak passes --fail-on new\n{same}");
    assert!(same.stdout.contains("(known: +4 in the baseline), let through by --fail-on"), "{same}");
    let leak = &same.report()["leaks"][0];
    assert_eq!(
        (leak["group"].as_str(), leak["standing"].as_str(), leak["fails"].as_bool()),
        (Some("waiter"), Some("known"), Some(false)),
        "{leak:#}"
    );
    let junit = crate::util::read(&same.run_dir().join("junit.xml"));
    assert!(junit.contains("leak::waiter") && junit.contains("<skipped"), "{junit}");

    // Against a baseline without the leak (only the tests that do not watch), it is new
    // and fails --fail-on new.
    let clean = with(&["get"]);
    assert_eq!(clean.code, 0, "{clean}");
    let clean_report = clean.run_dir().join("report.json");
    let clean_report = clean_report.to_str().unwrap();
    let new = with(&["--baseline", clean_report, "--fail-on", "new"]);
    assert_eq!(new.code, 5, "a new leak fails --fail-on new\n{new}");
    assert!(new.stdout.contains("LEAK task group `waiter`") && new.stdout.contains("(new)"), "{new}");
    let leak = &new.report()["leaks"][0];
    assert_eq!((leak["standing"].as_str(), leak["fails"].as_bool()), (Some("new"), Some(true)), "{leak:#}");

    // diff says the same: the leak is new since the clean report, and unchanged since main's.
    let diff = run_plain(&["hangcheck", "diff", "--color", "never", clean_report, main_report], &workspace_root(), &[]);
    assert_eq!(diff.code, 0, "{diff}");
    assert!(diff.stdout.contains("verdict: ok (exit 0) -> leaks (exit 5)"), "{diff}");
    assert!(diff.stdout.contains("leak waiter: new, +4"), "{diff}");
    assert!(diff.stdout.contains("test e2e::watch_and_leave: added (passed)"), "{diff}");
    let same_report = same.run_dir().join("report.json");
    let diff = run_plain(&["hangcheck", "diff", main_report, same_report.to_str().unwrap()], &workspace_root(), &[]);
    assert!(diff.stdout.contains("verdict: leaks (exit 5) -> ok (exit 0)"), "{diff}");
    assert!(!diff.stdout.contains("leak waiter"), "the leak itself did not change\n{diff}");
    assert_no_process_with(&mark);
}

#[test]
fn a_baseline_that_cannot_be_read_stops_the_run_before_it_builds() {
    let run = hangcheck_test(&["-p", "waiter-leak", "--baseline", "/nonexistent/report.json"]);
    assert_eq!(run.code, 3, "{run}");
    assert!(run.error_line().contains("--baseline: cannot read /nonexistent/report.json"), "{run}");
}

/// `cargo hangcheck test ARGS` as a GitHub Actions step: GITHUB_ACTIONS=true, the
/// workspace as GITHUB_WORKSPACE, and a step summary file; returns the run and the summary.
fn as_github_step(args: &[&str]) -> (crate::util::Run, String) {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.md");
    let root = workspace_root();
    let env = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_WORKSPACE", root.to_str().unwrap()),
        ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
    ];
    let run = crate::util::spawn_runner_env(&crate::util::test_args(args), &env).wait();
    let summary = std::fs::read_to_string(&summary).unwrap_or_else(|e| panic!("no step summary ({e})\n{run}"));
    (run, summary)
}

#[test]
fn under_github_actions_a_hang_and_a_leak_are_annotated_where_they_wait_and_spawn() {
    let mark = marker("github-hang");
    let (run, summary) = as_github_step(&["-p", "never-answers", "--server-env", &mark]);
    assert_eq!(run.code, 6, "{run}");
    let annotations: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("::")).collect();
    // The hung test, at the line where its task waits.
    assert!(
        annotations.iter().any(|a| a.starts_with("::error file=examples/never-answers/src/main.rs,line=")
            && a.contains("title=hangcheck%3A e2e%3A%3Anext_on_a_quiet_topic hung::")
            && a.contains("waiting in never_answers::next_message")),
        "{run}"
    );
    // The leak its request task is, at the line that spawned it.
    assert!(
        annotations.iter().any(|a| a.starts_with("::error file=examples/never-answers/src/main.rs,line=")
            && a.contains("title=hangcheck%3A leak of ")
            && a.contains("leaked by e2e::next_on_a_quiet_topic")),
        "{run}"
    );
    assert!(summary.contains("## hangcheck: never-answers (exit 6)"), "{summary}");
    assert!(
        summary.contains("- **hung** `e2e::next_on_a_quiet_topic`: 1 × waiting in never_answers::next_message"),
        "{summary}"
    );
    assert_no_process_with(&mark);
}

#[test]
fn under_github_actions_a_stall_is_annotated_at_the_frame_that_blocked() {
    let mark = marker("github-stall");
    let (run, summary) =
        as_github_step(&["-p", "blocking-handler", "--stall-threshold", "250ms", "--server-env", &mark]);
    assert_eq!(run.code, 7, "a stall is not a hang: its own exit code\n{run}");
    assert!(
        run.stdout.lines().any(|a| a.starts_with("::error file=examples/blocking-handler/src/main.rs,line=")
            && a.contains("title=hangcheck%3A worker stalled during ")
            && a.contains("blocking_handler::")),
        "{run}"
    );
    assert!(summary.contains("- **stall** during "), "{summary}");
    assert_no_process_with(&mark);
}
