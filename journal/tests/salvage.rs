//! `salvage`: the records a damaged journal still holds past its damage, found again at the
//! next intact record, for `journal truncate` to keep before it drops them.

mod common;

use std::ops::ControlFlow;

use common::{config, generate, journal_with_snapshots, record_at};
use ringfence_core::{Engine, Sequence, Timestamp};
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::format::SEGMENT_HEADER_LEN;
use ringfence_journal::salvage::{MISSING_RUNS_LISTED, Salvaged, salvage};
use ringfence_journal::scan::sorted_segments;
use ringfence_journal::snapshot::SnapshotPolicy;
use ringfence_journal::workload::Workload;

const COMMANDS: u64 = 3_000;

/// A journal of the workload's first `COMMANDS` commands over 64 KiB segments, no snapshots.
fn journal() -> FaultStorage {
    let mut workload = Workload::new(17, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), COMMANDS as usize);
    let disk = FaultStorage::new();
    let policy = SnapshotPolicy { every_commands: None, ..SnapshotPolicy::default() };
    journal_with_snapshots(&disk, &commands, policy);
    disk
}

/// The sequences salvage visits from `from` on, and what it reports.
fn salvage_from(disk: &FaultStorage, from: u64) -> (Vec<u64>, Salvaged) {
    let mut seen = Vec::new();
    let salvaged = salvage(&mut disk.clone(), Sequence(from), &mut |record| {
        seen.push(record.sequence.0);
        ControlFlow::Continue(())
    })
    .unwrap();
    (seen, salvaged)
}

#[test]
fn an_intact_journal_gives_back_every_record_from_the_one_asked_for() {
    // Goal: with nothing damaged, salvage visits what a sequential read does, across
    // segments, from `from` on, and finds no unreadable bytes.
    let disk = journal();
    assert!(sorted_segments(&disk).unwrap().len() > 2, "the test needs several segments");
    let (seen, salvaged) = salvage_from(&disk, 1_234);
    assert_eq!(seen, (1_234..=COMMANDS).collect::<Vec<_>>());
    let span = Some((Sequence(1_234), Sequence(COMMANDS)));
    let expected = Salvaged { records: COMMANDS - 1_233, span, ..Salvaged::default() };
    assert_eq!(salvaged, expected, "nothing unreadable, nothing missing");
}

#[test]
fn records_past_damage_are_found_again_and_only_the_damaged_ones_are_missing() {
    // Goal: bit rot in one record's payload, and garbage over the start of another segment
    // (two records and part of a third): every other record from `from` on is visited, in
    // order, and the damaged bytes are counted as unreadable.
    let disk = journal();
    let rotted = Sequence(700);
    let (name, offset) = record_at(&disk, rotted);
    disk.corrupt(&name, offset + 40, 0x10);
    let segments = sorted_segments(&disk).unwrap();
    let (second_first, second) = &segments[2];
    assert!(*second_first > rotted, "the garbage is in a later segment");
    for at in SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + 200 {
        disk.corrupt(second, at, 0xA5);
    }

    let (seen, salvaged) = salvage_from(&disk, 500);
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "out of order");
    let missing: Vec<u64> = (500..=COMMANDS).filter(|s| !seen.contains(s)).collect();
    assert_eq!(missing[0], rotted.0, "missing {missing:?}");
    let garbled = second_first.0..second_first.0 + 4;
    assert!(missing.len() >= 3 && missing.len() <= 5, "missing {missing:?}");
    assert!(missing[1..].iter().all(|s| garbled.contains(s)), "missing {missing:?}");
    assert_eq!(salvaged.span, Some((Sequence(500), Sequence(COMMANDS))));
    assert!(salvaged.unreadable_bytes >= 200, "{salvaged:?}");
    // What is missing is reported as runs: the rotted record alone, then the garbled ones.
    assert_eq!(salvaged.missing, missing.len() as u64);
    let garbled_run = (Sequence(missing[1]), Sequence(*missing.last().unwrap()));
    assert_eq!(salvaged.missing_runs, [(rotted, rotted), garbled_run]);

    // From the damaged record on, as `journal truncate` at it asks: the record itself is
    // missing, everything after it that is intact is there.
    let (seen, salvaged) = salvage_from(&disk, rotted.0);
    assert_eq!(seen.first(), Some(&(rotted.0 + 1)));
    assert_eq!(seen.last(), Some(&COMMANDS));
    assert_eq!(salvaged.missing_runs[0], (rotted, rotted), "the first record asked for is lost");
}

#[test]
fn many_runs_of_missing_sequences_are_all_counted_and_the_first_ones_listed() {
    // Goal: damage in more places than the report lists: every missing sequence is counted,
    // the first MISSING_RUNS_LISTED runs are listed in order.
    let disk = journal();
    let rotted: Vec<u64> = (0..MISSING_RUNS_LISTED as u64 + 4).map(|i| 100 + 50 * i).collect();
    // Found before any is damaged: `record_at` reads the journal from its start.
    let places: Vec<_> = rotted.iter().map(|&s| record_at(&disk, Sequence(s))).collect();
    for (name, offset) in places {
        disk.corrupt(&name, offset + 40, 0x10);
    }
    let (seen, salvaged) = salvage_from(&disk, 1);
    assert_eq!(seen.len() as u64 + rotted.len() as u64, COMMANDS);
    assert_eq!(salvaged.missing, rotted.len() as u64);
    let listed = rotted[..MISSING_RUNS_LISTED].iter().map(|&s| (Sequence(s), Sequence(s)));
    assert_eq!(salvaged.missing_runs, listed.collect::<Vec<_>>());
}

#[test]
fn a_visitor_that_breaks_stops_the_search() {
    // Goal: salvage stops at the visitor's break, having visited that record and no other.
    let disk = journal();
    let mut seen = Vec::new();
    let salvaged = salvage(&mut disk.clone(), Sequence(10), &mut |record| {
        seen.push(record.sequence.0);
        if seen.len() == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap();
    assert_eq!(seen, [10, 11, 12]);
    assert_eq!(salvaged.span, Some((Sequence(10), Sequence(12))));
}
