//! Async task stacks, from tokio's task dump: where every task is parked in its `.await`s.
//!
//! Available when the server is built with `--cfg tokio_unstable` and this crate's
//! `taskdump` feature on Linux (the runner does both). A dump makes every worker pause
//! and re-poll each task in tracing mode, so it cannot finish while a worker is stuck;
//! it is skipped with the reason when the watchdog sees a stuck worker, and otherwise
//! polled from the agent thread under a hard deadline with a plain thread waker — never
//! with a tokio timer, which a frozen runtime would never fire. Current-thread runtimes
//! are skipped: tokio can only dump them from inside (tokio's documented limitation).

use std::time::Duration;

use tokio::runtime::Handle;

use crate::protocol::TaskDump;

/// How long a dump may take before it is abandoned.
const DEADLINE: Duration = Duration::from_secs(2);

/// Dumps the runtime's tasks, or says why not. `stuck` is the watchdog's reason to skip.
pub(crate) fn dump(runtime: Option<&Handle>, stuck: Option<String>) -> TaskDump {
    let skipped = |reason: String| TaskDump { tasks: Vec::new(), skipped: Some(reason), took_ms: 0 };
    let Some(handle) = runtime else {
        return skipped("the agent has not seen the runtime yet".into());
    };
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return skipped("a current-thread runtime can only be dumped from inside itself (a tokio limitation)".into());
    }
    if let Some(reason) = stuck {
        return skipped(format!("{reason}; a dump needs every worker and would not finish"));
    }
    imp::dump(handle, DEADLINE).unwrap_or_else(skipped)
}

#[cfg(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "x86", target_arch = "x86_64", target_arch = "s390x")
))]
mod imp {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::{Duration, Instant};

    use tokio::runtime::Handle;

    use crate::protocol::{AsyncTask, TaskDump};

    /// Set while a dump runs; an abandoned dump may still be running on tokio's helper
    /// thread, and a second one would only pile up behind it.
    static RUNNING: AtomicBool = AtomicBool::new(false);

    struct Unpark(std::thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// Polls `fut` on this thread until it is ready or `deadline` passes.
    fn block_on_until<F: Future>(fut: F, deadline: Instant) -> Option<F::Output> {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        loop {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return Some(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    pub(super) fn dump(handle: &Handle, limit: Duration) -> Result<TaskDump, String> {
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err("an earlier task dump has not finished".into());
        }
        let started = Instant::now();
        let handle = handle.clone();
        let result = block_on_until(async move { handle.dump().await }, started + limit);
        let Some(dump) = result else {
            // Left set: the abandoned dump is still waiting for the workers.
            return Err(format!("the task dump did not finish within {} ms", limit.as_millis()));
        };
        RUNNING.store(false, Ordering::Release);
        let tasks = dump
            .tasks()
            .iter()
            .map(|task| {
                let id = crate::hooks::task_id(&task.id());
                let (group, location) = crate::hooks::describe_task(id).map_or((None, None), |(g, l)| (Some(g), l));
                AsyncTask { id, group, location, trace: task.trace().to_string() }
            })
            .collect();
        Ok(TaskDump { tasks, skipped: None, took_ms: started.elapsed().as_millis() as u64 })
    }
}

#[cfg(not(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "aarch64", target_arch = "x86", target_arch = "x86_64", target_arch = "s390x")
)))]
mod imp {
    use std::time::Duration;

    use tokio::runtime::Handle;

    use crate::protocol::TaskDump;

    pub(super) fn dump(_: &Handle, _: Duration) -> Result<TaskDump, String> {
        Err("the server was built without task dumps (they need --cfg tokio_unstable and hangcheck-runtime's \
             `taskdump` feature on Linux; `cargo hangcheck test` passes both unless --stable)"
            .into())
    }
}
