//! `--partition count:M/N` and `hash:M/N`: this run takes shard M of N of the selected
//! tests, in nextest's syntax, so a CI matrix of N jobs runs each test exactly once and
//! `cargo hangcheck merge` puts their reports back together.
//!
//! `count` deals each test target's tests out in turn, in listing order (as nextest
//! does, per test binary): shards stay even, but adding a test moves the ones after it.
//! `hash` puts a test in the shard its id hashes to: a test keeps its shard as others
//! come and go, at the price of uneven shards. The hash is FNV-1a of `target::name`,
//! fixed here so that every job of a matrix (and every version) agrees on it.

use std::fmt;

/// How the tests are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Round-robin per test target, in listing order.
    Count,
    /// By a stable hash of the test's id.
    Hash,
}

/// Shard `shard` (1-based) of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub scheme: Scheme,
    pub shard: u64,
    pub total: u64,
}

impl Partition {
    /// Whether the `index`-th selected test of its target (0-based), named `id`, is in
    /// this shard.
    pub fn takes(&self, index: usize, id: &str) -> bool {
        let slot = match self.scheme {
            Scheme::Count => index as u64 % self.total,
            Scheme::Hash => fnv1a(id.as_bytes()) % self.total,
        };
        slot + 1 == self.shard
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Count => "count",
            Scheme::Hash => "hash",
        };
        write!(f, "{scheme}:{}/{}", self.shard, self.total)
    }
}

/// Parses `count:M/N` or `hash:M/N`, 1 ≤ M ≤ N.
pub fn parse(s: &str) -> Result<Partition, String> {
    let bad = |why: &str| format!("`{s}` is not a partition like `count:1/3` or `hash:2/4`: {why}");
    let (scheme, shards) = s.split_once(':').ok_or_else(|| bad("expected SCHEME:M/N"))?;
    let scheme = match scheme {
        "count" => Scheme::Count,
        "hash" => Scheme::Hash,
        _ => return Err(bad("the scheme is `count` or `hash`")),
    };
    let (m, n) = shards.split_once('/').ok_or_else(|| bad("expected M/N"))?;
    let shard: u64 = m.parse().map_err(|_| bad("M is not a number"))?;
    let total: u64 = n.parse().map_err(|_| bad("N is not a number"))?;
    if total == 0 || shard == 0 || shard > total {
        return Err(bad("M must be between 1 and N"));
    }
    Ok(Partition { scheme, shard, total })
}

/// 64-bit FNV-1a: tiny, stable, and good enough to spread test names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nextests_syntax_and_rejects_the_rest() {
        assert_eq!(parse("count:1/2"), Ok(Partition { scheme: Scheme::Count, shard: 1, total: 2 }));
        assert_eq!(parse("hash:3/3").unwrap().to_string(), "hash:3/3");
        for bad in ["count:0/2", "count:3/2", "count:1/0", "slice:1/2", "count:1", "count", "hash:a/2", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_test_lands_in_exactly_one_shard() {
        let ids: Vec<String> = (0..50).map(|i| format!("e2e::t{i:02}")).collect();
        for scheme in [Scheme::Count, Scheme::Hash] {
            let shards: Vec<Partition> = (1..=3).map(|shard| Partition { scheme, shard, total: 3 }).collect();
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(shards.iter().filter(|p| p.takes(i, id)).count(), 1, "{scheme:?} {id}");
            }
            // Neither scheme leaves a shard empty here.
            assert!(shards.iter().all(|p| ids.iter().enumerate().any(|(i, id)| p.takes(i, id))), "{scheme:?}");
        }
    }
}
