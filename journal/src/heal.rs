//! The operator's repair from a peer's copy: damaged records replaced, byte for byte, by the
//! same records read from another journal of the same history (the standby's or the primary's
//! data directory, or a backup of either).
//!
//! A record is the same bytes on every node that holds it: the node that sequenced it encoded
//! it once, and replication ships and journals those bytes (`ringfence_core::record`). So when
//! a record is damaged at rest and another copy of it is intact, nothing need be dropped: the
//! copy goes where the damaged bytes were, and every record after it is kept. That matters
//! most when this journal holds records no other node has, as a standby does after its
//! primary lost unsynced records to a power loss: `journal truncate` at the damage would drop
//! them, and `journal rebuild` needs a snapshot that covers the damage.
//!
//! The peer's records replace the damaged bytes only when they are shown to be the records
//! that were written there, in one of two ways:
//!
//! 1. **By what is left of the record.** The peer's record `n` (intact, the damaged record's
//!    sequence) has the CRC32C stored in the damaged header (the damage lies elsewhere in the
//!    record), or every one of its bytes after the CRC equals the damaged record's (the damage
//!    lies in the CRC); and it fits: what follows it in this segment is record `n + 1`, intact,
//!    or nothing (zeros to the segment's end).
//! 2. **By the next intact record.** The first intact record after the damage in this segment,
//!    `m`, is byte for byte the peer's record `m`, and the peer's records `n ..= m - 1` fill the
//!    bytes in between exactly. Two journals that hold the same record `m` (its sequence and
//!    epoch) hold the same records before it: a standby appends a primary's records only after
//!    its own last record matched the primary's at that sequence and epoch, and an epoch has one
//!    primary. This heals damage that spans several records, or a record's CRC and the rest
//!    together (a zeroed or garbled sector).
//!
//! A record of the same sequence from a journal that diverged shows neither, and is refused.
//! Nothing but the damaged bytes is written (no manifest, marker or epoch file changes): the
//! journal afterwards is the one that was written before the damage. Each damaged span is
//! healed in turn until the journal is intact or one cannot be healed.
//!
//! A segment cut short (its file shorter than the manifest lists) is healed first: its intact
//! records are kept, the records lost with it are copied back after them once shown to be
//! this journal's, and the segment is put back at its listed length (`cut_short`).

use std::ops::ControlFlow;

use ringfence_core::Sequence;

use crate::datadir;
use crate::error::JournalError;
use crate::format::{self, RECORD_ALIGN, SEGMENT_HEADER_LEN};
use crate::rebuild;
use crate::scan::{self, ReadSource};
use crate::storage::{Segment, Storage};

mod cut_short;

/// Size of a record's stored CRC32C, at the start of its header.
const CRC_LEN: usize = 4;

/// How the peer's copy was shown to be what was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// The copy's CRC32C equals the one stored in the damaged record: the damage lay in the
    /// rest of it.
    ByCrc,
    /// The copy's bytes after the CRC equal the damaged record's: the damage lay in the CRC.
    ByRest,
    /// The next intact record, this sequence, equals the peer's, and the copies of the records
    /// before it fill the damaged span exactly.
    ByNextRecord(Sequence),
    /// The segment was cut short: the records lost with it were put back after the intact
    /// ones left, the segment at its listed length again (`cut_short`'s module documentation).
    CutShort {
        /// The record before the first lost, the same bytes in both journals.
        matched: Sequence,
        /// The first record of the next segment, the same in both journals: the records lost
        /// were those before it. `None` for the newest segment.
        next: Option<Sequence>,
        /// Whether the copies are shown to reach where this node's records ended: the next
        /// segment, the clean stop, or the segment full. If not, `--end-at-copy` took them to
        /// end there, and a record this node held past them, had it any, is not among them.
        end_known: bool,
    },
}

/// One damaged span [`heal`] replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healed {
    /// The segment file.
    pub file: String,
    /// Byte offset of the first record replaced.
    pub offset: u64,
    /// The first record's sequence.
    pub from: Sequence,
    /// The last record's sequence.
    pub through: Sequence,
    /// The bytes written, padding included.
    pub len: usize,
    /// How the copy was shown to be what was written.
    pub shown: Shown,
}

