//! Following a live journal: records read as the writer appends them, for the replication
//! sender, and the two look-ups the replication handshake makes.
//!
//! The writer runs on another thread and appends through its own map of the segment; a
//! [`Tail`] maps the same file, so the writer's stores are visible to it once the caller has
//! learnt, through whatever synchronises the two threads, that they were made. The caller says
//! how far that is: `through`, the highest sequence fully appended. The tail reads nothing past
//! it, because the bytes after it may be a record half written.
//!
//! The tail finds records as the writer lays them out. Records fill a segment front to back;
//! a record that does not fit starts a new segment named by its sequence, and the rest of the
//! old segment stays zero. So where record `next` should be, an end marker means it is the
//! first record of the segment named `next` (a `journal rebuild` leaves a first segment that
//! ends early, with room after its records). Segments are located by listing the directory,
//! not by the manifest: retention rewrites the manifest before it removes the files, so a
//! listing can show a retired segment for a moment, and its records are still the journal's.
//! A segment retired while the tail has it mapped stays readable through the map. What is on
//! disk is checked, never asserted: a segment found cut short is reported as damage (one cut
//! short *while* mapped would fault the reader, as it would the writer; ringfence never does).
//!
//! [`epoch_at`] and [`last_at_or_below_epoch`] take no `through`: they read every intact record
//! they need, and in the last segment they treat a record that fails its checks as the one the
//! writer is writing (a live journal's last record may be half written), so they answer from
//! what is complete. A failure anywhere else is corruption.

use std::io;
use std::ops::ControlFlow;

use ringfence_core::{Epoch, Sequence};

use crate::error::{Damage, JournalError};
use crate::format::{
    self, HeaderProblem, RECORD_ALIGN, RECORD_LEN_MAX, RECORD_PAYLOAD_MAX, SEGMENT_HEADER_LEN,
};
use crate::history::EpochHistory;
use crate::scan::{ReadSource, sorted_segments};

/// Listings made before a look-up gives up on a segment that vanished between being listed and
/// being mapped. Retention removes only the oldest segments, after rewriting the manifest, so a
/// second listing no longer shows them; a third covers a retirement that follows at once.
const LISTING_ATTEMPTS: u32 = 3;

/// A reader that follows the journal record by record as the writer appends.
pub struct Tail<S: ReadSource> {
    source: S,
    /// The sequence of the next record to read.
    next: Sequence,
    /// The epoch of the last record read (`Epoch(0)` before the first): epochs never go back.
    epoch: Epoch,
    /// The segment holding record `next`, mapped; `None` until the first read finds it.
    current: Option<Current<S::Bytes>>,
}

/// A mapped segment and where record [`Tail::next`] is (or will be) in it.
struct Current<B> {
    name: String,
    bytes: B,
    /// Byte offset of record `next`, on a record boundary.
    offset: usize,
    /// Byte offset of the record before `next`, when this segment holds it.
    last: Option<usize>,
}

impl<S: ReadSource> Tail<S> {
    /// A tail whose first record will be `next`. Refused with [`JournalError::Retired`], naming
    /// the first sequence held, when `next` is below the journal's first segment (retired after
    /// a snapshot: the reader needs a snapshot instead). `next` may be one past the journal's
    /// last record. The segment is found and mapped by the first [`Tail::read`] that has a
    /// record to read, so nothing past a `through` is ever read to position the tail.
    pub fn open(source: S, next: Sequence) -> Result<Tail<S>, JournalError> {
        if next.0 == 0 {
            return Err(JournalError::Options(
                "a tail cannot start at sequence 0: journal sequences start at 1".to_owned(),
            ));
        }
        let segments = sorted_segments(&source)?;
        if let Some(&(first, _)) = segments.first().filter(|(first, _)| next < *first) {
            return Err(retired(&source, next, first));
        }
        // The journal holds `next`, or will: it is not below the first segment.
        assert!(segments.first().is_none_or(|(first, _)| *first <= next), "a retired start");
        Ok(Tail { source, next, epoch: Epoch(0), current: None })
    }

