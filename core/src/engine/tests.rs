//! Scenario tests for the business-logic processor: every transition and every rejection of the
//! domain, with every refused command checked to leave the business tables as they were.

use super::{Engine, Event, RestoreError};
use crate::command::{Action, Command, CreateCouponBatch, CreateSku, Query, Reserve, Sequenced};
use crate::config::EngineConfig;
use crate::outcome::{
    BatchView, CouponState, CouponView, OrderState, OrderView, Outcome, Rejection, SkuView,
};
use crate::snowflake::{EPOCH_UNIX_MS, Snowflake, SnowflakeParts};
use crate::types::{
    BatchId, CouponId, OrderId, PaymentRef, RequestKey, Sequence, SkuId, Timestamp, UserId,
};

/// A day after the snowflake epoch, so ids carry a non-zero millisecond.
const T0: Timestamp = Timestamp(EPOCH_UNIX_MS + 86_400_000);
const SKU: u64 = 7;
const OTHER_SKU: u64 = 8;
const BATCH: u64 = 3;
const ALICE: u64 = 1;
const BOB: u64 = 2;
const STOCK: u32 = 10;
const PRICE_CENTS: u64 = 1_000;
const TIMEOUT_MS: u64 = 30_000;
const DISCOUNT_CENTS: u64 = 300;
const VALIDITY_MS: u64 = 100_000;
/// Shard id of `EngineConfig::small()`.
const SHARD: u16 = 1;

/// A SKU with 10 units at 10.00, no per-user limit, a 30 s payment timeout and no window.
fn sku_spec(sku: u64) -> CreateSku {
    CreateSku {
        sku: SkuId(sku),
        stock: STOCK,
        price_cents: PRICE_CENTS,
        per_user_limit: 0,
        payment_timeout_ms: TIMEOUT_MS,
        sale_start: None,
        sale_end: None,
    }
}

/// A batch of 5 coupons worth 3.00 on orders of 10.00 or more, valid for 100 s from `T0`.
fn batch_spec(batch: u64) -> CreateCouponBatch {
    CreateCouponBatch {
        batch: BatchId(batch),
        quantity: 5,
        per_user_limit: 0,
        discount_cents: DISCOUNT_CENTS,
        min_amount_cents: PRICE_CENTS,
        valid_from: T0,
        valid_until: T0.plus_ms(VALIDITY_MS),
    }
}

/// Client actions, short to write.
mod act {
    use super::*;

    pub fn reserve(user: u64, sku: u64, qty: u32) -> Action {
        Action::Reserve(Reserve { user: UserId(user), sku: SkuId(sku), qty, coupon: None })
    }

    pub fn reserve_with(user: u64, sku: u64, qty: u32, coupon: CouponId) -> Action {
        Action::Reserve(Reserve { user: UserId(user), sku: SkuId(sku), qty, coupon: Some(coupon) })
    }

    /// The payment reference a test's payment side uses for `order`.
    pub fn payment_ref(order: OrderId) -> PaymentRef {
        PaymentRef::from_u128(u128::from(order.0))
    }

    pub fn pay(order: OrderId, amount_cents: u64) -> Action {
        Action::Pay { order, payment_ref: payment_ref(order), amount_cents }
    }

    pub fn pay_ref(order: OrderId, payment_ref: u128, amount_cents: u64) -> Action {
        Action::Pay { order, payment_ref: PaymentRef::from_u128(payment_ref), amount_cents }
    }

    pub fn cancel(order: OrderId, user: u64) -> Action {
        Action::Cancel { order, user: UserId(user) }
    }

    pub fn complete(order: OrderId, user: u64) -> Action {
        Action::Complete { order, user: UserId(user) }
    }

    pub fn claim(user: u64, batch: u64) -> Action {
        Action::ClaimCoupon { user: UserId(user), batch: BatchId(batch) }
    }

    pub fn restock(sku: u64, qty: u32) -> Action {
        Action::Restock { sku: SkuId(sku), qty }
    }
}

/// Drives an engine: numbers commands, stamps them with a clock the test moves, issues fresh
/// request keys and records the expiries the engine reports.
struct Harness {
    engine: Engine,
    sequence: Sequence,
    /// Timestamp stamped on the next command; moved only by the test.
    clock: Timestamp,
    keys_issued: u128,
    expired: Vec<Event>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(EngineConfig::small())
    }

    fn with_config(config: EngineConfig) -> Harness {
        let engine = Engine::new(config);
        Harness { engine, sequence: Sequence(0), clock: T0, keys_issued: 0, expired: Vec::new() }
    }

    /// A small engine with one SKU created at `T0`.
    fn with_sku(create: CreateSku) -> Harness {
        let mut harness = Harness::new();
        harness.create_sku(create);
        harness
    }

    fn submit(&mut self, command: Command) -> Outcome {
        self.sequence = self.sequence.next();
        let sequenced = Sequenced { sequence: self.sequence, timestamp: self.clock, command };
        let expired = &mut self.expired;
        self.engine.apply_observed(&sequenced, &mut |event| expired.push(event))
    }

    /// A request key no other command of this harness used.
    fn fresh_key(&mut self) -> RequestKey {
        self.keys_issued += 1;
        RequestKey::from_u128(self.keys_issued)
    }

    fn run(&mut self, action: Action) -> Outcome {
        let key = self.fresh_key();
        self.run_keyed(key, action)
    }

    fn run_keyed(&mut self, key: RequestKey, action: Action) -> Outcome {
        self.submit(Command::Client { key, action })
    }

    /// [`Harness::run_keyed`], with whether the engine called the command a repeat.
    fn run_telling_repeats(&mut self, key: RequestKey, action: Action) -> (Outcome, bool) {
        self.sequence = self.sequence.next();
        let command = Command::Client { key, action };
        let sequenced = Sequenced { sequence: self.sequence, timestamp: self.clock, command };
        let expired = &mut self.expired;
        self.engine.apply_telling_repeats(&sequenced, &mut |event| expired.push(event))
    }

    fn advance(&mut self, ms: u64) {
        self.clock = self.clock.plus_ms(ms);
    }

    fn tick(&mut self) -> Outcome {
        self.submit(Command::Tick)
    }

    fn tick_at(&mut self, at: Timestamp) -> Outcome {
        self.clock = at;
        self.tick()
    }

    /// Runs `action` under a fresh key, expecting `rejection` and no change to the tables or
    /// the id generator.
    #[track_caller]
    fn refused(&mut self, action: Action, rejection: Rejection) {
        let key = self.fresh_key();
        self.refused_keyed(key, action, rejection);
    }

    /// [`Harness::refused`] under a given request key.
    #[track_caller]
    fn refused_keyed(&mut self, key: RequestKey, action: Action, rejection: Rejection) {
        // Settle the clock first, so that expiries already due are not taken for changes made
        // by the refused command.
        self.tick();
        let (tables, sizes, ids) = (self.engine.tables_digest(), self.sizes(), self.engine.ids);
        let outcome = self.run_keyed(key, action);
        assert_eq!(outcome, Outcome::Rejected(rejection), "{action:?}");
        assert_eq!(self.engine.tables_digest(), tables, "refused {action:?} changed the tables");
        assert_eq!(self.sizes(), sizes, "refused {action:?} changed a table or index size");
        assert_eq!(self.engine.ids, ids, "refused {action:?} consumed an id");
    }

    /// Entries in every table and index, which the tables digest does not see.
    fn sizes(&self) -> [usize; 12] {
        let e = &self.engine;
        [
            e.skus.len(),
            e.sku_index.len(),
            e.orders.len(),
            e.order_index.len(),
            e.finished.len(),
            e.orders_reserved as usize,
            e.holdings.len(),
            e.batches.len(),
            e.batch_index.len(),
            e.coupons.len(),
            e.coupon_index.len(),
            e.claims.len(),
        ]
    }

    fn query(&mut self, query: Query) -> Outcome {
        self.submit(Command::Query(query))
    }

    #[track_caller]
    fn sku(&mut self, sku: u64) -> SkuView {
        match self.query(Query::Sku(SkuId(sku))) {
            Outcome::Sku(view) => view,
            other => panic!("query of SKU {sku}: {other:?}"),
        }
    }

    #[track_caller]
    fn order(&mut self, order: OrderId) -> OrderView {
        match self.query(Query::Order(order)) {
            Outcome::Order(view) => view,
            other => panic!("query of order {order}: {other:?}"),
        }
    }

    #[track_caller]
    fn state(&mut self, order: OrderId) -> OrderState {
        self.order(order).state
    }

    #[track_caller]
    fn coupon(&mut self, coupon: CouponId) -> CouponView {
        match self.query(Query::Coupon(coupon)) {
            Outcome::Coupon(view) => view,
            other => panic!("query of coupon {coupon}: {other:?}"),
        }
    }

    #[track_caller]
    fn coupon_state(&mut self, coupon: CouponId) -> CouponState {
        self.coupon(coupon).state
    }

    #[track_caller]
    fn batch(&mut self, batch: u64) -> BatchView {
        match self.query(Query::Batch(BatchId(batch))) {
            Outcome::Batch(view) => view,
            other => panic!("query of batch {batch}: {other:?}"),
        }
    }

    #[track_caller]
    fn create_sku(&mut self, create: CreateSku) -> SkuView {
        match self.run(Action::CreateSku(create)) {
            Outcome::SkuCreated(view) => view,
            other => panic!("create {create:?}: {other:?}"),
        }
    }

    #[track_caller]
    fn create_batch(&mut self, create: CreateCouponBatch) -> BatchView {
        match self.run(Action::CreateCouponBatch(create)) {
            Outcome::BatchCreated(view) => view,
            other => panic!("create {create:?}: {other:?}"),
        }
    }

    /// Reserves and expects success; the new order's id.
    #[track_caller]
    fn reserved(&mut self, user: u64, sku: u64, qty: u32) -> OrderId {
        match self.run(act::reserve(user, sku, qty)) {
            Outcome::Reserved { order, .. } => order,
            other => panic!("reserve {qty} of SKU {sku} for user {user}: {other:?}"),
        }
    }

    #[track_caller]
    fn reserved_with(&mut self, user: u64, sku: u64, qty: u32, coupon: CouponId) -> OrderId {
        match self.run(act::reserve_with(user, sku, qty, coupon)) {
            Outcome::Reserved { order, .. } => order,
            other => panic!("reserve with coupon {coupon}: {other:?}"),
        }
    }

    /// Pays the order's amount with its standard reference and expects success.
    #[track_caller]
    fn paid(&mut self, order: OrderId) {
        let amount_cents = self.order(order).amount_cents;
        assert_eq!(self.run(act::pay(order, amount_cents)), Outcome::Paid { order });
    }

    #[track_caller]
    fn shipped(&mut self, order: OrderId) {
        assert_eq!(self.run(Action::Ship { order }), Outcome::Shipped { order });
    }

    #[track_caller]
    fn claimed(&mut self, user: u64, batch: u64) -> CouponId {
        match self.run(act::claim(user, batch)) {
            Outcome::CouponClaimed { coupon, .. } => coupon,
            other => panic!("claim from batch {batch} by user {user}: {other:?}"),
        }
    }

    /// Orders reported expired so far, in the order the engine reported them.
    fn expired_orders(&self) -> Vec<OrderId> {
        self.expired.iter().map(|Event::OrderExpired { order, .. }| *order).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// SKUs, restocks and the sale window.

#[test]
fn create_sku_reports_its_settings_with_all_stock_available() {
    // Goal: a new SKU is open, has all its stock available, and queries return the same view.
    let mut h = Harness::new();
    let create = CreateSku {
        per_user_limit: 2,
        sale_start: Some(T0),
        sale_end: Some(T0.plus_ms(60_000)),
        ..sku_spec(SKU)
    };
    let view = h.create_sku(create);
    let expected = SkuView {
        sku: SkuId(SKU),
        stock: 10,
        available: 10,
        reserved: 0,
        sold: 0,
        price_cents: PRICE_CENTS,
        per_user_limit: 2,
        open: true,
        payment_timeout_ms: TIMEOUT_MS,
        sale_start: Some(T0),
        sale_end: Some(T0.plus_ms(60_000)),
    };
    assert_eq!(view, expected);
    assert_eq!(h.sku(SKU), expected);
}

#[test]
fn create_sku_twice_is_sku_exists() {
    // Goal: an id in use is refused, even with different settings.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.refused(Action::CreateSku(CreateSku { stock: 99, ..sku_spec(SKU) }), Rejection::SkuExists);
    assert_eq!(h.sku(SKU).stock, 10);
}

#[test]
fn create_sku_with_zero_id_zero_timeout_or_empty_window_is_invalid_argument() {
    // Goal: out-of-range settings are refused: id 0, no payment time, a window ending at or
    // before its start.
    let mut h = Harness::new();
    let bad = [
        CreateSku { sku: SkuId(0), ..sku_spec(SKU) },
        CreateSku { payment_timeout_ms: 0, ..sku_spec(SKU) },
        CreateSku { sale_start: Some(T0), sale_end: Some(T0), ..sku_spec(SKU) },
        CreateSku { sale_start: Some(T0.plus_ms(1)), sale_end: Some(T0), ..sku_spec(SKU) },
    ];
    for create in bad {
        h.refused(Action::CreateSku(create), Rejection::InvalidArgument);
    }
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::UnknownSku);
}

#[test]
fn create_sku_beyond_skus_max_is_capacity_exhausted() {
    // Goal: the SKU table is bounded; the SKU past `skus_max` is refused.
    let mut h = Harness::with_config(EngineConfig { skus_max: 2, ..EngineConfig::small() });
    h.create_sku(sku_spec(1));
    h.create_sku(sku_spec(2));
    h.refused(Action::CreateSku(sku_spec(3)), Rejection::CapacityExhausted);
    assert_eq!(h.engine.status().skus, 2);
}

#[test]
fn restock_adds_units_to_stock_and_available() {
    // Goal: restocked units can be reserved at once; sold and reserved are untouched.
    let mut h = Harness::with_sku(CreateSku { stock: 1, ..sku_spec(SKU) });
    let order = h.reserved(ALICE, SKU, 1);
    h.paid(order);
    let Outcome::Restocked(view) = h.run(act::restock(SKU, 5)) else { panic!("not restocked") };
    assert_eq!((view.stock, view.available, view.reserved, view.sold), (6, 5, 0, 1));
    h.reserved(BOB, SKU, 5);
}

#[test]
fn restock_of_zero_units_or_an_unknown_sku_is_refused() {
    // Goal: restock needs at least one unit and an existing SKU.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.refused(act::restock(SKU, 0), Rejection::InvalidQty);
    h.refused(act::restock(99, 5), Rejection::UnknownSku);
}

#[test]
fn reserve_before_the_sale_window_is_sale_not_open() {
    // Goal: the window's start is inclusive: refused one millisecond before, accepted at it.
    let start = T0.plus_ms(10_000);
    let mut h = Harness::with_sku(CreateSku { sale_start: Some(start), ..sku_spec(SKU) });
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::SaleNotOpen);
    h.clock = Timestamp(start.0 - 1);
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::SaleNotOpen);
    h.clock = start;
    h.reserved(ALICE, SKU, 1);
}

#[test]
fn reserve_at_or_after_the_sale_end_is_sale_closed() {
    // Goal: the window's end is exclusive: accepted one millisecond before it, refused at it.
    let end = T0.plus_ms(10_000);
    let mut h = Harness::with_sku(CreateSku { sale_end: Some(end), ..sku_spec(SKU) });
    h.clock = Timestamp(end.0 - 1);
    h.reserved(ALICE, SKU, 1);
    h.clock = end;
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::SaleClosed);
    h.advance(1_000_000);
    h.refused(act::reserve(BOB, SKU, 1), Rejection::SaleClosed);
}

#[test]
fn closed_sale_refuses_reservations_until_reopened() {
    // Goal: an operator's close takes effect at once and a reopen restores sales; orders
    // already reserved stay payable while the sale is closed.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    let Outcome::SaleChanged(view) = h.run(Action::CloseSale { sku: SkuId(SKU) }) else {
        panic!("sale not closed")
    };
    assert!(!view.open);
    h.refused(act::reserve(BOB, SKU, 1), Rejection::SaleClosed);
    h.paid(order);
    let Outcome::SaleChanged(view) = h.run(Action::OpenSale { sku: SkuId(SKU) }) else {
        panic!("sale not opened")
    };
    assert!(view.open);
    h.reserved(BOB, SKU, 1);
}

