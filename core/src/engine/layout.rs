//! The snapshot image's byte layout, and the per-entry encodings that the state digests hash.
//!
//! An image is a fixed header, then every table as a `u32` entry count followed by that many
//! fixed-size entries. All integers are little-endian; nothing depends on how the engine's
//! structs sit in memory, so a new field in a struct is a new [`IMAGE_FORMAT_VERSION`], never a
//! silent change. Fixed-size entries let a reader check a table's count against the bytes left
//! before it allocates, and let the digests hash each entry as one short byte string.
//!
//! ```text
//! header (56 bytes)
//!   0  image format version  u16  IMAGE_FORMAT_VERSION
//!   2  encoding version      u16  codec::ENCODING_VERSION of the stored outcomes
//!   4  shard                 u16  ─┐
//!   6  id generator started  u8    │ engine scalars: what the state digest hashes
//!   7  zero                  u8    │
//!   8  id generator ms       u64   │ last millisecond the id generator used
//!  16  id generator counter  u64   │ counter within it (at most 4095)
//!  24  now                   u64   │ logical time, ms
//!  32  last sequence         u64   │
//!  40  running hash          u64   │
//!  48  keys head             u64  ─┘ absolute position of the first remembered request key
//!
//! tables, in this order, each `count u32 | count × entry`:
//!   SKUs        79  id u64 | stock u64 | available u64 | reserved u64 | sold u64
//!                   | price_cents u64 | per_user_limit u32 | open u8
//!                   | payment_timeout_ms u64 | sale_start fixopt u64 | sale_end fixopt u64
//!   orders      71  id u64 | user u64 | sku slot u32 | qty u32 | amount_cents u64 | state u8
//!                   | created_at u64 | expires_at u64 | coupon slot fixopt u32
//!                   | payment_ref fixopt [16]
//!   finished     4  order slot u32                 (queue order, oldest first)
//!   deadlines   20  expires_at u64 | order u64 | order slot u32
//!   holdings    20  user u64 | sku u64 | units u32
//!   batches     52  id u64 | quantity u32 | remaining u32 | per_user_limit u32
//!                   | discount_cents u64 | min_amount_cents u64 | valid_from u64
//!                   | valid_until u64
//!   coupons     29  id u64 | batch slot u32 | user u64 | state u8 | order u64
//!   claims      20  user u64 | batch u64 | count u32
//!   request    121  user u64 (0: the command names none) | key [16] | expires_at u64 |
//!   keys            fingerprint u64 | outcome length u8 | outcome [80]: canonical outcome,
//!                   zero padded (queue order). A key is scoped to the user its command names.
//!
//! fixopt T  = presence u8 (0 or 1) | T, all zero when absent (fixed size, one encoding)
//! state u8  = order state as in codec (00 reserved .. 06 refunded)
//! coupon    = 00 available, 01 locked, 02 used, 03 expired; order is the locking or using
//!   state     order's id, zero for available and expired
//! ```
//!
//! Slot numbers are positions in the SKU, order, batch and coupon tables. Holdings, claims and
//! deadlines are written in whatever order the engine holds them; restoring does not depend on
//! it, and [`EngineImage::canonicalize`] sorts them. Decoding refuses any byte that is not
//! canonical (flags, tags, padding, lengths, counts, trailing bytes) and never panics; the
//! cross-table checks run when the image is restored ([`Engine::from_image`]).
//!
//! [`Engine::from_image`]: super::Engine::from_image

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use super::{Batch, Coupon, Deadline, EngineImage, Order, RememberedKey, Sku};
use crate::codec::{
    self, DecodeError, ENCODING_VERSION, OUTCOME_LEN_MAX, Reader, Sink, Writer, coupon_state_parts,
    order_state_byte, read_coupon_state, read_order_state,
};
use crate::config::EngineConfig;
use crate::snowflake::{COUNTER_BITS, Snowflake};
use crate::types::{
    BatchId, CouponId, OrderId, PaymentRef, RequestKey, Sequence, SkuId, Timestamp, UserId,
};

