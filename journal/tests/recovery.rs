//! Journal round trips, recovery against live state, torn tails, corruption and retention.

mod common;

use std::ops::ControlFlow;

use common::{TempDir, config, generate, options};
use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::prng::Prng;
use ringfence_core::{
    Action, BatchId, Command, CouponId, CreateCouponBatch, CreateSku, Engine, EngineConfig, Epoch,
    OrderId, PaymentRef, Query, RequestKey, Reserve, Sequence, Sequenced, SkuId, Timestamp, UserId,
};
use ringfence_journal::datadir;
use ringfence_journal::epoch::Epochs;
use ringfence_journal::error::{Damage, JournalError};
use ringfence_journal::format;
use ringfence_journal::recovery::{self, recover, recover_from};
use ringfence_journal::scan::{self, ReadOnlyDir, Record};
use ringfence_journal::snapshot::{self, SnapshotPolicy, Snapshotter};
use ringfence_journal::storage::FileStorage;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};

fn every_command_kind() -> Vec<Command> {
    let key = RequestKey::from_u128(7);
    let actions = [
        Action::CreateSku(CreateSku {
            sku: SkuId(1),
            stock: 10,
            price_cents: 999,
            per_user_limit: 2,
            payment_timeout_ms: 60_000,
            sale_start: Some(Timestamp(5)),
            sale_end: Some(Timestamp(u64::MAX)),
        }),
        Action::Restock { sku: SkuId(1), qty: 3 },
        Action::OpenSale { sku: SkuId(1) },
        Action::CloseSale { sku: SkuId(1) },
        Action::Reserve(Reserve { user: UserId(9), sku: SkuId(1), qty: 1, coupon: None }),
        Action::Reserve(Reserve {
            user: UserId(9),
            sku: SkuId(1),
            qty: 2,
            coupon: Some(CouponId(u64::MAX)),
        }),
        Action::Pay {
            order: OrderId(3),
            payment_ref: PaymentRef::from_u128(u128::MAX),
            amount_cents: 1,
        },
        Action::Cancel { order: OrderId(3), user: UserId(9) },
        Action::AdminCancel { order: OrderId(3) },
        Action::Ship { order: OrderId(3) },
        Action::Complete { order: OrderId(3), user: UserId(9) },
        Action::Refund { order: OrderId(3) },
        Action::CreateCouponBatch(CreateCouponBatch {
            batch: BatchId(4),
            quantity: 100,
            per_user_limit: 1,
            discount_cents: 50,
            min_amount_cents: 100,
            valid_from: Timestamp(0),
            valid_until: Timestamp(10_000),
        }),
        Action::ClaimCoupon { user: UserId(9), batch: BatchId(4) },
    ];
    let mut commands: Vec<Command> =
        actions.into_iter().map(|action| Command::Client { key, action }).collect();
    commands.extend([
        Command::Tick,
        Command::Snapshot,
        Command::Query(Query::Sku(SkuId(1))),
        Command::Query(Query::Order(OrderId(3))),
        Command::Query(Query::Coupon(CouponId(2))),
        Command::Query(Query::Batch(BatchId(4))),
    ]);
    commands
}

fn read_all(dir: &std::path::Path) -> Vec<Record> {
    let mut source = ReadOnlyDir::open(dir).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    assert!(layout.problem.is_none(), "{:?}", layout.problem);
    let mut records = Vec::new();
    scan::read(&mut source, &layout, Sequence(1), &mut |record| {
        records.push(*record);
        ControlFlow::Continue(())
    })
    .unwrap();
    records
}

#[test]
fn every_command_kind_round_trips_through_the_journal() {
    // Goal: each command variant is journaled and read back exactly, with its framing fields.
    let commands: Vec<Command> =
        every_command_kind().into_iter().filter(Command::is_mutating).collect();
    for command in &commands {
        let mut bytes = [0u8; ringfence_core::codec::COMMAND_LEN_MAX];
        let len = ringfence_core::codec::encode_command(command, &mut bytes);
        assert_eq!(ringfence_core::codec::decode_command(&bytes[..len]), Ok(*command));
    }
    let dir = TempDir::new("roundtrip");
    let mut recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(1));
    let epochs = Epochs { current: Epoch(2), promised: Epoch(2) };
    recovered.writer.data_dir().store_epochs(epochs).unwrap();
    for (i, command) in commands.iter().enumerate() {
        let sequenced = Sequenced {
            sequence: Sequence(i as u64 + 1),
            timestamp: Timestamp(100 + i as u64),
            command: *command,
        };
        recovered.writer.append_command(Epoch(2), &sequenced).unwrap();
    }
    assert_eq!(recovered.writer.end_batch().unwrap(), Sequence(commands.len() as u64));
    drop(recovered);
    let records = read_all(dir.path());
    assert_eq!(records.len(), commands.len());
    for (i, (record, command)) in records.iter().zip(&commands).enumerate() {
        assert_eq!(record.sequence, Sequence(i as u64 + 1));
        assert_eq!(record.epoch, Epoch(2));
        assert_eq!(record.timestamp, Timestamp(100 + i as u64));
        assert_eq!(record.command, *command);
    }
}

#[test]
fn recovery_equals_live_state_after_random_workloads_with_snapshots() {
    // Goal: for several seeds, journal + snapshots taken along the way recover to exactly the
    // live engine's state digest, across restarts in the middle of the workload.
    for seed in 1..=4u64 {
        let dir = TempDir::new("live");
        let mut live = Engine::new(config());
        let mut workload = Workload::new(seed, Sequence(1), Timestamp(1_000));
        for round in 0..3 {
            let mut recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
            assert_eq!(
                recovered.engine.state_digest(),
                live.state_digest(),
                "seed {seed} round {round}"
            );
            assert_eq!(recovered.next_sequence, workload.next_sequence());
            let policy =
                SnapshotPolicy { every_commands: Some(700), keep: 2, ..SnapshotPolicy::default() };
            let data_dir = recovered.writer.data_dir().clone();
            let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
            let mut blp = recovered.engine;
            for batch in 0..40 {
                let commands = generate(&mut workload, &mut live, 25 + batch);
                for command in &commands {
                    recovered.writer.append_command(Epoch(1), command).unwrap();
                    blp.apply(command);
                    snapshots.after_apply(&blp, command);
                }
                assert_eq!(
                    recovered.writer.end_batch().unwrap(),
                    commands.last().unwrap().sequence
                );
            }
            assert_eq!(blp.state_digest(), live.state_digest());
            let stats = snapshots.finish();
            assert!(stats.written >= 1, "seed {seed}: {stats:?}");
            assert_eq!(stats.last_error, None);
        }
        let snapshot_files = snapshot::list(&ReadOnlyDir::open(dir.path()).unwrap()).unwrap();
        assert!(!snapshot_files.is_empty() && snapshot_files.len() <= 2);
        let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
        assert!(recovered.report.snapshot.is_some());
        assert_eq!(recovered.engine.state_digest(), live.state_digest());
    }
}

