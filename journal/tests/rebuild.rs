//! `journal rebuild`: damage a snapshot covers is repaired without dropping a record, also when
//! a power loss cuts the rebuild off part way; damage no snapshot covers is refused untouched.

mod common;

use common::{config, digest_of, files, generate, journal_with_snapshots, options, record_at};
use ringfence_core::{Engine, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::error::JournalError;
use ringfence_journal::fault::{FaultStorage, SyncCapture};
use ringfence_journal::rebuild::{self, SUPERSEDED_SUFFIX};
use ringfence_journal::recovery::{self, recover_from};
use ringfence_journal::scan::ReadSource;
use ringfence_journal::snapshot::{self, SnapshotPolicy};
use ringfence_journal::storage::Storage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;
use ringfence_journal::{datadir, format};

const COMMANDS: usize = 2_000;

/// A journal of [`COMMANDS`] commands with a snapshot every 300 (the newest three kept), and
/// the commands.
fn journal() -> (FaultStorage, Vec<Sequenced>) {
    let mut workload = Workload::new(53, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), COMMANDS);
    let disk = FaultStorage::new();
    let policy = SnapshotPolicy { every_commands: Some(300), keep: 3, ..SnapshotPolicy::default() };
    journal_with_snapshots(&disk, &commands, policy);
    (disk, commands)
}

/// The newest snapshot whose next record is not the first of its segment (so a rebuild after
/// it copies records), and a record three before it in the same segment, damaged.
fn damage_covered(disk: &FaultStorage) -> (Sequence, Sequence) {
    let snapshots = snapshot::list(disk).unwrap();
    for (through, _) in snapshots.into_iter().rev() {
        let (segment, _) = record_at(disk, through.next());
        let first = format::parse_segment_name(&segment).unwrap();
        if first.0 + 3 <= through.0 {
            let damaged = Sequence(through.0 - 3);
            let (name, offset) = record_at(disk, damaged);
            disk.corrupt(&name, offset + 20, 0x5A);
            return (through, damaged);
        }
    }
    panic!("no snapshot falls mid-segment");
}

/// Recovers the image a power loss leaves at each sync point of a rebuild, torn and not: each
/// either refuses as before the rebuild (`as_before`, the marker not yet written) or recovers
/// every command, state `digest`, through `last`. How many refused as before, how many
/// recovered, and how many images held the marker.
fn recover_at_each_sync_point(
    captures: &[SyncCapture],
    (digest, last): (u64, Sequence),
    as_before: impl Fn(&JournalError) -> bool,
) -> (u64, u64, u64) {
    let (mut before, mut finished, mut under_way) = (0, 0, 0);
    for capture in captures {
        for torn in [None, Some(capture.point)] {
            let image = capture.disk.power_loss(torn);
            let what = format!("sync point {} ({}), torn {torn:?}", capture.point, capture.what);
            let marked = rebuild::rebuilding(&image).unwrap();
            under_way += u64::from(marked.is_some());
            match recover_from(image, options(Durability::Batch)) {
                Ok(recovered) => {
                    assert_eq!(recovered.next_sequence, last.next(), "{what}");
                    assert_eq!(recovered.engine.state_digest(), digest, "{what}");
                    finished += 1;
                }
                Err(error) if marked.is_none() && as_before(&error) => before += 1,
                Err(error) => panic!("{what}: marker {marked:?}: {error}"),
            }
        }
    }
    (before, finished, under_way)
}

#[test]
fn a_rebuild_refused_for_a_damaged_segment_header_changes_nothing() {
    // Goal: the new segment's header is made from the header of the segment the records after
    // the snapshot are copied from; with that header damaged the rebuild is refused before its
    // marker is written, naming the header, and the directory is left as it was.
    let (disk, _) = journal();
    let (through, _) = snapshot::list(&disk).unwrap().pop().expect("a snapshot");
    let (segment, _) = record_at(&disk, through.next());
    let first = format::parse_segment_name(&segment).unwrap();
    assert!(first <= through, "the snapshot's next record starts {segment}");
    disk.corrupt(&segment, 20, 0xFF);
    let before = files(&disk);
    let refused = rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(rebuild::rebuilding(&disk).unwrap().is_none(), "a refused rebuild left its marker");
    assert_eq!(files(&disk), before, "a refused rebuild changed the directory");
    assert!(refused.contains("header is damaged"), "{refused}");
}

