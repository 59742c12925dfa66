//! Helpers: run the real runner, read what it wrote, find stray processes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// No single run of the runner may take longer; past it the test fails instead of hanging.
const RUN_CAP: Duration = Duration::from_secs(600);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// One target directory for every system test, so cargo builds each example once.
pub fn target_dir() -> PathBuf {
    workspace_root().join("target").join("system-tests")
}

/// What a run of the runner left.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit code {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Run {
    /// The run directory, from the `Report:` line the runner prints last.
    pub fn run_dir(&self) -> PathBuf {
        let line = self.stdout.lines().find_map(|l| l.strip_prefix("Report: ")).unwrap_or_else(|| {
            panic!("no Report: line in the output\n{self}");
        });
        Path::new(line.trim()).parent().unwrap().to_owned()
    }

    pub fn report(&self) -> serde_json::Value {
        let path = self.run_dir().join("report.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}\n{self}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// The first `error:` line on stderr.
    pub fn error_line(&self) -> &str {
        self.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line\n{self}"))
    }
}

/// Runs `cargo hangcheck test ARGS` in the workspace, uncoloured, with a unique marker
/// in the server's environment so that [`assert_no_process_with`] can find strays.
///
/// The stall threshold is raised to 10 s unless the test sets one: these tests run in
/// parallel on small machines, where a starved worker can spend 250 ms in an ordinary
/// poll, and only the stall tests are about stalls.
pub fn hangcheck_test(args: &[&str]) -> Run {
    run_runner(&test_args(args), &workspace_root())
}

/// `hangcheck test --color never ARGS`, with the stall threshold of [`hangcheck_test`].
pub fn test_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["hangcheck", "test", "--color", "never"];
    if !args.contains(&"--stall-threshold") {
        all.extend_from_slice(&["--stall-threshold", "10s"]);
    }
    all.extend_from_slice(args);
    all
}

/// A runner started in the background; killed (with its process group's children torn
/// down by the runner itself) if the test ends early.
pub struct Background {
    pub child: std::process::Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Background {
    /// Waits (bounded) for the runner to exit and collects what it printed.
    pub fn wait(mut self) -> Run {
        let deadline = Instant::now() + RUN_CAP;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the runner ran past {RUN_CAP:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.stdout).unwrap(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cargo hangcheck ARGS` in the background, in the workspace.
pub fn spawn_runner(args: &[&str]) -> Background {
    spawn_runner_in(args, &workspace_root())
}

fn spawn_runner_in(args: &[&str], cwd: &Path) -> Background {
    spawn_runner_with(args, cwd, &[])
}

/// Starts `cargo hangcheck ARGS` in the background in the workspace, with `env` added to
/// the runner's environment (which its tests inherit).
pub fn spawn_runner_env(args: &[&str], env: &[(&str, &str)]) -> Background {
    spawn_runner_with(args, &workspace_root(), env)
}

fn spawn_runner_with(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Background {
    let dir = target_dir();
    spawn_binary(&[args, &["--target-dir", dir.to_str().unwrap()]].concat(), cwd, env)
}

/// Runs `cargo-hangcheck ARGS` in `cwd` to the end, with nothing added: for the verbs
/// that read reports rather than build (`merge`, `diff`).
pub fn run_plain(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Run {
    spawn_binary(args, cwd, env).wait()
}

fn spawn_binary(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Background {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_cargo-hangcheck"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Background { child, stdout, stderr, _dir: dir }
}

impl Background {
    /// Waits (bounded) until `cond` holds while the runner is still running; fails with
    /// what it printed if it exits first.
    pub fn wait_while_running(&mut self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + RUN_CAP;
        while !cond() {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
                let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                panic!("the runner exited ({status}) before {what}\n--- stdout\n{out}\n--- stderr\n{err}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits (bounded) until `cond` holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + RUN_CAP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The run directory of the runner with `pid`, once it has announced itself.
pub fn run_dir_of(pid: u32) -> Option<PathBuf> {
    let runs = target_dir().join("hangcheck").join("runs");
    std::fs::read_dir(runs).ok()?.flatten().map(|e| e.path()).find(|dir| {
        std::fs::read_to_string(dir.join("runner.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(pid)))
    })
}

/// Runs `cargo-hangcheck ARGS` in `cwd` to the end.
pub fn run_runner(args: &[&str], cwd: &Path) -> Run {
    spawn_runner_in(args, cwd).wait()
}

/// A marker unique to this test, to put in a server's environment.
pub fn marker(name: &str) -> String {
    format!("HC_SYSTEM_TEST={name}-{}", std::process::id())
}

/// Fails if any process still carries `marker` in its environment.
pub fn assert_no_process_with(marker: &str) {
    let needle = marker.as_bytes();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|&b| b == 0).any(|var| var == needle) {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // A zombie has exited; it is waiting for its parent to reap it.
            if !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z') {
                strays.push(format!("{pid}: {}", stat.trim()));
            }
        }
    }
    assert!(strays.is_empty(), "processes left behind: {strays:?}");
}

/// Builds an example (or fixture) binary exactly as the runner does (same flags, features
/// and directory, so it is the runner's cached build) and returns its path.
pub fn built_binary(package: &str) -> PathBuf {
    let build_dir = target_dir().join("hangcheck").join("build");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", package, "--features", "hangcheck-runtime/taskdump", "--target-dir"])
        .arg(&build_dir)
        .env("RUSTFLAGS", "--cfg tokio_unstable")
        .current_dir(workspace_root())
        .status()
        .unwrap();
    assert!(status.success(), "cargo build -p {package} failed");
    build_dir.join("debug").join(package)
}

/// A leak's `leaked_by` as (test, count) pairs, in run order.
pub fn leaked_by(leak: &serde_json::Value) -> Vec<(&str, u64)> {
    leak["leaked_by"]
        .as_array()
        .unwrap_or_else(|| panic!("no leaked_by in {leak:#?}"))
        .iter()
        .map(|b| (b["test"].as_str().unwrap(), b["count"].as_u64().unwrap()))
        .collect()
}

/// A file's text; a missing file fails the test with its path.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The outcome of test `id` in a report.
pub fn outcome_of(report: &serde_json::Value, id: &str) -> serde_json::Value {
    let tests = report["tests"].as_array().unwrap_or_else(|| panic!("no tests in {report:#}"));
    tests.iter().find(|t| t["id"] == id).unwrap_or_else(|| panic!("no {id}"))["outcome"].clone()
}
