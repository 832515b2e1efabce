//! Egress: releases each answer once its command is journaled, replicated and applied, and hands
//! it to the session that submitted it.
//!
//! The gating rule: a slot whose gate sequence is `s` is released only when `s <= min(durable,
//! replication_safe, applied)`; a slot's gate is its journal sequence, or for a read the last
//! journaled sequence before it. Egress reads the ring after every stage has passed a slot (the
//! ring's dependency graph) *and* checks the watermarks, because a journal may report
//! durability later than it appended. It takes from the ring only the prefix of slots it may
//! release (it learns their gates from [`super::shared::Gates`]), so a held-back answer keeps
//! its slot and producers feel the back-pressure. Answers leave in ring order. After a stage
//! failure, everything not yet released is answered with the failure instead; nothing unsafe
//! is ever released. Once the journal is fenced (`Shared::fence_journal`), commands at or past
//! the fence are answered `NotDurable` and reads after them wait only for what precedes it, so
//! a node whose disk failed goes on answering reads.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::completions::{CompletionSender, PushError};
use super::messages::{Completion, Control, Reply, Ticket, Unanswered};
use super::metrics::Recorder;
use super::shared::{Shared, panic_message};
use super::slot::{RingPoller, SlotKind};
use super::stages::Sequencer;
use super::wait::{Idler, Parker, pin_current};
use crate::outcome::Outcome;
use crate::types::Sequence;

/// What one egress pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    Delivered(u64),
    Idle,
    Stopped,
}

/// Egress behind a trait object, so the node need not name the poller's barrier type.
pub(crate) trait EgressRun: Send {
    /// Releases what is safe to release now.
    fn pass(&mut self) -> Pass;
    /// Whether a pass would find something to do.
    fn has_work(&self) -> bool;
    /// Whether answers are held: commands applied whose answers are not yet released. Only
    /// then can time alone make a pass do something (a lease that expires answers them
    /// `Unreplicated`); otherwise only a wake-up can.
    fn holding(&self) -> bool;
    /// Publishes final metrics; called once when egress ends.
    fn finish(&mut self);
}

struct Endpoint {
    sender: CompletionSender,
    notify: Option<Arc<Parker>>,
    touched: bool,
}

/// Session id → completion queue.
struct Router {
    control: Receiver<Control>,
    sessions: FxHashMap<u64, Endpoint>,
    /// Sessions to wake (a notify hook, or a reader that may be parked) that received
    /// completions in the current pass.
    touched: Vec<u64>,
}

impl Router {
    fn drain_control(&mut self) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Register { id, sender, notify }) => {
                    let endpoint = Endpoint { sender, notify, touched: false };
                    let previous = self.sessions.insert(id, endpoint);
                    assert!(previous.is_none(), "session ids are never reused");
                }
                Ok(Control::Deregister(id)) => {
                    self.sessions.remove(&id);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn deliver(&mut self, reply: Reply, completion: Completion) {
        if !self.sessions.contains_key(&reply.session) {
            // Registration happens before a session's first publication, so a slot from an
            // unknown session means its registration is still in the channel, or it is gone.
            self.drain_control();
        }
        let Some(endpoint) = self.sessions.get_mut(&reply.session) else { return };
        match endpoint.sender.push(completion) {
            Ok(()) => {
                let wakes = endpoint.notify.is_some() || endpoint.sender.blocking();
                if wakes && !endpoint.touched {
                    endpoint.touched = true;
                    self.touched.push(reply.session);
                }
            }
            Err(PushError::Disconnected) => {
                self.sessions.remove(&reply.session);
            }
            Err(PushError::Full) => panic!(
                "session {}'s completion queue overflowed: its pending limit was not enforced",
                reply.session
            ),
        }
    }

    /// Drops every completion queue's sender and the registration channel, so sessions see
    /// the node stopped even while something (a session, a polled egress) keeps egress alive.
    fn close(&mut self) {
        self.sessions.clear();
        self.control = std::sync::mpsc::channel().1;
    }

    fn notify_touched(&mut self) {
        for id in self.touched.drain(..) {
            if let Some(endpoint) = self.sessions.get_mut(&id) {
                endpoint.touched = false;
                if endpoint.sender.blocking() {
                    endpoint.sender.wake();
                }
                if let Some(notify) = &endpoint.notify {
                    notify.wake();
                }
            }
        }
    }
}

