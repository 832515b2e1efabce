//! What writing a snapshot holds in memory beside the node's two engines (the BLP's and the
//! writer's shadow): one image of the state and one file's bytes, never a third engine.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{TempDir, generate};
use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::{Engine, EngineConfig, Epoch, Sequence, Timestamp};
use ringfence_journal::recovery::recover;
use ringfence_journal::snapshot::{self, SnapshotPolicy, Snapshotter, WriterPriority};
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};

/// Counts the bytes allocated now and the most allocated at once since the last reset.
struct Peak;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn note_grown(bytes: usize) {
    let now = NOW.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_grown(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the new block beside the old one, as a moving reallocation holds them.
        note_grown(new_size);
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

const MIB: usize = 1 << 20;

#[test]
fn a_snapshot_holds_an_image_and_a_file_beside_the_two_engines_and_no_third() {
    // Goal: once the writer's shadow engine is built, writing a snapshot allocates at most
    // the image and the file's bytes on top of what the node already holds — the check that
    // the image restores reuses the shadow's room — and the node's whole peak stays within
    // what `serve`'s memory check asks the machine for. The state nearly fills the request
    // keys, the largest table, so a third engine, even one fitted to the state, would show.
    let config =
        EngineConfig { orders_max: 16_384, request_keys_max: 65_536, ..EngineConfig::small() };
    let mut source = Engine::new(config.clone());
    let mut workload = Workload::new(7, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut source, 150_000);
    drop(source);
    let dir = TempDir::new("snapshot-memory");
    let options = WriterOptions {
        segment_len: 16 << 20,
        durability: Durability::None,
        engine_config: config.clone(),
    };
    let mut recovered = recover(dir.path(), options).unwrap();
    let data_dir = recovered.writer.data_dir().clone();
    let policy =
        SnapshotPolicy { every_commands: Some(50_000), keep: 2, writer: WriterPriority::Normal };
    let (mut snapshots, mut writer) = Snapshotter::stepped(data_dir, policy, config.clone());
    let mut engine = Engine::new(config.clone());
    let (mut above_max, mut measured) = (0, 0);
    for batch in commands.chunks(16) {
        for command in batch {
            recovered.writer.append_command(Epoch(1), command).unwrap();
            engine.apply(command);
            snapshots.after_apply(&engine, command);
        }
        recovered.writer.end_batch().unwrap();
        let written = snapshots.stats().written;
        let before = NOW.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        writer.step();
        let above = PEAK.load(Ordering::Relaxed) - before;
        // The first snapshot builds the shadow itself; the later ones are the steady state.
        if snapshots.stats().written > written && written > 0 {
            above_max = above_max.max(above);
            measured += 1;
        }
    }
    let stats = snapshots.stats();
    assert_eq!((stats.written, stats.failed), (3, 0), "{stats:?}");
    assert_eq!(measured, 2, "the later snapshots were measured");
    let file_bytes = stats.last.as_ref().expect("a snapshot").bytes as usize;
    let before = NOW.load(Ordering::Relaxed);
    let image = engine.to_image_unsorted();
    let image_bytes = NOW.load(Ordering::Relaxed) - before;
    drop(image);
    let engine_bytes = Engine::memory(&config).allocated_bytes as usize;
    // Room for the writer's record buffer and small allocations, well below what a second
    // copy of the file or an engine fitted to the state (larger than the file) would take.
    let slack = 2 * MIB;
    assert!(file_bytes > 2 * slack, "a state too small to tell: {file_bytes} bytes");
    assert!(
        above_max <= image_bytes + file_bytes + slack,
        "a snapshot allocated {above_max} bytes above the two engines; its image takes \
         {image_bytes}, its file {file_bytes}"
    );
    // What the memory check asks for covers the node's peak: the engines and the snapshot's
    // working memory, both at full tables.
    let engines = 2 * engine_bytes;
    let asked = engines + snapshot::working_bytes_max(&config) as usize;
    assert!(engines + above_max <= asked, "{} above {asked}", engines + above_max);
}
