//! Heal's repair of a segment cut short: the file is shorter than the manifest lists (a copy
//! cut off, a file system that lost the tail), so the records at its end are gone, not merely
//! damaged, and there is nothing left of them to compare a copy with.
//!
//! The intact records at the segment's front are kept, and the peer's copies of the records
//! lost are put after them once shown to be this journal's records, in one of two ways:
//!
//! 1. **By the next segment.** A segment cut short in the middle of the journal lost exactly
//!    the records before the next listed segment's first, `m`. If this journal's record `m`
//!    equals the peer's byte for byte, the peer's records before it are this journal's (two
//!    journals holding the same record hold the same records before it: the argument of the
//!    module above), and the peer's records from the first lost through `m - 1` go back.
//! 2. **By the epoch.** The newest segment lost the records after its intact ones, as many as
//!    there were. The peer's records go back from the first lost on, each of this node's
//!    current epoch (from its epoch file): an epoch has one primary, which writes each
//!    sequence once, so a record of that epoch is the one this node held at that sequence if
//!    it held one there. A record of an older epoch may be one this node replaced, and ends
//!    the copies. After a clean stop, the marker names the last record and where it ended:
//!    the copies must reach exactly there. Without one, where this node's records ended is not
//!    recorded, and the copies go as far as the peer holds them and the segment has room.
//!
//! Either way the peer must hold the record before the first lost, byte for byte as this
//! journal holds it, so that the two journals are shown to agree where they overlap. A
//! segment is healed whole or not at all: when the peer lacks a record lost, the refusal
//! names the sequences that would stay lost and the segment is left as it was.

use ringfence_core::{Epoch, Sequence};

use super::{Healed, Shown, peer_records};
use crate::datadir::{CleanStop, DirCheck};
use crate::error::JournalError;
use crate::format::{self, RECORD_ALIGN, SEGMENT_HEADER_LEN};
use crate::recovery;
use crate::scan::{self, ReadSource};
use crate::storage::{Segment, Storage};

/// The fewest bytes a record takes: its header and a payload of one byte, padded.
const RECORD_LEN_MIN: usize = ringfence_core::record::record_len(1);

/// A listed segment cut short, as the manifest check found it.
#[derive(Clone, Debug)]
pub(super) struct CutShort {
    /// The data directory, for the commands a refusal names.
    dir: String,
    /// The segment's file name.
    name: String,
    /// Its first sequence.
    first: Sequence,
    /// Its length in the manifest.
    listed: u64,
    /// The intact records left at its front, as the check counted them.
    intact: u64,
    /// The first sequence of the segment listed before it, if one is.
    previous: Option<Sequence>,
    /// The first sequence of the segment listed after it; `None` for the newest.
    next: Option<Sequence>,
}

impl CutShort {
    /// The first sequence lost with it.
    fn lost(&self) -> Sequence {
        Sequence(self.first.0 + self.intact)
    }
}

/// The segments cut short that the manifest check found, oldest first, when they are all it
/// found; `None` when it found anything else (which heal refuses as before).
pub(super) fn found(check: &DirCheck) -> Option<Vec<CutShort>> {
    let manifest = check.manifest.as_ref()?;
    let mut cut = Vec::new();
    for problem in &check.problems {
        let JournalError::SegmentLength { dir, file, first, found, listed, intact, .. } = problem
        else {
            return None;
        };
        // Longer than listed is not cut short: nothing was cut off to copy back.
        if found >= listed {
            return None;
        }
        let index = manifest.segments.iter().position(|s| s.first == *first)?;
        let name = format::segment_name(*first);
        assert!(file.ends_with(&name), "a problem named for another segment");
        // What the manifest promises: segments ascending, from sequence 1 on.
        assert!(first.0 >= 1, "a segment from sequence 0");
        cut.push(CutShort {
            dir: dir.clone(),
            name,
            first: *first,
            listed: *listed,
            intact: u64::from(*intact),
            previous: index.checked_sub(1).map(|i| manifest.segments[i].first),
            next: manifest.segments.get(index + 1).map(|s| s.first),
        });
    }
    // The check lists problems in manifest order, one for each segment.
    assert!(cut.windows(2).all(|pair| pair[0].first < pair[1].first), "out of order");
    Some(cut)
}

