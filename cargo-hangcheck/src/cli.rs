//! The command line, following cargo's conventions: `-p`, `--manifest-path`,
//! `--release`, `--features`, `--target-dir`, `--color`, `--test NAME`, and trailing
//! test-name filters. Every `[package.metadata.hangcheck]` key has a flag here, and a
//! flag wins over the key.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Cargo runs `cargo-hangcheck hangcheck ARGS`; so does the in-repo alias.
#[derive(Parser, Debug)]
#[command(name = "cargo", bin_name = "cargo", styles = clap::builder::Styles::styled())]
pub enum CargoCli {
    /// Finds hangs and leaks in a tokio server while its end-to-end tests run.
    Hangcheck(Hangcheck),
}

/// Finds hangs and leaks in a tokio server while its end-to-end tests run.
#[derive(Args, Debug)]
#[command(version, about, long_about = None)]
pub struct Hangcheck {
    /// Coloring: auto, always, never (auto honours NO_COLOR and CLICOLOR_FORCE).
    #[arg(long, value_enum, global = true, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
// Parsed once per process; boxing the large variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build and start the server, run its E2E tests one at a time, report what leaks.
    Test(TestArgs),
    /// Start the server under the agent with no tests, to drive it by hand; Enter prints
    /// a snapshot with the deltas since the last one.
    Run(ServerArgs),
    /// Print the server's stacks from the run in progress (it keeps running).
    Stacks(LocateArgs),
    /// Print a snapshot, with deltas since the last one, from the run in progress.
    Snapshot(LocateArgs),
    /// Join the reports of a partitioned suite's shards into one report.json and
    /// junit.xml; exits with the code one run of the whole suite would have had.
    Merge(MergeArgs),
    /// Print what changed between two reports: verdict, tests, leaks (new, grown, gone),
    /// stalls, shutdown.
    Diff(DiffArgs),
}

/// `cargo hangcheck diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The earlier report.json (say, the main branch's).
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The later one.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
}

/// `cargo hangcheck merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' report.json files.
    #[arg(value_name = "REPORT", required = true)]
    pub reports: Vec<PathBuf>,
    /// Where to write the merged report.json and junit.xml.
    #[arg(long, value_name = "DIRECTORY", default_value = "hangcheck-merged")]
    pub out: PathBuf,
}

/// Where to look for a run in progress.
#[derive(Args, Debug, Default, Clone)]
pub struct LocateArgs {
    /// The run of this package (when several are in progress).
    #[arg(short = 'p', long = "package", value_name = "SPEC")]
    pub package: Option<String>,
    /// The run whose runner has this pid (when several are in progress).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// The target directory the run uses.
    #[arg(long, value_name = "DIRECTORY")]
    pub target_dir: Option<PathBuf>,
}

/// When to use colour.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorWhen {
    /// Colour when stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// Which package, and how cargo builds it.
#[derive(Args, Debug, Default, Clone)]
pub struct PackageArgs {
    /// The package whose server and tests to run.
    #[arg(short = 'p', long = "package", value_name = "SPEC", help_heading = "Package Selection")]
    pub package: Option<String>,
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH", help_heading = "Manifest Options")]
    pub manifest_path: Option<PathBuf>,
    /// Build in release mode.
    #[arg(short = 'r', long, help_heading = "Compilation Options")]
    pub release: bool,
    /// Space or comma separated features to activate.
    #[arg(short = 'F', long, value_name = "FEATURES", help_heading = "Feature Selection")]
    pub features: Vec<String>,
    /// Activate all features.
    #[arg(long, help_heading = "Feature Selection")]
    pub all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long, help_heading = "Feature Selection")]
    pub no_default_features: bool,
    /// Directory for all generated artifacts (hangcheck builds in `<DIR>/hangcheck`).
    #[arg(long, value_name = "DIRECTORY", help_heading = "Compilation Options")]
    pub target_dir: Option<PathBuf>,
    /// Build the server without `--cfg tokio_unstable` (hangcheck then sees only named
    /// spawns).
    #[arg(long, help_heading = "Compilation Options")]
    pub stable: bool,
}

/// How to start the server: shared by `test` and `run`.
#[derive(Args, Debug, Default, Clone)]
pub struct ServerArgs {
    #[command(flatten)]
    pub package: PackageArgs,

