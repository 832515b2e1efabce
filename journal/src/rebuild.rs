//! The operator's repair for damage a snapshot covers: the journal rebuilt to start just after
//! the oldest intact snapshot at or past the damage with intact records after it.
//!
//! `ringfence journal truncate` drops the damaged record and everything after it, and sets
//! aside every snapshot that holds a dropped record. When a snapshot covers the damage — it
//! holds the state through a sequence `s` at or after the damaged record — and the records
//! after `s` are intact, nothing acknowledged need go: the journal can start at `s + 1`, as if
//! retention had retired everything before it, and recovery starts from that snapshot (or a
//! newer one). So too for segments the manifest lists that are gone (deleted by hand, or lost
//! with a disk): a snapshot holding the state through their last record makes them unneeded.
//! The oldest such snapshot is taken, so that the journal keeps every record it can. A
//! rebuild:
//!
//! 1. writes the `rebuilding` marker durably, naming `s`, and removes the clean-stop marker (the
//!    journal's newest segment may change);
//! 2. when the records after `s` start part-way through a segment (or none follow), copies them
//!    byte for byte into a new segment named `s + 1`, built under a temporary name, synced, then
//!    renamed into place (empty, if none follow);
//! 3. rewrites the manifest to list that segment and the ones after it, retired below `s + 1`;
//! 4. renames every segment before `s + 1` to `*.seg.superseded` (the damaged one among them;
//!    the operator deletes them once satisfied), syncs the directory and removes the marker.
//!
//! A crash part way leaves the marker, and recovery (or a second run) finishes the rebuild from
//! where it stopped: a new segment already renamed into place is whole (it was synced before
//! the rename); until the manifest is rewritten the old segments are untouched, so the copy
//! can be made again; after it, only renames are left.

use std::ops::Range;

use ringfence_core::{EngineConfig, Sequence};

use crate::datadir::{self, CleanStop, DirCheck};
use crate::error::JournalError;
use crate::format::{self, RECORD_ALIGN, SEGMENT_HEADER_LEN, SegmentHeader};
use crate::manifest::ManifestSegment;
use crate::scan::{self, ReadSource, boundaries};
use crate::snapshot;
use crate::storage::{Segment, Storage, temp_name, write_atomically};

/// Present while a rebuild runs: its first line is the sequence of the snapshot the journal is
/// rebuilt after. Recovery finishes a rebuild it finds under way before it reads anything else.
pub const REBUILDING_FILE: &str = "rebuilding";

/// What a segment set aside by a rebuild is renamed to end with.
pub const SUPERSEDED_SUFFIX: &str = ".superseded";

/// What [`rebuild`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuild {
    /// The snapshot the journal now starts after.
    pub snapshot: String,
    /// Its sequence: the journal holds records from the next one on.
    pub through: Sequence,
    /// The new segment made for the records after the snapshot, if one was.
    pub new_segment: Option<String>,
    /// Records copied into it.
    pub copied: u64,
    /// Segments renamed `*.superseded`, as renamed.
    pub superseded: Vec<String>,
    /// The journal's last sequence.
    pub last: Sequence,
}

/// Where the records after a snapshot are, and what the rebuilt journal lists.
#[derive(Debug)]
struct Located {
    through: Sequence,
    snapshot: String,
    /// The listed segment holding record `through + 1`, or the newest segment if none does.
    from: usize,
    /// The bytes in it of records `through + 1` on, when they start part-way through it (or
    /// none follow: an empty range). `None` when the segment starts at `through + 1`.
    copy: Option<Range<usize>>,
    copied: u64,
    last: Sequence,
    /// The listed segments, oldest first.
    segments: Vec<(Sequence, String)>,
}

