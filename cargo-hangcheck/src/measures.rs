//! The catalogue of what hangcheck measures in a snapshot beyond task groups and
//! operations: open file descriptors by kind, and threads.
//!
//! Analysis judges these, the accumulation table shows them and the live mode's deltas list
//! them; all three read this one list, so a new kind of descriptor is added once.

use hangcheck_runtime::protocol::Snapshot;

/// What a process measure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// Open file descriptors of one kind.
    Fd,
    /// Threads of the process (hangcheck's own and idle blocking-pool threads excluded).
    Threads,
}

/// One process-wide measure: its key (also its column title and its name in verdicts) and
/// how to read it off a snapshot.
#[derive(Clone, Copy)]
pub struct ProcessMeasure {
    /// `fd:socket`, `fd:file`, `fd:pipe`, `fd:other` or `threads`.
    pub key: &'static str,
    /// What it counts.
    pub kind: ProcessKind,
    /// Its value in a snapshot.
    pub read: fn(&Snapshot) -> u64,
}

/// Every process-wide measure, in display order.
pub const PROCESS: [ProcessMeasure; 5] = [
    ProcessMeasure { key: "fd:socket", kind: ProcessKind::Fd, read: |s| s.process.fds.socket },
    ProcessMeasure { key: "fd:file", kind: ProcessKind::Fd, read: |s| s.process.fds.file },
    ProcessMeasure { key: "fd:pipe", kind: ProcessKind::Fd, read: |s| s.process.fds.pipe },
    ProcessMeasure { key: "fd:other", kind: ProcessKind::Fd, read: |s| s.process.fds.other },
    ProcessMeasure { key: "threads", kind: ProcessKind::Threads, read: judged_threads },
];

/// The thread count that is judged: the process's threads less the idle threads of
/// instrumented runtimes' blocking pools. tokio keeps such a thread for 10 s after its
/// last `spawn_blocking` (or `tokio::fs` call), so whether one is still there depends on
/// the tests that follow, not on a leak. Idle counts come from tokio's metrics with
/// `tokio_unstable`; on `--stable` every blocking-pool thread is left out.
pub fn judged_threads(s: &Snapshot) -> u64 {
    s.process.threads.saturating_sub(idle_pool_threads(s))
}

/// Idle threads of the instrumented runtimes' blocking pools (every blocking-pool thread
/// on `--stable`, where tokio does not tell idle from busy).
pub fn idle_pool_threads(s: &Snapshot) -> u64 {
    s.runtimes.iter().map(|r| r.idle_blocking_threads.unwrap_or(r.blocking_threads)).sum()
}

/// The key under which an operation kind is judged and shown.
pub fn op_key(kind: &str) -> String {
    format!("op:{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_measure_reads_its_own_field() {
        let mut s = Snapshot::default();
        s.process.fds.socket = 1;
        s.process.fds.file = 2;
        s.process.fds.pipe = 3;
        s.process.fds.other = 4;
        s.process.threads = 5;
        let read: Vec<(&str, u64)> = PROCESS.iter().map(|m| (m.key, (m.read)(&s))).collect();
        assert_eq!(read, [("fd:socket", 1), ("fd:file", 2), ("fd:pipe", 3), ("fd:other", 4), ("threads", 5)]);
    }
}
