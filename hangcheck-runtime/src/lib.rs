//! Linked into a tokio server so that `cargo hangcheck` can see what it holds.
//!
//! While `cargo hangcheck test` runs the server's end-to-end tests, an agent thread in
//! the server (an OS thread, never a tokio task, so it answers when every worker is
//! blocked) reports task groups with their ages and the test each survivor was born in,
//! counters, gauges, runtime metrics and process facts.
//!
//! **Inert by default.** Without the runner (no `HANGCHECK_SOCKET` in the environment)
//! nothing is started: [`spawn`] is `tokio::spawn`, counters are no-ops, no thread, no
//! socket. Production builds can keep it linked.
//!
//! # Adoption
//!
//! Replace `#[tokio::main]` with `#[hangcheck_runtime::main]` (same arguments):
//!
//! ```
//! #[hangcheck_runtime::main(worker_threads = 2)]
//! async fn main() {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//!     hangcheck_runtime::announce("http", listener.local_addr().unwrap());
//!     // ... accept connections, hangcheck_runtime::spawn("conn", handle(conn)) ...
//! }
//! ```
//!
//! or pass a hand-built runtime's builder through [`instrument`].
//!
//! The [`protocol`] module is the wire format shared with the runner; it is all that
//! remains with default features off.
#![warn(missing_docs)]

pub mod protocol;

#[cfg(feature = "harness")]
pub mod harness;

#[cfg(feature = "agent")]
mod agent;
#[cfg(all(feature = "agent", tokio_unstable))]
mod chaos;
#[cfg(feature = "agent")]
mod clock;
#[cfg(feature = "agent")]
mod hooks;
#[cfg(feature = "agent")]
mod ops;
#[cfg(feature = "agent")]
mod process_facts;
#[cfg(feature = "agent")]
mod recorder;
#[cfg(feature = "agent")]
mod registry;
#[cfg(feature = "agent")]
mod runtimes;
#[cfg(feature = "agent")]
mod stacks;
#[cfg(feature = "agent")]
mod taskdump;
#[cfg(feature = "agent")]
mod watchdog;

#[cfg(feature = "agent")]
pub use api::*;

#[cfg(feature = "agent")]
mod api {
    use std::future::Future;
    use std::panic::Location;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    use std::sync::Arc;

    use tokio::task::JoinHandle;

    use crate::agent;
    use crate::protocol::{AgentMessage, Announcement, RecordedKind};
    use crate::recorder;
    use crate::registry::Metric;

    /// `#[tokio::main]` with the runtime passed through [`instrument`]. Takes the same
    /// arguments: `flavor = "multi_thread" | "current_thread"` and `worker_threads = N`.
    ///
    /// ```
    /// #[hangcheck_runtime::main(flavor = "current_thread")]
    /// async fn main() {
    ///     let answer = hangcheck_runtime::spawn("compute", async { 6 * 7 }).await.unwrap();
    ///     assert_eq!(answer, 42);
    /// }
    /// ```
    pub use hangcheck_runtime_macros::main;

    /// Prepares a hand-built runtime for hangcheck and starts the agent when the runner is
    /// there. Call it before `build()`; it changes nothing when the runner is absent.
    ///
    /// ```
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// builder.enable_all();
    /// hangcheck_runtime::instrument(&mut builder);
    /// let runtime = builder.build().unwrap();
    /// runtime.block_on(async { /* serve */ });
    /// ```
    ///
    /// With the runner there, it installs tokio's hooks: thread park/unpark for the stall
    /// watchdog, and with `--cfg tokio_unstable` (the runner's default build) task
    /// spawn/terminate and poll hooks, which count every task by spawn location and name
    /// the task a stalled worker is polling. tokio keeps one hook of each kind: set your
    /// own hooks after this call if you need them (they then replace hangcheck's).
    ///
    /// The runner's report lists every runtime built through here by the name of the
    /// thread that built it; [`instrument_named`] gives it a name of your choosing.
    pub fn instrument(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
        if let Some(agent) = agent::get() {
            crate::hooks::install(builder, &agent.registry, None);
        }
        builder
    }

