//! The stage threads: journaler, replicator and BLP (parallel topology), the one processor that
//! does all three per batch (compact topology), and the timer that publishes `Tick`.
//!
//! Every stage runs the same loop: read a batch from the ring, handle each command, finish the
//! batch (flush, advance its watermark), wake egress. A panic or a stage error fails the node,
//! naming the stage; the stage then keeps reading (doing nothing) so the ring drains and egress
//! can answer every waiting submitter with the failure, until the stop marker arrives.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::metrics::Recorder;
use super::session::{RingProducer, publish_one};
use super::shared::{Shared, panic_message};
use super::slot::{Reply, RingPoller, Slot, SlotKind, Visit};
use super::stage::{Journal, Replicator, SnapshotHook, StageError};
use super::wait::{Idler, pin_current};
use crate::command::{Command, Sequenced};
use crate::engine::Engine;
use crate::types::{Epoch, Sequence};

/// The BLP's service time is measured on one command in this many, so the clock reads stay off
/// most commands' path.
pub const SERVICE_TIME_SAMPLE_EVERY: u32 = 8;

/// How many commands ahead of the one being applied a stage hints the engine
/// ([`Engine::prefetch`]), within the batch already taken from the ring. Far enough for the
/// engine's table slots to arrive from memory while the commands between are applied; a short
/// batch is hinted only as far as it goes, so no stage waits for more commands.
const PREFETCH_DISTANCE: usize = 8;

/// What a stage does with each command and at the end of each batch.
pub(crate) trait Work: Send + 'static {
    /// The part of the stage running now, named in a failure report.
    fn phase(&self) -> &'static str;
    /// Hints that `sequenced` is handled a few commands from now; changes nothing.
    fn prefetch(&self, _sequenced: &Sequenced) {}
    /// Handles one command.
    fn command(&mut self, sequenced: &Sequenced, slot: &Slot) -> Result<(), StageError>;
    /// Ends a batch whose last command was `last`: flush, then advance the stage's watermarks.
    fn end_of_batch(&mut self, shared: &Shared, last: Sequence) -> Result<(), StageError>;
    /// Called when the stage finds no work (merge metrics left from the last batch).
    fn idle(&mut self, _shared: &Shared) {}
    /// Publishes final metrics; called once when the stage ends.
    fn finish(&mut self, _shared: &Shared) {}
    /// The engine, for the stage that owns it.
    fn into_engine(self) -> Option<Engine>;
}

pub(crate) struct Journaler<J> {
    pub(crate) journal: J,
    pub(crate) epoch: Epoch,
}

impl<J: Journal> Work for Journaler<J> {
    fn phase(&self) -> &'static str {
        "journaler"
    }

    fn command(&mut self, sequenced: &Sequenced, _slot: &Slot) -> Result<(), StageError> {
        self.journal.append(self.epoch, sequenced)
    }

    fn end_of_batch(&mut self, shared: &Shared, last: Sequence) -> Result<(), StageError> {
        let durable = self.journal.flush()?;
        assert!(durable <= last, "journal reports {durable} durable but was given up to {last}");
        shared.appended.advance(last);
        shared.durable.advance(durable);
        Ok(())
    }

    fn into_engine(self) -> Option<Engine> {
        None
    }
}

pub(crate) struct Replication<R> {
    pub(crate) replicator: R,
    pub(crate) epoch: Epoch,
}

impl<R: Replicator> Work for Replication<R> {
    fn phase(&self) -> &'static str {
        "replicator"
    }

    fn command(&mut self, sequenced: &Sequenced, _slot: &Slot) -> Result<(), StageError> {
        self.replicator.send(self.epoch, sequenced)
    }

    fn end_of_batch(&mut self, shared: &Shared, last: Sequence) -> Result<(), StageError> {
        self.replicator.flush()?;
        shared.sent.advance(last);
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
}

impl<H: SnapshotHook> Blp<H> {
    pub(crate) fn new(engine: Engine, hook: H) -> Blp<H> {
        Blp { engine, hook, phase: "blp", countdown: 0, service: Recorder::new() }
    }

