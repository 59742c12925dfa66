//! Whether hangcheck really watched the server: the facts behind an all-clear.
//!
//! An all-clear means nothing if the server's runtime was never instrumented (its tasks
//! and stalls are invisible) or if the tests never talked to it (they fell back to a
//! server of their own). Both look like a clean run; this module tells them apart from
//! what the agent reports, and turns them into setup errors or warnings.
//!
//! A test **reached** the server when, between the snapshot before it and the settled
//! snapshot after it, the server did something a client causes:
//! - a task was spawned (any group; with `tokio_unstable` that is every task, so a
//!   connection task per accepted connection is enough),
//! - an operation (`hangcheck_runtime::op`) started,
//! - a counter or a gauge moved,
//! - a TCP connection to or from a port the server announced appeared in the kernel's
//!   table (`/proc/net/tcp`, `tcp6`; a closed connection stays there in `TIME_WAIT`, so
//!   a short one is seen after the fact): a server that answers in its accept loop
//!   without spawning anything is reached too;
//! - on `--stable` builds only, where unnamed tasks are not seen: a worker woke up to
//!   run something (this also moves on timers, so there it can only err on the side of
//!   "reached").

use hangcheck_runtime::protocol::Snapshot;

/// The server's runtimes as the baseline shows them: an error when none was built
/// through hangcheck, a warning when some runtimes the server uses were not.
pub fn check_runtimes(baseline: &Snapshot) -> Result<Option<String>, String> {
    if baseline.runtimes.is_empty() {
        return Err("the server's tokio runtime is not instrumented, so hangcheck sees none of its tasks and \
                    cannot catch a stall: change `#[tokio::main]` to `#[hangcheck_runtime::main]`, or pass the \
                    runtime's builder through `hangcheck_runtime::instrument(&mut builder)` before `build()`"
            .to_owned());
    }
    let foreign = baseline.uninstrumented_runtimes;
    Ok((foreign > 0).then(|| {
        format!(
            "{foreign} of the server's {} tokio runtimes {} not built through hangcheck; their tasks and stalls are \
             not watched (pass each runtime's builder through `hangcheck_runtime::instrument`)",
            foreign + baseline.runtimes.len() as u64,
            if foreign == 1 { "was" } else { "were" }
        )
    }))
}

/// What the agent can do in this run, as facts: its static capabilities, plus each kind
/// of hook only when a runtime has it installed and tokio has called it.
pub fn capabilities(hello: &[String], last: Option<&Snapshot>, watchdog_on: bool) -> Vec<String> {
    let mut caps: Vec<String> = hello
        .iter()
        .filter(|c| !matches!(c.as_str(), "task-hooks" | "poll-hooks" | "stall-watchdog"))
        .cloned()
        .collect();
    let runtimes = last.map(|s| s.runtimes.as_slice()).unwrap_or_default();
    let fired = |hook: &str| runtimes.iter().any(|r| r.fired.iter().any(|h| h == hook));
    if fired("task-spawn") {
        caps.push("task-hooks".to_owned());
    }
    if fired("task-poll") {
        caps.push("poll-hooks".to_owned());
    }
    if watchdog_on && (fired("task-poll") || fired("thread-park")) {
        caps.push("stall-watchdog".to_owned());
    }
    caps
}

/// Whether the server did something between `before` and `after` (see the module docs).
pub fn reached(before: &Snapshot, after: &Snapshot, tokio_unstable: bool) -> bool {
    let spawned = |s: &Snapshot| s.groups.iter().map(|g| g.spawned).sum::<u64>();
    let started = |s: &Snapshot| s.ops.iter().map(|o| o.started).sum::<u64>();
    spawned(after) > spawned(before)
        || started(after) > started(before)
        || after.counters != before.counters
        || after.gauges != before.gauges
        || (!tokio_unstable && after.worker_activity > before.worker_activity)
}

/// The TCP connections (not listeners) in the kernel's table that involve one of
/// `ports`, as `local remote` pairs; empty where there is no `/proc`.
pub fn tcp_connections(ports: &[u16]) -> std::collections::BTreeSet<String> {
    use std::io::Read;
    // Bounded: a busy machine's table is large, but not this large.
    const LIMIT: u64 = 8 * 1024 * 1024;
    let mut out = std::collections::BTreeSet::new();
    if ports.is_empty() {
        return out;
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let mut text = String::new();
        let Ok(file) = std::fs::File::open(table) else { continue };
        if file.take(LIMIT).read_to_string(&mut text).is_err() {
            continue;
        }
        out.extend(connections_in(&text, ports));
    }
    out
}