#[test]
fn reopening_does_not_override_the_sale_window() {
    // Goal: `OpenSale` flips the operator switch only; the window still applies on both sides.
    let (start, end) = (T0.plus_ms(10_000), T0.plus_ms(20_000));
    let create = CreateSku { sale_start: Some(start), sale_end: Some(end), ..sku_spec(SKU) };
    let mut h = Harness::with_sku(create);
    assert!(matches!(h.run(Action::OpenSale { sku: SkuId(SKU) }), Outcome::SaleChanged(_)));
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::SaleNotOpen);
    h.clock = end;
    h.run(Action::CloseSale { sku: SkuId(SKU) });
    h.run(Action::OpenSale { sku: SkuId(SKU) });
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::SaleClosed);
}

#[test]
fn opening_or_closing_an_unknown_sku_is_unknown_sku() {
    // Goal: sale switches need an existing SKU.
    let mut h = Harness::new();
    h.refused(Action::OpenSale { sku: SkuId(99) }, Rejection::UnknownSku);
    h.refused(Action::CloseSale { sku: SkuId(99) }, Rejection::UnknownSku);
}

// ---------------------------------------------------------------------------------------------
// Reserve: the flash-sale hot path.

#[test]
fn reserve_takes_units_into_reserved_under_a_snowflake_order_id() {
    // Goal: a reservation moves units from available to reserved, answers an id in the
    // snowflake layout of the command's time and shard, and a deadline `now + timeout`.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let Outcome::Reserved { order, expires_at, amount_cents } = h.run(act::reserve(ALICE, SKU, 2))
    else {
        panic!("not reserved")
    };
    let millis = T0.0 - EPOCH_UNIX_MS;
    assert_eq!(Snowflake::parts(order.0), SnowflakeParts { millis, shard: SHARD, counter: 0 });
    assert_eq!(expires_at, T0.plus_ms(TIMEOUT_MS));
    assert_eq!(amount_cents, 2 * PRICE_CENTS);
    let view = h.sku(SKU);
    assert_eq!((view.stock, view.available, view.reserved, view.sold), (10, 8, 2, 0));
    let expected = OrderView {
        order,
        user: UserId(ALICE),
        sku: SkuId(SKU),
        qty: 2,
        amount_cents: 2 * PRICE_CENTS,
        state: OrderState::Reserved,
        created_at: T0,
        expires_at,
        coupon: None,
        payment_ref: None,
    };
    assert_eq!(h.order(order), expected);
    // The next id in the same millisecond counts up; a later millisecond starts at zero.
    let second = h.reserved(BOB, SKU, 1);
    assert_eq!(Snowflake::parts(second.0), SnowflakeParts { millis, shard: SHARD, counter: 1 });
    h.advance(1);
    let third = h.reserved(BOB, SKU, 1);
    let parts = SnowflakeParts { millis: millis + 1, shard: SHARD, counter: 0 };
    assert_eq!(Snowflake::parts(third.0), parts);
}

#[test]
fn order_ids_past_4096_in_one_millisecond_borrow_the_next_millisecond() {
    // Goal: a burst larger than the 12-bit counter keeps ids unique and increasing by taking
    // the next millisecond instead of waiting.
    let config =
        EngineConfig { orders_max: 8_192, request_keys_max: 8_192, ..EngineConfig::small() };
    let mut h = Harness::with_config(config);
    h.create_sku(CreateSku { stock: 5_000, ..sku_spec(SKU) });
    let mut last = OrderId(0);
    for _ in 0..4_097 {
        let order = h.reserved(ALICE, SKU, 1);
        assert!(order > last);
        last = order;
    }
    let millis = T0.0 - EPOCH_UNIX_MS + 1;
    assert_eq!(Snowflake::parts(last.0), SnowflakeParts { millis, shard: SHARD, counter: 0 });
}

#[test]
fn sold_out_rejects_the_next_buyer() {
    // Goal: reservations never take more than is available, and a request for more units than
    // are left takes none (all or nothing).
    let mut h = Harness::with_sku(CreateSku { stock: 3, ..sku_spec(SKU) });
    h.reserved(ALICE, SKU, 2);
    h.refused(act::reserve(BOB, SKU, 2), Rejection::SoldOut);
    h.reserved(BOB, SKU, 1);
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::SoldOut);
    let view = h.sku(SKU);
    assert_eq!((view.available, view.reserved, view.sold), (0, 3, 0));
}

#[test]
fn per_user_limit_counts_every_live_order_of_the_buyer() {
    // Goal: the limit applies to the sum over a buyer's orders, not to one order, and only to
    // that buyer.
    let mut h = Harness::with_sku(CreateSku { per_user_limit: 3, ..sku_spec(SKU) });
    h.refused(act::reserve(ALICE, SKU, 4), Rejection::LimitExceeded);
    h.reserved(ALICE, SKU, 2);
    h.reserved(ALICE, SKU, 1);
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::LimitExceeded);
    h.reserved(BOB, SKU, 3);
}

#[test]
fn per_user_limit_counts_paid_shipped_and_completed_orders() {
    // Goal: units stay counted against the limit for as long as the order is not cancelled,
    // expired or refunded — buying and receiving does not make room for more.
    let mut h = Harness::with_sku(CreateSku { per_user_limit: 1, ..sku_spec(SKU) });
    let order = h.reserved(ALICE, SKU, 1);
    h.paid(order);
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::LimitExceeded);
    h.shipped(order);
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::LimitExceeded);
    assert_eq!(h.run(act::complete(order, ALICE)), Outcome::Completed { order });
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::LimitExceeded);
}

#[test]
fn per_user_limit_is_freed_by_cancel_expiry_and_refund() {
    // Goal: units returned by a cancel, an expiry or a refund no longer count against the
    // buyer's limit.
    let mut h = Harness::with_sku(CreateSku { per_user_limit: 1, ..sku_spec(SKU) });
    let cancelled = h.reserved(ALICE, SKU, 1);
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::LimitExceeded);
    assert_eq!(h.run(act::cancel(cancelled, ALICE)), Outcome::Cancelled { order: cancelled });

    let expired = h.reserved(ALICE, SKU, 1);
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::LimitExceeded);
    h.advance(TIMEOUT_MS);
    h.tick();
    assert_eq!(h.state(expired), OrderState::Expired);

    let refunded = h.reserved(ALICE, SKU, 1);
    h.paid(refunded);
    h.refused(act::reserve(ALICE, SKU, 1), Rejection::LimitExceeded);
    assert_eq!(h.run(Action::Refund { order: refunded }), Outcome::Refunded { order: refunded });
    h.reserved(ALICE, SKU, 1);
}

#[test]
fn per_user_limit_near_u32_max_does_not_overflow() {
    // Goal: a limit at the top of its range is checked without overflow: units beyond it are
    // refused as `limit_exceeded`, not wrapped around into an allowed amount.
    let qty = 1 << 30;
    let config = EngineConfig { order_qty_max: qty, ..EngineConfig::small() };
    let mut h = Harness::with_config(config);
    let create = CreateSku { stock: u32::MAX, per_user_limit: u32::MAX, ..sku_spec(SKU) };
    h.create_sku(CreateSku { price_cents: 1, ..create });
    h.run(act::restock(SKU, u32::MAX));
    for _ in 0..3 {
        h.reserved(ALICE, SKU, qty);
    }
    h.refused(act::reserve(ALICE, SKU, qty), Rejection::LimitExceeded);
    h.reserved(ALICE, SKU, qty - 1);
}

#[test]
fn reserve_of_zero_or_more_than_order_qty_max_units_is_invalid_qty() {
    // Goal: quantities must lie in 1..=order_qty_max; the maximum itself is a valid quantity.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let qty_max = h.engine.config().order_qty_max;
    h.refused(act::reserve(ALICE, SKU, 0), Rejection::InvalidQty);
    h.refused(act::reserve(ALICE, SKU, qty_max + 1), Rejection::InvalidQty);
    h.refused(act::reserve(ALICE, SKU, u32::MAX), Rejection::InvalidQty);
    h.refused(act::reserve(ALICE, SKU, qty_max), Rejection::SoldOut);
}

#[test]
fn reserve_whose_amount_overflows_is_invalid_qty() {
    // Goal: price times quantity beyond u64 is refused rather than wrapped.
    let price_cents = u64::MAX / 2 + 1;
    let mut h = Harness::with_sku(CreateSku { price_cents, ..sku_spec(SKU) });
    h.refused(act::reserve(ALICE, SKU, 2), Rejection::InvalidQty);
    let Outcome::Reserved { amount_cents, .. } = h.run(act::reserve(ALICE, SKU, 1)) else {
        panic!("not reserved")
    };
    assert_eq!(amount_cents, price_cents);
}

#[test]
fn reserve_of_an_unknown_sku_is_unknown_sku() {
    // Goal: a SKU id never created is refused.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.refused(act::reserve(ALICE, 99, 1), Rejection::UnknownSku);
    h.refused(act::reserve(ALICE, 0, 1), Rejection::UnknownSku);
}

#[test]
fn reserve_by_user_zero_is_invalid_argument() {
    // Goal: user 0 is not a valid buyer.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.refused(act::reserve(0, SKU, 1), Rejection::InvalidArgument);
}

#[test]
fn reserve_with_every_kept_order_live_is_capacity_exhausted() {
    // Goal: the order table is bounded; live orders (reserved or paid) are never evicted, so a
    // new order waits until one of them finishes. The refusal is transient, so its request key
    // is not remembered and the same request succeeds once room frees up.
    let mut h = Harness::with_config(EngineConfig { orders_max: 2, ..EngineConfig::small() });
    h.create_sku(sku_spec(SKU));
    let first = h.reserved(ALICE, SKU, 1);
    h.reserved(BOB, SKU, 1);
    let (key, retried) = (client_key(1), act::reserve(BOB, SKU, 1));
    let keys = h.engine.status().request_keys;
    h.refused_keyed(key, retried, Rejection::CapacityExhausted);
    assert_eq!(h.engine.status().request_keys, keys);
    h.paid(first);
    h.refused_keyed(key, retried, Rejection::CapacityExhausted);
    h.run(Action::Refund { order: first });
    assert!(matches!(h.run_keyed(key, retried), Outcome::Reserved { .. }));
}

#[test]
fn reserve_with_the_holdings_table_full_is_capacity_exhausted() {
    // Goal: a new (user, SKU) holding under a per-user limit needs a free slot; existing
    // holdings and SKUs without a limit do not.
    let config = EngineConfig { holdings_max: 1, ..EngineConfig::small() };
    let mut h = Harness::with_config(config);
    h.create_sku(CreateSku { per_user_limit: 5, ..sku_spec(SKU) });
    h.create_sku(sku_spec(OTHER_SKU));
    let first = h.reserved(ALICE, SKU, 1);
    h.refused(act::reserve(BOB, SKU, 1), Rejection::CapacityExhausted);
    assert_eq!(h.engine.status().holdings, 1);
    let second = h.reserved(ALICE, SKU, 1);
    h.reserved(BOB, OTHER_SKU, 1);
    h.run(act::cancel(first, ALICE));
    h.refused(act::reserve(BOB, SKU, 1), Rejection::CapacityExhausted);
    h.run(act::cancel(second, ALICE));
    h.reserved(BOB, SKU, 1);
}

#[test]
fn full_order_table_evicts_the_oldest_finished_order() {
    // Goal: when the table is full, a new order takes the slot of the order that finished
    // first (not the one created first); the forgotten order is unknown from then on.
    let mut h = Harness::with_config(EngineConfig { orders_max: 3, ..EngineConfig::small() });
    h.create_sku(sku_spec(SKU));
    let first = h.reserved(ALICE, SKU, 1);
    let second = h.reserved(ALICE, SKU, 1);
    let third = h.reserved(BOB, SKU, 1);
    h.run(act::cancel(second, ALICE));
    h.run(act::cancel(first, ALICE));
    // Three kept, one live: the two cancelled ones give their slots to the next orders.
    let status = h.engine.status();
    assert_eq!((status.orders, status.orders_live, status.orders_reserved), (3, 1, 1));
    let fourth = h.reserved(BOB, SKU, 1);
    assert_eq!(h.query(Query::Order(second)), Outcome::Rejected(Rejection::UnknownOrder));
    h.refused(act::pay(second, PRICE_CENTS), Rejection::UnknownOrder);
    assert_eq!(h.state(first), OrderState::Cancelled);
    let fifth = h.reserved(BOB, SKU, 1);
    assert_eq!(h.query(Query::Order(first)), Outcome::Rejected(Rejection::UnknownOrder));
    h.refused(act::reserve(BOB, SKU, 1), Rejection::CapacityExhausted);
    for order in [third, fourth, fifth] {
        assert_eq!(h.state(order), OrderState::Reserved);
    }
    let status = h.engine.status();
    assert_eq!((status.orders, status.orders_live), (3, 3), "every slot live: refused");
}

#[test]
fn an_evicted_orders_old_deadline_does_not_expire_the_new_order_in_its_slot() {
    // Goal: a deadline left behind by a cancelled order whose slot was reused fires into
    // nothing; the slot's new order keeps its own deadline.
    let mut h = Harness::with_config(EngineConfig { orders_max: 1, ..EngineConfig::small() });
    h.create_sku(sku_spec(SKU));
    h.create_sku(CreateSku { payment_timeout_ms: 2 * TIMEOUT_MS, ..sku_spec(OTHER_SKU) });
    let cancelled = h.reserved(ALICE, SKU, 1);
    h.run(act::cancel(cancelled, ALICE));
    h.advance(1);
    let order = h.reserved(BOB, OTHER_SKU, 1);
    h.tick_at(T0.plus_ms(TIMEOUT_MS));
    assert_eq!(h.state(order), OrderState::Reserved);
    assert!(h.expired.is_empty());
    h.tick_at(T0.plus_ms(1 + 2 * TIMEOUT_MS));
    assert_eq!(h.expired_orders(), vec![order]);
}

#[test]
fn stale_deadlines_are_swept_in_place_without_losing_a_live_one() {
    // Goal: cancelled orders leave their deadlines behind; when those fill the deadline queue
    // they are swept without growing it, and the live order's deadline still fires on time.
    let mut h = Harness::with_config(EngineConfig { orders_max: 2, ..EngineConfig::small() });
    h.create_sku(sku_spec(SKU));
    let live = h.reserved(ALICE, SKU, 1);
    let capacity = h.engine.deadlines.capacity();
    for _ in 0..4 * capacity {
        let order = h.reserved(BOB, SKU, 1);
        h.run(act::cancel(order, BOB));
    }
    assert_eq!(h.engine.deadlines.capacity(), capacity);
    h.tick_at(T0.plus_ms(TIMEOUT_MS));
    assert_eq!(h.expired_orders(), vec![live]);
}

// ---------------------------------------------------------------------------------------------
// The order state machine: pay, cancel, ship, complete, refund.

#[test]
fn pay_moves_units_from_reserved_to_sold() {
    // Goal: payment of the exact amount sells the units and records the payment reference.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 2);
    let outcome = h.run(act::pay(order, 2 * PRICE_CENTS));
    assert_eq!(outcome, Outcome::Paid { order });
    let view = h.sku(SKU);
    assert_eq!((view.available, view.reserved, view.sold), (8, 0, 2));
    let kept = h.order(order);
    assert_eq!(kept.state, OrderState::Paid);
    assert_eq!(kept.payment_ref, Some(act::payment_ref(order)));
    assert_eq!(h.engine.status().orders_reserved, 0);
}

#[test]
fn pay_with_a_wrong_amount_is_refused_naming_the_expected_amount() {
    // Goal: a payment that does not match the order's amount is refused and the order waits.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 2);
    let expected = Rejection::WrongAmount { expected_cents: 2 * PRICE_CENTS };
    h.refused(act::pay(order, 2 * PRICE_CENTS - 1), expected);
    h.refused(act::pay(order, 2 * PRICE_CENTS + 1), expected);
    h.refused(act::pay(order, 0), expected);
    assert_eq!(h.state(order), OrderState::Reserved);
    h.paid(order);
}

