//! `journal reconfigure`: a cleanly stopped journal carried over to new `[engine]` settings
//! keeps every acknowledged command's state and goes on under the new settings, also when a
//! power loss cuts the carry-over off part way; what cannot be carried over is refused with
//! the directory untouched.

mod common;

use common::{config, digest_of, files, generate, journal_with_snapshots, options, record_at};
use ringfence_core::{Engine, EngineConfig, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::error::JournalError;
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::rebuild::SUPERSEDED_SUFFIX;
use ringfence_journal::reconfigure::{self, reconfigure};
use ringfence_journal::recovery::recover_from;
use ringfence_journal::snapshot::{self, SnapshotPolicy};
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};

const COMMANDS: usize = 2_000;

/// A journal of [`COMMANDS`] commands with a snapshot every 300 (the newest three kept),
/// stopped cleanly, and the commands.
fn stopped_journal() -> (FaultStorage, Vec<Sequenced>) {
    let mut workload = Workload::new(71, Sequence(1), Timestamp(1_000));
    let commands = generate(&mut workload, &mut Engine::new(config()), COMMANDS);
    let disk = FaultStorage::new();
    let policy = SnapshotPolicy { every_commands: Some(300), keep: 3, ..SnapshotPolicy::default() };
    journal_with_snapshots(&disk, &commands, policy);
    stop_cleanly(&disk, &config());
    (disk, commands)
}

/// Recovers under `engine` and stops cleanly: the clean-stop marker names the journal's end.
fn stop_cleanly(disk: &FaultStorage, engine: &EngineConfig) {
    let mut recovered = recover_from(disk.clone(), with(engine)).unwrap();
    recovered.writer.close().unwrap().expect("a segment is open");
}

fn with(engine: &EngineConfig) -> WriterOptions {
    WriterOptions { engine_config: engine.clone(), ..options(Durability::Batch) }
}

/// Larger tables and a smaller largest quantity: settings that change outcomes.
fn larger() -> EngineConfig {
    EngineConfig {
        orders_max: config().orders_max * 2,
        request_keys_max: config().request_keys_max * 2,
        order_qty_max: config().order_qty_max / 2,
        ..config()
    }
}

#[test]
fn a_cleanly_stopped_journal_carries_over_to_new_settings_and_goes_on() {
    // Goal: a node refuses its directory under new settings; once carried over, it starts
    // under them with the whole state (the same digest as replaying every command under the
    // old ones), refuses the old settings, and journals on from the next sequence. Nothing
    // is deleted: the old segments and snapshots are set aside.
    let (disk, commands) = stopped_journal();
    let last = Sequence(COMMANDS as u64);
    let refused = recover_from(disk.clone(), with(&larger())).err().expect("refused");
    assert!(matches!(refused, JournalError::SettingsChanged { .. }), "{refused}");
    assert!(refused.to_string().contains("ringfence journal reconfigure"), "{refused}");

    let done = reconfigure(&disk, &larger()).unwrap();
    assert_eq!(done.through, last);
    let expected = format!(
        "orders_max = 16384 (before: 8192), request_keys_max = 131072 (before: 65536), \
         order_qty_max = {} (before: {})",
        larger().order_qty_max,
        config().order_qty_max
    );
    assert_eq!(done.differences, expected);
    let snapshot_name = snapshot::snapshot_name(last);
    assert!(done.snapshot.as_deref().is_some_and(|s| s.ends_with(&snapshot_name)), "{done:?}");
    let aside = |suffix: &str| done.superseded.iter().filter(|f| f.contains(suffix)).count();
    assert!(aside(&format!(".seg{SUPERSEDED_SUFFIX}")) >= 2, "{done:?}");
    assert!(aside(&format!(".snap{SUPERSEDED_SUFFIX}")) >= 2, "{done:?}");
    assert_eq!(snapshot::list(&disk).unwrap(), vec![(last, snapshot_name)]);

    let refused = recover_from(disk.clone(), with(&config())).err().expect("refused");
    assert!(matches!(refused, JournalError::SettingsChanged { .. }), "{refused}");
    let mut recovered = recover_from(disk.clone(), with(&larger())).unwrap();
    assert_eq!(recovered.report.clean_stop, Some(last), "the carry-over is a clean stop too");
    assert_eq!(recovered.next_sequence, last.next());
    assert_eq!(recovered.report.replayed, 0);
    assert_eq!(recovered.engine.config(), &larger());
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands));

    // It goes on: new records under the new settings, recovered after the snapshot.
    let mut workload = Workload::new(72, last.next(), Timestamp(9_000_000));
    let more = generate(&mut workload, &mut recovered.engine, 50);
    for command in &more {
        recovered.writer.append_command(Epoch(1), command).unwrap();
    }
    recovered.writer.end_batch().unwrap();
    let digest = recovered.engine.state_digest();
    drop(recovered);
    let recovered = recover_from(disk.clone(), with(&larger())).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(last.0 + 51));
    assert_eq!(recovered.report.replayed, 50);
    assert_eq!(recovered.engine.state_digest(), digest);
}

