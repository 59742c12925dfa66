//! Signals to the runner become counters and flags that every wait of the run checks.
//!
//! - Ctrl-C, SIGTERM, SIGHUP: stop. The children run in their own process groups, so a
//!   Ctrl-C at the terminal reaches only the runner, which then tears down what it
//!   started, in order, evidence first, within about a second. A second one skips what
//!   is left of a grace period.
//! - SIGUSR1: write the server's stacks now, without stopping anything
//!   (`cargo hangcheck stacks` sends it).
//! - SIGUSR2: write a snapshot with deltas now (`cargo hangcheck snapshot`).
//!
//! signal-hook's iterator receives the signals on a thread of its own, which counts
//! them; no code of ours runs in a signal handler.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The counters and flags the runner's signals set.
#[derive(Clone, Default)]
pub struct Signals {
    /// Stop requests (Ctrl-C, SIGTERM, SIGHUP) received so far.
    interrupts: Arc<AtomicU64>,
    /// Requests up to this count do not count as interrupting: see [`Signals::since_now`].
    seen: u64,
    stacks_requested: Arc<AtomicBool>,
    snapshot_requested: Arc<AtomicBool>,
}

static INSTALLED: OnceLock<Signals> = OnceLock::new();

impl Signals {
    /// Registers the handlers (once per process). If that fails the run goes on; only
    /// the handling of signals is lost.
    pub fn install() -> Signals {
        INSTALLED.get_or_init(register).clone()
    }

    /// The signals installed for this run, or flags no signal sets when none are.
    pub fn installed() -> Signals {
        INSTALLED.get().cloned().unwrap_or_default()
    }

    /// The same signals, counting only stop requests that arrive from now on: for a wait
    /// that began after the run was already interrupted (the evidence of a shutdown
    /// taken after Ctrl-C) and that a further Ctrl-C should cut short.
    pub fn since_now(&self) -> Signals {
        Signals { seen: self.interrupts(), ..self.clone() }
    }

    /// Whether the run should stop.
    pub fn interrupted(&self) -> bool {
        self.interrupts() > self.seen
    }

    /// How many stop requests have arrived.
    pub fn interrupts(&self) -> u64 {
        self.interrupts.load(Ordering::Relaxed)
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

fn register() -> Signals {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let signals = Signals::default();
    let mut incoming = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: cannot handle signals: {e}");
            return signals;
        }
    };
    let flags = signals.clone();
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in incoming.forever() {
            match sig {
                SIGUSR1 => flags.stacks_requested.store(true, Ordering::Relaxed),
                SIGUSR2 => flags.snapshot_requested.store(true, Ordering::Relaxed),
                _ => {
                    flags.interrupts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("warning: cannot start the signal thread: {e}");
    }
    signals
}
