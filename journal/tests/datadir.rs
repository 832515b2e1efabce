//! The data directory against its manifest and epoch file: what recovery refuses, what it
//! clears, and what the epoch file promises.

mod common;

use common::{TempDir, config, generate, journal_with_snapshots, options};
use ringfence_core::pipeline::{Node, SnapshotHook};
use ringfence_core::{
    Action, Command, Engine, Epoch, RequestKey, Reserve, Sequence, SkuId, Timestamp, UserId,
};
use ringfence_journal::datadir::{self, CATCH_UP_FILE};
use ringfence_journal::epoch::{EPOCH_FILE, Epochs};
use ringfence_journal::error::JournalError;
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::format;
use ringfence_journal::manifest::{MANIFEST_FILE, MANIFEST_VERSION, Manifest};
use ringfence_journal::recovery::{self, recover, recover_from};
use ringfence_journal::snapshot::{self, SnapshotPolicy, Snapshotter};
use ringfence_journal::storage::{FileStorage, Storage, temp_name};
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;

/// Writes `count` workload commands in batches of 16 into the journal in `dir`; returns the
/// engine that applied them.
fn write_journal(dir: &std::path::Path, count: usize) -> Engine {
    let mut recovered = recover(dir, options(Durability::None)).unwrap();
    let mut workload = Workload::new(21, recovered.next_sequence, Timestamp(10));
    let mut shadow = Engine::new(config());
    for chunk in generate(&mut workload, &mut shadow, count).chunks(16) {
        for command in chunk {
            recovered.writer.append_command(Epoch(1), command).unwrap();
        }
        recovered.writer.end_batch().unwrap();
    }
    shadow
}

fn segment_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

fn refusal(dir: &std::path::Path) -> String {
    let error = recover(dir, options(Durability::Batch)).err().expect("recovery refuses");
    error.to_string()
}

#[test]
fn a_missing_or_cut_segment_is_refused_naming_the_file_and_its_sequences() {
    // Goal: a listed segment deleted, emptied or cut short, last or not, stops recovery with
    // the file, the sequences it held and both repairs; nothing is replayed without it.
    for (mode, which) in [("deleted", 2), ("emptied", 2), ("cut", 2), ("deleted", 0)] {
        let dir = TempDir::new("missing");
        write_journal(dir.path(), 3_000);
        let names = segment_names(dir.path());
        assert!(names.len() >= 3, "{names:?}");
        let index = if which == 0 { 0 } else { names.len() - 1 };
        let path = dir.path().join(&names[index]);
        // The records whole in the first 4096 bytes are left, and named.
        let left = record_ends(&path).iter().filter(|(_, end)| *end <= 4096).count() as u64;
        match mode {
            "deleted" => std::fs::remove_file(&path).unwrap(),
            "emptied" => std::fs::File::create(&path).unwrap().set_len(0).unwrap(),
            _ => {
                std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap()
            }
        }
        let message = refusal(dir.path());
        let first: u64 = names[index][..20].parse().unwrap();
        assert!(message.contains(&names[index]), "{mode}: {message}");
        let lost = if mode == "cut" { first + left } else { first };
        assert!(message.contains(&format!("--at-seq {lost}")), "{mode}: {message}");
        assert!(message.contains("backup or the standby"), "{mode}: {message}");
        if index == 0 {
            let next: u64 = names[1][..20].parse().unwrap();
            let held = format!("sequences {first}..={}", next - 1);
            assert!(message.contains(&held), "{mode}: {message}");
        } else {
            assert!(message.contains(&format!("sequences from {first} on")), "{mode}: {message}");
        }
        let word = if mode == "deleted" { "is missing" } else { "cut short or emptied" };
        assert!(message.contains(word), "{mode}: {message}");
    }
}

/// Writes `count` workload commands as [`write_journal`] does; returns them.
fn write_commands(dir: &std::path::Path, count: usize) -> Vec<ringfence_core::Sequenced> {
    let mut recovered = recover(dir, options(Durability::None)).unwrap();
    let mut workload = Workload::new(21, recovered.next_sequence, Timestamp(10));
    let commands = generate(&mut workload, &mut Engine::new(config()), count);
    for chunk in commands.chunks(16) {
        for command in chunk {
            recovered.writer.append_command(Epoch(1), command).unwrap();
        }
        recovered.writer.end_batch().unwrap();
    }
    commands
}

/// Each intact record of segment `path`, in order: its sequence and the byte offset it ends at.
fn record_ends(path: &std::path::Path) -> Vec<(u64, usize)> {
    let bytes = std::fs::read(path).unwrap();
    let mut offset = format::SEGMENT_HEADER_LEN;
    let mut ends = Vec::new();
    while let Some((header, len)) = format::check_record(&bytes[offset..]) {
        offset += len;
        ends.push((header.sequence.0, offset));
    }
    ends
}

/// Cuts the last segment (or the one before it, when `middle`) of a journal of 3,000 records
/// 40 bytes into one of its records, as a file system losing its tail leaves it; returns the
/// segment's name, its listed length, its first sequence and the first sequence not whole in
/// what is left.
fn cut_a_segment(dir: &std::path::Path, middle: bool) -> (String, u64, u64, u64) {
    let names = segment_names(dir);
    assert!(names.len() >= 3, "{names:?}");
    let name = names[names.len() - 1 - usize::from(middle)].clone();
    let path = dir.join(&name);
    let ends = record_ends(&path);
    let kept = ends.len() / 2;
    assert!(kept >= 2, "too few records in {name}: {}", ends.len());
    let (first, listed) = (ends[0].0, std::fs::metadata(&path).unwrap().len());
    // Records are 48 bytes or more: 40 bytes in, the next one is not whole.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(ends[kept - 1].1 as u64 + 40).unwrap();
    (name, listed, first, first + kept as u64)
}

#[test]
fn a_segment_cut_short_names_the_records_left_in_it_and_the_cut_that_keeps_them() {
    // Goal: a segment cut short, last or in the middle, still stops recovery, and the refusal
    // (and the check the tools report) counts the intact records left in it, names the first
    // sequence lost, and offers the truncation at that sequence, which keeps them all.
    for middle in [false, true] {
        let dir = TempDir::new("cut-short");
        write_commands(dir.path(), 3_000);
        let (name, _, first, lost) = cut_a_segment(dir.path(), middle);
        let message = refusal(dir.path());
        let left = lost - first;
        let counted = format!("{left} intact records (sequences {first}..={})", lost - 1);
        assert!(message.contains(&name) && message.contains(&counted), "{message}");
        assert!(message.contains(&format!("sequence {lost} is the first not whole")), "{message}");
        assert!(message.contains(&format!("--at-seq {lost}`, which keeps")), "{message}");
        assert_eq!(message.contains("the later segments too"), middle, "{message}");
        let mut source = ringfence_journal::scan::ReadOnlyDir::open(dir.path()).unwrap();
        let check = datadir::check(&mut source).unwrap();
        match check.problems.as_slice() {
            [ringfence_journal::error::JournalError::SegmentLength { intact, newest, .. }] => {
                assert_eq!((u64::from(*intact), *newest), (left, !middle));
            }
            problems => panic!("{problems:?}"),
        }
    }
}

