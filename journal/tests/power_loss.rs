//! Crash consistency on the fault-injecting storage: process crashes and power losses (with
//! and without torn write-back) at random points, recovered over and over.

mod common;

use std::ops::ControlFlow;

use common::{acknowledged_by, config, generate, journal_with_snapshots, options};
use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::prng::Prng;
use ringfence_core::{Engine, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::epoch::Epochs;
use ringfence_journal::fault::{FaultStorage, SyncCapture};
use ringfence_journal::recovery::recover_from;
use ringfence_journal::scan;
use ringfence_journal::snapshot::{SnapshotPolicy, Snapshotter};
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;

/// Every record in `storage` equals the command generated for its sequence.
fn assert_prefix(storage: &mut FaultStorage, commands: &[Sequenced]) -> u64 {
    let layout = scan::scan(storage).unwrap();
    assert!(layout.problem.is_none(), "recovery left a problem: {:?}", layout.problem);
    let mut count = 0;
    scan::read(storage, &layout, Sequence(1), &mut |record| {
        let expected = &commands[record.sequence.0 as usize - 1];
        assert_eq!(record.sequenced(), *expected, "record {} differs", record.sequence);
        count += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    count
}

/// Returns how many recoveries found (and cleared) a torn tail.
fn crash_many_times(durability: Durability, seeds: std::ops::Range<u64>) -> u64 {
    let mut torn_tails = 0;
    let mut shadow = Engine::new(config());
    let mut workload = Workload::new(77, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut shadow, 6_000);
    for seed in seeds {
        let mut prng = Prng::new(seed);
        let mut disk = FaultStorage::new();
        let mut acknowledged = Sequence(0);
        for round in 0..6 {
            let mut recovered = recover_from(disk.clone(), options(durability))
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery failed: {e}"));
            let recovered_last = recovered.next_sequence.0 - 1;
            torn_tails += u64::from(recovered.report.torn_tail.is_some());
            if durability == Durability::Batch {
                assert!(
                    recovered_last >= acknowledged.0,
                    "seed {seed} round {round}: acknowledged {acknowledged} but recovered {recovered_last}"
                );
            }
            let mut reference = Engine::new(config());
            for command in &commands[..recovered_last as usize] {
                reference.apply(command);
            }
            assert_eq!(recovered.engine.state_digest(), reference.state_digest(), "seed {seed}");
            let mut next = recovered.next_sequence.0 as usize;
            let batches = prng.range_inclusive(1, 30);
            for _ in 0..batches {
                let size = *prng.pick(&[1, 3, 16, 40]);
                for _ in 0..size {
                    if next > commands.len() {
                        break;
                    }
                    recovered.writer.append_command(Epoch(1), &commands[next - 1]).unwrap();
                    next += 1;
                }
                acknowledged = acknowledged.max(recovered.writer.end_batch().unwrap());
            }
            // A batch in flight when the crash comes: appended, never acknowledged.
            for _ in 0..prng.below(20) {
                if next <= commands.len() {
                    recovered.writer.append_command(Epoch(1), &commands[next - 1]).unwrap();
                    next += 1;
                }
            }
            drop(recovered);
            disk = match prng.below(3) {
                0 => disk.process_crash(),
                1 => disk.power_loss(None),
                _ => disk.power_loss(Some(prng.next_u64())),
            };
        }
        let recovered = recover_from(disk.clone(), options(durability)).unwrap();
        drop(recovered);
        let count = assert_prefix(&mut disk, &commands);
        if durability == Durability::Batch {
            assert!(count >= acknowledged.0, "seed {seed}: acknowledged records lost");
        }
    }
    torn_tails
}

#[test]
fn batch_durability_loses_nothing_acknowledged_across_crashes_and_power_losses() {
    // Goal: with group commit, every acknowledged record survives any mix of process crashes,
    // power losses and torn write-backs; recovery always succeeds and matches the commands.
    let torn_tails = crash_many_times(Durability::Batch, 0..24);
    assert!(torn_tails > 0, "the torn write-back model produced no torn tail to recover from");
}

#[test]
fn unsynced_policies_always_recover_a_valid_prefix_after_power_loss() {
    // Goal: with `none` and `interval`, a power loss may lose recent records but recovery
    // still succeeds with an intact, contiguous prefix and the matching engine state.
    crash_many_times(Durability::None, 100..112);
    crash_many_times(Durability::Interval { ms: 1 }, 200..212);
}

#[test]
fn process_crash_keeps_everything_written_to_the_map_even_with_policy_none() {
    // Goal: a killed process loses nothing it wrote to the map, synced or not.
    let mut shadow = Engine::new(config());
    let mut workload = Workload::new(3, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut shadow, 2_000);
    let disk = FaultStorage::new();
    let mut recovered = recover_from(disk.clone(), options(Durability::None)).unwrap();
    let epochs = Epochs { current: Epoch(4), promised: Epoch(4) };
    recovered.writer.data_dir().store_epochs(epochs).unwrap();
    for command in &commands {
        recovered.writer.append_command(Epoch(4), command).unwrap();
    }
    drop(recovered);
    let crashed = disk.process_crash();
    let again = recover_from(crashed, options(Durability::None)).unwrap();
    assert_eq!(again.next_sequence, Sequence(2_001));
    assert_eq!(again.last_epoch, Epoch(4));
    assert_eq!(again.engine.state_digest(), shadow.state_digest());
}

/// Runs a workload with group commit, snapshots and retention on `disk`, capturing the disk at
/// every sync point. Returns the captures and, per flush, (sync points so far, acknowledged).
fn run_capturing(
    disk: &FaultStorage,
    commands: &[Sequenced],
    policy: SnapshotPolicy,
) -> (Vec<SyncCapture>, Vec<(u64, Sequence)>) {
    run_capturing_with(disk, commands, policy, Durability::Batch)
}

/// [`run_capturing`] with the journal's durability policy given.
fn run_capturing_with(
    disk: &FaultStorage,
    commands: &[Sequenced],
    policy: SnapshotPolicy,
    durability: Durability,
) -> (Vec<SyncCapture>, Vec<(u64, Sequence)>) {
    let mut recovered = recover_from(disk.clone(), options(durability)).unwrap();
    disk.capture_sync_points();
    let data_dir = recovered.writer.data_dir().clone();
    // Stepped: each snapshot, and retention after it, is written right after its batch, so
    // the sync points are the same every run. (The shadow engine reads the records it
    // snapshots from the journal, which this storage shows only once synced; a snapshot
    // ahead of the journal after a power loss is `recovery.rs`'s stale-snapshot case.)
    let (mut snapshots, mut writer) = Snapshotter::stepped(data_dir, policy, config());
    let mut engine = recovered.engine;
    let mut acknowledged = Vec::new();
    for batch in commands.chunks(16) {
        for command in batch {
            recovered.writer.append_command(Epoch(1), command).unwrap();
            engine.apply(command);
            snapshots.after_apply(&engine, command);
        }
        let acked = recovered.writer.end_batch().unwrap();
        acknowledged.push((disk.sync_points(), acked));
        let stats = snapshots.stats();
        let waiting = stats.pauses > stats.written + stats.failed;
        assert_eq!(writer.step(), waiting, "a job left waiting, or one from nowhere");
        assert!(!writer.step(), "one job at a time");
    }
    let stats = snapshots.finish();
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(stats.segments_retired > 0, "retention never ran: {stats:?}");
    drop(recovered.writer);
    (disk.take_captures(), acknowledged)
}

#[test]
fn power_loss_at_every_sync_point_of_snapshots_and_retention_loses_nothing_durable() {
    // Goal: with snapshots and retention running through the fault-injecting storage, a power
    // loss just after any sync point — with and without torn write-back — recovers: every
    // record acknowledged by then is there, and the state equals a replay of the commands.
    let mut workload = Workload::new(31, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), 2_400);
    let mut outcomes: Vec<(u64, u64, String)> = Vec::new();
    for (keep, archive) in [(2, false), (1, true)] {
        let disk = if archive { FaultStorage::with_archive() } else { FaultStorage::new() };
        let policy =
            SnapshotPolicy { every_commands: Some(300), keep, ..SnapshotPolicy::default() };
        let (captures, acknowledged) = run_capturing(&disk, &commands, policy);
        assert!(captures.len() > 150, "{} sync points", captures.len());
        for capture in &captures {
            let durable = acknowledged_by(&acknowledged, capture.point);
            for torn in [None, Some(capture.point)] {
                let image = capture.disk.power_loss(torn);
                let at = format!(
                    "keep {keep}, sync point {} ({}), torn {torn:?}",
                    capture.point, capture.what
                );
                let recovered = recover_from(image, options(Durability::Batch))
                    .unwrap_or_else(|e| panic!("{at}: recovery failed: {e}"));
                let last = recovered.next_sequence.0 - 1;
                assert!(last >= durable, "{at}: acknowledged {durable} but recovered {last}");
                outcomes.push((last, recovered.engine.state_digest(), at));
            }
        }
    }
    // One pass over the commands gives the replayed digest at every sequence recovered to.
    outcomes.sort_by_key(|(last, _, _)| *last);
    let mut reference = Engine::new(config());
    let mut applied = 0;
    for (last, digest, at) in &outcomes {
        while applied < *last {
            reference.apply(&commands[applied as usize]);
            applied += 1;
        }
        assert_eq!(*digest, reference.state_digest(), "{at}: state differs from a replay");
    }
}

#[test]
fn snapshots_ahead_of_an_unsynced_journal_retire_nothing_a_power_loss_would_need() {
    // Goal: under `none` the snapshot writer (which syncs its own files) runs ahead of what
    // the journal made durable. Retention counts only the snapshots the journal durably
    // reached: a power loss at any sync point leaves a journal that, with the snapshots it
    // kept, recovers to a prefix of the commands; retiring segments under the newest
    // snapshots instead would leave a gap between what a power loss keeps of the journal and
    // the snapshots that are not ahead of it.
    let mut workload = Workload::new(37, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), 2_400);
    let disk = FaultStorage::new();
    let policy = SnapshotPolicy { every_commands: Some(300), keep: 1, ..SnapshotPolicy::default() };
    let (captures, _) = run_capturing_with(&disk, &commands, policy, Durability::None);
    assert!(captures.len() > 20, "{} sync points", captures.len());
    let mut reference = Engine::new(config());
    let mut digests = vec![reference.state_digest()];
    for command in &commands {
        reference.apply(command);
        digests.push(reference.state_digest());
    }
    for capture in &captures {
        for torn in [None, Some(capture.point)] {
            let at = format!("sync point {} ({}), torn {torn:?}", capture.point, capture.what);
            let recovered = recover_from(capture.disk.power_loss(torn), options(Durability::None))
                .unwrap_or_else(|e| panic!("{at}: recovery failed: {e}"));
            let last = recovered.next_sequence.0 - 1;
            assert_eq!(recovered.engine.state_digest(), digests[last as usize], "{at}");
        }
    }
}

#[test]
fn a_truncation_cut_off_at_any_sync_point_is_finished_at_the_next_start() {
    // Goal: a power loss at any sync point of a truncation — of a journal with snapshots and
    // retired segments, cut after its newest snapshot, or cut whole as installing a primary's
    // snapshot does — leaves a directory recovery opens: the journal as it was until the
    // truncation's marker is durable, and cut where it was asked from then on.
    let mut workload = Workload::new(41, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), 2_000);
    let disk = FaultStorage::new();
    let policy = SnapshotPolicy { every_commands: Some(300), keep: 2, ..SnapshotPolicy::default() };
    assert!(journal_with_snapshots(&disk, &commands, policy) > 0, "no segment retired");
    let newest = ringfence_journal::snapshot::list(&disk).unwrap().pop().unwrap().0;
    for at in [Sequence(newest.0 + 10), Sequence(1)] {
        let copy = disk.process_crash();
        copy.capture_sync_points();
        ringfence_journal::recovery::truncate(&copy, at).unwrap();
        let captures = copy.take_captures();
        assert!(captures.len() >= 4, "{} sync points", captures.len());
        let (mut cut, mut under_way) = (0, 0);
        for capture in &captures {
            for torn in [None, Some(capture.point)] {
                let image = capture.disk.power_loss(torn);
                let what = format!("cut at {at}, sync point {} ({})", capture.point, capture.what);
                // The read-only tools' view: a marker names the cut, which recovery finishes.
                let marked = ringfence_journal::datadir::truncation_under_way(&image);
                assert!(marked.is_none_or(|marked| marked == at), "{what}: marker {marked:?}");
                under_way += u64::from(marked.is_some());
                let again = recover_from(image, options(Durability::Batch))
                    .unwrap_or_else(|e| panic!("{what}, torn {torn:?}: recovery failed: {e}"));
                let next = again.next_sequence;
                assert!(
                    next == at || next == Sequence(2_001),
                    "{what}: the journal ends at {next}"
                );
                cut += u64::from(next == at);
                assert!(marked.is_none() || next == at, "{what}: a marked cut not finished");
            }
        }
        assert!(under_way >= 2, "cut at {at}: no crash while the marker was there");
        let last = captures.last().unwrap().disk.power_loss(None);
        let finished = recover_from(last, options(Durability::Batch)).unwrap();
        assert_eq!(finished.next_sequence, at, "a completed truncation is not undone");
        assert!(cut >= 2, "cut at {at}: never past the marker");
    }
}
