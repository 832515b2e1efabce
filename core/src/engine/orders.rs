//! Orders: the reservation hot path and the order state machine.
//!
//! ```text
//! Reserved ──pay──► Paid ──ship──► Shipped ──complete──► Completed
//!    │               └──refund──► Refunded
//!    ├──cancel──► Cancelled
//!    └──deadline──► Expired
//! ```
//! Cancelled, Expired and Refunded return the order's units to *available* and release its
//! coupon (a refund keeps the coupon spent); the per-user holding drops with them. Reserved,
//! Paid and Shipped orders are live: they count toward their buyer's live-order quota and are
//! never forgotten. The other four states are final: the order leaves its buyer's count and
//! waits to be forgotten, oldest first, when a new order needs its slot.

use super::{Engine, Event, Order, Share};
use crate::command::Reserve;
use crate::outcome::{CouponState, OrderState, OrderView, Outcome, Rejection};
use crate::types::{OrderId, PaymentRef, UserId};

impl Engine {
    /// Takes units from *available* into *reserved* for a new order, or refuses with nothing
    /// changed. Every check runs before the first write, so there is no partial reservation.
    /// `live` is the buyer's live orders, counted under a live-order quota (else zero).
    pub(super) fn reserve(&mut self, reserve: &Reserve, live: u32) -> Result<Outcome, Rejection> {
        if reserve.qty == 0 || reserve.qty > self.config.order_qty_max {
            return Err(Rejection::InvalidQty);
        }
        if reserve.user.0 == 0 {
            return Err(Rejection::InvalidArgument);
        }
        let sku_slot = self.sku_slot(reserve.sku)?;
        let sku = &self.skus[sku_slot as usize];
        self.check_sale_open(sku)?;
        let gross =
            sku.price_cents.checked_mul(u64::from(reserve.qty)).ok_or(Rejection::InvalidQty)?;
        let holding_key = (reserve.user, reserve.sku);
        let limited = sku.per_user_limit != 0;
        // Located once: nothing below changes the holdings table before the commit writes it.
        let holding = limited.then(|| self.holdings.locate(holding_key));
        let held = holding.and_then(|located| located.value);
        // Summed in u64: with a limit near u32::MAX, u32 addition would wrap into an allowed
        // amount and corrupt the holding.
        let wanted = u64::from(held.unwrap_or(0)) + u64::from(reserve.qty);
        if limited && wanted > u64::from(sku.per_user_limit) {
            return Err(Rejection::LimitExceeded);
        }
        let sold_out = sku.available < u64::from(reserve.qty);
        #[cfg(feature = "mutations")]
        let sold_out = sold_out && !crate::mutation::skips_stock_check();
        if sold_out {
            return Err(Rejection::SoldOut);
        }
        let coupon = match reserve.coupon {
            Some(coupon) => Some(self.check_coupon(coupon, reserve.user, gross)?),
            None => None,
        };
        // The buyer's share of the order table (and of the holdings their unpaid orders make)
        // is used up: transient like a full table, so answered the same way.
        debug_assert!(live == 0 || self.config.orders_per_user_max > 0, "counted, no quota");
        if self.at_order_quota(live) {
            return Err(Rejection::CapacityExhausted);
        }
        if limited && held.is_none() && self.holdings.len() == self.config.holdings_max as usize {
            return Err(Rejection::CapacityExhausted);
        }
        if !self.ids.can_issue(self.now) {
            return Err(Rejection::CapacityExhausted);
        }
        let slot = self.take_order_slot().ok_or(Rejection::CapacityExhausted)?;

        // Commit: nothing below can refuse.
        let discount = coupon.map_or(0, |(_, discount)| discount);
        let amount_cents = gross.saturating_sub(discount);
        let id = OrderId(self.ids.next_id(self.now));
        let sku = &mut self.skus[sku_slot as usize];
        let timeout_ms = sku.payment_timeout_ms;
        let expires_at = self.now.plus_ms(timeout_ms);
        #[cfg(not(feature = "mutations"))]
        {
            sku.available -= u64::from(reserve.qty);
        }
        // A mutated engine that skipped the stock check takes units from nowhere.
        #[cfg(feature = "mutations")]
        {
            sku.available = sku.available.saturating_sub(u64::from(reserve.qty));
        }
        sku.reserved += u64::from(reserve.qty);
        assert_eq!(sku.available + sku.reserved + sku.sold, sku.stock, "reserving lost units");
        if let Some(located) = holding {
            let units = u32::try_from(wanted).expect("wanted is within the per-user limit");
            assert!(units <= sku.per_user_limit, "a holding above the per-user limit");
            self.holdings.put_at(located, units);
        }
        if let Some((coupon_slot, _)) = coupon {
            let coupon = &mut self.coupons[coupon_slot as usize];
            assert_eq!(coupon.state, CouponState::Available, "a coupon applied twice");
            coupon.state = CouponState::Locked(id);
        }
        let order = Order {
            id,
            user: reserve.user,
            sku_slot,
            qty: reserve.qty,
            amount_cents,
            state: OrderState::Reserved,
            created_at: self.now,
            expires_at,
            coupon_slot: coupon.map(|(coupon_slot, _)| coupon_slot),
            payment_ref: None,
        };
        if slot as usize == self.orders.len() {
            self.orders.push(order);
            // The table grows in order, so the next reservations write just past this one.
            super::table::warm(&self.orders[slot as usize], super::table::WARM_AHEAD_BYTES);
        } else {
            self.orders[slot as usize] = order;
        }
        self.order_index.insert(id, slot);
        // Ids are issued in order and neighbouring ids get neighbouring index slots: warm the
        // slot of the id eight on, so that a burst of reservations does not wait on the index.
        self.order_index.prefetch(&OrderId(id.0.wrapping_add(8)));
        self.orders_reserved += 1;
        self.push_deadline((expires_at, id, slot), timeout_ms);
        Ok(Outcome::Reserved { order: id, expires_at, amount_cents })
    }

