//! Property test: random command sequences checked, step by step, against a naive model.
//!
//! The reference model below is deliberately plain: ordered maps, linear scans and sums
//! recomputed from scratch. Each step applies one command to the engine and to the model and
//! demands the same outcome, then checks what the brief promises against the engine's own
//! views: no overselling (`available + reserved + sold` equals the stock put in), no user above
//! a per-user limit or a per-user quota, every order in exactly one state, coupons never
//! over-issued.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use ringfence_core::{
    Action, BatchId, BatchView, Command, CouponId, CouponState, CouponView, CreateCouponBatch,
    CreateSku, Engine, EngineConfig, OrderId, OrderState, OrderView, Outcome, PaymentRef, Query,
    Rejection, RequestKey, Reserve, Sequence, Sequenced, SkuId, SkuView, Timestamp, UserId,
};

/// The snowflake epoch, 2025-01-01T00:00:00Z, restated here so the model is independent.
const EPOCH_UNIX_MS: u64 = 1_735_689_600_000;
/// The first command's timestamp: one day after the snowflake epoch.
const START_MS: u64 = EPOCH_UNIX_MS + 86_400_000;
/// Buyers are users 1..=USERS; user 0 is invalid and appears now and then.
const USERS: u8 = 16;
/// SKU ids the generator picks from (0 is invalid).
const SKU_IDS: u8 = 7;
/// Batch ids the generator picks from (0 is invalid).
const BATCH_IDS: u8 = 5;

// ---------------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct ModelOrder {
    view: OrderView,
    /// Whether the engine still keeps it (finished orders are forgotten oldest first).
    kept: bool,
}

#[derive(Clone, Copy, Debug)]
struct ModelCoupon {
    id: CouponId,
    batch: BatchId,
    user: UserId,
    /// Stored state; an `Available` coupon reads as `Expired` once its batch has ended.
    state: CouponState,
}

#[derive(Clone, Copy, Debug)]
struct ModelKey {
    key: RequestKey,
    expires_at: u64,
    action: Action,
    outcome: Outcome,
}

/// What one command did to the model.
struct Applied {
    outcome: Outcome,
    /// Whether the business tables may have changed (else `tables_digest` must not move).
    tables_touched: bool,
}

struct Model {
    config: EngineConfig,
    now: u64,
    /// Last snowflake (millisecond, counter) handed out.
    last_id: Option<(u64, u64)>,
    skus: BTreeMap<SkuId, SkuView>,
    /// SKU ids in the order they were created: the catalogue positions of `Query::SkuAt`.
    sku_positions: Vec<SkuId>,
    /// Units ever put into each SKU: initial stock plus restocks.
    stock_in: BTreeMap<SkuId, u64>,
    /// Every order ever reserved, kept or forgotten.
    orders: BTreeMap<OrderId, ModelOrder>,
    /// Order ids in creation order, for the generator.
    order_log: Vec<OrderId>,
    /// Kept finished orders, oldest finish first: the next to be forgotten is at the front.
    finished: VecDeque<OrderId>,
    batches: BTreeMap<BatchId, BatchView>,
    coupons: BTreeMap<CouponId, ModelCoupon>,
    /// Coupon ids in claim order, for the generator.
    coupon_log: Vec<CouponId>,
    claims: BTreeMap<(UserId, BatchId), u32>,
    keys: Vec<ModelKey>,
    /// Expiries fired by the last time advance.
    expired_last: usize,
    /// Commands refused because their user held a full share: (of the keys, of the orders).
    quota_refusals: (u64, u64),
}

/// Whether an order's units count against its buyer's per-user limit. A completed order still
/// counts, so a limit of one means one unit per buyer for the whole sale.
fn holds_units(state: OrderState) -> bool {
    match state {
        OrderState::Reserved | OrderState::Paid | OrderState::Shipped | OrderState::Completed => {
            true
        }
        OrderState::Cancelled | OrderState::Expired | OrderState::Refunded => false,
    }
}

/// No transition leaves these states; their orders wait to be forgotten, oldest first.
fn is_final(state: OrderState) -> bool {
    matches!(
        state,
        OrderState::Completed | OrderState::Cancelled | OrderState::Expired | OrderState::Refunded
    )
}

fn is_sold(state: OrderState) -> bool {
    matches!(state, OrderState::Paid | OrderState::Shipped | OrderState::Completed)
}

impl Model {
    fn new(config: EngineConfig) -> Model {
        Model {
            config,
            now: 0,
            last_id: None,
            skus: BTreeMap::new(),
            sku_positions: Vec::new(),
            stock_in: BTreeMap::new(),
            orders: BTreeMap::new(),
            order_log: Vec::new(),
            finished: VecDeque::new(),
            batches: BTreeMap::new(),
            coupons: BTreeMap::new(),
            coupon_log: Vec::new(),
            claims: BTreeMap::new(),
            keys: Vec::new(),
            expired_last: 0,
            quota_refusals: (0, 0),
        }
    }

    fn apply(&mut self, timestamp: u64, command: &Command) -> Applied {
        match command {
            Command::Query(query) => Applied { outcome: self.query(query), tables_touched: false },
            Command::Snapshot => unreachable!("the generator sends no snapshot requests"),
            Command::Tick => {
                self.advance(timestamp);
                let outcome = Outcome::Ticked { now: Timestamp(self.now) };
                Applied { outcome, tables_touched: self.expired_last > 0 }
            }
            Command::Client { key, action } => {
                self.advance(timestamp);
                let (outcome, executed) = self.keyed(*key, action);
                let touched = self.expired_last > 0 || (executed && !outcome.is_rejected());
                Applied { outcome, tables_touched: touched }
            }
        }
    }

    fn advance(&mut self, timestamp: u64) {
        self.expired_last = 0;
        if timestamp <= self.now {
            return;
        }
        self.now = timestamp;
        let mut due: Vec<(u64, OrderId)> = self
            .orders
            .values()
            .filter(|o| o.view.state == OrderState::Reserved && o.view.expires_at.0 <= self.now)
            .map(|o| (o.view.expires_at.0, o.view.order))
            .collect();
        due.sort();
        for (_, id) in due {
            self.release(id, OrderState::Expired);
            self.expired_last += 1;
        }
        let now = self.now;
        self.keys.retain(|entry| entry.expires_at > now);
    }