#[test]
fn snapshot_digest_equals_the_engines_and_shutdown_snapshot_needs_no_replay() {
    // Goal: the shutdown snapshot records the engine's own digest; recovery from it replays
    // nothing and lands on the same state.
    let dir = TempDir::new("shutdown");
    let mut recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    let policy = SnapshotPolicy { every_commands: None, keep: 3, ..SnapshotPolicy::default() };
    let data_dir = recovered.writer.data_dir().clone();
    let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
    let mut engine = recovered.engine;
    let mut workload = Workload::new(9, Sequence(1), Timestamp(5));
    let mut shadow = Engine::new(config());
    for command in generate(&mut workload, &mut shadow, 3_000) {
        recovered.writer.append_command(Epoch(1), &command).unwrap();
        engine.apply(&command);
        snapshots.after_apply(&engine, &command);
    }
    recovered.writer.end_batch().unwrap();
    let through = recovered.writer.last_appended();
    let meta = snapshots.shutdown(&engine, through).unwrap();
    assert_eq!(meta.state_digest, engine.state_digest());
    assert_eq!(meta.through, through);
    assert_eq!(meta.skus.len(), 8, "every created SKU is in the catalog");
    drop(recovered.writer);
    let again = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(again.report.replayed, 0);
    assert_eq!(again.engine.state_digest(), engine.state_digest());
    assert_eq!(again.next_sequence, through.next());
}

/// Writes `count` workload commands into a fresh journal in `dir`; returns them.
fn write_journal(dir: &std::path::Path, count: usize) -> Vec<Sequenced> {
    let mut recovered = recover(dir, options(Durability::None)).unwrap();
    let mut workload = Workload::new(3, Sequence(1), Timestamp(10));
    let mut shadow = Engine::new(config());
    let commands = generate(&mut workload, &mut shadow, count);
    for chunk in commands.chunks(16) {
        for command in chunk {
            recovered.writer.append_command(Epoch(1), command).unwrap();
        }
        recovered.writer.end_batch().unwrap();
    }
    commands
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Byte offsets and lengths of the records in a segment file.
fn record_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut offsets = Vec::new();
    let mut at = format::SEGMENT_HEADER_LEN;
    while !format::is_end_marker(&bytes[at..]) {
        let (_, len) = format::check_record(&bytes[at..]).expect("intact");
        offsets.push((at, len));
        at += len;
    }
    offsets
}

#[test]
fn torn_last_record_is_truncated_and_reported() {
    // Goal: a partly written last record (its end, or all but its first 16-byte unit, zero)
    // is cut off, reported with its file, offset and sequence, and appends continue from that
    // sequence. Garbage in its place is not what a cut-off write leaves: refused.
    for mode in ["zeroed", "first unit only", "garbage"] {
        let dir = TempDir::new("torn");
        let commands = write_journal(dir.path(), 2_000);
        let last_file = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&last_file).unwrap();
        let &(offset, len) = record_offsets(&bytes).last().unwrap();
        match mode {
            "zeroed" => bytes[offset + 24..offset + len].fill(0),
            "garbage" => bytes[offset + 20..offset + len + 40].fill(0xA5),
            _ => bytes[offset + 16..offset + len].fill(0),
        }
        std::fs::write(&last_file, &bytes).unwrap();
        let lost = commands.last().unwrap().sequence;
        if mode == "garbage" {
            let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused");
            assert!(
                matches!(&error, JournalError::Corrupt { sequence, offset: at, .. } if *sequence == lost && *at == offset as u64),
                "{error}"
            );
            assert_eq!(std::fs::read(&last_file).unwrap(), bytes, "the refusal changed bytes");
            continue;
        }
        let mut recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
        let torn = recovered
            .report
            .torn_tail
            .clone()
            .unwrap_or_else(|| panic!("{mode}: no torn tail reported: {}", recovered.report));
        assert_eq!(torn.sequence, lost, "{mode}");
        assert_eq!(torn.offset, offset as u64, "{mode}");
        assert!(torn.file.ends_with(last_file.file_name().unwrap().to_str().unwrap()));
        assert_eq!(recovered.next_sequence, lost, "{mode}");
        let resent = commands.last().unwrap();
        recovered.writer.append_command(Epoch(1), resent).unwrap();
        recovered.writer.end_batch().unwrap();
        drop(recovered);
        let records = read_all(dir.path());
        assert_eq!(records.len(), commands.len(), "{mode}");
        assert_eq!(records.last().unwrap().command, resent.command);
    }
}

/// Writes `count` commands as [`write_journal`] does, then stops cleanly: the writer syncs and
/// marks where the journal ends.
fn write_journal_stopped_cleanly(dir: &std::path::Path, count: usize) -> Vec<Sequenced> {
    let commands = write_journal(dir, count);
    let mut recovered = recover(dir, options(Durability::None)).unwrap();
    let last = commands.last().unwrap().sequence;
    assert_eq!(recovered.next_sequence, last.next());
    let stop = recovered.writer.close().unwrap().expect("a segment is open");
    assert_eq!(stop.last, last);
    assert!(dir.join(datadir::CLEAN_STOP_FILE).exists());
    commands
}