#[test]
fn truncate_at_the_first_sequence_lost_in_a_cut_segment_keeps_every_record_before_it() {
    // Goal: on a segment cut short, `truncate` past the first sequence lost is refused naming
    // it; at it, the segment is put back at its listed length with every intact record kept
    // (a middle one's later segments dropped), and the node recovers the state of replaying
    // exactly those records.
    for middle in [false, true] {
        let dir = TempDir::new("cut-truncate");
        let commands = write_commands(dir.path(), 3_000);
        let (name, listed, _, lost) = cut_a_segment(dir.path(), middle);
        let storage = FileStorage::open_exclusive(dir.path()).unwrap();
        let beyond = recovery::truncate(&storage, Sequence(lost + 1)).unwrap_err().to_string();
        assert!(beyond.contains(&format!("truncate at {lost} or lower")), "{beyond}");
        let truncation = recovery::truncate(&storage, Sequence(lost)).unwrap();
        assert_eq!(truncation.restored, vec![storage.describe(&name)]);
        assert_eq!(truncation.segments_removed.len(), usize::from(middle));
        let newest = truncation.manifest.segments.last().unwrap();
        assert_eq!((format::segment_name(newest.first), newest.len), (name.clone(), listed));
        assert_eq!(std::fs::metadata(dir.path().join(&name)).unwrap().len(), listed);
        drop(storage);
        let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
        assert_eq!(recovered.next_sequence, Sequence(lost));
        let kept = &commands[..usize::try_from(lost - 1).unwrap()];
        assert_eq!(recovered.engine.state_digest(), common::digest_of(kept));
    }
}

#[test]
fn truncate_accepts_the_loss_of_a_missing_segment_and_rewrites_the_manifest() {
    // Goal: the explicit repair for a missing last segment drops its sequences, refuses to cut
    // above them, lists exactly what remains, and the node then starts where the journal ends.
    let dir = TempDir::new("truncate-missing");
    write_journal(dir.path(), 1_500);
    let names = segment_names(dir.path());
    let last = names.last().unwrap();
    std::fs::remove_file(dir.path().join(last)).unwrap();
    let first: u64 = last[..20].parse().unwrap();
    let storage = FileStorage::open_exclusive(dir.path()).unwrap();
    let above = recovery::truncate(&storage, Sequence(first + 5)).unwrap_err().to_string();
    assert!(above.contains(&format!("truncate at {first} or lower")), "{above}");
    let truncation = recovery::truncate(&storage, Sequence(first)).unwrap();
    assert_eq!(truncation.manifest.segments.len(), names.len() - 1);
    assert!(!truncation.manifest_rebuilt);
    drop(storage);
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(first));
}

#[test]
fn an_unlisted_segment_with_records_is_refused() {
    // Goal: a segment the manifest does not list but which holds records (copied in from
    // another journal, say) is never replayed or deleted: recovery refuses, naming it.
    let dir = TempDir::new("unlisted");
    let other = TempDir::new("unlisted-other");
    write_journal(dir.path(), 200);
    write_journal(other.path(), 1_500);
    let foreign = segment_names(other.path()).pop().unwrap();
    std::fs::copy(other.path().join(&foreign), dir.path().join(&foreign)).unwrap();
    let message = refusal(dir.path());
    assert!(message.contains(&foreign) && message.contains("does not list it"), "{message}");
    assert!(dir.path().join(&foreign).exists(), "the file is left for the operator");
}

#[test]
fn a_missing_manifest_is_refused_unless_the_directory_is_new() {
    // Goal: segments or snapshots without a manifest (deleted, or a pre-manifest build's
    // directory) are refused with the way out; a directory holding nothing starts fresh.
    let dir = TempDir::new("no-manifest");
    write_journal(dir.path(), 300);
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    let message = refusal(dir.path());
    assert!(message.contains("no manifest") && message.contains("no release"), "{message}");
    assert!(message.contains("journal truncate"), "{message}");
    // The suggested repair rebuilds it from the segments and loses nothing.
    let storage = FileStorage::open_exclusive(dir.path()).unwrap();
    let truncation = recovery::truncate(&storage, Sequence(301)).unwrap();
    assert!(truncation.manifest_rebuilt);
    drop(storage);
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(301));

    let fresh = TempDir::new("fresh");
    let recovered = recover(fresh.path(), options(Durability::Batch)).unwrap();
    assert!(recovered.report.initialised);
    assert_eq!(recovered.epochs, Epochs::FIRST);
    assert!(fresh.path().join(MANIFEST_FILE).exists() && fresh.path().join(EPOCH_FILE).exists());
}