/// Version of the image layout described in the module documentation.
pub const IMAGE_FORMAT_VERSION: u16 = 2;

const VERSION_OFFSET: usize = 0;
const ENCODING_OFFSET: usize = VERSION_OFFSET + 2;
const SHARD_OFFSET: usize = ENCODING_OFFSET + 2;
const STARTED_OFFSET: usize = SHARD_OFFSET + 2;
const ZERO_OFFSET: usize = STARTED_OFFSET + 1;
const MILLIS_OFFSET: usize = ZERO_OFFSET + 1;
const COUNTER_OFFSET: usize = MILLIS_OFFSET + 8;
const NOW_OFFSET: usize = COUNTER_OFFSET + 8;
const LAST_SEQUENCE_OFFSET: usize = NOW_OFFSET + 8;
const RUNNING_HASH_OFFSET: usize = LAST_SEQUENCE_OFFSET + 8;
const KEYS_HEAD_OFFSET: usize = RUNNING_HASH_OFFSET + 8;
/// Bytes before the first table.
pub(super) const HEADER_LEN: usize = KEYS_HEAD_OFFSET + 8;

const _: () = assert!(HEADER_LEN == 56);
// The 8-byte scalars sit at multiples of 8, so the header reads well in a hex dump.
const _: () = assert!(MILLIS_OFFSET % 8 == 0);
const _: () = assert!(KEYS_HEAD_OFFSET % 8 == 0);
// The state digest hashes header bytes 4..56, as the image module documents.
const _: () = assert!(HEADER_LEN - SHARD_OFFSET == 52);

/// Presence byte and room of a fixed-size option.
const fn fixopt(len: usize) -> usize {
    1 + len
}

const SKU_ENTRY_LEN: usize = 6 * 8 + 4 + 1 + 8 + 2 * fixopt(8);
const ORDER_ENTRY_LEN: usize = 8 + 8 + 4 + 4 + 8 + 1 + 8 + 8 + fixopt(4) + fixopt(16);
const FINISHED_ENTRY_LEN: usize = 4;
const DEADLINE_ENTRY_LEN: usize = 8 + 8 + 4;
const HOLDING_ENTRY_LEN: usize = 8 + 8 + 4;
const BATCH_ENTRY_LEN: usize = 8 + 3 * 4 + 4 * 8;
const COUPON_ENTRY_LEN: usize = 8 + 4 + 8 + 1 + 8;
const CLAIM_ENTRY_LEN: usize = 8 + 8 + 4;
const KEY_ENTRY_LEN: usize = 8 + 16 + 8 + 8 + 1 + OUTCOME_LEN_MAX;
/// The longest entry: a stack buffer this long holds any entry's bytes.
const ENTRY_LEN_MAX: usize = KEY_ENTRY_LEN;

// Entry sizes as the byte diagram documents them.
const _: () = assert!(SKU_ENTRY_LEN == 79);
const _: () = assert!(ORDER_ENTRY_LEN == 71);
const _: () = assert!(FINISHED_ENTRY_LEN == 4);
const _: () = assert!(DEADLINE_ENTRY_LEN == 20);
const _: () = assert!(HOLDING_ENTRY_LEN == 20);
const _: () = assert!(BATCH_ENTRY_LEN == 52);
const _: () = assert!(COUPON_ENTRY_LEN == 29);
const _: () = assert!(CLAIM_ENTRY_LEN == 20);
const _: () = assert!(KEY_ENTRY_LEN == 121);
// `entry_bytes` writes any entry into a buffer of `ENTRY_LEN_MAX` bytes.
const _: () = assert!(ENTRY_LEN_MAX >= SKU_ENTRY_LEN);
const _: () = assert!(ENTRY_LEN_MAX >= ORDER_ENTRY_LEN);
const _: () = assert!(ENTRY_LEN_MAX >= BATCH_ENTRY_LEN);

