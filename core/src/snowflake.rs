//! Snowflake-layout ids computed from command timestamps, so replay reproduces them exactly.
//!
//! ```text
//!  63 62                                   22 21        12 11          0
//! +--+---------------------------------------+------------+-------------+
//! |0 | milliseconds since EPOCH_UNIX_MS (41)  | shard (10) | counter (12)|
//! +--+---------------------------------------+------------+-------------+
//! ```
//!
//! More than 4096 ids in one millisecond borrow the next millisecond instead of waiting; the
//! generator's millisecond may therefore run ahead of the clock during a burst.

use crate::types::Timestamp;

/// The snowflake epoch: 2025-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_UNIX_MS: u64 = 1_735_689_600_000;
/// Bits of the per-millisecond counter.
pub const COUNTER_BITS: u32 = 12;
/// Bits of the shard id.
pub const SHARD_BITS: u32 = 10;
/// Bits of the millisecond.
pub const MILLIS_BITS: u32 = 41;
const SHARD_SHIFT: u32 = COUNTER_BITS;
const MILLIS_SHIFT: u32 = COUNTER_BITS + SHARD_BITS;
const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;
const MILLIS_MAX: u64 = (1 << MILLIS_BITS) - 1;

const _: () = assert!(MILLIS_BITS + SHARD_BITS + COUNTER_BITS == 63);

/// The state of one id sequence: the last millisecond used and the counter within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snowflake {
    shard: u16,
    millis: u64,
    counter: u64,
    /// Whether any id was issued yet; the first one may use counter 0 at millisecond 0.
    started: bool,
}

/// The fields of a snowflake id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnowflakeParts {
    /// Milliseconds since [`EPOCH_UNIX_MS`].
    pub millis: u64,
    /// Shard id.
    pub shard: u16,
    /// Counter within the millisecond.
    pub counter: u16,
}

impl Snowflake {
    /// A generator for `shard` (below 1024).
    #[must_use]
    pub fn new(shard: u16) -> Snowflake {
        assert!(u64::from(shard) < (1 << SHARD_BITS));
        Snowflake { shard, millis: 0, counter: 0, started: false }
    }

    /// Whether [`Snowflake::next_id`] can issue an id at `now`. False only when the clock is
    /// past the 41-bit millisecond range (around 2094) and that last millisecond is used up:
    /// callers refuse the command instead of repeating an id.
    #[must_use]
    pub fn can_issue(&self, now: Timestamp) -> bool {
        let now_millis = now.0.saturating_sub(EPOCH_UNIX_MS).min(MILLIS_MAX);
        !self.started
            || now_millis > self.millis
            || self.counter < COUNTER_MAX
            || self.millis < MILLIS_MAX
    }

    /// The next id at time `now`. Never repeats, always increases. Panics if
    /// [`Snowflake::can_issue`] is false.
    pub fn next_id(&mut self, now: Timestamp) -> u64 {
        let now_millis = now.0.saturating_sub(EPOCH_UNIX_MS).min(MILLIS_MAX);
        let (started, before) = (self.started, (self.millis, self.counter));
        if !self.started || now_millis > self.millis {
            self.millis = now_millis;
            self.counter = 0;
            self.started = true;
        } else if self.counter < COUNTER_MAX {
            self.counter += 1;
        } else {
            // Borrow the next millisecond rather than wait: the BLP never blocks.
            assert!(self.millis < MILLIS_MAX, "snowflake millisecond space exhausted");
            self.millis += 1;
            self.counter = 0;
        }
        if self.millis == 0 && self.shard == 0 && self.counter == 0 {
            // Zero is never an id (it reads as "none", and the engine asserts it away): shard
            // 0's millisecond 0 — a clock at or before the epoch — starts counting at 1.
            self.counter = 1;
        }
        let id =
            (self.millis << MILLIS_SHIFT) | (u64::from(self.shard) << SHARD_SHIFT) | self.counter;
        assert_ne!(id, 0, "zero is never an id");
        // Debug assertions: this runs for every order and coupon. Ids strictly increase (so none
        // repeats), carry the shard, and come from command time, borrowing ahead but never behind.
        debug_assert!(!started || (self.millis, self.counter) > before, "an id did not increase");
        debug_assert_eq!(Snowflake::parts(id).shard, self.shard, "an id of another shard");
        debug_assert!(self.millis >= now_millis, "an id from before its command");
        id
    }

