//! The accumulation table's columns, for every output that shows it (the terminal, the
//! HTML report): one per task group, operation kind, process measure, counter and gauge
//! that moved during the run, each with its value at every settled snapshot.

use std::collections::BTreeSet;

use hangcheck_runtime::protocol::Snapshot;

use crate::measures;

/// One column of the accumulation table.
pub struct Column {
    /// The heading: a group (location keys shortened), `op:KIND`, a measure, `NAME#`
    /// for a counter, `NAME~` for a gauge.
    pub title: String,
    /// Its value at each row's snapshot (`None` where the server could not answer).
    pub values: Vec<Option<i128>>,
}

/// The columns of the table whose rows are `rows` (the baseline first, then each test's
/// settled snapshot), keeping those that moved.
pub fn columns(rows: &[Option<&Snapshot>]) -> Vec<Column> {
    let mut columns: Vec<Column> = Vec::new();
    let group_keys: BTreeSet<&str> =
        rows.iter().flatten().flat_map(|s| s.groups.iter().map(|g| g.key.as_str())).collect();
    let titles = short_titles(&group_keys);
    for (key, title) in group_keys.iter().zip(titles) {
        let key = *key;
        columns.push(Column { title, values: rows.iter().map(|s| s.map(|s| live(s, key) as i128)).collect() });
    }
    let op_kinds: BTreeSet<&str> = rows.iter().flatten().flat_map(|s| s.ops.iter().map(|o| o.kind.as_str())).collect();
    for kind in op_kinds {
        columns.push(Column {
            title: measures::op_key(kind),
            values: rows
                .iter()
                .map(|s| s.map(|s| s.ops.iter().find(|o| o.kind == kind).map_or(0, |o| o.in_flight) as i128))
                .collect(),
        });
    }
    for m in measures::PROCESS {
        columns.push(Column {
            title: m.key.to_owned(),
            values: rows.iter().map(|s| s.map(|s| (m.read)(s) as i128)).collect(),
        });
    }
    // Shown, not judged: tokio's blocking-pool threads idling out.
    columns.push(Column {
        title: "pool:idle".to_owned(),
        values: rows.iter().map(|s| s.map(|s| measures::idle_pool_threads(s) as i128)).collect(),
    });
    let counter_keys: BTreeSet<&str> =
        rows.iter().flatten().flat_map(|s| s.counters.keys().map(String::as_str)).collect();
    for key in counter_keys {
        columns.push(Column {
            title: format!("{key}#"),
            values: rows.iter().map(|s| s.map(|s| s.counters.get(key).copied().unwrap_or(0) as i128)).collect(),
        });
    }
    let gauge_keys: BTreeSet<&str> = rows.iter().flatten().flat_map(|s| s.gauges.keys().map(String::as_str)).collect();
    for key in gauge_keys {
        columns.push(Column {
            title: format!("{key}~"),
            values: rows.iter().map(|s| s.map(|s| s.gauges.get(key).copied().unwrap_or(0) as i128)).collect(),
        });
    }
    columns.retain(|c| {
        let known: Vec<i128> = c.values.iter().flatten().copied().collect();
        known.windows(2).any(|w| w[0] != w[1])
    });
    columns
}

/// The live tasks of group `key` in `s` (0 when it has none).
pub fn live(s: &Snapshot, key: &str) -> u64 {
    s.groups.iter().find(|g| g.key == key).map_or(0, |g| g.live)
}

/// Column titles for group keys: a location key (`dir/file.rs:line`) is cut to its last
/// two path components, unless that would make two titles alike.
pub fn short_titles(keys: &BTreeSet<&str>) -> Vec<String> {
    let short = |key: &str| -> String {
        let parts: Vec<&str> = key.split('/').collect();
        if parts.len() <= 2 {
            key.to_owned()
        } else {
            format!("…/{}", parts[parts.len() - 2..].join("/"))
        }
    };
    let shorts: Vec<String> = keys.iter().map(|k| short(k)).collect();
    let unique: BTreeSet<&String> = shorts.iter().collect();
    if unique.len() == shorts.len() {
        shorts
    } else {
        keys.iter().map(|k| k.to_string()).collect()
    }
}

/// Each value with its change since the row above; `?` where unknown.
pub fn cells(values: &[Option<i128>]) -> Vec<String> {
    let mut previous: Option<i128> = None;
    values
        .iter()
        .map(|v| match v {
            None => "?".to_owned(),
            Some(v) => {
                let cell = match previous {
                    Some(p) if *v != p => format!("{v} ({:+})", v - p),
                    _ => v.to_string(),
                };
                previous = Some(*v);
                cell
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_deltas_and_unknowns() {
        assert_eq!(cells(&[Some(0), Some(1), Some(1), None, Some(4)]), vec!["0", "1 (+1)", "1", "?", "4 (+3)"]);
    }

    #[test]
    fn location_titles_are_shortened_unless_they_would_collide() {
        let keys: BTreeSet<&str> = ["conn", "examples/a/src/main.rs:63", "tower-0.5.3/src/buffer/service.rs:57"].into();
        assert_eq!(short_titles(&keys), vec!["conn", "…/src/main.rs:63", "…/buffer/service.rs:57"]);
        let clash: BTreeSet<&str> = ["a/src/main.rs:1", "b/src/main.rs:1"].into();
        assert_eq!(short_titles(&clash), vec!["a/src/main.rs:1", "b/src/main.rs:1"]);
    }
}
