//! A standby's start when its primary retired the records it lacks (`needs_snapshot`): it
//! fetches the primary's snapshot and replaces its journal with it. A fake primary, built on
//! the production `PrimarySession` as `rejoin.rs`'s is, refuses the join and answers the
//! fetch with bytes each test chooses: a snapshot refused leaves the journal as it was, and
//! one installed keeps the epoch it records across a clean stop.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::snapshot_primary::{self, Leading, Offer, run_standby_until};
use common::{CLUSTER_SECRET, Serve, TempDir, journal_dump_json};
use ringfence_core::{Epoch, Sequence};
use ringfence_replicator::position::EpochList;

/// A fake primary in [`PRIMARY_EPOCH`] on `listener` whose journal starts at `first_held`:
/// refuses every join that needs retired records (`needs_snapshot`) and sends `offer` for
/// every fetch.
fn fake_primary(
    listener: TcpListener,
    first_held: u64,
    offer: Offer,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<String>> {
    let journal = EpochList { first: first_held, epochs: vec![PRIMARY_EPOCH; 5] };
    let leading = Leading::in_epoch(PRIMARY_EPOCH);
    snapshot_primary::serve(listener, (leading, journal), offer, stop)
}

/// Starts `dir` as a standby of the fake primary on `primary`.
fn standby_process(dir: &Path, secret: &Path, primary: SocketAddr) -> common::Logged {
    snapshot_primary::standby_process(dir, secret, primary, &[])
}

/// The fake primary's epoch: a promoted standby's.
const PRIMARY_EPOCH: u64 = 1005;

fn create_sale(node: &Serve) {
    let sku = r#"{"sku":1,"stock":1000,"price_cents":900,"per_user_limit":0,"payment_timeout_ms":600000}"#;
    let (status, body) = node.call("POST", "/v1/skus", sku, true);
    assert_eq!(status, 201, "{body}");
}

fn sell(node: &Serve, tag: &str, count: u64) {
    for n in 0..count {
        let body = format!(r#"{{"request_id":"{tag}-{n}","user":{},"sku":1,"qty":1}}"#, n + 1);
        let (status, answer) = node.call("POST", "/v1/orders", &body, false);
        assert_eq!(status, 201, "{answer}");
    }
}

/// The lines of every file of `dir/rollback` (none if it does not exist).
fn rollback_lines(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("rollback")) else { return Vec::new() };
    let mut lines = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            lines.extend(std::fs::read_to_string(path).unwrap().lines().map(str::to_owned));
        }
    }
    lines
}

/// A node's journal on `dir` holding a sale and `orders` acknowledged orders, killed (no
/// final snapshot): its records, as `journal dump` shows them.
fn journal_with_orders(dir: &Path, tag: &str, orders: u64) -> Vec<String> {
    let mut node = Serve::start(dir);
    create_sale(&node);
    sell(&node, tag, orders);
    node.signal("-KILL");
    journal_dump_json(dir, &[])
}

/// A node's snapshot of a sale and `orders` orders, stopped cleanly: its final snapshot's
/// sequence and bytes.
fn snapshot_of_orders(dir: &Path, orders: u64) -> (Sequence, Vec<u8>) {
    let mut node = Serve::start(dir);
    create_sale(&node);
    sell(&node, "p", orders);
    node.signal("-TERM");
    let (through, _, bytes) = newest_snapshot(dir);
    (through, bytes)
}

/// The newest snapshot in `dir`: its sequence, the epoch it records, and its bytes.
fn newest_snapshot(dir: &Path) -> (Sequence, Option<Epoch>, Vec<u8>) {
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    snapshots.sort();
    let newest = snapshots.pop().expect("a final snapshot");
    let name = newest.file_name().unwrap().to_str().unwrap().to_owned();
    let bytes = std::fs::read(&newest).unwrap();
    let (through, epoch) = ringfence_journal::snapshot::through_in(&name, &bytes).unwrap();
    (through, epoch, bytes)
}

/// The scenario: a standby holding `standby_orders` orders of its own; its primary refuses its
/// join (journal from `first_held`) and offers `offer(through, bytes)` of a node holding
/// `primary_orders`. Returns the standby's records before, its log, its records after and
/// what `rollback/` holds.
struct Outcome {
    before: Vec<String>,
    log: Vec<String>,
    after: Vec<String>,
    rollback: Vec<String>,
}

