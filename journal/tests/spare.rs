//! The next segment made ready ahead (`JournalWriter::prepare_segments_ahead`): crash safety
//! at every sync point, a crash's leftover spare, a spare that cannot be made (and one made on
//! a retry), a segment name already taken, and the free disk space the helper watches.

mod common;

use common::{acknowledged_by, config, generate, options};
use ringfence_core::{Engine, Epoch, Sequence, Sequenced, Timestamp};
use std::time::{Duration, Instant};

use ringfence_journal::datadir::DiskRoom;
use ringfence_journal::fault::{FAULT_FREE_BYTES, Failure, FaultStorage};
use ringfence_journal::format::segment_name;
use ringfence_journal::recovery::{Recovered, recover_from};
use ringfence_journal::snapshot::snapshot_name;
use ringfence_journal::spare::{DISK_CHECK_EVERY, SPARE_NAME};
use ringfence_journal::storage::Storage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;

fn commands(seed: u64, count: usize) -> Vec<Sequenced> {
    let mut workload = Workload::new(seed, Sequence(1), Timestamp(1_000));
    generate(&mut workload, &mut Engine::new(config()), count)
}

/// The helper's pace in the tests that watch it retry and look.
const QUICK_CHECKS: Duration = Duration::from_millis(5);

/// Waits (up to 30 s) until `done` holds, which the helper thread makes true.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A writer recovered on `disk` (durability `batch`) that makes its segments ready ahead, its
/// helper looking at the disk every `check_every`.
fn writer_with_spares(disk: &FaultStorage, check_every: Duration) -> Recovered<FaultStorage> {
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    recovered.writer.prepare_segments_ahead(check_every).unwrap();
    recovered
}

fn has_spare(storage: &FaultStorage) -> bool {
    storage.list().unwrap().iter().any(|name| name == SPARE_NAME)
}

