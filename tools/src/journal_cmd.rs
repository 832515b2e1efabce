//! `ringfence journal verify|dump|stats|truncate`: inspect and repair a journal directory.
//!
//! The tools map segments read-only and never change a journal, except `truncate`, which is
//! the operator's explicit repair and takes the directory's exclusive lock (refused while a
//! node runs). The read-only tools take no lock: they compare the directory with its manifest,
//! and when a node is writing the directory (its lock is held) they read the bytes after the
//! last intact record as a record in progress, not as damage. Exit status: 0 when everything
//! is intact (or only in progress), 1 on corruption, a refused directory or any error, 3 when
//! the only problem is what a crash leaves (a torn tail), which a node clears on start.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use ringfence_core::{Command, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_ingress::http::views::CommandJson;
use ringfence_journal::datadir::{self, CleanStop, DirCheck};
use ringfence_journal::error::{Damage, JournalError};
use ringfence_journal::lock::{self, Holder};
use ringfence_journal::recovery::{self, recover};
use ringfence_journal::salvage::{self, Salvaged};
use ringfence_journal::scan::{self, Layout, ReadOnlyDir, Record};
use ringfence_journal::snapshot;
use ringfence_journal::storage::FileStorage;
use ringfence_journal::writer::{Durability, WriterOptions};
use serde::Serialize;
use serde_json::json;

use crate::json;
use crate::progress;
use crate::time::format_ms;

/// Counts one more record read on `bar`, redrawing every [`progress::UPDATE_EVERY`] records.
fn tick(bar: &indicatif::ProgressBar, read: &mut u64) {
    *read += 1;
    if *read % progress::UPDATE_EVERY == 0 {
        bar.set_position(*read);
    }
}

/// `println!` that ignores a closed standard output (piped into `head`, say) instead of
/// panicking: the tools never panic on their environment.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Exit status when the only problem is a torn tail.
pub const EXIT_TORN_TAIL: u8 = 3;

/// Inspect, repair or back up a journal directory (segments `*.seg`, snapshots `*.snap`, the
/// manifest and the epoch file).
#[derive(Subcommand, Debug)]
pub enum JournalCommand {
    /// Check the directory against its manifest, every segment header, record (length,
    /// CRC32C, sequence, epoch, payload) and snapshot, and the epoch file; print counts,
    /// first/last sequence, epochs and sizes. Exits 0 if intact, 3 if the only problem is a
    /// torn tail (a node truncates it on start), 1 on corruption or a missing or cut segment,
    /// naming the file, byte offset and sequence, and what lies past the damage: the intact
    /// records `truncate` would keep and the sequences no intact record holds. On a directory
    /// a node is writing, the last record may be in progress: that is reported, not counted as
    /// damage.
    Verify(DirArgs),
    /// Print one line per command: sequence, time, epoch, kind and fields (or JSON lines).
    Dump(DumpArgs),
    /// Per-segment sizes, sequence and time ranges, commands by kind, and retention.
    Stats(DirArgs),
    /// Repair: drop record --at-seq N and everything after it (even past damage), set aside
    /// snapshots that include dropped records, and rewrite the manifest (rebuilding it from
    /// the segments if it is missing). Refused while a node runs. Every intact record dropped,
    /// past the damage too, is first kept in DIR/rollback/truncated-FIRST-LAST-at-MS.jsonl
    /// (`dump --json` lines, with request keys); nothing is dropped if that file cannot be
    /// written. The sequences no intact record holds are printed as lost. The journal loses
    /// them unless the other node or a backup has them: where one holds the damaged record,
    /// `heal` repairs without dropping anything. A truncation that fails after it started
    /// keeps that file and says where; running it again (or the node's next start) finishes
    /// it. Refused while a rebuild is under way (run `journal rebuild` first) and while a node
    /// runs. A refused truncation changes nothing: it takes no lock and keeps nothing.
    Truncate(TruncateArgs),
    /// Repair without loss: when a snapshot covers the damage (it holds the state through a
    /// sequence at or after the damaged record, or the last record of segments missing) and
    /// the records after it are intact, start the journal just after the oldest such snapshot
    /// (keeping every record after it). Records after it are copied into a new segment; the
    /// older segments, the damaged one among them, are renamed *.seg.superseded.
    /// Refused, changing nothing, when no snapshot covers the damage, and for a segment cut
    /// short (the refusal names `heal --from` and the `truncate` that keeps its intact
    /// records). Refused while a node runs.
    Rebuild(RebuildArgs),
    /// Repair without loss from another copy: damaged records are replaced, byte for byte, by
    /// the same records from the journal in --from (the other node's data directory, a copy of
    /// it, or a backup), once shown to be what was written: the copy agrees with what is left
    /// of the damaged record (its CRC32C or its other bytes) and fits before the next record;
    /// or the first intact record after the damage equals the copy's, and the copies of the
    /// records before it fill the damaged bytes exactly. Every record after the damage is kept.
    /// A segment cut short keeps its intact records and gets the ones lost with it back from
    /// --from, at its listed length again: those before the next segment's first record (which
    /// must equal the copy's), or for the newest segment those up to the clean stop, or (after
    /// a crash) as far as the copy holds records of this node's epoch; the record before the
    /// first lost must equal the copy's. Refused, changing nothing, when no copy is shown to be
    /// what was written (for a segment cut short: when a record lost is not in the copy, and
    /// the refusal names the sequences that would stay lost). Refused while a
    /// node runs on the directory; --from is only read.
    Heal(HealArgs),
    /// Carry a cleanly stopped node's data directory over to the [engine] settings of --config
    /// (larger tables for the next sale, other limits): the state through the last record is
    /// moved into tables of the new settings and written as a snapshot under them, and the
    /// journal continues after it under them; the old segments and snapshots are renamed
    /// *.superseded, not deleted. Order ids, stock, live orders and remembered request ids
    /// carry over. Refused, changing nothing, when the node did not stop cleanly, when the
    /// journal is damaged, for another shard, and for tables too small for what the node
    /// holds. A standby of this node starts on an empty data directory with the same settings
    /// and fetches the snapshot. Cut off part way, run it again (or start the node): it
    /// finishes. Refused while a node runs.
    Reconfigure(ReconfigureArgs),
    /// Copy a data directory into the new directory DEST, while its node runs or not: the
    /// journal's intact records through the last one written (a record in progress is left
    /// out whole), the snapshots that journal reaches, the epoch file and rollback/; DIR is
    /// only read. The copy is checked as recovery reads it (every record, each snapshot
    /// restored) and built in DEST.partial, renamed to DEST once whole and synced. A node
    /// starts from DEST (disaster recovery, a copy to replay or export at leisure); it lacks
    /// what the node acknowledged after it, so it is marked catching up and never takes over
    /// from a standby on the strength of an in-sync record. Refused, changing nothing, when
    /// DEST exists, when DEST lies inside DIR or DIR inside DEST, and when DIR is damaged or
    /// has a repair under way.
    Backup(BackupArgs),
    /// Crash-test child: appends under load and prints `durable N` after every flush.
    #[command(hide = true)]
    LoadTest(LoadTestArgs),
}

/// A journal directory.
#[derive(Args, Debug)]
pub struct DirArgs {
    /// The journal directory.
    pub dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `journal dump`.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The journal directory.
    pub dir: PathBuf,
    /// First sequence to print.
    #[arg(long)]
    pub from: Option<u64>,
    /// Last sequence to print.
    #[arg(long)]
    pub to: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Options of `journal truncate`.
#[derive(Args, Debug)]
pub struct TruncateArgs {
    /// The journal directory.
    pub dir: PathBuf,
    /// The first sequence to drop; every record before it must be intact.
    #[arg(
        long = "at-seq",
        value_name = "N",
        required_unless_present = "at_end",
        conflicts_with = "at_end"
    )]
    pub at_seq: Option<u64>,
    /// Drop nothing: cut after the last record, which rebuilds a missing manifest and epoch
    /// file from the segments present (say, a directory of archived segments). Refused where
    /// a record before the end is damaged or missing, naming it.
    #[arg(long)]
    pub at_end: bool,
}

