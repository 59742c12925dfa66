//! Hangs leave evidence: stalls caught while the worker is stuck, hung tests, shutdown
//! hangs, stacks from a frozen or stopped server, and stacks on demand; each written
//! before anything is signalled, and nothing left running.

use std::path::Path;

use crate::util::{assert_no_process_with, hangcheck_test, marker, read, run_dir_of, spawn_runner, wait_for};

const HANG: i32 = 6;
const STALLS: i32 = 7;

#[test]
fn a_blocked_worker_is_caught_with_the_handler_that_blocked_it() {
    let mark = marker("stall");
    let run = hangcheck_test(&["-p", "blocking-handler", "--stall-threshold", "250ms", "--server-env", &mark]);
    // A stall is not a hang: the request completed.
    assert_eq!(run.code, STALLS, "{run}");
    assert_eq!(run.report()["verdict"], "stalls");
    let report = run.report();
    let stalls = report["stalls"].as_array().unwrap();
    // On a loaded machine an ordinary poll may be reported too; the blocked one must be.
    let stall = stalls
        .iter()
        .find(|s| s["test"] == "e2e::audit_during_backup" && s["task"]["group"] == "conn")
        .unwrap_or_else(|| panic!("no stall of the AUDIT handler: {stalls:#?}"));
    let blocked_in = stall["blocked_in"].as_str().unwrap();
    assert!(blocked_in.starts_with("blocking_handler::audit_entries at "), "{blocked_in}");
    assert!(blocked_in.contains("examples/blocking-handler/src/main.rs:"), "{blocked_in}");
    assert!(stall["stuck_ms"].as_u64().unwrap() >= 250, "{stall:#?}");
    assert_eq!(stall["threshold_ms"], 250);
    // The task being polled is named (tokio_unstable poll hooks): the connection task.
    assert!(stall["task"]["location"].as_str().unwrap().starts_with("examples/blocking-handler/src/main.rs:"));
    let file = read(Path::new(stall["file"].as_str().unwrap()));
    assert!(file.contains("blocking_handler::audit_entries"), "{file}");
    assert!(run.stdout.contains("STALL"), "{run}");
    // trace.json: the stall is a slice on its worker's own track.
    let trace: serde_json::Value = serde_json::from_str(&read(&run.run_dir().join("trace.json"))).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let worker = events
        .iter()
        .find(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["tid"] == stall["tid"])
        .unwrap_or_else(|| panic!("no track for worker {}", stall["tid"]));
    assert!(worker["args"]["name"].as_str().unwrap().contains("tokio-rt-worker"), "{worker}");
    let slice = events
        .iter()
        .find(|e| e["ph"] == "X" && e["cat"] == "stall" && e["tid"] == stall["tid"] && e["pid"] == worker["pid"])
        .unwrap_or_else(|| panic!("no stall slice on the worker's track"));
    assert_eq!(slice["args"]["blocked_in"], stall["blocked_in"]);
    assert_eq!(slice["dur"].as_u64(), stall["stuck_ms"].as_u64().map(|ms| ms * 1000));
    // The flight recorder's events up to the stall, next to its stack: the stall is the last.
    let events = Path::new(stall["file"].as_str().unwrap()).with_extension("events.jsonl");
    let (_, events) = crate::flight_recorder::events_file(&events);
    let caught = events.iter().rev().find(|e| e["event"] == "stall").expect("the stall in the recorder");
    assert_eq!((&caught["tid"], &caught["task"]), (&stall["tid"], &stall["task"]["id"]));
    assert_no_process_with(&mark);
}

