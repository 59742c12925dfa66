//! `--message-format json`: every event of the run as one JSON object per line on stdout,
//! in the manner of libtest's `--format json`, for tools that follow a run as it goes.
//!
//! Each line has a `type` (`run`, `server`, `test`, `evidence`, `stall`, `leak`,
//! `concurrent-ops`, `shutdown`, `warning`, `protocol-error`, `setup-error`) and, where a
//! type has several moments, an `event`. A test's finishing line carries the same fields
//! as its entry in `report.json`, and the last line (`"type": "run", "event":
//! "finished"`) names the verdict, the exit code and the report's path. The format is
//! documented in docs/report-format.md.

use std::io::Write;

use serde_json::{json, Value};

use super::{Report, Reporter, TestEntry, TestOutcome};
use crate::event::Event;

/// Prints events as JSON lines on stdout.
pub struct JsonLines;

impl JsonLines {
    fn emit(value: Value) {
        let mut out = std::io::stdout().lock();
        // A closed stdout (the reader went away) must not stop the run.
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }
}

/// libtest's word for how a test ended, where it has one.
fn libtest_event(outcome: TestOutcome) -> &'static str {
    match outcome {
        TestOutcome::Passed => "ok",
        TestOutcome::Failed | TestOutcome::SpawnFailed => "failed",
        TestOutcome::Hung => "hung",
        TestOutcome::Interrupted => "interrupted",
        TestOutcome::Ignored => "ignored",
    }
}

/// `value`'s fields with `extra`'s merged in front.
fn with(extra: Value, value: impl serde::Serialize) -> Value {
    let mut out = extra;
    if let (Some(out), Ok(Value::Object(fields))) = (out.as_object_mut(), serde_json::to_value(value)) {
        for (k, v) in fields {
            out.entry(k).or_insert(v);
        }
    }
    out
}

impl Reporter for JsonLines {
    fn event(&mut self, event: &Event<'_>) {
        let line = match *event {
            Event::Building { package, server_bin, test_targets } => json!({
                "type": "run", "event": "building", "package": package, "server_bin": server_bin,
                "test_targets": test_targets,
            }),
            Event::RunStarted { package, server_bin, tokio_unstable, run_dir, tests, stress, .. } => json!({
                "type": "run", "event": "started", "package": package, "server_bin": server_bin,
                "tokio_unstable": tokio_unstable, "run_dir": run_dir, "test_count": tests.len(), "stress": stress,
            }),
            Event::ServerReady { pid, capabilities, addresses, log, runtimes } => json!({
                "type": "server", "event": "ready", "pid": pid, "capabilities": capabilities,
                "addresses": addresses, "log": log,
                "runtimes": runtimes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            }),
            Event::Startup { growth } => json!({ "type": "startup", "growth": growth }),
            Event::StallEnded { seq, total_ms } => json!({ "type": "stall-ended", "seq": seq, "total_ms": total_ms }),
            Event::Baseline { .. } | Event::FinalSnapshot { .. } => return,
            Event::TestStarted { case, epoch } => {
                json!({ "type": "test", "event": "started", "name": case.id(), "epoch": epoch })
            }
            Event::TestHung { case } => json!({ "type": "test", "event": "timeout", "name": case.id() }),
            Event::EvidenceWritten { test, files, source } => json!({
                "type": "evidence", "event": "written", "test": test, "files": files, "stacks_source": source,
            }),
            Event::TestFinished { record } => {
                let entry = TestEntry::from_record(record);
                let head = json!({
                    "type": "test", "event": libtest_event(entry.outcome), "name": entry.id,
                    "exec_time": record.run.duration.as_secs_f64(),
                });
                with(head, &entry)
            }
            Event::Stall { stall } => with(json!({ "type": "stall" }), stall),
            Event::Leftover { leftover, after, file } => {
                with(json!({ "type": "leftover", "after": after, "file": file }), leftover)
            }
            Event::ProtocolError { message } => json!({ "type": "protocol-error", "message": message }),
            Event::Verdicts { leaks, concurrent } => {
                for leak in leaks {
                    Self::emit(with(json!({ "type": "leak" }), leak));
                }
                for c in concurrent {
                    Self::emit(with(json!({ "type": "concurrent-ops" }), c));
                }
                return;
            }
            Event::Shutdown { shutdown, grace } => with(
                json!({ "type": "shutdown", "event": shutdown.outcome, "grace_ms": grace.as_millis() as u64 }),
                shutdown,
            ),
            Event::Warning { message } => json!({ "type": "warning", "message": message }),
            Event::Warmup { case, run } => {
                json!({ "type": "warmup", "test": super::WarmupEntry::of(case, run) })
            }
            Event::Round { round, seed, chaos, fresh_server } => {
                json!({ "type": "round", "event": "started", "round": round, "shuffle_seed": seed, "chaos_seed": chaos, "fresh_server": fresh_server })
            }
            Event::SetupError { error } => {
                json!({ "type": "setup-error", "message": error.to_string(), "detail": error.detail() })
            }
        };
        Self::emit(line);
    }

    fn finished(&mut self, report: &Report) {
        let tally = report.tally();
        Self::emit(json!({
            "type": "run", "event": "finished", "verdict": report.verdict, "exit_code": report.exit_code,
            "passed": tally.passed, "failed": tally.failed, "hung": tally.hung, "ignored": report.tests.iter().filter(|t| t.outcome == TestOutcome::Ignored).count(),
            "leaks": report.leaks.len(), "stalls": report.stalls.len(),
            "duration_ms": report.duration_ms,
            "report": (!report.run_dir.as_os_str().is_empty()).then(|| report.run_dir.join("report.json")),
        }));
    }
}
