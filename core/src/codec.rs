//! The canonical byte encoding of commands, outcomes and engine events: the one format that
//! the wire protocol, the journal, replication and the state hashes all speak.
//!
//! Durable and shared bytes are a format, not a type: nothing here depends on how the Rust
//! types are laid out in memory or on what a derive emits, so adding a field to a type cannot
//! silently change old journals, and two builds agree on every byte. A change to any layout
//! below is a new [`ENCODING_VERSION`], which the containers (journal segment header, snapshot
//! header, replication handshake) record.
//!
//! # Rules
//!
//! - A value is a tag byte naming its variant, then its fields in declaration order.
//! - Integers are little-endian and fixed width: `u8`, `u32`, `u64`. Ids, timestamps and
//!   sequences are their `u64`; request keys and payment references are their 16 raw bytes.
//! - `bool` is one byte, 0 or 1. `Option<T>` is a presence byte, 0 or 1, followed by `T` only
//!   when present.
//! - Every other tag, flag or presence byte is refused, and so are bytes after the value, so
//!   each value has exactly one encoding and equal values have equal bytes (which is what
//!   makes hashing the bytes sound).
//!
//! Decoding validates everything and never panics: any byte string either decodes to the one
//! value that encodes to it or is refused with a [`DecodeError`] naming the byte offset.
//! Encoding writes into a caller's buffer of at least [`COMMAND_LEN_MAX`] (or
//! [`OUTCOME_LEN_MAX`], [`EVENT_LEN_MAX`]) bytes and never allocates: it runs for every
//! command on the processor's hot path.
//!
//! # Commands
//!
//! ```text
//! Tick            00
//! Query::Sku      01 | sku u64
//! Query::Order    02 | order u64
//! Query::Coupon   03 | coupon u64
//! Query::Batch    04 | batch u64
//! Snapshot        05
//! Query::SkuAt    06 | position u32
//! Client          10 | request key [16] | action
//! ```
//!
//! # Actions (after a client command's request key; alone when fingerprinted)
//!
//! ```text
//! CreateSku          01 | sku u64 | stock u32 | price_cents u64 | per_user_limit u32
//!                       | payment_timeout_ms u64 | sale_start opt u64 | sale_end opt u64
//! Restock            02 | sku u64 | qty u32
//! OpenSale           03 | sku u64
//! CloseSale          04 | sku u64
//! Reserve            05 | user u64 | sku u64 | qty u32 | coupon opt u64
//! Pay                06 | order u64 | payment_ref [16] | amount_cents u64
//! Cancel             07 | order u64 | user u64
//! AdminCancel        08 | order u64
//! Ship               09 | order u64
//! Complete           0A | order u64 | user u64
//! Refund             0B | order u64
//! CreateCouponBatch  0C | batch u64 | quantity u32 | per_user_limit u32 | discount_cents u64
//!                       | min_amount_cents u64 | valid_from u64 | valid_until u64
//! ClaimCoupon        0D | user u64 | batch u64
//!
//! opt u64 = 00 (absent) or 01 | value u64
//! ```
//!
//! A reservation for user 3 of one unit of SKU 1, no coupon, under request key 7 is 39 bytes:
//! `10 | 07 00 .. 00 (16 bytes) | 05 | 03 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00 |
//! 01 00 00 00 | 00`.
//!
//! # Outcomes
//!
//! ```text
//! Ticked             01 | now u64
//! SkuCreated         02 | sku view
//! Restocked          03 | sku view
//! SaleChanged        04 | sku view
//! Reserved           05 | order u64 | expires_at u64 | amount_cents u64
//! Paid               06 | order u64
//! Cancelled          07 | order u64
//! Shipped            08 | order u64
//! Completed          09 | order u64
//! Refunded           0A | order u64
//! BatchCreated       0B | batch view
//! CouponClaimed      0C | coupon u64 | batch u64 | valid_until u64
//! Sku                0D | sku view
//! Order              0E | order view
//! Coupon             0F | coupon view
//! Batch              10 | batch view
//! SnapshotRequested  11 | last_sequence u64 | running_hash u64
//! Rejected           12 | rejection
//!
//! sku view     sku u64 | stock u64 | available u64 | reserved u64 | sold u64 | price_cents u64
//!              | per_user_limit u32 | open bool | payment_timeout_ms u64
//!              | sale_start opt u64 | sale_end opt u64
//! batch view   batch u64 | quantity u32 | remaining u32 | per_user_limit u32
//!              | discount_cents u64 | min_amount_cents u64 | valid_from u64 | valid_until u64
//! order view   order u64 | user u64 | sku u64 | qty u32 | amount_cents u64 | state u8
//!              | created_at u64 | expires_at u64 | coupon opt u64 | payment_ref opt [16]
//! coupon view  coupon u64 | batch u64 | user u64 | coupon state | discount_cents u64
//!              | valid_until u64
//!
//! order state   00 reserved, 01 paid, 02 shipped, 03 completed, 04 cancelled, 05 expired,
//!               06 refunded
//! coupon state  00 available | 01 locked, order u64 | 02 used, order u64 | 03 expired
//! rejection     01 sold_out          02 limit_exceeded     03 sale_not_open
//!               04 sale_closed       05 unknown_sku        06 unknown_order
//!               07 unknown_coupon    08 unknown_batch      09 invalid_qty
//!               0A coupon_invalid    0B capacity_exhausted 0C sku_exists
//!               0D batch_exists      0E invalid_argument   0F payment_conflict
//!               10 not_owner         11 request_key_reused
//!               12 invalid_state | current order state u8
//!               13 wrong_amount | expected_cents u64
//! ```
//!
//! # Events
//!
//! ```text
//! OrderExpired   01 | order u64 | user u64 | sku u64 | qty u32
//! ```