    /// The outcome, and whether the action was executed (rather than answered from a key).
    fn keyed(&mut self, key: RequestKey, action: &Action) -> (Outcome, bool) {
        // A key is scoped to the user its command names: the same key from another buyer,
        // or in a command naming nobody, is another key. Commands naming nobody share the
        // scope of user 0 (refused everywhere, as no user id is 0).
        let scope = |action: &Action| action.user().unwrap_or(UserId(0));
        let same = |entry: &&ModelKey| entry.key == key && scope(&entry.action) == scope(action);
        if let Some(entry) = self.keys.iter().find(same) {
            if entry.action == *action {
                return (entry.outcome, false);
            }
            return (Outcome::Rejected(Rejection::RequestKeyReused), false);
        }
        let exhausted = (Outcome::Rejected(Rejection::CapacityExhausted), false);
        if self.keys.len() == self.config.request_keys_max as usize {
            return exhausted;
        }
        let user = scope(action);
        let quota = usize::from(self.config.request_keys_per_user_max);
        if quota > 0 && user != UserId(0) && self.keys_held(user) >= quota {
            self.quota_refusals.0 += 1;
            return exhausted;
        }
        let outcome = self.execute(action).unwrap_or_else(Outcome::Rejected);
        if outcome != Outcome::Rejected(Rejection::CapacityExhausted) {
            let expires_at = self.now + self.config.request_key_window_ms;
            self.keys.push(ModelKey { key, expires_at, action: *action, outcome });
        }
        (outcome, true)
    }

    fn execute(&mut self, action: &Action) -> Result<Outcome, Rejection> {
        match *action {
            Action::CreateSku(create) => self.create_sku(&create),
            Action::Restock { sku, qty } => self.restock(sku, qty),
            Action::OpenSale { sku } => self.set_open(sku, true),
            Action::CloseSale { sku } => self.set_open(sku, false),
            Action::Reserve(reserve) => self.reserve(&reserve),
            Action::Pay { order, payment_ref, amount_cents } => {
                self.pay(order, payment_ref, amount_cents)
            }
            Action::Cancel { order, user } => self.cancel(order, Some(user)),
            Action::AdminCancel { order } => self.cancel(order, None),
            Action::Ship { order } => self.ship(order),
            Action::Complete { order, user } => self.complete(order, user),
            Action::Refund { order } => self.refund(order),
            Action::CreateCouponBatch(create) => self.create_batch(&create),
            Action::ClaimCoupon { user, batch } => self.claim(user, batch),
        }
    }

    fn next_id(&mut self) -> u64 {
        let millis = self.now.saturating_sub(EPOCH_UNIX_MS);
        let (millis, counter) = match self.last_id {
            Some((last, counter)) if millis <= last && counter < 4095 => (last, counter + 1),
            Some((last, _)) if millis <= last => (last + 1, 0),
            _ => (millis, 0),
        };
        self.last_id = Some((millis, counter));
        (millis << 22) | (u64::from(self.config.shard) << 12) | counter
    }

    fn create_sku(&mut self, create: &CreateSku) -> Result<Outcome, Rejection> {
        let window_empty = match (create.sale_start, create.sale_end) {
            (Some(start), Some(end)) => end <= start,
            _ => false,
        };
        if create.sku.0 == 0 || create.payment_timeout_ms == 0 || window_empty {
            return Err(Rejection::InvalidArgument);
        }
        if self.skus.contains_key(&create.sku) {
            return Err(Rejection::SkuExists);
        }
        if self.skus.len() == self.config.skus_max as usize {
            return Err(Rejection::CapacityExhausted);
        }
        let view = SkuView {
            sku: create.sku,
            stock: u64::from(create.stock),
            available: u64::from(create.stock),
            reserved: 0,
            sold: 0,
            price_cents: create.price_cents,
            per_user_limit: create.per_user_limit,
            open: true,
            payment_timeout_ms: create.payment_timeout_ms,
            sale_start: create.sale_start,
            sale_end: create.sale_end,
        };
        self.skus.insert(create.sku, view);
        self.sku_positions.push(create.sku);
        self.stock_in.insert(create.sku, u64::from(create.stock));
        Ok(Outcome::SkuCreated(view))
    }

    fn restock(&mut self, sku: SkuId, qty: u32) -> Result<Outcome, Rejection> {
        if qty == 0 {
            return Err(Rejection::InvalidQty);
        }
        let view = self.skus.get_mut(&sku).ok_or(Rejection::UnknownSku)?;
        view.stock += u64::from(qty);
        view.available += u64::from(qty);
        *self.stock_in.get_mut(&sku).unwrap() += u64::from(qty);
        Ok(Outcome::Restocked(*view))
    }

    fn set_open(&mut self, sku: SkuId, open: bool) -> Result<Outcome, Rejection> {
        let view = self.skus.get_mut(&sku).ok_or(Rejection::UnknownSku)?;
        view.open = open;
        Ok(Outcome::SaleChanged(*view))
    }

    /// Units a user holds of a SKU: the sum over every order that still holds units.
    fn held(&self, user: UserId, sku: SkuId) -> u64 {
        let holding =
            |o: &&ModelOrder| o.view.user == user && o.view.sku == sku && holds_units(o.view.state);
        self.orders.values().filter(holding).map(|o| u64::from(o.view.qty)).sum()
    }

    /// Request keys remembered for commands naming `user`.
    fn keys_held(&self, user: UserId) -> usize {
        self.keys.iter().filter(|entry| entry.action.user() == Some(user)).count()
    }

    /// Orders of `user` that are reserved, paid or shipped.
    fn live_orders(&self, user: UserId) -> usize {
        let live = |o: &&ModelOrder| o.view.user == user && !is_final(o.view.state);
        self.orders.values().filter(live).count()
    }

    /// (user, SKU) pairs holding units of a SKU with a per-user limit.
    fn holdings_count(&self) -> usize {
        let mut pairs = BTreeSet::new();
        for order in self.orders.values() {
            let limited = self.skus[&order.view.sku].per_user_limit != 0;
            if limited && holds_units(order.view.state) {
                pairs.insert((order.view.user, order.view.sku));
            }
        }
        pairs.len()
    }

    fn kept_orders(&self) -> usize {
        self.orders.values().filter(|o| o.kept).count()
    }