/// `truncate --at-end`: one past the journal's last record, where every record before it is
/// intact; otherwise the damage, which a cut there would drop everything after.
fn after_the_end(dir: &Path) -> Result<u64, JournalError> {
    let opened = open(dir)?;
    let layout = &opened.layout;
    // The scan read only the segments present at their listed length: the journal's end is
    // past a segment missing or cut short, whose records a cut there would drop.
    let lost = opened.check.problems.iter().find(|problem| {
        matches!(problem, JournalError::SegmentMissing { .. } | JournalError::SegmentLength { .. })
    });
    if let Some(problem) = lost {
        return Err(JournalError::Options(format!("--at-end drops nothing, but {problem}")));
    }
    if let Some(problem) = layout.problem.as_ref().filter(|problem| !problem.torn_tail) {
        return Err(JournalError::Options(format!(
            "--at-end drops nothing, but the journal is damaged or has a gap at sequence {} \
             ({} byte offset {}), with records after it: restore what is missing (or heal it \
             from the peer), or cut there with --at-seq {}",
            problem.sequence, problem.name, problem.offset, problem.sequence
        )));
    }
    let last =
        layout.last_sequence().ok_or(JournalError::NoData { dir: dir.display().to_string() })?;
    Ok(last.0 + 1)
}

/// Options of `journal rebuild`.
#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// The journal directory.
    pub dir: PathBuf,
}

/// Options of `journal reconfigure`.
#[derive(Args, Debug)]
pub struct ReconfigureArgs {
    /// The data directory, of a node stopped cleanly.
    pub dir: PathBuf,
    /// The configuration file the node will start with: its [engine] settings are the new
    /// ones, checked as `serve` checks them.
    #[arg(long)]
    pub config: PathBuf,
}

/// Options of `journal heal`.
#[derive(Args, Debug)]
pub struct HealArgs {
    /// The journal directory to repair.
    pub dir: PathBuf,
    /// The journal directory holding intact copies of the damaged records (only read).
    #[arg(long)]
    pub from: PathBuf,
    /// For the newest segment cut short after a crash (no clean stop, so nothing records where
    /// its records ended): take the records lost to end where --from's records of this node's
    /// epoch do. Any record this node held after them would stay lost; without this flag heal
    /// refuses, naming the records it would put back.
    #[arg(long)]
    pub end_at_copy: bool,
}

/// Options of `journal backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The data directory to copy (only read; its node may be running).
    pub dir: PathBuf,
    /// The new directory to copy it into (must not exist, nor lie inside DIR).
    pub dest: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of the hidden crash-test child.
#[derive(Args, Debug)]
pub struct LoadTestArgs {
    /// The journal directory.
    pub dir: PathBuf,
    /// Durability policy: none, batch or interval:<ms>.
    #[arg(long, default_value = "batch")]
    pub durability: Durability,
    /// Records per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: u64,
    /// Segment size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub segment_size: u64,
    /// Stop after this many records (0: run until killed).
    #[arg(long, default_value_t = 0)]
    pub records: u64,
}

/// Runs a journal subcommand.
pub fn run(command: JournalCommand) -> ExitCode {
    let result = match command {
        JournalCommand::Verify(args) => verify(&args),
        JournalCommand::Dump(args) => dump(&args),
        JournalCommand::Stats(args) => stats(&args),
        JournalCommand::Truncate(args) => truncate(&args),
        JournalCommand::Rebuild(args) => rebuild(&args),
        JournalCommand::Heal(args) => heal(&args),
        JournalCommand::Reconfigure(args) => reconfigure(&args),
        JournalCommand::Backup(args) => backup(&args),
        JournalCommand::LoadTest(args) => load_test(&args),
    };
    result.unwrap_or_else(|error| {
        eprintln!("error: {error}");
        ExitCode::FAILURE
    })
}

/// A data directory opened read-only: compared with its manifest, scanned, and whether a node
/// is writing it.
pub struct Opened {
    /// The directory, mapped read-only.
    pub source: ReadOnlyDir,
    /// The directory compared with its manifest.
    pub check: DirCheck,
    /// The segments the manifest lists (all of them, without a usable manifest), scanned.
    pub layout: Layout,
    /// The process writing the directory, if one is.
    pub live: Option<Holder>,
    /// On a live directory, whether damage in the last segment was found at the same place by
    /// two reads in a row (it is not the writer's record in progress, which moves on).
    pub tail_settled: bool,
}

/// Reads of a live directory before the tools settle for what they see. The writer may have
/// moved on while the directory was read: a rotation or a retirement looks like a missing or
/// unlisted segment for a moment, and a record half written looks like damage, with the next
/// record already intact behind it.
const LIVE_ATTEMPTS: u32 = 6;

/// Opens, checks and scans a journal read-only; on a live directory a read that finds a
/// problem is repeated until the problem holds still (see [`LIVE_ATTEMPTS`]).
pub fn open(dir: &Path) -> Result<Opened, JournalError> {
    let mut source = ReadOnlyDir::open(dir)?;
    let holder = |dir: &Path| {
        lock::holder(dir)
            .map_err(|e| JournalError::io(format!("probing the lock of {}", dir.display()), e))
    };
    let mut previous_tail = None;
    let mut attempt = 1;
    loop {
        let before = holder(dir)?;
        let read = datadir::check(&mut source).and_then(|check| {
            let layout = scan::scan_segments(&mut source, &check.segments)?;
            Ok((check, layout))
        });
        let live = before.or(holder(dir)?);
        let (settled, tail_settled) = match &read {
            Ok((check, layout)) => {
                let tail_settled = tail_damage_repeats(layout, &mut previous_tail);
                (check.problems.is_empty() && tail_settled != Some(false), tail_settled)
            }
            Err(_) => (false, None),
        };
        if live.is_none() || settled || attempt >= LIVE_ATTEMPTS {
            let (check, layout) = read?;
            if !check.holds_data() && live.is_none() {
                return Err(JournalError::NoData { dir: dir.display().to_string() });
            }
            let tail_settled = live.is_none() || tail_settled != Some(false);
            return Ok(Opened { source, check, layout, live, tail_settled });
        }
        std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
        attempt += 1;
    }
}

/// For damage in the last segment that is not a torn tail (an intact record follows it):
/// whether the previous read found it at the same place too. `None` when there is no such
/// damage.
fn tail_damage_repeats(layout: &Layout, previous: &mut Option<(String, u64)>) -> Option<bool> {
    let last = layout.segments.len().checked_sub(1);
    let problem = layout.problem.as_ref().filter(|p| !p.torn_tail && p.segment == last)?;
    let place = (problem.name.clone(), problem.offset);
    let repeated = previous.as_ref() == Some(&place);
    *previous = Some(place);
    Some(repeated)
}

/// One thing a tool has to say about a directory, and how bad it is.
enum Finding {
    /// The directory cannot be used as it is (exit 1).
    Refused(String),
    /// What a crash leaves, cleared by a node on start (exit 3).
    Torn(String),
    /// Worth saying, wrong with nothing (exit 0).
    Note(String),
}

/// Everything to report about an opened directory, in order. Damage in the scan is included
/// only if it lies at or before `to`.
fn findings(opened: &Opened, to: Sequence) -> Vec<Finding> {
    let dir = opened.source.dir();
    let name = |file: &str| dir.join(file).display().to_string();
    let mut found: Vec<Finding> =
        opened.check.problems.iter().map(|p| Finding::Refused(p.to_string())).collect();
    let live = opened.live;
    if let Some(holder) = live {
        found.push(Finding::Note(format!("live directory: node {holder} is writing it")));
    }
    if let Ok(Some(through)) = ringfence_journal::rebuild::rebuilding(&opened.source) {
        found.push(rebuild_finding(&opened.source, through));
    }
    let listed = scan::ReadSource::list_files(&opened.source).unwrap_or_default();
    let superseded = listed
        .into_iter()
        .filter(|name| name.ends_with(ringfence_journal::rebuild::SUPERSEDED_SUFFIX));
    for file in superseded {
        found.push(Finding::Note(format!(
            "{} was set aside by `journal rebuild` or `journal reconfigure` and is never read; \
             delete it once the node runs",
            name(&file)
        )));
    }
    let segments = &opened.layout.segments;
    if let Some(newest) = segments.last().map(|segment| &segment.header.config) {
        for segment in segments.iter().filter(|segment| segment.header.config != *newest) {
            found.push(Finding::Note(format!(
                "{} was written with other [engine] settings than the newest segment: {}; a \
                 node starts on this journal with neither",
                name(&segment.name),
                newest.differences(&segment.header.config, "this segment")
            )));
        }
    }
    if let Some(at) = ringfence_journal::datadir::truncation_under_way(&opened.source) {
        found.push(Finding::Note(format!(
            "a truncation at sequence {at} was cut off part way; the node's next start \
             finishes it (differences between the manifest and the segments may be its \
             unfinished steps)"
        )));
    }
    for file in &opened.check.temporaries {
        found.push(Finding::Note(match live {
            Some(_) if file == ringfence_journal::spare::SPARE_NAME => {
                format!("{} is the journal's next segment, made ready ahead of need", name(file))
            }
            Some(_) => format!("{} is a write in progress", name(file)),
            None => {
                format!("{} is a crash's leftover temporary file; a node removes it", name(file))
            }
        }));
    }
    for file in &opened.check.retired_leftovers {
        found.push(Finding::Note(format!(
            "{} was retired by retention but is still here; a node removes (or archives) it",
            name(file)
        )));
    }
    if let Some(file) = &opened.check.creation_leftover {
        found.push(match live {
            Some(_) => Finding::Note(format!("{} is being created", name(file))),
            None => Finding::Torn(format!(
                "{}: its creation was cut off before its first record; a node removes it on start",
                name(file)
            )),
        });
    }
    match clean_stop_finding(opened, to) {
        Some(refused @ Finding::Refused(_)) => {
            // The end the node left is gone: what the scan found there is no torn tail.
            found.push(refused);
            found.extend(scan_finding(opened, to).filter(|f| matches!(f, Finding::Refused(_))));
        }
        note => found.extend(note.into_iter().chain(scan_finding(opened, to))),
    }
    found
}

