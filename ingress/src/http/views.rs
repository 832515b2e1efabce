//! The JSON shapes ringfence writes, as serde types: one set for the HTTP API, `ringfence
//! client`, `journal dump --json` and `replay --export`, so the same outcome reads the same
//! everywhere.
//!
//! Conventions, documented in `docs/openapi.yaml`:
//! - every 64-bit id (`sku`, `user`, `batch`, `order_id`, `coupon_id`) is written as a decimal
//!   string ([`Id`]): snowflake ids exceed 2^53, which JavaScript numbers and `jq` 1.6 round.
//!   Request bodies accept an id as a decimal string or a JSON integer;
//! - times are milliseconds since the Unix epoch (`*_ms`), money is in cents (`*_cents`),
//!   16-byte keys and hashes are lowercase hex;
//! - an error is [`ErrorJson`]: `{"error": code, "message": ..., "field": ...}`, with `field`
//!   naming the offending request field where there is one;
//! - exported records carry a snake_case `kind` ([`Kinded`]); HTTP bodies do not (the status
//!   and the route say what they are).
//!
//! The core types derive no serde: their durable form is the canonical encoding, and these
//! views are an API with a stability of their own.

use std::borrow::Cow;

use ringfence_core::engine::Event;
use ringfence_core::{
    Action, BatchView, Command, CouponState, CouponView, OrderView, Outcome, Query, Rejection,
    SkuView, Timestamp,
};
use serde::{Deserialize, Serialize};

/// A 64-bit id: written as a decimal string, read from a decimal string or a JSON integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(pub u64);

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Formatted on the stack: every exported line and answer carries several ids.
        serializer.serialize_str(itoa::Buffer::new().format(self.0))
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Id, D::Error> {
        deserializer.deserialize_any(IdVisitor)
    }
}

struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = Id;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an id: a decimal string of digits or a non-negative integer below 2^64")
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Id, E> {
        Ok(Id(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Id, E> {
        u64::try_from(value).map(Id).map_err(|_| E::custom("an id cannot be negative"))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Id, E> {
        parse_decimal(text).map(Id).map_err(E::custom)
    }
}

/// Longest piece of a refused id quoted back in its error, so that a hostile path or body
/// cannot fill the response or the log line.
const ID_QUOTED_MAX: usize = 24;

/// Reads a decimal id: 1 to 20 ASCII digits (no sign, no space) within `u64`.
pub fn parse_decimal(text: &str) -> Result<u64, String> {
    // `u64::from_str` accepts a leading '+'; the contract says digits only.
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        let shown: String = text.chars().take(ID_QUOTED_MAX).collect();
        let cut = if shown.len() < text.len() { "..." } else { "" };
        return Err(format!("expected a decimal id of 1 to 20 digits, got {shown:?}{cut}"));
    }
    text.parse().map_err(|_| format!("id {text} is out of range (above 2^64 - 1)"))
}

/// 16 bytes (a request key, a payment reference's hash), written as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex(pub [u8; 16]);

impl Hex {
    /// The 32 digits, formatted on the stack.
    fn digits(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0; 32];
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        out
    }
}

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.digits();
        f.write_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let digits = self.digits();
        serializer.serialize_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

fn opt_ms(time: Option<Timestamp>) -> Option<u64> {
    time.map(|t| t.0)
}

/// A record with its snake_case `kind` first: how exports tell records apart.
#[derive(Clone, Debug, Serialize)]
pub struct Kinded<T> {
    /// What the record is.
    pub kind: &'static str,
    /// Its fields.
    #[serde(flatten)]
    pub body: T,
}

/// An error answer. `field` names the request field at fault, where there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorJson {
    /// The snake_case error code.
    pub error: &'static str,
    /// For the person reading it: what was wrong, and what to do.
    pub message: Cow<'static, str>,
    /// The request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `invalid_state`: the order's state now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_state: Option<&'static str>,
    /// `wrong_amount`: the amount the payment must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_cents: Option<u64>,
}

impl ErrorJson {
    /// An error with a code and a message only.
    #[must_use]
    pub fn new(error: &'static str, message: impl Into<Cow<'static, str>>) -> ErrorJson {
        ErrorJson {
            error,
            message: message.into(),
            field: None,
            current_state: None,
            expected_cents: None,
        }
    }

