//! `cargo hangcheck diff OLD NEW`: what changed between two reports (say, main's and a
//! branch's): the verdict, each test whose outcome changed, came or went, each leak's
//! standing in NEW against OLD (as `--baseline OLD` would judge it) and the leaks that
//! are gone, the number of stalls and the shutdown. It reports; it does not judge: the exit
//! code is 0 once both reports are read (3 if one cannot be).

use std::collections::BTreeMap;
use std::io::Write;

use crate::cli::DiffArgs;
use crate::exit;
use crate::report::{self, Report, Verdict};
use crate::standing::{Baseline, Standing};

/// Runs `cargo hangcheck diff` and returns the exit code.
pub fn command(args: &DiffArgs) -> i32 {
    let read = |p| crate::merge::read(p);
    match (read(&args.old), read(&args.new)) {
        (Ok(old), Ok(new)) => {
            let mut out = anstream::stdout();
            for line in changes(&old, &new) {
                let _ = writeln!(out, "{line}");
            }
            exit::OK
        }
        (Err(e), _) | (_, Err(e)) => {
            report::terminal::error(e, &[]);
            exit::SETUP
        }
    }
}

/// The changes, one line each; one line saying so when there are none.
fn changes(old: &Report, new: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    if old.verdict != new.verdict {
        lines.push(format!(
            "verdict: {} (exit {}) -> {} (exit {})",
            verdict_name(old.verdict),
            old.exit_code,
            verdict_name(new.verdict),
            new.exit_code
        ));
    }
    let before: BTreeMap<&str, &str> = old.tests.iter().map(|t| (t.id.as_str(), t.outcome.name())).collect();
    let after: BTreeMap<&str, &str> = new.tests.iter().map(|t| (t.id.as_str(), t.outcome.name())).collect();
    for (id, now) in &after {
        match before.get(id) {
            None => lines.push(format!("test {id}: added ({now})")),
            Some(was) if was != now => lines.push(format!("test {id}: {was} -> {now}")),
            Some(_) => {}
        }
    }
    for (id, was) in &before {
        if !after.contains_key(id) {
            lines.push(format!("test {id}: removed (was {was})"));
        }
    }
    let baseline = Baseline::of(old);
    for leak in &new.leaks {
        match baseline.standing(leak) {
            (Standing::New, _) => lines.push(format!("leak {}: new, +{}", leak.group, leak.growth)),
            (Standing::Grown, Some(was)) => {
                lines.push(format!("leak {}: grown, +{was} -> +{}", leak.group, leak.growth))
            }
            (_, was) if was != Some(leak.growth) => {
                lines.push(format!("leak {}: known, smaller: +{} -> +{}", leak.group, was.unwrap_or(0), leak.growth))
            }
            _ => {}
        }
    }
    let now = Baseline::of(new);
    let mut gone: Vec<String> = old
        .leaks
        .iter()
        .filter(|l| now.standing(l).0 == Standing::New)
        .map(|l| format!("leak {}: gone (was +{})", l.group, l.growth))
        .collect();
    gone.dedup();
    lines.extend(gone);
    if old.stalls.len() != new.stalls.len() {
        lines.push(format!("stalls: {} -> {}", old.stalls.len(), new.stalls.len()));
    }
    if old.shutdown.outcome != new.shutdown.outcome {
        lines.push(format!("shutdown: {} -> {}", old.shutdown.outcome.name(), new.shutdown.outcome.name()));
    }
    if lines.is_empty() {
        lines.push(format!(
            "No change: {} tests, {} leaks, verdict {}",
            new.tests.len(),
            new.leaks.len(),
            verdict_name(new.verdict)
        ));
    }
    lines
}

/// A verdict as report.json names it.
fn verdict_name(v: Verdict) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
