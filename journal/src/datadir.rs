//! The data directory as one thing: its storage, manifest and epochs, shared by the journal
//! writer, the snapshot writer and retention; and the check of a directory against its
//! manifest that recovery and the tools run before reading a record.
//!
//! [`DataDir`] is the only writer of the manifest and the epoch file. Its clones share one
//! in-memory copy of both behind a mutex, so the journal writer (adding a segment when it
//! rotates) and the snapshot writer (retiring segments) never write the manifest over each
//! other's change: each rewrite starts from the copy the other left.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ringfence_core::{Epoch, Sequence};

use crate::epoch::{EPOCH_FILE, EpochProblem, Epochs};
use crate::error::JournalError;
use crate::format::{self, HeaderProblem, SEGMENT_HEADER_LEN, SEGMENT_LEN_MIN};
use crate::manifest::{
    MANIFEST_FILE, MANIFEST_VERSION, Manifest, ManifestProblem, ManifestSegment,
};
use crate::scan::ReadSource;
use crate::snapshot;
use crate::storage::{Retired, Storage, is_temp_name, write_atomically};

/// Present while the directory may lack records it once acknowledged: created with a new
/// directory and by every truncation (an operator's `journal truncate`, a dropped diverged
/// tail, a snapshot that replaces the journal), removed once the node caught up with a
/// primary, or became one. While it is present, an in-sync record naming this node does not
/// let it take over: the record was written when the node held every acknowledged write, and
/// it may not any more.
pub const CATCH_UP_FILE: &str = "catch-up";

/// The machine boot in which a node last stood for the leader key from this directory (Linux's
/// `boot_id`). A node whose journal answers before it syncs tells from it whether the page
/// cache, and with it records it may have acknowledged, could have been lost since: a kill
/// keeps what was written, a power loss or a reboot does not.
pub const BOOT_FILE: &str = "boot";

/// Present while a standby has been in sync with this node as primary (every answer waited
/// for it): a primary that restarts holds writes until that standby is back in sync, since
/// the standby may have been promoted meanwhile. Removed when the primary goes on alone with
/// the witness's (or the operator's, through `async`) consent, or is promoted anew.
pub const IN_SYNC_FILE: &str = "standby-in-sync";

/// Present while this node, as a standby, acknowledges records once they are written, before
/// its journal syncs them (durability `none` or `interval`): a power loss may take records it
/// acknowledged. Written before the first acknowledgement of a stream, removed when the node
/// takes office as primary. A node that finds it after its machine restarted marks the
/// directory catching up ([`CATCH_UP_FILE`]).
pub const ACKS_WRITTEN_FILE: &str = "standby-acknowledges-written";

/// What the acknowledged-when-written marker says to an operator who finds it.
const ACKS_WRITTEN_TEXT: &[u8] = b"This node, as a standby, acknowledges records once written, \
before its journal syncs them: after a power loss it may lack records it acknowledged, and \
it takes over only after catching up with a primary.\n";

/// What the in-sync marker says to an operator who finds it.
const IN_SYNC_TEXT: &[u8] = b"A standby was in sync with this node as primary: restarted \
as primary, it holds writes until that standby is back in sync. To let it acknowledge alone \
(losing what the standby holds if it was promoted), switch replication to async.\n";

/// What the marker says to an operator who finds it.
const CATCH_UP_TEXT: &[u8] = b"This data directory may lack records it once acknowledged \
(it was created or truncated since). The node takes over as primary only after it has caught \
up with one. To let it take over anyway, accepting the loss of what it lacks, stop it and \
delete this file.\n";

/// Present while a truncation runs, naming where it cuts: written durably before its first
/// change and removed after its last. A truncation changes segments, snapshots and the
/// manifest in steps that are not atomic together, so a crash part way can leave a manifest
/// listing a segment already removed; recovery finishes a truncation it finds under way before
/// it reads anything else.
pub const TRUNCATING_FILE: &str = "truncating";

/// Writes the truncation marker durably: the sequence, then a line for the operator.
pub(crate) fn mark_truncating<S: Storage>(storage: &S, at: Sequence) -> Result<(), JournalError> {
    assert!(at.0 >= 1, "sequences start at 1");
    let text = format!(
        "{}\nA truncation of this journal at sequence {} was under way; the node's next start \
         finishes it.\n",
        at.0, at.0
    );
    write_atomically(storage, TRUNCATING_FILE, text.as_bytes())?;
    // The pair of the reading below: it names the same sequence.
    debug_assert_eq!(truncating(storage).ok().flatten(), Some(at), "an unreadable marker");
    Ok(())
}

/// Where a truncation under way cuts, if one is.
pub(crate) fn truncating<S: Storage>(storage: &S) -> Result<Option<Sequence>, JournalError> {
    if storage.file_len(TRUNCATING_FILE).is_err() {
        return Ok(None);
    }
    let file = storage.describe(TRUNCATING_FILE);
    match truncation_under_way(storage) {
        Some(at) => Ok(Some(at)),
        None => Err(JournalError::Options(format!(
            "{file} does not name the sequence of the truncation under way; run `ringfence \
             journal truncate` again at the sequence you chose"
        ))),
    }
}

/// Where a truncation cut off part way will cut, as the read-only tools report it: `None`
/// without a marker, or with one that names no sequence (which recovery refuses).
pub fn truncation_under_way<R: ReadSource>(source: &R) -> Option<Sequence> {
    marker_sequence(&source.read_file(TRUNCATING_FILE).ok()?)
}

/// The sequence a marker file names on its first line (the truncation and rebuild markers),
/// or `None` if the line is not a sequence of 1 or more.
pub(crate) fn marker_sequence(bytes: &[u8]) -> Option<Sequence> {
    let line = std::str::from_utf8(bytes).ok()?.lines().next()?;
    line.parse::<u64>().ok().filter(|&at| at >= 1).map(Sequence)
}

/// Removes the truncation marker, durably: the truncation is complete.
pub(crate) fn truncation_done<S: Storage>(storage: &S) -> Result<(), JournalError> {
    let file = storage.describe(TRUNCATING_FILE);
    storage.remove(TRUNCATING_FILE).map_err(|e| JournalError::io(format!("removing {file}"), e))?;
    sync_dir(storage)?;
    assert!(storage.file_len(TRUNCATING_FILE).is_err(), "the marker is still there");
    Ok(())
}

/// Present while the node is stopped after a clean shutdown, naming where its journal ends:
/// written durably by the journal writer once its last record is synced
/// ([`crate::writer::JournalWriter::close`]), removed by the next start before anything is
/// appended, and by every truncation. A crash leaves no mark, and then a last record that
/// fails its checks is a write the crash cut off, never acknowledged. With the mark, the same
/// bytes are damage at rest to an acknowledged record, and recovery refuses them; so it does
/// a journal that ends earlier than the mark says.
pub const CLEAN_STOP_FILE: &str = "stopped-cleanly";

/// Where the journal ended when the node last stopped cleanly ([`CLEAN_STOP_FILE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanStop {
    /// The last record's sequence (the one before the newest segment's first if that segment
    /// holds no record).
    pub last: Sequence,
    /// The newest segment.
    pub segment: String,
    /// The byte offset in it where its records end.
    pub end: u64,
}