    /// The sequence of the next record [`Tail::read`] will return.
    #[must_use]
    pub fn next(&self) -> Sequence {
        assert!(self.next.0 >= 1, "sequences start at 1");
        self.next
    }

    /// Whether record `next()` is certainly not written yet, as far as one look at the mapped
    /// segment and one look-up of a name tell: the tail stands at an end marker with room for
    /// the largest record after it, where the writer puts record `next()` unless a segment is
    /// named by it (as after a `journal rebuild`), and none is. For a reader in another process
    /// to poll between calls to [`Tail::read_written`], which it should still make now and
    /// then: that call also judges what else an end can be (a segment missing, retention, a
    /// segment replaced under the map).
    #[must_use]
    pub fn at_writers_position(&self) -> bool {
        let Some(current) = self.current.as_ref() else { return false };
        // A segment's records end inside it.
        assert!(current.offset <= current.bytes.len(), "the next record past the segment");
        let room = current.bytes.len() - current.offset >= RECORD_LEN_MAX;
        room && format::is_end_marker(&current.bytes[current.offset..])
            && self
                .source
                .file_len(&format::segment_name(self.next))
                .is_err_and(|error| error.kind() == io::ErrorKind::NotFound)
    }

    /// Whether something is written where record `next()` goes in the mapped segment: a
    /// record, one partly written, or damage. A reader that finds no record there for long
    /// looks for damage ([`crate::scan`]): a writer finishes a record in microseconds.
    #[must_use]
    pub fn written_at_next(&self) -> bool {
        let Some(current) = self.current.as_ref() else { return false };
        assert!(current.offset <= current.bytes.len(), "the next record past the segment");
        !format::is_end_marker(&current.bytes[current.offset..])
    }

    /// Where the last record read (record `next() - 1`) lies: its segment's name and its byte
    /// offset there, for [`epoch_at_place`]. `None` when the tail has not mapped that segment
    /// (before its first read, or once it moved on to a segment with nothing read yet).
    #[must_use]
    pub fn last_place(&self) -> Option<(&str, usize)> {
        let current = self.current.as_ref()?;
        let last = current.last?;
        // The last record read lies before the next one's place.
        assert!(last < current.offset, "the last record read at or past the next one");
        Some((current.name.as_str(), last))
    }

    /// Appends to `out` the stored bytes of records `next()..=through`, whole records exactly
    /// as the writer framed them, and returns how many. Stops before `out` (all of it, not only
    /// what this call appends) would grow past `max_bytes`, but appends at least one record if
    /// `next() <= through`; returns 0 when `next() > through`.
    ///
    /// `through` must be a sequence the writer has fully appended, learnt through something that
    /// orders the writer's stores before this call. Each record is checked (length, CRC,
    /// padding, sequence, epoch not going back; payloads are left to the receiver). A failure
    /// is [`JournalError::Corrupt`] naming the file, offset and sequence (or
    /// [`JournalError::Retired`] if retention removed the next segment while the tail lagged).
    /// Records read before a failure are returned first; the next call starts at the failing
    /// record and reports it.
    pub fn read(
        &mut self,
        through: Sequence,
        out: &mut Vec<u8>,
        max_bytes: usize,
    ) -> Result<u32, JournalError> {
        let (from, len_before) = (self.next, out.len());
        let mut count: u32 = 0;
        while self.next <= through && count < u32::MAX {
            match self.read_one(through, out, max_bytes, count == 0) {
                Ok(true) => count += 1,
                Ok(false) => break,
                // The records before the failure go out first; the tail stays at the record
                // that failed, so the next call meets the failure again and reports it.
                Err(_) if count > 0 => break,
                Err(error) => return Err(error),
            }
        }
        // Whole records only, one per sequence, and at least one whenever one was due.
        assert_eq!(self.next.0 - from.0, u64::from(count), "records skipped or repeated");
        assert_eq!((out.len() - len_before) % RECORD_ALIGN, 0, "a part of a record appended");
        assert!(count > 0 || from > through, "nothing read though a record was due");
        Ok(count)
    }

