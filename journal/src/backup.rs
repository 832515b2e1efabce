//! A copy of a data directory, taken while its node runs, that a node can start from.
//!
//! The journal is append-only and a snapshot file never changes once it is in place, so a
//! reader that takes no lock can copy a live directory: what it scanned stays as it was. Only
//! retention moves under it: after a snapshot, the node deletes the oldest snapshots and then
//! retires (deletes or archives) the segments only they needed. A backup:
//!
//! 1. compares the directory with its manifest and scans the segments it lists: the copy
//!    holds the intact records the scan found, through its last, and nothing after (a record
//!    the node was writing is left out whole);
//! 2. copies each of those segments, oldest first, byte for byte up to the end of its intact
//!    records. A segment retired before it was read went because a newer snapshot made it
//!    unneeded, and so did every segment before it: those copied so far are dropped and the
//!    copy goes on with the next;
//! 3. copies the snapshots then present that the copied journal reaches (through a sequence
//!    from one before its first record to its last), each streamed through one buffer, never
//!    held whole. A copy whose journal starts after
//!    sequence 1 needs one of them; when retention took every one it could use, the copy is
//!    made again from step 1. An empty snapshot file, which cannot load, is left out and
//!    named as damaged, as step 5 does with any other that fails;
//! 4. copies the epoch file (read after the records, so its epochs are at least theirs),
//!    writes a manifest listing the copied segments, the clean-stop marker when the node
//!    stopped cleanly where the copy ends, and the catch-up marker: the copy lacks whatever
//!    the node acknowledged after it, so it never takes over on the strength of an in-sync
//!    record ([`crate::datadir::CATCH_UP_FILE`]);
//! 5. checks the copy as recovery would: manifest, segments, every record, and each snapshot
//!    restored and its state digest compared. A snapshot that fails is taken out of the copy,
//!    as recovery passes over it; a copy left with none to start from is refused.
//!
//! A directory whose node stopped cleanly is copied only if its journal still ends where the
//! clean-stop marker says, judged as recovery judges it: a tail that moved while no node ran
//! is damage at rest, which recovery refuses too.
//!
//! [`backup_dir`] builds the copy under `DEST.partial` and renames it to `DEST` only once it
//! is whole and synced, so `DEST` either does not exist or is a whole copy; whichever step
//! fails, `DEST.partial` is removed. The directory
//! copied is only read.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringfence_core::Sequence;

use crate::datadir::{self, DirCheck};
use crate::error::JournalError;
use crate::format;
use crate::manifest::{Manifest, ManifestSegment};
use crate::rebuild::REBUILDING_FILE;
use crate::recovery;
use crate::scan::{self, Layout, ReadOnlyDir, ReadSource};
use crate::snapshot;
use crate::storage::{FileStorage, Segment, Storage};

/// Tries at the copy, each from the start, while the directory changes under it: retention
/// took everything the copy could start from, or the scan met a record being written with the
/// next one already whole.
const ATTEMPTS: u32 = 5;

/// The suffix of the directory a backup is built in, beside its destination.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// What [`backup`] copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackedUp {
    /// The sequence the copy's journal starts at (its first segment's first).
    pub first: Sequence,
    /// The last record copied; `None` when the journal held none.
    pub last: Option<Sequence>,
    /// Records copied.
    pub records: u64,
    /// Segments copied, oldest first.
    pub segments: Vec<String>,
    /// Snapshots copied, by the sequence they hold the state through, oldest first.
    pub snapshots: Vec<Sequence>,
    /// Bytes of records, segment headers and snapshots copied.
    pub bytes: u64,
    /// The record the node was writing when the journal was scanned (or a write a crash cut
    /// off), left out.
    pub left_out: Option<Sequence>,
    /// Whether the node had stopped cleanly where the copy ends (the copy says so too).
    pub clean_stop: bool,
    /// Snapshots that did not load, left out of the copy (as recovery passes over them), with
    /// why.
    pub damaged_snapshots: Vec<String>,
}

