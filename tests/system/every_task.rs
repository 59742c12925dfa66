//! Every task counts: with the default (tokio_unstable) build, tasks nobody named — a
//! plain `tokio::spawn` in the server, a worker spawned inside a library — are grouped by
//! spawn location and judged like named groups; `--stable` sees only named groups and
//! says so.

use crate::util::{assert_no_process_with, hangcheck_test, leaked_by, marker};

fn leak<'a>(report: &'a serde_json::Value, location_prefix: &str) -> &'a serde_json::Value {
    report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["group"].as_str().unwrap().starts_with(location_prefix))
        .unwrap_or_else(|| panic!("no leak at {location_prefix}: {:#?}", report["leaks"]))
}

#[test]
fn plain_spawns_and_library_spawns_are_found_by_location() {
    let mark = marker("every-task");
    let run = hangcheck_test(&["-p", "session-cache", "--settle", "3s", "--server-env", &mark]);
    assert_eq!(run.code, 5, "{run}");
    let report = run.report();
    assert_eq!(report["server"]["tokio_unstable"], true);
    assert_eq!(report["leaks"].as_array().unwrap().len(), 2, "{:#?}", report["leaks"]);
    let expected = vec![("e2e::open_and_leave", 1), ("e2e::two_sessions_and_leave", 2)];

    // The heartbeat: a plain tokio::spawn in the server's own code.
    let heartbeat = leak(&report, "examples/session-cache/src/main.rs:");
    assert_eq!(heartbeat["kind"], "location");
    let source =
        std::fs::read_to_string(crate::util::workspace_root().join("examples/session-cache/src/main.rs")).unwrap();
    let line: usize = heartbeat["group"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    assert!(source.lines().nth(line - 1).unwrap().contains("tokio::spawn(async move"), "line {line}");
    assert_eq!(leaked_by(heartbeat), expected);

    // tower's Buffer worker: spawned inside the library, named by tower's own file.
    let worker = leak(&report, "tower-");
    assert!(worker["group"].as_str().unwrap().contains("/src/buffer/service.rs:"), "{worker:#?}");
    assert_eq!(leaked_by(worker), expected);
    assert!(run.stdout.contains("LEAK tasks spawned at tower-"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn fixed_sessions_leak_nothing() {
    let run = hangcheck_test(&["-p", "session-cache", "--server-env", "SESSION_CACHE_FIXED=1", "--settle", "20s"]);
    assert_eq!(run.code, 0, "{run}");
    // Every connection task, heartbeat and buffer worker was counted and ended.
    let last = &run.report()["final"]["groups"];
    let groups = last.as_array().unwrap();
    assert!(groups.iter().any(|g| g["key"].as_str().unwrap().starts_with("tower-")), "{groups:#?}");
    assert!(groups.iter().all(|g| g["live"] == 0), "{groups:#?}");
}

#[test]
fn stable_builds_see_named_groups_only_and_say_so() {
    let run = hangcheck_test(&["-p", "session-cache", "--stable"]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    assert_eq!(report["server"]["tokio_unstable"], false);
    assert!(report["final"]["groups"].as_array().unwrap().iter().all(|g| g["kind"] == "named"));
    assert!(run.stdout.contains("This was a --stable build"), "{run}");
    assert!(run.stderr.contains("(stable)"), "{run}");
}