    /// [`Tail::read`] for a reader that cannot learn how far the writer got (one in another
    /// process, such as `replay --follow`): appends the records from `next()` on that are
    /// complete, up to `max_bytes` as `read` does, and returns how many (0: none yet). Where the
    /// records stop in the journal's last segment (the end marker, a segment header not yet
    /// written, or a record failing its checks, which may be the one being written) it stops
    /// quietly, as [`epoch_at`] does. The same anywhere before the last segment is corruption,
    /// as is a record out of sequence or whose epoch went back.
    pub fn read_written(
        &mut self,
        out: &mut Vec<u8>,
        max_bytes: usize,
    ) -> Result<u32, JournalError> {
        let (from, len_before) = (self.next, out.len());
        let count = self.read_complete(out, max_bytes)?;
        // Whole records only, one per sequence, as `read` hands them over.
        assert_eq!(self.next.0 - from.0, u64::from(count), "records skipped or repeated");
        assert_eq!((out.len() - len_before) % RECORD_ALIGN, 0, "a part of a record appended");
        Ok(count)
    }

    /// [`Tail::read_written`]'s work: `read` to the end of what is complete, and a judgement
    /// of what stopped it when that is the first record asked for.
    fn read_complete(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> Result<u32, JournalError> {
        // A record seen failing while a later segment exists is read once more: the writer may
        // have finished it and started that segment between the read and the listing.
        for second_look in [false, true] {
            let error = match self.read(Sequence(u64::MAX), out, max_bytes) {
                // Stopped by `max_bytes` or by what follows the records read, which the next
                // call meets first.
                Ok(count) => {
                    // Everything is due: a record, or the error that stops the first.
                    assert!(count > 0, "a read with every record due returned none");
                    return Ok(count);
                }
                Err(error) => error,
            };
            if !self.may_be_in_progress(&error) {
                return Err(error);
            }
            let segments = sorted_segments(&self.source)?;
            let later = segments.last().is_some_and(|(first, _)| *first > self.next);
            if !later {
                return Ok(0);
            }
            if second_look {
                return Err(error);
            }
        }
        unreachable!("the second look returns")
    }

    /// Whether `error`, met reading record `next`, is what the writer's position looks like
    /// from another process: nothing written there yet, or a record only partly written.
    fn may_be_in_progress(&self, error: &JournalError) -> bool {
        assert!(self.next.0 >= 1, "sequences start at 1");
        let JournalError::Corrupt { sequence, damage, .. } = error else { return false };
        *sequence == self.next
            && matches!(
                damage,
                Damage::EndsEarly
                    | Damage::Checksum
                    | Damage::Length
                    | Damage::SegmentHeader(HeaderProblem::Zeroed | HeaderProblem::TooShort)
            )
    }

    /// Appends record `next` (complete: `next <= through`) to `out`, unless it would take `out`
    /// past `max_bytes` and the record is not `required`; whether it did.
    fn read_one(
        &mut self,
        through: Sequence,
        out: &mut Vec<u8>,
        max_bytes: usize,
        required: bool,
    ) -> Result<bool, JournalError> {
        assert!(self.next <= through, "a record read past what is complete");
        loop {
            if self.current.is_none() {
                self.position(through)?;
            }
            let current = self.current.as_mut().expect("a segment is mapped once positioned");
            let damage = match step(&current.bytes, current.offset, self.next, self.epoch) {
                Step::Record { epoch, len } => {
                    if !required && out.len() + len > max_bytes {
                        return Ok(false);
                    }
                    out.extend_from_slice(&current.bytes[current.offset..current.offset + len]);
                    current.last = Some(current.offset);
                    current.offset += len;
                    // `check_record` found the whole record inside the segment.
                    assert!(current.offset <= current.bytes.len(), "read past the segment's end");
                    self.next = self.next.next();
                    self.epoch = epoch;
                    return Ok(true);
                }
                // A segment is named by its first record: at its start, that record is due.
                Step::End if current.offset == SEGMENT_HEADER_LEN => Damage::EndsEarly,
                Step::End => {
                    self.follow()?;
                    continue;
                }
                Step::Damaged(damage) => damage,
            };
            let (name, offset) = (current.name.clone(), current.offset as u64);
            return Err(corrupt(&self.source, &name, offset, self.next, damage));
        }
    }

    /// Maps the segment holding record `next` (which `through` says is complete) and steps to
    /// it: every record before it in the segment is complete too.
    fn position(&mut self, through: Sequence) -> Result<(), JournalError> {
        assert!(self.current.is_none(), "positioned twice");
        assert!(self.next <= through, "positioned for a record not yet appended");
        let next = self.next;
        let (current, epoch) =
            with_listing(&mut self.source, |source, segments| position_in(source, segments, next))?;
        // The walk stopped at record `next`'s place, on a record boundary.
        assert_eq!(current.offset % RECORD_ALIGN, 0, "positioned off a record boundary");
        self.current = Some(current);
        self.epoch = epoch;
        Ok(())
    }

    /// Moves from the current segment, whose records have ended, to the segment named by record
    /// `next`, which the writer started when that record did not fit.
    fn follow(&mut self) -> Result<(), JournalError> {
        let old = self.current.take().expect("following on from a mapped segment");
        let (old_name, old_offset, old_last) = (old.name, old.offset as u64, old.last);
        // `read_one` follows on only from a segment that held a record: each is named by one.
        assert!(old.offset > SEGMENT_HEADER_LEN, "followed on from a segment with no record");
        // The old map goes before the new one is made: one segment mapped at a time.
        drop(old.bytes);
        let name = format::segment_name(self.next);
        let bytes = match map_segment(&mut self.source, &name) {
            Ok(bytes) => bytes,
            Err(error) if is_not_found(&error) => {
                let error = self.not_followed(&old_name, old_offset);
                // Back at the old segment's end: a reader that comes back for a segment not
                // yet started (`read_written`) steps there again instead of walking to it.
                if let Ok(bytes) = map_segment(&mut self.source, &old_name)
                    && bytes.len() >= old_offset as usize
                {
                    let offset = old_offset as usize;
                    self.current = Some(Current { name: old_name, bytes, offset, last: old_last });
                }
                assert!(self.current.as_ref().is_none_or(|c| c.offset > SEGMENT_HEADER_LEN));
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        check_header(&bytes, self.next)
            .map_err(|damage| corrupt(&self.source, &name, 0, self.next, damage))?;
        // A header checked against its name is a segment long enough to hold records.
        assert!(bytes.len() >= SEGMENT_HEADER_LEN, "a checked segment shorter than its header");
        self.current = Some(Current { name, bytes, offset: SEGMENT_HEADER_LEN, last: None });
        Ok(())
    }

    /// Why no segment is named by record `next`, which the records of `name` end before:
    /// retention retired it while the tail lagged, or the journal is missing it.
    fn not_followed(&self, name: &str, offset: u64) -> JournalError {
        assert!(offset > SEGMENT_HEADER_LEN as u64, "no segment after one with no record");
        let first = match sorted_segments(&self.source) {
            Ok(segments) => segments.first().map(|(first, _)| *first),
            Err(error) => return error,
        };
        match first.filter(|first| *first > self.next) {
            Some(first) => retired(&self.source, self.next, first),
            None => corrupt(&self.source, name, offset, self.next, Damage::EndsEarly),
        }
    }
}

/// Maps the segment holding `next` among `segments` and walks to `next`'s place in it: the
/// current segment and the epoch of the record before `next` (`Epoch(0)` if it starts there).
fn position_in<S: ReadSource>(
    source: &mut S,
    segments: &[(Sequence, String)],
    next: Sequence,
) -> Result<(Current<S::Bytes>, Epoch), JournalError> {
    let Some(index) = segments.iter().rposition(|(first, _)| *first <= next) else {
        return Err(match segments.first() {
            Some(&(first, _)) => retired(source, next, first),
            None => corrupt(source, &format::segment_name(next), 0, next, Damage::EndsEarly),
        });
    };
    let (first, name) = (segments[index].0, segments[index].1.clone());
    let bytes = map_segment(source, &name)?;
    check_header(&bytes, first).map_err(|damage| corrupt(source, &name, 0, first, damage))?;
    let walk = walk(&bytes, first, &mut |sequence, _| {
        if sequence == next { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    if walk.next != next {
        // Records before `next` are complete, so the walk can only have been cut short by
        // damage or by the records ending early.
        let damage = match walk.ended {
            Ended::Damaged(damage) => damage,
            Ended::End | Ended::Stopped => Damage::EndsEarly,
        };
        return Err(corrupt(source, &name, walk.offset as u64, walk.next, damage));
    }
    // At record `next`'s place, in the segment that holds it.
    assert!(first <= next, "positioned in a segment that starts after the record");
    assert!(walk.offset >= SEGMENT_HEADER_LEN, "positioned inside the segment header");
    Ok((Current { name, bytes, offset: walk.offset, last: walk.last }, walk.epoch))
}

/// The epoch of record `sequence`; `None` if the journal does not hold it (retired, not yet
/// written, or the writer's record in progress).
pub fn epoch_at<S: ReadSource>(
    source: &mut S,
    sequence: Sequence,
) -> Result<Option<Epoch>, JournalError> {
    if sequence.0 == 0 {
        return Ok(None);
    }
    with_listing(source, |source, segments| {
        let Some(index) = segments.iter().rposition(|(first, _)| *first <= sequence) else {
            return Ok(None);
        };
        assert!(segments[index].0 <= sequence, "looked in a segment that starts after it");
        let mut found = None;
        walk_segment(source, segments, index, &mut |at, epoch| {
            found = (at == sequence).then_some(epoch);
            if found.is_some() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        Ok(found)
    })
}

/// The epoch of record `sequence` if the segment named `name` holds it, intact, at byte
/// `offset` (where [`Tail::last_place`] found it); `None` if that place holds anything else,
/// or the segment is gone. One record is read, from a fresh map of the file, so a segment
/// replaced or cut since is seen as it is now. A `Some` answer is [`epoch_at`]'s: a sequence and
/// an epoch name one record in every journal of a cluster. A `None` says only that this
/// place no longer shows it: [`epoch_at`] says whether, and where, the journal holds it.
pub fn epoch_at_place<S: ReadSource>(
    source: &mut S,
    name: &str,
    offset: usize,
    sequence: Sequence,
) -> Result<Option<Epoch>, JournalError> {
    let Some(first) = format::parse_segment_name(name) else { return Ok(None) };
    let bytes = match map_segment(source, name) {
        Ok(bytes) => bytes,
        Err(error) if is_not_found(&error) => return Ok(None),
        Err(error) => return Err(error),
    };
    // A header that holds the length the file has: `offset` is then inside it, or refused.
    let placed = check_header(&bytes, first).is_ok()
        && offset % RECORD_ALIGN == 0
        && (SEGMENT_HEADER_LEN..bytes.len()).contains(&offset)
        && bytes.len() - offset >= RECORD_ALIGN;
    if !placed || first > sequence {
        return Ok(None);
    }
    Ok(match step(&bytes, offset, sequence, Epoch(0)) {
        Step::Record { epoch, len } => {
            // `step` checked the whole record inside the segment, named `sequence`.
            assert!(offset + len <= bytes.len(), "a record read past the segment's end");
            Some(epoch)
        }
        Step::End | Step::Damaged(_) => None,
    })
}

/// The last sequence whose record has an epoch at or below `epoch`; `None` if no record the
/// journal holds has one (those may have been retired: a standby that stopped agreeing with
/// this journal before its first record then needs a snapshot). Epochs never decrease along
/// the journal, so a binary search over the segments' first records finds the segment, and a
/// walk through it the record.
pub fn last_at_or_below_epoch<S: ReadSource>(
    source: &mut S,
    epoch: Epoch,
) -> Result<Option<Sequence>, JournalError> {
    with_listing(source, |source, segments| {
        // Segments `..low` start with a record at or below `epoch`; segments `high..` do not.
        let (mut low, mut high) = (0, segments.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if first_epoch(source, segments, middle)?.is_some_and(|first| first <= epoch) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        assert_eq!(low, high, "the search ended before it met");
        let Some(index) = low.checked_sub(1) else { return Ok(None) };
        let mut last = None;
        walk_segment(source, segments, index, &mut |sequence, at| {
            if at > epoch {
                return ControlFlow::Break(());
            }
            last = Some(sequence);
            ControlFlow::Continue(())
        })?;
        assert!(last.is_none_or(|last| last >= segments[index].0), "a record before its segment");
        Ok(last)
    })
}

/// Notes in `history` the epoch of every record the journal holds from `from` through
/// `through`, in order, walking only the segments that hold them; the last sequence noted
/// (`None` if none was). It stops short where the journal does: records retired before `from`
/// was reached, or not yet written past the last one held.
pub fn note_epochs<S: ReadSource>(
    source: &mut S,
    from: Sequence,
    through: Sequence,
    history: &mut EpochHistory,
) -> Result<Option<Sequence>, JournalError> {
    // Sequences start at 1: a range from 0 would read as a gap before record 1.
    assert!(from.0 > 0, "epochs noted from sequence 0");
    if from > through {
        return Ok(None);
    }
    let noted = history.clone();
    with_listing(source, |source, segments| {
        // A listing retried starts the history over from what it was.
        *history = noted.clone();
        let start = segments.iter().rposition(|(first, _)| *first <= from).unwrap_or(0);
        let mut last: Option<Sequence> = None;
        for index in start..segments.len() {
            if segments[index].0 > through {
                break;
            }
            let mut gap = false;
            walk_segment(source, segments, index, &mut |sequence, epoch| {
                if sequence > through {
                    return ControlFlow::Break(());
                }
                if sequence >= from {
                    // One record after another: a journal missing some is not walked past them
                    // (nor past a record of epoch 0, which no writer journals).
                    gap = last.is_some_and(|last| last.next() != sequence)
                        || (last.is_none() && sequence != from)
                        || epoch.0 == 0;
                    if gap {
                        return ControlFlow::Break(());
                    }
                    history.note(sequence, epoch);
                    last = Some(sequence);
                }
                ControlFlow::Continue(())
            })?;
            if gap || last == Some(through) {
                break;
            }
        }
        assert!(last.is_none_or(|last| (from..=through).contains(&last)), "noted out of range");
        // The last record noted is in the history's last epoch.
        let newest = history.starts().last().map(|&(_, first)| first);
        assert!(last.is_none_or(|last| newest.is_some_and(|first| first <= last)), "not noted");
        Ok(last)
    })
}

/// The epoch of the first record of segment `index`; `None` if it has none yet (only the last
/// segment may be so: [`walk_segment`] refuses an earlier one that ends before its successor).
fn first_epoch<S: ReadSource>(
    source: &mut S,
    segments: &[(Sequence, String)],
    index: usize,
) -> Result<Option<Epoch>, JournalError> {
    assert!(index < segments.len(), "probed past the last segment");
    let mut first = None;
    walk_segment(source, segments, index, &mut |_, epoch| {
        first = Some(epoch);
        ControlFlow::Break(())
    })?;
    Ok(first)
}

/// Maps segment `index` of `segments`, checks its header and walks its intact records with
/// `visit`. In the last segment, a header not yet written or a record failing its checks ends
/// the walk quietly: a live writer may be writing there. Any other damage, and an earlier
/// segment whose records end before the next segment starts, is corruption.
fn walk_segment<S: ReadSource>(
    source: &mut S,
    segments: &[(Sequence, String)],
    index: usize,
    visit: &mut dyn FnMut(Sequence, Epoch) -> ControlFlow<()>,
) -> Result<(), JournalError> {
    let (first, name) = (segments[index].0, segments[index].1.as_str());
    let following = segments.get(index + 1).map(|(first, _)| *first);
    // `sorted_segments` orders them and names each by one first sequence.
    assert!(following.is_none_or(|following| following > first), "segments out of order");
    let bytes = map_segment(source, name)?;
    match check_header(&bytes, first) {
        Ok(()) => {}
        Err(Damage::SegmentHeader(HeaderProblem::Zeroed | HeaderProblem::TooShort))
            if following.is_none() =>
        {
            return Ok(());
        }
        Err(damage) => return Err(corrupt(source, name, 0, first, damage)),
    }
    let walk = walk(&bytes, first, visit);
    let damage = match (walk.ended, following) {
        (Ended::Stopped, _) => return Ok(()),
        (Ended::Damaged(Damage::Checksum | Damage::Length) | Ended::End, None) => return Ok(()),
        (Ended::End, Some(following)) if following == walk.next => return Ok(()),
        (Ended::End, Some(following)) if following > walk.next => Damage::EndsEarly,
        (Ended::End, Some(following)) => {
            let damage = Damage::SegmentGap { found: following };
            let name = format::segment_name(following);
            return Err(corrupt(source, &name, 0, walk.next, damage));
        }
        (Ended::Damaged(damage), _) => damage,
    };
    assert!(walk.offset >= SEGMENT_HEADER_LEN, "damage inside a checked header");
    Err(corrupt(source, name, walk.offset as u64, walk.next, damage))
}

/// Runs `look_up` on a fresh listing of the segments, and again on a new listing if a segment
/// it listed was gone when it went to map it (retired by retention in between).
fn with_listing<S: ReadSource, T>(
    source: &mut S,
    mut look_up: impl FnMut(&mut S, &[(Sequence, String)]) -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    let mut attempt = 1;
    loop {
        let segments = sorted_segments(source)?;
        match look_up(source, &segments) {
            Err(error) if is_not_found(&error) && attempt < LISTING_ATTEMPTS => attempt += 1,
            result => return result,
        }
        assert!(attempt <= LISTING_ATTEMPTS, "listed more often than allowed");
    }
}

fn is_not_found(error: &JournalError) -> bool {
    matches!(error, JournalError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

/// Maps a segment (I/O errors only; its contents are checked by the caller).
fn map_segment<S: ReadSource>(source: &mut S, name: &str) -> Result<S::Bytes, JournalError> {
    assert!(format::parse_segment_name(name).is_some(), "mapping a file that is not a segment");
    source
        .read_segment(name)
        .map_err(|e| JournalError::io(format!("reading {}", source.describe_file(name)), e))
}

/// Checks a segment's header against the sequence it is named by and the length it was mapped
/// at. Never asserts on what is on disk: a segment cut short is damage, reported.
fn check_header(bytes: &[u8], first: Sequence) -> Result<(), Damage> {
    let header = format::decode_segment_header(bytes).map_err(Damage::SegmentHeader)?;
    let field = if header.first_sequence != first {
        "first sequence"
    } else if header.segment_len != bytes.len() as u64 {
        "length"
    } else {
        // The decoder accepts no length below `SEGMENT_LEN_MIN`, and the map is that long.
        assert!(bytes.len() > SEGMENT_HEADER_LEN, "a segment with no room for records");
        return Ok(());
    };
    Err(Damage::SegmentHeader(HeaderProblem::BadField(field)))
}

/// What lies where a record is expected in a segment.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// An intact record with the expected sequence and an epoch not going back.
    Record {
        /// Its epoch.
        epoch: Epoch,
        /// Its length in bytes.
        len: usize,
    },
    /// The end marker: no record here (yet).
    End,
    /// Something that is not the expected record (on a live journal, past what is complete,
    /// possibly the record being written).
    Damaged(Damage),
}

/// Reads what is at `offset` of a segment, where record `expected` belongs, after a record of
/// `epoch`. Reads no byte past that record.
fn step(bytes: &[u8], offset: usize, expected: Sequence, epoch: Epoch) -> Step {
    // Offsets only grow by whole records from the header, inside the segment.
    assert_eq!(offset % RECORD_ALIGN, 0, "a record off a 16-byte boundary");
    assert!(offset >= SEGMENT_HEADER_LEN && offset <= bytes.len(), "a record outside the records");
    let rest = &bytes[offset..];
    if format::is_end_marker(rest) {
        return Step::End;
    }
    let Some((header, len)) = format::check_record(rest) else {
        let payload_len = format::read_record_header(rest).payload_len;
        let fits = (1..=RECORD_PAYLOAD_MAX).contains(&payload_len)
            && format::record_len(payload_len) <= rest.len();
        return Step::Damaged(if fits { Damage::Checksum } else { Damage::Length });
    };
    if header.sequence != expected {
        return Step::Damaged(Damage::Gap { found: header.sequence });
    }
    if header.epoch < epoch {
        return Step::Damaged(Damage::EpochWentBack);
    }
    Step::Record { epoch: header.epoch, len }
}

/// How a walk through a segment's records ended.
#[derive(Clone, Copy, Debug)]
enum Ended {
    /// The visitor stopped it, before the record at [`Walk::offset`].
    Stopped,
    /// At the end marker.
    End,
    /// At damage.
    Damaged(Damage),
}

/// Where a walk through a segment's records stopped.
struct Walk {
    /// Byte offset of the record not consumed.
    offset: usize,
    /// Byte offset of the last record consumed (`None` if none).
    last: Option<usize>,
    /// The sequence that belongs there.
    next: Sequence,
    /// Epoch of the last record consumed (`Epoch(0)` if none).
    epoch: Epoch,
    ended: Ended,
}

/// Walks a segment's records (its header checked) from its first, offering each intact one's
/// sequence and epoch to `visit` before stepping past it, until `visit` breaks or the records
/// end or fail their checks.
fn walk(
    bytes: &[u8],
    first: Sequence,
    visit: &mut dyn FnMut(Sequence, Epoch) -> ControlFlow<()>,
) -> Walk {
    let mut walk = Walk {
        offset: SEGMENT_HEADER_LEN,
        last: None,
        next: first,
        epoch: Epoch(0),
        ended: Ended::End,
    };
    loop {
        match step(bytes, walk.offset, walk.next, walk.epoch) {
            Step::Record { epoch, len } => {
                if visit(walk.next, epoch).is_break() {
                    walk.ended = Ended::Stopped;
                    break;
                }
                walk.last = Some(walk.offset);
                walk.offset += len;
                walk.next = walk.next.next();
                walk.epoch = epoch;
            }
            Step::End => break,
            Step::Damaged(damage) => {
                walk.ended = Ended::Damaged(damage);
                break;
            }
        }
    }
    // Stepped by whole records, past as many records as sequences.
    assert!(walk.offset <= bytes.len(), "walked past the segment's end");
    assert!(walk.last.is_none_or(|last| last + RECORD_ALIGN <= walk.offset), "a record overlaps");
    assert!(walk.next >= first, "walked backwards");
    walk
}

/// Corruption at `offset` of segment `name`, where record `sequence` belongs.
fn corrupt<S: ReadSource>(
    source: &S,
    name: &str,
    offset: u64,
    sequence: Sequence,
    damage: Damage,
) -> JournalError {
    assert!(sequence.0 >= 1, "corruption at sequence 0");
    JournalError::Corrupt {
        dir: source.location(),
        file: source.describe_file(name),
        offset,
        sequence,
        damage,
    }
}

/// The refusal of a reader that needs `requested`, below the journal's `first` sequence.
fn retired<S: ReadSource>(source: &S, requested: Sequence, first: Sequence) -> JournalError {
    // Retirement leaves the journal starting after what was asked for.
    assert!(requested < first, "a sequence the journal holds called retired");
    JournalError::Retired { dir: source.location(), requested, first }
}
