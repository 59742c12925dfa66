//! The clock of the hot paths: the kernel's coarse monotonic clock.
//!
//! Task births, poll starts and poll ends read the time on every spawn and every poll.
//! `CLOCK_MONOTONIC_COARSE` is read from the vDSO without touching the hardware counter,
//! several times cheaper than `Instant::now()`, and its resolution (the kernel tick, 1 to
//! 4 ms) is far finer than anything hangcheck judges: ages of leaked tasks and a stall
//! threshold of hundreds of milliseconds. Summed over many polls, coarse readings of
//! short polls still add up to the right busy time on average.

/// Nanoseconds on the coarse monotonic clock.
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the time into the timespec we own and pass by
    // pointer; CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
    if !ok {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds from `then` to `now` (both from [`now_ns`]), never negative.
pub(crate) fn ms_since(then: u64, now: u64) -> u64 {
    now.saturating_sub(then) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_and_never_goes_back() {
        let a = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = now_ns();
        assert!(b > a);
        assert!(ms_since(a, b) >= 10, "{}", ms_since(a, b));
        assert_eq!(ms_since(b, a), 0);
    }
}
