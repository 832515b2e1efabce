//! The operator's repair from a peer's copy: a damaged record replaced, byte for byte, by the
//! same record read from another journal of the same history (the standby's or the primary's
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
//! The copy replaces the damaged bytes only when it is shown to be the same record:
//!
//! - it is intact (length, CRC32C) and has the damaged record's sequence;
//! - either its CRC32C equals the one stored in the damaged header (the damage lies elsewhere
//!   in the record), or every one of its bytes after the CRC equals the damaged record's (the
//!   damage lies in the CRC); a record of the same sequence from a journal that diverged, or
//!   damage reaching both the CRC and the rest, shows neither, and is refused;
//! - it fits: what follows it in this segment is the next record, intact, or nothing (zeros to
//!   the segment's end).
//!
//! Nothing but the record's bytes is written (no manifest, marker or epoch file changes): the
//! journal afterwards is the one that was written before the damage. Each damaged record is
//! healed in turn until the journal is intact or a record cannot be healed.

use ringfence_core::Sequence;

use crate::datadir;
use crate::error::JournalError;
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::rebuild;
use crate::scan::{self, ReadSource};
use crate::storage::{Segment, Storage};

/// Size of a record's stored CRC32C, at the start of its header.
const CRC_LEN: usize = 4;

/// One record [`heal`] replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healed {
    /// The segment file.
    pub file: String,
    /// Byte offset of the record in it.
    pub offset: u64,
    /// The record's sequence.
    pub sequence: Sequence,
    /// Its length in bytes, padding included.
    pub len: usize,
    /// Whether the damage lay in the stored CRC32C (else in the rest of the record).
    pub crc_damaged: bool,
}

/// Heals every damaged record of the journal in `storage` from the intact copies in `peer`
/// (see the module documentation); returns what it replaced, in journal order. Refused,
/// changing nothing, when the journal is intact, when its only damage is a torn tail a crash
/// left (recovery clears it), when the directory has problems other than damaged records (a
/// missing segment or manifest: that is `truncate`'s), or when the first damaged record has no
/// copy in `peer` shown to be the same. Records healed before a later one is refused stay
/// healed (each is the record that was written), and the error says so.
pub fn heal<S: Storage, P: ReadSource>(
    storage: &S,
    peer: &mut P,
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
        if healed.last().is_some_and(|last| last.sequence >= sequence) {
            return refuse(
                &healed,
                format!(
                    "record {sequence} still fails after it was healed ({}): what is wrong is \
                     not in its bytes",
                    problem.damage
                ),
            );
        }
        let copy = match peer_record(peer, sequence) {
            Ok(copy) => copy,
            Err(why) => return refuse(&healed, why),
        };
        let offset = usize::try_from(problem.offset).expect("a segment offset fits in memory");
        match replace(storage, &problem.name, offset, sequence, &copy) {
            Ok(crc_damaged) => healed.push(Healed {
                file: problem.name,
                offset: problem.offset,
                sequence,
                len: copy.len(),
                crc_damaged,
            }),
            Err(why) => return refuse(&healed, why),
        }
    }
}

/// The sequences of `healed`, for a message.
fn describe(healed: &[Healed]) -> String {
    assert!(!healed.is_empty(), "nothing healed to describe");
    let sequences: Vec<String> = healed.iter().map(|h| h.sequence.to_string()).collect();
    format!("sequence {}", sequences.join(", "))
}

/// The intact record `sequence` of the journal in `peer`, its bytes as journaled.
fn peer_record<P: ReadSource>(peer: &mut P, sequence: Sequence) -> Result<Vec<u8>, String> {
    let location = peer.location();
    let unreadable = |e: JournalError| format!("reading the copy in {location}: {e}");
    let check = datadir::check(peer).map_err(unreadable)?;
    let layout = scan::scan_segments(peer, &check.segments).map_err(unreadable)?;
    let holding = layout.segments.iter().find(|segment| {
        segment.header.first_sequence <= sequence && segment.last.is_some_and(|l| sequence <= l)
    });
    let Some(segment) = holding else {
        let holds = match (layout.first_sequence(), layout.last_sequence()) {
            (Some(first), Some(last)) => format!("intact records {first}..={last}"),
            _ => "no intact record".to_owned(),
        };
        return Err(format!("{location} holds no intact record {sequence} (it holds {holds})"));
    };
    let name = segment.name.clone();
    let bytes = peer.read_segment(&name).map_err(|e| format!("reading {location}/{name}: {e}"))?;
    let mut at = SEGMENT_HEADER_LEN;
    while let Some((header, len)) = format::check_record(&bytes[at..]) {
        if header.sequence == sequence {
            // What `replace` relies on: a whole record, on a record boundary.
            assert_eq!(len % format::RECORD_ALIGN, 0, "a record of a length off the alignment");
            assert!(len > CRC_LEN, "a record no longer than its CRC");
            return Ok(bytes[at..at + len].to_vec());
        }
        at += len;
    }
    // Found by the scan, gone on the second read: the directory changed under it (a node
    // running there dropped a diverged tail).
    Err(format!("record {sequence} of {location}/{name} changed while it was read: try again"))
}

/// Writes `copy` over the damaged record `sequence` at `offset` in segment `name` and syncs
/// it, once it is shown to be the same record and to fit; whether the damage lay in the CRC.
fn replace<S: Storage>(
    storage: &S,
    name: &str,
    offset: usize,
    sequence: Sequence,
    copy: &[u8],
) -> Result<bool, String> {
    assert!(offset >= SEGMENT_HEADER_LEN, "a damaged record inside the segment header");
    assert_eq!(offset % format::RECORD_ALIGN, 0, "a damaged record off a record boundary");
    let file = storage.describe(name);
    let mut segment = storage.open_segment(name).map_err(|e| format!("opening {file}: {e}"))?;
    let bytes = segment.bytes();
    let end = offset + copy.len();
    if end > bytes.len() {
        return Err(format!(
            "the copy of record {sequence} ({} bytes) runs past the end of {file}",
            copy.len()
        ));
    }
    let damaged = &bytes[offset..end];
    let same_crc = damaged[..CRC_LEN] == copy[..CRC_LEN];
    let same_rest = damaged[CRC_LEN..] == copy[CRC_LEN..];
    if same_crc && same_rest {
        return Err(format!(
            "record {sequence} in {file} at byte offset {offset} is the same bytes as the copy: \
             what recovery refuses there is not damage a copy repairs"
        ));
    }
    if !same_crc && !same_rest {
        return Err(format!(
            "the copy of record {sequence} does not match what is left of it in {file} at byte \
             offset {offset}: neither its CRC32C nor its other bytes agree, so it may be another \
             record (the journals diverged), or the damage reaches both"
        ));
    }
    let after = &bytes[end..];
    let next_follows =
        format::check_record(after).is_some_and(|(header, _)| header.sequence == sequence.next());
    if !next_follows && after.iter().any(|&byte| byte != 0) {
        return Err(format!(
            "what follows record {sequence} in {file}, at byte offset {end}, is neither record {} \
             intact nor the end of the records: more is damaged than this record",
            sequence.next()
        ));
    }
    segment.bytes_mut()[offset..end].copy_from_slice(copy);
    let healed = format::check_record(&segment.bytes()[offset..]);
    assert_eq!(healed.map(|(h, len)| (h.sequence, len)), Some((sequence, copy.len())), "unhealed");
    segment.sync(offset..end).map_err(|e| format!("syncing {file}: {e}"))?;
    Ok(!same_crc)
}