/// A snapshot image that cannot be decoded. Every variant names what is wrong and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageDecodeError {
    /// Fewer bytes than the header.
    #[error(
        "snapshot image is {len} bytes, shorter than its {HEADER_LEN}-byte header: it was cut \
         short; restore from an older snapshot and replay the journal"
    )]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// Written by a newer build.
    #[error(
        "snapshot image format version {found} is newer than this build, which reads version \
         {supported}: run a build that reads it, or restore from an older snapshot and replay"
    )]
    FutureVersion {
        /// Version in the image.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// A version no build ever wrote.
    #[error(
        "snapshot image format version {found} was never written (this build reads version \
         {supported}): the image is damaged; restore from an older snapshot and replay"
    )]
    UnknownVersion {
        /// Version in the image.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// An image of an older version this build no longer restores.
    #[error(
        "snapshot image format version {found} was written by an older build and is not \
         restored by this one (version {supported}: request keys are scoped to their user): \
         recover by replaying the journal without this snapshot"
    )]
    RetiredVersion {
        /// Version in the image.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// Stored outcomes in a canonical encoding this build does not read.
    #[error(
        "snapshot image stores outcomes in canonical encoding version {found}, but this build \
         reads version {supported}: run a build that reads it, or restore from an older \
         snapshot and replay"
    )]
    UnsupportedEncoding {
        /// Encoding version in the image.
        found: u16,
        /// Encoding version this build reads.
        supported: u16,
    },
    /// An id generator state that no generator can reach.
    #[error(
        "snapshot image's id generator state (shard {shard}, millisecond {millis}, counter \
         {counter}, started {started}) is impossible: the image is damaged"
    )]
    BadIdGenerator {
        /// Shard.
        shard: u16,
        /// Last millisecond used.
        millis: u64,
        /// Counter within it.
        counter: u64,
        /// Whether an id was issued.
        started: bool,
    },
    /// A table's count needs more bytes than are left.
    #[error(
        "snapshot image's {table} table at offset {offset} counts {count} entries, more than \
         the {remaining} bytes after it hold: the image is damaged or cut short"
    )]
    TableTooLong {
        /// The table.
        table: &'static str,
        /// Entries claimed.
        count: usize,
        /// Offset of the count.
        offset: usize,
        /// Bytes left after the count.
        remaining: usize,
    },
    /// A field is not canonical.
    #[error("snapshot image is damaged: {0}; restore from an older snapshot and replay")]
    Bytes(#[from] DecodeError),
}

/// An entry of one of the image's tables, with its fixed-size encoding.
pub(super) trait Entry: Sized {
    /// The table's name in errors.
    const TABLE: &'static str;
    /// Bytes of one entry.
    const LEN: usize;
    /// Writes exactly [`Entry::LEN`] bytes.
    fn write(&self, w: &mut Writer<'_>);
    /// Reads exactly [`Entry::LEN`] bytes.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// XXH3-64 of one entry's bytes: what the order-independent digests sum.
pub(super) fn entry_hash<E: Entry>(entry: &E) -> u64 {
    let mut bytes = [0_u8; ENTRY_LEN_MAX];
    xxh3_64(entry_bytes(entry, &mut bytes))
}

/// Wrapping sum of the entry hashes: the same for the same entries in any order.
pub(super) fn sum_of<E: Entry>(entries: impl Iterator<Item = E>) -> u64 {
    entries.fold(0_u64, |sum, entry| sum.wrapping_add(entry_hash(&entry)))
}

/// XXH3-64 of the entries' bytes concatenated: for queues, whose order decides the future.
pub(super) fn ordered_hash<E: Entry>(entries: impl Iterator<Item = E>) -> u64 {
    let mut hasher = Xxh3Default::new();
    let mut bytes = [0_u8; ENTRY_LEN_MAX];
    entries.for_each(|entry| hasher.update(entry_bytes(&entry, &mut bytes)));
    hasher.digest()
}

fn entry_bytes<'b, E: Entry>(entry: &E, bytes: &'b mut [u8; ENTRY_LEN_MAX]) -> &'b [u8] {
    let mut writer = Writer::new(&mut bytes[..E::LEN]);
    entry.write(&mut writer);
    assert_eq!(writer.len(), E::LEN);
    &bytes[..E::LEN]
}