/// What a rebuild under way after the snapshot through `through` calls for: the node's next
/// start (or `journal rebuild`) finishes it, unless that snapshot is gone, when both refuse.
fn rebuild_finding(source: &ReadOnlyDir, through: Sequence) -> Finding {
    let name = snapshot::snapshot_name(through);
    if scan::ReadSource::file_len(source, &name).is_ok() {
        return Finding::Note(format!(
            "a rebuild after the snapshot through {through} was cut off part way; the node's next \
             start (or `journal rebuild`) finishes it"
        ));
    }
    let stale = snapshot::stale_name(&name);
    let dir = source.dir();
    Finding::Refused(format!(
        "a rebuild after the snapshot through {through} was cut off part way, but {} is gone: \
         the node refuses to start and `journal rebuild` cannot finish it. Put that snapshot \
         back (from a backup, or rename {} back if it is there), then run `ringfence journal \
         rebuild {}`",
        dir.join(&name).display(),
        dir.join(&stale).display(),
        dir.display()
    ))
}

/// What the clean-stop marker says of a stopped node's journal: where it stopped, or, if the
/// journal no longer ends there, the refusal the node's next start would give. Nothing on a
/// live directory (the node removed the marker as it started) or one damaged before its end
/// (the scan's finding says that).
fn clean_stop_finding(opened: &Opened, to: Sequence) -> Option<Finding> {
    Some(match clean_stop_check(opened, to) {
        Ok(None) => return None,
        Ok(Some((stop, false))) => {
            Finding::Note(format!("the node stopped cleanly at sequence {}", stop.last))
        }
        Ok(Some((stop, true))) => Finding::Note(format!(
            "the clean-stop marker names sequence {}, but the journal runs past it (written by a \
             build that does not know the marker); a node ignores it",
            stop.last
        )),
        Err(error) => Finding::Refused(error.to_string()),
    })
}

/// Recovery's judgement of a stopped node's clean-stop marker, for the read-only tools: the
/// marker and whether it is stale, or the refusal a node's start would give. `Ok(None)` with
/// no marker, on a live directory (the node removed it as it started), on one damaged before
/// its end (the scan reports that), or when the end moved only past `to`.
pub fn clean_stop_check(
    opened: &Opened,
    to: Sequence,
) -> Result<Option<(CleanStop, bool)>, JournalError> {
    if opened.live.is_some() || opened.layout.problem.as_ref().is_some_and(|p| !p.torn_tail) {
        return Ok(None);
    }
    // A listed segment missing or cut short was not scanned, so the journal seems to end
    // early: the manifest check's finding says what is gone, and which cut keeps the rest.
    let unread = opened.check.problems.iter().any(|problem| {
        matches!(problem, JournalError::SegmentMissing { .. } | JournalError::SegmentLength { .. })
    });
    if unread {
        return Ok(None);
    }
    let Some(stop) = datadir::clean_stop(&opened.source)? else { return Ok(None) };
    let dir = opened.source.dir();
    let describe = |name: &str| dir.join(name).display().to_string();
    match recovery::check_clean_stop(&opened.layout, &stop, &describe) {
        Ok(stale) => Ok(Some((stop, stale))),
        Err(JournalError::EndMoved { from, .. }) if from > to => Ok(None),
        Err(error) => Err(error),
    }
}

/// The scan's problem, if it lies within the range read.
fn scan_finding(opened: &Opened, to: Sequence) -> Option<Finding> {
    let (layout, dir) = (&opened.layout, opened.source.dir());
    let problem = layout.problem.as_ref().filter(|p| p.sequence <= to)?;
    let describe = |name: &str| dir.join(name).display().to_string();
    let in_progress = tail_in_progress(opened);
    if let Some(error) = layout.corruption(&describe).filter(|_| !in_progress) {
        return Some(Finding::Refused(error.to_string()));
    }
    // A listed segment's header was synced before it was listed: unusable is corruption.
    if opened.check.manifest.is_some() && problem.segment.is_none() {
        return Some(Finding::Refused(format!(
            "journal corrupt: {} at byte offset {} (sequence {}): {}",
            describe(&problem.name),
            problem.offset,
            problem.sequence,
            problem.damage
        )));
    }
    let at = format!(
        "{} at byte offset {} (sequence {})",
        describe(&problem.name),
        problem.offset,
        problem.sequence
    );
    Some(match opened.live.filter(|_| in_progress) {
        Some(holder) => Finding::Note(format!(
            "live directory: node {holder} is writing; last record in progress ({at})"
        )),
        None => Finding::Torn(format!(
            "torn tail: {at}: {}; a node truncates it on start (the node did not stop cleanly, \
             and a record a crash cut off was never acknowledged)",
            problem.damage
        )),
    })
}

/// Whether the scan's problem is the writer's record in progress: on a live directory, the
/// last segment's bytes after its last intact record are the writer's, unless the same damage
/// held still across reads.
pub fn tail_in_progress(opened: &Opened) -> bool {
    let layout = &opened.layout;
    let Some(problem) = layout.problem.as_ref() else { return false };
    let in_last =
        problem.segment.is_some() && problem.segment == layout.segments.len().checked_sub(1);
    opened.live.is_some() && in_last && (problem.torn_tail || !opened.tail_settled)
}

/// Prints findings to standard error and returns the exit status they call for.
fn report(findings: &[Finding]) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let mut torn = false;
    for finding in findings {
        match finding {
            Finding::Refused(text) => {
                eprintln!("error: {text}");
                code = ExitCode::FAILURE;
            }
            Finding::Torn(text) => {
                eprintln!("warning: {text}");
                torn = true;
            }
            Finding::Note(text) => eprintln!("note: {text}"),
        }
    }
    if code == ExitCode::SUCCESS && torn { ExitCode::from(EXIT_TORN_TAIL) } else { code }
}

fn epoch_ranges(records: &mut Vec<(Epoch, Sequence, Sequence)>, record: &Record) {
    match records.last_mut() {
        Some((epoch, _, last)) if *epoch == record.epoch => *last = record.sequence,
        _ => records.push((record.epoch, record.sequence, record.sequence)),
    }
}

/// What `verify` found, for either output format.
struct Verified {
    opened: Opened,
    /// (epoch, first, last) runs of records.
    epochs: Vec<(Epoch, Sequence, Sequence)>,
    snapshots: Vec<serde_json::Value>,
    status: &'static str,
    problems: Vec<String>,
    notes: Vec<String>,
}

