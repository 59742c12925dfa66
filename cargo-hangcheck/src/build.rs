//! Builds the server and the E2E test binaries with cargo, in hangcheck's own target
//! directory, and finds the executables in cargo's JSON messages.
//!
//! By default the build passes `--cfg tokio_unstable`, which lets the runtime install
//! tokio's task hooks, and turns on hangcheck-runtime's `taskdump` feature (async task
//! stacks). Changing RUSTFLAGS rebuilds every crate, so hangcheck builds in
//! `<target-dir>/hangcheck/build` (`build-stable` for `--stable`) and the user's own
//! builds stay untouched.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use cargo_metadata::{Artifact, Message, TargetKind};

use crate::config::Config;
use crate::errors::SetupError;

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
pub fn build(config: &Config) -> Result<Built, SetupError> {
    let tokio_unstable = !config.build.stable;
    let artifacts = if config.test_targets.is_empty() {
        let mut build = cargo(config, "build", tokio_unstable);
        build.args(["--bin", &config.server_bin]);
        run(build, &format!("building the server `{}`", config.server_bin))?
    } else {
        let mut test = cargo(config, "test", tokio_unstable);
        test.arg("--no-run");
        for t in &config.test_targets {
            test.args(["--test", t]);
        }
        run(test, &format!("building the server `{}` and the tests", config.server_bin))?
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
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<Vec<Artifact>, SetupError> {
    let mut child = cmd.spawn().map_err(SetupError::io(format!("cannot run cargo for {what}")))?;
    let mut artifacts = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for message in Message::parse_stream(BufReader::new(stdout)).flatten() {
            if let Message::CompilerArtifact(a) = message {
                artifacts.push(a);
            }
        }
    }
    let status = child.wait().map_err(SetupError::io(format!("waiting for cargo ({what})")))?;
    if !status.success() {
        return Err(SetupError::Build { what: what.to_owned(), status: crate::process::describe(status) });
    }
    Ok(artifacts)
}