impl CleanStop {
    /// The marker's text: `last segment end` on the first line, then a line for the operator.
    fn encode(&self) -> String {
        // What `decode` accepts: the writer's position, on a record boundary past the header.
        assert!(self.end >= SEGMENT_HEADER_LEN as u64, "a clean stop inside a segment header");
        assert_eq!(self.end % format::RECORD_ALIGN as u64, 0, "a clean stop off a boundary");
        format!(
            "{} {} {}\nThe node stopped cleanly with its journal ending at sequence {}; its next \
             start checks that the journal still ends there.\n",
            self.last.0, self.segment, self.end, self.last.0
        )
    }

    /// The marker read back; `None` if its first line is not what [`CleanStop::encode`] writes.
    fn decode(bytes: &[u8]) -> Option<CleanStop> {
        let line = std::str::from_utf8(bytes).ok()?.lines().next()?;
        let mut fields = line.split(' ');
        let last = Sequence(fields.next()?.parse().ok()?);
        let segment = fields.next()?.to_owned();
        let end: u64 = fields.next()?.parse().ok()?;
        let first = format::parse_segment_name(&segment)?;
        let fits = fields.next().is_none()
            && first.0 >= 1
            && last.0.saturating_add(1) >= first.0
            && end >= SEGMENT_HEADER_LEN as u64
            && end % format::RECORD_ALIGN as u64 == 0;
        fits.then_some(CleanStop { last, segment, end })
    }
}

/// Writes the clean-stop marker durably.
pub(crate) fn mark_clean_stop<S: Storage>(
    storage: &S,
    stop: &CleanStop,
) -> Result<(), JournalError> {
    // The newest segment holds the last record, or starts just after it.
    let first = format::parse_segment_name(&stop.segment);
    assert!(first.is_some_and(|first| first <= stop.last.next()), "a segment past the end");
    write_atomically(storage, CLEAN_STOP_FILE, stop.encode().as_bytes())?;
    // The pair of the reading below: it names the same place.
    debug_assert_eq!(clean_stop(storage).ok().flatten().as_ref(), Some(stop), "unreadable");
    Ok(())
}

/// Where the journal ended at the last clean stop, if the marker is there; an error naming the
/// file if it is there but unreadable (a node refuses to guess).
pub fn clean_stop<R: ReadSource>(source: &R) -> Result<Option<CleanStop>, JournalError> {
    let bytes = match source.read_file(CLEAN_STOP_FILE) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            let file = source.describe_file(CLEAN_STOP_FILE);
            return Err(JournalError::io(format!("reading {file}"), e));
        }
    };
    match CleanStop::decode(&bytes) {
        Some(stop) => Ok(Some(stop)),
        None => {
            Err(JournalError::CleanStopUnreadable { file: source.describe_file(CLEAN_STOP_FILE) })
        }
    }
}

/// Removes the clean-stop marker durably, if it is there: the journal is about to change.
pub(crate) fn clean_stop_cleared<S: Storage>(storage: &S) -> Result<(), JournalError> {
    if storage.file_len(CLEAN_STOP_FILE).is_err() {
        return Ok(());
    }
    let file = storage.describe(CLEAN_STOP_FILE);
    storage.remove(CLEAN_STOP_FILE).map_err(|e| JournalError::io(format!("removing {file}"), e))?;
    sync_dir(storage)?;
    assert!(storage.file_len(CLEAN_STOP_FILE).is_err(), "the marker is still there");
    Ok(())
}

/// Writes the catch-up marker durably.
pub(crate) fn mark_catching_up<S: Storage>(storage: &S) -> Result<(), JournalError> {
    write_atomically(storage, CATCH_UP_FILE, CATCH_UP_TEXT)?;
    // The pair of the check on opening: the marker is there, whole.
    debug_assert_eq!(storage.read_file(CATCH_UP_FILE).ok().as_deref(), Some(CATCH_UP_TEXT));
    Ok(())
}

/// The admin token `serve` generates when the operator chose none, or the one an operator put
/// there for it to use.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The subdirectory keeping, for the operator to reconcile, records dropped from the journal
/// (by `journal truncate`, or a standby's rejoin).
pub const ROLLBACK_DIR: &str = "rollback";

/// The directory `fsck` keeps at a file system's root: a data directory may be a mount point.
pub const LOST_AND_FOUND_DIR: &str = "lost+found";

/// The entries of a directory without a journal that a refusal names; the rest are counted.
pub const FOREIGN_NAMED_MAX: usize = 5;

/// The files a node names for what they are, beside its segments and snapshots.
const OWN_FILES: [&str; 11] = [
    MANIFEST_FILE,
    EPOCH_FILE,
    crate::lock::LOCK_FILE,
    ADMIN_TOKEN_FILE,
    CATCH_UP_FILE,
    BOOT_FILE,
    IN_SYNC_FILE,
    ACKS_WRITTEN_FILE,
    TRUNCATING_FILE,
    CLEAN_STOP_FILE,
    crate::rebuild::REBUILDING_FILE,
];

/// Whether `entry`, as [`Storage::list_entries`] names it (a subdirectory with a trailing
/// `/`), is one a node keeps in its data directory: its segments and snapshots, those set
/// aside, the manifest, epoch file, lock, admin token and markers, the temporaries they are
/// written under, `rollback/`, and a file system's `lost+found/`. Anything else is someone
/// else's, and a node makes no new journal beside it ([`foreign_entries`]).
#[must_use]
pub fn is_own_entry(entry: &str) -> bool {
    let name = entry.strip_suffix('/').unwrap_or(entry);
    assert!(!name.is_empty() && !name.contains('/'), "not the name of an entry: {entry}");
    match entry.strip_suffix('/') {
        Some(dir) => dir == ROLLBACK_DIR || dir == LOST_AND_FOUND_DIR,
        None => is_own_file(entry) || is_own_temporary(entry),
    }
}

/// Whether `name` is one of the files a node keeps, under its own name.
fn is_own_file(name: &str) -> bool {
    assert!(!name.ends_with('/'), "a subdirectory judged as a file: {name}");
    let is_snapshot = |name: &str| snapshot::parse_snapshot_name(name).is_some();
    let journal_file = |name: &str| format::parse_segment_name(name).is_some() || is_snapshot(name);
    // A rebuild sets segments and snapshots aside; a truncation, snapshots only.
    let superseded = name.strip_suffix(crate::rebuild::SUPERSEDED_SUFFIX);
    let stale = name.strip_suffix(snapshot::STALE_SUFFIX);
    OWN_FILES.contains(&name)
        || journal_file(name)
        || superseded.is_some_and(journal_file)
        || stale.is_some_and(is_snapshot)
}

/// Whether `name` is a temporary a node writes one of its files under: `.<own file>.tmp`
/// ([`crate::storage::temp_name`]), the spare segment, or `.admin.token.<pid>.tmp` (`serve`
/// writes its token so). Recovery removes these, and only these, as a crash's leftovers.
#[must_use]
pub fn is_own_temporary(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|name| name.strip_suffix(".tmp")) else {
        return false;
    };
    let pid = inner.strip_prefix(ADMIN_TOKEN_FILE).and_then(|rest| rest.strip_prefix('.'));
    let token = pid.is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
    let own = name == crate::spare::SPARE_NAME || is_own_file(inner) || token;
    // Every temporary of a node's is one recovery may remove.
    assert!(!own || is_temp_name(name), "a temporary recovery would not remove: {name}");
    own
}

