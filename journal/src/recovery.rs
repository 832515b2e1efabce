//! Recovery on start: newest usable snapshot, then the journal from the next sequence through
//! the BLP; a torn tail is truncated and reported, corruption refuses to start.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ringfence_core::{Engine, EngineConfig, Epoch, Sequence};

use crate::error::JournalError;
use crate::format;
use crate::scan::{self, Layout};
use crate::snapshot::{self, SnapshotMeta};
use crate::storage::{FileStorage, Segment, Storage};
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
    /// Bytes zeroed (or the whole file, if its creation was cut off).
    pub bytes_cleared: u64,
    /// Whether the whole segment file was removed (its header never reached disk).
    pub removed_segment: bool,
}

/// What recovery did, for the log.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
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
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        if let Some(torn) = &self.torn_tail {
            write!(
                f,
                "; torn tail in {} at byte offset {} (sequence {}, {}): {} bytes cleared",
                torn.file, torn.offset, torn.sequence, torn.damage, torn.bytes_cleared
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
    /// The journaler, positioned after the last intact record.
    pub writer: JournalWriter<S>,
    /// What recovery did.
    pub report: RecoveryReport,
}

/// Opens (or creates) the journal in `dir` and recovers: snapshots and segments share the
/// directory.
pub fn recover(dir: &Path, options: WriterOptions) -> Result<Recovered<FileStorage>, JournalError> {
    let storage = FileStorage::open(dir)
        .map_err(|e| JournalError::io(format!("opening journal directory {}", dir.display()), e))?;
    recover_from(storage, Some(dir), options)
}

/// Recovery over any storage; snapshots are read from `snapshot_dir` if given.
pub fn recover_from<S: Storage>(
    mut storage: S,
    snapshot_dir: Option<&Path>,
    options: WriterOptions,
) -> Result<Recovered<S>, JournalError> {
    options.validate()?;
    let layout = scan::scan(&mut storage)?;
    if let Some(error) = layout.corruption(&|name| storage.describe(name)) {
        return Err(error);
    }
    let mut report = RecoveryReport {
        torn_tail: clear_torn_tail(&mut storage, &layout)?,
        journal_range: layout.first_sequence().zip(layout.last_sequence()),
        ..RecoveryReport::default()
    };
    let journal_last = layout.last_sequence();
    let config = &options.engine_config;
    let (mut engine, through) = match snapshot_dir {
        Some(dir) => choose_snapshot(dir, config, journal_last, &mut report)?,
        None => (Engine::new(config.clone()), Sequence(0)),
    };
    let start = through.next();
    let needed = journal_last.is_some_and(|last| last >= start);
    match layout.first_sequence() {
        Some(first) if needed && first > start => {
            return Err(JournalError::MissingStart { first, needed: start });
        }
        _ => {}
    }
    let mut replayed = 0;
    scan::read_pipelined(&mut storage, &layout, start, &mut |record| {
        engine.apply(&record.sequenced());
        replayed += 1;
        ControlFlow::Continue(())
    })?;
    report.replayed = replayed;
    let last_epoch = layout.last_epoch().unwrap_or(Epoch(0));
    let writer = match layout.segments.last() {
        Some(segment) => {
            let last = segment.last.unwrap_or(Sequence(segment.header.first_sequence.0 - 1));
            JournalWriter::resume(storage, options, &segment.name, segment.end, last, last_epoch)?
        }
        None => JournalWriter::create(storage, options, start)?,
    };
    let next_sequence = writer.next_sequence();
    assert!(engine.last_sequence() < next_sequence);
    assert!(next_sequence >= start);
    Ok(Recovered { engine, next_sequence, last_epoch, writer, report })
}

/// Zeroes a torn tail (or removes a segment whose creation was cut off) and syncs.
fn clear_torn_tail<S: Storage>(
    storage: &mut S,
    layout: &Layout,
) -> Result<Option<TornTail>, JournalError> {
    let Some(problem) = layout.problem.as_ref().filter(|p| p.torn_tail) else { return Ok(None) };
    let file = storage.describe(&problem.name);
    let mut torn = TornTail {
        file: file.clone(),
        offset: problem.offset,
        sequence: problem.sequence,
        damage: problem.damage.to_string(),
        bytes_cleared: 0,
        removed_segment: false,
    };
    if problem.segment.is_none() {
        storage
            .remove(&problem.name)
            .map_err(|e| JournalError::io(format!("removing {file}"), e))?;
        torn.removed_segment = true;
        return Ok(Some(torn));
    }
    let mut segment =
        storage.open(&problem.name).map_err(|e| JournalError::io(format!("opening {file}"), e))?;
    let range = problem.offset as usize..problem.garbage_end.max(problem.offset as usize);
    segment.bytes_mut()[range.clone()].fill(0);
    torn.bytes_cleared = range.len() as u64;
    segment.sync(range).map_err(|e| JournalError::io(format!("syncing {file}"), e))?;
    Ok(Some(torn))
}

/// The newest snapshot that loads and does not run past the journal. Snapshots past the end of
/// the journal (taken before a power loss cut the journal back) are renamed `*.stale`: new
/// commands will reuse their sequences, so they must never be loaded later.
fn choose_snapshot(
    dir: &Path,
    config: &EngineConfig,
    journal_last: Option<Sequence>,
    report: &mut RecoveryReport,
) -> Result<(Engine, Sequence), JournalError> {
    for (through, file) in snapshot::list(dir)?.into_iter().rev() {
        if journal_last.is_some_and(|last| through > last) {
            let stale = file.with_extension("snap.stale");
            std::fs::rename(&file, &stale)
                .map_err(|e| JournalError::io(format!("renaming {}", file.display()), e))?;
            let why = format!("runs past the journal's end; renamed to {}", stale.display());
            report.skipped_snapshots.push((file, why));
            continue;
        }
        match snapshot::load(&file, Some(config)) {
            Ok((engine, meta)) => {
                report.snapshot = Some(meta);
                return Ok((engine, through));
            }
            Err(error) => report.skipped_snapshots.push((file, error.to_string())),
        }
    }
    Ok((Engine::new(config.clone()), Sequence(0)))
}

/// What [`truncate`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truncation {
    /// Segments removed whole.
    pub segments_removed: Vec<String>,
    /// The segment cut short, and the byte offset it now ends at.
    pub cut: Option<(String, u64)>,
    /// Snapshots renamed to `*.stale` because they include dropped records.
    pub snapshots_invalidated: Vec<PathBuf>,
}

