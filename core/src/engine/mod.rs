//! The business-logic processor (BLP): all sale state, changed one command at a time.
//!
//! [`Engine::apply`] is the single entry point. It is synchronous, allocation-free after start,
//! reads no clock and cannot fail: every refusal is an [`Outcome::Rejected`]. Time is the
//! latest command timestamp (never moving backwards); deadlines fire, oldest first, when a
//! command moves it past them. The same commands in the same order give the same outcomes and
//! the same state hash on any node and at any replay.

mod catalog;
mod deadlines;
mod image;
mod layout;
mod lookahead;
mod orders;
mod remembered;
mod table;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::num::NonZeroU64;

use deadlines::{Deadline, DeadlineQueue};
use remembered::{KeyEntry, RememberedKey, Stored};
use table::{FixedMap, Located};

use crate::command::{Action, Command, Query, Sequenced};
use crate::config::{CAPACITY_MAX, EngineConfig};
use crate::hash;
use crate::outcome::{CouponState, OrderState, Outcome, Rejection};
use crate::snowflake::Snowflake;
use crate::types::{
    BatchId, CouponId, OrderId, PaymentRef, RequestKey, Sequence, SkuId, Timestamp, UserId,
};

pub use image::{EngineImage, RestoreError};
pub use layout::{IMAGE_FORMAT_VERSION, ImageDecodeError};
pub use lookahead::Lookahead;

/// Something that happened without a command asking for it, reported to an observer and
/// folded into the running hash (canonical encoding in [`crate::codec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A reserved order's payment deadline passed; its units went back to available.
    OrderExpired {
        /// The order.
        order: OrderId,
        /// Its buyer.
        user: UserId,
        /// Its SKU.
        sku: SkuId,
        /// Units returned.
        qty: u32,
    },
}

/// A point-in-time summary of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStatus {
    /// Sequence of the last mutating command applied.
    pub last_sequence: Sequence,
    /// Logical time.
    pub now: Timestamp,
    /// Running hash folded over every mutating command's outcome and every expiry.
    pub running_hash: u64,
    /// SKUs defined.
    pub skus: u32,
    /// Orders kept (live and recently finished).
    pub orders: u32,
    /// Orders waiting for payment.
    pub orders_reserved: u32,
    /// Orders that keep their slot: reserved, paid or shipped. A new order takes a free slot
    /// or the oldest finished order's; with every slot live it is refused
    /// `capacity_exhausted`.
    pub orders_live: u32,
    /// Coupon batches defined.
    pub batches: u32,
    /// Coupons claimed.
    pub coupons: u32,
    /// (user, SKU) pairs holding units under a per-user limit.
    pub holdings: u32,
    /// Request keys remembered.
    pub request_keys: u32,
}