    /// The same error, naming the field at fault.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> ErrorJson {
        self.field = Some(field.into());
        self
    }
}

/// A SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkuJson {
    pub sku: Id,
    pub stock: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub price_cents: u64,
    pub per_user_limit: u32,
    pub open: bool,
    pub payment_timeout_ms: u64,
    pub sale_start_ms: Option<u64>,
    pub sale_end_ms: Option<u64>,
}

impl From<&SkuView> for SkuJson {
    fn from(view: &SkuView) -> SkuJson {
        SkuJson {
            sku: Id(view.sku.0),
            stock: view.stock,
            available: view.available,
            reserved: view.reserved,
            sold: view.sold,
            price_cents: view.price_cents,
            per_user_limit: view.per_user_limit,
            open: view.open,
            payment_timeout_ms: view.payment_timeout_ms,
            sale_start_ms: opt_ms(view.sale_start),
            sale_end_ms: opt_ms(view.sale_end),
        }
    }
}

/// An order. The payment reference is shown as the hex of its 16-byte hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrderJson {
    pub order_id: Id,
    pub user: Id,
    pub sku: Id,
    pub qty: u32,
    pub amount_cents: u64,
    pub state: &'static str,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub coupon_id: Option<Id>,
    pub payment_ref_hash: Option<Hex>,
}

impl From<&OrderView> for OrderJson {
    fn from(view: &OrderView) -> OrderJson {
        OrderJson {
            order_id: Id(view.order.0),
            user: Id(view.user.0),
            sku: Id(view.sku.0),
            qty: view.qty,
            amount_cents: view.amount_cents,
            state: view.state.name(),
            created_at_ms: view.created_at.0,
            expires_at_ms: view.expires_at.0,
            coupon_id: view.coupon.map(|c| Id(c.0)),
            payment_ref_hash: view.payment_ref.map(|r| Hex(r.0)),
        }
    }
}

/// A coupon batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchJson {
    pub batch: Id,
    pub quantity: u32,
    pub remaining: u32,
    pub per_user_limit: u32,
    pub discount_cents: u64,
    pub min_amount_cents: u64,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
}

impl From<&BatchView> for BatchJson {
    fn from(view: &BatchView) -> BatchJson {
        BatchJson {
            batch: Id(view.batch.0),
            quantity: view.quantity,
            remaining: view.remaining,
            per_user_limit: view.per_user_limit,
            discount_cents: view.discount_cents,
            min_amount_cents: view.min_amount_cents,
            valid_from_ms: view.valid_from.0,
            valid_until_ms: view.valid_until.0,
        }
    }
}

/// A claimed coupon; `order_id` is the order that locked or used it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CouponJson {
    pub coupon_id: Id,
    pub batch: Id,
    pub user: Id,
    pub state: &'static str,
    pub order_id: Option<Id>,
    pub discount_cents: u64,
    pub valid_until_ms: u64,
}

impl From<&CouponView> for CouponJson {
    fn from(view: &CouponView) -> CouponJson {
        let (state, order) = match view.state {
            CouponState::Available => ("available", None),
            CouponState::Locked(order) => ("locked", Some(order)),
            CouponState::Used(order) => ("used", Some(order)),
            CouponState::Expired => ("expired", None),
        };
        CouponJson {
            coupon_id: Id(view.coupon.0),
            batch: Id(view.batch.0),
            user: Id(view.user.0),
            state,
            order_id: order.map(|o| Id(o.0)),
            discount_cents: view.discount_cents,
            valid_until_ms: view.valid_until.0,
        }
    }
}

/// A new reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReservedJson {
    pub order_id: Id,
    pub state: &'static str,
    pub expires_at_ms: u64,
    pub amount_cents: u64,
}

/// An order's state after a transition (pay, cancel, ship, complete, refund).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrderStateJson {
    pub order_id: Id,
    pub state: &'static str,
}

/// A newly claimed coupon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CouponClaimedJson {
    pub coupon_id: Id,
    pub batch: Id,
    pub state: &'static str,
    pub valid_until_ms: u64,
}

/// A snapshot was requested: the state as of `last_sequence`, whose hash is `state_hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotJson {
    pub last_sequence: u64,
    pub state_hash: String,
}

/// The engine's logical time moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TickedJson {
    pub now_ms: u64,
}