    fn reserve(&mut self, reserve: &Reserve) -> Result<Outcome, Rejection> {
        if reserve.qty == 0 || reserve.qty > self.config.order_qty_max {
            return Err(Rejection::InvalidQty);
        }
        if reserve.user.0 == 0 {
            return Err(Rejection::InvalidArgument);
        }
        let sku = *self.skus.get(&reserve.sku).ok_or(Rejection::UnknownSku)?;
        if !sku.open {
            return Err(Rejection::SaleClosed);
        }
        if sku.sale_start.is_some_and(|start| self.now < start.0) {
            return Err(Rejection::SaleNotOpen);
        }
        if sku.sale_end.is_some_and(|end| self.now >= end.0) {
            return Err(Rejection::SaleClosed);
        }
        let gross =
            sku.price_cents.checked_mul(u64::from(reserve.qty)).ok_or(Rejection::InvalidQty)?;
        let held = self.held(reserve.user, reserve.sku);
        let limit = u64::from(sku.per_user_limit);
        if limit != 0 && held + u64::from(reserve.qty) > limit {
            return Err(Rejection::LimitExceeded);
        }
        if sku.available < u64::from(reserve.qty) {
            return Err(Rejection::SoldOut);
        }
        let discount = match reserve.coupon {
            Some(coupon) => self.usable_coupon(coupon, reserve.user, gross)?,
            None => 0,
        };
        let quota = usize::from(self.config.orders_per_user_max);
        if quota > 0 && self.live_orders(reserve.user) >= quota {
            self.quota_refusals.1 += 1;
            return Err(Rejection::CapacityExhausted);
        }
        let holdings_max = self.config.holdings_max as usize;
        if limit != 0 && held == 0 && self.holdings_count() == holdings_max {
            return Err(Rejection::CapacityExhausted);
        }
        if self.kept_orders() == self.config.orders_max as usize {
            let oldest = self.finished.pop_front().ok_or(Rejection::CapacityExhausted)?;
            self.orders.get_mut(&oldest).unwrap().kept = false;
        }
        let id = OrderId(self.next_id());
        let expires_at = Timestamp(self.now + sku.payment_timeout_ms);
        let amount_cents = gross.saturating_sub(discount);
        let view = self.skus.get_mut(&reserve.sku).unwrap();
        view.available -= u64::from(reserve.qty);
        view.reserved += u64::from(reserve.qty);
        if let Some(coupon) = reserve.coupon {
            self.coupons.get_mut(&coupon).unwrap().state = CouponState::Locked(id);
        }
        let view = OrderView {
            order: id,
            user: reserve.user,
            sku: reserve.sku,
            qty: reserve.qty,
            amount_cents,
            state: OrderState::Reserved,
            created_at: Timestamp(self.now),
            expires_at,
            coupon: reserve.coupon,
            payment_ref: None,
        };
        self.orders.insert(id, ModelOrder { view, kept: true });
        self.order_log.push(id);
        Ok(Outcome::Reserved { order: id, expires_at, amount_cents })
    }

    /// The discount of a coupon the buyer may apply to an order worth `gross`.
    fn usable_coupon(&self, id: CouponId, user: UserId, gross: u64) -> Result<u64, Rejection> {
        let coupon = self.coupons.get(&id).ok_or(Rejection::UnknownCoupon)?;
        let batch = &self.batches[&coupon.batch];
        let usable = coupon.user == user
            && coupon.state == CouponState::Available
            && batch.valid_from.0 <= self.now
            && self.now < batch.valid_until.0
            && gross >= batch.min_amount_cents;
        if usable { Ok(batch.discount_cents) } else { Err(Rejection::CouponInvalid) }
    }

    fn kept_order(&self, id: OrderId) -> Result<OrderView, Rejection> {
        match self.orders.get(&id) {
            Some(order) if order.kept => Ok(order.view),
            _ => Err(Rejection::UnknownOrder),
        }
    }

    fn set_state(&mut self, id: OrderId, state: OrderState) {
        self.orders.get_mut(&id).unwrap().view.state = state;
        if is_final(state) {
            self.finished.push_back(id);
        }
    }

    fn pay(
        &mut self,
        id: OrderId,
        payment_ref: PaymentRef,
        amount: u64,
    ) -> Result<Outcome, Rejection> {
        let order = self.kept_order(id)?;
        match order.state {
            OrderState::Reserved => {
                if amount != order.amount_cents {
                    return Err(Rejection::WrongAmount { expected_cents: order.amount_cents });
                }
                self.set_state(id, OrderState::Paid);
                self.orders.get_mut(&id).unwrap().view.payment_ref = Some(payment_ref);
                let sku = self.skus.get_mut(&order.sku).unwrap();
                sku.reserved -= u64::from(order.qty);
                sku.sold += u64::from(order.qty);
                if let Some(coupon) = order.coupon {
                    self.coupons.get_mut(&coupon).unwrap().state = CouponState::Used(id);
                }
                Ok(Outcome::Paid { order: id })
            }
            OrderState::Paid | OrderState::Shipped | OrderState::Completed => {
                if order.payment_ref == Some(payment_ref) {
                    Ok(Outcome::Paid { order: id })
                } else {
                    Err(Rejection::PaymentConflict)
                }
            }
            current => Err(Rejection::InvalidState { current }),
        }
    }

    fn cancel(&mut self, id: OrderId, user: Option<UserId>) -> Result<Outcome, Rejection> {
        let order = self.kept_order(id)?;
        if user.is_some_and(|user| user != order.user) {
            return Err(Rejection::NotOwner);
        }
        if order.state != OrderState::Reserved {
            return Err(Rejection::InvalidState { current: order.state });
        }
        self.release(id, OrderState::Cancelled);
        Ok(Outcome::Cancelled { order: id })
    }

    /// Ends a reserved order (cancelled or expired): units back, coupon free again.
    fn release(&mut self, id: OrderId, end: OrderState) {
        let order = self.orders[&id].view;
        self.set_state(id, end);
        let sku = self.skus.get_mut(&order.sku).unwrap();
        sku.reserved -= u64::from(order.qty);
        sku.available += u64::from(order.qty);
        if let Some(coupon) = order.coupon {
            self.coupons.get_mut(&coupon).unwrap().state = CouponState::Available;
        }
    }

    fn ship(&mut self, id: OrderId) -> Result<Outcome, Rejection> {
        let order = self.kept_order(id)?;
        if order.state != OrderState::Paid {
            return Err(Rejection::InvalidState { current: order.state });
        }
        self.set_state(id, OrderState::Shipped);
        Ok(Outcome::Shipped { order: id })
    }

    fn complete(&mut self, id: OrderId, user: UserId) -> Result<Outcome, Rejection> {
        let order = self.kept_order(id)?;
        if order.user != user {
            return Err(Rejection::NotOwner);
        }
        if order.state != OrderState::Shipped {
            return Err(Rejection::InvalidState { current: order.state });
        }
        self.set_state(id, OrderState::Completed);
        Ok(Outcome::Completed { order: id })
    }

    fn refund(&mut self, id: OrderId) -> Result<Outcome, Rejection> {
        let order = self.kept_order(id)?;
        if order.state != OrderState::Paid {
            return Err(Rejection::InvalidState { current: order.state });
        }
        self.set_state(id, OrderState::Refunded);
        let sku = self.skus.get_mut(&order.sku).unwrap();
        sku.sold -= u64::from(order.qty);
        sku.available += u64::from(order.qty);
        Ok(Outcome::Refunded { order: id })
    }

