//! Ctrl-C, SIGTERM and SIGHUP become a flag that every wait of the run checks.
//!
//! The children run in their own process groups, so a Ctrl-C at the terminal reaches only
//! the runner; the runner then tears down what it started, in order, with evidence first.
//! signal-hook sets the flag from the handler; no other code runs there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once an interrupting signal has arrived.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Registers the handlers. If that fails the run goes on; only Ctrl-C handling is lost.
    pub fn install() -> Interrupt {
        let flag = Interrupt::default();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
            if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&flag.0)) {
                eprintln!("warning: cannot handle signal {sig}: {e}");
            }
        }
        flag
    }

    /// Whether the run should stop.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
