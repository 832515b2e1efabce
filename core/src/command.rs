//! Commands: what the business-logic processor is asked to do, one at a time, in sequence order.
//!
//! A command is plain data: fixed size, `Copy`, no heap. Its durable and shared form is the
//! canonical encoding of [`crate::codec`], never its memory layout, so replay and the standby
//! see exactly what the primary applied: the journal, the replication stream and the binary
//! protocol all carry it. Commands derive no `Hash`: hashes are taken over the canonical bytes
//! ([`crate::hash`]).

use crate::types::{
    BatchId, CouponId, OrderId, PaymentRef, RequestKey, Sequence, SkuId, Timestamp, UserId,
};

/// A command with its place in the total order and the time it was sequenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequenced {
    /// Position in the input ring; strictly increasing across applied commands.
    pub sequence: Sequence,
    /// Wall-clock time stamped by the producer; may run backwards across producers, the BLP's
    /// *now* never does.
    pub timestamp: Timestamp,
    /// What to do.
    pub command: Command,
}

/// Everything the business-logic processor can be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Advances logical time only; published periodically by the node's timer so that payment
    /// deadlines fire without client traffic.
    Tick,
    /// A read. Changes nothing, does not advance time, and is not part of the state hash, so a
    /// journal may leave queries out.
    Query(Query),
    /// Operator: snapshot state at this sequence. Changes nothing in the engine (like a query);
    /// the node's snapshot hook sees it after it is applied and writes the snapshot.
    Snapshot,
    /// A mutating client command with its idempotency key.
    Client {
        /// Idempotency key: a retry with the same key returns the original outcome.
        key: RequestKey,
        /// The change asked for.
        action: Action,
    },
}

/// Reads answered from the BLP's state at the command's place in the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// The SKU's stock figures and sale settings.
    Sku(SkuId),
    /// An order, while it is still kept (live orders always are).
    Order(OrderId),
    /// A claimed coupon.
    Coupon(CouponId),
    /// A coupon batch's settings and remaining count.
    Batch(BatchId),
    /// The SKU at this position of the catalogue (SKUs in the order they were created, from
    /// 0; positions never change, since SKUs are never removed): how `GET /v1/skus` pages.
    /// Past the last SKU the answer is `unknown_sku`.
    SkuAt(u32),
}

/// Mutating commands. Each carries everything needed to decide it; nothing is looked up outside
/// the BLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Admin: define a SKU with its initial stock.
    CreateSku(CreateSku),
    /// Admin: add units to a SKU's stock.
    Restock {
        /// The SKU.
        sku: SkuId,
        /// Units added; at least one.
        qty: u32,
    },
    /// Admin: (re)open a SKU's sale; its window, if any, still applies.
    OpenSale {
        /// The SKU.
        sku: SkuId,
    },
    /// Admin: close a SKU's sale now; reservations are rejected as `sale_closed`.
    CloseSale {
        /// The SKU.
        sku: SkuId,
    },
    /// Buyer: the flash-sale hot path.
    Reserve(Reserve),
    /// Payment side: a payment for a reserved order arrived.
    Pay {
        /// The order paid for.
        order: OrderId,
        /// The payment provider's reference; paying again with the same one is idempotent.
        payment_ref: PaymentRef,
        /// Must equal the order's amount.
        amount_cents: u64,
    },
    /// Buyer: cancel one's own reserved order.
    Cancel {
        /// The order.
        order: OrderId,
        /// Must be the order's buyer.
        user: UserId,
    },
    /// Admin: cancel any reserved order.
    AdminCancel {
        /// The order.
        order: OrderId,
    },
    /// Admin: a paid order left the warehouse.
    Ship {
        /// The order.
        order: OrderId,
    },
    /// Buyer: confirm receipt of a shipped order.
    Complete {
        /// The order.
        order: OrderId,
        /// Must be the order's buyer.
        user: UserId,
    },
    /// Admin: refund a paid order before it ships; its units return to stock.
    Refund {
        /// The order.
        order: OrderId,
    },
    /// Admin: define a batch of coupons that buyers can claim.
    CreateCouponBatch(CreateCouponBatch),
    /// Buyer: grab one coupon from a batch.
    ClaimCoupon {
        /// The buyer.
        user: UserId,
        /// The batch.
        batch: BatchId,
    },
}