/// Where the records lost with a segment cut short ended, as far as this journal tells.
#[derive(Clone, Copy, Debug)]
enum LostEnd {
    /// Before the next listed segment's first record, this one (intact here).
    NextSegment(Sequence),
    /// At the clean stop: the last record, and the byte offset where the records ended.
    CleanStop(Sequence, usize),
    /// Not recorded: the newest segment of a node that did not stop cleanly.
    Unknown,
}

/// What heal knows of this node when it judges the peer's copies of records a segment lost.
#[derive(Clone, Copy, Debug)]
pub(super) struct Judge<'a> {
    /// This node's current epoch (its epoch file), if known.
    pub epoch: Option<Epoch>,
    /// The clean-stop marker, if present.
    pub stop: Option<&'a CleanStop>,
    /// The operator's `--end-at-copy`: the newest segment's records, where nothing records
    /// their end, are taken to end where the copy's of this node's epoch do.
    pub end_at_copy: bool,
}

/// What [`plan`] showed and [`put_back`] writes: the peer's copies of the records a segment
/// cut short lost, to go after its intact records.
#[derive(Debug)]
pub(super) struct PutBack {
    /// The copies, whole records from the first sequence lost on, one after another.
    span: Vec<u8>,
    /// How many records they are.
    records: u64,
    /// Where the intact records end: the byte offset the copies go at.
    end: usize,
    /// How they were shown to be this journal's.
    shown: Shown,
    /// What was lost, for a message.
    prelude: String,
}

/// Shows the peer's copies of the records segment `cut` lost to be this journal's (see the
/// module documentation), reading only: what [`put_back`] is to write, or why not.
pub(super) fn plan<S: Storage, P: ReadSource>(
    storage: &S,
    cut: &CutShort,
    peer: &mut P,
    judge: Judge<'_>,
) -> Result<PutBack, String> {
    let file = storage.describe(&cut.name);
    let mut source = storage.clone();
    let held = source.read_segment(&cut.name).map_err(|e| format!("reading {file}: {e}"))?;
    let bytes: &[u8] = &held;
    let header = format::decode_segment_header(bytes).ok();
    if header.is_none_or(|h| h.first_sequence != cut.first || h.segment_len != cut.listed) {
        return Err(format!(
            "segment {file} was cut short and its header is not whole; heal replaces records, \
             not headers. {}",
            fallback(cut)
        ));
    }
    let prefix = scan::intact_prefix(bytes, cut.first);
    // The pair of the manifest's check, which counted the same bytes.
    assert_eq!(prefix.records, cut.intact, "the records left counted otherwise");
    let end = prefix.end;
    let (lost, room) = (cut.lost(), cut.listed - end as u64);
    let anchor = record_before(&mut source, cut, bytes, prefix)?;
    let lost_end = lost_end(&mut source, cut, judge.stop)?;
    // The last record that can have been lost; the peer's records are read through it (and
    // for a middle segment through the next one's first, which is compared).
    let last_lost = match lost_end {
        LostEnd::NextSegment(m) => Sequence(m.0 - 1),
        LostEnd::CleanStop(last, _) => last,
        LostEnd::Unknown => Sequence(lost.0 - 1 + room / RECORD_LEN_MIN as u64),
    };
    let prelude = format!("segment {file} was cut short: {}", lost_text(cut, lost_end));
    if last_lost < lost {
        return Err(format!(
            "segment {file} was cut short after its last record ({}): no record was lost with \
             it, only the zeros after them. {}",
            Sequence(lost.0 - 1),
            fallback(cut)
        ));
    }
    let through = if let LostEnd::NextSegment(m) = lost_end { m } else { last_lost };
    let anchor_seq = Sequence(lost.0 - 1);
    let mut copies = peer_records(peer, anchor_seq, through)
        .map_err(|why| format!("{prelude}, and {why}. {}", fallback(cut)))?;
    if copies[0] != anchor {
        return Err(format!(
            "{prelude}, and {}'s record {anchor_seq} differs from this journal's (the journals \
             diverged): its copies are not shown to be this journal's records. {}",
            peer.location(),
            fallback(cut)
        ));
    }
    copies.remove(0);
    let (chosen, end_shown) = choose(cut, lost_end, copies, judge, end)
        .map_err(|why| format!("{prelude}; {why}. {}", fallback(cut)))?;
    // Whole records from the first lost on, each checked as the peer's scan read it.
    assert!(!chosen.is_empty(), "no record chosen to put back");
    assert!(chosen.iter().all(|copy| copy.len() % RECORD_ALIGN == 0), "part of a record");
    if !end_shown && !judge.end_at_copy {
        let last = Sequence(lost.0 + chosen.len() as u64 - 1);
        return Err(format!(
            "{prelude}. {} holds records {lost}..={last} of this node's epoch, but whether this \
             node held records after {last} is not known, and they would stay lost unnoticed \
             (records a primary acknowledged alone, say). If the copy holds every record this \
             node held (it is the primary this node followed as a standby, say), run `ringfence \
             journal heal {} --from {} --end-at-copy`, which puts back {lost}..={last}. {}",
            peer.location(),
            cut.dir,
            peer.location(),
            fallback(cut)
        ));
    }
    let span: Vec<u8> = chosen.concat();
    if let LostEnd::NextSegment(m) = lost_end {
        check_next(&mut source, m, &chosen, peer, room)
            .map_err(|why| format!("{prelude}; {why}. {}", fallback(cut)))?;
    }
    // What `restore_length` relies on: the copies fit the bytes cut off.
    assert!(span.len() as u64 <= room, "copies past the segment's listed length");
    let next = if let LostEnd::NextSegment(m) = lost_end { Some(m) } else { None };
    let shown = Shown::CutShort { matched: anchor_seq, next, end_known: end_shown };
    Ok(PutBack { span, records: chosen.len() as u64, end, shown, prelude })
}

