//! The state a node's replication shares between the processor thread (the replicator stage),
//! the sender that streams the journal to the standby, the reader of its acknowledgements and
//! the control loop that applies the acknowledgement policy.
//!
//! The stage does almost nothing per command: the sender reads the records from the journal
//! itself (`ringfence_journal::tail`), so catch-up and live streaming are one path and never
//! touch the processor thread. At the end of each batch the stage publishes how far the
//! journal has been appended and wakes the sender; when the policy's gate is `Local` it also
//! marks that far safe, so egress waits for the local journal only — and, on a primary
//! answering alone on a journal that answers before it syncs, notes it first, so egress waits
//! for that journal's sync.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ringfence_core::pipeline::{Framed, HoldReason, Replicator, StageError, Watermark, WriteHold};
use ringfence_core::{Epoch, Sequence};

use crate::policy::Gate;

/// Shared replication state of one node.
#[derive(Debug)]
pub struct Link {
    /// The last sequence appended to the journal and handed to the replicator stage.
    available: AtomicU64,
    /// The epoch of that record (0 before any).
    last_epoch: AtomicU64,
    /// What egress may release as far as replication is concerned.
    safe: Arc<Watermark>,
    /// The hold on writes (standby lost, or deposed).
    hold: Arc<WriteHold>,
    /// The policy's gate, as a byte (`Gate`, or [`LOCAL_SYNCED`]): one load tells the
    /// replicator stage both whether it makes answers safe and whether they wait for a sync.
    gate: AtomicU8,
    /// Senders streaming (and wanting to be woken at each batch). A count, not a flag: a
    /// replaced stream's sender may still be finishing while the new one runs.
    streaming: AtomicUsize,
    /// Wakes the sender: the sequence it last saw, and a condition to wait on.
    wake: Mutex<u64>,
    wakeup: Condvar,
}

/// The gate byte for `Gate::Local` on a primary answering alone on a journal that answers
/// before it syncs (`WriteHold::answers_alone`): what it makes safe is noted first
/// (`WriteHold::note_alone_through`), so those answers wait for the journal's sync.
const LOCAL_SYNCED: u8 = 3;

const _: () = assert!(LOCAL_SYNCED > Gate::Held as u8);

impl Link {
    /// A link whose journal ends at `last` (the node's next sequence minus one), a record of
    /// `last_epoch`.
    #[must_use]
    pub fn new(last: Sequence, last_epoch: Epoch) -> Arc<Link> {
        Arc::new(Link {
            available: AtomicU64::new(last.0),
            last_epoch: AtomicU64::new(last_epoch.0),
            safe: Watermark::new(last),
            hold: WriteHold::new(),
            gate: AtomicU8::new(Gate::Local as u8),
            streaming: AtomicUsize::new(0),
            wake: Mutex::new(0),
            wakeup: Condvar::new(),
        })
    }

    /// The replicator stage to start the node with.
    #[must_use]
    pub fn stage(self: &Arc<Link>) -> ReplicationStage {
        let (last, last_epoch) = (Sequence(self.available()), self.last_epoch());
        ReplicationStage { link: Arc::clone(self), last, last_epoch }
    }

