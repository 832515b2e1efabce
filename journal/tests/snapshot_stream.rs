//! Snapshots streamed through a bounded buffer, written and read: the same bytes as before,
//! and no damaged file trusted. A snapshot is written in pieces and read back in pieces, its
//! body checksummed as it is decoded; these tests pin that the file is the format of
//! `docs/journal-format.md` byte for byte, and that whatever is damaged is refused before
//! anything decoded from it is used, with the errors a whole file's reading gave.

mod common;

use std::path::Path;

use common::{config, generate, options};
use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::{Engine, EngineConfig, EngineImage, Epoch, Sequence, Timestamp};
use ringfence_journal::epoch::Epochs;
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::recovery::recover_from;
use ringfence_journal::snapshot::{
    self, SNAPSHOT_HEADER_LEN, SnapshotError, SnapshotPolicy, Snapshotter, WriterPriority,
};
use ringfence_journal::storage::Storage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;

/// Offsets of the snapshot header (the byte diagram of `snapshot.rs`).
const IMAGE_LEN_OFFSET: usize = 56;
const BODY_CRC_OFFSET: usize = 64;
const THROUGH_EPOCH_OFFSET: usize = 114;
const HEADER_CRC_OFFSET: usize = 124;

/// A disk holding one snapshot of a workload's state under the small configuration; its name
/// and bytes.
fn snapshot_on_disk() -> (FaultStorage, String, Vec<u8>) {
    let config = EngineConfig::small();
    let mut engine = Engine::new(config.clone());
    let mut workload = Workload::new(11, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut engine, 600);
    let through = commands.last().expect("commands").sequence;
    let disk = FaultStorage::new();
    let meta = snapshot::write_now(&disk, &engine, through).expect("written");
    let bytes = disk.read_file(&meta.name).expect("read back");
    assert_eq!(bytes.len() as u64, meta.bytes, "the length the writer reported");
    (disk, meta.name, bytes)
}

/// Snapshot `name` holding `bytes`, loaded from the storage (streamed) and through a
/// `ReadSource` (whole): both answers, which must agree.
fn load_both(bytes: &[u8], name: &str) -> Result<u64, String> {
    let disk = FaultStorage::new();
    disk.write_file(name, bytes).expect("written");
    let streamed = snapshot::load_streaming(&disk, name, None);
    let whole = snapshot::load(&disk, name, None);
    let answer = |loaded: Result<(Engine, _), SnapshotError>| {
        loaded.map(|(engine, _)| engine.state_digest()).map_err(|error| error.to_string())
    };
    let (streamed, whole) = (answer(streamed), answer(whole));
    assert_eq!(streamed, whole, "streamed and whole loads disagree");
    streamed
}

/// Seals `bytes`' header again after a change to it or to the body: the body's checksum,
/// then the header's, as a writer would have.
fn reseal(bytes: &mut [u8]) {
    let body = crc32c::crc32c(&bytes[SNAPSHOT_HEADER_LEN..]);
    bytes[BODY_CRC_OFFSET..BODY_CRC_OFFSET + 4].copy_from_slice(&body.to_le_bytes());
    let header = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&header.to_le_bytes());
}

