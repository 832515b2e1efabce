//! The consumer side of the ring, thread-free: what the journaler, the replicator and the BLP
//! do with each slot and at the end of each batch ([`Work`]), and [`StageCore`], which reads
//! one batch and hands it to them when a driver calls [`StageCore::step`].
//!
//! Drivers own the threads, not the core: `run_stage` loops a core on a stage thread with the
//! node's wait strategy (the `parallel` and `compact` topologies), and `Node::step` calls the
//! same core on the caller's thread (`stepped`). The timer that publishes due ticks is a
//! driver too (`run_timer`, or `Node::step`).
//!
//! A panic or a stage error fails the node, naming the stage; the core then keeps reading
//! (doing nothing) so the ring drains and egress can answer every waiting submitter with the
//! failure, until the stop marker arrives.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::config::Intake;
use super::messages::Reply;
use super::metrics::Recorder;
use super::session::{RingProducer, publish_one};
use super::shared::{Shared, panic_message};
use super::slot::{RingPoller, Slot, SlotKind, Visit};
use super::stage::{Framed, Journal, Replicator, SnapshotHook, StageError};
use super::wait::{Idler, QUIET_PARK_MAX, pin_current};
use crate::command::{Command, Sequenced};
use crate::engine::Engine;
use crate::outcome::Outcome;
use crate::types::{Epoch, Sequence};

/// The BLP's service time is measured on one command in this many, so the clock reads stay off
/// most commands' path.
pub const SERVICE_TIME_SAMPLE_EVERY: u32 = 8;

/// How many commands ahead of the one being applied a stage hints the engine
/// ([`Engine::prefetch`]), within the batch already taken from the ring. Far enough for the
/// engine's table slots to arrive from memory while the commands between are applied; a short
/// batch is hinted only as far as it goes, so no stage waits for more commands.
const PREFETCH_DISTANCE: usize = 8;

/// Numbers the journaled slots. Every stage (and egress) keeps its own; they agree because
/// they read the same slots in the same order.
pub(crate) struct Sequencer {
    /// The sequence the next journaled slot takes.
    next: Sequence,
}

impl Sequencer {
    pub(crate) fn new(first: Sequence) -> Sequencer {
        assert!(first.0 >= 1, "sequences start at 1");
        Sequencer { next: first }
    }

    /// Places the next slot: its gate sequence, and whether it is journaled. A mutating command
    /// takes the next sequence; a record brings its own, which must be the next; a query or
    /// snapshot request changes nothing, is not journaled, and is gated on the last journaled
    /// sequence before it.
    pub(crate) fn place(&mut self, slot: &Slot) -> (Sequence, bool) {
        assert_ne!(slot.kind, SlotKind::Stop, "the stop marker is not placed");
        if slot.kind == SlotKind::Record {
            // Checked at intake (`Session::try_submit_record`); a gap here is a bug.
            assert_eq!(slot.sequence, self.next, "records arrive in sequence");
            assert!(slot.command.is_mutating(), "records carry mutating commands");
            self.next = slot.sequence.next();
            return (slot.sequence, true);
        }
        if slot.command.is_mutating() {
            let sequence = self.next;
            self.next = sequence.next();
            (sequence, true)
        } else {
            (self.last(), false)
        }
    }

    /// The last sequence given out (the node's base minus one before the first).
    pub(crate) fn last(&self) -> Sequence {
        Sequence(self.next.0 - 1)
    }
}

/// One slot as a stage handles it.
pub(crate) struct Entry<'a> {
    pub(crate) slot: &'a Slot,
    /// Ring position.
    pub(crate) position: u64,
    /// The command with its journal sequence if `journaled`, else with the last journaled
    /// sequence before it; built once per slot, however many stages the thread runs.
    pub(crate) sequenced: Sequenced,
    pub(crate) journaled: bool,
}

impl Entry<'_> {
    fn sequence(&self) -> Sequence {
        self.sequenced.sequence
    }

    /// The epoch the slot is journaled in: the primary's for a record, else this node's
    /// (which a promotion raises before the first command of the new epoch is published).
    fn epoch(&self, shared: &Shared) -> Epoch {
        if self.slot.kind == SlotKind::Record { self.slot.epoch } else { shared.epoch() }
    }
}

