//! The run survives the server: a server paused and continued, or attached by a
//! debugger, mid-test, loses nothing; and nothing of a run outlives it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{assert_no_process_with, marker, spawn_runner_env, test_args, Background};

const LEAKS: i32 = 5;

/// Runs the survivor fixture's `greets` and `waits_for_go` (plus `extra` filters), and
/// calls `meddle` with the server's pid while `waits_for_go` runs; returns the finished
/// run.
fn meddle_mid_test(mark: &str, meddle: impl FnOnce(u32)) -> crate::util::Run {
    let dir = tempfile::tempdir().unwrap();
    let runner = start_waiting(mark, dir.path());
    let pid: u32 = read_pid(&dir.path().join("running"));
    meddle(pid);
    std::fs::write(dir.path().join("go"), "").unwrap();
    runner.wait()
}

/// Starts the survivor fixture's `greets` and `waits_for_go` with `dir` as its
/// `SURVIVOR_DIR`, and returns once `waits_for_go` runs.
fn start_waiting(mark: &str, dir: &Path) -> Background {
    let args = test_args(&["-p", "survivor", "--server-env", mark, "greets", "waits_for_go"]);
    let mut runner = spawn_runner_env(&args, &[("SURVIVOR_DIR", dir.to_str().unwrap())]);
    let running = dir.join("running");
    runner.wait_while_running("the test to start", || running.exists());
    runner
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

/// The agent socket the runner handed to the server `pid`.
fn socket_of(pid: u32) -> std::path::PathBuf {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let var = environ.split(|&b| b == 0).find_map(|v| v.strip_prefix(b"HANGCHECK_SOCKET=")).expect("HANGCHECK_SOCKET");
    std::path::PathBuf::from(String::from_utf8(var.to_vec()).unwrap())
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
    let mut socket = None;
    let run = meddle_mid_test(&mark, |pid| {
        socket = Some(socket_of(pid));
        kill("-STOP", pid);
        std::thread::sleep(Duration::from_secs(1));
        kill("-CONT", pid);
    });
    assert_eq!(run.code, 0, "{run}");
    assert_all_passed(&run, &["e2e::greets", "e2e::waits_for_go"]);
    let socket_dir = socket.unwrap().parent().unwrap().to_owned();
    assert!(!socket_dir.exists(), "the socket directory {} is removed at the end", socket_dir.display());
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

/// Whether `pid` is gone: no such process, or a zombie waiting to be reaped.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().unwrap_or("").trim_start().starts_with(['Z', 'X']),
        Err(_) => true,
    }
}

#[test]
fn processes_detached_by_a_test_or_the_server_are_reported_and_ended() {
    let mark = marker("setsid");
    let (key, value) = mark.split_once('=').unwrap();
    let args = test_args(&["-p", "survivor", "--server-env", "SURVIVOR_SETSID=1", "leaves_setsid_sleep"]);
    // The marker is in the runner's environment, so every process of the run has it.
    let run = spawn_runner_env(&args, &[(key, value)]).wait();
    assert_eq!(run.code, LEAKS, "a process left running is a leak\n{run}");
    let report = run.report();
    let leftovers = report["leftover_processes"].as_array().unwrap();
    let find = |who: &str| {
        leftovers
            .iter()
            .find(|l| l["started_by"] == who)
            .unwrap_or_else(|| panic!("no leftover started by {who}: {leftovers:#?}"))
    };
    let by_test = find("e2e::leaves_setsid_sleep");
    // Caught before or after `setsid` exec'd `sleep`: either command line is right.
    assert!(by_test["command"].as_str().unwrap().ends_with("sleep 300"), "{by_test:#?}");
    assert_eq!(by_test["found_after"], "e2e::leaves_setsid_sleep", "found right after its test");
    assert_eq!(by_test["ended"], "terminated");
    let by_server = find("server");
    assert!(by_server["command"].as_str().unwrap().ends_with("sleep 300"), "{by_server:#?}");
    assert_eq!(by_server["found_after"], "the end of the run");
    assert!(run.stdout.contains("LEFTOVER process") || run.stderr.contains("LEFTOVER process"), "{run}");
    let text = std::fs::read_to_string(run.run_dir().join("leftovers/after-e2e::leaves_setsid_sleep.txt")).unwrap();
    assert!(text.contains("started by e2e::leaves_setsid_sleep: "), "{text}");
    for l in leftovers {
        assert!(gone(l["pid"].as_u64().unwrap() as u32), "{l:#?} still runs");
    }
    assert_no_process_with(&mark);
}

