//! Exit codes: named once, here, and listed in the README.
//!
//! When a run has several findings, the most severe decides the code: a hang, then a
//! setup error (nothing could be judged), then failed tests, then stalls, then leaks.

/// Every test passed and nothing leaked or hung.
pub const OK: i32 = 0;
/// Something went wrong inside hangcheck itself.
pub const INTERNAL: i32 = 1;
/// The command line could not be parsed (clap's own code).
pub const USAGE: i32 = 2;
/// The run could not start or could not go on: bad config, build failure, a server that
/// will not start or died mid-run, a test target that does not exist.
pub const SETUP: i32 = 3;
/// At least one test failed.
pub const TESTS_FAILED: i32 = 4;
/// Every test passed, but a task group (or other resource) leaked.
pub const LEAKS: i32 = 5;
/// A test or the server's shutdown hung.
pub const HANG: i32 = 6;
/// Every test passed and nothing hung, but a worker stalled: stuck in one poll past the
/// stall threshold (a blocking call, a CPU-heavy poll), without the run hanging. With
/// `stall-verdict = "warn"` stalls are reported and do not set this code.
pub const STALLS: i32 = 7;
/// The run was interrupted (Ctrl-C, SIGTERM); everything it started was torn down.
pub const INTERRUPTED: i32 = 130;