/// The `local remote` pairs of a `/proc/net/tcp` table that involve one of `ports`,
/// listeners (state `0A`) left out.
fn connections_in(table: &str, ports: &[u16]) -> Vec<String> {
    let port = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (local, remote, state) = (fields.next()?, fields.next()?, fields.next()?);
            let involved = [local, remote].iter().any(|a| port(a).is_some_and(|p| ports.contains(&p)));
            (involved && state != "0A").then(|| format!("{local} {remote}"))
        })
        .collect()
}

/// The error when no test of the run reached the server.
pub fn none_reached(vars: &[String]) -> String {
    let vars = if vars.is_empty() { "none (the server announced no address)".to_owned() } else { vars.join(", ") };
    format!(
        "no test reached the server: it spawned no task and moved no counter while the tests ran, so nothing \
         was watched; the tests must connect to the address the server announced, in {vars} (a test that falls \
         back to a server of its own is not tested here)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangcheck_runtime::protocol::{GroupStats, RuntimeInfo};

    fn with_runtime() -> Snapshot {
        Snapshot {
            runtimes: vec![RuntimeInfo { name: "main".into(), ..RuntimeInfo::default() }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn no_instrumented_runtime_is_an_error_naming_the_fix() {
        let err = check_runtimes(&Snapshot::default()).unwrap_err();
        assert!(err.contains("#[hangcheck_runtime::main]") && err.contains("instrument"), "{err}");
        assert_eq!(check_runtimes(&with_runtime()), Ok(None));
        let partial = Snapshot { uninstrumented_runtimes: 2, ..with_runtime() };
        let warning = check_runtimes(&partial).unwrap().unwrap();
        assert!(warning.starts_with("2 of the server's 3 tokio runtimes were not"), "{warning}");
    }

    #[test]
    fn hooks_are_claimed_only_once_they_fired() {
        let hello = vec!["snapshot".to_owned(), "task-hooks".to_owned()];
        assert_eq!(capabilities(&hello, Some(&with_runtime()), true), vec!["snapshot"]);
        let mut live = with_runtime();
        live.runtimes[0].fired = vec!["task-spawn".into(), "task-poll".into()];
        assert_eq!(
            capabilities(&hello, Some(&live), true),
            vec!["snapshot", "task-hooks", "poll-hooks", "stall-watchdog"]
        );
        assert_eq!(capabilities(&hello, Some(&live), false), vec!["snapshot", "task-hooks", "poll-hooks"]);
    }

    #[test]
    fn connections_to_an_announced_port_are_found_and_listeners_left_out() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
   1: 0100007F:1F90 0100007F:D431 06 00000000:00000000\n\
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000\n\
   3: 0100007F:0050 0100007F:D432 01 00000000:00000000\n";
        let found = connections_in(table, &[0x1F90]);
        assert_eq!(found, vec!["0100007F:1F90 0100007F:D431", "0100007F:D431 0100007F:1F90"]);
        assert!(connections_in(table, &[1]).is_empty());
    }

    #[test]
    fn a_spawn_or_a_counter_means_the_test_reached_the_server() {
        let before = Snapshot::default();
        let mut spawned = Snapshot::default();
        spawned.groups.push(GroupStats {
            key: "conn".into(),
            kind: hangcheck_runtime::protocol::GroupKind::Named,
            location: None,
            live: 0,
            spawned: 1,
            finished: 1,
            polls: 0,
            busy_ms: 0,
            oldest_age_ms: None,
            live_by_epoch: Vec::new(),
        });
        assert!(reached(&before, &spawned, true));
        let mut counted = Snapshot::default();
        counted.counters.insert("requests".into(), 1);
        assert!(reached(&before, &counted, true));
        let woke = Snapshot { worker_activity: 5, ..Snapshot::default() };
        assert!(!reached(&before, &woke, true), "polls alone do not count with task hooks (timers poll too)");
        assert!(reached(&before, &woke, false), "on --stable they are all there is");
    }
}