    /// The last sequence the journal holds whole (appended; maybe not yet durable).
    #[must_use]
    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Acquire)
    }

    /// The epoch of the last record the journal holds (0 when empty).
    #[must_use]
    pub fn last_epoch(&self) -> Epoch {
        Epoch(self.last_epoch.load(Ordering::Acquire))
    }

    /// The gate egress applies now.
    #[must_use]
    pub fn gate(&self) -> Gate {
        match self.gate.load(Ordering::Acquire) {
            0 | LOCAL_SYNCED => Gate::Local,
            1 => Gate::Standby,
            _ => Gate::Held,
        }
    }

    /// Applies the policy's gate: `Local` marks everything appended safe at once (and at each
    /// batch), `Standby` leaves the watermark to acknowledgements, `Held` puts the hold on. A
    /// deposed link stays `Held` whatever it is given ([`Link::depose`]).
    pub fn set_gate(&self, gate: Gate) {
        let gate = if self.is_deposed() { Gate::Held } else { gate };
        let synced = gate == Gate::Local && self.hold.answers_alone();
        self.gate.store(if synced { LOCAL_SYNCED } else { gate as u8 }, Ordering::Release);
        match gate {
            Gate::Local => {
                self.release_hold();
                self.advance_alone(synced, Sequence(self.available()));
            }
            Gate::Standby => self.release_hold(),
            Gate::Held => {
                if self.hold.reason() != Some(HoldReason::Deposed) {
                    self.hold.hold(HoldReason::StandbyLost);
                }
            }
        }
    }

    /// Sets whether the primary answers alone on a journal that answers before it syncs
    /// (`WriteHold::set_answers_alone`); set before the gate it goes with, so the first answer
    /// the `Local` gate makes safe already waits for a sync.
    pub fn set_answers_alone(&self, alone: bool) {
        self.hold.set_answers_alone(alone);
    }

    /// Marks everything through `sequence` safe on the local journal alone; with `synced`
    /// (the gate byte was [`LOCAL_SYNCED`]) noted first, so those answers wait for the
    /// journal's sync. The gate may change meanwhile: a note then only costs a sync.
    fn advance_alone(&self, synced: bool, sequence: Sequence) {
        if synced {
            self.hold.note_alone_through(sequence);
        }
        self.safe.advance(sequence);
    }

    fn release_hold(&self) {
        if self.hold.reason() == Some(HoldReason::StandbyLost) {
            self.hold.release();
        }
    }

    /// Answers acknowledged on the local journal alone may leave only before `deadline_ns`
    /// (`pipeline::monotonic_ns`; `u64::MAX`: no limit): egress checks it at every release.
    pub fn set_lease_deadline(&self, deadline_ns: u64) {
        self.hold.set_lease_deadline(deadline_ns);
    }

    /// A newer primary exists: writes are refused from now on, for good, and nothing
    /// journaled from now on is made safe on this journal alone: the gate is `Held` for good,
    /// so the answers still owed that no acknowledgement covers go out `Unreplicated` — the
    /// newer primary's history will not hold them. An acknowledgement still makes safe what
    /// the standby holds.
    pub fn depose(&self) {
        self.hold.hold(HoldReason::Deposed);
        self.gate.store(Gate::Held as u8, Ordering::Release);
    }

    /// Whether this node was deposed.
    #[must_use]
    pub fn is_deposed(&self) -> bool {
        self.hold.reason() == Some(HoldReason::Deposed)
    }

    /// The standby acknowledged `sequence` (durable or written, as the mode says).
    pub fn acknowledged(&self, sequence: Sequence) {
        // Never past what the journal holds: a standby cannot hold more than was sent.
        let sequence = Sequence(sequence.0.min(self.available()));
        if self.hold.answers_alone() {
            // The standby's copy does not count yet (the witness does not name it): these
            // answers wait for this journal's sync too, noted before they are made safe.
            self.hold.note_alone_through(sequence);
        }
        self.safe.advance(sequence);
    }

    /// A sender starts streaming: each batch wakes it until the returned guard is dropped.
    #[must_use]
    pub fn streaming(&self) -> Streaming<'_> {
        self.streaming.fetch_add(1, Ordering::AcqRel);
        self.notify();
        Streaming { link: self }
    }

    /// Waits until more than `seen` is available, or `timeout` passes; returns what is
    /// available now.
    pub fn wait_beyond(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self.wake.lock().expect("the wake lock is never poisoned");
        let available = self.available();
        if available > seen {
            return available;
        }
        let (_guard, _) = self
            .wakeup
            .wait_timeout_while(guard, timeout, |_| self.available() <= seen)
            .expect("the wake lock is never poisoned");
        self.available()
    }

    /// Wakes a waiting sender.
    pub fn notify(&self) {
        // Taking the lock orders this wake-up after a waiter's check of `available`.
        drop(self.wake.lock().expect("the wake lock is never poisoned"));
        self.wakeup.notify_all();
    }
}

/// A sender's registration for wake-ups (`Link::streaming`).
#[derive(Debug)]
pub struct Streaming<'a> {
    link: &'a Link,
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        let before = self.link.streaming.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a sender stopped that never started");
    }
}

/// The replicator stage: runs on the processor thread, notes each journaled sequence, and at
/// the end of a batch publishes it to the sender (and, with a `Local` gate, to egress).
#[derive(Debug)]
pub struct ReplicationStage {
    link: Arc<Link>,
    last: Sequence,
    last_epoch: Epoch,
}

impl Replicator for ReplicationStage {
    // The sender reads the journal's bytes itself.
    const NEEDS_BYTES: bool = false;

    fn send(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        let sequence = record.sequenced.sequence;
        assert_eq!(sequence, self.last.next(), "the replicator sees every journaled command");
        self.last = sequence;
        self.last_epoch = record.epoch;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        let link = &*self.link;
        if link.available.load(Ordering::Relaxed) == self.last.0 {
            return Ok(());
        }
        link.last_epoch.store(self.last_epoch.0, Ordering::Release);
        link.available.store(self.last.0, Ordering::Release);
        match link.gate.load(Ordering::Acquire) {
            LOCAL_SYNCED => link.advance_alone(true, self.last),
            gate if gate == Gate::Local as u8 => link.advance_alone(false, self.last),
            _ => {}
        }
        if link.streaming.load(Ordering::Acquire) > 0 {
            link.notify();
        }
        Ok(())
    }

