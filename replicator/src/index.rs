//! The primary's journal as the join decision asks about it (`position::JournalIndex`): read
//! from the live data directory (or any read source: the simulator's disk) with the
//! journal's read path.

use std::path::Path;

use ringfence_core::{Epoch, Sequence};
use ringfence_journal::error::JournalError;
use ringfence_journal::scan::{self, ReadOnlyDir, ReadSource};
use ringfence_journal::{snapshot, tail};

use crate::position::JournalIndex;

/// A live journal directory, read-only, up to the last record known to be whole.
pub struct DirIndex<S: ReadSource = ReadOnlyDir> {
    source: S,
    /// The last record the writer has appended whole (later bytes may be half-written).
    last: Sequence,
    first: Option<Sequence>,
}

impl DirIndex {
    /// The journal in `dir`, whose writer has appended up to `last`.
    pub fn open(dir: &Path, last: Sequence) -> Result<DirIndex, JournalError> {
        DirIndex::over(ReadOnlyDir::open(dir)?, last)
    }
}

impl<S: ReadSource> DirIndex<S> {
    /// The journal `source` holds, whose writer has appended up to `last`.
    pub fn over(source: S, last: Sequence) -> Result<DirIndex<S>, JournalError> {
        let first = scan::sorted_segments(&source)?.first().map(|(first, _)| *first);
        // A journal holding no record has a segment starting just past its last record: at 1
        // it holds nothing yet; later, the records before it were retired after a snapshot
        // (a rebuild or a carry-over to new settings with nothing after it), and a standby
        // that lacks them needs that snapshot.
        let first = first.filter(|&first| first <= last || first.0 > 1);
        Ok(DirIndex { source, last, first })
    }
}

impl<S: ReadSource> JournalIndex for DirIndex<S> {
    fn first(&mut self) -> Option<Sequence> {
        self.first
    }

    fn last(&mut self) -> Option<Sequence> {
        self.first.filter(|&first| first <= self.last).map(|_| self.last)
    }

    fn epoch_at(&mut self, sequence: Sequence) -> Option<Epoch> {
        if sequence > self.last {
            return None;
        }
        tail::epoch_at(&mut self.source, sequence).ok().flatten()
    }

    fn last_at_or_below_epoch(&mut self, epoch: Epoch) -> Option<Sequence> {
        let found = tail::last_at_or_below_epoch(&mut self.source, epoch).ok().flatten()?;
        Some(found.min(self.last))
    }

    fn snapshot_point(&mut self) -> Option<(Sequence, Epoch)> {
        // A snapshot past what the node reached is one recovery set aside, not its state.
        let snapshots = snapshot::list(&self.source).ok()?;
        let (_, name) = snapshots.iter().rev().find(|(through, _)| *through <= self.last)?;
        match snapshot::read_through(&self.source, name).ok()? {
            (through, Some(epoch)) => Some((through, epoch)),
            (_, None) => None,
        }
    }
}
