//! Rounds: `--repeat N`, `--for DURATION` and `--until-fail` run the selected tests over
//! and over against the same server, so that a hang that shows once in twenty runs shows,
//! and slow leaks accumulate; `--shuffle[=SEED]` changes the order in each round, from a
//! seed that is printed and recorded so that a failing order replays exactly.
//!
//! [`run`] is the order of a run: rounds, each test in the next epoch, skipped tests,
//! `--fail-fast` and `--until-fail`, fresh servers between rounds, Ctrl-C. It asks for
//! each step through [`Steps`], which `crate::run` implements with the server and the
//! test processes, and the unit tests below with neither.

use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::splitmix64 as splitmix;

use crate::cli::{RunIgnored, TestArgs};
use crate::errors::SetupError;
use crate::event::Event;
use crate::suite::{self, TestCase};

/// How many rounds, and in which order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub repeat: Option<u32>,
    pub for_duration: Option<Duration>,
    pub until_fail: bool,
    pub shuffle: Option<u64>,
    /// `--chaos`'s seed (the server gets it in its environment).
    pub chaos: Option<u64>,
    /// `--fresh-server`: a server of its own for each round.
    pub fresh_server: bool,
}

impl Plan {
    /// The plan of the command line; `--shuffle` without a seed draws one.
    pub fn of(args: &TestArgs) -> Plan {
        Plan {
            repeat: args.repeat,
            for_duration: args.for_duration,
            until_fail: args.until_fail,
            shuffle: args.shuffle.map(|seed| seed.unwrap_or_else(draw_seed)),
            chaos: args.chaos.map(|seed| seed.unwrap_or_else(draw_seed)),
            fresh_server: args.fresh_server,
        }
    }

    /// Whether the run has rounds at all (otherwise it runs as it always has).
    pub fn repeating(&self) -> bool {
        self.repeat.is_some()
            || self.for_duration.is_some()
            || self.until_fail
            || self.shuffle.is_some()
            || self.chaos.is_some()
    }

    /// Whether another round follows round `done`, begun at `started`.
    pub fn another(&self, done: u32, started: Instant) -> bool {
        let within_count = self.repeat.is_none_or(|n| done < n);
        let within_time = self.for_duration.is_none_or(|d| started.elapsed() < d);
        match (self.repeat, self.for_duration, self.until_fail) {
            // --until-fail alone goes on until something fails (bounded by Ctrl-C).
            (None, None, true) => true,
            _ => within_count && within_time && (self.repeat.is_some() || self.for_duration.is_some()),
        }
    }
}

/// A seed from the clock and the process id: a new order every run, printed so it can be
/// replayed.
fn draw_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    splitmix(nanos as u64 ^ u64::from(std::process::id())) % 1_000_000_000
}