/// The JSON of any outcome (without its kind): what an HTTP response carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OutcomeJson {
    Sku(SkuJson),
    Order(OrderJson),
    Batch(BatchJson),
    Coupon(CouponJson),
    Reserved(ReservedJson),
    OrderState(OrderStateJson),
    CouponClaimed(CouponClaimedJson),
    Snapshot(SnapshotJson),
    Ticked(TickedJson),
    Error(ErrorJson),
}

impl From<&Outcome> for OutcomeJson {
    fn from(outcome: &Outcome) -> OutcomeJson {
        let state = |order: ringfence_core::OrderId, state| {
            OutcomeJson::OrderState(OrderStateJson { order_id: Id(order.0), state })
        };
        match outcome {
            Outcome::Rejected(rejection) => OutcomeJson::Error(rejection_json(*rejection)),
            Outcome::SkuCreated(view)
            | Outcome::Restocked(view)
            | Outcome::SaleChanged(view)
            | Outcome::Sku(view) => OutcomeJson::Sku(view.into()),
            Outcome::Reserved { order, expires_at, amount_cents } => {
                OutcomeJson::Reserved(ReservedJson {
                    order_id: Id(order.0),
                    state: "reserved",
                    expires_at_ms: expires_at.0,
                    amount_cents: *amount_cents,
                })
            }
            Outcome::Paid { order } => state(*order, "paid"),
            Outcome::Cancelled { order } => state(*order, "cancelled"),
            Outcome::Shipped { order } => state(*order, "shipped"),
            Outcome::Completed { order } => state(*order, "completed"),
            Outcome::Refunded { order } => state(*order, "refunded"),
            Outcome::BatchCreated(view) | Outcome::Batch(view) => OutcomeJson::Batch(view.into()),
            Outcome::CouponClaimed { coupon, batch, valid_until } => {
                OutcomeJson::CouponClaimed(CouponClaimedJson {
                    coupon_id: Id(coupon.0),
                    batch: Id(batch.0),
                    state: "available",
                    valid_until_ms: valid_until.0,
                })
            }
            Outcome::Order(view) => OutcomeJson::Order(view.into()),
            Outcome::Coupon(view) => OutcomeJson::Coupon(view.into()),
            Outcome::SnapshotRequested { last_sequence, running_hash } => {
                OutcomeJson::Snapshot(SnapshotJson {
                    last_sequence: last_sequence.0,
                    state_hash: format!("{running_hash:016x}"),
                })
            }
            Outcome::Ticked { now } => OutcomeJson::Ticked(TickedJson { now_ms: now.0 }),
        }
    }
}

/// The snake_case kind of an outcome, as exports name it: [`Outcome::name`], but `rejected`
/// for every refusal (the export names the refusal in its own field).
#[must_use]
pub fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Rejected(_) => "rejected",
        other => other.name(),
    }
}

/// An outcome as an export record: its kind, then the fields an HTTP body would carry.
#[must_use]
pub fn outcome_record(outcome: &Outcome) -> Kinded<OutcomeJson> {
    Kinded { kind: outcome_kind(outcome), body: outcome.into() }
}

/// The API's error code of a rejection: the engine's code, except that the API speaks of
/// request ids, not request keys.
#[must_use]
pub fn rejection_code(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::RequestKeyReused => "request_id_reused",
        other => other.code(),
    }
}

/// The error body of a rejection. `invalid_qty` names `qty`; the fields of the other
/// argument checks are named before submission ([`crate::http::api`]).
#[must_use]
pub fn rejection_json(rejection: Rejection) -> ErrorJson {
    let mut error = ErrorJson::new(rejection_code(rejection), rejection_message(rejection));
    match rejection {
        Rejection::InvalidState { current } => error.current_state = Some(current.name()),
        Rejection::WrongAmount { expected_cents } => {
            error.expected_cents = Some(expected_cents);
            error.field = Some("amount_cents".into());
        }
        Rejection::InvalidQty => error.field = Some("qty".into()),
        Rejection::PaymentConflict => error.field = Some("payment_ref".into()),
        _ => {}
    }
    error
}