#[test]
fn a_hung_test_leaves_stacks_on_disk_and_the_next_tests_still_run() {
    let mark = marker("hung-test");
    let run = hangcheck_test(&["-p", "never-answers", "--server-env", &mark]);
    assert_eq!(run.code, HANG, "{run}");
    let report = run.report();
    let tests = report["tests"].as_array().unwrap();
    let outcome = |id: &str| crate::util::outcome_of(&report, id);
    assert_eq!(outcome("e2e::next_on_a_quiet_topic"), "hung");
    assert_eq!(outcome("e2e::then_ping_still_works"), "passed", "the suite goes on after a hang");
    let hung = tests.iter().find(|t| t["outcome"] == "hung").unwrap();
    assert_eq!(hung["stacks_source"], "agent");
    let evidence: Vec<&str> = hung["evidence"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    let stacks = evidence.iter().find(|e| e.ends_with(".stacks.txt")).expect("a stack file");
    let text = read(Path::new(stacks));
    assert!(text.contains("source: agent") && text.contains("thread "), "{text}");
    assert!(text.contains("tokio-rt-worker"), "every worker's stack is there: {text}");
    // The async task stacks (tokio's task dump) show where the request is parked.
    assert!(text.contains("== async tasks:"), "{text}");
    // The file reads in the order of a diagnosis: the hung test's tasks first, with where
    // they wait, then every async task, then the threads with tokio's frames folded; every
    // frame is kept in the JSON beside it.
    let (summary, threads) = (text.find("== summary").expect("a summary"), text.find("== threads").unwrap());
    assert!(summary < threads && text[summary..threads].contains("waiting in never_answers::next_message"), "{text}");
    assert!(text.contains(" frames of "), "runtime frames are folded: {text}");
    let json = stacks.replace(".stacks.txt", ".stacks.json");
    let full: serde_json::Value = serde_json::from_str(&read(Path::new(&json))).unwrap();
    assert!(full["threads"].as_array().unwrap().iter().any(|t| t["frames"].as_array().unwrap().len() > 5));
    assert!(text.contains("never_answers::next_message"), "{text}");
    // And the terminal names it, under the HANG line: the function the request waits in,
    // its line, and what it awaits.
    let hang = &run.stdout[run.stdout.find("HANG").unwrap_or_else(|| panic!("no HANG line\n{run}"))..];
    assert!(
        hang.contains("1 × waiting in never_answers::next_message (examples/never-answers/src/main.rs:")
            && hang.contains("on tokio::sync::oneshot::Receiver"),
        "{run}"
    );
    assert_eq!(hung["waiting"][0]["function"], "never_answers::next_message", "{hung:#}");
    // The request's task never finished: it is the leak, attributed to the hung test.
    assert_eq!(report["leaks"][0]["leaked_by"][0]["test"], "e2e::next_on_a_quiet_topic");
    let junit = read(&run.run_dir().join("junit.xml"));
    assert!(junit.contains("next_on_a_quiet_topic") && junit.contains("<failure"), "{junit}");
    assert_no_process_with(&mark);
}

#[test]
fn a_shutdown_hang_names_what_is_still_alive_and_leaves_no_server() {
    let mark = marker("shutdown-hang");
    let run = hangcheck_test(&["-p", "shutdown-hang", "--server-env", &mark]);
    assert_eq!(run.code, HANG, "{run}");
    let report = run.report();
    let shutdown = &report["shutdown"];
    assert_eq!(shutdown["outcome"], "hung");
    let flusher = shutdown["survivors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["group"] == "metrics-flusher")
        .expect("the flusher is still alive");
    assert!(flusher["oldest_age_ms"].as_u64().unwrap() > 0);
    assert!(flusher["location"].as_str().unwrap().starts_with("examples/shutdown-hang/src/main.rs:"));
    for file in shutdown["evidence"].as_array().unwrap() {
        assert!(!read(Path::new(file.as_str().unwrap())).is_empty());
    }
    // The recorder's events: the flusher was spawned and never ended.
    let events = run.run_dir().join("shutdown.events.jsonl");
    let (_, events) = crate::flight_recorder::events_file(&events);
    let flusher = events.iter().find(|e| e["event"] == "task-spawn" && e["group"] == "metrics-flusher");
    let task = &flusher.unwrap_or_else(|| panic!("no flusher spawn in {events:#?}"))["task"];
    assert!(!events.iter().any(|e| e["event"] == "task-end" && e["task"] == *task), "the flusher never ended");
    assert!(run.stderr.contains("shutdown hang"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn a_fixed_shutdown_is_clean() {
    let run = hangcheck_test(&["-p", "shutdown-hang", "--server-env", "SHUTDOWN_HANG_FIXED=1"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.report()["shutdown"]["outcome"], "clean");
}

#[test]
fn stacks_come_back_when_every_worker_is_blocked() {
    let mark = marker("all-blocked");
    let run = hangcheck_test(&["-p", "freezer", "--server-env", &mark, "blocks_every_worker"]);
    assert_eq!(run.code, HANG, "{run}");
    let test = &run.report()["tests"][0];
    assert_eq!(test["stacks_source"], "agent");
    let stacks = read(&run.run_dir().join("hangs/freeze.blocks_every_worker.stacks.txt"));
    let threads = &stacks[stacks.find("== threads").expect("a threads section")..];
    assert_eq!(threads.matches("freezer::block_this_worker").count(), 2, "both workers, blocked:\n{stacks}");
    // The summary names both, as blocked threads of the server's own code.
    let summary = &stacks[..stacks.find("== threads").unwrap()];
    assert_eq!(summary.matches("in freezer::block_this_worker at ").count(), 2, "{stacks}");
    assert_no_process_with(&mark);
}

#[test]
fn stacks_come_from_outside_when_the_server_is_stopped() {
    let mark = marker("sigstop");
    let run = hangcheck_test(&["-p", "freezer", "--server-env", &mark, "stops_the_server"]);
    assert_eq!(run.code, HANG, "{run}");
    let report = run.report();
    assert_eq!(report["tests"][0]["outcome"], "hung");
    assert_eq!(report["tests"][0]["stacks_source"], "gdb");
    let stacks = read(&run.run_dir().join("hangs/freeze.stops_the_server.stacks.txt"));
    assert!(stacks.contains("source: gdb") && stacks.contains("process state T"), "{stacks}");
    assert!(stacks.contains("Thread "), "gdb printed the threads:\n{stacks}");
    assert_eq!(report["shutdown"]["outcome"], "hung", "a stopped server cannot exit on SIGTERM");
    assert_no_process_with(&mark);
}

#[test]
fn stacks_on_demand_during_a_run_and_ctrl_c_tears_everything_down() {
    let mark = marker("on-demand");
    let runner = spawn_runner(&[
        "hangcheck",
        "test",
        "--color",
        "never",
        "-p",
        "never-answers",
        "--test-timeout",
        "300s",
        "--server-env",
        &mark,
        "next_on_a_quiet_topic",
    ]);
    let pid = runner.child.id();
    let mut run_dir = None;
    wait_for("the runner's run directory", || {
        run_dir = run_dir_of(pid);
        run_dir.is_some()
    });
    // never-answers' suite is on the harness: its trials share one log.
    let log = run_dir.unwrap().join("tests/e2e/harness-1.log");
    wait_for("the hanging trial to start", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("test next_on_a_quiet_topic ..."))
    });

    // Other runs may be in progress in the same target directory: name this one.
    let pid_arg = pid.to_string();
    let stacks = crate::util::run_runner(&["hangcheck", "stacks", "--pid", &pid_arg], &crate::util::workspace_root());
    assert_eq!(stacks.code, 0, "{stacks}");
    assert!(stacks.stdout.contains("source: agent") && stacks.stdout.contains("tokio-rt-worker"), "{stacks}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let run = runner.wait();
    assert_eq!(run.code, 130, "{run}");
    assert_eq!(run.report()["verdict"], "interrupted");
    assert_no_process_with(&mark);
}

#[test]
fn a_lock_order_deadlock_names_both_waiting_functions() {
    let mark = marker("lock-order");
    let run = hangcheck_test(&["-p", "lock-order", "--server-env", &mark]);
    assert_eq!(run.code, HANG, "{run}");
    let hang = &run.stdout[run.stdout.find("HANG").unwrap_or_else(|| panic!("no HANG line\n{run}"))..];
    for function in ["lock_order::transfer", "lock_order::audit"] {
        assert!(
            hang.contains(&format!("1 × waiting in {function} (examples/lock-order/src/main.rs:"))
                && hang.contains("on tokio::sync::mutex::Mutex::lock"),
            "{function}\n{run}"
        );
    }
    assert!(hang.contains("2 tasks each wait on a lock"), "{run}");
    // Parked by the runtime, not blocked: no thread is named.
    assert!(!hang.contains("thread \""), "{run}");
    let report = run.report();
    let hung = report["tests"].as_array().unwrap().iter().find(|t| t["outcome"] == "hung").unwrap().clone();
    assert_eq!(hung["id"], "e2e::transfer_during_an_audit");
    assert_eq!(hung["waiting"].as_array().unwrap().len(), 2, "{hung:#}");
    // The server still answers what needs no lock, and the suite goes on.
    assert!(run.stdout.contains("PASS") && run.stdout.contains("e2e::without_locks_the_server_still_answers"));
    assert_no_process_with(&mark);

    let fixed = hangcheck_test(&["-p", "lock-order", "--server-env", "LOCK_ORDER_FIXED=1", "--server-env", &mark]);
    assert_eq!(fixed.code, 0, "one lock order, no deadlock\n{fixed}");
    assert_no_process_with(&mark);
}

#[test]
fn a_stall_reports_its_whole_length_not_only_when_it_was_caught() {
    let mark = marker("stall-length");
    let run =
        hangcheck_test(&["-p", "two-runtimes", "--stall-threshold", "250ms", "--server-env", &mark, "slow_request"]);
    assert_eq!(run.code, STALLS, "{run}");
    let report = run.report();
    let stall = report["stalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["blocked_in"].as_str().is_some_and(|b| b.starts_with("two_runtimes::block_the_worker")))
        .unwrap_or_else(|| panic!("the 1.5 s block on the second runtime is caught\n{run}"))
        .clone();
    assert_eq!(stall["test"], "e2e::slow_request_on_second");
    // The handler sleeps 1.5 s in one poll: that is its whole length (the clock is
    // coarse by a few ms); it was caught well before it ended.
    let total = stall["total_ms"].as_u64().unwrap_or_else(|| panic!("no total: {stall:#?}"));
    let caught = stall["stuck_ms"].as_u64().unwrap();
    assert!(total >= 1450, "{stall:#?}");
    assert!(caught < total, "{stall:#?}");
    // The worker was still blocked when its stack was taken: no note says otherwise.
    assert!(stall["note"].is_null(), "{stall:#?}");
    assert!(run.stdout.contains("in all (caught at"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn with_stall_verdict_warn_a_stall_is_reported_and_does_not_fail_the_run() {
    let mark = marker("stall-warn");
    let run = hangcheck_test(&[
        "-p",
        "two-runtimes",
        "--stall-threshold",
        "250ms",
        "--stall-verdict",
        "warn",
        "--server-env",
        &mark,
        "slow_request",
    ]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    assert_eq!(report["stall_verdict"], "warn");
    assert!(!report["stalls"].as_array().unwrap().is_empty(), "{run}");
    assert!(run.stdout.contains("STALL"), "{run}");
    let junit = read(&run.run_dir().join("junit.xml"));
    assert!(junit.contains("stall::1") && junit.contains("stall-verdict = warn"), "{junit}");
    assert_no_process_with(&mark);
}