use crate::command::{Action, Command, CreateCouponBatch, CreateSku, Query, Reserve};
use crate::engine::Event;
use crate::outcome::{
    BatchView, CouponState, CouponView, OrderState, OrderView, Outcome, Rejection, SkuView,
};
use crate::types::{
    BatchId, CouponId, OrderId, PaymentRef, RequestKey, Sequence, SkuId, Timestamp, UserId,
};

/// Version of the encoding defined in this module. Containers that store or send encoded
/// values record it; a reader refuses a version it does not know.
pub const ENCODING_VERSION: u16 = 1;

const TAG_LEN: usize = 1;
const FLAG_LEN: usize = 1;
const U32_LEN: usize = 4;
const U64_LEN: usize = 8;
const BYTES16_LEN: usize = 16;
/// An `Option<u64>` at its longest: presence byte and value.
const OPT_U64_LEN: usize = FLAG_LEN + U64_LEN;

const CREATE_SKU_LEN: usize =
    TAG_LEN + U64_LEN + U32_LEN + U64_LEN + U32_LEN + U64_LEN + 2 * OPT_U64_LEN;
const RESERVE_LEN: usize = TAG_LEN + 2 * U64_LEN + U32_LEN + OPT_U64_LEN;
const PAY_LEN: usize = TAG_LEN + U64_LEN + BYTES16_LEN + U64_LEN;
const CREATE_BATCH_LEN: usize = TAG_LEN + U64_LEN + 2 * U32_LEN + 4 * U64_LEN;

/// Longest encoded [`Action`]: a `CreateSku` with both sale-window ends.
pub const ACTION_LEN_MAX: usize = max(max(CREATE_SKU_LEN, CREATE_BATCH_LEN), PAY_LEN);
/// Longest encoded [`Command`]: a client command creating a SKU with both window ends.
pub const COMMAND_LEN_MAX: usize = TAG_LEN + BYTES16_LEN + ACTION_LEN_MAX;

const SKU_VIEW_LEN: usize = 7 * U64_LEN + U32_LEN + FLAG_LEN + 2 * OPT_U64_LEN;
const BATCH_VIEW_LEN: usize = U64_LEN + 3 * U32_LEN + 4 * U64_LEN;
const ORDER_VIEW_LEN: usize =
    6 * U64_LEN + U32_LEN + TAG_LEN + OPT_U64_LEN + FLAG_LEN + BYTES16_LEN;
const COUPON_VIEW_LEN: usize = 3 * U64_LEN + TAG_LEN + U64_LEN + 2 * U64_LEN;

/// Longest encoded [`Outcome`]: an SKU view or an order view with every option present.
pub const OUTCOME_LEN_MAX: usize =
    TAG_LEN + max(max(SKU_VIEW_LEN, ORDER_VIEW_LEN), max(BATCH_VIEW_LEN, COUPON_VIEW_LEN));

/// Longest encoded [`Event`]: an order expiry.
pub const EVENT_LEN_MAX: usize = TAG_LEN + 3 * U64_LEN + U32_LEN;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

// The figures in the module documentation, and room for the largest of each family.
const _: () = assert!(CREATE_SKU_LEN == 51 && CREATE_BATCH_LEN == 49 && PAY_LEN == 33);
const _: () = assert!(RESERVE_LEN <= ACTION_LEN_MAX);
const _: () = assert!(ACTION_LEN_MAX == 51);
const _: () = assert!(COMMAND_LEN_MAX == 68);
const _: () = assert!(SKU_VIEW_LEN == 79 && ORDER_VIEW_LEN == 79);
const _: () = assert!(OUTCOME_LEN_MAX == 80);
const _: () = assert!(EVENT_LEN_MAX == 29);
// Snapshot images store an outcome's length in one byte.
const _: () = assert!(OUTCOME_LEN_MAX <= u8::MAX as usize);

const COMMAND_TICK: u8 = 0x00;
const COMMAND_QUERY_SKU: u8 = 0x01;
const COMMAND_QUERY_ORDER: u8 = 0x02;
const COMMAND_QUERY_COUPON: u8 = 0x03;
const COMMAND_QUERY_BATCH: u8 = 0x04;
/// Queries are never journaled, so a new one leaves the journal's encoding as it was.
const COMMAND_QUERY_SKU_AT: u8 = 0x06;
const COMMAND_SNAPSHOT: u8 = 0x05;
const COMMAND_CLIENT: u8 = 0x10;