#[test]
fn the_fixture_snapshot_streamed_again_is_the_fixture_byte_for_byte() {
    // Goal: the format changed only by its version 3 epoch history. The version 2 fixture's
    // image, read back in pieces and written again by the streaming writer (through the same
    // sequence, on a disk with no journal, so no epoch is recorded, as the fixture recorded
    // none), is the fixture's file byte for byte — header, image, padding and SKU catalogue —
    // but for the version, an empty epoch history (its count, zero) and the checksums.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v2/data/snapshot-00000000000000000600.snap");
    let fixture = std::fs::read(&path).expect("the fixture's snapshot");
    let name = path.file_name().and_then(|name| name.to_str()).expect("a name");
    let disk = FaultStorage::new();
    disk.write_file(name, &fixture).expect("written");
    let (image, meta) = snapshot::read_image_streaming(&disk, name, None).expect("reads");
    assert_eq!(meta.through, Sequence(600));
    let again = FaultStorage::new();
    let written = snapshot::write(&again, &meta.config, &image, meta.through).expect("written");
    assert!(written.history.starts().is_empty(), "{:?}", written.history);
    let mut expected = fixture.clone();
    expected[8..12].copy_from_slice(&snapshot::SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    expected.extend_from_slice(&0_u64.to_le_bytes());
    reseal(&mut expected);
    assert_eq!(written.bytes, expected.len() as u64);
    assert!(again.read_file(name).expect("read back") == expected, "the file differs");
}

#[test]
fn every_cut_and_flipped_byte_is_refused_by_its_checksums_before_anything_is_decoded() {
    // Goal: a snapshot cut anywhere, or with any byte of it flipped, is refused, streamed or
    // whole, with the message a whole file's checks gave: a header checksum or a short header
    // for damage in the header, the body checksum for damage after it — never an error of
    // the image's decoding or of the restore, though a flipped image byte would decode or
    // restore to something: the checksum is checked before anything decoded is used.
    let (disk, name, bytes) = snapshot_on_disk();
    let (engine, _) = snapshot::load_streaming(&disk, &name, None).expect("the intact file");
    assert_eq!(load_both(&bytes, &name), Ok(engine.state_digest()));
    assert!(bytes.len() > 8 * SNAPSHOT_HEADER_LEN, "a snapshot too short: {}", bytes.len());
    // Every byte of the header and the image's own header, and a sample of the rest: each
    // load reads the whole file.
    let sampled = |at: &usize| *at < 2 * SNAPSHOT_HEADER_LEN || at % 97 == 0;
    let cuts = (0..bytes.len()).filter(|cut| sampled(cut) || bytes.len() - cut < 64);
    for cut in cuts {
        let refused = load_both(&bytes[..cut], &name).expect_err("a cut file loaded");
        let why = if cut < SNAPSHOT_HEADER_LEN { "shorter than a snapshot header" } else { "body" };
        assert!(refused.contains(why), "cut at {cut}: {refused}");
        assert!(cut < SNAPSHOT_HEADER_LEN || refused.contains("checksum"), "{cut}: {refused}");
    }
    for at in (0..bytes.len()).filter(sampled) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0xFF;
        let refused = load_both(&damaged, &name).expect_err("a damaged file loaded");
        let why = if at < 8 {
            "magic"
        } else if at < SNAPSHOT_HEADER_LEN {
            "header checksum"
        } else {
            "body checksum"
        };
        assert!(refused.contains(why), "flip at {at}: {refused}");
    }
}

#[test]
fn a_sealed_image_that_does_not_decode_is_refused_with_the_decoders_own_error() {
    // Goal: damage a checksum does not see (the file sealed again over it) is still refused:
    // an image the decoder refuses, with `EngineImage::decode`'s error for those bytes; a
    // file longer than its header says; and a count the configuration cannot hold, at its
    // count, before the table is read.
    let (_, name, bytes) = snapshot_on_disk();
    let image_len = u64::from_le_bytes(bytes[IMAGE_LEN_OFFSET..][..8].try_into().unwrap());
    let image = SNAPSHOT_HEADER_LEN..SNAPSHOT_HEADER_LEN + image_len as usize;
    let mut version = bytes.clone();
    version[image.start..image.start + 2].copy_from_slice(&99_u16.to_le_bytes());
    reseal(&mut version);
    let decoded = EngineImage::decode(&version[image.clone()]).expect_err("a version 99 image");
    assert_eq!(load_both(&version, &name), Err(format!("{}", invalid(&name, &decoded))));
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 16]);
    reseal(&mut longer);
    let refused = load_both(&longer, &name).expect_err("a longer file");
    assert!(refused.contains("lengths in the header do not match"), "{refused}");
    // The SKU table's count, just after the image's 56-byte header, past the configuration's
    // 64 SKUs but within the bytes: refused at the count, not read as entries.
    let mut skus = bytes.clone();
    skus[image.start + 56..image.start + 60].copy_from_slice(&65_u32.to_le_bytes());
    reseal(&mut skus);
    let refused = load_both(&skus, &name).expect_err("too many SKUs");
    assert!(refused.contains("counts 65 entries, more than the 64"), "{refused}");
}

