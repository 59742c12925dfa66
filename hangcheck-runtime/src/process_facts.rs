//! Process facts from `/proc/self`: RSS, threads (hangcheck's own left out), CPU time and
//! open descriptors by kind.
//! File descriptors and threads leak like tasks do, and the kernel's count is the truth.
//! Read on the agent thread only; on a platform without `/proc` every field stays zero.

use std::fs;

use crate::protocol::{FdCounts, ProcessFacts};

pub(crate) fn read() -> ProcessFacts {
    let mut facts = ProcessFacts::default();
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("VmRSS:") {
                facts.rss_bytes = first_number(v) * 1024;
            }
        }
    }
    if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
        facts.cpu_ms = cpu_ms(&stat, clock_ticks_per_second());
    }
    facts.threads = server_threads();
    facts.fds = fd_counts();
    facts
}

/// Threads of the server, leaving out hangcheck's own (`hangcheck-*`; a thread started
/// from the agent inherits its name), so that hangcheck does not count itself.
fn server_threads() -> u64 {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter(|t| !fs::read_to_string(t.path().join("comm")).is_ok_and(|name| name.starts_with("hangcheck-")))
        .count() as u64
}

fn first_number(s: &str) -> u64 {
    s.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`, in milliseconds. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted after the
/// last `)`.
fn cpu_ms(stat: &str, ticks_per_second: u64) -> u64 {
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 (state) is index 0, so field N is index N - 3.
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    if ticks_per_second == 0 {
        return 0;
    }
    ticks * 1000 / ticks_per_second
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety
    // preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

fn fd_counts() -> FdCounts {
    let mut counts = FdCounts::default();
    let Ok(dir) = fs::read_dir("/proc/self/fd") else { return counts };
    for entry in dir.flatten() {
        // The directory handle used to list /proc/self/fd is itself an entry that
        // vanishes before readlink: skip what cannot be read.
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy();
        if target.starts_with("socket:") {
            counts.socket += 1;
        } else if target.starts_with("pipe:") {
            counts.pipe += 1;
        } else if target.starts_with('/') && !target.starts_with("/dev/") {
            counts.file += 1;
        } else {
            counts.other += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_survives_a_command_name_with_spaces_and_parens() {
        let stat = "123 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0";
        assert_eq!(cpu_ms(stat, 100), 4000);
    }

    #[test]
    fn reads_this_process() {
        let facts = read();
        if cfg!(target_os = "linux") {
            assert!(facts.threads >= 1);
            assert!(facts.rss_bytes > 0);
            assert!(facts.fds.total() >= 3, "{:?}", facts.fds);
        }
    }
}
