//! The run's configuration: `[package.metadata.hangcheck]` over
//! `[workspace.metadata.hangcheck]`, read through `cargo metadata`, with every key
//! overridable by its CLI flag. Unknown keys and malformed values are errors that name the
//! key, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cargo_metadata::{Metadata, MetadataCommand, Package, TargetKind};
use hangcheck_runtime::protocol::StacksBudget;
use serde::Deserialize;

use crate::analysis::LeakPolicy;
use crate::cli::{parse_duration, NoTests, PackageArgs, Ready, RunIgnored, ServerArgs, StallVerdict, TestArgs};
use crate::errors::SetupError;

/// The metadata table, as written in Cargo.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    server: Option<ServerTable>,
    tests: Option<Vec<String>>,
    test_timeout: Option<String>,
    startup_timeout: Option<String>,
    shutdown_grace: Option<String>,
    settle: Option<String>,
    baseline_settle: Option<String>,
    warmup: Option<WarmupKey>,
    stall_threshold: Option<String>,
    stacks_budget: Option<String>,
    stall_verdict: Option<StallVerdict>,
    overlap_grace: Option<String>,
    poll_stats: Option<bool>,
    recorder_events: Option<usize>,
    fail_fast: Option<bool>,
    no_tests: Option<NoTests>,
    leaks: Option<LeaksTable>,
}