#[test]
fn after_a_clean_stop_damage_at_the_end_is_refused_not_cleared() {
    // Goal: once the node stopped cleanly, the journal's last record failing its checks, or
    // records missing from its end, are damage to acknowledged commands: recovery refuses,
    // naming the sequence and the repairs that apply, and changes nothing. The same cut-off write after a
    // crash (no marker) is a torn tail, cleared.
    for mode in ["flipped byte", "cut off", "zeroed record", "garbage after"] {
        let dir = TempDir::new("clean-stop");
        let commands = write_journal_stopped_cleanly(dir.path(), 2_000);
        let last = commands.last().unwrap().sequence;
        let last_file = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&last_file).unwrap();
        let &(offset, len) = record_offsets(&bytes).last().unwrap();
        let from = match mode {
            "flipped byte" => {
                bytes[offset + 12] ^= 0x10;
                last
            }
            "cut off" => {
                bytes[offset + 16..offset + len].fill(0);
                last
            }
            "zeroed record" => {
                bytes[offset..offset + len].fill(0);
                last
            }
            _ => {
                bytes[offset + len + 8] = 0x77;
                last.next()
            }
        };
        std::fs::write(&last_file, &bytes).unwrap();
        let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused");
        let message = error.to_string();
        if mode == "flipped byte" {
            // Rot at rest is told from a cut-off write, after a clean stop as after a crash.
            let rot = Damage::BitFlip { offset: offset as u64 + 12, mask: 0x10 };
            assert!(
                matches!(&error, JournalError::Corrupt { sequence, damage, .. } if *sequence == last && *damage == rot),
                "{mode}: {message}"
            );
        } else {
            assert!(
                matches!(&error, JournalError::EndMoved { from: f, last: l, .. } if *f == from && *l == last),
                "{mode}: {message}"
            );
            assert!(message.contains("stopped cleanly"), "{mode}: {message}");
            // A damaged record can be copied back or rebuilt past; records missing after the
            // end, or bytes after it, leave `heal` and `rebuild` nothing to repair.
            let damaged = mode == "cut off";
            assert_eq!(message.contains("--from <its directory>"), damaged, "{mode}: {message}");
            assert_eq!(message.contains("nothing to repair"), !damaged, "{mode}: {message}");
        }
        assert!(message.contains(&format!("--at-seq {from}")), "{mode}: {message}");
        assert_eq!(std::fs::read(&last_file).unwrap(), bytes, "{mode}: the refusal changed bytes");
        assert!(dir.path().join(datadir::CLEAN_STOP_FILE).exists(), "{mode}");
        // The operator's repair accepts the loss, and the node starts where the journal ends.
        let storage = FileStorage::open_exclusive(dir.path()).unwrap();
        recovery::truncate(&storage, from).unwrap();
        drop(storage);
        assert!(!dir.path().join(datadir::CLEAN_STOP_FILE).exists(), "{mode}: truncate kept it");
        let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
        assert_eq!(recovered.next_sequence, from, "{mode}");
        assert!(recovered.report.torn_tail.is_none(), "{mode}");
    }
    // Without the marker (a crash), the same cut-off write is a torn tail, cleared.
    let dir = TempDir::new("crash-stop");
    let commands = write_journal(dir.path(), 2_000);
    let last_file = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last_file).unwrap();
    let &(offset, len) = record_offsets(&bytes).last().unwrap();
    bytes[offset + 16..offset + len].fill(0);
    std::fs::write(&last_file, &bytes).unwrap();
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    let torn = recovered.report.torn_tail.clone().expect("a torn tail after a crash");
    assert_eq!(torn.sequence, commands.last().unwrap().sequence);
    assert_eq!(recovered.report.clean_stop, None);
}

/// The scan's verdict on the journal in `dir`: the damage, and whether it is a torn tail.
fn verdict(dir: &std::path::Path) -> Option<(Damage, bool)> {
    let mut source = ReadOnlyDir::open(dir).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    layout.problem.map(|problem| (problem.damage, problem.torn_tail))
}

