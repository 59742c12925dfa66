//! GitHub Actions output, when `GITHUB_ACTIONS=true`: a workflow-command annotation
//! (`::error file=…,line=…::`) at each leak's spawn location, each hung test's waits and
//! each stall's frame, so the findings show on the pull request's diff; and a Markdown
//! summary of the run appended to `$GITHUB_STEP_SUMMARY`, shown on the run's page.
//!
//! A file is given relative to the repository (`$GITHUB_WORKSPACE`), as GitHub wants it;
//! a finding with no place in the repository is annotated without one. A leak that
//! `--fail-on` lets through is a warning, not an error.

use std::io::Write;
use std::path::PathBuf;

use super::{Report, Reporter, ShutdownOutcome, TestOutcome};
use crate::event::Event;

/// Prints annotations when the run is over and appends the step summary.
pub struct GithubActions {
    /// Annotations go to stderr when stdout carries JSON lines (GitHub reads both).
    to_stderr: bool,
    /// `$GITHUB_WORKSPACE`, cut from the front of absolute file names.
    workspace: Option<String>,
    /// `$GITHUB_STEP_SUMMARY`.
    summary: Option<PathBuf>,
}

impl GithubActions {
    /// The reporter, when `GITHUB_ACTIONS` is `true`.
    pub fn from_env(to_stderr: bool) -> Option<GithubActions> {
        (std::env::var("GITHUB_ACTIONS").ok()? == "true").then(|| GithubActions {
            to_stderr,
            workspace: std::env::var("GITHUB_WORKSPACE").ok().filter(|w| !w.is_empty()),
            summary: std::env::var_os("GITHUB_STEP_SUMMARY").filter(|s| !s.is_empty()).map(PathBuf::from),
        })
    }
}

/// One annotation.
struct Annotation {
    level: &'static str,
    title: String,
    place: Option<(String, u32)>,
    message: String,
}

impl Annotation {
    fn render(&self) -> String {
        let mut props = Vec::new();
        if let Some((file, line)) = &self.place {
            props.push(format!("file={},line={line}", property(file)));
        }
        props.push(format!("title={}", property(&self.title)));
        format!("::{} {}::{}", self.level, props.join(","), data(&self.message))
    }
}

/// A workflow command's message: `%`, CR and LF escaped.
fn data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// A workflow command's property: also `:` and `,`.
fn property(s: &str) -> String {
    data(s).replace(':', "%3A").replace(',', "%2C")
}

/// `file:line` or `file:line:col` as a file and a line.
fn file_line(location: &str) -> Option<(&str, u32)> {
    let (rest, last) = location.rsplit_once(':')?;
    let last: u32 = last.parse().ok()?;
    match rest.rsplit_once(':').map(|(file, line)| (file, line.parse::<u32>())) {
        Some((file, Ok(line))) => Some((file, line)),
        _ => Some((rest, last)),
    }
}

impl GithubActions {
    /// A place in the repository, or none for a file outside it (a dependency, std).
    fn place(&self, location: &str) -> Option<(String, u32)> {
        let (file, line) = file_line(location)?;
        if !file.starts_with('/') {
            return Some((file.to_owned(), line));
        }
        let root = self.workspace.as_deref()?.trim_end_matches('/');
        let inside = file.strip_prefix(root)?.strip_prefix('/')?;
        Some((inside.to_owned(), line))
    }

