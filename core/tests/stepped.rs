//! A node driven entirely on the test thread: the `stepped` topology runs the production
//! processor and egress only inside `Node::step`, on a `ManualClock`, with no thread and no
//! sleep — the way the simulator drives it.

use std::sync::{Arc, Mutex};

use ringfence_core::pipeline::{
    Clock, Framed, HoldReason, Intake, Journal, ManualClock, MemoryJournal, NoReplicator,
    NoSnapshots, Node, NodeConfig, NodeError, NodeParts, Refused, Replicator, Session, StageError,
    Topology, Unanswered, Watermark, WriteHold,
};
use ringfence_core::snowflake::EPOCH_UNIX_MS;
use ringfence_core::{
    Action, Command, CreateSku, Engine, Epoch, OrderState, Outcome, Query, RequestKey, Reserve,
    Sequence, Sequenced, SkuId, Timestamp, UserId,
};

const SKU: SkuId = SkuId(3);
const PAYMENT_TIMEOUT_MS: u64 = 1_000;
const START: Timestamp = Timestamp(EPOCH_UNIX_MS + 86_400_000);

type Records = Arc<Mutex<Vec<(Epoch, Sequenced)>>>;

fn config(intake: Intake) -> NodeConfig {
    NodeConfig { intake, tick_period_ms: 1, ..NodeConfig::for_tests(Topology::Stepped) }
}

fn start<J: Journal>(config: NodeConfig, clock: &Arc<ManualClock>, journal: J) -> Node {
    let parts = NodeParts {
        engine: Engine::new(config.engine.clone()),
        next_sequence: Sequence(1),
        journal,
        replicator: NoReplicator::default(),
        hook: NoSnapshots,
        clock: Arc::clone(clock) as Arc<dyn Clock>,
    };
    Node::start_parts(config, parts).expect("a stepped node starts")
}

fn stepped_node(clock: &Arc<ManualClock>, records: &Records) -> Node {
    start(config(Intake::Sequencer), clock, MemoryJournal::shared(Arc::clone(records)))
}

/// Submits `command`, steps the node once, and returns the answer, which must be ready.
fn call(node: &Node, session: &mut Session, command: Command) -> Outcome {
    session.try_submit(command, 0).expect("accepted");
    let report = node.step();
    assert!(report.processed >= 1 && report.released >= 1, "{report:?}");
    session.poll().expect("answered within the step").result.expect("no failure")
}

fn create_sku() -> Command {
    let spec = CreateSku {
        sku: SKU,
        stock: 10,
        price_cents: 250,
        per_user_limit: 0,
        payment_timeout_ms: PAYMENT_TIMEOUT_MS,
        sale_start: None,
        sale_end: None,
    };
    Command::Client { key: RequestKey::from_u128(1), action: Action::CreateSku(spec) }
}

fn reserve() -> Command {
    let reserve = Reserve { user: UserId(9), sku: SKU, qty: 2, coupon: None };
    Command::Client { key: RequestKey::from_u128(2), action: Action::Reserve(reserve) }
}

/// Runs the scenario and returns the journal and the final running hash.
fn payment_deadline_scenario() -> (Vec<(Epoch, Sequenced)>, u64) {
    let clock = Arc::new(ManualClock::new(START));
    let records = Records::default();
    let node = stepped_node(&clock, &records);
    let mut session = node.session().unwrap();

    // Nothing moves between steps: a submission waits for the driver.
    session.try_submit(create_sku(), 0).unwrap();
    assert!(session.poll().is_none(), "answered without a step");
    assert!(records.lock().unwrap().is_empty(), "journaled without a step");
    node.step();
    assert!(matches!(session.poll().unwrap().result, Ok(Outcome::SkuCreated(_))));

    clock.advance_ms(5);
    let Outcome::Reserved { order, expires_at, .. } = call(&node, &mut session, reserve()) else {
        panic!("the reservation was refused");
    };
    assert_eq!(expires_at, Timestamp(START.0 + 5 + PAYMENT_TIMEOUT_MS));

    // One millisecond before the deadline: no tick, the order still holds its units.
    clock.advance_ms(PAYMENT_TIMEOUT_MS - 1);
    let report = node.step();
    assert!(!report.ticked, "a tick before the deadline");
    let view = call(&node, &mut session, Command::Query(Query::Order(order)));
    assert!(matches!(view, Outcome::Order(v) if v.state == OrderState::Reserved), "{view:?}");

    // The deadline itself: the step publishes a tick and the order expires within it.
    clock.advance_ms(1);
    let report = node.step();
    assert!(report.ticked, "no tick at the deadline");
    assert_eq!(report.processed, 1);
    let view = call(&node, &mut session, Command::Query(Query::Order(order)));
    assert!(matches!(view, Outcome::Order(v) if v.state == OrderState::Expired), "{view:?}");
    let sku = call(&node, &mut session, Command::Query(Query::Sku(SKU)));
    assert!(matches!(sku, Outcome::Sku(v) if v.available == 10 && v.reserved == 0), "{sku:?}");

    // Nothing else is due: an hour of idle time publishes nothing.
    clock.advance_ms(3_600_000);
    let report = node.step();
    assert_eq!((report.ticked, report.processed), (false, 0));

    drop(session);
    let report = node.shutdown().expect("a clean stop");
    assert_eq!(report.last_sequence, Sequence(3));
    let journal = records.lock().unwrap().clone();
    (journal, report.engine.running_hash())
}

