//! Golden fixtures: a data directory written by format version 2 (`tests/fixtures/v2/data`)
//! and what it must read back as (`tests/fixtures/v2/expected.txt`). Every later build must
//! read it byte for byte, replay it to the same outcomes and hashes, and recover from its
//! snapshot — or refuse it by version number, never misread it. The fixture is written once by
//! `cargo run -p ringfence-journal --example write-fixtures` and never regenerated to make
//! this test pass.

#[path = "fixtures/generate.rs"]
#[allow(dead_code)]
mod generate;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ringfence_core::{Engine, Outcome, Sequence};
use ringfence_journal::format::{self, SEGMENT_HEADER_LEN};
use ringfence_journal::recovery::recover;
use ringfence_journal::scan::{self, ReadOnlyDir, ReadSource};
use ringfence_journal::snapshot;
use ringfence_journal::writer::{Durability, WriterOptions};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2")
}

/// `expected.txt`: `key value` lines, and `record`/`outcome` lines with a sequence and hex.
struct Expected {
    values: BTreeMap<String, String>,
    records: BTreeMap<u64, String>,
    outcomes: BTreeMap<u64, String>,
}

impl Expected {
    fn read() -> Expected {
        let text = std::fs::read_to_string(fixture().join("expected.txt")).expect("expected.txt");
        let mut expected = Expected {
            values: BTreeMap::new(),
            records: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        };
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["record", sequence, hex] => {
                    expected.records.insert(sequence.parse().unwrap(), hex.to_owned());
                }
                ["outcome", sequence, hex] => {
                    expected.outcomes.insert(sequence.parse().unwrap(), hex.to_owned());
                }
                [key, value] => {
                    expected.values.insert(key.to_owned(), value.to_owned());
                }
                _ => panic!("unreadable line in expected.txt: {line}"),
            }
        }
        assert_eq!(expected.records.len(), generate::PINNED);
        expected
    }

    fn number(&self, key: &str) -> u64 {
        self.values[key].parse().unwrap_or_else(|_| panic!("{key} is a number"))
    }

    fn hash(&self, key: &str) -> u64 {
        u64::from_str_radix(&self.values[key], 16).unwrap_or_else(|_| panic!("{key} is hex"))
    }
}

/// Every record's raw bytes, in order, straight from the fixture's segments.
fn raw_records(data: &Path) -> Vec<Vec<u8>> {
    let mut source = ReadOnlyDir::open(data).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    assert!(layout.problem.is_none(), "the fixture is intact: {:?}", layout.problem);
    assert!(layout.segments.len() >= 2, "the fixture spans segments");
    let mut records = Vec::new();
    for segment in &layout.segments {
        let bytes = source.read_segment(&segment.name).unwrap();
        let mut offset = SEGMENT_HEADER_LEN;
        while offset < segment.end {
            let (_, len) = format::check_record(&bytes[offset..]).expect("an intact record");
            records.push(bytes[offset..offset + len].to_vec());
            offset += len;
        }
    }
    records
}

/// Replays the fixture's journal through a fresh engine: the outcome of every record.
fn replay(data: &Path) -> (Engine, Vec<Outcome>) {
    let mut source = ReadOnlyDir::open(data).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    let mut engine = Engine::new(generate::config());
    let mut outcomes = Vec::new();
    scan::read(&mut source, &layout, Sequence(1), &mut |record| {
        outcomes.push(engine.apply(&record.sequenced()));
        ControlFlow::Continue(())
    })
    .unwrap();
    (engine, outcomes)
}