/// Where a batch ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchEnd {
    /// Ring position of the last slot handled.
    pub(crate) position: u64,
    /// The last journal sequence placed (the gate of the last slot).
    pub(crate) sequence: Sequence,
}

/// What a stage does with each slot and at the end of each batch.
pub(crate) trait Work: Send + 'static {
    /// The part of the stage running now, named in a failure report.
    fn phase(&self) -> &'static str;
    /// Hints that `slot` is handled a few slots from now; changes nothing.
    fn prefetch(&mut self, _slot: &Slot) {}
    /// Handles one slot.
    fn command(&mut self, shared: &Shared, entry: &Entry<'_>) -> Result<(), StageError>;
    /// Ends a batch: flush, then advance the stage's watermarks.
    fn end_of_batch(&mut self, shared: &Shared, end: BatchEnd) -> Result<(), StageError>;
    /// Called when the stage finds no work: flush what a time-based policy has due, merge
    /// metrics left from the last batch. Returns whether a watermark moved.
    fn idle(&mut self, _shared: &Shared) -> Result<bool, StageError> {
        Ok(false)
    }
    /// Publishes final metrics; called once when the stage ends. `stopped_whole`: the stage
    /// read the stop marker and never failed.
    fn finish(&mut self, _shared: &Shared, _stopped_whole: bool) {}
    /// The engine, for the stage that owns it.
    fn into_engine(self) -> Option<Engine>;
}

pub(crate) struct Journaler<J> {
    pub(crate) journal: J,
    /// Whether the journal or the replicator reads the framed bytes (else framing is skipped).
    pub(crate) frame: bool,
}

impl<J: Journal> Journaler<J> {
    /// Flushes up to `last` and advances `durable`; while answers wait for a sync
    /// ([`Shared::syncs_every_flush`]), syncs and advances `synced` too. Returns whether either
    /// moved.
    fn flush(&mut self, shared: &Shared, last: Sequence) -> Result<bool, StageError> {
        let alone = shared.syncs_every_flush();
        let durable = if alone {
            self.journal.flush_synced(&*shared.clock)?
        } else {
            self.journal.flush(&*shared.clock)?
        };
        assert!(durable <= last, "journal reports {durable} durable but was given up to {last}");
        let (before, synced_before) = (shared.durable.get(), shared.synced.get());
        shared.durable.advance(durable);
        if alone {
            shared.synced.advance(durable);
        }
        Ok(durable > before || shared.synced.get() > synced_before)
    }

    /// Ends a batch or an idle spell: flushes up to `last`, or on an I/O error fences the
    /// journal after what it had made durable. Nothing is flushed once it is fenced: the
    /// journal's state after a failed write or sync is not trusted for more.
    fn flush_or_fence(&mut self, shared: &Shared, last: Sequence) -> Result<bool, StageError> {
        if shared.journal_fence().is_some() {
            return Ok(false);
        }
        match self.flush(shared, last) {
            Ok(moved) => Ok(moved),
            Err(error @ StageError::Io { .. }) => {
                shared.fence_journal(shared.durable.get().next(), &error.to_string());
                Ok(true)
            }
            Err(fatal) => Err(fatal),
        }
    }

    /// The journal could not append `sequence`: fence it there, after making durable what
    /// it had appended before (a failed segment creation leaves the previous segment whole,
    /// so those commands can still be answered).
    fn fence_at(&mut self, shared: &Shared, sequence: Sequence, error: &StageError) {
        shared.fence_journal(sequence, &error.to_string());
        let appended = Sequence(sequence.0 - 1);
        shared.appended.advance(appended);
        match self.flush(shared, appended) {
            Ok(_) => assert_eq!(shared.durable.get(), appended, "appended but not durable"),
            Err(error) => shared.fence_journal(shared.durable.get().next(), &error.to_string()),
        }
    }
}

