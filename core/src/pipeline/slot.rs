//! The ring's event: a preallocated plain struct a producer fills, every stage reads, the BLP
//! answers into and egress delivers from. Also the poller seam over the `disruptor` crate.

use std::cell::UnsafeCell;

use disruptor::{
    EventPoller, MultiConsumerBarrier, MultiProducerBarrier, Polling, SingleConsumerBarrier,
};

use super::messages::Reply;
use crate::command::Command;
use crate::outcome::Outcome;
use crate::record::RecordBuf;
use crate::types::{Epoch, Sequence, Timestamp};

/// What a slot carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotKind {
    /// A command to sequence: a mutating one is journaled, replicated, applied and answered;
    /// a read is applied and answered.
    Command,
    /// A record already sequenced and stamped elsewhere (a standby's intake from its primary):
    /// its sequence, epoch, timestamp and framed bytes are the primary's and are kept as they
    /// are; it is journaled, replicated onward and applied like a command.
    Record,
    /// Published once by `shutdown` after intake stopped: each stage flushes and exits when it
    /// reads it. It takes a ring position but no journal sequence, and it is always the last
    /// slot a stage reads, so journal sequences stay contiguous.
    Stop,
}

/// The BLP's answer for a slot, written in place.
///
/// Ownership is handed along by the ring's sequence barriers, not by a lock:
/// - only the BLP (or the compact processor) writes it, while it reads the slot's sequence;
/// - it publishes the write with a release store (its cursor and the applied watermark), and
///   egress reads the outcome only after an acquire load showed both past the sequence;
/// - producers never touch it, and reuse the slot only after egress passed it.
pub(crate) struct OutcomeCell(UnsafeCell<Outcome>);

// SAFETY: access is serialised by the ring's barriers as described on `OutcomeCell`: one
// writer (the applying stage) before a release store, readers (egress) only after the matching
// acquire load, and no access at all while a producer holds the slot exclusively.
unsafe impl Sync for OutcomeCell {}

impl OutcomeCell {
    fn new() -> OutcomeCell {
        OutcomeCell(UnsafeCell::new(Outcome::Ticked { now: Timestamp(0) }))
    }

    /// Writes the outcome.
    ///
    /// # Safety
    /// The caller is the applying stage and is reading this slot's sequence: it has passed the
    /// producer barrier for it, and no egress read of this sequence can start before the caller
    /// publishes its progress with a release store.
    pub(crate) unsafe fn write(&self, outcome: Outcome) {
        // SAFETY: per the function's contract no other thread reads or writes the cell now.
        unsafe { *self.0.get() = outcome };
    }

    /// Reads the outcome.
    ///
    /// # Safety
    /// The caller is egress and has observed, with an acquire load, that the applying stage
    /// finished this slot's sequence; the producer cannot reuse the slot until egress passes it.
    pub(crate) unsafe fn read(&self) -> Outcome {
        // SAFETY: per the function's contract the write happened-before and no write races.
        unsafe { *self.0.get() }
    }
}

/// A slot's framed record bytes, encoded once and read by the stages behind the one that wrote
/// them.
///
/// Ownership is handed along by the ring's barriers, like [`OutcomeCell`]:
/// - for a `Command` slot, only the journaling stage (the journaler, or the compact processor)
///   writes it, while it reads the slot; the replicator reads it only from behind the
///   journaling stage in the ring's dependency graph (or, in the compact processor, after the
///   write on the same thread);
/// - for a `Record` slot, the producer writes it before publishing, and nobody writes it again;
/// - producers reuse the slot only after egress, behind every stage, passed it.
pub(crate) struct RecordCell(UnsafeCell<RecordBuf>);

// SAFETY: access is serialised by the ring's barriers as described on `RecordCell`: one writer
// before a release (the writer's cursor or the producer's publication), readers only after the
// matching acquire.
unsafe impl Sync for RecordCell {}

impl RecordCell {
    fn new() -> RecordCell {
        RecordCell(UnsafeCell::new(RecordBuf::default()))
    }

