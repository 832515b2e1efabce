//! Recovery on start: the data directory checked against its manifest, the newest usable
//! snapshot, then the journal from the next sequence through the BLP. What a crash can leave
//! behind — a torn tail, temporary files, a segment whose creation was cut off, retired
//! segments not yet removed — is cleared and reported; anything else refuses to start, naming
//! the file and what to do.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ringfence_core::{Engine, EngineConfig, Epoch, Lookahead, Sequence};

use crate::datadir::{self, CLEAN_STOP_FILE, CleanStop, DataDir, DirCheck};
use crate::epoch::{EPOCH_FILE, Epochs};
use crate::error::JournalError;
use crate::format;
use crate::manifest::{Manifest, ManifestSegment};
use crate::rebuild;
use crate::scan::{self, Layout, ReadSource, SegmentLayout};
use crate::snapshot::{self, SnapshotMeta};
use crate::storage::{FileStorage, Retired, Segment, Storage, is_temp_name, temp_name};
use crate::writer::{JournalWriter, WriterOptions};

/// A torn tail found and cleared by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment (as the storage names it).
    pub file: String,
    /// Byte offset where intact records end.
    pub offset: u64,
    /// The sequence that was being written (not acknowledged: it never became durable).
    pub sequence: Sequence,
    /// What was found there.
    pub damage: String,
    /// Bytes zeroed.
    pub bytes_cleared: u64,
}

/// What recovery did, for the log.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// Whether the directory was new and has been initialised (epoch file and manifest).
    pub initialised: bool,
    /// The snapshot loaded, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// Snapshots passed over, newest first, with why.
    pub skipped_snapshots: Vec<(PathBuf, String)>,
    /// Journal records replayed through the engine.
    pub replayed: u64,
    /// The torn tail cleared, if any.
    pub torn_tail: Option<TornTail>,
    /// The journal's first and last intact sequences.
    pub journal_range: Option<(Sequence, Sequence)>,
    /// Temporary files a crash left behind, removed.
    pub temporaries_removed: Vec<String>,
    /// Retired segments a crash left behind, retired again.
    pub retired_leftovers: Vec<(String, Retired)>,
    /// A segment whose creation was cut off before it was listed, removed.
    pub creation_removed: Option<String>,
    /// The last sequence the clean-stop marker named, if the node had stopped cleanly: the
    /// journal was found ending there.
    pub clean_stop: Option<Sequence>,
    /// Entries beside the journal that are not a node's ([`datadir::foreign_entries`]), left
    /// as they are: the journal is read all the same (without one, recovery refuses them).
    pub foreign_entries: Vec<String>,
    /// The marker named an end the journal has since moved past (it holds later records, so a
    /// build that does not know the marker wrote them): ignored, the end read as after a crash.
    pub clean_stop_stale: bool,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.initialised {
            write!(f, "new data directory initialised; ")?;
        }
        match &self.snapshot {
            Some(meta) => write!(f, "snapshot {} (through {})", meta.file.display(), meta.through)?,
            None => write!(f, "no snapshot")?,
        }
        write!(f, ", replayed {} journal records", self.replayed)?;
        if let Some((first, last)) = self.journal_range {
            write!(f, ", journal holds {first}..={last}")?;
        }
        for (file, why) in &self.skipped_snapshots {
            write!(f, "; skipped snapshot {}: {why}", file.display())?;
        }
        match (self.clean_stop, self.clean_stop_stale) {
            (Some(last), false) => write!(f, "; stopped cleanly at sequence {last}")?,
            (Some(last), true) => write!(
                f,
                "; ignored a stale clean-stop marker (sequence {last}: the journal runs past it)"
            )?,
            (None, _) => {}
        }
        if let Some(torn) = &self.torn_tail {
            write!(
                f,
                "; torn tail in {} at byte offset {} (sequence {}, {}): {} bytes cleared",
                torn.file, torn.offset, torn.sequence, torn.damage, torn.bytes_cleared
            )?;
        }
        for name in &self.temporaries_removed {
            write!(f, "; removed leftover temporary file {name}")?;
        }
        for (name, how) in &self.retired_leftovers {
            write!(f, "; retired leftover segment {name} ({how})")?;
        }
        if let Some(name) = &self.creation_removed {
            write!(
                f,
                "; removed segment {name} (its creation was cut off before its first record)"
            )?;
        }
        Ok(())
    }
}

/// A recovered node: the engine, where the sequence continues, and the writer to continue with.
pub struct Recovered<S: Storage> {
    /// The engine with every journaled command applied.
    pub engine: Engine,
    /// The sequence the next command must carry.
    pub next_sequence: Sequence,
    /// The epoch of the last journaled record (zero for an empty journal).
    pub last_epoch: Epoch,
    /// The node's epochs, from the epoch file: the node writes records in `epochs.current`.
    pub epochs: Epochs,
    /// The journaler, positioned after the last intact record. Its
    /// [`JournalWriter::data_dir`] is the handle the snapshot writer shares.
    pub writer: JournalWriter<S>,
    /// What recovery did.
    pub report: RecoveryReport,
}

/// Takes the exclusive lock of the data directory `dir` (creating it if needed) and recovers
/// from it. The lock is held until the writer and every clone of its storage are dropped.
pub fn recover(dir: &Path, options: WriterOptions) -> Result<Recovered<FileStorage>, JournalError> {
    let storage = FileStorage::open_exclusive(dir)?;
    recover_from(storage, options)
}