#[test]
fn a_manifest_from_a_future_version_is_refused_and_left_alone() {
    // Goal: a newer build's manifest is never misread or overwritten: recovery and truncate
    // refuse, naming the version, and the file is unchanged.
    let dir = TempDir::new("future");
    write_journal(dir.path(), 100);
    let path = dir.path().join(MANIFEST_FILE);
    let mut bytes = Manifest::empty().encode();
    bytes[8..12].copy_from_slice(&(MANIFEST_VERSION + 1).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..12]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let message = refusal(dir.path());
    assert!(message.contains(&format!("format version {}", MANIFEST_VERSION + 1)), "{message}");
    assert!(message.contains("newer ringfence"), "{message}");
    let storage = FileStorage::open_exclusive(dir.path()).unwrap();
    assert!(recovery::truncate(&storage, Sequence(50)).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn leftovers_of_a_crash_are_removed_at_start() {
    // Goal: temporary files of interrupted atomic writes, and a segment retired in the
    // manifest whose file a crash left behind, are removed by the next start and reported.
    let dir = TempDir::new("leftovers");
    let engine = write_journal(dir.path(), 1_500);
    let names = segment_names(dir.path());
    let storage = FileStorage::open(dir.path()).unwrap();
    snapshot::write_now(&storage, &engine, Sequence(1_500)).unwrap();
    for name in ["snapshot-00000000000000000100.snap", MANIFEST_FILE] {
        storage.write_file(&temp_name(name), b"half written").unwrap();
    }
    let mut manifest = Manifest::decode(&std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap())
        .expect("manifest");
    // As retention writes it: the oldest segment dropped from the list, its file not yet gone.
    manifest.segments.remove(0);
    manifest.retired_below = manifest.segments[0].first;
    std::fs::write(dir.path().join(MANIFEST_FILE), manifest.encode()).unwrap();
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    let report = &recovered.report;
    assert_eq!(report.temporaries_removed.len(), 2, "{report}");
    assert_eq!(report.retired_leftovers.len(), 1, "{report}");
    assert!(!dir.path().join(&names[0]).exists());
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn epochs_round_trip_and_never_go_down() {
    // Goal: stored epochs are what the next start reads (not the last record's epoch), a
    // record cannot run ahead of the stored epoch, and epochs cannot be lowered.
    let dir = TempDir::new("epochs");
    let mut recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.epochs, Epochs::FIRST);
    let mut workload = Workload::new(2, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), 20);
    let refused = recovered.writer.append_command(Epoch(2), &commands[0]).unwrap_err();
    assert!(refused.to_string().contains("store the new epoch first"), "{refused}");
    let data_dir = recovered.writer.data_dir().clone();
    data_dir.store_epochs(Epochs { current: Epoch(2), promised: Epoch(5) }).unwrap();
    for command in &commands {
        recovered.writer.append_command(Epoch(2), command).unwrap();
    }
    recovered.writer.end_batch().unwrap();
    let lower = Epochs { current: Epoch(2), promised: Epoch(4) };
    assert!(data_dir.store_epochs(lower).unwrap_err().to_string().contains("never go down"));
    let bad = Epochs { current: Epoch(6), promised: Epoch(5) };
    assert!(data_dir.store_epochs(bad).is_err());
    drop((recovered, data_dir));
    let again = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(again.epochs, Epochs { current: Epoch(2), promised: Epoch(5) });
    assert_eq!(again.last_epoch, Epoch(2));
}

#[test]
fn epochs_and_markers_whose_directory_sync_failed_are_in_force_as_the_files_may_hold_them() {
    // Goal: a store of epochs that fails after the file was renamed into place (only the
    // directory's sync failed) leaves the new epochs in force, since a restart may read them;
    // one that fails before the rename leaves the old ones. Either way it reports the failure.
    // The catch-up marker, likewise.
    let disk = FaultStorage::new();
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let data_dir = recovered.writer.data_dir().clone();
    let first = Epochs { current: Epoch(1), promised: Epoch(3) };
    data_dir.store_epochs(first).unwrap();
    data_dir.caught_up().unwrap();

    disk.fail_matching(EPOCH_FILE);
    let refused = Epochs { current: Epoch(4), promised: Epoch(4) };
    assert!(data_dir.store_epochs(refused).is_err());
    assert_eq!(data_dir.epochs(), first, "nothing was renamed: the old epochs stand");
    disk.clear_faults();

    disk.fail_directory_syncs(ringfence_journal::fault::Failure::Io);
    let renamed = Epochs { current: Epoch(4), promised: Epoch(5) };
    let error = data_dir.store_epochs(renamed).unwrap_err();
    assert!(error.to_string().contains("directory"), "{error}");
    assert_eq!(data_dir.epochs(), renamed, "the file holds them: they are in force");
    assert_eq!(data_dir.current_epoch(), Epoch(1), "the journal waits until they are durable");
    disk.clear_faults();
    data_dir.store_epochs(renamed).unwrap();
    assert_eq!(data_dir.current_epoch(), Epoch(4), "stored again: durable");
    // The catch-up marker likewise: in force once the file stands, and every change waits
    // until the directory syncs again.
    disk.fail_directory_syncs(ringfence_journal::fault::Failure::Io);
    assert!(data_dir.mark_catching_up().is_err());
    assert!(data_dir.catching_up(), "the marker stands: it is in force");
    assert!(data_dir.mark_catching_up().is_err(), "in force, not yet durable");
    disk.clear_faults();
    assert!(data_dir.mark_catching_up().is_ok(), "in force, and now durable");
    drop((recovered, data_dir));
    let again = recover_from(disk.power_loss(None), options(Durability::Batch)).unwrap();
    assert_eq!(again.epochs, renamed, "a restart reads what was in force");
    assert!(again.writer.data_dir().catching_up(), "and the marker");
}

#[test]
fn records_of_an_epoch_whose_directory_sync_failed_wait_until_it_is_durable() {
    // Goal: a standby stores the epoch its primary streams in before taking its first record.
    // The store fails at the directory's sync: the epochs are in force (a restart may read
    // them), but the journal takes no record of the new epoch until storing them again has
    // made them durable; then records of it survive a power loss.
    let disk = FaultStorage::new();
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let dir = recovered.writer.data_dir().clone();
    let before = dir.epochs();
    let epoch = Epoch(before.current.0.max(before.promised.0) + 1);
    let raised = Epochs { current: epoch, promised: epoch };
    let mut workload = Workload::new(7, recovered.next_sequence, Timestamp(10));
    let commands = generate(&mut workload, &mut Engine::new(config()), 8);

    disk.fail_directory_syncs(ringfence_journal::fault::Failure::Io);
    assert!(dir.store_epochs(raised).is_err(), "the directory's sync failed");
    assert_eq!(dir.epochs(), raised, "in force");
    let refused = recovered.writer.append_command(epoch, &commands[0]).unwrap_err();
    assert!(refused.to_string().contains("store the new epoch first"), "{refused}");
    assert!(dir.store_epochs(raised).is_err(), "still failing: still not durable");
    disk.clear_faults();
    dir.store_epochs(raised).unwrap();
    for command in &commands {
        recovered.writer.append_command(epoch, command).unwrap();
    }
    recovered.writer.end_batch().unwrap();
    drop((recovered, dir));
    let after = recover_from(disk.power_loss(None), options(Durability::Batch)).unwrap();
    assert_eq!(after.epochs, raised, "the epochs its records carry");
    assert_eq!(after.last_epoch, epoch);
}

#[test]
fn a_catch_up_marker_whose_removal_was_not_synced_is_written_again_when_marked() {
    // Goal: `caught_up` removes the marker and the directory's sync fails: caught up is in
    // force. A later mark (a failed promotion putting its marker back) writes the marker
    // again, so a restart finds the directory catching up.
    let disk = FaultStorage::new();
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let dir = recovered.writer.data_dir().clone();
    assert!(dir.catching_up(), "a new directory catches up");
    disk.fail_directory_syncs(ringfence_journal::fault::Failure::Io);
    assert!(dir.caught_up().is_err(), "the directory's sync failed");
    assert!(!dir.catching_up(), "the marker is gone from the directory");
    disk.clear_faults();
    dir.mark_catching_up().unwrap();
    assert!(dir.catching_up());
    drop((recovered, dir));
    let restarted = recover_from(disk.power_loss(None), options(Durability::Batch)).unwrap();
    assert!(restarted.writer.data_dir().catching_up(), "a restart finds it catching up");
}

#[test]
fn an_epoch_file_behind_the_journal_or_inconsistent_is_refused() {
    // Goal: recovery refuses a journal whose last record is from an epoch above the file's
    // current one, a file whose promise is below its current epoch, and a missing file.
    let dir = TempDir::new("epoch-refused");
    let mut recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    let data_dir = recovered.writer.data_dir().clone();
    data_dir.store_epochs(Epochs { current: Epoch(3), promised: Epoch(3) }).unwrap();
    let mut workload = Workload::new(4, Sequence(1), Timestamp(1));
    for command in generate(&mut workload, &mut Engine::new(config()), 10) {
        recovered.writer.append_command(Epoch(3), &command).unwrap();
    }
    recovered.writer.end_batch().unwrap();
    drop((recovered, data_dir));
    let path = dir.path().join(EPOCH_FILE);
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, Epochs::FIRST.encode()).unwrap();
    let message = refusal(dir.path());
    assert!(
        message.contains("sequence 10) carries epoch 3, above the current epoch 1"),
        "{message}"
    );
    let mut inconsistent = Epochs { current: Epoch(3), promised: Epoch(3) }.encode();
    inconsistent[24..32].copy_from_slice(&2u64.to_le_bytes());
    let crc = crc32c::crc32c(&inconsistent[..32]);
    inconsistent[32..36].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, inconsistent).unwrap();
    let message = refusal(dir.path());
    assert!(message.contains("promised epoch 2 is below the current epoch 3"), "{message}");
    std::fs::remove_file(&path).unwrap();
    let message = refusal(dir.path());
    assert!(message.contains("epoch file") && message.contains("missing"), "{message}");
    std::fs::write(&path, good).unwrap();
    assert!(recover(dir.path(), options(Durability::Batch)).is_ok());
}

