//! Reading what a libtest binary printed: the panic that failed a test.
//!
//! A failed test's log ends with the panic (`--nocapture` prints it inline), so the runner
//! reads only the end of the log, however much the test printed before.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How much of a log's end is searched for the panic.
const SEARCHED: u64 = 64 * 1024;
/// How many lines of a panic's message are kept.
const MESSAGE_LINES: usize = 12;

/// Why a test failed, as its panic said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Panic {
    /// The message: the assertion and its `left`/`right` lines, or the panic's text.
    pub message: String,
    /// Where it panicked, `file:line:column`.
    pub location: Option<String>,
    /// The thread that panicked (the test's name, for a panic in the test itself).
    pub thread: Option<String>,
}

/// The last panic in the log at `path`, if the end of it holds one.
pub fn last_panic(path: &Path) -> Option<Panic> {
    parse_last_panic(&read_end(path, SEARCHED, 0))
}

/// Why a trial of a hangcheck harness failed, from what the harness printed after
/// `offset` in its log (the log is shared by every trial of the process): the panic, if
/// it panicked, and the message libtest-mimic printed under `---- name ----` (the
/// trial's error, or `test panicked: …`).
pub fn trial_failure(path: &Path, offset: u64, name: &str) -> (Option<Panic>, Option<String>) {
    let text = read_end(path, SEARCHED, offset);
    let header = format!("---- {name} ----");
    let message = text.lines().skip_while(|l| *l != header).skip(1).take_while(|l| !l.is_empty());
    let message: Vec<&str> = message.take(MESSAGE_LINES).collect();
    (parse_last_panic(&text), (!message.is_empty()).then(|| message.join("\n")))
}

/// Up to `max` bytes from the end of the file, none before `from`, lossily as text.
fn read_end(path: &Path, max: u64, from: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max).max(from)));
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Finds the last `thread '…' panicked at …` in libtest output. Both layouts are read:
/// since Rust 1.73 the location ends the first line and the message follows on its own
/// lines; before, the message was quoted on the first line (`panicked at 'msg', loc`).
fn parse_last_panic(text: &str) -> Option<Panic> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().rposition(|l| l.starts_with("thread '") && l.contains(" panicked at "))?;
    let first = lines[start];
    // `thread 'name' panicked at`, or in newer Rust `thread 'name' (tid) panicked at`.
    let (who, after) = first.strip_prefix("thread '")?.split_once(" panicked at ")?;
    let thread = who.rsplit_once('\'').map(|(name, _)| name.to_owned());
    if let Some(quoted) = after.strip_prefix('\'') {
        // Old layout: 'message', file:line:col
        let (message, location) = quoted.rsplit_once("', ").unwrap_or((quoted, ""));
        let location = (!location.is_empty()).then(|| location.to_owned());
        return Some(Panic { message: message.to_owned(), location, thread });
    }
    let location = after.strip_suffix(':').unwrap_or(after).trim();
    let message: Vec<&str> =
        lines[start + 1..].iter().take_while(|l| !is_after_message(l)).take(MESSAGE_LINES).copied().collect();
    Some(Panic {
        message: message.join("\n").trim_end().to_owned(),
        location: (!location.is_empty()).then(|| location.to_owned()),
        thread,
    })
}

/// Lines libtest or the panic hook print after a panic's message.
fn is_after_message(line: &str) -> bool {
    line.starts_with("note: ")
        || line.starts_with("stack backtrace:")
        || line.starts_with("test ")
        || line.starts_with("thread '")
        || line.starts_with("failures:")
        || line.starts_with("error: test failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_assertion_with_its_left_and_right() {
        let log = "\nrunning 1 test\nthread 'greets' (4242) panicked at tests/smoke.rs:12:5:\nassertion `left == right` failed\n  left: \"bye\\n\"\n right: \"hi\\n\"\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\ntest greets ... FAILED\n";
        let p = parse_last_panic(log).unwrap();
        assert_eq!(p.location.as_deref(), Some("tests/smoke.rs:12:5"));
        assert_eq!(p.thread.as_deref(), Some("greets"));
        assert_eq!(p.message, "assertion `left == right` failed\n  left: \"bye\\n\"\n right: \"hi\\n\"");
    }

    #[test]
    fn reads_the_old_layout_and_takes_the_last_panic() {
        let log = "thread 'a' panicked at 'first', src/a.rs:1:1\nthread 'main' panicked at 'boom', tests/e2e.rs:9:5\n";
        let p = parse_last_panic(log).unwrap();
        assert_eq!((p.message.as_str(), p.location.as_deref()), ("boom", Some("tests/e2e.rs:9:5")));
    }

    #[test]
    fn no_panic_no_answer_and_long_messages_are_cut() {
        assert_eq!(parse_last_panic("running 1 test\ntest a ... ok\n"), None);
        let long = format!("thread 't' panicked at x.rs:1:1:\n{}", "line\n".repeat(100));
        assert_eq!(parse_last_panic(&long).unwrap().message.lines().count(), MESSAGE_LINES);
    }

    #[test]
    fn a_trial_failure_is_read_from_its_own_part_of_a_shared_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("harness-1.log");
        let earlier =
            "thread 'main' panicked at tests/e2e.rs:1:1:\nan earlier trial\nnote: run with `RUST_BACKTRACE=1`\n";
        let trial = "\nrunning 1 test\ntest fails ... FAILED\n\nfailures:\n\n---- fails ----\nexpected PONG, got \"\"\n\n\nfailures:\n    fails\n";
        std::fs::write(&path, format!("{earlier}{trial}")).unwrap();
        let (panic, message) = trial_failure(&path, earlier.len() as u64, "fails");
        assert_eq!(panic, None, "an earlier trial's panic is not this one's");
        assert_eq!(message.as_deref(), Some("expected PONG, got \"\""));
        let (panic, _) = trial_failure(&path, 0, "fails");
        assert_eq!(panic.unwrap().message, "an earlier trial");
    }

    #[test]
    fn only_the_end_of_a_huge_log_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nthread 't' panicked at tests/e2e.rs:3:9:\nexpected PONG\n");
        std::fs::write(&path, text).unwrap();
        let p = last_panic(&path).unwrap();
        assert_eq!((p.message.as_str(), p.location.as_deref()), ("expected PONG", Some("tests/e2e.rs:3:9")));
    }
}
