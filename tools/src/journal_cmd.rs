//! `ringfence journal verify|dump|stats|truncate`: inspect and repair a journal directory.
//!
//! The tools map segments read-only and never change a journal, except `truncate`, which is
//! the operator's explicit repair. Exit status: 0 when everything is intact, 1 on corruption
//! or any error, 3 when the only problem is a torn tail (which a node truncates on start).

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ringfence_core::{Command, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::error::JournalError;
use ringfence_journal::recovery::{self, recover};
use ringfence_journal::scan::{self, Layout, ReadOnlyDir, Record};
use ringfence_journal::snapshot;
use ringfence_journal::storage::FileStorage;
use ringfence_journal::writer::{Durability, WriterOptions};
use serde_json::json;

use crate::json;
use crate::time::format_ms;

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

/// Inspect or repair a journal directory (segments `*.seg` and snapshots `*.snap`).
#[derive(Subcommand, Debug)]
pub enum JournalCommand {
    /// Check every segment header, record (length, CRC32C, sequence, epoch, payload) and
    /// snapshot; print counts, first/last sequence, epochs and sizes. Exits 0 if intact,
    /// 3 if the only problem is a torn tail (a node truncates it on start), 1 on corruption,
    /// naming the file, byte offset and sequence.
    Verify(DirArgs),
    /// Print one line per command: sequence, time, epoch, kind and fields (or JSON lines).
    Dump(DumpArgs),
    /// Per-segment sizes, sequence and time ranges, and commands by kind.
    Stats(DirArgs),
    /// Repair: drop record --at-seq N and everything after it (even past damage), and set
    /// aside snapshots that include dropped records. The only tool that writes. Stop the node
    /// first; what is dropped is lost unless the standby or a backup has it.
    Truncate(TruncateArgs),
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
    #[arg(long = "at-seq")]
    pub at_seq: u64,
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
        JournalCommand::LoadTest(args) => load_test(&args),
    };
    result.unwrap_or_else(|error| {
        eprintln!("error: {error}");
        ExitCode::FAILURE
    })
}

/// Opens and scans a journal read-only.
pub fn open(dir: &Path) -> Result<(ReadOnlyDir, Layout), JournalError> {
    let mut source = ReadOnlyDir::open(dir)?;
    let layout = scan::scan(&mut source)?;
    Ok((source, layout))
}

/// The text naming a journal's problem, and whether it is only a torn tail.
fn describe_problem(source: &ReadOnlyDir, layout: &Layout) -> Option<(String, bool)> {
    let problem = layout.problem.as_ref()?;
    if let Some(error) = layout.corruption(&|name| source.dir().join(name).display().to_string()) {
        return Some((error.to_string(), false));
    }
    let text = format!(
        "torn tail: {} at byte offset {} (sequence {}): {}; a node truncates it on start \
         (the record was never acknowledged)",
        source.dir().join(&problem.name).display(),
        problem.offset,
        problem.sequence,
        problem.damage
    );
    Some((text, true))
}

fn epoch_ranges(records: &mut Vec<(Epoch, Sequence, Sequence)>, record: &Record) {
    match records.last_mut() {
        Some((epoch, _, last)) if *epoch == record.epoch => *last = record.sequence,
        _ => records.push((record.epoch, record.sequence, record.sequence)),
    }
}

