//! Determinism: the same commands give the same outcomes, hashes and digests on every engine,
//! whether it started empty or from a snapshot image taken part way through.
//!
//! A generated sequence is driven through a first engine, which also decides the concrete
//! commands (order ids come from its answers). The recorded commands are then replayed into a
//! second engine from the start and into engines restored from snapshots taken along the way.

use proptest::prelude::*;
use ringfence_core::{
    Action, BatchId, Command, CouponId, CreateCouponBatch, CreateSku, Engine, EngineConfig,
    EngineImage, Lookahead, OrderId, Outcome, PaymentRef, Query, RequestKey, Reserve, Sequence,
    Sequenced, SkuId, Timestamp, UserId,
};

/// One day after the snowflake epoch.
const START_MS: u64 = 1_735_689_600_000 + 86_400_000;

/// Small tables, so that full tables, forgotten orders and key eviction happen.
fn config() -> EngineConfig {
    EngineConfig {
        shard: 9,
        skus_max: 6,
        orders_max: 32,
        coupons_max: 16,
        batches_max: 3,
        holdings_max: 24,
        request_keys_max: 128,
        request_key_window_ms: 2_000,
        // Small, so that a user's share of the key and order tables runs out too.
        request_keys_per_user_max: 8,
        orders_per_user_max: 3,
        order_qty_max: 4,
    }
}

/// A generated step; its numbers are resolved against what the driving engine answered.
#[derive(Clone, Copy, Debug)]
struct Pick {
    kind: u8,
    a: u16,
    b: u16,
    c: u16,
    dt_ms: u16,
}

fn pick() -> impl Strategy<Value = Pick> {
    (any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>(), 0u16..60)
        .prop_map(|(kind, a, b, c, dt_ms)| Pick { kind, a, b, c, dt_ms })
}

/// A placed order as the driver learnt it from a `Reserved` answer.
#[derive(Clone, Copy, Debug)]
struct Placed {
    order: OrderId,
    user: UserId,
    amount_cents: u64,
}

/// What driving a sequence through the first engine produced.
struct Run {
    commands: Vec<Sequenced>,
    outcomes: Vec<Outcome>,
    /// Snapshots taken along the way.
    snapshots: Vec<Snapshot>,
    /// Refused commands whose effect on the tables digest was checked.
    refusals_checked: usize,
}

/// A snapshot taken by the driver.
struct Snapshot {
    /// Commands applied before it.
    at: usize,
    /// The image taken.
    image: EngineImage,
    /// The image in its explicit layout (`EngineImage::encode_into`).
    explicit: Vec<u8>,
    /// The engine's state digest at that point.
    digest: u64,
}

struct Driver {
    engine: Engine,
    sequence: u64,
    clock: u64,
    next_key: u128,
    orders: Vec<Placed>,
    coupons: Vec<(CouponId, UserId)>,
    sent: Vec<(RequestKey, Action)>,
    run: Run,
}

impl Driver {
    fn new() -> Driver {
        Driver {
            engine: Engine::new(config()),
            sequence: 0,
            clock: START_MS,
            next_key: 1,
            orders: Vec::new(),
            coupons: Vec::new(),
            sent: Vec::new(),
            run: Run {
                commands: Vec::new(),
                outcomes: Vec::new(),
                snapshots: Vec::new(),
                refusals_checked: 0,
            },
        }
    }

    fn setup(&mut self) {
        let sku = |id: u64, stock: u32, per_user_limit: u32, payment_timeout_ms: u64| {
            Action::CreateSku(CreateSku {
                sku: SkuId(id),
                stock,
                price_cents: 100 * id + 99,
                per_user_limit,
                payment_timeout_ms,
                sale_start: None,
                sale_end: None,
            })
        };
        let batch = |id: u64, quantity: u32| {
            Action::CreateCouponBatch(CreateCouponBatch {
                batch: BatchId(id),
                quantity,
                per_user_limit: 1,
                discount_cents: 50,
                min_amount_cents: 150,
                valid_from: Timestamp(START_MS),
                valid_until: Timestamp(START_MS + 12_000 * id),
            })
        };
        let actions =
            [sku(1, 12, 0, 300), sku(2, 8, 2, 700), sku(3, 30, 3, 1_500), batch(1, 6), batch(2, 9)];
        for action in actions {
            let command = self.fresh(action);
            self.submit(self.clock, command);
        }
    }

    fn fresh(&mut self, action: Action) -> Command {
        let key = RequestKey::from_u128(self.next_key);
        self.next_key += 1;
        self.sent.push((key, action));
        Command::Client { key, action }
    }

