//! What a simulated run did, as a trace: every event is folded into one running hash (the same
//! seed must give the same hash) and the last few are kept to print when a checker fails.

use std::collections::VecDeque;
use std::fmt::Write as _;

/// The trace of one run.
#[derive(Debug)]
pub struct Trace {
    hash: u64,
    events: u64,
    kept: VecDeque<String>,
    kept_max: usize,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace::keeping(64)
    }
}

impl Trace {
    /// A trace that keeps the last `kept_max` events to print.
    pub fn keeping(kept_max: usize) -> Trace {
        Trace { hash: 0, events: 0, kept: VecDeque::new(), kept_max: kept_max.max(1) }
    }

    /// Records one event at simulated time `now_ms`.
    pub fn event(&mut self, now_ms: u64, what: &str) {
        let mut line = String::with_capacity(what.len() + 16);
        let _ = write!(line, "{now_ms:>8} ms  {what}");
        self.hash = xxhash_rust::xxh3::xxh3_64_with_seed(line.as_bytes(), self.hash);
        self.events += 1;
        if self.kept.len() == self.kept_max {
            self.kept.pop_front();
        }
        self.kept.push_back(line);
    }

    /// The running hash of every event so far.
    #[must_use]
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many events were recorded.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.events
    }

    /// The last events, oldest first.
    pub fn last(&self) -> impl Iterator<Item = &str> {
        self.kept.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_on_every_event_and_its_order() {
        // Goal: two traces agree only if they saw the same events in the same order.
        let run = |events: &[(u64, &str)]| {
            let mut trace = Trace::default();
            for &(at, what) in events {
                trace.event(at, what);
            }
            trace.hash()
        };
        let base = run(&[(1, "a"), (2, "b")]);
        assert_eq!(base, run(&[(1, "a"), (2, "b")]));
        assert_ne!(base, run(&[(2, "b"), (1, "a")]));
        assert_ne!(base, run(&[(1, "a"), (3, "b")]));
        assert_ne!(base, run(&[(1, "a")]));
    }
}