    /// A coupon the buyer may apply to an order worth `gross`: its slot and discount.
    fn check_coupon(
        &self,
        coupon: crate::types::CouponId,
        user: UserId,
        gross: u64,
    ) -> Result<(u32, u64), Rejection> {
        let slot = self.coupon_slot(coupon)?;
        let record = &self.coupons[slot as usize];
        let batch = &self.batches[record.batch_slot as usize];
        // A coupon's discount comes from its batch: a claimed coupon's batch has been issuing.
        assert!(batch.remaining < batch.quantity, "a coupon of a batch that issued none");
        let usable = record.user == user
            && record.state == CouponState::Available
            && self.coupon_valid_at(record, self.now)
            && gross >= batch.min_amount_cents;
        if !usable {
            return Err(Rejection::CouponInvalid);
        }
        Ok((slot, batch.discount_cents))
    }

    /// A slot for a new order: a fresh one while the table grows, else the oldest finished
    /// order's, which is forgotten. `None` when every kept order is still live.
    fn take_order_slot(&mut self) -> Option<u32> {
        if self.orders.len() < self.config.orders_max as usize {
            return Some(self.orders.len() as u32);
        }
        assert_eq!(self.orders.len(), self.config.orders_max as usize, "the order table is full");
        let slot = self.finished.pop_front()?;
        let evicted = &self.orders[slot as usize];
        assert!(evicted.state.is_final());
        let removed = self.order_index.remove(&evicted.id);
        assert_eq!(removed, Some(slot));
        // Only finished orders are forgotten: every reserved one keeps its slot.
        assert!((self.orders_reserved as usize) < self.orders.len(), "no slot for a new order");
        Some(slot)
    }

    pub(super) fn pay(
        &mut self,
        order: OrderId,
        payment_ref: PaymentRef,
        amount_cents: u64,
    ) -> Result<Outcome, Rejection> {
        let slot = self.order_slot(order)?;
        let record = &self.orders[slot as usize];
        match record.state {
            OrderState::Reserved if record.amount_cents != amount_cents => {
                Err(Rejection::WrongAmount { expected_cents: record.amount_cents })
            }
            OrderState::Reserved => {
                // Deadlines fire before the command that moved time past them runs.
                let due = record.expires_at <= self.now && self.now.0 != u64::MAX;
                assert!(!due, "a reserved order past its deadline");
                let (qty, sku_slot, coupon_slot) =
                    (record.qty, record.sku_slot, record.coupon_slot);
                assert_eq!(record.payment_ref, None, "a reserved order has no payment yet");
                let record = &mut self.orders[slot as usize];
                record.state = OrderState::Paid;
                record.payment_ref = Some(payment_ref);
                let sku = &mut self.skus[sku_slot as usize];
                assert!(sku.reserved >= u64::from(qty), "a reserved order's units are reserved");
                sku.reserved -= u64::from(qty);
                sku.sold += u64::from(qty);
                assert_eq!(sku.available + sku.reserved + sku.sold, sku.stock, "paying lost units");
                if let Some(coupon_slot) = coupon_slot {
                    let coupon = &mut self.coupons[coupon_slot as usize];
                    assert_eq!(coupon.state, CouponState::Locked(order));
                    coupon.state = CouponState::Used(order);
                }
                assert!(self.orders_reserved > 0, "a reserved order the count misses");
                self.orders_reserved -= 1;
                Ok(Outcome::Paid { order })
            }
            OrderState::Paid | OrderState::Shipped | OrderState::Completed => {
                assert!(record.payment_ref.is_some(), "a paid order has its payment reference");
                if record.payment_ref == Some(payment_ref) {
                    Ok(Outcome::Paid { order })
                } else {
                    Err(Rejection::PaymentConflict)
                }
            }
            current => Err(Rejection::InvalidState { current }),
        }
    }

