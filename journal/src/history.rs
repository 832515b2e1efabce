//! A journal's epoch history: the first sequence of each epoch its records were written in.
//!
//! A record is named by its sequence and epoch in every journal of a cluster, and a journal's
//! epochs never go down, so the history says which record a journal holds at any sequence it
//! covers — after the records themselves were retired. A snapshot carries the history of the
//! records it includes ([`crate::snapshot::SnapshotMeta::history`]). A standby whose journal
//! is replaced by its primary's snapshot learns from it which of its own records were never
//! the primary's, and keeps those in `rollback/` rather than drop them unseen: after an
//! `async` failover, the writes an old primary acknowledged alone.

use ringfence_core::{Epoch, Sequence};

/// The epochs of a journal's records up to some sequence, each with the first sequence written
/// in it. Known from the first entry's sequence on: what came before is not recorded (a
/// journal that started from a snapshot written before snapshots carried a history, or the
/// oldest entries dropped past [`EpochHistory::MAX`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory {
    /// `(epoch, first sequence)`, in increasing sequence; no two neighbours of one epoch.
    starts: Vec<(Epoch, Sequence)>,
}

impl EpochHistory {
    /// The most entries kept; past it the oldest goes. One per epoch change in the journal: a
    /// promotion, or a run of a primary or a node alone that journals anything.
    pub const MAX: usize = 1 << 16;

    /// Builds a history from entries read back, or says what is wrong with them.
    pub fn from_starts(starts: Vec<(Epoch, Sequence)>) -> Result<EpochHistory, String> {
        if starts.len() > Self::MAX {
            return Err(format!("{} entries, past the most kept ({})", starts.len(), Self::MAX));
        }
        if starts.iter().any(|(epoch, sequence)| epoch.0 == 0 || sequence.0 == 0) {
            return Err("an entry of epoch or sequence zero".to_owned());
        }
        let ordered = starts.windows(2).all(|pair| pair[0].1 < pair[1].1 && pair[0].0 < pair[1].0);
        if !ordered {
            return Err("entries out of order".to_owned());
        }
        let history = EpochHistory { starts };
        // Each entry's epoch is the one its first sequence reads back.
        debug_assert!(
            history.starts.iter().all(|&(epoch, first)| history.epoch_at(first) == Some(epoch))
        );
        Ok(history)
    }

    /// The entries: each epoch, with the first sequence written in it.
    #[must_use]
    pub fn starts(&self) -> &[(Epoch, Sequence)] {
        &self.starts
    }

    /// The first sequence the history covers; `None` when it records nothing.
    #[must_use]
    pub fn known_from(&self) -> Option<Sequence> {
        let first = self.starts.first().map(|&(_, sequence)| sequence);
        // Records start at sequence 1.
        assert!(first.is_none_or(|first| first.0 > 0), "a history from sequence 0");
        first
    }

    /// Notes record `sequence` of `epoch`, the next record after every one noted so far.
    ///
    /// Records are journaled in epoch 1 and later, and a journal's epochs never go down. A
    /// record that breaks either (a journal put together by hand: its checksums hold, and the
    /// readers pass it) makes what came before it unknown: the history starts over after it,
    /// or at it, rather than name a wrong epoch for any record.
    pub fn note(&mut self, sequence: Sequence, epoch: Epoch) {
        assert!(sequence.0 > 0, "record {sequence} noted");
        if let Some(&(last, start)) = self.starts.last() {
            assert!(sequence > start, "record {sequence} noted after {start}");
            if last == epoch {
                return;
            }
            if epoch < last {
                self.starts.clear();
            }
        }
        if epoch.0 == 0 {
            self.starts.clear();
            return;
        }
        if self.starts.len() == Self::MAX {
            self.starts.remove(0);
        }
        self.starts.push((epoch, sequence));
        assert!(self.starts.len() <= Self::MAX, "a history past its bound");
        // The record noted reads back with its epoch.
        debug_assert_eq!(self.epoch_at(sequence), Some(epoch), "record {sequence} noted apart");
    }

    /// The epoch of record `sequence`, which the history's journal holds up to its end: `None`
    /// before the first entry.
    #[must_use]
    pub fn epoch_at(&self, sequence: Sequence) -> Option<Epoch> {
        let after = self.starts.partition_point(|&(_, start)| start <= sequence);
        let found = after.checked_sub(1).map(|index| self.starts[index].0);
        assert!(
            found.is_none() || self.known_from() <= Some(sequence),
            "an epoch before the first"
        );
        found
    }

