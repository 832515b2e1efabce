//! `scan::read` on a journal whose bytes changed after it was scanned: a tool reading a live
//! directory while its node cuts records in place, as a rejoining standby does.

mod common;

use std::ops::ControlFlow;

use common::{TempDir, config, generate, options};
use ringfence_core::{Engine, Epoch, Sequence, Timestamp};
use ringfence_journal::recovery::{self, recover};
use ringfence_journal::scan::{self, ReadOnlyDir};
use ringfence_journal::storage::FileStorage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;

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
