//! JSON for commands, outcomes and events, written by hand: the core types derive no serde (their
//! durable form is the canonical encoding), and their JSON shape here is an export format with
//! its own stability.
//!
//! Every object has a snake_case `kind`; ids are numbers, 16-byte keys are hex strings, times
//! are milliseconds since the Unix epoch (`*_ms`) and money is in cents.

use ringfence_core::engine::Event;
use ringfence_core::{
    Action, BatchView, Command, CouponState, CouponView, OrderView, Outcome, Query, Rejection,
    SkuView, Timestamp,
};
use serde_json::{Value, json};

fn hex(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn opt_ms(time: Option<Timestamp>) -> Value {
    time.map_or(Value::Null, |t| json!(t.0))
}

/// A command as a JSON object.
#[must_use]
pub fn command(command: &Command) -> Value {
    match command {
        Command::Tick => json!({ "kind": "tick" }),
        Command::Snapshot => json!({ "kind": "snapshot" }),
        Command::Query(query) => match *query {
            Query::Sku(sku) => json!({ "kind": "query_sku", "sku": sku.0 }),
            Query::Order(order) => json!({ "kind": "query_order", "order": order.0 }),
            Query::Coupon(coupon) => json!({ "kind": "query_coupon", "coupon": coupon.0 }),
            Query::Batch(batch) => json!({ "kind": "query_batch", "batch": batch.0 }),
        },
        Command::Client { key, action } => {
            let mut value = action_json(action);
            value["request_key"] = json!(hex(&key.0));
            value
        }
    }
}

fn action_json(action: &Action) -> Value {
    match *action {
        Action::CreateSku(c) => json!({
            "kind": "create_sku", "sku": c.sku.0, "stock": c.stock, "price_cents": c.price_cents,
            "per_user_limit": c.per_user_limit, "payment_timeout_ms": c.payment_timeout_ms,
            "sale_start_ms": opt_ms(c.sale_start), "sale_end_ms": opt_ms(c.sale_end),
        }),
        Action::Restock { sku, qty } => json!({ "kind": "restock", "sku": sku.0, "qty": qty }),
        Action::OpenSale { sku } => json!({ "kind": "open_sale", "sku": sku.0 }),
        Action::CloseSale { sku } => json!({ "kind": "close_sale", "sku": sku.0 }),
        Action::Reserve(r) => json!({
            "kind": "reserve", "user": r.user.0, "sku": r.sku.0, "qty": r.qty,
            "coupon": r.coupon.map(|c| c.0),
        }),
        Action::Pay { order, payment_ref, amount_cents } => json!({
            "kind": "pay", "order": order.0, "payment_ref": hex(&payment_ref.0),
            "amount_cents": amount_cents,
        }),
        Action::Cancel { order, user } => {
            json!({ "kind": "cancel", "order": order.0, "user": user.0 })
        }
        Action::AdminCancel { order } => json!({ "kind": "admin_cancel", "order": order.0 }),
        Action::Ship { order } => json!({ "kind": "ship", "order": order.0 }),
        Action::Complete { order, user } => {
            json!({ "kind": "complete", "order": order.0, "user": user.0 })
        }
        Action::Refund { order } => json!({ "kind": "refund", "order": order.0 }),
        Action::CreateCouponBatch(b) => json!({
            "kind": "create_coupon_batch", "batch": b.batch.0, "quantity": b.quantity,
            "per_user_limit": b.per_user_limit, "discount_cents": b.discount_cents,
            "min_amount_cents": b.min_amount_cents, "valid_from_ms": b.valid_from.0,
            "valid_until_ms": b.valid_until.0,
        }),
        Action::ClaimCoupon { user, batch } => {
            json!({ "kind": "claim_coupon", "user": user.0, "batch": batch.0 })
        }
    }
}

/// The short kind name of a command (for statistics).
#[must_use]
pub fn command_kind(command: &Command) -> &'static str {
    command.kind()
}

/// A SKU's figures as JSON.
#[must_use]
pub fn sku(view: &SkuView) -> Value {
    json!({
        "sku": view.sku.0, "stock": view.stock, "available": view.available,
        "reserved": view.reserved, "sold": view.sold, "price_cents": view.price_cents,
        "per_user_limit": view.per_user_limit, "open": view.open,
        "payment_timeout_ms": view.payment_timeout_ms,
        "sale_start_ms": opt_ms(view.sale_start), "sale_end_ms": opt_ms(view.sale_end),
    })
}

fn order(view: &OrderView) -> Value {
    json!({
        "order": view.order.0, "user": view.user.0, "sku": view.sku.0, "qty": view.qty,
        "amount_cents": view.amount_cents, "state": view.state.name(),
        "created_at_ms": view.created_at.0, "expires_at_ms": view.expires_at.0,
        "coupon": view.coupon.map(|c| c.0), "payment_ref": view.payment_ref.map(|p| hex(&p.0)),
    })
}

