//! `cargo hangcheck`: runs a tokio server's end-to-end tests one at a time, asks the
//! server after every test what it holds, and names what leaks and what hangs.
//!
//! The modules follow the steps of a run (docs/design.md): [`config`] → [`build`] →
//! [`server`] (with [`link`], the agent connection) → [`suite`] (and [`harness`], a
//! test target's trials in one process) → [`settle`] →
//! [`analysis`] (over the [`measures`]) → [`report`], with [`process`] owning every
//! child's lifecycle and [`rundir`] every artifact. [`run`] orchestrates and says what
//! happens as [`event`]s; every output (terminal, report.json, JUnit, JSON lines) is a
//! reporter that folds them. [`stacks`] fetches the server's stacks (agent, or gdb from outside),
//! [`ondemand`] serves stacks and snapshots to a second terminal while a run is in
//! progress, and [`live`] is `cargo hangcheck run`, the server driven by hand.
//! [`partition`] picks a CI shard's tests and [`merge`] joins the shards' reports;
//! [`standing`] judges leaks against a baseline report, and [`diff`] compares two.
//! [`rounds`] repeats and shuffles the suite (`--repeat`, `--until-fail`, `--shuffle`).

mod analysis;
mod build;
mod cli;
mod config;
mod copies;
mod culprit;
mod diff;
mod errors;
mod event;
mod exit;
mod harness;
mod leftovers;
mod libtest;
mod link;
mod live;
mod measures;
mod merge;
mod ondemand;
mod partition;
mod process;
mod recorded;
mod report;
mod rounds;
mod run;
mod rundir;
mod server;
mod settle;
mod signal;
mod stackfile;
mod stacks;
mod standing;
mod suite;
mod watched;

use clap::Parser;
use std::panic::AssertUnwindSafe;

use crate::cli::{CargoCli, ColorWhen, Command};

fn main() {
    let CargoCli::Hangcheck(args) = match CargoCli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    match args.color {
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
        ColorWhen::Auto => {}
    }
    // A panic is a bug in hangcheck; unwinding drops every child handle, which kills the
    // child's process group, so even then nothing is left running.
    let code = std::panic::catch_unwind(AssertUnwindSafe(|| match &args.command {
        Command::Test(test) => run::test(test),
        Command::Run(server) => live::run(server),
        Command::Stacks(locate) => ondemand::command(locate, ondemand::Request::Stacks),
        Command::Snapshot(locate) => ondemand::command(locate, ondemand::Request::Snapshot),
        Command::Merge(merge) => merge::command(merge),
        Command::Diff(diff) => diff::command(diff),
    }))
    .unwrap_or(exit::INTERNAL);
    std::process::exit(code);
}