#[test]
fn paying_again_with_the_same_reference_answers_paid_and_another_is_a_conflict() {
    // Goal: a payment callback delivered twice is harmless at every later stage of the order;
    // a second, different payment for the same order is a conflict the payment side must see.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.paid(order);
    for stage in 0..3 {
        h.tick();
        let tables = h.engine.tables_digest();
        assert_eq!(h.run(act::pay(order, PRICE_CENTS)), Outcome::Paid { order });
        assert_eq!(h.engine.tables_digest(), tables);
        h.refused(act::pay_ref(order, 0xFEED, PRICE_CENTS), Rejection::PaymentConflict);
        match stage {
            0 => h.shipped(order),
            1 => assert_eq!(h.run(act::complete(order, ALICE)), Outcome::Completed { order }),
            _ => {}
        }
    }
    assert_eq!(h.order(order).payment_ref, Some(act::payment_ref(order)));
    assert_eq!(h.sku(SKU).sold, 1);
}

#[test]
fn payment_for_an_expired_order_is_refused_as_expired() {
    // Goal: a late payment is refused naming the expired state, so the payment side refunds.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.tick_at(T0.plus_ms(TIMEOUT_MS));
    let expired = Rejection::InvalidState { current: OrderState::Expired };
    h.refused(act::pay(order, PRICE_CENTS), expired);
    assert_eq!(h.sku(SKU).available, 10);
}

#[test]
fn payment_arriving_at_the_deadline_finds_the_order_expired() {
    // Goal: the payment's own timestamp moves time to the deadline before it is decided, so a
    // payment stamped at the deadline is late even without a tick in between.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.clock = T0.plus_ms(TIMEOUT_MS);
    let outcome = h.run(act::pay(order, PRICE_CENTS));
    assert_eq!(
        outcome,
        Outcome::Rejected(Rejection::InvalidState { current: OrderState::Expired })
    );
    assert_eq!(h.expired_orders(), vec![order]);
}

#[test]
fn payment_for_a_cancelled_order_is_refused_as_cancelled() {
    // Goal: a payment racing a cancel loses and is reported as cancelled.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.run(act::cancel(order, ALICE));
    let cancelled = Rejection::InvalidState { current: OrderState::Cancelled };
    h.refused(act::pay(order, PRICE_CENTS), cancelled);
}

#[test]
fn payment_for_a_refunded_order_is_refused_as_refunded() {
    // Goal: once refunded, even the original payment reference is refused naming the state.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.paid(order);
    h.run(Action::Refund { order });
    let refunded = Rejection::InvalidState { current: OrderState::Refunded };
    h.refused(act::pay(order, PRICE_CENTS), refunded);
}

#[test]
fn payment_for_an_unknown_order_is_unknown_order() {
    // Goal: an order id never issued is refused.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.refused(act::pay(OrderId(12_345), PRICE_CENTS), Rejection::UnknownOrder);
}

#[test]
fn paid_order_does_not_expire_at_its_deadline() {
    // Goal: a payment disarms the deadline; its units stay sold.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.paid(order);
    h.tick_at(T0.plus_ms(10 * TIMEOUT_MS));
    assert_eq!(h.state(order), OrderState::Paid);
    assert!(h.expired.is_empty());
    assert_eq!(h.sku(SKU).sold, 1);
}

#[test]
fn buyer_cancels_own_reserved_order_and_units_return() {
    // Goal: a buyer's cancel ends the order and gives its units back to available.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 3);
    assert_eq!(h.run(act::cancel(order, ALICE)), Outcome::Cancelled { order });
    assert_eq!(h.state(order), OrderState::Cancelled);
    let view = h.sku(SKU);
    assert_eq!((view.available, view.reserved, view.sold), (10, 0, 0));
    assert_eq!(h.engine.status().orders_reserved, 0);
    let cancelled = Rejection::InvalidState { current: OrderState::Cancelled };
    h.refused(act::cancel(order, ALICE), cancelled);
}

#[test]
fn cancelling_someone_elses_order_is_not_owner() {
    // Goal: a buyer cannot cancel another buyer's order.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.refused(act::cancel(order, BOB), Rejection::NotOwner);
    assert_eq!(h.state(order), OrderState::Reserved);
}

#[test]
fn cancel_after_payment_is_invalid_state_paid() {
    // Goal: a paid order is no longer the buyer's to cancel (a refund is the way back).
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.paid(order);
    let paid = Rejection::InvalidState { current: OrderState::Paid };
    h.refused(act::cancel(order, ALICE), paid);
    h.refused(Action::AdminCancel { order }, paid);
}

#[test]
fn cancel_at_the_deadline_finds_the_order_expired() {
    // Goal: a cancel stamped at the deadline arrives after the expiry it triggered.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.tick_at(T0.plus_ms(TIMEOUT_MS));
    let expired = Rejection::InvalidState { current: OrderState::Expired };
    h.refused(act::cancel(order, ALICE), expired);
    h.refused(Action::AdminCancel { order }, expired);
}

#[test]
fn admin_cancel_releases_any_buyers_reserved_order() {
    // Goal: an operator can cancel a reserved order without being its buyer.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 2);
    assert_eq!(h.run(Action::AdminCancel { order }), Outcome::Cancelled { order });
    assert_eq!(h.state(order), OrderState::Cancelled);
    assert_eq!(h.sku(SKU).available, 10);
}

#[test]
fn cancels_of_an_unknown_order_are_unknown_order() {
    // Goal: cancel, admin cancel, ship, complete and refund of an unknown order are refused.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = OrderId(12_345);
    h.refused(act::cancel(order, ALICE), Rejection::UnknownOrder);
    h.refused(Action::AdminCancel { order }, Rejection::UnknownOrder);
    h.refused(Action::Ship { order }, Rejection::UnknownOrder);
    h.refused(act::complete(order, ALICE), Rejection::UnknownOrder);
    h.refused(Action::Refund { order }, Rejection::UnknownOrder);
}

#[test]
fn ship_only_from_paid() {
    // Goal: only a paid order ships, once; the units stay sold.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.refused(Action::Ship { order }, Rejection::InvalidState { current: OrderState::Reserved });
    h.paid(order);
    h.shipped(order);
    assert_eq!(h.state(order), OrderState::Shipped);
    h.refused(Action::Ship { order }, Rejection::InvalidState { current: OrderState::Shipped });
    let view = h.sku(SKU);
    assert_eq!((view.available, view.reserved, view.sold), (9, 0, 1));
}

#[test]
fn complete_only_by_the_buyer_after_shipping() {
    // Goal: receipt is confirmed by the buyer, only for a shipped order, once.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.refused(
        act::complete(order, ALICE),
        Rejection::InvalidState { current: OrderState::Reserved },
    );
    h.paid(order);
    h.refused(act::complete(order, ALICE), Rejection::InvalidState { current: OrderState::Paid });
    h.shipped(order);
    h.refused(act::complete(order, BOB), Rejection::NotOwner);
    assert_eq!(h.run(act::complete(order, ALICE)), Outcome::Completed { order });
    assert_eq!(h.state(order), OrderState::Completed);
    let completed = Rejection::InvalidState { current: OrderState::Completed };
    h.refused(act::complete(order, ALICE), completed);
    h.refused(Action::Refund { order }, completed);
    h.refused(act::cancel(order, ALICE), completed);
    assert_eq!(h.sku(SKU).sold, 1);
}

#[test]
fn refund_only_from_paid_returns_units_to_available() {
    // Goal: a paid order can be refunded before shipping, once, giving its units back; a
    // reserved or shipped order cannot.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 2);
    let reserved = Rejection::InvalidState { current: OrderState::Reserved };
    h.refused(Action::Refund { order }, reserved);
    h.paid(order);
    assert_eq!(h.run(Action::Refund { order }), Outcome::Refunded { order });
    assert_eq!(h.state(order), OrderState::Refunded);
    let view = h.sku(SKU);
    assert_eq!((view.available, view.reserved, view.sold), (10, 0, 0));
    let refunded = Rejection::InvalidState { current: OrderState::Refunded };
    h.refused(Action::Refund { order }, refunded);
    h.refused(Action::Ship { order }, refunded);

    let shipped = h.reserved(ALICE, SKU, 1);
    h.paid(shipped);
    h.shipped(shipped);
    let refused = Rejection::InvalidState { current: OrderState::Shipped };
    h.refused(Action::Refund { order: shipped }, refused);
}

// ---------------------------------------------------------------------------------------------
// Time and payment deadlines.

#[test]
fn tick_expires_an_order_at_exactly_its_deadline_and_not_before() {
    // Goal: the deadline fires when time reaches `expires_at`, not a millisecond earlier, and
    // the expiry is reported with the units it returned.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 2);
    let deadline = T0.plus_ms(TIMEOUT_MS);
    assert_eq!(
        h.tick_at(Timestamp(deadline.0 - 1)),
        Outcome::Ticked { now: Timestamp(deadline.0 - 1) }
    );
    assert_eq!(h.state(order), OrderState::Reserved);
    assert!(h.expired.is_empty());
    assert_eq!(h.tick_at(deadline), Outcome::Ticked { now: deadline });
    assert_eq!(h.state(order), OrderState::Expired);
    let event = Event::OrderExpired { order, user: UserId(ALICE), sku: SkuId(SKU), qty: 2 };
    assert_eq!(h.expired, vec![event]);
    let view = h.sku(SKU);
    assert_eq!((view.available, view.reserved), (10, 0));
    assert_eq!(h.engine.status().orders_reserved, 0);
}

#[test]
fn any_client_command_that_moves_time_fires_due_expiries() {
    // Goal: deadlines do not wait for a tick: an unrelated command, even a refused one,
    // expires every order due at its timestamp before it is decided.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.create_sku(sku_spec(OTHER_SKU));
    let first = h.reserved(ALICE, SKU, 1);
    h.advance(TIMEOUT_MS);
    assert!(matches!(h.run(act::restock(OTHER_SKU, 1)), Outcome::Restocked(_)));
    assert_eq!(h.expired_orders(), vec![first]);

    let second = h.reserved(ALICE, SKU, 1);
    h.advance(TIMEOUT_MS);
    assert_eq!(h.run(act::reserve(ALICE, 99, 1)), Outcome::Rejected(Rejection::UnknownSku));
    assert_eq!(h.expired_orders(), vec![first, second]);
    assert_eq!(h.state(second), OrderState::Expired);
}

#[test]
fn queries_and_snapshots_do_not_move_time() {
    // Goal: reads and snapshot requests stamped later than *now* neither advance time nor fire
    // deadlines, so a journal may leave them out.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    h.advance(2 * TIMEOUT_MS);
    assert_eq!(h.state(order), OrderState::Reserved);
    assert!(matches!(h.submit(Command::Snapshot), Outcome::SnapshotRequested { .. }));
    assert_eq!(h.state(order), OrderState::Reserved);
    assert_eq!(h.engine.now(), T0);
    assert!(h.expired.is_empty());
}

#[test]
fn expiries_fire_in_deadline_order_then_order_id_order() {
    // Goal: when one time step passes several deadlines, orders expire earliest deadline
    // first, and orders with the same deadline in id order, whatever the reservation order.
    let mut h = Harness::with_sku(CreateSku { payment_timeout_ms: 5_000, ..sku_spec(SKU) });
    h.create_sku(CreateSku { payment_timeout_ms: 1_000, ..sku_spec(OTHER_SKU) });
    let late = h.reserved(ALICE, SKU, 1);
    h.advance(1);
    let early = h.reserved(BOB, OTHER_SKU, 1);
    let early_too = h.reserved(ALICE, OTHER_SKU, 1);
    h.tick_at(T0.plus_ms(10_000));
    assert_eq!(h.expired_orders(), vec![early, early_too, late]);
}

#[test]
fn time_never_moves_backwards_for_a_command_stamped_earlier() {
    // Goal: producers stamp concurrently, so a command may carry an older timestamp; *now*
    // stays at the latest stamp and the command is decided at that time.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let later = T0.plus_ms(5_000);
    h.tick_at(later);
    h.clock = T0.plus_ms(1_000);
    assert_eq!(h.tick(), Outcome::Ticked { now: later });
    let Outcome::Reserved { order, expires_at, .. } = h.run(act::reserve(ALICE, SKU, 1)) else {
        panic!("not reserved")
    };
    assert_eq!(expires_at, later.plus_ms(TIMEOUT_MS));
    assert_eq!(h.order(order).created_at, later);
    assert_eq!(Snowflake::parts(order.0).millis, later.0 - EPOCH_UNIX_MS);
    assert_eq!(h.engine.now(), later);
}

// ---------------------------------------------------------------------------------------------
// Coupon batches and claims.

#[test]
fn create_batch_reports_its_settings_with_every_coupon_remaining() {
    // Goal: a new batch has all its coupons left and queries return the same view.
    let mut h = Harness::new();
    let view = h.create_batch(CreateCouponBatch { per_user_limit: 2, ..batch_spec(BATCH) });
    let expected = BatchView {
        batch: BatchId(BATCH),
        quantity: 5,
        remaining: 5,
        per_user_limit: 2,
        discount_cents: DISCOUNT_CENTS,
        min_amount_cents: PRICE_CENTS,
        valid_from: T0,
        valid_until: T0.plus_ms(VALIDITY_MS),
    };
    assert_eq!(view, expected);
    assert_eq!(h.batch(BATCH), expected);
}

#[test]
fn create_batch_twice_is_batch_exists() {
    // Goal: a batch id in use is refused.
    let mut h = Harness::new();
    h.create_batch(batch_spec(BATCH));
    let again = CreateCouponBatch { quantity: 50, ..batch_spec(BATCH) };
    h.refused(Action::CreateCouponBatch(again), Rejection::BatchExists);
    assert_eq!(h.batch(BATCH).quantity, 5);
}

#[test]
fn create_batch_with_zero_id_zero_quantity_or_empty_validity_is_invalid_argument() {
    // Goal: out-of-range batch settings are refused.
    let mut h = Harness::new();
    let bad = [
        CreateCouponBatch { batch: BatchId(0), ..batch_spec(BATCH) },
        CreateCouponBatch { quantity: 0, ..batch_spec(BATCH) },
        CreateCouponBatch { valid_until: T0, ..batch_spec(BATCH) },
        CreateCouponBatch { valid_from: T0.plus_ms(1), valid_until: T0, ..batch_spec(BATCH) },
    ];
    for create in bad {
        h.refused(Action::CreateCouponBatch(create), Rejection::InvalidArgument);
    }
    assert_eq!(h.query(Query::Batch(BatchId(BATCH))), Outcome::Rejected(Rejection::UnknownBatch));
}

#[test]
fn create_batch_beyond_batches_max_is_capacity_exhausted() {
    // Goal: the batch table is bounded.
    let mut h = Harness::with_config(EngineConfig { batches_max: 1, ..EngineConfig::small() });
    h.create_batch(batch_spec(BATCH));
    let next = Action::CreateCouponBatch(batch_spec(BATCH + 1));
    h.refused(next, Rejection::CapacityExhausted);
}

#[test]
fn claim_issues_an_available_coupon_under_a_snowflake_id() {
    // Goal: a claim takes one coupon from the batch, owned by the claimer, with an id from the
    // same snowflake sequence as orders.
    let mut h = Harness::new();
    h.create_batch(batch_spec(BATCH));
    let valid_until = T0.plus_ms(VALIDITY_MS);
    let Outcome::CouponClaimed { coupon, batch, valid_until: until } =
        h.run(act::claim(ALICE, BATCH))
    else {
        panic!("not claimed")
    };
    assert_eq!((batch, until), (BatchId(BATCH), valid_until));
    let millis = T0.0 - EPOCH_UNIX_MS;
    assert_eq!(Snowflake::parts(coupon.0), SnowflakeParts { millis, shard: SHARD, counter: 0 });
    let expected = CouponView {
        coupon,
        batch: BatchId(BATCH),
        user: UserId(ALICE),
        state: CouponState::Available,
        discount_cents: DISCOUNT_CENTS,
        valid_until,
    };
    assert_eq!(h.coupon(coupon), expected);
    assert_eq!(h.batch(BATCH).remaining, 4);
}