fn rejection_message(rejection: Rejection) -> Cow<'static, str> {
    match rejection {
        Rejection::SoldOut => "not enough units (or coupons) left".into(),
        Rejection::LimitExceeded => "the user would hold more than the per-user limit".into(),
        Rejection::SaleNotOpen => "the sale has not started yet".into(),
        Rejection::SaleClosed => "the sale has ended or was closed".into(),
        Rejection::UnknownSku => "no SKU with that id".into(),
        Rejection::UnknownOrder => "no such order".into(),
        Rejection::UnknownCoupon => "no such coupon".into(),
        Rejection::UnknownBatch => "no such coupon batch".into(),
        Rejection::InvalidQty => {
            "quantity is zero, above the per-order maximum, or overflows".into()
        }
        Rejection::CouponInvalid => {
            "the coupon is not the buyer's, is locked, used or expired, or the order is too small"
                .into()
        }
        Rejection::CapacityExhausted => {
            "a table, or the user's share of it, is full; retry later".into()
        }
        Rejection::SkuExists => "a SKU with that id already exists".into(),
        Rejection::BatchExists => "a coupon batch with that id already exists".into(),
        Rejection::InvalidArgument => "a field is out of range".into(),
        Rejection::InvalidState { current } => {
            format!("the order is {} and cannot make this transition", current.name()).into()
        }
        Rejection::PaymentConflict => "the order was paid with a different payment_ref".into(),
        Rejection::WrongAmount { expected_cents } => {
            format!("amount_cents must equal the order's amount, {expected_cents}").into()
        }
        Rejection::NotOwner => "the user is not the order's buyer".into(),
        Rejection::RequestKeyReused => {
            "this request_id was already used for a different request".into()
        }
        other => format!("refused: {}", other.code()).into(),
    }
}

/// A journaled or queried command, as `journal dump --json` and `replay --export` write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandJson {
    Tick,
    Snapshot,
    QuerySku {
        sku: Id,
    },
    QueryOrder {
        order_id: Id,
    },
    QueryCoupon {
        coupon_id: Id,
    },
    QueryBatch {
        batch: Id,
    },
    QuerySkuAt {
        position: u32,
    },
    CreateSku {
        request_key: Hex,
        sku: Id,
        stock: u32,
        price_cents: u64,
        per_user_limit: u32,
        payment_timeout_ms: u64,
        sale_start_ms: Option<u64>,
        sale_end_ms: Option<u64>,
    },
    Restock {
        request_key: Hex,
        sku: Id,
        qty: u32,
    },
    OpenSale {
        request_key: Hex,
        sku: Id,
    },
    CloseSale {
        request_key: Hex,
        sku: Id,
    },
    Reserve {
        request_key: Hex,
        user: Id,
        sku: Id,
        qty: u32,
        coupon_id: Option<Id>,
    },
    Pay {
        request_key: Hex,
        order_id: Id,
        payment_ref_hash: Hex,
        amount_cents: u64,
    },
    Cancel {
        request_key: Hex,
        order_id: Id,
        user: Id,
    },
    AdminCancel {
        request_key: Hex,
        order_id: Id,
    },
    Ship {
        request_key: Hex,
        order_id: Id,
    },
    Complete {
        request_key: Hex,
        order_id: Id,
        user: Id,
    },
    Refund {
        request_key: Hex,
        order_id: Id,
    },
    CreateCouponBatch {
        request_key: Hex,
        batch: Id,
        quantity: u32,
        per_user_limit: u32,
        discount_cents: u64,
        min_amount_cents: u64,
        valid_from_ms: u64,
        valid_until_ms: u64,
    },
    ClaimCoupon {
        request_key: Hex,
        user: Id,
        batch: Id,
    },
}

impl From<&Command> for CommandJson {
    fn from(command: &Command) -> CommandJson {
        match *command {
            Command::Tick => CommandJson::Tick,
            Command::Snapshot => CommandJson::Snapshot,
            Command::Query(Query::Sku(sku)) => CommandJson::QuerySku { sku: Id(sku.0) },
            Command::Query(Query::Order(o)) => CommandJson::QueryOrder { order_id: Id(o.0) },
            Command::Query(Query::Coupon(c)) => CommandJson::QueryCoupon { coupon_id: Id(c.0) },
            Command::Query(Query::Batch(b)) => CommandJson::QueryBatch { batch: Id(b.0) },
            Command::Query(Query::SkuAt(position)) => CommandJson::QuerySkuAt { position },
            Command::Client { key, ref action } => action_json(Hex(key.0), action),
        }
    }
}

