//! `journal backup`: a copy of a data directory, taken while its node may be writing it,
//! recovers to the state of the records it copied; retention retiring segments and snapshots
//! under the copy does not break it; what cannot be copied is refused, the source untouched.

mod common;

use std::io;

use common::{
    TempDir, config, digest_of, files, generate, journal_with_snapshots, options, record_at,
};
use ringfence_core::{Engine, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::backup::{backup, backup_dir};
use ringfence_journal::datadir::{CATCH_UP_FILE, TRUNCATING_FILE};
use ringfence_journal::error::JournalError;
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::recovery::{recover, recover_from};
use ringfence_journal::scan::ReadSource;
use ringfence_journal::snapshot::{self, SnapshotPolicy};
use ringfence_journal::storage::Storage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;

const COMMANDS: usize = 2_000;

/// A journal of [`COMMANDS`] commands in 64 KiB segments with a snapshot every 300 (the
/// newest three kept, so older segments are retired), and the commands.
fn journal() -> (FaultStorage, Vec<Sequenced>) {
    let mut workload = Workload::new(81, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), COMMANDS);
    let disk = FaultStorage::new();
    let policy = SnapshotPolicy { every_commands: Some(300), keep: 3, ..SnapshotPolicy::default() };
    journal_with_snapshots(&disk, &commands, policy);
    (disk, commands)
}

