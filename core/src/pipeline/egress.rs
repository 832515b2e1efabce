//! Egress: releases each answer once its command is journaled, replicated and applied, and hands
//! it to the session that submitted it.
//!
//! The gating rule: sequence `s` is released only when `s <= min(durable, replication_safe,
//! applied)`. Egress reads the ring after every stage has passed a slot (the ring's dependency
//! graph) *and* checks the watermarks, because a journal may report durability later than it
//! appended. Answers leave in sequence order. After a stage failure, everything not yet
//! released is answered with the failure instead; nothing unsafe is ever released.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::metrics::Recorder;
use super::session::{Completion, StageFailure};
use super::shared::{Shared, panic_message};
use super::slot::{Reply, RingPoller, SlotKind};
use super::wait::{Idler, Parker, pin_current};
use crate::outcome::Outcome;
use crate::types::Sequence;

/// Messages from sessions to egress, which owns the routing table.
pub(crate) enum Control {
    /// A new session: where its completions go and how to wake it.
    Register { id: u64, sender: SyncSender<Completion>, notify: Option<Arc<Parker>> },
    /// The session was dropped.
    Deregister(u64),
}

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
    /// Publishes final metrics; called once when egress ends.
    fn finish(&mut self);
}

struct Endpoint {
    sender: SyncSender<Completion>,
    notify: Option<Arc<Parker>>,
    touched: bool,
}

/// Session id → completion queue.
struct Router {
    control: Receiver<Control>,
    sessions: FxHashMap<u64, Endpoint>,
    /// Sessions with a notify hook that received completions in the current pass.
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

    fn deliver(&mut self, reply: Reply, sequence: Sequence, result: Result<Outcome, StageFailure>) {
        if !self.sessions.contains_key(&reply.session) {
            // Registration happens before a session's first publication, so a slot from an
            // unknown session means its registration is still in the channel, or it is gone.
            self.drain_control();
        }
        let Some(endpoint) = self.sessions.get_mut(&reply.session) else { return };
        let completion = Completion { token: reply.token, sequence, result };
        match endpoint.sender.try_send(completion) {
            Ok(()) => {
                if endpoint.notify.is_some() && !endpoint.touched {
                    endpoint.touched = true;
                    self.touched.push(reply.session);
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.sessions.remove(&reply.session);
            }
            Err(TrySendError::Full(_)) => panic!(
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
    /// Engine sequence of the next slot.
    next: u64,
    router: Router,
    recorder: Recorder,
    stopped: bool,
    /// `Shared::control_sent` when the control channel was last drained.
    control_seen: u64,
}

impl<P: RingPoller> Egress<P> {
    pub(crate) fn new(poller: P, shared: Arc<Shared>, control: Receiver<Control>) -> Egress<P> {
        let capacity = 2 * shared.sessions_max as usize;
        Egress {
            poller,
            next: shared.base,
            router: Router {
                control,
                sessions: FxHashMap::with_capacity_and_hasher(capacity, Default::default()),
                touched: Vec::with_capacity(capacity),
            },
            recorder: Recorder::new(),
            stopped: false,
            control_seen: 0,
            shared,
        }
    }

    /// The highest sequence that may be released: the gating rule, plus the stop marker once
    /// everything before it is released.
    fn limit(&self) -> u64 {
        let shared = &self.shared;
        let limit = shared.durable.get().0.min(shared.safe.get().0).min(shared.applied.get().0);
        let stop_at = shared.stop_at.load(Ordering::Acquire);
        if stop_at != 0 && limit.saturating_add(1) >= stop_at { limit.max(stop_at) } else { limit }
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
        let limit = self.limit();
        let want = if failed { u64::MAX } else { (limit + 1).saturating_sub(self.next) };
        if want == 0 {
            let cells = self.shared.stage_cells("egress");
            self.recorder.publish_idle(&cells.histograms);
            return Pass::Idle;
        }
        let failure = if failed { self.shared.failure() } else { None };
        let now_ns = self.shared.clock.ns();
        let mut stop = false;
        let Egress { poller, router, recorder, next, .. } = self;
        let count = poller.drain(want, next, |slot, sequence| {
            if stop || slot.kind == SlotKind::Stop {
                // Nothing after the stop marker was journaled: its submitters see the node stop.
                stop = true;
                return;
            }
            if slot.reply == Reply::NOBODY {
                return;
            }
            let result = if sequence <= limit {
                // SAFETY: `sequence <= applied`, read with acquire ordering in `limit()`, so the
                // applying stage's write of this outcome happened-before; the producer cannot
                // reuse the slot until this drain returns and egress's cursor passes it.
                Ok(unsafe { slot.outcome.read() })
            } else {
                Err(failure.clone().expect("unreleased slots are read only after a failure"))
            };
            recorder.latency_ns(now_ns.saturating_sub(slot.published_ns));
            router.deliver(slot.reply, Sequence(sequence), result);
        });
        if count > 0 {
            self.recorder.batch(count);
            self.shared.released.advance(Sequence(self.next - 1));
            self.router.notify_touched();
            let cells = self.shared.stage_cells("egress");
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
        self.limit() >= self.next && self.poller.has_available()
    }

    fn finish(&mut self) {
        let cells = self.shared.stage_cells("egress");
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
            Ok(Pass::Idle) => idler.idle(&shared.egress_parker, || egress.has_work()),
            Ok(Pass::Stopped) => break,
            Err(panic) => shared.fail("egress", &panic_message(panic.as_ref())),
        }
    }
    egress.finish();
}

/// Runs a polled egress until it has nothing to do, if no other thread is running it. Before
/// returning idle it arms the node's egress waker, so the poller is told when answers may be
/// ready. Returns how many answers were delivered.
pub(crate) fn poll_shared(shared: &Shared, egress: &Mutex<Box<dyn EgressRun>>) -> u64 {
    let mut egress = match egress.try_lock() {
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