/// Rebuilds the journal after the oldest snapshot that covers its damage (see the module
/// documentation), or finishes a rebuild under way. Refused, changing nothing, when the
/// journal is intact, when its only damage is a torn tail a crash left (recovery clears it),
/// when the directory has problems a rebuild does not repair (a segment cut short: `heal`'s or
/// `truncate`'s, which the refusal names; the newest segment missing), or when no snapshot
/// covers the damage with intact records after it. Listed segments missing are damage like
/// any other: a snapshot holding the state through their last record covers them.
pub fn rebuild<S: Storage>(storage: &S) -> Result<Rebuild, JournalError> {
    if let Some(through) = rebuilding(storage)? {
        return finish(storage, through);
    }
    let located = plan(storage)?;
    write_rebuilding(storage, located.through)?;
    complete(storage, &located)
}

/// Refuses a rebuild for every reason [`rebuild`] refuses one before it changes a file,
/// reading `storage` only (a rebuild under way passes: running it again finishes it). The
/// operator's tool asks first, so that a refused rebuild takes no lock; [`rebuild`] asks
/// again, under the lock.
pub fn check<S: Storage>(storage: &S) -> Result<(), JournalError> {
    if rebuilding(storage)?.is_some() {
        return Ok(());
    }
    let planned = plan(storage).map(drop);
    debug_assert!(storage.file_len(REBUILDING_FILE).is_err(), "a check wrote the marker");
    planned
}

/// Where the records after the oldest snapshot that covers the damage are, or why there is
/// no such snapshot. Reads only.
fn plan<S: Storage>(storage: &S) -> Result<Located, JournalError> {
    let refuse = |why: String| Err(JournalError::Refused(format!("cannot rebuild: {why}")));
    let (Scanned { mut source, segments, layout }, missing) = scanned_past_missing(storage)?;
    let stop = datadir::clean_stop(storage)?;
    // The sequence a snapshot must hold the state through: the last one a missing segment
    // held, and the first damaged record of those after it.
    let damaged = match (&missing, layout.problem.as_ref()) {
        (None, None) => return refuse("the journal is intact; nothing to repair".to_owned()),
        (None, Some(problem)) if problem.torn_tail && stop.is_none() => {
            return refuse(format!(
                "the only damage is a torn tail at sequence {} (a write a crash cut off); a \
                 node clears it on start",
                problem.sequence
            ));
        }
        (None, Some(problem)) => problem.sequence,
        (Some(missing), problem) => {
            let after = problem.filter(|p| !p.torn_tail || stop.is_some()).map(|p| p.sequence);
            after.unwrap_or(missing.held_through).max(missing.held_through)
        }
    };
    let mut tried = Vec::new();
    // The oldest snapshot that serves sets aside the fewest records: the journal keeps every
    // record after it for replay and export, and recovery still starts from the newest.
    let covering = snapshot::list(storage)?.into_iter().filter(|(through, _)| *through >= damaged);
    for (through, name) in covering {
        if let Err(error) = snapshot::load(storage, &name, None) {
            tried.push(format!("{}: {error}", storage.describe(&name)));
            continue;
        }
        match locate(&mut source, &segments, through, stop.as_ref()) {
            Ok(mut located) => {
                assert!(located.through >= damaged, "a snapshot that does not cover the damage");
                located.snapshot = name;
                return Ok(located);
            }
            Err(why) => tried.push(format!("{}: {why}", storage.describe(&name))),
        }
    }
    let tried = if tried.is_empty() { String::new() } else { format!(" ({})", tried.join("; ")) };
    if let Some(missing) = missing {
        return refuse(format!(
            "segment {file} is missing, and no intact snapshot holds the state through \
             sequence {damaged} with intact records after it{tried}. Restore the file from a \
             backup or the standby; or, to accept losing sequence {oldest} and everything after \
             it, run `ringfence journal truncate {dir} --at-seq {oldest}`",
            file = missing.file,
            dir = layout.location,
            oldest = missing.oldest,
        ));
    }
    refuse(format!(
        "the journal is damaged at sequence {damaged}, and no intact snapshot covers it with \
         intact records after it{tried}. If the other node's journal (or a backup) holds the \
         record, `ringfence journal heal {0} --from <its directory>` copies it back, which \
         drops nothing; `ringfence journal truncate {0} --at-seq {damaged}` drops the damaged \
         record and those after it",
        layout.location
    ))
}

