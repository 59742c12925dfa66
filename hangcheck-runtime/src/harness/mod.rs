//! The test harness for E2E suites: every trial of a test target in one process, against
//! one server, under `cargo hangcheck test` or under a plain `cargo test`.
//!
//! In the server's package, with `hangcheck-runtime`'s `harness` feature:
//!
//! ```toml
//! [dev-dependencies]
//! hangcheck-runtime = { version = "0.1", features = ["harness"] }
//!
//! [[test]]
//! name = "e2e"
//! harness = false
//! ```
//!
//! ```no_run
//! use hangcheck_runtime::harness::{self, Failed, Trial};
//!
//! fn ping() -> Result<(), Failed> {
//!     let _conn = std::net::TcpStream::connect(harness::addr("tcp"))?;
//!     Ok(())
//! }
//!
//! fn main() {
//!     // In a test target, `env!("CARGO_BIN_EXE_my-server")` names the server binary.
//!     harness::main("target/debug/my-server", vec![Trial::test("ping", ping)]);
//! }
//! ```
//!
//! [`main`] takes libtest's command line (libtest-mimic's), so `--list`, filters,
//! `--exact`, `--skip`, `--ignored` and `--test-threads` work as for any test target, and
//! prints libtest's output. It runs in one of three ways:
//!
//! - **Under `cargo hangcheck test`** (the runner sets
//!   [`HARNESS_SOCKET_ENV`](crate::protocol::HARNESS_SOCKET_ENV)): the runner has started
//!   the server. The harness runs the trials the runner plans, one at a time, and tells
//!   the runner where each starts and ends, so that the runner sets the epoch, settles and
//!   snapshots between trials exactly as it does between test processes
//!   ([protocol](crate::protocol#trials-a-hangcheck-harness-and-the-runner)).
//! - **Listing** (`--list`): prints the trials; no server is started.
//! - **On its own** (plain `cargo test`): the harness starts the server binary itself,
//!   with a socket of its own, and speaks to it as a minimal runner would: it waits for
//!   the agent's hello and an announced address (readiness only: no snapshots, no stall
//!   watchdog), runs the trials, and stops the server at the end (SIGTERM, 5 s, SIGKILL).
//!   The server also dies with the harness, however the harness ends.
//!
//! Trials are libtest-mimic's [`Trial`]s; [`async_test`] makes one of an async fn.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

pub use libtest_mimic::{Failed, Trial};

use crate::protocol::{
    Announcement, HARNESS_IGNORED_LISTING, HARNESS_MARKER, HARNESS_PROBE_ENV, HARNESS_SOCKET_ENV, VERSION,
};

mod metadata;
mod standalone;
mod under_runner;

/// The addresses announced by the server that the harness started itself; empty under
/// the runner, which hands them over in the environment instead.
static ANNOUNCED: OnceLock<BTreeMap<String, String>> = OnceLock::new();

/// Runs `trials` as a libtest-compatible test binary and exits with libtest's codes (0:
/// all passed; 101: a trial failed, or the server could not be started).
///
/// `server_bin` is the server's executable, usually `env!("CARGO_BIN_EXE_<name>")`. Under
/// `cargo hangcheck test` the runner has started the server and `server_bin` is not used;
/// under a plain `cargo test` the harness starts it (with no arguments) before the first
/// trial and stops it after the last.
///
/// ```no_run
/// use hangcheck_runtime::harness::{self, Trial};
///
/// // In a test target: env!("CARGO_BIN_EXE_my-server").
/// let server = "target/debug/my-server";
/// harness::main(server, vec![
///     Trial::test("connects", || {
///         std::net::TcpStream::connect(harness::addr("tcp"))?;
///         Ok(())
///     }),
///     Trial::test("slow", || Ok(())).with_ignored_flag(true),
/// ]);
/// ```
pub fn main(server_bin: impl AsRef<Path>, trials: Vec<Trial>) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    if args.list && std::env::var_os(HARNESS_PROBE_ENV).is_some() {
        // The runner asks what this target is: the marker, then its trials as libtest
        // lists them: all of them, or with `--ignored` only the ignored ones, so that the
        // runner reports those as skipped (or runs them, with `--run-ignored`).
        match args.ignored {
            true => println!("{HARNESS_MARKER} {VERSION} {HARNESS_IGNORED_LISTING}"),
            false => println!("{HARNESS_MARKER} {VERSION}"),
        }
        for trial in trials.iter().filter(|t| t.is_test() && (!args.ignored || t.has_ignored_flag())) {
            println!("{}: test", trial.name());
        }
        std::process::exit(0);
    }
    if let Some(socket) = std::env::var_os(HARNESS_SOCKET_ENV) {
        under_runner::run(&socket, trials)
    }
    standalone::run(server_bin.as_ref(), &args, trials)
}

/// The address the server announced under `name` (`hangcheck_runtime::announce(name,
/// addr)`), for a trial to connect to.
///
/// Under the runner it comes from `HANGCHECK_ADDR_<NAME>`, as for a plain `#[test]`;
/// under a plain `cargo test`, from the server the harness started.
///
/// # Panics
///
/// When the server announced no such address, or announced something that is not a
/// socket address: inside a trial, that fails the trial with the reason.
///
/// ```
/// # std::env::set_var("HANGCHECK_ADDR_HTTP_ADMIN", "127.0.0.1:8081");
/// // What the runner sets for `announce("http-admin", addr)`.
/// let addr = hangcheck_runtime::harness::addr("http-admin");
/// assert_eq!(addr.port(), 8081);
/// ```
pub fn addr(name: &str) -> SocketAddr {
    let var = Announcement { name: name.to_owned(), addr: String::new() }.env_var();
    let announced = ANNOUNCED.get().and_then(|m| m.get(name).cloned()).or_else(|| std::env::var(&var).ok());
    let Some(text) = announced else {
        let known: Vec<&String> = ANNOUNCED.get().into_iter().flat_map(|m| m.keys()).collect();
        panic!(
            "the server announced no address named `{name}` (hangcheck_runtime::announce(\"{name}\", addr)); \
             announced: {known:?}; {var} is not set"
        );
    };
    text.parse().unwrap_or_else(|e| panic!("the address announced as `{name}`, {text:?}, is not a socket address: {e}"))
}

/// A trial that runs an async fn on a runtime of its own: a current-thread tokio runtime
/// with I/O and time enabled, built for the trial and dropped after it, so that nothing a
/// trial spawned outlives it (as nothing outlives a test process).
///
/// ```
/// use hangcheck_runtime::harness::{async_test, Failed};
///
/// async fn answer() -> Result<(), Failed> {
///     let n = tokio::spawn(async { 6 * 7 }).await?;
///     if n == 42 { Ok(()) } else { Err("wrong answer".into()) }
/// }
///
/// let trial = async_test("answer", answer);
/// assert_eq!(trial.name(), "answer");
/// ```
pub fn async_test<F, Fut>(name: impl Into<String>, test: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>> + 'static,
{
    Trial::test(name, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build the trial's tokio runtime: {e}"))?;
        runtime.block_on(test())
    })
}
