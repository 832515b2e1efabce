//! State shared by the node, its sessions and its stages: intake and failure flags, per-stage
//! watermarks, the gate each applied slot is released at, the tick schedule, wake-ups,
//! counters and metrics.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};

use crossbeam_utils::CachePadded;

use super::clock::{Clock, TimeLine};
use super::config::{Intake, NodeConfig, Topology, WaitStrategy};
use super::messages::{Control, StageFailure};
use super::metrics::SharedHistograms;
use super::session::Refused;
use super::stage::{HoldReason, Watermark, WriteHold};
use super::wait::Parker;
use crate::types::{Epoch, Sequence, Timestamp};

/// Metrics cells, one set per stage in pipeline order.
pub(crate) struct StageCells {
    pub(crate) name: &'static str,
    /// Ring positions the stage has passed (the next position it reads). Written per batch,
    /// so on a line of its own: the cells of the stages sit side by side.
    pub(crate) positions: CachePadded<AtomicU64>,
    pub(crate) histograms: SharedHistograms,
}

/// The sequence at which each slot may be released, by ring position, written by the applying
/// stage and read by egress before it takes the slot.
///
/// A slot's *gate* is its journal sequence for a journaled command, and for a query, a
/// snapshot request or the stop marker the sequence of the last journaled command before it:
/// a read is answered only once everything it saw is as safe as a write would be. Egress
/// cannot look into a slot before taking it from the ring (taking releases it to producers),
/// so it reads gates here to know how many slots it may take.
pub(crate) struct Gates {
    gates: Box<[AtomicU64]>,
    mask: u64,
}

impl Gates {
    fn new(ring_size: usize) -> Gates {
        assert!(ring_size.is_power_of_two());
        Gates {
            gates: (0..ring_size).map(|_| AtomicU64::new(0)).collect(),
            mask: ring_size as u64 - 1,
        }
    }

    /// Records the gate of the slot at `position`. Called by the applying stage before it
    /// release-stores its progress past `position`.
    pub(crate) fn set(&self, position: u64, gate: Sequence) {
        self.gates[(position & self.mask) as usize].store(gate.0, Ordering::Relaxed);
    }

    /// The gate of the slot at `position`. Valid only once the applying stage's progress,
    /// read with acquire ordering, is past `position`, and until egress passes it (a producer
    /// cannot reuse the slot, so the applying stage cannot overwrite the entry, before then).
    pub(crate) fn get(&self, position: u64) -> Sequence {
        Sequence(self.gates[(position & self.mask) as usize].load(Ordering::Relaxed))
    }
}

/// The applying stage's progress, advanced at the end of each batch: the last journal sequence
/// it applied, and the ring positions it finished (the next position it reads). Egress reads
/// both for every pass, so they share one cache line.
pub(crate) struct Applied(CachePadded<AppliedCells>);

struct AppliedCells {
    sequence: AtomicU64,
    positions: AtomicU64,
}

impl Applied {
    fn at(sequence: Sequence) -> Applied {
        let cells =
            AppliedCells { sequence: AtomicU64::new(sequence.0), positions: AtomicU64::new(0) };
        Applied(CachePadded::new(cells))
    }

    /// Records a finished batch: everything before ring position `positions` is applied, the
    /// last journaled of it being `sequence`. The sequence is stored first, so a reader that
    /// acquires the positions sees at least the sequence that went with them.
    pub(crate) fn advance(&self, sequence: Sequence, positions: u64) {
        assert!(sequence.0 >= self.0.sequence.load(Ordering::Relaxed), "applied moved back");
        assert!(positions >= self.0.positions.load(Ordering::Relaxed), "positions moved back");
        self.0.sequence.store(sequence.0, Ordering::Release);
        self.0.positions.store(positions, Ordering::Release);
    }

    /// The last journal sequence applied.
    pub(crate) fn sequence(&self) -> Sequence {
        Sequence(self.0.sequence.load(Ordering::Acquire))
    }