#[test]
fn an_empty_snapshot_is_left_out_of_a_backup_as_damaged() {
    // Goal: a zero-length snapshot (damage at rest, which recovery passes over) is named as
    // damaged and left out of the copy; the copy starts from the intact ones and recovers.
    let (disk, commands) = journal();
    let (newest, name) = snapshot::list(&disk).unwrap().pop().expect("a snapshot");
    disk.set_len(&name, 0);
    let copy = FaultStorage::new();
    let copied = backup(&mut disk.clone(), &copy, &mut |_, _| {}).unwrap();
    assert!(!copied.snapshots.contains(&newest), "{copied:?}");
    assert!(!copied.snapshots.is_empty(), "the older snapshots are copied: {copied:?}");
    let [damaged] = &copied.damaged_snapshots[..] else { panic!("{copied:?}") };
    assert!(damaged.contains(&name), "{damaged}");
    assert!(Storage::file_len(&copy, &name).is_err(), "the empty snapshot was copied");
    let restored = recover_from(copy.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(restored.engine.state_digest(), digest_of(&commands));
}

#[test]
fn a_backup_recovers_to_the_state_of_every_record_it_copied() {
    // Goal: the copy of a stopped journal holds every retained record and the snapshots it
    // reaches, says the node stopped cleanly there, is marked catching up, and recovers to
    // the digest of every command; the source is not changed by a byte.
    let (disk, commands) = journal();
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    recovered.writer.close().unwrap().expect("a segment is open");
    let before = files(&disk);
    let copy = FaultStorage::new();
    let copied = backup(&mut disk.clone(), &copy, &mut |_, _| {}).unwrap();
    assert_eq!(files(&disk), before, "the source was written to");

    let last = Sequence(COMMANDS as u64);
    assert_eq!(copied.last, Some(last));
    assert!(copied.first > Sequence(1), "retention retired the oldest segments: {copied:?}");
    assert_eq!(copied.records, last.0 - copied.first.0 + 1);
    assert!(copied.clean_stop && copied.left_out.is_none(), "{copied:?}");
    let kept: Vec<_> = snapshot::list(&disk).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(copied.snapshots, kept, "every snapshot the journal reaches");
    assert!(
        Storage::file_len(&copy, CATCH_UP_FILE).is_ok(),
        "the copy may lack later acknowledgements"
    );
    let restored = recover_from(copy.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(restored.report.clean_stop, Some(last));
    assert_eq!(restored.next_sequence, last.next());
    assert_eq!(restored.engine.state_digest(), digest_of(&commands));
    assert!(restored.writer.data_dir().catching_up(), "the marker is in force");
}

#[test]
fn a_record_not_yet_whole_is_left_out_and_the_rest_recovers() {
    // Goal: on a journal whose last record is not whole (a node writing it, or a crash), the
    // copy ends at the record before, with no clean stop claimed, and recovers to the state
    // of the records before it; the source keeps its tail.
    let (disk, commands) = journal();
    let last = Sequence(COMMANDS as u64);
    let (segment, offset) = record_at(&disk, last);
    // What a write not yet whole leaves: a unit of the record still zero.
    let mut bytes = disk.live_bytes(&segment).unwrap();
    bytes[offset + 16..offset + 32].fill(0);
    disk.write_file(&segment, &bytes).unwrap();
    let before = files(&disk);
    let copy = FaultStorage::new();
    let copied = backup(&mut disk.clone(), &copy, &mut |_, _| {}).unwrap();
    assert_eq!(files(&disk), before, "the source was written to");
    assert_eq!((copied.last, copied.left_out), (Some(Sequence(last.0 - 1)), Some(last)));
    assert!(!copied.clean_stop);
    let restored = recover_from(copy, options(Durability::Batch)).unwrap();
    assert_eq!(restored.next_sequence, last);
    assert!(restored.report.torn_tail.is_none(), "the copy has no torn tail");
    assert_eq!(restored.engine.state_digest(), digest_of(&commands[..COMMANDS - 1]));
}

/// A source that calls `hook` with its disk and the segment's name before every read of a
/// segment: a node changing its directory under the copy.
struct OnSegmentRead<F: FnMut(&FaultStorage, &str)> {
    disk: FaultStorage,
    hook: F,
}

impl<F: FnMut(&FaultStorage, &str)> ReadSource for OnSegmentRead<F> {
    type Bytes = <FaultStorage as ReadSource>::Bytes;
    fn list_files(&self) -> io::Result<Vec<String>> {
        self.disk.list()
    }
    fn file_len(&self, name: &str) -> io::Result<u64> {
        Storage::file_len(&self.disk, name)
    }
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        Storage::read_file(&self.disk, name)
    }
    fn read_segment(&mut self, name: &str) -> io::Result<Self::Bytes> {
        (self.hook)(&self.disk, name);
        ReadSource::read_segment(&mut self.disk, name)
    }
    fn describe_file(&self, name: &str) -> String {
        self.disk.describe(name)
    }
    fn location(&self) -> String {
        ReadSource::location(&self.disk)
    }
}

/// Retention run once, as the node would after a new snapshot: the oldest segments and every
/// snapshot but the newest go.
fn retire(disk: &FaultStorage) {
    let snapshots = snapshot::list(disk).unwrap();
    let (newest, _) = snapshots.last().cloned().unwrap();
    for (_, old) in &snapshots[..snapshots.len() - 1] {
        disk.delete(old);
    }
    // The segments every record of which the newest snapshot holds, but the last.
    let mut segments: Vec<String> =
        disk.list().unwrap().into_iter().filter(|n| n.ends_with(".seg")).collect();
    segments.sort();
    for pair in segments.windows(2) {
        let next_first: u64 = pair[1].trim_end_matches(".seg").parse().unwrap();
        if next_first <= newest.0 + 1 {
            disk.delete(&pair[0]);
        }
    }
}

#[test]
fn damage_that_moves_at_every_read_fails_the_copy_and_proposes_no_repair() {
    // Goal: a journal whose records end in damage somewhere else at every read (how a running
    // node's journal would look to a reader that raced its writer) fails the backup after its
    // tries, saying where the records ended and that the place moved. It proposes no repair:
    // the journal may be whole, and a truncation would drop acknowledged records.
    let (disk, _) = journal();
    // A record with one intact after it (the last), then the one before it, and so on.
    let mut due = COMMANDS as u64 - 1;
    let hook = |disk: &FaultStorage, name: &str| {
        let (segment, offset) = record_at(disk, Sequence(due));
        if segment == name {
            let mut bytes = disk.live_bytes(&segment).unwrap();
            bytes[offset + 16..offset + 32].fill(0);
            disk.write_file(&segment, &bytes).unwrap();
            due -= 1;
        }
    };
    let copy = FaultStorage::new();
    let mut source = OnSegmentRead { disk: disk.clone(), hook };
    let refused = backup(&mut source, &copy, &mut |_, _| {}).unwrap_err().to_string();
    assert!(refused.contains("changed under every copy of it: the records ended at"), "{refused}");
    assert!(refused.contains("somewhere else at each read; run the backup again"), "{refused}");
    assert!(!refused.contains("truncate"), "no repair proposed: {refused}");
    assert_eq!(copy.list().unwrap(), Vec::<String>::new(), "the copy was cleared");
}

#[test]
fn segments_retired_under_the_copy_are_passed_over_for_the_newer_snapshot() {
    // Goal: retention retiring segments (and deleting old snapshots) while the copy runs does
    // not fail it: the copy starts after the retired segments, from the newest snapshot, and
    // recovers to the same state.
    let (disk, commands) = journal();
    let segments = disk.list().unwrap().iter().filter(|n| n.ends_with(".seg")).count();
    // When the backup first reads a segment to copy it, after the scan's reads.
    let (mut scan_reads, retired) = (segments, std::cell::Cell::new(false));
    let hook = |disk: &FaultStorage, _: &str| {
        if scan_reads > 0 {
            scan_reads -= 1;
        } else if !retired.replace(true) {
            retire(disk);
        }
    };
    let copy = FaultStorage::new();
    let copied = backup(&mut OnSegmentRead { disk: disk.clone(), hook }, &copy, &mut |_, _| {});
    assert!(retired.get(), "retention ran under the copy");
    let copied = copied.unwrap();
    let mut left: Vec<String> =
        disk.list().unwrap().into_iter().filter(|n| n.ends_with(".seg")).collect();
    left.sort();
    assert_eq!(copied.segments, left, "the copy starts with the oldest segment left");
    let newest = snapshot::list(&disk).unwrap().last().unwrap().0;
    assert_eq!(copied.snapshots, vec![newest], "only the snapshot retention kept");
    assert!(copied.first <= newest.next() && copied.first > Sequence(1), "{copied:?}");
    assert_eq!(copied.last, Some(Sequence(COMMANDS as u64)));
    let restored = recover_from(copy, options(Durability::Batch)).unwrap();
    assert_eq!(restored.engine.state_digest(), digest_of(&commands));
}

#[test]
fn a_damaged_journal_a_repair_under_way_and_no_journal_are_refused() {
    // Goal: the copy is refused, naming why, and nothing is written to it, when the journal
    // is damaged before its tail, when a truncation was cut off part way, and when there is
    // no journal at all.
    let (disk, _) = journal();
    let (segment, offset) = record_at(&disk, Sequence(1_500));
    disk.corrupt(&segment, offset + 20, 0x40);
    let copy = FaultStorage::new();
    let refused = backup(&mut disk.clone(), &copy, &mut |_, _| {}).unwrap_err();
    assert!(matches!(refused, JournalError::Refused(_)), "{refused}");
    assert!(refused.to_string().contains("journal verify"), "{refused}");
    assert_eq!(copy.list().unwrap(), Vec::<String>::new(), "a refused copy wrote files");

    let (disk, _) = journal();
    disk.write_file(TRUNCATING_FILE, b"1200\n").unwrap();
    let refused = backup(&mut disk.clone(), &copy, &mut |_, _| {}).unwrap_err();
    assert!(refused.to_string().contains("repair"), "{refused}");
    assert_eq!(copy.list().unwrap(), Vec::<String>::new());

    let refused = backup(&mut FaultStorage::new(), &copy, &mut |_, _| {}).unwrap_err();
    assert!(refused.to_string().contains("holds no journal"), "{refused}");
    assert_eq!(copy.list().unwrap(), Vec::<String>::new());
}

#[test]
fn a_damaged_snapshot_is_left_out_and_a_stopped_journal_that_moved_is_refused() {
    // Goal: a snapshot that does not load is left out of the copy, reported, and the copy
    // recovers as the directory itself does, from an older snapshot; a journal whose node
    // stopped cleanly and whose last record was then damaged is refused, as recovery refuses
    // it, rather than copied without that record.
    let (disk, commands) = journal();
    let mut recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    recovered.writer.close().unwrap().expect("a segment is open");
    let snapshots = snapshot::list(&disk).unwrap();
    let (newest, name) = snapshots.last().cloned().unwrap();
    disk.corrupt(&name, 200, 0x01);
    let copy = FaultStorage::new();
    let copied = backup(&mut disk.clone(), &copy, &mut |_, _| {}).unwrap();
    assert_eq!(copied.damaged_snapshots.len(), 1, "{copied:?}");
    assert!(copied.damaged_snapshots[0].contains(&name), "names the source's file: {copied:?}");
    assert!(!copied.snapshots.contains(&newest) && !copied.snapshots.is_empty(), "{copied:?}");
    assert!(Storage::file_len(&copy, &name).is_err(), "the damaged snapshot was copied");
    let restored = recover_from(copy, options(Durability::Batch)).unwrap();
    assert_eq!(restored.engine.state_digest(), digest_of(&commands));

    let last = Sequence(COMMANDS as u64);
    let (segment, offset) = record_at(&disk, last);
    let mut bytes = disk.live_bytes(&segment).unwrap();
    bytes[offset + 16..offset + 32].fill(0);
    disk.write_file(&segment, &bytes).unwrap();
    assert!(recover_from(disk.process_crash(), options(Durability::Batch)).is_err());
    let copy = FaultStorage::new();
    let refused = backup(&mut disk.clone(), &copy, &mut |_, _| {}).unwrap_err();
    assert!(refused.to_string().contains("no longer ends where it did"), "{refused}");
    assert_eq!(copy.list().unwrap(), Vec::<String>::new());
}

/// A source that streams its snapshots and refuses to hand one over whole; with `fail_after`,
/// each snapshot's reader fails after that many bytes.
struct StreamedSnapshotsOnly {
    disk: FaultStorage,
    fail_after: Option<usize>,
}

/// Reads up to `left` bytes of `inner`, then fails.
struct FailsAfter {
    inner: Box<dyn io::Read + Send>,
    left: usize,
}

impl io::Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("the disk gave up"));
        }
        let len = buf.len().min(self.left);
        let read = self.inner.read(&mut buf[..len])?;
        self.left -= read;
        Ok(read)
    }
}

