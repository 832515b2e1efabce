//! What writing and loading a snapshot hold in memory beside the node's two engines (the BLP's
//! and the writer's shadow): one image of the state and the buffer the file is streamed
//! through, never the file's bytes whole, never a third engine.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{TempDir, generate};
use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::{Engine, EngineConfig, Epoch, Sequence, Timestamp};
use ringfence_journal::recovery::recover;
use ringfence_journal::scan::ReadSource;
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
fn a_snapshot_streams_through_a_buffer_beside_its_image_and_builds_no_third_engine() {
    // Goal: once the writer's shadow engine is built, writing a snapshot allocates at most the
    // image and the buffer the file is streamed through on top of what the node already holds
    // — not the file's bytes, and no engine: the check that the image restores reuses the
    // shadow's room — and loading one from the storage, the image and the buffer before its
    // engine is built. The state nearly fills the request keys, the largest table, so a file
    // held whole, or a third engine even fitted to the state, would show; a listing read
    // through a `ReadSource`, which still takes files whole, shows that the count sees one.
    // The node's whole peak stays within what `serve`'s memory check asks the machine for.
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
    let (mut snapshots, mut writer) =
        Snapshotter::stepped(data_dir.clone(), policy, config.clone());
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
        let (above, ()) = peak_above(|| {
            writer.step();
        });
        // The first snapshot builds the shadow itself; the later ones are the steady state.
        if snapshots.stats().written > written && written > 0 {
            above_max = above_max.max(above);
            measured += 1;
        }
    }
    let stats = snapshots.stats();
    assert_eq!((stats.written, stats.failed), (3, 0), "{stats:?}");
    assert_eq!(measured, 2, "the later snapshots were measured");
    let last = stats.last.as_ref().expect("a snapshot");
    let file_bytes = last.bytes as usize;
    let (image_bytes, image) = peak_above(|| engine.to_image_unsorted());
    drop(image);
    let engine_bytes = Engine::memory(&config).allocated_bytes as usize;
    let buffer = snapshot::SNAPSHOT_BUFFER_BYTES;
    // Room for small allocations (the SKU catalogue, the journal reader's records growing),
    // far below the file or an engine fitted to the state (larger than the file).
    let slack = MIB;
    assert!(file_bytes > 2 * (buffer + slack), "a state too small to tell: {file_bytes} bytes");
    assert!(
        above_max <= image_bytes + buffer + slack,
        "a snapshot allocated {above_max} bytes above the two engines; its image takes \
         {image_bytes}, its buffer {buffer}, its file {file_bytes}"
    );

    // Loading from the storage: the image and the buffer, then the engine beside the image.
    let storage = data_dir.storage();
    let (read, (image, _)) = peak_above(|| {
        snapshot::read_image_streaming(storage, &last.name, Some(&config)).expect("reads")
    });
    assert_eq!(image.state_digest(), last.state_digest, "another state read back");
    drop(image);
    let (loaded, (restored, _)) =
        peak_above(|| snapshot::load_streaming(storage, &last.name, Some(&config)).expect("loads"));
    assert_eq!(restored.state_digest(), last.state_digest, "another state loaded");
    drop(restored);
    assert!(
        read <= image_bytes + buffer + slack,
        "reading a snapshot's image allocated {read} bytes; its image takes {image_bytes}, \
         its buffer {buffer}, its file {file_bytes}"
    );
    assert!(loaded <= engine_bytes + image_bytes + buffer + slack, "loading took {loaded}");
    // Through a `ReadSource` (recovery, backups, the tools) the same: the file is streamed.
    let (sourced, (restored, _)) =
        peak_above(|| snapshot::load(storage, &last.name, Some(&config)).expect("loads"));
    assert_eq!(restored.state_digest(), last.state_digest, "another state loaded");
    drop(restored);
    assert!(sourced <= engine_bytes + image_bytes + buffer + slack, "loading took {sourced}");
    // A listing streams it too, either way; the count would see a file read whole.
    let (whole, _) = peak_above(|| ReadSource::read_file(storage, &last.name).expect("reads"));
    let (listed, _) = peak_above(|| snapshot::read_meta(storage, &last.name).expect("lists"));
    let (streamed, _) =
        peak_above(|| snapshot::read_meta_streaming(storage, &last.name).expect("lists"));
    assert!(whole >= file_bytes, "a file read whole in {whole} bytes");
    assert!(listed <= buffer + slack, "a listing through a source took {listed} bytes");
    assert!(streamed <= buffer + slack, "a listing streamed in {streamed} bytes");

    // What the memory check asks for covers the node's peak: the engines and the snapshot's
    // working memory, both at full tables.
    let engines = 2 * engine_bytes;
    let asked = engines + snapshot::working_bytes_max(&config) as usize;
    assert!(engines + above_max <= asked, "{} above {asked}", engines + above_max);
}

/// The most bytes allocated at once while `run` runs, above what was allocated before it,
/// and what it returns.
fn peak_above<T>(run: impl FnOnce() -> T) -> (usize, T) {
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = run();
    (PEAK.load(Ordering::Relaxed) - before, result)
}