impl<J: Journal> Work for Journaler<J> {
    fn phase(&self) -> &'static str {
        "journaler"
    }

    fn finish(&mut self, shared: &Shared, stopped_whole: bool) {
        if !stopped_whole || shared.journal_fence().is_some() {
            // A crash's journal, as far as the next start can tell: its end is found by reading.
            return;
        }
        if let Err(error) = self.journal.close() {
            tracing::warn!(
                target: "ringfence",
                "the journal could not be marked stopped cleanly ({error}); the next start reads \
                 its end as it would after a crash"
            );
        }
    }

    fn command(&mut self, shared: &Shared, entry: &Entry<'_>) -> Result<(), StageError> {
        if !entry.journaled || shared.is_dropped(entry.sequence()) {
            return Ok(());
        }
        let epoch = entry.epoch(shared);
        let sequenced = &entry.sequenced;
        let record = &entry.slot.record;
        let appended = if self.frame {
            if entry.slot.kind == SlotKind::Command {
                // SAFETY: this is the journaling stage reading a `Command` slot: the one
                // writer of its record cell (`RecordCell`).
                unsafe { record.write() }.encode(epoch, sequenced);
            }
            // SAFETY: written just above on this thread, or by the producer before publishing.
            let bytes = unsafe { record.read() };
            self.journal.append(&Framed { epoch, sequenced, bytes })
        } else {
            // Nobody reads the bytes: the record's cache lines are not touched at all.
            self.journal.append(&Framed { epoch, sequenced, bytes: &[] })
        };
        match appended {
            Err(error @ StageError::Io { .. }) => {
                // An I/O error (a full disk, a failing device) fences writes but keeps the
                // node answering reads; anything else is a broken journal and stops it.
                self.fence_at(shared, entry.sequence(), &error);
                Ok(())
            }
            other => other,
        }
    }

    fn end_of_batch(&mut self, shared: &Shared, end: BatchEnd) -> Result<(), StageError> {
        if shared.journal_fence().is_some() {
            return Ok(());
        }
        shared.appended.advance(end.sequence);
        self.flush_or_fence(shared, end.sequence)?;
        Ok(())
    }

    fn idle(&mut self, shared: &Shared) -> Result<bool, StageError> {
        // An `interval` journal syncs when its period is up, traffic or not.
        self.flush_or_fence(shared, shared.appended.get())
    }

    fn into_engine(self) -> Option<Engine> {
        None
    }
}

pub(crate) struct Replication<R> {
    pub(crate) replicator: R,
}

impl<R: Replicator> Work for Replication<R> {
    fn phase(&self) -> &'static str {
        "replicator"
    }

    fn command(&mut self, shared: &Shared, entry: &Entry<'_>) -> Result<(), StageError> {
        if !entry.journaled || shared.is_dropped(entry.sequence()) {
            return Ok(());
        }
        let epoch = entry.epoch(shared);
        let sequenced = &entry.sequenced;
        let bytes = if R::NEEDS_BYTES {
            // SAFETY: the replicator reads behind the journaling stage, which wrote the cell
            // (or the producer did, for a record) — see `RecordCell`.
            unsafe { entry.slot.record.read() }
        } else {
            &[]
        };
        self.replicator.send(&Framed { epoch, sequenced, bytes })
    }

    fn end_of_batch(&mut self, shared: &Shared, end: BatchEnd) -> Result<(), StageError> {
        self.replicator.flush()?;
        let fence = shared.journal_fence().map_or(end.sequence, |fence| Sequence(fence.0 - 1));
        shared.sent.advance(end.sequence.min(fence));
        Ok(())
    }

    fn into_engine(self) -> Option<Engine> {
        None
    }
}

pub(crate) struct Blp<H> {
    pub(crate) engine: Engine,
    pub(crate) hook: H,
    pub(crate) phase: &'static str,
    pub(crate) countdown: u32,
    pub(crate) service: Recorder,
    /// A tick was applied in the current batch.
    pub(crate) ticked: bool,
}

impl<H: SnapshotHook> Blp<H> {
    pub(crate) fn new(mut engine: Engine, hook: H) -> Blp<H> {
        // `read_batch` shows every slot ahead before it is handled, and `prefetch` below hands
        // each client command on to the engine.
        engine.set_hinted_ahead(true);
        Blp { engine, hook, phase: "blp", countdown: 0, service: Recorder::new(), ticked: false }
    }

