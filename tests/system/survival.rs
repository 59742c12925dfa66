//! The run survives the server: a server paused and continued, or attached by a
//! debugger, mid-test, loses nothing; and nothing of a run outlives it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{assert_no_process_with, marker, spawn_runner_env, Background};

/// Runs the survivor fixture's `greets` and `waits_for_go` (plus `extra` filters), and
/// calls `meddle` with the server's pid while `waits_for_go` runs; returns the finished
/// run.
fn meddle_mid_test(mark: &str, meddle: impl FnOnce(u32)) -> crate::util::Run {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "hangcheck",
        "test",
        "--color",
        "never",
        "--stall-threshold",
        "10s",
        "-p",
        "survivor",
        "--server-env",
        mark,
        "greets",
        "waits_for_go",
    ];
    let mut runner: Background = spawn_runner_env(&args, &[("SURVIVOR_DIR", dir.path())]);
    let running = dir.path().join("running");
    runner.wait_while_running("the test to start", || running.exists());
    let pid: u32 = read_pid(&running);
    meddle(pid);
    std::fs::write(dir.path().join("go"), "").unwrap();
    runner.wait()
}

fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The test writes the file in one call, but may be caught half-way.
        if let Some(pid) = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

fn assert_all_passed(run: &crate::util::Run, expected: &[&str]) {
    let report = run.report();
    let tests: Vec<(&str, &str)> = report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["outcome"].as_str().unwrap()))
        .collect();
    let want: Vec<(&str, &str)> = expected.iter().map(|id| (*id, "passed")).collect();
    assert_eq!(tests, want, "{run}");
    assert!(report["protocol_errors"].as_array().unwrap().is_empty(), "{run}");
}

#[test]
fn a_server_stopped_for_a_second_and_continued_mid_test_loses_nothing() {
    let mark = marker("sigstop");
    let run = meddle_mid_test(&mark, |pid| {
        kill("-STOP", pid);
        std::thread::sleep(Duration::from_secs(1));
        kill("-CONT", pid);
    });
    assert_eq!(run.code, 0, "{run}");
    assert_all_passed(&run, &["e2e::greets", "e2e::waits_for_go"]);
    assert_no_process_with(&mark);
}

#[test]
fn a_debugger_attaching_and_detaching_mid_test_loses_nothing() {
    let mark = marker("gdb-attach");
    let run = meddle_mid_test(&mark, |pid| {
        // gdb stops every thread on attach and resumes them on detach (at exit).
        let out = Command::new("gdb")
            .args(["--batch", "--nx", "-p", &pid.to_string(), "-ex", "info threads"])
            .output()
            .expect("gdb is needed for this test (apt-get install gdb; .ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("hangcheck-agent"), "gdb attached and saw the agent thread: {text}");
    });
    assert_eq!(run.code, 0, "{run}");
    assert_all_passed(&run, &["e2e::greets", "e2e::waits_for_go"]);
    assert_no_process_with(&mark);
}
