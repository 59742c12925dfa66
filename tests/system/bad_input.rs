//! Every way a run can fail to start or go on: one error line naming the cause, the
//! setup-error exit code (3), and no process left behind.

use crate::util::{assert_no_process_with, hangcheck_test, marker, run_runner};

const SETUP: i32 = 3;

/// Runs the misbehaving fixture in `mode` and checks the common promises.
fn misbehaving(mode: &str, extra: &[&str]) -> crate::util::Run {
    let mark = marker(mode);
    let env = format!("MISBEHAVE={mode}");
    let mut args = vec!["-p", "misbehaving-server", "--server-env", &env, "--server-env", &mark];
    args.extend_from_slice(extra);
    let run = hangcheck_test(&args);
    assert_eq!(run.code, SETUP, "{run}");
    assert_no_process_with(&mark);
    run
}

#[test]
fn the_fixture_behaves_when_asked_to() {
    let mark = marker("behaves");
    let run = hangcheck_test(&["-p", "misbehaving-server", "--server-env", &mark]);
    assert_eq!(run.code, 0, "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn server_exiting_during_start_up_shows_its_status_and_log() {
    let run = misbehaving("exit-early", &[]);
    assert!(run.error_line().contains("the server exited during start-up with exit code 3"), "{run}");
    assert!(run.stderr.contains("fatal: cannot read config file"), "the log tail is shown\n{run}");
    assert_eq!(run.report()["verdict"], "setup-error");
}

#[test]
fn server_that_never_says_hello_times_out_with_a_hint() {
    let run = misbehaving("no-hello", &["--startup-timeout", "2s"]);
    assert!(run.error_line().contains("did not connect to hangcheck within 2s"), "{run}");
    assert!(run.error_line().contains("#[hangcheck_runtime::main]"), "says what to do\n{run}");
}

#[test]
fn garbage_hello_is_a_clear_error() {
    let run = misbehaving("garbage-hello", &[]);
    assert!(run.error_line().contains("bad hello from the agent: malformed message"), "{run}");
}

#[test]
fn hello_of_another_protocol_version_is_a_clear_error() {
    let run = misbehaving("wrong-version", &[]);
    assert!(run.error_line().contains("protocol version 99 is not supported"), "{run}");
}

#[test]
fn oversized_hello_is_refused_without_reading_it_all() {
    let run = misbehaving("huge-hello", &[]);
    assert!(run.error_line().contains("over the size limit"), "{run}");
}

#[test]
fn server_that_never_announces_times_out_with_a_hint() {
    let run = misbehaving("no-announce", &["--startup-timeout", "2s"]);
    assert!(run.error_line().contains("announced no address within 2s"), "{run}");
    assert!(run.error_line().contains("server.ready"), "{run}");
}

#[test]
fn server_dying_mid_test_names_the_test_and_shows_the_log() {
    let run = misbehaving("die-on-connect", &[]);
    assert!(run.error_line().contains("the server exited during smoke::greets with exit code 7"), "{run}");
    assert!(run.stderr.contains("connection handler crashed"), "{run}");
    let report = run.report();
    assert_eq!(report["verdict"], "setup-error");
    // The test the server died in is in the report, with how it ended.
    assert_eq!(report["tests"].as_array().unwrap().len(), 1);
    assert_eq!(report["tests"][0]["id"], "smoke::greets");
}

#[test]
fn missing_server_bin_is_named() {
    let run = hangcheck_test(&["-p", "waiter-leak", "--bin", "nope"]);
    assert_eq!(run.code, SETUP, "{run}");
    assert!(run.error_line().contains("no bin target `nope` (it has: waiter-leak)"), "{run}");
}

#[test]
fn missing_test_target_is_named() {
    let run = hangcheck_test(&["-p", "waiter-leak", "--test", "nope"]);
    assert_eq!(run.code, SETUP, "{run}");
    assert!(run.error_line().contains("no test target `nope` (it has: e2e)"), "{run}");
}

/// A throwaway cargo project with the given metadata; configuration is read before any
/// build, so it needs nothing compiled.
fn project_with_metadata(metadata: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"cfg-probe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n{metadata}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(dir.path().join("tests/e2e.rs"), "#[test]\nfn t() {}\n").unwrap();
    dir
}

#[test]
fn malformed_duration_in_config_names_the_key_and_value() {
    let dir = project_with_metadata("[package.metadata.hangcheck]\ntest-timeout = \"soon\"\n");
    let run = run_runner(&["hangcheck", "test", "--color", "never"], dir.path());
    assert_eq!(run.code, SETUP, "{run}");
    assert!(run.error_line().contains("invalid `test-timeout`"), "{run}");
    assert!(run.error_line().contains("`soon` is not a duration"), "{run}");
}

#[test]
fn unknown_config_key_is_named() {
    let dir = project_with_metadata("[package.metadata.hangcheck]\ntest-timout = \"5s\"\n");
    let run = run_runner(&["hangcheck", "test", "--color", "never"], dir.path());
    assert_eq!(run.code, SETUP, "{run}");
    assert!(run.error_line().contains("unknown field `test-timout`"), "{run}");
}

#[test]
fn malformed_flag_is_a_usage_error() {
    let run = hangcheck_test(&["-p", "waiter-leak", "--settle", "soon"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("`soon` is not a duration"), "{run}");
}

/// Package selection follows cargo: `--manifest-path` of a member, or the member whose
/// directory the command runs in; at a workspace root with several candidates, no guess.
#[test]
fn the_package_is_chosen_as_cargo_chooses_it() {
    let root = crate::util::workspace_root();
    let fixture = root.join("tests/fixtures/misbehaving-server");
    let manifest = fixture.join("Cargo.toml");
    let by_path = run_runner(
        &[
            "hangcheck",
            "test",
            "--color",
            "never",
            "--stall-threshold",
            "10s",
            "--manifest-path",
            manifest.to_str().unwrap(),
        ],
        &std::env::temp_dir(),
    );
    assert_eq!(by_path.code, 0, "{by_path}");
    assert_eq!(by_path.report()["package"], "misbehaving-server");

    let by_cwd = run_runner(&["hangcheck", "test", "--color", "never", "--stall-threshold", "10s"], &fixture);
    assert_eq!(by_cwd.code, 0, "{by_cwd}");
    assert_eq!(by_cwd.report()["package"], "misbehaving-server");

    let at_root = run_runner(&["hangcheck", "test", "--color", "never"], &root);
    assert_eq!(at_root.code, SETUP, "{at_root}");
    assert!(at_root.error_line().contains("choose one with -p"), "{at_root}");
}

#[test]
fn a_hello_announcing_an_address_with_a_nul_is_the_servers_protocol_error() {
    let run = misbehaving("nul-hello", &[]);
    assert!(run.error_line().contains("protocol error: the server's hello is malformed"), "{run}");
    assert!(run.error_line().contains("NUL"), "{run}");
}

#[test]
fn an_announcement_with_a_nul_is_the_servers_protocol_error_not_a_test_failure() {
    let run = misbehaving("nul-announce", &[]);
    // The agent may connect before or after the bad announcement, so it arrives either on
    // its own or inside the hello; either way it is the server's protocol error.
    let line = run.error_line();
    let alone = line.contains("protocol error: the server announced a malformed address");
    let in_hello = line.contains("protocol error: the server's hello is malformed");
    assert!((alone || in_hello) && line.contains("NUL"), "{run}");
    let report = run.report();
    assert_eq!(report["verdict"], "setup-error");
    assert!(report["tests"].as_array().unwrap().iter().all(|t| t["outcome"] == "passed"), "no test is blamed\n{run}");
    if alone {
        let errors = report["protocol_errors"].as_array().unwrap();
        assert!(errors.iter().any(|e| e.as_str().unwrap().contains("NUL")), "{errors:?}");
    }
}
