//! A primary sends its newest snapshot to a standby a chunk at a time, read from the open file:
//! every byte, in order, each chunk within a frame, whole even when retention removes the
//! file's name while it is being sent, and never the whole file in memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ringfence_core::{
    Action, Command, CreateSku, Engine, EngineConfig, RequestKey, Sequence, Sequenced, SkuId,
    Timestamp,
};
use ringfence_journal::scan::ReadOnlyDir;
use ringfence_journal::snapshot;
use ringfence_journal::storage::FileStorage;
use ringfence_replicator::message::SNAPSHOT_CHUNK_MAX;
use ringfence_replicator::primary::SnapshotToSend;

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
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// An engine whose snapshot spans several chunks: many SKUs, each created under a request key
/// it remembers.
fn engine_of_several_chunks() -> (Engine, Sequence) {
    let (skus_max, request_keys_max) = (32_768, 32_768);
    let config = EngineConfig { skus_max, request_keys_max, ..EngineConfig::small() };
    let mut engine = Engine::new(config);
    let skus = 30_000_u64;
    for sku in 1..=skus {
        let spec = CreateSku {
            sku: SkuId(sku),
            stock: 1,
            price_cents: 100,
            per_user_limit: 1,
            payment_timeout_ms: 60_000,
            sale_start: None,
            sale_end: None,
        };
        let key = RequestKey::from_u128(u128::from(sku));
        let command = Command::Client { key, action: Action::CreateSku(spec) };
        engine.apply(&Sequenced { sequence: Sequence(sku), timestamp: Timestamp(1), command });
    }
    (engine, Sequence(skus))
}

#[test]
fn the_newest_snapshot_is_sent_whole_in_chunks_even_if_its_name_is_removed_meanwhile() {
    let dir = std::env::temp_dir().join(format!("ringfence-snapshot-send-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let storage = FileStorage::open(&dir).unwrap();
    let (engine, through) = engine_of_several_chunks();
    let meta = snapshot::write_now(&storage, &engine, through).unwrap();
    let path = dir.join(&meta.name);
    let written = std::fs::read(&path).unwrap();
    assert!(written.len() > 2 * SNAPSHOT_CHUNK_MAX, "{} bytes: one chunk", written.len());

    let mut source = ReadOnlyDir::open(&dir).unwrap();
    // What the test keeps of the chunks is allocated before the count starts.
    let mut sent = Vec::with_capacity(written.len());
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut sending = SnapshotToSend::newest(&mut source).unwrap();
    assert_eq!((sending.through, sending.len), (through, written.len() as u64));
    // Retention removes it once a newer one is written: the open file is sent all the same.
    std::fs::remove_file(&path).unwrap();
    let mut chunks = 0;
    sending
        .send_chunks(&mut |offset, chunk| {
            assert_eq!(offset, sent.len() as u64, "chunks in order, without a gap");
            assert!(!chunk.is_empty() && chunk.len() <= SNAPSHOT_CHUNK_MAX);
            sent.extend_from_slice(chunk);
            chunks += 1;
            Ok(())
        })
        .unwrap();
    let held = PEAK.load(Ordering::Relaxed) - before;
    assert!(held < SNAPSHOT_CHUNK_MAX + (256 << 10), "{held} bytes held to send {}", sent.len());
    assert!(sent == written, "the file sent is the file written");
    assert_eq!(chunks, written.len().div_ceil(SNAPSHOT_CHUNK_MAX));

    // A send the connection fails stops there, and says why.
    snapshot::write_now(&storage, &engine, through).unwrap();
    let mut again = SnapshotToSend::newest(&mut source).unwrap();
    let failed = again.send_chunks(&mut |_, _| Err(std::io::Error::other("the standby left")));
    assert_eq!(failed.unwrap_err(), "the standby left");
    std::fs::remove_dir_all(&dir).unwrap();
}
