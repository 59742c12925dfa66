//! The system's own end-to-end tests: the real `cargo-hangcheck` binary, real cargo
//! builds, real server processes from `examples/` and `tests/fixtures/`, real sockets and
//! signals. One binary, a module per area (ripgrep's layout).

mod agent;
mod bad_input;
mod ci;
mod current_thread;
mod every_task;
mod flight_recorder;
mod hangs;
mod harness;
mod leaks;
mod lifecycle;
mod reporting;
mod rounds;
mod selection;
mod stress;
mod survival;
mod timeline;
mod util;
mod watched;
