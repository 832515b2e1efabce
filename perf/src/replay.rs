//! The replay benchmark: commands/s rebuilding state from a multi-million-command journal,
//! against the BLP alone applying the same commands from memory, in the same run.
//!
//! Also measured here, on the state the replay built: what a snapshot costs the BLP. Today the
//! BLP only hands the snapshot writer a sequence and its hash, and the writer's shadow engine
//! follows the journal and snapshots itself (`shadow` rows: the BLP's hand-off, and the
//! writer's catch-up over the whole journal, as after a start). For comparison, the pause the
//! BLP would take to copy its state itself (`blp_pause_*` rows, the design before the shadow:
//! into a fresh image, and into the previous snapshot's image) and the writer's work on an
//! image (restore check, encoding, write, fsync, rename).

use std::ops::ControlFlow;
use std::time::Instant;

use hdrhistogram::Histogram;
use ringfence_core::{Engine, EngineConfig, Epoch, Lookahead, Sequence, Sequenced};
use ringfence_journal::recovery::recover_from;
use ringfence_journal::scan::{self, ReadOnlyDir};
use ringfence_journal::snapshot;
use ringfence_journal::storage::FileStorage;
use ringfence_journal::writer::{Durability, WriterOptions};

use crate::journal::{BenchDir, commands};
use crate::report::{Ratios, Report, Row, latency_histogram};
use crate::{Common, Size};

/// Commands per timing chunk: histograms hold the mean time per command over each chunk, so
/// the clock is read once per chunk and does not distort the figures.
const CHUNK: u64 = 4_096;

struct Chunked {
    histogram: Histogram<u64>,
    chunk_start: Instant,
    count: u64,
}

impl Chunked {
    fn new() -> Chunked {
        Chunked { histogram: latency_histogram(), chunk_start: Instant::now(), count: 0 }
    }

    fn tick(&mut self) {
        self.count += 1;
        if self.count % CHUNK == 0 {
            let ns = self.chunk_start.elapsed().as_nanos() as u64 / CHUNK;
            self.histogram.saturating_record(ns.max(1));
            self.chunk_start = Instant::now();
        }
    }
}

/// Runs the replay benchmark and prints its rows.
pub fn run(common: Common) {
    bench(&mut Report::new(common.json), Size::of(common));
}

/// Measures replay against the BLP alone, then the snapshot's cost, into `report`.
pub fn bench(report: &mut Report, size: Size) {
    // A few timing chunks at least, so that every histogram holds something.
    let count = size.count(1_000_000, 4_000_000, 4 * CHUNK) as usize;
    let config = EngineConfig::default();
    let commands = commands(count, &config);
    let dir = BenchDir::new("replay");
    write_journal(&dir, &commands, &config);
    let bytes: u64 = std::fs::read_dir(&dir.0)
        .expect("list journal")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    report.note(&format!(
        "replay: {count} flash-sale commands, journal {:.0} MiB on disk; best of 2 runs each, \
         alternating; histograms are mean ns per command over {CHUNK}-command chunks",
        bytes as f64 / (1 << 20) as f64
    ));
    let mut best: [Option<Row>; 5] = [None, None, None, None, None];
    let mut engine = None;
    for _ in 0..2 {
        keep_best(&mut best[0], blp_alone(&commands, &config, false));
        keep_best(&mut best[1], blp_alone(&commands, &config, true));
        keep_best(&mut best[2], decode_only(&dir));
        let (row, _) = journal_replay(&dir, &config, false);
        keep_best(&mut best[3], row);
        let (row, replayed) = journal_replay(&dir, &config, true);
        keep_best(&mut best[4], row);
        engine = Some(replayed);
    }
    for row in best.into_iter().flatten() {
        report.push(row);
    }
    // Against the same commands applied from memory the same way: what reading the journal
    // costs; and against applying them one at a time.
    report.ratio("replay", "journal_replay", "blp_alone_lookahead");
    report.ratio("replay", "journal_replay", "blp_alone");
    report.ratio("replay", "journal_replay_1_thread", "blp_alone_lookahead");
    report.ratio("replay", "decode_only", "blp_alone");
    if let Some(engine) = engine {
        snapshot_pause(report, &engine, &dir);
        shadow_snapshot(report, &engine, &dir, &config);
        // The pause the shadow engine replaced, as a ratio of pause lengths.
        let (shadow, copy) = ("shadow_blp_handoff", "blp_pause_copy_state");
        report.relate(("snapshot", shadow), ("snapshot", copy), Ratios::LatencyOnly);
    }
}

