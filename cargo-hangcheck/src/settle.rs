//! Settling after a test: goleak's lesson, judge what is left, not what is still finishing.
//!
//! After a test the runner re-snapshots until no measure is above where it stood before
//! the test (tasks, operations, fds, threads), or the settle time runs out; a connection
//! task that ends a moment after its client has gone is then not counted.

use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::Snapshot;

use crate::analysis::{self, LeakPolicy};
use crate::link::{AgentLink, LinkError};
use crate::signal::Signals;

/// How long a single snapshot request may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Re-snapshots until nothing judged is above `before`, or `max` has passed, or the run is
/// interrupted. Returns the last snapshot.
pub fn settle(
    link: &mut AgentLink,
    before: &Snapshot,
    max: Duration,
    policy: &LeakPolicy,
    signals: &Signals,
) -> Result<Snapshot, LinkError> {
    let deadline = Instant::now() + max;
    let mut pause = Duration::from_millis(5);
    loop {
        let now = link.snapshot(SNAPSHOT_TIMEOUT)?;
        if !analysis::grew(before, &now, policy) || Instant::now() >= deadline || signals.interrupted() {
            return Ok(now);
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Snapshots until the server is quiet: every judged measure unchanged for `quiet`,
/// or `until` has passed. Returns the last snapshot and whether it was quiet.
pub fn quiet(
    link: &mut AgentLink,
    quiet: Duration,
    until: Instant,
    signals: &Signals,
) -> Result<(Snapshot, bool), LinkError> {
    let mut last = link.snapshot(SNAPSHOT_TIMEOUT)?;
    let mut since = Instant::now();
    loop {
        if since.elapsed() >= quiet {
            return Ok((last, true));
        }
        if Instant::now() >= until || signals.interrupted() {
            return Ok((last, false));
        }
        std::thread::sleep(Duration::from_millis(25).min(quiet));
        let now = link.snapshot(SNAPSHOT_TIMEOUT)?;
        if !analysis::same_measures(&now, &last) {
            since = Instant::now();
        }
        last = now;
    }
}