    /// The buffer, for writing.
    ///
    /// # Safety
    /// The caller is the slot's one writer as described on [`RecordCell`]: the journaling
    /// stage reading a `Command` slot, or a producer holding the slot before publishing it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn write(&self) -> &mut RecordBuf {
        // SAFETY: per the function's contract nobody else reads or writes the cell now.
        unsafe { &mut *self.0.get() }
    }

    /// The record's bytes.
    ///
    /// # Safety
    /// The caller reads after the write, as described on [`RecordCell`], and the slot is not
    /// reused before the returned borrow ends (it is held within one ring batch).
    pub(crate) unsafe fn read(&self) -> &[u8] {
        // SAFETY: per the function's contract the write happened-before and none races.
        unsafe { (*self.0.get()).as_bytes() }
    }
}

/// One ring slot. Plain, fixed-size and preallocated: publishing overwrites it in place.
///
/// Laid out in the order the fields are used, so a command's trip touches as few cache lines
/// as it can: what every producer writes first, then the outcome egress reads, then what only
/// records and framing use. Aligned to a cache line, so that no line holds both what the
/// producer writes and what the applying stage writes (of this slot or the next): each line
/// crosses between cores only as often as the data on it must.
#[repr(C, align(64))]
pub(crate) struct Slot {
    pub(crate) kind: SlotKind,
    pub(crate) reply: Reply,
    /// Monotonic nanoseconds since node start when the producer published, for the
    /// publish-to-egress latency histogram.
    pub(crate) published_ns: u64,
    pub(crate) timestamp: Timestamp,
    pub(crate) command: Command,
    pub(crate) outcome: Aligned<OutcomeCell>,
    /// For a `Record` slot, the sequence and epoch the primary gave it; unused otherwise.
    pub(crate) sequence: Sequence,
    pub(crate) epoch: Epoch,
    pub(crate) record: RecordCell,
}

/// How many ring positions ahead of the slot it fills (or applies) a producer (or the applying
/// stage) starts loading the lines it will write there. A slot's lines were last read on
/// other cores a whole ring ago and have since left this core's caches: without the hint, each
/// write waits for its lines. Far enough ahead for them to arrive, near enough to stay.
pub(crate) const WARM_AHEAD: usize = 16;

impl Slot {
    /// Starts loading, into this core's cache, the lines a producer writes in the slot
    /// [`WARM_AHEAD`] positions after this one (everything before the outcome). Changes
    /// nothing.
    #[inline(always)]
    pub(crate) fn warm_ahead_for_producer(&self) {
        let ahead = std::ptr::from_ref(self).wrapping_add(WARM_AHEAD);
        warm_lines(ahead.cast(), std::mem::offset_of!(Slot, outcome));
    }

    /// Starts loading, into this core's cache, the outcome lines of the slot [`WARM_AHEAD`]
    /// positions after this one, which the applying stage writes. Changes nothing.
    #[inline(always)]
    pub(crate) fn warm_ahead_for_outcome(&self) {
        let ahead = std::ptr::from_ref(self).wrapping_add(WARM_AHEAD);
        let outcome = ahead.cast::<u8>().wrapping_add(std::mem::offset_of!(Slot, outcome));
        warm_lines(outcome, std::mem::size_of::<Outcome>());
    }

    pub(crate) fn empty() -> Slot {
        Slot {
            kind: SlotKind::Command,
            timestamp: Timestamp(0),
            command: Command::Tick,
            sequence: Sequence(0),
            epoch: Epoch(0),
            record: RecordCell::new(),
            reply: Reply::NOBODY,
            published_ns: 0,
            outcome: Aligned(OutcomeCell::new()),
        }
    }
}

/// Hints every cache line of the `len` bytes from `start` into this core's cache.
///
/// The slots of a ring are one contiguous allocation (the `disruptor` crate's ring buffer), so a
/// slot's address plus [`WARM_AHEAD`] slots is a slot of the same ring, or past its end near
/// the wrap, where the hint is wasted but harmless: a prefetch never faults and changes no
/// memory, and nothing reads through the pointer.
#[inline(always)]
fn warm_lines(start: *const u8, len: usize) {
    for offset in (0..len).step_by(64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint: it never faults, whatever the address, and does not
        // change memory.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                start.wrapping_add(offset).cast(),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, offset);
    }
}

/// A field that starts a cache line.
#[repr(align(64))]
pub(crate) struct Aligned<T>(pub(crate) T);