/// Recovery over any storage: journal, snapshots, manifest and epoch file all live in it.
pub fn recover_from<S: Storage>(
    storage: S,
    options: WriterOptions,
) -> Result<Recovered<S>, JournalError> {
    options.validate()?;
    if let Some(at) = datadir::truncating(&storage)? {
        // A truncation was cut off part way: finished before anything is read.
        tracing::warn!(target: "ringfence", "finishing the truncation at sequence {at} under way");
        truncate(&storage, at)?;
        assert!(datadir::truncating(&storage)?.is_none(), "a finished truncation left its marker");
    }
    if let Some(through) = rebuild::rebuilding(&storage)? {
        // A rebuild was cut off part way: finished before anything is read.
        tracing::warn!(target: "ringfence", "finishing the rebuild after snapshot {through}");
        rebuild::finish(&storage, through)?;
        assert!(rebuild::rebuilding(&storage)?.is_none(), "a finished rebuild left its marker");
    }
    let mut source = storage.clone();
    let mut check = datadir::check(&mut source)?;
    if !check.problems.is_empty() {
        return Err(check.problems.remove(0));
    }
    let foreign = datadir::foreign_entries(&storage)?;
    if check.is_fresh() && !foreign.is_empty() {
        // Before anything is written: a directory given by mistake is left as it was.
        return Err(foreign_refused(&storage, foreign));
    }
    let mut report = RecoveryReport { foreign_entries: foreign, ..RecoveryReport::default() };
    // A new journal is made only where nothing is someone else's.
    assert!(!check.is_fresh() || report.foreign_entries.is_empty(), "a journal made beside them");
    // Before a new directory's first files are written: their temporaries may have the names
    // of those a crash during an earlier first start left behind.
    remove_temporaries(&storage, &check, &mut report)?;
    let dir = open_dir(&storage, &check, &mut report)?;
    tidy(&dir, &check, &mut report)?;
    let layout = scan::scan_segments(&mut source, &check.segments)?;
    check_settings(&layout, &options.engine_config, &|name| storage.describe(name))?;
    if let Some(error) = listed_damage(&layout, &storage) {
        #[cfg(feature = "mutations")]
        if let JournalError::Corrupt { sequence, .. } = &error
            && crate::mutation::ignores_damage()
        {
            // The broken variant: the damage and everything after it dropped silently.
            truncate(&storage, *sequence)?;
            let _ = storage.remove(datadir::CATCH_UP_FILE);
            return recover_from(storage, options);
        }
        return Err(error);
    }
    let clean_stop = datadir::clean_stop(&storage)?;
    if let Some(stop) = &clean_stop {
        report.clean_stop_stale = check_clean_stop(&layout, stop, &|name| storage.describe(name))?;
    }
    report.clean_stop = clean_stop.map(|stop| stop.last);
    report.torn_tail = clear_torn_tail(&storage, &layout)?;
    // After a clean stop there is no torn tail: `check_clean_stop` refused one.
    assert!(report.torn_tail.is_none() || report.clean_stop.is_none() || report.clean_stop_stale);
    report.journal_range = layout.first_sequence().zip(layout.last_sequence());
    let epochs = dir.epochs();
    check_epochs(&storage, &layout, epochs)?;
    // Listed segments start at 1 or later (the manifest refuses 0), so `first - 1` is safe.
    let firsts = layout.segments.iter().map(|s| s.header.first_sequence);
    assert!(firsts.clone().all(|first| first.0 >= 1), "a listed segment before sequence 1");
    // Where the journal ends: the last record, or just before the newest segment's first.
    let journal_last = layout.segments.last().map(SegmentLayout::ends_at);
    let config = &options.engine_config;
    let (mut engine, through) = choose_snapshot(&storage, config, journal_last, &mut report)?;
    // Snapshots past the journal's end were set aside.
    assert!(journal_last.is_none_or(|last| through <= last), "a snapshot past the journal");
    let start = through.next();
    let needed = journal_last.is_some_and(|last| last >= start);
    match layout.first_sequence() {
        Some(first) if needed && first > start => {
            return Err(JournalError::MissingStart { first, needed: start });
        }
        _ => {}
    }
    let mut replayed = 0;
    // Each record is hinted as it is read and applied a few records later, as the pipeline's
    // processor does: the same state, sooner.
    let mut ahead = Lookahead::default();
    scan::read_pipelined(&mut source, &layout, start, &mut |record| {
        ahead.push(&mut engine, record.sequenced(), |engine, command| {
            engine.apply(command);
        });
        replayed += 1;
        ControlFlow::Continue(())
    })?;
    ahead.finish(&mut engine, |engine, command| {
        engine.apply(command);
    });
    // Every record after the snapshot was replayed, and none before it.
    let expected = journal_last.map_or(0, |last| last.0.saturating_sub(through.0));
    assert_eq!(replayed, expected, "replay skipped or repeated records");
    report.replayed = replayed;
    let range = report.journal_range;
    assert!(range.is_none_or(|(first, last)| first <= last), "a journal ending before it starts");
    let last_epoch = layout.last_epoch().unwrap_or(Epoch(0));
    // The journal is about to change: the mark would name an end it no longer has.
    datadir::clean_stop_cleared(&storage)?;
    let writer = match layout.segments.last() {
        Some(segment) => {
            let last = segment.ends_at();
            JournalWriter::resume(dir, options, &segment.name, segment.end, last, last_epoch)?
        }
        None => JournalWriter::create(dir, options, start)?,
    };
    let next_sequence = writer.next_sequence();
    // The writer continues where the journal ends, or after the snapshot of an empty one.
    assert_eq!(writer.last_appended(), journal_last.unwrap_or(through), "a writer misplaced");
    assert!(engine.last_sequence() < next_sequence);
    assert!(next_sequence >= start);
    // `check_epochs` refused a journal ahead of its epoch file.
    assert!(last_epoch <= epochs.current, "a record ahead of the epoch file");
    Ok(Recovered { engine, next_sequence, last_epoch, epochs, writer, report })
}

