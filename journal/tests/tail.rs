//! The tail reader: a live journal's records followed as the writer appends them, and the
//! epoch look-ups of the replication handshake.

mod common;

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{TempDir, config, generate, options};
use ringfence_core::record::{self, RecordBuf};
use ringfence_core::{Command, Engine, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::epoch::Epochs;
use ringfence_journal::error::{Damage, JournalError};
use ringfence_journal::format::{self, HeaderProblem, SEGMENT_HEADER_LEN};
use ringfence_journal::history::EpochHistory;
use ringfence_journal::recovery::recover;
use ringfence_journal::scan::{self, MappedFile, ReadOnlyDir, ReadSource};
use ringfence_journal::snapshot;
use ringfence_journal::storage::FileStorage;
use ringfence_journal::tail::{
    Tail, epoch_at, epoch_at_place, last_at_or_below_epoch, note_epochs,
};
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, JournalWriter};

/// A new journal in `dir` (64 KiB segments), its writer positioned at sequence 1.
fn new_writer(dir: &Path) -> JournalWriter<FileStorage> {
    let recovered = recover(dir, options(Durability::None)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(1));
    recovered.writer
}

/// `count` workload commands from sequence 1.
fn commands(count: usize) -> Vec<Sequenced> {
    let mut workload = Workload::new(11, Sequence(1), Timestamp(10));
    generate(&mut workload, &mut Engine::new(config()), count)
}

/// Appends `commands` in `epoch` as one batch.
fn append(writer: &mut JournalWriter<FileStorage>, epoch: Epoch, commands: &[Sequenced]) {
    for command in commands {
        writer.append_command(epoch, command).unwrap();
    }
    writer.end_batch().unwrap();
}

/// A tail on `dir`, mapped read-only as the replication sender maps it.
fn open_tail(dir: &Path, next: Sequence) -> Result<Tail<ReadOnlyDir>, JournalError> {
    Tail::open(ReadOnlyDir::open(dir).unwrap(), next)
}

/// Overwrites `bytes` at `offset` of `file` in place (no truncation: the file stays the
/// length it was, as damage on disk leaves it).
fn patch(file: &Path, offset: usize, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let handle = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    handle.write_all_at(bytes, offset as u64).unwrap();
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

/// Every record's bytes as stored, read straight from the segment files, with its offset.
fn stored(dir: &Path) -> Vec<(PathBuf, usize, Vec<u8>)> {
    let mut records = Vec::new();
    for file in segment_files(dir) {
        let bytes = std::fs::read(&file).unwrap();
        let mut at = SEGMENT_HEADER_LEN;
        while !format::is_end_marker(&bytes[at..]) {
            let (_, len) = format::check_record(&bytes[at..]).expect("an intact record");
            records.push((file.clone(), at, bytes[at..at + len].to_vec()));
            at += len;
        }
    }
    records
}

fn stored_bytes(dir: &Path) -> Vec<Vec<u8>> {
    stored(dir).into_iter().map(|(_, _, bytes)| bytes).collect()
}

/// Splits what a tail returned into records, checking each is whole and intact.
fn split(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let (_, len) = record::check(bytes).expect("the tail returned an intact record");
        records.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    records
}

/// Reads everything up to `through` in one call.
fn read_all(tail: &mut Tail<ReadOnlyDir>, through: Sequence) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let count = tail.read(through, &mut out, usize::MAX).unwrap();
    let records = split(&out);
    assert_eq!(records.len(), count as usize);
    records
}

