//! Builds the server and the E2E test binaries with cargo, in hangcheck's own target
//! directory, and finds the executables in cargo's JSON messages.
//!
//! By default the build passes `--cfg tokio_unstable`, which lets the runtime install
//! tokio's task hooks, and turns on hangcheck-runtime's `taskdump` feature (async task
//! stacks). Changing RUSTFLAGS rebuilds every crate, so hangcheck builds in
//! `<target-dir>/hangcheck/build` (`build-stable` for `--stable`) and the user's own
//! builds stay untouched.
//!
//! Stack frames need line tables to say `file:line`. When the profile hangcheck builds
//! with has no debug info (`release` by default, or `debug = false`), the build adds
//! `CARGO_PROFILE_<NAME>_DEBUG=line-tables-only`; being in its own target directory, that
//! changes nothing for the user's builds.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cargo_metadata::{Artifact, Message, TargetKind};

use crate::config::Config;
use crate::errors::SetupError;
use crate::process::{GroupChild, Wait, INTERRUPTED_GRACE};
use crate::rundir::Evidence;
use crate::signal::Signals;

/// The executables of a run.
#[derive(Debug, Clone)]
pub struct Built {
    /// The server binary.
    pub server: PathBuf,
    /// Each test target's test binary, in the configured order.
    pub tests: Vec<(String, PathBuf)>,
    /// Whether the build passed `--cfg tokio_unstable`.
    pub tokio_unstable: bool,
}

/// Builds the server and the test targets. One cargo invocation does both when there are
/// test targets: building integration tests makes cargo build the package's bins too, and
/// every cargo start costs a noticeable part of a short suite's wall time.
pub fn build(config: &Config, signals: &Signals) -> Result<Built, SetupError> {
    let tokio_unstable = !config.build.stable;
    let artifacts = if config.test_targets.is_empty() {
        let mut build = cargo(config, "build", tokio_unstable);
        build.args(["--bin", &config.server_bin]);
        run(build, &format!("building the server `{}`", config.server_bin), signals)?
    } else {
        let mut test = cargo(config, "test", tokio_unstable);
        test.arg("--no-run");
        for t in &config.test_targets {
            test.args(["--test", t]);
        }
        run(test, &format!("building the server `{}` and the tests", config.server_bin), signals)?
    };
    let server = artifacts
        .iter()
        .find(|a| !a.profile.test && a.target.name == config.server_bin && a.target.kind.contains(&TargetKind::Bin))
        .and_then(|a| a.executable.clone())
        .ok_or_else(|| SetupError::Config(format!("cargo built no executable for bin `{}`", config.server_bin)))?;
    let mut tests = Vec::new();
    for name in &config.test_targets {
        let exe = artifacts
            .iter()
            .find(|a| a.profile.test && &a.target.name == name && a.target.kind.contains(&TargetKind::Test))
            .and_then(|a| a.executable.clone())
            .ok_or_else(|| SetupError::Config(format!("cargo built no executable for test target `{name}`")))?;
        tests.push((name.clone(), exe.into_std_path_buf()));
    }
    Ok(Built { server: server.into_std_path_buf(), tests, tokio_unstable })
}

fn cargo(config: &Config, verb: &str, tokio_unstable: bool) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg(verb)
        .arg("--manifest-path")
        .arg(&config.manifest_path)
        .args(["--package", &config.package, "--message-format=json-render-diagnostics"])
        .arg("--target-dir")
        // Different RUSTFLAGS would make the two modes rebuild over each other.
        .arg(config.hangcheck_dir.join(if tokio_unstable { "build" } else { "build-stable" }));
    let b = &config.build;
    if b.release {
        cmd.arg("--release");
    }
    let mut features = b.features.clone();
    if tokio_unstable && config.runtime_dependency {
        // Async task stacks in every stack file; tokio allows them only with
        // tokio_unstable, which this build has.
        features.push("hangcheck-runtime/taskdump".to_owned());
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    if b.all_features {
        cmd.arg("--all-features");
    }
    if b.no_default_features {
        cmd.arg("--no-default-features");
    }
    if tokio_unstable {
        // CARGO_ENCODED_RUSTFLAGS wins over RUSTFLAGS in cargo; extend whichever is used.
        if let Ok(encoded) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
            let sep = if encoded.is_empty() { "" } else { "\x1f" };
            cmd.env("CARGO_ENCODED_RUSTFLAGS", format!("{encoded}{sep}--cfg\x1ftokio_unstable"));
        } else {
            let flags = std::env::var("RUSTFLAGS").unwrap_or_default();
            cmd.env("RUSTFLAGS", format!("{flags} --cfg tokio_unstable").trim_start());
        }
    }
    if let Some(var) = line_tables_needed(config) {
        cmd.env(var, "line-tables-only");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    cmd
}