/// Whether the helper has a spare ready within `within`: it makes one on its own thread, and
/// a writer that appends without pause may otherwise never be seen between the two.
fn spare_within(storage: &FaultStorage, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if has_spare(storage) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_power_loss_at_any_sync_point_of_segments_made_ready_ahead_loses_nothing_durable() {
    // Goal: with the next segment created on a helper thread and renamed into place when it is
    // needed, a power loss just after any sync point — the helper's or the writer's, with and
    // without torn write-back — recovers every acknowledged record, the state of a replay,
    // and a directory without the spare.
    let commands = commands(17, 3_000);
    let disk = FaultStorage::new();
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    disk.capture_sync_points();
    recovered.writer.prepare_segments_ahead(DISK_CHECK_EVERY).unwrap();
    let mut acknowledged = Vec::new();
    for batch in commands.chunks(16) {
        for command in batch {
            recovered.writer.append_command(Epoch(1), command).unwrap();
        }
        let acked = recovered.writer.end_batch().unwrap();
        acknowledged.push((disk.sync_points(), acked));
    }
    // The first segment was created by recovery; every later one was a spare.
    // The counts `/metrics` shows, with what the starts cost.
    let starts = recovered.writer.data_dir().segment_starts();
    let (started, from_spare) = (starts.started, starts.from_spare);
    assert!(started >= 4, "{started} segments: too few rotations to test");
    assert_eq!(from_spare, started - 1, "a segment created on the writer's thread");
    assert_eq!(starts.spares_failed, 0, "{starts:?}");
    assert!(starts.ns_last > 0 && starts.ns_max >= starts.ns_last, "{starts:?}");
    drop(recovered);
    let captures = disk.take_captures();
    let mut with_spare = 0;
    let mut outcomes = Vec::new();
    for capture in &captures {
        let durable = acknowledged_by(&acknowledged, capture.point);
        for torn in [None, Some(capture.point)] {
            let image = capture.disk.power_loss(torn);
            with_spare += u64::from(has_spare(&image));
            let at = format!("sync point {} ({}), torn {torn:?}", capture.point, capture.what);
            let again = recover_from(image.clone(), options(Durability::Batch))
                .unwrap_or_else(|e| panic!("{at}: recovery failed: {e}"));
            let last = again.next_sequence.0 - 1;
            assert!(last >= durable, "{at}: acknowledged {durable} but recovered {last}");
            drop(again);
            assert!(!has_spare(&image), "{at}: recovery left the spare");
            outcomes.push((last, image, at));
        }
    }
    assert!(with_spare > 0, "no power loss came while a spare was on disk");
    outcomes.sort_by_key(|(last, _, _)| *last);
    let mut reference = Engine::new(config());
    let mut applied = 0;
    for (last, image, at) in outcomes {
        while applied < last {
            reference.apply(&commands[applied as usize]);
            applied += 1;
        }
        let again = recover_from(image, options(Durability::Batch)).unwrap();
        assert_eq!(again.engine.state_digest(), reference.state_digest(), "{at}");
    }
}

#[test]
fn a_spare_left_by_a_killed_process_is_removed_at_start_and_one_never_used_is_removed_at_stop() {
    // Goal: the spare is a temporary file: a node killed with one on disk finds it removed at
    // its next start, with every record kept; a writer that stops removes its own.
    let commands = commands(23, 400);
    let disk = FaultStorage::new();
    let mut recovered = writer_with_spares(&disk, DISK_CHECK_EVERY);
    for command in &commands {
        recovered.writer.append_command(Epoch(1), command).unwrap();
    }
    recovered.writer.end_batch().unwrap();
    // The helper makes the spare while the writer goes on; wait (bounded) for it to be there.
    wait_until("the spare to be made", || has_spare(&disk));
    // A killed process runs no destructor: its helper and its spare stay as they were.
    let killed = disk.process_crash();
    assert!(has_spare(&killed), "the crash image holds no spare");
    let again = recover_from(killed.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(again.next_sequence, Sequence(401), "records lost");
    assert!(!has_spare(&killed), "the leftover spare is still there");
    let removed = &again.report.temporaries_removed;
    assert!(removed.iter().any(|name| name.ends_with(SPARE_NAME)), "{removed:?}");
    drop(again);
    // Stopped in an orderly way, the writer takes its spare with it.
    drop(recovered);
    assert!(!has_spare(&disk), "a stopped writer left its spare");
}

#[test]
fn a_spare_that_cannot_be_made_leaves_the_writer_creating_segments_itself() {
    // Goal: a helper that fails (the spare's name refused here, as a full disk would refuse
    // its allocation) costs nothing but the head start: the writer creates each segment when
    // it is needed, and nothing is lost.
    let commands = commands(29, 3_000);
    let disk = FaultStorage::new();
    disk.fail_matching_with("next-segment", Failure::NoSpace);
    let mut recovered = writer_with_spares(&disk, DISK_CHECK_EVERY);
    for batch in commands.chunks(16) {
        for command in batch {
            recovered.writer.append_command(Epoch(1), command).unwrap();
        }
        recovered.writer.end_batch().unwrap();
    }
    let starts = recovered.writer.data_dir().segment_starts();
    let (started, from_spare) = (starts.started, starts.from_spare);
    assert!(started >= 4, "{started} segments: too few rotations to test");
    assert_eq!(from_spare, 0, "a spare used that could not be made");
    // Each one that failed was counted (and logged) when it failed, not at the rotation.
    let failed = starts.spares_failed;
    assert!(failed >= started - 1, "{failed} failures counted for {started} segments");
    drop(recovered);
    let again = recover_from(disk.process_crash(), options(Durability::Batch)).unwrap();
    assert_eq!(again.next_sequence, Sequence(3_001), "records lost");
}

#[test]
fn a_spare_whose_file_was_deleted_is_replaced_by_a_segment_made_in_its_stead() {
    // Goal: an operator who deletes the spare's file (it looks like a leftover) while the node
    // runs costs the head start of that one segment, not the journal: the writer creates the
    // segment itself, and nothing is lost.
    let commands = commands(37, 3_000);
    let disk = FaultStorage::new();
    let mut recovered = writer_with_spares(&disk, DISK_CHECK_EVERY);
    let mut deleted = 0;
    for batch in commands.chunks(16) {
        if deleted < 2 && spare_within(&disk, std::time::Duration::from_millis(20)) {
            disk.remove(SPARE_NAME).unwrap();
            deleted += 1;
        }
        for command in batch {
            recovered.writer.append_command(Epoch(1), command).unwrap();
        }
        recovered.writer.end_batch().unwrap();
    }
    assert_eq!(deleted, 2, "the helper never made a spare to delete");
    let starts = recovered.writer.data_dir().segment_starts();
    assert!(starts.started >= 4, "{starts:?}: too few rotations to test");
    assert!(starts.from_spare < starts.started - 1, "a deleted spare was used: {starts:?}");
    drop(recovered);
    let again = recover_from(disk.process_crash(), options(Durability::Batch)).unwrap();
    assert_eq!(again.next_sequence, Sequence(3_001), "records lost");
}

#[test]
fn a_segment_name_already_taken_is_refused_not_overwritten_by_the_spare() {
    // Goal: renaming the spare into place would silently replace a file of the segment's name
    // (creating it would have failed): the writer refuses instead, and the file stays.
    let commands = commands(31, 3_000);
    let disk = FaultStorage::new();
    let mut recovered = writer_with_spares(&disk, DISK_CHECK_EVERY);
    let decoy = b"not the journal's".to_vec();
    for command in &commands {
        // A file under the name the next segment would take, if this record starts one.
        // (Not the segment the writer is in: it starts at the next record while still empty.)
        let name = segment_name(recovered.writer.next_sequence());
        if disk.list().unwrap().contains(&name) {
            recovered.writer.append_command(Epoch(1), command).unwrap();
            continue;
        }
        disk.write_file(&name, &decoy).unwrap();
        match recovered.writer.append_command(Epoch(1), command) {
            Ok(()) => disk.remove(&name).unwrap(),
            Err(error) => {
                let message = error.to_string();
                assert!(message.contains(&name), "{message}");
                assert!(message.contains("exists"), "{message}");
                assert_eq!(disk.read_file(&name).unwrap(), decoy, "the file was replaced");
                return;
            }
        }
    }
    panic!("no segment started: the decoy was never in the way");
}

#[test]
fn a_spare_refused_for_want_of_space_is_retried_and_used_once_there_is_room() {
    // Goal: a spare the disk refused is tried again while the current segment fills, so space
    // freed in the meantime gives the next segment its head start after all; the failure is
    // counted once, not at every retry. Fails with the retry removed: the writer would create
    // the segment itself.
    let commands = commands(37, 3_000);
    let disk = FaultStorage::new();
    disk.fail_matching_with("next-segment", Failure::NoSpace);
    let mut recovered = writer_with_spares(&disk, QUICK_CHECKS);
    let dir = recovered.writer.data_dir().clone();
    wait_until("the failure to be counted", || dir.segment_starts().spares_failed == 1);
    // Several retries refused since: still counted once.
    let refused = disk.faults_injected();
    wait_until("three more refused retries", || disk.faults_injected() >= refused + 3);
    assert_eq!(dir.segment_starts().spares_failed, 1, "each retry counted as a failure");
    assert!(!has_spare(&disk), "a spare made on a disk that refuses it");
    disk.clear_faults();
    wait_until("the spare to be made on a retry", || has_spare(&disk));
    let before = dir.segment_starts();
    let mut next = commands.iter();
    while dir.segment_starts().started == before.started {
        let command = next.next().expect("the commands fill a segment");
        recovered.writer.append_command(Epoch(1), command).unwrap();
        recovered.writer.end_batch().unwrap();
    }
    let after = dir.segment_starts();
    assert_eq!(after.from_spare, before.from_spare + 1, "the retried spare was not used");
    assert_eq!(after.spares_failed, 1, "{after:?}");
}

#[test]
fn the_helper_publishes_the_free_disk_space_and_follows_it() {
    // Goal: the free space `/metrics` shows is read by the helper after it makes a spare and
    // again every few seconds: it follows a disk that fills and one that is freed.
    let disk = FaultStorage::new();
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    let dir = recovered.writer.data_dir().clone();
    assert_eq!(dir.disk_room(), None, "free space known before the helper looked");
    recovered.writer.prepare_segments_ahead(QUICK_CHECKS).unwrap();
    wait_until("a first look at the disk", || dir.disk_room().is_some());
    let segment_len = options(Durability::Batch).segment_len;
    let room = dir.disk_room().unwrap();
    assert_eq!(room, DiskRoom { free_bytes: FAULT_FREE_BYTES, segment_len, snapshot_len: 0 });
    let gauges = room.gauges();
    assert_eq!(gauges[0], ("ringfence_data_dir_free_bytes", gauges[0].1, FAULT_FREE_BYTES));
    assert_eq!(gauges[1].2, FAULT_FREE_BYTES / segment_len, "segments of room");
    assert_eq!(gauges[2], ("ringfence_data_dir_low_space", gauges[2].1, 0));
    // The newest snapshot's size is read with the free space (a file by a snapshot's name).
    disk.write_file(&snapshot_name(Sequence(500)), &vec![7; 12_345]).unwrap();
    disk.write_file(&snapshot_name(Sequence(400)), &vec![7; 99_999]).unwrap();
    wait_until("the snapshot's size", || dir.disk_room().unwrap().snapshot_len == 12_345);
    // Another file's writes failing as a full disk's would: the disk is now full.
    disk.fail_matching("ballast");
    wait_until("the full disk to be seen", || dir.disk_room().unwrap().free_bytes == 0);
    let gauges = dir.disk_room().unwrap().gauges();
    assert_eq!((gauges[1].2, gauges[2].2), (0, 1), "no room and low: {gauges:?}");
    disk.clear_faults();
    let freed = || dir.disk_room().unwrap().free_bytes == FAULT_FREE_BYTES;
    wait_until("the freed disk to be seen", freed);
}

#[test]
fn low_space_is_less_than_the_next_snapshot_and_four_segments() {
    // Goal: the warning counts what the node will soon write — a snapshot as large as the
    // newest, and four segments — not segments alone: with a large state, room for many
    // segments can still be short of the next snapshot.
    let segment_len = 1 << 20;
    let room = |free_bytes, snapshot_len| DiskRoom { free_bytes, segment_len, snapshot_len };
    let needed = 4 * segment_len + (300 << 20);
    assert!(room(needed - 1, 300 << 20).low(), "short by a byte");
    assert!(!room(needed, 300 << 20).low(), "exactly enough");
    assert!(room(100 * segment_len, 300 << 20).low(), "100 segments, short of the snapshot");
    assert!(!room(4 * segment_len, 0).low(), "no snapshot yet: four segments are enough");
    assert!(room(4 * segment_len - 1, 0).low(), "fewer than four segments");
    assert!(room(0, u64::MAX).low(), "no overflow with a snapshot of every byte");
}
