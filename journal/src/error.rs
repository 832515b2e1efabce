//! The journal's error type: every message says where the problem is and what to do about it.

use std::io;
use std::path::PathBuf;

use ringfence_core::{Epoch, RestoreError, Sequence};

use crate::format::HeaderProblem;
use crate::lock::Holder;
use crate::storage::StorageError;

/// What is wrong with a record or a segment that is not just a torn tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// The record's CRC32C does not match its bytes.
    Checksum,
    /// The record's length field is zero, too large, or runs past the end of the segment.
    Length,
    /// The record fails its checks, and flipping one bit back makes it intact: damage at rest
    /// (a write cut off by a crash leaves bytes zero; it does not flip bits), so never read as
    /// a torn tail, even at the very end of the journal after a crash.
    BitFlip {
        /// Byte offset of the flipped bit in the segment file.
        offset: u64,
        /// The flipped bit, as a mask of that byte.
        mask: u8,
    },
    /// An intact record carries the wrong sequence: records are missing or repeated.
    Gap {
        /// The sequence found.
        found: Sequence,
    },
    /// An intact record carries a lower epoch than the record before it.
    EpochWentBack,
    /// An intact record's payload is not a valid archived command.
    Payload,
    /// Bytes after the last record where the segment should be zero.
    BytesAfterEnd,
    /// The segment's header (or its name) does not fit the segments around it.
    SegmentHeader(HeaderProblem),
    /// The segment's first sequence does not follow the previous segment's last.
    SegmentGap {
        /// The first sequence in this segment's header.
        found: Sequence,
    },
    /// The segment's records end before a sequence the journal should hold, and no segment
    /// starts at it (a reader following the journal found it missing).
    EndsEarly,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Checksum => write!(f, "the record's CRC32C does not match its bytes"),
            Damage::Length => write!(f, "the record's length field is out of range"),
            Damage::BitFlip { offset, mask } => write!(
                f,
                "one bit (mask {mask:#04x} of the byte at offset {offset}) is flipped: with it \
                 flipped back the record is intact, so the disk changed it at rest (a write cut \
                 off by a crash leaves bytes zero; it does not flip bits)"
            ),
            Damage::Gap { found } => write!(f, "an intact record carries sequence {found}"),
            Damage::EpochWentBack => {
                write!(f, "the record's epoch is lower than its predecessor's")
            }
            Damage::Payload => write!(f, "the record's payload is not a valid, journaled command"),
            Damage::BytesAfterEnd => write!(f, "non-zero bytes follow the last record"),
            Damage::SegmentHeader(problem) => write!(f, "{problem}"),
            Damage::SegmentGap { found } => {
                write!(f, "the segment starts at sequence {found}, which does not follow on")
            }
            Damage::EndsEarly => write!(
                f,
                "the records end here, but the journal should hold this sequence and no segment \
                 starts at it"
            ),
        }
    }
}

