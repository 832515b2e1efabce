//! `journal heal`: damaged records are replaced by the peer's copies and nothing is dropped;
//! a copy that is missing, or is not shown to be the same record, is refused untouched.

mod common;

use common::{config, digest_of, generate, journal_with_snapshots, options, record_at};
use ringfence_core::{Engine, Sequence, Sequenced, Timestamp};
use ringfence_journal::error::JournalError;
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::format;
use ringfence_journal::heal::{self, Shown};
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

    let short = journal(&commands[..800]);
    let error = heal::heal(&disk, &mut short.clone()).unwrap_err().to_string();
    assert!(error.contains("holds no intact record 900") && error.contains("1..=800"), "{error}");
    assert_eq!(segments(&disk), before, "a refused heal changed the journal");

    let diverged = journal(&self::commands(63, COMMANDS));
    let error = heal::heal(&disk, &mut diverged.clone()).unwrap_err().to_string();
    assert!(error.contains("not shown") && error.contains("diverged"), "{error}");
    assert_eq!(segments(&disk), before, "a refused heal changed the journal");

    // The same peer's copy heals it.
    let peer = journal(&commands);
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