/// `foreign` entries for an operator, naming the first [`FOREIGN_NAMED_MAX`]: "2 entries that
/// ringfence did not put there (notes.txt, photos/)".
#[must_use]
pub fn foreign_named(foreign: &[String]) -> String {
    assert!(!foreign.is_empty(), "no entry to name");
    let named = &foreign[..foreign.len().min(FOREIGN_NAMED_MAX)];
    let text = crate::error::entries_named(named, foreign.len());
    // The operator reads at least the first name.
    assert!(text.contains(foreign[0].as_str()), "the first entry unnamed: {text}");
    text
}

/// The entries of the directory that are not a node's ([`is_own_entry`]), sorted. A directory
/// with no journal yet is made a data directory only when there are none: a mistyped path (a
/// home directory, another service's mount point) is refused, not filled with a journal.
pub fn foreign_entries<S: Storage>(storage: &S) -> Result<Vec<String>, JournalError> {
    let listing = |e| JournalError::io(format!("listing {}", storage.describe("")), e);
    let mut foreign = storage.list_entries().map_err(listing)?;
    foreign.retain(|entry| !is_own_entry(entry));
    foreign.sort_unstable();
    debug_assert!(foreign.windows(2).all(|pair| pair[0] < pair[1]), "an entry listed twice");
    Ok(foreign)
}

/// The data directory: storage, plus the manifest and epochs in force. Cheap to clone; clones
/// share everything.
pub struct DataDir<S: Storage> {
    storage: S,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// The current epoch, readable without the lock (the writer checks it per append).
    current_epoch: AtomicU64,
    /// The highest journal sequence known to be on disk, published by the writer whenever it
    /// syncs: retention trusts only snapshots the journal has durably reached.
    durable_sequence: AtomicU64,
    /// Segments the writer started, how many were spares, and what the starts cost it.
    segment_starts: [AtomicU64; 4],
    /// Spares the helper could not make.
    spares_failed: AtomicU64,
    /// Free bytes on the directory's file system at the spare helper's last look, the
    /// journal's segment length and the newest snapshot's size then; `u64::MAX`, 0 and 0 until
    /// it has looked.
    disk_room: [AtomicU64; 3],
}

/// Free space on the data directory's file system, as the spare segment's helper thread last
/// saw it (it looks every [`crate::spare::DISK_CHECK_EVERY`] and after making each spare).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskRoom {
    /// Bytes free for the node.
    pub free_bytes: u64,
    /// The journal's segment length.
    pub segment_len: u64,
    /// The newest snapshot's size (0 without one): about what the next one takes.
    pub snapshot_len: u64,
}

impl DiskRoom {
    /// Whether the free space is short of what the node will soon write: the next snapshot
    /// (about as large as the newest) and [`crate::spare::LOW_DISK_SEGMENTS`] more segments.
    #[must_use]
    pub fn low(&self) -> bool {
        assert!(self.segment_len > 0, "room counted in segments of no length");
        let segments = crate::spare::LOW_DISK_SEGMENTS.saturating_mul(self.segment_len);
        self.free_bytes < segments.saturating_add(self.snapshot_len)
    }

    /// Name, help and value of each gauge, for Prometheus text.
    #[must_use]
    pub fn gauges(&self) -> [(&'static str, &'static str, u64); 3] {
        assert!(self.segment_len > 0, "room counted in segments of no length");
        assert_ne!(self.free_bytes, u64::MAX, "the marker of space not yet read, shown as free");
        [
            (
                "ringfence_data_dir_free_bytes",
                "Bytes free on the data directory's file system (checked every few seconds).",
                self.free_bytes,
            ),
            (
                "ringfence_data_dir_free_segments",
                "Journal segments the free space holds.",
                self.free_bytes / self.segment_len,
            ),
            (
                "ringfence_data_dir_low_space",
                "1 while the free space is short of the next snapshot (as large as the newest) \
                 and 4 journal segments; logged when it starts and ends.",
                u64::from(self.low()),
            ),
        ]
    }
}

/// Segments started by the journal writer and what starting them cost its thread (the time
/// from the record that did not fit to the new segment listed). For `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStarts {
    /// Segments started since the directory was opened.
    pub started: u64,
    /// Of those, spares made ready ahead (`JournalWriter::prepare_segments_ahead`).
    pub from_spare: u64,
    /// The last start's cost, in nanoseconds.
    pub ns_last: u64,
    /// The costliest start's, in nanoseconds.
    pub ns_max: u64,
    /// Spares the helper could not make (a full disk, say): each is logged when it happens.
    pub spares_failed: u64,
}

impl SegmentStarts {
    /// Name, help and value of each, for Prometheus text.
    #[must_use]
    pub fn counters(&self) -> [(&'static str, &'static str, f64); 5] {
        assert!(self.from_spare <= self.started, "more spares used than segments started");
        assert!(self.ns_last <= self.ns_max, "the last segment start above the costliest");
        let seconds = |ns: u64| ns as f64 / 1e9;
        [
            (
                "ringfence_journal_segments_started_total",
                "Journal segments started since the node started.",
                self.started as f64,
            ),
            (
                "ringfence_journal_segments_from_spare_total",
                "Of those, segments made ready ahead on the helper thread.",
                self.from_spare as f64,
            ),
            (
                "ringfence_journal_spares_failed_total",
                "Next segments the helper thread could not make ready (a full disk, say).",
                self.spares_failed as f64,
            ),
            (
                "ringfence_journal_segment_start_seconds_last",
                "What the last segment start cost the journaling thread.",
                seconds(self.ns_last),
            ),
            (
                "ringfence_journal_segment_start_seconds_max",
                "What the costliest segment start cost the journaling thread.",
                seconds(self.ns_max),
            ),
        ]
    }
}

struct State {
    manifest: Manifest,
    epochs: Epochs,
    /// The catch-up marker is present.
    catching_up: bool,
    /// A directory sync failed after a change to the epoch file or a marker was made: the
    /// change is in force (a restart may find it) but may not be durable. The next change
    /// syncs the directory first ([`DataDir::settle`]), and until then the journal takes no
    /// record of a current epoch raised by it.
    unsettled: bool,
}

impl<S: Storage> Clone for DataDir<S> {
    fn clone(&self) -> Self {
        DataDir { storage: self.storage.clone(), shared: Arc::clone(&self.shared) }
    }
}

impl<S: Storage> DataDir<S> {
    /// A handle on a directory whose manifest and epoch file hold `manifest` and `epochs`.
    pub(crate) fn new(storage: S, manifest: Manifest, epochs: Epochs) -> DataDir<S> {
        assert!(epochs.problem().is_none());
        // Decoded or new: what `Manifest::decode` accepts.
        assert!(manifest.generation >= 1, "manifest generations start at 1");
        debug_assert!(manifest.segments.windows(2).all(|pair| pair[0].first < pair[1].first));
        let catching_up = storage.file_len(CATCH_UP_FILE).is_ok();
        let shared = Shared {
            state: Mutex::new(State { manifest, epochs, catching_up, unsettled: false }),
            current_epoch: AtomicU64::new(epochs.current.0),
            durable_sequence: AtomicU64::new(0),
            segment_starts: Default::default(),
            spares_failed: AtomicU64::new(0),
            disk_room: [AtomicU64::new(u64::MAX), AtomicU64::new(0), AtomicU64::new(0)],
        };
        let dir = DataDir { storage, shared: Arc::new(shared) };
        dir.verify(&dir.state());
        dir
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("data directory state lock")
    }