fn verify(args: &DirArgs) -> Result<ExitCode, JournalError> {
    let mut opened = open(&args.dir)?;
    let mut epochs = Vec::new();
    let bar = progress::records_bar(opened.layout.records(), "records verified", false);
    let mut done = 0;
    let read = scan::read(&mut opened.source, &opened.layout, Sequence(1), &mut |record| {
        epoch_ranges(&mut epochs, record);
        tick(&bar, &mut done);
        ControlFlow::Continue(())
    });
    bar.finish_and_clear();
    let mut found = findings(&opened, Sequence(u64::MAX));
    if let Err(error) = read {
        found.push(Finding::Refused(error.to_string()));
    }
    // Damage with records after it: what they are decides between the repairs.
    let damaged = opened.layout.problem.as_ref().filter(|p| !p.torn_tail).map(|p| p.sequence);
    if let Some(at) = damaged.filter(|_| opened.live.is_none()) {
        found.extend(past_damage_note(&mut opened.source, at));
        found.extend(header_damage_note(&opened));
    }
    let (mut snapshots, bad_snapshot) = verify_snapshots(&opened.source)?;
    let no_start = snapshot_fallbacks(&mut snapshots, &opened.layout);
    let refused = found.iter().any(|f| matches!(f, Finding::Refused(_)));
    let torn = found.iter().any(|f| matches!(f, Finding::Torn(_)));
    let (status, code) = match (refused, no_start.is_some(), bad_snapshot, torn) {
        (true, _, _, _) => ("corrupt", ExitCode::FAILURE),
        (false, true, _, _) => ("no_snapshot", ExitCode::FAILURE),
        (false, false, true, _) => ("bad_snapshot", ExitCode::FAILURE),
        (false, false, false, true) => ("torn_tail", ExitCode::from(EXIT_TORN_TAIL)),
        (false, false, false, false) => ("ok", ExitCode::SUCCESS),
    };
    found.extend(no_start.map(Finding::Refused));
    let texts = |keep: fn(&Finding) -> bool| -> Vec<String> {
        found.iter().filter(|f| keep(f)).map(finding_text).collect()
    };
    let problems = texts(|f| !matches!(f, Finding::Note(_)));
    let notes = texts(|f| matches!(f, Finding::Note(_)));
    let verified = Verified { opened, epochs, snapshots, status, problems, notes };
    if args.json {
        print_verify_json(args, &verified);
    } else {
        print_verify_text(args, &verified);
    }
    Ok(code)
}

fn print_verify_json(args: &DirArgs, verified: &Verified) {
    let (layout, check) = (&verified.opened.layout, &verified.opened.check);
    let size: u64 = layout.segments.iter().map(|s| s.header.segment_len).sum();
    let used: u64 = layout.segments.iter().map(|s| s.end as u64).sum();
    let epochs: Vec<_> = verified
        .epochs
        .iter()
        .map(|(e, a, b)| json!({"epoch": e.0, "first": a.0, "last": b.0}))
        .collect();
    // Segments cut short, not read with the rest: the intact records left in each.
    let cut_short: Vec<_> = (check.problems.iter())
        .filter_map(|problem| match problem {
            JournalError::SegmentLength { file, first, intact, .. } => Some(json!({
                "file": file, "first_sequence": first.0, "intact_records": intact,
                "first_lost": first.0 + u64::from(*intact),
            })),
            _ => None,
        })
        .collect();
    let value = json!({
        "dir": args.dir.display().to_string(), "status": verified.status,
        "problem": verified.problems.first(), "problems": verified.problems,
        "notes": verified.notes, "live_pid": verified.opened.live.and_then(|h| h.pid),
        "manifest": check.manifest.as_ref().map(|m| json!({
            "generation": m.generation, "segments": m.segments.len(),
            "retired_below": m.retired_below.0, "segments_retired": m.segments_retired,
        })),
        "epoch_file": check.epochs.map(|e| json!({
            "current": e.current.0, "promised": e.promised.0,
        })),
        "segments": layout.segments.len(), "records": layout.records(),
        "first_sequence": layout.first_sequence().map(|s| s.0),
        "last_sequence": layout.last_sequence().map(|s| s.0), "epochs": epochs,
        "bytes_on_disk": size, "bytes_used": used, "snapshots": verified.snapshots,
        "cut_short": cut_short,
        "engine": layout.segments.last().map(|segment| {
            segment.header.config.settings().into_iter().collect::<BTreeMap<_, _>>()
        }),
    });
    outln!("{value}");
}

fn print_verify_text(args: &DirArgs, verified: &Verified) {
    let (layout, check) = (&verified.opened.layout, &verified.opened.check);
    outln!("journal    {}", args.dir.display());
    if let Some(m) = &check.manifest {
        let (generation, listed, retired) = (m.generation, m.segments.len(), m.segments_retired);
        outln!("manifest   generation {generation}: {listed} segments listed, {retired} retired");
    }
    if let Some(e) = check.epochs {
        outln!("epochs     current {}, promised {} (epoch file)", e.current, e.promised);
    }
    let size: u64 = layout.segments.iter().map(|s| s.header.segment_len).sum();
    let used: u64 = layout.segments.iter().map(|s| s.end as u64).sum();
    outln!("segments   {} ({} bytes on disk, {} used)", layout.segments.len(), size, used);
    if let Some(segment) = layout.segments.last() {
        // The settings a node must run with on this journal.
        let settings =
            segment.header.config.settings().map(|(name, value)| format!("{name} = {value}"));
        outln!("engine     {}", settings.join(", "));
    }
    match (layout.first_sequence(), layout.last_sequence()) {
        (Some(first), Some(last)) => {
            outln!("records    {} (sequences {first}..={last})", layout.records());
        }
        _ => outln!("records    0"),
    }
    for problem in &check.problems {
        if let JournalError::SegmentLength { file, intact, first, .. } = problem {
            // Not read with the rest: the error below counts them and names the cut keeping them.
            let lost = Sequence(first.0 + u64::from(*intact));
            outln!("cut short  {file}: {intact} intact records left in it, lost from {lost} on");
        }
    }
    for (epoch, first, last) in &verified.epochs {
        outln!("epoch      {epoch}: sequences {first}..={last}");
    }
    print_snapshot_lines(&verified.snapshots);
    for note in &verified.notes {
        outln!("note       {note}");
    }
    match verified.status {
        "ok" => outln!("status     ok: every record and snapshot is intact"),
        "bad_snapshot" => outln!("status     a snapshot is invalid (recovery does without it)"),
        "no_snapshot" => {
            outln!("status     UNRECOVERABLE: no intact snapshot reaches the journal's start");
            for text in &verified.problems {
                eprintln!("error: {text}");
            }
        }
        "torn_tail" => outln!("status     {}", verified.problems.join("; ")),
        _ => {
            outln!("status     CORRUPT");
            for text in &verified.problems {
                eprintln!("error: {text}");
            }
        }
    }
}

fn finding_text(finding: &Finding) -> String {
    match finding {
        Finding::Refused(text) | Finding::Torn(text) | Finding::Note(text) => text.clone(),
    }
}

/// Says in each invalid snapshot's line (`recovery`) what recovery does without it, choosing
/// as `recovery::choose_snapshot` does: the newest intact snapshot not past the journal's end.
/// Returns why recovery will refuse when that snapshot (or, with none, sequence 1) does not
/// reach the journal's first record, because the records before it were retired.
fn snapshot_fallbacks(lines: &mut [serde_json::Value], layout: &Layout) -> Option<String> {
    let journal_last = layout.segments.last().map(scan::SegmentLayout::ends_at);
    let through = |line: &serde_json::Value| Sequence(line["through"].as_u64().unwrap_or(0));
    let chosen = (lines.iter())
        .filter(|line| line["ok"].as_bool() == Some(true))
        .map(through)
        .filter(|t| journal_last.is_none_or(|last| *t <= last))
        .max();
    let start = chosen.map_or(Sequence(1), Sequence::next);
    // As recovery refuses: records held, but not from where the replay must start.
    let first = layout.first_sequence().filter(|first| *first > start);
    for line in lines.iter_mut().filter(|line| line["ok"].as_bool() != Some(true)) {
        line["recovery"] = json!(fallback_text(through(line), chosen, journal_last, first));
    }
    let first = first?;
    let last = journal_last.expect("a journal holding records ends somewhere");
    assert!(first.0 > 1, "a journal from sequence 1 replays without a snapshot");
    Some(format!(
        "the journal starts at sequence {first} (the records before it were retired after \
         snapshots) and no intact snapshot reaches it, so recovery will refuse: `serve`, \
         `replay` and `journal backup` all refuse this directory. Put back an intact snapshot \
         through a sequence from {} to {last} of this history (a copy from a backup made with \
         `journal backup`, or from the standby's data directory), or the retired segments from \
         the archive directory; or, if this node's peer holds the records, move this directory \
         aside and start the node as a standby with an empty data directory",
        first.0 - 1
    ))
}