/// What an engine's tables take, in bytes ([`Engine::memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineMemory {
    /// Everything the tables allocate at start, all of it written then too, so that no
    /// command faults a page in later; the engine allocates nothing more.
    pub allocated_bytes: u64,
    /// The part that is index tables; the rest holds the entries (SKUs, orders, request keys,
    /// deadlines, batches and coupons).
    pub index_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sku {
    id: SkuId,
    stock: u64,
    available: u64,
    reserved: u64,
    sold: u64,
    price_cents: u64,
    per_user_limit: u32,
    open: bool,
    payment_timeout_ms: u64,
    sale_start: Option<Timestamp>,
    sale_end: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Order {
    id: OrderId,
    user: UserId,
    sku_slot: u32,
    qty: u32,
    amount_cents: u64,
    state: OrderState,
    created_at: Timestamp,
    expires_at: Timestamp,
    /// Slot of the coupon applied, if any.
    coupon_slot: Option<u32>,
    payment_ref: Option<PaymentRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    id: BatchId,
    quantity: u32,
    remaining: u32,
    per_user_limit: u32,
    discount_cents: u64,
    min_amount_cents: u64,
    valid_from: Timestamp,
    valid_until: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Coupon {
    id: CouponId,
    batch_slot: u32,
    user: UserId,
    /// Stored state; `Available` reads as `Expired` once the batch's validity has ended.
    state: CouponState,
}

/// The outcome of a command that ran or was refused. Applied in each arm of
/// `Engine::execute`, where the variant is known, rather than once after the arms join: at the
/// join, the refusal's payload was copied out of the result before its tag was tested, and
/// that load straddled the stores that had just written the result, a stall on every command.
#[inline(always)]
fn answer(result: Result<Outcome, Rejection>) -> Outcome {
    match result {
        Ok(outcome) => {
            // A refusal is only ever an `Err`: a command that ran answers with what it did.
            debug_assert!(!outcome.is_rejected(), "a command ran and answered with a refusal");
            outcome
        }
        Err(rejection) => Outcome::Rejected(rejection),
    }
}

/// Appends a remembered key to the queue, written in place, and warms the lines the next few
/// will fill. Out of line and small, so that the queue's push is inlined here: inlined into
/// `apply_keyed`, which is large, the push stayed a call that copied the entry through the
/// stack.
#[inline(never)]
fn remember_key(
    keys: &mut VecDeque<KeyEntry>,
    (user, key): (UserId, RequestKey),
    expires_at: Timestamp,
    fingerprint: u64,
    outcome: &Outcome,
) {
    // The queue was made with room for every key it may hold: the push never allocates.
    debug_assert!(keys.len() < keys.capacity(), "a key pushed to a full queue");
    let outcome = Stored::of(outcome).expect("a keyed command answers as a command does");
    keys.push_back(KeyEntry { user, key, expires_at, fingerprint, outcome });
    table::warm(keys.back().expect("just pushed"), table::WARM_AHEAD_BYTES);
}

/// What one user holds of the shared tables, counted for the per-user quotas that are on (a
/// count whose quota is off stays zero): request keys remembered for commands naming them, and
/// live orders (reserved, paid or shipped). A user holding neither has no entry. Derived from
/// the keys and the orders: not part of a snapshot, rebuilt when one is restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Share {
    keys: u32,
    orders: u32,
}

/// The share table's key for `user`: never user 0 (commands naming nobody are not counted, and
/// no order is user 0's), so its slots need no room for an empty tag: 16 bytes, not 24.
fn sharer(user: UserId) -> NonZeroU64 {
    NonZeroU64::new(user.0).expect("user 0 has no share")
}

const _: () = assert!(std::mem::size_of::<Option<(NonZeroU64, Share)>>() == 16);

/// A remembered request key's position in the key queue (counted from the first key ever
/// remembered), stored plus one so that the index's slots need no room for an empty tag:
/// 32 bytes, two to a cache line, where a 40-byte slot would straddle two lines three times in
/// eight and a hint would warm only part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyPosition(NonZeroU64);

impl KeyPosition {
    fn new(position: u64) -> KeyPosition {
        let stored = KeyPosition(NonZeroU64::new(position + 1).expect("fewer than 2^64 - 1 keys"));
        debug_assert_eq!(stored.get(), position, "a key position that does not round-trip");
        stored
    }

    fn get(self) -> u64 {
        self.0.get() - 1
    }
}

const _: () = assert!(std::mem::size_of::<Option<((UserId, RequestKey), KeyPosition)>>() == 32);

/// The business-logic processor. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    now: Timestamp,
    last_sequence: Sequence,
    running_hash: u64,
    ids: Snowflake,
    skus: Vec<Sku>,
    sku_index: FixedMap<SkuId, u32>,
    /// Order slots; grows to `orders_max`, then reuses the oldest finished order's slot.
    orders: Vec<Order>,
    order_index: FixedMap<OrderId, u32>,
    /// Slots of finished orders, oldest first.
    finished: VecDeque<u32>,
    /// Payment deadlines, (when, which order, its slot). Those whose order has moved on are
    /// skipped when they come up, and swept out when the queue fills.
    deadlines: DeadlineQueue,
    orders_reserved: u32,
    /// Units held per (user, SKU) for SKUs with a per-user limit; absent means zero.
    holdings: FixedMap<(UserId, SkuId), u32>,
    batches: Vec<Batch>,
    batch_index: FixedMap<BatchId, u32>,
    coupons: Vec<Coupon>,
    coupon_index: FixedMap<CouponId, u32>,
    /// Coupons claimed per (user, batch).
    claims: FixedMap<(UserId, BatchId), u32>,
    /// Remembered request keys in arrival (and so expiry) order.
    keys: VecDeque<KeyEntry>,
    /// Absolute position of `keys.front()`; the index maps a key to its absolute position.
    keys_head: u64,
    key_index: FixedMap<(UserId, RequestKey), KeyPosition>,
    /// Each user's share of the key and order tables, for the per-user quotas; one lookup per
    /// command serves both. Sized by [`shares_max`], so it is never the table that is full.
    shares: FixedMap<NonZeroU64, Share>,
    /// Whether every client command was hinted with [`Engine::prefetch`] before it is applied
    /// (see [`Engine::set_hinted_ahead`]); if not, `apply` loads its own slots first. Not
    /// state: it never changes an outcome, a hash or a snapshot.
    hinted_ahead: bool,
    /// The entries the last [`HINT_RING`] hinted client commands will read through an index
    /// (see [`Engine::prefetch`]), the oldest at `entry_hints_made` modulo the ring's length.
    /// Hints only, like `hinted_ahead`: never state.
    entry_hints: [EntryHint; HINT_RING],
    entry_hints_made: u64,
    /// How many of `entry_hints` are not [`EntryHint::None`].
    entry_hints_live: u8,
    /// The SKU the last hinted reservation names, and the SKUs hinted lately, one per
    /// [`hinted_sku_slot`]: a sale's reservations mostly name one SKU or a few, whose entries
    /// stay in cache, and a SKU found here is not hinted again. Hints only, like the others.
    last_sku: SkuId,
    hinted_skus: [SkuId; HINTED_SKUS],
}

/// How many hinted commands after its own hint a command's entries are hinted: the second
/// step of [`Engine::prefetch`]. The pipeline applies a command eight hints after its first
/// step, so its index slots have four commands' time to arrive, and its entries four more.
const ENTRY_HINT_DELAY: usize = 4;
/// How many hinted commands after its own hint the SKU of the order a command names is
/// hinted: the third step, once the order's entry has arrived. The SKU table is small and
/// mostly in the outer caches, so one command's time is enough.
const ORDER_SKU_HINT_DELAY: usize = 7;
/// The hints kept: enough for the third step.
const HINT_RING: usize = 8;
// A power of two, so the ring's position is a mask, and long enough for every step.
const _: () = assert!(HINT_RING.is_power_of_two());
const _: () = assert!(ENTRY_HINT_DELAY < ORDER_SKU_HINT_DELAY && ORDER_SKU_HINT_DELAY < HINT_RING);

/// How many SKUs the hints remember as hinted lately: a flash sale of up to this many SKUs
/// hints each SKU's entry once, however its reservations interleave.
const HINTED_SKUS: usize = 16;
const _: () = assert!(HINTED_SKUS.is_power_of_two());

/// Where [`Engine::prefetch`] remembers `sku` as hinted: its id's top bits after one
/// multiplication by the index tables' spreading constant, so that ids in any stride spread
/// over the slots.
fn hinted_sku_slot(sku: SkuId) -> usize {
    let slot = table::top(sku.0.wrapping_mul(table::SPREAD), 64 - HINTED_SKUS.trailing_zeros());
    debug_assert!(slot < HINTED_SKUS);
    slot
}

/// An entry a command reads through an index: the second step of its hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryHint {
    None,
    /// The order a payment, cancellation, shipment, completion or refund names.
    Order(OrderId),
    /// The coupon a reservation applies.
    Coupon(CouponId),
    /// The SKU a reservation without a coupon names, when it was not hinted lately.
    Sku(SkuId),
}

