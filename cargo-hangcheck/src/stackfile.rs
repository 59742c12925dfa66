//! A stack file a person can read: what matters first, the runtime's own frames folded.
//!
//! The order is the order of a diagnosis: a summary (where the tasks that matter wait, and
//! threads blocked in the server's own code), then every async task grouped by identical
//! trace, then every thread. Runs of frames inside tokio, std or hangcheck are folded into
//! one line (`… 14 frames of std, tokio`); the full frames stay in the `.stacks.json`
//! written beside each stack file.

use std::collections::BTreeSet;
use std::fmt::Write;

use hangcheck_runtime::protocol::{Frame, Stacks, TaskDump, ThreadStack};

/// Crates whose frames are the runtime's machinery, not the server's logic.
const MACHINERY: [&str; 8] =
    ["tokio", "std", "core", "alloc", "hangcheck_runtime", "backtrace", "futures_util", "futures_core"];

/// The crate a function belongs to, when it is part of the machinery: `<tokio::x as
/// core::Future>::poll` → `tokio`; `__libc_start_main`, unknown frames → `libc`.
fn machinery(function: Option<&str>) -> Option<&'static str> {
    let Some(name) = function else { return Some("libc") };
    if name.starts_with("__") || !name.contains("::") {
        return Some("libc");
    }
    let first = name.trim_start_matches('<').trim_start_matches('&').trim_start_matches("dyn ");
    let first = first.split("::").next().unwrap_or("");
    MACHINERY.iter().find(|c| **c == first).copied()
}

/// Frames (innermost first) as lines, runs of two or more machinery frames folded. The
/// innermost frame always shows: it says what the thread is doing (a futex, `epoll_wait`).
fn fold<'a>(frames: impl IntoIterator<Item = (Option<&'a str>, String)>, indent: &str) -> String {
    let mut out = String::new();
    let mut run: Vec<String> = Vec::new();
    let mut crates: BTreeSet<&str> = BTreeSet::new();
    let flush = |out: &mut String, run: &mut Vec<String>, crates: &mut BTreeSet<&str>| {
        if run.len() >= 2 {
            let names: Vec<&str> = crates.iter().copied().collect();
            let _ = writeln!(out, "{indent}… {} frames of {}", run.len(), names.join(", "));
        } else {
            for line in run.iter() {
                let _ = writeln!(out, "{indent}{line}");
            }
        }
        run.clear();
        crates.clear();
    };
    for (i, (function, line)) in frames.into_iter().enumerate() {
        match machinery(function) {
            Some(krate) if i > 0 => {
                run.push(line);
                crates.insert(krate);
            }
            _ => {
                flush(&mut out, &mut run, &mut crates);
                let _ = writeln!(out, "{indent}{line}");
            }
        }
    }
    flush(&mut out, &mut run, &mut crates);
    out
}

/// `function` and, below it, `at file:line`.
fn frame_line(f: &Frame) -> String {
    let function = f.function.as_deref().unwrap_or("??");
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{function}\n      at {file}:{line}"),
        (Some(file), None) => format!("{function}\n      at {file}"),
        _ => function.to_owned(),
    }
}

/// One thread, its frames folded.
pub fn thread(t: &ThreadStack) -> String {
    let mut out = format!("\nthread {} \"{}\" state {}\n", t.tid, t.name, t.state);
    if let Some(note) = &t.note {
        let _ = writeln!(out, "  ({note})");
    }
    let frames = t.frames.iter().map(|f: &Frame| (f.function.as_deref(), frame_line(f)));
    out.push_str(&fold(frames, "  "));
    out
}

/// One async trace as tokio renders it (`╼ function at file:line`, nested), its
/// machinery frames folded; the outermost frame is the task's own and always shows.
fn trace(trace: &str) -> String {
    let frames = trace.lines().map(|line| {
        let function = line.trim_start().trim_start_matches("└╼").trim_start_matches('╼').trim();
        let function = function.rsplit_once(" at ").map_or(function, |(f, _)| f);
        (Some(function), line.trim().to_owned())
    });
    // Await trees read outermost first; fold in that order and keep the first (the task).
    fold(frames, "  ")
}

