//! Naming the culprit in a stack, so the terminal can say where something waits without
//! the user opening a stack file: the innermost frame in the server's own code (not the
//! standard library, tokio, hangcheck or a dependency), and for an async task the leaf
//! future it is parked on (`tokio::sync::Notified`, `Mutex::lock`, …).

use std::collections::BTreeMap;

use hangcheck_runtime::protocol::{Frame, Stacks};
use serde::{Deserialize, Serialize};

/// Function-name prefixes that are never the server's own code.
const NOT_OURS: [&str; 10] = [
    "std::",
    "core::",
    "alloc::",
    "tokio::",
    "backtrace::",
    "<",
    "__",
    "hangcheck_runtime::",
    "parking_lot",
    "futures",
];

/// Whether a frame (function name and file) is in the server's own code.
fn is_ours(function: &str, file: &str) -> bool {
    function.contains("::")
        && !NOT_OURS.iter().any(|p| function.starts_with(p))
        && !file.contains("/rustc/")
        && !file.contains("/.cargo/registry/")
        && !file.contains("/.cargo/git/")
}

/// The innermost frame of a thread stack (innermost first) in the server's own code, as
/// `function at file:line`.
pub fn in_frames(frames: &[Frame]) -> Option<String> {
    frames
        .iter()
        .find(|f| f.function.as_deref().is_some_and(|name| is_ours(name, f.file.as_deref().unwrap_or(""))))
        .map(|f| match (&f.file, f.line) {
            (Some(file), Some(line)) => format!("{} at {file}:{line}", f.function.as_deref().unwrap_or("?")),
            _ => f.function.clone().unwrap_or_default(),
        })
}

/// Where some tasks wait: the same innermost own frame and the same leaf, with a count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// How many tasks wait there.
    pub count: u64,
    /// The innermost function of the server's own code in the await chain.
    pub function: Option<String>,
    /// Its `file:line`, the file relative to the workspace where it lies inside it.
    pub location: Option<String>,
    /// The future at the leaf of the chain, as a type path (`tokio::sync::Notified`).
    pub on: Option<String>,
}

impl Waiting {
    /// `3 × waiting in app::subscribe (src/cmd/subscribe.rs:196) on tokio::sync::Notified`.
    pub fn describe(&self) -> String {
        let place = match (&self.function, &self.location) {
            (Some(f), Some(l)) => format!("in {f} ({l})"),
            (Some(f), None) => format!("in {f}"),
            (None, _) => "outside the server's own code".to_owned(),
        };
        let on = self.on.as_deref().map(|o| format!(" on {o}")).unwrap_or_default();
        format!("{} × waiting {place}{on}", self.count)
    }

    /// Whether the leaf is a lock (a mutex, read-write lock or semaphore permit).
    pub fn on_a_lock(&self) -> bool {
        self.on.as_deref().is_some_and(|on| ["Mutex", "RwLock", "Semaphore", "Acquire"].iter().any(|l| on.contains(l)))
    }

    /// Whether the tasks wait to read or accept from a socket or a file: what an idle
    /// connection does. Every hang of a connection server has such tasks; the wait that
    /// explains a hang is more often on the server's own synchronisation.
    pub fn on_io(&self) -> bool {
        self.on.as_deref().is_some_and(|on| on.starts_with("tokio::io::") || on.starts_with("tokio::net::"))
    }
}

/// One frame of tokio's rendered await tree: `╼ function at file:line:column`.
fn trace_frames(trace: &str) -> Vec<(String, Option<String>)> {
    trace
        .lines()
        .filter_map(|line| {
            let frame = line.trim_start().trim_start_matches("└╼").trim_start_matches('╼').trim();
            if frame.is_empty() {
                return None;
            }
            Some(match frame.rsplit_once(" at ") {
                Some((function, location)) => (function.to_owned(), Some(location.to_owned())),
                None => (frame.to_owned(), None),
            })
        })
        .collect()
}

/// `<tokio::sync::oneshot::Receiver<T> as core::future::Future>` → `tokio::sync::oneshot::Receiver`;
/// `tokio::sync::mutex::Mutex<T>::lock` → `tokio::sync::mutex::Mutex::lock`;
/// `tokio::sync::notify::Notified::poll` → `tokio::sync::notify::Notified`.
fn type_path(function: &str) -> String {
    let inner = function.strip_prefix('<').map(|f| f.split(" as ").next().unwrap_or(f)).unwrap_or(function);
    let mut path = String::new();
    let mut depth = 0usize;
    for c in inner.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => path.push(c),
            _ => {}
        }
    }
    let path = path.trim_end_matches("::{{closure}}");
    path.strip_suffix("::poll").unwrap_or(path).to_owned()
}