#[test]
fn a_journal_carried_over_twice_without_a_record_between_rewrites_its_empty_segment() {
    // Goal: right after a carry-over the newest segment is empty and its header names the
    // settings; carried over again, that segment takes the newer settings, and a run with the
    // settings it already has changes nothing.
    let (disk, commands) = stopped_journal();
    reconfigure(&disk, &larger()).unwrap();
    let largest = EngineConfig { skus_max: larger().skus_max * 2, ..larger() };
    let done = reconfigure(&disk, &largest).unwrap();
    let expected = format!("skus_max = {} (before: {})", largest.skus_max, larger().skus_max);
    assert_eq!(done.differences, expected);
    let mut recovered = recover_from(disk.clone(), with(&largest)).unwrap();
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands));
    assert_eq!(recovered.engine.config(), &largest);
    recovered.writer.close().unwrap();

    let before = files(&disk);
    let again = reconfigure(&disk, &largest).unwrap();
    assert_eq!((again.differences.as_str(), again.snapshot, again.superseded.len()), ("", None, 0));
    assert!(before == files(&disk), "a run with the journal's own settings changed it");
}

#[test]
fn what_cannot_be_carried_over_is_refused_and_nothing_changes() {
    // Goal: another shard (order ids carry it), tables too small for what the node holds, a
    // node that did not stop cleanly, and a damaged journal are each refused, naming why, with
    // every file as it was, and the check the operator's tool makes before it takes the lock
    // refuses each the same way; the journal then still recovers under its own settings.
    let (disk, commands) = stopped_journal();
    let before = files(&disk);
    let shard = format!("is shard 1's and the new settings say shard {}", config().shard + 1);
    let refusals = [
        (EngineConfig { shard: config().shard + 1, ..config() }, shard.as_str()),
        (EngineConfig { orders_max: 16, ..config() }, "orders, and the new settings allow 16"),
    ];
    for (settings, named) in refusals {
        let refused = reconfigure(&disk, &settings).unwrap_err();
        assert!(matches!(refused, JournalError::Refused(_)), "{refused}");
        let refused = refused.to_string();
        assert!(refused.starts_with("cannot reconfigure: the state through sequence"), "{refused}");
        assert!(refused.contains(named), "{refused}");
        let checked = reconfigure::check(&disk, &settings).unwrap_err().to_string();
        assert_eq!(checked, refused, "the check and the carry-over disagree");
        assert!(before == files(&disk), "a refused carry-over changed the directory");
    }
    reconfigure::check(&disk, &larger()).unwrap();
    assert!(before == files(&disk), "a check changed the directory");
    let recovered = recover_from(disk.clone(), with(&config())).unwrap();
    assert_eq!(recovered.engine.state_digest(), digest_of(&commands));
    drop(recovered);
    // Recovery cleared the clean-stop marker: the node is running, or crashed.
    let before = files(&disk);
    let refused = reconfigure(&disk, &larger()).unwrap_err().to_string();
    assert!(refused.contains("did not stop cleanly"), "{refused}");
    let checked = reconfigure::check(&disk, &larger()).unwrap_err().to_string();
    assert_eq!(checked, refused, "the check and the carry-over disagree");
    assert!(before == files(&disk), "a refused carry-over changed the directory");

    let (disk, _) = stopped_journal();
    let (name, offset) = record_at(&disk, Sequence(COMMANDS as u64 - 5));
    disk.corrupt(&name, offset + 20, 0x5A);
    let before = files(&disk);
    let refused = reconfigure(&disk, &larger()).unwrap_err().to_string();
    let damaged = format!("damaged at sequence {}", COMMANDS - 5);
    assert!(refused.contains(&damaged) && refused.contains("journal verify"), "{refused}");
    assert!(before == files(&disk), "a refused carry-over changed the directory");
}

#[test]
fn a_carry_over_cut_off_at_any_sync_point_loses_nothing() {
    // Goal: a power loss at any sync point of a carry-over leaves a directory that either
    // recovers whole under the old settings (nothing changed yet), recovers whole under the
    // new ones (the next start finished it), or is refused under both and carried over by
    // running the command again: never one missing state, never one recovering partly.
    let (disk, commands) = stopped_journal();
    let copy = disk.process_crash();
    copy.capture_sync_points();
    reconfigure(&copy, &larger()).unwrap();
    let captures = copy.take_captures();
    assert!(captures.len() >= 6, "{} sync points", captures.len());
    let digest = digest_of(&commands);
    let next = Sequence(COMMANDS as u64 + 1);
    let (mut old, mut new, mut again) = (0, 0, 0);
    for capture in &captures {
        for torn in [None, Some(capture.point)] {
            let image = capture.disk.power_loss(torn);
            let what = format!("sync point {} ({}), torn {torn:?}", capture.point, capture.what);
            let recovered = match recover_from(image.clone(), with(&config())) {
                Ok(recovered) => {
                    old += 1;
                    recovered
                }
                Err(JournalError::SettingsChanged { .. }) => {
                    match recover_from(image.clone(), with(&larger())) {
                        Ok(recovered) => {
                            new += 1;
                            recovered
                        }
                        Err(JournalError::SettingsChanged { .. }) => {
                            again += 1;
                            // Cut off after the new snapshot: only its settings finish it.
                            let before = files(&image);
                            let back = reconfigure(&image, &config()).unwrap_err().to_string();
                            assert!(back.contains("carry-over to them was cut off"), "{back}");
                            assert!(before == files(&image), "{what}: the refusal changed it");
                            let done = reconfigure(&image, &larger()).unwrap();
                            assert_eq!(done.through, Sequence(COMMANDS as u64), "{what}");
                            recover_from(image, with(&larger())).unwrap()
                        }
                        Err(error) => panic!("{what}: under the new settings: {error}"),
                    }
                }
                Err(error) => panic!("{what}: under the old settings: {error}"),
            };
            assert_eq!(recovered.next_sequence, next, "{what}");
            assert_eq!(recovered.engine.state_digest(), digest, "{what}");
        }
    }
    assert!(old > 0 && new > 0 && again > 0, "{old} {new} {again}");
}