    /// The server's bin target [config: server.bin].
    #[arg(long = "bin", value_name = "NAME", help_heading = "Server")]
    pub bin: Option<String>,
    /// An argument for the server; repeat for more [config: server.args].
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true, help_heading = "Server")]
    pub server_args: Vec<String>,
    /// An environment variable for the server, KEY=VALUE; repeat for more [config: server.env].
    #[arg(long = "server-env", value_name = "KEY=VALUE", value_parser = parse_env, help_heading = "Server")]
    pub server_env: Vec<(String, String)>,
    /// What makes the server ready: `announce` (hello and an announced address) or
    /// `hello` [config: server.ready; default: announce].
    #[arg(long, value_enum, value_name = "WHEN", help_heading = "Server")]
    pub ready: Option<Ready>,
    /// Time for the server to say hello [config: startup-timeout; default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Timeouts")]
    pub startup_timeout: Option<Duration>,
    /// Time the server gets after SIGTERM before it is a shutdown hang [config: shutdown-grace; default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Timeouts")]
    pub shutdown_grace: Option<Duration>,
    /// A worker stuck in one poll this long is a stall; 0 turns the watchdog off [config: stall-threshold; default: 250ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Timeouts")]
    pub stall_threshold: Option<Duration>,
    /// Time the server's agent gets for the async task stacks of one stacks request (a dump
    /// of a big server is grouped and cut to fit it) [config: stacks-budget; default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Timeouts")]
    pub stacks_budget: Option<Duration>,
    /// Count polls and busy time per task group (costs a lookup per poll) [config: poll-stats].
    #[arg(long, help_heading = "Server")]
    pub poll_stats: bool,
    /// Events the server's flight recorder keeps for the evidence; 0 turns it off [config: recorder-events; default: 4096].
    #[arg(long, value_name = "N", help_heading = "Server")]
    pub recorder_events: Option<usize>,
    /// Operations of one key in flight together for longer than this are a finding;
    /// shorter overlaps are handovers [config: overlap-grace; default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Leak Policy")]
    pub overlap_grace: Option<Duration>,
    /// Whether a stall fails the run (exit 7) or is only reported [config: stall-verdict; default: fail].
    #[arg(long, value_enum, value_name = "VERDICT", help_heading = "Timeouts")]
    pub stall_verdict: Option<StallVerdict>,
}

/// Which `#[ignore]`d tests run.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RunIgnored {
    /// None: they are reported as ignored.
    #[default]
    Default,
    /// Only them.
    Only,
    /// Them and the others.
    All,
}

/// What a run that selects no test does (nextest's `--no-tests`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoTests {
    /// A setup error: a filter with a typo must not give a green CI.
    Fail,
    /// A warning; the server is still started, judged and stopped.
    Warn,
    /// Nothing said; the server is still started, judged and stopped.
    Pass,
}

/// What a stall does to the run's verdict.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StallVerdict {
    /// A stall fails the run with its own exit code.
    #[default]
    Fail,
    /// Stalls are reported; the exit code ignores them.
    Warn,
}