/// The refusal of a directory with no journal that holds `foreign` entries, naming the first
/// few.
fn foreign_refused<S: Storage>(storage: &S, foreign: Vec<String>) -> JournalError {
    assert!(!foreign.is_empty(), "a directory refused for no entry");
    let count = foreign.len();
    let named: Vec<String> = foreign.into_iter().take(datadir::FOREIGN_NAMED_MAX).collect();
    assert!(named.len() <= count, "more entries named than found");
    JournalError::ForeignEntries { dir: storage.location(), named, count }
}

/// The directory's manifest and epochs; a new directory gets its epoch file (current and
/// promised 1) and then an empty manifest, in that order, so a manifest never exists without
/// an epoch file.
fn open_dir<S: Storage>(
    storage: &S,
    check: &DirCheck,
    report: &mut RecoveryReport,
) -> Result<DataDir<S>, JournalError> {
    // Only a directory the check found nothing wrong with is opened (or initialised).
    assert!(check.problems.is_empty(), "opening a directory with problems");
    if let (Some(manifest), Some(epochs)) = (&check.manifest, check.epochs) {
        return Ok(DataDir::new(storage.clone(), manifest.clone(), epochs));
    }
    assert!(check.is_fresh(), "the check reports a directory it cannot open");
    // First: a new directory holds nothing it acknowledged, whatever a witness says of it.
    datadir::mark_catching_up(storage)?;
    let epochs = match check.epochs {
        Some(epochs) => epochs,
        None => {
            datadir::write_epochs(storage, Epochs::FIRST)?;
            Epochs::FIRST
        }
    };
    let manifest = Manifest::empty();
    assert!(manifest.segments.is_empty(), "a new directory lists a segment");
    datadir::write_manifest(storage, &manifest)?;
    report.initialised = true;
    Ok(DataDir::new(storage.clone(), manifest, epochs))
}

/// Removes the temporary files a crash left behind (only those: anything else may hold
/// acknowledged commands), and syncs the directory if there were any.
fn remove_temporaries<S: Storage>(
    storage: &S,
    check: &DirCheck,
    report: &mut RecoveryReport,
) -> Result<(), JournalError> {
    // Leftovers are deleted on the check's word, so only after a check with no problem.
    assert!(check.problems.is_empty(), "tidying a directory with problems");
    for name in &check.temporaries {
        assert!(is_temp_name(name), "removing a file that is not a temporary: {name}");
        let removing = |e| JournalError::io(format!("removing {}", storage.describe(name)), e);
        storage.remove(name).map_err(removing)?;
        report.temporaries_removed.push(storage.describe(name));
    }
    if !check.temporaries.is_empty() {
        datadir::sync_dir(storage)?;
    }
    Ok(())
}

/// Clears the rest of what a crash can leave behind: retired segments not yet removed, and a
/// segment whose creation was cut off (after which the manifest is rewritten).
fn tidy<S: Storage>(
    dir: &DataDir<S>,
    check: &DirCheck,
    report: &mut RecoveryReport,
) -> Result<(), JournalError> {
    // Leftovers are deleted on the check's word, so only after a check with no problem.
    assert!(check.problems.is_empty(), "tidying a directory with problems");
    let storage = dir.storage();
    let describe_io = |verb: &str, name: &str| {
        let file = storage.describe(name);
        let verb = verb.to_owned();
        move |e| JournalError::io(format!("{verb} {file}"), e)
    };
    // Only what a crash leaves is deleted: anything else may hold acknowledged commands.
    for name in &check.retired_leftovers {
        assert!(!dir.manifest().lists(segment_first(name)), "retiring a listed segment: {name}");
        let how = storage.retire(name).map_err(describe_io("retiring", name))?;
        report.retired_leftovers.push((storage.describe(name), how));
    }
    if let Some(name) = &check.creation_leftover {
        assert!(!dir.manifest().lists(segment_first(name)), "removing a listed segment: {name}");
        storage.remove(name).map_err(describe_io("removing", name))?;
        report.creation_removed = Some(storage.describe(name));
    }
    let changed = !check.retired_leftovers.is_empty() || check.creation_leftover.is_some();
    if changed {
        datadir::sync_dir(storage)?;
    }
    if check.creation_leftover.is_some() {
        dir.rewrite_manifest()?;
    }
    Ok(())
}