/// A snapshot as `serve` takes it: the BLP hands the writer the sequence and its hash; the
/// writer's shadow engine starts from the (snapshot-less) journal, applies all of it and
/// writes the snapshot. Measures the BLP's hand-off, and the writer's time and rate.
fn shadow_snapshot(report: &mut Report, engine: &Engine, dir: &BenchDir, config: &EngineConfig) {
    let runs = 3;
    let (mut handoff, mut writer) = (Timed::new(), Timed::new());
    let mut records = 0;
    let request = Sequenced {
        sequence: engine.last_sequence(),
        timestamp: engine.now(),
        command: ringfence_core::Command::Snapshot,
    };
    let options = WriterOptions {
        segment_len: 64 << 20,
        durability: Durability::None,
        engine_config: config.clone(),
    };
    for run in 0..runs {
        // A copy per run: the snapshot's retention retires the segments it covers.
        let copy = BenchDir::new(&format!("shadow-{run}"));
        for entry in std::fs::read_dir(&dir.0).expect("list journal") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, copy.0.join(path.file_name().expect("a file")))
                .expect("copy the journal");
        }
        let storage = FileStorage::open(&copy.0).expect("open journal");
        let recovered = recover_from(storage, options.clone()).expect("recover for the snapshot");
        let data_dir = recovered.writer.data_dir().clone();
        let policy = snapshot::SnapshotPolicy {
            every_commands: None,
            keep: 1,
            ..snapshot::SnapshotPolicy::default()
        };
        let mut snapshots = snapshot::Snapshotter::start(data_dir, policy, config.clone())
            .expect("start the snapshot writer");
        let started = Instant::now();
        ringfence_core::pipeline::SnapshotHook::after_apply(&mut snapshots, engine, &request);
        handoff.record(started);
        let stats = snapshots.finish();
        assert_eq!((stats.written, stats.failed), (1, 0), "{stats:?}");
        writer.histogram.saturating_record(stats.writer_ns_last);
        writer.seconds += stats.writer_ns_last as f64 / 1e9;
        records = stats.shadow_records;
        assert!(stats.last.is_some(), "a snapshot was written");
    }
    report.push(
        Row::new("snapshot", "shadow_blp_handoff", runs, handoff.seconds, handoff.histogram)
            .with("thread", "BLP")
            .with("copies", "nothing: a sequence and a hash"),
    );
    report.push(
        Row::new(
            "snapshot",
            "shadow_writer_catch_up",
            runs * records,
            writer.seconds,
            writer.histogram,
        )
        .with("thread", "snapshot writer")
        .with("records", records)
        .with("work", "apply the whole journal, copy, encode, write, fsync"),
    );
}

fn keep_best(best: &mut Option<Row>, row: Row) {
    if best.as_ref().is_none_or(|b| row.ops_per_sec() > b.ops_per_sec()) {
        *best = Some(row);
    }
}

fn write_journal(dir: &BenchDir, commands: &[Sequenced], config: &EngineConfig) {
    let storage = FileStorage::open(&dir.0).expect("open journal");
    let options = WriterOptions {
        segment_len: 64 << 20,
        durability: Durability::None,
        engine_config: config.clone(),
    };
    let mut writer = recover_from(storage, options).expect("writer on a new journal").writer;
    for chunk in commands.chunks(256) {
        for command in chunk {
            writer.append_command(Epoch(1), command).expect("append");
        }
        writer.end_batch().expect("flush");
    }
    writer.sync_now().expect("sync");
}