/// A copy of the fixture's data directory to write in (recovery takes a lock, tests damage).
fn copy_of_data(tag: &str) -> PathBuf {
    let to = std::env::temp_dir().join(format!("ringfence-fixture-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(fixture().join("data")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

fn options() -> WriterOptions {
    WriterOptions {
        segment_len: generate::SEGMENT_LEN,
        durability: Durability::Batch,
        engine_config: generate::config(),
    }
}

#[test]
fn the_version_2_journal_reads_back_byte_for_byte() {
    // Goal: the records on disk are the pinned bytes, and every record decodes to a command
    // that this build frames back into exactly the bytes it was read from.
    let expected = Expected::read();
    assert_eq!(expected.number("format_version"), u64::from(format::FORMAT_VERSION));
    assert_eq!(expected.number("encoding_version"), u64::from(ringfence_core::ENCODING_VERSION));
    let records = raw_records(&fixture().join("data"));
    assert_eq!(records.len() as u64, expected.number("records"));
    for (index, bytes) in records.iter().enumerate() {
        let (header, sequenced, len) = ringfence_core::record::decode(bytes).expect("decodes");
        assert_eq!((header.sequence, len), (Sequence(index as u64 + 1), bytes.len()));
        assert_eq!(&generate::record_bytes(header.epoch, &sequenced), bytes, "record {index}");
        if let Some(pinned) = expected.records.get(&header.sequence.0) {
            assert_eq!(&generate::hex(bytes), pinned, "record {} on disk", header.sequence);
        }
    }
}

#[test]
fn replaying_the_version_2_journal_gives_the_recorded_outcomes_and_hashes() {
    // Goal: the engine of this build, fed the fixture's commands, answers exactly what the
    // writing build answered — outcome bytes, running hash and state digest.
    let expected = Expected::read();
    let (engine, outcomes) = replay(&fixture().join("data"));
    assert_eq!(outcomes.len() as u64, expected.number("records"));
    for (sequence, pinned) in &expected.outcomes {
        let outcome = &outcomes[*sequence as usize - 1];
        assert_eq!(&generate::hex(&generate::outcome_bytes(outcome)), pinned, "outcome {sequence}");
    }
    assert_eq!(generate::outcomes_xxh3(&outcomes), expected.hash("outcomes_xxh3"));
    assert_eq!(engine.running_hash(), expected.hash("running_hash"));
    assert_eq!(engine.state_digest(), expected.hash("state_digest"));
    let kinds: std::collections::BTreeSet<&str> = outcomes.iter().map(Outcome::name).collect();
    assert!(kinds.len() >= 10, "the fixture exercises the engine: {kinds:?}");
}

#[test]
fn recovery_from_the_version_2_directory_uses_its_snapshot_and_ends_in_the_same_state() {
    // Goal: the fixture's snapshot loads (its digest is the recorded one), recovery starts from
    // it and replays only the journal after it, and ends in the recorded state.
    let expected = Expected::read();
    let source = ReadOnlyDir::open(&fixture().join("data")).unwrap();
    let through = expected.number("snapshot_through");
    let name = format!("snapshot-{through:020}.snap");
    let (at_snapshot, meta) = snapshot::load(&source, &name, None).expect("the snapshot loads");
    assert_eq!(meta.through, Sequence(through));
    // Written before snapshots recorded their last record's epoch: read as not recorded.
    assert_eq!(meta.through_epoch, None);
    assert_eq!(at_snapshot.state_digest(), expected.hash("snapshot_state_digest"));
    assert_eq!(at_snapshot.running_hash(), expected.hash("snapshot_running_hash"));

    let data = copy_of_data("recover");
    let recovered = recover(&data, options()).expect("recovery of the fixture");
    let report = &recovered.report;
    assert_eq!(report.snapshot.as_ref().map(|meta| meta.through), Some(Sequence(through)));
    assert_eq!(report.replayed, expected.number("records") - through);
    assert_eq!(recovered.engine.state_digest(), expected.hash("state_digest"));
    assert_eq!(recovered.next_sequence, Sequence(expected.number("records") + 1));
    drop(recovered);
    let _ = std::fs::remove_dir_all(&data);
}

/// Sets the little-endian `u32` at `offset` of `file` to `value` and re-seals the 128-byte
/// header's CRC (in its last four bytes), as a newer build's header would be.
fn rewrite_header_u32(file: &Path, offset: usize, value: u32) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..124]);
    bytes[124..128].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_future_format_version_is_refused_by_number_not_misread() {
    // Goal: a segment of a newer format version stops recovery with a message naming the
    // version and the newer build; a snapshot of a newer version is passed over, said why.
    let data = copy_of_data("future");
    let first = data.join(format::segment_name(Sequence(1)));
    rewrite_header_u32(&first, 8, format::FORMAT_VERSION + 1);
    let error = recover(&data, options()).err().expect("a newer segment is refused").to_string();
    assert!(error.contains("newer build"), "{error}");
    assert!(error.contains(&format!("version {}", format::FORMAT_VERSION + 1)), "{error}");
    let _ = std::fs::remove_dir_all(&data);

    let data = copy_of_data("future-snapshot");
    let through = Expected::read().number("snapshot_through");
    let snapshot_file = data.join(format!("snapshot-{through:020}.snap"));
    rewrite_header_u32(&snapshot_file, 8, snapshot::SNAPSHOT_FORMAT_VERSION + 1);
    let recovered = recover(&data, options()).expect("recovery replays the journal instead");
    assert!(recovered.report.snapshot.is_none());
    let skipped = &recovered.report.skipped_snapshots;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let reason = &skipped[0].1;
    assert!(reason.contains("newer build"), "{skipped:?}");
    assert!(
        reason.contains(&format!("version {}", snapshot::SNAPSHOT_FORMAT_VERSION + 1)),
        "{skipped:?}"
    );
    assert_eq!(recovered.engine.state_digest(), Expected::read().hash("state_digest"));
    drop(recovered);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_snapshot_under_another_sequence_s_name_is_passed_over_not_trusted() {
    // Goal: a snapshot renamed by hand, or restored under another name, is passed over with
    // the reason, whichever way the names differ, and recovery replays the journal instead:
    // its name decides where the replay after it starts, its header what it holds.
    let through = Expected::read().number("snapshot_through");
    for renamed in [through - 1, through + 1] {
        let data = copy_of_data(&format!("renamed-snapshot-{renamed}"));
        std::fs::rename(
            data.join(format!("snapshot-{through:020}.snap")),
            data.join(format!("snapshot-{renamed:020}.snap")),
        )
        .unwrap();
        let recovered = recover(&data, options()).expect("recovery replays the journal instead");
        assert!(recovered.report.snapshot.is_none(), "{renamed}");
        let skipped = &recovered.report.skipped_snapshots;
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].1.contains("another sequence than the file's name"), "{skipped:?}");
        assert_eq!(recovered.engine.state_digest(), Expected::read().hash("state_digest"));
        drop(recovered);
        let _ = std::fs::remove_dir_all(&data);
    }
}