/// Damage recovery must refuse: corruption before the tail, or a listed segment whose header
/// is unusable (its header was synced before it was listed, so this is not a cut-off creation).
fn listed_damage<S: Storage>(layout: &Layout, storage: &S) -> Option<JournalError> {
    if let Some(error) = layout.corruption(&|name| storage.describe(name)) {
        return Some(error);
    }
    let problem = layout.problem.as_ref().filter(|p| p.segment.is_none())?;
    // A header the scan could not read is the problem's own file, at its start.
    assert_eq!(problem.offset, 0, "a header problem away from the header");
    Some(JournalError::Corrupt {
        dir: layout.location.clone(),
        file: storage.describe(&problem.name),
        offset: problem.offset,
        sequence: problem.sequence,
        damage: problem.damage,
    })
}

/// The journal may not hold records from an epoch the epoch file has not reached.
fn check_epochs<S: Storage>(
    storage: &S,
    layout: &Layout,
    epochs: Epochs,
) -> Result<(), JournalError> {
    assert!(epochs.problem().is_none(), "epochs the epoch file could not hold");
    let (Some(record), Some(sequence)) = (layout.last_epoch(), layout.last_sequence()) else {
        return Ok(());
    };
    if record > epochs.current {
        return Err(JournalError::EpochAhead {
            file: storage.describe(EPOCH_FILE),
            sequence,
            record,
            current: epochs.current,
        });
    }
    Ok(())
}

/// A journal the node stopped cleanly must still end where it did: no torn tail (the node
/// synced everything and wrote nothing after), no record missing. Returns whether the marker
/// is stale: the journal holds records past it, which only a build that does not know the
/// marker writes (it is then ignored, and the end is read as after a crash). `describe` names
/// a file to the operator. Recovery and the read-only tools judge with this one function.
pub fn check_clean_stop(
    layout: &Layout,
    stop: &CleanStop,
    describe: &dyn Fn(&str) -> String,
) -> Result<bool, JournalError> {
    let last_segment = layout.segments.last();
    let ends = last_segment.map(SegmentLayout::ends_at);
    let torn = layout.problem.as_ref().filter(|p| p.torn_tail);
    // The scan finds a torn tail only at the end of the last segment.
    let newest = layout.segments.len().checked_sub(1);
    assert!(torn.is_none_or(|p| p.segment.is_some() && p.segment == newest), "a torn tail early");
    let moved = |found: String, from: Sequence, damaged: bool| JournalError::EndMoved {
        dir: layout.location.clone(),
        marked: format!(
            "{} says sequence {}, byte offset {} of {}",
            describe(CLEAN_STOP_FILE),
            stop.last,
            stop.end,
            describe(&stop.segment)
        ),
        last: stop.last,
        found,
        from,
        damaged,
    };
    if let Some(problem) = torn.filter(|p| p.sequence <= stop.last) {
        let found = format!(
            "record {} in {} at byte offset {} fails its checks ({})",
            problem.sequence,
            describe(&problem.name),
            problem.offset,
            problem.damage
        );
        return Err(moved(found, problem.sequence, true));
    }
    match ends {
        Some(ends) if ends > stop.last => Ok(true),
        Some(ends) if ends < stop.last => {
            let found =
                format!("it ends at sequence {ends}, so {}..={} are gone", ends.next(), stop.last);
            Err(moved(found, ends.next(), false))
        }
        // No segment at all: the manifest check reports a missing one.
        None => Ok(false),
        Some(ends) => {
            // Ends at the same sequence, with nothing torn after it: where the mark says.
            assert_eq!(ends, stop.last);
            if let Some(problem) = torn {
                // Bytes after the last record the node wrote: damage, though no record is lost.
                let found = format!(
                    "{} holds bytes after its last record, at byte offset {} ({})",
                    describe(&problem.name),
                    problem.offset,
                    problem.damage
                );
                return Err(moved(found, problem.sequence, false));
            }
            let segment = last_segment.expect("`ends` is some");
            if segment.name != stop.segment || segment.end as u64 != stop.end {
                // The records agree and the place does not: the marker is the damaged one.
                let found = format!(
                    "its last record ends at byte offset {} of {}",
                    segment.end,
                    describe(&segment.name)
                );
                return Err(moved(found, ends.next(), false));
            }
            Ok(false)
        }
    }
}

/// Zeroes a torn tail in the last segment and syncs.
fn clear_torn_tail<S: Storage>(
    storage: &S,
    layout: &Layout,
) -> Result<Option<TornTail>, JournalError> {
    let Some(problem) = layout.problem.as_ref().filter(|p| p.torn_tail) else { return Ok(None) };
    assert!(problem.segment.is_some(), "a listed segment's header is never a torn tail");
    let file = storage.describe(&problem.name);
    let mut segment = storage
        .open_segment(&problem.name)
        .map_err(|e| JournalError::io(format!("opening {file}"), e))?;
    // The tail is the journal's end: the last segment scanned, with nothing after it.
    let last = layout.segments.last().map(|segment| segment.name.as_str());
    assert_eq!(last, Some(problem.name.as_str()), "a torn tail before the last segment");
    let range = problem.offset as usize..problem.garbage_end.max(problem.offset as usize);
    // A torn tail starts on a record boundary after the header and ends inside the file.
    assert!(range.start >= format::SEGMENT_HEADER_LEN, "a torn tail inside the header");
    assert_eq!(range.start % format::RECORD_ALIGN, 0, "a torn tail off a record boundary");
    assert!(range.end <= segment.bytes().len(), "a torn tail past the segment's end");
    segment.bytes_mut()[range.clone()].fill(0);
    segment.sync(range.clone()).map_err(|e| JournalError::io(format!("syncing {file}"), e))?;
    // Cleared to the end: the garbage range ended at the last non-zero byte.
    debug_assert!(scan::last_nonzero(&segment.bytes()[range.start..]).is_none(), "not cleared");
    Ok(Some(TornTail {
        file,
        offset: problem.offset,
        sequence: problem.sequence,
        damage: problem.damage.to_string(),
        bytes_cleared: range.len() as u64,
    }))
}

