//! Thread stacks on demand, taken from the agent thread.
//!
//! To read another thread's stack the agent sends that thread a real-time signal
//! (`tgkill`); the handler, running on the interrupted thread, walks its own stack and
//! stores raw instruction pointers in one pre-allocated slot of atomics. The handler takes
//! no lock and allocates nothing; symbolising (function, file, line) happens afterwards
//! on the agent thread. Threads are taken one at a time: the slot is armed for exactly
//! one tid, and a late handler from a thread that timed out finds the slot disarmed and
//! writes nothing.
//!
//! Every wait is bounded: a thread that does not answer within [`PER_THREAD`] (blocked
//! signals, uninterruptible sleep) is listed with a note, never waited on forever, and
//! the whole capture stops at [`OVERALL`].

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::protocol::{Frame, StackSource, Stacks, ThreadStack};

/// How long one thread gets to answer the signal.
pub(crate) const PER_THREAD: Duration = Duration::from_millis(250);
/// How long a whole capture may take before the remaining threads are skipped.
const OVERALL: Duration = Duration::from_secs(3);
/// Frames kept per thread.
const MAX_FRAMES: usize = 128;

/// The one capture slot. `armed` holds the tid allowed to write (0: nobody; `-tid`: that
/// thread is writing), `done` the tid that finished.
struct Slot {
    armed: AtomicI32,
    done: AtomicI32,
    len: AtomicUsize,
    ips: [AtomicUsize; MAX_FRAMES],
}

static SLOT: Slot = Slot {
    armed: AtomicI32::new(0),
    done: AtomicI32::new(0),
    len: AtomicUsize::new(0),
    ips: [const { AtomicUsize::new(0) }; MAX_FRAMES],
};

/// The signal used, once chosen and installed; `None` if no signal could be installed.
static SIGNAL: OnceLock<Option<i32>> = OnceLock::new();
/// Set when a handler started writing but never finished: the slot is not trusted again.
static WEDGED: AtomicBool = AtomicBool::new(false);

fn gettid() -> i32 {
    // SAFETY: the gettid syscall takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

extern "C" fn on_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    let tid = gettid();
    if SLOT.armed.compare_exchange(tid, -tid, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return; // Not asked for (or too late): leave the slot alone.
    }
    let mut n = 0;
    // SAFETY: trace_unsynchronized requires that no other thread unwinds through
    // backtrace's global state at the same time; only the one armed thread gets here, and
    // the closure only stores into atomics, so it neither locks nor allocates.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            SLOT.ips[n].store(frame.ip() as usize, Ordering::Relaxed);
            n += 1;
            n < MAX_FRAMES
        });
    }
    SLOT.len.store(n, Ordering::Relaxed);
    SLOT.done.store(tid, Ordering::Release);
}

/// Chooses a real-time signal nobody handles and installs the handler, once.
fn signal() -> Option<i32> {
    *SIGNAL.get_or_init(|| {
        for sig in (libc::SIGRTMIN() + 4)..=libc::SIGRTMAX() {
            // SAFETY: a zeroed sigaction is a valid "no handler" value; sigaction with a
            // null new action only reads the current one.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 || old.sa_sigaction != libc::SIG_DFL {
                continue;
            }
            // SAFETY: installs a handler that only touches atomics (see on_signal); the
            // struct is fully initialised (zeroed, then the fields sigaction reads).
            let installed = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut()) == 0
            };
            if installed {
                return Some(sig);
            }
        }
        None
    })
}

/// Serialises captures: the slot serves one thread at a time. Only capturing threads
/// take it, never the signal handler.
static CAPTURING: Mutex<()> = Mutex::new(());

