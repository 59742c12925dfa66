//! What the run reports, and how: a failed test's panic, and the same run as JSON lines.

use crate::util::{assert_no_process_with, hangcheck_test, leaked_by, marker};

#[test]
fn a_failed_test_shows_its_assertion_message_and_where_it_panicked() {
    let mark = marker("wrong-greeting");
    let run = hangcheck_test(&[
        "-p",
        "misbehaving-server",
        "--server-env",
        "MISBEHAVE=wrong-greeting",
        "--server-env",
        &mark,
    ]);
    assert_eq!(run.code, 4, "the tests-failed exit code\n{run}");
    // Under the FAIL line: where it panicked, the assertion with its left and right, the
    // log's path.
    let fail = run.stdout.find("FAIL").unwrap_or_else(|| panic!("no FAIL line\n{run}"));
    let block = &run.stdout[fail..];
    assert!(block.contains("panicked at ") && block.contains("tests/smoke.rs:"), "{run}");
    assert!(block.contains("assertion `left == right` failed: the server's greeting"), "{run}");
    assert!(block.contains(r#"left: Some("bye")"#) && block.contains(r#"right: Some("hi")"#), "{run}");
    assert!(block.contains("log: ") && block.contains("greets.log"), "{run}");

    let report = run.report();
    let test = &report["tests"][0];
    assert_eq!(test["outcome"], "failed");
    assert!(test["panic"]["location"].as_str().unwrap().contains("tests/smoke.rs:"), "{test:#}");
    assert!(test["panic"]["message"].as_str().unwrap().contains(r#"left: Some("bye")"#), "{test:#}");
    let junit = std::fs::read_to_string(run.run_dir().join("junit.xml")).unwrap();
    assert!(junit.contains("panicked at ") && junit.contains("tests/smoke.rs:"), "{junit}");
    assert_no_process_with(&mark);
}

#[test]
fn message_format_json_streams_the_same_findings_as_the_report() {
    let mark = marker("leak-json");
    let run = hangcheck_test(&["-p", "waiter-leak", "--message-format", "json", "--server-env", &mark]);
    assert_eq!(run.code, 5, "the leaks exit code\n{run}");
    // stdout carries only JSON lines; the human output went to stderr.
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{run}")))
        .collect();
    assert!(run.stderr.contains("LEAK task group `waiter`"), "{run}");
    let of = |ty: &str, event: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["type"] == ty && (event.is_empty() || e["event"] == event)).collect()
    };
    assert_eq!(of("run", "started").len(), 1, "{run}");
    assert_eq!(of("server", "ready").len(), 1, "{run}");
    assert_eq!(of("test", "started").len(), 7, "{run}");
    let finished = of("test", "ok");
    assert_eq!(finished.len(), 7, "{run}");
    assert!(finished.iter().all(|t| t["outcome"] == "passed" && t["exec_time"].is_f64()), "{run}");
    // Each test's start comes before its end.
    let position = |ty: &str, event: &str, name: &str| {
        events.iter().position(|e| e["type"] == ty && e["event"] == event && e["name"] == name).unwrap()
    };
    assert!(position("test", "started", "e2e::watch_and_leave") < position("test", "ok", "e2e::watch_and_leave"));
    let leaks = of("leak", "");
    assert_eq!(leaks.len(), 1, "{run}");
    assert_eq!(leaks[0]["group"], "waiter");
    assert_eq!(leaked_by(leaks[0]), vec![("e2e::watch_and_leave", 1), ("e2e::watch_three_keys_and_leave", 3)]);
    assert_eq!(of("shutdown", "clean").len(), 1, "{run}");
    // The last line is the run's end, and it agrees with report.json.
    let last = events.last().unwrap();
    assert_eq!((last["type"].as_str(), last["event"].as_str()), (Some("run"), Some("finished")), "{run}");
    assert_eq!(last["exit_code"], 5);
    assert_eq!(last["verdict"], "leaks");
    let report_path = last["report"].as_str().unwrap();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    assert_eq!(report["verdict"], last["verdict"]);
    assert_eq!(report["leaks"][0]["leaked_by"], leaks[0]["leaked_by"]);
    assert_no_process_with(&mark);
}