/// One try at the copy.
enum Attempt {
    Copied(BackedUp),
    /// Retention moved under the copy; why, for the error if every attempt says so.
    Raced(String),
}

/// Copies the data directory `dir` into the new directory `dest` (see the module
/// documentation). Refused, changing nothing, when `dest` lies inside `dir` or `dir` inside
/// `dest`, when `dest` exists, when `dir` holds no journal, has a repair under way or is
/// damaged before its tail.
/// `subdirectories` of `dir` (the tools' own, such as `rollback/`) are copied along, file by
/// file. `progress` is told the records copied so far and the records to copy, after each
/// segment.
pub fn backup_dir(
    dir: &Path,
    dest: &Path,
    subdirectories: &[&str],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackedUp, JournalError> {
    refuse_nested(dir, dest)?;
    // A symbolic link counts, dangling or not: the copy would be renamed onto it at the end.
    if dest.symlink_metadata().is_ok() {
        return Err(JournalError::Refused(format!(
            "{} exists: a backup goes to a new directory",
            dest.display()
        )));
    }
    let partial = partial_path(dest);
    if partial.exists() {
        return Err(JournalError::Refused(format!(
            "{} exists: a backup cut off part way left it; delete it and run the backup again",
            partial.display()
        )));
    }
    let made = missing_parents(dest);
    let copied = build_and_place(dir, dest, &partial, subdirectories, progress);
    if copied.is_err() {
        // Nothing of a refused or failed copy is left behind, whichever step failed: neither
        // the part built nor the directories made to hold it (each removed only if empty).
        let _ = std::fs::remove_dir_all(&partial);
        for parent in &made {
            let _ = std::fs::remove_dir(parent);
        }
    }
    assert!(!partial.exists() || copied.is_err(), "a copy placed and left in {PARTIAL_SUFFIX}");
    assert!(copied.is_err() || dest.is_dir(), "a copy made and not placed");
    copied
}

/// The directories above `dest` that do not exist yet, the deepest first: the copy makes
/// them.
fn missing_parents(dest: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut parent = dest.parent();
    while let Some(path) = parent.filter(|p| !p.as_os_str().is_empty()) {
        if path.symlink_metadata().is_ok() {
            break;
        }
        missing.push(path.to_path_buf());
        parent = path.parent();
    }
    // Each is the one before it, shortened by a component.
    assert!(missing.windows(2).all(|pair| pair[0].parent() == Some(&*pair[1])), "{missing:?}");
    assert!(missing.iter().all(|path| dest.starts_with(path)), "{missing:?}");
    missing
}

/// Refuses a destination inside the directory copied, and the directory copied inside the
/// destination. A copy (and its `DEST.partial`) inside a data directory would leave files there
/// that are no part of its journal, which the node may refuse at its next start; a directory
/// copied into itself is no backup. The paths are compared as the file system resolves them
/// (symbolic links, `..`); `dest` need not exist yet.
fn refuse_nested(dir: &Path, dest: &Path) -> Result<(), JournalError> {
    // A directory that cannot be resolved cannot be opened either: the copy says why.
    let Ok(source) = dir.canonicalize() else { return Ok(()) };
    let target = resolve_to_be(dest)?;
    // Both resolved from the root: `starts_with` compares whole components of the same tree.
    assert!(source.is_absolute(), "{} resolved to a relative path", dir.display());
    assert!(target.is_absolute(), "{} resolved to a relative path", dest.display());
    let (inner, outer) = if target.starts_with(&source) {
        (dest, dir)
    } else if source.starts_with(&target) {
        (dir, dest)
    } else {
        return Ok(());
    };
    Err(JournalError::Refused(format!(
        "cannot back up {} into {}: {} lies inside {} ({} and {} once resolved); a backup goes to \
         a new directory outside the data directory it copies. Nothing was changed",
        dir.display(),
        dest.display(),
        inner.display(),
        outer.display(),
        source.display(),
        target.display()
    )))
}

/// `path` as the file system will resolve it once created: its nearest existing ancestor
/// canonicalized, then the components below it, which do not exist yet and so are no links.
fn resolve_to_be(path: &Path) -> Result<PathBuf, JournalError> {
    for existing in path.ancestors() {
        let existing = if existing.as_os_str().is_empty() { Path::new(".") } else { existing };
        let Ok(mut resolved) = existing.canonicalize() else { continue };
        assert!(resolved.is_absolute(), "a canonical path that is not absolute");
        let below = path.strip_prefix(existing).unwrap_or(path);
        for component in below.components() {
            match component {
                std::path::Component::ParentDir => {
                    resolved.pop();
                }
                std::path::Component::Normal(name) => resolved.push(name),
                _ => {}
            }
        }
        return Ok(resolved);
    }
    Err(JournalError::io(
        format!("resolving {}", path.display()),
        io::Error::new(io::ErrorKind::NotFound, "no part of the path exists"),
    ))
}

/// [`backup_dir`]'s steps after its checks: the copy built in `partial`, then renamed to `dest`
/// and synced there. On an error `partial` may hold part of a copy (the caller removes it).
fn build_and_place(
    dir: &Path,
    dest: &Path,
    partial: &Path,
    subdirectories: &[&str],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackedUp, JournalError> {
    assert!(!dest.exists(), "a backup over {}", dest.display());
    let mut source = ReadOnlyDir::open(dir)?;
    let storage = FileStorage::open(partial)
        .map_err(|e| JournalError::io(format!("creating {}", partial.display()), e))?;
    let copied = backup(&mut source, &storage, progress)?;
    copy_subdirectories(dir, partial, subdirectories)?;
    datadir::sync_dir(&storage)?;
    assert!(partial.is_dir(), "the copy was built nowhere");
    std::fs::rename(partial, dest).map_err(|e| {
        JournalError::io(format!("renaming {} to {}", partial.display(), dest.display()), e)
    })?;
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::storage::sync_dir(parent)
        .map_err(|e| JournalError::io(format!("syncing {}", parent.display()), e))?;
    assert!(dest.is_dir() && !partial.exists(), "the copy was not renamed into place");
    Ok(copied)
}

/// Where [`backup_dir`] builds the copy of `dest`: beside it, named after it.
#[must_use]
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(PARTIAL_SUFFIX);
    let partial = dest.with_file_name(name);
    assert_ne!(partial, dest, "the copy is built where it goes");
    partial
}

/// Copies the data directory read through `source` into the empty storage `dest` (see the
/// module documentation), trying again from the start when retention took, under the copy,
/// everything it could start from. `progress` is told the records copied so far and the
/// records to copy, after each segment. On an error `dest` may hold part of a copy.
pub fn backup<R: ReadSource, S: Storage>(
    source: &mut R,
    dest: &S,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackedUp, JournalError> {
    copy_trying(source, dest, progress, ATTEMPTS)
}

/// [`backup`] of a directory no process writes (the simulator's, between its steps): one
/// try, with no pause; a directory that looks changed under it is refused.
pub fn backup_still<R: ReadSource, S: Storage>(
    source: &mut R,
    dest: &S,
) -> Result<BackedUp, JournalError> {
    copy_trying(source, dest, &mut |_, _| {}, 1)
}

/// The copy, tried up to `attempts` times while the directory changes under it.
fn copy_trying<R: ReadSource, S: Storage>(
    source: &mut R,
    dest: &S,
    progress: &mut dyn FnMut(u64, u64),
    attempts: u32,
) -> Result<BackedUp, JournalError> {
    assert!((1..=ATTEMPTS).contains(&attempts), "{attempts} tries at a copy");
    let listed =
        dest.list().map_err(|e| JournalError::io(format!("listing {}", dest.describe("")), e))?;
    assert!(listed.is_empty(), "a backup into a directory that holds files: {listed:?}");
    let mut why = String::new();
    // Where the last scan found damage: a record the node was writing, if the next scan
    // finds the journal whole there.
    let mut damage = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            clear(dest)?;
            std::thread::sleep(Duration::from_millis(20 << attempt));
        }
        match attempt_copy(source, dest, &mut damage, progress)? {
            Attempt::Copied(mut copied) => {
                verify_copy(source, dest, &mut copied)?;
                return Ok(copied);
            }
            Attempt::Raced(reason) => why = reason,
        }
    }
    assert!(!why.is_empty(), "every attempt raced, for no reason");
    Err(JournalError::Refused(format!(
        "{} changed under every copy of it: {why}; run the backup again",
        source.location()
    )))
}