#[test]
fn claims_outside_the_validity_are_sale_not_open_or_sale_closed() {
    // Goal: claims open at `valid_from` (inclusive) and close at `valid_until` (exclusive).
    let (from, until) = (T0.plus_ms(10_000), T0.plus_ms(20_000));
    let mut h = Harness::new();
    let create = CreateCouponBatch { valid_from: from, valid_until: until, ..batch_spec(BATCH) };
    h.create_batch(create);
    h.refused(act::claim(ALICE, BATCH), Rejection::SaleNotOpen);
    h.clock = Timestamp(from.0 - 1);
    h.refused(act::claim(ALICE, BATCH), Rejection::SaleNotOpen);
    h.clock = from;
    h.claimed(ALICE, BATCH);
    h.clock = Timestamp(until.0 - 1);
    h.claimed(ALICE, BATCH);
    h.clock = until;
    h.refused(act::claim(ALICE, BATCH), Rejection::SaleClosed);
}

#[test]
fn claim_from_an_exhausted_batch_is_sold_out() {
    // Goal: coupons are never over-issued.
    let mut h = Harness::new();
    h.create_batch(CreateCouponBatch { quantity: 2, ..batch_spec(BATCH) });
    h.claimed(ALICE, BATCH);
    h.claimed(BOB, BATCH);
    h.refused(act::claim(3, BATCH), Rejection::SoldOut);
    assert_eq!(h.batch(BATCH).remaining, 0);
}

#[test]
fn claims_beyond_the_per_user_limit_are_limit_exceeded() {
    // Goal: one user claims at most `per_user_limit` coupons of a batch, even after using them.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.create_batch(CreateCouponBatch { per_user_limit: 2, ..batch_spec(BATCH) });
    let coupon = h.claimed(ALICE, BATCH);
    let order = h.reserved_with(ALICE, SKU, 1, coupon);
    h.paid(order);
    h.claimed(ALICE, BATCH);
    h.refused(act::claim(ALICE, BATCH), Rejection::LimitExceeded);
    h.claimed(BOB, BATCH);
}

#[test]
fn claim_from_an_unknown_batch_or_by_user_zero_is_refused() {
    // Goal: a claim needs an existing batch and a valid user.
    let mut h = Harness::new();
    h.create_batch(batch_spec(BATCH));
    h.refused(act::claim(ALICE, 99), Rejection::UnknownBatch);
    h.refused(act::claim(0, BATCH), Rejection::InvalidArgument);
}

#[test]
fn claim_beyond_coupons_max_is_capacity_exhausted() {
    // Goal: the coupon table is bounded, across batches.
    let mut h = Harness::with_config(EngineConfig { coupons_max: 2, ..EngineConfig::small() });
    h.create_batch(batch_spec(BATCH));
    h.create_batch(batch_spec(BATCH + 1));
    h.claimed(ALICE, BATCH);
    h.claimed(BOB, BATCH + 1);
    h.refused(act::claim(ALICE, BATCH + 1), Rejection::CapacityExhausted);
    assert_eq!(h.batch(BATCH + 1).remaining, 4);
}

// ---------------------------------------------------------------------------------------------
// Coupons on orders.

/// A harness with the standard SKU and batch, and one coupon claimed by Alice.
fn with_alices_coupon() -> (Harness, CouponId) {
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.create_batch(batch_spec(BATCH));
    let coupon = h.claimed(ALICE, BATCH);
    (h, coupon)
}

#[test]
fn coupon_on_reserve_takes_its_discount_and_locks_it() {
    // Goal: the order's amount is the gross minus the discount and the coupon is locked by it.
    let (mut h, coupon) = with_alices_coupon();
    let Outcome::Reserved { order, amount_cents, .. } =
        h.run(act::reserve_with(ALICE, SKU, 2, coupon))
    else {
        panic!("not reserved")
    };
    assert_eq!(amount_cents, 2 * PRICE_CENTS - DISCOUNT_CENTS);
    assert_eq!(h.order(order).coupon, Some(coupon));
    assert_eq!(h.order(order).amount_cents, amount_cents);
    assert_eq!(h.coupon_state(coupon), CouponState::Locked(order));
}

#[test]
fn paying_uses_the_locked_coupon() {
    // Goal: the discounted amount pays the order and spends the coupon for good.
    let (mut h, coupon) = with_alices_coupon();
    let order = h.reserved_with(ALICE, SKU, 1, coupon);
    let full = Rejection::WrongAmount { expected_cents: PRICE_CENTS - DISCOUNT_CENTS };
    h.refused(act::pay(order, PRICE_CENTS), full);
    assert_eq!(h.run(act::pay(order, PRICE_CENTS - DISCOUNT_CENTS)), Outcome::Paid { order });
    assert_eq!(h.coupon_state(coupon), CouponState::Used(order));
    h.tick_at(T0.plus_ms(VALIDITY_MS));
    assert_eq!(h.coupon_state(coupon), CouponState::Used(order));
}

#[test]
fn cancel_and_expiry_release_the_coupon_for_another_order() {
    // Goal: a coupon locked by an order that is cancelled or expires is free to use again.
    let (mut h, coupon) = with_alices_coupon();
    let cancelled = h.reserved_with(ALICE, SKU, 1, coupon);
    h.run(act::cancel(cancelled, ALICE));
    assert_eq!(h.coupon_state(coupon), CouponState::Available);
    let expired = h.reserved_with(ALICE, SKU, 1, coupon);
    h.tick_at(T0.plus_ms(TIMEOUT_MS));
    assert_eq!(h.state(expired), OrderState::Expired);
    assert_eq!(h.coupon_state(coupon), CouponState::Available);
    let order = h.reserved_with(ALICE, SKU, 1, coupon);
    assert_eq!(h.coupon_state(coupon), CouponState::Locked(order));
}

#[test]
fn refund_keeps_the_coupon_spent() {
    // Goal: a refund returns units, not the coupon: it stays used by the refunded order.
    let (mut h, coupon) = with_alices_coupon();
    let order = h.reserved_with(ALICE, SKU, 1, coupon);
    h.paid(order);
    h.run(Action::Refund { order });
    assert_eq!(h.coupon_state(coupon), CouponState::Used(order));
    h.refused(act::reserve_with(ALICE, SKU, 1, coupon), Rejection::CouponInvalid);
}

#[test]
fn someone_elses_coupon_is_coupon_invalid() {
    // Goal: a coupon applies only to its owner's orders.
    let (mut h, coupon) = with_alices_coupon();
    h.refused(act::reserve_with(BOB, SKU, 1, coupon), Rejection::CouponInvalid);
}

#[test]
fn locked_or_used_coupon_is_coupon_invalid() {
    // Goal: a coupon serves one order at a time, and only one order ever once paid.
    let (mut h, coupon) = with_alices_coupon();
    let order = h.reserved_with(ALICE, SKU, 1, coupon);
    h.refused(act::reserve_with(ALICE, SKU, 1, coupon), Rejection::CouponInvalid);
    h.paid(order);
    h.refused(act::reserve_with(ALICE, SKU, 1, coupon), Rejection::CouponInvalid);
}

#[test]
fn expired_coupon_is_coupon_invalid() {
    // Goal: a coupon cannot be applied from its batch's `valid_until` on.
    let (mut h, coupon) = with_alices_coupon();
    h.clock = Timestamp(T0.plus_ms(VALIDITY_MS).0 - 1);
    let order = h.reserved_with(ALICE, SKU, 1, coupon);
    h.run(act::cancel(order, ALICE));
    h.clock = T0.plus_ms(VALIDITY_MS);
    h.refused(act::reserve_with(ALICE, SKU, 1, coupon), Rejection::CouponInvalid);
}

#[test]
fn coupon_on_an_order_below_its_minimum_is_coupon_invalid() {
    // Goal: the minimum is compared with the amount before discount, inclusively.
    let (mut h, coupon) = with_alices_coupon();
    h.create_sku(CreateSku { price_cents: PRICE_CENTS / 2, ..sku_spec(OTHER_SKU) });
    h.refused(act::reserve_with(ALICE, OTHER_SKU, 1, coupon), Rejection::CouponInvalid);
    let order = h.reserved_with(ALICE, OTHER_SKU, 2, coupon);
    assert_eq!(h.order(order).amount_cents, PRICE_CENTS - DISCOUNT_CENTS);
}

#[test]
fn unknown_coupon_on_reserve_is_unknown_coupon() {
    // Goal: a coupon id never issued is refused, and the reservation with it is not made.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.refused(act::reserve_with(ALICE, SKU, 1, CouponId(12_345)), Rejection::UnknownCoupon);
}

#[test]
fn discount_larger_than_the_order_makes_it_free() {
    // Goal: the amount never goes below zero; a free order is paid with zero.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let create = CreateCouponBatch { discount_cents: 5 * PRICE_CENTS, ..batch_spec(BATCH) };
    h.create_batch(create);
    let coupon = h.claimed(ALICE, BATCH);
    let order = h.reserved_with(ALICE, SKU, 1, coupon);
    assert_eq!(h.order(order).amount_cents, 0);
    assert_eq!(h.run(act::pay(order, 0)), Outcome::Paid { order });
}

#[test]
fn unused_coupon_reads_expired_from_the_end_of_its_validity() {
    // Goal: an available coupon turns expired exactly at `valid_until`; a locked one stays
    // locked, and reads expired once its order is cancelled after that.
    let (mut h, coupon) = with_alices_coupon();
    let locked = h.claimed(ALICE, BATCH);
    let until = T0.plus_ms(VALIDITY_MS);
    h.clock = Timestamp(until.0 - 10_000);
    let order = h.reserved_with(ALICE, SKU, 1, locked);
    h.tick_at(Timestamp(until.0 - 1));
    assert_eq!(h.coupon_state(coupon), CouponState::Available);
    h.tick_at(until);
    assert_eq!(h.coupon_state(coupon), CouponState::Expired);
    assert_eq!(h.coupon_state(locked), CouponState::Locked(order));
    h.run(act::cancel(order, ALICE));
    assert_eq!(h.coupon_state(locked), CouponState::Expired);
}

#[test]
fn order_that_locked_a_coupon_before_its_expiry_can_still_be_paid() {
    // Goal: validity is checked when a coupon is applied; the order keeps its discount and
    // spends the coupon even when paid after the validity ended.
    let (mut h, coupon) = with_alices_coupon();
    let until = T0.plus_ms(VALIDITY_MS);
    h.clock = Timestamp(until.0 - 1);
    let order = h.reserved_with(ALICE, SKU, 1, coupon);
    h.clock = until;
    assert_eq!(h.run(act::pay(order, PRICE_CENTS - DISCOUNT_CENTS)), Outcome::Paid { order });
    assert_eq!(h.coupon_state(coupon), CouponState::Used(order));
}

// ---------------------------------------------------------------------------------------------
// Idempotency.

/// A request key far from the ones the harness issues.
fn client_key(n: u128) -> RequestKey {
    RequestKey::from_u128((1 << 100) + n)
}

#[test]
fn retry_with_the_same_key_returns_the_original_outcome_and_changes_nothing() {
    // Goal: a retried reservation or claim answers exactly what the first attempt did and
    // takes no second unit, coupon or id.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.create_batch(batch_spec(BATCH));
    let actions = [act::reserve(ALICE, SKU, 2), act::claim(ALICE, BATCH)];
    for (n, action) in actions.into_iter().enumerate() {
        let key = client_key(n as u128);
        let original = h.run_keyed(key, action);
        assert!(!original.is_rejected(), "{original:?}");
        h.advance(1_000);
        h.tick();
        let (tables, ids, status) = (h.engine.tables_digest(), h.engine.ids, h.engine.status());
        assert_eq!(h.run_keyed(key, action), original);
        assert_eq!(h.engine.tables_digest(), tables);
        assert_eq!(h.engine.ids, ids);
        assert_eq!(h.engine.status().request_keys, status.request_keys);
    }
    assert_eq!(h.sku(SKU).available, 8);
    assert_eq!(h.batch(BATCH).remaining, 4);
}

#[test]
fn retry_of_a_refused_command_returns_the_original_refusal() {
    // Goal: a refusal is an outcome like any other: a retry under the same key answers it
    // again even when the command would now succeed; a new key is a new attempt.
    let mut h = Harness::with_sku(CreateSku { stock: 1, ..sku_spec(SKU) });
    let bobs = h.reserved(BOB, SKU, 1);
    let key = client_key(1);
    h.refused_keyed(key, act::reserve(ALICE, SKU, 1), Rejection::SoldOut);
    h.run(act::cancel(bobs, BOB));
    h.refused_keyed(key, act::reserve(ALICE, SKU, 1), Rejection::SoldOut);
    h.reserved(ALICE, SKU, 1);
}

#[test]
fn a_retry_answered_from_the_key_table_is_told_as_a_repeat() {
    // Goal: what an export marks as a repeat is exactly a retry answered with the outcome first
    // given (a refusal too); neither the first command, nor a key reused for another command,
    // nor a retry after the key window (executed anew) is one.
    let mut h = Harness::with_sku(CreateSku { stock: 1, ..sku_spec(SKU) });
    let (key, sold_out) = (client_key(1), client_key(2));
    let (first, repeat) = h.run_telling_repeats(key, act::reserve(ALICE, SKU, 1));
    assert!(matches!(first, Outcome::Reserved { .. }) && !repeat, "{first:?}");
    assert_eq!(h.run_telling_repeats(key, act::reserve(ALICE, SKU, 1)), (first, true));
    let (reused, repeat) = h.run_telling_repeats(key, act::reserve(ALICE, SKU, 2));
    assert_eq!((reused, repeat), (Outcome::Rejected(Rejection::RequestKeyReused), false));
    let refused = h.run_telling_repeats(sold_out, act::reserve(BOB, SKU, 1));
    assert_eq!(refused, (Outcome::Rejected(Rejection::SoldOut), false));
    let again = h.run_telling_repeats(sold_out, act::reserve(BOB, SKU, 1));
    assert_eq!(again, (Outcome::Rejected(Rejection::SoldOut), true));
    h.advance(h.engine.config().request_key_window_ms + 1);
    let (anew, repeat) = h.run_telling_repeats(sold_out, act::reserve(BOB, SKU, 1));
    assert!(!repeat, "a retry after the key window is a new command: {anew:?}");
}

#[test]
fn same_key_for_a_different_command_is_request_key_reused() {
    // Goal: a key names one command; reusing it for another is refused without touching the
    // original, whose retry still answers the original outcome.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let key = client_key(1);
    let original = h.run_keyed(key, act::reserve(ALICE, SKU, 1));
    let reused = Rejection::RequestKeyReused;
    h.refused_keyed(key, act::reserve(ALICE, SKU, 2), reused);
    h.refused_keyed(key, act::cancel(OrderId(1), ALICE), reused);
    assert_eq!(h.run_keyed(key, act::reserve(ALICE, SKU, 1)), original);
    assert_eq!(h.sku(SKU).available, 9);
}

#[test]
fn a_request_key_is_scoped_to_the_user_its_command_names() {
    // Goal: one buyer's request ids never collide with another's, nor with commands that
    // name no user: the same key is a new command for Bob and for an operator, and Alice's
    // retry still answers her original outcome.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let key = client_key(1);
    let alices = h.run_keyed(key, act::reserve(ALICE, SKU, 1));
    let bobs = h.run_keyed(key, act::reserve(BOB, SKU, 2));
    assert!(matches!(bobs, Outcome::Reserved { .. }), "{bobs:?}");
    assert_ne!(bobs, alices);
    assert!(matches!(h.run_keyed(key, act::restock(SKU, 1)), Outcome::Restocked(_)));
    assert_eq!(h.run_keyed(key, act::reserve(ALICE, SKU, 1)), alices);
    assert_eq!(h.run_keyed(key, act::reserve(BOB, SKU, 2)), bobs);
    assert_eq!(h.sku(SKU).available, 10 - 1 - 2 + 1);
}