    /// The shared state's invariants, checked under its lock after every change.
    fn verify(&self, state: &State) {
        assert!(state.epochs.problem().is_none(), "epochs in force that could not be stored");
        // Readers of the lock-free copy see the epoch in force, once it is durable.
        let current = self.shared.current_epoch.load(Ordering::Acquire);
        let settled = current == state.epochs.current.0;
        assert!(settled || state.unsettled && current < state.epochs.current.0, "a stale copy");
        assert!(state.manifest.generation >= 1, "manifest generations start at 1");
        let sorted = state.manifest.segments.windows(2).all(|pair| pair[0].first < pair[1].first);
        debug_assert!(sorted, "the manifest in force is out of sequence order");
    }

    /// The storage.
    #[must_use]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// A copy of the manifest in force.
    #[must_use]
    pub fn manifest(&self) -> Manifest {
        self.state().manifest.clone()
    }

    /// The epochs in force.
    #[must_use]
    pub fn epochs(&self) -> Epochs {
        let epochs = self.state().epochs;
        assert!(epochs.problem().is_none(), "epochs in force that could not be stored");
        epochs
    }

    /// The current epoch (records may carry it or a lower one).
    #[must_use]
    pub fn current_epoch(&self) -> Epoch {
        let epoch = Epoch(self.shared.current_epoch.load(Ordering::Acquire));
        assert!(epoch.0 >= 1, "epochs start at 1");
        epoch
    }

    /// The highest journal sequence known to be durable (0 before the writer said).
    #[must_use]
    pub fn durable_sequence(&self) -> Sequence {
        Sequence(self.shared.durable_sequence.load(Ordering::Acquire))
    }

    /// Segments the writer started and what the starts cost it.
    #[must_use]
    pub fn segment_starts(&self) -> SegmentStarts {
        let [started, from_spare, ns_last, ns_max] =
            self.shared.segment_starts.each_ref().map(|counter| counter.load(Ordering::Relaxed));
        // Read while the writer may be between its stores: each figure is one of its values,
        // put in agreement with the others.
        let from_spare = from_spare.min(started);
        let spares_failed = self.shared.spares_failed.load(Ordering::Relaxed);
        SegmentStarts { started, from_spare, ns_last, ns_max: ns_max.max(ns_last), spares_failed }
    }

    /// The free space the spare helper last saw, once it has looked.
    #[must_use]
    pub fn disk_room(&self) -> Option<DiskRoom> {
        // The free bytes first: their store releases the length stored before them.
        let free_bytes = self.shared.disk_room[0].load(Ordering::Acquire);
        let segment_len = self.shared.disk_room[1].load(Ordering::Relaxed);
        let snapshot_len = self.shared.disk_room[2].load(Ordering::Relaxed);
        // The pair of the check as it is stored: a length is a segment's, or not yet stored.
        assert!(segment_len == 0 || segment_len >= SEGMENT_LEN_MIN, "a stored segment length");
        let room = DiskRoom { free_bytes, segment_len, snapshot_len };
        (segment_len > 0 && free_bytes != u64::MAX).then_some(room)
    }

    /// Records the free space the spare helper saw, for segments of `segment_len` bytes.
    pub(crate) fn note_disk_room(&self, room: DiskRoom) {
        assert!(room.segment_len >= SEGMENT_LEN_MIN, "room counted in segments below the minimum");
        let [free_bytes, segment_len, snapshot_len] = &self.shared.disk_room;
        // The lengths first: a reader that sees the free bytes sees lengths with them.
        segment_len.store(room.segment_len, Ordering::Relaxed);
        snapshot_len.store(room.snapshot_len, Ordering::Relaxed);
        // u64::MAX marks space not yet read (no file system has that much).
        assert_ne!(room.free_bytes, u64::MAX, "free space of u64::MAX bytes");
        free_bytes.store(room.free_bytes, Ordering::Release);
    }

    /// Records a spare the helper could not make.
    pub(crate) fn note_spare_failed(&self) {
        let before = self.shared.spares_failed.fetch_add(1, Ordering::Relaxed);
        assert!(before < u64::MAX, "failed spares overflowed");
    }

    /// Records a segment the writer started, in `ns`, from a spare or not.
    pub(crate) fn note_segment_start(&self, ns: u64, from_spare: bool) {
        let [started, spares, last, max] = &self.shared.segment_starts;
        let before = started.fetch_add(1, Ordering::Relaxed);
        assert!(before < u64::MAX, "segment starts overflowed");
        let spares_before = spares.fetch_add(u64::from(from_spare), Ordering::Relaxed);
        // One writer counts: never more spares than starts.
        assert!(spares_before <= before, "more spares used than segments started");
        last.store(ns, Ordering::Relaxed);
        max.fetch_max(ns, Ordering::Relaxed);
    }

    /// Records that every journal record up to `sequence` is durable (the writer, after a sync).
    pub(crate) fn note_durable(&self, sequence: Sequence) {
        let before = self.shared.durable_sequence.fetch_max(sequence.0, Ordering::AcqRel);
        // One writer reports, in order: what it once called durable it never takes back.
        assert!(before <= sequence.0, "the durable sequence reported went back");
    }

    /// Stores a new (current, promised) pair durably before returning. Neither may go down,
    /// and the promise may not be below the current epoch: a node that promised an epoch, or
    /// wrote records in one, never takes that back. After an error the new epochs are in
    /// force if the file may hold them (only the directory's sync failed), the old ones if
    /// not; the journal takes records of the new current epoch only once they are durable,
    /// which storing them again (or any other change) makes them (`DataDir::settle`).
    /// Storing the epochs in force changes nothing, but settles them.
    pub fn store_epochs(&self, epochs: Epochs) -> Result<(), JournalError> {
        let mut state = self.state();
        let old = state.epochs;
        let refusal = epochs.problem().or_else(|| {
            (epochs.current < old.current || epochs.promised < old.promised).then(|| {
                format!(
                    "epochs never go down (now current {}, promised {})",
                    old.current, old.promised
                )
            })
        });
        if let Some(reason) = refusal {
            return Err(JournalError::Options(format!(
                "cannot store current epoch {}, promised {}: {reason}",
                epochs.current, epochs.promised
            )));
        }
        self.settle(&mut state)?;
        if epochs == state.epochs {
            return Ok(());
        }
        if let Err(error) = write_epochs(&self.storage, epochs) {
            // A step after the rename may have failed (the directory's sync): the file then
            // holds the new epochs, and a restart would take them. What is in force is never
            // below what the file may hold, so a caller sees them stored, and failed.
            let on_disk = self.storage.read_file(EPOCH_FILE).ok();
            if on_disk.is_some_and(|bytes| Epochs::decode(&bytes) == Ok(epochs)) {
                state.epochs = epochs;
                state.unsettled = true;
                self.verify(&state);
            }
            assert!(state.epochs == old || state.epochs == epochs, "the old epochs or the new");
            return Err(error);
        }
        // Never lowered, promise at least the current epoch: what was refused above.
        assert!(epochs.current >= old.current, "the current epoch went down");
        assert!(epochs.promised >= old.promised, "a promise was taken back");
        assert!(epochs.promised >= epochs.current, "a promise below the current epoch");
        state.epochs = epochs;
        self.shared.current_epoch.store(epochs.current.0, Ordering::Release);
        self.verify(&state);
        Ok(())
    }

