//! `journal heal`: damaged records are replaced by the peer's copies and nothing is dropped;
//! a copy that is missing, or is not shown to be the same record, is refused untouched.

mod common;

use common::{config, digest_of, generate, journal_with_snapshots, options, record_at};
use ringfence_core::{Engine, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::epoch::Epochs;
use ringfence_journal::error::JournalError;
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::format;
use ringfence_journal::heal::{self, HealOptions, Shown};
use ringfence_journal::recovery::recover_from;
use ringfence_journal::snapshot::SnapshotPolicy;
use ringfence_journal::storage::Storage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;

const COMMANDS: usize = 1_500;

/// `count` commands of the workload seeded `seed`.
fn commands(seed: u64, count: usize) -> Vec<Sequenced> {
    let mut workload = Workload::new(seed, Sequence(1), Timestamp(1_000));
    generate(&mut workload, &mut Engine::new(config()), count)
}

/// A journal of `commands`, without snapshots.
fn journal(commands: &[Sequenced]) -> FaultStorage {
    let disk = FaultStorage::new();
    let policy = SnapshotPolicy { every_commands: None, ..SnapshotPolicy::default() };
    journal_with_snapshots(&disk, commands, policy);
    disk
}

/// Every segment's bytes, by name.
fn segments(disk: &FaultStorage) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> =
        disk.list().unwrap().into_iter().filter(|n| n.ends_with(".seg")).collect();
    names.sort();
    names.into_iter().map(|name| (name.clone(), disk.live_bytes(&name).unwrap())).collect()
}

#[test]
fn damaged_records_are_healed_from_the_peers_copies_and_nothing_is_dropped() {
    // Goal: one record damaged in its payload and a later one in its stored CRC; recovery
    // refuses at the first. Heal replaces both from the peer's journal of the same commands,
    // the segments equal the peer's byte for byte, and recovery replays every command.
    let commands = commands(61, COMMANDS);
    let (disk, peer) = (journal(&commands), journal(&commands));
    let (first, second) = (Sequence(400), Sequence(1_100));
    let (name, offset) = record_at(&disk, first);
    disk.corrupt(&name, offset + 40, 0x10);
    let (name, offset) = record_at(&disk, second);
    disk.corrupt(&name, offset + 1, 0x80);
    let error = recover_from(disk.clone(), options(Durability::Batch)).err().expect("refused");
    assert!(
        matches!(error, JournalError::Corrupt { sequence, .. } if sequence == first),
        "{error}"
    );
    assert!(error.to_string().contains("journal heal"), "{error}");

    let healed = heal::heal(&disk, &mut peer.clone()).unwrap();
    let found: Vec<(Sequence, Sequence, Shown)> =
        healed.iter().map(|h| (h.from, h.through, h.shown)).collect();
    assert_eq!(found, [(first, first, Shown::ByCrc), (second, second, Shown::ByRest)]);
    assert_eq!(segments(&disk), segments(&peer), "the healed journal differs from its copy");

    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(COMMANDS as u64 + 1));
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands));
    drop(recovered);
    let again = heal::heal(&disk, &mut peer.clone()).unwrap_err().to_string();
    assert!(again.contains("intact"), "{again}");
}