impl Action {
    /// The user the action names, if it names one (a buyer's own command): its request key
    /// is scoped to that user.
    #[must_use]
    pub fn user(&self) -> Option<UserId> {
        match *self {
            Action::Reserve(Reserve { user, .. })
            | Action::Cancel { user, .. }
            | Action::Complete { user, .. }
            | Action::ClaimCoupon { user, .. } => Some(user),
            Action::CreateSku(_)
            | Action::Restock { .. }
            | Action::OpenSale { .. }
            | Action::CloseSale { .. }
            | Action::Pay { .. }
            | Action::AdminCancel { .. }
            | Action::Ship { .. }
            | Action::Refund { .. }
            | Action::CreateCouponBatch(_) => None,
        }
    }
}

/// Settings of a new SKU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateSku {
    /// The new SKU's id; not zero, not in use.
    pub sku: SkuId,
    /// Units on sale at start.
    pub stock: u32,
    /// Unit price in cents.
    pub price_cents: u64,
    /// Units one user may hold in orders that have not been cancelled, expired or refunded;
    /// zero means no limit.
    pub per_user_limit: u32,
    /// Time a reservation waits for payment before it expires; at least one millisecond.
    pub payment_timeout_ms: u64,
    /// Reservations are rejected as `sale_not_open` before this time.
    pub sale_start: Option<Timestamp>,
    /// Reservations are rejected as `sale_closed` from this time on.
    pub sale_end: Option<Timestamp>,
}

/// A buyer's reservation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserve {
    /// The buyer.
    pub user: UserId,
    /// The SKU.
    pub sku: SkuId,
    /// Units wanted, all or nothing.
    pub qty: u32,
    /// A claimed coupon to apply; locked by the order until it is paid (used) or ends (released).
    pub coupon: Option<CouponId>,
}

/// Settings of a new coupon batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateCouponBatch {
    /// The new batch's id; not zero, not in use.
    pub batch: BatchId,
    /// Coupons that can be claimed in all.
    pub quantity: u32,
    /// Coupons one user may claim; zero means no limit.
    pub per_user_limit: u32,
    /// Taken off an order's amount.
    pub discount_cents: u64,
    /// An order must be worth at least this much before discount for the coupon to apply.
    pub min_amount_cents: u64,
    /// Claims are rejected as `sale_not_open` before this time.
    pub valid_from: Timestamp,
    /// Claims are rejected as `sale_closed`, and unused coupons expire, from this time on.
    pub valid_until: Timestamp,
}

impl Command {
    /// The idempotency key of a mutating client command.
    #[must_use]
    pub fn request_key(&self) -> Option<RequestKey> {
        match self {
            Command::Client { key, .. } => Some(*key),
            Command::Tick | Command::Query(_) | Command::Snapshot => None,
        }
    }

    /// The snake_case kind of the command for logs and statistics (`tick`, `query`,
    /// `snapshot`, or the action's name such as `reserve`).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Tick => "tick",
            Command::Snapshot => "snapshot",
            Command::Query(_) => "query",
            Command::Client { action, .. } => action.name(),
        }
    }

    /// Whether the command can change engine state (queries and snapshot requests cannot).
    #[must_use]
    pub fn is_mutating(&self) -> bool {
        matches!(self, Command::Tick | Command::Client { .. })
    }
}

impl Action {
    /// The snake_case name of the action (`reserve`, `pay`, `create_sku`, ...).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Action::CreateSku(_) => "create_sku",
            Action::Restock { .. } => "restock",
            Action::OpenSale { .. } => "open_sale",
            Action::CloseSale { .. } => "close_sale",
            Action::Reserve(_) => "reserve",
            Action::Pay { .. } => "pay",
            Action::Cancel { .. } => "cancel",
            Action::AdminCancel { .. } => "admin_cancel",
            Action::Ship { .. } => "ship",
            Action::Complete { .. } => "complete",
            Action::Refund { .. } => "refund",
            Action::CreateCouponBatch(_) => "create_coupon_batch",
            Action::ClaimCoupon { .. } => "claim_coupon",
        }
    }
}