#[test]
fn a_bit_flipped_at_rest_in_the_last_record_is_told_from_a_write_a_crash_cut_off() {
    // Goal: after a crash, the last record failing its checks is a torn tail (cleared) only if
    // a cut-off write could have left it: bytes zero in aligned 16-byte units. One flipped bit
    // anywhere else in it is damage at rest to a record that may have been acknowledged:
    // corruption, named to the bit, which recovery refuses. Every bit of the last record is
    // flipped in turn, and every cut and every missing unit a write-back could leave is tried.
    // The last record a client command with a long payload, not a tick.
    let (dir, commands) = (60..)
        .map(|count| {
            let dir = TempDir::new("rot-or-torn");
            let commands = write_journal(dir.path(), count);
            (dir, commands)
        })
        .find(|(_, commands)| matches!(commands.last().unwrap().command, Command::Client { .. }))
        .unwrap();
    let files = segments(dir.path());
    assert_eq!(files.len(), 1, "one segment");
    let original = std::fs::read(&files[0]).unwrap();
    let &(offset, len) = record_offsets(&original).last().unwrap();
    let record = &original[offset..offset + len];
    let unit_of = |at: usize| &record[at / 16 * 16..at / 16 * 16 + 16];
    let (mut rot, mut torn) = (0, 0);
    for at in 0..len {
        for bit in 0..8 {
            let mask = 1u8 << bit;
            let mut bytes = original.clone();
            bytes[offset + at] ^= mask;
            std::fs::write(&files[0], &bytes).unwrap();
            // Only a unit that held this one bit and nothing else can read as never written.
            let one_bit_unit = unit_of(at)
                .iter()
                .enumerate()
                .all(|(i, &byte)| if i == at % 16 { byte == mask } else { byte == 0 });
            match verdict(dir.path()) {
                Some((damage, false)) if !one_bit_unit => {
                    let expected = Damage::BitFlip { offset: (offset + at) as u64, mask };
                    assert_eq!(damage, expected, "byte {at} mask {mask:#x}");
                    rot += 1;
                }
                Some((Damage::Checksum | Damage::Length, true)) if one_bit_unit => torn += 1,
                other => panic!("byte {at} mask {mask:#x}: {other:?}"),
            }
        }
    }
    println!("{rot} flips read as rot, {torn} as a torn write, of a {len}-byte record");
    assert_eq!(rot + torn, 8 * len);
    assert!(rot * 10 >= 8 * len * 9, "{rot} of {} flips told from a torn write", 8 * len);
    // Cut-off writes: every aligned cut inside the record, and every unit left unwritten.
    for cut in (16..len).step_by(16).filter(|&cut| record[cut..].iter().any(|&b| b != 0)) {
        let mut bytes = original.clone();
        bytes[offset + cut..offset + len].fill(0);
        std::fs::write(&files[0], &bytes).unwrap();
        let verdict = verdict(dir.path());
        assert!(matches!(verdict, Some((_, true))), "cut at {cut}: {verdict:?}");
    }
    for unit in (0..len).step_by(16).filter(|&unit| record[unit..unit + 16] != [0; 16]) {
        let mut bytes = original.clone();
        bytes[offset + unit..offset + unit + 16].fill(0);
        std::fs::write(&files[0], &bytes).unwrap();
        let verdict = verdict(dir.path());
        assert!(matches!(verdict, Some((_, true)) | None), "unit at {unit}: {verdict:?}");
    }
    // Rot of more bits: refused wherever no unit of the record is left wholly zero.
    let (mut refused, mut cleared) = (0, 0);
    for first in (0..len).step_by(5) {
        let second = (first + 23) % len;
        let mut bytes = original.clone();
        bytes[offset + first] ^= 0x21;
        bytes[offset + second] ^= 0x84;
        std::fs::write(&files[0], &bytes).unwrap();
        let damaged = &bytes[offset..offset + len];
        let zero_unit = damaged.chunks(16).any(|unit| unit.iter().all(|&b| b == 0));
        match verdict(dir.path()) {
            Some((_, true)) if zero_unit => cleared += 1,
            Some((Damage::Checksum | Damage::Length, false)) if !zero_unit => refused += 1,
            other => panic!("bytes {first} and {second}: {other:?}"),
        }
    }
    println!("{refused} four-bit damages refused, {cleared} read as a torn write");
    assert!(refused * 10 >= (refused + cleared) * 9, "{refused} refused, {cleared} cleared");
    // Recovery refuses the rot, names the bit, the sequence and the repairs, changes nothing.
    let mut bytes = original.clone();
    bytes[offset + 9] ^= 0x04;
    std::fs::write(&files[0], &bytes).unwrap();
    let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused");
    let message = error.to_string();
    let last = commands.last().unwrap().sequence;
    assert!(matches!(&error, JournalError::Corrupt { sequence, .. } if *sequence == last));
    assert!(message.contains(&format!("offset {}", offset + 9)), "{message}");
    assert!(message.contains("at rest") && message.contains("journal rebuild"), "{message}");
    assert!(message.contains(&format!("--at-seq {last}")), "{message}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), bytes, "the refusal changed bytes");
}

#[test]
fn a_clean_stop_is_checked_once_and_its_marker_removed_before_appending() {
    // Goal: a journal found where the marker says starts normally and reports the clean stop;
    // the marker goes before anything is appended, so a crash after that start is read as a
    // crash. A damaged marker is refused; a marker the journal runs past is stale and ignored.
    let dir = TempDir::new("clean-stop-start");
    let commands = write_journal_stopped_cleanly(dir.path(), 500);
    let last = commands.last().unwrap().sequence;
    let marker = dir.path().join(datadir::CLEAN_STOP_FILE);
    let kept = std::fs::read(&marker).unwrap();
    let mut recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.report.clean_stop, Some(last));
    assert!(!recovered.report.clean_stop_stale);
    assert!(recovered.report.to_string().contains(&format!("stopped cleanly at sequence {last}")));
    assert!(!marker.exists(), "the marker outlived the start");
    let mut workload = Workload::new(4, last.next(), Timestamp(1_000_000));
    let more = generate(&mut workload, &mut recovered.engine, 20);
    for command in &more {
        recovered.writer.append_command(Epoch(1), command).unwrap();
    }
    recovered.writer.end_batch().unwrap();
    drop(recovered);
    // The old marker put back names an end the journal has since run past.
    std::fs::write(&marker, &kept).unwrap();
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert!(recovered.report.clean_stop_stale, "{}", recovered.report);
    assert_eq!(recovered.next_sequence, more.last().unwrap().sequence.next());
    drop(recovered);
    let huge = format!("{} 00000000000000000001.seg 128\n", u64::MAX);
    for damaged in [
        &b"12x 00000000000000000001.seg 64\n"[..],
        b"",
        b"5 notasegment 64\n",
        b"5 00000000000000000001.seg 100\n",
    ] {
        std::fs::write(&marker, damaged).unwrap();
        let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused");
        assert!(matches!(error, JournalError::CleanStopUnreadable { .. }), "{error}");
        assert!(error.to_string().contains("delete the file"), "{error}");
    }
    // A readable marker naming an end no journal has is refused as the end moved, not trusted.
    std::fs::write(&marker, huge).unwrap();
    let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused");
    assert!(matches!(error, JournalError::EndMoved { .. }), "{error}");
}

/// Where a segment's records end: just past its last intact record.
fn records_end(bytes: &[u8]) -> usize {
    record_offsets(bytes).last().map_or(format::SEGMENT_HEADER_LEN, |&(at, len)| at + len)
}

/// Writes a non-zero byte three bytes before the end of `file`, past its last record.
fn stray_byte_near_the_end(file: &std::path::Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let end = bytes.len();
    assert!(records_end(&bytes) <= end - 16, "{}: records reach the end", file.display());
    bytes[end - 3] = 0x5A;
    std::fs::write(file, &bytes).unwrap();
}

