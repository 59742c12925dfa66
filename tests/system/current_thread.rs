//! A server made only of current-thread runtimes (as an MQTT broker is): tokio dumps those
//! only from inside, so the agent spawns its dump task onto each, and leak verdicts and
//! hung tests still say where their tasks wait; a blocked one is named, never waited on.

use std::path::Path;

use crate::util::{assert_no_process_with, hangcheck_test, marker, read};

const HANG: i32 = 6;

/// The stack file of the test `id`, which hung.
fn hung_stacks(report: &serde_json::Value, id: &str) -> (serde_json::Value, String) {
    let tests = report["tests"].as_array().unwrap();
    let test = tests.iter().find(|t| t["id"] == id).unwrap_or_else(|| panic!("no {id}: {tests:#?}")).clone();
    assert_eq!(test["outcome"], "hung", "{test:#}");
    let evidence = test["evidence"].as_array().unwrap();
    let file = evidence.iter().map(|e| e.as_str().unwrap()).find(|e| e.ends_with(".stacks.txt")).unwrap();
    let text = read(Path::new(file));
    (test, text)
}

/// The task groups that leaked are `groups`, the server's: none is hangcheck's own task
/// (the dump task it spawns onto a runtime, spawned in hangcheck-runtime).
fn only_the_servers_leaks(report: &serde_json::Value, groups: &[&str]) {
    for leak in report["leaks"].as_array().unwrap() {
        if leak["kind"] != "named" && leak["kind"] != "location" {
            continue; // fds and threads the hung request holds
        }
        let group = leak["group"].as_str().unwrap_or("");
        assert!(groups.contains(&group), "a task leak not of the server's: {leak:#}");
        assert!(!leak["location"].as_str().unwrap_or("").contains("hangcheck-runtime"), "{leak:#}");
    }
}

#[test]
fn leaks_and_hung_requests_on_current_thread_runtimes_say_where_they_wait() {
    let mark = marker("current-thread");
    let run = hangcheck_test(&[
        "-p",
        "current-thread",
        "--server-env",
        &mark,
        "ping_both",
        "subscribe_and_leave",
        "wait_for_next",
    ]);
    assert_eq!(run.code, HANG, "{run}");

    // The hung request, on the runtime of `#[hangcheck_runtime::main(flavor = "current_thread")]`.
    let hang = &run.stdout[run.stdout.find("HANG").unwrap_or_else(|| panic!("no HANG line\n{run}"))..];
    assert!(
        hang.contains("1 × waiting in current_thread::next_message (tests/fixtures/current-thread/src/main.rs:")
            && hang.contains("on tokio::sync::oneshot::Receiver"),
        "{run}"
    );
    let report = run.report();
    let (hung, text) = hung_stacks(&report, "e2e::wait_for_next");
    assert_eq!(hung["waiting"][0]["function"], "current_thread::next_message", "{hung:#}");
    assert!(!text.contains("not dumped"), "every runtime was dumped: {text}");

    // The leak, on the hand-built runtime of the thread `listener-2`.
    assert!(run.stdout.contains("LEAK task group `subscriber`, spawned at tests/fixtures/current-thread/src/main.rs:"));
    assert!(
        run.stdout.contains("1 × waiting in current_thread::wait_for_news (tests/fixtures/current-thread/src/main.rs:")
            && run.stdout.contains("on tokio::sync::notify::Notified"),
        "{run}"
    );
    let leaks = report["leaks"].as_array().unwrap();
    let leak = leaks.iter().find(|l| l["group"] == "subscriber").unwrap_or_else(|| panic!("{leaks:#?}"));
    assert_eq!(leak["waiting"][0]["function"], "current_thread::wait_for_news", "{leak:#}");
    // The hung request's connection task is the other leak; nothing else is.
    only_the_servers_leaks(&report, &["subscriber", "conn"]);
    assert_no_process_with(&mark);
}

#[test]
fn a_clean_test_on_current_thread_runtimes_raises_nothing() {
    let mark = marker("current-thread-clean");
    let run = hangcheck_test(&["-p", "current-thread", "--server-env", &mark, "ping_both"]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    assert_eq!(report["leaks"].as_array().map_or(0, Vec::len), 0, "{run}");
    assert!(!run.stdout.contains("LEAK") && !run.stdout.contains("STALL"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn a_blocked_current_thread_runtime_is_named_and_never_waited_on() {
    let mark = marker("current-thread-blocked");
    // With a multi-thread runtime beside them, and a stall threshold the frozen thread
    // passes: a stuck thread stops only its own runtime's dump.
    let run = hangcheck_test(&[
        "-p",
        "current-thread",
        "--server-env",
        "CURRENT_THREAD_POOL=1",
        "--stall-threshold",
        "1s",
        "--server-env",
        &mark,
        "blocked_",
    ]);
    assert_eq!(run.code, HANG, "{run}");
    let report = run.report();
    let (_, text) = hung_stacks(&report, "e2e::blocked_freeze_the_second");
    // The frozen runtime is named with why; the other runtime's tasks are there.
    assert!(
        text.contains(
            "not dumped: the current-thread runtime `listener-2` did not poll the dump task within 2000 ms: its \
             thread is blocked or not driving the runtime"
        ),
        "{text}"
    );
    assert!(text.contains("of group conn spawned at tests/fixtures/current-thread/src/main.rs:"), "{text}");
    // The multi-thread runtime's request, waiting for a message, is there: the frozen
    // thread is no worker of that runtime.
    assert!(text.contains("current_thread::next_message") && !text.contains("a dump needs every worker"), "{text}");
    // The frozen thread is named on screen, in the server's function that blocks it.
    let hang = &run.stdout[run.stdout.find("HANG").unwrap_or_else(|| panic!("no HANG line\n{run}"))..];
    assert!(hang.contains("thread \"listener-2\"") && hang.contains("in current_thread::freeze"), "{run}");
    // The suite went on, and the dump task the frozen runtime never ran is not a leak.
    let tests = report["tests"].as_array().unwrap();
    let after = tests.iter().find(|t| t["id"] == "e2e::blocked_then_main_still_answers").unwrap();
    assert_eq!(after["outcome"], "passed", "{after:#}");
    only_the_servers_leaks(&report, &["conn"]);
    assert_no_process_with(&mark);
}
