//! Where a node's time comes from. Producers stamp every command with [`Clock::timestamp`];
//! the timer decides whether a `Tick` is due by it; the journal's `interval` policy measures
//! its period by [`Clock::now_ns`]. Production nodes use [`SystemClock`]; a test or the
//! simulator drives a [`ManualClock`] and the node sees exactly the time it is given.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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

/// A node's time line: the stamps it gives commands, as its clock reads them shifted by a
/// fixed number of milliseconds. The journal's stamps are the pair's one time line — payment
/// deadlines and request-key windows are measured on it — and a machine's wall clock can be
/// minutes off another's, so a node does not jump to its own clock where the time line
/// already stands elsewhere:
///
/// - A node starting from its journal stamps no earlier than the journal's last command: a
///   clock behind it would hold the engine's time still (deadlines and key windows paused)
///   until the clock caught up.
/// - A standby promoted in place goes on from the last record its primary sent, advanced by
///   the time since that record arrived: a clock ahead of the primary's would otherwise
///   expire, at the first command, every request key and payment deadline within its lead —
///   a retried request executed twice, buyers' reservations gone before their time.
///
/// The shift is set at start and at a promotion, never in between, so the commands a node
/// stamps never go back: before a promotion it journals its primary's records, stamped there,
/// and after it goes on from the last of them. `shift_ms` is how far the node stands from its
/// own clock: beyond a second or so, a machine's clock needs looking at.
#[derive(Debug)]
pub(crate) struct TimeLine {
    /// Milliseconds added to the clock's timestamp.
    shift_ms: AtomicI64,
    /// The stamp of the last record received from a primary, and the clock's reading (ns)
    /// when it arrived (`u64::MAX`: none yet).
    record_ms: AtomicU64,
    record_arrived_ns: AtomicU64,
    /// The offsets (the clock's reading on arrival less the record's stamp, ms) of the records
    /// received from a primary: the least of those in the window that began at
    /// `offset_window_ns`, and of those in the window before it (`i64::MAX`: none). Written by
    /// the one session that feeds a standby its records.
    offset_window_ns: AtomicU64,
    offset_min: AtomicI64,
    offset_min_before: AtomicI64,
}

/// How long one window of [`TimeLine::primary_offset_ms`] lasts: the reading is the least
/// offset over the last one to two windows.
const OFFSET_WINDOW_NS: u64 = 10_000_000_000;

impl TimeLine {
    /// The time line of a node whose journal's last command was stamped `last`: the clock's,
    /// unless that reads earlier than `last`, then shifted to start at `last`.
    pub(crate) fn starting_at(clock: &dyn Clock, last: Timestamp) -> TimeLine {
        let now = clock.timestamp(clock.now_ns());
        let shift_ms = i64::try_from(last.0.saturating_sub(now.0)).unwrap_or(i64::MAX);
        TimeLine {
            shift_ms: AtomicI64::new(shift_ms),
            record_ms: AtomicU64::new(0),
            record_arrived_ns: AtomicU64::new(u64::MAX),
            offset_window_ns: AtomicU64::new(0),
            offset_min: AtomicI64::new(i64::MAX),
            offset_min_before: AtomicI64::new(i64::MAX),
        }
    }

    /// The stamp of a command published at the clock's reading `ns`.
    pub(crate) fn stamp(&self, clock: &dyn Clock, ns: u64) -> Timestamp {
        shifted(clock.timestamp(ns), self.shift_ms.load(Ordering::Acquire))
    }

    /// Milliseconds between this node's stamps and its clock's (positive: ahead of it).
    pub(crate) fn shift_ms(&self) -> i64 {
        self.shift_ms.load(Ordering::Acquire)
    }

    /// A record stamped `stamp` arrived from the primary at the clock's reading `ns`. Called
    /// by the one session that feeds a standby its records.
    pub(crate) fn record_arrived(&self, clock: &dyn Clock, stamp: Timestamp, ns: u64) {
        self.record_ms.store(stamp.0, Ordering::Relaxed);
        self.record_arrived_ns.store(ns, Ordering::Release);
        let offset = offset_ms(clock, stamp, ns);
        // One writer: plain loads and stores, no read-modify-write on the record path.
        let window = self.offset_window_ns.load(Ordering::Relaxed);
        let since = ns.saturating_sub(window);
        if since >= OFFSET_WINDOW_NS {
            let before = if since >= 2 * OFFSET_WINDOW_NS {
                i64::MAX
            } else {
                self.offset_min.load(Ordering::Relaxed)
            };
            self.offset_min_before.store(before, Ordering::Relaxed);
            self.offset_min.store(offset, Ordering::Relaxed);
            self.offset_window_ns.store(ns, Ordering::Relaxed);
        } else if offset < self.offset_min.load(Ordering::Relaxed) {
            self.offset_min.store(offset, Ordering::Relaxed);
        }
    }