fn verify(args: &DirArgs) -> Result<ExitCode, JournalError> {
    let (mut source, layout) = open(&args.dir)?;
    let mut epochs = Vec::new();
    let read = scan::read(&mut source, &layout, Sequence(1), &mut |record| {
        epoch_ranges(&mut epochs, record);
        ControlFlow::Continue(())
    });
    let mut problem = describe_problem(&source, &layout);
    if let Err(error) = read {
        problem = Some((error.to_string(), false));
    }
    let snapshots = snapshot::list(&source)?;
    let mut snapshot_lines = Vec::new();
    let mut bad_snapshot = false;
    for (through, name) in &snapshots {
        let file = args.dir.join(name);
        match snapshot::load(&source, name, None) {
            Ok((_, meta)) => snapshot_lines.push(json!({
                "file": file.display().to_string(), "through": through.0, "ok": true,
                "state_digest": format!("{:016x}", meta.state_digest), "bytes": meta.bytes,
            })),
            Err(error) => {
                bad_snapshot = true;
                snapshot_lines.push(json!({
                    "file": file.display().to_string(), "through": through.0, "ok": false,
                    "error": error.to_string(),
                }));
            }
        }
    }
    let size: u64 = layout.segments.iter().map(|s| s.header.segment_len).sum();
    let used: u64 = layout.segments.iter().map(|s| s.end as u64).sum();
    let (status, code) = match (&problem, bad_snapshot) {
        (None, false) => ("ok", ExitCode::SUCCESS),
        (Some((_, true)), false) => ("torn_tail", ExitCode::from(EXIT_TORN_TAIL)),
        (None, true) => ("bad_snapshot", ExitCode::FAILURE),
        _ => ("corrupt", ExitCode::FAILURE),
    };
    if args.json {
        let value = json!({
            "dir": args.dir.display().to_string(), "status": status,
            "problem": problem.as_ref().map(|(text, _)| text.clone()),
            "segments": layout.segments.len(), "records": layout.records(),
            "first_sequence": layout.first_sequence().map(|s| s.0),
            "last_sequence": layout.last_sequence().map(|s| s.0),
            "epochs": epochs.iter().map(|(e, a, b)| json!({"epoch": e.0, "first": a.0, "last": b.0}))
                .collect::<Vec<_>>(),
            "bytes_on_disk": size, "bytes_used": used, "snapshots": snapshot_lines,
        });
        outln!("{value}");
        return Ok(code);
    }
    outln!("journal    {}", args.dir.display());
    outln!("segments   {} ({} bytes on disk, {} used)", layout.segments.len(), size, used);
    match (layout.first_sequence(), layout.last_sequence()) {
        (Some(first), Some(last)) => {
            outln!("records    {} (sequences {first}..={last})", layout.records());
        }
        _ => outln!("records    0"),
    }
    for (epoch, first, last) in &epochs {
        outln!("epoch      {epoch}: sequences {first}..={last}");
    }
    for line in &snapshot_lines {
        match line["ok"].as_bool() {
            Some(true) => outln!(
                "snapshot   {} through {} digest {}",
                line["file"].as_str().unwrap_or_default(),
                line["through"],
                line["state_digest"].as_str().unwrap_or_default()
            ),
            _ => outln!("snapshot   INVALID {}", line["error"].as_str().unwrap_or_default()),
        }
    }
    match &problem {
        None if !bad_snapshot => outln!("status     ok: every record and snapshot is intact"),
        None => outln!("status     a snapshot is invalid (recovery skips it)"),
        Some((text, true)) => outln!("status     {text}"),
        Some((text, false)) => {
            outln!("status     CORRUPT");
            eprintln!("error: {text}");
        }
    }
    Ok(code)
}

