//! The naive baseline: ringfence's reservation rules written the obvious way.
//!
//! This is what a service that keeps its state in process usually looks like: `String` keys
//! formatted like Redis keys (`sku:42`, `order:7`, `hold:3:42`, `req:<hex>`), std `HashMap`s with
//! the default (SipHash, randomly seeded) hasher that grow as they go, a `Mutex` around the whole
//! state taken once per command, and per-request `String` work. It implements the commands the
//! benchmark workloads use (create SKU and coupon batch, reserve with or without a coupon, pay,
//! cancel, claim a coupon, tick with payment expiry, idempotent request keys) and answers them
//! with the same [`Outcome`]s as the engine, so the two can be checked against each other.
//! It is a yardstick, not a second implementation: it has no capacities, no snapshots and no
//! state hash.
//!
//! With the default [`NaiveCapacity`] every map and queue starts empty and grows (rehashing)
//! as the sale goes on; with room reserved up front for the sale's size, as an author who knows
//! that size would write it, the same engine gives the same outcomes without the growth.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Mutex;

use ringfence_core::snowflake::Snowflake;
use ringfence_core::{
    Action, BatchId, BatchView, Command, CouponId, CouponState, CreateCouponBatch, CreateSku,
    OrderId, OrderState, Outcome, PaymentRef, Rejection, Reserve, Sequenced, SkuView, Timestamp,
    UserId,
};

struct SkuRow {
    view: SkuView,
}

struct OrderRow {
    user: UserId,
    sku_key: String,
    qty: u32,
    amount_cents: u64,
    state: OrderState,
    coupon_key: Option<String>,
    payment_ref: Option<PaymentRef>,
}

struct BatchRow {
    view: BatchView,
}

struct CouponRow {
    user: UserId,
    batch_key: String,
    state: CouponState,
}

struct RequestRow {
    action: Action,
    outcome: Outcome,
}

/// Entries each growing map and queue of a [`NaiveEngine`] has room for before its first
/// command. The default reserves nothing: every map starts empty and grows as it goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NaiveCapacity {
    /// SKUs defined.
    pub skus: usize,
    /// Orders in any state (the naive engine never forgets one).
    pub orders: usize,
    /// Units each user holds of each limited SKU.
    pub holdings: usize,
    /// Coupon batches defined.
    pub batches: usize,
    /// Coupons claimed.
    pub coupons: usize,
    /// Coupons each user claimed of each batch.
    pub claims: usize,
    /// Remembered request keys, and their queue of expiry times.
    pub requests: usize,
    /// Payment deadlines waiting in the heap.
    pub deadlines: usize,
}

struct State {
    now: u64,
    ids: Snowflake,
    skus: HashMap<String, SkuRow>,
    orders: HashMap<String, OrderRow>,
    holdings: HashMap<String, u32>,
    batches: HashMap<String, BatchRow>,
    coupons: HashMap<String, CouponRow>,
    claims: HashMap<String, u32>,
    requests: HashMap<String, RequestRow>,
    /// Request keys in arrival order with the time they are forgotten.
    request_expiry: VecDeque<(u64, String)>,
    /// Payment deadlines: (when, order id), earliest first.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
}

/// The naive engine. See the module documentation.
pub struct NaiveEngine {
    state: Mutex<State>,
    request_key_window_ms: u64,
    order_qty_max: u32,
}

impl NaiveEngine {
    /// An empty naive engine with the engine settings that decide outcomes, its maps and
    /// queues with room for `capacity` entries each (the default: none, so they grow).
    #[must_use]
    pub fn with_capacity(
        shard: u16,
        request_key_window_ms: u64,
        order_qty_max: u32,
        capacity: NaiveCapacity,
    ) -> NaiveEngine {
        let state = State {
            now: 0,
            ids: Snowflake::new(shard),
            skus: HashMap::with_capacity(capacity.skus),
            orders: HashMap::with_capacity(capacity.orders),
            holdings: HashMap::with_capacity(capacity.holdings),
            batches: HashMap::with_capacity(capacity.batches),
            coupons: HashMap::with_capacity(capacity.coupons),
            claims: HashMap::with_capacity(capacity.claims),
            requests: HashMap::with_capacity(capacity.requests),
            request_expiry: VecDeque::with_capacity(capacity.requests),
            deadlines: BinaryHeap::with_capacity(capacity.deadlines),
        };
        assert!(state.capacity_at_least(&capacity));
        NaiveEngine { state: Mutex::new(state), request_key_window_ms, order_qty_max }
    }