/// `warmup = "2s"` (time the server gets before the baseline) or `warmup = ["e2e::prime"]`
/// (tests run before the baseline, excluded from the verdicts).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WarmupKey {
    Duration(String),
    Tests(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ServerTable {
    bin: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    ready: Option<Ready>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct LeaksTable {
    allow_growth: Option<u64>,
    ignore: Option<Vec<String>>,
}

/// Everything a `test` run needs to know, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The package under test.
    pub package: String,
    /// Its manifest.
    pub manifest_path: PathBuf,
    /// Its directory; tests run there, as under `cargo test`.
    pub package_dir: PathBuf,
    /// Where hangcheck builds and writes runs: `<target-dir>/hangcheck`.
    pub hangcheck_dir: PathBuf,
    /// How cargo builds.
    pub build: PackageArgs,
    /// Whether the package depends on hangcheck-runtime directly (so the build can turn
    /// on its `taskdump` feature).
    pub runtime_dependency: bool,
    /// The server's bin target.
    pub server_bin: String,
    /// Its arguments.
    pub server_args: Vec<String>,
    /// Extra environment for it.
    pub server_env: Vec<(String, String)>,
    /// What makes it ready.
    pub ready: Ready,
    /// The test targets to run.
    pub test_targets: Vec<String>,
    /// Test-name filters (substring match); empty runs all.
    pub filters: Vec<String>,
    /// The filters match whole names (`--exact`).
    pub exact: bool,
    /// The leaks of `--baseline`, to judge this run's against.
    pub baseline: Option<crate::standing::Baseline>,
    /// Which of them fail the run.
    pub fail_on: crate::standing::FailOn,
    /// Rounds: `--repeat`, `--for`, `--until-fail`, `--shuffle`.
    pub rounds: crate::rounds::Plan,
    /// `--stress N`: copies of each test run at once (1 without).
    pub stress: u32,
    /// The shard of the selected tests this run takes.
    pub partition: Option<crate::partition::Partition>,
    /// Per-test timeout.
    pub test_timeout: Duration,
    /// Time for the server to say hello.
    pub startup_timeout: Duration,
    /// Time between SIGTERM and SIGKILL for the server.
    pub shutdown_grace: Duration,
    /// Longest settle wait after a test.
    pub settle: Duration,
    /// How long the server must be quiet before the baseline.
    pub baseline_settle: Duration,
    /// Time after readiness before the quiet baseline is looked for.
    pub warmup: Duration,
    /// Tests run once before the baseline (whole names, `target::name` or `name`); what
    /// they leave is start-up, never a verdict.
    pub warmup_tests: Vec<String>,
    /// A poll longer than this is a stall; zero turns the watchdog off.
    pub stall_threshold: Duration,
    /// What one stacks request may cost the server (`stacks-budget`, and the size cap).
    pub stacks_budget: StacksBudget,
    /// Whether a stall fails the run.
    pub stall_verdict: StallVerdict,
    /// Count polls and busy time per task group.
    pub poll_stats: bool,
    /// The server's flight recorder size, in events; zero turns it off.
    pub recorder_events: usize,
    /// Stop at the first failed or hung test.
    pub fail_fast: bool,
    /// Which ignored tests run.
    pub run_ignored: RunIgnored,
    /// What a run that selects no test is.
    pub no_tests: NoTests,
    /// Overlaps of one key shorter than this are handovers.
    pub overlap_grace: Duration,
    /// What counts as a leak (`[leaks]`).
    pub leaks: LeakPolicy,
}

impl Config {
    /// Reads the manifest and merges the CLI over it, for `cargo hangcheck test`.
    pub fn resolve(args: &TestArgs) -> Result<Config, SetupError> {
        Config::resolve_for(args, true)
    }

    /// For `cargo hangcheck run`: the server alone, no test targets needed.
    pub fn resolve_live(server: &ServerArgs) -> Result<Config, SetupError> {
        let args = TestArgs { server: server.clone(), ..TestArgs::default() };
        Config::resolve_for(&args, false)
    }

    fn resolve_for(args: &TestArgs, with_tests: bool) -> Result<Config, SetupError> {
        let server_args = &args.server;
        let mut cmd = MetadataCommand::new();
        cmd.no_deps();
        if let Some(path) = &server_args.package.manifest_path {
            cmd.manifest_path(path);
        }
        let metadata = cmd.exec()?;
        let package = select_package(
            &metadata,
            server_args.package.package.as_deref(),
            server_args.package.manifest_path.as_deref(),
        )?;

        let workspace_table = table(&metadata.workspace_metadata, "[workspace.metadata.hangcheck]")?;
        let package_table = table(&package.metadata, "[package.metadata.hangcheck]")?;
        let file = merge(workspace_table, package_table);
        let server = file.server.unwrap_or_default();
        let leaks = file.leaks.unwrap_or_default();

        let bins: Vec<&str> =
            package.targets.iter().filter(|t| t.kind.contains(&TargetKind::Bin)).map(|t| t.name.as_str()).collect();
        let server_bin = match server_args.bin.clone().or(server.bin) {
            Some(bin) if bins.contains(&bin.as_str()) => bin,
            Some(bin) => {
                return Err(SetupError::Config(format!(
                    "package `{}` has no bin target `{bin}` (it has: {}); set server.bin in [package.metadata.hangcheck] or pass --bin",
                    package.name,
                    list_or_none(&bins)
                )))
            }
            None if bins.len() == 1 => bins[0].to_owned(),
            None => {
                return Err(SetupError::Config(format!(
                    "package `{}` has {} bin targets ({}); say which is the server with server.bin in [package.metadata.hangcheck] or --bin",
                    package.name,
                    bins.len(),
                    list_or_none(&bins)
                )))
            }
        };

        let test_kinds: Vec<&str> =
            package.targets.iter().filter(|t| t.kind.contains(&TargetKind::Test)).map(|t| t.name.as_str()).collect();
        let test_targets = if !args.tests.is_empty() { args.tests.clone() } else { file.tests.unwrap_or_default() };
        for t in &test_targets {
            if !test_kinds.contains(&t.as_str()) {
                return Err(SetupError::Config(format!(
                    "package `{}` has no test target `{t}` (it has: {})",
                    package.name,
                    list_or_none(&test_kinds)
                )));
            }
        }
        let test_targets =
            if test_targets.is_empty() { test_kinds.iter().map(|s| s.to_string()).collect() } else { test_targets };
        if test_targets.is_empty() && with_tests {
            return Err(SetupError::Config(format!(
                "package `{}` has no test targets: put the E2E tests in tests/*.rs",
                package.name
            )));
        }

        let mut server_env: Vec<(String, String)> = server.env.unwrap_or_default().into_iter().collect();
        for (k, v) in &server_args.server_env {
            server_env.retain(|(key, _)| key != k);
            server_env.push((k.clone(), v.clone()));
        }
        let (warmup_duration, mut warmup_tests) = match file.warmup {
            Some(WarmupKey::Duration(d)) => (Some(d), Vec::new()),
            Some(WarmupKey::Tests(names)) => (None, names),
            None => (None, Vec::new()),
        };
        if !args.warmup_tests.is_empty() {
            warmup_tests = args.warmup_tests.clone();
        }
        let rounds = crate::rounds::Plan::of(args);
        if let Some(seed) = rounds.chaos {
            if server_args.package.stable {
                return Err(SetupError::Config("--chaos works through tokio's poll hooks: drop --stable".into()));
            }
            server_env.push((hangcheck_runtime::protocol::CHAOS_ENV.to_owned(), seed.to_string()));
        }
        let mut ignore = leaks.ignore.unwrap_or_default();
        ignore.extend(args.ignore.iter().cloned());

        let target_dir = server_args
            .package
            .target_dir
            .clone()
            .unwrap_or_else(|| metadata.target_directory.clone().into_std_path_buf());
        let manifest_path = package.manifest_path.clone().into_std_path_buf();
        Ok(Config {
            package: package.name.to_string(),
            package_dir: manifest_path.parent().map(PathBuf::from).unwrap_or_default(),
            manifest_path,
            hangcheck_dir: target_dir.join("hangcheck"),
            build: server_args.package.clone(),
            runtime_dependency: package.dependencies.iter().any(|d| d.name == "hangcheck-runtime"),
            server_bin,
            server_args: if server_args.server_args.is_empty() {
                server.args.unwrap_or_default()
            } else {
                server_args.server_args.clone()
            },
            server_env,
            ready: server_args.ready.or(server.ready).unwrap_or(Ready::Announce),
            test_targets,
            filters: args.filters.clone(),
            exact: args.exact,
            partition: args.partition,
            rounds,
            stress: args.stress.unwrap_or(1),
            baseline: match &args.baseline {
                Some(path) => Some(crate::standing::Baseline::load(path).map_err(SetupError::Config)?),
                None => None,
            },
            fail_on: args.fail_on.unwrap_or_default(),
            test_timeout: positive(duration(
                args.test_timeout,
                file.test_timeout,
                "test-timeout",
                Duration::from_secs(60),
            )?)?,
            startup_timeout: positive(duration(
                server_args.startup_timeout,
                file.startup_timeout,
                "startup-timeout",
                Duration::from_secs(30),
            )?)?,
            shutdown_grace: positive(duration(
                server_args.shutdown_grace,
                file.shutdown_grace,
                "shutdown-grace",
                Duration::from_secs(5),
            )?)?,
            settle: positive(duration(args.settle, file.settle, "settle", Duration::from_secs(1))?)?,
            baseline_settle: any(duration(
                args.baseline_settle,
                file.baseline_settle,
                "baseline-settle",
                Duration::from_millis(250),
            )?),
            warmup: any(duration(args.warmup, warmup_duration, "warmup", Duration::ZERO)?),
            warmup_tests,
            stall_threshold: any(duration(
                server_args.stall_threshold,
                file.stall_threshold,
                "stall-threshold",
                Duration::from_millis(250),
            )?),
            stall_verdict: server_args.stall_verdict.or(file.stall_verdict).unwrap_or(StallVerdict::Fail),
            stacks_budget: StacksBudget {
                deadline_ms: any(duration(
                    server_args.stacks_budget,
                    file.stacks_budget,
                    "stacks-budget",
                    Duration::from_millis(StacksBudget::DEFAULT.deadline_ms),
                )?)
                .as_millis() as u64,
                ..StacksBudget::DEFAULT
            },
            poll_stats: server_args.poll_stats || file.poll_stats.unwrap_or(false),
            recorder_events: server_args
                .recorder_events
                .or(file.recorder_events)
                .unwrap_or(hangcheck_runtime::protocol::RECORDER_DEFAULT_EVENTS),
            fail_fast: args.fail_fast || file.fail_fast.unwrap_or(false),
            run_ignored: args.run_ignored,
            no_tests: args.no_tests.or(file.no_tests).unwrap_or(NoTests::Fail),
            overlap_grace: any(duration(
                server_args.overlap_grace,
                file.overlap_grace,
                "overlap-grace",
                Duration::from_millis(100),
            )?),
            leaks: LeakPolicy { allow_growth: args.allow_growth.or(leaks.allow_growth).unwrap_or(0), ignore },
        })
    }
}

/// `<target-dir>/hangcheck` of the workspace at `manifest_path` (or the current one).
pub fn hangcheck_dir(
    manifest_path: Option<&std::path::Path>,
    target_dir: Option<&std::path::Path>,
) -> Result<PathBuf, SetupError> {
    if let Some(dir) = target_dir {
        return Ok(dir.join("hangcheck"));
    }
    let mut cmd = MetadataCommand::new();
    cmd.no_deps();
    if let Some(path) = manifest_path {
        cmd.manifest_path(path);
    }
    Ok(cmd.exec()?.target_directory.into_std_path_buf().join("hangcheck"))
}

/// The package to run, as cargo picks it: `-p`, else the package whose manifest is
/// `--manifest-path` (or the nearest `Cargo.toml` above the current directory), else the
/// one member configured for hangcheck.
fn select_package<'m>(
    metadata: &'m Metadata,
    spec: Option<&str>,
    manifest_path: Option<&std::path::Path>,
) -> Result<&'m Package, SetupError> {
    let members: Vec<&Package> = metadata.workspace_packages();
    if let Some(spec) = spec {
        return members.into_iter().find(|p| p.name.as_str() == spec).ok_or_else(|| {
            SetupError::Config(format!(
                "package `{spec}` is not a member of the workspace at {}",
                metadata.workspace_root
            ))
        });
    }
    let manifest = match manifest_path {
        Some(path) => Some(path.to_owned()),
        None => std::env::current_dir()
            .ok()
            .and_then(|dir| dir.ancestors().map(|d| d.join("Cargo.toml")).find(|m| m.is_file())),
    };
    if let Some(manifest) = manifest.and_then(|m| m.canonicalize().ok()) {
        let own = members.iter().find(|p| p.manifest_path.as_std_path().canonicalize().is_ok_and(|m| m == manifest));
        if let Some(own) = own {
            return Ok(own);
        }
    }
    let configured: Vec<&Package> = members.iter().copied().filter(|p| p.metadata.get("hangcheck").is_some()).collect();
    match configured.as_slice() {
        [one] => Ok(one),
        _ => {
            let names: Vec<&str> = configured.iter().map(|p| p.name.as_str()).collect();
            Err(SetupError::Config(format!(
                "the workspace has {} packages with [package.metadata.hangcheck] ({}); choose one with -p",
                names.len(),
                list_or_none(&names)
            )))
        }
    }
}