/// Refuses a journal with a segment cut short, naming the repairs that work. A rebuild keeps
/// the records after a snapshot and sets aside those before it; a segment cut short lost
/// records no snapshot is known to cover (the newest segment's lost records run to an end
/// nothing recorded, unless the node stopped cleanly), and the records after the snapshot
/// would have to be read from a file that lacks them. The records lost are put back by
/// `journal heal` from the other node's journal, or dropped by `journal truncate`.
fn refuse_cut_short(check: &DirCheck) -> Result<(), JournalError> {
    let cut = check.problems.iter().find(|problem| {
        matches!(problem, JournalError::SegmentLength { found, listed, .. } if found < listed)
    });
    let Some(problem) = cut else { return Ok(()) };
    Err(JournalError::Refused(format!(
        "cannot rebuild: a rebuild restarts the journal after a snapshot, and does not put back \
         the records a segment cut short lost: {problem}"
    )))
}

/// Listed segments a rebuild finds missing, the records after them scanned.
#[derive(Debug)]
struct Missing {
    /// The newest missing segment's file.
    file: String,
    /// The oldest missing segment's first sequence: the journal's records are whole before it.
    oldest: Sequence,
    /// The last sequence the missing segments held: the one before the first record of the
    /// segment listed after them.
    held_through: Sequence,
}

/// The directory as a rebuild reads it, read once: a segment cut short refused first
/// ([`refuse_cut_short`]); then as [`scanned`], except that listed segments missing
/// (and nothing else wrong with the directory) are let through, the segments after the newest
/// missing one scanned. A snapshot holding the state through their last record makes them
/// unneeded, as retention would have retired them. The newest listed segment missing is let
/// through only after a clean stop, whose marker says where its records ended (the newest
/// segment left is then what is scanned: no record follows in it).
fn scanned_past_missing<S: Storage>(
    storage: &S,
) -> Result<(Scanned<S>, Option<Missing>), JournalError> {
    let mut source = storage.clone();
    let check = datadir::check(&mut source)?;
    refuse_cut_short(&check)?;
    // Oldest first, as the manifest lists them.
    let missing: Vec<(Sequence, &String)> = (check.problems.iter())
        .filter_map(|problem| match problem {
            JournalError::SegmentMissing { first, file, .. } => Some((*first, file)),
            _ => None,
        })
        .collect();
    if missing.is_empty() || missing.len() < check.problems.len() {
        return Ok((scanned_from(source, check, "rebuild")?, None));
    }
    let ((oldest, _), (newest_missing, file)) = (missing[0], missing[missing.len() - 1]);
    assert!(oldest <= newest_missing, "missing segments out of the manifest's order");
    let file = file.clone();
    let listed = check.manifest.as_ref().expect("a missing segment is one the manifest lists");
    let (held_through, segments) = match listed.segments.iter().find(|s| s.first > newest_missing) {
        Some(next) => {
            let after = check.segments.iter().filter(|(first, _)| *first > newest_missing);
            (Sequence(next.first.0 - 1), after.cloned().collect::<Vec<_>>())
        }
        // The newest segment missing: its records ended where a clean stop says, and a
        // snapshot through there is the whole state. The rebuilt journal starts empty,
        // its header made from the newest segment left.
        None => {
            let stop = datadir::clean_stop(storage)?;
            let ended = stop.filter(|stop| stop.last.next() >= newest_missing);
            let newest_left = check.segments.last().filter(|(first, _)| *first < newest_missing);
            match (ended, newest_left) {
                (Some(stop), Some(left)) => (stop.last, vec![left.clone()]),
                (stop, _) => {
                    let why = if stop.is_some() {
                        "no segment is left to make the new one's header from"
                    } else {
                        "the node did not stop cleanly, so nothing says where its records ended"
                    };
                    return Err(JournalError::Refused(format!(
                        "cannot rebuild: the newest segment {file} is missing, and {why}. \
                         Restore the file from a backup or the standby; or, to accept losing \
                         sequence {newest_missing} and everything after it, run `ringfence \
                         journal truncate {} --at-seq {newest_missing}`",
                        source.location()
                    )));
                }
            }
        }
    };
    let gone = |first: &Sequence| missing.iter().any(|(missing, _)| missing == first);
    assert!(!segments.iter().any(|(first, _)| gone(first)), "a missing segment to be scanned");
    let layout = scan::scan_segments(&mut source, &segments)?;
    let missing = Missing { file, oldest, held_through };
    Ok((Scanned { source, segments, layout }, Some(missing)))
}