/// A failure to read, recover or write the journal or its snapshots.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// An operating-system I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Damage that is not a torn write: records after it exist, or one flipped bit (at rest)
    /// explains it.
    #[error(
        "journal corrupt: {file} at byte offset {offset} (sequence {sequence}): {damage}. \
         The journal is not replayed past a damaged record. If the other node's journal (or a \
         backup) holds the record, `ringfence journal heal {dir} --from <its directory>` \
         copies it back, which drops nothing; or, if a snapshot covers sequence {sequence}, run \
         `ringfence journal rebuild {dir}`, which drops nothing; or, to drop sequence \
         {sequence} and everything after it, run \
         `ringfence journal truncate {dir} --at-seq {sequence}`"
    )]
    Corrupt {
        /// The journal directory.
        dir: String,
        /// The segment file.
        file: String,
        /// Byte offset of the damaged record (or header) in the file.
        offset: u64,
        /// The sequence expected at that point.
        sequence: Sequence,
        /// What is wrong.
        damage: Damage,
    },
    /// A file in the journal directory ends in `.seg` but is not named by a sequence.
    #[error(
        "{file} is not a segment name (20 digits + .seg); move it out of the journal directory"
    )]
    StrayFile {
        /// The file.
        file: String,
    },
    /// The journal does not reach back to where replay must start.
    #[error(
        "the journal starts at sequence {first} but replay must start at {needed} (no usable \
         snapshot covers the sequences before {first}); restore the missing segments or a \
         snapshot from an archive"
    )]
    MissingStart {
        /// The journal's first sequence.
        first: Sequence,
        /// The sequence replay needed.
        needed: Sequence,
    },
    /// A reader asked for records the journal no longer holds.
    #[error(
        "sequence {requested} is no longer in the journal in {dir}, which holds sequences from \
         {first} on (the segments before were retired after a snapshot). A standby that needs \
         it cannot catch up from this journal: restore a snapshot on it that covers the \
         sequences before {first}, then stream from there"
    )]
    Retired {
        /// The journal directory.
        dir: String,
        /// The sequence asked for.
        requested: Sequence,
        /// The first sequence the journal holds (or will hold, if its only segment is empty).
        first: Sequence,
    },
    /// A snapshot could not be written or read.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A snapshot does not fit the engine configuration.
    #[error("snapshot {file} cannot be restored: {source}")]
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// Why.
        source: RestoreError,
    },
    /// The node's engine settings differ from those a journal file was written with.
    #[error(
        "{file} was written with other [engine] settings than this node's: {differences}. A \
         journal's records replay only under the settings they were written with (order ids \
         carry the shard; the tables' sizes decide refusals and which finished orders are \
         forgotten), so a node does not start on it with others: set [engine] as the journal \
         has it (`ringfence journal verify` prints it), carry the directory over to the new \
         settings with `ringfence journal reconfigure` once the node stopped cleanly, or start \
         on a new data directory"
    )]
    SettingsChanged {
        /// The segment or snapshot file.
        file: String,
        /// The settings that differ, this node's value first.
        differences: String,
    },
    /// Another process holds the data directory's lock.
    #[error(
        "data directory {dir} is in use: ringfence {holder} holds its lock {lock_file}. Stop \
         that process first (two writers would corrupt the journal), or use another data \
         directory"
    )]
    Locked {
        /// The data directory.
        dir: String,
        /// The lock file.
        lock_file: String,
        /// Who holds it.
        holder: Holder,
    },
    /// A segment the manifest lists is not in the directory.
    #[error(
        "segment {file} is missing: the manifest {manifest} lists it as holding {held}. \
         Acknowledged commands may be in it, so the journal is not replayed without it. Restore \
         the file from a backup or the standby; {}",
        segment_missing_repairs(dir, *first, *newest)
    )]
    SegmentMissing {
        /// The data directory.
        dir: String,
        /// The segment file.
        file: String,
        /// The manifest file.
        manifest: String,
        /// The segment's first sequence.
        first: Sequence,
        /// The sequences it held, as text (`sequences 42..=97`, `sequences from 42 on`).
        held: String,
        /// Whether it is the newest listed segment.
        newest: bool,
    },
    /// A segment whose length differs from the one the manifest lists: cut short or emptied.
    #[error(
        "segment {file} is {found} bytes long but the manifest {manifest} lists its length as \
         {listed} bytes (it was cut short or emptied); it held {held}. {}",
        segment_length_repairs(dir, *first, *intact, *newest)
    )]
    SegmentLength {
        /// The data directory.
        dir: String,
        /// The segment file.
        file: String,
        /// The manifest file.
        manifest: String,
        /// The segment's first sequence.
        first: Sequence,
        /// The sequences it held, as text (boxed: the counts below fit in the room a
        /// `String`'s capacity took, so the error stays as small as it was).
        held: Box<str>,
        /// Its length now.
        found: u64,
        /// Its length in the manifest.
        listed: u64,
        /// The intact records left at its front, from `first` on: the bytes that remain hold
        /// them whole, so sequence `first + intact` is the first one lost (0 when the header
        /// is gone or the file is longer than listed). A segment of at most 16 GiB holds
        /// fewer than 2^32 records of 48 bytes or more.
        intact: u32,
        /// Whether it is the newest segment listed (no later segment is dropped with it).
        newest: bool,
    },
    /// A segment with records that the manifest does not list.
    #[error(
        "segment {file} holds records (from sequence {first}) but the manifest {manifest} does \
         not list it: it was copied in or left from another journal, and replaying it could mix \
         two histories. Move it out of the data directory"
    )]
    UnlistedSegment {
        /// The segment file.
        file: String,
        /// The manifest file.
        manifest: String,
        /// The first sequence in its name.
        first: Sequence,
    },
    /// Journal files exist but the manifest does not.
    #[error(
        "{dir} holds {segments} segment(s) and {snapshots} snapshot(s) but no manifest \
         ({manifest}): it was deleted, or the directory was written by a ringfence build from \
         before manifests (there has been no release, so such directories are refused, not \
         migrated). Restore the manifest from a backup; or, if every segment is present, \
         rebuild it from them with `ringfence journal truncate {dir} --at-end`"
    )]
    ManifestMissing {
        /// The data directory.
        dir: String,
        /// The manifest file that should exist.
        manifest: String,
        /// Segment files found.
        segments: usize,
        /// Snapshot files found.
        snapshots: usize,
    },
    /// A directory with no journal yet holds entries that are none of a node's
    /// ([`crate::datadir::foreign_entries`]): a mistyped path is refused, not made a data
    /// directory.
    #[error(
        "{dir} holds no journal, but {}: a node makes a new journal only in an empty directory, \
         or one holding nothing but ringfence's own files (those its configuration names among \
         them) and a file system's lost+found, so that a mistyped path is never filled with one. Name a new or empty directory (`serve \
         --data-dir`, or data_dir in the config file), or move these out of {dir}",
        entries_named(named, *count)
    )]
    ForeignEntries {
        /// The directory.
        dir: String,
        /// The first few entries that are not a node's, in name order (a subdirectory with a
        /// trailing `/`).
        named: Vec<String>,
        /// How many there are in all.
        count: usize,
    },
    /// The manifest is damaged.
    #[error(
        "manifest {file} is invalid: {reason}. Restore it from a backup; or, if every segment \
         is present, rebuild it from them with `ringfence journal truncate {dir} --at-end`"
    )]
    ManifestInvalid {
        /// The data directory.
        dir: String,
        /// The manifest file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A file written by a newer build.
    #[error(
        "{file} has format version {found}, but this build reads version {supported}: it was \
         written by a newer ringfence. Run that build; nothing was changed here"
    )]
    FutureVersion {
        /// The file.
        file: String,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The epoch file is missing, damaged or inconsistent.
    #[error(
        "epoch file {file}: {reason}. The node's epoch is never guessed from the journal: \
         restore the file that belongs with this data directory from a backup"
    )]
    EpochFile {
        /// The epoch file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The journal holds a record from an epoch above the epoch file's current epoch.
    #[error(
        "the journal's last record (sequence {sequence}) carries epoch {record}, above the \
         current epoch {current} in {file}: the epoch file is older than the journal (restored \
         from an old backup?). Restore the epoch file that belongs with this journal"
    )]
    EpochAhead {
        /// The epoch file.
        file: String,
        /// The last record's sequence.
        sequence: Sequence,
        /// Its epoch.
        record: Epoch,
        /// The epoch file's current epoch.
        current: Epoch,
    },
    /// The node stopped cleanly, and the journal no longer ends where it did then.
    #[error(
        "the journal in {dir} no longer ends where it did when the node last stopped cleanly \
         ({marked}): {found}. After a clean stop that is damage at \
         rest to acknowledged commands, not a write cut off by a crash, so the journal is not \
         replayed. {}",
        end_moved_repairs(dir, *last, *from, *damaged)
    )]
    EndMoved {
        /// The data directory.
        dir: String,
        /// What the clean-stop marker says, as text: its file, the last sequence and where the
        /// records ended (byte offset and segment).
        marked: String,
        /// The last sequence it names.
        last: Sequence,
        /// What the journal shows instead.
        found: String,
        /// The first sequence the journal lacks or holds damaged.
        from: Sequence,
        /// Whether a record the journal holds is damaged (`journal heal` and `journal
        /// rebuild` repair those), rather than records missing after its end, bytes after
        /// its last record, or a marker that names another place.
        damaged: bool,
    },
    /// The clean-stop marker is there but cannot be read.
    #[error(
        "{file} is damaged: it should say where the journal ended when the node last stopped \
         cleanly, so the node cannot tell damage at the journal's end from a write cut off by a \
         crash. Compare the journal with the standby's (`ringfence journal verify`); to start \
         anyway, treating damage at the journal's end as a crash's, delete the file"
    )]
    CleanStopUnreadable {
        /// The marker file.
        file: String,
    },
    /// Options or a request the journal cannot carry out (a segment size out of range, a
    /// truncation past damage, an export the journal cannot start); the text says why.
    #[error("{0}")]
    Options(String),
    /// A tool that rewrites the directory (`rebuild`, `reconfigure`) refused, changing
    /// nothing; the text says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// A directory with none of a data directory's files, given to a tool.
    #[error(
        "{dir} holds no ringfence data (no manifest, epoch file, journal segment or snapshot): \
         is it the directory `serve --data-dir` names? Nothing was changed"
    )]
    NoData {
        /// The directory.
        dir: String,
    },
    /// A truncation that would set aside every snapshot recovery could start from, in a
    /// journal whose oldest records were retired.
    #[error(
        "cannot truncate at sequence {at}: the journal starts at {first} (the records before it \
         were retired after snapshots), and every snapshot from the one before {first} on holds \
         records at or after {at}, so the cut would set them all aside and leave nothing to \
         replay from. This directory cannot be repaired in place: if its peer holds the \
         records, move it aside and start the node as a standby with an empty data directory \
         (it fetches the primary's snapshot); otherwise restore the retired segments or an \
         older snapshot from an archive"
    )]
    NothingToReplayFrom {
        /// Where the cut was asked for.
        at: Sequence,
        /// The journal's first record.
        first: Sequence,
    },
    /// A record too large for the format (a bug: commands are fixed-size).
    #[error("a command encoded to {0} bytes, above the record payload limit")]
    RecordTooLarge(usize),
}

