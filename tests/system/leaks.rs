//! The leak verdict on the waiter-leak example, with the leak on and off.

use crate::util::{assert_no_process_with, hangcheck_test, leaked_by, marker};

#[test]
fn leak_on_names_the_group_its_location_and_exactly_the_tests_that_leaked_it() {
    let mark = marker("leak-on");
    let run = hangcheck_test(&["-p", "waiter-leak", "--settle", "3s", "--server-env", &mark]);
    assert_eq!(run.code, 5, "the leaks exit code\n{run}");

    // The terminal names the group, where it is spawned, its growth and the tests.
    assert!(run.stdout.contains("LEAK task group `waiter`, spawned at examples/waiter-leak/src/main.rs:"), "{run}");
    assert!(run.stdout.contains("live 0 -> 4 (+4, allowed 0)"), "{run}");
    assert!(run.stdout.contains("leaked by: e2e::watch_and_leave (1), e2e::watch_three_keys_and_leave (3)"), "{run}");
    // ... and where its survivors wait, from their async stacks.
    assert!(
        run.stdout.contains("4 × waiting in waiter_leak::handle (examples/waiter-leak/src/main.rs:")
            && run.stdout.contains("on tokio::sync::watch::Receiver::changed"),
        "{run}"
    );

    let report = run.report();
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["verdict"], "leaks");
    assert_eq!(report["exit_code"], 5);
    let leaks = report["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 1, "only the waiter group leaks: {leaks:#?}");
    let leak = &leaks[0];
    assert_eq!(leak["group"], "waiter");
    assert_eq!(leak["growth"], 4);
    assert!(leak["location"].as_str().unwrap().starts_with("examples/waiter-leak/src/main.rs:"));
    assert_eq!(leaked_by(leak), vec![("e2e::watch_and_leave", 1), ("e2e::watch_three_keys_and_leave", 3)]);
    assert!(leak["oldest_age_ms"].as_u64().is_some());
    assert_eq!(leak["waiting"][0]["count"], 4, "{leak:#}");
    assert_eq!(leak["waiting"][0]["function"], "waiter_leak::handle", "{leak:#}");

    // Every test passed, and each has its settled snapshot on disk.
    let entries = report["tests"].as_array().unwrap();
    assert_eq!(entries.len(), 7);
    assert!(entries.iter().all(|t| t["outcome"] == "passed"), "{entries:#?}");
    let snapshots = std::fs::read_to_string(run.run_dir().join("snapshots.jsonl")).unwrap();
    assert_eq!(snapshots.lines().count(), 1 + 7 + 1, "baseline, one per test, final");
    let junit = std::fs::read_to_string(run.run_dir().join("junit.xml")).unwrap();
    assert!(junit.contains("leak::waiter"), "{junit}");
    assert_eq!(report["shutdown"]["outcome"], "clean");
    assert_no_process_with(&mark);
}

#[test]
fn leak_off_exits_zero_although_connection_tasks_outlive_each_test() {
    let mark = marker("leak-off");
    let run = hangcheck_test(&[
        "-p",
        "waiter-leak",
        "--server-env",
        "WAITER_LEAK_FIXED=1",
        "--settle",
        "20s",
        "--server-env",
        &mark,
    ]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("No leaks"), "{run}");
    let report = run.report();
    assert_eq!(report["verdict"], "ok");
    assert_eq!(report["leaks"].as_array().unwrap().len(), 0);
    // The connection tasks were there (one per client, 17 in all), each outlived its
    // test by its teardown, and settling saw every one of them finish.
    let last = &report["final"]["groups"];
    let conn = last.as_array().unwrap().iter().find(|g| g["key"] == "conn").expect("a conn group");
    assert_eq!(conn["spawned"], 17);
    assert_eq!(conn["live"], 0);
    let waiter = last.as_array().unwrap().iter().find(|g| g["key"] == "waiter").expect("a waiter group");
    assert_eq!(waiter["live"], 0, "fixed waiters end with their connection");
    for t in report["tests"].as_array().unwrap() {
        assert_eq!(t["live"]["conn"], 0, "settled snapshot after {} still holds a connection task", t["id"]);
    }
    assert_no_process_with(&mark);
}

#[test]
fn an_idle_blocking_pool_thread_is_not_a_thread_leak() {
    // tokio::fs runs on the blocking pool, whose thread idles for 10 s after; the quick
    // test that follows must not make it look leaked.
    let mark = marker("blocking-pool");
    let run = hangcheck_test(&["-p", "two-runtimes", "--server-env", &mark, "reads_a_file", "then_a_quick_ping"]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    assert!(report["leaks"].as_array().unwrap().is_empty(), "{run}");
    let main = &report["server"]["runtimes"][0];
    assert_eq!(main["name"], "main");
    assert!(main["blocking_threads"].as_u64().unwrap() >= 1, "the pool thread is seen: {main:#?}");
    assert_no_process_with(&mark);
}