    fn apply(&mut self, sequenced: &Sequenced) -> Outcome {
        if self.countdown > 0 {
            self.countdown -= 1;
            return self.engine.apply(sequenced);
        }
        self.countdown = SERVICE_TIME_SAMPLE_EVERY - 1;
        // Real elapsed time, for the service-time histogram only: it never decides anything.
        let start = Instant::now();
        let outcome = self.engine.apply(sequenced);
        self.service.latency_ns(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        outcome
    }

    /// The answer to a slot that changes nothing: a query, or a snapshot request (which the
    /// snapshot hook then sees, taken at the last journaled command).
    fn read(&mut self, shared: &Shared, entry: &Entry<'_>) -> Outcome {
        assert!(self.engine.last_sequence() <= entry.sequence(), "a read sees only what is placed");
        match &entry.slot.command {
            Command::Query(query) => self.engine.query(query),
            Command::Snapshot => {
                let outcome = Outcome::SnapshotRequested {
                    last_sequence: self.engine.last_sequence(),
                    running_hash: self.engine.running_hash(),
                };
                // Once the journal failed, the state may hold commands it never made durable:
                // a snapshot of it would make them durable behind the journal's back.
                if shared.journal_fence().is_none() {
                    self.phase = "snapshot";
                    self.hook.after_apply(&self.engine, &entry.sequenced);
                    self.phase = "blp";
                }
                outcome
            }
            Command::Tick | Command::Client { .. } => {
                unreachable!("mutating commands are journaled")
            }
        }
    }
}

impl<H: SnapshotHook> Work for Blp<H> {
    fn phase(&self) -> &'static str {
        self.phase
    }

    fn prefetch(&mut self, slot: &Slot) {
        if let Command::Client { .. } = slot.command {
            let sequenced = Sequenced {
                sequence: Sequence(0),
                timestamp: slot.timestamp,
                command: slot.command,
            };
            self.engine.prefetch(&sequenced);
        }
    }

    fn command(&mut self, shared: &Shared, entry: &Entry<'_>) -> Result<(), StageError> {
        entry.slot.warm_ahead_for_outcome();
        let outcome = if entry.journaled && shared.is_dropped(entry.sequence()) {
            // Past the journal fence: never applied, answered `NotDurable` by egress, which
            // reads no outcome for it.
            shared.gates.set(entry.position, entry.sequence());
            return Ok(());
        } else if entry.journaled {
            let sequenced = &entry.sequenced;
            let outcome = self.apply(sequenced);
            self.ticked |= matches!(sequenced.command, Command::Tick);
            self.phase = "snapshot";
            self.hook.after_apply(&self.engine, sequenced);
            self.phase = "blp";
            outcome
        } else {
            self.read(shared, entry)
        };
        // SAFETY: this stage is the only writer of outcomes and is reading `slot` at its
        // position; egress reads it only after the applied positions (release-stored at the end
        // of this batch) passes the position.
        unsafe { entry.slot.outcome.write(outcome) };
        shared.gates.set(entry.position, entry.sequence());
        Ok(())
    }

    fn end_of_batch(&mut self, shared: &Shared, end: BatchEnd) -> Result<(), StageError> {
        let applied = self.engine.last_sequence();
        assert!(applied <= end.sequence, "applied past the last placed");
        // Every journaled slot was applied but those past a journal fence.
        assert!(applied == end.sequence || shared.journal_fence().is_some(), "a slot skipped");
        shared.applied.advance(applied, end.position + 1);
        publish_next_due(&self.engine, shared);
        if std::mem::take(&mut self.ticked) {
            // After the new due time: a timer that sees no tick pending sees the new time too.
            shared.tick_pending.store(false, Ordering::Release);
        }
        self.service.maybe_publish(&shared.blp_service);
        Ok(())
    }

    fn idle(&mut self, shared: &Shared) -> Result<bool, StageError> {
        self.service.publish_idle(&shared.blp_service);
        self.hook.idle(&self.engine);
        Ok(false)
    }

    fn finish(&mut self, shared: &Shared, _stopped_whole: bool) {
        self.service.publish(&shared.blp_service, Instant::now(), true);
    }

    fn into_engine(mut self) -> Option<Engine> {
        // Whoever takes it next applies commands without this stage's hints.
        self.engine.set_hinted_ahead(false);
        Some(self.engine)
    }
}