fn table(value: &serde_json::Value, name: &str) -> Result<FileConfig, SetupError> {
    match value.get("hangcheck") {
        None | Some(serde_json::Value::Null) => Ok(FileConfig::default()),
        Some(v) => FileConfig::deserialize(v).map_err(|e| SetupError::Config(format!("invalid {name}: {e}"))),
    }
}

/// The package's keys win over the workspace's, one key at a time.
fn merge(ws: FileConfig, pkg: FileConfig) -> FileConfig {
    let server = match (ws.server, pkg.server) {
        (Some(w), Some(p)) => Some(ServerTable {
            bin: p.bin.or(w.bin),
            args: p.args.or(w.args),
            env: p.env.or(w.env),
            ready: p.ready.or(w.ready),
        }),
        (w, p) => p.or(w),
    };
    let leaks = match (ws.leaks, pkg.leaks) {
        (Some(w), Some(p)) => {
            Some(LeaksTable { allow_growth: p.allow_growth.or(w.allow_growth), ignore: p.ignore.or(w.ignore) })
        }
        (w, p) => p.or(w),
    };
    FileConfig {
        server,
        tests: pkg.tests.or(ws.tests),
        test_timeout: pkg.test_timeout.or(ws.test_timeout),
        startup_timeout: pkg.startup_timeout.or(ws.startup_timeout),
        shutdown_grace: pkg.shutdown_grace.or(ws.shutdown_grace),
        settle: pkg.settle.or(ws.settle),
        baseline_settle: pkg.baseline_settle.or(ws.baseline_settle),
        warmup: pkg.warmup.or(ws.warmup),
        stall_threshold: pkg.stall_threshold.or(ws.stall_threshold),
        stacks_budget: pkg.stacks_budget.or(ws.stacks_budget),
        stall_verdict: pkg.stall_verdict.or(ws.stall_verdict),
        overlap_grace: pkg.overlap_grace.or(ws.overlap_grace),
        poll_stats: pkg.poll_stats.or(ws.poll_stats),
        recorder_events: pkg.recorder_events.or(ws.recorder_events),
        fail_fast: pkg.fail_fast.or(ws.fail_fast),
        no_tests: pkg.no_tests.or(ws.no_tests),
        leaks,
    }
}