fn rejoin(
    tag: &str,
    standby_orders: u64,
    primary_orders: u64,
    first_held: impl FnOnce(Sequence, u64) -> u64,
    offer: impl FnOnce(Sequence, Vec<u8>) -> Offer,
) -> Outcome {
    let root = TempDir::new(tag);
    let secret = root.path().join("secret");
    std::fs::write(&secret, CLUSTER_SECRET).unwrap();
    let (dir_s, dir_p) = (root.path().join("s"), root.path().join("p"));
    let before = journal_with_orders(&dir_s, "s", standby_orders);
    let (through, bytes) = snapshot_of_orders(&dir_p, primary_orders);
    let first = first_held(through, before.len() as u64);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let primary = fake_primary(listener, first, offer(through, bytes), Arc::clone(&stop));
    let process = standby_process(&dir_s, &secret, address);
    let log = run_standby_until(process, &["HTTP API listening"]);
    stop.store(true, Ordering::Release);
    let served = primary.join().unwrap();
    eprintln!("fake primary: {served:#?}");
    let after = journal_dump_json(&dir_s, &[]);
    let rollback = rollback_lines(&dir_s);
    Outcome { before, log, after, rollback }
}

/// A snapshot that the standby refuses leaves the journal it was to replace as it was.
fn a_refused_snapshot_leaves_the_journal(
    tag: &str,
    tamper: fn(Sequence, &mut Vec<u8>) -> Sequence,
) {
    let outcome = rejoin(
        tag,
        5,
        20,
        |through, _| through.0 + 1,
        |through, mut bytes| {
            let through = tamper(through, &mut bytes);
            Offer::of(through, Epoch(PRIMARY_EPOCH), bytes)
        },
    );
    let refused = outcome.log.iter().any(|l| {
        l.contains("the primary's snapshot through")
            && l.contains("was refused")
            && l.contains("this journal is left as it was")
    });
    assert!(refused, "the snapshot was to be refused: {:#?}", outcome.log);
    // Without etcd a refusal is a failed fetch: the node starts on its journal and retries.
    let started = outcome
        .log
        .iter()
        .any(|l| l.contains("was refused") && l.contains("starting as a standby on this journal"));
    assert!(started, "{:#?}", outcome.log);
    assert!(outcome.before.len() >= 6, "a sale and 5 orders: {:#?}", outcome.before);
    assert!(
        outcome.after == outcome.before && outcome.rollback.is_empty(),
        "a snapshot refused as damaged changed the journal it was to replace \
         (before {} records, after {}; rollback/: {} lines)\nlog: {:#?}",
        outcome.before.len(),
        outcome.after.len(),
        outcome.rollback.len(),
        outcome.log
    );
}

#[test]
fn a_snapshot_announced_under_another_sequence_leaves_the_journal() {
    // Goal: chunks that announce a `through` the file's header does not hold are refused
    // before the journal is dropped.
    a_refused_snapshot_leaves_the_journal("wrong-through", |through, _| Sequence(through.0 + 3));
}

#[test]
fn a_snapshot_whose_body_is_damaged_leaves_the_journal() {
    // Goal: a snapshot with one bit of its body flipped (damaged at rest on the primary, which
    // sends its newest snapshot's bytes as they are) is refused before the journal is dropped.
    a_refused_snapshot_leaves_the_journal("damaged-body", |through, bytes| {
        let at = bytes.len() - 3;
        bytes[at] ^= 0x10;
        through
    });
}

#[test]
fn a_snapshot_larger_than_this_standby_can_restore_is_refused_at_its_first_chunk() {
    // Goal: a standby gathers a fetched snapshot whole in memory, so one announced past the
    // largest file an engine under its settings takes (a few hundred MiB at the defaults;
    // 32 GiB here) is refused at its first chunk, before any memory is spent on it; the node
    // starts on its journal as it was and retries.
    let outcome = rejoin(
        "oversize",
        5,
        20,
        |through, _| through.0 + 1,
        |through, bytes| Offer {
            through,
            through_epoch: Epoch(PRIMARY_EPOCH),
            bytes,
            announced_len: Some(32 << 30),
        },
    );
    let refused = outcome.log.iter().any(|l| {
        l.contains("fetching a snapshot from the primary")
            && l.contains("34359738368 bytes, above the limit of")
    });
    assert!(refused, "the snapshot was to be refused: {:#?}", outcome.log);
    assert!(outcome.before.len() >= 6, "a sale and 5 orders: {:#?}", outcome.before);
    assert_eq!(outcome.after, outcome.before, "the journal as it was");
}

