//! `--stress N`: N copies of each test at once against one server; the copies are one
//! test to the run (one epoch, one settle), so a leak counts all of them.

use std::path::Path;

use crate::util::{
    assert_no_process_with, hangcheck_test, leaked_by, marker, outcome_of, read, spawn_runner_env, test_args, Run,
};

/// `hangcheck test ARGS` with `mark` in the runner's environment, so that every copy it
/// starts (and the server) carries it for [`assert_no_process_with`].
fn marked_run(args: &[&str], mark: &str) -> Run {
    let (key, value) = mark.split_once('=').expect("a marker is KEY=VALUE");
    spawn_runner_env(&test_args(args), &[(key, value)]).wait()
}

#[test]
fn stress_4_counts_the_leak_of_all_four_copies_of_each_harness_trial() {
    let mark = marker("stress-leak");
    let run = hangcheck_test(&["-p", "waiter-leak", "--stress", "4", "--settle", "3s", "--server-env", &mark]);
    assert_eq!(run.code, 5, "{run}");
    let report = run.report();
    assert_eq!(report["stress"], 4, "{run}");
    let tests = report["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 7, "each test once, its copies inside it\n{run}");
    assert!(tests.iter().all(|t| t["outcome"] == "passed"), "{tests:#?}");
    // A single run leaks 1 + 3 waiters (tests/system/leaks.rs); four copies of each, 4 × that.
    let leaks = report["leaks"].as_array().unwrap();
    let waiter = leaks.iter().find(|l| l["group"] == "waiter").unwrap_or_else(|| panic!("{leaks:#?}"));
    assert_eq!(waiter["growth"], 16, "{waiter:#}");
    assert_eq!(leaked_by(waiter), vec![("e2e::watch_and_leave", 4), ("e2e::watch_three_keys_and_leave", 12)]);
    // Each copy ran in a harness process of its own, with a log of its own.
    for k in 1..=4 {
        let log = run.run_dir().join(format!("tests/e2e/watch_and_leave.copy-{k}.log"));
        assert!(log.exists(), "{}\n{run}", log.display());
    }
    assert!(run.stderr.contains("4 copies of each at once") || run.stdout.contains("4 copies of each at once"));
    assert_no_process_with(&mark);
}

#[test]
fn a_hang_under_stress_gets_evidence_then_every_copy_is_stopped() {
    let mark = marker("stress-hang");
    let run = marked_run(&["-p", "never-answers", "--stress", "3", "quiet", "ping"], &mark);
    assert_eq!(run.code, 6, "{run}");
    let report = run.report();
    let tests = report["tests"].as_array().unwrap();
    let outcome = |id: &str| outcome_of(&report, id);
    assert_eq!(outcome("e2e::next_on_a_quiet_topic"), "hung");
    assert_eq!(outcome("e2e::then_ping_still_works"), "passed", "the suite goes on after a hang");
    let hung = tests.iter().find(|t| t["outcome"] == "hung").unwrap();
    // The evidence, written before any copy was signalled, names where the requests wait.
    let evidence: Vec<&str> = hung["evidence"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    let stacks = evidence.iter().find(|e| e.ends_with(".stacks.txt")).unwrap_or_else(|| panic!("{hung:#}"));
    assert!(read(Path::new(stacks)).contains("never_answers::next_message"), "{stacks}");
    assert_eq!(hung["waiting"][0]["function"], "never_answers::next_message", "{hung:#}");
    assert_eq!(hung["waiting"][0]["count"], 3, "the three copies' requests: {hung:#}");
    // The three requests never finished: the leak, attributed to the hung test.
    let leak = &report["leaks"][0];
    assert_eq!(leaked_by(leak), vec![("e2e::next_on_a_quiet_topic", 3)], "{leak:#}");
    assert_no_process_with(&mark);
}

#[test]
fn stress_runs_n_processes_of_each_libtest_test_in_each_round() {
    let mark = marker("stress-procs");
    let run = marked_run(&["-p", "mixed-targets", "--test", "procs", "--stress", "3", "--repeat", "2"], &mark);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    assert_eq!((report["stress"].as_u64(), report["rounds"]["stress"].as_u64()), (Some(3), Some(3)), "{run}");
    let tests = report["tests"].as_array().unwrap();
    assert!(
        tests.len() == 4 && tests.iter().all(|t| t["outcome"] == "passed"),
        "two tests, two rounds
{run}"
    );
    for t in tests {
        let name = t["id"].as_str().unwrap().trim_start_matches("procs::");
        for k in 1..=3 {
            let log = run.run_dir().join(format!("rounds/{}/tests/procs/{name}.copy-{k}.log", t["round"]));
            assert!(read(&log).contains("test result: ok. 1 passed"), "{}", log.display());
        }
    }
    assert_no_process_with(&mark);
}

#[test]
fn a_hang_of_libtest_copies_gets_evidence_and_no_copy_is_left_running() {
    let mark = marker("stress-procs-hang");
    let run = marked_run(&["-p", "lock-order", "--stress", "2", "transfer_during_an_audit"], &mark);
    assert_eq!(run.code, 6, "{run}");
    let report = run.report();
    assert_eq!(outcome_of(&report, "e2e::transfer_during_an_audit"), "hung", "{run}");
    let hung = &report["tests"][0];
    let evidence: Vec<&str> = hung["evidence"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    let stacks = evidence.iter().find(|e| e.ends_with(".stacks.txt")).unwrap_or_else(|| panic!("{hung:#}"));
    assert!(read(Path::new(stacks)).contains("lock_order::"), "{stacks}");
    for k in 1..=2 {
        let log = run.run_dir().join(format!("tests/e2e/transfer_during_an_audit.copy-{k}.log"));
        assert!(log.exists(), "{}\n{run}", log.display());
    }
    assert_no_process_with(&mark);
}