const EVENT_ORDER_EXPIRED: u8 = 0x01;

/// The tag of `Outcome::Rejected`; the other outcome tags are written where each is encoded.
const OUTCOME_REJECTED: u8 = 0x12;

/// Bytes that are not the canonical encoding of a value. Every variant names the byte offset
/// (from the start of the bytes given to the decoder) where decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end inside a field.
    #[error(
        "bytes end at offset {offset} inside {field}: the value was cut short (a torn write \
         or a truncated message)"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where the field started.
        offset: usize,
    },
    /// A tag byte that names no variant.
    #[error(
        "unknown {what} tag 0x{tag:02x} at offset {offset}: the bytes are damaged, or were \
         written by a newer build than this one (canonical encoding version {ENCODING_VERSION})"
    )]
    UnknownTag {
        /// Which enum was being decoded.
        what: &'static str,
        /// The byte found.
        tag: u8,
        /// Where it was found.
        offset: usize,
    },
    /// A boolean or presence byte other than 0 or 1.
    #[error("byte {byte} at offset {offset} where {field} must be 0 or 1: the bytes are damaged")]
    BadFlag {
        /// The field.
        field: &'static str,
        /// The byte found.
        byte: u8,
        /// Where it was found.
        offset: usize,
    },
    /// Bytes follow a complete value.
    #[error(
        "{count} bytes follow the {what} that ends at offset {offset}: a value has exactly \
         one encoding, so these bytes are damaged or hold something else"
    )]
    TrailingBytes {
        /// The value decoded.
        what: &'static str,
        /// Where it ended.
        offset: usize,
        /// Bytes left over.
        count: usize,
    },
    /// A fixed-width layout's unused bytes (an absent option's room) are not zero.
    #[error("nonzero byte at offset {offset} in the unused room of {field}: the bytes are damaged")]
    BadPadding {
        /// The field whose room is unused.
        field: &'static str,
        /// Where the nonzero byte is.
        offset: usize,
    },
    /// A length byte outside the range its field allows.
    #[error("length {len} at offset {offset} is out of range for {field}: the bytes are damaged")]
    BadLength {
        /// The field.
        field: &'static str,
        /// The length found.
        len: usize,
        /// Where it was found.
        offset: usize,
    },
}

/// Where encoded fields go, front to back: a byte buffer ([`Writer`]) or, for hashing, words
/// held in registers (`hash::Words`). One encoder serves both, so the bytes hashed are exactly
/// the bytes written.
pub(crate) trait Sink {
    /// One byte.
    fn u8(&mut self, value: u8);
    /// Four bytes, little-endian.
    fn u32(&mut self, value: u32);
    /// Eight bytes, little-endian.
    fn u64(&mut self, value: u64);
    /// Sixteen raw bytes (request keys, payment references).
    fn bytes16(&mut self, value: &[u8; 16]);

    #[inline(always)]
    fn flag(&mut self, value: bool) {
        self.u8(u8::from(value));
    }

    #[inline(always)]
    fn opt_u64(&mut self, value: Option<u64>) {
        match value {
            Some(value) => {
                self.u8(1);
                self.u64(value);
            }
            None => self.u8(0),
        }
    }

    #[inline(always)]
    fn tagged_u64(&mut self, tag: u8, value: u64) {
        self.u8(tag);
        self.u64(value);
    }
}

/// Writes fields front to back into a caller's buffer.
pub(crate) struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Writer<'a> {
        Writer { out, at: 0 }
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.at
    }

    #[inline]
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

impl Sink for Writer<'_> {
    #[inline]
    fn u8(&mut self, value: u8) {
        self.out[self.at] = value;
        self.at += 1;
    }

    #[inline]
    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }

    #[inline]
    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    #[inline]
    fn bytes16(&mut self, value: &[u8; 16]) {
        self.bytes(value);
    }
}

/// Reads fields front to back, refusing anything that is not canonical. Offsets in errors are
/// `base` plus the position in `bytes`, so a value embedded in a larger layout reports where
/// it sits in that layout.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0, base: 0 }
    }

    /// A reader of `bytes` that sit at offset `base` of the enclosing layout.
    pub(crate) fn with_base(bytes: &'a [u8], base: usize) -> Reader<'a> {
        Reader { bytes, at: 0, base }
    }

    /// Offset of the next byte, in the enclosing layout.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.at
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(crate) fn take(
        &mut self,
        len: usize,
        field: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let truncated = DecodeError::Truncated { field, offset: self.offset() };
        // `at <= bytes.len()` always, so the sum cannot overflow for any slice length.
        let slice = self.bytes.get(self.at..self.at + len).ok_or(truncated)?;
        self.at += len;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N, field)?;
        let mut array = [0; N];
        array.copy_from_slice(slice);
        Ok(array)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let offset = self.offset();
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(DecodeError::BadFlag { field, byte, offset }),
        }
    }

    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        if self.flag(field)? { Ok(Some(self.u64(field)?)) } else { Ok(None) }
    }

    /// The error for `tag`, the byte just read, naming no variant of `what`.
    pub(crate) fn unknown(&self, what: &'static str, tag: u8) -> DecodeError {
        DecodeError::UnknownTag { what, tag, offset: self.offset() - 1 }
    }

    /// Refuses bytes after the value `what`.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { what, offset: self.offset(), count }),
        }
    }
}

