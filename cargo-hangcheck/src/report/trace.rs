//! `trace.json`: the run as a timeline in the Chrome trace-event format, which Perfetto
//! (ui.perfetto.dev loads the file in the browser and uploads nothing) and
//! chrome://tracing open.
//!
//! Two processes: the run (`tests`: one slice per test, coloured by outcome; `settling`;
//! `server`: its shutdown) with hangs, evidence and leftovers as instant events, and the
//! server (a counter track of live tasks per task group, sampled at each settled
//! snapshot; operations still in flight at a snapshot as async slices; each stall as a
//! slice on its worker's thread). Times are microseconds since the run started.
//! The format: <https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU>.

use serde_json::{json, Value};

use super::timeline::{MarkKind, Timeline};
use super::{Report, ShutdownOutcome, TestOutcome};

const RUN: u32 = 1;
const SERVER: u32 = 2;
const TESTS: u32 = 1;
const SETTLING: u32 = 2;
const STOPPING: u32 = 3;

fn us(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

/// The reserved colour names chrome://tracing knows (Perfetto colours by name instead).
fn colour(outcome: TestOutcome) -> &'static str {
    match outcome {
        TestOutcome::Passed => "good",
        TestOutcome::Failed | TestOutcome::SpawnFailed => "bad",
        TestOutcome::Hung => "terrible",
        TestOutcome::Interrupted | TestOutcome::Ignored => "grey",
    }
}

fn name_process(pid: u32, name: &str, order: u32) -> [Value; 2] {
    [
        json!({ "ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": { "name": name } }),
        json!({ "ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": { "sort_index": order } }),
    ]
}

fn name_thread(pid: u32, tid: u32, name: &str) -> Value {
    json!({ "ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": { "name": name } })
}