/// A directory as a tool that rewrites it first reads it.
pub(crate) struct Scanned<S> {
    /// A read handle on it.
    pub source: S,
    /// The segments the manifest lists.
    pub segments: Vec<(Sequence, String)>,
    /// Their scan.
    pub layout: scan::Layout,
}

/// The directory in `storage` for a tool that rewrites it (`cannot {what}` when refused).
/// Refused when the directory has problems the manifest check reports; `NoData` when it holds
/// nothing.
pub(crate) fn scanned<S: Storage>(storage: &S, what: &str) -> Result<Scanned<S>, JournalError> {
    let mut source = storage.clone();
    let check = datadir::check(&mut source)?;
    scanned_from(source, check, what)
}

/// [`scanned`], the directory's `check` already made through `source`.
fn scanned_from<S: Storage>(
    mut source: S,
    check: DirCheck,
    what: &str,
) -> Result<Scanned<S>, JournalError> {
    if let Some(problem) = check.problems.first() {
        return Err(JournalError::Refused(format!("cannot {what}: {problem}")));
    }
    if !check.holds_data() {
        return Err(JournalError::NoData { dir: source.location() });
    }
    let layout = scan::scan_segments(&mut source, &check.segments)?;
    // The scan reads only what the manifest lists, up to the first problem.
    assert!(layout.segments.len() <= check.segments.len(), "scanned an unlisted segment");
    Ok(Scanned { source, segments: check.segments, layout })
}

/// Where a rebuild under way rebuilds after, if one is.
pub fn rebuilding<R: ReadSource>(source: &R) -> Result<Option<Sequence>, JournalError> {
    let Ok(bytes) = source.read_file(REBUILDING_FILE) else { return Ok(None) };
    match datadir::marker_sequence(&bytes) {
        Some(through) => Ok(Some(through)),
        None => Err(JournalError::Options(format!(
            "{} does not name the snapshot sequence of the rebuild under way; run `ringfence \
             journal rebuild` again after deleting it",
            source.describe_file(REBUILDING_FILE)
        ))),
    }
}

pub(crate) fn write_rebuilding<S: Storage>(
    storage: &S,
    through: Sequence,
) -> Result<(), JournalError> {
    assert!(through.0 >= 1, "a snapshot through sequence 0");
    let text = format!(
        "{}\nA rebuild of this journal after snapshot {} was under way; the node's next start \
         finishes it.\n",
        through.0,
        snapshot::snapshot_name(through)
    );
    write_atomically(storage, REBUILDING_FILE, text.as_bytes())?;
    // The pair of the reading: it names the same sequence.
    debug_assert_eq!(rebuilding(storage).ok().flatten(), Some(through), "unreadable marker");
    Ok(())
}