#[test]
fn a_payment_deadline_fires_exactly_when_simulated_time_passes_it() {
    // Goal: on a manual clock, a stepped node expires an unpaid order in the step where the
    // clock reaches its deadline and not a millisecond before; it journals the SKU, the
    // reservation and one tick stamped at the deadline, and nothing for reads or idle time.
    let (journal, _) = payment_deadline_scenario();
    let kinds: Vec<&str> = journal.iter().map(|(_, s)| s.command.kind()).collect();
    assert_eq!(kinds, ["create_sku", "reserve", "tick"]);
    let sequences: Vec<u64> = journal.iter().map(|(_, s)| s.sequence.0).collect();
    assert_eq!(sequences, [1, 2, 3]);
    assert_eq!(journal[2].1.timestamp, Timestamp(START.0 + 5 + PAYMENT_TIMEOUT_MS));
}

#[test]
fn a_stepped_run_is_reproduced_exactly() {
    // Goal: the same steps on the same clock give the same journal, byte for byte in content,
    // and the same state hash: the node adds no time or order of its own.
    let first = payment_deadline_scenario();
    let second = payment_deadline_scenario();
    assert_eq!(first, second);
}

/// A journal that keeps the bytes it was given, record by record.
#[derive(Clone, Default)]
struct BytesJournal {
    records: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Journal for BytesJournal {
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        self.records.lock().unwrap().push(record.bytes.to_vec());
        Ok(())
    }

    fn flush(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        let records = self.records.lock().unwrap();
        let last = records.last().map(|bytes| ringfence_core::record::read_header(bytes).sequence);
        Ok(last.unwrap_or(Sequence(0)))
    }
}

/// A primary's run: a sale, a reservation that expires, one that is paid for, reads between.
/// Returns the primary's journal (bytes) and the outcome of every journaled command.
fn primary_run() -> (Vec<Vec<u8>>, Vec<Outcome>, u64) {
    let clock = Arc::new(ManualClock::new(START));
    let journal = BytesJournal::default();
    let node = start(config(Intake::Sequencer), &clock, journal.clone());
    let mut session = node.session().unwrap();
    let mut outcomes = vec![call(&node, &mut session, create_sku())];
    clock.advance_ms(3);
    outcomes.push(call(&node, &mut session, reserve()));
    let other = Reserve { user: UserId(10), sku: SKU, qty: 1, coupon: None };
    let other = Command::Client { key: RequestKey::from_u128(3), action: Action::Reserve(other) };
    clock.advance_ms(1);
    outcomes.push(call(&node, &mut session, other));
    let read = call(&node, &mut session, Command::Query(Query::Sku(SKU)));
    assert!(matches!(read, Outcome::Sku(v) if v.reserved == 3));
    // The first reservation's deadline (3 + timeout), not yet the second's (4 + timeout).
    clock.advance_ms(PAYMENT_TIMEOUT_MS - 1);
    assert!(node.step().ticked);
    drop(session);
    let report = node.shutdown().unwrap();
    let records = journal.records.lock().unwrap().clone();
    (records, outcomes, report.engine.running_hash())
}

