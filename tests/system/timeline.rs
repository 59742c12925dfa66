//! The run as a picture: `trace.json` (Chrome trace-event format) on the never-answers
//! and waiter-leak examples, checked against the same run's `report.json`.

use std::path::Path;

use serde_json::Value;

use crate::util::{assert_no_process_with, hangcheck_test, marker, read, Run};

const HANG: i32 = 6;

/// `trace.json` of a run, parsed, with the checks every trace must pass: an object with
/// `traceEvents`, each event with a phase and a process, timed ones with a timestamp.
fn trace_of(run: &Run) -> Vec<Value> {
    let path = run.run_dir().join("trace.json");
    let trace: Value = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("trace.json: {e}\n{run}"));
    let events = trace["traceEvents"].as_array().unwrap_or_else(|| panic!("no traceEvents\n{trace:#}")).clone();
    for e in &events {
        let ph = e["ph"].as_str().unwrap_or_else(|| panic!("an event without ph: {e}"));
        assert!(["X", "C", "i", "b", "e", "M"].contains(&ph), "unexpected phase: {e}");
        assert!(e["pid"].is_u64() && e["name"].is_string(), "{e}");
        assert!(ph == "M" || e["ts"].is_u64(), "a timed event without ts: {e}");
        assert!(ph != "X" || e["dur"].is_u64(), "a slice without dur: {e}");
    }
    events
}

/// The thread (pid, tid) a `thread_name` metadata event gives `name`.
fn track(events: &[Value], name: &str) -> (u64, u64) {
    let m = events
        .iter()
        .find(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["args"]["name"] == name)
        .unwrap_or_else(|| panic!("no track named {name}"));
    (m["pid"].as_u64().unwrap(), m["tid"].as_u64().unwrap())
}

/// The test slices on the tests track, in time order: (name, cname, ts, dur).
fn test_slices(events: &[Value]) -> Vec<(String, String, u64, u64)> {
    let (pid, tid) = track(events, "tests");
    let mut slices: Vec<(String, String, u64, u64)> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == pid && e["tid"] == tid)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (s("name"), s("cname"), e["ts"].as_u64().unwrap(), e["dur"].as_u64().unwrap())
        })
        .collect();
    slices.sort_by_key(|s| s.2);
    slices
}

/// The values of the counter track whose name starts with `live tasks: GROUP`, in time order.
fn live_tasks(events: &[Value], group: &str) -> Vec<u64> {
    let prefix = format!("live tasks: {group}");
    let mut samples: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"].as_str().unwrap().starts_with(&prefix))
        .map(|e| (e["ts"].as_u64().unwrap(), e["args"]["live"].as_u64().unwrap()))
        .collect();
    samples.sort_by_key(|s| s.0);
    samples.into_iter().map(|s| s.1).collect()
}

#[test]
fn the_trace_of_a_hung_run_has_its_tests_its_groups_and_the_hang_with_its_evidence() {
    let mark = marker("trace-hang");
    let run = hangcheck_test(&["-p", "never-answers", "--server-env", &mark]);
    assert_eq!(run.code, HANG, "{run}");
    let report = run.report();
    let events = trace_of(&run);

    // One slice per test, in run order, one after the other, coloured by outcome.
    let slices = test_slices(&events);
    let tests = report["tests"].as_array().unwrap();
    let names: Vec<&str> = slices.iter().map(|s| s.0.as_str()).collect();
    let ids: Vec<&str> = tests.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(names, ids, "{run}");
    for (slice, test) in slices.iter().zip(tests) {
        let colour = if test["outcome"] == "hung" { "terrible" } else { "good" };
        assert_eq!(slice.1, colour, "{} is {}", slice.0, test["outcome"]);
    }
    for pair in slices.windows(2) {
        assert!(pair[0].2 + pair[0].3 <= pair[1].2, "test slices overlap: {pair:?}");
    }

    // The hang and its evidence are moments inside the hung test, the evidence naming the
    // files report.json names.
    let hung = slices.iter().position(|s| s.0 == "e2e::next_on_a_quiet_topic").unwrap();
    let instant = |name: &str| {
        events
            .iter()
            .find(|e| e["ph"] == "i" && e["name"] == name)
            .unwrap_or_else(|| panic!("no instant event {name}"))
            .clone()
    };
    let hang = instant("hang: e2e::next_on_a_quiet_topic");
    let evidence = instant("evidence: e2e::next_on_a_quiet_topic");
    for moment in [&hang, &evidence] {
        let ts = moment["ts"].as_u64().unwrap();
        assert!(ts >= slices[hung].2 && ts < slices[hung + 1].2, "{moment} is not during the hung test");
    }
    let hung_test = tests.iter().find(|t| t["outcome"] == "hung").unwrap();
    assert_eq!(evidence["args"]["files"], hung_test["evidence"]);
    assert!(Path::new(evidence["args"]["files"][0].as_str().unwrap()).exists());

    // The leaked group's counter track: a sample per settled snapshot (baseline, each test,
    // final), ending where report.json's final snapshot ends.
    let leak = &report["leaks"][0];
    let group = leak["group"].as_str().unwrap();
    let live = live_tasks(&events, group);
    assert_eq!(live.len(), tests.len() + 2, "{live:?}");
    assert_eq!(live.first().copied(), leak["baseline"].as_u64());
    assert_eq!(live.last().copied(), leak["final"].as_u64());
    assert_no_process_with(&mark);
}

#[test]
fn the_trace_of_a_leaking_run_counts_the_leaked_group_up_test_by_test() {
    let mark = marker("trace-leak");
    let run = hangcheck_test(&["-p", "waiter-leak", "--settle", "3s", "--server-env", &mark]);
    assert_eq!(run.code, 5, "{run}");
    let report = run.report();
    let events = trace_of(&run);
    let slices = test_slices(&events);
    assert_eq!(slices.len(), report["tests"].as_array().unwrap().len());
    assert!(slices.iter().all(|s| s.1 == "good"), "every test passed: {slices:?}");
    // The counter follows the settled snapshots: each test's value is its `live` in
    // report.json.
    let live = live_tasks(&events, "waiter");
    let per_test: Vec<u64> =
        report["tests"].as_array().unwrap().iter().map(|t| t["live"]["waiter"].as_u64().unwrap_or(0)).collect();
    assert_eq!(&live[1..=per_test.len()], per_test.as_slice(), "{live:?}");
    assert_eq!(live.last(), Some(&4), "four waiters leaked: {live:?}");
    let leak = events.iter().find(|e| e["ph"] == "i" && e["name"] == "leak: waiter");
    assert!(leak.is_some_and(|l| l["args"]["growth"] == 4), "{leak:?}");
    assert_no_process_with(&mark);
}
