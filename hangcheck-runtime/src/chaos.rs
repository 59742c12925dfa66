//! `cargo hangcheck test --chaos[=SEED]`: perturbs the server's scheduling so that rare
//! interleavings show up more often, in the spirit of rr's chaos mode. Before some polls
//! (drawn at random) the worker sleeps a short random while or yields its thread, so a
//! task that usually wins a race sometimes loses it; and tokio's own randomness (which
//! branch of `select!` goes first, whom a worker steals from) is seeded from SEED through
//! `Builder::rng_seed`.
//!
//! The seed makes tokio's choices and each worker's draws repeatable; the threads'
//! interleaving is not, so a seed raises the odds of a failure rather than replaying it.
//! Only with `--cfg tokio_unstable` (the poll hooks); the runner passes the seed in
//! [`crate::protocol::CHAOS_ENV`].

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The longest injected delay.
const MAX_DELAY_US: u64 = 2_000;

/// The seed the runner passed, if any.
pub(crate) fn seed() -> Option<u64> {
    std::env::var(crate::protocol::CHAOS_ENV).ok()?.parse().ok()
}

thread_local! {
    /// This thread's generator state; 0 until its first draw.
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// Threads seen so far: each one's generator starts from the seed and its number.
static THREADS: AtomicU64 = AtomicU64::new(0);

/// Called before a poll: one time in eight a delay of up to [`MAX_DELAY_US`], one time in
/// four a yield of the thread, otherwise nothing.
pub(crate) fn perturb(seed: u64) {
    let draw = STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            x = crate::protocol::splitmix64(seed ^ THREADS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9))
                | 1;
        }
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    });
    match draw % 8 {
        0 => std::thread::sleep(Duration::from_micros((draw >> 8) % MAX_DELAY_US)),
        1 | 2 => std::thread::yield_now(),
        _ => {}
    }
}