#[test]
fn a_failed_snapshot_leaves_no_temporary_file_and_is_counted() {
    // Goal: when writing a snapshot fails (a full disk), its temporary file is removed, the
    // failure is counted with its error, the journal carries on, and the next one succeeds.
    let disk = FaultStorage::new();
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let policy = SnapshotPolicy { every_commands: Some(100), keep: 2, ..SnapshotPolicy::default() };
    let data_dir = recovered.writer.data_dir().clone();
    let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
    let stats = snapshots.stats_handle();
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(6, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), 400);
    disk.fail_matching("snap");
    for (i, command) in commands.iter().enumerate() {
        if i == 250 {
            disk.clear_faults();
        }
        recovered.writer.append_command(Epoch(1), command).unwrap();
        recovered.writer.end_batch().unwrap();
        engine.apply(command);
        snapshots.after_apply(&engine, command);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while stats.get().pauses > stats.get().written + stats.get().failed {
            assert!(std::time::Instant::now() < deadline, "the snapshot writer is stuck");
            std::thread::yield_now();
        }
    }
    let stats = snapshots.finish();
    assert_eq!((stats.failed, stats.written), (2, 2), "{stats:?}");
    assert!(stats.last_error.as_ref().is_none_or(|e| e.contains("injected")), "{stats:?}");
    let names = disk.list().unwrap();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    assert_eq!(snapshot::list(&disk).unwrap().len(), 2);
    let counters = stats.counters();
    assert!(
        counters
            .iter()
            .any(|(name, _, value)| *name == "ringfence_snapshots_failed_total" && *value == 2.0)
    );
}

#[test]
fn a_disk_that_cannot_hold_a_segment_fails_the_start_not_the_first_write() {
    // Goal: start-up on a directory that cannot take the journal's first segment (a full
    // disk) fails at once with the cause, instead of a node that starts and then fails its
    // first write while reporting healthy.
    let disk = FaultStorage::new();
    disk.fail_matching(".seg");
    let error = match recover_from(disk.clone(), options(Durability::Batch)) {
        Ok(_) => panic!("a journal started on a disk that cannot hold a segment"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("00000000000000000001.seg"), "{error}");
    disk.clear_faults();
    let recovered = recover_from(disk, options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(1), "once the disk has room, it starts");
}

/// Runs `commands` through a journal on `disk` and a BLP engine with a snapshot every 100,
/// journaling `journaled(i, command)` in place of command `i`; returns the BLP engine and the
/// snapshot counters once the writer is done.
fn run_with_snapshots(
    disk: &FaultStorage,
    commands: &[ringfence_core::Sequenced],
    journaled: impl Fn(usize, &ringfence_core::Sequenced) -> ringfence_core::Sequenced,
) -> (Engine, snapshot::SnapshotStats) {
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let policy = SnapshotPolicy { every_commands: Some(100), keep: 2, ..SnapshotPolicy::default() };
    let data_dir = recovered.writer.data_dir().clone();
    let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
    let mut engine = Engine::new(config());
    for (i, command) in commands.iter().enumerate() {
        recovered.writer.append_command(Epoch(1), &journaled(i, command)).unwrap();
        recovered.writer.end_batch().unwrap();
        engine.apply(command);
        snapshots.after_apply(&engine, command);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while snapshots.stats().pauses > snapshots.stats().written + snapshots.stats().failed {
            assert!(std::time::Instant::now() < deadline, "the snapshot writer is stuck");
            std::thread::yield_now();
        }
    }
    (engine, snapshots.finish())
}

#[test]
fn snapshots_are_taken_from_a_shadow_that_follows_the_journal() {
    // Goal: the BLP hands over only a sequence and its hash; the writer's shadow engine applies
    // the journal up to there and writes the very state the BLP had (same digest on loading).
    let disk = FaultStorage::new();
    let mut workload = Workload::new(8, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), 300);
    let (engine, stats) = run_with_snapshots(&disk, &commands, |_, command| *command);
    assert_eq!((stats.written, stats.failed), (3, 0), "{stats:?}");
    assert_eq!(stats.shadow_records, 300, "each journal record applied once by the shadow");
    let (through, name) = snapshot::list(&disk).unwrap().pop().unwrap();
    assert_eq!(through, Sequence(300));
    let (restored, meta) = snapshot::load(&disk, &name, None).unwrap();
    assert_eq!(restored.state_digest(), engine.state_digest());
    assert_eq!(meta.running_hash, engine.running_hash());
}

#[test]
fn a_stopping_node_abandons_the_snapshot_in_hand_instead_of_waiting_for_it() {
    // Goal: when the processor drops its hook (the node stops), the writer gives up the
    // snapshot it is on at once. Here the job is through a record the journal does not hold
    // yet, so without the cancellation the writer would wait for it (five seconds) and then
    // count a failure; the node's final snapshot and the journal cover what it would have held.
    let disk = FaultStorage::new();
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let mut workload = Workload::new(12, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), 150);
    let policy = SnapshotPolicy { every_commands: Some(150), keep: 2, ..SnapshotPolicy::default() };
    let mut snapshots =
        Snapshotter::start(recovered.writer.data_dir().clone(), policy, config()).unwrap();
    let stats = snapshots.stats_handle();
    let mut engine = Engine::new(config());
    for (i, command) in commands.iter().enumerate() {
        // The last 50 are applied but not (yet) journaled.
        if i < 100 {
            recovered.writer.append_command(Epoch(1), command).unwrap();
            recovered.writer.end_batch().unwrap();
        }
        engine.apply(command);
        snapshots.after_apply(&engine, command);
    }
    assert_eq!(stats.get().pauses, 1, "the 150th command handed a snapshot over");
    drop(snapshots);
    let stats = stats.get();
    assert_eq!((stats.cancelled, stats.failed, stats.written), (1, 0, 0), "{stats:?}");
    let names = disk.list().unwrap();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    assert!(snapshot::list(&disk).unwrap().is_empty(), "no snapshot was written");
    let counters = stats.counters();
    assert!(counters.contains(&(
        "ringfence_snapshots_cancelled_total",
        "Snapshots abandoned because the node stopped during them.",
        1.0
    )));
}