/// The trace of a run: `{"traceEvents": [...], ...}`.
pub fn render(timeline: &Timeline, report: &Report) -> Value {
    let mut events: Vec<Value> = Vec::new();
    events.extend(name_process(RUN, &format!("hangcheck: {}", report.package), 0));
    events.push(name_thread(RUN, TESTS, "tests"));
    events.push(name_thread(RUN, SETTLING, "settling"));
    events.push(name_thread(RUN, STOPPING, "server lifecycle"));
    let server = match timeline.server_pid {
        Some(pid) => format!("server {} (pid {pid})", report.server.bin),
        None => format!("server {}", report.server.bin),
    };
    events.extend(name_process(SERVER, &server, 1));

    for t in &timeline.tests {
        let entry = report.tests.iter().find(|e| e.id == t.id);
        events.push(json!({
            "ph": "X", "cat": "test", "name": t.id, "pid": RUN, "tid": TESTS,
            "ts": us(t.start), "dur": us(t.duration), "cname": colour(t.outcome),
            "args": {
                "outcome": t.outcome.name(), "epoch": t.epoch,
                "detail": entry.and_then(|e| e.detail.clone()),
                "log": entry.map(|e| e.log.clone()),
                "evidence": entry.map(|e| e.evidence.clone()).unwrap_or_default(),
            },
        }));
        let ran = t.start + t.duration;
        if t.settled > ran {
            events.push(json!({
                "ph": "X", "cat": "settle", "name": format!("settle after {}", t.id), "pid": RUN, "tid": SETTLING,
                "ts": us(ran), "dur": us(t.settled - ran),
            }));
        }
    }

    for (group, location) in timeline.groups() {
        let name = match &location {
            Some(l) if *l != group => format!("live tasks: {group} ({l})"),
            _ => format!("live tasks: {group}"),
        };
        for sample in &timeline.samples {
            let live = sample.snapshot.groups.iter().find(|g| g.key == group).map_or(0, |g| g.live);
            events.push(json!({
                "ph": "C", "cat": "tasks", "name": name, "pid": SERVER, "ts": us(sample.at),
                "args": { "live": live },
            }));
        }
    }

    for (i, op) in timeline.op_spans().iter().enumerate() {
        let name = format!("op {}", op.kind);
        let id = format!("op-{i}");
        let args = json!({
            "in_flight": op.count, "began_in": op.test, "epoch": op.epoch, "still_in_flight_at_end": op.open,
        });
        events.push(json!({
            "ph": "b", "cat": "op", "name": name, "id": id, "pid": SERVER, "tid": 0, "ts": us(op.start), "args": args,
        }));
        events
            .push(json!({ "ph": "e", "cat": "op", "name": name, "id": id, "pid": SERVER, "tid": 0, "ts": us(op.end) }));
    }

    let mut named: Vec<u32> = Vec::new();
    for stall in &timeline.stalls {
        if !named.contains(&stall.tid) {
            named.push(stall.tid);
            events.push(name_thread(SERVER, stall.tid, &format!("{} {}", stall.thread, stall.tid)));
        }
        events.push(json!({
            "ph": "X", "cat": "stall", "name": "stall", "pid": SERVER, "tid": stall.tid,
            "ts": us(stall.start), "dur": us(stall.duration), "cname": "terrible",
            "args": {
                "test": stall.test, "task": stall.task, "blocked_in": stall.blocked_in, "file": stall.file,
                "stuck_ms": stall.duration.as_millis() as u64,
            },
        }));
    }

    for mark in &timeline.marks {
        let name = match mark.kind {
            MarkKind::Hang => format!("hang: {}", mark.name),
            MarkKind::Evidence => format!("evidence: {}", mark.name),
            MarkKind::Leftover => format!("leftover: {}", mark.name),
        };
        let cat = match mark.kind {
            MarkKind::Hang => "hang",
            MarkKind::Evidence => "evidence",
            MarkKind::Leftover => "leftover",
        };
        events.push(json!({
            "ph": "i", "s": "g", "cat": cat, "name": name, "pid": RUN, "tid": TESTS, "ts": us(mark.at),
            "args": { "files": mark.files },
        }));
    }

    if let Some(stop) = &timeline.shutdown {
        let outcome = stop.outcome.name();
        events.push(json!({
            "ph": "X", "cat": "shutdown", "name": format!("shutdown: {outcome}"), "pid": RUN, "tid": STOPPING,
            "ts": us(stop.start), "dur": us(stop.end.saturating_sub(stop.start)),
            "cname": if stop.outcome == ShutdownOutcome::Hung { "terrible" } else { "good" },
            "args": { "evidence": report.shutdown.evidence },
        }));
    }
    let verdicts_at = timeline.shutdown.as_ref().map_or(timeline.end, |s| s.start);
    for leak in &report.leaks {
        events.push(json!({
            "ph": "i", "s": "g", "cat": "leak", "name": format!("leak: {}", leak.group), "pid": RUN,
            "tid": TESTS, "ts": us(verdicts_at),
            "args": { "location": leak.location, "growth": leak.growth, "leaked_by": leak.leaked_by },
        }));
    }

    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "package": report.package, "verdict": report.verdict, "exit_code": report.exit_code,
            "hangcheck_version": report.hangcheck_version,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::aggregate::Aggregator;
    use crate::report::timeline::tests::sample_run;

    fn events_of<'v>(trace: &'v Value, ph: &str) -> Vec<&'v Value> {
        trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == ph).collect()
    }

    #[test]
    fn the_trace_has_a_slice_per_test_a_counter_per_group_and_the_hang_as_a_moment() {
        let timeline = sample_run();
        let report = Aggregator::default().finish(std::time::Duration::from_secs(5));
        let trace = render(&timeline, &report);
        let slices: Vec<(&str, &str, u64)> = events_of(&trace, "X")
            .into_iter()
            .filter(|e| e["cat"] == "test")
            .map(|e| (e["name"].as_str().unwrap(), e["cname"].as_str().unwrap(), e["ts"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            slices,
            vec![("e2e::a", "good", 10_000), ("e2e::b", "terrible", 130_000), ("e2e::c", "good", 3_310_000)]
        );
        let live: Vec<u64> = events_of(&trace, "C")
            .into_iter()
            .filter(|e| e["name"] == "live tasks: waiter (src/main.rs:112)")
            .map(|e| e["args"]["live"].as_u64().unwrap())
            .collect();
        assert_eq!(live, vec![0, 1, 2, 2], "one sample per settled snapshot, the baseline first");
        let instants: Vec<&str> = events_of(&trace, "i").iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(instants, vec!["hang: e2e::b", "evidence: e2e::b"]);
        assert_eq!(events_of(&trace, "b").len(), 2, "two spans of operations");
        assert_eq!(events_of(&trace, "e").len(), 2);
    }
}
