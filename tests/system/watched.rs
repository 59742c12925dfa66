//! An all-clear means the server was watched: an uninstrumented runtime or tests that
//! never reach the server are setup errors, every instrumented runtime is listed and
//! watched, and what the server's own start-up adds is never blamed on a test.

use crate::util::{assert_no_process_with, hangcheck_test, marker};

const SETUP: i32 = 3;

#[test]
fn a_server_on_plain_tokio_main_is_a_setup_error_naming_the_fix() {
    let mark = marker("plain-main");
    let run = hangcheck_test(&["-p", "plain-main", "--server-env", &mark]);
    assert_eq!(run.code, SETUP, "{run}");
    let error = run.error_line();
    assert!(error.contains("not instrumented"), "{error}");
    assert!(error.contains("#[hangcheck_runtime::main]") && error.contains("hangcheck_runtime::instrument"), "{error}");
    let report = run.report();
    assert_eq!(report["verdict"], "setup-error");
    // No hook is claimed that never ran.
    let caps = report["server"]["capabilities"].as_array().unwrap();
    for claim in ["task-hooks", "poll-hooks", "stall-watchdog"] {
        assert!(!caps.iter().any(|c| c == claim), "{claim} claimed: {caps:?}");
    }
    assert_eq!(report["server"]["runtimes"].as_array().unwrap().len(), 0);
    assert_no_process_with(&mark);
}

#[test]
fn tests_that_fall_back_to_a_stand_in_server_are_a_setup_error_naming_the_variable() {
    let mark = marker("stand-in");
    let run = hangcheck_test(&["-p", "stand-in", "--server-env", &mark]);
    assert_eq!(run.code, SETUP, "{run}");
    let error = run.error_line();
    assert!(error.contains("no test reached the server"), "{error}");
    assert!(error.contains("HANGCHECK_ADDR_ECHO"), "{error}");
    // Each test is marked, in the terminal, report.json and junit.
    assert!(run.stdout.contains("e2e::echoes_a_word  (did not reach the server)"), "{run}");
    let report = run.report();
    let tests = report["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2);
    assert!(tests.iter().all(|t| t["outcome"] == "passed" && t["reached_server"] == false), "{tests:#?}");
    let junit = std::fs::read_to_string(run.run_dir().join("junit.xml")).unwrap();
    assert!(junit.contains(r#"name="hangcheck.reached-server" value="false""#), "{junit}");
    // The ready line names the variables, not only the announce names.
    assert!(run.stderr.contains("announced HANGCHECK_ADDR_ECHO=127.0.0.1:"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn every_instrumented_runtime_is_listed_by_name_and_a_stall_on_the_second_is_caught() {
    let mark = marker("two-runtimes");
    let run = hangcheck_test(&["-p", "two-runtimes", "--stall-threshold", "250ms", "--server-env", &mark, "ping_"]);
    let report = run.report();
    let runtimes: Vec<&str> =
        report["server"]["runtimes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(runtimes, vec!["main", "listener-2"], "{run}");
    assert!(run.stderr.contains("runtimes watched: main, listener-2"), "{run}");
    for r in report["server"]["runtimes"].as_array().unwrap() {
        assert!(r["fired"].as_array().unwrap().iter().any(|h| h == "task-spawn"), "{r:#?}");
    }
    let tests = report["tests"].as_array().unwrap();
    assert!(
        tests.iter().filter(|t| t["outcome"] == "passed").all(|t| t["reached_server"] == true),
        "both listeners reached: {tests:#?}"
    );
    assert_no_process_with(&mark);
}

#[test]
fn a_warmup_test_opens_a_lazy_pool_before_the_baseline_so_no_test_is_blamed() {
    // The server opens a pool (a task and a socket for its life) on its first connection.
    let mark = marker("warmup-test");
    let lazy = ["-p", "mixed-targets", "--test", "procs", "--server-env", "LAZY_POOL=1", "--server-env", &mark];
    let blamed = hangcheck_test(&lazy);
    assert_eq!(blamed.code, 5, "without a warmup, the first test to connect is blamed\n{blamed}");
    let report = blamed.report();
    let pool = report["leaks"].as_array().unwrap().iter().find(|l| l["group"] == "pool").cloned();
    assert_eq!(crate::util::leaked_by(&pool.expect("the pool, as a leak")), vec![("procs::proc_one", 1)]);

    let warmed = hangcheck_test(&[&lazy[..], &["--warmup-test", "proc_one"]].concat());
    assert_eq!(warmed.code, 0, "{warmed}");
    let report = warmed.report();
    assert!(report["leaks"].as_array().unwrap().is_empty(), "{warmed}");
    assert_eq!(report["warmup"][0]["id"], "procs::proc_one", "{:#}", report["warmup"]);
    assert_eq!(report["warmup"][0]["outcome"], "passed");
    // It ran before the baseline, once, and is not among the judged tests.
    let ids: Vec<&str> = report["tests"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["procs::proc_two"], "{warmed}");
    let startup: Vec<&str> =
        report["startup"].as_array().unwrap().iter().map(|g| g["measure"].as_str().unwrap()).collect();
    assert!(startup.contains(&"pool"), "what the warmup opened is start-up: {startup:?}\n{warmed}");
    assert!(warmed.stderr.contains("Warmup procs::proc_one passed"), "{warmed}");

    let unknown = hangcheck_test(&[&lazy[..], &["--warmup-test", "proc_three"]].concat());
    assert_eq!(unknown.code, 3, "{unknown}");
    assert!(unknown.error_line().contains("the warmup test `proc_three` matches no test"), "{unknown}");
    assert_no_process_with(&mark);
}

#[test]
fn resources_a_server_opens_after_its_announce_are_start_up_not_a_leak() {
    let mark = marker("late-start");
    let run = hangcheck_test(&["-p", "late-start", "--server-env", &mark]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    let startup: Vec<&str> =
        report["startup"].as_array().unwrap().iter().map(|g| g["measure"].as_str().unwrap()).collect();
    assert!(startup.contains(&"fd:socket"), "the metrics listener: {startup:?}\n{run}");
    assert!(startup.contains(&"threads"), "the admin thread: {startup:?}\n{run}");
    assert!(report["leaks"].as_array().unwrap().is_empty(), "{run}");
    assert!(run.stderr.contains("Start-up"), "{run}");
    // A clean run says what it watched.
    assert!(run.stdout.contains("Watched"), "{run}");
    assert!(run.stdout.contains("2 of 2 tests reached the server"), "{run}");
    assert_no_process_with(&mark);
}