/// Finishes a rebuild after `through` found under way.
pub(crate) fn finish<S: Storage>(storage: &S, through: Sequence) -> Result<Rebuild, JournalError> {
    let snapshot = snapshot::snapshot_name(through);
    let listed = datadir::read_listed_manifest(storage)?;
    let start = through.next();
    let rewritten = listed.retired_below >= start
        && listed.segments.first().is_some_and(|segment| segment.first == start);
    let segments = listed.segments.iter().map(|s| (s.first, format::segment_name(s.first)));
    // Listed segments gone (the damage a rebuild past missing segments repairs) are passed
    // over: the snapshot covers them, and a rebuild reads only what follows it.
    let segments: Vec<_> = segments.filter(|(_, name)| storage.file_len(name).is_ok()).collect();
    let mut source = storage.clone();
    let located = if rewritten {
        // Only renames were left: the journal is what the manifest lists.
        let layout = scan::scan_segments(&mut source, &segments)?;
        let last = layout.last_sequence().unwrap_or(through);
        Located { through, snapshot, from: 0, copy: None, copied: 0, last, segments }
    } else {
        let mut located = locate(&mut source, &segments, through, None).map_err(|why| {
            JournalError::Options(format!(
                "the rebuild after {snapshot} under way cannot be finished: {why}"
            ))
        })?;
        located.snapshot = snapshot;
        located
    };
    complete(storage, &located)
}

/// Steps 2 to 4, each skipped if a crash came after it.
fn complete<S: Storage>(storage: &S, located: &Located) -> Result<Rebuild, JournalError> {
    let start = located.through.next();
    let new_name = format::segment_name(start);
    // The journal's end may move to a new segment: a clean-stop marker would misname it.
    datadir::clean_stop_cleared(storage)?;
    let describe_io = |verb: &str, name: &str| {
        let context = format!("{verb} {}", storage.describe(name));
        move |e| JournalError::io(context, e)
    };
    // The rebuilt journal continues the snapshot's state, under the settings it holds.
    let settings = snapshot::read_meta(storage, &located.snapshot)?.config;
    let mut new_segment = None;
    if let Some(copy) = &located.copy
        && storage.file_len(&new_name).is_err()
    {
        let (_, from_name) = &located.segments[located.from];
        copy_segment(storage, from_name, copy.clone(), &new_name, (located.through, &settings))?;
        new_segment = Some(storage.describe(&new_name));
    }
    settle_settings(storage, &new_name, located.through, &settings)?;
    // The manifest: the new segment (or the one starting at `start`) and those after it,
    // unless a crash came after it was rewritten (as `finish` tells).
    let manifest = datadir::read_listed_manifest(storage)?;
    let rewritten = manifest.retired_below >= start
        && manifest.segments.first().is_some_and(|segment| segment.first == start);
    if !rewritten {
        let mut next = manifest.next_generation();
        let kept = located.segments.iter().skip(located.from + 1);
        let mut segments = vec![(start, new_name.clone())];
        if located.copy.is_none() {
            segments.clear();
            segments.push(located.segments[located.from].clone());
        }
        segments.extend(kept.cloned());
        next.segments.clear();
        for (first, name) in &segments {
            let len = storage.file_len(name).map_err(describe_io("reading", name))?;
            next.segments.push(ManifestSegment { first: *first, len });
        }
        let retired = manifest.segments.iter().filter(|s| s.first < start).count() as u64;
        next.segments_retired += retired;
        next.retired_below = start;
        // What the manifest promises: ascending, from the snapshot's next sequence.
        assert!(next.segments.windows(2).all(|p| p[0].first < p[1].first), "out of order");
        assert_eq!(next.segments.first().map(|s| s.first), Some(start), "a gap at the start");
        datadir::write_manifest(storage, &next)?;
    }
    let mut superseded = Vec::new();
    for (first, name) in scan::sorted_segments(storage)? {
        if first < start {
            let aside = format!("{name}{SUPERSEDED_SUFFIX}");
            storage.rename(&name, &aside).map_err(describe_io("renaming", &name))?;
            superseded.push(storage.describe(&aside));
        }
    }
    datadir::sync_dir(storage)?;
    storage.remove(REBUILDING_FILE).map_err(describe_io("removing", REBUILDING_FILE))?;
    datadir::sync_dir(storage)?;
    assert!(storage.file_len(REBUILDING_FILE).is_err(), "the marker is still there");
    // The journal holds at least the snapshot's state, and never a record before it.
    assert!(located.last >= located.through, "a journal ending before its snapshot");
    let copied = if located.copy.is_some() { located.copied } else { 0 };
    Ok(Rebuild {
        snapshot: storage.describe(&located.snapshot),
        through: located.through,
        new_segment,
        copied,
        superseded,
        last: located.last,
    })
}