/// Refuses a journal written with other engine settings than `config`: its records replay
/// only under the settings they were written with (order ids carry the shard; the tables'
/// sizes decide refusals and which finished orders are forgotten), so replaying them under
/// others would answer differently for commands already answered.
fn check_settings(
    layout: &Layout,
    config: &EngineConfig,
    describe: &dyn Fn(&str) -> String,
) -> Result<(), JournalError> {
    let other = layout.segments.iter().find(|segment| segment.header.config != *config);
    match other {
        Some(segment) => {
            Err(settings_changed(describe(&segment.name), config, &segment.header.config))
        }
        None => Ok(()),
    }
}

fn settings_changed(file: String, ours: &EngineConfig, written: &EngineConfig) -> JournalError {
    let differences = ours.differences(written, "written with");
    assert!(!differences.is_empty(), "the same settings refused");
    JournalError::SettingsChanged { file, differences }
}

/// The newest snapshot that loads and does not run past the journal. Snapshots past the end of
/// the journal (taken before a power loss cut the journal back) are renamed `*.stale`: new
/// commands will reuse their sequences, so they must never be loaded later.
fn choose_snapshot<S: Storage>(
    storage: &S,
    config: &EngineConfig,
    journal_last: Option<Sequence>,
    report: &mut RecoveryReport,
) -> Result<(Engine, Sequence), JournalError> {
    for (through, name) in snapshot::list(storage)?.into_iter().rev() {
        let file = PathBuf::from(storage.describe(&name));
        if journal_last.is_some_and(|last| through > last) {
            let stale = snapshot::stale_name(&name);
            storage
                .rename(&name, &stale)
                .map_err(|e| JournalError::io(format!("renaming {}", file.display()), e))?;
            datadir::sync_dir(storage)?;
            let why = format!("runs past the journal's end; renamed to {stale}");
            report.skipped_snapshots.push((file, why));
            continue;
        }
        match snapshot::load(storage, &name, None) {
            Ok((_, meta)) if meta.config != *config => {
                return Err(settings_changed(storage.describe(&name), config, &meta.config));
            }
            Ok((engine, meta)) => {
                assert_eq!(engine.config(), config, "a snapshot restored under other settings");
                // `load` checked the state against the header, which names no later sequence.
                assert!(engine.last_sequence() <= through, "a snapshot past its own name");
                assert_eq!(meta.through, through, "a snapshot named for another sequence");
                report.snapshot = Some(meta);
                return Ok((engine, through));
            }
            Err(error) => report.skipped_snapshots.push((file, error.to_string())),
        }
    }
    Ok((Engine::new(config.clone()), Sequence(0)))
}

/// The first sequence a segment name stands for; `check` only names segments by their names.
fn segment_first(name: &str) -> Sequence {
    let first = format::parse_segment_name(name);
    assert!(first.is_some(), "a leftover that is not a segment: {name}");
    first.expect("checked above")
}

/// What [`truncate`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truncation {
    /// Segments removed whole.
    pub segments_removed: Vec<String>,
    /// The segment cut short, and the byte offset it now ends at.
    pub cut: Option<(String, u64)>,
    /// Segments cut short whose intact records the cut keeps, put back at their listed length
    /// (the bytes cut off read as zero, as in a segment the writer preallocated).
    pub restored: Vec<String>,
    /// Snapshots renamed to `*.stale` because they include dropped records.
    pub snapshots_invalidated: Vec<String>,
    /// The manifest written, listing the segments that remain.
    pub manifest: Manifest,
    /// Whether there was no usable manifest before (it was rebuilt from the segments).
    pub manifest_rebuilt: bool,
    /// Epochs written because the epoch file was missing or damaged: the highest epoch of the
    /// records that remain (at least 1), current and promised.
    pub epochs_written: Option<Epochs>,
}