    fn order(&self, index: u16) -> Placed {
        let n = self.orders.len();
        if n == 0 || index % 23 == 0 {
            let bogus = OrderId(u64::from(index));
            return Placed { order: bogus, user: UserId(1), amount_cents: 0 };
        }
        // Mostly orders that are not finished, so that they travel through their states.
        let index = usize::from(index);
        let open: Vec<Placed> = self
            .orders
            .iter()
            .filter(|placed| match self.engine.query(&Query::Order(placed.order)) {
                Outcome::Order(view) => !view.state.is_final(),
                _ => false,
            })
            .copied()
            .collect();
        match index % 4 {
            0 => self.orders[index % n],
            1 => self.orders[n - 1 - index % n.min(4)],
            _ if open.is_empty() => self.orders[n - 1],
            _ => open[index % open.len()],
        }
    }

    /// Users 1..=24, and now and then the invalid user 0.
    fn user(value: u16) -> UserId {
        UserId(u64::from(value % 25))
    }

    /// SKUs 1..=3, and now and then an unknown one.
    fn sku(value: u16) -> SkuId {
        SkuId(if value % 17 == 0 { u64::from(value % 5) } else { 1 + u64::from(value % 3) })
    }

    /// Mostly 1..=3 units, sometimes none or more than `order_qty_max`.
    fn qty(value: u16) -> u32 {
        if value % 19 == 0 { u32::from(value % 7) } else { 1 + u32::from(value % 3) }
    }

    fn resolve(&mut self, pick: &Pick) -> Command {
        let Pick { kind, a, b, c, .. } = *pick;
        let action = match kind % 20 {
            0..=4 => {
                let (mut user, sku, qty) = (Driver::user(a), Driver::sku(b), Driver::qty(c));
                let coupon = (c % 3 == 0 && !self.coupons.is_empty()).then(|| {
                    let (coupon, owner) = self.coupons[usize::from(a) % self.coupons.len()];
                    user = if b % 5 == 0 { user } else { owner };
                    coupon
                });
                Action::Reserve(Reserve { user, sku, qty, coupon })
            }
            5..=7 => {
                let placed = self.order(a);
                let amount_cents =
                    if b % 6 == 0 { placed.amount_cents + 1 } else { placed.amount_cents };
                let payment_ref = PaymentRef::from_u128(u128::from(c % 3));
                Action::Pay { order: placed.order, payment_ref, amount_cents }
            }
            8 => {
                let placed = self.order(a);
                let user = if b % 4 == 0 { Driver::user(c) } else { placed.user };
                Action::Cancel { order: placed.order, user }
            }
            9 => Action::AdminCancel { order: self.order(a).order },
            10 => Action::Ship { order: self.order(a).order },
            11 => Action::Complete { order: self.order(a).order, user: self.order(a).user },
            12 => Action::Refund { order: self.order(a).order },
            13 => Action::ClaimCoupon { user: Driver::user(a), batch: BatchId(u64::from(b % 3)) },
            14 => match c % 6 {
                0 | 1 => Action::Restock { sku: Driver::sku(b), qty: u32::from(a % 6) },
                2 => Action::CloseSale { sku: Driver::sku(b) },
                _ => Action::OpenSale { sku: Driver::sku(b) },
            },
            15 | 16 if !self.sent.is_empty() => {
                // A retry: the same key with the same command, or with another one.
                let n = self.sent.len();
                let (key, action) = self.sent[n - 1 - usize::from(a) % n.min(30)];
                let other = self.sent[n - 1 - usize::from(b) % n.min(30)].1;
                let action = if kind % 20 == 15 { action } else { other };
                return Command::Client { key, action };
            }
            17 => return Command::Query(self.query(a, b)),
            18 if c % 4 == 0 => return Command::Snapshot,
            _ => return Command::Tick,
        };
        self.fresh(action)
    }

    fn query(&self, a: u16, b: u16) -> Query {
        match b % 4 {
            0 => Query::Sku(SkuId(u64::from(a % 4))),
            1 => Query::Order(self.order(a).order),
            2 => Query::Batch(BatchId(u64::from(a % 3))),
            _ => Query::Coupon(
                self.coupons
                    .get(usize::from(a) % self.coupons.len().max(1))
                    .map_or(CouponId(3), |c| c.0),
            ),
        }
    }

    fn stamp(&mut self, pick: &Pick) -> u64 {
        match (pick.kind % 20, pick.dt_ms) {
            (19, dt) => self.clock += 10 * u64::from(dt),
            (_, dt) if dt % 13 == 0 => return self.clock - u64::from(dt) - 1,
            (_, dt) if dt % 2 == 0 => {}
            (_, dt) => self.clock += u64::from(dt),
        }
        self.clock
    }