    /// Cancels a reserved order: by its buyer (`Some(user)`) or by an operator (`None`).
    pub(super) fn cancel(
        &mut self,
        order: OrderId,
        user: Option<UserId>,
    ) -> Result<Outcome, Rejection> {
        let slot = self.order_slot(order)?;
        let record = &self.orders[slot as usize];
        if user.is_some_and(|user| user != record.user) {
            return Err(Rejection::NotOwner);
        }
        if record.state != OrderState::Reserved {
            return Err(Rejection::InvalidState { current: record.state });
        }
        // Deadlines fire before the command that moved time past them runs (time saturates).
        let due = record.expires_at <= self.now && self.now.0 != u64::MAX;
        assert!(!due, "a reserved order past its deadline");
        self.release_reserved(slot, OrderState::Cancelled);
        Ok(Outcome::Cancelled { order })
    }

    pub(super) fn ship(&mut self, order: OrderId) -> Result<Outcome, Rejection> {
        let slot = self.order_slot(order)?;
        let record = &mut self.orders[slot as usize];
        if record.state != OrderState::Paid {
            return Err(Rejection::InvalidState { current: record.state });
        }
        assert!(record.payment_ref.is_some(), "a paid order has its payment reference");
        record.state = OrderState::Shipped;
        if let Some(coupon_slot) = record.coupon_slot {
            let coupon = self.coupons[coupon_slot as usize].state;
            assert_eq!(coupon, CouponState::Used(order), "a paid order's coupon is unspent");
        }
        Ok(Outcome::Shipped { order })
    }

    pub(super) fn complete(&mut self, order: OrderId, user: UserId) -> Result<Outcome, Rejection> {
        let slot = self.order_slot(order)?;
        let record = &mut self.orders[slot as usize];
        if record.user != user {
            return Err(Rejection::NotOwner);
        }
        if record.state != OrderState::Shipped {
            return Err(Rejection::InvalidState { current: record.state });
        }
        assert!(record.payment_ref.is_some(), "a shipped order has its payment reference");
        record.state = OrderState::Completed;
        if let Some(coupon_slot) = record.coupon_slot {
            let coupon = self.coupons[coupon_slot as usize].state;
            assert_eq!(coupon, CouponState::Used(order), "a completed order's coupon is unspent");
        }
        self.finish(slot);
        Ok(Outcome::Completed { order })
    }

    /// Refunds a paid order before shipping: its units go back to *available*; its coupon
    /// stays spent.
    pub(super) fn refund(&mut self, order: OrderId) -> Result<Outcome, Rejection> {
        let slot = self.order_slot(order)?;
        let record = &mut self.orders[slot as usize];
        if record.state != OrderState::Paid {
            return Err(Rejection::InvalidState { current: record.state });
        }
        assert!(record.payment_ref.is_some(), "a paid order has its payment reference");
        record.state = OrderState::Refunded;
        if let Some(coupon_slot) = record.coupon_slot {
            let coupon = self.coupons[coupon_slot as usize].state;
            assert_eq!(coupon, CouponState::Used(order), "a refund keeps the coupon spent");
        }
        let (qty, sku_slot, user) = (record.qty, record.sku_slot, record.user);
        let sku = &mut self.skus[sku_slot as usize];
        assert!(sku.sold >= u64::from(qty), "a paid order's units are sold");
        sku.sold -= u64::from(qty);
        sku.available += u64::from(qty);
        assert_eq!(sku.available + sku.reserved + sku.sold, sku.stock, "refunding lost units");
        self.drop_holding(user, sku_slot, qty);
        self.finish(slot);
        Ok(Outcome::Refunded { order })
    }