pub(crate) struct Egress<P: RingPoller> {
    poller: P,
    shared: Arc<Shared>,
    /// Ring position of the next slot.
    next: u64,
    /// Numbers slots as the stages did, for the completions.
    sequencer: Sequencer,
    router: Router,
    recorder: Recorder,
    stopped: bool,
    /// `Shared::control_sent` when the control channel was last drained.
    control_seen: u64,
    /// Index of egress's metrics cells in `Shared::stages`.
    cells: usize,
    /// Answers to deliver before the next one whose publish-to-egress latency is recorded.
    until_sample: u64,
}

/// Egress records the publish-to-egress latency of one answer in this many, so that a pass
/// that sends one answer (the common case at a polled egress's full rate) mostly reads no
/// clock.
pub const PUBLISH_TO_EGRESS_SAMPLE_EVERY: u64 = 8;

impl<P: RingPoller> Egress<P> {
    pub(crate) fn new(poller: P, shared: Arc<Shared>, control: Receiver<Control>) -> Egress<P> {
        let capacity = 2 * shared.sessions_max as usize;
        Egress {
            poller,
            next: 0,
            sequencer: Sequencer::new(shared.base),
            router: Router {
                control,
                sessions: FxHashMap::with_capacity_and_hasher(capacity, Default::default()),
                touched: Vec::with_capacity(capacity),
            },
            recorder: Recorder::new(),
            stopped: false,
            control_seen: 0,
            cells: shared.stage_index("egress"),
            until_sample: 0,
            shared,
        }
    }

    /// The highest gate that may be released: the gating rule. While the replicator holds
    /// writes it no longer waits for the standby: what it did not acknowledge is answered
    /// `Unanswered::Unreplicated` instead (`answer`). Answers made safe while the primary
    /// answered alone on a journal that answers before it syncs wait for the journal's sync
    /// (`Shared::sync_limit`; the journaling stage is woken to make it).
    fn limit(&self) -> Sequence {
        let shared = &self.shared;
        let local = shared.durable.get().min(shared.applied.sequence());
        let limit = if shared.write_hold().is_some() || shared.lease_expired() {
            local
        } else {
            local.min(shared.safe.get())
        };
        let synced = shared.sync_limit();
        if synced < limit {
            shared.wake_stages();
        }
        limit.min(synced)
    }

    /// How many slots from `next` may be released now under `limit` (`Egress::limit`): those
    /// the applying stage finished whose gates are within it, and the stop marker once
    /// everything before it is.
    ///
    /// Gates never decrease along the ring (a slot's gate is its sequence, or the last one
    /// before it), so the releasable prefix ends at the first gate past the limit. Usually
    /// nothing waits: the applied sequence, read after the applied positions and so at least
    /// the last applied slot's gate, is within the limit, and the whole applied span goes
    /// without reading a gate (the applying stage wrote them on its own core). Otherwise a
    /// binary search reads a few.
    fn releasable(&self, limit: Sequence) -> u64 {
        let shared = &self.shared;
        let fence = shared.journal_fence();
        let applied = shared.applied.positions();
        let within = |gate: Sequence| release_gate(gate, fence) <= limit;
        let mut position = if applied <= self.next || within(shared.applied.sequence()) {
            applied.max(self.next)
        } else {
            // The first position in `next..applied` whose gate is past the limit.
            let (mut low, mut high) = (self.next, applied);
            while low < high {
                let middle = low + (high - low) / 2;
                if within(shared.gates.get(middle)) { low = middle + 1 } else { high = middle }
            }
            low
        };
        debug_assert!(
            (self.next..position).all(|at| within(shared.gates.get(at))),
            "a gate past the limit in the releasable prefix"
        );
        if position == shared.stop_at.load(Ordering::Acquire) {
            position += 1;
        }
        position - self.next
    }
}