    /// How far the clock stands ahead of the primary's, as the records show it: the least,
    /// over the records that arrived in the last 10–20 s of their arrival, of the clock's
    /// reading on arrival less the record's stamp. A record's trip from the primary — a
    /// queue, a partition, a catch-up — only adds to its offset, so the least is the one that
    /// waited least. `None` until a record arrived.
    pub(crate) fn primary_offset_ms(&self) -> Option<i64> {
        let least = self.offset_min.load(Ordering::Relaxed);
        let least = least.min(self.offset_min_before.load(Ordering::Relaxed));
        (least != i64::MAX).then_some(least)
    }

    /// A standby takes over at the clock's reading `ns`: from now on it stamps on its
    /// primary's time line, continued from the last record by the time since it arrived. A
    /// standby that received no record keeps the time line it started with. Returns the new
    /// shift. Called once the records have stopped.
    pub(crate) fn take_over(&self, clock: &dyn Clock, ns: u64) -> i64 {
        let arrived = self.record_arrived_ns.load(Ordering::Acquire);
        #[cfg(feature = "mutations")]
        let arrived = if crate::mutation::promotion_keeps_clock() { u64::MAX } else { arrived };
        if arrived != u64::MAX {
            let stamp = self.record_ms.load(Ordering::Relaxed);
            let shift = continued_shift(clock, (Timestamp(stamp), arrived), ns);
            self.shift_ms.store(shift, Ordering::Release);
        }
        self.shift_ms()
    }
}

/// How far the clock's reading `ns` stands ahead of `stamp`, in milliseconds.
fn offset_ms(clock: &dyn Clock, stamp: Timestamp, ns: u64) -> i64 {
    let offset = i128::from(clock.timestamp(ns).0) - i128::from(stamp.0);
    i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX - 1 })
}

/// `stamp` moved by `shift_ms`, within the range of stamps.
fn shifted(stamp: Timestamp, shift_ms: i64) -> Timestamp {
    let moved = i128::from(stamp.0) + i128::from(shift_ms);
    Timestamp(u64::try_from(moved.max(0)).unwrap_or(u64::MAX))
}

