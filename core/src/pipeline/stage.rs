//! The pluggable stages around the BLP: journal, replicator, snapshot hook.
//!
//! The pipeline is generic over these traits; the node runs alone with [`MemoryJournal`] and
//! [`NoReplicator`], and the journal and replication crates plug real stages in without the
//! pipeline changing. The journal and the replicator see every journaled command (everything
//! but queries and snapshot requests, which change nothing) in order, so journal sequences are
//! contiguous.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_utils::CachePadded;

use super::clock::Clock;
use super::wait::WakeHook;
use crate::command::Sequenced;
use crate::engine::Engine;
use crate::types::{Epoch, Sequence};

/// A failure in a stage's I/O. The node stops (loudly, naming the stage) rather than answer a
/// command it could not make safe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// An operating-system I/O error, with what the stage was doing.
    #[error("{context}: {source}")]
    Io {
        /// What the stage was doing, e.g. "appending to segment 00000000000000000001.seg".
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Anything else the stage cannot recover from.
    #[error("{0}")]
    Fatal(String),
}

/// A sequence number shared between threads: written by one stage (or by the thread that
/// reads a standby's acknowledgements), read by egress. It can carry a wake hook, called each
/// time it moves, so egress learns of an advance made on another thread at once instead of at
/// the end of its next park.
#[derive(Default)]
pub struct Watermark {
    value: CachePadded<AtomicU64>,
    on_advance: OnceLock<WakeHook>,
}

impl Watermark {
    /// A shared watermark starting at `sequence`.
    #[must_use]
    pub fn new(sequence: Sequence) -> Arc<Watermark> {
        Arc::new(Watermark::at(sequence))
    }

    /// A watermark starting at `sequence`.
    #[must_use]
    pub fn at(sequence: Sequence) -> Watermark {
        Watermark {
            value: CachePadded::new(AtomicU64::new(sequence.0)),
            on_advance: OnceLock::new(),
        }
    }

    /// The current value.
    #[must_use]
    pub fn get(&self) -> Sequence {
        Sequence(self.value.load(Ordering::Acquire))
    }

    /// Moves the watermark forward to `sequence`; never moves it back. Calls the wake hook, if
    /// one is set, when the value moved.
    pub fn advance(&self, sequence: Sequence) {
        // Read first: an idle stage re-reports the same value in a loop, and a read-modify-write
        // would take the cache line from the threads reading it every time.
        if self.value.load(Ordering::Acquire) >= sequence.0 {
            return;
        }
        let before = self.value.fetch_max(sequence.0, Ordering::AcqRel);
        if before < sequence.0
            && let Some(wake) = self.on_advance.get()
        {
            wake();
        }
    }

    /// Sets the hook called after every advance (e.g. waking egress). Returns false if one is
    /// set already. The hook must not block or panic.
    pub fn set_wake_hook(&self, hook: WakeHook) -> bool {
        self.on_advance.set(hook).is_ok()
    }
}

impl std::fmt::Debug for Watermark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Watermark").field(&self.get()).finish()
    }
}

/// Why a replicator holds writes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HoldReason {
    /// Sync mode, and the standby that had caught up stopped acknowledging for longer than
    /// the replication timeout: nothing more can be acknowledged as replicated.
    StandbyLost = 1,
    /// A newer primary exists (a higher epoch was seen): this node must not take writes.
    Deposed = 2,
}

/// A replicator's hold on writes, shared with the node. While it is on, producers refuse
/// client writes (`Refused::ReplicationUnavailable` or `Refused::NotPrimary`), and egress
/// stops waiting for the standby: journaled commands it has not acknowledged are answered
/// `Unanswered::Unreplicated` (applied here, not known to the standby), and reads are answered
/// from local state, so the node keeps serving reads instead of stalling behind a write that
/// cannot be replicated.
#[derive(Debug)]
pub struct WriteHold {
    reason: AtomicU8,
    /// When a primary acknowledging on its own journal must stop (nanoseconds on the node's
    /// [`Clock`]), or `u64::MAX`: checked by egress at every release, so a primary paused past
    /// its lease acknowledges nothing when it resumes, whatever its control thread has
    /// noticed.
    lease_deadline_ns: AtomicU64,
    /// A primary answers on its own journal alone, and that journal answers before it syncs
    /// (`none`, `interval`): its answers wait for a sync instead ([`Journal::flush_synced`]).
    answers_alone: AtomicBool,
    /// The highest sequence made safe while answering alone (a sequence, `0` for none): no
    /// answer up to it leaves before the journal synced it, even once the primary no longer
    /// answers alone.
    alone_through: AtomicU64,
}

impl Default for WriteHold {
    fn default() -> WriteHold {
        WriteHold {
            reason: AtomicU8::new(0),
            lease_deadline_ns: AtomicU64::new(u64::MAX),
            answers_alone: AtomicBool::new(false),
            alone_through: AtomicU64::new(0),
        }
    }
}

