//! The run as a picture: `trace.json` (Chrome trace-event format) on the never-answers
//! and waiter-leak examples, checked against the same run's `report.json`, and
//! `report.html` rendered in headless Chromium.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// Headless Chromium (`chromium`, Debian's package; `.ci/run` installs it), or the one
/// `HANGCHECK_CHROMIUM` names.
fn chromium() -> String {
    if let Ok(path) = std::env::var("HANGCHECK_CHROMIUM") {
        return path;
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| panic!("no Chromium to render report.html: apt-get install chromium (.ci/run does)"))
        .to_owned()
}

/// What Chromium made of a page: its DOM after loading, and every console message
/// (script errors, refused loads) it logged.
struct Rendered {
    dom: String,
    console: Vec<String>,
}

/// Loads `page` in headless Chromium with a fresh profile and nothing of its own on the
/// network; with `screenshot`, also saves the rendered page there.
fn render(page: &Path, screenshot: Option<&Path>) -> Rendered {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(chromium());
    command
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--window-size=1280,1400")
        .stdin(Stdio::null());
    match screenshot {
        Some(png) => command.arg(format!("--screenshot={}", png.display())),
        None => command.arg("--dump-dom"),
    };
    let output = run_bounded(command.arg(format!("file://{}", page.display())), Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&output.stderr);
    Rendered {
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        console: stderr.lines().filter(|l| l.contains(":CONSOLE")).map(str::to_owned).collect(),
    }
}

/// Runs `command` to its end, killing it past `limit`.
fn run_bounded(command: &mut Command, limit: Duration) -> std::process::Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("chromium did not finish within {limit:?}");
        }
    }
}

#[test]
fn report_html_renders_in_chromium_with_the_hang_and_the_leak() {
    let mark = marker("report-html");
    let run = hangcheck_test(&["-p", "never-answers", "--server-env", &mark]);
    assert_eq!(run.code, HANG, "{run}");
    let report = run.report();
    let page = run.run_dir().join("report.html");
    let html = read(&page);
    // Self-contained: nothing to fetch, nothing to run.
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("https://"), "{html}");

    // The check for console messages catches a page that tries to load something.
    let control = tempfile::tempdir().unwrap();
    let bad = control.path().join("bad.html");
    std::fs::write(
        &bad,
        html.replacen("</head>", "<link rel=\"stylesheet\" href=\"https://example.invalid/x.css\"></head>", 1),
    )
    .unwrap();
    assert!(!render(&bad, None).console.is_empty(), "a refused load is logged to the console");

    let rendered = render(&page, None);
    assert!(rendered.console.is_empty(), "the page logged: {:#?}", rendered.console);
    let dom = &rendered.dom;
    assert!(dom.contains("id=\"verdict\">HANG</span>"), "{dom}");
    // The hang, with where its tasks wait and its evidence linked relative to the page.
    let hang =
        dom.find("<span class=\"tag\">HANG</span> test <code>e2e::next_on_a_quiet_topic</code>").expect("the hang");
    let hang_block = &dom[hang..dom[hang..].find("</div>").unwrap() + hang];
    assert!(hang_block.contains("waiting in never_answers::"), "{hang_block}");
    for file in report["tests"].as_array().unwrap().iter().flat_map(|t| t["evidence"].as_array().unwrap()) {
        let name = Path::new(file.as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
        assert!(hang_block.contains(&format!("href=\"hangs/{name}\"")), "{name} in {hang_block}");
        assert!(run.run_dir().join("hangs").join(&name).exists());
    }
    // The leak, named as report.json names it.
    let leak = &report["leaks"][0];
    let leaked =
        format!("<span class=\"tag\">LEAK</span> task group <code>`{}`</code>", leak["group"].as_str().unwrap());
    assert!(dom.contains(&leaked), "{dom}");
    // The timeline and the accumulation table.
    assert_eq!(dom.matches("<rect class=\"test ").count(), report["tests"].as_array().unwrap().len());
    assert_eq!(dom.matches("<rect class=\"test hung\"").count(), 1);
    assert!(dom.contains("<line class=\"mark hang\""), "{dom}");
    assert!(dom.contains("id=\"accumulation\"") && dom.contains("<svg class=\"spark\""), "{dom}");

    let png = run.run_dir().join("report.png");
    render(&page, Some(&png));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "a screenshot of the page");
    assert_no_process_with(&mark);
}
