//! The stall watchdog: notices a worker stuck inside one poll while it is still stuck.
//!
//! Each worker thread owns a slot that tokio's hooks update: "busy since" when it starts
//! polling a task (with `tokio_unstable`, from the before/after-poll hooks, which also
//! name the task) or when it wakes from park (stable tokio, from the park/unpark hooks),
//! and "idle" when the poll ends or the worker parks. Updates are two relaxed atomic
//! stores. The agent thread reads the slots every few milliseconds; a slot busy for
//! longer than the threshold is a stall: the agent takes that thread's stack at once and
//! pushes it to the runner, once per stuck poll.
//!
//! On stable tokio a worker that keeps running short polls without ever parking for
//! longer than the threshold also counts: it starves every other task just the same.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::protocol::{Stall, StalledTask};
use crate::stacks;

/// The default stall threshold.
pub(crate) const DEFAULT_THRESHOLD: Duration = Duration::from_millis(250);

/// One worker thread's state.
struct Worker {
    tid: i32,
    /// The runtime it works for, when it was known as the slot was made: a stuck worker
    /// stops only its own runtime's task dump.
    runtime: Option<tokio::runtime::Id>,
    /// Nanoseconds since [`anchor`] plus one when it became busy; 0 while idle.
    busy_since: AtomicU64,
    /// Counts busy periods, so each stuck poll is reported once.
    seq: AtomicU64,
    reported_seq: AtomicU64,
    /// The task being polled (0: unknown).
    task: AtomicU64,
    /// The busy period (`seq`) of a reported stall whose end is awaited; 0: none.
    watched_seq: AtomicU64,
    /// Set by [`idle`] when the watched busy period ends: its whole length, in ns.
    watched_total_ns: AtomicU64,
    /// The stall number (`Stall::seq`) of the watched stall.
    watched_stall: AtomicU64,
}

static WORKERS: Mutex<Vec<&'static Worker>> = Mutex::new(Vec::new());

thread_local! {
    static ME: Cell<Option<&'static Worker>> = const { Cell::new(None) };
}

/// The watchdog's clock: the coarse monotonic clock (read on every poll), never 0 so that
/// 0 can mean idle.
pub(crate) fn now_ns() -> u64 {
    crate::clock::now_ns().max(1)
}

#[inline]
fn me() -> &'static Worker {
    // The common case, a worker that has its slot, stays inline: one thread-local read.
    match ME.with(Cell::get) {
        Some(w) => w,
        None => register(),
    }
}

#[cold]
fn register() -> &'static Worker {
    // Once per worker thread: worker threads live as long as their runtime, so the slot is
    // leaked rather than reference-counted on every poll.
    let w: &'static Worker = Box::leak(Box::new(Worker {
        tid: stacks::current_tid(),
        runtime: tokio::runtime::Handle::try_current().ok().map(|h| h.id()),
        busy_since: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        reported_seq: AtomicU64::new(0),
        task: AtomicU64::new(0),
        watched_seq: AtomicU64::new(0),
        watched_total_ns: AtomicU64::new(0),
        watched_stall: AtomicU64::new(0),
    }));
    WORKERS.lock().unwrap_or_else(PoisonError::into_inner).push(w);
    ME.with(|me| me.set(Some(w)));
    w
}

/// Called by the hooks when this worker starts running (a poll of `task`, 0 if unknown).
#[inline]
pub(crate) fn busy(task: u64) {
    let w = me();
    w.task.store(task, Ordering::Relaxed);
    w.seq.fetch_add(1, Ordering::Relaxed);
    w.busy_since.store(now_ns(), Ordering::Release);
}

/// Called by the hooks when this worker stops running.
#[inline]
pub(crate) fn idle() {
    end_busy(false);
}

/// [`idle`], returning how long the worker ran, in nanoseconds (per-group poll statistics).
#[cfg_attr(not(tokio_unstable), allow(dead_code))]
pub(crate) fn idle_timed() -> u64 {
    end_busy(true)
}

/// Ends this worker's busy period. The clock is read only when the length is wanted or a
/// stall was reported in this period (its whole length is left for the agent): most polls
/// end without either.
#[inline(always)]
fn end_busy(timed: bool) -> u64 {
    let w = me();
    let since = w.busy_since.swap(0, Ordering::AcqRel);
    if since == 0 {
        return 0;
    }
    // One load of this worker's own slot per poll.
    let watched = w.watched_seq.load(Ordering::Relaxed) == w.seq.load(Ordering::Relaxed);
    if !timed && !watched {
        return 0;
    }
    let busy = now_ns().saturating_sub(since);
    if watched {
        w.watched_total_ns.store(busy.max(1), Ordering::Release);
    }
    busy
}

/// A reported stall that is over, as the agent saw it end.
pub(crate) struct Ended {
    /// The stall's number.
    pub(crate) seq: u64,
    /// Its whole length in ms.
    pub(crate) total_ms: u64,
}

/// Busy periods begun by every worker so far (polls with `tokio_unstable`, wake-ups on
/// stable tokio): rises whenever the server does any work.
pub(crate) fn activity() -> u64 {
    let workers: Vec<&'static Worker> = WORKERS.lock().unwrap_or_else(PoisonError::into_inner).clone();
    workers.iter().map(|w| w.seq.load(Ordering::Relaxed)).sum()
}

/// The watchdog's settings and count.
pub(crate) struct Watchdog {
    /// `None`: switched off (the runner passed 0).
    threshold: Option<Duration>,
    stalls: AtomicU64,
    /// When the agent last looked ([`now_ns`]), 0 before the first look.
    last_check: AtomicU64,
    /// When the agent last came back from a gap longer than the threshold between two
    /// looks: the whole process was stopped (SIGSTOP, a debugger) or the agent starved.
    /// Polls are judged from here, not from before the gap, so a pause is never a stall.
    resumed_at: AtomicU64,
}