    fn annotations(&self, report: &Report) -> Vec<Annotation> {
        let mut out = Vec::new();
        for leak in &report.leaks {
            let standing = leak.standing.map(|s| format!(" ({})", s.name())).unwrap_or_default();
            let by: Vec<String> = leak.leaked_by.iter().map(|b| format!("{} ({})", b.test, b.count)).collect();
            out.push(Annotation {
                level: if leak.fails { "error" } else { "warning" },
                title: format!("hangcheck: leak of {}{standing}", leak.group),
                place: leak.location.as_deref().and_then(|l| self.place(l)),
                message: format!(
                    "{} grew by {} (allowed {}); leaked by {}",
                    leak.group,
                    leak.growth,
                    leak.allowed,
                    by.join(", ")
                ),
            });
        }
        for test in report.tests.iter().filter(|t| t.outcome == TestOutcome::Hung) {
            let mut placed = false;
            for w in &test.waiting {
                let Some(place) = w.location.as_deref().and_then(|l| self.place(l)) else { continue };
                placed = true;
                out.push(Annotation {
                    level: "error",
                    title: format!("hangcheck: {} hung", test.id),
                    place: Some(place),
                    message: w.describe(),
                });
            }
            if !placed {
                out.push(Annotation {
                    level: "error",
                    title: format!("hangcheck: {} hung", test.id),
                    place: None,
                    message: format!(
                        "evidence in {}",
                        test.evidence.first().map(|e| e.display().to_string()).unwrap_or_default()
                    ),
                });
            }
        }
        for stall in &report.stalls {
            let at = stall.blocked_in.as_deref().and_then(|b| b.rsplit_once(" at ")).map(|(_, l)| l);
            out.push(Annotation {
                level: "error",
                title: format!("hangcheck: worker stalled during {}", stall.test.as_deref().unwrap_or("?")),
                place: at.and_then(|l| self.place(l)),
                message: format!(
                    "worker {} stuck {} ms in one poll, in {}",
                    stall.thread,
                    stall.stuck_ms,
                    stall.blocked_in.as_deref().unwrap_or("?")
                ),
            });
        }
        if report.shutdown.outcome == ShutdownOutcome::Hung {
            out.push(Annotation {
                level: "error",
                title: "hangcheck: the server's shutdown hung".into(),
                place: None,
                message: "the server did not exit within the shutdown grace period and was killed".into(),
            });
        }
        out
    }
}

/// The run as Markdown, for the step summary.
fn markdown(report: &Report) -> String {
    let tally = report.tally();
    let mut md = format!(
        "## hangcheck: {} (exit {})\n\n| tests | passed | failed | hung | leaks | stalls | shutdown |\n|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} |\n\n",
        report.package,
        report.exit_code,
        report.tests.len(),
        tally.passed,
        tally.failed,
        tally.hung,
        report.leaks.len(),
        report.stalls.len(),
        report.shutdown.outcome.name(),
    );
    for t in report.tests.iter().filter(|t| t.outcome != TestOutcome::Passed) {
        md.push_str(&format!("- **{}** `{}`", t.outcome.name(), t.id));
        if let Some(w) = t.waiting.first() {
            md.push_str(&format!(": {}", w.describe()));
        }
        md.push('\n');
    }
    for leak in &report.leaks {
        let standing = leak.standing.map(|s| format!(" ({})", s.name())).unwrap_or_default();
        md.push_str(&format!(
            "- **leak**{standing} `{}` +{}{}\n",
            leak.group,
            leak.growth,
            leak.location.as_deref().map(|l| format!(", spawned at `{l}`")).unwrap_or_default()
        ));
    }
    for stall in &report.stalls {
        md.push_str(&format!(
            "- **stall** during `{}`: {} ms in {}\n",
            stall.test.as_deref().unwrap_or("?"),
            stall.stuck_ms,
            stall.blocked_in.as_deref().unwrap_or("?")
        ));
    }
    md
}

impl Reporter for GithubActions {
    fn event(&mut self, _event: &Event<'_>) {}

    fn finished(&mut self, report: &Report) {
        let lines: Vec<String> = self.annotations(report).iter().map(Annotation::render).collect();
        let mut out: Box<dyn Write> =
            if self.to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        if let Some(path) = &self.summary {
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(markdown(report).as_bytes()));
            if let Err(e) = appended {
                super::terminal::warn(format!("cannot append to $GITHUB_STEP_SUMMARY ({}): {e}", path.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_a_file_and_a_line_and_messages_are_escaped() {
        assert_eq!(file_line("src/main.rs:42:9"), Some(("src/main.rs", 42)));
        assert_eq!(file_line("src/main.rs:42"), Some(("src/main.rs", 42)));
        assert_eq!(file_line("nowhere"), None);
        let gh = GithubActions { to_stderr: false, workspace: Some("/repo/".into()), summary: None };
        assert_eq!(gh.place("/repo/src/a.rs:3"), Some(("src/a.rs".into(), 3)));
        assert_eq!(gh.place("/home/u/.cargo/registry/x.rs:3"), None);
        let a = Annotation {
            level: "error",
            title: "a, b: c".into(),
            place: Some(("f.rs".into(), 1)),
            message: "50%\nnext".into(),
        };
        assert_eq!(a.render(), "::error file=f.rs,line=1,title=a%2C b%3A c::50%25%0Anext");
    }
}