    /// Applies one command, as the engine would.
    pub fn apply(&self, sequenced: &Sequenced) -> Outcome {
        let mut state = self.state.lock().expect("naive state lock poisoned");
        match &sequenced.command {
            Command::Tick => {
                state.advance_time(sequenced.timestamp.0);
                Outcome::Ticked { now: Timestamp(state.now) }
            }
            Command::Client { key, action } => {
                state.advance_time(sequenced.timestamp.0);
                let request_key = format!("req:{:032x}", u128::from_le_bytes(key.0));
                if let Some(row) = state.requests.get(&request_key) {
                    if row.action == *action {
                        return row.outcome;
                    }
                    return Outcome::Rejected(Rejection::RequestKeyReused);
                }
                let outcome = self.execute(&mut state, action).unwrap_or_else(Outcome::Rejected);
                let expires_at = state.now.saturating_add(self.request_key_window_ms);
                state.request_expiry.push_back((expires_at, request_key.clone()));
                state.requests.insert(request_key, RequestRow { action: *action, outcome });
                outcome
            }
            Command::Query(_) | Command::Snapshot => Outcome::Rejected(Rejection::InvalidArgument),
        }
    }

    fn execute(&self, state: &mut State, action: &Action) -> Result<Outcome, Rejection> {
        match *action {
            Action::CreateSku(create) => state.create_sku(&create),
            Action::Reserve(reserve) => state.reserve(&reserve, self.order_qty_max),
            Action::Pay { order, payment_ref, amount_cents } => {
                state.pay(order, payment_ref, amount_cents)
            }
            Action::Cancel { order, user } => state.cancel(order, Some(user)),
            Action::AdminCancel { order } => state.cancel(order, None),
            Action::CreateCouponBatch(create) => state.create_batch(&create),
            Action::ClaimCoupon { user, batch } => state.claim_coupon(user, batch),
            // Not used by the benchmark workloads.
            Action::Restock { .. }
            | Action::OpenSale { .. }
            | Action::CloseSale { .. }
            | Action::Ship { .. }
            | Action::Complete { .. }
            | Action::Refund { .. } => Err(Rejection::InvalidArgument),
        }
    }
}

impl State {
    /// Whether every map and queue has room for `capacity`'s entries without growing.
    fn capacity_at_least(&self, capacity: &NaiveCapacity) -> bool {
        self.skus.capacity() >= capacity.skus
            && self.orders.capacity() >= capacity.orders
            && self.holdings.capacity() >= capacity.holdings
            && self.batches.capacity() >= capacity.batches
            && self.coupons.capacity() >= capacity.coupons
            && self.claims.capacity() >= capacity.claims
            && self.requests.capacity() >= capacity.requests
            && self.request_expiry.capacity() >= capacity.requests
            && self.deadlines.capacity() >= capacity.deadlines
    }