impl Watchdog {
    /// Reads the threshold the runner passed (`HANGCHECK_STALL_THRESHOLD_MS`).
    pub(crate) fn from_env() -> Watchdog {
        let threshold = std::env::var(crate::protocol::STALL_THRESHOLD_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Some(DEFAULT_THRESHOLD), |ms| (ms > 0).then(|| Duration::from_millis(ms)));
        Watchdog { threshold, stalls: AtomicU64::new(0), last_check: AtomicU64::new(0), resumed_at: AtomicU64::new(0) }
    }

    /// Stalls detected so far.
    pub(crate) fn count(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Why the runtime `runtime` looks frozen, if one of its workers (or one whose runtime
    /// is unknown) has been in one poll for longer than the threshold (250 ms when the
    /// watchdog is off: tokio's own limit for dumps).
    pub(crate) fn stuck(&self, runtime: tokio::runtime::Id) -> Option<String> {
        let threshold = self.threshold.unwrap_or(DEFAULT_THRESHOLD).as_nanos() as u64;
        let workers: Vec<&'static Worker> = WORKERS.lock().unwrap_or_else(PoisonError::into_inner).clone();
        workers.iter().filter(|w| w.runtime.is_none_or(|r| r == runtime)).find_map(|w| {
            let since = w.busy_since.load(Ordering::Acquire);
            let busy = now_ns().saturating_sub(since);
            (since != 0 && busy >= threshold)
                .then(|| format!("worker {} has been in one poll for {} ms", w.tid, busy / 1_000_000))
        })
    }

    /// Stalls reported earlier whose poll has ended since the last look.
    pub(crate) fn ended(&self) -> Vec<Ended> {
        let workers: Vec<&'static Worker> = WORKERS.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut ended = Vec::new();
        for w in workers {
            if w.watched_seq.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let total = w.watched_total_ns.swap(0, Ordering::Acquire);
            if total != 0 {
                w.watched_seq.store(0, Ordering::Relaxed);
                ended.push(Ended { seq: w.watched_stall.load(Ordering::Relaxed), total_ms: total / 1_000_000 });
            }
        }
        ended
    }

    /// Looks at every worker; for each newly stuck one, takes its stack now and returns
    /// the stall. `describe` names a task by id (group key, location).
    pub(crate) fn check(&self, epoch: u64, describe: impl Fn(u64) -> Option<(String, Option<String>)>) -> Vec<Stall> {
        let Some(threshold) = self.threshold else { return Vec::new() };
        let workers: Vec<&'static Worker> = WORKERS.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut stalls = Vec::new();
        let threshold_ns = threshold.as_nanos() as u64;
        let now = now_ns();
        let last = self.last_check.swap(now, Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) > threshold_ns {
            self.resumed_at.store(now, Ordering::Relaxed);
        }
        let resumed_at = self.resumed_at.load(Ordering::Relaxed);
        for w in workers {
            let since = w.busy_since.load(Ordering::Acquire);
            let seq = w.seq.load(Ordering::Relaxed);
            if since == 0 || w.reported_seq.load(Ordering::Relaxed) == seq {
                continue;
            }
            if now_ns().saturating_sub(since.max(resumed_at)) < threshold_ns {
                continue;
            }
            // Name the task first: by the time a slow symbolisation is done, the poll may
            // have ended and the task with it.
            let task = w.task.load(Ordering::Relaxed);
            let described = (task != 0).then(|| describe(task));
            // The stuck time is read as the raw stack is taken. Right after the raw stack is in hand (symbolising comes after, and the
            // first time it can take longer than the stall itself): whether the poll was
            // still going, and the watch for its end, so that the end is not missed
            // while symbols load.
            let mut ended_during_capture = false;
            let mut number = 0;
            let mut taken_at = 0;
            let mut stack = stacks::thread_at(w.tid, stacks::PER_THREAD, || {
                taken_at = now_ns();
                ended_during_capture =
                    w.seq.load(Ordering::Relaxed) != seq || w.busy_since.load(Ordering::Acquire) != since;
                number = self.stalls.fetch_add(1, Ordering::Relaxed) + 1;
                w.watched_total_ns.store(0, Ordering::Relaxed);
                w.watched_stall.store(number, Ordering::Relaxed);
                w.watched_seq.store(seq, Ordering::Release);
                if w.seq.load(Ordering::Relaxed) != seq || w.busy_since.load(Ordering::Acquire) != since {
                    // It ended before the watch began: it lasted at least until now.
                    let seen = now_ns().saturating_sub(since).max(1);
                    let _ = w.watched_total_ns.compare_exchange(0, seen, Ordering::AcqRel, Ordering::Relaxed);
                }
            });
            let stuck_ms = taken_at.saturating_sub(since) / 1_000_000;
            if ended_during_capture {
                stack.note = Some(
                    "the poll ended while the stack was being taken (the worker moved on before the signal \
                     reached it); the stack may show later work"
                        .into(),
                );
            }
            w.reported_seq.store(seq, Ordering::Relaxed);
            let task = described.map(|d| {
                let (group, location) = d.map_or((None, None), |(g, l)| (Some(g), l));
                StalledTask { id: task, group, location }
            });
            stalls.push(Stall {
                tid: w.tid as u32,
                thread: stack.name.clone(),
                stuck_ms,
                threshold_ms: threshold.as_millis() as u64,
                epoch,
                task,
                stack,
                recorded: None,
                seq: number,
            });
        }
        stalls
    }
}
