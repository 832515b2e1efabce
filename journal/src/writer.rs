//! The journaler stage: appends records to the current segment and makes them durable per
//! policy. It implements the pipeline's [`Journal`] trait. When it starts a segment it lists
//! it in the data directory's manifest ([`DataDir`]) between syncing the header and writing the
//! first record.

use std::time::Duration;

use ringfence_core::pipeline::{Clock, Framed, Journal, StageError, SystemClock};
use ringfence_core::record::{self, RecordBuf};
use ringfence_core::{EngineConfig, Epoch, Sequence, Sequenced};

use crate::datadir::{self, CleanStop, DataDir};
use crate::error::JournalError;
use crate::format::{self, RECORD_ALIGN, SEGMENT_HEADER_LEN, SegmentHeader};
use crate::manifest::ManifestSegment;
use crate::scan;
use crate::spare::{SPARE_NAME, SparePreparer};
use crate::storage::{Segment, Storage};

/// When appended records are made durable (synced to disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Never synced by the journal: records are in the map, so they survive a process crash,
    /// but a power loss may lose the most recent ones. Answers are released after the write.
    None,
    /// Group commit: every batch is synced before [`Journal::flush`] returns, so no answer
    /// leaves before its record is on disk.
    Batch,
    /// Synced at most every so many milliseconds, at the end of a batch. Answers are released
    /// after the write (as with `None`); a power loss may lose up to that window.
    Interval {
        /// Minimum time between syncs.
        ms: u64,
    },
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Durability, String> {
        match text {
            "none" => Ok(Durability::None),
            "batch" => Ok(Durability::Batch),
            _ => match text.strip_prefix("interval:").and_then(|ms| ms.parse().ok()) {
                Some(0) => Err(format!(
                    "durability `{text}`: at least 1 ms (a sync before every batch's answers is \
                     `batch`)"
                )),
                Some(ms) => Ok(Durability::Interval { ms }),
                None => {
                    Err(format!("unknown durability `{text}`: use none, batch or interval:<ms>"))
                }
            },
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::None => write!(f, "none"),
            Durability::Batch => write!(f, "batch"),
            Durability::Interval { ms } => write!(f, "interval:{ms}"),
        }
    }
}

/// How the writer lays out and syncs segments.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Size of each segment file; a record that does not fit starts a new segment.
    pub segment_len: u64,
    /// When records become durable.
    pub durability: Durability,
    /// The engine configuration, recorded in every segment header for replay tools.
    pub engine_config: EngineConfig,
}

impl WriterOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<(), JournalError> {
        if !(format::SEGMENT_LEN_MIN..=format::SEGMENT_LEN_MAX).contains(&self.segment_len)
            || self.segment_len % format::RECORD_ALIGN as u64 != 0
        {
            return Err(JournalError::Options(format!(
                "segment size {} must be a multiple of 16 between {} and {} bytes",
                self.segment_len,
                format::SEGMENT_LEN_MIN,
                format::SEGMENT_LEN_MAX
            )));
        }
        // What `try_append` counts on: a fresh segment holds the largest record.
        let room = self.segment_len - SEGMENT_HEADER_LEN as u64;
        assert!(room >= format::RECORD_LEN_MAX as u64, "a segment too small for a record");
        self.engine_config.validate().map_err(|e| JournalError::Options(e.to_string()))
    }
}

impl<S: Storage> JournalWriter<S> {
    /// The writer's invariants between calls: checked where it is made and after each append,
    /// sync and rotation (integer comparisons and one atomic load).
    fn verify(&self) {
        assert!(self.next.0 >= 1, "sequences start at 1");
        assert!(self.synced < self.next, "synced past the last record appended");
        assert!(self.dir.durable_sequence() >= self.synced, "durable behind what was synced");
        // No record runs ahead of the epoch file, whose epoch never goes down.
        assert!(self.last_epoch <= self.epoch_allowed, "a record ahead of the epoch allowed");
        assert!(self.epoch_allowed <= self.dir.current_epoch(), "the epoch file went back");
        let Some(open) = &self.current else { return };
        // Records from the header on, on 16-byte boundaries, synced up to a record boundary.
        assert!(open.synced_to >= SEGMENT_HEADER_LEN, "the header counted as unsynced");
        assert!(open.synced_to <= open.write_at, "synced past the write position");
        assert!(open.written_back_to <= open.write_at, "written back past the write position");
        assert!(open.write_at <= open.segment.bytes().len(), "written past the segment's end");
        // Pages are faulted in from where the writer started in the segment, never past it.
        assert!(open.prefaulted_to >= SEGMENT_HEADER_LEN, "prefaulted inside the header");
        assert!(open.prefaulted_to <= open.segment.bytes().len(), "prefaulted past the end");
        assert_eq!(open.write_at % RECORD_ALIGN, 0, "the write position off a boundary");
        assert_eq!(open.synced_to % RECORD_ALIGN, 0, "the synced position off a boundary");
    }
}