/// What recovery does without the invalid snapshot through `through`.
fn fallback_text(
    through: Sequence,
    chosen: Option<Sequence>,
    journal_last: Option<Sequence>,
    refused_first: Option<Sequence>,
) -> String {
    if journal_last.is_some_and(|last| through > last) {
        return "it runs past the journal's end, so recovery sets it aside".to_owned();
    }
    match (chosen, refused_first) {
        (Some(newer), _) if newer > through => {
            format!("recovery does not need it: it starts from the newer snapshot through {newer}")
        }
        (_, Some(first)) => format!(
            "no older intact snapshot reaches the journal's first record {first}, so recovery \
             cannot do without it"
        ),
        (Some(older), None) => {
            format!("recovery skips it in favour of the older snapshot through {older}")
        }
        (None, None) => "recovery skips it and replays the journal from sequence 1".to_owned(),
    }
}

/// Loads every snapshot; returns one JSON line each and whether any is invalid.
fn verify_snapshots(source: &ReadOnlyDir) -> Result<(Vec<serde_json::Value>, bool), JournalError> {
    let mut lines = Vec::new();
    let mut bad = false;
    for (through, name) in snapshot::list(source)? {
        let file = source.dir().join(&name).display().to_string();
        match snapshot::load(source, &name, None) {
            Ok((_, meta)) => {
                let history: Vec<serde_json::Value> = (meta.history.starts().iter())
                    .map(|(epoch, first)| json!({"epoch": epoch.0, "first_sequence": first.0}))
                    .collect();
                lines.push(json!({
                    "file": file, "through": through.0, "ok": true,
                    "through_epoch": meta.through_epoch.map(|epoch| epoch.0),
                    "epoch_history": history,
                    "state_digest": format!("{:016x}", meta.state_digest), "bytes": meta.bytes,
                }));
            }
            Err(error) => {
                bad = true;
                lines.push(json!({
                    "file": file, "through": through.0, "ok": false,
                    "error": error.to_string(),
                }));
            }
        }
    }
    Ok((lines, bad))
}

fn print_snapshot_lines(lines: &[serde_json::Value]) {
    for line in lines {
        match line["ok"].as_bool() {
            Some(true) => outln!(
                "snapshot   {} through {} ({}) digest {}; {}",
                line["file"].as_str().unwrap_or_default(),
                line["through"],
                line["through_epoch"]
                    .as_u64()
                    .map_or("its epoch not recorded".to_owned(), |epoch| format!("epoch {epoch}")),
                line["state_digest"].as_str().unwrap_or_default(),
                history_text(&line["epoch_history"])
            ),
            _ => outln!(
                "snapshot   INVALID {}; {}",
                line["error"].as_str().unwrap_or_default(),
                line["recovery"].as_str().unwrap_or_default()
            ),
        }
    }
}

/// A snapshot's epoch history in a line of text: its newest entries, `epochs 1 from 1, 3 from
/// 12` (each epoch from its first sequence).
fn history_text(history: &serde_json::Value) -> String {
    const SHOWN: usize = 3;
    let entries = history.as_array().map(Vec::as_slice).unwrap_or_default();
    if entries.is_empty() {
        return "no epoch history recorded".to_owned();
    }
    let newest = &entries[entries.len().saturating_sub(SHOWN)..];
    let shown: Vec<String> =
        newest.iter().map(|e| format!("{} from {}", e["epoch"], e["first_sequence"])).collect();
    let older = if entries.len() > SHOWN { "..., " } else { "" };
    format!("epochs {older}{}", shown.join(", "))
}

/// One line of `journal dump --json`: a journaled record, its command in the API's view.
#[derive(Serialize)]
pub struct DumpLine {
    command: CommandJson,
    epoch: u64,
    sequence: u64,
    timestamp_ms: u64,
}

impl DumpLine {
    /// The line of `record`.
    #[must_use]
    pub fn of(record: &Record) -> DumpLine {
        DumpLine {
            command: CommandJson::from(&record.command),
            epoch: record.epoch.0,
            sequence: record.sequence.0,
            timestamp_ms: record.timestamp.0,
        }
    }
}

fn dump(args: &DumpArgs) -> Result<ExitCode, JournalError> {
    let mut opened = open(&args.dir)?;
    let (source, layout) = (&mut opened.source, &opened.layout);
    if args.from == Some(0) {
        return Err(JournalError::Options(
            "--from must be at least 1: sequences start at 1".into(),
        ));
    }
    let from = Sequence(args.from.unwrap_or(1));
    let to = Sequence(args.to.unwrap_or(u64::MAX));
    if from > to {
        return Err(JournalError::Options(format!(
            "--from {from} is after --to {to}: the range holds no sequence"
        )));
    }
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut write_error = None;
    let total = layout.records().min(to.0.saturating_sub(from.0 - 1));
    let bar = progress::records_bar(total, "records dumped", io::stdout().is_terminal());
    let mut done = 0;
    scan::read(source, layout, from, &mut |record| {
        if record.sequence > to {
            return ControlFlow::Break(());
        }
        tick(&bar, &mut done);
        let written = if args.json {
            // Serialized straight into the buffer, as `replay --export` writes its lines.
            serde_json::to_writer(&mut out, &DumpLine::of(record))
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
        } else {
            writeln!(out, "{}", dump_line(record))
        };
        match written {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => {
                write_error = Some(error);
                ControlFlow::Break(())
            }
        }
    })?;
    bar.finish_and_clear();
    if let Some(error) = write_error.filter(|e| e.kind() != io::ErrorKind::BrokenPipe) {
        return Err(JournalError::io("writing to standard output", error));
    }
    let _ = out.flush();
    drop(out);
    let mut found = findings(&opened, to);
    found.extend(range_notes(&opened.layout, from, to).into_iter().map(Finding::Note));
    Ok(report(&found))
}

/// What a requested range of sequences asks for that the journal does not hold: sequences
/// retired before its first record, or past its last. Empty when it holds all of them.
fn range_notes(layout: &Layout, from: Sequence, to: Sequence) -> Vec<String> {
    let (Some(first), Some(last)) = (layout.first_sequence(), layout.last_sequence()) else {
        return vec!["the journal holds no records".to_owned()];
    };
    assert!(first <= last, "a journal that ends before it starts");
    let mut notes = Vec::new();
    if from < first {
        let end = to.min(Sequence(first.0 - 1));
        notes.push(format!(
            "sequences {from}..={end} are not in the journal, which starts at {first} (older \
             records were retired after snapshots)"
        ));
    }
    // Without `--to` the range is open-ended: it asks past the end only if it starts there.
    let open_ended = to.0 == u64::MAX;
    if from > last || (to > last && !open_ended) {
        let start = from.max(last.next());
        let range = if open_ended { format!("{start} on") } else { format!("{start}..={to}") };
        notes.push(format!("sequences {range} are not in the journal, which ends at {last}"));
    }
    notes
}

/// `12  2026-01-01T00:00:00.000Z  epoch 1  reserve user=9 sku=1 qty=1 ...`
fn dump_line(record: &Record) -> String {
    let value = json::command(&record.command);
    let mut line = format!(
        "{:>10}  {}  epoch {}  {}",
        record.sequence,
        format_ms(record.timestamp.0),
        record.epoch,
        value["kind"].as_str().unwrap_or("?")
    );
    if let Some(fields) = value.as_object() {
        for (key, field) in fields.iter().filter(|(k, v)| *k != "kind" && !v.is_null()) {
            line.push_str(&format!(" {key}={}", field.to_string().trim_matches('"')));
        }
    }
    line
}

/// What retention keeps: the snapshots present, the sequence the journal must reach back to
/// (one past the oldest snapshot kept, or 1 without snapshots), and what has been retired.
fn retention_summary(opened: &Opened) -> Result<(serde_json::Value, String), JournalError> {
    let snapshots = snapshot::list(&opened.source)?;
    let needed_from = snapshots.first().map_or(Sequence(1), |(through, _)| through.next());
    let (retired, below) = opened
        .check
        .manifest
        .as_ref()
        .map_or((0, Sequence(0)), |m| (m.segments_retired, m.retired_below));
    let value = json!({
        "snapshots_kept": snapshots.len(), "needed_from": needed_from.0,
        "segments_retired": retired, "retired_below": below.0,
        "journal_first_sequence": opened.layout.first_sequence().map(|s| s.0),
    });
    let mut text = format!(
        "retention {} snapshots kept: the journal must reach back to sequence {needed_from}; \
         {retired} segments retired so far",
        snapshots.len()
    );
    if retired > 0 {
        text.push_str(&format!(" (every record before sequence {below})"));
    }
    Ok((value, text))
}