#[test]
fn periodic_snapshots_build_the_shadow_engine_before_the_first_is_due() {
    // Goal: with snapshots every N commands the writer builds its shadow engine (from the
    // newest snapshot) as soon as it starts, so the first snapshot does not also pay for a
    // fresh engine and a replay from that snapshot; with snapshots only on request, it does
    // not spend the memory until one is asked for.
    let dir = TempDir::new("shadow-ready");
    write_journal(dir.path(), 200);
    for (every_commands, built) in [(Some(1_000), true), (None, false)] {
        let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
        let policy = SnapshotPolicy { every_commands, keep: 2, ..SnapshotPolicy::default() };
        let snapshots =
            Snapshotter::start(recovered.writer.data_dir().clone(), policy, config()).unwrap();
        let handle = snapshots.stats_handle();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while built && !handle.get().shadow_ready {
            assert!(std::time::Instant::now() < deadline, "the shadow engine was never built");
            std::thread::yield_now();
        }
        let stats = snapshots.finish();
        assert_eq!(stats.shadow_ready, built, "{every_commands:?}: {stats:?}");
        assert_eq!(stats.pauses, 0, "no snapshot was due");
        let counters = stats.counters();
        let ready = counters.iter().find(|c| c.0 == "ringfence_snapshot_shadow_ready");
        assert_eq!(ready.map(|c| c.2), Some(f64::from(u8::from(built))));
    }
}

#[test]
fn the_through_gauge_names_the_newest_snapshot_found_at_start_then_each_written() {
    // Goal: `ringfence_snapshot_through` says how far the newest snapshot reaches, so that an
    // operator sees how much journal a restart would replay: 0 on a new directory, the
    // written snapshot's sequence once one is written, and the same again after a restart,
    // before the restarted writer writes anything.
    let (disk, mut recovered, mut snapshots, commands) = snapshotting(100, 16, 150);
    let through = |stats: &snapshot::SnapshotStats| {
        let counters = stats.counters();
        counters.iter().find(|c| c.0 == "ringfence_snapshot_through").map(|c| c.2 as u64)
    };
    assert_eq!(through(&snapshots.stats()), Some(0), "a new directory has no snapshot");
    let stats = snapshots.stats_handle();
    let mut engine = Engine::new(config());
    for command in &commands {
        recovered.writer.append_command(Epoch(1), command).unwrap();
        recovered.writer.end_batch().unwrap();
        engine.apply(command);
        snapshots.after_apply(&engine, command);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stats.get().written < 1 {
        assert!(std::time::Instant::now() < deadline, "no snapshot: {:?}", stats.get());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let written = snapshots.finish();
    let newest = written.last.as_ref().expect("one snapshot written").through;
    assert_eq!(through(&written), Some(newest.0));
    drop(recovered);
    let restarted = recover_from(disk, options(Durability::Batch)).unwrap();
    let policy = SnapshotPolicy { every_commands: Some(100), keep: 2, ..SnapshotPolicy::default() };
    let again = Snapshotter::start(restarted.writer.data_dir().clone(), policy, config()).unwrap();
    let found = again.finish();
    assert_eq!((found.written, through(&found)), (0, Some(newest.0)), "{found:?}");
}

/// A journal on a fresh `FaultStorage` (durability `batch`), a snapshot writer thread taking
/// one every `every` commands, and `count` workload commands from `seed` to journal.
fn snapshotting(
    every: u64,
    seed: u64,
    count: usize,
) -> (
    FaultStorage,
    recovery::Recovered<FaultStorage>,
    Snapshotter<FaultStorage>,
    Vec<ringfence_core::Sequenced>,
) {
    let disk = FaultStorage::new();
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let policy =
        SnapshotPolicy { every_commands: Some(every), keep: 2, ..SnapshotPolicy::default() };
    let snapshots =
        Snapshotter::start(recovered.writer.data_dir().clone(), policy, config()).unwrap();
    let mut workload = Workload::new(seed, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), count);
    (disk, recovered, snapshots, commands)
}

#[test]
fn between_snapshots_the_shadow_follows_the_journal() {
    // Goal: under periodic snapshots the writer's shadow engine applies what the BLP applied
    // without waiting for a snapshot to be due, each record once, so that a snapshot applies
    // only the records since the last round; and the snapshot taken after it is the BLP's.
    let (disk, mut recovered, mut snapshots, commands) = snapshotting(400, 14, 400);
    let stats = snapshots.stats_handle();
    let mut engine = Engine::new(config());
    let mut journal = |range: std::ops::Range<usize>, engine: &mut Engine| {
        for command in &commands[range] {
            recovered.writer.append_command(Epoch(1), command).unwrap();
            recovered.writer.end_batch().unwrap();
            engine.apply(command);
            snapshots.after_apply(engine, command);
        }
    };
    journal(0..300, &mut engine);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stats.get().shadow_records < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "the shadow did not follow: {:?}",
            stats.get()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(stats.get().pauses, 0, "no snapshot was due yet");
    journal(300..400, &mut engine);
    let stats = snapshots.finish();
    assert_eq!((stats.written, stats.failed), (1, 0), "{stats:?}");
    assert_eq!(stats.shadow_records, 400, "each record applied once by the shadow");
    let (through, name) = snapshot::list(&disk).unwrap().pop().unwrap();
    assert_eq!(through, Sequence(400));
    let (restored, _) = snapshot::load(&disk, &name, None).unwrap();
    assert_eq!(restored.state_digest(), engine.state_digest());
}

#[test]
fn following_never_carries_the_shadow_past_a_snapshot_due() {
    // Goal: the shadow follows the journal only while no snapshot is due, so a job always
    // finds it at or before the job's sequence: with snapshots every few commands and rounds
    // of following in between, no snapshot fails and every one written is the BLP's state.
    // (A round that reads a sequence published just after a job was handed over is a window
    // of nanoseconds this test is unlikely to hit; `SnapshotWriter::follow` gives the order
    // of stores that keeps it safe.)
    let (disk, mut recovered, mut snapshots, commands) = snapshotting(7, 15, 3_000);
    let mut engine = Engine::new(config());
    let mut digests = std::collections::HashMap::new();
    for (i, command) in commands.iter().enumerate() {
        recovered.writer.append_command(Epoch(1), command).unwrap();
        recovered.writer.end_batch().unwrap();
        engine.apply(command);
        digests.insert(command.sequence, engine.state_digest());
        snapshots.after_apply(&engine, command);
        if i % 500 == 499 {
            // Room for rounds of following while jobs come and go.
            std::thread::sleep(std::time::Duration::from_millis(120));
        }
    }
    let stats = snapshots.finish();
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(stats.written >= 2, "{stats:?}");
    assert!(stats.shadow_records <= 3_000, "a record applied twice: {stats:?}");
    for (through, name) in snapshot::list(&disk).unwrap() {
        let (restored, _) = snapshot::load(&disk, &name, None).unwrap();
        assert_eq!(Some(&restored.state_digest()), digests.get(&through), "{name}");
    }
}

#[test]
fn a_journal_that_does_not_reproduce_the_blp_fails_the_snapshot_loudly() {
    // Goal: if the journal holds something other than what the BLP applied (here one command
    // journaled as a tick), the shadow reaches another running hash: the snapshot is refused,
    // counted and explained, and no snapshot of the wrong state is written.
    let disk = FaultStorage::new();
    let mut workload = Workload::new(9, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), 100);
    let client = |c: &ringfence_core::Sequenced| matches!(c.command, Command::Client { .. });
    let swapped = (50..100).find(|&i| client(&commands[i])).expect("client commands");
    let (_, stats) = run_with_snapshots(&disk, &commands, |i, command| {
        let mut journaled = *command;
        if i == swapped {
            journaled.command = Command::Tick;
        }
        journaled
    });
    assert_eq!((stats.written, stats.failed), (0, 1), "{stats:?}");
    let error = stats.last_error.unwrap();
    assert!(error.contains("does not reproduce the BLP's state"), "{error}");
    assert!(snapshot::list(&disk).unwrap().is_empty());
}