/// `file:line:column` → `file:line`, with `root` (the workspace) cut from the front.
fn short_location(location: &str, root: &str) -> String {
    let relative = location.strip_prefix(root).map(|l| l.trim_start_matches('/')).unwrap_or(location);
    match relative.rsplit_once(':') {
        Some((file_line, column)) if column.chars().all(|c| c.is_ascii_digit()) && file_line.contains(':') => {
            file_line.to_owned()
        }
        _ => relative.to_owned(),
    }
}

/// Where one task waits, read off its await tree.
pub fn in_trace(trace: &str, root: &str) -> Waiting {
    let frames = trace_frames(trace);
    let ours = frames.iter().rposition(|(f, l)| is_ours(f, l.as_deref().unwrap_or("")));
    let leaf = match ours {
        Some(i) => frames.get(i + 1).or(frames.last()).filter(|_| i + 1 < frames.len()),
        None => frames.last(),
    };
    Waiting {
        count: 1,
        function: ours.map(|i| frames[i].0.trim_end_matches("::{{closure}}").to_owned()),
        location: ours.and_then(|i| frames[i].1.as_deref().map(|l| short_location(l, root))),
        on: leaf.map(|(f, _)| type_path(f)),
    }
}

/// Tasks grouped by where they wait: waits on anything but I/O first (see
/// [`Waiting::on_io`]), most first within each; `traces` are (count, await tree) pairs,
/// already grouped by identical trace on the agent's side; traces that differ only
/// outside the server's own frame and leaf fold together here.
pub fn summarize<'a>(traces: impl IntoIterator<Item = (u64, &'a str)>, root: &str) -> Vec<Waiting> {
    /// (function, location, leaf)
    type Place = (Option<String>, Option<String>, Option<String>);
    let mut by_place: BTreeMap<Place, u64> = BTreeMap::new();
    for (count, trace) in traces {
        let w = in_trace(trace, root);
        *by_place.entry((w.function, w.location, w.on)).or_default() += count;
    }
    let mut out: Vec<Waiting> = by_place
        .into_iter()
        .map(|((function, location, on), count)| Waiting { count, function, location, on })
        .collect();
    out.sort_by_key(|w| (w.on_io(), std::cmp::Reverse(w.count)));
    out
}

/// Where the async tasks of an agent's stacks wait, for the tasks whose group `wanted`
/// accepts; `root` is cut from the front of file names.
pub fn waiting_in(stacks: &Stacks, wanted: impl Fn(Option<&str>) -> bool, root: &str) -> Vec<Waiting> {
    let Some(dump) = &stacks.tasks else { return Vec::new() };
    // Agents group identical traces with a count; older ones send one entry per task.
    let single = dump.tasks.iter().filter(|t| wanted(t.group.as_deref())).map(|t| (1, t.trace.as_str()));
    let grouped = dump.groups.iter().filter(|g| wanted(g.group.as_deref())).map(|g| (g.count, g.trace.as_str()));
    summarize(single.chain(grouped), root)
}

/// Threads blocked in the server's own code (in a syscall or a lock, not parked in the
/// runtime), each as `"name" (tid N) in function at file:line`. A thread whose stack runs
/// through tokio between its innermost frame and its own code is parked by the runtime
/// (a `block_on` in `main`, an idle worker), not blocked by the server.
pub fn blocked_threads(stacks: &Stacks, root: &str) -> Vec<String> {
    stacks
        .threads
        .iter()
        .filter_map(|t| {
            let ours = t.frames.iter().position(|f| {
                f.function.as_deref().is_some_and(|name| is_ours(name, f.file.as_deref().unwrap_or("")))
            })?;
            let in_runtime =
                t.frames[..ours].iter().any(|f| f.function.as_deref().is_some_and(|n| n.starts_with("tokio::")));
            if in_runtime {
                return None;
            }
            let f = &t.frames[ours];
            let at = match (&f.file, f.line) {
                (Some(file), Some(line)) => format!(" at {}:{line}", short_location(file, root)),
                _ => String::new(),
            };
            Some(format!("\"{}\" (tid {}) in {}{at}", t.name, t.tid, f.function.as_deref().unwrap_or("?")))
        })
        .collect()
}

