//! Where a joining standby's journal stops agreeing with its primary's, and so where streaming
//! starts: a pure decision over the two journals' positions.
//!
//! Records with the same sequence and epoch are the same record: only one primary sequences in
//! an epoch (a promotion raises it), and a standby stores its primary's bytes. So if the
//! standby's last record `(s, e)` is also the primary's record `s`, the journals agree up to
//! `s` and streaming starts at `s + 1`. If not, the standby's tail was written by a primary
//! that was superseded (in `sync` mode that tail was never acknowledged to anyone): the
//! primary's records with epoch at most `e` end at some sequence `x`, and everything the
//! standby holds after `min(s, x)` must go. The standby truncates and joins again; each round
//! strictly lowers its last epoch or reaches agreement, so the exchange ends (Raft's log
//! matching, one epoch at a time).

use ringfence_core::{Epoch, Sequence};

/// What the primary can answer about its own journal.
pub trait JournalIndex {
    /// The first sequence still held (older segments may be retired after a snapshot); for a
    /// journal holding no record, the sequence it starts at when the records before it were
    /// retired, and `None` when there were none.
    fn first(&mut self) -> Option<Sequence>;
    /// The last sequence held; `None` when the journal holds no record.
    fn last(&mut self) -> Option<Sequence>;
    /// The epoch of record `sequence`, if held.
    fn epoch_at(&mut self, sequence: Sequence) -> Option<Epoch>;
    /// The last sequence whose record has an epoch at most `epoch`.
    fn last_at_or_below_epoch(&mut self, epoch: Epoch) -> Option<Sequence>;
    /// The newest snapshot the node's state holds (through a sequence it reached) and the
    /// epoch of the record it was taken through, when the snapshot recorded it: the node holds
    /// that record in its state even where its journal no longer does (retired, or rebuilt
    /// after the snapshot).
    fn snapshot_point(&mut self) -> Option<(Sequence, Epoch)> {
        None
    }
}

/// Where the standby stands, as it says in its join message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyPosition {
    /// Its journal's last sequence (0 when empty).
    pub last_sequence: Sequence,
    /// That record's epoch (0 when empty).
    pub last_epoch: Epoch,
    /// The highest epoch it has promised to follow.
    pub promised: Epoch,
}

/// The primary's answer to a joining standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinDecision {
    /// The journals agree up to `from - 1`: stream from `from`.
    Stream {
        /// The first record to send.
        from: Sequence,
    },
    /// The standby holds records the primary does not: it must drop everything after
    /// `keep_through` and join again.
    Diverged {
        /// The last sequence the standby keeps.
        keep_through: Sequence,
    },
    /// The standby needs records the primary no longer holds (retired after a snapshot).
    NeedsSnapshot {
        /// The first record the primary holds.
        first_held: Sequence,
    },
    /// The standby promised a newer epoch than the primary's: this primary was superseded and
    /// must step down.
    Superseded {
        /// The standby's promise.
        promised: Epoch,
    },
}

/// Decides how a standby at `standby` joins a primary in `epoch` whose journal is `journal`.
pub fn decide(
    journal: &mut dyn JournalIndex,
    epoch: Epoch,
    standby: StandbyPosition,
) -> JoinDecision {
    if standby.promised > epoch {
        return JoinDecision::Superseded { promised: standby.promised };
    }
    let from = standby.last_sequence.next();
    let first = journal.first();
    if let Some(first) = first.filter(|&first| first > from) {
        // The primary cannot send `from`, nor confirm the standby's last record: it was
        // retired. The standby's records are not known to be wrong, so none is dropped.
        return JoinDecision::NeedsSnapshot { first_held: first };
    }
    // Record `from - 1` just before the first held one cannot be checked: it is behind a
    // snapshot. The first held record tells instead: of the standby's last epoch, it was
    // sequenced by the primary that sequenced the standby's last record, so the two agree up
    // to it. Of another epoch, nothing says whether the standby's last record is this
    // journal's (a primary may have retired up to a divergence just after taking office): the
    // standby takes the snapshot rather than stream on after a record that may not be ours,
    // unless that record is the one this primary's newest snapshot was taken through, with the
    // same epoch: then it is ours (a standby that installed that snapshot stands there).
    if let Some(first) = first.filter(|&first| first == from && standby.last_sequence.0 > 0)
        && journal.epoch_at(first) != Some(standby.last_epoch)
        && journal.snapshot_point() != Some((standby.last_sequence, standby.last_epoch))
    {
        return JoinDecision::NeedsSnapshot { first_held: first };
    }
    let checkable = first.is_some_and(|first| standby.last_sequence >= first);
    if standby.last_sequence.0 > 0 && (checkable || first.is_none()) {
        let agrees = journal.epoch_at(standby.last_sequence) == Some(standby.last_epoch);
        if !agrees {
            let ours = journal.last_at_or_below_epoch(standby.last_epoch).unwrap_or(Sequence(0));
            let keep_through = Sequence(ours.0.min(standby.last_sequence.0 - 1));
            assert!(keep_through < standby.last_sequence, "a divergence drops a record");
            return JoinDecision::Diverged { keep_through };
        }
    }
    JoinDecision::Stream { from }
}

