//! The harness under `cargo hangcheck test`: the trials the runner plans, one at a time,
//! each announced before it starts and reported when it ends
//! ([protocol](crate::protocol#trials-a-hangcheck-harness-and-the-runner)).
//!
//! Each trial goes through `libtest_mimic::run` on its own, with one test thread (so on
//! this thread) and libtest's output (to the log the runner keeps for this process):
//! libtest-mimic catches the trial's panic and prints its message, and the trial's end is
//! known the moment `run` returns. No read here has a timeout: the runner holds the
//! other end for as long as this process lives, and answers when the server is settled;
//! if it goes away, the read ends and so does the harness.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::BufReader;
use std::os::unix::net::UnixStream;

use libtest_mimic::{Arguments, Trial};

use crate::protocol::{self, ProtocolError, TrialMessage, TrialOutcome, TrialReply, MAX_TRIAL_MESSAGE};

/// Runs the runner's plan and exits: 0 when every trial passed, 101 otherwise.
pub(super) fn run(socket: &OsStr, trials: Vec<Trial>) -> ! {
    match serve(socket, trials) {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(101),
        Err(e) => {
            eprintln!("error: hangcheck harness: lost the runner: {e}");
            std::process::exit(101)
        }
    }
}

fn serve(socket: &OsStr, trials: Vec<Trial>) -> Result<bool, ProtocolError> {
    let stream = UnixStream::connect(socket)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    protocol::write_message(&mut writer, &TrialMessage::Hello { pid: std::process::id() })?;
    let plan = match protocol::read_message(&mut reader, &mut buf, MAX_TRIAL_MESSAGE)? {
        TrialReply::Plan { trials } => trials,
        other => return Err(ProtocolError::Malformed(format!("expected a plan, got {other:?}"))),
    };
    let mut by_name: HashMap<String, Trial> = HashMap::new();
    for trial in trials {
        // The first of two trials with one name wins, as `--exact` would pick it.
        by_name.entry(trial.name().to_owned()).or_insert(trial);
    }
    // The runner plans only what it means to run: an ignored trial in the plan was asked
    // for (`--run-ignored`), so it runs.
    let args = Arguments { test_threads: Some(1), nocapture: true, include_ignored: true, ..Arguments::default() };
    let mut all_passed = true;
    for name in plan {
        protocol::write_message(&mut writer, &TrialMessage::Start { name: name.clone() })?;
        match protocol::read_message(&mut reader, &mut buf, MAX_TRIAL_MESSAGE)? {
            TrialReply::Go { name: go } if go == name => {}
            other => return Err(ProtocolError::Malformed(format!("expected go for `{name}`, got {other:?}"))),
        }
        let outcome = match by_name.remove(&name) {
            Some(trial) => {
                let conclusion = libtest_mimic::run(&args, vec![trial]);
                if conclusion.num_failed > 0 {
                    TrialOutcome::Failed
                } else if conclusion.num_passed > 0 {
                    TrialOutcome::Passed
                } else {
                    TrialOutcome::Ignored
                }
            }
            None => {
                eprintln!("error: hangcheck harness: the runner planned `{name}`, and there is no such trial");
                TrialOutcome::Failed
            }
        };
        all_passed &= outcome != TrialOutcome::Failed;
        protocol::write_message(&mut writer, &TrialMessage::End { name, outcome })?;
    }
    Ok(all_passed)
}