// Two words, so that it is returned and passed in registers: at three (a SKU and a coupon
// together), the hint went through memory between `hint_index_slots` and its callers, a
// 16-byte load over two 8-byte stores, and a stall on every reservation of a sale of a few SKUs.
const _: () = assert!(size_of::<EntryHint>() <= 16);

/// Entries the share table may need: one per user with a counted request key or a live order,
/// so at most every key plus every kept order. One slot when no quota is on.
fn shares_max(config: &EngineConfig) -> u32 {
    let keys = if config.request_keys_per_user_max > 0 { config.request_keys_max } else { 0 };
    let orders = if config.orders_per_user_max > 0 { config.orders_max } else { 0 };
    // Each capacity is at most `CAPACITY_MAX` (2^30), so the sum fits.
    assert!(keys <= CAPACITY_MAX && orders <= CAPACITY_MAX, "capacities are validated");
    (keys + orders).max(1)
}

/// A hash map for at most `max` entries, allocated and written in full now, so it never
/// allocates or faults in a page later.
fn fixed_map<K: table::TableKey, V: Copy>(max: u32) -> FixedMap<K, V> {
    FixedMap::with_max(max)
}

impl Engine {
    /// An empty engine with every table allocated. Panics on an invalid configuration: check it
    /// with [`EngineConfig::validate`] first.
    #[must_use]
    pub fn new(config: EngineConfig) -> Engine {
        if let Err(error) = config.validate() {
            panic!("invalid engine configuration: {error}");
        }
        let orders_max = config.orders_max as usize;
        let engine = Engine {
            now: Timestamp(0),
            last_sequence: Sequence(0),
            running_hash: 0,
            ids: Snowflake::new(config.shard),
            skus: table::written_vec(config.skus_max as usize),
            sku_index: fixed_map(config.skus_max),
            orders: table::written_vec(orders_max),
            order_index: fixed_map(config.orders_max),
            finished: VecDeque::from(table::written_vec(orders_max)),
            deadlines: DeadlineQueue::with_capacity(2 * orders_max, config.skus_max),
            orders_reserved: 0,
            holdings: fixed_map(config.holdings_max),
            batches: table::written_vec(config.batches_max as usize),
            batch_index: fixed_map(config.batches_max),
            coupons: table::written_vec(config.coupons_max as usize),
            coupon_index: fixed_map(config.coupons_max),
            claims: fixed_map(config.coupons_max),
            keys: VecDeque::from(table::written_vec(config.request_keys_max as usize)),
            keys_head: 0,
            key_index: fixed_map(config.request_keys_max),
            shares: fixed_map(shares_max(&config)),
            hinted_ahead: false,
            entry_hints: [EntryHint::None; HINT_RING],
            entry_hints_made: 0,
            entry_hints_live: 0,
            last_sku: SkuId(0),
            hinted_skus: [SkuId(0); HINTED_SKUS],
            config,
        };
        // `push_deadline` sweeps when the queue is full; a sweep leaves at most `orders_max`
        // live deadlines, so the queue must hold more than that or the next push would grow it.
        assert!(engine.deadlines.capacity() > orders_max, "the deadline queue outgrows a sweep");
        assert!(engine.keys.capacity() >= engine.config.request_keys_max as usize);
        assert!(engine.finished.capacity() >= orders_max, "the finished queue is preallocated");
        engine
    }

    /// The memory an engine with `config` allocates and writes at start, computed from the
    /// capacities without allocating it.
    #[must_use]
    pub fn memory(config: &EngineConfig) -> EngineMemory {
        use std::mem::size_of;
        let indexes = [
            FixedMap::<SkuId, u32>::bytes_for(config.skus_max),
            FixedMap::<OrderId, u32>::bytes_for(config.orders_max),
            FixedMap::<(UserId, SkuId), u32>::bytes_for(config.holdings_max),
            FixedMap::<BatchId, u32>::bytes_for(config.batches_max),
            FixedMap::<CouponId, u32>::bytes_for(config.coupons_max),
            FixedMap::<(UserId, BatchId), u32>::bytes_for(config.coupons_max),
            FixedMap::<(UserId, RequestKey), KeyPosition>::bytes_for(config.request_keys_max),
            FixedMap::<NonZeroU64, Share>::bytes_for(shares_max(config)),
        ];
        let orders = config.orders_max as usize;
        let storage = [
            size_of::<Sku>() * config.skus_max as usize,
            size_of::<Order>() * orders,
            size_of::<u32>() * orders,
            DeadlineQueue::bytes_for(2 * orders, config.skus_max),
            size_of::<Batch>() * config.batches_max as usize,
            size_of::<Coupon>() * config.coupons_max as usize,
            size_of::<KeyEntry>() * config.request_keys_max as usize,
        ];
        let index_bytes: usize = indexes.iter().sum();
        let allocated = index_bytes + storage.iter().sum::<usize>();
        // Every table has room for at least one entry (`validate`), so every index has slots.
        assert!(indexes.iter().all(|&bytes| bytes > 0), "an index of no slots");
        assert!(index_bytes < allocated, "entries take room too");
        EngineMemory { allocated_bytes: allocated as u64, index_bytes: index_bytes as u64 }
    }

    /// The configuration the engine was started with.
    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Applies one sequenced command and returns its outcome.
    ///
    /// Panics if `sequence` is not above the last applied one (sequences start at 1): the
    /// sequencer guarantees order, so anything else is a bug upstream.
    pub fn apply(&mut self, sequenced: &Sequenced) -> Outcome {
        self.apply_observed(sequenced, &mut |_| {})
    }

    /// [`Engine::apply`], reporting expiries that the command's time advance caused.
    pub fn apply_observed(
        &mut self,
        sequenced: &Sequenced,
        events: &mut dyn FnMut(Event),
    ) -> Outcome {
        self.apply_inner(sequenced, events, &mut false)
    }