/// Tells the timer when the engine's earliest payment deadline falls, waking it if that is
/// earlier than before (it may be sleeping long, with no deadline set).
pub(crate) fn publish_next_due(engine: &Engine, shared: &Shared) {
    let due = engine.next_deadline().map_or(u64::MAX, |deadline| deadline.0);
    let before = shared.next_due_ms.load(Ordering::Acquire);
    if due != before {
        shared.next_due_ms.store(due, Ordering::Release);
    }
    if due < before {
        shared.timer_parker.wake();
    }
}

/// The compact topology's single stage: per slot append, send, apply; per batch flush the
/// replicator and the journal, then advance every watermark.
pub(crate) struct Processor<J, R, H> {
    pub(crate) journaler: Journaler<J>,
    pub(crate) replication: Replication<R>,
    pub(crate) blp: Blp<H>,
    pub(crate) phase: &'static str,
}

impl<J: Journal, R: Replicator, H: SnapshotHook> Work for Processor<J, R, H> {
    fn phase(&self) -> &'static str {
        if self.phase == "blp" { self.blp.phase() } else { self.phase }
    }

    fn prefetch(&mut self, slot: &Slot) {
        self.blp.prefetch(slot);
    }

    fn command(&mut self, shared: &Shared, entry: &Entry<'_>) -> Result<(), StageError> {
        self.phase = "journaler";
        self.journaler.command(shared, entry)?;
        self.phase = "replicator";
        self.replication.command(shared, entry)?;
        self.phase = "blp";
        self.blp.command(shared, entry)
    }

    fn end_of_batch(&mut self, shared: &Shared, end: BatchEnd) -> Result<(), StageError> {
        self.phase = "blp";
        self.blp.end_of_batch(shared, end)?;
        self.phase = "replicator";
        self.replication.end_of_batch(shared, end)?;
        self.phase = "journaler";
        self.journaler.end_of_batch(shared, end)
    }

    fn idle(&mut self, shared: &Shared) -> Result<bool, StageError> {
        self.phase = "journaler";
        let moved = self.journaler.idle(shared)?;
        self.phase = "blp";
        self.blp.idle(shared)?;
        Ok(moved)
    }

    fn finish(&mut self, shared: &Shared, stopped_whole: bool) {
        self.journaler.finish(shared, stopped_whole);
        self.blp.finish(shared, stopped_whole);
    }

    fn into_engine(self) -> Option<Engine> {
        self.blp.into_engine()
    }
}

/// What one call of [`StageCore::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing was published for this stage.
    Idle,
    /// A batch of this many slots was read.
    Worked(u64),
    /// The stop marker was read: the stage is done.
    Stopped,
}

/// One consumer of the ring and what it does, advanced one batch per [`StageCore::step`].
/// Owns no thread and reads no clock of its own.
pub(crate) struct StageCore<P, W> {
    poller: P,
    work: W,
    /// Metrics cells name (`journaler`, `replicator`, `blp`, `processor`), and their index.
    name: &'static str,
    cells: usize,
    /// Ring position of the next slot.
    next: u64,
    sequencer: Sequencer,
    /// This stage failed; it reads on without working so the ring drains.
    broken: bool,
    /// This stage read the stop marker.
    stopped: bool,
    /// Other stages read behind this one (the journaler in `parallel`): wake them per batch.
    upstream: bool,
    recorder: Recorder,
}

impl<P: RingPoller, W: Work> StageCore<P, W> {
    pub(crate) fn new(name: &'static str, poller: P, work: W, shared: &Shared) -> Self {
        let sequencer = Sequencer::new(shared.base);
        StageCore {
            poller,
            work,
            name,
            cells: shared.stage_index(name),
            next: 0,
            sequencer,
            broken: false,
            stopped: false,
            upstream: false,
            recorder: Recorder::new(),
        }
    }