impl ReadSource for StreamedSnapshotsOnly {
    type Bytes = <FaultStorage as ReadSource>::Bytes;
    fn list_files(&self) -> io::Result<Vec<String>> {
        self.disk.list()
    }
    fn file_len(&self, name: &str) -> io::Result<u64> {
        Storage::file_len(&self.disk, name)
    }
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        if name.ends_with(".snap") {
            return Err(io::Error::other(format!("{name} asked for whole")));
        }
        Storage::read_file(&self.disk, name)
    }
    fn open_file(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        let inner = self.disk.open_read(name)?;
        Ok(match self.fail_after.filter(|_| name.ends_with(".snap")) {
            Some(left) => Box::new(FailsAfter { inner, left }),
            None => inner,
        })
    }
    fn read_segment(&mut self, name: &str) -> io::Result<Self::Bytes> {
        ReadSource::read_segment(&mut self.disk, name)
    }
    fn describe_file(&self, name: &str) -> String {
        self.disk.describe(name)
    }
    fn location(&self) -> String {
        ReadSource::location(&self.disk)
    }
}

#[test]
fn snapshots_are_copied_and_checked_front_to_back_never_read_whole() {
    // Goal: a snapshot is as large as the state, so a backup taken beside a running node
    // streams each one into the copy, and checks it, through a bounded buffer: it never asks
    // its source for a snapshot's bytes whole. The copy holds every snapshot byte for byte
    // and recovers to the state of every command.
    let (disk, commands) = journal();
    let copy = FaultStorage::new();
    let mut source = StreamedSnapshotsOnly { disk: disk.clone(), fail_after: None };
    let copied = backup(&mut source, &copy, &mut |_, _| {}).unwrap();
    let kept = snapshot::list(&disk).unwrap();
    assert!(copied.damaged_snapshots.is_empty(), "{copied:?}");
    assert_eq!(copied.snapshots, kept.iter().map(|(through, _)| *through).collect::<Vec<_>>());
    for (_, name) in &kept {
        let original = Storage::read_file(&disk, name).unwrap();
        assert_eq!(Storage::read_file(&copy, name).unwrap(), original, "{name} copied as it is");
    }
    let restored = recover_from(copy, options(Durability::Batch)).unwrap();
    assert_eq!(restored.engine.state_digest(), digest_of(&commands));
}

