//! A standby's journal replaced by its primary's snapshot keeps, in `rollback/`, the records
//! the snapshot's epoch history shows were never the primary's, and only those: on the
//! diverged path, where the standby cannot cut its tail in place, and where the history does
//! not reach back to the standby's first records. The journals are written through the
//! journal's API (records of chosen epochs); a fake primary on the production
//! `PrimarySession` (`common::snapshot_primary`) answers the standby's join from a list of
//! epochs and sends the snapshot.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::snapshot_primary::{Leading, Offer, run_standby_until, serve, standby_process};
use common::{CLUSTER_SECRET, TempDir, journal_dump_json};
use ringfence_core::{Engine, EngineConfig, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::epoch::Epochs;
use ringfence_journal::recovery::recover;
use ringfence_journal::snapshot;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};
use ringfence_replicator::position::EpochList;

/// The fake primary's epoch.
const PRIMARY_EPOCH: u64 = 1005;
/// Records both journals hold, in epoch 1.
const SHARED: u64 = 100;

fn options() -> WriterOptions {
    WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::Batch,
        engine_config: EngineConfig::default(),
    }
}

/// `count` workload commands, applied to `engine`.
fn commands(workload: &mut Workload, engine: &mut Engine, count: u64) -> Vec<Sequenced> {
    (0..count)
        .map(|_| {
            let command = workload.next_command();
            let outcome = engine.apply(&command);
            workload.observe(&outcome);
            command
        })
        .collect()
}

/// Two histories that part after [`SHARED`] records: the standby's `standby` more, the
/// primary's `primary` more, each from its own workload.
fn parted(standby: u64, primary: u64) -> (Vec<Sequenced>, Vec<Sequenced>, Vec<Sequenced>) {
    let mut engine = Engine::new(EngineConfig::default());
    let mut workload = Workload::new(3, Sequence(1), Timestamp(1_000));
    let shared = commands(&mut workload, &mut engine, SHARED);
    let mut engine_p = Engine::new(EngineConfig::default());
    for command in &shared {
        engine_p.apply(command);
    }
    let own_s = commands(&mut workload, &mut engine, standby);
    let now = shared.last().unwrap().timestamp;
    let mut workload_p = Workload::new(77, Sequence(SHARED + 1), now);
    let own_p = commands(&mut workload_p, &mut engine_p, primary);
    (shared, own_s, own_p)
}

/// A data directory holding `shared` in epoch 1, then `own` in `epoch`, and a snapshot through
/// its end (with the segments before the last retired if `retire`). With `blank_at`, a
/// snapshot through that many of `own` is written with no epoch history, as one written
/// before snapshots carried it holds none. Each record's epoch.
fn build(
    dir: &Path,
    (shared, own): (&[Sequenced], &[Sequenced]),
    epoch: u64,
    retire: bool,
    blank_at: Option<usize>,
) -> Vec<u64> {
    let mut writer = recover(dir, options()).unwrap().writer;
    let mut engine = Engine::new(EngineConfig::default());
    let mut epochs = Vec::new();
    writer.data_dir().store_epochs(Epochs { current: Epoch(1), promised: Epoch(1) }).unwrap();
    for command in shared {
        writer.append_command(Epoch(1), command).unwrap();
        engine.apply(command);
        epochs.push(1);
    }
    writer.end_batch().unwrap();
    let raised = Epochs { current: Epoch(epoch), promised: Epoch(epoch) };
    writer.data_dir().store_epochs(raised).unwrap();
    for (i, command) in own.iter().enumerate() {
        writer.append_command(Epoch(epoch), command).unwrap();
        engine.apply(command);
        epochs.push(epoch);
        if blank_at == Some(i + 1) {
            writer.end_batch().unwrap();
            let through = Sequence(epochs.len() as u64);
            let meta = snapshot::write_now(writer.data_dir().storage(), &engine, through).unwrap();
            blank_history(&dir.join(&meta.name), meta.history.starts().len());
        }
    }
    writer.end_batch().unwrap();
    let through = Sequence(epochs.len() as u64);
    snapshot::write_now(writer.data_dir().storage(), &engine, through).unwrap();
    if retire {
        writer.data_dir().retire_segments(through.next()).unwrap();
    }
    epochs
}

/// Rewrites the snapshot at `path`, whose history holds `entries`, with an empty one.
fn blank_history(path: &Path, entries: usize) {
    const BODY_CRC_AT: usize = 64;
    const HEADER_CRC_AT: usize = 124;
    let mut bytes = std::fs::read(path).unwrap();
    bytes.truncate(bytes.len() - 8 - 16 * entries);
    bytes.extend_from_slice(&0_u64.to_le_bytes());
    let body = crc32c::crc32c(&bytes[snapshot::SNAPSHOT_HEADER_LEN..]);
    bytes[BODY_CRC_AT..BODY_CRC_AT + 4].copy_from_slice(&body.to_le_bytes());
    let header = crc32c::crc32c(&bytes[..HEADER_CRC_AT]);
    bytes[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&header.to_le_bytes());
    std::fs::write(path, &bytes).unwrap();
}

