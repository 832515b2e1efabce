//! The payment deadlines of reserved orders, fired in (deadline, order id) order.
//!
//! An order's deadline is *now* plus its SKU's payment timeout, and now never goes back, so
//! the deadlines made with one timeout arrive already in firing order (ties in time are broken
//! by order id, and ids are issued in order too). Each timeout keeps its own first-in,
//! first-out lane, a list threaded through one pool of nodes written at start; the queue fires
//! from whichever lane's head comes first, found in a small heap of lane heads (one entry per
//! timeout in use: a handful in a sale). A push and a pop touch a few cache lines however many
//! deadlines are queued, where one binary heap of every deadline walked twenty levels of a
//! million entries, most of them cache misses, on every pop.
//!
//! A deadline whose order was paid or cancelled stays queued (stale) and is skipped when it
//! comes up; when the pool is full, the stale ones are swept out. Deadlines restored from a
//! snapshot, whose timeouts are not recorded, go to a lane of their own in firing order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::table::{self, FixedMap};
use crate::types::{OrderId, Timestamp};

/// A payment deadline: (when, which order, its slot).
pub(super) type Deadline = (Timestamp, OrderId, u32);

/// The end of a list.
const NONE: u32 = u32::MAX;

/// The lane that deadlines restored from an image join, sorted, before any other is used.
const RESTORED: u32 = 0;

/// A queued deadline and the next node of its lane (or of the free list).
#[derive(Clone, Copy, Debug)]
struct Node {
    expires_at: Timestamp,
    order: OrderId,
    slot: u32,
    next: u32,
}

// As small as the deadline itself: the link sits in what would be its padding.
const _: () = assert!(size_of::<Node>() == 24);

impl Node {
    fn deadline(&self) -> Deadline {
        (self.expires_at, self.order, self.slot)
    }
}

/// One lane: the first and last node of its list.
#[derive(Clone, Copy, Debug)]
struct Lane {
    head: u32,
    tail: u32,
}

const EMPTY_LANE: Lane = Lane { head: NONE, tail: NONE };

/// See the module documentation.
#[derive(Clone, Debug)]
pub(super) struct DeadlineQueue {
    /// Every node ever used, up to the capacity fixed at start; free ones are listed from
    /// `free`.
    nodes: Vec<Node>,
    free: u32,
    capacity: usize,
    /// Deadlines queued, stale ones included.
    len: usize,
    lanes: Vec<Lane>,
    /// The lane of each payment timeout in use.
    lane_of: FixedMap<u64, u32>,
    /// The last timeout pushed and its lane: a sale's reservations mostly share one.
    last_lane: Option<(u64, u32)>,
    /// The head of every lane that has one, earliest first: (deadline, order id, lane).
    heads: BinaryHeap<Reverse<(Timestamp, OrderId, u32)>>,
}

impl DeadlineQueue {
    /// A queue for up to `capacity` deadlines made with at most `timeouts_max` distinct
    /// payment timeouts, all its memory allocated and written now.
    pub(super) fn with_capacity(capacity: usize, timeouts_max: u32) -> DeadlineQueue {
        // Node numbers, and `NONE`, fit a u32.
        assert!(capacity < NONE as usize, "more deadlines than node numbers");
        let lanes_max = timeouts_max as usize + 1;
        let mut queue = DeadlineQueue {
            nodes: table::written_vec(capacity),
            free: NONE,
            capacity,
            len: 0,
            lanes: table::written_vec(lanes_max),
            lane_of: FixedMap::with_max(timeouts_max),
            last_lane: None,
            heads: BinaryHeap::from(table::written_vec(lanes_max)),
        };
        assert!(queue.nodes.capacity() >= capacity && queue.heads.capacity() >= lanes_max);
        queue.lanes.push(EMPTY_LANE);
        assert_eq!(queue.lanes.len() as u32 - 1, RESTORED, "the restored lane comes first");
        queue
    }

    /// Bytes a queue made by [`DeadlineQueue::with_capacity`] allocates and writes.
    pub(super) fn bytes_for(capacity: usize, timeouts_max: u32) -> usize {
        let lanes_max = timeouts_max as usize + 1;
        capacity * size_of::<Node>()
            + lanes_max * (size_of::<Lane>() + size_of::<Reverse<(Timestamp, OrderId, u32)>>())
            + FixedMap::<u64, u32>::bytes_for(timeouts_max)
    }