/// The engine scalars of the header: shard, id generator, clock, sequence, hash, keys head.
pub(super) struct Scalars {
    pub shard: u16,
    pub ids: Snowflake,
    pub now: Timestamp,
    pub last_sequence: Sequence,
    pub running_hash: u64,
    pub keys_head: u64,
}

impl Scalars {
    /// The header bytes, versions included.
    pub(super) fn header(&self) -> [u8; HEADER_LEN] {
        assert_eq!(self.ids.shard(), self.shard, "the id generator belongs to the shard");
        let (millis, counter, started) = self.ids.state();
        // What `Snowflake::from_state` accepts when the header is read back.
        assert!(counter < 1 << COUNTER_BITS, "an id counter past its 12 bits");
        assert!(started || (millis, counter) == (0, 0), "an idle id generator that moved");
        let mut header = [0_u8; HEADER_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            header[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(VERSION_OFFSET, &IMAGE_FORMAT_VERSION.to_le_bytes());
        put(ENCODING_OFFSET, &ENCODING_VERSION.to_le_bytes());
        put(SHARD_OFFSET, &self.shard.to_le_bytes());
        put(STARTED_OFFSET, &[u8::from(started), 0]);
        put(MILLIS_OFFSET, &millis.to_le_bytes());
        put(COUNTER_OFFSET, &counter.to_le_bytes());
        put(NOW_OFFSET, &self.now.0.to_le_bytes());
        put(LAST_SEQUENCE_OFFSET, &self.last_sequence.0.to_le_bytes());
        put(RUNNING_HASH_OFFSET, &self.running_hash.to_le_bytes());
        put(KEYS_HEAD_OFFSET, &self.keys_head.to_le_bytes());
        debug_assert!(Scalars::decode(&header).is_ok(), "a header that does not read back");
        header
    }

    /// The header bytes that are engine state, not format: what the state digest hashes.
    pub(super) fn state_bytes(&self) -> [u8; HEADER_LEN - SHARD_OFFSET] {
        let header = self.header();
        let mut bytes = [0_u8; HEADER_LEN - SHARD_OFFSET];
        bytes.copy_from_slice(&header[SHARD_OFFSET..]);
        bytes
    }

    fn decode(header: &[u8; HEADER_LEN]) -> Result<Scalars, ImageDecodeError> {
        let u16_at = |offset: usize| u16::from_le_bytes([header[offset], header[offset + 1]]);
        let u64_at = |offset: usize| {
            let mut bytes = [0_u8; 8];
            bytes.copy_from_slice(&header[offset..offset + 8]);
            u64::from_le_bytes(bytes)
        };
        let (found, supported) = (u16_at(VERSION_OFFSET), IMAGE_FORMAT_VERSION);
        if found > supported {
            return Err(ImageDecodeError::FutureVersion { found, supported });
        }
        if found == 1 {
            // Version 1 remembered request keys without the user they belong to.
            return Err(ImageDecodeError::RetiredVersion { found, supported });
        }
        if found != supported {
            return Err(ImageDecodeError::UnknownVersion { found, supported });
        }
        let (found, supported) = (u16_at(ENCODING_OFFSET), ENCODING_VERSION);
        if found != supported {
            return Err(ImageDecodeError::UnsupportedEncoding { found, supported });
        }
        let started = match header[STARTED_OFFSET] {
            0 => false,
            1 => true,
            byte => {
                let field = "id generator started";
                Err(DecodeError::BadFlag { field, byte, offset: STARTED_OFFSET })?
            }
        };
        if header[ZERO_OFFSET] != 0 {
            Err(DecodeError::BadPadding { field: "header", offset: ZERO_OFFSET })?;
        }
        let (shard, millis, counter) =
            (u16_at(SHARD_OFFSET), u64_at(MILLIS_OFFSET), u64_at(COUNTER_OFFSET));
        let ids = Snowflake::from_state(shard, millis, counter, started)
            .ok_or(ImageDecodeError::BadIdGenerator { shard, millis, counter, started })?;
        assert_eq!(ids.shard(), shard, "the id generator read for another shard");
        Ok(Scalars {
            shard,
            ids,
            now: Timestamp(u64_at(NOW_OFFSET)),
            last_sequence: Sequence(u64_at(LAST_SEQUENCE_OFFSET)),
            running_hash: u64_at(RUNNING_HASH_OFFSET),
            keys_head: u64_at(KEYS_HEAD_OFFSET),
        })
    }
}

impl EngineImage {
    pub(super) fn scalars(&self) -> Scalars {
        Scalars {
            shard: self.shard,
            ids: self.ids,
            now: self.now,
            last_sequence: self.last_sequence,
            running_hash: self.running_hash,
            keys_head: self.keys_head,
        }
    }

    /// Bytes [`EngineImage::encode_into`] appends.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        encoded_len_of(self.table_lens())
    }

    /// The most bytes [`EngineImage::encode_into`] appends for an image of an engine under
    /// `config`: every table as full as restoring allows.
    #[must_use]
    pub fn encoded_len_max(config: &EngineConfig) -> u64 {
        let len = encoded_len_of(EngineImage::table_lens_max(config));
        // Every table has room for an entry, so the fullest image holds one of each.
        assert!(len > HEADER_LEN + 9 * 4, "a full image of empty tables");
        len as u64
    }

    /// Appends the image in the layout of the module documentation (version
    /// [`IMAGE_FORMAT_VERSION`]) to `out`, growing it at most once.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = self.encoded_len();
        out.reserve(len);
        out.extend_from_slice(&self.scalars().header());
        put_table(out, &self.skus);
        put_table(out, &self.orders);
        put_table(out, &self.finished);
        put_table(out, &self.deadlines);
        put_table(out, &self.holdings);
        put_table(out, &self.batches);
        put_table(out, &self.coupons);
        put_table(out, &self.claims);
        put_table(out, &self.keys);
        assert_eq!(out.len() - start, len);
        debug_assert_eq!(
            EngineImage::decode(&out[start..]).as_ref(),
            Ok(self),
            "an image that does not decode to itself"
        );
    }

