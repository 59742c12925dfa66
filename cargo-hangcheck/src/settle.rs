//! Settling after a test: goleak's lesson, judge what is left, not what is still finishing.
//!
//! After a test the runner re-snapshots until no measure is above where it stood before
//! the test (tasks, operations, fds, threads), or the settle time runs out; a connection
//! task that ends a moment after its client has gone is then not counted.
//!
//! A test that leaks never gets back down, so waiting for that alone made every leaking
//! test cost the whole settle time. After a test the runner also stops once the server is
//! *parked*: every measure unchanged and not one poll started by any watched worker for
//! [`PARKED_FOR`], and nothing queued. Survivors that nothing wakes are left, not still
//! finishing. The final settle, which the verdicts are read from, keeps the full rule.

use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::Snapshot;

use crate::analysis::{self, LeakPolicy};
use crate::link::{AgentLink, LinkError};
use crate::signal::Signals;

/// How long a single snapshot request may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server must stay parked (no poll, nothing changed) to end a test's settle.
///
/// A task asleep on a timer looks parked too, and tokio does not say when its next timer
/// fires, so this is also the longest teardown timer a test's settle waits for. At 25 ms,
/// a connection that lingers 25 ms after its client was now and then counted against its
/// test on a loaded CI machine; 60 ms leaves it more than twice that. A task that ends on a
/// longer timer shows as the test's growth in the table until a later settle sees it
/// gone; the verdicts come from the final settle, which waits for it.
pub const PARKED_FOR: Duration = Duration::from_millis(60);

/// When settling may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Back at `before`, or parked: after each test.
    BackOrParked,
    /// Back at `before` only: the final settle, which the verdicts are read from.
    Back,
}

/// Re-snapshots until nothing judged is above `before` (or, with [`Until::BackOrParked`],
/// the server is parked), or `max` has passed, or the run is interrupted. Returns the last
/// snapshot.
pub fn settle(
    link: &mut AgentLink,
    before: &Snapshot,
    max: Duration,
    until: Until,
    policy: &LeakPolicy,
    signals: &Signals,
) -> Result<Snapshot, LinkError> {
    let deadline = Instant::now() + max;
    let mut pause = Duration::from_millis(5);
    // The first snapshot of the current parked stretch, and when it was taken.
    let mut stretch: Option<(Snapshot, Instant)> = None;
    loop {
        let now = link.snapshot(SNAPSHOT_TIMEOUT)?;
        let taken = Instant::now();
        if !analysis::grew(before, &now, policy) || taken >= deadline || signals.interrupted() {
            return Ok(now);
        }
        let mut next = pause;
        if until == Until::BackOrParked {
            match &stretch {
                Some((first, since)) if parked(first, &now) => {
                    if taken.duration_since(*since) >= PARKED_FOR {
                        return Ok(now);
                    }
                }
                _ => stretch = Some((now, taken)),
            }
            // Look again when the stretch would be long enough, not later: a leaking
            // test's settle is then about PARKED_FOR, not the next step of the backoff.
            if let Some((_, since)) = &stretch {
                next = next.min((*since + PARKED_FOR).saturating_duration_since(Instant::now()));
            }
        }
        std::thread::sleep(next.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Whether the server did nothing between two snapshots: every measure the same, not one
/// poll started by a watched worker, nothing waiting in a runtime's global queue. An agent
/// that does not count polls (activity 0) is never taken for parked.
pub fn parked(first: &Snapshot, now: &Snapshot) -> bool {
    now.worker_activity > 0
        && now.worker_activity == first.worker_activity
        && analysis::same_measures(first, now)
        && now.runtimes.iter().filter_map(|r| r.stats.as_ref()).all(|s| s.global_queue_depth == 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_means_no_poll_no_change_and_an_agent_that_counts() {
        let first = Snapshot { worker_activity: 40, ..Snapshot::default() };
        assert!(parked(&first, &first.clone()));
        let polled = Snapshot { worker_activity: 41, ..Snapshot::default() };
        assert!(!parked(&first, &polled));
        let mut changed = first.clone();
        changed.process.fds.socket = 1;
        assert!(!parked(&first, &changed));
        let uncounted = Snapshot::default();
        assert!(!parked(&uncounted, &uncounted.clone()), "an older agent reports no activity");
    }
}