fn action_json(request_key: Hex, action: &Action) -> CommandJson {
    match *action {
        Action::CreateSku(c) => CommandJson::CreateSku {
            request_key,
            sku: Id(c.sku.0),
            stock: c.stock,
            price_cents: c.price_cents,
            per_user_limit: c.per_user_limit,
            payment_timeout_ms: c.payment_timeout_ms,
            sale_start_ms: opt_ms(c.sale_start),
            sale_end_ms: opt_ms(c.sale_end),
        },
        Action::Restock { sku, qty } => CommandJson::Restock { request_key, sku: Id(sku.0), qty },
        Action::OpenSale { sku } => CommandJson::OpenSale { request_key, sku: Id(sku.0) },
        Action::CloseSale { sku } => CommandJson::CloseSale { request_key, sku: Id(sku.0) },
        Action::Reserve(r) => CommandJson::Reserve {
            request_key,
            user: Id(r.user.0),
            sku: Id(r.sku.0),
            qty: r.qty,
            coupon_id: r.coupon.map(|c| Id(c.0)),
        },
        Action::Pay { order, payment_ref, amount_cents } => CommandJson::Pay {
            request_key,
            order_id: Id(order.0),
            payment_ref_hash: Hex(payment_ref.0),
            amount_cents,
        },
        Action::Cancel { order, user } => {
            CommandJson::Cancel { request_key, order_id: Id(order.0), user: Id(user.0) }
        }
        Action::AdminCancel { order } => {
            CommandJson::AdminCancel { request_key, order_id: Id(order.0) }
        }
        Action::Ship { order } => CommandJson::Ship { request_key, order_id: Id(order.0) },
        Action::Complete { order, user } => {
            CommandJson::Complete { request_key, order_id: Id(order.0), user: Id(user.0) }
        }
        Action::Refund { order } => CommandJson::Refund { request_key, order_id: Id(order.0) },
        Action::CreateCouponBatch(b) => CommandJson::CreateCouponBatch {
            request_key,
            batch: Id(b.batch.0),
            quantity: b.quantity,
            per_user_limit: b.per_user_limit,
            discount_cents: b.discount_cents,
            min_amount_cents: b.min_amount_cents,
            valid_from_ms: b.valid_from.0,
            valid_until_ms: b.valid_until.0,
        },
        Action::ClaimCoupon { user, batch } => {
            CommandJson::ClaimCoupon { request_key, user: Id(user.0), batch: Id(batch.0) }
        }
    }
}

/// An engine event (an expiry), as exports write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventJson {
    OrderExpired { order_id: Id, user: Id, sku: Id, qty: u32 },
}

impl From<&Event> for EventJson {
    fn from(event: &Event) -> EventJson {
        match *event {
            Event::OrderExpired { order, user, sku, qty } => EventJson::OrderExpired {
                order_id: Id(order.0),
                user: Id(user.0),
                sku: Id(sku.0),
                qty,
            },
        }
    }
}

/// The state hash at a stated sequence: two nodes at the same sequence agree on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateHashJson {
    /// The running hash (hex) after applying `sequence`.
    pub hash: String,
    /// The last command the hash includes.
    pub sequence: u64,
    /// The engine's logical time after that command (ms since the Unix epoch), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of_ms: Option<u64>,
}

/// A node's role, position and state hash: `GET /v1/node` and `ringfence client node`. The
/// binary protocol carries the first fields only; the rest are left out there.
#[derive(Clone, Debug, Serialize)]
pub struct NodeJson {
    /// `primary` or `standby`.
    pub role: &'static str,
    pub epoch: u64,
    /// The last command applied, and the one `state_hash` was taken after.
    pub last_sequence: u64,
    /// The running hash after `last_sequence` (hex): the same as `state.hash`.
    pub state_hash: String,
    /// The state hash with the sequence and logical time it was taken at.
    pub state: StateHashJson,
    /// Last sequence the pipeline has applied (may run ahead of `last_sequence`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_sequence: Option<u64>,
    pub journal: JournalJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::backend::ReplicationStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_open: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
}

/// The journal's line on `/v1/node`.
#[derive(Clone, Debug, Serialize)]
pub struct JournalJson {
    /// E.g. the data directory, or `memory (no persistence)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The last sequence synced to the journal.
    pub durable_sequence: u64,
}

