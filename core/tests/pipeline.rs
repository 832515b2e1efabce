//! The node end to end: many producers against the ring in both topologies, checked against a
//! replay of the journal; the gating rule with journals that hold answers back; back-pressure;
//! shutdown under load; failing stages; the timer; recovery; wake hooks.
//!
//! Every test uses the spin-then-park wait strategy and bounds each wait with a deadline, so a
//! broken node fails a test instead of hanging it. Nothing here asserts on timing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringfence_core::pipeline::{
    CallError, Clock, Completion, EgressDriver, Framed, Journal, MemoryJournal, NoReplicator,
    NoSnapshots, Node, NodeConfig, NodeError, PUBLISH_TO_EGRESS_SAMPLE_EVERY, Refused, Replicator,
    Session, SnapshotHook, StageError, Topology, Unanswered, Watermark,
};
use ringfence_core::{
    Action, Command, CreateSku, Engine, Epoch, OrderState, Outcome, Query, RequestKey, Reserve,
    Sequence, Sequenced, SkuId, UserId,
};

const WAIT: Duration = Duration::from_secs(20);
const SKU: SkuId = SkuId(7);
const STOCK: u32 = 100;

type JournalCopy = Arc<Mutex<Vec<(Epoch, Sequenced)>>>;

fn config(topology: Topology) -> NodeConfig {
    NodeConfig::for_tests(topology)
}

fn both_topologies() -> [NodeConfig; 3] {
    let polled = NodeConfig { egress: EgressDriver::Polled, ..config(Topology::Compact) };
    [config(Topology::Parallel), config(Topology::Compact), polled]
}

fn key(value: u128) -> RequestKey {
    RequestKey::from_u128(value)
}

fn create_sku(stock: u32, payment_timeout_ms: u64) -> Command {
    let spec = CreateSku {
        sku: SKU,
        stock,
        price_cents: 500,
        per_user_limit: 2,
        payment_timeout_ms,
        sale_start: None,
        sale_end: None,
    };
    Command::Client { key: key(u128::MAX), action: Action::CreateSku(spec) }
}

fn reserve(request: u128, user: u64, qty: u32) -> Command {
    let reserve = Reserve { user: UserId(user), sku: SKU, qty, coupon: None };
    Command::Client { key: key(request), action: Action::Reserve(reserve) }
}

/// Reads completions until `session` has none pending, failing the test after `WAIT`.
fn drain(session: &mut Session, into: &mut Vec<Completion>) {
    let deadline = Instant::now() + WAIT;
    while session.pending() > 0 {
        assert!(Instant::now() < deadline, "completions missing after {WAIT:?}");
        if let Some(completion) = session.wait(Duration::from_millis(10)) {
            into.push(completion);
        }
    }
}

/// Submits, retrying while the ring is busy (reading completions meanwhile).
fn submit(session: &mut Session, command: Command, token: u64, into: &mut Vec<Completion>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match session.try_submit(command, token) {
            Ok(_) => return,
            Err(Refused::Busy | Refused::SessionFull) => {
                assert!(Instant::now() < deadline, "ring stayed busy for {WAIT:?}");
                if let Some(completion) = session.poll() {
                    into.push(completion);
                }
                thread::yield_now();
            }
            Err(other) => panic!("submission refused: {other}"),
        }
    }
}

/// One producer's share of the flash sale: reservations (some retried with the same key),
/// queries and a snapshot request.
fn producer_commands(producer: u64, count: u64) -> Vec<Command> {
    (0..count)
        .map(|i| {
            let request = u128::from(producer * 1_000_000 + i);
            match i % 10 {
                7 => Command::Query(Query::Sku(SKU)),
                8 => reserve(request - 1, producer * 100 + (i - 1) % 40, 1 + ((i - 1) % 2) as u32),
                9 if i % 100 == 99 => Command::Snapshot,
                _ => reserve(request, producer * 100 + i % 40, 1 + (i % 2) as u32),
            }
        })
        .collect()
}

/// Replays the journal through a fresh engine: the outcome of every sequence.
fn replay(config: &NodeConfig, journal: &[(Epoch, Sequenced)]) -> (Engine, BTreeMap<u64, Outcome>) {
    replay_with_reads(config, journal, &[]).0
}

/// Replays the journal and answers each read (a query or snapshot request, and the sequence it
/// was placed at) from the replayed state at that sequence.
#[allow(clippy::type_complexity)]
fn replay_with_reads(
    config: &NodeConfig,
    journal: &[(Epoch, Sequenced)],
    reads: &[(Sequence, Command)],
) -> ((Engine, BTreeMap<u64, Outcome>), Vec<Outcome>) {
    let mut engine = Engine::new(config.engine.clone());
    let mut outcomes = BTreeMap::new();
    let mut answers = vec![None; reads.len()];
    let answer = |engine: &Engine, at: Sequence, answers: &mut Vec<Option<Outcome>>| {
        for (index, (read_at, command)) in reads.iter().enumerate() {
            if *read_at == at {
                answers[index] = Some(read(engine, command));
            }
        }
    };
    answer(&engine, Sequence(0), &mut answers);
    for (index, (epoch, sequenced)) in journal.iter().enumerate() {
        assert_eq!(*epoch, config.epoch);
        assert_eq!(sequenced.sequence, Sequence(index as u64 + 1), "journal is contiguous from 1");
        assert!(sequenced.command.is_mutating(), "reads are not journaled");
        outcomes.insert(sequenced.sequence.0, engine.apply(sequenced));
        answer(&engine, sequenced.sequence, &mut answers);
    }
    let answers = answers.into_iter().map(|a| a.expect("every read placed in range")).collect();
    ((engine, outcomes), answers)
}