    /// [`Engine::apply_observed`], also saying whether the command was a repeat: a keyed
    /// command whose request key (and user) came before, within the key window, for the same
    /// command. A repeat is answered with the outcome first given and changes nothing; an
    /// export marks it, so that a loader applying outcomes skips it.
    pub fn apply_telling_repeats(
        &mut self,
        sequenced: &Sequenced,
        events: &mut dyn FnMut(Event),
    ) -> (Outcome, bool) {
        let mut repeat = false;
        let outcome = self.apply_inner(sequenced, events, &mut repeat);
        assert!(
            !repeat || matches!(sequenced.command, Command::Client { .. }),
            "only a keyed command repeats"
        );
        (outcome, repeat)
    }

    #[inline]
    fn apply_inner(
        &mut self,
        sequenced: &Sequenced,
        events: &mut dyn FnMut(Event),
        repeat: &mut bool,
    ) -> Outcome {
        debug_assert!(!*repeat, "a command is told a repeat only by the key table");
        assert!(
            sequenced.sequence > self.last_sequence,
            "sequence {} applied after {}: sequences start at 1 and strictly increase",
            sequenced.sequence,
            self.last_sequence
        );
        let outcome = match &sequenced.command {
            Command::Query(query) => return self.query(query),
            Command::Snapshot => {
                return Outcome::SnapshotRequested {
                    last_sequence: self.last_sequence,
                    running_hash: self.running_hash,
                };
            }
            Command::Tick => {
                self.advance_time(sequenced.timestamp, events);
                Outcome::Ticked { now: self.now }
            }
            Command::Client { key, action } => {
                if !self.hinted_ahead {
                    // The index slots it will probe start loading now, together, rather than
                    // one cache miss after another as the probes reach them.
                    self.hint_index_slots(*key, action);
                }
                self.advance_time(sequenced.timestamp, events);
                self.apply_keyed(*key, action, repeat)
            }
        };
        self.last_sequence = sequenced.sequence;
        self.fold_outcome(sequenced.sequence, &outcome);
        // Postconditions of every mutating command, cheap enough for each one. The order
        // counts are guarded in release builds where they change (an underflow check before
        // every decrement); here only in debug builds.
        assert!(self.now >= sequenced.timestamp, "a command leaves now at or past its stamp");
        debug_assert!(self.orders_reserved as usize <= self.orders.len(), "reserved, not kept");
        debug_assert!(self.finished.len() <= self.orders.len(), "finished orders are kept");
        assert_eq!(self.key_index.len(), self.keys.len(), "every remembered key is indexed");
        assert_eq!(self.order_index.len(), self.orders.len(), "every kept order is indexed");
        outcome
    }

    /// Answers a read from current state. Changes nothing.
    #[must_use]
    pub fn query(&self, query: &Query) -> Outcome {
        // Each answer describes the id asked about: the index led to the right slot.
        let answer = match *query {
            Query::Sku(sku) => self.sku_slot(sku).map(|slot| {
                let view = self.sku_view(slot);
                assert_eq!(view.sku, sku, "the SKU index answered another SKU");
                Outcome::Sku(view)
            }),
            Query::Order(order) => self.order_slot(order).map(|slot| {
                let view = self.order_view(slot);
                assert_eq!(view.order, order, "the order index answered another order");
                Outcome::Order(view)
            }),
            Query::Coupon(coupon) => self.coupon_slot(coupon).map(|slot| {
                let view = self.coupon_view(slot);
                assert_eq!(view.coupon, coupon, "the coupon index answered another coupon");
                Outcome::Coupon(view)
            }),
            Query::Batch(batch) => self.batch_slot(batch).map(|slot| {
                let view = self.batch_view(slot);
                assert_eq!(view.batch, batch, "the batch index answered another batch");
                Outcome::Batch(view)
            }),
            Query::SkuAt(position) if (position as usize) < self.skus.len() => {
                Ok(Outcome::Sku(self.sku_view(position)))
            }
            Query::SkuAt(_) => Err(Rejection::UnknownSku),
        };
        answer.unwrap_or_else(Outcome::Rejected)
    }

    /// A summary: last sequence, logical time, running hash and table sizes.
    #[must_use]
    pub fn status(&self) -> EngineStatus {
        // Every table within the capacity it was allocated with.
        assert!(self.skus.len() <= self.config.skus_max as usize);
        assert!(self.orders.len() <= self.config.orders_max as usize);
        assert!(self.batches.len() <= self.config.batches_max as usize);
        assert!(self.coupons.len() <= self.config.coupons_max as usize);
        assert!(self.holdings.len() <= self.config.holdings_max as usize);
        assert!(self.keys.len() <= self.config.request_keys_max as usize);
        // Checked per command in debug builds only (the hot path); here in release builds too.
        assert!(self.orders_reserved as usize <= self.orders.len(), "reserved, not kept");
        assert!(self.finished.len() <= self.orders.len(), "finished orders are kept");
        EngineStatus {
            last_sequence: self.last_sequence,
            now: self.now,
            running_hash: self.running_hash,
            skus: self.skus.len() as u32,
            orders: self.orders.len() as u32,
            orders_reserved: self.orders_reserved,
            orders_live: (self.orders.len() - self.finished.len()) as u32,
            batches: self.batches.len() as u32,
            coupons: self.coupons.len() as u32,
            holdings: self.holdings.len() as u32,
            request_keys: self.keys.len() as u32,
        }
    }

    /// How many kept orders are in each state, in life order: reserved, paid, shipped,
    /// completed, cancelled, expired, refunded. Reads the whole order table, O(orders), so it is
    /// for tools and never for the processor's path. Once the table is full, each new order
    /// takes the slot of the oldest finished one, which is forgotten and no longer counted.
    #[must_use]
    pub fn order_counts(&self) -> [(OrderState, u32); 7] {
        let mut counts = OrderState::ALL.map(|state| (state, 0_u32));
        for order in &self.orders {
            // `ALL` follows the declaration order, so a state's discriminant is its index.
            let entry = &mut counts[order.state as usize];
            assert_eq!(entry.0, order.state);
            entry.1 += 1;
        }
        let total: u32 = counts.iter().map(|&(_, count)| count).sum();
        assert_eq!(total as usize, self.orders.len());
        assert_eq!(counts[0].1, self.orders_reserved);
        counts
    }

