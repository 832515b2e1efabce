//! Proptest strategies for every command, outcome and event, over the full range of every
//! field: for codec round trips and fuzzing here and in other crates' tests (feature
//! `arbitrary`). They generate values, not plausible workloads; `core/tests/model.rs` drives
//! the engine with realistic sequences.

use proptest::prelude::*;

use crate::engine::Event;
use crate::{
    Action, BatchId, BatchView, Command, CouponId, CouponState, CouponView, CreateCouponBatch,
    CreateSku, OrderId, OrderState, OrderView, Outcome, PaymentRef, Query, Rejection, RequestKey,
    Reserve, Sequence, SkuId, SkuView, Timestamp, UserId,
};

fn ts() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp)
}

fn opt_ts() -> impl Strategy<Value = Option<Timestamp>> {
    proptest::option::of(ts())
}

/// Any order state.
pub fn order_state() -> impl Strategy<Value = OrderState> {
    proptest::sample::select(OrderState::ALL.to_vec())
}

/// Any action, every field over its full range.
pub fn action() -> impl Strategy<Value = Action> {
    let order = || any::<u64>().prop_map(OrderId);
    let user = || any::<u64>().prop_map(UserId);
    let sku = || any::<u64>().prop_map(SkuId);
    prop_oneof![
        (sku(), any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>(), opt_ts(), opt_ts())
            .prop_map(
                |(
                    sku,
                    stock,
                    price_cents,
                    per_user_limit,
                    payment_timeout_ms,
                    sale_start,
                    sale_end,
                )| {
                    Action::CreateSku(CreateSku {
                        sku,
                        stock,
                        price_cents,
                        per_user_limit,
                        payment_timeout_ms,
                        sale_start,
                        sale_end,
                    })
                }
            ),
        (sku(), any::<u32>()).prop_map(|(sku, qty)| Action::Restock { sku, qty }),
        sku().prop_map(|sku| Action::OpenSale { sku }),
        sku().prop_map(|sku| Action::CloseSale { sku }),
        (user(), sku(), any::<u32>(), proptest::option::of(any::<u64>().prop_map(CouponId)))
            .prop_map(|(user, sku, qty, coupon)| Action::Reserve(Reserve {
                user,
                sku,
                qty,
                coupon
            })),
        (order(), any::<[u8; 16]>(), any::<u64>()).prop_map(|(order, r, amount_cents)| {
            Action::Pay { order, payment_ref: PaymentRef(r), amount_cents }
        }),
        (order(), user()).prop_map(|(order, user)| Action::Cancel { order, user }),
        order().prop_map(|order| Action::AdminCancel { order }),
        order().prop_map(|order| Action::Ship { order }),
        (order(), user()).prop_map(|(order, user)| Action::Complete { order, user }),
        order().prop_map(|order| Action::Refund { order }),
        (any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>(), ts(), ts())
            .prop_map(|(b, quantity, per_user_limit, discount_cents, min, from, until)| {
                Action::CreateCouponBatch(CreateCouponBatch {
                    batch: BatchId(b),
                    quantity,
                    per_user_limit,
                    discount_cents,
                    min_amount_cents: min,
                    valid_from: from,
                    valid_until: until,
                })
            }),
        (user(), any::<u64>())
            .prop_map(|(user, b)| Action::ClaimCoupon { user, batch: BatchId(b) }),
    ]
}

/// Commands a client may send (everything but `Tick`).
pub fn client_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        any::<u64>().prop_map(|v| Command::Query(Query::Sku(SkuId(v)))),
        any::<u64>().prop_map(|v| Command::Query(Query::Order(OrderId(v)))),
        any::<u64>().prop_map(|v| Command::Query(Query::Coupon(CouponId(v)))),
        any::<u64>().prop_map(|v| Command::Query(Query::Batch(BatchId(v)))),
        any::<u32>().prop_map(|v| Command::Query(Query::SkuAt(v))),
        Just(Command::Snapshot),
        (any::<[u8; 16]>(), action())
            .prop_map(|(key, action)| Command::Client { key: RequestKey(key), action }),
    ]
}

/// Any rejection.
pub fn rejection() -> impl Strategy<Value = Rejection> {
    prop_oneof![
        Just(Rejection::SoldOut),
        Just(Rejection::LimitExceeded),
        Just(Rejection::SaleNotOpen),
        Just(Rejection::SaleClosed),
        Just(Rejection::UnknownSku),
        Just(Rejection::UnknownOrder),
        Just(Rejection::UnknownCoupon),
        Just(Rejection::UnknownBatch),
        Just(Rejection::InvalidQty),
        Just(Rejection::CouponInvalid),
        Just(Rejection::CapacityExhausted),
        Just(Rejection::SkuExists),
        Just(Rejection::BatchExists),
        Just(Rejection::InvalidArgument),
        order_state().prop_map(|current| Rejection::InvalidState { current }),
        Just(Rejection::PaymentConflict),
        any::<u64>().prop_map(|expected_cents| Rejection::WrongAmount { expected_cents }),
        Just(Rejection::NotOwner),
        Just(Rejection::RequestKeyReused),
    ]
}

