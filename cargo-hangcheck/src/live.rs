//! `cargo hangcheck run`: the server under the agent with no tests, for a developer who
//! drives it by hand (a browser, curl, a Playwright script) and wants to watch what
//! accumulates.
//!
//! Each Enter on the terminal (or `cargo hangcheck snapshot` from another one) prints a
//! snapshot with the deltas since the previous one and the time between them; stalls are
//! printed as they happen; `cargo hangcheck stacks` works as during a test run. Ctrl-C
//! stops the server the same way a test run does: SIGTERM, the grace period, and evidence
//! on disk before a SIGKILL.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::Duration;

use crate::build;
use crate::cli::ServerArgs;
use crate::config::Config;
use crate::errors::SetupError;
use crate::exit;
use crate::ondemand;
use crate::report::terminal;
use crate::rundir::RunDir;
use crate::server::{Server, Stop};
use crate::settle::SNAPSHOT_TIMEOUT;
use crate::signal::Signals;

/// How often the loop looks at the terminal, the signals and the server.
const TICK: Duration = Duration::from_millis(50);

/// Runs `cargo hangcheck run` and returns the exit code.
pub fn run(args: &ServerArgs) -> i32 {
    let signals = Signals::install();
    crate::leftovers::become_subreaper();
    match live(args, &signals) {
        Ok(code) => code,
        Err(e) => {
            terminal::setup_error(&e);
            e.exit_code()
        }
    }
}

fn live(args: &ServerArgs, signals: &Signals) -> Result<i32, SetupError> {
    // The same build as `cargo hangcheck test` (`cargo test --no-run` over the test
    // targets): a plain `cargo build` resolves features without the dev-dependencies and
    // would rebuild every crate whose features differ, then `test` would rebuild them back.
    let config = Config::resolve_live(args)?;
    terminal::status("Building", format!("{} (server `{}`)", config.package, config.server_bin));
    let built = build::build(&config, signals)?;
    let run_dir = RunDir::create(&config.hangcheck_dir.join("runs"))
        .map_err(SetupError::io("cannot create the run directory"))?;
    let _marker = ondemand::announce_runner(&run_dir, &config.package);
    let mut server = Server::start(&config, &built, &run_dir, signals, "server.log")?;
    terminal::status("Ready", format!("pid {}, run directory {}", server.child.pid(), run_dir.path().display()));
    for (name, value) in server.test_env()? {
        println!("{name}={value}");
    }
    let first = server.link.snapshot(SNAPSHOT_TIMEOUT);
    let mut previous =
        first.map_err(|e| server.failure(format!("the agent did not answer the first snapshot: {e}")))?;
    terminal::status(
        "Watching",
        "press Enter for a snapshot with the deltas since the last one (or run `cargo hangcheck snapshot` \
         elsewhere); `cargo hangcheck stacks` for stacks; Ctrl-C to stop",
    );

    let enter = stdin_lines();
    let mut code = exit::OK;
    loop {
        if signals.interrupted() {
            break;
        }
        if let Some(status) = server.exit_status() {
            terminal::error(format!("the server exited with {}", crate::process::describe(status)), &[]);
            code = exit::SETUP;
            break;
        }
        let asked = match enter.recv_timeout(TICK) {
            Ok(()) => true,
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => false,
        };
        if asked || signals.take_snapshot_request() {
            ondemand::serve_snapshot(&mut server.link, &mut previous, &run_dir);
        }
        if signals.take_stacks_request() {
            ondemand::serve_stacks(&mut server.link, server.child.pid(), &run_dir);
        }
        for (stall, file, _) in server.take_events().stalls {
            terminal::warn(format!(
                "stall: worker {} stuck in one poll for {} ms; stack in {}",
                stall.tid,
                stall.stuck_ms,
                file.map_or("(not written)".to_owned(), |f| f.display().to_string())
            ));
        }
    }

    terminal::status("Stopping", "the server (SIGTERM)");
    let stop = server.stop(config.shutdown_grace, |link, pid| {
        crate::stacks::evidence(link, pid, &run_dir, "shutdown", |s, _| crate::stacks::summarize_all(s, "")).evidence
    });
    if stop == Stop::Hung {
        terminal::error(
            "shutdown hang: the server did not exit within the grace period; its stacks are in shutdown.stacks.txt",
            &[],
        );
        code = exit::HANG;
    }
    let found = crate::leftovers::find(&[], |_| true);
    for l in crate::leftovers::end(found, "the server", &run_dir, "end") {
        terminal::warn(format!("LEFTOVER process {} `{}` started by {}: {}", l.pid, l.command, l.started_by, l.ended));
    }
    Ok(code)
}

/// A line from the terminal, read on its own thread so that the loop never blocks on it.
/// At end of input the thread ends and no more snapshots come from Enter.
fn stdin_lines() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let _ = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() || tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}