/// Heals every damaged span of the journal in `storage` from the intact copies in `peer` (see
/// the module documentation); returns what it replaced: segments cut short first, then
/// damaged records in journal order. Refused, changing nothing, when the journal is intact,
/// when its only damage is a torn tail a crash left (recovery clears it), when the directory
/// has problems other than damaged records and segments cut short (a missing segment or
/// manifest: that is `truncate`'s), or when the first damage has no copy in `peer` shown to be
/// what was written (for a segment cut short: a copy of every record lost with it). Spans
/// healed before a later one is refused stay healed (each holds the records that were
/// written), and the error says so.
pub fn heal<S: Storage, P: ReadSource>(
    storage: &S,
    peer: &mut P,
) -> Result<Vec<Healed>, JournalError> {
    heal_with(storage, peer, HealOptions::default())
}

/// How far [`heal_with`] may go beyond what [`heal`] does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealOptions {
    /// The operator's `--end-at-copy`: the records lost with the newest segment cut short,
    /// when nothing shows where they ended (no clean stop, the segment not full), are taken to
    /// end where the copy's records of this node's epoch do. Without it, that is refused.
    pub end_at_copy: bool,
}

/// [`heal`], with `options`.
pub fn heal_with<S: Storage, P: ReadSource>(
    storage: &S,
    peer: &mut P,
    options: HealOptions,
) -> Result<Vec<Healed>, JournalError> {
    let healed = run(storage, peer, options, Pass::Repair)?;
    // A heal that returns healed something: every other outcome is a refusal.
    assert!(!healed.is_empty(), "a heal that healed nothing");
    Ok(healed)
}

/// Refuses a heal for every reason [`heal_with`] refuses one before it changes a file,
/// reading `storage` and `peer` only: the same steps up to the first repair, which is shown to
/// be what was written but not made. The operator's tool asks first, so that a refused heal
/// takes no lock; [`heal_with`] runs the same steps again under the lock, from the start, and
/// writes only what it showed there. (A refusal after a first span was healed comes under the
/// lock, and says what was healed before it.)
pub fn check<S: Storage, P: ReadSource>(
    storage: &S,
    peer: &mut P,
    options: HealOptions,
) -> Result<(), JournalError> {
    let healed = run(storage, peer, options, Pass::Plan)?;
    // The plan stops before its first write: it has nothing healed to report.
    assert!(healed.is_empty(), "a plan that healed");
    Ok(())
}

/// Which pass of [`run`] this is: the plan reads only, and stops at the first repair it has
/// shown to be right; the repair makes each one, and goes on to the next damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Plan,
    Repair,
}

/// The steps of a heal, shared by its two passes (see [`Pass`]): each refusal is made the
/// same way in both, and the plan returns nothing healed where the repair would first write.
fn run<S: Storage, P: ReadSource>(
    storage: &S,
    peer: &mut P,
    options: HealOptions,
    pass: Pass,
) -> Result<Vec<Healed>, JournalError> {
    let mut healed: Vec<Healed> = Vec::new();
    let refuse = |healed: &[Healed], why: String| {
        let done = match healed {
            [] => String::new(),
            [..] => format!(" (healed before it: {})", describe(healed)),
        };
        Err(JournalError::Options(format!("cannot heal: {why}{done}")))
    };
    if rebuild::rebuilding(storage)?.is_some() {
        return refuse(
            &healed,
            "a rebuild is under way: `ringfence journal rebuild` finishes it".to_owned(),
        );
    }
    // Segments cut short first: the manifest check refuses the directory until they are whole.
    match heal_cut_short(storage, peer, options, &mut healed, pass) {
        Err(why) => return refuse(&healed, why),
        Ok(ControlFlow::Break(())) => return Ok(healed),
        Ok(ControlFlow::Continue(())) => {}
    }
    // Damaged records are healed in journal order from here, after any segment put back.
    let cut_short = healed.len();
    loop {
        let mut source = storage.clone();
        let check = datadir::check(&mut source)?;
        if let Some(problem) = check.problems.first() {
            return refuse(&healed, problem.to_string());
        }
        if !check.holds_data() {
            return Err(JournalError::NoData { dir: source.location() });
        }
        let layout = scan::scan_segments(&mut source, &check.segments)?;
        let Some(problem) = layout.problem else {
            if healed.is_empty() {
                return refuse(&healed, "the journal is intact; nothing to repair".to_owned());
            }
            return Ok(healed);
        };
        if problem.torn_tail && datadir::clean_stop(storage)?.is_none() {
            if healed.is_empty() {
                return refuse(
                    &healed,
                    format!(
                        "the only damage is a torn tail at sequence {} (a write a crash cut \
                         off); a node clears it on start",
                        problem.sequence
                    ),
                );
            }
            return Ok(healed);
        }
        if problem.segment.is_none() {
            return refuse(
                &healed,
                format!("the header of segment {} is damaged; heal replaces records", problem.name),
            );
        }
        let sequence = problem.sequence;
        // Each pass heals the first damage, so the next one found lies after it; if not, what
        // is wrong there is not in the record's bytes.
        if healed[cut_short..].last().is_some_and(|last| last.through >= sequence) {
            return refuse(
                &healed,
                format!(
                    "record {sequence} still fails after it was healed ({}): what is wrong is \
                     not in its bytes",
                    problem.damage
                ),
            );
        }
        let offset = usize::try_from(problem.offset).expect("a segment offset fits in memory");
        let shown = match prove(storage, &problem.name, offset, sequence, peer) {
            Ok(shown) => shown,
            Err(why) => return refuse(&healed, why),
        };
        if pass == Pass::Plan {
            // The plan stops where the repair would first write: nothing was healed.
            assert!(healed.is_empty(), "the plan went past its first repair");
            return Ok(healed);
        }
        match replace(storage, shown) {
            Ok(span) => healed.push(span),
            Err(why) => return refuse(&healed, why),
        }
    }
}

