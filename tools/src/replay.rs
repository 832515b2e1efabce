//! `ringfence replay`: rebuild the engine's state at a sequence or a time from snapshot and
//! journal, print its state hash and a summary, and optionally export every outcome.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use ringfence_core::{Engine, EngineConfig, Epoch, Lookahead, Sequence, Sequenced, Timestamp};
use ringfence_ingress::http::views::{CommandJson, EventJson, Kinded, OutcomeJson, outcome_record};
use ringfence_journal::error::JournalError;
use ringfence_journal::scan::{self, ReadOnlyDir};
use ringfence_journal::snapshot::{self, SnapshotMeta};
use ringfence_journal::tail::{self, Tail};
use serde::Serialize;
use serde_json::json;

use crate::journal_cmd::{EXIT_TORN_TAIL, Opened, clean_stop_check, open, tail_in_progress};
use crate::json;
use crate::progress;
use crate::time::{format_ms, parse_rfc3339};

/// `writeln!` that ignores a closed output (standard output piped into `head`, say) instead
/// of panicking: the tools never panic on their environment.
macro_rules! outln {
    ($out:expr) => {{
        let _ = writeln!($out);
    }};
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Rebuild state from the newest usable snapshot plus the journal, up to a sequence or a time.
///
/// Prints the state digest (equal to a live node's `state_digest` at that point), the running
/// hash, per-SKU stock figures and the orders the engine keeps, by state (finished orders whose
/// slots were reused once the order table was full are forgotten and not counted). With
/// --export, every replayed command's outcome (and every expiry it caused) is written as one
/// JSON object per line, ready to load into a database (a retry answered with the outcome
/// first given says `"repeat": true`: it changed nothing): from the first command the retained
/// journal holds (starting from the snapshot taken just before it, if segments were
/// retired), or with --since-snapshot only what follows the newest snapshot, or with
/// --after-seq only what follows a sequence a consumer has already loaded.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The journal directory.
    pub dir: PathBuf,
    /// Stop after this sequence.
    #[arg(long, conflicts_with = "until_time")]
    pub until_seq: Option<u64>,
    /// Stop before the first command stamped after this RFC 3339 time (e.g. 2026-03-01T12:00:00Z).
    #[arg(long)]
    pub until_time: Option<String>,
    /// Write every outcome as JSON lines to this file; `-` for standard output (the summary
    /// then goes to standard error).
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Ignore snapshots and replay from sequence 1.
    #[arg(long, conflicts_with = "since_snapshot")]
    pub from_start: bool,
    /// Start from the newest snapshot, not from the start of the retained journal: with
    /// --export, only what follows that snapshot is exported (the default without --export).
    #[arg(long)]
    pub since_snapshot: bool,
    /// With --export, export only the outcomes after this sequence: where a consumer that has
    /// loaded everything through it picks up (the summary's `through_sequence` is where the
    /// next run picks up). Replays, without exporting, from the newest snapshot at or before
    /// it.
    #[arg(long, requires = "export", conflicts_with = "since_snapshot")]
    pub after_seq: Option<u64>,
    /// With --after-seq, the epoch of the last line the consumer loaded (each line carries
    /// its `epoch`; the summary's `through_epoch` is the next run's): refused if this
    /// journal's record at --after-seq is of another epoch. After a failover the new primary
    /// may hold other records than the old one from some sequence on; a sequence and an
    /// epoch name one record on every node.
    #[arg(long, requires = "after_seq")]
    pub after_epoch: Option<u64>,
    /// With --export, keep exporting as the journal grows, until SIGINT or SIGTERM: each
    /// record once it is complete and durable (the segments are synced before their outcomes
    /// are written, whatever the node's durability). Stops with an error, after the summary,
    /// if this journal is rewritten under it (records it exported replaced after a failover)
    /// or retention retires records it has not read.
    #[arg(long, requires = "export", conflicts_with_all = ["until_seq", "until_time"])]
    pub follow: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// How long `--follow` waits before looking for new records when it found none.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// How often `--follow`, finding no new records, checks that the last record it read is
/// still this journal's (a journal rewritten in place after a failover can look, from where
/// the follower stands, like a writer that went quiet) and reads as a reader that knows
/// nothing of the writer's position does (between, it looks only at that position).
const FOLLOW_CHECK: Duration = Duration::from_secs(5);

/// The most bytes of records `--follow` reads, syncs and exports at a time.
const FOLLOW_BATCH_BYTES: usize = 1 << 20;

struct Limits {
    until_seq: Sequence,
    until_time: Timestamp,
    /// The last sequence not exported (0: export everything replayed).
    export_after: Sequence,
}

/// What replay learned along the way, for the summary. SKUs and orders are not tallied here:
/// the engine lists them, snapshot or not.
#[derive(Default)]
struct Tally {
    replayed: u64,
    last_sequence: Option<Sequence>,
    /// The epoch of the last record replayed.
    last_epoch: Option<Epoch>,
    exported: u64,
}

/// Applies each record handed over, in order, tallies it and exports its outcome.
struct Applier {
    tally: Tally,
    export: Option<BufWriter<Box<dyn Write>>>,
    /// Outcomes up to this sequence are applied, not exported.
    export_after: Sequence,
    export_error: Option<std::io::Error>,
    /// The epochs of the records read and not yet applied, in order.
    epochs: VecDeque<Epoch>,
}

/// One line of an export: a journaled command, its outcome and the expiries it caused.
/// Fields in the order of their names, as the lines have always had them.
#[derive(Serialize)]
struct ExportLine {
    command: CommandJson,
    epoch: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<EventJson>,
    outcome: Kinded<OutcomeJson>,
    /// A retry answered with the outcome first given: it changed nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    repeat: bool,
    sequence: u64,
    timestamp_ms: u64,
}

impl Applier {
    fn apply(&mut self, engine: &mut Engine, command: &Sequenced) {
        let epoch = self.epochs.pop_front().expect("every record read has its epoch");
        let mut events = Vec::new();
        let (outcome, repeat) =
            engine.apply_telling_repeats(command, &mut |event| events.push(event));
        self.tally.replayed += 1;
        self.tally.last_sequence = Some(command.sequence);
        self.tally.last_epoch = Some(epoch);
        let exports = command.sequence > self.export_after && self.export_error.is_none();
        let Some(out) = self.export.as_mut().filter(|_| exports) else {
            return;
        };
        self.tally.exported += 1;
        let line = ExportLine {
            command: CommandJson::from(&command.command),
            epoch: epoch.0,
            events: events.iter().map(EventJson::from).collect(),
            outcome: outcome_record(&outcome),
            repeat,
            sequence: command.sequence.0,
            timestamp_ms: command.timestamp.0,
        };
        // Serialized straight into the buffer, from the API's typed views.
        let written = serde_json::to_writer(&mut *out, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(error) = written {
            self.export_error = Some(error);
        }
    }
}

/// Runs `ringfence replay`.
pub fn run(args: &ReplayArgs) -> ExitCode {
    match replay(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn replay(args: &ReplayArgs) -> Result<ExitCode, JournalError> {
    let limits = Limits {
        until_seq: Sequence(args.until_seq.unwrap_or(u64::MAX)),
        until_time: match &args.until_time {
            Some(text) => Timestamp(parse_rfc3339(text).map_err(JournalError::Options)?),
            None => Timestamp(u64::MAX),
        },
        export_after: Sequence(args.after_seq.unwrap_or(0)),
    };
    if let (Some(after), Some(until)) = (args.after_seq, args.until_seq)
        && until < after
    {
        let message =
            format!("--until-seq {until} is before --after-seq {after}: nothing to export");
        return Err(JournalError::Options(message));
    }
    let (opened, in_progress) = open_for_replay(args, &limits)?;
    let live = opened.live;
    let (mut source, layout) = (opened.source, opened.layout);
    if let Some(after) = args.after_seq.filter(|_| !args.follow) {
        // A follower waits for the records up to `after`; a single pass would end short of it.
        check_after_not_past_end(&source, &layout, Sequence(after))?;
    }
    let (mut engine, snapshot) = starting_point(args, &source, &layout, &limits)?;
    let start = snapshot.as_ref().map_or(Sequence(1), |meta| meta.through.next());
    if let (Some(after), Some(loaded)) = (args.after_seq, args.after_epoch) {
        check_after_epoch(&mut source, snapshot.as_ref(), Sequence(after), Epoch(loaded))?;
    }
    match layout.first_sequence() {
        Some(first) if first > start && layout.last_sequence().is_some_and(|l| l >= start) => {
            if let Some(until) = args.until_seq {
                refuse_until_before_the_earliest_state(&source, first, Sequence(until))?;
            }
            return Err(JournalError::MissingStart { first, needed: start });
        }
        _ => {}
    }
    let export: Option<BufWriter<Box<dyn Write>>> = match &args.export {
        Some(_) if exports_to_stdout(args) => Some(BufWriter::new(Box::new(std::io::stdout()))),
        Some(path) => Some(BufWriter::new(Box::new(
            File::create(path)
                .map_err(|e| JournalError::io(format!("creating {}", path.display()), e))?,
        ))),
        None => None,
    };
    // What a follower exports is durable, the records of the first pass included.
    let mut synced_through_segment = None;
    if let Some(last) = layout.last_sequence().filter(|last| args.follow && *last >= start) {
        make_durable(&args.dir, &source, start, last, &mut synced_through_segment)?;
    }
    let total = layout
        .last_sequence()
        .map_or(0, |last| last.0.min(limits.until_seq.0).saturating_sub(start.0 - 1));
    // The summary is printed after the bar is cleared, so the bar shares the terminal with
    // nothing.
    let progress = progress::records_bar(total, "commands replayed", false);
    let mut applier = Applier {
        tally: Tally::default(),
        export,
        export_after: limits.export_after,
        export_error: None,
        epochs: VecDeque::new(),
    };
    // As recovery replays: each record hinted as it is read, applied a few records later.
    let mut ahead = Lookahead::default();
    let read = scan::read_pipelined(&mut source, &layout, start, &mut |record| {
        if record.sequence > limits.until_seq || record.timestamp > limits.until_time {
            return ControlFlow::Break(());
        }
        applier.epochs.push_back(record.epoch);
        ahead.push(&mut engine, record.sequenced(), |engine, command| {
            applier.apply(engine, command);
        });
        if applier.tally.replayed % progress::UPDATE_EVERY == 0 {
            progress.set_position(applier.tally.replayed);
        }
        if applier.export_error.is_some() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    // Whatever ended the reading, every record read is applied.
    ahead.finish(&mut engine, |engine, command| applier.apply(engine, command));
    read?;
    progress.finish_and_clear();
    if args.follow {
        let synced = synced_through_segment;
        return follow(args, (engine, applier, synced), snapshot.as_ref(), start);
    }
    let Applier { tally, export, export_error, .. } = applier;
    if let Some(error) = export_error {
        return Err(JournalError::io("writing the export", error));
    }
    if let Some(mut out) = export {
        out.flush().map_err(|e| JournalError::io("writing the export", e))?;
    }
    print_summary(&mut summary_out(args), args, &engine, snapshot.as_ref(), &tally, start);
    // An export from the journal's first record starts after the oldest snapshot it can start
    // from: the records before it are read by no export, and the operator is told why.
    let first_held = layout.first_sequence().filter(|&first| first < start);
    if let Some(first) = first_held
        .filter(|_| args.export.is_some() && args.after_seq.is_none() && !args.since_snapshot)
    {
        eprintln!(
            "note: records {first}..={} are in the journal but not exported: their outcomes \
             need the state before {first}, which no snapshot this replay could start from \
             holds, so the export starts after the snapshot through {}",
            start.0 - 1,
            start.0 - 1
        );
    }
    let ends = layout.last_sequence().or(snapshot.as_ref().map(|meta| meta.through));
    if let (Some(until), Some(ends)) = (args.until_seq, ends)
        && until > ends.0
        && !in_progress
    {
        eprintln!(
            "note: the journal ends at sequence {ends}, before --until-seq {until}: replayed to \
             its end"
        );
    }
    let torn = layout
        .problem
        .as_ref()
        .is_some_and(|p| (p.torn_tail || in_progress) && p.sequence <= limits.until_seq);
    match (torn, live.filter(|_| in_progress)) {
        (true, Some(holder)) => eprintln!(
            "note: live directory: node {holder} is writing; last record in progress (replayed \
             up to the last intact record)"
        ),
        (true, None) => {
            eprintln!("warning: the journal ends in a torn tail; replayed up to it");
            return Ok(ExitCode::from(EXIT_TORN_TAIL));
        }
        (false, _) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `--follow`: after the first pass, applies and exports each record the journal's writer
/// completes, until a signal stops it (exit 0) or something it cannot follow does (exit 1);
/// either way the summary says where the export got to.
fn follow(
    args: &ReplayArgs,
    (mut engine, mut applier, mut synced): (Engine, Applier, Option<String>),
    snapshot: Option<&SnapshotMeta>,
    start: Sequence,
) -> Result<ExitCode, JournalError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| JournalError::io("installing the signal handlers", e))?;
    }
    let next = applier.tally.last_sequence.map_or(start, Sequence::next);
    let mut tail = Tail::open(ReadOnlyDir::open(&args.dir)?, next)?;
    let mut looks = ReadOnlyDir::open(&args.dir)?;
    let reading = (&mut tail, &mut looks, &mut synced);
    let ended = follow_records(args, &mut engine, &mut applier, reading, &stop);
    let Applier { tally, export, export_error, .. } = applier;
    let flushed = export.map_or(Ok(()), |mut out| out.flush());
    print_summary(&mut summary_out(args), args, &engine, snapshot, &tally, start);
    ended?;
    if let Some(error) = export_error.or(flushed.err()) {
        return Err(JournalError::io("writing the export", error));
    }
    Ok(ExitCode::SUCCESS)
}

/// The loop of [`follow`]: reads what the writer completed, makes it durable, applies and
/// exports it, and flushes the export; waits when there is nothing new.
fn follow_records(
    args: &ReplayArgs,
    engine: &mut Engine,
    applier: &mut Applier,
    (tail, looks, synced): (&mut Tail<ReadOnlyDir>, &mut ReadOnlyDir, &mut Option<String>),
    stop: &AtomicBool,
) -> Result<(), JournalError> {
    // The first pass's lines go out before the first wait (or its write error is said now:
    // an idle journal would otherwise keep it unsaid).
    flush_export(applier)?;
    let mut bytes = Vec::with_capacity(FOLLOW_BATCH_BYTES);
    let mut checked = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Between checks, one look at where the writer appends says whether to read.
        if checked.elapsed() < FOLLOW_CHECK && tail.at_writers_position() {
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        bytes.clear();
        let from = tail.next();
        let count = match tail.read_written(&mut bytes, FOLLOW_BATCH_BYTES) {
            Ok(count) => count,
            Err(JournalError::Retired { first, .. }) => return Err(fell_behind(applier, first)),
            // Records that are not where the follower left them: a rewrite says more than the
            // damage it looks like from where the follower stands.
            Err(error) => {
                still_this_journal(looks, applier, None)?;
                return Err(error);
            }
        };
        if count == 0 {
            if checked.elapsed() >= FOLLOW_CHECK {
                // Everything read is applied: the tail's last record is the last exported.
                let last = applier.tally.last_sequence;
                assert!(last.is_none_or(|last| last.next() == tail.next()), "read, not applied");
                still_this_journal(looks, applier, tail.last_place())?;
                // Bytes that have not become a record for a whole check: damage, if intact
                // records follow them, not a record being written.
                if tail.written_at_next() {
                    damage_in_last_segment(looks, tail.next())?;
                }
                checked = Instant::now();
            }
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        let through = Sequence(tail.next().0 - 1);
        make_durable(&args.dir, looks, from, through, synced)?;
        let mut rest = bytes.as_slice();
        for sequence in from.0..=through.0 {
            let (header, command, len) = ringfence_core::record::decode(rest).map_err(|e| {
                let dir = args.dir.display();
                JournalError::Options(format!("record {sequence} of {dir} does not decode: {e:?}"))
            })?;
            rest = &rest[len..];
            if !command.command.is_mutating() {
                return Err(JournalError::Options(format!(
                    "record {} holds a read, which no journal holds",
                    header.sequence
                )));
            }
            // A new epoch is a failover or a primary's new run; the records before it must
            // still be the ones exported, or the journal was rewritten where it changed.
            if applier.tally.last_epoch.is_some_and(|last| header.epoch > last) {
                still_this_journal(looks, applier, None)?;
            }
            applier.epochs.push_back(header.epoch);
            applier.apply(engine, &command);
        }
        assert!(rest.is_empty(), "records read but not applied");
        flush_export(applier)?;
        checked = Instant::now();
    }
    Ok(())
}

/// Scans the journal's last segment, and fails with the corruption it finds at record `next`:
/// damage with intact records after it. A torn tail (a record a writer left half written as
/// it died) is not corruption: the node's next start clears it.
fn damage_in_last_segment(looks: &mut ReadOnlyDir, next: Sequence) -> Result<(), JournalError> {
    use scan::ReadSource as _;
    let mut names = scan::sorted_segments(looks)?;
    let last = names.split_off(names.len().saturating_sub(1));
    let layout = scan::scan_segments(looks, &last)?;
    match layout.corruption(&|name| looks.describe_file(name)) {
        Some(corruption @ JournalError::Corrupt { sequence, .. }) if sequence == next => {
            Err(corruption)
        }
        _ => Ok(()),
    }
}

/// Hands the lines exported so far to the output, or says why writing them failed.
fn flush_export(applier: &mut Applier) -> Result<(), JournalError> {
    if let Some(error) = applier.export_error.take() {
        return Err(JournalError::io("writing the export", error));
    }
    if let Some(out) = applier.export.as_mut() {
        out.flush().map_err(|e| JournalError::io("writing the export", e))?;
    }
    Ok(())
}

/// Refuses to go on unless the last record exported is still this journal's, with the epoch
/// it had: a rewrite after a failover replaces records from some sequence on. `place`, where
/// that record was read, is looked at first: it still holds the record in all but a rewrite,
/// and one record read there spares a walk through its segment.
fn still_this_journal(
    looks: &mut ReadOnlyDir,
    applier: &Applier,
    place: Option<(&str, usize)>,
) -> Result<(), JournalError> {
    let (Some(last), Some(epoch)) = (applier.tally.last_sequence, applier.tally.last_epoch) else {
        return Ok(());
    };
    if let Some((name, offset)) = place
        && tail::epoch_at_place(looks, name, offset, last)? == Some(epoch)
    {
        return Ok(());
    }
    let now = match tail::epoch_at(looks, last)? {
        Some(held) if held == epoch => return Ok(()),
        Some(held) => format!("is now of epoch {held}"),
        None => {
            let first = scan::sorted_segments(looks)?.first().map(|(first, _)| *first);
            if let Some(first) = first.filter(|first| *first > last) {
                return Err(fell_behind(applier, first));
            }
            "is no longer in it".to_owned()
        }
    };
    Err(JournalError::Options(format!(
        "record {last} of this journal, exported as of epoch {epoch}, {now}: the journal was \
         rewritten under the export (after a failover, the records a primary wrote but never \
         replicated are replaced by the new primary's; after `journal truncate`, the records \
         dropped by the next run's). Run again with --after-seq {last} \
         --after-epoch {epoch}: it says whether the outcomes exported are this journal's"
    )))
}

/// The refusal of a follower that retention overtook: the journal now starts at `first`,
/// after records it had not read.
fn fell_behind(applier: &Applier, first: Sequence) -> JournalError {
    let last = applier.tally.last_sequence.map_or(0, |last| last.0);
    let epoch = applier.tally.last_epoch.map_or(String::new(), |e| format!(" --after-epoch {e}"));
    JournalError::Options(format!(
        "the journal now holds sequences from {first} on: the segments after record {last}, \
         the last exported, were retired after a snapshot before the follower read them. Run \
         again with --after-seq {last}{epoch}: it replays from a snapshot kept, or names the \
         earliest sequence it can export after"
    ))
}

/// Syncs the segments that hold records `from..=through` (and the directory, when they reach
/// a segment not synced before), so that what is exported survives a power loss whatever the
/// node's durability: what a downstream system loaded is then never replaced by other
/// records in the same epoch.
fn make_durable(
    dir: &Path,
    source: &ReadOnlyDir,
    from: Sequence,
    through: Sequence,
    synced_through_segment: &mut Option<String>,
) -> Result<(), JournalError> {
    let segments = scan::sorted_segments(source)?;
    let holding = |index: usize| {
        let (first, _) = segments[index];
        let ends_before = segments.get(index + 1).map(|(next, _)| *next);
        first <= through && ends_before.is_none_or(|next| next > from)
    };
    let mut last_synced = None;
    for (_, name) in (0..segments.len()).filter(|&index| holding(index)).map(|i| &segments[i]) {
        let path = dir.join(name);
        File::open(&path)
            .and_then(|file| file.sync_data())
            .map_err(|e| JournalError::io(format!("syncing {}", path.display()), e))?;
        last_synced = Some(name);
    }
    if let Some(name) = last_synced
        && synced_through_segment.as_deref() != Some(name.as_str())
    {
        File::open(dir)
            .and_then(|file| file.sync_all())
            .map_err(|e| JournalError::io(format!("syncing {}", dir.display()), e))?;
        *synced_through_segment = Some(name.clone());
    }
    Ok(())
}

/// Opens the journal and refuses what replay must not read past: corruption within the range,
/// or a directory that is not what its manifest says (a missing or cut segment: replaying what
/// is left would present a history with records silently missing). Also says whether the
/// journal's end is a live node's record in progress.
fn open_for_replay(args: &ReplayArgs, limits: &Limits) -> Result<(Opened, bool), JournalError> {
    let mut opened = open(&args.dir)?;
    let in_progress = tail_in_progress(&opened);
    let corrupt_in_range = !in_progress
        && opened
            .layout
            .problem
            .as_ref()
            .is_some_and(|p| !p.torn_tail && p.sequence <= limits.until_seq);
    if corrupt_in_range {
        let describe = |name: &str| args.dir.join(name).display().to_string();
        if let Some(error) = opened.layout.corruption(&describe) {
            return Err(error);
        }
    }
    if !opened.check.problems.is_empty() {
        return Err(opened.check.problems.remove(0));
    }
    // After a clean stop, a journal that no longer ends where it did is damaged, not torn.
    clean_stop_check(&opened, limits.until_seq)?;
    Ok((opened, in_progress))
}

/// Where replay starts, and the engine restored there: the newest snapshot within the limits
/// (or none); for an export (without --since-snapshot) the start of the retained journal.
fn starting_point(
    args: &ReplayArgs,
    source: &ReadOnlyDir,
    layout: &scan::Layout,
    limits: &Limits,
) -> Result<(Engine, Option<SnapshotMeta>), JournalError> {
    let config =
        layout.segments.first().map_or_else(EngineConfig::default, |s| s.header.config.clone());
    // The capacities are the journal's, recorded by the node that wrote it.
    let remedy = "Replay on a machine with more memory: the capacities are those the journal \
                  was written with";
    crate::memory::check_available(&config, 1, remedy).map_err(|refusal| JournalError::Io {
        context: "building the engine to replay into".into(),
        source: std::io::Error::new(std::io::ErrorKind::OutOfMemory, refusal),
    })?;
    if args.from_start {
        return Ok((Engine::new(config), None));
    }
    // A snapshot past the export's start would skip outcomes to export.
    let usable = |through: Sequence| {
        through <= limits.until_seq
            && layout.last_sequence().is_none_or(|l| through <= l)
            && (args.after_seq.is_none() || through <= limits.export_after)
    };
    let mut snapshots = snapshot::list(source)?;
    // Where the retained journal starts: its first record, or, holding none yet, where its
    // first segment starts (a journal rebuilt after a snapshot, a standby's that installed
    // its primary's): the records before are gone either way.
    let first_held = layout
        .first_sequence()
        .or_else(|| layout.segments.first().map(|segment| segment.header.first_sequence));
    if let (Some(after), Some(first)) = (args.after_seq, first_held) {
        // The state after `after`: from the start, or a snapshot the retained journal follows.
        let earliest = if first == Sequence(1) {
            Some(Sequence(0))
        } else {
            snapshots.iter().map(|(through, _)| *through).filter(|t| t.next() >= first).min()
        };
        if earliest.is_none_or(|earliest| Sequence(after) < earliest) {
            let retired = format!(
                "the journal holds sequences from {first} on (the segments before were retired \
                 after a snapshot)"
            );
            let message = match earliest {
                Some(earliest) => format!(
                    "an export after sequence {after} needs the state at {after}, but this \
                     directory rebuilds the state only from sequence {earliest} on: {retired}. \
                     Export the outcomes up to {earliest} from a copy that still holds those \
                     segments, or pass --after-seq {earliest} to export from {}",
                    earliest.next()
                ),
                None => format!(
                    "an export after sequence {after} needs the state at {after}, but {retired} \
                     and no snapshot it follows on from is kept"
                ),
            };
            return Err(JournalError::Options(message));
        }
    }
    snapshots.retain(|(through, _)| usable(*through));
    match (layout.first_sequence(), first_held) {
        // Export after a sequence: the newest snapshot up to it (`usable`) that the retained
        // journal follows on from (the records between an older one and the first are gone).
        (_, Some(first)) if args.after_seq.is_some() => {
            snapshots.retain(|(through, _)| through.next() >= first);
            snapshots.reverse();
        }
        // Export from the retained journal's first record: from sequence 1 no snapshot is
        // needed, and one from before the first record is no start (the records between
        // are gone), so the oldest one after it is the earliest start there is.
        (Some(first), _) if args.export.is_some() && !args.since_snapshot => {
            if first == Sequence(1) {
                return Ok((Engine::new(config), None));
            }
            snapshots.retain(|(through, _)| through.next() >= first);
        }
        _ => snapshots.reverse(),
    }
    for (_, name) in snapshots {
        match snapshot::load(source, &name, None) {
            Ok((engine, meta)) if meta.now <= limits.until_time => {
                return Ok((engine, Some(meta)));
            }
            Ok(_) => {}
            Err(error) => eprintln!("warning: {error}"),
        }
    }
    Ok((Engine::new(config), None))
}

/// Refuses an `--until-seq` before the earliest state this directory rebuilds, where its
/// journal holds records from `first` on: that state is the oldest snapshot the journal follows
/// on from. (A snapshot older than that is kept, but the records after it are gone.)
fn refuse_until_before_the_earliest_state(
    source: &ReadOnlyDir,
    first: Sequence,
    until: Sequence,
) -> Result<(), JournalError> {
    assert!(first.0 > 1, "a journal from sequence 1 replays to any sequence");
    let snapshots = snapshot::list(source)?;
    let Some(earliest) =
        snapshots.iter().map(|(through, _)| *through).filter(|t| t.next() >= first).min()
    else {
        return Ok(());
    };
    if until >= earliest {
        return Ok(());
    }
    Err(JournalError::Options(format!(
        "--until-seq {until} is before the earliest state this directory rebuilds: its journal \
         holds sequences from {first} on (the records before were retired after a snapshot or \
         set aside by a rebuild), so the earliest sequence it replays to is {earliest}, from \
         {}; to replay to {until}, restore the missing segments (from an archive, or \
         a copy that still holds them)",
        snapshot::snapshot_name(earliest)
    )))
}

/// Refuses an export after record `after` unless this journal's record `after` is of epoch
/// `loaded`, the epoch of the consumer's copy: then both name the same record, and the same
/// history up to it. The record is read from the journal, or from the snapshot taken just
/// after it when the journal no longer holds it.
fn check_after_epoch(
    source: &mut ReadOnlyDir,
    snapshot: Option<&SnapshotMeta>,
    after: Sequence,
    loaded: Epoch,
) -> Result<(), JournalError> {
    if after.0 == 0 {
        // Nothing loaded yet: there is no record to agree on.
        return Ok(());
    }
    let held = match tail::epoch_at(source, after)? {
        Some(epoch) => Some(epoch),
        None => snapshot.filter(|meta| meta.through == after).and_then(|meta| meta.through_epoch),
    };
    match held {
        Some(epoch) if epoch == loaded => Ok(()),
        Some(epoch) => Err(JournalError::Options(format!(
            "record {after} here is of epoch {epoch}, but the consumer's copy is of epoch \
             {loaded}: the two histories differ (after a failover, the records a primary wrote \
             but never replicated are replaced by the new primary's; after `journal truncate`, \
             the records dropped by the next run's). Outcomes the consumer \
             loaded from this record back to where the histories agree are not this journal's; \
             export again after an earlier sequence whose epoch both agree on"
        ))),
        None => Err(JournalError::Options(format!(
            "record {after} is not in this journal and no snapshot kept was taken just after \
             it, so its epoch cannot be checked against {loaded}: run again on a copy that \
             holds it, or export again after an earlier sequence whose epoch this journal holds"
        ))),
    }
}

/// Refuses `--after-seq` past the journal's end. A consumer that loaded records this journal
/// does not hold got them from a copy ahead of this one, or from a history since cut short
/// (`journal truncate`, a point-in-time restore), whose records after the cut the next run
/// writes again under the same sequences: an export that ended quietly with a
/// `through_sequence` below `after` would leave the consumer to resume from the wrong place.
fn check_after_not_past_end(
    source: &ReadOnlyDir,
    layout: &scan::Layout,
    after: Sequence,
) -> Result<(), JournalError> {
    let newest_snapshot = snapshot::list(source)?.last().map(|(through, _)| *through);
    // The last record, or just before an empty newest segment (rebuilt after a snapshot).
    let ends = (layout.segments.last().map(scan::SegmentLayout::ends_at))
        .or(newest_snapshot)
        .unwrap_or(Sequence(0));
    if after <= ends {
        return Ok(());
    }
    let epoch = layout.last_epoch().map_or(String::new(), |epoch| format!(" of epoch {epoch}"));
    Err(JournalError::Options(format!(
        "--after-seq {after} is past the end of this journal, which ends at sequence {ends}{epoch}: \
         the consumer holds records this journal does not. If they came from a copy ahead of \
         this one, export from that copy (the primary's) or once this one has caught up; if \
         this journal was cut short since (`journal truncate`, a point-in-time restore), the \
         consumer's records after the cut are not this history: remove them and export again \
         with --after-seq at most {ends} and --after-epoch the epoch the consumer holds there"
    )))
}

/// Whether the export goes to standard output (`--export -`), leaving the summary to standard
/// error.
fn exports_to_stdout(args: &ReplayArgs) -> bool {
    args.export.as_deref().is_some_and(|path| path.as_os_str() == "-")
}

/// Where the summary goes: standard output, unless that holds the export's lines.
fn summary_out(args: &ReplayArgs) -> Box<dyn Write> {
    if exports_to_stdout(args) {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    }
}

fn print_summary(
    out: &mut dyn Write,
    args: &ReplayArgs,
    engine: &Engine,
    snapshot: Option<&SnapshotMeta>,
    tally: &Tally,
    start: Sequence,
) {
    let status = engine.status();
    let mut views: Vec<_> = engine.sku_views().collect();
    views.sort_unstable_by_key(|view| view.sku);
    let by_state = engine.order_counts();
    let last = tally.last_sequence.unwrap_or(Sequence(start.0 - 1));
    if args.json {
        let value = json!({
            "state_digest": format!("{:016x}", engine.state_digest()),
            "running_hash": format!("{:016x}", engine.running_hash()),
            "through_sequence": last.0,
            "through_epoch": tally.last_epoch.or(snapshot.and_then(|m| m.through_epoch)).map(|e| e.0),
            "last_mutating_sequence": status.last_sequence.0,
            "now_ms": status.now.0, "snapshot": snapshot.map(|m| m.file.display().to_string()),
            "replayed": tally.replayed, "replayed_from": start.0,
            "exported": args.export.as_ref().map(|_| tally.exported),
            "skus": views.iter().map(json::sku).collect::<Vec<_>>(),
            "orders_kept": status.orders, "orders_reserved": status.orders_reserved,
            "orders_max": engine.config().orders_max,
            "orders_by_state": by_state.iter().map(|(s, n)| (s.name().to_owned(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
        });
        outln!(out, "{value}");
        return;
    }
    match snapshot {
        Some(meta) => {
            outln!(out, "snapshot      {} (through {})", meta.file.display(), meta.through)
        }
        None => outln!(out, "snapshot      none (replayed from sequence 1)"),
    }
    match (tally.replayed, snapshot) {
        (0, Some(_)) => outln!(out, "replayed      nothing: the state is the snapshot's"),
        (0, None) => outln!(out, "replayed      nothing"),
        (replayed, _) => outln!(out, "replayed      {replayed} commands ({start}..={last})"),
    }
    if args.export.is_some() {
        let first = start.max(Sequence(args.after_seq.unwrap_or(0) + 1));
        match tally.exported {
            0 => outln!(out, "exported      nothing"),
            exported => outln!(out, "exported      {exported} outcomes ({first}..={last})"),
        }
    }
    outln!(out, "state at      sequence {last}, time {}", format_ms(status.now.0));
    outln!(out, "state digest  {:016x}", engine.state_digest());
    outln!(out, "running hash  {:016x}", engine.running_hash());
    outln!(out);
    // As wide as the longest SKU id (the quick start's are 19 digits), and at least 10.
    let sku_width = views.iter().map(|view| view.sku.to_string().len()).max().unwrap_or(0).max(10);
    outln!(
        out,
        "{:>sku_width$} {:>12} {:>12} {:>12} {:>12}",
        "sku",
        "stock",
        "available",
        "reserved",
        "sold"
    );
    for view in &views {
        outln!(
            out,
            "{:>sku_width$} {:>12} {:>12} {:>12} {:>12}",
            view.sku,
            view.stock,
            view.available,
            view.reserved,
            view.sold
        );
    }
    outln!(out);
    outln!(
        out,
        "orders kept {} (reserved, awaiting payment: {})",
        status.orders,
        status.orders_reserved
    );
    outln!(
        out,
        "orders by state (every order kept; past orders_max = {}, the oldest finished orders \
         are forgotten):",
        engine.config().orders_max
    );
    for (state, count) in by_state {
        outln!(out, "  {:<10} {count}", state.name());
    }
}