/// What a read answers from `engine`'s state.
fn read(engine: &Engine, command: &Command) -> Outcome {
    match command {
        Command::Query(query) => engine.query(query),
        Command::Snapshot => Outcome::SnapshotRequested {
            last_sequence: engine.last_sequence(),
            running_hash: engine.running_hash(),
        },
        other => panic!("{other:?} is not a read"),
    }
}

fn run_flash_sale(config: NodeConfig) {
    let copy = JournalCopy::default();
    let journal = MemoryJournal::shared(Arc::clone(&copy));
    let node = Node::start(config.clone(), journal, NoReplicator::default()).unwrap();
    let mut admin = node.session().unwrap();
    assert!(matches!(admin.call(create_sku(STOCK, 60_000), WAIT), Ok(Outcome::SkuCreated(_))));

    let producers = 4;
    let per_producer = 300;
    let workers: Vec<_> = (0..producers)
        .map(|producer| {
            let mut session = node.session().unwrap();
            thread::spawn(move || {
                let mut completions = Vec::new();
                let commands = producer_commands(producer, per_producer);
                for (token, command) in commands.iter().enumerate() {
                    submit(&mut session, *command, token as u64, &mut completions);
                }
                drain(&mut session, &mut completions);
                (commands, completions)
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|worker| worker.join().unwrap()).collect();
    let report = node.shutdown().unwrap();

    let journal = copy.lock().unwrap().clone();
    let reads: Vec<(Sequence, Command)> = results
        .iter()
        .flat_map(|(commands, completions)| {
            completions
                .iter()
                .map(|completion| (completion.sequence, commands[completion.token as usize]))
                .filter(|(_, command)| !command.is_mutating())
        })
        .collect();
    assert!(reads.len() >= 100, "the workload reads");
    let ((replayed, outcomes), answers) = replay_with_reads(&config, &journal, &reads);
    let mut answers = answers.into_iter();
    let by_sequence: HashMap<u64, Command> =
        journal.iter().map(|(_, s)| (s.sequence.0, s.command)).collect();
    let mut orders = HashMap::new();
    for (commands, completions) in &results {
        assert_eq!(completions.len(), commands.len(), "one completion per command");
        for (position, completion) in completions.iter().enumerate() {
            assert_eq!(completion.token, position as u64, "completions arrive in order");
            let outcome = completion.result.as_ref().expect("no stage failed");
            if !commands[position].is_mutating() {
                // A read sees exactly the state after the last command journaled before it.
                assert_eq!(
                    Some(outcome),
                    answers.next().as_ref(),
                    "read at {}",
                    completion.sequence
                );
                continue;
            }
            assert_eq!(by_sequence[&completion.sequence.0], commands[position]);
            assert_eq!(*outcome, outcomes[&completion.sequence.0], "seq {}", completion.sequence);
            if let Outcome::Reserved { order, .. } = outcome {
                // A retried request answers with the original order: count each order once.
                orders.insert(*order, reserved_qty(&commands[position]));
            }
        }
    }
    let reserved_units: u32 = orders.values().sum();
    assert!(reserved_units <= STOCK, "oversold: {reserved_units} units reserved of {STOCK}");
    assert_eq!(report.engine.running_hash(), replayed.running_hash());
    assert_eq!(report.last_sequence, Sequence(journal.len() as u64));
}

fn reserved_qty(command: &Command) -> u32 {
    match command {
        Command::Client { action: Action::Reserve(reserve), .. } => reserve.qty,
        _ => 0,
    }
}

#[test]
fn many_producers_get_exactly_the_outcomes_of_replaying_the_journal() {
    // Goal: in every topology, answers delivered to concurrent producers are exactly what a
    // fresh BLP computes from the journal, in the journal's order, with nothing oversold.
    for config in both_topologies() {
        run_flash_sale(config);
    }
}

/// A journal that keeps answers back: `flush` reports durable only up to what the test allows.
struct HoldingJournal {
    last: Sequence,
    allowed: Arc<AtomicU64>,
    durable: Arc<AtomicU64>,
}

impl Journal for HoldingJournal {
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        self.last = record.sequenced.sequence;
        Ok(())
    }

    fn flush(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        let durable = self.last.0.min(self.allowed.load(Ordering::Acquire));
        self.durable.fetch_max(durable, Ordering::AcqRel);
        Ok(Sequence(self.durable.load(Ordering::Acquire)))
    }
}

/// Collects what arrives within `window` (a chance for a broken gate to leak answers).
fn collect_for(session: &mut Session, window: Duration, into: &mut Vec<Completion>) {
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if let Some(completion) = session.wait(Duration::from_millis(5)) {
            into.push(completion);
        }
    }
}

#[test]
fn no_outcome_is_delivered_before_the_journal_made_it_durable() {
    // Goal: egress releases a sequence only once the journal reported it durable, even though
    // the BLP applied it long before; a read waits for everything it saw; answers then follow
    // the journal as it catches up.
    for config in both_topologies() {
        let allowed = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        let journal = HoldingJournal {
            last: Sequence(0),
            allowed: Arc::clone(&allowed),
            durable: Arc::clone(&durable),
        };
        let node = Node::start(config, journal, NoReplicator::default()).unwrap();
        let mut session = node.session().unwrap();
        for token in 0..20 {
            session.try_submit(Command::Tick, token).unwrap();
        }
        // A read placed after all twenty ticks: it saw them, so it waits for all of them.
        session.try_submit(Command::Query(Query::Sku(SKU)), 20).unwrap();
        // The BLP applies everything while the journal holds durability back; how soon
        // depends on the scheduler, so wait for it rather than for a fixed time.
        let deadline = Instant::now() + WAIT;
        while node.sequences().applied_positions < 21 {
            assert!(Instant::now() < deadline, "the BLP waited for the disk");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(node.sequences().applied, Sequence(20), "the read took no sequence");
        let mut received = Vec::new();
        collect_for(&mut session, Duration::from_millis(100), &mut received);
        assert!(received.is_empty(), "answered before durable: {received:?}");

        allowed.store(10, Ordering::Release);
        let deadline = Instant::now() + WAIT;
        while received.len() < 10 {
            assert!(Instant::now() < deadline, "released answers did not arrive");
            received.extend(session.wait(Duration::from_millis(5)));
        }
        collect_for(&mut session, Duration::from_millis(50), &mut received);
        assert_eq!(received.len(), 10, "only the durable prefix is answered");
        for completion in &received {
            assert!(completion.sequence.0 <= durable.load(Ordering::Acquire));
            assert!(completion.sequence <= Sequence(10));
        }

        allowed.store(19, Ordering::Release);
        let deadline = Instant::now() + WAIT;
        while received.len() < 19 {
            assert!(Instant::now() < deadline, "released answers did not arrive");
            received.extend(session.wait(Duration::from_millis(5)));
        }
        collect_for(&mut session, Duration::from_millis(50), &mut received);
        assert_eq!(received.len(), 19, "the read waits for the last tick it saw");

        allowed.store(u64::MAX, Ordering::Release);
        drain(&mut session, &mut received);
        let tokens: Vec<u64> = received.iter().map(|c| c.token).collect();
        assert_eq!(tokens, (0..21).collect::<Vec<_>>());
        let read = received.last().unwrap();
        assert_eq!(read.sequence, Sequence(20), "the read is placed after the twentieth tick");
        drop(session);
        node.shutdown().unwrap();
    }
}

/// A gate a stage blocks on until the test opens it.
#[derive(Clone, Default)]
struct Gate(Arc<AtomicBool>);

impl Gate {
    fn wait(&self) {
        while !self.0.load(Ordering::Acquire) {
            thread::sleep(Duration::from_micros(200));
        }
    }

    fn open(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A journal whose flush blocks until its gate opens.
struct GatedJournal {
    inner: MemoryJournal,
    gate: Gate,
}

impl Journal for GatedJournal {
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        self.inner.append(record)
    }

    fn flush(&mut self, clock: &dyn Clock) -> Result<Sequence, StageError> {
        self.gate.wait();
        self.inner.flush(clock)
    }
}

#[test]
fn a_full_ring_answers_busy_at_once_and_recovers() {
    // Goal: with the journal stuck, exactly a ring's worth of commands is accepted, the rest
    // are refused `Busy` immediately and counted; once the journal moves, all accepted complete.
    for topology in [Topology::Parallel, Topology::Compact] {
        let config =
            NodeConfig { ring_size: 64, tick_period_ms: 0, ..NodeConfig::for_tests(topology) };
        let gate = Gate::default();
        let journal = GatedJournal { inner: MemoryJournal::new(), gate: gate.clone() };
        let node = Node::start(config, journal, NoReplicator::default()).unwrap();
        let mut session = node.session().unwrap();
        let (mut accepted, mut busy) = (0, 0);
        for token in 0..200 {
            match session.try_submit(Command::Tick, token) {
                Ok(_) => accepted += 1,
                Err(Refused::Busy) => busy += 1,
                Err(other) => panic!("unexpected refusal {other}"),
            }
        }
        assert_eq!(accepted, 64, "{topology:?}: the ring holds 64 commands in flight");
        assert_eq!(busy, 136);
        let metrics = node.metrics();
        assert_eq!(metrics.busy_rejections, 136);
        assert_eq!(metrics.ring_fill, 64);

        gate.open();
        let mut received = Vec::new();
        drain(&mut session, &mut received);
        assert_eq!(received.len(), 64);
        assert!(received.iter().all(|c| c.result.is_ok()));
        // Egress frees slots just after handing out their answers, so retry a moment of Busy.
        let deadline = Instant::now() + WAIT;
        let outcome = loop {
            match session.call(Command::Query(Query::Sku(SKU)), WAIT) {
                Err(CallError::Refused(Refused::Busy)) if Instant::now() < deadline => {
                    thread::yield_now();
                }
                other => break other,
            }
        };
        assert!(matches!(outcome, Ok(Outcome::Rejected(_))), "{outcome:?}");
        drop(session);
        node.shutdown().unwrap();
    }
}

#[test]
fn shutdown_under_load_loses_nothing_acknowledged() {
    // Goal: shutting down while producers hammer the node answers every command accepted
    // before intake closed, each answer matches the journal's replay, and only submissions
    // racing the close itself go unanswered (refused, never half-done).
    for config in both_topologies() {
        let copy = JournalCopy::default();
        let journal = MemoryJournal::shared(Arc::clone(&copy));
        let node = Node::start(config.clone(), journal, NoReplicator::default()).unwrap();
        let mut admin = node.session().unwrap();
        admin.call(create_sku(1_000_000, 60_000), WAIT).unwrap();
        drop(admin);
        let answered = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..3u64)
            .map(|producer| {
                let mut session = node.session().unwrap();
                let answered = Arc::clone(&answered);
                thread::spawn(move || hammer(&mut session, producer, &answered))
            })
            .collect();
        let deadline = Instant::now() + WAIT;
        while answered.load(Ordering::Relaxed) < 500 {
            assert!(Instant::now() < deadline, "producers made no progress");
            thread::sleep(Duration::from_millis(1));
        }
        let report = node.shutdown().unwrap();
        let journal = copy.lock().unwrap().clone();
        let (_, outcomes) = replay(&config, &journal);
        for worker in workers {
            let (accepted, completions) = worker.join().unwrap();
            assert!(accepted - completions.len() <= 1, "at most one submission races the close");
            for completion in completions {
                let outcome = completion.result.expect("a clean shutdown fails nothing");
                assert!(completion.sequence <= report.last_sequence);
                assert_eq!(outcome, outcomes[&completion.sequence.0]);
            }
        }
    }
}

/// Submits reservations until the node refuses for shutdown, then reads every answer there is.
fn hammer(
    session: &mut Session,
    producer: u64,
    answered: &AtomicUsize,
) -> (usize, Vec<Completion>) {
    let mut completions = Vec::new();
    let mut accepted = 0;
    for i in 0.. {
        let command = reserve(u128::from(producer << 32 | i), producer * 1_000 + i % 500, 1);
        match session.try_submit(command, i) {
            Ok(_) => accepted += 1,
            Err(Refused::Busy | Refused::SessionFull) => thread::yield_now(),
            Err(Refused::ShuttingDown) => break,
            Err(other) => panic!("unexpected refusal {other}"),
        }
        while let Some(completion) = session.poll() {
            completions.push(completion);
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
    let deadline = Instant::now() + WAIT;
    while session.pending() > 0 && !session.is_stopped() {
        assert!(Instant::now() < deadline, "answers missing after shutdown");
        completions.extend(session.wait(Duration::from_millis(10)));
    }
    (accepted, completions)
}

/// A journal that panics when asked to append sequence `panic_at`.
struct PanickingJournal {
    inner: MemoryJournal,
    panic_at: Sequence,
}

impl Journal for PanickingJournal {
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        let sequence = record.sequenced.sequence;
        assert!(sequence != self.panic_at, "journal device lost at {sequence}");
        self.inner.append(record)
    }

    fn flush(&mut self, clock: &dyn Clock) -> Result<Sequence, StageError> {
        self.inner.flush(clock)
    }
}

/// A replicator whose send fails with a stage error at sequence `fail_at`.
struct FailingReplicator {
    fail_at: Sequence,
    safe: Arc<Watermark>,
}

impl Replicator for FailingReplicator {
    fn send(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        let sequence = record.sequenced.sequence;
        if sequence == self.fail_at {
            return Err(StageError::Fatal("standby link broken".to_owned()));
        }
        self.safe.advance(sequence);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }

    fn safe(&self) -> Arc<Watermark> {
        Arc::clone(&self.safe)
    }
}

/// A snapshot hook that panics after applying sequence `panic_at`.
struct PanickingHook {
    panic_at: Sequence,
}

impl SnapshotHook for PanickingHook {
    fn after_apply(&mut self, _engine: &Engine, command: &Sequenced) {
        assert!(command.sequence != self.panic_at, "snapshot writer crashed");
    }
}

/// Against a node set to fail at sequence 20: 19 ticks are answered normally; of 21 more,
/// every one is answered with the failure naming `stage`; the node reports it, refuses new
/// work, and shutdown returns it. Nothing hangs.
fn check_failure_reported(node: Node, stage: &str) {
    let mut session = node.session().unwrap();
    let mut before = Vec::new();
    for token in 0..19 {
        session.try_submit(Command::Tick, token).unwrap();
    }
    drain(&mut session, &mut before);
    assert!(before.iter().all(|c| c.result.is_ok()), "{before:?}");
    let mut after = Vec::new();
    let mut submitted = HashMap::new();
    for token in 19..40 {
        match session.try_submit(Command::Tick, token) {
            Ok(ticket) => assert!(submitted.insert(token, ticket).is_none()),
            Err(Refused::Failed(_)) => {}
            Err(other) => panic!("unexpected refusal {other}"),
        }
    }
    drain(&mut session, &mut after);
    assert!(!after.is_empty(), "the failing command itself was accepted");
    for completion in &after {
        let unanswered = completion.result.clone().expect_err("nothing after the failure");
        let Unanswered::Failed(failure) = unanswered else { panic!("{unanswered}") };
        assert_eq!(failure.stage, stage);
        assert_eq!(completion.ticket, submitted[&completion.token], "failures keep tickets");
        assert_eq!(completion.sequence, Sequence(completion.token + 1), "and sequences");
    }
    assert_eq!(node.failure().map(|failure| failure.stage), Some(stage));
    let refused = session.try_submit(Command::Query(Query::Sku(SKU)), 99);
    assert!(matches!(refused, Err(Refused::Failed(ref f)) if f.stage == stage), "{refused:?}");
    drop(session);
    match node.shutdown() {
        Err(NodeError::Failed(failure)) => assert_eq!(failure.stage, stage),
        other => panic!("shutdown must report the failed stage, got {other:?}"),
    }
}

#[test]
fn a_panicking_journal_stops_the_node_and_is_named() {
    // Goal: a journaler panic fails the node loudly with the stage's name; no submitter hangs
    // and nothing after the panic is answered with an outcome.
    for topology in [Topology::Parallel, Topology::Compact] {
        let config = NodeConfig { tick_period_ms: 0, ..config(topology) };
        let journal = PanickingJournal { inner: MemoryJournal::new(), panic_at: Sequence(20) };
        let node = Node::start(config, journal, NoReplicator::default()).unwrap();
        check_failure_reported(node, "journaler");
    }
}

#[test]
fn a_failing_replicator_and_a_panicking_snapshot_hook_are_named() {
    // Goal: stage errors and panics on the BLP thread are reported with the right stage too.
    for topology in [Topology::Parallel, Topology::Compact] {
        let config = NodeConfig { tick_period_ms: 0, ..config(topology) };
        let replicator =
            FailingReplicator { fail_at: Sequence(20), safe: Watermark::new(Sequence(0)) };
        let node = Node::start(config.clone(), MemoryJournal::new(), replicator).unwrap();
        check_failure_reported(node, "replicator");

        let engine = Engine::new(config.engine.clone());
        let hook = PanickingHook { panic_at: Sequence(20) };
        let journal = MemoryJournal::new();
        let node =
            Node::start_with(config, engine, Sequence(1), journal, NoReplicator::default(), hook)
                .unwrap();
        check_failure_reported(node, "snapshot");
    }
}

#[test]
fn an_idle_node_holding_a_far_deadline_wakes_its_timer_a_few_times_a_second() {
    // Goal: a node whose reservations await payment for ten minutes, with no client traffic,
    // checks for a due deadline a few times a second, not every period (1 ms): it sleeps until
    // the deadline comes near. (Once a period, half a second would take about 500 wake-ups.)
    for topology in [Topology::Parallel, Topology::Compact] {
        let node =
            Node::start(config(topology), MemoryJournal::new(), NoReplicator::default()).unwrap();
        let mut session = node.session().unwrap();
        session.call(create_sku(10, 600_000), WAIT).unwrap();
        let reserved = session.call(reserve(1, 1, 1), WAIT);
        assert!(matches!(reserved, Ok(Outcome::Reserved { .. })), "{reserved:?}");
        let before = node.metrics().timer_wakeups;
        thread::sleep(Duration::from_millis(500));
        let woke = node.metrics().timer_wakeups - before;
        assert!(woke <= 20, "{woke} timer wake-ups in half a second ({topology:?})");
        drop(session);
        node.shutdown().unwrap();
    }
}

#[test]
fn timer_ticks_expire_unpaid_orders_without_client_traffic() {
    // Goal: the timer's `Tick` commands move the BLP's time, so a payment deadline fires while
    // no client sends anything.
    for topology in [Topology::Parallel, Topology::Compact] {
        let node =
            Node::start(config(topology), MemoryJournal::new(), NoReplicator::default()).unwrap();
        let mut session = node.session().unwrap();
        session.call(create_sku(10, 20), WAIT).unwrap();
        let Ok(Outcome::Reserved { order, .. }) = session.call(reserve(1, 1, 1), WAIT) else {
            panic!("reservation failed");
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let view = session.call(Command::Query(Query::Order(order)), WAIT).unwrap();
            let Outcome::Order(view) = view else { panic!("{view:?}") };
            if view.state == OrderState::Expired {
                break;
            }
            assert_eq!(view.state, OrderState::Reserved);
            assert!(Instant::now() < deadline, "the timer published no tick");
            thread::sleep(Duration::from_millis(5));
        }
        // One deadline, so a tick or two (one may race a query's time advance), not one a
        // period.
        let ticks = node.metrics().ticks_published;
        assert!((1..=3).contains(&ticks), "{ticks} ticks for one deadline");
        drop(session);
        node.shutdown().unwrap();
    }
}

#[test]
fn a_recovered_engine_continues_at_the_next_sequence() {
    // Goal: a node started from a recovered engine numbers its commands from the given next
    // sequence, keeps the engine's state, and refuses a sequence that would go backwards.
    let config = NodeConfig { tick_period_ms: 0, ..config(Topology::Compact) };
    let mut engine = Engine::new(config.engine.clone());
    let setup = Sequenced {
        sequence: Sequence(41),
        timestamp: ringfence_core::Timestamp(1),
        command: create_sku(5, 60_000),
    };
    engine.apply(&setup);
    let too_early = Node::start_with(
        config.clone(),
        Engine::new(config.engine.clone()),
        Sequence(0),
        MemoryJournal::new(),
        NoReplicator::default(),
        NoSnapshots,
    );
    assert!(matches!(too_early, Err(NodeError::Sequence { .. })));
    let copy = JournalCopy::default();
    let journal = MemoryJournal::shared(Arc::clone(&copy));
    let node = Node::start_with(
        config,
        engine,
        Sequence(42),
        journal,
        NoReplicator::default(),
        NoSnapshots,
    )
    .unwrap();
    let mut session = node.session().unwrap();
    session.try_submit(Command::Tick, 0).unwrap();
    let completion = session.wait(WAIT).expect("answered");
    assert_eq!(completion.sequence, Sequence(42));
    session.try_submit(Command::Query(Query::Sku(SKU)), 1).unwrap();
    let completion = session.wait(WAIT).expect("answered");
    assert_eq!(completion.sequence, Sequence(42), "a read takes no sequence");
    assert!(matches!(completion.result, Ok(Outcome::Sku(view)) if view.stock == 5));
    drop(session);
    let report = node.shutdown().unwrap();
    assert_eq!(report.last_sequence, Sequence(42));
    let journal = copy.lock().unwrap();
    assert_eq!(journal.iter().map(|(_, s)| s.sequence).collect::<Vec<_>>(), vec![Sequence(42)]);
}

#[test]
fn a_notify_hook_is_called_when_an_armed_session_gets_a_completion() {
    // Goal: an event loop can sleep after `poll` returned nothing and be woken by the hook
    // (e.g. a `mio::Waker`) when the answer arrives; the hook fires once per arming.
    for config in both_topologies() {
        let node = Node::start(config, MemoryJournal::new(), NoReplicator::default()).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let hook_calls = Arc::clone(&calls);
        let hook = Arc::new(move || {
            hook_calls.fetch_add(1, Ordering::SeqCst);
        });
        let mut session = node.session_with_notify(hook).unwrap();
        assert!(session.poll().is_none(), "nothing submitted yet; this arms the hook");
        session.try_submit(Command::Query(Query::Sku(SKU)), 7).unwrap();
        let deadline = Instant::now() + WAIT;
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the hook was never called");
            node.poll_egress();
            thread::sleep(Duration::from_millis(1));
        }
        let completion = session.poll().expect("the hook announced a completion");
        assert_eq!(completion.token, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(session);
        node.shutdown().unwrap();
    }
}

#[test]
fn batches_limits_and_metrics_are_observable() {
    // Goal: a batch is submitted all at once and answered per command in order; session and
    // batch limits are enforced; metrics show every stage caught up with the producers.
    for topology in [Topology::Parallel, Topology::Compact] {
        let config = NodeConfig { sessions_max: 2, session_pending_max: 8, ..config(topology) };
        let node = Node::start(config, MemoryJournal::new(), NoReplicator::default()).unwrap();
        let mut session = node.session().unwrap();
        let _second = node.session().unwrap();
        assert!(matches!(node.session(), Err(NodeError::TooManySessions { max: 2 })));
        let batch: Vec<_> = (0..8).map(|token| (Command::Tick, token)).collect();
        let too_big: Vec<_> = (0..9).map(|token| (Command::Tick, token)).collect();
        assert!(matches!(session.try_submit_batch(&too_big), Err(Refused::BatchTooLarge { .. })));
        let last = session.try_submit_batch(&batch).unwrap();
        assert_eq!(session.try_submit(Command::Tick, 9), Err(Refused::SessionFull));
        let mut received = Vec::new();
        drain(&mut session, &mut received);
        let sequences: Vec<u64> = received.iter().map(|c| c.sequence.0).collect();
        assert_eq!(sequences, (1..=8).collect::<Vec<_>>(), "contiguous, in order");
        let tickets: Vec<u64> = received.iter().map(|c| c.ticket.0).collect();
        assert_eq!(tickets, (last.0 - 7..=last.0).collect::<Vec<_>>(), "one ticket each");

        // Egress samples the first answer and one in every `PUBLISH_TO_EGRESS_SAMPLE_EVERY`.
        let sampled = 8u64.div_ceil(PUBLISH_TO_EGRESS_SAMPLE_EVERY);
        let deadline = Instant::now() + WAIT;
        let metrics = loop {
            let metrics = node.metrics();
            // Histograms are merged at most `PUBLISH_PERIOD` after they are recorded.
            let caught_up = metrics.stages.iter().all(|s| s.lag == 0 && !s.batch_sizes.is_empty());
            if caught_up
                && metrics.publish_to_egress_ns.len() >= sampled
                && !metrics.blp_service_ns.is_empty()
            {
                break metrics;
            }
            assert!(Instant::now() < deadline, "metrics never caught up: {metrics:?}");
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(metrics.publish_to_egress_ns.len(), sampled, "one answer in every few");
        assert_eq!(metrics.topology, topology.name());
        let names: Vec<_> = metrics.stages.iter().map(|stage| stage.name).collect();
        match topology {
            Topology::Parallel => assert_eq!(names, ["journaler", "replicator", "blp", "egress"]),
            Topology::Compact => assert_eq!(names, ["processor", "egress"]),
            Topology::Stepped => unreachable!("not run threaded"),
        }
        assert_eq!(metrics.busy_rejections, 0);
        drop(session);
        node.shutdown().unwrap();
    }
}

#[test]
fn a_blocking_call_reports_a_stopped_node() {
    // Goal: a session outliving its node is told so instead of waiting forever.
    let node =
        Node::start(config(Topology::Compact), MemoryJournal::new(), NoReplicator::default())
            .unwrap();
    let mut session = node.session().unwrap();
    node.shutdown().unwrap();
    let refused = session.call(Command::Query(Query::Sku(SKU)), WAIT);
    assert_eq!(refused, Err(CallError::Refused(Refused::ShuttingDown)));
}

#[test]
fn nodes_are_shared_between_threads_and_sessions_move_to_them() {
    // Goal: a network front can hold the node in an `Arc` and hand a session to each of its
    // event-loop threads (checked at compile time; the run submits from a spawned thread).
    fn shareable<T: Send + Sync>() {}
    fn movable<T: Send>() {}
    shareable::<Node>();
    movable::<Session>();
    let node = Arc::new(
        Node::start(config(Topology::Compact), MemoryJournal::new(), NoReplicator::default())
            .unwrap(),
    );
    let shared = Arc::clone(&node);
    let answer = thread::spawn(move || {
        let mut session = shared.session().unwrap();
        session.call(Command::Query(Query::Sku(SKU)), WAIT)
    })
    .join()
    .unwrap();
    assert!(matches!(answer, Ok(Outcome::Rejected(_))), "{answer:?}");
    Arc::into_inner(node).expect("the thread released its handle").shutdown().unwrap();
}

#[test]
fn a_panicking_notify_hook_fails_egress_and_the_node_refuses_work() {
    // Goal: a panic on the egress thread is caught and names `egress`; new work after it
    // is refused with it; nothing hangs, and shutdown reports it.
    let node =
        Node::start(config(Topology::Parallel), MemoryJournal::new(), NoReplicator::default())
            .unwrap();
    let mut victim = node.session_with_notify(Arc::new(|| panic!("event loop gone"))).unwrap();
    let mut other = node.session().unwrap();
    assert!(victim.poll().is_none(), "arms the hook");
    victim.try_submit(Command::Query(Query::Sku(SKU)), 1).unwrap();
    let deadline = Instant::now() + WAIT;
    while node.failure().is_none() {
        assert!(Instant::now() < deadline, "the hook's panic was not reported");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(node.failure().unwrap().stage, "egress");
    assert!(matches!(other.try_submit(Command::Tick, 2), Err(Refused::Failed(_))));
    drop((victim, other));
    assert!(
        matches!(node.shutdown(), Err(NodeError::Failed(failure)) if failure.stage == "egress")
    );
}

/// A replicator that keeps the bytes it is handed (a standby forwarding onward would).
struct CapturingReplicator {
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    safe: Arc<Watermark>,
}

impl Replicator for CapturingReplicator {
    fn send(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        self.sent.lock().unwrap().push(record.bytes.to_vec());
        self.safe.advance(record.sequenced.sequence);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }

    fn safe(&self) -> Arc<Watermark> {
        Arc::clone(&self.safe)
    }
}

#[test]
fn a_threaded_replica_applies_records_and_hands_their_bytes_on_unchanged() {
    // Goal: in every threaded topology, a node in intake mode journals and applies records
    // framed elsewhere with their own sequence, epoch and timestamp, answers each with what a
    // fresh engine answers, and its replicator is handed the very bytes it was given.
    let mut primary = Engine::new(config(Topology::Compact).engine);
    let mut framing = ringfence_core::record::RecordBuf::default();
    let mut records = Vec::new();
    let mut outcomes = Vec::new();
    for index in 0..200u64 {
        let command = match index {
            0 => create_sku(STOCK, 60_000),
            _ if index % 7 == 0 => Command::Tick,
            _ => reserve(u128::from(index), index % 30, 1),
        };
        let sequenced = Sequenced {
            sequence: Sequence(index + 1),
            timestamp: ringfence_core::Timestamp(1_000 + index),
            command,
        };
        outcomes.push(primary.apply(&sequenced));
        records.push(framing.encode(Epoch(5), &sequenced).to_vec());
    }
    for config in both_topologies() {
        let config = NodeConfig { intake: ringfence_core::pipeline::Intake::Replica, ..config };
        let copy = JournalCopy::default();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let replicator =
            CapturingReplicator { sent: Arc::clone(&sent), safe: Watermark::new(Sequence(0)) };
        let node =
            Node::start(config, MemoryJournal::shared(Arc::clone(&copy)), replicator).unwrap();
        let mut session = node.session().unwrap();
        assert_eq!(session.try_submit(create_sku(1, 1), 0), Err(Refused::NotPrimary));
        let mut received = Vec::new();
        for (index, bytes) in records.iter().enumerate() {
            let deadline = Instant::now() + WAIT;
            loop {
                match session.try_submit_record(bytes, index as u64) {
                    Ok(_) => break,
                    Err(Refused::Busy | Refused::SessionFull) => {
                        assert!(Instant::now() < deadline, "the replica stayed busy");
                        received.extend(session.poll());
                    }
                    Err(other) => panic!("record {index} refused: {other}"),
                }
            }
        }
        drain(&mut session, &mut received);
        for completion in &received {
            let index = completion.token as usize;
            assert_eq!(completion.sequence, Sequence(index as u64 + 1));
            assert_eq!(completion.result.as_ref().unwrap(), &outcomes[index], "record {index}");
        }
        assert_eq!(received.len(), records.len());
        drop(session);
        let report = node.shutdown().unwrap();
        assert_eq!(report.engine.running_hash(), primary.running_hash());
        assert_eq!(*sent.lock().unwrap(), records, "the replicator got the bytes as given");
        let journal = copy.lock().unwrap();
        assert!(journal.iter().all(|(epoch, _)| *epoch == Epoch(5)), "the primary's epoch kept");
    }
}

/// How a [`FailingDisk`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskFault {
    /// Appending sequence `at` fails, as a full disk fails to create the next segment.
    Append,
    /// Syncing fails once sequence `at` was appended, as a failing device fails `msync`.
    Sync,
}

/// A journal whose disk fails with an I/O error at sequence `at`, keeping what it holds in
/// `records`.
struct FailingDisk {
    inner: MemoryJournal,
    fault: DiskFault,
    at: Sequence,
    appended: Sequence,
}

impl FailingDisk {
    fn new(fault: DiskFault, at: Sequence) -> (FailingDisk, JournalCopy) {
        let records = JournalCopy::default();
        let inner = MemoryJournal::shared(Arc::clone(&records));
        (FailingDisk { inner, fault, at, appended: Sequence(0) }, records)
    }

    fn error(context: &str, errno: i32) -> StageError {
        let source = std::io::Error::from_raw_os_error(errno);
        StageError::Io { context: context.to_owned(), source }
    }
}

impl Journal for FailingDisk {
    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        let sequence = record.sequenced.sequence;
        if self.fault == DiskFault::Append && sequence >= self.at {
            return Err(FailingDisk::error("creating segment 7.seg", 28));
        }
        self.appended = sequence;
        self.inner.append(record)
    }

    fn flush(&mut self, clock: &dyn Clock) -> Result<Sequence, StageError> {
        if self.fault == DiskFault::Sync && self.appended >= self.at {
            return Err(FailingDisk::error("syncing segment 1.seg", 5));
        }
        self.inner.flush(clock)
    }
}

/// The SKU's reserved units as a read answers them.
fn reserved_units(session: &mut Session) -> u64 {
    match session.call(Command::Query(Query::Sku(SKU)), WAIT) {
        Ok(Outcome::Sku(view)) => view.reserved,
        other => panic!("the SKU read failed: {other:?}"),
    }
}

/// Against a node whose disk fails at sequence 5: four writes are answered; the fifth, sent
/// with a read behind it, is answered `NotDurable`, the read is answered; then writes and
/// snapshot requests are refused naming the cause, reads go on, the node is not failed, and
/// shutdown says the journal failed. Returns the units the reads saw reserved.
fn check_journal_fence(node: Node, cause: &str) -> u64 {
    let mut session = node.session().unwrap();
    assert!(matches!(session.call(create_sku(STOCK, 60_000), WAIT), Ok(Outcome::SkuCreated(_))));
    for user in 1..=3 {
        let answer = session.call(reserve(u128::from(user), user, 1), WAIT);
        assert!(matches!(answer, Ok(Outcome::Reserved { .. })), "{answer:?}");
    }
    session.try_submit(reserve(4, 4, 1), 4).unwrap();
    session.try_submit(Command::Query(Query::Sku(SKU)), 5).unwrap();
    let mut answers = Vec::new();
    drain(&mut session, &mut answers);
    let Err(Unanswered::NotDurable { sequence, cause: why }) = &answers[0].result else {
        panic!("the write past the failure: {:?}", answers[0]);
    };
    assert_eq!(*sequence, Sequence(5));
    assert!(why.contains(cause), "{why}");
    let Ok(Outcome::Sku(view)) = answers[1].result else { panic!("{:?}", answers[1]) };
    let refused = session.try_submit(reserve(5, 5, 1), 6);
    assert!(matches!(refused, Err(Refused::JournalFailed(ref why)) if why.contains(cause)));
    let refused = session.try_submit(Command::Snapshot, 7);
    assert!(matches!(refused, Err(Refused::JournalFailed(_))), "{refused:?}");
    assert_eq!(reserved_units(&mut session), view.reserved, "reads go on answering");
    assert!(matches!(node.check_writable(), Err(Refused::JournalFailed(_))));
    assert_eq!(node.failure(), None, "the node still serves");
    assert_eq!(node.metrics().journal_fence, Some(Sequence(5)));
    drop(session);
    match node.shutdown() {
        Err(NodeError::JournalFailed { fence, .. }) => assert_eq!(fence, Sequence(5)),
        other => panic!("shutdown must report the journal failure, got {:?}", other.err()),
    }
    view.reserved
}

#[test]
fn a_full_disk_refuses_writes_and_keeps_answering_reads() {
    // Goal: when the journal cannot append (a full disk), the command it could not write is
    // never applied and is answered `NotDurable`; what came before is answered and journaled;
    // reads are answered from memory; writes are refused with the cause; in every topology.
    for config in both_topologies() {
        let topology = config.topology;
        let (journal, records) = FailingDisk::new(DiskFault::Append, Sequence(5));
        let node = Node::start(config, journal, NoReplicator::default()).unwrap();
        let reserved = check_journal_fence(node, "os error 28");
        assert_eq!(reserved, 3, "{topology:?}: the write the disk refused was not applied");
        let journaled: Vec<u64> =
            records.lock().unwrap().iter().map(|(_, c)| c.sequence.0).collect();
        assert_eq!(journaled, [1, 2, 3, 4], "{topology:?}");
    }
}

/// A snapshot hook that notes every sequence the node applies, as a snapshot writer sees them.
struct NotingHook {
    applied: Arc<Mutex<Vec<u64>>>,
}

impl SnapshotHook for NotingHook {
    fn after_apply(&mut self, _engine: &Engine, command: &Sequenced) {
        self.applied.lock().unwrap().push(command.sequence.0);
    }
}

#[test]
fn writes_past_a_full_disk_are_neither_applied_sent_nor_seen_by_the_snapshot_writer() {
    // Goal: the journal's fence holds for every write past it, not just the first: with the
    // disk full at sequence 5, four more writes sent together are each answered `NotDurable`
    // with its own sequence; none is applied (reads see three units reserved), handed to the
    // replicator, or shown to the snapshot writer; the read sent behind them is answered.
    for config in both_topologies() {
        let topology = config.topology;
        let (journal, _) = FailingDisk::new(DiskFault::Append, Sequence(5));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let replicator =
            CapturingReplicator { sent: Arc::clone(&sent), safe: Watermark::new(Sequence(0)) };
        let applied = Arc::new(Mutex::new(Vec::new()));
        let hook = NotingHook { applied: Arc::clone(&applied) };
        let engine = Engine::new(config.engine.clone());
        let node =
            Node::start_with(config, engine, Sequence(1), journal, replicator, hook).unwrap();
        let mut session = node.session().unwrap();
        assert!(matches!(
            session.call(create_sku(STOCK, 60_000), WAIT),
            Ok(Outcome::SkuCreated(_))
        ));
        for user in 1..=3 {
            let answer = session.call(reserve(u128::from(user), user, 1), WAIT);
            assert!(matches!(answer, Ok(Outcome::Reserved { .. })), "{topology:?}: {answer:?}");
        }
        for user in 4..=7 {
            session.try_submit(reserve(u128::from(user), user, 1), user).unwrap();
        }
        session.try_submit(Command::Query(Query::Sku(SKU)), 8).unwrap();
        let mut answers = Vec::new();
        drain(&mut session, &mut answers);
        answers.sort_by_key(|answer| answer.token);
        for (answer, sequence) in answers[..4].iter().zip(5..) {
            let refused = matches!(answer.result, Err(Unanswered::NotDurable { sequence: s, .. })
                if s == Sequence(sequence));
            assert!(refused, "{topology:?}: the write at {sequence}: {answer:?}");
        }
        let Ok(Outcome::Sku(view)) = answers[4].result else { panic!("{:?}", answers[4]) };
        assert_eq!(view.reserved, 3, "{topology:?}: a write past the fence was applied");
        assert_eq!(sent.lock().unwrap().len(), 4, "{topology:?}: sent past the fence");
        assert_eq!(*applied.lock().unwrap(), [1, 2, 3, 4], "{topology:?}: the snapshot writer");
        drop(session);
        assert!(matches!(node.shutdown(), Err(NodeError::JournalFailed { .. })), "{topology:?}");
    }
}

#[test]
fn a_failed_sync_answers_what_it_did_not_make_durable_as_such() {
    // Goal: when syncing fails, the commands it was syncing are not acknowledged (they are
    // answered `NotDurable`: applied here, durability unknown), nothing later is taken, and
    // reads go on, in every topology.
    for config in both_topologies() {
        let (journal, _) = FailingDisk::new(DiskFault::Sync, Sequence(5));
        let node = Node::start(config, journal, NoReplicator::default()).unwrap();
        let reserved = check_journal_fence(node, "os error 5");
        // The failed sync's command was applied before the sync failed; reads may show it.
        assert!((3..=4).contains(&reserved), "{reserved}");
    }
}
