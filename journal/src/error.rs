//! The journal's error type: every message says where the problem is and what to do about it.

use std::io;
use std::path::PathBuf;

use ringfence_core::{RestoreError, Sequence};

use crate::format::HeaderProblem;
use crate::lock::Holder;

/// What is wrong with a record or a segment that is not just a torn tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// The record's CRC32C does not match its bytes.
    Checksum,
    /// The record's length field is zero, too large, or runs past the end of the segment.
    Length,
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
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Checksum => write!(f, "the record's CRC32C does not match its bytes"),
            Damage::Length => write!(f, "the record's length field is out of range"),
            Damage::Gap { found } => write!(f, "an intact record carries sequence {found}"),
            Damage::EpochWentBack => {
                write!(f, "the record's epoch is lower than its predecessor's")
            }
            Damage::Payload => write!(f, "the record's payload is not a valid command"),
            Damage::BytesAfterEnd => write!(f, "non-zero bytes follow the last record"),
            Damage::SegmentHeader(problem) => write!(f, "{problem}"),
            Damage::SegmentGap { found } => {
                write!(f, "the segment starts at sequence {found}, which does not follow on")
            }
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
    /// Damage before the end of the journal: records after it exist, so it is not a torn write.
    #[error(
        "journal corrupt: {file} at byte offset {offset} (sequence {sequence}): {damage}. \
         The journal is not replayed past a damaged record. Restore the segment from the \
         standby or a backup, or, to drop sequence {sequence} and everything after it, run \
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
    /// The options given are not usable.
    #[error("invalid journal options: {0}")]
    Options(String),
    /// A record too large for the format (a bug: commands are fixed-size).
    #[error("a command encoded to {0} bytes, above the record payload limit")]
    RecordTooLarge(usize),
}

impl JournalError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> JournalError {
        JournalError::Io { context: context.into(), source }
    }
}