#[test]
fn a_replica_journals_its_primarys_bytes_and_reaches_its_state() {
    // Goal: a standby fed its primary's records (the intake mode) journals them byte for byte,
    // answers each with the primary's outcome, publishes no ticks of its own, serves reads,
    // and ends at the primary's running hash.
    let (records, outcomes, primary_hash) = primary_run();
    assert_eq!(records.len(), 4, "SKU, two reservations, one tick");
    let clock = Arc::new(ManualClock::new(Timestamp(START.0 + 50_000)));
    let journal = BytesJournal::default();
    let replica = start(config(Intake::Replica), &clock, journal.clone());
    let mut session = replica.session().unwrap();
    for (index, bytes) in records.iter().enumerate() {
        session.try_submit_record(bytes, index as u64).expect("the next record is taken");
        let report = replica.step();
        assert!(!report.ticked, "a replica publishes no ticks");
        let completion = session.poll().expect("answered within the step");
        assert_eq!(completion.sequence, Sequence(index as u64 + 1));
        if let Some(expected) = outcomes.get(index) {
            assert_eq!(completion.result.as_ref().unwrap(), expected, "record {index}");
        }
    }
    let read = call(&replica, &mut session, Command::Query(Query::Sku(SKU)));
    assert!(matches!(read, Outcome::Sku(v) if v.reserved == 1 && v.available == 9), "{read:?}");
    drop(session);
    let report = replica.shutdown().unwrap();
    assert_eq!(*journal.records.lock().unwrap(), records, "the replica's journal is the primary's");
    assert_eq!(report.engine.running_hash(), primary_hash);
}

#[test]
fn a_replica_refuses_client_writes_and_bad_or_out_of_order_records() {
    // Goal: the intake checks every record before it takes a slot: damaged bytes, a gap, a
    // repeat, an older epoch and client writes are refused with their reasons, nothing is
    // journaled for them, and the stream resumes at the right record; a primary takes no
    // records at all.
    let (records, _, _) = primary_run();
    let clock = Arc::new(ManualClock::new(START));
    let journal = BytesJournal::default();
    let replica = start(config(Intake::Replica), &clock, journal.clone());
    let mut session = replica.session().unwrap();
    assert_eq!(session.try_submit(create_sku(), 0), Err(Refused::NotPrimary));
    let mut damaged = records[0].clone();
    damaged[40] ^= 0x10;
    assert!(matches!(session.try_submit_record(&damaged, 0), Err(Refused::InvalidRecord(_))));
    let gap = session.try_submit_record(&records[1], 0);
    assert_eq!(gap, Err(Refused::OutOfSequence { expected: Sequence(1), found: Sequence(2) }));
    session.try_submit_record(&records[0], 0).unwrap();
    let repeat = session.try_submit_record(&records[0], 1);
    assert_eq!(repeat, Err(Refused::OutOfSequence { expected: Sequence(2), found: Sequence(1) }));
    let mut framing = ringfence_core::record::RecordBuf::default();
    let (_, second, _) = ringfence_core::record::decode(&records[1]).unwrap();
    let newer = framing.encode(Epoch(3), &second).to_vec();
    session.try_submit_record(&newer, 1).unwrap();
    let (_, third, _) = ringfence_core::record::decode(&records[2]).unwrap();
    let stale = session.try_submit_record(framing.encode(Epoch(2), &third), 2);
    assert_eq!(stale, Err(Refused::StaleEpoch { found: Epoch(2), last: Epoch(3) }));
    replica.step();
    assert_eq!(journal.records.lock().unwrap().len(), 2);

    let primary = stepped_node(&clock, &Records::default());
    let mut session = primary.session().unwrap();
    assert_eq!(session.try_submit_record(&records[0], 0), Err(Refused::NotReplica));
}