#[test]
fn one_user_cannot_take_more_than_their_share_of_the_key_table() {
    // Goal: with a per-user limit, a user (or a service acting as one) who has that many keys
    // remembered gets `capacity_exhausted` for a new one — not remembered, so the same
    // request succeeds once their older keys age out — while other users are served and the
    // user's own retries are still answered.
    let config = EngineConfig { request_keys_per_user_max: 3, ..EngineConfig::small() };
    let mut h = Harness::with_config(config);
    h.create_sku(CreateSku { payment_timeout_ms: 1_000_000, ..sku_spec(SKU) });
    let window_ms = h.engine.config().request_key_window_ms;
    let first = h.run_keyed(client_key(1), act::reserve(ALICE, SKU, 1));
    for n in 2..=3 {
        assert!(matches!(
            h.run_keyed(client_key(n), act::reserve(ALICE, SKU, 1)),
            Outcome::Reserved { .. }
        ));
    }
    let full = Rejection::CapacityExhausted;
    h.refused_keyed(client_key(4), act::reserve(ALICE, SKU, 1), full);
    assert_eq!(h.run_keyed(client_key(1), act::reserve(ALICE, SKU, 1)), first, "retries answer");
    assert!(
        matches!(h.run_keyed(client_key(4), act::reserve(BOB, SKU, 1)), Outcome::Reserved { .. }),
        "another user is served"
    );
    h.clock = T0.plus_ms(window_ms);
    assert!(
        matches!(h.run_keyed(client_key(4), act::reserve(ALICE, SKU, 1)), Outcome::Reserved { .. }),
        "once her keys aged out, the refused request goes through"
    );
    // The counts are derived from the remembered keys: a restored engine enforces the same.
    let restored = Engine::from_image(h.engine.config().clone(), &h.engine.to_image()).unwrap();
    assert_eq!(restored.state_digest(), h.engine.state_digest());
}

// ---------------------------------------------------------------------------------------------
// Per-user quotas: no user takes more than a share of the order and key tables.

const CAROL: u64 = 3;
const MALLORY: u64 = 666;

/// A small engine with a live-order quota of `orders` (and no key quota), and one SKU of 100
/// units with no per-user limit and a 30 s payment timeout.
fn with_order_quota(orders: u16) -> Harness {
    let config = EngineConfig { orders_per_user_max: orders, ..EngineConfig::small() };
    let mut h = Harness::with_config(config);
    h.create_sku(CreateSku { stock: 100, ..sku_spec(SKU) });
    h
}

/// Each user's share as the engine counts it, sorted: (user, keys, live orders).
fn shares(engine: &Engine) -> Vec<(u64, u32, u32)> {
    let mut shares: Vec<_> =
        engine.shares.iter().map(|(user, held)| (user.get(), held.keys, held.orders)).collect();
    shares.sort_unstable();
    shares
}

#[test]
fn a_user_at_the_live_order_quota_is_refused_and_others_are_not() {
    // Goal: a user with as many live orders (reserved, paid or shipped) as the quota allows
    // gets `capacity_exhausted` for another reservation — nothing changed, the refusal not
    // remembered — while other users reserve; once one of the orders ends, the same request
    // goes through.
    let mut h = with_order_quota(3);
    let orders = [(); 3].map(|()| h.reserved(ALICE, SKU, 1));
    h.paid(orders[0]);
    h.shipped(orders[0]);
    h.paid(orders[1]);
    let (key, again) = (client_key(1), act::reserve(ALICE, SKU, 1));
    let keys = h.engine.status().request_keys;
    h.refused_keyed(key, again, Rejection::CapacityExhausted);
    assert_eq!(h.engine.status().request_keys, keys, "the refusal is not remembered");
    assert_eq!(shares(&h.engine), [(ALICE, 0, 3)]);
    for _ in 0..3 {
        h.reserved(BOB, SKU, 1);
    }
    h.refused(act::reserve(BOB, SKU, 1), Rejection::CapacityExhausted);
    h.reserved(CAROL, SKU, 2);
    assert_eq!(h.run(act::cancel(orders[2], ALICE)), Outcome::Cancelled { order: orders[2] });
    assert!(matches!(h.run_keyed(key, again), Outcome::Reserved { .. }));
    assert_eq!(shares(&h.engine), [(ALICE, 0, 3), (BOB, 0, 3), (CAROL, 0, 1)]);
}

#[test]
fn the_live_order_quota_frees_when_an_order_is_cancelled_expires_is_refunded_or_completed() {
    // Goal: every way out of the live states gives the place back — the buyer's cancel, an
    // operator's cancel, expiry, refund, completion — and paying or shipping does not.
    let mut h = with_order_quota(1);
    let full = Rejection::CapacityExhausted;
    let first = h.reserved(ALICE, SKU, 1);
    h.refused(act::reserve(ALICE, SKU, 1), full);
    h.run(act::cancel(first, ALICE));
    let second = h.reserved(ALICE, SKU, 1);
    h.refused(act::reserve(ALICE, SKU, 1), full);
    h.run(Action::AdminCancel { order: second });
    let third = h.reserved(ALICE, SKU, 1);
    h.refused(act::reserve(ALICE, SKU, 1), full);
    h.advance(TIMEOUT_MS);
    h.tick();
    assert_eq!(h.expired_orders(), [third]);
    let fourth = h.reserved(ALICE, SKU, 1);
    h.paid(fourth);
    h.refused(act::reserve(ALICE, SKU, 1), full);
    h.run(Action::Refund { order: fourth });
    let fifth = h.reserved(ALICE, SKU, 1);
    h.paid(fifth);
    h.shipped(fifth);
    h.refused(act::reserve(ALICE, SKU, 1), full);
    assert_eq!(h.run(act::complete(fifth, ALICE)), Outcome::Completed { order: fifth });
    h.reserved(ALICE, SKU, 1);
    assert_eq!(shares(&h.engine), [(ALICE, 0, 1)]);
}

#[test]
fn one_key_and_order_count_per_user_is_kept_and_emptied_shares_are_forgotten() {
    // Goal: the key and order quotas share one entry per user; a user whose keys aged out and
    // whose orders all ended has no entry left, so the table holds only users who hold
    // something.
    let config = EngineConfig {
        request_keys_per_user_max: 4,
        orders_per_user_max: 2,
        ..EngineConfig::small()
    };
    let window_ms = config.request_key_window_ms;
    let mut h = Harness::with_config(config);
    h.create_sku(CreateSku { payment_timeout_ms: 2 * window_ms, ..sku_spec(SKU) });
    let order = h.reserved(ALICE, SKU, 1);
    h.refused(act::reserve(ALICE, SKU, 50), Rejection::SoldOut);
    h.reserved(BOB, SKU, 1);
    assert_eq!(shares(&h.engine), [(ALICE, 2, 1), (BOB, 1, 1)]);
    h.advance(window_ms);
    h.tick();
    assert_eq!(shares(&h.engine), [(ALICE, 0, 1), (BOB, 0, 1)]);
    h.run(act::cancel(order, ALICE));
    assert_eq!(shares(&h.engine), [(ALICE, 1, 0), (BOB, 0, 1)], "the cancel's own key");
    h.advance(window_ms);
    h.tick();
    assert_eq!(h.expired_orders().len(), 1, "Bob's order expired");
    assert_eq!(shares(&h.engine), []);
}

#[test]
fn a_restored_engine_counts_the_same_shares_and_answers_the_same() {
    // Goal: the shares are not in a snapshot; restore counts them again from the remembered
    // keys and the live orders, so the restored engine refuses and accepts exactly what the
    // original does.
    let config = EngineConfig {
        request_keys_per_user_max: 4,
        orders_per_user_max: 2,
        ..EngineConfig::small()
    };
    let mut a = Harness::with_config(config.clone());
    a.create_sku(CreateSku { stock: 100, ..sku_spec(SKU) });
    let paid = a.reserved(ALICE, SKU, 1);
    a.paid(paid);
    a.reserved(ALICE, SKU, 1);
    let cancelled = a.reserved(BOB, SKU, 1);
    a.run(act::cancel(cancelled, BOB));
    a.refused(act::reserve(BOB, SKU, 99), Rejection::SoldOut);
    let mut b = Harness::with_config(config.clone());
    b.engine = Engine::from_image(config, &a.engine.to_image()).expect("the image restores");
    (b.sequence, b.clock, b.keys_issued) = (a.sequence, a.clock, a.keys_issued);
    assert_eq!(shares(&b.engine), shares(&a.engine));
    assert_eq!(shares(&a.engine), [(ALICE, 2, 2), (BOB, 3, 0)]);
    let continuation = |h: &mut Harness| {
        [
            h.run(act::reserve(ALICE, SKU, 1)),
            h.run(act::reserve(BOB, SKU, 1)),
            h.run(act::reserve(BOB, SKU, 1)),
            h.run(act::reserve(CAROL, SKU, 1)),
        ]
    };
    let outcomes = continuation(&mut a);
    assert_eq!(continuation(&mut b), outcomes);
    let refused = Outcome::Rejected(Rejection::CapacityExhausted);
    assert_eq!(outcomes[0], refused, "Alice is at her live-order quota");
    assert!(matches!(outcomes[1], Outcome::Reserved { .. }), "Bob's fourth key");
    assert_eq!(outcomes[2], refused, "Bob is at his key quota");
    assert!(matches!(outcomes[3], Outcome::Reserved { .. }));
    assert_eq!(shares(&b.engine), shares(&a.engine));
}

#[test]
fn a_restore_under_lower_quotas_keeps_what_users_hold_and_refuses_more() {
    // Goal: lowering a quota is a change of configuration, not damage: a snapshot in which a
    // user holds more than the new quota restores, the user's orders go on (paid, cancelled),
    // and new ones are refused until the user is below the quota again.
    let mut a = with_order_quota(0);
    let orders = [(); 4].map(|()| a.reserved(ALICE, SKU, 1));
    let lower = EngineConfig { orders_per_user_max: 2, ..EngineConfig::small() };
    let mut b = Harness::with_config(lower.clone());
    b.engine = Engine::from_image(lower, &a.engine.to_image()).expect("over a quota restores");
    (b.sequence, b.clock, b.keys_issued) = (a.sequence, a.clock, a.keys_issued);
    assert_eq!(shares(&b.engine), [(ALICE, 0, 4)]);
    b.paid(orders[0]);
    b.refused(act::reserve(ALICE, SKU, 1), Rejection::CapacityExhausted);
    b.run(act::cancel(orders[1], ALICE));
    b.run(act::cancel(orders[2], ALICE));
    b.refused(act::reserve(ALICE, SKU, 1), Rejection::CapacityExhausted);
    b.run(act::cancel(orders[3], ALICE));
    b.reserved(ALICE, SKU, 1);
    b.refused(act::reserve(ALICE, SKU, 1), Rejection::CapacityExhausted);
}

/// What a flood by one user leaves for everyone else: the outcome of each of 40 other buyers'
/// reservations of a SKU with no limit, and of one unit each of 12 SKUs with a per-user limit.
fn after_a_flood(quotas: bool) -> (Vec<Outcome>, Vec<Outcome>) {
    let config = EngineConfig {
        orders_max: 64,
        holdings_max: 16,
        request_keys_max: 512,
        request_keys_per_user_max: if quotas { 16 } else { 0 },
        orders_per_user_max: if quotas { 4 } else { 0 },
        ..EngineConfig::small()
    };
    let mut h = Harness::with_config(config);
    h.create_sku(CreateSku { stock: 1_000, ..sku_spec(SKU) });
    let limited: Vec<u64> = (100..112).collect();
    for &sku in &limited {
        h.create_sku(CreateSku { per_user_limit: 1, ..sku_spec(sku) });
    }
    // Mallory floods: orders of every SKU, then cancels of orders that do not exist (refused,
    // but each remembered under its own key).
    for n in 0..200 {
        let sku = limited.get(n % 13).copied().unwrap_or(SKU);
        h.run(act::reserve(MALLORY, sku, 1));
    }
    for n in 0..400 {
        h.run(act::cancel(OrderId(n + 1), MALLORY));
    }
    let plain = (1..=40).map(|buyer| h.run(act::reserve(buyer, SKU, 1))).collect();
    let limited = limited.iter().map(|&sku| h.run(act::reserve(sku, sku, 1))).collect();
    (plain, limited)
}

#[test]
fn one_user_flooding_the_engine_leaves_other_buyers_reservations_unaffected() {
    // Goal: one user (or a service acting as one) sending more reservations and commands than
    // the order, holdings and key tables hold takes only their share of each, and every other
    // buyer still reserves. Without quotas the same flood fills the tables and refuses the
    // others: the control that shows the flood is big enough to matter.
    let reserved = |outcomes: &[Outcome]| {
        outcomes.iter().filter(|o| matches!(o, Outcome::Reserved { .. })).count()
    };
    let (plain, limited) = after_a_flood(true);
    assert_eq!((reserved(&plain), reserved(&limited)), (40, 12), "{plain:?} {limited:?}");
    let (plain, limited) = after_a_flood(false);
    let exhausted = Outcome::Rejected(Rejection::CapacityExhausted);
    assert!(plain.iter().all(|o| *o == exhausted), "{plain:?}");
    assert!(limited.iter().all(|o| *o == exhausted), "{limited:?}");
}

#[test]
fn memory_is_what_the_tables_allocate() {
    // Goal: `Engine::memory`, which `ringfence defaults` and the README quote, is what an
    // engine allocates for the configuration, with and without quotas; the share table takes
    // memory only when a quota is on.
    use std::mem::size_of;
    let quotas = EngineConfig {
        request_keys_per_user_max: 8,
        orders_per_user_max: 2,
        ..EngineConfig::small()
    };
    for config in [EngineConfig::small(), quotas.clone()] {
        let e = Engine::new(config.clone());
        let indexes = [
            e.sku_index.bytes(),
            e.order_index.bytes(),
            e.holdings.bytes(),
            e.batch_index.bytes(),
            e.coupon_index.bytes(),
            e.claims.bytes(),
            e.key_index.bytes(),
            e.shares.bytes(),
        ];
        let vectors = e.skus.capacity() * size_of::<super::Sku>()
            + e.orders.capacity() * size_of::<super::Order>()
            + e.finished.capacity() * size_of::<u32>()
            + e.deadlines.bytes()
            + e.batches.capacity() * size_of::<super::Batch>()
            + e.coupons.capacity() * size_of::<super::Coupon>()
            + e.keys.capacity() * size_of::<super::KeyEntry>();
        let written: usize = indexes.iter().sum();
        let memory = Engine::memory(&config);
        assert_eq!(memory.index_bytes, written as u64, "{config:?}");
        assert_eq!(memory.allocated_bytes, (written + vectors) as u64, "{config:?}");
    }
    let without = Engine::memory(&EngineConfig::small());
    let with = Engine::memory(&quotas);
    // Room for every key plus every order, two slots per entry, 16 bytes a slot.
    let shares = (2 * (quotas.request_keys_max + quotas.orders_max)).next_power_of_two();
    assert_eq!(with.allocated_bytes - without.allocated_bytes, 16 * u64::from(shares - 2));
}

#[test]
fn an_image_of_full_tables_takes_what_its_bounds_say() {
    // Goal: `EngineImage::memory_max` and `encoded_len_max`, which the memory check counts
    // for a snapshot, are exactly what an image holds and encodes with every table as full
    // as a restore accepts, and a real image copied into one reused for a larger state and
    // back never keeps more room than that.
    use std::mem::size_of_val;
    let config = EngineConfig::small();
    let mut h = Harness::new();
    restore_workload(&mut h);
    let mut image = h.engine.to_image();
    let tables = image.tables_mut();
    let lens = super::EngineImage::table_lens_max(&config);
    fn fill<T: Clone>(table: &mut Vec<T>, len: usize) -> usize {
        assert!(!table.is_empty(), "the workload left a table empty");
        let entry = table[0].clone();
        *table = vec![entry; len];
        size_of_val(table.as_slice())
    }
    let bytes = fill(tables.skus, lens[0])
        + fill(tables.orders, lens[1])
        + fill(tables.finished, lens[2])
        + fill(tables.deadlines, lens[3])
        + fill(tables.holdings, lens[4])
        + fill(tables.batches, lens[5])
        + fill(tables.coupons, lens[6])
        + fill(tables.claims, lens[7])
        + fill(tables.keys, lens[8]);
    let memory = (size_of_val(&image) + bytes) as u64;
    assert_eq!(super::EngineImage::memory_max(&config), memory);
    let mut encoded = Vec::new();
    image.encode_into(&mut encoded);
    assert_eq!(super::EngineImage::encoded_len_max(&config), encoded.len() as u64);
    // Copied into, the full image keeps its room but is never grown past a table's length;
    // a fresh one is sized to the state exactly.
    h.engine.copy_image_into(&mut image);
    assert_eq!(image, h.engine.to_image_unsorted(), "the copy holds the state");
    let room = |image: &mut super::EngineImage| {
        let t = image.tables_mut();
        t.skus.capacity() + t.orders.capacity() + t.keys.capacity() + t.deadlines.capacity()
    };
    assert_eq!(room(&mut image), lens[0] + lens[1] + lens[8] + lens[3], "room kept");
    let mut fresh = h.engine.to_image_unsorted();
    let t = fresh.tables_mut();
    assert_eq!((t.keys.capacity(), t.orders.capacity()), (t.keys.len(), t.orders.len()));
}