    /// Marks this stage as one other stages read behind: each batch it ends wakes them.
    pub(crate) fn upstream_of_stages(mut self) -> Self {
        self.upstream = true;
        self
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Reads and handles one batch, if one is published.
    pub(crate) fn step(&mut self, shared: &Shared) -> Step {
        let working = !self.broken && !shared.is_failed();
        let StageCore { poller, work, next, sequencer, .. } = self;
        let batch = catch_unwind(AssertUnwindSafe(|| {
            read_batch(poller, work, shared, next, sequencer, working)
        }));
        let failed = match batch {
            Ok(Ok(Batch { read: 0, .. })) => return Step::Idle,
            Ok(Ok(Batch { read, stop })) => {
                let cells = &shared.stages[self.cells];
                cells.positions.store(self.next, Ordering::Release);
                self.recorder.batch(read);
                self.recorder.maybe_publish(&cells.histograms);
                // Whoever reads behind this stage: egress, and in `parallel` the replicator and
                // the BLP behind the journaler.
                if self.upstream {
                    shared.wake_stages();
                }
                shared.wake_egress();
                self.stopped = stop;
                return if stop { Step::Stopped } else { Step::Worked(read) };
            }
            Ok(Err(error)) => error.to_string(),
            Err(panic) => panic_message(panic.as_ref()),
        };
        self.broken = true;
        shared.fail(self.work.phase(), &failed);
        Step::Worked(0)
    }

    /// Called when [`StageCore::step`] found nothing: lets the work flush what time made due
    /// and merges metrics.
    pub(crate) fn idle(&mut self, shared: &Shared) {
        self.recorder.publish_idle(&shared.stages[self.cells].histograms);
        if self.broken || shared.is_failed() {
            return;
        }
        match catch_unwind(AssertUnwindSafe(|| self.work.idle(shared))) {
            Ok(Ok(true)) => shared.wake_egress(),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                self.broken = true;
                shared.fail(self.work.phase(), &error.to_string());
            }
            Err(panic) => {
                self.broken = true;
                shared.fail(self.work.phase(), &panic_message(panic.as_ref()));
            }
        }
    }

    /// Whether a slot is ready to read.
    pub(crate) fn has_available(&self) -> bool {
        self.poller.has_available()
    }

    /// Publishes final metrics and hands back the engine if this stage owned it and did not
    /// fail.
    pub(crate) fn finish(mut self, shared: &Shared) -> Option<Engine> {
        let cells = &shared.stages[self.cells];
        self.recorder.publish(&cells.histograms, Instant::now(), true);
        self.work.finish(shared, self.stopped && !self.broken);
        if self.broken { None } else { self.work.into_engine() }
    }
}

/// A stage core with its types erased, for a driver that does not name them.
pub(crate) trait StepStage: Send {
    fn step(&mut self, shared: &Shared) -> Step;
    fn idle(&mut self, shared: &Shared);
    fn finish(self: Box<Self>, shared: &Shared) -> Option<Engine>;
}

impl<P: RingPoller, W: Work> StepStage for StageCore<P, W> {
    fn step(&mut self, shared: &Shared) -> Step {
        StageCore::step(self, shared)
    }

    fn idle(&mut self, shared: &Shared) {
        StageCore::idle(self, shared);
    }

    fn finish(self: Box<Self>, shared: &Shared) -> Option<Engine> {
        StageCore::finish(*self, shared)
    }
}

/// What one batch came to.
struct Batch {
    read: u64,
    stop: bool,
}

/// Reads one batch: each slot is placed (journal sequence or gate) and handled (unless the
/// node failed), the batch is ended, and the stop marker ends the stage. Each slot is hinted
/// to `work` a few slots before it is handled; the hint changes nothing, so slots are still
/// handled one by one in ring order.
fn read_batch<P: RingPoller, W: Work>(
    poller: &mut P,
    work: &mut W,
    shared: &Shared,
    next: &mut u64,
    sequencer: &mut Sequencer,
    working: bool,
) -> Result<Batch, StageError> {
    let mut stop = false;
    let mut last = None;
    let mut error = None;
    let read =
        poller.drain_ahead::<PREFETCH_DISTANCE, _>(u64::MAX, next, |slot, position, visit| {
            if visit == Visit::Ahead {
                // A slot after the stop marker is published and readable; hinting it is harmless.
                if working && slot.kind != SlotKind::Stop {
                    work.prefetch(slot);
                }
                return;
            }
            if stop || slot.kind == SlotKind::Stop {
                // The marker is the last slot a stage reads; anything published after it raced
                // with shutdown and is left unjournaled and unanswered.
                stop = true;
                return;
            }
            let (sequence, journaled) = sequencer.place(slot);
            if !working || error.is_some() {
                return;
            }
            let sequenced =
                Sequenced { sequence, timestamp: slot.timestamp, command: slot.command };
            let entry = Entry { slot, position, sequenced, journaled };
            match work.command(shared, &entry) {
                Ok(()) => last = Some(BatchEnd { position, sequence }),
                Err(failed) => error = Some(failed),
            }
        });
    if let Some(error) = error {
        return Err(error);
    }
    if let Some(end) = last {
        work.end_of_batch(shared, end)?;
    }
    Ok(Batch { read, stop })
}