/// Steps 1 to 4, once.
fn attempt_copy<R: ReadSource, S: Storage>(
    source: &mut R,
    dest: &S,
    damage: &mut Option<(String, u64)>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Attempt, JournalError> {
    let Scanned { check, layout, stop } = match scanned(source, damage)? {
        Ok(scanned) => scanned,
        Err(raced) => return Ok(Attempt::Raced(raced)),
    };
    let manifest = check.manifest.as_ref().expect("a scanned journal has its manifest");
    let mut copied: Vec<String> = Vec::new();
    let mut bytes = 0;
    let (mut done, total) = (0, layout.records());
    for segment in &layout.segments {
        done += segment.records;
        progress(done, total);
        let Some(read) = read_segment(source, &segment.name)? else {
            // Retired since the scan, with every segment before it: start after it.
            for name in copied.drain(..) {
                remove(dest, &name)?;
            }
            bytes = 0;
            continue;
        };
        let len = segment.header.segment_len;
        let mut copy = dest.create_segment(&segment.name, len).map_err(|e| {
            JournalError::io(format!("creating {}", dest.describe(&segment.name)), e)
        })?;
        // The bytes scanned are the node's and no longer change: records are only appended.
        copy.bytes_mut()[..segment.end].copy_from_slice(&read[..segment.end]);
        copy.sync(0..segment.end).map_err(|e| {
            JournalError::io(format!("syncing {}", dest.describe(&segment.name)), e)
        })?;
        bytes += segment.end as u64;
        copied.push(segment.name.clone());
    }
    let kept: Vec<_> = layout.segments.iter().filter(|s| copied.contains(&s.name)).collect();
    let Some(first_kept) = kept.first() else {
        return Ok(Attempt::Raced("every segment was retired before it was read".to_owned()));
    };
    let first = first_kept.header.first_sequence;
    let last = layout.last_sequence();
    let end = kept.last().map_or(first, |s| s.ends_at());
    let (snapshots, damaged_snapshots) = copy_snapshots(source, dest, first, end, &mut bytes)?;
    // With only damaged ones to start from, step 5 refuses the copy, naming them.
    if first.0 > 1 && snapshots.is_empty() && damaged_snapshots.is_empty() {
        return Ok(Attempt::Raced(format!(
            "the journal starts at {first}, and retention took every snapshot it reaches"
        )));
    }
    let skipped = layout.segments.len() - kept.len();
    let retired_below = if skipped == 0 { manifest.retired_below } else { first };
    let mut listing = Manifest {
        generation: 1,
        retired_below,
        segments_retired: manifest.segments_retired + skipped as u64,
        segments: Vec::new(),
    };
    for segment in &kept {
        listing.segments.push(ManifestSegment {
            first: segment.header.first_sequence,
            len: segment.header.segment_len,
        });
    }
    // The epoch file after the records: epochs only go up, so it is at least as new as theirs.
    let epochs = datadir::read_epoch_file(source)?;
    datadir::write_epochs(dest, epochs)?;
    datadir::write_manifest(dest, &listing)?;
    // A stopped node's journal ends where its marker says (`scanned`), and so does the copy.
    let clean_stop = stop.is_some();
    if let Some(stop) = stop {
        assert_eq!(stop.last, end, "a clean stop elsewhere than the copy's end");
        datadir::mark_clean_stop(dest, &stop)?;
    }
    datadir::mark_catching_up(dest)?;
    let records = kept.iter().map(|s| s.records).sum();
    // A journal copied whole holds every record the scan found.
    assert!(skipped > 0 || records == layout.records(), "records lost in the copy");
    assert!(last.is_none_or(|last| last == end), "the copy ends elsewhere than the journal");
    Ok(Attempt::Copied(BackedUp {
        first,
        last: (records > 0).then_some(end),
        records,
        segments: copied,
        snapshots,
        bytes,
        left_out: layout.problem.as_ref().map(|p| p.sequence),
        clean_stop,
        damaged_snapshots,
    }))
}

/// The directory compared with its manifest and its listed segments scanned; `Err` with a
/// reason when what was compared moved under the comparison: retention rewrote the manifest
/// between the listing and the reading, or the scan met a record the node was writing with
/// the next one already whole behind it (`damage` remembers where, and the same damage found
/// twice in a row is damage). Refused when a repair is under way, when there is no journal,
/// when the journal is damaged before its tail, and when its node stopped cleanly and it no
/// longer ends there.
fn scanned<R: ReadSource>(
    source: &mut R,
    damage: &mut Option<(String, u64)>,
) -> Result<Result<Scanned, String>, JournalError> {
    let refuse = |why: String| Err(JournalError::Refused(why));
    let location = source.location();
    if datadir::truncation_under_way(source).is_some() || source.file_len(REBUILDING_FILE).is_ok() {
        return refuse(format!(
            "a repair of {location} is under way (a truncation or a rebuild cut off part way); \
             the node's next start, or the repair run again, finishes it"
        ));
    }
    let check = datadir::check(source)?;
    if let Some(problem) = check.problems.first() {
        return match problem {
            JournalError::SegmentMissing { .. } | JournalError::SegmentLength { .. } => {
                Ok(Err(problem.to_string()))
            }
            _ => refuse(format!("{problem}; `ringfence journal verify {location}` says more")),
        };
    }
    if check.manifest.is_none() {
        return refuse(format!("{location} holds no journal to back up"));
    }
    let layout = scan::scan_segments(source, &check.segments)?;
    if let Some(corrupt) = layout.corruption(&|name| source.describe_file(name)) {
        let problem = layout.problem.as_ref().expect("corruption is a problem");
        let place = (problem.name.clone(), problem.offset);
        let in_last = problem.segment.is_some_and(|index| index + 1 == layout.segments.len());
        if in_last && damage.as_ref() != Some(&place) {
            // Not the repair `corrupt` proposes: the journal may well be whole.
            let (file, at) = (source.describe_file(&problem.name), problem.offset);
            let reason = format!(
                "the records ended at {file} byte offset {at} ({}), somewhere else at each read",
                problem.damage
            );
            *damage = Some(place);
            return Ok(Err(reason));
        }
        return refuse(format!(
            "{corrupt}; repair it first (`ringfence journal verify {location}` says how)"
        ));
    }
    // A clean scan, or one that stops at a record not yet whole: the tail is all it leaves out.
    assert!(layout.problem.as_ref().is_none_or(|p| p.torn_tail), "damage passed over");
    assert!(layout.segments.len() <= check.segments.len(), "a segment scanned but not listed");
    // A stopped node's journal must still end where it stopped, as recovery judges it; a
    // marker a build that does not know it left behind (records past it) is ignored.
    let mut stop = datadir::clean_stop(source)?;
    if let Some(marker) = &stop {
        match recovery::check_clean_stop(&layout, marker, &|name| source.describe_file(name)) {
            Ok(stale) => {
                stop = stop.filter(|_| !stale);
                // A marker kept names the end of the journal scanned.
                let ends = layout.segments.last().map(|s| s.ends_at());
                assert!(stop.as_ref().is_none_or(|s| Some(s.last) == ends), "a clean stop moved");
            }
            Err(moved) => {
                return refuse(format!(
                    "{moved}; repair it first (`ringfence journal verify {location}` says how)"
                ));
            }
        }
    }
    Ok(Ok(Scanned { check, layout, stop }))
}

/// What [`scanned`] read of the directory.
struct Scanned {
    check: DirCheck,
    layout: Layout,
    /// The clean-stop marker, if the node stopped cleanly; the journal ends where it says.
    stop: Option<datadir::CleanStop>,
}

/// A segment's bytes, or `None` if it is gone (retired since the scan).
fn read_segment<R: ReadSource>(
    source: &mut R,
    name: &str,
) -> Result<Option<R::Bytes>, JournalError> {
    match source.read_segment(name) {
        Ok(bytes) => {
            assert!(bytes.len() >= format::SEGMENT_HEADER_LEN, "a scanned segment shrank");
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JournalError::io(format!("reading {}", source.describe_file(name)), e)),
    }
}

/// Copies the snapshots present that the copied journal, from `first` through `end`, reaches;
/// the sequences they hold the state through, oldest first, and why each empty one (which
/// cannot load) was left out. Step 5 checks the others.
fn copy_snapshots<R: ReadSource, S: Storage>(
    source: &R,
    dest: &S,
    first: Sequence,
    end: Sequence,
    bytes: &mut u64,
) -> Result<(Vec<Sequence>, Vec<String>), JournalError> {
    // The copied journal's end is its last record, or just before its first (none held).
    assert!(first <= end.next(), "a journal ending before its first record");
    let reaches = |through: Sequence| through.next() >= first && through <= end;
    let mut copied = Vec::new();
    let mut damaged = Vec::new();
    for (through, name) in snapshot::list(source)? {
        if !reaches(through) {
            continue;
        }
        let reading = |e| JournalError::io(format!("reading {}", source.describe_file(&name)), e);
        let file = match source.open_file(&name) {
            Ok(file) => file,
            // Deleted by retention since the listing: a newer one took its place.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(reading(e)),
        };
        // Streamed through one buffer, never held whole: a snapshot is as large as the state.
        let mut file = io::BufReader::with_capacity(snapshot::SNAPSHOT_BUFFER_BYTES, file);
        if io::BufRead::fill_buf(&mut file).map_err(reading)?.is_empty() {
            // Damage at rest: left out as recovery passes over it, and said why.
            damaged.push(empty_snapshot(source, &name));
            continue;
        }
        // A failure to read the source is told apart from one to write the copy.
        let (mut read_failed, mut read) = (None, 0);
        let written = crate::storage::write_atomically_with(dest, &name, &mut |copy| {
            read = copy_through(&mut file, copy, &mut read_failed)?;
            Ok(())
        });
        if let Some(e) = read_failed {
            return Err(reading(e));
        }
        let written = written?;
        // What the copy holds is what was read, every byte of it.
        assert_eq!(written, read, "a snapshot copied to another length: {name}");
        *bytes += written;
        copied.push(through);
    }
    assert!(copied.windows(2).all(|pair| pair[0] < pair[1]), "snapshots out of order");
    assert!(copied.iter().all(|&through| reaches(through)), "a snapshot the journal misses");
    Ok((copied, damaged))
}

/// Copies what `from` holds to `to`, through `from`'s own buffer; how many bytes. A failure to
/// read is kept in `read_failed` (and returned as an error, so the copy stops), one to write
/// returned as is.
fn copy_through(
    from: &mut dyn io::BufRead,
    to: &mut dyn io::Write,
    read_failed: &mut Option<io::Error>,
) -> io::Result<u64> {
    let mut copied = 0;
    loop {
        let piece = match from.fill_buf() {
            Ok([]) => return Ok(copied),
            Ok(piece) => piece,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let kind = e.kind();
                *read_failed = Some(e);
                return Err(io::Error::new(kind, "the source could not be read"));
            }
        };
        to.write_all(piece)?;
        let len = piece.len();
        from.consume(len);
        copied += len as u64;
    }
}