    fn apply(&mut self, sequenced: &Sequenced) -> crate::outcome::Outcome {
        if self.countdown > 0 {
            self.countdown -= 1;
            return self.engine.apply(sequenced);
        }
        self.countdown = SERVICE_TIME_SAMPLE_EVERY - 1;
        let start = Instant::now();
        let outcome = self.engine.apply(sequenced);
        self.service.latency_ns(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        outcome
    }
}

impl<H: SnapshotHook> Work for Blp<H> {
    fn phase(&self) -> &'static str {
        self.phase
    }

    fn prefetch(&self, sequenced: &Sequenced) {
        self.engine.prefetch(sequenced);
    }

    fn command(&mut self, sequenced: &Sequenced, slot: &Slot) -> Result<(), StageError> {
        let outcome = self.apply(sequenced);
        // SAFETY: this stage is the only writer of outcomes and is reading `slot` at its
        // sequence; egress reads it only after `applied` (advanced with release ordering at
        // the end of this batch) passes the sequence.
        unsafe { slot.outcome.write(outcome) };
        self.phase = "snapshot";
        self.hook.after_apply(&self.engine, sequenced);
        self.phase = "blp";
        Ok(())
    }

    fn end_of_batch(&mut self, shared: &Shared, last: Sequence) -> Result<(), StageError> {
        shared.applied.advance(last);
        self.service.maybe_publish(&shared.blp_service);
        Ok(())
    }

    fn idle(&mut self, shared: &Shared) {
        self.service.publish_idle(&shared.blp_service);
    }

    fn finish(&mut self, shared: &Shared) {
        self.service.publish(&shared.blp_service, Instant::now(), true);
    }

    fn into_engine(self) -> Option<Engine> {
        Some(self.engine)
    }
}

/// The compact topology's single stage: per command append, send, apply; per batch flush the
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

    fn prefetch(&self, sequenced: &Sequenced) {
        self.blp.prefetch(sequenced);
    }

    fn command(&mut self, sequenced: &Sequenced, slot: &Slot) -> Result<(), StageError> {
        self.phase = "journaler";
        self.journaler.command(sequenced, slot)?;
        self.phase = "replicator";
        self.replication.command(sequenced, slot)?;
        self.phase = "blp";
        self.blp.command(sequenced, slot)
    }

    fn end_of_batch(&mut self, shared: &Shared, last: Sequence) -> Result<(), StageError> {
        self.phase = "blp";
        self.blp.end_of_batch(shared, last)?;
        self.phase = "replicator";
        self.replication.end_of_batch(shared, last)?;
        self.phase = "journaler";
        self.journaler.end_of_batch(shared, last)
    }

    fn idle(&mut self, shared: &Shared) {
        self.blp.idle(shared);
    }

    fn finish(&mut self, shared: &Shared) {
        self.blp.finish(shared);
    }

    fn into_engine(self) -> Option<Engine> {
        self.blp.into_engine()
    }
}

/// Where a stage thread sits in the node.
pub(crate) struct StagePlace {
    pub(crate) shared: Arc<Shared>,
    /// Metrics cells name (`journaler`, `replicator`, `blp`, `processor`).
    pub(crate) name: &'static str,
    /// Index of this stage's parker in `Shared::stage_parkers`.
    pub(crate) parker: usize,
    pub(crate) core: Option<usize>,
}

/// What one batch came to.
struct Batch {
    read: u64,
    stop: bool,
}

