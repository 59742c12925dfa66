//! The server's arguments and environment under a plain `cargo test`, read from the same
//! `[package.metadata.hangcheck.server]` table that `cargo hangcheck test` reads (with
//! the workspace's `[workspace.metadata.hangcheck.server]` under it, key by key), so that
//! a suite needing `args = ["--config", "test.toml"]` runs the same way with or without
//! the runner.
//!
//! cargo gives a test process `CARGO_MANIFEST_DIR`; without it (a test binary run by
//! hand) there is nothing to read and the server starts with no extras.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the metadata adds to the server's command.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ServerSetup {
    pub(super) args: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
}

/// The setup for the package cargo is testing; an error names the file and the key.
pub(super) fn server_setup() -> Result<ServerSetup, String> {
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) => setup_of(&PathBuf::from(dir)),
        None => Ok(ServerSetup::default()),
    }
}

/// The setup for the package in `dir`.
fn setup_of(dir: &Path) -> Result<ServerSetup, String> {
    let manifest = dir.join("Cargo.toml");
    let package = read(&manifest)?;
    let workspace = match package.get("workspace") {
        Some(_) => None,
        None => dir.ancestors().skip(1).map(|d| d.join("Cargo.toml")).find_map(|m| {
            let table = read(&m).ok()?;
            table.contains_key("workspace").then_some((m, table))
        }),
    };
    let mut setup = ServerSetup::default();
    // The package's own keys win, each on its own, as in `cargo hangcheck test`.
    let tables = [(manifest.as_path(), &package, "package")]
        .into_iter()
        .chain(workspace.as_ref().map(|(m, t)| (m.as_path(), t, "workspace")));
    let (mut have_args, mut have_env) = (false, false);
    for (path, table, section) in tables {
        let Some(server) = table
            .get(section)
            .and_then(|s| s.get("metadata"))
            .and_then(|m| m.get("hangcheck"))
            .and_then(|h| h.get("server"))
        else {
            continue;
        };
        let key = |name: &str| format!("[{section}.metadata.hangcheck.server] {name} in {}", path.display());
        if let (false, Some(args)) = (have_args, server.get("args")) {
            setup.args = args.clone().try_into().map_err(|e| format!("{}: {e}", key("args")))?;
            have_args = true;
        }
        if let (false, Some(env)) = (have_env, server.get("env")) {
            setup.env = env.clone().try_into().map_err(|e| format!("{}: {e}", key("env")))?;
            have_env = true;
        }
    }
    Ok(setup)
}

fn read(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.parse().map_err(|e| format!("cannot parse {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packages_keys_win_each_on_its_own() {
        let dir = std::env::temp_dir().join(format!("hangcheck-metadata-{}", std::process::id()));
        let member = dir.join("server");
        std::fs::create_dir_all(&member).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\nmembers = [\"server\"]\n[workspace.metadata.hangcheck.server]\n\
             args = [\"--from-workspace\"]\nenv = { MODE = \"ws\" }\n",
        )
        .unwrap();
        std::fs::write(
            member.join("Cargo.toml"),
            "[package]\nname = \"server\"\n[package.metadata.hangcheck.server]\nenv = { MODE = \"test\" }\n",
        )
        .unwrap();
        let setup = setup_of(&member);
        std::fs::write(
            member.join("Cargo.toml"),
            "[package]\nname = \"server\"\n[package.metadata.hangcheck]\nserver = { args = 3 }\n",
        )
        .unwrap();
        let bad = setup_of(&member);
        std::fs::remove_dir_all(&dir).unwrap();
        let setup = setup.unwrap();
        assert_eq!(setup.args, vec!["--from-workspace".to_owned()]);
        assert_eq!(setup.env.get("MODE").map(String::as_str), Some("test"));
        assert!(bad.unwrap_err().contains("[package.metadata.hangcheck.server] args in"));
    }
}
