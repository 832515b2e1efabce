//! A standby's promise is durable once `standby::promise_epoch` answers `Ok`, even when an
//! earlier store of it failed at the directory's sync and left it in force but not durable.

use ringfence_core::{EngineConfig, Epoch};
use ringfence_journal::fault::{Failure, FaultStorage};
use ringfence_journal::recovery::recover_from;
use ringfence_journal::writer::{Durability, WriterOptions};
use ringfence_replicator::standby::promise_epoch;

fn options() -> WriterOptions {
    WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::Batch,
        engine_config: EngineConfig::small(),
    }
}

#[test]
fn a_promise_retried_after_a_failed_directory_sync_is_durable_once_it_answers_ok() {
    // Goal: `promise_epoch` answers Ok only once the promise is stored durably (so that a
    // promotion of this node, even after a power loss, takes an epoch above it).
    let disk = FaultStorage::new();
    let recovered = recover_from(disk.clone(), options()).unwrap();
    let dir = recovered.writer.data_dir().clone();
    let epoch = Epoch(dir.epochs().promised.0 + 5);

    disk.fail_directory_syncs(Failure::Io);
    assert!(promise_epoch(&dir, epoch).is_err(), "the directory's sync failed");
    disk.clear_faults();
    assert_eq!(promise_epoch(&dir, epoch), Ok(()), "the retry");
    drop((recovered, dir));

    let after = recover_from(disk.power_loss(None), options()).unwrap();
    assert_eq!(after.epochs.promised, epoch, "a promise answered Ok was lost by a power loss");
}