/// Makes segment `new_name` holding `range` of segment `from_name`'s bytes after a header of
/// its own (first record `through + 1`, engine `settings`), under a temporary name, synced,
/// then renamed into place. Refused when records copied were written with other settings.
fn copy_segment<S: Storage>(
    storage: &S,
    from_name: &str,
    range: Range<usize>,
    new_name: &str,
    (through, settings): (Sequence, &EngineConfig),
) -> Result<(), JournalError> {
    let describe = |name: &str| storage.describe(name);
    let from = storage
        .open_segment(from_name)
        .map_err(|e| JournalError::io(format!("opening {}", describe(from_name)), e))?;
    let old = format::decode_segment_header(from.bytes()).map_err(|problem| {
        JournalError::Options(format!(
            "the header of {} is damaged: {problem}",
            describe(from_name)
        ))
    })?;
    if !range.is_empty() && old.config != *settings {
        return Err(other_settings(&describe(from_name), through, settings, &old.config));
    }
    let temp = temp_name(new_name);
    // An earlier attempt's temporary, cut off before its rename: made again from the start.
    if storage.file_len(&temp).is_ok() {
        storage
            .remove(&temp)
            .map_err(|e| JournalError::io(format!("removing {}", describe(&temp)), e))?;
    }
    let mut segment = storage
        .create_segment(&temp, old.segment_len)
        .map_err(|e| JournalError::io(format!("creating {}", describe(&temp)), e))?;
    let header = SegmentHeader { first_sequence: through.next(), config: settings.clone(), ..old };
    let end = SEGMENT_HEADER_LEN + range.len();
    // Whole records, which fit: they came from a segment of the same length, after its header.
    assert_eq!(range.len() % RECORD_ALIGN, 0, "a copy of part of a record");
    assert!(end <= segment.bytes().len(), "records that do not fit the new segment");
    format::encode_segment_header(&header, segment.bytes_mut());
    segment.bytes_mut()[SEGMENT_HEADER_LEN..end].copy_from_slice(&from.bytes()[range]);
    segment
        .sync(0..end)
        .map_err(|e| JournalError::io(format!("syncing {}", describe(&temp)), e))?;
    // The pair of the scan that will read it: the first record is the snapshot's next.
    let copied = format::check_record(&segment.bytes()[SEGMENT_HEADER_LEN..]);
    assert!(copied.is_none_or(|(h, _)| h.sequence == through.next()), "a copy from elsewhere");
    drop(segment);
    storage.rename(&temp, new_name).map_err(|e| {
        JournalError::io(format!("renaming {} to {}", describe(&temp), describe(new_name)), e)
    })?;
    datadir::sync_dir(storage)
}