/// Puts back every segment cut short, when they are all the manifest check finds, with the
/// peer's copies of the records lost with them (see `cut_short`); what it healed goes to
/// `healed`. Other problems are left to the caller's check, which refuses them. In the plan
/// pass, breaks once the first segment's copies are shown to be right, before it is put back.
fn heal_cut_short<S: Storage, P: ReadSource>(
    storage: &S,
    peer: &mut P,
    options: HealOptions,
    healed: &mut Vec<Healed>,
    pass: Pass,
) -> Result<ControlFlow<()>, String> {
    let mut source = storage.clone();
    let check = datadir::check(&mut source).map_err(|e| e.to_string())?;
    let Some(segments) = cut_short::found(&check) else { return Ok(ControlFlow::Continue(())) };
    let stop = datadir::clean_stop(storage).map_err(|e| e.to_string())?;
    let judge = cut_short::Judge {
        epoch: check.epochs.map(|epochs| epochs.current),
        stop: stop.as_ref(),
        end_at_copy: options.end_at_copy,
    };
    for segment in &segments {
        let planned = cut_short::plan(storage, segment, peer, judge)?;
        if pass == Pass::Plan {
            return Ok(ControlFlow::Break(()));
        }
        let span = cut_short::put_back(storage, segment, planned)?;
        // The records put back follow the intact ones, at the first sequence lost.
        assert!(span.from <= span.through, "a segment put back with no record");
        healed.push(span);
    }
    Ok(ControlFlow::Continue(()))
}

/// The sequences of `healed`, for a message.
fn describe(healed: &[Healed]) -> String {
    assert!(!healed.is_empty(), "nothing healed to describe");
    let spans: Vec<String> = healed.iter().map(span).collect();
    format!("sequence {}", spans.join(", "))
}

/// A healed span's sequences: `n`, or `n..=m`.
#[must_use]
pub fn span(healed: &Healed) -> String {
    assert!(healed.from <= healed.through, "a span that ends before it starts");
    if healed.from == healed.through {
        healed.from.to_string()
    } else {
        format!("{}..={}", healed.from, healed.through)
    }
}