/// The replication peer's line on `/v1/node`.
#[derive(Clone, Debug, Serialize)]
pub struct PeerJson {
    pub status: String,
}

impl NodeJson {
    /// What the binary protocol's node information says (no logical time, no connection
    /// figures).
    #[must_use]
    pub fn from_info(info: &crate::wire::NodeInfo) -> NodeJson {
        NodeJson {
            role: if info.primary { "primary" } else { "standby" },
            epoch: info.epoch,
            last_sequence: info.last_sequence,
            state_hash: format!("{:016x}", info.running_hash),
            state: StateHashJson {
                hash: format!("{:016x}", info.running_hash),
                sequence: info.last_sequence,
                as_of_ms: None,
            },
            applied_sequence: None,
            journal: JournalJson { status: None, durable_sequence: info.journal_durable },
            peer: None,
            replication: None,
            connections_open: None,
            in_flight: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_core::{OrderId, OrderState, RequestKey, Reserve, SkuId, UserId};

    #[test]
    fn ids_above_two_to_the_53_are_written_as_exact_decimal_strings() {
        // Goal: a snowflake id survives a JSON reader that holds numbers as doubles.
        let id = (1u64 << 60) + 678_213;
        let paid =
            serde_json::to_value(OutcomeJson::from(&Outcome::Paid { order: OrderId(id) })).unwrap();
        assert_eq!(paid["order_id"], id.to_string());
        let record =
            serde_json::to_value(outcome_record(&Outcome::Paid { order: OrderId(id) })).unwrap();
        assert_eq!(
            (record["kind"].as_str(), record["order_id"].as_str()),
            (Some("paid"), Some(&*id.to_string()))
        );
    }

    #[test]
    fn ids_and_keys_are_written_as_the_formatter_writes_them() {
        // Goal: the stack formatting of ids and 16-byte keys gives the digits `{}` and
        // `{:02x}` give, at the edges of their ranges and in byte order.
        for id in [0, 9, 10, 4_294_967_296, (1u64 << 60) + 678_213, u64::MAX] {
            assert_eq!(serde_json::to_string(&Id(id)).unwrap(), format!("\"{id}\""));
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(0x1f) ^ 0xa0;
        }
        for key in [[0; 16], [0xff; 16], bytes] {
            let expected: String = key.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(Hex(key).to_string(), expected);
            assert_eq!(serde_json::to_string(&Hex(key)).unwrap(), format!("\"{expected}\""));
        }
    }

    #[test]
    fn ids_are_read_from_strings_or_integers_and_nothing_else() {
        // Goal: request bodies take both spellings of an id and refuse signs, fractions, junk.
        let read = |text: &str| serde_json::from_str::<Id>(text).map(|id| id.0);
        assert_eq!(read("42").unwrap(), 42);
        assert_eq!(read("\"18446744073709551615\"").unwrap(), u64::MAX);
        for bad in ["-1", "1.5", "\"+1\"", "\"\"", "\"18446744073709551616\"", "\" 1\"", "null"] {
            assert!(read(bad).is_err(), "{bad} was read as an id");
        }
    }

    #[test]
    fn commands_and_rejections_keep_their_documented_fields() {
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
        let value = serde_json::to_value(CommandJson::from(&reserve)).unwrap();
        assert_eq!(value["kind"], "reserve");
        assert_eq!(value["request_key"], "01000000000000000000000000000000");
        assert_eq!((value["user"].as_str(), value["sku"].as_str()), (Some("2"), Some("3")));
        assert_eq!(value["qty"], 4);
        let rejected = Outcome::Rejected(Rejection::InvalidState { current: OrderState::Paid });
        let value = serde_json::to_value(outcome_record(&rejected)).unwrap();
        assert_eq!(
            (value["kind"].as_str(), value["error"].as_str()),
            (Some("rejected"), Some("invalid_state"))
        );
        assert_eq!(value["current_state"], "paid");
        assert!(value.get("field").is_none(), "no field for a state refusal: {value}");
        let qty = serde_json::to_value(rejection_json(Rejection::InvalidQty)).unwrap();
        assert_eq!(
            (qty["error"].as_str(), qty["field"].as_str()),
            (Some("invalid_qty"), Some("qty"))
        );
    }
}