    /// A reserved order whose deadline passed: units back, coupon released.
    pub(super) fn expire_order(&mut self, slot: u32, events: &mut dyn FnMut(Event)) {
        let record = self.orders[slot as usize];
        assert_eq!(record.state, OrderState::Reserved);
        assert!(record.expires_at <= self.now);
        self.release_reserved(slot, OrderState::Expired);
        let sku = self.skus[record.sku_slot as usize].id;
        let event =
            Event::OrderExpired { order: record.id, user: record.user, sku, qty: record.qty };
        self.fold_event(&event);
        events(event);
    }

    /// Ends a reserved order as `Cancelled` or `Expired`, returning what it held.
    fn release_reserved(&mut self, slot: u32, end: OrderState) {
        let record = &mut self.orders[slot as usize];
        assert_eq!(record.state, OrderState::Reserved);
        assert!(matches!(end, OrderState::Cancelled | OrderState::Expired));
        assert_eq!(record.payment_ref, None, "a reserved order has no payment yet");
        record.state = end;
        let (qty, sku_slot, user, coupon_slot) =
            (record.qty, record.sku_slot, record.user, record.coupon_slot);
        let order = record.id;
        let sku = &mut self.skus[sku_slot as usize];
        assert!(sku.reserved >= u64::from(qty), "a reserved order's units are reserved");
        sku.reserved -= u64::from(qty);
        sku.available += u64::from(qty);
        assert_eq!(sku.available + sku.reserved + sku.sold, sku.stock, "releasing lost units");
        self.drop_holding(user, sku_slot, qty);
        if let Some(coupon_slot) = coupon_slot {
            let coupon = &mut self.coupons[coupon_slot as usize];
            assert_eq!(coupon.state, CouponState::Locked(order), "locked by another order");
            coupon.state = CouponState::Available;
        }
        assert!(self.orders_reserved > 0, "a reserved order the count misses");
        self.orders_reserved -= 1;
        self.finish(slot);
    }

    /// An order that reached a final state: queued to be forgotten in its turn, and no longer
    /// one of its buyer's live orders.
    fn finish(&mut self, slot: u32) {
        let order = &self.orders[slot as usize];
        assert!(order.state.is_final(), "an order finished in a live state");
        let user = order.user;
        // A reservation by user 0 is refused, so every order has a buyer with a share.
        assert_ne!(user.0, 0, "an order of user 0");
        self.finished.push_back(slot);
        assert!(self.finished.len() <= self.orders.len(), "an order finished twice");
        if self.config.orders_per_user_max > 0 {
            self.uncount(user, Share { keys: 0, orders: 1 });
        }
    }

    fn drop_holding(&mut self, user: UserId, sku_slot: u32, qty: u32) {
        let sku = &self.skus[sku_slot as usize];
        if sku.per_user_limit == 0 {
            return;
        }
        let key = (user, sku.id);
        let limit = sku.per_user_limit;
        let held = self.holdings.get_mut(&key).expect("a limited SKU's order has a holding");
        assert!(*held >= qty);
        assert!(*held <= limit, "a holding above the per-user limit");
        *held -= qty;
        if *held == 0 {
            let removed = self.holdings.remove(&key);
            assert_eq!(removed, Some(0), "the emptied holding was removed");
        }
    }

    /// Always inlined, like the catalog's lookups: it runs on every command naming an order.
    #[inline(always)]
    pub(super) fn order_slot(&self, order: OrderId) -> Result<u32, Rejection> {
        let slot = self.order_index.get(&order).copied().ok_or(Rejection::UnknownOrder)?;
        // The caller reads the order next, so this costs no extra miss.
        assert_eq!(self.orders[slot as usize].id, order, "the order index points elsewhere");
        Ok(slot)
    }

    pub(super) fn order_view(&self, slot: u32) -> OrderView {
        let order = &self.orders[slot as usize];
        assert!(order.qty > 0, "an order of no units");
        assert!(order.created_at <= order.expires_at, "an order due before it was made");
        OrderView {
            order: order.id,
            user: order.user,
            sku: self.skus[order.sku_slot as usize].id,
            qty: order.qty,
            amount_cents: order.amount_cents,
            state: order.state,
            created_at: order.created_at,
            expires_at: order.expires_at,
            coupon: order.coupon_slot.map(|slot| self.coupons[slot as usize].id),
            payment_ref: order.payment_ref,
        }
    }
}