/// Encodes `command` at the start of `out` and returns its length. `out` must hold at least
/// [`COMMAND_LEN_MAX`] bytes. Never allocates.
pub fn encode_command(command: &Command, out: &mut [u8]) -> usize {
    assert!(out.len() >= COMMAND_LEN_MAX, "command buffer of {} bytes is too small", out.len());
    let mut writer = Writer::new(out);
    write_command(&mut writer, command);
    assert!(writer.len() <= COMMAND_LEN_MAX);
    writer.len()
}

/// Decodes exactly one command from `bytes`, refusing anything that is not its canonical
/// encoding. Never panics.
pub fn decode_command(bytes: &[u8]) -> Result<Command, DecodeError> {
    let mut reader = Reader::new(bytes);
    let command = read_command(&mut reader)?;
    reader.finish("command")?;
    Ok(command)
}

/// Encodes `action` alone (as fingerprinted for idempotency) at the start of `out` and
/// returns its length. `out` must hold at least [`ACTION_LEN_MAX`] bytes. Never allocates.
pub fn encode_action(action: &Action, out: &mut [u8]) -> usize {
    assert!(out.len() >= ACTION_LEN_MAX, "action buffer of {} bytes is too small", out.len());
    let mut writer = Writer::new(out);
    write_action(&mut writer, action);
    assert!(writer.len() <= ACTION_LEN_MAX);
    writer.len()
}

/// Decodes exactly one action from `bytes`. Never panics.
pub fn decode_action(bytes: &[u8]) -> Result<Action, DecodeError> {
    let mut reader = Reader::new(bytes);
    let action = read_action(&mut reader)?;
    reader.finish("action")?;
    Ok(action)
}

/// Encodes `outcome` at the start of `out` and returns its length. `out` must hold at least
/// [`OUTCOME_LEN_MAX`] bytes. Never allocates.
#[inline]
pub fn encode_outcome(outcome: &Outcome, out: &mut [u8]) -> usize {
    assert!(out.len() >= OUTCOME_LEN_MAX, "outcome buffer of {} bytes is too small", out.len());
    let mut writer = Writer::new(out);
    write_outcome(&mut writer, outcome);
    assert!(writer.len() <= OUTCOME_LEN_MAX);
    writer.len()
}

/// Decodes exactly one outcome from `bytes`. Never panics.
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, DecodeError> {
    decode_outcome_at(bytes, 0)
}

/// [`decode_outcome`] of bytes that sit at offset `base` of a larger layout, so that errors
/// name the offset in that layout.
pub(crate) fn decode_outcome_at(bytes: &[u8], base: usize) -> Result<Outcome, DecodeError> {
    let mut reader = Reader::with_base(bytes, base);
    let outcome = read_outcome(&mut reader)?;
    reader.finish("outcome")?;
    Ok(outcome)
}

/// Encodes `event` at the start of `out` and returns its length. `out` must hold at least
/// [`EVENT_LEN_MAX`] bytes. Never allocates.
pub fn encode_event(event: &Event, out: &mut [u8]) -> usize {
    assert!(out.len() >= EVENT_LEN_MAX, "event buffer of {} bytes is too small", out.len());
    let mut writer = Writer::new(out);
    write_event(&mut writer, event);
    assert!(writer.len() <= EVENT_LEN_MAX);
    writer.len()
}

/// Decodes exactly one event from `bytes`. Never panics.
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader::new(bytes);
    let event = match r.u8("event tag")? {
        EVENT_ORDER_EXPIRED => Event::OrderExpired {
            order: OrderId(r.u64("order")?),
            user: UserId(r.u64("user")?),
            sku: SkuId(r.u64("sku")?),
            qty: r.u32("qty")?,
        },
        tag => return Err(r.unknown("event", tag)),
    };
    r.finish("event")?;
    Ok(event)
}

#[inline]
pub(crate) fn write_event<S: Sink>(w: &mut S, event: &Event) {
    match *event {
        Event::OrderExpired { order, user, sku, qty } => {
            w.tagged_u64(EVENT_ORDER_EXPIRED, order.0);
            w.u64(user.0);
            w.u64(sku.0);
            w.u32(qty);
        }
    }
}