impl From<StorageError> for JournalError {
    fn from(error: StorageError) -> JournalError {
        assert!(!error.context.is_empty(), "an I/O error that does not say what was being done");
        JournalError::Io { context: error.context, source: error.source }
    }
}

impl JournalError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> JournalError {
        let context = context.into();
        assert!(!context.is_empty(), "an I/O error that does not say what was being done");
        JournalError::Io { context, source }
    }
}

/// `count` entries, of which `named` are the first, for an operator: "2 entries that \
/// ringfence did not put there (notes.txt, photos/)", the rest counted past the names.
pub(crate) fn entries_named(named: &[String], count: usize) -> String {
    assert!(!named.is_empty(), "foreign entries refused without naming one");
    assert!(named.len() <= count, "more entries named than there are");
    let noun = if count == 1 { "1 entry" } else { &format!("{count} entries") };
    let more = count - named.len();
    let more = if more == 0 { String::new() } else { format!(" and {more} more") };
    format!("{noun} that ringfence did not put there ({}{more})", named.join(", "))
}

/// The repairs of a listed segment cut short ([`JournalError::SegmentLength`]) whose front
/// holds `intact` records from `first` on: the file restored whole, or the records lost copied
/// back from the peer's journal (`journal heal`), drop nothing; a cut at the first sequence
/// lost keeps every record left intact before it.
fn segment_length_repairs(dir: &str, first: Sequence, intact: u32, newest: bool) -> String {
    assert!(first.0 >= 1, "a segment from sequence 0");
    let lost = Sequence(first.0 + u64::from(intact));
    let later = if newest { "" } else { " (the later segments too, kept in rollback/)" };
    let cut = format!(
        "to accept losing sequence {lost} and everything after it{later}, run `ringfence \
         journal truncate {dir} --at-seq {lost}`"
    );
    if intact == 0 {
        return format!(
            "No whole record is left in it. Acknowledged commands may be lost with it, so the \
             journal is not replayed. Restore the file from a backup or the standby; or, {cut}"
        );
    }
    let last = Sequence(lost.0 - 1);
    format!(
        "The bytes left hold {intact} intact records (sequences {first}..={last}); sequence \
         {lost} is the first not whole in them. Acknowledged commands may be lost with the \
         rest, so the journal is not replayed. Restore the file whole from a backup or the \
         standby; or copy the records lost back from the other node's journal (or a backup), \
         which keeps every record it shows to be this journal's: `ringfence journal heal \
         {dir} --from <its directory>` (it says when it cannot tell where the records lost \
         ended; `journal rebuild` does not repair a segment cut short); or, \
         {cut}, which keeps the {intact} intact records before it and puts the segment back at \
         its listed length"
    )
}