fn dump(args: &DumpArgs) -> Result<ExitCode, JournalError> {
    let (mut source, layout) = open(&args.dir)?;
    let from = Sequence(args.from.unwrap_or(1));
    let to = Sequence(args.to.unwrap_or(u64::MAX));
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut write_error = None;
    scan::read(&mut source, &layout, from, &mut |record| {
        if record.sequence > to {
            return ControlFlow::Break(());
        }
        let written = if args.json {
            let value = json!({
                "sequence": record.sequence.0, "timestamp_ms": record.timestamp.0,
                "epoch": record.epoch.0, "command": json::command(&record.command),
            });
            writeln!(out, "{value}")
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
    if let Some(error) = write_error.filter(|e| e.kind() != io::ErrorKind::BrokenPipe) {
        return Err(JournalError::io("writing to standard output", error));
    }
    let _ = out.flush();
    drop(out);
    Ok(report_problem(&source, &layout, to))
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

/// After reading up to `to`: reports damage that lies within the range read.
fn report_problem(source: &ReadOnlyDir, layout: &Layout, to: Sequence) -> ExitCode {
    let Some(problem) = layout.problem.as_ref().filter(|p| p.sequence <= to) else {
        return ExitCode::SUCCESS;
    };
    let Some((text, torn)) = describe_problem(source, layout) else { return ExitCode::SUCCESS };
    eprintln!("{}: {text}", if torn { "warning" } else { "error" });
    let _ = problem;
    if torn { ExitCode::from(EXIT_TORN_TAIL) } else { ExitCode::FAILURE }
}

fn stats(args: &DirArgs) -> Result<ExitCode, JournalError> {
    let (mut source, layout) = open(&args.dir)?;
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut bytes_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    scan::read(&mut source, &layout, Sequence(1), &mut |record| {
        let kind = json::command_kind(&record.command);
        *kinds.entry(kind).or_default() += 1;
        *bytes_by_kind.entry(kind).or_default() += u64::from(record.len);
        ControlFlow::Continue(())
    })?;
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
    let time_range = time_span(&layout);
    if args.json {
        let value = json!({
            "dir": args.dir.display().to_string(), "records": records, "bytes_used": used,
            "segments": segments, "commands_by_kind": kinds,
            "first_time_ms": time_range.map(|t| t.0.0), "last_time_ms": time_range.map(|t| t.1.0),
        });
        outln!("{value}");
    } else {
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
            let range = s.time_range.map_or_else(String::new, |(a, b)| {
                format!("{} .. {}", format_ms(a.0), format_ms(b.0))
            });
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
        if let Some((first, last)) = time_range {
            let seconds = (last.0.saturating_sub(first.0)) as f64 / 1e3;
            outln!(
                "time    {} .. {} ({seconds:.1} s of commands)",
                format_ms(first.0),
                format_ms(last.0)
            );
        }
        outln!("{:<22} {:>12} {:>8} {:>10}", "command", "count", "share", "avg bytes");
        for (kind, count) in &kinds {
            let avg = bytes_by_kind[kind] as f64 / *count as f64;
            outln!(
                "{kind:<22} {count:>12} {:>7.1}% {avg:>10.1}",
                100.0 * *count as f64 / records.max(1) as f64
            );
        }
    }
    Ok(report_problem(&source, &layout, Sequence(u64::MAX)))
}

fn time_span(layout: &Layout) -> Option<(Timestamp, Timestamp)> {
    let first = layout.segments.iter().find_map(|s| s.time_range.map(|t| t.0))?;
    let last = layout.segments.iter().rev().find_map(|s| s.time_range.map(|t| t.1))?;
    Some((first, last))
}

fn truncate(args: &TruncateArgs) -> Result<ExitCode, JournalError> {
    if args.at_seq == 0 {
        return Err(JournalError::Options("--at-seq must be at least 1".to_owned()));
    }
    ReadOnlyDir::open(&args.dir)?;
    // Exclusive: truncating a journal a node is appending to would cut it under the node.
    let storage = FileStorage::open_exclusive(&args.dir)?;
    let truncation = recovery::truncate(&storage, Sequence(args.at_seq))?;
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
    outln!("journal now ends before sequence {}", args.at_seq);
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
    use ringfence_core::pipeline::Journal;
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
            recovered.writer.append(Epoch(1), &load_test_command(next)).map_err(stage)?;
            next = next.next();
        }
        let durable = recovered.writer.flush().map_err(stage)?;
        if writeln!(out, "durable {durable}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stage(error: ringfence_core::pipeline::StageError) -> JournalError {
    JournalError::Options(error.to_string())
}