fn write_command<S: Sink>(w: &mut S, command: &Command) {
    match command {
        Command::Tick => w.u8(COMMAND_TICK),
        Command::Query(Query::Sku(sku)) => w.tagged_u64(COMMAND_QUERY_SKU, sku.0),
        Command::Query(Query::Order(order)) => w.tagged_u64(COMMAND_QUERY_ORDER, order.0),
        Command::Query(Query::Coupon(coupon)) => w.tagged_u64(COMMAND_QUERY_COUPON, coupon.0),
        Command::Query(Query::Batch(batch)) => w.tagged_u64(COMMAND_QUERY_BATCH, batch.0),
        Command::Query(Query::SkuAt(position)) => {
            w.u8(COMMAND_QUERY_SKU_AT);
            w.u32(*position);
        }
        Command::Snapshot => w.u8(COMMAND_SNAPSHOT),
        Command::Client { key, action } => {
            w.u8(COMMAND_CLIENT);
            w.bytes16(&key.0);
            write_action(w, action);
        }
    }
}

fn read_command(r: &mut Reader<'_>) -> Result<Command, DecodeError> {
    Ok(match r.u8("command tag")? {
        COMMAND_TICK => Command::Tick,
        COMMAND_QUERY_SKU => Command::Query(Query::Sku(SkuId(r.u64("sku")?))),
        COMMAND_QUERY_ORDER => Command::Query(Query::Order(OrderId(r.u64("order")?))),
        COMMAND_QUERY_COUPON => Command::Query(Query::Coupon(CouponId(r.u64("coupon")?))),
        COMMAND_QUERY_BATCH => Command::Query(Query::Batch(BatchId(r.u64("batch")?))),
        COMMAND_QUERY_SKU_AT => Command::Query(Query::SkuAt(r.u32("position")?)),
        COMMAND_SNAPSHOT => Command::Snapshot,
        COMMAND_CLIENT => {
            let key = RequestKey(r.array("request key")?);
            Command::Client { key, action: read_action(r)? }
        }
        tag => return Err(r.unknown("command", tag)),
    })
}

#[inline(always)]
pub(crate) fn write_action<S: Sink>(w: &mut S, action: &Action) {
    match *action {
        Action::CreateSku(create) => {
            w.tagged_u64(0x01, create.sku.0);
            w.u32(create.stock);
            w.u64(create.price_cents);
            w.u32(create.per_user_limit);
            w.u64(create.payment_timeout_ms);
            w.opt_u64(create.sale_start.map(|t| t.0));
            w.opt_u64(create.sale_end.map(|t| t.0));
        }
        Action::Restock { sku, qty } => {
            w.tagged_u64(0x02, sku.0);
            w.u32(qty);
        }
        Action::OpenSale { sku } => w.tagged_u64(0x03, sku.0),
        Action::CloseSale { sku } => w.tagged_u64(0x04, sku.0),
        Action::Reserve(reserve) => {
            w.tagged_u64(0x05, reserve.user.0);
            w.u64(reserve.sku.0);
            w.u32(reserve.qty);
            w.opt_u64(reserve.coupon.map(|c| c.0));
        }
        Action::Pay { order, payment_ref, amount_cents } => {
            w.tagged_u64(0x06, order.0);
            w.bytes16(&payment_ref.0);
            w.u64(amount_cents);
        }
        Action::Cancel { order, user } => {
            w.tagged_u64(0x07, order.0);
            w.u64(user.0);
        }
        Action::AdminCancel { order } => w.tagged_u64(0x08, order.0),
        Action::Ship { order } => w.tagged_u64(0x09, order.0),
        Action::Complete { order, user } => {
            w.tagged_u64(0x0A, order.0);
            w.u64(user.0);
        }
        Action::Refund { order } => w.tagged_u64(0x0B, order.0),
        Action::CreateCouponBatch(create) => {
            w.tagged_u64(0x0C, create.batch.0);
            w.u32(create.quantity);
            w.u32(create.per_user_limit);
            w.u64(create.discount_cents);
            w.u64(create.min_amount_cents);
            w.u64(create.valid_from.0);
            w.u64(create.valid_until.0);
        }
        Action::ClaimCoupon { user, batch } => {
            w.tagged_u64(0x0D, user.0);
            w.u64(batch.0);
        }
    }
}