#[test]
fn a_rebuild_after_a_covering_snapshot_drops_nothing() {
    // Goal: with a record damaged that the newest snapshot covers, recovery refuses; the
    // rebuild starts the journal after the snapshot, copying the records after it out of the
    // damaged segment, and the node then recovers every command, state equal to a replay.
    let (disk, commands) = journal();
    let (through, damaged) = damage_covered(&disk);
    let error = recover_from(disk.clone(), options(Durability::Batch)).err().expect("refused");
    assert!(
        matches!(error, JournalError::Corrupt { sequence, .. } if sequence == damaged),
        "{error}"
    );
    assert!(error.to_string().contains("journal rebuild"), "{error}");

    let rebuilt = rebuild::rebuild(&disk).unwrap();
    assert_eq!(rebuilt.through, through);
    assert_eq!(rebuilt.last, Sequence(COMMANDS as u64));
    assert!(rebuilt.new_segment.is_some() && rebuilt.copied > 0, "{rebuilt:?}");
    let names = disk.list().unwrap();
    assert!(rebuild::rebuilding(&disk).unwrap().is_none(), "the marker outlived the rebuild");
    for name in &names {
        if let Some(first) = format::parse_segment_name(name) {
            assert!(first > through, "{name} still in the journal");
        }
    }
    let superseded = names.iter().filter(|n| n.ends_with(SUPERSEDED_SUFFIX)).count();
    assert_eq!(superseded, rebuilt.superseded.len());
    assert!(superseded >= 1, "the damaged segment is set aside, not deleted");

    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(COMMANDS as u64 + 1));
    assert_eq!(recovered.report.snapshot.as_ref().map(|meta| meta.through), Some(through));
    assert_eq!(recovered.report.replayed, COMMANDS as u64 - through.0);
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands));
    drop(recovered);
    // A second rebuild finds nothing left to repair.
    let again = rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(again.contains("intact"), "{again}");
}

#[test]
fn a_rebuild_cut_off_at_any_sync_point_is_finished_at_the_next_start() {
    // Goal: a power loss at any sync point of a rebuild leaves either the damaged journal as it
    // was (refused, as before) or a directory recovery finishes rebuilding and recovers in
    // full: never a journal missing a record, never one that refuses after the marker.
    let (disk, commands) = journal();
    let (_, damaged) = damage_covered(&disk);
    let copy = disk.process_crash();
    copy.capture_sync_points();
    rebuild::rebuild(&copy).unwrap();
    let captures = copy.take_captures();
    assert!(captures.len() >= 5, "{} sync points", captures.len());
    let last = Sequence(COMMANDS as u64);
    let as_before = |error: &JournalError| matches!(error, JournalError::Corrupt { sequence, .. } if *sequence == damaged);
    let (before, finished, under_way) =
        recover_at_each_sync_point(&captures, (digest_of(&commands), last), as_before);
    assert!(before > 0 && finished > 0 && under_way > 0, "{before} {finished} {under_way}");
}

#[test]
fn damage_no_snapshot_covers_is_refused_and_nothing_changes() {
    // Goal: a rebuild refuses, naming the heal and truncate repairs, when the damage lies
    // after every snapshot, when the journal is intact, and when the only damage is a crash's
    // torn tail; the directory is untouched each time.
    let (disk, _) = journal();
    let intact = rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(intact.contains("intact"), "{intact}");
    let newest = snapshot::list(&disk).unwrap().pop().unwrap().0;
    let damaged = Sequence(newest.0 + 10);
    let (name, offset) = record_at(&disk, damaged);
    disk.corrupt(&name, offset + 20, 0x5A);
    let files = |disk: &FaultStorage| {
        let mut names = disk.list().unwrap();
        names.sort();
        names.into_iter().map(|n| (disk.live_bytes(&n), n)).collect::<Vec<_>>()
    };
    let before = files(&disk);
    let refused = rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(refused.contains(&format!("damaged at sequence {damaged}")), "{refused}");
    assert!(refused.contains(&format!("--at-seq {damaged}")), "{refused}");
    assert!(refused.contains("ringfence journal truncate fault:"), "{refused}");
    assert!(refused.contains("`ringfence journal heal fault: --from <its directory>`"));
    assert!(before == files(&disk), "a refused rebuild changed the directory");

    // The last record torn, as a crash leaves it: recovery's to clear, not a rebuild's.
    let (disk, commands) = journal();
    let last = commands.last().unwrap().sequence;
    let (name, offset) = record_at(&disk, last);
    disk.corrupt(&name, offset + 20, 0x5A);
    let torn = rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(torn.contains("torn tail") && torn.contains("clears it on start"), "{torn}");
}

