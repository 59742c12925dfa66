//! Operations, lifecycle and the process: concurrent operations for one key, fd leaks,
//! counters as data, and live mode for a server driven by hand.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::{assert_no_process_with, hangcheck_test, leaked_by, marker, target_dir, wait_for, workspace_root};

#[test]
fn a_second_stream_for_one_session_is_flagged_with_its_hashed_key_and_test() {
    let mark = marker("streams-bug");
    let run = hangcheck_test(&["-p", "stream-sessions", "--server-env", &mark]);
    assert_eq!(run.code, 5, "{run}");
    let report = run.report();
    let concurrent = report["concurrent_ops"].as_array().unwrap();
    assert_eq!(concurrent.len(), 1, "{concurrent:#?}");
    let c = &concurrent[0];
    assert_eq!(c["kind"], "stream");
    assert_eq!(c["max_in_flight"], 2);
    assert_eq!(c["tests"], serde_json::json!(["e2e::rapid_prompts_in_one_session"]));
    let key = c["key"].as_str().unwrap();
    assert!(key.starts_with('#') && key.len() == 17 && !key.contains("chat"), "the key is hashed: {key}");
    assert!(run.stdout.contains("CONCURRENT 2 operations `stream` in flight at once for key #"), "{run}");
    // With how long the overlap lasted. The second stream (3 tokens of 20 ms) ends
    // first, so it lasted at least those 60 ms; the first was never stopped, so this is
    // no handover, however short.
    let lasted = c["longest_ms"].as_u64().unwrap().max(c["still_open_ms"].as_u64().unwrap_or(0));
    assert!(lasted >= 55, "{c:#?}");
    assert!(run.stdout.contains("; overlapping for ") || run.stdout.contains("; still open"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn a_stream_that_takes_over_and_stops_the_previous_one_is_a_handover_not_a_finding() {
    let mark = marker("handover");
    let run = hangcheck_test(&["-p", "handover", "--server-env", &mark]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    assert_eq!(report["concurrent_ops"].as_array().unwrap().len(), 0, "{run}");
    // The handovers did happen (one, then three in a row, which may overlap one
    // another and count as one): data, not findings.
    let handovers = report["handovers"].as_array().unwrap();
    let stream = handovers.iter().find(|h| h["kind"] == "stream").unwrap_or_else(|| panic!("{run}"));
    assert!(stream["count"].as_u64().unwrap() >= 2, "{stream:#?}");
    assert_eq!(stream["grace_ms"], 100);
    assert!(run.stdout.contains("handovers: `stream` "), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn cancelling_the_old_stream_first_flags_nothing() {
    let run = hangcheck_test(&["-p", "stream-sessions", "--server-env", "STREAM_SESSIONS_FIXED=1"]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    assert_eq!(report["concurrent_ops"].as_array().unwrap().len(), 0);
    // The fix really ran: a stream was cancelled, and the counters say so as data.
    let counters = report["counters"].as_array().unwrap();
    let cancelled = counters.iter().find(|c| c["name"] == "streams_cancelled").expect("streams_cancelled");
    assert_eq!(cancelled["total"], 1);
    let prompts = counters.iter().find(|c| c["name"] == "prompts").unwrap();
    assert_eq!(prompts["total"], 5);
    assert_eq!(prompts["per_test"].as_array().unwrap().len(), 3);
    assert!(run.stdout.contains("Counters"), "{run}");
}

#[test]
fn a_descriptor_opened_per_request_and_never_closed_is_a_leak_with_its_tests() {
    let mark = marker("fd-leak");
    let run = hangcheck_test(&["-p", "upload-spool", "--server-env", &mark]);
    assert_eq!(run.code, 5, "{run}");
    let report = run.report();
    let leaks = report["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    let leak = &leaks[0];
    assert_eq!((leak["group"].as_str(), leak["kind"].as_str()), (Some("fd:file"), Some("fd")));
    assert_eq!(leak["growth"], 3);
    assert_eq!(leaked_by(leak), vec![("e2e::abandoned_upload", 1), ("e2e::two_abandoned_uploads", 2)]);
    assert!(run.stdout.contains("LEAK open file descriptors fd:file"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn closing_abandoned_uploads_leaks_no_descriptor() {
    let run = hangcheck_test(&["-p", "upload-spool", "--server-env", "UPLOAD_SPOOL_FIXED=1", "--settle", "20s"]);
    assert_eq!(run.code, 0, "{run}");
}

/// Sends `WATCH key` and leaves: one leaked waiter in the example.
fn abandon_watch(addr: &str, key: &str) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    writeln!(s, "WATCH {key}").unwrap();
    let mut reply = [0u8; 9];
    std::io::Read::read_exact(&mut s, &mut reply).unwrap();
    assert_eq!(&reply, b"WATCHING\n");
}

/// A live runner that is killed (and its server with it, by PDEATHSIG) if the test fails
/// before it stops it: a failed test must not leave a server running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn live_mode_shows_what_accumulates_between_snapshots() {
    let mark = marker("live");
    let out = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut runner = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_cargo-hangcheck"))
            .args(["hangcheck", "run", "--color", "never", "-p", "waiter-leak", "--server-env", &mark, "--target-dir"])
            .arg(target_dir())
            .current_dir(workspace_root())
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut addr = String::new();
    wait_for("the announced address", || {
        addr = read(&stdout).lines().find_map(|l| l.strip_prefix("HANGCHECK_ADDR_KV=")).unwrap_or("").to_owned();
        !addr.is_empty()
    });
    wait_for("the runner to watch", || read(&stderr).contains("Watching"));

    abandon_watch(&addr, "live-1");
    abandon_watch(&addr, "live-2");
    runner.0.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    wait_for("the first snapshot", || read(&stdout).contains("snapshot 1:"));
    let first = read(&stdout);
    let line = first
        .lines()
        .find(|l| l.trim_start().starts_with("tasks waiter"))
        .unwrap_or_else(|| panic!("no waiter row\n{first}"));
    assert!(line.contains("0 -> 2") && line.contains("(+2)"), "{first}");

    // From another terminal: the deltas since the previous snapshot, not since the start.
    abandon_watch(&addr, "live-3");
    // Other runs may be in progress in the same target directory: name this one.
    let pid = runner.0.id().to_string();
    let other = crate::util::run_runner(&["hangcheck", "snapshot", "--pid", &pid], &workspace_root());
    assert_eq!(other.code, 0, "{other}");
    let line = other.stdout.lines().find(|l| l.trim_start().starts_with("tasks waiter")).expect("a waiter row");
    assert!(line.contains("2 -> 3") && line.contains("(+1)"), "{other}");
    let stacks =
        crate::util::run_runner(&["hangcheck", "stacks", "-p", "waiter-leak", "--pid", &pid], &workspace_root());
    assert_eq!(stacks.code, 0, "{stacks}");
    assert!(stacks.stdout.contains("hangcheck-agent") || stacks.stdout.contains("tokio-rt-worker"), "{stacks}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner.0.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = runner.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the live runner did not stop on Ctrl-C");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", read(&stderr));
    assert_no_process_with(&mark);
}