struct OpenSegment<T> {
    name: String,
    segment: T,
    /// Where the next record goes.
    write_at: usize,
    /// Everything before this offset is durable.
    synced_to: usize,
    /// Writeback has been started for everything before this offset (at least `synced_to`).
    written_back_to: usize,
    /// Everything before this offset is shown to the file's other readers
    /// ([`Segment::publish`]; at least `synced_to` counts too).
    published_to: usize,
    /// Pages before this offset have been faulted in, writable, ahead of the records.
    prefaulted_to: usize,
}

/// Under a policy that does not sync every batch, writeback of what is written is started
/// every this many bytes, so that the sync that closes a segment (and an `interval` sync)
/// finds little left to write: without it, closing a 64 MiB segment under `none` waited
/// 40–46 ms for all of it at once, on the processor's thread. As RocksDB's `bytes_per_sync`.
const WRITEBACK_EVERY: usize = 1 << 20;

/// At the end of every batch, the pages of the segment's next [`PREFAULT_LEAD`] bytes are
/// faulted in, this many at a time. A store into a page not yet faulted in costs a page fault;
/// left to the kernel, the fault that enters each new readahead window zeroes the whole window
/// (preallocated, unwritten blocks) at once: 20 ms pauses every ~200 ms on ext4 at 50 MB/s.
/// Faulted in here, the same work comes in bounded steps at a batch boundary.
const PREFAULT_STEP: usize = 128 << 10;
/// How far ahead of the write position pages are kept faulted in.
const PREFAULT_LEAD: usize = 1 << 20;

/// Appends records to segments in a data directory. Created by recovery, which positions it
/// after the last intact record (or at the start of an empty journal).
pub struct JournalWriter<S: Storage> {
    dir: DataDir<S>,
    storage: S,
    options: WriterOptions,
    /// The highest epoch a record may carry without asking the data directory again (its
    /// current epoch when last asked): records may not run ahead of the stored epoch.
    epoch_allowed: Epoch,
    current: Option<OpenSegment<S::Segment>>,
    /// Frames commands appended without a node (`append_command`).
    framing: RecordBuf,
    /// The sequence the next append must carry.
    next: Sequence,
    last_epoch: Epoch,
    synced: Sequence,
    /// The clock reading (ns) of the last sync under `interval`; `None` until the first flush.
    last_sync_ns: Option<u64>,
    /// Makes the next segment ready ahead of need, if asked to.
    spare: Option<SparePreparer<S>>,
    /// [`JournalWriter::close`] marked the journal stopped cleanly: nothing more is appended.
    closed: bool,
}

impl<S: Storage> JournalWriter<S> {
    /// A writer for a journal with no segment yet, whose first record will be `next`.
    pub(crate) fn create(
        dir: DataDir<S>,
        options: WriterOptions,
        next: Sequence,
    ) -> Result<JournalWriter<S>, JournalError> {
        options.validate()?;
        assert!(next.0 >= 1, "sequences start at 1");
        assert!(dir.manifest().segments.is_empty(), "a new journal has no segment");
        // Nothing after `next - 1` can have been reported durable: no segment exists yet.
        assert!(dir.durable_sequence().0 < next.0, "durable past a journal not yet begun");
        dir.note_durable(Sequence(next.0 - 1));
        let epoch = dir.current_epoch();
        let mut writer = JournalWriter {
            storage: dir.storage().clone(),
            epoch_allowed: epoch,
            dir,
            options,
            current: None,
            framing: RecordBuf::default(),
            next,
            last_epoch: Epoch(0),
            synced: Sequence(next.0 - 1),
            last_sync_ns: None,
            spare: None,
            closed: false,
        };
        // The first segment is made now, not at the first record: a disk that cannot hold
        // one fails the start, loudly, instead of the first write; and that write does not
        // wait for a whole segment to be allocated.
        writer.rotate(epoch, next)?;
        writer.verify();
        Ok(writer)
    }

