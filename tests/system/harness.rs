//! E2E suites on hangcheck's harness (`hangcheck_runtime::harness`): every trial of a
//! target in one process, judged per trial; a hung trial's harness restarted for the
//! trials after it; and the same suite under a plain `cargo test`, which starts the
//! server itself.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{assert_no_process_with, hangcheck_test, leaked_by, marker, read, target_dir, workspace_root};

/// Each test's (id, outcome), in run order.
fn outcomes(tests: &[serde_json::Value]) -> Vec<(&str, &str)> {
    tests.iter().map(|t| (t["id"].as_str().unwrap(), t["outcome"].as_str().unwrap())).collect()
}

#[test]
fn one_leaking_trial_among_others_in_one_process_is_named_alone() {
    let mark = marker("harness-leak");
    // Filters pick four trials of waiter-leak's harness suite; only watch_and_leave leaks.
    let run = hangcheck_test(&[
        "-p",
        "waiter-leak",
        "--settle",
        "3s",
        "--server-env",
        &mark,
        "ping",
        "get",
        "watch_and_leave",
    ]);
    assert_eq!(run.code, 5, "the leaks exit code\n{run}");
    assert!(run.stdout.contains("leaked by: e2e::watch_and_leave (1)\n"), "{run}");
    let report = run.report();
    let tests = report["tests"].as_array().unwrap();
    let ids: Vec<&str> = tests.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["e2e::ping", "e2e::set_then_get", "e2e::get_missing_key", "e2e::watch_and_leave"]);
    assert!(tests.iter().all(|t| t["outcome"] == "passed"), "{tests:#?}");
    // One harness process ran them all: one log, every trial in it.
    let logs: Vec<&str> = tests.iter().map(|t| t["log"].as_str().unwrap()).collect();
    assert!(logs.iter().all(|l| l.ends_with("tests/e2e/harness-1.log")), "{logs:?}");
    let log = read(Path::new(logs[0]));
    for name in ["ping", "set_then_get", "get_missing_key", "watch_and_leave"] {
        assert!(log.contains(&format!("test {name} ... ok")), "{log}");
    }
    // Yet each trial has its own epoch and settled snapshot, so the leak is that trial's.
    let leaks = report["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    assert_eq!(leaks[0]["group"], "waiter");
    assert_eq!(leaked_by(&leaks[0]), vec![("e2e::watch_and_leave", 1)]);
    assert_eq!(tests[3]["live"]["waiter"], 1, "{:#?}", tests[3]);
    assert_eq!(tests[2]["live"]["waiter"].as_u64().unwrap_or(0), 0, "{:#?}", tests[2]);
    let snapshots = read(&run.run_dir().join("snapshots.jsonl"));
    assert_eq!(snapshots.lines().count(), 1 + 4 + 1, "baseline, one per trial, final");
    assert_no_process_with(&mark);
}

#[test]
fn a_hung_trial_leaves_evidence_and_a_new_harness_runs_the_trials_after_it() {
    let mark = marker("harness-hang");
    let run = hangcheck_test(&["-p", "never-answers", "--server-env", &mark]);
    assert_eq!(run.code, 6, "the hang exit code\n{run}");
    let report = run.report();
    let tests = report["tests"].as_array().unwrap();
    assert_eq!(
        outcomes(tests),
        [
            ("e2e::next_after_publish_is_delivered", "passed"),
            ("e2e::next_on_a_quiet_topic", "hung"),
            ("e2e::ping", "passed"),
            ("e2e::then_ping_still_works", "passed"),
        ]
    );
    // Evidence from the live server, on disk.
    let hung = &tests[1];
    assert_eq!(hung["stacks_source"], "agent");
    let stacks =
        hung["evidence"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).find(|e| e.ends_with(".stacks.txt"));
    let stacks = read(Path::new(stacks.expect("a stack file")));
    assert!(stacks.contains("source: agent") && stacks.contains("tokio-rt-worker"), "{stacks}");
    // The first harness ran up to the hung trial; a second one ran only the rest.
    let log_of = |i: usize| tests[i]["log"].as_str().unwrap().to_owned();
    assert!(log_of(0).ends_with("harness-1.log") && log_of(1).ends_with("harness-1.log"), "{tests:#?}");
    assert!(log_of(2).ends_with("harness-2.log") && log_of(3).ends_with("harness-2.log"), "{tests:#?}");
    let second = read(Path::new(&log_of(2)));
    assert!(second.contains("test ping ... ok") && second.contains("test then_ping_still_works ... ok"), "{second}");
    assert!(!second.contains("next_"), "the restarted harness ran only the trials not yet run:\n{second}");
    assert_eq!(leaked_by(&report["leaks"][0]), vec![("e2e::next_on_a_quiet_topic", 1)]);
    assert_no_process_with(&mark);
}