/// The repairs of a journal without listed segment `first` (`newest`: the newest listed) other
/// than restoring it: a rebuild after a snapshot that holds the state through the last
/// sequence it held drops nothing (for the newest segment, that end is known only after a
/// clean stop); a cut at its first sequence drops it and everything after it.
fn segment_missing_repairs(dir: &str, first: Sequence, newest: bool) -> String {
    assert!(first.0 >= 1, "a segment from sequence 0");
    let covered = if newest {
        "after a clean stop whose snapshot holds the state through the last record"
    } else {
        "where a snapshot holds the state through the last sequence it held"
    };
    format!(
        "{covered}, `ringfence journal rebuild {dir}` starts the journal after that snapshot and \
         drops nothing; otherwise, to accept losing sequence {first} and everything after it, \
         run `ringfence journal truncate {dir} --at-seq {first}`"
    )
}

/// The repairs of a journal whose end moved after a clean stop ([`JournalError::EndMoved`]):
/// copying a damaged record back or rebuilding past it drop nothing; a cut drops what follows.
fn end_moved_repairs(dir: &str, last: Sequence, from: Sequence, damaged: bool) -> String {
    // What the journal lacks or holds damaged starts at most one past the marked end.
    assert!(from <= last.next(), "a repair from past the marked end");
    assert!(!damaged || from <= last, "a damaged record past the marked end");
    let cut = format!("`ringfence journal truncate {dir} --at-seq {from}`");
    if damaged {
        return format!(
            "If the other node's journal (or a backup) holds the record, `ringfence journal heal \
             {dir} --from <its directory>` copies it back, which drops nothing; or, if a \
             snapshot covers sequence {from}, run `ringfence journal rebuild {dir}`, which \
             drops nothing; or, to accept losing sequence {from} and everything after it, run \
             {cut}"
        );
    }
    format!(
        "No record the journal holds through sequence {last} is damaged, so `journal heal` and \
         `journal rebuild` have nothing to repair. Where records are missing, restore them \
         from a backup, or start this node as a standby with an empty data directory to copy \
         the primary's journal; to go on from what the journal holds, accepting the loss of \
         anything missing, run {cut} (it keeps anything it cuts in rollback/)"
    )
}
