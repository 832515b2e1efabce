//! An engine's tables are in memory once it is built: no command faults a page in.
//!
//! Its own test binary, so that no other test allocates or frees memory while the resident
//! set is measured.

use ringfence_core::{Engine, EngineConfig};

/// The process's resident set, in bytes (`VmRSS` in `/proc/self/status`, in KiB).
#[cfg(target_os = "linux")]
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|f| f.parse().ok()).expect("KiB");
    kib * 1024
}

#[cfg(target_os = "linux")]
#[test]
fn a_new_engine_has_written_every_table() {
    // Goal: `Engine::new` writes the entry tables (orders, request keys, deadlines, coupons)
    // as well as the indexes, so the resident set grows by all the engine allocates; entries
    // left to be touched as they fill would leave most of that out.
    let config = EngineConfig {
        orders_max: 1 << 17,
        holdings_max: 1 << 10,
        coupons_max: 1 << 16,
        request_keys_max: 1 << 18,
        request_keys_per_user_max: 0,
        orders_per_user_max: 0,
        ..EngineConfig::default()
    };
    let memory = Engine::memory(&config);
    // The entries are most of it, so an engine that left them out would fail below.
    assert!(memory.index_bytes < memory.allocated_bytes / 2, "{memory:?}");
    let before = resident_bytes();
    let engine = Engine::new(config);
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown >= memory.allocated_bytes - memory.allocated_bytes / 50,
        "the resident set grew by {grown} bytes building an engine of {} bytes",
        memory.allocated_bytes
    );
    assert_eq!(engine.status().orders, 0);
}