/// A plain `cargo test` of one test target, with no runner and no `HANGCHECK_*` variable.
fn plain_cargo_test(package: &str, target: &str, mark: &str) -> (bool, String, String) {
    let (key, value) = mark.split_once('=').unwrap();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--quiet", "-p", package, "--test", target, "--target-dir"])
        .arg(target_dir())
        .current_dir(workspace_root())
        .env(key, value)
        .stdin(Stdio::null());
    // No runner: nothing tells the trials where a server is but the harness itself.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HANGCHECK_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout.into_owned(), stderr.into_owned())
}

#[test]
fn plain_cargo_test_starts_the_server_itself_and_leaves_nothing_behind() {
    let mark = marker("harness-plain");
    let (ok, stdout, stderr) = plain_cargo_test("waiter-leak", "e2e", &mark);
    assert!(ok, "cargo test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("test watch_three_keys_and_leave ... ok"), "{stdout}");
    assert!(stdout.contains("test result: ok. 7 passed; 0 failed"), "{stdout}");
    assert_no_process_with(&mark);
}

#[test]
fn plain_cargo_test_gives_the_server_the_args_and_env_of_its_package_metadata() {
    // The server exits at once without `--echo` and `ECHO_MODE=exact`, which only its
    // `[package.metadata.hangcheck.server]` gives it.
    let mark = marker("harness-metadata");
    let (ok, stdout, stderr) = plain_cargo_test("mixed-targets", "inproc", &mark);
    assert!(ok, "cargo test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("test result: ok. 3 passed; 0 failed; 1 ignored"), "{stdout}");
    assert_no_process_with(&mark);
}

#[test]
fn failing_trials_are_named_with_their_messages_and_a_dead_harness_is_replaced() {
    let mark = marker("harness-failures");
    // Two targets of one package: `smoke` runs process per test, `trials` on the harness.
    let run =
        hangcheck_test(&["-p", "misbehaving-server", "--test", "smoke", "--test", "trials", "--server-env", &mark]);
    assert_eq!(run.code, 4, "the tests-failed exit code\n{run}");
    let report = run.report();
    let tests = report["tests"].as_array().unwrap();
    assert_eq!(
        outcomes(tests),
        [
            ("smoke::greets", "passed"),
            ("trials::greets", "passed"),
            ("trials::returns_an_error", "failed"),
            ("trials::panics", "failed"),
            ("trials::exits_the_process", "failed"),
            ("trials::greets_after_the_exit", "passed"),
            ("trials::is_ignored", "ignored"),
        ],
        "the ignored trial is reported as ignored, not run"
    );
    let log = |i: usize| tests[i]["log"].as_str().unwrap().to_owned();
    assert!(log(0).ends_with("tests/smoke/greets.log"), "process per test: {}", log(0));
    assert!((1..=4).all(|i| log(i).ends_with("tests/trials/harness-1.log")), "{tests:#?}");
    assert!(log(5).ends_with("tests/trials/harness-2.log"), "a new harness after the exit: {tests:#?}");
    // Each failure says why, from its own part of the shared log.
    assert_eq!(tests[2]["detail"], "the answer was 41", "{:#}", tests[2]);
    assert_eq!(tests[3]["panic"]["message"], "boom in a trial", "{:#}", tests[3]);
    assert!(tests[3]["panic"]["location"].as_str().unwrap().contains("tests/trials.rs:"), "{:#}", tests[3]);
    assert!(tests[2]["panic"].is_null(), "the panic after it is not its own: {:#}", tests[2]);
    let died = tests[4]["detail"].as_str().unwrap();
    assert!(died.contains("exited with exit code 3"), "{died}");
    assert_no_process_with(&mark);
}