/// The operator's explicit repair: drops record `at` and everything after it, even past
/// damage, invalidates snapshots that include any dropped record, and rewrites the manifest to
/// list exactly the segments that remain (rebuilding it if it was missing or damaged). Records
/// before `at` must be intact, and `at` may not be past a listed segment that is missing, nor
/// past the first sequence lost in one cut short (those records are gone already; the repair
/// must say so). A segment cut short whose intact records the cut keeps is first put back at
/// its listed length, then cut as any other. Files change first and the manifest last, so a
/// crash part way leaves a directory recovery refuses and a second `truncate` finishes.
pub fn truncate<S: Storage>(storage: &S, at: Sequence) -> Result<Truncation, JournalError> {
    assert!(at.0 >= 1, "sequences start at 1");
    let mut source = storage.clone();
    let TruncationPlan { check, layout, restore } = plan_truncation(&mut source, at)?;
    // Only what a crash leaves is deleted here; the cut below is the operator's.
    for name in &check.temporaries {
        assert!(is_temp_name(name), "removing a file that is not a temporary: {name}");
        storage.remove(name).map_err(|e| JournalError::io(format!("removing {name}"), e))?;
    }
    let listed = |name: &str| check.manifest.as_ref().is_some_and(|m| m.lists(segment_first(name)));
    for name in &check.retired_leftovers {
        assert!(!listed(name), "retiring a listed segment: {name}");
        storage.retire(name).map_err(|e| JournalError::io(format!("retiring {name}"), e))?;
    }
    if let Some(name) = &check.creation_leftover {
        assert!(!listed(name), "removing a listed segment: {name}");
        storage.remove(name).map_err(|e| JournalError::io(format!("removing {name}"), e))?;
    }
    // Before the first cut: where it cuts, so that a crash part way is finished at the next
    // start; and that records this node may have acknowledged are about to go.
    datadir::mark_truncating(storage, at)?;
    datadir::mark_catching_up(storage)?;
    datadir::clean_stop_cleared(storage)?;
    let mut truncation = Truncation::default();
    for (name, len) in &restore {
        restore_length(storage, name, *len, &[])?;
        truncation.restored.push(storage.describe(name));
    }
    let layout = if restore.is_empty() { layout } else { scan::scan(&mut source)? };
    // Restored, a segment cut short reads as records followed by damage or zeros, at the first
    // sequence lost or later: nothing before the cut is damaged now.
    if let Some(problem) = layout.problem.as_ref().filter(|p| p.sequence < at) {
        return Err(JournalError::Options(format!(
            "the truncation at sequence {at} found sequence {} damaged ({} byte offset {}) \
             once the segments cut short were put back at their listed length; truncate at {} \
             or lower",
            problem.sequence, problem.name, problem.offset, problem.sequence
        )));
    }
    for (first, name) in scan::sorted_segments(storage)?.into_iter().rev() {
        if first >= at {
            storage.remove(&name).map_err(|e| {
                JournalError::io(format!("removing {}", storage.describe(&name)), e)
            })?;
            truncation.segments_removed.push(storage.describe(&name));
            continue;
        }
        let cut = cut_segment(storage, &name, at)?;
        truncation.cut = Some((storage.describe(&name), cut as u64));
        break;
    }
    for (through, name) in snapshot::list(storage)? {
        if through >= at {
            let stale = snapshot::stale_name(&name);
            storage.rename(&name, &stale).map_err(|e| {
                JournalError::io(format!("renaming {}", storage.describe(&name)), e)
            })?;
            truncation.snapshots_invalidated.push(storage.describe(&name));
        }
    }
    datadir::sync_dir(storage)?;
    rewrite_after_truncation(storage, &check, &layout, at, &mut truncation)?;
    // Nothing at or after the cut is listed any more: only then is the marker removed.
    let listed = &truncation.manifest.segments;
    assert!(listed.iter().all(|s| s.first < at), "a segment from the cut on is still listed");
    datadir::truncation_done(storage)?;
    // The manifest lists exactly the segments left (debug builds: a listing).
    let left: Vec<Sequence> = truncation.manifest.segments.iter().map(|s| s.first).collect();
    debug_assert!(
        scan::sorted_segments(storage).is_ok_and(|found| found.iter().map(|f| f.0).eq(left)),
        "the rebuilt manifest differs from the segments left"
    );
    Ok(truncation)
}

/// What [`truncate`] found before it changed anything: the directory compared with its
/// manifest, the segments it works on scanned, and the segments cut short to put back.
struct TruncationPlan {
    check: DirCheck,
    layout: Layout,
    restore: Vec<(String, u64)>,
}

/// Refuses a cut at `at` for every reason [`truncate`] refuses one before it changes a file,
/// reading `source` only. The operator's tool asks first, so that a refused truncation takes
/// no lock and writes nothing (not even the `rollback/` file it keeps the dropped records in);
/// [`truncate`] asks again, under the lock.
pub fn check_truncation<R: ReadSource>(source: &mut R, at: Sequence) -> Result<(), JournalError> {
    plan_truncation(source, at).map(drop)
}