    fn create_batch(&mut self, create: &CreateCouponBatch) -> Result<Outcome, Rejection> {
        let invalid =
            create.batch.0 == 0 || create.quantity == 0 || create.valid_until <= create.valid_from;
        if invalid {
            return Err(Rejection::InvalidArgument);
        }
        if self.batches.contains_key(&create.batch) {
            return Err(Rejection::BatchExists);
        }
        if self.batches.len() == self.config.batches_max as usize {
            return Err(Rejection::CapacityExhausted);
        }
        let view = BatchView {
            batch: create.batch,
            quantity: create.quantity,
            remaining: create.quantity,
            per_user_limit: create.per_user_limit,
            discount_cents: create.discount_cents,
            min_amount_cents: create.min_amount_cents,
            valid_from: create.valid_from,
            valid_until: create.valid_until,
        };
        self.batches.insert(create.batch, view);
        Ok(Outcome::BatchCreated(view))
    }

    fn claim(&mut self, user: UserId, batch: BatchId) -> Result<Outcome, Rejection> {
        if user.0 == 0 {
            return Err(Rejection::InvalidArgument);
        }
        let view = *self.batches.get(&batch).ok_or(Rejection::UnknownBatch)?;
        if self.now < view.valid_from.0 {
            return Err(Rejection::SaleNotOpen);
        }
        if self.now >= view.valid_until.0 {
            return Err(Rejection::SaleClosed);
        }
        if view.remaining == 0 {
            return Err(Rejection::SoldOut);
        }
        let claimed = self.claims.get(&(user, batch)).copied().unwrap_or(0);
        if view.per_user_limit != 0 && claimed >= view.per_user_limit {
            return Err(Rejection::LimitExceeded);
        }
        if self.coupons.len() == self.config.coupons_max as usize {
            return Err(Rejection::CapacityExhausted);
        }
        let id = CouponId(self.next_id());
        let coupon = ModelCoupon { id, batch, user, state: CouponState::Available };
        self.coupons.insert(id, coupon);
        self.coupon_log.push(id);
        self.batches.get_mut(&batch).unwrap().remaining -= 1;
        *self.claims.entry((user, batch)).or_insert(0) += 1;
        Ok(Outcome::CouponClaimed { coupon: id, batch, valid_until: view.valid_until })
    }

    fn coupon_view(&self, coupon: &ModelCoupon) -> CouponView {
        let batch = &self.batches[&coupon.batch];
        let state = match coupon.state {
            CouponState::Available if self.now >= batch.valid_until.0 => CouponState::Expired,
            state => state,
        };
        CouponView {
            coupon: coupon.id,
            batch: coupon.batch,
            user: coupon.user,
            state,
            discount_cents: batch.discount_cents,
            valid_until: batch.valid_until,
        }
    }

    fn query(&self, query: &Query) -> Outcome {
        let answer = match *query {
            Query::Sku(sku) => {
                self.skus.get(&sku).map(|v| Outcome::Sku(*v)).ok_or(Rejection::UnknownSku)
            }
            Query::Order(order) => self.kept_order(order).map(Outcome::Order),
            Query::Coupon(coupon) => self
                .coupons
                .get(&coupon)
                .map(|c| Outcome::Coupon(self.coupon_view(c)))
                .ok_or(Rejection::UnknownCoupon),
            Query::Batch(batch) => {
                self.batches.get(&batch).map(|v| Outcome::Batch(*v)).ok_or(Rejection::UnknownBatch)
            }
            Query::SkuAt(position) => self
                .sku_positions
                .get(position as usize)
                .map(|sku| Outcome::Sku(self.skus[sku]))
                .ok_or(Rejection::UnknownSku),
        };
        answer.unwrap_or_else(Outcome::Rejected)
    }
}

// ---------------------------------------------------------------------------------------------
// Generated steps. Picks are indices resolved against the model when the step runs, so a
// shrunk sequence stays meaningful.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Clock {
    Same,
    Forward(u64),
    /// A producer whose stamp is behind the latest one.
    Backward(u64),
}

#[derive(Clone, Copy, Debug)]
enum OrderPick {
    /// One of the latest few orders, so that orders travel through their states.
    Recent(u16),
    /// One of the orders that are not finished yet.
    Open(u16),
    /// Any order ever reserved, forgotten ones included.
    Any(u16),
    /// An id that was never issued.
    Bogus(u16),
}

#[derive(Clone, Copy, Debug)]
enum CouponPick {
    None,
    /// A claimed coupon, reserved by its owner.
    Own(u16),
    /// A claimed coupon, reserved by whoever the step names.
    Any(u16),
    Bogus,
}

#[derive(Clone, Copy, Debug)]
enum AmountPick {
    Right,
    Over(u64),
    Zero,
}

#[derive(Clone, Copy, Debug)]
struct SkuPick {
    sku: u8,
    stock: u32,
    price_cents: u64,
    per_user_limit: u32,
    payment_timeout_ms: u64,
    start_offset: Option<i64>,
    end_offset: Option<i64>,
}

#[derive(Clone, Copy, Debug)]
struct BatchPick {
    batch: u8,
    quantity: u32,
    per_user_limit: u32,
    discount_cents: u64,
    min_amount_cents: u64,
    from_offset: i64,
    length_ms: u64,
}

#[derive(Clone, Copy, Debug)]
enum QueryPick {
    Sku(u8),
    Order(OrderPick),
    Coupon(u16),
    Batch(u8),
    SkuAt(u8),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Tick {
        jump_ms: u64,
    },
    Reserve {
        user: u8,
        sku: u8,
        qty: u32,
        coupon: CouponPick,
    },
    Pay {
        order: OrderPick,
        amount: AmountPick,
        payment_ref: u8,
    },
    Cancel {
        order: OrderPick,
        by_owner: bool,
        user: u8,
    },
    AdminCancel {
        order: OrderPick,
    },
    Ship {
        order: OrderPick,
    },
    Complete {
        order: OrderPick,
        by_owner: bool,
        user: u8,
    },
    Refund {
        order: OrderPick,
    },
    CreateSku(SkuPick),
    Restock {
        sku: u8,
        qty: u32,
    },
    SetSale {
        sku: u8,
        open: bool,
    },
    CreateBatch(BatchPick),
    Claim {
        user: u8,
        batch: u8,
    },
    /// The same key and command as an earlier one: a client retry.
    RetrySame {
        back: u16,
    },
    /// An earlier key with another earlier command.
    RetryOther {
        back: u16,
        other: u16,
    },
    Query(QueryPick),
}