/// The operator's explicit repair: drops record `at` and everything after it, even past
/// damage, and invalidates snapshots that include any dropped record. Records before `at` must
/// be intact.
pub fn truncate<S: Storage>(
    storage: &mut S,
    snapshot_dir: Option<&Path>,
    at: Sequence,
) -> Result<Truncation, JournalError> {
    let layout = scan::scan(storage)?;
    if let Some(problem) = layout.problem.as_ref().filter(|p| p.sequence < at) {
        return Err(JournalError::Options(format!(
            "cannot truncate at sequence {at}: the journal is already damaged at sequence {} \
             ({} byte offset {}); truncate at {} or lower",
            problem.sequence, problem.name, problem.offset, problem.sequence
        )));
    }
    let mut truncation = Truncation::default();
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
    if let Some(dir) = snapshot_dir {
        for (through, file) in snapshot::list(dir)? {
            if through >= at {
                let stale = file.with_extension("snap.stale");
                std::fs::rename(&file, &stale)
                    .map_err(|e| JournalError::io(format!("renaming {}", file.display()), e))?;
                truncation.snapshots_invalidated.push(file);
            }
        }
    }
    Ok(truncation)
}

/// Zeroes segment `name` from the record with sequence `at` (or from where its intact records
/// end, if earlier) to its last non-zero byte. Returns the new end offset.
fn cut_segment<S: Storage>(
    storage: &mut S,
    name: &str,
    at: Sequence,
) -> Result<usize, JournalError> {
    let file = storage.describe(name);
    let mut segment =
        storage.open(name).map_err(|e| JournalError::io(format!("opening {file}"), e))?;
    let bytes = segment.bytes();
    let mut offset = format::SEGMENT_HEADER_LEN;
    while let Some((header, len)) = format::check_record(&bytes[offset..]) {
        if header.sequence >= at || format::is_end_marker(&bytes[offset..]) {
            break;
        }
        offset += len;
    }
    let end = bytes.iter().rposition(|&b| b != 0).map_or(offset, |i| (i + 1).max(offset));
    segment.bytes_mut()[offset..end].fill(0);
    segment.sync(offset..end).map_err(|e| JournalError::io(format!("syncing {file}"), e))?;
    Ok(offset)
}