#[test]
fn the_tail_returns_the_stored_bytes_across_segment_rotations() {
    // Goal: from the start and from points inside and at the edges of segments, the tail
    // returns exactly the bytes the writer stored, which are the records `scan::read` decodes.
    let dir = TempDir::new("tail-bytes");
    let mut writer = new_writer(dir.path());
    let commands = commands(4_000);
    for chunk in commands.chunks(64) {
        append(&mut writer, Epoch(1), chunk);
    }
    let last = writer.last_appended();
    let files = segment_files(dir.path());
    assert!(files.len() >= 4, "the journal spans several segments: {}", files.len());
    let stored = stored_bytes(dir.path());
    assert_eq!(stored.len(), commands.len());
    // What the writer stored is the framing of each command.
    let mut framing = RecordBuf::default();
    for (bytes, command) in stored.iter().zip(&commands) {
        assert_eq!(bytes.as_slice(), framing.encode(Epoch(1), command));
    }
    // And what `scan::read` reads.
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    let mut index = 0;
    scan::read(&mut source, &layout, Sequence(1), &mut |read| {
        let (header, sequenced, len) = record::decode(&stored[index]).unwrap();
        assert_eq!((header.sequence, header.epoch), (read.sequence, read.epoch));
        assert_eq!((sequenced, len as u32), (read.sequenced(), read.len));
        index += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(index, stored.len());
    let segment_firsts: Vec<u64> =
        layout.segments.iter().map(|s| s.header.first_sequence.0).collect();
    let mut starts = vec![1, 2, 500, last.0, last.0 + 1];
    for first in &segment_firsts[1..] {
        starts.extend([first - 1, *first, first + 1]);
    }
    for start in starts {
        let mut tail = open_tail(dir.path(), Sequence(start)).unwrap();
        let records = read_all(&mut tail, last);
        assert_eq!(records, stored[start as usize - 1..], "from sequence {start}");
        assert_eq!(tail.next(), last.next());
    }
}

#[test]
fn interleaved_appends_and_reads_miss_nothing_and_repeat_nothing() {
    // Goal: a tail opened on an empty journal and read after every batch — including a read
    // after every single record across several rotations, and batches read in small pieces —
    // returns each record once, in order, as stored.
    let dir = TempDir::new("tail-interleaved");
    let mut writer = new_writer(dir.path());
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    let commands = commands(6_000);
    let mut received = Vec::new();
    assert_eq!(tail.read(writer.last_appended(), &mut received, usize::MAX).unwrap(), 0);
    let mut rotations_between_reads = 0;
    // One record, one read: every rotation falls between two reads.
    for command in &commands[..2_500] {
        let segments = segment_files(dir.path()).len();
        append(&mut writer, Epoch(1), std::slice::from_ref(command));
        rotations_between_reads += usize::from(segment_files(dir.path()).len() != segments);
        let count = tail.read(writer.last_appended(), &mut received, usize::MAX).unwrap();
        assert_eq!(count, 1, "sequence {}", command.sequence);
        assert_eq!(tail.next(), writer.last_appended().next());
    }
    assert!(rotations_between_reads >= 2, "{rotations_between_reads} rotations");
    // Uneven batches, each read in pieces of at most 700 bytes.
    let mut at = 2_500;
    for size in [1, 7, 300, 2, 900, 33, 1_200, 57].into_iter().cycle() {
        let end = (at + size).min(commands.len());
        append(&mut writer, Epoch(1), &commands[at..end]);
        let through = writer.last_appended();
        while tail.next() <= through {
            let mut piece = Vec::new();
            assert!(tail.read(through, &mut piece, 700).unwrap() >= 1);
            received.extend(piece);
        }
        assert_eq!(tail.read(through, &mut received, usize::MAX).unwrap(), 0);
        at = end;
        if at == commands.len() {
            break;
        }
    }
    assert_eq!(split(&received), stored_bytes(dir.path()));
    assert_eq!(tail.next(), Sequence(commands.len() as u64 + 1));
}

#[test]
fn max_bytes_bounds_the_buffer_but_one_record_always_comes_back() {
    // Goal: a read fills `out` (prefix included) up to `max_bytes` and no further, takes as
    // many records as fit, and returns one record even when none fits.
    let dir = TempDir::new("tail-max");
    let mut writer = new_writer(dir.path());
    append(&mut writer, Epoch(1), &commands(1_500));
    let through = writer.last_appended();
    let stored = stored_bytes(dir.path());
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    let mut out = Vec::new();
    assert_eq!(tail.read(through, &mut out, 0).unwrap(), 1);
    assert_eq!(out, stored[0]);
    let prefix = [0xEEu8; 40];
    let mut received = stored[0].clone();
    for max_bytes in [1_000, 100, 4_096, 5, 64 * 1024].into_iter().cycle() {
        if tail.next() > through {
            break;
        }
        let mut out = prefix.to_vec();
        let next = tail.next().0 as usize - 1;
        let count = tail.read(through, &mut out, max_bytes).unwrap() as usize;
        assert!(count >= 1);
        assert_eq!(&out[..prefix.len()], prefix.as_slice());
        let piece = &out[prefix.len()..];
        assert_eq!(split(piece), stored[next..next + count]);
        if count > 1 {
            assert!(out.len() <= max_bytes, "{} bytes for a limit of {max_bytes}", out.len());
        }
        // As many as fit: the record after the last one taken would not have.
        if let Some(after) = stored.get(next + count) {
            assert!(out.len() + after.len() > max_bytes, "stopped early under {max_bytes}");
        }
        received.extend_from_slice(piece);
    }
    assert_eq!(split(&received), stored);
}

#[test]
fn reading_below_next_returns_nothing_and_a_tail_at_the_end_waits_for_new_records() {
    // Goal: `through` below `next` reads nothing and leaves `out` alone; a tail opened one past
    // the last record (or on a journal with no segment yet) returns records appended later.
    let dir = TempDir::new("tail-end");
    let mut writer = new_writer(dir.path());
    let mut early = open_tail(dir.path(), Sequence(1)).unwrap();
    let commands = commands(300);
    append(&mut writer, Epoch(1), &commands[..100]);
    let mut at_end = open_tail(dir.path(), Sequence(101)).unwrap();
    let mut out = vec![7u8; 3];
    for through in [0, 1, 50, 100] {
        assert_eq!(at_end.read(Sequence(through), &mut out, usize::MAX).unwrap(), 0);
    }
    assert_eq!(early.read(Sequence(0), &mut out, usize::MAX).unwrap(), 0);
    assert_eq!(out, [7, 7, 7]);
    assert_eq!(at_end.next(), Sequence(101));
    append(&mut writer, Epoch(1), &commands[100..]);
    let stored = stored_bytes(dir.path());
    assert_eq!(read_all(&mut at_end, Sequence(150)), stored[100..150]);
    assert_eq!(read_all(&mut at_end, Sequence(300)), stored[150..]);
    assert_eq!(read_all(&mut early, Sequence(300)), stored);
    let refused = open_tail(dir.path(), Sequence(0)).err().expect("sequence 0 is refused");
    assert!(matches!(refused, JournalError::Options(_)), "{refused}");
}

#[test]
fn opening_below_the_first_retained_segment_names_the_first_sequence_held() {
    // Goal: after retention retires the oldest segments, a tail asked for a retired sequence
    // is refused with a typed error naming the first sequence the journal holds; a tail from
    // that sequence reads on.
    let dir = TempDir::new("tail-retired");
    let mut writer = new_writer(dir.path());
    append(&mut writer, Epoch(1), &commands(4_000));
    let stored = stored_bytes(dir.path());
    let firsts = stored_firsts(dir.path());
    let retired = writer.data_dir().retire_segments(Sequence(firsts[2] + 5)).unwrap();
    assert_eq!(retired.len(), 2);
    let first = firsts[2];
    for requested in [1, firsts[1], first - 1] {
        let error = open_tail(dir.path(), Sequence(requested)).err().expect("refused");
        let JournalError::Retired { requested: asked, first: held, .. } = &error else {
            panic!("unexpected error {error}");
        };
        assert_eq!((*asked, *held), (Sequence(requested), Sequence(first)));
        assert!(error.to_string().contains(&format!("from {first} on")), "{error}");
        assert!(error.to_string().contains("snapshot"), "{error}");
    }
    let mut from_first = open_tail(dir.path(), Sequence(first)).unwrap();
    let through = writer.last_appended();
    assert_eq!(read_all(&mut from_first, through), stored[first as usize - 1..]);
}

#[test]
fn a_tail_lagging_behind_retention_is_told_it_needs_a_snapshot() {
    // Goal: segments retired under a tail that is still reading them are read to their end
    // through the map it holds; moving on to a retired segment is the typed refusal — after
    // the records read before it are returned, or at once for a tail already at the end of the
    // retired segment.
    let dir = TempDir::new("tail-lagging");
    let mut writer = new_writer(dir.path());
    append(&mut writer, Epoch(1), &commands(4_000));
    let through = writer.last_appended();
    let stored = stored_bytes(dir.path());
    let firsts = stored_firsts(dir.path());
    let end_of_first = Sequence(firsts[1] - 1);
    let mut inside = open_tail(dir.path(), Sequence(1)).unwrap();
    let mut out = Vec::new();
    assert_eq!(inside.read(through, &mut out, 0).unwrap(), 1);
    let mut at_edge = open_tail(dir.path(), Sequence(firsts[0])).unwrap();
    assert_eq!(read_all(&mut at_edge, end_of_first), stored[..firsts[1] as usize - 1]);
    writer.data_dir().retire_segments(Sequence(firsts[2])).unwrap();
    let first_name = format::segment_name(Sequence(1));
    assert!(!segment_files(dir.path()).iter().any(|file| file.ends_with(&first_name)));
    let count = inside.read(through, &mut out, usize::MAX).unwrap();
    assert_eq!(Sequence(u64::from(count) + 1), end_of_first, "the mapped segment is read out");
    assert_eq!(split(&out), stored[..firsts[1] as usize - 1]);
    for tail in [&mut inside, &mut at_edge] {
        for _ in 0..2 {
            let error = tail.read(through, &mut out, usize::MAX).expect_err("refused");
            let JournalError::Retired { requested, first, .. } = error else {
                panic!("unexpected error {error}");
            };
            assert_eq!((requested, first), (Sequence(firsts[1]), Sequence(firsts[2])));
        }
    }
}

#[test]
fn a_record_out_of_sequence_or_with_an_epoch_going_back_is_corruption() {
    // Goal: an intact record in the wrong place — another sequence, or a lower epoch than the
    // record before it — is reported as corruption by the tail and by the look-ups.
    let dir = TempDir::new("tail-order");
    let epochs: Vec<u64> = (0..600).map(|i| 1 + i / 300).collect();
    let writer = journal_in_epochs(dir.path(), &epochs);
    let records = stored(dir.path());
    let (file, offset, _) = &records[99];
    // Record 101 where record 100 belongs (ticks: every record is the same length).
    patch(file, *offset, &records[100].2);
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    assert_eq!(tail.read(Sequence(600), &mut Vec::new(), usize::MAX).unwrap(), 99);
    let error = tail.read(Sequence(600), &mut Vec::new(), usize::MAX).expect_err("refused");
    let gap = Damage::Gap { found: Sequence(101) };
    assert!(
        matches!(&error, JournalError::Corrupt { sequence: Sequence(100), damage, .. }
        if *damage == gap),
        "{error}"
    );
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    let error = epoch_at(&mut source, Sequence(150)).expect_err("refused");
    assert!(matches!(&error, JournalError::Corrupt { damage, .. } if *damage == gap), "{error}");
    patch(file, *offset, &records[99].2);
    // Record 400 framed in epoch 1, after records of epoch 2.
    let (file, offset, _) = &records[399];
    let tick =
        Sequenced { sequence: Sequence(400), timestamp: Timestamp(1), command: Command::Tick };
    patch(file, *offset, RecordBuf::default().encode(Epoch(1), &tick));
    let mut tail = open_tail(dir.path(), Sequence(350)).unwrap();
    assert_eq!(tail.read(Sequence(600), &mut Vec::new(), usize::MAX).unwrap(), 50);
    let error = tail.read(Sequence(600), &mut Vec::new(), usize::MAX).expect_err("refused");
    assert!(matches!(error, JournalError::Corrupt { damage: Damage::EpochWentBack, .. }));
    drop(writer);
}

/// The first sequences of the segments in `dir`, in order.
fn stored_firsts(dir: &Path) -> Vec<u64> {
    segment_files(dir)
        .iter()
        .map(|file| format::parse_segment_name(file.file_name().unwrap().to_str().unwrap()))
        .map(|first| first.unwrap().0)
        .collect()
}

#[test]
fn a_flipped_byte_is_reported_as_corruption_naming_file_offset_and_sequence() {
    // Goal: a damaged record, met while reading on, while positioning, or as the first record
    // of the next segment, is a `Corrupt` error naming the file, offset and sequence; records
    // before it are returned first, and nothing panics.
    let dir = TempDir::new("tail-flip");
    let mut writer = new_writer(dir.path());
    append(&mut writer, Epoch(1), &commands(2_000));
    let through = writer.last_appended();
    drop(writer);
    let records = stored(dir.path());
    let firsts = stored_firsts(dir.path());
    let second = firsts[1] as usize;
    for (index, byte) in [(10, 40), (second - 1, 5), (0, 0)] {
        let (file, offset, record) = &records[index];
        patch(file, offset + byte, &[record[byte] ^ 0x10]);
        let sequence = Sequence(index as u64 + 1);
        let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
        let mut out = Vec::new();
        if index > 0 {
            assert_eq!(tail.read(through, &mut out, usize::MAX).unwrap() as usize, index);
        }
        let error = tail.read(through, &mut out, usize::MAX).expect_err("damage reported");
        expect_corrupt(&error, file, *offset as u64, sequence);
        // Positioning walks through the damaged record to a later one, and stops at it.
        let mut later = open_tail(dir.path(), Sequence(index as u64 + 5)).unwrap();
        let error = later.read(through, &mut out, usize::MAX).expect_err("damage reported");
        expect_corrupt(&error, file, *offset as u64, sequence);
        patch(file, offset + byte, &record[byte..=byte]);
    }
}

fn expect_corrupt(error: &JournalError, file: &Path, at: u64, expected: Sequence) {
    let JournalError::Corrupt { file: named, offset, sequence, damage, .. } = error else {
        panic!("unexpected error {error}");
    };
    assert!(named.ends_with(file.file_name().unwrap().to_str().unwrap()), "{error}");
    assert_eq!((*offset, *sequence), (at, expected), "{error}");
    assert!(matches!(damage, Damage::Checksum | Damage::Length), "{error}");
    assert!(error.to_string().contains(&format!("--at-seq {expected}")), "{error}");
}

#[test]
fn a_next_segment_that_is_cut_short_or_missing_is_reported_not_trusted() {
    // Goal: following into a segment whose file shrank, or that is not there at all (or
    // reading past the journal's end on a wrong `through`), is a `Corrupt` error, not a panic.
    let dir = TempDir::new("tail-short");
    let mut writer = new_writer(dir.path());
    append(&mut writer, Epoch(1), &commands(2_000));
    let through = writer.last_appended();
    drop(writer);
    let files = segment_files(dir.path());
    let firsts = stored_firsts(dir.path());
    let stored = stored_bytes(dir.path());
    let mut ahead = open_tail(dir.path(), Sequence(1)).unwrap();
    assert_eq!(read_all(&mut ahead, through), stored);
    let error = ahead.read(through.next(), &mut Vec::new(), usize::MAX).expect_err("refused");
    assert!(matches!(error, JournalError::Corrupt { damage: Damage::EndsEarly, .. }), "{error}");
    let last = files.last().unwrap();
    let cut = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    cut.set_len(cut.metadata().unwrap().len() / 2).unwrap();
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    let mut out = Vec::new();
    let before_last = *firsts.last().unwrap() - 1;
    assert_eq!(u64::from(tail.read(through, &mut out, usize::MAX).unwrap()), before_last);
    let error = tail.read(through, &mut out, usize::MAX).expect_err("refused");
    let length = Damage::SegmentHeader(HeaderProblem::BadField("length"));
    assert!(matches!(&error, JournalError::Corrupt { damage, offset: 0, .. } if *damage == length));
    std::fs::remove_file(last).unwrap();
    let error = tail.read(through, &mut out, usize::MAX).expect_err("refused");
    let JournalError::Corrupt { file, sequence, damage: Damage::EndsEarly, .. } = &error else {
        panic!("unexpected error {error}");
    };
    assert!(file.ends_with(files[files.len() - 2].file_name().unwrap().to_str().unwrap()));
    assert_eq!(*sequence, Sequence(before_last + 1));
}

#[test]
fn a_reader_thread_follows_a_writer_thread() {
    // Goal: with the writer appending on its own thread and publishing how far it has
    // appended, a tail on another thread reads every record once, as stored, never past it.
    let dir = TempDir::new("tail-threads");
    let mut writer = new_writer(dir.path());
    let commands = commands(8_000);
    let total = commands.len() as u64;
    let published = Arc::new(AtomicU64::new(0));
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    let received = std::thread::scope(|scope| {
        let through = Arc::clone(&published);
        scope.spawn(move || {
            for (i, chunk) in commands.chunks(7).enumerate() {
                append(&mut writer, Epoch(1), chunk);
                through.store(writer.last_appended().0, Ordering::Release);
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let (mut received, mut piece) = (Vec::new(), Vec::new());
        while tail.next().0 <= total {
            let through = Sequence(published.load(Ordering::Acquire));
            piece.clear();
            if tail.read(through, &mut piece, 16 * 1024).unwrap() == 0 {
                std::thread::yield_now();
            }
            assert!(tail.next() <= through.next(), "read past what was published");
            received.extend_from_slice(&piece);
        }
        received
    });
    assert_eq!(split(&received), stored_bytes(dir.path()));
}

/// A journal of ticks in the given epochs, one record each, from sequence 1, the epoch file
/// raised before each new epoch.
fn journal_in_epochs(dir: &Path, epochs: &[u64]) -> JournalWriter<FileStorage> {
    let mut writer = new_writer(dir);
    for (i, &epoch) in epochs.iter().enumerate() {
        let epoch = Epoch(epoch);
        if epoch > writer.data_dir().current_epoch() {
            writer.data_dir().store_epochs(Epochs { current: epoch, promised: epoch }).unwrap();
        }
        let tick = Sequenced {
            sequence: Sequence(i as u64 + 1),
            timestamp: Timestamp(1_000 + i as u64),
            command: Command::Tick,
        };
        writer.append_command(epoch, &tick).unwrap();
    }
    writer.end_batch().unwrap();
    writer
}

/// What the look-ups must answer, computed from the list of epochs.
fn check_look_ups(dir: &Path, epochs: &[u64], first_held: u64) {
    let mut source = ReadOnlyDir::open(dir).unwrap();
    let last = epochs.len() as u64;
    for sequence in 0..=last + 2 {
        let expected = (sequence >= first_held && sequence <= last)
            .then(|| Epoch(epochs[sequence as usize - 1]));
        let found = epoch_at(&mut source, Sequence(sequence)).unwrap();
        assert_eq!(found, expected, "epoch at {sequence}");
    }
    let highest = epochs.iter().max().copied().unwrap_or(0);
    for epoch in 0..=highest + 1 {
        let expected = (first_held..=last).rev().find(|&s| epochs[s as usize - 1] <= epoch);
        let found = last_at_or_below_epoch(&mut source, Epoch(epoch)).unwrap();
        assert_eq!(found, expected.map(Sequence), "last at or below epoch {epoch}");
    }
}

#[test]
fn epoch_look_ups_answer_at_every_boundary() {
    // Goal: on records in epochs 1,1,1,2,2,4,4, the epoch of each sequence and the last
    // sequence at or below each epoch are right, for an epoch with no record (3), above all
    // (5), below all (0), and for sequences 0 and past the end.
    let dir = TempDir::new("tail-epochs");
    let epochs = [1, 1, 1, 2, 2, 4, 4];
    let writer = journal_in_epochs(dir.path(), &epochs);
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    let at: Vec<Option<Epoch>> =
        (0..=8).map(|s| epoch_at(&mut source, Sequence(s)).unwrap()).collect();
    let e = |n| Some(Epoch(n));
    assert_eq!(at, [None, e(1), e(1), e(1), e(2), e(2), e(4), e(4), None]);
    let below: Vec<Option<Sequence>> =
        (0..=5).map(|n| last_at_or_below_epoch(&mut source, Epoch(n)).unwrap()).collect();
    let s = |n| Some(Sequence(n));
    assert_eq!(below, [None, s(3), s(5), s(5), s(7), s(7)]);
    check_look_ups(dir.path(), &epochs, 1);
    drop(writer);
}

/// The history `note_epochs` notes from `from` to `through`, and the last sequence noted.
fn noted(dir: &Path, from: u64, through: u64) -> (Vec<(u64, u64)>, Option<Sequence>) {
    let mut source = ReadOnlyDir::open(dir).unwrap();
    let mut history = EpochHistory::default();
    let last = note_epochs(&mut source, Sequence(from), Sequence(through), &mut history).unwrap();
    (history.starts().iter().map(|(epoch, first)| (epoch.0, first.0)).collect(), last)
}

/// What `noted` must find, computed from the list of epochs.
fn expected_starts(epochs: &[u64], from: u64, through: u64) -> Vec<(u64, u64)> {
    let mut starts: Vec<(u64, u64)> = Vec::new();
    for sequence in from..=through.min(epochs.len() as u64) {
        let epoch = epochs[sequence as usize - 1];
        if starts.last().is_none_or(|&(last, _)| last != epoch) {
            starts.push((epoch, sequence));
        }
    }
    starts
}

#[test]
fn epochs_are_noted_across_segments_and_stop_where_the_journal_does() {
    // Goal: the epoch history noted over a range of the journal starts each epoch at its first
    // record, across segments; it stops at the journal's end, and notes nothing when the range
    // starts at a retired record.
    let dir = TempDir::new("tail-note-epochs");
    let mut epochs = Vec::new();
    for (epoch, count) in [(1, 2_500), (2, 1_700), (4, 3_100), (6, 1), (7, 900)] {
        epochs.extend(std::iter::repeat_n(epoch, count));
    }
    let last = epochs.len() as u64;
    let writer = journal_in_epochs(dir.path(), &epochs);
    for (from, through) in [(1, last), (1, 4_200), (2_501, 4_201), (4_300, 7_301), (7_302, last)] {
        let (starts, noted_last) = noted(dir.path(), from, through);
        assert_eq!(starts, expected_starts(&epochs, from, through), "{from}..={through}");
        assert_eq!(noted_last, Some(Sequence(through)), "{from}..={through}");
    }
    // Past the end: up to the last record held.
    assert_eq!(noted(dir.path(), 8_000, last + 50).1, Some(Sequence(last)));
    assert_eq!(noted(dir.path(), last + 1, last + 50), (vec![], None));
    let firsts = stored_firsts(dir.path());
    writer.data_dir().retire_segments(Sequence(firsts[3])).unwrap();
    assert_eq!(noted(dir.path(), 1, last), (vec![], None));
    let (starts, noted_last) = noted(dir.path(), firsts[3], last);
    assert_eq!(starts, expected_starts(&epochs, firsts[3], last));
    assert_eq!(noted_last, Some(Sequence(last)));
    drop(writer);
}

#[test]
fn a_snapshot_over_a_damaged_one_and_retired_records_names_the_epochs_the_journal_holds() {
    // Goal: a snapshot written on the calling thread (a clean stop) takes its epoch history
    // from the newest earlier snapshot that reads and the journal's records after it. Where
    // the newest is damaged and the records after the older one were retired, it carries the
    // history of the records the journal holds, known from the first of them: not nothing,
    // and nothing said of the records retired.
    let dir = TempDir::new("tail-history-held");
    let mut epochs = Vec::new();
    for (epoch, count) in [(1, 2_500), (2, 1_700), (4, 3_100)] {
        epochs.extend(std::iter::repeat_n(epoch, count));
    }
    let last = epochs.len() as u64;
    let writer = journal_in_epochs(dir.path(), &epochs);
    let storage = FileStorage::open(dir.path()).unwrap();
    let state = Engine::new(config());
    snapshot::write_now(&storage, &state, Sequence(100)).unwrap();
    let newer = snapshot::write_now(&storage, &state, Sequence(5_000)).unwrap();
    let held = stored_firsts(dir.path())[2];
    assert!((102..=5_000).contains(&held), "records after the older snapshot retired: {held}");
    writer.data_dir().retire_segments(Sequence(held)).unwrap();
    let file = dir.path().join(&newer.name);
    let mut bytes = std::fs::read(&file).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    assert!(snapshot::read_meta_streaming(&storage, &newer.name).is_err(), "damaged");
    let written = snapshot::write_now(&storage, &state, Sequence(last)).unwrap();
    let starts: Vec<(u64, u64)> =
        written.history.starts().iter().map(|(epoch, first)| (epoch.0, first.0)).collect();
    assert_eq!(starts, expected_starts(&epochs, held, last));
    assert_eq!(written.history.known_from(), Some(Sequence(held)));
    drop(writer);
}

#[test]
fn epoch_look_ups_search_across_segments_and_retired_ones() {
    // Goal: with each epoch's records spanning several segments, the look-ups agree with the
    // list of epochs at every sequence and epoch, and, once the oldest segments are retired,
    // answer `None` for what the journal no longer holds.
    let dir = TempDir::new("tail-epochs-segments");
    let mut epochs = Vec::new();
    for (epoch, count) in [(1, 2_500), (2, 1_700), (4, 3_100), (6, 1), (7, 900)] {
        epochs.extend(std::iter::repeat_n(epoch, count));
    }
    let writer = journal_in_epochs(dir.path(), &epochs);
    assert!(segment_files(dir.path()).len() >= 6, "epochs span segments");
    check_look_ups(dir.path(), &epochs, 1);
    let firsts = stored_firsts(dir.path());
    writer.data_dir().retire_segments(Sequence(firsts[3])).unwrap();
    check_look_ups(dir.path(), &epochs, firsts[3]);
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    assert_eq!(last_at_or_below_epoch(&mut source, Epoch(1)).unwrap(), None);
    drop(writer);
}

#[test]
fn the_look_ups_take_a_half_written_last_record_as_not_yet_there() {
    // Goal: on a live journal whose last record is half written, the look-ups answer from the
    // intact records before it; the same damage in an earlier segment is corruption.
    let dir = TempDir::new("tail-half");
    let epochs: Vec<u64> = (0..1_500).map(|i| 1 + i / 1_000).collect();
    let writer = journal_in_epochs(dir.path(), &epochs);
    let last = epochs.len() as u64;
    let records = stored(dir.path());
    // The writer's next record, its first half copied in: what a reader may see mid-append.
    let (file, offset, bytes) = records.last().unwrap();
    let mut half = bytes[..bytes.len() / 2].to_vec();
    half[8..16].copy_from_slice(&(last + 1).to_le_bytes());
    patch(file, offset + bytes.len(), &half);
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    assert_eq!(epoch_at(&mut source, Sequence(last)).unwrap(), Some(Epoch(2)));
    assert_eq!(epoch_at(&mut source, Sequence(last + 1)).unwrap(), None);
    assert_eq!(last_at_or_below_epoch(&mut source, Epoch(9)).unwrap(), Some(Sequence(last)));
    // The tail, told the truth about `through`, never reaches the half-written bytes.
    let mut tail = Tail::open(ReadOnlyDir::open(dir.path()).unwrap(), Sequence(1)).unwrap();
    assert_eq!(read_all(&mut tail, Sequence(last)).len(), records.len());
    // A flipped byte in the first segment is not a record in progress.
    let (file, offset, record) = &records[3];
    assert_ne!(file, &records.last().unwrap().0, "the damage is before the last segment");
    patch(file, offset + 33, &[record[33] ^ 0x01]);
    let error = epoch_at(&mut source, Sequence(10)).expect_err("corruption reported");
    assert!(matches!(error, JournalError::Corrupt { sequence: Sequence(4), .. }), "{error}");
    let error = last_at_or_below_epoch(&mut source, Epoch(1)).expect_err("corruption");
    assert!(matches!(error, JournalError::Corrupt { sequence: Sequence(4), .. }), "{error}");
    drop(writer);
}

#[test]
fn records_that_end_before_the_next_segment_or_an_empty_named_segment_are_corruption() {
    // Goal: a segment whose records stop short of the next segment's first sequence, or a
    // segment named by a sequence that holds no record, is `EndsEarly` corruption for the tail
    // and the look-ups, and the tail does not loop on the empty segment.
    // Ticks are all one length, so a first journal shows where the segments start; the second
    // changes epoch exactly at the second segment.
    let scratch = TempDir::new("tail-ends-early-layout");
    drop(journal_in_epochs(scratch.path(), &[1; 3_000]));
    let firsts = stored_firsts(scratch.path());
    assert!(firsts.len() >= 3, "the journal spans three segments");
    let epochs: Vec<u64> = (1..=3_000).map(|s| if s < firsts[1] { 1 } else { 2 }).collect();
    let dir = TempDir::new("tail-ends-early");
    let writer = journal_in_epochs(dir.path(), &epochs);
    let records = stored(dir.path());
    assert_eq!(stored_firsts(dir.path()), firsts);
    // The last three records of the first segment zeroed.
    let cut = firsts[1] as usize - 4;
    let (file, offset, _) = &records[cut];
    let zeros = vec![0u8; records[cut..firsts[1] as usize - 1].iter().map(|r| r.2.len()).sum()];
    patch(file, *offset, &zeros);
    let missing = Sequence(cut as u64 + 1);
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    assert_eq!(tail.read(Sequence(3_000), &mut Vec::new(), usize::MAX).unwrap() as usize, cut);
    let error = tail.read(Sequence(3_000), &mut Vec::new(), usize::MAX).expect_err("refused");
    let ends_early = |error: &JournalError, at: Sequence| {
        matches!(error, JournalError::Corrupt { sequence, damage: Damage::EndsEarly, .. }
            if *sequence == at)
    };
    assert!(ends_early(&error, missing), "{error}");
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    let error = epoch_at(&mut source, Sequence(firsts[1] - 1)).expect_err("refused");
    assert!(ends_early(&error, missing), "{error}");
    let error = last_at_or_below_epoch(&mut source, Epoch(1)).expect_err("refused");
    assert!(ends_early(&error, missing), "{error}");
    // The second segment emptied: named by a sequence it does not hold.
    let second = &segment_files(dir.path())[1];
    let length = std::fs::metadata(second).unwrap().len() as usize;
    patch(second, SEGMENT_HEADER_LEN, &vec![0; length - SEGMENT_HEADER_LEN]);
    let mut tail = open_tail(dir.path(), Sequence(firsts[1])).unwrap();
    let error = tail.read(Sequence(3_000), &mut Vec::new(), usize::MAX).expect_err("refused");
    assert!(ends_early(&error, Sequence(firsts[1])), "{error}");
    let JournalError::Corrupt { offset, .. } = error else { unreachable!() };
    assert_eq!(offset, SEGMENT_HEADER_LEN as u64);
    drop(writer);
}

/// A directory that runs `before_first_map` (if any) when a reader first maps a segment, and
/// counts the segments mapped: with retention retiring the oldest segments there, after the
/// reader listed them, the race a reader of a live journal meets.
struct WatchedDir {
    inner: ReadOnlyDir,
    before_first_map: Option<Box<dyn FnOnce()>>,
    maps: Arc<AtomicU64>,
}

impl WatchedDir {
    fn new(dir: &Path, before_first_map: Option<Box<dyn FnOnce()>>) -> WatchedDir {
        let inner = ReadOnlyDir::open(dir).unwrap();
        WatchedDir { inner, before_first_map, maps: Arc::new(AtomicU64::new(0)) }
    }
}

impl ReadSource for WatchedDir {
    type Bytes = MappedFile;
    fn list_files(&self) -> io::Result<Vec<String>> {
        self.inner.list_files()
    }
    fn file_len(&self, name: &str) -> io::Result<u64> {
        self.inner.file_len(name)
    }
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read_file(name)
    }
    fn read_segment(&mut self, name: &str) -> io::Result<MappedFile> {
        if let Some(hook) = self.before_first_map.take() {
            hook();
        }
        self.maps.fetch_add(1, Ordering::Relaxed);
        self.inner.read_segment(name)
    }
    fn describe_file(&self, name: &str) -> String {
        self.inner.describe_file(name)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

#[test]
fn a_segment_retired_between_listing_and_mapping_counts_as_retired() {
    // Goal: when retention removes a segment after a reader listed it, the reader lists again
    // and answers from what the journal now holds, rather than failing on a missing file.
    let dir = TempDir::new("tail-race");
    let epochs: Vec<u64> = (0..5_000).map(|i| 1 + i / 2_000).collect();
    let writer = journal_in_epochs(dir.path(), &epochs);
    let firsts = stored_firsts(dir.path());
    let held = firsts[2];
    let stored = stored_bytes(dir.path());
    let racing = || {
        let data_dir = writer.data_dir().clone();
        let retire = move || {
            data_dir.retire_segments(Sequence(held)).unwrap();
        };
        WatchedDir::new(dir.path(), Some(Box::new(retire)))
    };
    let mut tail = Tail::open(racing(), Sequence(1)).unwrap();
    let error = tail.read(Sequence(5_000), &mut Vec::new(), usize::MAX).expect_err("refused");
    assert!(matches!(error, JournalError::Retired { first, .. } if first == Sequence(held)));
    let mut tail = Tail::open(racing(), Sequence(held)).unwrap();
    let mut out = Vec::new();
    tail.read(Sequence(5_000), &mut out, usize::MAX).unwrap();
    assert_eq!(split(&out), stored[held as usize - 1..]);
    assert_eq!(epoch_at(&mut racing(), Sequence(5)).unwrap(), None);
    assert_eq!(
        epoch_at(&mut racing(), Sequence(held)).unwrap(),
        Some(Epoch(1 + (held - 1) / 2_000))
    );
    for epoch in 0..=4 {
        let expected = (held..=5_000).rev().find(|&s| epochs[s as usize - 1] <= epoch);
        let found = last_at_or_below_epoch(&mut racing(), Epoch(epoch)).unwrap();
        assert_eq!(found, expected.map(Sequence), "epoch {epoch}");
    }
}

#[test]
fn a_reader_in_another_process_reads_what_is_complete_and_waits_at_the_writers_position() {
    // Goal: `read_written`, which is not told how far the writer got, returns every complete
    // record once, across segment starts; at the writer's position (nothing written yet, a
    // segment not yet started, a record half written) it returns nothing and reads on once
    // the writer does; a record failing its checks before the last segment is corruption.
    let dir = TempDir::new("tail-written");
    let mut writer = new_writer(dir.path());
    let commands = commands(2_000);
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    let mut out = Vec::new();
    assert_eq!(tail.read_written(&mut out, usize::MAX).unwrap(), 0, "an empty journal");
    let mut read = Vec::new();
    for chunk in commands.chunks(150) {
        append(&mut writer, Epoch(1), chunk);
        let mut out = Vec::new();
        let count = tail.read_written(&mut out, 4_096).unwrap();
        assert!(count > 0, "nothing read after an append");
        read.extend(split(&out));
        // A bounded read leaves the rest to the next calls, none of which repeats a record.
        loop {
            let mut more = Vec::new();
            if tail.read_written(&mut more, 4_096).unwrap() == 0 {
                break;
            }
            read.extend(split(&more));
        }
        assert_eq!(tail.read_written(&mut Vec::new(), usize::MAX).unwrap(), 0, "read twice");
    }
    let stored = stored(dir.path());
    assert!(segment_files(dir.path()).len() >= 3, "the records span segments");
    assert_eq!(read, stored.iter().map(|(_, _, bytes)| bytes.clone()).collect::<Vec<_>>());
    // The writer's next record, half written after the last: not yet there.
    let last = stored.len() as u64;
    let (file, offset, bytes) = stored.last().unwrap();
    let mut half = bytes[..bytes.len() / 2].to_vec();
    half[8..16].copy_from_slice(&(last + 1).to_le_bytes());
    patch(file, offset + bytes.len(), &half);
    assert_eq!(tail.read_written(&mut Vec::new(), usize::MAX).unwrap(), 0, "a half record");
    assert_eq!(tail.next(), Sequence(last + 1));
    patch(file, offset + bytes.len(), &vec![0; half.len()]);
    // Appended for real: read on.
    let more = {
        let mut workload = Workload::new(12, Sequence(last + 1), Timestamp(10));
        generate(&mut workload, &mut Engine::new(config()), 5)
    };
    append(&mut writer, Epoch(1), &more);
    let mut out = Vec::new();
    assert_eq!(tail.read_written(&mut out, usize::MAX).unwrap(), 5);
    assert_eq!(split(&out), stored_bytes(dir.path())[last as usize..]);
    drop(writer);
    // A flipped byte in the first segment, met by a reader from the start: corruption.
    let (file, offset, record) = &stored[7];
    patch(file, offset + 33, &[record[33] ^ 0x01]);
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    let mut out = Vec::new();
    assert_eq!(tail.read_written(&mut out, usize::MAX).unwrap(), 7, "the records before it");
    let error = tail.read_written(&mut out, usize::MAX).expect_err("corruption reported");
    expect_corrupt(&error, file, *offset as u64, Sequence(8));
}

#[test]
fn a_reader_at_the_writers_position_knows_it_without_mapping_or_listing() {
    // Goal: `at_writers_position` is true exactly while the tail waits where the writer will
    // append, and asking it maps no segment; the map the tail holds shows the writer's next
    // records, which `read_written` then reads without mapping again.
    let dir = TempDir::new("tail-waits-in-place");
    let mut writer = new_writer(dir.path());
    let commands = commands(120);
    append(&mut writer, Epoch(1), &commands[..100]);
    assert_eq!(segment_files(dir.path()).len(), 1, "one segment, far from full");
    let source = WatchedDir::new(dir.path(), None);
    let maps = Arc::clone(&source.maps);
    let mut tail = Tail::open(source, Sequence(1)).unwrap();
    assert!(!tail.at_writers_position(), "not positioned yet: a read must look");
    let mut out = Vec::new();
    assert_eq!(tail.read_written(&mut out, usize::MAX).unwrap(), 100);
    let mapped = maps.load(Ordering::Relaxed);
    for _ in 0..5 {
        assert!(tail.at_writers_position(), "waiting where the writer appends");
    }
    assert_eq!(maps.load(Ordering::Relaxed), mapped, "a look mapped a segment");
    append(&mut writer, Epoch(1), &commands[100..]);
    assert!(!tail.at_writers_position(), "a record written where the tail waits");
    assert_eq!(tail.read_written(&mut out, usize::MAX).unwrap(), 20);
    assert!(tail.at_writers_position());
    assert_eq!(split(&out), stored_bytes(dir.path()));
}

#[test]
fn a_first_segment_that_ends_early_is_followed_into_the_next() {
    // Goal: in the layout a `journal rebuild` leaves (a first segment named after a snapshot,
    // holding the records up to where the next segment starts, with room after them), a tail
    // reads on into the next segment: an end marker with room is the writer's position only
    // where no segment is named by the next sequence.
    let dir = TempDir::new("tail-rebuilt-layout");
    let writer = journal_in_epochs(dir.path(), &[1; 3_000]);
    drop(writer);
    let files = segment_files(dir.path());
    let firsts = stored_firsts(dir.path());
    assert!(firsts.len() >= 2, "the journal spans segments");
    let all = stored_bytes(dir.path());
    // Segment 1 replaced by one named `start` holding records `start..firsts[1]`.
    let start = firsts[1] - 40;
    let old = std::fs::read(&files[0]).unwrap();
    let mut header = format::decode_segment_header(&old).unwrap();
    header.first_sequence = Sequence(start);
    let mut rebuilt = vec![0u8; old.len()];
    format::encode_segment_header(&header, &mut rebuilt);
    let records: Vec<u8> = all[start as usize - 1..firsts[1] as usize - 1].concat();
    rebuilt[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + records.len()].copy_from_slice(&records);
    std::fs::write(dir.path().join(format::segment_name(Sequence(start))), &rebuilt).unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    let mut tail = open_tail(dir.path(), Sequence(start)).unwrap();
    let mut out = Vec::new();
    let first_segment = records.len();
    assert_eq!(tail.read_written(&mut out, first_segment).unwrap(), 40, "the first segment's");
    assert_eq!(tail.next(), Sequence(firsts[1]));
    assert!(!tail.at_writers_position(), "a segment is named by the next sequence");
    while tail.read_written(&mut out, usize::MAX).unwrap() > 0 {}
    assert_eq!(split(&out), all[start as usize - 1..]);
    let mut tail = open_tail(dir.path(), Sequence(start)).unwrap();
    assert_eq!(read_all(&mut tail, Sequence(3_000)), all[start as usize - 1..]);
}

#[test]
fn the_last_records_place_answers_for_it_until_it_is_rewritten() {
    // Goal: `last_place` names the segment and offset of the last record read, across segment
    // starts and bounded reads; `epoch_at_place` there gives `epoch_at`'s answer for that
    // record, and nothing (never a wrong epoch) once the place holds something else: the
    // record damaged or cut, another sequence asked for, an offset off the records, the
    // segment gone.
    let dir = TempDir::new("tail-last-place");
    let epochs: Vec<u64> = (0..3_000).map(|i| 1 + i / 1_100).collect();
    let writer = journal_in_epochs(dir.path(), &epochs);
    let stored = stored(dir.path());
    assert!(segment_files(dir.path()).len() >= 3, "the records span segments");
    let mut tail = open_tail(dir.path(), Sequence(1)).unwrap();
    assert!(tail.last_place().is_none(), "nothing read yet");
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    let mut places_checked = 0;
    while tail.read(Sequence(3_000), &mut Vec::new(), 1_000).unwrap() > 0 {
        let last = Sequence(tail.next().0 - 1);
        let (file, offset, _) = &stored[last.0 as usize - 1];
        let (name, at) = tail.last_place().expect("the segment holding it is mapped");
        assert_eq!((name, at), (file.file_name().unwrap().to_str().unwrap(), *offset));
        let found = epoch_at_place(&mut source, name, at, last).unwrap();
        assert_eq!(found, Some(Epoch(epochs[last.0 as usize - 1])), "at {last}");
        assert_eq!(found, epoch_at(&mut source, last).unwrap());
        assert_eq!(epoch_at_place(&mut source, name, at, last.next()).unwrap(), None);
        places_checked += 1;
    }
    assert!(places_checked > 40, "bounded reads: {places_checked}");
    let (file, offset, record) = stored.last().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    let last = Sequence(3_000);
    assert_eq!(epoch_at_place(&mut source, name, offset + 16, last).unwrap(), None, "mid-record");
    assert_eq!(epoch_at_place(&mut source, name, offset + 3, last).unwrap(), None, "unaligned");
    assert_eq!(epoch_at_place(&mut source, name, 0, last).unwrap(), None, "the header");
    assert_eq!(epoch_at_place(&mut source, name, usize::MAX - 15, last).unwrap(), None);
    let other = format::segment_name(Sequence(1));
    assert_eq!(epoch_at_place(&mut source, &other, *offset, last).unwrap(), None, "elsewhere");
    patch(file, offset + 33, &[record[33] ^ 0x01]);
    assert_eq!(epoch_at_place(&mut source, name, *offset, last).unwrap(), None, "damaged");
    patch(file, *offset, &vec![0; record.len()]);
    assert_eq!(epoch_at_place(&mut source, name, *offset, last).unwrap(), None, "cut");
    drop(writer);
    std::fs::remove_file(file).unwrap();
    assert_eq!(epoch_at_place(&mut source, name, *offset, last).unwrap(), None, "gone");
}
