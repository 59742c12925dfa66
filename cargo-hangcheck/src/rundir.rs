//! The run directory: everything a run writes, each artifact durable (written, fsynced,
//! renamed into place, directory fsynced) before anything that depends on it happens.
//!
//! Layout, under `<target-dir>/hangcheck/runs/<id>/` (with `runs/latest` pointing at the
//! newest run):
//!
//! ```text
//! server.log          the server's stdout and stderr
//! snapshots.jsonl     one settled snapshot per line: baseline, each test, final
//! tests/<name>.log    each test's output
//! report.json         the report (docs/report-format.md)
//! junit.xml           the same for CI systems
//! ```
//!
//! [`Evidence`] can only be made by writing something here durably (or by saying
//! explicitly that there is none), and signalling a process takes one: the rule
//! "evidence on disk before a signal" lives in the types.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The directory of one run.
#[derive(Clone)]
pub struct RunDir {
    path: PathBuf,
}

/// Proof that what was known about a process is on disk before it is signalled.
#[derive(Debug, Clone)]
#[must_use]
pub struct Evidence {
    /// Files written (and fsynced) about the process.
    pub files: Vec<PathBuf>,
}

impl Evidence {
    /// No evidence, for a reason stated at the call site (a clean stop, a process that
    /// already exited), so that every signal path says why it has nothing to save.
    pub fn none(_because: &'static str) -> Evidence {
        Evidence { files: Vec::new() }
    }
}

impl RunDir {
    /// Creates a fresh run directory under `root` and points `root/latest` at it.
    pub fn create(root: &Path) -> io::Result<RunDir> {
        fs::create_dir_all(root)?;
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let path = root.join(format!("{stamp}-{}", std::process::id()));
        fs::create_dir_all(path.join("tests"))?;
        // `latest` is a convenience; a failure to update it loses nothing.
        let latest = root.join("latest");
        let tmp = root.join(format!(".latest-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        if std::os::unix::fs::symlink(path.file_name().unwrap_or_default(), &tmp).is_ok() {
            let _ = fs::rename(&tmp, &latest);
        }
        Ok(RunDir { path })
    }

    /// An existing directory, to write into (`cargo hangcheck merge`'s output).
    pub fn at(path: &Path) -> RunDir {
        RunDir { path: path.to_owned() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a whole file durably: to a temporary name, fsync, rename, fsync the directory.
    pub fn write_durable(&self, name: impl AsRef<Path>, bytes: &[u8]) -> io::Result<PathBuf> {
        let dest = self.path.join(name);
        let dir = dest.parent().unwrap_or(&self.path).to_owned();
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", dest.file_name().unwrap_or_default().to_string_lossy()));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &dest)?;
        File::open(&dir)?.sync_all()?;
        Ok(dest)
    }

    /// Writes several evidence files; those that cannot be written are reported and
    /// left out (a missing file must not keep a hung process alive forever).
    pub fn write_all_evidence(&self, files: &[(String, Vec<u8>)]) -> Evidence {
        let mut evidence = Evidence { files: Vec::new() };
        for (name, bytes) in files {
            match self.write_durable(name, bytes) {
                Ok(path) => evidence.files.push(path),
                Err(e) => eprintln!("warning: cannot write {name}: {e}"),
            }
        }
        evidence
    }

    /// Appends one line to a file and fsyncs it.
    pub fn append_line(&self, name: impl AsRef<Path>, line: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(self.path.join(name))?;
        let mut buf = line.to_vec();
        buf.push(b'\n');
        f.write_all(&buf)?;
        f.sync_data()
    }

    /// Opens a log file for a child's output.
    pub fn log_file(&self, name: impl AsRef<Path>) -> io::Result<(File, PathBuf)> {
        let path = self.path.join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        Ok((File::create(&path)?, path))
    }
}

/// How much of a log's end [`tail`] reads: a test that printed gigabytes costs the
/// runner this much, not the whole file.
const TAIL_BYTES: u64 = 64 * 1024;

/// The longest line [`tail`] shows; the rest of it is cut with a mark.
const TAIL_LINE: usize = 500;

/// The last `n` lines of a log file, for error messages; empty if it cannot be read.
/// Only the last 64 KiB are read, from the end.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.take(TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line read is probably cut at its start.
        lines.remove(0);
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| match l.char_indices().nth(TAIL_LINE) {
            Some((cut, _)) => format!("{} [line cut at {TAIL_LINE} characters]", &l[..cut]),
            None => l.to_string(),
        })
        .collect()
}

/// A test id or name as a file name that CI artifact stores take: `::` becomes `.`, and
/// anything but letters, digits, `.`, `-` and `_` becomes `_`.
pub fn file_name(id: &str) -> String {
    id.replace("::", ".")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_have_no_colons_or_separators() {
        assert_eq!(file_name("e2e::tests::hangs_forever"), "e2e.tests.hangs_forever");
        assert_eq!(file_name("a/b c:d"), "a_b_c_d");
    }

    #[test]
    fn durable_write_replaces_and_latest_points_at_the_run() {
        let root = tempfile::tempdir().unwrap();
        let run = RunDir::create(root.path()).unwrap();
        run.write_durable("a.txt", b"one").unwrap();
        let ev = run.write_all_evidence(&[("stacks/a.txt".to_owned(), b"two".to_vec())]);
        assert_eq!(fs::read(&ev.files[0]).unwrap(), b"two");
        assert_eq!(fs::read(run.join("a.txt")).unwrap(), b"one");
        assert_eq!(fs::canonicalize(root.path().join("latest")).unwrap(), fs::canonicalize(run.path()).unwrap());
        run.append_line("s.jsonl", b"{}").unwrap();
        run.append_line("s.jsonl", b"{}").unwrap();
        assert_eq!(fs::read_to_string(run.join("s.jsonl")).unwrap(), "{}\n{}\n");
        assert_eq!(tail(&run.join("s.jsonl"), 1), vec!["{}".to_string()]);
    }

    #[test]
    fn tail_reads_only_the_end_of_a_big_log() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("big.log");
        let mut text = "x".repeat(1000) + "\n";
        text = text.repeat(1000);
        text.push_str(&"y".repeat(2000));
        text.push_str("\nlast line\n");
        fs::write(&path, text).unwrap();
        let lines = tail(&path, 2);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("yyy") && lines[0].ends_with("[line cut at 500 characters]"), "{lines:?}");
        assert_eq!(lines[1], "last line");
    }
}