#[test]
fn a_new_or_truncated_directory_is_catching_up_until_it_caught_up() {
    // Goal: the catch-up marker says when a directory may lack records it once acknowledged:
    // a new directory and a truncated journal carry it, across a power loss; `caught_up`
    // removes it durably; a plain restart neither sets nor clears it.
    let dir = TempDir::new("catch-up");
    let storage = FaultStorage::new();
    let recovered = recover_from(storage.clone(), options(Durability::Batch)).unwrap();
    assert!(recovered.writer.data_dir().catching_up(), "a new directory acknowledged nothing");
    drop(recovered);
    let storage = storage.power_loss(None);
    let recovered = recover_from(storage.clone(), options(Durability::Batch)).unwrap();
    assert!(recovered.writer.data_dir().catching_up(), "the marker is durable");
    recovered.writer.data_dir().caught_up().unwrap();
    assert!(!recovered.writer.data_dir().catching_up());
    drop(recovered);
    let storage = storage.power_loss(None);
    let recovered = recover_from(storage.clone(), options(Durability::Batch)).unwrap();
    assert!(!recovered.writer.data_dir().catching_up(), "its removal is durable");
    drop(recovered);

    // An operator who deletes the marker while the node runs (to accept the loss) does not
    // break the node's own removal once it catches up.
    let other = FaultStorage::new();
    let running = recover_from(other.clone(), options(Durability::Batch)).unwrap();
    assert!(running.writer.data_dir().catching_up());
    other.remove(CATCH_UP_FILE).unwrap();
    running.writer.data_dir().caught_up().unwrap();
    assert!(!running.writer.data_dir().catching_up());
    drop(running);

    // A journal with records, truncated by the operator: catching up again.
    write_journal(dir.path(), 100);
    let files = FileStorage::open(dir.path()).unwrap();
    recover_from(files.clone(), options(Durability::Batch))
        .unwrap()
        .writer
        .data_dir()
        .caught_up()
        .unwrap();
    let restarted = recover_from(files.clone(), options(Durability::Batch)).unwrap();
    assert!(!restarted.writer.data_dir().catching_up(), "a restart is not a truncation");
    drop(restarted);
    recovery::truncate(&files, Sequence(50)).unwrap();
    let truncated = recover_from(files, options(Durability::Batch)).unwrap();
    assert_eq!(truncated.next_sequence, Sequence(50));
    assert!(truncated.writer.data_dir().catching_up(), "records were dropped");
}

#[test]
fn a_cut_that_would_leave_nothing_to_replay_from_is_refused() {
    // Goal: once retention retired the oldest segments, a truncation below every kept
    // snapshot would set them all aside and leave a directory no recovery can start from: it
    // is refused, naming the repairs that work, and changes nothing; a cut after the newest
    // snapshot goes ahead and recovers from it.
    let disk = FaultStorage::new();
    let mut workload = Workload::new(8, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), 2_350);
    let policy = SnapshotPolicy { every_commands: Some(300), keep: 1, ..SnapshotPolicy::default() };
    assert!(journal_with_snapshots(&disk, &commands, policy) > 0, "no segment retired");
    let first = ringfence_journal::datadir::check(&mut disk.clone()).unwrap().first_held();
    let (newest, _) = snapshot::list(&disk).unwrap().pop().unwrap();
    assert!(Sequence(1) < first && first <= newest, "first {first}, snapshot {newest}");
    let refused = recovery::truncate(&disk, newest).unwrap_err().to_string();
    assert!(refused.contains("leave nothing to replay from"), "{refused}");
    assert!(refused.contains("empty data directory"), "{refused}");
    let intact = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(intact.next_sequence, Sequence(2_351), "a refused cut changed the journal");
    drop(intact);
    recovery::truncate(&disk, newest.next()).unwrap();
    let cut = recover_from(disk, options(Durability::Batch)).unwrap();
    assert_eq!(cut.next_sequence, newest.next());
    assert_eq!(cut.engine.last_sequence(), engine_at(&commands, newest).last_sequence());
}

/// The engine after applying `commands` up to `through`.
fn engine_at(commands: &[ringfence_core::Sequenced], through: Sequence) -> Engine {
    let mut engine = Engine::new(config());
    commands.iter().take_while(|c| c.sequence <= through).for_each(|c| {
        engine.apply(c);
    });
    engine
}

/// A stepped node journaling through `disk`'s writer: a SKU, then `buyers` reservations, each
/// answered; then `finish` stops it. The journal's last sequence.
fn run_node(disk: &FaultStorage, buyers: u64, finish: impl FnOnce(Node)) -> Sequence {
    run_node_with(disk, Durability::Batch, buyers, finish)
}