    /// The ring positions finished: the slots before it hold their outcomes and gates.
    pub(crate) fn positions(&self) -> u64 {
        self.0.positions.load(Ordering::Acquire)
    }
}

pub(crate) struct Shared {
    pub(crate) topology: Topology,
    pub(crate) wait: WaitStrategy,
    pub(crate) ring_size: u64,
    pub(crate) session_pending_max: u32,
    pub(crate) sessions_max: u32,
    /// The journal sequence the node's first journaled command takes.
    pub(crate) base: Sequence,
    /// Where writes come from: `Intake` as a byte, so a standby can be promoted in place
    /// (`Node::promote`).
    intake: AtomicU8,
    /// The epoch this node journals the commands it sequences in; raised by a promotion.
    epoch: AtomicU64,
    /// The replicator's hold on writes (`Replicator::hold`), if it has one.
    pub(crate) hold: Option<Arc<WriteHold>>,
    /// For a replica: the sequence the next record must carry, and the epoch of the last one,
    /// checked by the producer before a record takes a slot.
    pub(crate) next_record: AtomicU64,
    pub(crate) record_epoch: AtomicU64,
    pub(crate) clock: Arc<dyn Clock>,
    /// The stamps commands get, on the clock ([`TimeLine`]).
    pub(crate) time_line: TimeLine,

    closed: AtomicBool,
    failed: AtomicBool,
    failure: OnceLock<StageFailure>,
    /// The first journal sequence the journal could not make durable, `u64::MAX` while it
    /// works ([`Shared::fence_journal`]). Only ever lowered.
    journal_fence: CachePadded<AtomicU64>,
    /// Why the journal failed, set with the fence.
    journal_fault: OnceLock<Arc<str>>,

    /// Ring positions published so far (the next position to publish).
    pub(crate) published: CachePadded<AtomicU64>,
    /// Journaler: last appended, and what the journal reported durable.
    pub(crate) appended: Watermark,
    pub(crate) durable: Watermark,
    /// Journaler: what the journal synced while answers waited for it
    /// ([`Shared::syncs_every_flush`]); behind otherwise, which only makes egress wait for a
    /// sync it asks for.
    pub(crate) synced: Watermark,
    /// What a caller asked to be synced whatever the policy (`Promoter::sync_journal`).
    pub(crate) sync_requested: Watermark,
    /// Replicator: last sent, and what the replicator reports safe.
    pub(crate) sent: Watermark,
    pub(crate) safe: Arc<Watermark>,
    /// Applying stage: the last journal sequence applied and the ring positions it has
    /// finished, each slot's gate recorded in `gates`.
    pub(crate) applied: Applied,
    pub(crate) gates: Gates,
    /// Egress: the last journal sequence delivered, and the ring positions it has passed.
    pub(crate) released: Watermark,
    pub(crate) released_positions: CachePadded<AtomicU64>,
    /// Ring position of the stop marker once published; `u64::MAX` before.
    pub(crate) stop_at: AtomicU64,

    /// The earliest payment deadline the engine holds (ms), `u64::MAX` when none: the timer
    /// publishes a `Tick` only once the clock reaches it.
    pub(crate) next_due_ms: AtomicU64,
    /// A tick is published and not yet applied: no second one is published meanwhile.
    pub(crate) tick_pending: AtomicBool,
    /// The timer thread, woken when the earliest deadline moves earlier (it sleeps long
    /// while none is set).
    pub(crate) timer_parker: Parker,

    pub(crate) busy_rejections: AtomicU64,
    pub(crate) ticks_skipped: AtomicU64,
    pub(crate) ticks_published: AtomicU64,
    /// Times the timer thread woke from a sleep.
    pub(crate) timer_wakeups: AtomicU64,