/// Where a stage thread sits in the node.
pub(crate) struct StagePlace {
    /// Index of this stage's parker in `Shared::stage_parkers`.
    pub(crate) parker: usize,
    pub(crate) core: Option<usize>,
}

/// A stage thread's body: step, idle, repeat until the stop marker. Returns the engine if this
/// stage owned it and did not fail.
pub(crate) fn run_stage<P: RingPoller, W: Work>(
    mut stage: StageCore<P, W>,
    shared: &Shared,
    place: &StagePlace,
) -> Option<Engine> {
    let parker = &shared.stage_parkers[place.parker];
    parker.register_current();
    pin_current(stage.name(), place.core);
    let mut idler = Idler::new(shared.wait);
    loop {
        match stage.step(shared) {
            Step::Idle => {
                stage.idle(shared);
                // Only a journal with appended records not yet flushed (`interval`), or not yet
                // synced by a primary answering alone, has work coming from the clock;
                // otherwise only a producer or an upstream stage can bring any, and it wakes
                // this thread.
                if shared.appended.get() > shared.durable.get() || shared.sync_pending() {
                    idler.idle(parker, || stage.has_available());
                } else {
                    idler.idle_quiet(parker, || stage.has_available());
                }
            }
            Step::Worked(_) => idler.reset(),
            Step::Stopped => break,
        }
    }
    stage.finish(shared)
}