#[test]
fn a_last_record_rotted_at_rest_is_refused_not_dropped_as_a_torn_write() {
    // Goal: with damage a snapshot covers, a rebuild copies the records after the snapshot; a
    // last record with one bit flipped at rest (which recovery refuses, after a crash as after
    // a clean stop: it may have been acknowledged) is not a crash's torn write for the copy to
    // stop before. The rebuild refuses, naming it, and changes nothing. Fails with the torn
    // tail judged by position alone: the record was dropped and the rebuild reported success.
    let (disk, commands) = journal();
    let last = commands.last().unwrap().sequence;
    let (last_segment, last_offset) = record_at(&disk, last);
    // A snapshot whose next record is in the last segment, past its first record: the copy
    // runs to the journal's end within that segment.
    let snapshots = snapshot::list(&disk).unwrap();
    let first = format::parse_segment_name(&last_segment).unwrap();
    let (through, _) = snapshots
        .into_iter()
        .rev()
        .find(|(through, _)| first.0 + 3 <= through.0 && through.0 < last.0)
        .expect("a snapshot inside the last segment");
    let (name, offset) = record_at(&disk, Sequence(through.0 - 3));
    assert_eq!(name, last_segment);
    disk.corrupt(&name, offset + 20, 0x5A);
    disk.corrupt(&last_segment, last_offset + 20, 0x10);
    let before: Vec<_> = disk.list().unwrap().into_iter().map(|n| disk.live_bytes(&n)).collect();
    let refused = rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(refused.contains(&format!("sequence {last}")), "{refused}");
    assert!(refused.contains("damaged too"), "{refused}");
    let after: Vec<_> = disk.list().unwrap().into_iter().map(|n| disk.live_bytes(&n)).collect();
    assert!(before == after, "a refused rebuild changed the directory");
}

#[test]
fn a_journal_started_anew_from_an_installed_snapshot_can_be_rebuilt() {
    // Goal: a standby that took its primary's snapshot drops its whole journal first; one
    // whose retention had retired segments past that snapshot's sequence kept the old
    // retirement mark in the manifest, above the new journal's first segment, and a rebuild
    // then set the segment aside without listing its copy (simulator seed 6197 under
    // `--unsynced --async`: the node could not start again). The truncation lowers the mark
    // to the cut, and the journal rebuilds and recovers in full.
    let (disk, commands) = journal();
    let retired = datadir::check(&mut disk.clone()).unwrap().manifest.unwrap().retired_below;
    let from = Sequence(600);
    assert!(retired > from.next(), "retention retired past the snapshot to install: {retired:?}");
    let primary = FaultStorage::new();
    let policy = SnapshotPolicy { every_commands: Some(300), ..SnapshotPolicy::default() };
    journal_with_snapshots(&primary, &commands[..from.0 as usize], policy);
    let bytes = ReadSource::read_file(&primary, &snapshot::snapshot_name(from)).unwrap();

    recovery::truncate(&disk, Sequence(1)).unwrap();
    snapshot::install(&disk, from, &bytes).unwrap();
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, from.next());
    let (through, end) = (Sequence(700), 800);
    for command in &commands[from.0 as usize..end] {
        recovered.writer.append_command(Epoch(1), command).unwrap();
        recovered.engine.apply(command);
        if command.sequence == through {
            recovered.writer.end_batch().unwrap();
            snapshot::write_now(&disk, &recovered.engine, through).unwrap();
        }
    }
    recovered.writer.end_batch().unwrap();
    drop(recovered);
    let manifest = datadir::check(&mut disk.clone()).unwrap().manifest.unwrap();
    let first = manifest.segments.first().unwrap().first;
    assert!(manifest.retired_below <= first, "retired past the journal's start: {manifest:?}");

    let damaged = Sequence(through.0 - 3);
    let (name, offset) = record_at(&disk, damaged);
    assert_eq!(record_at(&disk, through.next()).0, name, "the damage and the next record share");
    disk.corrupt(&name, offset + 20, 0x5A);
    let rebuilt = rebuild::rebuild(&disk).unwrap();
    assert_eq!((rebuilt.through, rebuilt.last), (through, Sequence(end as u64)));
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(end as u64 + 1));
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands[..end]));
}

