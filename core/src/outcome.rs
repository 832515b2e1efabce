//! Outcomes: the BLP's answer to every command. Rejections are outcomes too, never errors.
//!
//! Outcomes are plain `Copy` data so that the pipeline can write them into preallocated ring
//! slots and the idempotency table can keep them without touching the heap. Their bytes are
//! the canonical encoding of [`crate::codec`]; the types derive no `Hash`, because the running
//! hash is taken over those bytes ([`crate::hash`]).

use crate::types::{BatchId, CouponId, OrderId, PaymentRef, SkuId, Timestamp, UserId};

/// The answer to one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Logical time is now `now`.
    Ticked {
        /// The BLP's clock after the tick.
        now: Timestamp,
    },
    /// The SKU was created.
    SkuCreated(SkuView),
    /// Units were added.
    Restocked(SkuView),
    /// The sale was opened or closed.
    SaleChanged(SkuView),
    /// Units were taken from *available* into *reserved* for this new order.
    Reserved {
        /// The new order.
        order: OrderId,
        /// Payment must arrive before this time or the order expires.
        expires_at: Timestamp,
        /// What the buyer must pay, coupon applied.
        amount_cents: u64,
    },
    /// The order is paid (also the answer to a repeated payment with the same reference).
    Paid {
        /// The order.
        order: OrderId,
    },
    /// The reserved order was cancelled and its units returned.
    Cancelled {
        /// The order.
        order: OrderId,
    },
    /// The paid order shipped.
    Shipped {
        /// The order.
        order: OrderId,
    },
    /// The buyer confirmed receipt.
    Completed {
        /// The order.
        order: OrderId,
    },
    /// The paid order was refunded and its units returned.
    Refunded {
        /// The order.
        order: OrderId,
    },
    /// The batch was created.
    BatchCreated(BatchView),
    /// One coupon was claimed.
    CouponClaimed {
        /// The new coupon.
        coupon: CouponId,
        /// Its batch.
        batch: BatchId,
        /// It cannot be used from this time on.
        valid_until: Timestamp,
    },
    /// Answer to [`crate::Query::Sku`].
    Sku(SkuView),
    /// Answer to [`crate::Query::Order`].
    Order(OrderView),
    /// Answer to [`crate::Query::Coupon`].
    Coupon(CouponView),
    /// Answer to [`crate::Query::Batch`].
    Batch(BatchView),
    /// Answer to [`crate::Command::Snapshot`]: state as of `last_sequence` is being written.
    SnapshotRequested {
        /// The last mutating command the snapshot includes.
        last_sequence: crate::types::Sequence,
        /// The running hash at that point.
        running_hash: u64,
    },
    /// The command was refused; state is unchanged.
    Rejected(Rejection),
}

/// Why a command was refused. Every variant leaves state exactly as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Fewer units (or coupons) available than asked for.
    SoldOut,
    /// The user would hold more than the per-user limit.
    LimitExceeded,
    /// The sale (or coupon batch) has not started yet.
    SaleNotOpen,
    /// The sale (or coupon batch) has ended or was closed by an operator.
    SaleClosed,
    /// No SKU with that id.
    UnknownSku,
    /// No such order is kept (never existed, another shard's, or finished long ago).
    UnknownOrder,
    /// No such coupon.
    UnknownCoupon,
    /// No such coupon batch.
    UnknownBatch,
    /// Quantity zero, above the per-order maximum, or overflowing a stock or amount.
    InvalidQty,
    /// The coupon is not the buyer's, is locked, used or expired, or the order is too small.
    CouponInvalid,
    /// A configured table is full; the command may succeed once capacity frees up.
    CapacityExhausted,
    /// A SKU with that id already exists.
    SkuExists,
    /// A coupon batch with that id already exists.
    BatchExists,
    /// A field is out of range (zero id, empty sale window, zero timeout, ...).
    InvalidArgument,
    /// The order is in a state from which this transition is not allowed.
    InvalidState {
        /// The order's state when the command arrived.
        current: OrderState,
    },
    /// The order was already paid with a different payment reference.
    PaymentConflict,
    /// The amount paid differs from the order's amount.
    WrongAmount {
        /// The order's amount.
        expected_cents: u64,
    },
    /// The user is not the order's buyer.
    NotOwner,
    /// The request key was used before for a different command.
    RequestKeyReused,
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderState {
    /// Units held, waiting for payment until the deadline.
    Reserved,
    /// Paid; units sold.
    Paid,
    /// Paid and shipped.
    Shipped,
    /// Receipt confirmed by the buyer. Final.
    Completed,
    /// Cancelled while reserved; units returned. Final.
    Cancelled,
    /// Payment deadline passed; units returned. Final.
    Expired,
    /// Refunded after payment, before shipping; units returned. Final.
    Refunded,
}

impl OrderState {
    /// Every state, in lifecycle order.
    pub const ALL: [OrderState; 7] = [
        OrderState::Reserved,
        OrderState::Paid,
        OrderState::Shipped,
        OrderState::Completed,
        OrderState::Cancelled,
        OrderState::Expired,
        OrderState::Refunded,
    ];

    /// Whether no transition leaves this state.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderState::Completed
                | OrderState::Cancelled
                | OrderState::Expired
                | OrderState::Refunded
        )
    }

    /// Whether the order's units count against the buyer's per-user limit.
    #[must_use]
    pub fn holds_units(self) -> bool {
        matches!(
            self,
            OrderState::Reserved | OrderState::Paid | OrderState::Shipped | OrderState::Completed
        )
    }

    /// The snake_case name used in APIs and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            OrderState::Reserved => "reserved",
            OrderState::Paid => "paid",
            OrderState::Shipped => "shipped",
            OrderState::Completed => "completed",
            OrderState::Cancelled => "cancelled",
            OrderState::Expired => "expired",
            OrderState::Refunded => "refunded",
        }
    }
}