    /// A writer continuing in segment `name` at byte `write_at`, after `last` (recovery).
    pub(crate) fn resume(
        dir: DataDir<S>,
        options: WriterOptions,
        name: &str,
        write_at: usize,
        last: Sequence,
        last_epoch: Epoch,
    ) -> Result<JournalWriter<S>, JournalError> {
        options.validate()?;
        // The segment holds `last`, or starts just after it (no record written there yet).
        let first = format::parse_segment_name(name);
        assert!(first.is_some(), "resuming in a file that is not a segment: {name}");
        assert!(first.is_some_and(|first| first <= last.next()), "resuming past a gap");
        let storage = dir.storage().clone();
        let mut segment = storage
            .open_segment(name)
            .map_err(|e| JournalError::io(format!("opening {}", storage.describe(name)), e))?;
        // A hint, like prefaulting: a map that keeps readahead still appends correctly.
        let _hint_only = segment.appending();
        // Recovery positions the writer just past the last intact record.
        assert!(write_at >= SEGMENT_HEADER_LEN, "resuming inside the segment header");
        assert!(write_at <= segment.bytes().len(), "resuming past the segment's end");
        assert_eq!(write_at % RECORD_ALIGN, 0, "resuming off a record boundary");
        // Recovery refused a journal whose last record is from an epoch the file has not reached.
        assert!(last_epoch <= dir.current_epoch(), "a record ahead of the epoch file");
        // Recovery read these records through the page cache: after a process crash under a
        // policy that does not sync every batch, some may not be on disk yet. Sync them, so the
        // durable sequence published below is true (earlier segments were synced when the
        // writer moved past them).
        // Everything after the last record is zero (recovery cleared a torn tail): the next
        // record's header is where a reader finds the end marker until it is written.
        debug_assert!(scan::last_nonzero(&segment.bytes()[write_at..]).is_none(), "bytes after");
        segment
            .sync(SEGMENT_HEADER_LEN..write_at)
            .map_err(|e| JournalError::io(format!("syncing {}", storage.describe(name)), e))?;
        let current = OpenSegment {
            name: name.to_owned(),
            segment,
            write_at,
            synced_to: write_at,
            written_back_to: write_at,
            published_to: write_at,
            prefaulted_to: write_at,
        };
        dir.note_durable(last);
        let writer = JournalWriter {
            storage,
            epoch_allowed: dir.current_epoch(),
            dir,
            options,
            current: Some(current),
            framing: RecordBuf::default(),
            next: last.next(),
            last_epoch,
            synced: last,
            last_sync_ns: None,
            spare: None,
            closed: false,
        };
        writer.verify();
        Ok(writer)
    }

    /// The sequence the next append must carry.
    #[must_use]
    pub fn next_sequence(&self) -> Sequence {
        self.next
    }

    /// The highest sequence known to be synced to disk (whatever the policy).
    #[must_use]
    pub fn synced_sequence(&self) -> Sequence {
        assert!(self.synced < self.next, "synced past the last record appended");
        self.synced
    }