/// Where a standby told that its journal diverged cuts it: after `keep_through`, unless it
/// can see that more is not its primary's. `end` is its journal's last record and epoch, and
/// `earlier` what it was told the round before, if it joined the same primary a round
/// before: its last record and epoch then, and the record it was told to keep through.
///
/// The primary keeps the standby through the last record of the standby's last epoch or
/// below in its own journal, and never through the standby's last record. Where its record
/// at that sequence is of a lower epoch than the standby's, it cannot see where the standby's
/// epoch begins, and names the record before the last: a standby that wrote many records in
/// an epoch the primary never held would drop them one a round. Told so twice running for
/// records of one epoch E, the standby knows better: the first answer says the primary holds
/// a record of E or below at or past the standby's new last record, the second that the
/// record there is not of E, so it is below E, and a journal's epochs never go down: the
/// primary holds no record of E at or below it. None of the standby's records of E is the
/// primary's, and it cuts before the first of them (before the first it still holds, when the
/// older ones were retired after a snapshot).
#[must_use]
pub fn divergence_cut(
    earlier: Option<((Sequence, Epoch), Sequence)>,
    end: (Sequence, Epoch),
    keep_through: Sequence,
    journal: &mut dyn JournalIndex,
) -> Sequence {
    let (last, epoch) = end;
    assert!(keep_through < last, "a divergence drops a record");
    let only_the_last = keep_through.next() == last;
    let walked = earlier.is_some_and(|((was_last, was_epoch), was_kept)| {
        was_epoch == epoch && was_kept == last && was_kept.next() == was_last
    });
    if !only_the_last || !walked || epoch.0 == 0 {
        return keep_through;
    }
    let below = journal.last_at_or_below_epoch(Epoch(epoch.0 - 1)).unwrap_or(Sequence(0));
    let first_held = journal.first().unwrap_or(Sequence(1));
    let cut = below.max(Sequence(first_held.0.saturating_sub(1)));
    cut.min(keep_through)
}

/// A journal held as the epoch of each record, from sequence `first` on: the index a test or
/// the simulator gives a primary instead of a data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochList {
    /// The sequence of the first record held.
    pub first: u64,
    /// The epoch of each record, in sequence order (never going down).
    pub epochs: Vec<u64>,
}

impl EpochList {
    /// Records 1..=`last`, all in `epoch`.
    #[must_use]
    pub fn flat(last: u64, epoch: u64) -> EpochList {
        let len = usize::try_from(last).expect("a journal that fits memory");
        EpochList { first: 1, epochs: vec![epoch; len] }
    }
}