impl WriteHold {
    /// A hold that is off.
    #[must_use]
    pub fn new() -> Arc<WriteHold> {
        Arc::new(WriteHold::default())
    }

    /// Turns the hold on for `reason` (a later reason replaces an earlier one).
    pub fn hold(&self, reason: HoldReason) {
        self.reason.store(reason as u8, Ordering::Release);
    }

    /// Turns the hold off.
    pub fn release(&self) {
        self.reason.store(0, Ordering::Release);
    }

    /// Writes acknowledged on the local journal alone may be released only before
    /// `deadline_ns` ([`Clock::now_ns`] of the node's clock); `u64::MAX` lifts the limit.
    /// Egress answers a write it would release after the deadline `Unreplicated` instead.
    pub fn set_lease_deadline(&self, deadline_ns: u64) {
        self.lease_deadline_ns.store(deadline_ns, Ordering::Release);
    }

    /// Whether a lease deadline is set and the node's clock, read by `now_ns` only when one
    /// is, has reached it: egress asks at every pass, and only a primary coordinated through a
    /// witness holds a lease.
    #[must_use]
    pub fn lease_expired(&self, now_ns: impl FnOnce() -> u64) -> bool {
        let deadline = self.lease_deadline_ns.load(Ordering::Acquire);
        deadline != u64::MAX && now_ns() >= deadline
    }

    /// Sets whether the primary answers alone on a journal that answers before it syncs: while
    /// it does, the journaling stage syncs every batch and egress waits for the sync, so no
    /// answer rests on one machine's page cache alone. A journal that always syncs first never
    /// needs it.
    pub fn set_answers_alone(&self, alone: bool) {
        self.answers_alone.store(alone, Ordering::Release);
    }

    /// Whether answers wait for a local sync ([`WriteHold::set_answers_alone`]).
    #[must_use]
    pub fn answers_alone(&self) -> bool {
        self.answers_alone.load(Ordering::Acquire)
    }

    /// Notes that answers up to `sequence` are being made safe while the primary answers alone:
    /// called before the replicator's safe watermark passes them, so egress, which reads the
    /// watermark first, sees the note. Never lowered.
    pub fn note_alone_through(&self, sequence: Sequence) {
        self.alone_through.fetch_max(sequence.0, Ordering::AcqRel);
    }

    /// The highest sequence made safe while answering alone ([`WriteHold::note_alone_through`]):
    /// egress releases nothing up to it that the journal has not synced.
    #[must_use]
    pub fn alone_through(&self) -> Sequence {
        Sequence(self.alone_through.load(Ordering::Acquire))
    }

    /// Why writes are held, if they are.
    #[must_use]
    pub fn reason(&self) -> Option<HoldReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            1 => Some(HoldReason::StandbyLost),
            2 => Some(HoldReason::Deposed),
            other => unreachable!("hold reason byte {other} is never stored"),
        }
    }
}

/// A journaled command as the journal and the replicator receive it: its framed record bytes
/// (`crate::record`), encoded once by the stage that journals it — or received whole from the
/// primary on a standby — and the values those bytes hold. A standby stores the very bytes its
/// primary journaled.
#[derive(Clone, Copy, Debug)]
pub struct Framed<'a> {
    /// The epoch of the node that sequenced the command.
    pub epoch: Epoch,
    /// The command, its sequence and its timestamp.
    pub sequenced: &'a Sequenced,
    /// The record: header, canonical payload, padding; `record::check` passes on it. Empty
    /// when neither the journal nor the replicator reads bytes (`NEEDS_BYTES`): then the
    /// stage does not frame at all.
    pub bytes: &'a [u8],
}

/// The journaler stage: appends every command, in sequence order, before its answer leaves.
pub trait Journal: Send + 'static {
    /// Whether [`Journal::append`] reads [`Framed::bytes`]. A journal that keeps nothing (a
    /// benchmark's null journal) says no, and if the replicator does not need them either the
    /// stage skips framing and hands over empty bytes.
    const NEEDS_BYTES: bool = true;

    /// Appends one command record. It need not be durable until [`Journal::flush`].
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError>;

    /// Called at the end of every batch, and again while the stage is idle: makes records
    /// durable as the durability policy says and returns the highest sequence that is now
    /// durable (egress releases answers up to it). Time-based policies read `clock`.
    fn flush(&mut self, clock: &dyn Clock) -> Result<Sequence, StageError>;

    /// Ends a batch as [`Journal::flush`] does, but with every appended record synced whatever
    /// the policy: for a primary answering alone ([`WriteHold::answers_alone`]). Returns the
    /// highest sequence now synced. A journal whose flush always syncs keeps the default.
    fn flush_synced(&mut self, clock: &dyn Clock) -> Result<Sequence, StageError> {
        self.flush(clock)
    }

    /// Called once, when the stage stops at the stop marker with the journal whole (neither
    /// fenced nor failed): makes every record durable and records where the journal ends, so
    /// that the next start can tell damage at rest to its last record from a write a crash cut
    /// off. Nothing is appended after it. A failure here loses nothing: the next start then
    /// reads the journal as it would after a crash.
    fn close(&mut self) -> Result<(), StageError> {
        Ok(())
    }
}