/// The shift that puts the clock's reading `now_ns` at `record`'s stamp plus the time since it
/// arrived: `record` is a stamp and the clock's reading when it arrived.
fn continued_shift(clock: &dyn Clock, (stamp, arrived_ns): (Timestamp, u64), now_ns: u64) -> i64 {
    let since_ms = now_ns.saturating_sub(arrived_ns) / 1_000_000;
    let target = i128::from(stamp.0) + i128::from(since_ms);
    let shift = target - i128::from(clock.timestamp(now_ns).0);
    i64::try_from(shift).unwrap_or(if shift < 0 { i64::MIN } else { i64::MAX })
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

    #[test]
    fn a_node_starting_behind_its_journal_stamps_from_the_journals_last_command() {
        // Goal: a clock behind the journal's last stamp does not hold the engine's time still;
        // a clock ahead of it is used as it is.
        let clock = ManualClock::new(Timestamp(1_000));
        let behind = TimeLine::starting_at(&clock, Timestamp(61_000));
        assert_eq!(behind.shift_ms(), 60_000);
        assert_eq!(behind.stamp(&clock, clock.now_ns()), Timestamp(61_000));
        clock.advance_ms(5);
        assert_eq!(behind.stamp(&clock, clock.now_ns()), Timestamp(61_005));
        let ahead = TimeLine::starting_at(&clock, Timestamp(400));
        assert_eq!(ahead.shift_ms(), 0);
        assert_eq!(ahead.stamp(&clock, clock.now_ns()), Timestamp(1_005));
    }

    #[test]
    fn a_promoted_standby_continues_its_primarys_time_line() {
        // Goal: a standby whose clock runs an hour ahead of its primary's stamps on the
        // primary's time line once promoted, advanced by the time since the last record.
        let hour: i64 = 3_600_000;
        let clock = ManualClock::new(Timestamp(hour as u64 + 10_000));
        let line = TimeLine::starting_at(&clock, Timestamp(9_000));
        assert_eq!(line.shift_ms(), 0);
        assert_eq!(line.primary_offset_ms(), None, "no record yet");
        clock.advance_ms(100);
        line.record_arrived(&clock, Timestamp(10_098), clock.now_ns());
        assert_eq!(line.primary_offset_ms(), Some(hour + 2));
        clock.advance_ms(2_500);
        let shift = line.take_over(&clock, clock.now_ns());
        assert_eq!(shift, -(hour + 2));
        assert_eq!(line.stamp(&clock, clock.now_ns()), Timestamp(12_598));
        clock.advance_ms(1);
        assert_eq!(line.stamp(&clock, clock.now_ns()), Timestamp(12_599));
    }

    #[test]
    fn a_promoted_standby_behind_its_primary_does_not_go_back() {
        // Goal: a standby whose clock is behind its primary's continues from the last record
        // rather than stamping earlier than it; one that received no record keeps its shift.
        let clock = ManualClock::new(Timestamp(5_000));
        let line = TimeLine::starting_at(&clock, Timestamp(4_000));
        line.record_arrived(&clock, Timestamp(905_000), clock.now_ns());
        assert_eq!(line.primary_offset_ms(), Some(-900_000));
        assert_eq!(line.take_over(&clock, clock.now_ns()), 900_000);
        assert_eq!(line.stamp(&clock, clock.now_ns()), Timestamp(905_000));
        let fresh = TimeLine::starting_at(&clock, Timestamp(7_000));
        assert_eq!(fresh.take_over(&clock, clock.now_ns()), 2_000);
        assert_eq!(fresh.stamp(&clock, clock.now_ns()), Timestamp(7_000));
    }

    #[test]
    fn the_primary_offset_is_the_least_over_the_recent_records() {
        // Goal: a record held on its way (a queue, a partition, a catch-up) does not read as a
        // clock ahead while a record that waited less arrived within the window; a reading
        // older than two windows is forgotten, so a clock that moved shows.
        let clock = ManualClock::new(Timestamp(100_000));
        let line = TimeLine::starting_at(&clock, Timestamp(0));
        let window_ms = OFFSET_WINDOW_NS / 1_000_000;
        let arrive = |line: &TimeLine, trip_ms: u64| {
            let now_ns = clock.now_ns();
            line.record_arrived(&clock, Timestamp(clock.timestamp(now_ns).0 - trip_ms), now_ns);
        };
        assert_eq!(line.primary_offset_ms(), None, "no record yet");
        arrive(&line, 40);
        assert_eq!(line.primary_offset_ms(), Some(40));
        clock.advance_ms(1_000);
        arrive(&line, 3);
        clock.advance_ms(1_000);
        arrive(&line, 2_000);
        assert_eq!(line.primary_offset_ms(), Some(3), "the record held 2 s is not a lead");
        clock.advance_ms(window_ms);
        arrive(&line, 20);
        assert_eq!(line.primary_offset_ms(), Some(3), "the window before still counts");
        clock.advance_ms(window_ms);
        arrive(&line, 25);
        assert_eq!(line.primary_offset_ms(), Some(20), "two windows back is forgotten");
        clock.advance_ms(3 * window_ms);
        arrive(&line, 500);
        assert_eq!(line.primary_offset_ms(), Some(500), "after a silence, only what came since");
        clock.advance_ms(1);
        line.record_arrived(
            &clock,
            Timestamp(clock.timestamp(clock.now_ns()).0 + 7_000),
            clock.now_ns(),
        );
        assert_eq!(line.primary_offset_ms(), Some(-7_000), "a clock behind reads below zero");
    }

    #[test]
    fn shifted_stamps_stay_within_the_range_of_stamps() {
        // Goal: a shift never wraps a stamp below zero or past the top.
        assert_eq!(shifted(Timestamp(10), -20), Timestamp(0));
        assert_eq!(shifted(Timestamp(u64::MAX - 1), 5), Timestamp(u64::MAX));
        assert_eq!(shifted(Timestamp(10), 5), Timestamp(15));
    }
}