fn tasks(out: &mut String, dump: &TaskDump) {
    if let Some(why) = &dump.skipped {
        let _ = writeln!(out, "\n== async tasks: not dumped: {why}");
        return;
    }
    let total: u64 = dump.groups.iter().map(|g| g.count).sum::<u64>() + dump.tasks.len() as u64 + dump.omitted;
    let distinct = dump.groups.len() + dump.tasks.len();
    let _ = writeln!(out, "\n== async tasks: {total}, {distinct} distinct stacks, dumped in {} ms", dump.took_ms);
    if let Some(note) = &dump.note {
        let _ = writeln!(out, "{} tasks not shown: {note}", dump.omitted);
    }
    for why in &dump.runtimes_skipped {
        let _ = writeln!(out, "not dumped: {why}");
    }
    for g in &dump.groups {
        let ids: Vec<String> = g.ids.iter().map(u64::to_string).collect();
        let more = if g.count > g.ids.len() as u64 { ", …" } else { "" };
        let _ = writeln!(
            out,
            "\n{} {} of group {} spawned at {} (ids {}{more})",
            g.count,
            if g.count == 1 { "task" } else { "tasks" },
            g.group.as_deref().unwrap_or("?"),
            g.location.as_deref().unwrap_or("?"),
            ids.join(", ")
        );
        out.push_str(&self::trace(&g.trace));
    }
    for t in &dump.tasks {
        let group = t.group.as_deref().unwrap_or("?");
        let location = t.location.as_deref().unwrap_or("?");
        let _ = writeln!(out, "\ntask {} of group {group} spawned at {location}", t.id);
        out.push_str(&self::trace(&t.trace));
    }
}

/// The whole file body: `summary` lines first, then async tasks, then threads.
pub fn render(stacks: &Stacks, summary: &[String]) -> String {
    let mut out = String::new();
    if !summary.is_empty() {
        out.push_str("== summary\n");
        for line in summary {
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(dump) = &stacks.tasks {
        tasks(&mut out, dump);
    }
    let _ = writeln!(out, "\n== threads: {}, taken in {} ms", stacks.threads.len(), stacks.took_ms);
    for t in &stacks.threads {
        out.push_str(&thread(t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangcheck_runtime::protocol::{AsyncTaskGroup, StackSource};

    fn frame(function: &str, file: &str) -> Frame {
        Frame { function: Some(function.into()), file: Some(file.into()), line: Some(1) }
    }

    #[test]
    fn runtime_frames_fold_and_the_servers_stay() {
        let t = ThreadStack {
            tid: 7,
            name: "tokio-rt-worker".into(),
            state: "S".into(),
            note: None,
            frames: vec![
                frame("syscall", "libc.c"),
                frame("std::thread::sleep", "/rustc/std.rs"),
                frame("std::thread::sleep_ms", "/rustc/std.rs"),
                frame("app::audit", "src/main.rs"),
                frame("tokio::runtime::task::poll", "/r/tokio.rs"),
                frame("tokio::runtime::worker::run", "/r/tokio.rs"),
                frame("std::thread::start", "/rustc/std.rs"),
            ],
        };
        let text = thread(&t);
        assert!(text.contains("syscall"), "the innermost frame shows: {text}");
        assert!(text.contains("… 2 frames of std\n"), "{text}");
        assert!(text.contains("app::audit"), "{text}");
        assert!(text.contains("… 3 frames of std, tokio\n"), "{text}");
        assert!(!text.contains("worker::run"), "{text}");
    }

    #[test]
    fn the_summary_comes_first_then_tasks_then_threads() {
        let stacks = Stacks {
            source: StackSource::Agent,
            took_ms: 3,
            threads: vec![ThreadStack { tid: 1, name: "main".into(), state: "S".into(), note: None, frames: vec![] }],
            tasks: Some(TaskDump {
                tasks: vec![],
                groups: vec![AsyncTaskGroup {
                    count: 3,
                    group: Some("waiter".into()),
                    location: Some("src/main.rs:9".into()),
                    ids: vec![4, 5, 6],
                    trace: "╼ app::wait at /w/src/main.rs:10:5\n  └╼ tokio::sync::notify::Notified at /r/n.rs:1:1\n     └╼ tokio::sync::notify::Inner at /r/n.rs:2:1".into(),
                }],
                omitted: 0,
                note: None,
                skipped: None,
                took_ms: 1,
                runtimes_skipped: vec!["the current-thread runtime `listener-2` did not poll the dump task".into()],
            }),
        };
        let text = render(&stacks, &["1 × waiting in app::wait".to_owned()]);
        assert!(text.contains("\nnot dumped: the current-thread runtime `listener-2` did not poll"), "{text}");
        let (summary, tasks, threads) =
            (text.find("== summary").unwrap(), text.find("== async tasks").unwrap(), text.find("== threads").unwrap());
        assert!(summary < tasks && tasks < threads, "{text}");
        assert!(text.contains("3 tasks of group waiter") && text.contains("╼ app::wait"), "{text}");
        assert!(text.contains("… 2 frames of tokio"), "{text}");
    }
}