#[test]
fn a_standby_stopped_right_after_installing_keeps_the_snapshots_recorded_epoch() {
    // Goal: a standby installs its primary's snapshot through T (its header records record T's
    // epoch), starts, takes no record, and is stopped cleanly. Its final snapshot is through
    // T too, and the journal holds no record T to read the epoch from: rewritten under the
    // same name, the installed header's epoch must survive, or the next start joins at
    // (T, epoch 0) and the primary refuses it (`needs_snapshot`) again.
    let root = TempDir::new("final-over-installed");
    let secret = root.path().join("secret");
    std::fs::write(&secret, CLUSTER_SECRET).unwrap();
    let (dir_s, dir_p) = (root.path().join("s"), root.path().join("p"));
    let (through, bytes) = snapshot_of_orders(&dir_p, 3);
    let name = ringfence_journal::snapshot::snapshot_name(through);
    let (_, recorded) = ringfence_journal::snapshot::through_in(&name, &bytes).unwrap();
    assert!(recorded.is_some(), "the primary's snapshot records its last record's epoch");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let offer = Offer::of(through, Epoch(PRIMARY_EPOCH), bytes);
    let primary = fake_primary(listener, through.0 + 1, offer, Arc::clone(&stop));
    let mut process = standby_process(&dir_s, &secret, address);
    let (_, before) = process.wait_for("ringfence: HTTP API listening", Duration::from_secs(120));
    assert!(before.iter().any(|l| l.contains("fetched the primary's snapshot")), "{before:#?}");
    let pid = process.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = process.child.wait().unwrap();
    let rest: Vec<String> = process.lines.try_iter().collect();
    let file = std::fs::read(dir_s.join(&name)).unwrap();
    let (_, after) = ringfence_journal::snapshot::through_in(&name, &file).unwrap();
    // What the next start does with it.
    let again = standby_process(&dir_s, &secret, address);
    let next = run_standby_until(again, &["HTTP API listening"]);
    stop.store(true, Ordering::Release);
    let _ = primary.join();
    let next: Vec<&String> =
        next.iter().filter(|l| l.contains("primary") || l.contains("recovered")).collect();
    assert_eq!(
        after, recorded,
        "{name} after a clean stop (exit {status:?}) lost the epoch it recorded: {rest:#?}\n\
         the next start: {next:#?}"
    );
}