#[test]
fn a_promoted_replica_sequences_its_own_commands_in_the_new_epoch() {
    // Goal: promotion in place: the records already taken keep their primary's epoch and
    // sequences, the first client command follows them in the new epoch, records are refused
    // from then on, and the node publishes its own ticks.
    let (records, _, _) = primary_run();
    let clock = Arc::new(ManualClock::new(Timestamp(START.0 + 50_000)));
    let journal = BytesJournal::default();
    let replica = start(config(Intake::Replica), &clock, journal.clone());
    let mut session = replica.session().unwrap();
    for (index, bytes) in records.iter().take(2).enumerate() {
        session.try_submit_record(bytes, index as u64).unwrap();
    }
    assert!(matches!(replica.promote(Epoch(1)), Err(NodeError::EpochNotRaised { .. })));
    replica.promote(Epoch(2)).expect("a replica is promoted");
    assert_eq!((replica.intake(), replica.epoch()), (Intake::Sequencer, Epoch(2)));
    assert!(matches!(replica.promote(Epoch(3)), Err(NodeError::NotReplica)));
    assert_eq!(session.try_submit_record(&records[2], 2), Err(Refused::NotReplica));
    let other = Reserve { user: UserId(11), sku: SKU, qty: 1, coupon: None };
    let other = Command::Client { key: RequestKey::from_u128(7), action: Action::Reserve(other) };
    session.try_submit(other, 9).expect("a promoted node takes writes");
    replica.step();
    let answers: Vec<_> = std::iter::from_fn(|| session.poll()).collect();
    assert_eq!(answers.len(), 3, "two records and the write");
    assert!(matches!(answers[2].result, Ok(Outcome::Reserved { .. })), "{:?}", answers[2]);
    assert_eq!(answers[2].sequence, Sequence(3));
    let journaled = journal.records.lock().unwrap().clone();
    let headers: Vec<_> =
        journaled.iter().map(|b| ringfence_core::record::read_header(b)).collect();
    let placed: Vec<_> = headers.iter().map(|h| (h.sequence.0, h.epoch.0)).collect();
    assert_eq!(placed, [(1, 1), (2, 1), (3, 2)]);
    assert_eq!(&journaled[..2], &records[..2], "the primary's records are kept byte for byte");
    // The reservation's payment deadline passes: the promoted node ticks on its own.
    clock.advance_ms(PAYMENT_TIMEOUT_MS + 1);
    assert!(replica.step().ticked, "a promoted node publishes its own ticks");
}

/// The stamp of the journaled record `bytes`.
fn stamp_of(bytes: &[u8]) -> Timestamp {
    ringfence_core::record::decode(bytes).expect("a journaled record decodes").1.timestamp
}

#[test]
fn a_promoted_replica_whose_clock_runs_ahead_stamps_on_its_primarys_time_line() {
    // Goal: a standby whose clock is two hours ahead of its primary's (past the request-key
    // window), promoted, goes on from the last record by the time since it arrived: a retry
    // of the primary's reservation gets the original answer, not a second order.
    let (records, outcomes, _) = primary_run();
    let hours = |n: u64| n * 3_600_000;
    let clock = Arc::new(ManualClock::new(Timestamp(START.0 + hours(2))));
    let journal = BytesJournal::default();
    let replica = start(config(Intake::Replica), &clock, journal.clone());
    let mut session = replica.session().unwrap();
    for (index, bytes) in records.iter().enumerate() {
        session.try_submit_record(bytes, index as u64).unwrap();
    }
    replica.step();
    let last_stamp = stamp_of(records.last().unwrap());
    let lead = i64::try_from(START.0 + hours(2) - last_stamp.0).unwrap();
    assert_eq!(replica.metrics().primary_clock_offset_ms, Some(lead));
    assert_eq!(replica.metrics().time_shift_ms, 0, "a standby stamps nothing");
    clock.advance_ms(200);
    replica.promote(Epoch(2)).unwrap();
    assert_eq!(replica.metrics().time_shift_ms, -lead);
    assert_eq!(replica.promoter().time_shift_ms(), -lead);
    assert_eq!(replica.metrics().primary_clock_offset_ms, None, "a primary follows nobody");
    while session.poll().is_some() {}
    session.try_submit(reserve(), 9).unwrap();
    replica.step();
    let retried = session.poll().expect("answered within the step").result.unwrap();
    assert_eq!(retried, outcomes[1], "the retry is answered as the primary answered it");
    let journaled = journal.records.lock().unwrap().clone();
    // The retry, and the tick of the second reservation's deadline, which has passed since.
    let stamps: Vec<_> = journaled[records.len()..].iter().map(|b| stamp_of(b)).collect();
    assert_eq!(stamps, [Timestamp(last_stamp.0 + 200); 2]);
}