#[test]
fn request_key_is_forgotten_once_its_window_has_passed() {
    // Goal: a key is remembered for `request_key_window_ms` of logical time; a retry at the end
    // of the window executes again as a new command.
    let mut h = Harness::with_sku(CreateSku { payment_timeout_ms: 1_000_000, ..sku_spec(SKU) });
    let window_ms = h.engine.config().request_key_window_ms;
    let key = client_key(1);
    let Outcome::Reserved { order: first, .. } = h.run_keyed(key, act::reserve(ALICE, SKU, 1))
    else {
        panic!("not reserved")
    };
    h.clock = T0.plus_ms(window_ms - 1);
    assert!(matches!(h.run_keyed(key, act::reserve(ALICE, SKU, 1)),
        Outcome::Reserved { order, .. } if order == first));
    h.clock = T0.plus_ms(window_ms);
    let Outcome::Reserved { order: second, .. } = h.run_keyed(key, act::reserve(ALICE, SKU, 1))
    else {
        panic!("not reserved again")
    };
    assert_ne!(second, first);
    assert_eq!(h.sku(SKU).reserved, 2);
}

#[test]
fn full_key_table_is_capacity_exhausted_and_the_refusal_is_not_remembered() {
    // Goal: with every remembered key still inside its window a new key is refused, known keys
    // are still answered, and the refused key succeeds once room frees up.
    let config = EngineConfig { request_keys_max: 2, ..EngineConfig::small() };
    let window_ms = config.request_key_window_ms;
    let mut h = Harness::with_config(config);
    h.create_sku(sku_spec(SKU));
    let remembered = client_key(1);
    let original = h.run_keyed(remembered, act::reserve(ALICE, SKU, 1));
    assert_eq!(h.engine.status().request_keys, 2);
    let refused = client_key(2);
    h.refused_keyed(refused, act::reserve(BOB, SKU, 1), Rejection::CapacityExhausted);
    assert_eq!(h.run_keyed(remembered, act::reserve(ALICE, SKU, 1)), original);
    h.refused_keyed(refused, act::reserve(BOB, SKU, 1), Rejection::CapacityExhausted);
    h.advance(window_ms);
    assert!(matches!(h.run_keyed(refused, act::reserve(BOB, SKU, 1)), Outcome::Reserved { .. }));
}

#[test]
fn a_sale_of_sixteen_consecutive_skus_is_remembered_whole_by_the_hints() {
    // Goal: SKU ids 1 to 16, the way a sale numbers its SKUs, each get their own slot among
    // the SKUs the hints remember, so a sale of that many hints each SKU's entry once.
    let slots: std::collections::BTreeSet<usize> =
        (1..=16).map(|id| super::hinted_sku_slot(SkuId(id))).collect();
    assert_eq!(slots.len(), super::HINTED_SKUS);
    let mut h = Harness::with_sku(sku_spec(SKU));
    for round in 0..2 {
        for sku in 1..=16 {
            let command = Command::Client {
                key: RequestKey::from_u128(u128::from(sku)),
                action: act::reserve(BOB, sku, 1),
            };
            h.engine.prefetch(&Sequenced { sequence: Sequence(0), timestamp: T0, command });
        }
        // The first round hints every SKU; the second, none: its eight latest hints are empty.
        let expected = if round == 0 { 8 } else { 0 };
        assert_eq!(h.engine.entry_hints_live, expected, "round {round}");
    }
}

#[test]
fn a_hints_later_steps_come_from_a_ring_of_eight_and_change_nothing() {
    // Goal: `prefetch` keeps the entries of the last eight hinted client commands that name an
    // order, a coupon or a SKU not hinted lately, lets each drop out eight client
    // hints later (ticks and queries do not count), and never changes an outcome or the state,
    // whatever the order or SKU named.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 1);
    let digest = h.engine.state_digest();
    let hint = |h: &mut Harness, action: Action| {
        let command = Command::Client { key: RequestKey::from_u128(9), action };
        h.engine.prefetch(&Sequenced { sequence: Sequence(0), timestamp: T0, command });
    };
    hint(&mut h, act::pay(order, PRICE_CENTS));
    hint(&mut h, act::pay(OrderId(12_345), PRICE_CENTS));
    assert_eq!(h.engine.entry_hints_live, 2);
    hint(&mut h, act::reserve(BOB, SKU, 1));
    assert_eq!(h.engine.entry_hints_live, 3, "the first reservation's SKU is hinted");
    hint(&mut h, act::reserve(BOB, SKU, 1));
    assert_eq!(h.engine.entry_hints_live, 3, "the same SKU is not hinted again");
    hint(&mut h, act::reserve(BOB, 99, 1));
    assert_eq!(h.engine.entry_hints_live, 4, "an unknown SKU is hinted like a known one");
    for sku in [SKU, 99] {
        // Both hinted lately, so neither is hinted again, whichever came last.
        hint(&mut h, act::reserve(BOB, sku, 1));
        let tick = Sequenced { sequence: Sequence(0), timestamp: T0, command: Command::Tick };
        h.engine.prefetch(&tick);
    }
    assert_eq!(h.engine.entry_hints_live, 4, "only client commands move the hints on");
    hint(&mut h, act::reserve(BOB, 99, 1));
    assert_eq!(h.engine.entry_hints_live, 4, "eight hints are kept");
    hint(&mut h, act::reserve(BOB, 99, 1));
    assert_eq!(h.engine.entry_hints_live, 3, "the first order's hint drops out eight hints on");
    hint(&mut h, act::reserve(BOB, 99, 1));
    assert_eq!(h.engine.entry_hints_live, 2, "an unknown order's hint drops out too");
    for _ in 0..2 {
        hint(&mut h, act::reserve(BOB, 99, 1));
    }
    assert_eq!(h.engine.entry_hints_live, 1);
    hint(&mut h, act::reserve(BOB, 99, 1));
    assert_eq!(h.engine.entry_hints_live, 0);
    assert_eq!(h.engine.state_digest(), digest);
    assert!(matches!(h.run(act::pay(order, PRICE_CENTS)), Outcome::Paid { .. }));
    assert!(matches!(h.run(act::reserve(BOB, SKU, 1)), Outcome::Reserved { .. }));
}

// ---------------------------------------------------------------------------------------------
// Queries, snapshots, status and the state hash.

#[test]
fn queries_answer_views_and_refuse_unknown_ids() {
    // Goal: every query kind answers the current view, refuses an unknown id with its own
    // rejection, and changes nothing at all.
    let (mut h, coupon) = with_alices_coupon();
    let order = h.reserved(ALICE, SKU, 1);
    let digest = h.engine.state_digest();
    assert!(matches!(h.query(Query::Sku(SkuId(SKU))), Outcome::Sku(view) if view.reserved == 1));
    assert!(matches!(h.query(Query::Order(order)), Outcome::Order(view) if view.order == order));
    let answer = h.query(Query::Coupon(coupon));
    assert!(matches!(answer, Outcome::Coupon(view) if view.coupon == coupon));
    let answer = h.query(Query::Batch(BatchId(BATCH)));
    assert!(matches!(answer, Outcome::Batch(view) if view.remaining == 4));
    let unknown = [
        (Query::Sku(SkuId(99)), Rejection::UnknownSku),
        (Query::Order(OrderId(12_345)), Rejection::UnknownOrder),
        (Query::Coupon(CouponId(12_345)), Rejection::UnknownCoupon),
        (Query::Batch(BatchId(99)), Rejection::UnknownBatch),
    ];
    for (query, rejection) in unknown {
        assert_eq!(h.query(query), Outcome::Rejected(rejection));
    }
    assert_eq!(h.engine.state_digest(), digest);
}

#[test]
fn snapshot_request_changes_nothing() {
    // Goal: a snapshot command answers the last mutating sequence and the running hash and
    // leaves the full state, including time and sequence, as it was.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.reserved(ALICE, SKU, 1);
    let last_sequence = h.sequence;
    h.query(Query::Sku(SkuId(SKU)));
    let digest = h.engine.state_digest();
    let running_hash = h.engine.running_hash();
    h.advance(1_000);
    let outcome = h.submit(Command::Snapshot);
    assert_eq!(outcome, Outcome::SnapshotRequested { last_sequence, running_hash });
    assert_eq!(h.engine.state_digest(), digest);
    assert_eq!(h.engine.last_sequence(), last_sequence);
}

#[test]
fn status_reports_sequence_time_hash_and_table_sizes() {
    // Goal: the summary counts what the tables hold and tracks the last mutating command.
    let (mut h, _coupon) = with_alices_coupon();
    let paid = h.reserved(ALICE, SKU, 1);
    h.paid(paid);
    h.reserved(BOB, SKU, 2);
    h.advance(5);
    h.tick();
    let last_sequence = h.sequence;
    h.query(Query::Sku(SkuId(SKU)));
    let status = h.engine.status();
    assert_eq!(status.last_sequence, last_sequence);
    assert_eq!(status.now, T0.plus_ms(5));
    assert_eq!(status.running_hash, h.engine.running_hash());
    assert_eq!((status.skus, status.orders, status.orders_reserved), (1, 2, 1));
    assert_eq!(status.coupons, 1);
    // create SKU, create batch, claim, reserve, pay, reserve: six keyed commands.
    assert_eq!(status.request_keys, 6);
}

/// A short mixed script: every kind of command, including refusals, retries and an expiry.
fn mixed_script(h: &mut Harness) -> Vec<Outcome> {
    let mut outcomes = vec![h.run(Action::CreateSku(sku_spec(SKU)))];
    outcomes.push(h.run(Action::CreateCouponBatch(batch_spec(BATCH))));
    let coupon = h.claimed(ALICE, BATCH);
    let paid = h.reserved_with(ALICE, SKU, 2, coupon);
    outcomes.push(h.run(act::pay(paid, 2 * PRICE_CENTS - DISCOUNT_CENTS)));
    outcomes.push(h.run_keyed(client_key(1), act::reserve(BOB, SKU, 3)));
    outcomes.push(h.run_keyed(client_key(1), act::reserve(BOB, SKU, 3)));
    outcomes.push(h.run(act::reserve(BOB, SKU, 50)));
    h.advance(TIMEOUT_MS);
    outcomes.push(h.tick());
    outcomes.push(h.run(Action::Refund { order: paid }));
    outcomes
}

#[test]
fn same_commands_give_the_same_outcomes_and_hashes() {
    // Goal: two engines fed the same commands agree on every outcome, the running hash and the
    // full state digest; one extra command makes the running hash differ.
    let (mut a, mut b) = (Harness::new(), Harness::new());
    assert_eq!(mixed_script(&mut a), mixed_script(&mut b));
    assert_eq!(a.expired_orders(), b.expired_orders());
    assert_eq!(a.expired_orders().len(), 1);
    assert_eq!(a.engine.running_hash(), b.engine.running_hash());
    assert_eq!(a.engine.state_digest(), b.engine.state_digest());
    b.tick();
    assert_ne!(a.engine.running_hash(), b.engine.running_hash());
}

/// Commands after a snapshot: a remembered key, a new order, an expiry, a claim.
fn continuation(h: &mut Harness) -> Vec<Outcome> {
    let mut outcomes = vec![h.run_keyed(client_key(1), act::reserve(BOB, SKU, 3))];
    outcomes.push(h.run(act::reserve(ALICE, SKU, 1)));
    h.advance(TIMEOUT_MS);
    outcomes.push(h.tick());
    outcomes.push(h.run(act::claim(BOB, BATCH)));
    outcomes
}

#[test]
fn restored_image_continues_exactly_like_the_original() {
    // Goal: an engine rebuilt from a snapshot image has the same full state and answers the
    // commands that follow exactly as the engine it was taken from.
    let mut a = Harness::new();
    mixed_script(&mut a);
    a.reserved(BOB, SKU, 1);
    let image = a.engine.to_image();
    let mut b = Harness::new();
    b.engine = Engine::from_image(EngineConfig::small(), &image).expect("image restores");
    (b.sequence, b.clock, b.keys_issued) = (a.sequence, a.clock, a.keys_issued);
    assert_eq!(b.engine.state_digest(), a.engine.state_digest());
    a.expired.clear();
    assert_eq!(continuation(&mut a), continuation(&mut b));
    assert_eq!(a.expired, b.expired);
    assert_eq!(a.expired.len(), 2);
    assert_eq!(a.engine.state_digest(), b.engine.state_digest());
}

#[test]
fn image_for_another_shard_or_smaller_tables_is_refused() {
    // Goal: a snapshot restores only on the shard that took it and into tables that hold it.
    let mut h = Harness::new();
    mixed_script(&mut h);
    let image = h.engine.to_image();
    let other_shard = EngineConfig { shard: 2, ..EngineConfig::small() };
    let error = Engine::from_image(other_shard.clone(), &image).err();
    assert_eq!(error, Some(RestoreError::ShardMismatch { image: SHARD, config: 2 }));
    let too_small = EngineConfig { orders_max: 1, ..EngineConfig::small() };
    let error = Engine::from_image(too_small.clone(), &image).err();
    assert_eq!(error, Some(RestoreError::TooLarge { table: "orders", len: 2, max: 1 }));
    // Tables fitted to the image still answer to the configured capacities and shard.
    let error = Engine::from_image_sized_to_fit(&too_small, &image).err();
    assert_eq!(error, Some(RestoreError::TooLarge { table: "orders", len: 2, max: 1 }));
    let error = Engine::from_image_sized_to_fit(&other_shard, &image).err();
    assert_eq!(error, Some(RestoreError::ShardMismatch { image: SHARD, config: 2 }));
}

#[test]
fn order_counts_tally_every_kept_order_by_state() {
    // Goal: order_counts counts each order the table keeps under its state, in life order, and
    // a finished order stops being counted once a new order has taken its slot.
    let mut h = Harness::with_config(EngineConfig { orders_max: 7, ..EngineConfig::small() });
    h.create_sku(sku_spec(SKU));
    assert!(h.engine.order_counts().iter().all(|&(_, count)| count == 0));
    h.reserved(ALICE, SKU, 1);
    h.advance(TIMEOUT_MS);
    h.tick();
    h.reserved(ALICE, SKU, 1);
    let paid = h.reserved(ALICE, SKU, 1);
    h.paid(paid);
    let shipped = h.reserved(ALICE, SKU, 1);
    h.paid(shipped);
    assert_eq!(h.run(Action::Ship { order: shipped }), Outcome::Shipped { order: shipped });
    let completed = h.reserved(BOB, SKU, 1);
    h.paid(completed);
    h.run(Action::Ship { order: completed });
    let outcome = h.run(act::complete(completed, BOB));
    assert_eq!(outcome, Outcome::Completed { order: completed });
    let cancelled = h.reserved(BOB, SKU, 1);
    h.run(act::cancel(cancelled, BOB));
    let refunded = h.reserved(BOB, SKU, 1);
    h.paid(refunded);
    assert_eq!(h.run(Action::Refund { order: refunded }), Outcome::Refunded { order: refunded });
    assert_eq!(h.engine.order_counts(), OrderState::ALL.map(|state| (state, 1)));
    // The table is full: the next order takes the slot of the expired one, finished first.
    h.reserved(BOB, SKU, 1);
    let counts = h.engine.order_counts();
    assert_eq!(counts[0], (OrderState::Reserved, 2));
    assert_eq!(counts[5], (OrderState::Expired, 0));
    assert_eq!(counts.iter().map(|&(_, count)| count).sum::<u32>(), 7);
}