fn read_action(r: &mut Reader<'_>) -> Result<Action, DecodeError> {
    Ok(match r.u8("action tag")? {
        0x01 => Action::CreateSku(CreateSku {
            sku: SkuId(r.u64("sku")?),
            stock: r.u32("stock")?,
            price_cents: r.u64("price_cents")?,
            per_user_limit: r.u32("per_user_limit")?,
            payment_timeout_ms: r.u64("payment_timeout_ms")?,
            sale_start: r.opt_u64("sale_start")?.map(Timestamp),
            sale_end: r.opt_u64("sale_end")?.map(Timestamp),
        }),
        0x02 => Action::Restock { sku: SkuId(r.u64("sku")?), qty: r.u32("qty")? },
        0x03 => Action::OpenSale { sku: SkuId(r.u64("sku")?) },
        0x04 => Action::CloseSale { sku: SkuId(r.u64("sku")?) },
        0x05 => Action::Reserve(Reserve {
            user: UserId(r.u64("user")?),
            sku: SkuId(r.u64("sku")?),
            qty: r.u32("qty")?,
            coupon: r.opt_u64("coupon")?.map(CouponId),
        }),
        0x06 => Action::Pay {
            order: OrderId(r.u64("order")?),
            payment_ref: PaymentRef(r.array("payment_ref")?),
            amount_cents: r.u64("amount_cents")?,
        },
        0x07 => Action::Cancel { order: OrderId(r.u64("order")?), user: UserId(r.u64("user")?) },
        0x08 => Action::AdminCancel { order: OrderId(r.u64("order")?) },
        0x09 => Action::Ship { order: OrderId(r.u64("order")?) },
        0x0A => Action::Complete { order: OrderId(r.u64("order")?), user: UserId(r.u64("user")?) },
        0x0B => Action::Refund { order: OrderId(r.u64("order")?) },
        0x0C => Action::CreateCouponBatch(CreateCouponBatch {
            batch: BatchId(r.u64("batch")?),
            quantity: r.u32("quantity")?,
            per_user_limit: r.u32("per_user_limit")?,
            discount_cents: r.u64("discount_cents")?,
            min_amount_cents: r.u64("min_amount_cents")?,
            valid_from: Timestamp(r.u64("valid_from")?),
            valid_until: Timestamp(r.u64("valid_until")?),
        }),
        0x0D => {
            Action::ClaimCoupon { user: UserId(r.u64("user")?), batch: BatchId(r.u64("batch")?) }
        }
        tag => return Err(r.unknown("action", tag)),
    })
}

#[inline(always)]
pub(crate) fn write_outcome<S: Sink>(w: &mut S, outcome: &Outcome) {
    match *outcome {
        Outcome::Ticked { now } => w.tagged_u64(0x01, now.0),
        Outcome::SkuCreated(view) => write_sku_view(w, 0x02, &view),
        Outcome::Restocked(view) => write_sku_view(w, 0x03, &view),
        Outcome::SaleChanged(view) => write_sku_view(w, 0x04, &view),
        Outcome::Reserved { order, expires_at, amount_cents } => {
            w.tagged_u64(0x05, order.0);
            w.u64(expires_at.0);
            w.u64(amount_cents);
        }
        Outcome::Paid { order } => w.tagged_u64(0x06, order.0),
        Outcome::Cancelled { order } => w.tagged_u64(0x07, order.0),
        Outcome::Shipped { order } => w.tagged_u64(0x08, order.0),
        Outcome::Completed { order } => w.tagged_u64(0x09, order.0),
        Outcome::Refunded { order } => w.tagged_u64(0x0A, order.0),
        Outcome::BatchCreated(view) => write_batch_view(w, 0x0B, &view),
        Outcome::CouponClaimed { coupon, batch, valid_until } => {
            w.tagged_u64(0x0C, coupon.0);
            w.u64(batch.0);
            w.u64(valid_until.0);
        }
        Outcome::Sku(view) => write_sku_view(w, 0x0D, &view),
        Outcome::Order(view) => write_order_view(w, &view),
        Outcome::Coupon(view) => write_coupon_view(w, &view),
        Outcome::Batch(view) => write_batch_view(w, 0x10, &view),
        Outcome::SnapshotRequested { last_sequence, running_hash } => {
            w.tagged_u64(0x11, last_sequence.0);
            w.u64(running_hash);
        }
        Outcome::Rejected(rejection) => {
            w.u8(OUTCOME_REJECTED);
            write_rejection(w, rejection);
        }
    }
}

fn read_outcome(r: &mut Reader<'_>) -> Result<Outcome, DecodeError> {
    Ok(match r.u8("outcome tag")? {
        0x01 => Outcome::Ticked { now: Timestamp(r.u64("now")?) },
        0x02 => Outcome::SkuCreated(read_sku_view(r)?),
        0x03 => Outcome::Restocked(read_sku_view(r)?),
        0x04 => Outcome::SaleChanged(read_sku_view(r)?),
        0x05 => Outcome::Reserved {
            order: OrderId(r.u64("order")?),
            expires_at: Timestamp(r.u64("expires_at")?),
            amount_cents: r.u64("amount_cents")?,
        },
        0x06 => Outcome::Paid { order: OrderId(r.u64("order")?) },
        0x07 => Outcome::Cancelled { order: OrderId(r.u64("order")?) },
        0x08 => Outcome::Shipped { order: OrderId(r.u64("order")?) },
        0x09 => Outcome::Completed { order: OrderId(r.u64("order")?) },
        0x0A => Outcome::Refunded { order: OrderId(r.u64("order")?) },
        0x0B => Outcome::BatchCreated(read_batch_view(r)?),
        0x0C => Outcome::CouponClaimed {
            coupon: CouponId(r.u64("coupon")?),
            batch: BatchId(r.u64("batch")?),
            valid_until: Timestamp(r.u64("valid_until")?),
        },
        0x0D => Outcome::Sku(read_sku_view(r)?),
        0x0E => Outcome::Order(read_order_view(r)?),
        0x0F => Outcome::Coupon(read_coupon_view(r)?),
        0x10 => Outcome::Batch(read_batch_view(r)?),
        0x11 => Outcome::SnapshotRequested {
            last_sequence: Sequence(r.u64("last_sequence")?),
            running_hash: r.u64("running_hash")?,
        },
        OUTCOME_REJECTED => Outcome::Rejected(read_rejection(r)?),
        tag => return Err(r.unknown("outcome", tag)),
    })
}