/// Gives segment `name`, the first of the rebuilt journal, the snapshot's engine `settings`
/// in its header if it holds other ones and no record: a journal carried over to new settings
/// (`reconfigure`) whose newest segment was empty. Its records, had it any, were written with
/// the other settings: refused.
fn settle_settings<S: Storage>(
    storage: &S,
    name: &str,
    through: Sequence,
    settings: &EngineConfig,
) -> Result<(), JournalError> {
    let describe = storage.describe(name);
    let segment = storage
        .open_segment(name)
        .map_err(|e| JournalError::io(format!("opening {describe}"), e))?;
    let header = format::decode_segment_header(segment.bytes()).map_err(|problem| {
        JournalError::Options(format!("the header of {describe} is damaged: {problem}"))
    })?;
    // The segment the rebuilt journal starts with: the one after the snapshot.
    assert_eq!(header.first_sequence, through.next(), "settling a segment elsewhere");
    if header.config == *settings {
        return Ok(());
    }
    if format::check_record(&segment.bytes()[SEGMENT_HEADER_LEN..]).is_some() {
        return Err(other_settings(&describe, through, settings, &header.config));
    }
    drop(segment);
    // Made again whole, under a temporary name: the rename replaces it at once.
    copy_segment(storage, name, 0..0, name, (through, settings))
}

fn other_settings(
    file: &str,
    through: Sequence,
    settings: &EngineConfig,
    written: &EngineConfig,
) -> JournalError {
    assert_ne!(settings, written, "the same settings called other");
    JournalError::Options(format!(
        "{file} holds records after sequence {through} written with other [engine] settings \
         than the snapshot through it: {}",
        settings.differences(written, "the records")
    ))
}

/// Finds the records after `through` in the listed `segments`, checks that they and every
/// later segment are intact (a torn tail at the very end only when the node did not stop
/// cleanly), and, after a clean stop, that they end where the node stopped.
fn locate<R: ReadSource>(
    source: &mut R,
    segments: &[(Sequence, String)],
    through: Sequence,
    stop: Option<&CleanStop>,
) -> Result<Located, String> {
    let start = through.next();
    let from = segments.iter().rposition(|(first, _)| *first <= start).ok_or_else(|| {
        format!("the journal starts after sequence {start}, which the snapshot needs")
    })?;
    let (first, name) = &segments[from];
    let is_last = from + 1 == segments.len();
    let describe = source.describe_file(name);
    let bytes = source.read_segment(name).map_err(|e| format!("reading {describe}: {e}"))?;
    let (copy, copied, mut last) = if *first == start {
        (None, 0, through)
    } else {
        let found = records_after(&bytes, *first, start, is_last && stop.is_none())
            .map_err(|why| format!("{describe}: {why}"))?;
        match found {
            Some((range, count, last)) => (Some(range), count, last),
            None if is_last => (Some(0..0), 0, through),
            None => return Err(format!("{describe} does not hold sequence {start}")),
        }
    };
    if copy.is_some() {
        // Checked before the marker is written: `copy_segment` makes the new header from it.
        source_header(&bytes, *first).map_err(|why| format!("{describe}: {why}"))?;
    }
    drop(bytes);
    let rest = if copy.is_some() { &segments[from + 1..] } else { &segments[from..] };
    if !rest.is_empty() {
        let layout = scan::scan_segments(source, rest).map_err(|e| e.to_string())?;
        if rest[0].0 != last.next() {
            return Err(format!("sequences {}..{} are missing", last.next(), rest[0].0));
        }
        if let Some(problem) = layout.problem.as_ref().filter(|p| !p.torn_tail || stop.is_some()) {
            return Err(format!(
                "sequence {} in {} is damaged too",
                problem.sequence,
                source.describe_file(&problem.name)
            ));
        }
        last = layout.last_sequence().unwrap_or(last).max(last);
    }
    if let Some(stop) = stop.filter(|stop| stop.last != last) {
        return Err(format!(
            "the records after it end at sequence {last}, but the node stopped cleanly at {}",
            stop.last
        ));
    }
    // Records counted are bytes to copy; the journal does not end before the snapshot.
    assert!(copied == 0 || copy.as_ref().is_some_and(|r| !r.is_empty()), "records, no bytes");
    assert!(last >= through, "the records after the snapshot end before it");
    let segments = segments.to_vec();
    Ok(Located { through, snapshot: String::new(), from, copy, copied, last, segments })
}