fn stats(args: &DirArgs) -> Result<ExitCode, JournalError> {
    let mut opened = open(&args.dir)?;
    let (retention, retention_text) = retention_summary(&opened)?;
    let (source, layout) = (&mut opened.source, &opened.layout);
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut bytes_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let bar = progress::records_bar(layout.records(), "records counted", false);
    let mut done = 0;
    scan::read(source, layout, Sequence(1), &mut |record| {
        tick(&bar, &mut done);
        let kind = json::command_kind(&record.command);
        *kinds.entry(kind).or_default() += 1;
        *bytes_by_kind.entry(kind).or_default() += u64::from(record.len);
        ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();
    let segments: Vec<_> = layout
        .segments
        .iter()
        .map(|s| {
            json!({
                "file": s.name, "first_sequence": s.header.first_sequence.0,
                "last_sequence": s.last.map(|l| l.0), "records": s.records,
                "bytes_used": s.end, "bytes": s.header.segment_len,
                "first_time_ms": s.time_range.map(|t| t.0.0),
                "last_time_ms": s.time_range.map(|t| t.1.0),
                "last_epoch": s.last_epoch.map(|e| e.0),
            })
        })
        .collect();
    let records = layout.records();
    let used: u64 = layout.segments.iter().map(|s| s.end as u64).sum();
    let time_range = time_span(layout);
    if args.json {
        let value = json!({
            "dir": args.dir.display().to_string(), "records": records, "bytes_used": used,
            "segments": segments, "commands_by_kind": kinds, "retention": retention,
            "first_time_ms": time_range.map(|t| t.0.0), "last_time_ms": time_range.map(|t| t.1.0),
        });
        outln!("{value}");
    } else {
        print_stats_text(layout, &kinds, &bytes_by_kind);
        outln!("{retention_text}");
    }
    Ok(report(&findings(&opened, Sequence(u64::MAX))))
}

/// The text form of `journal stats`: per segment, totals, time span, commands by kind.
fn print_stats_text(
    layout: &Layout,
    kinds: &BTreeMap<&'static str, u64>,
    bytes_by_kind: &BTreeMap<&'static str, u64>,
) {
    let records = layout.records();
    let used: u64 = layout.segments.iter().map(|s| s.end as u64).sum();
    outln!(
        "{:<26} {:>12} {:>12} {:>10} {:>7}  time range",
        "segment",
        "first",
        "last",
        "records",
        "used"
    );
    for s in &layout.segments {
        let used_pct = 100.0 * s.end as f64 / s.header.segment_len as f64;
        let range = s
            .time_range
            .map_or_else(String::new, |(a, b)| format!("{} .. {}", format_ms(a.0), format_ms(b.0)));
        outln!(
            "{:<26} {:>12} {:>12} {:>10} {:>6.1}%  {range}",
            s.name,
            s.header.first_sequence,
            s.last.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            s.records,
            used_pct
        );
    }
    outln!();
    outln!(
        "records {records}, {used} bytes used, {:.1} bytes per record",
        used as f64 / records.max(1) as f64
    );
    if let Some((first, last)) = time_span(layout) {
        let seconds = (last.0.saturating_sub(first.0)) as f64 / 1e3;
        outln!(
            "time    {} .. {} ({seconds:.1} s of commands)",
            format_ms(first.0),
            format_ms(last.0)
        );
    }
    outln!("{:<22} {:>12} {:>8} {:>10}", "command", "count", "share", "avg bytes");
    for (kind, count) in kinds {
        let avg = bytes_by_kind[kind] as f64 / *count as f64;
        outln!(
            "{kind:<22} {count:>12} {:>7.1}% {avg:>10.1}",
            100.0 * *count as f64 / records.max(1) as f64
        );
    }
}

fn time_span(layout: &Layout) -> Option<(Timestamp, Timestamp)> {
    let first = layout.segments.iter().find_map(|s| s.time_range.map(|t| t.0))?;
    let last = layout.segments.iter().rev().find_map(|s| s.time_range.map(|t| t.1))?;
    Some((first, last))
}

fn truncate(args: &TruncateArgs) -> Result<ExitCode, JournalError> {
    if args.at_seq == Some(0) {
        return Err(JournalError::Options("--at-seq must be at least 1".to_owned()));
    }
    // First: a cut now could set aside the snapshot the rebuild under way starts after.
    refuse_while_rebuilding(&ReadOnlyDir::open(&args.dir)?, &args.dir)?;
    let at_seq = match args.at_seq {
        Some(at_seq) => at_seq,
        None => after_the_end(&args.dir)?,
    };
    let mut source = ReadOnlyDir::open(&args.dir)?;
    let check = ringfence_journal::datadir::check(&mut source)?;
    if !check.holds_data() {
        return Err(JournalError::NoData { dir: args.dir.display().to_string() });
    }
    let at = Sequence(at_seq);
    // Segments missing at or after the cut: their records are lost with them, whatever the
    // salvage of the segments left finds.
    let missing: Vec<(Sequence, String, String)> = check
        .problems
        .iter()
        .filter_map(|problem| match problem {
            JournalError::SegmentMissing { file, first, held, .. } if *first >= at => {
                Some((*first, file.clone(), held.clone()))
            }
            _ => None,
        })
        .collect();
    // A refusal changes nothing: a node running and every cut `recovery::truncate` refuses
    // are refused before the lock file and `rollback/` are made. (A node's directory has its
    // lock file already; a copy of one may not.)
    refuse_while_locked(&args.dir)?;
    recovery::check_truncation(&mut source, at)?;
    drop(source);
    // Exclusive: truncating a journal a node is appending to would cut it under the node.
    let storage = FileStorage::open_exclusive(&args.dir)?;
    // Again under the lock: a rebuild may have been cut off since the first look.
    refuse_while_rebuilding(&storage, &args.dir)?;
    let rollback_existed = args.dir.join(crate::rollback::ROLLBACK_DIR).exists();
    // What is cut off may be the only copy of acknowledged writes: kept first, read past any
    // damage, and nothing is dropped if it cannot be kept.
    let mut salvaged = Salvaged::default();
    let kept = crate::rollback::keep(&args.dir, "truncated", |visit| {
        salvaged = salvage::salvage(&mut storage.clone(), at, visit).map_err(|e| e.to_string())?;
        Ok(())
    })
    .map_err(|error| {
        let context = format!("keeping the records from sequence {at} on (nothing was truncated)");
        JournalError::io(context, std::io::Error::other(error))
    })?;
    let truncation = match recovery::truncate(&storage, at) {
        Ok(truncation) => truncation,
        Err(error) => {
            let kept = (kept.as_ref(), rollback_existed);
            return Err(truncation_failed(args, at, error, kept, &storage));
        }
    };
    match &kept {
        Some((file, count)) => outln!(
            "kept      {count} records ({}..={}) in {} (`journal dump --json` lines){}",
            salvaged.span.map_or(at, |(first, _)| first),
            salvaged.span.map_or(at, |(_, last)| last),
            file.display(),
            if salvaged.unreadable_bytes > 0 {
                format!(
                    "; {} bytes at or after the cut held no intact record",
                    salvaged.unreadable_bytes
                )
            } else {
                String::new()
            }
        ),
        None => outln!("kept      nothing: no intact record at or after sequence {at}"),
    }
    if salvaged.missing > 0 {
        outln!(
            "lost      {} in no intact record, from the cut to the last record kept \
             (damaged; nothing of them is kept)",
            missing_text(&salvaged)
        );
    }
    // Those before the last record kept are counted in the line above.
    let counted = |first: Sequence| salvaged.span.is_some_and(|(_, last)| first <= last);
    for (_, file, held) in missing.iter().filter(|(first, ..)| !counted(*first)) {
        outln!("lost      {held}, with {file}, which is missing");
    }
    for file in &truncation.restored {
        outln!("restored  {file} to its listed length (the bytes cut off read as zero)");
    }
    for file in &truncation.segments_removed {
        outln!("removed   {file}");
    }
    if let Some((file, offset)) = &truncation.cut {
        outln!("cut       {file} at byte offset {offset}");
    }
    for file in &truncation.snapshots_invalidated {
        outln!("set aside {file} (renamed *.snap.stale: it includes dropped records)");
    }
    let manifest = &truncation.manifest;
    outln!(
        "manifest  {} segments listed (generation {}){}",
        manifest.segments.len(),
        manifest.generation,
        if truncation.manifest_rebuilt { ", rebuilt from the segments present" } else { "" }
    );
    if let Some(epochs) = truncation.epochs_written {
        outln!(
            "epochs    the epoch file was missing or damaged: wrote current {}, promised {} \
             (the highest epoch among the records kept)",
            epochs.current,
            epochs.promised
        );
    }
    outln!("journal now ends before sequence {}", at_seq);
    Ok(ExitCode::SUCCESS)
}

/// Refuses a truncation while a rebuild is under way (its `rebuilding` marker is present): the
/// cut could set aside the snapshot the rebuild starts the journal after, leaving a marker
/// that neither the node nor `journal rebuild` can finish. The rebuild is finished first.
fn refuse_while_rebuilding<R: scan::ReadSource>(
    source: &R,
    dir: &Path,
) -> Result<(), JournalError> {
    let Some(through) = ringfence_journal::rebuild::rebuilding(source)? else { return Ok(()) };
    Err(JournalError::Refused(format!(
        "cannot truncate: a rebuild of {} after the snapshot through {through} is under way (cut \
         off part way); run `ringfence journal rebuild {}` first to finish it, then truncate if \
         it is still needed. Nothing was changed",
        dir.display(),
        dir.display()
    )))
}

/// Refuses a repair (truncate, rebuild, heal, reconfigure) while a process holds the
/// directory's lock (a node runs), as taking the lock would, without making the lock file.
fn refuse_while_locked(dir: &Path) -> Result<(), JournalError> {
    let lock_file = dir.join(lock::LOCK_FILE);
    let held = lock::holder(dir)
        .map_err(|e| JournalError::io(format!("probing the lock of {}", dir.display()), e))?;
    let Some(holder) = held else { return Ok(()) };
    Err(JournalError::Locked {
        dir: dir.display().to_string(),
        lock_file: lock_file.display().to_string(),
        holder,
    })
}

/// `dir` opened without its lock, for a repair's read-only check before it takes the lock;
/// refused while a node runs ([`refuse_while_locked`]).
fn unlocked_unless_running(dir: &Path) -> Result<FileStorage, JournalError> {
    refuse_while_locked(dir)?;
    FileStorage::open(dir).map_err(|e| JournalError::io(format!("opening {}", dir.display()), e))
}

/// The error of a truncation that failed at `at`. One that had started (its `truncating`
/// marker is there) may have removed segments or cut one: the records it was dropping are
/// kept in the rollback file, and running it again (or the node's next start) finishes it.
/// One that changed nothing dropped nothing, so the rollback file is removed, and
/// `rollback/` too when this run made it (`kept`: the file, and whether `rollback/` existed).
fn truncation_failed(
    args: &TruncateArgs,
    at: Sequence,
    error: JournalError,
    (kept, rollback_existed): (Option<&(PathBuf, u64)>, bool),
    storage: &FileStorage,
) -> JournalError {
    if datadir::truncation_under_way(storage).is_none() {
        if let Some((file, _)) = kept {
            let _ = std::fs::remove_file(file);
        }
        if !rollback_existed {
            // Only an empty directory is removed: one holding a file is not this run's alone.
            let _ = std::fs::remove_dir(args.dir.join(crate::rollback::ROLLBACK_DIR));
        }
        return error;
    }
    let where_kept = match kept {
        Some((file, count)) => {
            format!("the {count} records from sequence {at} on are kept in {}", file.display())
        }
        None => format!("no intact record from sequence {at} on was there to keep"),
    };
    JournalError::Refused(format!(
        "{error}. The truncation at sequence {at} had started and may have dropped records: \
         {where_kept}. Run `ringfence journal truncate {} --at-seq {at}` again once the cause is \
         cleared (or start the node) to finish it",
        args.dir.display()
    ))
}

/// The sequences `salvaged` found no intact record of, for the operator to reconcile: their
/// count and their runs, e.g. `3 sequences (1000, 1402..=1403)`.
fn missing_text(salvaged: &Salvaged) -> String {
    let mut runs: Vec<String> = salvaged
        .missing_runs
        .iter()
        .map(|&(first, last)| match first == last {
            true => first.to_string(),
            false => format!("{first}..={last}"),
        })
        .collect();
    let listed: u64 = salvaged.missing_runs.iter().map(|(first, last)| last.0 - first.0 + 1).sum();
    if listed < salvaged.missing {
        runs.push(format!("and {} more", salvaged.missing - listed));
    }
    let noun = if salvaged.missing == 1 { "sequence" } else { "sequences" };
    format!("{} {noun} ({})", salvaged.missing, runs.join(", "))
}

/// What a damaged journal still holds past the damage at `at`, for `verify` to say before
/// the operator chooses a repair: the intact records `truncate` would keep in `rollback/`,
/// and the sequences no intact record holds. `None` if the search itself failed.
fn past_damage_note(source: &mut ReadOnlyDir, at: Sequence) -> Option<Finding> {
    let salvaged = salvage::salvage(source, at, &mut |_| ControlFlow::Continue(())).ok()?;
    let Some((first, last)) = salvaged.span else {
        return Some(Finding::Note(format!(
            "past the damage at sequence {at}: no intact record; `journal truncate --at-seq \
             {at}` would drop nothing the journal still holds intact"
        )));
    };
    let missing = match salvaged.missing {
        0 => String::new(),
        _ => format!("; in no intact record: {}", missing_text(&salvaged)),
    };
    Some(Finding::Note(format!(
        "past the damage at sequence {at}: {} intact records ({first}..={last}), which `journal \
         truncate --at-seq {at}` would keep in rollback/ as it drops them{missing}",
        salvaged.records
    )))
}

/// For damage to a segment's header, which repairs work: `rebuild` makes no header from a
/// damaged one, so it needs a snapshot whose next record lies in a later segment; `heal`
/// replaces records only.
fn header_damage_note(opened: &Opened) -> Option<Finding> {
    let problem = opened.layout.problem.as_ref()?;
    let Damage::SegmentHeader(_) = problem.damage else { return None };
    let file = opened.source.dir().join(&problem.name);
    Some(Finding::Note(format!(
        "the damage is to the header of {}, which names the [engine] settings its records were \
         written with: `journal rebuild` repairs it only from a snapshot whose next record lies \
         in a later segment (otherwise it refuses, changing nothing), and `journal heal` \
         replaces records, not headers; `journal truncate --at-seq {}` drops the records from \
         there on, keeping them in rollback/",
        file.display(),
        problem.sequence
    )))
}

fn rebuild(args: &RebuildArgs) -> Result<ExitCode, JournalError> {
    let mut source = ReadOnlyDir::open(&args.dir)?;
    if !ringfence_journal::datadir::check(&mut source)?.holds_data() {
        return Err(JournalError::NoData { dir: args.dir.display().to_string() });
    }
    // A refusal changes nothing: a node running and every rebuild `rebuild` refuses are
    // refused before the lock file is made (or its pid rewritten).
    let unlocked = unlocked_unless_running(&args.dir)?;
    ringfence_journal::rebuild::check(&unlocked)?;
    drop(unlocked);
    // Exclusive: a node appending to the journal would write into segments set aside here.
    let storage = FileStorage::open_exclusive(&args.dir)?;
    let rebuilt = ringfence_journal::rebuild::rebuild(&storage)?;
    outln!("snapshot   {} (through sequence {})", rebuilt.snapshot, rebuilt.through);
    if let Some(file) = &rebuilt.new_segment {
        match rebuilt.copied {
            0 => outln!("new        {file}: empty (no record follows the snapshot)"),
            n => outln!("new        {file}: {n} records after the snapshot, copied"),
        }
    }
    for file in &rebuilt.superseded {
        outln!("set aside  {file}");
    }
    let next = rebuilt.through.next();
    let holds = if rebuilt.last < next {
        format!("no record after the snapshot and continues at sequence {next}")
    } else {
        format!("sequences {next}..={} (the state before them is the snapshot's)", rebuilt.last)
    };
    outln!(
        "journal now holds {holds}; nothing was dropped. Delete the *.superseded files once the \
         node runs"
    );
    Ok(ExitCode::SUCCESS)
}

fn reconfigure(args: &ReconfigureArgs) -> Result<ExitCode, JournalError> {
    let file = crate::serve::read_config(&args.config).map_err(JournalError::Refused)?;
    crate::serve::check_config(&file).map_err(JournalError::Refused)?;
    let engine = file.engine_config();
    let mut source = ReadOnlyDir::open(&args.dir)?;
    if !ringfence_journal::datadir::check(&mut source)?.holds_data() {
        return Err(JournalError::NoData { dir: args.dir.display().to_string() });
    }
    drop(source);
    // A refusal changes nothing: a node running and every carry-over `reconfigure` refuses
    // before it writes are refused before the lock file is made (or its pid rewritten).
    let unlocked = unlocked_unless_running(&args.dir)?;
    ringfence_journal::reconfigure::check(&unlocked, &engine)?;
    drop(unlocked);
    // Exclusive: a node appending to the journal would write into segments set aside here.
    let storage = FileStorage::open_exclusive(&args.dir)?;
    let done = ringfence_journal::reconfigure::reconfigure(&storage, &engine)?;
    if done.differences.is_empty() {
        outln!(
            "the journal is already written with these [engine] settings; nothing to carry over"
        );
    } else {
        outln!("settings   {}", done.differences);
    }
    if let Some(file) = &done.snapshot {
        outln!("snapshot   {file}: the state through sequence {}, in the new tables", done.through);
    }
    for file in &done.superseded {
        outln!("set aside  {file}");
    }
    if done.snapshot.is_some() {
        outln!(
            "the journal continues at sequence {} under the new settings; start the node with \
             {}. A standby of it starts on an empty data directory with the same [engine] and \
             fetches the snapshot. Delete the *.superseded files once the node runs",
            done.through.next(),
            args.config.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn backup(args: &BackupArgs) -> Result<ExitCode, JournalError> {
    let subdirectories = [crate::rollback::ROLLBACK_DIR];
    let mut bar = None;
    let mut progress = |done: u64, total: u64| {
        let bar = bar.get_or_insert_with(|| progress::records_bar(total, "records copied", false));
        bar.set_length(total);
        bar.set_position(done);
    };
    let copied = ringfence_journal::backup::backup_dir(
        &args.dir,
        &args.dest,
        &subdirectories,
        &mut progress,
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let dest = args.dest.display();
    if args.json {
        let value = json!({
            "dest": dest.to_string(), "first_sequence": copied.first.0,
            "last_sequence": copied.last.map(|s| s.0), "records": copied.records,
            "segments": copied.segments,
            "snapshots_through": copied.snapshots.iter().map(|s| s.0).collect::<Vec<_>>(),
            "bytes": copied.bytes, "left_out": copied.left_out.map(|s| s.0),
            "stopped_cleanly": copied.clean_stop,
            "damaged_snapshots": copied.damaged_snapshots,
        });
        outln!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let held = match copied.last {
        Some(last) => format!("{} (sequences {}..={last})", copied.records, copied.first),
        None => format!("none (the journal continues at sequence {})", copied.first),
    };
    outln!("backup     {dest}");
    outln!("records    {held}, in {} segments", copied.segments.len());
    let snapshots: Vec<_> = copied.snapshots.iter().map(ToString::to_string).collect();
    if snapshots.is_empty() {
        outln!("snapshots  none (the journal starts at sequence 1)");
    } else {
        outln!("snapshots  through {}", snapshots.join(", "));
    }
    for damaged in &copied.damaged_snapshots {
        outln!("left out   {damaged}");
    }
    outln!("copied     {} bytes, checked as recovery reads them", copied.bytes);
    if let Some(left_out) = copied.left_out {
        outln!(
            "left out   sequence {left_out}: not whole when read (the node was writing it, or a \
             crash cut it off, which a node clears on start)"
        );
    }
    if copied.clean_stop {
        outln!("note       the node had stopped cleanly here; the copy says so too");
    }
    outln!(
        "a node started on {dest} recovers this state. It is marked catching up: it lacks what \
         was acknowledged after the copy, so it never takes over from a standby on an in-sync \
         record"
    );
    Ok(ExitCode::SUCCESS)
}

fn heal(args: &HealArgs) -> Result<ExitCode, JournalError> {
    use ringfence_journal::heal::{Healed, Shown};
    let mut source = ReadOnlyDir::open(&args.dir)?;
    if !ringfence_journal::datadir::check(&mut source)?.holds_data() {
        return Err(JournalError::NoData { dir: args.dir.display().to_string() });
    }
    let mut peer = ReadOnlyDir::open(&args.from)?;
    let options = ringfence_journal::heal::HealOptions { end_at_copy: args.end_at_copy };
    // A refusal changes nothing: a node running and every heal `heal` refuses before its
    // first repair are refused before the lock file is made (or its pid rewritten).
    let unlocked = unlocked_unless_running(&args.dir)?;
    ringfence_journal::heal::check(&unlocked, &mut peer, options)?;
    drop(unlocked);
    // Exclusive: a node appending to the journal may be writing the segment healed here. The
    // heal checks again under the lock, from the start, and writes only what it shows there.
    let storage = FileStorage::open_exclusive(&args.dir)?;
    let healed = ringfence_journal::heal::heal_with(&storage, &mut peer, options)?;
    for span in &healed {
        let shown = match span.shown {
            Shown::ByCrc => "the copy's CRC32C matched the damaged record's".to_owned(),
            Shown::ByRest => "the copy matched all but the damaged CRC32C".to_owned(),
            Shown::ByNextRecord(next) => format!("record {next}, intact after it, matched"),
            Shown::CutShort { matched, next, .. } => {
                let after = next.map_or(String::new(), |m| format!(" and record {m} after them"));
                format!(
                    "the segment, cut short, is back at its listed length; record {matched} (the \
                     last left before them){after} matched the copy's"
                )
            }
        };
        outln!(
            "healed     sequence {} in {} at byte offset {} ({} bytes; {shown})",
            ringfence_journal::heal::span(span),
            span.file,
            span.offset,
            span.len
        );
    }
    // Taken, as asked, to end where the copy's records do: say what that assumed.
    let assumed: Vec<&Healed> = (healed.iter())
        .filter(|span| matches!(span.shown, Shown::CutShort { end_known: false, .. }))
        .collect();
    for span in &assumed {
        outln!(
            "note       the records lost with {} are taken to end at sequence {}, where the \
             copy's of this node's epoch do (--end-at-copy): a record this node held after it, \
             had it any, is not back",
            span.file,
            span.through
        );
    }
    let dropped = if assumed.is_empty() {
        "nothing was dropped"
    } else {
        "nothing this journal was shown to hold was dropped (see the note)"
    };
    outln!("copied from {}; {dropped}", args.from.display());
    Ok(ExitCode::SUCCESS)
}

/// The command the crash-test child writes at `sequence`: a pure function of the sequence, so
/// the parent can check every recovered record byte for byte.
#[must_use]
pub fn load_test_command(sequence: Sequence) -> Sequenced {
    let n = sequence.0;
    let command = if n % 97 == 0 {
        Command::Tick
    } else {
        Command::Client {
            key: ringfence_core::RequestKey::from_u128(u128::from(n)),
            action: ringfence_core::Action::Reserve(ringfence_core::Reserve {
                user: ringfence_core::UserId(1 + n % 1_000),
                sku: ringfence_core::SkuId(1 + n % 4),
                qty: 1 + (n % 3) as u32,
                coupon: (n % 5 == 0).then_some(ringfence_core::CouponId(n)),
            }),
        }
    };
    Sequenced { sequence, timestamp: Timestamp(1_000 + n), command }
}

fn load_test(args: &LoadTestArgs) -> Result<ExitCode, JournalError> {
    let options = WriterOptions {
        segment_len: args.segment_size,
        durability: args.durability,
        engine_config: ringfence_core::EngineConfig::small(),
    };
    let mut recovered = recover(&args.dir, options)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "recovered {}", recovered.next_sequence);
    let mut next = recovered.next_sequence;
    let stop = if args.records == 0 { u64::MAX } else { next.0 + args.records };
    while next.0 < stop {
        for _ in 0..args.batch.max(1) {
            recovered.writer.append_command(Epoch(1), &load_test_command(next))?;
            next = next.next();
        }
        let durable = recovered.writer.end_batch().map_err(stage)?;
        if writeln!(out, "durable {durable}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stage(error: ringfence_core::pipeline::StageError) -> JournalError {
    JournalError::Options(error.to_string())
}