#[test]
fn a_node_whose_clock_reads_before_its_journals_last_command_stamps_from_that_command() {
    // Goal: a node started on a clock an hour behind its journal stamps from the journal's
    // last command on, so a payment deadline passes after its timeout, not an hour later.
    let (records, _, _) = primary_run();
    let replica = start(config(Intake::Replica), &Arc::new(ManualClock::new(START)), {
        MemoryJournal::new()
    });
    let mut session = replica.session().unwrap();
    for (index, bytes) in records.iter().enumerate() {
        session.try_submit_record(bytes, index as u64).unwrap();
    }
    replica.step();
    drop(session);
    let engine = replica.shutdown().unwrap().engine;
    let last_stamp = stamp_of(records.last().unwrap());
    assert_eq!(engine.now(), last_stamp);

    let clock = Arc::new(ManualClock::new(Timestamp(last_stamp.0 - 3_600_000)));
    let records = Records::default();
    let parts = NodeParts {
        next_sequence: engine.last_sequence().next(),
        engine,
        journal: MemoryJournal::shared(Arc::clone(&records)),
        replicator: NoReplicator::default(),
        hook: NoSnapshots,
        clock: Arc::clone(&clock) as Arc<dyn Clock>,
    };
    let node = Node::start_parts(config(Intake::Sequencer), parts).unwrap();
    assert_eq!(node.metrics().time_shift_ms, 3_600_000);
    let mut session = node.session().unwrap();
    let later = Reserve { user: UserId(12), sku: SKU, qty: 1, coupon: None };
    let later = Command::Client { key: RequestKey::from_u128(8), action: Action::Reserve(later) };
    assert!(matches!(call(&node, &mut session, later), Outcome::Reserved { .. }));
    assert_eq!(records.lock().unwrap().last().unwrap().1.timestamp, last_stamp);
    clock.advance_ms(PAYMENT_TIMEOUT_MS);
    assert!(node.step().ticked, "the deadline passes on the journal's time line");
}

/// A test's replicator: a standby that never acknowledges (`local` false), or a primary
/// acknowledging on its own journal, every record safe once sent (`local` true). The test
/// sets its hold.
struct TestReplicator {
    safe: Arc<Watermark>,
    hold: Arc<WriteHold>,
    local: bool,
}

impl Replicator for TestReplicator {
    const NEEDS_BYTES: bool = false;
    fn send(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        if self.local {
            self.safe.advance(record.sequenced.sequence);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }
    fn safe(&self) -> Arc<Watermark> {
        Arc::clone(&self.safe)
    }
    fn hold(&self) -> Option<Arc<WriteHold>> {
        Some(Arc::clone(&self.hold))
    }
}

/// A stepped primary with `replicator`.
fn start_with_replicator(clock: &Arc<ManualClock>, replicator: TestReplicator) -> Node {
    start_with_journal(clock, replicator, MemoryJournal::new())
}

/// A stepped primary with `replicator` and `journal`.
fn start_with_journal<J: Journal>(
    clock: &Arc<ManualClock>,
    replicator: TestReplicator,
    journal: J,
) -> Node {
    let config = config(Intake::Sequencer);
    let parts = NodeParts {
        engine: Engine::new(config.engine.clone()),
        next_sequence: Sequence(1),
        journal,
        replicator,
        hook: NoSnapshots,
        clock: Arc::clone(clock) as Arc<dyn Clock>,
    };
    Node::start_parts(config, parts).unwrap()
}

/// A journal that answers before it syncs (as `none` does): `flush` reports everything
/// appended, `flush_synced` syncs only as far as the test lets it.
#[derive(Clone, Default)]
struct AnswersFirst {
    appended: Arc<Mutex<Sequence>>,
    /// How far a sync may reach, and how many synced flushes were asked for.
    syncable: Arc<Mutex<(Sequence, u32)>>,
}

impl Journal for AnswersFirst {
    const NEEDS_BYTES: bool = false;
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        *self.appended.lock().unwrap() = record.sequenced.sequence;
        Ok(())
    }
    fn flush(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        Ok(*self.appended.lock().unwrap())
    }
    fn flush_synced(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        let mut syncable = self.syncable.lock().unwrap();
        syncable.1 += 1;
        Ok(syncable.0.min(*self.appended.lock().unwrap()))
    }
}