#[derive(Clone, Copy, Debug)]
struct Step {
    clock: Clock,
    op: Op,
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        30 => Just(Clock::Same),
        60 => (1u64..40).prop_map(Clock::Forward),
        3 => (100u64..1_500).prop_map(Clock::Forward),
        7 => (1u64..300).prop_map(Clock::Backward),
    ]
}

fn user() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(0u8), 60 => 1..=USERS]
}

fn sku_id() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(0u8), 30 => 1..=3u8, 3 => 4..=SKU_IDS]
}

fn batch_id() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(0u8), 12 => 1..=2u8, 2 => 3..=BATCH_IDS]
}

fn qty() -> impl Strategy<Value = u32> {
    prop_oneof![
        40 => 1u32..=2,
        8 => 3u32..=4,
        2 => Just(0u32),
        2 => 5u32..=9,
        1 => Just(u32::MAX),
    ]
}

fn order_pick() -> impl Strategy<Value = OrderPick> {
    prop_oneof![
        12 => any::<u16>().prop_map(OrderPick::Recent),
        10 => any::<u16>().prop_map(OrderPick::Open),
        4 => any::<u16>().prop_map(OrderPick::Any),
        1 => any::<u16>().prop_map(OrderPick::Bogus),
    ]
}

fn coupon_pick() -> impl Strategy<Value = CouponPick> {
    prop_oneof![
        12 => Just(CouponPick::None),
        4 => any::<u16>().prop_map(CouponPick::Own),
        1 => any::<u16>().prop_map(CouponPick::Any),
        1 => Just(CouponPick::Bogus),
    ]
}

fn amount_pick() -> impl Strategy<Value = AmountPick> {
    prop_oneof![
        12 => Just(AmountPick::Right),
        2 => (1u64..500).prop_map(AmountPick::Over),
        1 => Just(AmountPick::Zero),
    ]
}

fn sku_pick() -> impl Strategy<Value = SkuPick> {
    let price = prop_oneof![10 => 50u64..1_500, 1 => Just(u64::MAX / 2 + 1)];
    let timeout = prop_oneof![20 => 50u64..1_500, 1 => Just(0u64)];
    let start = prop::option::weighted(0.3, -500i64..2_000);
    let end = prop::option::weighted(0.3, 0i64..10_000);
    (0..=SKU_IDS, 0u32..30, price, 0u32..4, timeout, start, end).prop_map(
        |(sku, stock, price_cents, per_user_limit, payment_timeout_ms, start, end)| SkuPick {
            sku,
            stock,
            price_cents,
            per_user_limit,
            payment_timeout_ms,
            start_offset: start,
            end_offset: end,
        },
    )
}

fn batch_pick() -> impl Strategy<Value = BatchPick> {
    let length = prop_oneof![1 => Just(0u64), 10 => 1u64..6_000];
    (0..=BATCH_IDS, 0u32..7, 0u32..3, 0u64..400, 0u64..1_500, -200i64..400, length).prop_map(
        |(batch, quantity, per_user_limit, discount_cents, min_amount_cents, from, length)| {
            BatchPick {
                batch,
                quantity,
                per_user_limit,
                discount_cents,
                min_amount_cents,
                from_offset: from,
                length_ms: length,
            }
        },
    )
}