/// A journal of 4 500 commands with a snapshot every 1 000 (four kept, so that retention keeps
/// every segment from the first), and the commands.
fn long_journal() -> (FaultStorage, Vec<Sequenced>) {
    let mut workload = Workload::new(59, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), 4_500);
    let disk = FaultStorage::new();
    let policy =
        SnapshotPolicy { every_commands: Some(1_000), keep: 4, ..SnapshotPolicy::default() };
    journal_with_snapshots(&disk, &commands, policy);
    (disk, commands)
}

/// The manifest's segments, oldest first.
fn listed(disk: &FaultStorage) -> Vec<Sequence> {
    let manifest = datadir::check(&mut disk.clone()).unwrap().manifest.expect("a manifest");
    manifest.segments.iter().map(|segment| segment.first).collect()
}

#[test]
fn segments_missing_that_a_snapshot_covers_are_rebuilt_past_without_loss() {
    // Goal: the oldest listed segments gone (deleted by hand, lost with a disk) while a
    // snapshot holds the state through their last record: recovery refuses, naming the
    // rebuild; the rebuild starts the journal after the snapshot, and every command is
    // recovered, state equal to a replay. Fails where a rebuild refuses any missing segment
    // (it pointed at `truncate`, which drops everything after the missing segment).
    let (disk, commands) = long_journal();
    let segments = listed(&disk);
    let newest = snapshot::list(&disk).unwrap().pop().unwrap().0;
    // Every listed segment whose records the newest snapshot holds, but the last such one.
    let covered: Vec<Sequence> =
        segments.windows(2).filter(|pair| pair[1].0 <= newest.0 + 1).map(|p| p[0]).collect();
    assert!(covered.len() >= 2, "segments {segments:?}, snapshot through {newest}");
    let gone = &covered[..2];
    for first in gone {
        disk.remove(&format::segment_name(*first)).unwrap();
    }
    let error = recover_from(disk.clone(), options(Durability::Batch)).err().expect("refused");
    assert!(matches!(error, JournalError::SegmentMissing { .. }), "{error}");
    assert!(error.to_string().contains("`ringfence journal rebuild fault:`"), "{error}");

    // The oldest snapshot holding the state through the last record the missing ones held.
    let held_through = Sequence(segments[2].0 - 1);
    let snapshots = snapshot::list(&disk).unwrap();
    let after = snapshots.iter().map(|(through, _)| *through).find(|t| *t >= held_through);
    let rebuilt = rebuild::rebuild(&disk).unwrap();
    assert_eq!(Some(rebuilt.through), after);
    assert_eq!(rebuilt.last, commands.last().unwrap().sequence);
    assert_eq!(listed(&disk).first(), Some(&rebuilt.through.next()), "{:?}", listed(&disk));
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, commands.last().unwrap().sequence.next());
    assert_eq!(recovered.report.snapshot.as_ref().map(|meta| meta.through), Some(newest));
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands));
}

#[test]
fn a_missing_segment_no_snapshot_covers_is_refused_and_nothing_changes() {
    // Goal: a rebuild refuses, changing nothing, when the missing segment held records after
    // every snapshot (naming the restore and the truncate), and when the newest segment is
    // missing (nothing says where its records ended).
    let (disk, _) = long_journal();
    let segments = listed(&disk);
    let newest = snapshot::list(&disk).unwrap().pop().unwrap().0;
    // A segment (not the newest) holding records after the newest snapshot.
    let after = segments.windows(2).find(|pair| pair[1].0 > newest.0 + 1).map(|pair| pair[0]);
    let after = after.expect("a segment the newest snapshot does not cover, not the last");
    disk.remove(&format::segment_name(after)).unwrap();
    let before = files(&disk);
    let refused = rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(refused.contains("no intact snapshot holds the state through"), "{refused}");
    assert!(refused.contains(&format!("--at-seq {after}")), "{refused}");
    assert_eq!(files(&disk), before, "a refused rebuild changed the directory");

    let (disk, _) = long_journal();
    let last = *listed(&disk).last().unwrap();
    disk.remove(&format::segment_name(last)).unwrap();
    let before = files(&disk);
    let refused = rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(refused.contains("is missing, and the node did not stop cleanly"), "{refused}");
    assert!(refused.contains(&format!("--at-seq {last}")), "{refused}");
    assert_eq!(files(&disk), before, "a refused rebuild changed the directory");
}