    /// Threads reading the producer barrier, woken after each publication.
    pub(crate) stage_parkers: Vec<Parker>,
    /// Egress's thread, or the hook of whoever polls egress.
    pub(crate) egress_parker: Arc<Parker>,
    /// Whether egress is polled (by sessions, the event loop or `Node::step`), not a thread.
    pub(crate) egress_polled: bool,

    pub(crate) stages: Vec<StageCells>,
    pub(crate) blp_service: SharedHistograms,

    pub(crate) sessions_open: AtomicU32,
    pub(crate) next_session: AtomicU64,
    pub(crate) control: mpsc::Sender<Control>,
    /// Messages sent on `control`, counted after each send, so egress looks at the channel
    /// only when there is something in it.
    pub(crate) control_sent: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        config: &NodeConfig,
        next_sequence: Sequence,
        safe: Arc<Watermark>,
        hold: Option<Arc<WriteHold>>,
        (clock, last_stamp): (Arc<dyn Clock>, Timestamp),
        control: mpsc::Sender<Control>,
    ) -> Shared {
        assert!(next_sequence.0 >= 1, "sequences start at 1");
        let topology = config.resolved_topology();
        let last = Sequence(next_sequence.0 - 1);
        let stage_names: &[&'static str] = match topology {
            Topology::Parallel => &["journaler", "replicator", "blp", "egress"],
            Topology::Compact | Topology::Stepped => &["processor", "egress"],
        };
        let producer_readers = stage_names.len() - 1;
        let egress_polled =
            topology == Topology::Stepped || config.egress == super::config::EgressDriver::Polled;
        Shared {
            topology,
            wait: config.wait,
            ring_size: config.ring_size as u64,
            session_pending_max: config.session_pending_max,
            sessions_max: config.sessions_max,
            base: next_sequence,
            intake: AtomicU8::new(config.intake as u8),
            epoch: AtomicU64::new(config.epoch.0),
            hold,
            next_record: AtomicU64::new(next_sequence.0),
            record_epoch: AtomicU64::new(0),
            time_line: TimeLine::starting_at(&*clock, last_stamp),
            clock,
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failure: OnceLock::new(),
            journal_fence: CachePadded::new(AtomicU64::new(u64::MAX)),
            journal_fault: OnceLock::new(),
            published: CachePadded::new(AtomicU64::new(0)),
            appended: Watermark::at(last),
            durable: Watermark::at(last),
            synced: Watermark::at(last),
            sync_requested: Watermark::at(Sequence(0)),
            sent: Watermark::at(last),
            safe,
            applied: Applied::at(last),
            gates: Gates::new(config.ring_size),
            released: Watermark::at(last),
            released_positions: CachePadded::new(AtomicU64::new(0)),
            stop_at: AtomicU64::new(u64::MAX),
            next_due_ms: AtomicU64::new(u64::MAX),
            tick_pending: AtomicBool::new(false),
            timer_parker: Parker::default(),
            busy_rejections: AtomicU64::new(0),
            ticks_skipped: AtomicU64::new(0),
            timer_wakeups: AtomicU64::new(0),
            ticks_published: AtomicU64::new(0),
            stage_parkers: (0..producer_readers).map(|_| Parker::default()).collect(),
            egress_parker: Arc::new(Parker::default()),
            egress_polled,
            stages: stage_names
                .iter()
                .map(|&name| StageCells {
                    name,
                    positions: CachePadded::new(AtomicU64::new(0)),
                    histograms: SharedHistograms::new(),
                })
                .collect(),
            blp_service: SharedHistograms::new(),
            sessions_open: AtomicU32::new(0),
            next_session: AtomicU64::new(1),
            control,
            control_sent: AtomicU64::new(0),
        }
    }

    /// Where writes come from now.
    pub(crate) fn intake(&self) -> Intake {
        Intake::from_u8(self.intake.load(Ordering::Acquire))
    }

    /// The epoch commands sequenced here are journaled in.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// The stamp of a command published at the clock's reading `ns`.
    pub(crate) fn stamp(&self, ns: u64) -> Timestamp {
        self.time_line.stamp(&*self.clock, ns)
    }

    /// Makes a replica sequence its own commands in `epoch` from now on, stamped on its
    /// primary's time line ([`TimeLine::take_over`]). The epoch and the time line are set
    /// before the intake changes, so the first command a producer publishes after seeing the
    /// new intake is journaled in the new epoch and stamped on the primary's time line.
    pub(crate) fn promote(&self, epoch: Epoch) {
        assert_eq!(self.intake(), Intake::Replica, "only a replica is promoted");
        assert!(epoch > self.epoch(), "a promotion raises the epoch");
        self.time_line.take_over(&*self.clock, self.clock.now_ns());
        self.epoch.store(epoch.0, Ordering::Release);
        self.intake.store(Intake::Sequencer as u8, Ordering::Release);
        // The timer sleeps until the earliest deadline on the time line it last read: on the
        // primary's, a deadline may be due now.
        self.timer_parker.wake();
    }

    /// Whether the replicator holds writes back (a lost standby, or a deposed primary).
    pub(crate) fn write_hold(&self) -> Option<HoldReason> {
        self.hold.as_ref().and_then(|hold| hold.reason())
    }

    /// Whether the journaler must sync at its next flush: the primary answers alone on a
    /// journal that answers before it syncs (`WriteHold::set_answers_alone`), answers made
    /// safe while it did still wait for a sync (`WriteHold::alone_through`), or a caller asked
    /// for one (`sync_requested`).
    pub(crate) fn syncs_every_flush(&self) -> bool {
        let synced = self.synced.get();
        synced < self.sync_requested.get()
            || self
                .hold
                .as_ref()
                .is_some_and(|hold| hold.answers_alone() || synced < hold.alone_through())
    }

    /// Whether the journaler has appended records it must sync and has not
    /// ([`Shared::syncs_every_flush`]).
    pub(crate) fn sync_pending(&self) -> bool {
        self.syncs_every_flush() && self.synced.get() < self.appended.get()
    }

    /// The highest sequence egress may release as far as syncing goes: everything, unless
    /// answers made safe while the primary answered alone wait for the journal's sync.
    pub(crate) fn sync_limit(&self) -> Sequence {
        let through = self.hold.as_ref().map_or(Sequence(0), |hold| hold.alone_through());
        let synced = self.synced.get();
        if synced < through { synced } else { Sequence(u64::MAX) }
    }

    /// Whether the primary's lease deadline passed (`WriteHold::set_lease_deadline`): no write
    /// may be acknowledged on the local journal alone any more.
    pub(crate) fn lease_expired(&self) -> bool {
        self.hold.as_ref().is_some_and(|hold| hold.lease_expired(|| self.clock.now_ns()))
    }

    /// Whether a client write may be published now: not once the journal failed, not on a
    /// replica, not while the replicator holds writes.
    pub(crate) fn check_writable(&self) -> Result<(), Refused> {
        self.check_journal()?;
        if self.intake() == Intake::Replica {
            return Err(Refused::NotPrimary);
        }
        match self.write_hold() {
            None if self.lease_expired() => Err(Refused::ReplicationUnavailable),
            None => Ok(()),
            Some(HoldReason::StandbyLost) => Err(Refused::ReplicationUnavailable),
            Some(HoldReason::Deposed) => Err(Refused::NotPrimary),
        }
    }

    /// Whether the journal still takes writes (and snapshots): refused once it failed.
    pub(crate) fn check_journal(&self) -> Result<(), Refused> {
        match self.journal_fault() {
            None => Ok(()),
            Some(cause) => Err(Refused::JournalFailed(cause)),
        }
    }

    /// The first journal sequence the journal could not make durable, once it failed.
    pub(crate) fn journal_fence(&self) -> Option<Sequence> {
        match self.journal_fence.load(Ordering::Acquire) {
            u64::MAX => None,
            fence => Some(Sequence(fence)),
        }
    }

    /// Why the journal failed, once it did.
    pub(crate) fn journal_fault(&self) -> Option<Arc<str>> {
        self.journal_fault.get().cloned()
    }

    /// Whether the journaled command `sequence` lies at or past the journal fence: it is
    /// neither journaled, replicated nor applied, and is answered `Unanswered::NotDurable`.
    pub(crate) fn is_dropped(&self, sequence: Sequence) -> bool {
        sequence.0 >= self.journal_fence.load(Ordering::Acquire)
    }

    /// Fences the journal at `from`: the journal could not make that command (and so nothing
    /// after it) durable. Unlike a stage failure this does not stop the node: writes are
    /// refused (`Refused::JournalFailed`), commands from `from` on are skipped by every stage
    /// and answered `Unanswered::NotDurable`, and reads go on being answered from memory.
    /// Recovery is a restart, which rebuilds the state from what the journal holds. Called
    /// by the journaling stage before it passes the command at `from`, so every stage behind
    /// it sees the fence. A later call can only lower it.
    pub(crate) fn fence_journal(&self, from: Sequence, cause: &str) {
        assert!(from.0 >= self.base.0, "a fence before the node's first command");
        assert!(from.0 < u64::MAX, "the fence's sentinel is not a sequence");
        if self.journal_fault.set(Arc::from(cause)).is_ok() {
            tracing::error!(
                target: "ringfence",
                "the journal failed at sequence {from}: {cause}; writes are \
                 refused and reads are served from memory; restart `ringfence serve` once the \
                 cause is fixed"
            );
        }
        self.journal_fence.fetch_min(from.0, Ordering::AcqRel);
        self.wake_all();
    }

    /// Whether intake is closed (shutdown started or a stage failed).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether a stage failed; stages then do no more work and egress fails what is left.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub(crate) fn failure(&self) -> Option<StageFailure> {
        self.failure.get().cloned()
    }

    /// Stops the node because `stage` failed: intake closes, every stage stops working, egress
    /// answers every unreleased command with the failure. The first failure is the one kept.
    pub(crate) fn fail(&self, stage: &'static str, message: &str) {
        let failure = StageFailure { stage, message: Arc::from(message) };
        if self.failure.set(failure).is_ok() {
            tracing::error!(target: "ringfence", "stage `{stage}` failed, node stopped: {message}");
        }
        self.closed.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Wakes every stage reading the producer barrier.
    pub(crate) fn wake_stages(&self) {
        if self.wait == WaitStrategy::BusySpin {
            return;
        }
        for parker in &self.stage_parkers {
            parker.wake();
        }
    }

    /// Wakes egress (its thread, or the hook of whoever polls it).
    pub(crate) fn wake_egress(&self) {
        if self.wait == WaitStrategy::BusySpin && !self.egress_polled {
            return;
        }
        self.egress_parker.wake();
    }

    pub(crate) fn wake_all(&self) {
        for parker in &self.stage_parkers {
            parker.wake();
        }
        self.egress_parker.wake();
    }

    /// Sends a message to egress; false if egress is gone.
    pub(crate) fn send_control(&self, message: Control) -> bool {
        let sent = self.control.send(message).is_ok();
        if sent {
            self.control_sent.fetch_add(1, Ordering::Release);
        }
        sent
    }

    /// Records that ring position `position` was published.
    pub(crate) fn published(&self, position: u64) {
        self.published.fetch_max(position + 1, Ordering::AcqRel);
    }

    /// The index of the metrics cells of the stage called `name` (look it up once; use
    /// `stages[index]` on the hot path).
    pub(crate) fn stage_index(&self, name: &str) -> usize {
        self.stages.iter().position(|cells| cells.name == name).expect("stage exists in topology")
    }

    /// The metrics cells of the stage called `name`.
    pub(crate) fn stage_cells(&self, name: &str) -> &StageCells {
        &self.stages[self.stage_index(name)]
    }
}

/// The text of a panic payload, for the failure report.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}
