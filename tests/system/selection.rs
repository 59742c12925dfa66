//! Which tests run, and what a selection that runs nothing means: ignored tests are
//! reported as ignored (never as passed), an empty selection fails, and durations that
//! cannot mean anything at zero are refused.

use crate::util::{hangcheck_test, marker};

#[test]
fn an_ignored_test_is_reported_as_ignored_and_skipped_in_junit() {
    let mark = marker("ignored");
    let run = hangcheck_test(&["-p", "two-runtimes", "--server-env", &mark, "ping_"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("SKIP [  0.000s] e2e::ping_the_cluster"), "{run}");
    let report = run.report();
    let cluster = report["tests"].as_array().unwrap().iter().find(|t| t["name"] == "ping_the_cluster").unwrap().clone();
    assert_eq!(cluster["outcome"], "ignored", "{cluster:#?}");
    let junit = std::fs::read_to_string(run.run_dir().join("junit.xml")).unwrap();
    let case = junit.split("<testcase").find(|c| c.contains("ping_the_cluster")).unwrap();
    assert!(case.contains("<skipped"), "{junit}");
}

#[test]
fn run_ignored_only_runs_the_ignored_test() {
    let run = hangcheck_test(&["-p", "two-runtimes", "--run-ignored", "only", "ping_"]);
    // The ignored test panics on purpose: it did run.
    assert_eq!(run.code, 4, "{run}");
    let report = run.report();
    let ids: Vec<&str> = report["tests"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["e2e::ping_the_cluster"], "{run}");
    assert_eq!(report["tests"][0]["outcome"], "failed");
}

#[test]
fn an_ignored_harness_trial_is_skipped_and_runs_with_run_ignored() {
    // The trial fails when it runs, so "passed" would be a lie either way.
    let mark = marker("ignored-trial");
    let run = hangcheck_test(&["-p", "mixed-targets", "--server-env", &mark, "in_"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("SKIP [  0.000s] inproc::in_ignored"), "{run}");
    let report = run.report();
    let outcome = |r: &serde_json::Value, name: &str| {
        r["tests"].as_array().unwrap().iter().find(|t| t["name"] == name).map(|t| t["outcome"].clone())
    };
    assert_eq!(outcome(&report, "in_ignored"), Some("ignored".into()), "{run}");
    assert_eq!(outcome(&report, "in_one"), Some("passed".into()), "{run}");
    let junit = std::fs::read_to_string(run.run_dir().join("junit.xml")).unwrap();
    let case = junit.split("<testcase").find(|c| c.contains("in_ignored")).unwrap();
    assert!(case.contains("<skipped"), "{junit}");

    let all = hangcheck_test(&["-p", "mixed-targets", "--server-env", &mark, "--run-ignored", "all", "in_"]);
    assert_eq!(all.code, 4, "the ignored trial ran and failed\n{all}");
    let report = all.report();
    assert_eq!(outcome(&report, "in_ignored"), Some("failed".into()), "{all}");
    assert_eq!(outcome(&report, "in_three"), Some("passed".into()), "{all}");
    assert!(all.stdout.contains("the ignored trial ran"), "{all}");
    crate::util::assert_no_process_with(&mark);
}

#[test]
fn a_filter_that_matches_nothing_fails_unless_told_otherwise() {
    let run = hangcheck_test(&["-p", "two-runtimes", "no_such_test"]);
    assert_eq!(run.code, 3, "{run}");
    assert!(run.error_line().contains("no test matches the filters"), "{run}");
    let warned = hangcheck_test(&["-p", "two-runtimes", "--no-tests", "warn", "no_such_test"]);
    assert_eq!(warned.code, 0, "{warned}");
    assert!(warned.stderr.contains("warning: no test matches the filters"), "{warned}");
}

#[test]
fn zero_timeouts_are_errors_naming_the_key() {
    for flag in ["--test-timeout", "--startup-timeout", "--shutdown-grace", "--settle"] {
        let run = hangcheck_test(&["-p", "two-runtimes", flag, "0s"]);
        assert_eq!(run.code, 3, "{run}");
        let error = run.error_line();
        assert!(error.contains(&format!("{flag} must be longer than zero")), "{error}");
    }
}
