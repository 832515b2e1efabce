//! Sessions: how a thread submits commands to a node and receives one completion per command.
//!
//! A session owns a producer on the input ring and a bounded completion queue that egress
//! fills. Submitting never blocks: a full ring answers [`Refused::Busy`] at once. Completions
//! arrive in submission order and are read with [`Session::poll`] (non-blocking, for event
//! loops, optionally with a wake hook such as a `mio::Waker`) or [`Session::wait`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use disruptor::{MultiProducer, Producer, SingleConsumerBarrier};

use super::egress::PolledEgress;
use super::messages::{Completion, Control, Reply, StageFailure, Ticket};
use super::shared::Shared;
use super::slot::{Slot, SlotKind};
use super::wait::Parker;
use crate::command::Command;
use crate::outcome::Outcome;

/// The producer handle every session, the timer and the node hold.
pub(crate) type RingProducer = MultiProducer<Slot, SingleConsumerBarrier>;

/// Why a submission was refused. Nothing was published; the command may be retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The ring is full: the node is behind. Counted in the metrics. Egress frees a slot just
    /// after handing out its answer, so `Busy` can follow a completion by a moment.
    #[error("busy: the input ring is full; retry later")]
    Busy,
    /// This session has `session_pending_max` commands in flight or unread; read completions.
    #[error("session full: read completions before submitting more")]
    SessionFull,
    /// The batch is larger than the ring or the session's pending limit could ever allow.
    #[error("batch of {len} commands exceeds the limit of {max}")]
    BatchTooLarge {
        /// Commands in the batch.
        len: usize,
        /// The largest batch that can be accepted.
        max: usize,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A stage failed and the node stopped.
    #[error("{0}")]
    Failed(StageFailure),
}

/// What a blocking call can end with besides an outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The submission was refused.
    #[error("refused: {0}")]
    Refused(Refused),
    /// The node failed before the command was safe.
    #[error("{0}")]
    Failed(StageFailure),
    /// No answer within the timeout (the command may still be answered later).
    #[error("no answer within the timeout")]
    TimedOut,
    /// The node stopped and its egress is gone; no answer will come.
    #[error("the node stopped before answering")]
    Stopped,
}

/// A submitter's handle. One per thread (it is `Send`, not `Sync`); a network front typically
/// opens one per event-loop thread and uses tokens to tell connections and requests apart.
pub struct Session {
    id: u64,
    producer: RingProducer,
    completions: Receiver<Completion>,
    pending: u32,
    notify: Option<Arc<Parker>>,
    shared: Arc<Shared>,
    /// The node's egress when it is polled rather than run by a thread.
    egress: Option<Arc<PolledEgress>>,
    disconnected: bool,
}

impl Session {
    pub(crate) fn new(
        id: u64,
        producer: RingProducer,
        completions: Receiver<Completion>,
        notify: Option<Arc<Parker>>,
        shared: Arc<Shared>,
        egress: Option<Arc<PolledEgress>>,
    ) -> Session {
        Session {
            id,
            producer,
            completions,
            pending: 0,
            notify,
            shared,
            egress,
            disconnected: false,
        }
    }

    /// Submits one command; its completion will carry `token` and the returned ticket.
    /// Never blocks.
    pub fn try_submit(&mut self, command: Command, token: u64) -> Result<Ticket, Refused> {
        self.check_open(1)?;
        let reply = Reply { session: self.id, token };
        match publish_one(&mut self.producer, &self.shared, SlotKind::Command, command, reply) {
            Some(position) => {
                self.pending += 1;
                Ok(Ticket(position))
            }
            None => Err(self.busy()),
        }
    }

    /// Submits a batch, all or nothing, in order. Returns the last command's ticket.
    /// Never blocks.
    pub fn try_submit_batch(&mut self, commands: &[(Command, u64)]) -> Result<Ticket, Refused> {
        let max = (self.shared.ring_size as usize).min(self.shared.session_pending_max as usize);
        if commands.is_empty() || commands.len() > max {
            return Err(Refused::BatchTooLarge { len: commands.len(), max });
        }
        self.check_open(commands.len())?;
        let shared = &*self.shared;
        let ns = shared.clock.now_ns();
        let timestamp = shared.clock.timestamp(ns);
        let session = self.id;
        let published = self.producer.try_batch_publish(commands.len(), |slots| {
            for (slot, &(command, token)) in slots.zip(commands) {
                slot.kind = SlotKind::Command;
                slot.timestamp = timestamp;
                slot.command = command;
                slot.reply = Reply { session, token };
                slot.published_ns = ns;
            }
        });
        match published {
            Ok(last) => {
                let position = u64::try_from(last).expect("published ring positions are >= 0");
                shared.published(position);
                shared.wake_stages();
                self.pending += u32::try_from(commands.len()).expect("batch within pending limit");
                Ok(Ticket(position))
            }
            Err(_) => Err(self.busy()),
        }
    }