/// A duration resolved from its flag, its key or the default, with where it came from.
struct Resolved<'a> {
    value: Duration,
    /// `--test-timeout` or `test-timeout in [package.metadata.hangcheck]`; `None`: the
    /// default.
    from: Option<String>,
    name: &'a str,
}

fn duration<'a>(
    flag: Option<Duration>,
    key: Option<String>,
    name: &'a str,
    default: Duration,
) -> Result<Resolved<'a>, SetupError> {
    if let Some(value) = flag {
        return Ok(Resolved { value, from: Some(format!("--{name}")), name });
    }
    match key {
        None => Ok(Resolved { value: default, from: None, name }),
        Some(s) => parse_duration(&s)
            .map(|value| Resolved { value, from: Some(format!("`{name}` in [package.metadata.hangcheck]")), name })
            .map_err(|e| SetupError::Config(format!("invalid `{name}` in [package.metadata.hangcheck]: {e}"))),
    }
}

/// A duration that only means something above zero: a zero timeout would fail every
/// test at once, a zero grace SIGKILL the server unasked, a zero settle judge the
/// counts before they come down.
fn positive(d: Resolved<'_>) -> Result<Duration, SetupError> {
    if d.value.is_zero() {
        let from = d.from.unwrap_or_else(|| d.name.to_owned());
        return Err(SetupError::Config(format!("{from} must be longer than zero (`{}`)", d.name)));
    }
    Ok(d.value)
}

