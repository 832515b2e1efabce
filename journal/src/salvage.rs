//! What a damaged journal still holds past its damage, for the operator. A sequential read
//! ([`crate::scan::read`]) stops at the first record it cannot read: the records after it are
//! intact on disk, but nothing says where the next one starts. [`salvage`] finds them by trying
//! every 16-byte boundary (records start on one) until a record checks again — its CRC32C, its
//! length and its payload — and goes on from record to record from there.
//!
//! `journal truncate` keeps what this finds past its cut in `rollback/` before it drops it: at
//! bit rot that no peer's copy or snapshot repairs, those records may be the only copy of
//! acknowledged writes, and their request ids let the operator reconcile them. Salvaged
//! records are never put back into a journal: a record found after unreadable bytes is intact,
//! but nothing shows that none was lost between.

use std::ops::ControlFlow;

use ringfence_core::{Command, Sequence};

use crate::error::JournalError;
use crate::format::{self, RECORD_ALIGN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::scan::{self, ReadSource, Record};

/// How many runs of missing sequences [`Salvaged::missing_runs`] lists; the rest are counted.
pub const MISSING_RUNS_LISTED: usize = 16;

/// What [`salvage`] read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// Records visited.
    pub records: u64,
    /// The first and last of them.
    pub span: Option<(Sequence, Sequence)>,
    /// Bytes of the segments searched that held no intact record, up to the last non-zero
    /// byte of each: what the operator may be missing.
    pub unreadable_bytes: u64,
    /// Sequences no intact record holds, from `from` (or the journal's first sequence, if
    /// later) up to the last record visited: a journal's sequences follow on, so these were
    /// lost to the damage. Sequences after the last record visited are not counted: nothing
    /// shows whether the journal held any.
    pub missing: u64,
    /// The first [`MISSING_RUNS_LISTED`] runs of them, in order, first and last sequence.
    pub missing_runs: Vec<(Sequence, Sequence)>,
}

impl Salvaged {
    /// Counts `record` as visited, and the sequences from `expected` up to it as missing. (A
    /// first record below `expected` is one a segment's name places after it: none missing.)
    fn visited(&mut self, expected: Sequence, record: Sequence) {
        debug_assert!(self.span.is_none_or(|(_, last)| record > last), "visited out of order");
        if record > expected {
            let last_missing = Sequence(record.0 - 1);
            self.missing += record.0 - expected.0;
            if self.missing_runs.len() < MISSING_RUNS_LISTED {
                self.missing_runs.push((expected, last_missing));
            }
        }
        self.records += 1;
        let first = self.span.map_or(record, |(first, _)| first);
        self.span = Some((first, record));
    }
}

/// Visits, in sequence order, every intact record with sequence `from` or later that the
/// segments of `source` hold, whatever damage lies between them: from record to record where
/// they follow on, and past unreadable bytes at each 16-byte boundary until a record checks
/// again. Only segments that may hold sequence `from` or later are read, each whole, one at a
/// time. A record at or below one already visited is not visited again, so sequences only go
/// up. Stops early when the visitor breaks. A segment whose header is damaged is searched all
/// the same, from where its records would start.
pub fn salvage<S: ReadSource>(
    source: &mut S,
    from: Sequence,
    visit: &mut dyn FnMut(&Record) -> ControlFlow<()>,
) -> Result<Salvaged, JournalError> {
    assert!(from.0 >= 1, "sequences start at 1");
    let segments = scan::sorted_segments(source)?;
    let mut salvaged = Salvaged::default();
    // Sequences below the journal's first are retired, not missing.
    let floor = segments.first().map_or(from, |(first, _)| from.max(*first));
    for (index, (_, name)) in segments.iter().enumerate() {
        // A segment whose successor starts at or before `from` ends before it.
        if segments.get(index + 1).is_some_and(|(next, _)| *next <= from) {
            continue;
        }
        let bytes = source
            .read_segment(name)
            .map_err(|e| JournalError::io(format!("reading {}", source.describe_file(name)), e))?;
        let before = salvaged.records;
        let flow = search_segment(&bytes, from, floor, &mut salvaged, visit);
        assert!(salvaged.records >= before, "records visited went down");
        if flow.is_break() {
            break;
        }
    }
    assert_eq!(salvaged.records == 0, salvaged.span.is_none(), "a span without records");
    assert!(salvaged.missing_runs.len() as u64 <= salvaged.missing, "a run of nothing missing");
    Ok(salvaged)
}

/// [`salvage`] within one segment's bytes; `floor` is the first sequence not retired.
fn search_segment(
    bytes: &[u8],
    from: Sequence,
    floor: Sequence,
    salvaged: &mut Salvaged,
    visit: &mut dyn FnMut(&Record) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let start = SEGMENT_HEADER_LEN.min(bytes.len());
    // Past the last non-zero byte there is nothing but the segment's preallocated zeros.
    let end = scan::last_nonzero(&bytes[start..]).map_or(start, |last| start + last + 1);
    let mut offset = start;
    while offset < end {
        assert_eq!(offset % RECORD_ALIGN, 0, "searching off a record boundary");
        let Some(record) = record_at(bytes, offset) else {
            salvaged.unreadable_bytes += RECORD_ALIGN as u64;
            offset += RECORD_ALIGN;
            continue;
        };
        offset += record.len as usize;
        let after = salvaged.span.is_none_or(|(_, last)| record.sequence > last);
        if record.sequence < from || !after {
            continue;
        }
        let expected = salvaged.span.map_or(floor, |(_, last)| last.next());
        salvaged.visited(expected, record.sequence);
        if visit(&record).is_break() {
            return ControlFlow::Break(());
        }
    }
    ControlFlow::Continue(())
}

/// The record starting at `offset`, if one is intact there: its header, CRC32C and length
/// check, and its payload decodes to a command a journal holds (one that changes state).
fn record_at(bytes: &[u8], offset: usize) -> Option<Record> {
    let (header, len) = format::check_record(&bytes[offset..])?;
    assert!(len >= RECORD_HEADER_LEN && offset + len <= bytes.len(), "a record past its bytes");
    let payload = &bytes[offset + RECORD_HEADER_LEN..][..header.payload_len];
    let command =
        ringfence_core::codec::decode_command(payload).ok().filter(Command::is_mutating)?;
    Some(Record {
        sequence: header.sequence,
        epoch: header.epoch,
        timestamp: header.timestamp,
        command,
        len: u32::try_from(len).expect("a record's length fits in u32"),
    })
}