fn query_pick() -> impl Strategy<Value = QueryPick> {
    prop_oneof![
        (0..=SKU_IDS).prop_map(QueryPick::Sku),
        order_pick().prop_map(QueryPick::Order),
        any::<u16>().prop_map(QueryPick::Coupon),
        (0..=BATCH_IDS).prop_map(QueryPick::Batch),
        (0..=SKU_IDS).prop_map(QueryPick::SkuAt),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let reserve = (user(), sku_id(), qty(), coupon_pick())
        .prop_map(|(user, sku, qty, coupon)| Op::Reserve { user, sku, qty, coupon });
    let pay = (order_pick(), amount_pick(), 0u8..3)
        .prop_map(|(order, amount, payment_ref)| Op::Pay { order, amount, payment_ref });
    let cancel = (order_pick(), prop::bool::weighted(0.8), user())
        .prop_map(|(order, by_owner, user)| Op::Cancel { order, by_owner, user });
    let complete = (order_pick(), prop::bool::weighted(0.85), user())
        .prop_map(|(order, by_owner, user)| Op::Complete { order, by_owner, user });
    let restock = prop_oneof![1 => Just(0u32), 8 => 1u32..40];
    prop_oneof![
        6 => prop_oneof![20 => 1u64..200, 3 => 200u64..3_000].prop_map(|jump_ms| Op::Tick { jump_ms }),
        30 => reserve,
        16 => pay,
        6 => cancel,
        2 => order_pick().prop_map(|order| Op::AdminCancel { order }),
        6 => order_pick().prop_map(|order| Op::Ship { order }),
        5 => complete,
        3 => order_pick().prop_map(|order| Op::Refund { order }),
        2 => sku_pick().prop_map(Op::CreateSku),
        2 => (sku_id(), restock).prop_map(|(sku, qty)| Op::Restock { sku, qty }),
        2 => (sku_id(), prop::bool::weighted(0.7)).prop_map(|(sku, open)| Op::SetSale { sku, open }),
        2 => batch_pick().prop_map(Op::CreateBatch),
        8 => (user(), batch_id()).prop_map(|(user, batch)| Op::Claim { user, batch }),
        6 => any::<u16>().prop_map(|back| Op::RetrySame { back }),
        2 => (any::<u16>(), any::<u16>()).prop_map(|(back, other)| Op::RetryOther { back, other }),
        4 => query_pick().prop_map(Op::Query),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (clock(), op()).prop_map(|(clock, op)| Step { clock, op })
}

/// Small capacities, so that full tables, forgotten orders and key eviction all happen.
fn config() -> impl Strategy<Value = EngineConfig> {
    let tables = (3u32..=6, 6u32..=48, 4u32..=24, 1u32..=4, 2u32..=16);
    let keys = (0u16..1024, 24u32..=256, 100u64..=3_000, 2u32..=6, 0u16..=12, 0u16..=5);
    (tables, keys).prop_map(|((skus, orders, coupons, batches, holdings), keys)| {
        let (shard, keys_max, window_ms, qty_max, per_user, orders_per_user) = keys;
        EngineConfig {
            shard,
            skus_max: skus,
            orders_max: orders,
            coupons_max: coupons,
            batches_max: batches,
            holdings_max: holdings,
            request_keys_max: keys_max,
            request_key_window_ms: window_ms,
            // Zero (no per-user limit) about one time in thirteen.
            request_keys_per_user_max: per_user,
            // Zero (no live-order quota) one time in six.
            orders_per_user_max: orders_per_user,
            order_qty_max: qty_max,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The harness: resolves steps, feeds engine and model, compares, checks invariants.
// ---------------------------------------------------------------------------------------------

struct Harness {
    engine: Engine,
    model: Model,
    sequence: u64,
    /// The latest stamp handed out.
    clock: u64,
    /// Client commands sent with a fresh key, for retries.
    sent: Vec<(RequestKey, Action)>,
    next_key: u128,
    /// How often each outcome (or rejection code) was seen.
    seen: BTreeMap<&'static str, u64>,
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Sku(_) | Outcome::Order(_) | Outcome::Coupon(_) | Outcome::Batch(_) => "query",
        Outcome::SnapshotRequested { .. } => "snapshot",
        other => other.name(),
    }
}

impl Harness {
    fn new(config: EngineConfig) -> Harness {
        Harness {
            engine: Engine::new(config.clone()),
            model: Model::new(config),
            sequence: 0,
            clock: START_MS,
            sent: Vec::new(),
            next_key: 1,
            seen: BTreeMap::new(),
        }
    }

    /// Three SKUs (no limit; limit 3; limit 2 with a sale window) and one coupon batch.
    fn preamble(&mut self) -> Result<(), TestCaseError> {
        let plain = CreateSku {
            sku: SkuId(1),
            stock: 8,
            price_cents: 250,
            per_user_limit: 0,
            payment_timeout_ms: 400,
            sale_start: None,
            sale_end: None,
        };
        let limited = CreateSku {
            sku: SkuId(2),
            stock: 12,
            price_cents: 990,
            per_user_limit: 3,
            payment_timeout_ms: 900,
            ..plain
        };
        let windowed = CreateSku {
            sku: SkuId(3),
            stock: 8,
            price_cents: 120,
            per_user_limit: 2,
            payment_timeout_ms: 300,
            sale_start: Some(Timestamp(START_MS + 300)),
            sale_end: Some(Timestamp(START_MS + 15_000)),
        };
        let batch = CreateCouponBatch {
            batch: BatchId(1),
            quantity: 6,
            per_user_limit: 2,
            discount_cents: 100,
            min_amount_cents: 200,
            valid_from: Timestamp(START_MS),
            valid_until: Timestamp(START_MS + 6_000),
        };
        for action in [
            Action::CreateSku(plain),
            Action::CreateSku(limited),
            Action::CreateSku(windowed),
            Action::CreateCouponBatch(batch),
        ] {
            let command = self.fresh(action);
            self.submit(self.clock, command, "preamble")?;
        }
        Ok(())
    }

    fn fresh(&mut self, action: Action) -> Command {
        let key = RequestKey::from_u128(self.next_key);
        self.next_key += 1;
        self.sent.push((key, action));
        Command::Client { key, action }
    }

    fn stamp(&mut self, step: &Step) -> u64 {
        if let Op::Tick { jump_ms } = step.op {
            self.clock += jump_ms;
            return self.clock;
        }
        match step.clock {
            Clock::Same => self.clock,
            Clock::Forward(ms) => {
                self.clock += ms;
                self.clock
            }
            Clock::Backward(ms) => self.clock - ms,
        }
    }

    fn order(&self, pick: OrderPick) -> OrderId {
        let log = &self.model.order_log;
        let open: Vec<OrderId> = match pick {
            OrderPick::Open(_) => self
                .model
                .orders
                .values()
                .filter(|o| o.kept && !is_final(o.view.state))
                .map(|o| o.view.order)
                .collect(),
            _ => Vec::new(),
        };
        match pick {
            _ if log.is_empty() => OrderId(1),
            OrderPick::Recent(index) => log[log.len() - 1 - usize::from(index) % log.len().min(5)],
            OrderPick::Open(index) if !open.is_empty() => open[usize::from(index) % open.len()],
            OrderPick::Open(index) | OrderPick::Any(index) => log[usize::from(index) % log.len()],
            OrderPick::Bogus(index) => OrderId(u64::from(index) + 1),
        }
    }

    fn order_user(&self, order: OrderId) -> UserId {
        self.model.orders.get(&order).map_or(UserId(1), |o| o.view.user)
    }

    fn coupon(&self, index: u16) -> Option<CouponId> {
        let log = &self.model.coupon_log;
        (!log.is_empty()).then(|| log[usize::from(index) % log.len()])
    }

    fn sent(&self, back: u16) -> Option<(RequestKey, Action)> {
        let n = self.sent.len();
        (n > 0).then(|| self.sent[n - 1 - usize::from(back) % n.min(40)])
    }

    fn at(&self, offset: i64) -> Timestamp {
        Timestamp(self.model.now.saturating_add_signed(offset))
    }

    fn resolve(&mut self, op: &Op) -> Command {
        let action = match *op {
            Op::Tick { .. } => return Command::Tick,
            Op::Query(pick) => return Command::Query(self.query(pick)),
            Op::RetrySame { back } => {
                return self
                    .sent(back)
                    .map_or(Command::Tick, |(key, action)| Command::Client { key, action });
            }
            Op::RetryOther { back, other } => {
                let (Some((key, _)), Some((_, action))) = (self.sent(back), self.sent(other))
                else {
                    return Command::Tick;
                };
                return Command::Client { key, action };
            }
            Op::Reserve { user, sku, qty, coupon } => self.reserve(user, sku, qty, coupon),
            Op::Pay { order, amount, payment_ref } => {
                let order = self.order(order);
                let right = self.model.orders.get(&order).map_or(0, |o| o.view.amount_cents);
                let amount_cents = match amount {
                    AmountPick::Right => right,
                    AmountPick::Over(extra) => right + extra,
                    AmountPick::Zero => 0,
                };
                let payment_ref = PaymentRef::from_u128(u128::from(payment_ref));
                Action::Pay { order, payment_ref, amount_cents }
            }
            Op::Cancel { order, by_owner, user } => {
                let order = self.order(order);
                let user = if by_owner { self.order_user(order) } else { UserId(user.into()) };
                Action::Cancel { order, user }
            }
            Op::AdminCancel { order } => Action::AdminCancel { order: self.order(order) },
            Op::Ship { order } => Action::Ship { order: self.order(order) },
            Op::Complete { order, by_owner, user } => {
                let order = self.order(order);
                let user = if by_owner { self.order_user(order) } else { UserId(user.into()) };
                Action::Complete { order, user }
            }
            Op::Refund { order } => Action::Refund { order: self.order(order) },
            Op::CreateSku(pick) => Action::CreateSku(CreateSku {
                sku: SkuId(pick.sku.into()),
                stock: pick.stock,
                price_cents: pick.price_cents,
                per_user_limit: pick.per_user_limit,
                payment_timeout_ms: pick.payment_timeout_ms,
                sale_start: pick.start_offset.map(|offset| self.at(offset)),
                sale_end: pick.end_offset.map(|offset| self.at(offset)),
            }),
            Op::Restock { sku, qty } => Action::Restock { sku: SkuId(sku.into()), qty },
            Op::SetSale { sku, open: true } => Action::OpenSale { sku: SkuId(sku.into()) },
            Op::SetSale { sku, open: false } => Action::CloseSale { sku: SkuId(sku.into()) },
            Op::CreateBatch(pick) => {
                let valid_from = self.at(pick.from_offset);
                Action::CreateCouponBatch(CreateCouponBatch {
                    batch: BatchId(pick.batch.into()),
                    quantity: pick.quantity,
                    per_user_limit: pick.per_user_limit,
                    discount_cents: pick.discount_cents,
                    min_amount_cents: pick.min_amount_cents,
                    valid_from,
                    valid_until: valid_from.plus_ms(pick.length_ms),
                })
            }
            Op::Claim { user, batch } => {
                Action::ClaimCoupon { user: UserId(user.into()), batch: BatchId(batch.into()) }
            }
        };
        self.fresh(action)
    }

    fn reserve(&self, user: u8, sku: u8, qty: u32, coupon: CouponPick) -> Action {
        let mut user = UserId(user.into());
        let coupon = match coupon {
            CouponPick::None => None,
            CouponPick::Own(index) => self.coupon(index).inspect(|id| {
                user = self.model.coupons[id].user;
            }),
            CouponPick::Any(index) => self.coupon(index),
            CouponPick::Bogus => Some(CouponId(7)),
        };
        Action::Reserve(Reserve { user, sku: SkuId(sku.into()), qty, coupon })
    }

    fn query(&self, pick: QueryPick) -> Query {
        match pick {
            QueryPick::Sku(sku) => Query::Sku(SkuId(sku.into())),
            QueryPick::Order(order) => Query::Order(self.order(order)),
            QueryPick::Coupon(index) => Query::Coupon(self.coupon(index).unwrap_or(CouponId(9))),
            QueryPick::Batch(batch) => Query::Batch(BatchId(batch.into())),
            QueryPick::SkuAt(position) => Query::SkuAt(position.into()),
        }
    }

    fn run(&mut self, index: usize, step: &Step) -> Result<(), TestCaseError> {
        let timestamp = self.stamp(step);
        let command = self.resolve(&step.op);
        self.submit(timestamp, command, &format!("step {index} {step:?}"))
    }

    fn submit(
        &mut self,
        timestamp: u64,
        command: Command,
        context: &str,
    ) -> Result<(), TestCaseError> {
        self.sequence += 1;
        let sequenced = Sequenced {
            sequence: Sequence(self.sequence),
            timestamp: Timestamp(timestamp),
            command,
        };
        let tables_before = self.engine.tables_digest();
        let expected = self.model.apply(timestamp, &command);
        let outcome = self.engine.apply(&sequenced);
        prop_assert_eq!(outcome, expected.outcome, "{} at {}: {:?}", context, timestamp, command);
        if !expected.tables_touched {
            let tables_after = self.engine.tables_digest();
            prop_assert_eq!(
                tables_before,
                tables_after,
                "{}: {:?} changed tables",
                context,
                command
            );
        }
        *self.seen.entry(outcome_name(&outcome)).or_insert(0) += 1;
        if self.model.expired_last > 0 {
            *self.seen.entry("expired").or_insert(0) += self.model.expired_last as u64;
        }
        self.check_invariants().map_err(|error| {
            TestCaseError::fail(format!("{context}: {command:?}: invariant broken: {error}"))
        })
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        self.check_skus()?;
        self.check_orders()?;
        self.check_coupons()?;
        let status = self.engine.status();
        let model = &self.model;
        let reserved = model.orders.values().filter(|o| o.view.state == OrderState::Reserved);
        prop_assert_eq!(status.now, Timestamp(model.now));
        prop_assert_eq!(status.orders as usize, model.kept_orders());
        prop_assert_eq!(status.orders_reserved as usize, reserved.count());
        prop_assert_eq!(status.coupons as usize, model.coupons.len());
        prop_assert_eq!(status.request_keys as usize, model.keys.len());
        prop_assert_eq!(status.skus as usize, model.skus.len());
        Ok(())
    }

    /// No overselling, no user above a limit, the engine's SKU figures equal the model's.
    fn check_skus(&self) -> Result<(), TestCaseError> {
        let model = &self.model;
        for (&id, expected) in &model.skus {
            let Outcome::Sku(view) = self.engine.query(&Query::Sku(id)) else {
                return Err(TestCaseError::fail(format!("SKU {id} is unknown to the engine")));
            };
            prop_assert_eq!(view, *expected);
            prop_assert_eq!(view.available + view.reserved + view.sold, model.stock_in[&id]);
            let of_sku = || model.orders.values().filter(move |o| o.view.sku == id);
            let units = |keep: fn(OrderState) -> bool| -> u64 {
                of_sku().filter(|o| keep(o.view.state)).map(|o| u64::from(o.view.qty)).sum()
            };
            prop_assert_eq!(view.reserved, units(|state| state == OrderState::Reserved));
            prop_assert_eq!(view.sold, units(is_sold));
            if view.per_user_limit != 0 {
                for user in 1..=USERS {
                    let held = model.held(UserId(user.into()), id);
                    prop_assert!(
                        held <= u64::from(view.per_user_limit),
                        "user {user} holds {held}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Every order the engine keeps is in the model's state; forgotten ones are unknown.
    fn check_orders(&self) -> Result<(), TestCaseError> {
        let model = &self.model;
        for order in model.orders.values() {
            let expected = if order.kept {
                Outcome::Order(order.view)
            } else {
                Outcome::Rejected(Rejection::UnknownOrder)
            };
            prop_assert_eq!(self.engine.query(&Query::Order(order.view.order)), expected);
            prop_assert!(
                !order.kept
                    || model.finished.contains(&order.view.order) == is_final(order.view.state)
            );
        }
        prop_assert!(model.kept_orders() <= model.config.orders_max as usize);
        prop_assert!(model.holdings_count() <= model.config.holdings_max as usize);
        let (key_quota, order_quota) =
            (model.config.request_keys_per_user_max, model.config.orders_per_user_max);
        for user in (1..=USERS).map(|user| UserId(user.into())) {
            let (keys, live) = (model.keys_held(user), model.live_orders(user));
            prop_assert!(key_quota == 0 || keys <= usize::from(key_quota), "{user}: {keys} keys");
            prop_assert!(order_quota == 0 || live <= usize::from(order_quota), "{user}: {live}");
        }
        Ok(())
    }

    /// Batches never over-issued, per-user claim limits held, coupon states coherent with orders.
    fn check_coupons(&self) -> Result<(), TestCaseError> {
        let model = &self.model;
        for (&id, expected) in &model.batches {
            prop_assert_eq!(self.engine.query(&Query::Batch(id)), Outcome::Batch(*expected));
            let claimed = model.coupons.values().filter(|c| c.batch == id).count() as u32;
            prop_assert!(claimed <= expected.quantity);
            prop_assert_eq!(expected.quantity - expected.remaining, claimed);
            for user in 0..=USERS {
                let user = UserId(user.into());
                let count =
                    model.coupons.values().filter(|c| c.batch == id && c.user == user).count();
                prop_assert_eq!(model.claims.get(&(user, id)).map_or(0, |&n| n as usize), count);
                let limit = expected.per_user_limit as usize;
                prop_assert!(limit == 0 || count <= limit, "user {user} claimed {count}");
            }
        }
        for coupon in model.coupons.values() {
            let expected = Outcome::Coupon(model.coupon_view(coupon));
            prop_assert_eq!(self.engine.query(&Query::Coupon(coupon.id)), expected);
            if let CouponState::Locked(order) | CouponState::Used(order) = coupon.state {
                prop_assert_eq!(model.orders[&order].view.coupon, Some(coupon.id));
            }
        }
        for order in model.orders.values() {
            let Some(coupon) = order.view.coupon else { continue };
            let state = model.coupons[&coupon].state;
            let id = order.view.order;
            match order.view.state {
                OrderState::Reserved => prop_assert_eq!(state, CouponState::Locked(id)),
                OrderState::Cancelled | OrderState::Expired => {
                    prop_assert!(
                        !matches!(state, CouponState::Locked(o) | CouponState::Used(o) if o == id)
                    );
                }
                _ => prop_assert_eq!(state, CouponState::Used(id)),
            }
        }
        Ok(())
    }
}

fn run_case(config: EngineConfig, steps: &[Step]) -> Result<Harness, TestCaseError> {
    let mut harness = Harness::new(config);
    harness.preamble()?;
    for (index, step) in steps.iter().enumerate() {
        harness.run(index, step)?;
    }
    Ok(harness)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_match_the_reference_model(
        config in config(),
        steps in prop::collection::vec(step(), 200..500),
    ) {
        // Goal: outcome for outcome and invariant for invariant, the engine is the naive model.
        run_case(config, &steps)?;
    }
}

#[test]
fn generated_sequences_reach_every_outcome() {
    // Goal: the generator is not toothless: across a fixed set of cases every rejection the
    // engine can give, every transition, expiries and forgotten orders all occur.
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(ProptestConfig::default(), rng);
    let strategy = (config(), prop::collection::vec(step(), 200..500));
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut forgotten = 0;
    let mut quota_refusals = (0, 0);
    for _ in 0..24 {
        let (config, steps) = strategy.new_tree(&mut runner).unwrap().current();
        let harness = run_case(config, &steps).unwrap();
        for (name, count) in harness.seen {
            *seen.entry(name).or_insert(0) += count;
        }
        forgotten += harness.model.orders.values().filter(|o| !o.kept).count();
        quota_refusals.0 += harness.model.quota_refusals.0;
        quota_refusals.1 += harness.model.quota_refusals.1;
    }
    println!(
        "outcomes over 24 cases: {seen:?}; orders forgotten: {forgotten}; refused at a user's \
         key quota: {}, at their live-order quota: {}",
        quota_refusals.0, quota_refusals.1
    );
    let expected = [
        "ticked",
        "sku_created",
        "restocked",
        "sale_changed",
        "reserved",
        "paid",
        "cancelled",
        "shipped",
        "completed",
        "refunded",
        "batch_created",
        "coupon_claimed",
        "query",
        "expired",
        "sold_out",
        "limit_exceeded",
        "sale_not_open",
        "sale_closed",
        "unknown_sku",
        "unknown_order",
        "unknown_coupon",
        "unknown_batch",
        "invalid_qty",
        "coupon_invalid",
        "capacity_exhausted",
        "sku_exists",
        "batch_exists",
        "invalid_argument",
        "invalid_state",
        "payment_conflict",
        "wrong_amount",
        "not_owner",
        "request_key_reused",
    ];
    for name in expected {
        assert!(seen.get(name).is_some_and(|&n| n > 0), "no `{name}` outcome in {seen:?}");
    }
    assert!(forgotten > 0, "no finished order was ever forgotten");
    assert!(quota_refusals.0 > 0, "no user ever reached the key quota");
    assert!(quota_refusals.1 > 0, "no user ever reached the live-order quota");
}

#[test]
fn a_burst_past_4096_ids_in_one_millisecond_matches_the_model() {
    // Goal: more than 4096 reservations stamped in the same millisecond borrow the next
    // millisecond for their ids exactly as the model's independent snowflake does.
    let config = EngineConfig {
        orders_max: 8_192,
        request_keys_max: 8_192,
        holdings_max: 8_192,
        ..EngineConfig::small()
    };
    let mut harness = Harness::new(config);
    harness.preamble().unwrap();
    let restock = harness.fresh(Action::Restock { sku: SkuId(1), qty: 5_000 });
    harness.submit(START_MS, restock, "restock").unwrap();
    let mut last = None;
    for user in 1..=4_200u64 {
        let reserve = Reserve { user: UserId(user), sku: SkuId(1), qty: 1, coupon: None };
        let command = harness.fresh(Action::Reserve(reserve));
        harness.sequence += 1;
        let sequenced = Sequenced {
            sequence: Sequence(harness.sequence),
            timestamp: Timestamp(START_MS + 1),
            command,
        };
        let expected = harness.model.apply(START_MS + 1, &command).outcome;
        let outcome = harness.engine.apply(&sequenced);
        assert_eq!(outcome, expected, "reservation {user}");
        let Outcome::Reserved { order, .. } = outcome else { panic!("refused: {outcome:?}") };
        assert!(last.is_none_or(|last| order > last), "ids must increase");
        last = Some(order);
    }
    harness.check_invariants().unwrap();
    let first_millis = (START_MS + 1 - EPOCH_UNIX_MS) << 22;
    assert!(last.unwrap().0 >= first_millis + (1 << 22), "the burst never borrowed a millisecond");
}