/// Runs cargo in its own process group and reads its messages on a helper thread, so
/// that a Ctrl-C or SIGTERM to the runner stops the build at once (cargo and whatever it
/// runs get SIGTERM, then SIGKILL) instead of waiting for it to finish.
fn run(mut cmd: Command, what: &str, signals: &Signals) -> Result<Vec<Artifact>, SetupError> {
    let mut child = GroupChild::spawn(&mut cmd).map_err(SetupError::io(format!("cannot run cargo for {what}")))?;
    let stdout = child.take_stdout();
    let reader = std::thread::Builder::new()
        .name("cargo-messages".into())
        .spawn(move || {
            let mut artifacts = Vec::new();
            for message in stdout.into_iter().flat_map(|out| Message::parse_stream(BufReader::new(out))).flatten() {
                if let Message::CompilerArtifact(a) = message {
                    artifacts.push(a);
                }
            }
            artifacts
        })
        .map_err(SetupError::io("cannot start a thread to read cargo's messages"))?;
    // A build has no time limit of its own: a cold one may take many minutes.
    let status = match child.wait_until(Instant::now() + BUILD_CAP, signals) {
        Wait::Exited(status) => status,
        Wait::Interrupted => {
            child.terminate(Evidence::none("a build holds no evidence"), INTERRUPTED_GRACE);
            return Err(SetupError::Interrupted);
        }
        Wait::TimedOut => {
            child.terminate(Evidence::none("a build holds no evidence"), INTERRUPTED_GRACE);
            return Err(SetupError::Build { what: what.to_owned(), status: format!("no end after {BUILD_CAP:?}") });
        }
    };
    // cargo has exited, so its stdout is closed and the reader ends.
    let artifacts = reader.join().unwrap_or_default();
    if signals.interrupted() {
        // A Ctrl-C at the terminal reaches cargo too; its failure is the interrupt's.
        return Err(SetupError::Interrupted);
    }
    if !status.success() {
        return Err(SetupError::Build { what: what.to_owned(), status: crate::process::describe(status) });
    }
    Ok(artifacts)
}

/// The longest a build may take before it is a setup error rather than a wait forever.
const BUILD_CAP: Duration = Duration::from_secs(3600);

/// The `CARGO_PROFILE_<NAME>_DEBUG` variable to set when the profile of this build has no
/// debug info, so that stack frames keep their file and line; `None` when it has some, or
/// when the user already set the variable.
fn line_tables_needed(config: &Config) -> Option<String> {
    let profile = if config.build.release { "release" } else { "dev" };
    let var = format!("CARGO_PROFILE_{}_DEBUG", profile.to_uppercase());
    if std::env::var_os(&var).is_some() {
        return None;
    }
    let manifest = workspace_manifest(&config.manifest_path)?;
    let debug = manifest.get("profile").and_then(|p| p.get(profile)).and_then(|p| p.get("debug"));
    no_debug_info(profile, debug).then_some(var)
}

/// Whether a profile's `debug` setting (absent: cargo's default for it) means no debug info.
fn no_debug_info(profile: &str, debug: Option<&toml::Value>) -> bool {
    match debug {
        None => profile == "release",
        Some(toml::Value::Boolean(b)) => !b,
        Some(toml::Value::Integer(n)) => *n == 0,
        Some(toml::Value::String(s)) => s == "none",
        Some(_) => false,
    }
}

/// The manifest whose `[profile]` tables apply: the workspace root's.
fn workspace_manifest(package_manifest: &Path) -> Option<toml::Table> {
    read_manifest(&workspace_root(package_manifest).join("Cargo.toml"))
}

fn read_manifest(path: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse().ok()
}

/// The workspace's root directory, found as cargo finds it: walking up from the package's
/// manifest to one with a `[workspace]` table; the package's own directory when none has.
pub fn workspace_root(package_manifest: &Path) -> PathBuf {
    let package_dir = package_manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    package_dir
        .ancestors()
        .find(|d| read_manifest(&d.join("Cargo.toml")).is_some_and(|m| m.contains_key("workspace")))
        .map(Path::to_path_buf)
        .unwrap_or(package_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_and_debug_false_have_no_line_tables_unless_asked() {
        assert!(no_debug_info("release", None));
        assert!(!no_debug_info("dev", None));
        assert!(no_debug_info("dev", Some(&toml::Value::Boolean(false))));
        assert!(no_debug_info("dev", Some(&toml::Value::Integer(0))));
        assert!(no_debug_info("release", Some(&toml::Value::String("none".into()))));
        assert!(!no_debug_info("release", Some(&toml::Value::String("line-tables-only".into()))));
        assert!(!no_debug_info("release", Some(&toml::Value::Boolean(true))));
    }

    #[test]
    fn the_workspace_root_manifest_holds_the_profiles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Cargo.toml"), "[workspace]\n[profile.dev]\ndebug = false\n").unwrap();
        std::fs::create_dir(dir.path().join("member")).unwrap();
        let member = dir.path().join("member").join("Cargo.toml");
        std::fs::write(&member, "[package]\nname = \"m\"\n").unwrap();
        let root = workspace_manifest(&member).unwrap();
        assert_eq!(root["profile"]["dev"]["debug"], toml::Value::Boolean(false));
    }
}