    /// Decodes an image written by [`EngineImage::encode_into`], validating every byte.
    /// Never panics; allocates no more than the bytes given justify. Whether the tables agree
    /// with each other and with a configuration is checked by [`super::Engine::from_image`].
    pub fn decode(bytes: &[u8]) -> Result<EngineImage, ImageDecodeError> {
        let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(ImageDecodeError::TooShort { len: bytes.len() });
        };
        let scalars = Scalars::decode(header)?;
        let mut r = Reader::with_base(body, HEADER_LEN);
        let image = EngineImage {
            shard: scalars.shard,
            now: scalars.now,
            last_sequence: scalars.last_sequence,
            running_hash: scalars.running_hash,
            ids: scalars.ids,
            keys_head: scalars.keys_head,
            skus: read_table(&mut r)?,
            orders: read_table(&mut r)?,
            finished: read_table(&mut r)?,
            deadlines: read_table(&mut r)?,
            holdings: read_table(&mut r)?,
            batches: read_table(&mut r)?,
            coupons: read_table(&mut r)?,
            claims: read_table(&mut r)?,
            keys: read_table(&mut r)?,
        };
        r.finish("snapshot image")?;
        // Every byte was read, and each table's count covered its entries exactly.
        assert_eq!(image.encoded_len(), bytes.len(), "decoding consumed a different length");
        Ok(image)
    }
}

fn put_table<E: Entry>(out: &mut Vec<u8>, entries: &[E]) {
    let count = u32::try_from(entries.len()).expect("tables hold fewer than 2^32 entries");
    out.extend_from_slice(&count.to_le_bytes());
    let start = out.len();
    out.resize(start + entries.len() * E::LEN, 0);
    let mut writer = Writer::new(&mut out[start..]);
    for entry in entries {
        entry.write(&mut writer);
    }
    assert_eq!(writer.len(), entries.len() * E::LEN);
}

