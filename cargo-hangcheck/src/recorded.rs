//! The server's flight recorder, as evidence: the events in its ring written as JSON
//! lines (`…events.jsonl`) next to the stacks, and, for a hung test, a few lines of what
//! the tasks it started did last.

use hangcheck_runtime::protocol::{Recorded, RecordedEvent, RecordedKind};

/// `…events.jsonl`: a first line about the ring (its capacity, how many events it ever
/// took, the recorder's clock when it was read), then one event per line, oldest first.
pub fn jsonl(recorded: &Recorded) -> Vec<u8> {
    let head = serde_json::json!({
        "capacity": recorded.capacity,
        "recorded": recorded.recorded,
        "overwritten": recorded.recorded.saturating_sub(recorded.capacity),
        "now_us": recorded.now_us,
    });
    let mut out = head.to_string().into_bytes();
    out.push(b'\n');
    for e in &recorded.events {
        out.extend(serde_json::to_vec(e).unwrap_or_default());
        out.push(b'\n');
    }
    out
}

/// How many tasks [`last_words`] describes.
const SHOWN: usize = 5;

fn short_key(key: &str) -> String {
    match key.get(..9) {
        Some(head) if key.len() > 9 => format!("{head}…"),
        _ => key.to_owned(),
    }
}

/// What a task did in `e`, as the rest of a sentence.
fn action(e: &RecordedEvent) -> String {
    let op =
        || format!("op `{}` {}", e.op.as_deref().unwrap_or("?"), e.key.as_deref().map(short_key).unwrap_or_default());
    match e.event {
        RecordedKind::TaskSpawn => "was spawned".to_owned(),
        RecordedKind::TaskEnd => "ended".to_owned(),
        RecordedKind::OpStart => format!("started {}", op()),
        RecordedKind::OpEnd => format!("ended {}", op()),
        RecordedKind::Stall => "stalled its worker".to_owned(),
        RecordedKind::Counter | RecordedKind::Gauge => {
            format!("set `{}` to {}", e.name.as_deref().unwrap_or("?"), e.value.unwrap_or(0))
        }
    }
}

/// A few lines about the tasks born in `epoch` and still alive at the end of the ring:
/// for each, its last recorded event and how long ago, e.g. `task 7 (conn at
/// src/main.rs:33) started op `transfer` #a1b2c3d4… 3.1 s ago, no event since`.
pub fn last_words(recorded: &Recorded, epoch: u64) -> Vec<String> {
    if recorded.capacity == 0 {
        return Vec::new();
    }
    // Tasks born in the epoch, in birth order, with their spawn event.
    let mut born: Vec<&RecordedEvent> = recorded
        .events
        .iter()
        .filter(|e| e.event == RecordedKind::TaskSpawn && e.epoch == Some(epoch) && e.task.is_some())
        .collect();
    born.retain(|spawn| {
        !recorded
            .events
            .iter()
            .any(|e| e.event == RecordedKind::TaskEnd && e.task == spawn.task && e.at_us >= spawn.at_us)
    });
    if born.is_empty() {
        return vec![format!(
            "no task born in this test is alive in the recorder's last {} events",
            recorded.events.len()
        )];
    }
    let mut lines: Vec<String> = born
        .iter()
        .take(SHOWN)
        .map(|spawn| {
            let last = recorded.events.iter().rev().find(|e| e.task == spawn.task).unwrap_or(spawn);
            let what = match (&spawn.group, &spawn.location) {
                (Some(g), Some(l)) if g != l => format!("{g} at {l}"),
                (Some(g), _) => g.clone(),
                (None, Some(l)) => l.clone(),
                (None, None) => "?".to_owned(),
            };
            let ago = recorded.now_us.saturating_sub(last.at_us) as f64 / 1e6;
            format!("task {} ({what}) {} {ago:.1} s ago, no event since", spawn.task.unwrap_or(0), action(last))
        })
        .collect();
    if born.len() > SHOWN {
        lines.push(format!("… and {} more tasks of this test", born.len() - SHOWN));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_ms: u64, event: RecordedKind, task: u64) -> RecordedEvent {
        RecordedEvent { at_us: at_ms * 1000, event, task: Some(task), ..RecordedEvent::default() }
    }

    fn spawn(at_ms: u64, task: u64, epoch: u64) -> RecordedEvent {
        RecordedEvent {
            group: Some("conn".into()),
            location: Some("src/main.rs:33".into()),
            epoch: Some(epoch),
            ..event(at_ms, RecordedKind::TaskSpawn, task)
        }
    }

    #[test]
    fn a_hung_tests_live_tasks_are_told_by_their_last_event() {
        let op = RecordedEvent {
            op: Some("transfer".into()),
            key: Some("#a1b2c3d4e5f60718".into()),
            ..event(1500, RecordedKind::OpStart, 7)
        };
        let recorded = Recorded {
            capacity: 16,
            recorded: 6,
            now_us: 4_600_000,
            events: vec![
                spawn(1000, 5, 1),
                spawn(1200, 7, 2),
                spawn(1300, 8, 2),
                op,
                spawn(1400, 9, 2),
                event(2000, RecordedKind::TaskEnd, 9),
            ],
        };
        assert_eq!(
            last_words(&recorded, 2),
            vec![
                "task 7 (conn at src/main.rs:33) started op `transfer` #a1b2c3d4… 3.1 s ago, no event since",
                "task 8 (conn at src/main.rs:33) was spawned 3.3 s ago, no event since",
            ]
        );
        assert_eq!(
            last_words(&recorded, 3),
            vec!["no task born in this test is alive in the recorder's last 6 events"]
        );
        assert!(last_words(&Recorded::default(), 2).is_empty(), "nothing when the recorder is off");
        let lines = String::from_utf8(jsonl(&recorded)).unwrap();
        assert_eq!(lines.lines().count(), 7);
        let head: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!((head["capacity"].as_u64(), head["overwritten"].as_u64()), (Some(16), Some(0)), "{lines}");
        let last: RecordedEvent = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
        assert_eq!(last, recorded.events[5]);
    }
}
