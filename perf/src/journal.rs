//! The journal append benchmark: records/s and MB/s for each durability policy and batch size,
//! on preallocated memory-mapped segments in the system temp directory.
//!
//! Baselines in the same run: the in-memory `MemoryJournal` (a `Vec` push per record) and the
//! framing alone (the canonical encoding into a reused record buffer, plus CRC32C), which bound
//! what the mmap writer can reach. Every variant frames each record once, as the journaling
//! stage does. Each histogram entry is one batch (appends plus the end-of-batch flush).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringfence_core::pipeline::{Framed, Journal, MemoryJournal, SystemClock};
use ringfence_core::record::RecordBuf;
use ringfence_core::{Engine, EngineConfig, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::recovery::recover_from;
use ringfence_journal::spare::DISK_CHECK_EVERY;
use ringfence_journal::storage::FileStorage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, JournalWriter, WriterOptions};

use crate::report::{Ratios, Report, Row, latency_histogram};
use crate::{Common, Size};

/// A directory under the system temp dir, removed on drop.
pub struct BenchDir(pub PathBuf);

impl BenchDir {
    pub fn new(tag: &str) -> BenchDir {
        let path =
            std::env::temp_dir().join(format!("ringfence-perf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create benchmark directory");
        BenchDir(path)
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Realistic commands: the flash-sale mix, generated against a live engine.
pub fn commands(count: usize, config: &EngineConfig) -> Vec<Sequenced> {
    let mut engine = Engine::new(config.clone());
    let mut workload = Workload::new(42, Sequence(1), Timestamp(1_700_000_000_000));
    let mut commands = Vec::with_capacity(count);
    for _ in 0..count {
        let command = workload.next_command();
        workload.observe(&engine.apply(&command));
        commands.push(command);
    }
    commands
}

fn mean_record_bytes(commands: &[Sequenced]) -> f64 {
    let mut framing = RecordBuf::default();
    let sample = &commands[..commands.len().min(10_000)];
    let total: usize = sample.iter().map(|c| framing.encode(Epoch(1), c).len()).sum();
    total as f64 / sample.len() as f64
}

/// Runs the journal benchmark and prints its rows.
pub fn run(common: Common) {
    bench(&mut Report::new(common.json), Size::of(common));
}

/// Measures every batch size and durability policy into `report`.
pub fn bench(report: &mut Report, size: Size) {
    // At least one batch of the largest size.
    let count = size.count(200_000, 1_000_000, 256) as usize;
    let budget = Duration::from_millis(size.count(400, 2_000, 1));
    let commands = commands(count, &EngineConfig::default());
    let record_bytes = mean_record_bytes(&commands);
    report.note(&format!(
        "journal append: {count} flash-sale commands max per variant, {record_bytes:.1} bytes per \
         record on average, 64 MiB preallocated segments in {}; each variant stops after {} ms",
        std::env::temp_dir().display(),
        budget.as_millis()
    ));
    for batch in [1usize, 16, 256] {
        report.push(baseline_encode(&commands, batch, budget, record_bytes));
        report.push(baseline_memory(&commands, batch, budget, record_bytes));
        for durability in [Durability::None, Durability::Interval { ms: 5 }, Durability::Batch] {
            report.push(append(&commands, batch, durability, budget, record_bytes));
        }
    }
    segment_start(report, size, &commands, record_bytes);
    for batch in [1usize, 16, 256] {
        let scenario = format!("append_batch_{batch}");
        report.ratio(&scenario, "mmap_none", "memory_journal_baseline");
        for variant in ["mmap_interval_5ms", "mmap_batch"] {
            let baseline = (scenario.as_str(), "memory_journal_baseline");
            report.relate((&scenario, variant), baseline, Ratios::All);
        }
    }
}

/// Segment length of the `segment_start` rows: `serve`'s default (a scaled-down plan scales it
/// down too, to no less than 1 MiB).
const START_SEGMENT_LEN: u64 = 64 << 20;

/// What starting a segment costs the appending thread — from the record that does not fit to
/// the new segment listed, the closing segment's last sync included, as the writer times it
/// for `/metrics` — with the segment created when that record arrives and with it made ready
/// ahead on a helper thread. Under `none` (writeback of the closing segment in flight, batches
/// of 256) and `batch` (every batch synced, batches of 4,096 to fill segments quickly). Rounds
/// of the two ways alternate, so the disk's slow spells fall on both.
fn segment_start(report: &mut Report, size: Size, commands: &[Sequenced], record_bytes: f64) {
    let starts = size.count(6, 24, 2);
    let rounds = 2;
    let scaled = (START_SEGMENT_LEN as f64 * size.factor.min(1.0)) as u64;
    let segment_len = scaled.max(1 << 20) / 16 * 16;
    report.note(&format!(
        "segment_start: {:.1} MiB segments, {starts} segment starts per variant in {rounds} \
         alternating rounds; each entry is one start's cost to the appending thread",
        segment_len as f64 / f64::from(1 << 20)
    ));
    for (durability, batch) in [(Durability::None, 256), (Durability::Batch, 4096)] {
        let mut measured = [(0u64, 0.0f64, latency_histogram()), (0, 0.0, latency_histogram())];
        for _ in 0..rounds {
            for (ahead, (ops, seconds, histogram)) in [false, true].into_iter().zip(&mut measured) {
                let plan = StartPlan { segment_len, durability, batch, ahead };
                let (n, s, h) = starting_segments(commands, plan, starts / rounds);
                *ops += n;
                *seconds += s;
                histogram.add(&h).expect("histograms of one range");
            }
        }
        let ways = ["created_when_needed", "prepared_ahead"];
        for (way, (ops, seconds, histogram)) in ways.into_iter().zip(measured) {
            let row =
                Row::new("segment_start", &format!("{way}_{durability}"), ops, seconds, histogram)
                    .with("segment_bytes", segment_len)
                    .with("batch", batch as u64)
                    .with("durability", durability.to_string())
                    .with("record_bytes", (record_bytes * 10.0).round() / 10.0)
                    .with("histogram", "per segment start (its cost to the appending thread)");
            report.push(row);
        }
        report.relate(
            ("segment_start", &format!("prepared_ahead_{durability}")),
            ("segment_start", &format!("created_when_needed_{durability}")),
            Ratios::LatencyOnly,
        );
    }
}

#[derive(Clone, Copy)]
struct StartPlan {
    segment_len: u64,
    durability: Durability,
    batch: usize,
    ahead: bool,
}

/// Appends in batches until `starts` segments have started after the first; returns the
/// starts, the time they took and their histogram.
fn starting_segments(
    commands: &[Sequenced],
    plan: StartPlan,
    starts: u64,
) -> (u64, f64, Histogram<u64>) {
    let dir = BenchDir::new("segment-start");
    let storage = FileStorage::open(&dir.0).expect("open benchmark storage");
    let options = WriterOptions {
        segment_len: plan.segment_len,
        durability: plan.durability,
        engine_config: EngineConfig::default(),
    };
    let mut writer = recover_from(storage, options).expect("writer on a new journal").writer;
    if plan.ahead {
        writer.prepare_segments_ahead(DISK_CHECK_EVERY).expect("start the spare segment's helper");
    }
    let mut histogram = latency_histogram();
    let mut framing = RecordBuf::default();
    let clock = SystemClock::new();
    let mut spent_ns = 0u64;
    let mut sequence = 0u64;
    let started = |writer: &JournalWriter<FileStorage>| writer.data_dir().segment_starts();
    let base = started(&writer).started;
    'run: loop {
        for chunk in commands.chunks(plan.batch) {
            let before = started(&writer).started;
            for command in chunk {
                // The workload repeats, renumbered: the journal checks sequences only.
                sequence += 1;
                let renumbered = Sequenced { sequence: Sequence(sequence), ..*command };
                let bytes = framing.encode(Epoch(1), &renumbered);
                let record = Framed { epoch: Epoch(1), sequenced: &renumbered, bytes };
                writer.append(&record).expect("append");
            }
            writer.flush(&clock).expect("flush");
            if started(&writer).started > before {
                // A batch holds far fewer records than a segment: one start at most.
                let ns = writer.data_dir().segment_starts().ns_last;
                histogram.saturating_record(ns);
                spent_ns += ns;
                if started(&writer).started - base >= starts {
                    break 'run;
                }
            }
        }
    }
    let counted = started(&writer);
    let (started, prepared) = (counted.started, counted.from_spare);
    // The variant measured what it says: every start after the first used a spare, or none.
    assert_eq!(prepared > 0, plan.ahead, "{prepared} of {started} segments from a spare");
    (started - base, spent_ns as f64 / 1e9, histogram)
}

fn row(
    scenario: &str,
    variant: &str,
    ops: u64,
    seconds: f64,
    histogram: hdrhistogram::Histogram<u64>,
    record_bytes: f64,
    batch: usize,
) -> Row {
    let mb_per_s = ops as f64 * record_bytes / seconds.max(1e-9) / 1e6;
    Row::new(scenario, variant, ops, seconds, histogram)
        .with("batch", batch as u64)
        .with("mb_per_s", (mb_per_s * 10.0).round() / 10.0)
        .with("histogram", "per batch (appends + flush)")
}

/// Appends `commands` in batches of `batch`, flushing after each, until done or `budget` has
/// passed; returns the commands appended, the wall time and the per-batch histogram.
fn timed_appends(
    journal: &mut impl Journal,
    commands: &[Sequenced],
    batch: usize,
    budget: Duration,
) -> (u64, f64, Histogram<u64>) {
    let mut histogram = latency_histogram();
    let mut framing = RecordBuf::default();
    let clock = SystemClock::new();
    let started = Instant::now();
    let mut ops = 0u64;
    for chunk in commands.chunks(batch) {
        let t0 = Instant::now();
        for command in chunk {
            let bytes = framing.encode(Epoch(1), command);
            let record = Framed { epoch: Epoch(1), sequenced: command, bytes };
            journal.append(&record).expect("append");
        }
        journal.flush(&clock).expect("flush");
        histogram.saturating_record(t0.elapsed().as_nanos() as u64);
        ops += chunk.len() as u64;
        if started.elapsed() > budget {
            break;
        }
    }
    (ops, started.elapsed().as_secs_f64(), histogram)
}

fn append(
    commands: &[Sequenced],
    batch: usize,
    durability: Durability,
    budget: Duration,
    record_bytes: f64,
) -> Row {
    let dir = BenchDir::new("append");
    let storage = FileStorage::open(&dir.0).expect("open benchmark storage");
    let options =
        WriterOptions { segment_len: 64 << 20, durability, engine_config: EngineConfig::default() };
    let mut writer = recover_from(storage, options).expect("writer on a new journal").writer;
    let (ops, seconds, histogram) = timed_appends(&mut writer, commands, batch, budget);
    let scenario = format!("append_batch_{batch}");
    let variant = match durability {
        Durability::None => "mmap_none".to_owned(),
        Durability::Batch => "mmap_batch".to_owned(),
        Durability::Interval { ms } => format!("mmap_interval_{ms}ms"),
    };
    row(&scenario, &variant, ops, seconds, histogram, record_bytes, batch)
        .with("durability", durability.to_string())
}

fn baseline_memory(
    commands: &[Sequenced],
    batch: usize,
    budget: Duration,
    record_bytes: f64,
) -> Row {
    let mut journal = MemoryJournal::new();
    let (ops, seconds, histogram) = timed_appends(&mut journal, commands, batch, budget);
    row(
        &format!("append_batch_{batch}"),
        "memory_journal_baseline",
        ops,
        seconds,
        histogram,
        record_bytes,
        batch,
    )
}

fn baseline_encode(
    commands: &[Sequenced],
    batch: usize,
    budget: Duration,
    record_bytes: f64,
) -> Row {
    let mut framing = RecordBuf::default();
    let mut histogram = latency_histogram();
    let started = Instant::now();
    let mut ops = 0u64;
    let mut sink = 0u8;
    for chunk in commands.chunks(batch) {
        let t0 = Instant::now();
        for command in chunk {
            sink ^= framing.encode(Epoch(1), command)[0];
        }
        histogram.saturating_record(t0.elapsed().as_nanos() as u64);
        ops += chunk.len() as u64;
        if started.elapsed() > budget {
            break;
        }
    }
    std::hint::black_box(sink);
    let seconds = started.elapsed().as_secs_f64();
    row(
        &format!("append_batch_{batch}"),
        "frame_only",
        ops,
        seconds,
        histogram,
        record_bytes,
        batch,
    )
}