#[inline(always)]
fn write_rejection<S: Sink>(w: &mut S, rejection: Rejection) {
    match rejection {
        Rejection::InvalidState { current } => {
            w.u8(0x12);
            w.u8(order_state_byte(current));
        }
        Rejection::WrongAmount { expected_cents } => w.tagged_u64(0x13, expected_cents),
        _ => w.u8(rejection_code(rejection)),
    }
}

/// `Outcome::Rejected(rejection)` for a refusal that carries no field (any but `InvalidState`
/// and `WrongAmount`): two bytes whatever the refusal, so a hash of them folds into
/// straight-line arithmetic (`hash::fold_outcome`).
#[inline(always)]
pub(crate) fn write_fieldless_rejected<S: Sink>(w: &mut S, rejection: Rejection) {
    let fields =
        matches!(rejection, Rejection::InvalidState { .. } | Rejection::WrongAmount { .. });
    debug_assert!(!fields, "{rejection:?} carries a field");
    w.u8(OUTCOME_REJECTED);
    w.u8(rejection_code(rejection));
}

/// The one-byte code of a refusal. `InvalidState` and `WrongAmount` carry a field after theirs
/// (`write_rejection` writes both).
#[inline(always)]
fn rejection_code(rejection: Rejection) -> u8 {
    match rejection {
        Rejection::SoldOut => 0x01,
        Rejection::LimitExceeded => 0x02,
        Rejection::SaleNotOpen => 0x03,
        Rejection::SaleClosed => 0x04,
        Rejection::UnknownSku => 0x05,
        Rejection::UnknownOrder => 0x06,
        Rejection::UnknownCoupon => 0x07,
        Rejection::UnknownBatch => 0x08,
        Rejection::InvalidQty => 0x09,
        Rejection::CouponInvalid => 0x0A,
        Rejection::CapacityExhausted => 0x0B,
        Rejection::SkuExists => 0x0C,
        Rejection::BatchExists => 0x0D,
        Rejection::InvalidArgument => 0x0E,
        Rejection::PaymentConflict => 0x0F,
        Rejection::NotOwner => 0x10,
        Rejection::RequestKeyReused => 0x11,
        Rejection::InvalidState { .. } => 0x12,
        Rejection::WrongAmount { .. } => 0x13,
    }
}

fn read_rejection(r: &mut Reader<'_>) -> Result<Rejection, DecodeError> {
    Ok(match r.u8("rejection tag")? {
        0x01 => Rejection::SoldOut,
        0x02 => Rejection::LimitExceeded,
        0x03 => Rejection::SaleNotOpen,
        0x04 => Rejection::SaleClosed,
        0x05 => Rejection::UnknownSku,
        0x06 => Rejection::UnknownOrder,
        0x07 => Rejection::UnknownCoupon,
        0x08 => Rejection::UnknownBatch,
        0x09 => Rejection::InvalidQty,
        0x0A => Rejection::CouponInvalid,
        0x0B => Rejection::CapacityExhausted,
        0x0C => Rejection::SkuExists,
        0x0D => Rejection::BatchExists,
        0x0E => Rejection::InvalidArgument,
        0x0F => Rejection::PaymentConflict,
        0x10 => Rejection::NotOwner,
        0x11 => Rejection::RequestKeyReused,
        0x12 => Rejection::InvalidState { current: read_order_state(r)? },
        0x13 => Rejection::WrongAmount { expected_cents: r.u64("expected_cents")? },
        tag => return Err(r.unknown("rejection", tag)),
    })
}

/// An order state's byte: its place in [`OrderState::ALL`] (lifecycle order).
pub(crate) fn order_state_byte(state: OrderState) -> u8 {
    match state {
        OrderState::Reserved => 0,
        OrderState::Paid => 1,
        OrderState::Shipped => 2,
        OrderState::Completed => 3,
        OrderState::Cancelled => 4,
        OrderState::Expired => 5,
        OrderState::Refunded => 6,
    }
}

pub(crate) fn read_order_state(r: &mut Reader<'_>) -> Result<OrderState, DecodeError> {
    let tag = r.u8("order state")?;
    OrderState::ALL.get(usize::from(tag)).copied().ok_or_else(|| r.unknown("order state", tag))
}

/// A coupon state's tag and the order it names (zero when it names none).
pub(crate) fn coupon_state_parts(state: CouponState) -> (u8, Option<OrderId>) {
    match state {
        CouponState::Available => (0, None),
        CouponState::Locked(order) => (1, Some(order)),
        CouponState::Used(order) => (2, Some(order)),
        CouponState::Expired => (3, None),
    }
}