    fn step(&mut self, pick: &Pick) {
        let timestamp = self.stamp(pick);
        let command = self.resolve(pick);
        self.submit(timestamp, command);
    }

    fn submit(&mut self, timestamp: u64, command: Command) {
        // Sequences strictly increase but need not be contiguous.
        self.sequence += 1 + u64::from(timestamp % 7 == 0);
        let sequenced = Sequenced {
            sequence: Sequence(self.sequence),
            timestamp: Timestamp(timestamp),
            command,
        };
        let tables_before = self.engine.tables_digest();
        let mut expiries = 0;
        let outcome = self.engine.apply_observed(&sequenced, &mut |_| expiries += 1);
        if outcome.is_rejected() && expiries == 0 {
            assert_eq!(self.engine.tables_digest(), tables_before, "{sequenced:?} -> {outcome:?}");
            self.run.refusals_checked += 1;
        }
        match outcome {
            Outcome::Reserved { order, amount_cents, .. } => {
                let Command::Client { action: Action::Reserve(reserve), .. } = command else {
                    panic!("{outcome:?} answered {command:?}");
                };
                if self.orders.iter().all(|placed| placed.order != order) {
                    self.orders.push(Placed { order, user: reserve.user, amount_cents });
                }
            }
            Outcome::CouponClaimed { coupon, .. } => {
                let Command::Client { action: Action::ClaimCoupon { user, .. }, .. } = command
                else {
                    panic!("{outcome:?} answered {command:?}");
                };
                if self.coupons.iter().all(|&(known, _)| known != coupon) {
                    self.coupons.push((coupon, user));
                }
            }
            _ => {}
        }
        self.run.commands.push(sequenced);
        self.run.outcomes.push(outcome);
    }

    fn snapshot(&mut self) {
        let image = self.engine.to_image();
        let mut explicit = Vec::new();
        image.encode_into(&mut explicit);
        let digest = self.engine.state_digest();
        assert_eq!(image.state_digest(), digest, "an image digests like its engine");
        let at = self.run.commands.len();
        self.run.snapshots.push(Snapshot { at, image, explicit, digest });
    }
}

/// Drives `picks` through a first engine, snapshotting before the steps named in `snap_at` and
/// at the end. Returns the record and the engine.
fn drive(picks: &[Pick], snap_at: &[usize]) -> (Run, Engine) {
    let mut driver = Driver::new();
    driver.setup();
    for (index, pick) in picks.iter().enumerate() {
        if snap_at.iter().any(|&at| at % picks.len().max(1) == index) {
            driver.snapshot();
        }
        driver.step(pick);
    }
    driver.snapshot();
    (driver.run, driver.engine)
}