/// [`check_truncation`], and what [`truncate`] goes on with. The scan reads the segments left
/// once the leftovers of a crash are cleared (every segment file but those), as `truncate`
/// clears them before its first cut.
fn plan_truncation<R: ReadSource>(
    source: &mut R,
    at: Sequence,
) -> Result<TruncationPlan, JournalError> {
    assert!(at.0 >= 1, "sequences start at 1");
    let check = datadir::check(source)?;
    refuse_unrepairable(&check, at)?;
    refuse_nothing_to_replay_from(&check, &snapshot::list(source)?, at)?;
    let leftover = |name: &str| {
        check.retired_leftovers.iter().any(|left| left == name)
            || check.creation_leftover.as_deref() == Some(name)
    };
    let mut names = scan::sorted_segments(source)?;
    names.retain(|(_, name)| !leftover(name));
    let layout = scan::scan_segments(source, &names)?;
    let scanned_leftover = layout.segments.iter().any(|segment| leftover(&segment.name));
    assert!(!scanned_leftover, "a leftover of a crash scanned as part of the journal");
    // Segments cut short that the cut keeps a part of: put back at their listed length.
    let restore = cut_short_kept(&check, at);
    // The scan refuses such a segment's header (it names the listed length); what is left of
    // it was read by the check, and `refuse_unrepairable` let the cut through.
    let cut_short = |name: &str| restore.iter().any(|(kept, _)| kept == name);
    let problem = layout.problem.as_ref().filter(|p| !(p.segment.is_none() && cut_short(&p.name)));
    if let Some(problem) = problem.filter(|p| p.sequence < at) {
        return Err(JournalError::Options(format!(
            "cannot truncate at sequence {at}: the journal is already damaged at sequence {} \
             ({} byte offset {}); truncate at {} or lower",
            problem.sequence, problem.name, problem.offset, problem.sequence
        )));
    }
    // Where the journal ends: a cut past the next sequence would drop nothing, yet mark the
    // directory as lacking records. (A segment cut short ends where its intact records do,
    // which `refuse_unrepairable` checked.)
    let ends = layout.segments.last().map_or(Sequence(0), SegmentLayout::ends_at);
    if at > ends.next() && restore.is_empty() {
        return Err(JournalError::Options(format!(
            "cannot truncate at sequence {at}: the journal ends at sequence {ends}, so there is \
             nothing to drop; truncate at {} or lower",
            ends.next()
        )));
    }
    Ok(TruncationPlan { check, layout, restore })
}