/// A journal that answers before it syncs, and whose every sync fails, as a failing disk's
/// do: it flushes what it appends, and syncs nothing.
#[derive(Default)]
struct SyncFails {
    appended: Sequence,
}

impl Journal for SyncFails {
    const NEEDS_BYTES: bool = false;
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        self.appended = record.sequenced.sequence;
        Ok(())
    }
    fn flush(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        Ok(self.appended)
    }
    fn flush_synced(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        let source = std::io::Error::other("the disk refused the sync");
        Err(StageError::Io { context: "syncing the journal".into(), source })
    }
}

#[test]
fn a_replica_whose_journal_failed_is_refused_its_sync_at_once() {
    // Goal: a journal fenced after a failed sync syncs nothing more, so `sync_journal` (a
    // standby about to take office) refuses at once, naming the failure, rather than waiting
    // out its timeout for records that will never be synced. The stepped replica has flushed
    // its records before the sync is asked for: the fence falls after them, as a simulated
    // seed found it (that seed spent ten seconds of real time in each wait).
    let (records, _, _) = primary_run();
    for topology in [Topology::Stepped, Topology::Compact] {
        let clock = Arc::new(ManualClock::new(Timestamp(START.0 + 50_000)));
        let config = NodeConfig { topology: Some(topology), ..config(Intake::Replica) };
        let replica = start(config, &clock, SyncFails::default());
        let mut session = replica.session().unwrap();
        for (index, bytes) in records.iter().take(3).enumerate() {
            session.try_submit_record(bytes, index as u64).unwrap();
        }
        if topology == Topology::Stepped {
            replica.step();
        }
        // Long enough that a wait for the timeout would be its own failure.
        let refused = replica.promoter().sync_journal(std::time::Duration::from_secs(600));
        let Err(NodeError::JournalFailed { fence, cause }) = refused else {
            panic!("{topology:?}: {refused:?}");
        };
        assert!(cause.contains("the disk refused the sync"), "{topology:?}: {cause}");
        if topology == Topology::Stepped {
            assert_eq!(fence, Sequence(4), "after the records flushed");
        }
        drop(session);
        let _ = replica.shutdown();
    }
}

#[test]
fn answers_made_safe_while_answering_alone_wait_for_the_journals_sync() {
    // Goal: on a journal that answers before it syncs, a write the standby never acknowledged
    // and the gate then made safe alone (the jump when a primary goes on alone) is answered
    // only once a synced flush covers it; writes made safe while alone too; and once the
    // primary answers with its standby again, what it made safe alone still waits. A primary
    // that never answered alone never asks for a sync.
    let clock = Arc::new(ManualClock::new(START));
    let (hold, safe) = (WriteHold::new(), Watermark::new(Sequence(0)));
    let replicator =
        TestReplicator { safe: Arc::clone(&safe), hold: Arc::clone(&hold), local: false };
    let journal = AnswersFirst::default();
    let syncable = Arc::clone(&journal.syncable);
    let node = start_with_journal(&clock, replicator, journal);
    let mut session = node.session().unwrap();
    session.try_submit(create_sku(), 1).unwrap();
    node.step();
    assert!(session.poll().is_none(), "waits for the standby");
    assert_eq!(syncable.lock().unwrap().1, 0, "no sync asked while the standby answers");
    // The standby is lost: the primary answers alone from here, safe jumps to what it holds.
    hold.set_answers_alone(true);
    hold.note_alone_through(Sequence(1));
    safe.advance(Sequence(1));
    node.step();
    assert!(session.poll().is_none(), "made safe alone, not yet synced");
    assert!(syncable.lock().unwrap().1 >= 1, "the journaling stage was asked to sync");
    syncable.lock().unwrap().0 = Sequence(1);
    node.step();
    assert!(matches!(session.poll().unwrap().result, Ok(Outcome::SkuCreated(_))));
    // A write while alone: answered after its sync, not before.
    session.try_submit(reserve(), 2).unwrap();
    hold.note_alone_through(Sequence(2));
    safe.advance(Sequence(2));
    node.step();
    assert!(session.poll().is_none(), "answered alone before its sync");
    // The standby is back in sync: what was made safe alone still waits for the sync.
    hold.set_answers_alone(false);
    node.step();
    assert!(session.poll().is_none(), "released unsynced once no longer alone");
    syncable.lock().unwrap().0 = Sequence(2);
    node.step();
    assert!(matches!(session.poll().unwrap().result, Ok(Outcome::Reserved { .. })));
    // With its standby: answered on its acknowledgement, no sync asked.
    let asked = syncable.lock().unwrap().1;
    session.try_submit(reserve(), 3).unwrap();
    node.step();
    safe.advance(Sequence(3));
    node.step();
    assert!(session.poll().unwrap().result.is_ok(), "answered on the acknowledgement");
    assert_eq!(syncable.lock().unwrap().1, asked, "a sync asked with the standby answering");
}