    /// Bytes this queue holds.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
            + self.lanes.capacity() * size_of::<Lane>()
            + self.heads.capacity() * size_of::<Reverse<(Timestamp, OrderId, u32)>>()
            + self.lane_of.bytes()
    }

    /// Deadlines queued, stale ones included.
    pub(super) fn len(&self) -> usize {
        debug_assert!(self.len <= self.capacity, "more deadlines than room");
        self.len
    }

    /// Deadlines the queue holds at most.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The next deadline to fire.
    pub(super) fn peek(&self) -> Option<Deadline> {
        let &Reverse((expires_at, order, lane)) = self.heads.peek()?;
        let head = &self.nodes[self.lanes[lane as usize].head as usize];
        debug_assert_eq!((head.expires_at, head.order), (expires_at, order), "a stale lane head");
        Some(head.deadline())
    }

    /// Takes the next deadline to fire.
    pub(super) fn pop(&mut self) -> Option<Deadline> {
        let Reverse((expires_at, order, lane)) = self.heads.pop()?;
        let lane = lane as usize;
        let index = self.lanes[lane].head;
        let node = self.nodes[index as usize];
        assert_eq!((node.expires_at, node.order), (expires_at, order), "a lane head moved");
        self.lanes[lane].head = node.next;
        if node.next == NONE {
            self.lanes[lane] = EMPTY_LANE;
        } else {
            let next = &self.nodes[node.next as usize];
            // A lane is in firing order: what comes next does not fire earlier.
            assert!((next.expires_at, next.order) >= (expires_at, order), "a lane out of order");
            self.heads.push(Reverse((next.expires_at, next.order, lane as u32)));
        }
        self.release(index);
        // Every lane head is counted, so the count cannot run out before the lanes do.
        debug_assert!(self.len > 0, "a deadline popped past the count");
        self.len -= 1;
        Some(node.deadline())
    }

    /// Queues `deadline`, made with `timeout_ms`. The caller makes room first
    /// ([`DeadlineQueue::sweep`]) when the queue is full.
    #[inline]
    pub(super) fn push(&mut self, deadline: Deadline, timeout_ms: u64) {
        let lane = match self.last_lane {
            Some((timeout, lane)) if timeout == timeout_ms => lane,
            _ => self.lane_for(timeout_ms),
        };
        debug_assert_eq!(self.lane_of.get(&timeout_ms), Some(&lane), "a lane cached wrong");
        self.append(lane, deadline);
    }

    /// The lane of `timeout_ms`, made if it has none, and remembered as the last one used.
    #[inline(never)]
    fn lane_for(&mut self, timeout_ms: u64) -> u32 {
        let located = self.lane_of.locate(timeout_ms);
        let lane = match located.value {
            Some(lane) => lane,
            None => {
                let lane = self.lanes.len() as u32;
                // One lane per SKU's timeout at most, after the restored deadlines' lane.
                assert!(self.lanes.len() < self.lanes.capacity(), "more timeouts than SKUs");
                self.lanes.push(EMPTY_LANE);
                self.lane_of.put_at(located, lane);
                lane
            }
        };
        assert!((lane as usize) < self.lanes.len(), "a timeout mapped past the lanes");
        self.last_lane = Some((timeout_ms, lane));
        lane
    }

    /// Appends `deadline` to `lane`, whose last deadline fires before it. Inlined into its
    /// callers: every reservation pushes a deadline, and a call's entry and exit cost a fifth of
    /// the push.
    #[inline(always)]
    fn append(&mut self, lane: u32, deadline: Deadline) {
        // The caller sweeps a full queue first; checked in debug builds (every reservation).
        debug_assert!(self.len < self.capacity, "a deadline pushed to a full queue");
        let (expires_at, order, slot) = deadline;
        let node = Node { expires_at, order, slot, next: NONE };
        let index = if self.free == NONE {
            // Within the capacity written at start, so the push never allocates.
            debug_assert!(self.nodes.len() < self.capacity, "no free node in a queue with room");
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        } else {
            let index = self.free;
            debug_assert!((index as usize) < self.nodes.len(), "a free node past the pool");
            self.free = self.nodes[index as usize].next;
            self.nodes[index as usize] = node;
            index
        };
        let tail = self.lanes[lane as usize].tail;
        if tail == NONE {
            self.lanes[lane as usize] = Lane { head: index, tail: index };
            self.heads.push(Reverse((expires_at, order, lane)));
        } else {
            let last = &mut self.nodes[tail as usize];
            // Now never goes back and ids are issued in order, so one timeout's deadlines
            // come in firing order; restored ones are sorted first. (Equal only in a damaged
            // image, whose duplicate the restore checks then refuse.)
            assert!((last.expires_at, last.order) <= (expires_at, order), "a lane out of order");
            last.next = index;
            self.lanes[lane as usize].tail = index;
        }
        self.len += 1;
        // The nodes the next pushes write: fresh ones in order (warmed a few pushes ahead, as
        // every table written in order), or the most recently freed.
        if self.free == NONE {
            table::warm(self.nodes.as_ptr().wrapping_add(index as usize), table::WARM_AHEAD_BYTES);
        } else {
            table::warm(self.nodes.as_ptr().wrapping_add(self.free as usize), 0);
        }
    }

    fn release(&mut self, index: u32) {
        debug_assert!((index as usize) < self.nodes.len(), "a node released past the pool");
        debug_assert_ne!(self.free, index, "a node released twice");
        self.nodes[index as usize].next = self.free;
        self.free = index;
    }

    /// Removes every deadline `keep` refuses, keeping the others' order. Out of line: it runs
    /// once per capacity's worth of pushes, and inlined it would burden every push.
    #[cold]
    #[inline(never)]
    pub(super) fn sweep(&mut self, mut keep: impl FnMut(&Deadline) -> bool) {
        self.heads.clear();
        for lane in 0..self.lanes.len() {
            let (mut at, mut last) = (self.lanes[lane].head, NONE);
            let mut kept = EMPTY_LANE;
            while at != NONE {
                let node = self.nodes[at as usize];
                if keep(&node.deadline()) {
                    if last == NONE {
                        kept.head = at;
                    } else {
                        self.nodes[last as usize].next = at;
                    }
                    last = at;
                } else {
                    self.release(at);
                    self.len -= 1;
                }
                at = node.next;
            }
            if last != NONE {
                self.nodes[last as usize].next = NONE;
                kept.tail = last;
                let head = self.nodes[kept.head as usize];
                self.heads.push(Reverse((head.expires_at, head.order, lane as u32)));
            }
            self.lanes[lane] = kept;
        }
        assert_eq!(self.iter().count(), self.len, "a sweep lost count of the deadlines");
    }

    /// Queues deadlines restored from an image, in any order, into an empty queue.
    pub(super) fn restore(&mut self, deadlines: &[Deadline]) {
        assert_eq!(self.len, 0, "deadlines restored into a queue in use");
        assert!(deadlines.len() <= self.capacity, "more deadlines restored than room");
        let mut sorted = deadlines.to_vec();
        sorted.sort_unstable();
        for deadline in sorted {
            self.append(RESTORED, deadline);
        }
        assert_eq!(self.len, deadlines.len(), "a restored deadline is missing");
    }

    /// Every deadline queued, lane by lane, each in firing order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Deadline> + '_ {
        self.lanes.iter().flat_map(move |lane| {
            let mut at = lane.head;
            std::iter::from_fn(move || {
                let node = self.nodes.get(at as usize)?;
                at = node.next;
                Some(node.deadline())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::*;
    use crate::hash::mix64;

    /// A run of pushes at a clock that only moves forward, with five timeouts, interleaved
    /// with pops of whatever is due; the queue must fire exactly what a binary heap of every
    /// deadline fires, in the same order.
    #[test]
    fn fires_in_the_order_a_heap_of_every_deadline_would() {
        let mut queue = DeadlineQueue::with_capacity(4_096, 8);
        let mut model = BinaryHeap::new();
        let (mut fired, mut expected) = (Vec::new(), Vec::new());
        for step in 0..20_000u64 {
            let now = Timestamp(step / 4);
            let roll = mix64(step);
            if roll % 3 == 0 && queue.len() < queue.capacity() {
                let timeout = [5, 9, 9, 20, 40][(roll >> 8) as usize % 5];
                let deadline = (Timestamp(now.0 + timeout), OrderId(step + 1), (roll >> 20) as u32);
                queue.push(deadline, timeout);
                model.push(Reverse(deadline));
            }
            while queue.peek().is_some_and(|(at, _, _)| at <= now) {
                fired.push(queue.pop().expect("peeked"));
                expected.push(model.pop().expect("the model has it too").0);
            }
            assert_eq!(queue.len(), model.len());
        }
        assert!(fired.len() > 5_000, "the run fired deadlines: {}", fired.len());
        assert_eq!(fired, expected);
    }

    #[test]
    fn a_sweep_and_a_restore_keep_the_firing_order() {
        // Goal: sweeping out every third deadline, or restoring the queue's deadlines in any
        // order into a new queue, leaves the rest to fire exactly in order.
        let mut queue = DeadlineQueue::with_capacity(1_024, 4);
        for n in 0..900u64 {
            let timeout = [7, 30, 100][n as usize % 3];
            queue.push((Timestamp(n + timeout), OrderId(n + 1), n as u32), timeout);
        }
        queue.sweep(|&(_, order, _)| order.0 % 3 != 0);
        assert_eq!(queue.len(), 600);
        let mut held: Vec<Deadline> = queue.iter().collect();
        held.reverse();
        let mut restored = DeadlineQueue::with_capacity(1_024, 4);
        restored.restore(&held);
        held.sort_unstable();
        for queue in [&mut queue, &mut restored] {
            let fired: Vec<Deadline> = std::iter::from_fn(|| queue.pop()).collect();
            assert_eq!(fired, held);
            assert_eq!(queue.len(), 0);
        }
    }
}