    /// The last sequence at or before `through` (the journal's end) whose record has an epoch
    /// at or below `epoch`; `None` when no record the history covers has.
    #[must_use]
    pub fn last_at_or_below(&self, epoch: Epoch, through: Sequence) -> Option<Sequence> {
        let index = self.starts.iter().rposition(|&(at, start)| at <= epoch && start <= through)?;
        let end = self.starts.get(index + 1).map_or(through, |&(_, next)| Sequence(next.0 - 1));
        let end = end.min(through);
        assert!(end >= self.starts[index].1, "an epoch that ends before it starts");
        // The two look-ups agree: the record found is of the epoch asked or below.
        debug_assert!(self.epoch_at(end).is_some_and(|at| at <= epoch), "{end} above {epoch}");
        Some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u64, u64)]) -> EpochHistory {
        let mut history = EpochHistory::default();
        for &(epoch, sequence) in entries {
            history.note(Sequence(sequence), Epoch(epoch));
        }
        history
    }

    #[test]
    fn a_record_s_epoch_is_the_one_its_sequence_was_written_in() {
        // Records 1..=9 in epoch 2, 10..=19 in epoch 5, 20.. in epoch 6.
        let history = history(&[(2, 1), (2, 4), (5, 10), (5, 15), (6, 20)]);
        assert_eq!(
            history.starts(),
            [(Epoch(2), Sequence(1)), (Epoch(5), Sequence(10)), (Epoch(6), Sequence(20))]
        );
        assert_eq!(history.epoch_at(Sequence(9)), Some(Epoch(2)));
        assert_eq!(history.epoch_at(Sequence(10)), Some(Epoch(5)));
        assert_eq!(history.epoch_at(Sequence(25)), Some(Epoch(6)));
        assert_eq!(history.last_at_or_below(Epoch(4), Sequence(30)), Some(Sequence(9)));
        assert_eq!(history.last_at_or_below(Epoch(5), Sequence(30)), Some(Sequence(19)));
        assert_eq!(history.last_at_or_below(Epoch(9), Sequence(30)), Some(Sequence(30)));
        assert_eq!(history.last_at_or_below(Epoch(1), Sequence(30)), None);
        // Bounded by the journal's end.
        assert_eq!(history.last_at_or_below(Epoch(5), Sequence(12)), Some(Sequence(12)));
    }

    #[test]
    fn a_history_is_known_from_its_first_entry_and_keeps_its_newest_entries() {
        let partial = history(&[(3, 40), (4, 50)]);
        assert_eq!(partial.known_from(), Some(Sequence(40)));
        assert_eq!(partial.epoch_at(Sequence(39)), None);
        assert_eq!(partial.epoch_at(Sequence(40)), Some(Epoch(3)));
        let mut long = EpochHistory::default();
        for epoch in 1..=EpochHistory::MAX as u64 + 2 {
            long.note(Sequence(epoch), Epoch(epoch));
        }
        assert_eq!(long.starts().len(), EpochHistory::MAX);
        assert_eq!(long.known_from(), Some(Sequence(3)));
        assert_eq!(long.epoch_at(Sequence(2)), None);
    }

    #[test]
    fn a_record_of_epoch_zero_or_going_back_makes_what_came_before_unknown() {
        // Goal: a journal put together by hand (its checksums hold) never makes the history
        // name a wrong epoch, nor panics its writer: what came before such a record is
        // forgotten.
        let mut back = history(&[(2, 1), (5, 10)]);
        back.note(Sequence(12), Epoch(4));
        assert_eq!(back.starts(), [(Epoch(4), Sequence(12))]);
        assert_eq!(back.epoch_at(Sequence(11)), None);
        let mut zero = history(&[(2, 1)]);
        zero.note(Sequence(5), Epoch(0));
        assert_eq!(zero.known_from(), None);
        zero.note(Sequence(6), Epoch(2));
        assert_eq!(zero.starts(), [(Epoch(2), Sequence(6))]);
    }

    #[test]
    fn entries_read_back_are_checked() {
        let good = vec![(Epoch(1), Sequence(1)), (Epoch(3), Sequence(8))];
        assert_eq!(EpochHistory::from_starts(good.clone()).map(|h| h.starts().to_vec()), Ok(good));
        let unordered = vec![(Epoch(1), Sequence(8)), (Epoch(3), Sequence(8))];
        assert!(EpochHistory::from_starts(unordered).is_err());
        let repeated = vec![(Epoch(1), Sequence(1)), (Epoch(1), Sequence(8))];
        assert!(EpochHistory::from_starts(repeated).is_err());
        let going_down = vec![(Epoch(3), Sequence(1)), (Epoch(2), Sequence(8))];
        assert!(EpochHistory::from_starts(going_down).is_err());
        assert!(EpochHistory::from_starts(vec![(Epoch(0), Sequence(1))]).is_err());
    }
}
