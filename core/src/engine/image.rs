//! Snapshots of the engine's full state, and the order-independent state digests.
//!
//! An [`EngineImage`] is plain vectors. It keeps every detail that decides future outcomes
//! (slot layout, the finished-order and request-key queues, pending deadlines, the id
//! generator), so an engine restored from it behaves exactly like the one it was taken from.
//! Its bytes are the explicit, versioned layout of `layout.rs` ([`EngineImage::encode_into`],
//! [`EngineImage::decode`]).
//!
//! The digests hash the same fixed-size entry encodings, with XXH3-64 (`xxh3` below; `‖` is
//! concatenation, `le64` a `u64` in 8 little-endian bytes, `Σ` the wrapping sum of `xxh3` of
//! each entry's bytes, so that it does not depend on hash-map layout):
//!
//! ```text
//! tables_digest = xxh3( le64(Σ SKUs) ‖ le64(Σ orders) ‖ le64(Σ batches) ‖ le64(Σ coupons)
//!                     ‖ le64(Σ holdings) ‖ le64(Σ claims)
//!                     ‖ le64(xxh3(finished entries in queue order))
//!                     ‖ le64(Σ live deadlines) )
//! state_digest  = xxh3( image header bytes 4..56 (shard, id generator, now, last sequence,
//!                       running hash, keys head) ‖ le64(tables_digest)
//!                     ‖ le64(xxh3(request-key entries in queue order)) )
//! ```
//!
//! A deadline is live while its order slot holds that order, still reserved; stale deadlines
//! wait in the queue to be skipped, and two equal states may hold different stale ones.

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use super::layout::{Claim, Holding, Scalars, ordered_hash, sum_of};
use super::remembered::{KeyEntry, RememberedKey, Stored};
use super::{Batch, Coupon, Deadline, Engine, KeyPosition, Order, Share, Sku, sharer};
use crate::config::EngineConfig;
use crate::outcome::{CouponState, OrderState};
use crate::snowflake::Snowflake;
use crate::types::{Sequence, Timestamp};

/// The engine's full state as plain data. Private fields: build one with
/// [`Engine::to_image`], turn it back with [`Engine::from_image`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineImage {
    pub(super) shard: u16,
    pub(super) now: Timestamp,
    pub(super) last_sequence: Sequence,
    pub(super) running_hash: u64,
    pub(super) ids: Snowflake,
    pub(super) skus: Vec<Sku>,
    pub(super) orders: Vec<Order>,
    pub(super) finished: Vec<u32>,
    pub(super) deadlines: Vec<Deadline>,
    pub(super) holdings: Vec<Holding>,
    pub(super) batches: Vec<Batch>,
    pub(super) coupons: Vec<Coupon>,
    pub(super) claims: Vec<Claim>,
    pub(super) keys: Vec<RememberedKey>,
    pub(super) keys_head: u64,
}

impl EngineImage {
    /// Sorts the tables whose order in memory depends on hash-map layout, so that equal
    /// states give equal images. Restoring does not need it.
    pub fn canonicalize(&mut self) {
        self.holdings.sort_unstable();
        self.claims.sort_unstable();
        self.deadlines.sort_unstable();
    }

    /// Entries in each table, in the image's order: SKUs, orders, finished orders, deadlines,
    /// holdings, batches, coupons, claims, request keys.
    pub(super) fn table_lens(&self) -> [usize; 9] {
        [
            self.skus.len(),
            self.orders.len(),
            self.finished.len(),
            self.deadlines.len(),
            self.holdings.len(),
            self.batches.len(),
            self.coupons.len(),
            self.claims.len(),
            self.keys.len(),
        ]
    }

    /// The most entries each table of an image under `config` holds ([`Self::table_lens`]'s
    /// order): what [`Engine::from_image`] accepts.
    pub(super) fn table_lens_max(config: &EngineConfig) -> [usize; 9] {
        assert!(config.validate().is_ok(), "bounds of an invalid configuration");
        let orders = config.orders_max as usize;
        let lens = [
            config.skus_max as usize,
            orders,
            orders,
            2 * orders,
            config.holdings_max as usize,
            config.batches_max as usize,
            config.coupons_max as usize,
            config.coupons_max as usize,
            config.request_keys_max as usize,
        ];
        // A valid configuration has room for one entry in every table.
        assert!(lens.iter().all(|&len| len >= 1), "a table bounded at no entry: {lens:?}");
        lens
    }

    /// The most memory an image of an engine under `config` takes: every table as full as
    /// restoring allows. [`Engine::copy_image_into`] sizes each table to the state it copies,
    /// so an image reused for snapshot after snapshot never holds more.
    #[must_use]
    pub fn memory_max(config: &EngineConfig) -> u64 {
        let entry_sizes = [
            size_of::<Sku>(),
            size_of::<Order>(),
            size_of::<u32>(),
            size_of::<Deadline>(),
            size_of::<Holding>(),
            size_of::<Batch>(),
            size_of::<Coupon>(),
            size_of::<Claim>(),
            size_of::<RememberedKey>(),
        ];
        assert!(entry_sizes.iter().all(|&size| size > 0), "an entry of no bytes");
        let lens = EngineImage::table_lens_max(config);
        let bytes: usize = lens.iter().zip(entry_sizes).map(|(&len, size)| len * size).sum();
        // At least the request keys, each with its whole outcome.
        assert!(bytes >= lens[8] * size_of::<RememberedKey>(), "keys not counted");
        (size_of::<EngineImage>() + bytes) as u64
    }
}

