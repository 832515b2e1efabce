//! An engine's tables are in memory once it is built, on huge pages where the kernel gives
//! them: no command faults a page in.
//!
//! Its own test binary, so that no other test allocates or frees memory while the resident
//! set is measured.

use ringfence_core::{Engine, EngineConfig};

/// A field of `/proc/self/smaps_rollup` (`Rss`, `AnonHugePages`), in bytes.
#[cfg(target_os = "linux")]
fn rollup_bytes(field: &str) -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
    let line = rollup.lines().find(|line| line.split(':').next() == Some(field)).expect(field);
    let kib: u64 = line.split_whitespace().nth(1).and_then(|f| f.parse().ok()).expect("KiB");
    kib * 1024
}

/// Whether the kernel grants transparent huge pages to a region that asks for them.
#[cfg(target_os = "linux")]
fn huge_pages_on_advice() -> bool {
    let setting = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    setting.is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

#[cfg(target_os = "linux")]
#[test]
fn a_new_engine_has_written_every_table_on_huge_pages() {
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
    let (resident, huge) = (rollup_bytes("Rss"), rollup_bytes("AnonHugePages"));
    let engine = Engine::new(config);
    let grown = rollup_bytes("Rss").saturating_sub(resident);
    assert!(
        grown >= memory.allocated_bytes - memory.allocated_bytes / 50,
        "the resident set grew by {grown} bytes building an engine of {} bytes",
        memory.allocated_bytes
    );
    // The tables asked for huge pages: where the kernel grants them on request, most of the
    // engine is on them (not all: a table's ends are on small pages, and a fragmented machine
    // may have fewer to give).
    let on_huge = rollup_bytes("AnonHugePages").saturating_sub(huge);
    println!("{on_huge} of {grown} bytes on huge pages");
    if huge_pages_on_advice() {
        assert!(on_huge >= memory.allocated_bytes / 2, "{on_huge} bytes on huge pages");
    }
    assert_eq!(engine.status().orders, 0);
}