    /// Makes durable a change a failed directory sync left in doubt, if one did (`unsettled`):
    /// syncs the directory, and lets the journal take records of the current epoch in force.
    fn settle(&self, state: &mut State) -> Result<(), JournalError> {
        if !state.unsettled {
            return Ok(());
        }
        let copy = self.shared.current_epoch.load(Ordering::Acquire);
        assert!(copy <= state.epochs.current.0, "the journal ran ahead of the epochs in force");
        sync_dir(&self.storage)?;
        state.unsettled = false;
        self.shared.current_epoch.store(state.epochs.current.0, Ordering::Release);
        self.verify(state);
        Ok(())
    }

    /// Whether the directory may lack records it once acknowledged ([`CATCH_UP_FILE`]).
    #[must_use]
    pub fn catching_up(&self) -> bool {
        self.state().catching_up
    }

    /// Records that the node runs in machine boot `boot` ([`BOOT_FILE`]); returns whether the
    /// directory was last used in another boot, or never recorded one.
    pub fn note_boot(&self, boot: &str) -> Result<bool, JournalError> {
        assert!(!boot.is_empty(), "an empty boot id tells no boot from another");
        let before = self.storage.read_file(BOOT_FILE).ok();
        let changed = before.as_deref() != Some(boot.as_bytes());
        if changed {
            write_atomically(&self.storage, BOOT_FILE, boot.as_bytes())?;
        }
        let now = self.storage.read_file(BOOT_FILE).ok();
        assert_eq!(now.as_deref(), Some(boot.as_bytes()), "the boot was not recorded");
        Ok(changed)
    }

    /// The directory may lack records it acknowledged though nothing was cut (a journal that
    /// answers before it syncs, on a machine that may have lost power): writes the catch-up
    /// marker durably, as a creation or a truncation does.
    pub fn mark_catching_up(&self) -> Result<(), JournalError> {
        let mut state = self.state();
        self.settle(&mut state)?;
        if state.catching_up {
            return Ok(());
        }
        assert!(self.storage.file_len(CATCH_UP_FILE).is_err(), "a marker not in force");
        if let Err(error) = mark_catching_up(&self.storage) {
            // As for the epochs: a marker renamed into place before a later step failed is
            // in force, since a restart would find it, and settled by the next change.
            state.catching_up = self.storage.file_len(CATCH_UP_FILE).is_ok();
            state.unsettled = state.catching_up;
            return Err(error);
        }
        state.catching_up = true;
        assert!(self.storage.file_len(CATCH_UP_FILE).is_ok(), "the marker was not written");
        Ok(())
    }

    /// The node caught up with a primary, or became one: removes the catch-up marker durably.
    pub fn caught_up(&self) -> Result<(), JournalError> {
        let mut state = self.state();
        self.settle(&mut state)?;
        if !state.catching_up {
            return Ok(());
        }
        let file = self.storage.describe(CATCH_UP_FILE);
        match self.storage.remove(CATCH_UP_FILE) {
            Ok(()) => {
                if let Err(error) = sync_dir(&self.storage) {
                    // Gone from the directory, perhaps not durably: caught up in force (a
                    // later mark writes the marker again), settled by the next change.
                    state.catching_up = false;
                    state.unsettled = true;
                    return Err(error);
                }
            }
            // An operator deleted the marker while the node ran, to accept the loss (the
            // marker's own text says to stop the node first): it is gone either way.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(JournalError::io(format!("removing {file}"), error)),
        }
        state.catching_up = false;
        assert!(self.storage.file_len(CATCH_UP_FILE).is_err(), "the marker is still there");
        Ok(())
    }

    /// Whether a standby was in sync with this node as primary ([`IN_SYNC_FILE`]).
    #[must_use]
    pub fn standby_in_sync(&self) -> bool {
        let present = self.storage.file_len(IN_SYNC_FILE).is_ok();
        // Written whole before it is relied on (`set_standby_in_sync`).
        debug_assert!(
            !present || self.storage.read_file(IN_SYNC_FILE).is_ok_and(|b| !b.is_empty())
        );
        present
    }

    /// Records durably that a standby is in sync with this primary, or that it is not.
    pub fn set_standby_in_sync(&self, on: bool) -> Result<(), JournalError> {
        self.set_marker(IN_SYNC_FILE, IN_SYNC_TEXT, on)?;
        assert_eq!(self.standby_in_sync(), on, "the in-sync marker did not change");
        Ok(())
    }

    /// Whether this node, as a standby, acknowledges records before they are synced
    /// ([`ACKS_WRITTEN_FILE`]).
    #[must_use]
    pub fn acknowledges_written(&self) -> bool {
        let present = self.storage.file_len(ACKS_WRITTEN_FILE).is_ok();
        // Written whole before it is relied on (`set_acknowledges_written`).
        debug_assert!(
            !present || self.storage.read_file(ACKS_WRITTEN_FILE).is_ok_and(|b| !b.is_empty())
        );
        present
    }

    /// Records durably that this node, as a standby, acknowledges records before they are
    /// synced, or that it no longer does.
    pub fn set_acknowledges_written(&self, on: bool) -> Result<(), JournalError> {
        self.set_marker(ACKS_WRITTEN_FILE, ACKS_WRITTEN_TEXT, on)?;
        assert_eq!(self.acknowledges_written(), on, "the marker did not change");
        Ok(())
    }

    /// Writes marker file `name` (holding `text`) atomically and durably, or removes it
    /// durably; nothing if it already stands as asked.
    fn set_marker(&self, name: &str, text: &[u8], on: bool) -> Result<(), JournalError> {
        // Presence is read as the marker, and an empty file as one cut off while written.
        assert!(!name.is_empty() && !text.is_empty(), "a marker is a named file with a text");
        let mut state = self.state();
        self.settle(&mut state)?;
        if on == self.storage.file_len(name).is_ok() {
            return Ok(());
        }
        if on {
            if let Err(error) = write_atomically(&self.storage, name, text) {
                // Renamed into place before the directory's sync failed: settled by the next
                // change.
                state.unsettled = self.storage.file_len(name).is_ok();
                return Err(error.into());
            }
            // The pair of the check on restart: the marker is there, whole.
            let written = self.storage.read_file(name).ok();
            debug_assert_eq!(written.as_deref(), Some(text), "the marker {name} reads back");
        } else {
            let file = self.storage.describe(name);
            self.storage
                .remove(name)
                .map_err(|e| JournalError::io(format!("removing {file}"), e))?;
            if let Err(error) = sync_dir(&self.storage) {
                state.unsettled = true;
                return Err(error);
            }
        }
        assert_eq!(self.storage.file_len(name).is_ok(), on, "the marker {name} did not change");
        Ok(())
    }

