//! The flight recorder: the server's last events in every hang's evidence, and what a
//! hung test's tasks did last under its HANG line.

use std::path::Path;

use serde_json::Value;

use crate::util::{assert_no_process_with, hangcheck_test, marker, read};

const HANG: i32 = 6;

/// An `…events.jsonl` file: its header line and its events.
pub fn events_file(path: &Path) -> (Value, Vec<Value>) {
    let text = read(path);
    let mut lines = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")));
    let head = lines.next().unwrap_or_else(|| panic!("{} is empty", path.display()));
    (head, lines.collect())
}

#[test]
fn a_hung_tests_evidence_holds_the_recorders_events_and_its_tasks_last_event() {
    let mark = marker("recorder-hang");
    let run = hangcheck_test(&["-p", "never-answers", "--server-env", &mark]);
    assert_eq!(run.code, HANG, "{run}");
    let report = run.report();
    assert!(report["server"]["capabilities"].as_array().unwrap().iter().any(|c| c == "recorder"), "{report:#}");
    let hung = report["tests"].as_array().unwrap().iter().find(|t| t["outcome"] == "hung").unwrap();
    let epoch = hung["epoch"].as_u64().unwrap();
    let file = hung["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .find(|f| f.ends_with(".events.jsonl"))
        .unwrap_or_else(|| panic!("no events file in the evidence: {hung:#}"));
    let (head, events) = events_file(Path::new(file));
    assert_eq!(head["capacity"], 4096, "the default size: {head}");
    assert!(events.windows(2).all(|w| w[0]["at_us"].as_u64() <= w[1]["at_us"].as_u64()), "oldest first");
    // The hung request's connection task: spawned in the hung test's epoch, never ended.
    let spawned: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "task-spawn" && e["group"] == "conn" && e["epoch"].as_u64() == Some(epoch))
        .collect();
    assert!(!spawned.is_empty(), "no conn task spawned in epoch {epoch}: {events:#?}");
    let alive: Vec<&&Value> =
        spawned.iter().filter(|s| !events.iter().any(|e| e["event"] == "task-end" && e["task"] == s["task"])).collect();
    assert_eq!(alive.len(), 1, "the waiting connection is alive: {spawned:#?}");
    assert!(alive[0]["location"].as_str().unwrap().starts_with("examples/never-answers/src/main.rs:"));
    // The same task, told on screen and in report.json under the hung test.
    let task = alive[0]["task"].as_u64().unwrap();
    let line = format!("task {task} (conn at examples/never-answers/src/main.rs:");
    let last = hung["last_events"].as_array().unwrap_or_else(|| panic!("no last_events: {hung:#}"));
    assert!(last.iter().any(|l| l.as_str().unwrap().starts_with(&line)), "{last:#?}");
    assert!(run.stdout.contains(&line) && run.stdout.contains("no event since"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn recorder_events_zero_turns_the_recorder_off() {
    let mark = marker("recorder-off");
    let run = hangcheck_test(&["-p", "never-answers", "--recorder-events", "0", "--server-env", &mark]);
    assert_eq!(run.code, HANG, "{run}");
    let report = run.report();
    assert!(!report["server"]["capabilities"].as_array().unwrap().iter().any(|c| c == "recorder"), "{report:#}");
    let hung = report["tests"].as_array().unwrap().iter().find(|t| t["outcome"] == "hung").unwrap();
    let evidence = hung["evidence"].as_array().unwrap();
    assert!(!evidence.iter().any(|e| e.as_str().unwrap().ends_with(".events.jsonl")), "no events file: {evidence:#?}");
    assert_eq!(evidence.len(), 3, "stacks (text and JSON) and snapshot only: {evidence:#?}");
    assert!(hung.get("last_events").is_none(), "{hung:#}");
    assert_no_process_with(&mark);
}