/// The message of a snapshot refused for its image's `error`.
fn invalid(name: &str, error: &ringfence_core::ImageDecodeError) -> SnapshotError {
    SnapshotError::Invalid {
        file: format!("fault:{name}").into(),
        reason: format!("image: {error}"),
    }
}

#[test]
fn a_snapshot_write_that_fails_or_loses_power_leaves_the_old_one_or_the_new_one_whole() {
    // Goal: the streamed write keeps the atomic write's promises. A disk that fails it leaves
    // no temporary file and the previous snapshot loading; a power loss at each of its sync
    // points leaves the new snapshot absent or whole, and the previous one loading.
    let (disk, name, _) = snapshot_on_disk();
    let (engine, meta) = snapshot::load_streaming(&disk, &name, None).expect("loads");
    let later = Sequence(meta.through.0 + 1);
    disk.fail_matching("snapshot");
    assert!(snapshot::write_now(&disk, &engine, later).is_err(), "a full disk took it");
    disk.clear_faults();
    assert_eq!(disk.list().unwrap(), std::slice::from_ref(&name), "a leftover beside it");
    disk.capture_sync_points();
    let written = snapshot::write_now(&disk, &engine, later).expect("written");
    let captures = disk.take_captures();
    assert!(captures.len() >= 2, "a file sync and a directory sync: {}", captures.len());
    for capture in captures {
        let lost = capture.disk.power_loss(None);
        let (old, _) = snapshot::load_streaming(&lost, &name, None).expect("the old one");
        assert_eq!(old.state_digest(), engine.state_digest());
        if lost.file_len(&written.name).is_ok() {
            let (new, _) = snapshot::load_streaming(&lost, &written.name, None).expect("whole");
            assert_eq!(new.state_digest(), engine.state_digest(), "{}", capture.what);
        }
    }
}

#[test]
fn an_epoch_history_is_read_back_and_one_out_of_order_or_past_the_snapshot_is_refused() {
    // Goal: the epoch history at the end of the body (its count, then epoch and first
    // sequence per entry) reads back as written; one that checksums but is out of order (in
    // sequence or in epoch), names epoch 0, starts past the snapshot's last record or is cut short of its count is
    // refused, saying why, streamed or whole.
    let (_, name, bytes) = snapshot_on_disk();
    // Written with no journal: an empty history, its count the last 8 bytes.
    assert_eq!(bytes[bytes.len() - 8..], [0; 8]);
    let with = |count: u64, entries: &[(u64, u64)]| {
        let mut file = bytes[..bytes.len() - 8].to_vec();
        file.extend_from_slice(&count.to_le_bytes());
        for (epoch, first) in entries {
            file.extend_from_slice(&epoch.to_le_bytes());
            file.extend_from_slice(&first.to_le_bytes());
        }
        reseal(&mut file);
        file
    };
    let good = with(2, &[(1, 1), (3, 500)]);
    assert!(load_both(&good, &name).is_ok());
    let disk = FaultStorage::new();
    disk.write_file(&name, &good).expect("written");
    let meta = snapshot::read_meta_streaming(&disk, &name).expect("reads");
    let starts: Vec<(u64, u64)> = meta.history.starts().iter().map(|(e, s)| (e.0, s.0)).collect();
    assert_eq!(starts, [(1, 1), (3, 500)]);
    for (count, entries, why) in [
        (2, &[(3, 5), (1, 1)][..], "the epoch history: entries out of order"),
        (2, &[(1, 1), (1, 9)][..], "the epoch history: entries out of order"),
        // A journal's epochs never go down.
        (2, &[(3, 1), (2, 9)][..], "the epoch history: entries out of order"),
        (1, &[(0, 1)][..], "the epoch history: an entry of epoch or sequence zero"),
        (1, &[(1, 601)][..], "the epoch history goes past the through sequence"),
        (2, &[(1, 1)][..], "the lengths in the header do not match the file size"),
        (1 << 40, &[(1, 1)][..], "the lengths in the header do not match the file size"),
    ] {
        let refused = load_both(&with(count, entries), &name).expect_err("a bad history loaded");
        assert!(refused.contains(why), "{entries:?}: {refused}");
    }
}