/// Copies the files of data directory `from` into a new directory `to`.
fn copy_data_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// The `(sequence, epoch)` of each `journal dump --json` line.
fn positions(lines: &[String]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            (record["sequence"].as_u64().unwrap(), record["epoch"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn the_records_an_old_primary_wrote_alone_are_kept_when_its_successor_s_snapshot_replaces_them() {
    // Goal: an old primary acknowledged writes alone (`async`) after its standby took over,
    // and rejoins after its successor retired past its end: the successor's snapshot replaces
    // its journal. The records it wrote alone are not the successor's, and the snapshot's
    // epoch history shows it: they are kept in `rollback/` before the journal is dropped. The
    // records both held are not.
    let root = TempDir::new("kept-alone");
    let secret = root.path().join("secret");
    std::fs::write(&secret, CLUSTER_SECRET).unwrap();
    let (dir_s, dir_p) = (root.path().join("s"), root.path().join("p"));
    // The shared history: a sale and 10 orders, in both journals.
    let shared = journal_with_orders(&dir_p, "both", 10);
    copy_data_dir(&dir_p, &dir_s);
    // The old primary, alone: a run that journals nothing, then one that takes 5 orders.
    let mut idle = Serve::start(&dir_s);
    idle.signal("-KILL");
    let mut alone = Serve::start(&dir_s);
    sell(&alone, "alone", 5);
    alone.signal("-KILL");
    let before = journal_dump_json(&dir_s, &[]);
    // The successor takes 20 orders in an epoch of its own and stops with a final snapshot.
    let mut successor = Serve::start(&dir_p);
    sell(&successor, "successor", 20);
    successor.signal("-TERM");
    let successor_records = journal_dump_json(&dir_p, &[]);
    let (shared_at, before_at) = (positions(&shared), positions(&before));
    let successor_at = positions(&successor_records);
    assert_eq!(before_at[..shared_at.len()], shared_at[..], "the shared records");
    let diverged = &before_at[shared_at.len()..];
    assert_eq!(diverged.len(), 5, "{before_at:?}");
    // Other epochs at the same sequences: other records.
    for (position, successor) in diverged.iter().zip(&successor_at[shared_at.len()..]) {
        assert_eq!(position.0, successor.0);
        assert_ne!(position.1, successor.1, "the same record: {before_at:?} {successor_at:?}");
    }
    let (through, epoch, bytes) = newest_snapshot(&dir_p);
    assert_eq!(through.0, successor_at.last().unwrap().0, "the final snapshot is through the end");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let offer = Offer::of(through, epoch.unwrap(), bytes);
    let primary = fake_primary(listener, through.0 + 1, offer, Arc::clone(&stop));
    let log = run_standby_until(standby_process(&dir_s, &secret, address), &["HTTP API listening"]);
    stop.store(true, Ordering::Release);
    let _ = primary.join();
    assert!(log.iter().any(|l| l.contains("fetched the primary's snapshot")), "{log:#?}");
    let kept = rollback_lines(&dir_s);
    assert_eq!(
        kept,
        before[shared.len()..],
        "rollback/ holds exactly the records written alone\nlog: {log:#?}"
    );
    assert!(journal_dump_json(&dir_s, &[]).is_empty(), "the snapshot replaced the journal");
}

/// The standby, having promised `promised`, joins a primary of epoch 1020 that answers
/// `needs_snapshot`; its fetch, on a new connection, reaches a primary of epoch 1005 at the
/// same address (the old one, deposed and not yet aware). That one must refuse the fetch and
/// send nothing: the standby's journal stays as it was, and it starts on it and retries, as
/// after any failed fetch. Without the fence the old primary's snapshot, records its
/// successor may never have had, replaced the journal.
fn a_fetch_reaching_a_superseded_primary_gets_nothing(tag: &str, promised: u64) {
    let root = TempDir::new(tag);
    let secret = root.path().join("secret");
    std::fs::write(&secret, CLUSTER_SECRET).unwrap();
    let (dir_s, dir_p) = (root.path().join("s"), root.path().join("p"));
    journal_with_orders(&dir_s, "s", 5);
    let options = ringfence_journal::writer::WriterOptions {
        segment_len: 64 * 1024,
        durability: ringfence_journal::writer::Durability::Batch,
        engine_config: ringfence_core::EngineConfig::default(),
    };
    let recovered = ringfence_journal::recovery::recover(&dir_s, options).unwrap();
    let current = recovered.epochs.current;
    let raised = ringfence_journal::epoch::Epochs { current, promised: Epoch(promised) };
    recovered.writer.data_dir().store_epochs(raised).unwrap();
    drop(recovered);
    let before = journal_dump_json(&dir_s, &[]);
    let (through, bytes) = snapshot_of_orders(&dir_p, 20);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let journal = EpochList { first: through.0 + 1, epochs: vec![1020; 5] };
    let leading = Leading { join: 1020, fetch: 1005 };
    let offer = Offer::of(through, Epoch(1005), bytes);
    let primary = snapshot_primary::serve(listener, (leading, journal), offer, Arc::clone(&stop));
    let log = run_standby_until(standby_process(&dir_s, &secret, address), &["HTTP API listening"]);
    stop.store(true, Ordering::Release);
    let served = primary.join().unwrap();
    let refused = served.iter().any(|s| s.contains("(epoch 1005) was superseded by epoch 1020"));
    assert!(refused, "the old primary was to refuse the fetch: {served:#?}\nlog: {log:#?}");
    assert!(!served.iter().any(|s| s == "snapshot sent"), "{served:#?}");
    let started = log.iter().any(|l| {
        l.contains("fetching a snapshot from the primary")
            && l.contains("starting as a standby on this journal")
    });
    assert!(started, "{log:#?}");
    assert!(before.len() >= 6, "a sale and 5 orders: {before:#?}");
    assert_eq!(journal_dump_json(&dir_s, &[]), before, "the journal as it was: {log:#?}");
    assert!(rollback_lines(&dir_s).is_empty());
}

#[test]
fn a_primary_superseded_before_the_fetch_sends_no_snapshot() {
    // Goal: a standby that promised an epoch between the two primaries'.
    a_fetch_reaching_a_superseded_primary_gets_nothing("fetch-superseded", 1010);
}

#[test]
fn a_standby_that_followed_the_old_primary_fetches_nothing_from_it_once_a_newer_one_answered() {
    // Goal: the usual case: the standby followed the old primary (its promise is that one's
    // epoch), and the newer primary's `needs_snapshot` names a higher epoch, which the standby
    // promises before it fetches.
    a_fetch_reaching_a_superseded_primary_gets_nothing("fetch-followed-old", 1005);
}
