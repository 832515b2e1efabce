//! `scan::read` on a journal whose bytes changed after it was scanned: a tool reading a live
//! directory while its node cuts records in place, as a rejoining standby does.

mod common;

use std::ops::ControlFlow;

use common::{TempDir, config, generate, options};
use ringfence_core::{Engine, Epoch, Sequence, Timestamp};
use ringfence_journal::backup::backup;
use ringfence_journal::recovery::{self, recover};
use ringfence_journal::scan::{self, ReadOnlyDir};
use ringfence_journal::storage::FileStorage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};

#[test]
fn a_read_after_an_in_place_cut_is_an_error_not_a_panic() {
    // Goal: bytes changed since the scan are an error that says so, never a panic (the tools
    // read a live directory).
    let dir = TempDir::new("scan-cut");
    let mut writer = recover(dir.path(), options(Durability::None)).unwrap().writer;
    let mut workload = Workload::new(11, Sequence(1), Timestamp(10));
    for command in generate(&mut workload, &mut Engine::new(config()), 200) {
        writer.append_command(Epoch(1), &command).unwrap();
    }
    writer.end_batch().unwrap();
    drop(writer);
    // A reader scans (as `replay` opens the directory) ...
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    assert_eq!(layout.last_sequence(), Some(Sequence(200)));
    // ... the node cuts its journal in place at 150 (a standby dropping a tail its new
    // primary never held) ...
    let storage = FileStorage::open(dir.path()).unwrap();
    recovery::truncate(&storage, Sequence(150)).unwrap();
    // ... and the reader reads what it scanned: the records before the cut, then an error
    // that says the journal changed under it, not a panic and not a silent end.
    let mut seen = Vec::new();
    let read = scan::read(&mut source, &layout, Sequence(1), &mut |record| {
        seen.push(record.sequence.0);
        ControlFlow::Continue(())
    });
    let error = read.expect_err("records cut since the scan are not read as if they were there");
    assert!(error.to_string().contains("since the journal was scanned"), "{error}");
    assert_eq!(seen, (1..150).collect::<Vec<u64>>(), "the records before the cut, once each");
}

#[test]
fn a_journal_appended_to_while_it_is_scanned_and_backed_up_reads_as_whole() {
    // Goal: a scan of a running node's journal (`journal verify`, `journal backup`) that finds
    // the end of its records, then bytes after it, because the writer appended there while the
    // scan looked past the end (most of a 64 MiB segment, here), reads on over the records
    // that arrived rather than call them damage. Before, a backup under steady load failed
    // almost every time, and said to truncate a healthy journal.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;
    let dir = TempDir::new("scan-live");
    let live = WriterOptions { segment_len: 64 << 20, ..options(Durability::None) };
    let mut writer = recover(dir.path(), live).unwrap().writer;
    let (stop, started) = (Arc::new(AtomicBool::new(false)), Arc::new(Barrier::new(2)));
    let appending = {
        let (stop, started) = (stop.clone(), started.clone());
        std::thread::spawn(move || {
            let mut workload = Workload::new(17, Sequence(1), Timestamp(10));
            let mut engine = Engine::new(config());
            let mut batch = || generate(&mut workload, &mut engine, 16);
            for command in batch() {
                writer.append_command(Epoch(1), &command).unwrap();
            }
            writer.end_batch().unwrap();
            started.wait();
            // About 50k records a second, as a busy node journals them, until told to stop.
            while !stop.load(Ordering::Relaxed) {
                for command in batch() {
                    writer.append_command(Epoch(1), &command).unwrap();
                }
                writer.end_batch().unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
            writer.last_appended()
        })
    };
    started.wait();
    let mut last = Sequence(0);
    for round in 0..8 {
        let mut source = ReadOnlyDir::open(dir.path()).unwrap();
        let layout = scan::scan(&mut source).unwrap();
        let problem = layout.problem.as_ref();
        assert!(problem.is_none_or(|p| p.torn_tail), "scan {round}: {:?}", layout.problem);
        let reached = layout.last_sequence().unwrap();
        assert!(reached >= last, "scan {round} ended at {reached:?}, before {last:?}");
        last = reached;
    }
    for round in 0..3 {
        let copy = dir.path().join(format!("copy-{round}"));
        std::fs::create_dir(&copy).unwrap();
        let mut source = ReadOnlyDir::open(dir.path()).unwrap();
        let dest = FileStorage::open(&copy).unwrap();
        let copied = backup(&mut source, &dest, &mut |_, _| {});
        let copied = copied.unwrap_or_else(|e| panic!("backup {round}: {e}"));
        let reached = copied.last.unwrap();
        assert!(reached >= last, "backup {round} ended at {reached:?}, before {last:?}");
        last = reached;
    }
    stop.store(true, Ordering::Relaxed);
    let appended = appending.join().unwrap();
    assert!(appended > last, "the writer appended throughout: {appended:?}, {last:?}");
}
