//! Where a node's time comes from. Producers stamp every command with [`Clock::timestamp`];
//! the timer decides whether a `Tick` is due by it; the journal's `interval` policy measures
//! its period by [`Clock::now_ns`]. Production nodes use [`SystemClock`]; a test or the
//! simulator drives a [`ManualClock`] and the node sees exactly the time it is given.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::types::Timestamp;

/// A source of time for a node. Implementations must be monotonic in `now_ns`.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the clock's origin; never decreases.
    fn now_ns(&self) -> u64;
    /// The command timestamp (milliseconds since the Unix epoch) of the reading `now_ns`.
    fn timestamp(&self, now_ns: u64) -> Timestamp;
}

/// The machine's clocks: the wall-clock time at creation, advanced by the monotonic clock, so
/// one read gives both the timestamp and the nanoseconds used for latency, and a wall-clock
/// step (NTP, an operator) never reaches the BLP mid-run.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
    wall_ms_at_start: u64,
}

impl SystemClock {
    /// A clock anchored at the current wall-clock time.
    #[must_use]
    pub fn new() -> SystemClock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        SystemClock {
            start: Instant::now(),
            wall_ms_at_start: u64::try_from(wall).unwrap_or(u64::MAX),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn timestamp(&self, now_ns: u64) -> Timestamp {
        Timestamp(self.wall_ms_at_start.saturating_add(now_ns / 1_000_000))
    }
}

/// A clock that moves only when told to: for tests and the simulator.
#[derive(Debug)]
pub struct ManualClock {
    ns: AtomicU64,
    wall_ms_at_zero: u64,
}

impl ManualClock {
    /// A clock reading zero nanoseconds, which stands for `wall_ms_at_zero`.
    #[must_use]
    pub fn new(wall_ms_at_zero: Timestamp) -> ManualClock {
        ManualClock { ns: AtomicU64::new(0), wall_ms_at_zero: wall_ms_at_zero.0 }
    }

    /// Moves the clock forward by `ns` nanoseconds.
    pub fn advance_ns(&self, ns: u64) {
        let before = self.ns.fetch_add(ns, Ordering::AcqRel);
        assert!(before.checked_add(ns).is_some(), "manual clock overflowed");
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: u64) {
        self.advance_ns(ms.checked_mul(1_000_000).expect("advance within u64 nanoseconds"));
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.ns.load(Ordering::Acquire)
    }

    fn timestamp(&self, now_ns: u64) -> Timestamp {
        Timestamp(self.wall_ms_at_zero.saturating_add(now_ns / 1_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        // Goal: a manual clock reads what it was advanced to, in both units, and nothing else.
        let clock = ManualClock::new(Timestamp(1_000));
        assert_eq!(clock.now_ns(), 0);
        assert_eq!(clock.timestamp(clock.now_ns()), Timestamp(1_000));
        clock.advance_ns(999_999);
        assert_eq!(clock.timestamp(clock.now_ns()), Timestamp(1_000));
        clock.advance_ns(1);
        assert_eq!(clock.timestamp(clock.now_ns()), Timestamp(1_001));
        clock.advance_ms(9);
        assert_eq!(clock.now_ns(), 10_000_000);
        assert_eq!(clock.timestamp(clock.now_ns()), Timestamp(1_010));
    }

    #[test]
    fn the_system_clock_is_monotonic_and_near_the_wall_clock() {
        // Goal: readings never go back and the timestamp starts at the wall-clock time.
        let clock = SystemClock::new();
        let first = clock.now_ns();
        let second = clock.now_ns();
        assert!(second >= first);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let stamped = clock.timestamp(second).0;
        assert!(stamped.abs_diff(wall) < 60_000, "stamped {stamped}, wall {wall}");
    }
}