/// The gate a slot is released at, given the journal fence: a command at or past the fence
/// will never be durable, so it (answered `NotDurable`) and a read that came after it wait only
/// for what lies before the fence.
fn release_gate(gate: Sequence, fence: Option<Sequence>) -> Sequence {
    match fence {
        Some(fence) if gate >= fence => Sequence(fence.0 - 1),
        _ => gate,
    }
}

impl<P: RingPoller> EgressRun for Egress<P> {
    fn pass(&mut self) -> Pass {
        if self.stopped {
            return Pass::Stopped;
        }
        let control_sent = self.shared.control_sent.load(Ordering::Acquire);
        if control_sent != self.control_seen {
            self.router.drain_control();
            self.control_seen = control_sent;
        }
        let failed = self.shared.is_failed();
        // Read once a pass: each watermark is a line the stages write on other cores.
        let limit = self.limit();
        let want = if failed { u64::MAX } else { self.releasable(limit) };
        if want == 0 {
            let cells = &self.shared.stages[self.cells];
            self.recorder.publish_idle(&cells.histograms);
            return Pass::Idle;
        }
        let failure = if failed { self.shared.failure() } else { None };
        // `durable` never reaches the fence (the journaling stage sets it above what was made
        // durable and flushes nothing after), so no slot released here is dropped later.
        let fence = self.shared.journal_fence();
        let cause = self.shared.journal_fault();
        // Read after `limit`: an acknowledgement that arrives in between only makes more
        // answers outcomes rather than `Unreplicated`. Past the lease deadline nothing counts
        // as safe: a primary that may have been replaced acknowledges no write.
        let safe = if self.shared.lease_expired() { Sequence(0) } else { self.shared.safe.get() };
        let applied = self.shared.applied.positions();
        // The clock, only if an answer this pass may deliver is the one to sample.
        let now_ns = (self.until_sample < want).then(|| self.shared.clock.now_ns());
        let mut stop = false;
        let Egress { poller, router, recorder, next, sequencer, shared, until_sample, .. } = self;
        let gates = &shared.gates;
        let count = poller.drain(want, next, |slot, position| {
            if stop || slot.kind == SlotKind::Stop {
                // Nothing after the stop marker was journaled: its submitters see the node stop.
                stop = true;
                return;
            }
            let (sequence, journaled) = sequencer.place(slot);
            // Unless the node failed, only the releasable prefix was taken (`releasable`).
            let released = !failed
                || (position < applied && release_gate(gates.get(position), fence) <= limit);
            // The applying stage numbered this slot as egress does. (Checked in debug builds:
            // reading the gate here would cost a cache miss per slot on the applying core's
            // line.)
            debug_assert!(!released || gates.get(position) == sequence, "gate of {position}");
            if slot.reply == Reply::NOBODY {
                return;
            }
            let dropped = journaled && fence.is_some_and(|fence| sequence >= fence);
            let result: Result<Outcome, Unanswered> = if !released {
                let failure = failure.clone();
                Err(Unanswered::Failed(failure.expect("unreleased slots are taken on failure")))
            } else if dropped {
                let cause = cause.clone().expect("the journal's fault is set before its fence");
                Err(Unanswered::NotDurable { sequence, cause })
            } else if journaled && sequence > safe {
                // Released under a write hold (`limit`): applied here, never acknowledged.
                Err(Unanswered::Unreplicated { sequence })
            } else {
                // SAFETY: `position < applied.positions()`, read with acquire ordering, so the
                // applying stage's write of this outcome happened-before; the producer cannot
                // reuse the slot until this drain returns and egress's cursor passes it.
                Ok(unsafe { slot.outcome.read() })
            };
            if *until_sample == 0 {
                *until_sample = PUBLISH_TO_EGRESS_SAMPLE_EVERY - 1;
                let now_ns = now_ns.expect("the clock is read when an answer is sampled");
                recorder.latency_ns(now_ns.saturating_sub(slot.published_ns));
            } else {
                *until_sample -= 1;
            }
            let ticket = Ticket(position);
            let completion = Completion { token: slot.reply.token, ticket, sequence, result };
            router.deliver(slot.reply, completion);
        });
        if count > 0 {
            self.recorder.batch(count);
            self.shared.released.advance(self.sequencer.last());
            self.shared.released_positions.store(self.next, Ordering::Release);
            let cells = &self.shared.stages[self.cells];
            cells.positions.store(self.next, Ordering::Release);
            self.router.notify_touched();
            self.recorder.maybe_publish(&cells.histograms);
        }
        if stop {
            self.stopped = true;
            self.router.close();
            return Pass::Stopped;
        }
        if count > 0 { Pass::Delivered(count) } else { Pass::Idle }
    }