/// Mutable views of an image's tables, so that tests can damage one field at a time.
#[cfg(test)]
pub(super) struct ImageTables<'a> {
    pub skus: &'a mut Vec<Sku>,
    pub orders: &'a mut Vec<Order>,
    pub finished: &'a mut Vec<u32>,
    pub deadlines: &'a mut Vec<Deadline>,
    pub holdings: &'a mut Vec<Holding>,
    pub batches: &'a mut Vec<Batch>,
    pub coupons: &'a mut Vec<Coupon>,
    pub claims: &'a mut Vec<Claim>,
    pub keys: &'a mut Vec<RememberedKey>,
    pub keys_head: &'a mut u64,
}

#[cfg(test)]
impl EngineImage {
    pub(super) fn tables_mut(&mut self) -> ImageTables<'_> {
        ImageTables {
            skus: &mut self.skus,
            orders: &mut self.orders,
            finished: &mut self.finished,
            deadlines: &mut self.deadlines,
            holdings: &mut self.holdings,
            batches: &mut self.batches,
            coupons: &mut self.coupons,
            claims: &mut self.claims,
            keys: &mut self.keys,
            keys_head: &mut self.keys_head,
        }
    }
}

/// An image that cannot become an engine under the given configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestoreError {
    /// The image holds more entries than the configuration allows.
    #[error(
        "snapshot holds {len} {table} but the configuration allows {max}; \
         raise the capacity or restore from an older snapshot"
    )]
    TooLarge {
        /// The table.
        table: &'static str,
        /// Entries in the image.
        len: usize,
        /// Configured capacity.
        max: usize,
    },
    /// The image was taken by a node with another shard id.
    #[error("snapshot belongs to shard {image} but this node is shard {config}")]
    ShardMismatch {
        /// Shard in the image.
        image: u16,
        /// Configured shard.
        config: u16,
    },
    /// Internal references do not hold together; the snapshot is damaged.
    #[error("snapshot is inconsistent: {0}; restore from an older snapshot and replay")]
    Inconsistent(&'static str),
}