/// The replicator stage: streams every command to the standby and tracks what it holds.
pub trait Replicator: Send + 'static {
    /// Whether [`Replicator::send`] reads [`Framed::bytes`] (see [`Journal::NEEDS_BYTES`]).
    const NEEDS_BYTES: bool = true;

    /// Sends (or queues) one command record for the standby: its bytes, as journaled.
    fn send(&mut self, record: &Framed<'_>) -> Result<(), StageError>;

    /// Called at the end of every batch: pushes queued records out.
    fn flush(&mut self) -> Result<(), StageError>;

    /// The highest sequence egress may release as far as replication is concerned: what the
    /// standby acknowledged in sync mode, what was sent in async mode. Advanced by whichever
    /// thread learns of it (e.g. the one reading acknowledgements).
    fn safe(&self) -> Arc<Watermark>;

    /// The hold the replicator puts on writes when it cannot make them safe (see
    /// [`WriteHold`]); `None` for a replicator that never holds.
    fn hold(&self) -> Option<Arc<WriteHold>> {
        None
    }
}

/// Called on the BLP thread after each journaled command is applied, and at each snapshot
/// request (with the sequence of the last journaled command), so snapshots are taken at exact
/// sequence boundaries without the BLP knowing about files.
pub trait SnapshotHook: Send + 'static {
    /// `engine` has just applied `command` (or, for `Command::Snapshot`, was asked for one).
    fn after_apply(&mut self, engine: &Engine, command: &Sequenced);

    /// The applying stage found nothing to apply and is about to wait: a moment for figures
    /// that need not follow every command to catch up with `engine`.
    fn idle(&mut self, _engine: &Engine) {}
}

/// A copy of journaled records a test can read while the node runs.
pub type SharedRecords = Arc<std::sync::Mutex<Vec<(Epoch, Sequenced)>>>;

/// A journal kept in memory: every record, durable as soon as appended. For tests and for a
/// node run without persistence.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    records: Vec<(Epoch, Sequenced)>,
    shared: Option<SharedRecords>,
    /// Records copied into `shared` so far.
    copied: usize,
}

impl MemoryJournal {
    /// An empty journal.
    #[must_use]
    pub fn new() -> MemoryJournal {
        MemoryJournal::default()
    }

    /// A journal that also copies each flushed batch into `shared`, so a test can read what
    /// was journaled while the node runs.
    #[must_use]
    pub fn shared(shared: SharedRecords) -> MemoryJournal {
        MemoryJournal { records: Vec::new(), shared: Some(shared), copied: 0 }
    }

    /// Records appended so far.
    #[must_use]
    pub fn records(&self) -> &[(Epoch, Sequenced)] {
        &self.records
    }
}

impl Journal for MemoryJournal {
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        let command = record.sequenced;
        if let Some((_, last)) = self.records.last() {
            assert_eq!(command.sequence, last.sequence.next(), "journal sequences are contiguous");
        }
        let (header, len) = crate::record::check(record.bytes).expect("framed bytes are a record");
        assert_eq!(
            (header.sequence, header.epoch, len),
            (command.sequence, record.epoch, record.bytes.len())
        );
        self.records.push((record.epoch, *command));
        Ok(())
    }

    fn flush(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        if let Some(shared) = &self.shared
            && self.copied < self.records.len()
        {
            let mut shared = shared.lock().expect("journal copy lock poisoned");
            assert_eq!(shared.len(), self.copied, "only this journal writes its copy");
            shared.extend_from_slice(&self.records[self.copied..]);
            self.copied = self.records.len();
        }
        Ok(self.records.last().map_or(Sequence(0), |(_, command)| command.sequence))
    }
}

/// No standby: everything is safe as far as replication is concerned.
#[derive(Debug)]
pub struct NoReplicator {
    safe: Arc<Watermark>,
}

impl Default for NoReplicator {
    fn default() -> Self {
        NoReplicator { safe: Watermark::new(Sequence(u64::MAX)) }
    }
}

impl Replicator for NoReplicator {
    const NEEDS_BYTES: bool = false;

    fn send(&mut self, _record: &Framed<'_>) -> Result<(), StageError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }

    fn safe(&self) -> Arc<Watermark> {
        Arc::clone(&self.safe)
    }
}

/// Takes no snapshots.
#[derive(Debug, Default)]
pub struct NoSnapshots;

impl SnapshotHook for NoSnapshots {
    fn after_apply(&mut self, _engine: &Engine, _command: &Sequenced) {}
}
