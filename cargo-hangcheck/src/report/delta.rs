//! What changed between two snapshots, in words: the live mode's answer to "what did my
//! last few clicks leave behind?".

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hangcheck_runtime::protocol::Snapshot;

/// Every value a snapshot shows, by row name, with an optional age.
fn rows(s: &Snapshot) -> BTreeMap<String, (i128, Option<u64>)> {
    let mut rows = BTreeMap::new();
    for g in &s.groups {
        rows.insert(format!("tasks {}", g.key), (g.live as i128, g.oldest_age_ms));
    }
    for o in &s.ops {
        let key = crate::measures::op_key(&o.kind);
        rows.insert(format!("{key} in flight"), (o.in_flight as i128, o.oldest_age_ms));
        rows.insert(format!("{key} overlaps"), (o.overlap_events as i128, None));
        rows.insert(format!("{key} slow"), ((o.slow_in_flight + o.slow_finished) as i128, None));
    }
    for (name, v) in &s.counters {
        rows.insert(format!("{name}#"), (*v as i128, None));
    }
    for (name, v) in &s.gauges {
        rows.insert(format!("{name}~"), (*v as i128, None));
    }
    for m in crate::measures::PROCESS {
        rows.insert(m.key.to_owned(), ((m.read)(s) as i128, None));
    }
    rows.insert("rss KiB".to_owned(), ((s.process.rss_bytes / 1024) as i128, None));
    rows.insert("stalls".to_owned(), (s.stalls as i128, None));
    rows
}

/// The rows that changed from `before` to `now`, one per line, and how long passed.
pub fn render(n: u64, before: &Snapshot, now: &Snapshot) -> String {
    let elapsed = Duration::from_millis(now.uptime_ms.saturating_sub(before.uptime_ms));
    let mut out = format!("snapshot {n}: {:.1}s after the previous one\n", elapsed.as_secs_f64());
    let old = rows(before);
    let mut changed = 0;
    for (name, (value, age)) in rows(now) {
        let previous = old.get(&name).map_or(0, |(v, _)| *v);
        if value == previous {
            continue;
        }
        changed += 1;
        let age = age.map(|ms| format!("  oldest {:.1}s", ms as f64 / 1000.0)).unwrap_or_default();
        let _ = writeln!(out, "  {name:<40} {previous:>8} -> {value:<8} ({:+}){age}", value - previous);
    }
    if changed == 0 {
        out.push_str("  nothing changed\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangcheck_runtime::protocol::{GroupKind, GroupStats};

    #[test]
    fn lists_only_what_changed_with_its_delta() {
        let before = Snapshot { uptime_ms: 1000, ..Snapshot::default() };
        let mut now = Snapshot { uptime_ms: 3500, ..Snapshot::default() };
        now.groups.push(GroupStats {
            key: "waiter".into(),
            kind: GroupKind::Named,
            location: None,
            live: 2,
            spawned: 2,
            finished: 0,
            polls: 0,
            busy_ms: 0,
            oldest_age_ms: Some(1200),
            live_by_epoch: vec![],
        });
        now.counters.insert("connects".into(), 3);
        let text = render(2, &before, &now);
        assert!(text.starts_with("snapshot 2: 2.5s after the previous one\n"), "{text}");
        assert!(
            text.contains("tasks waiter") && text.contains("0 -> 2") && text.contains("(+2)  oldest 1.2s"),
            "{text}"
        );
        assert!(text.contains("connects#") && text.contains("(+3)"), "{text}");
        assert!(!text.contains("threads"), "{text}");
        assert_eq!(render(3, &now, &now).lines().nth(1), Some("  nothing changed"));
    }
}