#[test]
fn a_snapshot_that_cannot_be_read_fails_the_copy_naming_the_source_file() {
    // Goal: a read of the source that fails part way through a snapshot fails the backup as a
    // failure to read that file (not to write the copy), and leaves no part of it in the copy.
    let (disk, _) = journal();
    let mut source = StreamedSnapshotsOnly { disk, fail_after: Some(100) };
    let copy = FaultStorage::new();
    let failed = backup(&mut source, &copy, &mut |_, _| {}).unwrap_err();
    let text = failed.to_string();
    assert!(text.starts_with("reading fault:snapshot-"), "{text}");
    assert!(text.contains("the disk gave up"), "{text}");
    let left: Vec<String> =
        copy.list().unwrap().into_iter().filter(|name| name.contains(".snap")).collect();
    assert!(left.is_empty(), "part of a snapshot was left in the copy: {left:?}");
}

/// Every path under `dir`, relative to it, sorted: what a refused backup must leave as it was.
fn tree(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            found.push(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    found.sort();
    found
}

#[test]
fn a_destination_inside_the_directory_copied_or_around_it_is_refused() {
    // Goal: `backup_dir` refuses a destination inside the data directory (which would leave
    // the copy, or its `.partial`, among the node's files) and one the data directory lies
    // inside, however the paths are spelled, naming both and changing nothing; a destination
    // beside the directory is copied to.
    let root = TempDir::new("backup-nested");
    let data = root.path().join("data");
    let mut writer = recover(&data, options(Durability::Batch)).unwrap().writer;
    let mut workload = Workload::new(17, Sequence(1), Timestamp(1_000));
    for command in generate(&mut workload, &mut Engine::new(config()), 100) {
        writer.append_command(Epoch(1), &command).unwrap();
    }
    writer.close().unwrap().expect("a segment is open");
    drop(writer);
    let before = tree(root.path());
    let spelled = data.join("..").join("data").join("new").join("..").join("inner");
    for dest in [data.join("inner"), spelled, data.clone(), root.path().to_path_buf()] {
        let refused = backup_dir(&data, &dest, &[], &mut |_, _| {}).unwrap_err();
        let message = refused.to_string();
        assert!(matches!(refused, JournalError::Refused(_)), "{dest:?}: {message}");
        assert!(message.contains("lies inside"), "{dest:?}: {message}");
        let named = [&data, &dest].map(|path| message.contains(&path.display().to_string()));
        assert_eq!(named, [true, true], "{message}");
        assert_eq!(tree(root.path()), before, "{dest:?}: a refused backup changed files");
    }
    // A dangling symbolic link is there already: refused before anything is copied, not at
    // the rename after the whole copy.
    let link = root.path().join("link");
    std::os::unix::fs::symlink(root.path().join("nowhere").join("copy"), &link).unwrap();
    let before = tree(root.path());
    let refused = backup_dir(&data, &link, &[], &mut |_, _| {}).unwrap_err().to_string();
    assert!(refused.contains("exists: a backup goes to a new directory"), "{refused}");
    assert_eq!(tree(root.path()), before, "a backup refused for a link changed files");
    std::fs::remove_file(&link).unwrap();
    let beside = root.path().join("copy");
    let copied = backup_dir(&data, &beside, &[], &mut |_, _| {}).unwrap();
    assert_eq!(copied.last, Some(Sequence(100)));
}

#[test]
fn a_failed_backup_leaves_none_of_the_directories_made_to_hold_it() {
    // Goal: a backup that fails leaves the file system as it found it: the directories made
    // above its destination go with the part of the copy built in them, and a directory that
    // was there already stays, whatever it holds.
    let root = TempDir::new("backup-parents");
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let there = root.path().join("there");
    std::fs::create_dir(&there).unwrap();
    let before = tree(root.path());
    for dest in [root.path().join("new").join("deeper").join("copy"), there.join("a").join("copy")]
    {
        let failed = backup_dir(&empty, &dest, &[], &mut |_, _| {}).unwrap_err().to_string();
        assert!(failed.contains("holds no journal"), "{dest:?}: {failed}");
        assert_eq!(tree(root.path()), before, "{dest:?}: a failed backup left directories");
    }
}
