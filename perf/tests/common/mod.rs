//! What the `ringfence-perf` binary's tests share.
// Each test binary uses some of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the `ringfence-perf` binary of this build with `args`, logging warnings only.
pub fn perf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence-perf"))
        .args(args)
        .env("RINGFENCE_LOG", "warn")
        .output()
        .expect("run ringfence-perf")
}

/// Runs the `ringfence-perf` binary of this build with `args` and no log filter set: logging
/// as the command does by default.
pub fn perf_default_log(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence-perf"))
        .args(args)
        .env_remove("RINGFENCE_LOG")
        .output()
        .expect("run ringfence-perf")
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory's path for the test `tag` (not created: the tools create it).
    pub fn new(tag: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("ringfence-perf-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