/// `cargo hangcheck test`.
#[derive(Args, Debug, Default)]
#[command(group(clap::ArgGroup::new("rounds").args(["repeat", "for_duration", "until_fail"]).multiple(true)))]
pub struct TestArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Test target(s) holding the E2E tests [config: tests; default: all test targets].
    #[arg(long = "test", value_name = "NAME", help_heading = "Target Selection")]
    pub tests: Vec<String>,
    /// Time for one test before it counts as hung [config: test-timeout; default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Timeouts")]
    pub test_timeout: Option<Duration>,
    /// Longest wait for counts to come back down after a test [config: settle; default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Timeouts")]
    pub settle: Option<Duration>,
    /// Run the selected tests N rounds against the same server (slow leaks accumulate);
    /// a flake table says how each test went over them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Rounds")]
    pub repeat: Option<u32>,
    /// Repeat rounds until this much time has passed (with --repeat, at most N rounds).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, help_heading = "Rounds")]
    pub for_duration: Option<Duration>,
    /// Stop at the first failed, hung or stalled round (repeats until then, within
    /// --repeat or --for when given).
    #[arg(long, help_heading = "Rounds")]
    pub until_fail: bool,
    /// Shuffle the tests' order in each round; the seed is printed and recorded, and
    /// `--shuffle=SEED` replays the same orders.
    #[arg(long, value_name = "SEED", num_args = 0..=1, require_equals = true, help_heading = "Rounds")]
    pub shuffle: Option<Option<u64>>,
    /// Perturb the server's scheduling: short random delays and yields before polls, and
    /// tokio's RNG seeded from SEED (printed and recorded). Needs a tokio_unstable build.
    #[arg(long, value_name = "SEED", num_args = 0..=1, require_equals = true, help_heading = "Rounds")]
    pub chaos: Option<Option<u64>>,
    /// With rounds (--repeat, --for or --until-fail), a server of its own for each round:
    /// stopped as at the end of a run (its shutdown judged), started again, a fresh
    /// baseline; leaks are judged per round, against that round's baseline.
    #[arg(long, requires = "rounds", help_heading = "Rounds")]
    pub fresh_server: bool,
    /// Run N copies of each test at once against the server, to shake out races; the
    /// test's outcome is the worst of its copies, its leaks the sum over them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Rounds")]
    pub stress: Option<u32>,

    /// How long the server's counts must stay unchanged before the baseline is taken
    /// (bounded by the start-up timeout) [config: baseline-settle; default: 250ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Timeouts")]
    pub baseline_settle: Option<Duration>,
    /// Extra time the server gets after it is ready, before the quiet baseline [config: warmup; default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Timeouts")]
    pub warmup: Option<Duration>,
    /// A test run once before the baseline, to open what the server opens lazily (a pool,
    /// a cache file); what it leaves is start-up, never a verdict. Its whole name
    /// (`e2e::prime` or `prime`), repeatable [config: warmup = ["NAME", ...]].
    #[arg(long = "warmup-test", value_name = "NAME", help_heading = "Timeouts")]
    pub warmup_tests: Vec<String>,
    /// Stop at the first failed or hung test [config: fail-fast].
    #[arg(long, help_heading = "Timeouts")]
    pub fail_fast: bool,
    /// Run `#[ignore]`d tests: `default` reports them as ignored without running them,
    /// `only` runs only them, `all` runs them with the others.
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = RunIgnored::Default, help_heading = "Test Selection")]
    pub run_ignored: RunIgnored,
    /// What a run that selects no test is: `fail` (exit 3), `warn`, or `pass` [config: no-tests; default: fail].
    #[arg(long, value_enum, value_name = "ACTION", help_heading = "Test Selection")]
    pub no_tests: Option<NoTests>,

    /// Growth a task group, operation kind, fd kind or the thread count may have over the
    /// run before it is a leak [config: leaks.allow-growth; default: 0].
    #[arg(long, value_name = "N", help_heading = "Leak Policy")]
    pub allow_growth: Option<u64>,
    /// A group name, location prefix, `op:KIND`, `fd:KIND` or `threads` never judged;
    /// repeat for more [config: leaks.ignore].
    #[arg(long, value_name = "PREFIX", help_heading = "Leak Policy")]
    pub ignore: Vec<String>,

    /// A report.json to judge leaks against (e.g. the main branch's): each leak is then
    /// new, grown or known, and `--fail-on` picks which fail the run.
    #[arg(long, value_name = "PATH", help_heading = "Leak Policy")]
    pub baseline: Option<PathBuf>,
    /// Which leaks fail the run, against `--baseline`: `new`, `grown` (new and grown) or
    /// `any` [default: grown].
    #[arg(long, value_enum, value_name = "WHICH", requires = "baseline", help_heading = "Leak Policy")]
    pub fail_on: Option<crate::standing::FailOn>,

    /// How to print the run: `human`, or `json` (one event per line on stdout, in the
    /// manner of libtest's JSON; the human output then goes to stderr).
    #[arg(long, value_enum, value_name = "FMT", default_value_t = MessageFormat::Human, help_heading = "Display Options")]
    pub message_format: MessageFormat,

    /// Run only shard M of N of the selected tests: `count:M/N` (round-robin per test
    /// target) or `hash:M/N` (by the test's name), as in nextest.
    #[arg(long, value_name = "SCHEME:M/N", value_parser = crate::partition::parse, help_heading = "Target Selection")]
    pub partition: Option<crate::partition::Partition>,

    /// Match the test-name filters exactly (`name` or `target::name`), as libtest's
    /// `--exact` does, instead of as substrings.
    #[arg(long, help_heading = "Target Selection")]
    pub exact: bool,

    /// Run only tests whose name contains one of these (with --exact: is one of these).
    #[arg(value_name = "TESTNAME")]
    pub filters: Vec<String>,
}

/// How `cargo hangcheck test` prints the run.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MessageFormat {
    /// For a person: status, a line per test, the table and the verdicts.
    #[default]
    Human,
    /// For a tool: every event as a JSON object per line on stdout.
    Json,
}

/// What makes the server ready for the first test.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ready {
    /// The agent's hello.
    Hello,
    /// Hello and at least one announced address.
    Announce,
}

/// Parses "30s", "1m 30s", "250ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like \"30s\" or \"250ms\": {e}"))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}