    fn safe(&self) -> Arc<Watermark> {
        Arc::clone(&self.link.safe)
    }

    fn hold(&self) -> Option<Arc<WriteHold>> {
        Some(Arc::clone(&self.link.hold))
    }
}

#[cfg(test)]
mod tests {
    use ringfence_core::pipeline::Replicator;
    use ringfence_core::{Command, Sequenced, Timestamp};

    use super::*;

    fn send(stage: &mut ReplicationStage, sequence: u64) {
        let sequenced = Sequenced {
            sequence: Sequence(sequence),
            timestamp: Timestamp(1),
            command: Command::Tick,
        };
        stage.send(&Framed { epoch: Epoch(1), sequenced: &sequenced, bytes: &[] }).unwrap();
        stage.flush().unwrap();
    }

    #[test]
    fn a_primary_answering_alone_notes_what_it_makes_safe_before_making_it_safe() {
        // Goal: with the hold answering alone, the `Local` gate notes what it makes safe, at once
        // and at each batch, so those answers wait for a sync; with its standby the stage makes
        // nothing safe; `Local` on a journal that syncs first makes safe and notes nothing.
        let link = Link::new(Sequence(4), Epoch(1));
        let mut stage = link.stage();
        let hold = stage.hold().expect("the link holds");
        hold.set_answers_alone(true);
        link.set_gate(Gate::Local);
        assert_eq!(link.gate(), Gate::Local);
        assert_eq!((hold.alone_through(), link.safe.get()), (Sequence(4), Sequence(4)));
        send(&mut stage, 5);
        assert_eq!((hold.alone_through(), link.safe.get()), (Sequence(5), Sequence(5)));
        hold.set_answers_alone(false);
        link.set_gate(Gate::Standby);
        send(&mut stage, 6);
        assert_eq!((hold.alone_through(), link.safe.get()), (Sequence(5), Sequence(5)));
        link.set_gate(Gate::Local);
        send(&mut stage, 7);
        assert_eq!((hold.alone_through(), link.safe.get()), (Sequence(5), Sequence(7)));
    }

    #[test]
    fn a_deposed_link_makes_nothing_more_safe_on_its_own_journal() {
        // Goal: once deposed, a primary answering on its own journal alone makes nothing more
        // safe, at the next batch or when it is given `Local` again (its answers owed go out
        // `Unreplicated`); a standby's acknowledgement still makes safe what the standby holds.
        let link = Link::new(Sequence(4), Epoch(1));
        let mut stage = link.stage();
        link.set_gate(Gate::Local);
        send(&mut stage, 5);
        assert_eq!((link.gate(), link.safe.get()), (Gate::Local, Sequence(5)));
        link.depose();
        assert_eq!(link.gate(), Gate::Held);
        send(&mut stage, 6);
        link.set_gate(Gate::Local);
        send(&mut stage, 7);
        assert_eq!((link.gate(), link.safe.get()), (Gate::Held, Sequence(5)));
        assert_eq!(stage.hold().expect("the link holds").reason(), Some(HoldReason::Deposed));
        link.set_gate(Gate::Standby);
        link.acknowledged(Sequence(6));
        assert_eq!((link.gate(), link.safe.get()), (Gate::Held, Sequence(6)));
    }

    #[test]
    fn acknowledgements_a_primary_cannot_rest_on_yet_are_noted_to_wait_for_a_sync() {
        // Goal: with the hold answering alone while answers wait for the standby (a standby
        // the witness does not name yet), what an acknowledgement makes safe is noted first,
        // so it waits for this journal's sync; otherwise an acknowledgement notes nothing.
        let link = Link::new(Sequence(0), Epoch(1));
        let mut stage = link.stage();
        let hold = stage.hold().expect("the link holds");
        link.set_gate(Gate::Standby);
        send(&mut stage, 1);
        send(&mut stage, 2);
        link.acknowledged(Sequence(1));
        assert_eq!((hold.alone_through(), link.safe.get()), (Sequence(0), Sequence(1)));
        hold.set_answers_alone(true);
        link.acknowledged(Sequence(2));
        assert_eq!((hold.alone_through(), link.safe.get()), (Sequence(2), Sequence(2)));
    }
}