#[test]
fn a_write_hold_answers_unreplicated_writes_and_keeps_serving_reads() {
    // Goal: with the standby silent, a write and the read behind it wait; once the
    // replicator holds writes, the write is answered `Unreplicated` (applied, never
    // acknowledged), the read is answered, new writes are refused with the reason, and
    // releasing the hold makes writes wait for the standby again.
    let clock = Arc::new(ManualClock::new(START));
    let hold = WriteHold::new();
    let (safe, held) = (Watermark::new(Sequence(0)), Arc::clone(&hold));
    let node = start_with_replicator(&clock, TestReplicator { safe, hold: held, local: false });
    let mut session = node.session().unwrap();
    session.try_submit(create_sku(), 1).unwrap();
    session.try_submit(Command::Query(Query::Sku(SKU)), 2).unwrap();
    node.step();
    assert!(session.poll().is_none(), "nothing leaves before the standby acknowledges");
    hold.hold(HoldReason::StandbyLost);
    node.step();
    let write = session.poll().expect("the held write is answered");
    assert_eq!(write.result, Err(Unanswered::Unreplicated { sequence: Sequence(1) }));
    let read = session.poll().expect("the read behind it is answered");
    assert!(matches!(read.result, Ok(Outcome::Sku(_))), "{read:?}");
    assert_eq!(session.try_submit(reserve(), 3), Err(Refused::ReplicationUnavailable));
    assert!(session.try_submit(Command::Query(Query::Sku(SKU)), 4).is_ok(), "reads still taken");
    node.step();
    assert!(session.poll().unwrap().result.is_ok());
    hold.hold(HoldReason::Deposed);
    assert_eq!(session.try_submit(reserve(), 5), Err(Refused::NotPrimary));
    hold.release();
    session.try_submit(reserve(), 6).expect("writes are taken once the hold is off");
    node.step();
    assert!(session.poll().is_none(), "and wait for the standby again");
}

/// A stepped primary acknowledging on its own journal, its hold, and a session through which
/// the SKU was created.
fn local_primary_with_a_sku() -> (Arc<ManualClock>, Arc<WriteHold>, Node, Session) {
    let clock = Arc::new(ManualClock::new(START));
    let hold = WriteHold::new();
    let (safe, held) = (Watermark::new(Sequence(0)), Arc::clone(&hold));
    let node = start_with_replicator(&clock, TestReplicator { safe, hold: held, local: true });
    let mut session = node.session().unwrap();
    assert!(matches!(call(&node, &mut session, create_sku()), Outcome::SkuCreated(_)));
    (clock, hold, node, session)
}

#[test]
fn past_its_lease_deadline_a_primary_acknowledges_no_write() {
    // Goal: a write the replicator marked safe is still not acknowledged once the lease
    // deadline passed (as for a primary paused past its lease that resumes before its control
    // thread runs): it is answered `Unreplicated`, the read behind it is answered, new writes
    // are refused, and a renewed deadline lets writes be acknowledged again.
    let (clock, hold, node, mut session) = local_primary_with_a_sku();
    hold.set_lease_deadline(clock.now_ns() + 3_600 * 1_000_000_000);
    session.try_submit(reserve(), 1).unwrap();
    // The deadline passes on the node's clock with the write in the ring; reads are still
    // taken.
    clock.advance_ms(3_600_000);
    session.try_submit(Command::Query(Query::Sku(SKU)), 2).unwrap();
    node.step();
    let write = session.poll().expect("the write is answered");
    assert_eq!(write.result, Err(Unanswered::Unreplicated { sequence: Sequence(2) }));
    let read = session.poll().expect("the read behind it is answered");
    assert!(matches!(read.result, Ok(Outcome::Sku(v)) if v.reserved == 2), "{read:?}");
    assert_eq!(session.try_submit(reserve(), 3), Err(Refused::ReplicationUnavailable));
    hold.set_lease_deadline(u64::MAX);
    let again = call(&node, &mut session, reserve());
    assert!(matches!(again, Outcome::Reserved { .. }), "a retry learns the outcome: {again:?}");
}