    /// Each map's and queue's room now, by name, to tell whether any grew.
    #[cfg(test)]
    fn capacities(&self) -> [(&'static str, usize); 9] {
        [
            ("skus", self.skus.capacity()),
            ("orders", self.orders.capacity()),
            ("holdings", self.holdings.capacity()),
            ("batches", self.batches.capacity()),
            ("coupons", self.coupons.capacity()),
            ("claims", self.claims.capacity()),
            ("requests", self.requests.capacity()),
            ("request_expiry", self.request_expiry.capacity()),
            ("deadlines", self.deadlines.capacity()),
        ]
    }

    fn advance_time(&mut self, timestamp: u64) {
        if timestamp <= self.now {
            return;
        }
        self.now = timestamp;
        while let Some(&Reverse((expires_at, order))) = self.deadlines.peek() {
            if expires_at > self.now {
                break;
            }
            self.deadlines.pop();
            let order_key = format!("order:{order}");
            if self.orders.get(&order_key).is_some_and(|o| o.state == OrderState::Reserved) {
                self.release(&order_key, OrderState::Expired);
            }
        }
        while self.request_expiry.front().is_some_and(|(expires_at, _)| *expires_at <= self.now) {
            let (_, key) = self.request_expiry.pop_front().expect("front checked");
            self.requests.remove(&key);
        }
    }

    fn create_sku(&mut self, create: &CreateSku) -> Result<Outcome, Rejection> {
        let window_empty =
            matches!((create.sale_start, create.sale_end), (Some(s), Some(e)) if e <= s);
        if create.sku.0 == 0 || create.payment_timeout_ms == 0 || window_empty {
            return Err(Rejection::InvalidArgument);
        }
        let key = format!("sku:{}", create.sku);
        if self.skus.contains_key(&key) {
            return Err(Rejection::SkuExists);
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
        self.skus.insert(key, SkuRow { view });
        Ok(Outcome::SkuCreated(view))
    }

    fn reserve(&mut self, reserve: &Reserve, order_qty_max: u32) -> Result<Outcome, Rejection> {
        if reserve.qty == 0 || reserve.qty > order_qty_max {
            return Err(Rejection::InvalidQty);
        }
        if reserve.user.0 == 0 {
            return Err(Rejection::InvalidArgument);
        }
        let sku_key = format!("sku:{}", reserve.sku);
        let now = self.now;
        let sku = &self.skus.get(&sku_key).ok_or(Rejection::UnknownSku)?.view;
        if !sku.open || sku.sale_end.is_some_and(|end| now >= end.0) {
            return Err(Rejection::SaleClosed);
        }
        if sku.sale_start.is_some_and(|start| now < start.0) {
            return Err(Rejection::SaleNotOpen);
        }
        let gross =
            sku.price_cents.checked_mul(u64::from(reserve.qty)).ok_or(Rejection::InvalidQty)?;
        let holding_key = format!("hold:{}:{}", reserve.user, reserve.sku);
        let held = self.holdings.get(&holding_key).copied().unwrap_or(0);
        if sku.per_user_limit != 0 && held + reserve.qty > sku.per_user_limit {
            return Err(Rejection::LimitExceeded);
        }
        if sku.available < u64::from(reserve.qty) {
            return Err(Rejection::SoldOut);
        }
        let (limited, timeout_ms) = (sku.per_user_limit != 0, sku.payment_timeout_ms);
        let coupon = match reserve.coupon {
            Some(coupon) => Some(self.check_coupon(coupon, reserve.user, gross)?),
            None => None,
        };
        let id = self.ids.next_id(Timestamp(now));
        let expires_at = now.saturating_add(timeout_ms);
        let sku = &mut self.skus.get_mut(&sku_key).expect("looked up above").view;
        sku.available -= u64::from(reserve.qty);
        sku.reserved += u64::from(reserve.qty);
        if limited {
            *self.holdings.entry(holding_key).or_insert(0) += reserve.qty;
        }
        let discount = coupon.as_ref().map_or(0, |(_, discount)| *discount);
        let coupon_key = coupon.map(|(key, _)| key);
        if let Some(key) = &coupon_key {
            self.coupons.get_mut(key).expect("checked").state = CouponState::Locked(OrderId(id));
        }
        let amount_cents = gross.saturating_sub(discount);
        let order = OrderRow {
            user: reserve.user,
            sku_key,
            qty: reserve.qty,
            amount_cents,
            state: OrderState::Reserved,
            coupon_key,
            payment_ref: None,
        };
        self.orders.insert(format!("order:{id}"), order);
        self.deadlines.push(Reverse((expires_at, id)));
        Ok(Outcome::Reserved {
            order: OrderId(id),
            expires_at: Timestamp(expires_at),
            amount_cents,
        })
    }

    fn check_coupon(
        &self,
        coupon: CouponId,
        user: UserId,
        gross: u64,
    ) -> Result<(String, u64), Rejection> {
        let key = format!("coupon:{coupon}");
        let record = self.coupons.get(&key).ok_or(Rejection::UnknownCoupon)?;
        let batch = &self.batches[&record.batch_key].view;
        let valid = batch.valid_from.0 <= self.now && self.now < batch.valid_until.0;
        if record.user != user
            || record.state != CouponState::Available
            || !valid
            || gross < batch.min_amount_cents
        {
            return Err(Rejection::CouponInvalid);
        }
        Ok((key, batch.discount_cents))
    }

    fn pay(
        &mut self,
        order: OrderId,
        payment_ref: PaymentRef,
        amount_cents: u64,
    ) -> Result<Outcome, Rejection> {
        let key = format!("order:{order}");
        let record = self.orders.get_mut(&key).ok_or(Rejection::UnknownOrder)?;
        match record.state {
            OrderState::Reserved if record.amount_cents != amount_cents => {
                Err(Rejection::WrongAmount { expected_cents: record.amount_cents })
            }
            OrderState::Reserved => {
                record.state = OrderState::Paid;
                record.payment_ref = Some(payment_ref);
                let sku = &mut self.skus.get_mut(&record.sku_key).expect("order's sku").view;
                sku.reserved -= u64::from(record.qty);
                sku.sold += u64::from(record.qty);
                if let Some(coupon_key) = &record.coupon_key {
                    self.coupons.get_mut(coupon_key).expect("order's coupon").state =
                        CouponState::Used(order);
                }
                Ok(Outcome::Paid { order })
            }
            OrderState::Paid | OrderState::Shipped | OrderState::Completed => {
                if record.payment_ref == Some(payment_ref) {
                    Ok(Outcome::Paid { order })
                } else {
                    Err(Rejection::PaymentConflict)
                }
            }
            current => Err(Rejection::InvalidState { current }),
        }
    }

    fn cancel(&mut self, order: OrderId, user: Option<UserId>) -> Result<Outcome, Rejection> {
        let key = format!("order:{order}");
        let record = self.orders.get(&key).ok_or(Rejection::UnknownOrder)?;
        if user.is_some_and(|user| user != record.user) {
            return Err(Rejection::NotOwner);
        }
        if record.state != OrderState::Reserved {
            return Err(Rejection::InvalidState { current: record.state });
        }
        self.release(&key, OrderState::Cancelled);
        Ok(Outcome::Cancelled { order })
    }

    /// Ends a reserved order: units back to available, holding down, coupon released.
    fn release(&mut self, order_key: &str, end: OrderState) {
        let record = self.orders.get_mut(order_key).expect("order to release");
        record.state = end;
        let sku = &mut self.skus.get_mut(&record.sku_key).expect("order's sku").view;
        sku.reserved -= u64::from(record.qty);
        sku.available += u64::from(record.qty);
        if sku.per_user_limit != 0 {
            let holding_key = format!("hold:{}:{}", record.user, sku.sku);
            let held = self.holdings.get_mut(&holding_key).expect("holding of a limited sku");
            *held -= record.qty;
            if *held == 0 {
                self.holdings.remove(&holding_key);
            }
        }
        if let Some(coupon_key) = &record.coupon_key {
            self.coupons.get_mut(coupon_key).expect("order's coupon").state =
                CouponState::Available;
        }
    }

    fn create_batch(&mut self, create: &CreateCouponBatch) -> Result<Outcome, Rejection> {
        if create.batch.0 == 0 || create.quantity == 0 || create.valid_until <= create.valid_from {
            return Err(Rejection::InvalidArgument);
        }
        let key = format!("batch:{}", create.batch);
        if self.batches.contains_key(&key) {
            return Err(Rejection::BatchExists);
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
        self.batches.insert(key, BatchRow { view });
        Ok(Outcome::BatchCreated(view))
    }

    fn claim_coupon(&mut self, user: UserId, batch: BatchId) -> Result<Outcome, Rejection> {
        if user.0 == 0 {
            return Err(Rejection::InvalidArgument);
        }
        let batch_key = format!("batch:{batch}");
        let record = &self.batches.get(&batch_key).ok_or(Rejection::UnknownBatch)?.view;
        if self.now < record.valid_from.0 {
            return Err(Rejection::SaleNotOpen);
        }
        if self.now >= record.valid_until.0 {
            return Err(Rejection::SaleClosed);
        }
        if record.remaining == 0 {
            return Err(Rejection::SoldOut);
        }
        let claim_key = format!("claim:{user}:{batch}");
        let claimed = self.claims.get(&claim_key).copied().unwrap_or(0);
        if record.per_user_limit != 0 && claimed >= record.per_user_limit {
            return Err(Rejection::LimitExceeded);
        }
        let valid_until = record.valid_until;
        let coupon = CouponId(self.ids.next_id(Timestamp(self.now)));
        let row = CouponRow { user, batch_key: batch_key.clone(), state: CouponState::Available };
        self.coupons.insert(format!("coupon:{coupon}"), row);
        self.batches.get_mut(&batch_key).expect("looked up above").view.remaining -= 1;
        *self.claims.entry(claim_key).or_insert(0) += 1;
        Ok(Outcome::CouponClaimed { coupon, batch, valid_until })
    }
}

/// Each map's and queue's room now, by name, for checks that a presized engine never grew.
#[cfg(test)]
pub fn capacities(naive: &NaiveEngine) -> [(&'static str, usize); 9] {
    naive.state.lock().expect("naive state lock poisoned").capacities()
}

/// Units of `sku` still available, for checks against the engine.
#[cfg(test)]
pub fn available(naive: &NaiveEngine, sku: ringfence_core::SkuId) -> u64 {
    let state = naive.state.lock().expect("naive state lock poisoned");
    state.skus[&format!("sku:{sku}")].view.available
}
