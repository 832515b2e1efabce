//! Helpers shared by the journal's integration tests: temporary directories and options.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ringfence_core::{Engine, EngineConfig, Outcome, Sequenced};
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