#[test]
fn a_peer_without_the_record_or_with_another_history_is_refused_untouched() {
    // Goal: the copy must exist and be the same record. A peer whose journal ends before the
    // damage, and a peer that journaled other commands at the same sequences, are refused
    // with the reason, and the damaged journal is left exactly as it was.
    let commands = commands(62, COMMANDS);
    let disk = journal(&commands);
    let damaged = Sequence(900);
    let (name, offset) = record_at(&disk, damaged);
    disk.corrupt(&name, offset + 60, 0x04);
    let before = segments(&disk);

    // The plan the operator's tool asks before it takes the lock refuses each, as heal does.
    let opts = HealOptions::default();
    let short = journal(&commands[..800]);
    let error = heal::heal(&disk, &mut short.clone()).unwrap_err().to_string();
    assert!(error.contains("holds no intact record 900") && error.contains("1..=800"), "{error}");
    let planned = heal::check(&disk, &mut short.clone(), opts).unwrap_err().to_string();
    assert_eq!(planned, error, "the plan and the heal disagree");
    assert_eq!(segments(&disk), before, "a refused heal changed the journal");

    let diverged = journal(&self::commands(63, COMMANDS));
    let error = heal::heal(&disk, &mut diverged.clone()).unwrap_err().to_string();
    assert!(error.contains("not shown") && error.contains("diverged"), "{error}");
    let planned = heal::check(&disk, &mut diverged.clone(), opts).unwrap_err().to_string();
    assert_eq!(planned, error, "the plan and the heal disagree");
    assert_eq!(segments(&disk), before, "a refused heal changed the journal");

    // The same peer's copy heals it; the plan passes, writing nothing.
    let peer = journal(&commands);
    heal::check(&disk, &mut peer.clone(), opts).unwrap();
    assert_eq!(segments(&disk), before, "the plan changed the journal");
    assert_eq!(heal::heal(&disk, &mut peer.clone()).unwrap().len(), 1);
    assert!(recover_from(disk.clone(), options(Durability::Batch)).is_ok());
}

#[test]
fn a_zeroed_span_across_records_is_healed_up_to_the_next_intact_record() {
    // Goal: zero bytes from inside record 700 into the record after it (part of a sector lost,
    // taking a CRC and the rest together): nothing is left of 700 to compare, so the copy is
    // shown by the first intact record after the span, which equals the peer's, and the
    // peer's records before it fill the span exactly. Every command is back.
    let commands = commands(64, COMMANDS);
    let (disk, peer) = (journal(&commands), journal(&commands));
    let damaged = Sequence(700);
    let (name, offset) = record_at(&disk, damaged);
    let mut bytes = disk.live_bytes(&name).unwrap();
    // From the second unit of record 700 through the header of the record after it.
    let (_, len) = format::check_record(&bytes[offset..]).unwrap();
    let zeroed = offset + 16..offset + len + 32;
    for at in zeroed.clone() {
        if bytes[at] != 0 {
            disk.corrupt(&name, at, bytes[at]);
        }
    }
    bytes = disk.live_bytes(&name).unwrap();
    assert!(bytes[zeroed].iter().all(|&b| b == 0), "the span is zeroed");
    assert!(recover_from(disk.clone(), options(Durability::Batch)).is_err(), "not refused");

    let healed = heal::heal(&disk, &mut peer.clone()).unwrap();
    assert_eq!(healed.len(), 1, "{healed:?}");
    let span = &healed[0];
    assert_eq!(span.from, damaged);
    assert!(span.through > damaged, "one record healed, the span reaches two: {span:?}");
    assert_eq!(span.shown, Shown::ByNextRecord(span.through.next()));
    assert_eq!(segments(&disk), segments(&peer), "the healed journal differs from its copy");
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(COMMANDS as u64 + 1));
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands));
}

/// Cuts the newest segment of `disk` (or the one before it, when `middle`) 40 bytes into the
/// record halfway through it, as a file system losing its tail leaves it; returns its name,
/// the first sequence lost, and the next segment's first sequence (for a middle one).
fn cut_a_segment(disk: &FaultStorage, middle: bool) -> (String, Sequence, Option<Sequence>) {
    let names: Vec<String> = segments(disk).into_iter().map(|(name, _)| name).collect();
    assert!(names.len() > usize::from(middle), "{names:?}");
    let index = names.len() - 1 - usize::from(middle);
    let name = names[index].clone();
    let bytes = disk.live_bytes(&name).unwrap();
    let mut ends = Vec::new();
    let mut offset = format::SEGMENT_HEADER_LEN;
    while let Some((header, len)) = format::check_record(&bytes[offset..]) {
        offset += len;
        ends.push((header.sequence, offset));
    }
    let kept = ends.len() / 2;
    assert!(kept >= 2, "too few records in {name}: {}", ends.len());
    // Records are 48 bytes or more: 40 bytes in, the next one is not whole.
    disk.set_len(&name, ends[kept - 1].1 + 40);
    let next = names.get(index + 1).map(|next| format::parse_segment_name(next).unwrap());
    (name, ends[kept - 1].0.next(), next)
}