/// The header of the segment a rebuild copies records from (or, with none after the snapshot,
/// makes the new segment's header from): it must decode and name the segment's `first`
/// sequence, or the records' settings and the new segment's length are unknown.
fn source_header(bytes: &[u8], first: Sequence) -> Result<SegmentHeader, String> {
    assert!(first.0 >= 1, "a segment before sequence 1");
    let header = format::decode_segment_header(bytes).map_err(|problem| {
        format!(
            "its header is damaged ({problem}): the settings its records were written with are \
             unknown, and the new segment's header is made from it"
        )
    })?;
    if header.first_sequence != first {
        return Err(format!(
            "its header names first sequence {}, not {first} as its name does",
            header.first_sequence
        ));
    }
    // The pair of the check in `copy_segment`, which decodes the same header again.
    assert_eq!(header.first_sequence, first, "a header for another segment");
    Ok(header)
}

/// In a segment's `bytes` (first record `first`): the byte range of records `start` on to the
/// segment's end, their count and last sequence; `None` if record `start` is not in it and no
/// later record is either. Records before `start` may be damaged (the snapshot covers them):
/// past damage, `start` is searched for on every record boundary. From `start` on, every record
/// must be intact, up to the segment's zeroed end — or, if `torn_allowed`, up to damage with
/// nothing intact after it that a crash could have left (a torn tail, never acknowledged).
fn records_after(
    bytes: &[u8],
    first: Sequence,
    start: Sequence,
    torn_allowed: bool,
) -> Result<Option<(Range<usize>, u64, Sequence)>, String> {
    assert!(first < start, "the segment starts at `start`: nothing to search");
    let mut at = SEGMENT_HEADER_LEN;
    let mut next = first;
    // Intact records up to `start`, as far as they go.
    while next < start {
        match format::check_record(&bytes[at..]) {
            Some((header, len)) if header.sequence == next => {
                at += len;
                next = next.next();
            }
            _ => break,
        }
    }
    if next < start {
        // Damage (or the end) before `start`: look for it on every record boundary after.
        let found = boundaries(bytes, at).find(|&offset| {
            format::check_record(&bytes[offset..]).is_some_and(|(h, _)| h.sequence == start)
        });
        match found {
            Some(offset) => at = offset,
            None => {
                let later = boundaries(bytes, at).find_map(|offset| {
                    format::check_record(&bytes[offset..])
                        .filter(|(h, _)| h.sequence > start)
                        .map(|(h, _)| h.sequence)
                });
                return match later {
                    Some(later) => Err(format!(
                        "sequence {start} is damaged too (sequence {later} follows it)"
                    )),
                    None => Ok(None),
                };
            }
        }
    }
    let begin = at;
    let mut count = 0;
    let mut last = Sequence(start.0 - 1);
    loop {
        let rest = &bytes[at..];
        if format::is_end_marker(rest) {
            if scan::last_nonzero(rest).is_none() {
                break;
            }
        } else if let Some((header, len)) = format::check_record(rest) {
            if header.sequence == last.next() {
                at += len;
                count += 1;
                last = header.sequence;
                continue;
            }
        }
        // Damage from here: a torn tail only if nothing intact follows and a crash could
        // have left it, as recovery judges it (one flipped bit is damage at rest to a record
        // that may have been acknowledged, never dropped as a torn write).
        let intact_after =
            boundaries(bytes, at).any(|o| format::check_record(&bytes[o..]).is_some());
        if torn_allowed && !intact_after && scan::could_be_torn_write(rest, last.next()) {
            break;
        }
        return Err(format!("sequence {} at byte offset {at} is damaged too", last.next()));
    }
    // Whole records from a boundary: what the copy needs.
    assert_eq!((at - begin) % RECORD_ALIGN, 0, "records off the 16-byte grid");
    assert!(count > 0 || begin == at, "bytes without records");
    Ok(Some((begin..at, count, last)))
}