    /// Logical time: the latest command timestamp seen.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The earliest payment deadline still queued, if any: a command stamped at or after it
    /// expires an order (or finds the order already paid or cancelled). The node's timer
    /// publishes a `Tick` only once its clock reaches this time, so an idle node with nothing
    /// due journals nothing.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let next = self.deadlines.peek().map(|(expires_at, _, _)| expires_at);
        // Due deadlines fire as soon as time reaches them (time saturates at the top).
        let due = next.is_some_and(|at| at <= self.now && self.now.0 != u64::MAX);
        assert!(!due, "a due deadline was left in the queue");
        next
    }

    /// Sequence of the last mutating command applied (zero before the first).
    #[must_use]
    pub fn last_sequence(&self) -> Sequence {
        self.last_sequence
    }

    /// A hint that `sequenced` will be applied soon: starts loading the index slots it will
    /// look up (its request key, the buyer's holding, the order it names), so that those
    /// cache misses overlap with the commands applied before it. Changes no state: calling it
    /// or not never changes an outcome, a hash or a snapshot. A processor holding a batch of
    /// commands calls it a few commands ahead of [`Engine::apply`], in the order it applies
    /// them.
    ///
    /// The hint has later steps. An order, a coupon or a SKU is found through its index slot,
    /// and only then can its entry load: a second miss, one after the other. So each hint also
    /// takes the hint of the client command hinted `ENTRY_HINT_DELAY` hints before a step
    /// further: by now that command's index slot is in cache, and the entry it points to starts
    /// loading. The SKU of an order is known only from the order's entry: a third step, for
    /// the command hinted `ORDER_SKU_HINT_DELAY` hints before, starts loading it.
    pub fn prefetch(&mut self, sequenced: &Sequenced) {
        // A hint for a command applied already looks behind, not ahead: a caller's mistake that
        // would cost only speed. (A processor hinting a slot before it is sequenced passes 0.)
        debug_assert!(
            sequenced.sequence.0 == 0 || sequenced.sequence > self.last_sequence,
            "command {} hinted after {} was applied",
            sequenced.sequence,
            self.last_sequence
        );
        let Command::Client { key, action } = &sequenced.command else {
            return;
        };
        let mut hint = self.hint_index_slots(*key, action);
        // A reservation with a coupon hints the coupon's entry instead (a hint is two words).
        if let Action::Reserve(reserve) = action
            && self.last_sku != reserve.sku
            && reserve.coupon.is_none()
            && self.hint_sku_index(reserve.sku)
        {
            debug_assert_eq!(hint, EntryHint::None, "a reservation without a coupon hinted");
            hint = EntryHint::Sku(reserve.sku);
        }
        let position = self.entry_hints_made as usize % HINT_RING;
        self.entry_hints_made = self.entry_hints_made.wrapping_add(1);
        // Most commands of a sale name no order, no coupon and no SKU not hinted lately: with
        // none in the ring either, there is nothing to write and nothing to finish.
        if hint == EntryHint::None && self.entry_hints_live == 0 {
            return;
        }
        let dropped = std::mem::replace(&mut self.entry_hints[position], hint);
        self.entry_hints_live += u8::from(hint != EntryHint::None);
        self.entry_hints_live -= u8::from(dropped != EntryHint::None);
        debug_assert_eq!(
            self.entry_hints.iter().filter(|kept| **kept != EntryHint::None).count(),
            usize::from(self.entry_hints_live),
            "the live hints miscounted"
        );
        let earlier = |delay: usize| self.entry_hints[(position + HINT_RING - delay) % HINT_RING];
        self.hint_later_steps(earlier(ENTRY_HINT_DELAY), earlier(ORDER_SKU_HINT_DELAY));
    }

    /// The later steps of two earlier hints: the entry `second` names, and the SKU of the
    /// order `third` names.
    #[inline(never)]
    fn hint_later_steps(&self, second: EntryHint, third: EntryHint) {
        self.hint_entry(second);
        if let EntryHint::Order(order) = third
            && let Some(&slot) = self.order_index.get(&order)
        {
            // Indexed slots are kept orders, and kept orders name a kept SKU (both checked by
            // the snapshot restore); `get` keeps even a broken index from reading past them.
            if let Some(kept) = self.orders.get(slot as usize) {
                debug_assert_eq!(kept.id, order, "the order index points elsewhere");
                debug_assert!((kept.sku_slot as usize) < self.skus.len(), "an order of no SKU");
                table::warm_entry(self.skus.as_ptr().wrapping_add(kept.sku_slot as usize));
            }
        }
    }

    /// The second step of a hint: starts loading the entry that `hint`'s index slot, loaded
    /// by the first step, points to. A lookup of a slot now in cache, and a hint.
    fn hint_entry(&self, hint: EntryHint) {
        match hint {
            EntryHint::None => {}
            EntryHint::Order(order) => {
                if let Some(&slot) = self.order_index.get(&order) {
                    // Indexed slots are kept orders (checked after every command).
                    debug_assert!((slot as usize) < self.orders.len(), "an order indexed past");
                    table::warm_entry(self.orders.as_ptr().wrapping_add(slot as usize));
                }
            }
            EntryHint::Coupon(coupon) => self.hint_coupon(coupon),
            EntryHint::Sku(sku) => self.hint_sku(sku),
        }
    }

    /// The first step of a hint for a reservation naming another SKU than the last one: its
    /// index slot, unless the SKU was hinted lately. Whether it hinted: if so, the SKU's entry
    /// is hinted later. Out of line: a sale's reservations mostly name one SKU.
    #[inline(never)]
    fn hint_sku_index(&mut self, sku: SkuId) -> bool {
        debug_assert_ne!(self.last_sku, sku, "the last SKU is hinted again");
        self.last_sku = sku;
        let slot = &mut self.hinted_skus[hinted_sku_slot(sku)];
        if *slot == sku {
            return false;
        }
        *slot = sku;
        self.sku_index.prefetch(&sku);
        true
    }

    fn hint_coupon(&self, coupon: CouponId) {
        if let Some(&slot) = self.coupon_index.get(&coupon) {
            debug_assert!((slot as usize) < self.coupons.len(), "a coupon indexed past");
            debug_assert_eq!(self.coupons[slot as usize].id, coupon, "the index points elsewhere");
            table::warm_entry(self.coupons.as_ptr().wrapping_add(slot as usize));
        }
    }

    fn hint_sku(&self, sku: SkuId) {
        if let Some(&slot) = self.sku_index.get(&sku) {
            debug_assert!((slot as usize) < self.skus.len(), "a SKU indexed past");
            debug_assert_eq!(self.skus[slot as usize].id, sku, "the SKU index points elsewhere");
            table::warm_entry(self.skus.as_ptr().wrapping_add(slot as usize));
        }
    }

    /// The first step of [`Engine::prefetch`] for a client command: its index slots.
    fn hint_index_slots(&self, key: RequestKey, action: &Action) -> EntryHint {
        let user = action.user().unwrap_or(UserId(0));
        self.key_index.prefetch(&(user, key));
        if self.needs_share(user, action) {
            self.shares.prefetch(&sharer(user));
        }
        match *action {
            Action::Reserve(reserve) => {
                self.holdings.prefetch(&(reserve.user, reserve.sku));
                if let Some(coupon) = reserve.coupon {
                    self.coupon_index.prefetch(&coupon);
                    return EntryHint::Coupon(coupon);
                }
            }
            Action::Pay { order, .. }
            | Action::Cancel { order, .. }
            | Action::AdminCancel { order }
            | Action::Ship { order }
            | Action::Complete { order, .. }
            | Action::Refund { order } => {
                self.order_index.prefetch(&order);
                return EntryHint::Order(order);
            }
            Action::ClaimCoupon { user, batch } => self.claims.prefetch(&(user, batch)),
            Action::CreateSku(_)
            | Action::Restock { .. }
            | Action::OpenSale { .. }
            | Action::CloseSale { .. }
            | Action::CreateCouponBatch(_) => {}
        }
        EntryHint::None
    }

    /// Tells the engine whether its caller hints every client command with
    /// [`Engine::prefetch`] some commands before applying it, as the pipeline's processor does.
    /// If not (the default: a replay, a shadow engine, any caller applying one command at a
    /// time), `apply` hints each command itself as it starts, so that its index probes miss
    /// the cache together rather than one after another. Either way the outcomes are the same.
    pub fn set_hinted_ahead(&mut self, hinted_ahead: bool) {
        self.hinted_ahead = hinted_ahead;
    }

    /// The running hash, folded over every mutating command's outcome and every expiry. Two
    /// nodes that applied the same commands agree on it; it is cheap to read at any time.
    #[must_use]
    pub fn running_hash(&self) -> u64 {
        self.running_hash
    }

    /// Folds one applied command's outcome into the running hash ([`hash::fold_outcome`]).
    ///
    /// Kept out of line on purpose: it reads the outcome through a reference, in memory, so
    /// the caller moves the 104-byte outcome to its return slot as one block copy instead of
    /// splitting it into fields for the hash and putting them back together.
    #[inline(never)]
    fn fold_outcome(&mut self, sequence: Sequence, outcome: &Outcome) {
        // Only mutating commands are folded: a read's answer never enters the hash. A debug
        // assertion: `apply_observed` returns before folding for every read, and this runs per
        // command.
        let read = matches!(
            outcome,
            Outcome::Sku(_)
                | Outcome::Order(_)
                | Outcome::Coupon(_)
                | Outcome::Batch(_)
                | Outcome::SnapshotRequested { .. }
        );
        debug_assert!(!read, "a read's answer folded into the running hash");
        self.running_hash = hash::fold_outcome(self.running_hash, sequence, outcome);
    }

    /// Folds an event (an expiry) into the running hash ([`hash::fold_event`]).
    fn fold_event(&mut self, event: &Event) {
        let Event::OrderExpired { order, qty, .. } = *event;
        assert!(qty > 0, "an expired order held units");
        assert_ne!(order.0, 0, "order ids are never zero");
        self.running_hash = hash::fold_event(self.running_hash, event);
    }

    /// Moves *now* forward (never back) and fires every deadline it passed, oldest first.
    fn advance_time(&mut self, timestamp: Timestamp, events: &mut dyn FnMut(Event)) {
        if timestamp <= self.now {
            return;
        }
        self.now = timestamp;
        let mut fired = (Timestamp(0), OrderId(0));
        while let Some((expires_at, order, slot)) = self.deadlines.peek() {
            if expires_at > self.now {
                break;
            }
            // Deadlines fire ordered by (deadline, order id), as documented.
            assert!((expires_at, order) >= fired, "deadlines fired out of order");
            fired = (expires_at, order);
            self.deadlines.pop();
            if self.deadline_is_live(order, slot) {
                self.expire_order(slot, events);
            }
        }
        // Every reserved order still has its deadline queued, or it would never expire.
        assert!(self.orders_reserved as usize <= self.deadlines.len(), "a deadline was lost");
        let counts_keys = self.config.request_keys_per_user_max > 0;
        while self.keys.front().is_some_and(|entry| entry.expires_at <= self.now) {
            // Keys expire in arrival order, so the ones about to go are known: warm the index
            // slot of one a few places on while this one is removed.
            if let Some(ahead) = self.keys.get(8) {
                self.key_index.prefetch(&(ahead.user, ahead.key));
                if counts_keys && ahead.user.0 != 0 {
                    self.shares.prefetch(&sharer(ahead.user));
                }
            }
            let entry = self.keys.pop_front().expect("front checked");
            let removed = self.key_index.remove(&(entry.user, entry.key));
            if counts_keys && entry.user.0 != 0 {
                self.uncount(entry.user, Share { keys: 1, orders: 0 });
            }
            assert_eq!(removed.map(KeyPosition::get), Some(self.keys_head));
            // Keys are pushed at *now* plus a fixed window, and now never goes back, so the
            // queue is in expiry order and stopping at the first live key misses none.
            let next = self.keys.front().map_or(Timestamp(u64::MAX), |next| next.expires_at);
            assert!(next >= entry.expires_at, "request keys queued out of expiry order");
            self.keys_head += 1;
        }
        assert_eq!(self.key_index.len(), self.keys.len(), "expired keys left the index");
    }

    fn deadline_is_live(&self, order: OrderId, slot: u32) -> bool {
        let kept = &self.orders[slot as usize];
        let live = kept.id == order && kept.state == OrderState::Reserved;
        // A live deadline's order is reserved, so it is one of those counted.
        assert!(!live || self.orders_reserved > 0, "a reserved order the count misses");
        live
    }

    /// Queues the deadline of an order just reserved, made with its SKU's `timeout_ms`.
    ///
    /// Inlined into `reserve`: called, it took the deadline through a stack slot that the
    /// outcome's copy at the join of `execute`'s arms then read back in wider loads, a stall
    /// on store forwarding for every reservation.
    #[inline(always)]
    fn push_deadline(&mut self, deadline: Deadline, timeout_ms: u64) {
        let (expires_at, order, slot) = deadline;
        // In the future of now (payment timeouts are never zero), unless time is saturated.
        assert!(expires_at > self.now || expires_at.0 == u64::MAX, "a deadline in the past");
        // The caller has just written the order; checked in debug builds only (hot path).
        debug_assert!(self.deadline_is_live(order, slot), "a deadline for an order not reserved");
        debug_assert_eq!(self.orders[slot as usize].expires_at, expires_at, "not its deadline");
        if self.deadlines.len() == self.deadlines.capacity() {
            self.sweep_deadlines();
        }
        // Within capacity, so the push never allocates; within twice `orders_max`, so a
        // snapshot of the queue passes the restore check on its size.
        debug_assert!(self.deadlines.len() < self.deadlines.capacity(), "the queue is full");
        self.deadlines.push(deadline, timeout_ms);
        debug_assert!(self.deadlines.len() <= 2 * self.config.orders_max as usize);
    }

    /// Makes room in a full deadline queue: every live deadline belongs to a reserved order and
    /// there are at most `orders_max` of those, so sweeping stale entries frees at least half.
    #[cold]
    #[inline(never)]
    fn sweep_deadlines(&mut self) {
        let orders = &self.orders;
        self.deadlines.sweep(|&(_, order, slot)| {
            let kept = &orders[slot as usize];
            kept.id == order && kept.state == OrderState::Reserved
        });
        assert!(self.deadlines.len() <= self.config.orders_max as usize);
        assert!(self.deadlines.len() < self.deadlines.capacity(), "a sweep made no room");
    }

    /// Whether a command by `user` is counted in the share table: its request key under a
    /// per-user key quota, or, for a reservation, its order under a live-order quota. Commands
    /// that name no user (operators, payments) are never counted.
    fn needs_share(&self, user: UserId, action: &Action) -> bool {
        let keys = self.config.request_keys_per_user_max > 0;
        let orders = self.config.orders_per_user_max > 0 && matches!(action, Action::Reserve(_));
        user.0 != 0 && (keys || orders)
    }

    /// Whether a user holding `held` has as many request keys remembered as the per-user key
    /// quota allows: a full share of the key table is answered like a full table,
    /// `capacity_exhausted`, and not remembered.
    fn at_key_quota(&self, held: Share) -> bool {
        let quota = u32::from(self.config.request_keys_per_user_max);
        quota > 0 && held.keys >= quota
    }

    /// Whether a user with `live` orders has as many as the live-order quota allows.
    fn at_order_quota(&self, live: u32) -> bool {
        let quota = u32::from(self.config.orders_per_user_max);
        quota > 0 && live >= quota
    }

    /// Counts what a remembered command added to its user's share: its request key, and the
    /// order a reservation made. `located` is the user's share as it was before the command;
    /// a command that finished one of the user's orders (a cancel, a completion) has written
    /// to the table since, and the user is looked up again.
    fn count_command(
        &mut self,
        user: UserId,
        located: Option<Located<NonZeroU64, Share>>,
        outcome: &Outcome,
    ) {
        let Some(located) = located else { return };
        let key = u32::from(self.config.request_keys_per_user_max > 0);
        let order = u32::from(
            self.config.orders_per_user_max > 0 && matches!(outcome, Outcome::Reserved { .. }),
        );
        if key + order == 0 {
            return;
        }
        let located = if self.shares.is_current(&located) {
            located
        } else {
            self.shares.locate(sharer(user))
        };
        let held = located.value.unwrap_or_default();
        // Below both quotas, or the command was refused before it ran.
        let share = Share { keys: held.keys + key, orders: held.orders + order };
        assert!(key == 0 || !self.at_key_quota(held), "a key counted past the user's quota");
        assert!(order == 0 || !self.at_order_quota(held.orders), "an order past the quota");
        self.shares.put_at(located, share);
        debug_assert_eq!(self.shares.get(&sharer(user)), Some(&share), "the share is read back");
        // One entry per user holding a counted key or a live order.
        let live = self.orders.len() - self.finished.len();
        assert!(self.shares.len() <= self.keys.len() + live, "a share of nothing is kept");
    }

    /// Takes `gone` (an expired key, a finished order) off `user`'s share, forgetting a share
    /// that falls to nothing.
    fn uncount(&mut self, user: UserId, gone: Share) {
        // Commands naming no user (scope 0) are not counted, and no buyer is user 0.
        assert_ne!(user.0, 0, "user 0 has no share");
        let held = self.shares.get_mut(&sharer(user)).expect("what is uncounted was counted");
        assert!(held.keys >= gone.keys, "a user's key count went below zero");
        assert!(held.orders >= gone.orders, "a user's live-order count went below zero");
        held.keys -= gone.keys;
        held.orders -= gone.orders;
        if *held == Share::default() {
            self.shares.remove(&sharer(user));
        }
    }

    /// Idempotency: a known key with the same command returns the original outcome (a repeat:
    /// `repeat` is set); with a different command it is refused; a new key is executed and
    /// remembered.
    fn apply_keyed(&mut self, key: RequestKey, action: &Action, repeat: &mut bool) -> Outcome {
        let fingerprint = hash::fingerprint(action);
        // The key's scope: the user the command names, or user 0 (no user id is 0) for one
        // that names none. The table holds (user, key) pairs, so a buyer who guesses another
        // buyer's request id only ever meets their own.
        let user = action.user().unwrap_or(UserId(0));
        let counted = self.needs_share(user, action);
        // Located once: executing a command never touches the request-key index.
        let located = self.key_index.locate((user, key));
        if let Some(position) = located.value.map(KeyPosition::get) {
            assert!(position >= self.keys_head, "an expired request key is still indexed");
            let end = self.keys_head + self.keys.len() as u64;
            assert!(position < end, "a request key indexed past the queue");
            let entry = &self.keys[(position - self.keys_head) as usize];
            assert_eq!((entry.user, entry.key), (user, key));
            // Expiry ran before this command; keys expire once now reaches their time.
            assert!(entry.expires_at >= self.now, "an expired request key answered");
            if entry.fingerprint == fingerprint {
                *repeat = true;
                let stored = entry.outcome;
                return self.remembered_outcome(stored).expect("a remembered SKU or batch is kept");
            }
            return Outcome::Rejected(Rejection::RequestKeyReused);
        }
        if self.keys.len() == self.config.request_keys_max as usize {
            return Outcome::Rejected(Rejection::CapacityExhausted);
        }
        // The user's share, located once like the key: the quotas read it here and in
        // `reserve`, and the count is written back through it.
        let share = counted.then(|| self.shares.locate(sharer(user)));
        let held = share.and_then(|located| located.value).unwrap_or_default();
        if self.at_key_quota(held) {
            return Outcome::Rejected(Rejection::CapacityExhausted);
        }
        // Table sizes, to check that a refusal changed nothing (every check runs before the
        // first write). Debug builds only: capturing them costs every command, and the
        // scenario tests compare the tables digest around every refusal.
        let sizes = (self.skus.len(), self.orders.len(), self.holdings.len(), self.coupons.len());
        let (reserved, finished) = (self.orders_reserved, self.finished.len());
        let outcome = self.execute(action, held);
        if outcome.is_rejected() {
            let now = (self.skus.len(), self.orders.len(), self.holdings.len(), self.coupons.len());
            debug_assert_eq!(now, sizes, "a refused command changed a table");
            debug_assert_eq!(self.orders_reserved, reserved, "a refused command changed an order");
            debug_assert_eq!(self.finished.len(), finished, "a refused command finished an order");
        }
        // A full table is transient: the retry must be allowed to succeed later.
        if outcome != Outcome::Rejected(Rejection::CapacityExhausted) {
            let expires_at = self.now.plus_ms(self.config.request_key_window_ms);
            let position = self.keys_head + self.keys.len() as u64;
            remember_key(&mut self.keys, (user, key), expires_at, fingerprint, &outcome);
            self.count_command(user, share, &outcome);
            self.key_index.put_at(located, KeyPosition::new(position));
            // `apply_observed` checks the same after every command, in release builds too.
            debug_assert_eq!(self.key_index.len(), self.keys.len(), "a remembered key is indexed");
        }
        outcome
    }

    /// Runs a command; `held` is the share of the user it names (zeros when not counted).
    fn execute(&mut self, action: &Action, held: Share) -> Outcome {
        // Only a user the command names has a share (user 0, naming nobody, has none).
        debug_assert!(held == Share::default() || action.user().is_some_and(|u| u.0 != 0));
        let outcome = match *action {
            Action::CreateSku(create) => answer(self.create_sku(&create)),
            Action::Restock { sku, qty } => answer(self.restock(sku, qty)),
            Action::OpenSale { sku } => answer(self.set_sale_open(sku, true)),
            Action::CloseSale { sku } => answer(self.set_sale_open(sku, false)),
            Action::Reserve(reserve) => answer(self.reserve(&reserve, held.orders)),
            Action::Pay { order, payment_ref, amount_cents } => {
                answer(self.pay(order, payment_ref, amount_cents))
            }
            Action::Cancel { order, user } => answer(self.cancel(order, Some(user))),
            Action::AdminCancel { order } => answer(self.cancel(order, None)),
            Action::Ship { order } => answer(self.ship(order)),
            Action::Complete { order, user } => answer(self.complete(order, user)),
            Action::Refund { order } => answer(self.refund(order)),
            Action::CreateCouponBatch(create) => answer(self.create_batch(&create)),
            Action::ClaimCoupon { user, batch } => answer(self.claim_coupon(user, batch)),
        };
        // Each command is answered with its own kind of outcome, or refused. A debug assertion:
        // it runs on every command, and the dispatch above makes it hold by construction.
        let answered = matches!(
            (action, &outcome),
            (_, Outcome::Rejected(_))
                | (Action::CreateSku(_), Outcome::SkuCreated(_))
                | (Action::Restock { .. }, Outcome::Restocked(_))
                | (Action::OpenSale { .. } | Action::CloseSale { .. }, Outcome::SaleChanged(_))
                | (Action::Reserve(_), Outcome::Reserved { .. })
                | (Action::Pay { .. }, Outcome::Paid { .. })
                | (Action::Cancel { .. } | Action::AdminCancel { .. }, Outcome::Cancelled { .. })
                | (Action::Ship { .. }, Outcome::Shipped { .. })
                | (Action::Complete { .. }, Outcome::Completed { .. })
                | (Action::Refund { .. }, Outcome::Refunded { .. })
                | (Action::CreateCouponBatch(_), Outcome::BatchCreated(_))
                | (Action::ClaimCoupon { .. }, Outcome::CouponClaimed { .. })
        );
        debug_assert!(answered, "{} answered with another command's outcome", action.name());
        outcome
    }
}