    /// [`instrument`], with the name the runner's report gives this runtime (a server
    /// with a runtime per listener names each).
    ///
    /// ```
    /// let mut builder = tokio::runtime::Builder::new_current_thread();
    /// builder.enable_all();
    /// hangcheck_runtime::instrument_named(&mut builder, "admin");
    /// let runtime = builder.build().unwrap();
    /// runtime.block_on(async { /* serve the admin console */ });
    /// ```
    pub fn instrument_named<'b>(
        builder: &'b mut tokio::runtime::Builder,
        name: &str,
    ) -> &'b mut tokio::runtime::Builder {
        if let Some(agent) = agent::get() {
            crate::hooks::install(builder, &agent.registry, Some(name));
        }
        builder
    }

    /// Whether the runner is there and the agent is running.
    ///
    /// ```
    /// // Outside `cargo hangcheck`, hangcheck is inert.
    /// if std::env::var_os("HANGCHECK_SOCKET").is_none() {
    ///     assert!(!hangcheck_runtime::is_active());
    /// }
    /// ```
    pub fn is_active() -> bool {
        agent::get().is_some()
    }

    /// Spawns a task counted in the group `name`, like `tokio::spawn`.
    ///
    /// The group's location is the first call site seen for the name. The task is
    /// counted live until its future completes, is cancelled or panics.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let handle = hangcheck_runtime::spawn("waiter", async { "done" });
    /// assert_eq!(handle.await.unwrap(), "done");
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn<F>(name: &str, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(agent) = agent::get() else {
            return tokio::spawn(future);
        };
        crate::runtimes::note_current();
        let group = agent.registry.named_group(name, Location::caller());
        let guard = agent.registry.born_into(group);
        // Tells tokio's spawn hook (tokio_unstable) that this task is counted by name.
        #[cfg(tokio_unstable)]
        let _named = crate::hooks::NamedSpawn::enter(group);
        tokio::spawn(async move {
            let _guard = guard;
            future.await
        })
    }

    /// Tells the runner an address the server listens on; every test then finds it in
    /// `HANGCHECK_ADDR_<NAME>` (upper case, other characters as `_`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// // A test reads it as HANGCHECK_ADDR_HTTP.
    /// hangcheck_runtime::announce("http", listener.local_addr().unwrap());
    /// # }
    /// ```
    pub fn announce(name: &str, addr: impl std::fmt::Display) {
        let Some(agent) = agent::get() else { return };
        crate::runtimes::note_current();
        let announcement = Announcement { name: name.to_owned(), addr: addr.to_string() };
        agent.registry.announce(announcement.clone());
        agent.send_event(AgentMessage::Announce(announcement));
    }

    /// A monotonic counter for a lifecycle fact (connects, disconnects, deletes).
    ///
    /// Looking a counter up by name takes a read lock; updating it does not. Keep the
    /// handle where a path is hot.
    ///
    /// ```
    /// let connects = hangcheck_runtime::counter("connects");
    /// connects.increment(1);
    /// hangcheck_runtime::counter("disconnects").increment(1);
    /// ```
    pub fn counter(name: &str) -> Counter {
        Counter(agent::get().map(|a| a.registry.counter(name)))
    }

    /// A gauge for a level that goes up and down (open sessions, queue length).
    ///
    /// ```
    /// let sessions = hangcheck_runtime::gauge("sessions");
    /// sessions.increment(1);
    /// sessions.decrement(1);
    /// sessions.set(0);
    /// ```
    pub fn gauge(name: &str) -> Gauge {
        Gauge(agent::get().map(|a| a.registry.gauge(name)))
    }

    /// Starts an operation of `kind` for `key` (a stream for a session, a job for a
    /// user); it is in flight until the returned guard is dropped or
    /// [`finished`](Op::finish).
    ///
    /// Snapshots list in-flight operations per kind with their ages and the test each
    /// began in, and the runner flags two in flight for one key at once (caught the
    /// moment the second starts) and operations still in flight after their test ended.
    /// The key is hashed before it is stored; see [`op_plain`] to keep it readable.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let session = "session-42";
    /// let stream = hangcheck_runtime::op("stream", session);
    /// // ... stream the answer ...
    /// stream.finish();
    /// # }
    /// ```
    pub fn op(kind: &str, key: &str) -> Op {
        start_op(kind, key, false)
    }

    /// [`op`] with the key stored as given, for keys that are not sensitive.
    ///
    /// ```
    /// let job = hangcheck_runtime::op_plain("reindex", "shard-3");
    /// drop(job); // finished
    /// ```
    pub fn op_plain(kind: &str, key: &str) -> Op {
        start_op(kind, key, true)
    }

    fn start_op(kind: &str, key: &str, plain: bool) -> Op {
        Op(agent::get().map(|a| a.registry.ops.start(kind, crate::ops::Key::new(key, plain), a.registry.epoch())))
    }

    /// An in-flight operation; see [`op`]. A no-op when hangcheck is inert.
    #[must_use = "the operation ends when this guard is dropped"]
    pub struct Op(Option<crate::ops::OpGuard>);

    impl Op {
        /// Gives the operation a time budget: outliving it counts as slow, in flight and
        /// after it finishes.
        ///
        /// ```
        /// use std::time::Duration;
        /// let query = hangcheck_runtime::op("query", "user-7").warn_after(Duration::from_secs(2));
        /// query.finish();
        /// ```
        pub fn warn_after(self, budget: std::time::Duration) -> Op {
            if let Some(guard) = &self.0 {
                guard.set_budget(budget);
            }
            self
        }

        /// Ends the operation (the same as dropping it, said out loud).
        ///
        /// ```
        /// hangcheck_runtime::op("upload", "file-1").finish();
        /// ```
        pub fn finish(self) {}
    }

    impl std::fmt::Debug for Op {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Op").field("active", &self.0.is_some()).finish()
        }
    }

    /// A handle to a counter; see [`counter`]. A no-op when hangcheck is inert.
    #[derive(Clone, Debug)]
    pub struct Counter(Option<Arc<Metric<AtomicU64>>>);

    impl Counter {
        /// Adds `n`.
        ///
        /// ```
        /// hangcheck_runtime::counter("requests").increment(3);
        /// ```
        pub fn increment(&self, n: u64) {
            if let Some(c) = &self.0 {
                let total = c.value.fetch_add(n, Ordering::Relaxed).wrapping_add(n);
                recorder::record(RecordedKind::Counter, c.name, 0, total);
            }
        }
    }

    /// A handle to a gauge; see [`gauge`]. A no-op when hangcheck is inert.
    #[derive(Clone, Debug)]
    pub struct Gauge(Option<Arc<Metric<AtomicI64>>>);

    impl Gauge {
        /// Sets the value.
        ///
        /// ```
        /// hangcheck_runtime::gauge("pool_size").set(8);
        /// ```
        pub fn set(&self, value: i64) {
            if let Some(g) = &self.0 {
                g.value.store(value, Ordering::Relaxed);
                recorder::record(RecordedKind::Gauge, g.name, 0, value as u64);
            }
        }

        /// Adds `n`.
        ///
        /// ```
        /// hangcheck_runtime::gauge("sessions").increment(1);
        /// ```
        pub fn increment(&self, n: i64) {
            if let Some(g) = &self.0 {
                let value = g.value.fetch_add(n, Ordering::Relaxed).wrapping_add(n);
                recorder::record(RecordedKind::Gauge, g.name, 0, value as u64);
            }
        }

        /// Subtracts `n`.
        ///
        /// ```
        /// hangcheck_runtime::gauge("sessions").decrement(1);
        /// ```
        pub fn decrement(&self, n: i64) {
            if let Some(g) = &self.0 {
                let value = g.value.fetch_sub(n, Ordering::Relaxed).wrapping_sub(n);
                recorder::record(RecordedKind::Gauge, g.name, 0, value as u64);
            }
        }
    }
}

/// What `#[hangcheck_runtime::main]` expands to needs; not a public API.
#[cfg(feature = "agent")]
#[doc(hidden)]
pub mod __private {
    pub use tokio;

    /// Takes every thread's stack in this process, with or without symbolising, and
    /// returns (threads, frames). For the benchmarks in `benches/`.
    pub fn bench_capture_stacks(symbolise: bool) -> (usize, usize) {
        let stacks = crate::stacks::all_with(symbolise);
        (stacks.threads.len(), stacks.threads.iter().map(|t| t.frames.len()).sum())
    }

    /// Called by `#[hangcheck_runtime::main]` once the runtime is built, so that
    /// snapshots carry its metrics from the start.
    pub fn runtime_built(handle: &tokio::runtime::Handle) {
        if crate::agent::get().is_some() {
            crate::runtimes::built(handle);
        }
    }
}