    /// Lists a new segment (its header already durable) before its first record is written.
    pub(crate) fn add_segment(&self, segment: ManifestSegment) -> Result<(), JournalError> {
        let mut state = self.state();
        // A new segment starts past every record on disk, which the writer has reported.
        assert!(segment.first > self.durable_sequence(), "a segment over durable records");
        let next = state.manifest.with_segment(segment);
        write_manifest(&self.storage, &next)?;
        state.manifest = next;
        self.verify(&state);
        // Listed after its header was synced: the file is there (debug builds: a listing).
        let name = format::segment_name(segment.first);
        debug_assert!(self.storage.list().is_ok_and(|names| names.contains(&name)), "{name}");
        Ok(())
    }

    /// Rewrites the manifest as the next generation, unchanged otherwise (after recovery
    /// removed a segment whose creation was cut off).
    pub(crate) fn rewrite_manifest(&self) -> Result<(), JournalError> {
        let mut state = self.state();
        let next = state.manifest.next_generation();
        write_manifest(&self.storage, &next)?;
        state.manifest = next;
        self.verify(&state);
        Ok(())
    }

    /// Retires every segment whose records all precede `needed_from` (the first sequence
    /// replay may need), never the newest. The manifest is rewritten without them first, then
    /// their files are archived or deleted and the directory synced: a crash in between leaves
    /// unlisted old files, which recovery retires again.
    pub fn retire_segments(
        &self,
        needed_from: Sequence,
    ) -> Result<Vec<(String, Retired)>, JournalError> {
        let retired: Vec<ManifestSegment> = {
            let mut state = self.state();
            let segments = &state.manifest.segments;
            // Segment i is not needed if the next one starts at or before `needed_from`.
            let count = segments.windows(2).take_while(|p| p[1].first <= needed_from).count();
            if count == 0 {
                return Ok(Vec::new());
            }
            // Never the newest segment, and never one holding a sequence replay may need: the
            // first segment kept starts at or before `needed_from`.
            assert!(count < segments.len(), "retention retired the newest segment");
            assert!(segments[count].first <= needed_from, "retired a segment replay needs");
            let mut next = state.manifest.next_generation();
            let retired: Vec<ManifestSegment> = next.segments.drain(..count).collect();
            assert!(retired.iter().all(|s| s.first < needed_from), "retired a needed segment");
            next.retired_below = next.segments[0].first;
            next.segments_retired += count as u64;
            write_manifest(&self.storage, &next)?;
            state.manifest = next;
            self.verify(&state);
            retired
        };
        let mut done = Vec::with_capacity(retired.len());
        for segment in retired {
            let name = format::segment_name(segment.first);
            let how = self.storage.retire(&name).map_err(|e| {
                JournalError::io(format!("retiring {}", self.storage.describe(&name)), e)
            })?;
            done.push((name, how));
        }
        sync_dir(&self.storage)?;
        // Gone from the directory (debug builds: a listing).
        debug_assert!(
            self.storage.list().is_ok_and(|names| done.iter().all(|(n, _)| !names.contains(n))),
            "a retired segment is still in the directory"
        );
        Ok(done)
    }
}

/// Writes the manifest atomically.
pub(crate) fn write_manifest<S: Storage>(
    storage: &S,
    manifest: &Manifest,
) -> Result<(), JournalError> {
    write_atomically(storage, MANIFEST_FILE, &manifest.encode())?;
    // The pair of the check on reading: the file decodes to the manifest in force.
    debug_assert_eq!(
        storage.read_file(MANIFEST_FILE).ok().map(|bytes| Manifest::decode(&bytes)),
        Some(Ok(manifest.clone())),
        "the manifest written does not read back"
    );
    Ok(())
}

/// Writes the epoch file atomically.
pub(crate) fn write_epochs<S: Storage>(storage: &S, epochs: Epochs) -> Result<(), JournalError> {
    write_atomically(storage, EPOCH_FILE, &epochs.encode())?;
    debug_assert_eq!(
        storage.read_file(EPOCH_FILE).ok().map(|bytes| Epochs::decode(&bytes)),
        Some(Ok(epochs)),
        "the epoch file written does not read back"
    );
    Ok(())
}

pub(crate) fn sync_dir<S: Storage>(storage: &S) -> Result<(), JournalError> {
    storage
        .sync_dir()
        .map_err(|e| JournalError::io(format!("syncing directory {}", storage.describe("")), e))
}

/// What a data directory holds, compared with its manifest.
#[derive(Debug, Default)]
pub struct DirCheck {
    /// The manifest, if present and readable.
    pub manifest: Option<Manifest>,
    /// The epochs, if the epoch file is present and readable.
    pub epochs: Option<Epochs>,
    /// The segments to read, oldest first: the listed ones that are present and of the listed
    /// length; every segment file if there is no usable manifest.
    pub segments: Vec<(Sequence, String)>,
    /// Unlisted segments older than the journal: retired, but a crash came before their files
    /// went. Recovery retires them again.
    pub retired_leftovers: Vec<String>,
    /// An unlisted segment newer than the journal with nothing after its header: its creation
    /// was cut off before it was listed. Recovery removes it.
    pub creation_leftover: Option<String>,
    /// A node's temporary files (a crash's leftovers from atomic writes, [`is_own_temporary`]).
    /// Recovery removes them; a temporary of another name is not a node's, and stays.
    pub temporaries: Vec<String>,
    /// Snapshot files.
    pub snapshots: usize,
    /// Everything that makes the directory unusable as it is, in the order found.
    pub problems: Vec<JournalError>,
}

impl DirCheck {
    /// Whether the directory holds any of a data directory's files (or damage in one): false
    /// for an empty or unrelated directory, which a tool should refuse rather than call intact.
    #[must_use]
    pub fn holds_data(&self) -> bool {
        // `check` reports a manifest whose epoch file is missing or unreadable.
        assert!(
            self.manifest.is_none() || self.epochs.is_some() || !self.problems.is_empty(),
            "a manifest without its epoch file, unreported"
        );
        // ... and segments without a usable manifest.
        assert!(
            self.segments.is_empty() || self.manifest.is_some() || !self.problems.is_empty(),
            "segments without a manifest, unreported"
        );
        self.manifest.is_some()
            || self.epochs.is_some()
            || !self.segments.is_empty()
            || self.snapshots > 0
            || !self.problems.is_empty()
    }

    /// What `check` guarantees of what it returns. Recovery deletes the leftovers it names, so
    /// each is asserted to be the kind of file a crash leaves, and nothing to be read.
    fn verify(&self) {
        // Oldest first, each once, under its canonical name.
        let sorted = self.segments.windows(2).all(|pair| pair[0].0 < pair[1].0);
        assert!(sorted, "segments to read out of sequence order");
        debug_assert!(self.segments.iter().all(|(f, name)| *name == format::segment_name(*f)));
        assert!(self.temporaries.iter().all(|name| is_own_temporary(name)), "not a temporary");
        // Leftovers are judged only against a manifest, and only segments are left over.
        assert!(self.manifest.is_some() || self.retired_leftovers.is_empty());
        assert!(self.manifest.is_some() || self.creation_leftover.is_none());
        let below = self.manifest.as_ref().map_or(Sequence(0), |m| m.retired_below);
        let retired = |name: &String| format::parse_segment_name(name).is_some_and(|f| f < below);
        assert!(self.retired_leftovers.iter().all(retired), "a leftover that was never retired");
        let read = |name: &String| self.segments.iter().any(|(_, segment)| segment == name);
        debug_assert!(!self.retired_leftovers.iter().any(read), "a leftover is also read");
        let newest = self.segments.last().map_or(Sequence(0), |(first, _)| *first);
        let cut_off = |name: &String| format::parse_segment_name(name).is_some_and(|f| f > newest);
        assert!(self.creation_leftover.as_ref().is_none_or(cut_off), "a leftover not the newest");
    }

