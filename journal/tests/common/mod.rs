//! Helpers shared by the journal's integration tests: temporary directories and options.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::{Engine, EngineConfig, Epoch, Outcome, Sequence, Sequenced};
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::format;
use ringfence_journal::recovery::recover_from;
use ringfence_journal::snapshot::{SnapshotPolicy, Snapshotter};
use ringfence_journal::storage::Storage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join(format!("ringfence-journal-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn config() -> EngineConfig {
    EngineConfig { orders_max: 8_192, request_keys_max: 65_536, ..EngineConfig::small() }
}

pub fn options(durability: Durability) -> WriterOptions {
    WriterOptions { segment_len: 64 * 1024, durability, engine_config: config() }
}

/// Journals `commands` on `disk` in batches of 16, with the stepped snapshot writer taking
/// the snapshots `policy` asks for after each batch, and retention; returns the segments
/// retired.
pub fn journal_with_snapshots(
    disk: &FaultStorage,
    commands: &[Sequenced],
    policy: SnapshotPolicy,
) -> u64 {
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let data_dir = recovered.writer.data_dir().clone();
    let (mut snapshots, mut writer) = Snapshotter::stepped(data_dir, policy, config());
    let mut engine = Engine::new(config());
    for batch in commands.chunks(16) {
        for command in batch {
            recovered.writer.append_command(Epoch(1), command).unwrap();
            engine.apply(command);
            snapshots.after_apply(&engine, command);
        }
        recovered.writer.end_batch().unwrap();
        writer.step();
    }
    let stats = snapshots.stats();
    assert_eq!(stats.failed, 0, "{stats:?}");
    stats.segments_retired
}

/// Generates `count` commands, applying each to `engine` so follow-ups use real order ids.
pub fn generate(workload: &mut Workload, engine: &mut Engine, count: usize) -> Vec<Sequenced> {
    let mut commands = Vec::with_capacity(count);
    for _ in 0..count {
        let command = workload.next_command();
        let outcome: Outcome = engine.apply(&command);
        workload.observe(&outcome);
        commands.push(command);
    }
    commands
}

/// The last sequence acknowledged by sync point `point`, from (sync points so far, sequence
/// acknowledged) pairs taken at each flush: what a power loss just after it must keep.
pub fn acknowledged_by(acknowledged: &[(u64, Sequence)], point: u64) -> u64 {
    let by = acknowledged.iter().filter(|(points, _)| *points <= point);
    by.map(|(_, acked)| acked.0).max().unwrap_or(0)
}

/// The segment holding `sequence`, and the byte offset of that record in it.
pub fn record_at(disk: &FaultStorage, sequence: Sequence) -> (String, usize) {
    let mut names: Vec<String> = disk
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| format::parse_segment_name(n).is_some())
        .collect();
    names.sort();
    let name = names
        .into_iter()
        .rev()
        .find(|name| format::parse_segment_name(name).unwrap() <= sequence)
        .expect("a segment holds it");
    let bytes = disk.live_bytes(&name).unwrap();
    let mut at = format::SEGMENT_HEADER_LEN;
    loop {
        let (header, len) = format::check_record(&bytes[at..]).expect("intact up to it");
        if header.sequence == sequence {
            return (name, at);
        }
        at += len;
    }
}

/// The digest of the engine after applying `commands`.
pub fn digest_of(commands: &[Sequenced]) -> u64 {
    let mut engine = Engine::new(config());
    for command in commands {
        engine.apply(command);
    }
    engine.state_digest()
}

/// The files in the directory with their bytes, sorted: to show a tool that refused, or only
/// read, changed nothing.
pub fn files(disk: &FaultStorage) -> Vec<(Option<Vec<u8>>, String)> {
    let mut names = disk.list().unwrap();
    names.sort();
    names.into_iter().map(|name| (disk.live_bytes(&name), name)).collect()
}