#[test]
fn a_segment_cut_short_is_healed_from_the_peers_copies_and_nothing_is_dropped() {
    // Goal: the newest segment, or one in the middle, cut short part way through its records:
    // recovery refuses it, naming `journal heal`. Heal keeps the intact records left, puts the
    // segment back at its listed length with the peer's copies of the records lost (shown by
    // the record before them, and for a middle one the next segment's first; for the newest,
    // after a crash, taken as asked to end where the copy's do), the segments equal the
    // peer's byte for byte, and recovery replays every command.
    for middle in [false, true] {
        let commands = commands(65, COMMANDS);
        let (disk, peer) = (journal(&commands), journal(&commands));
        let (name, lost, next) = cut_a_segment(&disk, middle);
        let error = recover_from(disk.clone(), options(Durability::Batch)).err().expect("refused");
        assert!(matches!(error, JournalError::SegmentLength { .. }), "{error}");
        assert!(error.to_string().contains("journal heal"), "{error}");

        let asked = HealOptions { end_at_copy: !middle };
        let healed = heal::heal_with(&disk, &mut peer.clone(), asked).unwrap();
        let [span] = healed.as_slice() else { panic!("{healed:?}") };
        assert_eq!((span.file.as_str(), span.from), (name.as_str(), lost), "{span:?}");
        let through = next.map_or(Sequence(COMMANDS as u64), |m| Sequence(m.0 - 1));
        assert_eq!(span.through, through, "{span:?}");
        let matched = Sequence(lost.0 - 1);
        // The journal written here leaves no clean-stop marker: the newest segment's end is
        // not recorded (the copies were taken to reach it), the middle one's is the next
        // segment's first.
        let shown = Shown::CutShort { matched, next, end_known: middle };
        assert_eq!(span.shown, shown);
        assert_eq!(segments(&disk), segments(&peer), "the healed journal differs from its copy");

        let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
        assert_eq!(recovered.next_sequence, Sequence(COMMANDS as u64 + 1));
        assert_eq!(recovered.engine.state_digest(), digest_of(&commands));
    }
}

#[test]
fn a_segment_cut_short_whose_records_the_peer_lacks_or_diverge_is_left_as_it_was() {
    // Goal: a middle segment cut short is healed whole or not at all. A peer whose journal
    // ends among the records lost is refused naming the sequences that would stay lost, a
    // peer of another history is refused as diverged, and `rebuild` refuses naming heal and
    // the truncation that keeps the records left; each leaves the journal exactly as it was.
    let commands = commands(66, COMMANDS);
    let disk = journal(&commands);
    let (name, lost, next) = cut_a_segment(&disk, true);
    let last = Sequence(next.expect("a middle segment").0 - 1);
    let before = segments(&disk);
    let held = usize::try_from(lost.0).unwrap();

    let short = journal(&commands[..held]);
    let error = heal::heal(&disk, &mut short.clone()).unwrap_err().to_string();
    let stay = format!("sequences {}..={last} would stay lost", lost.next());
    assert!(error.contains(&name) && error.contains(&stay), "{error}");
    assert!(error.contains(&format!("--at-seq {lost}`, which keeps")), "{error}");
    assert_eq!(segments(&disk), before, "a refused heal changed the journal");

    let diverged = journal(&self::commands(67, COMMANDS));
    let error = heal::heal(&disk, &mut diverged.clone()).unwrap_err().to_string();
    assert!(error.contains("diverged"), "{error}");
    assert_eq!(segments(&disk), before, "a refused heal changed the journal");

    let error = ringfence_journal::rebuild::rebuild(&disk).unwrap_err().to_string();
    assert!(error.contains("does not put back the records a segment cut short lost"), "{error}");
    assert!(error.contains("journal heal"), "{error}");
    assert!(error.contains(&format!("--at-seq {lost}`")), "{error}");
    assert_eq!(segments(&disk), before, "a refused rebuild changed the journal");

    // The same peer's copy heals it.
    let peer = journal(&commands);
    assert_eq!(heal::heal(&disk, &mut peer.clone()).unwrap().len(), 1);
    assert_eq!(segments(&disk), segments(&peer), "the healed journal differs from its copy");
}