/// Any SKU view.
pub fn sku_view() -> impl Strategy<Value = SkuView> {
    (any::<[u64; 6]>(), any::<u32>(), any::<bool>(), any::<u64>(), opt_ts(), opt_ts()).prop_map(
        |(v, per_user_limit, open, payment_timeout_ms, sale_start, sale_end)| SkuView {
            sku: SkuId(v[0]),
            stock: v[1],
            available: v[2],
            reserved: v[3],
            sold: v[4],
            price_cents: v[5],
            per_user_limit,
            open,
            payment_timeout_ms,
            sale_start,
            sale_end,
        },
    )
}

/// Any batch view.
pub fn batch_view() -> impl Strategy<Value = BatchView> {
    (any::<[u64; 5]>(), any::<[u32; 3]>()).prop_map(|(v, w)| BatchView {
        batch: BatchId(v[0]),
        quantity: w[0],
        remaining: w[1],
        per_user_limit: w[2],
        discount_cents: v[1],
        min_amount_cents: v[2],
        valid_from: Timestamp(v[3]),
        valid_until: Timestamp(v[4]),
    })
}

/// Any order view.
pub fn order_view() -> impl Strategy<Value = OrderView> {
    (
        any::<[u64; 6]>(),
        any::<u32>(),
        order_state(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(|(v, qty, state, coupon, payment_ref)| OrderView {
            order: OrderId(v[0]),
            user: UserId(v[1]),
            sku: SkuId(v[2]),
            qty,
            amount_cents: v[3],
            state,
            created_at: Timestamp(v[4]),
            expires_at: Timestamp(v[5]),
            coupon: coupon.map(CouponId),
            payment_ref: payment_ref.map(PaymentRef),
        })
}

/// Any coupon view.
pub fn coupon_view() -> impl Strategy<Value = CouponView> {
    let state = prop_oneof![
        Just(CouponState::Available),
        any::<u64>().prop_map(|o| CouponState::Locked(OrderId(o))),
        any::<u64>().prop_map(|o| CouponState::Used(OrderId(o))),
        Just(CouponState::Expired),
    ];
    (any::<[u64; 5]>(), state).prop_map(|(v, state)| CouponView {
        coupon: CouponId(v[0]),
        batch: BatchId(v[1]),
        user: UserId(v[2]),
        state,
        discount_cents: v[3],
        valid_until: Timestamp(v[4]),
    })
}

/// Any outcome.
pub fn outcome() -> impl Strategy<Value = Outcome> {
    let order = || any::<u64>().prop_map(OrderId);
    prop_oneof![
        ts().prop_map(|now| Outcome::Ticked { now }),
        sku_view().prop_map(Outcome::SkuCreated),
        sku_view().prop_map(Outcome::Restocked),
        sku_view().prop_map(Outcome::SaleChanged),
        (order(), ts(), any::<u64>()).prop_map(|(order, expires_at, amount_cents)| {
            Outcome::Reserved { order, expires_at, amount_cents }
        }),
        order().prop_map(|order| Outcome::Paid { order }),
        order().prop_map(|order| Outcome::Cancelled { order }),
        order().prop_map(|order| Outcome::Shipped { order }),
        order().prop_map(|order| Outcome::Completed { order }),
        order().prop_map(|order| Outcome::Refunded { order }),
        batch_view().prop_map(Outcome::BatchCreated),
        (any::<u64>(), any::<u64>(), ts()).prop_map(|(c, b, valid_until)| {
            Outcome::CouponClaimed { coupon: CouponId(c), batch: BatchId(b), valid_until }
        }),
        sku_view().prop_map(Outcome::Sku),
        order_view().prop_map(Outcome::Order),
        coupon_view().prop_map(Outcome::Coupon),
        batch_view().prop_map(Outcome::Batch),
        (any::<u64>(), any::<u64>()).prop_map(|(s, running_hash)| Outcome::SnapshotRequested {
            last_sequence: Sequence(s),
            running_hash
        }),
        rejection().prop_map(Outcome::Rejected),
    ]
}

/// Any command, `Tick` included.
pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![1 => Just(Command::Tick), 12 => client_command()]
}

/// Any engine event.
pub fn event() -> impl Strategy<Value = Event> {
    (any::<[u64; 3]>(), any::<u32>()).prop_map(|(v, qty)| Event::OrderExpired {
        order: OrderId(v[0]),
        user: UserId(v[1]),
        sku: SkuId(v[2]),
        qty,
    })
}