/// Publishes a `Tick` if the clock has reached the engine's earliest payment deadline, no
/// tick is in flight and writes are not held. An idle node with nothing due publishes
/// nothing, so its journal does not grow. A tick that finds the ring full is skipped (and
/// counted): the next check retries.
pub(crate) fn publish_tick_if_due(producer: &mut RingProducer, shared: &Shared) {
    // Pending first: once the BLP cleared it, the due time it stored before is visible.
    if shared.tick_pending.load(Ordering::Acquire) || shared.is_closed() {
        return;
    }
    if shared.journal_fence().is_some() {
        // A tick past the fence would be dropped, and leave `tick_pending` set for good.
        return;
    }
    if shared.intake() == Intake::Replica {
        // A standby's ticks are its primary's, arriving as records.
        return;
    }
    if shared.write_hold().is_some() {
        // A primary whose writes are held journals nothing of its own: a restarted primary
        // may have lost records its standby holds, and its next records must not take their
        // places before the standby has rejoined and dropped them. Deadlines that pass in the
        // meantime expire with the first tick after the hold lifts.
        return;
    }
    let due = shared.next_due_ms.load(Ordering::Acquire);
    if shared.stamp(shared.clock.now_ns()).0 < due {
        return;
    }
    shared.tick_pending.store(true, Ordering::Release);
    let published = publish_one(producer, shared, SlotKind::Command, Command::Tick, Reply::NOBODY);
    if published.is_some() {
        shared.ticks_published.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.tick_pending.store(false, Ordering::Release);
        shared.ticks_skipped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The timer thread's body: every `period` while a deadline is due or near, publish a tick if
/// one is due, until intake closes. Until the earliest deadline comes near, and with none set,
/// it sleeps up to [`QUIET_PARK_MAX`] at a time, woken at once when an earlier one is set
/// (`publish_next_due`): an idle node's timer costs a few wake-ups a second, whether or not
/// it holds reservations awaiting payment.
pub(crate) fn run_timer(mut producer: RingProducer, shared: &Shared, period: Duration) {
    shared.timer_parker.register_current();
    let mut next_check = Instant::now() + period;
    while !shared.is_closed() {
        let now = Instant::now();
        if now < next_check {
            shared.timer_parker.prepare_sleep();
            let due = shared.next_due_ms.load(Ordering::Acquire);
            let quiet = due == u64::MAX;
            let wait = if quiet {
                QUIET_PARK_MAX
            } else {
                // Until the deadline, on the node's time line; at most QUIET_PARK_MAX, so a
                // time line that moves on by more than the timer slept (a manual clock, a
                // promotion's) is seen within that.
                let stamp = shared.stamp(shared.clock.now_ns()).0;
                let until_due = Duration::from_millis(due.saturating_sub(stamp));
                (next_check - now).max(until_due.min(QUIET_PARK_MAX))
            };
            if !shared.is_closed() {
                std::thread::park_timeout(wait);
            }
            shared.timer_parker.awake();
            shared.timer_wakeups.fetch_add(1, Ordering::Relaxed);
            if quiet && shared.next_due_ms.load(Ordering::Acquire) != u64::MAX {
                // Woken for a new deadline: check it now, then every period.
                next_check = Instant::now();
            }
            continue;
        }
        // Fell behind (e.g. descheduled): check once now rather than in a burst.
        next_check = (next_check + period).max(now);
        publish_tick_if_due(&mut producer, shared);
    }
}

#[cfg(test)]
mod tests {
    use disruptor::{BusySpin, Producer, build_multi_producer};

    use super::*;
    use crate::types::Timestamp;

    /// Drains `count` published slots looking `AHEAD` slots ahead and returns the visits, each
    /// named by the slot's timestamp.
    fn visits<const AHEAD: usize>(count: u64) -> Vec<(u64, Visit)> {
        let builder = build_multi_producer(64, Slot::empty, BusySpin);
        let (mut poller, builder) = builder.new_event_poller();
        let mut producer = builder.build();
        for index in 0..count {
            producer.publish(|slot| slot.timestamp = Timestamp(index));
        }
        let mut seen = Vec::new();
        let mut next = 100;
        let read = poller.drain_ahead::<AHEAD, _>(u64::MAX, &mut next, |slot, position, visit| {
            assert_eq!(position, 100 + slot.timestamp.0, "positions follow ring order");
            seen.push((slot.timestamp.0, visit));
        });
        assert_eq!(read, count);
        assert_eq!(next, 100 + count);
        seen
    }

    #[test]
    fn look_ahead_hints_within_the_batch_and_handles_in_ring_order() {
        // Goal: every slot is hinted before it is handled, at most `AHEAD` slots early, and
        // slots are handled exactly once each, in ring order, for batches longer and shorter
        // than the window.
        for count in [1, 2, 3, 4, 5, 11] {
            let seen = visits::<3>(count);
            assert_eq!(seen.len() as u64, 2 * count);
            let handled: Vec<u64> = seen
                .iter()
                .filter(|(_, visit)| *visit == Visit::Handle)
                .map(|(at, _)| *at)
                .collect();
            assert_eq!(handled, (0..count).collect::<Vec<_>>());
            let mut hinted = 0;
            for (at, visit) in seen {
                match visit {
                    Visit::Ahead => {
                        assert_eq!(at, hinted, "hints follow ring order");
                        hinted += 1;
                    }
                    Visit::Handle => {
                        assert_eq!(hinted, count.min(at + 4), "hinted {hinted} at {at}")
                    }
                }
            }
        }
    }

    #[test]
    fn queries_take_no_sequence_and_are_gated_on_the_command_before_them() {
        // Goal: mutating commands are numbered contiguously from the base; reads are placed at
        // the last number given out, so they wait for what they saw and nothing more.
        let mut sequencer = Sequencer::new(Sequence(10));
        let mut slot = Slot::empty();
        let mut placed = Vec::new();
        let query = Command::Query(crate::command::Query::Sku(crate::types::SkuId(1)));
        for command in [query, Command::Tick, query, Command::Snapshot, Command::Tick] {
            slot.command = command;
            placed.push(sequencer.place(&slot));
        }
        let expected = [
            (Sequence(9), false),
            (Sequence(10), true),
            (Sequence(10), false),
            (Sequence(10), false),
            (Sequence(11), true),
        ];
        assert_eq!(placed, expected);
        assert_eq!(sequencer.last(), Sequence(11));
    }
}