    /// The first record the journal holds: 1, or the first after the records retention
    /// retired.
    #[must_use]
    pub fn first_held(&self) -> Sequence {
        let first = self.segments.first().map_or(Sequence(1), |(first, _)| *first);
        assert!(first.0 >= 1, "a segment named for sequence 0");
        first
    }

    /// A directory with no journal in it yet (a node initialises it).
    #[must_use]
    pub fn is_fresh(&self) -> bool {
        self.manifest.is_none()
            && self.problems.is_empty()
            && self.segments.is_empty()
            && self.snapshots == 0
    }
}

/// Compares the directory with its manifest and reads its epochs. Only I/O failures are
/// errors; everything wrong with the directory is listed in [`DirCheck::problems`], so
/// recovery refuses with the first and the tools can report them all.
pub fn check<R: ReadSource>(source: &mut R) -> Result<DirCheck, JournalError> {
    let names = source
        .list_files()
        .map_err(|e| JournalError::io(format!("listing {}", source.location()), e))?;
    let mut check = DirCheck::default();
    let mut segments = Vec::new();
    let (mut has_manifest, mut has_epochs) = (false, false);
    for name in names {
        if name.ends_with(".seg") {
            match format::parse_segment_name(&name) {
                Some(first) => segments.push((first, name)),
                None => check
                    .problems
                    .push(JournalError::StrayFile { file: source.describe_file(&name) }),
            }
        } else if snapshot::parse_snapshot_name(&name).is_some() {
            check.snapshots += 1;
        } else if is_own_temporary(&name) {
            check.temporaries.push(name);
        } else {
            has_manifest |= name == MANIFEST_FILE;
            has_epochs |= name == EPOCH_FILE;
        }
    }
    segments.sort_unstable();
    check.temporaries.sort_unstable();
    if has_manifest {
        check.manifest = read_manifest(source, &mut check.problems)?;
        // An unreadable manifest is reported, never passed over.
        assert!(check.manifest.is_some() || !check.problems.is_empty(), "a manifest unread");
    }
    if has_epochs {
        check.epochs = read_epochs(source, &mut check.problems)?;
        assert!(check.epochs.is_some() || !check.problems.is_empty(), "an epoch file unread");
    } else if has_manifest {
        check.problems.push(JournalError::EpochFile {
            file: source.describe_file(EPOCH_FILE),
            reason: "it is missing, but the manifest exists (a node writes the epoch file \
                     first, so it was deleted)"
                .to_owned(),
        });
    }
    match check.manifest.clone() {
        Some(manifest) => compare(source, &manifest, segments, &mut check)?,
        None => {
            if !has_manifest && (!segments.is_empty() || check.snapshots > 0) {
                check.problems.push(JournalError::ManifestMissing {
                    dir: source.location(),
                    manifest: source.describe_file(MANIFEST_FILE),
                    segments: segments.len(),
                    snapshots: check.snapshots,
                });
            }
            check.segments = segments;
        }
    }
    check.verify();
    Ok(check)
}

/// The manifest, or the first reason it cannot be read, as an error.
pub(crate) fn read_listed_manifest<S: Storage>(storage: &S) -> Result<Manifest, JournalError> {
    let mut source = storage.clone();
    let mut problems = Vec::new();
    match read_manifest(&mut source, &mut problems)? {
        Some(manifest) => Ok(manifest),
        None => Err(problems.remove(0)),
    }
}

/// The epoch file, or the reason it cannot be read, as an error.
pub(crate) fn read_epoch_file<R: ReadSource>(source: &mut R) -> Result<Epochs, JournalError> {
    let mut problems = Vec::new();
    let read = read_epochs(source, &mut problems)?;
    // Either the epochs or the reason they were not read, never both, never neither.
    assert_eq!(read.is_some(), problems.is_empty(), "an epoch file read and refused");
    match read {
        Some(epochs) => Ok(epochs),
        None => Err(problems.remove(0)),
    }
}

fn read_manifest<R: ReadSource>(
    source: &mut R,
    problems: &mut Vec<JournalError>,
) -> Result<Option<Manifest>, JournalError> {
    let file = source.describe_file(MANIFEST_FILE);
    let bytes = source
        .read_file(MANIFEST_FILE)
        .map_err(|e| JournalError::io(format!("reading {file}"), e))?;
    match Manifest::decode(&bytes) {
        Ok(manifest) => {
            assert!(manifest.generation >= 1, "the decoder accepted generation 0");
            return Ok(Some(manifest));
        }
        Err(ManifestProblem::FutureVersion(found)) => {
            assert!(found > MANIFEST_VERSION, "a version this build reads called newer");
            problems.push(JournalError::FutureVersion { file, found, supported: MANIFEST_VERSION });
        }
        Err(ManifestProblem::Invalid(reason)) => {
            problems.push(JournalError::ManifestInvalid { dir: source.location(), file, reason });
        }
    }
    Ok(None)
}

fn read_epochs<R: ReadSource>(
    source: &mut R,
    problems: &mut Vec<JournalError>,
) -> Result<Option<Epochs>, JournalError> {
    let file = source.describe_file(EPOCH_FILE);
    let bytes =
        source.read_file(EPOCH_FILE).map_err(|e| JournalError::io(format!("reading {file}"), e))?;
    match Epochs::decode(&bytes) {
        Ok(epochs) => {
            assert!(epochs.problem().is_none(), "the decoder accepted impossible epochs");
            return Ok(Some(epochs));
        }
        Err(EpochProblem::FutureVersion(found)) => {
            let supported = crate::epoch::EPOCH_VERSION;
            assert!(found > supported, "a version this build reads called newer");
            problems.push(JournalError::FutureVersion { file, found, supported });
        }
        Err(EpochProblem::Invalid(reason)) => {
            problems.push(JournalError::EpochFile { file, reason });
        }
    }
    Ok(None)
}