fn coupon(view: &CouponView) -> Value {
    let (state, order) = match view.state {
        CouponState::Available => ("available", None),
        CouponState::Locked(order) => ("locked", Some(order.0)),
        CouponState::Used(order) => ("used", Some(order.0)),
        CouponState::Expired => ("expired", None),
    };
    json!({
        "coupon": view.coupon.0, "batch": view.batch.0, "user": view.user.0, "state": state,
        "order": order, "discount_cents": view.discount_cents,
        "valid_until_ms": view.valid_until.0,
    })
}

fn batch(view: &BatchView) -> Value {
    json!({
        "batch": view.batch.0, "quantity": view.quantity, "remaining": view.remaining,
        "per_user_limit": view.per_user_limit, "discount_cents": view.discount_cents,
        "min_amount_cents": view.min_amount_cents, "valid_from_ms": view.valid_from.0,
        "valid_until_ms": view.valid_until.0,
    })
}

fn rejection(rejection: &Rejection) -> Value {
    let mut value = json!({ "kind": "rejected", "code": rejection.code() });
    match *rejection {
        Rejection::InvalidState { current } => value["current_state"] = json!(current.name()),
        Rejection::WrongAmount { expected_cents } => {
            value["expected_cents"] = json!(expected_cents)
        }
        _ => {}
    }
    value
}

/// An outcome as a JSON object.
#[must_use]
pub fn outcome(outcome: &Outcome) -> Value {
    let with_kind = |kind: &str, mut value: Value| {
        value["kind"] = json!(kind);
        value
    };
    match outcome {
        Outcome::Ticked { now } => json!({ "kind": "ticked", "now_ms": now.0 }),
        Outcome::SkuCreated(view) => with_kind("sku_created", sku(view)),
        Outcome::Restocked(view) => with_kind("restocked", sku(view)),
        Outcome::SaleChanged(view) => with_kind("sale_changed", sku(view)),
        Outcome::Reserved { order, expires_at, amount_cents } => json!({
            "kind": "reserved", "order": order.0, "expires_at_ms": expires_at.0,
            "amount_cents": amount_cents,
        }),
        Outcome::Paid { order } => json!({ "kind": "paid", "order": order.0 }),
        Outcome::Cancelled { order } => json!({ "kind": "cancelled", "order": order.0 }),
        Outcome::Shipped { order } => json!({ "kind": "shipped", "order": order.0 }),
        Outcome::Completed { order } => json!({ "kind": "completed", "order": order.0 }),
        Outcome::Refunded { order } => json!({ "kind": "refunded", "order": order.0 }),
        Outcome::BatchCreated(view) => with_kind("batch_created", batch(view)),
        Outcome::CouponClaimed { coupon, batch, valid_until } => json!({
            "kind": "coupon_claimed", "coupon": coupon.0, "batch": batch.0,
            "valid_until_ms": valid_until.0,
        }),
        Outcome::Sku(view) => with_kind("sku", sku(view)),
        Outcome::Order(view) => with_kind("order", order(view)),
        Outcome::Coupon(view) => with_kind("coupon", coupon(view)),
        Outcome::Batch(view) => with_kind("batch", batch(view)),
        Outcome::SnapshotRequested { last_sequence, running_hash } => json!({
            "kind": "snapshot_requested", "last_sequence": last_sequence.0,
            "running_hash": format!("{running_hash:016x}"),
        }),
        Outcome::Rejected(r) => rejection(r),
    }
}

/// An engine event (an expiry) as a JSON object.
#[must_use]
pub fn event(event: &Event) -> Value {
    match *event {
        Event::OrderExpired { order, user, sku, qty } => json!({
            "kind": "order_expired", "order": order.0, "user": user.0, "sku": sku.0, "qty": qty,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_core::{OrderId, RequestKey, Reserve, SkuId, UserId};

    #[test]
    fn reserve_command_and_rejection_have_stable_fields() {
        // Goal: exported JSON keeps the documented field names and encodings.
        let reserve = Command::Client {
            key: RequestKey::from_u128(1),
            action: Action::Reserve(Reserve {
                user: UserId(2),
                sku: SkuId(3),
                qty: 4,
                coupon: None,
            }),
        };
        let value = command(&reserve);
        assert_eq!(value["kind"], "reserve");
        assert_eq!(value["request_key"], "01000000000000000000000000000000");
        assert_eq!(value["qty"], 4);
        let rejected = outcome(&Outcome::Rejected(Rejection::InvalidState {
            current: ringfence_core::OrderState::Paid,
        }));
        assert_eq!(rejected["code"], "invalid_state");
        assert_eq!(rejected["current_state"], "paid");
        assert_eq!(outcome(&Outcome::Paid { order: OrderId(5) })["order"], 5);
    }
}
