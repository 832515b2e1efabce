//! Sessions: how a thread submits commands to a node and receives one completion per command.
//!
//! A session owns a producer on the input ring and a bounded completion queue that egress
//! fills. Submitting never blocks: a full ring answers [`Refused::Busy`] at once. Completions
//! arrive in submission order and are read with [`Session::poll`] (non-blocking, for event
//! loops, optionally with a wake hook such as a `mio::Waker`) or [`Session::wait`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use disruptor::{MultiProducer, Producer, SingleConsumerBarrier};

use super::completions::{CompletionQueue, RecvError};
use super::config::Intake;
use super::egress::PolledEgress;
use super::messages::{Completion, Control, Reply, StageFailure, Ticket, Unanswered};
use super::shared::Shared;
use super::slot::{Slot, SlotKind};
use super::wait::Parker;
use crate::command::Command;
use crate::outcome::Outcome;
use crate::record::{self, RecordError};
use crate::types::{Epoch, Sequence};

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
    /// A write sent to a standby: its writes come from its primary; send it to the primary.
    #[error("this node is a standby: writes go to the primary; reads are served here")]
    NotPrimary,
    /// Writes are held: sync replication lost its standby (until it is back or the operator
    /// switches to async), the lease was not renewed, or the standby is taking over. Reads are
    /// served.
    #[error(
        "replication_unavailable: writes are held: the standby stopped acknowledging, the \
         lease could not be renewed, or a switchover or promotion is under way (the \
         replication state in /v1/node says which)"
    )]
    ReplicationUnavailable,
    /// The journal could not make a command durable (disk full, an I/O error): writes and
    /// snapshot requests are refused; reads are served from memory. Recovery is a restart
    /// once the cause is fixed.
    #[error(
        "journal_failed: the journal cannot make writes durable ({0}); writes are refused, \
         reads are served; restart the node once the cause is fixed"
    )]
    JournalFailed(Arc<str>),
    /// A record sent to a node that sequences its own commands.
    #[error("this node sequences its own commands and takes no records")]
    NotReplica,
    /// Bytes given as a record are not one (damaged in transit, or a newer format).
    #[error("not a record: {0}")]
    InvalidRecord(RecordError),
    /// A record that is not the next in sequence: the standby is missing records before it,
    /// or has it already. Nothing was published; resume the stream at `expected`.
    #[error("record {found} is out of sequence: the next must be {expected}")]
    OutOfSequence {
        /// The sequence the next record must carry.
        expected: Sequence,
        /// The sequence it carried.
        found: Sequence,
    },
    /// A record from an older epoch than one already taken: a deposed primary's.
    #[error("record from epoch {found} after one from epoch {last}: a deposed primary's")]
    StaleEpoch {
        /// The record's epoch.
        found: Epoch,
        /// The epoch of the last record taken.
        last: Epoch,
    },
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
    /// The command got no outcome: the node failed, or it was not replicated.
    #[error("{0}")]
    Unanswered(Unanswered),
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
    completions: CompletionQueue,
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
        completions: CompletionQueue,
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
        if command.is_mutating() {
            self.shared.check_writable()?;
        } else if command == Command::Snapshot {
            self.shared.check_journal()?;
        }
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
        if commands.iter().any(|(command, _)| command.is_mutating()) {
            self.shared.check_writable()?;
        } else if commands.iter().any(|(command, _)| *command == Command::Snapshot) {
            self.shared.check_journal()?;
        }
        let shared = &*self.shared;
        let ns = shared.clock.now_ns();
        let timestamp = shared.stamp(ns);
        let session = self.id;
        let published = self.producer.try_batch_publish(commands.len(), |slots| {
            for (slot, &(command, token)) in slots.zip(commands) {
                slot.warm_ahead_for_producer();
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

    /// A standby's intake: submits a record its primary sequenced (`crate::record`), to be
    /// journaled byte for byte and applied with the primary's sequence, epoch and timestamp.
    /// The bytes are checked first (never trusted); records must come in sequence, from one
    /// session, in epochs that never go back. Never blocks.
    pub fn try_submit_record(&mut self, bytes: &[u8], token: u64) -> Result<Ticket, Refused> {
        self.check_open(1)?;
        let shared = &*self.shared;
        if shared.intake() != Intake::Replica {
            return Err(Refused::NotReplica);
        }
        shared.check_journal()?;
        let (header, sequenced, len) = record::decode(bytes).map_err(Refused::InvalidRecord)?;
        if len != bytes.len() {
            return Err(Refused::InvalidRecord(RecordError::Trailing { len, have: bytes.len() }));
        }
        let expected = Sequence(shared.next_record.load(Ordering::Acquire));
        if header.sequence != expected {
            return Err(Refused::OutOfSequence { expected, found: header.sequence });
        }
        let last = Epoch(shared.record_epoch.load(Ordering::Acquire));
        if header.epoch < last {
            return Err(Refused::StaleEpoch { found: header.epoch, last });
        }
        if !sequenced.command.is_mutating() {
            return Err(Refused::InvalidRecord(RecordError::NotMutating));
        }
        let reply = Reply { session: self.id, token };
        let ns = shared.clock.now_ns();
        let published = self.producer.try_publish(|slot| {
            slot.kind = SlotKind::Record;
            slot.timestamp = sequenced.timestamp;
            slot.command = sequenced.command;
            slot.sequence = header.sequence;
            slot.epoch = header.epoch;
            // SAFETY: the producer holds the slot exclusively until it is published.
            unsafe { slot.record.write() }.copy_from(bytes);
            slot.reply = reply;
            slot.published_ns = ns;
        });
        let Ok(position) = published else { return Err(self.busy()) };
        shared.next_record.store(header.sequence.next().0, Ordering::Release);
        shared.record_epoch.store(header.epoch.0, Ordering::Release);
        shared.time_line.record_arrived(&*shared.clock, sequenced.timestamp, ns);
        let position = u64::try_from(position).expect("published ring positions are >= 0");
        shared.published(position);
        shared.wake_stages();
        self.pending += 1;
        Ok(Ticket(position))
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
            self.disarm_notify();
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

    /// Disarms the notify hook, for a caller that polls next (see [`super::Node::step_for`]).
    pub(crate) fn disarm_notify(&self) {
        if let Some(notify) = &self.notify {
            notify.awake();
        }
    }

    /// The next completion, waiting up to `timeout`. A stepped node moves only in
    /// `Node::step`, so waiting on one without stepping it just times out: poll it instead.
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
                Err(RecvError::Timeout) => return None,
                Err(RecvError::Disconnected) => {
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
                    return completion.result.map_err(CallError::Unanswered);
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
            Ok(Some(completion)) => Some(self.received(completion)),
            Ok(None) => None,
            Err(RecvError::Disconnected | RecvError::Timeout) => {
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
    let timestamp = shared.stamp(ns);
    let published = producer.try_publish(|slot| {
        slot.warm_ahead_for_producer();
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
