//! Signals to the runner become flags that every wait of the run checks.
//!
//! - Ctrl-C, SIGTERM, SIGHUP: stop. The children run in their own process groups, so a
//!   Ctrl-C at the terminal reaches only the runner, which then tears down what it
//!   started, in order, evidence first.
//! - SIGUSR1: write the server's stacks now, without stopping anything
//!   (`cargo hangcheck stacks` sends it).
//! - SIGUSR2: write a snapshot with deltas now (`cargo hangcheck snapshot`).
//!
//! signal-hook sets the flags from the handler; no other code runs there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The flags the runner's signals set.
#[derive(Clone, Default)]
pub struct Signals {
    interrupted: Arc<AtomicBool>,
    stacks_requested: Arc<AtomicBool>,
    snapshot_requested: Arc<AtomicBool>,
}

impl Signals {
    /// Registers the handlers. If that fails the run goes on; only that signal's handling
    /// is lost.
    pub fn install() -> Signals {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
        let signals = Signals::default();
        let flags = [
            (SIGINT, &signals.interrupted),
            (SIGTERM, &signals.interrupted),
            (SIGHUP, &signals.interrupted),
            (SIGUSR1, &signals.stacks_requested),
            (SIGUSR2, &signals.snapshot_requested),
        ];
        for (sig, flag) in flags {
            if let Err(e) = signal_hook::flag::register(sig, Arc::clone(flag)) {
                eprintln!("warning: cannot handle signal {sig}: {e}");
            }
        }
        signals
    }

    /// Whether the run should stop.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Whether stacks were asked for since the last call (and clears the request).
    pub fn take_stacks_request(&self) -> bool {
        self.stacks_requested.swap(false, Ordering::Relaxed)
    }

    /// Whether a snapshot was asked for since the last call (and clears the request).
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_requested.swap(false, Ordering::Relaxed)
    }
}