/// Puts segment `cut` back at its listed length with its intact records and the copies
/// [`plan`] showed to be those it lost: what was written, or why not.
pub(super) fn put_back<S: Storage>(
    storage: &S,
    cut: &CutShort,
    planned: PutBack,
) -> Result<Healed, String> {
    let PutBack { span, records, end, shown, prelude } = planned;
    assert!(records >= 1, "a segment to put back with no record");
    assert!(span.len() as u64 <= cut.listed - end as u64, "copies past the listed length");
    let written = recovery::restore_length(storage, &cut.name, cut.listed, &span)
        .map_err(|e| format!("{prelude}; putting it back failed: {e}"))?;
    assert_eq!(written, end, "the intact records end elsewhere once put back");
    let count = read_back(storage, cut, end, span.len())?;
    assert_eq!(count, records, "records put back and read back differ");
    let lost = cut.lost();
    Ok(Healed {
        file: cut.name.clone(),
        offset: end as u64,
        from: lost,
        through: Sequence(lost.0 + count - 1),
        len: span.len(),
        shown,
    })
}

/// What was lost with segment `cut`, for messages.
fn lost_text(cut: &CutShort, lost_end: LostEnd) -> String {
    let lost = cut.lost();
    match lost_end {
        LostEnd::NextSegment(m) => format!("sequences {lost}..={} were lost with it", m.0 - 1),
        LostEnd::CleanStop(last, _) => format!(
            "sequences {lost}..={last} were lost with it (the node stopped cleanly at sequence \
             {last})"
        ),
        LostEnd::Unknown => format!(
            "the records from sequence {lost} on were lost with it (the node did not stop \
             cleanly, so where they ended is not recorded)"
        ),
    }
}

/// The repairs left when heal refuses segment `cut`: the file whole from a backup, or the cut
/// at the first sequence lost, which keeps the intact records before it.
fn fallback(cut: &CutShort) -> String {
    let lost = cut.lost();
    let later =
        if cut.next.is_some() { " (the later segments too, kept in rollback/)" } else { "" };
    format!(
        "The segment was left as it was. Restore the file whole from a backup; or, to accept \
         losing sequence {lost} and everything after it{later}, run `ringfence journal truncate \
         {} --at-seq {lost}`, which keeps the {} intact records before it",
        cut.dir, cut.intact
    )
}

/// This journal's record just before the first lost: the last intact one left in the segment,
/// or else the last of the segment listed before it. The peer must hold it, the same bytes.
fn record_before<R: ReadSource>(
    source: &mut R,
    cut: &CutShort,
    bytes: &[u8],
    prefix: scan::IntactPrefix,
) -> Result<Vec<u8>, String> {
    let before = Sequence(cut.lost().0 - 1);
    if let Some(last_at) = prefix.last_at {
        return Ok(bytes[last_at..prefix.end].to_vec());
    }
    let none = || {
        format!(
            "segment {} was cut short with no whole record left in it, and this journal holds \
             no intact record {before} before it to show that the peer's copies follow its history. {}",
            cut.name,
            fallback(cut)
        )
    };
    let Some(previous) = cut.previous else { return Err(none()) };
    let name = format::segment_name(previous);
    let file = source.describe_file(&name);
    let bytes = source.read_segment(&name).map_err(|e| format!("reading {file}: {e}"))?;
    let prefix = scan::intact_prefix(&bytes, previous);
    let Some(last_at) = prefix.last_at.filter(|_| previous.0 + prefix.records == cut.first.0)
    else {
        return Err(none());
    };
    let record = bytes[last_at..prefix.end].to_vec();
    // The pair of the count: the last record is the one before the segment cut short.
    let read = format::check_record(&record).map(|(header, _)| header.sequence);
    assert_eq!(read, Some(before), "the record before the segment is another");
    Ok(record)
}