#[test]
fn records_of_epoch_zero_leave_the_history_unknown_up_to_them_and_panic_nothing() {
    // Goal: no writer of ringfence journals a record of epoch 0, but the journal's API takes
    // one and recovery accepts it (its checksums hold). The snapshot writer's shadow applies
    // such records without panicking, and its snapshots' epoch history starts after them:
    // it never names an epoch for them.
    let disk = FaultStorage::new();
    let mut workload = Workload::new(5, Sequence(1), Timestamp(10));
    let commands = generate(&mut workload, &mut Engine::new(config()), 200);
    {
        let mut writer = recover_from(disk.clone(), options(Durability::Batch)).unwrap().writer;
        for command in &commands[..3] {
            writer.append_command(Epoch(0), command).unwrap();
        }
        writer.end_batch().unwrap();
    }
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(4));
    let (mut writer, mut engine) = (recovered.writer, recovered.engine);
    writer.data_dir().store_epochs(Epochs { current: Epoch(1), promised: Epoch(1) }).unwrap();
    let policy =
        SnapshotPolicy { every_commands: Some(50), keep: 2, writer: WriterPriority::Normal };
    let (mut snapshots, mut stepper) =
        Snapshotter::stepped(writer.data_dir().clone(), policy, config());
    for command in &commands[3..] {
        writer.append_command(Epoch(1), command).unwrap();
        engine.apply(command);
        snapshots.after_apply(&engine, command);
        writer.end_batch().unwrap();
        stepper.step();
    }
    let stats = snapshots.stats();
    assert!(stats.written >= 3 && stats.failed == 0, "{stats:?}");
    for (_, name) in snapshot::list(&disk).unwrap() {
        let meta = snapshot::read_meta_streaming(&disk, &name).unwrap();
        assert_eq!(meta.history.starts(), [(Epoch(1), Sequence(4))], "{name}");
    }
}

#[test]
fn a_snapshot_through_0_whose_header_names_an_epoch_is_refused_and_the_next_one_written() {
    // Goal: a node that took no command writes a snapshot through 0 at its clean stop, its
    // through epoch 0 (none). One whose header names an epoch (crafted, or damaged and
    // resealed) names the epoch of a record before the first: it is refused, streamed or
    // whole, rather than read as the history of record 0 (which panicked every snapshot
    // written over it, the shadow writer's and a clean stop's), and the next snapshot is
    // written as if it were not there.
    let disk = FaultStorage::new();
    let mut writer = recover_from(disk.clone(), options(Durability::Batch)).unwrap().writer;
    let meta = snapshot::write_now(&disk, &Engine::new(config()), Sequence(0)).expect("written");
    assert_eq!((meta.through, meta.through_epoch), (Sequence(0), None));
    let mut bytes = disk.read_file(&meta.name).expect("read back");
    bytes[THROUGH_EPOCH_OFFSET..THROUGH_EPOCH_OFFSET + 8].copy_from_slice(&7_u64.to_le_bytes());
    reseal(&mut bytes);
    disk.write_file(&meta.name, &bytes).expect("written");
    let refused = load_both(&bytes, &meta.name).expect_err("an epoch for record 0 loaded");
    assert!(refused.contains("names the epoch of a record before the first"), "{refused}");
    assert!(snapshot::read_meta_streaming(&disk, &meta.name).is_err());
    let mut workload = Workload::new(5, Sequence(1), Timestamp(10));
    let mut engine = Engine::new(config());
    let commands = generate(&mut workload, &mut engine, 20);
    writer.data_dir().store_epochs(Epochs { current: Epoch(7), promised: Epoch(7) }).unwrap();
    for command in &commands {
        writer.append_command(Epoch(7), command).unwrap();
    }
    writer.end_batch().unwrap();
    drop(writer);
    let through = commands.last().expect("commands").sequence;
    let next = snapshot::write_now(&disk, &engine, through).expect("the next snapshot");
    assert_eq!(next.history.starts(), [(Epoch(7), Sequence(1))]);
}