#[test]
fn copying_into_a_used_image_replaces_all_of_it() {
    // Goal: an image refilled by copy_image_into, after holding a larger state, equals a fresh
    // image of the engine and restores to the same state.
    let mut big = Harness::new();
    mixed_script(&mut big);
    big.reserved(BOB, SKU, 1);
    let mut small = Harness::new();
    small.create_sku(sku_spec(SKU));
    small.reserved(ALICE, SKU, 2);
    let mut image = big.engine.to_image_unsorted();
    small.engine.copy_image_into(&mut image);
    assert_eq!(image, small.engine.to_image_unsorted());
    image.canonicalize();
    assert_eq!(image, small.engine.to_image());
    let restored = Engine::from_image(EngineConfig::small(), &image).expect("image restores");
    assert_eq!(restored.state_digest(), small.engine.state_digest());
    big.engine.copy_image_into(&mut image);
    assert_eq!(image, big.engine.to_image_unsorted());
}

// ---------------------------------------------------------------------------------------------
// Cross-table checks on restore.

/// The SKU with a per-user limit in `restore_workload`, so that buyers have holdings.
const LIMITED_SKU: u64 = 9;

/// The order ids of `restore_workload` that the damage cases refer to.
struct Workload {
    /// Reserved with a locked coupon, waiting for payment.
    reserved: OrderId,
    /// Paid with a coupon, shipped and completed, on the limited SKU.
    completed: OrderId,
    /// Paid without a coupon, on the limited SKU.
    paid: OrderId,
}

/// Reserve, pay, ship, complete, refund, cancel and expiry, with coupons locked, used and
/// released, on a SKU without a limit and one with a per-user limit.
fn restore_workload(h: &mut Harness) -> Workload {
    h.create_sku(sku_spec(SKU));
    h.create_sku(CreateSku { per_user_limit: 5, ..sku_spec(LIMITED_SKU) });
    h.create_batch(batch_spec(BATCH));
    let alice_coupons = [h.claimed(ALICE, BATCH), h.claimed(ALICE, BATCH), h.claimed(ALICE, BATCH)];
    let bob_coupon = h.claimed(BOB, BATCH);
    let expiring = h.reserved_with(BOB, LIMITED_SKU, 3, bob_coupon);
    h.advance(TIMEOUT_MS);
    h.tick();
    assert_eq!(h.state(expiring), OrderState::Expired);
    let reserved = h.reserved_with(ALICE, SKU, 2, alice_coupons[0]);
    let completed = h.reserved_with(ALICE, LIMITED_SKU, 2, alice_coupons[1]);
    h.paid(completed);
    h.shipped(completed);
    assert_eq!(h.run(act::complete(completed, ALICE)), Outcome::Completed { order: completed });
    let cancelled = h.reserved(BOB, LIMITED_SKU, 1);
    assert_eq!(h.run(act::cancel(cancelled, BOB)), Outcome::Cancelled { order: cancelled });
    let paid = h.reserved(ALICE, LIMITED_SKU, 1);
    h.paid(paid);
    let refunded = h.reserved(BOB, SKU, 1);
    h.paid(refunded);
    assert_eq!(h.run(Action::Refund { order: refunded }), Outcome::Refunded { order: refunded });
    let shipped = h.reserved_with(ALICE, SKU, 1, alice_coupons[2]);
    h.paid(shipped);
    h.shipped(shipped);
    Workload { reserved, completed, paid }
}

/// Restores `image` and expects it refused as inconsistent; the reason, for the message.
#[track_caller]
fn refused_as_inconsistent(image: &super::EngineImage, case: &str) -> &'static str {
    let fitted = Engine::from_image_sized_to_fit(&EngineConfig::small(), image).err();
    match Engine::from_image(EngineConfig::small(), image) {
        Err(RestoreError::Inconsistent(reason)) => {
            let same = Some(RestoreError::Inconsistent(reason));
            assert_eq!(fitted, same, "{case}: the restore fitted to the image decides otherwise");
            reason
        }
        Err(other) => panic!("{case}: refused, but not as inconsistent: {other}"),
        Ok(_) => panic!("{case}: a damaged image restored"),
    }
}

#[test]
fn an_image_of_a_real_workload_passes_the_cross_table_checks() {
    // Goal: every state a real workload reaches (live, paid, shipped and finished orders,
    // locked, used and released coupons, holdings, claims) restores to the same state.
    let mut h = Harness::new();
    restore_workload(&mut h);
    let image = h.engine.to_image();
    let restored = Engine::from_image(EngineConfig::small(), &image).expect("image restores");
    assert_eq!(restored.state_digest(), h.engine.state_digest());
    let unsorted = h.engine.to_image_unsorted();
    let restored = Engine::from_image(EngineConfig::small(), &unsorted).expect("image restores");
    assert_eq!(restored.state_digest(), h.engine.state_digest());
    // Fitted to the image: the same state in tables no larger than it needs.
    let fitted = Engine::from_image_sized_to_fit(&EngineConfig::small(), &image).expect("fits");
    assert_eq!(fitted.state_digest(), h.engine.state_digest());
    assert_eq!(fitted.running_hash(), h.engine.running_hash());
    let (fitted_bytes, configured_bytes) = (
        Engine::memory(fitted.config()).allocated_bytes,
        Engine::memory(&EngineConfig::small()).allocated_bytes,
    );
    assert!(fitted_bytes * 10 < configured_bytes, "{fitted_bytes} of {configured_bytes} bytes");
    assert_eq!(fitted.config().orders_max as usize, image.orders.len().max(1));
}

#[test]
fn an_image_after_order_slots_are_reused_passes_the_cross_table_checks() {
    // Goal: once finished orders are forgotten to make room, the lower bounds on sold units,
    // holdings and used coupons still hold, and the image restores and continues alike.
    let config = EngineConfig { orders_max: 4, ..EngineConfig::small() };
    let mut h = Harness::with_config(config.clone());
    h.create_sku(CreateSku { stock: 1_000, per_user_limit: 100, ..sku_spec(LIMITED_SKU) });
    let valid_until = T0.plus_ms(100 * TIMEOUT_MS);
    h.create_batch(CreateCouponBatch { quantity: 50, valid_until, ..batch_spec(BATCH) });
    for round in 0..12 {
        let coupon = h.claimed(ALICE, BATCH);
        let order = h.reserved_with(ALICE, LIMITED_SKU, 1, coupon);
        h.paid(order);
        h.shipped(order);
        assert_eq!(h.run(act::complete(order, ALICE)), Outcome::Completed { order });
        let dropped = h.reserved(BOB, LIMITED_SKU, 1);
        if round % 2 == 0 {
            assert_eq!(h.run(act::cancel(dropped, BOB)), Outcome::Cancelled { order: dropped });
        } else {
            h.advance(TIMEOUT_MS);
            h.tick();
        }
    }
    let live = h.reserved(BOB, LIMITED_SKU, 2);
    let image = h.engine.to_image();
    let mut restored = Engine::from_image(config, &image).expect("image restores");
    assert_eq!(restored.state_digest(), h.engine.state_digest());
    h.advance(TIMEOUT_MS);
    let tick =
        Sequenced { sequence: h.sequence.next(), timestamp: h.clock, command: Command::Tick };
    assert_eq!(restored.apply(&tick), h.tick());
    assert_eq!(h.state(live), OrderState::Expired);
    assert_eq!(restored.state_digest(), h.engine.state_digest());
}

#[test]
fn an_image_with_tables_that_disagree_is_refused_as_inconsistent() {
    // Goal: each single damage to one table of a real image, which the per-table checks
    // accept, is refused by restore as inconsistent, without a panic.
    let mut h = Harness::new();
    let w = restore_workload(&mut h);
    let image = h.engine.to_image();
    Engine::from_image(EngineConfig::small(), &image).expect("the undamaged image restores");
    let slot_of = |id: OrderId| image_order_slot(&image, id);
    let (reserved, completed, paid) = (slot_of(w.reserved), slot_of(w.completed), slot_of(w.paid));
    type Damage = Box<dyn Fn(&mut super::image::ImageTables<'_>)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "reserved units off by one",
            Box::new(|t| {
                let sku = t.skus.iter_mut().find(|s| s.id == SkuId(SKU)).unwrap();
                sku.available -= 1;
                sku.reserved += 1;
            }),
        ),
        (
            "sold below the kept paid orders",
            Box::new(|t| {
                let sku = t.skus.iter_mut().find(|s| s.id == SkuId(LIMITED_SKU)).unwrap();
                sku.sold -= 1;
                sku.available += 1;
            }),
        ),
        (
            "paid order back to reserved",
            Box::new(move |t| {
                t.orders[paid].state = OrderState::Reserved;
                t.orders[paid].payment_ref = None;
            }),
        ),
        (
            "reserved order drops its locked coupon",
            Box::new(move |t| {
                t.orders[reserved].coupon_slot = None;
            }),
        ),
        (
            "locked coupon released",
            Box::new(move |t| {
                let coupon = t.orders[reserved].coupon_slot.unwrap();
                t.coupons[coupon as usize].state = CouponState::Available;
            }),
        ),
        (
            "coupon locked by an unknown order",
            Box::new(move |t| {
                let coupon = t.orders[reserved].coupon_slot.unwrap();
                t.coupons[coupon as usize].state = CouponState::Locked(OrderId(12_345));
            }),
        ),
        (
            "used coupon released",
            Box::new(move |t| {
                let coupon = t.orders[completed].coupon_slot.unwrap();
                t.coupons[coupon as usize].state = CouponState::Available;
            }),
        ),
        (
            "coupon used by a kept order that does not name it",
            Box::new(move |t| {
                let coupon = t.orders[completed].coupon_slot.unwrap();
                let other = t.orders[paid].id;
                t.coupons[coupon as usize].state = CouponState::Used(other);
            }),
        ),
        (
            "reserved order without a deadline",
            Box::new(move |t| {
                let id = t.orders[reserved].id;
                t.deadlines.retain(|&(_, order, _)| order != id);
            }),
        ),
        (
            "reserved order with two deadlines",
            Box::new(move |t| {
                let order = &t.orders[reserved];
                t.deadlines.push((order.expires_at, order.id, reserved as u32));
            }),
        ),
        (
            "deadline at another time than the order's expiry",
            Box::new(move |t| {
                let id = t.orders[reserved].id;
                let deadline = t.deadlines.iter_mut().find(|d| d.1 == id).unwrap();
                deadline.0 = deadline.0.plus_ms(1);
            }),
        ),
        (
            "live order in the finished queue",
            Box::new(move |t| {
                t.finished[0] = reserved as u32;
            }),
        ),
        (
            "slot twice in the finished queue",
            Box::new(|t| {
                t.finished[1] = t.finished[0];
            }),
        ),
        (
            "finished order missing from the queue",
            Box::new(|t| {
                t.finished.pop();
            }),
        ),
        (
            "holding below the kept orders",
            Box::new(|t| {
                let key = (UserId(ALICE), SkuId(LIMITED_SKU));
                let holding = t.holdings.iter_mut().find(|h| (h.0, h.1) == key).unwrap();
                holding.2 -= 1;
            }),
        ),
        (
            "holding missing",
            Box::new(|t| {
                t.holdings.clear();
            }),
        ),
        (
            "holding twice",
            Box::new(|t| {
                let first = t.holdings[0];
                t.holdings.push(first);
            }),
        ),
        (
            "claims below the coupons held",
            Box::new(|t| {
                let key = (UserId(ALICE), BatchId(BATCH));
                let claim = t.claims.iter_mut().find(|c| (c.0, c.1) == key).unwrap();
                claim.2 -= 1;
            }),
        ),
        (
            "claim count twice",
            Box::new(|t| {
                let first = t.claims[0];
                t.claims.push(first);
            }),
        ),
        (
            "batch remaining off by one",
            Box::new(|t| {
                t.batches[0].remaining += 1;
            }),
        ),
        (
            "request-key positions overflow",
            Box::new(|t| {
                *t.keys_head = u64::MAX;
            }),
        ),
        (
            "paid order without its payment reference",
            Box::new(move |t| {
                t.orders[paid].payment_ref = None;
            }),
        ),
        (
            "order of no units",
            Box::new(move |t| {
                t.orders[completed].qty = 0;
            }),
        ),
        (
            "order of user zero, whom no share can count",
            Box::new(move |t| {
                t.orders[reserved].user = UserId(0);
            }),
        ),
        (
            "SKU whose orders expire as they are made",
            Box::new(|t| {
                t.skus[0].payment_timeout_ms = 0;
            }),
        ),
        (
            "batch that is never valid",
            Box::new(|t| {
                t.batches[0].valid_until = t.batches[0].valid_from;
            }),
        ),
        (
            "coupon claimed by user zero",
            Box::new(|t| {
                t.coupons[0].user = UserId(0);
            }),
        ),
        (
            "request keys out of expiry order",
            Box::new(|t| {
                let last = t.keys.len() - 1;
                t.keys[0].expires_at = t.keys[last].expires_at.plus_ms(1);
            }),
        ),
        (
            "live deadline already due",
            Box::new(move |t| {
                let order = &mut t.orders[reserved];
                order.expires_at = order.created_at;
                let (id, due) = (order.id, order.expires_at);
                t.deadlines.iter_mut().filter(|d| d.1 == id).for_each(|d| d.0 = due);
            }),
        ),
        (
            "coupon storing the derived expired state",
            Box::new(|t| {
                t.coupons[0].state = CouponState::Expired;
            }),
        ),
        (
            "request key kept past its expiry",
            Box::new(|t| {
                t.keys.iter_mut().for_each(|key| key.expires_at = Timestamp(0));
            }),
        ),
        (
            "holding above the per-user limit",
            Box::new(|t| {
                let key = (UserId(ALICE), SkuId(LIMITED_SKU));
                let holding = t.holdings.iter_mut().find(|h| (h.0, h.1) == key).unwrap();
                holding.2 += 5;
            }),
        ),
    ];
    let mut reasons = Vec::new();
    for (case, damage) in &cases {
        let mut damaged = image.clone();
        damage(&mut damaged.tables_mut());
        assert_ne!(damaged, image, "{case}: the damage changed nothing");
        let outcome = std::panic::catch_unwind(|| refused_as_inconsistent(&damaged, case));
        reasons.push(outcome.unwrap_or_else(|_| panic!("{case}: restore panicked")));
    }
    // Each damage is caught by the check meant for it, not by a side effect.
    let expected = [
        "reserved units",
        "sold units",
        "reserved units",
        "locked coupon",
        "locked by it",
        "locked coupon",
        "used by it",
        "used coupon",
        "live deadline",
        "live deadline",
        "deadline's time",
        "not finished",
        "slot twice",
        "missing from the finished",
        "holding is less",
        "holding is less",
        "holding appears twice",
        "claim count is less",
        "claim count appears twice",
        "quantity - remaining",
        "positions overflow",
        "payment reference",
        "zero id, user or quantity",
        "zero id, user or quantity",
        "zero payment timeout",
        "never valid",
        "user zero",
        "expiry order",
        "already due",
        "expired state",
        "expired before now",
        "above its per-user limit",
    ];
    assert_eq!(reasons.len(), expected.len());
    for ((case, _), (reason, expected)) in cases.iter().zip(reasons.iter().zip(expected)) {
        assert!(reason.contains(expected), "{case}: refused because {reason}");
    }
}