/// Where the records lost with `cut` ended, as far as this journal tells.
fn lost_end<R: ReadSource>(
    source: &mut R,
    cut: &CutShort,
    stop: Option<&CleanStop>,
) -> Result<LostEnd, String> {
    if let Some(next) = cut.next {
        return Ok(LostEnd::NextSegment(next));
    }
    let Some(stop) = stop else { return Ok(LostEnd::Unknown) };
    if stop.segment != cut.name {
        return Err(format!(
            "segment {} was cut short, but the clean-stop marker names {} as the newest \
             segment: the directory is not as the node left it. {}",
            source.describe_file(&cut.name),
            stop.segment,
            fallback(cut)
        ));
    }
    let end = usize::try_from(stop.end).expect("a segment offset fits in memory");
    // The marker's decoder accepts only the writer's positions: past the header, aligned.
    assert!(end >= SEGMENT_HEADER_LEN, "a clean stop inside a segment header");
    assert_eq!(end % RECORD_ALIGN, 0, "a clean stop off a record boundary");
    Ok(LostEnd::CleanStop(stop.last, end))
}

/// Of the peer's `copies` of the records from the first lost on (as many as it holds, up to
/// where they ended, if known), the ones to put back after the intact records, which end at
/// byte `end`, and whether they are shown to reach where this node's records ended (the next
/// segment, the clean stop, or a segment full); or why none can be.
fn choose(
    cut: &CutShort,
    lost_end: LostEnd,
    mut copies: Vec<Vec<u8>>,
    judge: Judge<'_>,
    end: usize,
) -> Result<(Vec<Vec<u8>>, bool), String> {
    let (lost, room, epoch) = (cut.lost(), cut.listed - end as u64, judge.epoch);
    match lost_end {
        LostEnd::NextSegment(m) => {
            // Record `m` itself is compared, not copied (`check_next`).
            let held = copies.len();
            if held as u64 <= m.0 - lost.0 {
                return Err(shortfall(lost, held, Some(Sequence(m.0 - 1)), &copies, None));
            }
            copies.pop();
            Ok((copies, true))
        }
        LostEnd::CleanStop(last, stopped) => {
            let held = of_epoch(&copies, epoch);
            if (held as u64) < last.0 + 1 - lost.0 {
                return Err(shortfall(lost, held, Some(last), &copies, epoch));
            }
            let reach = end + copies.iter().map(Vec::len).sum::<usize>();
            if reach as u64 > cut.listed {
                return Err(format!(
                    "the copies of records {lost}..={last} take more than the {room} bytes cut \
                     off the segment (the journals diverged)"
                ));
            }
            if reach != stopped {
                return Err(format!(
                    "the copies of records {lost}..={last} would end at byte offset {reach}, \
                     not at {stopped} where the clean-stop marker says this node's records \
                     ended (the journals diverged)"
                ));
            }
            Ok((copies, true))
        }
        LostEnd::Unknown => {
            let held = of_epoch(&copies, epoch);
            let mut used = 0u64;
            let fit = copies[..held]
                .iter()
                .take_while(|copy| {
                    used += copy.len() as u64;
                    used <= room
                })
                .count();
            if fit == 0 {
                return Err(shortfall(lost, held, None, &copies, epoch));
            }
            copies.truncate(fit);
            // No further record fits: the writer would have begun a new segment for it, and
            // none is listed, so this node held no record after these.
            let filled: u64 = copies.iter().map(|copy| copy.len() as u64).sum();
            let full = fit < held || room - filled < RECORD_LEN_MIN as u64;
            Ok((copies, full))
        }
    }
}