    /// The highest sequence appended.
    #[must_use]
    pub fn last_appended(&self) -> Sequence {
        assert!(self.next.0 >= 1, "sequences start at 1");
        Sequence(self.next.0 - 1)
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> &WriterOptions {
        &self.options
    }

    /// The storage (for tests that inspect it).
    #[must_use]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The data directory: hand a clone to the [`crate::snapshot::Snapshotter`], or store new
    /// epochs through it.
    #[must_use]
    pub fn data_dir(&self) -> &DataDir<S> {
        &self.dir
    }
    /// Appends one framed record (`ringfence_core::record`): its bytes are copied into the
    /// segment as they are — encoded once by the stage that sequenced the command, or by the
    /// primary — so a standby's journal holds its primary's bytes. Not durable until
    /// [`JournalWriter::sync_now`] or a flush that syncs.
    pub fn try_append(&mut self, record: &Framed<'_>) -> Result<(), JournalError> {
        let sequence = record.sequenced.sequence;
        let epoch = record.epoch;
        assert_eq!(sequence, self.next, "journal sequences are contiguous");
        assert!(!self.closed, "an append after the journal was marked stopped cleanly");
        assert!(record.sequenced.command.is_mutating(), "reads are never journaled");
        assert!(
            epoch >= self.last_epoch,
            "epochs never go back: {epoch} after {}",
            self.last_epoch
        );
        // The pair of the check on reading: the bytes are the record the values describe.
        let header = record::read_header(record.bytes);
        assert_eq!((header.sequence, header.epoch), (sequence, epoch), "framed bytes disagree");
        assert_eq!(header.timestamp, record.sequenced.timestamp, "framed at another time");
        assert_eq!(record::record_len(header.payload_len), record.bytes.len());
        debug_assert!(record::check(record.bytes).is_ok(), "framed bytes fail their CRC");
        if epoch > self.epoch_allowed {
            self.epoch_allowed = self.dir.current_epoch();
            if epoch > self.epoch_allowed {
                return Err(JournalError::Options(format!(
                    "a record of epoch {epoch} cannot be journaled while the epoch file's \
                     current epoch is {}: store the new epoch first",
                    self.epoch_allowed
                )));
            }
        }
        let len = record.bytes.len();
        assert_eq!(len % RECORD_ALIGN, 0, "records are padded to 16 bytes");
        let fits = self
            .current
            .as_ref()
            .is_some_and(|open| open.write_at + len <= open.segment.bytes().len());
        if !fits {
            self.rotate(epoch, sequence)?;
        }
        let open = self.current.as_mut().expect("a segment is open after rotation");
        let at = open.write_at;
        // Where the record goes: on a record boundary, after what was synced, inside the
        // segment (a fresh segment holds the largest record: `SEGMENT_LEN_MIN`).
        assert_eq!(at % RECORD_ALIGN, 0, "a record off a 16-byte boundary");
        assert!(open.synced_to <= at, "synced past the write position");
        assert!(at + len <= open.segment.bytes().len(), "a record past the segment's end");
        open.segment.bytes_mut()[at..at + len].copy_from_slice(record.bytes);
        // The pair of the check on reading: what the segment holds is an intact record.
        debug_assert!(format::check_record(&open.segment.bytes()[at..at + len]).is_some());
        open.write_at = at + len;
        self.next = self.next.next();
        self.last_epoch = epoch;
        self.verify();
        Ok(())
    }

    /// Frames `command` as a node in `epoch` would and appends it: for tools and tests that
    /// write a journal without a node.
    pub fn append_command(
        &mut self,
        epoch: Epoch,
        command: &Sequenced,
    ) -> Result<(), JournalError> {
        let mut framing = std::mem::take(&mut self.framing);
        let bytes = framing.encode(epoch, command);
        let appended = self.try_append(&Framed { epoch, sequenced: command, bytes });
        self.framing = framing;
        assert!(appended.is_err() || self.next == command.sequence.next(), "appended elsewhere");
        appended
    }

    /// Ends a batch (or an idle spell): syncs as the policy says, measuring `interval` by
    /// `clock`, and returns the highest sequence whose answer may be released.
    pub fn try_flush(&mut self, clock: &dyn Clock) -> Result<Sequence, JournalError> {
        self.prefault_ahead();
        match self.options.durability {
            Durability::None => self.start_writeback(),
            Durability::Batch => self.sync_now()?,
            Durability::Interval { ms } => {
                let now = clock.now_ns();
                let since = *self.last_sync_ns.get_or_insert(now);
                if now.saturating_sub(since) >= ms.saturating_mul(1_000_000) {
                    self.sync_now()?;
                    self.last_sync_ns = Some(now);
                } else {
                    self.start_writeback();
                }
            }
        }
        self.publish_unsynced();
        // Under `batch`, nothing is released that is not on disk.
        let batch = self.options.durability == Durability::Batch;
        assert!(!batch || self.synced == self.last_appended(), "a batch released unsynced");
        assert!(self.dir.durable_sequence() >= self.synced, "durable behind what was synced");
        Ok(self.last_appended())
    }

    /// [`JournalWriter::try_flush`] on the system clock, as a stage error: ends a batch for
    /// tools and tests that drive the writer without a node.
    pub fn end_batch(&mut self) -> Result<Sequence, StageError> {
        self.try_flush(&SystemClock::new()).map_err(stage_error)
    }

    /// Syncs every appended record now.
    pub fn sync_now(&mut self) -> Result<(), JournalError> {
        let Some(open) = self.current.as_mut() else { return Ok(()) };
        assert!(open.synced_to <= open.write_at, "synced past the write position");
        assert!(open.write_at <= open.segment.bytes().len(), "written past the segment's end");
        if open.synced_to < open.write_at {
            let range = open.synced_to..open.write_at;
            open.segment.sync(range).map_err(|e| {
                JournalError::io(format!("syncing {}", self.storage.describe(&open.name)), e)
            })?;
            open.synced_to = open.write_at;
        }
        assert!(self.synced <= self.last_appended(), "synced sequence went back");
        self.synced = self.last_appended();
        self.dir.note_durable(self.synced);
        self.verify();
        Ok(())
    }

    /// Ends the writer's life on a clean stop: syncs every appended record, then writes the
    /// data directory's clean-stop marker ([`crate::datadir::CLEAN_STOP_FILE`]) naming where the
    /// journal ends, so the next start refuses a journal that no longer ends there (damage at
    /// rest) instead of clearing it as a crash's torn write. Nothing may be appended after.
    /// Returns `None`, marking nothing, if no segment is open (a rotation failed: the node fenced
    /// the journal, and its end is for recovery to find).
    pub fn close(&mut self) -> Result<Option<CleanStop>, JournalError> {
        assert!(!self.closed, "a journal is marked stopped cleanly once");
        if self.current.is_none() {
            return Ok(None);
        }
        self.sync_now()?;
        let open = self.current.as_ref().expect("checked above");
        let stop = CleanStop {
            last: self.last_appended(),
            segment: open.name.clone(),
            end: open.write_at as u64,
        };
        // Everything named is on disk before the mark says so.
        assert_eq!(open.synced_to, open.write_at, "marked stopped with unsynced records");
        assert_eq!(self.synced, stop.last, "marked stopped past the durable sequence");
        datadir::mark_clean_stop(&self.storage, &stop)?;
        self.closed = true;
        Ok(Some(stop))
    }

    /// Closes the current segment and starts a new one whose first record is `first`.
    ///
    /// The closed segment is synced whatever the policy, so every segment but the last is
    /// always complete on disk: after a power loss, damage can only be a torn tail in the last
    /// segment, never a hole before it (which recovery would have to refuse as corruption).
    ///
    /// The new segment is listed in the manifest only once its header is durable, and before
    /// its first record. A crash before the listing leaves an unlisted segment with nothing
    /// after its header, which recovery removes as a creation cut off; a crash after it leaves
    /// a listed, recognisable, empty segment. Either way no record can exist in a segment the
    /// manifest does not list, so a listed segment that goes missing is always noticed.
    fn rotate(&mut self, epoch: Epoch, first: Sequence) -> Result<(), JournalError> {
        assert_eq!(first, self.next, "a segment starts at the next sequence");
        // For `/metrics`: what the start costs this thread, the closing sync included.
        let started = std::time::Instant::now();
        if self.current.is_some() {
            self.sync_now()?;
        }
        // Every segment but the last is complete on disk.
        let synced = self.current.as_ref().is_none_or(|open| open.synced_to == open.write_at);
        assert!(synced, "a segment closed with unsynced records");
        let closed = self.current.take();
        let name = format::segment_name(first);
        let segment_len = self.options.segment_len;
        let spare = self.spare.as_mut().and_then(SparePreparer::take).and_then(Result::ok);
        // Its file deleted (by an operator taking it for a leftover), the spare's mapping
        // outlives its name but could not be renamed into place: made here instead.
        let spare = spare.filter(|_| self.storage.file_len(SPARE_NAME).is_ok());
        let from_spare = spare.is_some();
        if let Some(closed) = closed {
            // Unmapping a segment full of pages takes time: the helper's, if there is one.
            match self.spare.as_mut() {
                Some(preparer) => preparer.release(closed.segment),
                None => drop(closed),
            }
        }
        let mut segment = match spare {
            Some(spare) => spare,
            // Created here when there is no spare: none was asked for, or making it failed
            // (a full disk, say), in which case this fails as well and says why.
            None => self.create_segment(&name)?,
        };
        assert_eq!(segment.bytes().len() as u64, segment_len, "a segment of another length");
        // Created zero-filled: an empty segment reads as ending at its first record. (Its first
        // pages are checked: reading all of it would fault the whole segment in, which the
        // writer otherwise does only a bounded distance ahead of its records.)
        let first_pages = &segment.bytes()[..PREFAULT_LEAD.min(segment.bytes().len())];
        debug_assert!(scan::last_nonzero(first_pages).is_none(), "a new segment not zeroed");
        let header = SegmentHeader {
            first_sequence: first,
            segment_len: self.options.segment_len,
            epoch,
            config: self.options.engine_config.clone(),
        };
        format::encode_segment_header(&header, segment.bytes_mut());
        // The header is synced whatever the policy: a segment must be recognisable after a
        // crash, or recovery could not tell a torn creation from a damaged file.
        segment.sync(0..SEGMENT_HEADER_LEN).map_err(|e| {
            JournalError::io(format!("syncing {}", self.storage.describe(&name)), e)
        })?;
        if from_spare {
            self.install_spare(&name)?;
        }
        self.dir.add_segment(ManifestSegment { first, len: segment_len })?;
        // Listed before its first record (a copy of the manifest: debug builds only).
        debug_assert!(self.dir.manifest().lists(first), "a segment written before it is listed");
        self.current = Some(OpenSegment {
            name,
            segment,
            write_at: SEGMENT_HEADER_LEN,
            synced_to: SEGMENT_HEADER_LEN,
            written_back_to: SEGMENT_HEADER_LEN,
            published_to: SEGMENT_HEADER_LEN,
            // The helper faulted in a spare's first pages.
            prefaulted_to: if from_spare { self.spare_prefault() } else { SEGMENT_HEADER_LEN },
        });
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.dir.note_segment_start(ns, from_spare);
        if let Some(preparer) = self.spare.as_mut() {
            preparer.request(segment_len, PREFAULT_LEAD);
        }
        Ok(())
    }

    /// Creates segment `name` on this thread.
    fn create_segment(&self, name: &str) -> Result<S::Segment, JournalError> {
        assert!(self.current.is_none(), "a segment created while one is open");
        let mut segment =
            self.storage.create_segment(name, self.options.segment_len).map_err(|e| {
                JournalError::io(format!("creating {}", self.storage.describe(name)), e)
            })?;
        let _hint_only = segment.appending();
        assert_eq!(segment.bytes().len() as u64, self.options.segment_len, "created short");
        Ok(segment)
    }

    /// Gives the spare, its header synced, the segment's `name`, durably: the manifest must
    /// never name a file whose rename a power loss could undo.
    fn install_spare(&self, name: &str) -> Result<(), JournalError> {
        let describe = |file: &str| self.storage.describe(file);
        // A rename replaces its target; a segment of that name, if one were there, must stay.
        if self.storage.file_len(name).is_ok() {
            let exists = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
            return Err(JournalError::io(format!("creating {}", describe(name)), exists));
        }
        assert!(format::parse_segment_name(name).is_some(), "a spare named as no segment");
        self.storage.rename(SPARE_NAME, name).map_err(|e| {
            JournalError::io(format!("renaming {} to {}", describe(SPARE_NAME), describe(name)), e)
        })?;
        crate::datadir::sync_dir(&self.storage)?;
        // In place under its name, whole (a stat; once a segment).
        let len = self.storage.file_len(name).ok();
        assert_eq!(len, Some(self.options.segment_len), "the spare is not in place: {name}");
        assert!(self.storage.file_len(SPARE_NAME).is_err(), "the spare is still there: {name}");
        Ok(())
    }

    /// Where the helper's prefault of a spare ends.
    fn spare_prefault(&self) -> usize {
        let len = usize::try_from(self.options.segment_len).unwrap_or(usize::MAX);
        let to = PREFAULT_LEAD.min(len);
        // Past the header: a segment holds more than its header (`WriterOptions::validate`).
        assert!(to > SEGMENT_HEADER_LEN, "a spare faulted in no further than its header");
        to
    }

    /// Has the next segment made ready on a helper thread while records go into this one:
    /// starting a segment then costs its header, a rename and the manifest, not the file's
    /// creation, allocation and mapping, and unmapping the segment moved past is the helper's
    /// too. The data directory then holds one more allocated segment than the journal, named
    /// [`SPARE_NAME`]. Without it (the default, which tests that count sync points rely on),
    /// every segment is created when the first record that needs it arrives.
    ///
    /// The helper also watches the disk: every `check_every` (`serve`:
    /// [`crate::spare::DISK_CHECK_EVERY`]) it retries a spare it could not make and reads the
    /// free space ([`DataDir::disk_room`]), warning when it runs low.
    pub fn prepare_segments_ahead(&mut self, check_every: Duration) -> Result<(), JournalError> {
        if self.spare.is_some() {
            return Ok(());
        }
        let mut preparer = SparePreparer::start(self.dir.clone(), check_every)
            .map_err(|e| JournalError::io("starting the spare segment's helper thread", e))?;
        // A writer always has a segment open: the spare is the one after it.
        assert!(self.current.is_some(), "a spare asked for before the first segment");
        preparer.request(self.options.segment_len, PREFAULT_LEAD);
        self.spare = Some(preparer);
        Ok(())
    }

    /// Keeps the pages of the next [`PREFAULT_LEAD`] bytes faulted in, in steps of
    /// [`PREFAULT_STEP`]. A hint, like writeback: a failure (an older kernel) leaves the pages
    /// to fault one at a time as records reach them.
    fn prefault_ahead(&mut self) {
        let Some(open) = self.current.as_mut() else { return };
        let end = open.segment.bytes().len();
        let from = open.prefaulted_to.max(open.write_at);
        if from >= end || from - open.write_at >= PREFAULT_LEAD {
            return;
        }
        let to = (from + PREFAULT_STEP).min(end);
        let _hint_only = open.segment.prefault(from..to);
        open.prefaulted_to = to;
        // Never past the segment, and now at least a step ahead of the records (or at its end).
        assert!(open.prefaulted_to <= end, "prefaulted past the segment's end");
        assert!(open.prefaulted_to > open.write_at, "prefaulted behind the write position");
    }

    /// Shows the records appended and not synced to the file's other readers (a tail
    /// streaming to a standby), as the page cache does: released answers under `none` and
    /// `interval` do not wait for a sync, and neither does their replication.
    fn publish_unsynced(&mut self) {
        let Some(open) = self.current.as_mut() else { return };
        let from = open.published_to.max(open.synced_to);
        assert!(from <= open.write_at, "published past the write position");
        if from < open.write_at {
            open.segment.publish(from..open.write_at);
            open.published_to = open.write_at;
        }
    }

    /// Starts writeback of what was written since it was last started, once that is at least
    /// [`WRITEBACK_EVERY`] bytes. Makes nothing durable, and a failure to start it fails
    /// nothing: it is a hint (a file system may not take it), and a disk that cannot write
    /// fails the sync that follows, which reports it.
    fn start_writeback(&mut self) {
        let Some(open) = self.current.as_mut() else { return };
        let from = open.written_back_to.max(open.synced_to);
        assert!(from <= open.write_at, "writeback started past the write position");
        if open.write_at - from < WRITEBACK_EVERY {
            return;
        }
        let _hint_only = open.segment.start_writeback(from..open.write_at);
        open.written_back_to = open.write_at;
        assert!(open.written_back_to <= open.segment.bytes().len(), "written back past the end");
    }
}

impl<S: Storage> Journal for JournalWriter<S> {
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        self.try_append(record).map_err(stage_error)
    }

    fn flush(&mut self, clock: &dyn Clock) -> Result<Sequence, StageError> {
        self.try_flush(clock).map_err(stage_error)
    }

    fn flush_synced(&mut self, clock: &dyn Clock) -> Result<Sequence, StageError> {
        self.sync_now().map_err(stage_error)?;
        assert_eq!(self.synced, self.last_appended(), "a sync stopped short of the appended");
        let flushed = self.try_flush(clock).map_err(stage_error)?;
        assert_eq!(self.synced, flushed, "a synced flush left records unsynced");
        Ok(flushed)
    }

    fn close(&mut self) -> Result<(), StageError> {
        JournalWriter::close(self).map(drop).map_err(stage_error)
    }
}

fn stage_error(error: JournalError) -> StageError {
    match error {
        JournalError::Io { context, source } => StageError::Io { context, source },
        other => StageError::Fatal(other.to_string()),
    }
}
