//! Rounds: `--repeat N`, `--for DURATION` and `--until-fail` run the selected tests over
//! and over against the same server, so that a hang that shows once in twenty runs shows,
//! and slow leaks accumulate; `--shuffle[=SEED]` changes the order in each round, from a
//! seed that is printed and recorded so that a failing order replays exactly.

use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::splitmix64 as splitmix;

use crate::cli::TestArgs;

/// How many rounds, and in which order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub repeat: Option<u32>,
    pub for_duration: Option<Duration>,
    pub until_fail: bool,
    pub shuffle: Option<u64>,
    /// `--chaos`'s seed (the server gets it in its environment).
    pub chaos: Option<u64>,
    /// `--fresh-server`: a server of its own for each round.
    pub fresh_server: bool,
}

impl Plan {
    /// The plan of the command line; `--shuffle` without a seed draws one.
    pub fn of(args: &TestArgs) -> Plan {
        Plan {
            repeat: args.repeat,
            for_duration: args.for_duration,
            until_fail: args.until_fail,
            shuffle: args.shuffle.map(|seed| seed.unwrap_or_else(draw_seed)),
            chaos: args.chaos.map(|seed| seed.unwrap_or_else(draw_seed)),
            fresh_server: args.fresh_server,
        }
    }

    /// Whether the run has rounds at all (otherwise it runs as it always has).
    pub fn repeating(&self) -> bool {
        self.repeat.is_some()
            || self.for_duration.is_some()
            || self.until_fail
            || self.shuffle.is_some()
            || self.chaos.is_some()
    }

    /// Whether another round follows round `done`, begun at `started`.
    pub fn another(&self, done: u32, started: Instant) -> bool {
        let within_count = self.repeat.is_none_or(|n| done < n);
        let within_time = self.for_duration.is_none_or(|d| started.elapsed() < d);
        match (self.repeat, self.for_duration, self.until_fail) {
            // --until-fail alone goes on until something fails (bounded by Ctrl-C).
            (None, None, true) => true,
            _ => within_count && within_time && (self.repeat.is_some() || self.for_duration.is_some()),
        }
    }
}

/// A seed from the clock and the process id: a new order every run, printed so it can be
/// replayed.
fn draw_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    splitmix(nanos as u64 ^ u64::from(std::process::id())) % 1_000_000_000
}

/// Shuffles `items` for round `round` of seed `seed` (Fisher–Yates).
pub fn shuffle<T>(items: &mut [T], seed: u64, round: u32) {
    let mut state = splitmix(seed ^ (u64::from(round) << 32));
    for i in (1..items.len()).rev() {
        state = splitmix(state);
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_order_and_rounds_differ() {
        let order = |seed, round| {
            let mut v: Vec<u32> = (0..20).collect();
            shuffle(&mut v, seed, round);
            v
        };
        assert_eq!(order(7, 1), order(7, 1));
        assert_ne!(order(7, 1), order(7, 2));
        assert_ne!(order(7, 1), order(8, 1));
        let mut sorted = order(7, 1);
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn rounds_end_at_the_count() {
        let plan = Plan { repeat: Some(3), ..Plan::default() };
        let now = Instant::now();
        assert!(plan.another(2, now) && !plan.another(3, now));
        assert!(!Plan::default().another(1, now));
        assert!(Plan { until_fail: true, ..Plan::default() }.another(100, now));
    }
}