#[test]
fn the_newest_segment_missing_after_a_clean_stop_is_rebuilt_from_the_stop_snapshot() {
    // Goal: after a clean stop whose snapshot holds the state through the last record, the
    // newest segment gone loses nothing: its records ended where the clean-stop marker says,
    // so the rebuild starts an empty journal after that snapshot, also when a crash cuts the
    // rebuild off; the missing-segment finding names the rebuild for this case. Fails where
    // the only repair named is a cut at the segment's first sequence, which set the snapshot
    // aside with the records it held.
    let mut workload = Workload::new(61, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), 4_000);
    let disk = FaultStorage::new();
    let policy =
        SnapshotPolicy { every_commands: Some(1_000), keep: 4, ..SnapshotPolicy::default() };
    journal_with_snapshots(&disk, &commands, policy);
    let last = commands.last().unwrap().sequence;
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    recovered.writer.close().unwrap().expect("a segment is open");
    drop(recovered);
    assert_eq!(snapshot::list(&disk).unwrap().pop().map(|(through, _)| through), Some(last));
    let newest = *listed(&disk).last().unwrap();
    disk.remove(&format::segment_name(newest)).unwrap();
    let error = recover_from(disk.clone(), options(Durability::Batch)).err().expect("refused");
    assert!(matches!(error, JournalError::SegmentMissing { newest: true, .. }), "{error}");
    assert!(error.to_string().contains("after a clean stop whose snapshot"), "{error}");

    let copy = disk.process_crash();
    copy.capture_sync_points();
    let rebuilt = rebuild::rebuild(&copy).unwrap();
    assert_eq!((rebuilt.through, rebuilt.last, rebuilt.copied), (last, last, 0), "{rebuilt:?}");
    assert_eq!(listed(&copy), [last.next()]);
    let digest = digest_of(&commands);
    let as_before = |error: &JournalError| matches!(error, JournalError::SegmentMissing { first, .. } if *first == newest);
    let (before, finished, _) =
        recover_at_each_sync_point(&copy.take_captures(), (digest, last), as_before);
    assert!(before > 0 && finished > 0, "{before} {finished}");
    let recovered = recover_from(copy, options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, last.next());
    assert_eq!(recovered.engine.state_digest(), digest);
}

#[test]
fn a_rebuild_past_missing_segments_cut_off_at_any_sync_point_is_finished_at_the_next_start() {
    // Goal: as for damage, a power loss at any point of a rebuild past missing segments leaves
    // the journal refused as before (the segment missing) or one recovery finishes rebuilding
    // and recovers in full. Fails where finishing reads the segments the manifest still lists.
    let (disk, commands) = long_journal();
    let oldest = listed(&disk)[0];
    disk.remove(&format::segment_name(oldest)).unwrap();
    let copy = disk.process_crash();
    copy.capture_sync_points();
    rebuild::rebuild(&copy).unwrap();
    let captures = copy.take_captures();
    assert!(captures.len() >= 3, "{} sync points", captures.len());
    let last = commands.last().unwrap().sequence;
    let as_before = |error: &JournalError| matches!(error, JournalError::SegmentMissing { first, .. } if *first == oldest);
    let (before, finished, under_way) =
        recover_at_each_sync_point(&captures, (digest_of(&commands), last), as_before);
    assert!(before > 0 && finished > 0 && under_way > 0, "{before} {finished} {under_way}");
}

#[test]
fn a_rebuild_starts_after_the_oldest_snapshot_that_covers_the_damage() {
    // Goal: where several intact snapshots cover the damage, the journal is restarted after the
    // oldest of them, so that it keeps every record after it for replay and export; recovery
    // still starts from the newest. Fails where the rebuild takes the newest snapshot.
    let (disk, commands) = long_journal();
    let snapshots = snapshot::list(&disk).unwrap();
    assert!(snapshots.len() >= 3, "{snapshots:?}");
    let (oldest, newest) = (snapshots[0].0, snapshots.last().unwrap().0);
    let damaged = Sequence(oldest.0 - 3);
    let (name, offset) = record_at(&disk, damaged);
    disk.corrupt(&name, offset + 20, 0x5A);
    let rebuilt = rebuild::rebuild(&disk).unwrap();
    assert_eq!(rebuilt.through, oldest, "{rebuilt:?}");
    assert_eq!(listed(&disk).first(), Some(&oldest.next()), "{:?}", listed(&disk));
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.report.snapshot.as_ref().map(|meta| meta.through), Some(newest));
    assert_eq!(recovered.next_sequence, commands.last().unwrap().sequence.next());
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands));
}