#[test]
fn a_primary_whose_writes_are_held_journals_no_tick_of_its_own() {
    // Goal: a payment deadline passing while writes are held (a restarted primary waiting for
    // its standby) journals nothing: the sequences after the primary's journal may be held by
    // the standby, from before a crash. Once the hold lifts, the first step ticks and the
    // order expires.
    let (clock, hold, node, mut session) = local_primary_with_a_sku();
    let Outcome::Reserved { order, .. } = call(&node, &mut session, reserve()) else {
        panic!("the reservation was refused");
    };
    hold.hold(HoldReason::StandbyLost);
    clock.advance_ms(PAYMENT_TIMEOUT_MS * 5);
    for _ in 0..3 {
        let report = node.step();
        assert_eq!((report.ticked, report.processed), (false, 0), "a held primary ticked");
    }
    let view = call(&node, &mut session, Command::Query(Query::Order(order)));
    assert!(matches!(view, Outcome::Order(v) if v.state == OrderState::Reserved), "{view:?}");
    hold.release();
    let report = node.step();
    assert!(report.ticked, "no tick once the hold lifted");
    let view = call(&node, &mut session, Command::Query(Query::Order(order)));
    assert!(matches!(view, Outcome::Order(v) if v.state == OrderState::Expired), "{view:?}");
    drop(session);
    assert_eq!(node.shutdown().expect("a clean stop").last_sequence, Sequence(3));
}

#[test]
fn a_replica_about_to_take_office_syncs_every_record_it_was_given() {
    // Goal: `Promoter::sync_journal` makes every record submitted to a replica synced, on a
    // journal that otherwise answers before it syncs, stepped or threaded; one whose sync
    // cannot complete is reported, naming how far it got, rather than waited for forever: on
    // a stepped node at once, without waiting on the clock.
    let (records, _, _) = primary_run();
    for topology in [Topology::Stepped, Topology::Compact] {
        let clock = Arc::new(ManualClock::new(Timestamp(START.0 + 50_000)));
        let journal = AnswersFirst::default();
        let (syncable, appended) = (Arc::clone(&journal.syncable), Arc::clone(&journal.appended));
        let config = NodeConfig { topology: Some(topology), ..config(Intake::Replica) };
        let replica = start(config, &clock, journal);
        let mut session = replica.session().unwrap();
        for (index, bytes) in records.iter().take(3).enumerate() {
            session.try_submit_record(bytes, index as u64).unwrap();
        }
        let promoter = replica.promoter();
        // Stepped, the refusal comes as soon as the journal is idle (one that waited for the
        // timeout would say it timed out); threaded, once the timeout is up.
        let timeout = match topology {
            Topology::Stepped => std::time::Duration::from_secs(2),
            _ => std::time::Duration::from_millis(50),
        };
        let stuck = promoter.sync_journal(timeout);
        let (through, synced) = match stuck {
            Err(NodeError::SyncStalled { through, synced }) if topology == Topology::Stepped => {
                (through, synced)
            }
            Err(NodeError::SyncTimedOut { through, synced, waited_ms: 50 })
                if topology == Topology::Compact =>
            {
                (through, synced)
            }
            other => panic!("{topology:?}: {other:?}"),
        };
        assert_eq!((through, synced), (Sequence(3), Sequence(0)), "{topology:?}");
        syncable.lock().unwrap().0 = Sequence(u64::MAX);
        let synced = promoter.sync_journal(std::time::Duration::from_secs(10));
        assert_eq!(synced.unwrap(), Sequence(3), "{topology:?}");
        assert_eq!(*appended.lock().unwrap(), Sequence(3), "{topology:?}: every record journaled");
        assert!(syncable.lock().unwrap().1 >= 2, "{topology:?}: synced flushes asked for");
        drop(session);
        replica.shutdown().expect("a clean stop");
    }
}