/// A duration where zero has a meaning of its own (`stall-threshold = "0s"`: off).
fn any(d: Resolved<'_>) -> Duration {
    d.value
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<FileConfig, SetupError> {
        table(&serde_json::json!({ "hangcheck": json }), "[package.metadata.hangcheck]")
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(serde_json::json!({"test-timout": "3s"})).unwrap_err().to_string();
        assert!(err.contains("test-timout"), "{err}");
    }

    #[test]
    fn package_keys_win_over_workspace_keys_one_by_one() {
        let ws = parse(serde_json::json!({"settle": "2s", "server": {"bin": "a", "args": ["x"]}})).unwrap();
        let pkg = parse(serde_json::json!({"server": {"bin": "b"}})).unwrap();
        let merged = merge(ws, pkg);
        let server = merged.server.unwrap();
        assert_eq!(server.bin.as_deref(), Some("b"));
        assert_eq!(server.args, Some(vec!["x".to_owned()]));
        assert_eq!(merged.settle.as_deref(), Some("2s"));
    }

    #[test]
    fn malformed_duration_names_the_key() {
        let err = duration(None, Some("soon".into()), "test-timeout", Duration::ZERO).err().unwrap().to_string();
        assert!(err.contains("test-timeout") && err.contains("soon"), "{err}");
    }

    #[test]
    fn zero_durations_are_errors_naming_the_key_except_where_zero_means_off() {
        let key = duration(None, Some("0s".into()), "settle", Duration::from_secs(1)).ok().unwrap();
        let err = positive(key).unwrap_err().to_string();
        assert!(err.contains("`settle` in [package.metadata.hangcheck] must be longer than zero"), "{err}");
        let flag = duration(Some(Duration::ZERO), None, "test-timeout", Duration::from_secs(1)).ok().unwrap();
        let err = positive(flag).unwrap_err().to_string();
        assert!(err.starts_with("--test-timeout must be longer than zero"), "{err}");
        let off = duration(None, Some("0s".into()), "stall-threshold", Duration::from_millis(250)).ok().unwrap();
        assert_eq!(any(off), Duration::ZERO);
    }
}