/// Why the peer's `copies` of the records from `lost` on stop short after `held` of them: the
/// next is missing or damaged there, or (when this node's `epoch` is judged) of another epoch;
/// and, when the last record lost is known, which sequences would stay lost.
fn shortfall(
    lost: Sequence,
    held: usize,
    last: Option<Sequence>,
    copies: &[Vec<u8>],
    epoch: Option<Epoch>,
) -> String {
    assert!(held <= copies.len(), "more records held than copied");
    let missing = Sequence(lost.0 + held as u64);
    let other = copies.get(held).and_then(|copy| format::check_record(copy));
    let why = match (other, epoch) {
        (Some((header, _)), Some(epoch)) => format!(
            "the copy's record {missing} is of epoch {}, not this node's epoch {epoch}, so it \
             is not shown to be the record this node held there",
            header.epoch
        ),
        (Some(_), None) => format!(
            "this node's epoch is unknown (no epoch file), so the copy's record {missing} is \
             not shown to be the record it held there"
        ),
        (None, _) => format!("the copy holds no intact record {missing}"),
    };
    let Some(last) = last else { return why };
    assert!(missing <= last, "a shortfall after the last record lost");
    let range = if missing == last { format!("{last}") } else { format!("{missing}..={last}") };
    if held == 0 {
        return format!("{why}, so sequences {range} would stay lost");
    }
    let before = Sequence(missing.0 - 1);
    let has = if before == lost { format!("{lost}") } else { format!("{lost}..={before}") };
    format!("the copy holds {has} of them, but {why}, so sequences {range} would stay lost")
}

/// How many of `copies`, from the first, are of this node's current `epoch`.
fn of_epoch(copies: &[Vec<u8>], epoch: Option<Epoch>) -> usize {
    let Some(epoch) = epoch else { return 0 };
    copies
        .iter()
        .take_while(|copy| format::check_record(copy).is_some_and(|(h, _)| h.epoch == epoch))
        .count()
}

/// Way 1 of the module documentation: this journal's record `m`, first of the next segment,
/// equals the peer's, and the copies before it fit the room the segment cut short has.
fn check_next<R: ReadSource, P: ReadSource>(
    source: &mut R,
    m: Sequence,
    copies: &[Vec<u8>],
    peer: &mut P,
    room: u64,
) -> Result<(), String> {
    // A later segment's first record, after the records put back.
    assert!(m.0 >= 2, "a next segment from sequence 1");
    let name = format::segment_name(m);
    let file = source.describe_file(&name);
    let bytes = source.read_segment(&name).map_err(|e| format!("reading {file}: {e}"))?;
    let front = &bytes[SEGMENT_HEADER_LEN.min(bytes.len())..];
    let ours = format::check_record(front)
        .filter(|(header, _)| header.sequence == m)
        .map(|(_, len)| &front[..len]);
    let Some(ours) = ours else {
        return Err(format!("record {m}, the first of {file}, is not intact here to compare"));
    };
    let theirs = peer_records(peer, m, m)?;
    if theirs[0] != ours {
        return Err(format!(
            "record {m}, the first of {file}, differs from the copy's (the journals diverged)"
        ));
    }
    let filled: u64 = copies.iter().map(|copy| copy.len() as u64).sum();
    if filled > room {
        return Err(format!(
            "the copies of the records lost take {filled} bytes, more than the {room} cut off \
             the segment (the journals diverged)"
        ));
    }
    Ok(())
}

/// Reads back the records put after the intact ones of `cut` (from byte `end`, `len` bytes):
/// every one intact and in sequence from the first lost, filling the bytes; their count.
fn read_back<S: Storage>(
    storage: &S,
    cut: &CutShort,
    end: usize,
    len: usize,
) -> Result<u64, String> {
    let file = storage.describe(&cut.name);
    let segment = storage.open_segment(&cut.name).map_err(|e| format!("opening {file}: {e}"))?;
    let bytes = segment.bytes();
    assert_eq!(bytes.len() as u64, cut.listed, "a segment put back at another length");
    let (mut at, mut next) = (end, cut.lost());
    while at < end + len {
        let read = format::check_record(&bytes[at..]);
        assert!(read.is_some_and(|(h, _)| h.sequence == next), "record {next} not put back");
        at += read.map_or(0, |(_, len)| len);
        next = next.next();
    }
    assert_eq!(at, end + len, "the records put back do not fill the bytes");
    assert_eq!(at % RECORD_ALIGN, 0, "records put back off the 16-byte grid");
    // What follows is zero to the segment's end: the records end there.
    assert!(scan::last_nonzero(&bytes[at..]).is_none(), "bytes after the records put back");
    Ok(next.0 - cut.lost().0)
}