/// Reads a coupon state's tag; `order` reads the order of a tag that names one.
pub(crate) fn read_coupon_state(
    r: &mut Reader<'_>,
    order: impl FnOnce(&mut Reader<'_>) -> Result<OrderId, DecodeError>,
) -> Result<CouponState, DecodeError> {
    Ok(match r.u8("coupon state")? {
        0 => CouponState::Available,
        1 => CouponState::Locked(order(r)?),
        2 => CouponState::Used(order(r)?),
        3 => CouponState::Expired,
        tag => return Err(r.unknown("coupon state", tag)),
    })
}

fn write_sku_view<S: Sink>(w: &mut S, tag: u8, view: &SkuView) {
    w.tagged_u64(tag, view.sku.0);
    for value in [view.stock, view.available, view.reserved, view.sold, view.price_cents] {
        w.u64(value);
    }
    w.u32(view.per_user_limit);
    w.flag(view.open);
    w.u64(view.payment_timeout_ms);
    w.opt_u64(view.sale_start.map(|t| t.0));
    w.opt_u64(view.sale_end.map(|t| t.0));
}

fn read_sku_view(r: &mut Reader<'_>) -> Result<SkuView, DecodeError> {
    Ok(SkuView {
        sku: SkuId(r.u64("sku")?),
        stock: r.u64("stock")?,
        available: r.u64("available")?,
        reserved: r.u64("reserved")?,
        sold: r.u64("sold")?,
        price_cents: r.u64("price_cents")?,
        per_user_limit: r.u32("per_user_limit")?,
        open: r.flag("open")?,
        payment_timeout_ms: r.u64("payment_timeout_ms")?,
        sale_start: r.opt_u64("sale_start")?.map(Timestamp),
        sale_end: r.opt_u64("sale_end")?.map(Timestamp),
    })
}

fn write_batch_view<S: Sink>(w: &mut S, tag: u8, view: &BatchView) {
    w.tagged_u64(tag, view.batch.0);
    w.u32(view.quantity);
    w.u32(view.remaining);
    w.u32(view.per_user_limit);
    w.u64(view.discount_cents);
    w.u64(view.min_amount_cents);
    w.u64(view.valid_from.0);
    w.u64(view.valid_until.0);
}

fn read_batch_view(r: &mut Reader<'_>) -> Result<BatchView, DecodeError> {
    Ok(BatchView {
        batch: BatchId(r.u64("batch")?),
        quantity: r.u32("quantity")?,
        remaining: r.u32("remaining")?,
        per_user_limit: r.u32("per_user_limit")?,
        discount_cents: r.u64("discount_cents")?,
        min_amount_cents: r.u64("min_amount_cents")?,
        valid_from: Timestamp(r.u64("valid_from")?),
        valid_until: Timestamp(r.u64("valid_until")?),
    })
}

fn write_order_view<S: Sink>(w: &mut S, view: &OrderView) {
    w.tagged_u64(0x0E, view.order.0);
    w.u64(view.user.0);
    w.u64(view.sku.0);
    w.u32(view.qty);
    w.u64(view.amount_cents);
    w.u8(order_state_byte(view.state));
    w.u64(view.created_at.0);
    w.u64(view.expires_at.0);
    w.opt_u64(view.coupon.map(|c| c.0));
    match view.payment_ref {
        Some(reference) => {
            w.u8(1);
            w.bytes16(&reference.0);
        }
        None => w.u8(0),
    }
}

fn read_order_view(r: &mut Reader<'_>) -> Result<OrderView, DecodeError> {
    Ok(OrderView {
        order: OrderId(r.u64("order")?),
        user: UserId(r.u64("user")?),
        sku: SkuId(r.u64("sku")?),
        qty: r.u32("qty")?,
        amount_cents: r.u64("amount_cents")?,
        state: read_order_state(r)?,
        created_at: Timestamp(r.u64("created_at")?),
        expires_at: Timestamp(r.u64("expires_at")?),
        coupon: r.opt_u64("coupon")?.map(CouponId),
        payment_ref: if r.flag("payment_ref")? {
            Some(PaymentRef(r.array("payment_ref")?))
        } else {
            None
        },
    })
}

fn write_coupon_view<S: Sink>(w: &mut S, view: &CouponView) {
    w.tagged_u64(0x0F, view.coupon.0);
    w.u64(view.batch.0);
    w.u64(view.user.0);
    let (tag, order) = coupon_state_parts(view.state);
    w.u8(tag);
    if let Some(order) = order {
        w.u64(order.0);
    }
    w.u64(view.discount_cents);
    w.u64(view.valid_until.0);
}

fn read_coupon_view(r: &mut Reader<'_>) -> Result<CouponView, DecodeError> {
    Ok(CouponView {
        coupon: CouponId(r.u64("coupon")?),
        batch: BatchId(r.u64("batch")?),
        user: UserId(r.u64("user")?),
        state: read_coupon_state(r, |r| Ok(OrderId(r.u64("coupon order")?)))?,
        discount_cents: r.u64("discount_cents")?,
        valid_until: Timestamp(r.u64("valid_until")?),
    })
}

#[cfg(test)]
mod tests;
