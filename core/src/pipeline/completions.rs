//! A session's completion queue: egress is its one writer, the session its one reader.
//!
//! A wait-free single-producer single-consumer ring (`rtrb`): a push or a pop is a plain load
//! and a release store, where a multi-producer channel pays a locked read-modify-write on each
//! side. With a polled egress the generator thread that submits, runs egress and reads the
//! answers pays both sides of every answer, so this is on its critical path.
//!
//! Capacity is the session's pending limit, which the session enforces before it submits, so
//! a push never finds the queue full.
//!
//! Blocking ([`CompletionQueue::recv_timeout`]) is for sessions of a node with an egress
//! thread. The waiter raises a flag and re-checks the queue; egress pushes a pass's answers,
//! then reads the flag ([`CompletionSender::wake`]), with a sequentially consistent fence on
//! both sides, so a wake-up is never lost (as with [`super::wait::Parker`]). Dropping the
//! sender closes the queue and wakes the waiter.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::messages::Completion;

/// A new queue of `capacity` completions. `blocking`: whether its reader may block in
/// [`CompletionQueue::recv_timeout`] (a node with an egress thread); only then does egress
/// pay the fence that wakes it.
pub(crate) fn completion_queue(
    capacity: usize,
    blocking: bool,
) -> (CompletionSender, CompletionQueue) {
    let (producer, consumer) = rtrb::RingBuffer::new(capacity);
    let signal = Arc::new(Signal {
        sleeping: CachePadded::new(AtomicBool::new(false)),
        closed: AtomicBool::new(false),
        waiter: Mutex::new(None),
    });
    let sender = CompletionSender { ring: producer, signal: Arc::clone(&signal), blocking };
    (sender, CompletionQueue { ring: consumer, signal })
}

/// What the two ends share besides the ring.
struct Signal {
    /// Raised by a reader about to park in `recv_timeout`.
    sleeping: CachePadded<AtomicBool>,
    /// Set when the sender is dropped: no completion will come any more.
    closed: AtomicBool,
    /// The thread parked in `recv_timeout` (a session may move between threads).
    waiter: Mutex<Option<Thread>>,
}

/// The writing end, owned by egress.
pub(crate) struct CompletionSender {
    ring: rtrb::Producer<Completion>,
    signal: Arc<Signal>,
    blocking: bool,
}

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The reader is gone (its session was dropped).
    Disconnected,
    /// The queue is full: the session's pending limit was not enforced.
    Full,
}

impl CompletionSender {
    /// Queues `completion`. A reader blocked in `recv_timeout` is not woken until
    /// [`CompletionSender::wake`].
    pub(crate) fn push(&mut self, completion: Completion) -> Result<(), PushError> {
        if self.ring.is_abandoned() {
            return Err(PushError::Disconnected);
        }
        self.ring.push(completion).map_err(|_| PushError::Full)
    }

    /// Whether the reader may be parked waiting, so that egress must call `wake` after pushing.
    pub(crate) fn blocking(&self) -> bool {
        self.blocking
    }

    /// Wakes the reader if it is parked in `recv_timeout`. Call after the pushes of a pass.
    pub(crate) fn wake(&self) {
        self.signal.wake();
    }
}

impl Drop for CompletionSender {
    fn drop(&mut self) {
        self.signal.closed.store(true, Ordering::Release);
        self.signal.wake();
    }
}

impl Signal {
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            let waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if let Some(thread) = waiter {
                thread.unpark();
            }
        }
    }
}

/// Why [`CompletionQueue::recv_timeout`] returned no completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// None arrived in time.
    Timeout,
    /// The sender is gone and the queue is empty: none will arrive.
    Disconnected,
}

/// The reading end, owned by the session.
pub(crate) struct CompletionQueue {
    ring: rtrb::Consumer<Completion>,
    signal: Arc<Signal>,
}

impl CompletionQueue {
    /// The next completion, if one is queued; `Err(Disconnected)` once the sender is gone and
    /// everything it pushed was read.
    pub(crate) fn try_recv(&mut self) -> Result<Option<Completion>, RecvError> {
        if let Ok(completion) = self.ring.pop() {
            return Ok(Some(completion));
        }
        if !self.signal.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Everything pushed before the sender was dropped is visible now.
        self.ring.pop().map(Some).map_err(|_| RecvError::Disconnected)
    }