    /// The shard the generator issues ids for.
    #[must_use]
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// The generator's state as a snapshot stores it: (last millisecond, counter, started).
    pub(crate) fn state(&self) -> (u64, u64, bool) {
        (self.millis, self.counter, self.started)
    }

    /// A generator in a state read from a snapshot, or `None` when no generator can be in it:
    /// a shard or millisecond out of range, a counter past 4095 (its ids would overwrite the
    /// shard bits), or a generator that issued nothing but moved.
    pub(crate) fn from_state(
        shard: u16,
        millis: u64,
        counter: u64,
        started: bool,
    ) -> Option<Snowflake> {
        let in_range = u64::from(shard) < (1 << SHARD_BITS)
            && millis <= MILLIS_MAX
            && counter <= COUNTER_MAX
            && (started || (millis == 0 && counter == 0));
        in_range.then_some(Snowflake { shard, millis, counter, started })
    }

    /// Splits an id into its fields.
    #[must_use]
    pub fn parts(id: u64) -> SnowflakeParts {
        SnowflakeParts {
            millis: id >> MILLIS_SHIFT,
            shard: ((id >> SHARD_SHIFT) & ((1 << SHARD_BITS) - 1)) as u16,
            counter: (id & COUNTER_MAX) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_never_issued_even_by_shard_zero_before_the_epoch() {
        // Goal: a node of shard 0 whose clock reads before the snowflake epoch (every such
        // time is millisecond 0) issues 1, 2, ... and never 0, which reads as "no order".
        let mut flake = Snowflake::new(0);
        let ids: Vec<u64> = (0..5).map(|_| flake.next_id(Timestamp(1_700_000_000_000))).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        let mut flake = Snowflake::new(0);
        assert_eq!(flake.next_id(Timestamp(EPOCH_UNIX_MS + 1)), 1 << MILLIS_SHIFT);
    }

    #[test]
    fn ids_carry_time_shard_and_counter() {
        // Goal: the layout puts each field where the diagram says.
        let mut flake = Snowflake::new(5);
        let id = flake.next_id(Timestamp(EPOCH_UNIX_MS + 1_000));
        assert_eq!(Snowflake::parts(id), SnowflakeParts { millis: 1_000, shard: 5, counter: 0 });
        let id = flake.next_id(Timestamp(EPOCH_UNIX_MS + 1_000));
        assert_eq!(Snowflake::parts(id).counter, 1);
    }

    #[test]
    fn burst_past_4096_borrows_the_next_millisecond() {
        // Goal: the 4097th id in one millisecond moves to the next millisecond, ids still grow.
        let mut flake = Snowflake::new(0);
        let now = Timestamp(EPOCH_UNIX_MS + 7);
        let mut last = 0;
        for i in 0..4096 + 10 {
            let id = flake.next_id(now);
            assert!(i == 0 || id > last);
            last = id;
        }
        assert_eq!(Snowflake::parts(last), SnowflakeParts { millis: 8, shard: 0, counter: 9 });
        // The clock catching up to the borrowed millisecond must not reuse an id.
        let next = flake.next_id(Timestamp(EPOCH_UNIX_MS + 8));
        assert!(next > last);
    }

    #[test]
    fn clock_past_the_millisecond_range_stops_issuing_instead_of_repeating() {
        // Goal: a clock far in the future exhausts the id space visibly, never reusing an id.
        let mut flake = Snowflake::new(0);
        let far = Timestamp(u64::MAX);
        for _ in 0..=COUNTER_MAX {
            assert!(flake.can_issue(far));
            flake.next_id(far);
        }
        assert!(!flake.can_issue(far));
    }

    #[test]
    fn clock_before_the_epoch_saturates() {
        // Goal: timestamps before the epoch do not underflow.
        let mut flake = Snowflake::new(3);
        let id = flake.next_id(Timestamp(12));
        assert_eq!(Snowflake::parts(id).millis, 0);
    }
}