/// [`run_node`] with the journal's durability policy given.
fn run_node_with(
    disk: &FaultStorage,
    durability: Durability,
    buyers: u64,
    finish: impl FnOnce(Node),
) -> Sequence {
    use ringfence_core::CreateSku;
    use ringfence_core::pipeline::{NoReplicator, NoSnapshots, NodeConfig, Topology};
    let recovered = recover_from(disk.clone(), options(durability)).unwrap();
    let config = NodeConfig::for_tests(Topology::Stepped);
    let next = recovered.next_sequence;
    let node = Node::start_with(
        config,
        recovered.engine,
        next,
        recovered.writer,
        NoReplicator::default(),
        NoSnapshots,
    )
    .unwrap();
    let mut session = node.session().unwrap();
    let sku = CreateSku {
        sku: SkuId(1),
        stock: 100,
        price_cents: 10,
        per_user_limit: 0,
        payment_timeout_ms: 600_000,
        sale_start: None,
        sale_end: None,
    };
    let mut actions = vec![Action::CreateSku(sku)];
    let reserve =
        |user| Action::Reserve(Reserve { user: UserId(user), sku: SkuId(1), qty: 1, coupon: None });
    actions.extend((1..=buyers).map(reserve));
    for (i, action) in actions.into_iter().enumerate() {
        let key = RequestKey::from_u128(u128::from(next.0) * 1_000 + i as u128);
        session.try_submit(Command::Client { key, action }, 0).unwrap();
        node.step();
        assert!(session.poll().is_some(), "command {i} unanswered");
    }
    drop(session);
    finish(node);
    Sequence(next.0 + buyers)
}

#[test]
fn a_node_marks_a_clean_stop_only_when_its_journal_is_whole() {
    // Goal: `Node::shutdown` of a node whose journal is whole leaves the clean-stop marker
    // naming its last sequence, which the next recovery checks and removes. A journal fenced by
    // a failing disk, and a node abandoned as a crash leaves it, mark nothing: their ends are
    // for recovery to find by reading.
    let disk = FaultStorage::new();
    let last = run_node(&disk, 5, |node| {
        node.shutdown().unwrap();
    });
    let stop = datadir::clean_stop(&disk).unwrap().expect("a clean stop is marked");
    assert_eq!(stop.last, last);
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.report.clean_stop, Some(last));
    assert_eq!(datadir::clean_stop(&disk).unwrap(), None, "the start removed the marker");
    drop(recovered);

    // Abandoned: a crash, so no marker.
    let last = run_node(&disk, 3, Node::abandon);
    assert_eq!(datadir::clean_stop(&disk).unwrap(), None, "a crash marked a clean stop");
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, last.next());
    drop(recovered);

    // Fenced: segment writes fail while the node runs; it is shut down, and marks nothing.
    let _ = run_node(&disk, 2, |node| {
        disk.fail_matching(".seg");
        let mut session = node.session().unwrap();
        let key = RequestKey::from_u128(u128::MAX);
        let reserve = Reserve { user: UserId(99), sku: SkuId(1), qty: 1, coupon: None };
        let _ = session.try_submit(Command::Client { key, action: Action::Reserve(reserve) }, 0);
        node.step();
        let answer = session.poll().expect("answered");
        assert!(answer.result.is_err(), "a write on a failing disk was acknowledged");
        drop(session);
        // The disk works again by the time the node stops: still no mark, since what the
        // journal holds after a failed write is not trusted.
        disk.clear_faults();
        let _ = node.shutdown();
    });
    assert_eq!(datadir::clean_stop(&disk).unwrap(), None, "a fenced journal marked a clean stop");
}

#[test]
fn a_primary_syncs_what_it_journaled_before_it_stops_counting_on_its_standby() {
    // Goal: under `none`, what a primary answered while its standby was in sync rested on the
    // standby's copy and this machine's page cache. `Promoter::sync_journal`, which a primary
    // calls before it goes on alone or to `async` (and before it records either in the
    // witness), syncs every record it journaled, so a power loss just after keeps them all;
    // without it, some are lost.
    for synced in [false, true] {
        let disk = FaultStorage::new();
        let mut lost_power = None;
        let last = run_node_with(&disk, Durability::None, 40, |node| {
            if synced {
                let through = node.promoter().sync_journal(std::time::Duration::from_secs(1));
                assert_eq!(through.unwrap(), Sequence(41), "a SKU and 40 reservations");
            }
            lost_power = Some(disk.power_loss(None));
            node.abandon();
        });
        let lost_power = lost_power.expect("the node ran");
        let recovered = recover_from(lost_power, options(Durability::None)).unwrap();
        let kept = Sequence(recovered.next_sequence.0 - 1);
        if synced {
            assert_eq!(kept, last, "records lost after a sync before going on alone");
        } else {
            assert!(kept < last, "unsynced records survived a power loss");
        }
    }
}

#[test]
fn an_interval_journal_on_an_idle_node_syncs_once_its_interval_is_up() {
    // Goal: under `interval:<ms>` a power loss may lose only the records of the last interval,
    // traffic or none. A node whose traffic stops syncs what it answered at the first idle
    // step after the interval is up, so a power loss then keeps every record; the same power
    // loss before the interval is up loses them, as the policy allows.
    use ringfence_core::pipeline::{
        Clock, ManualClock, NoReplicator, NoSnapshots, NodeConfig, NodeParts, Topology,
    };
    use std::sync::Arc;
    let mut workload = Workload::new(9, Sequence(1), Timestamp(10));
    let mut shadow = Engine::new(config());
    let commands = generate(&mut workload, &mut shadow, 30);
    for waited in [false, true] {
        let disk = FaultStorage::new();
        let durability = Durability::Interval { ms: 50 };
        let recovered = recover_from(disk.clone(), options(durability)).unwrap();
        let clock = Arc::new(ManualClock::new(Timestamp(10)));
        let parts = NodeParts {
            engine: recovered.engine,
            next_sequence: recovered.next_sequence,
            journal: recovered.writer,
            replicator: NoReplicator::default(),
            hook: NoSnapshots,
            clock: Arc::clone(&clock) as Arc<dyn Clock>,
        };
        let node = Node::start_parts(NodeConfig::for_tests(Topology::Stepped), parts).unwrap();
        let mut session = node.session().unwrap();
        for (index, sequenced) in commands.iter().enumerate() {
            session.try_submit(sequenced.command, index as u64).unwrap();
            node.step();
            clock.advance_ms(1);
        }
        assert_eq!(std::iter::from_fn(|| session.poll()).count(), commands.len(), "answered");
        if waited {
            clock.advance_ms(50);
            node.step();
        }
        let lost_power = disk.power_loss(None);
        node.abandon();
        let kept = recover_from(lost_power, options(durability)).unwrap().next_sequence.0 - 1;
        if waited {
            assert_eq!(kept, commands.len() as u64, "records lost after an idle interval");
        } else {
            assert!(kept < commands.len() as u64, "the interval's records survived a power loss");
        }
    }
}