    /// The next completion, parking up to `timeout` for it.
    pub(crate) fn recv_timeout(&mut self, timeout: Duration) -> Result<Completion, RecvError> {
        let deadline = Instant::now() + timeout;
        if let Some(completion) = self.try_recv()? {
            return Ok(completion);
        }
        *self.signal.waiter.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(std::thread::current());
        loop {
            // Release: egress, acquiring the flag in its swap, also sees `waiter` as set above.
            self.signal.sleeping.store(true, Ordering::Release);
            fence(Ordering::SeqCst);
            let received = self.try_recv();
            let left = deadline.saturating_duration_since(Instant::now());
            if !matches!(received, Ok(None)) || left.is_zero() {
                self.signal.sleeping.store(false, Ordering::Relaxed);
                return match received {
                    Ok(Some(completion)) => Ok(completion),
                    Ok(None) => Err(RecvError::Timeout),
                    Err(error) => Err(error),
                };
            }
            std::thread::park_timeout(left);
            self.signal.sleeping.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::messages::Ticket;
    use super::*;
    use crate::outcome::Outcome;
    use crate::types::Sequence;

    fn completion(token: u64) -> Completion {
        Completion {
            token,
            ticket: Ticket(token),
            sequence: Sequence(token),
            result: Ok(Outcome::Ticked { now: crate::types::Timestamp(token) }),
        }
    }

    #[test]
    fn completions_arrive_in_order_and_the_queue_reports_its_end() {
        // Goal: what egress pushes is read in order; after the sender is dropped the reader
        // still gets what was queued, then learns that nothing more will come.
        let (mut sender, mut queue) = completion_queue(4, false);
        assert_eq!(queue.try_recv(), Ok(None));
        for token in 0..4 {
            sender.push(completion(token)).unwrap();
        }
        assert_eq!(sender.push(completion(4)), Err(PushError::Full));
        assert_eq!(queue.try_recv().unwrap().unwrap().token, 0);
        drop(sender);
        let rest: Vec<u64> = (0..3).map(|_| queue.try_recv().unwrap().unwrap().token).collect();
        assert_eq!(rest, [1, 2, 3]);
        assert_eq!(queue.try_recv(), Err(RecvError::Disconnected));
        assert_eq!(queue.recv_timeout(Duration::from_secs(5)), Err(RecvError::Disconnected));
    }

    #[test]
    fn a_push_to_a_dropped_reader_says_so() {
        // Goal: egress learns a session is gone from the push, and drops its endpoint.
        let (mut sender, queue) = completion_queue(2, false);
        drop(queue);
        assert_eq!(sender.push(completion(0)), Err(PushError::Disconnected));
    }

    #[test]
    fn a_blocked_reader_is_woken_by_each_wake_and_by_the_drop() {
        // Goal: no wake-up is lost. The reader parks with a timeout longer than the whole
        // exchange may take, so a single missed wake-up fails the test.
        let timeout = Duration::from_secs(60);
        let started = Instant::now();
        let (mut sender, mut queue) = completion_queue(1, true);
        let reader = std::thread::spawn(move || {
            let mut tokens = Vec::new();
            loop {
                match queue.recv_timeout(timeout) {
                    Ok(completion) => tokens.push(completion.token),
                    Err(error) => return (tokens, error),
                }
            }
        });
        for token in 0..1000 {
            while sender.push(completion(token)) == Err(PushError::Full) {
                std::thread::yield_now();
            }
            sender.wake();
        }
        drop(sender);
        let (tokens, end) = reader.join().unwrap();
        assert_eq!(tokens, (0..1000).collect::<Vec<_>>());
        assert_eq!(end, RecvError::Disconnected);
        assert!(started.elapsed() < timeout, "a wake-up was lost");
    }

    #[test]
    fn a_reader_times_out_when_nothing_comes() {
        // Goal: the timeout is honoured with the sender alive and silent.
        let (_sender, mut queue) = completion_queue(1, true);
        let started = Instant::now();
        assert_eq!(queue.recv_timeout(Duration::from_millis(20)), Err(RecvError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