impl Engine {
    /// Copies the full state into a canonical image: tables in a fixed order, so two engines
    /// in the same state give equal images (allocates; taken at a sequence boundary).
    #[must_use]
    pub fn to_image(&self) -> EngineImage {
        let mut image = self.to_image_unsorted();
        image.canonicalize();
        // Map-backed tables hold each key once, so sorted they are strictly ascending.
        debug_assert!(image.holdings.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        debug_assert!(image.claims.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        image
    }

    /// Copies the full state as fast as possible, leaving map-backed tables in their internal
    /// order: what a snapshot taken on the BLP thread wants, because restoring does not depend
    /// on that order. [`EngineImage::canonicalize`] (off the BLP thread) sorts them. Allocates a
    /// fresh image; [`Engine::copy_image_into`] reuses one.
    #[must_use]
    pub fn to_image_unsorted(&self) -> EngineImage {
        let mut image = EngineImage {
            shard: self.config.shard,
            now: self.now,
            last_sequence: self.last_sequence,
            running_hash: self.running_hash,
            ids: self.ids,
            skus: Vec::new(),
            orders: Vec::new(),
            finished: Vec::new(),
            deadlines: Vec::new(),
            holdings: Vec::new(),
            batches: Vec::new(),
            coupons: Vec::new(),
            claims: Vec::new(),
            keys: Vec::new(),
            keys_head: self.keys_head,
        };
        self.copy_image_into(&mut image);
        image
    }

    /// [`Engine::to_image_unsorted`] into an existing image: its vectors are cleared and
    /// refilled, keeping their capacity, so once they are as large as the state nothing is
    /// allocated and no fresh page is touched. A snapshot taken on the BLP thread copies into
    /// the image of the previous snapshot this way: a fresh image would fault in every one of
    /// its pages while the BLP waits.
    pub fn copy_image_into(&self, image: &mut EngineImage) {
        image.shard = self.config.shard;
        image.now = self.now;
        image.last_sequence = self.last_sequence;
        image.running_hash = self.running_hash;
        image.ids = self.ids;
        image.keys_head = self.keys_head;
        refill_from(&mut image.skus, &[&self.skus]);
        refill_from(&mut image.orders, &[&self.orders]);
        let (front, back) = self.finished.as_slices();
        refill_from(&mut image.finished, &[front, back]);
        refill(&mut image.deadlines, self.deadlines.len(), self.deadlines.iter());
        let holdings = self.holdings.iter().map(|(&(user, sku), &units)| (user, sku, units));
        refill(&mut image.holdings, self.holdings.len(), holdings);
        refill_from(&mut image.batches, &[&self.batches]);
        refill_from(&mut image.coupons, &[&self.coupons]);
        let claims = self.claims.iter().map(|(&(user, batch), &count)| (user, batch, count));
        refill(&mut image.claims, self.claims.len(), claims);
        refill(&mut image.keys, self.keys.len(), self.keys.iter().map(|e| self.remembered(e)));
        // The pair of `check_image`: what the engine copies restores under its own settings.
        let config = &self.config;
        assert!(image.skus.len() <= config.skus_max as usize, "too many SKUs to restore");
        assert!(image.orders.len() <= config.orders_max as usize, "too many orders to restore");
        assert!(image.batches.len() <= config.batches_max as usize, "too many batches");
        assert!(image.coupons.len() <= config.coupons_max as usize, "too many coupons");
        assert!(image.holdings.len() <= config.holdings_max as usize, "too many holdings");
        assert!(image.keys.len() <= config.request_keys_max as usize, "too many request keys");
        assert!(image.deadlines.len() <= 2 * config.orders_max as usize, "too many deadlines");
        assert!(image.finished.len() <= image.orders.len(), "more finished than kept orders");
        assert_eq!(image.ids.shard(), image.shard, "the id generator belongs to the shard");
        debug_assert_eq!(image.state_digest(), self.state_digest(), "the copy digests apart");
    }

    /// A remembered key with its whole outcome, as an image holds it.
    fn remembered(&self, entry: &KeyEntry) -> RememberedKey {
        let KeyEntry { user, key, expires_at, fingerprint, outcome } = *entry;
        // SKUs and batches are never removed, and restored keys were checked to read back.
        let outcome = self.remembered_outcome(outcome).expect("a remembered SKU or batch is kept");
        RememberedKey { user, key, expires_at, fingerprint, outcome }
    }

    /// The engine `image` restores to under `config`, after every check [`Engine::from_image`]
    /// makes, but with tables sized to what the image holds rather than to `config`'s
    /// capacities: memory and time in proportion to the state, not to the configuration. For
    /// checking and reading an image (a snapshot's writer proves its image restores before it
    /// writes it), not for running: it has no room for one more entry.
    pub fn from_image_sized_to_fit(
        config: &EngineConfig,
        image: &EngineImage,
    ) -> Result<Engine, RestoreError> {
        // Against the real capacities: the fitted ones hold the image by construction.
        check_image(config, image)?;
        let fit = |len: usize| u32::try_from(len.max(1)).expect("checked against a u32 capacity");
        let fitted = EngineConfig {
            skus_max: fit(image.skus.len()),
            orders_max: fit(image.orders.len().max(image.deadlines.len().div_ceil(2))),
            coupons_max: fit(image.coupons.len().max(image.claims.len())),
            batches_max: fit(image.batches.len()),
            holdings_max: fit(image.holdings.len()),
            request_keys_max: fit(image.keys.len()),
            ..config.clone()
        };
        // Never larger than the configuration it stands in for.
        assert!(fitted.orders_max <= config.orders_max, "fitted above the configured orders");
        assert!(fitted.request_keys_max <= config.request_keys_max, "fitted above the keys");
        Engine::restore_checked(fitted, image)
    }

    /// Rebuilds an engine from an image, checking it against `config` and itself.
    pub fn from_image(config: EngineConfig, image: &EngineImage) -> Result<Engine, RestoreError> {
        check_image(&config, image)?;
        Engine::restore_checked(config, image)
    }

    /// [`Engine::from_image`] once `check_image` passed for `config`: builds the tables and
    /// makes the checks that need them (duplicates, cross-table consistency).
    fn restore_checked(config: EngineConfig, image: &EngineImage) -> Result<Engine, RestoreError> {
        // What `check_image` passed: the tables about to be built hold the image.
        assert!(image.orders.len() <= config.orders_max as usize, "restoring unchecked orders");
        let mut engine = Engine::new(config);
        engine.now = image.now;
        engine.last_sequence = image.last_sequence;
        engine.running_hash = image.running_hash;
        engine.ids = image.ids;
        engine.skus.extend_from_slice(&image.skus);
        engine.orders.extend_from_slice(&image.orders);
        engine.finished.extend(image.finished.iter().copied());
        engine.deadlines.restore(&image.deadlines);
        engine.holdings.extend(image.holdings.iter().map(|&(u, s, n)| ((u, s), n)));
        engine.batches.extend_from_slice(&image.batches);
        engine.coupons.extend_from_slice(&image.coupons);
        engine.claims.extend(image.claims.iter().map(|&(u, b, n)| ((u, b), n)));
        for remembered in &image.keys {
            let RememberedKey { user, key, expires_at, fingerprint, outcome } = *remembered;
            let outcome = Stored::of(&outcome).ok_or(RestoreError::Inconsistent(
                "a request key remembers an answer no keyed command gives",
            ))?;
            engine.keys.push_back(KeyEntry { user, key, expires_at, fingerprint, outcome });
        }
        engine.keys_head = image.keys_head;
        engine.rebuild_indexes()?;
        if engine.holdings.len() != image.holdings.len() {
            return Err(RestoreError::Inconsistent("a (user, SKU) holding appears twice"));
        }
        if engine.claims.len() != image.claims.len() {
            return Err(RestoreError::Inconsistent("a (user, batch) claim count appears twice"));
        }
        engine.check_cross_tables()?;
        engine.check_remembered(&image.keys)?;
        // The pair of the digest a snapshot records: computed from the image, or from the
        // engine it restored to, it is the same.
        debug_assert_eq!(engine.state_digest(), image.state_digest(), "restore changed state");
        // Filled in place: the queue keeps the room, written at start, that `push_deadline`
        // counts on.
        assert!(engine.deadlines.capacity() > engine.config.orders_max as usize);
        Ok(engine)
    }

    fn rebuild_indexes(&mut self) -> Result<(), RestoreError> {
        for (slot, sku) in self.skus.iter().enumerate() {
            if self.sku_index.insert(sku.id, slot as u32).is_some() {
                return Err(RestoreError::Inconsistent("duplicate SKU id"));
            }
        }
        for (slot, order) in self.orders.iter().enumerate() {
            if self.order_index.insert(order.id, slot as u32).is_some() {
                return Err(RestoreError::Inconsistent("duplicate order id"));
            }
        }
        self.orders_reserved =
            self.orders.iter().filter(|o| o.state == OrderState::Reserved).count() as u32;
        for (slot, batch) in self.batches.iter().enumerate() {
            if self.batch_index.insert(batch.id, slot as u32).is_some() {
                return Err(RestoreError::Inconsistent("duplicate batch id"));
            }
        }
        for (slot, coupon) in self.coupons.iter().enumerate() {
            if self.coupon_index.insert(coupon.id, slot as u32).is_some() {
                return Err(RestoreError::Inconsistent("duplicate coupon id"));
            }
        }
        for (offset, entry) in self.keys.iter().enumerate() {
            let at = self.keys_head + offset as u64;
            if self.key_index.insert((entry.user, entry.key), KeyPosition::new(at)).is_some() {
                return Err(RestoreError::Inconsistent("duplicate request key"));
            }
        }
        // The oldest key sits at the queue's head: positions count from the first key ever
        // remembered, not from the start of the restored queue.
        if let Some(oldest) = self.keys.front() {
            let indexed = self.key_index.get(&(oldest.user, oldest.key)).map(|at| at.get());
            assert_eq!(indexed, Some(self.keys_head), "the oldest key indexed off the head");
        }
        self.rebuild_shares();
        // Every entry is indexed once: what `apply` asserts after each command.
        assert_eq!(self.sku_index.len(), self.skus.len(), "a SKU is not indexed");
        assert_eq!(self.order_index.len(), self.orders.len(), "an order is not indexed");
        assert_eq!(self.batch_index.len(), self.batches.len(), "a batch is not indexed");
        assert_eq!(self.coupon_index.len(), self.coupons.len(), "a coupon is not indexed");
        assert_eq!(self.key_index.len(), self.keys.len(), "a request key is not indexed");
        assert!(self.orders_reserved as usize <= self.orders.len());
        Ok(())
    }

    /// Counts every user's share again from the keys and the orders, as the commands that made
    /// them counted it. A share may be above a quota lowered since the image was taken: that
    /// user's new keys or orders are refused until it falls below.
    fn rebuild_shares(&mut self) {
        assert_eq!(self.shares.len(), 0, "shares rebuilt into a used table");
        let counts_keys = self.config.request_keys_per_user_max > 0;
        let counts_orders = self.config.orders_per_user_max > 0;
        let (mut keys, mut orders) = (0_usize, 0_usize);
        for entry in self.keys.iter().filter(|entry| counts_keys && entry.user.0 != 0) {
            self.shares.entry(sharer(entry.user)).or_insert(Share::default()).keys += 1;
            keys += 1;
        }
        for order in self.orders.iter().filter(|order| counts_orders && !order.state.is_final()) {
            self.shares.entry(sharer(order.user)).or_insert(Share::default()).orders += 1;
            orders += 1;
        }
        // Every counted key and live order is counted once.
        let counted = self.shares.iter().fold((0_usize, 0_usize), |(keys, orders), (_, held)| {
            (keys + held.keys as usize, orders + held.orders as usize)
        });
        assert_eq!(counted, (keys, orders), "a share miscounted");
        // The table holds one entry per user with a counted key or a live order.
        assert!(self.shares.len() <= keys + orders, "a share of nothing");
    }

    /// A digest of the full state that two nodes (or a node and its snapshot) can compare:
    /// [`Engine::tables_digest`] plus time, last sequence, running hash, the id generator and
    /// the remembered request keys (definition in the module documentation).
    /// O(state): for audits, snapshots and tests, not per command.
    #[must_use]
    pub fn state_digest(&self) -> u64 {
        let keys = self.keys.iter().map(|entry| self.remembered(entry));
        state_digest(&self.scalars(), self.tables_digest(), keys)
    }

    /// A digest of the business tables only (SKUs, orders, coupons, batches, holdings, claims,
    /// the finished-order queue, live deadlines), leaving out the clock, the last sequence, the
    /// running hash and remembered request keys. A refused command leaves it unchanged.
    #[must_use]
    pub fn tables_digest(&self) -> u64 {
        let holdings = self.holdings.iter().map(|(&(user, sku), &units)| (user, sku, units));
        let claims = self.claims.iter().map(|(&(user, batch), &count)| (user, batch, count));
        let deadlines = self.deadlines.iter();
        TableHashes {
            skus: sum_of(self.skus.iter().copied()),
            orders: sum_of(self.orders.iter().copied()),
            batches: sum_of(self.batches.iter().copied()),
            coupons: sum_of(self.coupons.iter().copied()),
            holdings: sum_of(holdings),
            claims: sum_of(claims),
            finished: ordered_hash(self.finished.iter().copied()),
            live_deadlines: sum_of(deadlines.filter(|d| is_live(&self.orders, d))),
        }
        .digest()
    }

    fn scalars(&self) -> Scalars {
        assert_eq!(self.ids.shard(), self.config.shard, "ids are issued for another shard");
        Scalars {
            shard: self.config.shard,
            ids: self.ids,
            now: self.now,
            last_sequence: self.last_sequence,
            running_hash: self.running_hash,
            keys_head: self.keys_head,
        }
    }
}

impl EngineImage {
    /// [`Engine::state_digest`] of the engine this image restores to, computed from the image
    /// alone: a snapshot can be checked against its recorded digest without restoring it.
    #[must_use]
    pub fn state_digest(&self) -> u64 {
        state_digest(&self.scalars(), self.tables_digest(), self.keys.iter().copied())
    }

    /// [`Engine::tables_digest`] of the engine this image restores to.
    #[must_use]
    pub fn tables_digest(&self) -> u64 {
        let deadlines = self.deadlines.iter().filter(|d| is_live(&self.orders, d));
        TableHashes {
            skus: sum_of(self.skus.iter().copied()),
            orders: sum_of(self.orders.iter().copied()),
            batches: sum_of(self.batches.iter().copied()),
            coupons: sum_of(self.coupons.iter().copied()),
            holdings: sum_of(self.holdings.iter().copied()),
            claims: sum_of(self.claims.iter().copied()),
            finished: ordered_hash(self.finished.iter().copied()),
            live_deadlines: sum_of(deadlines.copied()),
        }
        .digest()
    }
}

/// Whether a deadline still belongs to its order: the slot holds that order, still reserved.
/// Reads the slot with `get`, so an image with a bad slot digests instead of panicking.
fn is_live(orders: &[Order], &(_, order, slot): &Deadline) -> bool {
    orders
        .get(slot as usize)
        .is_some_and(|kept| kept.id == order && kept.state == OrderState::Reserved)
}

/// The per-table hashes the tables digest combines, in the order it hashes them.
struct TableHashes {
    skus: u64,
    orders: u64,
    batches: u64,
    coupons: u64,
    holdings: u64,
    claims: u64,
    finished: u64,
    live_deadlines: u64,
}

impl TableHashes {
    fn digest(&self) -> u64 {
        let parts = [
            self.skus,
            self.orders,
            self.batches,
            self.coupons,
            self.holdings,
            self.claims,
            self.finished,
            self.live_deadlines,
        ];
        let mut bytes = [0_u8; 8 * 8];
        for (chunk, part) in bytes.chunks_exact_mut(8).zip(parts) {
            chunk.copy_from_slice(&part.to_le_bytes());
        }
        xxh3_64(&bytes)
    }
}

fn state_digest(
    scalars: &Scalars,
    tables_digest: u64,
    keys: impl Iterator<Item = RememberedKey>,
) -> u64 {
    let mut hasher = Xxh3Default::new();
    hasher.update(&scalars.state_bytes());
    hasher.update(&tables_digest.to_le_bytes());
    hasher.update(&ordered_hash(keys).to_le_bytes());
    hasher.digest()
}

/// Replaces `table`'s contents with `len` entries, growing its allocation at most once.
fn refill<T>(table: &mut Vec<T>, len: usize, entries: impl Iterator<Item = T>) {
    make_room(table, len);
    table.extend(entries);
    assert_eq!(table.len(), len);
}

/// Empties `table` with room for exactly `len` entries when it has less: an image's tables
/// never hold more than the largest state copied into them ([`EngineImage::memory_max`]),
/// and the old allocation is freed before the new one is made.
fn make_room<T>(table: &mut Vec<T>, len: usize) {
    table.clear();
    if table.capacity() < len {
        *table = Vec::new();
        table.reserve_exact(len);
    }
    assert!(table.is_empty(), "room made in a table still holding entries");
    assert!(table.capacity() >= len, "no room made for {len} entries");
}

/// Replaces `table`'s contents with the concatenated `parts` (a vector, or a ring buffer's two
/// halves), copied as whole slices.
fn refill_from<T: Copy>(table: &mut Vec<T>, parts: &[&[T]]) {
    let len = parts.iter().map(|part| part.len()).sum();
    make_room(table, len);
    for part in parts {
        table.extend_from_slice(part);
    }
    assert_eq!(table.len(), len);
}

/// Every size within capacity, every internal slot reference in range.
fn check_image(config: &EngineConfig, image: &EngineImage) -> Result<(), RestoreError> {
    if image.shard != config.shard {
        return Err(RestoreError::ShardMismatch { image: image.shard, config: config.shard });
    }
    let sizes = [
        ("SKUs", image.skus.len(), config.skus_max),
        ("orders", image.orders.len(), config.orders_max),
        ("coupon batches", image.batches.len(), config.batches_max),
        ("coupons", image.coupons.len(), config.coupons_max),
        ("holdings", image.holdings.len(), config.holdings_max),
        // Every claims entry counts at least one claimed coupon.
        ("coupon claims", image.claims.len(), config.coupons_max),
        ("request keys", image.keys.len(), config.request_keys_max),
        ("deadlines", image.deadlines.len(), config.orders_max.saturating_mul(2)),
    ];
    for (table, len, max) in sizes {
        if len > max as usize {
            return Err(RestoreError::TooLarge { table, len, max: max as usize });
        }
    }
    if image.ids.shard() != image.shard {
        return Err(RestoreError::Inconsistent("the id generator belongs to another shard"));
    }
    check_fields(image)?;
    let order_slots = image.orders.len() as u32;
    let in_range = image.orders.iter().all(|o| {
        o.sku_slot < image.skus.len() as u32
            && o.coupon_slot.is_none_or(|slot| slot < image.coupons.len() as u32)
    }) && image.finished.iter().all(|&slot| slot < order_slots)
        && image.deadlines.iter().all(|&(_, _, slot)| slot < order_slots)
        && image.coupons.iter().all(|c| c.batch_slot < image.batches.len() as u32)
        && image.finished.len() <= image.orders.len();
    if !in_range {
        return Err(RestoreError::Inconsistent("a slot reference is out of range"));
    }
    let skus_balanced = image.skus.iter().all(|s| {
        s.available.checked_add(s.reserved).and_then(|n| n.checked_add(s.sold)) == Some(s.stock)
    });
    if !skus_balanced {
        return Err(RestoreError::Inconsistent("a SKU's available + reserved + sold != stock"));
    }
    // Request keys are indexed by absolute position, keys_head + offset.
    if image.keys_head.checked_add(image.keys.len() as u64).is_none() {
        return Err(RestoreError::Inconsistent("request-key positions overflow"));
    }
    Ok(())
}

/// Each entry's own fields are ones the engine can produce. The engine asserts them where it
/// uses an entry, so an image that breaks one is refused here rather than tripping an
/// assertion on a later command.
fn check_fields(image: &EngineImage) -> Result<(), RestoreError> {
    let bad_sku = image.skus.iter().any(|s| {
        let empty_window =
            matches!((s.sale_start, s.sale_end), (Some(start), Some(end)) if end <= start);
        s.id.0 == 0 || s.payment_timeout_ms == 0 || empty_window
    });
    if bad_sku {
        return Err(RestoreError::Inconsistent(
            "a SKU has a zero id, a zero payment timeout or an empty sale window",
        ));
    }
    if image.batches.iter().any(|b| b.id.0 == 0 || b.valid_until <= b.valid_from) {
        return Err(RestoreError::Inconsistent("a batch has a zero id or is never valid"));
    }
    // Paid at some point is exactly when an order has its payment reference.
    let bad_order = image.orders.iter().any(|o| {
        o.id.0 == 0
            || o.user.0 == 0
            || o.qty == 0
            || o.expires_at < o.created_at
            || o.payment_ref.is_some() != spends_coupon(o.state)
    });
    if bad_order {
        return Err(RestoreError::Inconsistent(
            "an order has a zero id, user or quantity, expires before it was made, or its \
             payment reference does not match its state",
        ));
    }
    if image.coupons.iter().any(|c| c.user.0 == 0 || c.state == CouponState::Expired) {
        return Err(RestoreError::Inconsistent(
            "a coupon was claimed by user zero or stores the expired state (it is derived)",
        ));
    }
    // Keys are remembered in arrival order, so in expiry order: expiry stops at the first live.
    if image.keys.windows(2).any(|pair| pair[1].expires_at < pair[0].expires_at) {
        return Err(RestoreError::Inconsistent("request keys are not in expiry order"));
    }
    if image.keys.first().is_some_and(|first| first.expires_at < image.now) {
        return Err(RestoreError::Inconsistent("a request key expired before now is kept"));
    }
    Ok(())
}

/// Whether an order in `state` still counts its units as held by its buyer: every state
/// between reservation and the end of the sale, but not a cancel, expiry or refund.
fn holds_units(state: OrderState) -> bool {
    matches!(
        state,
        OrderState::Reserved | OrderState::Paid | OrderState::Shipped | OrderState::Completed
    )
}

/// Whether an order in `state` has spent the coupon it names: paid at some point and not
/// cancelled or expired (a refund keeps the coupon spent).
fn spends_coupon(state: OrderState) -> bool {
    matches!(
        state,
        OrderState::Paid | OrderState::Shipped | OrderState::Completed | OrderState::Refunded
    )
}

/// Cross-table checks on a restored engine, so that a snapshot whose tables disagree (written
/// by a faulty writer, yet with a valid checksum) is refused at restore rather than tripping
/// an engine assertion on some later command, and then again on every restart.
///
/// A finished order may have been forgotten when its slot was reused, so totals that include
/// finished orders are lower bounds; a reserved order is never forgotten, so its totals are
/// exact. O(state), with scratch vectors and map copies: restore is not on the hot path.
impl Engine {
    /// Every restored key answers a retry as the image says: an operator's answer reads back
    /// from the SKU or batch it names the very view that the image remembers.
    fn check_remembered(&self, image_keys: &[RememberedKey]) -> Result<(), RestoreError> {
        assert_eq!(self.keys.len(), image_keys.len(), "keys checked before they are restored");
        for (entry, remembered) in self.keys.iter().zip(image_keys) {
            if self.remembered_outcome(entry.outcome) != Some(remembered.outcome) {
                return Err(RestoreError::Inconsistent(
                    "a request key remembers a SKU or batch answer that its SKU or batch does \
                     not give",
                ));
            }
        }
        Ok(())
    }

    fn check_cross_tables(&self) -> Result<(), RestoreError> {
        // The checks look orders up by id: the indexes must be rebuilt first.
        assert_eq!(self.order_index.len(), self.orders.len(), "cross checks before the index");
        self.check_sku_totals()?;
        self.check_coupon_links()?;
        self.check_deadlines()?;
        self.check_finished()?;
        self.check_holdings()?;
        self.check_claims()?;
        Ok(())
    }

    /// Per SKU: reserved units are exactly those of its reserved orders; sold units cover those
    /// of its kept paid, shipped and completed orders (a refund takes from sold).
    fn check_sku_totals(&self) -> Result<(), RestoreError> {
        let mut reserved = vec![0_u64; self.skus.len()];
        let mut sold = vec![0_u64; self.skus.len()];
        for order in &self.orders {
            let qty = u64::from(order.qty);
            match order.state {
                OrderState::Reserved => reserved[order.sku_slot as usize] += qty,
                OrderState::Paid | OrderState::Shipped | OrderState::Completed => {
                    sold[order.sku_slot as usize] += qty;
                }
                _ => {}
            }
        }
        for (slot, sku) in self.skus.iter().enumerate() {
            if sku.reserved != reserved[slot] {
                return Err(RestoreError::Inconsistent(
                    "a SKU's reserved units differ from the sum of its reserved orders",
                ));
            }
            if sku.sold < sold[slot] {
                return Err(RestoreError::Inconsistent(
                    "a SKU's sold units are fewer than those of its kept paid orders",
                ));
            }
        }
        // Rebuilt from the order table, so it agrees with the reserved orders counted here.
        let reserved_orders = self.orders.iter().filter(|o| o.state == OrderState::Reserved);
        assert_eq!(self.orders_reserved as usize, reserved_orders.count());
        Ok(())
    }

    /// A coupon locked by an order is named by that kept reserved order, and a reserved order's
    /// coupon is locked by it; a coupon used by a kept order is named by it, and a paid (or
    /// later) order's coupon is used by it. Cancelled and expired orders still name the coupon
    /// they released, which may since be available or applied elsewhere, so they are skipped.
    fn check_coupon_links(&self) -> Result<(), RestoreError> {
        for (slot, coupon) in self.coupons.iter().enumerate() {
            let (order, locked) = match coupon.state {
                CouponState::Locked(order) => (order, true),
                CouponState::Used(order) => (order, false),
                CouponState::Available | CouponState::Expired => continue,
            };
            let kept = self.order_index.get(&order).map(|&o| &self.orders[o as usize]);
            let named = kept.is_some_and(|o| o.coupon_slot == Some(slot as u32));
            if locked && !kept.is_some_and(|o| named && o.state == OrderState::Reserved) {
                return Err(RestoreError::Inconsistent(
                    "a locked coupon is not named by a kept reserved order that locked it",
                ));
            }
            if !locked && kept.is_some_and(|o| !named || !spends_coupon(o.state)) {
                return Err(RestoreError::Inconsistent(
                    "a used coupon's kept order does not name it or was never paid",
                ));
            }
        }
        for order in &self.orders {
            let Some(coupon_slot) = order.coupon_slot else { continue };
            let state = self.coupons[coupon_slot as usize].state;
            if order.state == OrderState::Reserved && state != CouponState::Locked(order.id) {
                return Err(RestoreError::Inconsistent(
                    "a reserved order's coupon is not locked by it",
                ));
            }
            if spends_coupon(order.state) && state != CouponState::Used(order.id) {
                return Err(RestoreError::Inconsistent("a paid order's coupon is not used by it"));
            }
        }
        Ok(())
    }

    /// Every live deadline fires at its order's expiry time, and every reserved order has
    /// exactly one: a missing one would never expire the order, and duplicates would survive
    /// the queue sweep, which counts on at most one live deadline per reserved order.
    fn check_deadlines(&self) -> Result<(), RestoreError> {
        let mut live = vec![0_u32; self.orders.len()];
        for (expires_at, order, slot) in self.deadlines.iter() {
            // Due deadlines fire (and leave the queue) when time reaches them, live or stale,
            // so none is left at or before now (unless time is saturated and cannot move).
            if expires_at <= self.now && self.now.0 != u64::MAX {
                return Err(RestoreError::Inconsistent("a deadline is already due"));
            }
            if !self.deadline_is_live(order, slot) {
                continue;
            }
            if self.orders[slot as usize].expires_at != expires_at {
                return Err(RestoreError::Inconsistent(
                    "a live deadline's time differs from its order's expiry",
                ));
            }
            live[slot as usize] += 1;
        }
        let reserved = self.orders.iter().map(|o| o.state == OrderState::Reserved);
        if reserved.zip(&live).any(|(reserved, &count)| reserved && count != 1) {
            return Err(RestoreError::Inconsistent(
                "a reserved order does not have exactly one live deadline",
            ));
        }
        // Only a reserved order's deadline is live, and each has one.
        let live_total: u32 = live.iter().sum();
        assert_eq!(live_total, self.orders_reserved, "live deadlines differ from reserved orders");
        Ok(())
    }

    /// The finished queue holds every final-state order once, and nothing else: a new order
    /// takes the slot at its front and asserts that it is final.
    fn check_finished(&self) -> Result<(), RestoreError> {
        let mut queued = vec![false; self.orders.len()];
        for &slot in &self.finished {
            if !self.orders[slot as usize].state.is_final() {
                return Err(RestoreError::Inconsistent(
                    "the finished queue holds an order that is not finished",
                ));
            }
            if std::mem::replace(&mut queued[slot as usize], true) {
                return Err(RestoreError::Inconsistent("the finished queue holds a slot twice"));
            }
        }
        let finals = self.orders.iter().filter(|o| o.state.is_final()).count();
        if finals != self.finished.len() {
            return Err(RestoreError::Inconsistent(
                "a finished order is missing from the finished queue",
            ));
        }
        Ok(())
    }

    /// For a SKU with a per-user limit, each buyer's holding covers the units of their kept
    /// orders that still hold units: a cancel, expiry or refund takes those units off it.
    fn check_holdings(&self) -> Result<(), RestoreError> {
        // Held only under a limit, and never above it: a reservation past it is refused.
        for (&(_, sku), &units) in self.holdings.iter() {
            let limit = self.sku_index.get(&sku).map(|&slot| self.skus[slot as usize]);
            if limit.is_none_or(|sku| units > sku.per_user_limit) {
                return Err(RestoreError::Inconsistent(
                    "a holding is of an unknown SKU or above its per-user limit",
                ));
            }
        }
        let mut left = self.holdings.clone();
        for order in self.orders.iter().filter(|o| holds_units(o.state)) {
            let sku = &self.skus[order.sku_slot as usize];
            if sku.per_user_limit == 0 {
                continue;
            }
            let short = || {
                RestoreError::Inconsistent(
                    "a buyer's holding is less than the units of their kept orders",
                )
            };
            let held = left.get_mut(&(order.user, sku.id)).ok_or_else(short)?;
            *held = held.checked_sub(order.qty).ok_or_else(short)?;
        }
        Ok(())
    }

    /// Each (user, batch) claim count covers that user's coupons of the batch, and each batch
    /// has issued exactly as many coupons as it holds.
    fn check_claims(&self) -> Result<(), RestoreError> {
        let mut left = self.claims.clone();
        let mut issued = vec![0_u32; self.batches.len()];
        for coupon in &self.coupons {
            let batch = self.batches[coupon.batch_slot as usize].id;
            issued[coupon.batch_slot as usize] += 1;
            let Some(claimed) = left.get_mut(&(coupon.user, batch)).filter(|n| **n > 0) else {
                return Err(RestoreError::Inconsistent(
                    "a user's claim count is less than their coupons of the batch",
                ));
            };
            *claimed -= 1;
        }
        for (batch, &count) in self.batches.iter().zip(&issued) {
            if batch.quantity.checked_sub(batch.remaining) != Some(count) {
                return Err(RestoreError::Inconsistent(
                    "a batch's quantity - remaining differs from its coupons",
                ));
            }
        }
        Ok(())
    }
}