#[test]
fn a_replica_syncs_what_it_holds_before_taking_office_so_a_power_loss_keeps_it() {
    // Goal: a standby journaling with durability `none` acknowledges records as written, not
    // synced: a power loss loses them. `Promoter::sync_journal`, which a promotion calls
    // before it takes the new epoch, syncs every record the replica was given, so the same
    // power loss just after keeps them all.
    use ringfence_core::pipeline::{Intake, NoReplicator, NoSnapshots, NodeConfig, Topology};
    use ringfence_core::record::RecordBuf;
    let mut workload = Workload::new(5, Sequence(1), Timestamp(10));
    let mut shadow = Engine::new(config());
    let commands = generate(&mut workload, &mut shadow, 40);
    for promoted in [false, true] {
        let disk = FaultStorage::new();
        let recovered = recover_from(disk.clone(), options(Durability::None)).unwrap();
        let node_config =
            NodeConfig { intake: Intake::Replica, ..NodeConfig::for_tests(Topology::Stepped) };
        let replica = Node::start_with(
            node_config,
            recovered.engine,
            recovered.next_sequence,
            recovered.writer,
            NoReplicator::default(),
            NoSnapshots,
        )
        .unwrap();
        let mut session = replica.session().unwrap();
        let mut buf = RecordBuf::default();
        for (index, command) in commands.iter().enumerate() {
            session.try_submit_record(buf.encode(Epoch(1), command), index as u64).unwrap();
            replica.step();
        }
        assert_eq!(std::iter::from_fn(|| session.poll()).count(), commands.len(), "acknowledged");
        if promoted {
            let synced = replica.promoter().sync_journal(std::time::Duration::from_secs(1));
            assert_eq!(synced.unwrap(), commands.last().unwrap().sequence);
        }
        let lost_power = disk.power_loss(None);
        replica.abandon();
        let recovered = recover_from(lost_power, options(Durability::None)).unwrap();
        let kept = recovered.next_sequence.0 - 1;
        if promoted {
            assert_eq!(kept, commands.len() as u64, "records lost after a sync before office");
        } else {
            assert!(kept < commands.len() as u64, "unsynced records survived a power loss");
        }
    }
}

/// The entries of `dir`, sorted, subdirectories with a trailing `/`.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() { format!("{name}/") } else { name }
        })
        .collect();
    names.sort();
    names
}

/// Puts `files` (a few bytes each) and empty subdirectories `dirs` in `dir`.
fn fill(dir: &std::path::Path, files: &[&str], dirs: &[&str]) {
    for file in files {
        std::fs::write(dir.join(file), "placed").unwrap();
    }
    for sub in dirs {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
}

#[test]
fn a_directory_without_a_journal_holding_anything_else_is_refused_and_left_as_it_was() {
    // Goal: recovery makes a new journal only in a directory holding nothing but a node's own
    // entries. Anyone else's file, subdirectory or temporary (a mistyped path) is refused by
    // name before anything is written or removed, and with the lock file this attempt made let
    // go the directory lists as before; past a few names the rest are counted.
    let many: Vec<String> = (1..=7).map(|n| format!("photo-{n}.jpg")).collect();
    let cases: [(&[&str], &[&str]); 4] = [
        (&["notes.txt"], &[]),
        (&[], &["photos"]),
        (&[".draft.tmp", datadir::ADMIN_TOKEN_FILE], &[datadir::LOST_AND_FOUND_DIR]),
        (&many.iter().map(String::as_str).collect::<Vec<_>>(), &[]),
    ];
    for (files, dirs) in cases {
        let dir = TempDir::new("foreign");
        fill(dir.path(), files, dirs);
        let before = entries(dir.path());
        let storage = FileStorage::open_exclusive(dir.path()).unwrap();
        let refused = recover_from(storage.clone(), options(Durability::Batch));
        let Err(error @ JournalError::ForeignEntries { .. }) = refused else {
            panic!("{files:?} {dirs:?}: not refused as someone else's")
        };
        let message = error.to_string();
        let first = before.iter().find(|name| !datadir::is_own_entry(name)).unwrap();
        assert!(message.contains(first.as_str()), "{message}");
        assert!(message.contains("--data-dir"), "{message}");
        if files.len() > datadir::FOREIGN_NAMED_MAX {
            assert!(message.contains("7 entries") && message.contains(" and 2 more"), "{message}");
            assert!(!message.contains("photo-7.jpg"), "{message}");
        }
        assert!(storage.release_removing_new_lock().unwrap(), "the lock file this attempt made");
        assert_eq!(entries(dir.path()), before, "the directory changed");
    }
}

#[test]
fn a_directory_of_a_nodes_own_entries_alone_is_made_a_data_directory() {
    // Goal: an empty directory, a file system's root (`lost+found/`), one holding the admin
    // token an operator put there first or a node's own leftovers, and one holding the archive
    // directory the storage retires into, are all made data directories.
    let own_leftovers =
        [datadir::ADMIN_TOKEN_FILE, ".epoch.tmp", ringfence_journal::lock::LOCK_FILE];
    let cases: [(&[&str], &[&str]); 4] = [
        (&[], &[]),
        (&[], &[datadir::LOST_AND_FOUND_DIR]),
        (&own_leftovers, &[datadir::ROLLBACK_DIR]),
        (&[], &["archive"]),
    ];
    for (files, dirs) in cases {
        let dir = TempDir::new("own");
        fill(dir.path(), files, dirs);
        let archive = dir.path().join("archive");
        let storage = FileStorage::open_exclusive(dir.path()).unwrap().with_archive(&archive);
        let recovered = recover_from(storage, options(Durability::Batch))
            .unwrap_or_else(|e| panic!("{files:?} {dirs:?}: {e}"));
        assert!(recovered.report.initialised, "{files:?} {dirs:?}");
        assert!(recovered.report.foreign_entries.is_empty(), "{files:?} {dirs:?}");
        assert!(dir.path().join(MANIFEST_FILE).exists(), "{files:?} {dirs:?}");
    }
}

#[test]
fn entries_beside_a_journal_are_reported_and_left_alone() {
    // Goal: a directory that holds a journal is read whatever else is dropped beside it, and
    // what is not a node's is reported and kept, a temporary of another name included: only a
    // node's own temporaries are a crash's leftovers to remove.
    let dir = TempDir::new("beside");
    write_journal(dir.path(), 100);
    std::fs::write(dir.path().join("notes.txt"), "someone's").unwrap();
    std::fs::write(dir.path().join(".draft.tmp"), "someone's").unwrap();
    std::fs::write(dir.path().join(temp_name(MANIFEST_FILE)), "half written").unwrap();
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(101), "the journal is read");
    assert_eq!(recovered.report.foreign_entries, [".draft.tmp", "notes.txt"]);
    assert_eq!(recovered.report.temporaries_removed.len(), 1, "{}", recovered.report);
    assert!(dir.path().join(".draft.tmp").exists() && dir.path().join("notes.txt").exists());
    assert!(!dir.path().join(temp_name(MANIFEST_FILE)).exists(), "a node's leftover is removed");
}