impl JournalIndex for EpochList {
    fn first(&mut self) -> Option<Sequence> {
        (!self.epochs.is_empty() || self.first > 1).then_some(Sequence(self.first))
    }
    fn last(&mut self) -> Option<Sequence> {
        (!self.epochs.is_empty()).then(|| Sequence(self.first + self.epochs.len() as u64 - 1))
    }
    fn epoch_at(&mut self, sequence: Sequence) -> Option<Epoch> {
        let index = sequence.0.checked_sub(self.first)?;
        self.epochs.get(usize::try_from(index).ok()?).map(|&e| Epoch(e))
    }
    fn last_at_or_below_epoch(&mut self, epoch: Epoch) -> Option<Sequence> {
        let count = self.epochs.iter().take_while(|&&e| e <= epoch.0).count() as u64;
        (count > 0).then(|| Sequence(self.first + count - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(last: u64, epoch: u64, promised: u64) -> StandbyPosition {
        StandbyPosition {
            last_sequence: Sequence(last),
            last_epoch: Epoch(epoch),
            promised: Epoch(promised),
        }
    }

    /// Plays the exchange to the end: the standby truncates as told until it may stream.
    fn rejoin(primary: &mut EpochList, standby: &mut Vec<u64>, epoch: u64) -> (u64, usize) {
        for round in 1..10 {
            let last = standby.len() as u64;
            let at = position(last, standby.last().copied().unwrap_or(0), 1);
            match decide(primary, Epoch(epoch), at) {
                JoinDecision::Stream { from } => return (from.0, round),
                JoinDecision::Diverged { keep_through } => {
                    standby.truncate(usize::try_from(keep_through.0).unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("the exchange did not end");
    }

    #[test]
    fn a_standby_that_is_a_prefix_streams_from_its_next_record() {
        // Goal: the common case, a standby behind on the same history.
        let mut primary = EpochList { first: 1, epochs: vec![1, 1, 1, 2, 2] };
        assert_eq!(
            decide(&mut primary, Epoch(2), position(3, 1, 1)),
            JoinDecision::Stream { from: Sequence(4) }
        );
        assert_eq!(
            decide(&mut primary, Epoch(2), position(0, 0, 0)),
            JoinDecision::Stream { from: Sequence(1) }
        );
        assert_eq!(
            decide(&mut primary, Epoch(2), position(5, 2, 2)),
            JoinDecision::Stream { from: Sequence(6) }
        );
    }

    #[test]
    fn an_old_primary_drops_the_tail_the_new_primary_never_received() {
        // Goal: the old primary wrote 4..=6 in epoch 1 that the promoted standby never got;
        // the new primary wrote 4..=5 in epoch 2. The old primary keeps 1..=3 only.
        let mut primary = EpochList { first: 1, epochs: vec![1, 1, 1, 2, 2] };
        let mut old = vec![1, 1, 1, 1, 1, 1];
        let (from, rounds) = rejoin(&mut primary, &mut old, 2);
        assert_eq!((from, old.len()), (4, 3));
        assert_eq!(rounds, 2);
    }

    #[test]
    fn a_tail_longer_than_the_new_history_is_cut_to_the_common_prefix() {
        // Goal: the standby's last sequence is beyond the primary's whole journal.
        let mut primary = EpochList { first: 1, epochs: vec![1, 1, 3] };
        let mut old = vec![1, 1, 2, 2, 2, 2, 2, 2];
        let (from, _) = rejoin(&mut primary, &mut old, 3);
        assert_eq!((from, old.len()), (3, 2));
    }

    #[test]
    fn divergence_over_several_epochs_converges() {
        // Goal: each round lowers the standby's epoch until the journals agree.
        let mut primary = EpochList { first: 1, epochs: vec![1, 1, 4, 4, 4, 4, 4] };
        let mut old = vec![1, 1, 2, 2, 3, 3];
        let (from, _) = rejoin(&mut primary, &mut old, 4);
        assert_eq!((from, old.len()), (3, 2));
    }

    /// [`rejoin`], the standby cutting as `divergence_cut` says, remembering the round before.
    fn rejoin_cutting(primary: &mut EpochList, standby: &mut Vec<u64>, epoch: u64) -> (u64, usize) {
        let mut earlier = None;
        for round in 1..10 {
            let last = standby.len() as u64;
            let last_epoch = standby.last().copied().unwrap_or(0);
            match decide(primary, Epoch(epoch), position(last, last_epoch, 1)) {
                JoinDecision::Stream { from } => return (from.0, round),
                JoinDecision::Diverged { keep_through } => {
                    let end = (Sequence(last), Epoch(last_epoch));
                    let mut own = EpochList { first: 1, epochs: standby.clone() };
                    let cut = divergence_cut(earlier, end, keep_through, &mut own);
                    earlier = Some((end, keep_through));
                    standby.truncate(usize::try_from(cut.0).unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("the exchange did not end");
    }

    #[test]
    fn a_standby_that_led_an_epoch_the_primary_never_held_drops_it_in_two_rounds() {
        // Goal: the standby led epoch 3 alone (under `async`) and wrote 4..=40; the primary
        // holds epoch 2 there, then 4. Told one record a round, the standby would take 37
        // rounds (a restart each); the second answer tells it that none of its epoch-3 records
        // is the primary's, and the third round streams. Both end at the same prefix.
        let mut primary = EpochList { first: 1, epochs: [vec![2; 45], vec![4; 5]].concat() };
        let mut cutting = [vec![2; 3], vec![3; 37]].concat();
        let one_a_round = JoinDecision::Diverged { keep_through: Sequence(39) };
        assert_eq!(decide(&mut primary, Epoch(4), position(40, 3, 3)), one_a_round);
        let (from, rounds) = rejoin_cutting(&mut primary, &mut cutting, 4);
        assert_eq!((from, cutting.len(), rounds), (4, 3, 3));
    }

    #[test]
    fn a_cut_never_drops_a_record_the_primary_holds() {
        // Goal: the cut goes past the primary's answer only where the standby's records are
        // not the primary's. An old primary with a one-record tail keeps the rest of its epoch
        // (the primary holds it); a second one-record answer in another epoch is not a walk;
        // nor one that does not follow from the round before.
        let mut primary = EpochList { first: 1, epochs: vec![1, 1, 1, 2, 2] };
        let mut old = vec![1, 1, 1, 1];
        assert_eq!(rejoin_cutting(&mut primary, &mut old, 2), (4, 2));
        assert_eq!(old.len(), 3);
        let mut own = EpochList { first: 1, epochs: vec![1, 2, 3, 3] };
        let end = (Sequence(4), Epoch(3));
        let other_epoch = Some(((Sequence(5), Epoch(4)), Sequence(4)));
        assert_eq!(divergence_cut(other_epoch, end, Sequence(3), &mut own), Sequence(3));
        let not_after = Some(((Sequence(7), Epoch(3)), Sequence(6)));
        assert_eq!(divergence_cut(not_after, end, Sequence(3), &mut own), Sequence(3));
        let wider = Some(((Sequence(5), Epoch(3)), Sequence(4)));
        assert_eq!(divergence_cut(wider, end, Sequence(2), &mut own), Sequence(2), "exact already");
        assert_eq!(divergence_cut(wider, end, Sequence(3), &mut own), Sequence(2), "a walk");
    }

    #[test]
    fn a_walk_over_retired_records_cuts_to_before_the_first_held() {
        // Goal: the standby's journal starts at 10 (older records retired after a snapshot),
        // every record it holds of the epoch the primary never held: it drops them all, and
        // the join then asks for the primary's snapshot or streams from the snapshot's end.
        let mut own = EpochList { first: 10, epochs: vec![3; 6] };
        let earlier = Some(((Sequence(16), Epoch(3)), Sequence(15)));
        let cut = divergence_cut(earlier, (Sequence(15), Epoch(3)), Sequence(14), &mut own);
        assert_eq!(cut, Sequence(9));
    }

    #[test]
    fn a_standby_behind_retired_segments_needs_a_snapshot() {
        // Goal: records the standby needs are gone from the primary's journal.
        // and nothing the standby holds is dropped for it.
        let mut primary = EpochList { first: 100, epochs: vec![1; 10] };
        let needs = JoinDecision::NeedsSnapshot { first_held: Sequence(100) };
        assert_eq!(decide(&mut primary, Epoch(1), position(10, 1, 1)), needs);
        assert_eq!(decide(&mut primary, Epoch(1), position(0, 0, 1)), needs);
        assert_eq!(
            decide(&mut primary, Epoch(1), position(99, 1, 1)),
            JoinDecision::Stream { from: Sequence(100) }
        );
    }

    #[test]
    fn a_standby_whose_last_record_was_retired_streams_only_if_the_next_is_of_its_epoch() {
        // Goal: the primary retired its records through 99 after a snapshot; the standby's
        // last record is 99, which the primary can no longer compare. Its first record, 100,
        // tells: of the standby's last epoch, the same primary sequenced both, so they agree.
        // Of a later epoch, the primary may have taken office at 99 and written its own 99
        // (a promoted standby's first record, then a snapshot and retirement past it): the
        // standby may hold another 99, so it takes the snapshot instead of streaming from 100.
        let mut primary = EpochList { first: 100, epochs: vec![2; 10] };
        let stream = JoinDecision::Stream { from: Sequence(100) };
        let needs = JoinDecision::NeedsSnapshot { first_held: Sequence(100) };
        assert_eq!(decide(&mut primary, Epoch(2), position(99, 2, 2)), stream);
        assert_eq!(decide(&mut primary, Epoch(2), position(99, 1, 1)), needs);
        assert_eq!(decide(&mut primary, Epoch(3), position(99, 3, 3)), needs, "a later epoch");
    }

    /// A journal over a snapshot through `.1`, whose last record's epoch the snapshot recorded.
    struct OverSnapshot(EpochList, (Sequence, Epoch));

    impl JournalIndex for OverSnapshot {
        fn first(&mut self) -> Option<Sequence> {
            self.0.first()
        }
        fn last(&mut self) -> Option<Sequence> {
            self.0.last()
        }
        fn epoch_at(&mut self, sequence: Sequence) -> Option<Epoch> {
            self.0.epoch_at(sequence)
        }
        fn last_at_or_below_epoch(&mut self, epoch: Epoch) -> Option<Sequence> {
            self.0.last_at_or_below_epoch(epoch)
        }
        fn snapshot_point(&mut self) -> Option<(Sequence, Epoch)> {
            Some(self.1)
        }
    }

    #[test]
    fn a_standby_at_the_primarys_snapshot_streams_on_though_the_next_record_is_of_a_new_epoch() {
        // Goal: a standby that installed this primary's snapshot through 250 (whose record 250
        // is of epoch 2) stands at (250, 2). The primary, promoted in epoch 4 since, holds
        // 251.. of epoch 4 only: its snapshot's record tells that the standby's last record is
        // its own, so the standby streams from 251 rather than fetching the same snapshot
        // again and again. Another epoch at 250, or none known, still takes the snapshot.
        let journal = EpochList { first: 251, epochs: vec![4; 10] };
        let mut primary = OverSnapshot(journal, (Sequence(250), Epoch(2)));
        let stream = JoinDecision::Stream { from: Sequence(251) };
        let needs = JoinDecision::NeedsSnapshot { first_held: Sequence(251) };
        assert_eq!(decide(&mut primary, Epoch(4), position(250, 2, 2)), stream);
        assert_eq!(decide(&mut primary, Epoch(4), position(250, 1, 2)), needs);
        assert_eq!(decide(&mut primary, Epoch(4), position(250, 0, 2)), needs, "epoch unknown");
        assert_eq!(decide(&mut primary, Epoch(4), position(249, 2, 2)), needs, "before it");
    }

    #[test]
    fn a_primary_holding_no_record_after_its_snapshot_sends_a_standby_behind_it_for_it() {
        // Goal: a journal rebuilt, or carried over to new settings, right after its snapshot
        // through 250 holds no record and starts at 251. A fresh standby, or one behind 250,
        // takes the snapshot rather than a stream of records the primary no longer has; one
        // that stands at the snapshot streams from 251; one past it holds records the primary
        // never had, and drops them.
        let journal = EpochList { first: 251, epochs: Vec::new() };
        assert_eq!((journal.clone().first(), journal.clone().last()), (Some(Sequence(251)), None));
        let mut primary = OverSnapshot(journal, (Sequence(250), Epoch(2)));
        let needs = JoinDecision::NeedsSnapshot { first_held: Sequence(251) };
        assert_eq!(decide(&mut primary, Epoch(3), position(0, 0, 2)), needs, "a fresh standby");
        assert_eq!(decide(&mut primary, Epoch(3), position(249, 2, 2)), needs, "behind it");
        let stream = JoinDecision::Stream { from: Sequence(251) };
        assert_eq!(decide(&mut primary, Epoch(3), position(250, 2, 2)), stream);
        let past = decide(&mut primary, Epoch(3), position(252, 2, 2));
        assert!(
            matches!(past, JoinDecision::Diverged { keep_through } if keep_through < Sequence(252))
        );
        // A journal that never held a record has nothing retired: a fresh standby streams.
        let mut new = EpochList { first: 1, epochs: Vec::new() };
        let from_one = JoinDecision::Stream { from: Sequence(1) };
        assert_eq!(decide(&mut new, Epoch(1), position(0, 0, 1)), from_one);
    }

    #[test]
    fn a_primary_behind_a_standbys_promise_is_superseded() {
        // Goal: the fence: a standby that promised epoch 3 never follows epoch 2.
        let mut primary = EpochList { first: 1, epochs: vec![1, 2] };
        assert_eq!(
            decide(&mut primary, Epoch(2), position(2, 2, 3)),
            JoinDecision::Superseded { promised: Epoch(3) }
        );
    }
}