    fn has_work(&self) -> bool {
        if self.shared.is_failed() {
            return self.poller.has_available();
        }
        self.releasable(self.limit()) > 0 && self.poller.has_available()
    }

    fn holding(&self) -> bool {
        let applied = self.shared.applied.positions();
        // Egress releases only what was applied, but for a failed node, which answers every
        // command left with the failure (its failure is sticky, so seen here too).
        debug_assert!(
            self.next <= applied + 1 || self.shared.is_failed(),
            "released past the applied commands"
        );
        applied > self.next
    }

    fn finish(&mut self) {
        let cells = &self.shared.stages[self.cells];
        self.recorder.publish(&cells.histograms, Instant::now(), true);
    }
}

/// The egress thread's body: pass, idle, repeat until the stop marker.
pub(crate) fn run_thread(mut egress: Box<dyn EgressRun>, shared: &Shared, core: Option<usize>) {
    shared.egress_parker.register_current();
    pin_current("egress", core);
    let mut idler = Idler::new(shared.wait);
    loop {
        match catch_unwind(AssertUnwindSafe(|| egress.pass())) {
            Ok(Pass::Delivered(_)) => idler.reset(),
            // Nothing held: the stages and the acknowledgement watermark wake egress when
            // answers come, so it may park long; holding answers, it looks again soon.
            Ok(Pass::Idle) if egress.holding() => {
                idler.idle(&shared.egress_parker, || egress.has_work());
            }
            Ok(Pass::Idle) => idler.idle_quiet(&shared.egress_parker, || egress.has_work()),
            Ok(Pass::Stopped) => break,
            Err(panic) => shared.fail("egress", &panic_message(panic.as_ref())),
        }
    }
    egress.finish();
}

/// Egress run by whoever polls it — sessions, the network event loop, `Node::step` — rather
/// than by a thread of its own. The node owns it and hands each session a handle.
pub(crate) struct PolledEgress {
    egress: Mutex<Box<dyn EgressRun>>,
    shared: Arc<Shared>,
}

impl PolledEgress {
    pub(crate) fn new(egress: Box<dyn EgressRun>, shared: Arc<Shared>) -> PolledEgress {
        PolledEgress { egress: Mutex::new(egress), shared }
    }

    /// Runs egress until it has nothing to do, if no other thread is running it. Before
    /// returning idle it arms the node's egress waker, so the poller is told when answers may
    /// be ready. Returns how many slots were released.
    pub(crate) fn poll(&self) -> u64 {
        let shared = &*self.shared;
        let mut egress = match self.egress.try_lock() {
            Ok(egress) => egress,
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => return 0,
        };
        let mut delivered = 0;
        let mut panics = 0;
        loop {
            match catch_unwind(AssertUnwindSafe(|| egress.pass())) {
                Ok(Pass::Delivered(count)) => delivered += count,
                Ok(Pass::Idle) => {
                    if !shared.egress_parker.has_waker() {
                        return delivered;
                    }
                    shared.egress_parker.prepare_sleep();
                    if !egress.has_work() {
                        return delivered;
                    }
                    shared.egress_parker.awake();
                }
                Ok(Pass::Stopped) => {
                    egress.finish();
                    return delivered;
                }
                Err(panic) => {
                    shared.fail("egress", &panic_message(panic.as_ref()));
                    panics += 1;
                    if panics > 1 {
                        return delivered;
                    }
                }
            }
        }
    }
}