/// Listed segments must be present with their listed length; unlisted ones must be explained
/// by a crash during retirement (older) or during a creation (newest, nothing written).
fn compare<R: ReadSource>(
    source: &mut R,
    manifest: &Manifest,
    found: Vec<(Sequence, String)>,
    check: &mut DirCheck,
) -> Result<(), JournalError> {
    let present: BTreeMap<Sequence, String> = found.into_iter().collect();
    let manifest_file = source.describe_file(MANIFEST_FILE);
    assert!(check.segments.is_empty(), "segments chosen before the manifest was read");
    let problems = check.problems.len();
    let manifest_len = manifest.segments.len();
    for (index, listed) in manifest.segments.iter().enumerate() {
        let name = format::segment_name(listed.first);
        let (dir, file) = (source.location(), source.describe_file(&name));
        let held = manifest.held(index);
        let manifest = manifest_file.clone();
        if !present.contains_key(&listed.first) {
            let (first, newest) = (listed.first, index + 1 == manifest_len);
            let missing = JournalError::SegmentMissing { dir, file, manifest, first, held, newest };
            check.problems.push(missing);
            continue;
        }
        let found =
            source.file_len(&name).map_err(|e| JournalError::io(format!("reading {file}"), e))?;
        // A wrong length with a damaged header is left to the scan, which names the damage.
        if found != listed.len && !header_damaged(source, &name, found)? {
            let intact = intact_left(source, &name, listed, found)?;
            let newest = index + 1 == manifest_len;
            let (first, listed, held) = (listed.first, listed.len, held.into_boxed_str());
            check.problems.push(JournalError::SegmentLength {
                dir,
                file,
                manifest,
                first,
                held,
                found,
                listed,
                intact,
                newest,
            });
            continue;
        }
        check.segments.push((listed.first, name));
    }
    // Every listed segment is read or reported: none is passed over in silence.
    let reported = check.problems.len() - problems;
    assert_eq!(check.segments.len() + reported, manifest.segments.len(), "a listed segment lost");
    let newest_listed = manifest.segments.last().map(|s| s.first);
    let unlisted: Vec<(Sequence, String)> =
        present.into_iter().filter(|(first, _)| !manifest.lists(*first)).collect();
    let newest_unlisted = unlisted.last().map(|(first, _)| *first);
    let (unlisted_count, problems) = (unlisted.len(), check.problems.len());
    for (first, name) in unlisted {
        if first < manifest.retired_below {
            check.retired_leftovers.push(name);
            continue;
        }
        let newest = newest_listed.is_none_or(|n| first > n) && Some(first) == newest_unlisted;
        if newest && body_is_empty(source, &name)? {
            check.creation_leftover = Some(name);
            continue;
        }
        let file = source.describe_file(&name);
        let manifest = manifest_file.clone();
        check.problems.push(JournalError::UnlistedSegment { file, manifest, first });
    }
    // And every unlisted one is explained as a crash's leftover, or reported.
    let explained = check.retired_leftovers.len() + usize::from(check.creation_leftover.is_some());
    let reported = check.problems.len() - problems;
    assert_eq!(explained + reported, unlisted_count, "an unlisted segment passed over");
    // Only listed segments are read, each at most once.
    assert!(check.segments.len() <= manifest.segments.len(), "more segments than listed");
    debug_assert!(check.segments.iter().all(|(first, _)| manifest.lists(*first)));
    Ok(())
}

/// The intact records left at the front of listed segment `name`, cut short to `found` bytes:
/// none unless its header is whole and names the segment and the length the manifest lists
/// (the writer synced the header before it listed the segment, so a header naming anything
/// else is not this segment's). A file longer than listed is not read: nothing was cut off.
fn intact_left<R: ReadSource>(
    source: &mut R,
    name: &str,
    listed: &ManifestSegment,
    found: u64,
) -> Result<u32, JournalError> {
    if found >= listed.len || found < SEGMENT_HEADER_LEN as u64 {
        return Ok(0);
    }
    let bytes = source
        .read_segment(name)
        .map_err(|e| JournalError::io(format!("reading {}", source.describe_file(name)), e))?;
    let header = match format::decode_segment_header(&bytes) {
        Ok(header) if header.first_sequence == listed.first && header.segment_len == listed.len => {
            header
        }
        _ => return Ok(0),
    };
    let crate::scan::IntactPrefix { records: intact, end, .. } =
        crate::scan::intact_prefix(&bytes, header.first_sequence);
    // What is counted lies in the bytes left, after the header.
    assert!(end as u64 <= found, "records counted past the bytes left");
    assert!(end >= SEGMENT_HEADER_LEN, "records counted inside the header");
    // A segment holds at most 16 GiB, in records of 48 bytes or more.
    Ok(u32::try_from(intact).expect("fewer than 2^32 records in a segment"))
}

/// Whether a segment's header is present but damaged (not merely short or zeroed).
fn header_damaged<R: ReadSource>(
    source: &mut R,
    name: &str,
    len: u64,
) -> Result<bool, JournalError> {
    if len < SEGMENT_HEADER_LEN as u64 {
        return Ok(false);
    }
    assert!(name.ends_with(".seg"), "a header read from a file that is not a segment");
    let bytes = source
        .read_segment(name)
        .map_err(|e| JournalError::io(format!("reading {}", source.describe_file(name)), e))?;
    Ok(match format::decode_segment_header(&bytes) {
        Ok(_) | Err(HeaderProblem::Zeroed | HeaderProblem::TooShort) => false,
        Err(_) => true,
    })
}

/// Whether everything after a segment's header is zero (no record was ever written).
fn body_is_empty<R: ReadSource>(source: &mut R, name: &str) -> Result<bool, JournalError> {
    assert!(name.ends_with(".seg"), "a body read from a file that is not a segment");
    if source.file_len(name).map_err(|e| JournalError::io(format!("reading {name}"), e))?
        <= SEGMENT_HEADER_LEN as u64
    {
        return Ok(true);
    }
    let bytes = source
        .read_segment(name)
        .map_err(|e| JournalError::io(format!("reading {}", source.describe_file(name)), e))?;
    Ok(crate::scan::last_nonzero(&bytes[SEGMENT_HEADER_LEN.min(bytes.len())..]).is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::temp_name;

    #[test]
    fn a_nodes_own_entries_are_told_from_anyone_elses() {
        // Goal: every name a node gives an entry of its data directory is its own, and the
        // names around them (a user's files, look-alikes, a file where a node keeps a
        // subdirectory, a temporary of someone else's) are not: the check of a directory with
        // no journal refuses those.
        let segment = format::segment_name(Sequence(1));
        let snapshot = snapshot::snapshot_name(Sequence(9));
        let mut own: Vec<String> = OWN_FILES.iter().map(|name| (*name).to_owned()).collect();
        own.extend([
            segment.clone(),
            snapshot.clone(),
            snapshot::stale_name(&snapshot),
            format!("{segment}{}", crate::rebuild::SUPERSEDED_SUFFIX),
            format!("{snapshot}{}", crate::rebuild::SUPERSEDED_SUFFIX),
        ]);
        // Each file is written under its temporary name first.
        let temporaries: Vec<String> = own.iter().map(|name| temp_name(name)).collect();
        own.extend(temporaries);
        own.extend([
            crate::spare::SPARE_NAME.to_owned(),
            ".admin.token.4242.tmp".to_owned(),
            format!("{ROLLBACK_DIR}/"),
            format!("{LOST_AND_FOUND_DIR}/"),
        ]);
        for name in &own {
            assert!(is_own_entry(name), "{name} is a node's");
        }
        let foreign = [
            "notes.txt",
            "Documents/",
            ".bashrc",
            ".draft.tmp",
            ".admin.token.12a.tmp",
            ".admin.token..tmp",
            "rollback",
            "lost+found",
            "manifest/",
            "manifest.bak",
            "admin.token.old",
            "snapshot-1.snap",
            "00000000000000000001.seg.bak",
            "notes.txt.superseded",
            "00000000000000000001.seg.stale",
            ".00000000000000000001.seg.stale.tmp",
        ];
        for name in foreign {
            assert!(!is_own_entry(name), "{name} is not a node's");
        }
        assert!(foreign.iter().all(|name| !own.iter().any(|own| own == name)), "a name in both");
    }
}
