//! Rounds: a race that hangs now and then, caught by `--repeat`; `--until-fail`;
//! `--shuffle=SEED` replaying an order.

use crate::util::{assert_no_process_with, hangcheck_test, leaked_by, marker, read};

/// (round, test id) in the order the tests ran.
fn ran(report: &serde_json::Value) -> Vec<(u64, String)> {
    let tests = report["tests"].as_array().unwrap_or_else(|| panic!("no tests in {report:#}"));
    tests.iter().map(|t| (t["round"].as_u64().unwrap(), t["id"].as_str().unwrap().to_owned())).collect()
}

#[test]
fn repeat_30_reproduces_a_race_that_hangs_one_call_in_five_with_a_flake_table_and_evidence() {
    let mark = marker("repeat");
    let run = hangcheck_test(&["-p", "lost-wakeup", "--repeat", "30", "--server-env", &mark]);
    assert_eq!(run.code, 6, "a hung round is a hang\n{run}");
    let report = run.report();
    assert_eq!(report["rounds"]["count"], 30, "{:#}", report["rounds"]);
    assert_eq!(ran(&report).len(), 60, "two tests, thirty rounds");
    let flake = report["flakes"].as_array().unwrap().iter().find(|f| f["id"] == "e2e::one_job").unwrap().clone();
    let hung = flake["hung"].as_u64().unwrap();
    assert!(hung >= 1 && flake["passed"].as_u64().unwrap() + hung == 30, "{flake:#}");
    let first = flake["first_failure"].as_u64().unwrap();
    // The culprit: where the request waits for the wakeup it lost.
    assert_eq!(flake["waiting"][0]["function"], "lost_wakeup::wait_for_worker", "{flake:#}");
    let evidence = flake["evidence"][0].as_str().unwrap();
    assert!(evidence.contains(&format!("rounds/{first}/hangs/e2e.one_job")), "{flake:#}");
    assert!(read(std::path::Path::new(evidence)).contains("lost_wakeup::wait_for_worker"), "{evidence}");
    // On screen: the table, the line of the flaky test, its culprit.
    assert!(run.stdout.contains("Flakes over 30 rounds"), "{run}");
    assert!(
        run.stdout
            .contains(&format!("passed {}/30, failed 0, hung {hung}, stalled 0  first in round {first}", 30 - hung)),
        "{run}"
    );
    assert!(run.stdout.contains("waiting in lost_wakeup::wait_for_worker (examples/lost-wakeup/src/main.rs:"), "{run}");
    // Evidence is written for the first five hung rounds only.
    let with_evidence = std::fs::read_dir(run.run_dir().join("rounds"))
        .unwrap()
        .flatten()
        .filter(|d| d.path().join("hangs").exists())
        .count() as u64;
    assert_eq!(with_evidence, hung.min(5), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn until_fail_stops_at_the_first_hung_round() {
    let mark = marker("until-fail");
    let run = hangcheck_test(&["-p", "lost-wakeup", "--until-fail", "--repeat", "500", "--server-env", &mark]);
    assert_eq!(run.code, 6, "{run}");
    let report = run.report();
    let tests = report["tests"].as_array().unwrap();
    let hung: Vec<_> = tests.iter().filter(|t| t["outcome"] == "hung").collect();
    assert_eq!(hung.len(), 1, "it stopped at the first hang\n{run}");
    let last = tests.last().unwrap();
    assert_eq!(last["outcome"], "hung", "the hung test is the last one run\n{run}");
    assert_eq!(report["rounds"]["count"], last["round"], "no round began after it");
    assert!(last["round"].as_u64().unwrap() < 500, "{run}");
    assert!(run.stderr.contains("stopping at the first failed round (--until-fail)"), "{run}");
    assert_no_process_with(&mark);
}

#[test]
fn the_same_shuffle_seed_gives_the_same_order_twice() {
    let mark = marker("shuffle");
    let args = ["-p", "waiter-leak", "--shuffle=42", "--repeat", "2", "--server-env", &mark];
    let (one, two) = (hangcheck_test(&args), hangcheck_test(&args));
    let (a, b) = (one.report(), two.report());
    assert_eq!(a["rounds"]["shuffle_seed"], 42);
    assert!(one.stderr.contains("Round 1 (--shuffle=42)") || one.stdout.contains("Round 1 (--shuffle=42)"), "{one}");
    let order = ran(&a);
    assert_eq!(order, ran(&b), "the same seed, the same order");
    // Each round runs every test once, in an order of its own.
    let round = |r: u64| order.iter().filter(|(n, _)| *n == r).map(|(_, id)| id.clone()).collect::<Vec<_>>();
    let (first, second) = (round(1), round(2));
    assert_eq!(first.len(), 7);
    assert_ne!(first, second, "rounds are shuffled each");
    assert_no_process_with(&mark);
}

#[test]
fn shuffled_rounds_interleave_harness_trials_and_test_processes_and_every_one_runs() {
    // A shuffled round goes back and forth between a harness target (one process, its
    // trials in the order of a plan) and a libtest target (a process per test): each
    // round's plan follows that round's order, and a harness left mid-plan is replaced.
    let mark = marker("mixed");
    let run = hangcheck_test(&[
        "-p",
        "mixed-targets",
        "--shuffle=7",
        "--repeat",
        "3",
        "--server-env",
        &mark,
        "one",
        "two",
        "three",
    ]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.report();
    let order = ran(&report);
    assert_eq!(order.len(), 15, "five tests, three rounds\n{run}");
    let outcomes: Vec<_> = report["tests"].as_array().unwrap().iter().map(|t| t["outcome"].clone()).collect();
    assert!(outcomes.iter().all(|o| o == "passed"), "{outcomes:?}\n{run}");
    let round1: Vec<_> = order.iter().filter(|(r, _)| *r == 1).map(|(_, id)| id.as_str()).collect();
    let switches = round1.windows(2).filter(|w| w[0].split("::").next() != w[1].split("::").next()).count();
    assert!(switches >= 2, "seed 7 interleaves the targets: {round1:?}");
    assert_no_process_with(&mark);
}

#[test]
fn chaos_seed_is_printed_recorded_and_handed_to_the_server() {
    let mark = marker("chaos");
    let run = hangcheck_test(&["-p", "lost-wakeup", "--chaos=5", "--server-env", &mark, "ping"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("Round 1 (--chaos=5)") || run.stdout.contains("Round 1 (--chaos=5)"), "{run}");
    assert_eq!(run.report()["rounds"]["chaos_seed"], 5);
    // The server's runtime took the seed and installed the perturbing hook.
    let log = crate::util::read(&run.run_dir().join("server.log"));
    assert!(log.contains("hangcheck: --chaos=5: delays and yields before polls"), "{log}");
    let stable = hangcheck_test(&["-p", "lost-wakeup", "--chaos", "--stable", "ping"]);
    assert_eq!(stable.code, 3, "{stable}");
    assert!(stable.error_line().contains("--chaos works through tokio's poll hooks"), "{stable}");
    assert_no_process_with(&mark);
}

#[test]
fn fresh_server_starts_a_server_per_round_and_judges_each_rounds_leak_against_its_own_baseline() {
    let mark = marker("fresh-server");
    let args = ["-p", "waiter-leak", "--repeat", "3", "--fresh-server", "--settle", "3s", "--server-env", &mark];
    let run = hangcheck_test(&args);
    assert_eq!(run.code, 5, "the leak is still found\n{run}");
    let report = run.report();
    let rounds = &report["rounds"];
    assert_eq!((rounds["count"].as_u64(), rounds["fresh_server"].as_bool()), (Some(3), Some(true)), "{rounds:#}");
    let pids: Vec<u64> = rounds["server_pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert_eq!((pids.len(), distinct.len()), (3, 3), "three servers, three pids: {pids:?}");
    // Each round's server logged to a file of its own, and stopped cleanly.
    for log in ["server.log", "rounds/2/server.log", "rounds/3/server.log"] {
        assert!(read(&run.run_dir().join(log)).contains("listening on"), "{log}\n{run}");
    }
    assert_eq!(report["shutdown"]["outcome"], "clean", "{run}");
    // One leak per round, each the single run's +4 against that round's baseline, never
    // 3 rounds of survivors (+12) against the first.
    let leaks = report["leaks"].as_array().unwrap();
    let per_round: Vec<(u64, u64, u64)> = leaks
        .iter()
        .filter(|l| l["group"] == "waiter")
        .map(|l| (l["round"].as_u64().unwrap(), l["baseline"].as_u64().unwrap(), l["growth"].as_u64().unwrap()))
        .collect();
    assert_eq!(per_round, vec![(1, 0, 4), (2, 0, 4), (3, 0, 4)], "{leaks:#?}");
    let second = leaks.iter().find(|l| l["group"] == "waiter" && l["round"] == 2).unwrap();
    assert_eq!(
        leaked_by(second),
        vec![("e2e::watch_and_leave (round 2)", 1), ("e2e::watch_three_keys_and_leave (round 2)", 3)]
    );
    assert!(run.stdout.contains("LEAK task group `waiter`, spawned at examples/waiter-leak/src/main.rs:"), "{run}");
    assert!(run.stdout.contains("in round 3's server"), "{run}");
    // The accumulation table counts each round's tests from its own server's baseline:
    // the drop is on the new server's baseline row, never on a test's.
    assert_eq!(run.stdout.matches("(baseline of a fresh server)").count(), 2, "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    for (i, _) in lines.iter().enumerate().filter(|(_, l)| l.contains("(baseline of a fresh server)")) {
        let first = lines[i + 1];
        assert!(first.contains("e2e::ping") && first.contains("1 (+1)") && !first.contains("(-"), "{run}");
    }
    // Counters too: the total is the sum over the three servers.
    let connects = report["counters"].as_array().unwrap().iter().find(|c| c["name"] == "connects").unwrap();
    let per_test: Vec<u64> = connects["per_test"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(per_test.len(), 21, "{connects:#}");
    // A round's tests connect 17 times; three rounds, three servers counting from 0.
    assert_eq!(connects["total"], 3 * 17, "{connects:#}");
    assert_eq!(per_test.iter().sum::<u64>(), 3 * 17, "{connects:#}");
    assert_no_process_with(&mark);
}

#[test]
fn fresh_server_without_rounds_is_a_usage_error() {
    let run = hangcheck_test(&["-p", "waiter-leak", "--fresh-server"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--fresh-server") && run.stderr.contains("--repeat"), "{run}");
}

#[test]
fn for_duration_repeats_whole_rounds_until_the_time_is_up_within_repeat() {
    let mark = marker("for");
    let rounds_of = |extra: &[&str]| {
        let mut args = vec!["-p", "waiter-leak", "--exact", "ping", "get_missing_key", "--server-env", &mark];
        args.extend_from_slice(extra);
        let run = hangcheck_test(&args);
        assert_eq!(run.code, 0, "{run}");
        let report = run.report();
        let count = report["rounds"]["count"].as_u64().unwrap_or_else(|| panic!("no rounds\n{run}"));
        let order = ran(&report);
        // Every round begun ran to its end: the round under way finishes.
        assert_eq!(order.len() as u64, 2 * count, "{order:?}");
        assert!((1..=count).all(|r| order.iter().filter(|(n, _)| *n == r).count() == 2), "{order:?}");
        count
    };
    // A budget already spent still runs one round; --repeat bounds a long one.
    assert_eq!(rounds_of(&["--for", "0s"]), 1);
    assert_eq!(rounds_of(&["--for", "10m", "--repeat", "3"]), 3);
    assert!(rounds_of(&["--for", "2s"]) >= 1);
    assert_no_process_with(&mark);
}

#[test]
fn fresh_server_judges_each_rounds_shutdown_and_until_fail_stops_at_a_hung_one() {
    let mark = marker("fresh-shutdown");
    let run = hangcheck_test(&["-p", "shutdown-hang", "--repeat", "2", "--fresh-server", "--server-env", &mark]);
    assert_eq!(run.code, 6, "a round's shutdown hang is a hang\n{run}");
    let report = run.report();
    assert_eq!(report["shutdown"]["outcome"], "hung", "{run}");
    assert_eq!(report["rounds"]["server_pids"].as_array().unwrap().len(), 2, "{run}");
    // Round 1's server was stopped as a run's end stops it: evidence first, in its round.
    let first = read(&run.run_dir().join("rounds/1/shutdown.stacks.txt"));
    assert!(first.contains("metrics-flusher") || first.contains("shutdown_hang"), "{first}");
    assert!(run.run_dir().join("shutdown.stacks.txt").exists(), "and the last round's at the end\n{run}");
    assert_eq!(run.stderr.matches("shutdown hang").count(), 2, "{run}");
    assert_no_process_with(&mark);

    let run = hangcheck_test(&[
        "-p",
        "shutdown-hang",
        "--until-fail",
        "--repeat",
        "5",
        "--fresh-server",
        "--server-env",
        &mark,
    ]);
    assert_eq!(run.code, 6, "{run}");
    let report = run.report();
    assert_eq!(report["rounds"]["count"], 1, "no round after the hung shutdown\n{run}");
    assert_eq!(report["rounds"]["server_pids"].as_array().unwrap().len(), 1, "no server started for it\n{run}");
    assert!(run.stderr.contains("its server's shutdown hung"), "{run}");
    assert_no_process_with(&mark);
}