/// Raw instruction pointers of thread `tid`, or why there are none.
fn capture_ips(tid: i32, timeout: Duration) -> Result<Vec<usize>, String> {
    let _one_at_a_time = CAPTURING.lock().unwrap_or_else(PoisonError::into_inner);
    if tid == gettid() {
        let mut ips = Vec::new();
        backtrace::trace(|frame| {
            ips.push(frame.ip() as usize);
            ips.len() < MAX_FRAMES
        });
        return Ok(ips);
    }
    if WEDGED.load(Ordering::Relaxed) {
        return Err("not taken: an earlier thread never finished its stack walk".into());
    }
    let Some(sig) = signal() else { return Err("no free real-time signal to take stacks with".into()) };
    SLOT.done.store(0, Ordering::Relaxed);
    SLOT.len.store(0, Ordering::Relaxed);
    SLOT.armed.store(tid, Ordering::Release);
    // SAFETY: tgkill only sends a signal; a tid that has exited gives ESRCH.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig) };
    if sent != 0 {
        SLOT.armed.store(0, Ordering::Release);
        return Err(format!("the thread could not be signalled: {}", std::io::Error::last_os_error()));
    }
    let deadline = Instant::now() + timeout;
    while SLOT.done.load(Ordering::Acquire) != tid {
        if Instant::now() >= deadline {
            // Disarm unless the handler already started writing; then give it a moment.
            if SLOT.armed.compare_exchange(tid, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return Err(format!(
                    "did not answer within {} ms (signals blocked, or stopped in the kernel)",
                    timeout.as_millis()
                ));
            }
            let grace = Instant::now() + timeout;
            while SLOT.done.load(Ordering::Acquire) != tid {
                if Instant::now() >= grace {
                    WEDGED.store(true, Ordering::Relaxed);
                    return Err("started its stack walk but never finished it".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    SLOT.armed.store(0, Ordering::Release);
    let len = SLOT.len.load(Ordering::Relaxed);
    Ok((0..len).map(|i| SLOT.ips[i].load(Ordering::Relaxed)).collect())
}

/// Turns instruction pointers into frames, dropping the capture machinery (the signal
/// handler and the kernel's trampoline) from the top.
fn symbolize(ips: &[usize]) -> Vec<Frame> {
    let mut frames = Vec::new();
    for (i, &ip) in ips.iter().enumerate() {
        // Return addresses point after the call; look up the call itself.
        let lookup = if i == 0 { ip } else { ip.saturating_sub(1) };
        let before = frames.len();
        backtrace::resolve(lookup as *mut c_void, |symbol| {
            frames.push(Frame {
                function: symbol.name().map(|n| format!("{n:#}")),
                file: symbol.filename().map(|p| p.display().to_string()),
                line: symbol.lineno(),
            });
        });
        if frames.len() == before {
            frames.push(Frame { function: None, file: None, line: None });
        }
    }
    let machinery = frames.iter().position(|f| {
        f.function.as_deref().is_some_and(|n| n.contains("__restore_rt") || n.ends_with("stacks::on_signal"))
    });
    if let Some(i) = machinery {
        let last = frames[i..]
            .iter()
            .take_while(|f| {
                f.function.as_deref().is_some_and(|n| n.contains("__restore_rt") || n.contains("on_signal"))
                    || f.function.is_none()
            })
            .count();
        frames.drain(..i + last.max(1));
    }
    // The agent's own stack starts inside this module and backtrace; drop those too.
    let own = frames.iter().take_while(|f| {
        f.function.as_deref().is_some_and(|n| n.starts_with("backtrace::") || n.contains("hangcheck_runtime::stacks::"))
    });
    let skip = own.count();
    frames.drain(..skip);
    frames
}

fn proc_task(tid: i32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/{file}")).unwrap_or_default()
}

fn thread_state(tid: i32) -> String {
    let stat = proc_task(tid, "stat");
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("?").to_owned()
}

/// One thread's stack; `captured` runs as soon as the raw frames are in hand, before the
/// slower symbolisation (the watchdog reads its clock there).
pub(crate) fn thread_at(tid: i32, timeout: Duration, captured: impl FnOnce()) -> ThreadStack {
    thread_with(tid, timeout, true, captured)
}

fn thread_with(tid: i32, timeout: Duration, symbolise: bool, on_captured: impl FnOnce()) -> ThreadStack {
    let name = proc_task(tid, "comm").trim().to_owned();
    let state = thread_state(tid);
    let captured = capture_ips(tid, timeout);
    on_captured();
    match captured {
        Ok(ips) if !symbolise => {
            let frames = ips.iter().map(|_| Frame { function: None, file: None, line: None }).collect();
            ThreadStack { tid: tid as u32, name, state, frames, note: None }
        }
        Ok(ips) => ThreadStack { tid: tid as u32, name, state, frames: symbolize(&ips), note: None },
        Err(note) => ThreadStack { tid: tid as u32, name, state, frames: Vec::new(), note: Some(note) },
    }
}

/// Every thread's stack.
pub(crate) fn all() -> Stacks {
    all_with(true)
}

/// Every thread's stack; without symbolising, only the raw frames are taken (for the
/// benchmarks, which measure the two apart).
pub(crate) fn all_with(symbolise: bool) -> Stacks {
    let started = Instant::now();
    let mut tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    tids.sort_unstable();
    let mut threads = Vec::with_capacity(tids.len());
    for tid in tids {
        if started.elapsed() >= OVERALL {
            threads.push(ThreadStack {
                tid: tid as u32,
                name: proc_task(tid, "comm").trim().to_owned(),
                state: thread_state(tid),
                frames: Vec::new(),
                note: Some(format!("not taken: the capture ran out of its {} ms budget", OVERALL.as_millis())),
            });
            continue;
        }
        threads.push(thread_with(tid, PER_THREAD, symbolise, || {}));
    }
    Stacks { source: StackSource::Agent, took_ms: started.elapsed().as_millis() as u64, threads, tasks: None }
}

/// Loads the debug info used to symbolise stacks, on a short-lived thread, so that the
/// first stall or stack request does not pay for it (seconds, for a large debug binary
/// on a busy machine). backtrace caches what it loaded for the process.
pub(crate) fn warm_up() {
    let _ = std::thread::Builder::new().name("hangcheck-warmup".into()).spawn(|| {
        backtrace::resolve(warm_up as *mut c_void, |_| {});
    });
}

/// This thread's id, for the watchdog's worker slots.
pub(crate) fn current_tid() -> i32 {
    gettid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[inline(never)]
    fn parked_in_a_recognisable_function(rx: mpsc::Receiver<()>, tid: mpsc::Sender<i32>) {
        tid.send(gettid()).unwrap();
        let _ = rx.recv_timeout(Duration::from_secs(30));
    }

    #[test]
    fn takes_another_threads_stack_while_it_is_blocked() {
        let (stop_tx, stop_rx) = mpsc::channel();
        let (tid_tx, tid_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("blocked-one".into())
            .spawn(move || parked_in_a_recognisable_function(stop_rx, tid_tx))
            .unwrap();
        let tid = tid_rx.recv().unwrap();
        let stack = thread_at(tid, Duration::from_secs(5), || {});
        stop_tx.send(()).unwrap();
        handle.join().unwrap();
        assert_eq!(stack.name, "blocked-one");
        assert!(stack.note.is_none(), "{stack:?}");
        let names: Vec<&str> = stack.frames.iter().filter_map(|f| f.function.as_deref()).collect();
        assert!(names.iter().any(|n| n.contains("parked_in_a_recognisable_function")), "{names:#?}");
        assert!(!names.first().unwrap().contains("on_signal"), "handler frames are dropped: {names:#?}");
    }

    #[test]
    fn all_lists_every_thread_of_the_process() {
        let stacks = all();
        assert!(stacks.threads.iter().any(|t| t.tid as i32 == gettid()));
        assert!(stacks.threads.len() >= 2);
    }
}