    fn check_open(&self, count: usize) -> Result<(), Refused> {
        if self.shared.is_closed() {
            return Err(match self.shared.failure() {
                Some(failure) => Refused::Failed(failure),
                None => Refused::ShuttingDown,
            });
        }
        if self.pending as usize + count > self.shared.session_pending_max as usize {
            return Err(Refused::SessionFull);
        }
        Ok(())
    }

    fn busy(&self) -> Refused {
        self.shared.busy_rejections.fetch_add(1, Ordering::Relaxed);
        Refused::Busy
    }

    /// The next completion if one is ready. Never blocks. When it returns `None` and the session
    /// has a notify hook, the hook is armed: egress calls it once when the next completion
    /// arrives. After the node stopped, remaining commands complete with `Err(_)` (or, if the
    /// egress itself is gone, `poll` keeps returning `None` and [`Session::is_stopped`] is true).
    pub fn poll(&mut self) -> Option<Completion> {
        // Answers already queued are handed out first: a polled egress runs only once the
        // queue is empty, so draining a batch costs one egress pass, not one per answer.
        if let Some(completion) = self.try_recv() {
            return Some(completion);
        }
        if let Some(egress) = &self.egress {
            // The caller is polling now, so a wake-up for answers this pass delivers to it
            // would only make its event loop turn once more for nothing: disarm the hook
            // first. It is armed again below, before the final check.
            if let Some(notify) = &self.notify {
                notify.awake();
            }
            egress.poll();
            if let Some(completion) = self.try_recv() {
                return Some(completion);
            }
        }
        self.notify.as_ref()?.prepare_sleep();
        let completion = self.try_recv();
        if let (Some(notify), Some(_)) = (&self.notify, &completion) {
            notify.awake();
        }
        completion
    }

    /// The next completion, waiting up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(egress) = &self.egress {
                egress.poll();
                if let Some(completion) = self.try_recv() {
                    return Some(completion);
                }
                if self.disconnected || Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_micros(20));
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.completions.recv_timeout(left) {
                Ok(completion) => return Some(self.received(completion)),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.disconnected = true;
                    return None;
                }
            }
        }
    }

    /// Submits `command` and waits up to `timeout` for its outcome. Completions of earlier
    /// submissions on this session are discarded; use `try_submit`/`poll` to keep them.
    pub fn call(&mut self, command: Command, timeout: Duration) -> Result<Outcome, CallError> {
        let token = u64::MAX;
        let ticket = self.try_submit(command, token).map_err(CallError::Refused)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait(left) {
                Some(completion) if completion.ticket == ticket => {
                    return completion.result.map_err(CallError::Failed);
                }
                Some(_) => {}
                None if self.disconnected => return Err(CallError::Stopped),
                None => return Err(CallError::TimedOut),
            }
        }
    }

    /// Commands submitted whose completions have not been read yet.
    #[must_use]
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// Whether the node's egress is gone: no completion will arrive any more.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.disconnected
    }

    fn try_recv(&mut self) -> Option<Completion> {
        match self.completions.try_recv() {
            Ok(completion) => Some(self.received(completion)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.disconnected = true;
                None
            }
        }
    }

    fn received(&mut self, completion: Completion) -> Completion {
        assert!(self.pending > 0, "a completion arrived for a command never submitted");
        self.pending -= 1;
        completion
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.sessions_open.fetch_sub(1, Ordering::AcqRel);
        // Egress may be gone already (node stopped); then there is nothing to deregister from.
        let _ = self.shared.send_control(Control::Deregister(self.id));
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("pending", &self.pending).finish()
    }
}

/// Stamps a slot with the time and publishes it. Returns its ring position, or `None` when
/// the ring is full. Used by sessions, the timer and shutdown alike.
pub(crate) fn publish_one(
    producer: &mut RingProducer,
    shared: &Shared,
    kind: SlotKind,
    command: Command,
    reply: Reply,
) -> Option<u64> {
    let ns = shared.clock.now_ns();
    let timestamp = shared.clock.timestamp(ns);
    let published = producer.try_publish(|slot| {
        slot.kind = kind;
        slot.timestamp = timestamp;
        slot.command = command;
        slot.reply = reply;
        slot.published_ns = ns;
    });
    let position = u64::try_from(published.ok()?).expect("published ring positions are >= 0");
    shared.published(position);
    shared.wake_stages();
    Some(position)
}