#[test]
fn the_server_and_the_running_test_die_with_a_sigkilled_runner() {
    let mark = marker("runner-sigkill");
    let dir = tempfile::tempdir().unwrap();
    let mut runner = start_waiting(&mark, dir.path());
    let server = read_pid(&dir.path().join("running"));
    let test = read_pid(&dir.path().join("test.pid"));
    runner.child.kill().unwrap();
    let _ = runner.child.wait();
    // The kernel ends both (PR_SET_PDEATHSIG); the bound is generous for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(gone(server) && gone(test)) {
        assert!(
            Instant::now() < deadline,
            "still running 5 s after the runner was SIGKILLed: server {server} gone {}, test {test} gone {}",
            gone(server),
            gone(test)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_no_process_with(&mark);
}

#[test]
fn ctrl_c_during_the_build_stops_cargo_and_exits_130() {
    let mark = marker("ctrl-c-build");
    let (key, value) = mark.split_once('=').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = test_args(&["-p", "slow-build"]);
    // Both reach the build script through the runner and cargo.
    let env = [(key, value), ("SLOW_BUILD_DIR", dir.path().to_str().unwrap())];
    let mut runner = spawn_runner_env(&args, &env);
    let building = dir.path().join("building");
    runner.wait_while_running("the build script to run", || building.exists());
    let script = read_pid(&building);
    kill("-INT", runner.child.id());
    // The script would sleep ten minutes, past the runner's cap in `wait`: only a build
    // that is stopped on Ctrl-C ends before.
    let run = runner.wait();
    assert_eq!(run.code, 130, "{run}");
    assert!(run.stderr.contains("interrupted"), "{run}");
    assert!(gone(script), "the build script (a child of cargo) was stopped too");
    assert_no_process_with(&mark);
}

#[test]
fn a_foreign_connection_to_the_agent_socket_is_refused_and_the_run_goes_on() {
    let mark = marker("foreign");
    let dir = tempfile::tempdir().unwrap();
    let runner = start_waiting(&mark, dir.path());
    let server = read_pid(&dir.path().join("running"));
    // This process is neither the server nor one of its descendants.
    let mut intruder = std::os::unix::net::UnixStream::connect(socket_of(server)).unwrap();
    let fake = format!(
        "{{\"v\":1,\"type\":\"hello\",\"pid\":{},\"protocol\":1,\"runtime_version\":\"0.1.0\",\"capabilities\":[],\"announced\":[]}}\n",
        std::process::id()
    );
    use std::io::{Read, Write};
    intruder.write_all(fake.as_bytes()).unwrap();
    intruder.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    std::fs::write(dir.path().join("go"), "").unwrap();
    // Refused: the runner closes the connection without a word.
    let mut answer = Vec::new();
    let read = intruder.read_to_end(&mut answer);
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?} {answer:?}");
    let run = runner.wait();
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    let errors = report["protocol_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors[0].as_str().unwrap();
    assert!(
        error.starts_with(&format!("refused a connection to the agent socket from pid {}", std::process::id())),
        "{error}"
    );
    let tests = report["tests"].as_array().unwrap();
    assert!(tests.len() == 2 && tests.iter().all(|t| t["outcome"] == "passed"), "{run}");
    assert_no_process_with(&mark);
}

/// Runs the survivor fixture with 100,000 idle tasks, its hanging tests and the one after
/// them, and `extra` arguments; a hang is exit code 6.
fn big_server_with_hangs(mark: &str, extra: &[&str]) -> crate::util::Run {
    let mut args = vec!["-p", "survivor", "--server-env", "SURVIVOR_IDLE_TASKS=100000", "--server-env", mark];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["hangs", "then_still_answers"]);
    let run = crate::util::run_runner(&test_args(&args), &crate::util::workspace_root());
    assert_eq!(run.code, 6, "{run}");
    let report = run.report();
    let ids: Vec<(&str, &str)> = report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["outcome"].as_str().unwrap()))
        .collect();
    let want = [("e2e::hangs", "hung"), ("e2e::hangs_again", "hung"), ("e2e::then_still_answers", "passed")];
    assert_eq!(ids, want, "the suite goes on after each hang\n{run}");
    run
}