/// The intact records of the journal in `peer` from `from` on, up to `through` (fewer if its
/// journal ends or is damaged before), their bytes as journaled; an error if it lacks `from`.
fn peer_records<P: ReadSource>(
    peer: &mut P,
    from: Sequence,
    through: Sequence,
) -> Result<Vec<Vec<u8>>, String> {
    assert!(from <= through, "an empty range of records asked for");
    let location = peer.location();
    let unreadable = |e: JournalError| format!("reading the copy in {location}: {e}");
    let check = datadir::check(peer).map_err(unreadable)?;
    let layout = scan::scan_segments(peer, &check.segments).map_err(unreadable)?;
    let mut records = Vec::new();
    let mut next = from;
    for segment in &layout.segments {
        let holds = segment.last.is_some_and(|last| next <= last);
        if !holds || segment.header.first_sequence > through {
            continue;
        }
        let name = &segment.name;
        let bytes =
            peer.read_segment(name).map_err(|e| format!("reading {location}/{name}: {e}"))?;
        let mut at = SEGMENT_HEADER_LEN;
        while let Some((header, len)) = format::check_record(&bytes[at..]) {
            if header.sequence == next && next <= through {
                // What `replace` relies on: whole records, on record boundaries.
                assert_eq!(len % RECORD_ALIGN, 0, "a record of a length off the alignment");
                records.push(bytes[at..at + len].to_vec());
                next = next.next();
            }
            at += len;
        }
    }
    if records.is_empty() {
        let holds = match (layout.first_sequence(), layout.last_sequence()) {
            (Some(first), Some(last)) => format!("intact records {first}..={last}"),
            _ => "no intact record".to_owned(),
        };
        return Err(format!("{location} holds no intact record {from} (it holds {holds})"));
    }
    assert_eq!(records.len() as u64, next.0 - from.0, "records missed in the range");
    Ok(records)
}

/// A repair [`prove`] showed and [`replace`] makes: the peer's copies of the records from the
/// damaged one on, to go where it starts.
#[derive(Debug)]
struct Proven {
    /// The segment file.
    name: String,
    /// Byte offset of the damaged record.
    offset: usize,
    /// Its sequence.
    sequence: Sequence,
    /// The copies, from record `sequence` on, as journaled.
    copies: Vec<Vec<u8>>,
    /// How they were shown to be what was written.
    shown: Shown,
}

/// Shows the peer's copies of the damaged record `sequence` at `offset` in segment `name`,
/// and of whatever damaged records follow it up to the next intact one, to be what was
/// written there (see the module documentation), reading only; else says why not.
fn prove<S: Storage, P: ReadSource>(
    storage: &S,
    name: &str,
    offset: usize,
    sequence: Sequence,
    peer: &mut P,
) -> Result<Proven, String> {
    assert!(offset >= SEGMENT_HEADER_LEN, "a damaged record inside the segment header");
    assert_eq!(offset % RECORD_ALIGN, 0, "a damaged record off a record boundary");
    let file = storage.describe(name);
    let mut source = storage.clone();
    let held = source.read_segment(name).map_err(|e| format!("reading {file}: {e}"))?;
    let bytes: &[u8] = &held;
    // The peer's records from the damaged one up to the first intact one after it here, read
    // once for both ways.
    let next = intact_after(bytes, offset, sequence);
    let mut copies = peer_records(peer, sequence, next.map_or(sequence, |(m, _)| m))?;
    let shown = match by_what_is_left(bytes, offset, sequence, &copies[0]) {
        Ok(shown) => {
            copies.truncate(1);
            shown
        }
        Err(left) => match by_next_record(bytes, offset, sequence, next, &mut copies) {
            Ok(next) => Shown::ByNextRecord(next),
            Err(next) => {
                return Err(format!(
                    "the copy of record {sequence} is not shown to be what was written at byte \
                     offset {offset} of {file}: {left}; and {next}"
                ));
            }
        },
    };
    // What `replace` writes: whole records, within the segment.
    let len: usize = copies.iter().map(Vec::len).sum();
    assert!(offset + len <= bytes.len(), "copies that run past the segment's end");
    Ok(Proven { name: name.to_owned(), offset, sequence, copies, shown })
}

/// Writes the copies [`prove`] showed over the damaged bytes, and syncs them.
fn replace<S: Storage>(storage: &S, proven: Proven) -> Result<Healed, String> {
    let Proven { name, offset, sequence, copies, shown } = proven;
    let file = storage.describe(&name);
    let mut segment = storage.open_segment(&name).map_err(|e| format!("opening {file}: {e}"))?;
    // The pair of `prove`'s checks: whole records from the damaged one on, within the segment.
    let first = copies.first().and_then(|copy| format::check_record(copy));
    assert!(first.is_some_and(|(h, _)| h.sequence == sequence), "copies from another record");
    let span: Vec<u8> = copies.concat();
    let end = offset + span.len();
    assert!(end <= segment.bytes().len(), "copies that run past the segment's end");
    segment.bytes_mut()[offset..end].copy_from_slice(&span);
    // The records written read back intact, in sequence, filling the span.
    let mut at = offset;
    for expected in (sequence.0..).take(copies.len()) {
        let read = format::check_record(&segment.bytes()[at..]).map(|(h, len)| (h.sequence, len));
        assert!(read.is_some_and(|(s, _)| s.0 == expected), "record {expected} did not heal");
        at += read.map_or(0, |(_, len)| len);
    }
    assert_eq!(at, end, "the healed records do not fill the span");
    segment.sync(offset..end).map_err(|e| format!("syncing {file}: {e}"))?;
    let through = Sequence(sequence.0 + copies.len() as u64 - 1);
    Ok(Healed {
        file: name,
        offset: offset as u64,
        from: sequence,
        through,
        len: end - offset,
        shown,
    })
}