#[test]
fn stray_bytes_in_the_last_sixteen_bytes_of_a_segment_are_reported_not_trusted() {
    // Goal: non-zero bytes closer to a segment's end than a record header (where no record
    // can start) are damage the scan reports, in the last segment as a torn tail and in an
    // earlier one as corruption; nothing in the journal's code asserts they cannot be there.
    let dir = TempDir::new("stray-end");
    write_journal(dir.path(), 3_000);
    let files = segments(dir.path());
    assert!(files.len() >= 2, "the journal spans segments");
    let (last_file, earlier) = files.split_last().unwrap();
    stray_byte_near_the_end(last_file);
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    let torn = recovered.report.torn_tail.clone().expect("a torn tail is reported");
    assert_eq!(torn.damage, Damage::BytesAfterEnd.to_string());
    drop(recovered);
    // Records may fill a segment to its last byte, leaving no room for a stray byte: the
    // damaged one is the first whose records stop short of the last sixteen bytes.
    let room = |file: &&std::path::PathBuf| {
        let bytes = std::fs::read(file).unwrap();
        records_end(&bytes) + 16 <= bytes.len()
    };
    let earlier_file = earlier.iter().find(room).expect("an earlier segment with room at its end");
    stray_byte_near_the_end(earlier_file);
    let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused");
    assert!(
        matches!(error, JournalError::Corrupt { damage: Damage::BytesAfterEnd, .. }),
        "{error}"
    );
}

#[test]
fn damage_before_the_tail_refuses_with_file_offset_and_sequence() {
    // Goal: a damaged record followed by intact ones is corruption: recovery refuses, names
    // the segment, the byte offset and the sequence, and points at the truncate repair.
    let dir = TempDir::new("corrupt");
    write_journal(dir.path(), 3_000);
    let first_file = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first_file).unwrap();
    let (offset, _) = record_offsets(&bytes)[10];
    bytes[offset + 40] ^= 0x01;
    std::fs::write(&first_file, &bytes).unwrap();
    let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused");
    let JournalError::Corrupt { file, offset: at, sequence, damage, .. } = &error else {
        panic!("unexpected error {error}");
    };
    assert_eq!(*at, offset as u64);
    assert_eq!(*sequence, Sequence(11));
    assert_eq!(*damage, Damage::BitFlip { offset: (offset + 40) as u64, mask: 0x01 });
    assert!(file.ends_with("00000000000000000001.seg"));
    let message = error.to_string();
    assert!(message.contains("ringfence journal truncate"), "{message}");
    assert!(message.contains("--at-seq 11"), "{message}");
    assert!(message.contains(&format!("byte offset {offset}")), "{message}");
}

#[test]
fn truncate_repairs_corruption_explicitly() {
    // Goal: the operator's truncate drops the damaged record and everything after it, after
    // which recovery succeeds with exactly the records before it.
    let dir = TempDir::new("truncate");
    write_journal(dir.path(), 3_000);
    let first_file = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first_file).unwrap();
    let (offset, _) = record_offsets(&bytes)[99];
    bytes[offset + 8] ^= 0xFF;
    std::fs::write(&first_file, &bytes).unwrap();
    assert!(recover(dir.path(), options(Durability::Batch)).is_err());
    let storage = FileStorage::open(dir.path()).unwrap();
    let refused = recovery::truncate(&storage, Sequence(200));
    assert!(refused.is_err(), "cannot truncate past damage");
    let truncation = recovery::truncate(&storage, Sequence(100)).unwrap();
    assert!(!truncation.segments_removed.is_empty());
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.next_sequence, Sequence(100));
    assert!(recovered.report.torn_tail.is_none());
    drop(recovered);
    // A cut past the end would drop nothing: refused, naming where the journal ends.
    let past = recovery::truncate(&storage, Sequence(150)).unwrap_err().to_string();
    assert!(past.contains("ends at sequence 99") && past.contains("nothing to drop"), "{past}");
    assert!(!dir.path().join("truncating").exists(), "a refused cut left its marker");
}

#[test]
fn flipping_any_single_byte_of_sampled_records_is_detected() {
    // Goal: every byte of a sample of records (header, payload, padding), flipped alone, is
    // caught by the scan: as corruption mid-journal, or as a torn tail at the very end.
    let dir = TempDir::new("flip");
    write_journal(dir.path(), 600);
    let file = segments(dir.path()).remove(0);
    let original = std::fs::read(&file).unwrap();
    let offsets = record_offsets(&original);
    let samples = [0, 1, offsets.len() / 2, offsets.len() - 2];
    let mut flips = 0;
    for &index in &samples {
        let (offset, len) = offsets[index];
        for byte in offset..offset + len {
            let mut bytes = original.clone();
            bytes[byte] ^= 1 << (byte % 8);
            std::fs::write(&file, &bytes).unwrap();
            let mut source = ReadOnlyDir::open(dir.path()).unwrap();
            let layout = scan::scan(&mut source).unwrap();
            match &layout.problem {
                Some(problem) => assert_eq!(problem.offset, offset as u64, "flip at byte {byte}"),
                None => {
                    // A flip the structural scan missed must fail payload validation.
                    let read = scan::read(&mut source, &layout, Sequence(1), &mut |_| {
                        ControlFlow::Continue(())
                    });
                    assert!(read.is_err(), "flip at byte {byte} of record {index} undetected");
                }
            }
            flips += 1;
        }
    }
    std::fs::write(&file, &original).unwrap();
    assert!(flips > 100);
}

#[test]
fn truncated_and_garbage_files_are_rejected_with_clear_errors() {
    // Goal: a segment cut short, a file of garbage, and a stray file name all give errors that
    // name the file, and the tools' read-only scan never panics on them.
    let dir = TempDir::new("garbage");
    write_journal(dir.path(), 3_000);
    let files = segments(dir.path());
    assert!(files.len() >= 3);
    let middle = &files[1];
    let bytes = std::fs::read(middle).unwrap();
    std::fs::write(middle, &bytes[..bytes.len() / 2]).unwrap();
    let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused").to_string();
    assert!(error.contains(middle.file_name().unwrap().to_str().unwrap()), "{error}");
    assert!(error.contains("length"), "{error}");

    let mut garbage = vec![0u8; 70_000];
    Prng::new(70_000).fill(&mut garbage);
    std::fs::write(middle, &garbage).unwrap();
    let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused").to_string();
    assert!(error.contains("magic"), "{error}");
    assert!(error.contains("byte offset 0"), "{error}");

    std::fs::write(middle, &bytes).unwrap();
    std::fs::write(dir.path().join("notes.seg"), b"hello").unwrap();
    let error = recover(dir.path(), options(Durability::Batch)).err().expect("refused").to_string();
    assert!(error.contains("notes.seg") && error.contains("not a segment name"), "{error}");
    std::fs::remove_file(dir.path().join("notes.seg")).unwrap();

    std::fs::write(files.last().unwrap(), b"RFNC").unwrap();
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    let problem = layout.problem.expect("short file found");
    assert!(problem.torn_tail, "a last segment with no header is a cut-off creation");
}

