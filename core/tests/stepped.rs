//! A node driven entirely on the test thread: the `stepped` topology runs the production
//! processor and egress only inside `Node::step`, on a `ManualClock`, with no thread and no
//! sleep — the way the simulator drives it.

use std::sync::{Arc, Mutex};

use ringfence_core::pipeline::{
    ManualClock, MemoryJournal, NoReplicator, NoSnapshots, Node, NodeConfig, NodeParts, Session,
    Topology,
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

fn stepped_node(clock: &Arc<ManualClock>, records: &Records) -> Node {
    let config = NodeConfig {
        topology: Some(Topology::Stepped),
        tick_period_ms: 1,
        ..NodeConfig::for_tests(Topology::Stepped)
    };
    let parts = NodeParts {
        engine: Engine::new(config.engine.clone()),
        next_sequence: Sequence(1),
        journal: MemoryJournal::shared(Arc::clone(records)),
        replicator: NoReplicator::default(),
        hook: NoSnapshots,
        clock: Arc::clone(clock) as Arc<dyn ringfence_core::pipeline::Clock>,
    };
    Node::start_parts(config, parts).expect("a stepped node starts")
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