fn read_table<E: Entry>(r: &mut Reader<'_>) -> Result<Vec<E>, ImageDecodeError> {
    let offset = r.offset();
    let count = r.u32(E::TABLE)? as usize;
    let remaining = r.remaining();
    // Checked before allocating, so a damaged count cannot ask for more memory than the image.
    if count > remaining / E::LEN {
        return Err(ImageDecodeError::TableTooLong { table: E::TABLE, count, offset, remaining });
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let start = r.offset();
        entries.push(E::read(r)?);
        assert_eq!(r.offset() - start, E::LEN);
    }
    assert_eq!(r.offset() - offset, 4 + count * E::LEN, "a table read past its entries");
    Ok(entries)
}

/// A fixed-size option: presence byte, then the value's bytes, all zero when absent.
fn put_fixopt<const N: usize>(w: &mut Writer<'_>, value: Option<[u8; N]>) {
    let start = w.len();
    w.flag(value.is_some());
    w.bytes(&value.unwrap_or([0; N]));
    assert_eq!(w.len() - start, fixopt(N), "a fixed option is its presence byte and room");
}

fn read_fixopt<const N: usize>(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<Option<[u8; N]>, DecodeError> {
    let start = r.offset();
    let present = r.flag(field)?;
    let offset = r.offset();
    let bytes = r.array::<N>(field)?;
    if !present && bytes != [0; N] {
        let at = bytes.iter().position(|&b| b != 0).unwrap_or(0);
        return Err(DecodeError::BadPadding { field, offset: offset + at });
    }
    assert_eq!(r.offset() - start, fixopt(N), "a fixed option read at another length");
    Ok(present.then_some(bytes))
}

fn read_fixopt_u64(r: &mut Reader<'_>, field: &'static str) -> Result<Option<u64>, DecodeError> {
    Ok(read_fixopt::<8>(r, field)?.map(u64::from_le_bytes))
}

impl Entry for Sku {
    const TABLE: &'static str = "SKU";
    const LEN: usize = SKU_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        for value in [self.id.0, self.stock, self.available, self.reserved, self.sold] {
            w.u64(value);
        }
        w.u64(self.price_cents);
        w.u32(self.per_user_limit);
        w.flag(self.open);
        w.u64(self.payment_timeout_ms);
        put_fixopt(w, self.sale_start.map(|t| t.0.to_le_bytes()));
        put_fixopt(w, self.sale_end.map(|t| t.0.to_le_bytes()));
        assert_eq!(w.len() - start, Self::LEN, "a SKU entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Sku, DecodeError> {
        let start = r.offset();
        let sku = Sku {
            id: SkuId(r.u64("SKU id")?),
            stock: r.u64("stock")?,
            available: r.u64("available")?,
            reserved: r.u64("reserved")?,
            sold: r.u64("sold")?,
            price_cents: r.u64("price_cents")?,
            per_user_limit: r.u32("per_user_limit")?,
            open: r.flag("open")?,
            payment_timeout_ms: r.u64("payment_timeout_ms")?,
            sale_start: read_fixopt_u64(r, "sale_start")?.map(Timestamp),
            sale_end: read_fixopt_u64(r, "sale_end")?.map(Timestamp),
        };
        assert_eq!(r.offset() - start, Self::LEN, "a SKU entry read at another length");
        Ok(sku)
    }
}

impl Entry for Order {
    const TABLE: &'static str = "order";
    const LEN: usize = ORDER_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u64(self.id.0);
        w.u64(self.user.0);
        w.u32(self.sku_slot);
        w.u32(self.qty);
        w.u64(self.amount_cents);
        w.u8(order_state_byte(self.state));
        w.u64(self.created_at.0);
        w.u64(self.expires_at.0);
        put_fixopt(w, self.coupon_slot.map(u32::to_le_bytes));
        put_fixopt(w, self.payment_ref.map(|reference| reference.0));
        assert_eq!(w.len() - start, Self::LEN, "an order entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Order, DecodeError> {
        let start = r.offset();
        let order = Order {
            id: OrderId(r.u64("order id")?),
            user: UserId(r.u64("user")?),
            sku_slot: r.u32("SKU slot")?,
            qty: r.u32("qty")?,
            amount_cents: r.u64("amount_cents")?,
            state: read_order_state(r)?,
            created_at: Timestamp(r.u64("created_at")?),
            expires_at: Timestamp(r.u64("expires_at")?),
            coupon_slot: read_fixopt::<4>(r, "coupon slot")?.map(u32::from_le_bytes),
            payment_ref: read_fixopt::<16>(r, "payment_ref")?.map(PaymentRef),
        };
        assert_eq!(r.offset() - start, Self::LEN, "an order entry read at another length");
        Ok(order)
    }
}

impl Entry for u32 {
    const TABLE: &'static str = "finished-order";
    const LEN: usize = FINISHED_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u32(*self);
        assert_eq!(w.len() - start, Self::LEN, "a finished entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
        let start = r.offset();
        let slot = r.u32("finished order slot")?;
        assert_eq!(r.offset() - start, Self::LEN, "a finished entry read at another length");
        Ok(slot)
    }
}

impl Entry for Deadline {
    const TABLE: &'static str = "deadline";
    const LEN: usize = DEADLINE_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        let (expires_at, order, slot) = *self;
        w.u64(expires_at.0);
        w.u64(order.0);
        w.u32(slot);
        assert_eq!(w.len() - start, Self::LEN, "a deadline entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Deadline, DecodeError> {
        let start = r.offset();
        let expires_at = Timestamp(r.u64("deadline")?);
        let deadline =
            (expires_at, OrderId(r.u64("deadline order")?), r.u32("deadline order slot")?);
        assert_eq!(r.offset() - start, Self::LEN, "a deadline entry read at another length");
        Ok(deadline)
    }
}

/// A holdings entry: units a user holds of a SKU with a per-user limit.
pub(super) type Holding = (UserId, SkuId, u32);

impl Entry for Holding {
    const TABLE: &'static str = "holding";
    const LEN: usize = HOLDING_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        let (user, sku, units) = *self;
        w.u64(user.0);
        w.u64(sku.0);
        w.u32(units);
        assert_eq!(w.len() - start, Self::LEN, "a holding entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Holding, DecodeError> {
        let start = r.offset();
        let user = UserId(r.u64("holding user")?);
        let holding = (user, SkuId(r.u64("holding SKU")?), r.u32("holding units")?);
        assert_eq!(r.offset() - start, Self::LEN, "a holding entry read at another length");
        Ok(holding)
    }
}

impl Entry for Batch {
    const TABLE: &'static str = "coupon batch";
    const LEN: usize = BATCH_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u64(self.id.0);
        w.u32(self.quantity);
        w.u32(self.remaining);
        w.u32(self.per_user_limit);
        w.u64(self.discount_cents);
        w.u64(self.min_amount_cents);
        w.u64(self.valid_from.0);
        w.u64(self.valid_until.0);
        assert_eq!(w.len() - start, Self::LEN, "a batch entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Batch, DecodeError> {
        let start = r.offset();
        let batch = Batch {
            id: BatchId(r.u64("batch id")?),
            quantity: r.u32("quantity")?,
            remaining: r.u32("remaining")?,
            per_user_limit: r.u32("per_user_limit")?,
            discount_cents: r.u64("discount_cents")?,
            min_amount_cents: r.u64("min_amount_cents")?,
            valid_from: Timestamp(r.u64("valid_from")?),
            valid_until: Timestamp(r.u64("valid_until")?),
        };
        assert_eq!(r.offset() - start, Self::LEN, "a batch entry read at another length");
        Ok(batch)
    }
}

impl Entry for Coupon {
    const TABLE: &'static str = "coupon";
    const LEN: usize = COUPON_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u64(self.id.0);
        w.u32(self.batch_slot);
        w.u64(self.user.0);
        let (tag, order) = coupon_state_parts(self.state);
        w.u8(tag);
        w.u64(order.map_or(0, |order| order.0));
        assert_eq!(w.len() - start, Self::LEN, "a coupon entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Coupon, DecodeError> {
        let start = r.offset();
        let id = CouponId(r.u64("coupon id")?);
        let batch_slot = r.u32("batch slot")?;
        let user = UserId(r.u64("coupon user")?);
        let state = read_coupon_state(r, |r| Ok(OrderId(r.u64("coupon order")?)))?;
        if coupon_state_parts(state).1.is_none() {
            // Available and expired coupons name no order; their order field is room.
            let offset = r.offset();
            if r.u64("coupon order")? != 0 {
                return Err(DecodeError::BadPadding { field: "coupon order", offset });
            }
        }
        assert_eq!(r.offset() - start, Self::LEN, "a coupon entry read at another length");
        Ok(Coupon { id, batch_slot, user, state })
    }
}

/// A claims entry: coupons a user claimed from a batch.
pub(super) type Claim = (UserId, BatchId, u32);

impl Entry for Claim {
    const TABLE: &'static str = "coupon claim";
    const LEN: usize = CLAIM_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        let (user, batch, count) = *self;
        w.u64(user.0);
        w.u64(batch.0);
        w.u32(count);
        assert_eq!(w.len() - start, Self::LEN, "a claim entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Claim, DecodeError> {
        let start = r.offset();
        let user = UserId(r.u64("claim user")?);
        let claim = (user, BatchId(r.u64("claim batch")?), r.u32("claim count")?);
        assert_eq!(r.offset() - start, Self::LEN, "a claim entry read at another length");
        Ok(claim)
    }
}

impl Entry for RememberedKey {
    const TABLE: &'static str = "request-key";
    const LEN: usize = KEY_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u64(self.user.0);
        w.bytes16(&self.key.0);
        w.u64(self.expires_at.0);
        w.u64(self.fingerprint);
        let mut outcome = [0_u8; OUTCOME_LEN_MAX];
        let len = codec::encode_outcome(&self.outcome, &mut outcome);
        // The pair of the reader's length check: an outcome is at least its tag.
        assert!(len >= 1, "an empty stored outcome");
        debug_assert_eq!(codec::decode_outcome_at(&outcome[..len], 0), Ok(self.outcome));
        w.u8(u8::try_from(len).expect("OUTCOME_LEN_MAX fits a byte"));
        w.bytes(&outcome);
        assert_eq!(w.len() - start, Self::LEN, "a request-key entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<RememberedKey, DecodeError> {
        let start = r.offset();
        let user = UserId(r.u64("request key user")?);
        let key = RequestKey(r.array("request key")?);
        let expires_at = Timestamp(r.u64("request key expiry")?);
        let fingerprint = r.u64("request fingerprint")?;
        let len_offset = r.offset();
        let len = usize::from(r.u8("stored outcome length")?);
        if len == 0 || len > OUTCOME_LEN_MAX {
            let field = "stored outcome length";
            return Err(DecodeError::BadLength { field, len, offset: len_offset });
        }
        let base = r.offset();
        let room = r.take(OUTCOME_LEN_MAX, "stored outcome")?;
        let outcome = codec::decode_outcome_at(&room[..len], base)?;
        if let Some(at) = room[len..].iter().position(|&b| b != 0) {
            let offset = base + len + at;
            return Err(DecodeError::BadPadding { field: "stored outcome", offset });
        }
        assert_eq!(r.offset() - start, Self::LEN, "a request-key entry read at another length");
        Ok(RememberedKey { user, key, expires_at, fingerprint, outcome })
    }
}

/// Bytes of an encoded image whose tables hold `lens` entries, in the image's table order.
fn encoded_len_of(lens: [usize; 9]) -> usize {
    let entry_lens = [
        Sku::LEN,
        Order::LEN,
        u32::LEN,
        Deadline::LEN,
        Holding::LEN,
        Batch::LEN,
        Coupon::LEN,
        Claim::LEN,
        RememberedKey::LEN,
    ];
    assert!(entry_lens.iter().all(|&len| len > 0), "an entry encoded in no bytes");
    let tables: usize = lens.iter().zip(entry_lens).map(|(&len, entry)| len * entry).sum();
    HEADER_LEN + lens.len() * 4 + tables
}