/// What `truncate` cannot repair: a newer format, files it cannot place, or a cut above
/// records that are already missing.
fn refuse_unrepairable(check: &DirCheck, at: Sequence) -> Result<(), JournalError> {
    assert!(at.0 >= 1, "sequences start at 1");
    for problem in &check.problems {
        match problem {
            JournalError::SegmentMissing { first, file, .. } if at > *first => {
                return Err(JournalError::Options(format!(
                    "cannot truncate at sequence {at}: segment {file}, from sequence {first}, is \
                     missing, so the records from {first} on are gone; truncate at {first} or \
                     lower (or restore the file)"
                )));
            }
            JournalError::SegmentLength { first, intact, file, .. }
                if at.0 > first.0 + u64::from(*intact) =>
            {
                let lost = Sequence(first.0 + u64::from(*intact));
                return Err(JournalError::Options(format!(
                    "cannot truncate at sequence {at}: segment {file}, from sequence {first}, is \
                     cut short, and the bytes left hold no whole record from {lost} on, so the \
                     records from {lost} on are gone; truncate at {lost} or lower, which keeps \
                     the {intact} intact records before it (or restore the file)"
                )));
            }
            JournalError::FutureVersion { .. }
            | JournalError::UnlistedSegment { .. }
            | JournalError::StrayFile { .. } => {
                return Err(JournalError::Options(format!("cannot truncate: {problem}")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The segments cut short of which a cut at `at` keeps records (`at` past their first
/// sequence), with their listed lengths; `refuse_unrepairable` has let the cut through, so
/// each holds intact records up to `at`.
fn cut_short_kept(check: &DirCheck, at: Sequence) -> Vec<(String, u64)> {
    let mut kept = Vec::new();
    for problem in &check.problems {
        if let JournalError::SegmentLength { first, intact, listed, .. } = problem
            && *first < at
        {
            // Only a cut at or before the first sequence lost gets here.
            assert!(
                at.0 <= first.0 + u64::from(*intact),
                "a cut past the records left in a segment"
            );
            kept.push((format::segment_name(*first), *listed));
        }
    }
    // The check lists problems in manifest order, and each segment once.
    debug_assert!(kept.windows(2).all(|pair| pair[0].0 < pair[1].0), "out of order");
    kept
}

/// Puts segment `name`, cut short, back at its listed length `len`: its header and the intact
/// records at its front, then `after` (whole records `journal heal` copied from a peer, or
/// nothing), then zeros to `len`, as the writer preallocates a segment. Made under a temporary
/// name, synced, and renamed over the short file (the directory synced), so a crash leaves the
/// short file or the whole one, and the repair under way is finished from either. What
/// follows the intact records in the short file (part of the first record lost) is not
/// copied. Returns the byte offset where the intact records end (and `after` starts).
pub(crate) fn restore_length<S: Storage>(
    storage: &S,
    name: &str,
    len: u64,
    after: &[u8],
) -> Result<usize, JournalError> {
    let first = segment_first(name);
    let describe_io = |verb: &str, name: &str| {
        let context = format!("{verb} {}", storage.describe(name));
        move |e| JournalError::io(context, e)
    };
    let short = storage.open_segment(name).map_err(describe_io("opening", name))?;
    let end = scan::intact_prefix(short.bytes(), first).end;
    assert!((short.bytes().len() as u64) < len, "a segment restored to a shorter length");
    // Whole records, which fit: the caller measured them against the listed length.
    assert_eq!(after.len() % format::RECORD_ALIGN, 0, "part of a record put back");
    assert!((end + after.len()) as u64 <= len, "records put back past the listed length");
    let temp = temp_name(name);
    if storage.file_len(&temp).is_ok() {
        storage.remove(&temp).map_err(describe_io("removing", &temp))?;
    }
    let mut whole = storage.create_segment(&temp, len).map_err(describe_io("creating", &temp))?;
    whole.bytes_mut()[..end].copy_from_slice(&short.bytes()[..end]);
    whole.bytes_mut()[end..end + after.len()].copy_from_slice(after);
    whole.sync(0..end + after.len()).map_err(describe_io("syncing", &temp))?;
    drop((short, whole));
    storage.rename(&temp, name).map_err(describe_io("renaming", &temp))?;
    datadir::sync_dir(storage)?;
    // The pair of the manifest's check: the file is its listed length again.
    let restored = storage.file_len(name).map_err(describe_io("reading", name))?;
    assert_eq!(restored, len, "a segment restored to another length");
    Ok(end)
}

/// A journal whose oldest records were retired can be replayed only from a snapshot at or
/// after the last retired record. A cut that sets aside every such snapshot (each holds
/// records at or after `at`) would leave a directory no recovery can start from: refused, with
/// the repairs that work. A cut at 1 drops the whole journal, the first step of installing a
/// primary's snapshot in its place, and is not refused.
fn refuse_nothing_to_replay_from(
    check: &DirCheck,
    snapshots: &[(Sequence, String)],
    at: Sequence,
) -> Result<(), JournalError> {
    assert!(at.0 >= 1, "sequences start at 1");
    let first = check.first_held();
    if first.0 <= 1 || at.0 <= 1 {
        return Ok(());
    }
    let last_retired = Sequence(first.0 - 1);
    let usable = snapshots.iter().any(|(through, _)| *through >= last_retired && *through < at);
    // `snapshot::list` names them oldest first, each once.
    debug_assert!(snapshots.windows(2).all(|p| p[0].0 < p[1].0), "snapshots out of order");
    if usable {
        return Ok(());
    }
    Err(JournalError::NothingToReplayFrom { at, first })
}

/// Writes the manifest listing the segments that remain, and the epoch file if it was missing
/// or damaged.
fn rewrite_after_truncation<S: Storage>(
    storage: &S,
    check: &DirCheck,
    layout: &Layout,
    at: Sequence,
    truncation: &mut Truncation,
) -> Result<(), JournalError> {
    let mut manifest = match &check.manifest {
        Some(manifest) => manifest.next_generation(),
        None => Manifest::empty(),
    };
    truncation.manifest_rebuilt = check.manifest.is_none();
    assert!(manifest.generation >= 1, "manifest generations start at 1");
    // Nothing from the cut on is left to have been retired: a journal started anew below the
    // old mark (from a snapshot a primary sent) must not read as retired already.
    manifest.retired_below = manifest.retired_below.min(at);
    manifest.segments.clear();
    for (first, name) in scan::sorted_segments(storage)? {
        let len = storage
            .file_len(&name)
            .map_err(|e| JournalError::io(format!("reading {}", storage.describe(&name)), e))?;
        // Truncation drops every segment from `at` on.
        assert!(first < at, "a segment from the cut on survived truncation");
        manifest.segments.push(ManifestSegment { first, len });
    }
    // Sorted, each segment once: as the manifest requires.
    let sorted = manifest.segments.windows(2).all(|pair| pair[0].first < pair[1].first);
    assert!(sorted, "a rebuilt manifest out of sequence order");
    if check.epochs.is_none() {
        let kept = layout.segments.iter().filter(|s| s.header.first_sequence < at);
        let epoch = kept.filter_map(|s| s.last_epoch).max().unwrap_or(Epoch(1)).max(Epoch(1));
        let epochs = Epochs { current: epoch, promised: epoch };
        datadir::write_epochs(storage, epochs)?;
        truncation.epochs_written = Some(epochs);
    }
    datadir::write_manifest(storage, &manifest)?;
    truncation.manifest = manifest;
    Ok(())
}

/// Zeroes segment `name` from the record with sequence `at` (or from where its intact records
/// end, if earlier) to its last non-zero byte. Returns the new end offset.
fn cut_segment<S: Storage>(storage: &S, name: &str, at: Sequence) -> Result<usize, JournalError> {
    assert!(at.0 >= 1, "sequences start at 1");
    assert!(name.ends_with(".seg"), "a cut in a file that is not a segment: {name}");
    let file = storage.describe(name);
    let mut segment =
        storage.open_segment(name).map_err(|e| JournalError::io(format!("opening {file}"), e))?;
    let bytes = segment.bytes();
    let mut offset = format::SEGMENT_HEADER_LEN;
    while let Some((header, len)) = format::check_record(&bytes[offset..]) {
        if header.sequence >= at || format::is_end_marker(&bytes[offset..]) {
            break;
        }
        offset += len;
    }
    let end = bytes.iter().rposition(|&b| b != 0).map_or(offset, |i| (i + 1).max(offset));
    // The cut falls on a record boundary after the header.
    assert!(offset >= format::SEGMENT_HEADER_LEN, "a cut inside the segment header");
    assert_eq!(offset % format::RECORD_ALIGN, 0, "a cut off a record boundary");
    segment.bytes_mut()[offset..end].fill(0);
    segment.sync(offset..end).map_err(|e| JournalError::io(format!("syncing {file}"), e))?;
    debug_assert!(scan::last_nonzero(&segment.bytes()[offset..]).is_none(), "not cut to zero");
    Ok(offset)
}