#[test]
fn retention_keeps_the_last_snapshots_and_archives_old_segments() {
    // Goal: with keep = 2 only two snapshots remain, segments only older snapshots needed are
    // moved to the archive, and recovery still works from what is left.
    let dir = TempDir::new("retention");
    let archive = TempDir::new("archive");
    let storage = FileStorage::open_exclusive(dir.path()).unwrap().with_archive(archive.path());
    let mut recovered = recover_from(storage, options(Durability::None)).unwrap();
    let policy =
        SnapshotPolicy { every_commands: Some(1_000), keep: 2, ..SnapshotPolicy::default() };
    let data_dir = recovered.writer.data_dir().clone();
    let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
    let mut engine = recovered.engine;
    let mut workload = Workload::new(5, Sequence(1), Timestamp(5));
    let mut shadow = Engine::new(config());
    for command in generate(&mut workload, &mut shadow, 6_000) {
        recovered.writer.append_command(Epoch(1), &command).unwrap();
        recovered.writer.end_batch().unwrap();
        if command.sequence.0 % 1_000 == 0 {
            // Retention counts only snapshots the journal has durably reached; with policy
            // `none` the journal syncs only when it rotates, so sync before each snapshot.
            recovered.writer.sync_now().unwrap();
        }
        engine.apply(&command);
        snapshots.after_apply(&engine, &command);
        // Let the writer keep up so no snapshot is skipped for being busy.
        while snapshots.stats().pauses > snapshots.stats().written + snapshots.stats().failed {
            std::thread::yield_now();
        }
    }
    let stats = snapshots.finish();
    assert!(stats.written >= 5, "{stats:?}");
    assert_eq!(snapshot::list(&ReadOnlyDir::open(dir.path()).unwrap()).unwrap().len(), 2);
    let archived = std::fs::read_dir(archive.path()).unwrap().count();
    assert!(archived >= 1, "old segments were archived");
    drop(recovered.writer);
    let again = recover(dir.path(), options(Durability::None)).unwrap();
    assert_eq!(again.engine.state_digest(), engine.state_digest());
}

#[test]
fn snapshot_past_the_journal_end_is_set_aside() {
    // Goal: a snapshot that covers records the journal lost (power loss after the snapshot
    // was synced but before the batch was) is never loaded, now or later.
    let dir = TempDir::new("stale");
    let commands = write_journal(dir.path(), 500);
    let mut engine = Engine::new(config());
    for command in &commands {
        engine.apply(command);
    }
    let fake_through = Sequence(10_000);
    snapshot::write_now(&FileStorage::open(dir.path()).unwrap(), &engine, fake_through).unwrap();
    let recovered = recover(dir.path(), options(Durability::Batch)).unwrap();
    assert!(recovered.report.snapshot.is_none());
    assert_eq!(recovered.report.skipped_snapshots.len(), 1);
    assert!(snapshot::list(&ReadOnlyDir::open(dir.path()).unwrap()).unwrap().is_empty());
    assert_eq!(recovered.next_sequence, Sequence(501));
}

#[test]
fn snapshot_requested_while_the_writer_is_busy_is_taken_later() {
    // Goal: an operator's snapshot request is never dropped: if the writer is still busy with
    // the previous snapshot, the next command that finds it free takes it; meanwhile the
    // figures count it as deferred.
    let dir = TempDir::new("deferred");
    let mut recovered = recover(dir.path(), options(Durability::None)).unwrap();
    let policy = SnapshotPolicy { every_commands: None, keep: 5, ..SnapshotPolicy::default() };
    let data_dir = recovered.writer.data_dir().clone();
    let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(8, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), 500);
    for command in &commands {
        recovered.writer.append_command(Epoch(1), command).unwrap();
        engine.apply(command);
    }
    // A snapshot request is not journaled: it is placed at the last journaled sequence.
    let request = Sequenced {
        sequence: engine.last_sequence(),
        timestamp: Timestamp(10_000),
        command: Command::Snapshot,
    };
    for _ in 0..2 {
        snapshots.after_apply(&engine, &request);
    }
    // The second request found the writer busy and waits, and the figures say so now; or the
    // writer was done already and took it at once.
    let seen = snapshots.stats();
    assert!(
        (seen.pauses, seen.deferred_busy) == (1, 1) || (seen.pauses, seen.deferred_busy) == (2, 0),
        "{seen:?}"
    );
    let mut next = engine.last_sequence().next();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while snapshots.stats().pauses < 2 && std::time::Instant::now() < deadline {
        let tick =
            Sequenced { sequence: next, timestamp: Timestamp(10_000), command: Command::Tick };
        recovered.writer.append_command(Epoch(1), &tick).unwrap();
        engine.apply(&tick);
        snapshots.after_apply(&engine, &tick);
        next = next.next();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let stats = snapshots.finish();
    assert_eq!(stats.pauses, 2, "{stats:?}");
    assert_eq!(stats.written, 2, "{stats:?}");
    assert!(stats.pause_ns_max > 0);
}