/// The commands applied from memory: one at a time (`blp_alone`), or each hinted eight
/// commands before it is applied (`blp_alone_lookahead`, as the replay applies them).
fn blp_alone(commands: &[Sequenced], config: &EngineConfig, lookahead: bool) -> Row {
    let mut engine = Engine::new(config.clone());
    let mut timing = Chunked::new();
    let started = Instant::now();
    if lookahead {
        let mut ahead = Lookahead::default();
        for command in commands {
            ahead.push(&mut engine, *command, |engine, command| {
                std::hint::black_box(engine.apply(command));
                timing.tick();
            });
        }
        ahead.finish(&mut engine, |engine, command| {
            std::hint::black_box(engine.apply(command));
            timing.tick();
        });
    } else {
        for command in commands {
            std::hint::black_box(engine.apply(command));
            timing.tick();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let variant = if lookahead { "blp_alone_lookahead" } else { "blp_alone" };
    Row::new("replay", variant, commands.len() as u64, seconds, timing.histogram)
        .with("source", "commands in memory")
}

fn decode_only(dir: &BenchDir) -> Row {
    let started = Instant::now();
    let mut source = ReadOnlyDir::open(&dir.0).expect("open journal");
    let layout = scan::scan(&mut source).expect("scan");
    let mut timing = Chunked::new();
    let mut sink = 0u64;
    scan::read(&mut source, &layout, Sequence(1), &mut |record| {
        sink ^= record.timestamp.0;
        timing.tick();
        ControlFlow::Continue(())
    })
    .expect("read");
    std::hint::black_box(sink);
    let seconds = started.elapsed().as_secs_f64();
    Row::new("replay", "decode_only", timing.count, seconds, timing.histogram)
        .with("source", "mmap scan + CRC + canonical decode, no apply")
}

/// Replays the journal as recovery and `ringfence replay` do: pipelined, a reader thread
/// decoding while this thread applies; or all on this thread.
fn journal_replay(dir: &BenchDir, config: &EngineConfig, pipelined: bool) -> (Row, Engine) {
    // Made before the clock starts, as for the BLP alone: what is timed is reading the journal
    // (its scan included) and applying it.
    let mut engine = Engine::new(config.clone());
    let started = Instant::now();
    let mut source = ReadOnlyDir::open(&dir.0).expect("open journal");
    let layout = scan::scan(&mut source).expect("scan");
    let mut timing = Chunked::new();
    // As recovery applies them: each record hinted as it is read, applied a few later.
    let mut ahead = Lookahead::default();
    let mut apply = |record: &scan::Record| {
        ahead.push(&mut engine, record.sequenced(), |engine, command| {
            std::hint::black_box(engine.apply(command));
            timing.tick();
        });
        ControlFlow::Continue(())
    };
    let read = if pipelined { scan::read_pipelined } else { scan::read };
    read(&mut source, &layout, Sequence(1), &mut apply).expect("read");
    ahead.finish(&mut engine, |engine, command| {
        std::hint::black_box(engine.apply(command));
        timing.tick();
    });
    let seconds = started.elapsed().as_secs_f64();
    let (variant, source) = if pipelined {
        ("journal_replay", "scan + decode on a reader thread, apply (lookahead) on this one")
    } else {
        ("journal_replay_1_thread", "scan + decode + apply (lookahead) on one thread")
    };
    let row =
        Row::new("replay", variant, timing.count, seconds, timing.histogram).with("source", source);
    (row, engine)
}

fn snapshot_pause(report: &mut Report, engine: &Engine, dir: &BenchDir) {
    let status = engine.status();
    let runs = 5;
    let (mut first, mut steady, mut write) = (Timed::new(), Timed::new(), Timed::new());
    let mut bytes = 0;
    // The Snapshotter's spare after its first snapshot: written once, so already faulted in.
    let mut image = engine.to_image_unsorted();
    for _ in 0..runs {
        let t0 = Instant::now();
        let fresh = std::hint::black_box(engine.to_image_unsorted());
        first.record(t0);
        drop(fresh);
        let t0 = Instant::now();
        engine.copy_image_into(&mut image);
        steady.record(t0);
        let t1 = Instant::now();
        let storage = FileStorage::open(&dir.0).expect("open snapshot storage");
        let meta = snapshot::write(&storage, engine.config(), &image, Sequence(u64::MAX / 2))
            .expect("snapshot write");
        write.record(t1);
        bytes = meta.bytes;
        std::fs::remove_file(&meta.file).expect("remove snapshot");
    }
    report.note(&format!(
        "snapshot of that state: {} orders kept, {} request keys, {} coupons, {:.1} MiB file",
        status.orders,
        status.request_keys,
        status.coupons,
        bytes as f64 / (1 << 20) as f64
    ));
    report.push(
        Row::new("snapshot", "blp_pause_first_copy", runs, first.seconds, first.histogram)
            .with("thread", "BLP")
            .with("image", "freshly allocated, as for the first snapshot")
            .with("orders", status.orders),
    );
    report.push(
        Row::new("snapshot", "blp_pause_copy_state", runs, steady.seconds, steady.histogram)
            .with("thread", "BLP")
            .with("image", "the previous snapshot's, handed back by the writer")
            .with("orders", status.orders),
    );
    report.push(
        Row::new("snapshot", "writer_thread_write", runs, write.seconds, write.histogram)
            .with("thread", "snapshot writer")
            .with("bytes", bytes),
    );
}

/// Durations of one kind of run: their histogram and their total.
struct Timed {
    histogram: Histogram<u64>,
    seconds: f64,
}

impl Timed {
    fn new() -> Timed {
        Timed { histogram: latency_histogram(), seconds: 0.0 }
    }

    fn record(&mut self, started: Instant) {
        let elapsed = started.elapsed();
        self.seconds += elapsed.as_secs_f64();
        self.histogram.saturating_record(elapsed.as_nanos() as u64);
    }
}