/// Why the empty snapshot `name` in `source` is left out, as its load says.
fn empty_snapshot<R: ReadSource>(source: &R, name: &str) -> String {
    assert!(name.ends_with(".snap"), "not a snapshot: {name}");
    let why = match snapshot::load(source, name, None) {
        Err(error) => error.to_string(),
        Ok(_) => format!("{}: the file is empty", source.describe_file(name)),
    };
    assert!(!why.is_empty(), "a snapshot left out for no reason");
    why
}

/// Step 5: the copy read back as recovery reads it. A snapshot whose copy does not load is
/// loaded from `source`: damaged there too, it is taken out of the copy, as recovery passes
/// over it for an older one, and noted in [`BackedUp::damaged_snapshots`]; intact there, the
/// copy failed, and so does the backup. A copy left without a snapshot to start from is
/// refused.
fn verify_copy<R: ReadSource, S: Storage>(
    source: &R,
    dest: &S,
    copied: &mut BackedUp,
) -> Result<(), JournalError> {
    let mut read = dest.clone();
    let check = datadir::check(&mut read)?;
    if let Some(problem) = check.problems.into_iter().next() {
        return Err(problem);
    }
    let layout = scan::scan_segments(&mut read, &check.segments)?;
    if let Some(problem) = &layout.problem {
        return Err(JournalError::Refused(format!(
            "the copy does not read back: {} at byte {} of {}",
            problem.damage, problem.offset, problem.name
        )));
    }
    let mut intact = Vec::new();
    for through in std::mem::take(&mut copied.snapshots) {
        let name = snapshot::snapshot_name(through);
        let Err(copy_error) = snapshot::load(dest, &name, None) else {
            intact.push(through);
            continue;
        };
        match snapshot::load(source, &name, None) {
            Ok(_) => {
                return Err(JournalError::Refused(format!(
                    "the copy of {} does not read back: {copy_error}",
                    source.describe_file(&name)
                )));
            }
            Err(error) => {
                remove(dest, &name)?;
                copied.damaged_snapshots.push(error.to_string());
            }
        }
    }
    copied.snapshots = intact;
    if copied.first.0 > 1 && copied.snapshots.is_empty() {
        return Err(JournalError::Refused(format!(
            "the journal starts at sequence {}, and no snapshot it reaches is intact: {}",
            copied.first,
            copied.damaged_snapshots.join("; ")
        )));
    }
    datadir::sync_dir(dest)?;
    assert_eq!(layout.records(), copied.records, "the copy holds other records");
    assert_eq!(layout.last_sequence(), copied.last, "the copy ends elsewhere");
    Ok(())
}