#[test]
fn a_retried_operator_command_answers_the_view_it_first_gave_after_the_sku_and_batch_moved_on() {
    // Goal: a request key keeps an operator's answer in part and reads the rest back from its
    // SKU or batch (`remembered.rs`). A retry still answers the first outcome, bit for bit,
    // after the units, the sale switch and the batch's coupons have all moved on, and so does
    // the same retry on an engine restored from an image.
    let mut h = Harness::new();
    let sku = SkuId(SKU);
    let mut first = Vec::new();
    let mut operator = |h: &mut Harness, action: Action| {
        let key = h.fresh_key();
        let outcome = h.run_keyed(key, action);
        assert!(!outcome.is_rejected(), "{action:?}: {outcome:?}");
        first.push((key, action, outcome));
    };
    operator(&mut h, Action::CreateSku(sku_spec(SKU)));
    let paid = h.reserved(ALICE, SKU, 2);
    h.paid(paid);
    h.reserved(BOB, SKU, 3);
    operator(&mut h, act::restock(SKU, 4));
    operator(&mut h, Action::CloseSale { sku });
    operator(&mut h, Action::CreateCouponBatch(batch_spec(BATCH)));
    operator(&mut h, Action::OpenSale { sku });
    h.claimed(ALICE, BATCH);
    let late = h.reserved(ALICE, SKU, 1);
    h.paid(late);
    // Every figure a view takes from what changes has moved since some answer gave it.
    let (now, batch_now) = (h.sku(SKU), h.batch(BATCH));
    let views: Vec<SkuView> = first
        .iter()
        .filter_map(|(_, _, outcome)| match *outcome {
            Outcome::SkuCreated(view) | Outcome::Restocked(view) | Outcome::SaleChanged(view) => {
                Some(view)
            }
            _ => None,
        })
        .collect();
    assert_eq!(views.len(), 4);
    for moved in [
        |v: &SkuView| v.stock,
        |v: &SkuView| v.available,
        |v: &SkuView| v.reserved,
        |v: &SkuView| v.sold,
        |v: &SkuView| u64::from(v.open),
    ] {
        assert!(views.iter().any(|view| moved(view) != moved(&now)), "{views:?} / {now:?}");
    }
    assert!(
        matches!(first[3].2, Outcome::BatchCreated(view) if view.remaining != batch_now.remaining)
    );
    let retried = |h: &mut Harness, what: &str| {
        for &(key, action, outcome) in &first {
            assert_eq!(h.run_keyed(key, action), outcome, "{what}: retried {action:?}");
        }
    };
    retried(&mut h, "live");
    let image = h.engine.to_image();
    h.engine = Engine::from_image(EngineConfig::small(), &image).expect("the image restores");
    assert_eq!(h.engine.state_digest(), image.state_digest());
    assert_eq!(h.engine.to_image(), image, "the restored engine images the same");
    retried(&mut h, "restored");
}

#[test]
fn an_image_whose_remembered_operator_answer_its_sku_or_batch_would_not_give_is_refused() {
    // Goal: a restore keeps an operator's answer only as far as it reads back the same, so an
    // image whose remembered answer disagrees with its SKU or batch, or that remembers an
    // answer no keyed command gives, is refused as inconsistent, never restored to answer a
    // retry with something else.
    let mut h = Harness::with_sku(sku_spec(SKU));
    h.create_batch(batch_spec(BATCH));
    h.reserved(ALICE, SKU, 1);
    let image = h.engine.to_image();
    /// Damages the one remembered outcome it matches, saying whether it did.
    type Damage = dyn Fn(&mut Outcome) -> bool;
    let damaged = |damage: &Damage| {
        let mut damaged = image.clone();
        let tables = damaged.tables_mut();
        let damaged_keys = tables.keys.iter_mut().map(|key| damage(&mut key.outcome));
        assert_eq!(damaged_keys.filter(|&hit| hit).count(), 1);
        damaged
    };
    let cases: [(&str, &Damage, &str); 5] = [
        (
            "a created SKU's price that is not the SKU's",
            &|outcome| match outcome {
                Outcome::SkuCreated(view) => {
                    view.price_cents += 1;
                    true
                }
                _ => false,
            },
            "its SKU or batch does not give",
        ),
        (
            "a created SKU's sold units over its stock",
            &|outcome| match outcome {
                Outcome::SkuCreated(view) => {
                    view.available = view.stock;
                    view.reserved = 1;
                    true
                }
                _ => false,
            },
            "its SKU or batch does not give",
        ),
        (
            "a SKU that is not kept",
            &|outcome| match outcome {
                Outcome::SkuCreated(view) => {
                    view.sku = SkuId(OTHER_SKU);
                    true
                }
                _ => false,
            },
            "its SKU or batch does not give",
        ),
        (
            "a created batch that is not kept",
            &|outcome| match outcome {
                Outcome::BatchCreated(view) => {
                    view.batch = BatchId(BATCH + 1);
                    true
                }
                _ => false,
            },
            "its SKU or batch does not give",
        ),
        (
            "a tick's answer under a request key",
            &|outcome| match *outcome {
                Outcome::Reserved { .. } => {
                    *outcome = Outcome::Ticked { now: T0 };
                    true
                }
                _ => false,
            },
            "no keyed command gives",
        ),
    ];
    Engine::from_image(EngineConfig::small(), &image).expect("the undamaged image restores");
    for (case, damage, expected) in cases {
        let reason = refused_as_inconsistent(&damaged(damage), case);
        assert!(reason.contains(expected), "{case}: refused because {reason}");
    }
}

/// The slot of order `id` in an image.
fn image_order_slot(image: &super::EngineImage, id: OrderId) -> usize {
    let mut image = image.clone();
    let tables = image.tables_mut();
    tables.orders.iter().position(|o| o.id == id).expect("the order is kept")
}

// ---------------------------------------------------------------------------------------------
// Hashes pinned to their definitions (`hash.rs`, `image.rs`): every expected value is XXH3 of
// bytes written out here from the specification, never computed by the engine's own code.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Bytes from a hex string with spaces, as the specification writes them.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let nibble = |d: u8| (d as char).to_digit(16).expect("hex digit") as u8;
    digits.chunks(2).map(|pair| nibble(pair[0]) << 4 | nibble(pair[1])).collect()
}

#[test]
fn running_hash_folds_literal_outcome_bytes_seeded_by_the_previous_hash() {
    // Goal: from zero, each mutating command folds XXH3-64(le64(sequence) ‖ outcome bytes)
    // seeded with the hash before it; a query folds nothing.
    let mut h = Harness::new();
    assert_eq!(h.engine.running_hash(), 0);
    assert_eq!(h.tick(), Outcome::Ticked { now: T0 });
    // T0 = 1_735_776_000_000 ms = 0x0000_0194_244F_D800.
    let h1 = xxh3_64_with_seed(&hex("0100000000000000 01 00D84F2494010000"), 0);
    assert_eq!(h.engine.running_hash(), h1);
    assert_eq!(h.run(act::restock(99, 2)), Outcome::Rejected(Rejection::UnknownSku));
    let h2 = xxh3_64_with_seed(&hex("0200000000000000 12 05"), h1);
    assert_eq!(h.engine.running_hash(), h2);
    h.query(Query::Sku(SkuId(99)));
    assert_eq!(h.engine.running_hash(), h2);
    // The refusal is remembered under its key with the fingerprint XXH3-64(action bytes).
    let remembered = h.engine.keys.back().expect("the refusal is remembered");
    assert_eq!(remembered.fingerprint, xxh3_64(&hex("02 6300000000000000 02000000")));
}

#[test]
fn an_expiry_folds_its_literal_event_bytes_before_the_outcome() {
    // Goal: a tick that expires an order folds XXH3-64 of the expiry event's bytes, then the
    // tick's own outcome, each seeded with the hash before it.
    let mut h = Harness::with_sku(sku_spec(SKU));
    let order = h.reserved(ALICE, SKU, 2);
    let before = h.engine.running_hash();
    h.advance(TIMEOUT_MS);
    assert_eq!(h.tick(), Outcome::Ticked { now: h.clock });
    let event = [
        &[0x01][..],
        &order.0.to_le_bytes(),
        &ALICE.to_le_bytes(),
        &SKU.to_le_bytes(),
        &2_u32.to_le_bytes(),
    ]
    .concat();
    let after_event = xxh3_64_with_seed(&event, before);
    let ticked = [&h.sequence.0.to_le_bytes()[..], &[0x01], &h.clock.0.to_le_bytes()].concat();
    assert_eq!(h.engine.running_hash(), xxh3_64_with_seed(&ticked, after_event));
}

#[test]
fn digests_are_pinned_to_literal_entry_bytes() {
    // Goal: the tables digest and the state digest are XXH3-64 over the documented entry and
    // header bytes: an empty engine, then one SKU.
    let empty_queue = xxh3_64(b"");
    let combine = |sums: [u64; 8]| xxh3_64(&sums.map(u64::to_le_bytes).concat());
    let empty_tables = combine([0, 0, 0, 0, 0, 0, empty_queue, 0]);
    let engine = Engine::new(EngineConfig::small());
    assert_eq!(engine.tables_digest(), empty_tables);
    // Shard 1, id generator not started, every other scalar zero.
    let scalars = hex("0100 00 00").into_iter().chain([0; 48]).collect::<Vec<u8>>();
    let state = [scalars, empty_tables.to_le_bytes().to_vec(), empty_queue.to_le_bytes().to_vec()];
    assert_eq!(engine.state_digest(), xxh3_64(&state.concat()));

    let h = Harness::with_sku(sku_spec(SKU));
    let sku_entry =
        hex("0700000000000000 0A00000000000000 0A00000000000000 0000000000000000 0000000000000000
         E803000000000000 00000000 01 3075000000000000 00 0000000000000000 00 0000000000000000");
    let tables = combine([xxh3_64(&sku_entry), 0, 0, 0, 0, 0, empty_queue, 0]);
    assert_eq!(h.engine.tables_digest(), tables);
}

// ---------------------------------------------------------------------------------------------
// Snapshot image bytes (`layout.rs`).

use super::{EngineImage, IMAGE_FORMAT_VERSION, ImageDecodeError};

fn image_bytes(image: &EngineImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.encode_into(&mut bytes);
    assert_eq!(bytes.len(), image.encoded_len());
    bytes
}

#[test]
fn an_encoded_image_decodes_to_the_same_image_and_restores_to_the_same_state() {
    // Goal: the bytes of a real workload's image (sorted or as the BLP copies it) decode to
    // the same image, whose digest, computed with or without restoring, is the engine's; the
    // restored engine continues exactly like the original.
    let mut h = Harness::new();
    restore_workload(&mut h);
    for image in [h.engine.to_image(), h.engine.to_image_unsorted()] {
        let decoded = EngineImage::decode(&image_bytes(&image)).expect("image decodes");
        assert_eq!(decoded, image);
        assert_eq!(decoded.state_digest(), h.engine.state_digest());
        assert_eq!(decoded.tables_digest(), h.engine.tables_digest());
        let restored = Engine::from_image(EngineConfig::small(), &decoded).expect("restores");
        assert_eq!(restored.state_digest(), h.engine.state_digest());
    }
    let decoded = EngineImage::decode(&image_bytes(&h.engine.to_image())).expect("decodes");
    let mut restored = Engine::from_image(EngineConfig::small(), &decoded).expect("restores");
    h.advance(TIMEOUT_MS);
    let tick =
        Sequenced { sequence: h.sequence.next(), timestamp: h.clock, command: Command::Tick };
    assert_eq!(restored.apply(&tick), h.tick());
    assert_eq!(restored.state_digest(), h.engine.state_digest());
}

#[test]
fn image_header_has_the_documented_layout() {
    // Goal: versions, shard, id generator, clock, sequence, hash and keys head sit at the
    // offsets of the byte diagram, and the SKU table's count follows the header.
    let h = Harness::with_sku(sku_spec(SKU));
    let bytes = image_bytes(&h.engine.to_image());
    assert_eq!(&bytes[0..2], &IMAGE_FORMAT_VERSION.to_le_bytes());
    assert_eq!(&bytes[2..4], &crate::codec::ENCODING_VERSION.to_le_bytes());
    assert_eq!(&bytes[4..8], &hex("0100 00 00"), "shard 1, no id issued yet, zero");
    assert_eq!(&bytes[8..24], &[0; 16], "id generator millisecond and counter");
    assert_eq!(&bytes[24..32], &T0.0.to_le_bytes());
    assert_eq!(&bytes[32..40], &1_u64.to_le_bytes(), "last sequence");
    assert_eq!(&bytes[40..48], &h.engine.running_hash().to_le_bytes());
    assert_eq!(&bytes[48..56], &0_u64.to_le_bytes(), "keys head");
    assert_eq!(&bytes[56..60], &1_u32.to_le_bytes(), "one SKU");
    assert_eq!(&bytes[60..68], &SKU.to_le_bytes());
}

#[test]
fn every_truncation_of_an_image_is_refused() {
    // Goal: an image cut anywhere short of its end (a torn snapshot) is refused, not read as
    // a smaller state.
    let mut h = Harness::new();
    restore_workload(&mut h);
    let bytes = image_bytes(&h.engine.to_image());
    for cut in 0..bytes.len() {
        assert!(EngineImage::decode(&bytes[..cut]).is_err(), "cut at {cut} of {}", bytes.len());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        EngineImage::decode(&longer),
        Err(ImageDecodeError::Bytes(crate::codec::DecodeError::TrailingBytes { count: 1, .. }))
    ));
}

#[test]
fn single_byte_flips_are_refused_or_decode_to_another_canonical_image() {
    // Goal: damaging any one byte of a real image never panics the decoder or restore: the
    // image is refused, or it decodes to a different image whose encoding is exactly the
    // damaged bytes (no half-validated field slips through).
    let mut h = Harness::new();
    restore_workload(&mut h);
    let image = h.engine.to_image();
    let bytes = image_bytes(&image);
    let (mut refused, mut decoded) = (0, 0);
    for at in 0..bytes.len() {
        for mask in [0x01_u8, 0x80, 0xFF] {
            let mut damaged = bytes.clone();
            damaged[at] ^= mask;
            let Ok(other) = EngineImage::decode(&damaged) else {
                refused += 1;
                continue;
            };
            decoded += 1;
            assert_ne!(other, image, "flip at {at}");
            assert_eq!(image_bytes(&other), damaged, "flip at {at} re-encodes differently");
            // Restore may refuse it, but must not panic.
            let _ = Engine::from_image(EngineConfig::small(), &other);
        }
    }
    assert!(refused > 0 && decoded > 0, "{refused} refused, {decoded} decoded");
}

#[test]
fn images_of_other_versions_and_impossible_headers_are_refused_clearly() {
    // Goal: a future format or encoding version, a version never written, an impossible id
    // generator and a count larger than the image are each refused with their own error.
    let h = Harness::with_sku(sku_spec(SKU));
    let bytes = image_bytes(&h.engine.to_image());
    let with = |at: usize, patch: &[u8]| {
        let mut damaged = bytes.clone();
        damaged[at..at + patch.len()].copy_from_slice(patch);
        EngineImage::decode(&damaged).expect_err("damaged header refused")
    };
    let supported = IMAGE_FORMAT_VERSION;
    let future = with(0, &(supported + 1).to_le_bytes());
    assert_eq!(future, ImageDecodeError::FutureVersion { found: supported + 1, supported });
    assert!(future.to_string().contains("newer than this build"), "{future}");
    let never = with(0, &0_u16.to_le_bytes());
    assert_eq!(never, ImageDecodeError::UnknownVersion { found: 0, supported });
    // Version 1 kept request keys unscoped: its images cannot be restored faithfully.
    let unscoped = with(0, &1_u16.to_le_bytes());
    assert_eq!(unscoped, ImageDecodeError::RetiredVersion { found: 1, supported });
    assert!(unscoped.to_string().contains("replaying the journal"), "{unscoped}");
    let encoding = with(2, &2_u16.to_le_bytes());
    assert_eq!(encoding, ImageDecodeError::UnsupportedEncoding { found: 2, supported: 1 });
    // A generator that issued nothing cannot have moved its counter.
    let counter = with(16, &1_u64.to_le_bytes());
    assert!(matches!(counter, ImageDecodeError::BadIdGenerator { counter: 1, .. }));
    let count = with(56, &u32::MAX.to_le_bytes());
    assert!(matches!(count, ImageDecodeError::TableTooLong { table: "SKU", offset: 56, .. }));
    assert_eq!(EngineImage::decode(&bytes[..10]), Err(ImageDecodeError::TooShort { len: 10 }));
}

#[test]
fn shard_zero_before_the_snowflake_epoch_issues_no_zero_id_and_snapshots_restore() {
    // Goal: a node of shard 0 whose clock reads before the snowflake epoch (a wrong clock, or
    // a test's) issues order ids from 1, expires them and takes snapshots that restore: zero,
    // which restore refuses and expiry asserts away, is never issued.
    let config = EngineConfig { shard: 0, ..EngineConfig::small() };
    let mut harness = Harness::with_config(config.clone());
    harness.clock = Timestamp(1_700_000_000_000);
    harness.create_sku(sku_spec(1));
    let first = harness.reserved(7, 1, 1);
    let second = harness.reserved(8, 1, 1);
    assert_eq!((first, second), (OrderId(1), OrderId(2)));
    harness.advance(sku_spec(1).payment_timeout_ms);
    harness.tick();
    assert_eq!(harness.expired_orders(), [first, second]);
    let restored = Engine::from_image(config, &harness.engine.to_image()).expect("restores");
    assert_eq!(restored.state_digest(), harness.engine.state_digest());
}