impl Rejection {
    /// The snake_case code used in APIs, logs and metrics.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Rejection::SoldOut => "sold_out",
            Rejection::LimitExceeded => "limit_exceeded",
            Rejection::SaleNotOpen => "sale_not_open",
            Rejection::SaleClosed => "sale_closed",
            Rejection::UnknownSku => "unknown_sku",
            Rejection::UnknownOrder => "unknown_order",
            Rejection::UnknownCoupon => "unknown_coupon",
            Rejection::UnknownBatch => "unknown_batch",
            Rejection::InvalidQty => "invalid_qty",
            Rejection::CouponInvalid => "coupon_invalid",
            Rejection::CapacityExhausted => "capacity_exhausted",
            Rejection::SkuExists => "sku_exists",
            Rejection::BatchExists => "batch_exists",
            Rejection::InvalidArgument => "invalid_argument",
            Rejection::InvalidState { .. } => "invalid_state",
            Rejection::PaymentConflict => "payment_conflict",
            Rejection::WrongAmount { .. } => "wrong_amount",
            Rejection::NotOwner => "not_owner",
            Rejection::RequestKeyReused => "request_key_reused",
        }
    }
}

/// A SKU's figures. Invariant: `available + reserved + sold == stock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkuView {
    /// The SKU.
    pub sku: SkuId,
    /// All units ever put in (initial stock plus restocks).
    pub stock: u64,
    /// Units that can be reserved now.
    pub available: u64,
    /// Units held by reserved orders awaiting payment.
    pub reserved: u64,
    /// Units in paid, shipped or completed orders.
    pub sold: u64,
    /// Unit price in cents.
    pub price_cents: u64,
    /// Units one user may hold; zero means no limit.
    pub per_user_limit: u32,
    /// Whether an operator has the sale open (the window applies as well).
    pub open: bool,
    /// Reservation payment timeout.
    pub payment_timeout_ms: u64,
    /// Start of the sale window, if any.
    pub sale_start: Option<Timestamp>,
    /// End of the sale window, if any.
    pub sale_end: Option<Timestamp>,
}

/// An order as kept by the BLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderView {
    /// The order.
    pub order: OrderId,
    /// Its buyer.
    pub user: UserId,
    /// Its SKU.
    pub sku: SkuId,
    /// Units.
    pub qty: u32,
    /// Amount to pay, coupon applied.
    pub amount_cents: u64,
    /// Where it is in its life.
    pub state: OrderState,
    /// When it was reserved.
    pub created_at: Timestamp,
    /// Payment deadline.
    pub expires_at: Timestamp,
    /// The coupon applied, if any.
    pub coupon: Option<CouponId>,
    /// The payment reference, once paid.
    pub payment_ref: Option<PaymentRef>,
}

/// Where a claimed coupon is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CouponState {
    /// Claimed and free to apply to a reservation.
    Available,
    /// Applied to a reserved order awaiting payment.
    Locked(OrderId),
    /// Spent on a paid order.
    Used(OrderId),
    /// Not used before its batch's validity ended.
    Expired,
}

/// A claimed coupon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CouponView {
    /// The coupon.
    pub coupon: CouponId,
    /// Its batch.
    pub batch: BatchId,
    /// Its owner.
    pub user: UserId,
    /// Where it is in its life.
    pub state: CouponState,
    /// Discount it gives.
    pub discount_cents: u64,
    /// End of validity.
    pub valid_until: Timestamp,
}

/// A coupon batch's settings and what is left of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchView {
    /// The batch.
    pub batch: BatchId,
    /// Coupons in all.
    pub quantity: u32,
    /// Coupons not claimed yet.
    pub remaining: u32,
    /// Coupons one user may claim; zero means no limit.
    pub per_user_limit: u32,
    /// Discount each coupon gives.
    pub discount_cents: u64,
    /// Minimum order amount before discount.
    pub min_amount_cents: u64,
    /// Claims open at.
    pub valid_from: Timestamp,
    /// Claims close and unused coupons expire at.
    pub valid_until: Timestamp,
}

impl Outcome {
    /// The snake_case name of the outcome for logs and metrics: the rejection code for a
    /// refusal, else the outcome's kind (`reserved`, `paid`, `sku`, ...).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Rejected(rejection) => rejection.code(),
            Outcome::Ticked { .. } => "ticked",
            Outcome::SkuCreated(_) => "sku_created",
            Outcome::Restocked(_) => "restocked",
            Outcome::SaleChanged(_) => "sale_changed",
            Outcome::Reserved { .. } => "reserved",
            Outcome::Paid { .. } => "paid",
            Outcome::Cancelled { .. } => "cancelled",
            Outcome::Shipped { .. } => "shipped",
            Outcome::Completed { .. } => "completed",
            Outcome::Refunded { .. } => "refunded",
            Outcome::BatchCreated(_) => "batch_created",
            Outcome::CouponClaimed { .. } => "coupon_claimed",
            Outcome::Sku(_) => "sku",
            Outcome::Order(_) => "order",
            Outcome::Coupon(_) => "coupon",
            Outcome::Batch(_) => "batch",
            Outcome::SnapshotRequested { .. } => "snapshot_requested",
        }
    }

    /// Whether the command was refused.
    #[must_use]
    pub fn is_rejected(&self) -> bool {
        matches!(self, Outcome::Rejected(_))
    }

    /// The rejection, if the command was refused.
    #[must_use]
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Outcome::Rejected(rejection) => Some(*rejection),
            _ => None,
        }
    }
}