/// Way 1 of the module documentation: whether `copy` is record `sequence` as written at
/// `offset`, shown by what is left of it there, and fits; else why not.
fn by_what_is_left(
    bytes: &[u8],
    offset: usize,
    sequence: Sequence,
    copy: &[u8],
) -> Result<Shown, String> {
    assert!(copy.len() > CRC_LEN, "a record no longer than its CRC");
    let end = offset + copy.len();
    if end > bytes.len() {
        return Err(format!("the copy ({} bytes) runs past the segment's end", copy.len()));
    }
    let damaged = &bytes[offset..end];
    let same_crc = damaged[..CRC_LEN] == copy[..CRC_LEN];
    let same_rest = damaged[CRC_LEN..] == copy[CRC_LEN..];
    if same_crc && same_rest {
        return Err("the record there is the same bytes as the copy: what recovery refuses \
                    there is not damage a copy repairs"
            .to_owned());
    }
    if !same_crc && !same_rest {
        return Err("neither its CRC32C nor its other bytes agree with what is left there (the \
                    journals diverged, or the damage reaches both)"
            .to_owned());
    }
    let after = &bytes[end..];
    let next_follows =
        format::check_record(after).is_some_and(|(header, _)| header.sequence == sequence.next());
    if !next_follows && after.iter().any(|&byte| byte != 0) {
        return Err(format!(
            "what follows it, at byte offset {end}, is neither record {} intact nor the end of \
             the records",
            sequence.next()
        ));
    }
    Ok(if same_crc { Shown::ByCrc } else { Shown::ByRest })
}

/// Way 2 of the module documentation: whether the first intact record after the damage at
/// `offset`, `next` (its sequence `m` and where it starts), equals the peer's record `m`, the
/// last of `copies` (the peer's records from `sequence` on), and the copies before it fill the
/// bytes up to it exactly; then `copies` is left holding those and `m` is returned; else why
/// not.
fn by_next_record(
    bytes: &[u8],
    offset: usize,
    sequence: Sequence,
    next: Option<(Sequence, usize)>,
    copies: &mut Vec<Vec<u8>>,
) -> Result<Sequence, String> {
    let Some((next, at)) = next else {
        return Err("no intact record follows the damage in its segment to compare".to_owned());
    };
    // What the span's bounds rest on: a later record, on a record boundary past the damage.
    assert!(next > sequence && at > offset, "the next intact record is not after the damage");
    assert_eq!(at % RECORD_ALIGN, 0, "a record found off a record boundary");
    if copies.len() as u64 != next.0 - sequence.0 + 1 {
        let lacking = Sequence(sequence.0 + copies.len() as u64);
        return Err(format!("the copy holds no intact record {lacking} to compare with {next}"));
    }
    let last = copies.pop().expect("the range holds record m");
    if bytes.get(at..at + last.len()) != Some(&last[..]) {
        return Err(format!(
            "the next intact record, {next} at byte offset {at}, differs from the copy's (the \
             journals diverged)"
        ));
    }
    let filled: usize = copies.iter().map(Vec::len).sum();
    if filled != at - offset {
        return Err(format!(
            "the copies of records {sequence}..={} take {filled} bytes where the damaged span \
             before record {next} takes {}",
            Sequence(next.0 - 1),
            at - offset
        ));
    }
    Ok(next)
}

/// The first intact record after byte `offset` with a sequence after `sequence`, and where it
/// starts: records start on [`RECORD_ALIGN`] boundaries, and a CRC32C over the record tells
/// one from the damage.
fn intact_after(bytes: &[u8], offset: usize, sequence: Sequence) -> Option<(Sequence, usize)> {
    scan::boundaries(bytes, offset).find_map(|at| {
        let (header, _) = format::check_record(&bytes[at..])?;
        (header.sequence > sequence).then_some((header.sequence, at))
    })
}