#[test]
fn the_newest_segment_cut_short_after_a_crash_takes_the_copys_end_only_when_asked() {
    // Goal: where the newest segment's records ended is not recorded after a crash. Heal
    // refuses to guess it, naming the records the copy would put back and `--end-at-copy`;
    // asked, the peer's records go back as far as it holds them in this node's epoch, and the
    // journal replays exactly them. A peer ending before the first lost is refused, and a
    // peer's record of an older epoch than this node's is not shown to be the one held here.
    let commands = commands(68, COMMANDS);
    let disk = journal(&commands);
    let (name, lost, _) = cut_a_segment(&disk, false);
    let before = segments(&disk);
    let asked = HealOptions { end_at_copy: true };
    let ended = journal(&commands[..usize::try_from(lost.0 - 1).unwrap()]);
    let error = heal::heal_with(&disk, &mut ended.clone(), asked).unwrap_err().to_string();
    let from = format!("the records from sequence {lost} on were lost with it");
    assert!(error.contains(&name) && error.contains(&from), "{error}");
    assert!(error.contains(&format!("no intact record {lost}")), "{error}");
    assert_eq!(segments(&disk), before, "a refused heal changed the journal");

    // This node moved on to epoch 2; the peer's records after the cut are of epoch 1.
    let newer = journal(&commands);
    let recovered = recover_from(newer.clone(), options(Durability::Batch)).unwrap();
    let epochs = Epochs { current: Epoch(2), promised: Epoch(2) };
    recovered.writer.data_dir().store_epochs(epochs).unwrap();
    drop(recovered);
    cut_a_segment(&newer, false);
    let error = heal::heal_with(&newer, &mut journal(&commands), asked).unwrap_err().to_string();
    let older = format!("the copy's record {lost} is of epoch 1, not this node's epoch 2");
    assert!(error.contains(&older), "{error}");

    let partial = usize::try_from(lost.0 + 4).unwrap();
    let peer = journal(&commands[..partial]);
    let through = Sequence(partial as u64);
    let error = heal::heal(&disk, &mut peer.clone()).unwrap_err().to_string();
    let would = format!("holds records {lost}..={through} of this node's epoch");
    assert!(error.contains(&would) && error.contains("--end-at-copy`"), "{error}");
    assert_eq!(segments(&disk), before, "a refused heal changed the journal");
    let healed = heal::heal_with(&disk, &mut peer.clone(), asked).unwrap();
    let shown = Shown::CutShort { matched: Sequence(lost.0 - 1), next: None, end_known: false };
    assert_eq!((healed[0].from, healed[0].through, healed[0].shown), (lost, through, shown));
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, through.next());
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands[..partial]));
}

#[test]
fn the_newest_segment_cut_short_is_healed_unasked_when_the_copies_fill_it() {
    // Goal: a journal whose newest segment held records up to where no further one fits,
    // cut short. The peer's next record of this node's epoch would not fit, so the writer
    // would have begun a segment for it, and none is listed: the copies reach this node's
    // end, and heal puts them back without `--end-at-copy`.
    let commands = commands(69, COMMANDS);
    let peer = journal(&commands);
    // The last record of the peer's first segment, which it filled.
    let second = segments(&peer)[1].0.clone();
    let last = format::parse_segment_name(&second).unwrap().0 - 1;
    let disk = journal(&commands[..usize::try_from(last).unwrap()]);
    assert_eq!(segments(&disk).len(), 1, "the first segment is the newest");
    let (_, lost, next) = cut_a_segment(&disk, false);
    assert_eq!(next, None);
    let healed = heal::heal(&disk, &mut peer.clone()).unwrap();
    let shown = Shown::CutShort { matched: Sequence(lost.0 - 1), next: None, end_known: true };
    assert_eq!((healed[0].from, healed[0].through, healed[0].shown), (lost, Sequence(last), shown));
    assert_eq!(segments(&disk)[0], segments(&peer)[0], "the segment differs from its copy");
    let recovered = recover_from(disk.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(last + 1));
}