/// The stack file of the hung test `id`, which must come from the agent.
fn agent_stacks(run: &crate::util::Run, id: &str) -> String {
    let report = run.report();
    let test = report["tests"].as_array().unwrap().iter().find(|t| t["id"] == id).unwrap().clone();
    assert_eq!(test["stacks_source"], "agent", "{run}");
    let evidence = test["evidence"].as_array().unwrap();
    let file = evidence.iter().map(|e| e.as_str().unwrap()).find(|e| e.ends_with(".stacks.txt")).unwrap();
    std::fs::read_to_string(file).unwrap()
}

#[test]
fn a_hung_test_among_100_000_idle_tasks_gets_grouped_async_stacks_from_the_agent_and_the_suite_goes_on() {
    let mark = marker("big-server");
    let run = big_server_with_hangs(&mark, &["--test-timeout", "3s"]);
    let text = agent_stacks(&run, "e2e::hangs");
    let head = &text[..text.len().min(5000)];
    assert!(text.contains("source: agent"), "{head}");
    // 100,000 idle tasks are one group with a count, and the culprit is its own.
    assert!(text.contains("100000 tasks of group idle"), "{head}");
    assert!(text.contains("survivor::wait_for_an_answer"), "the async culprit: {head}");
    assert!(text.len() < 1024 * 1024, "{} bytes", text.len());
    assert_no_process_with(&mark);
}

#[test]
fn a_task_dump_past_its_budget_completes_in_the_background_and_the_next_one_runs_afresh() {
    let mark = marker("dump-budget");
    let run = big_server_with_hangs(&mark, &["--test-timeout", "5s", "--stacks-budget", "1ms"]);
    let first = agent_stacks(&run, "e2e::hangs");
    assert!(first.contains("did not finish within 1 ms"), "{first}");
    // Had the first dump been abandoned with tokio's trace request set, the second would
    // find it still pending; it finished in the background, so a new one was started.
    let second = agent_stacks(&run, "e2e::hangs_again");
    assert!(!second.contains("still finishing"), "{second}");
    // A fresh dump, over its 1 ms budget either while tokio dumps or, when the agent
    // thread was descheduled past the budget on a loaded machine, while it groups.
    assert!(
        second.contains("did not finish within 1 ms") || second.contains("the time budget ran out while grouping"),
        "{second}"
    );
    assert_no_process_with(&mark);
}

#[test]
fn stacks_on_demand_never_signal_a_pid_whose_runner_is_gone() {
    // A run directory left by a runner that died, whose pid now belongs to another
    // process: here a `sleep`, which SIGUSR1 would terminate.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    let runs = crate::util::target_dir().join("hangcheck").join("runs");
    let stale = runs.join(format!("stale-{pid}"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("runner.json"), format!("{{\"pid\":{pid},\"package\":\"survivor\"}}")).unwrap();
    let run = crate::util::run_runner(
        &["hangcheck", "stacks", "--color", "never", "--pid", &pid.to_string()],
        &crate::util::workspace_root(),
    );
    let alive = sleeper.try_wait().unwrap().is_none();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir_all(&stale);
    assert_eq!(run.code, 3, "{run}");
    assert!(run.error_line().contains("no `cargo hangcheck` run is in progress"), "{run}");
    assert!(alive, "the process that reused the pid was signalled");
}

#[test]
fn ctrl_c_during_the_shutdown_grace_takes_the_evidence_and_exits_130() {
    let mark = marker("ctrl-c-grace");
    // A grace longer than the runner's cap in `wait`: only a Ctrl-C that shortens it
    // lets the run end in time.
    let args = test_args(&["-p", "shutdown-hang", "--server-env", &mark, "--shutdown-grace", "900s"]);
    let mut runner = spawn_runner_env(&args, &[]);
    let pid = runner.child.id();
    let mut run_dir = None;
    runner.wait_while_running("the server to get SIGTERM", || {
        run_dir = run_dir.take().or_else(|| crate::util::run_dir_of(pid));
        run_dir.as_ref().is_some_and(|d| {
            std::fs::read_to_string(d.join("server.log")).is_ok_and(|log| log.contains("SIGTERM: stopping"))
        })
    });
    kill("-INT", pid);
    let run = runner.wait();
    assert_eq!(run.code, 130, "{run}");
    let report = run.report();
    assert_eq!(report["shutdown"]["outcome"], "hung", "{run}");
    let evidence = report["shutdown"]["evidence"].as_array().unwrap();
    assert!(evidence.iter().any(|e| e.as_str().unwrap().ends_with("shutdown.stacks.txt")), "{run}");
    assert_no_process_with(&mark);
}
