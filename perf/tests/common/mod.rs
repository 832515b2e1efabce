//! What the `ringfence-perf` binary's tests share.

use std::process::{Command, Output};

/// Runs the `ringfence-perf` binary of this build with `args`, logging warnings only.
pub fn perf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence-perf"))
        .args(args)
        .env("RINGFENCE_LOG", "warn")
        .output()
        .expect("run ringfence-perf")
}