/// Removes everything a try at the copy wrote.
fn clear<S: Storage>(dest: &S) -> Result<(), JournalError> {
    let names =
        dest.list().map_err(|e| JournalError::io(format!("listing {}", dest.describe("")), e))?;
    for name in &names {
        remove(dest, name)?;
    }
    assert!(dest.list().is_ok_and(|left| left.is_empty()), "files left after clearing");
    Ok(())
}

fn remove<S: Storage>(dest: &S, name: &str) -> Result<(), JournalError> {
    dest.remove(name).map_err(|e| JournalError::io(format!("removing {}", dest.describe(name)), e))
}

/// Copies the files of `dir/sub` into `partial/sub` for each of `subdirectories` that exists.
fn copy_subdirectories(
    dir: &Path,
    partial: &Path,
    subdirectories: &[&str],
) -> Result<(), JournalError> {
    let io = |what: &str, path: &Path| {
        let context = format!("{what} {}", path.display());
        move |e| JournalError::io(context, e)
    };
    for sub in subdirectories {
        assert!(!sub.is_empty() && !sub.contains('/'), "not a subdirectory's name: {sub}");
        let from = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&from) else { continue };
        let to = partial.join(sub);
        std::fs::create_dir_all(&to).map_err(io("creating", &to))?;
        for entry in entries {
            let path = entry.map_err(io("listing", &from))?.path();
            let Some(name) = path.file_name().filter(|_| path.is_file()) else { continue };
            let target = to.join(name);
            std::fs::copy(&path, &target).map_err(io("copying", &path))?;
            std::fs::File::open(&target)
                .and_then(|file| file.sync_all())
                .map_err(io("syncing", &target))?;
        }
        crate::storage::sync_dir(&to).map_err(io("syncing", &to))?;
        assert!(to.is_dir(), "a subdirectory copied nowhere");
    }
    Ok(())
}
