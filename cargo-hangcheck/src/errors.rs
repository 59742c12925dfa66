//! Errors that stop a run before it can judge anything. Each renders as one line that
//! names the cause and, where it helps, what to do next; [`SetupError::detail`] carries
//! supporting lines (the tail of a server log) for a reporter to print below it. Errors
//! never print themselves: the run hands them to its reporters as an event.

use std::path::PathBuf;

/// A run could not be set up, or could not go on.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// `cargo metadata` failed.
    #[error("cannot read the cargo manifest: {0}")]
    Metadata(#[from] cargo_metadata::Error),
    /// cargo failed to build the server or the tests.
    #[error("{what} failed ({status}); cargo's errors are above")]
    Build {
        /// What was being built.
        what: String,
        /// cargo's exit status.
        status: String,
    },
    /// The server did not come up.
    #[error("{cause}")]
    Server {
        /// One line: what happened.
        cause: String,
        /// The server log, whose tail is printed below the cause.
        log: Option<PathBuf>,
    },
    /// A process or file could not be created.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The server ran, but hangcheck could not watch it: no runtime of it was
    /// instrumented, or no test reached it.
    #[error("{0}")]
    Unwatched(String),
    /// Ctrl-C (or SIGTERM) arrived before the run could judge anything.
    #[error("interrupted")]
    Interrupted,
}

impl SetupError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
        let what = what.into();
        move |source| SetupError::Io { what, source }
    }

    /// Supporting lines to print below the cause: the tail of the server's log, when the
    /// server is what failed.
    pub fn detail(&self) -> Vec<String> {
        match self {
            SetupError::Server { log: Some(log), .. } => {
                let mut lines = vec![format!("last lines of {}:", log.display())];
                let tail = crate::rundir::tail(log, 15);
                if tail.is_empty() {
                    lines.push("(empty)".to_owned());
                }
                lines.extend(tail);
                lines
            }
            _ => Vec::new(),
        }
    }

    /// The exit code that goes with it.
    pub fn exit_code(&self) -> i32 {
        match self {
            SetupError::Interrupted => crate::exit::INTERRUPTED,
            _ => crate::exit::SETUP,
        }
    }
}