#[test]
fn snapshot_deferred_by_a_busy_writer_is_taken_when_the_node_goes_quiet() {
    // Goal: a snapshot that fell due while the writer was busy does not wait for the next
    // command: a node that goes quiet after a burst has it taken once the writer is free.
    let dir = TempDir::new("deferred-quiet");
    let mut recovered = recover(dir.path(), options(Durability::None)).unwrap();
    let policy = SnapshotPolicy { every_commands: Some(100), keep: 5, ..SnapshotPolicy::default() };
    let data_dir = recovered.writer.data_dir().clone();
    let (mut snapshots, mut writer) = Snapshotter::stepped(data_dir, policy, config());
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(9, Sequence(1), Timestamp(1));
    for command in generate(&mut workload, &mut Engine::new(config()), 250) {
        recovered.writer.append_command(Epoch(1), &command).unwrap();
        engine.apply(&command);
        snapshots.after_apply(&engine, &command);
    }
    // The first snapshot, through 100, is still in the writer's hands: the one due at 200
    // waits for it.
    let waiting = snapshots.stats();
    assert_eq!((waiting.pauses, waiting.deferred_busy, waiting.written), (1, 1, 0), "{waiting:?}");
    assert!(writer.step(), "the first snapshot was handed over");
    // No command follows; the applying stage goes idle.
    snapshots.idle(&engine);
    assert!(writer.step(), "the deferred snapshot was not handed over while the node was quiet");
    let stats = snapshots.finish();
    assert_eq!((stats.pauses, stats.written, stats.failed), (2, 2, 0), "{stats:?}");
    assert_eq!(stats.through, 250, "the deferred snapshot covers every command applied");
}