/// The sequences of the records `dir/rollback` holds, in order.
fn rollback_sequences(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir.join("rollback")) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(path).unwrap().lines() {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                found.push(record["sequence"].as_u64().unwrap());
            }
        }
    }
    found.sort_unstable();
    found
}

/// The sequences `journal dump` shows `dir` holding.
fn held(dir: &Path) -> Vec<u64> {
    let lines = journal_dump_json(dir, &[]);
    let sequence = |line: &String| {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        record["sequence"].as_u64().unwrap()
    };
    lines.iter().map(sequence).collect()
}

/// Starts `dir_s` as a standby of a fake primary that answers its join from `journal` and
/// sends `dir_p`'s snapshot through the last of `epochs` (each record's epoch from 1); runs
/// it until its node is up, or it exits. Its log.
fn rejoin(
    root: &Path,
    (dir_s, dir_p): (&Path, &Path),
    epochs: &[u64],
    journal: EpochList,
) -> Vec<String> {
    let secret = root.join("secret");
    std::fs::write(&secret, CLUSTER_SECRET).unwrap();
    let through = Sequence(epochs.len() as u64);
    let bytes = std::fs::read(dir_p.join(snapshot::snapshot_name(through))).unwrap();
    let through_epoch = Epoch(*epochs.last().unwrap());
    let offer = Offer::of(through, through_epoch, bytes);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let primary =
        serve(listener, (Leading::in_epoch(PRIMARY_EPOCH), journal), offer, Arc::clone(&stop));
    let config = root.join("node.toml");
    std::fs::write(&config, "[node]\nsegment_bytes = 65536\nsnapshots_kept = 1\n").unwrap();
    let process = standby_process(dir_s, &secret, address, &["--config", config.to_str().unwrap()]);
    let log = run_standby_until(process, &["HTTP API listening"]);
    stop.store(true, Ordering::Release);
    let served = primary.join().unwrap();
    let fetched = log.iter().any(|l| l.contains("fetched the primary's snapshot"));
    assert!(fetched, "{log:#?}\nthe fake primary: {served:#?}");
    log
}

#[test]
fn a_diverged_tail_that_cannot_be_cut_in_place_is_kept_whole() {
    // Goal: an old primary wrote 101..=3000 alone in epoch 3; its successor's records there
    // are of epoch 2. Its only snapshot is through 3000 and the segments before the last were
    // retired, so it cannot cut its tail in place. The primary names one record a round
    // (`Diverged` through 2999); the standby takes the primary's snapshot at once instead,
    // and the snapshot's history shows every record it still holds was never the primary's:
    // all are kept in `rollback/`, not the last one alone.
    let root = TempDir::new("history-diverged");
    let (dir_s, dir_p) = (root.path().join("s"), root.path().join("p"));
    let (shared, own_s, own_p) = parted(2_900, 3_400);
    build(&dir_s, (&shared, &own_s), 3, true, None);
    let epochs_p = build(&dir_p, (&shared, &own_p), 2, false, None);
    let held = held(&dir_s);
    let (first, last) = (held[0], *held.last().unwrap());
    assert!(first > SHARED + 1 && last == 3_000, "the standby retired its oldest: {first}..");
    // The primary still holds every record: it answers the join with the divergence.
    let journal = EpochList { first: 1, epochs: epochs_p.clone() };
    let log = rejoin(root.path(), (&dir_s, &dir_p), &epochs_p, journal);
    let cut = log.iter().any(|l| l.contains("cannot be dropped in place"));
    assert!(cut, "the tail was to be replaced, not cut: {log:#?}");
    let kept = rollback_sequences(&dir_s);
    assert_eq!(kept, (first..=last).collect::<Vec<u64>>(), "{log:#?}");
}

#[test]
fn records_before_the_primary_s_history_begins_are_taken_as_the_primary_s() {
    // Goal: the primary's chain of snapshots started from one with no epoch history (written
    // before snapshots carried one), through 200: its newest snapshot's history is known from
    // there on, epoch 4. The standby shares 1..=100 (epoch 1) and wrote 101..=3000 in epoch 3.
    // From 200 on the history shows its records were never the primary's: kept. Before 200
    // nothing tells them apart from the primary's (whose epochs there are at most 4): taken as
    // the primary's, the shared records among them, and not kept as if they were lost.
    let root = TempDir::new("history-unreached");
    let (dir_s, dir_p) = (root.path().join("s"), root.path().join("p"));
    let (shared, own_s, own_p) = parted(2_900, 3_400);
    build(&dir_s, (&shared, &own_s), 3, false, None);
    let epochs_p = build(&dir_p, (&shared, &own_p), 4, false, Some(100));
    assert_eq!(held(&dir_s).first(), Some(&1));
    // The primary retired every record its snapshot holds: the join needs the snapshot.
    let after = epochs_p.len() as u64 + 1;
    let journal = EpochList { first: after, epochs: vec![4; 5] };
    let log = rejoin(root.path(), (&dir_s, &dir_p), &epochs_p, journal);
    let kept = rollback_sequences(&dir_s);
    assert_eq!(kept, (200..=3_000).collect::<Vec<u64>>(), "{log:#?}");
    let said = log.iter().any(|l| l.contains("records 200..=3000 of this journal were never"));
    assert!(said, "{log:#?}");
}