/// A stage thread's body. Returns the engine if this stage owned it and did not fail.
pub(crate) fn run_stage<P: RingPoller, W: Work>(
    mut poller: P,
    mut work: W,
    place: &StagePlace,
) -> Option<Engine> {
    let shared = &*place.shared;
    let parker = &shared.stage_parkers[place.parker];
    parker.register_current();
    pin_current(place.name, place.core);
    let cells = &shared.stage_cells(place.name).histograms;
    let mut idler = Idler::new(shared.wait);
    let mut recorder = Recorder::new();
    let mut next = shared.base;
    let mut broken = false;
    loop {
        let working = !broken && !shared.is_failed();
        let batch = catch_unwind(AssertUnwindSafe(|| {
            read_batch(&mut poller, &mut work, shared, &mut next, working)
        }));
        match batch {
            Ok(Ok(Batch { read: 0, .. })) => {
                recorder.publish_idle(cells);
                if !broken {
                    work.idle(shared);
                }
                idler.idle(parker, || poller.has_available());
            }
            Ok(Ok(Batch { read, stop })) => {
                recorder.batch(read);
                recorder.maybe_publish(cells);
                shared.wake_egress();
                idler.reset();
                if stop {
                    break;
                }
            }
            Ok(Err(error)) => {
                broken = true;
                shared.fail(work.phase(), &error.to_string());
            }
            Err(panic) => {
                broken = true;
                shared.fail(work.phase(), &panic_message(panic.as_ref()));
            }
        }
    }
    recorder.publish(cells, Instant::now(), true);
    work.finish(shared);
    if broken { None } else { work.into_engine() }
}

/// Reads one batch: each command is handled (unless the node failed), the batch is ended, and
/// the stop marker ends the stage. `next` is the engine sequence of the next slot. Each command
/// is hinted to `work` a few slots before it is handled; the hint changes nothing, so commands
/// are still handled one by one in ring order.
fn read_batch<P: RingPoller, W: Work>(
    poller: &mut P,
    work: &mut W,
    shared: &Shared,
    next: &mut u64,
    working: bool,
) -> Result<Batch, StageError> {
    let mut stop = false;
    let mut last = None;
    let mut error = None;
    let read =
        poller.drain_ahead::<PREFETCH_DISTANCE, _>(u64::MAX, next, |slot, sequence, visit| {
            let sequence = Sequence(sequence);
            if visit == Visit::Ahead {
                // A slot after the stop marker is published and readable; hinting it is harmless.
                if working && slot.kind == SlotKind::Command {
                    work.prefetch(&Sequenced {
                        sequence,
                        timestamp: slot.timestamp,
                        command: slot.command,
                    });
                }
                return;
            }
            if stop || slot.kind == SlotKind::Stop {
                // The marker is the last slot a stage reads; anything published after it raced
                // with shutdown and is left unjournaled and unanswered.
                stop = true;
                return;
            }
            if !working || error.is_some() {
                return;
            }
            let sequenced =
                Sequenced { sequence, timestamp: slot.timestamp, command: slot.command };
            match work.command(&sequenced, slot) {
                Ok(()) => last = Some(sequence),
                Err(failed) => error = Some(failed),
            }
        });
    if let Some(error) = error {
        return Err(error);
    }
    if let Some(last) = last {
        work.end_of_batch(shared, last)?;
    }
    Ok(Batch { read, stop })
}

/// The timer thread's body: a `Tick` every `period` until intake closes. A tick that finds the
/// ring full is skipped (and counted): the next one carries time forward just as well.
pub(crate) fn run_timer(mut producer: RingProducer, shared: &Shared, period: Duration) {
    let mut next_tick = Instant::now() + period;
    while !shared.is_closed() {
        let now = Instant::now();
        if now < next_tick {
            std::thread::park_timeout(next_tick - now);
            continue;
        }
        next_tick += period;
        if next_tick < now {
            // Fell behind (e.g. descheduled): tick once now rather than in a burst.
            next_tick = now + period;
        }
        let published =
            publish_one(&mut producer, shared, SlotKind::Command, Command::Tick, Reply::NOBODY);
        if published.is_none() {
            shared.ticks_skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
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
        let read = poller.drain_ahead::<AHEAD, _>(u64::MAX, &mut next, |slot, sequence, visit| {
            assert_eq!(sequence, 100 + slot.timestamp.0, "sequences follow ring order");
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
}