#[test]
fn pipelined_read_visits_exactly_what_the_plain_read_does() {
    // Goal: the two-thread reader used by recovery and replay hands over every record, in
    // order, and stops where the visitor stops.
    let dir = TempDir::new("pipelined");
    let commands = write_journal(dir.path(), 20_000);
    let mut source = ReadOnlyDir::open(dir.path()).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    for from in [1u64, 4_097, 19_999] {
        let mut seen = Vec::new();
        scan::read_pipelined(&mut source, &layout, Sequence(from), &mut |record| {
            seen.push(record.sequenced());
            // A slow visitor lets the reader finish first with batches still queued.
            if record.sequence.0 % 1_000 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seen, commands[from as usize - 1..], "from {from}");
    }
    let mut count = 0;
    scan::read_pipelined(&mut source, &layout, Sequence(1), &mut |_| {
        count += 1;
        if count == 9_000 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap();
    assert_eq!(count, 9_000);
}

#[test]
fn an_installed_snapshot_starts_an_empty_journal_after_it() {
    // Goal: a standby's start from its primary's snapshot: the file installed into an empty
    // directory is loaded, and the journal continues right after it; a snapshot whose bytes
    // are damaged, or that covers another sequence than announced, is refused unwritten.
    let primary = TempDir::new("install-primary");
    let commands = write_journal(primary.path(), 700);
    let mut engine = Engine::new(config());
    for command in &commands {
        engine.apply(command);
    }
    let through = Sequence(700);
    let storage = FileStorage::open(primary.path()).unwrap();
    let meta = snapshot::write_now(&storage, &engine, through).unwrap();
    let bytes = std::fs::read(primary.path().join(&meta.name)).unwrap();

    // As a standby does: its own (here fresh) journal is recovered, then dropped whole.
    let standby = TempDir::new("install-standby");
    drop(recover(standby.path(), options(Durability::Batch)).unwrap());
    let target = FileStorage::open(standby.path()).unwrap();
    recovery::truncate(&target, Sequence(1)).unwrap();
    let mut damaged = bytes.clone();
    damaged[200] ^= 1;
    assert!(snapshot::install(&target, through, &damaged).is_err());
    assert!(snapshot::install(&target, Sequence(699), &bytes).is_err());
    assert!(snapshot::list(&ReadOnlyDir::open(standby.path()).unwrap()).unwrap().is_empty());
    snapshot::install(&target, through, &bytes).unwrap();
    let recovered = recover(standby.path(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.report.replayed, 0);
    assert_eq!(recovered.engine.state_digest(), engine.state_digest());
    assert_eq!(recovered.next_sequence, Sequence(701));
}

/// Where a snapshot's header keeps the epoch of its last record (`docs/journal-format.md`).
const THROUGH_EPOCH_AT: usize = 114;

#[test]
fn a_snapshot_records_the_epoch_of_its_last_record_and_an_installed_one_carries_it() {
    // Goal: a snapshot names the epoch of the journal record it was taken through, read from
    // the journal as the snapshot is written, so a node whose journal holds nothing at or
    // before it (retired, or rebuilt after it) still knows that record's epoch; a standby
    // installing the file knows it too; a snapshot of a record the journal does not hold
    // records none.
    let dir = TempDir::new("through-epoch");
    let mut recovered = recover(dir.path(), options(Durability::None)).unwrap();
    let mut workload = Workload::new(5, Sequence(1), Timestamp(10));
    let mut shadow = Engine::new(config());
    let commands = generate(&mut workload, &mut shadow, 300);
    for (i, command) in commands.iter().enumerate() {
        let epoch = if i < 200 { Epoch(1) } else { Epoch(2) };
        if i == 200 {
            let second = Epochs { current: Epoch(2), promised: Epoch(2) };
            recovered.writer.data_dir().store_epochs(second).unwrap();
        }
        recovered.writer.append_command(epoch, command).unwrap();
    }
    recovered.writer.end_batch().unwrap();
    drop(recovered);
    let storage = FileStorage::open(dir.path()).unwrap();
    let (mut at_200, mut at_300) = (Engine::new(config()), Engine::new(config()));
    for (i, command) in commands.iter().enumerate() {
        if i < 200 {
            at_200.apply(command);
        }
        at_300.apply(command);
    }
    let first = snapshot::write_now(&storage, &at_200, Sequence(200)).unwrap();
    let second = snapshot::write_now(&storage, &at_300, Sequence(300)).unwrap();
    assert_eq!((first.through_epoch, second.through_epoch), (Some(Epoch(1)), Some(Epoch(2))));
    // Each carries the epochs of the records it includes: the second, the first's history
    // and the journal's records after it.
    assert_eq!(first.history.starts(), [(Epoch(1), Sequence(1))]);
    let both = [(Epoch(1), Sequence(1)), (Epoch(2), Sequence(201))];
    assert_eq!(second.history.starts(), both);
    let source = ReadOnlyDir::open(dir.path()).unwrap();
    assert_eq!(snapshot::read_meta(&source, &second.name).unwrap().history.starts(), both);
    assert_eq!(snapshot::read_meta(&source, &second.name).unwrap().through_epoch, Some(Epoch(2)));
    // From the header alone, through either kind of source.
    let through = (Sequence(300), Some(Epoch(2)));
    assert_eq!(snapshot::read_through(&source, &second.name).unwrap(), through);
    assert_eq!(snapshot::read_through(&storage, &second.name).unwrap(), through);
    let mut damaged = std::fs::read(dir.path().join(&second.name)).unwrap();
    damaged[THROUGH_EPOCH_AT] ^= 1;
    std::fs::write(dir.path().join("snapshot-damaged.snap"), &damaged).unwrap();
    assert!(snapshot::read_through(&source, "snapshot-damaged.snap").is_err());
    let past_the_end = snapshot::write_now(&storage, &at_300, Sequence(10_000)).unwrap();
    assert_eq!(past_the_end.through_epoch, None);
    // The journal does not hold the records up to it: no history is guessed.
    assert_eq!(past_the_end.history.known_from(), None);
    assert_eq!(snapshot::read_meta(&source, &past_the_end.name).unwrap().through_epoch, None);

    let standby = TempDir::new("through-epoch-standby");
    drop(recover(standby.path(), options(Durability::Batch)).unwrap());
    let target = FileStorage::open(standby.path()).unwrap();
    recovery::truncate(&target, Sequence(1)).unwrap();
    let bytes = std::fs::read(dir.path().join(&second.name)).unwrap();
    let installed = snapshot::install(&target, Sequence(300), &bytes).unwrap();
    assert_eq!(installed.through_epoch, Some(Epoch(2)));
    assert_eq!(installed.history.starts(), both);
    // A snapshot rewritten through the installed one's sequence, with no record after it in
    // the journal, keeps its history.
    let restored = snapshot::load(&ReadOnlyDir::open(standby.path()).unwrap(), &second.name, None);
    let rewritten = snapshot::write_now(&target, &restored.unwrap().0, Sequence(300)).unwrap();
    assert_eq!(rewritten.history.starts(), both);
}

#[test]
fn a_journal_or_snapshot_of_other_engine_settings_is_refused_not_replayed() {
    // Goal: records replay only under the settings they were written with. A node configured
    // otherwise (another shard: other order ids; other table sizes: other refusals) refuses
    // to start, naming the file and each setting that differs, and changes nothing.
    let dir = TempDir::new("settings");
    let commands = write_journal_stopped_cleanly(dir.path(), 300);
    let with = |engine_config| WriterOptions { engine_config, ..options(Durability::None) };
    let other_shard = EngineConfig { shard: config().shard + 1, ..config() };
    let refused = recover(dir.path(), with(other_shard.clone()));
    let Err(JournalError::SettingsChanged { file, differences }) = refused else {
        panic!("a journal of shard {} recovered as shard {}", config().shard, other_shard.shard);
    };
    assert!(file.ends_with(".seg"), "{file}");
    let expected = format!("shard = {} (written with: {})", other_shard.shard, config().shard);
    assert_eq!(differences, expected);
    let larger = EngineConfig { orders_max: config().orders_max * 2, ..config() };
    let refused = recover(dir.path(), with(larger.clone())).err().expect("refused");
    assert!(refused.to_string().contains("orders_max = 16384 (written with: 8192)"), "{refused}");
    // Nothing was dropped: under its own settings the journal recovers whole.
    let recovered = recover(dir.path(), options(Durability::None)).unwrap();
    let last = commands.last().unwrap().sequence;
    assert_eq!(recovered.next_sequence, last.next());
    let engine = recovered.engine;
    let through = recovered.writer.last_appended();
    drop(recovered.writer);
    // A snapshot installed alone, as a standby installs its primary's, is checked too.
    let meta =
        snapshot::write_now(&FileStorage::open_exclusive(dir.path()).unwrap(), &engine, through)
            .unwrap();
    let bytes = std::fs::read(dir.path().join(snapshot::snapshot_name(meta.through))).unwrap();
    let fresh = TempDir::new("settings-snapshot");
    drop(recover(fresh.path(), options(Durability::None)).unwrap());
    let storage = FileStorage::open_exclusive(fresh.path()).unwrap();
    recovery::truncate(&storage, Sequence(1)).unwrap();
    snapshot::install(&storage, meta.through, &bytes).unwrap();
    drop(storage);
    let refused = recover(fresh.path(), with(larger)).err().expect("refused");
    let JournalError::SettingsChanged { file, .. } = &refused else { panic!("{refused}") };
    assert!(file.ends_with(".snap"), "{refused}");
    let recovered = recover(fresh.path(), options(Durability::None)).unwrap();
    assert_eq!(recovered.engine.state_digest(), engine.state_digest());
}

#[test]
fn a_first_start_cut_off_while_it_marked_its_new_directory_starts_again() {
    // Goal: a node killed during its very first start, while it wrote the catch-up marker of
    // its new directory, leaves that marker's temporary file behind. The next start removes
    // it before it writes the marker again (whose temporary has the same name), and starts:
    // it does not trip over its own write and refuse the directory.
    use ringfence_journal::storage::{Storage, temp_name};
    let dir = TempDir::new("first-start-cut-off");
    let storage = FileStorage::open_exclusive(dir.path()).unwrap();
    let leftover = temp_name(datadir::CATCH_UP_FILE);
    storage.write_file(&leftover, b"cut o").unwrap();
    let recovered = recover_from(storage.clone(), options(Durability::Batch)).unwrap();
    assert_eq!(recovered.report.temporaries_removed.len(), 1, "{:?}", recovered.report);
    assert!(recovered.report.temporaries_removed[0].ends_with(&leftover));
    assert!(recovered.report.initialised, "a new directory");
    assert!(recovered.writer.data_dir().catching_up(), "the marker is in force");
    assert!(storage.file_len(&leftover).is_err(), "the temporary is gone");
}