/// The lock note for a hung test: two or more of its tasks each wait on a lock.
pub fn lock_note(waiting: &[Waiting]) -> Option<String> {
    let on_locks: Vec<&Waiting> = waiting.iter().filter(|w| w.on_a_lock()).collect();
    let tasks: u64 = on_locks.iter().map(|w| w.count).sum();
    (tasks >= 2).then(|| {
        let places: Vec<&str> = on_locks.iter().filter_map(|w| w.function.as_deref()).collect();
        format!(
            "{tasks} tasks each wait on a lock ({}): if each holds a lock another waits for, this is a deadlock; take the locks in one order",
            places.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONESHOT: &str = "╼ hangcheck_runtime::api::spawn at /w/hangcheck-runtime/src/lib.rs:143:20
  └╼ never_answers::serve at /w/examples/never-answers/src/main.rs:49:80
     └╼ never_answers::next_message at /w/examples/never-answers/src/main.rs:63:14
        └╼ <tokio::sync::oneshot::Receiver<T> as core::future::future::Future> at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/sync/oneshot.rs:1287:36
           └╼ tokio::sync::oneshot::Inner<T> at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/sync/oneshot.rs:1318:16";

    #[test]
    fn names_the_innermost_own_function_and_the_leaf_it_awaits() {
        let w = in_trace(ONESHOT, "/w");
        assert_eq!(w.function.as_deref(), Some("never_answers::next_message"));
        assert_eq!(w.location.as_deref(), Some("examples/never-answers/src/main.rs:63"));
        assert_eq!(w.on.as_deref(), Some("tokio::sync::oneshot::Receiver"));
        assert_eq!(
            w.describe(),
            "1 × waiting in never_answers::next_message (examples/never-answers/src/main.rs:63) on tokio::sync::oneshot::Receiver"
        );
        assert!(!w.on_a_lock());
    }

    #[test]
    fn closures_and_poll_methods_read_as_their_function_and_type() {
        let trace = "╼ app::subscribe::{{closure}} at /w/src/cmd/subscribe.rs:196:9
  └╼ tokio::sync::notify::Notified::poll at /root/.cargo/registry/src/tokio-1.54.1/src/sync/notify.rs:1:1";
        let w = in_trace(trace, "/w");
        assert_eq!(w.function.as_deref(), Some("app::subscribe"));
        assert_eq!(w.location.as_deref(), Some("src/cmd/subscribe.rs:196"));
        assert_eq!(w.on.as_deref(), Some("tokio::sync::notify::Notified"));
    }

    #[test]
    fn identical_places_fold_with_their_counts_and_locks_are_recognised() {
        let lock = "╼ app::transfer at /w/src/bank.rs:10:5
  └╼ tokio::sync::mutex::Mutex<T>::lock at /root/.cargo/registry/src/tokio/src/sync/mutex.rs:1:1";
        let summary = summarize([(2, lock), (1, ONESHOT), (3, lock)], "/w");
        assert_eq!(summary.len(), 2);
        assert_eq!(summary[0].count, 5);
        assert_eq!(summary[0].on.as_deref(), Some("tokio::sync::mutex::Mutex::lock"));
        assert!(summary[0].on_a_lock());
    }

    #[test]
    fn an_idle_connections_read_comes_after_the_wait_that_explains_a_hang() {
        let read = "╼ chat::serve at /w/src/main.rs:31:5
  └╼ tokio::io::util::lines::Lines<R>::next_line at /root/.cargo/registry/src/tokio/src/io/util/lines.rs:1:1";
        let notified = "╼ chat::serve at /w/src/main.rs:49:5
  └╼ tokio::sync::notify::Notified::poll at /root/.cargo/registry/src/tokio/src/sync/notify.rs:1:1";
        let summary = summarize([(3, read), (1, notified)], "/w");
        assert_eq!(summary[0].on.as_deref(), Some("tokio::sync::notify::Notified"), "{summary:?}");
        assert!(summary[1].on_io() && !summary[0].on_io());
    }

    #[test]
    fn a_thread_parked_by_the_runtime_is_not_blocked_by_the_server() {
        use hangcheck_runtime::protocol::{StackSource, ThreadStack};
        let frame = |f: &str, file: &str| Frame { function: Some(f.into()), file: Some(file.into()), line: Some(7) };
        let thread = |name: &str, frames: Vec<Frame>| ThreadStack {
            tid: 1,
            name: name.into(),
            state: "S".into(),
            note: None,
            frames,
        };
        let stacks = Stacks {
            source: StackSource::Agent,
            took_ms: 1,
            tasks: None,
            threads: vec![
                thread(
                    "main",
                    vec![
                        frame("tokio::runtime::park::Inner::park", "/r/.cargo/registry/t.rs"),
                        frame("app::main", "/w/src/main.rs"),
                    ],
                ),
                thread(
                    "tokio-runtime-worker",
                    vec![
                        frame("std::thread::sleep", "/rustc/x/thread.rs"),
                        frame("app::audit", "/w/src/main.rs"),
                        frame("tokio::runtime::task::poll", "/r/.cargo/registry/t.rs"),
                    ],
                ),
            ],
        };
        assert_eq!(
            blocked_threads(&stacks, "/w"),
            vec!["\"tokio-runtime-worker\" (tid 1) in app::audit at src/main.rs:7"]
        );
    }

    #[test]
    fn a_thread_stacks_culprit_skips_library_frames() {
        let frames = vec![
            Frame { function: Some("std::thread::sleep".into()), file: Some("/rustc/x/std.rs".into()), line: Some(1) },
            Frame { function: Some("app::audit".into()), file: Some("src/main.rs".into()), line: Some(40) },
        ];
        assert_eq!(in_frames(&frames).as_deref(), Some("app::audit at src/main.rs:40"));
    }
}