impl<T> std::ops::Deref for Aligned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

const _: () = {
    assert!(std::mem::offset_of!(Slot, outcome) % 64 == 0, "the outcome starts a line");
    assert!(std::mem::size_of::<Slot>() % 64 == 0, "slots are whole lines");
};

/// How [`RingPoller::drain_ahead`] shows a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Visit {
    /// The slot will be handled a few slots from now: a time to warm what it touches.
    Ahead,
    /// The slot's turn, in ring order.
    Handle,
}

/// A reader of the ring at one point of the dependency graph. The `disruptor` crate's pollers
/// differ in their barrier type (producer, one upstream stage, several upstream stages); stage
/// loops are written once against this trait.
pub(crate) trait RingPoller: Send + 'static {
    /// Calls `each` with up to `limit` published slots in ring order and their ring positions
    /// (`*next`, `*next + 1`, ...), then marks them read (releasing them to the stages
    /// behind). `*next` moves past every slot taken before any is handled: the slots are
    /// marked read even if `each` panics, so the count stays right. Returns how many were read.
    fn drain<F: FnMut(&Slot, u64)>(&mut self, limit: u64, next: &mut u64, each: F) -> u64;

    /// Like [`RingPoller::drain`], but shows each slot to `each` twice: first as
    /// [`Visit::Ahead`] up to `AHEAD` slots before it is handled, then as [`Visit::Handle`],
    /// in ring order. Looks ahead only within the slots already taken: it never waits.
    fn drain_ahead<const AHEAD: usize, F: FnMut(&Slot, u64, Visit)>(
        &mut self,
        limit: u64,
        next: &mut u64,
        each: F,
    ) -> u64;

    /// Whether at least one slot is ready to read.
    fn has_available(&self) -> bool;
}

macro_rules! ring_poller {
    ($barrier:ty) => {
        impl RingPoller for EventPoller<Slot, $barrier> {
            fn drain<F: FnMut(&Slot, u64)>(
                &mut self,
                limit: u64,
                next: &mut u64,
                mut each: F,
            ) -> u64 {
                assert!(limit > 0, "a drain reads at least one slot");
                match self.take(limit) {
                    Ok(mut guard) => {
                        let count = (&mut guard).len() as u64;
                        let first = *next;
                        *next += count;
                        for (sequence, slot) in (first..).zip(&mut guard) {
                            each(slot, sequence);
                        }
                        count
                    }
                    // `Shutdown` only follows the last producer's drop; the node keeps one until
                    // every stage has exited, so it reads as "nothing to do".
                    Err(Polling::NoEvents | Polling::Shutdown) => 0,
                }
            }

            fn drain_ahead<const AHEAD: usize, F: FnMut(&Slot, u64, Visit)>(
                &mut self,
                limit: u64,
                next: &mut u64,
                mut each: F,
            ) -> u64 {
                const { assert!(AHEAD > 0, "a look-ahead window holds at least one slot") };
                assert!(limit > 0, "a drain reads at least one slot");
                let Ok(mut guard) = self.take(limit) else { return 0 };
                let count = (&mut guard).len() as u64;
                let first = *next;
                *next += count;
                // Slot `sequence` waits in `window[sequence % AHEAD]` until `AHEAD` later slots
                // have been taken, or the batch has run out.
                let mut window: [Option<&Slot>; AHEAD] = [None; AHEAD];
                let index = |sequence: u64| (sequence % AHEAD as u64) as usize;
                for (sequence, slot) in (first..).zip(&mut guard) {
                    each(slot, sequence, Visit::Ahead);
                    if let Some(behind) = window[index(sequence)].replace(slot) {
                        each(behind, sequence - AHEAD as u64, Visit::Handle);
                    }
                }
                let end = first + count;
                for sequence in end.saturating_sub(AHEAD as u64).max(first)..end {
                    let slot = window[index(sequence)].take();
                    each(
                        slot.expect("every slot taken waits in the window"),
                        sequence,
                        Visit::Handle,
                    );
                }
                count
            }

            fn has_available(&self) -> bool {
                EventPoller::has_available(self)
            }
        }
    };
}

ring_poller!(MultiProducerBarrier);
ring_poller!(SingleConsumerBarrier);
ring_poller!(MultiConsumerBarrier);