/// Feeds `commands` to `engine`, demanding the recorded outcome for each.
fn replay(engine: &mut Engine, commands: &[Sequenced], outcomes: &[Outcome]) {
    assert_eq!(commands.len(), outcomes.len());
    for (sequenced, expected) in commands.iter().zip(outcomes) {
        let outcome = engine.apply(sequenced);
        assert_eq!(outcome, *expected, "diverged at {sequenced:?}");
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn two_engines_fed_the_same_sequence_agree(picks in prop::collection::vec(pick(), 300..700)) {
        // Goal: equal outcomes, running hash, state digest and image after the same commands.
        let (run, first) = drive(&picks, &[]);
        let mut second = Engine::new(config());
        replay(&mut second, &run.commands, &run.outcomes);
        prop_assert_eq!(second.running_hash(), first.running_hash());
        prop_assert_eq!(second.state_digest(), first.state_digest());
        prop_assert_eq!(second.tables_digest(), first.tables_digest());
        prop_assert_eq!(second.status(), first.status());
        prop_assert_eq!(second.to_image(), first.to_image());
    }

    #[test]
    fn applying_with_the_prefetch_lookahead_changes_nothing(
        picks in prop::collection::vec(pick(), 300..700),
    ) {
        // Goal: a replay that hints each command eight commands before applying it
        // (`Lookahead`, as recovery and the snapshot writer's shadow replay) gives every
        // outcome in the same order and ends in the same state as applying each as it comes.
        let (run, first) = drive(&picks, &[]);
        let mut second = Engine::new(config());
        let mut ahead = Lookahead::default();
        let mut outcomes = Vec::new();
        for command in &run.commands {
            ahead.push(&mut second, *command, |engine, command| {
                outcomes.push((command.sequence, engine.apply(command)));
            });
        }
        // Held back until `finish`: the last few commands.
        prop_assert_eq!(outcomes.len(), run.commands.len().saturating_sub(Lookahead::DISTANCE));
        ahead.finish(&mut second, |engine, command| {
            outcomes.push((command.sequence, engine.apply(command)));
        });
        let expected: Vec<_> =
            run.commands.iter().map(|command| command.sequence).zip(run.outcomes).collect();
        prop_assert_eq!(outcomes, expected);
        prop_assert_eq!(second.running_hash(), first.running_hash());
        prop_assert_eq!(second.state_digest(), first.state_digest());
        prop_assert_eq!(second.to_image(), first.to_image());
    }

    #[test]
    fn restored_snapshots_continue_exactly_like_the_original(
        picks in prop::collection::vec(pick(), 300..700),
        snap_at in prop::collection::vec(any::<usize>(), 1..4),
    ) {
        // Goal: an engine restored from a snapshot's bytes (the explicit image layout) has the
        // same digest and, fed the rest of the sequence, gives the same outcomes and ends in the
        // same state as the original.
        let (run, first) = drive(&picks, &snap_at);
        prop_assert!(run.snapshots.len() >= 2);
        for Snapshot { at, image, explicit, digest } in &run.snapshots {
            let decoded = EngineImage::decode(explicit).expect("an image just encoded decodes");
            prop_assert_eq!(&decoded, image);
            let mut restored = Engine::from_image(config(), &decoded).expect("image restores");
            prop_assert_eq!(restored.state_digest(), *digest);
            prop_assert_eq!(&restored.to_image(), image);
            replay(&mut restored, &run.commands[*at..], &run.outcomes[*at..]);
            prop_assert_eq!(restored.running_hash(), first.running_hash());
            prop_assert_eq!(restored.state_digest(), first.state_digest());
            prop_assert_eq!(restored.status(), first.status());
        }
    }

    #[test]
    fn refused_commands_leave_the_tables_digest_unchanged(
        picks in prop::collection::vec(pick(), 300..700),
    ) {
        // Goal: every refusal that fired no expiry left SKUs, orders, coupons, holdings,
        // claims, the finished queue and live deadlines exactly as they were.
        let (run, _) = drive(&picks, &[]);
        let refusals = run.outcomes.iter().filter(|o| o.is_rejected()).count();
        prop_assert!(run.refusals_checked > 0);
        prop_assert!(run.refusals_checked <= refusals);
    }
}

#[test]
fn refusals_of_every_kind_leave_the_tables_digest_unchanged() {
    // Goal: refused commands of many kinds, stamped at the current time (so no deadline
    // fires), leave SKUs, orders, coupons and every other business table as they were.
    let mut driver = Driver::new();
    driver.setup();
    let now = driver.clock;
    let reserve = |user: u64, sku: u64, qty: u32| {
        Action::Reserve(Reserve { user: UserId(user), sku: SkuId(sku), qty, coupon: None })
    };
    let placed = driver.fresh(reserve(5, 2, 2));
    driver.submit(now, placed);
    let Outcome::Reserved { order, amount_cents, .. } = *driver.run.outcomes.last().unwrap() else {
        panic!("setup reservation refused");
    };
    let refusals = [
        reserve(5, 2, 1),
        reserve(6, 2, 0),
        reserve(6, 2, 5),
        reserve(6, 9, 1),
        reserve(0, 1, 1),
        Action::CloseSale { sku: SkuId(7) },
        Action::Pay {
            order,
            payment_ref: PaymentRef::from_u128(1),
            amount_cents: amount_cents + 1,
        },
        Action::Pay { order: OrderId(77), payment_ref: PaymentRef::from_u128(1), amount_cents },
        Action::Cancel { order, user: UserId(6) },
        Action::Ship { order },
        Action::Complete { order, user: UserId(5) },
        Action::Refund { order },
        Action::ClaimCoupon { user: UserId(5), batch: BatchId(9) },
        Action::Restock { sku: SkuId(1), qty: 0 },
    ];
    for action in refusals {
        let before = driver.engine.tables_digest();
        let command = driver.fresh(action);
        driver.submit(now, command);
        let outcome = *driver.run.outcomes.last().unwrap();
        assert!(outcome.is_rejected(), "{action:?} was accepted: {outcome:?}");
        assert_eq!(driver.engine.tables_digest(), before, "{action:?} changed the tables");
    }
    assert_eq!(driver.run.refusals_checked, refusals.len());
}