/// Shuffles `items` for round `round` of seed `seed` (Fisher–Yates).
pub fn shuffle<T>(items: &mut [T], seed: u64, round: u32) {
    let mut state = splitmix(seed ^ (u64::from(round) << 32));
    for i in (1..items.len()).rev() {
        state = splitmix(state);
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// What the order of a run asks of it: [`crate::run`] does each step with the server and
/// the test processes; the tests below do them with neither, to check the order alone.
pub trait Steps {
    /// Hands an event to the reporters.
    fn emit(&mut self, event: Event<'_>);
    /// Ctrl-C.
    fn interrupted(&self) -> bool;
    /// The tests run or skipped so far, in all rounds: the next one's epoch is this + 1.
    fn tests_so_far(&self) -> usize;
    /// The stalls reported so far.
    fn stalls_so_far(&self) -> usize;
    /// A round is about to run `order` (harness processes are planned by it).
    fn plan(&mut self, order: &[TestCase], run_ignored: RunIgnored);
    /// Runs one test in `epoch`, settles and snapshots; says whether it passed.
    fn run_one(&mut self, case: &TestCase, epoch: u64) -> Result<bool, SetupError>;
    /// Reports an ignored test, in `epoch`, without running it.
    fn skip(&mut self, case: &TestCase, epoch: u64);
    /// `--fresh-server`: judges round `round`'s server and stops it; says whether its
    /// shutdown hung.
    fn end_round_server(&mut self, round: u32) -> Result<bool, SetupError>;
    /// `--fresh-server`: starts the server of round `round` and takes its baseline.
    fn start_round_server(&mut self, round: u32) -> Result<(), SetupError>;
}

/// What stops a run early, besides its plan.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Which ignored tests run.
    pub run_ignored: RunIgnored,
    /// `--fail-fast`: stop at the first failed or hung test.
    pub fail_fast: bool,
}

/// Runs `cases` in rounds as `plan` says (a single round without rounds), each test in an
/// epoch of its own, until the plan is done, something fails that should stop the run,
/// or Ctrl-C. Returns the number of the last round begun.
pub fn run(steps: &mut impl Steps, cases: &[TestCase], plan: &Plan, policy: Policy) -> Result<u32, SetupError> {
    let started = Instant::now();
    let mut round = 0;
    'rounds: loop {
        round += 1;
        let mut order = cases.to_vec();
        if plan.repeating() {
            order.iter_mut().for_each(|c| c.round = round);
            if let Some(seed) = plan.shuffle {
                shuffle(&mut order, seed, round);
            }
            let fresh_server = plan.fresh_server;
            steps.emit(Event::Round { round, seed: plan.shuffle, chaos: plan.chaos, fresh_server });
        }
        steps.plan(&order, policy.run_ignored);
        let stalls_before = steps.stalls_so_far();
        for case in &order {
            if steps.interrupted() {
                break 'rounds;
            }
            let epoch = steps.tests_so_far() as u64 + 1;
            let passed = if suite::runs(case, policy.run_ignored) {
                steps.run_one(case, epoch)?
            } else {
                steps.skip(case, epoch);
                true
            };
            if policy.fail_fast && !passed {
                steps.emit(Event::Warning { message: "stopping at the first failure (--fail-fast)" });
                break 'rounds;
            }
            if plan.until_fail && (!passed || steps.stalls_so_far() > stalls_before) {
                steps.emit(Event::Warning { message: "stopping at the first failed round (--until-fail)" });
                break 'rounds;
            }
        }
        if !plan.another(round, started) {
            break;
        }
        if plan.fresh_server {
            let hung = steps.end_round_server(round)?;
            if plan.until_fail && hung {
                steps.emit(Event::Warning {
                    message: "stopping at the first failed round (--until-fail): its server's shutdown hung",
                });
                break;
            }
            steps.start_round_server(round + 1)?;
        }
    }
    Ok(round)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_order_and_rounds_differ() {
        let order = |seed, round| {
            let mut v: Vec<u32> = (0..20).collect();
            shuffle(&mut v, seed, round);
            v
        };
        assert_eq!(order(7, 1), order(7, 1));
        assert_ne!(order(7, 1), order(7, 2));
        assert_ne!(order(7, 1), order(8, 1));
        let mut sorted = order(7, 1);
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }

    /// The order of a run, with neither a server nor a test process: every step is
    /// written down, every event goes to a reporter that writes it down too.
    mod order {
        use std::cell::RefCell;
        use std::rc::Rc;

        use super::super::*;
        use crate::report::{Report, Reporter, Reporters};

        /// A reporter that keeps a line per event of the order (rounds and warnings).
        struct Heard(Rc<RefCell<Vec<String>>>);

        impl Reporter for Heard {
            fn event(&mut self, event: &Event<'_>) {
                let line = match event {
                    Event::Round { round, seed, .. } => format!("round {round} seed {seed:?}"),
                    Event::Warning { message } => format!("warning: {message}"),
                    _ => return,
                };
                self.0.borrow_mut().push(line);
            }
            fn finished(&mut self, _: &Report) {}
        }

        /// Steps that only write down what they were asked, and fail, stall, hang or
        /// stop as the test says.
        struct Fake {
            reporters: Reporters,
            heard: Rc<RefCell<Vec<String>>>,
            done: Vec<String>,
            tests: usize,
            stalls: usize,
            /// `(round, name)` of tests that fail, stall, or return a setup error.
            fails: Vec<(u32, &'static str)>,
            stalls_in: Vec<(u32, &'static str)>,
            errors_in: Vec<(u32, &'static str)>,
            /// Rounds whose server's shutdown hangs.
            hangs_at_shutdown: Vec<u32>,
            /// Ctrl-C after this many tests.
            interrupt_after: Option<usize>,
        }

        impl Fake {
            fn new() -> Fake {
                let heard = Rc::new(RefCell::new(Vec::new()));
                Fake {
                    reporters: Reporters::new(vec![Box::new(Heard(heard.clone()))]),
                    heard,
                    done: Vec::new(),
                    tests: 0,
                    stalls: 0,
                    fails: Vec::new(),
                    stalls_in: Vec::new(),
                    errors_in: Vec::new(),
                    hangs_at_shutdown: Vec::new(),
                    interrupt_after: None,
                }
            }

            fn heard(&self) -> Vec<String> {
                self.heard.borrow().clone()
            }

            /// The tests run, as `round:name@epoch`.
            fn ran(&self) -> Vec<String> {
                self.done.iter().filter(|d| d.starts_with("run ")).map(|d| d[4..].to_owned()).collect()
            }
        }

        impl Steps for Fake {
            fn emit(&mut self, event: Event<'_>) {
                self.reporters.emit(event);
            }
            fn interrupted(&self) -> bool {
                self.interrupt_after.is_some_and(|n| self.tests >= n)
            }
            fn tests_so_far(&self) -> usize {
                self.tests
            }
            fn stalls_so_far(&self) -> usize {
                self.stalls
            }
            fn plan(&mut self, order: &[TestCase], _: RunIgnored) {
                let names: Vec<&str> = order.iter().map(|c| c.name.as_str()).collect();
                self.done.push(format!("plan {}", names.join(",")));
            }
            fn run_one(&mut self, case: &TestCase, epoch: u64) -> Result<bool, SetupError> {
                let at = (case.round, case.name.as_str());
                if self.errors_in.contains(&at) {
                    return Err(SetupError::Config(format!("the server died during {}", case.name)));
                }
                self.tests += 1;
                self.done.push(format!("run {}:{}@{epoch}", case.round, case.name));
                if self.stalls_in.contains(&at) {
                    self.stalls += 1;
                }
                Ok(!self.fails.contains(&at))
            }
            fn skip(&mut self, case: &TestCase, epoch: u64) {
                self.tests += 1;
                self.done.push(format!("skip {}@{epoch}", case.name));
            }
            fn end_round_server(&mut self, round: u32) -> Result<bool, SetupError> {
                self.done.push(format!("end server {round}"));
                Ok(self.hangs_at_shutdown.contains(&round))
            }
            fn start_round_server(&mut self, round: u32) -> Result<(), SetupError> {
                self.done.push(format!("start server {round}"));
                Ok(())
            }
        }

        /// Tests named `names`; a leading `!` marks one `#[ignore]`d.
        fn cases(names: &[&str]) -> Vec<TestCase> {
            names
                .iter()
                .map(|n| TestCase {
                    ignored: n.starts_with('!'),
                    ..crate::report::timeline::tests::case(n.trim_start_matches('!'))
                })
                .collect()
        }

        const ON: Policy = Policy { run_ignored: RunIgnored::Default, fail_fast: false };

        #[test]
        fn without_rounds_each_test_runs_once_in_the_next_epoch_and_no_round_is_announced() {
            let mut fake = Fake::new();
            let last = run(&mut fake, &cases(&["a", "b", "c"]), &Plan::default(), ON).unwrap();
            assert_eq!(last, 1);
            assert_eq!(fake.done, ["plan a,b,c", "run 0:a@1", "run 0:b@2", "run 0:c@3"]);
            assert!(fake.heard().is_empty(), "{:?}", fake.heard());
        }

        #[test]
        fn shuffled_rounds_run_every_test_once_each_in_an_order_of_their_own_that_replays() {
            let plan = Plan { repeat: Some(3), shuffle: Some(7), ..Plan::default() };
            let names = ["a", "b", "c", "d", "e", "f"];
            let mut fake = Fake::new();
            assert_eq!(run(&mut fake, &cases(&names), &plan, ON).unwrap(), 3);
            let ran = fake.ran();
            assert_eq!(ran.len(), 18);
            // Epochs follow on across rounds.
            let epochs: Vec<u64> = ran.iter().map(|r| r.rsplit('@').next().unwrap().parse().unwrap()).collect();
            assert_eq!(epochs, (1..=18).collect::<Vec<u64>>());
            let round = |r: u32| -> Vec<String> {
                let prefix = format!("{r}:");
                ran.iter()
                    .filter_map(|x| x.strip_prefix(&prefix))
                    .map(|x| x.split('@').next().unwrap().into())
                    .collect()
            };
            for r in 1..=3 {
                let mut expected = names.to_vec();
                shuffle(&mut expected, 7, r);
                assert_eq!(round(r), expected, "round {r} runs in seed 7's order for that round");
                // Each round's plan (a harness runs its trials in it) is that round's order.
                assert!(fake.done.contains(&format!("plan {}", expected.join(","))), "{:?}", fake.done);
            }
            assert_ne!(round(1), round(2));
            assert_eq!(fake.heard(), ["round 1 seed Some(7)", "round 2 seed Some(7)", "round 3 seed Some(7)"]);
            let mut again = Fake::new();
            run(&mut again, &cases(&names), &plan, ON).unwrap();
            assert_eq!(again.done, fake.done, "the same seed replays the same order");
        }

        #[test]
        fn until_fail_stops_right_after_the_first_failed_or_stalled_test_and_says_why() {
            let plan = Plan { until_fail: true, ..Plan::default() };
            let mut fake = Fake::new();
            fake.fails = vec![(3, "b")];
            assert_eq!(run(&mut fake, &cases(&["a", "b", "c"]), &plan, ON).unwrap(), 3);
            assert_eq!(fake.ran().last().map(String::as_str), Some("3:b@8"));
            assert_eq!(fake.heard().last().unwrap(), "warning: stopping at the first failed round (--until-fail)");

            let mut stalled = Fake::new();
            stalled.stalls_in = vec![(2, "a")];
            run(&mut stalled, &cases(&["a", "b"]), &plan, ON).unwrap();
            assert_eq!(stalled.ran().last().map(String::as_str), Some("2:a@3"), "a stall fails its round");
        }

        #[test]
        fn fail_fast_stops_at_the_first_failure_and_ignored_tests_are_skipped_in_their_epoch() {
            let mut fake = Fake::new();
            fake.fails = vec![(0, "c")];
            let policy = Policy { fail_fast: true, ..ON };
            run(&mut fake, &cases(&["a", "!b", "c", "d"]), &Plan::default(), policy).unwrap();
            assert_eq!(fake.done, ["plan a,b,c,d", "run 0:a@1", "skip b@2", "run 0:c@3"]);
            assert_eq!(fake.heard(), ["warning: stopping at the first failure (--fail-fast)"]);

            let mut all = Fake::new();
            run(&mut all, &cases(&["a", "!b"]), &Plan::default(), Policy { run_ignored: RunIgnored::All, ..ON })
                .unwrap();
            assert_eq!(all.ran(), ["0:a@1", "0:b@2"], "--run-ignored all runs it");
        }

        #[test]
        fn fresh_servers_come_between_rounds_and_the_last_is_left_to_the_run() {
            let plan = Plan { repeat: Some(3), fresh_server: true, ..Plan::default() };
            let mut fake = Fake::new();
            run(&mut fake, &cases(&["a"]), &plan, ON).unwrap();
            assert_eq!(
                fake.done,
                [
                    "plan a",
                    "run 1:a@1",
                    "end server 1",
                    "start server 2",
                    "plan a",
                    "run 2:a@2",
                    "end server 2",
                    "start server 3",
                    "plan a",
                    "run 3:a@3",
                ]
            );
        }

        #[test]
        fn a_hung_shutdown_stops_until_fail_before_another_server_starts() {
            let plan = Plan { repeat: Some(5), until_fail: true, fresh_server: true, ..Plan::default() };
            let mut fake = Fake::new();
            fake.hangs_at_shutdown = vec![2];
            assert_eq!(run(&mut fake, &cases(&["a"]), &plan, ON).unwrap(), 2);
            assert_eq!(fake.done.last().map(String::as_str), Some("end server 2"));
            assert!(fake.heard().last().unwrap().contains("its server's shutdown hung"), "{:?}", fake.heard());
        }

        #[test]
        fn ctrl_c_stops_before_the_next_test_and_a_setup_error_ends_the_run() {
            let plan = Plan { repeat: Some(10), ..Plan::default() };
            let mut fake = Fake::new();
            fake.interrupt_after = Some(3);
            run(&mut fake, &cases(&["a", "b"]), &plan, ON).unwrap();
            assert_eq!(fake.ran().len(), 3);

            let mut dead = Fake::new();
            dead.errors_in = vec![(2, "b")];
            let err = run(&mut dead, &cases(&["a", "b"]), &plan, ON).unwrap_err();
            assert!(err.to_string().contains("the server died during b"), "{err}");
            assert_eq!(dead.ran(), ["1:a@1", "1:b@2", "2:a@3"], "nothing runs after the error");
        }
    }

    #[test]
    fn rounds_end_at_the_count() {
        let plan = Plan { repeat: Some(3), ..Plan::default() };
        let now = Instant::now();
        assert!(plan.another(2, now) && !plan.another(3, now));
        assert!(!Plan::default().another(1, now));
        assert!(Plan { until_fail: true, ..Plan::default() }.another(100, now));
    }
}
