//! Appending to the journal allocates nothing per record once a segment is open.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use common::{TempDir, config, generate};
use ringfence_core::{Engine, Epoch, Sequence, Timestamp};
use ringfence_journal::recovery::recover;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts them.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn appending_and_flushing_allocate_nothing_per_record() {
    // Goal: in steady state (segment open, no rotation) append + flush never touch the heap,
    // whatever the command kind.
    let dir = TempDir::new("no-alloc");
    let mut shadow = Engine::new(config());
    let mut workload = Workload::new(1, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut shadow, 20_000);
    for durability in [Durability::None, Durability::Interval { ms: 60_000 }] {
        let options = WriterOptions { segment_len: 16 << 20, durability, engine_config: config() };
        let sub = dir.path().join(durability.to_string().replace(':', "-"));
        let mut recovered = recover(&sub, options).unwrap();
        recovered.writer.append_command(Epoch(1), &commands[0]).unwrap();
        recovered.writer.end_batch().unwrap();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for chunk in commands[1..].chunks(16) {
            for command in chunk {
                recovered.writer.append_command(Epoch(1), command).unwrap();
            }
            recovered.writer.end_batch().unwrap();
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "{durability}: allocations while appending");
        assert_eq!(recovered.writer.last_appended(), Sequence(20_000));
    }
}
